//! Service execution figures through a real core node's API: the overhead of a no-op
//! `executable` service (with a cached checkout) over running the command directly, sequential
//! runs per second, and a python-script with a cold venv (clone + build) against a warm one.
//!
//! The server is the release binary on its local store; requests go over loopback HTTP with an
//! API key from `POST /api/v1/login`, exactly as a client would send them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use autogate_testkit::{free_port, Autogate, Process};
use serde_json::{json, Value};

use crate::{ms, table_header, Stats};

const DIRECT_RUNS: usize = 300;
const API_RUNS: usize = 300;
const SEQUENTIAL: usize = 1_000;
const COLD: usize = 3;
const WARM: usize = 10;
const PASSWORD: &str = "bench-password-1234";

struct Node {
    _proc: Process,
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Node {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, plural: &str, body: Value) {
        let (status, v) = self
            .call(reqwest::Method::POST, &format!("/api/v1/{plural}"), body)
            .await;
        assert_eq!(status, 201, "create {plural}: {v}");
    }

    async fn run(&self, service: &str) -> Value {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/services/{service}/run"),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "run {service}: {v}");
        assert_eq!(v["result"]["return_code"], 0, "run {service}: {v}");
        v
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "git {args:?}");
}

/// A repository with `files`, committed and tagged `tag` (files of later tags overwrite).
fn commit(dir: &Path, files: &[(&str, String)], tag: &str) {
    if !dir.join(".git").exists() {
        std::fs::create_dir_all(dir).expect("mkdir");
        git(dir, &["init", "-q", "-b", "main"]);
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            tag,
        ],
    );
    git(dir, &["tag", tag]);
}

