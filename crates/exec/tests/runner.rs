//! Process runner against real processes: group kill on timeout and cancellation, output
//! limits, masking, minimal environment, result shape.

use std::time::{Duration, Instant};

use autogate_exec::runner::{run_process, ProcessSpec};
use autogate_exec::ExecError;
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> ProcessSpec {
    let mut s = ProcessSpec::new("/bin/sh", std::env::temp_dir());
    s.args = vec!["-c".into(), script.into()];
    s
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; only a live (or unreaped) process counts, so read its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn timeout_kills_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    // The child starts a grandchild that ignores the parent's fate, records both pids, waits.
    let mut spec = sh(&format!(
        "sleep 300 & echo $! > {p}; echo $$ >> {p}; echo started; wait",
        p = pidfile.display()
    ));
    spec.timeout = Some(Duration::from_millis(500));
    let t = Instant::now();
    let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.timed_out);
    assert_eq!(r.return_code, -9);
    assert_eq!(r.stdout, "started\n");
    let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(wait_gone(pid).await, "pid {pid} survived the timeout");
    }
}

#[tokio::test]
async fn cancellation_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let spec = sh(&format!(
        "sleep 300 & echo $! > {p}; wait",
        p = pidfile.display()
    ));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let pf = pidfile.clone();
    tokio::spawn(async move {
        while !pf.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c2.cancel();
    });
    let err = run_process(&spec, &cancel).await.unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_gone(pid).await,
        "grandchild {pid} survived cancellation"
    );
}

#[tokio::test]
async fn background_straggler_does_not_hold_the_run() {
    // The leader exits at once, leaving a background process holding stdout.
    let spec = sh("sleep 300 & echo done");
    let t = Instant::now();
    let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(r.return_code, 0);
    assert_eq!(r.stdout, "done\n");
}

#[tokio::test]
async fn exit_codes_signals_and_result_shape() {
    let r = run_process(
        &sh("echo out; echo err >&2; exit 3"),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            r.stdout.as_str(),
            r.stderr.as_str(),
            r.return_code,
            r.timed_out
        ),
        ("out\n", "err\n", 3, false)
    );
    assert!(
        r.start_time.ends_with('Z') && r.end_time.ends_with('Z'),
        "{r:?}"
    );
    assert!(r.elapsed_time.ends_with('s'));
    assert!(r.stdout_json.is_none());
    let v = serde_json::to_value(&r).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "elapsed_time",
            "end_time",
            "return_code",
            "start_time",
            "stderr",
            "stdout",
            "timed_out"
        ]
    );

    let r = run_process(&sh("kill -TERM $$"), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.return_code, -15);

    let r = run_process(&sh(r#"echo '{"a": [1, 2]}'"#), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.stdout_json, Some(serde_json::json!({"a": [1, 2]})));
    assert!(serde_json::to_value(&r)
        .unwrap()
        .get("stdout_json")
        .is_some());
}

#[tokio::test]
async fn output_is_limited_per_stream() {
    let mut spec =
        sh("head -c 100000 /dev/zero | tr '\\0' a; head -c 10 /dev/zero | tr '\\0' b >&2");
    spec.output_limit = 1000;
    let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(r.return_code, 0);
    let marker = "\n[... output truncated after 1000 bytes ...]";
    assert!(
        r.stdout.ends_with(marker),
        "{}",
        &r.stdout[r.stdout.len() - 60..]
    );
    assert_eq!(r.stdout.len(), 1000 + marker.len());
    assert_eq!(r.stderr, "bbbbbbbbbb");
}

#[tokio::test]
async fn secrets_are_masked_and_env_is_minimal() {
    // A variable of the test process itself must not reach the child.
    let mut spec =
        sh("echo \"$TOKEN\"; echo \"pw=$PW\" >&2; env | cut -d= -f1 | sort | tr '\\n' ' '");
    spec.env.insert("TOKEN".into(), "s3cr3t-token".into());
    spec.env.insert("PW".into(), "hunter2".into());
    spec.mask = vec!["s3cr3t-token".into(), "hunter2".into()];
    let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
    assert!(r.stdout.starts_with("********\n"), "{}", r.stdout);
    assert_eq!(r.stderr, "pw=********\n");
    assert!(!r.stdout.contains("s3cr3t") && !r.stderr.contains("hunter2"));
    let names: Vec<&str> = r
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    for n in &names {
        // sh adds PWD/SHLVL/_ itself; everything else must be ours.
        assert!(
            ["HOME", "LANG", "PATH", "PW", "TOKEN", "PWD", "SHLVL", "_"].contains(n),
            "unexpected env {n}"
        );
    }
}

#[tokio::test]
async fn stdin_is_fed() {
    let mut spec = sh("cat");
    spec.stdin = Some(br#"{"inventory_nodes":[]}"#.to_vec());
    let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
    assert_eq!(
        r.stdout_json,
        Some(serde_json::json!({"inventory_nodes": []}))
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let spec = ProcessSpec::new("/nonexistent/prog", std::env::temp_dir());
    let e = run_process(&spec, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Spawn { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/prog"));
}
