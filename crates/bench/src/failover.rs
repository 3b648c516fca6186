//! Fail-over figures: how long a cluster of core nodes is without its manager session when the
//! active node stops (SIGTERM: it resigns first) or dies (kill -9: the standby proves it dead by
//! probing its API port, else waits for the lease), or dies and is restarted at once by its
//! supervisor (kill -9 + immediate restart: the new process revokes its predecessor's lease at
//! start, and the standby takes a new node id at the old address as proof too), against the
//! floor of the same hand-over done by `etcdctl elect` on the same etcd.
//!
//! Everything is real: one etcd member, `autogate manager` with minted certificates, two
//! `autogate server` core nodes with HA on (release binary, default lease TTL of 10 s and probe
//! window of 300 ms). After each hand-over the stopped node is started again (new process, new
//! node id, same certificate) and the next cycle waits until it is a healthy standby; for the
//! restart row the new process is started right after the kill, on the same port and working
//! directory, as `Restart=always` with `RestartSec=0` would.
//!
//! Two clocks are used and never mixed within one figure except where stated:
//! * the manager's session history (`connected_at` / `disconnected_at`, millisecond timestamps
//!   taken by the manager);
//! * `Instant`s of the bench: when it sent the signal, and when each node's log line was read
//!   from its pipe.
//!
//! "Signal → new session at the manager" compares the bench's wall clock at the signal with the
//! manager's timestamp (same machine, same clock; the manager truncates to the millisecond).
//!
//! The floor is `etcdctl elect` on the same etcd: etcdctl 3.4 resigns on SIGINT/SIGTERM, so a
//! queued campaigner is elected as soon as the leader's key is deleted — the election alone,
//! without a manager connection. A kill -9 of an etcdctl leader is measured once: the next
//! campaigner waits for etcdctl's 60 s session lease, which `elect` cannot shorten.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{core_node, node_id, Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Process};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{ms, table_header, Stats};

/// Hand-overs measured per kind.
const CYCLES: usize = 20;
const CLUSTER: &str = "cluster_1";
const CONNECTED: &str = "INF connected to commander at";
const ELECTED: &str = "is elected as the leader";
/// The restarted process's line when it cleared its predecessor's lease.
const REVOKED: &str = "revoked the lease of this node's previous process";
/// The standby's line when a new node id at the active node's address proved it dead.
const NEW_IDENTITY: &str = "answered before: its process is gone";
/// How long a freshly queued `etcdctl elect` campaigner is left to settle before the leader is
/// stopped. Signalled at once, the hand-over takes ~70–80 ms more on this kind of machine (the
/// new process is still setting up its wait); the core nodes' standby is long settled too.
const ETCDCTL_SETTLE: Duration = Duration::from_millis(250);
/// etcdctl's election session lease (`concurrency.NewSession` default; `elect` has no flag for
/// it in etcd 3.4).
const ETCDCTL_SESSION_TTL_S: u64 = 60;

pub fn run() -> String {
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, CLUSTER, &["core-1", "core-2"]);
    let dirs = tempfile::tempdir().expect("tempdir");
    let env = Env {
        etcd: &etcd,
        pki: &pki,
        manager: &manager,
        dirs: dirs.path(),
        spawned: Cell::new(0),
    };

    let (active, standby) = env.first_pair();
    let (graceful, active, standby) = env.graceful(active, standby);
    let (kill9, active, standby) = env.kill9(active, standby);
    let (restart, active, standby) = env.kill9_restart(active, standby);
    drop(active);
    drop(standby);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let floor = etcdctl_floor(&etcd, &rt);
    let floor_kill = etcdctl_kill9(&etcd, &rt);
    drop(manager);

    report(&graceful, &kill9, &restart, &floor, floor_kill)
}

struct Env<'a> {
    etcd: &'a EtcdServer,
    pki: &'a Pki,
    manager: &'a Manager,
    /// Where the nodes' working directories are made (kept for the whole run, so that a
    /// restarted process finds its predecessor's).
    dirs: &'a Path,
    spawned: Cell<usize>,
}

/// One running core node.
struct Node {
    proc: Process,
    port: u16,
    id: String,
    cert: &'static str,
    work: PathBuf,
}

#[derive(Default)]
struct Graceful {
    /// Old session `disconnected_at` → new session `connected_at` (manager's clock).
    gap: Vec<f64>,
    /// SIGTERM sent → standby's `is elected as the leader` line read.
    to_elected: Vec<f64>,
    /// SIGTERM sent → standby's `connected to commander` line read.
    to_line: Vec<f64>,
    /// SIGTERM sent (wall clock) → new session `connected_at` (manager's clock).
    to_session: Vec<f64>,
}

