//! The checks a route's table entry asks for, as route layers: the API key
//! ([`Access::Key`](super::Access::Key)) and forwarding a standby's request to the active node
//! ([`Standby::Forward`](super::Standby::Forward)).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key)
}

pub(super) async fn require_key(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    match s.auth.check(bearer(req.headers())).await {
        Ok(_user) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn forward_to_active(
    State(s): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    match s.forwarder.forward(&s.node, req).await {
        Ok(response) => response,
        Err(crate::forward::Local(req)) => next.run(req).await,
    }
}
