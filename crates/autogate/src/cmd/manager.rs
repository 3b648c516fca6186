//! `autogate manager`: run the manager, or administer one over its REST API
//! (`autogate manager cluster add|list|show|set-state|add-cert|rm-cert|rm|sessions|ping|services|reset-term`,
//! `autogate manager service run CLUSTER NAME`, `autogate manager status`).
//!
//! The admin commands find the manager and its credentials from the same configuration the
//! daemon reads (same file, same `GATEWAY_*` variables), so they look where the manager keeps
//! them: `--url` defaults to `https://<manager.listen_address>:<manager.port>` (loopback when
//! it listens on every address), `--token-file` to the manager's admin token file (in
//! `manager.data_dir`, itself `<application.working_dir>/manager` unless set). Without `--ca`
//! the manager is verified against `application.ca_certificate_file` (the CA the CLI's TLS
//! clients use), the manager's own `manager.certificate_file`, and the certificate it minted in
//! its data directory — whichever exist — else the system trust store; the CLI presents
//! `client.certificate_file`/`private_key_file` when both are set. A missing token or a refused
//! certificate is reported with the file that was used and the setting to change. Output is a
//! table, or the API's JSON with `--raw`. Exit codes: 0, 1 with the manager's message, 64 for
//! usage mistakes (missing certificate or token file), 69 when the manager cannot be reached
//! (or not trusted). `service run` prints the family's run layout and exits 0 when the service
//! ran, whatever its return code (see [`RUN_EXIT_HELP`]). `status` lists the replicas sharing the
//! manager's store and says whether the store answers; it exits 69 when it does not (see
//! [`STATUS_EXIT_HELP`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_config::{Config, Role};
use autogate_manager::client::Trust;
use autogate_manager::{AdminClient, ClientError};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::term::{out, outln};
use crate::cli::Global;
use crate::exit::{Failure, USAGE};

