//! Black-box tests of a core node's life: start with defaults, answer health, stop on a signal
//! with the HA guide's shutdown lines and one closing line per role (docs/operations.md).

use std::time::{Duration, Instant};

use autogate_testkit::{free_port, http_get, poll_until, Autogate, Process};
use serde_json::Value;

fn start_server() -> (Process, String) {
    let port = free_port();
    let proc = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .name("server")
        .spawn();
    let addr = format!("127.0.0.1:{port}");
    proc.wait_for_line("core node listening", Duration::from_secs(20));
    (proc, addr)
}

#[test]
fn health_answers_with_identity() {
    let (mut proc, addr) = start_server();
    let (status, body) = http_get(&addr, "/api/v1/health").expect("health");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["cluster_id"], "cluster_1");
    assert_eq!(v["mode"], "server");
    assert_eq!(v["store"], "local");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let id = v["node_id"].as_str().expect("node id");
    let (host, uuid) = id.split_once('_').expect("<hostname>_<uuid>");
    assert!(!host.is_empty());
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(&uuid[14..15], "7", "uuid v7: {uuid}");

    let (status, body) = http_get(&addr, "/readyz").expect("readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(body.contains("process_resident_memory_bytes"), "{body}");

    // The local store is the default and lives in the working dir.
    assert!(proc.home().join("work/gateway.db").exists());
    proc.signal("TERM");
    assert!(proc.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn sigterm_prints_shutdown_lines_and_exits_zero_within_a_second() {
    let (mut proc, addr) = start_server();
    poll_until("health", Duration::from_secs(5), || {
        http_get(&addr, "/api/v1/health")
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    let sent = Instant::now();
    proc.signal("TERM");
    let status = proc.wait_exit(Duration::from_secs(5));
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", proc.dump());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let logs = proc.logs();
    let lines: Vec<&str> = logs.lines().collect();
    let got = lines
        .iter()
        .position(|l| l.ends_with(" INF got signal for shutdown....terminated"))
        .unwrap_or_else(|| panic!("no signal line in:\n{logs}"));
    assert!(
        lines[got + 1].ends_with(" INF received shutdown signal"),
        "next line: {}",
        lines[got + 1]
    );
    // `2024-12-23T18:03:59Z INF …`: UTC, second precision.
    let ts = lines[got].split(' ').next().expect("timestamp");
    assert_eq!(ts.len(), 20, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let (mut proc, _addr) = start_server();
    proc.signal("INT");
    assert!(proc.wait_exit(Duration::from_secs(5)).success());
    assert!(proc
        .logs()
        .contains("INF got signal for shutdown....interrupt"));
    assert!(proc.logs().contains("INF received shutdown signal"));
    let (total, phases) = stop_line(&proc, "core node", "SIGINT");
    assert_eq!(
        phases.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["API requests", "background tasks"],
        "a node without HA or manager has only these phases"
    );
    assert!(total < 5000, "{total} ms");
}

/// Checks that the last log line of an exited role is `<role> stopped N ms after <signal> (…)`
/// at INFO and that its phases do not add up to more than the total; returns the total and
/// the phases in ms.
fn stop_line(proc: &Process, role: &str, signal: &str) -> (u128, Vec<(String, u128)>) {
    let logs = proc.logs();
    let last = logs
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no log lines"));
    let (_, line) = last
        .split_once(" INF ")
        .unwrap_or_else(|| panic!("last line is not at INFO: {last}\n{logs}"));
    let rest = line
        .strip_prefix(&format!("{role} stopped "))
        .unwrap_or_else(|| panic!("last line is not the stop line: {last}\n{logs}"));
    let (total, rest) = rest
        .split_once(&format!(" ms after {signal} ("))
        .unwrap_or_else(|| panic!("no duration and {signal}: {last}"));
    let total: u128 = total.parse().unwrap_or_else(|_| panic!("{last}"));
    let phases: Vec<(String, u128)> = rest
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("{last}"))
        .split(", ")
        .map(|p| {
            let (name, ms) = p
                .strip_suffix(" ms")
                .and_then(|p| p.rsplit_once(' '))
                .unwrap_or_else(|| panic!("phase {p:?} in {last}"));
            (
                name.to_owned(),
                ms.parse().unwrap_or_else(|_| panic!("{last}")),
            )
        })
        .collect();
    let sum: u128 = phases.iter().map(|(_, ms)| ms).sum();
    assert!(sum <= total, "phases add up to more than the total: {last}");
    assert_eq!(
        logs.matches(&format!("{role} stopped ")).count(),
        1,
        "one stop line:\n{logs}"
    );
    (total, phases)
}

/// Each role ends with its own stop line, naming the signal and the phases of its written
/// shutdown order: an HA core node connected to a manager (SIGINT), a runner (SIGTERM) and the
/// manager itself (SIGINT).
#[test]
fn every_role_ends_its_log_with_the_stop_its_signal_and_where_the_time_went() {
    use autogate_testkit::etcd::EtcdServer;
    use autogate_testkit::scenario::{Manager, Pki, START};

    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().expect("tempdir");
    let mut manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, "cluster_1", &["core-1"]);
    let (cmd, _) = crate::support::ha_core_node(&pki, "core-1", manager.port, &etcd.endpoint());
    let mut core = cmd.spawn();
    crate::support::wait_connected(&core);
    let mut runner = Autogate::new(["runner"])
        .name("runner")
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
        .spawn();
    runner.wait_for_line("INF runner starting", START);

    let mut took = Vec::new();
    for (proc, role, sig, phases) in [
        (
            &mut core,
            "core node",
            "INT",
            &[
                "departure notice",
                "resign",
                "manager session",
                "API requests",
                "background tasks",
            ][..],
        ),
        (
            &mut runner,
            "runner",
            "TERM",
            &["departure notice", "running jobs", "background tasks"][..],
        ),
        (
            &mut manager.proc,
            "manager",
            "INT",
            &["closing sessions", "connections", "replica lease"][..],
        ),
    ] {
        let sent = Instant::now();
        proc.signal(sig);
        let status = proc.wait_exit(Duration::from_secs(15));
        let wall = sent.elapsed();
        assert!(status.success(), "{role}: {status:?}\n{}", proc.dump());
        let (total, got) = stop_line(proc, role, &format!("SIG{sig}"));
        assert_eq!(
            got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            phases,
            "{role}"
        );
        // The line's clock starts at the signal's arrival, after the test sent it.
        assert!(total <= wall.as_millis(), "{role}: {total} ms, {wall:?}");
        took.push(proc.logs().lines().last().unwrap_or_default().to_owned());
    }
    eprintln!("stop lines:\n{}", took.join("\n"));
}

#[test]
fn json_logs_when_asked() {
    let port = free_port();
    let mut proc = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_LOG_CONSOLE_JSON", "true")
        .spawn();
    let line = proc.wait_for_line("core node listening", Duration::from_secs(20));
    let v: Value = serde_json::from_str(&line.text).expect("a JSON log line");
    assert_eq!(v["level"], "info");
    assert!(v["time"].as_str().expect("time").ends_with('Z'));
    proc.signal("TERM");
    proc.wait_exit(Duration::from_secs(5));
}

#[test]
fn log_file_written_when_enabled() {
    let port = free_port();
    let proc = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_LOG_FILE_ENABLED", "true");
    let dir = proc.home().join("logs");
    let mut proc = proc
        .env("GATEWAY_LOG_SERVER_DIR", dir.display().to_string())
        .spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(20));
    proc.signal("TERM");
    proc.wait_exit(Duration::from_secs(5));
    let text = std::fs::read_to_string(dir.join("gateway.log")).expect("gateway.log");
    assert!(text.contains("INF core node listening"), "{text}");
    assert!(text.contains("INF received shutdown signal"), "{text}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .output(Duration::from_secs(20));
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
}

/// The port is bound before the first user is created: a start that cannot bind prints no
/// one-time password (it would be lost) and creates no user, so the next start prints it.
#[test]
fn a_failed_bind_creates_no_admin_and_the_next_start_prints_its_password() {
    let work = tempfile::tempdir().expect("tempdir");
    let work_dir = work.path().join("work").display().to_string();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_APPLICATION_WORKING_DIR", &work_dir)
        .output(Duration::from_secs(20));
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !printed.contains("CREATED TEMPORARY ADMIN") && !printed.contains("password: "),
        "a start that could not bind printed a password:\n{printed}"
    );
    drop(holder);

    let port = free_port();
    let node = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_APPLICATION_WORKING_DIR", &work_dir)
        .name("server")
        .spawn();
    autogate_testkit::auth::temporary_password(&node, Duration::from_secs(20));
}

#[test]
fn server_on_etcd_store_reports_it_and_readiness_follows_etcd() {
    let mut etcd = autogate_testkit::etcd::EtcdServer::start();
    let port = free_port();
    let mut proc = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_STORE_ETCD_REQUEST_TIMEOUT", "1s")
        .name("server")
        .spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(20));
    let addr = format!("127.0.0.1:{port}");
    let (status, body) = http_get(&addr, "/api/v1/health").expect("health");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["store"], "etcd");
    assert_eq!(http_get(&addr, "/readyz").expect("readyz").0, 200);

    etcd.stop();
    poll_until("readyz to report 503", Duration::from_secs(10), || {
        http_get(&addr, "/readyz").ok().filter(|(s, _)| *s == 503)
    });
    etcd.restart();
    poll_until("readyz to recover", Duration::from_secs(20), || {
        http_get(&addr, "/readyz").ok().filter(|(s, _)| *s == 200)
    });
    proc.signal("TERM");
    assert!(proc.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn unreachable_etcd_at_start_is_a_clear_error() {
    let dead = free_port();
    let out = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", free_port().to_string())
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", format!("127.0.0.1:{dead}"))
        .env("GATEWAY_STORE_ETCD_DIAL_TIMEOUT", "500ms")
        .output(Duration::from_secs(20));
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{dead}")),
        "{}",
        out.stderr
    );
}

/// `[store] etcd_use_tls`, `etcd_client_cert_auth` and the three file keys reach the store: a
/// core node works against an etcd that demands mutual TLS, and without its client
/// certificate it is refused with an error naming the endpoint.
#[test]
fn server_on_mutual_tls_etcd() {
    let pki = autogate_testkit::certs::TestPki::new();
    let etcd = autogate_testkit::etcd::EtcdServer::start_tls(&pki, true);
    let port = free_port();
    let base = |cmd: Autogate| {
        cmd.env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
            .env("GATEWAY_STORE_ETCD_USE_TLS", "true")
            .env("GATEWAY_STORE_ETCD_DIAL_TIMEOUT", "2s")
            .env(
                "GATEWAY_STORE_ETCD_CA_CERTIFICATE_FILE",
                pki.ca_cert.display().to_string(),
            )
    };
    let mut proc = base(Autogate::new(["server"]))
        .env("GATEWAY_STORE_ETCD_CLIENT_CERT_AUTH", "true")
        .env(
            "GATEWAY_STORE_ETCD_CERTIFICATE_FILE",
            pki.client_cert.display().to_string(),
        )
        .env(
            "GATEWAY_STORE_ETCD_PRIVATE_KEY_FILE",
            pki.client_key.display().to_string(),
        )
        .spawn();
    proc.wait_for_line("core node listening", Duration::from_secs(20));
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(http_get(&addr, "/readyz").expect("readyz").0, 200);
    proc.signal("TERM");
    assert!(proc.wait_exit(Duration::from_secs(5)).success());

    let out = base(Autogate::new(["server"])).output(Duration::from_secs(30));
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains(&etcd.endpoint()), "{}", out.stderr);
}
