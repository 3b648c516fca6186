//! The unprivileged OS user services run as (`[server] service_user`, `[runner] service_user`).
//!
//! A node keeps its store, its secrets key, its log and the checkouts of every service in its
//! working directory. A service's code is written by service authors, not by the node's
//! operator: run as the node's user (often root) it could read all of that. With a service user
//! the engine starts every program of a run that executes service code — the interpreter check,
//! the venv build (pip runs build backends and reads requirement files, both the author's), the
//! program itself — under that user's uid and primary gid, without supplementary groups, in a
//! workspace that user owns. Git (deploy keys, known hosts) stays with the node.
//!
//! The user is resolved once, when the node starts, and refused when it would protect nothing:
//! root, the node's own user, or a user the node cannot switch to (the node is not root).
//! [`ServiceUser::check_reachable`] tells, also at start, whether the user can reach the
//! directories it needs: a directory on the way that is closed to it is a setup mistake better
//! named then than found as a `permission denied` in the first run's output.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An OS user services run as; only made by [`ServiceUser::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// Why a service user cannot be used. Each is a configuration mistake: the operator creates the
/// user, names another one, or runs the node as root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceUserError {
    /// No such user on this machine.
    #[error(
        "user {name:?} does not exist on this machine; create it (e.g. `useradd --system \
         --no-create-home --shell /usr/sbin/nologin {name}`) or leave the setting empty"
    )]
    Unknown {
        /// The name as configured.
        name: String,
    },
    /// The user database could not be read.
    #[error("cannot look up user {name:?}: {reason}")]
    Lookup {
        /// The name as configured.
        name: String,
        /// The system's reason.
        reason: String,
    },
    /// The user is root: services would keep every right.
    #[error(
        "user {name:?} is root (uid 0): services would keep every right; name an unprivileged user"
    )]
    Root {
        /// The name as configured.
        name: String,
    },
    /// The user is the node's own: services could read everything the node keeps.
    #[error(
        "user {name:?} is the node's own user (uid {uid}): services could read the node's keys \
         and store; name another, unprivileged user, or leave the setting empty"
    )]
    NodeOwn {
        /// The name as configured.
        name: String,
        /// Its uid.
        uid: u32,
    },
    /// The node is not root, so it cannot start programs as another user.
    #[error(
        "the node runs as uid {node_uid}, not root, so it cannot start programs as user \
         {name:?}; run the node as root or leave the setting empty"
    )]
    CannotSwitch {
        /// The name as configured.
        name: String,
        /// The node's uid.
        node_uid: u32,
    },
    /// A directory on the way to the workspaces or venvs is closed to the user.
    #[error(
        "user {name:?} cannot reach {}: {} is mode {mode:o} and closed to it; let other users \
         traverse it (e.g. `chmod o+x {}`) or move the node's working directory",
        .path.display(), .blocker.display(), .blocker.display()
    )]
    Unreachable {
        /// The user's name.
        name: String,
        /// The directory it needs.
        path: PathBuf,
        /// The first directory on the way it cannot enter.
        blocker: PathBuf,
        /// That directory's mode.
        mode: u32,
    },
}

