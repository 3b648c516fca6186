//! The one live session of each cluster across every replica of the manager: a claim record at
//! `/manager/live/<cluster>`.
//!
//! A claim names the replica holding the session, the session itself (id, node, term, the
//! history key it is recorded under) and what the page shows of it (the cluster's nodes). It
//! is only ever changed by a store transaction that compares its revision, so two replicas
//! deciding a `hello` for the same cluster at once cannot both win: the loser reads again and
//! decides again. The transaction that accepts a session also writes the history (the new
//! record, and the end of the session it replaces, from one clock reading), so the history never
//! shows two live sessions whatever replica wrote it.
//!
//! A claim is never deleted while its cluster exists: a session that ends leaves the claim
//! *ended* (with when and why), which is how the replica holding a session learns that another
//! replica ended it (an administrator disabled the cluster on another replica, or swept the
//! claims of a replica that died). A claim whose replica is no longer alive is treated as ended.
//!
//! The decision itself is the pure [`SessionTable`] of `autogate-proto`, seeded with the stored
//! highest term and the live claim: one set of rules for one manager and for many replicas.

use autogate_proto::{ConnId, HelloDecision, NodeInfo, SessionTable};
use autogate_store::TxnOp;
use serde::{Deserialize, Serialize};

use crate::model::SessionRecord;

/// Prefix of the claims.
pub const LIVE: &str = "/manager/live/";

/// The connection id a claim stands for in a decision (never a real connection's id: those
/// count up from 1).
pub const CLAIM_CONN: ConnId = ConnId(u64::MAX);

/// Store key of a cluster's claim.
pub fn claim_key(cluster: &str) -> String {
    format!("{LIVE}{cluster}")
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// RFC 3339.
    pub at: String,
    /// The reason recorded in the history.
    pub reason: String,
}

/// A cluster's live session (or its last one, ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The replica holding it.
    pub replica: String,
    /// The manager's id of the session.
    pub session_id: String,
    /// The node holding it.
    pub node_id: String,
    /// Its stable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Its term.
    pub term: Option<u64>,
    /// The gateway's version.
    #[serde(default)]
    pub version: String,
    /// When it was accepted.
    pub connected_at: String,
    /// Where it comes from.
    pub remote_addr: String,
    /// The cluster's nodes, from `hello` and `nodes.update`.
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
    /// The gateway runs services as jobs.
    #[serde(default)]
    pub distributed_execution: bool,
    /// The gateway answers a repeated run id from its record.
    #[serde(default)]
    pub run_dedup: bool,
    /// Its record in the session history.
    pub history_key: String,
    /// The fingerprint of the certificate it presented.
    pub certificate: String,
    /// Why the session it replaced ended (its replica closes it with this reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Set once the session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

impl Claim {
    /// The claim with the session ended now for `reason`.
    pub fn end(&self, at: &str, reason: &str) -> Claim {
        let mut c = self.clone();
        c.ended = Some(Ended {
            at: at.to_owned(),
            reason: reason.to_owned(),
        });
        c.replaced = None;
        c
    }

    /// Its history record, open (`ended: None`) or closed.
    pub fn record(&self, ended: Option<&Ended>) -> SessionRecord {
        SessionRecord {
            session_id: self.session_id.clone(),
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            term: self.term,
            remote_addr: self.remote_addr.clone(),
            connected_at: self.connected_at.clone(),
            disconnected_at: ended.map(|e| e.at.clone()),
            close_reason: ended.map(|e| e.reason.clone()),
        }
    }

    /// The write recording the session's end in the history.
    pub fn closed_op(&self, at: &str, reason: &str) -> TxnOp {
        let ended = Ended {
            at: at.to_owned(),
            reason: reason.to_owned(),
        };
        crate::registry::Registry::session_op(&self.history_key, &self.record(Some(&ended)))
    }

    /// The write storing this claim for `cluster`.
    pub fn put_op(&self, cluster: &str) -> TxnOp {
        TxnOp::put(claim_key(cluster), encode(self))
    }
}

fn encode(c: &Claim) -> Vec<u8> {
    // Strings, numbers and options only: serialisation cannot fail.
    serde_json::to_vec(c).unwrap_or_default()
}

/// Decides a `hello` against the stored state of its cluster: the highest term seen and the
/// claim of the live session, if one is live (not ended, held by a live replica). On
/// acceptance, `replace` carries the close reason of the live session when there was one.
pub fn decide(
    cluster: &str,
    highest: Option<&(u64, String)>,
    live: Option<&Claim>,
    node_id: &str,
    term: Option<u64>,
    conn: ConnId,
) -> HelloDecision {
    let mut table = SessionTable::new();
    if let Some((t, n)) = highest {
        table.restore_highest_term(cluster, *t, n);
    }
    if let Some(c) = live {
        table.restore_live(cluster, CLAIM_CONN, &c.node_id, c.term);
    }
    table.on_hello(cluster, node_id, term, conn, std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(node: &str, term: Option<u64>) -> Claim {
        Claim {
            replica: "r1".into(),
            session_id: "s1".into(),
            node_id: node.into(),
            node_name: None,
            term,
            version: "1".into(),
            connected_at: "2026-01-01T00:00:00.000Z".into(),
            remote_addr: "127.0.0.1:1".into(),
            nodes: vec![],
            distributed_execution: false,
            run_dedup: true,
            history_key: "/manager/sessions/c/1".into(),
            certificate: "ab".into(),
            replaced: None,
            ended: None,
        }
    }

    #[test]
    fn the_stored_state_decides_like_one_manager() {
        let highest = (7, "X".to_owned());
        let live = claim("X", Some(7));
        // Same node, same term: its new connection wins (a half-open old one, or a replica
        // that died under it).
        match decide("c", Some(&highest), Some(&live), "X", Some(7), ConnId(1)) {
            HelloDecision::Accept {
                replace: Some((CLAIM_CONN, why)),
            } => assert!(why.contains("new connection from node X"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Another node with the same term: refused, naming the holder.
        match decide("c", Some(&highest), Some(&live), "Y", Some(7), ConnId(1)) {
            HelloDecision::Refuse { reason } => assert!(reason.contains("node X"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A stale leader is refused even with no live session.
        assert!(matches!(
            decide("c", Some(&highest), None, "Y", Some(3), ConnId(1)),
            HelloDecision::Refuse { .. }
        ));
        // A higher term replaces.
        assert!(matches!(
            decide("c", Some(&highest), Some(&live), "Y", Some(8), ConnId(1)),
            HelloDecision::Accept { replace: Some(_) }
        ));
    }

    #[test]
    fn an_ended_claim_round_trips_and_closes_its_record() {
        let c = claim("X", None).end("2026-01-01T00:00:01.000Z", "gone");
        let back: Claim = serde_json::from_slice(&encode(&c)).unwrap();
        assert_eq!(back, c);
        let rec = c.record(c.ended.as_ref());
        assert_eq!(rec.close_reason.as_deref(), Some("gone"));
    }
}
