//! Process plumbing shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's manifest directory).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// Puts `~/.cargo/bin` first on `PATH` and makes the repository root the working
/// directory, for this process and so for every child it spawns.
pub fn init_env() -> Result<()> {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin");
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = vec![cargo_bin.clone()];
    paths.extend(std::env::split_paths(&old).filter(|p| *p != cargo_bin));
    let path = std::env::join_paths(paths).context("building PATH")?;
    // SAFETY: called first thing in main, before any thread exists, so nothing can
    // read the environment concurrently.
    unsafe { std::env::set_var("PATH", path) };
    std::env::set_current_dir(repo_root())
        .with_context(|| format!("entering {}", repo_root().display()))?;
    Ok(())
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    ingressd_tests::root::is_root()
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    println!("$ {shown}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout if it exits 0, `None` otherwise (also
/// when it cannot be started).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd` as a person would type it.
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains([' ', '|', '\'', '"', '*']) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// `cargo` from `PATH` (rustup's proxy, which `init_env` put first).
pub fn cargo() -> Command {
    Command::new("cargo")
}

/// Builds the release binaries the demo and the benchmarks run (`ingressd`,
/// and `ingressd-testapp` when `with_testapp`); returns `target/release`.
pub fn build_release_bins(with_testapp: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--package", "ingress-userspace"]);
    if with_testapp {
        cmd.args(["--package", "ingressd-tests"]);
    }
    run(cmd.arg("--bins"))?;
    Ok(target_dir().join("release"))
}
