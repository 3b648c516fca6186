//! The manager's one HTTPS port: the accept loop of `autogate-tls` ([`autogate_tls::accept_loop`])
//! with the TLS handshake (any presented client certificate is accepted at this layer, none is
//! required), then HTTP/1.1 with upgrades served by the API router, with the peer's address and
//! certificate attached to every request as a [`Peer`] extension (pinning by fingerprint happens
//! per request, on `/ws`, against the cluster the gateway names).
//!
//! Defences, because this port faces whatever the network sends:
//! - each handshake runs in its own task under [`HANDSHAKE_TIMEOUT`], so a client that opens a
//!   connection and sends nothing (slow-loris) costs one idle task until the timeout and blocks
//!   nobody; HTTP headers must then arrive within [`HEADER_TIMEOUT`];
//! - at most [`MAX_CONNECTIONS`] connections are open at once (each keeps its slot for its whole
//!   life); beyond that new ones are closed at once (and counted), so a flood cannot exhaust
//!   memory or file descriptors;
//! - at most `manager.max_connections_per_source` ([`MAX_CONNECTIONS_PER_SOURCE`] by default)
//!   of them come from one source (an IPv4 address, or
//!   an IPv6 /64, which one host usually has whole), so a single host cannot take every slot:
//!   one more is answered `503` with the reason and closed. This is counted once the TLS
//!   handshake is done, where the connection reaches this port's handler (the accept loop is
//!   shared with the core node); handshakes still in progress are bounded by the global cap
//!   and the handshake timeout;
//! - failed handshakes are logged with their reason (WRN for certificate problems, which an
//!   operator must hear about; DBG for the rest, e.g. port scanners), rate-limited so a flood
//!   of bad attempts does not become a flood of log lines.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autogate_tls::rustls::ServerConfig;
use autogate_tls::{AcceptHandler, AcceptOptions, Accepted, HandshakeFailure};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::hub::PeerCert;
use crate::metrics::ManagerMetrics;
use crate::ratelimit::{suppressed_note, LogLimiter};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the request headers may take once TLS is up.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Most connections open at once from one source address unless
/// `manager.max_connections_per_source` says otherwise: one automation host may wait on as many
/// runs as a cluster's run queue holds (`manager.run_queue_size`, 1000), each on a connection of
/// its own, while sixteen sources are still needed to take every slot.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 1024;

/// Where a connection comes from, for [`MAX_CONNECTIONS_PER_SOURCE`]: the IPv4 address, or the
/// /64 of an IPv6 one (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Open connections per source.
#[derive(Debug)]
struct Sources {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its source; dropping it frees its place.
#[derive(Debug)]
struct SourceSlot<'a> {
    sources: &'a Sources,
    source: IpAddr,
}

impl Sources {
    fn new(limit: usize) -> Sources {
        Sources {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `addr`, or `None` when its source has `limit`.
    fn enter(&self, addr: IpAddr) -> Option<SourceSlot<'_>> {
        let source = source_of(addr);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(source).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self,
            source,
        })
    }
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Who is on the other end of a request: attached to every request as an extension.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate, when one was presented.
    pub cert: Option<Arc<PeerCert>>,
}

/// Describes the first certificate the client presented.
fn peer_cert(conn: &autogate_tls::rustls::ServerConnection) -> Option<Arc<PeerCert>> {
    let cert = conn.peer_certificates()?.first()?;
    let fingerprint = autogate_tls::fingerprint_sha256(cert);
    let (subject, not_after) = match autogate_tls::cert_info(cert) {
        Ok(info) => (info.subject, Some(info.not_after)),
        Err(_) => (String::new(), None),
    };
    Some(Arc::new(PeerCert {
        fingerprint,
        subject,
        not_after,
    }))
}

