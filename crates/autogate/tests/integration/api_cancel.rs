//! A service run through the API ends with its caller: when the client goes away, and when the
//! node shuts down, the running program is stopped (real process, real `sleep`).

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use autogate_testkit::auth::{admin_key, request, with_admin_password};
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, poll_until, Autogate, Process};
use serde_json::json;

/// Whether a process with exactly this command line runs (from `/proc`).
fn running(cmdline: &[&str]) -> bool {
    let want: Vec<u8> = cmdline
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        })
        .unwrap_or(false)
}

fn node_with_sleep_service() -> (Process, String, String) {
    let port = free_port();
    let proc =
        with_admin_password(Autogate::new(["server"]).env("GATEWAY_SERVER_PORT", port.to_string()))
            .spawn();
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    for (path, body) in [
        (
            "/api/v1/executable-objects",
            json!({"name": "sleep-bin", "exec-command": "/bin/sleep"}),
        ),
        (
            "/api/v1/services",
            json!({"name": "nap", "type": "executable", "executable-object": "sleep-bin", "arg-format": "{{.Value}}"}),
        ),
    ] {
        let text = body.to_string();
        let (s, b) = request(
            &addr,
            "POST",
            path,
            Some(&key),
            Some(("application/json", text.as_bytes())),
        )
        .expect("create");
        assert_eq!(s, 201, "{path}: {b}");
    }
    (proc, addr, key)
}

/// Starts a run of `sleep <secs>` on a connection the caller keeps.
fn start_run(addr: &str, key: &str, secs: &str) -> TcpStream {
    let body = json!({"inputs": {"seconds": secs}}).to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /api/v1/services/nap/run HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    s
}

#[test]
fn a_run_stops_when_the_client_disconnects() {
    let (node, addr, key) = node_with_sleep_service();
    let conn = start_run(&addr, &key, "41.5");
    poll_until("the program to run", START, || {
        running(&["/bin/sleep", "41.5"]).then_some(())
    });
    drop(conn);
    poll_until("the program to be stopped", Duration::from_secs(10), || {
        (!running(&["/bin/sleep", "41.5"])).then_some(())
    });
    drop(node);
}

#[test]
fn a_run_stops_when_the_node_shuts_down() {
    let (mut node, addr, key) = node_with_sleep_service();
    let _conn = start_run(&addr, &key, "42.5");
    poll_until("the program to run", START, || {
        running(&["/bin/sleep", "42.5"]).then_some(())
    });
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", node.dump());
    poll_until("the program to be stopped", Duration::from_secs(5), || {
        (!running(&["/bin/sleep", "42.5"])).then_some(())
    });
}
