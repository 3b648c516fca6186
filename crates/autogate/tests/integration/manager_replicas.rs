//! Three `autogate manager` replicas on a shared 3-member etcd, end to end: a cluster
//! registered on one replica is served alike by all, a run or a ping posted to a replica that
//! does not hold the cluster's session is answered through the one that does, the session moves
//! when its replica is killed under load without losing or doubling a run, stays put when
//! another replica dies, is refused while etcd has no quorum, and two replicas racing for one
//! cluster accept exactly one hello. A node that left is listed, and forgotten, alike on every
//! replica, whichever replica the forget went to. Wrong settings at start (another admin token, another
//! prefix for the same token, an unreachable etcd) are refused by name, and a corrupt record is
//! named without stopping anyone.
//!
//! Everything is real: etcd members, the replicas and core nodes are processes (the replicas'
//! lease TTL is 2 s), and the racing gateways speak the link protocol over real mutual TLS.
//! Every run's program appends its tag to a file, so a run that ran twice is a repeated line
//! and one that was lost is a missing one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::etcd::EtcdCluster;
use autogate_testkit::replicas::{ManagerReplicas, ReplicaApi, LEASE_TTL};
use autogate_testkit::scenario::{core_node, node_id, seed_shell, Pki, START};
use autogate_testkit::{free_port, poll_until, Process};
use autogate_tls::Issued;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::manager::{
    assert_no_overlap, fingerprint, tls_connect, ConnectError, Gw, Responder, RunAnswer,
};

const CLUSTER: &str = "cluster_1";

/// How long a change written through one replica may take to show on the others (a watch).
const SPREAD: Duration = Duration::from_secs(15);

/// How long a cluster may be without a session after its replica was killed. The core node
/// dials the next replica at once and the same node with the same term supersedes the dead
/// replica's claim, so this is far more than it should take; the time is printed.
const FAILOVER: Duration = Duration::from_secs(15);

/// The set-up every test shares: etcd, the PKI (manager certificate and node certificates) and
/// three replicas. Replicas are declared first so that they stop before etcd does.
struct Set {
    reps: ManagerReplicas,
    etcd: EtcdCluster,
    pki: Pki,
}

fn set_up(nodes: &[&str]) -> Set {
    let etcd = EtcdCluster::start(3);
    let pki = Pki::new(nodes);
    let reps = ManagerReplicas::start(3, &etcd.endpoints(), &pki);
    Set { reps, etcd, pki }
}

/// `manager cluster add <cluster> --state enabled --cert <node>.pem…` on replica `i`.
fn register(s: &Set, i: usize, cluster: &str, nodes: &[&str]) {
    let certs: Vec<String> = nodes
        .iter()
        .map(|n| s.pki.path(&format!("{n}.pem")))
        .collect();
    let mut args = vec!["cluster", "add", cluster, "--state", "enabled"];
    for c in &certs {
        args.push("--cert");
        args.push(c);
    }
    let out = s.reps.cli(i, &args);
    assert_eq!(
        out.code(),
        Some(0),
        "cluster add {cluster} on replica {}:\n{}{}",
        i + 1,
        out.stdout,
        out.stderr
    );
}

