//! Data path, upstream connections: HTTP/1.1 to one endpoint of one
//! cluster, kept open between requests (Envoy's per-host connection pool).
//!
//! The exchange runs in the task of the downstream request: the request
//! head is written straight to the socket and the response is read from it
//! with httparse, its body decoded (content-length, chunked with trailers,
//! or until close) as the downstream side polls for it. There is no task
//! per upstream connection and no channel between the two sides, so one
//! request costs one write and, for a small answer, one read.
//!
//! Each endpoint's [`EndpointStats`] holds a stack of idle connections; a
//! request takes the most recently used one (LIFO keeps few connections warm)
//! or opens a new one within the cluster's connect timeout. A connection goes
//! back as soon as its response ended, if it may carry another request. A
//! reaper task per endpoint, running only while it has idle connections,
//! closes those idle past the cluster's idle timeout or closed by the
//! backend; taking a connection checks the same.
//!
//! WebSocket upgrades go over a connection of their own, driven by hyper,
//! whose upgrade hands the socket to the tunnel.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::forward::UpstreamBody;
use super::h1::{self, Framing, HeaderRanges};
use super::http::{BoxError, ProxyBody};
use super::upstream::EndpointStats;
use super::{ProxyError, clock};

/// How long a connection may stay idle when the DestinationRule sets no
/// `idleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// How often the reaper looks at idle connections (at most).
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Largest response head (status line and headers) accepted, as hyper's.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted (hyper's default).
const MAX_HEADERS: usize = 100;
/// How much the read buffer grows by when it is full: a head, or a body.
const READ_CHUNK: usize = 8 * 1024;
const BODY_CHUNK: usize = 32 * 1024;
/// An idle connection keeps a read buffer up to this size.
const KEEP_BUFFER: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// The idle connections of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointPool {
    idle: Mutex<IdleStack>,
    /// Whether a reaper task watches `idle` (set and cleared under its lock).
    reaping: AtomicBool,
}

/// Idle connections, most recently used last. Boxed: a connection taken
/// from the stack and handed to a response body moves as a pointer.
#[allow(clippy::vec_box)]
type IdleStack = Vec<Box<Conn>>;

/// One open HTTP/1.1 connection, in use or idle.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    /// The request head being written; kept for its capacity.
    out: Vec<u8>,
    /// The proxy's side of the connection (`%UPSTREAM_LOCAL_ADDRESS%`).
    local: Option<SocketAddr>,
    /// Requests sent on it, and how many it may carry.
    requests: u32,
    max_requests: Option<u32>,
    idle_timeout_ms: u64,
    /// When it last went idle ([`clock::coarse_ms`]).
    idle_since_ms: u64,
    /// Whose `cx_active` counts it (weak: idle connections live in the
    /// endpoint's own pool).
    endpoint: Weak<EndpointStats>,
}

impl Conn {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.idle_since_ms) >= self.idle_timeout_ms
    }

    /// Whether the backend closed the idle connection or sent something
    /// unasked. Costs a syscall only when the socket was reported readable.
    fn closed(&self) -> bool {
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    fn reusable(&self) -> bool {
        self.buf.is_empty() && self.max_requests.is_none_or(|max| self.requests < max)
    }

    /// Reads more bytes into `buf`, growing it by `chunk` when less than
    /// half of that is free; `Ok(0)` is the end of the stream.
    fn poll_fill(
        &mut self,
        cx: &mut TaskContext<'_>,
        chunk: usize,
    ) -> Poll<std::io::Result<usize>> {
        h1::poll_read_buf(&mut self.stream, &mut self.buf, chunk, cx)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, READ_CHUNK)).await
    }
}

