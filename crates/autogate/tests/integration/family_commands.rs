//! The family's commands that autogate grew for migrating users, on real processes: a user
//! created with a temporary password must change it at its first login and gets no key
//! before; `login --change-password` revokes the user's other keys; `server
//! --recover-admin-user` resets `admin` on a stopped node's store (refused while the node runs)
//! and, with etcd, from another core node's configuration while the cluster runs;
//! `get services --type`; `inspect cluster` with health and activity together; `cert-gen
//! runner` with the subject, SAN, expiry and key flags.

use std::path::Path;
use std::time::Duration;

use autogate_testkit::auth::{with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::local::{Cli, ClientDir};
use crate::support::{expect_code, ha_without_manager, raw_json, with_stdin};

const DEADLINE: Duration = Duration::from_secs(60);

/// One CLI user of the node on `port`: a client-mode working directory `name` in `root`.
fn client(root: &Path, name: &str, port: u16) -> ClientDir {
    ClientDir::new(root, name, port, DEADLINE)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A core node on the local store in `work`, with the test admin password.
fn start_local_server(work: &Path, port: u16) -> Process {
    let key = work.with_extension("secrets.key");
    if !key.exists() {
        std::fs::write(&key, "5a".repeat(32)).expect("key");
    }
    let proc = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key.display().to_string(),
        )
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .name("server")
        .spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(30));
    proc
}

/// `autogate server --recover-admin-user` on the configuration `env`, with `stdin`.
fn recover(env: &[(&str, &std::ffi::OsStr)], extra: &[&str], stdin: &str) -> std::process::Output {
    let mut args = vec!["server", "--recover-admin-user"];
    args.extend_from_slice(extra);
    with_stdin(&args, env, stdin)
}

#[test]
fn temporary_password_and_change_password_through_the_cli() {
    let root = TempDir::new().expect("tmp");
    let port = free_port();
    let _server = start_local_server(&root.path().join("node"), port);
    let admin = client(root.path(), "admin-cli", port);
    assert!(admin
        .login("admin", &format!("{ADMIN_PASSWORD}\n"))
        .status
        .success());

    let out = admin.with_stdin(
        &[
            "create",
            "user",
            "bob",
            "--temp-password",
            "--password-stdin",
        ],
        "temp-pass-1\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Successfully created user"), "{stdout}");
    assert!(stdout.contains("temporary"), "{stdout}");
    let users = admin.raw(&["get", "users"]);
    let bob = users["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "bob"))
        .cloned()
        .expect("bob listed");
    assert_eq!(bob["password_change_required"], true, "{bob}");
    let described = admin.expect(&["describe", "user", "bob"], 0).stdout;
    assert!(described.contains("temporary"), "{described}");

    // The temporary password alone: no key, told why, nothing kept.
    let bob1 = client(root.path(), "bob-cli-1", port);
    let out = bob1.login("bob", "temp-pass-1\n");
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("temporary"), "{err}");
    assert!(!bob1.work().join("api-keys").exists());
    // A wrong password is refused as any other (401 → 77), without a prompt for a new one.
    let out = bob1.login("bob", "wrong-pass-1\nbob-pass-2\n");
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    // The temporary password and a new one: changed, logged in, the key works.
    let out = bob1.login("bob", "temp-pass-1\nbob-pass-2\n");
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Successfully logged in!"), "{stdout}");
    assert!(!stdout.contains("bob-pass-2") && !text(&out.stderr).contains("bob-pass-2"));
    bob1.expect(&["get", "services"], 0);
    assert_eq!(
        admin.raw(&["describe", "user", "bob"])["password_change_required"],
        false
    );
    // The temporary password is gone.
    let bob2 = client(root.path(), "bob-cli-2", port);
    assert_eq!(
        bob2.login("bob", "temp-pass-1\nx-pass-99\n").status.code(),
        Some(77)
    );

    // login --change-password: a wrong current password changes nothing.
    let out = bob2.with_stdin(
        &["login", "bob", "--change-password", "--password-stdin"],
        "not-bobs-pass\nbob-pass-3\n",
    );
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    bob1.expect(&["get", "services"], 0);
    // A too short new password is refused before anything is checked.
    let out = bob2.with_stdin(
        &["login", "bob", "--change-password", "--password-stdin"],
        "bob-pass-2\nshort\n",
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // The right one: bob2 gets a key, bob1's is revoked, the old password no longer works.
    let out = bob2.with_stdin(
        &[
            "login",
            "bob",
            "--change-password",
            "--password-stdin",
            "--raw",
        ],
        "bob-pass-2\nbob-pass-3\n",
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["api_key"].as_str().is_some_and(|k| !k.is_empty()), "{v}");
    assert_eq!(v["password_changed"], true, "{v}");
    bob2.expect(&["get", "services"], 0);
    let out = bob1.expect(&["get", "services"], 77);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert_eq!(bob1.login("bob", "bob-pass-2\n").status.code(), Some(77));
    assert!(bob1.login("bob", "bob-pass-3\n").status.success());

    // --set-secret through the node: an operator may not inject stored secrets, an admin may.
    let url = crate::support::git_repo(
        &root.path().join("repo"),
        &[(
            "show.sh",
            "#!/bin/sh\necho \"token=[$TOKEN] len=${#TOKEN}\"\n",
        )],
    );
    for args in [
        vec!["create", "repository", "repo", "--url", &url],
        vec![
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ],
        vec!["create", "secret", "tok", "--value", "token-value-42"],
        vec![
            "create",
            "service",
            "executable",
            "show",
            "--repository",
            "repo",
            "--filename",
            "show.sh",
            "--executable-object",
            "sh",
        ],
    ] {
        admin.expect(&args, 0);
    }
    let with_secret = [
        "run",
        "service",
        "executable",
        "show",
        "--set-secret",
        "name=tok,type=env,target=TOKEN",
    ];
    let out = bob1.expect(&with_secret, 77);
    assert!(
        out.stderr.contains("admin") && out.stderr.contains("403"),
        "{}",
        out.stderr
    );
    assert!(bob1
        .expect(&["run", "service", "executable", "show"], 0)
        .stdout
        .contains("len=0"));
    let out = admin.expect(&with_secret, 0).stdout;
    assert!(out.contains("token=[********] len=14"), "{out}");
    assert!(!out.contains("token-value-42"), "{out}");
}

