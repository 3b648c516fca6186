//! `/ws`: the gateway session endpoint.
//!
//! Before the upgrade the request must carry a client certificate (else 401, logged) that is
//! pinned to exactly one cluster (else 403, logged: a stranger's certificate never gets a
//! WebSocket, and a fingerprint a store from before the uniqueness rule pins to several clusters
//! is refused naming them). After it, the session task runs three phases:
//!
//! 1. **hello** — the first frame must be a `hello` request within [`HELLO_TIMEOUT`]; anything
//!    else is answered with a JSON-RPC error and the connection is closed (1008) with the reason.
//!    Until `hello` is accepted a message may not exceed [`PRE_HELLO_LIMIT`] bytes (see
//!    [`crate::prehello`]); a larger one closes the connection with 1009 and the reason.
//! 2. **decision** — [`Hub::hello`] checks cluster, state, certificate and the session rules;
//!    a refusal is sent as a JSON-RPC error naming the reason, then close 1008 with it.
//! 3. **live** — requests from the API go out, answers come back by id; the gateway's `ping`
//!    requests are answered (params echoed), `nodes.update` notifications update the node list,
//!    `services.update` notifications replace the cluster's service catalog (checked against
//!    the protocol's limits first); malformed frames get −32700/−32600, unknown methods −32601,
//!    and the session stays up.
//!
//! Limits ([`SessionLimits`], from `[manager]`): frames above `max_frame_size` close the
//! session with 1009; more than `session_frame_rate` frames per second on average (bursts of
//! `session_frame_burst`) close it with 1008 `rate limit exceeded` — counting only what the
//! gateway sends of its own accord: answers to the manager's own requests (runs it sent,
//! requests of the API, its pings) are bounded by what the manager sent, and a burst of run
//! answers is the gateway doing its job. The manager pings every `ping_interval` and closes a
//! session it has heard nothing from (no frame, no pong) for `silence_limit` with 1001, so a
//! blackholed link is noticed within `silence_limit + ping_interval`.
//!
//! A connection lost without a close frame is recorded in the session history in plain words
//! ([`ConnectionLoss`]); the library's own error goes to the log beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_proto::{
    decode, encode, method, DecodeError, Frame, Hello, HelloAccepted, Id, NodesUpdate, Request,
    Response, RpcError, ServicesUpdate,
};
use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::api::AppState;
use crate::disconnect::ConnectionLoss;
use crate::hub::{
    Hub, Outgoing, PeerCert, Reply, SessionControl, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL,
    CLOSE_POLICY,
};
use crate::listener::Peer;
use crate::metrics::RefusalCategory;
use crate::model::{now_rfc3339, truncate, Catalog};
pub use crate::prehello::PRE_HELLO_LIMIT;
use crate::prehello::{Gate, Guarded};
use crate::ratelimit::{suppressed_note, TokenBucket};
pub use crate::ratelimit::{FRAMES_PER_SECOND, FRAME_BURST};
use crate::runs::SessionKind;

/// How long a gateway has to send `hello` after the upgrade.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the manager sends a WebSocket ping, unless `manager.ping_interval` says otherwise.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A session silent for this long is closed as dead, unless `manager.silence_limit` says
/// otherwise.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(5);

/// The liveness and rate limits of every gateway session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    /// How often the manager pings.
    pub ping_interval: Duration,
    /// A session nothing arrived on for this long is closed as lost.
    pub silence_limit: Duration,
    /// Gateway-initiated frames per second, on average.
    pub frame_rate: f64,
    /// Gateway-initiated frames at once.
    pub frame_burst: f64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            ping_interval: PING_INTERVAL,
            silence_limit: SILENCE_LIMIT,
            frame_rate: FRAMES_PER_SECOND,
            frame_burst: FRAME_BURST,
        }
    }
}

impl SessionLimits {
    /// The `[manager]` settings (the configuration checked that the silence limit exceeds the
    /// ping interval).
    pub fn from_config(m: &autogate_config::Manager) -> Self {
        SessionLimits {
            ping_interval: m.ping_interval,
            silence_limit: m.silence_limit,
            frame_rate: f64::from(m.session_frame_rate),
            frame_burst: f64::from(m.session_frame_burst),
        }
    }

