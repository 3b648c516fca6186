//! The messages of the manager link: method names, the `hello` handshake and node
//! descriptions.
//!
//! The first frame a gateway sends is the request [`method::HELLO`] with [`Hello`] params; the
//! manager answers [`HelloAccepted`] or an error ([`crate::SESSION_REFUSED`] or
//! [`crate::NOT_ALLOWED`]) whose message says why. Unknown fields are ignored on input so either
//! side can add fields without breaking the other.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jsonrpc::{Notification, Request, RpcError};

/// Method names used on the link.
pub mod method {
    /// Gateway → manager, first frame: [`super::Hello`] params.
    pub const HELLO: &str = "hello";
    /// Either side: liveness check, answered with any result (`{}` by convention).
    pub const PING: &str = "ping";
    /// Manager → gateway: the cluster's health.
    pub const CLUSTER_HEALTH: &str = "cluster.health";
    /// Manager → gateway: the services the cluster offers.
    pub const SERVICES_LIST: &str = "services.list";
    /// Manager → gateway: run a service.
    pub const SERVICE_RUN: &str = "service.run";
    /// Gateway → manager notification: the membership changed ([`super::NodesUpdate`] params).
    pub const NODES_UPDATE: &str = "nodes.update";
    /// Gateway → manager notification: the cluster's full service catalog
    /// ([`crate::ServicesUpdate`] params), after `hello` and whenever it changes.
    pub const SERVICES_UPDATE: &str = "services.update";
}

/// The role of a node in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The core node holding leadership (and the manager connection).
    Active,
    /// A core node ready to take over.
    Standby,
    /// A core node that does not stand for election (maintenance).
    Paused,
    /// An execution-only node.
    Runner,
}

/// One node of a cluster as the manager shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `<hostname>_<uuid v7>`: new at every start of the node.
    pub node_id: String,
    /// The node's stable name (`[application] node_name`, by default its certificate's CN or
    /// its host name): the same after a restart, so the manager can tell a node that came back
    /// from a new one. Absent from gateways older than the field; see [`NodeInfo::shown_name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its role.
    pub role: Role,
    /// `SERVER_HA_IS_PRIMARY` of a core node.
    #[serde(default)]
    pub is_primary: bool,
    /// Where its API listens (`host:port`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether this node can currently reach the manager (core nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_reachable: Option<bool>,
    /// Jobs running now (runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    /// How many jobs it runs at once (runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

/// Longest identifier accepted in a hello (cluster and node ids end up in logs and pages).
pub const MAX_ID_LEN: usize = 256;

/// Longest node name shown; a longer one is shown cut.
pub const MAX_NAME_LEN: usize = 128;

impl NodeInfo {
    /// The name to show: the node's name when it sent a usable one (not blank, no control
    /// characters, cut to [`MAX_NAME_LEN`] bytes), else `None` and the reader shows the id. A
    /// bad name is not a reason to refuse a session: it is only not shown.
    pub fn shown_name(&self) -> Option<&str> {
        shown_name(self.name.as_deref())
    }
}

/// [`NodeInfo::shown_name`] of any name a gateway sent.
pub fn shown_name(name: Option<&str>) -> Option<&str> {
    let name = name?.trim();
    if name.is_empty() || name.chars().any(char::is_control) {
        return None;
    }
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(&name[..end])
}

/// A node that left the cluster cleanly (it said so before it stopped), as the active node
/// reports it next to the membership it sends: the manager then shows a node that is no longer
/// listed as *stopped* rather than *lost*. Reported for a few minutes after it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// Its id.
    pub node_id: String,
    /// Its name, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it announced its stop (RFC 3339, the leaving node's clock).
    pub at: String,
}

/// Params of the `hello` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// `GATEWAY_APPLICATION_CLUSTER_ID`.
    pub cluster_id: String,
    /// The sending core node.
    pub node_id: String,
    /// Fencing token (the leader key's create revision); `null` when HA is off.
    pub term: Option<u64>,
    /// The gateway's version.
    pub version: String,
    /// The cluster's nodes as the sender sees them.
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
    /// The cluster runs services as jobs on runners (distributed execution): a `service.run`
    /// outlives the session it came on, and its answer arrives on the cluster's next session
    /// when this one ends first. Absent (false) from gateways that run services themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distributed_execution: bool,
    /// Nodes that left the cluster cleanly a short while ago (see [`Departed`]). Absent from
    /// older gateways: the manager then cannot tell a clean stop from a loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<Departed>,
    /// The gateway keeps a record of every `service.run` by its id (the request's JSON-RPC id,
    /// also `run_id` in its params) and answers a repeated id from that record instead of
    /// running it again: the manager may then send every unanswered run again on each new
    /// session. Absent (false) from older gateways, which the manager never sends a run twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_dedup: bool,
}

impl Hello {
    /// Reads and validates hello params; the error is the −32602 to answer with.
    pub fn from_params(params: Option<&Value>) -> Result<Hello, RpcError> {
        let hello: Hello = crate::jsonrpc::parse_params(params)?;
        hello.validate()?;
        Ok(hello)
    }

