//! High availability under faults, black box: real etcd, a real manager, real core nodes, and
//! faults injected from outside — SIGSTOP/SIGCONT of the active node, a network cut between a
//! node and etcd or the manager (a cuttable TCP proxy in between), a primary coming back, and
//! loss of etcd quorum. Each test states what it measured with `eprintln!` (shown with
//! `--nocapture`); timing bounds are generous for loaded CI machines, ordering and safety
//! assertions (no overlap, no old term live again, exactly one active) are strict.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autogate_testkit::etcd::{EtcdCluster, EtcdServer};
use autogate_testkit::proxy::TcpProxy;
use autogate_testkit::scenario::{node_id, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Autogate, LogLine, Process};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::{ha_core_node, ha_status, wait_connected};

const CLUSTER: &str = "cluster_1";

/// A manager with `cluster_1` registered for the given node certificates.
struct Env {
    pki: Pki,
    manager: Manager,
    _data: tempfile::TempDir,
}

impl Env {
    fn start(nodes: &[&str]) -> Env {
        let pki = Pki::new(nodes);
        let data = tempfile::tempdir().expect("tempdir");
        let manager = Manager::start(&pki, free_port(), data.path());
        manager.register(&pki, CLUSTER, nodes);
        Env {
            pki,
            manager,
            _data: data,
        }
    }

    /// `127.0.0.1:<manager port>`.
    fn manager_addr(&self) -> String {
        format!("127.0.0.1:{}", self.manager.port)
    }

    /// A core node with HA on, its store at `etcd_hosts` (space-separated), DEBUG logs.
    fn node(&self, name: &str, etcd_hosts: &str) -> (Autogate, u16) {
        ha_core_node(&self.pki, name, self.manager.port, etcd_hosts)
    }

    /// The manager's session history of the cluster, newest first.
    fn sessions(&self) -> Vec<Value> {
        self.manager.sessions(&self.pki, CLUSTER)
    }
}

fn role(port: u16) -> Option<String> {
    ha_status(port).and_then(|s| s["role"].as_str().map(str::to_owned))
}

fn candidate_ids(s: &Value) -> Vec<String> {
    s["candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Unix milliseconds of a manager timestamp (RFC 3339, ms precision).
fn unix_ms(v: &Value) -> i128 {
    let t = OffsetDateTime::parse(v.as_str().expect("timestamp"), &Rfc3339).expect("RFC 3339");
    t.unix_timestamp_nanos() / 1_000_000
}

fn now_unix_ms() -> i128 {
    i128::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit")
}

fn sessions_of<'a>(sessions: &'a [Value], node: &str) -> Vec<&'a Value> {
    sessions.iter().filter(|s| s["node_id"] == node).collect()
}

fn live(sessions: &[Value]) -> Vec<&Value> {
    sessions
        .iter()
        .filter(|s| s["disconnected_at"].is_null())
        .collect()
}

/// Sessions ordered by `connected_at`: each ends before (or exactly when) the next begins and
/// terms strictly increase. Returns the gaps in ms.
fn assert_history_is_sequential(sessions: &[Value]) -> Vec<i128> {
    let mut s: Vec<&Value> = sessions.iter().collect();
    s.sort_by_key(|x| unix_ms(&x["connected_at"]));
    let mut gaps = Vec::new();
    for w in s.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(
            !a["disconnected_at"].is_null(),
            "two live sessions at once: {a} and {b}"
        );
        let gap = unix_ms(&b["connected_at"]) - unix_ms(&a["disconnected_at"]);
        assert!(gap >= 0, "sessions overlap by {} ms: {a} / {b}", -gap);
        let (ta, tb) = (a["term"].as_u64(), b["term"].as_u64());
        assert!(
            tb > ta,
            "term did not increase from {a} to {b} (all: {sessions:?})"
        );
        gaps.push(gap);
    }
    gaps
}

