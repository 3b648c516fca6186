//! A crashed active core node that comes straight back, black box: real etcd, a real manager,
//! two real core nodes with the default lease TTL of 10 s, the active one killed with SIGKILL and
//! started again as a supervisor would — at once on the same port, on another port, 100 ms later,
//! or three times in two seconds. The standby must take over long before the TTL: the new
//! process revokes its predecessor's lease at start (the working directory's lock proves that
//! process gone), and the standby's probe takes a new node id answering at the old address as
//! proof too. Each test checks the manager's session history (no overlap, terms increasing) and
//! that the restarted node rejoins as a standby behind the new active node, and prints the
//! fail-over time (`--nocapture`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{node_id, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Autogate, LogLine, Process};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::{ha_core_node, ha_status, wait_connected};

const CLUSTER: &str = "cluster_1";
/// The default lease TTL: every take-over asserted here happens well before it.
const TTL: Duration = Duration::from_secs(10);
/// What "well before the TTL" means here (debug build, loaded CI machine).
const FAST: Duration = Duration::from_secs(2);
const ELECTED: &str = "is elected as the leader";
const REVOKED: &str = "revoked the lease of this node's previous process";
const NEW_IDENTITY: &str = "answers at";
const REFUSED: &str = "refuses connections at";

struct Env {
    etcd: EtcdServer,
    pki: Pki,
    manager: Manager,
    _data: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let etcd = EtcdServer::start();
        let pki = Pki::new(&["core-1", "core-2"]);
        let data = tempfile::tempdir().expect("tempdir");
        let manager = Manager::start(&pki, free_port(), data.path());
        manager.register(&pki, CLUSTER, &["core-1", "core-2"]);
        Env {
            etcd,
            pki,
            manager,
            _data: data,
        }
    }

    /// Core node `name` (its certificate) with HA on, API on `port`, working in `work`.
    fn node(&self, name: &str, port: u16, work: &Path) -> Autogate {
        let (cmd, _) = ha_core_node(&self.pki, name, self.manager.port, &self.etcd.endpoint());
        cmd.name(name)
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
    }

    fn sessions(&self) -> Vec<Value> {
        self.manager.sessions(&self.pki, CLUSTER)
    }
}

/// How the killed active node comes back.
#[derive(Clone, Copy, Debug)]
struct Restart {
    /// Between the kill and the new process's start.
    after: Duration,
    same_port: bool,
    /// The new process uses the killed one's working directory (else a fresh one: no state
    /// file, so only the standby's probe can prove the old process gone).
    same_workdir: bool,
    /// The take-over must happen within this (well under the 10 s TTL).
    within: Duration,
}

/// A running cluster: `active` (core-1) connected, `standby` (core-2) queued behind it with
/// its crash probe armed against it.
struct Pair {
    env: Env,
    active: Process,
    active_port: u16,
    active_id: String,
    work: tempfile::TempDir,
    standby: Process,
    standby_port: u16,
    standby_id: String,
}

fn pair(standby_settings: impl FnOnce(Autogate) -> Autogate, probing: bool) -> Pair {
    let env = Env::start();
    let work = tempfile::tempdir().expect("tempdir");
    let active_port = free_port();
    let active = env.node("core-1", active_port, work.path()).spawn();
    wait_connected(&active);
    let active_id = node_id(active_port);
    let standby_port = free_port();
    let standby_work = work.path().with_extension("standby");
    let standby = standby_settings(env.node("core-2", standby_port, &standby_work)).spawn();
    let standby_id = node_id(standby_port);
    poll_until("the standby to queue behind the active node", START, || {
        let s = ha_status(standby_port)?;
        let armed = !probing
            || (s["crash_probe"]["verified"] == true
                && s["crash_probe"]["node_id"] == active_id.as_str());
        (s["role"] == "standby" && candidates(&s).len() == 2 && armed).then_some(())
    });
    Pair {
        env,
        active,
        active_port,
        active_id,
        work,
        standby,
        standby_port,
        standby_id,
    }
}

