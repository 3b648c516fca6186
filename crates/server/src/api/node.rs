//! The node's own routes: who it is (`/api/v1/health`), and the probes and metrics of
//! supervisors and Prometheus (`/healthz`, `/readyz`, `/metrics`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::ApiState;
use crate::Node;

/// `GET /api/v1/health`: who this node is.
pub fn health_body(node: &Node) -> Value {
    json!({
        "node_id": node.id.as_str(),
        "cluster_id": node.config.application.cluster_id,
        "mode": "server",
        "store": node.store.backend(),
        "version": autogate_runtime::VERSION,
        "manager": node.link.get(),
        "ha": node.ha.as_ref().map(|ha| {
            let st = ha.status();
            json!({ "role": st.role, "term": st.term, "active_node_id": st.active_node_id })
        }),
    })
}

pub(super) async fn health(State(s): State<ApiState>) -> Json<Value> {
    Json(health_body(&s.node))
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
