//! The typed configuration handed to the rest of autogate.
//!
//! Other crates read these plain structs instead of strings so that every value has been parsed
//! and checked once, at start, before anything binds a port. Secrets are wrapped in [`Secret`] so
//! that a stray `{:?}` or a JSON dump cannot leak them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::source::Source;
use crate::value::format_duration;

/// A secret string (API key, proxy password). `Debug` and `Serialize` print `<redacted>`; call
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::REDACTED)
    }
}

/// A `host:port` pair. IPv6 hosts are stored without brackets and displayed with them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port, 1-65535.
    pub port: u16,
}

impl HostPort {
    /// True when the host is `0.0.0.0` or `::`, which other machines cannot dial.
    pub fn is_unspecified(&self) -> bool {
        host_is_unspecified(&self.host)
    }
}

pub(crate) fn host_is_unspecified(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_unspecified())
        || host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_unspecified())
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[application] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// All-in-one on one machine (the default).
    #[default]
    Local,
    /// Core node.
    Server,
    /// Execution-only node.
    Runner,
    /// Operator CLI talking to a core node.
    Client,
}

impl Mode {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "local" => Some(Mode::Local),
            "server" => Some(Mode::Server),
            "runner" => Some(Mode::Runner),
            "client" => Some(Mode::Client),
            _ => None,
        }
    }
}

/// `[store] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded single-file store under the working directory (the default).
    #[default]
    Local,
    /// In-process store, lost at exit.
    Memory,
    /// Shared etcd cluster (needed for HA and runners).
    Etcd,
}

impl BackendKind {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "local" => Some(BackendKind::Local),
            "memory" => Some(BackendKind::Memory),
            "etcd" => Some(BackendKind::Etcd),
            _ => None,
        }
    }
}

/// `[log] level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
    /// The process cannot go on.
    Fatal,
    /// No log output at all.
    Disabled,
}

impl LogLevel {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "TRACE" => Some(LogLevel::Trace),
            "DEBUG" => Some(LogLevel::Debug),
            "INFO" => Some(LogLevel::Info),
            "WARN" => Some(LogLevel::Warn),
            "ERROR" => Some(LogLevel::Error),
            "FATAL" => Some(LogLevel::Fatal),
            "DISABLED" => Some(LogLevel::Disabled),
            _ => None,
        }
    }
}

/// The role a process is about to take; see [`crate::Config::validate_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `autogate server`.
    Server,
    /// `autogate runner`.
    Runner,
    /// `autogate manager`.
    Manager,
    /// An operator CLI command talking to a core node.
    Client,
    /// All-in-one local use.
    Local,
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `[application]`.
#[derive(Debug, Clone, Serialize)]
pub struct Application {
    /// Node role when no subcommand decides it.
    pub mode: Mode,
    /// Cluster identity (1-63 characters of `[A-Za-z0-9_.-]`).
    pub cluster_id: String,
    /// Working directory, `~` expanded.
    pub working_dir: PathBuf,
    /// CA certificate for client, server and runner TLS.
    pub ca_certificate_file: Option<PathBuf>,
    /// Idle time after which a cached venv is deleted.
    #[serde(serialize_with = "ser_duration")]
    pub venv_retention_period: Duration,
    /// How often the venv pruner runs.
    #[serde(serialize_with = "ser_duration")]
    pub venv_sweep_interval: Duration,
    /// Per-stream capture limit of a run, in bytes.
    pub run_output_limit: u64,
    /// Accepted for compatibility; no effect.
    pub auto_accept_eula: bool,
}