    /// What the history records for a session closed for silence.
    fn silent(&self) -> String {
        ConnectionLoss::Silent(self.silence_limit.as_secs()).to_string()
    }
}
/// Longest a frame write may block (a gateway that stops reading).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read buffer and write batching threshold of a session.
const SESSION_BUFFER: usize = 4 * 1024;
/// Requests queued towards one session before the API answers "busy".
const REQUEST_QUEUE: usize = 256;
/// Requests awaiting an answer on one session.
const MAX_IN_FLIGHT: usize = 1024;
/// WebSocket close code "message too big".
const CLOSE_TOO_BIG: u16 = autogate_proto::CLOSE_MESSAGE_TOO_BIG;

type Ws = WebSocketStream<Guarded<TokioIo<hyper::upgrade::Upgraded>>>;

fn json_error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// `GET /ws`: checks the client certificate and the upgrade request, answers 101 and starts
/// the session task.
pub async fn upgrade(State(app): State<AppState>, mut req: HttpRequest) -> HttpResponse {
    let Some(peer) = req.extensions().get::<Peer>().cloned() else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection details missing",
        );
    };
    let Some(cert) = peer.cert.clone() else {
        let category = RefusalCategory::NoCertificate;
        app.hub.metrics().refused(category);
        if let Some(n) = app.refusal_log.allow() {
            tracing::warn!(
                refusal = category.as_str(),
                "refused /ws from {}: no client certificate presented (a gateway must present the certificate registered for its cluster){}",
                peer.addr,
                suppressed_note(n)
            );
        }
        return json_error(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required on /ws: configure the gateway's connect.certificate_file and connect.private_key_file",
        );
    };
    if let Some(reason) = app
        .hub
        .pinned_cluster(&cert.fingerprint)
        .refusal(&cert.fingerprint)
    {
        let category = RefusalCategory::CertificateNotRegistered;
        app.hub.metrics().refused(category);
        if let Some(n) = app.refusal_log.allow() {
            tracing::warn!(
                refusal = category.as_str(),
                "refused /ws from {} before the upgrade: {reason}{}",
                peer.addr,
                suppressed_note(n)
            );
        }
        return json_error(
            StatusCode::FORBIDDEN,
            format!("{reason}: register it for the gateway's cluster (autogate manager cluster add-cert)"),
        );
    }
    let headers = req.headers();
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, is_upgrade, version_ok) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request (Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
        );
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded to a WebSocket",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let max = app.max_frame_size;
    let limits = app.session;
    let hub = app.hub.clone();
    let token = app.token.clone();
    let log = app.refusal_log.clone();
    app.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("WebSocket upgrade from {} failed: {e}", peer.addr);
                return;
            }
        };
        // Small buffers: tungstenite's defaults (128 KiB each) would cost ~128 MiB of resident
        // memory per 1 000 idle sessions; buffers still grow for a large frame when one comes.
        let config = WebSocketConfig::default()
            .read_buffer_size(SESSION_BUFFER)
            .write_buffer_size(SESSION_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let gate = Gate::new(PRE_HELLO_LIMIT.min(max));
        let io = Guarded::new(TokioIo::new(upgraded), gate.clone());
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        Session {
            hub,
            log,
            ws,
            gate,
            addr: peer.addr,
            cert,
            max,
            token,
            bucket: TokenBucket::new(limits.frame_rate, limits.frame_burst, Instant::now()),
            limits,
        }
        .run()
        .await;
    });
    let mut resp = HttpResponse::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// How a phase of the session ended.
enum End {
    /// Close with this code and reason (sent to the gateway and recorded).
    Close(u16, String),
    /// The connection is gone (or must be dropped without a close frame); the reason is
    /// recorded.
    Gone(String),
    /// The connection was lost: the plain words are recorded, the library's error (when there
    /// is one) is logged.
    Lost(ConnectionLoss, Option<String>),
    /// A frame above the limit: close 1009 and drain what the gateway is still sending.
    TooBig(String),
}

