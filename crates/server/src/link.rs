//! The commander link: the one connection of a cluster to its manager, held by the active core
//! node (or the only node, without HA).
//!
//! It dials `wss://<host:port>/ws` with the node's own client certificate, sends `hello` (with
//! the fencing `term` when HA is on) and then answers the manager's requests until the
//! connection drops or the link is cancelled (shutdown, or loss of leadership). It reconnects
//! forever, one manager of the `hosts` list at a time and the next one on failure, with capped
//! exponential back-off and jitter. Service runs, the catalog and its `services.update`
//! announcements are in [`crate::services`]. The log lines are the product family's, word for
//! word:
//!
//! ```text
//! INF creating connection to commander at 'manager.example.com:443'
//! INF attempting to connect to wss://manager.example.com:443/ws
//! INF connected to commander at 10.0.0.5:443
//! ```
//!
//! The membership it sends (`hello`, then `nodes.update` on every change) names each node by
//! its id and its stable name ([`node_name`]), and lists the nodes that left cleanly a short
//! while ago ([`announce_departure`]), so the manager can show a node that is gone as *stopped*
//! rather than *lost*, and recognise it when it comes back under a new id.
//!
//! While attempts fail, each failure is one line that names the next attempt and its delay:
//!
//! ```text
//! WRN connection to commander at manager.example.com:443 failed: TCP connect: Connection refused (os error 111); attempting to connect to wss://manager.example.com:443/ws in 143 ms
//! ```
//!
//! Behind an HTTP proxy ([`crate::proxy`]) the TCP stream is a `CONNECT` tunnel and TLS runs
//! through it, end to end with the manager; a proxy that refuses is such a failure, with its
//! status line (`proxy http://proxy:3128 refused CONNECT manager.example.com:443: HTTP/1.1 407
//! Proxy Authentication Required`), retried with the same back-off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autogate_config::{Config, HostPort};
use autogate_proto::{
    decode, encode, method, Departed, Frame, Hello, HelloAccepted, NodeInfo, NodesUpdate, Request,
    Response, RpcError, DEFAULT_MAX_FRAME_LEN,
};
use autogate_runtime::NodeId;
use autogate_store::Store;
use autogate_tls::rustls::pki_types::ServerName;
use autogate_tls::rustls::ClientConfig;
use autogate_tls::{client_config, load_identity, Roots, TlsError};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Proxy, ProxyConfigError};
use crate::services::SessionServices;
use crate::Node;

/// Time allowed for TCP + TLS + WebSocket handshakes of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the manager has to answer `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay (before jitter); the first retry happens within 250 ms.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// How long a closing link waits for the manager to answer its close frame.
const CLOSE_WAIT: Duration = Duration::from_millis(300);
/// How often membership is compared with what the manager was last told.
const NODES_EVERY: Duration = Duration::from_millis(250);
/// Frames waiting to be written that were produced off the read loop (run results, catalog
/// updates); their producers wait when it is full.
const OUTBOX: usize = 128;

/// Problems with the link's own configuration: usage errors found before anything binds.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect.certificate_file / connect.private_key_file: {0}")]
    Identity(TlsError),
    #[error("manager TLS settings: {0}")]
    Tls(TlsError),
    #[error("manager link proxy: {0}")]
    Proxy(ProxyConfigError),
}