/// `[connect]` (older name `[commander]`): the link to the manager and HA knobs.
#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    /// Connect to the manager at all.
    pub enabled: bool,
    /// Manager addresses, tried one at a time.
    pub hosts: Vec<HostPort>,
    /// Client certificate presented to the manager.
    pub certificate_file: Option<PathBuf>,
    /// Its private key.
    pub private_key_file: Option<PathBuf>,
    /// Skip verification of the manager's certificate.
    pub insecure_tls: bool,
    /// HTTP CONNECT proxy for the manager link.
    pub proxy_url: Option<String>,
    /// Proxy user name.
    pub proxy_username: Option<String>,
    /// Proxy password.
    pub proxy_password: Option<Secret>,
    /// Active/standby among the core nodes of the cluster.
    pub ha_enabled: bool,
    /// This node is the preferred active node.
    pub is_primary: bool,
    /// Lease time-to-live of the election key (at least 2 s).
    #[serde(serialize_with = "ser_duration")]
    pub lease_ttl: Duration,
    /// How long a primary must be healthy before it takes the active role back.
    #[serde(serialize_with = "ser_duration")]
    pub preempt_delay: Duration,
    /// How long the active node may fail to reach the manager before leadership moves.
    #[serde(serialize_with = "ser_duration")]
    pub connect_grace: Duration,
    /// On a stop: how long running manager runs may finish before the node resigns.
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// How long a manager run's record is kept.
    #[serde(serialize_with = "ser_duration")]
    pub run_retention: Duration,
    /// Preemption hand-overs allowed per hour (flap budget); 0 disables preemption.
    pub max_transitions: u32,
    /// Time allowed to prove a crashed active node dead; zero disables crash probing.
    #[serde(serialize_with = "ser_duration")]
    pub probe_window: Duration,
    /// Cap of the manager reconnect back-off.
    #[serde(serialize_with = "ser_duration")]
    pub reconnect_max_backoff: Duration,
    /// How often the link pings the manager.
    #[serde(serialize_with = "ser_duration")]
    pub link_ping_interval: Duration,
    /// A link nothing arrived on for this long is dropped and dialled again.
    #[serde(serialize_with = "ser_duration")]
    pub link_dead_after: Duration,
    /// Address other core nodes use to reach this node's API. `None` when neither it nor a
    /// routable `server.listen_address` is configured (listening on `0.0.0.0` or `::`).
    pub advertise_address: Option<HostPort>,
}

/// `[server]`: the core node's operator API.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// Bind address of the API.
    pub listen_address: String,
    /// API port.
    pub port: u16,
    /// Serve the API over TLS.
    pub use_tls: bool,
    /// Server certificate.
    pub certificate_file: Option<PathBuf>,
    /// Its key.
    pub private_key_file: Option<PathBuf>,
    /// Delegate executions to runners.
    pub distributed_execution: bool,
    /// How long a job waits with no runner able to take it.
    pub job_queue_timeout: Duration,
    /// How long finished jobs are kept.
    pub job_retention: Duration,
    /// API key lifetime (configured in minutes).
    #[serde(serialize_with = "ser_duration")]
    pub api_key_expiration: Duration,
    /// File holding the initial admin password.
    pub admin_password_file: Option<PathBuf>,
    /// Require client certificates.
    pub client_cert_auth: bool,
    /// Accepted for compatibility (largest inbound message, bytes).
    pub grpc_max_recv_msg_size: Option<u64>,
    /// Runtime data such as venvs.
    pub runtime_data_dir: Option<PathBuf>,
    /// OS user the services' programs run as; `None` = the node's own user.
    pub service_user: Option<String>,
    /// Time given to in-flight work at shutdown.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Serve the API without TLS on a non-loopback address.
    pub allow_plaintext: bool,
    /// Time a client has to send a request's headers.
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Time a request's body has to arrive once its headers are in.
    #[serde(serialize_with = "ser_duration")]
    pub body_read_timeout: Duration,
    /// API connections open at once.
    pub max_connections: usize,
    /// API connections open at once from one client address.
    pub max_connections_per_address: usize,
}

/// `[runner]`.
#[derive(Debug, Clone, Serialize)]
pub struct Runner {
    /// Accepted for compatibility: runners work through the store and announce no address.
    pub announcement_address: Option<String>,
    /// Accepted for compatibility: runners do not listen.
    pub listen_address: String,
    /// Accepted for compatibility: runners do not listen.
    pub port: u16,
    /// Accepted for compatibility.
    pub use_tls: bool,
    /// Accepted for compatibility.
    pub certificate_file: Option<PathBuf>,
    /// Accepted for compatibility.
    pub private_key_file: Option<PathBuf>,
    /// Accepted for compatibility.
    pub client_cert_auth: bool,
    /// Runtime data such as venvs.
    pub runtime_data_dir: Option<PathBuf>,
    /// OS user the services' programs run as; `None` = the node's own user.
    pub service_user: Option<String>,
    /// Jobs run at once (already resolved: never 0).
    pub capacity: u32,
    /// Labels announced with the runner's registration.
    pub labels: BTreeMap<String, String>,
    /// Time given to running jobs when the runner stops.
    #[serde(serialize_with = "ser_duration")]
    pub drain_grace: Duration,
    /// TTL of the registration and claims.
    pub lease_ttl: Duration,
    /// Optional probe and metrics port.
    pub metrics_port: Option<u16>,
}

