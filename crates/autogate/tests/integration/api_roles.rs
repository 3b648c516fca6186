//! Roles on a real `autogate server`: every route of the node's own OpenAPI document (so a
//! route added later is covered without touching this test) is called by a viewer, an
//! operator and an admin, and each gets 403 naming the role needed exactly when its role is
//! below the one the route asks. Then the attack of the review, user `bob` taking over `admin`
//! by resetting its password, is refused; one's own password needs the current one; `logout`
//! (the API and the CLI) revokes the key in use only; and expired keys left in the store are
//! collected.

use std::process::Output;
use std::time::Duration;

use autogate_testkit::auth::{admin_key, login, request, with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::support::with_stdin;

const START: Duration = Duration::from_secs(30);

fn start(extra: &[(&str, String)]) -> (Process, u16) {
    let port = free_port();
    let mut cmd = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .name("server");
    for (k, v) in extra {
        cmd = cmd.env(k, v.clone());
    }
    let node = cmd.spawn();
    node.wait_for_line("core node listening", START);
    (node, port)
}

/// A request with a JSON body (or none): (status, body as JSON, or as a string).
fn call(addr: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (s, b) = request(
        addr,
        method,
        path,
        Some(key),
        text.as_deref().map(|t| ("application/json", t.as_bytes())),
    )
    .expect("request");
    let v = serde_json::from_str(&b).unwrap_or(Value::String(b));
    (s, v)
}

fn key_of(addr: &str, user: &str, password: &str) -> String {
    let (s, body) = login(addr, user, password).expect("login");
    assert_eq!(s, 200, "{user}: {body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["api_key"].as_str().expect("api_key").to_owned()
}

fn create_user(addr: &str, admin: &str, name: &str, role: Option<&str>) -> Value {
    let mut body = json!({"name": name, "password": format!("{name}-password")});
    if let Some(r) = role {
        body["role"] = r.into();
    }
    let (s, v) = call(addr, admin, "POST", "/api/v1/users", Some(body));
    assert_eq!(s, 201, "{v}");
    v
}

const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

fn rank(role: &str) -> usize {
    ROLES
        .iter()
        .position(|r| *r == role)
        .unwrap_or_else(|| panic!("unknown role {role:?}"))
}

#[test]
fn every_route_answers_each_role_as_the_document_says() {
    let (node, port) = start(&[]);
    let addr = format!("127.0.0.1:{port}");
    let admin = admin_key(port);
    create_user(&addr, &admin, "vera", Some("viewer"));
    create_user(&addr, &admin, "oscar", Some("operator"));
    create_user(&addr, &admin, "ada", Some("admin"));
    // Without a role: an operator.
    let bob = create_user(&addr, &admin, "bob", None);
    assert_eq!(bob["role"], "operator", "{bob}");
    let (s, users) = call(&addr, &admin, "GET", "/api/v1/users", None);
    assert_eq!(s, 200);
    let role_of = |name: &str| {
        users["users"]
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["role"].clone())
    };
    assert_eq!(role_of("admin"), Some(json!("admin")), "the bootstrap user");
    assert_eq!(role_of("vera"), Some(json!("viewer")));

    let (s, doc) = http_json(&addr, "/api/v1/openapi.json");
    assert_eq!(s, 200);
    // (method, path, role, own-user route); logout last, as it revokes the caller's key.
    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            if open {
                assert!(op.get("x-autogate-role").is_none(), "{method} {path}");
                continue;
            }
            let role = op["x-autogate-role"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no role"));
            let scopes = &op["security"][0]["apiKey"];
            assert_eq!(scopes, &json!([role]), "{method} {path}");
            let own = op["x-autogate-own-user"] == true;
            routes.push((
                method.to_ascii_uppercase(),
                path.clone(),
                role.to_owned(),
                own,
            ));
        }
    }
    routes.sort_by_key(|(_, path, _, _)| path == "/api/v1/logout");
    assert!(routes.len() > 30, "{}", routes.len());
    // The routes the issue names, with the roles they must have.
    let expect = |m: &str, p: &str, role: &str| {
        assert!(
            routes.iter().any(|r| r.0 == m && r.1 == p && r.2 == role),
            "{m} {p} should need {role}"
        );
    };
    expect("GET", "/api/v1/services", "viewer");
    expect("POST", "/api/v1/services/{name}/run", "operator");
    expect("POST", "/api/v1/services", "admin");
    expect("POST", "/api/v1/secrets", "admin");
    expect("POST", "/api/v1/users", "admin");
    expect("POST", "/api/v1/ha/switchover", "admin");
    expect("GET", "/api/v1/db/export", "admin");

    let mut checked = 0;
    for (caller, password) in [
        ("vera", "vera-password"),
        ("oscar", "oscar-password"),
        ("ada", "ada-password"),
    ] {
        let key = key_of(&addr, caller, password);
        let caller_role = match caller {
            "vera" => "viewer",
            "oscar" => "operator",
            _ => "admin",
        };
        for (method, path, role, own) in &routes {
            // `{name}` is nobody's: an own-user route is about another user here.
            let concrete = concrete_path(path);
            let needs = if *own { "admin" } else { role.as_str() };
            // A body no route accepts: whoever passes the role check gets 4xx, nothing changes.
            let body = (method == "POST").then(|| json!({"not-a-field": true}));
            let (s, v) = call(&addr, &key, method, &concrete, body);
            let text = v.to_string();
            assert_ne!(s, 401, "{caller} {method} {concrete}: {text}");
            if rank(caller_role) < rank(needs) {
                assert_eq!(
                    s, 403,
                    "{caller} ({caller_role}) {method} {concrete}: {text}"
                );
                assert!(
                    text.contains(&format!("needs the role {needs}")),
                    "{caller} {method} {concrete}: {text}"
                );
            } else {
                assert!(
                    !(s == 403 && text.contains("needs the role")),
                    "{caller} ({caller_role}) {method} {concrete}: {text}"
                );
                assert!(
                    s < 500 || s == 503,
                    "{caller} {method} {concrete}: {s} {text}"
                );
            }
            checked += 1;
        }
        // Every role may log out, which revoked this key.
        let (s, _) = call(&addr, &key, "GET", "/api/v1/services", None);
        assert_eq!(s, 401, "{caller}'s key was revoked by logout");
    }
    assert_eq!(checked, routes.len() * 3);
    // Nothing the refused (or invalid) calls did changed the users.
    let (_, after) = call(&addr, &admin, "GET", "/api/v1/users", None);
    assert_eq!(after["users"].as_array().map(Vec::len), Some(5), "{after}");
    drop(node);
}

