//! Ansible Galaxy dependencies of a playbook (`requirements.yml`: collections and roles),
//! installed once per requirement set and server and cached on the node, as venvs are.
//!
//! The key is sha256 of the requirement file's contents and the Galaxy server (its URL without
//! credentials, and whether certificates are checked). As for venvs, a dependency given as a
//! local path (a collection tarball in the repository) is not hashed: change the requirement
//! file (a version, a comment) to install again.
//!
//! Layout under `<work_dir>/galaxy/`: `<key>/collections` and `<key>/roles`. A set is built in a
//! fresh `.build-<key>-<random>` directory by `ansible-galaxy install -r` with
//! `ANSIBLE_COLLECTIONS_PATH`/`ANSIBLE_ROLES_PATH` pointing into it, then renamed to `<key>`:
//! the atomic publish, so a set is usable exactly when `<key>` exists. Builders of one key
//! serialise on `<key>.lock` (`flock`); a second builder that waited finds `<key>` and reuses
//! it. A failed build leaves nothing behind; one killed mid-way leaves its build directory,
//! removed by the next build of that key once it is older than the build timeout, or by the
//! pruner.
//!
//! As venvs, a set handed to a run is pinned for the run (a shared lock on `<key>.use`, whose
//! time records the use): the pruner ([`crate::venv_prune`]) deletes sets unused for
//! `[application] venv_retention_period`, never one in use or being built.
//!
//! The server reaches `ansible-galaxy` the way the family configures it, through the
//! environment (`ANSIBLE_GALAXY_SERVER_LIST` and `ANSIBLE_GALAXY_SERVER_<ID>_URL`, `_TOKEN`,
//! `_USERNAME`, `_PASSWORD`, `_VALIDATE_CERTS`): credentials never appear on a command line,
//! and they are masked in what a failed install reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;
use crate::runner::{run_process, ProcessSpec};
use crate::user::ServiceUser;
use crate::venv_prune::Cache;

/// The Galaxy server collections and roles come from (an `ansible-galaxy` registry).
#[derive(Clone, PartialEq, Eq)]
pub struct GalaxyServer {
    /// The registry's name (it names the server for `ansible-galaxy`).
    pub name: String,
    /// The server URL, without credentials.
    pub url: String,
    /// API token (`--token-name`).
    pub token: Option<String>,
    /// User and password (`--username`, `--password-name`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Certificates are not checked (`--insecure`).
    pub insecure: bool,
}

impl std::fmt::Debug for GalaxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GalaxyServer")
            .field("name", &self.name)
            .field("url", &crate::checkout::redact_url(&self.url))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl GalaxyServer {
    /// The credentials, for masking in output and errors.
    pub fn secret_values(&self) -> Vec<String> {
        [&self.token, &self.password]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }

    /// The server's id for `ansible-galaxy`: the registry name in lower case, every character
    /// an environment variable name cannot hold made `_`.
    fn id(&self) -> String {
        let id: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if id.is_empty() {
            "registry".to_owned()
        } else {
            id
        }
    }

    /// The environment that makes `ansible-galaxy` use this server only.
    pub fn env(&self) -> BTreeMap<String, String> {
        let id = self.id();
        let prefix = format!("ANSIBLE_GALAXY_SERVER_{}", id.to_ascii_uppercase());
        let mut env = BTreeMap::new();
        env.insert("ANSIBLE_GALAXY_SERVER_LIST".to_owned(), id);
        env.insert(format!("{prefix}_URL"), self.url.clone());
        if let Some(t) = &self.token {
            env.insert(format!("{prefix}_TOKEN"), t.clone());
        }
        if let Some(u) = &self.username {
            env.insert(format!("{prefix}_USERNAME"), u.clone());
        }
        if let Some(p) = &self.password {
            env.insert(format!("{prefix}_PASSWORD"), p.clone());
        }
        if self.insecure {
            env.insert(format!("{prefix}_VALIDATE_CERTS"), "False".to_owned());
        }
        env
    }
}

/// An installed dependency set.
#[derive(Debug, Clone)]
pub struct GalaxyDeps {
    /// The cache key (hex sha256).
    pub key: String,
    /// `<work_dir>/galaxy/<key>`: `collections/` and `roles/` below it.
    pub path: PathBuf,
    /// How long this call took to install it; `None` when it was reused.
    pub build_time: Option<Duration>,
    /// The set's pin against the pruner: keep it (or this value) for as long as the run uses
    /// the set. The use was recorded when it was handed out.
    pub in_use: Option<crate::venv_prune::InUse>,
}

impl GalaxyDeps {
    /// The variables a playbook run needs to find the set: its directories first, then what
    /// `env` (the service's environment) already names, else Ansible's defaults.
    pub fn env(&self, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (var, dir, default) in [
            (
                "ANSIBLE_COLLECTIONS_PATH",
                "collections",
                "~/.ansible/collections:/usr/share/ansible/collections",
            ),
            (
                "ANSIBLE_ROLES_PATH",
                "roles",
                "~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles",
            ),
        ] {
            let rest = env.get(var).map_or(default, String::as_str);
            out.insert(
                var.to_owned(),
                format!("{}:{rest}", self.path.join(dir).display()),
            );
        }
        out
    }
}

