//! Manager replica figures: what running the manager as replicas on a shared etcd costs and
//! gains, against one manager on its local store. Three set-ups are measured in one run —
//! **local** (one manager, `store_backend = local`), **etcd ×1** (one replica on a 3-member
//! etcd) and **etcd ×3** (three replicas on the same kind of etcd) — each for:
//!
//! - cluster registrations per second through the API (10 000, spread over the replicas);
//! - the session accept rate: 1 000 simulated gateways saying hello, cluster *i* on replica
//!   *i* mod *n*;
//! - the RSS of every replica with those 10 000 clusters registered and 1 000 sessions live;
//! - service runs per second and their latency, posted to the replica holding the cluster's
//!   session and, with three replicas, to one that does not (the run then goes through the
//!   store: written by the caller's replica, claimed and sent by the holder, answered back);
//! - kill -9 of the replica holding a real core node's session → another replica shows a new
//!   session (the core node lists every replica in `[connect] hosts`); with one manager or
//!   one replica there is no other, so the figure is kill -9 and an immediate restart.
//!
//! The simulated gateways are those of `autogate-bench manager` (one mutual-TLS WebSocket per
//! cluster), answering `service.run` at once with a completed result, so the run figures are
//! the manager's own cost. Each cluster is registered with a self-signed node certificate of
//! its own, as a certificate is pinned to one cluster at most. The replicas
//! run with the default lease TTL (5 s). `REPLICAS_RUNS` (default 3) repeats the whole
//! measure; the table gives the median of the runs and each run's figure in brackets.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_manager::AdminClient;
use autogate_testkit::etcd::EtcdCluster;
use autogate_testkit::replicas::{ManagerReplicas, DEFAULT_PREFIX};
use autogate_testkit::scenario::{core_node, Pki, START};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use autogate_tls::{CertKind, Issued, Validity};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::{ms, Stats};

/// Clusters registered before anything else is measured.
const REGISTERED: usize = 10_000;
const REGISTER_CONCURRENCY: usize = 32;
/// Simulated gateway sessions, the first `SESSIONS` registered clusters.
const SESSIONS: usize = 1_000;
const CONNECT_CONCURRENCY: usize = 64;
/// Runs per run figure, and callers in flight.
const RUNS: usize = 2_000;
const RUN_CONCURRENCY: usize = 32;
/// Kill -9 rounds per set-up.
const KILL_ROUNDS: usize = 5;
/// The cluster of the real core node (its default `cluster_id`).
const KILL_CLUSTER: &str = "cluster_1";
/// The product's default `replica_lease_ttl`; the test harness shortens it, the bench does not.
const LEASE_TTL: &str = "5s";
/// How long a change may take to show everywhere, and a new session to appear, before the
/// bench reports it as a problem rather than a figure.
const WITHIN: Duration = Duration::from_secs(30);

/// One of the three set-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Local,
    Etcd(usize),
}

const SETUPS: [Setup; 3] = [Setup::Local, Setup::Etcd(1), Setup::Etcd(3)];

/// `c00042`: the id of registered cluster `i`.
fn cid(i: usize) -> String {
    format!("c{i:05}")
}

/// A manager on its local store, restartable on the same port and data.
struct LocalManager {
    proc: Process,
    port: u16,
    data: tempfile::TempDir,
}

fn local_command(pki: &Pki, port: u16, data: &Path) -> Autogate {
    Autogate::new(["manager"])
        .name("manager")
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string())
        .env("GATEWAY_MANAGER_CERTIFICATE_FILE", pki.path("manager.pem"))
        .env(
            "GATEWAY_MANAGER_PRIVATE_KEY_FILE",
            pki.path("manager-key.pem"),
        )
        .env("GATEWAY_LOG_LEVEL", "warn")
}

