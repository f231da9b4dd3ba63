//! Protocols and telemetry end to end: WebSocket with a real client and server
//! (tokio-tungstenite, the testapp's `ws-echo`) over HTTP, the NodePort and HTTPS;
//! gRPC with a real client and server (Python grpcio, generic handlers: unary,
//! streaming both ways, error statuses with trailers, no route); HTTP/2 downstream
//! (h2c prior knowledge, ALPN over TLS, h2load); and the real `/stats/prometheus`
//! and JSON access-log output parsed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, Message};

use ingressd_tests::config::service_with_endpoints;
use ingressd_tests::features::{BACKENDS, FeatureGateway, http_virtual_service};
use ingressd_tests::l7::{HttpsFiles, Sample, add_address};
use ingressd_tests::proc::Proc;
use ingressd_tests::testapp_bin;
use ingressd_tests::{Ns, node, require_root, run_bounded};

fn file(name: &str, yaml: String) -> (String, String) {
    (format!("{name}.yaml"), yaml)
}

const WS_HOST: &str = "ws.lab.example.com";
/// The `ws-echo` backend.
const WS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);

/// A TCP connection from the client namespace to the node's `port`, as a tokio
/// stream (call inside a runtime).
fn client_stream(gw: &FeatureGateway, port: u16) -> Result<tokio::net::TcpStream> {
    let stream = gw
        .topo
        .connect(Ns::Client, node(port), Duration::from_secs(5))?;
    stream.set_nonblocking(true)?;
    Ok(tokio::net::TcpStream::from_std(stream)?)
}

/// A TLS client that trusts `ca_pem`, offering ALPN `http/1.1` only (WebSocket).
fn tls_connector(ca_pem: &str) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("CA PEM")?)?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Result<Message> {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(m)) => Ok(m?),
        Ok(None) => bail!("the WebSocket closed"),
        Err(_) => bail!("no frame within 5 s"),
    }
}

/// Opens a WebSocket to `url` over `stream`, then: three text and three binary frames
/// one at a time (each answered before the next), then a burst of five text frames
/// answered in order, then a close. Returns the echoes, text as is and binary as
/// `bin:<lossy text>`.
async fn ws_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
) -> Result<Vec<String>> {
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .with_context(|| format!("WebSocket handshake for {url}"))?;
    if response.status() != 101 {
        bail!("handshake answered {}", response.status());
    }
    let show = |m: Message| match m {
        Message::Text(t) => t.to_string(),
        Message::Binary(b) => format!("bin:{}", String::from_utf8_lossy(&b)),
        other => format!("other:{other:?}"),
    };
    let mut out = Vec::new();
    for i in 0..3 {
        ws.send(Message::text(format!("text-{i}"))).await?;
        out.push(show(next_message(&mut ws).await?));
        ws.send(Message::binary(format!("bin-{i}").into_bytes()))
            .await?;
        out.push(show(next_message(&mut ws).await?));
    }
    for i in 0..5 {
        ws.send(Message::text(format!("burst-{i}"))).await?;
    }
    for _ in 0..5 {
        out.push(show(next_message(&mut ws).await?));
    }
    ws.close(None).await?;
    // The server's close frame, then the end of the stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    Ok(out)
}

/// The status a WebSocket handshake for `url` over `stream` got when it was refused.
async fn ws_refused<S: AsyncRead + AsyncWrite + Unpin>(stream: S, url: &str) -> Result<u16> {
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((_, response)) => bail!("{url}: upgraded ({})", response.status()),
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => bail!("{url}: {e}"),
    }
}

