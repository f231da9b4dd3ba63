//! The privilege gate for tests that need root (network namespaces, eBPF).

use std::io::Write;

/// The environment variable that lets root tests skip (loudly) instead of fail.
pub const SKIP_VAR: &str = "INGRESSD_SKIP_ROOT_TESTS";

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Call first in every test that needs root. Returns `true` when the test may run.
///
/// Without root it panics with a clear message, unless `INGRESSD_SKIP_ROOT_TESTS=1`:
/// then it prints a loud `SKIPPED` line (straight to stderr, past the test
/// harness's output capture) and returns `false`; the test should return at once.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: needs root (network namespaces); {SKIP_VAR}=1 is set"
        );
        return false;
    }
    panic!(
        "{test} needs root (it creates network namespaces). Run the tests as root \
         (`sudo -E cargo xtask test`), or set {SKIP_VAR}=1 to skip root tests."
    );
}
