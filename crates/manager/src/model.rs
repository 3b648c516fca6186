//! The manager's data: registered clusters with their pinned certificates, session history
//! records, and the validation rules for everything an operator sends.
//!
//! Records are stored as JSON in the store, so a manager of a later version can read what an
//! earlier one wrote (unknown fields are ignored, new fields have defaults). Timestamps are the
//! manager's own clock, RFC 3339 UTC with milliseconds, because the history is read by people
//! comparing fail-over timelines.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Administrative state of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// Sessions accepted, service runs forwarded.
    Enabled,
    /// Sessions refused; a live one is closed when the cluster is disabled.
    Disabled,
    /// Sessions accepted (so the operator sees the cluster), service runs refused.
    ReadOnly,
}

impl ClusterState {
    /// The name used in the API and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Enabled => "enabled",
            ClusterState::Disabled => "disabled",
            ClusterState::ReadOnly => "read-only",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClusterState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enabled" => Ok(ClusterState::Enabled),
            "disabled" => Ok(ClusterState::Disabled),
            // Accept the underscore spelling too: it is what an INI-minded operator types.
            "read-only" | "read_only" | "readonly" => Ok(ClusterState::ReadOnly),
            other => Err(format!(
                "unknown state {other:?} (expected enabled, disabled or read-only)"
            )),
        }
    }
}

/// A certificate pinned for a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the DER, lower-case hex without separators.
    pub fingerprint_sha256: String,
    /// The certificate, PEM (kept so an operator can export what is registered).
    pub pem: String,
    /// Subject distinguished name, e.g. `CN=node-1`.
    pub subject: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// When it was registered.
    pub added_at: String,
    /// The node that last presented it in an accepted `hello`.
    #[serde(default)]
    pub last_presented_by: Option<String>,
    /// When that was.
    #[serde(default)]
    pub last_presented_at: Option<String>,
}

/// A registered gateway cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The gateways' `GATEWAY_APPLICATION_CLUSTER_ID`.
    pub cluster_id: String,
    /// A display name.
    pub name: String,
    /// Administrative state.
    pub state: ClusterState,
    /// Pinned certificates.
    pub certificates: Vec<CertRecord>,
    /// When it was registered.
    pub created_at: String,
    /// Highest term ever accepted and its node, so a stale leader cannot take the cluster back
    /// after a manager restart.
    #[serde(default)]
    pub highest_term: Option<(u64, String)>,
}

impl ClusterRecord {
    /// The pinned certificate with this fingerprint.
    pub fn certificate(&self, fingerprint: &str) -> Option<&CertRecord> {
        self.certificates
            .iter()
            .find(|c| c.fingerprint_sha256 == fingerprint)
    }
}

/// One session in a cluster's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The manager's id of the session (also in its log lines).
    pub session_id: String,
    /// The node that held it.
    pub node_id: String,
    /// That node's stable name, when its gateway sent one (absent from older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The term it presented (`null` without HA).
    pub term: Option<u64>,
    /// Where it came from, `ip:port`.
    pub remote_addr: String,
    /// When the manager accepted it.
    pub connected_at: String,
    /// When it ended; `null` while live.
    pub disconnected_at: Option<String>,
    /// Why it ended; `null` while live.
    pub close_reason: Option<String>,
}

/// The latest service catalog a cluster announced (`services.update`). Kept after the session
/// ends, so the manager still knows a disconnected cluster's services; `updated_at` says how
/// fresh it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Every service, sorted by name, as the gateway described it.
    pub services: Vec<autogate_proto::ServiceEntry>,
    /// When the manager received it.
    pub updated_at: String,
    /// The node that announced it.
    pub node_id: String,
    /// The session it came with.
    pub session_id: String,
    /// The gateway cut the catalog to fit the frame limit.
    #[serde(default)]
    pub truncated: bool,
    /// The cluster's number of services (more than `services` when truncated).
    #[serde(default)]
    pub total: usize,
}

/// Now, as the manager writes it in records: RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// `2024-12-23T18:03:59.123Z`.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Truncate to milliseconds first so the formatter prints exactly three digits.
    let ms = t.millisecond();
    let t = t.replace_nanosecond(u32::from(ms) * 1_000_000).unwrap_or(t);
    let text = t.format(&Rfc3339).unwrap_or_default();
    // The well-known format drops trailing zero digits; pad back to three.
    match text.strip_suffix('Z').and_then(|s| s.rsplit_once('.')) {
        Some((head, frac)) => format!("{head}.{frac:0<3}Z"),
        None => text
            .strip_suffix('Z')
            .map_or(text.clone(), |head| format!("{head}.000Z")),
    }
}

/// Parses a timestamp written by [`format_rfc3339`].
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The cluster id rule of the configuration (`application.cluster_id`): 1–63 letters, digits,
/// `_`, `.` or `-`. The manager applies the same rule so every id a gateway can have can be
/// registered, and ids are safe in URLs, store keys and log lines.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && id != "." && id != ".." {
        Ok(())
    } else {
        Err(format!(
            "invalid cluster id {:?}: expected 1-63 characters of letters, digits, '_', '.' or '-'",
            truncate(id, 80)
        ))
    }
}

/// Normalises a fingerprint as operators paste it (`AB:CD:…`, upper case, spaces) to the
/// stored form (lower-case hex, no separators); `None` when it is not 32 bytes of hex.
pub fn normalize_fingerprint(raw: &str) -> Option<String> {
    let hex: String = raw
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// At most `max` bytes of `s`, cut at a character boundary (for echoing bad input).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_print() {
        for s in ["enabled", "disabled", "read-only"] {
            assert_eq!(s.parse::<ClusterState>().unwrap().as_str(), s);
        }
        assert_eq!(
            "read_only".parse::<ClusterState>().unwrap(),
            ClusterState::ReadOnly
        );
        let err = "on".parse::<ClusterState>().unwrap_err();
        assert!(err.contains("\"on\"") && err.contains("read-only"), "{err}");
        assert_eq!(
            serde_json::to_string(&ClusterState::ReadOnly).unwrap(),
            "\"read-only\""
        );
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp(1_734_977_039).unwrap();
        assert_eq!(format_rfc3339(t), "2024-12-23T18:03:59.000Z");
        let t = t + time::Duration::milliseconds(120) + time::Duration::microseconds(999);
        assert_eq!(format_rfc3339(t), "2024-12-23T18:03:59.120Z");
        let now = now_rfc3339();
        assert_eq!(now.len(), 24, "{now}");
        assert!(parse_rfc3339(&now).is_some());
    }

    #[test]
    fn cluster_ids_follow_the_config_rule() {
        assert!(check_cluster_id("cluster_1").is_ok());
        assert!(check_cluster_id("a.b-c").is_ok());
        for bad in ["", "a b", "a/b", "..", &"x".repeat(64), "é"] {
            assert!(check_cluster_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_are_normalised() {
        let fp = "ab".repeat(32);
        assert_eq!(normalize_fingerprint(&fp).unwrap(), fp);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons).unwrap(), fp);
        assert!(normalize_fingerprint("abcd").is_none());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_none());
    }
}
