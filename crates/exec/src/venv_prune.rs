//! The venv pruner: cached venvs nobody used for `[application] venv_retention_period` are
//! deleted, checked every `venv_sweep_interval` (the family's 5.4 pruner, same keys).
//!
//! "Used" is recorded per key in `<venvs>/<key>.use`: a run that is handed a venv takes a
//! shared `flock` on that file for as long as it runs and sets the file's modification time
//! (see [`pin`]). The sweep deletes a venv only when it holds both `<key>.lock` (no build of
//! that key in progress) and `<key>.use` (no run using it) exclusively, without waiting, and the
//! venv's last use — the later of that modification time and the venv's publication — is older
//! than the retention period. It unpublishes first (the `<key>` link goes, so a new run builds
//! afresh) and then deletes the directory; a run that found the link just before waits for its
//! shared lock until the sweep is done, finds the link gone, and asks the cache again. A run
//! longer than the retention period is therefore never pulled from under its feet, and
//! processes sharing the directory (a core node and a local CLI run) obey the same locks.
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

/// Held while a run uses a venv: its shared lock on `<key>.use`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InUse(#[allow(dead_code)] Arc<File>);

/// Marks the venv of `key` under `root` used now and pins it against the pruner for as long as
/// the returned guard lives. `None` when the venv is not (any more) published: the pruner took
/// it between the caller's lookup and this call, and the caller must look it up again.
pub(crate) async fn pin(root: &Path, key: &str) -> Result<Option<InUse>, ExecError> {
    let (root, key) = (root.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || pin_blocking(&root, &key))
        .await
        .map_err(|e| ExecError::io("venv pin task", std::io::Error::other(e.to_string())))?
}

fn pin_blocking(root: &Path, key: &str) -> Result<Option<InUse>, ExecError> {
    let path = root.join(format!("{key}.use"));
    let io = |what: &str, e| ExecError::io(format!("{what} {}", path.display()), e);
    let file = open_lock(&path).map_err(|e| io("opening", e))?;
    // Waits while the pruner holds it: then the venv is gone, and found so below.
    FileExt::lock_shared(&file).map_err(|e| io("locking", e))?;
    let link = root.join(key);
    if !link.join("bin/python").exists() {
        return Ok(None);
    }
    file.set_modified(SystemTime::now())
        .map_err(|e| io("recording the use of the venv in", e))?;
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
    /// Keys kept: used recently, in use, or being built.
    pub kept: usize,
    /// What could not be checked or deleted (the sweep goes on with the other keys).
    pub problems: Vec<String>,
}

/// Deletes the venvs under `root` (`<work_dir>/venvs`) not used for `retention`, and the
/// directories crashed builds left. Blocking: call it off the async runtime's threads.
pub fn sweep(root: &Path, retention: Duration) -> std::io::Result<Sweep> {
    let mut out = Sweep::default();
    let entries = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut keys: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            let key = n
                .strip_suffix(".lock")
                .or_else(|| n.strip_suffix(".use"))
                .unwrap_or(&n);
            is_key(key).then(|| key.to_owned())
        })
        .collect();
    keys.sort();
    keys.dedup();
    let now = SystemTime::now();
    for key in keys {
        match sweep_key(root, &key, retention, now, &mut out.problems) {
            Ok(Some(idle)) => out.removed.push((key, idle)),
            Ok(None) => out.kept += 1,
            Err(e) => {
                out.problems.push(format!(
                    "cannot check venv {key} in {}: {e}",
                    root.display()
                ));
                out.kept += 1;
            }
        }
    }
    Ok(out)
}

/// Deletes the venv of `key` when it is idle for `retention` and nobody builds or uses it;
/// how long it had been unused when it deleted one.
fn sweep_key(
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
    let link = root.join(key);
    let store = root.join("store");
    let published = match std::fs::symlink_metadata(&link) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // No venv of this key: what `store/<key>-*` holds is a crashed build (none is in
            // progress: we hold its lock).
            remove_store_dirs(&store, key, None, problems);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // The venv directory's own time is when its build ended (pip writes nothing at its top
    // afterwards): a venv built and not yet run is not idle.
    let built = std::fs::metadata(&link).unwrap_or(published);
    let last_use = [used.metadata()?.modified()?, built.modified()?]
        .into_iter()
        .max()
        .unwrap_or(now);
    let idle = now.duration_since(last_use).unwrap_or_default();
    let target = std::fs::read_link(&link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_owned()));
    if idle < retention {
        remove_store_dirs(&store, key, target.as_deref().map(Path::new), problems);
        return Ok(None);
    }
    // Unpublished first: from here a run of this key builds a new venv, and a half-deleted
    // directory is a leftover the next build of the key removes.
    std::fs::remove_file(&link)?;
    remove_store_dirs(&store, key, None, problems);
    Ok(Some(idle))
}

fn try_exclusive(f: &File) -> std::io::Result<bool> {
    match FileExt::try_lock_exclusive(f) {
        Ok(locked) => Ok(locked),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `store/<key>-*` but `keep`.
fn remove_store_dirs(store: &Path, key: &str, keep: Option<&Path>, problems: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(store) else {
        return;
    };
    let prefix = format!("{key}-");
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(&prefix) && keep != Some(Path::new(&name)) {
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

/// The pruner of a node: sweeps `root` at start and then every `interval` until `stop`,
/// handing each sweep's outcome to `report` (the node logs it). Spawn it on the node's
/// shutdown tracker.
pub async fn run(
    root: PathBuf,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
    report: impl Fn(Result<Sweep, String>) + Send,
) {
    loop {
        let (dir, keep) = (root.clone(), retention);
        let outcome = match tokio::task::spawn_blocking(move || sweep(&dir, keep)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("cannot read {}: {e}", root.display())),
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
}