#[derive(Debug, Args)]
pub struct ManagerArgs {
    #[command(subcommand)]
    pub command: Option<ManagerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ManagerCommand {
    /// Register and administer gateway clusters (through the manager's REST API).
    Cluster(ClusterArgs),
    /// Run the services clusters announced (through the manager's REST API).
    Service(ServiceArgs),
    /// The manager's replicas and its store: which replicas share it, how many sessions each
    /// holds, when each was last seen, and whether the store answers.
    #[command(after_help = STATUS_EXIT_HELP)]
    Status(StatusArgs),
}

/// How to reach the manager's REST API.
#[derive(Debug, Args)]
pub struct Connection {
    /// Manager URL (default: https://<manager.listen_address>:<manager.port>).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Admin token file (default: the manager's admin token file).
    #[arg(long = "token-file", global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate(s) to verify the manager (default: application.ca_certificate_file,
    /// manager.certificate_file and <data_dir>/manager.pem, those that exist).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Connection,
}

/// Shown by `manager status --help`: what the columns and the exit status mean.
pub const STATUS_EXIT_HELP: &str = "\
The replica that answered is marked with *. LAST SEEN is when a replica last renewed its record \
(three times per manager.replica_lease_ttl, 5s unless set); one not seen for a whole lease TTL \
is shown \"unreachable?\": its lease is ending, and with it its claims. Exit status: 0 when the \
manager answered and its store is healthy; 69 when the manager cannot be reached or its store \
does not answer (the store line says why); 64 for a missing token or CA file; 1 with the \
manager's message otherwise.";

/// Shown by `manager service run --help`: what the exit status means.
pub const RUN_EXIT_HELP: &str = "\
Exit status: 0 when the service ran, whatever the program's own return code (read it from \
`Return Code:`, or `.result.return_code` with --raw); 64 when the command is wrong or the inputs \
do not satisfy the service's decorator (nothing ran); 1 when the service could not be run \
(unknown cluster or service, read-only or disabled cluster, failed checkout, missing binary, no \
result in time); 69 when the manager cannot be reached or the cluster is not connected.";

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Run a service on a cluster's active core node and print its output.
    #[command(after_help = RUN_EXIT_HELP)]
    Run {
        /// The cluster.
        cluster: String,
        /// The service.
        name: String,
        /// An input as key=value, converted to the type the service's decorator declares
        /// (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// All inputs as one JSON object, or @FILE holding one (--set values are laid over it).
        #[arg(long, value_name = "JSON|@FILE")]
        inputs: Option<String>,
        /// Refuse to run unless the service is of this type (executable, python-script, …).
        #[arg(long = "type", value_name = "TYPE")]
        service_type: Option<String>,
        /// opentofu-plan services: apply (the default), destroy or plan.
        #[arg(long, value_name = "apply|destroy|plan")]
        action: Option<String>,
        /// opentofu-plan services: the state to start from, as JSON or @FILE.
        #[arg(long, value_name = "JSON|@FILE")]
        state: Option<String>,
        /// Seconds to wait for the result; the run is cancelled on the gateway after that
        /// (default: the manager's, one hour and 30 seconds).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Enabled,
    Disabled,
    ReadOnly,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Enabled => "enabled",
            StateArg::Disabled => "disabled",
            StateArg::ReadOnly => "read-only",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Register a cluster with the certificates its core nodes present.
    Add {
        /// The gateways' cluster id (GATEWAY_APPLICATION_CLUSTER_ID).
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Initial state.
        #[arg(long, value_enum, default_value = "enabled")]
        state: StateArg,
        /// PEM certificate file of a core node (repeatable; a file may hold several).
        #[arg(long = "cert", value_name = "FILE", required = true, num_args = 1..)]
        certs: Vec<PathBuf>,
    },
    /// List registered clusters.
    List,
    /// Show one cluster: state, active session, nodes, certificates.
    Show { id: String },
    /// Enable, disable or make read-only (disabling closes the live session).
    SetState {
        id: String,
        #[arg(value_enum)]
        state: StateArg,
    },
    /// Pin another certificate.
    AddCert {
        id: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Unpin a certificate by SHA-256 fingerprint (closes a session using it).
    RmCert { id: String, fingerprint: String },
    /// Delete a cluster and its session history (closes the live session).
    Rm { id: String },
    /// Session history, newest first.
    Sessions { id: String },
    /// Round trip through the cluster's live session.
    Ping { id: String },
    /// The services the cluster announced (NAME TYPE DESCRIPTION).
    Services { id: String },
    /// Forget the cluster's highest term and close its live session, so its leader is accepted
    /// again after a node sent a term no leader can beat (logged as an audit line).
    ResetTerm { id: String },
}

pub fn run(global: &Global, args: ManagerArgs) -> Result<(), Failure> {
    match args.command {
        None => daemon(global),
        Some(ManagerCommand::Cluster(c)) => cluster(global, c),
        Some(ManagerCommand::Service(s)) => service(global, s),
        Some(ManagerCommand::Status(s)) => status(global, s),
    }
}

fn daemon(global: &Global) -> Result<(), Failure> {
    super::daemon(global, Role::Manager, autogate_manager::run)
}

fn default_url(config: &Config) -> String {
    let m = &config.manager;
    let host = match m.listen_address.as_str() {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_owned(),
    };
    format!("https://{host}:{}", m.port)
}

fn read_pem(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            USAGE,
            format!("cannot read certificate file {}: {e}", path.display()),
        )
    })?;
    autogate_tls::parse_pem_certs(&text)
        .map_err(|e| Failure::new(USAGE, format!("{}: {e}", path.display())))?;
    Ok(text)
}

fn client_failure(e: ClientError) -> Failure {
    Failure::new(e.exit_code(), e)
}

/// Where a setting's value came from ("environment variable GATEWAY_…", "default", a file
/// line), for messages.
fn origin(config: &Config, section: &str, key: &str) -> String {
    config
        .entries()
        .into_iter()
        .find(|e| e.section == section && e.key == key)
        .map_or_else(|| "default".to_owned(), |e| e.source.to_string())
}

/// The admin client for `conn`, from the flags or the configuration.
fn client(global: &Global, conn: &Connection) -> Result<AdminClient, Failure> {
    let config = super::load_config(global, None)?;
    let url = conn.url.clone().unwrap_or_else(|| default_url(&config));
    let token_path = conn
        .token_file
        .clone()
        .unwrap_or_else(|| config.manager.admin_token_path());
    let token = autogate_manager::bootstrap::read_token(&token_path).map_err(|e| {
        let advice = if conn.token_file.is_some() {
            "check the file given with --token-file".to_owned()
        } else {
            token_advice(&config)
        };
        Failure::new(USAGE, format!("{e}\n{advice}"))
    })?;
    let trust = trust(global, &config, conn)?;
    AdminClient::with_trust(&url, &token, trust).map_err(client_failure)
}

