//! The manager against the attacks of the security review, each performed for real against a
//! real `autogate manager` process over real mutual TLS with minted certificates:
//!
//! - a certificate pinned to no cluster asks for a WebSocket: refused before the upgrade (403,
//!   never 101), with the reason logged;
//! - a pinned certificate sends a 64 KiB frame before `hello`: closed with 1009 and the reason,
//!   while a `hello` listing a hundred nodes still fits;
//! - one source opens more connections than `manager.max_connections_per_source`: the next one
//!   is closed before its TLS handshake and logged, another source is still served, and a freed
//!   place is usable again;
//! - a certificate pinned to one cluster is registered for a second: 409 naming the first; a
//!   store written before that rule with a fingerprint pinned twice refuses that certificate
//!   naming both clusters;
//! - a pinned node sends `term = u64::MAX`: refused naming the ceiling; one at the ceiling
//!   locks the real leader out until the administrator resets the term (`autogate manager
//!   cluster reset-term`), which writes an audit line and lets the leader back in, with the
//!   fencing rule in force again;
//! - the page's live feed in a real browser: it works, and the admin token is in no URL the
//!   page requested (the browser's resource timing) nor in the manager's log; the token in the
//!   stream's URL is refused. The page's own term reset writes the same audit line.

use std::time::{Duration, Instant};

use crate::support::manager::*;
use autogate_testkit::free_port;
use autogate_tls::Roots;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// The refusal counter of `reason` in the manager's metrics.
async fn refused(m: &Manager, reason: &str) -> String {
    let (_, v) = m
        .admin()
        .send("GET".parse().unwrap(), "/metrics", None)
        .await
        .unwrap();
    let text = v.as_str().unwrap_or_default().to_owned();
    let needle = format!("autogate_manager_sessions_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find(|l| l.starts_with(&needle))
        .map(|l| l[needle.len()..].to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_pinned_to_no_cluster_gets_no_websocket() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let good = pki.node("good");
    register(&admin, "c1", "enabled", &[&good]).await;

    for (cert, what) in [
        (self_signed("stranger"), "self-signed"),
        (pki.node("never-registered"), "CA-issued, never registered"),
    ] {
        let fp = fingerprint(&cert);
        let reason = format!("certificate {fp} is not registered for any cluster");
        match Gw::connect(&m, Some(&cert)).await {
            Err(ConnectError::Http(403, body)) => {
                assert!(body.contains(&reason), "{what}: {body}")
            }
            Err(e) => panic!("{what}: expected 403 before the upgrade, got {e:?}"),
            Ok(_) => panic!("{what}: the manager upgraded to a WebSocket (101)"),
        }
        m.proc.wait_for_line("refused /ws from 127.0.0.1:", STEP);
        m.proc
            .wait_for_line(&format!("before the upgrade: {reason}"), STEP);
    }
    assert_eq!(refused(&m, "certificate_not_registered").await, "2");
    // The pinned certificate still gets its session.
    let _gw = connected(&m, &good, "c1", "n-1", Some(1)).await;
    assert_eq!(admin.show("c1").await.unwrap()["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_hello_closes_the_connection() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let cert = pki.node("n");
    register(&admin, "c", "enabled", &[&cert]).await;

    // 64 KiB before hello: far under manager.max_frame_size (1 MiB), far over what a
    // connection that has not said who it is may send.
    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    gw.send_text("x".repeat(64 * 1024)).await;
    let (code, reason) = gw.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    let expected = "a frame of 65536 bytes before hello exceeds the limit of 32768 bytes";
    assert_eq!(reason, expected);
    m.proc.wait_for_line(expected, STEP);

    // The same in fragments: they add up.
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    let piece = vec![b'y'; 12 * 1024];
    let mut sent = 0;
    for i in 0..4 {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.clone(), opcode, i == 3);
        if gw.ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent >= 3, "{sent} fragments sent");
    let (code, reason) = gw.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.starts_with("a frame of 36864 bytes before hello exceeds the limit"),
        "{reason}"
    );

    // A hello listing a hundred runners fits, and once it is accepted the session's limit is
    // manager.max_frame_size again.
    let nodes: Vec<Value> = (0..100)
        .map(|i| {
            json!({"node_id": format!("gw1_0193f4b0-ab55-70f3-8aca-cd0b7203{i:04}"),
                   "name": format!("runner-{i}"), "role": "runner", "is_primary": false,
                   "address": format!("10.20.30.{i}"), "running": 0, "capacity": 32})
        })
        .collect();
    let size = json!(nodes).to_string().len();
    assert!(size > 12 * 1024, "the hello's nodes take {size} bytes");
    let mut gw = Gw::connect(&m, Some(&cert)).await.unwrap();
    let r = gw.hello_with_nodes("c", "n-1", Some(1), json!(nodes)).await;
    assert_eq!(r["result"]["accepted"], true, "{r}");
    let fill = "z".repeat(64 * 1024);
    gw.send_json(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"p": fill}}))
        .await;
    let r = gw.recv_json().await;
    assert_eq!(
        r["id"],
        7,
        "{}",
        &r.to_string()[..200.min(r.to_string().len())]
    );
    assert_eq!(admin.show("c").await.unwrap()["connected"], true);
}

