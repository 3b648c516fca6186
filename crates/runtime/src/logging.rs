//! Log output in the product family's shape, so operators' log searches and the HA guide's
//! fail-over walkthrough read the same on autogate:
//!
//! ```text
//! 2024-12-23T18:03:59Z INF connected to commander at 10.0.0.5:443
//! ```
//!
//! Second precision, in `[log] timestamp_timezone` (UTC by default: `Z`; another zone carries
//! its offset, `2024-12-23T19:03:59+01:00`, as the family's CLI times do), a three-letter level (TRC DBG INF WRN ERR FTL), the message, then any
//! structured fields as `key=value`. With `console_json` every line is one JSON object instead
//! (`{"time":…,"level":"info","message":…, fields…}`), the shape log shippers expect. Logs go to
//! standard error so that command output on standard output (`--raw` JSON) stays clean.

use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use jiff::tz::TimeZone;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Line shape of one log destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `init_logging` needs; the binary maps the `[log]` section onto it.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// `None` disables logging entirely (`level = DISABLED`).
    pub level: Option<Level>,
    pub console: LogFormat,
    /// `Some((path of gateway.log, format))` to also write a file.
    pub file: Option<(PathBuf, LogFormat)>,
    /// The zone timestamps are written in (see [`time_zone`]).
    pub time_zone: TimeZone,
}

/// The zone of `[log] timestamp_timezone`: `utc`, `local` (the system's: `TZ`, else
/// `/etc/localtime`) or an id of the system's time zone database such as `Europe/Paris`. The
/// error says why the name is not one.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    match name.to_ascii_lowercase().as_str() {
        "utc" => Ok(TimeZone::UTC),
        "local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|e| e.to_string()),
    }
}

/// Errors setting up logging; the caller reports them and exits.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// Kept alive by `main` for the life of the process (room for buffered writers later).
#[derive(Debug)]
pub struct LoggingGuard(());

/// Install the global subscriber.
pub fn init_logging(settings: &LogSettings) -> Result<LoggingGuard, LoggingError> {
    let level = match settings.level {
        Some(l) => LevelFilter::from_level(l),
        None => LevelFilter::OFF,
    };
    // Our own crates log at the configured level; dependencies (tonic, h2, hyper, rustls) only
    // warnings and errors unless TRACE is asked for, otherwise DEBUG drowns in transport chatter.
    let ours = move |meta: &tracing::Metadata<'_>| {
        let own = meta.target().starts_with("autogate");
        if own || level == LevelFilter::TRACE {
            level >= *meta.level()
        } else {
            LevelFilter::WARN.min(level) >= *meta.level()
        }
    };
    let console = tracing_subscriber::fmt::layer()
        .event_format(LineFormat(settings.console, settings.time_zone.clone()))
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(ours));
    let file_layer = match &settings.file {
        Some((path, format)) => {
            let fail = |source| LoggingError::File {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // A missing directory is made private; an existing one (say /var/log) is not
                // this process's to change.
                if !dir.exists() {
                    crate::private::private_dir(dir).map_err(fail)?;
                }
            }
            // The log names users, source addresses and paths: this user's only. A log an
            // older version left readable by others is tightened.
            crate::private::tighten_file(path, 0o600).map_err(fail)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(fail)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(LineFormat(*format, settings.time_zone.clone()))
                    .with_ansi(false)
                    .with_writer(Mutex::new(file))
                    .with_filter(filter_fn(ours)),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(console)
        .with(file_layer)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInstalled)?;
    Ok(LoggingGuard(()))
}

/// The family's three-letter level names.
pub fn level_abbrev(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRC",
        Level::DEBUG => "DBG",
        Level::INFO => "INF",
        Level::WARN => "WRN",
        Level::ERROR => "ERR",
    }
}

fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// `2024-12-23T18:03:59Z`: UTC, whole seconds.
pub fn timestamp(now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_else(|_| now.to_string())
}

