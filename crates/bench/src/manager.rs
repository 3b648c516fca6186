//! Manager figures: resident memory with many concurrent gateway sessions, how fast sessions
//! are accepted, and the round trip of `POST /api/v1/clusters/{id}/ping` through a live
//! session; plus a storm of bad-certificate connections against a live session.
//!
//! Everything runs against the real release binary over real mutual TLS on loopback. Each
//! simulated gateway is one TLS + WebSocket connection that says `hello` for its own cluster
//! and then answers `ping` like a core node. Each cluster has a certificate of its own (a
//! certificate is pinned to one cluster at most), made before anything is timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_manager::AdminClient;
use autogate_testkit::{free_port, Autogate, Process};
use autogate_tls::{CertKind, Issued, Roots, Validity};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::{ms, table_header, Stats};

const SESSIONS: usize = 1_000;
const CONNECT_CONCURRENCY: usize = 64;
const PINGS: usize = 2_000;
const BAD_ATTEMPTS: usize = 10_000;

struct Manager {
    proc: Process,
    port: u16,
    _data: tempfile::TempDir,
    admin: AdminClient,
}

fn start() -> Manager {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let proc = Autogate::new(["manager"])
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env(
            "GATEWAY_MANAGER_DATA_DIR",
            data.path().display().to_string(),
        )
        .env("GATEWAY_LOG_LEVEL", "warn")
        .spawn();
    let token_file = data.path().join("admin.token");
    autogate_testkit::poll_until("manager admin token", Duration::from_secs(20), || {
        std::fs::read_to_string(&token_file)
            .ok()
            .filter(|t| !t.trim().is_empty())
    });
    autogate_testkit::poll_until("manager port", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let token = std::fs::read_to_string(&token_file).expect("token");
    let ca = data.path().join("manager.pem");
    let admin = AdminClient::new(
        &format!("https://127.0.0.1:{port}"),
        token.trim(),
        Some(&ca),
    )
    .expect("admin client");
    Manager {
        proc,
        port,
        _data: data,
        admin,
    }
}

/// One simulated gateway: connect, hello, then answer `ping` with its params and
/// `service.run` with a completed run at once, until the connection ends (also the gateways
/// of `autogate-bench replicas`).
pub(crate) async fn gateway(
    port: u16,
    tls: Arc<autogate_tls::rustls::ClientConfig>,
    cluster: String,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    let name = autogate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1")
        .map_err(|e| e.to_string())?
        .to_owned();
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with port {port}: {e}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}/ws"), stream)
        .await
        .map_err(|e| format!("WebSocket with port {port}: {e}"))?;
    let hello = json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {
        "cluster_id": cluster, "node_id": format!("{cluster}-node"), "term": 1, "version": "bench",
        "nodes": [{"node_id": format!("{cluster}-node"), "role": "active"}]}});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["result"]["accepted"] == true {
                    break;
                }
                return Err(format!("hello refused on port {port}: {v}"));
            }
            Some(Ok(_)) => continue,
            other => {
                return Err(format!(
                    "connection to port {port} ended before the answer to hello: {other:?}"
                ))
            }
        }
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            let reply = match v["method"].as_str() {
                Some("ping") => json!({"jsonrpc": "2.0", "id": v["id"], "result": v["params"]}),
                // What a core node answers for a program that ran and exited 0.
                Some("service.run") => json!({"jsonrpc": "2.0", "id": v["id"],
                    "status": "completed",
                    "result": {"return_code": 0, "stdout": "", "stderr": ""}}),
                _ => continue,
            };
            if ws
                .send(Message::Text(reply.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    }))
}

struct Figures {
    idle_rss: f64,
    rss_with_sessions: f64,
    accept_rate: f64,
    connect_ms: Stats,
    ping_ms: Stats,
    bad_rate: f64,
    rss_before_bad: f64,
    rss_after_bad: f64,
    good_session_survived: bool,
}

/// A client TLS set-up presenting `node`, trusting the manager's certificate.
fn client_tls(m: &Manager, node: &Issued) -> Arc<autogate_tls::rustls::ClientConfig> {
    autogate_tls::client_config(
        Roots::File(m._data.path().join("manager.pem")),
        Some((
            autogate_tls::parse_pem_certs(&node.cert_pem).expect("cert"),
            autogate_tls::parse_pem_key(&node.key_pem).expect("key"),
        )),
        false,
    )
    .expect("client tls")
}

