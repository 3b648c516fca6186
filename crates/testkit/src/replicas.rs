//! Several `autogate manager` processes forming one manager on a shared etcd ("replicas"): the
//! same etcd endpoints and key prefix, one admin token file, one server certificate (from
//! [`Pki`], so a gateway trusts every replica with one CA file), each with its own port and data
//! directory. The replicas' lease TTL is 2 s, so that a killed replica's claims end quickly and
//! fail-over tests stay short.
//!
//! Replicas can be killed (SIGKILL), stopped (SIGTERM) and started again on the same port and
//! data; [`ManagerReplicas::spare`] builds the command of one more replica with the same
//! settings, which a test changes to see a wrong one refused. Requests to a replica's REST API
//! go over HTTPS with the admin token ([`ManagerReplicas::api`]); the admin CLI is run against
//! one replica with [`ManagerReplicas::cli`]. Every process is killed on drop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::process::{free_port, poll_until, Autogate, Output, Process};
use crate::scenario::{Pki, START};

/// The manager's default key prefix in etcd.
pub const DEFAULT_PREFIX: &str = "/autogate-manager";

/// The replicas' lease TTL in these tests: how long a killed replica's claims may outlive it.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Replica {
    port: u16,
    data: PathBuf,
    work: PathBuf,
    proc: Option<Process>,
}

/// N manager replicas on one etcd.
#[derive(Debug)]
pub struct ManagerReplicas {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    token_file: PathBuf,
    endpoints: Vec<String>,
    prefix: String,
    settings: Vec<(String, String)>,
    replicas: Vec<Replica>,
    spares: usize,
}

