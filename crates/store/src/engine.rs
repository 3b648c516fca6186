//! The embedded MVCC-lite state machine behind the `memory` and `local` backends.
//!
//! It keeps what etcd would keep for autogate's purposes: a global revision counter, per-key
//! create/mod revision and version, leases with deadlines on a monotonic clock, and a bounded
//! history of events so that watches can start from a past revision. It does no I/O and never
//! reads the clock itself (callers pass `now`), so every rule is unit-testable.
//!
//! Every mutation returns a [`Mutation`]: the events it produced (not yet published) and the
//! [`Changes`] it made, which carry the *previous* state of everything touched. The local backend
//! writes the touched entries to disk and either publishes the events or, if the write failed,
//! rolls the engine back with [`Engine::rollback`]; nothing is seen by watchers before it is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, LeaseId, Revision, StoreError, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchEvent,
};

/// etcd's maximum lease TTL (9e9 s); also keeps deadline arithmetic far from overflow.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// How many events the history keeps for watches from a past revision.
pub(crate) const DEFAULT_HISTORY: usize = 10_000;

pub(crate) type WatchItem = Result<WatchEvent, StoreError>;

/// The receiving end of one watch.
///
/// Each watch has a bounded queue (twice the history size: a full replay plus as many live
/// events). A consumer that falls that far behind is cut off rather than letting memory grow
/// without bound: once it has drained what was queued it gets `Compacted` with `requested` set to
/// the first revision it missed, and re-reads or watches again from there.
#[derive(Debug)]
pub(crate) struct WatchReceiver {
    rx: mpsc::Receiver<WatchItem>,
    /// Set by the engine to the first undelivered revision when the queue overflowed.
    lagged: Arc<AtomicI64>,
    finished: bool,
}

impl WatchReceiver {
    fn lag_error(&mut self) -> Option<WatchItem> {
        let missed = self.lagged.load(Ordering::Acquire);
        if self.finished || missed == 0 {
            return None;
        }
        self.finished = true;
        Some(Err(StoreError::Compacted {
            requested: missed,
            compacted: missed - 1,
        }))
    }

    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<WatchItem> {
        match self.rx.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => self.lag_error(),
        }
    }
}

impl futures::Stream for WatchReceiver {
    type Item = WatchItem;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchItem>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => std::task::Poll::Ready(this.lag_error()),
            other => other,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub ttl: Duration,
    pub deadline: Instant,
    pub keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    tx: mpsc::Sender<WatchItem>,
    lagged: Arc<AtomicI64>,
}

/// The durable part of the state, as the local backend loads it from disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub revision: Revision,
    pub next_lease_id: LeaseId,
    pub kvs: Vec<KeyValue>,
    /// Lease id and granted TTL.
    pub leases: Vec<(LeaseId, Duration)>,
}

/// What a mutation touched, with the state before it (first touch wins), so it can be persisted
/// (read the current value of each touched entry) or undone.
#[derive(Debug)]
pub(crate) struct Changes {
    revision: Revision,
    next_lease_id: LeaseId,
    meta_changed: bool,
    pub kvs: BTreeMap<String, Option<KeyValue>>,
    pub leases: BTreeMap<LeaseId, Option<(Duration, Instant)>>,
}

impl Changes {
    fn new(engine: &Engine) -> Self {
        Self {
            revision: engine.revision,
            next_lease_id: engine.next_lease_id,
            meta_changed: false,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.meta_changed && self.kvs.is_empty() && self.leases.is_empty()
    }

    fn record_kv(&mut self, key: &str, before: Option<&KeyValue>) {
        self.kvs
            .entry(key.to_owned())
            .or_insert_with(|| before.cloned());
    }

    fn record_lease(&mut self, id: LeaseId, before: Option<&Lease>) {
        self.leases
            .entry(id)
            .or_insert_with(|| before.map(|l| (l.ttl, l.deadline)));
    }
}

/// Result of a mutation: events to publish once the change is durable, and the undo record.
#[derive(Debug)]
pub(crate) struct Mutation {
    pub events: Vec<WatchEvent>,
    pub changes: Changes,
}

#[derive(Debug)]
pub(crate) struct Engine {
    revision: Revision,
    next_lease_id: LeaseId,
    kvs: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    /// Highest revision whose events may be missing from `history`; watches must start above it.
    compacted: Revision,
    watchers: Vec<Watcher>,
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("empty key".into()));
    }
    Ok(())
}

