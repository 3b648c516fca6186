//! The schema table: every configuration key, once.
//!
//! Parsing, environment-variable names, alias handling, `--show-config` output and the
//! reference in `docs/configuration.md` are all driven by [`KEYS`], so a key cannot be
//! documented but unreadable, or readable but undocumented. Keys of the product family that
//! autogate does not act on are still listed (flagged `compat`) because a family config file
//! must load unchanged.

use std::time::Duration;

use serde::Serialize;

use crate::model::Role;

/// How a key's value is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true/false`, `1/0`, `yes/no` (any case).
    Bool,
    /// Whole number within a range.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// Whole number of minutes (never a duration with a unit).
    Minutes {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// Port 1-65535.
    Port,
    /// Go-style duration (`300ms`, `10s`, `1h30m`) or days (`30d`).
    Duration {
        /// Smallest accepted value.
        min: Option<Duration>,
    },
    /// Bytes, optionally with a unit (`1MiB`, `512KiB`).
    Size {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// One of a fixed set of words (case-insensitive).
    Enum {
        /// Accepted words, in their canonical spelling.
        values: &'static [&'static str],
        /// Words the family accepts but autogate does not support.
        unsupported: &'static [&'static str],
        /// Canonical spelling is upper case (log levels).
        upper: bool,
    },
    /// Space-separated `host:port` list.
    HostPortList,
    /// One `host:port`.
    HostPort,
    /// Host name or IP address without port.
    Host,
    /// File or directory; a leading `~` is the home directory.
    Path,
    /// Free text.
    Str,
    /// Cluster id: 1-63 characters of `[A-Za-z0-9_.-]`.
    ClusterId,
    /// Space-separated `key=value` labels.
    Labels,
    /// `http://` or `https://` URL.
    Url,
    /// Duration within a range, e.g. a lease TTL.
    DurationRange {
        /// Smallest accepted value.
        min: Duration,
        /// Largest accepted value.
        max: Duration,
    },
    /// etcd key prefix: starts with `/`, no trailing `/`, at most 128 printable ASCII characters
    /// without spaces.
    KeyPrefix,
    /// `utc`, `local` or a time zone id.
    TimeZone,
}

impl Kind {
    /// A short human name of the kind, for the reference.
    pub fn describe(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int { min, max } => format!("integer {min}-{max}"),
            Kind::Minutes { min, max } => format!("integer minutes {min}-{max}"),
            Kind::Port => "port".into(),
            Kind::Duration { min: None } => "duration".into(),
            Kind::Duration { min: Some(m) } => {
                format!("duration, at least {}", crate::value::format_duration(*m))
            }
            Kind::Size { min, max } => format!(
                "size {}-{}",
                crate::value::format_size(*min),
                crate::value::format_size(*max)
            ),
            Kind::Enum { values, .. } => values.join(" | "),
            Kind::HostPortList => "space-separated host:port list".into(),
            Kind::HostPort => "host:port".into(),
            Kind::Host => "host".into(),
            Kind::Path => "path".into(),
            Kind::Str => "text".into(),
            Kind::ClusterId => "cluster id".into(),
            Kind::Labels => "space-separated key=value list".into(),
            Kind::Url => "URL".into(),
            Kind::DurationRange { min, max } => format!(
                "duration {}-{}",
                crate::value::format_duration(*min),
                crate::value::format_duration(*max)
            ),
            Kind::KeyPrefix => "etcd key prefix".into(),
            Kind::TimeZone => "time zone".into(),
        }
    }
}

/// A key's built-in default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "text", rename_all = "snake_case")]
pub enum DefaultValue {
    /// No default: the setting is unset unless given.
    None,
    /// A literal default, parsed like any given value.
    Value(&'static str),
    /// Computed from other settings at load time; the text describes how.
    Derived(&'static str),
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// INI section, e.g. `python-script`.
    pub section: &'static str,
    /// Key within the section.
    pub key: &'static str,
    /// How the value is parsed.
    pub kind: Kind,
    /// Built-in default.
    pub default: DefaultValue,
    /// One-line meaning, for the reference.
    pub doc: &'static str,
    /// The value is a secret: never echoed, redacted in listings.
    pub secret: bool,
    /// Accepted for compatibility with the product family; no effect. A node that starts with
    /// such a key set says so once, with [`KeyDef::instead`].
    pub compat: bool,
    /// For a `compat` key: what autogate does instead, for the start-up warning and the
    /// reference.
    pub instead: &'static str,
    /// Other spellings accepted in files (the family's `client_certif_auth`).
    pub file_aliases: &'static [&'static str],
    /// For `[commander]` keys: the `[connect]` key they are an older name of.
    pub alias_of: Option<&'static str>,
}

impl KeyDef {
    const fn new(
        section: &'static str,
        key: &'static str,
        kind: Kind,
        default: DefaultValue,
        doc: &'static str,
    ) -> Self {
        KeyDef {
            section,
            key,
            kind,
            default,
            doc,
            secret: false,
            compat: false,
            instead: "",
            file_aliases: &[],
            alias_of: None,
        }
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn compat(mut self, instead: &'static str) -> Self {
        self.compat = true;
        self.instead = instead;
        self
    }

    const fn file_aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.file_aliases = aliases;
        self
    }

