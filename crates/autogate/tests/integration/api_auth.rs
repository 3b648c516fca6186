//! Users and API keys on real `autogate server` processes: the first start's temporary admin,
//! login and its 401s, routes that stay open, expired keys (a key record with a past expiry
//! written into the real etcd store, the way a key looks once its time has passed), and
//! password changes revoking keys.

use std::io::Write;
use std::process::{Command, Stdio};

use autogate_testkit::auth::{admin_key, login, request, with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, http_get, poll_until, Autogate};
use serde_json::{json, Value};

const MISSING: &str = "missing or invalid API key: run autogate login";
const EXPIRED: &str = "api key has expired. please login";

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[test]
fn first_start_prints_a_temporary_admin_and_keys_guard_the_api() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let node = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .spawn();
    let password = autogate_testkit::auth::temporary_password(&node, START);
    poll_until("the API", START, || http_get(&addr, "/healthz").ok());

    // Open routes.
    for path in [
        "/api/v1/health",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let (s, body) = http_get(&addr, path).expect("get");
        assert_eq!(s, 200, "{path}: {body}");
    }
    // Everything else needs a key.
    for path in [
        "/api/v1/users",
        "/api/v1/services",
        "/api/v1/ha/status",
        "/api/v1/db/export",
    ] {
        let (s, body) = http_get(&addr, path).expect("get");
        assert_eq!((s, error_of(&body)), (401, MISSING.to_owned()), "{path}");
    }
    let (s, body) =
        request(&addr, "GET", "/api/v1/users", Some("ag_not-a-key"), None).expect("get");
    assert_eq!((s, error_of(&body)), (401, MISSING.to_owned()));

    // Wrong password and unknown user: the same 401.
    let (s1, b1) = login(&addr, "admin", "not-the-password").expect("login");
    let (s2, b2) = login(&addr, "nobody", &password).expect("login");
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(error_of(&b1), error_of(&b2));
    assert_eq!(error_of(&b1), "invalid username or password");
    // Malformed login bodies.
    let (s, _) = request(
        &addr,
        "POST",
        "/api/v1/login",
        None,
        Some(("application/json", b"{")),
    )
    .expect("login");
    assert_eq!(s, 400);
    let (s, _) = request(
        &addr,
        "POST",
        "/api/v1/login",
        None,
        Some(("application/json", br#"{"username":"admin"}"#)),
    )
    .expect("login");
    assert_eq!(s, 422);

    let (s, body) = login(&addr, "admin", &password).expect("login");
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let key = v["api_key"].as_str().expect("api_key").to_owned();
    let expires = v["expires_at"].as_str().expect("expires_at");
    let expires =
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    // Default lifetime: 1440 minutes.
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(1430) && left <= time::Duration::minutes(1440),
        "{left}"
    );
    let (s, body) = request(&addr, "GET", "/api/v1/users", Some(&key), None).expect("users");
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["users"][0]["name"], "admin");
    assert!(v["users"][0]["last_login"].is_string(), "{v}");
    assert!(!v.to_string().contains("argon2"), "no hash in answers: {v}");
    let logs = node.logs();
    assert!(!logs.contains(&key), "the key is never logged:\n{logs}");
    assert_eq!(
        logs.matches("CREATED TEMPORARY ADMIN").count(),
        1,
        "printed once:\n{logs}"
    );
}

/// SHA-256 of `text` in hex, with the system's `sha256sum`.
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

