//! The chaos soak: callers keep running services through the manager while a seeded schedule
//! stops, kills and freezes the active core node, cuts it off from the manager or from etcd
//! (its own proxies drop every packet until another node holds the session), kills runners and
//! restarts the manager; a checker then counts what the callers were told against what
//! actually ran.
//!
//! Everything is real: one etcd member, `autogate manager`, three HA core nodes (`core-1` the
//! configured primary, so it takes the role back), and — with distributed execution — two
//! runners. Every run's program appends its own tag to a file, so an execution is a line: a run
//! that ran twice is a repeated tag, a run that ran while its caller was told it failed is a
//! tag whose caller holds an error. Callers send an `Idempotency-Key` (their tag) and send the
//! request again under it when the manager cannot be reached (it restarts) or says it is
//! stopping (504 with `Retry-After`), as a client of the manager should.
//!
//! The manager is either one process on its local store (the default) or, with
//! [`ManagerSetup::Replicas`], three replicas sharing the soak's etcd under their own key
//! prefix, every core node's `[connect] hosts` listing all three. The schedule then also kills
//! (-9) the replica holding the cluster's session and a replica that does not hold it, and the
//! manager restart is a SIGTERM and restart of one replica. Each run goes to a replica picked
//! by the seed; when that replica cannot be reached the caller posts it again, under the same
//! key, to the next one — as a client of a replicated manager should. The single etcd member
//! is enough: no fault touches etcd itself (the etcd faults are a core node's own path to it),
//! and losing its quorum is the replica tests' subject, not the soak's.
//!
//! What counts against the goal (all must be zero): runs refused or failed (any answer but
//! `completed`, except `interrupted` — the one answer for a run whose node was lost mid-run),
//! runs left unanswered, runs executed twice, runs executed while their caller was told they
//! failed, overlapping manager sessions, and a manager replica that exited on its own or not
//! cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::{admin_key, with_admin_password};
use crate::etcd::EtcdServer;
use crate::proxy::TcpProxy;
use crate::replicas::{ManagerReplicas, LEASE_TTL};
use crate::rng::Rng;
use crate::scenario::{core_node, Manager, Pki, START};
use crate::{free_port, poll_until, Autogate, Process};

const CLUSTER: &str = "cluster_1";
const CORES: [&str; 3] = ["core-1", "core-2", "core-3"];

/// The replicas' own key prefix on the etcd the core nodes use.
const REPLICA_PREFIX: &str = "/autogate-soak-manager";

/// Which manager the core nodes and the callers talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerSetup {
    /// One `autogate manager` on its local store.
    Local,
    /// Three replicas on the soak's etcd (see the module documentation).
    Replicas,
}

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Seed of the fault schedule and of the callers' pacing.
    pub seed: u64,
    /// Faults to inject.
    pub faults: usize,
    /// Concurrent callers.
    pub callers: usize,
    /// Runs execute on runners (two) instead of on the active core node.
    pub distributed: bool,
    /// The core nodes' lease TTL (a frozen node is held past it).
    pub lease_ttl: Duration,
    /// One manager, or three replicas.
    pub manager: ManagerSetup,
}

impl SoakConfig {
    pub fn new(seed: u64, faults: usize, distributed: bool) -> Self {
        SoakConfig {
            seed,
            faults,
            callers: 8,
            distributed,
            lease_ttl: Duration::from_secs(3),
            manager: ManagerSetup::Local,
        }
    }

    /// The same soak against three manager replicas on a shared etcd.
    pub fn with_replicas(mut self) -> Self {
        self.manager = ManagerSetup::Replicas;
        self
    }

    fn replicas(&self) -> bool {
        self.manager == ManagerSetup::Replicas
    }
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGTERM of the active core node (it drains, then hands over); restarted after.
    StopActive,
    /// kill -9 of the active core node; restarted after.
    KillActive,
    /// SIGSTOP of the active core node past its lease TTL, then SIGCONT.
    FreezeActive,
    /// kill -9 of a runner; restarted after (distributed execution only).
    KillRunner,
    /// The manager stopped (SIGTERM) and started again on its data; with replicas, one of them.
    RestartManager,
    /// kill -9 of the replica holding the cluster's session; restarted once another holds it.
    KillSessionReplica,
    /// kill -9 of a replica not holding the session; restarted once the others no longer list
    /// it (its lease ended).
    KillOtherReplica,
    /// The active node's path to the manager goes silent (packets dropped) until another node
    /// holds the session.
    PartitionFromManager,
    /// The active node's path to etcd goes silent until another node is active.
    PartitionFromEtcd,
}

