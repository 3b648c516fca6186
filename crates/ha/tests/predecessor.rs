//! A restarted core node's start-up check against a real etcd: it revokes the lease its previous
//! process left only while the store shows that lease holding the predecessor's election key or
//! node record, and never a lease of another node, host or cluster. Then the same through the
//! working directory: a driver records its lease in the state file before campaigning with it,
//! and after a crash the successor reads it back and clears it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use autogate_ha::{
    election_prefix, nodes_prefix, revoke_predecessor, HaDriver, HaOptions, Leadership,
    ProcessState, StateFile, WorkdirLock,
};
use autogate_store::{EtcdOptions, LeaseId, Store, StoreOptions};
use autogate_testkit::etcd::EtcdServer;
use tokio_util::task::TaskTracker;

const CLUSTER: &str = "cluster_1";

async fn open(endpoint: String) -> Arc<dyn Store> {
    autogate_store::open(StoreOptions::Etcd(EtcdOptions::new(vec![endpoint])))
        .await
        .unwrap()
}

fn previous(node_id: &str, lease: LeaseId) -> ProcessState {
    let mut p = ProcessState::new(node_id, CLUSTER);
    p.lease = Some(lease);
    p
}

/// A lease holding `<election>/<lease hex>` = `value`.
async fn candidate(store: &dyn Store, value: &str) -> LeaseId {
    let lease = store.grant(Duration::from_secs(30)).await.unwrap();
    let key = format!("{}/{lease:x}", election_prefix(CLUSTER));
    store
        .put(&key, value.as_bytes().to_vec(), Some(lease))
        .await
        .unwrap();
    lease
}

async fn alive(store: &dyn Store, lease: LeaseId) -> bool {
    store.time_to_live(lease).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_hosts_predecessors_lease_is_revoked() {
    let etcd = EtcdServer::start();
    let store = open(etcd.endpoint()).await;
    let me = "gw-1_0002";

    // The predecessor's election key, bound to the lease the state file names: revoked.
    let lease = candidate(&*store, "gw-1_0001").await;
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-1_0001", lease))
        .await
        .unwrap();
    assert_eq!(revoked, Some(lease));
    assert!(!alive(&*store, lease).await);
    let key = format!("{}/{lease:x}", election_prefix(CLUSTER));
    assert!(store.get(&key).await.unwrap().is_none());
    // Gone already: nothing to do.
    let again = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-1_0001", lease))
        .await
        .unwrap();
    assert_eq!(again, None);

    // A paused predecessor has no election key, only its node record under the lease.
    let paused = store.grant(Duration::from_secs(30)).await.unwrap();
    let record = format!("{}gw-1_0001", nodes_prefix(CLUSTER));
    store
        .put(&record, b"{}".to_vec(), Some(paused))
        .await
        .unwrap();
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-1_0001", paused))
        .await
        .unwrap();
    assert_eq!(revoked, Some(paused));
    assert!(!alive(&*store, paused).await);

    // The state file names a lease that now holds another node's key (a stale or edited file):
    // left alone.
    let other = candidate(&*store, "gw-1_0003").await;
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-1_0001", other))
        .await
        .unwrap();
    assert_eq!(revoked, None);
    assert!(alive(&*store, other).await);

    // A lease holding nothing of the predecessor's: left alone.
    let bare = store.grant(Duration::from_secs(30)).await.unwrap();
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-1_0001", bare))
        .await
        .unwrap();
    assert_eq!(revoked, None);
    assert!(alive(&*store, bare).await);

    // A predecessor of another host (a working directory copied to this machine) or of another
    // cluster: left alone, even with its key in place.
    let elsewhere = candidate(&*store, "gw-2_0001").await;
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &previous("gw-2_0001", elsewhere))
        .await
        .unwrap();
    assert_eq!(revoked, None);
    assert!(alive(&*store, elsewhere).await);
    let mut other_cluster = previous("gw-1_0001", elsewhere);
    other_cluster.cluster_id = "cluster_2".into();
    let revoked = revoke_predecessor(&*store, CLUSTER, me, &other_cluster)
        .await
        .unwrap();
    assert_eq!(revoked, None);
    assert!(alive(&*store, elsewhere).await);
}

