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

#[test]
fn a_login_to_a_second_node_keeps_the_first_ones_key() {
    let etcd = EtcdServer::start();
    // Two clusters: a key of one is worth nothing on the other.
    let (_first, p1) = ha_node(&etcd, "first");
    let (_second, p2) = ha_node(&etcd, "second");
    let home = TempDir::new().expect("tmp");
    let work = home.path().join(".gateway.d");
    let (s1, s2) = (p1.to_string(), p2.to_string());
    let node = |p: &str| {
        [
            ("GATEWAY_APPLICATION_MODE", "client".to_owned()),
            ("GATEWAY_CLIENT_PORT", p.to_owned()),
        ]
    };
    let run = |p: &str, args: &[&str], stdin: &str| {
        let env = node(p);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cli(home.path(), &env, args, stdin)
    };
    let status = |p: &str, code: i32| {
        let args = ["ha", "status", "--raw"];
        expect(run(p, &args, ""), &args, code)
    };
    let login = ["login", "admin", "--password-stdin"];
    expect(run(&s1, &login, ADMIN_PASSWORD), &login, 0);
    expect(run(&s2, &login, ADMIN_PASSWORD), &login, 0);

    // One file per node, 0600, in a directory only the operator reads.
    use std::os::unix::fs::PermissionsExt;
    let keys = work.join("api-keys");
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o700);
    let (k1, k2) = (
        keys.join(format!("127.0.0.1_{p1}.key")),
        keys.join(format!("127.0.0.1_{p2}.key")),
    );
    for k in [&k1, &k2] {
        assert_eq!(mode(k), 0o600, "{}", k.display());
    }
    let key1 = std::fs::read_to_string(&k1).expect("key 1");
    assert_ne!(key1, std::fs::read_to_string(&k2).expect("key 2"));
    assert!(!work.join("api.key").exists());

    // Both logins hold: each node answers as itself.
    let id = |out: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(out).expect("ha status --raw is JSON");
        v["node_id"].as_str().expect("node_id").to_owned()
    };
    let id1 = id(&status(&s1, 0).0);
    let id2 = id(&status(&s2, 0).0);
    assert_ne!(id1, id2);

    // The single api.key of earlier versions is read for a node without a key of its own...
    std::fs::remove_file(&k1).expect("rm");
    std::fs::write(work.join("api.key"), &key1).expect("legacy key");
    assert_eq!(id(&status(&s1, 0).0), id1);
    // ...and never instead of a node's own key.
    assert_eq!(id(&status(&s2, 0).0), id2);
    // When the node refuses it, the answer says where that key came from.
    std::fs::remove_file(&k2).expect("rm");
    let (_, err) = status(&s2, 77);
    assert!(
        err.contains("api.key") && err.contains("earlier version"),
        "{err}"
    );
    assert!(err.contains(&k2.display().to_string()), "{err}");
    // With no key at all: which file was looked for, and the login that writes it.
    std::fs::remove_file(work.join("api.key")).expect("rm");
    let (_, err) = status(&s1, 77);
    assert!(err.contains(&k1.display().to_string()), "{err}");
    assert!(err.contains("autogate login"), "{err}");
}
