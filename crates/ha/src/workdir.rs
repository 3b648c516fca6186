//! One process per working directory and role, and what it leaves for the next one. A core node
//! (`server`) or a runner (`runner`) holds an exclusive `flock` on `<working_dir>/<role>.lock`
//! for as long as it runs, and keeps `<role>.state` next to it: its node id, its cluster and the
//! lease that holds its keys in the store. The kernel drops the lock when the process ends, however
//! it ends, so a process that gets the lock knows that the one named in the state file is gone: if
//! its lease still holds keys, nobody will ever renew or revoke it but this successor, and waiting
//! for it to expire would only delay the cluster (a fail-over, a runner's jobs) by a whole TTL.
//! [`revoke_predecessor`](crate::revoke_predecessor) does that for a core node; the runner checks
//! its own registration.
//!
//! The lock is taken without waiting: a second process on the same working directory fails at
//! once ([`WorkdirError::InUse`], naming the holder's pid) instead of queueing behind the first.
//! The state file is written atomically (a temporary file renamed over it) with mode 0600. All
//! file work runs on the blocking pool, never on a runtime thread.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use autogate_runtime::private::DirState;
use autogate_store::LeaseId;
use serde::{Deserialize, Serialize};

/// What a process of a role records about itself in its working directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub node_id: String,
    pub cluster_id: String,
    /// The lease holding the process's keys in the store, once it has one.
    #[serde(default)]
    pub lease: Option<LeaseId>,
    pub pid: u32,
}

impl ProcessState {
    /// This process, before it holds a lease.
    pub fn new(node_id: impl Into<String>, cluster_id: impl Into<String>) -> Self {
        ProcessState {
            node_id: node_id.into(),
            cluster_id: cluster_id.into(),
            lease: None,
            pid: std::process::id(),
        }
    }

    /// The lease a process `node_id` of cluster `cluster_id` may revoke on the strength of this
    /// record: one of the same cluster, left by another process of the same host (a working
    /// directory copied to another machine names a process that may well be alive there).
    pub fn lease_to_clear(&self, node_id: &str, cluster_id: &str) -> Option<LeaseId> {
        let same_host =
            crate::machine::host_part(&self.node_id) == crate::machine::host_part(node_id);
        let lease = self.lease.filter(|l| *l != 0)?;
        (self.cluster_id == cluster_id && same_host && self.node_id != node_id).then_some(lease)
    }
}

/// Why a working directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkdirError {
    /// Another live process of the same role holds it.
    #[error(
        "working directory {} is in use by another `autogate {role}` process ({holder}lock {}): give each {role} its own [application] working_dir, or stop the other one",
        dir.display(),
        lock.display()
    )]
    InUse {
        dir: PathBuf,
        role: String,
        lock: PathBuf,
        /// `pid N, ` when the holder wrote its pid, else empty.
        holder: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl WorkdirError {
    /// Process exit code: 69 (unavailable) when another process holds the directory — like a
    /// taken port, the configuration may be right and the holder may go away, so a supervisor's
    /// retry can succeed; 64 when the directory itself is unusable (not creatable, not writable:
    /// a setting or permission to fix).
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkdirError::InUse { .. } => 69,
            WorkdirError::Io { .. } => 64,
        }
    }
}

/// The exclusive hold of one role on a working directory; released when dropped (or when the
/// process ends, however it ends).
pub struct WorkdirLock {
    /// Holds the `flock`.
    _file: std::fs::File,
    lock_path: PathBuf,
    state_path: PathBuf,
}

impl fmt::Debug for WorkdirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkdirLock")
            .field("lock", &self.lock_path)
            .field("state", &self.state_path)
            .finish()
    }
}

impl WorkdirLock {
    /// Takes `<dir>/<role>.lock` (creating `dir` if needed), failing at once if another process
    /// holds it, and reads what the previous process of this role left in `<role>.state`
    /// (`None` when there is no readable state file).
    pub async fn acquire(
        dir: &Path,
        role: &str,
    ) -> Result<(WorkdirLock, Option<ProcessState>), WorkdirError> {
        Self::acquire_with(dir, role, false).await
    }

