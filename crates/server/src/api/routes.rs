//! The route table: every route of the API once, with its method, path, handler, who may call
//! it (open, or the least [`Role`] a key's user needs), what a standby does with it and the
//! types of what it takes and returns. A keyed route needs `admin` unless its entry says
//! otherwise, so a route added without thought is closed rather than open. The router
//! ([`super::router`]) and the document ([`super::openapi_document`]) are both built from it, so
//! neither can have a route the other lacks, and the document's schemas are derived from the
//! same types the handlers take and return.

use autogate_resources::model::Kind;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{self, MethodRouter};
use axum::Json;
use serde_json::Value;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

use super::{cluster, db, ha, jobs, node, openapi, resources, runs, users, ApiState};
use crate::auth::{IssuedKey, Role, UserView};
use autogate_automation::api_types::{ImportReport, RunResponse, UserList};
use autogate_automation::ServiceInfo;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No API key (health, the OpenAPI document, login, probes).
    Open,
    /// `Authorization: Bearer <key>`.
    Key,
}

/// What a route does with a standby's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// Answered by whichever node receives it (reads from the shared store, node-local state).
    Local,
    /// Sent on to the active node (writes and runs).
    Forward,
}

/// What a request or an answer carries, as the document describes it.
#[derive(Debug, Clone)]
pub enum Body {
    /// Nothing.
    Empty,
    /// `text/plain`.
    Text,
    /// `application/yaml`.
    Yaml,
    /// A JSON object of no documented shape.
    Object,
    /// JSON of a type's derived schema (see [`Body::json`]).
    Json(SchemaRef),
}

impl Body {
    /// JSON of type `T`: the document refers to `T`'s schema, derived from `T` itself.
    pub fn json<T: ToSchema>() -> Self {
        Body::Json(SchemaRef {
            name: T::name().into_owned(),
            collect: collect::<T>,
        })
    }
}

/// A schema of `components.schemas`.
#[derive(Debug, Clone)]
pub struct SchemaRef {
    pub name: String,
    /// Adds the schema and every schema it refers to.
    pub collect: fn(&mut Vec<(String, RefOr<Schema>)>),
}

fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

fn no_params() -> Vec<Parameter> {
    Vec::new()
}

/// The `Idempotency-Key` header of a run.
fn idempotency_key() -> Vec<Parameter> {
    vec![utoipa::openapi::path::ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(
            "1 to 255 visible ASCII characters naming one run: the same key with the same \
             service and body runs once and every request gets that run's answer (a repeat \
             while it runs waits for it); with another service or body, 422. Kept for \
             [connect] run_retention.",
        ))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .min_length(Some(1))
                .max_length(Some(255)),
        ))
        .build()]
}

fn query_params<Q: IntoParams>() -> Vec<Parameter> {
    Q::into_params(|| Some(ParameterIn::Query))
}

/// One route as the document and the tests see it (the handler aside).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// axum/OpenAPI path template (`/api/v1/services/{name}`).
    pub path: String,
    pub access: Access,
    /// The least role a caller needs (routes with [`Access::Key`]).
    pub role: Role,
    /// The route is about the user its `{name}` names: a user's own record needs only
    /// [`role`](Self::role), another user's needs `admin`.
    pub own: bool,
    /// The login: the node that receives it keeps the backoff of its caller's address, also
    /// when it forwards it to the active node (see `auth::login_guard`).
    pub login: bool,
    pub standby: Standby,
    pub tag: &'static str,
    pub summary: String,
    /// The query parameters, derived from the type the handler reads them into, and the
    /// request headers the handler reads (besides `Authorization`).
    pub query: fn() -> Vec<Parameter>,
    /// The request body.
    pub body: Body,
    /// Success status and what it returns.
    pub ok: (StatusCode, Body),
    /// The error statuses worth documenting.
    pub errors: &'static [StatusCode],
}

