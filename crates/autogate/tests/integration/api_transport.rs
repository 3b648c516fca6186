//! The core node's API port under attack, on real processes (and a real etcd where a standby
//! is involved): a half-sent request (slow-loris), an idle connection and a trickled body are
//! closed by the server within their timeouts; connections beyond the caps (in total and per
//! client address) are answered 503 and closed while earlier ones keep working; on the TLS port
//! a connection that never starts its handshake is closed by the handshake timeout and one over
//! the cap at once; a standby refuses a large login body with 413 before it forwards anything,
//! and a large write with a bad key at its key check, unread; a standby of a plaintext
//! cluster never forwards credentials in plaintext to a non-loopback address; forwarding over
//! TLS refuses a peer whose certificate the cluster's CA did not sign; and a node refuses to
//! start serving plaintext on a non-loopback address unless `server.allow_plaintext` says so.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use autogate_testkit::auth::{
    admin_key_tls, https_request, login, with_admin_password, ADMIN_PASSWORD,
};
use autogate_testkit::certs::TestPki;
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, http_get, poll_until, Autogate, Process};
use serde_json::{json, Value};

use crate::support::{call, ha_without_manager};

/// A plaintext core node on `127.0.0.1:port` with a local store and the test admin.
fn plain_node(port: u16) -> Autogate {
    with_admin_password(Autogate::new(["server"]).env("GATEWAY_SERVER_PORT", port.to_string()))
}

fn started(cmd: Autogate) -> Process {
    let p = cmd.spawn();
    p.wait_for_line("core node listening on", START);
    p
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

/// Reads until the server closes the connection: what it sent, or `None` if it was still open
/// at `deadline`.
fn closed_within(s: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A reset is closing too.
            Err(_) => return Some(got),
        }
    }
    None
}

/// One request on an open connection, the answer read by its `content-length`: (status,
/// headers and body as text).
fn exchange(s: &mut TcpStream, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).expect("write request");
    let end = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return (status_of(&text), text);
            }
        }
        assert!(
            Instant::now() < end,
            "no whole answer within 20 s: {text:?}"
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed mid-answer: {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the answer: {e} after {text:?}"),
        }
    }
}

fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";

#[test]
fn half_sent_requests_idle_connections_and_trickled_bodies_are_closed_in_time() {
    let port = free_port();
    let node = started(
        plain_node(port)
            .env("GATEWAY_SERVER_HEADER_READ_TIMEOUT", "2s")
            .env("GATEWAY_SERVER_BODY_READ_TIMEOUT", "2s"),
    );
    let addr = format!("127.0.0.1:{port}");

    // Slow-loris: the headers are begun and never finished.
    let mut loris = connect(&addr);
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .expect("write");
    let begun = Instant::now();
    // An idle connection: nothing sent at all.
    let mut idle = connect(&addr);
    let closed = closed_within(&mut loris, Duration::from_secs(8));
    assert!(
        closed.is_some(),
        "a half-sent request was still open after 8 s (header timeout 2 s)\n{}",
        node.dump()
    );
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)).is_some(),
        "an idle connection was still open after the header timeout"
    );

    // A body trickled after its headers: 408 naming the setting, and the connection closed.
    let mut slow = connect(&addr);
    slow.write_all(
        b"POST /api/v1/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"username\":",
    )
    .expect("write");
    let answer = closed_within(&mut slow, Duration::from_secs(8))
        .expect("a trickled body still held its connection after 8 s (body timeout 2 s)");
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(text.contains("server.body_read_timeout"), "{text}");

    // Whole requests are still answered.
    let (status, _) = http_get(&addr, "/healthz").expect("healthz");
    assert_eq!(status, 200);
}

