//! Services under their own OS user (`[server] service_user`): a node running as root starts
//! the services' programs as a real unprivileged user, made here when missing. A service then
//! tries what a hostile service author would — read the store, the secrets key, the temporary
//! admin password, the log, another service's checkout, list the working directory and the
//! caches, plant a requirement file that names the key — and is refused by the operating system
//! each time, while its own workspace is its to write and its venv is its to run. Python and
//! Ansible services work under the user; a runner with `[runner] service_user` runs its jobs as
//! it. A core node or runner asked for an unknown user, or for root, refuses to start (64).
//!
//! The tests need root to switch users; run as another user they say SKIPPED and pass.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use autogate_testkit::{free_port, Autogate, Output};
use serde_json::Value;

use crate::support::git_repo;

/// The unprivileged user the tests run services as.
const USER: &str = "autogate-svc-test";
const DEADLINE: Duration = Duration::from_secs(60);
/// A venv build (no package is downloaded, but ensurepip installs pip).
const BUILD_DEADLINE: Duration = Duration::from_secs(300);

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The uid of [`USER`], created once per process when the machine lacks it (and kept: another
/// test may be using it). `None` (with a SKIPPED line) when not root.
fn service_user(test: &str) -> Option<u32> {
    if !is_root() {
        eprintln!("SKIPPED {test}: switching to another user needs root");
        return None;
    }
    static UID: OnceLock<u32> = OnceLock::new();
    Some(*UID.get_or_init(|| {
        if let Some(uid) = uid_of(USER) {
            return uid;
        }
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("useradd runs");
        // 9: it exists (another test process made it meanwhile).
        assert!(
            status.success() || status.code() == Some(9),
            "useradd {USER}: {status}"
        );
        uid_of(USER).expect("the service user exists")
    }))
}

/// A directory the service user can pass through (a temporary directory is 0700).
fn traversable_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    t
}

/// One local-mode CLI command over `work`, with the service user configured.
fn cli(work: &Path, args: &[&str], deadline: Duration) -> Output {
    Autogate::new(args.iter().copied())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_SERVER_SERVICE_USER", USER)
        .output(deadline)
}

fn ok(out: &Output, what: &str) {
    assert_eq!(
        out.code(),
        Some(0),
        "{what}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn raw_result(out: &Output) -> Value {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--raw output is JSON ({e}): {}", out.stdout));
    if v.get("result").is_some() {
        v["result"].clone()
    } else {
        v
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The first file named `name` under `dir` (walked as root).
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    None
}

const OTHER_SECRET: &str = "OTHER-SERVICE-CODE-7d41";