/// A path template with its parameters filled: `{id}` with a UUID nothing has, any other
/// (`{name}`, `{host}`, …) with a name nothing has.
fn concrete_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{id}" => "00000000-0000-4000-8000-000000000000",
            s if s.starts_with('{') && s.ends_with('}') => "nobody-here",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn http_json(addr: &str, path: &str) -> (u16, Value) {
    let (s, b) = autogate_testkit::http_get(addr, path).expect("get");
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

/// The review's attack: a plain user reset `admin`'s password (revoking admin's keys) and
/// created users. Now refused with 403 naming the role, and admin's key and password stay.
#[test]
fn a_user_cannot_take_over_admin_and_own_password_needs_the_current_one() {
    let (_node, port) = start(&[]);
    let addr = format!("127.0.0.1:{port}");
    let admin = admin_key(port);
    create_user(&addr, &admin, "bob", None);
    let bob = key_of(&addr, "bob", "bob-password");

    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/users/admin/password",
        Some(json!({"password": "taken-over-1"})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("on another user needs the role admin")
                && e.contains("user bob has the role operator")),
        "{v}"
    );
    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/users",
        Some(json!({"name": "mallory", "password": "mallory-pw", "role": "admin"})),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(&addr, &bob, "DELETE", "/api/v1/users/admin", None);
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(&addr, &bob, "GET", "/api/v1/users/admin", None);
    assert_eq!(s, 403, "{v}");
    // admin is untouched: its key works, its password too.
    let (s, _) = call(&addr, &admin, "GET", "/api/v1/users", None);
    assert_eq!(s, 200);
    key_of(&addr, "admin", ADMIN_PASSWORD);

    // One's own: readable; a new password needs the current one (a stolen key is not enough).
    let (s, v) = call(&addr, &bob, "GET", "/api/v1/users/bob", None);
    assert_eq!((s, v["role"].clone()), (200, json!("operator")), "{v}");
    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/users/bob/password",
        Some(json!({"password": "bob-password-2"})),
    );
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("current_password"), "{v}");
    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/users/bob/password",
        Some(json!({"password": "bob-password-2", "current_password": "not-it-at-all"})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("current password is wrong"), "{v}");
    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/users/bob/password",
        Some(json!({"password": "bob-password-2", "current_password": "bob-password"})),
    );
    assert_eq!((s, v["revoked_keys"].clone()), (200, json!(1)), "{v}");
    let (s, _) = call(&addr, &bob, "GET", "/api/v1/services", None);
    assert_eq!(s, 401, "the change revoked bob's keys");

    // An admin resets another user's password without it; that revokes the user's keys.
    let bob = key_of(&addr, "bob", "bob-password-2");
    let (s, v) = call(
        &addr,
        &admin,
        "POST",
        "/api/v1/users/bob/password",
        Some(json!({"password": "bob-password-3"})),
    );
    assert_eq!((s, v["revoked_keys"].clone()), (200, json!(1)), "{v}");
    let (s, _) = call(&addr, &bob, "GET", "/api/v1/services", None);
    assert_eq!(s, 401);
    // A viewer reads but does not run; an operator runs (here: a service that does not exist).
    create_user(&addr, &admin, "vera", Some("viewer"));
    let vera = key_of(&addr, "vera", "vera-password");
    let (s, _) = call(&addr, &vera, "GET", "/api/v1/services", None);
    assert_eq!(s, 200);
    let (s, v) = call(
        &addr,
        &vera,
        "POST",
        "/api/v1/services/ping/run",
        Some(json!({"inputs": {}})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("needs the role operator"), "{v}");
    let bob = key_of(&addr, "bob", "bob-password-3");
    let (s, v) = call(
        &addr,
        &bob,
        "POST",
        "/api/v1/services/ping/run",
        Some(json!({"inputs": {}})),
    );
    assert_eq!(s, 404, "{v}");
    // The last admin stays.
    let (s, v) = call(&addr, &admin, "DELETE", "/api/v1/users/admin", None);
    assert!(s == 409 || s == 422, "{s} {v}");
}

