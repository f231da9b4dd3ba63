//! Data path, upstream connections: HTTP/1.1 connections to one endpoint of
//! one cluster, kept open between requests (Envoy's per-host connection pool).
//!
//! Each endpoint's [`EndpointStats`] holds a stack of idle connections; a
//! request takes the most recently used one (LIFO keeps few connections warm)
//! or opens a new one within the cluster's connect timeout. A connection goes
//! back only once its response body has ended and hyper still considers it
//! reusable. Each connection runs in its own task, which also closes it when
//! it stayed idle for the cluster's idle timeout.
//!
//! A request that a pooled connection could not even start (the backend
//! closed it while it sat idle) is sent again on another connection, as
//! hyper-util's client does; once bytes went out it is the retry policy's
//! business.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ProxyError;
use super::forward::UpstreamBody;
use super::upstream::{EndpointStats, now_ms};

/// How long a connection may stay idle when the DestinationRule sets no
/// `idleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// [`ConnState::idle_since_ms`] of a connection in use.
const BUSY: u64 = u64::MAX;
/// [`ConnState::idle_since_ms`] of a connection its task is closing.
const CLOSING: u64 = u64::MAX - 1;

/// The idle connections of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointPool {
    idle: Mutex<Vec<PooledConn>>,
}

/// What the pool and a connection's task share.
#[derive(Debug)]
struct ConnState {
    /// [`now_ms`] when the connection went idle, or [`BUSY`] / [`CLOSING`].
    /// A request and the idle timer race for an idle connection with a
    /// compare-exchange, so a connection is never closed under a request.
    idle_since_ms: AtomicU64,
}

/// One open HTTP/1.1 connection, in use or idle.
#[derive(Debug)]
struct PooledConn {
    sender: SendRequest<UpstreamBody>,
    state: Arc<ConnState>,
    /// The proxy's side of the connection (`%UPSTREAM_LOCAL_ADDRESS%`).
    local: Option<SocketAddr>,
    /// Requests sent on it, and how many it may carry.
    requests: u32,
    max_requests: Option<u32>,
}

impl EndpointPool {
    /// The most recently returned idle connection that is still open.
    fn checkout(&self) -> Option<PooledConn> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() {
                continue;
            }
            let since = conn.state.idle_since_ms.load(Ordering::Acquire);
            if since < CLOSING
                && conn
                    .state
                    .idle_since_ms
                    .compare_exchange(since, BUSY, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Some(conn);
            }
        }
        None
    }

    /// Puts a connection whose exchange ended back on the stack; one that
    /// carried its last request is dropped (hyper then closes it).
    fn checkin(&self, conn: PooledConn) {
        if conn.sender.is_closed() || conn.max_requests.is_some_and(|max| conn.requests >= max) {
            return;
        }
        conn.state.idle_since_ms.store(now_ms(), Ordering::Release);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() >= MAX_IDLE_PER_ENDPOINT {
            // Connections that closed while idle under the top of the stack
            // stay until popped; make room by dropping them first.
            idle.retain(|c| !c.sender.is_closed());
        }
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(conn);
        }
    }

    /// Idle connections, open or not yet noticed closed.
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// How the cluster wants its connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Requests after which a connection is closed (none: no limit).
    pub max_requests: Option<u32>,
}

/// A response from the endpoint and the local address of the connection it
/// came on.
pub type Exchange = (Response<PooledBody>, Option<SocketAddr>);

/// Sends `request` (origin-form URI) to `address` on a pooled connection of
/// `endpoint`, or on a new one.
pub async fn send(
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
    mut request: Request<UpstreamBody>,
) -> Result<Exchange, ProxyError> {
    loop {
        let (mut conn, reused) = match endpoint.pool.checkout() {
            Some(conn) => (conn, true),
            // Boxed: connecting is the rare path; it would make every
            // exchange's future larger.
            None => (Box::pin(connect(endpoint, address, settings)).await?, false),
        };
        if reused && conn.sender.ready().await.is_err() {
            // Closed while idle, before anything was sent on it.
            continue;
        }
        conn.requests += 1;
        match conn.sender.try_send_request(request).await {
            Ok(response) => {
                let local = conn.local;
                // After a 101 the connection belongs to the tunnel.
                let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                let response = response.map(|inner| PooledBody {
                    inner,
                    ended: false,
                    conn: reusable.then(|| (conn, endpoint.clone())),
                });
                return Ok((response, local));
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused => request = unsent,
                _ => return Err(classify(&error.into_error())),
            },
        }
    }
}

/// Opens a connection to `address` within the connect timeout and spawns its
/// task.
async fn connect(
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
) -> Result<PooledConn, ProxyError> {
    let stream =
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ProxyError::ConnectFailure(error.to_string())),
            Err(elapsed) => return Err(ProxyError::ConnectFailure(elapsed.to_string())),
        };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let (sender, conn) = http1::Builder::new()
        .handshake::<_, UpstreamBody>(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::ConnectFailure(innermost(&e)))?;
    let state = Arc::new(ConnState {
        idle_since_ms: AtomicU64::new(BUSY),
    });
    endpoint.cx_total.fetch_add(1, Ordering::Relaxed);
    endpoint.cx_active.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(drive(
        conn.with_upgrades(),
        state.clone(),
        endpoint.clone(),
        settings.idle_timeout,
    ));
    Ok(PooledConn {
        sender,
        state,
        local,
        requests: 0,
        max_requests: settings.max_requests,
    })
}

