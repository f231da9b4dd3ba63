//! Turning runs into the results table: medians per proxy, ratios to nginx, the markdown
//! section of `docs/benchmarks.md` (rewritten in place, the rest of the file kept).

use std::fmt::Write as _;

use super::wrk::WrkResult;

/// The heading of the section this benchmark owns in `docs/benchmarks.md`.
pub const SECTION: &str = "## HTTP routing";

/// The label of the proxy the ratios are relative to.
pub const BASELINE: &str = "nginx";

/// One measured run of one proxy.
#[derive(Clone, Debug)]
pub struct Run {
    /// What was measured: protocol and route table (`HTTP/1.1, 100 hosts x 10 routes`).
    pub scenario: String,
    /// Proxy label (`ingressd`, `nginx`, ...).
    pub proxy: String,
    /// Round number, from 1.
    pub round: u32,
    /// What wrk (or h2load, in the same shape; latency 0: not measured) reported.
    pub wrk: WrkResult,
    /// utime + stime of the proxy's processes during the run, microseconds.
    pub cpu_us: f64,
    /// Wall time the CPU sample spans, seconds.
    pub wall_s: f64,
    /// Busy fraction of core 0 (load generator + backend) during the run.
    pub core0_busy: f64,
    /// Busy fraction of core 1 (the proxy) during the run.
    pub core1_busy: f64,
    /// CPU time on both cores used by processes outside the benchmark (and kernel work
    /// not charged to a process), as a fraction of one core.
    pub other_load: f64,
    /// Which attempt this was (runs disturbed by other load are redone).
    pub attempt: u32,
}

impl Run {
    /// Proxy CPU microseconds per completed request.
    pub fn cpu_per_request(&self) -> f64 {
        if self.wrk.requests == 0 {
            return f64::NAN;
        }
        self.cpu_us / self.wrk.requests as f64
    }

    /// Fraction of one core the proxy used.
    pub fn proxy_utilization(&self) -> f64 {
        self.cpu_us / 1e6 / self.wall_s
    }
}

/// Medians over one proxy's runs.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Proxy label.
    pub proxy: String,
    /// Requests per second (median).
    pub rps: f64,
    /// Lowest and highest requests per second of the runs.
    pub rps_range: (f64, f64),
    /// Median latency, microseconds (median over runs).
    pub p50_us: f64,
    /// 99th percentile latency, microseconds (median over runs).
    pub p99_us: f64,
    /// Proxy CPU microseconds per request (median).
    pub cpu_per_request: f64,
    /// Fraction of a core the proxy used (median).
    pub proxy_utilization: f64,
    /// Busy fraction of core 0, the load side (median).
    pub core0_busy: f64,
    /// Responses with status >= 400, summed over runs.
    pub bad_status: u64,
    /// Socket errors (connect/read/write/timeout), summed over runs.
    pub socket_errors: u64,
}

/// The median of `values` (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One summary per proxy, in the order the proxies first appear in `runs`.
pub fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut order: Vec<&str> = Vec::new();
    for r in runs {
        if !order.contains(&r.proxy.as_str()) {
            order.push(&r.proxy);
        }
    }
    order
        .into_iter()
        .map(|proxy| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.proxy == proxy).collect();
            let pick =
                |f: &dyn Fn(&Run) -> f64| median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
            let rps: Vec<f64> = mine.iter().map(|r| r.wrk.rps()).collect();
            Summary {
                proxy: proxy.to_owned(),
                rps: median(&rps),
                rps_range: (
                    rps.iter().copied().fold(f64::INFINITY, f64::min),
                    rps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ),
                p50_us: pick(&|r| latency(r.wrk.p50_us)),
                p99_us: pick(&|r| latency(r.wrk.p99_us)),
                cpu_per_request: pick(&Run::cpu_per_request),
                proxy_utilization: pick(&Run::proxy_utilization),
                core0_busy: pick(&|r| r.core0_busy),
                bad_status: mine.iter().map(|r| r.wrk.status_errors).sum(),
                socket_errors: mine.iter().map(|r| r.wrk.socket_errors).sum(),
            }
        })
        .collect()
}

/// A latency in microseconds; 0 (h2load reports no percentiles) is NaN, shown as `-`.
fn latency(us: u64) -> f64 {
    if us == 0 { f64::NAN } else { us as f64 }
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && !value.is_nan() => format!("{:.2}", value / b),
        _ => "-".to_owned(),
    }
}

fn us(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.0} µs")
    }
}

fn pct(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.0}%", value * 100.0)
    }
}

