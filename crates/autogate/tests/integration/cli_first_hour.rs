//! A newcomer's first hour with the CLI, black-box on the real binary: the commands that need a
//! core node say how to name one in local mode instead of sending the operator between `ha
//! status` and `login`, and the README's `login` and `ha status` lines work as written.

use std::path::Path;
use std::process::Output;

use autogate_testkit::auth::{with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use tempfile::TempDir;

use crate::support::{ha_status, ha_without_manager, with_stdin};

/// `autogate <args…>` as an operator on this machine: `home` is HOME (the working directory is
/// `~/.gateway.d`, where `login` keeps keys), `env` the variables set, `stdin` one line.
fn cli(home: &Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![("HOME", home.as_os_str())];
    all.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(v))));
    with_stdin(args, &all, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the exit code; returns (stdout, stderr).
fn expect(out: Output, args: &[&str], code: i32) -> (String, String) {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "autogate {args:?}\nstdout: {o}\nstderr: {e}"
    );
    (o, e)
}

/// The names an operator needs to reach a core node from local mode.
fn names_the_way_to_a_node(args: &[&str], err: &str) {
    for needle in [
        "GATEWAY_APPLICATION_MODE=client",
        "--profile",
        "autogate login",
    ] {
        assert!(err.contains(needle), "{args:?}: no {needle} in: {err}");
    }
}

/// An HA core node of its own cluster on `etcd`, with the test admin password; active when
/// this returns.
fn ha_node(etcd: &EtcdServer, cluster: &str) -> (Process, u16) {
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .name(cluster)
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_APPLICATION_CLUSTER_ID", cluster);
    let node = with_admin_password(ha_without_manager(cmd, &etcd.endpoint())).spawn();
    poll_until("the node to be active", START, || {
        (ha_status(port)?["role"] == "active").then_some(())
    });
    (node, port)
}

#[test]
fn node_commands_in_local_mode_say_how_to_name_a_node() {
    let home = TempDir::new().expect("tmp");
    for args in [
        &["ha", "status"][..],
        &["ha", "switchover"],
        &["ha", "pause"],
        &["ha", "resume"],
        &["get", "users"],
        &["describe", "user", "admin"],
        &["delete", "user", "admin"],
        &["create", "user", "bob", "--password-stdin"],
    ] {
        let (_, err) = expect(cli(home.path(), &[], args, "pw\n"), args, 64);
        let what = args[..2].join(" ");
        assert!(err.contains(&what), "{args:?}: {err}");
        assert!(err.contains("local mode"), "{args:?}: {err}");
        names_the_way_to_a_node(args, &err);
        // Said once, not with the server's words about keys.
        assert!(!err.contains("API key"), "{args:?}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }

    // A port of a node is not a mode: local mode stays local, and says so.
    let args = ["ha", "status"];
    let out = cli(home.path(), &[("GATEWAY_CLIENT_PORT", "1")], &args, "");
    let (_, err) = expect(out, &args, 64);
    names_the_way_to_a_node(&args, &err);

    // login says how to log in to a node, with the same names.
    let args = ["login", "admin", "--password-stdin"];
    let (_, err) = expect(cli(home.path(), &[], &args, "pw\n"), &args, 64);
    assert!(err.contains("local mode needs no login"), "{err}");
    names_the_way_to_a_node(&args, &err);
    assert!(
        !home.path().join(".gateway.d").exists(),
        "nothing is written for a refused command"
    );
}

#[test]
fn login_and_ha_status_work_as_the_readme_shows() {
    let etcd = EtcdServer::start();
    let (_node, port) = ha_node(&etcd, "first");
    let home = TempDir::new().expect("tmp");
    let p = port.to_string();
    let client = [
        ("GATEWAY_APPLICATION_MODE", "client"),
        ("GATEWAY_CLIENT_PORT", p.as_str()),
    ];

    // Before the login: the node refuses, and the answer leads to login.
    let args = ["ha", "status"];
    let (_, err) = expect(cli(home.path(), &client, &args, ""), &args, 77);
    assert!(err.contains("autogate login"), "{err}");

    let args = ["login", "admin", "--password-stdin"];
    let (out, _) = expect(cli(home.path(), &client, &args, ADMIN_PASSWORD), &args, 0);
    assert_eq!(out.trim(), "Successfully logged in!");

    let args = ["ha", "status"];
    let (out, _) = expect(cli(home.path(), &client, &args, ""), &args, 0);
    let role = out
        .lines()
        .find_map(|l| l.strip_prefix("Role:"))
        .map(str::trim);
    assert_eq!(role, Some("active"), "{out}");

    // A --profile names a node in local mode as well: log in and ask it, no mode set.
    let other = TempDir::new().expect("tmp");
    let conf = other.path().join("gateway.conf");
    std::fs::write(&conf, format!("[client:core]\nport = {port}\n")).expect("conf");
    let conf = conf.display().to_string();
    let with_profile = |rest: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["--config", &conf, "--profile", "core"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    };
    let args = with_profile(&["login", "admin", "--password-stdin"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(cli(other.path(), &[], &args, ADMIN_PASSWORD), &args, 0);
    let args = with_profile(&["ha", "status", "--raw"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, _) = expect(cli(other.path(), &[], &args, ""), &args, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ha status --raw is JSON");
    assert_eq!(v["role"], "active", "{v}");
}
