//! Shared pieces of the manager's black-box tests: certificates minted per test, a real
//! `autogate manager` process, the admin CLI and REST client, and a scripted gateway that
//! speaks the link protocol over real mutual TLS (tokio-rustls + tokio-tungstenite).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autogate_manager::AdminClient;
use autogate_testkit::{free_port, Autogate, Output, Process};
use autogate_tls::{Ca, CertKind, Issued, Roots, Validity};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use super::eventually;

pub const START: Duration = Duration::from_secs(30);
pub const STEP: Duration = Duration::from_secs(10);

/// A CA and node certificates written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("manager test CA", Validity::days(2)).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        Pki { dir, ca }
    }

    /// A CA-issued node certificate, also written as `<name>.pem` / `<name>-key.pem`.
    pub fn node(&self, name: &str) -> Issued {
        let n = self
            .ca
            .issue(CertKind::Node, name, &[], Validity::days(1))
            .expect("node cert");
        self.write(name, &n);
        n
    }

    pub fn write(&self, name: &str, n: &Issued) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&p, &n.cert_pem).expect("write");
        std::fs::write(self.dir.path().join(format!("{name}-key.pem")), &n.key_pem).expect("write");
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A self-signed node certificate (what the manager pins when a cluster has no CA).
pub fn self_signed(name: &str) -> Issued {
    autogate_tls::self_signed(CertKind::Node, name, &[], Validity::days(1)).expect("self-signed")
}

/// A node certificate whose validity ended yesterday.
pub fn expired(pki: &Pki, name: &str) -> Issued {
    pki.ca
        .issue(CertKind::Node, name, &[], Validity::expired())
        .expect("expired cert")
}

pub fn fingerprint(n: &Issued) -> String {
    autogate_tls::fingerprint_sha256(&n.cert_der().expect("der"))
}

/// A running manager with its own data directory (kept across restarts by the test).
pub struct Manager {
    pub proc: Process,
    pub port: u16,
    pub data: PathBuf,
}

pub fn manager_cmd(port: u16, data: &Path) -> Autogate {
    Autogate::new(["manager"])
        .name("manager")
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string())
}

impl Manager {
    /// Starts a manager with defaults (minted certificate, generated token) in `data`.
    pub fn start(data: &Path) -> Manager {
        Self::start_with(free_port(), data, |c| c)
    }

    pub fn start_with(port: u16, data: &Path, f: impl FnOnce(Autogate) -> Autogate) -> Manager {
        let proc = f(manager_cmd(port, data)).spawn();
        proc.wait_for_line("manager listening on", START);
        Manager {
            proc,
            port,
            data: data.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    /// The manager's minted certificate: what clients trust.
    pub fn ca(&self) -> PathBuf {
        self.data.join("manager.pem")
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&self.url(), &self.token(), Some(&self.ca())).expect("admin client")
    }

    /// `autogate manager cluster <args…>` with explicit --url/--ca/--token-file.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Autogate::new(["manager", "cluster"]);
        for a in args {
            cmd = cmd.arg(*a);
        }
        cmd.arg("--url")
            .arg(self.url())
            .arg("--ca")
            .arg(self.ca().display().to_string())
            .arg("--token-file")
            .arg(self.data.join("admin.token").display().to_string())
            .output(START)
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.proc.pid())
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Registers `id` over REST with these certificates.
pub async fn register(admin: &AdminClient, id: &str, state: &str, certs: &[&Issued]) -> Value {
    let pems: Vec<String> = certs.iter().map(|c| c.cert_pem.clone()).collect();
    admin
        .create(id, None, state, &pems)
        .await
        .unwrap_or_else(|e| panic!("register {id}: {e}"))
}

/// The TLS client side of a gateway: trusts the manager's certificate, presents `identity`.
pub async fn tls_connect(
    port: u16,
    ca: &Path,
    identity: Option<&Issued>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let id = identity.map(|n| {
        (
            autogate_tls::parse_pem_certs(&n.cert_pem).expect("cert"),
            autogate_tls::parse_pem_key(&n.key_pem).expect("key"),
        )
    });
    let config = autogate_tls::client_config(Roots::File(ca.to_path_buf()), id, false)
        .expect("client config");
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = autogate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1")
        .expect("server name")
        .to_owned();
    TlsConnector::from(config).connect(name, tcp).await
}

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A scripted gateway: one WebSocket connection, frames sent and read one by one.
pub struct Gw {
    pub ws: Ws,
}

/// How a connection attempt ended before a WebSocket existed.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP or TLS failed (including an alert sent by the server about our certificate).
    Tls(String),
    /// The upgrade was refused with this HTTP status and body.
    Http(u16, String),
    /// Something else.
    Other(String),
}

impl Gw {
    pub async fn connect(m: &Manager, identity: Option<&Issued>) -> Result<Gw, ConnectError> {
        let tls = tls_connect(m.port, &m.ca(), identity)
            .await
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let url = format!("wss://127.0.0.1:{}/ws", m.port);
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        match tokio_tungstenite::client_async_with_config(url, tls, Some(config)).await {
            Ok((ws, _)) => Ok(Gw { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ConnectError::Http(resp.status().as_u16(), body))
            }
            Err(tokio_tungstenite::tungstenite::Error::Io(e)) => {
                Err(ConnectError::Tls(e.to_string()))
            }
            Err(tokio_tungstenite::tungstenite::Error::Tls(e)) => {
                Err(ConnectError::Tls(e.to_string()))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// The next frame that is not a ping/pong, or `None` when the connection ended.
    pub async fn next(&mut self) -> Option<Message> {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no frame from the manager within {STEP:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(m))) => return Some(m),
            }
        }
    }

