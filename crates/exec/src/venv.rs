//! Python virtual environments, one per requirement set and interpreter, cached on the node.
//!
//! The key is sha256 of the interpreter's version and path, the kind of requirement file, and
//! its contents — for a `pyproject.toml` project also every file of the project directory,
//! because `pip install .` installs the project's own code, which may change while the
//! `pyproject.toml` does not. A requirement given as a local path inside a requirements file is
//! not hashed: change the requirements file (e.g. the version) to rebuild.
//!
//! Layout under `<work_dir>/venvs/`: `store/<key>-<random>/` holds a venv, built in place
//! (venvs are not relocatable: pip writes absolute paths into scripts), and `<key>` is a
//! symlink to it, created under a temporary name and renamed — the atomic publish. A venv is
//! usable exactly when its `<key>` link exists. Builders of one key serialise on `<key>.lock`
//! (`flock`); a second builder that waited finds the link and reuses it. Leftovers of a
//! crashed build (a store directory no link points to) are removed by the next build of that
//! key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;
use crate::runner::{run_process, ProcessSpec};

/// Options for building venvs.
#[derive(Debug, Clone)]
pub struct VenvOptions {
    /// Extra `pip install` arguments (e.g. `--index-url …`, `--trusted-host …`, `--no-index`).
    pub pip_args: Vec<String>,
    /// Limit for one venv build (venv creation plus pip).
    pub build_timeout: Duration,
}

impl Default for VenvOptions {
    fn default() -> Self {
        Self {
            pip_args: Vec::new(),
            build_timeout: Duration::from_secs(900),
        }
    }
}

/// The package index a venv is built from (a `pypi` registry). The URL may carry credentials:
/// it reaches pip through its environment (`PIP_INDEX_URL`), never its command line, and the
/// cache key uses it with the user-info removed.
#[derive(Clone, PartialEq, Eq)]
pub struct PipIndex {
    /// Simple-index URL, with `user:password@` when the registry has credentials.
    pub url: String,
    /// Trust the index host without TLS verification (`--insecure`).
    pub trusted_host: bool,
}

impl std::fmt::Debug for PipIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipIndex")
            .field("url", &crate::checkout::redact_url(&self.url))
            .field("trusted_host", &self.trusted_host)
            .finish()
    }
}

impl PipIndex {
    /// The credentials this index URL carries, for masking in output and errors: the whole
    /// URL, its user-info, and the password (or token) both as written in the URL
    /// (percent-encoded) and decoded — pip prints either. Empty without credentials.
    pub fn secret_values(&self) -> Vec<String> {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let Some((userinfo, _)) = authority.rsplit_once('@') else {
            return Vec::new();
        };
        let mut out = vec![self.url.clone(), userinfo.to_owned()];
        if let Some((_, password)) = userinfo.split_once(':') {
            out.push(password.to_owned());
            out.push(percent_decode(password));
        }
        out.retain(|s| !s.is_empty());
        out.sort();
        out.dedup();
        out
    }

    fn host(&self) -> Option<String> {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host_port.split(':').next()?;
        (!host.is_empty()).then(|| host.to_owned())
    }
}

/// A ready venv.
#[derive(Debug, Clone)]
pub struct Venv {
    /// The cache key (hex sha256).
    pub key: String,
    /// The venv directory (canonical).
    pub path: PathBuf,
    /// Its interpreter.
    pub python: PathBuf,
    /// True when this call built it; false when it was reused.
    pub built: bool,
    /// How long this call took to build it (venv creation, pip, publication); `None` when it
    /// was reused.
    pub build_time: Option<Duration>,
    /// Pins the venv against the pruner while the run that was handed it holds this (see
    /// [`crate::venv_prune`]); the use was recorded when it was handed out.
    pub in_use: Option<crate::venv_prune::InUse>,
}