/// Everything needed to dial the manager, prepared once at start-up.
#[derive(Clone)]
pub struct LinkSettings {
    pub hosts: Vec<HostPort>,
    pub tls: Arc<ClientConfig>,
    pub max_backoff: Duration,
    /// With HA: the election's requests to dial at once before it hands over for lack of the
    /// manager (see [`autogate_ha::HaHandle::manager_retries`]).
    pub retries: Option<tokio::sync::watch::Receiver<u64>>,
    /// WebSocket ping period (`connect.link_ping_interval`).
    pub ping_interval: Duration,
    /// A session nothing arrived on for this long is dropped and re-dialled
    /// (`connect.link_dead_after`).
    pub dead_after: Duration,
    /// The HTTP proxy the link goes through (`connect.proxy_url`, else `HTTPS_PROXY`).
    pub proxy: Option<Proxy>,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("hosts", &self.hosts)
            .field("max_backoff", &self.max_backoff)
            .field("ping_interval", &self.ping_interval)
            .field("dead_after", &self.dead_after)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl LinkSettings {
    /// `None` when the link is disabled or no manager is configured.
    pub fn from_config(config: &Config) -> Result<Option<LinkSettings>, LinkError> {
        let c = &config.connect;
        if !c.enabled || c.hosts.is_empty() {
            return Ok(None);
        }
        let identity = match (&c.certificate_file, &c.private_key_file) {
            (Some(cert), Some(key)) => Some(load_identity(cert, key).map_err(LinkError::Identity)?),
            _ => None,
        };
        let roots = match &config.application.ca_certificate_file {
            Some(p) => Roots::File(p.clone()),
            None => Roots::System,
        };
        if c.insecure_tls {
            tracing::warn!(
                "connect.insecure_tls is true: the manager's certificate is NOT verified"
            );
        }
        let tls = client_config(roots, identity, c.insecure_tls).map_err(LinkError::Tls)?;
        let proxy = Proxy::resolve(c, |name| std::env::var(name).ok()).map_err(LinkError::Proxy)?;
        if let Some(p) = &proxy {
            let direct: Vec<String> = c
                .hosts
                .iter()
                .filter(|h| !p.applies_to(h))
                .map(ToString::to_string)
                .collect();
            // Shown without credentials; the hosts it does not apply to are named, so an
            // operator sees at once why a manager is dialled directly.
            if direct.is_empty() {
                tracing::info!(
                    "manager link through proxy {} (from {})",
                    p.shown(),
                    p.source()
                );
            } else {
                tracing::info!(
                    "manager link through proxy {} (from {}), except to {} (NO_PROXY, or a local address)",
                    p.shown(),
                    p.source(),
                    direct.join(", ")
                );
            }
        }
        Ok(Some(LinkSettings {
            hosts: c.hosts.clone(),
            tls,
            max_backoff: c.reconnect_max_backoff,
            retries: None,
            ping_interval: c.link_ping_interval,
            dead_after: c.link_dead_after,
            proxy,
        }))
    }
}

/// Capped exponential back-off with jitter: attempt n waits a random time in
/// [d/2, d] where d = min(cap, FIRST_RETRY · 2^(n-1)). Pure, so its bounds are unit-tested.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            failures: 0,
            first,
            cap,
        }
    }

    /// Delay before the next attempt; `jitter` in [0, 1).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let full = self
            .first
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the rest of the node (health API, HA) can see of the link.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    pub connected: bool,
    /// The manager endpoint of the live session (`ip:port`).
    pub address: Option<String>,
    pub term: Option<u64>,
    pub session_id: Option<String>,
    /// When the last connection attempt failed, and why (cleared on success).
    pub last_error: Option<String>,
    #[serde(skip)]
    pub failing_since: Option<Instant>,
    /// The latest retry request (see [`LinkSettings::retries`]) under which an attempt began
    /// and failed.
    #[serde(skip)]
    pub retry_failed: Option<u64>,
}

/// Shared, cheaply cloned view of the link state.
#[derive(Debug, Clone, Default)]
pub struct LinkStatus(Arc<Mutex<LinkState>>);