/// A node's certificate and key as the scenario PKI wrote them.
fn issued(pki: &Pki, node: &str) -> Issued {
    let read = |name: String| {
        std::fs::read_to_string(pki.path(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    Issued {
        cert_pem: read(format!("{node}.pem")),
        key_pem: read(format!("{node}-key.pem")),
    }
}

/// `GET /api/v1/clusters/<cluster>` on replica `i`.
fn show(s: &Set, i: usize, cluster: &str) -> Option<Value> {
    s.reps.get(i, &format!("/api/v1/clusters/{cluster}"))
}

/// (node id, session id, term) of the cluster's live session as replica `i` shows it.
fn session_on(s: &Set, i: usize, cluster: &str) -> Option<(String, String, Value)> {
    let v = show(s, i, cluster)?;
    if v["connected"] != true {
        return None;
    }
    Some((
        v["active"]["node_id"].as_str()?.to_owned(),
        v["active"]["session_id"].as_str()?.to_owned(),
        v["active"]["term"].clone(),
    ))
}

/// Waits until every running replica in `on` shows the same live session of `cluster` that is
/// not `other_than`; returns it.
fn same_session_on(
    s: &Set,
    on: &[usize],
    cluster: &str,
    other_than: Option<&str>,
    within: Duration,
) -> (String, String, Value) {
    poll_until(
        &format!("replicas {on:?} to show one live session of {cluster}"),
        within,
        || {
            let seen: Vec<_> = on
                .iter()
                .map(|&i| session_on(s, i, cluster))
                .collect::<Option<Vec<_>>>()?;
            let first = seen[0].clone();
            (seen.iter().all(|x| *x == first) && Some(first.1.as_str()) != other_than)
                .then_some(first)
        },
    )
}

/// `manager cluster sessions <cluster> --raw` on replica `i`, newest first.
fn sessions(s: &Set, i: usize, cluster: &str) -> Vec<Value> {
    let out = s.reps.cli(i, &["cluster", "sessions", cluster, "--raw"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    match serde_json::from_str::<Value>(&out.stdout) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(mut o)) => match o.remove("sessions") {
            Some(Value::Array(a)) => a,
            other => panic!("unexpected sessions output: {other:?}"),
        },
        other => panic!("unexpected sessions output: {other:?}\n{}", out.stdout),
    }
}

/// A real core node of `cluster_1` whose `[connect] hosts` lists every replica, with the
/// `shell` service seeded.
struct Gateway {
    proc: Process,
    node: String,
}

fn start_gateway(s: &Set, name: &str) -> Gateway {
    let (cmd, port) = core_node(&s.pki, name, s.reps.port(0));
    let proc =
        with_admin_password(cmd.env("GATEWAY_CONNECT_HOSTS", s.reps.connect_hosts())).spawn();
    proc.wait_for_line("connected to commander at", START);
    let key = admin_key(port);
    seed_shell(&format!("127.0.0.1:{port}"), &key);
    let node = node_id(port);
    Gateway { proc, node }
}

/// The replica the core node connected to last (its log names the address).
fn dialled(s: &Set, proc: &Process) -> usize {
    let line = proc
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.text.contains("connected to commander at "))
        .unwrap_or_else(|| panic!("the core node never connected:\n{}", proc.dump()));
    let port = line
        .text
        .rsplit("connected to commander at ")
        .next()
        .and_then(|addr| addr.trim().rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no address in {:?}", line.text));
    s.reps
        .index_of_port(port)
        .unwrap_or_else(|| panic!("the core node connected to port {port}, no replica's"))
}

/// What a caller was told about one run.
#[derive(Debug)]
enum Told {
    Completed,
    Failed(u16, Value),
    Unanswered(String),
}

impl Told {
    /// For failure messages.
    fn describe(&self) -> String {
        match self {
            Told::Completed => "completed".to_owned(),
            Told::Failed(status, v) => format!("HTTP {status}: {v}"),
            Told::Unanswered(e) => format!("no answer: {e}"),
        }
    }
}

/// One run of `shell` whose program appends `tag` to `file`, posted to `targets[0]` with
/// `tag` as its `Idempotency-Key` and posted again under it, to the next target, when the
/// connection fails (as a client of the manager should when a replica goes away). Returns
/// what the caller was told and how many times it posted.
fn run_tagged(api: &ReplicaApi, targets: &[usize], tag: &str, file: &Path) -> (Told, usize) {
    // Long enough for several runs to be under way at any moment, short enough for many.
    let cmd = format!("echo {tag} >> {}; sleep 0.3; echo {tag}", file.display());
    let body = json!({"inputs": {"cmd": cmd}, "timeout_ms": 60_000});
    let path = format!("/api/v1/clusters/{CLUSTER}/services/shell/run");
    let give_up = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0usize;
    loop {
        let target = targets[attempt % targets.len()];
        match api.call(
            target,
            "POST",
            &path,
            Some(&body),
            Some(tag),
            Duration::from_secs(75),
        ) {
            Ok((200, v)) if v["status"] == "completed" => return (Told::Completed, attempt + 1),
            Ok((status, v)) => return (Told::Failed(status, v), attempt + 1),
            Err(e) if Instant::now() >= give_up => return (Told::Unanswered(e), attempt + 1),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One run a caller asked for: its tag, what it was told, how many posts it took, and when.
struct Call {
    tag: String,
    told: Told,
    posts: usize,
    started: Instant,
    ended: Instant,
}

/// Callers posting runs one after the other until stopped (also when the test fails, on
/// drop). A caller stops at the first run that is not answered completed, so a failure shows
/// at once instead of as a flood.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Vec<String>>>,
    handles: Vec<JoinHandle<Vec<Call>>>,
    file: std::path::PathBuf,
}

impl Load {
    /// One caller per route, posting to the first replica of its route and to the next when
    /// the connection fails; every run's program appends its tag to `file`.
    fn start(api: &ReplicaApi, routes: &[Vec<usize>], file: &Path) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let handles = routes
            .iter()
            .enumerate()
            .map(|(c, route)| {
                let (api, stop, failed, file) = (
                    api.clone(),
                    stop.clone(),
                    failed.clone(),
                    file.to_path_buf(),
                );
                let mine = route.clone();
                std::thread::spawn(move || {
                    let mut told = Vec::new();
                    let mut k = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let tag = format!("c{c}-{k}");
                        k += 1;
                        let started = Instant::now();
                        let (t, posts) = run_tagged(&api, &mine, &tag, &file);
                        let bad = !matches!(t, Told::Completed);
                        if bad {
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("{tag}: {}", t.describe()));
                        }
                        told.push(Call {
                            tag,
                            told: t,
                            posts,
                            started,
                            ended: Instant::now(),
                        });
                        if bad {
                            break;
                        }
                    }
                    told
                })
            })
            .collect();
        Load {
            stop,
            failed,
            handles,
            file: file.to_path_buf(),
        }
    }

    /// Executions so far.
    fn executed(&self) -> usize {
        executions(&self.file).values().sum()
    }

    /// Waits until `n` more runs than now were executed; fails at once when a run failed.
    fn wait_more(&self, n: usize, within: Duration) {
        let goal = self.executed() + n;
        poll_until(&format!("{n} more runs executed"), within, || {
            let failed = self.failed.lock().unwrap().clone();
            assert!(failed.is_empty(), "runs not completed: {failed:#?}");
            (self.executed() >= goal).then_some(())
        });
    }

    /// Stops the callers and asserts that every run was answered completed and that every
    /// run's program ran exactly once; returns the runs.
    fn assert_every_run_ran_once(mut self) -> Vec<Call> {
        self.stop.store(true, Ordering::Relaxed);
        let calls: Vec<Call> = std::mem::take(&mut self.handles)
            .into_iter()
            .flat_map(|h| h.join().expect("a caller panicked"))
            .collect();
        let ran = executions(&self.file);
        let not_completed: Vec<String> = calls
            .iter()
            .filter(|c| !matches!(c.told, Told::Completed))
            .map(|c| format!("{}: {}", c.tag, c.told.describe()))
            .collect();
        assert!(
            not_completed.is_empty(),
            "runs not completed: {not_completed:#?}"
        );
        let wrong: Vec<String> = calls
            .iter()
            .filter_map(|c| {
                let n = ran.get(&c.tag).copied().unwrap_or(0);
                (n != 1).then(|| format!("{} ran {n} times", c.tag))
            })
            .collect();
        assert!(wrong.is_empty(), "at most once and none lost: {wrong:?}");
        let asked: BTreeSet<&str> = calls.iter().map(|c| c.tag.as_str()).collect();
        let strays: Vec<&String> = ran.keys().filter(|t| !asked.contains(t.as_str())).collect();
        assert!(strays.is_empty(), "executions nobody asked for: {strays:?}");
        calls
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Lines of `file`, counted.
fn executions(file: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string(file).unwrap_or_default().lines() {
        *out.entry(l.to_owned()).or_default() += 1;
    }
    out
}

#[test]
fn a_cluster_registered_on_one_replica_is_served_alike_by_all_three() {
    let s = set_up(&["core-1"]);
    register(&s, 0, CLUSTER, &["core-1"]);
    let fp = fingerprint(&issued(&s.pki, "core-1"));

    // Listed with its certificate on the other two.
    for i in 1..3 {
        poll_until(
            &format!("replica {} to list {CLUSTER} with its certificate", i + 1),
            SPREAD,
            || {
                let v = show(&s, i, CLUSTER)?;
                (v["certificates"][0]["fingerprint_sha256"] == fp.as_str()).then_some(())
            },
        );
    }
    let out = s.reps.cli(2, &["cluster", "list"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(CLUSTER), "{}", out.stdout);

    // A core node connects to the first replica of its list; every replica shows the session.
    let gw = start_gateway(&s, "core-1");
    let holder = dialled(&s, &gw.proc);
    assert_eq!(
        holder, 0,
        "the core node dials the first address of its list"
    );
    let (node, session, _) = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);
    assert_eq!(node, gw.node);

    // Every replica lists the three, itself marked, the store healthy, the session counted
    // on the replica that holds it.
    let addrs: BTreeSet<String> = (0..3).map(|i| s.reps.addr(i)).collect();
    for i in 0..3 {
        let v = poll_until(
            &format!("replica {} to list the three replicas", i + 1),
            SPREAD,
            || {
                let v = s.reps.get(i, "/api/v1/replicas")?;
                let sessions: u64 = v["replicas"]
                    .as_array()?
                    .iter()
                    .map(|r| count(&r["sessions"]))
                    .sum();
                (v["replicas"].as_array()?.len() == 3 && sessions == 1).then_some(v)
            },
        );
        assert_eq!(v["store"]["backend"], "etcd", "{v:#}");
        assert_eq!(v["store"]["healthy"], true, "{v:#}");
        assert_eq!(v["store"]["prefix"], s.reps.prefix(), "{v:#}");
        let listed: BTreeSet<String> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["address"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(listed, addrs, "{v:#}");
        let this: Vec<&Value> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["this"] == true)
            .collect();
        assert_eq!(this.len(), 1, "{v:#}");
        assert_eq!(this[0]["address"], s.reps.addr(i).as_str(), "{v:#}");
        let ids: BTreeSet<&str> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["replica_id"].as_str())
            .collect();
        assert_eq!(ids.len(), 3, "{v:#}");
        let holding: Vec<&Value> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| count(&r["sessions"]) == 1)
            .collect();
        assert_eq!(holding[0]["address"], s.reps.addr(holder).as_str(), "{v:#}");
    }
    let out = s.reps.cli(1, &["status"]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    for a in &addrs {
        assert!(
            out.stdout.contains(a.as_str()),
            "{a} missing:\n{}",
            out.stdout
        );
    }

    // A run posted to a replica that does not hold the session is answered, and a third
    // replica shows the same answer.
    let (poster, third) = (1, 2);
    let (code, v) = s
        .reps
        .api(
            poster,
            "POST",
            &format!("/api/v1/clusters/{CLUSTER}/services/shell/run"),
            Some(&json!({"inputs": {"cmd": "echo across replicas"}})),
        )
        .expect("replica 2 answers");
    assert_eq!(code, 200, "{v:#}");
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["node_id"], gw.node.as_str(), "{v:#}");
    let stdout = v["result"]["stdout"].as_str().unwrap_or_default();
    assert!(stdout.contains("across replicas"), "{v:#}");
    let run_id = v["run_id"].as_str().expect("a run id").to_owned();
    // Replica 3 follows the store through its watch, so the answer shows there a moment later
    // at most.
    let path = format!("/api/v1/clusters/{CLUSTER}/runs/{run_id}");
    let mut seen = Vec::new();
    let run = poll_until("the answer on replica 3", SPREAD, || {
        let (code, run) = s.reps.api(third, "GET", &path, None).ok()?;
        if seen.last() != Some(&(code, run["state"].clone())) {
            seen.push((code, run["state"].clone()));
        }
        (code == 200 && run["state"] == "answered").then_some(run)
    });
    assert_eq!(run["answer"]["result"]["stdout"], stdout, "{run:#}");
    println!("the run as replica 3 showed it, in turn: {seen:?}");

    // A ping through a replica that does not hold the session.
    let (code, p) = s
        .reps
        .api(
            third,
            "POST",
            &format!("/api/v1/clusters/{CLUSTER}/ping"),
            None,
        )
        .expect("replica 3 answers");
    assert_eq!(code, 200, "{p:#}");
    assert_eq!(p["node_id"], gw.node.as_str(), "{p:#}");

    // Nothing moved meanwhile.
    let now = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);
    assert_eq!(now.1, session);

    // SIGTERM of the holding replica: it exits cleanly, closing the session as shutting down,
    // and the core node is accepted by the next replica of its list.
    let mut s = s;
    assert!(s.reps.stop(holder), "{}", s.reps.process(holder).dump());
    let (node, moved, _) = same_session_on(&s, &[1, 2], CLUSTER, Some(&session), SPREAD);
    assert_eq!(node, gw.node);
    poll_until("the core node on the next replica", SPREAD, || {
        (dialled(&s, &gw.proc) == 1).then_some(())
    });
    let history = poll_until("the stopped replica's session closed", SPREAD, || {
        let h = sessions(&s, 2, CLUSTER);
        (h.len() == 2 && h[1]["disconnected_at"].is_string()).then_some(h)
    });
    assert_eq!(history[0]["session_id"], moved.as_str(), "{history:#?}");
    // Written by the stopping replica before it tells the gateway: one replica stopped, not
    // the manager.
    assert_eq!(
        history[1]["close_reason"],
        format!("manager replica {} shutting down", s.reps.addr(holder)),
        "{history:#?}"
    );
    assert_no_overlap(&Value::Array(history));
}

/// A replica's `sessions`: a count, or the list of its sessions.
fn count(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_array().map(|a| a.len() as u64))
        .unwrap_or(0)
}

