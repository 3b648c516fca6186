//! The operator API over TLS (`[server] use_tls`): the rustls configurations of the listener,
//! of the HA crash probe and of standby forwarding, and an [`axum::serve::Listener`] that
//! completes TLS handshakes before axum sees a connection.
//!
//! The accept loop is `autogate-tls`'s ([`autogate_tls::accept_loop`]): handshakes run in
//! their own tasks under a timeout, so a client that connects and sends nothing holds one idle
//! task, not the accept loop, and at most [`MAX_HANDSHAKES`] are in progress at once. Client certificates: with
//! `client_cert_auth = true` one chaining to `[application] ca_certificate_file` is required;
//! otherwise a presented one must chain to that CA when one is configured, and none is asked
//! for when none is. Nodes talk to each other (probe, forwarding) trusting the same CA and,
//! when client certificates are required, presenting their own server certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autogate_config::Config;
use autogate_tls::rustls::{ClientConfig, ServerConfig};
use autogate_tls::{
    AcceptHandler, AcceptOptions, Accepted, ClientAuth, HandshakeFailure, Roots, TlsError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; beyond that new connections are closed at once.
const MAX_HANDSHAKES: usize = 1024;

fn ca_certs(
    config: &Config,
) -> Result<Option<Vec<autogate_tls::CertificateDer<'static>>>, TlsError> {
    config
        .application
        .ca_certificate_file
        .as_ref()
        .map(autogate_tls::load_certs)
        .transpose()
}

/// The listener's rustls configuration from `[server]` and `[application] ca_certificate_file`.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let s = &config.server;
    let (cert, key) = match (&s.certificate_file, &s.private_key_file) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(TlsError::InvalidArgument(
                "server.use_tls needs server.certificate_file and server.private_key_file".into(),
            ))
        }
    };
    let (chain, key) = autogate_tls::load_identity(cert, key)?;
    let client_auth = match (s.client_cert_auth, ca_certs(config)?) {
        (true, Some(roots)) => ClientAuth::Required(roots),
        (true, None) => {
            return Err(TlsError::InvalidArgument(
                "server.client_cert_auth needs application.ca_certificate_file to verify client certificates".into(),
            ))
        }
        (false, Some(roots)) => ClientAuth::Optional(roots),
        (false, None) => ClientAuth::None,
    };
    autogate_tls::server_config(chain, key, client_auth)
}

/// How this node reaches other core nodes' TLS API: trusting the configured CA (else the
/// system store) and, when the API requires client certificates, presenting its own.
pub fn peer_client_config(config: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let s = &config.server;
    let roots = match &config.application.ca_certificate_file {
        Some(p) => Roots::File(p.clone()),
        None => Roots::System,
    };
    let identity = match (s.client_cert_auth, &s.certificate_file, &s.private_key_file) {
        (true, Some(c), Some(k)) => Some(autogate_tls::load_identity(c, k)?),
        _ => None,
    };
    autogate_tls::client_config(roots, identity, false)
}

/// A TCP listener whose connections arrive with their TLS handshake done: the accept loop of
/// `autogate-tls` runs on the node's task tracker and hands each connection over a channel.
/// Dropping the listener stops the loop, which closes the port.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _stop: DropGuard,
}

impl TlsListener {
    /// Starts accepting on `listener` until `token` is cancelled or the listener is dropped.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        token: &CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let stop = token.child_token();
        let options = AcceptOptions {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_connections: MAX_HANDSHAKES,
        };
        let handoff = Arc::new(Handoff {
            tx,
            token: stop.clone(),
        });
        tracker.spawn(autogate_tls::accept_loop(
            listener,
            tls,
            options,
            handoff,
            stop.clone(),
            tracker.clone(),
        ));
        Ok(TlsListener {
            rx,
            local,
            _stop: stop.drop_guard(),
        })
    }
}

/// Hands each connection to axum; failed handshakes are only worth a debug line here.
#[derive(Debug)]
struct Handoff {
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    token: CancellationToken,
}

impl AcceptHandler for Handoff {
    async fn accepted(&self, conn: Accepted) {
        // The cap is on handshakes: once done, the connection is axum's.
        drop(conn.slot);
        tokio::select! {
            _ = self.tx.send((conn.stream, conn.addr)) => {}
            // axum no longer accepts: the connection is dropped.
            _ = self.token.cancelled() => {}
        }
    }

    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure) {
        match failure {
            HandshakeFailure::Overload => tracing::debug!(
                "dropping connection from {addr}: {MAX_HANDSHAKES} handshakes in progress"
            ),
            HandshakeFailure::Error(e) => {
                tracing::debug!("TLS handshake with {addr} failed: {e}")
            }
            HandshakeFailure::Timeout => tracing::debug!("TLS handshake with {addr} timed out"),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop has stopped (shutdown); nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
