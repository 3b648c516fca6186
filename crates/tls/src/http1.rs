//! One HTTP/1.1 connection of a port, as the core node's API and the manager serve it: hyper's
//! connection with a header-read timeout (which also closes a kept-alive connection left idle
//! that long, and a client that sends half a request), upgrades allowed (the manager's
//! WebSockets), and a stop that lets the request in flight finish within a grace before the
//! connection is dropped. Upgraded connections are no longer part of it and close themselves.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Http1Limits {
    /// Time to send a request's headers (and how long an idle kept-alive connection stays).
    pub header_read_timeout: Duration,
    /// After `stop`: how long the request in flight may take to finish.
    pub stop_grace: Duration,
}

/// Serves `service` on `io` until the client closes it, a timeout closes it, or `stop` is
/// cancelled (then the request in flight finishes within the grace). An error of the
/// connection (a timeout, a malformed request hyper refused) ends it with a debug line naming
/// `addr`: it is the client's business, not the operator's.
pub async fn serve_http1<I, S, B>(
    io: I,
    service: S,
    limits: Http1Limits,
    stop: &CancellationToken,
    addr: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection from {addr} ended: {e}");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.stop_grace, conn).await;
        }
    }
}
