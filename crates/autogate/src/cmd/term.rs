//! Terminal helpers shared by the CLI commands: timestamps in `[terminal] timestamp_timezone`,
//! aligned tables and `Label:  value` blocks in the family's layouts, secret prompts that do
//! not echo, and a progress spinner on standard error for long local steps.

use std::io::{BufRead, IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use autogate_config::Config;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;

use crate::exit::{Failure, USAGE};

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

/// A spinner on standard error while a long step runs, only when standard error is a terminal
/// (never in pipes, files or `TERM=dumb`), erased when dropped. What it says can change while
/// it runs ([`Spinner::status`]); where there is no spinner, a change is a plain line instead,
/// so logs and CI output still say what the CLI is waiting for.
#[derive(Debug)]
pub struct Spinner {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    status: Status,
}

/// What a [`Spinner`] says; cheap to clone into a callback of another layer.
#[derive(Debug, Clone)]
pub struct Status {
    // The text and when it was set (the spinner shows the seconds since), `None` without a
    // terminal: then [`Status::set`] writes lines.
    shown: Option<std::sync::Arc<std::sync::Mutex<(String, Instant)>>>,
}

impl Status {
    /// From now on the spinner says `what` and counts from zero; without a terminal, `what` is
    /// written as a line on standard error.
    pub fn set(&self, what: &str) {
        match &self.shown {
            Some(shown) => {
                if let Ok(mut s) = shown.lock() {
                    *s = (what.to_owned(), Instant::now());
                }
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{what}");
                let _ = err.flush();
            }
        }
    }

    /// True when a spinner shows the status (standard error is a terminal).
    pub fn is_live(&self) -> bool {
        self.shown.is_some()
    }
}

impl Spinner {
    pub fn start(what: String) -> Spinner {
        let tty =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        if !tty {
            return Spinner {
                stop: None,
                task: None,
                status: Status { shown: None },
            };
        }
        let shown = std::sync::Arc::new(std::sync::Mutex::new((what, Instant::now())));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let shown = shown.clone();
            async move {
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                let mut i = 0usize;
                loop {
                    let frame = FRAMES[i % FRAMES.len()];
                    let (what, secs) = match shown.lock() {
                        Ok(s) => (s.0.clone(), s.1.elapsed().as_secs_f64()),
                        Err(_) => break,
                    };
                    {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r{frame} {what} {secs:.1}s\x1b[K");
                        let _ = err.flush();
                    }
                    i += 1;
                    tokio::select! {
                        _ = &mut rx => break,
                        _ = tokio::time::sleep(Duration::from_millis(120)) => {}
                    }
                }
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
            }
        });
        Spinner {
            stop: Some(tx),
            task: Some(task),
            status: Status { shown: Some(shown) },
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
}
