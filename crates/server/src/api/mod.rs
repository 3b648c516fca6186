//! The operator API of a core node: HTTP/JSON under `/api/v1`, plus `/healthz`, `/readyz` and
//! `/metrics` for supervisors and Prometheus. Its modules:
//!
//! - [`routes`]: the route table — every route once, with its method, path, handler, whether it
//!   needs an API key and which role (`viewer` < `operator` < `admin`), whether a standby
//!   forwards it, and what the document says about it;
//! - [`error`]: the error answer ([`ApiError`]) and the status of each failure class;
//! - [`middleware`]: the API key and role check and the forwarding of a standby's request;
//! - [`openapi`]: the OpenAPI document (`GET /api/v1/openapi.json`), built from the table;
//! - one module per area of handlers: [`node`] (health, probes, metrics), [`users`] (login,
//!   users, passwords), [`resources`] (the six resource kinds), [`runs`] (service runs and
//!   inputs), [`keyed`] (runs with an `Idempotency-Key`), [`jobs`] (jobs of distributed execution), [`db`] (import and export),
//!   [`cluster`] (runners, activity, cluster health) and [`ha`] (election status and
//!   operations).
//!
//! The router ([`router`]) and the document are both built from the table, so neither can have a
//! route the other lacks. Errors are `{"error": "<message>", "detail": {...}?}` with the status of
//! their class: invalid 422 (400 for a body that is not JSON/YAML at all), not found 404, conflict
//! 409, forbidden 403, unavailable 503, configuration and internal failures 500.

mod cluster;
mod db;
mod error;
mod ha;
mod hostkeys;
mod jobs;
mod keyed;
mod middleware;
mod node;
mod openapi;
mod resources;
mod routes;
mod runs;
mod users;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::forward::Forwarder;
use crate::Node;

pub use error::{ApiError, ApiResult};
pub use node::health_body;
pub use openapi::openapi_document;
pub use routes::{route_specs, Access, Body, RouteSpec, Standby};

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct ApiState {
    node: Node,
    auth: Auth,
    forwarder: Forwarder,
    /// Cancelled when the node shuts down: runs in flight are cancelled with it.
    shutdown: CancellationToken,
}

impl ApiState {
    pub fn new(node: Node, auth: Auth, forwarder: Forwarder, shutdown: CancellationToken) -> Self {
        ApiState {
            node,
            auth,
            forwarder,
            shutdown,
        }
    }
}

/// The address of a request's peer, as the request's connection info
/// (`ConnectInfo<PeerAddr>`, attached by the API's port, `crate::transport`), for plain and
/// TLS connections alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// All routes of the core node API, each with the checks its table entry asks for.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for routes::Route { spec, handler } in routes::table() {
        let mut handler = handler;
        // Layers wrap what is already there: forwarding first, so the key check runs before it
        // and a standby refuses a bad key itself instead of passing it on.
        if spec.standby == Standby::Forward {
            handler = handler.route_layer(from_fn_with_state(
                state.clone(),
                middleware::forward_to_active,
            ));
        }
        if spec.login {
            // Outside the forwarding: a standby refuses a caller whose address is in backoff
            // and counts the failures the active node answers.
            handler = handler.route_layer(from_fn_with_state(
                state.clone(),
                middleware::login_address_backoff,
            ));
        }
        if spec.access == Access::Key {
            let need = std::sync::Arc::new(middleware::Need {
                role: spec.role,
                own: spec.own,
                route: format!("{} {}", spec.method, spec.path),
            });
            handler = handler.route_layer(from_fn_with_state(
                (state.clone(), need),
                middleware::require_key,
            ));
        }
        router = router.route(&spec.path, handler);
    }
    router.fallback(no_route).with_state(state)
}

