//! Terminal helpers shared by the CLI commands: timestamps in `[terminal] timestamp_timezone`,
//! aligned tables and `Label:  value` blocks in the family's layouts, secret prompts that do
//! not echo, and progress on standard error (a spinner on a terminal, plain lines elsewhere) for
//! long steps.

use std::io::{BufRead, IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use autogate_config::Config;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;

use crate::exit::{Failure, USAGE};

/// `[terminal] no_color` (or `NO_COLOR` in the environment, as scripts set it for the family):
/// plain output only. The CLI never colours its output; what this turns off is the spinner's
/// redrawn line, which becomes plain progress lines as on a pipe.
static PLAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records `[terminal] no_color` once the configuration is loaded.
pub fn set_plain(no_color: bool) {
    PLAIN.store(no_color, std::sync::atomic::Ordering::Relaxed);
}

fn plain() -> bool {
    PLAIN.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Writes to standard output; a closed pipe (`autogate get services | head -1`) ends the process
/// quietly (see [`crate::output`]), where `print!` would panic.
pub fn emit(text: &str) {
    crate::output::stdout(text);
}

/// `print!` through [`emit`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cmd::term::emit(&format!($($t)*)) };
}

/// `println!` through [`emit`].
macro_rules! outln {
    () => { $crate::cmd::term::emit("\n") };
    ($($t:tt)*) => { $crate::cmd::term::emit(&format!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};

/// The time zone CLI timestamps are shown in.
pub fn time_zone(config: &Config) -> Result<TimeZone, Failure> {
    let name = config.terminal.timestamp_timezone.as_str();
    match name.to_ascii_lowercase().as_str() {
        "utc" => Ok(TimeZone::UTC),
        "local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|e| {
            Failure::new(
                USAGE,
                format!(
                    "terminal.timestamp_timezone = {name:?} (GATEWAY_TERMINAL_TIMESTAMP_TIMEZONE): {e}"
                ),
            )
        }),
    }
}

/// An RFC 3339 instant shown in `tz` to the second (`2024-05-03T10:35:44-05:00`, `Z` for UTC).
/// Text that is not a timestamp is shown as it is.
pub fn show_time(text: &str, tz: &TimeZone) -> String {
    let Ok(ts) = Timestamp::from_str(text) else {
        return text.to_owned();
    };
    let zoned = ts.to_zoned_datetime(tz.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// A JSON timestamp field in UTC to the second, `-` when absent (the `CREATED` columns).
pub fn utc(v: &Value) -> String {
    match v.as_str() {
        Some(s) => show_time(s, &TimeZone::UTC),
        None => "-".to_owned(),
    }
}

/// A JSON value as table or block text: strings bare, lists joined with `, `, absent as empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell plus two spaces; the last column is not padded. Empty
/// `headers` print the rows alone.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    // No headers: aligned rows only.
    let first = (!header.is_empty()).then_some(&header);
    for row in first.into_iter().chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0) + 2;
                line.push_str(&format!("{cell:<pad$}"));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Label:  value` lines with the values aligned one space after the longest label.
pub fn block(lines: &[(&str, String)]) -> String {
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in lines {
        let label = format!("{label}:");
        let line = format!("{label:<width$} {value}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Reads a secret: without echo from the terminal when standard input is one (after `prompt`
/// on standard error), else one line of standard input. The line end is removed, nothing else:
/// leading or trailing spaces can be part of a password.
pub fn read_secret(prompt: &str, from_stdin: bool) -> Result<String, Failure> {
    let value = if !from_stdin && std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::new(USAGE, format!("cannot read from the terminal: {e}")))?
    } else {
        read_line()?
    };
    if value.is_empty() {
        return Err(Failure::new(USAGE, "an empty value was given"));
    }
    Ok(value)
}

/// One line of standard input without its line end.
fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(USAGE, format!("cannot read standard input: {e}")))?;
    if n == 0 {
        return Err(Failure::new(
            USAGE,
            "standard input is empty: expected the value on one line",
        ));
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Progress on standard error while a long step runs; nothing at all when the step is done
/// within [`QUIET`]. On a terminal (not `TERM=dumb`) it is a spinner line with the seconds
/// since the current step began, redrawn in place and erased at the end; elsewhere (pipes,
/// files, CI logs) it is a plain `still <step>: N s` line at [`FIRST_LINE`], then at most one
/// every [`LINE_EVERY`]. Standard output is never written, so piped results stay clean.
#[derive(Debug)]
pub struct Spinner {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    status: Status,
}

/// Before this, nothing shows: an answer that comes fast needs no progress.
pub const QUIET: Duration = Duration::from_secs(1);
/// Without a terminal, the first `still …` line: a line is permanent, so it waits longer than
/// a spinner, which is erased.
pub const FIRST_LINE: Duration = Duration::from_secs(2);
/// Without a terminal, the least time between two lines, so a long wait costs few log lines.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// What a [`Spinner`] says; cheap to clone into a callback of another layer.
#[derive(Debug, Clone)]
pub struct Status {
    shown: std::sync::Arc<std::sync::Mutex<Shown>>,
    live: bool,
}

#[derive(Debug)]
struct Shown {
    /// The step being waited for (`running service x`) and when it began.
    what: String,
    since: Instant,
    /// Without a terminal: when the last line was written, if one was.
    last_line: Option<Instant>,
}

impl Status {
    /// From now on the wait is for `what`, counted from zero.
    pub fn set(&self, what: &str) {
        if let Ok(mut s) = self.shown.lock() {
            s.what = what.to_owned();
            s.since = Instant::now();
        }
    }

    /// A line for standard error where no spinner shows (on a terminal the spinner's text says
    /// it); it counts as the last progress line.
    pub fn note(&self, line: &str) {
        if self.live {
            return;
        }
        if let Ok(mut s) = self.shown.lock() {
            s.last_line = Some(Instant::now());
        }
        write_err(&format!("{line}\n"));
    }
}

fn write_err(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// The plain line due at `now`, if any, for a wait that began at `started`.
fn plain_line(shown: &mut Shown, started: Instant, now: Instant) -> Option<String> {
    if now.duration_since(started) < FIRST_LINE {
        return None;
    }
    if shown
        .last_line
        .is_some_and(|t| now.duration_since(t) < LINE_EVERY)
    {
        return None;
    }
    shown.last_line = Some(now);
    Some(format!(
        "still {}: {} s\n",
        shown.what,
        now.duration_since(shown.since).as_secs()
    ))
}

impl Spinner {
    pub fn start(what: String) -> Spinner {
        let live = !plain()
            && std::io::stderr().is_terminal()
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let started = Instant::now();
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Shown {
            what,
            since: started,
            last_line: None,
        }));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let shown = shown.clone();
            async move {
                // Quiet first: most answers come before anything would show.
                tokio::select! {
                    _ = &mut rx => return,
                    _ = tokio::time::sleep(QUIET) => {}
                }
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                let tick = if live {
                    Duration::from_millis(120)
                } else {
                    Duration::from_millis(250)
                };
                let mut i = 0usize;
                loop {
                    let text = match shown.lock() {
                        Ok(s) if live => {
                            let secs = s.since.elapsed().as_secs_f64();
                            let frame = FRAMES[i % FRAMES.len()];
                            Some(format!("\r{frame} {} {secs:.1}s\x1b[K", s.what))
                        }
                        Ok(mut s) => plain_line(&mut s, started, Instant::now()),
                        Err(_) => break,
                    };
                    if let Some(text) = text {
                        write_err(&text);
                    }
                    i += 1;
                    tokio::select! {
                        _ = &mut rx => break,
                        _ = tokio::time::sleep(tick) => {}
                    }
                }
                if live {
                    write_err("\r\x1b[K");
                }
            }
        });
        Spinner {
            stop: Some(tx),
            task: Some(task),
            status: Status { shown, live },
        }
    }

    /// A handle that changes what the spinner says.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Stops and erases the spinner before anything else is printed.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_zones() {
        let t = "2024-05-03T15:35:44.123456Z";
        assert_eq!(show_time(t, &TimeZone::UTC), "2024-05-03T15:35:44Z");
        let ny = TimeZone::get("America/New_York").expect("tz database");
        assert_eq!(show_time(t, &ny), "2024-05-03T11:35:44-04:00");
        assert_eq!(show_time("soon", &TimeZone::UTC), "soon");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "TYPE", "CREATED"],
            &[vec!["a".into(), "executable".into(), "x".into()]],
        );
        assert_eq!(t, "NAME  TYPE        CREATED\na     executable  x\n");
        let b = block(&[("Name", "s".into()), ("Working Dir", String::new())]);
        assert_eq!(b, "Name:        s\nWorking Dir:\n");
    }

    #[test]
    fn plain_progress_waits_then_says_at_most_one_line_every_few_seconds() {
        let t0 = Instant::now();
        let mut shown = Shown {
            what: "running service slow".into(),
            since: t0,
            last_line: None,
        };
        assert_eq!(plain_line(&mut shown, t0, t0 + QUIET), None);
        assert_eq!(
            plain_line(&mut shown, t0, t0 + FIRST_LINE).as_deref(),
            Some("still running service slow: 2 s\n")
        );
        assert_eq!(
            plain_line(&mut shown, t0, t0 + Duration::from_secs(6)),
            None
        );
        assert_eq!(
            plain_line(&mut shown, t0, t0 + Duration::from_secs(7)).as_deref(),
            Some("still running service slow: 7 s\n")
        );
    }
}
