//! A manager link that goes silent — packets dropped, nothing closed, as a partition or a
//! firewall that drops does it — is declared dead by both ends within seconds: a real manager
//! and real core nodes, the link through a TCP proxy that is frozen. The liveness settings are
//! left at their defaults (`ping_interval` / `link_ping_interval` 1 s, `silence_limit` /
//! `link_dead_after` 5 s), so these tests also measure what an operator gets out of the box.
//! Each test states what it measured with `eprintln!` (shown with `--nocapture`); the figures
//! are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::proxy::TcpProxy;
use autogate_testkit::scenario::{core_node, node_id, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, LogLine, Process};

use crate::support::{ha_core_node, ha_status, wait_connected};

const CLUSTER: &str = "cluster_1";
/// The defaults of both ends.
const PING: Duration = Duration::from_secs(1);
const DEAD_AFTER: Duration = Duration::from_secs(5);
/// How long the link waits for the TCP, TLS and WebSocket handshakes of one attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for a loaded machine (two cores running etcd, a manager and two nodes in debug builds).
const SLACK: Duration = Duration::from_millis(1500);

fn manager(pki: &Pki, data: &tempfile::TempDir) -> Manager {
    let m = Manager::start(pki, free_port(), data.path());
    m.register(pki, CLUSTER, &["core-1", "core-2"]);
    m
}

/// The first line containing `needle` logged after `after`, waiting up to `deadline`.
fn line_after(p: &Process, needle: &str, after: Instant, deadline: Duration) -> LogLine {
    poll_until(needle, deadline, || {
        p.lines()
            .into_iter()
            .find(|l| l.at > after && l.text.contains(needle))
    })
}

/// The last sign of life the link had before `at`: the last frame either way is at most one
/// ping interval old, so a silence is noticed no earlier than `dead after − ping interval`.
fn floor() -> Duration {
    DEAD_AFTER - PING
}

/// Detection of a silent link can take the limit plus one check interval.
fn ceiling() -> Duration {
    DEAD_AFTER + PING + SLACK
}

#[test]
fn a_frozen_manager_link_is_declared_dead_by_both_ends_within_seconds() {
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().unwrap();
    let m = manager(&pki, &data);
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", m.port));
    let (cmd, _port) = core_node(&pki, "core-1", m.port);
    let node = cmd
        .name("frozen-link")
        .env("GATEWAY_CONNECT_HOSTS", proxy.endpoint())
        .spawn();
    wait_connected(&node);
    m.proc
        .wait_for_line("gateway cluster cluster_1 connected", START);
    // A few pings each way first: the link is healthy before the freeze.
    std::thread::sleep(3 * PING);

    let frozen = Instant::now();
    proxy.cut_blackhole();
    // Generous deadlines: a slow detection is measured and reported, then fails below.
    let closed = line_after(
        &m.proc,
        "closed: connection lost: no data for",
        frozen,
        3 * START,
    );
    let dropped = line_after(
        &node,
        "lost: no frame from the manager for",
        frozen,
        3 * START,
    );
    let (by_manager, by_node) = (
        closed.at.saturating_duration_since(frozen),
        dropped.at.saturating_duration_since(frozen),
    );
    eprintln!(
        "frozen link: the manager closed the session after {} ms, the core node dropped it after {} ms\n  {}\n  {}",
        by_manager.as_millis(),
        by_node.as_millis(),
        closed.text,
        dropped.text
    );
    for (who, took) in [("manager", by_manager), ("core node", by_node)] {
        assert!(
            took >= floor() && took <= ceiling(),
            "the {who} noticed the silent link after {took:?}, expected {:?}..{:?}",
            floor(),
            ceiling()
        );
    }
    // The history says the node was lost, in plain words.
    let sessions = m.sessions(&pki, CLUSTER);
    assert_eq!(
        sessions[0]["close_reason"], "connection lost: no data for 5 s",
        "{sessions:?}"
    );

    // Once the path carries packets again the node is back without help.
    let healed = Instant::now();
    proxy.restore();
    line_after(&node, "INF connected to commander at", healed, START);
}

/// Only the active node's path to the manager is frozen; the standby reaches the manager
/// directly. The active notices the silent link within `link_dead_after + link_ping_interval`,
/// then hands over after `server_ha_connect_grace` (2 s here) once its own attempt at once has
/// failed too (by its handshake timeout, the path being silent): the manager sees the
/// standby's session within seconds.
#[test]
fn standby_takes_over_within_seconds_when_the_actives_path_to_the_manager_is_frozen() {
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().unwrap();
    let m = manager(&pki, &data);
    let to_manager = TcpProxy::start(&format!("127.0.0.1:{}", m.port));
    let grace = Duration::from_secs(2);
    let (cmd, p1) = ha_core_node(&pki, "core-1", m.port, &etcd.endpoint());
    let active = cmd
        .name("frozen-active")
        .env("GATEWAY_CONNECT_HOSTS", to_manager.endpoint())
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    wait_connected(&active);
    let (cmd, p2) = ha_core_node(&pki, "core-2", m.port, &etcd.endpoint());
    let standby = cmd
        .name("standby")
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    poll_until(
        "the standby's reachability in the active's view",
        START,
        || {
            let s = ha_status(p1)?;
            s["candidates"]
                .as_array()?
                .iter()
                .any(|c| c["node_id"] == id2.as_str() && c["manager_reachable"] == true)
                .then_some(())
        },
    );

    let frozen = Instant::now();
    to_manager.cut_blackhole();
    // Generous here so that a slow hand-over is measured and reported, not just a timeout.
    let took_over = line_after(&standby, "INF connected to commander at", frozen, 3 * START);
    let moved = took_over.at.saturating_duration_since(frozen);
    let dropped = line_after(
        &active,
        "lost: no frame from the manager for",
        frozen,
        3 * START,
    );
    let noticed = dropped.at.saturating_duration_since(frozen);
    eprintln!(
        "active's path frozen (connect grace {grace:?}): the active dropped the link after {} ms, the standby connected after {} ms",
        noticed.as_millis(),
        moved.as_millis()
    );
    assert!(
        noticed >= floor() && noticed <= ceiling(),
        "the active noticed the silent link after {noticed:?}"
    );
    // Detection, the grace, and the active's own attempt at once before it hands over: through
    // the same frozen path, that attempt fails only by the link's handshake timeout.
    let bound = ceiling() + grace + HANDSHAKE_TIMEOUT + SLACK;
    assert!(
        moved >= noticed + grace - Duration::from_millis(100),
        "leadership moved after {moved:?}, before detection ({noticed:?}) + the connect grace"
    );
    assert!(
        moved <= bound,
        "leadership moved only after {moved:?} (bound {bound:?})"
    );
    // The manager saw one session end and the next begin, never two at once.
    let sessions = poll_until("the standby's session at the manager", START, || {
        let s = m.sessions(&pki, CLUSTER);
        s.iter()
            .any(|x| x["node_id"] == id2.as_str() && x["disconnected_at"].is_null())
            .then_some(s)
    });
    let live = sessions
        .iter()
        .filter(|s| s["disconnected_at"].is_null())
        .count();
    assert_eq!(live, 1, "{sessions:?}");
    poll_until("the old active to be a standby", START, || {
        (ha_status(p1)?["role"] == "standby").then_some(())
    });
}
