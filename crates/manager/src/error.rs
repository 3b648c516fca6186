//! Errors of the manager daemon, shaped by what the caller does next: a usage problem exits 64
//! (bad certificate file, store held by another process), an unavailable dependency 69 (port
//! taken), anything else 1.

use autogate_store::StoreError;
use autogate_tls::TlsError;

/// Why the manager could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// `host:port`.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The manager's certificate or key is unusable.
    #[error("manager certificate: {0}")]
    Tls(#[from] TlsError),
    /// A file of the data directory could not be created or read.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// "create", "read", "write" …
        action: &'static str,
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A configuration value points at something unusable (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Stored data cannot be read back.
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// What to do about a port that cannot be bound, for the two reasons an operator meets.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there: stop it, or choose another port with manager.port / GATEWAY_MANAGER_PORT); nothing was created"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no interface of this host has that address: check manager.listen_address / GATEWAY_MANAGER_LISTEN_ADDRESS); nothing was created"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose another port with manager.port / GATEWAY_MANAGER_PORT); nothing was created"
        }
        _ => "",
    }
}

impl ManagerError {
    /// Process exit code (sysexits: 64 usage, 69 unavailable, 74 I/O, 1 other).
    pub fn exit_code(&self) -> i32 {
        match self {
            ManagerError::Store(StoreError::Config(_)) => 64,
            ManagerError::Store(StoreError::Unavailable(_)) => 69,
            ManagerError::Tls(e) if e.is_usage() => 64,
            ManagerError::Usage(_) => 64,
            ManagerError::Bind { .. } => 69,
            ManagerError::File { .. } => 74,
            _ => 1,
        }
    }

    pub(crate) fn file(
        action: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        ManagerError::File {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}
