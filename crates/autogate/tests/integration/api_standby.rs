//! A standby core node's operator API on real processes and a real etcd: reads are served
//! locally from the shared store, writes and logins are forwarded to the active node with the
//! caller's key, and without an active node a write is refused with 503 naming why.

use autogate_testkit::auth::{login, request, with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::support::{call, ha_status, ha_without_manager};

fn node(etcd: &EtcdServer, name: &str, port: u16) -> Process {
    let cmd = Autogate::new(["server"])
        .name(name)
        .env("GATEWAY_SERVER_PORT", port.to_string());
    with_admin_password(ha_without_manager(cmd, &etcd.endpoint()).env("GATEWAY_LOG_LEVEL", "DEBUG"))
        .spawn()
}

fn post(port: u16, path: &str, key: &str, body: &Value) -> (u16, Value) {
    call(&format!("127.0.0.1:{port}"), key, "POST", path, Some(body)).expect("request")
}

#[test]
fn a_standby_forwards_writes_and_logins_and_serves_reads() {
    let etcd = EtcdServer::start();
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = node(&etcd, "core-1", p1);
    poll_until("core-1 to be active", START, || {
        (ha_status(p1)?["role"] == "active").then_some(())
    });
    let n2 = node(&etcd, "core-2", p2);
    poll_until("core-2 to be a standby", START, || {
        (ha_status(p2)?["role"] == "standby").then_some(())
    });

    // Login on the standby: forwarded; the key works on both nodes (shared store).
    let (s, body) = login(&format!("127.0.0.1:{p2}"), "admin", ADMIN_PASSWORD).expect("login");
    assert_eq!(s, 200, "{body}");
    let key = serde_json::from_str::<Value>(&body).expect("json")["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    // A bad key is refused by the standby itself.
    let (s, v) = post(p2, "/api/v1/decorators", "ag_bad", &json!({}));
    assert_eq!(s, 401, "{v}");

    let (s, v) = post(
        p2,
        "/api/v1/decorators",
        &key,
        &json!({"name": "via-standby", "schema": {"type": "object"}}),
    );
    assert_eq!(s, 201, "{v}\n{}", n2.dump());
    n1.wait_for_line("decorator created", START);
    n2.wait_for_line("forwarding to the active node", START);
    assert!(
        !n2.logs().contains("decorator created"),
        "the standby wrote itself:\n{}",
        n2.dump()
    );
    // The error of the active node comes back as it is.
    let (s, v) = post(
        p2,
        "/api/v1/decorators",
        &key,
        &json!({"name": "via-standby", "schema": {"type": "object"}}),
    );
    assert_eq!(s, 409, "{v}");
    // Reads are local.
    let (s, body) = request(
        &format!("127.0.0.1:{p2}"),
        "GET",
        "/api/v1/decorators/via-standby",
        Some(&key),
        None,
    )
    .expect("get");
    assert_eq!(s, 200, "{body}");

    // No active node: the standby pauses, the active stops; a write gets 503 naming why.
    let (s, v) = post(p2, "/api/v1/ha/pause", &key, &json!({}));
    assert_eq!(s, 202, "{v}");
    n1.signal("TERM");
    n1.wait_exit(START);
    let v = poll_until(
        "a write without an active node to be refused",
        START,
        || {
            let (s, v) = post(
                p2,
                "/api/v1/decorators",
                &key,
                &json!({"name": "nobody-active", "schema": {"type": "object"}}),
            );
            (s == 503).then_some(v)
        },
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no active core node"),
        "{v}"
    );
    // Reads still work.
    let (s, _) = request(
        &format!("127.0.0.1:{p2}"),
        "GET",
        "/api/v1/decorators",
        Some(&key),
        None,
    )
    .expect("get");
    assert_eq!(s, 200);

    // Resumed, the node becomes active and writes itself.
    let (s, v) = post(p2, "/api/v1/ha/resume", &key, &json!({}));
    assert_eq!(s, 202, "{v}");
    poll_until("core-2 to be active", START, || {
        (ha_status(p2)?["role"] == "active").then_some(())
    });
    let (s, v) = post(
        p2,
        "/api/v1/decorators",
        &key,
        &json!({"name": "written-by-core-2", "schema": {"type": "object"}}),
    );
    assert_eq!(s, 201, "{v}");
    n2.wait_for_line("decorator created", START);
}

/// Two nodes of a new cluster starting at the same moment: exactly one creates `admin` and
/// prints its temporary password, and that password works on both; the active node creates
/// the built-in registries.
#[test]
fn two_nodes_starting_together_create_one_admin() {
    let etcd = EtcdServer::start();
    let (p1, p2) = (free_port(), free_port());
    let spawn = |name: &str, port: u16| {
        let cmd = Autogate::new(["server"])
            .name(name)
            .env("GATEWAY_SERVER_PORT", port.to_string());
        ha_without_manager(cmd, &etcd.endpoint()).spawn()
    };
    let (n1, n2) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("core-1", p1));
        let b = s.spawn(|| spawn("core-2", p2));
        (a.join().expect("spawn"), b.join().expect("spawn"))
    });
    // The admin is created before the node says it listens: once it has said so, its
    // bootstrap lines (same stream, earlier) have been read.
    for n in [&n1, &n2] {
        n.wait_for_line("core node listening on", START);
    }
    let created: Vec<&Process> = [&n1, &n2]
        .into_iter()
        .filter(|n| n.logs().contains("CREATED TEMPORARY ADMIN"))
        .collect();
    assert_eq!(created.len(), 1, "{}\n{}", n1.dump(), n2.dump());
    let password = autogate_testkit::auth::temporary_password(created[0], START);
    let mut key = String::new();
    for p in [p1, p2] {
        let body = poll_until("login", START, || {
            let (s, b) = login(&format!("127.0.0.1:{p}"), "admin", &password).ok()?;
            (s == 200).then_some(b)
        });
        key = serde_json::from_str::<Value>(&body).expect("json")["api_key"]
            .as_str()
            .expect("api_key")
            .to_owned();
    }
    let names = poll_until("the built-in registries", START, || {
        let (s, b) = request(
            &format!("127.0.0.1:{p1}"),
            "GET",
            "/api/v1/registries",
            Some(&key),
            None,
        )
        .ok()?;
        let v: Value = serde_json::from_str(&b).ok()?;
        let names: Vec<String> = v["registries"]
            .as_array()?
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect();
        (s == 200 && names.len() >= 2).then_some(names)
    });
    assert!(
        names.iter().any(|n| n == "default-pypi") && names.iter().any(|n| n == "default-galaxy"),
        "{names:?}"
    );
}