impl Fault {
    fn name(self, replicas: bool) -> &'static str {
        match self {
            Fault::RestartManager if replicas => "SIGTERM + restart of a replica",
            Fault::StopActive => "SIGTERM active",
            Fault::KillActive => "kill -9 active",
            Fault::FreezeActive => "SIGSTOP active past TTL",
            Fault::KillRunner => "kill -9 runner",
            Fault::RestartManager => "restart manager",
            Fault::KillSessionReplica => "kill -9 replica holding the session",
            Fault::KillOtherReplica => "kill -9 replica not holding it",
            Fault::PartitionFromManager => "active cut from the manager",
            Fault::PartitionFromEtcd => "active cut from etcd",
        }
    }
}

/// What one caller was told about one run.
#[derive(Debug, Clone)]
enum Told {
    Completed,
    Interrupted,
    Failed(u16, String),
    Unanswered(String),
}

#[derive(Debug)]
struct Call {
    tag: String,
    told: Told,
    latency: Duration,
}

/// The soak's result.
#[derive(Debug)]
pub struct SoakReport {
    pub config: SoakConfig,
    pub faults: BTreeMap<Fault, usize>,
    pub runs: usize,
    pub completed: usize,
    pub interrupted: usize,
    /// Refused or failed: (HTTP status, message) of each.
    pub failed: Vec<(u16, String)>,
    pub unanswered: Vec<String>,
    pub executed_twice: Vec<String>,
    pub executed_while_failed: Vec<String>,
    /// Told completed, yet no trace of an execution.
    pub completed_not_executed: Vec<String>,
    pub overlapping_sessions: usize,
    pub sessions: usize,
    /// Manager replicas that exited on their own, or not with 0 on SIGTERM: what and when.
    pub crashes: Vec<String>,
    /// Milliseconds, completed runs.
    pub latencies: Vec<f64>,
    /// Milliseconds between one session's end and the next one's start.
    pub gaps: Vec<f64>,
    pub elapsed: Duration,
}

impl SoakReport {
    /// Everything that counts against the goal.
    pub fn violations(&self) -> usize {
        self.failed.len()
            + self.unanswered.len()
            + self.executed_twice.len()
            + self.executed_while_failed.len()
            + self.completed_not_executed.len()
            + self.overlapping_sessions
            + self.crashes.len()
    }

    fn quantile(v: &[f64], q: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[((s.len() - 1) as f64 * q).round() as usize]
    }

    /// A Markdown table of the run.
    pub fn table(&self) -> String {
        let mode = if self.config.distributed {
            "distributed execution (3 core nodes, 2 runners)"
        } else {
            "local execution (3 core nodes)"
        };
        let replicas = self.config.replicas();
        let mode = if replicas {
            format!("{mode}, 3 manager replicas on a shared etcd")
        } else {
            mode.to_owned()
        };
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(f, n)| format!("{} × {n}", f.name(replicas)))
            .collect();
        let l = &self.latencies;
        let g = &self.gaps;
        let mut out = format!(
            "#### {mode}, seed {}, {} callers, lease TTL {:?}, {:.0} s\n\n| measure | result |\n|---|---|\n",
            self.config.seed,
            self.config.callers,
            self.config.lease_ttl,
            self.elapsed.as_secs_f64()
        );
        let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
        row(
            "faults",
            format!(
                "{} ({})",
                self.faults.values().sum::<usize>(),
                faults.join(", ")
            ),
        );
        row("runs", self.runs.to_string());
        row("completed", self.completed.to_string());
        row(
            "interrupted (node lost mid-run)",
            self.interrupted.to_string(),
        );
        row("refused or failed", self.failed.len().to_string());
        row("unanswered", self.unanswered.len().to_string());
        row("executed twice", self.executed_twice.len().to_string());
        row(
            "executed while told failed",
            self.executed_while_failed.len().to_string(),
        );
        row(
            "told completed, not executed",
            self.completed_not_executed.len().to_string(),
        );
        row(
            "sessions / overlapping",
            format!("{} / {}", self.sessions, self.overlapping_sessions),
        );
        if replicas {
            row("replica crashes", self.crashes.len().to_string());
        }
        row(
            "run latency p50 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                Self::quantile(l, 0.5),
                Self::quantile(l, 0.99),
                Self::quantile(l, 1.0)
            ),
        );
        row(
            "gap between sessions p50 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                Self::quantile(g, 0.5),
                Self::quantile(g, 0.99),
                Self::quantile(g, 1.0)
            ),
        );
        out
    }
}

