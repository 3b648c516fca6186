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
//! - with [`accept_loop_with_limits`], at most a set number of those connections come from one
//!   client address ([`ConnectionLimits`]), so one client cannot take every slot; plain-TCP
//!   ports use the same [`ConnectionLimits`] in their own loops;
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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
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

/// A connection's place under [`AcceptOptions::max_connections`] (and its client address's
/// place under [`ConnectionLimits`]); dropping it frees both.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

/// Why [`ConnectionLimits::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of the port is taken.
    Total,
    /// Every slot one client address may hold is taken.
    Source,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Total => f.write_str("too many connections"),
            Refused::Source => f.write_str("too many connections from this address"),
        }
    }
}

/// The connection caps of one port: at most `total` connections at once, at most `per_source`
/// of them from one client address. An IPv4-mapped IPv6 address counts as its IPv4 address and
/// an IPv6 address as its /64, the block one subscriber usually holds, so a client cannot
/// dodge the cap by cycling through the addresses of its own network. Cloning shares the caps.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    slots: Arc<Semaphore>,
    per_source: usize,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimits {
    /// Caps of `total` connections, `per_source` from one address (both at least 1).
    pub fn new(total: usize, per_source: usize) -> Self {
        ConnectionLimits {
            slots: Arc::new(Semaphore::new(total.clamp(1, Semaphore::MAX_PERMITS))),
            per_source: per_source.max(1),
            sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for a connection from `addr`, held until it is dropped; refused at once (never
    /// waits) when a cap is reached.
    pub fn admit(&self, addr: IpAddr) -> Result<ConnectionSlot, Refused> {
        let source = client_source(addr);
        let source_slot = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let held = sources.entry(source).or_insert(0);
            if *held >= self.per_source {
                return Err(Refused::Source);
            }
            *held += 1;
            SourceSlot {
                source,
                sources: self.sources.clone(),
            }
        };
        // On refusal `source_slot` is dropped here, which gives its place back.
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        Ok(ConnectionSlot {
            _permit: permit,
            _source: Some(source_slot),
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.values().sum()
    }
}

/// The client a per-address limit counts `addr` under: an IPv4-mapped IPv6 address as its IPv4
/// address, an IPv6 address as its /64 (the block one subscriber usually holds). Shared by the
/// connection caps of every port and the core node's login backoff, so both see one client alike.
pub fn client_source(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One connection's place under its address's cap.
#[derive(Debug)]
struct SourceSlot {
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = sources.get_mut(&self.source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                // Addresses with no connection are forgotten: the map stays as small as the
                // set of clients connected now.
                sources.remove(&self.source);
            }
        }
    }
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
    let limits = ConnectionLimits::new(options.max_connections, usize::MAX);
    accept_loop_with_limits(listener, config, options, limits, handler, token, tracker).await
}

/// [`accept_loop`] under `limits`, which replace [`AcceptOptions::max_connections`] (ignored
/// here): a connection beyond either cap (the port's, or its client address's) is closed at
/// once, before any handshake work, and reported as [`HandshakeFailure::Overload`].
pub async fn accept_loop_with_limits<H: AcceptHandler>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    options: AcceptOptions,
    limits: ConnectionLimits,
    handler: Arc<H>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(config);
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
        let Ok(slot) = limits.admit(addr.ip()) else {
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
                    let conn = Accepted { stream, addr, slot };
                    handler.accepted(conn).await;
                }
                Ok(Err(e)) => handler.failed(addr, HandshakeFailure::Error(e)),
                Err(_) => handler.failed(addr, HandshakeFailure::Timeout),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_total_and_free_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refused::Source);
        // The same IPv4 address seen through an IPv6 listener counts the same.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(limits.admit(mapped).unwrap_err(), Refused::Source);
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Total);
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.admit(b).unwrap();
        // A refusal for the total gave the address's place back.
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn an_ipv6_client_counts_as_its_64() {
        let limits = ConnectionLimits::new(10, 1);
        let _x = limits.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let other_host = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(limits.admit(other_host).unwrap_err(), Refused::Source);
        let _y = limits.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
    }
}