#[test]
fn connections_beyond_the_caps_are_refused_while_earlier_ones_are_held() {
    for (setting, cap) in [
        (
            "GATEWAY_SERVER_MAX_CONNECTIONS_PER_ADDRESS",
            "server.max_connections_per_address",
        ),
        ("GATEWAY_SERVER_MAX_CONNECTIONS", "server.max_connections"),
    ] {
        let port = free_port();
        let node = started(
            plain_node(port)
                .env(setting, "4")
                .env("GATEWAY_SERVER_HEADER_READ_TIMEOUT", "60s"),
        );
        let addr = format!("127.0.0.1:{port}");
        // Four connections, each answered once (so each holds its slot), then kept open.
        let mut held: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut s = connect(&addr);
                let (status, text) = exchange(&mut s, HEALTHZ);
                assert_eq!(status, 200, "{text}");
                s
            })
            .collect();
        // The fifth: a 503 naming the cap, and closed.
        let mut fifth = connect(&addr);
        fifth.write_all(HEALTHZ.as_bytes()).expect("write");
        let answer = closed_within(&mut fifth, Duration::from_secs(5))
            .expect("a connection over the cap was kept open");
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(status_of(&text), 503, "{setting}: {text}\n{}", node.dump());
        assert!(text.contains(cap), "{text}");
        assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
        // The earlier ones are still served.
        for s in &mut held {
            let (status, text) = exchange(s, HEALTHZ);
            assert_eq!(status, 200, "a held connection: {text}");
        }
        // A closed one frees its slot.
        drop(held.pop());
        poll_until("a freed slot to be taken", Duration::from_secs(10), || {
            let mut s = connect(&addr);
            s.write_all(HEALTHZ.as_bytes()).ok()?;
            let answer = closed_within(&mut s, Duration::from_millis(500)).unwrap_or_default();
            let text = String::from_utf8_lossy(&answer).to_string();
            // Still open after its answer (keep-alive) means it was admitted.
            (answer.is_empty() || status_of(&text) == 200).then_some(())
        });
    }
}

/// `POST body` to `addr` (`127.0.0.1:port`) on a fresh connection, then the answer.
fn post_raw(addr: &str, path: &str, head_extra: &str, body: &[u8]) -> (u16, String) {
    let mut s = connect(addr);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nConnection: close\r\n{head_extra}\r\n"
    );
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (and close) before the whole body is sent: that is the point.
    let _ = s.write_all(body);
    let answer = closed_within(&mut s, Duration::from_secs(20)).expect("an answer");
    let text = String::from_utf8_lossy(&answer).to_string();
    (status_of(&text), text)
}

fn ha_node(etcd: &EtcdServer, name: &str, port: u16) -> Autogate {
    let cmd = Autogate::new(["server"])
        .name(name)
        .env("GATEWAY_SERVER_PORT", port.to_string());
    with_admin_password(ha_without_manager(cmd, &etcd.endpoint()).env("GATEWAY_LOG_LEVEL", "DEBUG"))
}

/// The role of the node at `addr` (`GET /api/v1/ha/status` with `key`).
fn role(addr: &str, key: &str) -> Option<String> {
    let (s, v) = call(addr, key, "GET", "/api/v1/ha/status", None).ok()?;
    (s == 200).then(|| v["role"].as_str().map(str::to_owned))?
}

fn key_of(addr: &str) -> String {
    poll_until("admin login", START, || {
        let (s, b) = login(addr, "admin", ADMIN_PASSWORD).ok()?;
        (s == 200).then(|| {
            serde_json::from_str::<Value>(&b).ok()?["api_key"]
                .as_str()
                .map(str::to_owned)
        })?
    })
}

#[test]
fn a_standby_refuses_a_large_login_body_before_forwarding_anything() {
    let etcd = EtcdServer::start();
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let _n1 = started(ha_node(&etcd, "core-1", p1));
    let key = key_of(&a1);
    poll_until("core-1 to be active", START, || {
        (role(&a1, &key)? == "active").then_some(())
    });
    let n2 = started(ha_node(&etcd, "core-2", p2));
    poll_until("core-2 to be a standby", START, || {
        (role(&a2, &key)? == "standby").then_some(())
    });

    // 1 MiB declared: refused at once.
    let big = vec![b'x'; 1 << 20];
    let (status, text) = post_raw(
        &a2,
        "/api/v1/login",
        &format!("Content-Length: {}\r\n", big.len()),
        &big,
    );
    assert_eq!(status, 413, "{text}\n{}", n2.dump());
    assert!(text.contains("/api/v1/login"), "{text}");
    // 1 MiB chunked, with no length declared: refused once the limit is passed.
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, text) = post_raw(
        &a2,
        "/api/v1/login",
        "Transfer-Encoding: chunked\r\n",
        &chunked,
    );
    assert_eq!(status, 413, "{text}\n{}", n2.dump());
    // A large write with a bad key: refused by the standby's key check before its body is read.
    let (status, text) = post_raw(
        &a2,
        "/api/v1/decorators",
        &format!(
            "Authorization: Bearer ag_not_a_key\r\nContent-Length: {}\r\n",
            big.len()
        ),
        &big,
    );
    assert_eq!(status, 401, "{text}\n{}", n2.dump());
    // None reached the active node: the standby says so for each request it forwards.
    assert!(
        !n2.logs().contains("forwarding to the active node"),
        "the standby forwarded a large body:\n{}",
        n2.dump()
    );
    // A login of ordinary size is still forwarded.
    let (s, body) = login(&a2, "admin", ADMIN_PASSWORD).expect("login");
    assert_eq!(s, 200, "{body}");
    n2.wait_for_line("forwarding to the active node", START);
}