/// Why the CLI looked for the admin token where it did, and how to point it elsewhere.
fn token_advice(config: &Config) -> String {
    let m = &config.manager;
    let whence = if let Some(file) = &m.admin_token_file {
        format!(
            "manager.admin_token_file is {} ({})",
            file.display(),
            origin(config, "manager", "admin_token_file")
        )
    } else {
        let data = origin(config, "manager", "data_dir");
        let data_dir = if data == "default" {
            format!(
                "{} (<application.working_dir>/manager; application.working_dir is {}, {})",
                m.data_dir.display(),
                config.application.working_dir.display(),
                origin(config, "application", "working_dir")
            )
        } else {
            format!("{} ({data})", m.data_dir.display())
        };
        format!("the manager keeps its admin token in manager.data_dir, here {data_dir}")
    };
    format!(
        "With this configuration {whence}. Run this command with the manager's configuration (the \
         same configuration file, GATEWAY_APPLICATION_WORKING_DIR, GATEWAY_MANAGER_DATA_DIR or \
         GATEWAY_MANAGER_ADMIN_TOKEN_FILE as the manager), or pass the token file with --token-file."
    )
}

/// What the CLI trusts to verify the manager, each file with the setting that named it, and the
/// client certificate of the `[client]` section (or `--profile`).
fn trust(global: &Global, config: &Config, conn: &Connection) -> Result<Trust, Failure> {
    let client = config
        .client_profile(global.profile.as_deref())
        .ok_or_else(|| {
            Failure::new(
                USAGE,
                format!(
                    "unknown client profile {:?}: no [client:<name>] section has that name",
                    global.profile.as_deref().unwrap_or_default()
                ),
            )
        })?;
    let identity = match (&client.certificate_file, &client.private_key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => None,
    };
    let ca_setting =
        "set GATEWAY_APPLICATION_CA_CERTIFICATE_FILE (application.ca_certificate_file) \
                      to the CA that signed the manager's certificate, or pass it with --ca FILE";
    if let Some(ca) = &conn.ca {
        if !ca.exists() {
            return Err(Failure::new(
                USAGE,
                format!("--ca: file not found: {}", ca.display()),
            ));
        }
        return Ok(Trust {
            roots: vec![(ca.clone(), "--ca".to_owned())],
            identity,
            advice: "pass the CA that signed the manager's certificate with --ca FILE".to_owned(),
        });
    }
    let mut roots = Vec::new();
    if let Some(ca) = &config.application.ca_certificate_file {
        let from = format!(
            "application.ca_certificate_file, {}",
            origin(config, "application", "ca_certificate_file")
        );
        if !ca.exists() {
            return Err(Failure::new(
                USAGE,
                format!("{from}: file not found: {}", ca.display()),
            ));
        }
        roots.push((ca.clone(), from));
    }
    // The certificate the manager presents: a self-signed one (or a file holding its chain)
    // verifies by itself; a CA-issued leaf alone does not, and then the CA above is needed.
    match &config.manager.certificate_file {
        Some(cert) if cert.exists() => roots.push((
            cert.clone(),
            "manager.certificate_file, the manager's own certificate".to_owned(),
        )),
        Some(_) => {}
        None => {
            let minted = config
                .manager
                .data_dir
                .join(autogate_manager::bootstrap::CERT_FILE);
            if minted.exists() {
                roots.push((
                    minted,
                    "the certificate the manager minted in manager.data_dir".to_owned(),
                ));
            }
        }
    }
    Ok(Trust {
        roots,
        identity,
        advice: ca_setting.to_owned(),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))
}

