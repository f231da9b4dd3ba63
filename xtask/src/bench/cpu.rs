//! CPU accounting for the HTTP benchmark: a process tree's utime + stime from
//! `/proc/<pid>/stat`, and per-core busy time from `/proc/stat`.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Clock ticks per second of the `/proc` CPU counters (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `(ppid, utime + stime in ticks)` from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Result<(u32, u64)> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no `)` after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15); index = field - 3.
    if fields.len() < 13 {
        bail!("only {} fields after the command name", fields.len());
    }
    let ppid = fields[1].parse().context("ppid")?;
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok((ppid, utime + stime))
}

/// Every live process as `pid -> (ppid, cpu ticks)`.
fn all_processes() -> HashMap<u32, (u32, u64)> {
    let mut procs = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return procs;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // Processes may exit between listing and reading; skip those.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Ok(parsed) = parse_stat(&stat)
        {
            procs.insert(pid, parsed);
        }
    }
    procs
}

/// CPU time of a process and all its descendants (nginx's master and worker, ...).
#[derive(Clone, Debug)]
pub struct TreeCpu {
    /// The processes counted.
    pub pids: BTreeSet<u32>,
    /// Their utime + stime, in clock ticks (all threads, live ones).
    pub ticks: u64,
}

/// Samples the CPU time of `root` and its descendants.
pub fn tree_cpu(root: u32) -> Result<TreeCpu> {
    let procs = all_processes();
    if !procs.contains_key(&root) {
        bail!("process {root} is gone");
    }
    let mut pids = BTreeSet::from([root]);
    // Parents are listed before or after children in any order; iterate to a fixpoint
    // (trees here are at most two levels deep).
    loop {
        let before = pids.len();
        for (pid, (ppid, _)) in &procs {
            if pids.contains(ppid) {
                pids.insert(*pid);
            }
        }
        if pids.len() == before {
            break;
        }
    }
    let ticks = pids
        .iter()
        .filter_map(|p| procs.get(p))
        .map(|(_, t)| t)
        .sum();
    Ok(TreeCpu { pids, ticks })
}

/// CPU ticks of this process plus its reaped children (`utime + stime + cutime + cstime`):
/// covers the load generator, which runs as a child and is reaped before the sample.
pub fn self_with_children() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no `)` in /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime(14) stime(15) cutime(16) cstime(17), index = field - 3.
    let mut ticks = 0;
    for i in 11..=14 {
        let v: i64 = fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse()
            .context("cpu field of /proc/self/stat")?;
        ticks += u64::try_from(v).unwrap_or(0);
    }
    Ok(ticks)
}

/// Busy and total ticks of one core from `/proc/stat` (`cpuN` line).
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// All columns.
    pub total: u64,
}

/// Parses the `cpuN` lines of `/proc/stat`, indexed by N.
pub fn parse_proc_stat(text: &str) -> Vec<CoreTicks> {
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next() else { continue };
        let Some(index) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest columns are in user).
        let cols: Vec<u64> = parts.take(8).filter_map(|c| c.parse().ok()).collect();
        if cols.len() < 8 {
            continue;
        }
        let total: u64 = cols.iter().sum();
        let idle = cols[3] + cols[4];
        if cores.len() <= index {
            cores.resize(index + 1, CoreTicks::default());
        }
        cores[index] = CoreTicks {
            busy: total - idle,
            total,
        };
    }
    cores
}

/// The current per-core counters.
pub fn cores() -> Vec<CoreTicks> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_proc_stat(&t))
        .unwrap_or_default()
}

/// Busy ticks of core `n` between two samples.
pub fn busy_ticks(before: &[CoreTicks], after: &[CoreTicks], n: usize) -> u64 {
    match (before.get(n), after.get(n)) {
        (Some(b), Some(a)) => a.busy.saturating_sub(b.busy),
        _ => 0,
    }
}

/// Busy fraction (0..=1) of core `n` between two samples.
pub fn busy_fraction(before: &[CoreTicks], after: &[CoreTicks], n: usize) -> f64 {
    match (before.get(n), after.get(n)) {
        (Some(b), Some(a)) if a.total > b.total => {
            (a.busy.saturating_sub(b.busy)) as f64 / (a.total - b.total) as f64
        }
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "1234 (nginx: (worker) x) S 1200 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 500 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat).unwrap(), (1200, 325));
        assert!(parse_stat("1 (x) S 0").is_err());
    }

    #[test]
    fn own_process_has_cpu_and_is_its_tree_root() {
        let me = std::process::id();
        let tree = tree_cpu(me).unwrap();
        assert!(tree.pids.contains(&me));
        // Burn a little CPU so the counters move past zero at tick resolution.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(self_with_children().unwrap() > 0);
    }

    #[test]
    fn per_core_busy_time() {
        let before = parse_proc_stat(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\nintr 1\n",
        );
        let after = parse_proc_stat(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 55 0 35 60 10 0 5 0 0 0\n",
        );
        assert_eq!(before.len(), 2);
        // cpu1: busy +85 (50 user, 30 system, 5 softirq) out of +115 (30 more idle + iowait).
        assert!((busy_fraction(&before, &after, 1) - 85.0 / 115.0).abs() < 1e-9);
        assert!(busy_fraction(&before, &after, 0).is_nan());
        assert_eq!(busy_ticks(&before, &after, 1), 85);
    }
}
