//! The automation resources (repositories, services, decorators, secrets, executable-objects,
//! registries): list, create, get and delete, the same four routes for every kind.
//!
//! The handlers pass the JSON on as it is and `autogate-resources` checks it kind by kind, so the
//! document's [`Resource`] names only the fields every kind has.

use autogate_resources::model::Kind;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::json_body;
use super::{ApiResult, ApiState};

/// A resource in the family's kebab-case shape, as in the import file; each kind adds its own
/// fields.
// Never built: it describes the JSON the handlers pass on.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
pub(super) struct Resource {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /api/v1/secrets`: the secret's value in plain text, sealed by the node.
// Never built: it describes the JSON the handlers pass on.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretInput {
    name: String,
    /// Plain text; sealed by the node, never returned.
    value: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `{"<plural>": [resources]}`.
// Never built: it describes the JSON the handlers build.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
pub(super) struct ResourceList(std::collections::BTreeMap<String, Vec<Resource>>);

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
