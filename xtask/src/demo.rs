//! `cargo xtask demo [--once]`: the seed article's gateway in network namespaces.
//!
//! ```text
//!  ingressd-demo-client         ingressd-demo-node              ingressd-demo-pods
//!  198.18.0.2  ---- veth ----  198.18.0.1 | 198.18.1.1 ---- veth ----  198.18.1.10:8080 counter-v1-a
//!   curl                        ingressd run                          198.18.1.11:8080 counter-v1-b
//!                                                                     198.18.1.20:3306 mysql (tcp echo)
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ingressd_tests::config::{COUNTER_HOST, ConfigDir, SeedConfig, self_signed_cert};
use ingressd_tests::mariadb::{self, MariaDb, Target};
use ingressd_tests::{Ns, Proc, Topology, sock};

use crate::setup;
use crate::util::{build_release_bins, is_root, target_dir};

const PREFIX: &str = "ingressd-demo";
const COUNTER_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const COUNTER_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const MYSQL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const UNKNOWN_HOST: &str = "unknown.example.com";

/// Runs the demo; with `once`, exits after the requests instead of serving until Ctrl-C.
pub fn run_demo(once: bool) -> Result<()> {
    setup::run(setup::Mode::Install)?;
    if !is_root() {
        bail!("cargo xtask demo creates network namespaces and needs root");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }

    let release = build_release_bins(true)?;
    let ingressd = release.join("ingressd");
    let testapp = release.join("ingressd-testapp");
    let demo_dir = target_dir().join("demo");
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    println!("\n== topology: {PREFIX}-client / {PREFIX}-node / {PREFIX}-pods");
    let topo = Topology::builder()
        .prefix(PREFIX)
        .replace_existing(true)
        .pod_addrs([COUNTER_A, COUNTER_B, MYSQL])
        .log_dir(demo_dir.join("logs"))
        .build()?;
    let mut backends = Vec::new();
    for (addr, name) in [(COUNTER_A, "counter-v1-a"), (COUNTER_B, "counter-v1-b")] {
        backends.push(topo.start_backend_with(&testapp, "counter", sock(addr, 8080), name)?);
        println!("   backend {name} on {addr}:8080 (pods ns)");
    }
    // A real MariaDB (installed by `cargo xtask setup`) behind the mysql route.
    let database = MariaDb::start(&topo, "mariadb", MYSQL, 1)?;
    println!("   backend mariadb on {MYSQL}:3306 (pods ns; database lab, user lab)");

    let config = ConfigDir::at(demo_dir.join("config"))?;
    // The seed's HTTPS server (mode SIMPLE, certificate files as in the article's
    // /etc/istio/ingressgateway-certs mount), with a self-signed certificate.
    let cert = self_signed_cert(&demo_dir.join("certs"))?;
    let ca_file = cert.0.clone();
    let seed = SeedConfig {
        counter_backends: vec![COUNTER_A, COUNTER_B],
        counter_port: 8080,
        mysql_backends: vec![MYSQL],
        tls_files: Some(cert),
    };
    config.write_all(&seed.files())?;
    let config_path = config.path().to_owned();
    println!("\n== config: {}", rel(&config_path).display());
    for (name, _) in seed.files() {
        println!("   {name}");
    }
    let check = ingressd_tests::daemon::ingressd_cli_with(
        &ingressd,
        &["check", "--config", &config_path.to_string_lossy()],
    )?;
    println!("\n== ingressd check ({})", check.status);
    print_indented(&String::from_utf8_lossy(&check.stdout));
    print_indented(&String::from_utf8_lossy(&check.stderr));

    println!(
        "\n== ingressd run --config {} (node ns)",
        rel(&config_path).display()
    );
    // The kernel path attaches to every interface of the node (where eBPF
    // cannot load, the daemon says so and serves everything in userspace).
    let daemon = topo.start_ingressd_with(&ingressd, &config_path, &[])?;
    println!(
        "   ready; logs: {} (access log: {})",
        rel(daemon.stderr_path()).display(),
        rel(daemon.stdout_path()).display()
    );
    print_indented(&daemon.stderr());

    let reached = send_requests(&topo, &ingressd, &config_path)?;
    let reached_https = send_https_request(&topo, &ingressd, &config_path, &ca_file)?;
    print_kernel_counters(&topo)?;
    print_next_steps(&ingressd, &config_path, &ca_file, &daemon);

    let outcome = if once {
        Ok(())
    } else {
        println!("\nServing until Ctrl-C ...");
        wait_for_stop(&stop, &daemon)
    };

    println!("\n== stopping");
    match daemon.stop(Duration::from_secs(10)) {
        Some(status) => println!("   ingressd exited: {status}"),
        None => println!("   ingressd: could not collect its exit status"),
    }
    drop(backends);
    drop(database);
    drop(topo);
    println!("   namespaces removed");
    outcome?;
    if !reached_https {
        bail!(
            "the HTTPS request (https://{COUNTER_HOST}:30443/ with --cacert) did not reach a counter backend"
        );
    }
    if !reached {
        bail!(
            "the seed request (Host: {COUNTER_HOST} on 198.18.0.1:30080) did not reach a counter backend"
        );
    }
    Ok(())
}

