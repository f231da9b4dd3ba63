//! The daemon's kernel mode under test, and what the kernel path leaves in the kernel
//! (programs, links, pins), for the end-to-end tests of the TCP path.
//!
//! `INGRESSD_TEST_KERNEL=off|on|auto` selects `ingressd run --kernel <mode>` for the
//! tests that honour it (default `off` until the in-kernel TCP path lands), so the same
//! tests check the userspace proxy today and the kernel datapath later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::ingressd_bin;
use crate::proc::{run_bounded, run_ok};

/// The environment variable that selects the kernel mode.
pub const KERNEL_VAR: &str = "INGRESSD_TEST_KERNEL";
/// Where the daemon pins its programs, links and maps by default (issue 3).
pub const PIN_DIR: &str = "/sys/fs/bpf/ingressd";
/// The node namespace's interfaces (client side, pods side), see [`crate::topology`].
pub const NODE_INTERFACES: [&str; 2] = ["cl0", "pd0"];

/// `ingressd run --kernel` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMode {
    /// Userspace only.
    Off,
    /// The eBPF path, or fail.
    On,
    /// The eBPF path where it loads, else userspace.
    Auto,
}

impl KernelMode {
    /// The value for `--kernel`.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelMode::Off => "off",
            KernelMode::On => "on",
            KernelMode::Auto => "auto",
        }
    }

    /// Whether the daemon may use the kernel path (bytes of TCP routes then never
    /// reach userspace, and the daemon's access log has no line for them).
    pub fn uses_kernel(self) -> bool {
        self != KernelMode::Off
    }

    /// `ingressd run` arguments for this mode: `--kernel <mode>`, plus the node's
    /// interfaces when the kernel path is wanted.
    pub fn daemon_args(self) -> Vec<String> {
        let mut args = vec!["--kernel".to_owned(), self.as_str().to_owned()];
        if self.uses_kernel() {
            args.push("--interfaces".to_owned());
            args.push(NODE_INTERFACES.join(","));
        }
        args
    }
}

/// The mode from `$INGRESSD_TEST_KERNEL` (default `off`).
///
/// # Panics
/// On any other value, so a typo in CI cannot silently test the wrong path.
pub fn kernel_mode() -> KernelMode {
    match std::env::var(KERNEL_VAR).as_deref() {
        Err(_) | Ok("" | "off") => KernelMode::Off,
        Ok("on") => KernelMode::On,
        Ok("auto") => KernelMode::Auto,
        Ok(other) => panic!("{KERNEL_VAR}={other:?}: expected off, on or auto"),
    }
}

/// The eBPF objects a running process holds open, by kernel id (from
/// `/proc/<pid>/fdinfo`, which names the id of every program, map and link fd).
///
/// Ids are unique system-wide and never reused while the object lives, so they tell
/// the daemon's objects apart from anyone else's on the machine, whatever the names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BpfIds {
    /// Program ids.
    pub programs: BTreeSet<u64>,
    /// Map ids.
    pub maps: BTreeSet<u64>,
    /// Link ids.
    pub links: BTreeSet<u64>,
}

impl BpfIds {
    /// The ids `pid` holds open now.
    pub fn of_process(pid: u32) -> Result<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
        let mut ids = Self::default();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            // An fd may close between listing and reading; skip it.
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            for line in text.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let Ok(id) = value.trim().parse::<u64>() else {
                    continue;
                };
                match key {
                    "prog_id" => ids.programs.insert(id),
                    "map_id" => ids.maps.insert(id),
                    "link_id" => ids.links.insert(id),
                    _ => false,
                };
            }
        }
        Ok(ids)
    }

    /// Whether the process held no eBPF object.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }

    /// Those of these objects the kernel still has (system-wide, `bpftool -j ... show`).
    pub fn still_loaded(&self) -> Result<BpfIds> {
        let alive = |kind: &str, ids: &BTreeSet<u64>| -> Result<BTreeSet<u64>> {
            let now: BTreeSet<u64> = bpftool(&[kind, "show"])?
                .iter()
                .filter_map(|o| o["id"].as_u64())
                .collect();
            Ok(ids.intersection(&now).copied().collect())
        };
        Ok(BpfIds {
            programs: alive("prog", &self.programs)?,
            maps: alive("map", &self.maps)?,
            links: alive("link", &self.links)?,
        })
    }
}

