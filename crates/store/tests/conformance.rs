//! Conformance suite: the same checks against every backend — memory, local (redb file), etcd
//! over plain text, etcd over TLS with server verification only, and etcd with mutual TLS — so
//! code written against one backend behaves the same on the others. Real etcd processes are
//! started by `autogate-testkit` with certificates minted for the test.
//!
//! Nothing sleeps and hopes: waits poll with deadlines, and "no further event" is checked by
//! writing a sentinel key and expecting it to be the next event.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_store::{
    open, Compare, CompareOp, EtcdOptions, EtcdTls, EventKind, Store, StoreError, StoreOptions,
    Txn, TxnOp, TxnOpResponse, WatchEvent, WatchStream,
};
use autogate_testkit::certs::TestPki;
use autogate_testkit::etcd::EtcdServer;
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(15);
const TTL: Duration = Duration::from_secs(2);

type Dyn = Arc<dyn Store>;

/// Polls `f` until it returns `Some`, failing the test after `deadline`.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Err(_) => panic!("no watch event within {DEADLINE:?}"),
        Ok(None) => panic!("watch stream ended"),
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(Some(Ok(event))) => event,
    }
}

fn summary(events: &[WatchEvent]) -> Vec<(EventKind, String)> {
    events.iter().map(|e| (e.kind, e.kv.key.clone())).collect()
}

async fn kv_basics(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    let r1 = s.put(&k("b"), b"2".to_vec(), None).await.unwrap();
    let r2 = s.put(&k("a"), b"1".to_vec(), None).await.unwrap();
    let r3 = s.put(&k("c/d"), b"3".to_vec(), None).await.unwrap();
    assert!(r1 < r2 && r2 < r3, "revisions increase: {r1} {r2} {r3}");
    s.put(
        &format!("{}x", p.trim_end_matches('/')),
        b"outside".to_vec(),
        None,
    )
    .await
    .unwrap();

    let a = s.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version,
            a.lease
        ),
        (&b"1"[..], r2, r2, 1, 0)
    );
    let r4 = s.put(&k("a"), b"1b".to_vec(), None).await.unwrap();
    let a = s.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (r2, r4, 2),
        "update keeps create revision"
    );
    assert_eq!(s.get(&k("missing")).await.unwrap(), None);

    let keys: Vec<_> = s
        .list(p)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        vec![k("a"), k("b"), k("c/d")],
        "list is sorted and bounded by the prefix"
    );
    let status = s.status().await.unwrap();
    assert!(status.revision >= r4);
    assert_eq!(status.backend, s.backend());
}

async fn deletes(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    for n in ["one", "dir/a", "dir/b", "dirx"] {
        s.put(&k(n), b"v".to_vec(), None).await.unwrap();
    }
    assert!(s.delete(&k("one")).await.unwrap());
    assert!(
        !s.delete(&k("one")).await.unwrap(),
        "second delete finds nothing"
    );
    assert_eq!(s.delete_prefix(&k("dir/")).await.unwrap(), 2);
    assert_eq!(s.delete_prefix(&k("dir/")).await.unwrap(), 0);
    let keys: Vec<_> = s
        .list(p)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec![k("dirx")]);
}