impl ServiceUser {
    /// Looks `name` up and checks that it can serve: it exists, it is not root nor the node's own
    /// user, and this process (root) can switch to it.
    pub fn resolve(name: &str) -> Result<Self, ServiceUserError> {
        use nix::unistd::{geteuid, User};
        let user = User::from_name(name)
            .map_err(|e| ServiceUserError::Lookup {
                name: name.to_owned(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| ServiceUserError::Unknown {
                name: name.to_owned(),
            })?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        let node = geteuid().as_raw();
        if uid == 0 {
            return Err(ServiceUserError::Root {
                name: name.to_owned(),
            });
        }
        if uid == node {
            return Err(ServiceUserError::NodeOwn {
                name: name.to_owned(),
                uid,
            });
        }
        if node != 0 {
            return Err(ServiceUserError::CannotSwitch {
                name: name.to_owned(),
                node_uid: node,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
        })
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Its primary gid (the only group its processes get).
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// `Ok` when the user can enter `dir` and every directory above it (its processes have its
    /// uid and primary gid only); else the first directory that stops it.
    pub fn check_reachable(&self, dir: &Path) -> Result<(), ServiceUserError> {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        for d in canonical.ancestors() {
            let Ok(meta) = std::fs::metadata(d) else {
                continue;
            };
            let mode = meta.mode() & 0o7777;
            let bit = if meta.uid() == self.uid {
                0o100
            } else if meta.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(ServiceUserError::Unreachable {
                    name: self.name.clone(),
                    path: dir.to_path_buf(),
                    blocker: d.to_path_buf(),
                    mode,
                });
            }
        }
        Ok(())
    }

    /// Gives the tree at `root` to this user (symlinks themselves, never what they point to).
    /// Blocking: call it off the runtime threads.
    pub(crate) fn own_tree(&self, root: &Path) -> std::io::Result<()> {
        // Deepest entries first, `root` last: until `root` is the user's, none of its processes
        // can enter the tree to swap an entry for a link while the walk runs.
        chown_tree(root, self.uid, self.gid, Order::RootLast, &|_| Ok(()))
    }
}

/// Gives the tree at `root` back to this process's user and makes it readable by everyone and
/// writable by its owner only (`a+rX,go-w`): what a venv built under the service user becomes,
/// so that runs can execute it but none can change it for the next. Blocking.
pub(crate) fn share_tree(root: &Path) -> std::io::Result<()> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    // `root` first, each directory closed to the user before its entries are walked: what the
    // walk looks at can no longer be changed under it.
    chown_tree(root, uid, gid, Order::RootFirst, &|p: &Path| {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if !meta.is_dir() && meta.nlink() > 1 {
            // A hard link may be a name for a file of the node's: making it readable would
            // hand that file out. pip makes none.
            return Err(std::io::Error::other(format!(
                "{} is a hard link; refused",
                p.display()
            )));
        }
        let mode = meta.mode() & 0o7777 & !0o7022;
        let exec = if meta.is_dir() || mode & 0o111 != 0 {
            0o111
        } else {
            0
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o444 | exec))
    })
}

/// Where the root of a walk comes in it.
#[derive(Clone, Copy)]
enum Order {
    RootFirst,
    RootLast,
}

/// `each` on every entry of the tree at `root` (the root too), then its `lchown`; directories
/// before or after their entries as `order` says.
fn chown_tree(
    root: &Path,
    uid: u32,
    gid: u32,
    order: Order,
    each: &dyn Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let one = |p: &Path| -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        each(p)
    };
    if let Order::RootFirst = order {
        one(root)?;
    }
    if std::fs::symlink_metadata(root)?.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid, gid, order, each)?;
        }
    }
    if let Order::RootLast = order {
        one(root)?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) when missing and sets its mode to exactly `mode` (the node's
/// own directories: 0700 closed, 0711 traversable but not listable).
pub(crate) fn dir_with_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(
            ServiceUser::resolve("root"),
            Err(ServiceUserError::Root { .. })
        ));
        let e = ServiceUser::resolve("no-such-user-3f9a").unwrap_err();
        assert!(matches!(e, ServiceUserError::Unknown { .. }), "{e}");
        assert!(e.to_string().contains("useradd"), "{e}");
    }

    #[test]
    fn a_closed_directory_on_the_way_is_named() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("work/runtime/runs");
        std::fs::create_dir_all(&inner).unwrap();
        for d in [
            t.path().join("work"),
            t.path().join("work/runtime"),
            inner.clone(),
        ] {
            std::fs::set_permissions(&d, PermissionsExt::from_mode(0o711)).unwrap();
        }
        std::fs::set_permissions(t.path(), PermissionsExt::from_mode(0o700)).unwrap();
        // `nobody`'s ids: neither the owner nor the group of anything here.
        let user = ServiceUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        match user.check_reachable(&inner) {
            Err(ServiceUserError::Unreachable { blocker, mode, .. }) => {
                assert_eq!(blocker, t.path().canonicalize().unwrap());
                assert_eq!(mode, 0o700);
            }
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(t.path(), PermissionsExt::from_mode(0o711)).unwrap();
        // The temporary directory's parents (`/tmp`) let everyone through.
        assert_eq!(user.check_reachable(&inner), Ok(()));
    }

    #[test]
    fn a_tree_is_shared_read_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("v");
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/python"), b"x").unwrap();
        std::fs::set_permissions(d.join("bin/python"), PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(d.join("data"), b"x").unwrap();
        std::fs::set_permissions(d.join("data"), PermissionsExt::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&d, PermissionsExt::from_mode(0o700)).unwrap();
        share_tree(&d).unwrap();
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode(""), 0o755);
        assert_eq!(mode("bin/python"), 0o755);
        assert_eq!(mode("data"), 0o644);
    }
}