    /// Checks identifiers are non-empty, short and printable.
    pub fn validate(&self) -> Result<(), RpcError> {
        check_id("cluster_id", &self.cluster_id)?;
        check_id("node_id", &self.node_id)?;
        for node in &self.nodes {
            check_id("nodes[].node_id", &node.node_id)?;
        }
        Ok(())
    }

    /// The `hello` request carrying these params.
    pub fn to_request(&self, id: impl Into<crate::jsonrpc::Id>) -> Request {
        Request::new(id, method::HELLO, Some(to_value(self)))
    }
}

fn check_id(field: &str, value: &str) -> Result<(), RpcError> {
    if value.trim().is_empty() {
        return Err(RpcError::invalid_params(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > MAX_ID_LEN {
        return Err(RpcError::invalid_params(format!(
            "{field} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// The manager's successful answer to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAccepted {
    /// Always `true` (kept for readers that only look at this flag).
    pub accepted: bool,
    /// Identifies the session in the manager's logs and API.
    pub session_id: String,
    /// The largest frame the manager accepts (its `manager.max_frame_size`), so the gateway
    /// can keep run results and catalogs under it instead of having the session closed with
    /// 1009. Absent from older managers: assume [`ASSUMED_PEER_FRAME_LEN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<u64>,
}

/// The frame limit a gateway assumes when the manager does not announce one (the manager's
/// default `max_frame_size`).
pub const ASSUMED_PEER_FRAME_LEN: usize = 1 << 20;

impl HelloAccepted {
    /// An acceptance with this session id.
    pub fn new(session_id: impl Into<String>) -> Self {
        HelloAccepted {
            accepted: true,
            session_id: session_id.into(),
            max_frame_size: None,
        }
    }

    /// The same acceptance announcing the manager's frame limit.
    pub fn with_max_frame_size(mut self, max: usize) -> Self {
        self.max_frame_size = u64::try_from(max).ok();
        self
    }

    /// The frame limit the gateway must respect on this session.
    pub fn peer_frame_limit(&self) -> usize {
        self.max_frame_size
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(ASSUMED_PEER_FRAME_LEN)
    }
}

/// Params of the `nodes.update` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesUpdate {
    /// The cluster's nodes, complete (not a delta).
    pub nodes: Vec<NodeInfo>,
    /// Nodes that left cleanly a short while ago, complete too (see [`Hello::departed`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<Departed>,
}

impl NodesUpdate {
    /// The notification carrying these params.
    pub fn to_notification(&self) -> Notification {
        Notification::new(method::NODES_UPDATE, Some(to_value(self)))
    }
}

/// Serializes one of this module's types. They hold only strings, numbers, booleans and
/// options, so serialization cannot fail; `Null` is returned rather than panicking if it ever
/// did.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_departures_are_optional_both_ways() {
        // A node info and an update from a gateway older than the fields.
        let old: NodeInfo =
            serde_json::from_value(serde_json::json!({"node_id": "a_1", "role": "standby"}))
                .unwrap();
        assert_eq!((old.name.as_deref(), old.shown_name()), (None, None));
        let update: NodesUpdate =
            serde_json::from_value(serde_json::json!({"nodes": [to_value(&old)]})).unwrap();
        assert!(update.departed.is_empty());
        // Absent fields are not sent, so an older manager sees what it always saw.
        let v = to_value(&update);
        assert!(
            v.get("departed").is_none() && v["nodes"][0].get("name").is_none(),
            "{v}"
        );

        let named = NodeInfo {
            name: Some("core-1".into()),
            ..old
        };
        let update = NodesUpdate {
            nodes: vec![named],
            departed: vec![Departed {
                node_id: "b_2".into(),
                name: Some("core-2".into()),
                at: "2026-01-01T00:00:00Z".into(),
            }],
        };
        let back: NodesUpdate = serde_json::from_value(to_value(&update)).unwrap();
        assert_eq!(back, update);
        assert_eq!(back.nodes[0].shown_name(), Some("core-1"));
    }

    #[test]
    fn only_usable_names_are_shown() {
        assert_eq!(shown_name(Some(" core-1 ")), Some("core-1"));
        assert_eq!(shown_name(Some("  ")), None);
        assert_eq!(shown_name(Some("a\u{1b}[31mb")), None);
        let long = "x".repeat(300);
        assert_eq!(shown_name(Some(&long)).map(str::len), Some(MAX_NAME_LEN));
    }

    #[test]
    fn the_frame_limit_is_announced_and_assumed_when_absent() {
        let old: HelloAccepted =
            serde_json::from_value(serde_json::json!({"accepted": true, "session_id": "s"}))
                .unwrap();
        assert_eq!(old.peer_frame_limit(), ASSUMED_PEER_FRAME_LEN);
        let new = HelloAccepted::new("s").with_max_frame_size(4096);
        let v = to_value(&new);
        assert_eq!(v["max_frame_size"], 4096);
        let back: HelloAccepted = serde_json::from_value(v).unwrap();
        assert_eq!(back.peer_frame_limit(), 4096);
        assert!(to_value(&HelloAccepted::new("s"))
            .get("max_frame_size")
            .is_none());
    }
}
