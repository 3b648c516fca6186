//! The checks a route's table entry asks for, as route layers: the API key and the role its
//! user needs ([`Access::Key`](super::Access::Key) with the entry's role), and forwarding a
//! standby's request to the active node ([`Standby::Forward`](super::Standby::Forward)).
//!
//! The key check puts the [`Caller`] into the request's extensions, where handlers that depend
//! on who calls (logout, a password change) find it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::auth::{Caller, Role};

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
