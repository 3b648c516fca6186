//! What a newcomer runs into with an HA pair and a manager, black box: real etcd, a real
//! manager, real core nodes. One line per failed manager attempt; the silent waits (a returning
//! primary's countdown, the stop of a core node) are said; a switchover on the primary holds; a
//! manager restart moves no role and is labelled as such.

use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{core_node, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until};

use std::path::Path;

use autogate_testkit::{Autogate, Output, Process};

use crate::support::{ha_core_node, ha_status, wait_connected, with_stdin};

/// A manager with `cluster_1` registered for both core nodes, and etcd.
struct Pair {
    etcd: EtcdServer,
    pki: Pki,
    manager: Manager,
    _data: tempfile::TempDir,
}

impl Pair {
    fn start() -> Pair {
        let etcd = EtcdServer::start();
        let pki = Pki::new(&["core-1", "core-2"]);
        let data = tempfile::tempdir().expect("tempdir");
        let manager = Manager::start(&pki, free_port(), data.path());
        manager.register(&pki, "cluster_1", &["core-1", "core-2"]);
        Pair {
            etcd,
            pki,
            manager,
            _data: data,
        }
    }

    /// Core node `name` (HA, DEBUG logs), primary or not, with a preemption delay of `delay`
    /// (the active node applies it: both nodes share it).
    fn node(&self, name: &str, primary: bool, delay: &str) -> (Process, u16) {
        let (cmd, port) = ha_core_node(&self.pki, name, self.manager.port, &self.etcd.endpoint());
        let p = cmd
            .name(name)
            .env("GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY", primary.to_string())
            .env("GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY", delay)
            .spawn();
        (p, port)
    }
}

/// The operator CLI in client mode against the node on `port`, logged in as admin (its key
/// kept in `work`).
fn cli(port: u16, work: &Path, args: &[&str]) -> Output {
    let mut cmd = Autogate::new(args.iter().map(|s| s.to_string()))
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", port.to_string())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        );
    if !work.join("api-keys").exists() {
        let p = port.to_string();
        let out = with_stdin(
            &["login", "admin", "--password-stdin"],
            &[
                ("HOME", work.as_os_str()),
                ("GATEWAY_APPLICATION_MODE", "client".as_ref()),
                ("GATEWAY_CLIENT_PORT", p.as_ref()),
                ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
            ],
            &format!("{}\n", autogate_testkit::auth::ADMIN_PASSWORD),
        );
        assert!(out.status.success(), "login: {out:?}");
        cmd = cmd.env("HOME", work.display().to_string());
    }
    cmd.output(START)
}

fn role(port: u16) -> Option<String> {
    ha_status(port).and_then(|s| s["role"].as_str().map(str::to_owned))
}

/// Waits until the node on `port` sees `other` as a healthy candidate.
fn wait_healthy_candidate(port: u16, other: &str) {
    poll_until("the other node as a healthy candidate", START, || {
        let s = ha_status(port)?;
        s["candidates"]
            .as_array()?
            .iter()
            .any(|c| c["node_id"] == other && c["healthy"] == true)
            .then_some(())
    });
}

/// While the manager is down, each attempt is one line that names the next attempt and its
/// delay — not an "attempting" line and a "failed" line per attempt.
#[test]
fn ha_friction_one_line_per_failed_manager_attempt() {
    let pki = Pki::new(&["core-1"]);
    // Nobody listens on this port: every attempt is refused at once.
    let (cmd, _port) = core_node(&pki, "core-1", free_port());
    let core = cmd.name("core-1").spawn();
    let failed = |logs: &str| logs.lines().filter(|l| l.contains(" failed: ")).count();
    let logs = poll_until("four failed attempts", START, || {
        let logs = core.logs();
        (failed(&logs) >= 4).then_some(logs)
    });
    let link: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("commander at") || l.contains("attempting to connect"))
        .collect();
    // `creating`, the family's `attempting` once, then one line per failed attempt.
    assert!(
        link[0].contains(" INF creating connection to commander at "),
        "{logs}"
    );
    assert!(
        link[1].contains(" INF attempting to connect to wss://"),
        "{logs}"
    );
    let retries = &link[2..];
    assert!(retries.len() >= 4, "{logs}");
    for line in retries {
        assert!(line.contains(" WRN connection to commander at "), "{line}");
        assert!(line.contains(" failed: "), "{line}");
        let delay = line
            .split("/ws in ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse::<u64>().ok());
        assert!(
            delay.is_some_and(|d| d <= 1000),
            "no next delay (cap 1 s): {line}"
        );
    }
}