#[test]
fn recover_admin_user_on_a_stopped_node() {
    let root = TempDir::new().expect("tmp");
    let work = root.path().join("node");
    let port = free_port();
    let mut server = start_local_server(&work, port);
    let admin = client(root.path(), "admin-cli", port);
    assert!(admin
        .login("admin", &format!("{ADMIN_PASSWORD}\n"))
        .status
        .success());
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("HOME", home.as_os_str()),
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
    ];

    // The node runs: refused (69), naming why; nothing changed.
    let out = recover(&env, &["--password-stdin"], "recovered-pass-1\n");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("running") && err.contains("Stop it"), "{err}");
    admin.expect(&["get", "users"], 0);

    server.signal("TERM");
    assert!(server.wait_exit(DEADLINE).success());

    // No terminal and no --password-stdin: a usage error, not a hang.
    let out = recover(&env, &[], "");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(text(&out.stderr).contains("--password-stdin"));
    let out = recover(&env, &["--password-stdin"], "short\n");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = Autogate::new(["server", "--password-stdin"]).output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);

    let out = recover(&env, &["--password-stdin", "--raw"], "recovered-pass-1\n");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["user"], "admin", "{v}");
    assert_eq!(v["revoked_keys"], 1, "{v}");
    assert!(!text(&out.stdout).contains("recovered-pass-1"));

    // The node again: the old key and password are dead, the new password works.
    let _server = start_local_server(&work, port);
    let out = admin.expect(&["get", "users"], 77);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert_eq!(
        admin
            .login("admin", &format!("{ADMIN_PASSWORD}\n"))
            .status
            .code(),
        Some(77)
    );
    assert!(admin.login("admin", "recovered-pass-1\n").status.success());
    let me = admin.raw(&["describe", "user", "admin"]);
    assert_eq!(me["role"], "admin", "{me}");
    let logs = std::fs::read_dir(&work)
        .expect("work")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(!logs.contains("recovered-pass-1"));
}