/// The results table (markdown): absolute numbers, then ratios to nginx.
pub fn table(summaries: &[Summary]) -> String {
    let base = summaries.iter().find(|s| s.proxy == BASELINE);
    let mut t = String::from(
        "| proxy | req/s | req/s range | p50 | p99 | CPU/req | proxy CPU | core 0 busy | status >= 400 | socket errors \
         | req/s vs nginx | CPU/req vs nginx | p50 vs nginx | p99 vs nginx |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in summaries {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0}-{:.0} | {} | {} | {:.1} µs | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.proxy,
            s.rps,
            s.rps_range.0,
            s.rps_range.1,
            us(s.p50_us),
            us(s.p99_us),
            s.cpu_per_request,
            pct(s.proxy_utilization),
            pct(s.core0_busy),
            s.bad_status,
            s.socket_errors,
            ratio(s.rps, base.map(|b| b.rps)),
            ratio(s.cpu_per_request, base.map(|b| b.cpu_per_request)),
            ratio(s.p50_us, base.map(|b| b.p50_us)),
            ratio(s.p99_us, base.map(|b| b.p99_us)),
        );
    }
    t
}

/// Every run, for the record.
pub fn runs_table(runs: &[Run]) -> String {
    let mut t = String::from(
        "| round | load | proxy | requests | req/s | p50 | p99 | CPU/req | proxy CPU | core 0 busy | core 1 busy | other load | attempt |\n\
         |--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in runs {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:.1} µs | {} | {} | {} | {} | {} |",
            r.round,
            r.scenario,
            r.proxy,
            r.wrk.requests,
            r.wrk.rps(),
            us(latency(r.wrk.p50_us)),
            us(latency(r.wrk.p99_us)),
            r.cpu_per_request(),
            pct(r.proxy_utilization()),
            pct(r.core0_busy),
            pct(r.core1_busy),
            pct(r.other_load),
            r.attempt,
        );
    }
    t
}

/// The median over rounds of ingressd's CPU per request divided by nginx's in the same
/// round (runs of one round are close in time, so slow drifts of the machine cancel out).
pub fn cpu_ratio_per_round(runs: &[Run]) -> Option<f64> {
    let rounds: std::collections::BTreeSet<u32> = runs.iter().map(|r| r.round).collect();
    let ratios: Vec<f64> = rounds
        .into_iter()
        .filter_map(|round| {
            let of = |p: &str| runs.iter().find(|r| r.round == round && r.proxy == p);
            Some(of("ingressd")?.cpu_per_request() / of(BASELINE)?.cpu_per_request())
        })
        .collect();
    let m = median(&ratios);
    (!m.is_nan()).then_some(m)
}

/// Says which proxies were not the bottleneck (median proxy CPU below 90% of its core):
/// their req/s and latency then say more about the load side than about the proxy.
pub fn saturation_note(summaries: &[Summary]) -> String {
    let light: Vec<&str> = summaries
        .iter()
        .filter(|s| s.proxy_utilization < 0.9)
        .map(|s| s.proxy.as_str())
        .collect();
    if light.is_empty() {
        "Every proxy kept its core at least 90% busy, so req/s is its single-core throughput."
            .to_owned()
    } else {
        format!(
            "The proxy used less than 90% of its core for: {}. There something else limited \
             req/s and latency: the load side (wrk and the backend share core 0) or other work \
             on the machine (see other load below); CPU/req compares the proxies regardless.",
            light.join(", ")
        )
    }
}

/// `doc` with the [`SECTION`] replaced by `section` (which starts with the heading), or
/// with `section` appended when it has none; a new file when `doc` is `None`. Everything
/// outside the section is kept byte for byte.
pub fn update_section(doc: Option<&str>, section: &str) -> String {
    update_named_section(doc, SECTION, section)
}

/// [`update_section`] for the section under `heading` (another benchmark's).
pub fn update_named_section(doc: Option<&str>, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let Some(doc) = doc else {
        return format!(
            "# Benchmarks\n\nEach section is written by its benchmark (`cargo xtask bench <name>`); \
             rerunning the benchmark rewrites its section and leaves the rest alone.\n\n{section}"
        );
    };
    let mut offset = 0;
    let mut start = None;
    let mut end = doc.len();
    for line in doc.split_inclusive('\n') {
        let text = line.trim_end();
        if start.is_none() && text == heading {
            start = Some(offset);
        } else if start.is_some() && text.starts_with("## ") {
            end = offset;
            break;
        }
        offset += line.len();
    }
    match start {
        Some(start) => {
            let rest = &doc[end..];
            let sep = if rest.is_empty() { "" } else { "\n" };
            format!("{}{section}{sep}{rest}", &doc[..start])
        }
        None => {
            let sep = if doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{doc}{sep}{section}")
        }
    }
}