fn cluster(global: &Global, args: ClusterArgs) -> Result<(), Failure> {
    // Read every input file before talking to the manager: a typo is a usage error, not a
    // half-applied change.
    let certs: Vec<String> = match &args.action {
        ClusterAction::Add { certs, .. } => certs
            .iter()
            .map(|p| read_pem(p))
            .collect::<Result<_, _>>()?,
        ClusterAction::AddCert { file, .. } => vec![read_pem(file)?],
        _ => Vec::new(),
    };
    let client = client(global, &args.conn)?;
    let rt = runtime()?;
    let raw = global.raw;
    rt.block_on(async move {
        match args.action {
            ClusterAction::Add {
                id, name, state, ..
            } => {
                let v = client
                    .create(&id, name.as_deref(), state.as_str(), &certs)
                    .await
                    .map_err(client_failure)?;
                print_cluster_or(raw, &v, &format!("cluster {id} registered"));
            }
            ClusterAction::List => {
                let v = client.list().await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    print_list(&v);
                }
            }
            ClusterAction::Show { id } => {
                let v = client.show(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    print_show(&v);
                }
            }
            ClusterAction::SetState { id, state } => {
                let v = client
                    .patch(&id, &json!({ "state": state.as_str() }))
                    .await
                    .map_err(client_failure)?;
                print_cluster_or(raw, &v, &format!("cluster {id} is now {}", state.as_str()));
            }
            ClusterAction::AddCert { id, .. } => {
                let v = client
                    .patch(&id, &json!({ "add_certificates": certs }))
                    .await
                    .map_err(client_failure)?;
                print_cluster_or(raw, &v, &format!("certificate added to cluster {id}"));
            }
            ClusterAction::RmCert { id, fingerprint } => {
                let v = client
                    .patch(&id, &json!({ "remove_certificates": [fingerprint] }))
                    .await
                    .map_err(client_failure)?;
                print_cluster_or(
                    raw,
                    &v,
                    &format!("certificate {fingerprint} removed from cluster {id}"),
                );
            }
            ClusterAction::Rm { id } => {
                client.delete(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", json!({ "deleted": id }));
                } else {
                    outln!("cluster {id} removed");
                }
            }
            ClusterAction::Sessions { id } => {
                let v = client.sessions(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    print_sessions(&v);
                }
            }
            ClusterAction::Ping { id } => {
                let v = client.ping(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    outln!(
                        "cluster {id}: node {} (term {}) answered in {:.1} ms",
                        text(&v["node_id"]),
                        text(&v["term"]),
                        v["rtt_ms"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            ClusterAction::ResetTerm { id } => {
                let v = client.reset_term(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    let old = match (v["old_term"].as_u64(), v["old_term_node"].as_str()) {
                        (Some(t), Some(n)) => format!("{t} (node {n})"),
                        (Some(t), None) => t.to_string(),
                        _ => "none".to_owned(),
                    };
                    let closed = v["closed_session_of"]
                        .as_str()
                        .map(|n| format!("; closed the session of node {n}"))
                        .unwrap_or_default();
                    outln!(
                        "cluster {id}: term reset (was {old}){closed}; the next hello with a term sets it again"
                    );
                }
            }
            ClusterAction::Services { id } => {
                let v = client.services(&id).await.map_err(client_failure)?;
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    print_services(&v);
                }
            }
        }
        Ok(())
    })
}

/// A JSON argument given inline or as `@FILE`; `what` names the flag in errors.
fn json_arg(what: &str, text: &str) -> Result<Value, Failure> {
    let (source, body) = match text.strip_prefix('@') {
        Some(path) => (
            path.to_owned(),
            std::fs::read_to_string(path)
                .map_err(|e| Failure::new(USAGE, format!("{what}: cannot read {path}: {e}")))?,
        ),
        None => ("the argument".to_owned(), text.to_owned()),
    };
    serde_json::from_str(&body)
        .map_err(|e| Failure::new(USAGE, format!("{what}: {source} is not valid JSON: {e}")))
}

/// The run request body from the command line; usage errors before anything is sent.
#[allow(clippy::too_many_arguments)]
fn run_body(
    set: &[String],
    inputs: Option<&str>,
    service_type: Option<&str>,
    action: Option<&str>,
    state: Option<&str>,
    timeout: Option<u64>,
) -> Result<Value, Failure> {
    let mut body = json!({});
    if let Some(text) = inputs {
        let v = json_arg("--inputs", text)?;
        if !v.is_object() {
            return Err(Failure::new(USAGE, "--inputs: expected a JSON object"));
        }
        body["inputs"] = v;
    }
    if let Some(bad) = set.iter().find(|s| !s.contains('=')) {
        return Err(Failure::new(
            USAGE,
            format!("--set {bad:?}: expected KEY=VALUE"),
        ));
    }
    if !set.is_empty() {
        body["set"] = json!(set);
    }
    if let Some(t) = service_type {
        body["type"] = json!(t);
    }
    match action {
        None => {}
        Some(a @ ("apply" | "destroy" | "plan")) => body["action"] = json!(a),
        Some(other) => {
            return Err(Failure::new(
                USAGE,
                format!("--action {other:?}: expected apply, destroy or plan"),
            ))
        }
    }
    if let Some(text) = state {
        body["state"] = json_arg("--state", text)?;
    }
    if let Some(secs) = timeout {
        if secs == 0 {
            return Err(Failure::new(USAGE, "--timeout: expected at least 1 second"));
        }
        body["timeout_ms"] = json!(secs.saturating_mul(1000));
    }
    Ok(body)
}

fn service(global: &Global, args: ServiceArgs) -> Result<(), Failure> {
    let ServiceAction::Run {
        cluster,
        name,
        set,
        inputs,
        service_type,
        action,
        state,
        timeout,
    } = args.action;
    let body = run_body(
        &set,
        inputs.as_deref(),
        service_type.as_deref(),
        action.as_deref(),
        state.as_deref(),
        timeout,
    )?;
    let client = client(global, &args.conn)?;
    let raw = global.raw;
    runtime()?.block_on(async move {
        match client.run_with(&cluster, &name, &body).await {
            Ok(v) => {
                if raw {
                    outln!("{}", pretty(&v));
                } else {
                    out!("{}", run_text(&v["result"]));
                }
                Ok(())
            }
            Err(ClientError::Api {
                status,
                message,
                body,
                ..
            }) => {
                if raw {
                    outln!("{}", pretty(&body));
                }
                let code = match status {
                    400 | 422 => USAGE,
                    503 => 69,
                    _ => 1,
                };
                Err(Failure::new(code, message))
            }
            Err(e) => Err(client_failure(e)),
        }
    })
}

/// A replica refreshes its record (`last_seen`) at every heartbeat, three times per lease TTL
/// (`manager.replica_lease_ttl`); one not seen for three heartbeats — the whole TTL — has
/// missed every renewal its lease allows and is about to lose its claims.
fn replica_stale_after(lease_ttl: Duration) -> Duration {
    let heartbeat = lease_ttl / 3;
    heartbeat * 3
}

fn status(global: &Global, args: StatusArgs) -> Result<(), Failure> {
    let config = super::load_config(global, None)?;
    let client = client(global, &args.conn)?;
    let raw = global.raw;
    let body = runtime()?.block_on(async move {
        match client.replicas().await {
            Ok(v) => Ok(v),
            // A manager whose store is down may still say so, with the same body: print it
            // rather than only the status line.
            Err(ClientError::Api { status, body, .. })
                if status == 503 && body.get("store").is_some_and(Value::is_object) =>
            {
                Ok(body)
            }
            Err(e) => Err(client_failure(e)),
        }
    })?;
    if raw {
        outln!("{}", pretty(&body));
    } else {
        let stale_after = replica_stale_after(config.manager.replica_lease_ttl);
        out!(
            "{}",
            status_text(&body, jiff::Timestamp::now(), stale_after)
        );
    }
    let store = &body["store"];
    if store["healthy"].as_bool() == Some(false) {
        return Err(Failure::new(
            69,
            format!(
                "the manager's store ({}) does not answer: {}",
                text(&store["backend"]),
                text(&store["error"])
            ),
        ));
    }
    Ok(())
}

/// A timestamp of the API: RFC 3339 text, or milliseconds since the epoch.
fn timestamp(v: &Value) -> Option<jiff::Timestamp> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => jiff::Timestamp::from_millisecond(n.as_i64()?).ok(),
        _ => None,
    }
}

