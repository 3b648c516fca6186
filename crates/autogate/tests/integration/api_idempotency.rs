//! `Idempotency-Key` on `POST /api/v1/services/{name}/run` against a real core node (local
//! execution; a service whose program appends a line to a file, so the file counts the runs):
//! one key is one run whoever sends it and when, another body under the key is 422, a bad key
//! 400. And `autogate run service` in client mode: it sends a key, sends the run again under it
//! when no answer came, and a core node killed and restarted while the CLI waits does not run
//! the service twice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, request, with_admin_password};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(60);

/// A core node on `port` with its working directory in `work` (kept across a restart), and a
/// service `append` whose program appends its argument to `runs` and sleeps that many seconds.
fn start_node(work: &Path, port: u16) -> Process {
    let proc = with_admin_password(
        Autogate::new(["server"])
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            ),
    )
    .name("server")
    .spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(30));
    proc
}

fn create_service(addr: &str, key: &str, root: &Path) -> PathBuf {
    let runs = root.join("runs.txt");
    let script = root.join("append.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"run $1\" >> '{}'\nsleep \"$1\"\necho \"slept $1\"\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, body) in [
        (
            "/api/v1/executable-objects",
            json!({"name": "appender", "exec-command": script.display().to_string()}),
        ),
        (
            "/api/v1/services",
            json!({"name": "append", "type": "executable", "executable-object": "appender", "arg-format": "{{.Value}}"}),
        ),
    ] {
        let text = body.to_string();
        let (s, b) = request(
            addr,
            "POST",
            path,
            Some(key),
            Some(("application/json", text.as_bytes())),
        )
        .unwrap();
        assert_eq!(s, 201, "{path}: {b}");
    }
    runs
}

fn lines(runs: &Path) -> Vec<String> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `POST path` with an API key and, when given, `Idempotency-Key` values: (status, JSON body).
fn post(addr: &str, key: &str, path: &str, body: &Value, idempotency: &[&str]) -> (u16, Value) {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for k in idempotency {
        head.push_str(&format!("Idempotency-Key: {k}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

const RUN: &str = "/api/v1/services/append/run";

#[test]
fn one_key_is_one_run_and_every_caller_gets_its_answer() {
    let root = TempDir::new().unwrap();
    let port = free_port();
    let _node = start_node(&root.path().join("node"), port);
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    let runs = create_service(&addr, &key, root.path());
    let body = json!({"inputs": {"seconds": "1"}});

    // Two callers at once under one key: one run, the same answer for both.
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, key, body) = (addr.clone(), key.clone(), body.clone());
            std::thread::spawn(move || post(&addr, &key, RUN, &body, &["k-0001"]))
        })
        .collect();
    let answers: Vec<(u16, Value)> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].1["result"]["stdout"], "slept 1\n", "{answers:?}");
    assert_eq!(lines(&runs), ["run 1"]);

    // After it ended: the same answer at once, and no run. Key order is not the request.
    let again = Instant::now();
    let third = post(
        &addr,
        &key,
        RUN,
        &json!({"inputs": {"seconds": "1"}, "set": []}),
        &["k-0001"],
    );
    assert_eq!(third.0, 422, "an added field is another body: {third:?}");
    let third = post(&addr, &key, RUN, &body, &["k-0001"]);
    assert!(
        again.elapsed() < Duration::from_secs(1),
        "{:?}",
        again.elapsed()
    );
    assert_eq!(third, answers[0]);
    assert_eq!(lines(&runs), ["run 1"]);

    // The same key with another body: refused, naming the key, nothing run.
    let (status, other) = post(
        &addr,
        &key,
        RUN,
        &json!({"inputs": {"seconds": "2"}}),
        &["k-0001"],
    );
    assert_eq!(status, 422, "{other}");
    let msg = other["error"].as_str().unwrap();
    assert!(
        msg.contains("Idempotency-Key \"k-0001\"") && msg.contains("different request"),
        "{msg}"
    );
    assert!(!msg.contains("seconds"), "the body is not echoed: {msg}");

    // Bad keys: 400 naming the header, nothing run.
    let long = "k".repeat(256);
    for bad in [vec![""], vec![long.as_str()], vec!["a", "b"]] {
        let (status, answer) = post(&addr, &key, RUN, &body, &bad);
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with("Idempotency-Key: "),
            "{answer}"
        );
    }
    // A new key is a new run.
    let (status, _) = post(&addr, &key, RUN, &body, &["k-0002"]);
    assert_eq!(status, 200);
    assert_eq!(lines(&runs), ["run 1", "run 1"]);
}

