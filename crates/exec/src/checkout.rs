//! Repository checkout with the `git` CLI, cached by resolved commit, and per-run workspaces.
//!
//! Layout under `<work_dir>/repos/<sha256(url)[..16]>/`: `mirror.git` (a bare repository
//! fetched on every run that names a branch, a tag or nothing — so a run sees the branch as it
//! is now, as the family's fresh clone would), `commits/<sha>/` (an extracted tree per commit,
//! written once, under the per-repository lock, to a temporary name then renamed), and `lock`.
//! A run that names a full commit id already extracted does no network access at all.
//!
//! Every run gets its own copy of the tree (a [`Workspace`]), removed when dropped, so that
//! what one run writes is never seen by another.
//!
//! Credentials never appear on a command line or in a log: an SSH key is written to a 0600
//! temporary file named in `GIT_SSH_COMMAND` and removed after; an HTTPS password reaches git
//! through a credential helper reading an environment variable of the git process only.
//!
//! A URL or a reference is a word git would read as an option if it started with `-`
//! (`--upload-pack=<command>` runs a command): both are refused ([`check_url`],
//! [`check_reference`]) and git always gets `--` (or `--end-of-options`) before them. Every git
//! process runs with `GIT_ALLOW_PROTOCOL` ([`GIT_ALLOW_PROTOCOL`]), so no URL reaches a transport
//! that runs a command (`ext::`) or reads a descriptor (`fd::`).
//!
//! SSH host keys are checked strictly ([`HostKeyPolicy`]): by default against the cluster's known
//! hosts, read when a checkout needs them and written to a 0600 file beside the cache for that
//! checkout only; an unknown or changed key fails the checkout with
//! [`ExecError::HostKeyRejected`], which names the command that adds the key.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;
use crate::runner::{run_process, ProcessSpec};

/// How long one git command may take before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The transports every git process may use (`GIT_ALLOW_PROTOCOL`). `ext::` is left out because
/// its "address" is a command line git runs, and `fd::` because it talks to inherited
/// descriptors: neither is a repository location, and a URL must never be a way to run code.
/// `file` keeps local repositories (and the tests' fixtures) working; `ssh` also covers the
/// scp-like `user@host:path` form.
pub const GIT_ALLOW_PROTOCOL: &str = "file:git:http:https:ssh";

/// The URL schemes [`check_url`] accepts (the rest are refused before git sees them).
const URL_SCHEMES: &[&str] = &["file", "git", "http", "https", "ssh", "git+ssh", "ssh+git"];

/// Checks a repository URL before it is stored or handed to git; `Err` says why it is refused.
///
/// Refused: an empty URL, whitespace or control characters, a leading `-` (git would read the
/// URL as an option: `--upload-pack=<command>` runs it), a `<transport>::<address>` remote-helper
/// URL (`ext::` runs a command), a scheme other than [`URL_SCHEMES`], and an SSH host starting
/// with `-` (ssh would read it as an option).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a git URL without spaces or control characters (file://, https://, ssh:// or user@host:path)".into());
    }
    if url.starts_with('-') {
        return Err(format!(
            "{:?} starts with '-', which git would read as an option",
            redact_url(url)
        ));
    }
    if let Some((transport, _)) = url.split_once("::") {
        if !transport.is_empty()
            && transport
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(format!(
                "the {transport}:: transport is not allowed (only {})",
                URL_SCHEMES.join(", ")
            ));
        }
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !URL_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            return Err(format!(
                "the {scheme}:// scheme is not allowed (only {})",
                URL_SCHEMES.join(", ")
            ));
        }
    }
    if let Some(h) = SshHost::of_url(url) {
        if h.host.is_empty() || h.host.starts_with('-') {
            return Err(format!(
                "{:?} is not an SSH host name (ssh would read a leading '-' as an option)",
                h.host
            ));
        }
    }
    Ok(())
}

/// Checks a branch, tag or commit name before it is handed to git; `Err` says why it is refused
/// (empty, whitespace or control characters, or a leading `-` git would read as an option).
pub fn check_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty()
        || reference.starts_with('-')
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{reference:?} is not a branch, tag or commit"));
    }
    Ok(())
}

/// The SSH server a repository URL reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port (22 unless the URL names another).
    pub port: u16,
}

