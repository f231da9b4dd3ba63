//! Locating the built binaries the tests run.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The `ingressd` binary: `$INGRESSD_BIN`, else `ingressd` in the target directory the
/// current executable was built into (`target/<profile>/`).
pub fn ingressd_bin() -> Result<PathBuf> {
    locate("INGRESSD_BIN", "ingressd")
}

/// The `ingressd-testapp` binary: `$INGRESSD_TESTAPP_BIN`, else next to `ingressd`.
pub fn testapp_bin() -> Result<PathBuf> {
    locate("INGRESSD_TESTAPP_BIN", "ingressd-testapp")
}

fn locate(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("${var} points to {}, which is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let mut tried = Vec::new();
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate);
    }
    bail!(
        "cannot find the `{name}` binary (tried {}); build it first with \
         `cargo build --workspace --exclude ingress-ebpf --bins` (cargo xtask test does), \
         or set ${var}",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The `target/` directory the current executable was built into, if it looks like one.
pub fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
}
