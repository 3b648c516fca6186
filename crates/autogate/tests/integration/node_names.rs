//! Stable node names through the real binaries: a core node named after its certificate's CN,
//! a runner named by `GATEWAY_APPLICATION_NODE_NAME` and one by its host name, as `get runners`,
//! the HA status and the manager's REST API show them beside the ids; then the manager's memory
//! of the nodes that left — a runner stopped with SIGTERM is *stopped*, one killed with
//! `kill -9` is *lost* — and the operator's `DELETE …/nodes/{id}` that forgets one.

use std::path::Path;
use std::time::Duration;

use autogate_testkit::auth::https_request;
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{Manager, Pki, START};
use autogate_testkit::{poll_until, Autogate, Process};
use serde_json::Value;

use crate::support::{ha_core_node, ha_status, wait_connected};

const CLUSTER: &str = "cluster_1";
/// A runner's lease is 2 s here: its registration goes at most that long after its process.
const GONE: Duration = Duration::from_secs(20);

fn runner(label: &str, name: Option<&str>, etcd: &str) -> Process {
    let mut cmd = Autogate::new(["runner"])
        .name(label)
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
        .env("GATEWAY_RUNNER_DRAIN_GRACE", "1s");
    if let Some(n) = name {
        cmd = cmd.env("GATEWAY_APPLICATION_NODE_NAME", n);
    }
    cmd.spawn()
}

/// `autogate get runners [--raw]` in local mode on the cluster's etcd.
fn get_runners(etcd: &str, raw: bool) -> String {
    let mut cmd = Autogate::new(["get", "runners"])
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_CONNECT_ENABLED", "false");
    if raw {
        cmd = cmd.arg("--raw");
    }
    let out = cmd.output(START);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// One call to the manager's REST API with the admin token: status and body.
fn manager_call(
    manager: &Manager,
    pki: &Pki,
    token: &str,
    method: &str,
    path: &str,
) -> (u16, String) {
    https_request(
        &format!("127.0.0.1:{}", manager.port),
        method,
        path,
        Some(token),
        None,
        Path::new(&pki.path("ca.pem")),
        None,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn cluster(manager: &Manager, pki: &Pki, token: &str) -> Value {
    let (status, body) = manager_call(
        manager,
        pki,
        token,
        "GET",
        &format!("/api/v1/clusters/{CLUSTER}"),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("cluster JSON")
}

fn entry<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|n| n[key] == value)
}

#[test]
fn names_beside_ids_and_the_nodes_that_left() {
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, autogate_testkit::free_port(), data.path());
    manager.register(&pki, CLUSTER, &["core-1"]);
    let token = std::fs::read_to_string(manager.token_path())
        .expect("admin token")
        .trim()
        .to_owned();
    let (cmd, port) = ha_core_node(&pki, "core-1", manager.port, &etcd.endpoint());
    let core = cmd.name("core-1").spawn();
    wait_connected(&core);
    let mut named = runner("runner-a", Some("runner-a"), &etcd.endpoint());
    let mut unnamed = runner("runner-b", None, &etcd.endpoint());
    let host =
        autogate_runtime::identity::clean_name(&autogate_runtime::hostname()).expect("a host name");

    // get runners: the name first, then the id.
    let runners: Vec<Value> = poll_until("both runners registered", START, || {
        let v: Value = serde_json::from_str(&get_runners(&etcd.endpoint(), true)).ok()?;
        let list = v["runners"].as_array()?.clone();
        (list.len() == 2).then_some(list)
    });
    let id_of = |name: &str| -> String {
        runners
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["node_id"].as_str())
            .unwrap_or_else(|| panic!("a runner named {name}: {runners:?}"))
            .to_owned()
    };
    let (a, b) = (id_of("runner-a"), id_of(&host));
    let text = get_runners(&etcd.endpoint(), false);
    assert!(text.starts_with("NAME "), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("runner-a "))
        .unwrap_or_else(|| panic!("a row for runner-a: {text}"));
    assert!(row.contains(&a), "the id beside the name: {row}");

    // The HA status: this node, the active one and each candidate by name.
    let st = poll_until("the HA status with names", START, || {
        ha_status(port).filter(|v| v["candidates"][0]["name"] == "core-1")
    });
    assert_eq!(st["node_name"], "core-1", "{st}");
    assert_eq!(st["active_node_name"], "core-1", "{st}");

    // The manager's node list: every node with its name.
    let c = poll_until("the manager to list the runners", START, || {
        let c = cluster(&manager, &pki, &token);
        (c["nodes"].as_array()?.len() == 3).then_some(c)
    });
    let core_id = c["active"]["node_id"].as_str().expect("active").to_owned();
    assert_eq!(c["active"]["node_name"], "core-1", "{c}");
    for (id, name) in [
        (core_id.as_str(), "core-1"),
        (&a, "runner-a"),
        (&b, host.as_str()),
    ] {
        let n = entry(&c["nodes"], "node_id", id).unwrap_or_else(|| panic!("{id} listed: {c}"));
        assert_eq!(n["name"], name, "{n}");
    }

    // A runner stopped cleanly is stopped; one killed is lost. Both stay listed.
    named.signal("TERM");
    named.wait_exit(START);
    let c = poll_until("runner-a shown as stopped", GONE, || {
        let c = cluster(&manager, &pki, &token);
        (entry(&c["absent_nodes"], "node_id", &a)?["status"] == "stopped").then_some(c)
    });
    let gone = entry(&c["absent_nodes"], "node_id", &a).expect("runner-a");
    assert_eq!(
        (gone["name"].as_str(), gone["role"].as_str()),
        (Some("runner-a"), Some("runner")),
        "{gone}"
    );
    assert!(
        gone["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped cleanly"),
        "{gone}"
    );
    assert!(
        gone["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{gone}"
    );
    unnamed.kill();
    let c = poll_until("the killed runner shown as lost", GONE, || {
        let c = cluster(&manager, &pki, &token);
        (entry(&c["absent_nodes"], "node_id", &b)?["status"] == "lost").then_some(c)
    });
    assert_eq!(
        entry(&c["absent_nodes"], "node_id", &b).expect("lost")["name"],
        host.as_str()
    );
    assert_eq!(
        entry(&c["absent_nodes"], "node_id", &a).expect("still listed")["status"],
        "stopped",
        "{c}"
    );

    // Forgetting: a node that left goes; a present node or an unknown id cannot.
    let path = |id: &str| format!("/api/v1/clusters/{CLUSTER}/nodes/{id}");
    assert_eq!(
        manager_call(&manager, &pki, &token, "DELETE", &path(&b)).0,
        204
    );
    let (status, body) = manager_call(&manager, &pki, &token, "DELETE", &path(&b));
    assert_eq!(status, 404, "{body}");
    let (status, body) = manager_call(&manager, &pki, &token, "DELETE", &path(&core_id));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("present"), "{body}");
    let (status, _) = manager_call(
        &manager,
        &pki,
        &token,
        "DELETE",
        &format!("/api/v1/clusters/nope/nodes/{a}"),
    );
    assert_eq!(status, 404);
    let c = cluster(&manager, &pki, &token);
    let left: Vec<&str> = c["absent_nodes"]
        .as_array()
        .expect("absent_nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(left, [a.as_str()], "{c}");
    drop(core);
}