fn wait_accepting(proc: &mut Process, port: u16) {
    poll_until(
        &format!("the manager to accept connections on port {port}"),
        START,
        || {
            if !proc.is_running() {
                panic!("the manager exited while starting:\n{}", proc.dump());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        },
    );
}

/// One set-up running: the local manager or the replicas with their etcd, and an admin client
/// per manager process.
struct Deployment {
    // Replicas before etcd: fields drop in order, and the replicas stop before etcd does.
    reps: Option<ManagerReplicas>,
    local: Option<LocalManager>,
    _etcd: Option<EtcdCluster>,
    ports: Vec<u16>,
    admins: Vec<AdminClient>,
}

impl Deployment {
    fn start(setup: Setup, pki: &Pki) -> Deployment {
        let ca = std::path::PathBuf::from(pki.path("ca.pem"));
        let (reps, local, etcd, ports, token) = match setup {
            Setup::Local => {
                let data = tempfile::tempdir().expect("temp dir for the local manager");
                let port = free_port();
                let mut proc = local_command(pki, port, data.path()).spawn();
                let token_file = data.path().join("admin.token");
                poll_until("the local manager's admin token", START, || {
                    std::fs::read_to_string(&token_file)
                        .ok()
                        .filter(|t| !t.trim().is_empty())
                });
                wait_accepting(&mut proc, port);
                let token = std::fs::read_to_string(&token_file)
                    .unwrap_or_else(|e| panic!("{}: {e}", token_file.display()));
                let local = LocalManager { proc, port, data };
                (None, Some(local), None, vec![port], token.trim().to_owned())
            }
            Setup::Etcd(n) => {
                let etcd = EtcdCluster::start(3);
                let reps = ManagerReplicas::start_with(
                    n,
                    &etcd.endpoints(),
                    pki,
                    DEFAULT_PREFIX,
                    &[
                        ("GATEWAY_MANAGER_REPLICA_LEASE_TTL", LEASE_TTL),
                        ("GATEWAY_LOG_LEVEL", "warn"),
                    ],
                );
                let ports = (0..n).map(|i| reps.port(i)).collect();
                let token = reps.token();
                (Some(reps), None, Some(etcd), ports, token)
            }
        };
        let admins = ports
            .iter()
            .map(|p| {
                AdminClient::new(&format!("https://127.0.0.1:{p}"), &token, Some(&ca))
                    .unwrap_or_else(|e| panic!("admin client of port {p}: {e}"))
            })
            .collect();
        Deployment {
            reps,
            local,
            _etcd: etcd,
            ports,
            admins,
        }
    }

    fn n(&self) -> usize {
        self.ports.len()
    }

    fn pid(&self, i: usize) -> u32 {
        match (&self.reps, &self.local) {
            (Some(r), _) => r.process(i).pid(),
            (None, Some(l)) => l.proc.pid(),
            (None, None) => unreachable!("a deployment is local or replicas"),
        }
    }

    /// SIGKILL of manager process `i`, reaped.
    fn kill(&mut self, i: usize) {
        match (&mut self.reps, &mut self.local) {
            (Some(r), _) => r.kill(i),
            (None, Some(l)) => l.proc.kill(),
            (None, None) => unreachable!("a deployment is local or replicas"),
        }
    }

    /// Starts manager process `i` again on its port and data; returns once it accepts.
    fn restart(&mut self, i: usize, pki: &Pki) {
        match (&mut self.reps, &mut self.local) {
            (Some(r), _) => r.restart(i),
            (None, Some(l)) => {
                l.proc.kill();
                l.proc = local_command(pki, l.port, l.data.path()).spawn();
                wait_accepting(&mut l.proc, l.port);
            }
            (None, None) => unreachable!("a deployment is local or replicas"),
        }
    }

    /// What a core node takes as `GATEWAY_CONNECT_HOSTS`: every manager process, in order.
    fn connect_hosts(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `GET /readyz` of process `i`: its body when it answers 200.
    async fn ready(&self, i: usize) -> Option<Value> {
        match self.admins[i].send(Method::GET, "/readyz", None).await {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// Waits until every process is ready and `check` holds for its `/readyz` body; `false`
    /// when that did not happen within [`WITHIN`].
    async fn wait_all(&self, check: impl Fn(&[Value]) -> bool) -> bool {
        let end = Instant::now() + WITHIN;
        loop {
            let mut all = Vec::new();
            for i in 0..self.n() {
                match self.ready(i).await {
                    Some(v) => all.push(v),
                    None => break,
                }
            }
            if all.len() == self.n() && check(&all) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn dump(&self) -> String {
        match (&self.reps, &self.local) {
            (Some(r), _) => r.dump(),
            (None, Some(l)) => l.proc.dump(),
            (None, None) => String::new(),
        }
    }
}

/// Sum of a `/readyz` number over every process.
fn sum_of(all: &[Value], field: &str) -> u64 {
    all.iter().filter_map(|v| v[field].as_u64()).sum()
}

/// A run figure: runs per second and per-run latency.
#[derive(Debug)]
struct RunFig {
    rate: f64,
    latency: Stats,
}

/// Everything measured on one set-up in one run.
#[derive(Debug)]
struct Figures {
    register_rate: f64,
    accept_rate: f64,
    connect_ms: Stats,
    rss: Vec<f64>,
    runs_same: RunFig,
    runs_cross: Option<RunFig>,
    kill_ms: Stats,
    /// With one process: its restart within `kill_ms` (exec → `/readyz` answers 200).
    restart_ms: Stats,
    /// What went wrong (refused, failed, not seen in time), in words.
    problems: Vec<String>,
}

/// The node certificates of the registered clusters (cluster *i* has `[i]`), generated once
/// for every set-up and run, and the client TLS of the first [`SESSIONS`], which say hello.
struct Gateways {
    certs: Vec<Issued>,
    tls: Vec<Arc<autogate_tls::rustls::ClientConfig>>,
}

impl Gateways {
    fn new(pki: &Pki) -> Gateways {
        let t = Instant::now();
        let certs: Vec<Issued> = (0..REGISTERED)
            .map(|i| {
                autogate_tls::self_signed(
                    CertKind::Node,
                    &format!("{}-node", cid(i)),
                    &[],
                    Validity::days(1),
                )
                .unwrap_or_else(|e| panic!("node certificate of {}: {e}", cid(i)))
            })
            .collect();
        let tls = certs[..SESSIONS]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let identity = (
                    autogate_tls::parse_pem_certs(&c.cert_pem)
                        .unwrap_or_else(|e| panic!("certificate of {}: {e}", cid(i))),
                    autogate_tls::parse_pem_key(&c.key_pem)
                        .unwrap_or_else(|e| panic!("key of {}: {e}", cid(i))),
                );
                autogate_tls::client_config(
                    autogate_tls::Roots::File(pki.path("ca.pem").into()),
                    Some(identity),
                    false,
                )
                .unwrap_or_else(|e| panic!("client TLS of {}: {e}", cid(i)))
            })
            .collect();
        eprintln!("{REGISTERED} node certificates in {:?}", t.elapsed());
        Gateways { certs, tls }
    }
}

/// Registers [`REGISTERED`] clusters, cluster *i* through process *i* mod *n*; the rate, and
/// waits until every process has them all.
async fn register(dep: &Deployment, gws: &Gateways, problems: &mut Vec<String>) -> f64 {
    let t0 = Instant::now();
    let failed: Vec<String> = futures::stream::iter(0..REGISTERED)
        .map(|i| {
            let admin = &dep.admins[i % dep.n()];
            let pem = [gws.certs[i].cert_pem.clone()];
            async move {
                admin
                    .create(&cid(i), None, "enabled", &pem)
                    .await
                    .err()
                    .map(|e| format!("registering {} on process {}: {e}", cid(i), i % dep.n()))
            }
        })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    let rate = REGISTERED as f64 / t0.elapsed().as_secs_f64();
    if !failed.is_empty() {
        problems.push(format!(
            "{} registrations failed, first: {}",
            failed.len(),
            failed[0]
        ));
    }
    let want = REGISTERED as u64;
    if !dep
        .wait_all(|all| all.iter().all(|v| v["clusters"].as_u64() >= Some(want)))
        .await
    {
        problems.push(format!(
            "not every process showed the {REGISTERED} clusters within {WITHIN:?}"
        ));
    }
    rate
}

/// Opens [`SESSIONS`] gateway sessions, cluster *i* on process *i* mod *n*: the rate, each
/// session's time, and the sessions' tasks.
async fn sessions(
    dep: &Deployment,
    gws: &Gateways,
    problems: &mut Vec<String>,
) -> (f64, Stats, Vec<tokio::task::JoinHandle<()>>) {
    let t0 = Instant::now();
    let results: Vec<(Duration, Result<tokio::task::JoinHandle<()>, String>)> =
        futures::stream::iter(0..SESSIONS)
            .map(|i| {
                let tls = gws.tls[i].clone();
                let port = dep.ports[i % dep.n()];
                async move {
                    let started = Instant::now();
                    let r = crate::manager::gateway(port, tls, cid(i))
                        .await
                        .map_err(|e| format!("session {}: {e}", cid(i)));
                    (started.elapsed(), r)
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let rate = SESSIONS as f64 / t0.elapsed().as_secs_f64();
    let times = Stats::new(results.iter().map(|(d, _)| ms(*d)).collect());
    let mut handles = Vec::new();
    let mut refused = Vec::new();
    for (_, r) in results {
        match r {
            Ok(h) => handles.push(h),
            Err(e) => refused.push(e),
        }
    }
    if !refused.is_empty() {
        problems.push(format!(
            "{} of {SESSIONS} sessions refused, first: {}",
            refused.len(),
            refused[0]
        ));
    }
    (rate, times, handles)
}

/// [`RUNS`] no-op runs, [`RUN_CONCURRENCY`] in flight, run *k* for cluster *k*·7919 mod
/// [`SESSIONS`] (every session in turn), posted to the process holding its session or, with
/// `cross`, to the next one.
async fn runs(dep: &Deployment, cross: bool, problems: &mut Vec<String>) -> RunFig {
    let n = dep.n();
    let one = |k: usize| {
        let ci = (k * 7919) % SESSIONS;
        let to = if cross { (ci % n + 1) % n } else { ci % n };
        let admin = &dep.admins[to];
        async move {
            let t = Instant::now();
            let r = admin.run(&cid(ci), "noop", &json!({})).await;
            let took = ms(t.elapsed());
            let r = match r {
                Ok(v) if v["status"] == "completed" => Ok(()),
                Ok(v) => Err(format!("run on {} through process {to}: {v}", cid(ci))),
                Err(e) => Err(format!("run on {} through process {to}: {e}", cid(ci))),
            };
            (took, r)
        }
    };
    // Warm-up: the callers' connections to every process are open before the clock starts.
    let _: Vec<_> = futures::stream::iter(0..RUN_CONCURRENCY * 2)
        .map(one)
        .buffer_unordered(RUN_CONCURRENCY)
        .collect()
        .await;
    let t0 = Instant::now();
    let results: Vec<(f64, Result<(), String>)> = futures::stream::iter(0..RUNS)
        .map(one)
        .buffer_unordered(RUN_CONCURRENCY)
        .collect()
        .await;
    let rate = RUNS as f64 / t0.elapsed().as_secs_f64();
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    if let Some(first) = failed.first() {
        problems.push(format!(
            "{} of {RUNS} runs ({}) failed, first: {first}",
            failed.len(),
            if cross {
                "other replica"
            } else {
                "holding replica"
            }
        ));
    }
    RunFig {
        rate,
        latency: Stats::new(results.iter().map(|(t, _)| *t).collect()),
    }
}

/// The live session of [`KILL_CLUSTER`] as process `i` shows it: (session id, port of the
/// process holding it).
async fn live_session(dep: &Deployment, i: usize) -> Option<(String, Option<u16>)> {
    let v = dep.admins[i].show(KILL_CLUSTER).await.ok()?;
    if v["connected"] != true {
        return None;
    }
    let session = v["active"]["session_id"].as_str()?.to_owned();
    // `replica` reads "<address> (<replica id>)"; the port names the process.
    let port = v["active"]["replica"].as_str().and_then(|r| {
        r.split(" (")
            .next()?
            .rsplit(':')
            .next()?
            .parse::<u16>()
            .ok()
    });
    Some((session, port))
}

/// Polls process `i` every 10 ms until it shows a live session of [`KILL_CLUSTER`] other than
/// `old`; `None` after [`WITHIN`].
async fn new_session(dep: &Deployment, i: usize, old: Option<&str>) -> Option<(String, usize)> {
    let end = Instant::now() + WITHIN;
    loop {
        if let Some((s, port)) = live_session(dep, i).await {
            if Some(s.as_str()) != old {
                let holder = port
                    .and_then(|p| dep.ports.iter().position(|q| *q == p))
                    .unwrap_or(0);
                return Some((s, holder));
            }
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`KILL_ROUNDS`] times: SIGKILL of the process holding the real core node's session, until
/// another process (the same one, restarted, when there is no other) shows a new session.
fn kill_rounds(
    dep: &mut Deployment,
    pki: &Pki,
    rt: &Runtime,
    problems: &mut Vec<String>,
) -> (Stats, Stats) {
    let pem = std::fs::read_to_string(pki.path("core-1.pem")).expect("core-1.pem");
    if let Err(e) = rt.block_on(dep.admins[0].create(KILL_CLUSTER, None, "enabled", &[pem])) {
        problems.push(format!("registering {KILL_CLUSTER}: {e}"));
        return (Stats::new(Vec::new()), Stats::new(Vec::new()));
    }
    let (cmd, _api_port) = core_node(pki, "core-1", dep.ports[0]);
    let mut node = cmd
        .env("GATEWAY_CONNECT_HOSTS", dep.connect_hosts())
        .spawn();
    let mut samples = Vec::new();
    let mut restarts = Vec::new();
    let Some((mut session, mut holder)) = rt.block_on(new_session(dep, 0, None)) else {
        problems.push(format!(
            "the core node's session never showed:\n{}",
            node.dump()
        ));
        return (Stats::new(samples), Stats::new(restarts));
    };
    for round in 1..=KILL_ROUNDS {
        let n = dep.n();
        let watcher = (holder + 1) % n;
        let t0 = Instant::now();
        dep.kill(holder);
        if n == 1 {
            let r = Instant::now();
            dep.restart(holder, pki);
            // The port is bound before the store is read (connections wait in the backlog):
            // ready is when `/readyz` answers.
            if rt.block_on(dep.wait_all(|_| true)) {
                restarts.push(ms(r.elapsed()));
            }
        }
        match rt.block_on(new_session(dep, watcher, Some(&session))) {
            Some((s, h)) => {
                samples.push(ms(t0.elapsed()));
                session = s;
                holder = h;
            }
            None => {
                problems.push(format!(
                    "round {round}: no new session of {KILL_CLUSTER} on process {watcher} within {WITHIN:?} of killing process {holder}"
                ));
                eprintln!("{}\n{}", node.dump(), dep.dump());
                break;
            }
        }
        if n > 1 {
            let killed = (watcher + n - 1) % n;
            dep.restart(killed, pki);
        }
        if !rt.block_on(dep.wait_all(|_| true)) {
            problems.push(format!(
                "round {round}: not every process ready again within {WITHIN:?}"
            ));
            break;
        }
    }
    node.signal("TERM");
    let _ = node.try_wait_exit(Duration::from_secs(10));
    (Stats::new(samples), Stats::new(restarts))
}

fn measure(setup: Setup, pki: &Pki, gws: &Gateways, rt: &Runtime) -> Figures {
    let mut problems = Vec::new();
    let mut dep = Deployment::start(setup, pki);

    let register_rate = rt.block_on(register(&dep, gws, &mut problems));
    let (accept_rate, connect_ms, handles) = rt.block_on(sessions(&dep, gws, &mut problems));
    let opened = handles.len() as u64;
    let all_live = rt.block_on(dep.wait_all(|all| sum_of(all, "sessions_live") >= opened));
    if !all_live {
        problems.push(format!(
            "the processes did not count {} live sessions within {WITHIN:?}",
            handles.len()
        ));
    }
    // Let the allocator settle after the burst, as `autogate-bench manager` does.
    std::thread::sleep(Duration::from_secs(1));
    let rss = (0..dep.n())
        .map(|i| crate::status_mib(dep.pid(i), "VmRSS"))
        .collect();

    let runs_same = rt.block_on(runs(&dep, false, &mut problems));
    let runs_cross = (dep.n() > 1).then(|| rt.block_on(runs(&dep, true, &mut problems)));

    // The kill rounds run without the simulated sessions, on a quiet manager.
    for h in &handles {
        h.abort();
    }
    if !rt.block_on(dep.wait_all(|all| sum_of(all, "sessions_live") == 0)) {
        problems.push(format!(
            "simulated sessions still counted live {WITHIN:?} after they closed"
        ));
    }
    let (kill_ms, restart_ms) = kill_rounds(&mut dep, pki, rt, &mut problems);
    for p in &problems {
        eprintln!("{}: {p}", label(setup));
    }
    Figures {
        register_rate,
        accept_rate,
        connect_ms,
        rss,
        runs_same,
        runs_cross,
        kill_ms,
        restart_ms,
        problems,
    }
}

fn label(setup: Setup) -> String {
    match setup {
        Setup::Local => "local".to_owned(),
        Setup::Etcd(n) => format!("etcd ×{n}"),
    }
}

/// The median of one figure over the runs, with each run's value in brackets when there were
/// several.
fn cell(values: &[f64], decimals: usize, unit: &str) -> String {
    if values.iter().all(|v| v.is_nan()) {
        return "—".to_owned();
    }
    let med = Stats::new(values.to_vec()).median();
    let mut s = format!("{med:.decimals$}{unit}");
    if values.len() > 1 {
        let each: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
        s += &format!(" ({})", each.join(", "));
    }
    s
}

/// The table: one column per set-up, each cell the median over `runs` (one `Figures` per
/// set-up per run).
fn table(runs: &[Vec<Figures>]) -> String {
    let title = crate::table_header("Manager replicas");
    let mut out = title.lines().next().unwrap_or_default().to_owned();
    out += &format!(
        "\n\nMedian of {} run(s); each run's figure in brackets.\n\n| measure | local | etcd ×1 | etcd ×3 |\n|---|---|---|---|\n",
        runs.len()
    );
    // One figure of set-up `s` over the runs.
    let across = |s: usize, get: &dyn Fn(&Figures) -> f64, decimals: usize, unit: &str| {
        let values: Vec<f64> = runs.iter().map(|r| get(&r[s])).collect();
        cell(&values, decimals, unit)
    };
    let mut rows = String::new();
    let mut per_setup = |name: String, get: &dyn Fn(usize) -> String| {
        rows += &format!("| {name} |");
        for s in 0..SETUPS.len() {
            rows += &format!(" {} |", get(s));
        }
        rows += "\n";
    };
    per_setup(
        format!("cluster registrations through the API ({REGISTERED}, {REGISTER_CONCURRENCY} in flight, spread over the replicas)"),
        &|s| across(s, &|f| f.register_rate, 0, "/s"),
    );
    per_setup(
        format!("session accept rate, {SESSIONS} gateways ({CONNECT_CONCURRENCY} in flight; cluster *i* on replica *i* mod *n*)"),
        &|s| across(s, &|f| f.accept_rate, 0, " sessions/s"),
    );
    per_setup(
        "… per session (TLS + WebSocket + hello), p50 / p99".to_owned(),
        &|s| {
            format!(
                "{} / {}",
                across(s, &|f| f.connect_ms.median(), 1, " ms"),
                across(s, &|f| f.connect_ms.quantile(0.99), 1, " ms")
            )
        },
    );
    per_setup(
        format!("runs/s, caller on the replica holding the session ({RUNS} runs, {RUN_CONCURRENCY} in flight, {SESSIONS} sessions up)"),
        &|s| across(s, &|f| f.runs_same.rate, 0, " runs/s"),
    );
    per_setup("… latency p50 / p99".to_owned(), &|s| {
        format!(
            "{} / {}",
            across(s, &|f| f.runs_same.latency.median(), 1, " ms"),
            across(s, &|f| f.runs_same.latency.quantile(0.99), 1, " ms")
        )
    });
    per_setup(
        "runs/s, caller on another replica (through the store)".to_owned(),
        &|s| {
            across(
                s,
                &|f| f.runs_cross.as_ref().map_or(f64::NAN, |r| r.rate),
                0,
                " runs/s",
            )
        },
    );
    per_setup("… latency p50 / p99".to_owned(), &|s| {
        if runs[0][s].runs_cross.is_none() {
            return "—".to_owned();
        }
        format!(
            "{} / {}",
            across(
                s,
                &|f| f
                    .runs_cross
                    .as_ref()
                    .map_or(f64::NAN, |r| r.latency.median()),
                1,
                " ms"
            ),
            across(
                s,
                &|f| f
                    .runs_cross
                    .as_ref()
                    .map_or(f64::NAN, |r| r.latency.quantile(0.99)),
                1,
                " ms"
            )
        )
    });
    per_setup(
        format!("kill -9 of the replica holding a real core node's session → another replica shows a new session, {KILL_ROUNDS} rounds, median / max (local and ×1: kill -9 and restart of the manager → new session)"),
        &|s| {
            format!(
                "{} / {}",
                across(s, &|f| f.kill_ms.median(), 0, " ms"),
                across(s, &|f| f.kill_ms.quantile(1.0), 0, " ms")
            )
        },
    );
    per_setup(
        "… of which the restart of the manager process (exec → `/readyz` answers 200), median"
            .to_owned(),
        &|s| across(s, &|f| f.restart_ms.median(), 0, " ms"),
    );
    per_setup(
        format!("RSS per replica, {REGISTERED} clusters registered, {SESSIONS} sessions live"),
        &|s| {
            let n = runs[0][s].rss.len();
            (0..n)
                .map(|i| across(s, &|f| f.rss.get(i).copied().unwrap_or(f64::NAN), 1, " MB"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    out += &rows;
    // Problems, one cell per set-up over every run.
    let problems: Vec<String> = (0..SETUPS.len())
        .map(|s| {
            let all: Vec<String> = runs.iter().flat_map(|r| r[s].problems.clone()).collect();
            if all.is_empty() {
                "none".to_owned()
            } else {
                format!("**{}**: {}", all.len(), all.join("; ").replace('|', "/"))
            }
        })
        .collect();
    out += &format!(
        "| problems (refused, failed, not seen in time) | {} |\n",
        problems.join(" | ")
    );
    out
}

pub fn run() -> String {
    let repeats = std::env::var("REPLICAS_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let pki = Pki::new(&["core-1"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime of the bench");
    let gws = Gateways::new(&pki);
    let mut all: Vec<Vec<Figures>> = Vec::new();
    for r in 1..=repeats {
        let mut this = Vec::new();
        for setup in SETUPS {
            let t = Instant::now();
            eprintln!("run {r}/{repeats}: {}…", label(setup));
            this.push(measure(setup, &pki, &gws, &rt));
            eprintln!(
                "run {r}/{repeats}: {} done in {:?}",
                label(setup),
                t.elapsed()
            );
        }
        all.push(this);
        // This run alone, so that a long bench shows its figures as it goes.
        if let Some(last) = all.last() {
            eprintln!("{}", table(std::slice::from_ref(last)));
        }
    }
    table(&all)
}
