//! Distributed execution figures: a no-op service run through the whole path — manager API →
//! manager session → active core node → etcd → runner → etcd → core node → manager — with one
//! and with two runners: sequential latency (p50/p99), throughput with many runs in flight, and
//! the p50 overhead against the same run executed by a core node itself (a second cluster
//! without distributed execution, through the same manager). The ceiling is measured in the
//! same run: one etcd client putting keys one after another (each job costs a few such writes,
//! batched across jobs by the dispatcher).
//!
//! Everything is the release binary over real TLS and a real etcd on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_manager::AdminClient;
use autogate_testkit::auth::{admin_key, request, with_admin_password};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{core_node, Manager, Pki};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::{ms, table_header, Stats};

const WARMUP: usize = 20;
const SEQUENTIAL: usize = 200;
const BURST: usize = 1_000;
const IN_FLIGHT: usize = 64;
const RAW_PUTS: usize = 2_000;
const RUNNER_CAPACITY: u32 = 32;

fn post(port: u16, key: &str, path: &str, body: Value) -> (u16, String) {
    let text = body.to_string();
    request(
        &format!("127.0.0.1:{port}"),
        "POST",
        path,
        Some(key),
        Some(("application/json", text.as_bytes())),
    )
    .expect("core node API")
}

/// The no-op service on a core node: `/bin/true`, no repository, no inputs.
fn seed(port: u16) {
    let key = admin_key(port);
    for (path, body) in [
        (
            "/api/v1/executable-objects",
            json!({"name": "true", "exec-command": "/bin/true"}),
        ),
        (
            "/api/v1/services",
            json!({"name": "noop", "type": "executable", "executable-object": "true"}),
        ),
    ] {
        let (status, body) = post(port, &key, path, body);
        assert_eq!(status, 201, "{path}: {body}");
    }
}

fn runner(etcd: &str) -> Process {
    Autogate::new(["runner"])
        .env("GATEWAY_APPLICATION_CLUSTER_ID", "jobs")
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_RUNNER_CAPACITY", RUNNER_CAPACITY.to_string())
        .env("GATEWAY_LOG_LEVEL", "warn")
        .spawn()
}

async fn run_once(admin: &AdminClient, cluster: &str) {
    let (status, v) = admin
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster}/services/noop/run"),
            Some(&json!({})),
        )
        .await
        .expect("manager API");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["return_code"], 0, "{v}");
}

/// Sequential latencies through the manager (ms).
async fn latency(admin: &Arc<AdminClient>, cluster: &str) -> Stats {
    for _ in 0..WARMUP {
        run_once(admin, cluster).await;
    }
    let mut lat = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        run_once(admin, cluster).await;
        lat.push(ms(t.elapsed()));
    }
    Stats::new(lat)
}

/// Runs per second with `IN_FLIGHT` runs at a time through the core node's own API: the
/// manager accepts at most 200 frames a second from a session (ws.rs), which would be the
/// bound here rather than dispatch.
fn throughput(port: u16) -> f64 {
    let key = admin_key(port);
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..IN_FLIGHT {
            let key = &key;
            s.spawn(move || {
                for _ in (w..BURST).step_by(IN_FLIGHT) {
                    let (status, body) = post(port, key, "/api/v1/services/noop/run", json!({}));
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    BURST as f64 / t.elapsed().as_secs_f64()
}

async fn raw_put_rate(endpoint: &str) -> f64 {
    let client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("etcd client");
    let mut kv = client.kv_client();
    let t = Instant::now();
    for i in 0..RAW_PUTS {
        kv.put(format!("/bench/raw/k{i:06}"), vec![b'x'; 256], None)
            .await
            .expect("raw put");
    }
    RAW_PUTS as f64 / t.elapsed().as_secs_f64()
}

fn registered(port: u16, n: usize) {
    let key = admin_key(port);
    poll_until(&format!("{n} runner(s)"), Duration::from_secs(30), || {
        let (status, body) = request(
            &format!("127.0.0.1:{port}"),
            "GET",
            "/api/v1/runners",
            Some(&key),
            None,
        )
        .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && v["runners"].as_array()?.len() == n).then_some(())
    });
}

pub fn run() -> String {
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, "jobs", &["core-1"]);
    manager.register(&pki, "local", &["core-2"]);

    // Cluster `jobs`: an HA core node with distributed execution on etcd.
    let (cmd, jobs_port) = core_node(&pki, "core-1", manager.port);
    let jobs_node = with_admin_password(
        cmd.env("GATEWAY_APPLICATION_CLUSTER_ID", "jobs")
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
            .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
            .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
            .env("GATEWAY_LOG_LEVEL", "warn"),
    )
    .spawn();
    // Cluster `local`: a core node that runs services itself (the baseline).
    let (cmd, local_port) = core_node(&pki, "core-2", manager.port);
    let local_node = with_admin_password(
        cmd.env("GATEWAY_APPLICATION_CLUSTER_ID", "local")
            .env("GATEWAY_LOG_LEVEL", "warn"),
    )
    .spawn();
    seed(jobs_port);
    seed(local_port);

    let token = autogate_manager::bootstrap::read_token(&manager.token_path()).expect("token");
    let ca = pki.path("ca.pem");
    let admin = Arc::new(
        AdminClient::new(&manager.url(), &token, Some(std::path::Path::new(&ca)))
            .expect("admin client"),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for cluster in ["jobs", "local"] {
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v = admin.show(cluster).await.expect("show");
                if v["connected"] == true && v["service_count"] == 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster {cluster} not connected");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    let local_lat = rt.block_on(latency(&admin, "local"));
    let local_rate = throughput(local_port);
    let mut rows = Vec::new();
    let mut runners = Vec::new();
    for n in [1usize, 2] {
        runners.push(runner(&etcd.endpoint()));
        registered(jobs_port, n);
        let lat = rt.block_on(latency(&admin, "jobs"));
        let rate = throughput(jobs_port);
        rows.push((n, lat, rate));
    }
    let raw = rt.block_on(raw_put_rate(&etcd.endpoint()));
    drop(runners);
    drop(jobs_node);
    drop(local_node);

    let mut out =
        table_header("Distributed execution: a no-op job through manager, active node and runner");
    out.push_str(&format!(
        "| core node runs it itself (baseline), sequential p50 / p99 | {:.1} / {:.1} ms | — |\n",
        local_lat.median(),
        local_lat.quantile(0.99)
    ));
    out.push_str(&format!(
        "| core node runs it itself, {BURST} runs with {IN_FLIGHT} in flight (core node API) | {local_rate:.0} runs/s | — |\n"
    ));
    for (n, lat, rate) in &rows {
        let s = if *n == 1 { "" } else { "s" };
        out.push_str(&format!(
            "| {n} runner{s} (capacity {RUNNER_CAPACITY} each), sequential p50 / p99 | {:.1} / {:.1} ms | — |\n",
            lat.median(),
            lat.quantile(0.99)
        ));
        out.push_str(&format!(
            "| {n} runner{s}, p50 dispatch overhead over the baseline | {:.1} ms | ≤ 10 ms |\n",
            lat.median() - local_lat.median()
        ));
        out.push_str(&format!(
            "| {n} runner{s}, {BURST} jobs with {IN_FLIGHT} in flight (core node API) | {rate:.0} jobs/s | ≥ 200 jobs/s |\n"
        ));
    }
    out.push_str(&format!(
        "| ceiling: raw etcd, one client, sequential puts | {raw:.0} puts/s | — |\n"
    ));
    out
}