/// One route: its handler and its spec. Built with [`Route::get`], [`Route::post`] or
/// [`Route::delete`]; a route needs an API key and is answered locally unless it says
/// otherwise ([`Route::open`], [`Route::forwarded`]).
pub(super) struct Route {
    pub(super) spec: RouteSpec,
    pub(super) handler: MethodRouter<ApiState>,
}

impl Route {
    fn new(method: Method, path: impl Into<String>, handler: MethodRouter<ApiState>) -> Self {
        Route {
            spec: RouteSpec {
                method,
                path: path.into(),
                access: Access::Key,
                role: Role::Admin,
                own: false,
                login: false,
                standby: Standby::Local,
                tag: "",
                summary: String::new(),
                query: no_params,
                body: Body::Empty,
                ok: (StatusCode::OK, Body::Object),
                errors: &[],
            },
            handler,
        }
    }

    fn get<H: Handler<T, ApiState>, T: 'static>(path: impl Into<String>, handler: H) -> Self {
        Self::new(Method::GET, path, routing::get(handler))
    }

    fn post<H: Handler<T, ApiState>, T: 'static>(path: impl Into<String>, handler: H) -> Self {
        Self::new(Method::POST, path, routing::post(handler))
    }

    fn delete<H: Handler<T, ApiState>, T: 'static>(path: impl Into<String>, handler: H) -> Self {
        Self::new(Method::DELETE, path, routing::delete(handler))
    }

    /// Callable without an API key.
    fn open(mut self) -> Self {
        self.spec.access = Access::Open;
        self
    }

    /// The least role that may call it (every keyed route is `admin` unless it says this).
    fn role(mut self, role: Role) -> Self {
        self.spec.role = role;
        self
    }

    /// Readable by every user: `viewer`.
    fn read(self) -> Self {
        self.role(Role::Viewer)
    }

    /// About the user its `{name}` names: callable on one's own user with `role`, on
    /// another's by an admin only.
    fn own(mut self, role: Role) -> Self {
        self.spec.own = true;
        self.role(role)
    }

    /// The login route (see [`RouteSpec::login`]).
    fn login(mut self) -> Self {
        self.spec.login = true;
        self
    }

    /// A standby sends it on to the active node.
    fn forwarded(mut self) -> Self {
        self.spec.standby = Standby::Forward;
        self
    }

    /// Its group in the document and what it does.
    fn doc(mut self, tag: &'static str, summary: impl Into<String>) -> Self {
        self.spec.tag = tag;
        self.spec.summary = summary.into();
        self
    }

    /// Reads its query into `Q`.
    fn query<Q: IntoParams>(mut self) -> Self {
        self.spec.query = query_params::<Q>;
        self
    }

    /// Reads the parameters `params` gives (headers, which have no type to derive them from).
    fn params(mut self, params: fn() -> Vec<Parameter>) -> Self {
        self.spec.query = params;
        self
    }

    fn takes(mut self, body: Body) -> Self {
        self.spec.body = body;
        self
    }

    fn returns(mut self, status: StatusCode, body: Body) -> Self {
        self.spec.ok = (status, body);
        self
    }

    fn errors(mut self, errors: &'static [StatusCode]) -> Self {
        self.spec.errors = errors;
        self
    }
}

use StatusCode as S;

const READ_ERRORS: &[StatusCode] = &[S::UNAUTHORIZED, S::NOT_FOUND, S::SERVICE_UNAVAILABLE];
const WRITE_ERRORS: &[StatusCode] = &[
    S::BAD_REQUEST,
    S::UNAUTHORIZED,
    S::FORBIDDEN,
    S::CONFLICT,
    S::UNPROCESSABLE_ENTITY,
    S::SERVICE_UNAVAILABLE,
];

