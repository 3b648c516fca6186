//! Process runner: one program in its own process group, with bounded output capture, a
//! timeout, cancellation, and secret masking.
//!
//! The child starts from a minimal environment (PATH, HOME, LANG, then the service's variables
//! and secrets) so that nothing of the gateway's own environment — tokens, store addresses —
//! leaks into user code. It leads its own process group so that a timeout or a cancellation can
//! kill everything it started, grandchildren included; the group is also killed when the leader
//! exits, because a stray background process would otherwise hold the output pipes open and
//! keep the run from ever finishing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;

/// Default per-stream capture limit: 16 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// What replaces every secret value in captured output.
pub const MASK: &str = "********";

/// How long to wait for the output pipes to close after the process group was killed. A
/// process that escaped the group (e.g. with `setsid`) could hold them open forever.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The outcome of a program that ran (whatever its exit status).
///
/// `return_code` is the exit code when the program exited, and `-N` when it was killed by
/// signal `N` (the Python `subprocess` convention): a timeout therefore shows `-9` together with
/// `timed_out: true`. Times are RFC 3339 UTC; `elapsed_time` is seconds with microsecond
/// precision and an `s` suffix (`2.276147s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunResult {
    /// Captured standard output (masked, possibly truncated).
    pub stdout: String,
    /// Captured standard error (masked, possibly truncated).
    pub stderr: String,
    /// Exit code, or `-signal`.
    pub return_code: i32,
    /// When the program was started.
    pub start_time: String,
    /// When it finished (or was killed).
    pub end_time: String,
    /// `end - start`, e.g. `2.276147s`.
    pub elapsed_time: String,
    /// `stdout` parsed as JSON, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_json: Option<serde_json::Value>,
    /// True when the run was killed because it exceeded its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// OpenTofu runs only: the state file after the run, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    /// The same state under the family's name for it (`state_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<serde_json::Value>,
    /// Python runs only, and only when this run built its environment (none was cached for
    /// its requirements): how long the build took, in the format of `elapsed_time`. The build
    /// comes before `start_time`, outside `elapsed_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_build_time: Option<String>,
}

/// One program to run.
#[derive(Clone)]
pub struct ProcessSpec {
    /// Absolute path of the program (resolve names with [`crate::which`] first).
    pub program: PathBuf,
    /// Arguments, passed as they are (never through a shell).
    pub args: Vec<OsString>,
    /// Variables added to the minimal environment; later entries of the same name win.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Kill the process group after this long; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Per-stream capture limit in bytes.
    pub output_limit: usize,
    /// Values replaced by [`MASK`] in stdout and stderr.
    pub mask: Vec<String>,
    /// Bytes written to standard input (then closed); `None` = `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Run as this user (its uid and primary gid, no supplementary groups); `None` = as the
    /// node.
    pub user: Option<crate::user::ServiceUser>,
}

impl std::fmt::Debug for ProcessSpec {
    // Environment values and mask entries may be secrets: only their names/count are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .field("output_limit", &self.output_limit)
            .field("mask", &format_args!("{} values", self.mask.len()))
            .field(
                "user",
                &self.user.as_ref().map(crate::user::ServiceUser::name),
            )
            .finish_non_exhaustive()
    }
}

impl ProcessSpec {
    /// A spec with no arguments, no extra environment, no timeout and the default limit.
    pub fn new(program: impl Into<PathBuf>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: cwd.into(),
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            mask: Vec::new(),
            stdin: None,
            user: None,
        }
    }
}

/// The minimal environment every child starts from: the gateway's PATH (or a standard one),
/// HOME, and LANG (defaulting to `C.UTF-8` so Python prints UTF-8).
pub fn minimal_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_owned(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
    );
    env.insert(
        "HOME".to_owned(),
        std::env::var("HOME").unwrap_or_else(|_| "/".to_owned()),
    );
    env.insert(
        "LANG".to_owned(),
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned()),
    );
    env
}

/// The proxy variables of the node's own environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`,
/// `ALL_PROXY`, each in upper and lower case, as set), for the programs that fetch over the
/// network for the node: git (checkouts) and pip (venv builds). A site behind a proxy sets
/// them once for the node, as for the family's gateway, whose programs inherit its environment.
/// Service programs do not get them: they start from [`minimal_env`] plus what the service
/// declares.
pub fn proxy_env() -> BTreeMap<String, String> {
    const NAMES: [&str; 8] = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    NAMES
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), std::env::var(name).ok()?)))
        .collect()
}

/// Kills the process group when dropped, so that a run whose future is dropped (caller gone)
/// leaves nothing behind either.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL to a whole process group; "no such group" means it is already gone.
pub(crate) fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

#[derive(Default)]
struct Capture {
    buf: Vec<u8>,
    total: usize,
}

/// Reads a stream to EOF, keeping at most `keep` bytes and counting the rest.
async fn capture<R: AsyncRead + Unpin>(mut reader: R, keep: usize, into: Arc<Mutex<Capture>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let Ok(mut c) = into.lock() else { break };
                let room = keep.saturating_sub(c.buf.len());
                let take = room.min(n);
                c.buf.extend_from_slice(&chunk[..take]);
                c.total += n;
            }
        }
    }
}

