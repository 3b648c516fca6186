//! A replica's copy of one cluster's [`Members`], and how its changes reach the store without
//! undoing another replica's.
//!
//! Two replicas can change one cluster's memory at once: the holder of its session records who
//! left while an operator's "forget" lands on another replica. Writing the whole copy would let
//! the last writer undo the other's change. So a copy keeps the changes it made that are not
//! stored yet ([`Change`]), and the revision of the stored record its view starts from. A write
//! is a transaction on that revision; when another replica wrote first, its record is taken and
//! the pending changes are replayed on top of it, then written again. A record that arrives
//! through the watch is treated the same way. Changes are replayed with the time they were made
//! at, so a replay decides as the first application did.
//!
//! No I/O here: the hub drives it (`Hub::write_members`).

use std::collections::VecDeque;

use autogate_proto::{Departed, NodeInfo};
use autogate_store::Revision;

use crate::members::{Absence, AbsentNode, ForgetError, Members};

/// Changes kept for a replay at most; older ones are dropped (their effect stays in the view,
/// but a conflicting write by another replica then wins over them). Reached only when the
/// store refuses writes for a long time.
const MAX_PENDING: usize = 256;

/// One change a replica made to a cluster's memory.
#[derive(Debug, Clone)]
pub enum Change {
    /// A membership reported by the cluster's session.
    Observe {
        nodes: Vec<NodeInfo>,
        departed: Vec<Departed>,
        at: String,
    },
    /// A session ended and its node left with it.
    SessionEnded {
        node_id: String,
        status: Absence,
        reason: String,
        at: String,
    },
    /// The operator forgot a node that left.
    Forget { node_id: String },
}

impl Change {
    /// Applies the change; returns whether what the manager shows changed.
    fn apply(&self, m: &mut Members) -> bool {
        match self {
            Change::Observe {
                nodes,
                departed,
                at,
            } => m.observe(nodes, departed, at),
            Change::SessionEnded {
                node_id,
                status,
                reason,
                at,
            } => {
                m.session_ended(node_id, *status, reason, at);
                true
            }
            // Forgotten already (by another replica), or back: nothing to do.
            Change::Forget { node_id } => m.forget(node_id).is_ok(),
        }
    }
}

/// A write under way: what was sent, and how many pending changes it holds.
#[derive(Debug)]
struct InFlight {
    value: Vec<u8>,
    changes: usize,
}

/// One cluster's memory as this replica sees it.
#[derive(Debug, Default)]
pub struct MembersCopy {
    /// The stored record at `base`, with `pending` applied.
    view: Members,
    /// Revision of the stored record the view starts from (0: none stored).
    base: Revision,
    /// Changes made here and not stored yet, oldest first.
    pending: VecDeque<Change>,
    in_flight: Option<InFlight>,
    /// A write whose answer was lost: it may have been stored, which its record, seen again,
    /// tells.
    uncertain: Option<InFlight>,
}

/// A write of a copy: the record, and the revision of the record it must replace.
#[derive(Debug)]
pub struct Write {
    pub value: Vec<u8>,
    pub base: Revision,
}

impl MembersCopy {
    /// The stored record `m` at revision `rev`.
    pub fn stored(m: Members, rev: Revision) -> MembersCopy {
        MembersCopy {
            view: m,
            base: rev,
            ..MembersCopy::default()
        }
    }

    /// The view, for reading (and for reads that prune, which the store need not see).
    pub fn view(&mut self) -> &mut Members {
        &mut self.view
    }

    /// Makes a change; returns (whether what is shown changed, whether it must be written).
    pub fn change(&mut self, change: Change) -> (bool, bool) {
        let before = serde_json::to_vec(&self.view).unwrap_or_default();
        let shown = change.apply(&mut self.view);
        let differs = serde_json::to_vec(&self.view).unwrap_or_default() != before;
        if differs {
            self.push(change);
        }
        (shown, differs)
    }

