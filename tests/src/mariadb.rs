//! A real MariaDB server in the pods namespace, and the real `mariadb` client in any
//! namespace: the backend and the client of the MySQL (TCP 3306) path.
//!
//! The server is throw-away: `mariadb-install-db` initialises a data directory in a
//! temporary directory (about half a second), `mariadbd` serves it on
//! `<addr>:3306` inside the pods namespace, and dropping [`MariaDb`] stops the server
//! and deletes the directory. An `--init-file` creates the database [`DATABASE`] and
//! the user [`USER`]`@'%'` with password [`PASSWORD`], so clients log in over TCP
//! with a password from any address, the way an application would; no
//! `--skip-grant-tables`.
//!
//! Flags that matter here:
//! - `--no-defaults` everywhere: the machine's `/etc/mysql` configuration (and a
//!   running system server) must not leak into the test.
//! - `--user=root`: mariadbd refuses to run as root without it; the tests run as root.
//! - `--skip-name-resolve`: no reverse DNS for client addresses (the namespaces have
//!   no resolver, and a lookup would stall every login).
//! - small InnoDB log and buffer pool, `--innodb-flush-log-at-trx-commit=0`, no binary
//!   log: fast startup and writes; durability does not matter for a throw-away server.
//! - `--server-id=N`: `SELECT @@server_id` tells which instance a connection reached.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{Proc, run_bounded, run_ok};
use crate::topology::{Ns, Topology};

/// The port MariaDB listens on (inside the pods namespace).
pub const PORT: u16 = 3306;
/// The database the init file creates.
pub const DATABASE: &str = "lab";
/// The user the init file creates, allowed from any host (`'lab'@'%'`).
pub const USER: &str = "lab";
/// [`USER`]'s password.
pub const PASSWORD: &str = "lab-secret";

/// How long `mariadb-install-db` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to accept a login after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Upper bound for one run of the `mariadb` client (its own connect timeout is lower).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The client's `--connect-timeout`, in seconds.
const CONNECT_TIMEOUT_SECS: u32 = 5;

/// A running, throw-away MariaDB server in the pods namespace.
///
/// Dropping it stops the server (SIGTERM, then SIGKILL after a grace period) and
/// removes its data directory.
pub struct MariaDb {
    // Field order is drop order: the server stops before its directory goes.
    proc: Option<Proc>,
    addr: SocketAddr,
    server_id: u32,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl MariaDb {
    /// Initialises a data directory and starts `mariadbd` on `addr:3306` in the pods
    /// namespace of `topo` (`addr` must be one of its pod addresses). `name` labels the
    /// log files; `server_id` is what `SELECT @@server_id` answers.
    ///
    /// Returns once [`USER`] can log in over TCP, at most about 30 s; on failure the
    /// error carries the tail of the server's log.
    pub fn start(topo: &Topology, name: &str, addr: Ipv4Addr, server_id: u32) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ingressd-mariadb-")
            .tempdir()
            .context("creating the MariaDB directory")?;
        let datadir = dir.path().join("data");
        let socket = dir.path().join("mysqld.sock");
        let init_file = dir.path().join("init.sql");
        std::fs::write(&init_file, init_sql()).context("writing the MariaDB init file")?;
        install_db(&datadir, dir.path())?;

        let args: Vec<String> = [
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", datadir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
            format!("--tmpdir={}", dir.path().display()),
            format!("--bind-address={addr}"),
            format!("--port={PORT}"),
            format!("--server-id={server_id}"),
            format!("--init-file={}", init_file.display()),
        ]
        .into_iter()
        .chain(FAST_FLAGS.iter().map(|f| (*f).to_owned()))
        .collect();
        let proc = topo.spawn(Ns::Pods, name, "mariadbd", &args)?;
        let db = Self {
            proc: Some(proc),
            addr: SocketAddr::V4(SocketAddrV4::new(addr, PORT)),
            server_id,
            socket,
            dir,
        };
        db.wait_ready(topo)?;
        Ok(db)
    }

    /// `addr:3306`, as the pods namespace (and the node) reach it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `--server-id` it was started with.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The server process (logs, pid).
    pub fn proc(&self) -> &Proc {
        self.proc
            .as_ref()
            .expect("the server process is only taken in Drop")
    }

    /// The data directory's parent (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` as root over the server's Unix socket (no network, no gateway):
    /// the ground truth to compare what went through the gateway with.
    pub fn admin_query(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["--user=root", "--batch", "--skip-column-names"])
            .arg(format!("--database={DATABASE}"))
            .args(["-e", sql]);
        let out = run_bounded(&mut cmd, CLIENT_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "mariadb (socket, root) failed ({}) on {sql:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(parse_rows(&String::from_utf8_lossy(&out.stdout)))
    }

    fn wait_ready(&self, topo: &Topology) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let target = Target::new(self.addr);
        loop {
            if let Some(status) = self.proc().try_status()? {
                bail!(
                    "mariadbd exited ({status}) before it accepted logins\n{}",
                    self.proc().log_tail(40)
                );
            }
            let last = match query(topo, Ns::Pods, target, "SELECT 1") {
                Ok(rows) if rows == [["1"]] => return Ok(()),
                Ok(rows) => format!("unexpected answer {rows:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "mariadbd on {} did not accept a login within {START_TIMEOUT:?} \
                     (last attempt: {last})\n{}",
                    self.addr,
                    self.proc().log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop(STOP_GRACE);
            // Proc's Drop prints the log tail if the test is failing.
            drop(proc);
        }
        // `dir` (the TempDir) is removed after this, with the data directory in it.
    }
}

/// Server flags for a fast start and fast writes; see the module docs.
const FAST_FLAGS: &[&str] = &[
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-flush-log-at-trx-commit=0",
    "--max-connections=200",
];

fn init_sql() -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS {DATABASE};\n\
         CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n\
         GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{USER}'@'%';\n\
         GRANT PROCESS ON *.* TO '{USER}'@'%';\n"
    )
}