/// One line per attachment, frontend, backend and steered port of the
/// daemon's kernel dump.
fn print_kernel_dump(k: &serde_json::Value) {
    let list = |key: &str| k[key].as_array().cloned().unwrap_or_default();
    for hook in list("hooks") {
        println!(
            "   {} ({}, ifindex {}, {}): tc_ingress via {} [{}]; {}",
            text(&hook["interface"]),
            text(&hook["driver"]),
            text(&hook["ifindex"]),
            text(&hook["address"]),
            text(&hook["hook"]),
            text(&hook["link"]),
            text(&hook["reason"]),
        );
    }
    println!(
        "   netns: sk_lookup_steer [{}]",
        text(&k["sk_lookup"]["netns_link"])
    );
    for f in list("frontends") {
        println!(
            "   frontend {} -> service {} (Maglev table {})",
            text(&f["frontend"]),
            text(&f["service_id"]),
            text(&f["table"])
        );
    }
    for b in list("backends") {
        println!(
            "   backend {} = {} ({})",
            text(&b["id"]),
            text(&b["address"]),
            text(&b["cluster"])
        );
    }
    for st in list("steering") {
        println!(
            "   steering: nodePort {} -> listener {} (socket slot {})",
            text(&st["node_port"]),
            text(&st["listener"]),
            text(&st["slot"])
        );
    }
    println!(
        "   conntrack entries: {}; pins under {}",
        text(&k["conntrack_entries"]),
        text(&k["pin_root"])
    );
}

/// Prints the kernel path's non-zero counters.
fn print_kernel_counters(topo: &Topology) -> Result<()> {
    println!("\n== kernel: what is attached where (from /config_dump, like `bpftool net`)");
    let dump = topo.exec(
        Ns::Node,
        "curl",
        [
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:15000/config_dump",
        ],
        Duration::from_secs(10),
    )?;
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap_or_default();
    let kernel = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["@type"] == "ingressd.KernelDump");
    match kernel {
        None => println!("   (the kernel path is not active; see the daemon log above)"),
        Some(k) => print_kernel_dump(k),
    }
    println!("\n== kernel: what tc_ingress and sk_lookup_steer did (non-zero counters)");
    let out = topo.exec(
        Ns::Node,
        "curl",
        [
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:15000/stats/prometheus",
        ],
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ingressd_kernel_") && !l.ends_with(" 0"))
        .collect();
    if lines.is_empty() {
        println!(
            "   (no kernel counters: the kernel path is not active; see the daemon log above)"
        );
    }
    for line in lines {
        println!("   {line}");
    }
    Ok(())
}

