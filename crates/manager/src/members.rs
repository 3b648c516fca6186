//! What the manager remembers of a cluster's nodes beyond its live membership.
//!
//! A node's id changes at every start, and the active node only reports the nodes that are
//! there now, so a crashed node would simply vanish from the page. The manager therefore keeps,
//! per cluster, the nodes that *left*: **stopped** when the node announced a clean stop before
//! it went (the gateway reports such departures next to its membership, and a session its node
//! closed itself), **lost** when it vanished without one (crash, kill, cut off from its store or
//! from the manager) — each with when it was last seen. A left node stays listed until a node
//! with the same name joins again (it is *back*: the new node shows from what and since when),
//! until the operator forgets it, or for [`RETENTION`]. Nodes without a name (gateways older
//! than names) are matched by id only, so a restarted one stays listed until forgotten.
//!
//! The memory is kept in the store (`/manager/members/<cluster>`), written behind each change by
//! the replica that made it and copied by the others through the store watch, so every replica
//! shows the same nodes and a manager restart keeps them. Retention counts from the recorded
//! wall-clock times (`last_seen`, `back_at`), which cross processes and restarts alike; a
//! record whose time cannot be read is kept until it is forgotten.

use std::collections::BTreeMap;
use std::time::Duration;

use autogate_proto::{Departed, NodeInfo, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::parse_rfc3339;

/// Prefix of the stored memories: `/manager/members/<cluster>`.
pub const MEMBERS: &str = "/manager/members/";

/// Store key of a cluster's memory.
pub fn members_key(cluster: &str) -> String {
    format!("{MEMBERS}{cluster}")
}

/// How long a node that left stays listed when it does not come back and is not forgotten.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How a node left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Absence {
    /// It said it was stopping before it went.
    Stopped,
    /// It vanished without saying so.
    Lost,
}

/// A node that left the cluster, as the API shows it (`absent_nodes` of a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsentNode {
    /// Its id when it left.
    pub node_id: String,
    /// Its stable name, when it had one.
    pub name: Option<String>,
    /// Its last reported role.
    pub role: Role,
    /// `stopped` or `lost`.
    pub status: Absence,
    /// When the manager last knew it present (RFC 3339): the moment its absence was reported.
    pub last_seen: String,
    /// Why, in plain words.
    pub reason: String,
}

/// Where a node that came back under a new id (or after being lost) came from, shown next to it
/// (`back` of a node in a cluster's `nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    /// The id it had before.
    pub previous_node_id: String,
    /// How it had left.
    pub was: Absence,
    /// When it was last seen before.
    pub last_seen: String,
    /// When it was seen again (RFC 3339).
    pub back_at: String,
}

/// Why a node cannot be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    /// It is in the live membership: there is nothing to forget.
    #[error("node {0} is present in the cluster; only a node that left can be forgotten")]
    Present(String),
    /// No left node has that id.
    #[error("node {0} is not among the nodes that left the cluster")]
    Unknown(String),
}

/// The memory of one cluster's nodes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Members {
    /// The latest membership, by id.
    #[serde(default)]
    present: BTreeMap<String, NodeInfo>,
    /// Nodes that left, oldest first.
    #[serde(default)]
    absent: Vec<AbsentNode>,
    /// Nodes present now that came back, by their current id.
    #[serde(default)]
    returns: BTreeMap<String, Return>,
}

fn is_runner(role: Role) -> bool {
    role == Role::Runner
}

