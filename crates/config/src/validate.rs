//! Rules that involve more than one key.
//!
//! [`check_cross_fields`] runs inside `load` because its rules hold for every role: a
//! configuration that breaks them is wrong wherever it is used. [`validate_for`] adds the rules
//! that only matter for the role about to start (a client does not care about the store), so the
//! operator CLI is not refused over a server-only mistake. Both run before anything binds. The
//! rules are listed in `docs/configuration.md`; keep that list and this file in step.

use crate::error::{ConfigError, Setting};
use crate::model::{BackendKind, Entry, Role};
use crate::schema::env_name;
use crate::source::Source;
use crate::Config;

/// Name (as set), display value and source of a key, for messages.
struct Origin {
    name: String,
    value: String,
    source: Source,
}

fn origin(cfg: &Config, section: &str, key: &str) -> Origin {
    match cfg
        .entries
        .iter()
        .find(|e: &&Entry| e.section == section && e.key == key)
    {
        Some(e) => Origin {
            name: e.name(),
            value: e.value.clone(),
            source: e.source.clone(),
        },
        None => Origin {
            name: format!("{section}.{key}"),
            value: String::new(),
            source: Source::Default,
        },
    }
}

fn missing(section: &str, key: &str, reason: String) -> ConfigError {
    ConfigError::Missing {
        key: format!("{section}.{key}"),
        env: env_name(section, key),
        reason,
    }
}

fn conflict(a: Origin, b: Origin, reason: &str) -> ConfigError {
    ConfigError::Conflict {
        first: Box::new(a.into()),
        second: Box::new(b.into()),
        reason: reason.to_string(),
    }
}

impl From<Origin> for Setting {
    fn from(o: Origin) -> Self {
        Setting {
            key: o.name,
            value: o.value,
            origin: o.source,
        }
    }
}

fn because(o: &Origin) -> String {
    format!("{} = {} (from {})", o.name, o.value, o.source)
}

/// Rules checked by `load` for every role.
pub(crate) fn check_cross_fields(cfg: &Config) -> Result<(), ConfigError> {
    // A link is declared dead when nothing arrived for the dead-after time, and the other end
    // answers pings: unless at least one ping goes out within that time, a healthy but idle
    // link would be declared dead.
    for (section, interval, dead, ok) in [
        (
            "connect",
            "link_ping_interval",
            "link_dead_after",
            cfg.connect.link_dead_after > cfg.connect.link_ping_interval,
        ),
        (
            "manager",
            "ping_interval",
            "silence_limit",
            cfg.manager.silence_limit > cfg.manager.ping_interval,
        ),
    ] {
        if !ok {
            let d = origin(cfg, section, dead);
            let i = origin(cfg, section, interval);
            let reason = format!(
                "{} must be longer than {}: a link is declared dead when nothing arrived for that long, so at least one ping must go out (and its answer come back) within it; e.g. 5s and 1s",
                d.name, i.name
            );
            return Err(conflict(d, i, &reason));
        }
    }
    let store = &cfg.store;
    if cfg.connect.ha_enabled && store.backend != BackendKind::Etcd {
        return Err(conflict(
            origin(cfg, "connect", "server_ha_enabled"),
            origin(cfg, "store", "backend"),
            "high availability needs store.backend = etcd: the core nodes elect the active node through etcd",
        ));
    }
    if store.backend == BackendKind::Etcd && store.etcd_hosts.is_empty() {
        let b = origin(cfg, "store", "backend");
        return Err(missing(
            "store",
            "etcd_hosts",
            format!(
                "{} needs at least one etcd endpoint, e.g. \"127.0.0.1:2379\"",
                because(&b)
            ),
        ));
    }
    if store.etcd_client_cert_auth {
        let o = origin(cfg, "store", "etcd_client_cert_auth");
        for (key, set) in [
            (
                "etcd_certificate_file",
                store.etcd_certificate_file.is_some(),
            ),
            (
                "etcd_private_key_file",
                store.etcd_private_key_file.is_some(),
            ),
        ] {
            if !set {
                return Err(missing(
                    "store",
                    key,
                    format!(
                        "{} means mutual TLS, which needs a client certificate and its key",
                        because(&o)
                    ),
                ));
            }
        }
    }
    if store.etcd_use_tls {
        if let Some(ca) = &store.etcd_ca_certificate_file {
            if !ca.exists() {
                let o = origin(cfg, "store", "etcd_ca_certificate_file");
                let tls = origin(cfg, "store", "etcd_use_tls");
                return Err(ConfigError::FileNotFound {
                    key: o.name,
                    path: ca.clone(),
                    origin: o.source,
                    reason: format!("{} needs it to verify etcd's certificate", because(&tls)),
                });
            }
        }
    }
    Ok(())
}

