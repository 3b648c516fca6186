//! Node identity: `<hostname>_<uuid v7>`, new at each process start, so that two runs of the same
//! host are never confused in the election, in the manager's session history or in logs. UUID v7
//! keeps ids roughly ordered by start time, which makes logs easier to read.
//!
//! Because the id changes at every start, people need something that does not: each node also
//! has a **name** (`[application] node_name`; by default the CN of the certificate the node
//! presents to the manager, else the host name), which the manager, the HA status and the
//! cluster commands show next to the id. A restarted node gets a new id and keeps its name.

use std::fmt;

/// The longest node name kept (longer names are cut at a character boundary): names end up in
/// table cells, log lines and the manager's page.
pub const MAX_NAME_LEN: usize = 128;

/// The identity of this process within its cluster, with the node's stable name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    id: String,
    name: String,
}

impl NodeId {
    /// A fresh id for this process start, named after the host until [`NodeId::named`].
    pub fn generate() -> Self {
        Self::with_host(&hostname())
    }

    /// A fresh id with the given host part (tests and simulated nodes), named after that host.
    pub fn with_host(host: &str) -> Self {
        NodeId {
            id: format!("{}_{}", sanitize(host), uuid::Uuid::now_v7()),
            name: clean_name(host).unwrap_or_else(|| "localhost".to_owned()),
        }
    }

    /// The same id with another stable name (cleaned by [`clean_name`]; an empty name keeps
    /// the current one).
    pub fn named(mut self, name: &str) -> Self {
        if let Some(name) = clean_name(name) {
            self.name = name;
        }
        self
    }

    /// `<hostname>_<uuid v7>`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The node's stable name (the same across restarts).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A node name as it is shown: surrounding spaces removed, control characters (a name travels
/// in log lines and table cells) replaced by spaces, at most [`MAX_NAME_LEN`] bytes. `None`
/// when nothing is left.
pub fn clean_name(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = cleaned.len().min(MAX_NAME_LEN);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    let name = cleaned[..end].trim_end();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The name a node goes by when `[application] node_name` is not set: the common name of the
/// certificate it presents to the manager (`cert_cn`, when it has one), else the host name. The
/// certificate's CN is what the manager's operator registered the node under; the host name is
/// what its administrator knows it by.
pub fn default_name(cert_cn: Option<&str>) -> String {
    cert_cn
        .and_then(clean_name)
        .or_else(|| clean_name(&hostname()))
        .unwrap_or_else(|| "localhost".to_owned())
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
    fn the_name_stays_when_the_id_changes() {
        let a = NodeId::with_host("gw-1").named("core-1");
        let b = NodeId::with_host("gw-1").named("core-1");
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!((a.name(), b.name()), ("core-1", "core-1"));
        assert_eq!(
            NodeId::with_host("gw-1").name(),
            "gw-1",
            "named after the host"
        );
        assert_eq!(NodeId::with_host("gw-1").named("  ").name(), "gw-1");
        assert_eq!(a.to_string(), a.as_str(), "Display is the id");
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name(" core 1\n").as_deref(), Some("core 1"));
        assert_eq!(clean_name("a\u{7}b").as_deref(), Some("a b"));
        assert_eq!(clean_name("\t \n"), None);
        let long = "é".repeat(100);
        let cut = clean_name(&long).unwrap();
        assert!(
            cut.len() <= MAX_NAME_LEN && cut.chars().all(|c| c == 'é'),
            "{cut}"
        );
        assert_eq!(default_name(Some("core-2")), "core-2");
        assert_eq!(default_name(Some(" ")), default_name(None));
        assert!(!default_name(None).is_empty());
    }

    #[test]
    fn host_is_sanitized() {
        let id = NodeId::with_host("my host_1/x");
        assert!(id.as_str().starts_with("my-host-1-x_"), "{id}");
    }
}