impl LinkStatus {
    pub fn get(&self) -> LinkState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Why one session ended.
enum Ended {
    Cancelled,
    Lost(String),
}

/// Hold the manager connection until `token` is cancelled. `term` is the fencing token of this
/// leadership (None without HA); `nodes` describes the cluster for `hello`.
pub async fn run(
    node: Node,
    settings: LinkSettings,
    term: Option<u64>,
    status: LinkStatus,
    token: CancellationToken,
) {
    let first = &settings.hosts[0];
    tracing::info!("creating connection to commander at '{first}'");
    let mut backoff = Backoff::new(FIRST_RETRY, settings.max_backoff);
    let mut index = 0usize;
    // The family's line opens each series of attempts; while they fail, each failure is one
    // line that also names the next attempt, so a long outage costs one line per attempt.
    tracing::info!("attempting to connect to wss://{first}/ws");
    let mut retries = settings.retries.clone();
    if let Some(r) = retries.as_mut() {
        r.borrow_and_update();
    }
    loop {
        let host = &settings.hosts[index % settings.hosts.len()];
        // The retry request this attempt answers: a failure counts against it only if the
        // attempt began after it was asked for. Seen from here on, so only a later request
        // interrupts the attempt.
        let under = retries.as_mut().map_or(0, |r| *r.borrow_and_update());
        // `session` watches the token itself: once up, it must finish the closing handshake
        // rather than be dropped mid-session.
        let attempt = session(&node, &settings, host, term, &status, &token, &mut retries).await;
        match attempt {
            Ok(Ended::Cancelled) => break,
            Ok(Ended::Lost(reason)) => {
                // A session that was up: retry the same manager at once.
                tracing::warn!(
                    "connection to commander at {host} lost: {reason}; attempting to connect to wss://{host}/ws again"
                );
                backoff.reset();
                status.update(|s| {
                    s.connected = false;
                    s.address = None;
                    s.session_id = None;
                    s.last_error = Some(reason);
                    s.failing_since.get_or_insert_with(Instant::now);
                });
            }
            Err(reason) => {
                index += 1;
                status.update(|s| {
                    s.connected = false;
                    s.last_error = Some(reason.clone());
                    s.failing_since.get_or_insert_with(Instant::now);
                    if under > 0 {
                        s.retry_failed = Some(under);
                    }
                });
                let next = &settings.hosts[index % settings.hosts.len()];
                // Asked to retry while this attempt was under way: it proves nothing about
                // now, so dial again at once.
                if retries
                    .as_mut()
                    .is_some_and(|r| *r.borrow_and_update() != under)
                {
                    backoff.reset();
                    tracing::warn!(
                        "connection to commander at {host} failed: {reason}; attempting to connect to wss://{next}/ws again at once, before handing over"
                    );
                    continue;
                }
                let delay = backoff.next_delay(rand::random::<f64>());
                tracing::warn!(
                    "connection to commander at {host} failed: {reason}; attempting to connect to wss://{next}/ws in {} ms",
                    delay.as_millis()
                );
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                    () = retry_asked(&mut retries) => {
                        // Before the election hands the role over for lack of the manager, one
                        // attempt of our own must have failed since a standby reached it.
                        backoff.reset();
                        tracing::info!(
                            "attempting to connect to wss://{next}/ws at once, before handing over"
                        );
                    }
                }
            }
        }
    }
    status.update(|s| {
        s.connected = false;
        s.address = None;
        s.session_id = None;
    });
}

/// Resolves when the election asks for an attempt at once; never without HA.
async fn retry_asked(retries: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let asked = match retries {
        Some(r) => r.changed().await.is_ok(),
        None => false,
    };
    if !asked {
        std::future::pending::<()>().await;
    }
}

