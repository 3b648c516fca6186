//! Building blocks of end-to-end scenarios with real processes on every side: a PKI with the
//! manager's certificate and one key pair per core node, a running `autogate manager` with its
//! admin CLI, and core nodes configured to connect to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_tls::{Ca, CertKind, Validity};
use serde_json::Value;

use crate::process::{free_port, http_get, poll_until, Autogate, Output, Process};

/// Deadline for processes to come up.
pub const START: Duration = Duration::from_secs(30);

/// A CA, the manager's server certificate (127.0.0.1/localhost) and node key pairs.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    /// A CA, `manager.pem`, and `<node>.pem`/`<node>-key.pem` for each node name.
    pub fn new(nodes: &[&str]) -> Pki {
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
        let pki = Pki { dir, ca };
        for node in nodes {
            pki.add_node(node);
        }
        pki
    }

    /// Issue another node key pair.
    pub fn add_node(&self, node: &str) {
        let n = self
            .ca
            .issue(CertKind::Node, node, &[], Validity::days(1))
            .expect("node cert");
        std::fs::write(self.dir.path().join(format!("{node}.pem")), n.cert_pem).expect("write");
        std::fs::write(self.dir.path().join(format!("{node}-key.pem")), n.key_pem).expect("write");
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A running `autogate manager`.
#[derive(Debug)]
pub struct Manager {
    pub proc: Process,
    pub port: u16,
    pub data: PathBuf,
}

impl Manager {
    /// Start a manager on `port` with its state in `data` and wait until it accepts.
    pub fn start(pki: &Pki, port: u16, data: &Path) -> Manager {
        let proc = Autogate::new(["manager"])
            .name("manager")
            .env("GATEWAY_MANAGER_PORT", port.to_string())
            .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string())
            .env("GATEWAY_MANAGER_CERTIFICATE_FILE", pki.path("manager.pem"))
            .env(
                "GATEWAY_MANAGER_PRIVATE_KEY_FILE",
                pki.path("manager-key.pem"),
            )
            .spawn();
        let token = data.join("admin.token");
        poll_until("manager admin token", START, || {
            token.exists().then_some(())
        });
        poll_until("manager to accept connections", START, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Manager {
            proc,
            port,
            data: data.to_path_buf(),
        }
    }

    /// `autogate manager cluster <args…>` against this manager.
    pub fn cli(&self, pki: &Pki, args: &[&str]) -> Output {
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

    /// `autogate manager <args…>` against this manager (any admin command: `cluster …`,
    /// `service run …`).
    pub fn admin_cli(&self, pki: &Pki, args: &[&str]) -> Output {
        let mut cmd = Autogate::new(["manager"]);
        for a in args {
            cmd = cmd.arg(*a);
        }
        cmd.arg("--url")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--token-file")
            .arg(self.token_path().display().to_string())
            .output(START)
    }

    /// The admin token file.
    pub fn token_path(&self) -> PathBuf {
        self.data.join("admin.token")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Register `cluster_id` with the given nodes' certificates.
    pub fn register(&self, pki: &Pki, cluster_id: &str, nodes: &[&str]) {
        let certs: Vec<String> = nodes
            .iter()
            .map(|n| pki.path(&format!("{n}.pem")))
            .collect();
        let mut args = vec!["add", cluster_id, "--state", "enabled"];
        for c in &certs {
            args.push("--cert");
            args.push(c);
        }
        let out = self.cli(pki, &args);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
    }

    /// `cluster show <id> --raw`.
    pub fn show(&self, pki: &Pki, cluster_id: &str) -> Value {
        let out = self.cli(pki, &["show", cluster_id, "--raw"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        serde_json::from_str(&out.stdout).expect("show --raw is JSON")
    }

    /// `cluster sessions <id> --raw`, newest first.
    pub fn sessions(&self, pki: &Pki, cluster_id: &str) -> Vec<Value> {
        let out = self.cli(pki, &["sessions", cluster_id, "--raw"]);
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

/// A core node configured to connect to the manager on `manager_port` with `<node>.pem`.
/// Returns the command (to add settings) and its API port.
pub fn core_node(pki: &Pki, node: &str, manager_port: u16) -> (Autogate, u16) {
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .name(node)
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_CONNECT_HOSTS", format!("127.0.0.1:{manager_port}"))
        .env(
            "GATEWAY_CONNECT_CERTIFICATE_FILE",
            pki.path(&format!("{node}.pem")),
        )
        .env(
            "GATEWAY_CONNECT_PRIVATE_KEY_FILE",
            pki.path(&format!("{node}-key.pem")),
        )
        .env("GATEWAY_CONNECT_RECONNECT_MAX_BACKOFF", "1s")
        .env(
            "GATEWAY_APPLICATION_CA_CERTIFICATE_FILE",
            pki.path("ca.pem"),
        );
    (cmd, port)
}

/// The node id a core node reports on `/api/v1/health`.
pub fn node_id(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    poll_until("node health", START, || {
        let (status, body) = http_get(&addr, "/api/v1/health").ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["node_id"].as_str().map(str::to_owned)
    })
}

/// Creates, through the API of the core node at `addr` logged in with `key`: the `sh`
/// executable object, a one-command decorator, and the services `shell` (no retries) and
/// `shell-retry` (one retry), each running `sh -c <cmd>`. Panics unless each is created.
pub fn seed_shell(addr: &str, key: &str) {
    let posts = [
        (
            "/api/v1/executable-objects",
            serde_json::json!({"name": "sh", "exec-command": "/bin/sh"}),
        ),
        (
            "/api/v1/decorators",
            serde_json::json!({"name": "one-command", "schema": {
                "$id": "root", "type": "object",
                "properties": {"cmd": {"type": "string"}},
                "required": ["cmd"], "additionalProperties": false}}),
        ),
        (
            "/api/v1/services",
            serde_json::json!({"name": "shell", "type": "executable", "executable-object": "sh",
                   "decorator": "one-command", "arg-format": "-c {{.Value}}"}),
        ),
        (
            "/api/v1/services",
            serde_json::json!({"name": "shell-retry", "type": "executable", "executable-object": "sh",
                   "decorator": "one-command", "arg-format": "-c {{.Value}}", "retries": 1}),
        ),
    ];
    for (path, body) in posts {
        let text = body.to_string();
        let (status, v) = crate::auth::request(
            addr,
            "POST",
            path,
            Some(key),
            Some(("application/json", text.as_bytes())),
        )
        .expect("core node reachable");
        assert_eq!(status, 201, "POST {path}: {v}");
    }
}