impl Members {
    /// A new membership reported at `now` (RFC 3339) with the clean `departed` of late. Returns
    /// whether what the manager shows changed (a node left or came back).
    pub fn observe(&mut self, nodes: &[NodeInfo], departed: &[Departed], now: &str) -> bool {
        self.prune(now_or_clock(now));
        let mut changed = false;
        let before = std::mem::take(&mut self.present);
        for (id, old) in &before {
            if nodes.iter().any(|n| &n.node_id == id) {
                continue;
            }
            let (status, reason) = match departed.iter().find(|d| &d.node_id == id) {
                Some(d) => (
                    Absence::Stopped,
                    format!("stopped cleanly (it announced its stop at {})", d.at),
                ),
                None => (
                    Absence::Lost,
                    "vanished from the cluster without a clean stop: crashed, killed, or cut off \
                     from the cluster's store"
                        .to_owned(),
                ),
            };
            let mut old = old.clone();
            // A stopping node's name may already be gone from the reading that last listed it
            // (its record goes with its lease); its departure says it again.
            if old.shown_name().is_none() {
                old.name = departed
                    .iter()
                    .find(|d| &d.node_id == id)
                    .and_then(|d| d.name.clone());
            }
            self.leave(&old, status, reason, now);
            changed = true;
        }
        // A departure may be read after the node was already reported gone: it was a clean stop.
        for a in self.absent.iter_mut().filter(|a| a.status == Absence::Lost) {
            if let Some(d) = departed.iter().find(|d| d.node_id == a.node_id) {
                a.status = Absence::Stopped;
                a.reason = format!("stopped cleanly (it announced its stop at {})", d.at);
                changed = true;
            }
        }
        for n in nodes {
            let mut n = n.clone();
            match before.get(&n.node_id) {
                // The names are read apart from the election's snapshot, so a reading can list
                // a node whose name it missed (its record was going): a node keeps the name it
                // was known by.
                Some(old) if n.shown_name().is_none() => n.name.clone_from(&old.name),
                Some(_) => {}
                None => changed |= self.join(&n, now),
            }
            self.present.insert(n.node_id.clone(), n);
        }
        changed
    }

    /// The session of `node_id` ended at `now`: it left the membership the manager knows, in the
    /// way `status` says. A node that is still there is reported by the cluster's next session.
    pub fn session_ended(&mut self, node_id: &str, status: Absence, reason: &str, now: &str) {
        if let Some(old) = self.present.remove(node_id) {
            self.leave(&old, status, reason.to_owned(), now);
        }
    }

    /// Drops a node that left from the list.
    pub fn forget(&mut self, node_id: &str) -> Result<AbsentNode, ForgetError> {
        if self.present.contains_key(node_id) {
            return Err(ForgetError::Present(node_id.to_owned()));
        }
        let i = self
            .absent
            .iter()
            .position(|a| a.node_id == node_id)
            .ok_or_else(|| ForgetError::Unknown(node_id.to_owned()))?;
        Ok(self.absent.remove(i))
    }

    /// The nodes that left, most recent first, without those past [`RETENTION`].
    pub fn absent(&mut self) -> Vec<AbsentNode> {
        self.prune(OffsetDateTime::now_utc());
        self.absent.iter().rev().cloned().collect()
    }

    /// Where the present node `node_id` came back from, if it did.
    pub fn returned(&self, node_id: &str) -> Option<&Return> {
        self.returns.get(node_id)
    }

    fn leave(&mut self, old: &NodeInfo, status: Absence, reason: String, now: &str) {
        self.returns.remove(&old.node_id);
        self.absent.retain(|a| a.node_id != old.node_id);
        self.absent.push(AbsentNode {
            node_id: old.node_id.clone(),
            name: old.shown_name().map(str::to_owned),
            role: old.role,
            status,
            last_seen: now.to_owned(),
            reason,
        });
    }

    /// A node joined: when it is one that had left (same id, or same name and kind), it is back.
    fn join(&mut self, n: &NodeInfo, now: &str) -> bool {
        let same_id = self.absent.iter().rposition(|a| a.node_id == n.node_id);
        let same_name = || {
            let name = n.shown_name()?;
            self.absent.iter().rposition(|a| {
                a.name.as_deref() == Some(name) && is_runner(a.role) == is_runner(n.role)
            })
        };
        let Some(i) = same_id.or_else(same_name) else {
            return false;
        };
        let was = self.absent.remove(i);
        // The same process reporting again after a clean close of its session is a hand-over,
        // not a return.
        if !(was.node_id == n.node_id && was.status == Absence::Stopped) {
            self.returns.insert(
                n.node_id.clone(),
                Return {
                    previous_node_id: was.node_id,
                    was: was.status,
                    last_seen: was.last_seen,
                    back_at: now.to_owned(),
                },
            );
        }
        true
    }

