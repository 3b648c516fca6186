//! The operator API over TLS (`[server] use_tls`): the rustls configurations of the listener,
//! of the HA crash probe and of standby forwarding, and an [`axum::serve::Listener`] that
//! completes TLS handshakes before axum sees a connection.
//!
//! Handshakes run in their own tasks under a timeout, so a client that connects and sends
//! nothing holds one idle task, not the accept loop. Client certificates: with
//! `client_cert_auth = true` one chaining to `[application] ca_certificate_file` is required;
//! otherwise a presented one must chain to that CA when one is configured, and none is asked
//! for when none is. Nodes talk to each other (probe, forwarding) trusting the same CA and,
//! when client certificates are required, presenting their own server certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autogate_config::Config;
use autogate_tls::rustls::{ClientConfig, ServerConfig};
use autogate_tls::{ClientAuth, Roots, TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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

/// A TCP listener whose connections arrive with their TLS handshake done.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_loop: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), tx));
        Ok(TlsListener {
            rx,
            local,
            accept_loop,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The TCP listener lives in the accept loop: ending it closes the port.
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                "dropping connection from {addr}: {MAX_HANDSHAKES} handshakes in progress"
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    drop(slot);
                    let _ = tx.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake with {addr} failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {addr} timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when aborted by drop; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