fn options(node_id: &str) -> HaOptions {
    HaOptions {
        cluster_id: CLUSTER.into(),
        node_id: node_id.into(),
        is_primary: false,
        lease_ttl: Duration::from_secs(10),
        preempt_delay: Duration::from_secs(10),
        connect_grace: Duration::from_secs(15),
        max_transitions: 6,
        probe_window: Duration::ZERO,
        probe_interval: Duration::from_millis(200),
        advertise_address: None,
        version: "test".into(),
        name: None,
        state_file: None,
    }
}

/// A driver whose process "crashes" (its runtime is dropped with every task: no resignation, no
/// revoke, no more keep-alives; its lock released) leaves its lease in the state file; the next
/// process of the working directory revokes it, and a standby of another node is active long
/// before the 10 s TTL.
#[test]
fn the_state_file_names_the_lease_and_the_successor_clears_it() {
    let etcd = EtcdServer::start();
    let dir = tempfile_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let crashing = tokio::runtime::Runtime::new().unwrap();

    // The first process, on its own runtime: holds the directory, leads, records its lease.
    let (lock, first) = crashing.block_on(async {
        let (lock, before) = WorkdirLock::acquire(&dir, "server").await.unwrap();
        assert_eq!(before, None);
        let lock = Arc::new(lock);
        let tracker = TaskTracker::new();
        let store = open(etcd.endpoint()).await;
        let mut opts = options("gw-1_0001");
        opts.state_file = Some(StateFile::new(
            lock.clone(),
            ProcessState::new("gw-1_0001", CLUSTER),
        ));
        let first = HaDriver::start(store, opts, None, &tracker).unwrap();
        let mut lead = first.leadership();
        tokio::time::timeout(
            Duration::from_secs(10),
            lead.wait_for(|l| matches!(l, Leadership::Active { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        (lock, first)
    });
    let status = first.status();
    let lease = LeaseId::from_str_radix(status.lease_id.as_deref().unwrap(), 16).unwrap();
    // Recorded before the key was created, so by now for sure.
    let recorded: ProcessState =
        serde_json::from_slice(&std::fs::read(lock.state_path()).unwrap()).unwrap();
    assert_eq!(recorded.node_id, "gw-1_0001");
    assert_eq!(recorded.lease, Some(lease));

    // A standby of another host queues behind it.
    let standby = rt.block_on(async {
        let standby = HaDriver::start(
            open(etcd.endpoint()).await,
            options("gw-2_0001"),
            None,
            &TaskTracker::new(),
        )
        .unwrap();
        let mut lead = standby.leadership();
        tokio::time::timeout(
            Duration::from_secs(10),
            lead.wait_for(|l| {
                *l == Leadership::Standby {
                    leader: Some("gw-1_0001".into()),
                }
            }),
        )
        .await
        .unwrap()
        .unwrap();
        standby
    });

    // kill -9: every task of the first process ends where it stands, and its lock goes.
    crashing.shutdown_background();
    drop(first);
    drop(lock);
    let crashed = std::time::Instant::now();

    rt.block_on(async {
        let store = open(etcd.endpoint()).await;
        let (_lock, previous) = WorkdirLock::acquire(&dir, "server").await.unwrap();
        let previous = previous.unwrap();
        assert_eq!(previous.lease, Some(lease));
        let revoked = revoke_predecessor(&*store, CLUSTER, "gw-1_0002", &previous)
            .await
            .unwrap();
        assert_eq!(revoked, Some(lease));
        let mut lead = standby.leadership();
        tokio::time::timeout(
            Duration::from_secs(2),
            lead.wait_for(|l| matches!(l, Leadership::Active { .. })),
        )
        .await
        .expect("the standby takes over once the predecessor's lease is revoked")
        .unwrap();
        eprintln!(
            "predecessor's lease revoked → standby active {:?} after the crash (TTL 10 s)",
            crashed.elapsed()
        );
        standby.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!("autogate-ha-{}-{nanos}", std::process::id()))
}