/// A file a setting names must be there before anything is bound.
fn exists(
    cfg: &Config,
    section: &str,
    key: &str,
    path: &std::path::Path,
    reason: String,
) -> Result<(), ConfigError> {
    if path.exists() {
        return Ok(());
    }
    let o = origin(cfg, section, key);
    Err(ConfigError::FileNotFound {
        key: o.name,
        path: path.to_path_buf(),
        origin: o.source,
        reason,
    })
}

/// A certificate without its key (or the reverse) is always a mistake.
fn pair(
    cfg: &Config,
    section: &str,
    cert: (&str, bool),
    key: (&str, bool),
) -> Result<(), ConfigError> {
    match (cert.1, key.1) {
        (true, false) => Err(missing(
            section,
            key.0,
            format!(
                "{} is set and needs its private key",
                because(&origin(cfg, section, cert.0))
            ),
        )),
        (false, true) => Err(missing(
            section,
            cert.0,
            format!(
                "{} is set and needs its certificate",
                because(&origin(cfg, section, key.0))
            ),
        )),
        _ => Ok(()),
    }
}

fn unsuitable(o: Origin, role: &str, reason: &str) -> ConfigError {
    ConfigError::Unsuitable {
        setting: Box::new(o.into()),
        role: role.to_string(),
        reason: reason.to_string(),
    }
}

/// Rules of one role; see `Config::validate_for`.
pub(crate) fn validate_for(cfg: &Config, role: Role) -> Result<(), ConfigError> {
    match role {
        Role::Server => {
            serve_api(cfg)?;
            let c = &cfg.connect;
            pair(
                cfg,
                "connect",
                ("certificate_file", c.certificate_file.is_some()),
                ("private_key_file", c.private_key_file.is_some()),
            )?;
            if c.ha_enabled && c.enabled && c.hosts.is_empty() {
                let o = origin(cfg, "connect", "server_ha_enabled");
                return Err(missing(
                    "connect",
                    "hosts",
                    format!(
                        "{} with connect.enabled = true: the active node must know the manager's address",
                        because(&o)
                    ),
                ));
            }
            if c.ha_enabled && c.advertise_address.is_none() {
                let o = origin(cfg, "server", "listen_address");
                return Err(missing(
                    "connect",
                    "advertise_address",
                    format!(
                        "high availability is on and {} is not an address other core nodes can reach; set a routable host:port",
                        because(&o)
                    ),
                ));
            }
            Ok(())
        }
        Role::Local => serve_api(cfg),
        Role::Runner => {
            if cfg.store.backend != BackendKind::Etcd {
                return Err(unsuitable(
                    origin(cfg, "store", "backend"),
                    "autogate runner",
                    "runners take jobs from the cluster's shared store: set store.backend = etcd and store.etcd_hosts",
                ));
            }
            Ok(())
        }
        Role::Manager => {
            let m = &cfg.manager;
            pair(
                cfg,
                "manager",
                ("certificate_file", m.certificate_file.is_some()),
                ("private_key_file", m.private_key_file.is_some()),
            )?;
            manager_store(cfg)
        }
        Role::Client => {
            let c = &cfg.client;
            pair(
                cfg,
                "client",
                ("certificate_file", c.certificate_file.is_some()),
                ("private_key_file", c.private_key_file.is_some()),
            )?;
            for (name, p) in &cfg.profiles {
                pair(
                    cfg,
                    &format!("client:{name}"),
                    ("certificate_file", p.certificate_file.is_some()),
                    ("private_key_file", p.private_key_file.is_some()),
                )?;
            }
            Ok(())
        }
    }
}

