//! Data path, TLS listeners: read the ClientHello, pick the filter chain
//! by its SNI (Envoy's `tls_inspector` + filter chain match), then either
//! pass the raw stream through or terminate TLS and serve HTTP or TCP.
//!
//! The ClientHello is parsed by rustls' `Acceptor` from a copy of the bytes
//! read; those bytes are replayed to the upstream (passthrough) or to the
//! real handshake (termination), so both paths see the stream untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::snapshot::{ChainAction, ListenerKind};
use crate::tls::names::{cipher_log_name, version_log_name};

use super::access_log::AccessRecord;
use super::{ConnInfo, Context, Graceful, ListenerStats, TlsConnInfo, tcp};

/// Envoy's `tls_inspector` gives up after 15 s; a ClientHello is one packet.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The rest of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is refused (they are a few hundred bytes;
/// post-quantum key shares make them ~2 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// TLS alert descriptions sent before closing.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
enum Alert {
    InternalError = 80,
    UnrecognizedName = 112,
}

/// A fatal alert record (TLS 1.2 framing, which TLS 1.3 also uses before
/// encryption starts).
fn alert_record(alert: Alert) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert as u8]
}

/// Serves one connection accepted on a TLS listener. `http` is the
/// listener's graceful-shutdown watcher for HTTP connections.
pub async fn serve(
    ctx: Arc<Context>,
    mut conn: ConnInfo,
    mut stream: TcpStream,
    stats: Arc<ListenerStats>,
    http: Graceful,
) {
    let hello = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read_client_hello(&mut stream)).await;
    let (buffered, sni) = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(error)) => {
            stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %conn.remote, "no TLS ClientHello: {error}");
            return;
        }
        Err(_) => {
            stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %conn.remote, "no TLS ClientHello within {CLIENT_HELLO_TIMEOUT:?}");
            return;
        }
    };
    let snapshot = ctx.snapshot.load_full();
    let chain = match snapshot
        .listener_by_bind_port(conn.listener_port)
        .map(|l| &l.kind)
    {
        Some(ListenerKind::Tls(tls)) => tls.select(sni.as_deref()),
        _ => None,
    };
    let Some(chain) = chain else {
        // Envoy closes the connection; an alert tells the client why.
        stats.no_filter_chain_match.fetch_add(1, Ordering::Relaxed);
        let _ = stream
            .write_all(&alert_record(Alert::UnrecognizedName))
            .await;
        let mut record = AccessRecord::new(SystemTime::now(), conn.local, conn.remote);
        record.server_name = sni;
        record.flags = "NR";
        record.details = Some("filter_chain_not_found");
        ctx.access_log.write(&record);
        return;
    };
    let mut info = TlsConnInfo {
        chain: chain.name.clone(),
        sni,
        ..TlsConnInfo::default()
    };
    let context = match &chain.action {
        ChainAction::Passthrough(proxy) => {
            conn.tls = Some(Arc::new(info));
            tcp::relay(&ctx, &snapshot, Some(proxy), &conn, stream, &buffered).await;
            return;
        }
        ChainAction::Http { tls, .. } | ChainAction::Tcp { tls, .. } => tls,
    };
    let Some(config) = ctx.tls.context(&context.name).and_then(|s| s.config()) else {
        stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(server = %context.name, remote = %conn.remote,
            "TLS handshake refused: no valid certificate is loaded for this server (see the earlier error)");
        let _ = stream.write_all(&alert_record(Alert::InternalError)).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = acceptor.accept(Rewind::new(buffered, stream));
    let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            if error.to_string().contains("peer sent no certificates") {
                stats
                    .ssl_fail_verify_no_cert
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(server = %context.name, remote = %conn.remote, "TLS handshake failed: {error}");
            return;
        }
        Err(_) => {
            stats.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(server = %context.name, remote = %conn.remote, "TLS handshake timed out");
            return;
        }
    };
    stats.ssl_handshake.fetch_add(1, Ordering::Relaxed);
    let session = tls_stream.get_ref().1;
    info.version = session.protocol_version().map(version_log_name);
    info.cipher = session
        .negotiated_cipher_suite()
        .map(|s| cipher_log_name(s.suite()));
    info.alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    info.peer_subject = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| crate::tls::certs::peer_identity(leaf))
        .map(|(subject, _)| subject);
    if info.peer_subject.is_none() && context.client_auth != crate::snapshot::ClientAuth::None {
        stats.ssl_no_certificate.fetch_add(1, Ordering::Relaxed);
    }
    conn.tls = Some(Arc::new(info));
    match &chain.action {
        ChainAction::Http { .. } => {
            drop(snapshot);
            super::h1::serve_connection(ctx, conn, stats, tls_stream, http).await;
        }
        ChainAction::Tcp { proxy, .. } => {
            tcp::relay(&ctx, &snapshot, proxy.as_ref(), &conn, tls_stream, &[]).await;
        }
        ChainAction::Passthrough(_) => {}
    }
}

/// Reads until rustls has a whole ClientHello; returns every byte read and
/// the SNI (lower case). A peer that is not speaking TLS gets rustls' alert.
async fn read_client_hello(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut acceptor = Acceptor::default();
    let mut buffered = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the ClientHello",
            ));
        }
        buffered.extend_from_slice(&chunk[..n]);
        if buffered.len() > MAX_CLIENT_HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok((buffered, sni));
            }
            Err((error, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = stream.write_all(&out).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Rewind<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            if this.position == this.prefix.len() {
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello".to_vec(), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn alert_records_are_fatal_alerts() {
        assert_eq!(
            alert_record(Alert::UnrecognizedName),
            [0x15, 3, 3, 0, 2, 2, 112]
        );
    }
}
