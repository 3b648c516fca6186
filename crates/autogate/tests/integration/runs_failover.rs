//! The manager's runs across a fail-over of core nodes that execute services themselves (no
//! runners): real etcd, a real manager and two HA core nodes, all processes of our binary.
//! Every program appends a unique line to a file, so a run that ran twice shows up as a
//! repeated line, and one that did not run as a missing one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_testkit::auth::admin_key;
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{Manager, Pki, START};
use autogate_testkit::{free_port, poll_until, Process};
use serde_json::{json, Value};

use crate::runners_e2e::{lines, seed, Core};
use crate::support::ha_core_node;

const DONE: Duration = Duration::from_secs(60);

struct Setup {
    _etcd: EtcdServer,
    manager: Manager,
    pki: Pki,
    _data: tempfile::TempDir,
    active: Core,
    standby: Process,
}

fn setup() -> Setup {
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, "cluster_1", &["core-1", "core-2"]);
    let (cmd, p1) = ha_core_node(&pki, "core-1", manager.port, &etcd.endpoint());
    let first = cmd.spawn();
    first.wait_for_line("connected to commander at", START);
    let active = Core {
        proc: first,
        port: p1,
        key: admin_key(p1),
    };
    seed(&active);
    let (cmd, _) = ha_core_node(&pki, "core-2", manager.port, &etcd.endpoint());
    let standby = cmd.spawn();
    standby.wait_for_line("core node listening on", START);
    Setup {
        _etcd: etcd,
        manager,
        pki,
        _data: data,
        active,
        standby,
    }
}

/// `n` runs through the manager, each waiting (at most 20 s) for `go` before it appends
/// `run-<i>` to `file`; the threads return (HTTP status, body).
fn start_runs(
    s: &Setup,
    n: usize,
    file: &Path,
    go: &Path,
) -> Vec<std::thread::JoinHandle<(u16, Value)>> {
    let token = autogate_manager::bootstrap::read_token(&s.manager.token_path()).expect("token");
    let ca = PathBuf::from(s.pki.path("ca.pem"));
    let murl = format!("127.0.0.1:{}", s.manager.port);
    (0..n)
        .map(|i| {
            let (murl, token, ca) = (murl.clone(), token.clone(), ca.clone());
            let cmd = format!(
                "for t in $(seq 200); do [ -e {go} ] && break; sleep 0.1; done; [ -e {go} ] && echo run-{i} >> {f}; echo run-{i}",
                go = go.display(),
                f = file.display()
            );
            std::thread::spawn(move || {
                let body = json!({"inputs": {"cmd": cmd}, "timeout_ms": 60000}).to_string();
                let (status, body) = autogate_testkit::auth::https_request(
                    &murl,
                    "POST",
                    "/api/v1/clusters/cluster_1/services/shell/run",
                    Some(&token),
                    Some(("application/json", body.as_bytes())),
                    &ca,
                    None,
                )
                .expect("the manager answers");
                (status, serde_json::from_str(&body).expect("JSON"))
            })
        })
        .collect()
}

/// Waits until `n` runs are recorded running in the cluster's store.
fn wait_running(s: &Setup, n: usize) {
    poll_until(&format!("{n} runs started"), DONE, || {
        let running = s
            .active
            .proc
            .logs()
            .lines()
            .filter(|l| l.contains("running service shell for the manager"))
            .count();
        (running >= n).then_some(())
    });
}

#[test]
fn runs_in_flight_on_a_stopped_active_node_finish_there_and_are_answered_once() {
    let s = setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, go) = (dir.path().join("ran"), dir.path().join("go"));
    let clients = start_runs(&s, 10, &file, &go);
    wait_running(&s, 10);
    // SIGTERM: the node lets its runs finish before it resigns; the runs are released now.
    s.active.proc.signal("TERM");
    s.active.proc.wait_for_line("letting 10 run(s)", START);
    std::fs::write(&go, "go").expect("go file");
    for c in clients {
        let (status, v) = c.join().expect("client");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
    }
    let ran = lines(&file);
    assert_eq!(ran.len(), 10, "{ran:?}");
    assert!(ran.values().all(|n| *n == 1), "a run ran twice: {ran:?}");
    // The standby took over after the drain, and new runs go to it.
    s.standby.wait_for_line("connected to commander at", DONE);
    let later = dir.path().join("ran-later");
    let after = start_runs(&s, 1, &later, &go);
    let (status, v) = after.into_iter().next().unwrap().join().expect("client");
    assert_eq!(status, 200, "{v}");
    assert_eq!(lines(&later).len(), 1);
}

#[test]
fn runs_in_flight_on_a_killed_active_node_are_answered_interrupted_not_run_again() {
    let mut s = setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, go) = (dir.path().join("ran"), dir.path().join("go"));
    let clients = start_runs(&s, 10, &file, &go);
    wait_running(&s, 10);
    s.active.proc.kill();
    s.standby.wait_for_line("connected to commander at", DONE);
    // The manager sends the 10 runs again to the new active node, which finds their records
    // running on a node that is gone.
    for c in clients {
        let (status, v) = c.join().expect("client");
        assert_eq!(status, 502, "{v}");
        assert_eq!(v["error"]["data"]["reason"], "interrupted", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("may have partially run"), "{message}");
    }
    // None ran again on the new active node (the killed node's programs, orphaned, give up
    // waiting for `go` on their own).
    let runs = s
        .standby
        .logs()
        .lines()
        .filter(|l| l.contains("running service shell for the manager"))
        .count();
    assert_eq!(runs, 0, "the new active node ran a run again");
}