impl SshHost {
    /// The SSH server of `ssh://`, `git+ssh://`, `ssh+git://` and scp-like `[user@]host:path`
    /// URLs; `None` for every other kind.
    pub fn of_url(url: &str) -> Option<SshHost> {
        if let Some((scheme, rest)) = url.split_once("://") {
            if !["ssh", "git+ssh", "ssh+git"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(scheme))
            {
                return None;
            }
            let authority = rest.split('/').next().unwrap_or_default();
            let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            return Some(Self::parse(hostport));
        }
        // scp-like: `[user@]host:path` or `[user@][host:port]:path`, a ':' before any '/'.
        if url.starts_with('/') || url.starts_with('.') {
            return None;
        }
        let after_user = match url.find('@') {
            Some(at) if !url[..at].contains([':', '/']) => &url[at + 1..],
            _ => url,
        };
        if let Some(rest) = after_user.strip_prefix('[') {
            let (inner, after) = rest.split_once(']')?;
            if !after.starts_with(':') {
                return None;
            }
            // `[host:port]`, or an IPv6 address (more than one ':').
            return Some(match inner.split_once(':') {
                Some((h, p)) if !p.contains(':') => SshHost {
                    host: h.to_owned(),
                    port: p.parse().unwrap_or(22),
                },
                _ => SshHost {
                    host: inner.to_owned(),
                    port: 22,
                },
            });
        }
        let colon = after_user.find(':')?;
        if after_user[..colon].contains('/') {
            return None;
        }
        Some(SshHost {
            host: after_user[..colon].to_owned(),
            port: 22,
        })
    }

    /// A URL authority's `host`, `host:port`, `[v6]` or `[v6]:port`.
    fn parse(hostport: &str) -> SshHost {
        if let Some(rest) = hostport.strip_prefix('[') {
            if let Some((h, after)) = rest.split_once(']') {
                let port = after
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(22);
                return SshHost {
                    host: h.to_owned(),
                    port,
                };
            }
        }
        match hostport.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() => SshHost {
                host: h.to_owned(),
                port: p.parse().unwrap_or(22),
            },
            _ => SshHost {
                host: hostport.to_owned(),
                port: 22,
            },
        }
    }

    /// Its name in a known_hosts file: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// How an operator names it on the command line (`autogate hostkeys add <this> …`):
    /// `host`, `host:port`, or `[v6]:port`.
    pub fn display_name(&self) -> String {
        match (self.port, self.host.contains(':')) {
            (22, _) => self.host.clone(),
            (p, false) => format!("{}:{p}", self.host),
            (p, true) => format!("[{}]:{p}", self.host),
        }
    }
}

/// A git repository to check out.
#[derive(Clone, Default)]
pub struct Repository {
    /// `file://`, `https://`, `ssh://` or scp-like `user@host:path` URL.
    pub url: String,
    /// Branch, tag or commit id; `None` = the remote's default branch.
    pub reference: Option<String>,
    /// Decrypted credentials, when the repository needs them.
    pub credentials: Option<GitCredentials>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &redact_url(&self.url))
            .field("reference", &self.reference)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Decrypted repository credentials (the caller decrypts the secrets).
#[derive(Clone)]
pub enum GitCredentials {
    /// An SSH private key (PEM/OpenSSH text).
    SshKey {
        /// The key itself.
        private_key: String,
    },
    /// HTTPS basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SshKey { .. } => f.write_str("SshKey(<redacted>)"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl GitCredentials {
    /// The secret values, for output masking.
    pub fn secret_values(&self) -> Vec<String> {
        match self {
            Self::SshKey { private_key } => vec![private_key.clone()],
            Self::Basic { password, .. } => vec![password.clone()],
        }
    }
}

/// Removes `user:password@` from a URL, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if let Some((_, host)) = authority.rsplit_once('@') {
            let sep = if rest.contains('/') { "/" } else { "" };
            return format!("{scheme}://{host}{sep}{path}");
        }
    }
    url.to_owned()
}

/// An extracted commit in the cache.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The full commit id the reference resolved to.
    pub commit: String,
    /// The cached tree (read-only by convention: runs get a [`Workspace`] copy).
    pub path: PathBuf,
    /// True when the tree was already in the cache.
    pub reused: bool,
}