fn candidates(s: &Value) -> Vec<String> {
    s["candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn unix_ms(v: &Value) -> i128 {
    let t = OffsetDateTime::parse(v.as_str().expect("timestamp"), &Rfc3339).expect("RFC 3339");
    t.unix_timestamp_nanos() / 1_000_000
}

/// Sessions ordered by `connected_at`: each ends no later than the next begins and terms
/// strictly increase; the newest is live. Returns the gaps in ms.
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
        assert!(
            b["term"].as_u64() > a["term"].as_u64(),
            "term did not increase from {a} to {b}"
        );
        gaps.push(gap);
    }
    gaps
}

/// The first line of `p` containing `needle` read after `after`, if any by now.
fn line_after(p: &Process, needle: &str, after: Instant) -> Option<LogLine> {
    p.lines()
        .into_iter()
        .find(|l| l.at > after && l.text.contains(needle))
}

/// The work dir of a restarted node that does not reuse the killed one's.
fn fresh_dir(base: &Path, n: usize) -> PathBuf {
    base.with_extension(format!("fresh{n}"))
}

/// What one crash and restart showed.
struct Outcome {
    /// kill → the standby's `connected to commander` line.
    takeover: Duration,
    /// The restarted process's id and API port.
    new_id: String,
    new_port: u16,
    /// Which proofs were logged: the restarted node's revocation, the standby's probe proof by
    /// the new identity, by refusals.
    revoked_at_start: bool,
    new_identity: bool,
    refusals: bool,
    restarted: Process,
}

