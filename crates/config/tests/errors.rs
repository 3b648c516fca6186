//! Bad input: every error names the key, the value (never a secret) and the source, and maps to
//! the documented exit code.

mod common;

use autogate_config::{ConfigError, Role};
use common::{file_line, Sandbox};

fn env_err(var: &str, value: &str, fragments: &[&str]) -> ConfigError {
    let mut sb = Sandbox::new();
    sb.env(var, value);
    let mut all = vec![format!("environment variable {var}")];
    all.extend(fragments.iter().map(|f| f.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sb.err_with(&refs)
}

#[test]
fn the_documented_example_message() {
    let e = env_err("GATEWAY_SERVER_PORT", "abc", &[]);
    assert_eq!(
        e.to_string(),
        "invalid value \"abc\" for server.port (from environment variable GATEWAY_SERVER_PORT): expected a port number 1-65535"
    );
}

#[test]
fn bad_values_from_the_environment() {
    env_err(
        "GATEWAY_SERVER_USE_TLS",
        "maybe",
        &["server.use_tls", "\"maybe\"", "true or false"],
    );
    env_err(
        "GATEWAY_RUNNER_CAPACITY",
        "lots",
        &["runner.capacity", "\"lots\"", "whole number"],
    );
    env_err(
        "GATEWAY_RUNNER_CAPACITY",
        "99999",
        &["runner.capacity", "\"99999\"", "0 to 4096"],
    );
    env_err(
        "GATEWAY_SERVER_PORT",
        "0",
        &["server.port", "\"0\"", "1-65535"],
    );
    env_err(
        "GATEWAY_SERVER_PORT",
        "65536",
        &["server.port", "\"65536\""],
    );
    env_err(
        "GATEWAY_SERVER_SHUTDOWN_GRACE",
        "10 seconds",
        &["server.shutdown_grace", "\"10 seconds\"", "duration"],
    );
    env_err(
        "GATEWAY_SERVER_SHUTDOWN_GRACE",
        "10",
        &["server.shutdown_grace", "\"10\"", "add a unit, e.g. 10s"],
    );
    env_err(
        "GATEWAY_CONNECT_SERVER_HA_LEASE_TTL",
        "1500ms",
        &["connect.server_ha_lease_ttl", "\"1500ms\"", "at least 2s"],
    );
    env_err(
        "GATEWAY_SERVER_API_KEY_EXPIRATION",
        "720h",
        &[
            "server.api_key_expiration",
            "\"720h\"",
            "minutes",
            "write 43200 for 720h",
        ],
    );
    env_err(
        "GATEWAY_CONNECT_HOSTS",
        "",
        &["connect.hosts", "\"\"", "empty"],
    );
    env_err(
        "GATEWAY_CONNECT_HOSTS",
        "a:1,b:2",
        &[
            "connect.hosts",
            "\"a:1,b:2\"",
            "comma-separated; separate hosts with spaces",
        ],
    );
    env_err(
        "GATEWAY_STORE_ETCD_HOSTS",
        "etcd1",
        &["store.etcd_hosts", "\"etcd1\"", "no port"],
    );
    env_err(
        "GATEWAY_STORE_ETCD_HOSTS",
        "::1:2379",
        &["store.etcd_hosts", "brackets"],
    );
    env_err(
        "GATEWAY_STORE_BACKEND",
        "dynamodb",
        &["store.backend", "\"dynamodb\"", "not supported by autogate"],
    );
    env_err(
        "GATEWAY_STORE_BACKEND",
        "redis",
        &["store.backend", "\"redis\"", "local, memory, etcd"],
    );
    env_err(
        "GATEWAY_LOG_LEVEL",
        "LOUD",
        &["log.level", "\"LOUD\"", "TRACE"],
    );
    env_err(
        "GATEWAY_APPLICATION_CLUSTER_ID",
        "bad id!",
        &["application.cluster_id", "\"bad id!\"", "1-63"],
    );
    env_err(
        "GATEWAY_MANAGER_MAX_FRAME_SIZE",
        "1XB",
        &["manager.max_frame_size", "\"1XB\"", "MiB"],
    );
    env_err(
        "GATEWAY_CONNECT_PROXY_URL",
        "proxy:3128",
        &["connect.proxy_url", "http://"],
    );
    env_err(
        "GATEWAY_RUNNER_LABELS",
        "zone",
        &["runner.labels", "key=value"],
    );
}

#[test]
fn unknown_environment_variables() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_PORTT", "1");
    sb.err_with(&["GATEWAY_SERVER_PORTT", "unknown"]);
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_NOPE", "1");
    sb.err_with(&["GATEWAY_NOPE"]);
    // Not a profile setting either.
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_CLIENT_PROD_COLOR", "1");
    sb.err_with(&["GATEWAY_CLIENT_PROD_COLOR"]);
    // GATEWAY_CONFIG is not a key; other prefixes are not ours.
    let mut sb = Sandbox::new();
    sb.env("OTHER_VAR", "x");
    sb.load();
}

#[test]
fn bad_values_from_the_file_name_file_and_line() {
    let mut sb = Sandbox::new();
    let p = sb.config("[server]\n\nport = http\n");
    let e = sb.err_with(&["server.port", "\"http\"", &file_line(&p, 3)]);
    assert!(matches!(e, ConfigError::InvalidValue { .. }));

    let p = sb.config("[log]\nlevel = INFO\n[server]\nclient_certif_auth = perhaps\n");
    sb.err_with(&[
        "server.client_certif_auth",
        "\"perhaps\"",
        &file_line(&p, 4),
    ]);
}

#[test]
fn unknown_section_and_key_name_file_and_line() {
    let mut sb = Sandbox::new();
    let p = sb.config("[server]\nport = 1\n[nonsense]\nx = 1\n");
    let e = sb.err_with(&[&file_line(&p, 3), "[nonsense]", "unknown section"]);
    assert!(matches!(e, ConfigError::UnknownSection { line: 3, .. }));

    let p = sb.config("[server]\nport = 1\nprot = 2\n");
    let e = sb.err_with(&[&file_line(&p, 3), "\"prot\"", "[server]"]);
    assert!(matches!(e, ConfigError::UnknownKey { line: 3, .. }));

    let p = sb.config("[client:prod]\ncolor = red\n");
    sb.err_with(&[&file_line(&p, 2), "\"color\"", "[client:prod]"]);

    let p = sb.config("port = 1\n[server]\n");
    sb.err_with(&[&file_line(&p, 1), "before any [section]"]);

    let p = sb.config("[server]\njust words\n");
    sb.err_with(&[&file_line(&p, 2), "key = value"]);

    let p = sb.config("[client:bad name]\nhost = x\n");
    sb.err_with(&["\"bad name\"", &file_line(&p, 1)]);
}

#[test]
fn duplicate_keys_in_a_file() {
    let mut sb = Sandbox::new();
    let p = sb.config("[server]\nport = 1\n[log]\nlevel = INFO\n[server]\nport = 2\n");
    sb.err_with(&["server.port", &file_line(&p, 2), &file_line(&p, 6)]);
    let p = sb.config("[server]\nclient_cert_auth = true\nclient_certif_auth = true\n");
    sb.err_with(&[
        "server.client_cert_auth",
        "server.client_certif_auth",
        &file_line(&p, 3),
    ]);
}

#[test]
fn missing_files() {
    let mut sb = Sandbox::new();
    let missing = sb.dir.path().join("nope.conf");
    sb.explicit = Some(missing.clone());
    let e = sb.err_with(&[&missing.display().to_string(), "--config", "does not exist"]);
    assert!(matches!(e, ConfigError::ExplicitFileMissing { .. }));

    let mut sb = Sandbox::new();
    // A home file exists, but GATEWAY_CONFIG names a missing one: that is an error, not a
    // fall-back.
    sb.write("home/.gateway.d/gateway.conf", "[server]\nport = 1\n");
    let missing = sb.dir.path().join("env.conf");
    sb.env("GATEWAY_CONFIG", missing.to_str().unwrap());
    let e = sb.err_with(&[&missing.display().to_string(), "GATEWAY_CONFIG"]);
    assert!(matches!(e, ConfigError::EnvFileMissing { .. }));
}

#[test]
fn unreadable_existing_file_is_an_io_error() {
    let mut sb = Sandbox::new();
    // A directory exists but cannot be read as a file (works even as root).
    let dir = sb.dir.path().join("conf.d");
    std::fs::create_dir_all(&dir).unwrap();
    sb.explicit = Some(dir.clone());
    let e = sb.err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e}");
    assert_eq!(e.exit_code(), 74);
    assert!(e.to_string().contains(&dir.display().to_string()));

    let p = sb.write("latin1.conf", "[server]\n# caf\u{e9}\n");
    std::fs::write(&p, b"[server]\n# caf\xe9\n").unwrap();
    sb.explicit = Some(p.clone());
    sb.err_with(&[&file_line(&p, 2), "UTF-8"]);
}

