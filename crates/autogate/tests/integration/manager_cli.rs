//! Black-box tests of the manager's administration: first-start material (certificate, admin
//! token), the `autogate manager cluster …` commands with their defaults and exit codes, and
//! the REST API's authentication and input validation.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::manager::*;
use autogate_manager::AdminClient;
use autogate_testkit::{free_port, Autogate};
use autogate_tls::{CertKind, Validity};
use serde_json::{json, Value};

#[test]
fn first_start_mints_a_certificate_and_a_private_token_and_logs_only_paths() {
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let cert = data.path().join("manager.pem");
    let token_file = data.path().join("admin.token");
    let line = m
        .proc
        .wait_for_line("created a self-signed one at", STEP)
        .text;
    assert!(line.contains(&cert.display().to_string()), "{line}");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = autogate_tls::parse_pem_certs(&pem).unwrap();
    let fp = autogate_tls::fingerprint_sha256(&der[0]);
    assert!(line.contains(&format!("SHA-256 {fp}")), "{line}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_mode = std::fs::metadata(data.path().join("manager-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    m.proc
        .wait_for_line(&format!("admin token at {}", token_file.display()), STEP);
    let token = m.token();
    assert_eq!(token.len(), 64);
    assert!(
        !m.proc.logs().contains(&token),
        "the token must never be logged"
    );

    // A restart reuses both.
    drop(m);
    let m = Manager::start(data.path());
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    assert_eq!(m.token(), token);
    assert!(!m.proc.logs().contains("created"), "{}", m.proc.logs());
}

#[test]
fn cluster_commands_with_configured_defaults() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Manager::start_with(port, data.path(), |c| c);
    let core1 = pki.node("core-1");
    let core2 = pki.node("core-2");
    // The CLI finds URL, token and CA from the same configuration as the daemon.
    let cli = |args: &[&str]| {
        let mut cmd = Autogate::new(["manager", "cluster"])
            .env("GATEWAY_MANAGER_PORT", port.to_string())
            .env(
                "GATEWAY_MANAGER_DATA_DIR",
                data.path().display().to_string(),
            );
        for a in args {
            cmd = cmd.arg(*a);
        }
        cmd.output(START)
    };
    let p1 = pki.path("core-1.pem").display().to_string();
    let p2 = pki.path("core-2.pem").display().to_string();
    // A certificate is pinned to one cluster at most: gw-b's nodes have their own.
    pki.node("core-3");
    pki.node("core-4");
    let p3 = pki.path("core-3.pem").display().to_string();
    let p4 = pki.path("core-4.pem").display().to_string();

    let out = cli(&["list"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "no clusters registered");

    let out = cli(&["add", "gw-a", "--name", "Gateway A", "--cert", &p1]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "cluster gw-a registered");
    let out = cli(&["add", "gw-a", "--cert", &p1]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("cluster gw-a already exists"),
        "{}",
        out.stderr
    );
    let out = cli(&[
        "add",
        "gw-b",
        "--state",
        "read-only",
        "--cert",
        &p3,
        "--cert",
        &p4,
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    let out = cli(&["list"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("CLUSTER"), "{}", out.stdout);
    assert!(
        lines[1].starts_with("gw-a")
            && lines[1].contains("Gateway A")
            && lines[1].contains("enabled")
    );
    assert!(
        lines[2].starts_with("gw-b")
            && lines[2].contains("read-only")
            && lines[2].trim_end().ends_with('2')
    );

    let out = cli(&["show", "gw-b", "--raw"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("--raw is JSON");
    assert_eq!(v["state"], "read-only");
    assert_eq!(v["connected"], false);
    assert!(v["active"].is_null());
    assert_eq!(v["certificates"].as_array().unwrap().len(), 2);
    let out = cli(&["show", "gw-a"]);
    assert!(out.stdout.contains(&fingerprint(&core1)), "{}", out.stdout);
    assert!(out.stdout.contains("CN=core-1"), "{}", out.stdout);

    let out = cli(&["set-state", "gw-b", "disabled"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "cluster gw-b is now disabled");
    let out = cli(&["add-cert", "gw-a", &p2]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let fp2 = fingerprint(&core2);
    let out = cli(&["rm-cert", "gw-a", &fp2]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let out = cli(&["rm-cert", "gw-a", &fp2]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("is not registered for cluster gw-a"),
        "{}",
        out.stderr
    );

    let out = cli(&["sessions", "gw-a"]);
    assert_eq!(
        (out.code(), out.stdout.trim()),
        (Some(0), "no sessions yet")
    );
    let out = cli(&["sessions", "gw-a", "--raw"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!([])
    );
    let out = cli(&["ping", "gw-a"]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("cluster gw-a is not connected"),
        "{}",
        out.stderr
    );

    let out = cli(&["rm", "gw-b"]);
    assert_eq!(
        (out.code(), out.stdout.trim()),
        (Some(0), "cluster gw-b removed")
    );
    let out = cli(&["show", "gw-b"]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("cluster gw-b is not registered"),
        "{}",
        out.stderr
    );

    // Usage mistakes exit 64 before anything is sent.
    let out = cli(&["add", "gw-c", "--cert", "/nonexistent/cert.pem"]);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/cert.pem"),
        "{}",
        out.stderr
    );
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let out = cli(&["add", "gw-c", "--cert", &not_pem.display().to_string()]);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    let out = cli(&["add", "gw-c"]);
    assert_eq!(out.code(), Some(64), "--cert is required: {}", out.stderr);
    let out = cli(&["set-state", "gw-a", "sideways"]);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        cli(&["list"]).stdout.lines().count() == 2,
        "nothing half-applied"
    );

    // A wrong token is the server's refusal (exit 1); an unreachable manager is 69.
    let bad = pki.path("bad.token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let out = cli(&["list", "--token-file", &bad.display().to_string()]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("invalid admin token"), "{}", out.stderr);
    let out = cli(&[
        "list",
        "--url",
        &format!("https://127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    // The manager is verified: another CA does not do.
    let out = cli(&["list", "--ca", &pki.path("ca.pem").display().to_string()]);
    assert_ne!(out.code(), Some(0), "{}", out.stdout);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_requires_the_token_and_names_bad_fields() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let m = Manager::start(data.path());
    let admin = m.admin();
    let cert = pki.node("n");

    for token in ["", "wrong", &format!("{}x", m.token())] {
        let c = AdminClient::new(&m.url(), token, Some(&m.ca())).unwrap();
        let (code, body) = c
            .send("GET".parse().unwrap(), "/api/v1/clusters", None)
            .await
            .unwrap();
        assert_eq!(code, 401, "token {token:?}: {body}");
    }
    // Probes need no token.
    let anon = AdminClient::new(&m.url(), "", Some(&m.ca())).unwrap();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (code, body) = anon.send("GET".parse().unwrap(), path, None).await.unwrap();
        assert_eq!(code, 200, "{path}: {body}");
    }

    let post = |body: Value| {
        let admin = admin.clone();
        async move {
            admin
                .send("POST".parse().unwrap(), "/api/v1/clusters", Some(&body))
                .await
                .unwrap()
        }
    };
    let cases = [
        (json!({"certificates": []}), "cluster_id: required"),
        (
            json!({"cluster_id": "a b"}),
            "cluster_id: invalid cluster id",
        ),
        (
            json!({"cluster_id": "ok", "state": "on"}),
            "state: unknown state \"on\"",
        ),
        (
            json!({"cluster_id": "ok", "certificates": ["garbage"]}),
            "certificates[0]: ",
        ),
        (
            json!({"cluster_id": "ok", "certificates": [cert.cert_pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}),
            "certificates[1]: ",
        ),
        (
            json!({"cluster_id": "ok", "certificates": "x"}),
            "certificates: expected an array",
        ),
        (
            json!({"cluster_id": "ok", "colour": "red"}),
            "colour: unknown field",
        ),
        (
            json!(["not", "an", "object"]),
            "the body must be a JSON object",
        ),
    ];
    for (body, expected) in cases {
        let (code, v) = post(body.clone()).await;
        assert_eq!(code, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with(expected),
            "{body}: got {msg:?}, expected {expected:?}"
        );
    }
    let (code, v) = admin
        .send("POST".parse().unwrap(), "/api/v1/clusters", None)
        .await
        .unwrap();
    assert_eq!(code, 400, "{v}");
    let (code, _) = post(json!({"cluster_id": "ok", "certificates": [cert.cert_pem]})).await;
    assert_eq!(code, 201);
    let (code, v) = post(json!({"cluster_id": "ok", "certificates": [cert.cert_pem]})).await;
    assert_eq!(
        (code, v["error"].as_str().unwrap()),
        (409, "cluster ok already exists")
    );
    // Nothing half-written by the refused requests.
    let list = admin.list().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let patch = |body: Value| {
        let admin = admin.clone();
        async move {
            admin
                .send("PATCH".parse().unwrap(), "/api/v1/clusters/ok", Some(&body))
                .await
                .unwrap()
        }
    };
    let (code, v) = patch(json!({"remove_certificates": ["abc"]})).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .starts_with("remove_certificates[0]"));
    let (code, v) = patch(json!({"state": "maybe"})).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = patch(json!({"name": "Renamed"})).await;
    assert_eq!((code, v["name"].as_str().unwrap()), (200, "Renamed"));
    let (code, _) = admin
        .send(
            "PATCH".parse().unwrap(),
            "/api/v1/clusters/nope",
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
    let (code, _) = admin
        .send("DELETE".parse().unwrap(), "/api/v1/clusters/nope", None)
        .await
        .unwrap();
    assert_eq!(code, 404);
    let (code, _) = admin
        .send("GET".parse().unwrap(), "/api/v1/nothing-here", None)
        .await
        .unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_taken_port_fails_the_start_before_anything_is_created() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("manager");
    // Someone else holds the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = manager_cmd(port, &data).output(START);
    assert_eq!(out.code(), Some(69), "{}\n{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains("GATEWAY_MANAGER_PORT") && text.contains("nothing was created"),
        "the error says what to do: {text}"
    );
    assert!(
        !text.contains("admin token"),
        "no token was announced: {text}"
    );
    assert!(
        !data.exists(),
        "nothing is created in the data directory: {:?}",
        std::fs::read_dir(&data).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    drop(taken);

    // On a free port the same start creates everything once, and says where the token is.
    let m = Manager::start(&data);
    for file in [
        "admin.token",
        "manager.pem",
        "manager-key.pem",
        "manager.db",
    ] {
        assert!(data.join(file).exists(), "{file} created");
    }
    let token_file = data.join("admin.token");
    m.proc
        .wait_for_line(&format!("admin token at {}", token_file.display()), STEP);
    assert_eq!(m.token().len(), 64);
}

/// The README's short commands (`autogate manager cluster add …` with no --url, --ca or
/// --token-file) against a manager in a non-default working directory with a CA-issued
/// certificate: the CLI, given the same settings, finds the token where the manager put it and
/// verifies the manager with the configured CA; given less, it says what it used and what to set.
#[test]
fn cluster_commands_follow_the_managers_configuration() {
    let pki = Pki::new();
    let core1 = pki.node("core-1");
    let server = pki
        .ca
        .issue(
            CertKind::Server,
            "manager",
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            Validity::days(1),
        )
        .unwrap();
    let cert = pki.write("manager", &server).display().to_string();
    let key = pki.path("manager-key.pem").display().to_string();
    let ca = pki.path("ca.pem").display().to_string();
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("elsewhere").display().to_string();
    let port = free_port().to_string();
    let with = |cmd: Autogate, vars: &[(&str, &str)]| {
        vars.iter()
            .fold(cmd, |cmd, (k, v)| cmd.env(k, v.to_string()))
    };
    let manager_env = [
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_str()),
        ("GATEWAY_MANAGER_PORT", port.as_str()),
        ("GATEWAY_MANAGER_CERTIFICATE_FILE", cert.as_str()),
        ("GATEWAY_MANAGER_PRIVATE_KEY_FILE", key.as_str()),
        ("GATEWAY_APPLICATION_CA_CERTIFICATE_FILE", ca.as_str()),
    ];
    let m = with(Autogate::new(["manager"]).name("manager"), &manager_env).spawn();
    m.wait_for_line("manager listening on", START);
    let token_file = Path::new(&work).join("manager").join("admin.token");
    assert!(token_file.exists(), "the token is under the working dir");
    let cli = |vars: &[(&str, &str)], args: &[&str]| {
        args.iter()
            .fold(with(Autogate::new(["manager", "cluster"]), vars), |c, a| {
                c.arg(*a)
            })
            .output(START)
    };
    let core = pki.path("core-1.pem").display().to_string();

    // The manager's own settings: the short command works.
    let out = cli(
        &manager_env,
        &["add", "cluster_1", "--state", "enabled", "--cert", &core],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    // The working directory, the port and the CA are enough.
    let enough = [
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_str()),
        ("GATEWAY_MANAGER_PORT", port.as_str()),
        ("GATEWAY_APPLICATION_CA_CERTIFICATE_FILE", ca.as_str()),
    ];
    let out = cli(&enough, &["list"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("cluster_1"), "{}", out.stdout);
    let out = cli(&enough, &["show", "cluster_1"]);
    assert!(out.stdout.contains(&fingerprint(&core1)), "{}", out.stdout);

    // Without the CA: refused, with what was trusted and the setting to set.
    let out = cli(&enough[..2], &["list"]);
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    for needle in [
        "not signed by a CA this command trusts",
        "system trust store",
        "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    // Another CA: the file used is named, with where that setting came from.
    let other = Pki::new();
    let other_ca = other.path("ca.pem").display().to_string();
    let out = cli(
        &[
            enough[0],
            enough[1],
            ("GATEWAY_APPLICATION_CA_CERTIFICATE_FILE", other_ca.as_str()),
        ],
        &["list"],
    );
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{other_ca} (application.ca_certificate_file, environment variable GATEWAY_APPLICATION_CA_CERTIFICATE_FILE)"
        )),
        "{}",
        out.stderr
    );
    // Another working directory: no token there, and the message says where it looked and why.
    let wrong = root.path().join("default-like").display().to_string();
    let out = cli(
        &[
            ("GATEWAY_APPLICATION_WORKING_DIR", wrong.as_str()),
            enough[1],
            enough[2],
        ],
        &["list"],
    );
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    for needle in [
        format!("{wrong}/manager/admin.token"),
        "application.working_dir is".to_owned(),
        "GATEWAY_APPLICATION_WORKING_DIR".to_owned(),
        "--token-file".to_owned(),
    ] {
        assert!(out.stderr.contains(&needle), "{needle}: {}", out.stderr);
    }
    drop(m);
}