/// The first line containing `needle` read after `after`.
fn line_after(p: &Process, needle: &str, after: Instant, deadline: Duration) -> LogLine {
    let end = Instant::now() + deadline;
    loop {
        if let Some(l) = p
            .lines()
            .into_iter()
            .find(|l| l.at > after && l.text.contains(needle))
        {
            return l;
        }
        if Instant::now() >= end {
            panic!(
                "no line containing {needle:?} after the fault within {deadline:?}:\n{}",
                p.dump()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_after(p: &Process, needle: &str, after: Instant) -> usize {
    p.lines()
        .iter()
        .filter(|l| l.at > after && l.text.contains(needle))
        .count()
}

/// The earliest the node's lease can expire at etcd, from the moment its status was asked for:
/// `lease_ttl_remaining_ms` counts from the send time of its last acknowledged keep-alive, and
/// etcd starts the TTL only when it processes that keep-alive.
fn lease_floor(s: &Value) -> Duration {
    Duration::from_millis(
        s["lease_ttl_remaining_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no lease in {s}")),
    )
}

const ELECTED: &str = "is elected as the leader";
const STOPS: &str = "stops acting as the active node";

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Standby `port` sees `id` as the active node and has armed crash probing against it.
fn wait_probe_verified(port: u16, id: &str) {
    poll_until("the standby to verify the active's address", START, || {
        let s = ha_status(port)?;
        (s["crash_probe"]["verified"] == true && s["crash_probe"]["node_id"] == id).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------

/// SIGSTOP of the active node for longer than its lease TTL: a frozen process is not proven
/// dead by probing (its port still accepts), so the standby takes over when the lease expires;
/// after SIGCONT the old node stops leader work at once, never shows up live again at the
/// manager under its old term, and queues again as a standby.
#[test]
fn sigstop_of_the_active_beyond_the_ttl_then_sigcont() {
    let etcd = EtcdServer::start();
    let env = Env::start(&["core-1", "core-2"]);
    let ttl = Duration::from_secs(2);
    let (cmd, p1) = env.node("core-1", &etcd.endpoint());
    let old = cmd
        .name("old-active")
        .env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "2s")
        .spawn();
    wait_connected(&old);
    let id1 = node_id(p1);
    let (cmd, p2) = env.node("core-2", &etcd.endpoint());
    let standby = cmd
        .name("standby")
        .env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "2s")
        .spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    wait_probe_verified(p2, &id1);
    let asked = Instant::now();
    let s1 = ha_status(p1).expect("status");
    let old_term = s1["term"].as_u64().expect("active has a term");
    let floor = asked + lease_floor(&s1);

    let stopped = Instant::now();
    old.signal("STOP");
    let took_over = wait_connected(&standby);
    let takeover = took_over.at.saturating_duration_since(stopped);
    eprintln!(
        "SIGSTOP (TTL {ttl:?}, probing on) → standby connected after {} ms",
        ms(takeover)
    );
    // The frozen node's lease cannot have expired before `floor`: an earlier take-over would
    // mean it was "proven" dead by probes that merely timed out.
    eprintln!(
        "  frozen node's lease could expire {} ms after SIGSTOP at the earliest",
        ms(floor.saturating_duration_since(stopped))
    );
    assert!(
        took_over.at >= floor,
        "standby took over after {takeover:?}, before the frozen node's lease could expire ({:?})\n{}",
        floor.saturating_duration_since(stopped),
        standby.dump()
    );
    assert!(
        takeover <= ttl + Duration::from_secs(3),
        "take-over took {takeover:?}"
    );
    let cont = Instant::now();
    old.signal("CONT");
    let stop_line = line_after(&old, STOPS, cont, Duration::from_secs(5));
    eprintln!(
        "SIGCONT → old node logs it stopped leader work after {} ms: {}",
        ms(stop_line.at.saturating_duration_since(cont)),
        stop_line.text
    );
    assert!(
        stop_line.text.contains(&format!("(term {old_term})")),
        "{}",
        stop_line.text
    );

    // The old node rejoins as a standby behind the new active node.
    let s1 = poll_until("the old node to rejoin as a standby", START, || {
        let s = ha_status(p1)?;
        (s["role"] == "standby"
            && s["active_node_id"] == id2.as_str()
            && candidate_ids(&s).contains(&id1))
        .then_some(s)
    });
    assert_eq!(candidate_ids(&s1), vec![id2.clone(), id1.clone()], "{s1}");
    let rejoined = cont.elapsed();
    eprintln!(
        "SIGCONT → old node back in the candidates: {} ms",
        ms(rejoined)
    );

    // For a while after SIGCONT, the manager never sees the old node live again, and the history
    // has exactly one session of it (its old term), closed before the new one began.
    let watch_until = cont + Duration::from_secs(3);
    let mut polls = 0;
    loop {
        let sessions = env.sessions();
        polls += 1;
        let mine = sessions_of(&sessions, &id1);
        assert_eq!(mine.len(), 1, "old node connected again: {sessions:?}");
        assert_eq!(mine[0]["term"].as_u64(), Some(old_term), "{sessions:?}");
        assert!(!mine[0]["disconnected_at"].is_null(), "{sessions:?}");
        let l = live(&sessions);
        assert_eq!(l.len(), 1, "{sessions:?}");
        assert_eq!(l[0]["node_id"], id2.as_str(), "{sessions:?}");
        assert!(l[0]["term"].as_u64() > Some(old_term), "{sessions:?}");
        assert_history_is_sequential(&sessions);
        if Instant::now() >= watch_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        count_after(&old, "INF connected to commander at", cont) == 0,
        "old node connected to the manager after SIGCONT:\n{}",
        old.dump()
    );
    let s2 = ha_status(p2).expect("status");
    assert_eq!(s2["role"], "active", "{s2}");
    eprintln!(
        "manager history checked {polls} times over 3 s after SIGCONT: old node never live again; \
         old node's link attempts after SIGCONT: {}",
        count_after(&old, "attempting to connect", cont)
    );
}

/// The active node loses etcd (a blackhole between it and etcd; the standby reaches etcd
/// directly): it drops its manager session before its lease can have expired, the standby takes
/// over once the lease expires, and after the network heals the old node queues again.
#[test]
fn active_cut_from_etcd_steps_down_before_its_lease_expires() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(&etcd.endpoint());
    let env = Env::start(&["core-1", "core-2"]);
    let ttl = Duration::from_secs(4);
    let with_timing = |cmd: Autogate| {
        cmd.env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "4s")
            .env("GATEWAY_STORE_ETCD_REQUEST_TIMEOUT", "1s")
            .env("GATEWAY_STORE_ETCD_DIAL_TIMEOUT", "1s")
    };
    let (cmd, p1) = env.node("core-1", &proxy.endpoint());
    let old = with_timing(cmd).name("cut-active").spawn();
    wait_connected(&old);
    let id1 = node_id(p1);
    let (cmd, p2) = env.node("core-2", &etcd.endpoint());
    let standby = with_timing(cmd).name("standby").spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    assert!(proxy.accepted() > 0, "core-1 does not use the proxy");
    // A few keep-alives through the proxy.
    poll_until("the standby to list both candidates", START, || {
        (candidate_ids(&ha_status(p2)?).len() == 2).then_some(())
    });

    let asked_wall = now_unix_ms();
    let floor = lease_floor(&ha_status(p1).expect("status"));
    let cut_wall = now_unix_ms();
    let cut = Instant::now();
    proxy.cut_blackhole();

    let stop_line = line_after(&old, STOPS, cut, Duration::from_secs(10));
    let stepped = stop_line.at.saturating_duration_since(cut);
    let sessions = poll_until("the manager to record the session's end", START, || {
        let s = env.sessions();
        sessions_of(&s, &id1)
            .first()
            .is_some_and(|x| !x["disconnected_at"].is_null())
            .then_some(s)
    });
    let old_session = sessions_of(&sessions, &id1)[0].clone();
    let dropped_after = unix_ms(&old_session["disconnected_at"]) - cut_wall;
    eprintln!(
        "etcd cut (TTL {ttl:?}) → old active logs step-down after {} ms ({}); manager session closed {dropped_after} ms after the cut",
        ms(stepped),
        stop_line.text
    );
    assert!(
        stop_line.text.contains("lease not renewed in time"),
        "{}",
        stop_line.text
    );
    // The lease could not expire at etcd before `asked + floor` (renewals after the status
    // read only push that later).
    let earliest_expiry_ms =
        asked_wall + i128::try_from(floor.as_millis()).expect("small") - cut_wall;
    eprintln!("  its lease could expire {earliest_expiry_ms} ms after the cut at the earliest");
    assert!(
        dropped_after < earliest_expiry_ms,
        "manager session closed {dropped_after} ms after the cut, not before the lease could expire ({earliest_expiry_ms} ms): {old_session}"
    );

    let took_over = wait_connected(&standby);
    let takeover = took_over.at.saturating_duration_since(cut);
    eprintln!("etcd cut → standby connected after {} ms", ms(takeover));
    assert!(
        takeover <= ttl + Duration::from_secs(3),
        "take-over took {takeover:?}"
    );
    let sessions = poll_until("the new session", START, || {
        let s = env.sessions();
        sessions_of(&s, &id2).first().map(|_| s.clone())
    });
    let gaps = assert_history_is_sequential(&sessions);
    eprintln!("manager: gap between the sessions {gaps:?} ms");

    let restored = Instant::now();
    proxy.restore();
    poll_until("the old node to rejoin as a standby", START, || {
        let s = ha_status(p1)?;
        (s["role"] == "standby"
            && s["active_node_id"] == id2.as_str()
            && candidate_ids(&s) == vec![id2.clone(), id1.clone()])
        .then_some(())
    });
    eprintln!(
        "restore → old node queued again as standby after {} ms",
        ms(restored.elapsed())
    );
    let hold = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold {
        let roles = (role(p1), role(p2));
        assert_eq!(
            roles,
            (Some("standby".to_owned()), Some("active".to_owned())),
            "exactly one active (core-2) expected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sessions = env.sessions();
    let l = live(&sessions);
    assert_eq!(l.len(), 1, "{sessions:?}");
    assert_eq!(l[0]["node_id"], id2.as_str(), "{sessions:?}");
    assert_eq!(sessions_of(&sessions, &id1).len(), 1, "{sessions:?}");
    assert_history_is_sequential(&sessions);
}

/// A primary node comes online while a secondary is active: after being healthy for the
/// preemption delay it gets the active role in a graceful hand-over — no overlap, a gap well
/// under a second at the manager, a higher term.
#[test]
fn primary_returns_and_takes_over_gracefully_after_the_preempt_delay() {
    let etcd = EtcdServer::start();
    let env = Env::start(&["core-1", "core-2"]);
    let delay = Duration::from_secs(1);
    // The preemption delay is applied by the active node: the cluster shares one setting.
    let (cmd, pb) = env.node("core-2", &etcd.endpoint());
    let b = cmd
        .name("secondary")
        .env("GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY", "1s")
        .spawn();
    wait_connected(&b);
    let id_b = node_id(pb);
    let (cmd, pa) = env.node("core-1", &etcd.endpoint());
    let spawned = Instant::now();
    let a = cmd
        .name("primary")
        .env("GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY", "true")
        .env("GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY", "1s")
        .spawn();
    let standby_line = a.wait_for_line("is not the active node", START);
    let id_a = node_id(pa);
    let active_line = wait_connected(&a);
    let after_spawn = active_line.at.saturating_duration_since(spawned);
    let after_standby = active_line.at.saturating_duration_since(standby_line.at);
    eprintln!(
        "primary: connected {} ms after its start, {} ms after it queued as standby (preempt delay {delay:?})",
        ms(after_spawn),
        ms(after_standby)
    );
    assert!(
        after_spawn >= delay,
        "primary took over {after_spawn:?} after its start: before the preemption delay"
    );
    assert!(
        after_standby <= delay + Duration::from_secs(6),
        "hand-over took {after_standby:?}"
    );
    let line = b.wait_for_line(STOPS, START);
    assert!(
        line.text.contains("handed over to the primary node"),
        "{}",
        line.text
    );
    b.wait_for_line(
        &format!("primary core node '{id_a}' is healthy: handing the active role over to it"),
        START,
    );

    let sessions = poll_until("the primary's session", START, || {
        let s = env.sessions();
        sessions_of(&s, &id_a).first().map(|_| s.clone())
    });
    let gaps = assert_history_is_sequential(&sessions);
    assert_eq!(gaps.len(), 1, "{sessions:?}");
    eprintln!(
        "manager: gap between secondary and primary sessions {} ms",
        gaps[0]
    );
    assert!(gaps[0] < 1000, "gap {} ms: {sessions:?}", gaps[0]);
    let l = live(&sessions);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["node_id"], id_a.as_str());
    let sb = poll_until("the secondary to be standby", START, || {
        let s = ha_status(pb)?;
        (s["role"] == "standby" && s["active_node_id"] == id_a.as_str()).then_some(s)
    });
    assert_eq!(candidate_ids(&sb), vec![id_a.clone(), id_b.clone()], "{sb}");
    // No ping-pong: the secondary stays standby.
    let hold = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold {
        assert_eq!(role(pa).as_deref(), Some("active"));
        assert_eq!(role(pb).as_deref(), Some("standby"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count_after(&b, ELECTED, active_line.at), 0, "{}", b.dump());
}

/// The active node cannot reach the manager any more (its connection goes through a proxy that
/// starts refusing) while the standby can: leadership moves after the connect grace.
#[test]
fn active_that_cannot_reach_the_manager_hands_over_to_a_standby_that_can() {
    let etcd = EtcdServer::start();
    let env = Env::start(&["core-1", "core-2"]);
    let to_manager = TcpProxy::start(&env.manager_addr());
    let grace = Duration::from_secs(2);
    let (cmd, p1) = env.node("core-1", &etcd.endpoint());
    let old = cmd
        .name("cut-active")
        .env("GATEWAY_CONNECT_HOSTS", to_manager.endpoint())
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    wait_connected(&old);
    let id1 = node_id(p1);
    let (cmd, p2) = env.node("core-2", &etcd.endpoint());
    let standby = cmd
        .name("standby")
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    // The standby has told the cluster it can reach the manager.
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

    let cut = Instant::now();
    to_manager.cut_refuse();
    let took_over = wait_connected(&standby);
    let moved = took_over.at.saturating_duration_since(cut);
    let resign = old.wait_for_line("cannot reach the manager for", START);
    eprintln!(
        "manager unreachable from the active (connect grace {grace:?}) → standby connected after {} ms; {}",
        ms(moved),
        resign.text
    );
    assert!(
        resign
            .text
            .contains(&format!("while core node '{id2}' can")),
        "{}",
        resign.text
    );
    assert!(
        moved >= grace - Duration::from_millis(100),
        "leadership moved after {moved:?}, before the connect grace"
    );
    assert!(
        moved <= grace + Duration::from_secs(2) + Duration::from_secs(2),
        "leadership moved only after {moved:?}"
    );
    let sessions = poll_until("the standby's session", START, || {
        let s = env.sessions();
        sessions_of(&s, &id2).first().map(|_| s.clone())
    });
    let gaps = assert_history_is_sequential(&sessions);
    eprintln!("manager: gap between the sessions {gaps:?} ms (the first ended with the cut)");
    assert_eq!(sessions_of(&sessions, &id1).len(), 1, "{sessions:?}");
    let l = live(&sessions);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["node_id"], id2.as_str());
    poll_until("the old node to be standby", START, || {
        (role(p1)? == "standby").then_some(())
    });
}

/// Nobody can reach the manager (both nodes' connections go through proxies, both cut): the
/// active role may move once (while a standby's last check still said "reachable"), then stays
/// put — no thrashing between nodes that cannot reach the manager either.
#[test]
fn no_thrashing_when_no_node_can_reach_the_manager() {
    let etcd = EtcdServer::start();
    let env = Env::start(&["core-1", "core-2"]);
    let via1 = TcpProxy::start(&env.manager_addr());
    let via2 = TcpProxy::start(&env.manager_addr());
    let (cmd, p1) = env.node("core-1", &etcd.endpoint());
    let n1 = cmd
        .name("core-1")
        .env("GATEWAY_CONNECT_HOSTS", via1.endpoint())
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    wait_connected(&n1);
    let (cmd, p2) = env.node("core-2", &etcd.endpoint());
    let n2 = cmd
        .name("core-2")
        .env("GATEWAY_CONNECT_HOSTS", via2.endpoint())
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    let id2 = node_id(p2);
    n2.wait_for_line("is not the active node", START);
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
    let sessions_before = env.sessions().len();

    let cut = Instant::now();
    via1.cut_refuse();
    via2.cut_refuse();
    // Connect grace + one standby reachability period (5 s) + margin: every node has found out.
    let window = Duration::from_secs(9);
    let mut samples = Vec::new();
    while cut.elapsed() < window {
        samples.push((role(p1), role(p2)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let elected = count_after(&n1, ELECTED, cut) + count_after(&n2, ELECTED, cut);
    let stopped = count_after(&n1, STOPS, cut) + count_after(&n2, STOPS, cut);
    let mut changes = 0;
    for w in samples.windows(2) {
        if w[0] != w[1] {
            changes += 1;
        }
    }
    let both_active = samples
        .iter()
        .filter(|(a, b)| a.as_deref() == Some("active") && b.as_deref() == Some("active"))
        .count();
    eprintln!(
        "nobody reaches the manager, {window:?} observed: {elected} election(s), {stopped} step-down(s), {changes} role change(s) in {} samples",
        samples.len()
    );
    assert!(
        elected <= 1 && stopped <= 1,
        "leadership thrashed: {elected} elections, {stopped} step-downs\n{}\n{}",
        n1.dump(),
        n2.dump()
    );
    assert_eq!(both_active, 0, "two nodes active at once: {samples:?}");
    let last = samples.last().expect("samples").clone();
    assert!(
        last.0.as_deref() == Some("active") || last.1.as_deref() == Some("active"),
        "somebody stays active (and keeps trying): {last:?}"
    );
    let sessions = env.sessions();
    assert_eq!(sessions.len(), sessions_before, "{sessions:?}");
    assert!(live(&sessions).is_empty(), "{sessions:?}");
}

/// A 3-member etcd: losing one member (the raft leader) is no reason to fail over; losing quorum
/// makes the active node step down (nobody acts without a store that can fence); quorum back,
/// exactly one node is active again.
#[test]
fn etcd_member_loss_quorum_loss_and_recovery() {
    let mut etcd = EtcdCluster::start(3);
    let hosts = etcd.endpoints().join(" ");
    let env = Env::start(&["core-1", "core-2"]);
    let ttl = Duration::from_secs(6);
    let with_timing = |cmd: Autogate| {
        cmd.env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "6s")
            .env("GATEWAY_STORE_ETCD_REQUEST_TIMEOUT", "1s")
            .env("GATEWAY_STORE_ETCD_DIAL_TIMEOUT", "1s")
    };
    let (cmd, p1) = env.node("core-1", &hosts);
    let n1 = with_timing(cmd).name("core-1").spawn();
    wait_connected(&n1);
    let id1 = node_id(p1);
    let (cmd, p2) = env.node("core-2", &hosts);
    let n2 = with_timing(cmd).name("core-2").spawn();
    n2.wait_for_line("is not the active node", START);
    let term = ha_status(p1).expect("status")["term"]
        .as_u64()
        .expect("term");
    // Both nodes check the test's API key once while etcd is whole: a node accepts a key it
    // checked recently while its store cannot answer, not one it never saw.
    poll_until("core-2 to answer", START, || ha_status(p2));

    // One member down — the raft leader, the harder case.
    let leader = raft_leader(&etcd);
    let killed_one = Instant::now();
    etcd.kill(leader);
    let hold = Instant::now() + Duration::from_secs(8);
    let mut samples = 0;
    while Instant::now() < hold {
        let s1 = ha_status(p1).expect("core-1 answers");
        let s2 = ha_status(p2).expect("core-2 answers");
        assert_eq!(s1["role"], "active", "core-1 lost the active role: {s1}");
        assert_eq!(s1["term"].as_u64(), Some(term), "{s1}");
        assert_eq!(s2["role"], "standby", "{s2}");
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count_after(&n1, STOPS, killed_one), 0, "{}", n1.dump());
    let sessions = env.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0]["disconnected_at"].is_null(), "{sessions:?}");
    eprintln!(
        "etcd member m{leader} (raft leader) killed: core-1 stayed active under term {term} for 8 s ({samples} samples)"
    );

    // Quorum lost.
    let second = (0..3).find(|&i| i != leader).expect("another member");
    let killed_two = Instant::now();
    etcd.kill(second);
    let stop_line = line_after(&n1, STOPS, killed_two, ttl + Duration::from_secs(4));
    let stepped = stop_line.at.saturating_duration_since(killed_two);
    eprintln!(
        "quorum lost → active stepped down after {} ms: {}",
        ms(stepped),
        stop_line.text
    );
    assert!(stepped < ttl, "stepped down only after {stepped:?}");
    let none_active = poll_until("no node active", START, || {
        let roles = (role(p1)?, role(p2)?);
        (roles.0 != "active" && roles.1 != "active").then_some(Instant::now())
    });
    let sessions = poll_until("the manager to see the session end", START, || {
        let s = env.sessions();
        live(&s).is_empty().then_some(s)
    });
    eprintln!(
        "manager: session of core-1 closed at {} ({} sessions in history)",
        sessions[0]["disconnected_at"],
        sessions.len()
    );
    // While quorum is lost, nobody becomes active.
    while none_active.elapsed() < Duration::from_secs(2) {
        assert_ne!(role(p1).as_deref(), Some("active"));
        assert_ne!(role(p2).as_deref(), Some("active"));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Quorum back.
    let back = Instant::now();
    etcd.restart(second);
    let healthy = back.elapsed();
    let active = poll_until("a node to be active again", START, || {
        let r = (role(p1)?, role(p2)?);
        match (r.0.as_str(), r.1.as_str()) {
            ("active", "standby") => Some(p1),
            ("standby", "active") => Some(p2),
            _ => None,
        }
    });
    let active_id = node_id(active);
    let sessions = poll_until("a live session again", START, || {
        let s = env.sessions();
        (live(&s).len() == 1).then_some(s)
    });
    let (name, proc) = if active_id == id1 {
        ("core-1", &n1)
    } else {
        ("core-2", &n2)
    };
    let line = line_after(proc, "INF connected to commander at", back, START);
    let recovered = line.at.saturating_duration_since(back);
    eprintln!(
        "quorum back (member healthy after {} ms) → {name} active and connected {} ms after the restart began",
        ms(healthy),
        ms(recovered)
    );
    // The keys of the leases given up while quorum was lost are revoked once etcd answers again;
    // left alone, they would lead the queue for a whole TTL (etcd restarts every lease's TTL
    // when it regains a leader), with nobody active.
    assert!(
        recovered < ttl - Duration::from_millis(1500),
        "no active node for {recovered:?} after quorum came back (TTL {ttl:?})"
    );
    let l = live(&sessions);
    assert_eq!(l[0]["node_id"], active_id.as_str(), "{sessions:?}");
    assert_history_is_sequential(&sessions);
    let hold = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold {
        let r = (role(p1), role(p2));
        let actives = [&r.0, &r.1]
            .iter()
            .filter(|x| x.as_deref() == Some("active"))
            .count();
        assert_eq!(actives, 1, "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Index of the raft leader among the members, from `etcdctl endpoint status`.
fn raft_leader(etcd: &EtcdCluster) -> usize {
    poll_until("etcd to report its leader", START, || {
        let out = etcd
            .etcdctl()
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let entries = v.as_array()?;
        let leader = entries.first()?["Status"]["leader"].as_u64()?;
        entries
            .iter()
            .position(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader))
    })
}
