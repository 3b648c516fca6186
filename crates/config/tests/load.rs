//! Loading behaviour: defaults, precedence, file lookup, file format, family files, aliases and
//! profiles.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use autogate_config::{BackendKind, HostPort, LogLevel, Mode, Source};
use common::{entry, file_line, Sandbox};

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.to_string(),
        port,
    }
}

#[test]
fn defaults_without_file_or_env() {
    let sb = Sandbox::new();
    let c = sb.load();
    assert_eq!(c.file(), None);
    let wd = sb.home().join(".gateway.d");
    assert_eq!(c.application.mode, Mode::Local);
    assert_eq!(c.application.cluster_id, "cluster_1");
    assert_eq!(c.application.working_dir, wd);
    assert_eq!(
        c.application.venv_retention_period,
        Duration::from_secs(30 * 86400)
    );
    assert_eq!(
        c.application.venv_sweep_interval,
        Duration::from_secs(24 * 3600)
    );
    assert!(c.connect.enabled);
    assert!(c.connect.hosts.is_empty());
    assert!(!c.connect.ha_enabled && !c.connect.is_primary && !c.connect.insecure_tls);
    assert_eq!(c.connect.lease_ttl, Duration::from_secs(10));
    assert_eq!(c.connect.preempt_delay, Duration::from_secs(10));
    assert_eq!(c.connect.connect_grace, Duration::from_secs(15));
    assert_eq!(c.connect.max_transitions, 6);
    assert_eq!(c.connect.probe_window, Duration::from_millis(300));
    assert_eq!(c.connect.reconnect_max_backoff, Duration::from_secs(10));
    assert_eq!(c.connect.advertise_address, Some(hp("127.0.0.1", 50051)));
    assert_eq!(c.server.listen_address, "127.0.0.1");
    assert_eq!(c.server.port, 50051);
    assert!(!c.server.use_tls && !c.server.distributed_execution && !c.server.client_cert_auth);
    assert_eq!(c.server.api_key_expiration, Duration::from_secs(1440 * 60));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
    assert!(c.runner.capacity >= 1);
    assert_eq!(c.runner.drain_grace, Duration::from_secs(30));
    assert!(c.runner.labels.is_empty());
    assert_eq!(c.store.backend, BackendKind::Local);
    assert_eq!(c.store.etcd_dial_timeout, Duration::from_secs(2));
    assert_eq!(c.store.etcd_request_timeout, Duration::from_secs(5));
    assert_eq!(c.log.level, LogLevel::Info);
    assert!(!c.log.file_enabled && !c.log.console_json);
    assert_eq!(c.log.server_dir, wd.join("logs"));
    assert_eq!(c.log.file_path(), wd.join("logs").join("gateway.log"));
    assert!(c.features.python_enabled && c.features.mcp_enabled);
    assert_eq!(c.python_script.requirements_file, "requirements.txt");
    assert!(!c.terminal.no_color);
    assert_eq!(c.terminal.timestamp_timezone, "utc");
    assert_eq!(
        (c.client.host.as_str(), c.client.port),
        ("127.0.0.1", 50051)
    );
    assert!(c.client.api_key.is_none());
    assert!(c.registry.default_overridable);
    assert_eq!(c.manager.port, 8443);
    assert_eq!(c.manager.data_dir, wd.join("manager"));
    assert_eq!(c.manager.admin_token_file, None);
    assert_eq!(
        c.manager.admin_token_path(),
        wd.join("manager").join("admin.token")
    );
    assert_eq!(c.manager.max_frame_size, 1 << 20);
    assert_eq!(c.manager.session_history, 1000);

    let entries = c.entries();
    assert_eq!(entries.len(), autogate_config::keys().len());
    assert!(entries.iter().all(|e| e.source == Source::Default));
    assert_eq!(entry(&entries, "server", "port").value, "50051");
    assert_eq!(entry(&entries, "server", "port").env, "GATEWAY_SERVER_PORT");
    assert_eq!(
        entry(&entries, "log", "server_dir").value,
        wd.join("logs").display().to_string()
    );
    assert_eq!(
        entry(&entries, "connect", "advertise_address").value,
        "127.0.0.1:50051"
    );
    assert_eq!(entry(&entries, "connect", "hosts").value, "");
}

