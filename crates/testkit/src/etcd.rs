//! Real etcd servers for tests: a single member ([`EtcdServer`], plain or TLS) or a 3-member
//! cluster ([`EtcdCluster`]) on free loopback ports, each with its data directory and log file in
//! a temporary directory. The ports come from [`crate::free_port`]: a member must be told its
//! ports and its peers' URLs before it starts, so it cannot bind port 0 and report back.
//!
//! Starting waits (polling with a deadline, no fixed sleeps) until every member reports healthy on
//! its plain-HTTP metrics port, which also works when the client port needs TLS. Members can be
//! killed, restarted, paused (SIGSTOP) and resumed to simulate crashes and hangs. Every process
//! is killed on drop, also when a test panics; a panicking test also gets the members' logs
//! printed, since the temp dir vanishes with it.
//!
//! The binary is `$ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::certs::TestPki;
use crate::process::free_port;

/// How long a member may take to become healthy.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// etcd flags autogate relies on, in production as in tests (the one place they are written down):
///
/// * `--auto-compaction-mode=revision --auto-compaction-retention=1000`: keep the last 1000
///   revisions, so a watcher that reconnects within that window resumes without a gap and older
///   history cannot grow without bound (a watcher further behind gets `Compacted` and re-reads);
/// * `--quota-backend-bytes=2147483648` (2 GiB, etcd's default, stated explicitly): the database
///   size at which etcd raises the NOSPACE alarm and refuses writes;
/// * `--listen-metrics-urls`: a plain-HTTP `/health` endpoint for readiness probes, also when the
///   client port requires TLS (added per member by [`EtcdCluster`]).
pub const AUTOGATE_ETCD_FLAGS: &[&str] = &[
    "--auto-compaction-mode=revision",
    "--auto-compaction-retention=1000",
    "--quota-backend-bytes=2147483648",
];

/// Raft timing for tests only: a lost leader is replaced in about half a second instead of a few
/// seconds, so fail-over tests stay short. (The minimum lease TTL etcd accepts stays at 1 s.)
const TEST_TIMING_FLAGS: &[&str] = &["--heartbeat-interval=50", "--election-timeout=500"];

/// Finds the etcd binary or panics with the way to install it.
pub fn etcd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let system = PathBuf::from("/usr/bin/etcd");
    if system.exists() {
        return system;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("etcd"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("etcd not installed: run `make deps`"))
}

/// One GET of etcd's plain-HTTP metrics port: the body, `None` on any failure (the caller polls).
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = format!("127.0.0.1:{port}");
    crate::http::plain_request(&addr, "GET", path, None, None, Duration::from_millis(500))
        .ok()
        .map(|(_, body)| body)
}

#[derive(Clone, Debug)]
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    mutual: bool,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster of one or more members on loopback.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    tls: Option<Tls>,
    initial_cluster: String,
    token: String,
}

impl fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("dir", &self.dir.path())
            .field("endpoints", &self.endpoints())
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|t| if t.mutual { "mutual" } else { "server" }),
            )
            .finish()
    }
}

impl EtcdCluster {
    /// Starts `size` members and waits until all are healthy (a leader is elected).
    pub fn start(size: usize) -> EtcdCluster {
        Self::launch(size, None)
    }

