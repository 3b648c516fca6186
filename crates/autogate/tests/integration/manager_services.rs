//! End to end: the manager knows a cluster's services and runs them. Real processes on every
//! side — etcd, `autogate manager`, a core node connected with its own certificate — and the
//! resources written to the cluster's store by the test, as an operator's tool would.
//!
//! Covered: the catalog (with the decorator's schema) reaches the manager after `hello`; a
//! service created while connected shows up there (discovery on change); a run through the
//! manager's API returns the program's stdout, stderr and return code exactly (a non-zero exit
//! is still `completed`); inputs the decorator refuses come back as `status: error` with every
//! violation; the manager's deadline cancels a run on the gateway, and so does the end of the
//! session (its process is killed); the CLI prints the catalog and the family's run layout; a
//! disabled cluster refuses runs, and a read-only one is discovered but refuses them too (409).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_automation::{Automation, AutomationOptions, Features, KeySource};
use autogate_manager::AdminClient;
use autogate_resources::model::Kind;
use autogate_store::{EtcdOptions, Store, StoreOptions};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::free_port;
use autogate_testkit::scenario::{core_node, Manager, Pki, START};
use serde_json::{json, Value};

use crate::support::eventually;

/// Deadline for what the manager should see after a change.
const SEEN: Duration = Duration::from_secs(10);

/// The cluster's resources, written straight into its store.
async fn automation(etcd: &EtcdServer, work: &Path) -> Automation {
    let store: Arc<dyn Store> =
        autogate_store::open(StoreOptions::Etcd(EtcdOptions::new([etcd.endpoint()])))
            .await
            .unwrap();
    Automation::new(
        store,
        "cluster_1",
        AutomationOptions {
            work_dir: work.to_path_buf(),
            key: KeySource::Missing,
            features: Features::default(),
            output_limit: autogate_exec::runner::DEFAULT_OUTPUT_LIMIT,
        },
    )
}

