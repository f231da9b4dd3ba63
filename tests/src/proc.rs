//! Child processes: bounded one-shot commands and long-running daemons with log files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How often bounded waits poll a child.
const POLL: Duration = Duration::from_millis(20);

/// Runs `cmd` to completion, killing it if it takes longer than `timeout`.
///
/// Stdout and stderr are captured (read on their own threads, so a chatty child
/// cannot block on a full pipe). A timeout is an error that includes what the
/// child printed so far.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + timeout)?;
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "{shown} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Like [`run_bounded`], but fails unless the command exits 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = run_bounded(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// A long-running child (daemon, backend) whose stdout and stderr go to files.
///
/// Dropping it kills the process (SIGKILL) if it still runs. If the current
/// thread is panicking (a failed test), the tail of its logs is printed first,
/// so the failure report shows what the daemon said.
pub struct Proc {
    name: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with its output redirected to `<log_dir>/<name>.{stdout,stderr}`.
    ///
    /// The child gets its own process group, so a Ctrl-C on the terminal reaches
    /// only the harness, which then stops its children in order.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            stdout_path,
            stderr_path,
        })
    }

    /// A handle the owner of the namespaces keeps, to kill stragglers on teardown.
    pub(crate) fn shared_child(&self) -> Arc<Mutex<Child>> {
        Arc::clone(&self.child)
    }

    /// The name given at spawn time (also the log file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        // A poisoned lock only means another thread panicked while holding it;
        // the Child inside is still usable.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) if the process has not been reaped yet.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let mut child = self.lock();
        if child.try_wait()?.is_some() {
            bail!("{} already exited", self.name);
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not reaped
        // (checked above under the lock), so the pid still names our process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Returns the exit status if the process has exited (without waiting).
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        Ok(self.lock().try_wait()?)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.lock().try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM, then SIGKILL if still running after `grace`.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if self.signal(libc::SIGTERM).is_ok()
            && let Ok(Some(status)) = self.wait_timeout(grace)
        {
            return Some(status);
        }
        kill_child(&mut self.lock())
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Path of the stdout log file.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Waits (bounded) until `pred` holds for the process's stdout or stderr.
    pub fn wait_for_output(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stdout(), &self.stderr()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?}\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of stderr and stdout, labelled, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {name} stderr (last {lines} lines) ---\n{}\n--- {name} stdout (last {lines} lines) ---\n{}",
            tail(&self.stderr(), lines),
            tail(&self.stdout(), lines),
            name = self.name
        )
    }
}

/// Kills (SIGKILL) and reaps a child if it still runs; returns its status.
pub(crate) fn kill_child(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        kill_child(&mut self.lock());
    }
}