#[test]
fn env_beats_file_beats_default() {
    let mut sb = Sandbox::new();
    let path = sb.config(
        "[server]\nport = 6000\nuse_tls = true\ncertificate_file = /f/cert.pem\nshutdown_grace = 20s\n\
         [store]\nbackend = memory\n[log]\nlevel = debug\n[connect]\nhosts = f1:1 f2:2\n",
    );
    sb.env("GATEWAY_SERVER_PORT", "7000")
        .env("GATEWAY_SERVER_USE_TLS", "no")
        .env("GATEWAY_LOG_LEVEL", "warn")
        .env("GATEWAY_CONNECT_HOSTS", "e1:10")
        .env("GATEWAY_SERVER_PRIVATE_KEY_FILE", "~/key.pem");
    let c = sb.load();
    assert_eq!(c.file(), Some(path.as_path()));
    // env > file
    assert_eq!(c.server.port, 7000);
    assert!(!c.server.use_tls);
    assert_eq!(c.log.level, LogLevel::Warn);
    assert_eq!(c.connect.hosts, vec![hp("e1", 10)]);
    // file > default
    assert_eq!(
        c.server.certificate_file,
        Some(PathBuf::from("/f/cert.pem"))
    );
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(20));
    assert_eq!(c.store.backend, BackendKind::Memory);
    // env path with ~ expanded with the given home
    assert_eq!(c.server.private_key_file, Some(sb.home().join("key.pem")));
    // default
    assert_eq!(c.server.listen_address, "127.0.0.1");

    let e = c.entries();
    assert_eq!(
        entry(&e, "server", "port").source,
        Source::Env {
            var: "GATEWAY_SERVER_PORT".into()
        }
    );
    assert_eq!(entry(&e, "server", "port").value, "7000");
    assert_eq!(entry(&e, "log", "level").value, "WARN");
    assert_eq!(
        entry(&e, "server", "use_tls").value,
        "false",
        "`no` is shown as false"
    );
    assert_eq!(entry(&e, "connect", "hosts").value, "e1:10");
    assert_eq!(
        entry(&e, "server", "shutdown_grace").source,
        Source::File {
            path: path.clone(),
            line: 5
        }
    );
    assert_eq!(
        entry(&e, "server", "listen_address").source,
        Source::Default
    );
    assert_eq!(
        entry(&e, "server", "shutdown_grace").source.to_string(),
        file_line(&path, 5)
    );
    assert_eq!(
        entry(&e, "server", "port").source.to_string(),
        "environment variable GATEWAY_SERVER_PORT"
    );
}

#[test]
fn empty_values_mean_not_set() {
    let mut sb = Sandbox::new();
    sb.config("[server]\nport = 6000\ncertificate_file =\n");
    sb.env("GATEWAY_SERVER_PORT", "");
    let c = sb.load();
    assert_eq!(
        c.server.port, 6000,
        "an empty variable falls through to the file"
    );
    assert_eq!(c.server.certificate_file, None);
}

#[test]
fn lookup_order_explicit_then_env_then_home_then_etc() {
    let mut sb = Sandbox::new();
    let etc = sb.write("etc/gateway.conf", "[application]\ncluster_id = from_etc\n");
    // Only /etc exists.
    assert_eq!(sb.load().application.cluster_id, "from_etc");
    assert_eq!(sb.load().file(), Some(etc.as_path()));

    // Home beats /etc, and files are not merged: /etc's terminal setting is not applied.
    sb.write(
        "etc/gateway.conf",
        "[application]\ncluster_id = from_etc\n[terminal]\nno_color = true\n",
    );
    let home = sb.write(
        "home/.gateway.d/gateway.conf",
        "[application]\ncluster_id = from_home\n",
    );
    let c = sb.load();
    assert_eq!(c.application.cluster_id, "from_home");
    assert_eq!(c.file(), Some(home.as_path()));
    assert!(!c.terminal.no_color, "files must not be merged");

    // $GATEWAY_CONFIG beats home.
    let envf = sb.write(
        "elsewhere/env.conf",
        "[application]\ncluster_id = from_env\n",
    );
    sb.env("GATEWAY_CONFIG", envf.to_str().unwrap());
    assert_eq!(sb.load().application.cluster_id, "from_env");
    assert_eq!(sb.load().file(), Some(envf.as_path()));

    // --config beats everything.
    let explicit = sb.write("explicit.conf", "[application]\ncluster_id = from_flag\n");
    sb.explicit = Some(explicit.clone());
    assert_eq!(sb.load().application.cluster_id, "from_flag");
    assert_eq!(sb.load().file(), Some(explicit.as_path()));
}

