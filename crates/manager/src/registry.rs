//! Where the manager keeps its state: registered clusters and session history, in the store
//! (the embedded one under `data_dir`, or etcd shared by every replica), with the clusters and
//! catalogs also copied in memory.
//!
//! Layout (JSON values):
//! - `/manager/clusters/<cluster id>` → [`ClusterRecord`];
//! - `/manager/sessions/<cluster id>/<connected ms, 15 digits>-<sequence, 12 digits>` →
//!   [`SessionRecord`]; keys sort in connection order, so the newest sessions are the last keys;
//! - `/manager/services/<cluster id>` → [`Catalog`], the services the cluster announced last.
//!
//! The copies ([`Mirror`]) follow the store: this replica's own writes are applied at once with
//! their revision, everybody's writes (other replicas' included) through the store watch, and
//! a change is only applied when it is newer than what the copy holds. A registration made on
//! one replica is visible on the others as soon as their watch delivers it (milliseconds).
//! Catalogs are written behind the copy of the replica holding the cluster's session: the
//! gateway re-announces them on every connection, and the store copy carries them to the other
//! replicas and across restarts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use autogate_store::{
    Compare, EventKind, KeyValue, Revision, Store, StoreError, Txn, TxnOp, WatchEvent,
};

use crate::error::ManagerError;
use crate::mirror::Mirror;
use crate::model::{now_rfc3339, parse_rfc3339, Catalog, ClusterRecord, SessionRecord};

/// Prefix of the cluster records.
pub const CLUSTERS: &str = "/manager/clusters/";
const SESSIONS: &str = "/manager/sessions/";
/// Prefix of the service catalogs.
pub const SERVICES: &str = "/manager/services/";

/// Close reason recorded for sessions that were live when the manager stopped without closing
/// them (crash, kill -9).
pub const RESTART_REASON: &str = "manager restarted";

/// Close reason of the sessions a manager closes when it stops on a signal.
pub const SHUTDOWN_REASON: &str = "manager shutting down";

/// True when a session ended because the manager stopped (gracefully or not): the gap after it
/// is an outage of the manager, not a fail-over, whichever node connects next. The page's
/// timeline (assets/app.js) reads the same two reasons.
pub fn closed_by_manager_stop(reason: &str) -> bool {
    reason == SHUTDOWN_REASON || reason == RESTART_REASON
}

/// Store key of a cluster record.
pub fn cluster_key(id: &str) -> String {
    format!("{CLUSTERS}{id}")
}

/// Prefix of a cluster's session history.
pub fn sessions_prefix(id: &str) -> String {
    format!("{SESSIONS}{id}/")
}

/// Store key of a cluster's service catalog.
pub fn services_key(id: &str) -> String {
    format!("{SERVICES}{id}")
}

/// Registered clusters (copied in memory) and the store they live in.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn Store>,
    clusters: Mirror<ClusterRecord>,
    /// Ended-or-live records per cluster, to trim the history without listing it each time.
    history_len: Mutex<HashMap<String, usize>>,
    history_limit: usize,
    seq: AtomicU64,
    /// The latest catalog of each cluster.
    catalogs: Mirror<Arc<Catalog>>,
    /// Catalogs this replica received and has not written yet (newest first for its readers).
    unwritten: Mutex<HashMap<String, Arc<Catalog>>>,
    /// Serialises the catalog writes behind the cache, so the last write is the latest catalog.
    catalog_writes: tokio::sync::Mutex<()>,
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records hold strings, numbers and options only: serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ManagerError> {
    serde_json::from_slice(bytes).map_err(|e| ManagerError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A cluster record read from the store, or `None` (logged, naming the key) when it is not
/// one: a corrupt or foreign record must not stop the manager, nor be served.
fn cluster_of(kv: &KeyValue) -> Option<ClusterRecord> {
    match decode::<ClusterRecord>(&kv.key, &kv.value) {
        Ok(rec) if Some(rec.cluster_id.as_str()) == kv.key.strip_prefix(CLUSTERS) => Some(rec),
        Ok(rec) => {
            tracing::error!(
                "ignoring store record {}: it names cluster {:?}, not the one of its key",
                kv.key,
                crate::model::truncate(&rec.cluster_id, 80)
            );
            None
        }
        Err(e) => {
            tracing::error!("ignoring {e}");
            None
        }
    }
}

fn catalog_of(kv: &KeyValue) -> Option<Arc<Catalog>> {
    // A catalog that does not read back is only a cache miss: the gateway announces its
    // services again when it connects.
    match serde_json::from_slice::<Catalog>(&kv.value) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!("ignoring unreadable service catalog {}: {e}", kv.key);
            None
        }
    }
}