/// A non-loopback IPv4 address of this machine, held for the test: an existing one, else one
/// on a dummy interface made for the test (root only, removed on drop).
struct LocalAddress {
    ip: String,
    dummy: Option<String>,
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        if let Some(link) = &self.dummy {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
    }
}

fn non_loopback_address() -> Result<LocalAddress, String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let existing = text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next().map(str::to_owned)
    });
    if let Some(ip) = existing {
        return Ok(LocalAddress { ip, dummy: None });
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("no non-loopback address and not root (a dummy interface needs root)".into());
    }
    let link = format!("agtr{}", std::process::id() % 100_000);
    let ip = format!(
        "10.213.{}.{}",
        (std::process::id() / 250) % 250 + 1,
        std::process::id() % 250 + 1
    );
    let held = LocalAddress {
        ip: ip.clone(),
        dummy: Some(link.clone()),
    };
    for args in [
        vec!["link", "add", link.as_str(), "type", "dummy"],
        vec!["addr", "add", &format!("{ip}/32"), "dev", link.as_str()],
        vec!["link", "set", link.as_str(), "up"],
    ] {
        let st = Command::new("ip")
            .args(&args)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!(
                "no non-loopback address, and a dummy interface could not be made (ip {args:?} failed)"
            ));
        }
    }
    Ok(held)
}

#[test]
fn a_plaintext_standby_never_forwards_credentials_to_a_network_address() {
    let local = match non_loopback_address() {
        Ok(a) => a,
        Err(why) => {
            eprintln!("SKIPPED a_plaintext_standby_never_forwards_credentials_to_a_network_address: {why}");
            return;
        }
    };
    let etcd = EtcdServer::start();
    let (p1, p2) = (free_port(), free_port());
    let a1 = format!("{}:{p1}", local.ip);
    let a2 = format!("127.0.0.1:{p2}");
    // The active node serves plaintext on a network address (allowed explicitly) and
    // advertises it; the standby is on loopback.
    let n1 = started(
        ha_node(&etcd, "core-1", p1)
            .env("GATEWAY_SERVER_LISTEN_ADDRESS", local.ip.clone())
            .env("GATEWAY_SERVER_ALLOW_PLAINTEXT", "true"),
    );
    let key = key_of(&a1);
    poll_until("core-1 to be active", START, || {
        (role(&a1, &key)? == "active").then_some(())
    });
    let n2 = started(ha_node(&etcd, "core-2", p2));
    poll_until("core-2 to be a standby", START, || {
        (role(&a2, &key)? == "standby").then_some(())
    });

    // A login on the standby would carry the password to core-1 in plaintext: refused.
    let (s, body) = login(&a2, "admin", ADMIN_PASSWORD).expect("login");
    assert_eq!(s, 502, "{body}\n{}", n2.dump());
    for part in ["plain", "server.use_tls", &a1] {
        assert!(body.contains(part), "{part}: {body}");
    }
    assert!(!body.contains(ADMIN_PASSWORD), "{body}");
    // So is a write, which would carry the API key.
    let (s, v) = call(
        &a2,
        &key,
        "POST",
        "/api/v1/decorators",
        Some(&json!({"name": "never-forwarded", "schema": {"type": "object"}})),
    )
    .expect("write");
    assert_eq!(s, 502, "{v}");
    assert!(
        !n2.logs().contains("forwarding to the active node"),
        "{}",
        n2.dump()
    );
    assert!(!n1.logs().contains("decorator created"), "{}", n1.dump());
    // Reads stay local and work.
    let (s, _) = call(&a2, &key, "GET", "/api/v1/decorators", None).expect("read");
    assert_eq!(s, 200);
}

fn tls_ha_node(etcd: &EtcdServer, pki: &TestPki, name: &str, port: u16) -> Autogate {
    ha_node(etcd, name, port)
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
        )
}

