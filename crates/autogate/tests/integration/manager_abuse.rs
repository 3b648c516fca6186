//! Black-box tests of the manager against bad input and hostile peers: malformed frames,
//! a missing or late `hello`, oversized frames, frame floods, a slow-loris TLS handshake, and a
//! long run of bad-certificate connections while a good session stays up and memory stays flat.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::manager::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_json_rpc_errors_and_the_session_stays_up() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let cert = pki.node("n");
    register(&admin, "c", "enabled", &[&cert]).await;
    let mut gw = connected(&m, &cert, "c", "n-1", Some(1)).await;

    gw.send_text("this is not JSON").await;
    let r = gw.recv_json().await;
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert!(r["id"].is_null());

    gw.send_text(r#"{"id": 3, "method": "ping"}"#).await;
    let r = gw.recv_json().await;
    assert_eq!(
        (r["error"]["code"].as_i64(), r["id"].as_i64()),
        (Some(-32600), Some(3)),
        "{r}"
    );

    gw.send_text(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .await;
    assert_eq!(gw.recv_json().await["error"]["code"], -32600);

    gw.send_json(&json!({"jsonrpc": "2.0", "id": "x", "method": "reboot.everything"}))
        .await;
    let r = gw.recv_json().await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    assert_eq!(r["id"], "x");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reboot.everything"));

    gw.send_json(&json!({"jsonrpc": "2.0", "id": 4, "method": "hello",
        "params": {"cluster_id": "c", "node_id": "n-1", "term": 1, "version": "t"}}))
        .await;
    assert_eq!(gw.recv_json().await["error"]["code"], -32600);

    // A malformed response is never answered (no error ping-pong); binary frames are ignored.
    gw.send_text(r#"{"jsonrpc":"2.0","id":99,"result":1,"error":{}}"#)
        .await;
    gw.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    gw.send_json(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
        .await;
    assert_eq!(
        gw.recv_json().await,
        json!({"jsonrpc": "2.0", "id": 5, "result": {}})
    );

    // Still the live session.
    let v = admin.show("c").await.unwrap();
    assert_eq!(v["connected"], true);
    let _r = Responder::spawn(gw, RunAnswer::Echo);
    assert_eq!(admin.ping("c").await.unwrap()["node_id"], "n-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_frame_must_be_hello() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let cert = pki.node("n");
    register(&m.admin(), "c", "enabled", &[&cert]).await;

    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    gw.send_json(&json!({"jsonrpc": "2.0", "id": 1, "method": "services.list"}))
        .await;
    let r = gw.recv_json().await;
    assert_eq!(
        (r["id"].as_i64(), r["error"]["code"].as_i64()),
        (Some(1), Some(-32600)),
        "{r}"
    );
    let reason = "the first frame must be a hello request, got request \"services.list\"";
    assert_eq!(r["error"]["message"], format!("invalid request: {reason}"));
    assert_eq!(gw.expect_close().await, (1008, reason.to_owned()));
    m.proc.wait_for_line(reason, STEP);

    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    gw.send_text("{{{").await;
    assert_eq!(gw.recv_json().await["error"]["code"], -32700);
    assert_eq!(gw.expect_close().await.0, 1008);

    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    gw.send_json(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"cluster_id": ""}}),
    )
    .await;
    let r = gw.recv_json().await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(gw.expect_close().await.0, 1008);
    assert!(m
        .admin()
        .sessions("c")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_within_ten_seconds_closes_the_connection() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let cert = pki.node("n");
    register(&m.admin(), "c", "enabled", &[&cert]).await;
    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    let t0 = Instant::now();
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        use futures::StreamExt;
        loop {
            match gw.ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    let took = t0.elapsed();
    assert_eq!(close, (1008, "no hello within 10 s".to_owned()));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009_and_floods_with_1008() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start_with(autogate_testkit::free_port(), data.path(), |c| {
        c.env("GATEWAY_MANAGER_MAX_FRAME_SIZE", "64KiB")
    });
    let admin = m.admin();
    let (a, b) = (pki.node("a"), pki.node("b"));
    register(&admin, "c", "enabled", &[&a]).await;
    register(&admin, "d", "enabled", &[&b]).await;

    // Right at the limit is fine; one byte more closes.
    let mut gw = connected(&m, &a, "c", "n-1", None).await;
    let pad = |n: usize| {
        let base =
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"p": ""}}).to_string();
        let fill = "x".repeat(n - base.len());
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"p": fill}}).to_string()
    };
    gw.send_text(pad(64 * 1024)).await;
    assert_eq!(gw.recv_json().await["id"], 1);
    gw.send_text(pad(64 * 1024 + 1)).await;
    let (code, reason) = gw.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains("exceeds the limit of 65536 bytes"),
        "{reason}"
    );
    // Well above the limit (the manager stops reading at the header).
    let mut gw = connected(&m, &a, "c", "n-1", None).await;
    gw.send_text("y".repeat(4 << 20)).await;
    assert_eq!(gw.expect_close().await.0, 1009);
    let s = admin.sessions("c").await.unwrap();
    assert!(
        s[0]["close_reason"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{s:#}"
    );

    // 200 frames/s, bursts of 400: 1000 frames at once trips the limit.
    let mut gw = connected(&m, &b, "d", "n-2", None).await;
    let frame =
        json!({"jsonrpc": "2.0", "method": "nodes.update", "params": {"nodes": []}}).to_string();
    for _ in 0..1000 {
        if gw
            .ws
            .feed(Message::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = gw.ws.flush().await;
    assert_eq!(
        gw.expect_close().await,
        (1008, "rate limit exceeded".to_owned())
    );
    assert_eq!(
        admin.sessions("d").await.unwrap()[0]["close_reason"],
        "rate limit exceeded"
    );
    // The manager is fine and the cluster can reconnect.
    let _again = connected(&m, &b, "d", "n-2", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_handshake_is_dropped_after_the_timeout_and_blocks_nobody() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let cert = pki.node("n");
    register(&admin, "c", "enabled", &[&cert]).await;

    // Open TCP connections and send nothing at all.
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", m.port)).unwrap())
        .collect();
    let t0 = Instant::now();
    // Meanwhile the manager serves everyone else normally.
    let gw = connected(&m, &cert, "c", "n-1", None).await;
    let _r = Responder::spawn(gw, RunAnswer::Echo);
    assert_eq!(admin.ping("c").await.unwrap()["node_id"], "n-1");
    assert!(t0.elapsed() < Duration::from_secs(2));

    let closed = tokio::task::spawn_blocking(move || {
        let mut took = Vec::new();
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "the manager sent bytes to a silent client");
            took.push(t0.elapsed());
        }
        took
    })
    .await
    .unwrap();
    for took in closed {
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(15),
            "{took:?}"
        );
    }
    assert_eq!(admin.show("c").await.unwrap()["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_certificate_flood_leaves_the_good_session_and_memory_alone() {
    const ATTEMPTS: usize = 2_000;
    const CONCURRENCY: usize = 16;
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let good = pki.node("good");
    register(&admin, "c", "enabled", &[&good]).await;
    let responder = Responder::spawn(
        connected(&m, &good, "c", "n-1", Some(1)).await,
        RunAnswer::Echo,
    );

    // Half the attempts fail in TLS (expired certificate), half are refused before the
    // upgrade (self-signed, not registered).
    let expired_cert = std::sync::Arc::new(expired(&pki, "old"));
    let stranger = std::sync::Arc::new(self_signed("stranger"));
    let m = std::sync::Arc::new(m);
    let attempt = |i: usize| {
        let (m, e, s) = (m.clone(), expired_cert.clone(), stranger.clone());
        async move {
            if i % 2 == 0 {
                // TLS 1.3 reports the verdict on the client certificate after the handshake:
                // then the first read fails instead.
                if let Ok(mut gw) = Gw::connect(&m, Some(&e)).await {
                    use futures::StreamExt;
                    assert!(gw.ws.next().await.is_none_or(|r| r.is_err()));
                }
            } else {
                match Gw::connect(&m, Some(&s)).await {
                    Err(ConnectError::Http(403, _)) => {}
                    other => panic!("expected 403, got {:?}", other.map(|_| "a session")),
                }
            }
        }
    };
    let run = |range: std::ops::Range<usize>| {
        let attempt = &attempt;
        async move {
            use futures::StreamExt;
            futures::stream::iter(range)
                .for_each_concurrent(CONCURRENCY, attempt)
                .await
        }
    };
    // Warm up allocator pools and caches, then measure.
    run(0..200).await;
    let before = m.rss_kib();
    let t0 = Instant::now();
    run(0..ATTEMPTS).await;
    let took = t0.elapsed();
    // Let the last connections' tasks finish.
    eventually("connections to drain", STEP, || async {
        let (_, text) = {
            let (c, v) = admin
                .send("GET".parse().unwrap(), "/metrics", None)
                .await
                .unwrap();
            (c, v.as_str().unwrap_or_default().to_owned())
        };
        text.contains("autogate_manager_sessions_live 1")
            .then_some(())
    })
    .await;
    let after = m.rss_kib();
    eprintln!(
        "{ATTEMPTS} bad-certificate attempts in {took:?}; manager RSS {before} KiB -> {after} KiB"
    );
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        responder.closed().is_none(),
        "the good session was closed: {:?}",
        responder.closed()
    );
    let v = admin.show("c").await.unwrap();
    assert_eq!(v["active"]["node_id"], "n-1", "{v}");
    assert_eq!(admin.ping("c").await.unwrap()["node_id"], "n-1");
    let s = admin.sessions("c").await.unwrap();
    assert_eq!(s.as_array().unwrap().len(), 1, "refusals are not sessions");
    // Refusals are logged with their reason, but a storm does not become a log flood.
    let logs = m.proc.logs();
    let refusal_lines = logs.lines().filter(|l| l.contains(" WRN ")).count();
    assert!(logs.contains("is not registered for any cluster"), "{logs}");
    assert!(logs.contains("similar messages suppressed"), "{logs}");
    assert!(
        refusal_lines < ATTEMPTS / 2,
        "{refusal_lines} warning lines"
    );
}
