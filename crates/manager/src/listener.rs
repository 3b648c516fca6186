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
//!   of them come from one source (an IPv4 address, or an IPv6 /64, which one host usually has
//!   whole), so a single host cannot take every slot. Both caps are applied by the accept loop
//!   ([`autogate_tls::ConnectionLimits`]) before any handshake work: a connection beyond either
//!   is closed at once, counted and logged;
//! - failed handshakes are logged with their reason (WRN for certificate problems, which an
//!   operator must hear about; DBG for the rest, e.g. port scanners), rate-limited so a flood
//!   of bad attempts does not become a flood of log lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autogate_tls::rustls::ServerConfig;
use autogate_tls::{AcceptHandler, AcceptOptions, Accepted, ConnectionLimits, HandshakeFailure};
use hyper::body::Incoming;
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
        per_source,
    });
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, per_source);
    autogate_tls::accept_loop_with_limits(listener, tls, options, limits, port, token, tracker)
        .await;
}

/// What the manager's port does with a connection: HTTP with upgrades, the peer attached to
/// every request; failed handshakes counted and logged (rate-limited).
#[derive(Debug)]
struct Port {
    router: axum::Router,
    metrics: ManagerMetrics,
    token: CancellationToken,
    log_limit: LogLimiter,
    /// `manager.max_connections_per_source`, for the log.
    per_source: usize,
}

impl AcceptHandler for Port {
    async fn accepted(&self, conn: Accepted) {
        // The slot is kept until the connection ends: the cap is on open connections.
        let Accepted { stream, addr, slot } = conn;
        self.connection(stream, addr).await;
        drop(slot);
    }

    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure) {
        self.metrics.handshake_failed(failure.as_str());
        let Some(n) = self.log_limit.allow() else {
            return;
        };
        match failure {
            HandshakeFailure::Overload => tracing::warn!(
                "dropping connection from {addr} before the handshake: too many connections ({MAX_CONNECTIONS} open in total, or {} from {}: manager.max_connections_per_source){}",
                self.per_source,
                addr.ip().to_canonical(),
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
        // On a stop the request in flight finishes, then the connection closes; upgraded
        // WebSocket sessions are no longer part of it and close themselves.
        let limits = autogate_tls::Http1Limits {
            header_read_timeout: HEADER_TIMEOUT,
            stop_grace: Duration::from_secs(5),
        };
        autogate_tls::serve_http1(tls, service, limits, &self.token, addr).await;
    }
}
