//! Black-box tests of the manager's service runs on a real `autogate manager`: a run waits
//! for its cluster's next session and is answered through it, a run no session took in time
//! is refused and never sent, a gateway that deduplicates gets every unanswered run again on
//! its next session (also after a manager restart, whose waiting callers are told at once),
//! and an `Idempotency-Key` names one run.
//! The gateway side is a scripted WebSocket client over real mutual TLS.

use std::time::{Duration, Instant};

use crate::support::manager::*;
use autogate_testkit::free_port;
use autogate_tls::Issued;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Says hello as a gateway that keeps a record of each run id.
async fn dedup_session(m: &Manager, cert: &Issued, cluster: &str, node: &str, term: u64) -> Gw {
    let mut gw = Gw::connect(m, Some(cert)).await.expect("connect");
    gw.send_json(&json!({
        "jsonrpc": "2.0", "id": 0, "method": "hello",
        "params": {"cluster_id": cluster, "node_id": node, "term": term,
                   "version": "test", "nodes": [], "run_dedup": true}
    }))
    .await;
    let r = gw.recv_json().await;
    assert_eq!(r["result"]["accepted"], true, "hello refused: {r}");
    gw
}

/// The next `service.run` the manager sends on `gw`.
async fn next_run(gw: &mut Gw) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no service.run within 10 s");
        let v = tokio::time::timeout(Duration::from_secs(10), gw.recv_json())
            .await
            .expect("a frame within 10 s");
        if v["method"] == "service.run" {
            return v;
        }
    }
}

