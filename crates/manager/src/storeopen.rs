//! Opening the manager's store from `[manager]`: its own redb file (`store_backend = local`), or
//! an etcd shared by every replica of one manager (`store_backend = etcd`), seen through
//! `store_etcd_prefix`.
//!
//! On etcd, replicas are one manager because they share a prefix and an admin token. Both are
//! checked before anything else is read, so a replica started with the wrong token or prefix
//! refuses to start instead of serving another manager's clusters or starting an empty one:
//! `/manager/identity` under the prefix keeps a digest of the token the prefix was set up with,
//! and `/autogate-manager-index/<digest>` outside every prefix keeps the prefix a token uses.
//! The token itself is never stored, logged or printed.

use std::path::Path;
use std::sync::Arc;

use autogate_config::{BackendKind, Config};
use autogate_store::{
    with_prefix, Compare, CompareOp, EtcdOptions, EtcdTls, KeyValue, Store, StoreError,
    StoreOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ManagerError;

/// The identity record's key, under the prefix.
pub const IDENTITY_KEY: &str = "/manager/identity";
/// Where the prefix of each admin token is kept: `<INDEX_PREFIX><token digest>`, outside every
/// manager's prefix so that two prefixes can see each other's claim.
pub const INDEX_PREFIX: &str = "/autogate-manager-index/";
/// Version of the identity record this code writes and reads.
const IDENTITY_FORMAT: u32 = 1;
/// Domain separation: the digest of the token here is not the digest used anywhere else.
const TOKEN_DIGEST_CONTEXT: &[u8] = b"autogate-manager-admin-token\0";
/// Rounds of read-then-create before giving up; only replicas starting at the same moment race.
const IDENTITY_ATTEMPTS: usize = 5;

/// The opened store and what `GET /api/v1/replicas` says about it.
#[derive(Debug, Clone)]
pub struct ManagerStore {
    /// Keys as the manager writes them (`/manager/…`); on etcd already under the prefix.
    pub store: Arc<dyn Store>,
    /// `"local"` or `"etcd"`.
    pub backend: &'static str,
    /// The file path (local) or the etcd endpoints, `host:port` separated by `,`.
    pub endpoints: String,
    /// The etcd key prefix; empty for the local file.
    pub prefix: String,
}

/// `/manager/identity`: which admin token the prefix belongs to.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    format: u32,
    token_sha256: String,
    prefix: String,
    created_at: String,
}

/// Opens the store `[manager]` configures. `token` is the admin token in force (from
/// `manager.admin_token_file` or the generated one); on etcd it must be the one the prefix was
/// set up with.
pub async fn open(config: &Config, token: &str) -> Result<ManagerStore, ManagerError> {
    let m = &config.manager;
    match m.store_backend {
        BackendKind::Etcd => {
            let endpoints = m
                .store_etcd_hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let raw = autogate_store::open(StoreOptions::Etcd(etcd_options(config)))
                .await
                .map_err(|e| explain_open_error(e, &endpoints))?;
            let prefix = m.store_etcd_prefix.clone();
            check_identity(raw.as_ref(), &prefix, token, &m.admin_token_path()).await?;
            Ok(ManagerStore {
                store: with_prefix(raw, &prefix),
                backend: "etcd",
                endpoints,
                prefix,
            })
        }
        // `memory` is refused by the configuration; the local file is the only other store.
        BackendKind::Local | BackendKind::Memory => {
            crate::bootstrap::ensure_data_dir(&m.data_dir)?;
            let path = m.data_dir.join(crate::STORE_FILE);
            let store = autogate_store::open(StoreOptions::Local { path: path.clone() }).await?;
            Ok(ManagerStore {
                store,
                backend: "local",
                endpoints: path.display().to_string(),
                prefix: String::new(),
            })
        }
    }
}

/// The etcd options of `manager.store_etcd_*`, as the nodes map `[store] etcd_*`.
pub fn etcd_options(config: &Config) -> EtcdOptions {
    let m = &config.manager;
    let tls = m.store_etcd_use_tls.then(|| EtcdTls {
        ca_file: m.store_etcd_ca_certificate_file.clone(),
        identity: if m.store_etcd_client_cert_auth {
            m.store_etcd_certificate_file
                .clone()
                .zip(m.store_etcd_private_key_file.clone())
        } else {
            None
        },
    });
    EtcdOptions {
        endpoints: m.store_etcd_hosts.iter().map(ToString::to_string).collect(),
        tls,
        dial_timeout: m.store_etcd_dial_timeout,
        request_timeout: m.store_etcd_request_timeout,
    }
}