impl End {
    /// What the history records and the gateway is told.
    fn reason(&self) -> String {
        match self {
            End::Close(_, r) | End::Gone(r) | End::TooBig(r) => r.clone(),
            End::Lost(loss, _) => loss.to_string(),
        }
    }

    /// The raw error behind a lost connection, for the log.
    fn detail(&self) -> Option<&str> {
        match self {
            End::Lost(_, detail) => detail.as_deref(),
            _ => None,
        }
    }

    /// Whether the session's node left the cluster with this end, as far as the manager can
    /// tell: a node that closed its session itself stopped (or stepped down: its next session's
    /// membership says which), one whose connection was lost or went silent is lost. When the
    /// manager closed it (replaced, refused, shutting down) the node's fate is unknown.
    fn left(&self, limits: &SessionLimits) -> Option<crate::members::Absence> {
        match self {
            End::Gone(_) => Some(crate::members::Absence::Stopped),
            End::Lost(..) => Some(crate::members::Absence::Lost),
            End::Close(_, reason) if *reason == limits.silent() => {
                Some(crate::members::Absence::Lost)
            }
            End::Close(..) | End::TooBig(_) => None,
        }
    }

    /// A failed read or write of the WebSocket stream.
    fn lost(e: &WsError) -> End {
        let loss = ConnectionLoss::of_ws(e);
        // A WebSocket that is simply closed has nothing more to tell the log.
        let detail = (loss != ConnectionLoss::Closed).then(|| e.to_string());
        End::Lost(loss, detail)
    }
}

/// How waiting for `hello` ended without one; `category` when it counts as a refusal.
struct NoHello {
    end: End,
    category: Option<RefusalCategory>,
}

impl From<End> for NoHello {
    fn from(end: End) -> Self {
        NoHello {
            end,
            category: None,
        }
    }
}

impl End {
    /// This end, counted as a refusal of `category`.
    fn refusal(self, category: RefusalCategory) -> NoHello {
        NoHello {
            end: self,
            category: Some(category),
        }
    }
}

/// `" (detail)"` or nothing.
fn detail_note(detail: Option<&str>) -> String {
    detail.map(|d| format!(" ({d})")).unwrap_or_default()
}

struct Session {
    hub: Arc<Hub>,
    log: Arc<crate::ratelimit::LogLimiter>,
    ws: Ws,
    /// The limit before `hello` ([`crate::prehello`]).
    gate: Arc<Gate>,
    addr: SocketAddr,
    cert: Arc<PeerCert>,
    max: usize,
    token: tokio_util::sync::CancellationToken,
    bucket: TokenBucket,
    limits: SessionLimits,
}

fn close_message(code: u16, reason: &str) -> Message {
    // A close frame's reason is limited to 123 bytes; the full reason went in the JSON-RPC
    // error and the log.
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: truncate(reason, 123).to_owned().into(),
    }))
}

