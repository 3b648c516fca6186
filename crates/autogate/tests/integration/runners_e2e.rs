//! Distributed execution end to end (docs/runners.md): real etcd, real core nodes, real
//! runners and a real manager, all processes of our binary. Runner leases are 2 s so that lost
//! runners are noticed quickly. Every program a job runs appends a unique line to a file, so a
//! job that ran twice shows up as a repeated line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::proxy::TcpProxy;
use autogate_testkit::scenario::{Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::support::{self, ha_core_node, ha_without_manager};

/// Long enough for a job, a lost runner's lease and a re-dispatch.
const DONE: Duration = Duration::from_secs(60);

pub(crate) struct Core {
    pub(crate) proc: Process,
    pub(crate) port: u16,
    pub(crate) key: String,
}

impl Core {
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.addr(), &self.key, method, path, body)
    }
}

fn call(addr: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    support::call(addr, key, method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A core node with distributed execution on the etcd at `etcd` (no HA, no manager).
fn solo_core(etcd: &str) -> Core {
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .name("core")
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
        .env("GATEWAY_CONNECT_ENABLED", "false")
        .env("GATEWAY_LOG_LEVEL", "DEBUG");
    let proc = with_admin_password(cmd).spawn();
    let key = admin_key(port);
    Core { proc, port, key }
}

fn runner(name: &str, etcd: &str, capacity: u32, drain_grace: &str) -> Process {
    Autogate::new(["runner"])
        .name(name)
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
        .env("GATEWAY_RUNNER_CAPACITY", capacity.to_string())
        .env("GATEWAY_RUNNER_DRAIN_GRACE", drain_grace)
        .env("GATEWAY_LOG_LEVEL", "DEBUG")
        .spawn()
}

/// The `sh -c` executable object, a one-command decorator, and `shell` (no retries) and
/// `shell-retry` (one retry) services.
pub(crate) fn seed(core: &Core) {
    autogate_testkit::scenario::seed_shell(&core.addr(), &core.key);
}

/// Runner node ids registered now, with their record.
fn runners(core: &Core) -> BTreeMap<String, Value> {
    let (status, v) = core.call("GET", "/api/v1/runners", None);
    assert_eq!(status, 200, "{v}");
    v["runners"]
        .as_array()
        .expect("runners")
        .iter()
        .map(|r| {
            (
                r["node_id"].as_str().expect("node_id").to_owned(),
                r.clone(),
            )
        })
        .collect()
}

fn wait_runners(core: &Core, n: usize) -> Vec<String> {
    poll_until(&format!("{n} runner(s) registered"), START, || {
        let r = runners(core);
        (r.len() == n).then(|| r.into_keys().collect())
    })
}

fn run_body(cmd: &str) -> Value {
    json!({ "inputs": { "cmd": cmd } })
}

/// Lines of a file, counted.
pub(crate) fn lines(path: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *out.entry(l.to_owned()).or_default() += 1;
    }
    out
}

fn job(core: &Core, id: &str) -> Value {
    let (status, v) = core.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits until `file` exists (a job's program has started).
fn started(file: &Path) {
    poll_until(&format!("{} to exist", file.display()), DONE, || {
        file.exists().then_some(())
    });
}

fn cli(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = Autogate::new(args.iter().copied());
    for (k, v) in env {
        cmd = cmd.env(k, v.clone());
    }
    let out = cmd.output(START);
    (out.code().unwrap_or(-1), out.stdout, out.stderr)
}

#[test]
fn two_runners_share_200_concurrent_jobs_and_none_runs_twice() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let core = solo_core(&etcd.endpoint());
    seed(&core);
    let _a = runner("runner-a", &etcd.endpoint(), 8, "5s");
    let _b = runner("runner-b", &etcd.endpoint(), 8, "5s");
    let ids = wait_runners(&core, 2);

    let file = dir.path().join("ran");
    let addr = core.addr();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (addr, key, file) = (&addr, &core.key, &file);
                s.spawn(move || {
                    let cmd = format!("echo job-{i} >> {}", file.display());
                    call(
                        addr,
                        key,
                        "POST",
                        "/api/v1/services/shell/run",
                        Some(run_body(&cmd)),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut job_ids = BTreeSet::new();
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["result"]["return_code"], 0, "{v}");
        job_ids.insert(v["job_id"].as_str().expect("job_id").to_owned());
    }
    assert_eq!(job_ids.len(), 200);
    let ran = lines(&file);
    assert_eq!(ran.len(), 200, "{ran:?}");
    assert!(ran.values().all(|n| *n == 1), "a job ran twice: {ran:?}");

    // Both runners took work; every job needed one attempt.
    let (status, v) = core.call("GET", "/api/v1/cluster/activity", None);
    assert_eq!(status, 200, "{v}");
    let jobs = v["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 200, "{v}");
    let used: BTreeSet<&str> = jobs.iter().filter_map(|j| j["node"].as_str()).collect();
    assert_eq!(used.len(), 2, "runners used: {used:?}");
    assert!(jobs
        .iter()
        .all(|j| j["attempts"] == 1 && j["state"] == "completed"));
    let first = job_ids.first().expect("a job");
    let one = job(&core, first);
    assert_eq!(one["state"], "completed", "{one}");
    assert_eq!(one["result"]["return_code"], 0, "{one}");
    let (status, waited) = core.call("GET", &format!("/api/v1/jobs/{first}?wait=true"), None);
    assert_eq!(
        (status, &waited["result"]),
        (200, &one["result"]),
        "{waited}"
    );
    let (status, v) = core.call("GET", "/api/v1/jobs/no-such-job", None);
    assert_eq!(status, 404, "{v}");

    // The metrics counted them.
    let (_, metrics) = autogate_testkit::http_get(&addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains("autogate_jobs_submitted_total 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("autogate_jobs_finished_total{outcome=\"completed\"} 200"),
        "{metrics}"
    );

    // The CLI: client mode through the API, local mode on the store.
    let client = [
        ("GATEWAY_APPLICATION_MODE", "client".to_owned()),
        ("GATEWAY_CLIENT_PORT", core.port.to_string()),
        ("GATEWAY_CLIENT_API_KEY", core.key.clone()),
    ];
    let local = [
        ("GATEWAY_STORE_BACKEND", "etcd".to_owned()),
        ("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint()),
        ("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true".to_owned()),
        ("GATEWAY_CONNECT_ENABLED", "false".to_owned()),
    ];
    for (mode, env) in [("client", &client[..]), ("local", &local[..])] {
        let (code, out, err) = cli(&["get", "runners", "--raw"], env);
        assert_eq!(code, 0, "{mode}: {out}\n{err}");
        let v: Value = serde_json::from_str(&out).expect("get runners --raw is JSON");
        let listed: Vec<&str> = v["runners"]
            .as_array()
            .expect("runners")
            .iter()
            .filter_map(|r| r["node_id"].as_str())
            .collect();
        assert_eq!(listed, ids, "{mode}: {v}");
        let (code, out, err) = cli(&["get", "runners"], env);
        assert_eq!(code, 0, "{mode}: {out}\n{err}");
        assert!(out.contains("RUNNING/CAPACITY"), "{mode}: {out}");
        let (code, out, err) = cli(&["inspect", "cluster", "health", "--raw"], env);
        assert_eq!(code, 0, "{mode}: {out}\n{err}");
        let v: Value = serde_json::from_str(&out).expect("health --raw is JSON");
        assert_eq!(v["healthy"], true, "{mode}: {v}");
        assert_eq!(v["runners"]["available"], 2, "{mode}: {v}");
        assert_eq!(v["store"]["status"], "healthy", "{mode}: {v}");
    }
    drop(core);
}

#[test]
fn a_lost_runners_retryable_job_moves_and_a_non_retryable_one_fails() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let core = solo_core(&etcd.endpoint());
    seed(&core);
    let mut a = runner("runner-a", &etcd.endpoint(), 4, "5s");
    let a_id = wait_runners(&core, 1).remove(0);

    let (retry_file, once_file) = (dir.path().join("retry"), dir.path().join("once"));
    let addr = core.addr();
    let spawn_run = |service: &'static str, file: PathBuf| {
        let (addr, key) = (addr.clone(), core.key.clone());
        std::thread::spawn(move || {
            let cmd = format!(
                "echo started >> {f}; [ $(wc -l < {f}) -gt 1 ] || sleep 60; echo finished",
                f = file.display()
            );
            call(
                &addr,
                &key,
                "POST",
                &format!("/api/v1/services/{service}/run"),
                Some(run_body(&cmd)),
            )
        })
    };
    let retry = spawn_run("shell-retry", retry_file.clone());
    let once = spawn_run("shell", once_file.clone());
    started(&retry_file);
    started(&once_file);
    let _b = runner("runner-b", &etcd.endpoint(), 4, "5s");
    wait_runners(&core, 2);
    a.kill();

    let (status, v) = retry.join().expect("retry client");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["stdout"], "finished\n", "{v}");
    let retry_job = v["job_id"].as_str().expect("job_id").to_owned();
    let (status, v) = once.join().expect("once client");
    assert_eq!(status, 503, "{v}");
    let once_job = v["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(
        v["error"],
        format!("runner {a_id} lost while running job {once_job}"),
        "{v}"
    );
    // The non-retryable job ran once; the retryable one twice, on two runners.
    assert_eq!(lines(&once_file).get("started"), Some(&1));
    assert_eq!(lines(&retry_file).get("started"), Some(&2));

    let (code, out, err) = cli(
        &["inspect", "cluster", "activity", "--raw"],
        &[
            ("GATEWAY_STORE_BACKEND", "etcd".to_owned()),
            ("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint()),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("activity --raw is JSON");
    let jobs = v.as_array().or_else(|| v["jobs"].as_array()).expect("jobs");
    let find = |id: &str| {
        jobs.iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("job {id} not in {v}"))
    };
    assert_eq!(find(&retry_job)["attempts"], 2, "{v}");
    assert_eq!(find(&retry_job)["state"], "completed", "{v}");
    assert_eq!(find(&once_job)["attempts"], 1, "{v}");
    assert_eq!(find(&once_job)["state"], "failed", "{v}");
    // Each attempt's runner and outcome are on the job record.
    let rec = job(&core, &retry_job);
    let attempts = rec["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["runner"], a_id.as_str(), "{rec}");
    assert!(
        attempts[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("lost: ")),
        "{rec}"
    );
    assert_ne!(attempts[1]["runner"], a_id.as_str(), "{rec}");
    assert_eq!(attempts[1]["outcome"], "completed", "{rec}");
    drop(core);
}

#[test]
fn a_stopped_runner_drains_and_hands_back_what_is_left() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let core = solo_core(&etcd.endpoint());
    seed(&core);
    let mut a = runner("runner-a", &etcd.endpoint(), 4, "3s");
    let a_id = wait_runners(&core, 1).remove(0);
    let (short_file, long_file) = (dir.path().join("short"), dir.path().join("long"));
    let addr = core.addr();
    let spawn_run = |cmd: String| {
        let (addr, key) = (addr.clone(), core.key.clone());
        std::thread::spawn(move || {
            call(
                &addr,
                &key,
                "POST",
                "/api/v1/services/shell/run",
                Some(run_body(&cmd)),
            )
        })
    };
    // Finishes within the drain grace.
    let short = spawn_run(format!(
        "echo started >> {f}; sleep 1; echo short",
        f = short_file.display()
    ));
    // Outlives it the first time; quick when dispatched again.
    let long = spawn_run(format!(
        "echo started >> {f}; [ $(wc -l < {f}) -gt 1 ] || sleep 60; echo long",
        f = long_file.display()
    ));
    started(&short_file);
    started(&long_file);
    let _b = runner("runner-b", &etcd.endpoint(), 4, "5s");
    wait_runners(&core, 2);
    a.signal("TERM");

    let (status, v) = short.join().expect("short client");
    assert_eq!(
        (status, &v["result"]["stdout"]),
        (200, &json!("short\n")),
        "{v}"
    );
    let rec = job(&core, v["job_id"].as_str().expect("job_id"));
    assert_eq!(rec["attempts"].as_array().map(Vec::len), Some(1), "{rec}");
    assert_eq!(rec["runner"], a_id.as_str(), "{rec}");

    // The non-retryable long job was handed back and ran again elsewhere: a hand-back uses
    // no retry.
    let (status, v) = long.join().expect("long client");
    assert_eq!(
        (status, &v["result"]["stdout"]),
        (200, &json!("long\n")),
        "{v}"
    );
    let rec = job(&core, v["job_id"].as_str().expect("job_id"));
    let attempts = rec["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{rec}");
    assert_eq!(attempts[0]["runner"], a_id.as_str(), "{rec}");
    assert_eq!(attempts[0]["outcome"], "released", "{rec}");
    assert_eq!(attempts[1]["outcome"], "completed", "{rec}");

    let status = a.wait_exit(DONE);
    assert!(status.success(), "{status:?}\n{}", a.logs());
    a.wait_for_line("job handed back for dispatch elsewhere", START);
    a.wait_for_line("runner stopped", START);
    drop(core);
}

#[test]
fn a_runner_cut_from_etcd_stops_claiming_and_cannot_overwrite_the_new_attempt() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let core = solo_core(&etcd.endpoint());
    seed(&core);
    let proxy = TcpProxy::start(&etcd.endpoint());
    let a = runner("runner-a", &proxy.endpoint(), 4, "5s");
    let a_id = wait_runners(&core, 1).remove(0);
    let file = dir.path().join("attempts");
    let cmd = format!(
        "echo started >> {f}; if [ $(wc -l < {f}) -gt 1 ]; then echo second; else sleep 8; echo first; fi",
        f = file.display()
    );
    let run = {
        let (addr, key) = (core.addr(), core.key.clone());
        std::thread::spawn(move || {
            call(
                &addr,
                &key,
                "POST",
                "/api/v1/services/shell-retry/run",
                Some(run_body(&cmd)),
            )
        })
    };
    started(&file);
    let _b = runner("runner-b", &etcd.endpoint(), 4, "5s");
    wait_runners(&core, 2);
    proxy.cut_blackhole();

    // Its lease expires: it leaves the runner list and its job moves to the other runner.
    poll_until("the cut runner to leave the list", DONE, || {
        (!runners(&core).contains_key(&a_id)).then_some(())
    });
    let (status, v) = run.join().expect("client");
    assert_eq!(
        (status, &v["result"]["stdout"]),
        (200, &json!("second\n")),
        "{v}"
    );
    let job_id = v["job_id"].as_str().expect("job_id").to_owned();

    // Back in touch with etcd, it registers again, and the job's result stays the new
    // attempt's even after the old program's time has passed.
    proxy.restore();
    poll_until("the runner to register again", DONE, || {
        runners(&core).contains_key(&a_id).then_some(())
    });
    a.wait_for_line("runner lease expired", START);
    let rec = job(&core, &job_id);
    assert_eq!(rec["result"]["stdout"], "second\n", "{rec}");
    let attempts = rec["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{rec}");
    assert_eq!(attempts[0]["runner"], a_id.as_str(), "{rec}");
    assert_ne!(attempts[1]["runner"], a_id.as_str(), "{rec}");
    // The first attempt's program was stopped when the runner lost its lease: it never
    // finished, so two attempts started and only the second ended.
    assert_eq!(lines(&file).get("started"), Some(&2), "{:?}", lines(&file));
    drop(core);
}

#[test]
fn jobs_in_flight_survive_a_kill_9_of_the_active_core_node() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, "cluster_1", &["core-1", "core-2"]);
    let node = |name: &str| {
        let (cmd, port) = ha_core_node(&pki, name, manager.port, &etcd.endpoint());
        let cmd = cmd.env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true");
        (cmd.spawn(), port)
    };
    let (first, p1) = node("core-1");
    first.wait_for_line("connected to commander at", START);
    let core = Core {
        proc: first,
        port: p1,
        key: admin_key(p1),
    };
    seed(&core);
    let (second, p2) = node("core-2");
    let standby = Core {
        proc: second,
        port: p2,
        key: admin_key(p2),
    };
    let _a = runner("runner-a", &etcd.endpoint(), 30, "5s");
    let _b = runner("runner-b", &etcd.endpoint(), 30, "5s");
    wait_runners(&core, 2);

    // 50 runs through the manager; each waits for a go file so all are in flight at the kill.
    let token = autogate_manager::bootstrap::read_token(&manager.token_path()).expect("token");
    let ca = PathBuf::from(pki.path("ca.pem"));
    let (file, go) = (dir.path().join("ran"), dir.path().join("go"));
    let murl = format!("127.0.0.1:{}", manager.port);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let (murl, token, ca) = (murl.clone(), token.clone(), ca.clone());
            let cmd = format!(
                "while [ ! -e {go} ]; do sleep 0.1; done; echo job-{i} >> {f}; echo job-{i}",
                go = go.display(),
                f = file.display()
            );
            std::thread::spawn(move || {
                let body = json!({"inputs": {"cmd": cmd}, "timeout_ms": 120000}).to_string();
                autogate_testkit::auth::https_request(
                    &murl,
                    "POST",
                    "/api/v1/clusters/cluster_1/services/shell/run",
                    Some(&token),
                    Some(("application/json", body.as_bytes())),
                    &ca,
                    None,
                )
            })
        })
        .collect();
    poll_until("50 jobs assigned", DONE, || {
        let (_, v) = standby.call("GET", "/api/v1/cluster/activity", None);
        let jobs = v["jobs"].as_array()?;
        (jobs.len() == 50 && jobs.iter().all(|j| j["state"] == "assigned")).then_some(())
    });
    let mut core = core;
    core.proc.kill();
    standby
        .proc
        .wait_for_line("connected to commander at", DONE);
    // The manager sends the 50 runs again to the new active node (same run ids), which finds
    // their jobs instead of queuing them twice. The jobs are held until then: a job that
    // ended first would be answered by the new active node's delivery, and its run not sent
    // again at all.
    poll_until("the 50 runs sent again found as jobs", DONE, || {
        (standby.proc.logs().matches("not queuing it again").count() == 50).then_some(())
    });
    std::fs::write(&go, "go").expect("go file");

    let mut seen = BTreeSet::new();
    for c in clients {
        let (status, body) = c.join().expect("client").expect("manager answer");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
        seen.insert(v["result"]["stdout"].as_str().expect("stdout").to_owned());
    }
    assert_eq!(seen.len(), 50, "{seen:?}");
    let logs = standby.proc.logs();
    assert_eq!(logs.matches("not queuing it again").count(), 50);
    assert_eq!(
        logs.matches("for the manager as job").count(),
        0,
        "queued again"
    );
    // Every job is recorded delivered, and the new active node answers for them.
    let (_, v) = standby.call("GET", "/api/v1/cluster/activity", None);
    let ids: Vec<String> = v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 50, "{v}");
    for id in &ids {
        let (status, rec) = standby.call("GET", &format!("/api/v1/jobs/{id}?wait=true"), None);
        assert_eq!(status, 200, "{rec}");
        assert_eq!(rec["state"], "completed", "{rec}");
        assert_eq!(rec["origin"]["kind"], "manager", "{rec}");
    }
    // Recorded delivered once sent (the record is written just after the frame).
    poll_until("every job recorded delivered", START, || {
        ids.iter()
            .all(|id| job(&standby, id)["delivered"] == true)
            .then_some(())
    });
    let ran = lines(&file);
    assert_eq!(ran.len(), 50, "{ran:?}");
    assert!(ran.values().all(|n| *n == 1), "a job ran twice: {ran:?}");
    // The manager's cluster view lists the runners with their load.
    let v = manager.show(&pki, "cluster_1");
    let shown: Vec<&Value> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "runner")
        .collect();
    assert_eq!(shown.len(), 2, "{v}");
    assert!(shown.iter().all(|n| n["capacity"] == 30), "{v}");
}