/// The venv cache of one node.
#[derive(Debug, Clone)]
pub struct VenvCache {
    root: PathBuf,
    opts: VenvOptions,
    // With a service user, venvs are built under it (pip runs the build backends and reads the
    // requirement files of service authors) and then handed back to the node, read-only for
    // every run.
    user: Option<crate::user::ServiceUser>,
    // Asking an interpreter for its version costs a process start on every run; the answer
    // is kept for the life of the cache (a python upgraded in place is seen after a restart).
    interpreters: std::sync::Arc<std::sync::Mutex<BTreeMap<PathBuf, Interpreter>>>,
}

/// What an interpreter says about itself.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// `sys.version`.
    pub version: String,
    /// `sys.executable`: the real binary behind shims such as pyenv's.
    pub executable: PathBuf,
}

/// Asks `python` for its version and real executable; failure means it is not a usable Python.
pub async fn interpreter(
    python: &Path,
    cancel: &CancellationToken,
) -> Result<Interpreter, ExecError> {
    interpreter_as(python, None, cancel).await
}

/// [`interpreter`], asked as `user`: the interpreter may be one a service named (its own
/// `PATH`, its executable), so it runs with no more rights than the service.
pub async fn interpreter_as(
    python: &Path,
    user: Option<&crate::user::ServiceUser>,
    cancel: &CancellationToken,
) -> Result<Interpreter, ExecError> {
    let mut spec = ProcessSpec::new(python, std::env::temp_dir());
    spec.user = user.cloned();
    spec.args = vec![
        "-c".into(),
        "import sys; print(sys.version.replace('\\n', ' ')); print(sys.executable)".into(),
    ];
    spec.timeout = Some(Duration::from_secs(60));
    let r = run_process(&spec, cancel).await?;
    let mut lines = r.stdout.lines();
    match (r.return_code, lines.next(), lines.next()) {
        (0, Some(v), Some(exe)) if !exe.trim().is_empty() => Ok(Interpreter {
            version: v.trim().to_owned(),
            executable: PathBuf::from(exe.trim()),
        }),
        _ => Err(ExecError::Venv {
            reason: format!(
                "{} is not a usable python interpreter: {}",
                python.display(),
                r.stderr.trim()
            ),
        }),
    }
}

/// `%XX` sequences decoded (invalid ones kept as they are); non-UTF-8 results are lossy.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Hashes every regular file under `dir` (sorted relative paths, contents), skipping `.git`.
fn hash_tree(dir: &Path, base: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let ft = e.file_type()?;
        let p = e.path();
        if e.file_name() == ".git" {
            continue;
        }
        let rel = p
            .strip_prefix(base)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if ft.is_dir() {
            hash_tree(&p, base, h)?;
        } else if ft.is_file() {
            h.update(rel.as_bytes());
            h.update([0]);
            h.update(std::fs::read(&p)?);
            h.update([0]);
        } else if ft.is_symlink() {
            h.update(rel.as_bytes());
            h.update(b"\0->");
            h.update(std::fs::read_link(&p)?.to_string_lossy().as_bytes());
            h.update([0]);
        }
    }
    Ok(())
}

impl VenvCache {
    /// A cache under `root` (normally `<work_dir>/venvs`).
    pub fn new(root: impl Into<PathBuf>, opts: VenvOptions) -> Self {
        Self {
            root: root.into(),
            opts,
            user: None,
            interpreters: Default::default(),
        }
    }

    /// Builds venvs as `user` (see [`crate::user`]) and keeps them readable by it.
    pub fn with_user(mut self, user: Option<crate::user::ServiceUser>) -> Self {
        self.user = user;
        self
    }

    /// [`interpreter`], remembered per path.
    pub async fn interpreter(
        &self,
        python: &Path,
        cancel: &CancellationToken,
    ) -> Result<Interpreter, ExecError> {
        if let Some(i) = self
            .interpreters
            .lock()
            .ok()
            .and_then(|m| m.get(python).cloned())
        {
            return Ok(i);
        }
        let i = interpreter_as(python, self.user.as_ref(), cancel).await?;
        if let Ok(mut m) = self.interpreters.lock() {
            m.insert(python.to_owned(), i.clone());
        }
        Ok(i)
    }