/// Kills the active node, restarts it as told, and checks the take-over and the cluster after it.
fn crash_and_restart(p: &mut Pair, how: Restart) -> Outcome {
    let new_port = if how.same_port {
        p.active_port
    } else {
        free_port()
    };
    let work = if how.same_workdir {
        p.work.path().to_path_buf()
    } else {
        fresh_dir(p.work.path(), 1)
    };
    let cmd = p.env.node("core-1", new_port, &work).name("restarted");
    let killed = Instant::now();
    p.active.kill();
    if !how.after.is_zero() {
        std::thread::sleep(how.after);
    }
    let restarted = cmd.spawn();
    let line = wait_connected(&p.standby);
    let takeover = line.at.saturating_duration_since(killed);
    let new_id = node_id(new_port);
    assert_ne!(new_id, p.active_id);
    // The restarted node queues behind the new active node, and the killed one's key is gone.
    let expected = vec![p.standby_id.clone(), new_id.clone()];
    let s = poll_until("the restarted node to rejoin as a standby", START, || {
        let s = ha_status(new_port)?;
        (s["role"] == "standby"
            && s["active_node_id"] == p.standby_id.as_str()
            && candidates(&s) == expected)
            .then_some(s)
    });
    let rejoined = killed.elapsed();
    assert_eq!(ha_status(p.standby_port).expect("status")["role"], "active");
    let sessions = poll_until("the standby's session at the manager", START, || {
        let s = p.env.sessions();
        s.iter()
            .any(|x| x["node_id"] == p.standby_id.as_str() && x["disconnected_at"].is_null())
            .then_some(s)
    });
    let gaps = assert_history_is_sequential(&sessions);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let revoked_at_start = line_after(&restarted, REVOKED, killed).is_some();
    let new_identity = line_after(&p.standby, NEW_IDENTITY, killed).is_some();
    let refusals = line_after(&p.standby, REFUSED, killed).is_some();
    eprintln!(
        "{how:?}: kill → standby connected {} ms (TTL {} s), restarted node standby again after {} ms; manager gap {gaps:?} ms; proof: revoked at start {revoked_at_start}, new identity {new_identity}, refusals {refusals}; candidates {:?}",
        takeover.as_millis(),
        TTL.as_secs(),
        rejoined.as_millis(),
        candidates(&s)
    );
    assert!(
        takeover < how.within,
        "take-over after {takeover:?} (TTL {TTL:?})\n{}\n{}",
        p.standby.dump(),
        restarted.dump()
    );
    assert!(
        revoked_at_start || new_identity || refusals,
        "no proof logged\n{}\n{}",
        p.standby.dump(),
        restarted.dump()
    );
    // The manager closes the killed node's session as its connection drops; the standby's term
    // is the only live one and stays so.
    let hold = Instant::now() + Duration::from_secs(1);
    while Instant::now() < hold {
        assert_eq!(ha_status(new_port).expect("status")["role"], "standby");
        assert_eq!(ha_status(p.standby_port).expect("status")["role"], "active");
        std::thread::sleep(Duration::from_millis(100));
    }
    Outcome {
        takeover,
        new_id,
        new_port,
        revoked_at_start,
        new_identity,
        refusals,
        restarted,
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn kill_9_and_an_immediate_restart_on_the_same_port() {
    let mut p = pair(|c| c, true);
    let o = crash_and_restart(
        &mut p,
        Restart {
            after: Duration::ZERO,
            same_port: true,
            same_workdir: true,
            within: FAST,
        },
    );
    // The restarted node found its predecessor's key unless the standby's probe revoked it
    // first; either way one of the two proofs did it.
    assert!(o.revoked_at_start || o.new_identity || o.refusals);
    drop(o.restarted);
}

#[test]
fn kill_9_and_an_immediate_restart_on_another_port() {
    let mut p = pair(|c| c, true);
    let o = crash_and_restart(
        &mut p,
        Restart {
            after: Duration::ZERO,
            same_port: false,
            same_workdir: true,
            within: FAST,
        },
    );
    // Nothing answers at the old address any more: no new identity there.
    assert!(!o.new_identity);
    assert_ne!(o.new_port, p.active_port);
    drop(o.restarted);
}

#[test]
fn kill_9_and_a_restart_100_ms_later() {
    let mut p = pair(|c| c, true);
    let o = crash_and_restart(
        &mut p,
        Restart {
            after: Duration::from_millis(100),
            same_port: true,
            same_workdir: true,
            within: FAST,
        },
    );
    drop(o.restarted);
}

/// The standby's probe alone: the new process has a fresh working directory (no state file, so
/// it cannot know its predecessor) and the standby's refusal window is 5 s, so the only proof
/// before it is the new node id answering at the verified address.
#[test]
fn a_new_node_id_at_the_old_address_proves_the_active_dead() {
    let mut p = pair(
        |c| c.env("GATEWAY_CONNECT_SERVER_HA_PROBE_WINDOW", "5s"),
        true,
    );
    let o = crash_and_restart(
        &mut p,
        Restart {
            after: Duration::ZERO,
            same_port: true,
            same_workdir: false,
            // The standby probes a live active once a second with this window, and the proof
            // comes with the first probe after the new process answers.
            within: Duration::from_secs(3),
        },
    );
    assert!(!o.revoked_at_start && !o.refusals, "{}", p.standby.dump());
    assert!(o.new_identity, "{}", p.standby.dump());
    let line = line_after(&p.standby, NEW_IDENTITY, p.standby.spawned_at).expect("proof line");
    assert!(
        line.text.contains(&format!(
            "WRN core node '{}' answers at 127.0.0.1:{}, where active core node '{}' answered before: its process is gone; revoking its lease",
            o.new_id, p.active_port, p.active_id
        )),
        "{}",
        line.text
    );
    drop(o.restarted);
}

/// The restarted node alone: the standby does not probe at all, so without the new process
/// revoking its predecessor's lease the standby would wait for the TTL.
#[test]
fn a_restarted_node_clears_its_predecessor_without_any_probing() {
    let mut p = pair(
        |c| c.env("GATEWAY_CONNECT_SERVER_HA_PROBE_WINDOW", "0"),
        false,
    );
    let o = crash_and_restart(
        &mut p,
        Restart {
            after: Duration::ZERO,
            same_port: true,
            same_workdir: true,
            within: FAST,
        },
    );
    assert!(!o.new_identity && !o.refusals);
    let line = line_after(&o.restarted, REVOKED, o.restarted.spawned_at)
        .unwrap_or_else(|| panic!("no revocation line\n{}", o.restarted.dump()));
    assert!(
        line.text.contains(&format!(
            "WRN revoked the lease of this node's previous process (node id {}, lease ",
            p.active_id
        )),
        "{}",
        line.text
    );
    eprintln!(
        "without probing: take-over {} ms, by {}",
        o.takeover.as_millis(),
        line.text
    );
}

/// A crash loop: the active node is killed and restarted at once three times within two
/// seconds. The standby takes over after the first crash and stays active through the others
/// (each later process is a standby when it dies); no two sessions overlap; the last process
/// ends up a standby behind it, with the keys of the dead processes gone.
#[test]
fn a_crash_loop_of_three_crashes_in_two_seconds() {
    let mut p = pair(|c| c, true);
    let work = p.work.path().to_path_buf();
    let port = p.active_port;
    let first = Instant::now();
    let mut crashes = vec![first];
    p.active.kill();
    let mut current = p.env.node("core-1", port, &work).name("loop-1").spawn();
    let line = wait_connected(&p.standby);
    let takeover = line.at.saturating_duration_since(first);
    let mut dead_ids = vec![p.active_id.clone()];
    for i in 2..=3 {
        // Each process is killed once its API answers (it got that far into its start-up),
        // keeping the three crashes within two seconds.
        let id = node_id(port);
        dead_ids.push(id);
        let at = first + Duration::from_millis(700 * (i - 1));
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        crashes.push(Instant::now());
        current.kill();
        current = p
            .env
            .node("core-1", port, &work)
            .name(&format!("loop-{i}"))
            .spawn();
    }
    let span = crashes[2].saturating_duration_since(crashes[0]);
    assert!(
        span < Duration::from_secs(2),
        "crashes spread over {span:?}"
    );
    let last_id = node_id(port);
    let expected = vec![p.standby_id.clone(), last_id.clone()];
    let settled = poll_until(
        "the last process to be a standby behind core-2",
        START,
        || {
            let s = ha_status(port)?;
            (s["role"] == "standby" && candidates(&s) == expected).then(Instant::now)
        },
    );
    let clean_after = settled.saturating_duration_since(crashes[2]);
    let sessions = p.env.sessions();
    let gaps = assert_history_is_sequential(&sessions);
    let live: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["disconnected_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{sessions:?}");
    assert_eq!(live[0]["node_id"], p.standby_id.as_str(), "{sessions:?}");
    // The standby was elected once, after the first crash, and never stopped.
    let elected = p
        .standby
        .lines()
        .iter()
        .filter(|l| l.text.contains(ELECTED))
        .count();
    assert_eq!(elected, 1, "{}", p.standby.dump());
    assert!(
        line_after(&p.standby, "stops acting as the active node", first).is_none(),
        "{}",
        p.standby.dump()
    );
    for dead in &dead_ids {
        assert!(!candidates(&ha_status(p.standby_port).expect("status")).contains(dead));
    }
    eprintln!(
        "crash loop: 3 crashes in {} ms; first crash → standby connected {} ms (TTL {} s); last crash → candidates clean ({expected:?}) after {} ms; sessions {}, gap {gaps:?} ms",
        span.as_millis(),
        takeover.as_millis(),
        TTL.as_secs(),
        clean_after.as_millis(),
        sessions.len()
    );
    assert!(takeover < FAST, "take-over after {takeover:?}");
    assert!(
        clean_after < FAST,
        "the dead processes' keys stayed {clean_after:?}"
    );
}

/// A second core node on a working directory in use stops at once with exit 69 (unavailable,
/// as for a taken port: the configuration may be fine, the directory is held by a live process)
/// and names the directory and the holder; the first one is untouched.
#[test]
fn a_second_core_node_on_the_same_working_directory_fails_fast() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("work");
    let port = free_port();
    let first = Autogate::new(["server"])
        .name("first")
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_APPLICATION_WORKING_DIR", dir.display().to_string())
        .spawn();
    first.wait_for_line("core node listening", START);
    let started = Instant::now();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", free_port().to_string())
        .env("GATEWAY_APPLICATION_WORKING_DIR", dir.display().to_string())
        .output(START);
    let took = started.elapsed();
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains(&dir.display().to_string())
            && out.stderr.contains(&format!("(pid {}, lock ", first.pid()))
            && out.stderr.contains("server.lock"),
        "{}",
        out.stderr
    );
    eprintln!(
        "second core node on the same working dir: exit 69 after {took:?}: {}",
        out.stderr.trim()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The first one still answers, and the state file is private.
    let (status, _) =
        autogate_testkit::http_get(&format!("127.0.0.1:{port}"), "/api/v1/health").expect("health");
    assert_eq!(status, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("server.state"))
        .expect("state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
