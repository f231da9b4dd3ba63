//! Data path, downstream HTTP/1.1: the connection loop of the gateway's
//! HTTP listeners (plain and TLS-terminated).
//!
//! Requests without a body are read with httparse, routed and forwarded in
//! the connection's own task, and their responses written straight to the
//! socket: one read and one write per request, and with the upstream side
//! of `pool.rs` no other task and no channel on the way. Everything else
//! the connection may carry (a request with a body, `Expect`, an upgrade,
//! HTTP/2's preface, bytes that are not HTTP/1.x, an oversized head) hands
//! the connection, with the bytes read so far, to hyper's server for the
//! rest of its life. hyper then answers as it did before this path existed.
//!
//! Keep-alive as HTTP/1.1 defines it (`Connection: close`, HTTP/1.0
//! `keep-alive`), pipelined requests answered in order, responses framed by
//! their `content-length`, their body's known length or chunked (HTTP/1.0:
//! until close), a `date` header when the response has none. A connection
//! waits at most [`IDLE_TIMEOUT`] for the next request and
//! [`HEAD_TIMEOUT`] for the rest of a head once it started; a drain closes
//! idle connections and answers in-flight requests with `connection: close`.

use std::cell::RefCell;
use std::future::Future;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::http::{ResponseBody, serve};
use super::{ConnInfo, Context, Graceful, ListenerStats, clock};

/// How long a kept-alive connection may wait for its next request
/// (Envoy's default downstream idle timeout).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the rest of a request head may take once its first bytes came.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Heads larger than this go to hyper (which answers 431 past its limit).
const MAX_HEAD: usize = 64 * 1024;
/// Most request headers taken here; more go to hyper.
const MAX_HEADERS: usize = 100;
/// Response bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;
/// How much the read buffer grows by.
const READ_CHUNK: usize = 4 * 1024;
/// The response batch keeps up to this much capacity between requests.
const KEEP_BUFFER: usize = 16 * 1024;

/// A request read from the connection, or why the connection goes on
/// elsewhere. Not boxed: it lives for a moment on the way to `serve`, and a
/// box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Request<Option<hyper::body::Incoming>>),
    /// The head is not complete yet.
    Partial,
    /// hyper takes the connection from here.
    Hyper,
    /// Closed, timed out, drained or unreadable: nothing more to do.
    Close,
}

/// Serves one downstream connection until it closes, handing it to hyper
/// when it carries something this path does not take.
pub async fn serve_connection<I>(
    ctx: Arc<Context>,
    conn: ConnInfo,
    stats: Arc<ListenerStats>,
    mut io: I,
    graceful: Graceful,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut waiting = Waiting::new(graceful.stop.clone());
    loop {
        let request = match read_request(&mut io, &mut buf, &mut waiting).await {
            Parsed::Request(request) => request,
            Parsed::Hyper => {
                let prefix = buf.to_vec();
                drop(buf);
                let io = super::tls::Rewind::new(prefix, io);
                super::http::serve_hyper(ctx, conn, stats, io, graceful.watcher).await;
                return;
            }
            Parsed::Close | Parsed::Partial => return,
        };
        let version = request.version();
        let head_request = request.method() == Method::HEAD;
        let client_keeps = keep_alive(version, request.headers());
        let Ok(response) = serve(ctx.clone(), conn.clone(), stats.clone(), request).await;
        let keep_alive = client_keeps && !waiting.draining();
        match write_response(
            &mut io,
            &mut out,
            response,
            version,
            keep_alive,
            head_request,
        )
        .await
        {
            Ok(true) => {
                // A large response grew the batch: not kept between requests.
                out.clear();
                out.shrink_to(KEEP_BUFFER);
            }
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return;
            }
        }
    }
}

/// Whether a message's sender keeps the connection after it (RFC 9112
/// 9.3): HTTP/1.0 only with `Connection: keep-alive`, later versions
/// unless `Connection: close`. Requests here, responses in `pool.rs`.
pub(super) fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    match version {
        Version::HTTP_10 => has(b"keep-alive"),
        _ => !has(b"close"),
    }
}

/// The waits of a connection between requests: its timer and the drain
/// signal, both set up once per connection. Deadlines are kept on the
/// coarse clock; the timer is armed once and re-armed only when it fires
/// before the deadline moved past it.
struct Waiting {
    /// Resolves when the listener drains.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the wait for the current request started, and when its first
    /// bytes came ([`clock::coarse_ms`]).
    since_ms: u64,
    head_started_ms: Option<u64>,
}