#[test]
fn expired_and_revoked_keys_are_refused_with_the_family_words() {
    let etcd = EtcdServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let node = with_admin_password(
        Autogate::new(["server"])
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
            .env("GATEWAY_SERVER_API_KEY_EXPIRATION", "1"),
    )
    .spawn();
    let admin = admin_key(port);
    // With the password from the file, nothing is printed.
    assert!(
        !node.logs().contains("CREATED TEMPORARY ADMIN"),
        "{}",
        node.dump()
    );
    assert!(!node.logs().contains(ADMIN_PASSWORD), "{}", node.dump());

    // A key whose lifetime (here 1 minute) is over: its record has an expiry in the past.
    let key = "ag_expired-key-for-the-test";
    let record = json!({
        "user": "admin",
        "created": "2024-01-01T00:00:00Z",
        "expires_at": "2024-01-01T00:01:00Z",
    });
    let out = etcd
        .etcdctl()
        .args([
            "put",
            &format!("/autogate/cluster_1/api-keys/{}", sha256_hex(key)),
            &record.to_string(),
        ])
        .output()
        .expect("etcdctl put");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, body) = request(&addr, "GET", "/api/v1/services", Some(key), None).expect("get");
    assert_eq!((s, error_of(&body)), (401, EXPIRED.to_owned()));

    // The configured lifetime is what login hands out.
    let (_, body) = login(&addr, "admin", ADMIN_PASSWORD).expect("login");
    let v: Value = serde_json::from_str(&body).expect("json");
    let expires = time::OffsetDateTime::parse(
        v["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(1) && left > time::Duration::seconds(50),
        "{left}"
    );

    // Keys are stored as digests only.
    let out = etcd
        .etcdctl()
        .args(["get", "--prefix", "/autogate/cluster_1/"])
        .output()
        .expect("etcdctl get");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains(&sha256_hex(&admin)), "{dump}");
    assert!(!dump.contains(&admin), "the key itself is not stored");
    assert!(!dump.contains(ADMIN_PASSWORD), "the password is not stored");

    // A second user; its password change revokes its keys, not the admin's.
    let call = |method: &str, path: &str, key: &str, body: Value| {
        let b = body.to_string();
        request(
            &addr,
            method,
            path,
            Some(key),
            Some(("application/json", b.as_bytes())),
        )
        .expect("request")
    };
    let (s, body) = call(
        "POST",
        "/api/v1/users",
        &admin,
        json!({"name": "bob", "password": "bob-password"}),
    );
    assert_eq!(s, 201, "{body}");
    let (s, body) = call(
        "POST",
        "/api/v1/users",
        &admin,
        json!({"name": "bob", "password": "bob-password"}),
    );
    assert_eq!(s, 409, "{body}");
    let (s, body) = call(
        "POST",
        "/api/v1/users",
        &admin,
        json!({"name": "carol", "password": "short"}),
    );
    assert_eq!(s, 422, "{body}");
    let (_, body) = login(&addr, "bob", "bob-password").expect("login");
    let bob: Value = serde_json::from_str(&body).expect("json");
    let bob = bob["api_key"].as_str().expect("key").to_owned();
    let (s, _) = request(&addr, "GET", "/api/v1/users/bob", Some(&bob), None).expect("get");
    assert_eq!(s, 200);
    let (s, body) = call(
        "POST",
        "/api/v1/users/bob/password",
        &bob,
        json!({"password": "bob-password-2", "current_password": "bob-password"}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["revoked_keys"],
        1
    );
    let (s, body) = request(&addr, "GET", "/api/v1/users", Some(&bob), None).expect("get");
    assert_eq!((s, error_of(&body)), (401, MISSING.to_owned()));
    let (s, _) = request(&addr, "GET", "/api/v1/users", Some(&admin), None).expect("get");
    assert_eq!(s, 200);
    let (s, _) = login(&addr, "bob", "bob-password").expect("login");
    assert_eq!(s, 401);
    let (s, _) = request(&addr, "DELETE", "/api/v1/users/bob", Some(&admin), None).expect("delete");
    assert_eq!(s, 204);
    let (s, _) = login(&addr, "bob", "bob-password-2").expect("login");
    assert_eq!(s, 401);
    let (s, body) =
        request(&addr, "DELETE", "/api/v1/users/admin", Some(&admin), None).expect("delete");
    assert_eq!(s, 409, "the last user stays: {body}");
    assert!(!node.logs().contains(&admin));
}
