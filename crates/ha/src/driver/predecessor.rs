//! A restarted core node clears its predecessor: the process that held the same working
//! directory before (named by its state file, see [`crate::workdir`]) is gone — the directory's
//! lock proves it — so if its lease still holds its election key, nobody will resign it; as the
//! active node's, that key would keep the standbys waiting for the lease to expire. The new
//! process revokes that lease at start, so a standby takes over within a watch round trip, or
//! the dead process's place in the queue is freed.
//!
//! Only a lease the store shows as this host's predecessor's is revoked: its election key (value
//! = the predecessor's node id) or its node record must still be bound to it. A lease that is
//! gone, or that holds anything else, is left alone.

use autogate_store::{LeaseId, Store, StoreError, Txn, TxnOp, TxnOpResponse};

use super::keys::{election_prefix, nodes_prefix};
use crate::workdir::ProcessState;

/// Revokes the lease of this node's previous process when the store shows it still holding that
/// process's election key or node record. `node_id` and `cluster_id` are this process's. Returns
/// the lease revoked, if any; the revocation is logged.
pub async fn revoke_predecessor(
    store: &dyn Store,
    cluster_id: &str,
    node_id: &str,
    previous: &ProcessState,
) -> Result<Option<LeaseId>, StoreError> {
    let Some(lease) = previous.lease_to_clear(node_id, cluster_id) else {
        return Ok(None);
    };
    let key = format!("{}/{lease:x}", election_prefix(cluster_id));
    let record = format!("{}{}", nodes_prefix(cluster_id), previous.node_id);
    let read = store
        .txn(Txn::new().and_then([TxnOp::get(&key), TxnOp::get(&record)]))
        .await?;
    let bound = |i: usize, value: Option<&[u8]>| match read.responses.get(i) {
        Some(TxnOpResponse::Get(kvs)) => kvs
            .iter()
            .any(|kv| kv.lease == lease && value.is_none_or(|v| kv.value == v)),
        _ => false,
    };
    let in_election = bound(0, Some(previous.node_id.as_bytes()));
    if !in_election && !bound(1, None) {
        tracing::debug!(
            "previous process of this node (node id {}, lease {lease:x}) left nothing in the store",
            previous.node_id
        );
        return Ok(None);
    }
    match store.revoke(lease).await {
        Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    tracing::warn!(
        "revoked the lease of this node's previous process (node id {}, lease {lease:x}): it ended without resigning{}",
        previous.node_id,
        if in_election {
            ", and its election key is gone with it"
        } else {
            ""
        }
    );
    Ok(Some(lease))
}