#[test]
fn killing_the_replica_that_holds_the_session_moves_it_and_no_run_is_lost_or_doubled() {
    let mut s = set_up(&["core-1"]);
    register(&s, 0, CLUSTER, &["core-1"]);
    let gw = start_gateway(&s, "core-1");
    let holder = dialled(&s, &gw.proc);
    let (_, before, _) = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();

    let dir = tempfile::tempdir().unwrap();
    // Six callers post to the survivors; two post to the holding replica first and, when
    // their connection breaks, post again under the same key to the next one.
    let mut routes: Vec<Vec<usize>> = (0..6)
        .map(|c| {
            let mut r = survivors.clone();
            r.rotate_left(c % 2);
            r
        })
        .collect();
    for _ in 0..2 {
        routes.push([holder, survivors[0], survivors[1]].to_vec());
    }
    let load = Load::start(
        &s.reps.api_client(),
        &routes,
        &dir.path().join("executions"),
    );
    load.wait_more(12, Duration::from_secs(60));

    let t0 = Instant::now();
    s.reps.kill(holder);
    let (node, after, _) = same_session_on(&s, &survivors, CLUSTER, Some(&before), FAILOVER);
    let took = t0.elapsed();
    println!(
        "the session moved off the killed replica {} in {took:?} (lease TTL {LEASE_TTL:?})",
        holder + 1
    );
    assert_eq!(node, gw.node);
    // The same node with the same term takes the dead replica's claim over: no wait for its
    // lease to end.
    assert!(
        took < LEASE_TTL,
        "the new session waited {took:?}, the lease TTL is {LEASE_TTL:?}"
    );
    poll_until("the core node to name a surviving replica", SPREAD, || {
        survivors.contains(&dialled(&s, &gw.proc)).then_some(())
    });

    // Runs go on after the move.
    load.wait_more(12, Duration::from_secs(60));
    let runs = load.assert_every_run_ran_once();
    let across = runs
        .iter()
        .filter(|c| c.started < t0 && c.ended > t0)
        .count();
    let reposted = runs.iter().filter(|c| c.posts > 1).count();
    println!(
        "{} runs, {across} of them under way at the kill, {reposted} posted again after it, each ran once",
        runs.len()
    );
    assert!(
        across > 0,
        "no run was under way when the replica was killed"
    );

    let history = poll_until(
        "the killed replica's session recorded closed",
        SPREAD,
        || {
            let h = sessions(&s, survivors[0], CLUSTER);
            (h.len() >= 2 && h[1]["disconnected_at"].is_string()).then_some(h)
        },
    );
    assert_eq!(history[0]["session_id"], after.as_str(), "{history:#?}");
    assert!(history[0]["disconnected_at"].is_null(), "{history:#?}");
    assert_no_overlap(&Value::Array(history));
}

