//! The on-disk form of the `local` backend: one `redb` file, committed durably (fsync) on every
//! mutation before the mutation is acknowledged.
//!
//! Tables: `kv` (key → metadata + value), `leases` (id → granted TTL in milliseconds) and `meta`
//! (`format`, `revision`, `next_lease_id`). Lease deadlines are deliberately not stored: after a
//! restart every lease gets a fresh countdown, which is what etcd does after a leader change.
//! redb takes an exclusive file lock, so a second process opening the same file is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition};

use crate::engine::{Changes, Engine, Snapshot};
use crate::{KeyValue, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// How long opening waits for a file lock that is held.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Bumped whenever the layout above changes incompatibly.
const FORMAT: i64 = 1;
/// create_revision, mod_revision, version, lease: four little-endian i64 before the value.
const HEADER: usize = 32;

pub(crate) struct Db {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    if bytes.len() < HEADER {
        return None;
    }
    let field = |i: usize| -> Option<i64> {
        Some(i64::from_le_bytes(
            bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    Some(KeyValue {
        key: key.to_owned(),
        value: bytes[HEADER..].to_vec(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        version: field(2)?,
        lease: field(3)?,
    })
}

impl Db {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the store file and reads its whole state.
    pub fn open(path: &Path) -> Result<(Db, Snapshot), StoreError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Config(format!(
                    "cannot create directory {} for the store file: {e}",
                    parent.display()
                ))
            })?;
        }
        // Password hashes and sealed secrets live here: the file is this user's only. It is
        // created empty with mode 0600 before redb opens it (redb starts a new database in an
        // empty file), and a file an older version left open to others is tightened.
        private_file(path).map_err(|e| {
            StoreError::Config(format!(
                "cannot create store file {shown} with mode 0600: {e}"
            ))
        })?;
        // The lock can be held for a moment after a store in this process was dropped (a lease
        // expiry pass may still own it), so a held lock is retried briefly before it is an error.
        let give_up = Instant::now() + LOCK_WAIT;
        let created = loop {
            match Database::create(path) {
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let db = created.map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Config(format!(
                "store file {shown} is in use by another process (is another node running with the same working directory?)"
            )),
            DatabaseError::Storage(StorageError::Corrupted(msg)) => StoreError::Corrupt(format!("{shown}: {msg}")),
            DatabaseError::UpgradeRequired(v) => {
                StoreError::Corrupt(format!("{shown}: unsupported redb file format version {v}"))
            }
            other => StoreError::Config(format!("cannot open store file {shown}: {other}")),
        })?;
        let this = Db {
            db,
            path: path.to_owned(),
        };
        this.initialise()?;
        let snapshot = this.load()?;
        Ok((this, snapshot))
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("{what} store file {}: {e}", self.path.display()))
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!("{}: {what}", self.path.display()))
    }

    /// Creates the tables and stamps the format on a new file; refuses files of another format.
    fn initialise(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io("writing", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io("opening", e))?;
            txn.open_table(KV).map_err(|e| self.io("opening", e))?;
            txn.open_table(LEASES).map_err(|e| self.io("opening", e))?;
            let format = meta
                .get("format")
                .map_err(|e| self.io("reading", e))?
                .map(|v| v.value());
            match format {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(
                        self.corrupt(format!("unknown store format {other} (expected {FORMAT})"))
                    )
                }
                None => {
                    meta.insert("format", FORMAT)
                        .map_err(|e| self.io("writing", e))?;
                    meta.insert("revision", 1)
                        .map_err(|e| self.io("writing", e))?;
                    meta.insert("next_lease_id", 1)
                        .map_err(|e| self.io("writing", e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.io("committing", e))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io("reading", e))?;
        let meta = txn.open_table(META).map_err(|e| self.io("reading", e))?;
        let meta_value = |name: &str| -> Result<i64, StoreError> {
            meta.get(name)
                .map_err(|e| self.io("reading", e))?
                .map(|v| v.value())
                .ok_or_else(|| self.corrupt(format!("missing {name}")))
        };
        let mut snapshot = Snapshot {
            revision: meta_value("revision")?,
            next_lease_id: meta_value("next_lease_id")?,
            ..Snapshot::default()
        };
        let kv = txn.open_table(KV).map_err(|e| self.io("reading", e))?;
        for entry in kv.iter().map_err(|e| self.io("reading", e))? {
            let (k, v) = entry.map_err(|e| self.io("reading", e))?;
            let key = k.value();
            let decoded = decode(key, v.value())
                .ok_or_else(|| self.corrupt(format!("bad record for key {key:?}")))?;
            snapshot.kvs.push(decoded);
        }
        let leases = txn.open_table(LEASES).map_err(|e| self.io("reading", e))?;
        for entry in leases.iter().map_err(|e| self.io("reading", e))? {
            let (id, ttl) = entry.map_err(|e| self.io("reading", e))?;
            snapshot
                .leases
                .push((id.value(), Duration::from_millis(ttl.value())));
        }
        Ok(snapshot)
    }

    /// Writes the current value of every entry `changes` touched, in one durable transaction.
    pub fn commit(&self, changes: &Changes, engine: &Engine) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io("writing", e))?;
        {
            let mut kv = txn.open_table(KV).map_err(|e| self.io("writing", e))?;
            for key in changes.kvs.keys() {
                match engine.get(key) {
                    Some(current) => kv
                        .insert(key.as_str(), encode(&current).as_slice())
                        .map(|_| ()),
                    None => kv.remove(key.as_str()).map(|_| ()),
                }
                .map_err(|e| self.io("writing", e))?;
            }
            let mut leases = txn.open_table(LEASES).map_err(|e| self.io("writing", e))?;
            for id in changes.leases.keys() {
                match engine.lease_ttl(*id) {
                    Some(ttl) => {
                        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                        leases.insert(*id, millis).map(|_| ())
                    }
                    None => leases.remove(*id).map(|_| ()),
                }
                .map_err(|e| self.io("writing", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.io("writing", e))?;
            meta.insert("revision", engine.revision())
                .map_err(|e| self.io("writing", e))?;
            meta.insert("next_lease_id", engine.next_lease_id())
                .map_err(|e| self.io("writing", e))?;
        }
        txn.commit().map_err(|e| self.io("committing", e))
    }
}

/// Creates `path` empty with mode 0600 when it does not exist, or takes group and other access
/// away from an existing one this user owns. (The store crate keeps to `std`; the node's other
/// private files go through `autogate_runtime::private`.)
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.mode() & 0o077 != 0 && meta.uid() == std::fs::metadata("/proc/self")?.uid() {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let kv = KeyValue {
            key: "k".into(),
            value: b"hello".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 77,
        };
        assert_eq!(decode("k", &encode(&kv)).unwrap(), kv);
        assert!(decode("k", &[1, 2, 3]).is_none());
    }

    #[test]
    fn the_store_file_is_this_users_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        drop(Db::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        // A file an older version left readable by others is tightened at the next open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Db::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}
