//! Import and export of every resource as the family's YAML file (`autogate db export|import`).

use autogate_automation::api_types::ImportReport;
use autogate_resources::ImportMode;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

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
    let report = ImportReport::from(s.node.automation.import(&body, mode).await?);
    if report.written {
        tracing::info!(items = report.items.len(), "resources imported");
    }
    Ok(Json(report))
}