#[test]
fn killing_a_replica_that_does_not_hold_the_session_leaves_it_in_place() {
    let mut s = set_up(&["core-1"]);
    register(&s, 0, CLUSTER, &["core-1"]);
    let gw = start_gateway(&s, "core-1");
    let holder = dialled(&s, &gw.proc);
    let (_, session, _) = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);
    let others: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let (victim, caller) = (others[0], others[1]);

    let dir = tempfile::tempdir().unwrap();
    let load = Load::start(
        &s.reps.api_client(),
        &[vec![caller], vec![caller]],
        &dir.path().join("executions"),
    );
    load.wait_more(4, Duration::from_secs(60));

    let gone = s.reps.addr(victim);
    let victim_id = poll_until("the replica to kill listed", SPREAD, || {
        let v = s.reps.get(holder, "/api/v1/replicas")?;
        v["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["address"] == gone.as_str())
            .and_then(|r| r["replica_id"].as_str().map(str::to_owned))
    });
    s.reps.kill(victim);
    // Its liveness key ends with its lease: the others stop listing it.
    poll_until(
        "the killed replica to leave the list",
        LEASE_TTL + SPREAD,
        || {
            let v = s.reps.get(holder, "/api/v1/replicas")?;
            let listed = v["replicas"].as_array()?;
            (listed.len() == 2 && listed.iter().all(|r| r["address"] != gone.as_str()))
                .then_some(())
        },
    );
    load.wait_more(6, Duration::from_secs(60));
    let runs = load.assert_every_run_ran_once().len();
    assert!(runs >= 10, "{runs} runs");

    // The same session, on the same replica, all along.
    let (_, now, _) = same_session_on(&s, &[holder, caller], CLUSTER, None, SPREAD);
    assert_eq!(now, session);
    let connects = gw
        .proc
        .logs()
        .lines()
        .filter(|l| l.contains("connected to commander at "))
        .count();
    assert_eq!(
        connects,
        1,
        "the core node reconnected:\n{}",
        gw.proc.logs()
    );
    let history = sessions(&s, caller, CLUSTER);
    assert_eq!(history.len(), 1, "{history:#?}");
    assert!(history[0]["disconnected_at"].is_null(), "{history:#?}");

    // Started again on its data, it joins as a new replica and shows the same session.
    s.reps.restart(victim);
    let rejoined = poll_until("the restarted replica listed again", SPREAD, || {
        let v = s.reps.get(holder, "/api/v1/replicas")?;
        v["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["address"] == gone.as_str())
            .and_then(|r| r["replica_id"].as_str().map(str::to_owned))
    });
    assert_ne!(rejoined, victim_id, "a restarted replica has a new id");
    let (_, there, _) = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);
    assert_eq!(there, session);
}