/// Runs one program to completion, timeout or cancellation.
///
/// Returns `Err` only when the program could not be started or the run was cancelled; a
/// non-zero exit or a timeout is a normal [`RunResult`].
pub async fn run_process(
    spec: &ProcessSpec,
    cancel: &CancellationToken,
) -> Result<RunResult, ExecError> {
    let mut env = minimal_env();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(&env)
        .current_dir(&spec.cwd)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &spec.user {
        // std drops the supplementary groups when a root parent switches uid: the program
        // keeps the user's uid and primary gid and nothing of the node's.
        cmd.uid(user.uid()).gid(user.gid());
    }

    let start_wall = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    // The child leads its own group: its pid is the group id.
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));

    // Keep enough past the limit that a secret straddling the cut is still seen whole by the
    // masker (see `finish_stream`).
    let longest_secret = spec.mask.iter().map(String::len).max().unwrap_or(0);
    let keep = spec.output_limit.saturating_add(longest_secret);
    let out = Arc::new(Mutex::new(Capture::default()));
    let err = Arc::new(Mutex::new(Capture::default()));
    // The readers are per-run tasks joined below before the run returns; they are not
    // long-lived, so they need no tracker.
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(tokio::spawn(capture(s, keep, out.clone())));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(tokio::spawn(capture(s, keep, err.clone())));
    }
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
        // A program that never reads its input must not block the run: errors (EPIPE) ignored.
        // Detached on purpose: it ends when the program reads its input or exits (the pipe
        // closes), which the run waits for anyway.
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }

    let sleep = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum End {
        Exited(std::io::Result<ExitStatus>),
        TimedOut,
        Cancelled,
    }
    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        () = sleep => End::TimedOut,
        () = cancel.cancelled() => End::Cancelled,
    };
    // In every case the group goes: on timeout/cancel to stop the run, on a normal exit to
    // reap stragglers that would otherwise keep the pipes (and the run) open.
    guard.kill();
    let timed_out = matches!(end, End::TimedOut);
    let cancelled = matches!(end, End::Cancelled);
    let status = match end {
        End::Exited(status) => status,
        End::TimedOut | End::Cancelled => child.wait().await,
    };
    let end_wall = OffsetDateTime::now_utc();
    let elapsed = started.elapsed();
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(PIPE_DRAIN_GRACE, r).await.is_err() {
            abort.abort();
        }
    }
    if cancelled {
        return Err(ExecError::Cancelled);
    }
    let status =
        status.map_err(|e| ExecError::io(format!("waiting for {}", spec.program.display()), e))?;

    let stdout = finish_stream(&out, spec.output_limit, &spec.mask);
    let stderr = finish_stream(&err, spec.output_limit, &spec.mask);
    let stdout_json = parse_json(&stdout);
    Ok(RunResult {
        stdout,
        stderr,
        return_code: return_code(status),
        start_time: rfc3339(start_wall),
        end_time: rfc3339(end_wall),
        elapsed_time: format_elapsed(elapsed),
        stdout_json,
        timed_out,
        state: None,
        state_file: None,
        environment_build_time: None,
    })
}

/// `-N` for death by signal `N`, else the exit code.
fn return_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => -sig,
        (None, None) => -1,
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `2.276147s`: seconds with microseconds, as the family prints it.
pub fn format_elapsed(d: Duration) -> String {
    format!("{}.{:06}s", d.as_secs(), d.subsec_micros())
}

fn parse_json(stdout: &str) -> Option<serde_json::Value> {
    let t = stdout.trim();
    if t.is_empty() {
        return None;
    }
    serde_json::from_str(t).ok()
}

/// Masks, then truncates to `limit` bytes and appends the marker if anything was cut.
///
/// Masking happens on the captured bytes *before* the cut (the capture keeps `limit` plus the
/// longest secret), so a secret crossing the limit is replaced whole instead of leaking its
/// head.
fn finish_stream(cap: &Mutex<Capture>, limit: usize, secrets: &[String]) -> String {
    let (buf, total) = match cap.lock() {
        Ok(c) => (c.buf.clone(), c.total),
        Err(p) => {
            let c = p.into_inner();
            (c.buf.clone(), c.total)
        }
    };
    let truncated = total > limit;
    let masked = mask_bytes(&buf, secrets);
    let mut text = String::from_utf8_lossy(&masked).into_owned();
    if truncated {
        let mut cut = limit.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("\n[... output truncated after {limit} bytes ...]"));
    }
    text
}

/// Replaces every occurrence of every non-empty secret by [`MASK`]; longest secrets first so
/// that a secret containing another is masked whole.
pub fn mask_bytes(input: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut secrets: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut data = input.to_vec();
    for s in secrets {
        let mut outv = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if data[i..].starts_with(s) {
                outv.extend_from_slice(MASK.as_bytes());
                i += s.len();
            } else {
                outv.push(data[i]);
                i += 1;
            }
        }
        data = outv;
    }
    data
}

/// Masks secrets in a string (for error messages that carry program output).
pub fn mask_str(input: &str, secrets: &[String]) -> String {
    String::from_utf8_lossy(&mask_bytes(input.as_bytes(), secrets)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_longest_first_and_empty_ignored() {
        let out = mask_bytes(
            b"pw=abc123 and abc",
            &["abc".into(), "abc123".into(), String::new()],
        );
        assert_eq!(out, b"pw=******** and ********");
    }

    #[test]
    fn elapsed_format() {
        assert_eq!(
            format_elapsed(Duration::from_micros(2_276_147)),
            "2.276147s"
        );
        assert_eq!(format_elapsed(Duration::from_millis(5)), "0.005000s");
    }

    #[test]
    fn truncation_masks_secret_across_the_cut() {
        let cap = Mutex::new(Capture {
            buf: b"0123456789SECRETVALUE-and-more".to_vec(),
            total: 100,
        });
        let s = finish_stream(&cap, 12, &["SECRETVALUE".into()]);
        assert_eq!(s, "0123456789**\n[... output truncated after 12 bytes ...]");
        assert!(!s.contains("SE"));
    }
}
