//! High availability end to end: a real etcd, a real manager and two real core nodes with their
//! own certificates. Reproduces the HA guide's fail-over and measures what the manager sees.

use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{node_id, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::{ha_core_node, wait_connected};

struct Cluster {
    etcd: EtcdServer,
    pki: Pki,
    manager: Manager,
    _data: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let etcd = EtcdServer::start();
        let pki = Pki::new(&["core-1", "core-2"]);
        let data = tempfile::tempdir().expect("tempdir");
        let manager = Manager::start(&pki, free_port(), data.path());
        manager.register(&pki, "cluster_1", &["core-1", "core-2"]);
        Cluster {
            etcd,
            pki,
            manager,
            _data: data,
        }
    }

    fn node(&self, name: &str) -> (Autogate, u16) {
        ha_core_node(&self.pki, name, self.manager.port, &self.etcd.endpoint())
    }

    fn sessions(&self) -> Vec<Value> {
        self.manager.sessions(&self.pki, "cluster_1")
    }
}

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("timestamp"), &Rfc3339).expect("RFC 3339")
}

/// The two newest sessions: (new, old). Asserts no overlap; returns the gap in ms.
fn handover_gap_ms(sessions: &[Value], old_id: &str, new_id: &str) -> f64 {
    let new = sessions
        .iter()
        .find(|s| s["node_id"] == new_id)
        .unwrap_or_else(|| panic!("no session of {new_id}: {sessions:?}"));
    let old = sessions
        .iter()
        .find(|s| s["node_id"] == old_id)
        .unwrap_or_else(|| panic!("no session of {old_id}: {sessions:?}"));
    assert!(new["disconnected_at"].is_null(), "{new}");
    let old_end = ts(&old["disconnected_at"]);
    let new_start = ts(&new["connected_at"]);
    let gap = (new_start - old_end).as_seconds_f64() * 1000.0;
    assert!(
        gap >= 0.0,
        "sessions overlap by {:.1} ms: {sessions:?}",
        -gap
    );
    assert!(
        new["term"].as_u64().expect("new term") > old["term"].as_u64().expect("old term"),
        "{sessions:?}"
    );
    gap
}

fn side_by_side(a: &Process, b: &Process) -> String {
    let mut lines: Vec<(Instant, String)> = Vec::new();
    for (name, p) in [("active-gateway", a), ("standby-gateway", b)] {
        for l in p.lines() {
            lines.push((l.at, format!("{name:<17} | {}", l.text)));
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    lines.into_iter().map(|(_, t)| t + "\n").collect()
}

#[test]
fn graceful_failover_reads_like_the_ha_guide_with_a_small_gap() {
    let c = Cluster::start();
    let (cmd, p1) = c.node("core-1");
    let mut active = cmd.name("active-gateway").spawn();
    wait_connected(&active);
    let id1 = node_id(p1);
    let (cmd, p2) = c.node("core-2");
    let standby = cmd.name("standby-gateway").spawn();
    let id2 = node_id(p2);
    standby.wait_for_line(
        &format!(
            " DBG this core node with Id of '{id2}' is not the active node. The current active core node is '{id1}'"
        ),
        START,
    );

    // The manager shows the cluster as one gateway with both core nodes and their roles.
    let roles = |v: &Value| -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["node_id"].as_str().unwrap_or_default().to_owned(),
                            n["role"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    let mut expected = vec![
        (id1.clone(), "active".to_owned()),
        (id2.clone(), "standby".to_owned()),
    ];
    expected.sort();
    poll_until("the manager to list both core nodes", START, || {
        (roles(&c.manager.show(&c.pki, "cluster_1")) == expected).then_some(())
    });

    active.signal("TERM");
    let status = active.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    wait_connected(&standby);
    let mport = c.manager.port;

    // Active: connected, then the two shutdown lines.
    let a = active.logs();
    let idx = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.ends_with(needle))
            .unwrap_or_else(|| panic!("no line ending with {needle:?} in:\n{text}"))
    };
    let a1 = idx(
        &a,
        &format!(" INF connected to commander at 127.0.0.1:{mport}"),
    );
    let a2 = idx(&a, " INF got signal for shutdown....terminated");
    let a3 = idx(&a, " INF received shutdown signal");
    assert!(a1 < a2 && a2 + 1 == a3, "{a}");

    // Standby: elected, creating, attempting, connected — in that order.
    let s = standby.logs();
    let s1 = idx(
        &s,
        &format!(
            " INF node {id2} is elected as the leader. About to start commander connection..."
        ),
    );
    let s2 = idx(
        &s,
        &format!(" INF creating connection to commander at '127.0.0.1:{mport}'"),
    );
    let s3 = idx(
        &s,
        &format!(" INF attempting to connect to wss://127.0.0.1:{mport}/ws"),
    );
    let s4 = idx(
        &s,
        &format!(" INF connected to commander at 127.0.0.1:{mport}"),
    );
    assert!(s1 < s2 && s2 < s3 && s3 < s4, "{s}");
    // Every line has the family's shape: `<RFC 3339 UTC seconds> <LVL> <message>`.
    for line in a.lines().chain(s.lines()) {
        let mut parts = line.splitn(3, ' ');
        let t = parts.next().expect("timestamp");
        let lvl = parts.next().expect("level");
        assert!(t.len() == 20 && t.ends_with('Z'), "{line}");
        assert!(
            ["TRC", "DBG", "INF", "WRN", "ERR", "FTL"].contains(&lvl),
            "{line}"
        );
    }

    let sessions = poll_until("the manager to record the hand-over", START, || {
        let s = c.sessions();
        s.iter().any(|x| x["node_id"] == id2.as_str()).then_some(s)
    });
    let gap = handover_gap_ms(&sessions, &id1, &id2);
    let old = sessions
        .iter()
        .find(|x| x["node_id"] == id1.as_str())
        .expect("old session");
    assert!(
        old["close_reason"]
            .as_str()
            .is_some_and(|r| r.contains("node stepping down")),
        "the stopping node closes its session cleanly: {old}"
    );
    // The stopped node leaves the manager's view with its lease.
    poll_until(
        "the manager to show only the new active node",
        START,
        || {
            (roles(&c.manager.show(&c.pki, "cluster_1"))
                == vec![(id2.clone(), "active".to_owned())])
            .then_some(())
        },
    );
    eprintln!("{}", side_by_side(&active, &standby));
    eprintln!("manager: gap between sessions {gap:.1} ms");
    assert!(gap < 200.0, "gap {gap:.1} ms: {sessions:?}");
}

#[test]
fn kill_9_of_the_active_is_detected_by_probes_within_a_second() {
    let c = Cluster::start();
    let (cmd, p1) = c.node("core-1");
    let mut active = cmd.spawn();
    wait_connected(&active);
    let id1 = node_id(p1);
    let (cmd, p2) = c.node("core-2");
    let standby = cmd.spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    // Crash proof needs the active's address to have answered with its id first.
    poll_until("the standby to verify the active's address", START, || {
        let (_, body) = autogate_testkit::auth::authed_get(p2, "/api/v1/ha/status")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["crash_probe"]["verified"] == true && v["crash_probe"]["node_id"] == id1.as_str())
            .then_some(())
    });

    let killed = Instant::now();
    active.kill();
    let line = wait_connected(&standby);
    let took = line.at.saturating_duration_since(killed);
    eprintln!("kill -9 → standby connected: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}\n{}",
        standby.dump()
    );
    let sessions = poll_until("the new session", START, || {
        let s = c.sessions();
        s.iter().any(|x| x["node_id"] == id2.as_str()).then_some(s)
    });
    handover_gap_ms(&sessions, &id1, &id2);
}

