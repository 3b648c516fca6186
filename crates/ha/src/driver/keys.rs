//! Where the election lives in the store. `/autogate/<cluster>/election/<lease id in lower-case
//! hex>` = node id is a candidate key (created with `create_revision == 0`, bound to the lease);
//! `/autogate/<cluster>/nodes/<node id>` = the node record as JSON, bound to the same lease, so
//! a node's record disappears with its lease.

use serde::{Deserialize, Serialize};

use crate::machine::{NodeRecord, Role};

/// `/autogate/<cluster_id>/election` (candidate keys live below it, after a `/`).
pub fn election_prefix(cluster_id: &str) -> String {
    format!("/autogate/{cluster_id}/election")
}

/// `/autogate/<cluster_id>/nodes/`.
pub fn nodes_prefix(cluster_id: &str) -> String {
    format!("/autogate/{cluster_id}/nodes/")
}

/// The node record as stored (the machine's record plus what only the driver knows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredRecord {
    address: Option<String>,
    is_primary: bool,
    version: String,
    role: Role,
    manager_reachable: bool,
    paused: bool,
    healthy: bool,
    /// Wall clock (Unix milliseconds) since which the node has been healthy.
    healthy_since: Option<u64>,
    #[serde(default)]
    handover_to: Option<String>,
    /// A primary held off by a switchover; absent from records of older nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    preempt_hold: bool,
    /// The node's stable name; absent from records of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl StoredRecord {
    /// What this node publishes: the machine's record, the software version, and since when
    /// (wall clock) it has been healthy. The node id is the key's last segment.
    pub(super) fn new(
        record: NodeRecord,
        version: String,
        name: Option<String>,
        healthy_since: Option<u64>,
    ) -> Self {
        StoredRecord {
            address: record.address,
            is_primary: record.is_primary,
            version,
            role: record.role,
            manager_reachable: record.manager_reachable,
            paused: record.paused,
            healthy: record.healthy,
            healthy_since,
            handover_to: record.handover_to,
            preempt_hold: record.preempt_hold,
            name,
        }
    }

    /// The machine's view of the record stored for `node_id`.
    pub(super) fn into_record(self, node_id: String) -> NodeRecord {
        NodeRecord {
            node_id,
            address: self.address,
            is_primary: self.is_primary,
            role: self.role,
            manager_reachable: self.manager_reachable,
            paused: self.paused,
            healthy: self.healthy,
            handover_to: self.handover_to,
            preempt_hold: self.preempt_hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_optional_in_stored_records() {
        let record = NodeRecord {
            node_id: "gw_1".into(),
            address: None,
            is_primary: false,
            role: Role::Standby,
            manager_reachable: true,
            paused: false,
            healthy: true,
            handover_to: None,
            preempt_hold: false,
        };
        let named = StoredRecord::new(record.clone(), "v".into(), Some("core-1".into()), None);
        let v = serde_json::to_value(&named).unwrap();
        assert_eq!(v["name"], "core-1");
        // A record of an older node has no name, and one without a name writes none.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("name");
        let read: StoredRecord = serde_json::from_value(old).unwrap();
        assert_eq!(read.into_record("gw_1".into()), record);
        let unnamed = StoredRecord::new(record, "v".into(), None, None);
        assert!(serde_json::to_value(&unnamed)
            .unwrap()
            .get("name")
            .is_none());
    }
}
