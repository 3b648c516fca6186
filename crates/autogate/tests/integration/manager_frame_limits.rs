//! The manager's per-session frame limit on a real `autogate manager`, set low through
//! `[manager] session_frame_rate` / `session_frame_burst`: answers to the manager's own
//! requests do not count against it — a gateway answering a burst of runs at once stays
//! connected — while frames the gateway sends of its own accord do, repeated answers included.
//! The gateway side is a scripted WebSocket client over real mutual TLS.

use std::time::{Duration, Instant};

use crate::support::manager::*;
use autogate_testkit::free_port;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// 100 frames/s, bursts of 200: the burst of runs below is well over both.
const RATE: u32 = 100;
const BURST: u32 = 200;
const RUNS: usize = 500;

/// Sends `frames` back to back, flushed once (a burst, as a gateway answering from a queue
/// would write them); stops early if the manager already closed the connection.
async fn burst(gw: &mut Gw, frames: &[String]) {
    for f in frames {
        if gw.ws.feed(Message::Text(f.clone().into())).await.is_err() {
            break;
        }
    }
    let _ = gw.ws.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_run_answers_stays_connected_while_a_flood_of_notifications_is_closed() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start_with(free_port(), data.path(), |c| {
        c.env("GATEWAY_MANAGER_SESSION_FRAME_RATE", RATE.to_string())
            .env("GATEWAY_MANAGER_SESSION_FRAME_BURST", BURST.to_string())
    });
    let admin = m.admin();
    let cert = pki.node("n");
    register(&admin, "c", "enabled", &[&cert]).await;
    let mut gw = connected(&m, &cert, "c", "n-1", None).await;

    // Callers ask for RUNS runs at once; the gateway collects them all before answering any.
    let callers: Vec<_> = (0..RUNS)
        .map(|i| {
            let admin = admin.clone();
            tokio::spawn(async move { admin.run("c", "svc", &json!({ "i": i })).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut runs = Vec::new();
    while runs.len() < RUNS {
        assert!(
            Instant::now() < deadline,
            "only {} of {RUNS} runs reached the gateway",
            runs.len()
        );
        let v = gw.recv_json().await;
        if v["method"] == "service.run" {
            runs.push(v);
        }
    }
    let answers: Vec<String> = runs
        .iter()
        .map(|r| {
            json!({"jsonrpc": "2.0", "id": r["id"],
                   "result": {"stdout": format!("ran {}", r["params"]["inputs"]["i"]), "return_code": 0}})
            .to_string()
        })
        .collect();
    let answered = Instant::now();
    burst(&mut gw, &answers).await;
    for (i, c) in callers.into_iter().enumerate() {
        let r = c.await.unwrap().unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(r["result"]["stdout"], format!("ran {i}"), "{r}");
    }
    eprintln!(
        "{RUNS} run answers in one burst (limit {RATE}/s, burst {BURST}): all callers answered {} ms later",
        answered.elapsed().as_millis()
    );
    // Still the same live session: nothing closed it.
    let s = admin.sessions("c").await.unwrap();
    assert_eq!(s.as_array().unwrap().len(), 1, "{s:#}");
    assert!(s[0]["disconnected_at"].is_null(), "{s:#}");
    assert_eq!(admin.show("c").await.unwrap()["connected"], true);

    // The same answers again are no longer answers to anything: they count, and trip the limit.
    burst(&mut gw, &answers).await;
    assert_eq!(
        gw.expect_close().await,
        (1008, "rate limit exceeded".to_owned())
    );

    // Frames the gateway sends of its own accord count from the first.
    let mut gw = connected(&m, &cert, "c", "n-1", None).await;
    let update: Value =
        json!({"jsonrpc": "2.0", "method": "nodes.update", "params": {"nodes": []}});
    let flood = vec![update.to_string(); 2 * BURST as usize];
    burst(&mut gw, &flood).await;
    assert_eq!(
        gw.expect_close().await,
        (1008, "rate limit exceeded".to_owned())
    );
    assert_eq!(
        admin.sessions("c").await.unwrap()[0]["close_reason"],
        "rate limit exceeded"
    );
}
