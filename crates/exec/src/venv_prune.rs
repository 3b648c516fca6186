//! The cache pruner: cached venvs and Ansible Galaxy installs nobody used for
//! `[application] venv_retention_period` are deleted, checked every `venv_sweep_interval` (the
//! family's 5.4 pruner, same keys).
//!
//! Both caches are directories of keyed entries (see [`Cache`]): `<root>/<key>` is the published
//! entry (for venvs a link into `store/`, for Galaxy installs the directory itself), beside it
//! `<key>.lock` (held by a build of that key) and `<key>.use`. "Used" is recorded per key in
//! `<key>.use`: a run that is handed an entry takes a shared `flock` on that file for as long as
//! it runs and sets the file's modification time (see [`pin`]). The sweep deletes an entry only
//! when it holds both `<key>.lock` (no build of that key in progress) and `<key>.use` (no run
//! using it) exclusively, without waiting, and the entry's last use — the later of that
//! modification time and the entry's publication — is older than the retention period. It
//! unpublishes first (the `<key>` link goes, or the `<key>` directory is renamed out of the
//! way, so a new run builds afresh) and then deletes the directory; a run that found the entry
//! just before waits for its shared lock until the sweep is done, finds the entry gone, and
//! asks the cache again. A run longer than the retention period is therefore never pulled from
//! under its feet, and processes sharing the directory (a core node and a local CLI run) obey
//! the same locks. Under the key's build lock, with nothing published, what a build left
//! (`store/<key>-*` of venvs, `.build-<key>-*` of Galaxy installs) is a crashed build's, and
//! goes.
//!
//! The lock files themselves stay (two empty files per key ever built): deleting a lock file
//! another process has open and is waiting on would give two processes "the" lock.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fs4::fs_std::FileExt;
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;

/// A cache directory of keyed entries the pruner sweeps: how an entry is published and what a
/// build of it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// `<work_dir>/venvs`: `<key>` is a link to `store/<key>-<random>`, built there.
    Venvs,
    /// `<work_dir>/galaxy`: `<key>` is the install's directory, built in `.build-<key>-<random>`
    /// and renamed into place.
    Galaxy,
}

impl Cache {
    fn what(self) -> &'static str {
        match self {
            Cache::Venvs => "venv",
            Cache::Galaxy => "galaxy install",
        }
    }

    /// Whether the entry of `key` is published (usable).
    fn published(self, root: &Path, key: &str) -> bool {
        match self {
            Cache::Venvs => root.join(key).join("bin/python").exists(),
            Cache::Galaxy => root.join(key).is_dir(),
        }
    }

    /// The key a file name of the cache belongs to, if it is one of its entries.
    fn key_of(self, name: &str) -> Option<String> {
        let key = match (self, name.strip_prefix(".build-")) {
            (Cache::Galaxy, Some(rest)) => rest.get(..64)?,
            _ => name
                .strip_suffix(".lock")
                .or_else(|| name.strip_suffix(".use"))
                .unwrap_or(name),
        };
        is_key(key).then(|| key.to_owned())
    }

    /// Where builds of `key` happen, and the prefix of their directories' names there.
    fn builds(self, root: &Path, key: &str) -> (PathBuf, String) {
        match self {
            Cache::Venvs => (root.join("store"), format!("{key}-")),
            Cache::Galaxy => (root.to_owned(), format!(".build-{key}-")),
        }
    }
}

/// Held while a run uses a cached venv or Galaxy install: its shared lock on `<key>.use`.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct InUse(#[allow(dead_code)] Arc<File>);

/// Marks the venv of `key` under `root` used now and pins it against the pruner for as long as
/// the returned guard lives. `None` when the venv is not (any more) published: the pruner took
/// it between the caller's lookup and this call, and the caller must look it up again.
pub(crate) async fn pin(root: &Path, key: &str) -> Result<Option<InUse>, ExecError> {
    pin_in(Cache::Venvs, root, key).await
}

/// [`pin`] for an entry of `cache`.
pub(crate) async fn pin_in(
    cache: Cache,
    root: &Path,
    key: &str,
) -> Result<Option<InUse>, ExecError> {
    let (root, key) = (root.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || pin_blocking(cache, &root, &key))
        .await
        .map_err(|e| {
            ExecError::io(
                format!("{} pin task", cache.what()),
                std::io::Error::other(e.to_string()),
            )
        })?
}

