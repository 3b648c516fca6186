//! The node's own routes: who it is (`/api/v1/health`), and the probes and metrics of
//! supervisors and Prometheus (`/healthz`, `/readyz`, `/metrics`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiState;
use crate::link::LinkState;
use crate::Node;

/// `GET /api/v1/health`: who this node is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    node_id: String,
    cluster_id: String,
    /// Always `server`: a core node.
    mode: &'static str,
    /// The store backend: `memory`, `local` or `etcd`.
    store: &'static str,
    version: &'static str,
    /// The state of the link to the manager.
    #[schema(value_type = Object)]
    manager: LinkState,
    /// The node's place in the election; null without HA.
    ha: Option<HaBrief>,
}

/// The election as the health answer shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HaBrief {
    /// `active`, `standby` or `paused`.
    #[schema(value_type = String)]
    role: autogate_ha::Role,
    term: Option<u64>,
    active_node_id: Option<String>,
}

fn health_of(node: &Node) -> Health {
    Health {
        node_id: node.id.as_str().to_owned(),
        cluster_id: node.config.application.cluster_id.clone(),
        mode: "server",
        store: node.store.backend(),
        version: autogate_runtime::VERSION,
        manager: node.link.get(),
        ha: node.ha.as_ref().map(|ha| {
            let st = ha.status();
            HaBrief {
                role: st.role,
                term: st.term,
                active_node_id: st.active_node_id,
            }
        }),
    }
}

/// `GET /api/v1/health`: who this node is, as JSON.
pub fn health_body(node: &Node) -> Value {
    serde_json::to_value(health_of(node)).unwrap_or(Value::Null)
}

pub(super) async fn health(State(s): State<ApiState>) -> Json<Health> {
    Json(health_of(&s.node))
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers: a node that cannot reach its store cannot do its job.
pub(super) async fn readyz(State(s): State<ApiState>) -> impl IntoResponse {
    match s.node.store.status().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

pub(super) async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.node.metrics.render(),
    )
}
