//! High availability: this node's view of the election, and the operator's switchover, pause
//! and resume. Answered by the node that receives them (each is about that node).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, ApiState};

fn ha_disabled() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "high availability is not enabled on this node (connect.server_ha_enabled = false)",
    )
}

/// `GET /api/v1/ha/status`: this node's view of the election, with the stable names of this
/// node (`node_name`), of the active node (`active_node_name`) and of each candidate (`name`),
/// when their node records have one, beside the ids, which change at every start.
pub(super) async fn status(State(s): State<ApiState>) -> ApiResult<Response> {
    let ha = s.node.ha.as_ref().ok_or_else(ha_disabled)?;
    let mut v = serde_json::to_value(ha.status()).unwrap_or_default();
    let names =
        crate::link::core_names(&*s.node.store, &s.node.config.application.cluster_id).await;
    v["node_name"] = s.node.id.name().into();
    let name_of = |id: &str| {
        if id == s.node.id.as_str() {
            Some(s.node.id.name().to_owned())
        } else {
            names.get(id).cloned()
        }
    };
    if let Some(name) = v["active_node_id"].as_str().and_then(name_of) {
        v["active_node_name"] = name.into();
    }
    if let Some(candidates) = v["candidates"].as_array_mut() {
        for c in candidates {
            if let Some(name) = c["node_id"].as_str().and_then(name_of) {
                c["name"] = name.into();
            }
        }
    }
    Ok(Json(v).into_response())
}

/// `POST /api/v1/ha/switchover`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Switchover {
    /// The node to hand over to; by default the next candidate in election order.
    to: Option<String>,
}

/// A switchover the active node accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SwitchoverAccepted {
    accepted: bool,
    from: String,
    to: Option<String>,
    /// When the node that resigned is the primary: how long it will not take the role back
    /// (it also ends when that node restarts or becomes active again). `ha pause` holds it
    /// away for longer.
    preemption_hold_ms: Option<u64>,
}

/// `POST /api/v1/ha/switchover {"to"?}`: planned hand-over by the active node.
pub(super) async fn switchover(
    State(s): State<ApiState>,
    body: Option<Json<Switchover>>,
) -> ApiResult<(StatusCode, Json<SwitchoverAccepted>)> {
    let ha = s.node.ha.as_ref().ok_or_else(ha_disabled)?;
    let to = body.and_then(|Json(b)| b.to);
    match ha.switchover(to.clone()).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(SwitchoverAccepted {
                accepted: true,
                from: s.node.id.as_str().to_owned(),
                to,
                preemption_hold_ms: s
                    .node
                    .config
                    .connect
                    .is_primary
                    .then_some(autogate_ha::machine::SWITCHOVER_HOLD_MS),
            }),
        )),
        Err(autogate_ha::SwitchoverError::Refused(reason)) => {
            Err(ApiError::new(StatusCode::CONFLICT, reason))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// Whether the node stands for election.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Paused {
    paused: bool,
}

/// `POST /api/v1/ha/pause`: maintenance; an active node hands over first.
pub(super) async fn pause(State(s): State<ApiState>) -> ApiResult<(StatusCode, Json<Paused>)> {
    let ha = s.node.ha.as_ref().ok_or_else(ha_disabled)?;
    ha.pause();
    Ok((StatusCode::ACCEPTED, Json(Paused { paused: true })))
}

/// `POST /api/v1/ha/resume`: stand for election again.
pub(super) async fn resume(State(s): State<ApiState>) -> ApiResult<(StatusCode, Json<Paused>)> {
    let ha = s.node.ha.as_ref().ok_or_else(ha_disabled)?;
    ha.resume();
    Ok((StatusCode::ACCEPTED, Json(Paused { paused: false })))
}
