//! Imports larger than one transaction (staged, committed at once, rolled forward), the reads
//! that see a committed import before it is rolled forward, the removal of an abandoned
//! import's staging, JSON export and `validate_file`. The transaction limit is lowered so the
//! embedded stores take the staged path real etcd needs (the etcd runs are in the binary's
//! integration tests, `family_import`).

mod common;

use std::collections::BTreeSet;

use autogate_resources::{
    Document, ImportError, ImportMode, ImportOutcome, Kind, Resources, Service,
};
use common::*;

/// `n` executable services on one executable-object.
fn big_file(n: usize) -> String {
    let mut f =
        String::from("executable-objects:\n  - name: sh\n    exec-command: /bin/sh\nservices:\n");
    for i in 0..n {
        f.push_str(&format!(
            "  - name: svc-{i:04}\n    type: executable\n    executable-object: sh\n"
        ));
    }
    f
}

/// Keys outside the resources and their bookkeeping that an import may leave behind.
async fn import_keys(b: &Backend) -> Vec<String> {
    dump(&b.store)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/import-") || k.ends_with("/resources-import"))
        .collect()
}

#[tokio::test]
async fn an_import_larger_than_one_transaction_lands_whole() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1").with_txn_limits(4, 1 << 20);
        r.create(exe("other")).await.unwrap();
        let report = r
            .import(&big_file(50), ImportMode::default())
            .await
            .unwrap();
        assert!(report.written);
        assert_eq!(report.items.len(), 51);
        assert_eq!(r.names(Kind::Service).await.unwrap().len(), 50);
        assert!(
            import_keys(&b).await.is_empty(),
            "{:?}",
            import_keys(&b).await
        );
        // Imported again: nothing to write; with a change and force: replaced, still whole.
        let again = r
            .import(&big_file(50), ImportMode::default())
            .await
            .unwrap();
        assert!(!again.written);
        let changed = big_file(50).replace(
            "type: executable\n",
            "type: executable\n    description: v2\n",
        );
        let forced = r
            .import(
                &changed,
                ImportMode {
                    check: false,
                    force: true,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            forced
                .items
                .iter()
                .filter(|i| i.outcome == ImportOutcome::Replacement)
                .count(),
            50
        );
        let all: Vec<Service> = r.list().await.unwrap();
        assert!(all.iter().all(|s| s.meta.description == "v2"));
        // A byte limit splits too.
        let r = Resources::new(b.store.clone(), "c2").with_txn_limits(1000, 300);
        r.import(&big_file(30), ImportMode::default())
            .await
            .unwrap();
        assert_eq!(r.names(Kind::Service).await.unwrap().len(), 30);
        assert!(import_keys(&b).await.is_empty());
    }
}

#[tokio::test]
async fn a_bad_item_deep_in_a_large_file_writes_nothing() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1").with_txn_limits(4, 1 << 20);
        let before = dump(&b.store).await;
        let bad = big_file(100).replace(
            "  - name: svc-0090\n    type: executable\n    executable-object: sh\n",
            "  - name: svc-0090\n    type: executable\n    executable-object: nowhere\n",
        );
        let err = r.import(&bad, ImportMode::default()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("svc-0090") && text.contains("executable-object"),
            "{text}"
        );
        assert_eq!(dump(&b.store).await, before);
        let unknown = big_file(100).replace(
            "  - name: svc-0090\n    type: executable\n",
            "  - name: svc-0090\n    type: executable\n    colour: red\n",
        );
        let err = r.import(&unknown, ImportMode::default()).await.unwrap_err();
        assert!(matches!(err, ImportError::Parse(_)));
        let text = err.to_string();
        assert!(
            text.contains("service svc-0090: services[90]") && text.contains("colour"),
            "{text}"
        );
        assert_eq!(dump(&b.store).await, before);
    }
}