/// Connects a scripted gateway presenting `cert` to the replica on `port`.
async fn dial(port: u16, ca: &Path, cert: &Issued) -> Result<Gw, ConnectError> {
    let tls = tls_connect(port, ca, Some(cert))
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    match tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}/ws"), tls).await {
        Ok((ws, _)) => Ok(Gw { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ConnectError::Http(resp.status().as_u16(), body))
        }
        Err(e) => Err(ConnectError::Other(e.to_string())),
    }
}

/// Sends `hello` and waits up to `within` for the answer (`None` if the connection ended).
async fn hello_within(
    gw: &mut Gw,
    cluster: &str,
    node: &str,
    term: u64,
    within: Duration,
) -> Option<Value> {
    gw.send_json(&json!({
        "jsonrpc": "2.0", "id": 0, "method": "hello",
        "params": {"cluster_id": cluster, "node_id": node, "term": term,
                   "version": "test", "nodes": []}
    }))
    .await;
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, gw.ws.next()).await {
            Err(_) => panic!("no answer to hello within {within:?}"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).expect("a JSON frame"))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn losing_the_etcd_quorum_refuses_new_sessions_until_it_is_back() {
    let mut s = set_up(&["core-1", "probe"]);
    register(&s, 0, CLUSTER, &["core-1"]);
    register(&s, 0, "probe", &["probe"]);
    for i in 0..3 {
        poll_until("the probe cluster everywhere", SPREAD, || {
            show(&s, i, "probe")
        });
    }
    let gw = start_gateway(&s, "core-1");
    let (_, before, _) = same_session_on(&s, &[0, 1, 2], CLUSTER, None, SPREAD);

    s.etcd.kill(1);
    s.etcd.kill(2);
    let lost = Instant::now();
    for i in 0..3 {
        let v = poll_until(
            &format!("replica {} /readyz to answer 503", i + 1),
            Duration::from_secs(30),
            || match s.reps.api(i, "GET", "/readyz", None) {
                Ok((503, v)) => Some(v),
                _ => None,
            },
        );
        assert!(v.to_string().contains("store"), "replica {}: {v}", i + 1);
    }

    // `manager status` says the store does not answer.
    let out = s.reps.cli(0, &["status"]);
    assert_eq!(out.code(), Some(69), "{}{}", out.stdout, out.stderr);

    // A new hello is refused, and the replica says why.
    let rt = runtime();
    let probe = issued(&s.pki, "probe");
    let refused = rt.block_on(async {
        match dial(s.reps.port(1), s.reps.ca(), &probe).await {
            Ok(mut g) => hello_within(&mut g, "probe", "p-1", 1, Duration::from_secs(30))
                .await
                .unwrap_or(Value::Null),
            Err(ConnectError::Http(code, body)) => json!({"http": code, "body": body}),
            Err(e) => panic!("the probe could not even ask: {e:?}"),
        }
    });
    assert_ne!(refused["result"]["accepted"], true, "{refused}");
    assert!(
        refused.to_string().contains("store unavailable"),
        "{refused}"
    );
    // The core node's own session ended with the replica's lease, and its hello is refused
    // the same way.
    gw.proc
        .wait_for_line("store unavailable", Duration::from_secs(30));
    s.reps
        .process(1)
        .wait_for_line("store unavailable", Duration::from_secs(30));
    for i in 0..3 {
        assert!(
            s.reps.is_running(i),
            "replica {} exited:\n{}",
            i + 1,
            s.reps.dump()
        );
    }

    // The members come back: the cluster has a session again and runs complete.
    s.etcd.restart(1);
    s.etcd.restart(2);
    let back = Instant::now();
    for i in 0..3 {
        poll_until(
            &format!("replica {} ready again", i + 1),
            Duration::from_secs(30),
            || matches!(s.reps.api(i, "GET", "/readyz", None), Ok((200, _))).then_some(()),
        );
    }
    let (node, _, _) = same_session_on(
        &s,
        &[0, 1, 2],
        CLUSTER,
        Some(&before),
        Duration::from_secs(30),
    );
    println!(
        "quorum lost for {:?}; a session again {:?} after it was back",
        back - lost,
        back.elapsed()
    );
    assert_eq!(node, gw.node);
    for i in 0..3 {
        let (code, v) = s
            .reps
            .api(
                i,
                "POST",
                &format!("/api/v1/clusters/{CLUSTER}/services/shell/run"),
                Some(&json!({"inputs": {"cmd": format!("echo after {i}")}})),
            )
            .expect("the replica answers");
        assert_eq!(code, 200, "replica {}: {v:#}", i + 1);
        assert_eq!(v["status"], "completed", "{v:#}");
    }
    let out = s.reps.cli(0, &["status"]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let history = poll_until(
        "the session of before the outage recorded closed",
        SPREAD,
        || {
            let h = sessions(&s, 2, CLUSTER);
            h.iter()
                .any(|x| x["session_id"] == before.as_str() && x["disconnected_at"].is_string())
                .then_some(h)
        },
    );
    assert_no_overlap(&Value::Array(history));
    // And the probe is accepted now: it was the store that refused it.
    let accepted = rt.block_on(async {
        let mut g = dial(s.reps.port(1), s.reps.ca(), &probe)
            .await
            .expect("the probe connects");
        hello_within(&mut g, "probe", "p-1", 1, Duration::from_secs(15)).await
    });
    assert_eq!(
        accepted.as_ref().map(|v| v["result"]["accepted"].clone()),
        Some(Value::Bool(true)),
        "{accepted:?}"
    );
}

#[test]
fn two_replicas_racing_for_one_cluster_accept_exactly_one_hello() {
    let s = set_up(&["race"]);
    register(&s, 0, "race", &["race"]);
    for i in 0..3 {
        poll_until("the cluster everywhere", SPREAD, || show(&s, i, "race"));
    }
    let cert = issued(&s.pki, "race");
    let rt = runtime();
    let (r1, r2, ca) = (s.reps.port(0), s.reps.port(1), s.reps.ca().to_path_buf());
    let (mut a, mut b) = rt.block_on(async {
        let a = dial(r1, &ca, &cert).await.expect("replica 1 upgrades");
        let b = dial(r2, &ca, &cert).await.expect("replica 2 upgrades");
        (a, b)
    });
    let within = Duration::from_secs(15);
    let (ha, hb) = rt.block_on(async {
        tokio::join!(
            hello_within(&mut a, "race", "n-1", 5, within),
            hello_within(&mut b, "race", "n-2", 5, within)
        )
    });
    let (ha, hb) = (ha.unwrap_or(Value::Null), hb.unwrap_or(Value::Null));
    let won = |v: &Value| v["result"]["accepted"] == true;
    assert!(
        won(&ha) != won(&hb),
        "exactly one hello may be accepted:\n{ha}\n{hb}"
    );
    let (winner, mut loser, win_node, lose_node, lose_port, refusal) = if won(&ha) {
        (a, b, "n-1", "n-2", r2, hb)
    } else {
        (b, a, "n-2", "n-1", r1, ha)
    };
    // Answers the manager's pings in the background, so the session stays up.
    let winner = rt.block_on(async { Responder::spawn(winner, RunAnswer::Echo) });
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(win_node),
        "the refusal names the holder: {refusal}"
    );
    let (code, _) = rt.block_on(loser.expect_close());
    assert_eq!(code, 1008, "{refusal}");
    let first = poll_until("the winner's session everywhere", SPREAD, || {
        let v: Vec<_> = (0..3).map(|i| session_on(&s, i, "race")).collect();
        let first = v[0].clone()?;
        (v.iter().all(|x| x.as_ref() == Some(&first)) && first.0 == win_node).then_some(first)
    });

    // A higher term on the refused side replaces it; the first is closed by its replica.
    let again = rt.block_on(async {
        let mut g = dial(lose_port, &ca, &cert).await.expect("upgrade");
        let v = hello_within(&mut g, "race", lose_node, 6, within).await;
        (g, v)
    });
    let _second = rt.block_on(async { Responder::spawn(again.0, RunAnswer::Echo) });
    let hello = again.1.unwrap_or(Value::Null);
    assert_eq!(hello["result"]["accepted"], true, "{hello}");
    let (_, reason, _) = rt.block_on(winner.wait_closed(Duration::from_secs(10)));
    assert!(reason.contains("superseded"), "{reason}");
    let (node, session, term) = poll_until("the replacement everywhere", SPREAD, || {
        let v: Vec<_> = (0..3).map(|i| session_on(&s, i, "race")).collect();
        let now = v[0].clone()?;
        (v.iter().all(|x| x.as_ref() == Some(&now)) && now.1 != first.1).then_some(now)
    });
    assert_eq!((node.as_str(), term), (lose_node, json!(6)));
    assert_ne!(session, first.1);
    let history = poll_until("both sessions in the history", SPREAD, || {
        let h = sessions(&s, 2, "race");
        (h.len() == 2 && h[1]["disconnected_at"].is_string()).then_some(h)
    });
    assert_eq!(history[0]["node_id"], lose_node, "{history:#?}");
    assert_eq!(history[1]["node_id"], win_node, "{history:#?}");
    assert_no_overlap(&Value::Array(history));

    // More races, each for a term above the last: one winner every time, whichever replica
    // decides first.
    let mut alive = Vec::new();
    for round in 0..5u64 {
        let term = 10 + round;
        let (na, nb) = (format!("a-{round}"), format!("b-{round}"));
        let (a, b, ha, hb) = rt.block_on(async {
            let mut a = dial(r1, &ca, &cert).await.expect("replica 1 upgrades");
            let mut b = dial(r2, &ca, &cert).await.expect("replica 2 upgrades");
            let (ha, hb) = tokio::join!(
                hello_within(&mut a, "race", &na, term, within),
                hello_within(&mut b, "race", &nb, term, within)
            );
            (a, b, ha.unwrap_or(Value::Null), hb.unwrap_or(Value::Null))
        });
        assert!(
            won(&ha) != won(&hb),
            "round {round}: exactly one hello may be accepted:\n{ha}\n{hb}"
        );
        let kept = if won(&ha) { a } else { b };
        alive.push(rt.block_on(async { Responder::spawn(kept, RunAnswer::Echo) }));
    }
    let history = poll_until("every round in the history", SPREAD, || {
        let h = sessions(&s, 2, "race");
        (h.len() == 7 && h[1..].iter().all(|x| x["disconnected_at"].is_string())).then_some(h)
    });
    assert_no_overlap(&Value::Array(history));
}