struct Core {
    name: &'static str,
    port: u16,
    workdir: PathBuf,
    proc: Option<Process>,
    /// Its own paths to the manager (one per replica, in the order of its `[connect] hosts`)
    /// and to etcd, to cut one node off.
    to_manager: Vec<TcpProxy>,
    to_etcd: TcpProxy,
}

/// The manager side of the soak.
enum Managers {
    /// One manager on its local store in `data`, on `port`.
    Local {
        manager: Option<Manager>,
        port: u16,
        data: tempfile::TempDir,
    },
    /// Three replicas; `earlier` keeps the logs of the incarnations the faults ended (label,
    /// log), to show what a replica said before it was killed.
    Replicas {
        set: ManagerReplicas,
        earlier: Vec<(String, String)>,
    },
}

struct World {
    cfg: SoakConfig,
    // Before `etcd`: the replicas stop before their store does.
    managers: Managers,
    etcd: EtcdServer,
    pki: Pki,
    dirs: tempfile::TempDir,
    cores: Vec<Core>,
    runners: Vec<(String, Option<Process>)>,
    crashes: Vec<String>,
    started: Instant,
}

impl World {
    fn start(cfg: SoakConfig) -> World {
        let etcd = EtcdServer::start();
        let pki = Pki::new(&CORES);
        let dirs = tempfile::tempdir().expect("tempdir");
        let managers = if cfg.replicas() {
            let set = ManagerReplicas::start_with(3, &etcd.endpoints(), &pki, REPLICA_PREFIX, &[]);
            register_on_replicas(&set, &pki);
            Managers::Replicas {
                set,
                earlier: Vec::new(),
            }
        } else {
            let data = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let manager = Manager::start(&pki, port, data.path());
            manager.register(&pki, CLUSTER, &CORES);
            Managers::Local {
                manager: Some(manager),
                port,
                data,
            }
        };
        let mut w = World {
            cfg,
            managers,
            etcd,
            pki,
            dirs,
            cores: Vec::new(),
            runners: Vec::new(),
            crashes: Vec::new(),
            started: Instant::now(),
        };
        let ports = w.manager_ports();
        for name in CORES {
            let workdir = w.dirs.path().join(name);
            w.cores.push(Core {
                name,
                port: free_port(),
                workdir,
                proc: None,
                to_manager: ports
                    .iter()
                    .map(|p| TcpProxy::start(&format!("127.0.0.1:{p}")))
                    .collect(),
                to_etcd: TcpProxy::start(&w.etcd.endpoint()),
            });
        }
        for i in 0..w.cores.len() {
            w.spawn_core(i);
            if i == 0 {
                crate::scenario::node_id(w.cores[0].port);
                w.wait_connected();
                w.seed();
            }
        }
        if w.cfg.distributed {
            for name in ["runner-a", "runner-b"] {
                let p = w.spawn_runner(name);
                w.runners.push((name.to_owned(), Some(p)));
            }
        }
        w
    }

    /// The manager's ports: one, or each replica's in order.
    fn manager_ports(&self) -> Vec<u16> {
        match &self.managers {
            Managers::Local { port, .. } => vec![*port],
            Managers::Replicas { set, .. } => (0..set.len()).map(|i| set.port(i)).collect(),
        }
    }

    /// The admin token.
    fn token(&self) -> Option<String> {
        match &self.managers {
            Managers::Local { manager, .. } => {
                let path = manager.as_ref()?.token_path();
                Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
            }
            Managers::Replicas { set, .. } => Some(set.token()),
        }
    }