/// Sends the demo requests; returns whether a seed request reached a counter backend.
fn send_requests(topo: &Topology, ingressd: &Path, config: &Path) -> Result<bool> {
    println!("\n== requests from the client namespace");
    let mut reached = false;
    let requests = [
        (30080, COUNTER_HOST),
        (30080, COUNTER_HOST),
        (30080, COUNTER_HOST),
        (8080, COUNTER_HOST),
        (30080, UNKNOWN_HOST),
    ];
    for (port, host) in requests {
        let url = format!("http://198.18.0.1:{port}/");
        println!("\n$ ip netns exec {PREFIX}-client curl -H 'Host: {host}' {url}");
        let result = topo.get(&url, host)?;
        let Some(response) = result
            .response
            .clone()
            .filter(|_| result.exit_code == Some(0))
        else {
            println!(
                "   failed: curl exit {:?}: {}",
                result.exit_code,
                result.stderr.trim()
            );
            continue;
        };
        let backend = response
            .json()
            .ok()
            .filter(|j| j["app"] == "counter")
            .map(|j| {
                format!(
                    "backend {} (its request #{})",
                    j["instance"].as_str().unwrap_or("?"),
                    j["count"]
                )
            });
        match &backend {
            Some(b) => {
                println!("   {} from {b}", response.status);
                if response.status == 200 && host == COUNTER_HOST && port == 30080 {
                    reached = true;
                }
            }
            None => println!(
                "   {} (not from a backend): {}",
                response.status,
                response.body.trim()
            ),
        }
        // The route is the Gateway's port 80 whichever node port the request used.
        let port = "80".to_owned();
        print_route(
            ingressd,
            config,
            &["--port", &port, "--host", host, "--path", "/"],
        );
    }

    // The mysql port: the real client, TCP straight through the kernel (or the
    // userspace proxy where eBPF cannot load).
    let gateway = Target::new(sock(Ipv4Addr::new(198, 18, 0, 1), 30306));
    let sql = "CREATE TABLE IF NOT EXISTS visits (n INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP DEFAULT NOW()); \
               INSERT INTO visits () VALUES (); \
               SELECT CONCAT('visits: ', COUNT(*), ', server: ', @@hostname, ' ', @@version) FROM visits";
    println!(
        "\n$ ip netns exec {PREFIX}-client mariadb -h 198.18.0.1 -P 30306 -u lab -p... lab -e \"{sql}\""
    );
    match mariadb::query(topo, Ns::Client, gateway, sql) {
        Ok(rows) => {
            for row in rows {
                println!("   {}", row.join(" "));
            }
        }
        Err(e) => println!("   failed: {e:#}"),
    }
    print_route(ingressd, config, &["--port", "3306", "--protocol", "tcp"]);
    Ok(reached)
}

