//! The one error type of the engine: every way a run can fail *to run*.
//!
//! A program that ran and exited non-zero, or that was killed by its timeout, is not an error:
//! it is a [`RunResult`](crate::RunResult). The variants are shaped by what the caller does
//! next: report the input violations back to whoever asked, fix the service definition, fix the
//! repository, install a binary, or retry later (I/O).

use std::path::PathBuf;

use crate::inputs::Violation;

/// Why a service could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The inputs do not satisfy the service's decorator; nothing was run. Every violation is
    /// listed, each with the JSON pointer of the offending input.
    #[error("invalid inputs: {}", Violation::join(.violations))]
    InvalidInputs {
        /// All violations, in the validator's order.
        violations: Vec<Violation>,
    },
    /// The decorator itself is not a usable JSON Schema.
    #[error("invalid decorator schema: {reason}")]
    InvalidDecorator {
        /// What the schema compiler said.
        reason: String,
    },
    /// The service definition cannot be run as written (missing filename, bad `--arg-format`, …).
    #[error("invalid service definition: {reason}")]
    InvalidService {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// Fetching or extracting the repository failed.
    #[error("checkout of repository {repository} (reference {reference}) failed: {reason}")]
    Checkout {
        /// The repository URL with any user-info removed.
        repository: String,
        /// The reference asked for (`HEAD` when none).
        reference: String,
        /// Git's own message, or ours.
        reason: String,
    },
    /// The SSH server of a repository offered a host key the cluster's known hosts do not hold
    /// (`changed`: they hold another key for that host). Nothing was fetched; the operator
    /// checks the key out of band and adds it.
    #[error("{}", host_key_message(.host, .key_type.as_deref(), .offered.as_deref(), *.changed))]
    HostKeyRejected {
        /// The host as `autogate hostkeys add` takes it (`host`, `host:port`).
        host: String,
        /// The type of the key the server offered, when ssh said it (`ssh-ed25519`, …).
        key_type: Option<String>,
        /// The fingerprint of the key the server offered, when ssh said it (`SHA256:…`).
        offered: Option<String>,
        /// True when another key is known for the host (a changed key, or an impersonator).
        changed: bool,
    },
    /// A binary the service type needs is not installed (or not executable).
    #[error("{binary} not found (looked in PATH: {path})")]
    BinaryNotFound {
        /// The binary's name as the service type knows it (`tofu`, `ansible-playbook`, `python3`).
        binary: String,
        /// The search path used, so the operator sees where it was looked for.
        path: String,
    },
    /// A path from the service definition leaves the checkout (`..`, absolute, or a symlink
    /// resolving outside).
    #[error("{field} {path:?} is outside the repository checkout")]
    PathOutside {
        /// Which service field carried it (`working_dir`, `filename`, …).
        field: String,
        /// The offending value, as given.
        path: String,
    },
    /// A file the service definition names does not exist in the checkout.
    #[error("{field} {path:?} does not exist in the repository checkout")]
    NotFound {
        /// Which service field carried it.
        field: String,
        /// The value, as given.
        path: String,
    },
    /// Building the Python virtual environment failed (pip's output tail included).
    #[error("building the python environment failed: {reason}")]
    Venv {
        /// The failing step and its output.
        reason: String,
    },
    /// Installing a playbook's Galaxy dependencies (`requirements.yml`) failed (the output tail
    /// of `ansible-galaxy` included).
    #[error("installing the playbook's Galaxy dependencies failed: {reason}")]
    Dependencies {
        /// The failing step and its output.
        reason: String,
    },
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program path.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configured service user cannot be used (or cannot reach the engine's directories):
    /// nothing runs until the operator fixes the setting, rather than running as the node.
    #[error("service user: {0}")]
    ServiceUser(#[from] crate::user::ServiceUserError),
    /// The caller cancelled the run; the process group was killed.
    #[error("run cancelled")]
    Cancelled,
    /// A local file-system operation of the engine failed (cache or workspace).
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn host_key_message(
    host: &str,
    key_type: Option<&str>,
    offered: Option<&str>,
    changed: bool,
) -> String {
    let ty = key_type.unwrap_or("<keytype>");
    let offered = match offered {
        Some(fp) => format!(" (the server offers {ty} key {fp})"),
        None => String::new(),
    };
    if changed {
        format!(
            "host key of {host} has changed{offered}: it does not match the cluster's known hosts \
             (the server may be impersonated); if the change is expected, replace it with \
             \"autogate hostkeys add {host} {ty} <key> --replace\" or \
             \"autogate hostkeys scan {host} --replace\""
        )
    } else {
        format!(
            "host key of {host} is not known{offered}: add it with \"autogate hostkeys add {host} {ty} <key>\" \
             or \"autogate hostkeys scan {host}\""
        )
    }
}

impl ExecError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
