//! The accept loop of a TLS port: TCP accept, the TLS handshake in a task of its own under a
//! timeout, a cap on connections, and every connection whose handshake is done handed to the
//! caller's [`AcceptHandler`].
//!
//! The defences every port facing the network needs live here, once:
//! - each handshake runs in its own task under [`AcceptOptions::handshake_timeout`], so a client
//!   that connects and sends nothing (slow-loris) costs one idle task until the timeout and
//!   never blocks the loop;
//! - at most [`AcceptOptions::max_connections`] connections hold a [`ConnectionSlot`] at once; beyond
//!   that a new one is closed at once, before any handshake work, so a flood cannot exhaust
//!   memory or file descriptors. The handler decides how long a connection keeps its slot: for
//!   its whole life (the manager, which serves it) or until it is handed on (the core node's
//!   API, where axum takes it over);
//! - a failing `accept` (EMFILE and friends) is logged and retried after a short pause instead
//!   of spinning.
//!
//! What belongs to one port stays with its caller, in its [`AcceptHandler`]: logging and counting
//! failed handshakes, reading and authorising the peer's certificate, serving the connection.
//!
//! Every task runs on the caller's [`TaskTracker`], so its shutdown can wait for them. When the
//! [`CancellationToken`] is cancelled the loop stops accepting (dropping the listener closes the
//! port) and handshakes in progress are abandoned; a connection already handed over ends when
//! its handler returns.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after a failed `accept`, so running out of descriptors does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of an accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptOptions {
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Most connections holding a [`ConnectionSlot`] at once.
    pub max_connections: usize,
}

/// Why a connection never reached the handler.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// [`AcceptOptions::max_connections`] slots were taken: closed without a handshake.
    Overload,
    /// The handshake did not finish within [`AcceptOptions::handshake_timeout`].
    Timeout,
    /// The handshake failed (bad certificate, not TLS at all, the client gave up, …).
    Error(std::io::Error),
}

impl HandshakeFailure {
    /// A short fixed name, for metric labels: `overload`, `timeout` or `error`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            HandshakeFailure::Overload => "overload",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Error(_) => "error",
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::Overload => f.write_str("too many connections"),
            HandshakeFailure::Timeout => f.write_str("handshake timed out"),
            HandshakeFailure::Error(e) => e.fmt(f),
        }
    }
}

/// A connection's place under [`AcceptOptions::max_connections`]; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

/// A connection whose TLS handshake is done.
#[derive(Debug)]
pub struct Accepted {
    /// The TLS stream; `stream.get_ref().1` has the peer's certificates and the ALPN protocol.
    pub stream: TlsStream<TcpStream>,
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its place under the cap: keep it for as long as the connection should count.
    pub slot: ConnectionSlot,
}

/// What a port does with its connections.
pub trait AcceptHandler: Send + Sync + 'static {
    /// Serves one connection whose handshake is done, in the connection's own task on the
    /// tracker. The token is not watched around it: a handler that may run long watches it.
    fn accepted(&self, conn: Accepted) -> impl Future<Output = ()> + Send;

    /// A connection that did not reach [`AcceptHandler::accepted`]. Called for
    /// [`HandshakeFailure::Overload`] from the accept loop itself, so it must not wait.
    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure);
}

/// Accepts TLS connections on `listener` until `token` is cancelled, handing each to
/// `handler`. Tasks are spawned on `tracker`; run this itself there too, so shutdown waits for
/// it (it returns promptly once the token is cancelled).
pub async fn accept_loop<H: AcceptHandler>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    options: AcceptOptions,
    handler: Arc<H>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            handler.failed(addr, HandshakeFailure::Overload);
            continue;
        };
        // Frames of the protocols served here are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let handshake = tokio::select! {
                _ = token.cancelled() => return,
                r = tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)) => r,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = Accepted {
                        stream,
                        addr,
                        slot: ConnectionSlot { _permit: permit },
                    };
                    handler.accepted(conn).await;
                }
                Ok(Err(e)) => handler.failed(addr, HandshakeFailure::Error(e)),
                Err(_) => handler.failed(addr, HandshakeFailure::Timeout),
            }
        });
    }
}
