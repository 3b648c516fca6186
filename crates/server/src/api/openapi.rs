//! The OpenAPI 3.1 document of the route table (`GET /api/v1/openapi.json`).

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::routes::{route_specs, Access, Body, Standby};

pub(super) async fn serve() -> Json<Value> {
    Json(openapi_document())
}

fn content(body: &Body) -> Option<Value> {
    Some(match body {
        Body::Empty => return None,
        Body::Text => json!({ "text/plain": { "schema": { "type": "string" } } }),
        Body::Yaml => json!({ "application/yaml": { "schema": { "type": "string" } } }),
        Body::Object => json!({ "application/json": { "schema": { "type": "object" } } }),
        Body::Json(name) => json!({
            "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } }
        }),
    })
}

fn status_text(code: StatusCode) -> &'static str {
    match code.as_u16() {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "The body is not JSON/YAML at all",
        401 => "Missing, unknown or expired API key",
        403 => "Disabled by configuration",
        404 => "No such resource",
        409 => "Conflict: exists already, still in use, or not possible in this state",
        415 => "Wrong content type",
        422 => "Invalid request: the message names what is wrong",
        500 => "The node failed or is misconfigured for this request",
        503 => "Not this node's to do now: no active node, store unavailable, fenced",
        _ => "",
    }
}

/// The OpenAPI 3.1 document of the route table.
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for spec in route_specs() {
        let method = spec.method.as_str().to_ascii_lowercase();
        let mut op = Map::new();
        op.insert("summary".into(), json!(spec.summary));
        op.insert("tags".into(), json!([spec.tag]));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{method}{}",
                spec.path
                    .replace(['/', '-', '.'], "_")
                    .replace(['{', '}'], "")
            )),
        );
        let params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .chain(
                (spec.path == "/api/v1/db/import")
                    .then(|| {
                        ["check", "force"].map(|q| {
                            json!({ "name": q, "in": "query", "required": false, "schema": { "type": "boolean", "default": false } })
                        })
                    })
                    .into_iter()
                    .flatten(),
            )
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = content(&spec.body) {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": body }),
            );
        }
        let mut responses = Map::new();
        let (code, what) = &spec.ok;
        let mut ok = json!({ "description": status_text(*code) });
        if let Some(body) = content(what) {
            ok["content"] = body;
        }
        responses.insert(code.as_u16().to_string(), ok);
        for e in spec.errors {
            responses.insert(
                e.as_u16().to_string(),
                json!({ "description": status_text(*e), "content": content(&Body::Json("Error")) }),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        if spec.access == Access::Open {
            op.insert("security".into(), json!([]));
        }
        if spec.standby == Standby::Forward {
            op.insert(
                "description".into(),
                json!("On a standby core node this request is forwarded to the active node."),
            );
        }
        let entry = paths
            .entry(spec.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(method, Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "autogate core node API",
            "version": autogate_runtime::VERSION,
            "description": "Operator API of an autogate core node. Every /api/v1 route except health, openapi.json and login needs `Authorization: Bearer <API key>` from POST /api/v1/login."
        },
        "paths": paths,
        "security": [{ "apiKey": [] }],
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        }
    })
}

fn schemas() -> Value {
    let str_ = json!({ "type": "string" });
    json!({
        "Error": {
            "type": "object", "required": ["error"],
            "properties": { "error": str_, "detail": { "type": "object" } }
        },
        "Health": { "type": "object", "properties": {
            "node_id": str_, "cluster_id": str_, "mode": str_, "store": str_, "version": str_,
            "manager": { "type": "object" }, "ha": { "type": ["object", "null"] } } },
        "Login": { "type": "object", "required": ["username", "password"],
            "properties": { "username": str_, "password": str_ }, "additionalProperties": false },
        "ApiKey": { "type": "object", "properties": {
            "api_key": str_, "expires_at": { "type": "string", "format": "date-time" } } },
        "NewUser": { "type": "object", "required": ["name", "password"],
            "properties": { "name": str_, "password": { "type": "string", "minLength": crate::auth::MIN_PASSWORD_LEN } },
            "additionalProperties": false },
        "Password": { "type": "object", "required": ["password"],
            "properties": { "password": { "type": "string", "minLength": crate::auth::MIN_PASSWORD_LEN } },
            "additionalProperties": false },
        "PasswordChanged": { "type": "object", "properties": { "name": str_, "revoked_keys": { "type": "integer" } } },
        "User": { "type": "object", "properties": {
            "name": str_, "created": str_, "last_login": { "type": ["string", "null"] },
            "password_changed": { "type": ["string", "null"] } } },
        "UserList": { "type": "object", "properties": { "users": { "type": "array", "items": { "$ref": "#/components/schemas/User" } } } },
        "Resource": { "type": "object", "required": ["name"], "description": "A resource in the family's kebab-case shape, as in the import file",
            "properties": { "name": str_, "description": str_, "tags": { "type": "array", "items": str_ } } },
        "SecretInput": { "type": "object", "required": ["name", "value"], "additionalProperties": false,
            "properties": { "name": str_, "value": { "type": "string", "description": "plaintext; sealed by the node, never returned" },
                "description": str_, "tags": { "type": "array", "items": str_ } } },
        "ResourceList": { "type": "object", "description": "{\"<plural>\": [resources]}", "additionalProperties": { "type": "array", "items": { "$ref": "#/components/schemas/Resource" } } },
        "RunRequest": { "type": "object", "additionalProperties": false, "properties": {
            "type": { "type": "string", "enum": ["python-script", "ansible-playbook", "opentofu-plan", "executable"] },
            "inputs": { "type": "object" },
            "set": { "type": "array", "items": { "type": "string", "description": "k=v" } },
            "action": { "type": "string", "enum": ["apply", "destroy"] },
            "state": {} } },
        "RunResponse": { "type": "object", "properties": {
            "status": { "const": "completed" },
            "result": { "type": "object", "properties": {
                "stdout": str_, "stderr": str_, "return_code": { "type": "integer" },
                "start_time": str_, "end_time": str_, "elapsed_time": str_,
                "stdout_json": {}, "timed_out": { "type": "boolean" }, "state": {} } } } },
        "ServiceInfo": { "type": "object", "properties": {
            "name": str_, "type": str_, "description": str_, "tags": { "type": "array", "items": str_ },
            "repository": str_, "working_directory": str_, "decorator": str_, "schema": { "type": "object" } } },
        "ImportReport": { "type": "object", "properties": {
            "items": { "type": "array", "items": { "type": "object", "properties": {
                "kind": str_, "name": str_, "outcome": { "type": "string", "enum": ["add", "conflict", "replacement"] } } } },
            "written": { "type": "boolean" } } },
        "Switchover": { "type": "object", "properties": { "to": str_ }, "additionalProperties": false },
    })
}
