//! Black-box tests of configuration loading through the real binary: precedence, lookup
//! locations, the `[commander]`/`[connect]` aliasing and every kind of bad input (exit 64 with a
//! message naming key, value and source).

use std::path::Path;
use std::time::Duration;

use autogate_testkit::{Autogate, Output};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);

fn show(cmd: Autogate) -> (Output, Value) {
    let out = cmd
        .arg("version")
        .arg("--show-config")
        .arg("--raw")
        .output(DEADLINE);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("raw output is JSON");
    (out, v)
}

fn entry<'a>(v: &'a Value, section: &str, key: &str) -> &'a Value {
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["section"] == section && e["key"] == key)
        .unwrap_or_else(|| panic!("no entry {section}.{key} in {v}"))
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write config");
}

fn no_args() -> Autogate {
    Autogate::new(Vec::<String>::new())
}

#[test]
fn env_beats_file_beats_default() {
    let cmd = no_args();
    let file = cmd.home().join("gw.conf");
    write(
        &file,
        "[server]\nport = 6000\nlisten_address = \"10.1.1.1\"\n[log]\nlevel = DEBUG\n",
    );
    let cmd = cmd
        .arg("--config")
        .arg(file.display().to_string())
        .env("GATEWAY_SERVER_PORT", "7000");
    let (_, v) = show(cmd);
    let port = entry(&v, "server", "port");
    assert_eq!(port["value"], "7000");
    assert_eq!(port["source"]["kind"], "env");
    assert_eq!(port["source"]["var"], "GATEWAY_SERVER_PORT");
    let addr = entry(&v, "server", "listen_address");
    assert_eq!(addr["value"], "10.1.1.1");
    assert_eq!(addr["source"]["kind"], "file");
    assert_eq!(addr["source"]["line"], 3);
    let cluster = entry(&v, "application", "cluster_id");
    assert_eq!(cluster["value"], "cluster_1");
    assert_eq!(cluster["source"]["kind"], "default");
    assert_eq!(v["config_file"], file.display().to_string());
}

#[test]
fn lookup_explicit_then_env_var_then_home() {
    // Home file only: picked up.
    let cmd = no_args();
    write(
        &cmd.home().join(".gateway.d/gateway.conf"),
        "[application]\ncluster_id = from_home\n",
    );
    let (_, v) = show(cmd);
    assert_eq!(entry(&v, "application", "cluster_id")["value"], "from_home");

    // $GATEWAY_CONFIG beats the home file.
    let cmd = no_args();
    write(
        &cmd.home().join(".gateway.d/gateway.conf"),
        "[application]\ncluster_id = from_home\n",
    );
    let via_env = cmd.home().join("env.conf");
    write(&via_env, "[application]\ncluster_id = from_env_file\n");
    let cmd = cmd.env("GATEWAY_CONFIG", via_env.display().to_string());
    let (_, v) = show(cmd);
    assert_eq!(
        entry(&v, "application", "cluster_id")["value"],
        "from_env_file"
    );

    // --config beats both.
    let cmd = no_args();
    let via_env = cmd.home().join("env.conf");
    write(&via_env, "[application]\ncluster_id = from_env_file\n");
    let explicit = cmd.home().join("explicit.conf");
    write(&explicit, "[application]\ncluster_id = 'from_flag'\n");
    let cmd = cmd
        .env("GATEWAY_CONFIG", via_env.display().to_string())
        .arg("--config")
        .arg(explicit.display().to_string());
    let (_, v) = show(cmd);
    assert_eq!(entry(&v, "application", "cluster_id")["value"], "from_flag");
}

#[test]
fn family_commander_file_loads_and_maps_to_connect() {
    let cmd = no_args();
    let file = cmd.home().join("family.conf");
    write(
        &file,
        "# a 5.0-era gateway file\n[application]\nmode = server\ncluster_id = cluster_1\n\n[commander]\nhost = manager.example.com\nport = 8443\ncertificate_file = /etc/gateway/certificates/commander.pem\nserver_ha_enabled = true\nserver_ha_is_primary = true\n\n[store]\nbackend = etcd\netcd_hosts = 10.0.0.1:2379 10.0.0.2:2379\n\n[log]\nlevel = INFO\n\n[features]\nansible_enabled = true\nhostkeys_enabled = false\n",
    );
    let (_, v) = show(cmd.arg("--config").arg(file.display().to_string()));
    assert_eq!(
        entry(&v, "connect", "hosts")["value"],
        "manager.example.com:8443"
    );
    assert_eq!(entry(&v, "connect", "server_ha_enabled")["value"], "true");
}