/// Rules of the manager's store (`manager.store_*`). Only the manager itself opens it, so they
/// are checked for that role alone.
fn manager_store(cfg: &Config) -> Result<(), ConfigError> {
    let m = &cfg.manager;
    if m.store_backend != BackendKind::Etcd {
        return Ok(());
    }
    let b = origin(cfg, "manager", "store_backend");
    if m.store_etcd_hosts.is_empty() {
        return Err(missing(
            "manager",
            "store_etcd_hosts",
            format!(
                "{} needs at least one etcd endpoint, e.g. \"127.0.0.1:2379\"",
                because(&b)
            ),
        ));
    }
    // A gateway verifies the manager against one CA file and may reach any replica, so every
    // replica serves TLS with the same certificate; without it there is nothing to share.
    for (key, set) in [
        ("certificate_file", m.certificate_file.is_some()),
        ("private_key_file", m.private_key_file.is_some()),
    ] {
        if !set {
            return Err(missing(
                "manager",
                key,
                format!(
                    "{} runs the manager as replicas, and every replica presents the same certificate (manager.certificate_file and manager.private_key_file) so that a gateway trusts all of them with one CA file",
                    because(&b)
                ),
            ));
        }
    }
    if m.store_etcd_client_cert_auth {
        let o = origin(cfg, "manager", "store_etcd_client_cert_auth");
        for (key, set) in [
            (
                "store_etcd_certificate_file",
                m.store_etcd_certificate_file.is_some(),
            ),
            (
                "store_etcd_private_key_file",
                m.store_etcd_private_key_file.is_some(),
            ),
        ] {
            if !set {
                return Err(missing(
                    "manager",
                    key,
                    format!(
                        "{} means mutual TLS, which needs a client certificate and its key",
                        because(&o)
                    ),
                ));
            }
        }
    }
    if m.store_etcd_use_tls {
        if let Some(ca) = &m.store_etcd_ca_certificate_file {
            let tls = origin(cfg, "manager", "store_etcd_use_tls");
            exists(
                cfg,
                "manager",
                "store_etcd_ca_certificate_file",
                ca,
                format!("{} needs it to verify etcd's certificate", because(&tls)),
            )?;
        }
    }
    Ok(())
}

/// Whether `host` (a `listen_address`) only accepts connections from this machine. Only
/// loopback IP literals and `localhost` count: any other name may resolve to anything.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Rules of a process that serves the operator API and runs jobs (server and local).
fn serve_api(cfg: &Config) -> Result<(), ConfigError> {
    let s = &cfg.server;
    // Logins carry passwords and every other request an API key: in plaintext on an address
    // the network reaches, anyone on the path reads them. Only an explicit choice allows it.
    if !s.use_tls && !s.allow_plaintext && !is_loopback_host(&s.listen_address) {
        let listen = origin(cfg, "server", "listen_address");
        let reason = format!(
            "the API would take passwords and API keys in plaintext on {}, an address other machines reach; set server.use_tls = true (with server.certificate_file and server.private_key_file), or listen on 127.0.0.1, or set server.allow_plaintext = true ({}) if the network is trusted or a TLS proxy runs in front",
            listen.value,
            env_name("server", "allow_plaintext"),
        );
        return Err(conflict(listen, origin(cfg, "server", "use_tls"), &reason));
    }
    if s.use_tls {
        let o = origin(cfg, "server", "use_tls");
        for (key, set) in [
            ("certificate_file", s.certificate_file.is_some()),
            ("private_key_file", s.private_key_file.is_some()),
        ] {
            if !set {
                return Err(missing(
                    "server",
                    key,
                    format!("{} needs a server certificate and its key", because(&o)),
                ));
            }
        }
    }
    pair(
        cfg,
        "server",
        ("certificate_file", s.certificate_file.is_some()),
        ("private_key_file", s.private_key_file.is_some()),
    )?;
    if s.use_tls {
        let tls = origin(cfg, "server", "use_tls");
        for (key, path) in [
            ("certificate_file", &s.certificate_file),
            ("private_key_file", &s.private_key_file),
        ] {
            if let Some(p) = path {
                exists(
                    cfg,
                    "server",
                    key,
                    p,
                    format!("{} serves the API with it", because(&tls)),
                )?;
            }
        }
        if s.client_cert_auth {
            let auth = origin(cfg, "server", "client_cert_auth");
            match &cfg.application.ca_certificate_file {
                None => {
                    return Err(missing(
                        "application",
                        "ca_certificate_file",
                        format!(
                            "{} verifies API client certificates against it",
                            because(&auth)
                        ),
                    ))
                }
                Some(p) => exists(
                    cfg,
                    "application",
                    "ca_certificate_file",
                    p,
                    format!(
                        "{} verifies API client certificates against it",
                        because(&auth)
                    ),
                )?,
            }
        }
    }
    if let Some(p) = &s.admin_password_file {
        exists(
            cfg,
            "server",
            "admin_password_file",
            p,
            "the first start creates the admin user with the password in it".to_owned(),
        )?;
    }
    if s.distributed_execution && cfg.store.backend != BackendKind::Etcd {
        return Err(conflict(
            origin(cfg, "server", "distributed_execution"),
            origin(cfg, "store", "backend"),
            "runners are reached through the shared store: distributed execution needs store.backend = etcd",
        ));
    }
    Ok(())
}