/// What a crash right after the commit leaves: the marker and the staged records, nothing
/// copied yet. Readers see the import; the next write rolls it forward first.
#[tokio::test]
async fn a_committed_import_is_seen_at_once_and_finished_by_the_next_write() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.create(exe("sh")).await.unwrap();
        let mut staged = Vec::new();
        for i in 0..3 {
            let mut s = executable(&format!("late-{i}"), "sh");
            s.meta.description = "from the import".into();
            staged.push(s);
        }
        // An older version of late-0 is live: the staged one wins.
        r.create(executable("late-0", "sh")).await.unwrap();
        for s in &staged {
            b.store
                .put(
                    &format!("/autogate/c1/import-data/abc/service/{}", s.meta.name),
                    serde_json::to_vec(s).unwrap(),
                    None,
                )
                .await
                .unwrap();
        }
        // Staged but not committed: nobody sees it.
        assert_eq!(r.names(Kind::Service).await.unwrap(), ["late-0"]);
        b.store
            .put("/autogate/c1/resources-import", b"abc".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(
            r.names(Kind::Service).await.unwrap(),
            ["late-0", "late-1", "late-2"]
        );
        let one: Service = r.get("late-0").await.unwrap().unwrap();
        assert_eq!(one.meta.description, "from the import");
        let all: Vec<Service> = r.list().await.unwrap();
        assert!(all.iter().all(|s| s.meta.description == "from the import"));
        let exported = Document::parse(&r.export().await.unwrap()).unwrap();
        assert_eq!(exported.services.len(), 3);
        // The next write finishes it, then writes.
        r.create(exe("bash")).await.unwrap();
        assert!(b
            .store
            .get("/autogate/c1/resources-import")
            .await
            .unwrap()
            .is_none());
        assert!(b
            .store
            .list("/autogate/c1/import-data/")
            .await
            .unwrap()
            .is_empty());
        let raw = b
            .store
            .get("/autogate/c1/resources/service/late-0")
            .await
            .unwrap()
            .unwrap();
        let live: Service = serde_json::from_slice(&raw.value).unwrap();
        assert_eq!(live.meta.description, "from the import");
        assert_eq!(r.names(Kind::Service).await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn abandoned_staging_is_removed_and_a_live_one_is_not() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let s = &b.store;
        // Importer "dead": a job without its owner.
        s.put("/autogate/c1/import-jobs/dead", Vec::new(), None)
            .await
            .unwrap();
        s.put(
            "/autogate/c1/import-data/dead/service/x",
            b"{}".to_vec(),
            None,
        )
        .await
        .unwrap();
        // Importer "alive": its owner key lives on a lease.
        let lease = s.grant(std::time::Duration::from_secs(60)).await.unwrap();
        s.put("/autogate/c1/import-owners/alive", Vec::new(), Some(lease))
            .await
            .unwrap();
        s.put("/autogate/c1/import-jobs/alive", Vec::new(), None)
            .await
            .unwrap();
        s.put(
            "/autogate/c1/import-data/alive/service/y",
            b"{}".to_vec(),
            None,
        )
        .await
        .unwrap();
        r.ensure_builtins().await.unwrap();
        let left: BTreeSet<String> = import_keys(&b).await.into_iter().collect();
        assert_eq!(
            left,
            BTreeSet::from([
                "/autogate/c1/import-data/alive/service/y".to_owned(),
                "/autogate/c1/import-jobs/alive".to_owned(),
                "/autogate/c1/import-owners/alive".to_owned(),
            ])
        );
        // Neither staging was ever visible.
        assert!(r.names(Kind::Service).await.unwrap().is_empty());
        s.revoke(lease).await.unwrap();
        r.ensure_builtins().await.unwrap();
        assert!(import_keys(&b).await.is_empty());
    }
}

#[tokio::test]
async fn json_export_imports_back_and_validate_reads_no_store() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.import(&big_file(3), ImportMode::default()).await.unwrap();
        let json = r.export_json().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["services"].as_array().unwrap().len(), 3);
        assert_eq!(v["executable-objects"][0]["exec-command"], "/bin/sh");
        let other = Resources::new(b.store.clone(), "c2");
        let report = other.import(&json, ImportMode::default()).await.unwrap();
        assert!(report.written);
        // The same content, the store's times aside.
        let back = r
            .import(&other.export_json().await.unwrap(), ImportMode::default())
            .await
            .unwrap();
        assert!(!back.written);
        assert!(back
            .items
            .iter()
            .all(|i| i.outcome == ImportOutcome::Unchanged));

        let report = Document::validate_file(&big_file(3)).unwrap();
        assert_eq!(report.items.len(), 4);
        assert!(report
            .items
            .iter()
            .all(|i| i.outcome == ImportOutcome::Valid));
        assert!(!report.written);
        // References are left to the import; required fields and shape are not.
        assert!(Document::validate_file(
            "services:\n  - name: a\n    type: executable\n    executable-object: elsewhere\n"
        )
        .is_ok());
        let err = Document::validate_file("services:\n  - name: a\n    type: python-script\n")
            .unwrap_err();
        assert!(err.to_string().contains("service a"), "{err}");
        assert!(matches!(
            Document::validate_file(&format!(
                "{}{}",
                big_file(1),
                "  - name: svc-0000\n    type: executable\n    executable-object: sh\n"
            )),
            Err(ImportError::Duplicate { .. })
        ));
    }
}

/// A store that, at the first transaction staging an import, first runs `then` on the store
/// underneath: another writer (or a new leader) acting between an import's transactions.
#[derive(Debug)]
struct Meddler {
    inner: std::sync::Arc<dyn autogate_store::Store>,
    then: std::sync::Mutex<Option<autogate_store::Txn>>,
}