/// With etcd, the configuration of any core node works, while the cluster's other nodes run.
#[test]
fn recover_admin_user_from_another_core_node_on_etcd() {
    let etcd = EtcdServer::start();
    let root = TempDir::new().expect("tmp");
    let port = free_port();
    let running = with_admin_password(ha_without_manager(
        Autogate::new(["server"]),
        &etcd.endpoint(),
    ))
    .env("GATEWAY_SERVER_PORT", port.to_string())
    .name("core-1")
    .spawn();
    running.wait_for_line("core node listening", Duration::from_secs(30));
    let admin = client(root.path(), "admin-cli", port);
    poll_until("the admin login", DEADLINE, || {
        admin
            .login("admin", &format!("{ADMIN_PASSWORD}\n"))
            .status
            .success()
            .then_some(())
    });

    // core-2's configuration: same etcd and cluster, its own (unused) working directory.
    let work = root.path().join("core-2");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let endpoint = etcd.endpoint();
    let env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("HOME", home.as_os_str()),
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
        ("GATEWAY_STORE_BACKEND", "etcd".as_ref()),
        ("GATEWAY_STORE_ETCD_HOSTS", endpoint.as_ref()),
        ("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true".as_ref()),
        ("GATEWAY_CONNECT_ENABLED", "false".as_ref()),
    ];
    let out = recover(&env, &["--password-stdin"], "recovered-pass-2\n");
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("Successfully reset the password of user admin"));

    // The running node reads users from the store: the old key is revoked, the new password
    // logs in.
    admin.expect(&["get", "users"], 77);
    assert!(admin.login("admin", "recovered-pass-2\n").status.success());
    admin.expect(&["get", "users"], 0);
}

