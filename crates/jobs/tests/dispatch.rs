//! The dispatcher and runners against a real etcd: many jobs over two runners, a runner lost
//! mid-job (retryable and not), a drained runner handing work back, a new dispatcher adopting
//! jobs in flight. Runners run here as tasks; the process-level tests live with the binary.
//! The queue timeout is tested on the memory store under Tokio's paused clock, so it costs no
//! real waiting.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use autogate_automation::{Automation, AutomationOptions, Features, KeySource, RunRequest};
use autogate_jobs::{
    model::JobState, plain_writer, DispatcherOptions, JobOutcome, Origin, RunnerOptions,
};
use autogate_resources::model::Kind;
use autogate_store::{EtcdOptions, Store, StoreOptions};
use autogate_testkit::etcd::EtcdServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CLUSTER: &str = "jobs-test";

async fn setup(etcd: &EtcdServer, dir: &std::path::Path) -> (Arc<dyn Store>, Automation) {
    let store = autogate_store::open(StoreOptions::Etcd(EtcdOptions::new(etcd.endpoints())))
        .await
        .unwrap();
    let automation = automation(&store, dir).await;
    (store, automation)
}

/// The facade over `store` with the `sh` executable object every test service uses.
async fn automation(store: &Arc<dyn Store>, dir: &std::path::Path) -> Automation {
    let automation = Automation::new(
        store.clone(),
        CLUSTER,
        AutomationOptions {
            work_dir: dir.join("runtime"),
            key: KeySource::Missing,
            features: Features::default(),
            output_limit: autogate_exec::runner::DEFAULT_OUTPUT_LIMIT,
        },
    );
    automation
        .create(
            Kind::ExecutableObject,
            json!({"name": "sh", "exec-command": "/bin/sh"}),
        )
        .await
        .unwrap();
    automation
}

async fn service(a: &Automation, name: &str, script: &str, retries: u32) {
    a.create(
        Kind::Service,
        json!({"name": name, "type": "executable", "executable-object": "sh",
               "arg-format": "-c {{.Value}}", "retries": retries,
               "env": {"MARK": script}}),
    )
    .await
    .unwrap();
}

fn runner(
    store: &Arc<dyn Store>,
    a: &Automation,
    id: &str,
    capacity: u32,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let opts = RunnerOptions {
        cluster_id: CLUSTER.into(),
        node_id: id.into(),
        name: None,
        host: "localhost".into(),
        capacity,
        labels: BTreeMap::new(),
        lease_ttl: Duration::from_secs(2),
        drain_grace: Duration::from_millis(300),
        metrics: Default::default(),
        workdir: None,
    };
    let (store, a, t) = (store.clone(), a.clone(), token.clone());
    let h = tokio::spawn(async move {
        autogate_jobs::runner::run(store, a, opts, t, &TaskTracker::new())
            .await
            .unwrap();
    });
    (token, h)
}

fn run_req(service: &str, cmd: &str) -> RunRequest {
    RunRequest {
        service: service.into(),
        set: vec![format!("cmd={cmd}")],
        ..Default::default()
    }
}

async fn dispatcher(
    store: &Arc<dyn Store>,
    token: &CancellationToken,
) -> autogate_jobs::Dispatcher {
    let (d, _deliveries) = autogate_jobs::start(
        store.clone(),
        DispatcherOptions {
            cluster_id: CLUSTER.into(),
            queue_timeout: Duration::from_secs(3),
            retention: Duration::from_secs(900),
        },
        plain_writer(store.clone()),
        token.clone(),
        &TaskTracker::new(),
    )
    .await
    .unwrap();
    d
}