fn cli(port: u16, work: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let port = port.to_string();
    let env = [
        ("HOME", work.as_os_str()),
        ("GATEWAY_APPLICATION_MODE", "client".as_ref()),
        ("GATEWAY_CLIENT_PORT", port.as_ref()),
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
    ];
    with_stdin(args, &env, &format!("{}\n", stdin.unwrap_or_default()))
}

/// `logout` revokes the one key in use (other keys of the user stay), the CLI removes its key
/// file, and expired keys written into the store are collected after a login.
#[test]
fn logout_revokes_the_key_in_use_and_expired_keys_are_collected() {
    let etcd = EtcdServer::start();
    let (_node, port) = start(&[
        ("GATEWAY_STORE_BACKEND", "etcd".to_owned()),
        ("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint().to_owned()),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let first = admin_key(port);
    let second = key_of(&addr, "admin", ADMIN_PASSWORD);
    let (s, v) = call(&addr, &first, "POST", "/api/v1/logout", None);
    assert_eq!(s, 204, "{v}");
    let (s, _) = call(&addr, &first, "GET", "/api/v1/services", None);
    assert_eq!(s, 401, "the key logged out is refused");
    let (s, _) = call(&addr, &second, "GET", "/api/v1/services", None);
    assert_eq!(s, 200, "another key of the same user stays");

    // The CLI: login keeps a key file, logout revokes the key and removes the file.
    let work = tempfile::TempDir::new().expect("tmp");
    let out = cli(
        port,
        work.path(),
        &["login", "admin", "--password-stdin"],
        Some(ADMIN_PASSWORD),
    );
    assert!(out.status.success(), "{out:?}");
    let file = work
        .path()
        .join("api-keys")
        .join(format!("127.0.0.1_{port}.key"));
    let key = std::fs::read_to_string(&file)
        .expect("key file")
        .trim()
        .to_owned();
    // create user --role, and the role in `get users`.
    let out = cli(
        port,
        work.path(),
        &[
            "create",
            "user",
            "carol",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        Some("carol-password"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Role:   viewer"),
        "{out:?}"
    );
    let out = cli(
        port,
        work.path(),
        &[
            "create",
            "user",
            "dave",
            "--role",
            "root",
            "--password-stdin",
        ],
        Some("dave-password"),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin, operator or viewer"),
        "{out:?}"
    );
    let out = cli(port, work.path(), &["get", "users"], None);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.starts_with("NAME") && table.contains("ROLE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("carol ") && l.contains(" viewer ")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("admin ") && l.contains(" admin ")),
        "{table}"
    );
    let out = cli(port, work.path(), &["logout"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("logged out"),
        "{out:?}"
    );
    assert!(!file.exists(), "the key file is removed");
    let (s, _) = call(&addr, &key, "GET", "/api/v1/services", None);
    assert_eq!(s, 401, "the CLI's key is revoked");
    let out = cli(port, work.path(), &["logout"], None);
    assert_eq!(
        out.status.code(),
        Some(64),
        "nothing to log out of: {out:?}"
    );

    // Expired keys in the store (as a key looks once its time has passed) are collected.
    let prefix = "/autogate/cluster_1/api-keys/";
    for i in 0..3 {
        let record = json!({
            "user": "admin",
            "created": "2024-01-01T00:00:00Z",
            "expires_at": "2024-01-01T00:01:00Z",
        });
        let out = etcd
            .etcdctl()
            .args([
                "put",
                &format!("{prefix}{:064x}", 0xdead_0000_u64 + i),
                &record.to_string(),
            ])
            .output()
            .expect("etcdctl put");
        assert!(out.status.success(), "{out:?}");
    }
    let expired_left = || {
        let out = etcd
            .etcdctl()
            .args(["get", "--prefix", "--keys-only", prefix])
            .output()
            .expect("etcdctl get");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("dead0000") || l.contains("dead0001") || l.contains("dead0002"))
            .count()
    };
    assert_eq!(expired_left(), 3);
    key_of(&addr, "admin", ADMIN_PASSWORD);
    poll_until("expired keys collected", Duration::from_secs(20), || {
        (expired_left() == 0).then_some(())
    });
    // The live key is still there.
    let (s, _) = call(&addr, &second, "GET", "/api/v1/services", None);
    assert_eq!(s, 200);
}
