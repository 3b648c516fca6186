//! Parsing of single values by kind.
//!
//! Each parser returns either the typed value or a sentence saying what was expected, which the
//! caller wraps with the key name and source. The grammar follows the product family (Go
//! durations, space-separated host lists) because files written for it must load unchanged, but
//! is stricter where the family silently does the wrong thing (a bare number as a duration, a
//! comma-separated host list).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::HostPort;
use crate::schema::Kind;

/// A parsed value, before it is placed into the typed structs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    Int(i64),
    Duration(Duration),
    Size(u64),
    Text(String),
    Path(PathBuf),
    Hosts(Vec<HostPort>),
    HostPort(HostPort),
    Labels(BTreeMap<String, String>),
}

/// Parses `raw` (already unquoted and trimmed) as `kind`. `home` expands a leading `~` of paths.
pub(crate) fn parse_value(kind: &Kind, raw: &str, home: Option<&Path>) -> Result<Value, String> {
    match kind {
        Kind::Bool => parse_bool(raw).map(Value::Bool),
        Kind::Int { min, max } => parse_int(raw, *min, *max).map(Value::Int),
        Kind::Minutes { min, max } => parse_minutes(raw, *min, *max).map(Value::Int),
        Kind::Port => parse_port(raw).map(|p| Value::Int(i64::from(p))),
        Kind::Duration { min } => {
            let d = parse_duration(raw)?;
            match min {
                Some(min) if d < *min => Err(format!(
                    "expected a duration of at least {}",
                    format_duration(*min)
                )),
                _ => Ok(Value::Duration(d)),
            }
        }
        Kind::Size { min, max } => {
            let n = parse_size(raw)?;
            if n < *min || n > *max {
                Err(format!(
                    "expected a size from {} to {} bytes ({} to {})",
                    min,
                    max,
                    format_size(*min),
                    format_size(*max)
                ))
            } else {
                Ok(Value::Size(n))
            }
        }
        Kind::Enum {
            values,
            unsupported,
            upper,
        } => parse_enum(raw, values, unsupported, *upper).map(Value::Text),
        Kind::HostPortList => parse_host_list(raw).map(Value::Hosts),
        Kind::HostPort => parse_host_port(raw)
            .map(Value::HostPort)
            .map_err(|e| format!("expected host:port: {e}")),
        Kind::Host => parse_host(raw).map(Value::Text),
        Kind::Path => expand_home(raw, home).map(Value::Path),
        Kind::Str => Ok(Value::Text(raw.to_string())),
        Kind::ClusterId => parse_cluster_id(raw).map(Value::Text),
        Kind::Labels => parse_labels(raw).map(Value::Labels),
        Kind::Url => parse_url(raw).map(Value::Text),
        Kind::TimeZone => parse_time_zone(raw).map(Value::Text),
        Kind::DurationRange { min, max } => {
            let d = parse_duration(raw)?;
            if d < *min || d > *max {
                Err(format!(
                    "expected a duration from {} to {}",
                    format_duration(*min),
                    format_duration(*max)
                ))
            } else {
                Ok(Value::Duration(d))
            }
        }
        Kind::KeyPrefix => parse_key_prefix(raw).map(Value::Text),
    }
}

/// `true/false`, `1/0`, `yes/no`, any case.
pub(crate) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false (1/0 and yes/no are accepted too)".to_string()),
    }
}

pub(crate) fn parse_int(raw: &str, min: i64, max: i64) -> Result<i64, String> {
    match raw.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// Whole minutes. The family silently accepts `720h` here and issues keys that are already
/// expired, so a duration-looking value gets an error that shows the minutes it probably meant.
fn parse_minutes(raw: &str, min: i64, max: i64) -> Result<i64, String> {
    if let Ok(n) = raw.parse::<i64>() {
        if (min..=max).contains(&n) {
            return Ok(n);
        }
    }
    let mut msg = format!("expected a whole number of minutes from {min} to {max} (1440 = 1 day)");
    if let Ok(d) = parse_duration(raw) {
        let minutes = d.as_secs() / 60;
        msg.push_str(&format!(
            "; the value is in minutes, not a duration: write {minutes} for {raw} (the family's gateway accepts {raw} silently and issues keys that are already expired)"
        ));
    }
    Err(msg)
}

pub(crate) fn parse_port(raw: &str) -> Result<u16, String> {
    match raw.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err("expected a port number 1-65535".to_string()),
    }
}

