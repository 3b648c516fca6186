//! Black-box tests of gateway sessions on a real `autogate manager`: certificates pinned per
//! cluster, refusals with their reasons, cluster states, the term rules, closing a session
//! when its certificate or cluster goes away, the session history across restarts, and how a
//! connection lost without a close reads there.
//! The gateway side is a scripted WebSocket client over real mutual TLS.

use std::time::{Duration, Instant};

use crate::support::manager::*;
use futures::StreamExt;
use helpers::status;
use serde_json::json;

/// Small helpers over the admin client that keep the tests readable.
mod helpers {
    use autogate_manager::AdminClient;
    use serde_json::Value;

    pub async fn status(
        admin: &AdminClient,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = method.parse().unwrap();
        admin
            .send(m, path, body.as_ref())
            .await
            .expect("manager reachable")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_certificate_connects_and_is_visible_with_its_nodes() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let core1 = pki.node("core-1");
    register(&admin, "gw", "enabled", &[&core1]).await;

    let mut gw = Gw::connect(&m, Some(&core1)).await.expect("connect");
    let nodes = json!([
        {"node_id": "n-1", "role": "active", "is_primary": true, "address": "127.0.0.1:50051"},
        {"node_id": "n-2", "role": "standby"},
        {"node_id": "r-1", "role": "runner", "capacity": 4}
    ]);
    let r = gw.hello_with_nodes("gw", "n-1", Some(5), nodes).await;
    assert_eq!(r["id"], 0, "{r}");
    assert_eq!(r["result"]["accepted"], true, "{r}");
    let session_id = r["result"]["session_id"].as_str().unwrap().to_owned();

    let v = admin.show("gw").await.unwrap();
    assert_eq!(v["connected"], true, "{v}");
    assert_eq!(v["active"]["node_id"], "n-1");
    assert_eq!(v["active"]["term"], 5);
    assert_eq!(v["active"]["session_id"], session_id.as_str());
    assert!(v["active"]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let roles: Vec<(&str, &str)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap(), n["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [("n-1", "active"), ("n-2", "standby"), ("r-1", "runner")]
    );
    assert_eq!(v["nodes"][0]["is_primary"], true);
    assert_eq!(
        v["certificates"][0]["fingerprint_sha256"],
        fingerprint(&core1).as_str()
    );
    assert_eq!(v["certificates"][0]["last_presented_by"], "n-1");
    m.proc
        .wait_for_line("gateway cluster gw connected: node n-1 term 5", STEP);

    // nodes.update replaces the list.
    gw.send_json(&json!({"jsonrpc": "2.0", "method": "nodes.update",
        "params": {"nodes": [{"node_id": "n-1", "role": "active"}, {"node_id": "n-3", "role": "paused"}]}}))
        .await;
    eventually("nodes.update to show", STEP, || async {
        let v = admin.show("gw").await.unwrap();
        (v["nodes"][1]["node_id"] == "n-3" && v["nodes"][1]["role"] == "paused").then_some(())
    })
    .await;

    // The gateway may ping the manager: params are echoed.
    gw.send_json(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"x": 1}}))
        .await;
    let pong = gw.recv_json().await;
    assert_eq!(pong, json!({"jsonrpc": "2.0", "id": 7, "result": {"x": 1}}));

    // Requests from the API go through the session.
    let responder = Responder::spawn(gw, RunAnswer::Echo);
    let p = admin.ping("gw").await.unwrap();
    assert_eq!(p["node_id"], "n-1");
    assert_eq!(p["term"], 5);
    assert!(p["rtt_ms"].as_f64().unwrap() >= 0.0, "{p}");
    let out = admin
        .run("gw", "hello-world", &json!({"who": "me"}))
        .await
        .unwrap();
    assert_eq!(out["status"], "completed", "{out}");
    assert_eq!(out["result"]["stdout"], "hello-world ran", "{out}");
    assert_eq!(out["result"]["inputs"], json!({"who": "me"}));
    assert_eq!(responder.methods(), ["ping", "service.run"]);
    let metrics = autogate_testkit::http_get(&format!("127.0.0.1:{}", m.port), "/metrics");
    // /metrics is HTTPS only: a plain-text request does not get an answer.
    assert!(metrics.is_err() || metrics.unwrap().0 != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_and_timeouts_map_to_http_statuses() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let (a, b) = (pki.node("a"), pki.node("b"));
    register(&admin, "plain", "enabled", &[&a]).await;
    register(&admin, "slow", "enabled", &[&b]).await;

    // Not connected yet.
    let (code, body) = status(&admin, "POST", "/api/v1/clusters/plain/ping", None).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "cluster plain is not connected");
    let (code, _) = status(&admin, "POST", "/api/v1/clusters/nope/ping", None).await;
    assert_eq!(code, 404);

    // A gateway without services answers service.run with -32601: HTTP 502 with its error.
    let gw = connected(&m, &a, "plain", "p-1", None).await;
    let _plain = Responder::spawn(gw, RunAnswer::NotAvailable);
    let (code, body) = status(
        &admin,
        "POST",
        "/api/v1/clusters/plain/services/svc/run",
        Some(json!({"params": {"k": "v"}})),
    )
    .await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error"]["code"], -32601, "{body}");
    assert_eq!(body["error"]["message"], "method not available");

    // A gateway that never answers: 504 after the deadline.
    let gw = connected(&m, &b, "slow", "s-1", None).await;
    let _slow = Responder::spawn(gw, RunAnswer::Silent);
    let t0 = Instant::now();
    let (code, body) = status(
        &admin,
        "POST",
        "/api/v1/clusters/slow/services/svc/run",
        Some(json!({"params": {}, "timeout_ms": 300})),
    )
    .await;
    assert_eq!(code, 504, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (code, body) = status(
        &admin,
        "POST",
        "/api/v1/clusters/slow/services/svc/run",
        Some(json!({"params": 5})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("params:"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_reason_and_are_logged() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let good = pki.node("good");
    let other = pki.node("other-ca-signed");
    let stranger = self_signed("stranger");
    let off_cert = pki.node("off");
    register(&admin, "c1", "enabled", &[&good]).await;
    register(&admin, "off", "disabled", &[&off_cert]).await;

    // Registered for another cluster only: refused at hello.
    let mut gw = Gw::connect(&m, Some(&off_cert))
        .await
        .expect("a pinned certificate gets a WebSocket");
    let r = gw.hello("c1", "n", None).await;
    let expected = format!(
        "certificate {} is not registered for cluster c1",
        fingerprint(&off_cert)
    );
    assert_eq!(r["error"]["message"], expected.as_str(), "{r}");
    assert_eq!(r["error"]["code"], -32002);
    assert_eq!(gw.expect_close().await, (1008, expected.clone()));
    m.proc.wait_for_line(&expected, STEP);
    // Never registered (other issuer, self-signed): refused before the upgrade.
    for (cert, what) in [(&other, "unregistered"), (&stranger, "self-signed")] {
        let expected = format!(
            "certificate {} is not registered for any cluster",
            fingerprint(cert)
        );
        match Gw::connect(&m, Some(cert)).await {
            Err(ConnectError::Http(403, body)) => {
                assert!(body.contains(&expected), "{what}: {body}")
            }
            other => panic!("{what}: expected 403, got {:?}", other.map(|_| "a session")),
        }
        m.proc.wait_for_line(&expected, STEP);
    }

    // Unknown and disabled clusters.
    let mut gw = Gw::connect(&m, Some(&good)).await.unwrap();
    let r = gw.hello("nope", "n", None).await;
    assert_eq!(
        r["error"]["message"], "cluster nope is not registered",
        "{r}"
    );
    assert_eq!(gw.expect_close().await.0, 1008);
    let mut gw = Gw::connect(&m, Some(&good)).await.unwrap();
    let r = gw.hello("off", "n", None).await;
    assert_eq!(r["error"]["message"], "cluster off is disabled", "{r}");
    assert_eq!(
        gw.expect_close().await,
        (1008, "cluster off is disabled".into())
    );
    m.proc
        .wait_for_line("refused gateway cluster off node n from 127.0.0.1:", STEP);

    // Expired: the TLS layer refuses it and the manager logs why.
    let old = expired(&pki, "old");
    let r = admin
        .patch("c1", &json!({"add_certificates": [old.cert_pem]}))
        .await
        .unwrap();
    assert_eq!(r["certificates"][1]["expired"], true, "{r}");
    match Gw::connect(&m, Some(&old)).await {
        Err(ConnectError::Tls(_)) | Err(ConnectError::Other(_)) => {}
        Err(e) => panic!("expired certificate: unexpected {e:?}"),
        Ok(mut gw) => {
            // TLS 1.3 reports the server's verdict on the client certificate after the
            // handshake: the first read fails.
            assert!(gw.ws.next().await.is_none_or(|r| r.is_err()));
        }
    }
    m.proc.wait_for_line(
        "failed: invalid peer certificate: certificate expired",
        STEP,
    );

    // No client certificate: refused before the upgrade, with a reason.
    match Gw::connect(&m, None).await {
        Err(ConnectError::Http(401, body)) => {
            assert!(body.contains("a client certificate is required"), "{body}")
        }
        other => panic!("expected 401, got {:?}", other.map(|_| "a session")),
    }
    m.proc
        .wait_for_line("no client certificate presented", STEP);

    // The refusals are counted by reason.
    let (code, text) = {
        let client = reqwest_text(&m).await;
        (client.0, client.1)
    };
    assert_eq!(code, 200);
    for needle in [
        "autogate_manager_sessions_refused_total{reason=\"certificate_not_registered\"} 3",
        "autogate_manager_sessions_refused_total{reason=\"cluster_disabled\"} 1",
        "autogate_manager_sessions_refused_total{reason=\"unknown_cluster\"} 1",
        "autogate_manager_sessions_refused_total{reason=\"no_certificate\"} 1",
        "autogate_manager_handshake_failures_total{reason=\"error\"} 1",
        "autogate_manager_sessions_live 0",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
}

/// `GET /metrics` over HTTPS.
async fn reqwest_text(m: &Manager) -> (u16, String) {
    let (code, v) = status(&m.admin(), "GET", "/metrics", None).await;
    (code, v.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_cluster_connects_but_runs_are_refused_without_forwarding() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let cert = pki.node("ro");
    register(&admin, "ro", "read-only", &[&cert]).await;
    let gw = connected(&m, &cert, "ro", "n-1", Some(1)).await;
    let responder = Responder::spawn(gw, RunAnswer::Echo);
    let (code, body) = status(
        &admin,
        "POST",
        "/api/v1/clusters/ro/services/svc/run",
        Some(json!({"params": {}})),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        "cluster ro is read-only: read-only clusters are discovered but not executable"
    );
    // Reads still work through the session.
    assert_eq!(admin.ping("ro").await.unwrap()["node_id"], "n-1");
    assert_eq!(responder.methods(), ["ping"], "the run was never forwarded");
    // Back to enabled: runs go through.
    admin
        .patch("ro", &json!({"state": "enabled"}))
        .await
        .unwrap();
    assert_eq!(
        admin.run("ro", "svc", &json!({})).await.unwrap()["result"]["stdout"],
        "svc ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_certificate_or_disabling_closes_the_session_within_a_second() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let (c1, c2) = (pki.node("c1"), pki.node("c2"));
    register(&admin, "x", "enabled", &[&c1, &c2]).await;

    // Certificate removed.
    let r = Responder::spawn(connected(&m, &c1, "x", "n-1", None).await, RunAnswer::Echo);
    let fp = fingerprint(&c1);
    let t0 = Instant::now();
    admin
        .patch("x", &json!({"remove_certificates": [fp.to_uppercase()]}))
        .await
        .unwrap();
    let (code, reason, at) = r.wait_closed(Duration::from_secs(5)).await;
    let took = at - t0;
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert_eq!(code, 1008);
    let why = format!("certificate {fp} was removed from cluster x");
    assert_eq!(reason, why);
    let s = admin.sessions("x").await.unwrap();
    assert_eq!(s[0]["close_reason"], why.as_str(), "{s:#}");
    assert!(s[0]["disconnected_at"].is_string());
    m.proc.wait_for_line(&why, STEP);
    // The removed certificate no longer connects.
    match Gw::connect(&m, Some(&c1)).await {
        Err(ConnectError::Http(403, body)) => assert!(body.contains("is not registered"), "{body}"),
        other => panic!("expected 403, got {:?}", other.map(|_| "a session")),
    }

    // Cluster disabled.
    let r = Responder::spawn(connected(&m, &c2, "x", "n-2", None).await, RunAnswer::Echo);
    let t0 = Instant::now();
    admin
        .patch("x", &json!({"state": "disabled"}))
        .await
        .unwrap();
    let (code, reason, at) = r.wait_closed(Duration::from_secs(5)).await;
    assert!(
        at - t0 < Duration::from_secs(1),
        "closed after {:?}",
        at - t0
    );
    assert_eq!((code, reason.as_str()), (1008, "cluster x was disabled"));
    assert_eq!(
        admin.sessions("x").await.unwrap()[0]["close_reason"],
        "cluster x was disabled"
    );

    // Cluster deleted.
    admin
        .patch("x", &json!({"state": "enabled"}))
        .await
        .unwrap();
    let r = Responder::spawn(connected(&m, &c2, "x", "n-2", None).await, RunAnswer::Echo);
    let t0 = Instant::now();
    admin.delete("x").await.unwrap();
    let (_, reason, at) = r.wait_closed(Duration::from_secs(5)).await;
    assert!(at - t0 < Duration::from_secs(1));
    assert_eq!(reason, "cluster x was deleted");
    let (code, _) = status(&admin, "GET", "/api/v1/clusters/x/sessions", None).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_term_replaces_lower_or_equal_is_refused_and_sessions_never_overlap() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let (a, b, c) = (pki.node("a"), pki.node("b"), pki.node("c"));
    register(&admin, "ha", "enabled", &[&a, &b, &c]).await;

    let first = Responder::spawn(
        connected(&m, &a, "ha", "node-a", Some(5)).await,
        RunAnswer::Echo,
    );
    let _second = connected(&m, &b, "ha", "node-b", Some(7)).await;
    let (code, reason, _) = first.wait_closed(STEP).await;
    assert_eq!((code, reason.as_str()), (1000, "superseded by term 7"));
    let v = admin.show("ha").await.unwrap();
    assert_eq!(
        (
            v["active"]["node_id"].as_str(),
            v["active"]["term"].as_u64()
        ),
        (Some("node-b"), Some(7))
    );

    for term in [6, 7] {
        let mut gw = Gw::connect(&m, Some(&c)).await.unwrap();
        let r = gw.hello("ha", "node-c", Some(term)).await;
        let expected =
            format!("term {term} is not newer than the current term 7 held by node node-b");
        assert_eq!(r["error"]["message"], expected.as_str(), "{r}");
        assert_eq!(r["error"]["code"], -32001);
        assert_eq!(gw.expect_close().await, (1008, expected));
    }
    // node-b is untouched.
    assert_eq!(
        admin.show("ha").await.unwrap()["active"]["node_id"],
        "node-b"
    );

    // A third, higher term replaces again; the history shows three sessions, one live, no
    // overlap, with the replacement reasons.
    let _third = connected(&m, &c, "ha", "node-c", Some(9)).await;
    let s = admin.sessions("ha").await.unwrap();
    assert_eq!(s.as_array().unwrap().len(), 3, "{s:#}");
    assert_eq!(s[0]["node_id"], "node-c");
    assert!(s[0]["disconnected_at"].is_null());
    assert_eq!(s[1]["close_reason"], "superseded by term 9");
    assert_eq!(s[2]["close_reason"], "superseded by term 7");
    assert_no_overlap(&s);
    // Millisecond RFC 3339 UTC.
    let ts = s[0]["connected_at"].as_str().unwrap();
    assert_eq!((ts.len(), &ts[19..20], &ts[23..]), (24, ".", "Z"), "{ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_term_second_node_is_refused_with_the_family_message() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let (a, b) = (pki.node("a"), pki.node("b"));
    register(&admin, "cluster_1", "enabled", &[&a, &b]).await;
    let _first = connected(&m, &a, "cluster_1", "gw1_0193", None).await;
    let mut second = Gw::connect(&m, Some(&b)).await.unwrap();
    let r = second.hello("cluster_1", "gw2_0194", None).await;
    let expected =
        "there is already an active connection for gateway cluster: cluster_1 (node gw1_0193)";
    assert_eq!(r["error"]["message"], expected, "{r}");
    assert_eq!(second.expect_close().await, (1008, expected.to_owned()));
    let s = admin.sessions("cluster_1").await.unwrap();
    assert_eq!(
        s.as_array().unwrap().len(),
        1,
        "a refused hello is not a session: {s:#}"
    );
    assert_no_overlap(&s);
    m.proc.wait_for_line(expected, STEP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_restarts_and_shutdown_closes_sessions() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let cert = pki.node("n");
    let port = autogate_testkit::free_port();
    let mut m = Manager::start_with(port, data.path(), |c| c);
    register(&m.admin(), "keep", "enabled", &[&cert]).await;
    let _gw = connected(&m, &cert, "keep", "n-1", Some(3)).await;

    // A crash leaves the session open in the store: the next start closes it.
    m.proc.kill();
    let mut m = Manager::start_with(port, data.path(), |c| c);
    let s = m.admin().sessions("keep").await.unwrap();
    assert_eq!(s[0]["close_reason"], "manager restarted", "{s:#}");
    assert!(s[0]["disconnected_at"].as_str().unwrap() >= s[0]["connected_at"].as_str().unwrap());
    // The highest term survived the restart too.
    let mut stale = Gw::connect(&m, Some(&cert)).await.unwrap();
    let r = stale.hello("keep", "other", Some(2)).await;
    assert_eq!(
        r["error"]["message"],
        "term 2 is not newer than the current term 3 held by node n-1"
    );

    // SIGTERM: the live session is closed with a reason, the exit is clean.
    let r = Responder::spawn(
        connected(&m, &cert, "keep", "n-1", Some(3)).await,
        RunAnswer::Echo,
    );
    m.proc.signal("TERM");
    let (code, reason, _) = r.wait_closed(STEP).await;
    assert_eq!((code, reason.as_str()), (1001, "manager shutting down"));
    assert!(m.proc.wait_exit(STEP).success(), "{}", m.proc.dump());
    m.proc.wait_for_line("received shutdown signal", STEP);

    let m = Manager::start_with(port, data.path(), |c| c);
    let s = m.admin().sessions("keep").await.unwrap();
    let reasons: Vec<&str> = s
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["close_reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["manager shutting down", "manager restarted"],
        "{s:#}"
    );
    assert_no_overlap(&s);
}

/// `cluster sessions` labels the gap before each session as the page does: after a session
/// the manager's own stop ended it is `manager restart`, even when another node dials first;
/// only a change of node between sessions the manager did not end is a `fail-over`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cli_labels_a_manager_restart_apart_from_a_fail_over() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (a, b) = (pki.node("a"), pki.node("b"));
    let port = autogate_testkit::free_port();
    let mut m = Manager::start_with(port, data.path(), |c| c);
    register(&m.admin(), "c", "enabled", &[&a, &b]).await;
    let first = Responder::spawn(
        connected(&m, &a, "c", "node-a", Some(1)).await,
        RunAnswer::Echo,
    );
    m.proc.signal("TERM");
    first.wait_closed(STEP).await;
    assert!(m.proc.wait_exit(STEP).success(), "{}", m.proc.dump());

    // Back on the same data, and the other node dials first: still no fail-over.
    let m = Manager::start_with(port, data.path(), |c| c);
    let admin = m.admin();
    drop(connected(&m, &b, "c", "node-b", Some(2)).await);
    eventually("node-b's session closed", STEP, || async {
        let s = admin.sessions("c").await.ok()?;
        (!s[0]["disconnected_at"].is_null()).then_some(())
    })
    .await;
    // Node a takes over from node b, which the manager did not stop: a fail-over.
    let _third = connected(&m, &a, "c", "node-a", Some(3)).await;

    let out = {
        let cli = m.cli(&["sessions", "c"]);
        assert_eq!(cli.code(), Some(0), "{}", cli.stderr);
        cli.stdout
    };
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    let (from, to) = (
        header.find("GAP BEFORE").unwrap_or_else(|| panic!("{out}")),
        header
            .find("CLOSE REASON")
            .unwrap_or_else(|| panic!("{out}")),
    );
    let rows: Vec<(&str, String)> = lines
        .map(|l| {
            let node = l.split_whitespace().next().unwrap();
            // The live session has no close reason: its line ends after the gap.
            let gap = l.get(from..to.min(l.len())).unwrap_or("");
            (node, gap.trim().to_owned())
        })
        .collect();
    let gap = |label: &str| -> u64 {
        label
            .strip_suffix(" ms")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a gap in ms: {label:?}\n{out}"))
    };
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0].0, "node-a", "{out}");
    assert!(rows[0].1.starts_with("fail-over "), "{out}");
    gap(&rows[0].1);
    assert_eq!(rows[1].0, "node-b", "{out}");
    assert!(rows[1].1.starts_with("manager restart "), "{out}");
    gap(&rows[1].1);
    assert_eq!(
        rows[2],
        ("node-a", String::new()),
        "the oldest has no gap\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_core_node_answers_ping_and_run_through_the_manager() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let node = pki.node("core-1");
    register(&admin, "cluster_1", "enabled", &[&node]).await;
    let core = autogate_testkit::Autogate::new(["server"])
        .name("core-1")
        .env(
            "GATEWAY_SERVER_PORT",
            autogate_testkit::free_port().to_string(),
        )
        .env("GATEWAY_CONNECT_HOSTS", format!("127.0.0.1:{}", m.port))
        .env(
            "GATEWAY_CONNECT_CERTIFICATE_FILE",
            pki.path("core-1.pem").display().to_string(),
        )
        .env(
            "GATEWAY_CONNECT_PRIVATE_KEY_FILE",
            pki.path("core-1-key.pem").display().to_string(),
        )
        // The gateway verifies the manager's minted self-signed certificate.
        .env(
            "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
            m.ca().display().to_string(),
        )
        .spawn();
    core.wait_for_line("connected to commander at", START);
    let v = eventually("the session to show", STEP, || async {
        let v = admin.show("cluster_1").await.unwrap();
        (v["connected"] == true).then_some(v)
    })
    .await;
    let node_id = v["active"]["node_id"].as_str().unwrap().to_owned();
    let p = admin.ping("cluster_1").await.unwrap();
    assert_eq!(p["node_id"], node_id.as_str(), "{p}");
    // No services exist yet on the core node: its JSON-RPC error comes back as HTTP 404.
    let (code, body) = status(
        &admin,
        "POST",
        "/api/v1/clusters/cluster_1/services/hello/run",
        Some(json!({"inputs": {}})),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error"]["code"], -32011, "{body}");
    // Removing its certificate drops it within a second, and the manager records why.
    let t0 = Instant::now();
    admin
        .patch(
            "cluster_1",
            &json!({"remove_certificates": [fingerprint(&node)]}),
        )
        .await
        .unwrap();
    eventually("the session to end", STEP, || async {
        let v = admin.show("cluster_1").await.unwrap();
        (v["connected"] == false).then_some(())
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    let s = admin.sessions("cluster_1").await.unwrap();
    assert!(
        s[0]["close_reason"]
            .as_str()
            .unwrap()
            .starts_with("certificate "),
        "{s:#}"
    );
    drop(core);
}

/// Waits for the newest session of `cluster` to be recorded closed; returns it.
async fn newest_closed(admin: &autogate_manager::AdminClient, cluster: &str) -> serde_json::Value {
    eventually("the session's end to be recorded", STEP, || async {
        let s = admin.sessions(cluster).await.unwrap();
        s[0]["disconnected_at"].is_string().then(|| s[0].clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_without_a_close_is_recorded_in_plain_words() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let core1 = pki.node("core-1");
    register(&admin, "gw", "enabled", &[&core1]).await;

    // What the kernel does for a killed node: the TCP connection ends (FIN) with neither a
    // WebSocket close frame nor a TLS close_notify.
    let gw = connected(&m, &core1, "gw", "n-1", Some(1)).await;
    let (tcp, _tls) = gw.ws.into_inner().into_inner();
    drop(tcp);
    let s = newest_closed(&admin, "gw").await;
    assert_eq!(
        s["close_reason"], "connection lost: the node stopped without closing the session",
        "{s:#}"
    );
    // The library's own words, documentation link included, are in the manager's log.
    let line = m.proc.wait_for_line("close_notify", STEP);
    assert!(
        line.text
            .contains("closed: connection lost: the node stopped without closing the session"),
        "{line:?}"
    );

    // A reset (RST) instead of an orderly end.
    let gw = connected(&m, &core1, "gw", "n-1", Some(2)).await;
    let (tcp, _tls) = gw.ws.into_inner().into_inner();
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let s = newest_closed(&admin, "gw").await;
    assert_eq!(s["close_reason"], "connection reset by the node", "{s:#}");

    // Neither the history nor the page's timeline (which shows the same records) carries a
    // library's error text.
    let (code, all) = status(&admin, "GET", "/api/v1/clusters/gw/sessions", None).await;
    assert_eq!(code, 200);
    let text = all.to_string();
    assert!(
        !text.contains("https://") && !text.contains("docs.rs") && !text.contains("IO error"),
        "{all:#}"
    );
}