    /// The cache key for `requirements` (a `requirements*.txt` or a `pyproject.toml`) under
    /// `interp`.
    pub fn key(interp: &Interpreter, requirements: &Path) -> Result<String, ExecError> {
        Self::key_with(interp, requirements, None)
    }

    /// [`key`](Self::key) for a venv built from `index` (another index may resolve the same
    /// requirements to other packages, so it is part of the key; its credentials are not).
    pub fn key_with(
        interp: &Interpreter,
        requirements: &Path,
        index: Option<&PipIndex>,
    ) -> Result<String, ExecError> {
        let io = |e| ExecError::io(format!("reading {}", requirements.display()), e);
        let mut h = Sha256::new();
        h.update(b"autogate-venv-v1\0");
        h.update(interp.version.as_bytes());
        h.update([0]);
        h.update(interp.executable.to_string_lossy().as_bytes());
        h.update([0]);
        if is_pyproject(requirements) {
            h.update(b"project\0");
            let dir = requirements.parent().unwrap_or(Path::new("."));
            hash_tree(dir, dir, &mut h).map_err(io)?;
        } else {
            h.update(b"requirements\0");
            h.update(std::fs::read(requirements).map_err(io)?);
        }
        if let Some(index) = index {
            h.update(b"\0index\0");
            h.update(crate::checkout::redact_url(&index.url).as_bytes());
            h.update([u8::from(index.trusted_host)]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Returns the venv for `requirements`, building it when absent.
    pub async fn ensure(
        &self,
        python: &Path,
        requirements: &Path,
        cancel: &CancellationToken,
    ) -> Result<Venv, ExecError> {
        self.ensure_with(python, requirements, None, cancel).await
    }

    /// [`ensure`](Self::ensure) with packages from `index` instead of pip's own configuration.
    /// The venv comes pinned against the pruner (keep it for as long as it is used).
    pub async fn ensure_with(
        &self,
        python: &Path,
        requirements: &Path,
        index: Option<&PipIndex>,
        cancel: &CancellationToken,
    ) -> Result<Venv, ExecError> {
        // The pruner may take an idle venv between its lookup and the pin; then look again
        // (which builds it). Twice in a row would need a retention shorter than a build.
        for _ in 0..3 {
            let mut v = self
                .ensure_unpinned(python, requirements, index, cancel)
                .await?;
            if let Some(pin) = crate::venv_prune::pin(&self.root, &v.key).await? {
                v.in_use = Some(pin);
                return Ok(v);
            }
        }
        Err(ExecError::Venv {
            reason: format!(
                "the venv of {} was pruned as soon as it was ready, three times: is [application] venv_retention_period shorter than a build?",
                requirements.display()
            ),
        })
    }

    async fn ensure_unpinned(
        &self,
        python: &Path,
        requirements: &Path,
        index: Option<&PipIndex>,
        cancel: &CancellationToken,
    ) -> Result<Venv, ExecError> {
        let interp = self.interpreter(python, cancel).await?;
        // With a pyproject.toml the key hashes the whole project tree: off the runtime threads.
        let key = {
            let (interp, requirements, index) =
                (interp.clone(), requirements.to_owned(), index.cloned());
            tokio::task::spawn_blocking(move || {
                Self::key_with(&interp, &requirements, index.as_ref())
            })
            .await
            .map_err(|e| ExecError::io("venv key task", std::io::Error::other(e.to_string())))??
        };
        let link = self.root.join(&key);
        if let Some(v) = ready(&key, &link) {
            return self.readable(v);
        }
        let store = self.root.join("store");
        std::fs::create_dir_all(&store)
            .map_err(|e| ExecError::io(format!("creating {}", store.display()), e))?;
        if self.user.is_some() {
            // Traversable, not listable: a run reaches the venv it is given, and finds no other.
            for d in [&self.root, &store] {
                crate::user::dir_with_mode(d, 0o711).map_err(|e| {
                    ExecError::io(format!("setting the mode of {}", d.display()), e)
                })?;
            }
        }
        let _lock = crate::checkout::lock_file(self.root.join(format!("{key}.lock"))).await?;
        // Someone else may have built it while we waited for the lock.
        if let Some(v) = ready(&key, &link) {
            return self.readable(v);
        }
        remove_leftovers(&store, &key);
        // From here on the run is silent for seconds to minutes: tell whoever shows progress.
        let started = std::time::Instant::now();
        crate::progress::report(crate::progress::Progress::EnvironmentBuildStarted {
            requirements: requirements.to_owned(),
        });
        let built = self
            .build_and_publish(&key, &link, &store, &interp, requirements, index, cancel)
            .await;
        let elapsed = started.elapsed();
        crate::progress::report(crate::progress::Progress::EnvironmentBuildFinished {
            elapsed,
            ok: built.is_ok(),
        });
        let mut v = built?;
        v.built = true;
        v.build_time = Some(elapsed);
        Ok(v)
    }

    /// Builds the venv of `key` in a new store directory and publishes it at `link`.
    #[allow(clippy::too_many_arguments)]
    async fn build_and_publish(
        &self,
        key: &str,
        link: &Path,
        store: &Path,
        interp: &Interpreter,
        requirements: &Path,
        index: Option<&PipIndex>,
        cancel: &CancellationToken,
    ) -> Result<Venv, ExecError> {
        let build = tempfile::Builder::new()
            .prefix(&format!("{key}-"))
            .tempdir_in(store)
            .map_err(|e| ExecError::io("creating the venv directory", e))?;
        if let Some(user) = &self.user {
            std::os::unix::fs::chown(build.path(), Some(user.uid()), Some(user.gid()))
                .map_err(|e| ExecError::io("giving the venv directory to the service user", e))?;
        }
        self.build(interp, build.path(), requirements, index, cancel)
            .await?;
        if self.user.is_some() {
            // Back to the node, read-only for runs: no run can change the venv the next run of
            // any service with the same requirements executes.
            let path = build.path().to_owned();
            tokio::task::spawn_blocking(move || crate::user::share_tree(&path))
                .await
                .map_err(|e| ExecError::io("venv task", std::io::Error::other(e.to_string())))?
                .map_err(|e| ExecError::io("making the venv read-only", e))?;
        }
        // Built: keep the directory (it is now the venv) and publish it.
        let dir = build.keep();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp_link = self.root.join(format!(".link-{name}"));
        let publish = std::os::unix::fs::symlink(Path::new("store").join(&name), &tmp_link)
            .and_then(|()| std::fs::rename(&tmp_link, link));
        if let Err(e) = publish {
            let _ = std::fs::remove_file(&tmp_link);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ExecError::io(
                format!("publishing venv {}", link.display()),
                e,
            ));
        }
        ready(key, link).ok_or_else(|| ExecError::Venv {
            reason: format!("venv {} vanished after it was built", link.display()),
        })
    }

    async fn build(
        &self,
        interp: &Interpreter,
        dir: &Path,
        requirements: &Path,
        index: Option<&PipIndex>,
        cancel: &CancellationToken,
    ) -> Result<(), ExecError> {
        let deadline = tokio::time::Instant::now() + self.opts.build_timeout;
        let remaining = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // A site behind a proxy reaches its package index through it (pip reads the variables).
        let mut env = crate::runner::proxy_env();
        env.insert("PIP_DISABLE_PIP_VERSION_CHECK".to_owned(), "1".to_owned());
        env.insert("PIP_NO_INPUT".to_owned(), "1".to_owned());

        if self.user.is_some() {
            // The node's HOME is not the service user's to write; a cache shared between
            // builds of different services' code is not wanted anyway.
            env.insert("PIP_NO_CACHE_DIR".to_owned(), "1".to_owned());
        }

        let mut spec = ProcessSpec::new(&interp.executable, dir);
        spec.user = self.user.clone();
        spec.args = vec!["-m".into(), "venv".into(), dir.into()];
        spec.env = env.clone();
        spec.timeout = Some(remaining());
        step("python -m venv", run_process(&spec, cancel).await?)?;

        let req_dir = requirements.parent().unwrap_or(Path::new(".")).to_owned();
        let mut spec = ProcessSpec::new(dir.join("bin/python"), &req_dir);
        spec.user = self.user.clone();
        spec.args = vec!["-m".into(), "pip".into(), "install".into()];
        spec.args.extend(self.opts.pip_args.iter().map(Into::into));
        if let Some(index) = index {
            // pip's output (and so the error built from it) may quote the URL or its password.
            spec.mask = index.secret_values();
            env.insert("PIP_INDEX_URL".to_owned(), index.url.clone());
            if index.trusted_host {
                if let Some(host) = index.host() {
                    env.insert("PIP_TRUSTED_HOST".to_owned(), host);
                }
            }
        }
        if is_pyproject(requirements) {
            spec.args.push(req_dir.clone().into());
        } else {
            // Relative paths inside the file resolve against the working directory: its own.
            spec.args.push("-r".into());
            spec.args.push(requirements.into());
        }
        spec.env = env;
        spec.timeout = Some(remaining());
        step("pip install", run_process(&spec, cancel).await?)
    }
}

impl VenvCache {
    /// A cached venv as runs under the service user need it: its root readable (one built
    /// before a service user was configured kept its build directory's 0700).
    fn readable(&self, v: Venv) -> Result<Venv, ExecError> {
        use std::os::unix::fs::PermissionsExt;
        if self.user.is_some() {
            std::fs::set_permissions(&v.path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| ExecError::io(format!("opening venv {}", v.path.display()), e))?;
        }
        Ok(v)
    }
}

fn step(what: &str, r: crate::RunResult) -> Result<(), ExecError> {
    if r.timed_out {
        return Err(ExecError::Venv {
            reason: format!("{what} timed out"),
        });
    }
    if r.return_code != 0 {
        let out = format!("{}\n{}", r.stdout.trim(), r.stderr.trim());
        return Err(ExecError::Venv {
            reason: format!(
                "{what} exited with {}: {}",
                r.return_code,
                tail(out.trim(), 2000)
            ),
        });
    }
    Ok(())
}

fn is_pyproject(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "pyproject.toml")
}

fn ready(key: &str, link: &Path) -> Option<Venv> {
    let path = link.canonicalize().ok()?;
    let python = path.join("bin/python");
    python.exists().then(|| Venv {
        key: key.to_owned(),
        path,
        python,
        built: false,
        build_time: None,
        in_use: None,
    })
}

/// Removes `store/<key>-*` directories: under the key's lock with no published link, they are
/// crashed builds.
fn remove_leftovers(store: &Path, key: &str) {
    let Ok(rd) = std::fs::read_dir(store) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{key}-"))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_credentials_are_secret_values() {
        let i = PipIndex {
            url: "https://bob:p%40ss%2Fw0rd@pypi.example.com/simple/".into(),
            trusted_host: false,
        };
        let v = i.secret_values();
        for want in [
            "p@ss/w0rd",
            "p%40ss%2Fw0rd",
            "bob:p%40ss%2Fw0rd",
            "https://bob:p%40ss%2Fw0rd@pypi.example.com/simple/",
        ] {
            assert!(v.contains(&want.to_owned()), "{want} in {v:?}");
        }
        let token = PipIndex {
            url: "https://__token__:tok-123@h/simple".into(),
            trusted_host: false,
        };
        assert!(token.secret_values().contains(&"tok-123".to_owned()));
        let plain = PipIndex {
            url: "https://pypi.org/simple".into(),
            trusted_host: false,
        };
        assert!(plain.secret_values().is_empty());
    }
}