/// The first line a tool prints about itself (`nginx -v` writes to stderr,
/// most others to stdout), or `unknown`.
pub fn first_line(cmd: &mut std::process::Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The CPU model from /proc/cpuinfo, or `unknown`.
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(proxy: &str, round: u32, requests: u64, cpu_us: f64, p50: u64) -> Run {
        Run {
            scenario: "HTTP/1.1".to_owned(),
            proxy: proxy.to_owned(),
            round,
            wrk: WrkResult {
                requests,
                duration_us: 10_000_000,
                status_errors: 0,
                socket_errors: 0,
                p50_us: p50,
                p99_us: p50 * 3,
            },
            cpu_us,
            wall_s: 10.0,
            core0_busy: 0.9,
            core1_busy: 1.0,
            other_load: 0.02,
            attempt: 1,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn summaries_and_ratios() {
        let runs = vec![
            run("ingressd", 1, 100_000, 5e6, 300),
            run("nginx", 1, 200_000, 10e6, 200),
            run("ingressd", 2, 120_000, 6e6, 310),
            run("nginx", 2, 180_000, 9e6, 210),
            run("ingressd", 3, 110_000, 5.5e6, 305),
            run("nginx", 3, 190_000, 9.5e6, 205),
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].proxy, "ingressd");
        assert_eq!(s[0].rps, 11_000.0);
        assert_eq!(s[0].rps_range, (10_000.0, 12_000.0));
        assert_eq!(s[0].cpu_per_request, 50.0);
        assert_eq!(s[1].cpu_per_request, 50.0);
        assert_eq!(s[0].p50_us, 305.0);
        let t = table(&s);
        assert!(t.contains("| ingressd | 11000 | 10000-12000 | 305 µs | 915 µs | 50.0 µs | 55% | 90% | 0 | 0 | 0.58 | 1.00 | 1.49 | 1.49 |"), "{t}");
        assert!(t.contains("| nginx | 19000 |"));
        assert!(
            saturation_note(&s).contains(": ingressd."),
            "{}",
            saturation_note(&s)
        );
        assert!(runs_table(&runs).lines().count() == 8);
        assert!((cpu_ratio_per_round(&runs).unwrap() - 50.0 / 50.0).abs() < 0.2);
        assert_eq!(cpu_ratio_per_round(&runs[..1]), None);
        // h2load reports no percentiles: latency 0 shows as `-`.
        let mut h2 = runs.clone();
        for r in &mut h2 {
            r.wrk.p50_us = 0;
            r.wrk.p99_us = 0;
        }
        let t = table(&summarize(&h2));
        assert!(
            t.contains("| ingressd | 11000 | 10000-12000 | - | - | 50.0 µs |"),
            "{t}"
        );
        assert!(runs_table(&h2).contains("| 1 | HTTP/1.1 | ingressd | 100000 | 10000 | - | - |"));
    }

    #[test]
    fn section_is_created_replaced_and_appended_idempotently() {
        let one = "## HTTP routing\n\nfirst\n";
        let two = "## HTTP routing\n\nsecond\n";
        let fresh = update_section(None, one);
        assert!(fresh.starts_with("# Benchmarks\n"));
        assert!(fresh.ends_with("## HTTP routing\n\nfirst\n"));
        let replaced = update_section(Some(&fresh), two);
        assert_eq!(replaced, fresh.replace("first", "second"));
        assert_eq!(update_section(Some(&replaced), two), replaced);

        let with_others = "# Benchmarks\n\n## TCP\n\ntcp\n\n## HTTP routing\n\nold\n### Method\nx\n\n## Kernel\n\nk\n";
        let updated = update_section(Some(with_others), two);
        assert_eq!(
            updated,
            "# Benchmarks\n\n## TCP\n\ntcp\n\n## HTTP routing\n\nsecond\n\n## Kernel\n\nk\n"
        );
        assert_eq!(update_section(Some(&updated), two), updated);

        let without = "# Benchmarks\n\n## TCP\n\ntcp\n";
        let appended = update_section(Some(without), one);
        assert_eq!(
            appended,
            "# Benchmarks\n\n## TCP\n\ntcp\n\n## HTTP routing\n\nfirst\n"
        );
        assert_eq!(update_section(Some(&appended), one), appended);
    }
}
