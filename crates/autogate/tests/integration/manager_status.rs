//! `autogate manager status` against a real manager: the replicas sharing its store (one, with
//! the `local` store), the session each holds, the store line, `--raw`, and the exit code when
//! the manager cannot be reached. Also the replica examples of `deploy/examples/`, which must
//! load as they ship.

use std::path::Path;

use crate::support::manager::*;
use crate::support::workspace_root;
use autogate_testkit::{free_port, Autogate, Output};
use serde_json::Value;

/// `autogate manager status <args…>` finding URL, token and CA from the manager's own
/// configuration (port and data directory), as an operator on the manager's host runs it.
async fn status(port: u16, data: &Path, args: &[&str]) -> Output {
    let mut cmd = Autogate::new(["manager", "status"])
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string());
    for a in args {
        cmd = cmd.arg(*a);
    }
    // The CLI blocks; the gateway session of the test keeps being served meanwhile.
    tokio::task::spawn_blocking(move || cmd.output(START))
        .await
        .expect("the CLI run")
}

/// The data rows of the table: the lines between the header and the store line.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("store: "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_one_replica_of_a_local_store_and_its_session() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Manager::start_with(port, data.path(), |c| c);

    let out = status(port, data.path(), &[]).await;
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines
            .first()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "REPLICA", "ADDRESS", "SESSIONS", "LAST", "SEEN", "STARTED"
        ]),
        "{}",
        out.stdout
    );
    let replicas = rows(&out.stdout);
    assert_eq!(replicas.len(), 1, "exactly one replica:\n{}", out.stdout);
    let row = &replicas[0];
    assert_eq!(row.get(1).map(String::as_str), Some("*"), "{}", out.stdout);
    assert!(
        row.iter().any(|c| c.ends_with(&format!(":{port}"))),
        "the replica's address has the manager's port:\n{}",
        out.stdout
    );
    assert_eq!(row.get(3).map(String::as_str), Some("0"), "{}", out.stdout);
    assert!(!out.stdout.contains("unreachable?"), "{}", out.stdout);
    let store = lines.last().copied().unwrap_or_default();
    assert!(
        store.starts_with("store: local") && store.ends_with(", healthy"),
        "{}",
        out.stdout
    );

    // A cluster's live session is counted on the replica that holds it.
    let admin = m.admin();
    let core = pki.node("core-1");
    register(&admin, "gw-a", "enabled", &[&core]).await;
    let gw = connected(&m, &core, "gw-a", "core-1", Some(1)).await;
    let session = Responder::spawn(gw, RunAnswer::Echo);
    let out = status(port, data.path(), &[]).await;
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let replicas = rows(&out.stdout);
    assert_eq!(replicas.len(), 1, "{}", out.stdout);
    assert_eq!(
        replicas[0].get(3).map(String::as_str),
        Some("1"),
        "{}",
        out.stdout
    );

    // --raw: the API's body, this replica marked.
    let out = status(port, data.path(), &["--raw"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("--raw prints JSON");
    assert_eq!(v["store"]["backend"], "local", "{v}");
    assert_eq!(v["store"]["healthy"], true, "{v}");
    let list = v["replicas"].as_array().expect("replicas");
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["this"], true, "{v}");
    assert_eq!(list[0]["sessions"], 1, "{v}");
    assert!(session.closed().is_none(), "the session stayed up");
}

#[test]
fn status_exits_69_when_the_manager_cannot_be_reached_and_documents_raw() {
    let data = tempfile::tempdir().unwrap();
    // A manager that ran once (its token and certificate exist) and is gone.
    let port = free_port();
    drop(Manager::start_with(port, data.path(), |c| c));
    let out = Autogate::new(["manager", "status"])
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env(
            "GATEWAY_MANAGER_DATA_DIR",
            data.path().display().to_string(),
        )
        .output(START);
    assert_eq!(out.code(), Some(69), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the manager at https://127.0.0.1:{port}"
        )),
        "{}",
        out.stderr
    );

    let out = Autogate::new(["manager", "status", "--help"]).output(START);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for word in [
        "--raw",
        "--url",
        "--token-file",
        "--ca",
        "unreachable?",
        "69",
    ] {
        assert!(
            out.stdout.contains(word),
            "help lacks {word}:\n{}",
            out.stdout
        );
    }
}

/// Loads `deploy/examples/<name>` as `autogate version --show-config --raw` does, with
/// `/etc/gateway/` moved to a temp dir holding (empty) files of every path the example names
/// there, and returns `section.key` → value for the keys the file sets (paths as the file
/// names them).
fn example(name: &str) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/examples").join(name))
        .expect("example config");
    let dir = tempfile::tempdir().unwrap();
    let etc = format!("{}/", dir.path().display());
    for word in text.split_whitespace() {
        if let Some(rest) = word
            .strip_prefix("/etc/gateway/")
            .filter(|r| !r.is_empty() && !r.ends_with('/'))
        {
            let path = dir.path().join(rest);
            std::fs::create_dir_all(path.parent().expect("parent")).unwrap();
            std::fs::write(&path, "").unwrap();
        }
    }
    let conf = dir.path().join(name);
    std::fs::write(&conf, text.replace("/etc/gateway/", &etc)).unwrap();
    let out = Autogate::new(["version", "--show-config", "--raw", "--config"])
        .arg(conf.display().to_string())
        .output(START);
    assert_eq!(out.code(), Some(0), "{name}: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("raw output is JSON");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"]["kind"] != "default")
        .map(|e| {
            let value = match &e["value"] {
                Value::String(s) => s.replace(&etc, "/etc/gateway/"),
                other => other.to_string(),
            };
            (
                format!(
                    "{}.{}",
                    e["section"].as_str().unwrap(),
                    e["key"].as_str().unwrap()
                ),
                value,
            )
        })
        .collect()
}

#[test]
fn the_replica_examples_load_as_one_manager_on_one_etcd() {
    let mut shared = None;
    for i in 1..=3 {
        let name = format!("manager-replica-{i}.conf");
        let v = example(&name);
        let get = |k: &str| {
            v.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{name}: {k} is not set"))
        };
        assert_eq!(get("manager.store_backend"), "etcd", "{name}");
        assert_eq!(get("manager.store_etcd_use_tls"), "true", "{name}");
        assert_eq!(get("manager.store_etcd_client_cert_auth"), "true", "{name}");
        assert_eq!(
            get("manager.advertise_address"),
            format!("manager-{i}.example.com:8443"),
            "{name}"
        );
        // What makes three processes one manager is the same on each.
        let same: Vec<String> = [
            "manager.store_etcd_hosts",
            "manager.store_etcd_prefix",
            "manager.admin_token_file",
            "manager.certificate_file",
            "manager.private_key_file",
            "manager.store_etcd_ca_certificate_file",
            "application.ca_certificate_file",
            "manager.port",
        ]
        .iter()
        .map(|k| format!("{k}={}", get(k)))
        .collect();
        match &shared {
            None => shared = Some(same),
            Some(first) => assert_eq!(first, &same, "{name} differs from replica 1"),
        }
    }
    let v = example("manager-replica-1.conf");
    assert_eq!(
        v.get("manager.store_etcd_hosts").map(String::as_str),
        Some("10.0.2.11:2379 10.0.2.12:2379 10.0.2.13:2379")
    );
    assert_eq!(
        v.get("manager.store_etcd_prefix").map(String::as_str),
        Some("/autogate-manager")
    );
}