    fn push(&mut self, change: Change) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            for f in [&mut self.in_flight, &mut self.uncertain]
                .into_iter()
                .flatten()
            {
                f.changes = f.changes.saturating_sub(1);
            }
        }
        self.pending.push_back(change);
    }

    /// Forgets a node that left.
    pub fn forget(&mut self, node_id: &str) -> Result<AbsentNode, ForgetError> {
        let forgotten = self.view.forget(node_id)?;
        self.push(Change::Forget {
            node_id: node_id.to_owned(),
        });
        Ok(forgotten)
    }

    /// The write to make now, if any change is pending and no write is under way.
    pub fn to_write(&mut self) -> Option<Write> {
        if self.pending.is_empty() || self.in_flight.is_some() {
            return None;
        }
        let value = serde_json::to_vec(&self.view).unwrap_or_default();
        self.in_flight = Some(InFlight {
            value: value.clone(),
            changes: self.pending.len(),
        });
        Some(Write {
            value,
            base: self.base,
        })
    }

    /// The write from [`MembersCopy::to_write`] was stored at `rev`.
    pub fn written(&mut self, rev: Revision) {
        if let Some(f) = self.in_flight.take() {
            self.pending.drain(..f.changes.min(self.pending.len()));
        }
        self.base = self.base.max(rev);
    }

    /// The write was refused (another replica wrote first): its changes stay pending.
    pub fn not_written(&mut self) {
        self.in_flight = None;
    }

    /// The write's answer was lost: its changes stay pending unless its record shows up.
    pub fn maybe_written(&mut self) {
        self.uncertain = self.in_flight.take();
    }

    /// The stored record is `m` at `rev` (seen by the watch, or read after a refused write).
    /// Returns whether the view changed; a record not newer than the view's is ignored.
    pub fn observe_stored(&mut self, m: Members, value: &[u8], rev: Revision) -> bool {
        if rev <= self.base {
            return false;
        }
        if self.in_flight.as_ref().is_some_and(|f| f.value == value) {
            // This replica's own write, seen before its answer.
            self.written(rev);
            return false;
        }
        if let Some(f) = self.uncertain.take() {
            if f.value == value {
                // A write whose answer was lost was stored after all.
                self.pending.drain(..f.changes.min(self.pending.len()));
                self.base = rev;
                return false;
            }
        }
        self.view = m;
        self.base = rev;
        for c in &self.pending {
            c.apply(&mut self.view);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use autogate_proto::Role;

    fn node(id: &str, name: &str) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            name: Some(name.into()),
            role: Role::Standby,
            is_primary: false,
            address: None,
            manager_reachable: None,
            running: None,
            capacity: None,
        }
    }

    fn observe(nodes: &[NodeInfo], at: &str) -> Change {
        Change::Observe {
            nodes: nodes.to_vec(),
            departed: Vec::new(),
            at: at.into(),
        }
    }

    /// A write as the store takes it: only on the revision it was made on.
    fn store_write(store: &mut (Revision, Vec<u8>), w: &Write) -> Option<Revision> {
        (w.base == store.0).then(|| {
            *store = (store.0 + 1, w.value.clone());
            store.0
        })
    }

    fn ids(c: &mut MembersCopy) -> Vec<String> {
        c.view().absent().into_iter().map(|a| a.node_id).collect()
    }

    #[test]
    fn a_forget_and_a_departure_on_two_replicas_both_stay() {
        let (a, b, c) = (node("a", "n-a"), node("b", "n-b"), node("c", "n-c"));
        // Both replicas start from one stored record: a left, b and c present.
        let mut first = MembersCopy::default();
        first.change(observe(&[a.clone(), b.clone(), c.clone()], "t1"));
        first.change(observe(&[b.clone(), c.clone()], "t2"));
        let w = first.to_write().unwrap();
        let mut store = (0, Vec::new());
        first.written(store_write(&mut store, &w).unwrap());
        let stored: Members = serde_json::from_slice(&store.1).unwrap();
        let mut holder = MembersCopy::stored(stored.clone(), store.0);
        let mut other = MembersCopy::stored(stored, store.0);

        // The operator forgets a on one replica; the holder records that b left.
        other.forget("a").unwrap();
        holder.change(observe(std::slice::from_ref(&c), "t3"));
        let w = other.to_write().unwrap();
        let rev = store_write(&mut store, &w).unwrap();
        other.written(rev);
        // The holder's write was made on the old record: refused, it takes the new one,
        // replays its change and writes again.
        let w = holder.to_write().unwrap();
        assert!(store_write(&mut store, &w).is_none());
        holder.not_written();
        let m: Members = serde_json::from_slice(&store.1).unwrap();
        assert!(holder.observe_stored(m, &store.1.clone(), store.0));
        let w = holder.to_write().unwrap();
        holder.written(store_write(&mut store, &w).unwrap());
        assert!(holder.to_write().is_none(), "nothing left to write");

        // Both changes are stored; the other replica's watch brings it the holder's.
        let m: Members = serde_json::from_slice(&store.1).unwrap();
        assert!(other.observe_stored(m, &store.1.clone(), store.0));
        assert_eq!(ids(&mut holder), ["b"]);
        assert_eq!(ids(&mut other), ["b"]);
    }

    #[test]
    fn its_own_write_seen_before_the_answer_is_not_replayed() {
        let (a, b) = (node("a", "n-a"), node("b", "n-b"));
        let mut copy = MembersCopy::default();
        copy.change(observe(&[a.clone(), b.clone()], "t1"));
        copy.change(observe(std::slice::from_ref(&b), "t2"));
        let w = copy.to_write().unwrap();
        // A change made while the write is under way stays pending after it.
        copy.change(observe(&[], "t3"));
        let m: Members = serde_json::from_slice(&w.value).unwrap();
        assert!(!copy.observe_stored(m, &w.value, 5));
        copy.written(5);
        let next = copy.to_write().unwrap();
        assert_eq!(next.base, 5);
        assert_eq!(ids(&mut copy), ["b", "a"]);
    }

    #[test]
    fn a_write_whose_answer_was_lost_is_recognised_when_seen() {
        let (a, b) = (node("a", "n-a"), node("b", "n-b"));
        let mut copy = MembersCopy::default();
        copy.change(observe(&[a.clone(), b.clone()], "t1"));
        let w = copy.to_write().unwrap();
        copy.maybe_written();
        copy.change(observe(std::slice::from_ref(&b), "t2"));
        // It was stored: only the change made after it is still to write.
        let m: Members = serde_json::from_slice(&w.value).unwrap();
        assert!(!copy.observe_stored(m, &w.value, 4));
        let next = copy.to_write().unwrap();
        assert_eq!(next.base, 4);
        copy.written(5);
        assert!(copy.to_write().is_none());
        assert_eq!(ids(&mut copy), ["a"]);
    }

    #[test]
    fn an_older_record_is_ignored_and_a_no_op_is_not_written() {
        let a = node("a", "n-a");
        let mut copy = MembersCopy::default();
        copy.change(observe(std::slice::from_ref(&a), "t1"));
        let w = copy.to_write().unwrap();
        copy.written(3);
        assert!(!copy.observe_stored(Members::default(), &w.value, 3));
        // The same membership again changes nothing stored.
        assert_eq!(copy.change(observe(&[a], "t2")), (false, false));
        assert!(copy.to_write().is_none());
        // A forget of a node that is not there is refused and pends nothing.
        assert!(copy.forget("zz").is_err());
        assert!(copy.to_write().is_none());
    }
}