/// Every route of the API, in the order the document lists them.
pub(super) fn table() -> Vec<Route> {
    use Body::{Empty, Object, Text, Yaml};
    let mut t = vec![
        Route::get("/api/v1/health", node::health)
            .open()
            .doc(
                "node",
                "Who this node is: id, cluster, store, manager link and HA role",
            )
            .returns(S::OK, Body::json::<node::Health>()),
        Route::get("/healthz", node::healthz)
            .open()
            .doc("node", "Liveness: the process answers")
            .returns(S::OK, Text),
        Route::get("/readyz", node::readyz)
            .open()
            .doc("node", "Readiness: the store answers")
            .returns(S::OK, Text)
            .errors(&[S::SERVICE_UNAVAILABLE]),
        Route::get("/metrics", node::metrics)
            .open()
            .doc("node", "Prometheus metrics (OpenMetrics text)")
            .returns(S::OK, Text),
        Route::get("/api/v1/openapi.json", openapi::serve)
            .open()
            .doc("node", "This document")
            .returns(S::OK, Object),
        Route::post("/api/v1/login", users::login)
            .open()
            .login()
            .forwarded()
            .doc("users", "Exchange a user name and password for an API key")
            .takes(Body::json::<users::Login>())
            .returns(S::OK, Body::json::<IssuedKey>())
            .errors(&[
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::FORBIDDEN,
                S::UNPROCESSABLE_ENTITY,
                S::TOO_MANY_REQUESTS,
                S::SERVICE_UNAVAILABLE,
            ]),
        Route::post("/api/v1/logout", users::logout)
            .read()
            .forwarded()
            .doc("users", "Revoke the API key of this request")
            .returns(S::NO_CONTENT, Empty)
            .errors(&[S::UNAUTHORIZED, S::SERVICE_UNAVAILABLE]),
        Route::get("/api/v1/users", users::list)
            .doc("users", "List users")
            .returns(S::OK, Body::json::<UserList>())
            .errors(&[S::UNAUTHORIZED, S::SERVICE_UNAVAILABLE]),
        Route::post("/api/v1/users", users::create)
            .forwarded()
            .doc("users", "Create a user (an operator unless a role is given)")
            .takes(Body::json::<users::NewUser>())
            .returns(S::CREATED, Body::json::<UserView>())
            .errors(&[
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::CONFLICT,
                S::UNPROCESSABLE_ENTITY,
                S::SERVICE_UNAVAILABLE,
            ]),
        Route::get("/api/v1/users/{name}", users::get)
            .own(Role::Viewer)
            .doc("users", "One user")
            .returns(S::OK, Body::json::<UserView>())
            .errors(READ_ERRORS),
        Route::delete("/api/v1/users/{name}", users::delete)
            .forwarded()
            .doc("users", "Delete a user and revoke its API keys")
            .returns(S::NO_CONTENT, Empty)
            .errors(&[
                S::UNAUTHORIZED,
                S::NOT_FOUND,
                S::CONFLICT,
                S::SERVICE_UNAVAILABLE,
            ]),
        Route::post("/api/v1/users/{name}/password", users::password)
            .own(Role::Viewer)
            .forwarded()
            .doc(
                "users",
                "Set a user's password (one's own: with the current one; another's: admins); revokes every API key of that user",
            )
            .takes(Body::json::<users::Password>())
            .returns(S::OK, Body::json::<users::PasswordChanged>())
            .errors(&[
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::FORBIDDEN,
                S::NOT_FOUND,
                S::UNPROCESSABLE_ENTITY,
                S::TOO_MANY_REQUESTS,
                S::SERVICE_UNAVAILABLE,
            ]),
    ];
    for kind in Kind::ALL {
        t.extend(resource_routes(kind));
    }
    t.extend([
        Route::post("/api/v1/services/{name}/run", runs::run)
            .role(Role::Operator)
            .forwarded()
            .doc(
                "services",
                "Run a service and wait for its result; once per Idempotency-Key",
            )
            .params(idempotency_key)
            .takes(Body::json::<runs::RunBody>())
            .returns(S::OK, Body::json::<RunResponse>())
            .errors(&[
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::FORBIDDEN,
                S::NOT_FOUND,
                S::UNPROCESSABLE_ENTITY,
                S::INTERNAL_SERVER_ERROR,
                S::SERVICE_UNAVAILABLE,
            ]),
        Route::get("/api/v1/jobs/{id}", jobs::job)
            .read()
            .doc(
                "services",
                "A job (distributed execution): its record, and its result or error once it ended; with wait=true, waits for the end",
            )
            .query::<jobs::JobQuery>()
            .returns(S::OK, Object)
            .errors(&[S::UNAUTHORIZED, S::NOT_FOUND, S::SERVICE_UNAVAILABLE]),
        Route::get("/api/v1/services/{name}/inputs", runs::inputs)
            .read()
            .doc(
                "services",
                "The inputs a service expects: its catalog entry with the decorator's schema",
            )
            .returns(S::OK, Body::json::<ServiceInfo>())
            .errors(READ_ERRORS),
        Route::get("/api/v1/db/export", db::export)
            .doc(
                "db",
                "Every resource as the import file, YAML or JSON (query: format; secrets sealed)",
            )
            .query::<db::ExportQuery>()
            .returns(S::OK, Yaml)
            .errors(&[S::BAD_REQUEST, S::UNAUTHORIZED, S::SERVICE_UNAVAILABLE]),
        Route::post("/api/v1/db/import", db::import)
            .forwarded()
            .doc(
                "db",
                "Import a YAML or JSON resource file, all or nothing (query: check, force, validate)",
            )
            .query::<db::ImportQuery>()
            .takes(Yaml)
            .returns(S::OK, Body::json::<ImportReport>())
            .errors(&[
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::FORBIDDEN,
                S::CONFLICT,
                S::UNPROCESSABLE_ENTITY,
                S::SERVICE_UNAVAILABLE,
            ]),
        Route::get("/api/v1/runners", cluster::runners)
            .read()
            .doc("cluster", "Registered runners with their load and status")
            .returns(S::OK, Object)
            .errors(&[S::UNAUTHORIZED, S::SERVICE_UNAVAILABLE]),
        Route::get("/api/v1/cluster/activity", cluster::activity)
            .read()
            .doc("cluster", "Retained jobs of the cluster, newest first")
            .returns(S::OK, Object)
            .errors(&[S::UNAUTHORIZED, S::SERVICE_UNAVAILABLE]),
        Route::get("/api/v1/cluster/health", cluster::health)
            .read()
            .doc(
                "cluster",
                "Health of the cluster: store, core nodes, runners, manager link",
            )
            .returns(S::OK, Object)
            .errors(&[S::UNAUTHORIZED]),
        Route::get("/api/v1/ha/status", ha::status)
            .read()
            .doc("ha", "This node's view of the election")
            .returns(S::OK, Object)
            .errors(&[S::UNAUTHORIZED, S::CONFLICT]),
        Route::post("/api/v1/ha/switchover", ha::switchover)
            .doc("ha", "Planned hand-over by the active node")
            .takes(Body::json::<ha::Switchover>())
            .returns(S::ACCEPTED, Body::json::<ha::SwitchoverAccepted>())
            .errors(&[S::UNAUTHORIZED, S::CONFLICT, S::SERVICE_UNAVAILABLE]),
        Route::post("/api/v1/ha/pause", ha::pause)
            .doc(
                "ha",
                "Stop standing for election (an active node hands over first)",
            )
            .returns(S::ACCEPTED, Body::json::<ha::Paused>())
            .errors(&[S::UNAUTHORIZED, S::CONFLICT]),
        Route::post("/api/v1/ha/resume", ha::resume)
            .doc("ha", "Stand for election again")
            .returns(S::ACCEPTED, Body::json::<ha::Paused>())
            .errors(&[S::UNAUTHORIZED, S::CONFLICT]),
    ]);
    t.extend(hostkey_routes());
    t
}