    /// Drops what left or came back more than [`RETENTION`] before `now`.
    fn prune(&mut self, now: OffsetDateTime) {
        let fresh = |at: &str| parse_rfc3339(at).is_none_or(|t| now - t < RETENTION);
        self.absent.retain(|a| fresh(&a.last_seen));
        self.returns.retain(|_, r| fresh(&r.back_at));
    }
}

/// `now` as written, or the clock when it cannot be read.
fn now_or_clock(now: &str) -> OffsetDateTime {
    parse_rfc3339(now).unwrap_or_else(OffsetDateTime::now_utc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(id: &str, name: Option<&str>, role: Role) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            name: name.map(Into::into),
            role,
            is_primary: false,
            address: None,
            manager_reachable: None,
            running: None,
            capacity: None,
        }
    }

    #[test]
    fn a_vanished_node_is_lost_until_it_returns_by_name() {
        let mut m = Members::default();
        let a1 = node("a_1", Some("core-1"), Role::Active);
        let b1 = node("b_1", Some("core-2"), Role::Standby);
        assert!(!m.observe(&[a1.clone(), b1.clone()], &[], "t0"));
        assert!(m.observe(std::slice::from_ref(&a1), &[], "t1"));
        let gone = m.absent();
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].node_id.as_str(), gone[0].name.as_deref()),
            ("b_1", Some("core-2"))
        );
        assert_eq!(
            (gone[0].status, gone[0].last_seen.as_str()),
            (Absence::Lost, "t1")
        );
        assert_eq!(m.forget("a_1"), Err(ForgetError::Present("a_1".into())));

        // Back under a new id with the same name.
        let b2 = node("b_2", Some("core-2"), Role::Standby);
        assert!(m.observe(&[a1.clone(), b2], &[], "t2"));
        assert!(m.absent().is_empty());
        let back = m.returned("b_2").unwrap();
        assert_eq!(
            (
                back.previous_node_id.as_str(),
                back.was,
                back.back_at.as_str()
            ),
            ("b_1", Absence::Lost, "t2")
        );
        // A runner of the same name is not that core node.
        assert!(m.observe(std::slice::from_ref(&a1), &[], "t3"));
        assert!(!m.observe(&[a1, node("r_1", Some("core-2"), Role::Runner)], &[], "t4"));
        assert_eq!(m.absent().len(), 1);
    }

    #[test]
    fn a_clean_departure_is_a_stop_even_when_read_late() {
        let mut m = Members::default();
        let a = node("a_1", Some("core-1"), Role::Active);
        let r = node("r_1", Some("runner-1"), Role::Runner);
        m.observe(&[a.clone(), r], &[], "t0");
        let departed = Departed {
            node_id: "r_1".into(),
            name: Some("runner-1".into()),
            at: "t1".into(),
        };
        m.observe(
            std::slice::from_ref(&a),
            std::slice::from_ref(&departed),
            "t1",
        );
        assert_eq!(m.absent()[0].status, Absence::Stopped);

        let b = node("b_1", None, Role::Standby);
        m.observe(&[a.clone(), b], &[], "t2");
        m.observe(std::slice::from_ref(&a), &[], "t3");
        assert_eq!(m.absent()[0].status, Absence::Lost);
        let late = Departed {
            node_id: "b_1".into(),
            ..departed
        };
        assert!(m.observe(&[a], &[late], "t4"));
        assert!(m.absent().iter().all(|x| x.status == Absence::Stopped));

        // Nameless nodes come back by id only; forgetting drops them.
        assert_eq!(m.forget("b_1").unwrap().node_id, "b_1");
        assert_eq!(m.forget("b_1"), Err(ForgetError::Unknown("b_1".into())));
    }

    #[test]
    fn a_reading_that_missed_a_name_does_not_lose_it() {
        let mut m = Members::default();
        let a = node("a_1", Some("core-1"), Role::Active);
        m.observe(
            &[a.clone(), node("b_1", Some("core-2"), Role::Standby)],
            &[],
            "t0",
        );
        // The standby is stopping: its record (and name) went before the election forgot it.
        m.observe(&[a.clone(), node("b_1", None, Role::Standby)], &[], "t1");
        m.observe(std::slice::from_ref(&a), &[], "t2");
        assert_eq!(m.absent()[0].name.as_deref(), Some("core-2"));

        // Known nameless until it left: its departure names it.
        m.observe(&[a.clone(), node("c_1", None, Role::Standby)], &[], "t3");
        let departed = Departed {
            node_id: "c_1".into(),
            name: Some("core-3".into()),
            at: "t4".into(),
        };
        m.observe(std::slice::from_ref(&a), &[departed], "t4");
        let gone = m.absent();
        assert_eq!(
            (
                gone[0].node_id.as_str(),
                gone[0].name.as_deref(),
                gone[0].status
            ),
            ("c_1", Some("core-3"), Absence::Stopped)
        );
    }

    #[test]
    fn a_session_that_ends_takes_its_node_out() {
        let mut m = Members::default();
        let a = node("a_1", Some("core-1"), Role::Active);
        m.observe(std::slice::from_ref(&a), &[], "t0");
        m.session_ended("a_1", Absence::Lost, "connection lost", "t1");
        assert_eq!(m.absent()[0].reason, "connection lost");
        // The same process reporting again (it was only cut off) is back, from lost.
        m.observe(std::slice::from_ref(&a), &[], "t2");
        assert_eq!(m.returned("a_1").unwrap().was, Absence::Lost);
        // A clean close followed by the same node in the next session is a hand-over.
        m.session_ended("a_1", Absence::Stopped, "closed by the gateway", "t3");
        m.observe(&[a], &[], "t4");
        assert!(m.absent().is_empty());
        assert!(m.returned("a_1").is_none());
    }

    #[test]
    fn retention_counts_from_the_recorded_times_across_a_reload() {
        let at = |hours_ago: i64| {
            crate::model::format_rfc3339(
                OffsetDateTime::now_utc() - time::Duration::hours(hours_ago),
            )
        };
        let mut m = Members::default();
        let (a, b) = (
            node("a_1", Some("core-1"), Role::Active),
            node("b_1", Some("core-2"), Role::Standby),
        );
        m.observe(&[a.clone(), b.clone()], &[], &at(30));
        m.observe(std::slice::from_ref(&b), &[], &at(25)); // core-1 lost 25 h ago
        m.observe(&[], &[], &at(2)); // core-2 lost 2 h ago
                                     // Another replica (or the next process) reads the record: retention does not restart.
        let mut read: Members = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        let names: Vec<_> = read.absent().into_iter().map(|n| n.node_id).collect();
        assert_eq!(names, ["b_1"]);
        // A node back 25 h ago no longer shows where it came from; one back now does.
        let mut m = Members::default();
        m.observe(std::slice::from_ref(&a), &[], &at(27));
        m.observe(&[], &[], &at(26));
        m.observe(std::slice::from_ref(&a), &[], &at(25));
        m.observe(std::slice::from_ref(&a), &[], &at(0));
        assert!(m.returned("a_1").is_none());
        m.observe(&[], &[], &at(0));
        m.observe(std::slice::from_ref(&a), &[], &at(0));
        assert_eq!(m.returned("a_1").unwrap().was, Absence::Lost);
    }
}