#[test]
fn gateway_config_with_tilde() {
    let mut sb = Sandbox::new();
    sb.write("home/conf/g.conf", "[application]\ncluster_id = tilde\n");
    sb.env("GATEWAY_CONFIG", "~/conf/g.conf");
    assert_eq!(sb.load().application.cluster_id, "tilde");
}

#[test]
fn quoted_values_and_comments() {
    let mut sb = Sandbox::new();
    sb.config(
        "# leading comment\n\n; semicolon comment\n[application]   # header comment\n\
         cluster_id = \"quoted_id\"   # trailing\nworking_dir = '/srv/gw dir'\n\
         [connect]\nproxy_url = http://proxy:3128/#frag\nproxy_username = \" spaced # user \"\n\
         hosts = m1:8080   m2:8080 # two managers\n\n   [LOG]\n  LEVEL = Error\n",
    );
    let c = sb.load();
    assert_eq!(c.application.cluster_id, "quoted_id");
    assert_eq!(c.application.working_dir, PathBuf::from("/srv/gw dir"));
    assert_eq!(
        c.connect.proxy_url.as_deref(),
        Some("http://proxy:3128/#frag")
    );
    assert_eq!(c.connect.proxy_username.as_deref(), Some(" spaced # user "));
    assert_eq!(c.connect.hosts, vec![hp("m1", 8080), hp("m2", 8080)]);
    assert_eq!(c.log.level, LogLevel::Error);
}

/// A server file in the family's 5.0.x style, with `[commander]`, as the HA guide shows it.
const FAMILY_COMMANDER_FILE: &str = r#"
[application]
mode = server
cluster_id = dc1_cluster
working_dir = /var/lib/gateway
ca_certificate_file = /etc/gateway/certificates/ca.pem
auto_accept_eula = true

[commander]
enabled = true
host = commander.example.com
port = 8080
certificate_file = /etc/gateway/certificates/commander.pem
private_key_file = /etc/gateway/certificates/commander-key.pem
insecure_tls = false
server_ha_enabled = true
server_ha_is_primary = true

[features]
python_enabled = true
ansible_enabled = true
opentofu_enabled = false
hostkeys_enabled = true

[log]
level = DEBUG
console_json = false
file_enabled = true
file_json = true
server_dir = /var/log/gateway
timestamp_timezone = utc

[python-script]
requirements_file = requirements.txt

[registry]
default_overridable = true

[secrets]
encrypt_key_file = /etc/gateway/keys/encryption.key

[server]
api_key_expiration = 1440
listen_address = 10.0.0.5
port = 50051
distributed_execution = true
use_tls = true
certificate_file = /etc/gateway/gateway.crt
private_key_file = /etc/gateway/gateway.key
client_certif_auth = true
grpc_max_recv_msg_size = 8388608
runtime_data_dir = /var/lib/gateway/runtime

[store]
backend = etcd
etcd_hosts = etcd1:2379 etcd2:2379 [::1]:2379
etcd_use_tls = false
etcd_client_cert_auth = false
dynamodb_table_name = vendor.gateway5.store

[terminal]
no_color = true
timestamp_timezone = local
"#;