/// Could this node reach one of the managers right now? A TCP connect and TLS handshake with
/// this node's certificate — what a standby checks on a slow timer, without opening a session
/// (the manager allows one session per cluster).
pub async fn check_reachable(settings: &LinkSettings) -> bool {
    for host in &settings.hosts {
        let attempt = async {
            let tcp = connect_tcp(settings, host).await.ok()?;
            let name = ServerName::try_from(host.host.clone()).ok()?;
            TlsConnector::from(settings.tls.clone())
                .connect(name, tcp)
                .await
                .ok()
        };
        if let Ok(Some(_tls)) = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            return true;
        }
    }
    false
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The TCP stream TLS runs over: to the manager, or a tunnel to it through the proxy.
async fn connect_tcp(settings: &LinkSettings, host: &HostPort) -> Result<TcpStream, String> {
    match &settings.proxy {
        Some(proxy) if proxy.applies_to(host) => {
            proxy.tunnel(host).await.map_err(|e| e.to_string())
        }
        _ => {
            let tcp = TcpStream::connect((host.host.as_str(), host.port))
                .await
                .map_err(|e| format!("TCP connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
    }
}

/// The manager end of a session as logs and the health API show it: its address, or through a
/// proxy (whose address is all TCP knows) the manager's name and the proxy.
struct Peer {
    address: String,
    via: Option<String>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.via {
            Some(proxy) => write!(f, "{} through proxy {proxy}", self.address),
            None => f.write_str(&self.address),
        }
    }
}

async fn dial(settings: &LinkSettings, host: &HostPort) -> Result<(Ws, Peer), String> {
    let tcp = connect_tcp(settings, host).await?;
    let peer = match settings.proxy.as_ref().filter(|p| p.applies_to(host)) {
        Some(proxy) => Peer {
            address: host.to_string(),
            via: Some(proxy.shown()),
        },
        None => {
            let addr: SocketAddr = tcp.peer_addr().map_err(|e| format!("TCP connect: {e}"))?;
            Peer {
                address: addr.to_string(),
                via: None,
            }
        }
    };
    let name = ServerName::try_from(host.host.clone())
        .map_err(|e| format!("invalid manager host name {:?}: {e}", host.host))?;
    let tls = TlsConnector::from(settings.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let url = format!("wss://{host}/ws");
    let config = WebSocketConfig::default()
        .max_message_size(Some(DEFAULT_MAX_FRAME_LEN))
        .max_frame_size(Some(DEFAULT_MAX_FRAME_LEN));
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, tls, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok((ws, peer))
}

/// One connection: dial, hello, serve. `Err` = it never got up (counts as a failed attempt).
///
/// A retry request of the election abandons an attempt that is not up yet: one that hangs on a
/// silent path would otherwise hold up the hand-over by its whole timeout, and one begun
/// before the request proves nothing about the manager now anyway.
async fn session(
    node: &Node,
    settings: &LinkSettings,
    host: &HostPort,
    term: Option<u64>,
    status: &LinkStatus,
    token: &CancellationToken,
    retries: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<Ended, String> {
    let started = Instant::now();
    let abandoned = |started: Instant| {
        format!(
            "no answer after {} ms, abandoned",
            started.elapsed().as_millis()
        )
    };
    let (mut ws, peer) = tokio::select! {
        _ = token.cancelled() => return Ok(Ended::Cancelled),
        () = retry_asked(retries) => return Err(abandoned(started)),
        r = tokio::time::timeout(CONNECT_TIMEOUT, dial(settings, host)) => {
            r.map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))??
        }
    };

    let membership = tokio::select! {
        _ = token.cancelled() => return Ok(Ended::Cancelled),
        m = membership(node) => m,
    };
    let hello = Hello {
        cluster_id: node.config.application.cluster_id.clone(),
        node_id: node.id.to_string(),
        term,
        version: autogate_runtime::VERSION.to_owned(),
        nodes: membership.nodes.clone(),
        distributed_execution: node.jobs.enabled(),
        departed: membership.departed.clone(),
        // A copy of a run sent again is answered from what happened: from its record when this
        // node runs services itself (`run_records`), from its job (whose id is the run's) with
        // distributed execution.
        run_dedup: true,
    };
    let mut announced = membership;
    ws.send(Message::text(encode(&Frame::Request(hello.to_request(0)))))
        .await
        .map_err(|e| format!("sending hello: {e}"))?;
    let accepted = tokio::select! {
        _ = token.cancelled() => return Ok(Ended::Cancelled),
        () = retry_asked(retries) => return Err(abandoned(started)),
        r = tokio::time::timeout(HELLO_TIMEOUT, await_hello(&mut ws)) => {
            r.map_err(|_| format!("the manager did not answer hello within {HELLO_TIMEOUT:?}"))??
        }
    };

    tracing::info!("connected to commander at {peer}");
    status.update(|s| {
        *s = LinkState {
            connected: true,
            address: Some(peer.address.clone()),
            term,
            session_id: Some(accepted.session_id.clone()),
            last_error: None,
            failing_since: None,
            retry_failed: None,
        }
    });
    let limit = accepted.peer_frame_limit();
    let limits = Limits {
        frame: limit,
        ping_interval: settings.ping_interval,
        dead_after: settings.dead_after,
    };
    serve(node, &mut ws, &mut announced, token, limits).await
}

async fn await_hello(ws: &mut Ws) -> Result<HelloAccepted, String> {
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| format!("waiting for the hello answer: {e}"))? {
            Message::Text(text) => match decode(text.as_str(), DEFAULT_MAX_FRAME_LEN) {
                Ok(Frame::Response(r)) => {
                    return match r.outcome {
                        Ok(v) => serde_json::from_value::<HelloAccepted>(v)
                            .map_err(|e| format!("unexpected hello answer: {e}")),
                        Err(e) => {
                            tracing::error!("commander refused this node: {}", e.message);
                            Err(format!("refused: {}", e.message))
                        }
                    };
                }
                Ok(other) => {
                    return Err(format!(
                        "expected the answer to hello, got {}",
                        encode(&other)
                    ))
                }
                Err(e) => return Err(format!("bad frame from the manager: {e}")),
            },
            Message::Close(frame) => {
                return Err(match frame {
                    Some(f) => format!("closed by the manager: {}", f.reason),
                    None => "closed by the manager".to_owned(),
                })
            }
            _ => {}
        }
    }
    Err("connection closed before the hello answer".to_owned())
}