/// The CLI of a client-mode user of the node at `port`.
fn cli(root: &Path, port: u16, api_key: &str, args: &[&str]) -> Autogate {
    Autogate::new(args.iter().map(|s| s.to_string()))
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", port.to_string())
        .env("GATEWAY_CLIENT_API_KEY", api_key)
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            root.join("cli").display().to_string(),
        )
}

/// Reads one HTTP request: its head's lines and its body.
fn read_request(conn: &mut BufReader<TcpStream>) -> (Vec<String>, String) {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let len = head
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn idempotency_key(head: &[String]) -> Option<String> {
    head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("idempotency-key")
            .then(|| v.trim().to_owned())
    })
}

#[test]
fn run_service_in_client_mode_sends_a_key_and_sends_it_again_when_unanswered() {
    let root = TempDir::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A node that takes the first request and breaks the connection without an answer (as a
    // node dying mid-run does), then answers the second.
    let node = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for attempt in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            let mut conn = BufReader::new(conn);
            let (head, body) = read_request(&mut conn);
            seen.push((head[0].clone(), idempotency_key(&head), body));
            if attempt == 1 {
                let answer = json!({"status": "completed", "result": {
                    "stdout": "from the node\n", "stderr": "", "return_code": 0,
                    "start_time": "2026-01-01T10:00:00Z", "end_time": "2026-01-01T10:00:01Z",
                    "elapsed_time": "1s"}})
                .to_string();
                write!(
                    conn.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
        }
        seen
    });
    let out = cli(
        root.path(),
        port,
        "test-key",
        &[
            "run",
            "service",
            "executable",
            "append",
            "--set",
            "seconds=1",
            "--raw",
        ],
    )
    .output(DEADLINE);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["stdout"], "from the node\n", "{}", out.stdout);
    let seen = node.join().unwrap();
    assert_eq!(seen[0].0, "POST /api/v1/services/append/run HTTP/1.1");
    let key = seen[0]
        .1
        .clone()
        .expect("the run carries an Idempotency-Key");
    assert!((1..=255).contains(&key.len()), "{key}");
    assert_eq!(
        seen[1].1.as_deref(),
        Some(key.as_str()),
        "sent again under its key"
    );
    assert_eq!(seen[0].2, seen[1].2, "the same body");
}

#[test]
fn run_service_in_client_mode_outlives_a_core_node_killed_and_restarted() {
    let root = TempDir::new().unwrap();
    let port = free_port();
    let work = root.path().join("node");
    let mut node = start_node(&work, port);
    let key = admin_key(port);
    let runs = create_service(&format!("127.0.0.1:{port}"), &key, root.path());

    let mut run = cli(
        root.path(),
        port,
        &key,
        &[
            "run",
            "service",
            "executable",
            "append",
            "--set",
            "seconds=4",
        ],
    )
    .name("cli")
    .spawn();
    poll_until("the run to start", DEADLINE, || {
        (!lines(&runs).is_empty()).then_some(())
    });
    // Killed mid-run: the CLI's connection breaks without an answer, and connections are
    // refused until the node is back.
    node.kill();
    node.wait_exit(Duration::from_secs(10));
    let _node = start_node(&work, port);
    let status = run.wait_exit(DEADLINE);
    let logs = run.logs();
    // The restarted node found the key's run lost with the node (never ran it again) and said
    // so; only the retry under the same key could have reached it.
    assert_eq!(status.code(), Some(69), "{logs}");
    assert!(
        logs.contains("interrupted") && logs.contains("may have partially run"),
        "{logs}"
    );
    assert_eq!(lines(&runs), ["run 4"]);
}
