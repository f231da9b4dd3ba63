//! Data path, TCP: one downstream connection to one upstream endpoint,
//! copied both ways with half-close, for TCP servers the kernel does not
//! forward itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::snapshot::{ListenerKind, Snapshot, TcpProxy};
use crate::stats::DestinationLabels;

use super::access_log::AccessRecord;
use super::upstream::{choose_weighted, random_u64};
use super::{ConnInfo, Context, ProxyError};

/// Proxies one accepted connection of a TCP listener until both directions
/// are closed.
pub async fn serve(ctx: Arc<Context>, conn: ConnInfo, downstream: TcpStream) {
    let snapshot = ctx.snapshot.load_full();
    let proxy = match snapshot
        .listener_by_bind_port(conn.listener_port)
        .map(|l| &l.kind)
    {
        Some(ListenerKind::Tcp(Some(proxy))) => Some(proxy),
        _ => None,
    };
    relay(&ctx, &snapshot, proxy, &conn, downstream, &[]).await;
}

/// Proxies `downstream` to a destination of `proxy` (closing it when there
/// is none) until both directions are closed; `prefix`, bytes already read
/// from the client (a passed-through ClientHello), goes upstream first.
/// Writes the access-log line and the TCP metrics.
pub async fn relay<S>(
    ctx: &Context,
    snapshot: &Snapshot,
    proxy: Option<&TcpProxy>,
    conn: &ConnInfo,
    downstream: S,
    prefix: &[u8],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut record = AccessRecord::new(SystemTime::now(), conn.local, conn.remote);
    if let Some(tls) = &conn.tls {
        record.set_tls(tls);
    }
    let mut destination = DestinationLabels::unknown();
    let (received, sent, flags) = match forward(
        ctx,
        snapshot,
        proxy,
        downstream,
        prefix,
        &mut record,
        &mut destination,
    )
    .await
    {
        Ok((received, sent)) => (received, sent, "-"),
        Err((error, received, sent)) => {
            tracing::debug!(%error, remote = %conn.remote, "tcp connection closed");
            record.upstream_failure = error.transport_failure().map(str::to_owned);
            (received, sent, error.flag())
        }
    };
    record.flags = flags;
    record.bytes_received = received;
    record.bytes_sent = sent;
    record.duration_ms = started.elapsed().as_millis() as u64;
    ctx.metrics.tcp_closed(&destination, flags, sent, received);
    ctx.access_log.write(&record);
}

type Failure = (ProxyError, u64, u64);

async fn forward<S>(
    ctx: &Context,
    snapshot: &Snapshot,
    proxy: Option<&TcpProxy>,
    downstream: S,
    prefix: &[u8],
    record: &mut AccessRecord,
    destination: &mut DestinationLabels,
) -> Result<(u64, u64), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fail = |e: ProxyError| (e, 0, 0);
    let Some(tcp) = proxy else {
        return Err(fail(ProxyError::NoRoute));
    };
    let choice = choose_weighted(&tcp.clusters, random_u64())
        .ok_or_else(|| fail(ProxyError::ClusterNotFound(tcp.stat_prefix.clone())))?;
    record.upstream_cluster = Some(choice.name.clone());
    let cluster = snapshot
        .cluster(&choice.name)
        .ok_or_else(|| fail(ProxyError::ClusterNotFound(choice.name.clone())))?;
    *destination = DestinationLabels::of(cluster);
    let state = ctx.balancer.state(&cluster.name);
    let Some(endpoint) = state.choose_endpoint(cluster) else {
        state.cx_none_healthy.fetch_add(1, Ordering::Relaxed);
        return Err(fail(ProxyError::NoHealthyUpstream));
    };
    record.upstream_host = Some(endpoint.address);
    let stats = state.endpoint(endpoint.address);
    stats.cx_total.fetch_add(1, Ordering::Relaxed);
    let connected = tokio::time::timeout(
        cluster.connect_timeout,
        TcpStream::connect(endpoint.address),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            state.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(fail(ProxyError::ConnectFailure(e.to_string())));
        }
        Err(_) => {
            stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            state.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(fail(ProxyError::ConnectFailure(
                "connect timeout".to_owned(),
            )));
        }
    };
    let _ = upstream.set_nodelay(true);
    record.upstream_local = upstream.local_addr().ok();
    if !prefix.is_empty()
        && let Err(e) = upstream.write_all(prefix).await
    {
        return Err((ProxyError::UpstreamReset(e.to_string()), 0, 0));
    }
    ctx.metrics.tcp_opened(destination);
    stats.cx_active.fetch_add(1, Ordering::Relaxed);
    let mut down = Counted::new(downstream);
    let mut up = Counted::new(upstream);
    let copied = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    // Bytes read from the client went upstream and vice versa; counted as
    // read so a reset mid-stream still reports what moved.
    let (received, sent) = (down.read + prefix.len() as u64, up.read);
    state.cx_tx_bytes.fetch_add(received, Ordering::Relaxed);
    state.cx_rx_bytes.fetch_add(sent, Ordering::Relaxed);
    match copied {
        Ok(_) => Ok((received, sent)),
        Err(e) => Err((ProxyError::UpstreamReset(e.to_string()), received, sent)),
    }
}

/// A stream that counts the bytes read from it (also the WebSocket tunnel's,
/// whose counts must survive a relay that ends in an error).
pub(super) struct Counted<S> {
    inner: S,
    pub(super) read: u64,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