async fn answer(gw: &mut Gw, req: &Value, stdout: &str) {
    gw.ws
        .send(Message::Text(
            json!({"jsonrpc": "2.0", "id": req["id"],
                   "result": {"stdout": stdout, "return_code": 0}})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_for_the_next_session_and_is_answered_once_through_it() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let core = pki.node("core-1");
    register(&admin, "gw", "enabled", &[&core]).await;

    // No session: the run is accepted and held.
    let caller = {
        let admin = m.admin();
        tokio::spawn(async move {
            admin
                .send(
                    "POST".parse().unwrap(),
                    "/api/v1/clusters/gw/services/svc/run",
                    Some(&json!({"inputs": {"a": 1}})),
                )
                .await
                .unwrap()
        })
    };
    let mut gw = dedup_session(&m, &core, "gw", "n-1", 1).await;
    let first = next_run(&mut gw).await;
    let run_id = first["id"]
        .as_str()
        .expect("a run's id is its run id")
        .to_owned();
    assert_eq!(first["params"]["run_id"], run_id.as_str(), "{first}");
    assert_eq!(first["params"]["inputs"]["a"], 1, "{first}");

    // The session is lost before it answers: the next one gets the same run, same id.
    drop(gw);
    let mut gw = dedup_session(&m, &core, "gw", "n-2", 2).await;
    let again = next_run(&mut gw).await;
    assert_eq!(again["id"], run_id.as_str(), "{again}");
    answer(&mut gw, &again, "ran once").await;

    let (code, body) = caller.await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["run_id"], run_id.as_str(), "{body}");
    assert_eq!(body["node_id"], "n-2", "{body}");
    assert_eq!(body["result"]["stdout"], "ran once");

    // A repeated answer (the gateway answering from its record) changes nothing.
    answer(&mut gw, &again, "a duplicate").await;
    let (code, run) = admin
        .send(
            "GET".parse().unwrap(),
            &format!("/api/v1/clusters/gw/runs/{run_id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["state"], "answered", "{run}");
    assert_eq!(run["answer"]["result"]["stdout"], "ran once", "{run}");
    let (code, body) = admin
        .send(
            "GET".parse().unwrap(),
            "/api/v1/clusters/gw/runs/0190aaaa-0000-7000-8000-000000000000",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_no_session_takes_in_time_is_refused_and_never_sent() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start_with(free_port(), data.path(), |c| {
        c.env("GATEWAY_MANAGER_RUN_QUEUE_TIMEOUT", "1s")
    });
    let admin = m.admin();
    let core = pki.node("core-1");
    register(&admin, "gw", "enabled", &[&core]).await;

    let t0 = Instant::now();
    let (code, body) = admin
        .send(
            "POST".parse().unwrap(),
            "/api/v1/clusters/gw/services/svc/run",
            Some(&json!({"inputs": {}})),
        )
        .await
        .unwrap();
    let waited = t0.elapsed();
    assert_eq!(code, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("manager.run_queue_timeout"), "{message}");
    assert!(message.contains("did not run"), "{message}");
    assert!(waited >= Duration::from_secs(1), "held for {waited:?}");
    assert!(waited < Duration::from_secs(10), "held for {waited:?}");
    // Withdrawn: unknown afterwards, and a session that starts now is not sent it.
    let run_id = body["run_id"].as_str().unwrap();
    let (code, _) = admin
        .send(
            "GET".parse().unwrap(),
            &format!("/api/v1/clusters/gw/runs/{run_id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
    let gw = connected(&m, &core, "gw", "n-1", Some(1)).await;
    let responder = Responder::spawn(gw, RunAnswer::Echo);
    let (code, v) = admin
        .send("POST".parse().unwrap(), "/api/v1/clusters/gw/ping", None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(responder.methods(), ["ping"], "the withdrawn run was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_runs_survive_a_manager_restart_and_one_key_is_one_run() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Manager::start_with(port, data.path(), |c| c);
    let admin = m.admin();
    let core = pki.node("core-1");
    register(&admin, "gw", "enabled", &[&core]).await;
    let mut gw = dedup_session(&m, &core, "gw", "n-1", 1).await;

    // Two callers, one key: one run, sent once.
    let body = json!({"inputs": {"x": "same"}});
    let path = "/api/v1/clusters/gw/services/svc/run";
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (admin, body) = (m.admin(), body.clone());
            tokio::spawn(async move {
                admin
                    .send_keyed("POST".parse().unwrap(), path, Some(&body), Some("key-1"))
                    .await
            })
        })
        .collect();
    let req = next_run(&mut gw).await;
    let run_id = req["id"].as_str().unwrap().to_owned();
    // The same key with another request is refused, and the first run stands.
    let (code, refused) = admin
        .send_keyed(
            "POST".parse().unwrap(),
            path,
            Some(&json!({"inputs": {"x": "other"}})),
            Some("key-1"),
        )
        .await
        .unwrap();
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key-1"),
        "{refused}"
    );

    // The manager stops before the answer: nobody else can answer before its restart, so its
    // callers are told at once, with the run's id, and it exits without waiting them out…
    let gateway = tokio::spawn(async move {
        let mut gw = gw;
        while let Some(Ok(_)) = gw.ws.next().await {}
    });
    m.proc.signal("TERM");
    for c in callers {
        let (code, v) = c
            .await
            .unwrap()
            .expect("an answer from the stopping manager");
        // 504: the run goes on (503 would say it never runs).
        assert_eq!(code, 504, "{v}");
        assert_eq!(v["run_id"], run_id.as_str(), "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("the manager is stopping"), "{v}");
        assert!(message.contains(&format!("/runs/{run_id}")), "{v}");
    }
    // Well within the 5 s it grants connections that do not end.
    let mut m = m;
    let status = m.proc.wait_exit(Duration::from_secs(4));
    assert!(status.success(), "{}", m.proc.dump());
    gateway.await.unwrap();
    let m = Manager::start_with(port, data.path(), |c| c);
    let admin = m.admin();
    // …and the run is sent again, same id, on the first session after the restart.
    let mut gw = dedup_session(&m, &core, "gw", "n-1", 2).await;
    let again = next_run(&mut gw).await;
    assert_eq!(again["id"], run_id.as_str(), "{again}");
    answer(&mut gw, &again, "after the restart").await;
    // A caller retrying with its key gets that answer; the run is not sent a third time.
    let (code, v) = admin
        .send_keyed("POST".parse().unwrap(), path, Some(&body), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["run_id"], run_id.as_str(), "{v}");
    assert_eq!(v["result"]["stdout"], "after the restart", "{v}");
    let responder = Responder::spawn(gw, RunAnswer::Echo);
    let (code, _) = admin
        .send("POST".parse().unwrap(), "/api/v1/clusters/gw/ping", None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(responder.methods(), ["ping"], "the run was sent again");
}

/// `autogate manager service run` through a manager stopped (SIGTERM) and started again
/// mid-run: told the manager is stopping (504 with `Retry-After`), the CLI posts again under its
/// key until the manager is back, and prints the one answer of the one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_outlives_a_manager_restart_mid_run_and_the_run_runs_once() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Manager::start_with(port, data.path(), |c| c);
    let core = pki.node("core-1");
    register(&m.admin(), "gw", "enabled", &[&core]).await;
    let mut gw = dedup_session(&m, &core, "gw", "n-1", 1).await;
    let mut cli = autogate_testkit::Autogate::new(["manager", "service", "run", "gw", "svc"])
        .name("cli")
        .arg("--set")
        .arg("x=1")
        .arg("--raw")
        .arg("--url")
        .arg(m.url())
        .arg("--ca")
        .arg(m.ca().display().to_string())
        .arg("--token-file")
        .arg(data.path().join("admin.token").display().to_string())
        .spawn();
    let first = next_run(&mut gw).await;
    let run_id = first["id"].as_str().unwrap().to_owned();

    let gateway = tokio::spawn(async move {
        let mut gw = gw;
        while let Some(Ok(_)) = gw.ws.next().await {}
    });
    m.proc.signal("TERM");
    let mut m = m;
    assert!(m.proc.wait_exit(Duration::from_secs(4)).success());
    gateway.await.unwrap();
    assert!(cli.is_running(), "the CLI gave up:\n{}", cli.dump());

    let m = Manager::start_with(port, data.path(), |c| c);
    let mut gw = dedup_session(&m, &core, "gw", "n-1", 2).await;
    let again = next_run(&mut gw).await;
    assert_eq!(again["id"], run_id.as_str(), "{again}");
    answer(&mut gw, &again, "ran once").await;
    let status = tokio::task::spawn_blocking(move || {
        let status = cli.wait_exit(Duration::from_secs(30));
        let all: String = cli.lines().into_iter().map(|l| l.text + "\n").collect();
        (status, all)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(status.1.contains("ran once"), "{}", status.1);
    assert!(status.1.contains(&run_id), "{}", status.1);
    // The post after the restart attached to the kept run: nothing else was sent.
    let responder = Responder::spawn(gw, RunAnswer::Echo);
    let (code, _) = m
        .admin()
        .send("POST".parse().unwrap(), "/api/v1/clusters/gw/ping", None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        responder.methods(),
        ["ping"],
        "the run was sent a third time"
    );
}
