//! Error answers: `{"error": "<message>", "detail": {...}?, "job_id": "..."?}` with the status of
//! the failure's class, and the conversions from the errors of the layers below.

use autogate_automation::{AutomationError, ErrorClass};
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::AuthError;

/// An error answer: its status and its body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong, in words.
    error: String,
    /// What a structured check found, e.g. the violations of the decorator's schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    detail: Option<Value>,
    /// The job a distributed run's error is about (its caller can ask for it again).
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                detail: None,
                job_id: None,
            },
        }
    }

    /// The same error, about job `job`.
    pub fn with_job(mut self, job: &str) -> Self {
        self.body.job_id = Some(job.to_owned());
        self
    }

    /// Its status and body, as a run's record keeps them.
    pub fn into_answer(self) -> crate::run_records::HttpAnswer {
        crate::run_records::HttpAnswer {
            status: self.status.as_u16(),
            body: serde_json::to_value(&self.body).unwrap_or(Value::Null),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn class_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorClass::NotFound => StatusCode::NOT_FOUND,
        ErrorClass::Conflict => StatusCode::CONFLICT,
        ErrorClass::Forbidden => StatusCode::FORBIDDEN,
        ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The node is not set up for the request (no secrets key file, another cluster's key):
        // the caller can do nothing but tell the operator, whom the message names the fix for.
        // Not a 5xx: the node works as configured.
        ErrorClass::Config => StatusCode::CONFLICT,
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<AutomationError> for ApiError {
    fn from(e: AutomationError) -> Self {
        let status = class_status(e.class());
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {e}");
        }
        ApiError {
            status,
            body: ErrorBody {
                error: e.to_string(),
                detail: e.detail(),
                job_id: None,
            },
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::BadCredentials | AuthError::MissingKey | AuthError::Expired => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Exists(_) | AuthError::LastUser(_) => StatusCode::CONFLICT,
            AuthError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AuthError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {e}");
        }
        ApiError::new(status, e.to_string())
    }
}

/// A JSON body the handler could not take: not JSON at all is 400, JSON of the wrong shape 422.
fn body_error(what: &str, e: JsonRejection) -> ApiError {
    let status = match &e {
        JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
        JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("{what}: {}", e.body_text()))
}

/// The body of a handler that takes `Result<Json<T>, JsonRejection>`, or its error answer.
pub fn json_body<T>(what: &str, body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| body_error(what, e))
}