/// Runs one connection until it ends, the backend closes it or it stayed
/// idle for `idle_timeout`.
async fn drive<C>(
    conn: C,
    state: Arc<ConnState>,
    endpoint: Arc<EndpointStats>,
    idle_timeout: Duration,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = std::pin::pin!(conn);
    let timeout_ms = idle_timeout.as_millis() as u64;
    loop {
        let since = state.idle_since_ms.load(Ordering::Acquire);
        let wait = if since < CLOSING {
            let idle_for = now_ms().saturating_sub(since);
            if idle_for >= timeout_ms
                && state
                    .idle_since_ms
                    .compare_exchange(since, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                break;
            }
            Duration::from_millis(timeout_ms.saturating_sub(idle_for).max(1))
        } else {
            idle_timeout
        };
        tokio::select! {
            biased;
            result = &mut conn => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection closed");
                }
                break;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    endpoint.cx_active.fetch_sub(1, Ordering::Relaxed);
}

/// The body of a pooled exchange's response: hands its connection back to
/// the pool when dropped after its end.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    ended: bool,
    conn: Option<(PooledConn, Arc<EndpointStats>)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped before its end, the exchange is cut short: hyper closes
        // the connection, which must not be reused.
        if self.is_end_stream()
            && let Some((conn, endpoint)) = self.conn.take()
        {
            endpoint.pool.checkin(conn);
        }
    }
}

/// A failed exchange: the backend's bytes were not HTTP (`UPE`), or the
/// connection reset or closed (`UC`).
fn classify(error: &hyper::Error) -> ProxyError {
    if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        ProxyError::UpstreamProtocol(error.to_string())
    } else {
        ProxyError::UpstreamReset(innermost(error))
    }
}

/// The innermost cause of `error`, the most specific reason.
pub fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend answering every request on a connection with `200 ok`,
    /// counting the connections it accepted.
    async fn backend(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut served = 0;
                    loop {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        served += 1;
                        let last = close_after == Some(served);
                        let reply: &[u8] = if last {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if stream.write_all(reply).await.is_err() || last {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn get() -> Request<UpstreamBody> {
        let mut request = Request::new(UpstreamBody::Full(None));
        *request.uri_mut() = "/".parse().unwrap();
        request
            .headers_mut()
            .insert(http::header::HOST, "a".parse().unwrap());
        request
    }

    const SETTINGS: ConnSettings = ConnSettings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_requests: None,
    };

    async fn exchange(endpoint: &Arc<EndpointStats>, address: SocketAddr) -> Bytes {
        let (response, local) = send(endpoint, address, SETTINGS, get()).await.unwrap();
        assert!(local.is_some());
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn connections_are_reused_after_the_body_ends() {
        let (address, accepted) = backend(None).await;
        let endpoint = Arc::new(EndpointStats::default());
        for _ in 0..5 {
            assert_eq!(exchange(&endpoint, address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        assert_eq!(endpoint.cx_total.load(Ordering::Relaxed), 1);
        assert_eq!(endpoint.pool.idle_len(), 1);
        // A body dropped before its end does not give its connection back.
        let (response, _) = send(&endpoint, address, SETTINGS, get()).await.unwrap();
        drop(response);
        assert_eq!(endpoint.pool.idle_len(), 0);
        assert_eq!(exchange(&endpoint, address).await, "ok");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced() {
        let (address, accepted) = backend(Some(1)).await;
        let endpoint = Arc::new(EndpointStats::default());
        for _ in 0..3 {
            assert_eq!(exchange(&endpoint, address).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (address, accepted) = backend(None).await;
        let endpoint = Arc::new(EndpointStats::default());
        let settings = ConnSettings {
            idle_timeout: Duration::from_millis(100),
            ..SETTINGS
        };
        let (response, _) = send(&endpoint, address, settings, get()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
        let (response, _) = send(&endpoint, address, settings, get()).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn refused_and_timed_out_connects_are_connect_failures() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let endpoint = Arc::new(EndpointStats::default());
        let error = send(&endpoint, address, SETTINGS, get()).await.unwrap_err();
        assert!(matches!(error, ProxyError::ConnectFailure(_)), "{error:?}");
        // A listener whose accept queue is full (backlog 0, never accepted)
        // drops further SYNs: the connect hangs until the timeout.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        let _listener = socket.listen(0).unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let connect = TcpStream::connect(address);
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(50), connect).await {
                held.push(stream);
            }
        }
        let settings = ConnSettings {
            connect_timeout: Duration::from_millis(50),
            ..SETTINGS
        };
        let error = send(&endpoint, address, settings, get()).await.unwrap_err();
        assert!(matches!(error, ProxyError::ConnectFailure(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_connection_closes_after_its_request_limit() {
        let (address, accepted) = backend(None).await;
        let endpoint = Arc::new(EndpointStats::default());
        let settings = ConnSettings {
            max_requests: Some(2),
            ..SETTINGS
        };
        for _ in 0..5 {
            let (response, _) = send(&endpoint, address, settings, get()).await.unwrap();
            assert_eq!(
                response.into_body().collect().await.unwrap().to_bytes(),
                "ok"
            );
        }
        // 2 + 2 + 1 requests.
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        assert_eq!(endpoint.cx_total.load(Ordering::Relaxed), 3);
        assert_eq!(endpoint.pool.idle_len(), 1);
    }
}