/// WebSocket over HTTP/1.1 through the gateway, with a real client and server: frames
/// both ways on the HTTP port, the NodePort and HTTPS; a WebSocket request without a
/// route is refused with 404 and never reaches a backend; `Upgrade: h2c` from a client
/// is stripped before the backend.
#[test]
fn websocket_frames_both_ways_and_upgrades_refused_or_stripped() {
    if !require_root("websocket_frames_both_ways_and_upgrades_refused_or_stripped") {
        return;
    }
    let https = HttpsFiles::new().unwrap();
    let vs = http_virtual_service(
        "ws",
        &[WS_HOST],
        r#"
- name: ws
  match: [{uri: {prefix: /ws/}}]
  route: [{destination: {host: ws-echo}}]
- name: ws-timeout
  match: [{uri: {prefix: /ws-timeout/}}]
  timeout: 300ms
  route: [{destination: {host: ws-echo}}]
- name: h2c
  match: [{uri: {prefix: /h2c/}}]
  route: [{destination: {host: counter}}]
"#,
    );
    let files = [
        https.gateway_file.clone(),
        file("ws", vs),
        file(
            "ws-echo",
            service_with_endpoints("ws-echo", "http", 80, 8080, &[WS_ADDR]),
        ),
    ];
    let gw = FeatureGateway::start(&files, &["--access-log-format", "json"]).unwrap();
    add_address(&gw.topo, Ns::Pods, "eth0", WS_ADDR).unwrap();
    let echo = gw
        .topo
        .start_backend_with(
            &testapp_bin().unwrap(),
            "ws-echo",
            SocketAddr::from((WS_ADDR, 8080)),
            "ws-a",
        )
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut want: Vec<String> = Vec::new();
    for i in 0..3 {
        want.push(format!("ws-a: text-{i}"));
        want.push(format!("bin:ws-a: bin-{i}"));
    }
    want.extend((0..5).map(|i| format!("ws-a: burst-{i}")));
    let mut failures = Vec::new();

    for port in [8080, 30080] {
        let url = format!("ws://{WS_HOST}:{port}/ws/plain-{port}");
        let got = runtime.block_on(async { ws_exchange(client_stream(&gw, port)?, &url).await });
        match got {
            Ok(got) if got == want => {}
            other => failures.push(format!("{url}: want {want:?}, got {other:?}")),
        }
    }
    let url = format!("wss://{WS_HOST}:8443/ws/tls");
    let got = runtime.block_on(async {
        let tcp = client_stream(&gw, 8443)?;
        let name = rustls::pki_types::ServerName::try_from(WS_HOST.to_owned())?;
        let tls = tls_connector(&https.ca_pem)?.connect(name, tcp).await?;
        ws_exchange(tls, &url).await
    });
    match got {
        Ok(got) if got == want => {}
        other => failures.push(format!("{url}: want {want:?}, got {other:?}")),
    }
    // A route timeout bounds the wait for the upgrade's answer, not the WebSocket
    // (Envoy starts it at the end of the request, which an upgrade never has): frames
    // 400 ms apart, 1.2 s in all, on a route with timeout 300ms.
    let url = format!("ws://{WS_HOST}:8080/ws-timeout/x");
    let got: Result<Vec<String>> = runtime.block_on(async {
        let (mut ws, _) = tokio_tungstenite::client_async(&url, client_stream(&gw, 8080)?).await?;
        let mut out = Vec::new();
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            ws.send(Message::text(format!("late-{i}"))).await?;
            if let Message::Text(t) = next_message(&mut ws).await? {
                out.push(t.to_string());
            }
        }
        ws.close(None).await?;
        Ok(out)
    });
    let want_late: Vec<String> = (0..3).map(|i| format!("ws-a: late-{i}")).collect();
    if got.as_ref().ok() != Some(&want_late) {
        failures.push(format!(
            "{url} (route timeout 300ms): want {want_late:?} over 1.2 s, got {got:?}"
        ));
    }

    // The backend saw three upgraded connections, each with all 11 frames.
    let log = echo.stdout();
    let closed = log
        .lines()
        .filter(|l| l.ends_with("closed after 11 frames"))
        .count();
    if closed != 3 {
        failures.push(format!(
            "ws-echo must log three connections of 11 frames:\n{log}"
        ));
    }
    // What the backend got with the upgrade: the client's handshake headers, the
    // authority, and what Envoy adds (x-forwarded-proto of the downstream scheme, a
    // request id).
    for (path, proto) in [("/ws/plain-8080", "http"), ("/ws/tls", "https")] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("ws-echo ws-a: {path} from ")))
            .unwrap_or_default();
        let headers: serde_json::Value = line
            .split_once(" headers=")
            .and_then(|(_, h)| serde_json::from_str(h).ok())
            .unwrap_or_default();
        let ok = headers["upgrade"]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && headers["connection"]
                .as_str()
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
            && headers["sec-websocket-version"] == "13"
            && headers["sec-websocket-key"].is_string()
            && headers["host"]
                .as_str()
                .is_some_and(|h| h.starts_with(WS_HOST))
            && headers["x-forwarded-proto"] == proto
            && headers["x-request-id"].is_string();
        if !ok {
            failures.push(format!(
                "{path}: the backend's handshake must carry upgrade, connection, \
                 sec-websocket-key/-version, host {WS_HOST}, x-forwarded-proto {proto}, \
                 x-request-id; got {line:?}"
            ));
        }
    }
    // The access log has the upgrade (101) with the route and the backend, written
    // when the tunnel closed: with the frames' bytes both ways (11 frames each way,
    // at least 6 bytes each) and the exchange's duration.
    for path in ["/ws/plain-8080", "/ws/plain-30080", "/ws/tls"] {
        match gw.access_entry(path) {
            Ok(e)
                if e.status == 101
                    && e.route_name == "ws"
                    && e.upstream_host == format!("{WS_ADDR}:8080")
                    && e.bytes_received >= 66
                    && e.bytes_sent >= 66 => {}
            other => failures.push(format!(
                "access log of {path}: want 101, route ws, upstream {WS_ADDR}:8080, the tunnel's bytes both ways, got {other:?}"
            )),
        }
    }
    match gw.access_entry("/ws-timeout/x") {
        Ok(e) if e.status == 101 && e.duration_ms >= 1000 => {}
        other => failures.push(format!(
            "access log of /ws-timeout/x (frames over 1.2 s): want 101 lasting at least 1 s, got {other:?}"
        )),
    }

    // No route for the path: 404, no upgrade, nothing reaches a backend.
    let url = format!("ws://{WS_HOST}:8080/no-ws-route");
    let refused = runtime.block_on(async { ws_refused(client_stream(&gw, 8080)?, &url).await });
    let entry = gw.access_entry("/no-ws-route");
    if refused.as_ref().ok() != Some(&404)
        || entry.as_ref().map(|e| e.flags.as_str()).ok() != Some("NR")
        || echo.stdout().contains("no-ws-route")
        || !gw.hits("no-ws-route").is_empty()
    {
        failures.push(format!(
            "WebSocket without a route: want 404 NR and no backend, got {refused:?}, {entry:?}"
        ));
    }

    // `curl --http2` on plain HTTP sends `Upgrade: h2c` (+ HTTP2-Settings): the gateway
    // answers over HTTP/1.1 and the backend sees neither header.
    let r = gw.request(WS_HOST, "/h2c/upgrade", &["--http2"]).unwrap();
    let json = r.json().unwrap_or_default();
    let headers = &json["headers"];
    let entry = gw.access_entry("/h2c/upgrade");
    if r.status != 200
        || headers.get("upgrade").is_some()
        || headers.get("http2-settings").is_some()
        || entry.as_ref().map(|e| e.protocol.as_str()).ok() != Some("HTTP/1.1")
    {
        failures.push(format!(
            "Upgrade: h2c must be stripped (HTTP/1.1 answer, no upgrade header upstream): got {} \
             backend headers {headers}, access log {entry:?}",
            r.status
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const GRPC_HOST: &str = "grpc.lab.example.com";
/// The Python gRPC server.
const GRPC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
const GRPC_PORT: u16 = 50051;

/// A gRPC server with generic handlers (raw bytes, no generated code) for
/// `test.Echo/{Unary,Count,Chat,Fail}` and `test.Slow/Sleep` (sleeps as many seconds
/// as the request says); argv: address, instance name.
const GRPC_SERVER: &str = r#"
import sys, time
from concurrent import futures
import grpc

addr, name = sys.argv[1], sys.argv[2]

def unary(request, context):
    return ("%s: %s" % (name, request.decode())).encode()

def count(request, context):
    # "N" streams N messages; "N!" then ends with RESOURCE_EXHAUSTED (in trailers).
    text = request.decode()
    for i in range(int(text.rstrip("!"))):
        yield ("%s: %d" % (name, i)).encode()
    if text.endswith("!"):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of numbers")

def chat(requests, context):
    for message in requests:
        yield ("%s: %s" % (name, message.decode())).encode()

def fail(request, context):
    context.set_trailing_metadata((("x-missing", request.decode()),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item: " + request.decode())

handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}
def sleep(request, context):
    time.sleep(float(request.decode()))
    return b"woke up"

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((
    grpc.method_handlers_generic_handler("test.Echo", handlers),
    grpc.method_handlers_generic_handler(
        "test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}),
))
server.add_insecure_port(addr)
server.start()
print("grpc server %s listening on %s" % (name, addr), flush=True)
server.wait_for_termination()
"#;

/// The gRPC client: every case against target argv[1] with `:authority` argv[2];
/// prints one JSON object, case -> {code, details, replies, trailers, seconds}.
const GRPC_CLIENT: &str = r#"
import json, queue, sys, time
import grpc

target, authority = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
out = {}

def run(case, call):
    started = time.monotonic()
    try:
        replies = call()
        result = {"code": "OK", "replies": replies}
    except grpc.RpcError as e:
        result = {"code": e.code().name, "details": e.details(),
                  "trailers": dict(e.trailing_metadata() or ())}
    result["seconds"] = time.monotonic() - started
    out[case] = result

run("unary", lambda: [channel.unary_unary("/test.Echo/Unary")(b"hello", timeout=10).decode()])
run("server_stream", lambda: [m.decode() for m in channel.unary_stream("/test.Echo/Count")(b"5", timeout=10)])

def ping_pong():
    # The next message goes out only after the answer to the previous one came back:
    # a proxy that held the request stream until its end would stall this.
    answered = queue.Queue()
    def requests():
        for i in range(4):
            yield ("ping-%d" % i).encode()
            try:
                answered.get(timeout=5)
            except queue.Empty:
                return
    replies = []
    for m in channel.stream_stream("/test.Echo/Chat")(requests(), timeout=15):
        replies.append(m.decode())
        answered.put(m)
    return replies

run("bidi", ping_pong)

def stream_then_error():
    # Messages first, then an error status in the trailers: the messages arrive.
    got = []
    try:
        for m in channel.unary_stream("/test.Echo/Count")(b"3!", timeout=10):
            got.append(m.decode())
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details(), "replies": got}
    return {"code": "OK", "replies": got}

out["stream_error"] = stream_then_error()
run("error", lambda: [channel.unary_unary("/test.Echo/Fail")(b"42", timeout=10)])
run("no_route", lambda: [channel.unary_unary("/other.Missing/Nothing")(b"x", timeout=10)])
run("route_timeout", lambda: [channel.unary_unary("/test.Slow/Sleep")(b"2", timeout=10).decode()])
run("connect_failure", lambda: [channel.unary_unary("/test.Down/Nothing")(b"x", timeout=10)])
print(json.dumps(out))
"#;

/// Whether every field of `want` (recursively, for objects) is in `got`.
fn json_subset(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    match (want, got) {
        (serde_json::Value::Object(w), serde_json::Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| json_subset(v, gv))),
        _ => want == got,
    }
}

/// Whether `python3` can import grpc (installed by `cargo xtask setup`).
fn grpc_available() -> Result<()> {
    let out = run_bounded(
        std::process::Command::new("python3").args(["-c", "import grpc"]),
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        bail!(
            "python3 cannot import grpc ({}); `cargo xtask setup` installs grpcio from PyPI",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn start_grpc_server(gw: &FeatureGateway, dir: &Path) -> Result<Proc> {
    let script = dir.join("grpc_server.py");
    std::fs::write(&script, GRPC_SERVER)?;
    add_address(&gw.topo, Ns::Pods, "eth0", GRPC_ADDR)?;
    let listen = format!("{GRPC_ADDR}:{GRPC_PORT}");
    let script = script.display().to_string();
    let server = gw.topo.spawn(
        Ns::Pods,
        "grpc-a",
        "python3",
        ["-u", script.as_str(), listen.as_str(), "grpc-a"],
    )?;
    gw.topo
        .wait_tcp(
            Ns::Pods,
            SocketAddr::from((GRPC_ADDR, GRPC_PORT)),
            Duration::from_secs(20),
        )
        .with_context(|| format!("the gRPC server did not start\n{}", server.log_tail(20)))?;
    Ok(server)
}

/// Sum of `istio_requests_total` over the samples that have every label of `want`.
fn requests_total(samples: &[Sample], want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == "istio_requests_total" && s.has(want))
        .map(|s| s.value)
        .sum()
}

/// gRPC end to end with a real client and server (Python grpcio): unary, server
/// streaming and bidirectional streaming (ping-pong) through the gateway over h2c to
/// an HTTP/2 upstream (Service port `grpc-echo`); a handler's NOT_FOUND with details
/// and trailers reaches the client intact; no route is UNIMPLEMENTED; the metrics
/// say `request_protocol="grpc"` with `grpc_response_status`.
#[test]
fn grpc_unary_streaming_errors_and_metrics() {
    if !require_root("grpc_unary_streaming_errors_and_metrics") {
        return;
    }
    grpc_available().unwrap();
    let vs = http_virtual_service(
        "grpc",
        &[GRPC_HOST],
        r#"
- name: echo
  match: [{uri: {prefix: /test.Echo/}}]
  route: [{destination: {host: grpc-echo}}]
- name: slow
  match: [{uri: {prefix: /test.Slow/}}]
  timeout: 300ms
  route: [{destination: {host: grpc-echo}}]
- name: down
  match: [{uri: {prefix: /test.Down/}}]
  route: [{destination: {host: grpc-down}}]
"#,
    );
    let files = [
        file("grpc", vs),
        file(
            "grpc-echo",
            service_with_endpoints("grpc-echo", "grpc-echo", GRPC_PORT, GRPC_PORT, &[GRPC_ADDR]),
        ),
        // Nothing listens there: connections are refused.
        file(
            "grpc-down",
            service_with_endpoints(
                "grpc-down",
                "grpc",
                GRPC_PORT,
                GRPC_PORT + 1,
                &[Ipv4Addr::new(198, 18, 1, 2)],
            ),
        ),
    ];
    let gw = FeatureGateway::start(&files, &["--access-log-format", "json"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _server = start_grpc_server(&gw, dir.path()).unwrap();
    let client = dir.path().join("grpc_client.py");
    std::fs::write(&client, GRPC_CLIENT).unwrap();
    let target = node(8080).to_string();
    let out = gw
        .topo
        .exec(
            Ns::Client,
            "python3",
            [
                client.to_str().unwrap_or_default(),
                target.as_str(),
                GRPC_HOST,
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the gRPC client printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut failures = Vec::new();
    // `want` is a subset of what the client got (the trailers of a trailers-only
    // answer also hold its headers, e.g. `date`).
    let mut check = |case: &str, want: serde_json::Value| {
        let got = &results[case];
        if !json_subset(&want, got) {
            failures.push(format!("gRPC {case}: want {want}, got {got}"));
        }
    };
    check(
        "unary",
        serde_json::json!({"code": "OK", "replies": ["grpc-a: hello"]}),
    );
    check(
        "server_stream",
        serde_json::json!({"code": "OK", "replies": (0..5).map(|i| format!("grpc-a: {i}")).collect::<Vec<_>>()}),
    );
    check(
        "bidi",
        serde_json::json!({"code": "OK", "replies": (0..4).map(|i| format!("grpc-a: ping-{i}")).collect::<Vec<_>>()}),
    );
    check(
        "error",
        serde_json::json!({"code": "NOT_FOUND", "details": "no such item: 42", "trailers": {"x-missing": "42"}}),
    );
    check("no_route", serde_json::json!({"code": "UNIMPLEMENTED"}));
    check(
        "stream_error",
        serde_json::json!({"code": "RESOURCE_EXHAUSTED", "details": "out of numbers", "replies": (0..3).map(|i| format!("grpc-a: {i}")).collect::<Vec<_>>()}),
    );
    // Local replies map as Envoy's httpToGrpcStatus: the route timeout's 504 and the
    // connect failure's 503 are UNAVAILABLE.
    check("route_timeout", serde_json::json!({"code": "UNAVAILABLE"}));
    check(
        "connect_failure",
        serde_json::json!({"code": "UNAVAILABLE"}),
    );
    let timeout_seconds = results["route_timeout"]["seconds"]
        .as_f64()
        .unwrap_or(f64::MAX);
    if timeout_seconds > 1.5 {
        failures.push(format!(
            "gRPC call on a route with timeout 300ms to a 2 s handler took {timeout_seconds:.1} s"
        ));
    }
    // The ping-pong took round trips, not the client's 5 s wait for a stalled answer.
    let bidi_seconds = results["bidi"]["seconds"].as_f64().unwrap_or(f64::MAX);
    if bidi_seconds > 3.0 {
        failures.push(format!(
            "gRPC bidi ping-pong took {bidi_seconds:.1} s: the stream was held somewhere"
        ));
    }

    // The access log: HTTP/2 downstream, the upstream cluster on port 50051.
    let cluster = format!("outbound|{GRPC_PORT}||grpc-echo.default.svc.cluster.local");
    for path in ["/test.Echo/Unary", "/test.Echo/Chat", "/test.Echo/Fail"] {
        match gw.access_entry(path) {
            Ok(e)
                if e.protocol == "HTTP/2"
                    && e.status == 200
                    && e.upstream_cluster == cluster
                    && e.method == "POST" => {}
            other => failures.push(format!(
                "access log of {path}: want POST HTTP/2 200 via {cluster}, got {other:?}"
            )),
        }
    }

    // istio_requests_total: request_protocol grpc, grpc_response_status 0 for the
    // three calls that succeeded, 5 for NOT_FOUND (trailers-only), 8 for the stream
    // that ended with RESOURCE_EXHAUSTED (trailers after messages), 12 for the call
    // without a route.
    let samples = gw.prometheus().unwrap();
    let dest = "grpc-echo.default.svc.cluster.local";
    for (status, want, extra) in [
        ("0", 3.0, None),
        ("5", 1.0, None),
        ("8", 1.0, None),
        ("12", 1.0, Some("NR")),
    ] {
        let mut labels = vec![
            ("reporter", "source"),
            ("request_protocol", "grpc"),
            ("grpc_response_status", status),
        ];
        match extra {
            Some(flags) => labels.push(("response_flags", flags)),
            None => labels.extend([("destination_service", dest), ("response_code", "200")]),
        }
        let got = requests_total(&samples, &labels);
        if got != want {
            let grpc: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.name == "istio_requests_total" && s.label("request_protocol") == "grpc"
                })
                .collect();
            failures.push(format!(
                "istio_requests_total{labels:?}: want {want}, got {got}; grpc samples: {grpc:?}"
            ));
        }
    }
    // Istio's gRPC message counters: every call that reached the backend sent at
    // least one message (six calls), and the answers carried messages back.
    let messages = |name: &str| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name && s.label("destination_service") == dest)
            .map(|s| s.value)
            .sum()
    };
    let sent = messages("istio_request_messages_total");
    let answered = messages("istio_response_messages_total");
    if sent < 6.0 || answered < 3.0 {
        failures.push(format!(
            "gRPC message counters: request {sent}, response {answered} (want >= 6 and >= 3)"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const H2_HOST: &str = "h2.lab.example.com";

/// HTTP/2 downstream: h2c with prior knowledge on the HTTP port and HTTP/2 by ALPN
/// over TLS both reach the backend and log `HTTP/2`; h2load with 4 connections and
/// 10 streams each completes all 200 requests with 2xx.
#[test]
fn http2_downstream_h2c_alpn_and_h2load() {
    if !require_root("http2_downstream_h2c_alpn_and_h2load") {
        return;
    }
    let https = HttpsFiles::new().unwrap();
    let vs = http_virtual_service(
        "h2",
        &[H2_HOST],
        "- {name: h2up, match: [{uri: {prefix: /h2up/}}], route: [{destination: {host: counter-h2}}]}\n- {name: h2, route: [{destination: {host: counter}}]}\n",
    );
    let a = BACKENDS[0].1;
    let gw = FeatureGateway::start(
        &[
            https.gateway_file.clone(),
            file("h2", vs),
            // An HTTP/2 upstream (h2c prior knowledge) by the Service port's name.
            file(
                "counter-h2",
                service_with_endpoints("counter-h2", "http2", 80, 8080, &[a]),
            ),
        ],
        &[],
    )
    .unwrap();
    let ca = https.ca.display().to_string();
    let mut failures = Vec::new();
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "h2c prior knowledge",
            "/h2/prior",
            &["--http2-prior-knowledge"],
        ),
        ("HTTP/1.1", "/h2/plain", &["--http1.1"]),
        ("ALPN h2", "/h2/alpn", &["--http2", "--cacert", &ca]),
        (
            "ALPN http/1.1",
            "/h2/alpn-h1",
            &["--http1.1", "--cacert", &ca],
        ),
    ];
    for (what, path, args) in cases {
        let r = if args.contains(&"--cacert") {
            gw.request_https(H2_HOST, path, args)
        } else {
            gw.request(H2_HOST, path, args)
        };
        let want_protocol = if what.contains("1.1") {
            "HTTP/1.1"
        } else {
            "HTTP/2"
        };
        let entry = gw.access_entry(path);
        let ok = r.as_ref().is_ok_and(|r| {
            r.status == 200
                && r.json()
                    .is_ok_and(|j| j["path"] == path && j["app"] == "counter")
        }) && entry
            .as_ref()
            .is_ok_and(|e| e.protocol == want_protocol && e.status == 200 && e.route_name == "h2");
        if !ok {
            failures.push(format!(
                "{what} {path}: want 200 from a counter and {want_protocol} in the access log, got {r:?}, {entry:?}"
            ));
        }
    }

    // A 2 MiB body (past any flow-control window) each way between HTTP/1.1 and HTTP/2:
    // h2c downstream to an HTTP/1.1 upstream, HTTP/1.1 and TLS h2 downstream to an
    // HTTP/2 upstream.
    let body = gw.topo.log_dir().join("big.bin");
    std::fs::write(&body, vec![b'x'; 2 << 20]).unwrap();
    let data = format!("@{}", body.display());
    for (what, path, tls, args, upstream) in [
        (
            "h2c to HTTP/1.1",
            "/h2/big",
            false,
            "--http2-prior-knowledge",
            "HTTP/1.1",
        ),
        (
            "HTTP/1.1 to h2",
            "/h2up/big",
            false,
            "--http1.1",
            "HTTP/2.0",
        ),
        ("TLS h2 to h2", "/h2up/big-tls", true, "--http2", "HTTP/2.0"),
    ] {
        let args = [
            args,
            "--data-binary",
            data.as_str(),
            "--cacert",
            ca.as_str(),
        ];
        let r = if tls {
            gw.request_https(H2_HOST, path, &args)
        } else {
            gw.request(H2_HOST, path, &args[..3])
        };
        let json = r
            .as_ref()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default();
        if json["body_bytes"] != 2 << 20 || json["version"] != upstream || json["method"] != "POST"
        {
            failures.push(format!(
                "{what}: want the 2 MiB POST at the backend over {upstream}, got {json} ({:?})",
                r.as_ref().map(|r| r.status)
            ));
        }
    }

    // h2load: 200 requests, 4 connections, 10 concurrent streams each.
    let url = format!("http://{}/h2/load", node(8080));
    let authority = format!(":authority: {H2_HOST}");
    let out = gw
        .topo
        .exec(
            Ns::Client,
            "h2load",
            [
                "-n",
                "200",
                "-c",
                "4",
                "-m",
                "10",
                "-H",
                authority.as_str(),
                url.as_str(),
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_owned()
    };
    let requests = line("requests:");
    let codes = line("status codes:");
    let served: usize = gw.hits("/h2/load").values().sum();
    if !requests.starts_with("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed")
        || !codes.starts_with("status codes: 200 2xx")
        || served != 200
    {
        failures.push(format!(
            "h2load -n 200 -c 4 -m 10: want 200 succeeded, 200 2xx, 200 at the backends; got \
             {requests:?} {codes:?}, backends {served}\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const TELEMETRY_HOST: &str = "telemetry.lab.example.com";

/// What the JSON access log must say about one request: path, protocol, code,
/// flags, details (`""`: any), upstream host, cluster and route (`None`: null).
type LogCase<'a> = (
    &'a str,
    &'a str,
    u64,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// The real `/stats/prometheus` and JSON access log after one request of each kind:
/// `istio_requests_total` labels as Istio's gateway reports them, Istio's duration
/// buckets, process metrics, and the access-log fields of each request.
#[test]
fn prometheus_metrics_and_json_access_log() {
    if !require_root("prometheus_metrics_and_json_access_log") {
        return;
    }
    let vs = http_virtual_service(
        "telemetry",
        &[TELEMETRY_HOST],
        r#"
- {name: ok, match: [{uri: {prefix: /ok}}], route: [{destination: {host: solo-a}}]}
- {name: dead, match: [{uri: {prefix: /dead}}], route: [{destination: {host: dead}}]}
- {name: slow, match: [{uri: {prefix: /slow}}], timeout: 200ms, route: [{destination: {host: solo-b}}]}
- {name: direct, match: [{uri: {prefix: /direct}}], directResponse: {status: 418, body: {string: teapot}}}
"#,
    );
    let gw =
        FeatureGateway::start(&[file("telemetry", vs)], &["--access-log-format", "json"]).unwrap();
    // (path, curl args, status)
    let requests: [(&str, &[&str], u16); 6] = [
        ("/ok/1", &[], 200),
        ("/ok/h2", &["--http2-prior-knowledge"], 200),
        ("/dead/1", &[], 503),
        ("/slow/1?ms=2000", &[], 504),
        ("/direct/1", &[], 418),
        ("/nothing/1", &[], 404),
    ];
    let mut failures = Vec::new();
    for (path, args, status) in requests {
        let r = gw.request(TELEMETRY_HOST, path, args).unwrap();
        if r.status != status {
            failures.push(format!("{path}: want {status}, got {}", r.status));
        }
        // Wait for the log line, so the metrics below include the request.
        let _ = gw.access_entry(path);
    }

    // The JSON access log, one object per request, field by field.
    let log: Vec<serde_json::Value> = gw
        .daemon
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let solo_a = format!("{}:8080", BACKENDS[0].1);
    let solo_b = format!("{}:8080", BACKENDS[1].1);
    // `dead` is the pods namespace's own address, where nothing listens.
    let dead = "198.18.1.2:8080";
    // (path, protocol, code, flags, details, upstream host, cluster, route)
    let expect: [LogCase<'_>; 6] = [
        (
            "/ok/1",
            "HTTP/1.1",
            200,
            "-",
            "via_upstream",
            Some(&solo_a),
            Some("outbound|80||solo-a.default.svc.cluster.local"),
            Some("ok"),
        ),
        (
            "/ok/h2",
            "HTTP/2",
            200,
            "-",
            "via_upstream",
            Some(&solo_a),
            Some("outbound|80||solo-a.default.svc.cluster.local"),
            Some("ok"),
        ),
        (
            "/dead/1",
            "HTTP/1.1",
            503,
            "UF,URX",
            "",
            Some(dead),
            Some("outbound|80||dead.default.svc.cluster.local"),
            Some("dead"),
        ),
        (
            "/slow/1?ms=2000",
            "HTTP/1.1",
            504,
            "UT",
            "response_timeout",
            Some(&solo_b),
            Some("outbound|80||solo-b.default.svc.cluster.local"),
            Some("slow"),
        ),
        (
            "/direct/1",
            "HTTP/1.1",
            418,
            "-",
            "direct_response",
            None,
            None,
            Some("direct"),
        ),
        (
            "/nothing/1",
            "HTTP/1.1",
            404,
            "NR",
            "route_not_found",
            None,
            None,
            None,
        ),
    ];
    for (path, protocol, code, flags, details, upstream, cluster, route) in expect {
        let Some(e) = log.iter().find(|e| e["path"] == path) else {
            failures.push(format!("no JSON access-log entry for {path}"));
            continue;
        };
        let mut wrong = Vec::new();
        let mut field = |name: &str, ok: bool| {
            if !ok {
                wrong.push(format!("{name}={}", e[name]));
            }
        };
        field("method", e["method"] == "GET");
        field("protocol", e["protocol"] == protocol);
        field("response_code", e["response_code"] == code);
        field("response_flags", e["response_flags"] == flags);
        field(
            "response_code_details",
            if details.is_empty() {
                e["response_code_details"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
            } else {
                e["response_code_details"] == details
            },
        );
        field("authority", e["authority"] == TELEMETRY_HOST);
        field(
            "upstream_host",
            match upstream {
                Some(h) => e["upstream_host"] == h,
                None => e["upstream_host"].is_null(),
            },
        );
        field(
            "upstream_cluster",
            match cluster {
                Some(c) => e["upstream_cluster"] == c,
                None => e["upstream_cluster"].is_null(),
            },
        );
        field(
            "route_name",
            match route {
                Some(r) => e["route_name"] == r,
                None => e["route_name"].is_null(),
            },
        );
        field(
            "upstream_transport_failure_reason",
            !flags.contains("UF") || e["upstream_transport_failure_reason"].is_string(),
        );
        field(
            "downstream_remote_address",
            e["downstream_remote_address"]
                .as_str()
                .is_some_and(|a| a.starts_with("198.18.0.2:")),
        );
        field(
            "downstream_local_address",
            e["downstream_local_address"] == "198.18.0.1:8080",
        );
        field(
            "user_agent",
            e["user_agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("curl/")),
        );
        field(
            "request_id",
            e["request_id"].as_str().is_some_and(|id| id.len() >= 32),
        );
        field("duration", e["duration"].is_u64());
        field(
            "bytes_sent",
            // Envoy's 404 for no route has an empty body.
            e["bytes_sent"]
                .as_u64()
                .is_some_and(|b| b > 0 || code == 404),
        );
        field(
            "start_time",
            e["start_time"]
                .as_str()
                .is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T'),
        );
        if !wrong.is_empty() {
            failures.push(format!(
                "JSON access log of {path}: {} in {e}",
                wrong.join(", ")
            ));
        }
    }
    // The 504 took the route timeout, not the backend's 2 s.
    if let Some(d) = log
        .iter()
        .find(|e| e["path"] == "/slow/1?ms=2000")
        .and_then(|e| e["duration"].as_u64())
        && !(150..1500).contains(&d)
    {
        failures.push(format!("duration of the 504: want about 200 ms, got {d}"));
    }

    // istio_requests_total with Istio's gateway labels.
    let samples = gw.prometheus().unwrap();
    let gateway_labels = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("source_app", "istio-ingressgateway"),
    ];
    for (code, flags, dest, protocol, want) in [
        ("200", "-", "solo-a.default.svc.cluster.local", "http", 2.0),
        (
            "503",
            "UF,URX",
            "dead.default.svc.cluster.local",
            "http",
            1.0,
        ),
        ("504", "UT", "solo-b.default.svc.cluster.local", "http", 1.0),
        ("404", "NR", "unknown", "http", 1.0),
    ] {
        let mut labels = gateway_labels.to_vec();
        labels.extend([
            ("response_code", code),
            ("response_flags", flags),
            ("destination_service", dest),
            ("request_protocol", protocol),
        ]);
        let got = requests_total(&samples, &labels);
        if got != want {
            let all: Vec<String> = samples
                .iter()
                .filter(|s| s.name == "istio_requests_total")
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            failures.push(format!(
                "istio_requests_total{labels:?}: want {want}, got {got}; all: {all:#?}"
            ));
        }
    }
    // destination_service_name / namespace split the FQDN.
    let ok_sample = samples.iter().find(|s| {
        s.name == "istio_requests_total"
            && s.has(&[("destination_service", "solo-a.default.svc.cluster.local")])
    });
    if !ok_sample.is_some_and(|s| {
        s.has(&[
            ("destination_service_name", "solo-a"),
            ("destination_service_namespace", "default"),
        ])
    }) {
        failures.push(format!(
            "istio_requests_total for solo-a: want destination_service_name solo-a, namespace default: {ok_sample:?}"
        ));
    }

    // istio_request_duration_milliseconds: Istio's buckets, cumulative, +Inf == count.
    let istio_buckets: [f64; 19] = [
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ];
    let series = |name: &str| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.has(&[
                        ("destination_service", "solo-b.default.svc.cluster.local"),
                        ("response_code", "504"),
                    ])
            })
            .collect()
    };
    let buckets = series("istio_request_duration_milliseconds_bucket");
    let les: Vec<f64> = buckets
        .iter()
        .filter_map(|s| {
            s.label("le")
                .parse::<f64>()
                .ok()
                .or((s.label("le") == "+Inf").then_some(f64::INFINITY))
        })
        .collect();
    let mut want_les: Vec<f64> = istio_buckets.to_vec();
    want_les.push(f64::INFINITY);
    let values: Vec<f64> = buckets.iter().map(|s| s.value).collect();
    let count = series("istio_request_duration_milliseconds_count")
        .first()
        .map(|s| s.value);
    let sum = series("istio_request_duration_milliseconds_sum")
        .first()
        .map(|s| s.value);
    // The one 504 took about 200 ms: 0 in the buckets up to 100, 1 from 250 on.
    let below_250 = buckets
        .iter()
        .filter(|s| s.label("le").parse::<f64>().is_ok_and(|le| le < 200.0))
        .all(|s| s.value == 0.0);
    let from_250 = buckets
        .iter()
        .filter(|s| {
            s.label("le") == "+Inf" || s.label("le").parse::<f64>().is_ok_and(|le| le >= 250.0)
        })
        .all(|s| s.value == 1.0);
    if les != want_les
        || values.windows(2).any(|w| w[0] > w[1])
        || count != Some(1.0)
        || !sum.is_some_and(|s| (150.0..1500.0).contains(&s))
        || !below_250
        || !from_250
    {
        failures.push(format!(
            "istio_request_duration_milliseconds of the 504: want le {want_les:?} cumulative with \
             the one 200 ms request from le=250 on, count 1, sum ~200; got le {les:?} values \
             {values:?} count {count:?} sum {sum:?}"
        ));
    }

    // Process metrics.
    let rss = samples
        .iter()
        .find(|s| s.name == "process_resident_memory_bytes")
        .map(|s| s.value);
    if !rss.is_some_and(|r| (1024.0 * 1024.0..4.0 * 1024.0 * 1024.0 * 1024.0).contains(&r)) {
        failures.push(format!(
            "process_resident_memory_bytes: want between 1 MiB and 4 GiB, got {rss:?}"
        ));
    }
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_open_fds",
    ] {
        if !names.contains(name) {
            failures.push(format!("/stats/prometheus has no {name}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Istio's standard HTTP metrics include the request and response size histograms
/// (`istio_request_bytes`, `istio_response_bytes`, with the same labels as
/// `istio_requests_total`); dashboards built for Istio's gateway read them.
#[test]
fn prometheus_has_istio_request_and_response_size_histograms() {
    if !require_root("prometheus_has_istio_request_and_response_size_histograms") {
        return;
    }
    let vs = http_virtual_service(
        "sizes",
        &["sizes.lab.example.com"],
        "- {route: [{destination: {host: solo-a}}]}\n",
    );
    let gw = FeatureGateway::start(&[file("sizes", vs)], &[]).unwrap();
    let r = gw
        .request(
            "sizes.lab.example.com",
            "/sized",
            &["-X", "POST", "--data-binary", "0123456789"],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let _ = gw.access_entry("/sized");
    let samples = gw.prometheus().unwrap();
    let mut missing = Vec::new();
    for name in ["istio_request_bytes", "istio_response_bytes"] {
        let count = samples.iter().find(|s| {
            s.name == format!("{name}_count")
                && s.has(&[
                    ("reporter", "source"),
                    ("destination_service", "solo-a.default.svc.cluster.local"),
                    ("response_code", "200"),
                ])
        });
        if count.is_none_or(|s| s.value != 1.0) {
            missing.push(format!("{name}_count{{reporter=source,destination_service=solo-a...,response_code=200}} = 1: got {count:?}"));
        }
    }
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    assert!(
        missing.is_empty(),
        "{}\nmetric names served: {names:?}",
        missing.join("\n")
    );
}
