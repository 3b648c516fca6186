//! Several election drivers in one process against a real etcd: hand-over speed, lease expiry of
//! a frozen node, fencing, losing etcd, primary preference with its flap budget, and a 3-member
//! etcd losing one member and then its quorum. Measured figures are printed (`--nocapture`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use autogate_ha::{
    election_prefix, fenced_txn, FencedError, HaDriver, HaHandle, HaOptions, Leadership,
};
use autogate_store::{
    EtcdOptions, KeyValue, LeaseId, Revision, Store, StoreError, StoreOptions, StoreStatus, Txn,
    TxnOp, TxnResponse, WatchStream,
};
use autogate_testkit::etcd::{EtcdCluster, EtcdServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// A store whose keep-alives can be frozen (they hang, like a node whose renewals stop).
#[derive(Debug)]
struct Freezable {
    inner: Arc<dyn Store>,
    frozen: AtomicBool,
}

#[async_trait]
impl Store for Freezable {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.inner.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, start_revision).await
    }
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke(lease).await
    }
    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.inner.time_to_live(lease).await
    }
    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.inner.status().await
    }
}

type Changes = Arc<Mutex<Vec<(Instant, Leadership)>>>;

struct Node {
    id: String,
    handle: HaHandle,
    store: Arc<Freezable>,
    changes: Changes,
    api: tokio::task::JoinHandle<()>,
}

impl Node {
    fn active(&self) -> Option<u64> {
        match self.handle.current() {
            Leadership::Active { term } => Some(term),
            _ => None,
        }
    }

    /// When this node last started acting.
    fn started_at(&self) -> Option<Instant> {
        let changes = self.changes.lock().unwrap();
        changes
            .iter()
            .rev()
            .find(|(_, l)| matches!(l, Leadership::Active { .. }))
            .map(|(t, _)| *t)
    }

    /// When this node stopped acting after it last started.
    fn stopped_at(&self) -> Option<Instant> {
        let changes = self.changes.lock().unwrap();
        let last = changes
            .iter()
            .rposition(|(_, l)| matches!(l, Leadership::Active { .. }))?;
        changes.get(last + 1).map(|(t, _)| *t)
    }
}

async fn open(endpoints: Vec<String>) -> Arc<dyn Store> {
    let mut options = EtcdOptions::new(endpoints);
    options.request_timeout = Duration::from_secs(1);
    options.dial_timeout = Duration::from_secs(2);
    autogate_store::open(StoreOptions::Etcd(options))
        .await
        .unwrap()
}

/// Serves `GET /api/v1/health` with the node id, as the core node's API does; aborting the
/// task closes the port.
async fn health_server(id: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let id = id.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("{{\"node_id\":\"{id}\"}}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    });
    (address, task)
}

fn options(cluster: &str, name: &str) -> HaOptions {
    HaOptions {
        cluster_id: cluster.into(),
        node_id: format!("testhost_{name}"),
        is_primary: false,
        lease_ttl: Duration::from_secs(2),
        preempt_delay: Duration::from_secs(60),
        connect_grace: Duration::from_secs(60),
        max_transitions: 6,
        probe_window: Duration::ZERO,
        probe_interval: Duration::from_millis(500),
        advertise_address: None,
        version: "test".into(),
        name: None,
        state_file: None,
    }
}

async fn start(endpoints: Vec<String>, mut opts: HaOptions) -> Node {
    let store = Arc::new(Freezable {
        inner: open(endpoints).await,
        frozen: AtomicBool::new(false),
    });
    let (address, api) = health_server(opts.node_id.clone()).await;
    opts.advertise_address = Some(address);
    let id = opts.node_id.clone();
    let handle = HaDriver::start(store.clone(), opts, None, &TaskTracker::new()).unwrap();
    handle.set_manager_reachable(true);
    let changes: Changes = Arc::default();
    let mut rx = handle.leadership();
    let log = changes.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let l = rx.borrow_and_update().clone();
            log.lock().unwrap().push((Instant::now(), l));
        }
    });
    Node {
        id,
        handle,
        store,
        changes,
        api,
    }
}

async fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Index of the single active node, once there is exactly one.
async fn one_active(nodes: &[&Node], within: Duration) -> usize {
    poll("exactly one active node", within, || {
        let actives: Vec<usize> = (0..nodes.len())
            .filter(|i| nodes[*i].active().is_some())
            .collect();
        (actives.len() == 1).then(|| actives[0])
    })
    .await
}