const NANOS_PER: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

const DURATION_EXPECTED: &str =
    "expected a duration such as 300ms, 10s, 1h30m, 12h or 30d (units: ns us ms s m h d)";

/// Go's `time.ParseDuration` grammar (`300ms`, `1h30m`, `1.5h`) plus days (`30d`), which the
/// family accepts for venv periods. `0` alone is allowed as in Go; any other number needs a unit
/// because a bare `10` is ambiguous (seconds? minutes?) and has bitten users before.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    if raw.starts_with('-') {
        return Err(format!(
            "{DURATION_EXPECTED}; negative durations are not allowed"
        ));
    }
    let s = raw.strip_prefix('+').unwrap_or(raw);
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err("expected a duration with a unit: add a unit, e.g. 10s".to_string());
    }
    let bad = || DURATION_EXPECTED.to_string();
    let mut rest = s;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let per = NANOS_PER
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, n)| *n)
            .ok_or_else(bad)?;
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut nanos = int.checked_mul(per).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            if !frac_part.chars().all(|c| c.is_ascii_digit()) || frac_part.len() > 18 {
                return Err(bad());
            }
            let frac: u128 = frac_part.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(frac_part.len() as u32);
            nanos = nanos.checked_add(frac * per / scale).ok_or_else(bad)?;
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    // The remainder of a division by 10^9 always fits in u32.
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration the short way: `30d`, `1h30m`, `10s`, `300ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if nanos == 0 && secs % 86_400 == 0 {
        return format!("{}d", secs / 86_400);
    }
    let mut out = String::new();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    if nanos > 0 {
        if nanos % 1_000_000 == 0 {
            out.push_str(&format!("{}ms", nanos / 1_000_000));
        } else if nanos % 1_000 == 0 {
            out.push_str(&format!("{}us", nanos / 1_000));
        } else {
            out.push_str(&format!("{nanos}ns"));
        }
    }
    out
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
];

/// Bytes, optionally with a unit: `1048576`, `512KiB`, `1MiB`, `1 MB`.
pub(crate) fn parse_size(raw: &str) -> Result<u64, String> {
    let bad = || {
        "expected a size in bytes, optionally with a unit: e.g. 1048576, 512KiB, 1MiB (units: B KB MB GB KiB MiB GiB)"
            .to_string()
    };
    let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (num, unit) = raw.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let mul = SIZE_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, m)| *m)
        .ok_or_else(bad)?;
    n.checked_mul(mul).ok_or_else(bad)
}

/// Formats bytes with the largest exact binary unit: `1MiB`, `512KiB`, `1000`.
pub fn format_size(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m && n % m == 0 {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

fn parse_enum(
    raw: &str,
    values: &[&'static str],
    unsupported: &[&'static str],
    upper: bool,
) -> Result<String, String> {
    let norm = if upper {
        raw.to_ascii_uppercase()
    } else {
        raw.to_ascii_lowercase()
    };
    if let Some(v) = values.iter().find(|v| **v == norm) {
        return Ok((*v).to_string());
    }
    let list = values.join(", ");
    if unsupported.iter().any(|u| *u == norm) {
        return Err(format!(
            "{norm} is not supported by autogate; expected one of {list}"
        ));
    }
    Err(format!("expected one of {list}"))
}

fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A host name or IP address without a port (`[::1]` and `::1` both give `::1`).
pub(crate) fn parse_host(raw: &str) -> Result<String, String> {
    if raw.contains("://") {
        return Err("expected a host name or IP address without a scheme".to_string());
    }
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.parse::<Ipv6Addr>().is_ok() {
            return Ok(inner.to_string());
        }
    }
    if raw.parse::<Ipv6Addr>().is_ok() {
        return Ok(raw.to_string());
    }
    if raw.contains(':') {
        return Err("expected a host name or IP address without a port".to_string());
    }
    if valid_host_name(raw) {
        Ok(raw.to_string())
    } else {
        Err("expected a host name or IP address".to_string())
    }
}

/// One `host:port`; IPv6 hosts in brackets: `[::1]:2379`. The error is a bare reason.
pub(crate) fn parse_host_port(raw: &str) -> Result<HostPort, String> {
    if raw.contains("://") {
        return Err(format!("\"{raw}\" has a scheme; write host:port only"));
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("\"{raw}\" has an unclosed '['"))?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"{inner}\" in \"{raw}\" is not an IPv6 address"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("\"{raw}\" has no port (expected [address]:port)"))?;
        (inner, port)
    } else {
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{raw}\" has no port (expected host:port)"))?;
        if host.contains(':') {
            return Err(format!(
                "\"{raw}\" has too many colons; write IPv6 addresses in brackets, e.g. [::1]:2379"
            ));
        }
        if !valid_host_name(host) {
            return Err(format!("\"{raw}\" has no valid host (expected host:port)"));
        }
        (host, port)
    };
    let port =
        parse_port(port).map_err(|_| format!("\"{raw}\" has an invalid port: expected 1-65535"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// A space-separated `host:port` list. Commas are refused with a hint because the family's
/// message for them (`too many colons in address`) sends users the wrong way.
pub(crate) fn parse_host_list(raw: &str) -> Result<Vec<HostPort>, String> {
    if raw.trim().is_empty() {
        return Err("expected at least one host:port (the list is empty)".to_string());
    }
    if raw.contains(',') {
        return Err(
            "the list is comma-separated; separate hosts with spaces, e.g. \"10.0.0.1:2379 10.0.0.2:2379\""
                .to_string(),
        );
    }
    raw.split_whitespace()
        .map(|entry| {
            parse_host_port(entry)
                .map_err(|e| format!("expected a space-separated list of host:port: {e}"))
        })
        .collect()
}

/// Expands a leading `~` (alone or followed by `/`) with `home`.
pub(crate) fn expand_home(raw: &str, home: Option<&Path>) -> Result<PathBuf, String> {
    let rest = if raw == "~" {
        Some("")
    } else {
        raw.strip_prefix("~/")
    };
    match (rest, home) {
        (None, _) => Ok(PathBuf::from(raw)),
        (Some(rest), Some(home)) => Ok(if rest.is_empty() {
            home.to_path_buf()
        } else {
            home.join(rest)
        }),
        (Some(_), None) => Err(
            "cannot expand '~': the home directory is unknown (set HOME or use an absolute path)"
                .to_string(),
        ),
    }
}

pub(crate) fn parse_cluster_id(raw: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err("expected 1-63 characters of letters, digits, '_', '.' or '-'".to_string())
    }
}

/// An etcd key prefix of the manager's store. Keys are built as prefix + `/manager/…`, so a
/// trailing `/` would double it; the gateways' cluster stores live under `/autogate/` and the
/// managers' token index under `/autogate-manager-index/`, which a manager prefix must not
/// overlap.
pub(crate) fn parse_key_prefix(raw: &str) -> Result<String, String> {
    const SHAPE: &str =
        "expected an etcd key prefix: '/' then up to 127 printable ASCII characters without spaces, not ending in '/' (e.g. /autogate-manager)";
    let shape_ok = raw.starts_with('/')
        && raw.len() >= 2
        && raw.len() <= 128
        && !raw.ends_with('/')
        && raw.chars().all(|c| c.is_ascii_graphic());
    if !shape_ok {
        return Err(SHAPE.to_string());
    }
    for (reserved, what) in [
        ("/autogate", "the gateways' cluster stores"),
        ("/autogate-manager-index", "the managers' admin token index"),
    ] {
        if raw == reserved || raw.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "{reserved}/ holds {what}; choose another prefix (e.g. /autogate-manager)"
            ));
        }
    }
    Ok(raw.to_string())
}

/// Space-separated `key=value` labels; keys are unique.
fn parse_labels(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in raw.split_whitespace() {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            format!("expected space-separated key=value labels; \"{item}\" has no '='")
        })?;
        let key_ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
        if !key_ok {
            return Err(format!(
                "expected space-separated key=value labels; label key \"{k}\" must be letters, digits, '_', '.', '-' or '/'"
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!(
                "expected space-separated key=value labels; label \"{k}\" is given twice"
            ));
        }
    }
    Ok(out)
}

/// A URL as messages and `version --show-config` show it: a password written in it
/// (`http://user:password@proxy:3128`, the usual form of `HTTPS_PROXY`) replaced by
/// `<redacted>`.
pub(crate) fn url_without_password(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => {
                format!("{scheme}://{user}:{}@{host}{tail}", crate::REDACTED)
            }
            None => raw.to_string(),
        },
        None => raw.to_string(),
    }
}