#[test]
fn family_commander_style_server_file_loads() {
    let mut sb = Sandbox::new();
    let path = sb.config(FAMILY_COMMANDER_FILE);
    let c = sb.load();
    // The file serves the API over TLS with certificates under /etc/gateway, which this
    // machine does not have: the server role names the first missing one before binding.
    match c.validate_for(autogate_config::Role::Server) {
        Err(autogate_config::ConfigError::FileNotFound { key, path, .. }) => {
            assert_eq!(key, "server.certificate_file");
            assert_eq!(path, PathBuf::from("/etc/gateway/gateway.crt"));
        }
        other => panic!("expected the missing API certificate to be named: {other:?}"),
    }
    assert_eq!(c.application.mode, Mode::Server);
    assert_eq!(c.application.cluster_id, "dc1_cluster");
    assert!(c.application.auto_accept_eula);
    assert_eq!(c.connect.hosts, vec![hp("commander.example.com", 8080)]);
    assert_eq!(
        c.connect.certificate_file,
        Some(PathBuf::from("/etc/gateway/certificates/commander.pem"))
    );
    assert!(c.connect.ha_enabled && c.connect.is_primary && c.connect.enabled);
    assert!(!c.features.opentofu_enabled);
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(
        c.log.file_path(),
        PathBuf::from("/var/log/gateway/gateway.log")
    );
    assert!(
        c.server.client_cert_auth,
        "client_certif_auth is the family's spelling"
    );
    assert_eq!(c.server.grpc_max_recv_msg_size, Some(8 << 20));
    assert_eq!(c.store.backend, BackendKind::Etcd);
    assert_eq!(
        c.store.etcd_hosts,
        vec![hp("etcd1", 2379), hp("etcd2", 2379), hp("::1", 2379)]
    );
    assert_eq!(c.store.etcd_hosts[2].to_string(), "[::1]:2379");
    assert!(c.terminal.no_color);
    assert_eq!(c.connect.advertise_address, Some(hp("10.0.0.5", 50051)));

    let e = c.entries();
    let hosts = entry(&e, "connect", "hosts");
    assert_eq!(hosts.value, "commander.example.com:8080");
    assert_eq!(hosts.set_as.as_deref(), Some("commander.host"));
    assert_eq!(
        hosts.source,
        Source::File {
            path: path.clone(),
            line: 11
        }
    );
    let ha = entry(&e, "connect", "server_ha_enabled");
    assert_eq!(ha.set_as.as_deref(), Some("commander.server_ha_enabled"));
    assert_eq!(
        ha.source,
        Source::File {
            path: path.clone(),
            line: 16
        }
    );
    assert_eq!(
        entry(&e, "server", "client_cert_auth").set_as.as_deref(),
        Some("server.client_certif_auth")
    );
}

