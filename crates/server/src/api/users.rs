//! Users and API keys: login and logout, and the users' list, creation, deletion and password
//! change.
//!
//! A login is checked through the node's [`LoginGuard`](crate::auth::LoginGuard): refused with
//! 503 and `Retry-After` when every hashing slot is busy, with 429 and `Retry-After` while the
//! user or the caller's address is in backoff; a failure is logged with the caller's address
//! and the user name, never the password. Changing one's own password needs the current one;
//! an admin sets another user's without it (the route's role check lets only admins reach
//! another user).
//!
//! A user whose password is temporary (created with `temporary`, or set so by an admin) gets no
//! key from a login with that password alone: the answer is 403 with
//! `detail.password_change_required = true`, and a login that also gives `new_password`
//! changes the password and gets the key. `new_password` works for every user (it is how
//! `autogate login --change-password` changes one's own password without a key): the change
//! revokes all of the user's earlier keys.

use std::net::IpAddr;
use std::time::Duration;

use autogate_automation::api_types::UserList;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;

use super::error::json_body;
use super::{ApiError, ApiResult, ApiState, PeerAddr};
use crate::auth::{
    loggable, Caller, LoginError, Refusal, Role, Source, UserView, MIN_PASSWORD_LEN,
};

/// A new password: the schema carries the length the node enforces.
fn new_password() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(MIN_PASSWORD_LEN))
        .build()
}

/// The caller's address: the connection's peer (absent when the router is driven without a
/// connection, as in unit tests).
pub(super) type Peer = Option<Extension<ConnectInfo<PeerAddr>>>;

pub(super) fn peer_ip(peer: &Peer) -> Option<IpAddr> {
    peer.as_ref()
        .map(|Extension(ConnectInfo(PeerAddr(a)))| a.ip())
}

/// Where a password check comes from: a request a standby core node of this cluster forwarded
/// (the forwarding header, from the address of one of the cluster's core nodes) counts against
/// the user only, since the standby keeps the backoff of its caller's address; anything else
/// is its peer's own.
async fn source(s: &ApiState, headers: &HeaderMap, peer: &Peer) -> Source {
    let Some(ip) = peer_ip(peer) else {
        return Source::Unknown;
    };
    if !headers.contains_key(crate::forward::FORWARDED_BY) {
        return Source::Client(ip);
    }
    let Some(ha) = &s.node.ha else {
        return Source::Client(ip);
    };
    for address in ha.nodes().into_iter().filter_map(|n| n.address) {
        if node_address_is(&address, ip).await {
            return Source::Standby(ip);
        }
    }
    Source::Client(ip)
}

/// Whether a node record's `host:port` is at `ip` (a host name is resolved, within a second).
async fn node_address_is(address: &str, ip: IpAddr) -> bool {
    if let Ok(a) = address.parse::<std::net::SocketAddr>() {
        return a.ip().to_canonical() == ip.to_canonical();
    }
    let lookup = tokio::net::lookup_host(address.to_owned());
    match tokio::time::timeout(Duration::from_secs(1), lookup).await {
        Ok(Ok(mut addrs)) => addrs.any(|a| a.ip().to_canonical() == ip.to_canonical()),
        _ => false,
    }
}

/// `POST /api/v1/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    username: String,
    password: String,
    /// Change the password to this one with the login (required when the password is
    /// temporary); every earlier key of the user is revoked.
    #[serde(default)]
    #[schema(schema_with = new_password)]
    new_password: Option<String>,
}

/// An answer with `Retry-After` (whole seconds, at least 1).
fn retry_after(status: StatusCode, message: String, after: Duration) -> Response {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    let mut response = ApiError::new(status, message).into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The answer to a login refused before its password was checked.
pub(super) fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Busy => retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins in progress on this node; retry shortly".to_owned(),
            crate::auth::BUSY_RETRY_AFTER,
        ),
        Refusal::Backoff(left) => retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins; retry in {}s",
                left.as_secs() + u64::from(left.subsec_nanos() > 0)
            ),
            left,
        ),
    }
}

fn login_error(e: LoginError) -> Response {
    match e {
        LoginError::Refused(r) => refused(r),
        e @ LoginError::PasswordChangeRequired(_) => (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({
                "error": e.to_string(),
                "detail": { "password_change_required": true },
            })),
        )
            .into_response(),
        LoginError::Auth(e) => ApiError::from(e).into_response(),
    }
}