/// The commit `HEAD` of a repository.
fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .expect("git rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The interpreter `python3` resolves to (a shim in front of it would be measured otherwise).
fn python3() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn start(dir: &Path) -> Node {
    let port = free_port();
    let pw = dir.join("admin.pw");
    std::fs::write(&pw, PASSWORD).expect("password file");
    let proc = Autogate::new(["server"])
        .env("GATEWAY_APPLICATION_MODE", "server")
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_SERVER_ADMIN_PASSWORD_FILE",
            pw.display().to_string(),
        )
        .env("GATEWAY_LOG_LEVEL", "warn")
        .spawn();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        let resp = http
            .post(format!("{base}/api/v1/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await;
        if let Ok(r) = resp {
            if r.status().is_success() {
                let v: Value = r.json().await.expect("login JSON");
                break v["api_key"].as_str().expect("api_key").to_owned();
            }
        }
        assert!(Instant::now() < deadline, "server did not accept a login");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Node {
        _proc: proc,
        base,
        key,
        http,
    }
}

pub fn run() -> String {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run_async())
}

async fn run_async() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;

    // Baseline: the same program started directly, no API, no checkout.
    let mut direct = Vec::with_capacity(DIRECT_RUNS);
    for _ in 0..DIRECT_RUNS {
        let t = Instant::now();
        let st = Command::new("/bin/true").status().expect("/bin/true");
        assert!(st.success());
        direct.push(ms(t.elapsed()));
    }
    let direct = Stats::new(direct);

    // A no-op executable service whose code comes from a git repository: the checkout is
    // cached by commit after the first run, so this measures the gateway's own overhead.
    // Pinned to a commit id: a branch or tag is fetched on every run to learn where it points
    // now, a commit already extracted is not.
    let repo = dir.path().join("noop-repo");
    commit(&repo, &[("README", "noop\n".into())], "v1");
    let sha = head(&repo);
    node.create(
        "repositories",
        json!({"name": "noop-repo", "url": format!("file://{}", repo.display()), "reference": sha}),
    )
    .await;
    node.create(
        "executable-objects",
        json!({"name": "true", "exec-command": "/bin/true"}),
    )
    .await;
    node.create(
        "services",
        json!({"name": "noop", "type": "executable", "repository": "noop-repo",
               "executable-object": "true"}),
    )
    .await;
    for _ in 0..5 {
        node.run("noop").await;
    }
    let mut api = Vec::with_capacity(API_RUNS);
    for _ in 0..API_RUNS {
        let t = Instant::now();
        node.run("noop").await;
        api.push(ms(t.elapsed()));
    }
    let api = Stats::new(api);
    let t = Instant::now();
    for _ in 0..SEQUENTIAL {
        node.run("noop").await;
    }
    let rate = SEQUENTIAL as f64 / t.elapsed().as_secs_f64();

    // python-script: a cold run builds a venv (new requirement set each time: a new commit
    // whose requirement file differs), a warm run reuses checkout and venv.
    let py = dir.path().join("py-repo");
    let script = "import six\nprint('{\"ok\": true}')\n".to_owned();
    let mut cold = Vec::new();
    for i in 0..COLD {
        let tag = format!("c{i}");
        commit(
            &py,
            &[
                ("main.py", script.clone()),
                ("requirements.txt", format!("# set {i}\nsix==1.17.0\n")),
            ],
            &tag,
        );
        node.create(
            "repositories",
            json!({"name": format!("py-{tag}"), "url": format!("file://{}", py.display()), "reference": tag}),
        )
        .await;
        node.create(
            "services",
            json!({"name": format!("py-{tag}"), "type": "python-script",
                   "repository": format!("py-{tag}"), "filename": "main.py"}),
        )
        .await;
        let t = Instant::now();
        node.run(&format!("py-{tag}")).await;
        cold.push(ms(t.elapsed()));
    }
    let cold = Stats::new(cold);
    let last = format!("py-c{}", COLD - 1);
    let mut warm = Vec::new();
    for _ in 0..WARM {
        let t = Instant::now();
        node.run(&last).await;
        warm.push(ms(t.elapsed()));
    }
    let warm = Stats::new(warm);
    let mut py_direct = Vec::new();
    let interpreter = python3();
    for _ in 0..WARM {
        let t = Instant::now();
        let st = Command::new(&interpreter)
            .args(["-c", "print('{\"ok\": true}')"])
            .status()
            .expect("python3");
        assert!(st.success());
        py_direct.push(ms(t.elapsed()));
    }
    let py_direct = Stats::new(py_direct);

    let mut out = table_header("Service execution through the API");
    out.push_str(&format!(
        "| `/bin/true` started directly ({DIRECT_RUNS} runs) | p50 {:.2} ms, p99 {:.2} ms | baseline |\n",
        direct.median(),
        direct.quantile(0.99)
    ));
    out.push_str(&format!(
        "| no-op executable service, `POST /api/v1/services/noop/run` (checkout cached by commit, {API_RUNS} runs) | p50 {:.2} ms, p99 {:.2} ms | — |\n",
        api.median(),
        api.quantile(0.99)
    ));
    out.push_str(&format!(
        "| overhead over the direct run | p50 {:.2} ms, p99 {:.2} ms | p50 ≤ 5 ms |\n",
        api.median() - direct.median(),
        api.quantile(0.99) - direct.quantile(0.99)
    ));
    out.push_str(&format!(
        "| {SEQUENTIAL} sequential no-op runs through the API | {rate:.0} runs/s | — |\n"
    ));
    out.push_str(&format!(
        "| python-script, cold (clone + venv build with one package from the registry; {COLD} runs) | p50 {:.0} ms (min {:.0}, max {:.0}) | — |\n",
        cold.median(),
        cold.quantile(0.0),
        cold.quantile(1.0)
    ));
    out.push_str(&format!(
        "| python-script, warm venv and checkout ({WARM} runs) | p50 {:.1} ms, p99 {:.1} ms | — |\n",
        warm.median(),
        warm.quantile(0.99)
    ));
    out.push_str(&format!(
        "| the same interpreter started directly with `-c` ({WARM} runs) | p50 {:.1} ms | baseline |\n",
        py_direct.median()
    ));
    out
}
