//! The operator API over TLS (`SERVER_USE_TLS`) on real processes with certificates minted in
//! the test: two HA core nodes on a real etcd, `autogate ha status` through the CLI over TLS,
//! the standby's crash probe answering over TLS, a write forwarded over TLS, client
//! certificates required with `client_cert_auth`, and configuration errors naming missing
//! files before anything is bound.

use std::path::Path;

use autogate_testkit::auth::{admin_key_tls, https_request, with_admin_password};
use autogate_testkit::certs::TestPki;
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, http_get, poll_until, Autogate};
use serde_json::{json, Value};

use crate::support::ha_without_manager;

fn tls_node(pki: &TestPki, port: u16) -> Autogate {
    with_admin_password(
        Autogate::new(["server"])
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_SERVER_USE_TLS", "true")
            .env(
                "GATEWAY_SERVER_CERTIFICATE_FILE",
                pki.server_cert.display().to_string(),
            )
            .env(
                "GATEWAY_SERVER_PRIVATE_KEY_FILE",
                pki.server_key.display().to_string(),
            )
            .env(
                "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
                pki.ca_cert.display().to_string(),
            ),
    )
}

fn ha(cmd: Autogate, etcd: &EtcdServer) -> Autogate {
    ha_without_manager(cmd, &etcd.endpoint()).env("GATEWAY_LOG_LEVEL", "DEBUG")
}

fn get(addr: &str, path: &str, key: &str, ca: &Path) -> Option<Value> {
    let (status, body) = https_request(addr, "GET", path, Some(key), None, ca, None).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn tls_api_with_ha_status_through_the_cli_probe_and_forwarding() {
    let etcd = EtcdServer::start();
    let pki = TestPki::new();
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let n1 = ha(tls_node(&pki, p1), &etcd).name("core-1").spawn();
    n1.wait_for_line("core node listening on https://", START);
    let key = admin_key_tls(&a1, &pki.ca_cert, None, START);
    let id1 = poll_until("core-1 to be active", START, || {
        let s = get(&a1, "/api/v1/ha/status", &key, &pki.ca_cert)?;
        (s["role"] == "active").then(|| s["node_id"].as_str().map(str::to_owned))?
    });
    let n2 = ha(tls_node(&pki, p2), &etcd).name("core-2").spawn();
    // The standby probes the active node's TLS API: armed once the health answer came back.
    poll_until("core-2 to verify core-1 over TLS", START, || {
        let s = get(&a2, "/api/v1/ha/status", &key, &pki.ca_cert)?;
        (s["role"] == "standby"
            && s["crash_probe"]["verified"] == true
            && s["crash_probe"]["node_id"] == id1.as_str())
        .then_some(())
    });
    // Plain HTTP on a TLS port gets no answer.
    assert!(
        http_get(&a1, "/api/v1/health").map_or(true, |(s, _)| s != 200),
        "plain HTTP must not be served"
    );

    let out = Autogate::new(["ha", "status", "--raw"])
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", p2.to_string())
        .env("GATEWAY_CLIENT_USE_TLS", "true")
        .env(
            "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
            pki.ca_cert.display().to_string(),
        )
        .env("GATEWAY_CLIENT_API_KEY", &key)
        .output(START);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("ha status --raw is JSON");
    assert_eq!(v["role"], "standby", "{v}");
    assert_eq!(v["active_node_id"], id1.as_str(), "{v}");
    // Without the key the CLI reports the server's words.
    let out = Autogate::new(["ha", "status"])
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", p2.to_string())
        .env("GATEWAY_CLIENT_USE_TLS", "true")
        .env(
            "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
            pki.ca_cert.display().to_string(),
        )
        .output(START);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("missing or invalid API key"),
        "{}",
        out.stderr
    );

    // A write on the standby is forwarded to the active node over TLS.
    let body = json!({"name": "via-standby", "schema": {"type": "object"}}).to_string();
    let (s, text) = https_request(
        &a2,
        "POST",
        "/api/v1/decorators",
        Some(&key),
        Some(("application/json", body.as_bytes())),
        &pki.ca_cert,
        None,
    )
    .expect("forwarded create");
    assert_eq!(s, 201, "{text}\n{}", n2.dump());
    n1.wait_for_line("decorator created", START);
    drop(n2);
}

#[test]
fn client_cert_auth_requires_a_certificate_from_the_ca() {
    let pki = TestPki::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let node = tls_node(&pki, port)
        .env("GATEWAY_SERVER_CLIENT_CERT_AUTH", "true")
        .spawn();
    node.wait_for_line("core node listening on https://", START);
    let identity = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let key = admin_key_tls(&addr, &pki.ca_cert, identity, START);
    let (s, _) = https_request(
        &addr,
        "GET",
        "/api/v1/users",
        Some(&key),
        None,
        &pki.ca_cert,
        identity,
    )
    .expect("with a client certificate");
    assert_eq!(s, 200);
    let refused = https_request(
        &addr,
        "GET",
        "/api/v1/health",
        None,
        None,
        &pki.ca_cert,
        None,
    );
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // A certificate from another CA is refused too.
    let other = TestPki::new();
    let refused = https_request(
        &addr,
        "GET",
        "/api/v1/health",
        None,
        None,
        &pki.ca_cert,
        Some((other.client_cert.as_path(), other.client_key.as_path())),
    );
    assert!(refused.is_err(), "foreign client certificate: {refused:?}");
}

#[test]
fn missing_tls_files_are_named_before_anything_is_bound() {
    let port = free_port();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_SERVER_USE_TLS", "true")
        .env(
            "GATEWAY_SERVER_CERTIFICATE_FILE",
            "/nonexistent/api-cert.pem",
        )
        .env(
            "GATEWAY_SERVER_PRIVATE_KEY_FILE",
            "/nonexistent/api-key.pem",
        )
        .output(START);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/api-cert.pem"),
        "{}",
        out.stderr
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );

    let pki = TestPki::new();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_SERVER_USE_TLS", "true")
        .env("GATEWAY_SERVER_CLIENT_CERT_AUTH", "true")
        .env(
            "GATEWAY_SERVER_CERTIFICATE_FILE",
            pki.server_cert.display().to_string(),
        )
        .env(
            "GATEWAY_SERVER_PRIVATE_KEY_FILE",
            pki.server_key.display().to_string(),
        )
        .output(START);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("ca_certificate_file"), "{}", out.stderr);

    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_SERVER_ADMIN_PASSWORD_FILE",
            "/nonexistent/admin.password",
        )
        .output(START);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/admin.password"),
        "{}",
        out.stderr
    );
}