/// Every combination of places the two names can come from.
#[test]
fn commander_connect_alias_conflicts() {
    // file + file
    let mut sb = Sandbox::new();
    let p = sb.config("[connect]\nenabled = true\n[commander]\nenabled = false\n");
    sb.err_with(&[
        "commander.enabled",
        "connect.enabled",
        &file_line(&p, 2),
        &file_line(&p, 4),
        "older name",
    ]);

    // file [commander] + env CONNECT
    let mut sb = Sandbox::new();
    let p = sb.config("[commander]\nhost = m1\n");
    sb.env("GATEWAY_CONNECT_HOSTS", "m2:443");
    sb.err_with(&[
        "commander.host",
        &file_line(&p, 2),
        "connect.hosts",
        "GATEWAY_CONNECT_HOSTS",
    ]);

    // file [connect] + env COMMANDER
    let mut sb = Sandbox::new();
    let p = sb.config("[connect]\nenabled = true\n");
    sb.env("GATEWAY_COMMANDER_ENABLED", "false");
    sb.err_with(&[
        "commander.enabled",
        "GATEWAY_COMMANDER_ENABLED",
        "connect.enabled",
        &file_line(&p, 2),
    ]);

    // env + env
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_COMMANDER_SERVER_HA_IS_PRIMARY", "true")
        .env("GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY", "true");
    sb.err_with(&[
        "GATEWAY_COMMANDER_SERVER_HA_IS_PRIMARY",
        "GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY",
    ]);

    // port (not only host) against hosts
    let mut sb = Sandbox::new();
    sb.config("[connect]\nhosts = m:1\n[commander]\nport = 8080\n");
    sb.err_with(&["commander.port", "connect.hosts"]);

    // every other aliased key
    for key in [
        "certificate_file",
        "private_key_file",
        "insecure_tls",
        "server_ha_enabled",
        "server_ha_lease_ttl",
        "server_ha_preempt_delay",
        "server_ha_connect_grace",
        "server_ha_max_transitions",
        "server_ha_probe_window",
        "reconnect_max_backoff",
        "advertise_address",
    ] {
        let mut sb = Sandbox::new();
        sb.env(&format!("GATEWAY_COMMANDER_{}", key.to_uppercase()), "x")
            .env(&format!("GATEWAY_CONNECT_{}", key.to_uppercase()), "y");
        sb.err_with(&[&format!("commander.{key}"), &format!("connect.{key}")]);
    }

    // Same name twice (file and env) is ordinary precedence, not a conflict.
    let mut sb = Sandbox::new();
    sb.config("[commander]\nenabled = true\n");
    sb.env("GATEWAY_COMMANDER_ENABLED", "false");
    assert!(!sb.load().connect.enabled);
}