/// A per-run copy of a checkout (or an empty directory), removed when dropped.
#[derive(Debug)]
pub struct Workspace {
    // Always `Some` until dropped; taken by `Drop` to remove the tree off the runtime threads.
    dir: Option<tempfile::TempDir>,
}

impl Workspace {
    /// The workspace root.
    pub fn path(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new(""),
        }
    }
}

impl Drop for Workspace {
    /// Removing a checkout's copy is a recursive delete: on a runtime thread it would stall every
    /// task on that thread, so it goes to the blocking pool when there is one.
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || drop(dir));
            }
            Err(_) => drop(dir),
        }
    }
}

/// Asks an SSH server for its host keys with `ssh-keyscan`; returns its standard output (known
/// hosts lines) and error, or why it could not run.
pub async fn keyscan(host: &SshHost, timeout: Duration) -> Result<crate::RunResult, String> {
    let path = crate::runner::minimal_env()
        .remove("PATH")
        .unwrap_or_default();
    let program = crate::which("ssh-keyscan", &path).ok_or_else(|| {
        format!("ssh-keyscan not found (looked in PATH: {path}); install openssh-client")
    })?;
    let mut spec = ProcessSpec::new(program, std::env::temp_dir());
    spec.args = vec![
        "-T".into(),
        timeout.as_secs().max(1).to_string().into(),
        "-p".into(),
        host.port.to_string().into(),
        // `--` keeps the host an operand even if it started with '-'.
        "--".into(),
        host.host.clone().into(),
    ];
    spec.timeout = Some(timeout * 3);
    spec.output_limit = 256 * 1024;
    run_process(&spec, &CancellationToken::new())
        .await
        .map_err(|e| e.to_string())
}

