//! The `memory` and `local` backends: the [`Engine`] behind one mutex, plus an expiry task.
//!
//! The mutex is a plain `std` mutex and is never held across an `.await`: every operation takes
//! it, runs synchronously, and releases it. For `local`, mutations also commit to the file while
//! holding it (so disk order = revision order), which blocks; those calls therefore run on
//! tokio's blocking pool instead of a runtime worker. Events reach watchers only after the commit.
//!
//! Lease expiry runs in a background task that sleeps until the earliest lease deadline (or until
//! a grant wakes it). It holds only a weak reference, so dropping the store closes the file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::engine::{Engine, Mutation, DEFAULT_HISTORY};
use crate::persist::Db;
use crate::{
    KeyValue, LeaseId, Revision, Store, StoreError, StoreStatus, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchStream,
};

/// How long the expiry task waits before retrying after a failed write.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);
/// Upper bound of the expiry task's sleep when there is no lease at all.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

struct State {
    engine: Engine,
    db: Option<Db>,
}

struct Inner {
    backend: &'static str,
    location: String,
    state: Mutex<State>,
    /// Shared with the expiry task (which must not keep `Inner` alive).
    wake: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the expiry task notice the store is gone instead of sleeping on.
        self.wake.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| {
            StoreError::Unavailable(format!(
                "{} store state is unusable after an earlier panic",
                self.backend
            ))
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Engine) -> T) -> Result<T, StoreError> {
        Ok(f(&self.lock()?.engine))
    }

    /// Applies a mutation, makes it durable (local), then publishes its events.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Engine, Instant) -> Result<(T, Mutation), StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.lock()?;
        let State { engine, db } = &mut *guard;
        let (out, mutation) = f(engine, Instant::now())?;
        let leases_changed = !mutation.changes.leases.is_empty();
        if let Some(db) = db {
            if !mutation.changes.is_empty() {
                if let Err(e) = db.commit(&mutation.changes, engine) {
                    engine.rollback(mutation.changes);
                    return Err(e);
                }
            }
        }
        engine.publish(mutation.events);
        drop(guard);
        if leases_changed {
            // A new lease may have the earliest deadline now.
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// One expiry pass; returns when the next one is due.
    fn expire(&self) -> Result<Option<Instant>, StoreError> {
        self.mutate(|engine, now| {
            let mutation = engine.expire(now);
            Ok(((), mutation))
        })?;
        self.read(Engine::next_deadline)
    }
}

/// The `memory` and `local` store.
#[derive(Clone)]
pub(crate) struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("backend", &self.inner.backend)
            .field("location", &self.inner.location)
            .finish()
    }
}

impl EmbeddedStore {
    pub fn memory() -> Result<Self, StoreError> {
        Self::start(
            "memory",
            "memory".into(),
            Engine::new(DEFAULT_HISTORY),
            None,
        )
    }

    pub async fn local(path: PathBuf) -> Result<Self, StoreError> {
        let (db, snapshot) = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("opening the store file failed: {e}"))
            })??;
        let engine = Engine::restore(snapshot, Instant::now(), DEFAULT_HISTORY);
        let location = db.path().display().to_string();
        Self::start("local", location, engine, Some(db))
    }

    fn start(
        backend: &'static str,
        location: String,
        engine: Engine,
        db: Option<Db>,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Config(format!("the {backend} store needs a tokio runtime"))
        })?;
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            backend,
            location,
            state: Mutex::new(State { engine, db }),
            wake: wake.clone(),
        });
        runtime.spawn(expiry_loop(Arc::downgrade(&inner), wake));
        Ok(Self { inner })
    }

    fn durable(&self) -> bool {
        self.inner.backend == "local"
    }

    /// Runs a state change: inline for memory, on the blocking pool for local (it fsyncs).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.durable() {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| StoreError::Unavailable(format!("store write task failed: {e}")))?
        } else {
            f(&self.inner)
        }
    }
}

async fn expiry_loop(store: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        // Register for wake-ups before looking at the state, so a grant in between is not missed.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let Some(inner) = store.upgrade() else { return };
        let durable = inner.backend == "local";
        let result = if durable {
            match tokio::task::spawn_blocking(move || inner.expire()).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Unavailable(format!(
                    "lease expiry task failed: {e}"
                ))),
            }
        } else {
            let r = inner.expire();
            drop(inner);
            r
        };
        let now = Instant::now();
        let next = match result {
            Ok(next) => next.unwrap_or(now + IDLE_SLEEP),
            Err(e) => {
                tracing::warn!(error = %e, "lease expiry pass failed; retrying");
                now + EXPIRY_RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            _ = &mut notified => {}
        }
    }
}

fn deleted_count(resp: &TxnResponse) -> i64 {
    match resp.responses.first() {
        Some(TxnOpResponse::Delete { deleted }) => *deleted,
        _ => 0,
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.read(|e| e.get(key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.read(|e| e.list(prefix))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let txn = Txn::new().and_then([TxnOp::Put {
            key: key.to_owned(),
            value,
            lease,
        }]);
        Ok(self.txn(txn).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let resp = self.txn(Txn::new().and_then([TxnOp::delete(key)])).await?;
        Ok(deleted_count(&resp) > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = self
            .txn(Txn::new().and_then([TxnOp::delete_prefix(prefix)]))
            .await?;
        Ok(deleted_count(&resp))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let writes = txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| !matches!(op, TxnOp::Get { .. } | TxnOp::GetPrefix { .. }));
        if !writes {
            // Read-only: no fsync, no need for the blocking pool.
            return self.inner.mutate(|e, now| e.txn(txn, now));
        }
        self.run(move |inner| inner.mutate(|e, now| e.txn(txn, now)))
            .await
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        let rx = self.inner.lock()?.engine.watch(prefix, start_revision);
        Ok(Box::pin(rx))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.run(move |inner| inner.mutate(|e, now| e.grant(ttl, now)))
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.lock()?.engine.keep_alive(lease, Instant::now())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.run(move |inner| inner.mutate(|e, _| Ok(((), e.revoke(lease)?))))
            .await
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.inner.read(|e| e.time_to_live(lease, Instant::now()))
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let revision = self.inner.read(Engine::revision)?;
        Ok(StoreStatus {
            backend: self.inner.backend,
            revision,
            endpoints: self.inner.location.clone(),
            version: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_get(mut resp: TxnResponse) -> Vec<KeyValue> {
        match resp.responses.pop() {
            Some(TxnOpResponse::Get(kvs)) => kvs,
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn read_only_txn_does_not_bump_revision() {
        let store = EmbeddedStore::memory().unwrap();
        let rev = store.put("a", b"1".to_vec(), None).await.unwrap();
        let resp = store
            .txn(Txn::new().and_then([TxnOp::get("a")]))
            .await
            .unwrap();
        assert_eq!(resp.revision, rev);
        assert_eq!(single_get(resp).len(), 1);
    }

    #[tokio::test]
    async fn dropping_the_store_stops_the_expiry_task() {
        let store = EmbeddedStore::memory().unwrap();
        let weak = Arc::downgrade(&store.inner);
        drop(store);
        assert!(weak.upgrade().is_none());
    }
}
