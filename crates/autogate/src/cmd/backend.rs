//! Where the resource, run and db commands send their work, chosen by `[application] mode`:
//! `local` (the default) works in-process on the embedded store through the
//! [`Automation`] facade, with no server and no login, as in the family's local mode; `client`
//! talks to a core node's API through [`ApiClient`]. A `server` or `runner` configuration used
//! with a CLI command talks to the configured `[client]` host as well: the process is not that
//! node, and opening the node's store file beside a running node would fail or, with etcd,
//! bypass its fencing.
//!
//! Both sides offer the same async methods and return [`Failure`]s with the same exit codes, so
//! every command is written once.

use std::path::Path;
use std::time::Duration;

use autogate_automation::api_types::{ImportReport, RunResponse};
use autogate_automation::{Automation, AutomationError, ErrorClass, RunRequest, ServiceInfo};
use autogate_config::{Config, Mode, Role};
use autogate_exec::{ExecError, RunResult};
use autogate_resources::model::Kind;
use autogate_resources::ImportMode;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, UNAVAILABLE};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

/// Exit code of a run interrupted by the operator (the shell's 128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

/// One of the two ways to reach the resources.
#[derive(Debug)]
pub enum Backend {
    /// In-process, on this machine's embedded store.
    Local(Automation),
    /// Through a core node's operator API.
    Remote(ApiClient),
}

/// Whether this configuration makes CLI commands work in-process.
pub fn is_local(config: &Config) -> bool {
    config.application.mode == Mode::Local
}

/// Loads the configuration for a client-side command (validated for the mode it implies).
pub fn load(global: &Global) -> Result<Config, Failure> {
    let config = super::load_config(global, None)?;
    if !is_local(&config) {
        config.validate_for(Role::Client)?;
    } else if let Some(p) = &global.profile {
        // A profile names a remote node: acting on the local store instead would let an
        // operator believe a change reached that node.
        return Err(Failure::new(
            USAGE,
            format!(
                "--profile {p}: profiles select a [client:<name>] core node and apply in client mode only, \
                 but [application] mode is local (set GATEWAY_APPLICATION_MODE=client)"
            ),
        ));
    }
    if global.verbose {
        match config.file() {
            Some(p) => eprintln!("using configuration file {}", p.display()),
            None => eprintln!("no configuration file: defaults and environment"),
        }
    }
    Ok(config)
}

/// Loads the configuration of a command that exists only against a core node (`ha`, `login`,
/// the users commands). Client mode (or a server or runner configuration) names the node in
/// `[client]`; in local mode a `--profile` names one too, and as these commands have no local
/// meaning it cannot be mistaken for the local store. Local mode without a profile has no node
/// to talk to, and saying how to name one is the only useful answer.
pub fn load_for_node(global: &Global, what: &str) -> Result<Config, Failure> {
    load_for_node_or(global, || needs_node(what))
}

/// [`load_for_node`] with the command's own answer in local mode.
pub fn load_for_node_or(
    global: &Global,
    in_local_mode: impl FnOnce() -> Failure,
) -> Result<Config, Failure> {
    let config = super::load_config(global, None)?;
    if is_local(&config) && global.profile.is_none() {
        return Err(in_local_mode());
    }
    config.validate_for(Role::Client)?;
    if global.verbose {
        match config.file() {
            Some(p) => eprintln!("using configuration file {}", p.display()),
            None => eprintln!("no configuration file: defaults and environment"),
        }
    }
    Ok(config)
}

/// Runs `f` with a client of the core node a node-only command talks to (see
/// [`load_for_node`]).
pub fn with_node<T>(
    global: &Global,
    what: &str,
    f: impl AsyncFnOnce(&ApiClient, &Config) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config = load_for_node(global, what)?;
    let client = ApiClient::from_config(&config, global)?;
    if global.verbose {
        eprintln!("talking to the core node at {}", client.base());
    }
    let rt = super::runtime()?;
    rt.block_on(f(&client, &config))
}

