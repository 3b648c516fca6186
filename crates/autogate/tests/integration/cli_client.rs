//! Client mode end to end: a real `autogate server` and the CLI talking to it through its API —
//! refused without a key, `login` (key saved 0600), resources created and listed, a service run
//! with its secret masked, decorator violations (exit 64), users created and deleted (their
//! keys stop working), and db export/import against the node.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use autogate_testkit::auth::{with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use tempfile::TempDir;

use crate::support::git_repo;
use crate::support::local::{Cli, ClientDir};

const DEADLINE: Duration = Duration::from_secs(60);

/// The program of the service the tests run.
const RUN_SH: &str = "#!/bin/sh\necho \"args:$* token=[$TOKEN]\"\nexit 4\n";

/// One CLI user of the node on `port`: a client-mode working directory `name` in `root`.
fn client(root: &Path, name: &str, port: u16) -> ClientDir {
    ClientDir::new(root, name, port, DEADLINE)
}

fn start_server(root: &Path) -> (Process, u16) {
    start_server_with(root, &[])
}

fn start_server_with(root: &Path, env: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    let key = root.join("cluster.key");
    std::fs::write(&key, "5a".repeat(32)).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let mut cmd = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key.display().to_string(),
        )
        .name("server");
    for (k, v) in env {
        cmd = cmd.env(k, *v);
    }
    let proc = cmd.spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(30));
    (proc, port)
}

#[test]
fn login_create_and_run_through_a_real_server() {
    let root = TempDir::new().expect("tmp");
    let (mut server, port) = start_server(root.path());
    let admin = client(root.path(), "admin-cli", port);

    // No key yet: refused with 77, nothing created.
    let out = admin.expect(&["get", "services"], 77);
    assert!(out.stderr.contains("401"), "{}", out.stderr);

    // Wrong password, then the right one; the key is kept 0600.
    let out = admin.login("admin", "not-the-password\n");
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let out = admin.login("admin", &format!("{ADMIN_PASSWORD}\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Successfully logged in!"
    );
    let key_file = admin
        .work()
        .join("api-keys")
        .join(format!("127.0.0.1_{port}.key"));
    let mode = std::fs::metadata(&key_file)
        .expect("the node's key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Resources through the API.
    let url = git_repo(&root.path().join("repo"), &[("run.sh", RUN_SH)]);
    admin.ok(&["create", "repository", "repo", "--url", &url]);
    admin.ok(&["create", "secret", "tok", "--value", "PLAIN-client-secret"]);
    admin.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    admin.ok(&[
        "create",
        "decorator",
        "deco",
        "--schema",
        r#"{"type":"object","properties":{"port":{"type":"integer"}},"required":["port"]}"#,
    ]);
    admin.ok(&[
        "create",
        "service",
        "executable",
        "exe",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "run.sh",
        "--decorator",
        "deco",
        "--secret",
        "name=tok,type=env,target=TOKEN",
    ]);
    let err = admin.expect(&["create", "repository", "repo", "--url", &url], 1);
    assert!(err.stderr.contains("already exists"), "{}", err.stderr);
    let err = admin.expect(
        &[
            "create",
            "service",
            "executable",
            "x",
            "--executable-object",
            "missing",
        ],
        64,
    );
    assert!(err.stderr.contains("missing"), "{}", err.stderr);
    let table = admin.ok(&["get", "services"]);
    assert!(table.starts_with("NAME  TYPE"), "{table}");
    assert!(table.contains("exe   executable"), "{table}");
    let raw = admin.raw(&["describe", "service", "exe"]);
    assert_eq!(raw["metadata"]["repository"]["name"], "repo");
    let secrets = admin.raw(&["get", "secrets"]);
    assert!(!secrets.to_string().contains("PLAIN-client-secret"));

    // --use and a run on the node: exit 0 with the program's code shown, secret masked.
    let out = admin.ok(&["run", "service", "executable", "exe", "--use"]);
    assert!(out.contains("port") && out.contains("integer"), "{out}");
    let out = admin.ok(&["run", "service", "executable", "exe", "--set", "port=22"]);
    assert!(out.contains("args:--port=22 token=[********]"), "{out}");
    assert!(!out.contains("PLAIN-client-secret"), "{out}");
    assert!(out.contains("Return Code:  4"), "{out}");
    let out = admin.expect(
        &["run", "service", "executable", "exe", "--set", "port=x"],
        64,
    );
    assert!(out.stderr.contains("/port"), "{}", out.stderr);

    // Users: created, listed, logged in; deleting one revokes its key.
    let out = admin.with_stdin(
        &["create", "user", "bob", "--password-stdin"],
        "bob-password-1\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Successfully created user"));
    let users = admin.ok(&["get", "users"]);
    assert!(users.starts_with("NAME"), "{users}");
    assert!(users.lines().any(|l| l.starts_with("bob ")), "{users}");
    let bob = client(root.path(), "bob-cli", port);
    assert!(bob.login("bob", "bob-password-1\n").status.success());
    bob.ok(&["get", "services"]);
    admin.ok(&["delete", "user", "bob"]);
    bob.expect(&["get", "services"], 77);

    // db export and a check-only import against the node.
    let yaml = admin.ok(&["db", "export"]);
    assert!(yaml.contains("services:") && !yaml.contains("PLAIN-client-secret"));
    let file = root.path().join("export.yaml");
    std::fs::write(&file, &yaml).expect("write");
    // The node's own export: every item is there already, the same.
    let out = admin.ok(&["db", "import", file.to_str().expect("utf-8"), "--check"]);
    assert!(out.contains("Unchanged") && out.contains("exe"), "{out}");
    assert!(!out.contains("Conflict "), "{out}");
    assert!(out.contains("nothing written"), "{out}");

    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
}

/// An expired key: every command says so in the server's words, with exit 77. The shortest
/// lifetime the configuration allows is one minute, so this test waits for it.
#[test]
fn an_expired_key_says_please_login() {
    let root = TempDir::new().expect("tmp");
    let (mut server, port) =
        start_server_with(root.path(), &[("GATEWAY_SERVER_API_KEY_EXPIRATION", "1")]);
    let admin = client(root.path(), "admin-cli", port);
    let out = admin.login("admin", &format!("{ADMIN_PASSWORD}\n"));
    assert!(out.status.success(), "{out:?}");
    admin.ok(&["get", "services"]);
    let out = poll_until("the API key to expire", Duration::from_secs(120), || {
        let out = admin.cmd(&["get", "services"]).output(DEADLINE);
        if out.code() == Some(0) {
            // Pace the polling: each attempt is a process and a request.
            std::thread::sleep(Duration::from_millis(500));
            return None;
        }
        Some(out)
    });
    assert_eq!(out.code(), Some(77), "{}", out.stderr);
    assert!(
        out.stderr.contains("api key has expired. please login"),
        "{}",
        out.stderr
    );
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
}