    /// [`acquire`](Self::acquire); with `traversable` (a service user is configured) the
    /// directory is made 0711 instead of 0700, so that the service user can pass through it to
    /// its run's workspace without being able to list it.
    pub async fn acquire_with(
        dir: &Path,
        role: &str,
        traversable: bool,
    ) -> Result<(WorkdirLock, Option<ProcessState>), WorkdirError> {
        let (dir, role) = (dir.to_path_buf(), role.to_owned());
        tokio::task::spawn_blocking(move || acquire_blocking(&dir, &role, traversable))
            .await
            .map_err(|e| WorkdirError::Io {
                what: "locking the working directory",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// `<working_dir>/<role>.state`.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Replaces the state file with `state`, atomically, mode 0600.
    pub async fn record(&self, state: &ProcessState) -> std::io::Result<()> {
        let path = self.state_path.clone();
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || autogate_runtime::private::write_private(&path, &bytes))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

fn acquire_blocking(
    dir: &Path,
    role: &str,
    traversable: bool,
) -> Result<(WorkdirLock, Option<ProcessState>), WorkdirError> {
    use fs4::fs_std::FileExt;
    use std::os::unix::fs::OpenOptionsExt;

    // The working directory holds the store, the log, keys and checkouts: this user's only.
    match autogate_runtime::private::node_dir(dir, traversable) {
        Ok(DirState::Tightened(old)) => tracing::warn!(
            "working directory {} was mode {old:o}, readable by other users: it is {} now",
            dir.display(),
            if traversable { "0711" } else { "0700" }
        ),
        Ok(DirState::Shared(mode)) => tracing::warn!(
            "working directory {} is mode {mode:o} and not this user's to restrict: other local \
             users may read what the node keeps there; give the node a directory of its own",
            dir.display()
        ),
        Ok(_) => {}
        Err(source) => {
            return Err(WorkdirError::Io {
                what: "cannot create working directory",
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let lock_path = dir.join(format!("{role}.lock"));
    let state_path = dir.join(format!("{role}.state"));
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WorkdirError::Io { what, path, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io("cannot open lock file", &lock_path))?;
    if !file
        .try_lock_exclusive()
        .map_err(io("cannot lock", &lock_path))?
    {
        let holder = std::fs::read_to_string(&lock_path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .map(|pid| format!("pid {pid}, "))
            .unwrap_or_default();
        return Err(WorkdirError::InUse {
            dir: dir.to_path_buf(),
            role: role.to_owned(),
            lock: lock_path,
            holder,
        });
    }
    // The holder's pid, for the message of whoever finds the directory taken.
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io("cannot write lock file", &lock_path))?;
    let previous = std::fs::read(&state_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok((
        WorkdirLock {
            _file: file,
            lock_path,
            state_path,
        },
        previous,
    ))
}

/// The state file as a driver writes it: this process's record, with the lease it was just
/// granted. A driver records each new lease before it creates any key with it, so that whatever
/// a crashed process left in the store, its successor finds named here.
#[derive(Clone)]
pub struct StateFile {
    lock: Arc<WorkdirLock>,
    state: ProcessState,
}

impl StateFile {
    pub fn new(lock: Arc<WorkdirLock>, state: ProcessState) -> Self {
        StateFile { lock, state }
    }

    /// Writes this process's record with `lease`; a failure is logged (the process runs on, a
    /// successor would only have to wait for the lease to expire).
    pub async fn record_lease(&self, lease: LeaseId) {
        let mut state = self.state.clone();
        state.lease = Some(lease);
        if let Err(e) = self.lock.record(&state).await {
            tracing::warn!(
                "cannot record lease {lease:x} in {}: {e}; after a crash the next process cannot clear it",
                self.lock.state_path().display()
            );
        }
    }
}

impl fmt::Debug for StateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.lock.state_path)
            .field("state", &self.state)
            .finish()
    }
}

impl PartialEq for StateFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lock, &other.lock) && self.state == other.state
    }
}

impl Eq for StateFile {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_cleared_only_for_a_successor_on_the_same_host_and_cluster() {
        let mut prev = ProcessState::new("gw-1_0001", "cluster_1");
        assert_eq!(prev.lease_to_clear("gw-1_0002", "cluster_1"), None);
        prev.lease = Some(0x1a);
        assert_eq!(prev.lease_to_clear("gw-1_0002", "cluster_1"), Some(0x1a));
        assert_eq!(prev.lease_to_clear("gw-2_0002", "cluster_1"), None);
        assert_eq!(prev.lease_to_clear("gw-1_0002", "cluster_2"), None);
        assert_eq!(prev.lease_to_clear("gw-1_0001", "cluster_1"), None);
    }

    #[tokio::test]
    async fn one_process_per_role_and_directory_and_the_state_survives_it() {
        let dir = std::env::temp_dir().join(format!(
            "autogate-workdir-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (lock, previous) = WorkdirLock::acquire(&dir, "server").await.unwrap();
        assert_eq!(previous, None);
        // A second holder of the same role fails at once and names the first; another role
        // shares the directory.
        match WorkdirLock::acquire(&dir, "server").await {
            Err(e @ WorkdirError::InUse { .. }) => {
                assert_eq!(e.exit_code(), 69);
                let text = e.to_string();
                assert!(
                    text.contains(&format!("(pid {}, lock ", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let (runner, _) = WorkdirLock::acquire(&dir, "runner").await.unwrap();
        drop(runner);
        let mut state = ProcessState::new("gw-1_0001", "cluster_1");
        state.lease = Some(42);
        lock.record(&state).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lock.state_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(lock);
        let (_lock, previous) = WorkdirLock::acquire(&dir, "server").await.unwrap();
        assert_eq!(previous, Some(state));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