/// The store's own message names the endpoints; this adds which settings they came from.
fn explain_open_error(e: StoreError, endpoints: &str) -> ManagerError {
    match e {
        StoreError::Unavailable(msg) => ManagerError::Store(StoreError::Unavailable(format!(
            "the manager's etcd at {endpoints} (manager.store_etcd_hosts) does not answer: {msg}"
        ))),
        StoreError::Config(msg) => ManagerError::Store(StoreError::Config(format!(
            "the manager's etcd at {endpoints} (manager.store_etcd_hosts, manager.store_etcd_* TLS settings): {msg}"
        ))),
        other => ManagerError::Store(other),
    }
}

/// Hex SHA-256 of the admin token, with a context of its own. Identifies the token in the store
/// without revealing it.
pub fn token_digest(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(TOKEN_DIGEST_CONTEXT);
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// Makes sure the manager at `prefix` of `raw` (the store without prefix) is the one of
/// `token`: the identity under the prefix holds the token's digest, and the token's index entry
/// names this prefix. What is missing is created, both in one transaction when both are; what is
/// there must agree. `token_path` is only named in the refusal.
pub async fn check_identity(
    raw: &dyn Store,
    prefix: &str,
    token: &str,
    token_path: &Path,
) -> Result<(), ManagerError> {
    let digest = token_digest(token);
    let identity_key = format!("{prefix}{IDENTITY_KEY}");
    let index_key = format!("{INDEX_PREFIX}{digest}");
    for _ in 0..IDENTITY_ATTEMPTS {
        let index = raw.get(&index_key).await?;
        let identity = raw.get(&identity_key).await?;
        // The index first: when it names another prefix, the prefix is what is wrong, whatever
        // this prefix holds.
        if let Some(kv) = &index {
            let theirs = std::str::from_utf8(&kv.value).map_err(|_| ManagerError::Corrupt {
                key: index_key.clone(),
                reason: "the prefix it names is not UTF-8 text".into(),
            })?;
            if theirs != prefix {
                return Err(ManagerError::Usage(format!(
                    "another manager with this admin token uses etcd prefix {theirs}, this replica is configured with {prefix}: replicas of one manager need the same manager.store_etcd_prefix"
                )));
            }
        }
        if let Some(kv) = &identity {
            let found = read_identity(kv)?;
            if found.token_sha256 != digest {
                return Err(ManagerError::Usage(format!(
                    "the manager at etcd prefix {prefix} was set up with a different admin token: every replica needs the same manager.admin_token_file (this replica's: {})",
                    token_path.display()
                )));
            }
        }
        if index.is_some() && identity.is_some() {
            return Ok(());
        }

        // Create what is missing, provided nothing changed since it was read.
        let mut compares = Vec::new();
        let mut puts = Vec::new();
        match &identity {
            Some(kv) => compares.push(Compare::mod_revision(
                &identity_key,
                CompareOp::Equal,
                kv.mod_revision,
            )),
            None => {
                compares.push(Compare::missing(&identity_key));
                let record = Identity {
                    format: IDENTITY_FORMAT,
                    token_sha256: digest.clone(),
                    prefix: prefix.to_string(),
                    created_at: crate::model::now_rfc3339(),
                };
                let value = serde_json::to_vec(&record).map_err(|e| ManagerError::Corrupt {
                    key: identity_key.clone(),
                    reason: format!("cannot encode the identity record: {e}"),
                })?;
                puts.push(TxnOp::put(&identity_key, value));
            }
        }
        match &index {
            Some(kv) => compares.push(Compare::mod_revision(
                &index_key,
                CompareOp::Equal,
                kv.mod_revision,
            )),
            None => {
                compares.push(Compare::missing(&index_key));
                puts.push(TxnOp::put(&index_key, prefix.as_bytes().to_vec()));
            }
        }
        if raw
            .txn(Txn::new().when(compares).and_then(puts))
            .await?
            .succeeded
        {
            if identity.is_none() {
                tracing::info!(
                    "manager store set up at etcd prefix {prefix}: replicas sharing it need this replica's admin token ({})",
                    token_path.display()
                );
            }
            return Ok(());
        }
        // Another replica wrote one of them meanwhile: read again and judge what it wrote.
    }
    Err(ManagerError::Store(StoreError::Unavailable(format!(
        "{identity_key} and {index_key} kept changing while this replica checked them; try again"
    ))))
}

fn read_identity(kv: &KeyValue) -> Result<Identity, ManagerError> {
    let corrupt = |reason: String| ManagerError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let identity: Identity = serde_json::from_slice(&kv.value).map_err(|e| {
        corrupt(format!(
            "not a manager identity record ({e}); is another program using this etcd prefix?"
        ))
    })?;
    if identity.format != IDENTITY_FORMAT {
        return Err(corrupt(format!(
            "identity format {} is not known to this version (it reads format {IDENTITY_FORMAT})",
            identity.format
        )));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use autogate_config::LoadOptions;

    use super::*;

    const TOKEN: &str = "tok-3f9a-secret-admin-token";

    async fn memory() -> Arc<dyn Store> {
        autogate_store::open(StoreOptions::Memory).await.unwrap()
    }

    fn token_path() -> PathBuf {
        PathBuf::from("/etc/autogate/manager-admin.token")
    }

    fn config(dir: &Path, env: &[(&str, &str)]) -> Config {
        let mut vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert(
            "GATEWAY_APPLICATION_WORKING_DIR".into(),
            dir.display().to_string(),
        );
        autogate_config::load(&LoadOptions {
            env: vars,
            home: Some(dir.to_path_buf()),
            etc_dir: Some(dir.join("etc")),
            ..Default::default()
        })
        .unwrap()
    }

    fn etcd_env<'a>(hosts: &'a str, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("GATEWAY_MANAGER_STORE_BACKEND", "etcd"),
            ("GATEWAY_MANAGER_STORE_ETCD_HOSTS", hosts),
            ("GATEWAY_MANAGER_STORE_ETCD_PREFIX", prefix),
            ("GATEWAY_MANAGER_STORE_ETCD_DIAL_TIMEOUT", "1s"),
        ]
    }

    fn usage(e: ManagerError) -> String {
        assert_eq!(e.exit_code(), 64, "{e}");
        let msg = e.to_string();
        assert!(matches!(e, ManagerError::Usage(_)), "{msg}");
        assert!(!msg.contains(TOKEN), "the token leaked: {msg}");
        msg
    }

    #[test]
    fn digest_has_its_own_context() {
        let d = token_digest(TOKEN);
        assert_eq!(d.len(), 64);
        assert_ne!(d, hex::encode(Sha256::digest(TOKEN.as_bytes())));
        assert_ne!(d, token_digest("another token"));
        assert_eq!(d, token_digest(TOKEN));
    }

    #[tokio::test]
    async fn first_replica_writes_identity_and_index_and_later_ones_only_read() {
        let raw = memory().await;
        check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
            .await
            .unwrap();
        let kv = raw.get("/mgr/manager/identity").await.unwrap().unwrap();
        let text = String::from_utf8(kv.value.clone()).unwrap();
        assert!(!text.contains(TOKEN), "{text}");
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["format"], 1);
        assert_eq!(record["token_sha256"], token_digest(TOKEN));
        assert_eq!(record["prefix"], "/mgr");
        assert!(crate::model::parse_rfc3339(record["created_at"].as_str().unwrap()).is_some());
        let index_key = format!("/autogate-manager-index/{}", token_digest(TOKEN));
        let index = raw.get(&index_key).await.unwrap().unwrap();
        assert_eq!(index.value, b"/mgr");
        assert_eq!(index.mod_revision, kv.mod_revision, "one transaction");

        check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
            .await
            .unwrap();
        let again = raw.get("/mgr/manager/identity").await.unwrap().unwrap();
        assert_eq!(again.mod_revision, kv.mod_revision, "not rewritten");
    }

    #[tokio::test]
    async fn another_token_is_refused_naming_the_token_file() {
        let raw = memory().await;
        check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
            .await
            .unwrap();
        let e = check_identity(
            raw.as_ref(),
            "/mgr",
            "other-token",
            Path::new("/x/admin.token"),
        )
        .await
        .unwrap_err();
        let msg = usage(e);
        assert!(
            msg.contains("the manager at etcd prefix /mgr was set up with a different admin token")
                && msg.contains("manager.admin_token_file")
                && msg.contains("/x/admin.token"),
            "{msg}"
        );
        // The refused token claimed nothing.
        let other = format!("/autogate-manager-index/{}", token_digest("other-token"));
        assert!(raw.get(&other).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn another_prefix_for_the_same_token_is_refused_naming_both() {
        let raw = memory().await;
        check_identity(raw.as_ref(), "/mgr-a", TOKEN, &token_path())
            .await
            .unwrap();
        let e = check_identity(raw.as_ref(), "/mgr-b", TOKEN, &token_path())
            .await
            .unwrap_err();
        let msg = usage(e);
        assert!(
            msg.contains("uses etcd prefix /mgr-a, this replica is configured with /mgr-b")
                && msg.contains("manager.store_etcd_prefix"),
            "{msg}"
        );
        assert!(raw.get("/mgr-b/manager/identity").await.unwrap().is_none());
        // Another token may have its own manager at another prefix of the same etcd.
        check_identity(raw.as_ref(), "/mgr-b", "token-b", &token_path())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_lost_index_entry_is_written_again() {
        let raw = memory().await;
        check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
            .await
            .unwrap();
        let index_key = format!("/autogate-manager-index/{}", token_digest(TOKEN));
        raw.delete(&index_key).await.unwrap();
        check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
            .await
            .unwrap();
        assert_eq!(raw.get(&index_key).await.unwrap().unwrap().value, b"/mgr");
    }

    #[tokio::test]
    async fn foreign_or_unknown_identity_records_are_corrupt() {
        for (value, reason) in [
            (&b"not json"[..], "not a manager identity record"),
            (
                &br#"{"hello":"world"}"#[..],
                "not a manager identity record",
            ),
            (
                &br#"{"format":2,"token_sha256":"x","prefix":"/mgr","created_at":"t"}"#[..],
                "identity format 2",
            ),
        ] {
            let raw = memory().await;
            raw.put("/mgr/manager/identity", value.to_vec(), None)
                .await
                .unwrap();
            let e = check_identity(raw.as_ref(), "/mgr", TOKEN, &token_path())
                .await
                .unwrap_err();
            match e {
                ManagerError::Corrupt { key, reason: r } => {
                    assert_eq!(key, "/mgr/manager/identity");
                    assert!(r.contains(reason), "{r}");
                }
                other => panic!("expected Corrupt, got {other}"),
            }
        }
    }

    #[tokio::test]
    async fn local_backend_is_the_file_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &[]);
        let ms = open(&c, TOKEN).await.unwrap();
        assert_eq!(ms.backend, "local");
        assert_eq!(ms.prefix, "");
        let file = dir.path().join("manager").join(crate::STORE_FILE);
        assert_eq!(ms.endpoints, file.display().to_string());
        assert!(file.is_file());
        // Keys as they always were: no identity record, nothing under a prefix.
        ms.store.put("/k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(ms.store.get("/k").await.unwrap().unwrap().key, "/k");
        assert!(ms.store.get(IDENTITY_KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unreachable_etcd_is_unavailable_naming_the_setting() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hosts = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &etcd_env(&hosts, "/mgr"));
        let e = open(&c, TOKEN).await.unwrap_err();
        assert_eq!(e.exit_code(), 69, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&hosts) && msg.contains("manager.store_etcd_hosts"),
            "{msg}"
        );
    }

    /// Replicas on a real etcd: the same token and prefix are accepted by every replica, a
    /// different token or prefix is refused with what differs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_on_etcd_agree_on_token_and_prefix() {
        let etcd = autogate_testkit::etcd::EtcdServer::start();
        let hosts = etcd.endpoints().join(" ");
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &etcd_env(&hosts, "/mgr-a"));

        let first = open(&c, TOKEN).await.unwrap();
        assert_eq!((first.backend, first.prefix.as_str()), ("etcd", "/mgr-a"));
        assert_eq!(first.endpoints, etcd.endpoints().join(","));
        first
            .store
            .put("/manager/clusters/c1", b"{}".to_vec(), None)
            .await
            .unwrap();
        let second = open(&c, TOKEN).await.unwrap();
        let kv = second
            .store
            .get("/manager/clusters/c1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.key, "/manager/clusters/c1");
        assert!(second.store.get(IDENTITY_KEY).await.unwrap().is_some());
        // Nothing of the local file is made for an etcd manager.
        assert!(!dir.path().join("manager").join(crate::STORE_FILE).exists());

        let msg = usage(open(&c, "another-token").await.unwrap_err());
        assert!(
            msg.contains("/mgr-a") && msg.contains("different admin token"),
            "{msg}"
        );

        let other = config(dir.path(), &etcd_env(&hosts, "/mgr-b"));
        let msg = usage(open(&other, TOKEN).await.unwrap_err());
        assert!(
            msg.contains("uses etcd prefix /mgr-a, this replica is configured with /mgr-b"),
            "{msg}"
        );
    }
}
