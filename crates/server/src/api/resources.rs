//! The automation resources (repositories, services, decorators, secrets, executable-objects,
//! registries): list, create, get and delete, the same four routes for every kind.

use autogate_resources::model::Kind;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{Map, Value};

use super::error::json_body;
use super::{ApiResult, ApiState};

pub(super) async fn list(State(s): State<ApiState>, kind: Kind) -> ApiResult<Json<Value>> {
    let items = s.node.automation.list(kind).await?;
    let mut out = Map::new();
    out.insert(kind.plural().to_owned(), Value::Array(items));
    Ok(Json(Value::Object(out)))
}

pub(super) async fn create(
    State(s): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
    kind: Kind,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = json_body(&format!("{kind} body"), body)?;
    let created = s.node.automation.create(kind, body).await?;
    tracing::info!(
        name = created["name"].as_str().unwrap_or_default(),
        "{kind} created"
    );
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn get(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    kind: Kind,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.node.automation.get(kind, &name).await?))
}

pub(super) async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    kind: Kind,
) -> ApiResult<StatusCode> {
    s.node.automation.delete(kind, &name).await?;
    tracing::info!(%name, "{kind} deleted");
    Ok(StatusCode::NO_CONTENT)
}