#[derive(Default)]
struct Kill9 {
    /// kill sent (wall clock) → new session `connected_at` (manager's clock).
    to_session: Vec<f64>,
    /// kill sent → standby's `is elected as the leader` line read.
    to_elected: Vec<f64>,
    /// kill sent → standby's `connected to commander` line read.
    to_line: Vec<f64>,
    /// kill sent (wall clock) → old session `disconnected_at` (manager's clock).
    old_closed: Vec<f64>,
}

#[derive(Default)]
struct Restarted {
    /// As for [`Kill9`], with the killed node restarted right after the kill.
    k: Kill9,
    /// Runs in which the restarted process revoked its predecessor's lease at start, and in
    /// which the standby proved it dead by the new node id at its address.
    revoked_at_start: usize,
    new_identity: usize,
}

impl Env<'_> {
    /// A new core node with `cert`, on a new port and in a new working directory.
    fn spawn(&self, cert: &'static str) -> Node {
        let n = self.spawned.get() + 1;
        self.spawned.set(n);
        let work = self.dirs.join(format!("{cert}-{n}"));
        self.spawn_at(cert, free_port(), work)
    }

    /// A core node with `cert` on `port`, working in `work`.
    fn spawn_at(&self, cert: &'static str, port: u16, work: PathBuf) -> Node {
        let (cmd, _) = core_node(self.pki, cert, self.manager.port);
        // Every node bootstraps the same admin password; `ha status` needs a key from it.
        let proc = autogate_testkit::auth::with_admin_password(cmd)
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", self.etcd.endpoint())
            .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
            .env("GATEWAY_LOG_LEVEL", "DEBUG")
            .spawn();
        let id = node_id(port);
        Node {
            proc,
            port,
            id,
            cert,
            work,
        }
    }

    fn first_pair(&self) -> (Node, Node) {
        let active = self.spawn("core-1");
        active.proc.wait_for_line(CONNECTED, START);
        let standby = self.spawn("core-2");
        wait_standby(&standby, &active, false);
        (active, standby)
    }

    fn sessions(&self) -> Vec<Value> {
        self.manager.sessions(self.pki, CLUSTER)
    }

    /// The sessions of `old` (ended) and `new` (live) once the manager has recorded both.
    fn handover(&self, old: &str, new: &str) -> (Value, Value) {
        poll_until("the manager to record the hand-over", START, || {
            let s = self.sessions();
            let o = s.iter().find(|x| x["node_id"] == old)?;
            let n = s.iter().find(|x| x["node_id"] == new)?;
            (!o["disconnected_at"].is_null()).then(|| (o.clone(), n.clone()))
        })
    }

    /// Start a node with the stopped one's certificate and wait until it is a ready standby.
    fn replace(&self, stopped: Node, active: &Node, probe: bool) -> Node {
        let cert = stopped.cert;
        drop(stopped);
        let node = self.spawn(cert);
        wait_standby(&node, active, probe);
        node
    }

    fn graceful(&self, mut active: Node, mut standby: Node) -> (Graceful, Node, Node) {
        let mut g = Graceful::default();
        for i in 0..CYCLES {
            let wall = SystemTime::now();
            let t0 = Instant::now();
            active.proc.signal("TERM");
            let line = standby.proc.wait_for_line(CONNECTED, START);
            let elected = standby.proc.wait_for_line(ELECTED, START);
            let status = active.proc.wait_exit(Duration::from_secs(10));
            assert!(status.success(), "graceful stop exited with {status:?}");
            let (old, new) = self.handover(&active.id, &standby.id);
            let gap = ms_between(&old["disconnected_at"], &new["connected_at"]);
            let to_line = ms(line.at.saturating_duration_since(t0));
            let to_elected = ms(elected.at.saturating_duration_since(t0));
            let to_session = ms_since_wall(wall, &new["connected_at"]);
            eprintln!(
                "graceful {:>2}/{CYCLES}: sessions gap {gap:>4.0} ms | SIGTERM → elected line {to_elected:>6.1} ms, connected line {to_line:>6.1} ms | SIGTERM → new session {to_session:>4.0} ms",
                i + 1
            );
            g.gap.push(gap);
            g.to_elected.push(to_elected);
            g.to_line.push(to_line);
            g.to_session.push(to_session);
            let stopped = active;
            active = standby;
            standby = self.replace(stopped, &active, false);
        }
        (g, active, standby)
    }

    fn kill9(&self, mut active: Node, mut standby: Node) -> (Kill9, Node, Node) {
        let mut k = Kill9::default();
        for i in 0..CYCLES {
            // Crash proof needs the active's address to have answered with its id first.
            wait_standby(&standby, &active, true);
            // The standby probes the active every 200 ms (2/3 of the 300 ms proof window) and
            // has just verified it: killing now would always land right after a probe answered
            // (the slowest phase). Kill at a random phase instead, as a crash would.
            std::thread::sleep(random_phase());
            let wall = SystemTime::now();
            let t0 = Instant::now();
            active.proc.kill();
            let line = standby.proc.wait_for_line(CONNECTED, START);
            let elected = standby.proc.wait_for_line(ELECTED, START);
            let (old, new) = self.handover(&active.id, &standby.id);
            let to_line = ms(line.at.saturating_duration_since(t0));
            let to_elected = ms(elected.at.saturating_duration_since(t0));
            let to_session = ms_since_wall(wall, &new["connected_at"]);
            let old_closed = ms_since_wall(wall, &old["disconnected_at"]);
            eprintln!(
                "kill -9  {:>2}/{CYCLES}: kill → elected line {to_elected:>6.1} ms, connected line {to_line:>6.1} ms | kill → new session {to_session:>4.0} ms | old session closed at {old_closed:.0} ms",
                i + 1
            );
            k.to_elected.push(to_elected);
            k.to_line.push(to_line);
            k.to_session.push(to_session);
            k.old_closed.push(old_closed);
            let stopped = active;
            active = standby;
            standby = self.replace(stopped, &active, true);
        }
        (k, active, standby)
    }

    /// kill -9 of the active node and, right after, the same node started again on its port and
    /// working directory (a supervisor restarting a crashed service at once).
    fn kill9_restart(&self, mut active: Node, mut standby: Node) -> (Restarted, Node, Node) {
        let mut r = Restarted::default();
        for i in 0..CYCLES {
            wait_standby(&standby, &active, true);
            std::thread::sleep(random_phase());
            let (cert, port, work) = (active.cert, active.port, active.work.clone());
            let wall = SystemTime::now();
            let t0 = Instant::now();
            active.proc.kill();
            let restarted = self.spawn_at(cert, port, work);
            let line = standby.proc.wait_for_line(CONNECTED, START);
            let elected = standby.proc.wait_for_line(ELECTED, START);
            let (old, new) = self.handover(&active.id, &standby.id);
            let to_line = ms(line.at.saturating_duration_since(t0));
            let to_elected = ms(elected.at.saturating_duration_since(t0));
            let to_session = ms_since_wall(wall, &new["connected_at"]);
            let old_closed = ms_since_wall(wall, &old["disconnected_at"]);
            let killed_id = active.id.clone();
            let proof = standby.proc.lines().iter().any(|l| {
                l.at >= t0 && l.text.contains(NEW_IDENTITY) && l.text.contains(&killed_id)
            });
            eprintln!(
                "restart  {:>2}/{CYCLES}: kill → elected line {to_elected:>6.1} ms, connected line {to_line:>6.1} ms | kill → new session {to_session:>4.0} ms | old session closed at {old_closed:.0} ms | new id at the address: {proof}",
                i + 1
            );
            r.k.to_elected.push(to_elected);
            r.k.to_line.push(to_line);
            r.k.to_session.push(to_session);
            r.k.old_closed.push(old_closed);
            drop(active);
            active = standby;
            standby = restarted;
            wait_standby(&standby, &active, false);
            // Counted once the restarted node is a standby: it has been through its start-up
            // check by then.
            r.revoked_at_start += usize::from(
                standby
                    .proc
                    .lines()
                    .iter()
                    .any(|l| l.text.contains(REVOKED)),
            );
            r.new_identity += usize::from(proof);
        }
        (r, active, standby)
    }
}