async fn transactions(s: &Dyn, p: &str) {
    let leader = format!("{p}leader");
    let work = format!("{p}work");

    // Create-if-absent.
    let claim = Txn::new()
        .when([Compare::missing(&leader)])
        .and_then([TxnOp::put(&leader, "node-1")]);
    let first = s.txn(claim.clone()).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.responses, vec![TxnOpResponse::Put]);
    let term = s.get(&leader).await.unwrap().unwrap().create_revision;
    assert_eq!(term, first.revision);
    assert!(
        !s.txn(claim).await.unwrap().succeeded,
        "second claim must fail"
    );

    // Fencing by create revision: works while the key is the same incarnation...
    let fenced = |value: &str| {
        Txn::new()
            .when([Compare::create_revision(&leader, CompareOp::Equal, term)])
            .and_then([TxnOp::put(&work, value.to_owned())])
            .or_else([TxnOp::get(&leader)])
    };
    let ok = s.txn(fenced("w1")).await.unwrap();
    assert!(ok.succeeded);
    assert_eq!(
        s.get(&work).await.unwrap().unwrap().mod_revision,
        ok.revision
    );

    // ...and fails once it was deleted and re-created, even with the same value.
    s.delete(&leader).await.unwrap();
    s.put(&leader, b"node-1".to_vec(), None).await.unwrap();
    let stale = s.txn(fenced("w2")).await.unwrap();
    assert!(!stale.succeeded);
    match &stale.responses[..] {
        [TxnOpResponse::Get(kvs)] => assert!(kvs[0].create_revision > term),
        other => panic!("unexpected failure responses {other:?}"),
    }
    assert_eq!(
        s.get(&work).await.unwrap().unwrap().value,
        b"w1",
        "fenced write must not apply"
    );

    // Value, version and mod-revision compares; several ops share one revision.
    let kv = s.get(&work).await.unwrap().unwrap();
    let multi = Txn::new()
        .when([
            Compare::value(&work, CompareOp::Equal, "w1"),
            Compare::version(&work, CompareOp::Equal, kv.version),
            Compare::mod_revision(&work, CompareOp::Less, kv.mod_revision + 1),
        ])
        .and_then([
            TxnOp::put(format!("{p}m/1"), "x"),
            TxnOp::put(format!("{p}m/2"), "y"),
            TxnOp::get_prefix(format!("{p}m/")),
            TxnOp::delete_prefix(format!("{p}gone/")),
        ]);
    let resp = s.txn(multi).await.unwrap();
    assert!(resp.succeeded);
    match &resp.responses[..] {
        [TxnOpResponse::Put, TxnOpResponse::Put, TxnOpResponse::Get(kvs), TxnOpResponse::Delete { deleted: 0 }] =>
        {
            assert_eq!(kvs.len(), 2, "a get sees the puts before it");
            assert!(kvs.iter().all(|kv| kv.mod_revision == resp.revision));
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let missing_value =
        Txn::new().when([Compare::value(format!("{p}nope"), CompareOp::NotEqual, "x")]);
    assert!(
        !s.txn(missing_value).await.unwrap().succeeded,
        "value compare on a missing key is false"
    );
}

async fn watch_from_past(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    let start = s.put(&k("a"), b"1".to_vec(), None).await.unwrap();
    s.put(
        &format!("{}-elsewhere", p.trim_end_matches('/')),
        b"x".to_vec(),
        None,
    )
    .await
    .unwrap();
    s.put(&k("b"), b"1".to_vec(), None).await.unwrap();
    s.put(&k("a"), b"2".to_vec(), None).await.unwrap();
    // Other checks write concurrently, so the delete's revision is taken from its own response.
    let del_rev = s
        .txn(Txn::new().and_then([TxnOp::delete(k("b"))]))
        .await
        .unwrap()
        .revision;

    let mut w = s.watch(p, Some(start)).await.unwrap();
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(next_event(&mut w).await);
    }
    assert_eq!(
        summary(&events),
        vec![
            (EventKind::Put, k("a")),
            (EventKind::Put, k("b")),
            (EventKind::Put, k("a")),
            (EventKind::Delete, k("b"))
        ]
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0].kv.mod_revision < w[1].kv.mod_revision),
        "revision order"
    );
    assert_eq!(events[0].kv.mod_revision, start);
    assert_eq!(events[2].kv.value, b"2");
    assert_eq!(
        events[3].kv.mod_revision, del_rev,
        "a delete carries its own revision"
    );

    // Live events follow the replayed ones.
    s.put(&k("c"), b"1".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.key, k("c"));
}