    fn spawn_core(&mut self, i: usize) {
        let ports = self.manager_ports();
        let (cmd, _) = core_node(&self.pki, self.cores[i].name, ports[0]);
        let c = &self.cores[i];
        // Every replica, through this node's own proxies, in the same order on every node.
        let hosts: Vec<String> = c.to_manager.iter().map(TcpProxy::endpoint).collect();
        let mut cmd = cmd
            .env("GATEWAY_SERVER_PORT", c.port.to_string())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                c.workdir.display().to_string(),
            )
            .env("GATEWAY_CONNECT_HOSTS", hosts.join(" "))
            .env("GATEWAY_CONNECT_SERVER_HA_CONNECT_GRACE", "2s")
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", c.to_etcd.endpoint())
            .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
            .env(
                "GATEWAY_CONNECT_SERVER_HA_LEASE_TTL",
                format!("{}s", self.cfg.lease_ttl.as_secs().max(2)),
            )
            .env("GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY", "2s")
            .env("GATEWAY_CONNECT_SERVER_HA_MAX_TRANSITIONS", "1000");
        if i == 0 {
            cmd = cmd.env("GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY", "true");
        }
        if self.cfg.distributed {
            cmd = cmd.env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true");
        }
        self.cores[i].proc = Some(with_admin_password(cmd).spawn());
    }

    fn spawn_runner(&self, name: &str) -> Process {
        Autogate::new(["runner"])
            .name(name)
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                self.dirs.path().join(name).display().to_string(),
            )
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", self.etcd.endpoint())
            .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
            .env("GATEWAY_RUNNER_CAPACITY", "32")
            .spawn()
    }

    /// The `shell` service (no retries): `sh -c <cmd>`.
    fn seed(&self) {
        let port = self.cores[0].port;
        crate::scenario::seed_shell(&format!("127.0.0.1:{port}"), &admin_key(port));
    }

    /// `GET` of the manager's API on `port`, as JSON; `None` while it cannot answer.
    fn manager_get_on(&self, port: u16, path: &str) -> Option<Value> {
        let token = self.token()?;
        let (status, body) = crate::auth::https_request(
            &format!("127.0.0.1:{port}"),
            "GET",
            path,
            Some(&token),
            None,
            Path::new(&self.pki.path("ca.pem")),
            None,
        )
        .ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// `GET` of the manager's API, as JSON, from the first replica that answers; `None` while
    /// none can.
    fn manager_get(&self, path: &str) -> Option<Value> {
        self.manager_ports()
            .into_iter()
            .find_map(|port| self.manager_get_on(port, path))
    }

    /// The active node's id, from the manager, once the cluster has a session.
    fn wait_connected(&self) -> String {
        poll_until(
            "a manager session of the cluster",
            Duration::from_secs(120),
            || self.active_now(),
        )
    }

    /// The node holding the cluster's session now, if any.
    fn active_now(&self) -> Option<String> {
        let v = self.manager_get(&format!("/api/v1/clusters/{CLUSTER}"))?;
        (v["connected"] == true)
            .then(|| v["active"]["node_id"].as_str().map(str::to_owned))
            .flatten()
    }

    /// The replica holding the cluster's session, as that replica itself says (its own
    /// address opens the `replica` it names).
    fn holder(&self) -> Option<usize> {
        self.manager_ports().into_iter().position(|port| {
            self.manager_get_on(port, &format!("/api/v1/clusters/{CLUSTER}"))
                .is_some_and(|v| {
                    v["connected"] == true
                        && v["active"]["replica"]
                            .as_str()
                            .is_some_and(|r| r.starts_with(&format!("127.0.0.1:{port} ")))
                })
        })
    }

    /// Which of our core processes is `node_id`.
    fn core_of(&self, node_id: &str) -> Option<usize> {
        self.cores.iter().position(|c| {
            crate::auth::authed_get(c.port, "/api/v1/health")
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|v| v["node_id"] == node_id)
        })
    }

    fn replica_set(&mut self) -> &mut ManagerReplicas {
        match &mut self.managers {
            Managers::Replicas { set, .. } => set,
            Managers::Local { .. } => panic!("a replica fault without replicas"),
        }
    }

    /// Starts replica `i` again, keeping the log of the incarnation that ended.
    fn restart_replica(&mut self, i: usize, why: &str) {
        let at = self.started.elapsed();
        if let Managers::Replicas { set, earlier } = &mut self.managers {
            earlier.push((
                format!("replica-{} until {why} at {:.1} s", i + 1, at.as_secs_f64()),
                set.process(i).logs(),
            ));
            set.restart(i);
        }
    }

    /// Every replica must be running between faults: one that is not exited on its own. It
    /// is counted and started again, so that the soak goes on.
    fn check_replicas(&mut self) {
        let Managers::Replicas { set, .. } = &mut self.managers else {
            return;
        };
        let down: Vec<usize> = (0..set.len()).filter(|&i| !set.is_running(i)).collect();
        for i in down {
            let what = format!(
                "replica-{} exited on its own (found at {:.1} s)",
                i + 1,
                self.started.elapsed().as_secs_f64()
            );
            eprintln!("soak: {what}");
            self.crashes.push(what);
            self.restart_replica(i, "its exit");
        }
    }

    fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        self.check_replicas();
        match fault {
            Fault::RestartManager => match &mut self.managers {
                Managers::Local {
                    manager,
                    port,
                    data,
                    ..
                } => {
                    let mut m = manager.take().expect("manager");
                    m.proc.signal("TERM");
                    m.proc.wait_exit(START);
                    *manager = Some(Manager::start(&self.pki, *port, data.path()));
                }
                Managers::Replicas { set, .. } => {
                    let i = rng.index(set.len());
                    if !set.stop(i) {
                        let what = format!(
                            "replica-{} did not exit 0 on SIGTERM (at {:.1} s)",
                            i + 1,
                            self.started.elapsed().as_secs_f64()
                        );
                        eprintln!("soak: {what}");
                        self.crashes.push(what);
                    }
                    // How the stop went, phase by phase, and whether the grace ran out: a
                    // replica stopping under load says so here.
                    let logs = set.process(i).logs();
                    for l in logs
                        .lines()
                        .filter(|l| l.contains("manager stopped") || l.contains("exiting anyway"))
                    {
                        eprintln!("soak: replica-{}: {l}", i + 1);
                    }
                    self.restart_replica(i, "SIGTERM");
                }
            },
            Fault::KillSessionReplica => {
                self.wait_connected();
                let Some(h) = poll_until_within(Duration::from_secs(30), || self.holder()) else {
                    eprintln!("soak: no replica says it holds the session; nothing killed");
                    return;
                };
                let t0 = Instant::now();
                self.replica_set().kill(h);
                // Until another replica holds it (the node reconnects at once to the next
                // address), or a minute.
                let moved = poll_until_within(Duration::from_secs(60), || {
                    self.holder().filter(|&j| j != h)
                });
                eprintln!(
                    "soak: {} (replica-{}): {}",
                    fault.name(true),
                    h + 1,
                    match moved {
                        Some(j) => format!("replica-{} holds it after {:?}", j + 1, t0.elapsed()),
                        None => "no other replica holds it within 60 s".to_owned(),
                    }
                );
                self.restart_replica(h, "kill -9");
            }
            Fault::KillOtherReplica => {
                self.wait_connected();
                let Some(h) = poll_until_within(Duration::from_secs(30), || self.holder()) else {
                    eprintln!("soak: no replica says it holds the session; nothing killed");
                    return;
                };
                let n = self.manager_ports().len();
                let others: Vec<usize> = (0..n).filter(|&i| i != h).collect();
                let victim = others[rng.index(others.len())];
                self.replica_set().kill(victim);
                // Until the holder no longer lists it: its lease ended.
                let gone = format!("127.0.0.1:{}", self.manager_ports()[victim]);
                let holder_port = self.manager_ports()[h];
                let left = poll_until_within(LEASE_TTL + Duration::from_secs(15), || {
                    let v = self.manager_get_on(holder_port, "/api/v1/replicas")?;
                    v["replicas"]
                        .as_array()?
                        .iter()
                        .all(|r| r["address"] != gone.as_str())
                        .then_some(())
                });
                if left.is_none() {
                    eprintln!(
                        "soak: replica-{} still listed by replica-{} {:?} after its kill",
                        victim + 1,
                        h + 1,
                        LEASE_TTL + Duration::from_secs(15)
                    );
                }
                self.restart_replica(victim, "kill -9");
            }
            Fault::KillRunner => {
                let i = rng.index(self.runners.len());
                if let Some(mut p) = self.runners[i].1.take() {
                    p.kill();
                }
                let name = self.runners[i].0.clone();
                self.runners[i].1 = Some(self.spawn_runner(&name));
            }
            Fault::PartitionFromManager | Fault::PartitionFromEtcd => {
                let active = self.wait_connected();
                let Some(i) = self.core_of(&active) else {
                    return;
                };
                let paths: Vec<&TcpProxy> = if fault == Fault::PartitionFromManager {
                    self.cores[i].to_manager.iter().collect()
                } else {
                    vec![&self.cores[i].to_etcd]
                };
                for p in &paths {
                    p.cut_blackhole();
                }
                // Until another node holds the session (or, if none can, a minute).
                let moved = poll_until_within(Duration::from_secs(60), || {
                    let now = self.active_now()?;
                    (now != active).then_some(())
                });
                for p in &paths {
                    p.restore();
                }
                if moved.is_none() {
                    eprintln!(
                        "soak: cut {} ({active}); the manager now shows {:?}",
                        self.cores[i].name,
                        self.manager_get(&format!("/api/v1/clusters/{CLUSTER}"))
                            .map(|v| v["active"].clone())
                    );
                    for c in &self.cores {
                        if let Some(p) = &c.proc {
                            let logs = p.logs();
                            let tail: Vec<&str> = logs
                                .lines()
                                .filter(|l| !l.contains("service shell") && !l.contains("DBG"))
                                .rev()
                                .take(40)
                                .collect();
                            let manager_paths: Vec<String> =
                                c.to_manager.iter().map(TcpProxy::endpoint).collect();
                            eprintln!(
                                "---- {} (port {}, manager paths {}, etcd path {}) ----",
                                c.name,
                                c.port,
                                manager_paths.join(" "),
                                c.to_etcd.endpoint()
                            );
                            for l in tail.iter().rev() {
                                eprintln!("{l}");
                            }
                        }
                    }
                }
                eprintln!(
                    "soak: {} ({active}): {}",
                    fault.name(self.cfg.replicas()),
                    if moved.is_some() {
                        "another node took over"
                    } else {
                        "no other node took over within 60 s"
                    }
                );
            }
            Fault::StopActive | Fault::KillActive | Fault::FreezeActive => {
                let active = self.wait_connected();
                let Some(i) = self.core_of(&active) else {
                    return;
                };
                let proc = self.cores[i].proc.as_mut().expect("core running");
                match fault {
                    Fault::StopActive => {
                        proc.signal("TERM");
                        proc.wait_exit(Duration::from_secs(90));
                        self.spawn_core(i);
                    }
                    Fault::KillActive => {
                        proc.kill();
                        self.spawn_core(i);
                    }
                    _ => {
                        proc.signal("STOP");
                        std::thread::sleep(self.cfg.lease_ttl + Duration::from_secs(1));
                        proc.signal("CONT");
                    }
                }
            }
        }
    }

    /// The warnings and errors of every process (and of the replicas' earlier incarnations),
    /// printed; every replica's whole log is also written to a directory that is kept, named.
    fn tell_logs(&self) {
        let filter = |logs: &str| -> Vec<String> {
            logs.lines()
                .filter(|l| l.contains(" WRN ") || l.contains(" ERR ") || l.contains("dispatch"))
                .take(300)
                .map(str::to_owned)
                .collect()
        };
        let mut all: Vec<(String, String)> = self
            .cores
            .iter()
            .filter_map(|c| c.proc.as_ref().map(|p| (c.name.to_owned(), p.logs())))
            .chain(
                self.runners
                    .iter()
                    .filter_map(|(n, p)| p.as_ref().map(|p| (n.clone(), p.logs()))),
            )
            .collect();
        if let Managers::Replicas { set, earlier } = &self.managers {
            all.extend(earlier.iter().cloned());
            all.extend((0..set.len()).map(|i| {
                (
                    format!("replica-{} (last incarnation)", i + 1),
                    set.process(i).logs(),
                )
            }));
            let kept = std::env::temp_dir().join(format!(
                "autogate-soak-{}-{}",
                self.cfg.seed,
                std::process::id()
            ));
            let written = std::fs::create_dir_all(&kept).and_then(|()| {
                for (n, (label, logs)) in all.iter().enumerate() {
                    let file = label.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
                    std::fs::write(kept.join(format!("{n:02}-{file}.log")), logs)?;
                }
                Ok(())
            });
            match written {
                Ok(()) => eprintln!("soak: every log written to {}", kept.display()),
                Err(e) => eprintln!("soak: cannot write the logs to {}: {e}", kept.display()),
            }
        }
        // What the nodes said about it (earlier incarnations of a restarted node are gone with
        // their logs; the replicas' are kept).
        for (name, logs) in &all {
            eprintln!("---- {name}: warnings and errors ----");
            for l in filter(logs) {
                eprintln!("{l}");
            }
        }
    }
}