/// The article's port 443: HTTPS through nodePort 30443 with the real curl,
/// the name resolved to the node with `--resolve` and the certificate
/// trusted with `--cacert`. Returns whether it reached a counter backend.
fn send_https_request(topo: &Topology, ingressd: &Path, config: &Path, ca: &Path) -> Result<bool> {
    let resolve = format!("{COUNTER_HOST}:30443:198.18.0.1");
    let url = format!("https://{COUNTER_HOST}:30443/");
    println!(
        "\n$ ip netns exec {PREFIX}-client curl --resolve {resolve} --cacert {} {url}",
        rel(ca).display()
    );
    let out = topo.exec(
        Ns::Client,
        "curl",
        [
            "-sS".as_ref(),
            "--max-time".as_ref(),
            "5".as_ref(),
            "--resolve".as_ref(),
            resolve.as_str().as_ref(),
            "--cacert".as_ref(),
            ca.as_os_str(),
            "-w".as_ref(),
            "\n%{http_code} %{http_version} %{ssl_verify_result}".as_ref(),
            std::ffi::OsStr::new(&url),
        ],
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut fields = trailer.split_whitespace();
    let (status, version) = (fields.next().unwrap_or("-"), fields.next().unwrap_or("-"));
    let backend: Option<serde_json::Value> = serde_json::from_str(body.trim()).ok();
    let reached = status == "200" && backend.as_ref().is_some_and(|j| j["app"] == "counter");
    match backend.filter(|_| reached) {
        Some(j) => println!(
            "   {status} over HTTP/{version} (TLS, certificate verified) from backend {} (its request #{})",
            j["instance"].as_str().unwrap_or("?"),
            j["count"]
        ),
        None => println!(
            "   failed: status {status}, curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
    print_route(
        ingressd,
        config,
        &[
            "--port",
            "30443",
            "--host",
            COUNTER_HOST,
            "--path",
            "/",
            "--tls",
        ],
    );
    Ok(reached)
}

/// Prints where `ingressd explain <args>` says the request goes, on one line.
fn print_route(ingressd: &Path, config: &Path, args: &[&str]) {
    let config = config.to_string_lossy();
    let mut all = vec!["explain", "--config", &config];
    all.extend_from_slice(args);
    let out = match ingressd_tests::daemon::ingressd_cli_with(ingressd, &all) {
        Ok(out) => out,
        Err(e) => {
            println!("   route: ingressd explain failed: {e:#}");
            return;
        }
    };
    let Ok(e) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        println!(
            "   route: ingressd explain printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    };
    let error = e
        .get("error")
        .filter(|v| !v.is_null())
        .map(|v| format!(", error {}", text(v)))
        .unwrap_or_default();
    let chain = e
        .get("filter_chain")
        .and_then(|c| c.get("name"))
        .map(|n| format!(", filter chain {}", text(n)))
        .unwrap_or_default();
    println!(
        "   route: listener {}{chain}, virtual_host {}, route {}, cluster {}{error}",
        field(&e, "listener"),
        field(&e, "virtual_host"),
        route_text(e.get("route")),
        field(&e, "cluster"),
    );
}

/// A route as `<virtual service> <field>` when explain says where it came from.
fn route_text(route: Option<&serde_json::Value>) -> String {
    let Some(route) = route.filter(|r| !r.is_null()) else {
        return "-".to_owned();
    };
    match (route.get("virtual_service"), route.get("field")) {
        (Some(vs), Some(field)) => format!("{} {}", text(vs), text(field)),
        _ => route
            .get("name")
            .or_else(|| route.get("match"))
            .map_or_else(|| route.to_string(), text),
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    v.get(key).map_or_else(|| "-".to_owned(), text)
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::Object(o) => o.get("name").map(text).unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

fn print_next_steps(ingressd: &Path, config: &Path, ca: &Path, daemon: &Proc) {
    let bin = rel(ingressd).display().to_string();
    let config = rel(config).display().to_string();
    let ca = rel(ca).display().to_string();
    println!(
        "\n== try it yourself (from {}; as root)",
        crate::util::repo_root().display()
    );
    for line in [
        format!(
            "ip netns exec {PREFIX}-client curl -si -H 'Host: {COUNTER_HOST}' http://198.18.0.1:30080/"
        ),
        format!(
            "ip netns exec {PREFIX}-client mariadb -h 198.18.0.1 -P 30306 -u {} -p{} {} -e 'SELECT * FROM visits'",
            mariadb::USER,
            mariadb::PASSWORD,
            mariadb::DATABASE
        ),
        format!(
            "ip netns exec {PREFIX}-client curl -si --resolve {COUNTER_HOST}:30443:198.18.0.1 --cacert {ca} https://{COUNTER_HOST}:30443/"
        ),
        format!(
            "ip netns exec {PREFIX}-client openssl s_client -connect 198.18.0.1:30443 -servername {COUNTER_HOST} -brief </dev/null"
        ),
        format!("ip netns exec {PREFIX}-node curl -s 127.0.0.1:15000/certs"),
        "bpftool link show   # the tcx and netns links ingressd pinned".to_owned(),
        format!(
            "ip netns exec {PREFIX}-client curl -si -H 'Host: {UNKNOWN_HOST}' http://198.18.0.1:30080/"
        ),
        format!(
            "ip netns exec {PREFIX}-client curl -si -H 'Host: {COUNTER_HOST}' 'http://198.18.0.1:8080/slow?ms=1500'"
        ),
        format!("{bin} explain --config {config} --port 80 --host {COUNTER_HOST} --path /"),
        format!("{bin} explain --config {config} --port 3306 --protocol tcp"),
        format!("{bin} check --config {config}"),
        format!("{bin} dump --config {config}"),
        format!("ip netns exec {PREFIX}-node curl -s 127.0.0.1:15000/config_dump"),
        format!("ip netns exec {PREFIX}-node curl -s 127.0.0.1:15000/stats/prometheus"),
        format!("ip netns exec {PREFIX}-node curl -si 127.0.0.1:15021/healthz/ready"),
        format!(
            "tail -f {}   # daemon log",
            rel(daemon.stderr_path()).display()
        ),
        format!(
            "tail -f {}   # access log",
            rel(daemon.stdout_path()).display()
        ),
        format!("$EDITOR {config}/counter-virtualservice.yaml   # changes apply live"),
    ] {
        println!("   {line}");
    }
}

/// Waits until Ctrl-C (or SIGTERM) or until the daemon exits on its own.
fn wait_for_stop(stop: &AtomicBool, daemon: &Proc) -> Result<()> {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(status) = daemon.try_status()? {
            bail!(
                "ingressd exited on its own ({status}) after {:?}\n{}",
                started.elapsed(),
                daemon.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// `path` relative to the repository root when it is inside it.
fn rel(path: &Path) -> PathBuf {
    path.strip_prefix(crate::util::repo_root())
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}