/// `tmpdir` is passed on to the bootstrap server: with the default `/tmp`, two
/// bootstraps at once trip over each other's temporary tables.
fn install_db(datadir: &Path, tmpdir: &Path) -> Result<()> {
    let mut cmd = Command::new("mariadb-install-db");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .args(FAST_FLAGS);
    run_ok(&mut cmd, INSTALL_TIMEOUT).with_context(|| {
        format!(
            "mariadb-install-db into {} (is mariadb-server installed? `cargo xtask setup` installs it)",
            datadir.display()
        )
    })?;
    Ok(())
}

/// Where a client connects: address and port of a MariaDB server or of the gateway.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Host and port (`-h`, `-P`).
    pub addr: SocketAddr,
}

impl Target {
    /// A target at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// The client's arguments up to (not including) the statements: no defaults files,
    /// TCP to `addr`, [`USER`]/[`PASSWORD`], database [`DATABASE`], tab-separated rows
    /// without column names.
    fn client_args(self) -> Vec<String> {
        vec![
            "--no-defaults".to_owned(),
            "--protocol=TCP".to_owned(),
            format!("--host={}", self.addr.ip()),
            format!("--port={}", self.addr.port()),
            format!("--user={USER}"),
            format!("--password={PASSWORD}"),
            format!("--database={DATABASE}"),
            format!("--connect-timeout={CONNECT_TIMEOUT_SECS}"),
            "--batch".to_owned(),
            "--skip-column-names".to_owned(),
        ]
    }
}

/// Runs `sql` (one or more statements) with the real `mariadb` client from `ns` against
/// `target`, in one connection; returns the rows of every result set, each a list of
/// columns (`NULL` as the string `NULL`).
pub fn query(topo: &Topology, ns: Ns, target: Target, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut args = target.client_args();
    args.push("--execute".to_owned());
    args.push(sql.to_owned());
    let out = topo.exec(ns, "mariadb", &args, CLIENT_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "mariadb to {} failed ({}) on {sql:?}: {}",
            target.addr,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_rows(&String::from_utf8_lossy(&out.stdout)))
}

/// Like [`query`], for a statement with a single value as its answer.
pub fn query_value(topo: &Topology, ns: Ns, target: Target, sql: &str) -> Result<String> {
    let rows = query(topo, ns, target, sql)?;
    match rows.as_slice() {
        [row] if row.len() == 1 => Ok(row[0].clone()),
        _ => bail!(
            "{sql:?} through {}: expected one value, got {rows:?}",
            target.addr
        ),
    }
}

fn parse_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// One long-lived session of the real `mariadb` client (one TCP connection), fed
/// statements on its standard input, for tests where a connection must stay open
/// across something (a config change, a daemon restart).
///
/// The client runs with `--skip-reconnect`, so a broken connection is an error and
/// never silently replaced by a new one; a statement error ends the client (batch
/// mode), which the next [`Session::query`] reports with the client's stderr.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    target: Target,
    markers: u32,
}

impl Session {
    /// Starts `mariadb` in `ns` against `target` and waits (bounded) until its
    /// connection answers a first query.
    pub fn open(topo: &Topology, ns: Ns, target: Target) -> Result<Self> {
        let mut cmd = topo.exec_command(ns, "mariadb", target.client_args());
        cmd.args(["--unbuffered", "--skip-reconnect"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning the mariadb client")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("mariadb stdout")?;
        let stderr_pipe = child.stderr.take().context("mariadb stderr")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut session = Self {
            child,
            stdin,
            lines,
            stderr,
            target,
            markers: 0,
        };
        session
            .query("SELECT 1")
            .with_context(|| format!("opening a session to {}", target.addr))?;
        Ok(session)
    }

    /// Runs `sql` (one statement, no trailing `;`) in this session and returns its
    /// rows, waiting at most 20 s.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        self.markers += 1;
        // A marker row after the statement tells where its output ends.
        let marker = format!("--end of statement {}--", self.markers);
        let input = format!("{sql};\nSELECT '{marker}';\n");
        let stdin = self.stdin.as_mut().context("session already closed")?;
        if let Err(e) = stdin
            .write_all(input.as_bytes())
            .and_then(|()| stdin.flush())
        {
            bail!(
                "writing to the mariadb client ({}): {e}; stderr: {}",
                self.target.addr,
                self.stderr_text()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut rows = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == marker => return Ok(rows),
                Ok(line) => rows.push(line.split('\t').map(str::to_owned).collect()),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{sql:?} through {}: no answer within 20 s; stderr: {}",
                    self.target.addr,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to collect the client's last words.
                    let _ = self.child.wait();
                    thread::sleep(Duration::from_millis(50));
                    bail!(
                        "{sql:?} through {}: the mariadb client exited; stderr: {}",
                        self.target.addr,
                        self.stderr_text()
                    )
                }
            }
        }
    }

    /// Like [`Session::query`], for a statement with a single value as its answer.
    pub fn query_value(&mut self, sql: &str) -> Result<String> {
        let rows = self.query(sql)?;
        match rows.as_slice() {
            [row] if row.len() == 1 => Ok(row[0].clone()),
            _ => bail!("{sql:?}: expected one value, got {rows:?}"),
        }
    }

    /// What the client printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the session: closes the client's input (it quits), waits at most 5 s.
    pub fn close(mut self) -> Result<()> {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "mariadb client exited with {status}; stderr: {}",
                        self.stderr_text()
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("mariadb client did not exit within 5 s after its input closed");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