/// `manager cluster add` of the soak's cluster on the first replica, then waits until every
/// replica lists it (a core node may dial any of them).
fn register_on_replicas(set: &ManagerReplicas, pki: &Pki) {
    let certs: Vec<String> = CORES
        .iter()
        .map(|n| pki.path(&format!("{n}.pem")))
        .collect();
    let mut args = vec!["cluster", "add", CLUSTER, "--state", "enabled"];
    for c in &certs {
        args.push("--cert");
        args.push(c);
    }
    let out = set.cli(0, &args);
    assert_eq!(
        out.code(),
        Some(0),
        "cluster add {CLUSTER} on replica-1:\n{}{}",
        out.stdout,
        out.stderr
    );
    for i in 0..set.len() {
        poll_until(
            &format!("replica-{} to list {CLUSTER}", i + 1),
            Duration::from_secs(30),
            || set.get(i, &format!("/api/v1/clusters/{CLUSTER}")),
        );
    }
}

/// Polls `f` every 100 ms until it answers or `within` passes.
fn poll_until_within<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One run through the manager with an `Idempotency-Key`, posted to `urls[first]` and sent
/// again under the key while the manager cannot be reached or says it is stopping (up to
/// 120 s) — to the next of `urls` each time, so a replica that is down is passed over.
fn call_once(
    client: &reqwest::Client,
    urls: &[String],
    first: usize,
    token: &str,
    tag: &str,
    cmd: &str,
) -> Told {
    let body = json!({"inputs": {"cmd": cmd}, "timeout_ms": 90_000}).to_string();
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut attempt = first;
    loop {
        let url = &urls[attempt % urls.len()];
        let req = client
            .post(url)
            .bearer_auth(token)
            .header("idempotency-key", tag)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(Duration::from_secs(100))
            .body(body.clone());
        let got = crate::http::block_on(async move {
            let resp = req.send().await.map_err(|e| crate::http::error_text(&e))?;
            let status = resp.status().as_u16();
            let retry = resp.headers().contains_key(reqwest::header::RETRY_AFTER);
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| crate::http::error_text(&e))?;
            Ok::<_, String>((status, retry, String::from_utf8_lossy(&bytes).into_owned()))
        });
        match got {
            Ok((200, _, _)) => return Told::Completed,
            // The manager is stopping; the run goes on, and its key gets the answer later.
            Ok((504, true, _)) if Instant::now() < give_up => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok((status, _, text)) => {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["error"]["data"]["reason"] == "interrupted" {
                    return Told::Interrupted;
                }
                let message = v["error"]["message"].as_str().unwrap_or(&text).to_owned();
                let message = if urls.len() > 1 {
                    format!("{message} (from {url})")
                } else {
                    message
                };
                if status == 504 {
                    return Told::Unanswered(message);
                }
                return Told::Failed(status, message);
            }
            Err(e) if Instant::now() < give_up => {
                let _ = e;
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Told::Unanswered(e),
        }
    }
}

