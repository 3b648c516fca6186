//! A store seen through a key prefix, so that one etcd can hold several independent users (two
//! managers, each with its own prefix) while their code keeps writing the same keys as on a
//! store of their own.
//!
//! Every key going in gets the prefix in front; every key coming out (reads, transaction
//! reads, watch events) loses it. Keys given to the wrapper start with `/`, and a prefix
//! operation on `""` (the root) covers `<prefix>/`: that way the root of `/m` never reaches into
//! `/m2/…` or `/m-index/…`, which a plain string prefix would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    Compare, KeyValue, LeaseId, Revision, Store, StoreError, StoreStatus, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchEvent, WatchStream,
};

/// `inner` seen through `prefix` (e.g. `/autogate-manager`): `put("/a", …)` writes
/// `/autogate-manager/a`. An empty prefix returns `inner` unchanged.
pub fn with_prefix(inner: Arc<dyn Store>, prefix: &str) -> Arc<dyn Store> {
    if prefix.is_empty() {
        return inner;
    }
    Arc::new(Prefixed {
        inner,
        prefix: prefix.to_string(),
    })
}

#[derive(Debug)]
struct Prefixed {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl Prefixed {
    /// The inner key of a single key. A key without a leading `/` would glue onto the prefix
    /// (`/m` + `x` is `/mx`, another prefix's territory), so it is refused.
    fn key(&self, key: &str) -> Result<String, StoreError> {
        if !key.starts_with('/') {
            return Err(StoreError::InvalidArgument(format!(
                "key {key:?} of the store under prefix {} does not start with '/'",
                self.prefix
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// The inner prefix of a range: the root (`""`) is everything under `<prefix>/`.
    fn range(&self, prefix: &str) -> Result<String, StoreError> {
        if prefix.is_empty() {
            return Ok(format!("{}/", self.prefix));
        }
        self.key(prefix)
    }

    /// The key as the wrapper's user knows it. Everything the inner store returns lies under
    /// the prefix, because every request was made under it.
    fn strip(&self, key: String) -> String {
        match key.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => key,
        }
    }

    fn strip_kv(&self, mut kv: KeyValue) -> KeyValue {
        kv.key = self.strip(std::mem::take(&mut kv.key));
        kv
    }

    fn compare(&self, mut c: Compare) -> Result<Compare, StoreError> {
        c.key = self.key(&c.key)?;
        Ok(c)
    }

    fn op(&self, op: TxnOp) -> Result<TxnOp, StoreError> {
        Ok(match op {
            TxnOp::Put { key, value, lease } => TxnOp::Put {
                key: self.key(&key)?,
                value,
                lease,
            },
            TxnOp::Delete { key } => TxnOp::Delete {
                key: self.key(&key)?,
            },
            TxnOp::DeletePrefix { prefix } => TxnOp::DeletePrefix {
                prefix: self.range(&prefix)?,
            },
            TxnOp::Get { key } => TxnOp::Get {
                key: self.key(&key)?,
            },
            TxnOp::GetPrefix { prefix } => TxnOp::GetPrefix {
                prefix: self.range(&prefix)?,
            },
        })
    }
}

#[async_trait]
impl Store for Prefixed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let kv = self.inner.get(&self.key(key)?).await?;
        Ok(kv.map(|kv| self.strip_kv(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let kvs = self.inner.list(&self.range(prefix)?).await?;
        Ok(kvs.into_iter().map(|kv| self.strip_kv(kv)).collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.inner.put(&self.key(key)?, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(&self.key(key)?).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        self.inner.delete_prefix(&self.range(prefix)?).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let inner = Txn {
            compares: txn
                .compares
                .into_iter()
                .map(|c| self.compare(c))
                .collect::<Result<_, _>>()?,
            success: txn
                .success
                .into_iter()
                .map(|op| self.op(op))
                .collect::<Result<_, _>>()?,
            failure: txn
                .failure
                .into_iter()
                .map(|op| self.op(op))
                .collect::<Result<_, _>>()?,
        };
        let mut response = self.inner.txn(inner).await?;
        for r in &mut response.responses {
            if let TxnOpResponse::Get(kvs) = r {
                for kv in kvs.iter_mut() {
                    kv.key = self.strip(std::mem::take(&mut kv.key));
                }
            }
        }
        Ok(response)
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        let stream = self
            .inner
            .watch(&self.range(prefix)?, start_revision)
            .await?;
        let outer = self.prefix.clone();
        Ok(Box::pin(stream.map(move |item| {
            item.map(|mut event: WatchEvent| {
                if let Some(rest) = event.kv.key.strip_prefix(outer.as_str()) {
                    event.kv.key = rest.to_string();
                }
                event
            })
        })))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke(lease).await
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.inner.time_to_live(lease).await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.inner.status().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{CompareOp, EtcdOptions, EventKind, StoreOptions};

    async fn memory() -> Arc<dyn Store> {
        crate::open(StoreOptions::Memory).await.unwrap()
    }

    fn keys(kvs: &[KeyValue]) -> Vec<&str> {
        kvs.iter().map(|kv| kv.key.as_str()).collect()
    }

    /// The next event of a watch, within a deadline.
    async fn next_event(stream: &mut WatchStream) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watch event within 10s")
            .expect("the watch stream is open")
            .expect("a watch event, not an error")
    }

    #[tokio::test]
    async fn empty_prefix_is_the_store_itself() {
        let raw = memory().await;
        let same = with_prefix(raw.clone(), "");
        assert!(Arc::ptr_eq(&raw, &same));
    }

    #[tokio::test]
    async fn reads_and_writes_go_under_the_prefix() {
        let raw = memory().await;
        let s = with_prefix(raw.clone(), "/mgr");
        let rev = s.put("/a/1", b"one".to_vec(), None).await.unwrap();
        s.put("/a/2", b"two".to_vec(), None).await.unwrap();
        s.put("/b", b"b".to_vec(), None).await.unwrap();

        let raw_keys = raw.list("").await.unwrap();
        assert_eq!(keys(&raw_keys), ["/mgr/a/1", "/mgr/a/2", "/mgr/b"]);
        let kv = s.get("/a/1").await.unwrap().unwrap();
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice()),
            ("/a/1", &b"one"[..])
        );
        assert_eq!(kv.mod_revision, rev);
        assert_eq!(keys(&s.list("/a/").await.unwrap()), ["/a/1", "/a/2"]);
        // The root of the prefix lists everything under it.
        assert_eq!(keys(&s.list("").await.unwrap()), ["/a/1", "/a/2", "/b"]);

        assert!(s.delete("/b").await.unwrap());
        assert!(raw.get("/mgr/b").await.unwrap().is_none());
        assert_eq!(s.delete_prefix("/a/").await.unwrap(), 2);
        assert!(raw.list("").await.unwrap().is_empty());

        // A key without a leading '/' would land in another prefix's range.
        let e = s.put("x", b"x".to_vec(), None).await.unwrap_err();
        assert!(
            matches!(e, StoreError::InvalidArgument(ref m) if m.contains("\"x\"") && m.contains("/mgr")),
            "{e}"
        );
        assert!(raw.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn two_prefixes_are_isolated_even_when_one_extends_the_other() {
        let raw = memory().await;
        let m = with_prefix(raw.clone(), "/m");
        let m2 = with_prefix(raw.clone(), "/m2");
        m.put("/k", b"m".to_vec(), None).await.unwrap();
        m2.put("/k", b"m2".to_vec(), None).await.unwrap();
        raw.put("/m-index/k", b"index".to_vec(), None)
            .await
            .unwrap();

        assert_eq!(m.get("/k").await.unwrap().unwrap().value, b"m");
        assert_eq!(m2.get("/k").await.unwrap().unwrap().value, b"m2");
        assert_eq!(keys(&m.list("").await.unwrap()), ["/k"]);
        assert_eq!(keys(&m2.list("").await.unwrap()), ["/k"]);
        assert_eq!(m.delete_prefix("").await.unwrap(), 1);
        assert_eq!(m2.get("/k").await.unwrap().unwrap().value, b"m2");
        assert!(raw.get("/m-index/k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn transactions_compare_and_read_under_the_prefix() {
        let raw = memory().await;
        let s = with_prefix(raw.clone(), "/mgr");
        // A raw key with the same name outside the prefix must not satisfy the compare.
        raw.put("/live/c1", b"outside".to_vec(), None)
            .await
            .unwrap();
        let claim = |holder: &str| {
            Txn::new()
                .when([Compare::missing("/live/c1")])
                .and_then([
                    TxnOp::put("/live/c1", holder.as_bytes().to_vec()),
                    TxnOp::put("/sessions/c1/1", b"history".to_vec()),
                ])
                .or_else([TxnOp::get("/live/c1"), TxnOp::get_prefix("/sessions/")])
        };
        let first = s.txn(claim("replica-a")).await.unwrap();
        assert!(first.succeeded);
        let second = s.txn(claim("replica-b")).await.unwrap();
        assert!(!second.succeeded);
        let TxnOpResponse::Get(live) = &second.responses[0] else {
            panic!("{second:?}")
        };
        assert_eq!(keys(live), ["/live/c1"]);
        assert_eq!(live[0].value, b"replica-a");
        let TxnOpResponse::Get(history) = &second.responses[1] else {
            panic!("{second:?}")
        };
        assert_eq!(keys(history), ["/sessions/c1/1"]);

        // A value compare and a delete in one transaction, both through the prefix.
        let kv = s.get("/live/c1").await.unwrap().unwrap();
        let supersede = Txn::new()
            .when([
                Compare::value("/live/c1", CompareOp::Equal, b"replica-a".to_vec()),
                Compare::mod_revision("/live/c1", CompareOp::Equal, kv.mod_revision),
            ])
            .and_then([
                TxnOp::put("/live/c1", b"replica-b".to_vec()),
                TxnOp::delete_prefix("/sessions/"),
            ]);
        assert!(s.txn(supersede).await.unwrap().succeeded);
        assert_eq!(
            s.get("/live/c1").await.unwrap().unwrap().value,
            b"replica-b"
        );
        assert!(s.list("/sessions/").await.unwrap().is_empty());
        assert_eq!(
            raw.get("/live/c1").await.unwrap().unwrap().value,
            b"outside"
        );

        let e = s
            .txn(Txn::new().when([Compare::exists("nope")]))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");
    }

    #[tokio::test]
    async fn watch_sees_its_prefix_only_with_keys_stripped() {
        let raw = memory().await;
        let s = with_prefix(raw.clone(), "/m");
        let mut all = s.watch("", None).await.unwrap();
        let mut live = s.watch("/live/", None).await.unwrap();
        // Neighbours whose names extend the prefix are not ours.
        raw.put("/m2/live/x", b"no".to_vec(), None).await.unwrap();
        raw.put("/m-index/d", b"no".to_vec(), None).await.unwrap();
        s.put("/other", b"1".to_vec(), None).await.unwrap();
        s.put("/live/c1", b"2".to_vec(), None).await.unwrap();
        s.delete("/live/c1").await.unwrap();

        let e = next_event(&mut all).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Put, "/other"));
        let e = next_event(&mut all).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Put, "/live/c1"));
        let e = next_event(&mut live).await;
        assert_eq!(
            (e.kind, e.kv.key.as_str(), e.kv.value.as_slice()),
            (EventKind::Put, "/live/c1", &b"2"[..])
        );
        let e = next_event(&mut live).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/live/c1"));
        let e = next_event(&mut all).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/live/c1"));

        // A watch from a past revision replays through the prefix too.
        let first = s.get("/other").await.unwrap().unwrap().mod_revision;
        let mut replay = s.watch("/", Some(first)).await.unwrap();
        let e = next_event(&mut replay).await;
        assert_eq!(e.kv.key, "/other");
    }

    #[tokio::test]
    async fn leases_and_status_pass_through() {
        let raw = memory().await;
        let s = with_prefix(raw.clone(), "/m");
        assert_eq!(s.backend(), "memory");
        assert_eq!(s.status().await.unwrap(), raw.status().await.unwrap());
        let lease = s.grant(Duration::from_secs(30)).await.unwrap();
        s.put("/replicas/r1", b"r1".to_vec(), Some(lease))
            .await
            .unwrap();
        assert_eq!(
            raw.get("/m/replicas/r1").await.unwrap().unwrap().lease,
            lease
        );
        assert!(raw.time_to_live(lease).await.unwrap().is_some());
        s.keep_alive(lease).await.unwrap();
        s.revoke(lease).await.unwrap();
        assert!(s.get("/replicas/r1").await.unwrap().is_none());
    }

    /// The same on a real etcd: the wrapper must not rely on anything the embedded engine
    /// happens to do (range ends of prefixes, key order, watch encoding).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_etcd_prefixes_are_isolated_and_watches_stripped() {
        let etcd = autogate_testkit::etcd::EtcdServer::start();
        let raw = crate::open(StoreOptions::Etcd(EtcdOptions::new(etcd.endpoints())))
            .await
            .unwrap();
        let a = with_prefix(raw.clone(), "/mgr");
        let b = with_prefix(raw.clone(), "/mgr2");
        let mut watch = a.watch("", None).await.unwrap();

        b.put("/live/c1", b"b".to_vec(), None).await.unwrap();
        let claim = Txn::new()
            .when([Compare::missing("/live/c1")])
            .and_then([TxnOp::put("/live/c1", b"a".to_vec())])
            .or_else([TxnOp::get("/live/c1")]);
        assert!(a.txn(claim.clone()).await.unwrap().succeeded);
        let again = a.txn(claim).await.unwrap();
        assert!(!again.succeeded);
        assert!(
            matches!(&again.responses[0], TxnOpResponse::Get(kvs) if keys(kvs) == ["/live/c1"] && kvs[0].value == b"a")
        );

        let e = next_event(&mut watch).await;
        assert_eq!(
            (e.kind, e.kv.key.as_str(), e.kv.value.as_slice()),
            (EventKind::Put, "/live/c1", &b"a"[..])
        );
        assert_eq!(keys(&a.list("").await.unwrap()), ["/live/c1"]);
        assert_eq!(keys(&b.list("").await.unwrap()), ["/live/c1"]);
        assert_eq!(
            keys(&raw.list("/").await.unwrap()),
            ["/mgr/live/c1", "/mgr2/live/c1"]
        );
        assert_eq!(a.delete_prefix("").await.unwrap(), 1);
        let e = next_event(&mut watch).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/live/c1"));
        assert_eq!(b.get("/live/c1").await.unwrap().unwrap().value, b"b");
        assert_eq!(a.status().await.unwrap().backend, "etcd");

        // Leases bound through the wrapper end the prefixed key on etcd too.
        let lease = a.grant(Duration::from_secs(30)).await.unwrap();
        a.put("/replicas/r1", b"r1".to_vec(), Some(lease))
            .await
            .unwrap();
        a.revoke(lease).await.unwrap();
        assert!(a.get("/replicas/r1").await.unwrap().is_none());
    }
}