fn expect_usage_error(cmd: Autogate, must_contain: &[&str]) -> String {
    let out = cmd.arg("version").arg("--show-config").output(DEADLINE);
    assert_eq!(
        out.code(),
        Some(64),
        "expected exit 64; stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    for needle in must_contain {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out.stderr
}

#[test]
fn alias_conflict_names_both() {
    expect_usage_error(
        no_args()
            .env("GATEWAY_COMMANDER_ENABLED", "true")
            .env("GATEWAY_CONNECT_ENABLED", "false"),
        &["GATEWAY_COMMANDER_ENABLED", "GATEWAY_CONNECT_ENABLED"],
    );
    let cmd = no_args();
    let file = cmd.home().join("c.conf");
    write(&file, "[commander]\nhost = m1\n");
    expect_usage_error(
        cmd.arg("--config")
            .arg(file.display().to_string())
            .env("GATEWAY_CONNECT_HOSTS", "m2:443"),
        &["commander", "GATEWAY_CONNECT_HOSTS"],
    );
}

#[test]
fn bad_env_values_exit_64_naming_key_value_source() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "GATEWAY_SERVER_PORT",
            "abc",
            &["server.port", "\"abc\"", "GATEWAY_SERVER_PORT"],
        ),
        (
            "GATEWAY_SERVER_PORT",
            "70000",
            &["server.port", "70000", "GATEWAY_SERVER_PORT"],
        ),
        (
            "GATEWAY_LOG_CONSOLE_JSON",
            "maybe",
            &["log.console_json", "maybe", "GATEWAY_LOG_CONSOLE_JSON"],
        ),
        (
            "GATEWAY_CONNECT_SERVER_HA_LEASE_TTL",
            "5",
            &["server_ha_lease_ttl", "\"5\"", "unit"],
        ),
        (
            "GATEWAY_CONNECT_SERVER_HA_LEASE_TTL",
            "1s",
            &["server_ha_lease_ttl", "1s"],
        ),
        (
            "GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY",
            "soon",
            &["server_ha_preempt_delay", "soon"],
        ),
        (
            "GATEWAY_SERVER_API_KEY_EXPIRATION",
            "720h",
            &["api_key_expiration", "720h", "minutes"],
        ),
        (
            "GATEWAY_CONNECT_HOSTS",
            "",
            &["connect.hosts", "GATEWAY_CONNECT_HOSTS"],
        ),
        (
            "GATEWAY_CONNECT_HOSTS",
            "a:1,b:2",
            &["connect.hosts", "a:1,b:2", "spaces"],
        ),
        (
            "GATEWAY_STORE_ETCD_HOSTS",
            "host-without-port",
            &["store.etcd_hosts", "host-without-port"],
        ),
        (
            "GATEWAY_STORE_BACKEND",
            "dynamodb",
            &["store.backend", "dynamodb", "not supported"],
        ),
        ("GATEWAY_LOG_LEVEL", "LOUD", &["log.level", "LOUD"]),
        ("GATEWAY_SERVER_PORTT", "1", &["GATEWAY_SERVER_PORTT"]),
    ];
    for (var, value, needles) in cases {
        expect_usage_error(no_args().env(var, *value), needles);
    }
}

#[test]
fn bad_file_input_exit_64_naming_file_and_line() {
    let cmd = no_args();
    let file = cmd.home().join("bad.conf");
    write(&file, "[server]\nport = 8080\n[nonsense]\nx = 1\n");
    let path = file.display().to_string();
    expect_usage_error(
        cmd.arg("--config").arg(&path),
        &[&path, "line 3", "nonsense"],
    );

    let cmd = no_args();
    let file = cmd.home().join("bad.conf");
    write(&file, "[server]\nprot = 8080\n");
    let path = file.display().to_string();
    expect_usage_error(cmd.arg("--config").arg(&path), &[&path, "line 2", "prot"]);

    let cmd = no_args();
    let file = cmd.home().join("bad.conf");
    write(&file, "[server]\nuse_tls = perhaps\n");
    let path = file.display().to_string();
    expect_usage_error(
        cmd.arg("--config").arg(&path),
        &[&path, "line 2", "server.use_tls", "perhaps"],
    );
}

#[test]
fn missing_config_file_is_a_usage_error() {
    expect_usage_error(
        no_args().arg("--config").arg("/nonexistent/gw.conf"),
        &["/nonexistent/gw.conf", "--config"],
    );
    expect_usage_error(
        no_args().env("GATEWAY_CONFIG", "/nonexistent/env.conf"),
        &["/nonexistent/env.conf", "GATEWAY_CONFIG"],
    );
}

#[test]
fn ha_needs_etcd() {
    expect_usage_error(
        no_args()
            .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
            .env("GATEWAY_STORE_BACKEND", "local"),
        &["server_ha_enabled", "store.backend", "etcd"],
    );
}

#[test]
fn secrets_are_redacted_in_show_config_and_errors() {
    let (out, v) = show(no_args().env("GATEWAY_CONNECT_PROXY_PASSWORD", "hunter2-very-secret"));
    assert!(!out.stdout.contains("hunter2-very-secret"));
    assert_eq!(
        entry(&v, "connect", "proxy_password")["value"],
        "<redacted>"
    );
    let text = no_args()
        .env("GATEWAY_CONNECT_PROXY_PASSWORD", "hunter2-very-secret")
        .arg("version")
        .arg("--show-config")
        .output(DEADLINE);
    assert!(!text.stdout.contains("hunter2-very-secret"));
}

#[test]
fn unknown_command_and_flags_exit_64() {
    let out = no_args().arg("frobnicate").output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    let out = no_args().arg("server").arg("--bogus").output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("--bogus"), "{}", out.stderr);
}