/// `[store]`.
#[derive(Debug, Clone, Serialize)]
pub struct Store {
    /// Backend kind.
    pub backend: BackendKind,
    /// etcd endpoints.
    pub etcd_hosts: Vec<HostPort>,
    /// TLS to etcd.
    pub etcd_use_tls: bool,
    /// Present a client certificate to etcd (mTLS).
    pub etcd_client_cert_auth: bool,
    /// CA that signed etcd's certificate (system roots when unset).
    pub etcd_ca_certificate_file: Option<PathBuf>,
    /// Client certificate for etcd.
    pub etcd_certificate_file: Option<PathBuf>,
    /// Its key.
    pub etcd_private_key_file: Option<PathBuf>,
    /// Accepted for compatibility.
    pub dynamodb_table_name: Option<String>,
    /// Timeout of connecting to etcd.
    #[serde(serialize_with = "ser_duration")]
    pub etcd_dial_timeout: Duration,
    /// Timeout of one etcd request.
    #[serde(serialize_with = "ser_duration")]
    pub etcd_request_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize)]
pub struct Log {
    /// Minimum level.
    pub level: LogLevel,
    /// JSON lines on the console.
    pub console_json: bool,
    /// Write `<server_dir>/gateway.log`.
    pub file_enabled: bool,
    /// JSON lines in the file.
    pub file_json: bool,
    /// Directory of `gateway.log`.
    pub server_dir: PathBuf,
    /// `utc`, `local` or a time zone id, for log timestamps.
    pub timestamp_timezone: String,
}

impl Log {
    /// The log file written when `file_enabled`: `<server_dir>/gateway.log`.
    pub fn file_path(&self) -> PathBuf {
        self.server_dir.join("gateway.log")
    }
}

/// `[secrets]`.
#[derive(Debug, Clone, Serialize)]
pub struct Secrets {
    /// Key file for secrets at rest, identical on every node of the cluster.
    pub encrypt_key_file: Option<PathBuf>,
}

/// `[features]`.
#[derive(Debug, Clone, Serialize)]
pub struct Features {
    /// Python-script services.
    pub python_enabled: bool,
    /// Ansible services.
    pub ansible_enabled: bool,
    /// OpenTofu services.
    pub opentofu_enabled: bool,
    /// Accepted for compatibility.
    pub hostkeys_enabled: bool,
    /// Accepted for compatibility.
    pub mcp_enabled: bool,
}

/// `[python-script]`.
#[derive(Debug, Clone, Serialize)]
pub struct PythonScript {
    /// Dependency file name looked up in the service's working directory.
    pub requirements_file: String,
}

/// `[terminal]`.
#[derive(Debug, Clone, Serialize)]
pub struct Terminal {
    /// Plain CLI output.
    pub no_color: bool,
    /// `utc`, `local` or a time zone id, for CLI timestamps.
    pub timestamp_timezone: String,
}

/// `[client]` and each `[client:<profile>]`.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Core node address.
    pub host: String,
    /// Core node API port.
    pub port: u16,
    /// TLS to the core node.
    pub use_tls: bool,
    /// Client certificate.
    pub certificate_file: Option<PathBuf>,
    /// Its key.
    pub private_key_file: Option<PathBuf>,
    /// API key.
    pub api_key: Option<Secret>,
}

/// `[registry]`.
#[derive(Debug, Clone, Serialize)]
pub struct Registry {
    /// Accepted for compatibility.
    pub default_overridable: bool,
}

