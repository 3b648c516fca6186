//! Foundation figures: start-up latency, idle memory, store throughput.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_store::{EtcdOptions, Store, StoreOptions};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{free_port, http_get};

use crate::{ms, table_header, Stats};

const STARTS: usize = 20;
const LOCAL_OPS: usize = 2_000;
const ETCD_OPS: usize = 2_000;
const VALUE: [u8; 128] = [b'x'; 128];

pub fn run() -> String {
    let bins = binaries();
    let startups = startup_and_rss(&bins);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let local = rt.block_on(local_store());
    let etcd = EtcdServer::start();
    let etcd_rows = rt.block_on(etcd_vs_raw(&etcd.endpoint()));

    let mut out = table_header("Foundation");
    for ((label, bin), st) in bins.iter().zip(&startups) {
        out += &format!(
            "| {label}: `autogate server` exec → health answers, new working dir ({STARTS} runs) | p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms | < 100 ms |\n",
            st.first.median(),
            st.first.quantile(0.9),
            st.first.quantile(1.0)
        );
        out += &format!(
            "| {label}: the same, restarted on its working dir ({STARTS} runs) | p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms | < 100 ms |\n",
            st.restart.median(),
            st.restart.quantile(0.9),
            st.restart.quantile(1.0)
        );
        out += &format!(
            "| {label}: idle RSS of the server, 1 s after start ({STARTS} runs) | median {:.1} MB, max {:.1} MB | < 20 MB |\n",
            st.rss.median(),
            st.rss.quantile(1.0)
        );
        out += &format!(
            "| {label}: binary size (`{}`) | {:.1} MB | — |\n",
            bin.display(),
            file_mb(bin)
        );
    }
    out += &format!(
        "| local store put (durable, sequential, 128 B, {LOCAL_OPS} ops) | {:.0} puts/s | — |\n",
        local.0
    );
    out += &format!(
        "| local store get (sequential, {LOCAL_OPS} ops) | {:.0} gets/s | — |\n",
        local.1
    );
    for row in etcd_rows {
        out += &format!(
            "| etcd put, {} in flight ({ETCD_OPS} ops): autogate store vs raw etcd-client | {:.0} vs {:.0} puts/s = **{:.0} %** | ≥ 80 % |\n",
            row.concurrency,
            row.ours,
            row.raw,
            100.0 * row.ours / row.raw
        );
    }
    out
}

/// Start-up figures of one binary.
struct Startup {
    /// exec → first 200 from `/api/v1/health`, in a new working directory (the node creates the
    /// first user).
    first: Stats,
    /// The same with a working directory an earlier run left (users exist).
    restart: Stats,
    /// Resident memory 1 s after the first answer (first starts).
    rss: Stats,
}

/// Which binaries the start-up rows compare: this build, and `AUTOGATE_BASELINE_BIN` when set
/// (e.g. a release build of an earlier commit), measured alternately in the same run so machine
/// load affects both alike.
fn binaries() -> Vec<(String, PathBuf)> {
    let mut out = vec![(
        "this build".to_owned(),
        autogate_testkit::process::autogate_bin(),
    )];
    if let Some(b) = std::env::var("AUTOGATE_BASELINE_BIN")
        .ok()
        .filter(|b| !b.is_empty())
    {
        out.push(("baseline".to_owned(), PathBuf::from(b)));
    }
    out
}

/// Start each binary repeatedly, alternating; see [`Startup`].
fn startup_and_rss(bins: &[(String, PathBuf)]) -> Vec<Startup> {
    let mut samples: Vec<[Vec<f64>; 3]> = bins.iter().map(|_| Default::default()).collect();
    for _ in 0..STARTS {
        for ((_, bin), s) in bins.iter().zip(samples.iter_mut()) {
            let work = tempfile::tempdir().expect("tempdir");
            let (first, rss) = start_once(bin, work.path());
            let (restart, _) = start_once(bin, work.path());
            s[0].push(first);
            s[1].push(restart);
            s[2].push(rss);
        }
    }
    samples
        .into_iter()
        .map(|[first, restart, rss]| Startup {
            first: Stats::new(first),
            restart: Stats::new(restart),
            rss: Stats::new(rss),
        })
        .collect()
}

/// One `autogate server` in `work`: (ms to the first health answer, MB resident after 1 s).
fn start_once(bin: &Path, work: &Path) -> (f64, f64) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("server")
        .env("HOME", work)
        .env("GATEWAY_APPLICATION_WORKING_DIR", work.join("work"))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") {
            cmd.env_remove(&k);
        }
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn autogate server");
    loop {
        if let Ok((200, _)) = http_get(&addr, "/api/v1/health") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{} server did not answer within 10 s", bin.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = ms(t0.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    (took, kb / 1024.0)
}

fn file_mb(p: &Path) -> f64 {
    std::fs::metadata(p)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(f64::NAN)
}

async fn local_store() -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = autogate_store::open(StoreOptions::Local {
        path: dir.path().join("gateway.db"),
    })
    .await
    .expect("open local store");
    let t0 = Instant::now();
    for i in 0..LOCAL_OPS {
        store
            .put(&format!("/autogate/bench/k{i:06}"), VALUE.to_vec(), None)
            .await
            .expect("put");
    }
    let puts = LOCAL_OPS as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for i in 0..LOCAL_OPS {
        store
            .get(&format!("/autogate/bench/k{i:06}"))
            .await
            .expect("get");
    }
    let gets = LOCAL_OPS as f64 / t0.elapsed().as_secs_f64();
    (puts, gets)
}

struct EtcdRow {
    concurrency: usize,
    ours: f64,
    raw: f64,
}

/// The same write pattern (distinct keys, 128-byte values, N requests in flight) through our
/// store and through a bare etcd-client, interleaved three times; the median of each is kept.
async fn etcd_vs_raw(endpoint: &str) -> Vec<EtcdRow> {
    let ours: Arc<dyn Store> = autogate_store::open(StoreOptions::Etcd(EtcdOptions {
        endpoints: vec![endpoint.to_owned()],
        tls: None,
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }))
    .await
    .expect("open etcd store");
    let raw = etcd_client::Client::connect([format!("http://{endpoint}")], None)
        .await
        .expect("raw etcd client");
    let mut rows = Vec::new();
    for concurrency in [1usize, 16] {
        let mut o = Vec::new();
        let mut r = Vec::new();
        for round in 0..3 {
            o.push(ours_puts(&ours, concurrency, round).await);
            r.push(raw_puts(&raw, concurrency, round).await);
        }
        rows.push(EtcdRow {
            concurrency,
            ours: Stats::new(o).median(),
            raw: Stats::new(r).median(),
        });
    }
    rows
}

async fn ours_puts(store: &Arc<dyn Store>, concurrency: usize, round: usize) -> f64 {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..ETCD_OPS).step_by(concurrency) {
                store
                    .put(
                        &format!("/autogate/bench/ours{round}/k{i:06}"),
                        VALUE.to_vec(),
                        None,
                    )
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    ETCD_OPS as f64 / t0.elapsed().as_secs_f64()
}

async fn raw_puts(client: &etcd_client::Client, concurrency: usize, round: usize) -> f64 {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut kv = client.kv_client();
        tasks.push(tokio::spawn(async move {
            for i in (w..ETCD_OPS).step_by(concurrency) {
                kv.put(
                    format!("/autogate/bench/raw{round}/k{i:06}"),
                    VALUE.to_vec(),
                    None,
                )
                .await
                .expect("raw put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    ETCD_OPS as f64 / t0.elapsed().as_secs_f64()
}