#[test]
fn a_service_under_its_user_reads_nothing_of_the_node_nor_of_other_services() {
    let Some(uid) = service_user("security_service_user::a_service_under_its_user…") else {
        return;
    };
    let t = traversable_tempdir();
    let work = t.path().join("work");

    // A core node with the service user: it starts, says so, and leaves its temporary admin
    // password where the service will look for it.
    let port = free_port();
    let mut node = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_SERVER_SERVICE_USER", USER)
        .env("GATEWAY_LOG_FILE_ENABLED", "true")
        .name("server")
        .spawn();
    node.wait_for_line(
        &format!("services run as user {USER} (uid {uid})"),
        DEADLINE,
    );
    node.wait_for_line("core node listening", DEADLINE);
    node.wait_for_line("CREATED TEMPORARY ADMIN", DEADLINE);
    node.signal("TERM");
    node.wait_exit(DEADLINE);
    assert_eq!(mode(&work), 0o711, "traversable, not listable");
    assert_eq!(mode(&work.join("runtime/repos")), 0o700);
    assert_eq!(mode(&work.join("runtime/runs")), 0o711);

    // Another service's code, checked out by a first run.
    let other = git_repo(
        &t.path().join("other"),
        &[("secret.txt", &format!("{OTHER_SECRET}\n"))],
    );
    for args in [
        &["create", "secret", "token", "--value", "sealed-value-5c0e"][..],
        &["create", "repository", "other", "--url", &other],
        &[
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ],
        &[
            "create",
            "service",
            "executable",
            "other",
            "--repository",
            "other",
            "--executable-object",
            "sh",
            "--arg-format=-c {{.Value}}",
        ],
        &[
            "create",
            "service",
            "executable",
            "probe",
            "--executable-object",
            "sh",
            "--arg-format=-c {{.Value}}",
        ],
    ] {
        ok(&cli(&work, args, DEADLINE), &args.join(" "));
    }
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "executable",
            "other",
            "--set",
            "cmd=id -u; cat secret.txt",
            "--raw",
        ],
        DEADLINE,
    );
    ok(&out, "run other");
    let r = raw_result(&out);
    assert_eq!(
        r["stdout"],
        format!("{uid}\n{OTHER_SECRET}\n"),
        "a service reads its own checkout: {r}"
    );
    let checkout = find(&work.join("runtime/repos"), "secret.txt").expect("the cached checkout");

    // Every file the service must not read exists, so a refusal below is the permission's.
    let closed = [
        work.join("gateway.db"),
        work.join("secrets.key"),
        work.join("temporary-admin-password"),
        work.join("logs/gateway.log"),
        work.join("server.state"),
        checkout.clone(),
    ];
    let unlisted = [
        work.clone(),
        work.join("runtime"),
        work.join("runtime/repos"),
        work.join("runtime/runs"),
        work.join("runtime/venvs"),
    ];
    for p in closed.iter().chain(&unlisted) {
        assert!(p.exists(), "{} exists", p.display());
    }
    let mut script = String::from("id -u; ");
    for p in &closed {
        script.push_str(&format!(
            "cat '{}' >/dev/null 2>&1 && echo 'READ {}' || echo 'DENIED {}'; ",
            p.display(),
            p.display(),
            p.display()
        ));
    }
    for p in &unlisted {
        script.push_str(&format!(
            "ls '{}' >/dev/null 2>&1 && echo 'LISTED {}' || echo 'DENIED {}'; ",
            p.display(),
            p.display(),
            p.display()
        ));
    }
    // The error of one read, to see it is the permission and not a missing file.
    script.push_str(&format!("cat '{}'; ", work.join("gateway.db").display()));
    script.push_str("echo mine > \"$HOME/written\" && cat \"$HOME/written\"; pwd");
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "executable",
            "probe",
            "--set",
            &format!("cmd={script}"),
            "--raw",
        ],
        DEADLINE,
    );
    ok(&out, "run probe");
    let r = raw_result(&out);
    let stdout = r["stdout"].as_str().unwrap_or_default();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&uid.to_string().as_str()), "{r}");
    for p in closed.iter().chain(&unlisted) {
        assert!(
            lines.contains(&format!("DENIED {}", p.display()).as_str()),
            "{} is closed to the service: {r}",
            p.display()
        );
    }
    assert!(
        r["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("Permission denied"),
        "{r}"
    );
    assert!(!stdout.contains(OTHER_SECRET), "{r}");
    let cwd = lines.last().copied().unwrap_or_default();
    assert!(
        cwd.starts_with(&work.join("runtime/runs/run-").display().to_string()),
        "runs in its own workspace: {r}"
    );
    assert_eq!(
        lines.get(lines.len().saturating_sub(2)),
        Some(&"mine"),
        "its workspace is its own to write: {r}"
    );
}

const SCRIPT: &str = r#"
import json, os, sys
try:
    open(os.path.join(sys.prefix, "planted"), "w")
    venv = "writable"
except OSError:
    venv = "read-only"
print(json.dumps({"uid": os.getuid(), "venv": venv, "prefix": sys.prefix}))
"#;