/// `now` in `tz` to the second: `2024-12-23T18:03:59Z` when the zone's offset is zero then,
/// else `2024-12-23T19:03:59+01:00` (the offset of that instant, daylight saving included).
pub fn timestamp_in(now: jiff::Timestamp, tz: &TimeZone) -> String {
    let zoned = now.to_zoned_datetime(tz.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

struct LineFormat(LogFormat, TimeZone);

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, serde_json::Value)>,
    fatal: bool,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            name => self.rest.push((name, serde_json::Value::from(value))),
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "fatal" {
            self.fatal = value;
        } else {
            self.rest
                .push((field.name(), serde_json::Value::from(value)));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest
            .push((field.name(), serde_json::Value::from(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest
            .push((field.name(), serde_json::Value::from(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.rest
            .push((field.name(), serde_json::Value::from(value)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            name => self.rest.push((name, serde_json::Value::from(text))),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = event.metadata().level();
        let time = timestamp_in(jiff::Timestamp::now(), &self.1);
        match self.0 {
            LogFormat::Text => {
                // A `fatal = true` field marks the last line before a non-zero exit: tracing has
                // no FATAL level, the family's format does.
                let abbrev = if fields.fatal {
                    "FTL"
                } else {
                    level_abbrev(level)
                };
                let mut line = format!("{time} {abbrev} {}", fields.message);
                for (k, v) in &fields.rest {
                    match v {
                        serde_json::Value::String(s) => {
                            let _ = write!(line, " {k}={}", quote_if_needed(s));
                        }
                        other => {
                            let _ = write!(line, " {k}={other}");
                        }
                    }
                }
                writeln!(writer, "{line}")
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("time".into(), time.into());
                let word = if fields.fatal {
                    "fatal"
                } else {
                    level_word(level)
                };
                obj.insert("level".into(), word.into());
                obj.insert("message".into(), fields.message.into());
                for (k, v) in fields.rest {
                    obj.insert(k.to_owned(), v);
                }
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

fn quote_if_needed(s: &str) -> String {
    if s.is_empty() || s.contains(char::is_whitespace) || s.contains('"') {
        format!("{s:?}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_second_precision() {
        let t = time::macros::datetime!(2024-12-23 19:03:59.987 +01:00);
        assert_eq!(timestamp(t), "2024-12-23T18:03:59Z");
    }

    #[test]
    fn timestamp_in_a_zone_carries_its_offset() {
        let t: jiff::Timestamp = "2024-12-23T18:03:59.987Z".parse().expect("instant");
        assert_eq!(timestamp_in(t, &TimeZone::UTC), "2024-12-23T18:03:59Z");
        let paris = time_zone("Europe/Paris").expect("tz database");
        assert_eq!(timestamp_in(t, &paris), "2024-12-23T19:03:59+01:00");
        // Summer time: the offset of the instant, not of the zone's winter.
        let july: jiff::Timestamp = "2024-07-01T12:00:00Z".parse().expect("instant");
        assert_eq!(timestamp_in(july, &paris), "2024-07-01T14:00:00+02:00");
        assert_eq!(
            timestamp_in(t, &time_zone("UTC").expect("utc")),
            "2024-12-23T18:03:59Z"
        );
        assert!(time_zone("Mars/Olympus_Mons").is_err());
    }

    #[test]
    fn abbreviations_match_family() {
        assert_eq!(level_abbrev(&Level::INFO), "INF");
        assert_eq!(level_abbrev(&Level::DEBUG), "DBG");
        assert_eq!(level_abbrev(&Level::WARN), "WRN");
        assert_eq!(level_abbrev(&Level::ERROR), "ERR");
        assert_eq!(level_abbrev(&Level::TRACE), "TRC");
    }

    #[test]
    fn quoting_only_when_needed() {
        assert_eq!(quote_if_needed("abc"), "abc");
        assert_eq!(quote_if_needed("a b"), "\"a b\"");
    }
}