/// `[manager]`: the controller side.
#[derive(Debug, Clone, Serialize)]
pub struct Manager {
    /// Bind address.
    pub listen_address: String,
    /// Port of `wss://…/ws`, the REST API and the page.
    pub port: u16,
    /// Server certificate.
    pub certificate_file: Option<PathBuf>,
    /// Its key.
    pub private_key_file: Option<PathBuf>,
    /// Manager state directory.
    pub data_dir: PathBuf,
    /// Admin token file; `None` means `<data_dir>/admin.token`, created by the manager.
    pub admin_token_file: Option<PathBuf>,
    /// Largest WebSocket frame accepted, bytes.
    pub max_frame_size: u64,
    /// Sessions kept in the history.
    pub session_history: u32,
    /// How long a run waits for a session before it is refused.
    pub run_queue_timeout: Duration,
    /// Runs of one cluster that may wait for a session at once.
    pub run_queue_size: u32,
    /// How long a run's record is kept after its answer.
    pub run_retention: Duration,
    /// How often each session is pinged.
    pub ping_interval: Duration,
    /// A session nothing arrived on for this long is closed as lost.
    pub silence_limit: Duration,
    /// Frames per second a session may send on average (gateway-initiated frames only).
    pub session_frame_rate: u32,
    /// Frames a session may send at once.
    pub session_frame_burst: u32,
    /// Connections one source address may hold open at once.
    pub max_connections_per_source: u32,
    /// Where the manager's state lives: `Local` (its own file) or `Etcd` (shared by replicas);
    /// never `Memory` (the key refuses it).
    pub store_backend: BackendKind,
    /// etcd endpoints of the manager's store.
    pub store_etcd_hosts: Vec<HostPort>,
    /// Key prefix of the manager's data in etcd (starts with `/`, no trailing `/`).
    pub store_etcd_prefix: String,
    /// TLS to etcd.
    pub store_etcd_use_tls: bool,
    /// Present a client certificate to etcd (mTLS).
    pub store_etcd_client_cert_auth: bool,
    /// CA that signed etcd's certificate (system roots when unset).
    pub store_etcd_ca_certificate_file: Option<PathBuf>,
    /// Client certificate for etcd.
    pub store_etcd_certificate_file: Option<PathBuf>,
    /// Its key.
    pub store_etcd_private_key_file: Option<PathBuf>,
    /// Timeout of connecting to etcd.
    #[serde(serialize_with = "ser_duration")]
    pub store_etcd_dial_timeout: Duration,
    /// Timeout of one etcd request.
    #[serde(serialize_with = "ser_duration")]
    pub store_etcd_request_timeout: Duration,
    /// Lease of a replica's liveness key (2 s to 60 s).
    #[serde(serialize_with = "ser_duration")]
    pub replica_lease_ttl: Duration,
    /// `advertise_address` as configured; see [`Manager::advertised_address`] for the one in
    /// force.
    pub advertise_address: Option<HostPort>,
}

impl Manager {
    /// The admin token file in force: the configured one or `<data_dir>/admin.token`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The address this replica shows the others: `advertise_address`, else
    /// `listen_address:port` with an unspecified address (`0.0.0.0`, `::`), which nobody can
    /// dial, replaced by `host_name` (the caller's host name).
    pub fn advertised_address(&self, host_name: &str) -> HostPort {
        if let Some(hp) = &self.advertise_address {
            return hp.clone();
        }
        let host = if host_is_unspecified(&self.listen_address) {
            host_name.to_string()
        } else {
            self.listen_address.clone()
        };
        HostPort {
            host,
            port: self.port,
        }
    }
}

/// One line of the effective configuration (`autogate version --show-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Section, e.g. `server` or `client:prod`.
    pub section: String,
    /// Key, e.g. `port`.
    pub key: String,
    /// Environment variable, e.g. `GATEWAY_SERVER_PORT`.
    pub env: String,
    /// Effective value as text; `<redacted>` for a set secret; empty when unset.
    pub value: String,
    /// Where the value came from.
    pub source: Source,
    /// The name the value was given under when it is not `section.key`: `commander.host` for
    /// `connect.hosts`, `server.client_certif_auth`, `client.port` for an inherited profile
    /// setting.
    pub set_as: Option<String>,
    /// The key is a secret.
    pub secret: bool,
}

impl Entry {
    /// `section.key`, or the name it was set under, for messages.
    pub(crate) fn name(&self) -> String {
        self.set_as
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.section, self.key))
    }
}