/// The limits of one session.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The manager's frame limit.
    frame: usize,
    /// How often the link pings.
    ping_interval: Duration,
    /// The session is declared dead when nothing (no frame, no pong) arrived for this long,
    /// checked every `ping_interval`, so a blackholed link is noticed within their sum.
    dead_after: Duration,
}

/// Answer the manager until the connection ends or the link is cancelled.
async fn serve(
    node: &Node,
    ws: &mut Ws,
    announced: &mut Membership,
    token: &CancellationToken,
    limits: Limits,
) -> Result<Ended, String> {
    let limit = limits.frame;
    // Runs and the catalog watch of this session stop when it ends, however it ends, and the
    // session waits for their tasks before the link dials again or steps down.
    let session = token.child_token();
    let _session_end = session.clone().drop_guard();
    let (out_tx, mut outbox) = mpsc::channel::<String>(OUTBOX);
    let services = SessionServices::new(node.clone(), limit, out_tx, session);
    services.start_announcing();
    let ended = serve_session(node, ws, announced, token, limits, &services, &mut outbox).await;
    if !services.finish(SESSION_TASKS_GRACE).await {
        tracing::warn!(
            "service runs of the ended session still running after {SESSION_TASKS_GRACE:?}; not waiting for them"
        );
    }
    ended
}

/// Reads the membership every [`NODES_EVERY`] until the returned receiver is dropped or `stop`
/// is cancelled; the receiver sees each reading (starting from `first`).
fn watch_membership(
    node: &Node,
    first: Membership,
    stop: CancellationToken,
) -> tokio::sync::watch::Receiver<Membership> {
    let (tx, rx) = tokio::sync::watch::channel(first);
    let node = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NODES_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tokio::select! {
                _ = stop.cancelled() => return,
                () = tx.closed() => return,
                m = async {
                    tick.tick().await;
                    membership(&node).await
                } => m,
            };
            if tx.send(now).is_err() {
                return;
            }
        }
    });
    rx
}

/// How long an ended session waits for its cancelled runs to stop.
const SESSION_TASKS_GRACE: Duration = Duration::from_secs(5);

