//! The replicas of one manager: each running `autogate manager` process that shares the store
//! announces itself under `/manager/replicas/<replica id>`, bound to a lease it keeps alive.
//!
//! The record says where the replica listens, since when, when it was last seen and how many
//! sessions it holds (`autogate manager status` and the page list them). Its lease is what
//! makes a replica's claims count: a claim whose replica has no record any more is treated as
//! ended, and the first live replica to notice ends it in the store (see [`crate::hub`]).
//!
//! A replica that cannot renew its lease stops taking sessions (every `hello` needs a store
//! transaction anyway) and says so once; when it has not renewed for two thirds of the lease's
//! TTL it closes its own sessions, so that by the time its lease can have expired — and another
//! replica can have accepted the same clusters — it holds none. That keeps "one live session
//! per cluster" across replicas without trusting the partitioned side to learn anything.
//!
//! With the `local` store a single process holds the store file, so no other replica can be
//! alive: claims of earlier processes end at start, as a restart always did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autogate_store::{KeyValue, LeaseId, Revision, Store, StoreError, WatchEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, CLOSE_GOING_AWAY};
use crate::mirror::Mirror;
use crate::model::now_rfc3339;

/// Prefix of the replica records.
pub const REPLICAS: &str = "/manager/replicas/";

/// Close reason of the sessions a replica closes because it could not reach its store.
pub const FENCED_REASON: &str = "manager replica lost its store";

/// One replica, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Random id, new at every start.
    pub replica_id: String,
    /// `host:port` it serves on.
    pub address: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, rewritten at every heartbeat.
    pub last_seen: String,
    /// Live sessions it holds.
    pub sessions: usize,
    /// Its version.
    pub version: String,
}

/// This replica and the others it knows of.
#[derive(Debug)]
pub struct Replicas {
    store: Arc<dyn Store>,
    me: ReplicaRecord,
    lease: Mutex<LeaseId>,
    ttl: Duration,
    exclusive: bool,
    others: Mirror<ReplicaRecord>,
    /// The last store failure of the heartbeat, `None` while it renews.
    trouble: Mutex<Option<String>>,
    /// Set while the lease is kept: cleared when the heartbeat cannot renew it.
    healthy: AtomicBool,
}

fn encode(r: &ReplicaRecord) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

impl Replicas {
    /// Joins the manager: a lease of `ttl`, this replica's record under it, and the records of
    /// the others. `exclusive` (the `local` store) means no other process can share the store.
    pub async fn join(
        store: Arc<dyn Store>,
        address: String,
        ttl: Duration,
        exclusive: bool,
    ) -> Result<Replicas, StoreError> {
        let now = now_rfc3339();
        let me = ReplicaRecord {
            replica_id: {
                let mut bytes = [0u8; 6];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                hex::encode(bytes)
            },
            address,
            started_at: now.clone(),
            last_seen: now,
            sessions: 0,
            version: autogate_runtime::VERSION.to_owned(),
        };
        let lease = store.grant(ttl).await?;
        store
            .put(&key(&me.replica_id), encode(&me), Some(lease))
            .await?;
        let replicas = Replicas {
            store,
            me,
            lease: Mutex::new(lease),
            ttl,
            exclusive,
            others: Mirror::new(),
            trouble: Mutex::new(None),
            healthy: AtomicBool::new(true),
        };
        let listed = replicas.store.list(REPLICAS).await?;
        replicas.reset(&listed);
        Ok(replicas)
    }