#[async_trait::async_trait]
impl autogate_store::Store for Meddler {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<autogate_store::KeyValue>, autogate_store::StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<autogate_store::KeyValue>, autogate_store::StoreError> {
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<autogate_store::LeaseId>,
    ) -> Result<autogate_store::Revision, autogate_store::StoreError> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, autogate_store::StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<i64, autogate_store::StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(
        &self,
        txn: autogate_store::Txn,
    ) -> Result<autogate_store::TxnResponse, autogate_store::StoreError> {
        let stages = txn.success.iter().any(|op| {
            matches!(op, autogate_store::TxnOp::Put { key, .. } if key.contains("/import-data/"))
        });
        let then = if stages {
            self.then.lock().unwrap_or_else(|e| e.into_inner()).take()
        } else {
            None
        };
        if let Some(then) = then {
            assert!(self.inner.txn(then).await?.succeeded);
        }
        self.inner.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        start: Option<autogate_store::Revision>,
    ) -> Result<autogate_store::WatchStream, autogate_store::StoreError> {
        self.inner.watch(prefix, start).await
    }
    async fn grant(
        &self,
        ttl: std::time::Duration,
    ) -> Result<autogate_store::LeaseId, autogate_store::StoreError> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(
        &self,
        lease: autogate_store::LeaseId,
    ) -> Result<std::time::Duration, autogate_store::StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(
        &self,
        lease: autogate_store::LeaseId,
    ) -> Result<(), autogate_store::StoreError> {
        self.inner.revoke(lease).await
    }
    async fn time_to_live(
        &self,
        lease: autogate_store::LeaseId,
    ) -> Result<Option<std::time::Duration>, autogate_store::StoreError> {
        self.inner.time_to_live(lease).await
    }
    async fn status(&self) -> Result<autogate_store::StoreStatus, autogate_store::StoreError> {
        self.inner.status().await
    }
}

fn meddler(b: &Backend, then: autogate_store::Txn) -> std::sync::Arc<dyn autogate_store::Store> {
    std::sync::Arc::new(Meddler {
        inner: b.store.clone(),
        then: std::sync::Mutex::new(Some(then)),
    })
}

#[tokio::test]
async fn a_write_landing_while_an_import_stages_is_decided_again() {
    use autogate_store::{Txn, TxnOp};
    for b in backends().await {
        // Another writer creates svc-0005 (other content) while the import stages.
        let mut theirs = executable("svc-0005", "sh");
        theirs.meta.description = "created meanwhile".into();
        let then = Txn::new().and_then([
            TxnOp::put(
                "/autogate/c1/resources/service/svc-0005",
                serde_json::to_vec(&theirs).unwrap(),
            ),
            TxnOp::put("/autogate/c1/resources-generation", Vec::new()),
        ]);
        let r = Resources::new(meddler(&b, then), "c1").with_txn_limits(4, 1 << 20);
        let report = r
            .import(&big_file(20), ImportMode::default())
            .await
            .unwrap();
        let conflicts: Vec<&str> = report
            .items
            .iter()
            .filter(|i| i.outcome == ImportOutcome::Conflict)
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(conflicts, ["svc-0005"]);
        assert_eq!(r.names(Kind::Service).await.unwrap().len(), 20);
        let kept: Service = r.get("svc-0005").await.unwrap().unwrap();
        assert_eq!(kept.meta.description, "created meanwhile");
        assert!(
            import_keys(&b).await.is_empty(),
            "{:?}",
            import_keys(&b).await
        );
    }
}

#[tokio::test]
async fn a_fenced_importer_commits_nothing() {
    use autogate_store::{Compare, CompareOp, Txn, TxnOp};
    for b in backends().await {
        b.store
            .put("/autogate/c1/leader", b"me".to_vec(), None)
            .await
            .unwrap();
        // Another node takes the leadership while the import stages.
        let then = Txn::new().and_then([TxnOp::put("/autogate/c1/leader", b"other".to_vec())]);
        let guard: autogate_resources::TxnGuard = std::sync::Arc::new(|txn: Txn| {
            txn.when([Compare::value(
                "/autogate/c1/leader",
                CompareOp::Equal,
                b"me".to_vec(),
            )])
        });
        let r = Resources::new(meddler(&b, then), "c1")
            .with_txn_limits(4, 1 << 20)
            .with_txn_guard(guard);
        let err = r
            .import(&big_file(20), ImportMode::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::Resource(autogate_resources::ResourceError::Fenced)
            ),
            "{err}"
        );
        let plain = Resources::new(b.store.clone(), "c1");
        assert!(plain.names(Kind::Service).await.unwrap().is_empty());
        assert!(b
            .store
            .get("/autogate/c1/resources-import")
            .await
            .unwrap()
            .is_none());
    }
}