#[test]
fn family_connect_style_server_file_loads() {
    let mut sb = Sandbox::new();
    sb.write("etc/ca.pem", "ca");
    let ca = sb.etc().join("ca.pem");
    sb.config(&format!(
        r#"
[application]
mode = server
cluster_id = cluster_1
working_dir = /var/lib/gateway
venv_retention_period = 720h
venv_sweep_interval = 12h

[connect]
enabled = true
hosts = 10.0.0.1:8080 10.0.0.2:8080
certificate_file = /etc/gateway/certificates/gw-manager.pem
private_key_file = /etc/gateway/certificates/gw-manager-key.pem
insecure_tls = false
proxy_url = http://proxy.internal:3128
proxy_username = gw
proxy_password = "p@ss # word"
server_ha_enabled = true
server_ha_is_primary = false

[features]
python_enabled = true
ansible_enabled = true
opentofu_enabled = true
hostkeys_enabled = true
mcp_enabled = false

[log]
level = INFO
console_json = true
file_enabled = false

[python-script]
requirements_file = pyproject.toml

[registry]
default_overridable = false

[secrets]
encrypt_key_file = /etc/gateway/keys/encryption.key

[server]
api_key_expiration = 43200
listen_address = 10.0.0.5
port = 50051
distributed_execution = false
use_tls = false

[store]
backend = etcd
etcd_hosts = 10.0.0.10:2379 10.0.0.11:2379 10.0.0.12:2379
etcd_use_tls = true
etcd_client_cert_auth = true
etcd_ca_certificate_file = {}
etcd_certificate_file = /etc/gateway/etcd/client.pem
etcd_private_key_file = /etc/gateway/etcd/client-key.pem

[terminal]
no_color = false
timestamp_timezone = Europe/Paris

[client]
host = 10.0.0.5
port = 50051

[client:Production]
host = gw.prod.example
api_key = prodkey

[runner]
announcement_address = 10.0.0.20
listen_address = 0.0.0.0
port = 50052
use_tls = true
client_cert_auth = false
"#,
        ca.display()
    ));
    // The family serves plaintext on a network address without asking; autogate wants it said.
    let e = sb
        .load()
        .validate_for(autogate_config::Role::Server)
        .unwrap_err();
    assert!(e.to_string().contains("server.allow_plaintext"), "{e}");
    sb.env("GATEWAY_SERVER_ALLOW_PLAINTEXT", "true");
    let c = sb.load();
    c.validate_for(autogate_config::Role::Server).unwrap();
    assert_eq!(
        c.application.venv_retention_period,
        Duration::from_secs(720 * 3600)
    );
    assert_eq!(
        c.connect.hosts,
        vec![hp("10.0.0.1", 8080), hp("10.0.0.2", 8080)]
    );
    assert_eq!(
        c.connect.proxy_password.as_ref().map(|s| s.expose()),
        Some("p@ss # word")
    );
    assert_eq!(c.server.api_key_expiration, Duration::from_secs(43200 * 60));
    assert!(c.store.etcd_use_tls && c.store.etcd_client_cert_auth);
    assert_eq!(c.terminal.timestamp_timezone, "Europe/Paris");
    assert!(!c.registry.default_overridable);
    assert_eq!(c.python_script.requirements_file, "pyproject.toml");
    let prod = &c.profiles["production"];
    assert_eq!(prod.host, "gw.prod.example");
    assert_eq!(prod.port, 50051);
    assert_eq!(prod.api_key.as_ref().map(|s| s.expose()), Some("prodkey"));
    assert_eq!(c.runner.announcement_address.as_deref(), Some("10.0.0.20"));
}

#[test]
fn commander_port_defaults_to_443_and_env_names_work() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_COMMANDER_HOST", "mgr.example")
        .env("GATEWAY_COMMANDER_SERVER_HA_ENABLED", "true")
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", "127.0.0.1:2379");
    let c = sb.load();
    assert_eq!(c.connect.hosts, vec![hp("mgr.example", 443)]);
    assert!(c.connect.ha_enabled);
    // A port without a host has nothing to apply to.
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_COMMANDER_PORT", "8080");
    assert!(sb.load().connect.hosts.is_empty());
}

#[test]
fn profiles_inherit_from_client() {
    let mut sb = Sandbox::new();
    let path = sb.config(
        "[client]\nhost = base.example\nport = 6000\nuse_tls = true\napi_key = basekey\n\
         certificate_file = /c/cert.pem\nprivate_key_file = /c/key.pem\n\
         [client:Prod]\nhost = prod.example\n[client:lab-1]\nport = 7000\n",
    );
    sb.env("GATEWAY_CLIENT_PROD_API_KEY", "prodkey")
        .env("GATEWAY_CLIENT_STAGING_HOST", "staging.example")
        .env("GATEWAY_CLIENT_LAB_1_USE_TLS", "false")
        .env("GATEWAY_CLIENT_PORT", "6001");
    let c = sb.load();
    assert_eq!(
        c.client.port, 6001,
        "GATEWAY_CLIENT_PORT is the [client] key"
    );
    let prod = &c.profiles["prod"];
    assert_eq!(prod.host, "prod.example");
    assert_eq!(prod.port, 6001);
    assert!(prod.use_tls);
    assert_eq!(prod.api_key.as_ref().unwrap().expose(), "prodkey");
    assert_eq!(prod.certificate_file, Some(PathBuf::from("/c/cert.pem")));
    let lab = &c.profiles["lab-1"];
    assert_eq!(
        (lab.host.as_str(), lab.port, lab.use_tls),
        ("base.example", 7000, false)
    );
    assert_eq!(lab.api_key.as_ref().unwrap().expose(), "basekey");
    let staging = &c.profiles["staging"];
    assert_eq!(
        (staging.host.as_str(), staging.port),
        ("staging.example", 6001)
    );
    assert_eq!(c.client_profile(Some("PROD")).unwrap().host, "prod.example");
    assert!(c.client_profile(Some("nope")).is_none());

    let e = c.entries();
    let host = entry(&e, "client:prod", "host");
    assert_eq!(host.env, "GATEWAY_CLIENT_PROD_HOST");
    assert_eq!(
        host.source,
        Source::File {
            path: path.clone(),
            line: 9
        }
    );
    let port = entry(&e, "client:prod", "port");
    assert_eq!(port.set_as.as_deref(), Some("client.port"));
    assert_eq!(
        port.source,
        Source::Env {
            var: "GATEWAY_CLIENT_PORT".into()
        }
    );
    assert_eq!(
        entry(&e, "client:lab-1", "use_tls").env,
        "GATEWAY_CLIENT_LAB_1_USE_TLS"
    );
    assert_eq!(entry(&e, "client:prod", "api_key").value, "<redacted>");
}

