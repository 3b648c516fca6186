//! Spawn real `autogate` processes for black-box tests: a temp working dir and HOME per process,
//! a clean `GATEWAY_*` environment, every log line captured (and replayed on failure), waiting
//! for a log line or an HTTP condition with a deadline, signals, and kill-on-drop so a failing
//! test never leaves a daemon behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of the binary under test: Cargo sets `CARGO_BIN_EXE_autogate` for integration tests of
/// the `autogate` package; other crates' tests find it next to their own test executable.
pub fn autogate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AUTOGATE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_autogate") {
        return PathBuf::from(p);
    }
    // A binary next to ours (benchmarks in target/<profile>/), else target/<profile>/deps/<test>
    // → target/<profile>/autogate for tests of other crates.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable has a directory");
    let sibling = dir.join("autogate");
    if sibling.is_file() {
        return sibling;
    }
    dir.parent().unwrap_or(dir).join("autogate")
}

/// One line of captured output, with the instant it was read.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    pub stream: &'static str,
    pub text: String,
}

#[derive(Debug, Default)]
struct Captured {
    lines: Vec<LogLine>,
    closed: usize,
}

/// A builder for one `autogate` invocation.
#[derive(Debug)]
pub struct Autogate {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    home: TempDir,
    name: String,
}

impl Autogate {
    /// `autogate <args…>` with HOME and working dir in a fresh temp dir and no inherited
    /// `GATEWAY_*` variables.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let home = tempfile::Builder::new()
            .prefix("autogate-node-")
            .tempdir()
            .expect("temp dir");
        let mut env = BTreeMap::new();
        env.insert(
            "GATEWAY_APPLICATION_WORKING_DIR".to_owned(),
            home.path().join("work").display().to_string(),
        );
        Autogate {
            args: args.into_iter().map(Into::into).collect(),
            env,
            home,
            name: "autogate".to_owned(),
        }
    }

    /// A label used when replaying logs (e.g. "active", "standby").
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    pub fn unset_env(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The temp HOME of this process (also the parent of its working dir).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(autogate_bin());
        cmd.args(&self.args);
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", self.home.path());
        cmd.env("NO_COLOR", "1");
        cmd.envs(&self.env);
        cmd
    }

    /// Run to completion (CLI commands), with a deadline.
    pub fn output(self, deadline: Duration) -> Output {
        let mut proc = self.spawn();
        let status = proc.wait_exit(deadline);
        Output {
            status,
            stdout: proc.stream_text("stdout"),
            stderr: proc.stream_text("stderr"),
        }
    }

    /// Start the process; its output is captured in the background.
    pub fn spawn(self) -> Process {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().expect("spawn autogate (build it first)");
        let captured = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        spawn_reader(out, "stdout", captured.clone());
        spawn_reader(err, "stderr", captured.clone());
        Process {
            child,
            captured,
            home: self.home,
            name: self.name,
            spawned_at,
            status: None,
        }
    }
}

fn spawn_reader<R: std::io::Read + Send + 'static>(
    r: R,
    stream: &'static str,
    captured: Arc<(Mutex<Captured>, Condvar)>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(r);
        for line in reader.lines() {
            let Ok(text) = line else { break };
            let (lock, cv) = &*captured;
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            c.lines.push(LogLine {
                at: Instant::now(),
                stream,
                text,
            });
            cv.notify_all();
        }
        let (lock, cv) = &*captured;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed += 1;
        cv.notify_all();
    });
}