impl Drop for Conn {
    /// Counted out of the endpoint's active connections, however it goes:
    /// closed by the pool, by a body, or with an exchange that was
    /// cancelled (a per-try timeout, a client gone).
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.upgrade() {
            endpoint.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The most recently returned idle connection that is still usable.
fn checkout(endpoint: &EndpointStats) -> Option<Box<Conn>> {
    let now = clock::coarse_ms();
    let mut idle = endpoint.pool.idle();
    while let Some(conn) = idle.pop() {
        if conn.expired(now) || conn.closed() {
            drop(conn);
            continue;
        }
        return Some(conn);
    }
    None
}

/// Puts a connection whose exchange ended back on the stack, or closes it
/// when it may not carry another request.
fn checkin(endpoint: &Arc<EndpointStats>, mut conn: Box<Conn>) {
    if !conn.reusable() {
        drop(conn);
        return;
    }
    conn.idle_since_ms = clock::coarse_ms();
    if conn.buf.capacity() > KEEP_BUFFER {
        // Grown by a large body: not kept while idle.
        conn.buf = BytesMut::new();
    }
    let tick = Duration::from_millis(conn.idle_timeout_ms).min(REAP_INTERVAL);
    let mut idle = endpoint.pool.idle();
    if idle.len() >= MAX_IDLE_PER_ENDPOINT {
        drop(conn);
        return;
    }
    idle.push(conn);
    if !endpoint.pool.reaping.swap(true, Ordering::Relaxed) {
        tokio::spawn(reap(Arc::downgrade(endpoint), tick));
    }
}

/// Closes idle connections past their idle timeout or closed by the backend,
/// until the endpoint has none idle (or is gone).
async fn reap(endpoint: Weak<EndpointStats>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        let now = clock::coarse_ms();
        let mut idle = endpoint.pool.idle();
        let mut kept = Vec::with_capacity(idle.len());
        for conn in idle.drain(..) {
            if conn.expired(now) || conn.closed() {
                drop(conn);
            } else {
                kept.push(conn);
            }
        }
        *idle = kept;
        if idle.is_empty() {
            endpoint.pool.reaping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

impl EndpointPool {
    /// The stack of idle connections, locked.
    fn idle(&self) -> std::sync::MutexGuard<'_, IdleStack> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Idle connections, open or not yet noticed closed.
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle().len()
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
pub type Exchange = (Response<ProxyBody>, Option<SocketAddr>);

/// Sends `request` (origin-form URI, `Host` set) to `address` on a pooled
/// connection of `endpoint`, or on a new one. A WebSocket upgrade goes
/// over a connection of its own.
pub async fn send(
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
    request: Request<UpstreamBody>,
) -> Result<Exchange, ProxyError> {
    if request.headers().contains_key(header::UPGRADE) {
        // Boxed: upgrades are rare; they would make every exchange's
        // future larger.
        return Box::pin(send_upgrade(endpoint, address, settings, request)).await;
    }
    let mut conn = match checkout(endpoint) {
        Some(conn) => conn,
        None => Box::pin(connect(endpoint, address, settings)).await?,
    };
    conn.requests += 1;
    let (parts, body) = request.into_parts();
    let head = match exchange(&mut conn, &parts, body).await {
        Ok(head) => head,
        Err(error) => {
            drop(conn);
            return Err(error);
        }
    };
    let local = conn.local;
    let framing = head.framing(parts.method == Method::HEAD);
    let mut body = PooledBody {
        conn: Some(conn),
        endpoint: endpoint.clone(),
        framing,
        keep_alive: head.keep_alive,
    };
    body.end_if_done();
    let mut response = Response::new(body.boxed());
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok((response, local))
}

/// Opens a TCP connection to `address` within `timeout`.
async fn connect_tcp(
    endpoint: &EndpointStats,
    address: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(ProxyError::ConnectFailure(error.to_string())),
        Err(elapsed) => return Err(ProxyError::ConnectFailure(elapsed.to_string())),
    };
    let _ = stream.set_nodelay(true);
    endpoint.cx_total.fetch_add(1, Ordering::Relaxed);
    endpoint.cx_active.fetch_add(1, Ordering::Relaxed);
    Ok(stream)
}

/// Opens a pooled connection to `address`.
async fn connect(
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
) -> Result<Box<Conn>, ProxyError> {
    let stream = connect_tcp(endpoint, address, settings.connect_timeout).await?;
    Ok(Box::new(Conn {
        local: stream.local_addr().ok(),
        stream,
        buf: BytesMut::new(),
        out: Vec::new(),
        requests: 0,
        max_requests: settings.max_requests,
        idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
        idle_since_ms: clock::coarse_ms(),
        endpoint: Arc::downgrade(endpoint),
    }))
}

/// A WebSocket upgrade on a connection of its own: hyper drives it and
/// hands the socket to the tunnel after the `101`.
async fn send_upgrade(
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
    request: Request<UpstreamBody>,
) -> Result<Exchange, ProxyError> {
    let stream = connect_tcp(endpoint, address, settings.connect_timeout).await?;
    let local = stream.local_addr().ok();
    let handshake = http1::Builder::new()
        .handshake::<_, UpstreamBody>(TokioIo::new(stream))
        .await;
    let (mut sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(error) => {
            endpoint.cx_active.fetch_sub(1, Ordering::Relaxed);
            return Err(ProxyError::ConnectFailure(innermost(&error)));
        }
    };
    let stats = endpoint.clone();
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upstream connection closed");
        }
        stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| classify(&e))?;
    Ok((response.map(|b| b.map_err(BoxError::from).boxed()), local))
}

/// A failed hyper exchange: the backend's bytes were not HTTP (`UPE`), or
/// the connection reset or closed (`UC`).
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

/// The connection reset or closed under the exchange (`UC`).
fn reset(error: &std::io::Error) -> ProxyError {
    ProxyError::UpstreamReset(error.to_string())
}

/// Writes the request and reads the response head.
async fn exchange(
    conn: &mut Conn,
    parts: &Parts,
    body: UpstreamBody,
) -> Result<ResponseHead, ProxyError> {
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    let framing = encode_head(&mut out, parts, &body);
    let written = match body {
        UpstreamBody::Full(bytes) => {
            let bytes = bytes.unwrap_or_default();
            if bytes.len() <= INLINE_BODY {
                out.extend_from_slice(&bytes);
                conn.stream.write_all(&out).await
            } else {
                match conn.stream.write_all(&out).await {
                    Ok(()) => conn.stream.write_all(&bytes).await,
                    Err(error) => Err(error),
                }
            }
            .map_err(|e| reset(&e))
        }
        UpstreamBody::Stream(stream) => {
            let written = conn.stream.write_all(&out).await.map_err(|e| reset(&e));
            match written {
                Ok(()) => write_body(&mut conn.stream, stream, framing).await,
                Err(error) => Err(error),
            }
        }
    };
    conn.out = out;
    written?;
    read_head(conn).await
}

/// The request line and headers, with framing headers of our own.
fn encode_head(out: &mut Vec<u8>, parts: &Parts, body: &UpstreamBody) -> Framing {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        h1::put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let length = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let framing = match length {
        // Methods that usually carry a body say that this one is empty.
        Some(0) if !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
            Framing::Length
        }
        Some(n) => {
            h1::put_length(out, n);
            Framing::Length
        }
        None => {
            h1::put_header(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Streams the downstream body to the backend (chunked when its length is
/// not known), with its trailers when chunked.
async fn write_body(
    stream: &mut TcpStream,
    mut body: super::http::RequestBody,
    framing: Framing,
) -> Result<(), ProxyError> {
    let mut out = Vec::new();
    let mut ended = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::DownstreamReset(e.to_string()))?;
        out.clear();
        ended |= h1::put_frame(&mut out, frame, framing);
        stream.write_all(&out).await.map_err(|e| reset(&e))?;
    }
    if framing == Framing::Chunked && !ended {
        stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| reset(&e))?;
    }
    Ok(())
}

/// A parsed response head.
struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// Whether the connection may carry another request after this one.
    keep_alive: bool,
}

/// The body framing of a response, and where its decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Ended (or never had a body).
    Done,
    /// This many bytes still to come.
    Length(u64),
    /// Chunked: at a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes of the current chunk still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the backend closes the connection.
    Close,
}

impl ResponseHead {
    fn framing(&self, head_request: bool) -> BodyState {
        let status = self.status.as_u16();
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return BodyState::Done;
        }
        if let Some(codings) = self.headers.get(header::TRANSFER_ENCODING) {
            // RFC 9112 6.3: chunked last, or read until close.
            let chunked = codings
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return if chunked {
                BodyState::ChunkSize
            } else {
                BodyState::Close
            };
        }
        match content_length(&self.headers) {
            Some(0) => BodyState::Done,
            Some(n) => BodyState::Length(n),
            None => BodyState::Close,
        }
    }
}