#[test]
fn get_services_by_type_and_inspect_cluster() {
    let dir = TempDir::new().expect("tmp");
    let work = dir.path().join("work");
    let run = |args: &[&str], code: i32| {
        expect_code(
            Autogate::new(args.iter().map(|s| s.to_string()))
                .env(
                    "GATEWAY_APPLICATION_WORKING_DIR",
                    work.display().to_string(),
                )
                .output(DEADLINE),
            args,
            code,
        )
    };
    let url = crate::support::git_repo(
        &dir.path().join("repo"),
        &[
            ("run.sh", "#!/bin/sh\necho hi\n"),
            ("main.py", "print(1)\n"),
            ("site.yml", "- hosts: all\n"),
        ],
    );
    run(&["create", "repository", "repo", "--url", &url], 0);
    run(
        &[
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ],
        0,
    );
    for name in ["exe-1", "exe-2"] {
        run(
            &[
                "create",
                "service",
                "executable",
                name,
                "--repository",
                "repo",
                "--filename",
                "run.sh",
                "--executable-object",
                "sh",
            ],
            0,
        );
    }
    run(
        &[
            "create",
            "service",
            "python-script",
            "py",
            "--repository",
            "repo",
            "--filename",
            "main.py",
        ],
        0,
    );
    run(
        &[
            "create",
            "service",
            "ansible-playbook",
            "ans",
            "--repository",
            "repo",
            "--playbook",
            "site.yml",
        ],
        0,
    );
    let names = |args: &[&str]| -> Vec<String> {
        let mut a = args.to_vec();
        a.push("--raw");
        let v = raw_json(&a, &run(&a, 0).stdout);
        let mut n: Vec<String> = v["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&["get", "services"]), ["ans", "exe-1", "exe-2", "py"]);
    assert_eq!(
        names(&["get", "services", "--type", "executable"]),
        ["exe-1", "exe-2"]
    );
    assert_eq!(
        names(&[
            "get",
            "services",
            "--type",
            "python-script",
            "--type",
            "ansible-playbook"
        ]),
        ["ans", "py"]
    );
    assert!(names(&["get", "services", "--type", "opentofu-plan"]).is_empty());
    let table = run(&["get", "services", "--type", "python-script"], 0).stdout;
    assert!(
        table.starts_with("NAME") && table.contains("py") && !table.contains("exe-1"),
        "{table}"
    );
    let err = run(&["get", "services", "--type", "perl-script"], 64).stderr;
    assert!(err.contains("perl-script"), "{err}");
    let err = run(&["get", "repositories", "--type", "executable"], 64).stderr;
    assert!(err.contains("--type"), "{err}");

    // One run, so the activity has an entry.
    run(&["run", "service", "executable", "exe-1"], 0);
    let both = run(&["inspect", "cluster"], 0).stdout;
    let health = both.find("Cluster:").expect("health first");
    let activity = both.find("Activity:").expect("then activity");
    assert!(health < activity, "{both}");
    assert!(
        both.contains("COMPONENT") && both.contains("DURATION"),
        "{both}"
    );
    let v = raw_json(
        &["inspect", "cluster", "--raw"],
        &run(&["inspect", "cluster", "--raw"], 0).stdout,
    );
    assert_eq!(v["healthy"], true, "{v}");
    assert!(v["jobs"].is_array(), "{v}");
    assert!(run(&["inspect", "cluster", "health"], 0)
        .stdout
        .contains("Cluster:"));
    assert!(!run(&["inspect", "cluster", "health"], 0)
        .stdout
        .contains("Activity:"));
}

/// `openssl <args>`: its exit status and standard output.
fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    (out.status.success(), text(&out.stdout))
}

#[test]
fn cert_gen_runner_with_subject_san_expiry_and_key_flags() {
    let dir = TempDir::new().expect("tmp");
    let out_dir = dir.path().join("pki");
    let pki = out_dir.display().to_string();
    let run = |args: &[&str], code: i32| {
        expect_code(
            Autogate::new(args.iter().map(|s| s.to_string())).output(DEADLINE),
            args,
            code,
        )
    };
    run(
        &[
            "cert-gen",
            "ca",
            "--output",
            &pki,
            "--organization",
            "Acme Networks",
            "--country",
            "US",
            "--key-type",
            "ecdsa-p384",
        ],
        0,
    );
    let written = run(
        &[
            "cert-gen",
            "runner",
            "--output",
            &pki,
            "--san",
            "10.0.0.5",
            "--san",
            "runner-1.example.net",
            "--expiry-days",
            "30",
            "--organizational-unit",
            "netops",
            "--locality",
            "Paris",
            "--key-type",
            "ed25519",
            "--raw",
        ],
        0,
    )
    .stdout;
    let files = raw_json(&["cert-gen", "runner"], &written);
    let cert = out_dir.join("runner.pem");
    let key = out_dir.join("runner-key.pem");
    assert_eq!(
        files["files"],
        serde_json::json!([cert.display().to_string(), key.display().to_string()])
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let cert_s = cert.display().to_string();
    let (ok, dump) = openssl(&["x509", "-in", &cert_s, "-noout", "-text"]);
    assert!(ok, "{dump}");
    for needle in [
        "CN = runner",
        "OU = netops",
        "L = Paris",
        "IP Address:10.0.0.5",
        "DNS:runner-1.example.net",
        "ED25519",
        "TLS Web Client Authentication",
        "O = Acme Networks",
    ] {
        assert!(dump.contains(needle), "{needle} missing:\n{dump}");
    }
    let ca = out_dir.join("ca.pem").display().to_string();
    let (ok, ca_dump) = openssl(&["x509", "-in", &ca, "-noout", "-text"]);
    assert!(
        ok && ca_dump.contains("NIST CURVE: P-384") && ca_dump.contains("C = US"),
        "{ca_dump}"
    );
    assert!(openssl(&["verify", "-CAfile", &ca, &cert_s]).0);
    // 30 days: valid in 29, expired in 31.
    assert!(
        openssl(&[
            "x509",
            "-in",
            &cert_s,
            "-noout",
            "-checkend",
            &(29 * 86_400).to_string()
        ])
        .0
    );
    assert!(
        !openssl(&[
            "x509",
            "-in",
            &cert_s,
            "-noout",
            "-checkend",
            &(31 * 86_400).to_string()
        ])
        .0
    );

    // Refused with the reason, nothing written.
    let err = run(
        &[
            "cert-gen",
            "runner",
            "--output",
            &pki,
            "--name",
            "r2",
            "--country",
            "USA",
        ],
        64,
    )
    .stderr;
    assert!(err.contains("country"), "{err}");
    assert!(!out_dir.join("r2.pem").exists() && !out_dir.join("r2-key.pem").exists());
    let err = run(
        &["cert-gen", "runner", "--output", &pki, "--key-type", "rsa"],
        64,
    )
    .stderr;
    assert!(err.contains("rsa"), "{err}");
    let err = run(&["cert-gen", "runner", "--output", &pki], 64).stderr;
    assert!(err.contains("runner.pem"), "{err}");
}

/// `run service … --set-secret`: a stored secret injected for one run, over the service's own
/// by target, masked in the output; bad specs refused before anything runs.
#[test]
fn run_with_set_secret_injects_a_stored_secret_for_one_run() {
    let dir = TempDir::new().expect("tmp");
    let work = dir.path().join("work");
    let run = |args: &[&str], code: i32| {
        expect_code(
            Autogate::new(args.iter().map(|s| s.to_string()))
                .env(
                    "GATEWAY_APPLICATION_WORKING_DIR",
                    work.display().to_string(),
                )
                .output(DEADLINE),
            args,
            code,
        )
    };
    let url = crate::support::git_repo(
        &dir.path().join("repo"),
        &[(
            "show.sh",
            "#!/bin/sh\necho \"token=[$TOKEN] other=[$OTHER] len=${#TOKEN}\"\n",
        )],
    );
    run(&["create", "repository", "repo", "--url", &url], 0);
    run(
        &[
            "create",
            "executable-object",
            "sh",
            "--exec-command",
            "/bin/sh",
        ],
        0,
    );
    run(&["create", "secret", "own", "--value", "own-value-1234"], 0);
    run(
        &["create", "secret", "other", "--value", "other-value-98765"],
        0,
    );
    run(
        &[
            "create",
            "service",
            "executable",
            "show",
            "--repository",
            "repo",
            "--filename",
            "show.sh",
            "--executable-object",
            "sh",
            "--secret",
            "name=own,type=env,target=TOKEN",
        ],
        0,
    );
    // Without: the service's own secret, masked.
    let out = run(&["run", "service", "executable", "show"], 0).stdout;
    assert!(out.contains("token=[********] other=[] len=14"), "{out}");
    // With: a second variable, and the same target replaced (its length shows which one).
    let out = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "name=other,type=env,target=OTHER",
            "--set-secret",
            "name=other,target=TOKEN",
        ],
        0,
    )
    .stdout;
    assert!(
        out.contains("token=[********] other=[********] len=17"),
        "{out}"
    );
    assert!(
        !out.contains("other-value-98765") && !out.contains("own-value-1234"),
        "{out}"
    );
    let raw = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "name=other,target=OTHER",
            "--raw",
        ],
        0,
    )
    .stdout;
    assert!(!raw.contains("other-value-98765"), "{raw}");
    // Nothing stays: the next run has the service's own secret only.
    let out = run(&["run", "service", "executable", "show"], 0).stdout;
    assert!(out.contains("other=[] len=14"), "{out}");

    // Refused, naming what: unknown secret, bad spec, bad target, another type.
    let err = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "name=nope,target=X",
        ],
        1,
    )
    .stderr;
    assert!(err.contains("nope"), "{err}");
    let err = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "other",
        ],
        64,
    )
    .stderr;
    assert!(err.contains("--set-secret"), "{err}");
    let err = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "name=other,target=1BAD",
        ],
        64,
    )
    .stderr;
    assert!(err.contains("1BAD"), "{err}");
    let err = run(
        &[
            "run",
            "service",
            "executable",
            "show",
            "--set-secret",
            "name=other,type=file,target=X",
        ],
        64,
    )
    .stderr;
    assert!(err.contains("file"), "{err}");
}
