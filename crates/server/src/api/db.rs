//! Import and export of every resource as the family's YAML file (`autogate db export|import`).

use autogate_resources::{ImportMode, ImportOutcome};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ImportQuery {
    /// Only check: report what would happen, write nothing.
    #[param(default = false)]
    check: bool,
    /// Overwrite resources that exist (keeping their creation time).
    #[param(default = false)]
    force: bool,
}

/// What an import did (or would do, with `check`), item by item in file order.
#[derive(Serialize, ToSchema)]
pub(super) struct ImportReport {
    items: Vec<ImportedItem>,
    /// False in check mode and when every item was a conflict.
    written: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ImportedItem {
    kind: &'static str,
    name: String,
    outcome: Imported,
}

/// What became of one item.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Imported {
    /// New; created.
    Add,
    /// Exists; skipped (no `force`).
    Conflict,
    /// Exists; overwritten (`force`).
    Replacement,
}

impl From<ImportOutcome> for Imported {
    fn from(o: ImportOutcome) -> Self {
        match o {
            ImportOutcome::Add => Imported::Add,
            ImportOutcome::Conflict => Imported::Conflict,
            ImportOutcome::Replacement => Imported::Replacement,
        }
    }
}

pub(super) async fn import(
    State(s): State<ApiState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: String,
) -> ApiResult<Json<ImportReport>> {
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
    let items: Vec<ImportedItem> = report
        .items
        .into_iter()
        .map(|i| ImportedItem {
            kind: i.kind.as_str(),
            name: i.name,
            outcome: i.outcome.into(),
        })
        .collect();
    if report.written {
        tracing::info!(items = items.len(), "resources imported");
    }
    Ok(Json(ImportReport {
        items,
        written: report.written,
    }))
}