fn parse_url(raw: &str) -> Result<String, String> {
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(raw.to_string()),
        _ => Err("expected an http:// or https:// URL, e.g. http://proxy.example:3128".to_string()),
    }
}

fn parse_time_zone(raw: &str) -> Result<String, String> {
    let lower = raw.to_ascii_lowercase();
    if lower == "utc" || lower == "local" {
        return Ok(lower);
    }
    let ok = raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        && raw.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(raw.to_string())
    } else {
        Err("expected utc, local or a time zone id such as Europe/Paris".to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn url_passwords_are_hidden_in_what_is_shown() {
        assert_eq!(
            url_without_password("http://gw:s3cret@proxy:3128/"),
            "http://gw:<redacted>@proxy:3128/"
        );
        assert_eq!(
            url_without_password("socks5://gw:a@b@proxy:1080"),
            "socks5://gw:<redacted>@proxy:1080"
        );
        assert_eq!(
            url_without_password("http://gw@proxy:3128"),
            "http://gw@proxy:3128"
        );
        assert_eq!(
            url_without_password("http://proxy:3128"),
            "http://proxy:3128"
        );
        assert_eq!(url_without_password("proxy:3128"), "proxy:3128");
    }

    #[test]
    fn durations_follow_go_plus_days() {
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("10")
            .unwrap_err()
            .contains("add a unit, e.g. 10s"));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999d").is_err());
    }

    #[test]
    fn durations_format_back() {
        for s in ["300ms", "10s", "1h30m", "30d", "0s", "2m"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2 mb").unwrap(), 2_000_000);
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_size(1 << 20), "1MiB");
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            parse_host_port("[::1]:2379").unwrap(),
            HostPort {
                host: "::1".into(),
                port: 2379
            }
        );
        assert_eq!(
            parse_host_port("[::1]:2379").unwrap().to_string(),
            "[::1]:2379"
        );
        assert_eq!(
            parse_host_port("etcd-1:2379").unwrap().to_string(),
            "etcd-1:2379"
        );
        assert!(parse_host_port("::1:2379")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_host_port("host").unwrap_err().contains("no port"));
        assert!(parse_host_port(":2379").is_err());
        assert!(parse_host_port("h:0").is_err());
        assert!(parse_host_port("h:99999").is_err());
        assert!(parse_host_port("wss://h:443")
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_host_list("a:1,b:2")
            .unwrap_err()
            .contains("separate hosts with spaces"));
        assert!(parse_host_list("  ").unwrap_err().contains("empty"));
        assert_eq!(parse_host_list("a:1  b:2").unwrap().len(), 2);
    }

    #[test]
    fn hosts_and_ids() {
        assert_eq!(parse_host("[::1]").unwrap(), "::1");
        assert_eq!(parse_host("0.0.0.0").unwrap(), "0.0.0.0");
        assert!(parse_host("h:80").is_err());
        assert!(parse_cluster_id("cluster_1").is_ok());
        assert!(parse_cluster_id("").is_err());
        assert!(parse_cluster_id(&"a".repeat(64)).is_err());
        assert!(parse_cluster_id("a b").is_err());
    }

    #[test]
    fn bools_and_labels() {
        for t in ["true", "TRUE", "1", "yes", "Yes"] {
            assert!(parse_bool(t).unwrap());
        }
        for f in ["false", "0", "no", "NO"] {
            assert!(!parse_bool(f).unwrap());
        }
        assert!(parse_bool("maybe").is_err());
        let l = parse_labels("zone=a  gpu=yes").unwrap();
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("zone").is_err());
        assert!(parse_labels("a=1 a=2").is_err());
    }

    #[test]
    fn home_expansion() {
        let home = Path::new("/h");
        assert_eq!(
            expand_home("~/x", Some(home)).unwrap(),
            PathBuf::from("/h/x")
        );
        assert_eq!(expand_home("~", Some(home)).unwrap(), PathBuf::from("/h"));
        assert_eq!(expand_home("/abs", None).unwrap(), PathBuf::from("/abs"));
        assert_eq!(
            expand_home("~user/x", Some(home)).unwrap(),
            PathBuf::from("~user/x")
        );
        assert!(expand_home("~/x", None).is_err());
    }
}