#[test]
fn a_python_service_builds_and_runs_its_venv_as_its_user() {
    let Some(uid) = service_user("security_service_user::a_python_service…") else {
        return;
    };
    let t = traversable_tempdir();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[
            ("main.py", SCRIPT),
            ("requirements.txt", "# nothing to install\n"),
            // A requirement file that names the node's key: pip reads it as the service user,
            // who may not, and nothing of the key reaches the output.
            ("evil/main.py", SCRIPT),
            (
                "evil/requirements.txt",
                &format!("-r {}\n", work.join("secrets.key").display()),
            ),
        ],
    );
    for args in [
        &["create", "secret", "token", "--value", "sealed-value-5c0e"][..],
        &["create", "repository", "code", "--url", &url],
        &[
            "create",
            "executable-object",
            "py",
            "--exec-command",
            "/usr/bin/python3",
        ],
        &[
            "create",
            "service",
            "python-script",
            "probe",
            "--repository",
            "code",
            "--filename",
            "main.py",
            "--executable-object",
            "py",
        ],
        &[
            "create",
            "service",
            "python-script",
            "evil",
            "--repository",
            "code",
            "--working-dir",
            "evil",
            "--filename",
            "main.py",
            "--executable-object",
            "py",
        ],
    ] {
        ok(&cli(&work, args, DEADLINE), &args.join(" "));
    }
    let out = cli(
        &work,
        &["run", "service", "python-script", "probe", "--raw"],
        BUILD_DEADLINE,
    );
    ok(&out, "run probe");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    let v = &r["stdout_json"];
    assert_eq!(v["uid"], uid, "{r}");
    assert_eq!(
        v["venv"], "read-only",
        "no run changes the shared venv: {r}"
    );
    let prefix = PathBuf::from(v["prefix"].as_str().expect("prefix"));
    assert!(prefix.starts_with(work.join("runtime/venvs")), "{r}");
    let venv_owner = std::fs::metadata(&prefix).expect("venv").uid();
    assert_eq!(venv_owner, 0, "the built venv is handed back to the node");
    assert_eq!(mode(&work.join("runtime/venvs")), 0o711);

    let key = std::fs::read_to_string(work.join("secrets.key")).expect("the key");
    let out = cli(
        &work,
        &["run", "service", "python-script", "evil", "--raw"],
        BUILD_DEADLINE,
    );
    assert_ne!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("Permission denied"), "{all}");
    for line in key.lines().filter(|l| l.len() > 8) {
        assert!(!all.contains(line.trim()), "the key leaked: {all}");
    }
}

#[test]
fn an_ansible_service_runs_as_its_user_with_its_inputs() {
    let Some(uid) = service_user("security_service_user::an_ansible_service…") else {
        return;
    };
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        autogate_exec::which("ansible-playbook", &path).is_some(),
        "ansible-playbook is not installed: run `make deps`"
    );
    let t = traversable_tempdir();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[
            (
                "site.yml",
                // `connection: local` puts its temporary files under the home of the user
                // from the user database (`~autogate-svc-test`), which a system user made
                // without one lacks: the play keeps them in its workspace instead.
                "- hosts: all\n  gather_facts: false\n  vars:\n    ansible_remote_tmp: \"{{ playbook_dir }}/.ansible-tmp\"\n  tasks:\n    - command: id -u\n      register: who\n    - debug:\n        msg: \"device={{ device }} uid={{ who.stdout }}\"\n",
            ),
            ("hosts.ini", "localhost ansible_connection=local\n"),
        ],
    );
    for args in [
        &["create", "repository", "pb", "--url", &url][..],
        &[
            "create",
            "service",
            "ansible-playbook",
            "deploy",
            "--repository",
            "pb",
            "--playbook",
            "site.yml",
            "--inventory",
            "hosts.ini",
        ],
    ] {
        ok(&cli(&work, args, DEADLINE), &args.join(" "));
    }
    // The inputs reach the play through a vars file the service user must be able to read, and
    // Ansible keeps its temporary files under HOME, the run's workspace.
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "ansible-playbook",
            "deploy",
            "--set",
            "device=r9",
            "--raw",
        ],
        BUILD_DEADLINE,
    );
    ok(&out, "ansible run");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains(&format!("device=r9 uid={uid}")),
        "the play ran as the service user with its input: {stdout}"
    );
}