#[test]
fn bad_values_under_the_old_name_are_reported_under_it() {
    let mut sb = Sandbox::new();
    let p = sb.config("[commander]\nserver_ha_lease_ttl = 1s\n");
    sb.err_with(&["commander.server_ha_lease_ttl", "\"1s\"", &file_line(&p, 2)]);
}

#[test]
fn cross_field_rules_at_load() {
    let mut sb = Sandbox::new();
    let p = sb.config("[connect]\nserver_ha_enabled = true\n");
    let e = sb.err_with(&[
        "connect.server_ha_enabled",
        &file_line(&p, 2),
        "store.backend = local (from default)",
        "etcd",
    ]);
    assert!(matches!(e, ConfigError::Conflict { .. }));
    // Through the old name the message uses the old name.
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_COMMANDER_SERVER_HA_ENABLED", "true")
        .env("GATEWAY_STORE_BACKEND", "memory");
    sb.err_with(&[
        "commander.server_ha_enabled",
        "GATEWAY_STORE_BACKEND",
        "memory",
    ]);

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_STORE_BACKEND", "etcd");
    sb.err_with(&[
        "store.etcd_hosts",
        "GATEWAY_STORE_ETCD_HOSTS",
        "store.backend = etcd",
    ]);

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", "e:2379")
        .env("GATEWAY_STORE_ETCD_CLIENT_CERT_AUTH", "true")
        .env("GATEWAY_STORE_ETCD_CERTIFICATE_FILE", "/c.pem");
    sb.err_with(&[
        "store.etcd_private_key_file",
        "store.etcd_client_cert_auth = true",
    ]);

    let mut sb = Sandbox::new();
    let ca = sb.dir.path().join("missing-ca.pem");
    sb.env("GATEWAY_STORE_ETCD_USE_TLS", "true").env(
        "GATEWAY_STORE_ETCD_CA_CERTIFICATE_FILE",
        ca.to_str().unwrap(),
    );
    sb.err_with(&[
        "store.etcd_ca_certificate_file",
        &ca.display().to_string(),
        "does not exist",
        "GATEWAY_STORE_ETCD_CA_CERTIFICATE_FILE",
    ]);
    sb.write("missing-ca.pem", "pem");
    sb.load();
}

