//! The cluster-wide views, the same as `get runners` and `inspect cluster` in local mode: any
//! core node answers them from the shared store.

use autogate_jobs::view::{ActivityList, ClusterHealth, RunnerList};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{ApiError, ApiResult, ApiState};

pub(super) async fn runners(State(s): State<ApiState>) -> ApiResult<Json<RunnerList>> {
    let cid = &s.node.config.application.cluster_id;
    let runners = autogate_jobs::view::runners(&*s.node.store, cid)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(RunnerList { runners }))
}

pub(super) async fn activity(State(s): State<ApiState>) -> ApiResult<Json<ActivityList>> {
    let cid = &s.node.config.application.cluster_id;
    let jobs = autogate_jobs::view::activity(&*s.node.store, cid)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(ActivityList { jobs }))
}

pub(super) async fn health(State(s): State<ApiState>) -> Json<ClusterHealth> {
    use autogate_jobs::view::ManagerLink;
    let node = &s.node;
    // The node holding the manager link knows its state; a standby reads the active node's
    // record like the CLI does.
    let holds_link = node
        .ha
        .as_ref()
        .is_none_or(|ha| matches!(ha.current(), autogate_ha::Leadership::Active { .. }));
    // No manager configured means no link to be down.
    let link = if !node.config.connect.enabled || node.config.connect.hosts.is_empty() {
        ManagerLink::Disabled
    } else if holds_link {
        ManagerLink::Known(node.link.get().connected)
    } else {
        ManagerLink::FromRecords
    };
    Json(
        autogate_jobs::view::health(
            &*node.store,
            &node.config.application.cluster_id,
            node.config.server.distributed_execution,
            link,
        )
        .await,
    )
}