/// Where a checkout finds the known hosts of its cluster, read each time an SSH repository is
/// fetched so that a key added a moment ago counts.
pub trait KnownHostsSource: Send + Sync + std::fmt::Debug {
    /// The known_hosts lines (`<name> <keytype> <base64 key>`); `Err` says why they could not
    /// be read (the checkout then fails: no reading, no trust).
    fn known_hosts(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// How SSH host keys are checked. Every policy but [`HostKeyPolicy::AcceptAny`] runs ssh with
/// `StrictHostKeyChecking=yes` and ignores the machine's own known hosts files, so every node of
/// a cluster trusts the same keys.
#[derive(Debug, Clone, Default)]
pub enum HostKeyPolicy {
    /// No host is known: every SSH repository is refused (the default until a source is set).
    #[default]
    NoneKnown,
    /// The cluster's known hosts, read at checkout time (what core nodes and runners use).
    Cluster(Arc<dyn KnownHostsSource>),
    /// Only hosts listed in this known_hosts file.
    KnownHosts(PathBuf),
    /// Accept any host key: no protection against a server impersonating the git server. Only
    /// ever set on an explicit, logged opt-out.
    AcceptAny,
}

/// What ssh is told about host keys for one checkout; holds the temporary known_hosts file.
enum HostKeyArgs {
    AcceptAny,
    Strict(Option<PathBuf>),
    StrictTemp(tempfile::NamedTempFile),
}

impl HostKeyArgs {
    fn ssh_options(&self) -> String {
        let strict = |file: &str| {
            format!(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={file} \
                 -o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no -o CheckHostIP=no"
            )
        };
        match self {
            HostKeyArgs::AcceptAny => {
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".to_owned()
            }
            HostKeyArgs::Strict(None) => strict("/dev/null"),
            HostKeyArgs::Strict(Some(p)) => strict(&shell_quote(&p.to_string_lossy())),
            HostKeyArgs::StrictTemp(f) => strict(&shell_quote(&f.path().to_string_lossy())),
        }
    }
}

/// The checkout cache of one node.
#[derive(Debug, Clone)]
pub struct CheckoutCache {
    root: PathBuf,
    // Looked up when needed: services without a repository must run on a node without git.
    git: Option<PathBuf>,
    ssh_program: String,
    host_keys: HostKeyPolicy,
}

impl CheckoutCache {
    /// A cache under `root` (normally `<work_dir>/repos`), using `git` found in `PATH`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let path = crate::runner::minimal_env()
            .remove("PATH")
            .unwrap_or_default();
        Self {
            root: root.into(),
            git: crate::which("git", &path),
            ssh_program: "ssh".into(),
            host_keys: HostKeyPolicy::default(),
        }
    }

    /// The ssh client git runs (default `ssh` from PATH).
    pub fn with_ssh_program(mut self, program: impl Into<String>) -> Self {
        self.ssh_program = program.into();
        self
    }

    /// How SSH host keys are checked.
    pub fn with_host_keys(mut self, policy: HostKeyPolicy) -> Self {
        self.host_keys = policy;
        self
    }

    /// The host-key arguments of one checkout: for an SSH repository under
    /// [`HostKeyPolicy::Cluster`], the cluster's known hosts in a fresh 0600 file under the
    /// cache root, removed when the checkout ends.
    async fn host_key_args(
        &self,
        repo: &Repository,
        is_ssh: bool,
    ) -> Result<HostKeyArgs, ExecError> {
        Ok(match &self.host_keys {
            HostKeyPolicy::AcceptAny => HostKeyArgs::AcceptAny,
            HostKeyPolicy::NoneKnown => HostKeyArgs::Strict(None),
            HostKeyPolicy::KnownHosts(p) => HostKeyArgs::Strict(Some(p.clone())),
            HostKeyPolicy::Cluster(_) if !is_ssh => HostKeyArgs::Strict(None),
            HostKeyPolicy::Cluster(source) => {
                use std::io::Write;
                let lines = source.known_hosts().await.map_err(|e| {
                    Self::fail(repo, format!("cannot read the cluster's known hosts: {e}"))
                })?;
                // NamedTempFile is created 0600 and removed on drop.
                let mut f = tempfile::Builder::new()
                    .prefix(".known_hosts-")
                    .tempfile_in(&self.root)
                    .map_err(|e| ExecError::io("writing the known hosts file", e))?;
                f.write_all(lines.as_bytes())
                    .and_then(|()| f.flush())
                    .map_err(|e| ExecError::io("writing the known hosts file", e))?;
                HostKeyArgs::StrictTemp(f)
            }
        })
    }

    /// A failed fetch: a host key ssh refused is its own error (the operator adds the key),
    /// anything else is git's message.
    fn fetch_fail(repo: &Repository, host: Option<&SshHost>, stderr: String) -> ExecError {
        if let Some(h) = host {
            if stderr.contains("Host key verification failed")
                || stderr.contains("host key is known for")
            {
                let (key_type, offered) = offered_key(&stderr);
                return ExecError::HostKeyRejected {
                    host: h.display_name(),
                    key_type,
                    offered,
                    changed: stderr.contains("HOST IDENTIFICATION HAS CHANGED"),
                };
            }
        }
        Self::fail(repo, stderr)
    }

    fn fail(repo: &Repository, reason: impl Into<String>) -> ExecError {
        ExecError::Checkout {
            repository: redact_url(&repo.url),
            reference: repo.reference.clone().unwrap_or_else(|| "HEAD".into()),
            reason: reason.into(),
        }
    }

    /// Resolves the reference and makes sure its tree is in the cache.
    pub async fn checkout(
        &self,
        repo: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Checkout, ExecError> {
        let Some(git_bin) = self.git.as_deref() else {
            let path = crate::runner::minimal_env()
                .remove("PATH")
                .unwrap_or_default();
            return Err(ExecError::BinaryNotFound {
                binary: "git".into(),
                path,
            });
        };
        // Checked here as well as when the repository is stored: a record written by an older
        // version, or straight into the store, must not reach git as an option either.
        check_url(&repo.url).map_err(|e| Self::fail(repo, format!("refused URL: {e}")))?;
        if let Some(r) = &repo.reference {
            check_reference(r).map_err(|e| Self::fail(repo, format!("refused reference: {e}")))?;
        }
        let ssh_host = SshHost::of_url(&repo.url);
        let key = hex::encode(Sha256::digest(repo.url.as_bytes()));
        let dir = self.root.join(&key[..16]);
        let commits = dir.join("commits");
        std::fs::create_dir_all(&commits)
            .map_err(|e| ExecError::io(format!("creating {}", commits.display()), e))?;
        let _lock = lock_file(dir.join("lock")).await?;

        // A full commit id already extracted needs no fetch.
        if let Some(r) = repo.reference.as_deref().filter(|r| is_full_sha(r)) {
            let p = commits.join(r.to_ascii_lowercase());
            if p.is_dir() {
                return Ok(Checkout {
                    commit: r.to_ascii_lowercase(),
                    path: p,
                    reused: true,
                });
            }
        }

        let mirror = dir.join("mirror.git");
        let host_keys = self.host_key_args(repo, ssh_host.is_some()).await?;
        let creds = CredentialEnv::new(
            repo.credentials.as_ref(),
            &self.root,
            &self.ssh_program,
            host_keys,
        )
        .map_err(|e| ExecError::io("writing the temporary ssh key", e))?;
        let git = GitRunner {
            git: git_bin,
            env: &creds.env,
            mask: &creds.mask,
            cancel,
        };
        if !mirror.join("HEAD").exists() {
            let m = mirror.to_string_lossy().into_owned();
            git.run(&dir, &["init", "--bare", "-q", &m])
                .await
                .map_err(|e| Self::fail(repo, e))?;
        }
        let gd = format!("--git-dir={}", mirror.display());
        git.run(
            &dir,
            &[
                &gd,
                "fetch",
                "-q",
                "--prune",
                "--force",
                "--",
                &repo.url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                "+HEAD:refs/autogate/remote-head",
            ],
        )
        .await
        .map_err(|e| Self::fetch_fail(repo, ssh_host.as_ref(), e))?;

        let commit = match repo.reference.as_deref() {
            None | Some("HEAD") => git.rev_parse(&dir, &gd, "refs/autogate/remote-head").await,
            Some(r) => {
                let mut found = None;
                for cand in [
                    format!("refs/heads/{r}"),
                    format!("refs/tags/{r}"),
                    r.to_owned(),
                ] {
                    if let Some(c) = git.rev_parse(&dir, &gd, &cand).await {
                        found = Some(c);
                        break;
                    }
                }
                if found.is_none() && r.len() >= 7 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
                    // A commit no branch or tag points at: ask for it by id.
                    if git
                        .run(&dir, &[&gd, "fetch", "-q", "--", &repo.url, r])
                        .await
                        .is_ok()
                    {
                        found = git.rev_parse(&dir, &gd, r).await;
                    }
                }
                found
            }
        }
        .ok_or_else(|| Self::fail(repo, "reference not found in the repository"))?;

        let target = commits.join(&commit);
        if target.is_dir() {
            return Ok(Checkout {
                commit,
                path: target,
                reused: true,
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix(".extract-")
            .tempdir_in(&commits)
            .map_err(|e| ExecError::io("creating an extraction directory", e))?;
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree)
            .map_err(|e| ExecError::io("creating an extraction directory", e))?;
        let mut env = creds.env.clone();
        // A private index: the mirror's own is never touched, so extraction needs no work tree.
        env.insert(
            "GIT_INDEX_FILE".into(),
            tmp.path().join("index").to_string_lossy().into_owned(),
        );
        let wt = format!("--work-tree={}", tree.display());
        let x = GitRunner {
            git: git_bin,
            env: &env,
            mask: &creds.mask,
            cancel,
        };
        x.run(&dir, &[&gd, &wt, "read-tree", &commit])
            .await
            .map_err(|e| Self::fail(repo, e))?;
        x.run(&dir, &[&gd, &wt, "checkout-index", "-a", "-f"])
            .await
            .map_err(|e| Self::fail(repo, e))?;
        std::fs::rename(&tree, &target)
            .map_err(|e| ExecError::io(format!("publishing {}", target.display()), e))?;
        Ok(Checkout {
            commit,
            path: target,
            reused: false,
        })
    }

    /// A fresh copy of `checkout` under `runs_dir`, removed when the [`Workspace`] is dropped.
    /// The copy walks the whole tree, so it runs on the blocking pool, not a runtime thread.
    pub async fn workspace(
        checkout: Option<&Checkout>,
        runs_dir: &Path,
    ) -> Result<Workspace, ExecError> {
        Self::workspace_for(checkout, runs_dir, None).await
    }

    /// [`workspace`](Self::workspace) owned by `user` (the whole copy, mode 0700 at its root),
    /// so that a run under that user can write it and no other run's user can enter it. Its
    /// name carries 128 random bits: `runs/` is traversable but not listable, so a run cannot
    /// find another's workspace by name either.
    pub async fn workspace_for(
        checkout: Option<&Checkout>,
        runs_dir: &Path,
        user: Option<&crate::user::ServiceUser>,
    ) -> Result<Workspace, ExecError> {
        let source = checkout.map(|c| c.path.clone());
        let runs_dir = runs_dir.to_owned();
        let user = user.cloned();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&runs_dir)
                .map_err(|e| ExecError::io(format!("creating {}", runs_dir.display()), e))?;
            let dir = tempfile::Builder::new()
                .prefix("run-")
                .rand_bytes(22)
                .tempdir_in(&runs_dir)
                .map_err(|e| ExecError::io("creating the run workspace", e))?;
            if let Some(source) = source {
                copy_tree(&source, dir.path())
                    .map_err(|e| ExecError::io("copying the checkout into the workspace", e))?;
            }
            if let Some(user) = &user {
                // Before the run starts nothing of the user's runs inside: the walk cannot be
                // raced into following a link it planted.
                user.own_tree(dir.path()).map_err(|e| {
                    ExecError::io(
                        format!("giving the run workspace to user {:?}", user.name()),
                        e,
                    )
                })?;
            }
            Ok(Workspace { dir: Some(dir) })
        })
        .await
        .map_err(|e| ExecError::io("workspace task", std::io::Error::other(e.to_string())))?
    }
}

