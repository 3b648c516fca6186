//! Import and export of every resource as the family's file (`autogate db export|import`): YAML,
//! or JSON with `format=json`; an import may be checked (`check`), forced (`force`) or only
//! validated (`validate`: the file alone, nothing read or written).

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

/// The export's format.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// `yaml` (the default) or `json`: the same keys either way.
    #[param(inline)]
    format: Format,
}

pub(super) async fn export(
    State(s): State<ApiState>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("export query: {}", e.body_text()),
        )
    })?;
    let (text, content_type) = match q.format {
        Format::Yaml => (s.node.automation.export().await?, "application/yaml"),
        Format::Json => (s.node.automation.export_json().await?, "application/json"),
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
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
    /// Only validate the file on its own (shape, required fields, duplicates): the store is
    /// neither read nor written; every item is reported `valid`. Not with `check` or `force`.
    #[param(default = false)]
    validate: bool,
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
            "import body is empty: send the resource file (YAML or JSON)",
        ));
    }
    if q.validate {
        if q.check || q.force {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "import query: validate checks the file alone; it takes neither check nor force",
            ));
        }
        return Ok(Json(ImportReport::from(
            s.node.automation.validate_import(&body)?,
        )));
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
