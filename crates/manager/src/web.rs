//! The manager's web page and its live feed: the operator signs in with the admin token, sees
//! every gateway cluster as one gateway with its nodes, certificates, session timeline and
//! services, and watches a fail-over happen without reloading.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary (no build step, nothing
//! fetched from elsewhere), served at `/` and `/ui/…` under a Content-Security-Policy that
//! allows only this origin's own script and style files. It reads and changes everything through
//! the REST API with the token as a Bearer header, so the page has no powers of its own.
//!
//! Live updates: the hub announces sessions opening and closing, node-list changes and cluster
//! changes on an [`Events`] broadcast channel; `GET /api/v1/events` relays them as server-sent
//! events. A notice carries only its kind and cluster id; the page re-reads what it shows, so a
//! browser that falls behind and misses notices loses nothing (it is told to re-read all).
//! `EventSource` cannot send headers, and the admin token must never be part of a URL (URLs end
//! up in access logs, proxies and browser history). So the page first asks
//! `POST /api/v1/events/ticket` with the token as a Bearer header for a *ticket*: random,
//! single-use, valid for [`TICKET_TTL`] on every replica, good for opening this one stream and
//! nothing else ([`crate::tickets`]). It opens `GET /api/v1/events?ticket=…` with it; a reconnect asks for a new
//! one. A client that can send headers may open the stream with the Bearer header instead. A
//! `token` query parameter is refused with a message saying what to do.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use axum::Router;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use crate::api::{error, AppState};
use crate::listener::Peer;
use crate::model::now_rfc3339;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const ICON_SVG: &str = include_str!("../assets/icon.svg");

/// The page may load script, style, images and API calls from this origin only; nothing
/// inline, no frames, no plugins. Inline script is what an injected node id or certificate
/// subject would need, so refusing it makes an escaping mistake in the page harmless.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How often an idle event stream sends a comment line, so proxies and the browser keep it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon the browser reconnects after the stream ends (manager restart, network).
const RECONNECT: Duration = Duration::from_secs(1);
/// Notices buffered per subscriber before a slow one is told to re-read everything.
const CHANNEL_CAPACITY: usize = 256;
pub use crate::tickets::{Tickets, TICKET_TTL};

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A gateway session was accepted (possibly replacing another: a fail-over).
    SessionOpened,
    /// A gateway session ended.
    SessionClosed,
    /// The active node reported a new node list (`nodes.update`).
    NodesChanged,
    /// A cluster was registered, changed or deleted.
    ClusterChanged,
    /// The active node reported a new service catalog.
    ServicesChanged,
}

/// One change notice.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What changed.
    pub kind: EventKind,
    /// In which cluster.
    pub cluster_id: String,
    /// When the manager noticed (RFC 3339, milliseconds).
    pub at: String,
}

/// The broadcast channel of change notices. Sending never blocks and never fails: with no page
/// open there is simply nobody to tell.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    /// A channel with no subscribers yet.
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Events { tx }
    }

    /// Announces a change.
    pub fn send(&self, kind: EventKind, cluster_id: &str) {
        // An error only means nobody is listening.
        let _ = self.tx.send(Event {
            kind,
            cluster_id: cluster_id.to_owned(),
            at: now_rfc3339(),
        });
    }

    /// A receiver of every notice sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// The page, its assets and the event stream. Merged into the API router.
pub fn routes() -> Router<AppState> {
    let page = Router::new()
        .route("/", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
        .route("/ui/icon.svg", get(icon_svg))
        .route("/favicon.ico", get(icon_svg));
    Router::new()
        .merge(page)
        .route("/api/v1/events", get(events))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The assets change with the binary; revalidating costs one small request per load and
    // means an upgraded manager never runs an old script against a new API.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn icon_svg() -> Response {
    asset("image/svg+xml", ICON_SVG)
}

/// The query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    ticket: Option<String>,
    /// Only to refuse it with a useful message: the token never goes in a URL.
    token: Option<String>,
}

