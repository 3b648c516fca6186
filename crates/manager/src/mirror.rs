//! A replica's copy of one kind of store record (clusters, catalogs, live-session claims,
//! replicas), kept current by the store watch and by the replica's own writes.
//!
//! Every entry carries the store revision it was written at, and a change is applied only
//! when it is newer than what the copy holds. That makes the two ways a change arrives — the
//! replica's own write (applied at once, with the transaction's revision) and the watch event
//! of that same write (applied a moment later) — safe in any order, and a watch that replays
//! events after a reload harmless. A delete leaves a tombstone with its revision, so the late
//! watch event of a put made *before* the delete cannot bring the entry back; tombstones are
//! dropped once the watch has passed their revision.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use autogate_store::Revision;

#[derive(Debug)]
struct Inner<V> {
    items: HashMap<String, (V, Revision)>,
    tombs: HashMap<String, Revision>,
}

/// Records by id, each with the revision it was written at.
#[derive(Debug)]
pub struct Mirror<V> {
    inner: Mutex<Inner<V>>,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Mirror {
            inner: Mutex::new(Inner {
                items: HashMap::new(),
                tombs: HashMap::new(),
            }),
        }
    }
}

impl<V: Clone> Mirror<V> {
    /// An empty copy.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of `id`.
    pub fn get(&self, id: &str) -> Option<V> {
        self.lock().items.get(id).map(|(v, _)| v.clone())
    }

    /// The record of `id` and its revision.
    pub fn get_with_rev(&self, id: &str) -> Option<(V, Revision)> {
        self.lock().items.get(id).cloned()
    }

    /// Applies a write at `rev`; `false` when the copy already holds something newer (or a
    /// newer delete).
    pub fn put(&self, id: &str, value: V, rev: Revision) -> bool {
        let mut inner = self.lock();
        if inner.tombs.get(id).is_some_and(|t| *t >= rev) {
            return false;
        }
        if inner.items.get(id).is_some_and(|(_, r)| *r >= rev) {
            return false;
        }
        inner.items.insert(id.to_owned(), (value, rev));
        true
    }

    /// Applies a delete at `rev`; returns the record it removed.
    pub fn remove(&self, id: &str, rev: Revision) -> Option<V> {
        let mut inner = self.lock();
        let tomb = inner.tombs.entry(id.to_owned()).or_insert(rev);
        *tomb = (*tomb).max(rev);
        if inner.items.get(id).is_some_and(|(_, r)| *r < rev) {
            return inner.items.remove(id).map(|(v, _)| v);
        }
        None
    }

    /// Forgets tombstones the watch has passed: no older event can arrive any more.
    pub fn passed(&self, applied: Revision) {
        self.lock().tombs.retain(|_, r| *r > applied);
    }

    /// Replaces everything with a fresh listing (after the watch was lost).
    pub fn reset(&self, items: impl IntoIterator<Item = (String, V, Revision)>) {
        let mut inner = self.lock();
        inner.items = items.into_iter().map(|(k, v, r)| (k, (v, r))).collect();
        inner.tombs.clear();
    }

    /// Every record, unordered.
    pub fn values(&self) -> Vec<V> {
        self.lock().items.values().map(|(v, _)| v.clone()).collect()
    }

    /// Records matching `keep`, with their ids.
    pub fn filter(&self, keep: impl Fn(&str, &V) -> bool) -> Vec<(String, V)> {
        self.lock()
            .items
            .iter()
            .filter(|(k, (v, _))| keep(k, v))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_and_their_late_events_agree() {
        let m = Mirror::new();
        assert!(m.put("a", 1, 10));
        // The watch event of the same write, then of an older one: ignored.
        assert!(!m.put("a", 1, 10));
        assert!(!m.put("a", 0, 9));
        assert!(m.put("a", 2, 11));
        assert_eq!(m.get("a"), Some(2));
        // Deleted at 12; the watch then replays the put of 11: the entry stays gone.
        assert_eq!(m.remove("a", 12), Some(2));
        assert!(!m.put("a", 2, 11));
        assert_eq!(m.get("a"), None);
        // Re-created later: applied.
        assert!(m.put("a", 3, 13));
        m.passed(13);
        assert_eq!(m.get_with_rev("a"), Some((3, 13)));
    }

    #[test]
    fn a_delete_older_than_the_entry_is_ignored() {
        let m = Mirror::new();
        m.put("a", 1, 20);
        assert_eq!(m.remove("a", 15), None);
        assert_eq!(m.get("a"), Some(1));
    }
}
