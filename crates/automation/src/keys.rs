//! Where the cluster's secrets key comes from, and what to tell the operator when it cannot be
//! read. The key file is read at each use rather than once at start, so a node started before
//! the file was distributed works as soon as it is there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use autogate_resources::{KeyFile, KeyFileError};

use crate::error::AutomationError;

/// The secrets key of a node.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `[secrets] encrypt_key_file`.
    File(PathBuf),
    /// Local mode without a configured file: this file, created on first need.
    LocalDefault(PathBuf),
    /// No key file configured (server mode): secrets cannot be created or opened.
    Missing,
}

impl KeySource {
    /// Loads the key. `create` allows creating the local-mode default file (only when a secret
    /// is being created: a missing file at run time means the secrets were sealed elsewhere).
    pub fn load(&self, create: bool) -> Result<Arc<KeyFile>, AutomationError> {
        match self {
            KeySource::File(p) => read(p),
            KeySource::LocalDefault(p) => {
                if create && !p.exists() {
                    create_key_file(p)?;
                }
                read(p)
            }
            KeySource::Missing => Err(AutomationError::KeyMissing),
        }
    }
}

fn read(p: &Path) -> Result<Arc<KeyFile>, AutomationError> {
    KeyFile::load(p).map(Arc::new).map_err(|e: KeyFileError| {
        AutomationError::Key(format!(
            "secrets key file {} (GATEWAY_SECRETS_ENCRYPT_KEY_FILE): {e}",
            p.display()
        ))
    })
}

/// 32 random bytes as 64 hex characters (the family's deployment format), mode 0400.
fn create_key_file(p: &Path) -> Result<(), AutomationError> {
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let io = |e: std::io::Error| {
        AutomationError::Key(format!("cannot create key file {}: {e}", p.display()))
    };
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)
        .map_err(io)?;
    f.write_all(hex::encode(bytes).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    tracing::info!("created secrets key file {}", p.display());
    Ok(())
}