/// Serves `router` on `listener` until `token` is cancelled. Connection tasks are spawned on
/// `tracker` so shutdown can wait for them.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: axum::Router,
    metrics: ManagerMetrics,
    per_source: usize,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let options = AcceptOptions {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
    };
    let port = Arc::new(Port {
        router,
        metrics,
        token: token.clone(),
        log_limit: LogLimiter::new(10.0, 50.0),
        sources: Sources::new(per_source),
    });
    autogate_tls::accept_loop(listener, tls, options, port, token, tracker).await;
}

/// What the manager's port does with a connection: HTTP with upgrades, the peer attached to
/// every request; failed handshakes counted and logged (rate-limited).
#[derive(Debug)]
struct Port {
    router: axum::Router,
    metrics: ManagerMetrics,
    token: CancellationToken,
    log_limit: LogLimiter,
    sources: Sources,
}

impl AcceptHandler for Port {
    async fn accepted(&self, conn: Accepted) {
        // The slot is kept until the connection ends: the cap is on open connections.
        let Accepted {
            mut stream,
            addr,
            slot,
        } = conn;
        let Some(source) = self.sources.enter(addr.ip()) else {
            self.too_many_from(&mut stream, addr).await;
            return;
        };
        self.connection(stream, addr).await;
        drop(source);
        drop(slot);
    }

    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure) {
        self.metrics.handshake_failed(failure.as_str());
        let Some(n) = self.log_limit.allow() else {
            return;
        };
        match failure {
            HandshakeFailure::Overload => tracing::warn!(
                "dropping connection from {addr}: {MAX_CONNECTIONS} connections already open{}",
                suppressed_note(n)
            ),
            HandshakeFailure::Error(e) => {
                let reason = e.to_string();
                // Certificate problems are what an operator needs to see; the rest (scanners,
                // clients that give up) is noise at INF level.
                if reason.contains("certificate") || reason.contains("Certificate") {
                    tracing::warn!(
                        "TLS handshake with {addr} failed: {reason}{}",
                        suppressed_note(n)
                    );
                } else {
                    tracing::debug!(
                        "TLS handshake with {addr} failed: {reason}{}",
                        suppressed_note(n)
                    );
                }
            }
            HandshakeFailure::Timeout => tracing::debug!(
                "TLS handshake with {addr} timed out after {HANDSHAKE_TIMEOUT:?}; closed{}",
                suppressed_note(n)
            ),
        }
    }
}

impl Port {
    /// Refuses a connection over the per-source limit: a short `503` naming the limit
    /// (a client learns why instead of seeing a reset), then close.
    async fn too_many_from(&self, stream: &mut TlsStream<TcpStream>, addr: SocketAddr) {
        let source = source_of(addr.ip());
        let limit = self.sources.limit;
        self.metrics
            .handshake_failed(HandshakeFailure::Overload.as_str());
        if let Some(n) = self.log_limit.allow() {
            tracing::warn!(
                "refusing connection from {addr}: {limit} connections from {source} already open (manager.max_connections_per_source){}",
                suppressed_note(n)
            );
        }
        let body = format!(
            "{{\"error\":\"too many connections from {source}: at most {limit} at once\"}}"
        );
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(resp.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }

    async fn connection(&self, tls: TlsStream<TcpStream>, addr: SocketAddr) {
        let peer = Peer {
            addr,
            cert: peer_cert(tls.get_ref().1),
        };
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            router.clone().oneshot(req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let conn = builder
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection from {addr} ended: {e}");
                }
            }
            _ = self.token.cancelled() => {
                // Finish the request in flight, then close; upgraded WebSocket sessions are no
                // longer part of this future and close themselves.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_capped_and_freed() {
        let s = Sources::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = s.enter(a).unwrap();
        let two = s.enter(a).unwrap();
        assert!(s.enter(a).is_none(), "a third from the same source");
        assert!(s.enter(b).is_some(), "another source is not affected");
        drop(one);
        let _three = s.enter(a).unwrap();
        drop(two);
        assert_eq!(s.open.lock().unwrap().get(&a), Some(&1));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(x), source_of(y));
        assert_ne!(source_of(x), source_of(z));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