fn elect_listen(cmd: std::process::Command, prefix: &str, expect: &str) -> String {
    let mut cmd = cmd;
    let mut child = cmd
        .args(["elect", "-l", prefix])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end && !seen.contains(expect) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_visible_to_etcdctl_and_fast_graceful_handover() {
    let etcd = EtcdServer::start();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(start(etcd.endpoints(), options("c1", name)).await);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let first = one_active(&refs, Duration::from_secs(10)).await;
    let term = nodes[first].active().unwrap();
    let out = elect_listen(etcd.etcdctl(), &election_prefix("c1"), &nodes[first].id);
    assert!(
        out.contains(&nodes[first].id),
        "etcdctl elect -l printed:\n{out}"
    );
    let status = nodes[first].handle.status();
    assert_eq!(
        status.active_node_id.as_deref(),
        Some(nodes[first].id.as_str())
    );
    assert_eq!(status.candidates.len(), 3);
    assert_eq!(status.term, Some(term));

    // Graceful stop of the active node.
    let t0 = Instant::now();
    nodes[first].handle.shutdown().await;
    let rest: Vec<&Node> = (0..3).filter(|i| *i != first).map(|i| &nodes[i]).collect();
    let next = one_active(&rest, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    println!("graceful hand-over: next node active {took:?} after shutdown() was called");
    assert!(
        took < Duration::from_millis(1_000),
        "hand-over took {took:?}"
    );
    assert!(rest[next].active().unwrap() > term);
    let out = elect_listen(etcd.etcdctl(), &election_prefix("c1"), &rest[next].id);
    assert!(out.contains(&rest[next].id), "{out}");
    // Resign without shutdown: the other standby takes over, the resigned node queues again.
    let t1 = Instant::now();
    rest[next].handle.resign();
    let other = 1 - next;
    poll("the other node active", Duration::from_secs(5), || {
        rest[other].active()
    })
    .await;
    println!("resign(): next node active after {:?}", t1.elapsed());
    assert!(rest[next].active().is_none());
    for n in &nodes {
        n.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_active_is_replaced_after_its_lease_and_its_fenced_writes_fail() {
    let etcd = EtcdServer::start();
    let a = start(etcd.endpoints(), options("c2", "a")).await;
    let b = start(etcd.endpoints(), options("c2", "b")).await;
    let nodes = [&a, &b];
    let first = one_active(&nodes, Duration::from_secs(10)).await;
    let (old, new) = (nodes[first], nodes[1 - first]);
    let (key, term) = old.handle.fence().unwrap();
    let ok = old
        .handle
        .fenced_txn(Txn::new().and_then([TxnOp::put("/autogate/c2/data/x", "1")]))
        .await
        .unwrap();
    assert!(ok.succeeded);

    let t0 = Instant::now();
    old.store.frozen.store(true, Ordering::SeqCst);
    poll("a new active node", Duration::from_secs(10), || {
        new.active()
    })
    .await;
    let takeover = t0.elapsed();
    let stopped = old.stopped_at().expect("old active stepped down");
    let started = new.started_at().unwrap();
    println!(
        "frozen keep-alives: old active stopped {:?} after the freeze, new active {takeover:?} after it (TTL 2 s)",
        stopped - t0
    );
    assert!(
        takeover <= Duration::from_millis(3_500),
        "takeover took {takeover:?}"
    );
    assert!(
        stopped < started,
        "old active still acting when the new one started"
    );
    // The stale leadership cannot write any more.
    let stale = fenced_txn(
        old.store.as_ref(),
        &key,
        term,
        Txn::new().and_then([TxnOp::put("/autogate/c2/data/x", "stale")]),
    )
    .await;
    assert_eq!(stale, Err(FencedError::Rejected { term }));
    let via_handle = old
        .handle
        .fenced_txn(Txn::new().and_then([TxnOp::put("/autogate/c2/data/x", "stale")]))
        .await;
    assert_eq!(via_handle, Err(FencedError::NotActive));
    assert!(
        new.handle
            .fenced_txn(Txn::new().and_then([TxnOp::put("/autogate/c2/data/x", "2")]))
            .await
            .unwrap()
            .succeeded
    );
    old.store.frozen.store(false, Ordering::SeqCst);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_stops_the_active_before_its_lease_can_expire() {
    let mut etcd = EtcdServer::start();
    let a = start(etcd.endpoints(), options("c3", "a")).await;
    poll("active", Duration::from_secs(10), || a.active()).await;
    // Let a keep-alive or two pass, then note the lease's earliest possible expiry.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = a.handle.status();
    let earliest_expiry =
        Instant::now() + Duration::from_millis(status.lease_ttl_remaining_ms.unwrap());
    let t0 = Instant::now();
    etcd.stop();
    poll("step-down", Duration::from_secs(5), || {
        a.active().is_none().then_some(())
    })
    .await;
    let stopped = a.stopped_at().unwrap();
    println!(
        "etcd killed: active stopped after {:?}; the lease could expire {:?} after the kill at the earliest",
        stopped - t0,
        earliest_expiry.saturating_duration_since(t0)
    );
    assert!(
        stopped < earliest_expiry,
        "stopped after the lease could have expired"
    );
    // etcd back: a new lease, a new key, active again.
    let t1 = Instant::now();
    etcd.restart();
    poll("active again", Duration::from_secs(15), || a.active()).await;
    println!(
        "etcd restarted: active again {:?} after restart began",
        t1.elapsed()
    );
    a.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_takes_over_once_healthy_and_the_flap_budget_pins() {
    let etcd = EtcdServer::start();
    // The preemption delay is applied by the active node (the cluster shares one setting).
    let mut o = options("c4", "secondary");
    o.max_transitions = 1;
    o.preempt_delay = Duration::from_millis(800);
    let s = start(etcd.endpoints(), o).await;
    poll("secondary active", Duration::from_secs(10), || s.active()).await;
    let primary_opts = |name: &str| {
        let mut p = options("c4", name);
        p.is_primary = true;
        p.preempt_delay = Duration::from_millis(800);
        p
    };
    let t0 = Instant::now();
    let p = start(etcd.endpoints(), primary_opts("p1")).await;
    poll("primary active", Duration::from_secs(10), || p.active()).await;
    let stopped = s.stopped_at().unwrap();
    let started = p.started_at().unwrap();
    println!(
        "primary preemption: active {:?} after the primary started (preempt delay 800 ms), hand-over gap {:?}",
        started - t0,
        started.saturating_duration_since(stopped)
    );
    assert!(
        stopped <= started,
        "overlap: secondary still active when the primary started"
    );
    assert!(s.active().is_none());
    // The primary goes away: the secondary leads again; a new primary comes, but the budget
    // (1 per hour) is used up, so the secondary stays.
    p.handle.shutdown().await;
    let s_handle = s.handle.clone();
    poll("secondary active again", Duration::from_secs(5), || {
        s.active().or_else(|| {
            eprintln!("{:?}", s_handle.status());
            None
        })
    })
    .await;
    let p2 = start(etcd.endpoints(), primary_opts("p2")).await;
    let end = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < end {
        assert!(
            s.active().is_some(),
            "flap budget did not pin the secondary"
        );
        assert!(p2.active().is_none());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.handle.status().preemptions_last_hour, 1);
    s.handle.shutdown().await;
    p2.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn three_member_etcd_survives_one_loss_and_recovers_from_quorum_loss() {
    let mut cluster = EtcdCluster::start(3);
    // A 6 s lease (window 4 s, renewals every 2 s) rides out an etcd leader election; 2 s
    // leases leave only 1 s, less than a member loss can take to be routed around.
    let opts = |name: &str| {
        let mut o = options("c5", name);
        o.lease_ttl = Duration::from_secs(6);
        o
    };
    let a = start(cluster.endpoints(), opts("a")).await;
    let b = start(cluster.endpoints(), opts("b")).await;
    let nodes = [&a, &b];
    let first = one_active(&nodes, Duration::from_secs(10)).await;
    let term = nodes[first].active().unwrap();
    // One member lost: no fail-over.
    cluster.kill(0);
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        assert_eq!(
            nodes[first].active(),
            Some(term),
            "fail-over with quorum intact"
        );
        assert!(nodes[1 - first].active().is_none());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quorum lost: nobody may act.
    let t0 = Instant::now();
    cluster.kill(1);
    poll("nobody active", Duration::from_secs(8), || {
        (a.active().is_none() && b.active().is_none()).then_some(())
    })
    .await;
    println!("quorum lost: nobody active after {:?}", t0.elapsed());
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(a.active().is_none() && b.active().is_none());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quorum back: exactly one.
    let t1 = Instant::now();
    cluster.restart(1);
    let (ha, hb) = (a.handle.clone(), b.handle.clone());
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        eprintln!("a: {:?}\nb: {:?}", ha.status(), hb.status());
    });
    one_active(&nodes, Duration::from_secs(20)).await;
    watchdog.abort();
    println!(
        "quorum back: one active {:?} after restart began",
        t1.elapsed()
    );
    cluster.restart(0);
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let n = nodes.iter().filter(|n| n.active().is_some()).count();
        assert!(n <= 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_active_is_proven_dead_by_probes() {
    let etcd = EtcdServer::start();
    let mut oa = options("c6", "a");
    oa.lease_ttl = Duration::from_secs(10);
    oa.probe_window = Duration::from_millis(300);
    let mut ob = oa.clone();
    ob.node_id = "testhost_b".into();
    // The would-be crashed node listens on a port we can close; start it first so it leads.
    let a = start(etcd.endpoints(), oa).await;
    poll("a active", Duration::from_secs(10), || a.active()).await;
    let b = start(etcd.endpoints(), ob).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(b.active().is_none());
    // "Crash" a: its keep-alives stop and its API port closes, as when the process dies.
    a.store.frozen.store(true, Ordering::SeqCst);
    a.api.abort();
    let t0 = Instant::now();
    poll("b active", Duration::from_secs(15), || b.active()).await;
    let took = t0.elapsed();
    println!("crashed active proven dead by probes: takeover after {took:?} (lease TTL 10 s)");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: not proven dead, lease expiry waited"
    );
    a.store.frozen.store(false, Ordering::SeqCst);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
