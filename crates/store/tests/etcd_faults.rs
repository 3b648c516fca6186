//! Fault behaviour of the etcd backend that high availability depends on: a hung member makes
//! calls fail with `Unavailable` within the request timeout (so a leader can step down in time)
//! and the store recovers when it answers again; a cluster keeps serving with one member down,
//! and reports `Unavailable` — also on open watches — once the quorum is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_store::{open, EtcdOptions, Store, StoreError, StoreOptions};
use autogate_testkit::etcd::{EtcdCluster, EtcdServer};
use futures::StreamExt;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(20);

async fn connect(endpoints: Vec<String>) -> Arc<dyn Store> {
    let mut o = EtcdOptions::new(endpoints);
    o.dial_timeout = Duration::from_secs(2);
    o.request_timeout = REQUEST_TIMEOUT;
    open(StoreOptions::Etcd(o)).await.unwrap()
}

/// Retries `put` until it succeeds, failing the test after `DEADLINE`.
async fn put_eventually(s: &Arc<dyn Store>, key: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        match s.put(key, b"v".to_vec(), None).await {
            Ok(_) => return,
            Err(StoreError::Unavailable(_)) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("put {key} did not recover: {e}"),
        }
    }
}

fn assert_unavailable_in_time<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, StoreError>,
    took: Duration,
) {
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{what}: {result:?}"
    );
    assert!(
        took < REQUEST_TIMEOUT + Duration::from_millis(700),
        "{what} took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_gives_unavailable_within_request_timeout_then_recovers() {
    let etcd = EtcdServer::start();
    let s = connect(etcd.endpoints()).await;
    let lease = s.grant(Duration::from_secs(30)).await.unwrap();
    s.keep_alive(lease).await.unwrap();

    etcd.pause();
    let started = Instant::now();
    let r = s.put("/faults/a", b"1".to_vec(), None).await;
    assert_unavailable_in_time("put", r, started.elapsed());
    let started = Instant::now();
    let r = s.keep_alive(lease).await;
    // The cached stream is retried once on a fresh one, so allow two timeouts here.
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "keep_alive: {r:?}"
    );
    assert!(
        started.elapsed() < REQUEST_TIMEOUT * 2 + Duration::from_millis(700),
        "keep_alive took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let r = s.status().await;
    assert_unavailable_in_time("status", r, started.elapsed());

    etcd.resume();
    put_eventually(&s, "/faults/a").await;
    s.keep_alive(lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_with_one_member_down_and_fails_without_quorum() {
    let mut etcd = EtcdCluster::start(3);
    let s = connect(etcd.endpoints()).await;
    s.put("/faults/x", b"1".to_vec(), None).await.unwrap();

    etcd.kill(0);
    put_eventually(&s, "/faults/y").await;
    // Once a leader is there, no call may fail because the client still knows the dead member.
    for i in 0..30 {
        s.put(&format!("/faults/burst/{i}"), b"v".to_vec(), None)
            .await
            .unwrap();
        assert!(s.get("/faults/x").await.unwrap().is_some());
    }

    let mut watch = s.watch("/faults/", None).await.unwrap();
    etcd.kill(1);
    // The last member has no leader: require-leader turns that into prompt errors rather than
    // stale reads, and the open watch is cancelled.
    let end = Instant::now() + DEADLINE;
    loop {
        match s.get("/faults/x").await {
            Err(StoreError::Unavailable(_)) => break,
            Ok(_) if Instant::now() < end => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("expected Unavailable after losing quorum, got {other:?}"),
        }
    }
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Err(StoreError::Unavailable(_)))) => {}
        other => panic!("expected the watch to fail with Unavailable, got {other:?}"),
    }

    etcd.restart(0);
    put_eventually(&s, "/faults/z").await;
}