/// The cluster's known SSH hosts: readable by every user; the writes change what every node
/// trusts, so they are forwarded to the active node and keep the table's default role, admin.
fn hostkey_routes() -> [Route; 4] {
    use super::hostkeys;
    [
        Route::get("/api/v1/hostkeys", hostkeys::list)
            .read()
            .doc("hostkeys", "The SSH host keys checkouts trust")
            .returns(S::OK, Body::json::<hostkeys::HostKeyList>())
            .errors(&[S::UNAUTHORIZED, S::FORBIDDEN, S::SERVICE_UNAVAILABLE]),
        Route::post("/api/v1/hostkeys", hostkeys::add)
            .forwarded()
            .doc(
                "hostkeys",
                "Trust a host key (409 when the host has another key of that type, unless replace)",
            )
            .takes(Body::json::<hostkeys::AddHostKey>())
            .returns(S::CREATED, Body::json::<hostkeys::HostKeysAdded>())
            .errors(WRITE_ERRORS),
        Route::post("/api/v1/hostkeys/scan", hostkeys::scan)
            .forwarded()
            .doc(
                "hostkeys",
                "Ask hosts for their keys (ssh-keyscan from the active node) and trust them",
            )
            .takes(Body::json::<hostkeys::ScanHosts>())
            .returns(S::OK, Body::json::<hostkeys::ScanAnswer>())
            .errors(WRITE_ERRORS),
        Route::delete("/api/v1/hostkeys/{host}", hostkeys::delete)
            .forwarded()
            .doc("hostkeys", "Forget every key of a host")
            .returns(S::NO_CONTENT, Body::Empty)
            .errors(&[
                S::UNAUTHORIZED,
                S::FORBIDDEN,
                S::NOT_FOUND,
                S::SERVICE_UNAVAILABLE,
            ]),
    ]
}