#[test]
fn wrong_settings_at_start_and_a_corrupt_record_are_refused_by_name() {
    let prefix = "/mgr-replicas";
    let etcd = EtcdCluster::start(3);
    let pki = Pki::new(&[]);
    let mut reps = ManagerReplicas::start_with(3, &etcd.endpoints(), &pki, prefix, &[]);

    // A corrupt record: the replicas keep serving, and name the key.
    let key = format!("{prefix}/manager/clusters/bad");
    let out = etcd
        .etcdctl()
        .args(["put", &key, "{not json"])
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let named = poll_until("a replica to name the corrupt key", SPREAD, || {
        (0..3).find_map(|i| {
            let logs = reps.process(i).logs();
            if let Some(l) = logs.lines().find(|l| l.contains("manager/clusters/bad")) {
                return Some(l.to_owned());
            }
            let v = reps.get(i, "/api/v1/replicas")?;
            v.to_string()
                .contains("manager/clusters/bad")
                .then(|| v.to_string())
        })
    });
    println!("the corrupt record, named: {named}");
    pki.add_node("later");
    let out = reps.cli(
        0,
        &[
            "cluster",
            "add",
            "later",
            "--state",
            "enabled",
            "--cert",
            &pki.path("later.pem"),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    for i in 0..3 {
        poll_until(
            &format!("replica {} to list a cluster added after it", i + 1),
            SPREAD,
            || reps.get(i, "/api/v1/clusters/later"),
        );
        assert!(reps.is_running(i), "replica {} exited", i + 1);
    }

    // Another admin token on the same etcd and prefix.
    let other = reps.dir().join("other.token");
    autogate_testkit::replicas::write_token_file(&other);
    let (cmd, _) = reps.spare();
    let out = cmd
        .env(
            "GATEWAY_MANAGER_ADMIN_TOKEN_FILE",
            other.display().to_string(),
        )
        .output(Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(64), "{text}");
    let error = error_line(&text);
    assert!(
        error.contains("different admin token") && error.contains(&other.display().to_string()),
        "{text}"
    );

    // The same token under another prefix.
    let (cmd, _) = reps.spare();
    let out = cmd
        .env("GATEWAY_MANAGER_STORE_ETCD_PREFIX", "/mgr-elsewhere")
        .output(Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(64), "{text}");
    let error = error_line(&text);
    assert!(
        error.contains(prefix) && error.contains("/mgr-elsewhere"),
        "{text}"
    );

    // No etcd at the configured address.
    let closed = format!("127.0.0.1:{}", free_port());
    let (cmd, _) = reps.spare();
    let out = cmd
        .env("GATEWAY_MANAGER_STORE_ETCD_HOSTS", closed.clone())
        .output(Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(69), "{text}");
    assert!(error_line(&text).contains(&closed), "{text}");

    // None of it disturbed the three.
    for i in 0..3 {
        assert!(
            reps.is_running(i),
            "replica {} exited:\n{}",
            i + 1,
            reps.dump()
        );
        let out = reps.cli(i, &["cluster", "list"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        assert!(out.stdout.contains("later"), "{}", out.stdout);
    }
}

/// The `error: …` line a refused start ends with (the log lines before it name files anyway).
fn error_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{text}"))
        .to_owned()
}

/// The nodes that left a cluster are one record in the store, written by the replica holding
/// the session and by whichever replica an operator forgets one on: every replica lists a
/// killed standby as lost, a forget on a replica that does not hold the session takes it off
/// every replica, and the holder's next writes (the node started again, under a new id) do not
/// bring it back.
#[test]
fn a_node_that_left_is_listed_and_forgotten_alike_on_every_replica() {
    let s = set_up(&["core-1", "core-2"]);
    register(&s, 0, CLUSTER, &["core-1", "core-2"]);
    let etcd = s.etcd.endpoints().join(" ");
    let node = |name: &str| {
        let (cmd, port) = crate::support::ha_core_node(&s.pki, name, s.reps.port(0), &etcd);
        let proc = cmd
            .env("GATEWAY_CONNECT_HOSTS", s.reps.connect_hosts())
            .spawn();
        (proc, port)
    };
    let (active, _) = node("core-1");
    active.wait_for_line("connected to commander at", START);
    let holder = dialled(&s, &active);
    let (mut standby, standby_port) = node("core-2");
    let standby_id = node_id(standby_port);
    let listed = |i: usize| -> Option<Value> {
        let v = show(&s, i, CLUSTER)?;
        let nodes = v["nodes"].as_array()?;
        nodes
            .iter()
            .any(|n| n["node_id"] == standby_id.as_str())
            .then_some(v)
    };
    for i in 0..3 {
        poll_until(&format!("replica {} to list core-2", i + 1), SPREAD, || {
            listed(i)
        });
    }

    // kill -9 of the standby: lost, on every replica.
    standby.kill();
    let lost = |i: usize| -> Option<Value> {
        let v = show(&s, i, CLUSTER)?;
        v["absent_nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node_id"] == standby_id.as_str())
            .cloned()
    };
    for i in 0..3 {
        let gone = poll_until(
            &format!("replica {} to list core-2 lost", i + 1),
            SPREAD,
            || lost(i),
        );
        assert_eq!(gone["status"], "lost", "{gone:#}");
        assert_eq!(gone["name"], "core-2", "{gone:#}");
    }

    // Forgotten through a replica that does not hold the session: gone from all three.
    let other = (holder + 1) % 3;
    let (code, body) = s
        .reps
        .api(
            other,
            "DELETE",
            &format!("/api/v1/clusters/{CLUSTER}/nodes/{standby_id}"),
            None,
        )
        .expect("the replica answers");
    assert!((200..300).contains(&code), "{code} {body:#}");
    for i in 0..3 {
        poll_until(
            &format!("replica {} to forget core-2", i + 1),
            SPREAD,
            || lost(i).is_none().then_some(()),
        );
    }

    // The holder records the next membership (core-2 again, under a new id): it starts from
    // the record with the forget, so the old node stays forgotten, and the new one is not
    // "back" from anything.
    let (again, again_port) = node("core-2");
    let again_id = node_id(again_port);
    for i in 0..3 {
        let v = poll_until(
            &format!("replica {} to list core-2 again", i + 1),
            SPREAD,
            || {
                let v = show(&s, i, CLUSTER)?;
                v["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["node_id"] == again_id.as_str())
                    .then_some(v)
            },
        );
        assert_eq!(v["absent_nodes"], json!([]), "replica {}: {v:#}", i + 1);
        let shown = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == again_id.as_str())
            .cloned()
            .unwrap();
        assert!(shown.get("back").is_none(), "replica {}: {shown:#}", i + 1);
    }
    drop((again, active));
}
