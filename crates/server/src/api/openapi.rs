//! The OpenAPI 3.1 document of the route table (`GET /api/v1/openapi.json`), built with
//! `utoipa`: the operations come from the table, their schemas are derived from the types the
//! handlers take and return, and every schema those refer to is collected into
//! `components.schemas`.
//!
//! Each keyed operation's security requirement lists the least role it needs (OpenAPI 3.1 lets
//! a non-OAuth scheme name the roles an operation requires), and its description says it in
//! words; `x-autogate-role` carries it for tools.

use axum::http::{Method, StatusCode};
use axum::Json;
use serde_json::Value;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, ObjectBuilder, OpenApiBuilder, Paths, Ref, RefOr,
    Required, ResponseBuilder, Schema, Type,
};

use super::error::ErrorBody;
use super::routes::{route_specs, Access, Body, RouteSpec, Standby};

/// The security scheme every route needs unless it is open.
const API_KEY: &str = "apiKey";

pub(super) async fn serve() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 document of the route table.
pub fn openapi_document() -> Value {
    let mut paths = Paths::new();
    let mut schemas = Vec::new();
    let error = Body::json::<ErrorBody>();
    collect(&error, &mut schemas);
    for spec in route_specs() {
        let Some(method) = http_method(&spec.method) else {
            // Not a method OpenAPI knows: the document and the router would differ, which the
            // tests catch.
            continue;
        };
        collect(&spec.body, &mut schemas);
        collect(&spec.ok.1, &mut schemas);
        paths.add_path_operation(&spec.path, vec![method], operation(&spec, &error));
    }
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            API_KEY,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("autogate core node API")
                .version(autogate_runtime::VERSION)
                .description(Some(
                    "Operator API of an autogate core node. Every /api/v1 route except health, openapi.json and login needs `Authorization: Bearer <API key>` from POST /api/v1/login, and a user whose role is at least the one the operation names (viewer < operator < admin); a user with a lesser role gets 403 naming the role needed.",
                )),
        )
        .paths(paths)
        .components(Some(components))
        .security(Some([SecurityRequirement::new(API_KEY, Vec::<String>::new())]))
        .build();
    serde_json::to_value(&doc).unwrap_or(Value::Null)
}

fn operation(spec: &RouteSpec, error: &Body) -> Operation {
    let method = spec.method.as_str().to_ascii_lowercase();
    let path_params = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build()
        });
    let params: Vec<_> = path_params.chain((spec.query)()).collect();
    let mut op = OperationBuilder::new()
        .summary(Some(spec.summary.clone()))
        .tag(spec.tag)
        .operation_id(Some(format!(
            "{method}{}",
            spec.path
                .replace(['/', '-', '.'], "_")
                .replace(['{', '}'], "")
        )));
    if !params.is_empty() {
        op = op.parameters(Some(params));
    }
    if let Some((content_type, content)) = content(&spec.body) {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .content(content_type, content)
                .required(Some(Required::True))
                .build(),
        ));
    }
    let (code, body) = &spec.ok;
    let mut ok = ResponseBuilder::new().description(status_text(*code));
    if let Some((content_type, content)) = content(body) {
        ok = ok.content(content_type, content);
    }
    op = op.response(code.as_u16().to_string(), ok.build());
    for e in spec.errors {
        let mut answer = ResponseBuilder::new().description(status_text(*e));
        if let Some((content_type, content)) = content(error) {
            answer = answer.content(content_type, content);
        }
        op = op.response(e.as_u16().to_string(), answer.build());
    }
    let mut description = Vec::new();
    match spec.access {
        Access::Open => {
            op = op.securities(Some(Vec::<SecurityRequirement>::new()));
            description.push("Open: no API key.".to_owned());
        }
        Access::Key => {
            op = op.securities(Some([SecurityRequirement::new(
                API_KEY,
                [spec.role.as_str()],
            )]));
            description.push(if spec.own {
                format!(
                    "Role: {} for one's own user, admin for another user's.",
                    spec.role
                )
            } else {
                format!("Role: {} or above.", spec.role)
            });
        }
    }
    if spec.standby == Standby::Forward {
        description
            .push("On a standby core node this request is forwarded to the active node.".into());
    }
    op = op.description(Some(description.join(" ")));
    let mut op = op.build();
    if spec.access == Access::Key {
        let mut ext = utoipa::openapi::extensions::Extensions::default();
        ext.insert("x-autogate-role".to_owned(), spec.role.as_str().into());
        if spec.own {
            // A user's own record needs `x-autogate-role`; another user's needs admin.
            ext.insert("x-autogate-own-user".to_owned(), true.into());
        }
        op.extensions = Some(ext);
    }
    op
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

/// The schemas a body refers to.
fn collect(body: &Body, schemas: &mut Vec<(String, RefOr<Schema>)>) {
    if let Body::Json(schema) = body {
        (schema.collect)(schemas);
    }
}

/// The content type and content of a body (`None`: no body).
fn content(body: &Body) -> Option<(&'static str, Content)> {
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    Some(match body {
        Body::Empty => return None,
        Body::Text => ("text/plain", Content::new(Some(string()))),
        Body::Yaml => ("application/yaml", Content::new(Some(string()))),
        Body::Object => (
            "application/json",
            Content::new(Some(ObjectBuilder::new().schema_type(Type::Object).build())),
        ),
        Body::Json(schema) => (
            "application/json",
            Content::new(Some(Ref::from_schema_name(schema.name.clone()))),
        ),
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
        403 => "Forbidden: the caller's role is not enough (the message names the role needed), or disabled by configuration",
        404 => "No such resource",
        409 => "Conflict: exists already, still in use, or not possible in this state",
        415 => "Wrong content type",
        422 => "Invalid request: the message names what is wrong",
        429 => "Too many failed logins from this address or for this user: retry after Retry-After",
        500 => "The node failed or is misconfigured for this request",
        503 => "Not this node's to do now: no active node, store unavailable, fenced; or every password-hashing slot is busy (Retry-After)",
        _ => "",
    }
}