impl Waiting {
    fn new(mut stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            stop: Box::pin(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }),
            stopped: false,
            timer: None,
            since_ms: clock::coarse_ms(),
            head_started_ms: None,
        }
    }

    /// A new request is awaited.
    fn next_request(&mut self) {
        self.since_ms = clock::coarse_ms();
        self.head_started_ms = None;
    }

    /// The first bytes of a head came: the rest has [`HEAD_TIMEOUT`].
    fn head_started(&mut self) {
        if self.head_started_ms.is_some() {
            return;
        }
        self.head_started_ms = Some(clock::coarse_ms());
        if let Some(timer) = &mut self.timer {
            let at = tokio::time::Instant::now() + HEAD_TIMEOUT;
            if timer.deadline() > at {
                timer.as_mut().reset(at);
            }
        }
    }

    fn draining(&mut self) -> bool {
        if !self.stopped {
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            self.stopped = self.stop.as_mut().poll(&mut cx).is_ready();
        }
        self.stopped
    }

    fn deadline_ms(&self) -> u64 {
        match self.head_started_ms {
            Some(started) => started + HEAD_TIMEOUT.as_millis() as u64,
            None => self.since_ms + IDLE_TIMEOUT.as_millis() as u64,
        }
    }

    /// Ready when the connection should close instead of reading on:
    /// drained while idle, or past its deadline.
    fn poll_expired(&mut self, cx: &mut TaskContext<'_>, idle: bool) -> Poll<()> {
        if !self.stopped && self.stop.as_mut().poll(cx).is_ready() {
            self.stopped = true;
        }
        if self.stopped && idle {
            return Poll::Ready(());
        }
        loop {
            let deadline = self.deadline_ms();
            let in_ms = |now: u64| {
                tokio::time::Instant::now() + Duration::from_millis(deadline.saturating_sub(now))
            };
            let timer = self.timer.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(in_ms(clock::coarse_ms())))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = clock::coarse_ms();
            if now >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(in_ms(now));
        }
    }
}

/// Reads the next request head: a request without a body, or the reason
/// the connection goes to hyper or closes (never `Partial`).
async fn read_request<I>(io: &mut I, buf: &mut BytesMut, waiting: &mut Waiting) -> Parsed
where
    I: AsyncRead + Unpin,
{
    waiting.next_request();
    loop {
        if !buf.is_empty() {
            match parse_request(buf) {
                Parsed::Partial if buf.len() >= MAX_HEAD => return Parsed::Hyper,
                Parsed::Partial => waiting.head_started(),
                done => return done,
            }
        }
        let idle = buf.is_empty();
        let read = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = poll_read_buf(io, buf, READ_CHUNK, cx) {
                return Poll::Ready(Some(result));
            }
            waiting.poll_expired(cx, idle).map(|()| None)
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {}
            // EOF, an error, a timeout or a drain while idle.
            _ => return Parsed::Close,
        }
    }
}

/// Reads what `io` has into `buf`'s spare capacity, growing it by `chunk`
/// when less than half of that is free; `Ok(0)` is the end of the stream.
pub(super) fn poll_read_buf<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut TaskContext<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < chunk / 2 {
        buf.reserve(chunk);
    }
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the
            // spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Pending => Poll::Pending,
    }
}

/// Parses a complete head off the front of `buf` into a request without a
/// body; anything this path does not take is left in `buf` for hyper.
fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Not HTTP/1.x (HTTP/2's preface, garbage) or too many headers:
        // hyper answers or takes it.
        Err(_) => return Parsed::Hyper,
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut ranges = HeaderRanges::new();
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let body_or_upgrade = name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || (name.eq_ignore_ascii_case(b"content-length") && h.value.trim_ascii() != b"0");
        if body_or_upgrade {
            return Parsed::Hyper;
        }
        let (n, v) = (offset(name), offset(h.value));
        ranges.push((n, n + name.len(), v, v + h.value.len()));
    }
    let Some(method) = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Parsed::Hyper;
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let path = parsed.path.unwrap_or("/");
    let path_range = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_range)) else {
        put_back(buf, head);
        return Parsed::Hyper;
    };
    let Ok(map) = header_map(&head, &ranges) else {
        put_back(buf, head);
        return Parsed::Hyper;
    };
    let mut request = Request::new(None);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Parsed::Request(request)
}

/// Where each header's name and value sit in a head: start and end of the
/// name, then of the value. Inline up to the usual count of headers.
pub(super) type HeaderRanges = smallvec::SmallVec<[(usize, usize, usize, usize); 24]>;

