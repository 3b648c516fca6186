//! Node identity: `<hostname>_<uuid v7>`, new at each process start, so that two runs of the same
//! host are never confused in the election, in the manager's session history or in logs. UUID v7
//! keeps ids roughly ordered by start time, which makes logs easier to read.

use std::fmt;

/// The identity of this process within its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// A fresh id for this process start.
    pub fn generate() -> Self {
        Self::with_host(&hostname())
    }

    /// A fresh id with the given host part (tests and simulated nodes).
    pub fn with_host(host: &str) -> Self {
        NodeId(format!("{}_{}", sanitize(host), uuid::Uuid::now_v7()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The machine's host name, read without `unsafe` from the kernel, then the environment.
pub fn hostname() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Keep ids safe to embed in etcd keys, log lines and URLs: anything outside `[A-Za-z0-9.-]`
/// becomes `-` (the `_` is reserved as the separator before the UUID).
fn sanitize(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "localhost".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_has_host_and_uuid_v7() {
        let id = NodeId::with_host("gw-1");
        let (host, uuid) = id.as_str().split_once('_').expect("separator");
        assert_eq!(host, "gw-1");
        let parsed = uuid::Uuid::parse_str(uuid).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
    }

    #[test]
    fn ids_are_unique_per_start() {
        assert_ne!(NodeId::with_host("a"), NodeId::with_host("a"));
    }

    #[test]
    fn host_is_sanitized() {
        let id = NodeId::with_host("my host_1/x");
        assert!(id.as_str().starts_with("my-host-1-x_"), "{id}");
    }
}