#[test]
fn forwarding_over_tls_refuses_an_active_node_the_cluster_ca_did_not_sign() {
    let etcd = EtcdServer::start();
    // core-1's certificate comes from another CA than the one core-2 trusts: to core-2 it is
    // an impostor at the address the store names.
    let (impostor, cluster) = (TestPki::new(), TestPki::new());
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let n1 = started(tls_ha_node(&etcd, &impostor, "core-1", p1));
    let key = admin_key_tls(&a1, &impostor.ca_cert, None, START);
    let status = |addr: &str, ca: &std::path::Path| {
        let (s, b) =
            https_request(addr, "GET", "/api/v1/ha/status", Some(&key), None, ca, None).ok()?;
        (s == 200).then(|| serde_json::from_str::<Value>(&b).ok())?
    };
    poll_until("core-1 to be active", START, || {
        (status(&a1, &impostor.ca_cert)?["role"] == "active").then_some(())
    });
    let n2 = started(tls_ha_node(&etcd, &cluster, "core-2", p2));
    poll_until("core-2 to be a standby", START, || {
        (status(&a2, &cluster.ca_cert)?["role"] == "standby").then_some(())
    });
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD}).to_string();
    let (s, text) = https_request(
        &a2,
        "POST",
        "/api/v1/login",
        None,
        Some(("application/json", body.as_bytes())),
        &cluster.ca_cert,
        None,
    )
    .expect("login on the standby");
    assert_eq!(s, 503, "{text}\n{}", n2.dump());
    assert!(text.contains("cannot reach the active core node"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    drop(n1);
}

#[test]
fn the_tls_port_closes_silent_handshakes_and_connections_over_the_cap() {
    let pki = TestPki::new();
    let port = free_port();
    let node = started(
        plain_node(port)
            .env("GATEWAY_SERVER_USE_TLS", "true")
            .env(
                "GATEWAY_SERVER_CERTIFICATE_FILE",
                pki.server_cert.display().to_string(),
            )
            .env(
                "GATEWAY_SERVER_PRIVATE_KEY_FILE",
                pki.server_key.display().to_string(),
            )
            .env("GATEWAY_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "2"),
    );
    let addr = format!("127.0.0.1:{port}");
    // Two connections that never start their handshake hold both of this address's slots.
    let mut silent: Vec<TcpStream> = (0..2).map(|_| connect(&addr)).collect();
    let opened = Instant::now();
    // A third is closed at once, before any handshake work.
    let mut third = connect(&addr);
    assert!(
        closed_within(&mut third, Duration::from_secs(3)).is_some(),
        "a connection over the cap was kept open\n{}",
        node.dump()
    );
    // The silent ones are closed by the handshake timeout (10 s), not held for ever.
    for s in &mut silent {
        let left = Duration::from_secs(20).saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).is_some(),
            "a connection that never handshook was still open after 20 s"
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(8),
        "{:?}",
        opened.elapsed()
    );
    // Their slots are free again: a real client gets its answer.
    let (status, _) = poll_until("a TLS answer", Duration::from_secs(10), || {
        https_request(&addr, "GET", "/healthz", None, None, &pki.ca_cert, None).ok()
    });
    assert_eq!(status, 200);
}

#[test]
fn plaintext_on_a_network_address_is_refused_at_start_unless_allowed() {
    let port = free_port();
    let out = plain_node(port)
        .env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0")
        .output(START);
    assert_eq!(out.code(), Some(64), "{}\n{}", out.stdout, out.stderr);
    for part in [
        "server.listen_address = 0.0.0.0",
        "server.allow_plaintext = true",
        "server.use_tls = true",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
    }
    assert!(
        !out.stderr.contains("listening") && !out.stdout.contains("listening"),
        "{}",
        out.stderr
    );
    // Said explicitly, it starts.
    let node = started(
        plain_node(port)
            .env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0")
            .env("GATEWAY_SERVER_ALLOW_PLAINTEXT", "true"),
    );
    let (status, _) = http_get(&format!("127.0.0.1:{port}"), "/healthz").expect("healthz");
    assert_eq!(status, 200, "{}", node.dump());
    // Over TLS a network address needs nothing more.
    let pki = TestPki::new();
    let tls_port = free_port();
    let _tls = started(
        plain_node(tls_port)
            .env("GATEWAY_SERVER_LISTEN_ADDRESS", "0.0.0.0")
            .env("GATEWAY_SERVER_USE_TLS", "true")
            .env(
                "GATEWAY_SERVER_CERTIFICATE_FILE",
                pki.server_cert.display().to_string(),
            )
            .env(
                "GATEWAY_SERVER_PRIVATE_KEY_FILE",
                pki.server_key.display().to_string(),
            ),
    );
    let (status, _) = https_request(
        &format!("127.0.0.1:{tls_port}"),
        "GET",
        "/healthz",
        None,
        None,
        &pki.ca_cert,
        None,
    )
    .expect("healthz over TLS");
    assert_eq!(status, 200);
}