/// TLS to the manager from `source` (any 127.0.0.0/8 address is this host), no client
/// certificate.
async fn tls_from(
    m: &Manager,
    source: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = autogate_tls::client_config(Roots::File(m.ca()), None, false).unwrap();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    let tcp = socket
        .connect(format!("127.0.0.1:{}", m.port).parse().unwrap())
        .await?;
    let name = autogate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1")
        .unwrap()
        .to_owned();
    TlsConnector::from(config).connect(name, tcp).await
}

/// `GET /healthz` on an open connection; the status line and what followed, as text.
async fn healthz_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> String {
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: manager\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    while !String::from_utf8_lossy(&got).contains("}") && Instant::now() < deadline {
        match tokio::time::timeout(STEP, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_source_beyond_the_cap_are_refused() {
    const CAP: usize = 8;
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start_with(free_port(), data.path(), |c| {
        c.env(
            "GATEWAY_MANAGER_MAX_CONNECTIONS_PER_SOURCE",
            CAP.to_string(),
        )
    });
    // CAP connections from 127.0.0.1, each served (so each holds its place).
    let mut held = Vec::new();
    for i in 0..CAP {
        let mut s = tls_from(&m, "127.0.0.1").await.unwrap();
        let r = healthz_on(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "connection {i}: {r}");
        held.push(s);
    }
    // One more from the same source is closed before any handshake work, and logged.
    match tls_from(&m, "127.0.0.1").await {
        Err(_) => {}
        Ok(mut extra) => {
            // The refusal may race the client's view of the handshake: nothing is served.
            let r = healthz_on(&mut extra).await;
            assert!(r.is_empty(), "a connection beyond the cap was served: {r}");
        }
    }
    m.proc.wait_for_line(
        "too many connections (16384 open in total, or 8 from 127.0.0.1: manager.max_connections_per_source)",
        STEP,
    );
    // Another source is not affected.
    let mut other = tls_from(&m, "127.0.0.2").await.unwrap();
    let r = healthz_on(&mut other).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A freed place is usable again.
    drop(held.pop());
    eventually("a place freed for 127.0.0.1", STEP, || async {
        let mut s = tls_from(&m, "127.0.0.1").await.ok()?;
        healthz_on(&mut s)
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_belongs_to_one_cluster() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Manager::start_with(port, data.path(), |c| c);
    let admin = m.admin();
    let (a, b) = (pki.node("a"), pki.node("b"));
    register(&admin, "c1", "enabled", &[&a]).await;
    let fp = fingerprint(&a);
    let expected = format!("certificate {fp} is already pinned to cluster c1");

    // Registering a second cluster with it, or adding it to one, is refused naming the first.
    let (code, body) = admin
        .send(
            "POST".parse().unwrap(),
            "/api/v1/clusters",
            Some(&json!({"cluster_id": "c2", "certificates": [b.cert_pem, a.cert_pem]})),
        )
        .await
        .unwrap();
    assert_eq!(code, 409, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("certificates[1]: "), "{message}");
    assert!(message.contains(&expected), "{message}");
    assert_eq!(body["pinned_to"], "c1");
    let missing = admin.show("c2").await.unwrap_err().to_string();
    assert!(
        missing.contains("not registered"),
        "nothing was created: {missing}"
    );
    register(&admin, "c2", "enabled", &[&b]).await;
    let (code, body) = admin
        .send(
            "PATCH".parse().unwrap(),
            "/api/v1/clusters/c2",
            Some(&json!({"add_certificates": [a.cert_pem]})),
        )
        .await
        .unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&expected),
        "{body}"
    );
    let out = m.cli(&["add-cert", "c2", &pki.path("a.pem").display().to_string()]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    assert_eq!(
        admin.show("c2").await.unwrap()["certificates"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Adding it again where it is pinned is harmless.
    admin
        .patch("c1", &json!({"add_certificates": [a.cert_pem]}))
        .await
        .unwrap();

    // A store from before the rule, with the fingerprint pinned to both clusters: that
    // certificate is refused, naming both, until the administrator picks one.
    let mut m = m;
    m.proc.signal("TERM");
    m.proc.wait_exit(STEP);
    {
        let store = autogate_store::open(autogate_store::StoreOptions::Local {
            path: data.path().join(autogate_manager::STORE_FILE),
        })
        .await
        .unwrap();
        let key = autogate_manager::registry::cluster_key("c2");
        let kv = store.get(&key).await.unwrap().expect("c2 is stored");
        let mut rec: autogate_manager::model::ClusterRecord =
            serde_json::from_slice(&kv.value).unwrap();
        let c1: autogate_manager::model::ClusterRecord = serde_json::from_slice(
            &store
                .get(&autogate_manager::registry::cluster_key("c1"))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        rec.certificates.push(c1.certificates[0].clone());
        store
            .txn(
                autogate_store::Txn::new().and_then([autogate_store::TxnOp::put(
                    key,
                    serde_json::to_vec(&rec).unwrap(),
                )]),
            )
            .await
            .unwrap();
    }
    let m = Manager::start_with(port, data.path(), |c| c);
    let ambiguous = format!("certificate {fp} is pinned to several clusters (c1, c2)");
    match Gw::connect(&m, Some(&a)).await {
        Err(ConnectError::Http(403, body)) => assert!(body.contains(&ambiguous), "{body}"),
        Err(e) => panic!("expected 403, got {e:?}"),
        Ok(_) => panic!("a certificate pinned twice got a WebSocket"),
    }
    m.proc.wait_for_line(&ambiguous, STEP);
    // The other cluster's own certificate is unaffected; removing the duplicate settles it.
    let _c2 = connected(&m, &b, "c2", "n-b", None).await;
    m.admin()
        .patch("c2", &json!({"remove_certificates": [fp]}))
        .await
        .unwrap();
    let _c1 = connected(&m, &a, "c1", "n-a", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_term_is_refused_and_a_locked_cluster_is_reset_by_the_admin() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let (good, rogue) = (pki.node("leader"), pki.node("rogue"));
    register(&admin, "c", "enabled", &[&good, &rogue]).await;
    let leader = Responder::spawn(
        connected(&m, &good, "c", "leader", Some(42)).await,
        RunAnswer::Echo,
    );

    // u64::MAX cannot be an etcd revision: refused, and nothing changes.
    let mut gw = Gw::connect(&m, Some(&rogue)).await.unwrap();
    let r = gw.hello("c", "rogue", Some(u64::MAX)).await;
    let reason = "term 18446744073709551615 is above the largest possible term 9223372036854775807 (a term is an etcd revision)";
    assert_eq!(r["error"]["message"], reason, "{r}");
    assert_eq!(r["error"]["code"], -32001);
    assert_eq!(gw.expect_close().await, (1008, reason.to_owned()));
    m.proc.wait_for_line(reason, STEP);
    let v = admin.show("c").await.unwrap();
    assert_eq!(
        (v["active"]["node_id"].as_str(), v["highest_term"].as_u64()),
        (Some("leader"), Some(42)),
        "{v}"
    );
    assert!(leader.closed().is_none());

    // The largest possible term is accepted like any higher term — and no leader can beat it.
    // The largest etcd revision (i64::MAX).
    let max: u64 = 9_223_372_036_854_775_807;
    let _rogue = Responder::spawn(
        connected(&m, &rogue, "c", "rogue", Some(max)).await,
        RunAnswer::Echo,
    );
    let (_, why, _) = leader.wait_closed(STEP).await;
    assert_eq!(why, format!("superseded by term {max}"));
    let mut gw = Gw::connect(&m, Some(&good)).await.unwrap();
    let r = gw.hello("c", "leader", Some(43)).await;
    assert_eq!(
        r["error"]["message"],
        format!("term 43 is not newer than the current term {max} held by node rogue"),
        "{r}"
    );

    // The administrator resets the term: the rogue session is closed, the audit line says
    // what, where, the old and new term and who, and the real leader is back.
    let out = m.cli(&["reset-term", "c"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "cluster c: term reset (was {max} (node rogue)); closed the session of node rogue"
        )),
        "{}",
        out.stdout
    );
    let audit = m.proc.wait_for_line(
        &format!(
            "audit: reset-term cluster=c old_term={max} (node rogue) new_term=none by=127.0.0.1:"
        ),
        STEP,
    );
    eprintln!("audit line: {audit:?}");
    assert!(admin.show("c").await.unwrap()["highest_term"].is_null());
    let s = admin.sessions("c").await.unwrap();
    assert_eq!(
        s[0]["close_reason"], "the term of cluster c was reset by the administrator",
        "{s:#}"
    );
    let leader = Responder::spawn(
        connected(&m, &good, "c", "leader", Some(43)).await,
        RunAnswer::Echo,
    );
    assert_eq!(admin.ping("c").await.unwrap()["node_id"], "leader");
    assert_eq!(admin.show("c").await.unwrap()["highest_term"], 43);
    // Fencing is in force again: an older term is refused.
    let mut gw = Gw::connect(&m, Some(&rogue)).await.unwrap();
    let r = gw.hello("c", "stale", Some(41)).await;
    assert_eq!(
        r["error"]["message"], "term 41 is not newer than the current term 43 held by node leader",
        "{r}"
    );
    assert!(leader.closed().is_none());

    // Over REST too; an unknown cluster is a 404.
    let (code, body) = admin
        .send(
            "POST".parse().unwrap(),
            "/api/v1/clusters/c/reset-term",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            body["old_term"].as_u64(),
            body["closed_session_of"].as_str()
        ),
        (Some(43), Some("leader")),
        "{body}"
    );
    let (code, _) = admin
        .send(
            "POST".parse().unwrap(),
            "/api/v1/clusters/nope/reset-term",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
}

#[test]
fn the_page_live_feed_keeps_the_token_out_of_every_url() {
    use autogate_testkit::webdriver::{self, Browser};
    webdriver::require_tools();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let token = m.token();
    let b = Browser::start();
    b.goto(&format!("{}/", m.url()));
    b.wait_for_text("#signin", "Admin token", STEP);
    b.type_into("#token", &token);
    b.click("#signin-form button[type=submit]");
    b.wait_for_text("#live", "live", STEP);
    b.wait_for_text("#view", "No cluster is registered yet", STEP);

    // A change made elsewhere reaches the open page through the stream, without a reload.
    let pki = Pki::new();
    let cert = pki.node("n");
    rt.block_on(register(&m.admin(), "seen-live", "enabled", &[&cert]));
    b.wait_for_text("#view", "seen-live", Duration::from_secs(3));

    // Every URL the page asked for, the page's own included.
    let urls: Value = b.execute(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
        vec![],
    );
    let urls: Vec<String> = urls
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_owned())
        .collect();
    eprintln!("URLs the page requested: {urls:#?}");
    assert!(
        urls.iter().any(|u| u.contains("/api/v1/events/ticket")),
        "{urls:#?}"
    );
    for u in &urls {
        assert!(!u.contains(&token), "the admin token is in a URL: {u}");
        assert!(!u.contains("token="), "a token parameter in {u}");
    }
    assert!(
        !m.proc.logs().contains(&token),
        "the admin token is in the log"
    );

    // The term reset from the page: the same audit line, naming the browser's address.
    let gw = rt.block_on(connected(&m, &cert, "seen-live", "n-1", Some(5)));
    b.goto(&format!("{}/#/clusters/seen-live", m.url()));
    b.wait_for_text("#highest-term", "5", STEP);
    // The page redraws its facts on every live notice: find and click in one step.
    b.execute(
        "window.confirm = () => true; document.getElementById('reset-term').click();",
        vec![],
    );
    m.proc.wait_for_line(
        "audit: reset-term cluster=seen-live old_term=5 (node n-1) new_term=none by=127.0.0.1:",
        STEP,
    );
    b.wait_until("the page to show no highest term", STEP, || {
        b.text("#highest-term").filter(|t| !t.contains('5'))
    });
    drop(gw);

    // The old way is refused, whatever the token.
    let (code, body) = rt
        .block_on(m.admin().send(
            "GET".parse().unwrap(),
            &format!("/api/v1/events?token={token}"),
            None,
        ))
        .unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("the admin token is not accepted in a URL"),
        "{body}"
    );
}