/// The read/write loop of [`serve`].
async fn serve_session(
    node: &Node,
    ws: &mut Ws,
    announced: &mut Membership,
    token: &CancellationToken,
    limits: Limits,
    services: &SessionServices,
    outbox: &mut mpsc::Receiver<String>,
) -> Result<Ended, String> {
    let limit = limits.frame;
    // Outcomes of jobs that ended while no session was up (or that a new active node adopted)
    // go first, right after hello.
    if let Err(e) = deliver_jobs(node, ws, limit).await {
        return Ok(Ended::Lost(e));
    }
    // Membership changes (joins, leaves, role changes) reach the manager within this period;
    // comparing an in-memory snapshot costs nothing when nothing changed. Reading it takes store
    // round trips, so it is read beside this loop: a slow store must hold up neither a
    // step-down nor the pongs this loop's reads send, or the manager would declare a busy link
    // dead after `silence_limit`.
    let mut nodes = watch_membership(node, announced.clone(), token.child_token());
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                let _ = ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "node stepping down".into(),
                }))).await;
                // Finish the closing handshake so the manager records a clean close with our
                // reason rather than a dropped connection; bounded, it must not hold up a
                // shutdown.
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
                return Ok(Ended::Cancelled);
            }
            _ = node.jobs.undelivered_ready() => {
                if let Err(e) = deliver_jobs(node, ws, limit).await {
                    return Ok(Ended::Lost(e));
                }
            }
            Ok(()) = nodes.changed() => {
                let now = nodes.borrow_and_update().clone();
                if now != *announced {
                    let update = NodesUpdate {
                        nodes: now.nodes.clone(),
                        departed: now.departed.clone(),
                    };
                    let text = encode(&Frame::Notification(update.to_notification()));
                    if let Err(e) = ws.send(Message::text(text)).await {
                        return Ok(Ended::Lost(format!("sending nodes.update: {e}")));
                    }
                    *announced = now;
                }
            }
            _ = ping.tick() => {
                // Any frame counts, pongs included: the manager answers every ping, so a link
                // that carried nothing for this long is gone even if TCP has not noticed.
                if last_seen.elapsed() >= limits.dead_after {
                    return Ok(Ended::Lost(format!(
                        "no frame from the manager for {:?}",
                        limits.dead_after
                    )));
                }
                if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                    return Ok(Ended::Lost(format!("sending ping: {e}")));
                }
            }
            Some(text) = outbox.recv() => {
                if let Err(e) = ws.send(Message::text(text)).await {
                    return Ok(Ended::Lost(format!("sending to the manager: {e}")));
                }
            }
            msg = ws.next() => {
                let Some(msg) = msg else { return Ok(Ended::Lost("connection closed".into())) };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => return Ok(Ended::Lost(e.to_string())),
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => {
                        if let Some(reply) = answer(node, services, text.as_str()).await {
                            if let Err(e) = ws.send(Message::text(reply)).await {
                                return Ok(Ended::Lost(format!("sending a response: {e}")));
                            }
                        }
                    }
                    Message::Close(frame) => {
                        let reason = frame
                            .map(|f| format!("closed by the manager: {}", f.reason))
                            .unwrap_or_else(|| "closed by the manager".into());
                        return Ok(Ended::Lost(reason));
                    }
                    Message::Binary(_) => {
                        tracing::debug!("ignoring a binary frame from the manager");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The reply to one text frame, if it needs one now (service requests answer later, through
/// the outbox).
async fn answer(node: &Node, services: &SessionServices, text: &str) -> Option<String> {
    match decode(text, DEFAULT_MAX_FRAME_LEN) {
        Ok(Frame::Request(req)) => {
            if services.dispatch(&req) {
                return None;
            }
            let outcome = handle(node, &req).await;
            let resp = match outcome {
                Ok(v) => Response::success(req.id, v),
                Err(e) => Response::error(Some(req.id), e),
            };
            Some(encode(&Frame::Response(resp)))
        }
        Ok(Frame::Notification(n)) => {
            tracing::debug!("notification {} from the manager", n.method);
            None
        }
        Ok(Frame::Response(_)) => None,
        Err(e) => e.to_response().map(|r| encode(&Frame::Response(r))),
    }
}

async fn handle(node: &Node, req: &Request) -> Result<Value, RpcError> {
    match req.method.as_str() {
        // The family's manager sends `{"reply": "Health test from GatewayManager"}` and expects
        // its payload back.
        method::PING => Ok(req
            .params
            .clone()
            .unwrap_or_else(|| json!({"reply": "pong"}))),
        method::CLUSTER_HEALTH => Ok(cluster_health(node).await),
        other => Err(RpcError::method_not_found(other)),
    }
}

async fn cluster_health(node: &Node) -> Value {
    let store = node.store.status().await;
    json!({
        "cluster_id": node.config.application.cluster_id,
        "node_id": node.id.as_str(),
        "healthy": store.is_ok(),
        "store": {
            "backend": node.store.backend(),
            "healthy": store.is_ok(),
            "error": store.err().map(|e| e.to_string()),
        },
        "nodes": cluster_view(node).await,
    })
}

/// Sends the outcomes of the manager's jobs that wait for a session, each as the answer to its
/// `service.run` (same JSON-RPC id), and records them delivered once written. What could not be
/// sent waits for the next session.
async fn deliver_jobs(node: &Node, ws: &mut Ws, limit: usize) -> Result<(), String> {
    let mut items = node.jobs.take_undelivered().into_iter();
    while let Some(done) = items.next() {
        let Some(text) = crate::services::job_reply(&done, limit) else {
            continue;
        };
        if let Err(e) = ws.send(Message::text(text)).await {
            let mut rest = vec![done];
            rest.extend(items);
            node.jobs.give_back(rest);
            return Err(format!("sending a job's outcome: {e}"));
        }
        node.jobs.delivered(&done.record.id);
        tracing::debug!(job = %done.record.id, "sent the outcome of job {} to the manager", done.record.id);
    }
    Ok(())
}

/// What the manager is told about the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The nodes now ([`cluster_view`]).
    pub nodes: Vec<NodeInfo>,
    /// Nodes that left cleanly a short while ago and are no longer among `nodes`.
    pub departed: Vec<Departed>,
}

/// The cluster's nodes now and the recent clean departures. The departures are read after the
/// nodes: a node writes its departure before its records go, so a node missing from `nodes`
/// because it stopped cleanly is in `departed` in the same reading.
pub async fn membership(node: &Node) -> Membership {
    let nodes = cluster_view(node).await;
    let departed = departures(&*node.store, &node.config.application.cluster_id)
        .await
        .into_iter()
        .filter(|d| !nodes.iter().any(|n| n.node_id == d.node_id))
        .collect();
    Membership { nodes, departed }
}

/// The cluster as the manager should show it: the core nodes, then the runners registered in
/// the store with their load (a store that cannot be read leaves the runners out until it can).
/// Each node carries its stable name when it published one.
pub async fn cluster_view(node: &Node) -> Vec<NodeInfo> {
    let mut nodes = cluster_nodes(node);
    let cluster = &node.config.application.cluster_id;
    // The election's snapshot has no names: they are in the same records in the store. Both
    // reads at once, so a slow store costs one round trip here, not two.
    let (names, runners) = tokio::join!(
        async {
            match node.ha {
                Some(_) => core_names(&*node.store, cluster).await,
                None => Default::default(),
            }
        },
        autogate_jobs::list_runners(&*node.store, cluster)
    );
    for n in nodes.iter_mut().filter(|n| n.name.is_none()) {
        n.name = names.get(&n.node_id).cloned();
    }
    if let Ok(mut runners) = runners {
        runners.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes.extend(runners.into_iter().map(|r| NodeInfo {
            node_id: r.node_id,
            name: r.name,
            role: autogate_proto::Role::Runner,
            is_primary: false,
            address: Some(r.host),
            manager_reachable: None,
            running: Some(r.running),
            capacity: Some(r.capacity),
        }));
    }
    nodes
}

/// The cluster's core nodes as the manager should show them: from the election's node records
/// with HA, else just this node.
pub fn cluster_nodes(node: &Node) -> Vec<NodeInfo> {
    let Some(ha) = &node.ha else {
        return vec![self_info(node)];
    };
    let mut nodes: Vec<NodeInfo> = ha
        .nodes()
        .into_iter()
        .map(|r| NodeInfo {
            role: match r.role {
                autogate_ha::Role::Active => autogate_proto::Role::Active,
                autogate_ha::Role::Standby => autogate_proto::Role::Standby,
                autogate_ha::Role::Paused => autogate_proto::Role::Paused,
            },
            // This node's own name is known here; the others' come from their records.
            name: (r.node_id == node.id.as_str()).then(|| node.id.name().to_owned()),
            node_id: r.node_id,
            is_primary: r.is_primary,
            address: r.address,
            manager_reachable: Some(r.manager_reachable),
            running: None,
            capacity: None,
        })
        .collect();
    // The link runs on the active node: never announce a cluster without it, even before its
    // own record has been read back from the store.
    if let Some(me) = nodes.iter_mut().find(|n| n.node_id == node.id.as_str()) {
        me.role = autogate_proto::Role::Active;
        me.manager_reachable = Some(true);
    } else {
        nodes.push(self_info(node));
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    nodes
}

/// This node as the manager sees it: only the node holding the link describes itself, and it
/// is the active one.
pub fn self_info(node: &Node) -> NodeInfo {
    NodeInfo {
        node_id: node.id.to_string(),
        name: Some(node.id.name().to_owned()),
        role: autogate_proto::Role::Active,
        is_primary: node.config.connect.is_primary,
        address: node
            .config
            .connect
            .advertise_address
            .as_ref()
            .map(ToString::to_string),
        manager_reachable: Some(true),
        running: None,
        capacity: None,
    }
}

/// The names the core nodes of `cluster_id` published in their node records (id → name). A
/// record without a name (an older node) or that cannot be read is left out: the node is then
/// shown by its id.
pub(crate) async fn core_names(
    store: &dyn Store,
    cluster_id: &str,
) -> std::collections::BTreeMap<String, String> {
    // Only the name is read: the rest of the record is the election's business.
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(default)]
        name: Option<String>,
    }
    let prefix = autogate_ha::nodes_prefix(cluster_id);
    let Ok(records) = store.list(&prefix).await else {
        return Default::default();
    };
    records
        .into_iter()
        .filter_map(|kv| {
            let id = kv.key.strip_prefix(&prefix)?.to_owned();
            let name = serde_json::from_slice::<Named>(&kv.value).ok()?.name?;
            Some((id, name))
        })
        .collect()
}

/// How long a clean departure stays announced: long enough for the active node — or the one
/// that takes over when the active node itself left — to pass it on to the manager.
pub const DEPARTED_TTL: Duration = Duration::from_secs(120);

/// How long a stopping node tries to write its departure: a store that does not answer must
/// not hold up the stop (the manager then shows the node as lost).
const DEPARTURE_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// `/autogate/<cluster>/departed/`: one key per node that stopped cleanly, bound to a lease of
/// [`DEPARTED_TTL`], so the keys clear themselves.
fn departed_prefix(cluster_id: &str) -> String {
    format!("{}departed/", autogate_store::cluster_prefix(cluster_id))
}

/// Says in the store that `node` is stopping cleanly, before it leaves the cluster (its
/// election or runner records go when it revokes its lease): the active node reports it to the
/// manager, which then shows the node as *stopped*, not *lost*. Best effort, bounded by a short
/// limit.
pub async fn announce_departure(store: &dyn Store, cluster_id: &str, node: &NodeId) {
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let record = Departed {
        node_id: node.as_str().to_owned(),
        name: Some(node.name().to_owned()),
        at,
    };
    let key = format!("{}{}", departed_prefix(cluster_id), node.as_str());
    let write = async {
        let lease = store.grant(DEPARTED_TTL).await?;
        let value = serde_json::to_vec(&record).unwrap_or_default();
        store.put(&key, value, Some(lease)).await
    };
    match tokio::time::timeout(DEPARTURE_WRITE_LIMIT, write).await {
        Ok(Ok(_)) => tracing::debug!("announced this node's departure at {key}"),
        Ok(Err(e)) => tracing::debug!("cannot announce this node's departure: {e}"),
        Err(_) => tracing::debug!(
            "cannot announce this node's departure: no answer within {DEPARTURE_WRITE_LIMIT:?}"
        ),
    }
}

/// The departures announced in the last [`DEPARTED_TTL`] (none when the store cannot be read).
async fn departures(store: &dyn Store, cluster_id: &str) -> Vec<Departed> {
    let Ok(kvs) = store.list(&departed_prefix(cluster_id)).await else {
        return Vec::new();
    };
    let mut list: Vec<Departed> = kvs
        .into_iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    list
}

/// The node's stable name: `[application] node_name`, else the common name of the certificate
/// it presents to the manager (`connect.certificate_file`, the name the manager's operator
/// registered it under), else the host name.
pub fn node_name(config: &Config) -> String {
    let configured = config
        .entries()
        .into_iter()
        .find(|e| e.section == "application" && e.key == "node_name")
        .and_then(|e| autogate_runtime::identity::clean_name(&e.value));
    if let Some(name) = configured {
        return name;
    }
    let cn = config
        .connect
        .certificate_file
        .as_deref()
        .and_then(certificate_cn);
    autogate_runtime::identity::default_name(cn.as_deref())
}

/// The CN of the first certificate of a PEM file (`None` when unreadable: the start-up checks
/// of the link report a bad file with its reason).
fn certificate_cn(path: &std::path::Path) -> Option<String> {
    let certs = autogate_tls::load_certs(path).ok()?;
    let info = autogate_tls::cert_info(certs.first()?).ok()?;
    common_name(&info.subject)
}

/// The CN of a subject as the certificate parser writes it (`C=US, O=Example, CN=core-1`).
fn common_name(subject: &str) -> Option<String> {
    subject
        .split(", ")
        .find_map(|part| part.strip_prefix("CN="))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        assert_eq!(common_name("CN=core-1").as_deref(), Some("core-1"));
        assert_eq!(
            common_name("C=US, O=Example, CN=gw.example.com").as_deref(),
            Some("gw.example.com")
        );
        assert_eq!(common_name("O=Example"), None);
    }

    #[test]
    fn first_retry_is_quick_and_delays_are_capped() {
        let cap = Duration::from_secs(10);
        let mut b = Backoff::new(FIRST_RETRY, cap);
        let first = b.next_delay(0.999);
        assert!(first <= Duration::from_millis(250), "{first:?}");
        assert!(first >= Duration::from_millis(100), "{first:?}");
        let mut last = first;
        for _ in 0..40 {
            let d = b.next_delay(0.999);
            assert!(d <= cap, "{d:?}");
            assert!(
                d >= last.min(cap / 2),
                "delays should not shrink: {d:?} after {last:?}"
            );
            last = d;
        }
        assert!(last >= cap / 2);
        b.reset();
        assert!(b.next_delay(0.0) <= Duration::from_millis(250));
    }

    #[test]
    fn jitter_spreads_within_half_to_full() {
        let mut lo = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut hi = lo.clone();
        assert_eq!(lo.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(hi.next_delay(1.0), Duration::from_secs(1));
    }
}