/// An OpenTofu run leaves a state the node reads and returns. A run that swaps it for a link to
/// a file only root may read gets no state back, not the file.
#[test]
fn an_opentofu_run_cannot_make_the_node_return_a_file_of_its_own_as_state() {
    let Some(_) = service_user("security_service_user::an_opentofu_run…") else {
        return;
    };
    let t = traversable_tempdir();
    let work = t.path().join("work");
    // JSON, so that a node that read it would return it as the state.
    let secret = t.path().join("root-only.json");
    std::fs::write(&secret, "{\"only\": \"ROOT-ONLY-3a9c\"}\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The program is `sh`, so `init` and `apply` are scripts of the checkout.
    let url = git_repo(
        &t.path().join("src"),
        &[
            (
                "init",
                &format!(
                    "rm -f terraform.tfstate; ln -s '{}' terraform.tfstate\n",
                    secret.display()
                ),
            ),
            ("apply", "exit 0\n"),
            // The control: a run that leaves its state alone gets it back.
            ("plain/init", "exit 0\n"),
            ("plain/apply", "exit 0\n"),
        ],
    );
    for args in [
        &["create", "repository", "plan", "--url", &url][..],
        &[
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ],
        &[
            "create",
            "service",
            "opentofu-plan",
            "swap",
            "--repository",
            "plan",
            "--executable-object",
            "sh",
        ],
        &[
            "create",
            "service",
            "opentofu-plan",
            "plain",
            "--repository",
            "plan",
            "--working-dir",
            "plain",
            "--executable-object",
            "sh",
        ],
    ] {
        ok(&cli(&work, args, DEADLINE), &args.join(" "));
    }
    let run = |service: &str| {
        let out = cli(
            &work,
            &[
                "run",
                "service",
                "opentofu-plan",
                service,
                "--state",
                "{\"version\": 4, \"serial\": 7}",
                "--raw",
            ],
            DEADLINE,
        );
        ok(&out, service);
        out
    };
    let plain = raw_result(&run("plain"));
    assert_eq!(plain["state"]["serial"], 7, "{plain}");
    let out = run("swap");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    assert!(
        !out.stdout.contains("ROOT-ONLY") && !out.stderr.contains("ROOT-ONLY"),
        "the node returned a file only root reads: {r}"
    );
    assert!(r.get("state").is_none_or(Value::is_null), "{r}");
}

#[test]
fn a_runner_runs_its_jobs_as_its_service_user() {
    let Some(uid) = service_user("security_service_user::a_runner_runs…") else {
        return;
    };
    let etcd = autogate_testkit::etcd::EtcdServer::start();
    let port = free_port();
    let core = autogate_testkit::auth::with_admin_password(
        Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
            .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
            .env("GATEWAY_CONNECT_ENABLED", "false"),
    )
    .spawn();
    let key = autogate_testkit::auth::admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    autogate_testkit::scenario::seed_shell(&addr, &key);

    let t = traversable_tempdir();
    let work = t.path().join("runner");
    let runner = Autogate::new(["runner"])
        .name("runner")
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
        .env("GATEWAY_RUNNER_SERVICE_USER", USER)
        .spawn();
    runner.wait_for_line(&format!("jobs run as user {USER} (uid {uid})"), DEADLINE);
    assert_eq!(mode(&work), 0o711);
    let state = work.join("runner.state");
    autogate_testkit::poll_until("the runner's state file", DEADLINE, || {
        state.exists().then_some(())
    });

    let cmd = format!(
        "id -u; cat '{}' >/dev/null 2>&1 && echo READ || echo DENIED",
        state.display()
    );
    let body = serde_json::json!({ "inputs": { "cmd": cmd } }).to_string();
    let (status, answer) = autogate_testkit::poll_until("a runner takes the job", DEADLINE, || {
        let (status, text) = autogate_testkit::auth::request(
            &addr,
            "POST",
            "/api/v1/services/shell/run",
            Some(&key),
            Some(("application/json", body.as_bytes())),
        )
        .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        // Until the runner's registration is seen the job may find no runner: ask again.
        (v["status"] == "completed").then_some((status, v))
    });
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["stdout"],
        format!("{uid}\nDENIED\n"),
        "the job ran as the service user and could not read the runner's files: {answer}"
    );
    drop(runner);
    drop(core);
}

#[test]
fn a_node_refuses_a_service_user_that_does_not_exist_or_is_root() {
    let t = tempfile::tempdir().expect("tempdir");
    for (user, says) in [("no-such-user-8e2f", "does not exist"), ("root", "is root")] {
        let out = Autogate::new(["server"])
            .env("GATEWAY_SERVER_PORT", free_port().to_string())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                t.path().join("work").display().to_string(),
            )
            .env("GATEWAY_SERVER_SERVICE_USER", user)
            .output(DEADLINE);
        assert_eq!(out.code(), Some(64), "{user}: {}", out.stderr);
        assert!(
            out.stderr.contains("server.service_user") && out.stderr.contains(says),
            "{user}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("core node listening"),
            "{}",
            out.stderr
        );

        let out = Autogate::new(["runner"])
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                t.path().join("runner").display().to_string(),
            )
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", "127.0.0.1:9")
            .env("GATEWAY_RUNNER_SERVICE_USER", user)
            .output(DEADLINE);
        assert_eq!(out.code(), Some(64), "runner, {user}: {}", out.stderr);
        assert!(
            out.stderr.contains("runner.service_user") && out.stderr.contains(says),
            "runner, {user}: {}",
            out.stderr
        );
    }
}