impl Session {
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(msg)).await {
            Ok(Ok(())) => {
                self.hub.metrics().frame("out");
                Ok(())
            }
            Ok(Err(e)) => Err(End::lost(&e)),
            Err(_) => Err(End::Lost(
                ConnectionLoss::NotReading(SEND_TIMEOUT.as_secs()),
                None,
            )),
        }
    }

    async fn send_frame(&mut self, frame: Frame) -> Result<(), End> {
        self.send(Message::Text(encode(&frame).into())).await
    }

    /// Sends the close frame, then lets the gateway answer it (bounded).
    async fn finish(&mut self, end: &End) {
        match end {
            End::Close(code, reason) => {
                let _ = self.send(close_message(*code, reason)).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = self.ws.next().await {}
                })
                .await;
            }
            End::TooBig(reason) => {
                let _ = self.send(close_message(CLOSE_TOO_BIG, reason)).await;
                // The rest of the oversized frame is still arriving: read and discard it for a
                // moment so the gateway sees the close frame instead of a connection reset.
                let io = self.ws.get_mut();
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
            End::Gone(_) | End::Lost(..) => {}
        }
    }

    /// Counts a frame received and takes one frame-rate token; the `End` when the gateway is
    /// over the limit.
    fn rate_check(&mut self) -> Result<(), End> {
        self.hub.metrics().frame("in");
        self.charge()
    }

    /// Takes one frame-rate token for a frame the gateway sent of its own accord.
    fn charge(&mut self) -> Result<(), End> {
        if self.bucket.take(Instant::now()) {
            Ok(())
        } else {
            Err(End::Close(CLOSE_POLICY, "rate limit exceeded".to_owned()))
        }
    }

    fn read_error(&self, e: WsError) -> End {
        if let (WsError::Io(_), Some(reason)) = (&e, self.gate.tripped()) {
            return End::TooBig(reason);
        }
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => End::TooBig(
                format!("frame of {size} bytes exceeds the limit of {max_size} bytes"),
            ),
            other => End::lost(&other),
        }
    }

    async fn run(mut self) {
        let conn = self.hub.new_conn();
        let (id, hello) = match self.wait_for_hello().await {
            Ok(h) => h,
            Err(NoHello { end, category }) => {
                if let Some(category) = category {
                    self.hub.metrics().refused(category);
                }
                if let Some(n) = self.log.allow() {
                    tracing::warn!(
                        refusal = category.map(RefusalCategory::as_str),
                        "refused gateway connection from {} (certificate {}): {}{}{}",
                        self.addr,
                        self.cert.fingerprint,
                        end.reason(),
                        detail_note(end.detail()),
                        suppressed_note(n)
                    );
                }
                self.finish(&end).await;
                return;
            }
        };
        let control = Arc::new(SessionControl::default());
        let (tx, mut rx) = mpsc::channel(REQUEST_QUEUE);
        let decision = self
            .hub
            .hello(conn, &hello, &self.cert, self.addr, control.clone(), tx)
            .await;
        let accepted = match decision {
            Ok(a) => {
                // Who this is is known now: `manager.max_frame_size` applies from here on.
                self.gate.lift();
                a
            }
            Err(refusal) => {
                self.hub.metrics().refused(refusal.category);
                if let Some(n) = self.log.allow() {
                    tracing::warn!(
                        refusal = refusal.category.as_str(),
                        "refused gateway cluster {} node {} from {}: {}{}",
                        hello.cluster_id,
                        hello.node_id,
                        self.addr,
                        refusal.reason,
                        suppressed_note(n)
                    );
                }
                let err = RpcError::new(refusal.code, refusal.reason.clone());
                let _ = self.send_frame(Response::error(Some(id), err).into()).await;
                let code = if refusal.code == autogate_proto::INTERNAL_ERROR {
                    CLOSE_INTERNAL
                } else {
                    CLOSE_POLICY
                };
                self.finish(&End::Close(code, refusal.reason)).await;
                return;
            }
        };
        if let Some((old_node, why)) = &accepted.replaced {
            tracing::info!(
                "session of gateway cluster {} node {old_node} replaced: {why}",
                hello.cluster_id
            );
        }
        tracing::info!(
            "gateway cluster {} connected: node {} term {} from {} (session {})",
            hello.cluster_id,
            hello.node_id,
            hello
                .term
                .map_or_else(|| "null".to_owned(), |t| t.to_string()),
            self.addr,
            accepted.session_id
        );
        // The frame limit goes with the acceptance, so the gateway keeps run results and
        // catalogs under it.
        let ok = autogate_proto::to_value(
            &HelloAccepted::new(accepted.session_id.clone()).with_max_frame_size(self.max),
        );
        let me = Me {
            cluster_id: hello.cluster_id.clone(),
            node_id: hello.node_id.clone(),
            session_id: accepted.session_id.clone(),
            term: hello.term,
            runs: SessionKind {
                dedup: hello.run_dedup,
                distributed: hello.distributed_execution,
            },
        };
        let end = match self.send_frame(Response::success(id, ok).into()).await {
            Ok(()) => self.live(conn, &me, &control, &mut rx).await,
            Err(end) => end,
        };
        // Record first (a no-op when the hub closed the session itself), then say goodbye.
        self.hub
            .closed(conn, &end.reason(), end.detail(), end.left(&self.limits))
            .await;
        self.hub.session_ended(&me.cluster_id, conn, me.runs).await;
        self.finish(&end).await;
    }

    async fn wait_for_hello(&mut self) -> Result<(Id, Hello), NoHello> {
        let deadline = tokio::time::sleep(HELLO_TIMEOUT);
        tokio::pin!(deadline);
        let token = self.token.clone();
        loop {
            let msg = tokio::select! {
                _ = &mut deadline => {
                    let end = End::Close(CLOSE_POLICY, format!("no hello within {} s", HELLO_TIMEOUT.as_secs()));
                    return Err(end.refusal(RefusalCategory::HelloTimeout));
                }
                _ = token.cancelled() => {
                    return Err(End::Close(CLOSE_GOING_AWAY, self.hub.shutdown_reason()).into());
                }
                msg = self.ws.next() => msg,
            };
            let msg = match msg {
                None => return Err(End::Gone("connection closed before hello".to_owned()).into()),
                Some(Err(e)) => {
                    return Err(match self.read_error(e) {
                        end @ End::TooBig(_) => end.refusal(RefusalCategory::BadHello),
                        end => end.into(),
                    })
                }
                Some(Ok(m)) => m,
            };
            self.rate_check()?;
            let text = match msg {
                Message::Text(t) => t,
                // The protocol carries JSON-RPC in text frames only; binary frames are ignored
                // (they still count against the rate limit).
                Message::Binary(_) => continue,
                Message::Close(_) => {
                    return Err(End::Gone("connection closed before hello".to_owned()).into())
                }
                // Pings are answered by the WebSocket layer.
                _ => continue,
            };
            let expected = "the first frame must be a hello request";
            let frame = match decode(&text, self.max) {
                Ok(f) => f,
                Err(e) => {
                    let end = self.answer_decode_error(e, expected).await;
                    return Err(end.refusal(RefusalCategory::BadHello));
                }
            };
            match frame {
                Frame::Request(req) if req.method == method::HELLO => {
                    match Hello::from_params(req.params.as_ref()) {
                        Ok(h) => return Ok((req.id, h)),
                        Err(err) => {
                            let reason = format!("bad hello: {}", err.message);
                            let _ = self
                                .send_frame(Response::error(Some(req.id), err).into())
                                .await;
                            return Err(
                                End::Close(CLOSE_POLICY, reason).refusal(RefusalCategory::BadHello)
                            );
                        }
                    }
                }
                other => {
                    let (id, what) = match &other {
                        Frame::Request(r) => {
                            (Some(r.id.clone()), format!("request {:?}", r.method))
                        }
                        Frame::Notification(n) => (None, format!("notification {:?}", n.method)),
                        Frame::Response(_) => (None, "a response".to_owned()),
                    };
                    let err = RpcError::invalid_request(format!("{expected}, got {what}"));
                    let _ = self.send_frame(Response::error(id, err).into()).await;
                    let end = End::Close(CLOSE_POLICY, format!("{expected}, got {what}"));
                    return Err(end.refusal(RefusalCategory::BadHello));
                }
            }
        }
    }

    /// Answers an undecodable frame before `hello`; returns how to close.
    async fn answer_decode_error(&mut self, e: DecodeError, expected: &str) -> End {
        if let DecodeError::TooLarge { .. } = e {
            return End::TooBig(e.to_string());
        }
        if let Some(resp) = e.to_response() {
            let _ = self.send_frame(resp.into()).await;
        }
        End::Close(CLOSE_POLICY, format!("{expected} ({e})"))
    }

    async fn live(
        &mut self,
        conn: autogate_proto::ConnId,
        me: &Me,
        control: &SessionControl,
        rx: &mut mpsc::Receiver<Outgoing>,
    ) -> End {
        let mut ticker = tokio::time::interval(self.limits.ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        // Pings sent and not yet answered: that many pongs answer the manager, not the gateway.
        let mut pings_out: u64 = 0;
        let token = self.token.clone();
        // Runs are sent from the hub's table, not queued per session: what one session did not
        // get to is there for the next.
        let mut runs = self.hub.runs().subscribe(&me.cluster_id);
        runs.mark_changed();
        loop {
            tokio::select! {
                changed = runs.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    if self.hub.live_conn(&me.cluster_id) != Some(conn) {
                        // Replaced: the live session sends them.
                        continue;
                    }
                    let Some(claim_rev) = self.hub.claim_rev(conn) else {
                        continue;
                    };
                    let unsent = self
                        .hub
                        .runs()
                        .take_unsent(&me.cluster_id, conn, &me.session_id, claim_rev)
                        .await;
                    for (run_id, params) in unsent {
                        let req = Request::new(run_id, method::SERVICE_RUN, Some(params));
                        if let Err(end) = self.send_frame(req.into()).await {
                            return end;
                        }
                    }
                }
                _ = control.closed() => {
                    let (code, reason) = control.reason();
                    return End::Close(code, reason);
                }
                _ = token.cancelled() => {
                    return End::Close(CLOSE_GOING_AWAY, self.hub.shutdown_reason());
                }
                _ = ticker.tick() => {
                    // Any frame counts as a sign of life, pongs included: a gateway busy
                    // sending run answers is alive even if a pong waits behind them.
                    if last_heard.elapsed() >= self.limits.silence_limit {
                        return End::Close(CLOSE_GOING_AWAY, self.limits.silent());
                    }
                    if let Err(end) = self.send(Message::Ping(Vec::new().into())).await {
                        return end;
                    }
                    pings_out += 1;
                }
                out = rx.recv() => {
                    let Some(out) = out else { continue };
                    let id = match self.hub.send_pending(&me.cluster_id, conn, out.reply, MAX_IN_FLIGHT) {
                        Ok(id) => id,
                        Err((e, reply)) => {
                            let _ = reply.send(Reply {
                                outcome: Err(RpcError::internal(e.to_string())),
                                node_id: me.node_id.clone(),
                                term: me.term,
                            });
                            continue;
                        }
                    };
                    let req = Request::new(id, out.method, out.params);
                    if let Err(end) = self.send_frame(req.into()).await {
                        return end;
                    }
                }
                msg = self.ws.next() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        None => return End::Lost(ConnectionLoss::Closed, None),
                        Some(Err(e)) => return self.read_error(e),
                        Some(Ok(m)) => m,
                    };
                    self.hub.metrics().frame("in");
                    // Whether the frame answers a request of the manager's: those are bounded by
                    // what the manager sent and do not count against the rate limit. Only a
                    // first answer qualifies, so repeating one does not get round the limit.
                    let mut answer = false;
                    let reply = match msg {
                        Message::Text(text) => match self.on_text(conn, me, &text) {
                            Handled::Reply(r) => Some(r),
                            Handled::Done => None,
                            Handled::Answered => {
                                answer = true;
                                None
                            }
                            Handled::RunAnswer(run_id, outcome) => {
                                // The answer is written to the store before its callers hear it.
                                let settled = self
                                    .hub
                                    .runs()
                                    .settle(&me.cluster_id, &run_id, outcome, &me.node_id, me.term)
                                    .await;
                                if !settled {
                                    tracing::debug!(
                                        "answer from {} to run {run_id}, which is answered already (or unknown)",
                                        self.addr
                                    );
                                }
                                answer = settled;
                                None
                            }
                        },
                        Message::Pong(_) if pings_out > 0 => {
                            pings_out -= 1;
                            answer = true;
                            None
                        }
                        Message::Binary(_) => {
                            tracing::debug!("ignoring a binary frame from {}", self.addr);
                            None
                        }
                        Message::Close(frame) => {
                            let why = match frame {
                                Some(f) if !f.reason.is_empty() => format!(
                                    "closed by the gateway ({}: {})",
                                    u16::from(f.code),
                                    f.reason
                                ),
                                Some(f) => format!("closed by the gateway ({})", u16::from(f.code)),
                                None => "closed by the gateway".to_owned(),
                            };
                            return End::Gone(why);
                        }
                        _ => None,
                    };
                    if !answer {
                        if let Err(end) = self.charge() {
                            return end;
                        }
                    }
                    if let Some(resp) = reply {
                        if let Err(end) = self.send_frame(resp.into()).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Handles one text frame of a live session; returns the response to send, if any.
    fn on_text(&self, conn: autogate_proto::ConnId, me: &Me, text: &str) -> Handled {
        let frame = match decode(text, self.max) {
            Ok(f) => f,
            Err(e) => {
                if e.to_response().is_none() {
                    tracing::debug!("ignoring malformed frame from {}: {e}", self.addr);
                }
                return e.to_response().map_or(Handled::Done, Handled::Reply);
            }
        };
        match frame {
            Frame::Request(req) => Handled::Reply(match req.method.as_str() {
                method::PING => Response::success(req.id, req.params.unwrap_or_else(|| json!({}))),
                method::HELLO => Response::error(
                    Some(req.id),
                    RpcError::invalid_request("hello was already accepted on this session"),
                ),
                other => Response::error(Some(req.id), RpcError::method_not_found(other)),
            }),
            Frame::Notification(n) => {
                match n.method.as_str() {
                    method::NODES_UPDATE => match n.parse_params::<NodesUpdate>() {
                        Ok(update) => {
                            self.hub.nodes_update(conn, update.nodes, &update.departed);
                        }
                        Err(e) => tracing::warn!(
                            "ignoring bad nodes.update from {}: {}",
                            self.addr,
                            e.message
                        ),
                    },
                    method::SERVICES_UPDATE => self.on_services_update(me, &n),
                    other => tracing::debug!("ignoring notification {other:?} from {}", self.addr),
                }
                Handled::Done
            }
            Frame::Response(resp) => {
                match resp.id {
                    Some(Id::Number(n)) => {
                        if self
                            .hub
                            .answer(&me.cluster_id, n, resp.outcome, &me.node_id, me.term)
                        {
                            return Handled::Answered;
                        }
                        tracing::debug!(
                            "response from {} to request id {n}, which nobody waits for (answered already, or past its deadline)",
                            self.addr
                        )
                    }
                    Some(Id::String(run_id)) => return Handled::RunAnswer(run_id, resp.outcome),
                    None => {
                        tracing::debug!("response from {} without an id", self.addr)
                    }
                }
                Handled::Done
            }
        }
    }
}

/// What a text frame of a live session calls for.
enum Handled {
    /// Send this response.
    Reply(Response),
    /// The answer of a run: settle it.
    RunAnswer(String, Result<serde_json::Value, RpcError>),
    /// The first answer to a request of the API the manager sent.
    Answered,
    /// Nothing more.
    Done,
}

/// Who a live session is, for what it receives.
struct Me {
    cluster_id: String,
    node_id: String,
    session_id: String,
    term: Option<u64>,
    /// What its gateway does with runs (from `hello`).
    runs: SessionKind,
}

impl Session {
    /// A `services.update`: checked, then kept as the cluster's catalog if this session is still
    /// the cluster's live one (a replaced session's late update must not overwrite its
    /// successor's).
    fn on_services_update(&self, me: &Me, n: &autogate_proto::Notification) {
        let update = match n
            .parse_params::<ServicesUpdate>()
            .map_err(|e| e.message)
            .and_then(|u| u.validate().map(|()| u))
        {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(
                    "ignoring bad services.update from cluster {} ({}): {e}",
                    me.cluster_id,
                    self.addr
                );
                return;
            }
        };
        let live = self.hub.live(&me.cluster_id);
        if live.map(|l| l.session_id) != Some(me.session_id.clone()) {
            return;
        }
        let total = update.total.unwrap_or(0).max(update.services.len());
        tracing::info!(
            "gateway cluster {} announced {total} service(s)",
            me.cluster_id
        );
        self.hub.registry().set_catalog(
            &me.cluster_id,
            Catalog {
                services: update.services,
                updated_at: now_rfc3339(),
                node_id: me.node_id.clone(),
                session_id: me.session_id.clone(),
                truncated: update.truncated,
                total,
            },
        );
        self.hub
            .events()
            .send(crate::web::EventKind::ServicesChanged, &me.cluster_id);
        let hub = self.hub.clone();
        let cluster = me.cluster_id.clone();
        tokio::spawn(async move { hub.registry().persist_catalog(&cluster).await });
    }
}

/// Close code the manager uses when replacing a session (for documentation and tests).
pub const CLOSE_SUPERSEDED: u16 = CLOSE_NORMAL;