/// Runs a soak and reports it.
pub fn run(cfg: SoakConfig) -> SoakReport {
    let started = Instant::now();
    let mut world = World::start(cfg.clone());
    let mut rng = Rng::new(cfg.seed);
    let file = world.dirs.path().join("executions");
    let token = world.token().expect("the manager's admin token");
    let tls = autogate_tls::client_config(
        autogate_tls::Roots::File(PathBuf::from(world.pki.path("ca.pem"))),
        None,
        false,
    )
    .expect("TLS");
    let client = crate::http::build(crate::http::builder().use_preconfigured_tls((*tls).clone()))
        .expect("client");
    let urls: Vec<String> = world
        .manager_ports()
        .into_iter()
        .map(|port| {
            format!("https://127.0.0.1:{port}/api/v1/clusters/{CLUSTER}/services/shell/run")
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let callers: Vec<_> = (0..cfg.callers)
        .map(|c| {
            let (client, urls, token, stop, calls, file) = (
                client.clone(),
                urls.clone(),
                token.clone(),
                stop.clone(),
                calls.clone(),
                file.clone(),
            );
            let mut pace = Rng::new(cfg.seed.wrapping_add(c as u64 + 1));
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("c{c}-{n}");
                    n += 1;
                    // 0–300 ms of work, so that runs are in flight when faults hit.
                    let work = pace.below(300);
                    // The replica this run goes to first (one manager: no draw, so the local
                    // soak keeps its pacing for a seed).
                    let first = if urls.len() > 1 {
                        pace.index(urls.len())
                    } else {
                        0
                    };
                    let cmd = format!("echo {tag} >> {f}; sleep 0.{work:03}", f = file.display());
                    let t0 = Instant::now();
                    let told = call_once(&client, &urls, first, &token, &tag, &cmd);
                    calls.lock().expect("calls").push(Call {
                        tag,
                        told,
                        latency: t0.elapsed(),
                    });
                }
            })
        })
        .collect();

    let mut faults = BTreeMap::new();
    let mut kinds: Vec<Fault> = if cfg.distributed {
        vec![
            Fault::StopActive,
            Fault::KillActive,
            Fault::FreezeActive,
            Fault::KillRunner,
            Fault::RestartManager,
            Fault::PartitionFromManager,
            Fault::PartitionFromEtcd,
        ]
    } else {
        vec![
            Fault::StopActive,
            Fault::KillActive,
            Fault::FreezeActive,
            Fault::RestartManager,
            Fault::PartitionFromManager,
            Fault::PartitionFromEtcd,
        ]
    };
    if cfg.replicas() {
        kinds.extend([Fault::KillSessionReplica, Fault::KillOtherReplica]);
    }
    for _ in 0..cfg.faults {
        // Some calm between faults, so that runs complete and the primary takes the role back.
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        let fault = kinds[rng.index(kinds.len())];
        let t0 = Instant::now();
        world.inject(fault, &mut rng);
        eprintln!(
            "soak: {} injected in {:?}",
            fault.name(cfg.replicas()),
            t0.elapsed()
        );
        *faults.entry(fault).or_insert(0) += 1;
        world.wait_connected();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.join();
    }
    world.check_replicas();
    // Programs of a lost node may still be finishing: let them, before counting.
    std::thread::sleep(Duration::from_secs(1));
    let sessions = match world.manager_get(&format!("/api/v1/clusters/{CLUSTER}/sessions")) {
        Some(Value::Array(a)) => a,
        Some(Value::Object(mut o)) => match o.remove("sessions") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let calls = std::mem::take(&mut *calls.lock().expect("calls"));
    let mut report = check(&cfg, &calls, &file, &sessions);
    report.faults = faults;
    report.crashes = std::mem::take(&mut world.crashes);
    report.elapsed = started.elapsed();
    if report.violations() > 0 {
        world.tell_logs();
    }
    report
}

