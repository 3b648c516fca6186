//! How the operator API meets the network: the accept loop, the connection caps, the HTTP/1.1
//! connection of each client with its timeouts, and the body limit of the routes anyone may
//! call. `axum::serve` is not used because it exposes none of these limits.
//!
//! Defences, because the port faces whatever the network sends:
//! - at most `server.max_connections` connections are open at once, and at most
//!   `server.max_connections_per_address` from one client address (an IPv6 /64 counts as one);
//!   each keeps its slot for its whole life. Beyond a cap a plain-HTTP connection is answered a
//!   short 503 with `Retry-After` and closed (a TLS one is closed: there is no answer without a
//!   handshake), so one client cannot exhaust descriptors or memory;
//! - a TLS handshake must finish within [`HANDSHAKE_TIMEOUT`] (the accept loop of
//!   `autogate-tls`, shared with the manager);
//! - request headers must arrive within `server.header_read_timeout` (hyper's header timeout,
//!   which also closes a kept-alive connection left idle that long), so a client that sends
//!   half a request (slow-loris) loses its connection;
//! - a request body must arrive within `server.body_read_timeout` of its headers; a slower one
//!   is answered 408 and its connection closed;
//! - the routes that need no API key (the login) take a body of at most [`OPEN_BODY_LIMIT`],
//!   refused with 413 before any handler — or a standby's forwarding — reads it, so an
//!   anonymous caller cannot make a node buffer megabytes.
//!
//! Every request carries its client's address as `axum::extract::ConnectInfo`, of a
//! `SocketAddr` and of [`PeerAddr`].
//! Stopping (the token given to [`serve`]) stops accepting at once, lets each connection
//! finish the request in flight, and returns once every connection has ended.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use autogate_config::Config;
use autogate_tls::rustls::ServerConfig;
use autogate_tls::{
    AcceptHandler, AcceptOptions, Accepted, ConnectionLimits, HandshakeFailure, Refused,
};
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::{route_specs, Access, PeerAddr};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body of a route callable without an API key (a login is a name and a password).
pub const OPEN_BODY_LIMIT: usize = 8 << 10;
/// Refusals being written at once; past that a connection over a cap is closed unanswered.
const MAX_REFUSALS: usize = 64;
/// Longest a refusal may take to write and to read what the client sent meanwhile.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// Bound on finishing a request in flight once the node stops (the node's own grace period
/// bounds the whole stop as well).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The limits of the API port, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let s = &config.server;
        Limits {
            header_read_timeout: s.header_read_timeout,
            body_read_timeout: s.body_read_timeout,
            max_connections: s.max_connections,
            max_connections_per_address: s.max_connections_per_address,
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` is cancelled and every
/// connection has ended.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let caps = ConnectionLimits::new(limits.max_connections, limits.max_connections_per_address);
    let connections = TaskTracker::new();
    let port = Arc::new(Port {
        app,
        limits,
        stop: stop.clone(),
    });
    match tls {
        Some(tls) => {
            let options = AcceptOptions {
                handshake_timeout: HANDSHAKE_TIMEOUT,
                max_connections: port.limits.max_connections,
            };
            autogate_tls::accept_loop_with_limits(
                listener,
                tls,
                options,
                caps,
                port,
                stop,
                connections.clone(),
            )
            .await
        }
        None => plain_loop(listener, caps, port, stop, &connections).await,
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn plain_loop(
    listener: TcpListener,
    caps: ConnectionLimits,
    port: Arc<Port>,
    stop: CancellationToken,
    connections: &TaskTracker,
) {
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and friends: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match caps.admit(addr.ip()) {
            Ok(slot) => {
                let port = port.clone();
                connections.spawn(async move {
                    port.connection(tcp, addr).await;
                    drop(slot);
                });
            }
            Err(why) => {
                tracing::debug!("refusing a connection from {addr}: {why}");
                // Answering costs a task for at most REFUSAL_TIME, and only MAX_REFUSALS at
                // once: under a flood the rest are closed unanswered.
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let text = port.refusal(why, addr);
                    connections.spawn(async move {
                        refuse(tcp, text).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Writes a 503 to a connection over a cap without reading its request, then reads (and
/// drops) what the client sends until it closes, so closing does not reset the connection
/// before the client has read the answer.
async fn refuse(mut tcp: tokio::net::TcpStream, message: String) {
    let body = json!({ "error": message }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// What the port does with each connection, plain or TLS.
#[derive(Debug)]
struct Port {
    app: Router,
    limits: Limits,
    stop: CancellationToken,
}

impl Port {
    fn refusal(&self, why: Refused, addr: SocketAddr) -> String {
        match why {
            Refused::Source => format!(
                "too many connections from {}: this core node accepts {} at once from one address (server.max_connections_per_address); retry once some have closed",
                addr.ip(),
                self.limits.max_connections_per_address
            ),
            Refused::Total => format!(
                "this core node has {} connections open, its limit (server.max_connections); retry later",
                self.limits.max_connections
            ),
        }
    }

    /// Serves HTTP/1.1 on one connection until the client closes it, a timeout closes it, or
    /// the node stops (then the request in flight finishes first).
    async fn connection<I>(&self, io: I, addr: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let body_timeout = self.limits.body_read_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            call(app.clone(), req, addr, body_timeout)
        });
        let limits = autogate_tls::Http1Limits {
            header_read_timeout: self.limits.header_read_timeout,
            stop_grace: STOP_GRACE,
        };
        autogate_tls::serve_http1(io, service, limits, &self.stop, addr).await;
    }
}

impl AcceptHandler for Port {
    async fn accepted(&self, conn: Accepted) {
        // The slot is kept until the connection ends: the caps are on open connections.
        let Accepted { stream, addr, slot } = conn;
        self.connection(stream, addr).await;
        drop(slot);
    }

    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure) {
        match failure {
            HandshakeFailure::Overload => tracing::debug!(
                "closing a connection from {addr}: over server.max_connections ({}) or server.max_connections_per_address ({})",
                self.limits.max_connections,
                self.limits.max_connections_per_address
            ),
            HandshakeFailure::Error(e) => {
                tracing::debug!("TLS handshake with {addr} failed: {e}")
            }
            HandshakeFailure::Timeout => tracing::debug!(
                "TLS handshake with {addr} timed out after {HANDSHAKE_TIMEOUT:?}; closed"
            ),
        }
    }
}

/// One request: the client's address attached, the body under its deadline; a body that
/// missed it is answered 408 whatever the handler made of the failed read.
async fn call(
    app: Router,
    req: hyper::Request<Incoming>,
    addr: SocketAddr,
    body_timeout: Duration,
) -> Result<Response, std::convert::Infallible> {
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut req = if req.body().is_end_stream() {
        req.map(Body::new)
    } else {
        let flag = timed_out.clone();
        req.map(|b| Body::new(Deadline::new(b, body_timeout, flag)))
    };
    req.extensions_mut().insert(ConnectInfo(addr));
    req.extensions_mut().insert(ConnectInfo(PeerAddr(addr)));
    let response = app.oneshot(req).await;
    if timed_out.load(Ordering::Relaxed) {
        let mut r = error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {body_timeout:?} of its headers (server.body_read_timeout)"
            ),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(r);
    }
    response
}

/// The request body did not arrive in time (`server.body_read_timeout`).
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {:?} (server.body_read_timeout)",
            self.0
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails once its deadline has passed.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
    timed_out: Arc<AtomicBool>,
}

impl Deadline {
    fn new(inner: Incoming, after: Duration, timed_out: Arc<AtomicBool>) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(after)),
            after,
            timed_out,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `router` with the body of every route callable without an API key limited to
/// [`OPEN_BODY_LIMIT`]: a larger declared length is refused at once, a longer chunked body
/// fails when it passes the limit. It runs before the route's own layers, so before a standby
/// forwards anything.
pub fn limit_open_bodies(router: Router) -> Router {
    let open: Arc<HashSet<(Method, String)>> = Arc::new(
        route_specs()
            .into_iter()
            .filter(|s| s.access == Access::Open)
            .map(|s| (s.method, s.path))
            .collect(),
    );
    router.route_layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let open = open.clone();
            async move {
                let is_open = req
                    .extensions()
                    .get::<MatchedPath>()
                    .is_some_and(|p| open.contains(&(req.method().clone(), p.as_str().to_owned())));
                if !is_open {
                    return next.run(req).await;
                }
                let declared = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > OPEN_BODY_LIMIT as u64) {
                    return too_large(req.uri().path());
                }
                let req = req.map(|b| Body::new(http_body_util::Limited::new(b, OPEN_BODY_LIMIT)));
                next.run(req).await
            }
        },
    ))
}

fn too_large(path: &str) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body of {path} is limited to {OPEN_BODY_LIMIT} bytes (a route callable without an API key)"
        ),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}