/// `POST /api/v1/events/ticket` (behind the API's Bearer check): a ticket for one event stream.
pub async fn ticket(State(app): State<AppState>) -> Response {
    let ticket = app.tickets.issue(std::time::SystemTime::now());
    let mut resp = Json(serde_json::json!({
        "ticket": ticket,
        "expires_in_ms": TICKET_TTL.as_millis() as u64,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether `presented` is the admin token: both sides hashed, compared in constant time.
fn token_matches(app: &AppState, presented: &str) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
    bool::from(digest.ct_eq(&app.token_digest))
}

async fn events(State(app): State<AppState>, req: Request) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = Query::<EventsQuery>::try_from_uri(req.uri()).ok();
    let ticket = query.as_ref().and_then(|q| q.ticket.as_deref());
    let token_in_url = query.as_ref().is_some_and(|q| q.token.is_some());
    let refusal = if token_in_url {
        // Never compared, so a URL cannot even serve to guess it.
        Some("the admin token is not accepted in a URL: get a ticket with POST /api/v1/events/ticket (Authorization: Bearer <token>) and open /api/v1/events?ticket=<ticket>")
    } else if let Some(t) = bearer {
        (!token_matches(&app, t)).then_some("invalid admin token")
    } else if let Some(t) = ticket {
        match app.tickets.redeem(t, std::time::SystemTime::now()).await {
            Ok(()) => None,
            Err(crate::tickets::TicketError::Store(why)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the manager cannot check the ticket now ({why}); try again"),
                );
            }
            Err(crate::tickets::TicketError::Invalid) => Some(
                "invalid or expired ticket: a ticket opens one stream, within 30 s of POST /api/v1/events/ticket",
            ),
        }
    } else {
        Some("missing credentials: open /api/v1/events?ticket=<ticket from POST /api/v1/events/ticket>, or send Authorization: Bearer <token>")
    };
    if let Some(why) = refusal {
        // The path only: the query may hold a ticket or a token.
        let who = req
            .extensions()
            .get::<Peer>()
            .map(|p| p.addr.to_string())
            .unwrap_or_default();
        tracing::debug!("refused event stream from {who}: {why}");
        let mut resp = error(StatusCode::UNAUTHORIZED, why);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }

    let rx = app.hub.events().subscribe();
    let shutdown = app.token.clone();
    // The first event tells the page the stream is up (and how fast to reconnect); after that,
    // one event per notice until the manager shuts down, which ends the stream so shutdown does
    // not wait for open pages.
    let hello = SseEvent::default()
        .event("ready")
        .retry(RECONNECT)
        .data(now_rfc3339());
    let stream = futures::stream::unfold(
        (rx, shutdown, Some(hello)),
        |(mut rx, shutdown, hello)| async move {
            if let Some(first) = hello {
                return Some((Ok::<_, Infallible>(first), (rx, shutdown, None)));
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = rx.recv() => r,
            };
            let event = match next {
                Ok(ev) => SseEvent::default()
                    .json_data(&ev)
                    .unwrap_or_else(|_| SseEvent::default().event("resync").data("")),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    SseEvent::default().event("resync").data(n.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (rx, shutdown, None)))
        },
    );
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notices_reach_every_subscriber_and_sending_alone_is_fine() {
        let events = Events::new();
        events.send(EventKind::ClusterChanged, "nobody-listens");
        let mut a = events.subscribe();
        let mut b = events.subscribe();
        events.send(EventKind::SessionOpened, "c1");
        for rx in [&mut a, &mut b] {
            let ev = rx.try_recv().unwrap();
            assert_eq!(ev.kind, EventKind::SessionOpened);
            assert_eq!(ev.cluster_id, "c1");
        }
        assert!(a.try_recv().is_err(), "one notice per send");
        events.send(EventKind::NodesChanged, "c1");
        let json = serde_json::to_value(a.try_recv().unwrap()).unwrap();
        assert_eq!(json["kind"], "nodes_changed");
        assert_eq!(json["cluster_id"], "c1");
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        // The CSP forbids inline script and style: the page must not contain any.
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("style="), "inline style attribute");
        assert!(!INDEX_HTML.contains("<style"), "inline style element");
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(INDEX_HTML.contains(r#"src="/ui/app.js""#));
        assert!(
            !APP_JS.contains("innerHTML"),
            "data goes in as text, never as markup"
        );
        assert!(!APP_JS.contains("eval("));
    }

    /// The manager's whole router over an in-memory store, and its hub.
    async fn app(token: &str) -> (Router, std::sync::Arc<crate::hub::Hub>) {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let registry =
            crate::registry::Registry::open(store.clone(), 10, &std::collections::HashSet::new())
                .await
                .unwrap();
        let store_for_tickets = store.clone();
        let runs = crate::runs::Runs::open(store.clone(), crate::runs::RunLimits::default())
            .await
            .unwrap();
        let replicas = crate::replicas::Replicas::join(
            store,
            "127.0.0.1:1".into(),
            Duration::from_secs(5),
            true,
        )
        .await
        .unwrap();
        let hub = std::sync::Arc::new(crate::hub::Hub::new(
            registry,
            crate::metrics::ManagerMetrics::new(),
            runs,
            std::sync::Arc::new(replicas),
            Vec::new(),
            0,
        ));
        let router = crate::api::router(AppState {
            hub: hub.clone(),
            token_digest: Sha256::digest(token.as_bytes()).into(),
            max_frame_size: 1 << 20,
            token: tokio_util::sync::CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
            refusal_log: std::sync::Arc::new(crate::ratelimit::LogLimiter::new(1.0, 1.0)),
            session: crate::ws::SessionLimits::default(),
            tickets: std::sync::Arc::new(Tickets::new(token, store_for_tickets)),
            store_where: crate::api::StoreWhere::default(),
        });
        (router, hub)
    }

    async fn get(app: &Router, uri: &str, bearer: Option<&str>) -> Response {
        use tower::ServiceExt;
        let mut req = axum::http::Request::get(uri);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        app.clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn page_assets_carry_the_security_headers_and_the_stream_needs_the_token() {
        let (app, _hub) = app("s3cret").await;
        for (uri, ctype) in [
            ("/", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
        ] {
            let resp = get(&app, uri, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], ctype, "{uri}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        }
        // The API keeps its own rules next to the page's routes.
        assert_eq!(
            get(&app, "/api/v1/clusters", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&app, "/api/v1/clusters", Some("s3cret")).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            get(&app, "/api/v1/nope", Some("s3cret")).await.status(),
            StatusCode::NOT_FOUND
        );
        // The token is never accepted in a URL, not even the right one.
        for uri in [
            "/api/v1/clusters?token=s3cret",
            "/api/v1/events?token=s3cret",
        ] {
            assert_eq!(
                get(&app, uri, None).await.status(),
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
        }
        for (uri, bearer) in [
            ("/api/v1/events", None),
            ("/api/v1/events?ticket=wrong", None),
            ("/api/v1/events", Some("wrong")),
            ("/api/v1/events?token=s3cret", Some("s3cret")),
        ] {
            let resp = get(&app, uri, bearer).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri} {bearer:?}");
        }
        // A ticket needs the token, opens one stream, once.
        assert_eq!(
            post(&app, "/api/v1/events/ticket", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let ticket = ticket_of(&app).await;
        let uri = format!("/api/v1/events?ticket={ticket}");
        let resp = get(&app, &uri, None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(
            get(&app, &uri, None).await.status(),
            StatusCode::UNAUTHORIZED,
            "a ticket is good once"
        );
        let resp = get(&app, "/api/v1/events", Some("s3cret")).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    async fn post(app: &Router, uri: &str, bearer: Option<&str>) -> Response {
        use tower::ServiceExt;
        let mut req = axum::http::Request::post(uri);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        app.clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn ticket_of(app: &Router) -> String {
        let resp = post(app, "/api/v1/events/ticket", Some("s3cret")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["ticket"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_change_reaches_an_open_stream() {
        use futures::StreamExt;
        let (app, hub) = app("s3cret").await;
        let ticket = ticket_of(&app).await;
        let resp = get(&app, &format!("/api/v1/events?ticket={ticket}"), None).await;
        let mut body = resp.into_body().into_data_stream();
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut sent = false;
        while !seen.contains("cluster_changed") {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("an event in time")
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if !sent && seen.contains("event: ready") {
                let now = now_rfc3339();
                hub.create_cluster(crate::model::ClusterRecord {
                    cluster_id: "c1".into(),
                    name: "c1".into(),
                    state: crate::model::ClusterState::Enabled,
                    certificates: Vec::new(),
                    created_at: now,
                    highest_term: None,
                })
                .await
                .unwrap();
                sent = true;
            }
        }
        assert!(seen.contains(r#""cluster_id":"c1""#), "{seen}");
    }
}
