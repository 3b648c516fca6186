//! Import and export of every resource as the family's YAML file (`autogate db export|import`).

use autogate_resources::{ImportMode, ImportOutcome};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, ApiState};

pub(super) async fn export(State(s): State<ApiState>) -> ApiResult<Response> {
    let yaml = s.node.automation.export().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        yaml,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ImportQuery {
    check: bool,
    force: bool,
}

pub(super) async fn import(
    State(s): State<ApiState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: String,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("import query: {}", e.body_text()),
        )
    })?;
    if body.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "import body is empty: send the YAML resource file",
        ));
    }
    let mode = ImportMode {
        check: q.check,
        force: q.force,
    };
    let report = s.node.automation.import(&body, mode).await?;
    let items: Vec<Value> = report
        .items
        .iter()
        .map(|i| {
            let outcome = match i.outcome {
                ImportOutcome::Add => "add",
                ImportOutcome::Conflict => "conflict",
                ImportOutcome::Replacement => "replacement",
            };
            json!({ "kind": i.kind.as_str(), "name": i.name, "outcome": outcome })
        })
        .collect();
    if report.written {
        tracing::info!(items = items.len(), "resources imported");
    }
    Ok(Json(json!({ "items": items, "written": report.written })))
}