/// 32 random bytes as hex, from the kernel: a token no other test run shares.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom for an admin token: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a new admin token to `path`, mode 0600 as the manager expects of a secret.
pub fn write_token_file(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let token = random_token();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(format!("{token}\n").as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    token
}

impl ManagerReplicas {
    /// Starts `n` replicas on the etcd at `endpoints` under [`DEFAULT_PREFIX`] and waits until
    /// each accepts connections.
    pub fn start(n: usize, endpoints: &[String], pki: &Pki) -> ManagerReplicas {
        Self::start_with(n, endpoints, pki, DEFAULT_PREFIX, &[])
    }

    /// Like [`start`](Self::start) with another key prefix and extra settings (`GATEWAY_*`
    /// variables) given to every replica.
    pub fn start_with(
        n: usize,
        endpoints: &[String],
        pki: &Pki,
        prefix: &str,
        settings: &[(&str, &str)],
    ) -> ManagerReplicas {
        let dir = tempfile::Builder::new()
            .prefix("autogate-replicas-")
            .tempdir()
            .expect("temp dir for the replicas");
        let token_file = dir.path().join("admin.token");
        write_token_file(&token_file);
        let mut set = ManagerReplicas {
            ca: PathBuf::from(pki.path("ca.pem")),
            cert: PathBuf::from(pki.path("manager.pem")),
            key: PathBuf::from(pki.path("manager-key.pem")),
            token_file,
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_owned(),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            replicas: Vec::new(),
            spares: 0,
            dir,
        };
        for i in 0..n {
            let base = set.dir.path().join(format!("replica-{}", i + 1));
            set.replicas.push(Replica {
                port: free_port(),
                data: base.join("data"),
                work: base.join("work"),
                proc: None,
            });
        }
        // All at once, then wait: they start in parallel, as replicas of a real deployment do.
        for i in 0..n {
            set.spawn(i);
        }
        for i in 0..n {
            set.wait_accepting(i);
        }
        set
    }

    /// The command of a replica on `port` with its state in `base`, with every shared setting.
    fn command(&self, name: &str, port: u16, data: &Path, work: &Path) -> Autogate {
        let mut cmd = Autogate::new(["manager"])
            .name(name)
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
            .env("GATEWAY_MANAGER_PORT", port.to_string())
            .env("GATEWAY_MANAGER_DATA_DIR", data.display().to_string())
            .env(
                "GATEWAY_MANAGER_CERTIFICATE_FILE",
                self.cert.display().to_string(),
            )
            .env(
                "GATEWAY_MANAGER_PRIVATE_KEY_FILE",
                self.key.display().to_string(),
            )
            .env(
                "GATEWAY_MANAGER_ADMIN_TOKEN_FILE",
                self.token_file.display().to_string(),
            )
            .env("GATEWAY_MANAGER_STORE_BACKEND", "etcd")
            // A host list is space-separated, like `[store] etcd_hosts`.
            .env("GATEWAY_MANAGER_STORE_ETCD_HOSTS", self.endpoints.join(" "))
            .env("GATEWAY_MANAGER_STORE_ETCD_PREFIX", self.prefix.clone())
            .env(
                "GATEWAY_MANAGER_REPLICA_LEASE_TTL",
                format!("{}s", LEASE_TTL.as_secs()),
            );
        for (k, v) in &self.settings {
            cmd = cmd.env(k, v.clone());
        }
        cmd
    }

    fn spawn(&mut self, i: usize) {
        let r = &self.replicas[i];
        let proc = self
            .command(&format!("replica-{}", i + 1), r.port, &r.data, &r.work)
            .spawn();
        self.replicas[i].proc = Some(proc);
    }

    /// Waits until replica `i` accepts TCP connections; panics with its output if it exits
    /// first or does not within [`START`].
    fn wait_accepting(&mut self, i: usize) {
        let port = self.replicas[i].port;
        let proc = self.replicas[i]
            .proc
            .as_mut()
            .unwrap_or_else(|| panic!("replica {} is not running", i + 1));
        poll_until(
            &format!("replica {} to accept connections on port {port}", i + 1),
            START,
            || {
                if !proc.is_running() {
                    panic!("replica {} exited while starting:\n{}", i + 1, proc.dump());
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            },
        );
    }

    /// How many replicas this set has (running or not).
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether the set has no replicas.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The command of one more replica with the same settings, its own free port and data
    /// directory (returned with it); a test changes a setting and runs it to see it refused.
    pub fn spare(&mut self) -> (Autogate, u16) {
        self.spares += 1;
        let base = self.dir.path().join(format!("spare-{}", self.spares));
        let port = free_port();
        let cmd = self.command(
            &format!("spare-{}", self.spares),
            port,
            &base.join("data"),
            &base.join("work"),
        );
        (cmd, port)
    }

    /// SIGKILL of replica `i` (a crash), reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.replicas[i].proc.take() {
            p.kill();
            // Kept until the next start so that its log can still be read.
            self.replicas[i].proc = Some(p);
        }
    }

    /// SIGTERM of replica `i`; waits for its exit and returns whether it was clean (0).
    pub fn stop(&mut self, i: usize) -> bool {
        let p = self.replicas[i]
            .proc
            .as_mut()
            .unwrap_or_else(|| panic!("replica {} was never started", i + 1));
        if !p.is_running() {
            return false;
        }
        p.signal("TERM");
        p.wait_exit(START).success()
    }

    /// Starts replica `i` again on its port and data (killing it first if it still runs) and
    /// waits until it accepts.
    pub fn restart(&mut self, i: usize) {
        if let Some(mut p) = self.replicas[i].proc.take() {
            if p.is_running() {
                p.kill();
            }
        }
        self.spawn(i);
        self.wait_accepting(i);
    }

    /// Whether replica `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.replicas[i]
            .proc
            .as_mut()
            .is_some_and(Process::is_running)
    }

    /// The process of replica `i` (its log, its pid), also after it was killed.
    pub fn process(&self, i: usize) -> &Process {
        self.replicas[i]
            .proc
            .as_ref()
            .unwrap_or_else(|| panic!("replica {} was never started", i + 1))
    }

    /// The port of replica `i` (HTTPS API, web page and `wss://…/ws`).
    pub fn port(&self, i: usize) -> u16 {
        self.replicas[i].port
    }

    /// `127.0.0.1:<port>` of replica `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.port(i))
    }

    /// `https://127.0.0.1:<port>` of replica `i`.
    pub fn url(&self, i: usize) -> String {
        format!("https://{}", self.addr(i))
    }

    /// Which replica listens on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.replicas.iter().position(|r| r.port == port)
    }

    /// Every replica's address, space-separated in order: what core nodes take as
    /// `GATEWAY_CONNECT_HOSTS` (they dial the first, then the next on failure).
    pub fn connect_hosts(&self) -> String {
        (0..self.len())
            .map(|i| self.addr(i))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The shared admin token file.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The shared admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.token_file.display()))
            .trim()
            .to_owned()
    }

    /// The CA file that verifies every replica's certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The replicas' etcd key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd endpoints the replicas use.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A directory of the set's own, for files a test writes (another token, …).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `autogate manager <args…>` against replica `i`, with its URL, the CA and the admin token.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Autogate::new(["manager"]);
        for a in args {
            cmd = cmd.arg(*a);
        }
        cmd.arg("--url")
            .arg(self.url(i))
            .arg("--ca")
            .arg(self.ca.display().to_string())
            .arg("--token-file")
            .arg(self.token_file.display().to_string())
            .output(START)
    }

    /// A handle on every replica's REST API, to move into caller threads while the test
    /// kills and restarts replicas.
    pub fn api_client(&self) -> ReplicaApi {
        ReplicaApi {
            urls: (0..self.len()).map(|i| self.url(i)).collect(),
            token: self.token(),
            ca: self.ca.clone(),
            client: std::sync::Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// One request to replica `i`'s REST API with the admin token: see [`ReplicaApi::call`].
    pub fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        self.api_client()
            .call(i, method, path, body, None, Duration::from_secs(60))
    }

    /// `GET path` on replica `i` when it answers 200, as JSON; `None` otherwise (polling callers
    /// try again).
    pub fn get(&self, i: usize, path: &str) -> Option<Value> {
        match self.api(i, "GET", path, None) {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// Every replica's output, labelled (for failure messages).
    pub fn dump(&self) -> String {
        self.replicas
            .iter()
            .filter_map(|r| r.proc.as_ref())
            .map(Process::dump)
            .collect()
    }
}

/// The replicas' REST API with the admin token, cheap to clone into caller threads.
#[derive(Debug, Clone)]
pub struct ReplicaApi {
    urls: Vec<String>,
    token: String,
    ca: PathBuf,
    client: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl ReplicaApi {
    /// One request to replica `i` with an optional `Idempotency-Key` and a deadline for the
    /// whole exchange: (status, body as JSON, or a JSON string when it is not JSON), or the
    /// client's error (refused, reset, timed out).
    pub fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self
            .client()?
            .request(method, format!("{}{path}", self.urls[i]))
            .header(reqwest::header::CONNECTION, "close")
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let (status, text) = crate::http::block_on(async move {
            let resp = req.send().await.map_err(|e| crate::http::error_text(&e))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| crate::http::error_text(&e))?;
            Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
        })?;
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    /// An HTTPS client trusting the replicas' CA, built on first use.
    fn client(&self) -> Result<reqwest::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let tls =
            autogate_tls::client_config(autogate_tls::Roots::File(self.ca.clone()), None, false)
                .map_err(|e| format!("TLS client for {}: {e}", self.ca.display()))?;
        let built =
            crate::http::build(crate::http::builder().use_preconfigured_tls((*tls).clone()))
                .map_err(|e| crate::http::error_text(&e))?;
        Ok(self.client.get_or_init(|| built).clone())
    }
}
