//! Writing to standard output and standard error the way Unix tools do.
//!
//! `println!` panics when a write fails, so `autogate version --show-config | head` used to die
//! with `failed printing to stdout: Broken pipe` and a backtrace once `head` had its lines.
//! Rust ignores SIGPIPE (and the workspace forbids the unsafe code that would restore it), so
//! every write to standard output goes through [`stdout`] instead: a reader that has gone away
//! ends the process quietly, as SIGPIPE ends `cat`; any other write failure is reported once
//! and ends the process as an I/O error.

use std::io::{ErrorKind, Write};

/// Exit status when standard output was closed by its reader: 128 + SIGPIPE, what a shell
/// reports for a Unix tool killed by SIGPIPE, so `set -o pipefail` treats autogate like `cat`.
pub const CLOSED_PIPE: u8 = 141;

/// `EX_IOERR`: standard output could not be written for another reason (a full disk).
const IO_ERROR: i32 = 74;

/// Writes `text` to standard output and flushes it. When the reader has closed the pipe, the
/// process exits at once with [`CLOSED_PIPE`] and prints nothing: the reader has what it wanted.
pub fn stdout(text: &str) {
    stdout_bytes(text.as_bytes());
}

/// [`stdout`] for bytes that need not be text (a completion script, an export).
pub fn stdout_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(i32::from(CLOSED_PIPE));
        }
        stderr(&format!("error: cannot write to standard output: {e}\n"));
        std::process::exit(IO_ERROR);
    }
}

/// Writes `text` to standard error. A failure is ignored: there is nowhere left to report it,
/// and the exit status still tells the outcome.
pub fn stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

/// Whether a write failed because the reader closed the pipe (for writers that report their
/// own errors, such as clap's help).
pub fn is_closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::BrokenPipe
}