/// The checker: what callers were told against the executions in `file`.
fn check(cfg: &SoakConfig, calls: &[Call], file: &Path, sessions: &[Value]) -> SoakReport {
    let mut executed: BTreeMap<String, usize> = BTreeMap::new();
    for l in std::fs::read_to_string(file).unwrap_or_default().lines() {
        *executed.entry(l.to_owned()).or_default() += 1;
    }
    let mut r = SoakReport {
        config: cfg.clone(),
        faults: BTreeMap::new(),
        runs: calls.len(),
        completed: 0,
        interrupted: 0,
        failed: Vec::new(),
        unanswered: Vec::new(),
        executed_twice: Vec::new(),
        executed_while_failed: Vec::new(),
        completed_not_executed: Vec::new(),
        overlapping_sessions: 0,
        sessions: sessions.len(),
        crashes: Vec::new(),
        latencies: Vec::new(),
        gaps: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for c in calls {
        let n = executed.get(&c.tag).copied().unwrap_or(0);
        if n > 1 {
            r.executed_twice.push(format!("{} ({n} times)", c.tag));
        }
        match &c.told {
            Told::Completed => {
                r.completed += 1;
                r.latencies.push(c.latency.as_secs_f64() * 1000.0);
                if n == 0 {
                    r.completed_not_executed.push(c.tag.clone());
                }
            }
            Told::Interrupted => r.interrupted += 1,
            Told::Failed(status, m) => {
                r.failed.push((*status, format!("{}: {m}", c.tag)));
                if n > 0 {
                    r.executed_while_failed.push(c.tag.clone());
                }
            }
            Told::Unanswered(m) => {
                r.unanswered.push(format!("{}: {m}", c.tag));
                if n > 0 {
                    r.executed_while_failed.push(c.tag.clone());
                }
            }
        }
    }
    // Sessions: sorted by start, each must end before the next begins; the gaps between them.
    let ts = |v: &Value| v.as_str().map(str::to_owned);
    let mut list: Vec<(String, Option<String>)> = sessions
        .iter()
        .filter_map(|s| Some((ts(&s["connected_at"])?, ts(&s["disconnected_at"]))))
        .collect();
    list.sort();
    for pair in list.windows(2) {
        match &pair[0].1 {
            Some(end) if *end <= pair[1].0 => {
                if let (Some(a), Some(b)) = (parse_ms(end), parse_ms(&pair[1].0)) {
                    // A soak across midnight loses that one gap rather than inventing one.
                    if b >= a {
                        r.gaps.push(b - a);
                    }
                }
            }
            _ => r.overlapping_sessions += 1,
        }
    }
    r
}

/// Milliseconds of an RFC 3339 UTC timestamp with milliseconds (`…T12:34:56.789Z`), since
/// midnight: enough for gaps within one soak.
fn parse_ms(t: &str) -> Option<f64> {
    let time = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = time.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}
