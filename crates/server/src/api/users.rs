//! Users and API keys: login, and the users' list, creation, deletion and password change.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::json_body;
use super::{ApiResult, ApiState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    username: String,
    password: String,
}

pub(super) async fn login(
    State(s): State<ApiState>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let b = json_body("login body", body)?;
    let issued: crate::auth::IssuedKey = s.auth.login(&b.username, &b.password).await?;
    tracing::info!(user = %b.username, "user logged in");
    Ok(Json(json!(issued)))
}

pub(super) async fn list(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let users: Vec<crate::auth::UserView> = s.auth.list_users().await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    password: String,
}

pub(super) async fn create(
    State(s): State<ApiState>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b = json_body("user body", body)?;
    let user: crate::auth::UserView = s.auth.create_user(&b.name, &b.password).await?;
    tracing::info!(user = %b.name, "user created");
    Ok((StatusCode::CREATED, Json(json!(user))))
}

pub(super) async fn get(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let user: crate::auth::UserView = s.auth.get_user(&name).await?;
    Ok(Json(json!(user)))
}

pub(super) async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.auth.delete_user(&name).await?;
    tracing::info!(user = %name, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    password: String,
}

pub(super) async fn password(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<PasswordBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let b = json_body("password body", body)?;
    let revoked: usize = s.auth.set_password(&name, &b.password).await?;
    tracing::info!(user = %name, revoked_keys = revoked, "password changed");
    Ok(Json(json!({ "name": name, "revoked_keys": revoked })))
}
