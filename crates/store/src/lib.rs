//! The cluster store: one small trait ([`Store`]) with three backends.
//!
//! * `memory` — the embedded engine alone; state dies with the process (tests, throw-away runs).
//! * `local` — the same engine with write-through persistence in one crash-safe `redb` file; the
//!   default store of a single node.
//! * `etcd` — a real etcd cluster, needed for high availability and distributed execution.
//!
//! The trait mirrors the subset of etcd's data model autogate relies on (revisions, create
//! revisions for fencing, leases, prefix watches, compare-and-swap transactions) so that code written
//! against the embedded backends behaves the same on etcd. Callers open a store with [`open`] and
//! keep all their keys under [`cluster_prefix`].
//!
//! Modules: `engine` (the embedded MVCC-lite state machine), `embedded` (the `memory` and `local`
//! backends around it, with lease expiry), `persist` (the `local` backend's redb file), `etcd` (the
//! etcd backend), `prefixed` (any store seen through a key prefix, [`with_prefix`]).
#![forbid(unsafe_code)]

mod embedded;
mod engine;
mod etcd;
mod persist;
mod prefixed;

use std::fmt::Debug;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub use prefixed::with_prefix;

/// A store-wide, monotonically increasing modification counter (etcd's `revision`).
pub type Revision = i64;
/// A lease id; `0` means "no lease".
pub type LeaseId = i64;

/// One key with its value and MVCC metadata, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was last created; a delete and re-create gives a new one, which is
    /// what makes it usable as a fencing token.
    pub create_revision: i64,
    /// Revision of the last modification (for a delete event: the revision of the delete).
    pub mod_revision: i64,
    /// Number of modifications since the key was created (1 after creation).
    pub version: i64,
    /// Lease the key is bound to, `0` for none.
    pub lease: LeaseId,
}

/// One condition of a transaction: `<target of key> <op> <operand>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOp,
}

/// What a [`Compare`] looks at, with the operand to compare it against.
///
/// A missing key has create revision, mod revision and version `0`; a value comparison on a missing
/// key is always false (etcd's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    CreateRevision(i64),
    ModRevision(i64),
    Version(i64),
    Value(Vec<u8>),
}

/// Comparison operator of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl Compare {
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: i64) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::CreateRevision(revision),
            op,
        }
    }

    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: i64) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::ModRevision(revision),
            op,
        }
    }

    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::Version(version),
            op,
        }
    }

    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::Value(value.into()),
            op,
        }
    }

    /// True when the key does not exist (create revision is 0).
    pub fn missing(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Equal, 0)
    }

    /// True when the key exists (create revision is above 0).
    pub fn exists(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Greater, 0)
    }
}

/// One operation of a transaction branch. Operations run in order and see each other's writes;
/// all writes of one transaction share one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    GetPrefix {
        prefix: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put that binds the key to `lease` (the key is deleted when the lease ends).
    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Self::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Self::Get { key: key.into() }
    }

    pub fn get_prefix(prefix: impl Into<String>) -> Self {
        Self::GetPrefix {
            prefix: prefix.into(),
        }
    }
}

/// A compare-and-swap transaction: if every compare holds, run `success`, otherwise `failure`.
///
/// Like etcd, a branch may not write the same key twice (including a put inside a deleted
/// prefix); such a transaction is refused with [`StoreError::InvalidArgument`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations to run when all conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to run when a condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

/// Outcome of a transaction: which branch ran, the store revision after it, and one response per
/// operation of that branch, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: Revision,
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    Put,
    Delete {
        deleted: i64,
    },
    /// Matching keys sorted by key (empty when nothing matched).
    Get(Vec<KeyValue>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For `Delete`, `kv` carries only the key and `mod_revision` (the
/// revision of the delete); the other fields are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// Events of one watch in revision order. Dropping the stream cancels the watch.
///
/// The stream ends only after yielding an error, so silence never hides a lost watch:
/// * [`StoreError::Compacted`] when the start revision is no longer in the history (also as the
///   first item: `watch` itself does not fail for this), or when an embedded-store consumer fell so
///   far behind that its queue overflowed (`requested` = first missed revision). Re-read the state
///   and watch again from the revision of that read + 1;
/// * [`StoreError::Unavailable`] when the connection to etcd was lost or the member lost its
///   leader. Watch again from the last seen `mod_revision` + 1.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Health of a store as a readiness check reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// `"memory"`, `"local"` or `"etcd"`.
    pub backend: &'static str,
    /// Current store revision (for etcd: read through the leader, so it proves a quorum).
    pub revision: Revision,
    /// Where the data lives: `"memory"`, the file path, or the etcd endpoints.
    pub endpoints: String,
    /// Server version where there is one (etcd).
    pub version: Option<String>,
}

/// The operations autogate needs from its cluster store.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// `"memory"`, `"local"` or `"etcd"`.
    fn backend(&self) -> &'static str;
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// All keys starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// Writes `key`; returns the revision of the write.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;
    /// Returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Returns how many keys were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError>;
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;
    /// Watches every key under `prefix`: events with `mod_revision >= start_revision`, or only
    /// future events when `start_revision` is `None`, in revision order. See [`WatchStream`].
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError>;
    /// Creates a lease. etcd counts TTLs in whole seconds (rounded up here); the embedded
    /// backends keep the exact duration.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews a lease once and returns its TTL; [`StoreError::LeaseNotFound`] if it has ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;
    /// Ends a lease now, deleting its keys (watchers see delete events).
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Remaining time of a lease, `None` if it does not exist (any more).
    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;
    /// Health check: fails with [`StoreError::Unavailable`] when the store cannot serve requests.
    async fn status(&self) -> Result<StoreStatus, StoreError>;
}