async fn seed(a: &Automation) {
    a.create(
        Kind::ExecutableObject,
        json!({"name": "sh", "exec-command": "/bin/sh"}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Decorator,
        json!({"name": "one-command", "schema": {
            "$id": "root", "type": "object",
            "properties": {"cmd": {"type": "string", "maxLength": 200}},
            "required": ["cmd"], "additionalProperties": false}}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Service,
        json!({"name": "shell", "type": "executable", "executable-object": "sh",
               "decorator": "one-command", "arg-format": "-c {{.Value}}",
               "description": "runs one shell command", "tags": ["e2e"]}),
    )
    .await
    .unwrap();
}

async fn post_run(admin: &AdminClient, cluster: &str, name: &str, body: Value) -> (u16, Value) {
    admin
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster}/services/{name}/run"),
            Some(&body),
        )
        .await
        .unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_knows_a_clusters_services_and_runs_them() {
    let etcd = EtcdServer::start();
    let work = tempfile::tempdir().unwrap();
    let resources = automation(&etcd, work.path()).await;
    seed(&resources).await;

    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(&pki, free_port(), data.path());
    m.register(&pki, "cluster_1", &["core-1"]);
    let token = autogate_manager::bootstrap::read_token(&m.token_path()).unwrap();
    let ca = pki.path("ca.pem");
    let admin = AdminClient::new(&m.url(), &token, Some(Path::new(&ca))).unwrap();

    // Nothing announced before the cluster connects.
    let before = admin.services("cluster_1").await.unwrap();
    assert_eq!(before["services"], json!([]), "{before}");
    assert_eq!(before["updated_at"], Value::Null);

    let (node, _port) = core_node(&pki, "core-1", m.port);
    let core = node
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .spawn();
    core.wait_for_line("connected to commander at", START);

    // The catalog arrives after hello, with the decorator's schema.
    let listed = eventually("the catalog at the manager", SEEN, || async {
        let v = admin.services("cluster_1").await.unwrap();
        (names(&v) == ["shell"]).then_some(v)
    })
    .await;
    let shell = &listed["services"][0];
    assert_eq!(shell["type"], "executable", "{listed}");
    assert_eq!(shell["description"], "runs one shell command");
    assert_eq!(shell["tags"], json!(["e2e"]));
    assert_eq!(shell["decorator"], "one-command");
    assert_eq!(shell["schema"]["required"], json!(["cmd"]));
    assert_eq!(shell["schema"]["properties"]["cmd"]["maxLength"], 200);
    assert_eq!(listed["connected"], true);
    assert!(listed["updated_at"].is_string(), "{listed}");
    let view = admin.show("cluster_1").await.unwrap();
    assert_eq!(view["service_count"], 1, "{view}");

    // A service created while connected shows up at the manager.
    let t0 = Instant::now();
    resources
        .create(
            Kind::Service,
            json!({"name": "greeter", "type": "executable", "executable-object": "sh",
                   "arg-format": "-c {{.Value}}", "description": "says hello"}),
        )
        .await
        .unwrap();
    eventually("the new service at the manager", SEEN, || async {
        let v = admin.services("cluster_1").await.unwrap();
        (names(&v) == ["greeter", "shell"]).then_some(())
    })
    .await;
    eprintln!("discovery took {:?}", t0.elapsed());

    // A run through the manager: exact output; a non-zero exit is still completed.
    let (code, body) = post_run(
        &admin,
        "cluster_1",
        "shell",
        json!({"inputs": {"cmd": "echo hello; echo oops >&2; exit 3"}}),
    )
    .await;
    eprintln!("completed: {body}");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    let r = &body["result"];
    assert_eq!(r["stdout"], "hello\n", "{body}");
    assert_eq!(r["stderr"], "oops\n", "{body}");
    assert_eq!(r["return_code"], 3, "{body}");
    for k in ["start_time", "end_time", "elapsed_time"] {
        assert!(r[k].is_string(), "{k}: {body}");
    }
    let view = admin.show("cluster_1").await.unwrap();
    assert_eq!(body["node_id"], view["active"]["node_id"], "{body}");

    // JSON on stdout is also given parsed.
    let (code, body) = post_run(
        &admin,
        "cluster_1",
        "shell",
        json!({"inputs": {"cmd": "echo '{\"ok\": true}'"}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["stdout_json"], json!({"ok": true}), "{body}");

    // Inputs the decorator refuses: nothing runs, every violation comes back.
    let (code, body) = post_run(
        &admin,
        "cluster_1",
        "shell",
        json!({"inputs": {"cmd": 5, "extra": true}}),
    )
    .await;
    eprintln!("refused: {body}");
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    let violations = body["error"]["data"]["violations"].as_array().unwrap();
    assert!(violations.iter().any(|v| v["pointer"] == "/cmd"), "{body}");
    assert!(violations.len() >= 2, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid inputs"));

    // An unknown service.
    let (code, body) = post_run(&admin, "cluster_1", "nope", json!({})).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(
        body["error"]["data"], "service nope does not exist",
        "{body}"
    );

    // The manager's deadline cancels the run on the gateway and says so.
    let t0 = Instant::now();
    let (code, body) = post_run(
        &admin,
        "cluster_1",
        "shell",
        json!({"inputs": {"cmd": "sleep 30"}, "timeout_ms": 500}),
    )
    .await;
    assert_eq!(code, 504, "{body}");
    assert_eq!(body["error"]["code"], -32004, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // The CLI: the catalog as a table, a run in the family's layout (and --set converted by
    // the decorator).
    let out = m.admin_cli(&pki, &["cluster", "services", "cluster_1"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "TYPE", "DESCRIPTION"],
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("shell "), "{}", out.stdout);
    assert!(
        lines[2].ends_with("runs one shell command"),
        "{}",
        out.stdout
    );

    let out = m.admin_cli(
        &pki,
        &[
            "service",
            "run",
            "cluster_1",
            "shell",
            "--set",
            "cmd=echo via-cli; exit 4",
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("Stdout:\nvia-cli\n\nStderr:\n\nReturn Code:  4\nStart Time:   "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\nEnd Time:     "), "{}", out.stdout);
    assert!(out.stdout.contains("\nElapsed Time: "), "{}", out.stdout);

    let out = m.admin_cli(
        &pki,
        &[
            "service",
            "run",
            "cluster_1",
            "shell",
            "--inputs",
            "{\"cmd\": 1}",
            "--raw",
        ],
    );
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "error", "{v}");

    // A run in progress when the session ends goes on: it belongs to the node, and its answer
    // is kept in the cluster's run record for a session that asks again. A cluster disabled
    // meanwhile answers its waiting caller at once.
    let pid_file = work.path().join("sleeper.pid");
    let cmd = format!("echo $$ > {}; sleep 30", pid_file.display());
    let pending = {
        let admin = admin.clone();
        tokio::spawn(async move {
            post_run(
                &admin,
                "cluster_1",
                "shell",
                json!({"inputs": {"cmd": cmd}}),
            )
            .await
        })
    };
    let pid = eventually("the run to start", SEEN, || async {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        text.trim().parse::<u32>().ok()
    })
    .await;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // The link keeps answering while a run is in progress.
    let t0 = Instant::now();
    admin.ping("cluster_1").await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    admin
        .patch("cluster_1", &json!({"state": "disabled"}))
        .await
        .unwrap();
    let (code, body) = pending.await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("was disabled"),
        "{body}"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the run was killed with the session"
    );
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    // Disabled: refused by the manager.
    let (code, body) = post_run(&admin, "cluster_1", "shell", json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["message"], "cluster cluster_1 is disabled");
    let reconnects = core.logs().matches("connected to commander at").count();
    admin
        .patch("cluster_1", &json!({"state": "enabled"}))
        .await
        .unwrap();
    eventually("the node to reconnect", SEEN, || async {
        let v = admin.show("cluster_1").await.unwrap();
        (v["connected"] == true).then_some(())
    })
    .await;
    // The manager shows the session once it accepted the hello; the node logs it once it read
    // the answer, a moment later.
    eventually("the node to log its new session", SEEN, || async {
        (core.logs().matches("connected to commander at").count() > reconnects).then_some(())
    })
    .await;

    // Read-only: still discovered, never executed.
    let runs = |logs: String| {
        logs.matches("running service shell for the manager")
            .count()
    };
    let ran = runs(core.logs());
    admin
        .patch("cluster_1", &json!({"state": "read-only"}))
        .await
        .unwrap();
    let (code, body) = post_run(
        &admin,
        "cluster_1",
        "shell",
        json!({"inputs": {"cmd": "echo no"}}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(
        body["error"]["message"],
        "cluster cluster_1 is read-only: read-only clusters are discovered but not executable",
        "{body}"
    );
    let v = admin.services("cluster_1").await.unwrap();
    assert_eq!(names(&v), ["greeter", "shell"]);
    assert_eq!(runs(core.logs()), ran, "the run never reached the gateway");
}