async fn no_route(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such route: {} {} (see /api/v1/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tower::ServiceExt;

    async fn state() -> (ApiState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = autogate_config::LoadOptions {
            env: [
                (
                    "GATEWAY_APPLICATION_WORKING_DIR".to_owned(),
                    dir.path().display().to_string(),
                ),
                ("GATEWAY_STORE_BACKEND".to_owned(), "memory".to_owned()),
            ]
            .into_iter()
            .collect(),
            home: Some(dir.path().to_path_buf()),
            etc_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let config = Arc::new(autogate_config::load(&opts).expect("config"));
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .expect("store");
        let node = Node {
            id: autogate_runtime::NodeId::with_host("test"),
            automation: autogate_automation::Automation::from_config(&config, store.clone()),
            config: config.clone(),
            store: store.clone(),
            metrics: Arc::new(autogate_runtime::Metrics::new()),
            started: std::time::Instant::now(),
            link: crate::link::LinkStatus::default(),
            jobs: crate::dispatch::Jobs::new(false, &autogate_runtime::Metrics::new()),
            runs: crate::run_records::RunRecords::new(
                store.clone(),
                "cluster_1",
                std::time::Duration::from_secs(3600),
                tokio_util::task::TaskTracker::new(),
            ),
            ha: None,
        };
        let auth = Auth::new(store, "cluster_1", std::time::Duration::from_secs(60));
        let forwarder = Forwarder::plain();
        (
            ApiState::new(node, auth, forwarder, CancellationToken::new()),
            dir,
        )
    }

    /// The document lists exactly the table's routes.
    #[test]
    fn openapi_paths_match_the_route_table() {
        let doc = openapi_document();
        let mut in_doc = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                in_doc.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let in_table: BTreeSet<(String, String)> = route_specs()
            .into_iter()
            .map(|s| (s.method.to_string(), s.path))
            .collect();
        assert_eq!(in_doc, in_table);
        assert_eq!(doc["openapi"], "3.1.0");
    }

    /// Every `$ref` of the document names one of its schemas, and the schemas are the types':
    /// every field of `ServiceInfo` is there, and the run body has no `service` (the path names
    /// it).
    #[test]
    fn openapi_schemas_are_complete() {
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = openapi_document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").expect(r);
            assert!(
                schemas.contains_key(name),
                "{r} is not in components.schemas"
            );
        }
        let info = autogate_automation::ServiceInfo {
            name: "s".into(),
            service_type: autogate_exec::ServiceType::Executable,
            description: String::new(),
            tags: Vec::new(),
            repository: Some("r".into()),
            working_directory: Some("w".into()),
            decorator: Some("d".into()),
            schema: Some(serde_json::json!({})),
            created: Some("c".into()),
            updated: Some("u".into()),
        };
        let fields = serde_json::to_value(info).expect("json");
        let properties = schemas["ServiceInfo"]["properties"]
            .as_object()
            .expect("properties");
        for field in fields.as_object().expect("object").keys() {
            assert!(properties.contains_key(field), "ServiceInfo lacks {field}");
        }
        let run = &schemas["RunRequest"];
        assert_eq!(run["additionalProperties"], false, "{run}");
        assert!(run["properties"].get("service").is_none(), "{run}");
        assert!(run["properties"].get("inputs").is_some(), "{run}");
    }

    /// Every route of the table is served by the router (no fallback, no 405), and a path
    /// outside the table is not.
    #[tokio::test]
    async fn router_serves_every_route_of_the_table() {
        let (state, _dir) = state().await;
        let app = router(state);
        for spec in route_specs() {
            let path = spec.path.replace("{name}", "x");
            let req = axum::http::Request::builder()
                .method(spec.method.clone())
                .uri(&path)
                .body(Body::empty())
                .expect("request");
            let resp = app.clone().oneshot(req).await.expect("response");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&bytes);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path}",
                spec.method
            );
            assert!(
                !text.contains("no such route"),
                "{} {path}: {text}",
                spec.method
            );
            if spec.access == Access::Key {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {path}", spec.method);
                assert!(text.contains("missing or invalid API key"), "{text}");
            }
        }
        let req = axum::http::Request::builder()
            .uri("/api/v1/nothing")
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