/// The type (as known_hosts names it) and fingerprint of the key ssh says a server offered:
/// "No ED25519 host key is known for …" (unknown) or "The fingerprint for the ED25519 key sent
/// by the remote host is\nSHA256:…" (changed).
fn offered_key(stderr: &str) -> (Option<String>, Option<String>) {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    let ssh_name = words
        .windows(4)
        .find(|w| w[0] == "No" && w[2] == "host" && w[3] == "key")
        .or_else(|| {
            words
                .windows(4)
                .find(|w| w[0] == "for" && w[1] == "the" && w[3] == "key")
        })
        .map(|w| if w[0] == "No" { w[1] } else { w[2] });
    let key_type = ssh_name.and_then(|n| match n {
        "ED25519" => Some("ssh-ed25519"),
        "RSA" => Some("ssh-rsa"),
        "ECDSA" => Some("ecdsa-sha2-nistp256"),
        "ED25519-SK" => Some("sk-ssh-ed25519@openssh.com"),
        "ECDSA-SK" => Some("sk-ecdsa-sha2-nistp256@openssh.com"),
        _ => None,
    });
    let offered = words
        .iter()
        .find(|w| w.starts_with("SHA256:") && w.len() > 20)
        .map(|w| w.trim_end_matches('.').to_owned());
    (key_type.map(str::to_owned), offered)
}