/// A pseudo-random delay in [0, 1 s): five probe periods, so the kill's phase is uniform.
fn random_phase() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Microsecond digits of the clock, scrambled a little (multiplicative hash).
    let x = (nanos / 1_000).wrapping_mul(2_654_435_761);
    Duration::from_micros(u64::from(x % 1_000_000))
}

/// Poll the standby's `/api/v1/ha/status` until it is a standby behind `active`, both candidates
/// are healthy (campaigning, manager reachable) and, with `probe`, its crash probe has verified
/// the active node's address.
fn wait_standby(standby: &Node, active: &Node, probe: bool) {
    poll_until("the new node to be a ready standby", START, || {
        let (code, body) = autogate_testkit::auth::authed_get(standby.port, "/api/v1/ha/status")?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let candidates = v["candidates"].as_array()?;
        let ready = v["role"] == "standby"
            && v["active_node_id"] == active.id.as_str()
            && candidates.len() == 2
            && candidates.iter().all(|c| c["healthy"] == true);
        let probed = !probe
            || (v["crash_probe"]["verified"] == true
                && v["crash_probe"]["node_id"] == active.id.as_str());
        (ready && probed).then_some(())
    });
}

fn ts(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ms_between(from: &Value, to: &Value) -> f64 {
    (ts(to) - ts(from)).as_seconds_f64() * 1000.0
}

/// Manager timestamp minus the bench's wall clock, both truncated to the millisecond.
fn ms_since_wall(wall: SystemTime, to: &Value) -> f64 {
    let wall = OffsetDateTime::from(wall);
    let wall = wall
        .replace_nanosecond(u32::from(wall.millisecond()) * 1_000_000)
        .unwrap_or(wall);
    (ts(to) - wall).as_seconds_f64() * 1000.0
}

/// One `etcdctl elect` campaigner; its stdout lines are read with the instant they arrived.
struct Elect {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Elect {
    fn start(etcd: &EtcdServer, election: &str, value: &str) -> Elect {
        let mut child = etcd
            .etcdctl()
            .arg("elect")
            .arg(election)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcdctl elect");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Elect { child, lines }
    }

    /// When this campaigner printed its leader key (its first line), waiting up to `deadline`.
    fn elected(&self, deadline: Duration) -> Instant {
        let (at, _key) = self
            .lines
            .recv_timeout(deadline)
            .unwrap_or_else(|e| panic!("etcdctl elect not elected within {deadline:?}: {e}"));
        at
    }

    /// SIGTERM via kill(1), as the core nodes get it: etcdctl 3.4 cancels and resigns on
    /// SIGINT/SIGTERM.
    fn term(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {} failed", self.child.id());
    }

    /// Reap after a signal; a campaigner still running after 5 s is killed.
    fn reap(mut self) {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "etcdctl elect (pid {}) still running 5 s after SIGTERM: killed",
            self.child.id()
        );
    }
}

impl Drop for Elect {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Candidates' keys under `election/` (the second campaigner is queued once it has its key).
fn wait_keys(rt: &tokio::runtime::Runtime, etcd: &EtcdServer, election: &str, n: i64) {
    let endpoint = format!("http://{}", etcd.endpoint());
    let prefix = format!("{election}/");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd client");
        let end = Instant::now() + START;
        loop {
            let resp = client
                .get(
                    prefix.as_str(),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .expect("etcd get");
            if resp.count() == n {
                return;
            }
            assert!(
                Instant::now() < end,
                "{n} candidates never queued in {election}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// The floor: `etcdctl elect` hand-over on SIGTERM (the leader resigns), `CYCLES` times. Each
/// cycle queues a fresh campaigner behind the current leader, then terminates the leader and
/// times until the campaigner prints its leader key.
fn etcdctl_floor(etcd: &EtcdServer, rt: &tokio::runtime::Runtime) -> Vec<f64> {
    let election = "autogate-bench-floor";
    let mut leader = Elect::start(etcd, election, "v0");
    leader.elected(START);
    let mut out = Vec::new();
    for i in 1..=CYCLES {
        let next = Elect::start(etcd, election, &format!("v{i}"));
        wait_keys(rt, etcd, election, 2);
        std::thread::sleep(ETCDCTL_SETTLE);
        let t0 = Instant::now();
        leader.term();
        let at = next.elected(START);
        let took = ms(at.saturating_duration_since(t0));
        eprintln!("etcdctl  {i:>2}/{CYCLES}: SIGTERM → next elected {took:>6.1} ms");
        out.push(took);
        leader.reap();
        leader = next;
    }
    leader.term();
    leader.reap();
    out
}

/// One kill -9 of an `etcdctl elect` leader: the next campaigner waits for the dead one's
/// session lease (60 s, fixed for `etcdctl elect`), which is what an election without crash
/// probing costs.
fn etcdctl_kill9(etcd: &EtcdServer, rt: &tokio::runtime::Runtime) -> f64 {
    let election = "autogate-bench-floor-kill";
    let mut leader = Elect::start(etcd, election, "a");
    leader.elected(START);
    let next = Elect::start(etcd, election, "b");
    wait_keys(rt, etcd, election, 2);
    std::thread::sleep(ETCDCTL_SETTLE);
    let t0 = Instant::now();
    let _ = leader.child.kill();
    let _ = leader.child.wait();
    let at = next.elected(Duration::from_secs(ETCDCTL_SESSION_TTL_S + 30));
    let took = ms(at.saturating_duration_since(t0));
    eprintln!("etcdctl kill -9: next elected after {:.1} s", took / 1000.0);
    next.term();
    next.reap();
    took
}

fn row(measure: &str, samples: &[f64], target: &str) -> String {
    let s = Stats::new(samples.to_vec());
    format!(
        "| {measure} ({} runs) | p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms | {target} |\n",
        s.samples.len(),
        s.median(),
        s.quantile(0.9),
        s.quantile(0.99),
        s.quantile(1.0)
    )
}

fn row_fine(measure: &str, samples: &[f64], target: &str) -> String {
    let s = Stats::new(samples.to_vec());
    format!(
        "| {measure} ({} runs) | p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms | {target} |\n",
        s.samples.len(),
        s.median(),
        s.quantile(0.9),
        s.quantile(0.99),
        s.quantile(1.0)
    )
}

fn report(g: &Graceful, k: &Kill9, r: &Restarted, floor: &[f64], floor_kill: f64) -> String {
    let mut out = table_header("Fail-over");
    out += &row(
        "graceful (SIGTERM): old session closed → new session open, manager's clock",
        &g.gap,
        "p50 ≤ 50 ms, p99 ≤ 150 ms",
    );
    out += &row_fine(
        "graceful: SIGTERM sent → standby logs `is elected as the leader`",
        &g.to_elected,
        "—",
    );
    out += &row_fine(
        "graceful: SIGTERM sent → standby logs `connected to commander`",
        &g.to_line,
        "p50 ≤ 50 ms, p99 ≤ 150 ms",
    );
    out += &row(
        "graceful: SIGTERM sent → new session open at the manager",
        &g.to_session,
        "—",
    );
    out += &row(
        "kill -9 (TTL 10 s, probe verified, random probe phase): kill → new session open at the manager",
        &k.to_session,
        "p50 ≤ 1 s",
    );
    out += &row_fine(
        "kill -9: kill → standby logs `is elected as the leader`",
        &k.to_elected,
        "—",
    );
    out += &row_fine(
        "kill -9: kill → standby logs `connected to commander`",
        &k.to_line,
        "p50 ≤ 1 s",
    );
    out += &row(
        "kill -9: kill → manager closes the dead node's session",
        &k.old_closed,
        "—",
    );
    out += &row(
        "kill -9 + immediate restart (same port and working dir, TTL 10 s, probe verified, random probe phase): kill → new session open at the manager",
        &r.k.to_session,
        "p50 < 500 ms",
    );
    out += &row_fine(
        "kill -9 + immediate restart: kill → standby logs `is elected as the leader`",
        &r.k.to_elected,
        "—",
    );
    out += &row_fine(
        "kill -9 + immediate restart: kill → standby logs `connected to commander`",
        &r.k.to_line,
        "p50 < 500 ms",
    );
    out += &row(
        "kill -9 + immediate restart: kill → manager closes the dead node's session",
        &r.k.old_closed,
        "—",
    );
    out += &row_fine(
        "floor: `etcdctl elect` SIGTERM (resigns) → queued campaigner prints its key, same etcd",
        floor,
        "—",
    );
    out += &format!(
        "| floor: `etcdctl elect` kill -9 → next campaigner elected (1 run: waits for etcdctl's {ETCDCTL_SESSION_TTL_S} s session lease) | {:.1} s | — |\n",
        floor_kill / 1000.0
    );
    out += &format!(
        "\nWith {CYCLES} runs, p99 is the largest sample. Manager timestamps are truncated to the millisecond (the bench's wall clock too, where the two are compared); \"sent\" is taken just before `kill(1)` is spawned (SIGTERM) or `kill(2)` is called (kill -9). Crash detection by probing takes one probe period (200 ms) plus the proof window (300 ms) at most; each kill lands 0–1 s after the standby verified the active (a random phase). With the immediate restart, the new process revoked its predecessor's lease at start in {} of {CYCLES} runs, and the standby's probe acted on the new node id at the old address in {} (when both act, the later revocation finds the lease gone). Each queued `etcdctl elect` campaigner is left {} ms to settle before the leader is stopped.\n",
        r.revoked_at_start,
        r.new_identity,
        ETCDCTL_SETTLE.as_millis()
    );
    out
}