/// The Galaxy dependency cache of one node.
#[derive(Debug, Clone)]
pub struct GalaxyCache {
    root: PathBuf,
    user: Option<ServiceUser>,
    build_timeout: Duration,
}

impl GalaxyCache {
    /// A cache under `root` (normally `<work_dir>/galaxy`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            user: None,
            build_timeout: Duration::from_secs(900),
        }
    }

    /// Installs as `user` (who then owns the set it reads at run time).
    pub fn with_user(mut self, user: Option<ServiceUser>) -> Self {
        self.user = user;
        self
    }

    /// Removes what builds of `key` killed mid-way left: their directories are older than any
    /// live build can be (the build timeout).
    fn remove_stale_builds(&self, key: &str) {
        let prefix = format!(".build-{key}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > self.build_timeout);
            if stale && e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The cache key of `requirements` from `server`.
    pub fn key(requirements: &Path, server: Option<&GalaxyServer>) -> Result<String, ExecError> {
        let text = std::fs::read(requirements)
            .map_err(|e| ExecError::io(format!("reading {}", requirements.display()), e))?;
        let mut h = Sha256::new();
        h.update(b"autogate-galaxy-v1\0");
        h.update(&text);
        if let Some(s) = server {
            h.update(b"\0server\0");
            h.update(crate::checkout::redact_url(&s.url).as_bytes());
            h.update([u8::from(s.insecure)]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// The set for `requirements`, installed with `galaxy` (`ansible-galaxy`) when absent.
    /// `cwd` is where relative paths of the file are read from (the service's working
    /// directory); `env` the service's environment (its `PATH`, proxies). The set comes pinned
    /// against the pruner ([`GalaxyDeps::in_use`]).
    pub async fn ensure(
        &self,
        galaxy: &Path,
        requirements: &Path,
        cwd: &Path,
        server: Option<&GalaxyServer>,
        env: &BTreeMap<String, String>,
        cancel: &CancellationToken,
    ) -> Result<GalaxyDeps, ExecError> {
        let key = Self::key(requirements, server)?;
        // The pruner may take an idle set between the lookup and the pin; then look again
        // (which installs it). Twice in a row would need a retention shorter than a build.
        for _ in 0..3 {
            let mut deps = self
                .ensure_unpinned(&key, galaxy, requirements, cwd, server, env, cancel)
                .await?;
            if let Some(pin) = crate::venv_prune::pin_in(Cache::Galaxy, &self.root, &key).await? {
                deps.in_use = Some(pin);
                return Ok(deps);
            }
        }
        Err(ExecError::Dependencies {
            reason: format!(
                "the Galaxy dependencies of {} were pruned as soon as they were installed, three times: is [application] venv_retention_period shorter than an install?",
                requirements.display()
            ),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure_unpinned(
        &self,
        key: &str,
        galaxy: &Path,
        requirements: &Path,
        cwd: &Path,
        server: Option<&GalaxyServer>,
        env: &BTreeMap<String, String>,
        cancel: &CancellationToken,
    ) -> Result<GalaxyDeps, ExecError> {
        let key = key.to_owned();
        let path = self.root.join(&key);
        if path.is_dir() {
            return Ok(GalaxyDeps {
                key,
                path,
                build_time: None,
                in_use: None,
            });
        }
        let started = Instant::now();
        std::fs::create_dir_all(&self.root)
            .map_err(|e| ExecError::io(format!("creating {}", self.root.display()), e))?;
        // Held until the set is published: the pruner leaves a key alone while it is held.
        let _lock = crate::checkout::lock_file(self.root.join(format!("{key}.lock"))).await?;
        // Someone else may have installed it while we waited for the lock.
        if path.is_dir() {
            return Ok(GalaxyDeps {
                key,
                path,
                build_time: None,
                in_use: None,
            });
        }
        self.remove_stale_builds(&key);
        // Removed on every early return: a failed install leaves nothing.
        let build = tempfile::Builder::new()
            .prefix(&format!(".build-{key}-"))
            .tempdir_in(&self.root)
            .map_err(|e| ExecError::io("creating a galaxy build directory", e))?;
        for sub in ["collections", "roles"] {
            let d = build.path().join(sub);
            std::fs::create_dir(&d)
                .map_err(|e| ExecError::io(format!("creating {}", d.display()), e))?;
        }
        if let Some(u) = &self.user {
            for d in [
                build.path().to_owned(),
                build.path().join("collections"),
                build.path().join("roles"),
            ] {
                std::os::unix::fs::chown(&d, Some(u.uid()), Some(u.gid()))
                    .map_err(|e| ExecError::io(format!("giving {} to the run", d.display()), e))?;
            }
        }
        let mut spec = ProcessSpec::new(galaxy, cwd);
        spec.args = vec![
            "install".into(),
            "-r".into(),
            requirements.as_os_str().to_owned(),
        ];
        spec.env = env.clone();
        if let Some(s) = server {
            spec.env.extend(s.env());
            spec.mask = s.secret_values();
        }
        spec.env.insert(
            "ANSIBLE_COLLECTIONS_PATH".to_owned(),
            build.path().join("collections").display().to_string(),
        );
        spec.env.insert(
            "ANSIBLE_ROLES_PATH".to_owned(),
            build.path().join("roles").display().to_string(),
        );
        spec.timeout = Some(self.build_timeout);
        spec.user = self.user.clone();
        let r = run_process(&spec, cancel).await?;
        if r.return_code != 0 || r.timed_out {
            let out = format!("{}{}", r.stdout, r.stderr);
            return Err(ExecError::Dependencies {
                reason: format!(
                    "ansible-galaxy install -r {} failed ({}): {}",
                    requirements.display(),
                    if r.timed_out {
                        "timed out".to_owned()
                    } else {
                        format!("exit {}", r.return_code)
                    },
                    tail_chars(out.trim(), 2000)
                ),
            });
        }
        let built = build.keep();
        // Its time is when it was published (what the pruner counts idleness from), not when
        // the build started. At worst (not allowed) it counts from the build's start.
        let _ =
            std::fs::File::open(&built).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        match std::fs::rename(&built, &path) {
            Ok(()) => {}
            // Another builder published the same key first: use theirs.
            Err(_) if path.is_dir() => {
                let _ = std::fs::remove_dir_all(&built);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&built);
                return Err(ExecError::io(format!("publishing {}", path.display()), e));
            }
        }
        Ok(GalaxyDeps {
            key,
            path,
            build_time: Some(started.elapsed()),
            in_use: None,
        })
    }
}

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_env_and_debug_hide_credentials() {
        let s = GalaxyServer {
            name: "my-galaxy.prod".into(),
            url: "https://galaxy.example/api/".into(),
            token: Some("tok-SECRET".into()),
            username: None,
            password: None,
            insecure: true,
        };
        let env = s.env();
        assert_eq!(env["ANSIBLE_GALAXY_SERVER_LIST"], "my_galaxy_prod");
        assert_eq!(
            env["ANSIBLE_GALAXY_SERVER_MY_GALAXY_PROD_URL"],
            "https://galaxy.example/api/"
        );
        assert_eq!(
            env["ANSIBLE_GALAXY_SERVER_MY_GALAXY_PROD_TOKEN"],
            "tok-SECRET"
        );
        assert_eq!(
            env["ANSIBLE_GALAXY_SERVER_MY_GALAXY_PROD_VALIDATE_CERTS"],
            "False"
        );
        assert!(!format!("{s:?}").contains("SECRET"));
        assert_eq!(s.secret_values(), ["tok-SECRET"]);
    }

    #[tokio::test]
    async fn a_killed_build_is_cleaned_up_once_stale() {
        let t = tempfile::tempdir().unwrap();
        let req = t.path().join("requirements.yml");
        std::fs::write(&req, "collections: []\n").unwrap();
        let key = GalaxyCache::key(&req, None).unwrap();
        let cache = GalaxyCache::new(t.path().join("galaxy"));
        let stale = t.path().join(format!("galaxy/.build-{key}-old"));
        let live = t.path().join(format!("galaxy/.build-{key}-live"));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let old = std::time::SystemTime::now() - cache.build_timeout - Duration::from_secs(60);
        std::fs::File::open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A stand-in ansible-galaxy that installs nothing, successfully.
        let fake = t.path().join("ansible-galaxy");
        std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let deps = cache
            .ensure(
                &fake,
                &req,
                t.path(),
                None,
                &BTreeMap::new(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(deps.path.join("collections").is_dir());
        assert!(deps.build_time.is_some());
        assert!(!stale.exists(), "the stale build stays");
        assert!(live.exists(), "a build that may be alive was removed");
        // Published: the next call reuses it.
        let again = cache
            .ensure(
                &fake,
                &req,
                t.path(),
                None,
                &BTreeMap::new(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(again.build_time, None);
    }

    #[test]
    fn key_follows_file_and_server_not_credentials() {
        let t = tempfile::tempdir().unwrap();
        let req = t.path().join("requirements.yml");
        std::fs::write(&req, "collections: []\n").unwrap();
        let a = GalaxyCache::key(&req, None).unwrap();
        let mut s = GalaxyServer {
            name: "g".into(),
            url: "https://g.example".into(),
            token: Some("one".into()),
            username: None,
            password: None,
            insecure: false,
        };
        let b = GalaxyCache::key(&req, Some(&s)).unwrap();
        assert_ne!(a, b);
        s.token = Some("two".into());
        assert_eq!(GalaxyCache::key(&req, Some(&s)).unwrap(), b);
        std::fs::write(&req, "collections: [] # v2\n").unwrap();
        assert_ne!(GalaxyCache::key(&req, None).unwrap(), a);
    }
}