#[test]
fn an_api_caller_told_the_active_node_changed_gets_the_result_by_job_id() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ha_node = |name: &str| {
        let port = free_port();
        let cmd = Autogate::new(["server"])
            .name(name)
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
            .env("GATEWAY_LOG_LEVEL", "DEBUG");
        let cmd = ha_without_manager(cmd, &etcd.endpoint());
        let proc = with_admin_password(cmd).spawn();
        let key = admin_key(port);
        Core { proc, port, key }
    };
    let role = |c: &Core| {
        let (_, body) = autogate_testkit::http_get(&c.addr(), "/api/v1/health").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["ha"]["role"].as_str().map(str::to_owned)
    };
    let first = ha_node("core-1");
    poll_until("core-1 active", START, || {
        (role(&first).as_deref() == Some("active")).then_some(())
    });
    seed(&first);
    let second = ha_node("core-2");
    poll_until("core-2 standby", START, || {
        (role(&second).as_deref() == Some("standby")).then_some(())
    });
    let _r = runner("runner-a", &etcd.endpoint(), 4, "5s");
    wait_runners(&first, 1);

    let (file, go) = (dir.path().join("started"), dir.path().join("go"));
    let cmd = format!(
        "echo started >> {f}; while [ ! -e {go} ]; do sleep 0.1; done; echo done",
        f = file.display(),
        go = go.display()
    );
    let waiting = {
        let (addr, key) = (first.addr(), first.key.clone());
        std::thread::spawn(move || {
            call(
                &addr,
                &key,
                "POST",
                "/api/v1/services/shell/run",
                Some(run_body(&cmd)),
            )
        })
    };
    started(&file);
    let (status, v) = first.call("POST", "/api/v1/ha/switchover", Some(json!({})));
    assert_eq!(status, 202, "{v}");

    // The caller learns the active node changed, with the id to ask again with.
    let (status, v) = waiting.join().expect("client");
    assert_eq!(status, 503, "{v}");
    let id = v["job_id"].as_str().expect("job_id").to_owned();
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains(&format!("ask again with GET /api/v1/jobs/{id}?wait=true")),
        "{v}"
    );
    poll_until("core-2 active", START, || {
        (role(&second).as_deref() == Some("active")).then_some(())
    });
    std::fs::write(&go, "go").expect("go file");
    // Asked on the former active node, now a standby: forwarded to the new one, which adopted
    // the job and waits for its end.
    let (status, rec) = first.call("GET", &format!("/api/v1/jobs/{id}?wait=true"), None);
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(rec["result"]["stdout"], "done\n", "{rec}");
    assert_eq!(lines(&file).get("started"), Some(&1), "ran once");
    drop(second);
}