/// What a core-node command says in local mode: which settings name a node, and the login
/// that comes next.
pub fn needs_node(what: &str) -> Failure {
    Failure::new(
        USAGE,
        format!(
            "{what} talks to a core node, and in local mode (the default [application] mode) \
             the CLI works on this machine's store without one. Name a node: set \
             GATEWAY_APPLICATION_MODE=client (and GATEWAY_CLIENT_HOST/GATEWAY_CLIENT_PORT, \
             default 127.0.0.1:50051), or pass --profile NAME for a [client:NAME] section; \
             then log in to it with `autogate login USER`"
        ),
    )
}

impl Backend {
    /// Opens the backend the configuration asks for. Local mode opens the store (and seeds the
    /// built-in registries on first use); client mode only builds the HTTP client.
    pub async fn open(config: &Config, global: &Global) -> Result<Backend, Failure> {
        if !is_local(config) {
            let client = ApiClient::from_config(config, global)?;
            if global.verbose {
                eprintln!("talking to the core node at {}", client.base());
            }
            return Ok(Backend::Remote(client));
        }
        let store = autogate_server::open_store(config)
            .await
            .map_err(|e| store_failure(&config.application.working_dir, e))?;
        if global.verbose {
            eprintln!(
                "local mode: {} store in {}",
                store.backend(),
                config.application.working_dir.display()
            );
        }
        let automation = Automation::from_config(config, store);
        automation.ensure_builtins().await.map_err(failure)?;
        Ok(Backend::Local(automation))
    }