/// Errors of every backend. Messages name the file or endpoint concerned, never secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or cannot decide (connection, timeout, no leader, disk write
    /// failed): retry later, and a leader must step down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("revision {requested} has been compacted (history starts after revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// A usage error: bad TLS files, bad endpoint, a store file held by another process.
    #[error("store configuration error: {0}")]
    Config(String),
    /// The local store file is damaged or of an unknown format.
    #[error("store file corrupt: {0}")]
    Corrupt(String),
}

/// Which backend [`open`] builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOptions {
    Memory,
    /// The embedded engine persisted in one file (the caller picks `<working_dir>/gateway.db`).
    Local {
        path: PathBuf,
    },
    Etcd(EtcdOptions),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `host:port` endpoints; `http://`/`https://` is added according to `tls`.
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    /// Bound on establishing a connection (and on the reachability check in [`open`]).
    pub dial_timeout: Duration,
    /// Bound on every single request.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// Plain-text options with the default timeouts (dial 5 s, request 5 s).
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS towards etcd. `ca_file` only: the server is verified (`None`: the system roots);
/// with `identity` (certificate file, private key file): mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Opens a store.
///
/// `local` fails with [`StoreError::Config`] if another process holds the file. `etcd` checks that
/// the cluster answers (with a leader) within the dial timeout and fails with
/// [`StoreError::Unavailable`] otherwise, so a caller that wants to wait for etcd retries `open`.
pub async fn open(opts: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match opts {
        StoreOptions::Memory => Ok(Arc::new(embedded::EmbeddedStore::memory()?)),
        StoreOptions::Local { path } => Ok(Arc::new(embedded::EmbeddedStore::local(path).await?)),
        StoreOptions::Etcd(options) => Ok(Arc::new(etcd::EtcdStore::connect(options).await?)),
    }
}

/// The key prefix of everything a cluster stores: `/autogate/<cluster_id>/`.
pub fn cluster_prefix(cluster_id: &str) -> String {
    format!("/autogate/{cluster_id}/")
}

/// Operations one transaction carries at most where a writer splits its work: etcd refuses
/// more than `--max-txn-ops` (128 by default, compares counted too), and this leaves room for a
/// writer's own guards.
pub const TXN_OPS: usize = 100;

/// Bytes of records one transaction carries at most where a writer splits its work, under
/// etcd's `--max-request-bytes` (1.5 MiB by default).
pub const TXN_BYTES: usize = 1 << 20;

/// Splits `items` into consecutive runs of at most `max_items` items and `max_bytes` bytes (by
/// `size`), in order; an item larger than `max_bytes` goes alone. Returns the index ranges, so
/// a caller can slice or drain.
pub fn txn_batches<T>(
    items: &[T],
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (i - start >= max_items || bytes + n > max_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn txn_batches_bound_items_and_bytes_and_keep_order() {
        let sizes = [40, 40, 40, 200, 10, 10, 10, 10, 10];
        assert_eq!(
            txn_batches(&sizes, 4, 100, |n| *n),
            [0..2, 2..3, 3..4, 4..8, 8..9]
        );
        assert!(txn_batches(&[] as &[usize], 4, 100, |n| *n).is_empty());
    }

    use super::*;

    #[test]
    fn prefix_has_trailing_slash() {
        assert_eq!(cluster_prefix("cluster_1"), "/autogate/cluster_1/");
    }

    #[test]
    fn txn_builder_collects_branches() {
        let txn = Txn::new()
            .when([Compare::missing("a")])
            .and_then([TxnOp::put("a", "1")])
            .or_else([TxnOp::get("a")]);
        assert_eq!(txn.compares[0].target, CompareTarget::CreateRevision(0));
        assert_eq!(txn.success.len(), 1);
        assert_eq!(txn.failure, vec![TxnOp::Get { key: "a".into() }]);
    }
}
