//! The one error type of this crate.
//!
//! Variants are shaped by what the caller does with them rather than by which library failed:
//! problems with a file or an argument the operator gave are *usage* errors (the CLI exits 64
//! and names the file), everything else is a crypto/TLS failure the operator cannot fix by
//! editing a path. [`TlsError::is_usage`] tells the two apart.

use std::path::PathBuf;

/// Everything that can go wrong while minting, loading or configuring TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file that should exist does not.
    #[error("{what} file not found: {}", path.display())]
    Missing {
        /// What the file was supposed to hold ("certificate", "private key", "CA certificate").
        what: &'static str,
        /// The path that was tried.
        path: PathBuf,
    },
    /// Reading or writing a file failed for another reason (permissions, I/O).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// "read", "write", "create directory" …
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not PEM, or holds no item of the expected kind, or holds one that
    /// cannot be used (malformed DER, encrypted key, …).
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, in words an operator understands.
        reason: String,
    },
    /// PEM text handed over in memory (not from a file) is unusable.
    #[error("invalid {what}: {reason}")]
    BadPem {
        /// What the text should have been.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is valid but belongs to another certificate.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// `cert_gen` refuses to overwrite existing files.
    #[error("refusing to overwrite existing file {}", path.display())]
    AlreadyExists {
        /// The file that already exists.
        path: PathBuf,
    },
    /// `cert_gen` for a leaf certificate needs a CA that is not there.
    #[error(
        "CA certificate or key not found in {} (looked for {} and {}); run `autogate cert-gen ca --output DIR` first",
        dir.display(),
        cert.display(),
        key.display()
    )]
    CaMissing {
        /// The directory searched.
        dir: PathBuf,
        /// The CA certificate path tried.
        cert: PathBuf,
        /// The CA key path tried.
        key: PathBuf,
    },
    /// A bad argument: unknown certificate kind, invalid SAN, zero validity, empty name, …
    #[error("{0}")]
    InvalidArgument(String),
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Mint(String),
    /// rustls refused to build a configuration (for example an unsupported key type).
    #[error("TLS configuration error: {0}")]
    Config(String),
}

impl TlsError {
    /// `true` when the operator can fix the problem by changing a path, a file or an argument
    /// (the CLI maps these to exit code 64, like other configuration errors).
    pub fn is_usage(&self) -> bool {
        !matches!(self, TlsError::Mint(_) | TlsError::Config(_))
    }

    pub(crate) fn mint(err: impl std::fmt::Display) -> Self {
        TlsError::Mint(err.to_string())
    }

    pub(crate) fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        TlsError::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
