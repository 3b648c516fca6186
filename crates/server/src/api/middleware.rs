//! The checks a route's table entry asks for, as route layers: the API key and the role its
//! user needs ([`Access::Key`](super::Access::Key) with the entry's role), and forwarding a
//! standby's request to the active node ([`Standby::Forward`](super::Standby::Forward)).
//!
//! On the login route, a layer outside the forwarding keeps the backoff of the caller's address
//! on the node the caller reached, forwarded or not (see `auth::login_guard`).
//!
//! The key check puts the [`Caller`] into the request's extensions, where handlers that depend
//! on who calls (logout, a password change) find it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState, PeerAddr};
use crate::auth::{Caller, Role, BUSY_RETRY_AFTER};

/// The largest login body read here (a user name and a password).
const LOGIN_BODY_LIMIT: usize = 64 << 10;
/// The header a forwarded answer carries (set by `crate::forward`).
const ANSWERED_BY: &str = "x-autogate-answered-by";

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key)
}

/// What a keyed route asks of its caller.
#[derive(Debug, Clone)]
pub(super) struct Need {
    pub(super) role: Role,
    /// The route is about the user named by the path segment after `/users/`: one's own
    /// needs `role`, another's `admin`.
    pub(super) own: bool,
    /// `METHOD /path/template`, for the refusal's message.
    pub(super) route: String,
}

/// The user the path names (`/api/v1/users/<name>…`), as sent: a name is plain characters,
/// so a percent-encoded one never equals its caller's and falls to the admin rule.
fn named_user(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/users/")?.split('/').next()
}

/// The role `caller` needs for this request.
fn needed(need: &Need, caller: &Caller, path: &str) -> Role {
    if need.own && named_user(path) != Some(caller.user.as_str()) {
        Role::Admin
    } else {
        need.role
    }
}

pub(super) async fn require_key(
    State((s, need)): State<(ApiState, Arc<Need>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match s.auth.check(bearer(req.headers())).await {
        Ok(caller) => caller,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let needs = needed(&need, &caller, req.uri().path());
    if caller.role < needs {
        let whose = if need.own && needs > need.role {
            " on another user"
        } else {
            ""
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "forbidden: {}{whose} needs the role {needs}; user {} has the role {}",
                need.route, caller.user, caller.role
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The seconds a 429 of the active node asks to wait, from its message ("retry in Ns").
fn retry_in(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = text.split("retry in ").nth(1)?;
    rest.split('s').next()?.trim().parse().ok()
}

pub(super) async fn login_address_backoff(
    State(s): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(a))| a.ip())
    else {
        return next.run(req).await;
    };
    let guard = s.auth.guard();
    if let Some(refusal) = guard.address_refusal(ip) {
        return super::users::refused(refusal);
    }
    // The user name, for the log of a failure the active node answers.
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, LOGIN_BODY_LIMIT).await {
        Ok(b) => b,
        // Too large (the port's limit for key-less routes, or this one), too slow or cut off:
        // the same answers a forwarded body gets.
        Err(e) => {
            return crate::forward::body_error(
                &e,
                LOGIN_BODY_LIMIT.min(crate::transport::OPEN_BODY_LIMIT),
            )
        }
    };
    let user = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["username"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !response.headers().contains_key(ANSWERED_BY) {
        // Answered here: the handler counted it.
        return response;
    }
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        guard.failed_at_active(&user, ip);
    }
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && !response.headers().contains_key(header::RETRY_AFTER)
    {
        // The forwarded answer lost the active node's `Retry-After`: give it back.
        let (mut parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, LOGIN_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let secs = retry_in(&bytes)
            .unwrap_or(BUSY_RETRY_AFTER.as_secs())
            .max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            parts.headers.insert(header::RETRY_AFTER, v);
        }
        return Response::from_parts(parts, Body::from(bytes));
    }
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_refusal_keeps_its_delay() {
        assert_eq!(
            retry_in(br#"{"error":"too many failed logins; retry in 17s"}"#),
            Some(17)
        );
        assert_eq!(
            retry_in(br#"{"error":"too many logins in progress"}"#),
            None
        );
    }

    #[test]
    fn own_routes_need_admin_for_another_user() {
        let need = Need {
            role: Role::Viewer,
            own: true,
            route: "GET /api/v1/users/{name}".into(),
        };
        let bob = Caller {
            user: "bob".into(),
            role: Role::Viewer,
            key_digest: String::new(),
        };
        assert_eq!(needed(&need, &bob, "/api/v1/users/bob"), Role::Viewer);
        assert_eq!(
            needed(&need, &bob, "/api/v1/users/bob/password"),
            Role::Viewer
        );
        for other in [
            "/api/v1/users/admin",
            "/api/v1/users/admin/password",
            "/api/v1/users/%62ob",
            "/api/v1/users/bobby",
        ] {
            assert_eq!(needed(&need, &bob, other), Role::Admin, "{other}");
        }
    }
}
