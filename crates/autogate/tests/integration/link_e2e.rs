//! End-to-end tests of the commander link with real processes on both ends: `autogate manager`
//! and `autogate server`, mutual TLS with certificates minted in the test.

use std::time::{Duration, Instant};

use autogate_testkit::poll_until;
use autogate_testkit::scenario::{core_node, node_id, Manager, Pki, START};
use serde_json::Value;

fn register(m: &Manager, pki: &Pki) {
    m.register(pki, "cluster_1", &["core-1", "core-2"]);
}

fn start_core(pki: &Pki, node: &str, manager_port: u16) -> (autogate_testkit::Process, u16) {
    let (cmd, port) = core_node(pki, node, manager_port);
    (cmd.spawn(), port)
}

#[test]
fn registered_node_connects_with_the_family_log_lines() {
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let mport = autogate_testkit::free_port();
    let m = Manager::start(&pki, mport, data.path());
    register(&m, &pki);
    let (core, port) = start_core(&pki, "core-1", mport);
    core.wait_for_line("connected to commander at", START);
    let logs = core.logs();
    let creating = format!(" INF creating connection to commander at '127.0.0.1:{mport}'");
    let attempting = format!(" INF attempting to connect to wss://127.0.0.1:{mport}/ws");
    let connected = format!(" INF connected to commander at 127.0.0.1:{mport}");
    let pos = |needle: &str| {
        logs.lines()
            .position(|l| l.ends_with(needle))
            .unwrap_or_else(|| panic!("no line ending with {needle:?} in:\n{logs}"))
    };
    assert!(pos(&creating) < pos(&attempting));
    assert!(pos(&attempting) < pos(&connected));

    let id = node_id(port);
    let v = poll_until("the manager to show the node connected", START, || {
        let v = m.show(&pki, "cluster_1");
        (v["connected"] == true).then_some(v)
    });
    assert_eq!(v["active"]["node_id"], id.as_str(), "{v}");
    assert!(v["active"]["term"].is_null(), "no HA, no term: {v}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["node_id"] == id.as_str() && n["role"] == "active"),
        "{v}"
    );
    drop(m);
}

#[test]
fn manager_restart_gateway_reconnects_within_the_backoff_cap() {
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let mport = autogate_testkit::free_port();
    let mut m = Manager::start(&pki, mport, data.path());
    register(&m, &pki);
    let (core, _port) = start_core(&pki, "core-1", mport);
    core.wait_for_line("connected to commander at", START);
    let connected_before = core.logs().matches("INF connected to commander at").count();

    m.proc.kill();
    core.wait_for_line("lost", START);
    // While the manager is down every attempt is logged.
    poll_until("repeated attempts while the manager is down", START, || {
        (core
            .logs()
            .matches(&format!(
                "attempting to connect to wss://127.0.0.1:{mport}/ws"
            ))
            .count()
            >= 3)
            .then_some(())
    });
    let m2 = Manager::start(&pki, mport, data.path());
    let back = Instant::now();
    poll_until("reconnection after the manager restarted", START, || {
        (core.logs().matches("INF connected to commander at").count() > connected_before)
            .then_some(())
    });
    let took = back.elapsed();
    // Cap 1 s (set above) plus the handshake; generous for a loaded CI machine.
    assert!(took < Duration::from_secs(5), "reconnected after {took:?}");
    drop(m2);
}

#[test]
fn second_non_ha_node_is_refused_and_sessions_never_overlap() {
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let mport = autogate_testkit::free_port();
    let m = Manager::start(&pki, mport, data.path());
    register(&m, &pki);
    let (first, p1) = start_core(&pki, "core-1", mport);
    first.wait_for_line("connected to commander at", START);
    let id1 = node_id(p1);
    let (second, _p2) = start_core(&pki, "core-2", mport);
    let expected = format!(
        "there is already an active connection for gateway cluster: cluster_1 (node {id1})"
    );
    second.wait_for_line(&expected, START);
    assert!(!second.logs().contains("INF connected to commander"));

    let sessions = m.sessions(&pki, "cluster_1");
    let live: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["disconnected_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{sessions:?}");
    assert_eq!(live[0]["node_id"], id1.as_str());
}
