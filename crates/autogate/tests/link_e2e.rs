//! End-to-end tests of the commander link with real processes on both ends: `autogate manager`
//! and `autogate server`, mutual TLS with certificates minted in the test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autogate_testkit::{free_port, poll_until, Autogate, Process};
use autogate_tls::{Ca, CertKind, Validity};
use serde_json::Value;

const START: Duration = Duration::from_secs(30);

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test CA", Validity::days(1)).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        let mgr = ca
            .issue(
                CertKind::Server,
                "manager",
                &["127.0.0.1".to_owned(), "localhost".to_owned()],
                Validity::days(1),
            )
            .expect("manager cert");
        std::fs::write(dir.path().join("manager.pem"), mgr.cert_pem).expect("write");
        std::fs::write(dir.path().join("manager-key.pem"), mgr.key_pem).expect("write");
        for node in ["core-1", "core-2"] {
            let n = ca
                .issue(CertKind::Node, node, &[], Validity::days(1))
                .expect("node cert");
            std::fs::write(dir.path().join(format!("{node}.pem")), n.cert_pem).expect("write");
            std::fs::write(dir.path().join(format!("{node}-key.pem")), n.key_pem)
                .expect("write");
        }
        Pki { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

struct Manager {
    proc: Process,
    port: u16,
    data: PathBuf,
}

fn start_manager(pki: &Pki, port: u16, data: &Path) -> Manager {
    let proc = Autogate::new(["manager"])
        .name("manager")
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string())
        .env("GATEWAY_MANAGER_CERTIFICATE_FILE", pki.path("manager.pem"))
        .env("GATEWAY_MANAGER_PRIVATE_KEY_FILE", pki.path("manager-key.pem"))
        .spawn();
    let token = data.join("admin.token");
    poll_until("manager admin token", START, || token.exists().then_some(()));
    poll_until("manager to accept connections", START, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Manager {
        proc,
        port,
        data: data.to_path_buf(),
    }
}

impl Manager {
    fn cli(&self, pki: &Pki, args: &[&str]) -> autogate_testkit::Output {
        let mut cmd = Autogate::new(["manager", "cluster"]);
        for a in args {
            cmd = cmd.arg(*a);
        }
        cmd.arg("--url")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--token-file")
            .arg(self.data.join("admin.token").display().to_string())
            .output(START)
    }

    fn show(&self, pki: &Pki) -> Value {
        let out = self.cli(pki, &["show", "cluster_1", "--raw"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        serde_json::from_str(&out.stdout).expect("show --raw is JSON")
    }

    fn sessions(&self, pki: &Pki) -> Vec<Value> {
        let out = self.cli(pki, &["sessions", "cluster_1", "--raw"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).expect("sessions --raw is JSON");
        match v {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("sessions") {
                Some(Value::Array(a)) => a,
                other => panic!("unexpected sessions output: {other:?}"),
            },
            other => panic!("unexpected sessions output: {other}"),
        }
    }
}

fn register(m: &Manager, pki: &Pki) {
    let out = m.cli(
        pki,
        &[
            "add",
            "cluster_1",
            "--state",
            "enabled",
            "--cert",
            &pki.path("core-1.pem"),
            "--cert",
            &pki.path("core-2.pem"),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

fn start_core(pki: &Pki, node: &str, manager_port: u16) -> (Process, u16) {
    let port = free_port();
    let proc = Autogate::new(["server"])
        .name(node)
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_CONNECT_HOSTS", format!("127.0.0.1:{manager_port}"))
        .env("GATEWAY_CONNECT_CERTIFICATE_FILE", pki.path(&format!("{node}.pem")))
        .env(
            "GATEWAY_CONNECT_PRIVATE_KEY_FILE",
            pki.path(&format!("{node}-key.pem")),
        )
        .env("GATEWAY_CONNECT_RECONNECT_MAX_BACKOFF", "1s")
        .env("GATEWAY_APPLICATION_CA_CERTIFICATE_FILE", pki.path("ca.pem"))
        .spawn();
    (proc, port)
}

fn node_id(port: u16) -> String {
    let (_, body) = autogate_testkit::http_get(&format!("127.0.0.1:{port}"), "/api/v1/health")
        .expect("health");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["node_id"].as_str().expect("node id").to_owned()
}

#[test]
fn registered_node_connects_with_the_family_log_lines() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mport = free_port();
    let m = start_manager(&pki, mport, data.path());
    register(&m, &pki);
    let (core, port) = start_core(&pki, "core-1", mport);
    core.wait_for_line("connected to commander at", START);
    let logs = core.logs();
    let creating = format!(" INF creating connection to commander at '127.0.0.1:{mport}'");
    let attempting = format!(" INF attempting to connect to wss://127.0.0.1:{mport}/ws");
    let connected = format!(" INF connected to commander at 127.0.0.1:{mport}");
    let pos = |needle: &str| {
        logs.lines()
            .position(|l| l.ends_with(needle))
            .unwrap_or_else(|| panic!("no line ending with {needle:?} in:\n{logs}"))
    };
    assert!(pos(&creating) < pos(&attempting));
    assert!(pos(&attempting) < pos(&connected));

    let id = node_id(port);
    let v = poll_until("the manager to show the node connected", START, || {
        let v = m.show(&pki);
        (v["connected"] == true).then_some(v)
    });
    assert_eq!(v["active"]["node_id"], id.as_str(), "{v}");
    assert!(v["active"]["term"].is_null(), "no HA, no term: {v}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert!(
        nodes.iter().any(|n| n["node_id"] == id.as_str() && n["role"] == "active"),
        "{v}"
    );
    drop(m);
}

#[test]
fn manager_restart_gateway_reconnects_within_the_backoff_cap() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mport = free_port();
    let mut m = start_manager(&pki, mport, data.path());
    register(&m, &pki);
    let (core, _port) = start_core(&pki, "core-1", mport);
    core.wait_for_line("connected to commander at", START);
    let connected_before = core.logs().matches("INF connected to commander at").count();

    m.proc.kill();
    core.wait_for_line("lost", START);
    // While the manager is down every attempt is logged.
    poll_until("repeated attempts while the manager is down", START, || {
        (core
            .logs()
            .matches(&format!("attempting to connect to wss://127.0.0.1:{mport}/ws"))
            .count()
            >= 3)
            .then_some(())
    });
    let m2 = start_manager(&pki, mport, data.path());
    let back = Instant::now();
    poll_until("reconnection after the manager restarted", START, || {
        (core.logs().matches("INF connected to commander at").count() > connected_before)
            .then_some(())
    });
    let took = back.elapsed();
    // Cap 1 s (set above) plus the handshake; generous for a loaded CI machine.
    assert!(took < Duration::from_secs(5), "reconnected after {took:?}");
    drop(m2);
}

#[test]
fn second_non_ha_node_is_refused_and_sessions_never_overlap() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mport = free_port();
    let m = start_manager(&pki, mport, data.path());
    register(&m, &pki);
    let (first, p1) = start_core(&pki, "core-1", mport);
    first.wait_for_line("connected to commander at", START);
    let id1 = node_id(p1);
    let (second, _p2) = start_core(&pki, "core-2", mport);
    let expected =
        format!("there is already an active connection for gateway cluster: cluster_1 (node {id1})");
    second.wait_for_line(&expected, START);
    assert!(!second.logs().contains("INF connected to commander"));

    let sessions = m.sessions(&pki);
    let live: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["disconnected_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{sessions:?}");
    assert_eq!(live[0]["node_id"], id1.as_str());
}
