//! Users and API keys: login, and the users' list, creation, deletion and password change.

use autogate_automation::api_types::UserList;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;

use super::error::json_body;
use super::{ApiResult, ApiState};
use crate::auth::{IssuedKey, UserView, MIN_PASSWORD_LEN};

/// A new password: the schema carries the length the node enforces.
fn new_password() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(MIN_PASSWORD_LEN))
        .build()
}

/// `POST /api/v1/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    username: String,
    password: String,
}

pub(super) async fn login(
    State(s): State<ApiState>,
    body: Result<Json<Login>, JsonRejection>,
) -> ApiResult<Json<IssuedKey>> {
    let b = json_body("login body", body)?;
    let issued = s.auth.login(&b.username, &b.password).await?;
    tracing::info!(user = %b.username, "user logged in");
    Ok(Json(issued))
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
}

pub(super) async fn create(
    State(s): State<ApiState>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let b = json_body("user body", body)?;
    let user = s.auth.create_user(&b.name, &b.password).await?;
    tracing::info!(user = %b.name, "user created");
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
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.auth.delete_user(&name).await?;
    tracing::info!(user = %name, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{name}/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Password {
    #[schema(schema_with = new_password)]
    password: String,
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
    Path(name): Path<String>,
    body: Result<Json<Password>, JsonRejection>,
) -> ApiResult<Json<PasswordChanged>> {
    let b = json_body("password body", body)?;
    let revoked = s.auth.set_password(&name, &b.password).await?;
    tracing::info!(user = %name, revoked_keys = revoked, "password changed");
    Ok(Json(PasswordChanged {
        name,
        revoked_keys: revoked,
    }))
}