/// An age for people: `850ms`, `12s`, `3m12s`, `2h5m`.
fn age(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// `autogate manager status` as text: a row per replica (the one that answered marked `*`, one
/// not seen for `stale_after` shown "unreachable?"), then the store line.
fn status_text(v: &Value, now: jiff::Timestamp, stale_after: Duration) -> String {
    let rows: Vec<Vec<String>> = v["replicas"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let mut id = text(&r["replica_id"]);
            if r["this"].as_bool() == Some(true) {
                id.push_str(" *");
            }
            let sessions = match &r["sessions"] {
                Value::Array(a) => a.len().to_string(),
                other => text(other),
            };
            let last_seen = match timestamp(&r["last_seen"]) {
                Some(at) => {
                    // A replica clock ahead of this one reads as "just now", not as an error.
                    let ms = u64::try_from(now.as_millisecond() - at.as_millisecond()).unwrap_or(0);
                    let ago = Duration::from_millis(ms);
                    if ago > stale_after {
                        format!("{} ago, unreachable?", age(ago))
                    } else {
                        format!("{} ago", age(ago))
                    }
                }
                None => text(&r["last_seen"]),
            };
            vec![
                id,
                text(&r["address"]),
                sessions,
                last_seen,
                match &r["started_at"] {
                    Value::Number(_) => timestamp(&r["started_at"])
                        .map_or_else(|| text(&r["started_at"]), |t| t.to_string()),
                    other => text(other),
                },
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no replicas registered\n".to_owned()
    } else {
        table_text(
            &["REPLICA", "ADDRESS", "SESSIONS", "LAST SEEN", "STARTED"],
            &rows,
        )
    };
    out.push_str(&store_line(&v["store"]));
    out.push('\n');
    out
}

/// `store: etcd 10.0.1.21:2379,10.0.1.22:2379 prefix /autogate-manager revision 812, healthy`,
/// or the error in place of `healthy`.
fn store_line(s: &Value) -> String {
    let mut line = format!("store: {}", text(&s["backend"]));
    let endpoints: Vec<String> = match &s["endpoints"] {
        Value::Array(a) => a.iter().map(text).collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    };
    if !endpoints.is_empty() {
        line.push(' ');
        line.push_str(&endpoints.join(","));
    }
    if let Some(prefix) = s["prefix"].as_str().filter(|p| !p.is_empty()) {
        line.push_str(&format!(" prefix {prefix}"));
    }
    if !s["revision"].is_null() {
        line.push_str(&format!(" revision {}", text(&s["revision"])));
    }
    match s["healthy"].as_bool() {
        Some(true) => line.push_str(", healthy"),
        Some(false) => line.push_str(&format!(", unavailable: {}", text(&s["error"]))),
        None => {}
    }
    line
}

/// The family's text layout of a run: stdout block, stderr block, return code, then start,
/// end and elapsed time.
fn run_text(r: &Value) -> String {
    let mut out = String::new();
    let mut stream = |title: &str, body: &str| {
        out.push_str(title);
        out.push_str(":\n");
        out.push_str(body);
        if !body.is_empty() && !body.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    };
    stream("Stdout", r["stdout"].as_str().unwrap_or_default());
    stream("Stderr", r["stderr"].as_str().unwrap_or_default());
    if let Some(state) = r.get("state").filter(|s| !s.is_null()) {
        stream("State", &pretty(state));
    }
    let mut lines = vec![("Return Code", text(&r["return_code"]))];
    if r["timed_out"].as_bool() == Some(true) {
        lines.push((
            "Timed Out",
            "true (the program was killed at the service's timeout)".to_owned(),
        ));
    }
    if r["truncated"].as_bool() == Some(true) {
        lines.push((
            "Truncated",
            "true (the output was cut to fit the manager's frame limit)".to_owned(),
        ));
    }
    lines.push(("Start Time", text(&r["start_time"])));
    lines.push(("End Time", text(&r["end_time"])));
    lines.push(("Elapsed Time", text(&r["elapsed_time"])));
    let width = lines.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
    for (label, value) in lines {
        let label = format!("{label}:");
        out.push_str(format!("{label:<width$} {value}").trim_end());
        out.push('\n');
    }
    out
}

fn print_services(v: &Value) {
    let rows: Vec<Vec<String>> = v["services"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| vec![text(&s["name"]), text(&s["type"]), text(&s["description"])])
        .collect();
    if rows.is_empty() {
        if v["updated_at"].is_null() {
            outln!(
                "cluster {} has not announced any services",
                text(&v["cluster_id"])
            );
        } else {
            outln!("cluster {} has no services", text(&v["cluster_id"]));
        }
        return;
    }
    table(&["NAME", "TYPE", "DESCRIPTION"], &rows);
    if v["truncated"].as_bool() == Some(true) {
        outln!(
            "(first {} of {} services: the catalog exceeds the manager's frame limit)",
            rows.len(),
            text(&v["total"])
        );
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn print_cluster_or(raw: bool, v: &Value, message: &str) {
    if raw {
        outln!("{}", pretty(v));
    } else {
        outln!("{message}");
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    out!("{}", table_text(headers, rows));
}

/// Columns aligned to their widest cell, two spaces apart; the last column is not padded.
fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
    text
}

fn print_list(v: &Value) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                text(&c["cluster_id"]),
                text(&c["name"]),
                text(&c["state"]),
                if c["connected"].as_bool() == Some(true) {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                text(&c["active"]["node_id"]),
                text(&c["active"]["term"]),
                c["certificates"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        outln!("no clusters registered");
        return;
    }
    table(
        &[
            "CLUSTER",
            "NAME",
            "STATE",
            "CONNECTED",
            "ACTIVE NODE",
            "TERM",
            "CERTS",
        ],
        &rows,
    );
}

fn print_show(c: &Value) {
    outln!("cluster:     {}", text(&c["cluster_id"]));
    outln!("name:        {}", text(&c["name"]));
    outln!("state:       {}", text(&c["state"]));
    outln!(
        "connected:   {}",
        if c["connected"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    );
    if !c["active"].is_null() {
        let a = &c["active"];
        outln!(
            "active:      node {} term {} from {} since {}",
            text(&a["node_id"]),
            text(&a["term"]),
            text(&a["remote_addr"]),
            text(&a["connected_at"])
        );
    }
    let nodes: Vec<Vec<String>> = c["nodes"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            vec![
                text(&n["node_id"]),
                text(&n["role"]),
                if n["is_primary"].as_bool() == Some(true) {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                text(&n["address"]),
            ]
        })
        .collect();
    if !nodes.is_empty() {
        outln!();
        table(&["NODE", "ROLE", "PRIMARY", "ADDRESS"], &nodes);
    }
    let certs: Vec<Vec<String>> = c["certificates"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|x| {
            let mut not_after = text(&x["not_after"]);
            if x["expired"].as_bool() == Some(true) {
                not_after.push_str(" (expired)");
            }
            vec![
                text(&x["fingerprint_sha256"]),
                text(&x["subject"]),
                not_after,
                text(&x["last_presented_by"]),
            ]
        })
        .collect();
    outln!();
    if certs.is_empty() {
        outln!("no certificates registered");
    } else {
        table(
            &[
                "FINGERPRINT (SHA-256)",
                "SUBJECT",
                "NOT AFTER",
                "LAST PRESENTED BY",
            ],
            &certs,
        );
    }
}

fn print_sessions(v: &Value) {
    let sessions = v.as_array().map(|a| a.as_slice()).unwrap_or_default();
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                text(&s["node_id"]),
                text(&s["term"]),
                text(&s["remote_addr"]),
                text(&s["connected_at"]),
                if s["disconnected_at"].is_null() {
                    "live".to_owned()
                } else {
                    text(&s["disconnected_at"])
                },
                // Newest first: the session after this one in the list is the one before it.
                sessions
                    .get(i + 1)
                    .and_then(|older| gap_before(s, older))
                    .unwrap_or_default(),
                text(&s["close_reason"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        outln!("no sessions yet");
        return;
    }
    table(
        &[
            "NODE",
            "TERM",
            "REMOTE",
            "CONNECTED",
            "DISCONNECTED",
            "GAP BEFORE",
            "CLOSE REASON",
        ],
        &rows,
    );
}

/// The gap between a session and the one before it, labelled as the manager's page labels it:
/// `manager restart` when the older one ended because the manager stopped (whichever node came
/// back), else `fail-over` when the node changed and `reconnected` when it did not.
fn gap_before(newer: &Value, older: &Value) -> Option<String> {
    let at = |v: &Value| v.as_str()?.parse::<jiff::Timestamp>().ok();
    let gap = at(&newer["connected_at"])?.as_millisecond()
        - at(&older["disconnected_at"])?.as_millisecond();
    let kind = if older["close_reason"]
        .as_str()
        .is_some_and(autogate_manager::registry::closed_by_manager_stop)
    {
        "manager restart"
    } else if older["node_id"] != newer["node_id"] {
        "fail-over"
    } else {
        "reconnected"
    };
    Some(format!("{kind} {} ms", gap.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas_body(healthy: bool) -> Value {
        json!({
            "store": {
                "backend": "etcd",
                "endpoints": ["10.0.1.21:2379", "10.0.1.22:2379", "10.0.1.23:2379"],
                "prefix": "/autogate-manager",
                "revision": 812,
                "healthy": healthy,
                "error": if healthy { Value::Null } else { json!("etcd: no quorum") },
            },
            "replicas": [
                {"replica_id": "mgr-1", "address": "manager-1.example.com:8443",
                 "started_at": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T01:00:09Z",
                 "sessions": 3, "version": "1.4.0", "this": false},
                {"replica_id": "mgr-2", "address": "manager-2.example.com:8443",
                 "started_at": "2026-01-01T00:00:01Z", "last_seen": "2026-01-01T01:00:09.500Z",
                 "sessions": 0, "version": "1.4.0", "this": true},
                {"replica_id": "mgr-3", "address": "manager-3.example.com:8443",
                 "started_at": "2026-01-01T00:00:02Z", "last_seen": "2026-01-01T00:59:30Z",
                 "sessions": 1, "version": "1.4.0", "this": false},
            ],
        })
    }

    #[test]
    fn status_marks_the_replica_that_answered_and_the_ones_not_seen_for_three_heartbeats() {
        let now: jiff::Timestamp = "2026-01-01T01:00:10Z".parse().unwrap();
        let text = status_text(&replicas_body(true), now, Duration::from_secs(5));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[0]),
            ["REPLICA", "ADDRESS", "SESSIONS", "LAST", "SEEN", "STARTED"]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "mgr-1",
                "manager-1.example.com:8443",
                "3",
                "1s",
                "ago",
                "2026-01-01T00:00:00Z"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "mgr-2",
                "*",
                "manager-2.example.com:8443",
                "0",
                "500ms",
                "ago",
                "2026-01-01T00:00:01Z"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "mgr-3",
                "manager-3.example.com:8443",
                "1",
                "40s",
                "ago,",
                "unreachable?",
                "2026-01-01T00:00:02Z"
            ]
        );
        assert_eq!(text.matches('*').count(), 1, "{text}");
        // The columns line up under their headers.
        let column = lines[0].find("SESSIONS").unwrap();
        for row in &lines[1..4] {
            assert_ne!(row.as_bytes()[column], b' ', "{text}");
            assert_eq!(row.as_bytes()[column - 1], b' ', "{text}");
        }
        assert_eq!(
            lines[4],
            "store: etcd 10.0.1.21:2379,10.0.1.22:2379,10.0.1.23:2379 prefix /autogate-manager \
             revision 812, healthy"
        );
    }

    #[test]
    fn status_names_the_store_error_and_reads_a_local_store_and_millisecond_times() {
        let now: jiff::Timestamp = "2026-01-01T01:00:10Z".parse().unwrap();
        let text = status_text(&replicas_body(false), now, Duration::from_secs(5));
        assert!(
            text.ends_with("revision 812, unavailable: etcd: no quorum\n"),
            "{text}"
        );
        let local = json!({
            "store": {"backend": "local", "endpoints": [], "prefix": null, "revision": null,
                      "healthy": true, "error": null},
            "replicas": [{"replica_id": "r", "address": "m:8443",
                          "started_at": now.as_millisecond() - 3_723_000,
                          "last_seen": now.as_millisecond() - 65_000,
                          "sessions": [{"cluster_id": "a"}, {"cluster_id": "b"}], "this": true}],
        });
        let text = status_text(&local, now, Duration::from_secs(90));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Sessions as a list are counted; times in milliseconds are shown as RFC 3339.
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "r",
                "*",
                "m:8443",
                "2",
                "1m5s",
                "ago",
                "2025-12-31T23:58:07Z"
            ],
            "{text}"
        );
        assert_eq!(lines[2], "store: local, healthy");
        assert_eq!(
            status_text(
                &json!({"store": {"backend": "local", "healthy": true}, "replicas": []}),
                now,
                Duration::from_secs(5)
            ),
            "no replicas registered\nstore: local, healthy\n"
        );
    }

    #[test]
    fn a_replica_is_stale_after_three_heartbeats_of_its_lease() {
        // Three heartbeats of 1.666… s: the TTL, to the nanosecond a division loses.
        let five = replica_stale_after(Duration::from_secs(5));
        assert!(
            five <= Duration::from_secs(5) && five > Duration::from_millis(4999),
            "{five:?}"
        );
        assert_eq!(
            replica_stale_after(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(age(Duration::from_millis(7_384_000)), "2h3m");
        assert_eq!(age(Duration::from_millis(850)), "850ms");
    }

    #[test]
    fn a_gap_after_the_manager_stopped_is_a_restart_whichever_node_comes_back() {
        let older = |node: &str, reason: &str| {
            json!({"node_id": node, "disconnected_at": "2026-01-01T00:00:00Z",
                   "close_reason": reason})
        };
        let newer = json!({"node_id": "b", "connected_at": "2026-01-01T00:01:05.189Z"});
        let gap = |o: Value| gap_before(&newer, &o);
        for reason in ["manager shutting down", "manager restarted"] {
            assert_eq!(
                gap(older("a", reason)).as_deref(),
                Some("manager restart 65189 ms")
            );
            assert_eq!(
                gap(older("b", reason)).as_deref(),
                Some("manager restart 65189 ms")
            );
        }
        let lost = "connection lost: the node stopped without closing the session";
        assert_eq!(gap(older("a", lost)).as_deref(), Some("fail-over 65189 ms"));
        assert_eq!(
            gap(older("b", lost)).as_deref(),
            Some("reconnected 65189 ms")
        );
        assert_eq!(gap(json!({"node_id": "a"})), None, "still live");
    }
}