async fn watch_from_now(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    s.put(&k("before"), b"1".to_vec(), None).await.unwrap();
    let mut w = s.watch(p, None).await.unwrap();
    s.put(&k("after"), b"1".to_vec(), None).await.unwrap();
    s.delete(&k("before")).await.unwrap();
    s.put(&k("sentinel"), b"1".to_vec(), None).await.unwrap();
    let events = vec![
        next_event(&mut w).await,
        next_event(&mut w).await,
        next_event(&mut w).await,
    ];
    assert_eq!(
        summary(&events),
        vec![
            (EventKind::Put, k("after")),
            (EventKind::Delete, k("before")),
            (EventKind::Put, k("sentinel"))
        ]
    );
    // Dropping the stream cancels the watch; the store keeps working.
    drop(w);
    s.put(&k("later"), b"1".to_vec(), None).await.unwrap();
}

async fn lease_expiry(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    let lease = s.grant(TTL).await.unwrap();
    let ttl = s.time_to_live(lease).await.unwrap().unwrap();
    assert!(ttl <= TTL && ttl > Duration::ZERO, "ttl {ttl:?}");
    s.put(&k("a"), b"1".to_vec(), Some(lease)).await.unwrap();
    s.put(&k("b"), b"1".to_vec(), Some(lease)).await.unwrap();
    s.put(&k("keep"), b"1".to_vec(), None).await.unwrap();
    assert_eq!(s.get(&k("a")).await.unwrap().unwrap().lease, lease);
    let mut w = s.watch(p, None).await.unwrap();

    poll("lease keys to expire", DEADLINE, || async {
        s.get(&k("a")).await.unwrap().is_none().then_some(())
    })
    .await;
    let events = vec![next_event(&mut w).await, next_event(&mut w).await];
    let mut deleted = summary(&events);
    deleted.sort();
    assert_eq!(
        deleted,
        vec![(EventKind::Delete, k("a")), (EventKind::Delete, k("b"))]
    );
    assert_eq!(
        events[0].kv.mod_revision, events[1].kv.mod_revision,
        "one lease ends in one revision"
    );
    assert!(s.get(&k("keep")).await.unwrap().is_some());
    assert_eq!(s.time_to_live(lease).await.unwrap(), None);
    assert_eq!(
        s.keep_alive(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
}

async fn lease_keep_alive_extends(s: &Dyn, p: &str) {
    let key = format!("{p}held");
    let lease = s.grant(TTL).await.unwrap();
    s.put(&key, b"1".to_vec(), Some(lease)).await.unwrap();
    let started = Instant::now();
    // Renew for twice the TTL; the key must survive throughout.
    while started.elapsed() < TTL * 2 {
        assert_eq!(s.keep_alive(lease).await.unwrap(), TTL);
        assert!(
            s.get(&key).await.unwrap().is_some(),
            "key vanished after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(TTL / 4).await;
    }
    assert!(s.time_to_live(lease).await.unwrap().is_some());
    s.revoke(lease).await.unwrap();
}

async fn lease_revoke(s: &Dyn, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    let lease = s.grant(Duration::from_secs(30)).await.unwrap();
    s.put(&k("a"), b"1".to_vec(), Some(lease)).await.unwrap();
    // Moving a key off the lease unbinds it.
    s.put(&k("moved"), b"1".to_vec(), Some(lease))
        .await
        .unwrap();
    s.put(&k("moved"), b"2".to_vec(), None).await.unwrap();
    let mut w = s.watch(p, None).await.unwrap();
    s.revoke(lease).await.unwrap();
    assert!(
        s.get(&k("a")).await.unwrap().is_none(),
        "revoke deletes bound keys at once"
    );
    assert!(s.get(&k("moved")).await.unwrap().is_some());
    let event = next_event(&mut w).await;
    assert_eq!((event.kind, event.kv.key), (EventKind::Delete, k("a")));
    assert_eq!(s.time_to_live(lease).await.unwrap(), None);
    assert_eq!(
        s.keep_alive(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
    assert_eq!(
        s.revoke(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
}

async fn lease_errors(s: &Dyn, p: &str) {
    let bogus = 0x7777_0000_1234;
    assert_eq!(
        s.keep_alive(bogus).await.unwrap_err(),
        StoreError::LeaseNotFound(bogus)
    );
    assert_eq!(s.time_to_live(bogus).await.unwrap(), None);
    let err = s
        .put(&format!("{p}x"), b"1".to_vec(), Some(bogus))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::LeaseNotFound(bogus));
}

/// Expired without renewal: `keep_alive` reports it and never revives it.
async fn lease_not_renewed(s: &Dyn, p: &str) {
    let lease = s.grant(TTL).await.unwrap();
    s.put(&format!("{p}k"), b"1".to_vec(), Some(lease))
        .await
        .unwrap();
    poll("unrenewed lease to end", DEADLINE, || async {
        s.time_to_live(lease).await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(
        s.keep_alive(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
}

/// A prefix holding more than the etcd client's default response limit (4 MiB) reads whole, in
/// a list and in a transaction: a new active node's dispatcher reads all jobs and results at
/// once, which a busy cluster's store can exceed.
async fn large_prefix(s: &Dyn, p: &str) {
    let value = vec![b'x'; 1024 * 1024];
    for i in 0..6 {
        s.put(&format!("{p}{i}"), value.clone(), None)
            .await
            .unwrap();
    }
    let listed = s.list(p).await.unwrap();
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|kv| kv.value.len() == value.len()));
    let r = s
        .txn(Txn::new().and_then([TxnOp::get_prefix(p)]))
        .await
        .unwrap();
    match &r.responses[0] {
        TxnOpResponse::Get(kvs) => assert_eq!(kvs.len(), 6),
        other => panic!("not a get: {other:?}"),
    }
}

/// Every check, concurrently, each under its own prefix.
async fn suite(s: Dyn) {
    tokio::join!(
        kv_basics(&s, "/conformance/kv/"),
        deletes(&s, "/conformance/del/"),
        transactions(&s, "/conformance/txn/"),
        watch_from_past(&s, "/conformance/watch-past/"),
        watch_from_now(&s, "/conformance/watch-now/"),
        lease_expiry(&s, "/conformance/lease-expiry/"),
        lease_keep_alive_extends(&s, "/conformance/lease-keep/"),
        lease_revoke(&s, "/conformance/lease-revoke/"),
        lease_not_renewed(&s, "/conformance/lease-unrenewed/"),
    );
    lease_errors(&s, "/conformance/lease-errors/").await;
    large_prefix(&s, "/conformance/large/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    let s = open(StoreOptions::Memory).await.unwrap();
    assert_eq!(s.backend(), "memory");
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(StoreOptions::Local {
        path: dir.path().join("data/gateway.db"),
    })
    .await
    .unwrap();
    assert_eq!(s.backend(), "local");
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let opts = StoreOptions::Local { path: path.clone() };

    let s = open(opts.clone()).await.unwrap();
    s.put("/r/plain", b"v1".to_vec(), None).await.unwrap();
    let lease = s.grant(Duration::from_secs(30)).await.unwrap();
    s.put("/r/leased", b"v2".to_vec(), Some(lease))
        .await
        .unwrap();
    s.put("/r/gone", b"x".to_vec(), None).await.unwrap();
    s.delete("/r/gone").await.unwrap();
    let before = s.list("/r/").await.unwrap();
    let revision = s.status().await.unwrap().revision;

    // A second open of a held file is refused with the path in the message.
    let err = open(opts.clone()).await.unwrap_err();
    match &err {
        StoreError::Config(msg) => assert!(msg.contains(&path.display().to_string()), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    drop(s);

    let s = open(opts.clone()).await.unwrap();
    assert_eq!(
        s.list("/r/").await.unwrap(),
        before,
        "keys and their metadata survive"
    );
    let status = s.status().await.unwrap();
    assert_eq!(status.revision, revision, "revision survives");
    assert_eq!(status.endpoints, path.display().to_string());
    assert!(
        s.time_to_live(lease).await.unwrap().is_some(),
        "leases survive with a fresh countdown"
    );
    assert_eq!(s.keep_alive(lease).await.unwrap(), Duration::from_secs(30));

    // History before the restart is compacted; watching from the next revision works.
    let mut old = s.watch("/r/", Some(revision)).await.unwrap();
    match tokio::time::timeout(DEADLINE, old.next()).await.unwrap() {
        Some(Err(StoreError::Compacted {
            requested,
            compacted,
        })) => {
            assert_eq!((requested, compacted), (revision, revision));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut w = s.watch("/r/", Some(revision + 1)).await.unwrap();
    let next = s.put("/r/new", b"v3".to_vec(), None).await.unwrap();
    assert_eq!(next, revision + 1, "revisions continue");
    assert_eq!(next_event(&mut w).await.kv.key, "/r/new");

    // A new lease id never collides with one from before the restart.
    let fresh = s.grant(Duration::from_secs(5)).await.unwrap();
    assert_ne!(fresh, lease);
    s.revoke(lease).await.unwrap();
    drop((s, w, old));

    let s = open(opts).await.unwrap();
    assert!(
        s.get("/r/leased").await.unwrap().is_none(),
        "a revoke is durable"
    );
    assert!(s.get("/r/new").await.unwrap().is_some());
}

fn etcd_options(endpoints: Vec<String>, tls: Option<EtcdTls>) -> StoreOptions {
    let mut o = EtcdOptions::new(endpoints);
    o.tls = tls;
    o.dial_timeout = Duration::from_secs(3);
    o.request_timeout = Duration::from_secs(3);
    StoreOptions::Etcd(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend() {
    let etcd = EtcdServer::start();
    let s = open(etcd_options(etcd.endpoints(), None)).await.unwrap();
    assert_eq!(s.backend(), "etcd");
    let status = s.status().await.unwrap();
    assert!(status.version.is_some());
    assert!(
        status.endpoints.contains(&etcd.endpoint()),
        "{}",
        status.endpoints
    );
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_tls_server_auth() {
    let pki = TestPki::new();
    let etcd = EtcdServer::start_tls(&pki, false);
    let tls = EtcdTls {
        ca_file: Some(pki.ca_cert.clone()),
        identity: None,
    };
    let s = open(etcd_options(etcd.endpoints(), Some(tls)))
        .await
        .unwrap();
    assert!(s.status().await.unwrap().endpoints.starts_with("https://"));
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_mutual_tls() {
    let pki = TestPki::new();
    let etcd = EtcdServer::start_tls(&pki, true);

    // Without a client certificate the server refuses, and the error says where and why.
    let ca_only = EtcdTls {
        ca_file: Some(pki.ca_cert.clone()),
        identity: None,
    };
    let err = open(etcd_options(etcd.endpoints(), Some(ca_only)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        msg.contains(&etcd.endpoint()),
        "error names the endpoint: {msg}"
    );
    assert!(
        msg.to_lowercase().contains("certificate"),
        "error says a certificate is missing: {msg}"
    );

    // A missing key file is a configuration error naming the file.
    let missing = pki.dir().join("nope.key");
    let bad = EtcdTls {
        ca_file: Some(pki.ca_cert.clone()),
        identity: Some((pki.client_cert.clone(), missing.clone())),
    };
    match open(etcd_options(etcd.endpoints(), Some(bad)))
        .await
        .unwrap_err()
    {
        StoreError::Config(msg) => assert!(msg.contains(&missing.display().to_string()), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }

    let (cert, key) = pki.issue_client("conformance");
    let tls = EtcdTls {
        ca_file: Some(pki.ca_cert.clone()),
        identity: Some((cert, key)),
    };
    let s = open(etcd_options(etcd.endpoints(), Some(tls)))
        .await
        .unwrap();
    suite(s).await;
}

#[tokio::test]
async fn etcd_unreachable_is_unavailable_within_dial_timeout() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let dial = Duration::from_secs(1);
    let mut o = EtcdOptions::new([endpoint.clone()]);
    o.dial_timeout = dial;
    let started = Instant::now();
    let err = open(StoreOptions::Etcd(o)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    assert!(
        elapsed < dial + Duration::from_millis(500),
        "took {elapsed:?}"
    );
}