    /// The next text frame as JSON; panics on anything else.
    pub async fn recv_json(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("JSON frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Sends `hello` and returns the manager's response.
    pub async fn hello(&mut self, cluster: &str, node: &str, term: Option<u64>) -> Value {
        self.hello_with_nodes(cluster, node, term, json!([])).await
    }

    pub async fn hello_with_nodes(
        &mut self,
        cluster: &str,
        node: &str,
        term: Option<u64>,
        nodes: Value,
    ) -> Value {
        self.send_json(&json!({
            "jsonrpc": "2.0", "id": 0, "method": "hello",
            "params": {"cluster_id": cluster, "node_id": node, "term": term,
                       "version": "test", "nodes": nodes}
        }))
        .await;
        self.recv_json().await
    }
}

/// Connects and says hello; panics unless accepted.
pub async fn connected(
    m: &Manager,
    cert: &Issued,
    cluster: &str,
    node: &str,
    term: Option<u64>,
) -> Gw {
    let mut gw = Gw::connect(m, Some(cert)).await.expect("connect");
    let r = gw.hello(cluster, node, term).await;
    assert_eq!(r["result"]["accepted"], true, "hello refused: {r}");
    gw
}

/// What a [`Responder`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub methods: Vec<String>,
    pub closed: Option<(u16, String, Instant)>,
}

/// A gateway session answering requests in the background like a core node would: `ping`
/// echoes its params, `service.run` answers per `run`, other methods get −32601.
pub struct Responder {
    pub seen: Arc<Mutex<Seen>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// How the responder answers `service.run`.
#[derive(Debug, Clone)]
pub enum RunAnswer {
    /// `{"stdout": "<name> ran", "inputs": …}`.
    Echo,
    /// Error −32601 "method not available" (a gateway without services).
    NotAvailable,
    /// Never answers.
    Silent,
}

impl Responder {
    pub fn spawn(gw: Gw, run: RunAnswer) -> Responder {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let mut ws = gw.ws;
        let task = tokio::spawn(async move {
            while let Some(msg) = ws.next().await {
                let text = match msg {
                    Ok(Message::Text(t)) => t,
                    Ok(Message::Close(f)) => {
                        let (code, reason) = f
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        s.lock().unwrap().closed = Some((code, reason, Instant::now()));
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let v: Value = serde_json::from_str(text.as_str()).expect("manager sends JSON");
                let Some(method) = v["method"].as_str() else {
                    continue;
                };
                s.lock().unwrap().methods.push(method.to_owned());
                let id = v["id"].clone();
                let reply = match (method, &run) {
                    ("ping", _) => json!({"jsonrpc": "2.0", "id": id, "result": v["params"]}),
                    ("service.run", RunAnswer::Echo) => json!({"jsonrpc": "2.0", "id": id,
                        "result": {"stdout": format!("{} ran", v["params"]["name"].as_str().unwrap_or("")),
                                   "inputs": v["params"]["inputs"], "return_code": 0}}),
                    ("service.run", RunAnswer::Silent) => continue,
                    _ => json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": "method not available"}}),
                };
                if ws
                    .send(Message::Text(reply.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if s.lock().unwrap().closed.is_none() {
                s.lock().unwrap().closed = Some((1006, "connection ended".into(), Instant::now()));
            }
        });
        Responder { seen, task }
    }

    pub fn closed(&self) -> Option<(u16, String, Instant)> {
        self.seen.lock().unwrap().closed.clone()
    }

    pub fn methods(&self) -> Vec<String> {
        self.seen.lock().unwrap().methods.clone()
    }

    /// Waits (asynchronously) until the session was closed by the manager.
    pub async fn wait_closed(&self, within: Duration) -> (u16, String, Instant) {
        let end = Instant::now() + within;
        loop {
            if let Some(c) = self.closed() {
                return c;
            }
            assert!(Instant::now() < end, "session not closed within {within:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Asserts no two sessions of a history overlap: sorted by `connected_at`, each one ended no
/// later than the next began, and at most one is live (the newest).
pub fn assert_no_overlap(sessions: &Value) {
    let mut list: Vec<&Value> = sessions.as_array().expect("array").iter().collect();
    list.sort_by(|a, b| {
        a["connected_at"]
            .as_str()
            .unwrap()
            .cmp(b["connected_at"].as_str().unwrap())
    });
    for pair in list.windows(2) {
        let ended = pair[0]["disconnected_at"]
            .as_str()
            .unwrap_or_else(|| panic!("an older session is still live: {sessions:#}"));
        let next = pair[1]["connected_at"].as_str().unwrap();
        assert!(
            ended <= next,
            "overlapping sessions: {:#} and {:#}",
            pair[0],
            pair[1]
        );
    }
}
