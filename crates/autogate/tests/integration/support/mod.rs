//! Set-up shared by the test modules: git repositories, CLI runs and their checks, core nodes
//! configured as the HA tests run them, JSON calls to a node's API, and the manager tests'
//! scripted gateway ([`manager`]).

pub mod local;
pub mod manager;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autogate_testkit::auth::{authed_get, request, with_admin_password};
use autogate_testkit::scenario::{core_node, Pki, START};
use autogate_testkit::{autogate_bin, Autogate, LogLine, Output, Process};
use serde_json::Value;

/// The workspace's root directory (docs/, deploy/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `git <args…>` in `dir`, without the user's git configuration; asserts that it succeeds.
pub fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .expect("git runs");
    assert!(st.success(), "git {args:?}");
}

/// Commits what is staged in the repository `dir` with `message`.
pub fn git_commit(dir: &Path, message: &str) {
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

/// A git repository in `dir` holding `files` (paths may have directories) in one commit on
/// `main`; returns its `file://` URL.
pub fn git_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a file has a directory")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git_commit(dir, "init");
    format!("file://{}", dir.display())
}

/// Asserts that a CLI run of `args` exited with `code`; shows both streams otherwise.
pub fn expect_code(out: Output, args: &[&str], code: i32) -> Output {
    assert_eq!(
        out.code(),
        Some(code),
        "autogate {args:?}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    out
}

/// The output of `args` (with `--raw`) as JSON.
pub fn raw_json(args: &[&str], text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("autogate {args:?}: {e}\n{text}"))
}

/// `autogate <args…>` with `stdin` on its standard input (prompts read one line of a
/// non-terminal stdin) and nothing in its environment but `PATH` and `env`.
pub fn with_stdin(args: &[&str], env: &[(&str, &OsStr)], stdin: &str) -> std::process::Output {
    let mut child = Command::new(autogate_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autogate");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// A core node of `cluster_1` connecting to the manager on `manager_port` with `<name>.pem`, HA
/// on, its store the etcd at `etcd_hosts` (space-separated), DEBUG logs, and the admin of
/// [`with_admin_password`] (every node bootstraps the same one; the API needs a key from it).
/// Returns the command (to add settings) and its API port.
pub fn ha_core_node(pki: &Pki, name: &str, manager_port: u16, etcd_hosts: &str) -> (Autogate, u16) {
    let (cmd, port) = core_node(pki, name, manager_port);
    let cmd = cmd
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd_hosts)
        .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
        .env("GATEWAY_LOG_LEVEL", "DEBUG");
    (with_admin_password(cmd), port)
}

/// `cmd` as an HA core node on the etcd at `etcd_hosts` that dials no manager.
pub fn ha_without_manager(cmd: Autogate, etcd_hosts: &str) -> Autogate {
    cmd.env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd_hosts)
        .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
        .env("GATEWAY_CONNECT_ENABLED", "false")
}

/// Waits for a core node's session with the manager.
pub fn wait_connected(p: &Process) -> LogLine {
    p.wait_for_line("INF connected to commander at", START)
}

/// `GET /api/v1/ha/status` of the node on `port`, if it answers 200 (logged in as admin).
pub fn ha_status(port: u16) -> Option<Value> {
    let (code, body) = authed_get(port, "/api/v1/ha/status")?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// A JSON request to a node's API with an API key: the status and the body as JSON (`null`
/// when empty, a string when not JSON).
pub fn call(
    addr: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let text = body.map(Value::to_string);
    let (status, body) = request(
        addr,
        method,
        path,
        Some(key),
        text.as_deref().map(|t| ("application/json", t.as_bytes())),
    )?;
    let v = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    Ok((status, v))
}

/// Polls an async condition until it yields `Some`, with a deadline.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