/// The response's `content-length`, if it has one valid value.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let n = std::str::from_utf8(first.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    values.all(|v| v == first).then_some(n)
}

/// Reads and parses the response head; informational answers (`100
/// Continue`, `103`) are skipped.
async fn read_head(conn: &mut Conn) -> Result<ResponseHead, ProxyError> {
    loop {
        if !conn.buf.is_empty()
            && let Some(head) = parse_head(&mut conn.buf)?
        {
            let code = head.status.as_u16();
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(ProxyError::UpstreamProtocol(
                        "101 Switching Protocols to a request without an upgrade".to_owned(),
                    ));
                }
                continue;
            }
            return Ok(head);
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(ProxyError::UpstreamProtocol(
                "response head too large".to_owned(),
            ));
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(ProxyError::UpstreamReset(
                    "connection closed before message completed".to_owned(),
                ));
            }
            Ok(_) => {}
            Err(error) => return Err(reset(&error)),
        }
    }
}

/// Parses a complete response head off the front of `buf` (`None`: not
/// complete yet). The header values share the head's bytes.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, ProxyError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(ProxyError::UpstreamProtocol(error.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let mut ranges = HeaderRanges::new();
    for h in response.headers.iter() {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        ranges.push((name, name + h.name.len(), value, value + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let map =
        h1::header_map(&head, &ranges).map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
    let keep_alive = h1::keep_alive(version, &map);
    Ok(Some(ResponseHead {
        status,
        version,
        headers: map,
        keep_alive,
    }))
}

/// The body of a pooled exchange's response, read from its connection;
/// the connection goes back to the pool when the body ends.
#[derive(Debug)]
pub struct PooledBody {
    conn: Option<Box<Conn>>,
    endpoint: Arc<EndpointStats>,
    framing: BodyState,
    keep_alive: bool,
}

impl PooledBody {
    /// Once the body ended, hands the connection back (or closes it).
    fn end_if_done(&mut self) {
        if self.framing == BodyState::Done
            && let Some(conn) = self.conn.take()
        {
            if self.keep_alive {
                checkin(&self.endpoint, conn);
            } else {
                drop(conn);
            }
        }
    }

    /// Closes the connection under a body that cannot go on.
    fn close(&mut self) {
        self.conn = None;
    }
}

/// The next frame of a body framed as `framing` from what is buffered;
/// `None`: more bytes needed.
fn decode(framing: &mut BodyState, buf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, ProxyError> {
    loop {
        match *framing {
            BodyState::Done => return Ok(None),
            BodyState::Length(left) | BodyState::ChunkData(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(take).freeze();
                let rest = left - take as u64;
                *framing = match (*framing, rest) {
                    (BodyState::Length(_), 0) => BodyState::Done,
                    (BodyState::Length(_), n) => BodyState::Length(n),
                    (_, 0) => BodyState::ChunkEnd,
                    (_, n) => BodyState::ChunkData(n),
                };
                return Ok(Some(Frame::data(data)));
            }
            BodyState::Close => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Frame::data(buf.split().freeze())));
            }
            BodyState::ChunkSize => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    *framing = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
                _ => {
                    return Err(ProxyError::UpstreamProtocol(
                        "invalid chunk size".to_owned(),
                    ));
                }
            },
            BodyState::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ProxyError::UpstreamProtocol("invalid chunk end".to_owned()));
                }
                buf.advance(2);
                *framing = BodyState::ChunkSize;
            }
            BodyState::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, trailers) = match httparse::parse_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let mut map = HeaderMap::with_capacity(parsed.len());
                        for h in parsed.iter() {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                map.append(name, value);
                            }
                        }
                        (len, map)
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
                    _ => {
                        return Err(ProxyError::UpstreamProtocol("invalid trailers".to_owned()));
                    }
                };
                buf.advance(len);
                *framing = BodyState::Done;
                if !trailers.is_empty() {
                    return Ok(Some(Frame::trailers(trailers)));
                }
                return Ok(None);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.framing, &mut conn.buf) {
                Ok(Some(frame)) => {
                    this.end_if_done();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.framing == BodyState::Done => {
                    this.end_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    this.close();
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
            match ready!(conn.poll_fill(cx, BODY_CHUNK)) {
                Ok(0) if this.framing == BodyState::Close => {
                    // The end of a body delimited by the connection's close.
                    this.framing = BodyState::Done;
                    this.close();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.close();
                    return Poll::Ready(Some(Err(
                        "connection closed before the response body ended".into(),
                    )));
                }
                Ok(_) => {}
                Err(error) => {
                    this.close();
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicU64;
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

    /// A backend that reads one request head (and `body` bytes after it)
    /// and answers `reply`, then keeps the connection open until the
    /// client closes it; what it read comes back on the channel.
    async fn scripted(
        reply: &'static [u8],
        body: usize,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let head = seen.windows(4).position(|w| w == b"\r\n\r\n");
                        if head.is_some_and(|end| seen.len() >= end + 4 + body) {
                            break;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(seen);
                    let _ = stream.write_all(reply).await;
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        (address, rx)
    }

    async fn collect(response: Response<ProxyBody>) -> (Bytes, Option<HeaderMap>) {
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_with_their_trailers_and_reuse_the_connection() {
        let (address, _) = scripted(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\n5\r\ndefgh\r\n0\r\ngrpc-status: 0\r\n\r\n",
            0,
        )
        .await;
        let endpoint = Arc::new(EndpointStats::default());
        let (response, _) = send(&endpoint, address, SETTINGS, get()).await.unwrap();
        assert_eq!(response.status(), 200);
        let (body, trailers) = collect(response).await;
        assert_eq!(body, "abcdefgh");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(endpoint.pool.idle_len(), 1);
    }

    /// A backend that answers the first request with `reply` and closes.
    async fn one_shot(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(reply).await;
        });
        address
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection() {
        let address = one_shot(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
        let endpoint = Arc::new(EndpointStats::default());
        let (response, _) = send(&endpoint, address, SETTINGS, get()).await.unwrap();
        assert_eq!(collect(response).await.0, "until close");
        assert_eq!(endpoint.pool.idle_len(), 0);
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
        // Cut short, a body with a length is an error.
        let address = one_shot(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").await;
        let (response, _) = send(&endpoint, address, SETTINGS, get()).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn head_answers_have_no_body_whatever_their_length() {
        let (address, _) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n", 0).await;
        let endpoint = Arc::new(EndpointStats::default());
        let mut request = get();
        *request.method_mut() = Method::HEAD;
        let (response, _) = send(&endpoint, address, SETTINGS, request).await.unwrap();
        assert_eq!(response.headers()["content-length"], "42");
        assert!(response.body().is_end_stream());
        assert_eq!(collect(response).await.0, "");
        assert_eq!(endpoint.pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn request_bodies_are_framed_and_heads_keep_their_headers() {
        let (address, mut seen) =
            scripted(b"HTTP/1.1 204 No Content\r\nx-a: 1\r\nx-a: 2\r\n\r\n", 5).await;
        let endpoint = Arc::new(EndpointStats::default());
        let mut request = Request::new(UpstreamBody::Full(Some(Bytes::from_static(b"hello"))));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/p?q=1".parse().unwrap();
        request
            .headers_mut()
            .insert(header::HOST, "a".parse().unwrap());
        // A stale framing header of the downstream request is not sent.
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, "999".parse().unwrap());
        let (response, _) = send(&endpoint, address, SETTINGS, request).await.unwrap();
        assert_eq!(response.status(), 204);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        let sent = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert_eq!(
            sent,
            "POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello"
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_http_are_protocol_errors() {
        let (address, _) = scripted(b"SSH-2.0-OpenSSH\r\n\r\n", 0).await;
        let endpoint = Arc::new(EndpointStats::default());
        let error = send(&endpoint, address, SETTINGS, get()).await.unwrap_err();
        assert!(
            matches!(error, ProxyError::UpstreamProtocol(_)),
            "{error:?}"
        );
        // A connection closed before an answer is a reset.
        let closing = one_shot(b"").await;
        let error = send(&endpoint, closing, SETTINGS, get()).await.unwrap_err();
        assert!(matches!(error, ProxyError::UpstreamReset(_)), "{error:?}");
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_cancelled_exchange_closes_its_connection_and_counts_it_out() {
        // A backend that reads and never answers.
        let (address, _) = scripted(b"", 1 << 30).await;
        let endpoint = Arc::new(EndpointStats::default());
        let pending = send(&endpoint, address, SETTINGS, get());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), pending)
                .await
                .is_err()
        );
        assert_eq!(endpoint.cx_total.load(Ordering::Relaxed), 1);
        assert_eq!(endpoint.cx_active.load(Ordering::Relaxed), 0);
        assert_eq!(endpoint.pool.idle_len(), 0);
    }
}