/// `ha switchover` asked of the primary: the standby takes over and keeps the role past the
/// preemption delay, and the command's answer says for how long the primary stays away.
#[test]
fn ha_friction_switchover_on_the_primary_is_not_undone_by_preemption() {
    let pair = Pair::start();
    let (p, pp) = pair.node("core-1", true, "1s");
    wait_connected(&p);
    let (s, ps) = pair.node("core-2", false, "1s");
    s.wait_for_line("is not the active node", START);
    let id_p = autogate_testkit::scenario::node_id(pp);
    let id_s = autogate_testkit::scenario::node_id(ps);
    wait_healthy_candidate(pp, &id_s);

    let work = tempfile::tempdir().expect("tempdir");
    let out = cli(pp, work.path(), &["ha", "switchover"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains(
            "switchover accepted: this node is the primary and will not take the role back for 60 min (or until it restarts); use `autogate ha pause` to hold it away longer"
        ),
        "{}",
        out.stdout
    );
    p.wait_for_line(
        "primary: not taking the role back for 60 min after this switchover",
        START,
    );
    let took = wait_connected(&s);
    let term = poll_until("the standby active", START, || {
        let st = ha_status(ps)?;
        (st["role"] == "active").then(|| st["term"].as_u64())?
    });
    // Past the preemption delay (1 s) and the primary's own health checks, nothing moves back.
    let hold_until = took.at + Duration::from_secs(6);
    while Instant::now() < hold_until {
        let st = ha_status(ps).expect("status");
        assert_eq!(st["role"], "active", "{st}");
        assert_eq!(st["term"].as_u64(), Some(term), "{st}");
        assert_eq!(role(pp).as_deref(), Some("standby"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !s.logs()
            .contains("has been healthy for 1 s: handing the active role over to it"),
        "{}",
        s.dump()
    );
    let status = cli(pp, work.path(), &["ha", "status"]);
    assert!(
        status
            .stdout
            .contains("Preemption:  held after a switchover, 60 min left"),
        "{}",
        status.stdout
    );
    eprintln!("switchover from the primary {id_p} to {id_s}: held for 6 s past the hand-over");
}

/// A restarted primary says when it will take the role back (log and `ha status`), and says so
/// when it did.
#[test]
fn ha_friction_returning_primary_counts_down_out_loud() {
    let pair = Pair::start();
    let (s, ps) = pair.node("core-2", false, "3s");
    wait_connected(&s);
    let id_s = autogate_testkit::scenario::node_id(ps);
    let (p, pp) = pair.node("core-1", true, "3s");
    let countdown = p.wait_for_line(
        &format!("INF primary: taking the role back from core node '{id_s}' in 3 s (server_ha_preempt_delay)"),
        START,
    );
    // `ha status` on the primary shows the time left while it counts down.
    let left = poll_until("the countdown in the primary's status", START, || {
        ha_status(pp)?["preempt_in_ms"].as_u64()
    });
    assert!(left <= 3_000, "{left}");
    let work = tempfile::tempdir().expect("tempdir");
    let status = cli(pp, work.path(), &["ha", "status"]);
    let took = p.wait_for_line("INF primary: took the role back, ", START);
    assert!(
        status
            .stdout
            .contains("Preemption:  this node takes the role back in ")
            || status.stdout.contains("Role:        active"),
        "{}",
        status.stdout
    );
    let waited = took.at.saturating_duration_since(countdown.at);
    eprintln!(
        "countdown → took the role back: {waited:?}; {}\n{}",
        took.text, status.stdout
    );
    assert!(waited >= Duration::from_millis(2_900), "{}", p.dump());
    wait_connected(&p);
    s.wait_for_line(
        "is healthy: handing the active role over to it in 3 s",
        START,
    );
    assert_eq!(role(pp).as_deref(), Some("active"));
}

/// The manager is down for longer than the connect grace, for every node alike, then comes
/// back while the active node sleeps out a long back-off and the standby's check reaches it
/// first: the active node dials at once instead of resigning, and no role changes.
#[test]
fn ha_friction_manager_restart_moves_no_role() {
    let mut pair = Pair::start();
    // A long back-off cap on the active node: when the manager returns it is most likely
    // asleep, and the standby (checking every 5 s) reaches the manager first.
    let (cmd, pa) = ha_core_node(
        &pair.pki,
        "core-1",
        pair.manager.port,
        &pair.etcd.endpoint(),
    );
    let a = cmd
        .name("core-1")
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .env("GATEWAY_CONNECT_RECONNECT_MAX_BACKOFF", "30s")
        .spawn();
    wait_connected(&a);
    let (cmd, pb) = ha_core_node(
        &pair.pki,
        "core-2",
        pair.manager.port,
        &pair.etcd.endpoint(),
    );
    let b = cmd
        .name("core-2")
        .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
        .spawn();
    b.wait_for_line("is not the active node", START);
    let id_a = autogate_testkit::scenario::node_id(pa);
    let id_b = autogate_testkit::scenario::node_id(pb);
    wait_healthy_candidate(pa, &id_b);
    let term = ha_status(pa).expect("status")["term"]
        .as_u64()
        .expect("term");

    pair.manager.proc.kill();
    let down = Instant::now();
    // Longer than the grace, and long enough for the active node's back-off to grow.
    poll_until("the standby to see the manager gone", START, || {
        let s = ha_status(pa)?;
        s["candidates"]
            .as_array()?
            .iter()
            .any(|c| c["node_id"] == id_b.as_str() && c["manager_reachable"] == false)
            .then_some(())
    });
    while down.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let connected_before = a.logs().matches("INF connected to commander at").count();
    let port = pair.manager.port;
    let data = pair.manager.data.clone();
    pair.manager = Manager::start(&pair.pki, port, &data);
    let back = Instant::now();
    poll_until(
        "the active node connected again",
        Duration::from_secs(60),
        || {
            (a.logs().matches("INF connected to commander at").count() > connected_before)
                .then_some(())
        },
    );
    eprintln!(
        "manager down {:?}; active node connected again {:?} after the restart",
        back.duration_since(down),
        back.elapsed()
    );
    // Watch a while longer: nothing moves.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let s = ha_status(pa).expect("status");
        assert_eq!(s["role"], "active", "{s}\n{}\n{}", a.dump(), b.dump());
        assert_eq!(s["term"].as_u64(), Some(term), "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for line in a
        .logs()
        .lines()
        .filter(|l| l.contains("cannot reach") || l.contains("at once"))
    {
        eprintln!("active: {line}");
    }
    assert!(!a.logs().contains(": resigning"), "{}", a.dump());
    assert!(
        !b.logs().contains("is elected as the leader"),
        "{}",
        b.dump()
    );
    let sessions = pair.manager.sessions(&pair.pki, "cluster_1");
    assert!(
        sessions.iter().all(|s| s["node_id"] == id_a.as_str()),
        "{sessions:?}"
    );
}