pub(super) async fn login(
    State(s): State<ApiState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let b = match json_body("login body", body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let source = source(&s, &headers, &peer).await;
    let changing = b.new_password.is_some();
    match s
        .auth
        .login_with(&b.username, &b.password, b.new_password.as_deref(), source)
        .await
    {
        Ok(issued) => {
            if changing {
                tracing::info!(user = %loggable(&b.username), %source, "user logged in and changed its password (its earlier API keys revoked)");
            } else {
                tracing::info!(user = %loggable(&b.username), %source, "user logged in");
            }
            Json(issued).into_response()
        }
        Err(e @ LoginError::PasswordChangeRequired(_)) => {
            tracing::info!(user = %loggable(&b.username), %source, "login with a temporary password: a new password is required");
            login_error(e)
        }
        Err(e) => login_error(e),
    }
}

/// `POST /api/v1/logout`: revokes the key the request carries.
pub(super) async fn logout(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<StatusCode> {
    s.auth.revoke(&caller.key_digest).await?;
    tracing::info!(user = %caller.user, "user logged out (API key revoked)");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list(State(s): State<ApiState>) -> ApiResult<Json<UserList>> {
    let users = s.auth.list_users().await?;
    Ok(Json(UserList { users }))
}

/// `POST /api/v1/users`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    #[schema(schema_with = new_password)]
    password: String,
    /// `operator` when absent.
    #[serde(default)]
    role: Option<Role>,
    /// The password is temporary: the user must change it at its first login.
    #[serde(default)]
    temporary: bool,
}

pub(super) async fn create(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let b = json_body("user body", body)?;
    let role = b.role.unwrap_or(Role::Operator);
    let user = s
        .auth
        .create_user_with(&b.name, &b.password, role, b.temporary)
        .await?;
    tracing::info!(user = %b.name, %role, temporary = b.temporary, by = %caller.user, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

pub(super) async fn get(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(s.auth.get_user(&name).await?))
}

pub(super) async fn delete(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.auth.delete_user(&name).await?;
    tracing::info!(user = %name, by = %caller.user, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{name}/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Password {
    #[schema(schema_with = new_password)]
    password: String,
    /// The password now: required to change one's own (an admin setting another user's
    /// password gives none).
    #[serde(default)]
    current_password: Option<String>,
    /// Another user's password only (admins): temporary, to be changed at its next login.
    #[serde(default)]
    temporary: bool,
}

/// The answer to a password change.
#[derive(Serialize, ToSchema)]
pub(super) struct PasswordChanged {
    name: String,
    /// The user's API keys revoked with the change (all of them).
    revoked_keys: usize,
}

pub(super) async fn password(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<Password>, JsonRejection>,
) -> Response {
    let b = match json_body("password body", body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let revoked = if caller.user == name {
        if b.temporary {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a password you set for yourself cannot be temporary (temporary applies to another user's password)",
            )
            .into_response();
        }
        // One's own password, admins included: a stolen key alone must not be enough to take
        // the account over.
        let Some(current) = b.current_password.as_deref() else {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "changing your own password needs your current password (current_password)",
            )
            .into_response();
        };
        let source = source(&s, &headers, &peer).await;
        match s
            .auth
            .change_own_password(&name, current, &b.password, source)
            .await
        {
            Ok(n) => n,
            Err(LoginError::Auth(crate::auth::AuthError::BadCredentials)) => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the current password is wrong; the password was not changed",
                )
                .into_response()
            }
            Err(e) => return login_error(e),
        }
    } else {
        // Another user's: the route's role check let only an admin here.
        if caller.role != Role::Admin {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "forbidden: setting another user's password needs the role admin; user {} has the role {}",
                    caller.user, caller.role
                ),
            )
            .into_response();
        }
        match s
            .auth
            .set_password_with(&name, &b.password, b.temporary)
            .await
        {
            Ok(n) => n,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    tracing::info!(user = %name, by = %caller.user, revoked_keys = revoked, "password changed");
    Json(PasswordChanged {
        name,
        revoked_keys: revoked,
    })
    .into_response()
}