#[test]
fn secrets_never_appear_in_errors() {
    let mut sb = Sandbox::new();
    let p = sb.config("[connect]\nproxy_password = \"s3cr3t-value\" trailing\n");
    let e = sb.err_with(&[&file_line(&p, 2)]);
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    let p = sb.config("[client]\napi_key = \"s3cr3t-value\n");
    let e = sb.err_with(&[&file_line(&p, 2)]);
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    assert!(!format!("{e:?}").contains("s3cr3t"));
}

#[test]
fn validate_for_roles() {
    let sb = Sandbox::new();
    let c = sb.load();
    c.validate_for(Role::Local).unwrap();
    c.validate_for(Role::Server).unwrap();
    c.validate_for(Role::Client).unwrap();
    c.validate_for(Role::Manager).unwrap();
    let e = c.validate_for(Role::Runner).unwrap_err();
    assert!(
        e.to_string()
            .contains("store.backend = local (from default)"),
        "{e}"
    );
    assert!(e.to_string().contains("autogate runner"), "{e}");
    assert_eq!(e.exit_code(), 64);

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_USE_TLS", "true");
    let e = sb.load().validate_for(Role::Server).unwrap_err();
    assert!(e.to_string().contains("server.certificate_file"), "{e}");
    assert!(e.to_string().contains("GATEWAY_SERVER_USE_TLS"), "{e}");

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true");
    let e = sb.load().validate_for(Role::Server).unwrap_err();
    assert!(e.to_string().contains("store.backend"), "{e}");

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", "127.0.0.1:2379");
    let c = sb.load();
    c.validate_for(Role::Runner).unwrap();
    let e = c.validate_for(Role::Server).unwrap_err();
    assert!(e.to_string().contains("connect.hosts"), "{e}");
    sb.env("GATEWAY_CONNECT_HOSTS", "m:8443");
    sb.load().validate_for(Role::Server).unwrap();
    sb.env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0")
        .env("GATEWAY_SERVER_ALLOW_PLAINTEXT", "true");
    let e = sb.load().validate_for(Role::Server).unwrap_err();
    assert!(e.to_string().contains("connect.advertise_address"), "{e}");
    sb.env("GATEWAY_CONNECT_ENABLED", "false")
        .env("GATEWAY_CONNECT_ADVERTISE_ADDRESS", "10.0.0.5:50051");
    sb.load().validate_for(Role::Server).unwrap();

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_CERTIFICATE_FILE", "/m.pem");
    let e = sb.load().validate_for(Role::Manager).unwrap_err();
    assert!(e.to_string().contains("manager.private_key_file"), "{e}");

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_CLIENT_PROD_PRIVATE_KEY_FILE", "/k.pem");
    let e = sb.load().validate_for(Role::Client).unwrap_err();
    assert!(
        e.to_string().contains("client:prod.certificate_file"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("GATEWAY_CLIENT_PROD_CERTIFICATE_FILE"),
        "{e}"
    );
}

/// Passwords and API keys must not cross the network readable by default: a plaintext API on an
/// address other machines reach is refused for the roles that serve it, naming the option that
/// allows it; loopback stays allowed.
#[test]
fn plaintext_api_on_a_network_address_needs_allow_plaintext() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0");
    let c = sb.load();
    for role in [Role::Server, Role::Local] {
        let e = c.validate_for(role).unwrap_err();
        let text = e.to_string();
        for part in [
            "server.listen_address = 0.0.0.0",
            "server.use_tls = false",
            "server.allow_plaintext = true",
            "GATEWAY_SERVER_ALLOW_PLAINTEXT",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert_eq!(e.exit_code(), 64);
    }
    c.validate_for(Role::Client).unwrap();
    sb.env("GATEWAY_SERVER_ALLOW_PLAINTEXT", "true");
    sb.load().validate_for(Role::Server).unwrap();
    for loopback in ["127.0.0.1", "127.1.2.3", "::1", "localhost"] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_SERVER_LISTEN_ADDRESS", loopback);
        sb.load().validate_for(Role::Server).unwrap();
    }
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_SERVER_LISTEN_ADDRESS", "gateway.example.com");
    assert!(sb.load().validate_for(Role::Server).is_err());
}