    fn launch(size: usize, tls: Option<Tls>) -> EtcdCluster {
        assert!(size > 0, "an etcd cluster needs at least one member");
        let bin = etcd_bin();
        assert!(
            bin.exists(),
            "etcd not installed: run `make deps` (looked for {})",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("autogate-etcd-")
            .tempdir()
            .expect("cannot create etcd temp dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "autogate-test-{}-{}",
            std::process::id(),
            members[0].client_port
        );
        let mut cluster = EtcdCluster {
            dir,
            members,
            tls,
            initial_cluster,
            token,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn(&mut self, i: usize) {
        let scheme = self.scheme();
        let m = &self.members[i];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                m.metrics_port
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .args(AUTOGATE_ETCD_FLAGS)
            .args(TEST_TIMING_FLAGS);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if tls.mutual {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", tls.ca.display()));
            }
        }
        // Append: a restarted member keeps its earlier log lines.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", m.log.display()));
        let log_err = log.try_clone().expect("cannot clone log file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_bin().display()));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(Child::try_wait) {
                panic!(
                    "etcd member {} exited with {status} while starting\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            if let Some(response) = http_get(self.members[i].metrics_port, "/health") {
                if response.contains("\"health\":\"true\"") {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd member {} not healthy within {START_DEADLINE:?}\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// Client endpoints as `127.0.0.1:port` (what `STORE_ETCD_HOSTS` takes), one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Client endpoint of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client URLs with scheme (`http://…` or `https://…`), as `etcdctl --endpoints` takes them.
    pub fn client_urls(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Process id of member `i`, if it is running.
    /// Data directory of member `i` (for tests that read what etcd keeps on disk).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on the same ports and data and waits until it is healthy (which
    /// needs a quorum of the cluster to be up).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Freezes member `i` (SIGSTOP): connections stay open but nothing answers, like a hung host.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Thaws a member frozen by [`pause`](Self::pause).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("etcd member {i} is not running"));
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {sig} {pid}: {e}"));
        assert!(status.success(), "kill {sig} {pid} failed: {status}");
    }

    /// Stops every member (SIGKILL). Also done on drop.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            // A paused process ignores nothing but SIGKILL anyway; resume is not needed.
            self.kill(i);
        }
    }

    /// The log file of member `i`.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// All members' logs, labelled.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            out.push_str(&format!(
                "----- etcd {} log ({}) -----\n{text}\n",
                m.name,
                m.log.display()
            ));
        }
        out
    }

    /// An `etcdctl` command aimed at this cluster (endpoints and, with TLS, the test PKI's files).
    pub fn etcdctl(&self) -> Command {
        let bin = etcd_bin().with_file_name("etcdctl");
        let mut cmd = Command::new(if bin.exists() {
            bin
        } else {
            PathBuf::from("etcdctl")
        });
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_urls().join(",")));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()));
            // The server certificate carries clientAuth too, so it doubles as etcdctl's identity.
            cmd.arg(format!("--cert={}", tls.cert.display()))
                .arg(format!("--key={}", tls.key.display()));
        }
        cmd
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A single-member etcd.
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdServer")
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl EtcdServer {
    /// Plain-text etcd, healthy when this returns.
    pub fn start() -> EtcdServer {
        EtcdServer {
            cluster: EtcdCluster::launch(1, None),
        }
    }

    /// etcd serving TLS with `pki`'s server certificate; with `mutual`, it also requires client
    /// certificates signed by `pki`'s CA.
    pub fn start_tls(pki: &TestPki, mutual: bool) -> EtcdServer {
        let tls = Tls {
            ca: pki.ca_cert.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            mutual,
        };
        EtcdServer {
            cluster: EtcdCluster::launch(1, Some(tls)),
        }
    }

    /// `["127.0.0.1:port"]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        self.cluster.endpoint(0)
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.cluster.client_urls()
    }

    /// The data directory (for tests that read what etcd keeps on disk).
    pub fn data_dir(&self) -> &Path {
        self.cluster.data_dir(0)
    }

    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid(0)
    }

    /// SIGKILL.
    pub fn stop(&mut self) {
        self.cluster.stop();
    }

    /// Starts again on the same port and data, waiting until healthy.
    pub fn restart(&mut self) {
        self.cluster.restart(0);
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        self.cluster.pause(0);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.cluster.resume(0);
    }

    pub fn logs(&self) -> String {
        self.cluster.logs()
    }

    pub fn etcdctl(&self) -> Command {
        self.cluster.etcdctl()
    }
}