fn is_full_sha(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Takes an exclusive `flock` on `path` without blocking the async runtime; held until the
/// returned file is dropped.
pub(crate) async fn lock_file(path: PathBuf) -> Result<std::fs::File, ExecError> {
    tokio::task::spawn_blocking(move || {
        use fs4::fs_std::FileExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ExecError::io(format!("opening lock {}", path.display()), e))?;
        f.lock_exclusive()
            .map_err(|e| ExecError::io(format!("locking {}", path.display()), e))?;
        Ok(f)
    })
    .await
    .map_err(|e| ExecError::io("lock task", std::io::Error::other(e.to_string())))?
}

/// Copies a tree, keeping symlinks as symlinks (never following them) and file modes.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Environment for git carrying credentials, and the temp key file it names.
struct CredentialEnv {
    env: BTreeMap<String, String>,
    mask: Vec<String>,
    _key: Option<tempfile::NamedTempFile>,
    _host_keys: HostKeyArgs,
}

impl CredentialEnv {
    fn new(
        creds: Option<&GitCredentials>,
        tmp_dir: &Path,
        ssh_program: &str,
        host_keys: HostKeyArgs,
    ) -> std::io::Result<Self> {
        let mut env = BTreeMap::new();
        env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
        env.insert("LC_ALL".into(), "C".into());
        env.insert("GIT_ALLOW_PROTOCOL".into(), GIT_ALLOW_PROTOCOL.into());
        let hk = host_keys.ssh_options();
        let mut key = None;
        let mut mask = Vec::new();
        let mut ssh = format!("{ssh_program} -o BatchMode=yes {hk}");
        match creds {
            None => {}
            Some(GitCredentials::SshKey { private_key }) => {
                use std::io::Write;
                // NamedTempFile is created 0600 and removed on drop.
                let mut f = tempfile::Builder::new()
                    .prefix(".key-")
                    .tempfile_in(tmp_dir)?;
                f.write_all(private_key.as_bytes())?;
                if !private_key.ends_with('\n') {
                    f.write_all(b"\n")?;
                }
                f.flush()?;
                ssh.push_str(&format!(
                    " -o IdentitiesOnly=yes -i {}",
                    shell_quote(&f.path().to_string_lossy())
                ));
                key = Some(f);
                mask.push(private_key.clone());
            }
            Some(GitCredentials::Basic { username, password }) => {
                // The helper text names variables only; the values live in git's environment.
                env.insert("GIT_CONFIG_COUNT".into(), "2".into());
                env.insert("GIT_CONFIG_KEY_0".into(), "credential.helper".into());
                env.insert("GIT_CONFIG_VALUE_0".into(), String::new());
                env.insert("GIT_CONFIG_KEY_1".into(), "credential.helper".into());
                env.insert(
                    "GIT_CONFIG_VALUE_1".into(),
                    "!f() { test \"$1\" = get || exit 0; echo \"username=$AUTOGATE_GIT_USERNAME\"; echo \"password=$AUTOGATE_GIT_PASSWORD\"; }; f".into(),
                );
                env.insert("AUTOGATE_GIT_USERNAME".into(), username.clone());
                env.insert("AUTOGATE_GIT_PASSWORD".into(), password.clone());
                mask.push(password.clone());
            }
        }
        env.insert("GIT_SSH_COMMAND".into(), ssh);
        Ok(Self {
            env,
            mask,
            _key: key,
            _host_keys: host_keys,
        })
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

struct GitRunner<'a> {
    git: &'a Path,
    env: &'a BTreeMap<String, String>,
    mask: &'a [String],
    cancel: &'a CancellationToken,
}

impl GitRunner<'_> {
    /// Runs git; `Err` carries git's (masked) stderr, or why it did not finish.
    async fn run(&self, cwd: &Path, args: &[&str]) -> Result<String, String> {
        let mut spec = ProcessSpec::new(self.git, cwd);
        spec.args = args.iter().map(Into::into).collect();
        // A site behind a proxy reaches http(s) remotes through it (git reads the variables).
        spec.env = crate::runner::proxy_env();
        spec.env.extend(self.env.clone());
        spec.mask = self.mask.to_vec();
        spec.timeout = Some(GIT_TIMEOUT);
        spec.output_limit = 1024 * 1024;
        match run_process(&spec, self.cancel).await {
            Ok(r) if r.timed_out => Err(format!(
                "git {} timed out",
                args.iter().find(|a| !a.starts_with('-')).unwrap_or(&"")
            )),
            Ok(r) if r.return_code == 0 => Ok(r.stdout),
            Ok(r) => Err(r.stderr.trim().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn rev_parse(&self, cwd: &Path, gd: &str, rev: &str) -> Option<String> {
        let spec = format!("{rev}^{{commit}}");
        self.run(
            cwd,
            &[gd, "rev-parse", "--verify", "-q", "--end-of-options", &spec],
        )
        .await
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| is_full_sha(s))
    }
}

/// Resolves `rel` (a service field such as `working_dir` or `filename`) inside `root`,
/// refusing absolute paths, `..` components, and symlinks resolving outside `root`.
/// Returns the canonical path; a missing target is [`ExecError::NotFound`].
pub fn resolve_inside(root: &Path, rel: &str, field: &str) -> Result<PathBuf, ExecError> {
    let outside = || ExecError::PathOutside {
        field: field.to_owned(),
        path: rel.to_owned(),
    };
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside());
    }
    let canon_root = root
        .canonicalize()
        .map_err(|e| ExecError::io(format!("resolving {}", root.display()), e))?;
    match root.join(p).canonicalize() {
        Ok(c) if c.starts_with(&canon_root) => Ok(c),
        Ok(_) => Err(outside()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ExecError::NotFound {
            field: field.to_owned(),
            path: rel.to_owned(),
        }),
        Err(e) => Err(ExecError::io(format!("resolving {field} {rel:?}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_redaction() {
        assert_eq!(redact_url("https://u:p@host/x.git"), "https://host/x.git");
        assert_eq!(redact_url("ssh://git@host:22/x"), "ssh://host:22/x");
        assert_eq!(redact_url("git@host:x.git"), "git@host:x.git");
        assert_eq!(redact_url("file:///tmp/x"), "file:///tmp/x");
    }

    #[test]
    fn urls_git_would_read_as_options_or_commands_are_refused() {
        for bad in [
            "--upload-pack=touch${IFS}/tmp/pwned;",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "git@-oProxyCommand=x:repo.git",
            "ssh://-oProxyCommand=x/repo.git",
            "ftp://example.com/r.git",
            "https://example.com/r\n.git",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "file:///srv/r.git",
            "https://user:pw@git.example.com/r.git",
            "ssh://git@git.example.com:2222/r.git",
            "ssh://git@[::1]:2222/r.git",
            "git@git.example.com:team/r.git",
            "/srv/r.git",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good:?}");
        }
        assert!(check_reference("--output=/tmp/x").is_err());
        assert!(check_reference("main").is_ok());
    }

    #[test]
    fn the_offered_key_is_read_from_ssh_messages() {
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\nfatal: Could not read from remote repository.";
        assert_eq!(offered_key(unknown), (Some("ssh-ed25519".into()), None));
        let changed = "@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\nThe fingerprint for the ED25519 key sent by the remote host is\nSHA256:pcb5lK7kdvuDOcUnSfQSkuqqAxdHtvCmC0gUlMvqQpc.\r\nHost key verification failed.";
        assert_eq!(
            offered_key(changed),
            (
                Some("ssh-ed25519".into()),
                Some("SHA256:pcb5lK7kdvuDOcUnSfQSkuqqAxdHtvCmC0gUlMvqQpc".into())
            )
        );
    }

    #[test]
    fn ssh_hosts_of_urls() {
        let h = |u: &str| SshHost::of_url(u).map(|h| (h.known_hosts_name(), h.display_name()));
        assert_eq!(
            h("ssh://git@git.example.com/r.git"),
            Some(("git.example.com".into(), "git.example.com".into()))
        );
        assert_eq!(
            h("ssh://git@127.0.0.1:2222/srv/r.git"),
            Some(("[127.0.0.1]:2222".into(), "127.0.0.1:2222".into()))
        );
        assert_eq!(
            h("ssh://[::1]:2222/r"),
            Some(("[::1]:2222".into(), "[::1]:2222".into()))
        );
        assert_eq!(
            h("git@host.example:team/r.git"),
            Some(("host.example".into(), "host.example".into()))
        );
        assert_eq!(
            h("git@[host.example:2200]:r.git"),
            Some(("[host.example]:2200".into(), "host.example:2200".into()))
        );
        assert_eq!(h("https://host.example/r.git"), None);
        assert_eq!(h("file:///srv/r.git"), None);
        assert_eq!(h("/srv/r.git"), None);
    }

    #[tokio::test]
    async fn https_password_reaches_git_through_the_helper_only() {
        let dir = tempfile::tempdir().unwrap();
        let creds = GitCredentials::Basic {
            username: "bob".into(),
            password: "pa55-w0rd".into(),
        };
        let ce =
            CredentialEnv::new(Some(&creds), dir.path(), "ssh", HostKeyArgs::Strict(None)).unwrap();
        for (k, v) in &ce.env {
            if k != "AUTOGATE_GIT_PASSWORD" {
                assert!(!v.contains("pa55-w0rd"), "{k} carries the password");
            }
        }
        let mut spec = ProcessSpec::new("/bin/sh", dir.path());
        spec.args = vec![
            "-c".into(),
            "printf 'protocol=https\\nhost=example.invalid\\n\\n' | git credential fill".into(),
        ];
        spec.env = ce.env.clone();
        let r = run_process(&spec, &CancellationToken::new()).await.unwrap();
        assert_eq!(r.return_code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("username=bob\n") && r.stdout.contains("password=pa55-w0rd\n"),
            "{}",
            r.stdout
        );
    }
}
