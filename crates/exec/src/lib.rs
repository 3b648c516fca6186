//! Service execution engine of autogate.
//!
//! Runs a service — a python script, an Ansible playbook, an OpenTofu plan or an executable —
//! from a git repository: validate the inputs against the decorator, check the repository out
//! (cached by commit), build or reuse a Python venv (cached by requirement set), run the
//! program in its own process group with a timeout, and return its output as a [`RunResult`].
//! The resource model, the operator API and the manager link call [`Engine::run`]; nothing here
//! knows about stores or users.
//!
//! Modules:
//! * [`checkout`] — git checkouts cached by commit, and per-run workspaces;
//! * [`venv`] — Python venvs cached by requirement set and interpreter;
//! * [`galaxy`] — a playbook's Galaxy collections and roles, cached by requirement set;
//! * [`venv_prune`] — deletes cached venvs unused for the retention period;
//! * [`inputs`] — decorator validation, `--set` coercion, inputs rendered as arguments or vars;
//! * [`progress`] — what a run reports while it works (an environment build), for front ends;
//! * [`runner`] — one program in its own process group, bounded capture, timeout, cancellation;
//! * [`user`] — the unprivileged OS user services run as, when one is configured;
//! * `engine` — one run from inputs to [`RunResult`]; `error` — [`ExecError`].
#![forbid(unsafe_code)]

pub mod checkout;
mod engine;
mod error;
pub mod galaxy;
pub mod inputs;
pub mod progress;
pub mod runner;
pub mod user;
pub mod venv;
pub mod venv_prune;

pub use checkout::{GitCredentials, HostKeyPolicy, KnownHostsSource, Repository};
pub use engine::{
    AnsibleOptions, Engine, EngineConfig, RunOptions, Secrets, Service, ServiceType, TofuAction,
    DEFAULT_REQUIREMENTS_FILE,
};
pub use error::ExecError;
pub use galaxy::GalaxyServer;
pub use inputs::{Decorator, Inputs, Violation};
pub use progress::{with_progress, Progress, ProgressHook};
pub use runner::{run_process, ProcessSpec, RunResult};
pub use user::{ServiceUser, ServiceUserError};
pub use venv::PipIndex;

use std::path::{Path, PathBuf};

/// Finds `name` in the `PATH`-style `search` list (or returns it when it already contains a
/// `/` and is executable). `None` when absent or not executable.
pub fn which(name: &str, search: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    search
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
}