    pub async fn create(&self, kind: Kind, body: Value) -> Result<Value, Failure> {
        match self {
            Backend::Local(a) => a.create(kind, body).await.map_err(failure),
            Backend::Remote(c) => {
                c.call(
                    Method::POST,
                    &format!("/api/v1/{}", kind.plural()),
                    Some(&body),
                )
                .await
            }
        }
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Value, Failure> {
        match self {
            Backend::Local(a) => a.get(kind, name).await.map_err(failure),
            Backend::Remote(c) => c.call(Method::GET, &item_path(kind, name), None).await,
        }
    }

    pub async fn list(&self, kind: Kind) -> Result<Vec<Value>, Failure> {
        match self {
            Backend::Local(a) => a.list(kind).await.map_err(failure),
            Backend::Remote(c) => {
                let v = c
                    .call(Method::GET, &format!("/api/v1/{}", kind.plural()), None)
                    .await?;
                list_of(v, kind.plural())
            }
        }
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), Failure> {
        match self {
            Backend::Local(a) => a.delete(kind, name).await.map_err(failure),
            Backend::Remote(c) => c
                .call(Method::DELETE, &item_path(kind, name), None)
                .await
                .map(|_| ()),
        }
    }

    /// The inputs a service expects (its catalog entry with the decorator's schema).
    pub async fn describe_inputs(&self, name: &str) -> Result<ServiceInfo, Failure> {
        match self {
            Backend::Local(a) => a.describe_inputs(name).await.map_err(failure),
            Backend::Remote(c) => {
                let v = c
                    .call(
                        Method::GET,
                        &format!("/api/v1/services/{}/inputs", segment(name)),
                        None,
                    )
                    .await?;
                serde_json::from_value(v).map_err(unexpected)
            }
        }
    }

    /// Runs a service to completion. Local runs stop (and their process group is killed) when
    /// `cancel` fires; a remote run goes on on the node when the CLI is interrupted. A remote
    /// run carries a fresh `Idempotency-Key` and is sent again under it while the node cannot
    /// be reached or the connection breaks (a node restarting): the node runs it once,
    /// whichever attempt got through, and answers a repeat from that run.
    pub async fn run(
        &self,
        req: &RunRequest,
        cancel: &CancellationToken,
    ) -> Result<RunResult, Failure> {
        match self {
            Backend::Local(a) => a.run(req, cancel).await.map_err(|e| match e {
                AutomationError::Exec(ExecError::Cancelled) => Failure::new(
                    INTERRUPTED,
                    format!(
                        "run of service {} cancelled: the program and its children were killed",
                        req.service
                    ),
                ),
                other => failure(other),
            }),
            Backend::Remote(c) => {
                let mut body = serde_json::Map::new();
                if let Some(t) = req.service_type {
                    body.insert("type".into(), json!(t.as_str()));
                }
                if !req.inputs.is_empty() {
                    body.insert("inputs".into(), Value::Object(req.inputs.clone()));
                }
                if !req.set.is_empty() {
                    body.insert("set".into(), json!(req.set));
                }
                if let Some(a) = req.action {
                    body.insert("action".into(), json!(a));
                }
                if let Some(s) = &req.state {
                    body.insert("state".into(), s.clone());
                }
                if !req.secrets.is_empty() {
                    body.insert("secrets".into(), json!(req.secrets));
                }
                let path = format!("/api/v1/services/{}/run", segment(&req.service));
                let body = Value::Object(body);
                // A UUID v7, from the generator job ids use.
                let key = autogate_jobs::model::new_job_id();
                let v =
                    resend_unanswered(RUN_RETRY, || c.call_keyed(Method::POST, &path, &body, &key))
                        .await?;
                // A run that failed is an error answer, which `call` has turned into a Failure.
                let answer: RunResponse = serde_json::from_value(v).map_err(|e| {
                    Failure::new(
                        FAILURE,
                        format!("unexpected run result from the core node: {e}"),
                    )
                })?;
                Ok(answer.result)
            }
        }
    }

    /// Every resource as the import YAML file.
    pub async fn export(&self) -> Result<String, Failure> {
        match self {
            Backend::Local(a) => a.export().await.map_err(failure),
            Backend::Remote(c) => c.call_text(Method::GET, "/api/v1/db/export", None).await,
        }
    }

    /// Imports a YAML file all-or-nothing; the report as the API answers it.
    pub async fn import(&self, yaml: String, mode: ImportMode) -> Result<ImportReport, Failure> {
        match self {
            Backend::Local(a) => a
                .import(&yaml, mode)
                .await
                .map(ImportReport::from)
                .map_err(failure),
            Backend::Remote(c) => {
                let path = format!(
                    "/api/v1/db/import?check={}&force={}",
                    mode.check, mode.force
                );
                let text = c.call_text(Method::POST, &path, Some(yaml)).await?;
                serde_json::from_str(&text).map_err(unexpected)
            }
        }
    }
}

/// How a keyed request is sent again while it gets no answer.
#[derive(Debug, Clone, Copy)]
pub struct Resend {
    /// The first pause.
    pub first: Duration,
    /// The longest pause (they double up to it).
    pub max: Duration,
    /// How long after the first attempt the last one may start: a restart, not an outage.
    pub within: Duration,
}

/// The runs of `run service`: as the manager's client does (`autogate manager service run`).
pub const RUN_RETRY: Resend = Resend {
    first: Duration::from_millis(250),
    max: Duration::from_secs(2),
    within: Duration::from_secs(30),
};

/// Sends with `attempt` until it gets an answer (outer `Ok`) or `policy.within` has passed;
/// then the last "no answer" failure, with how long it was tried. Each attempt must carry the
/// same `Idempotency-Key`, which is what makes sending again safe.
pub async fn resend_unanswered<F, Fut>(policy: Resend, mut attempt: F) -> Result<Value, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<Value, Failure>, Failure>>,
{
    let start = std::time::Instant::now();
    let mut delay = policy.first;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt().await {
            Ok(answer) => return answer,
            Err(mut unanswered) => {
                if start.elapsed() + delay > policy.within {
                    if tries > 1 {
                        unanswered.message.push_str(&format!(
                            " (sent {tries} times over {} s with the same Idempotency-Key)",
                            start.elapsed().as_secs()
                        ));
                    }
                    return Err(unanswered);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max);
            }
        }
    }
}

fn item_path(kind: Kind, name: &str) -> String {
    format!("/api/v1/{}/{}", kind.plural(), segment(name))
}

