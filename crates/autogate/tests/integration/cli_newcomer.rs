//! What a newcomer meets first, through the real binary: output piped into `head` (a closed
//! pipe ends the process quietly), `version --show-config` on a configuration that does not load,
//! "did you mean" for a mistyped `GATEWAY_*` variable, and the roles' help naming their settings.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autogate_testkit::autogate_bin;

const DEADLINE: Duration = Duration::from_secs(20);

/// How a run whose standard output was closed early ended.
struct ClosedPipeRun {
    code: Option<i32>,
    /// Lines read before the pipe was closed.
    read: Vec<String>,
    stderr: String,
}

/// Runs `autogate <args>` in a fresh HOME with no `GATEWAY_*` variable, reads `lines` lines of
/// its standard output (0: none) and then closes the pipe, as `| head -n <lines>` does.
fn with_stdout_closed_after(args: &[&str], home: &Path, lines: usize) -> ClosedPipeRun {
    let mut child = Command::new(autogate_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GATEWAY_APPLICATION_WORKING_DIR", home.join("work"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autogate");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut read = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read a line") == 0 {
            break;
        }
        read.push(line);
    }
    drop(reader);
    let mut err = child.stderr.take().expect("stderr");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("autogate {args:?} still runs {DEADLINE:?} after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ClosedPipeRun {
        code: status.code(),
        read,
        stderr: collector.join().expect("stderr reader"),
    }
}

/// A configuration whose `--show-config` listing is larger than a pipe's buffer (64 KiB on
/// Linux), so the process is still writing when the reader goes away, however the two are
/// scheduled.
fn big_config(home: &Path) -> String {
    let mut text = String::from("[server]\nport = 50100\n");
    for i in 0..300 {
        text.push_str(&format!(
            "\n[client:profile-{i:03}]\nhost = host-{i:03}.example.net\nport = {}\n",
            20000 + i
        ));
    }
    let path = home.join("gateway.conf");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn assert_quiet_closed_pipe(run: &ClosedPipeRun, what: &str) {
    assert!(
        run.stderr.is_empty(),
        "{what}: a closed pipe must end the process without a word, got: {}",
        run.stderr
    );
    assert_eq!(
        run.code,
        Some(141),
        "{what}: the status of a Unix tool ended by SIGPIPE (128 + 13)"
    );
}

#[test]
fn show_config_into_a_closed_pipe_exits_quietly() {
    for raw in [false, true] {
        for lines in [0, 1, 10] {
            let home = tempfile::tempdir().expect("temp dir");
            let conf = big_config(home.path());
            let mut args = vec!["version", "--show-config", "--config", conf.as_str()];
            if raw {
                args.push("--raw");
            }
            let run = with_stdout_closed_after(&args, home.path(), lines);
            let what = format!("{args:?} | head -n {lines}");
            assert_quiet_closed_pipe(&run, &what);
            assert_eq!(run.read.len(), lines, "{what}");
            if lines > 0 && !raw {
                assert_eq!(
                    run.read[0],
                    concat!("autogate: ", env!("CARGO_PKG_VERSION"), "\n"),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn help_into_a_closed_pipe_exits_quietly() {
    let home = tempfile::tempdir().expect("temp dir");
    // Smaller than a pipe's buffer, so the write may succeed before the reader goes: either
    // outcome is quiet.
    let run = with_stdout_closed_after(&["help", "server"], home.path(), 1);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(matches!(run.code, Some(0 | 141)), "{:?}", run.code);
}
