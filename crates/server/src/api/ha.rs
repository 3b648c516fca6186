//! High availability: this node's view of the election, and the operator's switchover, pause
//! and resume. Answered by the node that receives them (each is about that node).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiState;

fn ha_disabled() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": "high availability is not enabled on this node (connect.server_ha_enabled = false)"
        })),
    )
}

/// `GET /api/v1/ha/status`: this node's view of the election.
pub(super) async fn status(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => (StatusCode::OK, Json(json!(ha.status()))),
        None => ha_disabled(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchoverBody {
    to: Option<String>,
}

/// `POST /api/v1/ha/switchover {"to"?}`: planned hand-over by the active node.
pub(super) async fn switchover(
    State(s): State<ApiState>,
    body: Option<Json<SwitchoverBody>>,
) -> impl IntoResponse {
    let Some(ha) = &s.node.ha else {
        return ha_disabled();
    };
    let to = body.and_then(|Json(b)| b.to);
    match ha.switchover(to.clone()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "accepted": true, "from": s.node.id.as_str(), "to": to })),
        ),
        Err(autogate_ha::SwitchoverError::Refused(reason)) => {
            (StatusCode::CONFLICT, Json(json!({ "error": reason })))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

/// `POST /api/v1/ha/pause`: maintenance; an active node hands over first.
pub(super) async fn pause(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => {
            ha.pause();
            (StatusCode::ACCEPTED, Json(json!({ "paused": true })))
        }
        None => ha_disabled(),
    }
}

/// `POST /api/v1/ha/resume`: stand for election again.
pub(super) async fn resume(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => {
            ha.resume();
            (StatusCode::ACCEPTED, Json(json!({ "paused": false })))
        }
        None => ha_disabled(),
    }
}