/// Result of a completed CLI run.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running `autogate` process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    captured: Arc<(Mutex<Captured>, Condvar)>,
    home: TempDir,
    name: String,
    pub spawned_at: Instant,
    status: Option<ExitStatus>,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Every captured line so far.
    pub fn lines(&self) -> Vec<LogLine> {
        let (lock, _) = &*self.captured;
        lock.lock().unwrap_or_else(|e| e.into_inner()).lines.clone()
    }

    fn stream_text(&self, stream: &str) -> String {
        self.lines()
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text + "\n")
            .collect()
    }

    /// Captured log text (stderr) so far.
    pub fn logs(&self) -> String {
        self.stream_text("stderr")
    }

    /// Wait until a line containing `needle` appears; panics with the captured log otherwise.
    pub fn wait_for_line(&self, needle: &str, deadline: Duration) -> LogLine {
        self.try_wait_for_line(needle, deadline).unwrap_or_else(|| {
            panic!(
                "[{}] no line containing {needle:?} within {deadline:?}; output so far:\n{}",
                self.name,
                self.dump()
            )
        })
    }

    /// Like `wait_for_line` but returns `None` at the deadline.
    pub fn try_wait_for_line(&self, needle: &str, deadline: Duration) -> Option<LogLine> {
        let end = Instant::now() + deadline;
        let (lock, cv) = &*self.captured;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = c.lines.iter().find(|l| l.text.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= end || c.closed == 2 {
                return None;
            }
            c = cv
                .wait_timeout(c, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// All captured output, labelled, for failure messages.
    pub fn dump(&self) -> String {
        self.lines()
            .iter()
            .map(|l| format!("{:<10} | {}\n", self.name, l.text))
            .collect()
    }

    /// Send a signal by name (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) via kill(1): the workspace
    /// forbids `unsafe`, and this keeps the testkit free of FFI.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Wait for exit with a deadline; panics (after killing it) if the process is still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        match self.try_wait_exit(deadline) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "[{}] still running after {deadline:?}; output:\n{}",
                    self.name,
                    self.dump()
                );
            }
        }
    }

    /// Wait for exit; `None` if still running at the deadline. Also waits for the output pipes
    /// to close so that every line is captured.
    pub fn try_wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                let (lock, cv) = &*self.captured;
                let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
                while c.closed < 2 && Instant::now() < end + Duration::from_secs(1) {
                    c = cv
                        .wait_timeout(c, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.status = Some(s);
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} (pid {}) ----\n{}",
                self.name,
                self.child.id(),
                self.dump()
            );
        }
    }
}

/// A loopback port nobody listens on, for a process that must be told its port before it
/// starts and cannot report one it bound itself: the `autogate` binary refuses port 0, and etcd's
/// members must know each other's URLs in advance. Where the code under test can say what it
/// bound (chromedriver's log, a listener made in the test, the [`crate::proxy`]), bind port 0
/// instead and read the address: no race at all.
///
/// Here the port is released before the child binds it, so another socket could take it in
/// between. To make that as unlikely as it can be:
///
/// * ports come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a bind
///   to port 0 or an outgoing connection, in this process or another, is never given one of
///   them meanwhile;
/// * a port is handed out at most once per process: every integration test of a crate shares
///   one process, and a port whose first node has just stopped is not given to the next;
/// * the candidates are random, so two test processes on one machine seldom try the same one;
///   each is checked free by binding it (the children bind with `SO_REUSEADDR` as this does, so
///   a port left in `TIME_WAIT` counts as free for both).
///
/// When the range below the ephemeral ports is too small (a tuned kernel), the kernel picks the
/// port as for port 0, still never handing out the same port twice.
pub fn free_port() -> u16 {
    let mut state = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if state.rng == 0 {
        state.rng = seed();
    }
    let (lo, hi) = reserved_range();
    if hi - lo >= 1_000 {
        for _ in 0..10_000 {
            let port = lo + (state.next_random() % u64::from(hi - lo)) as u16;
            if !state.handed_out.contains(&port) && bindable(port) {
                state.handed_out.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1_000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a free port");
        if state.handed_out.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port left that this process has not used yet");
}

/// Ports [`free_port`] draws from: up to 12 000 ports just below the ephemeral range, none below
/// 1024.
fn reserved_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (
        ephemeral_low.saturating_sub(12_000).max(1_024),
        ephemeral_low.max(1_024),
    )
}

/// Differs between processes started at the same moment (pid) and runs of one (time).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    ((u64::from(std::process::id()) << 32) ^ nanos) | 1
}

fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

struct Ports {
    handed_out: std::collections::BTreeSet<u16>,
    rng: u64,
}

impl Ports {
    /// xorshift64*: plenty for spreading candidates, and no dependency.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

static PORTS: Mutex<Ports> = Mutex::new(Ports {
    handed_out: std::collections::BTreeSet::new(),
    rng: 0,
});

/// Poll `f` until it returns `Some`, at most `deadline`; panics with `what` otherwise.
pub fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A blocking HTTP GET on loopback returning (status, body), without TLS; an error when nothing
/// answers within 5 s. Usable from async tests too: the request runs on the harness's own
/// runtime while the calling thread waits.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    crate::http::plain_request(addr, "GET", path, None, None, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::{free_port, reserved_range};

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (lo, hi) = reserved_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        for p in ports {
            if hi - lo >= 1_000 {
                assert!((lo..hi).contains(&p), "{p} outside {lo}..{hi}");
            }
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("free port is bindable");
        }
    }
}