/// The headers at `ranges` of `head`; the values share its bytes.
pub(super) fn header_map(head: &Bytes, ranges: &HeaderRanges) -> Result<HeaderMap, http::Error> {
    let mut map = HeaderMap::with_capacity(ranges.len());
    for &(ns, ne, vs, ve) in ranges {
        let name = HeaderName::from_bytes(&head[ns..ne])?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Puts a head taken off the front of `buf` back, for hyper.
fn put_back(buf: &mut BytesMut, head: Bytes) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// How a message body is framed on the wire (responses here, request
/// bodies in `pool.rs`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body on the wire (HEAD, 1xx, 204, 304).
    None,
    /// `content-length`.
    Length,
    Chunked,
    /// HTTP/1.0 without a length: the close ends it.
    Close,
}

/// Writes `response`; `Ok(true)` when the connection stays open for the
/// next request.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    version: Version,
    mut keep_alive: bool,
    head_request: bool,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    out.clear();
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        has_date |= name == header::DATE;
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if has_length {
        if no_body {
            Framing::None
        } else {
            Framing::Length
        }
    } else if no_body {
        if head_request && let Some(n) = body.size_hint().exact() {
            put_length(out, n);
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        put_length(out, n);
        Framing::Length
    } else if version == Version::HTTP_11 {
        put_header(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !has_date {
        DATE.with(|date| put_header(out, b"date", date.borrow_mut().now()));
    }
    if !keep_alive {
        put_header(out, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        put_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        // The body is not sent; dropping it finishes the request.
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut body = Pin::new(&mut body);
    // Whether the last chunk went out (with the trailers).
    let mut ended = false;
    loop {
        // Frames ready now join the batch; a write waits for the next one.
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(error)) => return Err(std::io::Error::other(error)),
            Some(Ok(frame)) => ended |= put_frame(out, frame, framing),
        }
        if out.len() >= WRITE_BATCH {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if framing == Framing::Chunked && !ended {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await?;
    io.flush().await?;
    Ok(keep_alive && framing != Framing::Close)
}

/// Adds one body frame to `out`, framed as `framing` says; true when it
/// wrote the last chunk (trailers end a chunked body).
pub(super) fn put_frame(out: &mut Vec<u8>, frame: Frame<Bytes>, framing: Framing) -> bool {
    match frame.into_data() {
        Ok(data) if data.is_empty() => false,
        Ok(data) if framing == Framing::Chunked => {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            false
        }
        Ok(data) => {
            out.extend_from_slice(&data);
            false
        }
        Err(frame) => match (framing, frame.into_trailers()) {
            (Framing::Chunked, Ok(trailers)) => {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    put_header(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                true
            }
            // Trailers cannot travel in a body framed by its length.
            _ => false,
        },
    }
}

/// One `name: value` line of a head or trailer section.
pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn put_length(out: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    put_header(out, b"content-length", digits.format(n).as_bytes());
}

thread_local! {
    static DATE: RefCell<CachedDate> = RefCell::new(CachedDate::default());
}

/// The `date` header value, formatted once a second.
#[derive(Default)]
struct CachedDate {
    second: u64,
    value: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let second = clock::coarse_unix_secs();
        if second != self.second || self.value.is_empty() {
            self.second = second;
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            self.value = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse_request(&mut buf), buf)
    }

    #[test]
    fn requests_without_a_body_are_taken_here() {
        let (parsed, rest) =
            parse(b"GET http://a.example/p?q=1 HTTP/1.0\r\nHost: b\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\nNEXT");
        let Parsed::Request(request) = parsed else {
            panic!("not taken");
        };
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.version(), Version::HTTP_10);
        assert_eq!(request.uri().authority().unwrap(), "a.example");
        assert_eq!(request.uri().path_and_query().unwrap(), "/p?q=1");
        let values: Vec<_> = request.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        // A pipelined request stays in the buffer.
        assert_eq!(&rest[..], b"NEXT");
    }

    #[test]
    fn anything_else_goes_to_hyper_untouched() {
        let cases: [&[u8]; 8] = [
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 9\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ];
        for case in cases {
            let (parsed, rest) = parse(case);
            assert!(
                matches!(parsed, Parsed::Hyper),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case, "the bytes stay for hyper");
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many).0, Parsed::Hyper));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for cut in [1, 5, 15, 20, 29] {
            let full = b"GET /abc HTTP/1.1\r\nhost: a\r\n\r\n";
            let (parsed, rest) = parse(&full[..cut]);
            assert!(matches!(parsed, Parsed::Partial), "cut at {cut}");
            assert_eq!(rest.len(), cut);
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let headers = |v: &str| {
            let mut map = HeaderMap::new();
            if !v.is_empty() {
                map.insert(header::CONNECTION, v.parse().unwrap());
            }
            map
        };
        assert!(keep_alive(Version::HTTP_11, &headers("")));
        assert!(!keep_alive(Version::HTTP_11, &headers("x-foo, Close")));
        assert!(!keep_alive(Version::HTTP_10, &headers("")));
        assert!(keep_alive(Version::HTTP_10, &headers("Keep-Alive")));
    }
}