fn pin_blocking(cache: Cache, root: &Path, key: &str) -> Result<Option<InUse>, ExecError> {
    let path = root.join(format!("{key}.use"));
    let io = |what: &str, e| ExecError::io(format!("{what} {}", path.display()), e);
    let file = open_lock(&path).map_err(|e| io("opening", e))?;
    // Waits while the pruner holds it: then the entry is gone, and found so below.
    FileExt::lock_shared(&file).map_err(|e| io("locking", e))?;
    if !cache.published(root, key) {
        return Ok(None);
    }
    file.set_modified(SystemTime::now())
        .map_err(|e| io(&format!("recording the use of the {} in", cache.what()), e))?;
    Ok(Some(InUse(Arc::new(file))))
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// What one sweep did. (This crate does not log: the node reports it.)
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Keys whose venv was deleted, with how long it had been unused.
    pub removed: Vec<(String, Duration)>,
    /// Keys whose Galaxy install was deleted, with how long it had been unused (filled by
    /// [`run`], which sweeps both caches).
    pub removed_galaxy: Vec<(String, Duration)>,
    /// Keys kept: used recently, in use, or being built.
    pub kept: usize,
    /// What could not be checked or deleted (the sweep goes on with the other keys).
    pub problems: Vec<String>,
}

/// Deletes the venvs under `root` (`<work_dir>/venvs`) not used for `retention`, and the
/// directories crashed builds left. Blocking: call it off the async runtime's threads.
pub fn sweep(root: &Path, retention: Duration) -> std::io::Result<Sweep> {
    sweep_cache(Cache::Venvs, root, retention)
}

/// [`sweep`] of the cache `cache` under `root`; what it deleted is in [`Sweep::removed`].
pub fn sweep_cache(cache: Cache, root: &Path, retention: Duration) -> std::io::Result<Sweep> {
    let mut out = Sweep::default();
    let entries = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut keys: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| cache.key_of(&n))
        .collect();
    keys.sort();
    keys.dedup();
    let now = SystemTime::now();
    for key in keys {
        match sweep_key(cache, root, &key, retention, now, &mut out.problems) {
            Ok(Some(idle)) => out.removed.push((key, idle)),
            Ok(None) => out.kept += 1,
            Err(e) => {
                out.problems.push(format!(
                    "cannot check {} {key} in {}: {e}",
                    cache.what(),
                    root.display()
                ));
                out.kept += 1;
            }
        }
    }
    Ok(out)
}

/// Deletes the entry of `key` when it is idle for `retention` and nobody builds or uses it;
/// how long it had been unused when it deleted one.
fn sweep_key(
    cache: Cache,
    root: &Path,
    key: &str,
    retention: Duration,
    now: SystemTime,
    problems: &mut Vec<String>,
) -> std::io::Result<Option<Duration>> {
    let build = open_lock(&root.join(format!("{key}.lock")))?;
    if !try_exclusive(&build)? {
        return Ok(None);
    }
    let used = open_lock(&root.join(format!("{key}.use")))?;
    if !try_exclusive(&used)? {
        return Ok(None);
    }
    let entry = root.join(key);
    let (builds, prefix) = cache.builds(root, key);
    let published = match std::fs::symlink_metadata(&entry) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Nothing published for this key: what its builds left is a crashed build's (none
            // is in progress: we hold its lock).
            remove_build_dirs(&builds, &prefix, None, problems);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // The entry directory's own time is when its build ended (pip and ansible-galaxy write
    // nothing at its top afterwards): an entry built and not yet used is not idle.
    let built = std::fs::metadata(&entry).unwrap_or(published);
    let last_use = [used.metadata()?.modified()?, built.modified()?]
        .into_iter()
        .max()
        .unwrap_or(now);
    let idle = now.duration_since(last_use).unwrap_or_default();
    // What a published entry keeps among the build directories: a venv's link target.
    let target = match cache {
        Cache::Venvs => std::fs::read_link(&entry)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_owned())),
        Cache::Galaxy => None,
    };
    if idle < retention {
        remove_build_dirs(&builds, &prefix, target.as_deref().map(Path::new), problems);
        return Ok(None);
    }
    // Unpublished first: from here a run of this key builds a new entry, and a half-deleted
    // directory is a leftover the next sweep (or build) of the key removes.
    match cache {
        Cache::Venvs => std::fs::remove_file(&entry)?,
        Cache::Galaxy => {
            remove_build_dirs(&builds, &prefix, None, problems);
            std::fs::rename(&entry, builds.join(format!("{prefix}pruned")))?;
        }
    }
    remove_build_dirs(&builds, &prefix, None, problems);
    Ok(Some(idle))
}