async fn measure(m: &Manager, node: &Issued) -> Figures {
    // A certificate per cluster (the first is the one the manager was started with), then
    // every cluster registered (not timed: the figure is about sessions).
    let certs: Vec<(Issued, Arc<autogate_tls::rustls::ClientConfig>)> = (0..SESSIONS)
        .map(|i| {
            let n = if i == 0 {
                node.clone()
            } else {
                autogate_tls::self_signed(
                    CertKind::Node,
                    &format!("bench-{i}"),
                    &[],
                    Validity::days(1),
                )
                .expect("node cert")
            };
            let tls = client_tls(m, &n);
            (n, tls)
        })
        .collect();
    let certs = &certs;
    futures::stream::iter(0..SESSIONS)
        .for_each_concurrent(16, |i| {
            let pem = vec![certs[i].0.cert_pem.clone()];
            async move {
                m.admin
                    .create(&format!("c{i:04}"), None, "enabled", &pem)
                    .await
                    .expect("register");
            }
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = crate::status_mib(m.proc.pid(), "VmRSS");

    let t0 = Instant::now();
    let results: Vec<(Duration, tokio::task::JoinHandle<()>)> = futures::stream::iter(0..SESSIONS)
        .map(|i| {
            let tls = certs[i].1.clone();
            async move {
                let started = Instant::now();
                let h = gateway(m.port, tls, format!("c{i:04}"))
                    .await
                    .unwrap_or_else(|e| panic!("session c{i:04}: {e}"));
                (started.elapsed(), h)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let took = t0.elapsed();
    let accept_rate = SESSIONS as f64 / took.as_secs_f64();
    let connect_ms = Stats::new(results.iter().map(|(d, _)| ms(*d)).collect());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_with_sessions = crate::status_mib(m.proc.pid(), "VmRSS");

    // Ping round trips through the REST API and the live sessions, sequential.
    let mut samples = Vec::with_capacity(PINGS);
    for i in 0..PINGS {
        let id = format!("c{:04}", (i * 7919) % SESSIONS);
        let t = Instant::now();
        let v = m.admin.ping(&id).await.expect("ping");
        samples.push(ms(t.elapsed()));
        assert_eq!(v["node_id"], format!("{id}-node"));
    }
    let ping_ms = Stats::new(samples);

    // Bad-certificate storm: a self-signed certificate nobody registered, refused at hello,
    // while the 1 000 sessions stay up.
    let stranger = autogate_tls::self_signed(CertKind::Node, "stranger", &[], Validity::days(1))
        .expect("cert");
    let ca = m._data.path().join("manager.pem");
    let bad_tls = autogate_tls::client_config(
        Roots::File(ca),
        Some((
            autogate_tls::parse_pem_certs(&stranger.cert_pem).expect("cert"),
            autogate_tls::parse_pem_key(&stranger.key_pem).expect("key"),
        )),
        false,
    )
    .expect("tls");
    let rss_before_bad = crate::status_mib(m.proc.pid(), "VmRSS");
    let t0 = Instant::now();
    futures::stream::iter(0..BAD_ATTEMPTS)
        .for_each_concurrent(CONNECT_CONCURRENCY, |i| {
            let tls = bad_tls.clone();
            async move {
                let r = gateway(m.port, tls, format!("c{:04}", i % SESSIONS)).await;
                assert!(r.is_err(), "an unregistered certificate was accepted");
            }
        })
        .await;
    let bad_rate = BAD_ATTEMPTS as f64 / t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_bad = crate::status_mib(m.proc.pid(), "VmRSS");
    let good_session_survived =
        results.iter().all(|(_, h)| !h.is_finished()) && m.admin.ping("c0000").await.is_ok();
    for (_, h) in results {
        h.abort();
    }
    Figures {
        idle_rss,
        rss_with_sessions,
        accept_rate,
        connect_ms,
        ping_ms,
        bad_rate,
        rss_before_bad,
        rss_after_bad,
        good_session_survived,
    }
}

/// `autogate server` exec → `connected to commander` (its own log line), against a real
/// manager on loopback with the local store: what an operator waits for after a restart.
fn server_start_to_connected(runs: usize) -> Stats {
    use autogate_testkit::scenario::{core_node, Manager as TestManager, Pki};
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().expect("tempdir");
    let m = TestManager::start(&pki, free_port(), data.path());
    m.register(&pki, "cluster_1", &["core-1"]);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (cmd, _port) = core_node(&pki, "core-1", m.port);
        let mut proc = cmd.spawn();
        let line = proc.wait_for_line("INF connected to commander at", Duration::from_secs(30));
        samples.push(ms(line.at.saturating_duration_since(proc.spawned_at)));
        proc.signal("TERM");
        let _ = proc.try_wait_exit(Duration::from_secs(10));
    }
    Stats::new(samples)
}

pub fn run() -> String {
    let start_connected = server_start_to_connected(20);
    let node = autogate_tls::self_signed(CertKind::Node, "bench-node", &[], Validity::days(1))
        .expect("node cert");
    let mut m = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = rt.block_on(measure(&m, &node));
    m.proc.signal("TERM");
    let _ = m.proc.try_wait_exit(Duration::from_secs(10));

    let mut out = table_header("Manager");
    out += &format!(
        "| `autogate server` exec → `connected to commander` (loopback, local store, 20 runs) | p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms | — |\n",
        start_connected.median(),
        start_connected.quantile(0.9),
        start_connected.quantile(1.0)
    );
    out += &format!(
        "| manager RSS, {SESSIONS} clusters registered, no session | {:.1} MB | — |\n",
        f.idle_rss
    );
    out += &format!(
        "| manager RSS with {SESSIONS} concurrent gateway sessions | {:.1} MB | < 100 MB |\n",
        f.rss_with_sessions
    );
    out += &format!(
        "| session accept rate (TLS + WebSocket + hello + durable history write, {CONNECT_CONCURRENCY} in flight) | {:.0} sessions/s; per session p50 {:.1} ms, p99 {:.1} ms | — |\n",
        f.accept_rate,
        f.connect_ms.median(),
        f.connect_ms.quantile(0.99)
    );
    out += &format!(
        "| `POST /api/v1/clusters/{{id}}/ping` round trip through a live session ({PINGS} sequential, {SESSIONS} sessions up) | p50 {:.2} ms, p99 {:.2} ms | — |\n",
        f.ping_ms.median(),
        f.ping_ms.quantile(0.99)
    );
    out += &format!(
        "| {BAD_ATTEMPTS} connections with an unregistered certificate ({CONNECT_CONCURRENCY} in flight) | {:.0} refusals/s; RSS {:.1} → {:.1} MB; sessions kept: {} | RSS flat, sessions kept |\n",
        f.bad_rate,
        f.rss_before_bad,
        f.rss_after_bad,
        if f.good_session_survived { "all" } else { "**NO**" }
    );
    out
}