async fn wait_runners(store: &Arc<dyn Store>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while autogate_jobs::list_runners(&**store, CLUSTER)
        .await
        .unwrap()
        .len()
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "runners did not register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_jobs_over_two_runners_each_run_once() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = setup(&etcd, dir.path()).await;
    service(&a, "noop", "x", 0).await;
    let log = dir.path().join("ran.log");
    let (_t1, _h1) = runner(&store, &a, "r1", 8);
    let (_t2, _h2) = runner(&store, &a, "r2", 8);
    wait_runners(&store, 2).await;
    let token = CancellationToken::new();
    let d = dispatcher(&store, &token).await;

    let mut waits = Vec::new();
    for i in 0..200 {
        let req = run_req("noop", &format!("echo {i} >> {}", log.display()));
        let (id, done) = d.submit(&a, req, Origin::Api).await.unwrap();
        waits.push((id, done));
    }
    let mut runners = BTreeSet::new();
    for (id, done) in waits {
        let f = tokio::time::timeout(Duration::from_secs(60), done)
            .await
            .expect("finished in time")
            .expect("dispatcher alive");
        assert_eq!(f.record.id, id);
        assert_eq!(f.record.state, JobState::Completed, "{:?}", f.record);
        assert_eq!(f.record.attempts.len(), 1, "one attempt: {:?}", f.record);
        match f.outcome {
            JobOutcome::Completed { result } => assert_eq!(result.return_code, 0),
            other => panic!("{other:?}"),
        }
        runners.insert(f.record.runner.clone().unwrap());
    }
    assert_eq!(runners.len(), 2, "both runners were used: {runners:?}");
    let ran = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = ran.lines().collect();
    let unique: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), 200, "every job ran exactly once");
    assert_eq!(unique.len(), 200);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_runner_retries_or_fails_and_records_attempts() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = setup(&etcd, dir.path()).await;
    service(&a, "retryable", "x", 1).await;
    service(&a, "once", "x", 0).await;
    let (_t1, h1) = runner(&store, &a, "doomed", 2);
    wait_runners(&store, 1).await;
    let token = CancellationToken::new();
    let d = dispatcher(&store, &token).await;
    let started = dir.path().join("started");
    let slow = format!("touch {}-$MARK; sleep 5; echo done", started.display());
    let (_, retry_done) = d
        .submit(
            &a,
            run_req("retryable", &slow.replace("$MARK", "a")),
            Origin::Api,
        )
        .await
        .unwrap();
    let (once_id, once_done) = d
        .submit(
            &a,
            run_req("once", &slow.replace("$MARK", "b")),
            Origin::Api,
        )
        .await
        .unwrap();
    // Both started on the doomed runner; then it dies without a word (its lease runs out).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(dir.path().join("started-a").exists() && dir.path().join("started-b").exists()) {
        assert!(tokio::time::Instant::now() < deadline, "jobs did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h1.abort();
    let (_t2, _h2) = runner(&store, &a, "survivor", 2);

    let once = tokio::time::timeout(Duration::from_secs(20), once_done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(once.record.state, JobState::Failed);
    assert_eq!(
        once.record.error.as_deref(),
        Some(format!("runner doomed lost while running job {once_id}").as_str())
    );
    let retry = tokio::time::timeout(Duration::from_secs(30), retry_done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        retry.record.state,
        JobState::Completed,
        "{:?}",
        retry.record
    );
    let attempts: Vec<_> = retry
        .record
        .attempts
        .iter()
        .map(|a| (a.runner.as_str(), a.outcome.clone().unwrap_or_default()))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, "doomed");
    assert!(
        attempts[0].1.starts_with("lost: runner doomed lost"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1], ("survivor", "completed".to_owned()));
    token.cancel();
}

#[tokio::test(start_paused = true)]
async fn no_runner_times_out_after_the_queue_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
    let a = automation(&store, dir.path()).await;
    service(&a, "slow", "x", 0).await;
    let token = CancellationToken::new();
    let d = dispatcher(&store, &token).await;

    // Nobody to run it: it fails after the queue timeout (3 s, on the paused clock), with the
    // documented message.
    let submitted = tokio::time::Instant::now();
    let (_, done) = d
        .submit(&a, run_req("slow", "echo never"), Origin::Api)
        .await
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
    let waited = submitted.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3_600),
        "failed after {waited:?}, not at the queue timeout"
    );
    assert_eq!(f.record.state, JobState::Failed);
    assert_eq!(
        f.record.error.as_deref(),
        Some(format!("no runner available in cluster {CLUSTER}").as_str())
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drained_runner_hands_back() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = setup(&etcd, dir.path()).await;
    service(&a, "slow", "x", 0).await;
    let token = CancellationToken::new();
    let d = dispatcher(&store, &token).await;

    let (t1, h1) = runner(&store, &a, "leaving", 1);
    wait_runners(&store, 1).await;
    let marker = dir.path().join("m");
    let (_, done) = d
        .submit(
            &a,
            run_req(
                "slow",
                &format!("echo x >> {}; sleep 3; echo finished", marker.display()),
            ),
            Origin::Api,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_t2, _h2) = runner(&store, &a, "staying", 1);
    wait_runners(&store, 2).await;
    t1.cancel(); // drain: grace 300 ms, then hand back
    h1.await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.record.state, JobState::Completed, "{:?}", f.record);
    assert_eq!(f.record.attempts[0].outcome.as_deref(), Some("released"));
    assert_eq!(f.record.attempts[1].runner, "staying");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_dispatcher_adopts_jobs_in_flight() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = setup(&etcd, dir.path()).await;
    service(&a, "slow", "x", 0).await;
    let (_t1, _h1) = runner(&store, &a, "r1", 4);
    wait_runners(&store, 1).await;
    let first = CancellationToken::new();
    let d1 = dispatcher(&store, &first).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let (id, _) = d1
            .submit(
                &a,
                run_req("slow", &format!("sleep 1; echo {i}")),
                Origin::Api,
            )
            .await
            .unwrap();
        ids.push(id);
    }
    // The first dispatcher stops (its node lost the active role) while the jobs run.
    first.cancel();
    let second = CancellationToken::new();
    let d2 = dispatcher(&store, &second).await;
    for id in ids {
        let f = tokio::time::timeout(Duration::from_secs(20), d2.wait(&id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.record.state, JobState::Completed, "{:?}", f.record);
        assert_eq!(f.record.attempts.len(), 1, "not run twice: {:?}", f.record);
    }
    second.cancel();
}