fn compare_i64(actual: i64, op: CompareOp, operand: i64) -> bool {
    match op {
        CompareOp::Equal => actual == operand,
        CompareOp::NotEqual => actual != operand,
        CompareOp::Greater => actual > operand,
        CompareOp::Less => actual < operand,
    }
}

impl Engine {
    /// An empty store. Like etcd, a fresh store is at revision 1 and the first write gets 2.
    pub fn new(history_limit: usize) -> Self {
        Self {
            revision: 1,
            next_lease_id: 1,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
        }
    }

    /// Rebuilds the engine from persisted state. Leases restart their countdown from `now` (as etcd
    /// does after a leader change) and the history before the restart is gone (compacted).
    pub fn restore(snapshot: Snapshot, now: Instant, history_limit: usize) -> Self {
        let mut engine = Self::new(history_limit);
        engine.revision = snapshot.revision.max(1);
        engine.next_lease_id = snapshot.next_lease_id.max(1);
        engine.compacted = engine.revision;
        for (id, ttl) in snapshot.leases {
            // A damaged TTL must not make the deadline arithmetic overflow.
            let ttl = ttl.min(MAX_TTL);
            engine.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: now + ttl,
                    keys: BTreeSet::new(),
                },
            );
            engine.next_lease_id = engine.next_lease_id.max(id.saturating_add(1));
        }
        for kv in snapshot.kvs {
            if kv.lease != 0 {
                // A key whose lease record is missing would otherwise live forever; give it an
                // already expired lease so the expiry pass deletes it like any other.
                let lease = engine.leases.entry(kv.lease).or_insert_with(|| Lease {
                    ttl: Duration::ZERO,
                    deadline: now,
                    keys: BTreeSet::new(),
                });
                lease.keys.insert(kv.key.clone());
                engine.next_lease_id = engine.next_lease_id.max(kv.lease.saturating_add(1));
            }
            engine.kvs.insert(kv.key.clone(), kv);
        }
        engine
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn next_lease_id(&self) -> LeaseId {
        self.next_lease_id
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).cloned()
    }

    pub fn lease_ttl(&self, id: LeaseId) -> Option<Duration> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    pub fn list(&self, prefix: &str) -> Vec<KeyValue> {
        self.kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.kvs.get(&c.key);
        match &c.target {
            CompareTarget::CreateRevision(r) => {
                compare_i64(kv.map_or(0, |kv| kv.create_revision), c.op, *r)
            }
            CompareTarget::ModRevision(r) => {
                compare_i64(kv.map_or(0, |kv| kv.mod_revision), c.op, *r)
            }
            CompareTarget::Version(v) => compare_i64(kv.map_or(0, |kv| kv.version), c.op, *v),
            // etcd: a value comparison against a missing key is always false.
            CompareTarget::Value(v) => kv.is_some_and(|kv| match c.op {
                CompareOp::Equal => kv.value == *v,
                CompareOp::NotEqual => kv.value != *v,
                CompareOp::Greater => kv.value.as_slice() > v.as_slice(),
                CompareOp::Less => kv.value.as_slice() < v.as_slice(),
            }),
        }
    }

    fn lease_alive(&self, id: LeaseId, now: Instant) -> bool {
        self.leases.get(&id).is_some_and(|l| l.deadline > now)
    }

    /// Rejects what etcd rejects before anything is applied, so a branch is all-or-nothing.
    fn check_ops(&self, ops: &[TxnOp], now: Instant) -> Result<(), StoreError> {
        let mut puts = BTreeSet::new();
        for op in ops {
            match op {
                TxnOp::Put { key, lease, .. } => {
                    check_key(key)?;
                    if !puts.insert(key.as_str()) {
                        return Err(StoreError::InvalidArgument(format!(
                            "duplicate key {key:?} in transaction"
                        )));
                    }
                    if let Some(id) = lease.filter(|id| *id != 0) {
                        if !self.lease_alive(id, now) {
                            return Err(StoreError::LeaseNotFound(id));
                        }
                    }
                }
                TxnOp::Delete { key } | TxnOp::Get { key } => check_key(key)?,
                TxnOp::DeletePrefix { .. } | TxnOp::GetPrefix { .. } => {}
            }
        }
        for op in ops {
            let clash = match op {
                TxnOp::Delete { key } => puts.contains(key.as_str()).then(|| key.clone()),
                TxnOp::DeletePrefix { prefix } => puts
                    .iter()
                    .find(|k| k.starts_with(prefix.as_str()))
                    .map(|k| k.to_string()),
                _ => None,
            };
            if let Some(key) = clash {
                return Err(StoreError::InvalidArgument(format!(
                    "key {key:?} is both written and deleted in one transaction"
                )));
            }
        }
        Ok(())
    }

    fn detach(&mut self, lease: LeaseId, key: &str) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }

    fn attach(&mut self, lease: LeaseId, key: &str) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_owned());
            }
        }
    }

    fn put_kv(
        &mut self,
        ch: &mut Changes,
        events: &mut Vec<WatchEvent>,
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
        rev: Revision,
    ) {
        let old = self.kvs.get(&key);
        ch.record_kv(&key, old);
        let (create_revision, version, old_lease) = match old {
            Some(o) => (o.create_revision, o.version + 1, o.lease),
            None => (rev, 1, 0),
        };
        self.detach(old_lease, &key);
        self.attach(lease, &key);
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: rev,
            version,
            lease,
        };
        events.push(WatchEvent {
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        self.kvs.insert(key, kv);
    }

    fn delete_kv(
        &mut self,
        ch: &mut Changes,
        events: &mut Vec<WatchEvent>,
        key: &str,
        rev: Revision,
    ) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        self.detach(old.lease, key);
        ch.record_kv(key, Some(&old));
        events.push(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
        });
        true
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.list(prefix).into_iter().map(|kv| kv.key).collect()
    }

    pub fn txn(&mut self, txn: Txn, now: Instant) -> Result<(TxnResponse, Mutation), StoreError> {
        for c in &txn.compares {
            check_key(&c.key)?;
        }
        let succeeded = txn.compares.iter().all(|c| self.compare(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        self.check_ops(&ops, now)?;

        let rev = self.revision + 1;
        let mut ch = Changes::new(self);
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Put { key, value, lease } => {
                    self.put_kv(&mut ch, &mut events, key, value, lease.unwrap_or(0), rev);
                    TxnOpResponse::Put
                }
                TxnOp::Delete { key } => {
                    let deleted = self.delete_kv(&mut ch, &mut events, &key, rev);
                    TxnOpResponse::Delete {
                        deleted: i64::from(deleted),
                    }
                }
                TxnOp::DeletePrefix { prefix } => {
                    let mut deleted = 0;
                    for key in self.keys_with_prefix(&prefix) {
                        deleted += i64::from(self.delete_kv(&mut ch, &mut events, &key, rev));
                    }
                    TxnOpResponse::Delete { deleted }
                }
                TxnOp::Get { key } => TxnOpResponse::Get(self.get(&key).into_iter().collect()),
                TxnOp::GetPrefix { prefix } => TxnOpResponse::Get(self.list(&prefix)),
            };
            responses.push(response);
        }
        // Only a real change takes a revision (a delete of a missing key does not), as in etcd.
        if !events.is_empty() {
            self.revision = rev;
            ch.meta_changed = true;
        }
        let response = TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        };
        Ok((
            response,
            Mutation {
                events,
                changes: ch,
            },
        ))
    }

    pub fn grant(
        &mut self,
        ttl: Duration,
        now: Instant,
    ) -> Result<(LeaseId, Mutation), StoreError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(StoreError::InvalidArgument(format!(
                "lease TTL must be positive and at most {} s, not {ttl:?}",
                MAX_TTL.as_secs()
            )));
        }
        let mut ch = Changes::new(self);
        let id = self.next_lease_id;
        self.next_lease_id += 1;
        ch.meta_changed = true;
        ch.record_lease(id, None);
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline: now + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok((
            id,
            Mutation {
                events: Vec::new(),
                changes: ch,
            },
        ))
    }

    /// Renews a live lease. Deadlines are not persisted, so this is not a [`Mutation`].
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration, StoreError> {
        match self.leases.get_mut(&id) {
            Some(lease) if lease.deadline > now => {
                lease.deadline = now + lease.ttl;
                Ok(lease.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    pub fn time_to_live(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        self.leases
            .get(&id)
            .filter(|l| l.deadline > now)
            .map(|l| l.deadline - now)
    }

    fn revoke_inner(&mut self, id: LeaseId, ch: &mut Changes, events: &mut Vec<WatchEvent>) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        ch.record_lease(id, Some(&lease));
        // All keys of one lease go in one revision, like etcd's revoke transaction.
        let rev = self.revision + 1;
        let before = events.len();
        for key in &lease.keys {
            self.delete_kv(ch, events, key, rev);
        }
        if events.len() > before {
            self.revision = rev;
            ch.meta_changed = true;
        }
    }

    pub fn revoke(&mut self, id: LeaseId) -> Result<Mutation, StoreError> {
        if !self.leases.contains_key(&id) {
            return Err(StoreError::LeaseNotFound(id));
        }
        let mut ch = Changes::new(self);
        let mut events = Vec::new();
        self.revoke_inner(id, &mut ch, &mut events);
        Ok(Mutation {
            events,
            changes: ch,
        })
    }

    /// Revokes every lease whose deadline has passed, oldest deadline first.
    pub fn expire(&mut self, now: Instant) -> Mutation {
        let mut expired: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        expired.sort();
        let mut ch = Changes::new(self);
        let mut events = Vec::new();
        for (_, id) in expired {
            self.revoke_inner(id, &mut ch, &mut events);
        }
        Mutation {
            events,
            changes: ch,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    /// Undoes a mutation whose persistence failed (its events were never published).
    pub fn rollback(&mut self, ch: Changes) {
        self.revision = ch.revision;
        self.next_lease_id = ch.next_lease_id;
        for (id, before) in ch.leases {
            match before {
                None => {
                    self.leases.remove(&id);
                }
                Some((ttl, deadline)) => {
                    self.leases.entry(id).or_insert(Lease {
                        ttl,
                        deadline,
                        keys: BTreeSet::new(),
                    });
                }
            }
        }
        for (key, before) in ch.kvs {
            if let Some(current) = self.kvs.remove(&key) {
                self.detach(current.lease, &key);
            }
            if let Some(kv) = before {
                self.attach(kv.lease, &key);
                self.kvs.insert(key, kv);
            }
        }
    }

    /// Records events in the history and hands them to matching watchers, in order.
    pub fn publish(&mut self, events: Vec<WatchEvent>) {
        for event in events {
            self.watchers.retain(|w| {
                if !event.kv.key.starts_with(&w.prefix) {
                    return true;
                }
                match w.tx.try_send(Ok(event.clone())) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Dropping the sender ends the stream with a lag error after the queue.
                        w.lagged.store(event.kv.mod_revision, Ordering::Release);
                        false
                    }
                    // The stream was dropped: the watch is cancelled.
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            self.history.push_back(event);
        }
        while self.history.len() > self.history_limit {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            // Drop whole revisions so a watch never starts in the middle of one.
            self.compacted = oldest.kv.mod_revision;
            while self
                .history
                .front()
                .is_some_and(|e| e.kv.mod_revision == self.compacted)
            {
                self.history.pop_front();
            }
        }
        self.watchers.retain(|w| !w.tx.is_closed());
    }

    /// Starts a watch. A start revision at or below the compaction point yields one
    /// `Compacted` error and ends, as etcd's watch does.
    pub fn watch(&mut self, prefix: &str, start: Option<Revision>) -> WatchReceiver {
        // Room for a full replay of the history plus as many live events.
        let (tx, rx) = mpsc::channel(self.history_limit * 2 + 1);
        let lagged = Arc::new(AtomicI64::new(0));
        let receiver = WatchReceiver {
            rx,
            lagged: lagged.clone(),
            finished: false,
        };
        if let Some(start) = start.filter(|r| *r > 0) {
            if start <= self.compacted {
                let _ = tx.try_send(Err(StoreError::Compacted {
                    requested: start,
                    compacted: self.compacted,
                }));
                return receiver;
            }
            for event in &self.history {
                if event.kv.mod_revision >= start && event.kv.key.starts_with(prefix) {
                    // Cannot be full: the queue holds more than the whole history.
                    let _ = tx.try_send(Ok(event.clone()));
                }
            }
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
            lagged,
        });
        receiver
    }

    #[cfg(test)]
    fn watcher_count(&self) -> usize {
        self.watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        e: &mut Engine,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
        now: Instant,
    ) -> Revision {
        let (resp, m) = e
            .txn(
                Txn::new().and_then([TxnOp::Put {
                    key: key.into(),
                    value: value.into(),
                    lease,
                }]),
                now,
            )
            .unwrap();
        e.publish(m.events);
        resp.revision
    }

    fn drain(rx: &mut WatchReceiver) -> Vec<WatchItem> {
        let mut out = Vec::new();
        while let Some(item) = rx.try_recv() {
            out.push(item);
        }
        out
    }

    #[test]
    fn revisions_and_versions_follow_etcd() {
        let now = Instant::now();
        let mut e = Engine::new(100);
        assert_eq!(e.revision(), 1);
        assert_eq!(put(&mut e, "a", "1", None, now), 2);
        assert_eq!(put(&mut e, "a", "2", None, now), 3);
        let kv = e.get("a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

        // Deleting a missing key takes no revision.
        let (resp, m) = e
            .txn(Txn::new().and_then([TxnOp::delete("zz")]), now)
            .unwrap();
        assert!(m.changes.is_empty());
        assert_eq!(resp.revision, 3);
        assert_eq!(resp.responses, vec![TxnOpResponse::Delete { deleted: 0 }]);
    }

    #[test]
    fn txn_compares_and_branches() {
        let now = Instant::now();
        let mut e = Engine::new(100);
        let rev = put(&mut e, "k", "v", None, now);
        let fenced = Txn::new()
            .when([Compare::create_revision("k", CompareOp::Equal, rev)])
            .and_then([TxnOp::put("out", "x")])
            .or_else([TxnOp::get("k")]);
        let (resp, _) = e.txn(fenced.clone(), now).unwrap();
        assert!(resp.succeeded);

        let (_, m) = e
            .txn(Txn::new().and_then([TxnOp::delete("k")]), now)
            .unwrap();
        e.publish(m.events);
        put(&mut e, "k", "v", None, now);
        let (resp, _) = e.txn(fenced, now).unwrap();
        assert!(!resp.succeeded);
        assert!(matches!(&resp.responses[0], TxnOpResponse::Get(kvs) if kvs.len() == 1));

        // Value comparison on a missing key is false whatever the operator.
        let (resp, _) = e
            .txn(
                Txn::new().when([Compare::value("nope", CompareOp::NotEqual, "x")]),
                now,
            )
            .unwrap();
        assert!(!resp.succeeded);
    }

    #[test]
    fn txn_rejects_what_etcd_rejects() {
        let now = Instant::now();
        let mut e = Engine::new(100);
        let dup = Txn::new().and_then([TxnOp::put("a", "1"), TxnOp::put("a", "2")]);
        assert!(matches!(
            e.txn(dup, now),
            Err(StoreError::InvalidArgument(_))
        ));
        let clash = Txn::new().and_then([TxnOp::put("p/a", "1"), TxnOp::delete_prefix("p/")]);
        assert!(matches!(
            e.txn(clash, now),
            Err(StoreError::InvalidArgument(_))
        ));
        let bad_lease =
            Txn::new().and_then([TxnOp::put("x", "1"), TxnOp::put_with_lease("y", "1", 42)]);
        assert_eq!(
            e.txn(bad_lease, now).unwrap_err(),
            StoreError::LeaseNotFound(42)
        );
        assert!(
            e.get("x").is_none(),
            "a refused transaction applies nothing"
        );
        assert!(matches!(
            e.txn(Txn::new().and_then([TxnOp::put("", "1")]), now),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn leases_expire_in_one_revision_and_emit_deletes() {
        let t0 = Instant::now();
        let mut e = Engine::new(100);
        let (id, m) = e.grant(Duration::from_secs(2), t0).unwrap();
        for bad in [Duration::ZERO, Duration::MAX] {
            assert!(matches!(
                e.grant(bad, t0),
                Err(StoreError::InvalidArgument(_))
            ));
        }
        e.publish(m.events);
        put(&mut e, "l/a", "1", Some(id), t0);
        put(&mut e, "l/b", "1", Some(id), t0);
        put(&mut e, "other", "1", None, t0);
        let mut rx = e.watch("l/", None);

        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(e.keep_alive(id, t1).unwrap(), Duration::from_secs(2));
        assert_eq!(e.next_deadline(), Some(t1 + Duration::from_secs(2)));
        assert!(
            e.expire(t0 + Duration::from_secs(2)).changes.is_empty(),
            "renewed lease must survive"
        );

        let t3 = t1 + Duration::from_secs(2);
        assert_eq!(
            e.keep_alive(id, t3).unwrap_err(),
            StoreError::LeaseNotFound(id)
        );
        let before = e.revision();
        let m = e.expire(t3);
        e.publish(m.events);
        assert_eq!(e.revision(), before + 1);
        assert!(e.list("l/").is_empty());
        assert!(e.get("other").is_some());
        let events = drain(&mut rx);
        assert_eq!(events.len(), 2);
        for ev in events {
            let ev = ev.unwrap();
            assert_eq!(ev.kind, EventKind::Delete);
            assert_eq!(ev.kv.mod_revision, before + 1);
        }
        assert_eq!(e.time_to_live(id, t3), None);
    }

    #[test]
    fn watch_replays_history_and_reports_compaction() {
        let now = Instant::now();
        let mut e = Engine::new(3);
        let r1 = put(&mut e, "w/a", "1", None, now);
        put(&mut e, "w/b", "1", None, now);
        put(&mut e, "x", "1", None, now);
        let r4 = put(&mut e, "w/a", "2", None, now);
        // History holds 3 events: r1's was dropped.
        let mut rx = e.watch("w/", Some(r1));
        assert_eq!(
            drain(&mut rx),
            vec![Err(StoreError::Compacted {
                requested: r1,
                compacted: r1
            })]
        );
        assert!(rx.try_recv().is_none(), "a compacted watch ends");

        let mut rx = e.watch("w/", Some(r1 + 1));
        let revs: Vec<_> = drain(&mut rx)
            .into_iter()
            .map(|e| e.unwrap().kv.mod_revision)
            .collect();
        assert_eq!(revs, vec![r1 + 1, r4]);
        drop(rx);
        put(&mut e, "w/c", "1", None, now);
        assert_eq!(e.watcher_count(), 0, "dropped watchers are pruned");
    }

    #[test]
    fn a_watcher_too_far_behind_is_cut_off_with_the_first_missed_revision() {
        let now = Instant::now();
        let mut e = Engine::new(2);
        let mut rx = e.watch("", None);
        // Queue capacity is 2 * 2 + 1 = 5 events.
        let revs: Vec<_> = (0..7)
            .map(|i| put(&mut e, "k", &i.to_string(), None, now))
            .collect();
        let items = drain(&mut rx);
        assert_eq!(items.len(), 6);
        assert!(items[..5].iter().all(Result::is_ok));
        assert_eq!(
            items[5],
            Err(StoreError::Compacted {
                requested: revs[5],
                compacted: revs[5] - 1
            })
        );
        assert!(rx.try_recv().is_none());
        assert_eq!(e.watcher_count(), 0);
    }

    #[test]
    fn rollback_restores_previous_state() {
        let now = Instant::now();
        let mut e = Engine::new(100);
        let (id, _) = e.grant(Duration::from_secs(5), now).unwrap();
        put(&mut e, "a", "1", Some(id), now);
        put(&mut e, "b", "1", None, now);
        let rev = e.revision();

        let (_, m) = e
            .txn(
                Txn::new().and_then([
                    TxnOp::put("a", "2"),
                    TxnOp::delete("b"),
                    TxnOp::put("c", "3"),
                ]),
                now,
            )
            .unwrap();
        e.rollback(m.changes);
        assert_eq!(e.revision(), rev);
        assert_eq!(e.get("a").unwrap().value, b"1");
        assert!(e.get("b").is_some());
        assert!(e.get("c").is_none());

        let m = e.revoke(id).unwrap();
        assert!(e.get("a").is_none());
        e.rollback(m.changes);
        assert_eq!(e.get("a").unwrap().lease, id);
        // The restored lease still owns its key.
        let m = e.expire(now + Duration::from_secs(10));
        assert_eq!(m.events.len(), 1);
    }

    #[test]
    fn restore_starts_fresh_countdown_and_compacts_history() {
        let t0 = Instant::now();
        let snapshot = Snapshot {
            revision: 7,
            next_lease_id: 3,
            kvs: vec![
                KeyValue {
                    key: "a".into(),
                    value: b"1".to_vec(),
                    create_revision: 2,
                    mod_revision: 5,
                    version: 2,
                    lease: 2,
                },
                KeyValue {
                    key: "orphan".into(),
                    value: vec![],
                    create_revision: 6,
                    mod_revision: 6,
                    version: 1,
                    lease: 9,
                },
            ],
            leases: vec![(2, Duration::from_secs(4))],
        };
        let mut e = Engine::restore(snapshot, t0, 100);
        assert_eq!(e.revision(), 7);
        assert_eq!(e.time_to_live(2, t0), Some(Duration::from_secs(4)));
        let mut rx = e.watch("", Some(7));
        assert!(matches!(
            drain(&mut rx)[..],
            [Err(StoreError::Compacted {
                requested: 7,
                compacted: 7
            })]
        ));
        // The key of the unknown lease goes at once; the lease counter moved past every known id.
        let m = e.expire(t0);
        assert_eq!(m.events.len(), 1);
        assert!(e.get("orphan").is_none());
        assert_eq!(e.grant(Duration::from_secs(1), t0).unwrap().0, 10);
    }
}