/// List, create, get and delete of one resource kind.
fn resource_routes(kind: Kind) -> [Route; 4] {
    let p = kind.plural();
    let base = format!("/api/v1/{p}");
    let one = format!("{base}/{{name}}");
    let create_body = if kind == Kind::Secret {
        Body::json::<resources::SecretInput>()
    } else {
        Body::json::<resources::Resource>()
    };
    [
        Route::get(base.clone(), move |s: State<ApiState>| {
            resources::list(s, kind)
        })
        .read()
        .doc("resources", format!("List {p}"))
        .returns(S::OK, Body::json::<resources::ResourceList>())
        .errors(&[S::UNAUTHORIZED, S::FORBIDDEN, S::SERVICE_UNAVAILABLE]),
        Route::post(
            base,
            move |s: State<ApiState>, b: Result<Json<Value>, JsonRejection>| {
                resources::create(s, b, kind)
            },
        )
        .forwarded()
        .doc("resources", format!("Create a {kind}"))
        .takes(create_body)
        .returns(S::CREATED, Body::json::<resources::Resource>())
        .errors(WRITE_ERRORS),
        Route::get(one.clone(), move |s: State<ApiState>, n: Path<String>| {
            resources::get(s, n, kind)
        })
        .read()
        .doc("resources", format!("One {kind}"))
        .returns(S::OK, Body::json::<resources::Resource>())
        .errors(READ_ERRORS),
        Route::delete(one, move |s: State<ApiState>, n: Path<String>| {
            resources::delete(s, n, kind)
        })
        .forwarded()
        .doc(
            "resources",
            format!("Delete a {kind} (refused while others name it)"),
        )
        .returns(S::NO_CONTENT, Body::Empty)
        .errors(&[
            S::UNAUTHORIZED,
            S::NOT_FOUND,
            S::CONFLICT,
            S::SERVICE_UNAVAILABLE,
        ]),
    ]
}

/// The route table without handlers (the OpenAPI document and tests read it).
pub fn route_specs() -> Vec<RouteSpec> {
    table().into_iter().map(|r| r.spec).collect()
}