#[test]
fn kill_9_without_probing_waits_for_the_lease() {
    let c = Cluster::start();
    let ttl = Duration::from_secs(2);
    let (cmd, _p1) = c.node("core-1");
    let mut active = cmd
        .env("GATEWAY_CONNECT_SERVER_HA_PROBE_WINDOW", "0")
        .env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "2s")
        .spawn();
    wait_connected(&active);
    let (cmd, _p2) = c.node("core-2");
    let standby = cmd
        .env("GATEWAY_CONNECT_SERVER_HA_PROBE_WINDOW", "0")
        .env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "2s")
        .spawn();
    standby.wait_for_line("is not the active node", START);

    let killed = Instant::now();
    active.kill();
    let line = wait_connected(&standby);
    let took = line.at.saturating_duration_since(killed);
    eprintln!("kill -9 (no probing, TTL 2 s) → standby connected: {took:?}");
    assert!(took <= ttl + Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn ha_status_lists_candidates_in_order() {
    let c = Cluster::start();
    let (cmd, p1) = c.node("core-1");
    let active = cmd.spawn();
    wait_connected(&active);
    let id1 = node_id(p1);
    let (cmd, p2) = c.node("core-2");
    let standby = cmd.spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    // The standby logs the active node as soon as it sees it; its own key may land a moment
    // later, so wait until both candidates are listed.
    let key = autogate_testkit::auth::admin_key(p2);
    let v = poll_until("both candidates in ha status", START, || {
        let out = Autogate::new(["ha", "status", "--raw"])
            .env("GATEWAY_APPLICATION_MODE", "client")
            .env("GATEWAY_CLIENT_PORT", p2.to_string())
            .env("GATEWAY_CLIENT_API_KEY", &key)
            .output(START);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).expect("json");
        (v["candidates"].as_array().map_or(0, Vec::len) == 2).then_some(v)
    });
    assert_eq!(v["node_id"], id2.as_str());
    assert_eq!(v["role"], "standby");
    assert_eq!(v["active_node_id"], id1.as_str());
    let order: Vec<&str> = v["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["node_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(order, vec![id1.as_str(), id2.as_str()], "{v}");
}