/// A name as one URL path segment. Valid names need no escaping; an invalid one is escaped so
/// that the server, not the URL parser, says what is wrong with it.
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The list under `key` of an API answer (`{"services":[…]}`).
pub fn list_of(v: Value, key: &str) -> Result<Vec<Value>, Failure> {
    match v {
        Value::Object(mut m) => match m.remove(key) {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(Failure::new(
                FAILURE,
                format!("unexpected answer from the core node: no {key:?} list"),
            )),
        },
        Value::Array(items) => Ok(items),
        _ => Err(Failure::new(
            FAILURE,
            format!("unexpected answer from the core node: no {key:?} list"),
        )),
    }
}

/// An answer of the core node that does not parse as the type both sides share (a node of
/// another version, say).
pub fn unexpected(e: serde_json::Error) -> Failure {
    Failure::new(
        FAILURE,
        format!("unexpected answer from the core node: {e}"),
    )
}

/// The store could not be opened: a held lock or bad path is the operator's to fix (64), a
/// failing disk is an outage (69).
fn store_failure(dir: &Path, e: autogate_store::StoreError) -> Failure {
    use autogate_store::StoreError as S;
    let code = match e {
        S::Config(_) | S::InvalidArgument(_) => USAGE,
        S::Corrupt(_) => FAILURE,
        _ => UNAVAILABLE,
    };
    Failure::new(code, format!("local store in {}: {e}", dir.display()))
}

/// An automation error as the CLI reports it. Invalid requests (bad definitions, missing
/// references, inputs the decorator refuses, a disabled feature, a missing key file) are the
/// operator's to fix: 64. Conflicts and unknown names: 1. Store outages: 69.
pub fn failure(e: AutomationError) -> Failure {
    if let AutomationError::Exec(ExecError::InvalidInputs { violations }) = &e {
        let mut msg =
            String::from("the inputs do not satisfy the service's decorator; nothing ran:");
        for v in violations {
            let at = if v.pointer.is_empty() {
                "(root)"
            } else {
                v.pointer.as_str()
            };
            msg.push_str(&format!("\n  {at}: {}", v.message));
        }
        return Failure::new(USAGE, msg);
    }
    let code = match e.class() {
        ErrorClass::Invalid | ErrorClass::Forbidden | ErrorClass::Config => USAGE,
        ErrorClass::NotFound | ErrorClass::Conflict | ErrorClass::Internal => FAILURE,
        ErrorClass::Unavailable => UNAVAILABLE,
    };
    Failure::new(code, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sent again under the same key while unanswered, not after an answer (even an error),
    /// and not past the bound.
    #[tokio::test]
    async fn an_unanswered_run_is_sent_again_with_its_key_within_a_bound() {
        let quick = Resend {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            within: Duration::from_secs(30),
        };
        let key = autogate_jobs::model::new_job_id();
        let mut seen = Vec::new();
        let v = resend_unanswered(quick, || {
            seen.push(key.clone());
            let n = seen.len();
            async move {
                if n < 3 {
                    Err(Failure::new(UNAVAILABLE, "cannot reach the core node"))
                } else {
                    Ok(Ok(json!({"status": "completed"})))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|k| *k == key), "{seen:?}");

        let mut answered = 0;
        let e = resend_unanswered(quick, || {
            answered += 1;
            async { Ok(Err(Failure::new(UNAVAILABLE, "no runner (HTTP 503)"))) }
        })
        .await
        .unwrap_err();
        assert_eq!((answered, e.message.as_str()), (1, "no runner (HTTP 503)"));

        let bounded = Resend {
            within: Duration::from_millis(50),
            ..quick
        };
        let started = std::time::Instant::now();
        let mut tries = 0;
        let e = resend_unanswered(bounded, || {
            tries += 1;
            async { Err(Failure::new(UNAVAILABLE, "cannot reach the core node")) }
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(tries > 1, "{tries}");
        assert_eq!(e.code, UNAVAILABLE);
        assert!(
            e.message.contains("with the same Idempotency-Key"),
            "{}",
            e.message
        );
    }

    #[test]
    fn segments_escape_what_is_not_a_name() {
        assert_eq!(segment("svc-1.a_b"), "svc-1.a_b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
