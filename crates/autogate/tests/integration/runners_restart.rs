//! A runner killed with SIGKILL and restarted at once on its working directory, black box: real
//! etcd, a real core node with distributed execution, real runners with a 10 s lease. The new
//! process revokes the lease its predecessor left (the directory's lock proves that process
//! gone), so the predecessor's jobs move at once instead of after the TTL: a retryable job runs
//! again, a non-retryable one fails as lost. A second runner on a working directory in use stops
//! at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::support;

const TTL: Duration = Duration::from_secs(10);
/// "Well before the TTL" for a job to move (debug build, loaded CI machine).
const FAST: Duration = Duration::from_secs(3);

struct Core {
    _proc: Process,
    addr: String,
    key: String,
}

impl Core {
    /// A core node with distributed execution on the etcd at `etcd` (no HA, no manager).
    fn start(etcd: &str) -> Core {
        let port = free_port();
        let cmd = Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
            .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
            .env("GATEWAY_CONNECT_ENABLED", "false");
        let proc = with_admin_password(cmd).spawn();
        let key = admin_key(port);
        Core {
            _proc: proc,
            addr: format!("127.0.0.1:{port}"),
            key,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        support::call(&self.addr, &self.key, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `sh`, a one-command decorator, `shell` (no retries) and `shell-retry` (one retry).
    fn seed(&self) {
        autogate_testkit::scenario::seed_shell(&self.addr, &self.key);
    }

    fn runner_ids(&self) -> Vec<String> {
        let (status, v) = self.call("GET", "/api/v1/runners", None);
        assert_eq!(status, 200, "{v}");
        v["runners"]
            .as_array()
            .expect("runners")
            .iter()
            .filter_map(|r| r["node_id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn runner(name: &str, etcd: &str, work: &Path) -> Autogate {
    Autogate::new(["runner"])
        .name(name)
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd)
        .env("GATEWAY_RUNNER_LEASE_TTL", format!("{}s", TTL.as_secs()))
        .env("GATEWAY_RUNNER_CAPACITY", "4")
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_LOG_LEVEL", "DEBUG")
}

fn started_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == "started")
        .count()
}

#[test]
fn a_restarted_runner_hands_its_predecessors_jobs_back_at_once() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("runner-work");
    let core = Core::start(&etcd.endpoint());
    core.seed();
    let mut first = runner("runner", &etcd.endpoint(), &work).spawn();
    let first_id = poll_until("the runner to register", START, || {
        core.runner_ids().into_iter().next()
    });

    // Each job's program notes its start; the first attempt then waits a minute, a second
    // attempt finishes at once.
    let spawn_run = |service: &'static str, file: PathBuf| {
        let (addr, key) = (core.addr.clone(), core.key.clone());
        std::thread::spawn(move || {
            let cmd = format!(
                "echo started >> {f}; [ $(grep -c started {f}) -gt 1 ] || sleep 60; echo finished",
                f = file.display()
            );
            support::call(
                &addr,
                &key,
                "POST",
                &format!("/api/v1/services/{service}/run"),
                Some(&json!({ "inputs": { "cmd": cmd } })),
            )
            .expect("run")
        })
    };
    let (retry_file, once_file) = (dir.path().join("retry"), dir.path().join("once"));
    let retry = spawn_run("shell-retry", retry_file.clone());
    let once = spawn_run("shell", once_file.clone());
    poll_until("both jobs to start", START, || {
        (started_lines(&retry_file) == 1 && started_lines(&once_file) == 1).then_some(())
    });

    let killed = Instant::now();
    first.kill();
    let restarted = runner("runner-restarted", &etcd.endpoint(), &work).spawn();
    let line = restarted.wait_for_line("revoked the lease of this node's previous process", START);
    assert!(
        line.text.contains(&format!(
            "WRN revoked the lease of this node's previous process (node id {first_id}, lease "
        )) && line.text.contains("its 2 claimed job(s), which move now"),
        "{}",
        line.text
    );

    // The non-retryable job fails as lost, the retryable one runs again (on the new process,
    // the only runner) — both long before the old lease could have expired.
    let (status, v) = once.join().expect("once client");
    let once_done = killed.elapsed();
    assert_eq!(status, 503, "{v}");
    let once_job = v["job_id"].as_str().expect("job_id");
    assert_eq!(
        v["error"],
        format!("runner {first_id} lost while running job {once_job}"),
        "{v}"
    );
    let (status, v) = retry.join().expect("retry client");
    let retry_done = killed.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["stdout"], "finished\n", "{v}");
    assert_eq!(started_lines(&retry_file), 2);
    assert_eq!(started_lines(&once_file), 1);
    let ids = core.runner_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], first_id);
    eprintln!(
        "runner kill -9 + restart at once (lease TTL {} s): revoked after {} ms; non-retryable job failed as lost after {} ms; retryable job ran again and completed after {} ms",
        TTL.as_secs(),
        line.at.saturating_duration_since(killed).as_millis(),
        once_done.as_millis(),
        retry_done.as_millis()
    );
    assert!(once_done < FAST, "lost job failed only after {once_done:?}");
    assert!(
        retry_done < FAST,
        "retried job done only after {retry_done:?}"
    );
}

#[test]
fn a_second_runner_on_the_same_working_directory_fails_fast() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("runner-work");
    let first = runner("runner", &etcd.endpoint(), &work).spawn();
    first.wait_for_line("runner registered in cluster", START);
    let out = runner("second", &etcd.endpoint(), &work).output(START);
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains(&work.display().to_string())
            && out.stderr.contains(&format!("(pid {}, lock ", first.pid()))
            && out.stderr.contains("runner.lock"),
        "{}",
        out.stderr
    );
    // A core node may share the directory: the lock is per role.
    let port = free_port();
    let core = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .spawn();
    core.wait_for_line("core node listening", START);
}
