//! Files and directories only this node's user may read.
//!
//! A node's working directory holds the embedded store (password hashes, sealed secrets, API key
//! hashes), its log, its state and lock files, checkouts and the first admin's temporary
//! password. Anything in it readable by another local user is a leak, so the directory is mode
//! 0700 — created so, and tightened at start when an earlier version (or a hand-made directory)
//! left it open — and the files written in it are 0600 (0400 for keys). The directory is the
//! real fence: a file created by a library with the process umask is still out of reach.
//!
//! With a service user (`[server] service_user`) the working directory is 0711 instead
//! ([`node_dir`] with `traversable`): the service user must pass through it to the workspace and
//! venv of its run, but cannot list it, and every file directly in it is 0600 and every other
//! directory 0700, so passing through opens nothing else.
//!
//! Only a directory that is the node's own is tightened: one owned by this user and without the
//! sticky bit. A working directory pointed at `/tmp` or at another user's directory is left as it
//! is (the caller warns), rather than changing the modes of a directory others rely on.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The bits that let another user in.
const OTHERS: u32 = 0o077;

/// What [`private_dir`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Created now, mode 0700.
    Created,
    /// Already private.
    Private,
    /// It was open to others (the old mode); it is 0700 now.
    Tightened(u32),
    /// Open to others, but not this user's to change (another owner, or a sticky directory such
    /// as `/tmp`): left as it is.
    Shared(u32),
    /// Asked for traversable (0711) and it was closed (the old mode): it is 0711 now.
    Opened(u32),
}

/// Creates `dir` (and its missing parents) with mode 0700, or tightens an existing one this user
/// owns to 0700.
pub fn private_dir(dir: &Path) -> io::Result<DirState> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // The mode asked for is masked by the umask; say it again.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            Ok(DirState::Created)
        }
        Err(e) => Err(e),
        Ok(meta) => {
            let mode = meta.mode() & 0o7777;
            if mode & OTHERS == 0 {
                return Ok(DirState::Private);
            }
            let sticky = mode & 0o1000 != 0;
            if sticky || meta.uid() != this_user()? {
                return Ok(DirState::Shared(mode));
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            Ok(DirState::Tightened(mode))
        }
    }
}

/// [`private_dir`] when `traversable` is false; else the same with mode 0711: created so, an
/// existing directory of this user's set to exactly 0711 (tightened when it was more open,
/// opened when it was 0700), a shared one left alone.
pub fn node_dir(dir: &Path, traversable: bool) -> io::Result<DirState> {
    if !traversable {
        return private_dir(dir);
    }
    const TRAVERSABLE: u32 = 0o711;
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(TRAVERSABLE))?;
            Ok(DirState::Created)
        }
        Err(e) => Err(e),
        Ok(meta) => {
            let mode = meta.mode() & 0o7777;
            if mode == TRAVERSABLE {
                return Ok(DirState::Private);
            }
            let sticky = mode & 0o1000 != 0;
            if sticky || meta.uid() != this_user()? {
                return Ok(DirState::Shared(mode));
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(TRAVERSABLE))?;
            Ok(if mode & OTHERS & !TRAVERSABLE != 0 {
                DirState::Tightened(mode)
            } else {
                DirState::Opened(mode)
            })
        }
    }
}

/// Makes an existing file this user owns readable by this user only (`mode`, e.g. 0600) when it
/// is open to others; returns the old mode when it changed it. A file that does not exist is left
/// alone.
pub fn tighten_file(path: &Path, mode: u32) -> io::Result<Option<u32>> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let old = meta.mode() & 0o7777;
    if old & OTHERS == 0 || meta.uid() != this_user()? {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(Some(old))
}

/// Writes `contents` to `path` with mode 0600, atomically and durably: a temporary file in the
/// same directory (created 0600, so the contents are never readable by others, even for a
/// moment), flushed, renamed over `path`, and the directory synced. A reader sees the old
/// content or the new, never a part.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename itself survives a power cut only once the directory is synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// This process's user: the owner of `/proc/self` (the effective uid), read without `libc`.
fn this_user() -> io::Result<u32> {
    Ok(fs::metadata("/proc/self")?.uid())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_private_and_an_open_one_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert_eq!(private_dir(&dir).unwrap(), DirState::Created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(private_dir(&dir).unwrap(), DirState::Private);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&dir).unwrap(), DirState::Tightened(0o755));
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_traversable_directory_is_0711_whatever_it_was() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert_eq!(node_dir(&dir, true).unwrap(), DirState::Created);
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&root.path().join("a")), 0o700, "parents stay closed");
        assert_eq!(node_dir(&dir, true).unwrap(), DirState::Private);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(node_dir(&dir, true).unwrap(), DirState::Opened(0o700));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(node_dir(&dir, true).unwrap(), DirState::Tightened(0o755));
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(node_dir(&dir, false).unwrap(), DirState::Tightened(0o711));
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_sticky_shared_directory_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(private_dir(&shared).unwrap(), DirState::Shared(0o1777));
        assert_eq!(mode(&shared), 0o1777);
    }

    #[test]
    fn private_files_are_0600_and_open_ones_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("secret");
        write_private(&p, b"x").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"x");
        write_private(&p, b"y").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"y");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "no temporary left"
        );

        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten_file(&p, 0o600).unwrap(), Some(0o644));
        assert_eq!(mode(&p), 0o600);
        assert_eq!(tighten_file(&p, 0o600).unwrap(), None);
        assert_eq!(
            tighten_file(&root.path().join("none"), 0o600).unwrap(),
            None
        );
    }
}