/// The bpffs directory one test's daemon pins under, and its claim on it.
///
/// A daemon that takes `--bpffs-root` gets a directory of its own
/// (`/sys/fs/bpf/ingressd-test-<pid>-<n>`), so tests never share pinned state with
/// each other or with anything else on the machine. An older daemon pins under the
/// fixed [`PIN_DIR`], where two daemons would adopt each other's state or (`--kernel
/// off`) remove it; then a kernel-path daemon holds a lock that keeps every other
/// daemon of this test binary from running at the same time.
///
/// When the daemon used the kernel path, dropping this runs `ingressd cleanup` for the
/// directory (bounded) and removes it, so a test run leaves no program, link or map
/// behind, also when it fails.
pub struct PinRoot {
    path: PathBuf,
    own: bool,
    mode: KernelMode,
    _guard: Guard,
}

/// Held for a daemon's lifetime; see [`PinRoot`].
enum Guard {
    Shared(#[expect(dead_code, reason = "held, not read")] RwLockReadGuard<'static, ()>),
    Exclusive(#[expect(dead_code, reason = "held, not read")] RwLockWriteGuard<'static, ()>),
}

impl PinRoot {
    /// The pin directory for a daemon in `mode` (waits for the lock if it needs it).
    pub fn new(mode: KernelMode) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        static LOCK: RwLock<()> = RwLock::new(());
        let own = daemon_takes_bpffs_root()?;
        // A poisoned lock only means an earlier test failed while holding it.
        let guard = if mode.uses_kernel() && !own {
            Guard::Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Guard::Shared(LOCK.read().unwrap_or_else(|e| e.into_inner()))
        };
        let path = if own {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            PathBuf::from(format!(
                "/sys/fs/bpf/ingressd-test-{}-{n}",
                std::process::id()
            ))
        } else {
            PathBuf::from(PIN_DIR)
        };
        Ok(Self {
            path,
            own,
            mode,
            _guard: guard,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `--bpffs-root DIR` for `ingressd run` and `ingressd cleanup` (nothing for a
    /// daemon without the option).
    pub fn args(&self) -> Vec<String> {
        if self.own {
            vec!["--bpffs-root".to_owned(), self.path.display().to_string()]
        } else {
            Vec::new()
        }
    }

    /// Every entry under the directory (recursive); empty when it does not exist.
    pub fn pins(&self) -> Result<Vec<String>> {
        let mut pins = Vec::new();
        list_pins(&self.path, &mut pins)?;
        Ok(pins)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if !self.mode.uses_kernel() {
            return;
        }
        if let Ok(bin) = ingressd_bin() {
            let _ = run_bounded(
                Command::new(bin).arg("cleanup").args(self.args()),
                Duration::from_secs(30),
            );
        }
        if self.own {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether `ingressd run` has `--bpffs-root` (asked once per test binary).
fn daemon_takes_bpffs_root() -> Result<bool> {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    if let Some(answer) = ANSWER.get() {
        return Ok(*answer);
    }
    let out = run_ok(
        Command::new(ingressd_bin()?).args(["run", "--help"]),
        Duration::from_secs(30),
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).contains("--bpffs-root");
    Ok(*ANSWER.get_or_init(|| answer))
}

fn bpftool(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let out = run_ok(
        Command::new("bpftool").arg("-j").args(args),
        Duration::from_secs(20),
    )
    .context("running bpftool (apt install bpftool)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(items)) => Ok(items),
        Ok(other) => bail!("bpftool {args:?}: expected a JSON array, got {other}"),
        Err(e) => bail!("bpftool {args:?}: not JSON ({e}): {text}"),
    }
}

fn list_pins(dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        out.push(path.display().to_string());
        if entry.file_type()?.is_dir() {
            list_pins(&path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_holds_no_bpf_objects() {
        assert!(BpfIds::of_process(std::process::id()).unwrap().is_empty());
    }

    #[test]
    fn daemon_args_name_interfaces_only_for_the_kernel_path() {
        assert_eq!(KernelMode::Off.daemon_args(), ["--kernel", "off"]);
        assert_eq!(
            KernelMode::On.daemon_args(),
            ["--kernel", "on", "--interfaces", "cl0,pd0"]
        );
    }
}