    const fn alias_of(mut self, connect_key: &'static str) -> Self {
        self.alias_of = Some(connect_key);
        self
    }

    /// `section.key`, the name used in messages.
    pub fn id(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// `GATEWAY_` + UPPER(section, `-`→`_`) + `_` + UPPER(key).
    pub fn env_name(&self) -> String {
        env_name(self.section, self.key)
    }
}

/// The environment variable of `key` in `section` (`client:prod` gives `GATEWAY_CLIENT_PROD_…`).
pub fn env_name(section: &str, key: &str) -> String {
    format!(
        "GATEWAY_{}_{}",
        section.replace(['-', ':'], "_").to_ascii_uppercase(),
        key.replace('-', "_").to_ascii_uppercase()
    )
}

/// Sections in reference order, with a one-line description.
pub const SECTIONS: &[(&str, &str)] = &[
    ("application", "Identity and working directory of this node."),
    ("connect", "The link from the active core node to the manager, and high availability (HA) of core nodes."),
    ("commander", "Older name of `[connect]` (the HA guide uses it). Every key here sets the `[connect]` key named in its meaning; setting one setting through both names is an error."),
    ("server", "The core node's operator API (HTTP/JSON) and its behaviour."),
    ("runner", "Runner nodes. Runners work through the shared store and need no port: the family's gRPC listener keys are accepted but have no effect; `metrics_port` opens an optional probe and metrics port."),
    ("store", "The store shared by the nodes of a cluster."),
    ("log", "Logging."),
    ("secrets", "Secrets at rest."),
    ("features", "Service types. `false` disables both management and execution of that type."),
    ("python-script", "Python-script services."),
    ("registry", "Package registries."),
    ("terminal", "CLI output."),
    ("client", "The operator CLI's connection to a core node. Profiles `[client:<name>]` override these per profile."),
    ("manager", "The manager (`autogate manager`): the controller side that gateway clusters connect to."),
];

/// Settings a `[client:<profile>]` section (or `GATEWAY_CLIENT_<PROFILE>_<SETTING>`) may set.
pub const PROFILE_SETTINGS: &[&str] = &[
    "host",
    "port",
    "api_key",
    "certificate_file",
    "private_key_file",
    "use_tls",
];

use DefaultValue::{Derived, None as NoDefault, Value as V};

const BOOL: Kind = Kind::Bool;
const PORT: Kind = Kind::Port;
const PATH: Kind = Kind::Path;
const STR: Kind = Kind::Str;
const HOST: Kind = Kind::Host;
const DUR: Kind = Kind::Duration { min: None };
const LEASE_TTL: Kind = Kind::Duration {
    min: Some(Duration::from_secs(2)),
};
const BACKOFF: Kind = Kind::Duration {
    min: Some(Duration::from_millis(100)),
};
// Liveness of the manager link: below 100 ms a ping would cost more than the traffic it
// guards; the dead-after limits count whole seconds in the messages that report them.
const PING_INTERVAL: Kind = Kind::Duration {
    min: Some(Duration::from_millis(100)),
};
const DEAD_AFTER: Kind = Kind::Duration {
    min: Some(Duration::from_secs(1)),
};
const MAX_TRANSITIONS: Kind = Kind::Int { min: 0, max: 1000 };
const MODES: Kind = Kind::Enum {
    values: &["local", "server", "runner", "client"],
    unsupported: &[],
    upper: false,
};
const BACKENDS: Kind = Kind::Enum {
    values: &["local", "memory", "etcd"],
    unsupported: &["dynamodb"],
    upper: false,
};
// The manager has no use for a store that dies with the process: its state outlives restarts.
const MANAGER_BACKENDS: Kind = Kind::Enum {
    values: &["local", "etcd"],
    unsupported: &["memory"],
    upper: false,
};
// Below 2 s a replica's keep-alive would race its own lease; above a minute a dead replica's
// clusters would wait too long for their runs to be taken over.
const REPLICA_TTL: Kind = Kind::DurationRange {
    min: Duration::from_secs(2),
    max: Duration::from_secs(60),
};
const LEVELS: Kind = Kind::Enum {
    values: &[
        "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "DISABLED",
    ],
    unsupported: &[],
    upper: true,
};

// Documentation strings shared by `[connect]` and its older name `[commander]`.
const D_CERT: &str =
    "client certificate presented to the manager (PEM); every core node may have its own";
const D_KEY: &str = "private key of that certificate (PEM)";
const D_ENABLED: &str = "connect to the manager at all";
const D_INSECURE: &str = "skip verification of the manager's certificate (testing only)";
const D_HA: &str =
    "active/standby among the core nodes with the same cluster id; needs `store.backend = etcd`";
const D_PRIMARY: &str = "preferred active node: takes the active role when online and healthy for `server_ha_preempt_delay`; set on at most one node";
const D_TTL: &str = "lease time-to-live of the election key; a crashed active node is replaced after about this long";
const D_PREEMPT: &str = "how long a primary node must be healthy before it takes the active role back (graceful hand-over)";
const D_DRAIN: &str = "on a stop (SIGTERM, Ctrl-C), how long the node lets the manager's runs it is executing finish and answers them before it resigns; new runs wait for the next active node; what is still running then is killed and answered interrupted";
const D_GRACE: &str = "how long the active node may fail to reach the manager, while a standby can, before leadership moves";
const D_TRANSITIONS: &str =
    "flap budget: preemption hand-overs allowed per hour; `0` disables preemption";
const D_PROBE: &str = "time allowed to prove a vanished active node dead (its port refuses while its host answers) before its lease expires; `0s` disables crash probing";
const D_BACKOFF: &str =
    "cap of the exponential back-off (with jitter) between manager reconnect attempts";
const D_LINK_PING: &str = "how often the active node pings the manager; with `link_dead_after` it bounds how long a silent link goes unnoticed";
const D_LINK_DEAD: &str = "a manager link nothing arrived on (no frame, no pong) for this long is dropped and dialled again; must exceed `link_ping_interval`";
const D_ADVERTISE: &str =
    "address other core nodes use to reach this node's API (forwarded writes); must be routable";

/// Every key, in reference order. One line per key keeps the table reviewable.
#[rustfmt::skip]
pub static KEYS: &[KeyDef] = &[
    // [application]
    KeyDef::new("application", "mode", MODES, V("local"), "node role: `local` (all-in-one), `server` (core node), `runner` or `client`"),
    KeyDef::new("application", "cluster_id", Kind::ClusterId, V("cluster_1"), "cluster identity; nodes sharing a store and this id form one cluster, seen by the manager as one gateway"),
    KeyDef::new("application", "working_dir", PATH, V("~/.gateway.d"), "working directory: local store, API key, logs and manager data by default"),
    KeyDef::new("application", "node_name", STR, Derived("the CN of `connect.certificate_file`, else the host name"), "stable name of this node, shown next to its id (new at every start) by the manager, the HA status and `get runners`; set it when several nodes share a host and have no certificate of their own"),
    KeyDef::new("application", "ca_certificate_file", PATH, NoDefault, "CA certificate for client, server and runner TLS"),
    KeyDef::new("application", "venv_retention_period", DUR, V("30d"), "idle time after which the pruner deletes a cached Python venv or Ansible Galaxy install (a playbook's `requirements.yml`): one no run used for this long (one in use or being built is never deleted; the next run needing it builds it again)"),
    KeyDef::new("application", "run_output_limit", Kind::Size { min: 1 << 10, max: 1 << 30 }, V("16MiB"), "largest captured stdout or stderr of one run; beyond it the output is truncated with a marker"),
    KeyDef::new("application", "venv_sweep_interval", Kind::Duration { min: Some(Duration::from_secs(1)) }, V("24h"), "how often the venv pruner looks for cached venvs and Galaxy installs to delete (core nodes and runners, at start and then at this interval)"),
    KeyDef::new("application", "auto_accept_eula", BOOL, V("false"), "family 5.0.x: accept the EULA non-interactively").compat("autogate has no EULA to accept; nothing waits for one"),
    // [connect]
    KeyDef::new("connect", "hosts", Kind::HostPortList, NoDefault, "manager addresses, **space**-separated `host:port` list; one live connection at a time"),
    KeyDef::new("connect", "enabled", BOOL, V("true"), D_ENABLED),
    KeyDef::new("connect", "certificate_file", PATH, NoDefault, D_CERT),
    KeyDef::new("connect", "private_key_file", PATH, NoDefault, D_KEY),
    KeyDef::new("connect", "insecure_tls", BOOL, V("false"), D_INSECURE),
    KeyDef::new("connect", "proxy_url", Kind::Url, NoDefault, "HTTP CONNECT proxy for the manager link, e.g. `http://proxy:3128` (`http://user:password@proxy:3128` works too; the password is never shown). Unset: `HTTPS_PROXY` (or `https_proxy`), except for `localhost` and loopback managers. Managers in `NO_PROXY` are dialled directly. TLS runs end to end through the tunnel; `https://` proxies and SOCKS are refused"),
    KeyDef::new("connect", "proxy_username", STR, NoDefault, "proxy user name, for basic authentication; wins over a user in the proxy URL"),
    KeyDef::new("connect", "proxy_password", STR, NoDefault, "proxy password; wins over a password in the proxy URL").secret(),
    KeyDef::new("connect", "server_ha_enabled", BOOL, V("false"), D_HA),
    KeyDef::new("connect", "server_ha_is_primary", BOOL, V("false"), D_PRIMARY),
    KeyDef::new("connect", "server_ha_lease_ttl", LEASE_TTL, V("10s"), D_TTL),
    KeyDef::new("connect", "server_ha_preempt_delay", DUR, V("10s"), D_PREEMPT),
    KeyDef::new("connect", "server_ha_connect_grace", DUR, V("15s"), D_GRACE),
    KeyDef::new("connect", "server_ha_max_transitions", MAX_TRANSITIONS, V("6"), D_TRANSITIONS),
    KeyDef::new("connect", "server_ha_probe_window", DUR, V("300ms"), D_PROBE),
    KeyDef::new("connect", "server_ha_drain_timeout", DUR, V("60s"), D_DRAIN),
    KeyDef::new("connect", "run_retention", DUR, V("24h"), "how long the record of a manager's run is kept, so a copy of the run sent again is answered from it instead of running twice"),
    KeyDef::new("connect", "reconnect_max_backoff", BACKOFF, V("10s"), D_BACKOFF),
    KeyDef::new("connect", "advertise_address", Kind::HostPort, Derived("`server.listen_address:server.port`"), D_ADVERTISE),
    KeyDef::new("connect", "link_ping_interval", PING_INTERVAL, V("1s"), D_LINK_PING),
    KeyDef::new("connect", "link_dead_after", DEAD_AFTER, V("5s"), D_LINK_DEAD),
    // [commander]: older name of [connect]
    KeyDef::new("commander", "host", HOST, NoDefault, "single manager host, used with `port`").alias_of("hosts"),
    KeyDef::new("commander", "port", PORT, V("443"), "manager port, used with `host`").alias_of("hosts"),
    KeyDef::new("commander", "certificate_file", PATH, NoDefault, D_CERT).alias_of("certificate_file"),
    KeyDef::new("commander", "private_key_file", PATH, NoDefault, D_KEY).alias_of("private_key_file"),
    KeyDef::new("commander", "enabled", BOOL, NoDefault, D_ENABLED).alias_of("enabled"),
    KeyDef::new("commander", "insecure_tls", BOOL, NoDefault, D_INSECURE).alias_of("insecure_tls"),
    KeyDef::new("commander", "server_ha_enabled", BOOL, NoDefault, D_HA).alias_of("server_ha_enabled"),
    KeyDef::new("commander", "server_ha_is_primary", BOOL, NoDefault, D_PRIMARY).alias_of("server_ha_is_primary"),
    KeyDef::new("commander", "server_ha_lease_ttl", LEASE_TTL, NoDefault, D_TTL).alias_of("server_ha_lease_ttl"),
    KeyDef::new("commander", "server_ha_preempt_delay", DUR, NoDefault, D_PREEMPT).alias_of("server_ha_preempt_delay"),
    KeyDef::new("commander", "server_ha_connect_grace", DUR, NoDefault, D_GRACE).alias_of("server_ha_connect_grace"),
    KeyDef::new("commander", "server_ha_max_transitions", MAX_TRANSITIONS, NoDefault, D_TRANSITIONS).alias_of("server_ha_max_transitions"),
    KeyDef::new("commander", "server_ha_probe_window", DUR, NoDefault, D_PROBE).alias_of("server_ha_probe_window"),
    KeyDef::new("commander", "server_ha_drain_timeout", DUR, NoDefault, D_DRAIN).alias_of("server_ha_drain_timeout"),
    KeyDef::new("commander", "reconnect_max_backoff", BACKOFF, NoDefault, D_BACKOFF).alias_of("reconnect_max_backoff"),
    KeyDef::new("commander", "advertise_address", Kind::HostPort, NoDefault, D_ADVERTISE).alias_of("advertise_address"),
    KeyDef::new("commander", "link_ping_interval", PING_INTERVAL, NoDefault, D_LINK_PING).alias_of("link_ping_interval"),
    KeyDef::new("commander", "link_dead_after", DEAD_AFTER, NoDefault, D_LINK_DEAD).alias_of("link_dead_after"),
    // [server]
    KeyDef::new("server", "listen_address", HOST, V("127.0.0.1"), "bind address of the operator API; also the default `connect.advertise_address`, so prefer a routable address to `0.0.0.0`"),
    KeyDef::new("server", "port", PORT, V("50051"), "operator API port (HTTP/JSON, not gRPC)"),
    KeyDef::new("server", "use_tls", BOOL, V("false"), "serve the API over TLS; needs `certificate_file` and `private_key_file` (the family defaults to `true`)"),
    KeyDef::new("server", "certificate_file", PATH, NoDefault, "server certificate (PEM)"),
    KeyDef::new("server", "private_key_file", PATH, NoDefault, "its private key (PEM)"),
    KeyDef::new("server", "distributed_execution", BOOL, V("false"), "delegate executions to runners (needs `store.backend = etcd`); `false` = the core node runs jobs itself"),
    KeyDef::new("server", "job_queue_timeout", DUR, V("60s"), "distributed execution: how long a job waits while no runner can take it before it fails with `no runner available in cluster <id>`"),
    KeyDef::new("server", "job_retention", DUR, V("15m"), "distributed execution: how long finished jobs stay for `inspect cluster activity`"),
    KeyDef::new("server", "api_key_expiration", Kind::Minutes { min: 1, max: 5_256_000 }, V("1440"), "API key lifetime in whole **minutes** (`720h` is refused, not misread)"),
    KeyDef::new("server", "admin_password_file", PATH, NoDefault, "file whose first line is the password of `admin`, created at the first start of a cluster without users (else a temporary password is printed once)"),
    KeyDef::new("server", "client_cert_auth", BOOL, V("false"), "require client certificates on the TLS API, verified against `application.ca_certificate_file` (file key `client_certif_auth`, the family's spelling, is accepted too)").file_aliases(&["client_certif_auth"]),
    KeyDef::new("server", "grpc_max_recv_msg_size", Kind::Size { min: 1, max: 1 << 30 }, NoDefault, "family 5.5.1+: largest inbound gRPC message").compat("the API is HTTP/JSON, not gRPC; its request size limits are built in"),
    KeyDef::new("server", "runtime_data_dir", PATH, NoDefault, "runtime data such as venvs"),
    KeyDef::new("server", "service_user", STR, NoDefault, "OS user the services' programs run as (python, ansible-playbook, tofu, executables, venv builds), e.g. `autogate-svc`; it cannot read the store, the keys, the log nor other services' checkouts. Needs a node running as root; the user must exist and be neither root nor the node's own user. Unset = services run as the node's user"),
    KeyDef::new("server", "shutdown_grace", DUR, V("10s"), "time given to in-flight work when the node stops"),
    KeyDef::new("server", "allow_plaintext", BOOL, V("false"), "serve the API without TLS on a `listen_address` that is not loopback (`127.0.0.0/8`, `::1`, `localhost`); refused by default, because passwords and API keys would cross the network readable. Standbys never forward credentials in plaintext to a non-loopback peer, even with this set"),
    KeyDef::new("server", "header_read_timeout", Kind::Duration { min: Some(Duration::from_secs(1)) }, V("10s"), "time a client has to send a request's headers (also how long an idle kept-alive connection stays open); then the connection is closed"),
    KeyDef::new("server", "body_read_timeout", Kind::Duration { min: Some(Duration::from_secs(1)) }, V("60s"), "time a request's body has to arrive once its headers are in; a slower body is answered 408 and its connection closed"),
    KeyDef::new("server", "max_connections", Kind::Int { min: 1, max: 1_000_000 }, V("1024"), "API connections open at once (TLS handshakes included); beyond that new ones are closed at once (plain HTTP ones with a 503 first)"),
    KeyDef::new("server", "max_connections_per_address", Kind::Int { min: 1, max: 1_000_000 }, V("256"), "API connections open at once from one client address (an IPv6 /64 counts as one address); beyond that as `max_connections`"),
    // [runner]
    KeyDef::new("runner", "announcement_address", HOST, NoDefault, "family: address registered in the store").compat("a runner registers in the store under its node id and host name; core nodes reach it through the store, never by address"),
    KeyDef::new("runner", "listen_address", HOST, V("127.0.0.1"), "bind address of the runner's probe port (`metrics_port`); the family's runner gRPC address"),
    KeyDef::new("runner", "port", PORT, V("50051"), "family: runner gRPC port").compat("runners listen on no port: they take their jobs through the store, so secure etcd instead (`store.etcd_use_tls` and its keys)"),
    KeyDef::new("runner", "use_tls", BOOL, V("false"), "family: mTLS between servers and runners").compat("runners listen on no port: they take their jobs through the store, so secure etcd instead (`store.etcd_use_tls` and its keys)"),
    KeyDef::new("runner", "certificate_file", PATH, NoDefault, "family: runner certificate").compat("runners listen on no port: they take their jobs through the store, so secure etcd instead (`store.etcd_use_tls` and its keys)"),
    KeyDef::new("runner", "private_key_file", PATH, NoDefault, "family: its key").compat("runners listen on no port: they take their jobs through the store, so secure etcd instead (`store.etcd_use_tls` and its keys)"),
    KeyDef::new("runner", "client_cert_auth", BOOL, V("false"), "family 5.0.x: require a client certificate from servers").compat("runners listen on no port: they take their jobs through the store, so secure etcd instead (`store.etcd_use_tls` and its keys)"),
    KeyDef::new("runner", "runtime_data_dir", PATH, NoDefault, "runtime data such as venvs"),
    KeyDef::new("runner", "service_user", STR, NoDefault, "as `server.service_user`, for the jobs this runner runs"),
    KeyDef::new("runner", "capacity", Kind::Int { min: 0, max: 4096 }, Derived("number of CPUs"), "jobs run at once; `0` = number of CPUs"),
    KeyDef::new("runner", "labels", Kind::Labels, NoDefault, "labels announced with the runner's registration, e.g. `zone=a gpu=no`"),
    KeyDef::new("runner", "metrics_port", PORT, NoDefault, "when set, the runner serves `/healthz`, `/readyz` and `/metrics` on `listen_address:metrics_port` (runners need no port otherwise)"),
    KeyDef::new("runner", "drain_grace", DUR, V("30s"), "time given to running jobs when the runner stops"),
    KeyDef::new("runner", "lease_ttl", LEASE_TTL, V("10s"), "TTL of the runner's registration and job claims: how long after a runner crashes or is cut off from etcd its jobs are dispatched again"),
    // [store]
    KeyDef::new("store", "backend", BACKENDS, V("local"), "`local` (embedded file in the working directory), `memory` (lost at exit) or `etcd` (needed for HA and runners); the family's `dynamodb` is not supported"),
    KeyDef::new("store", "etcd_hosts", Kind::HostPortList, NoDefault, "etcd endpoints, **space**-separated, e.g. `h1:2379 h2:2379`"),
    KeyDef::new("store", "etcd_use_tls", BOOL, V("false"), "TLS to etcd"),
    KeyDef::new("store", "etcd_client_cert_auth", BOOL, V("false"), "`false` = verify etcd with the CA only; `true` = mTLS, needs `etcd_certificate_file` and `etcd_private_key_file`"),
    KeyDef::new("store", "etcd_ca_certificate_file", PATH, NoDefault, "CA of etcd's certificate (system roots when unset); must exist when `etcd_use_tls`"),
    KeyDef::new("store", "etcd_certificate_file", PATH, NoDefault, "client certificate for etcd"),
    KeyDef::new("store", "etcd_private_key_file", PATH, NoDefault, "its private key"),
    KeyDef::new("store", "dynamodb_table_name", STR, NoDefault, "family: DynamoDB table").compat("DynamoDB is not supported; `store.backend` chooses `local`, `memory` or `etcd`"),
    KeyDef::new("store", "etcd_dial_timeout", DUR, V("2s"), "timeout of connecting to etcd"),
    KeyDef::new("store", "etcd_request_timeout", DUR, V("5s"), "timeout of one etcd request"),
    // [log]
    KeyDef::new("log", "level", LEVELS, V("INFO"), "minimum level: `TRACE DEBUG INFO WARN ERROR FATAL DISABLED` (any case)"),
    KeyDef::new("log", "console_json", BOOL, V("false"), "JSON lines on the console"),
    KeyDef::new("log", "file_enabled", BOOL, V("false"), "also write `<server_dir>/gateway.log` (the family defaults to `true`; autogate does not, so a plain CLI call writes no file)"),
    KeyDef::new("log", "file_json", BOOL, V("false"), "JSON lines in the log file"),
    KeyDef::new("log", "server_dir", PATH, Derived("`<working_dir>/logs`"), "directory of `gateway.log`"),
    KeyDef::new("log", "timestamp_timezone", Kind::TimeZone, V("utc"), "time zone of log timestamps: `utc`, `local` or a time zone id such as `Europe/Paris`; UTC lines end in `Z`, others carry their offset (`2024-12-23T19:03:59+01:00`)"),
    // [secrets]
    KeyDef::new("secrets", "encrypt_key_file", PATH, NoDefault, "key file for secrets at rest; identical on every node of the cluster, losing it loses the secrets"),
    // [features]
    KeyDef::new("features", "python_enabled", BOOL, V("true"), "Python-script services"),
    KeyDef::new("features", "ansible_enabled", BOOL, V("true"), "Ansible-playbook services"),
    KeyDef::new("features", "opentofu_enabled", BOOL, V("true"), "OpenTofu-plan services"),
    KeyDef::new("features", "hostkeys_enabled", BOOL, V("true"), "family: `hostkeys` commands and host key checking. Here SSH host keys are always checked against the cluster's known hosts (`autogate hostkeys`); `false` only logs a warning").compat("SSH host keys are always checked against the cluster's known hosts"),
    KeyDef::new("features", "mcp_enabled", BOOL, V("true"), "family 5.5+: MCP commands").compat("autogate has no MCP commands or endpoints"),
    // [python-script]
    KeyDef::new("python-script", "requirements_file", STR, V("requirements.txt"), "dependency file looked up in the service's working directory (`requirements.txt` or `pyproject.toml`); set it on runners too"),
    // [registry]
    KeyDef::new("registry", "default_overridable", BOOL, V("true"), "family: services may pick another registry").compat("every service may name its own registry"),
    // [terminal]
    KeyDef::new("terminal", "no_color", BOOL, V("false"), "plain CLI output: the CLI never colours its output, and with `true` (or `NO_COLOR` set in the environment) the progress of a long command is printed as plain lines instead of a redrawn spinner, as on a pipe"),
    KeyDef::new("terminal", "timestamp_timezone", Kind::TimeZone, V("utc"), "`utc`, `local` or a time zone id such as `Europe/Paris`, for CLI timestamps"),
    // [client]
    KeyDef::new("client", "host", HOST, V("127.0.0.1"), "core node address"),
    KeyDef::new("client", "port", PORT, V("50051"), "core node API port"),
    KeyDef::new("client", "use_tls", BOOL, V("false"), "TLS to the core node (the family defaults to `true`; autogate follows `server.use_tls`'s default)"),
    KeyDef::new("client", "certificate_file", PATH, NoDefault, "client certificate (PEM)"),
    KeyDef::new("client", "private_key_file", PATH, NoDefault, "its private key (PEM)"),
    KeyDef::new("client", "api_key", STR, NoDefault, "API key sent with every request (usually per profile)").secret(),
    // [manager]
    KeyDef::new("manager", "listen_address", HOST, V("127.0.0.1"), "bind address"),
    KeyDef::new("manager", "port", PORT, V("8443"), "port of `wss://host:port/ws`, the REST API and the web page"),
    KeyDef::new("manager", "certificate_file", PATH, NoDefault, "server certificate (PEM)"),
    KeyDef::new("manager", "private_key_file", PATH, NoDefault, "its private key (PEM)"),
    KeyDef::new("manager", "data_dir", PATH, Derived("`<working_dir>/manager`"), "manager state: registered clusters and certificates, session history"),
    KeyDef::new("manager", "admin_token_file", PATH, NoDefault, "admin token for the REST API; unset = `<data_dir>/admin.token`, created by the manager"),
    KeyDef::new("manager", "max_frame_size", Kind::Size { min: 1 << 10, max: 1 << 30 }, V("1MiB"), "largest WebSocket frame accepted (bytes, or with a unit: `512KiB`, `1MiB`)"),
    KeyDef::new("manager", "session_history", Kind::Int { min: 1, max: 1_000_000 }, V("1000"), "ended sessions kept in the history"),
    KeyDef::new("manager", "run_queue_timeout", DUR, V("30s"), "how long a service run waits for its cluster's next session (a fail-over) before it is refused with 503; it is then never sent"),
    KeyDef::new("manager", "run_queue_size", Kind::Int { min: 1, max: 1_000_000 }, V("1000"), "service runs of one cluster that may wait for a session at once; more are refused with 503"),
    KeyDef::new("manager", "run_retention", DUR, V("24h"), "how long a run's record (and its answer, for `GET …/runs/{run_id}` and a repeated `Idempotency-Key`) is kept"),
    KeyDef::new("manager", "ping_interval", PING_INTERVAL, V("1s"), "how often the manager pings each gateway session; with `silence_limit` it bounds how long a silent session goes unnoticed"),
    KeyDef::new("manager", "silence_limit", DEAD_AFTER, V("5s"), "a session nothing arrived on (no frame, no pong) for this long is closed as lost (1001), so runs wait for the cluster's next session; must exceed `ping_interval`"),
    KeyDef::new("manager", "session_frame_rate", Kind::Int { min: 1, max: 1_000_000 }, V("200"), "frames per second a gateway session may send on average, beyond which it is closed with 1008 `rate limit exceeded`; answers to the manager's own requests (runs, pings) do not count"),
    KeyDef::new("manager", "session_frame_burst", Kind::Int { min: 1, max: 1_000_000 }, V("400"), "frames a gateway session may send at once before `session_frame_rate` applies"),
    KeyDef::new("manager", "max_connections_per_source", Kind::Int { min: 1, max: 16_384 }, V("1024"), "connections one source (an IPv4 address, an IPv6 /64) may hold open at once; one more is closed before its TLS handshake"),
    KeyDef::new("manager", "store_backend", MANAGER_BACKENDS, V("local"), "where the manager keeps its state: `local` (the file `<data_dir>/manager.db`, one manager process) or `etcd` (shared by replicas: processes with the same `store_etcd_hosts`, `store_etcd_prefix` and admin token are one manager; needs `certificate_file` and `private_key_file`, the same on every replica)"),
    KeyDef::new("manager", "store_etcd_hosts", Kind::HostPortList, NoDefault, "etcd endpoints of the manager's store, **space**-separated, e.g. `h1:2379 h2:2379`"),
    KeyDef::new("manager", "store_etcd_prefix", Kind::KeyPrefix, V("/autogate-manager"), "key prefix of the manager's data in etcd: starts with `/`, no trailing `/`, at most 128 printable ASCII characters without spaces, outside the gateways' `/autogate/`; every replica of one manager has the same, two managers on one etcd each their own"),
    KeyDef::new("manager", "store_etcd_use_tls", BOOL, V("false"), "TLS to the manager's etcd"),
    KeyDef::new("manager", "store_etcd_client_cert_auth", BOOL, V("false"), "`false` = verify etcd with the CA only; `true` = mTLS, needs `store_etcd_certificate_file` and `store_etcd_private_key_file`"),
    KeyDef::new("manager", "store_etcd_ca_certificate_file", PATH, NoDefault, "CA of etcd's certificate (system roots when unset); must exist when `store_etcd_use_tls`"),
    KeyDef::new("manager", "store_etcd_certificate_file", PATH, NoDefault, "client certificate for the manager's etcd"),
    KeyDef::new("manager", "store_etcd_private_key_file", PATH, NoDefault, "its private key"),
    KeyDef::new("manager", "store_etcd_dial_timeout", DUR, V("2s"), "timeout of connecting to the manager's etcd"),
    KeyDef::new("manager", "store_etcd_request_timeout", DUR, V("5s"), "timeout of one request to the manager's etcd"),
    KeyDef::new("manager", "replica_lease_ttl", REPLICA_TTL, V("5s"), "with `store_backend = etcd`: lease of a replica's liveness key; when a replica dies, its claims (sessions, runs) end within this time"),
    KeyDef::new("manager", "advertise_address", Kind::HostPort, Derived("`listen_address:port`, an unspecified address (`0.0.0.0`, `::`) replaced by the host name"), "address of this replica shown to the others in `autogate manager status`"),
];

/// The settings of each daemon role that `autogate help <role>` names, in the order it lists
/// them: the ones a first deployment sets (derived ones such as `connect.advertise_address` are
/// left to the reference and to the message that asks for them). Ids of [`KEYS`] (a test checks
/// each exists).
pub const ROLE_KEYS: &[(Role, &[&str])] = &[
    (
        Role::Server,
        &[
            "application.working_dir",
            "application.cluster_id",
            "server.listen_address",
            "server.port",
            "server.use_tls",
            "store.backend",
            "store.etcd_hosts",
            "connect.hosts",
            "connect.certificate_file",
            "connect.private_key_file",
            "connect.server_ha_enabled",
            "connect.server_ha_is_primary",
            "server.distributed_execution",
            "secrets.encrypt_key_file",
            "log.level",
        ],
    ),
    (
        Role::Runner,
        &[
            "application.working_dir",
            "application.cluster_id",
            "store.backend",
            "store.etcd_hosts",
            "runner.capacity",
            "runner.labels",
            "runner.listen_address",
            "runner.metrics_port",
            "runner.drain_grace",
            "runner.lease_ttl",
            "secrets.encrypt_key_file",
            "log.level",
        ],
    ),
    (
        Role::Manager,
        &[
            "application.working_dir",
            "manager.listen_address",
            "manager.port",
            "manager.certificate_file",
            "manager.private_key_file",
            "manager.data_dir",
            "manager.admin_token_file",
            "manager.store_backend",
            "manager.store_etcd_hosts",
            "log.level",
        ],
    ),
];

/// The keys `autogate help <role>` names for `role` (none for the CLI roles).
pub fn role_keys(role: Role) -> impl Iterator<Item = &'static KeyDef> {
    ROLE_KEYS
        .iter()
        .filter(move |(r, _)| *r == role)
        .flat_map(|(_, ids)| ids.iter())
        .filter_map(|id| {
            let (section, key) = id.split_once('.')?;
            find(section, key)
        })
}

/// The schema table.
pub fn keys() -> &'static [KeyDef] {
    KEYS
}

/// The key `section.key`, if it exists.
pub fn find(section: &str, key: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|d| d.section == section && d.key == key)
}
