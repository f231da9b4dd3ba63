//! Backends for tests and the demo: an HTTP `counter` (echoes what it received), a
//! WebSocket `ws-echo` and a TCP `tcp-echo`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

/// Longest delay `/slow?ms=N` honours.
const MAX_DELAY_MS: u64 = 60_000;

#[derive(Parser)]
#[command(about = "Test backends for ingressd")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 and h2c (prior knowledge) server answering every request with 200 and
    /// a JSON description of it: `{"app":"counter","instance":NAME,"count":N,
    /// "method":..,"path":..,"host":..,"version":"HTTP/1.1"|"HTTP/2.0","body_bytes":N,
    /// "headers":{..}}`, and logging one line per request on stdout
    /// (`counter NAME: #N METHOD PATH host=HOST body=N from PEER`).
    ///
    /// Query parameters shape the answer, so that tests can make one instance of
    /// several misbehave:
    /// `/slow?ms=N` waits N ms before answering; `?status=NNN` sets the status code;
    /// `?fail=N&key=K` answers 503 to the first N requests carrying key K (counted
    /// per instance), then as usual (with `&fail_with=reset`: closes the connection
    /// without an answer instead); `?delay_on=NAME&ms=N` waits N ms only on the
    /// instance called NAME (e.g. a mirror); `?fail_on=NAME` answers 503 only on the
    /// instance called NAME; `?grpc_status=N` adds `grpc-status: N`
    /// (and `content-type: application/grpc`) to the answer, as a trailers-only gRPC
    /// error would carry it.
    Counter {
        /// Address to listen on, e.g. 198.18.1.10:8080.
        #[arg(long)]
        listen: SocketAddr,
        /// Instance name reported in every answer.
        #[arg(long)]
        name: String,
    },
    /// WebSocket server (HTTP/1.1 upgrade on any path): echoes every text frame as
    /// `NAME: TEXT` and every binary frame with `NAME: ` in front, answers pings, and
    /// logs one line per connection on stdout
    /// (`ws-echo NAME: PATH from PEER headers=JSON`, then `ws-echo NAME: closed after N
    /// frames`).
    WsEcho {
        /// Address to listen on, e.g. 198.18.1.20:8080.
        #[arg(long)]
        listen: SocketAddr,
        /// Instance name put in front of every echoed frame.
        #[arg(long)]
        name: String,
    },
    /// TCP server that echoes every byte; when the client half-closes, it writes
    /// `bye from NAME after N bytes\n`, then closes its side.
    TcpEcho {
        /// Address to listen on, e.g. 198.18.1.20:3306.
        #[arg(long)]
        listen: SocketAddr,
        /// Instance name used in the closing line.
        #[arg(long)]
        name: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        match cli.command {
            Cmd::Counter { listen, name } => counter(listen, name).await,
            Cmd::WsEcho { listen, name } => ws_echo(listen, name).await,
            Cmd::TcpEcho { listen, name } => tcp_echo(listen, name).await,
        }
    })
}

struct Counter {
    name: String,
    served: AtomicU64,
    /// Requests seen per `?key=` (for `?fail=N`).
    keys: Mutex<HashMap<String, u64>>,
}

async fn counter(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("counter {name} listening on {listen}");
    let state = Arc::new(Counter {
        name,
        served: AtomicU64::new(0),
        keys: Mutex::new(HashMap::new()),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&state), peer, req));
            // HTTP/1.1, or HTTP/2 when the client starts with the h2c preface.
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

async fn answer(
    state: Arc<Counter>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body_bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let count = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let query = parts.uri.query().unwrap_or("");
    let text_param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    let param = |key: &str| text_param(key).and_then(|v| v.parse::<u64>().ok());
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    println!(
        "counter {}: #{count} {} {path} host={host} body={body_bytes} from {peer}",
        state.name, parts.method
    );
    let delayed_here = text_param("delay_on").is_some_and(|n| n == state.name);
    if parts.uri.path().starts_with("/slow") || delayed_here {
        let ms = param("ms").unwrap_or(1000).min(MAX_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let failing_here = text_param("fail_on").is_some_and(|n| n == state.name);
    let failing = failing_here
        || match (param("fail"), text_param("key")) {
            (Some(n), Some(key)) => {
                let mut keys = state.keys.lock().unwrap_or_else(|e| e.into_inner());
                let seen = keys.entry(key.to_owned()).or_insert(0);
                *seen += 1;
                *seen <= n
            }
            _ => false,
        };
    if failing && text_param("fail_with") == Some("reset") {
        // An error from the service makes hyper close the connection unanswered.
        return Err(std::io::Error::other("reset by ?fail_with=reset"));
    }
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        param("status")
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    };
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // hyper already lower-cases names; repeated headers are joined like a proxy would.
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), value.into());
            }
        }
    }
    let json = serde_json::json!({
        "app": "counter",
        "instance": state.name,
        "count": count,
        "method": parts.method.as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "body_bytes": body_bytes,
        "headers": headers,
    });
    let mut text = json.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(code) = param("grpc_status") {
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", hyper::header::HeaderValue::from(code));
    }
    Ok(response)
}

async fn ws_echo(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("ws-echo {name} listening on {listen}");
    let name = Arc::new(name);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            if let Err(e) = ws_session(stream, peer, &name).await {
                eprintln!("ws-echo {name}: {peer}: {e}");
            }
        });
    }
}

// tungstenite's handshake callback returns its (large) error response type.
#[allow(clippy::result_large_err)]
async fn ws_session(stream: TcpStream, peer: SocketAddr, name: &str) -> Result<()> {
    let seen = |req: &WsRequest, resp: WsResponse| {
        let mut headers = serde_json::Map::new();
        for (n, v) in req.headers() {
            headers.insert(
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            );
        }
        println!(
            "ws-echo {name}: {} from {peer} headers={}",
            req.uri(),
            serde_json::Value::Object(headers)
        );
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, seen).await?;
    let mut frames = 0u64;
    while let Some(message) = ws.next().await {
        let reply = match message? {
            Message::Text(text) => Message::text(format!("{name}: {text}")),
            Message::Binary(data) => {
                let mut out = format!("{name}: ").into_bytes();
                out.extend_from_slice(&data);
                Message::binary(out)
            }
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            _ => continue,
        };
        frames += 1;
        ws.send(reply).await?;
    }
    println!("ws-echo {name}: closed after {frames} frames");
    Ok(())
}

async fn tcp_echo(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("tcp-echo {name} listening on {listen}");
    let name = Arc::new(name);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            match echo(stream, &name).await {
                Ok(n) => println!("tcp-echo {name}: {peer} closed after {n} bytes"),
                Err(e) => eprintln!("tcp-echo {name}: {peer}: {e}"),
            }
        });
    }
}

async fn echo(mut stream: TcpStream, name: &str) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    // The client half-closed: answer on the still-open direction, then close ours.
    stream
        .write_all(format!("bye from {name} after {total} bytes\n").as_bytes())
        .await?;
    stream.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