#[test]
fn runner_keys() {
    let mut sb = Sandbox::new();
    sb.config("[runner]\ncapacity = 3\nlabels = zone=a gpu=no\ndrain_grace = 1m\n");
    let c = sb.load();
    assert_eq!(c.runner.capacity, 3);
    assert_eq!(c.runner.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(c.runner.drain_grace, Duration::from_secs(60));
    sb.config("[runner]\ncapacity = 0\n");
    assert!(sb.load().runner.capacity >= 1, "0 means the number of CPUs");
}

#[test]
fn manager_sizes_and_derived_dirs() {
    let mut sb = Sandbox::new();
    sb.config("[application]\nworking_dir = /srv/gw\n[manager]\nmax_frame_size = 512KiB\n");
    let c = sb.load();
    assert_eq!(c.manager.max_frame_size, 512 * 1024);
    assert_eq!(c.manager.data_dir, PathBuf::from("/srv/gw/manager"));
    assert_eq!(c.log.server_dir, PathBuf::from("/srv/gw/logs"));
    sb.env("GATEWAY_MANAGER_MAX_FRAME_SIZE", "2048");
    assert_eq!(sb.load().manager.max_frame_size, 2048);
}

#[test]
fn advertise_address_defaults() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0");
    assert_eq!(sb.load().connect.advertise_address, None);
    sb.env("GATEWAY_CONNECT_ADVERTISE_ADDRESS", "node1.example:50051");
    assert_eq!(
        sb.load().connect.advertise_address,
        Some(hp("node1.example", 50051))
    );
}

#[test]
fn no_home_uses_the_service_working_dir() {
    let sb = Sandbox::new();
    let mut opts = sb.opts();
    opts.home = None;
    let c = autogate_config::load(&opts).unwrap();
    assert_eq!(c.application.working_dir, PathBuf::from("/var/lib/gateway"));
}

#[test]
fn config_json_has_no_secrets() {
    let mut sb = Sandbox::new();
    sb.config("[client]\napi_key = topsecret\n[connect]\nproxy_password = hunter2\n");
    let c = sb.load();
    let json = serde_json::to_string(&c).unwrap();
    assert!(
        !json.contains("topsecret") && !json.contains("hunter2"),
        "{json}"
    );
    assert!(json.contains("\"lease_ttl\":\"10s\""), "{json}");
    let debug = format!("{c:?}");
    assert!(!debug.contains("topsecret") && !debug.contains("hunter2"));
    assert!(debug.contains("<redacted>"));
    let e = c.entries();
    assert_eq!(entry(&e, "client", "api_key").value, "<redacted>");
    assert_eq!(entry(&e, "connect", "proxy_password").value, "<redacted>");
    assert!(e
        .iter()
        .all(|e| !e.value.contains("topsecret") && !e.value.contains("hunter2")));
    assert_eq!(c.client.api_key.as_ref().unwrap().expose(), "topsecret");
    let opts_debug = format!("{:?}", {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_CLIENT_API_KEY", "envsecret");
        sb.opts()
    });
    assert!(!opts_debug.contains("envsecret"), "{opts_debug}");
}