fn try_exclusive(f: &File) -> std::io::Result<bool> {
    match FileExt::try_lock_exclusive(f) {
        Ok(locked) => Ok(locked),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the directories `<dir>/<prefix>*` but `keep`.
fn remove_build_dirs(dir: &Path, prefix: &str, keep: Option<&Path>, problems: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(prefix) && keep != Some(Path::new(&name)) {
            if let Err(err) = remove_tree(&e.path()) {
                problems.push(format!("cannot remove {}: {err}", e.path().display()));
            }
        }
    }
}

/// `remove_dir_all`, also of a tree made read-only for a service user (its directories lost
/// their write bit).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let mut stack: Vec<PathBuf> = vec![path.to_owned()];
            while let Some(dir) = stack.pop() {
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                for e in std::fs::read_dir(&dir)?.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pruner of a node: sweeps the venvs under `root` (`<work_dir>/venvs`) and the Galaxy
/// installs beside it (`<work_dir>/galaxy`) at start and then every `interval` until `stop`,
/// handing each sweep's outcome to `report` (the node logs it). Spawn it on the node's
/// shutdown tracker.
pub async fn run(
    root: PathBuf,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
    report: impl Fn(Result<Sweep, String>) + Send,
) {
    let galaxy = root.with_file_name("galaxy");
    loop {
        let (venvs, installs, keep) = (root.clone(), galaxy.clone(), retention);
        let outcome = match tokio::task::spawn_blocking(move || {
            let mut s = sweep_cache(Cache::Venvs, &venvs, keep)
                .map_err(|e| format!("cannot read {}: {e}", venvs.display()))?;
            match sweep_cache(Cache::Galaxy, &installs, keep) {
                Ok(g) => {
                    s.removed_galaxy = g.removed;
                    s.kept += g.kept;
                    s.problems.extend(g.problems);
                }
                Err(e) => s
                    .problems
                    .push(format!("cannot read {}: {e}", installs.display())),
            }
            Ok(s)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(format!("sweep task failed: {e}")),
        };
        report(outcome);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A published venv of `key` with a `bin/python`, as the cache lays it out.
    fn publish(root: &Path, key: &str) -> PathBuf {
        let dir = root.join("store").join(format!("{key}-abc"));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/python"), "").unwrap();
        std::os::unix::fs::symlink(
            Path::new("store").join(format!("{key}-abc")),
            root.join(key),
        )
        .unwrap();
        dir
    }

    fn keys(s: &Sweep) -> Vec<String> {
        s.removed.iter().map(|(k, _)| k.clone()).collect()
    }

    fn age(path: &Path, by: Duration) {
        // Read-only is enough to set the times of a file or directory one owns.
        let f = File::open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[tokio::test]
    async fn idle_venv_goes_used_one_stays_pinned_one_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (idle, used, busy) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let mut dirs = Vec::new();
        for k in [&idle, &used, &busy] {
            let dir = publish(root, k);
            // Built an hour ago, last used an hour ago.
            drop(pin(root, k).await.unwrap().unwrap());
            age(&dir, Duration::from_secs(3600));
            age(&root.join(format!("{k}.use")), Duration::from_secs(3600));
            dirs.push(dir);
        }
        // `used` is used again now; `busy` is in use (its run started an hour ago).
        drop(pin(root, &used).await.unwrap().unwrap());
        let running = pin(root, &busy).await.unwrap().unwrap();
        age(&root.join(format!("{busy}.use")), Duration::from_secs(3600));
        let retention = Duration::from_secs(1800);
        let s = sweep(root, retention).unwrap();
        assert_eq!(keys(&s), vec![idle.clone()]);
        assert!(!dirs[0].exists() && !root.join(&idle).exists());
        assert!(dirs[1].exists() && dirs[2].exists());
        // A run that looked the idle venv up before the sweep finds it gone when it pins it.
        assert!(pin(root, &idle).await.unwrap().is_none());
        drop(running);
        let s = sweep(root, retention).unwrap();
        assert_eq!(keys(&s), vec![busy.clone()]);
        assert!(dirs[1].exists() && root.join(&used).exists());
    }

    #[test]
    fn a_build_in_progress_is_left_alone_and_crashed_ones_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let key = "d".repeat(64);
        let crashed = root.join("store").join(format!("{key}-crashed"));
        std::fs::create_dir_all(&crashed).unwrap();
        let lock = open_lock(&root.join(format!("{key}.lock"))).unwrap();
        FileExt::lock_exclusive(&lock).unwrap();
        sweep(root, Duration::ZERO).unwrap();
        assert!(crashed.exists(), "a build holds the key's lock");
        drop(lock);
        sweep(root, Duration::ZERO).unwrap();
        assert!(!crashed.exists());
    }

    /// A published Galaxy install of `key`, as the cache lays it out.
    fn publish_galaxy(root: &Path, key: &str) -> PathBuf {
        let dir = root.join(key);
        std::fs::create_dir_all(dir.join("collections")).unwrap();
        std::fs::create_dir_all(dir.join("roles")).unwrap();
        dir
    }

    #[tokio::test]
    async fn idle_galaxy_install_goes_used_one_stays_pinned_one_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let g = Cache::Galaxy;
        let (idle, used, busy) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let mut dirs = Vec::new();
        for k in [&idle, &used, &busy] {
            let dir = publish_galaxy(root, k);
            // Installed an hour ago, last used an hour ago.
            drop(pin_in(g, root, k).await.unwrap().unwrap());
            age(&dir, Duration::from_secs(3600));
            age(&root.join(format!("{k}.use")), Duration::from_secs(3600));
            dirs.push(dir);
        }
        // A build of the idle key that crashed: it goes with the install.
        let crashed = root.join(format!(".build-{idle}-crashed"));
        std::fs::create_dir_all(&crashed).unwrap();
        // `used` is used again now; `busy` is in use (its run started an hour ago).
        drop(pin_in(g, root, &used).await.unwrap().unwrap());
        let running = pin_in(g, root, &busy).await.unwrap().unwrap();
        age(&root.join(format!("{busy}.use")), Duration::from_secs(3600));
        let retention = Duration::from_secs(1800);
        let s = sweep_cache(g, root, retention).unwrap();
        assert_eq!(keys(&s), vec![idle.clone()]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert!(!dirs[0].exists() && !crashed.exists());
        assert!(dirs[1].exists() && dirs[2].exists());
        // Nothing of the deleted install is left but its two lock files.
        let mut left: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(idle.as_str()))
            .collect();
        left.sort();
        assert_eq!(left, [format!("{idle}.lock"), format!("{idle}.use")]);
        // A run that looked the idle install up before the sweep finds it gone when it pins it.
        assert!(pin_in(g, root, &idle).await.unwrap().is_none());
        drop(running);
        let s = sweep_cache(g, root, retention).unwrap();
        assert_eq!(keys(&s), vec![busy.clone()]);
        assert!(dirs[1].exists() && !dirs[2].exists());
    }

    #[test]
    fn a_galaxy_build_in_progress_is_left_alone_and_crashed_ones_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let key = "d".repeat(64);
        let crashed = root.join(format!(".build-{key}-crashed"));
        std::fs::create_dir_all(&crashed).unwrap();
        let lock = open_lock(&root.join(format!("{key}.lock"))).unwrap();
        FileExt::lock_exclusive(&lock).unwrap();
        sweep_cache(Cache::Galaxy, root, Duration::ZERO).unwrap();
        assert!(crashed.exists(), "a build holds the key's lock");
        drop(lock);
        sweep_cache(Cache::Galaxy, root, Duration::ZERO).unwrap();
        assert!(!crashed.exists());
    }
}