impl Registry {
    /// Loads every cluster, and closes the sessions recorded live that no live claim holds
    /// (`live`: the history keys of the claims of live replicas) with reason
    /// [`RESTART_REASON`]: they were live when their manager process stopped.
    pub async fn open(
        store: Arc<dyn Store>,
        history_limit: usize,
        live: &HashSet<String>,
    ) -> Result<Registry, ManagerError> {
        let clusters = Mirror::new();
        for kv in store.list(CLUSTERS).await? {
            if let Some(rec) = cluster_of(&kv) {
                clusters.put(&rec.cluster_id.clone(), rec, kv.mod_revision);
            }
        }
        let mut history_len: HashMap<String, usize> = HashMap::new();
        let now = now_rfc3339();
        let mut fixes = Vec::new();
        for kv in store.list(SESSIONS).await? {
            let Some(cluster) = kv
                .key
                .strip_prefix(SESSIONS)
                .and_then(|rest| rest.split_once('/'))
                .map(|(c, _)| c.to_owned())
            else {
                continue;
            };
            *history_len.entry(cluster).or_default() += 1;
            let mut rec: SessionRecord = match decode(&kv.key, &kv.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("ignoring {e}");
                    continue;
                }
            };
            if rec.disconnected_at.is_none() && !live.contains(&kv.key) {
                // Never earlier than the connection itself, even if the clock stepped back.
                let connected = parse_rfc3339(&rec.connected_at);
                let closed = match (connected, parse_rfc3339(&now)) {
                    (Some(c), Some(n)) if c > n => rec.connected_at.clone(),
                    _ => now.clone(),
                };
                rec.disconnected_at = Some(closed);
                rec.close_reason = Some(RESTART_REASON.to_owned());
                fixes.push(TxnOp::put(kv.key.clone(), encode(&rec)));
            }
        }
        let catalogs = Mirror::new();
        for kv in store.list(SERVICES).await? {
            if let (Some(c), Some(id)) = (catalog_of(&kv), kv.key.strip_prefix(SERVICES)) {
                catalogs.put(id, c, kv.mod_revision);
            }
        }
        if !fixes.is_empty() {
            tracing::info!(
                "closed {} session(s) left live by the previous run ({RESTART_REASON})",
                fixes.len()
            );
            for batch in fixes.chunks(autogate_store::TXN_OPS) {
                store.txn(Txn::new().and_then(batch.to_vec())).await?;
            }
        }
        Ok(Registry {
            store,
            clusters,
            history_len: Mutex::new(history_len),
            history_limit: history_limit.max(1),
            seq: AtomicU64::new(0),
            catalogs,
            unwritten: Mutex::new(HashMap::new()),
            catalog_writes: tokio::sync::Mutex::new(()),
        })
    }

    /// A watch event under [`CLUSTERS`] or [`SERVICES`]; returns the cluster it changed in
    /// this replica's copy (`None` when the copy had it already: this replica's own write).
    pub fn apply(&self, ev: &WatchEvent) -> Option<String> {
        let rev = ev.kv.mod_revision;
        if let Some(id) = ev.kv.key.strip_prefix(CLUSTERS) {
            let changed = match ev.kind {
                EventKind::Put => {
                    let rec = cluster_of(&ev.kv)?;
                    self.clusters.put(id, rec, rev)
                }
                EventKind::Delete => {
                    self.history_lens().remove(id);
                    self.clusters.remove(id, rev).is_some()
                }
            };
            return changed.then(|| id.to_owned());
        }
        let id = ev.kv.key.strip_prefix(SERVICES)?;
        let changed = match ev.kind {
            EventKind::Put => {
                let c = catalog_of(&ev.kv)?;
                self.catalogs.put(id, c, rev)
            }
            EventKind::Delete => self.catalogs.remove(id, rev).is_some(),
        };
        changed.then(|| id.to_owned())
    }

    /// Reads clusters and catalogs again (after the watch was lost).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let clusters = self.store.list(CLUSTERS).await?;
        self.clusters.reset(clusters.iter().filter_map(|kv| {
            let rec = cluster_of(kv)?;
            Some((rec.cluster_id.clone(), rec, kv.mod_revision))
        }));
        let catalogs = self.store.list(SERVICES).await?;
        self.catalogs.reset(catalogs.iter().filter_map(|kv| {
            let id = kv.key.strip_prefix(SERVICES)?.to_owned();
            Some((id, catalog_of(kv)?, kv.mod_revision))
        }));
        Ok(())
    }

    /// Forgets tombstones the watch has passed.
    pub fn passed(&self, rev: Revision) {
        self.clusters.passed(rev);
        self.catalogs.passed(rev);
    }

    /// The store behind the registry.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A cluster, from the copy.
    pub fn get(&self, id: &str) -> Option<ClusterRecord> {
        self.clusters.get(id)
    }

    /// A cluster and the revision of its record.
    pub fn get_with_rev(&self, id: &str) -> Option<(ClusterRecord, Revision)> {
        self.clusters.get_with_rev(id)
    }

    /// Every cluster, sorted by id.
    pub fn list(&self) -> Vec<ClusterRecord> {
        let mut all: Vec<ClusterRecord> = self.clusters.values();
        all.sort_by(|a, b| a.cluster_id.cmp(&b.cluster_id));
        all
    }

    /// The clusters that pin the certificate with this fingerprint, sorted. One at most for
    /// every registration made since fingerprints became unique; a store written before may
    /// still hold a fingerprint pinned to several, which the caller treats as ambiguous.
    pub fn pinned_by(&self, fingerprint: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .clusters
            .filter(|_, r| r.certificate(fingerprint).is_some())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// Number of registered clusters.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Whether no cluster is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new cluster; `Ok(false)` when the id is taken.
    pub async fn create(&self, rec: ClusterRecord) -> Result<bool, StoreError> {
        let key = cluster_key(&rec.cluster_id);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::missing(key.clone())])
                    .and_then([TxnOp::put(key, encode(&rec))]),
            )
            .await?;
        if resp.succeeded {
            self.clusters
                .put(&rec.cluster_id.clone(), rec, resp.revision);
        }
        Ok(resp.succeeded)
    }

    /// The store operation writing `rec`; apply with [`Registry::cache_put`] after it succeeded.
    pub fn put_op(rec: &ClusterRecord) -> TxnOp {
        TxnOp::put(cluster_key(&rec.cluster_id), encode(rec))
    }

    /// Applies a successful write (at revision `rev`) to the copy.
    pub fn cache_put(&self, rec: ClusterRecord, rev: Revision) {
        self.clusters.put(&rec.cluster_id.clone(), rec, rev);
    }

    /// Deletes a cluster and its history; `false` when it did not exist.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let key = cluster_key(id);
        let resp = self
            .store
            .txn(Txn::new().when([Compare::exists(key.clone())]).and_then([
                TxnOp::delete(key),
                TxnOp::delete_prefix(sessions_prefix(id)),
                TxnOp::delete(services_key(id)),
                TxnOp::delete(crate::claims::claim_key(id)),
                TxnOp::delete(crate::members::members_key(id)),
            ]))
            .await?;
        if resp.succeeded {
            self.clusters.remove(id, resp.revision);
            self.history_lens().remove(id);
            self.catalogs.remove(id, resp.revision);
            self.unwritten().remove(id);
        }
        Ok(resp.succeeded)
    }

    /// The latest catalog of a cluster, if it ever announced one.
    pub fn catalog(&self, cluster: &str) -> Option<Arc<Catalog>> {
        if let Some(c) = self.unwritten().get(cluster) {
            return Some(c.clone());
        }
        self.catalogs.get(cluster)
    }

    /// Keeps a newly announced catalog (in this replica's copy at once; see
    /// [`Registry::persist_catalog`]). Ignored for a cluster that is not registered.
    pub fn set_catalog(&self, cluster: &str, catalog: Catalog) {
        if self.get(cluster).is_none() {
            return;
        }
        self.unwritten()
            .insert(cluster.to_owned(), Arc::new(catalog));
    }

    fn unwritten(&self) -> MutexGuard<'_, HashMap<String, Arc<Catalog>>> {
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the cluster's current catalog to the store, unless the cluster was deleted in
    /// the meantime. Failures are logged: the catalog is still served from memory.
    pub async fn persist_catalog(&self, cluster: &str) {
        let _serial = self.catalog_writes.lock().await;
        let Some(catalog) = self.catalog(cluster) else {
            return;
        };
        let txn = Txn::new()
            .when([Compare::exists(cluster_key(cluster))])
            .and_then([TxnOp::put(services_key(cluster), encode(&*catalog))]);
        match self.store.txn(txn).await {
            Ok(r) if r.succeeded => {
                self.catalogs.put(cluster, catalog.clone(), r.revision);
                let mut unwritten = self.unwritten();
                if unwritten
                    .get(cluster)
                    .is_some_and(|c| Arc::ptr_eq(c, &catalog))
                {
                    unwritten.remove(cluster);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot store the service catalog of cluster {cluster}: {e}"),
        }
    }

    fn history_lens(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.history_len.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh history key for a session of `cluster` connected now.
    pub fn new_session_key(&self, cluster: &str) -> String {
        let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}{ms:015}-{seq:012}", sessions_prefix(cluster))
    }

    /// The store operation writing a session record.
    pub fn session_op(key: &str, rec: &SessionRecord) -> TxnOp {
        TxnOp::put(key, encode(rec))
    }

    /// Notes that a new session record was written for `cluster`, and deletes the oldest ones
    /// beyond the history limit. Trimming failures are logged, not returned: the session itself
    /// is fine, and the next insert tries again.
    pub async fn after_insert(&self, cluster: &str) {
        let over = {
            let mut lens = self.history_lens();
            let n = lens.entry(cluster.to_owned()).or_default();
            *n += 1;
            n.saturating_sub(self.history_limit)
        };
        if over == 0 {
            return;
        }
        let prefix = sessions_prefix(cluster);
        let result = async {
            let all = self.store.list(&prefix).await?;
            // Never trim a live record: only ended ones count as history to drop.
            let doomed: Vec<TxnOp> = all
                .iter()
                .filter(|kv| {
                    serde_json::from_slice::<SessionRecord>(&kv.value)
                        .map(|r| r.disconnected_at.is_some())
                        .unwrap_or(true)
                })
                .take(all.len().saturating_sub(self.history_limit))
                .map(|kv| TxnOp::delete(kv.key.clone()))
                .collect();
            let removed = doomed.len();
            for batch in doomed.chunks(autogate_store::TXN_OPS) {
                self.store.txn(Txn::new().and_then(batch.to_vec())).await?;
            }
            Ok::<usize, StoreError>(removed)
        }
        .await;
        match result {
            Ok(removed) => {
                let mut lens = self.history_lens();
                if let Some(n) = lens.get_mut(cluster) {
                    *n = n.saturating_sub(removed);
                }
            }
            Err(e) => tracing::warn!("cannot trim the session history of cluster {cluster}: {e}"),
        }
    }

    /// A cluster's sessions, newest first, at most `limit`.
    pub async fn sessions(
        &self,
        cluster: &str,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, ManagerError> {
        let all = self.store.list(&sessions_prefix(cluster)).await?;
        all.iter()
            .rev()
            .take(limit)
            .map(|kv| decode(&kv.key, &kv.value))
            .collect()
    }

    /// The configured history length.
    pub fn history_limit(&self) -> usize {
        self.history_limit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::ClusterState;
    use autogate_store::StoreOptions;

    fn cluster(id: &str) -> ClusterRecord {
        ClusterRecord {
            cluster_id: id.into(),
            name: id.into(),
            state: ClusterState::Enabled,
            certificates: vec![],
            created_at: now_rfc3339(),
            highest_term: None,
        }
    }

    fn session(node: &str) -> SessionRecord {
        SessionRecord {
            session_id: "s".into(),
            node_id: node.into(),
            node_name: None,
            term: Some(1),
            remote_addr: "127.0.0.1:1".into(),
            connected_at: now_rfc3339(),
            disconnected_at: None,
            close_reason: None,
        }
    }

    #[tokio::test]
    async fn create_is_exclusive_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let store = autogate_store::open(StoreOptions::Local { path: path.clone() })
                .await
                .unwrap();
            let reg = Registry::open(store.clone(), 10, &HashSet::new())
                .await
                .unwrap();
            assert!(reg.create(cluster("a")).await.unwrap());
            assert!(!reg.create(cluster("a")).await.unwrap());
            let key = reg.new_session_key("a");
            store
                .txn(Txn::new().and_then([Registry::session_op(&key, &session("n1"))]))
                .await
                .unwrap();
        }
        let store = autogate_store::open(StoreOptions::Local { path })
            .await
            .unwrap();
        let reg = Registry::open(store, 10, &HashSet::new()).await.unwrap();
        assert_eq!(reg.list().len(), 1);
        let s = reg.sessions("a", 10).await.unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].close_reason.as_deref(), Some(RESTART_REASON));
        assert!(s[0].disconnected_at.as_deref().unwrap() >= s[0].connected_at.as_str());
        assert!(reg.delete("a").await.unwrap());
        assert!(reg.sessions("a", 10).await.unwrap().is_empty());
        assert!(!reg.delete("a").await.unwrap());
    }

    #[tokio::test]
    async fn catalogs_survive_a_restart_and_go_with_their_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let catalog = |n: usize| Catalog {
            services: (0..n)
                .map(|i| {
                    serde_json::from_value(serde_json::json!({
                        "name": format!("s{i}"), "type": "executable"}))
                    .unwrap()
                })
                .collect(),
            updated_at: now_rfc3339(),
            node_id: "n1".into(),
            session_id: "s".into(),
            truncated: false,
            total: n,
        };
        {
            let store = autogate_store::open(StoreOptions::Local { path: path.clone() })
                .await
                .unwrap();
            let reg = Registry::open(store, 10, &HashSet::new()).await.unwrap();
            // Not registered: ignored.
            reg.set_catalog("a", catalog(1));
            assert!(reg.catalog("a").is_none());
            assert!(reg.create(cluster("a")).await.unwrap());
            assert!(reg.create(cluster("b")).await.unwrap());
            reg.set_catalog("a", catalog(1));
            reg.persist_catalog("a").await;
            reg.set_catalog("a", catalog(2));
            reg.persist_catalog("a").await;
            reg.set_catalog("b", catalog(3));
            reg.persist_catalog("b").await;
            assert!(reg.delete("b").await.unwrap());
            assert!(reg.catalog("b").is_none());
            // A write behind a delete does not bring the catalog back.
            reg.persist_catalog("b").await;
        }
        let store = autogate_store::open(StoreOptions::Local { path })
            .await
            .unwrap();
        let reg = Registry::open(store.clone(), 10, &HashSet::new())
            .await
            .unwrap();
        assert_eq!(reg.catalog("a").unwrap().services.len(), 2);
        assert!(reg.catalog("b").is_none());
        assert!(store.get(&services_key("b")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn history_is_trimmed_to_the_limit_keeping_live_sessions() {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let reg = Registry::open(store.clone(), 3, &HashSet::new())
            .await
            .unwrap();
        let live_key = reg.new_session_key("c");
        store
            .txn(Txn::new().and_then([Registry::session_op(&live_key, &session("live"))]))
            .await
            .unwrap();
        reg.after_insert("c").await;
        for i in 0..5 {
            let key = reg.new_session_key("c");
            let mut rec = session(&format!("n{i}"));
            rec.disconnected_at = Some(now_rfc3339());
            rec.close_reason = Some("bye".into());
            store
                .txn(Txn::new().and_then([Registry::session_op(&key, &rec)]))
                .await
                .unwrap();
            reg.after_insert("c").await;
        }
        let s = reg.sessions("c", 100).await.unwrap();
        let nodes: Vec<&str> = s.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(nodes, ["n4", "n3", "live"]);
    }

    /// On etcd, which refuses a transaction of more than 128 operations: a start that closes
    /// 300 sessions left live, and a history cut from 300 to 10, both go through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sessions_are_closed_and_trimmed_on_etcd() {
        let etcd = autogate_testkit::etcd::EtcdServer::start();
        let options = autogate_store::EtcdOptions::new(etcd.endpoints());
        let store = autogate_store::open(StoreOptions::Etcd(options))
            .await
            .unwrap();
        let reg = Registry::open(store.clone(), 1000, &HashSet::new())
            .await
            .unwrap();
        assert!(reg.create(cluster("c")).await.unwrap());
        for i in 0..300 {
            let key = reg.new_session_key("c");
            store
                .txn(Txn::new().and_then([Registry::session_op(&key, &session(&format!("n{i}")))]))
                .await
                .unwrap();
        }
        let reg = Registry::open(store.clone(), 10, &HashSet::new())
            .await
            .unwrap();
        let all = store.list(&sessions_prefix("c")).await.unwrap();
        assert_eq!(all.len(), 300);
        for kv in &all {
            let rec: SessionRecord = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(
                rec.close_reason.as_deref(),
                Some(RESTART_REASON),
                "{}",
                kv.key
            );
        }
        reg.after_insert("c").await;
        assert_eq!(store.list(&sessions_prefix("c")).await.unwrap().len(), 10);
    }
}