    fn lease(&self) -> MutexGuard<'_, LeaseId> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.me.replica_id
    }

    /// The lease this replica's own keys are bound to.
    pub fn lease_id(&self) -> LeaseId {
        *self.lease()
    }

    /// Whether no other replica can share the store (the `local` backend).
    pub fn exclusive(&self) -> bool {
        self.exclusive
    }

    /// This replica's address.
    pub fn address(&self) -> &str {
        &self.me.address
    }

    /// Whether the replica `id` is alive (its record exists).
    pub fn alive(&self, id: &str) -> bool {
        id == self.me.replica_id || (!self.exclusive && self.others.get(id).is_some())
    }

    /// How a replica is named in messages: its address, or its id when unknown.
    pub fn describe(&self, id: &str) -> String {
        if id == self.me.replica_id {
            return format!("{} ({})", self.me.address, id);
        }
        self.others
            .get(id)
            .map_or_else(|| id.to_owned(), |r| format!("{} ({id})", r.address))
    }

    /// Every live replica, this one first with its current session count.
    pub fn list(&self, sessions: usize) -> Vec<ReplicaRecord> {
        let mut me = self.me.clone();
        me.sessions = sessions;
        me.last_seen = now_rfc3339();
        let mut others: Vec<ReplicaRecord> = self
            .others
            .values()
            .into_iter()
            .filter(|r| r.replica_id != self.me.replica_id && !self.exclusive)
            .collect();
        others.sort_by(|a, b| a.address.cmp(&b.address));
        std::iter::once(me).chain(others).collect()
    }

    /// The store failure that keeps this replica from renewing its lease, if any.
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the lease is being renewed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Replaces the copy of the others with a fresh listing.
    pub fn reset(&self, kvs: &[KeyValue]) {
        self.others.reset(kvs.iter().filter_map(|kv| {
            let r = decode(kv)?;
            Some((r.replica_id.clone(), r, kv.mod_revision))
        }));
    }

    /// A watch event under [`REPLICAS`]; returns the id of a replica whose record ended.
    pub fn apply(&self, ev: &WatchEvent) -> Option<String> {
        let id = ev.kv.key.strip_prefix(REPLICAS)?;
        match ev.kind {
            autogate_store::EventKind::Put => {
                if let Some(r) = decode(&ev.kv) {
                    self.others.put(id, r, ev.kv.mod_revision);
                }
                None
            }
            autogate_store::EventKind::Delete => {
                self.others.remove(id, ev.kv.mod_revision);
                // With the local store another record can only be a previous process's, whose
                // sessions the start already ended: its lease running out is no news.
                (id != self.me.replica_id && !self.exclusive).then(|| id.to_owned())
            }
        }
    }

    /// Forgets tombstones the watch has passed.
    pub fn passed(&self, rev: Revision) {
        self.others.passed(rev);
    }

    /// Ends this replica's lease (a graceful stop): its record goes at once.
    pub async fn leave(&self) {
        let lease = *self.lease();
        if let Err(e) = self.store.revoke(lease).await {
            tracing::debug!("cannot revoke the replica lease: {e}");
        }
    }

    /// One renewal: keeps the lease (a new one if it had ended) and rewrites the record.
    async fn renew(&self, sessions: usize) -> Result<(), StoreError> {
        let lease = *self.lease();
        let lease = match self.store.keep_alive(lease).await {
            Ok(_) => lease,
            Err(StoreError::LeaseNotFound(_)) => {
                // Expired while the store was away: this replica's claims may have been ended
                // by another; it announces itself again under a new lease.
                let fresh = self.store.grant(self.ttl).await?;
                *self.lease() = fresh;
                tracing::warn!(
                    "manager replica {} had lost its lease; it joined again",
                    self.me.replica_id
                );
                fresh
            }
            Err(e) => return Err(e),
        };
        let mut me = self.me.clone();
        me.sessions = sessions;
        me.last_seen = now_rfc3339();
        self.store
            .put(&key(&me.replica_id), encode(&me), Some(lease))
            .await?;
        Ok(())
    }
}

fn key(id: &str) -> String {
    format!("{REPLICAS}{id}")
}

fn decode(kv: &KeyValue) -> Option<ReplicaRecord> {
    match serde_json::from_slice(&kv.value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("ignoring unreadable replica record {}: {e}", kv.key);
            None
        }
    }
}

/// Keeps this replica's lease and record, every third of the TTL, until `token` is cancelled;
/// closes the replica's sessions when the lease may be about to end (see the module text).
pub async fn heartbeat(hub: Arc<Hub>, token: CancellationToken) {
    let replicas = hub.replicas().clone();
    let period = replicas.ttl / 3;
    let fence_after = replicas.ttl * 2 / 3;
    let mut last_ok = Instant::now();
    let mut fenced = false;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let result = tokio::time::timeout(
            period.max(Duration::from_millis(500)),
            replicas.renew(hub.live_count()),
        )
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".into())));
        match result {
            Ok(()) => {
                last_ok = Instant::now();
                fenced = false;
                if !replicas.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "manager replica {} reaches its store again: taking sessions",
                        replicas.me.replica_id
                    );
                }
                *replicas.trouble.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                *replicas.trouble.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                if replicas.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "manager replica {} cannot reach its store ({e}): it takes no new sessions until the store is back",
                        replicas.me.replica_id
                    );
                }
                if !fenced && last_ok.elapsed() >= fence_after {
                    fenced = true;
                    let n = hub.live_count();
                    if n > 0 {
                        tracing::warn!(
                            "manager replica {} closes its {n} session(s): its lease may end before the store is back, and another replica may take them",
                            replicas.me.replica_id
                        );
                    }
                    hub.close_all(CLOSE_GOING_AWAY, FENCED_REASON);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use autogate_store::{EventKind, StoreOptions};

    fn deleted(id: &str, rev: Revision) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key(id),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
        }
    }

    /// Another replica's record ending is news on a shared store (its sessions are to be
    /// ended), and none on the local one, where it can only be a previous process's.
    #[tokio::test]
    async fn a_record_that_ends_is_news_only_on_a_shared_store() {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let ttl = Duration::from_secs(5);
        let shared = Replicas::join(store.clone(), "a:1".into(), ttl, false)
            .await
            .unwrap();
        let local = Replicas::join(store, "b:1".into(), ttl, true)
            .await
            .unwrap();
        assert_eq!(shared.apply(&deleted("old", 10)).as_deref(), Some("old"));
        assert_eq!(local.apply(&deleted("old", 10)), None);
        assert_eq!(shared.apply(&deleted(shared.id(), 11)), None);
        assert_eq!(local.list(0).len(), 1);
    }
}
