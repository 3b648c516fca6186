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
            KeySource::File(p) => self.read(p),
            KeySource::LocalDefault(p) => {
                if create && !p.exists() {
                    create_key_file(p)?;
                }
                self.read(p)
            }
            KeySource::Missing => Err(AutomationError::KeyMissing),
        }
    }

    /// Loads the key that must open an import file's secrets. The file's secrets were sealed
    /// with the key file of the cluster that exported them, so a machine without a key file
    /// (a fresh one, typically) needs a copy of that file, never a new one.
    pub fn load_for_import(&self) -> Result<Arc<KeyFile>, AutomationError> {
        let path = match self {
            KeySource::File(p) | KeySource::LocalDefault(p) => p,
            KeySource::Missing => {
                return Err(AutomationError::Key(format!(
                    "{SEALED_ELSEWHERE}, and this node has no key file: copy that cluster's key \
                     file to every node of this one and set [secrets] encrypt_key_file \
                     ({KEY_VAR}) to it; nothing was imported"
                )))
            }
        };
        match KeyFile::load(path) {
            Ok(k) => Ok(Arc::new(k)),
            Err(KeyFileError::Missing { .. }) => {
                let (chosen_by, or_else) = match self {
                    KeySource::LocalDefault(_) => (
                        format!(
                            "the default, <working_dir>/secrets.key, as [secrets] \
                             encrypt_key_file ({KEY_VAR}) is unset"
                        ),
                        ", or set [secrets] encrypt_key_file to where you copied it",
                    ),
                    _ => (
                        format!(
                            "[secrets] encrypt_key_file ({KEY_VAR}); unset, local mode uses \
                             <working_dir>/secrets.key"
                        ),
                        "",
                    ),
                };
                Err(AutomationError::Key(format!(
                    "{SEALED_ELSEWHERE}, and there is no key file at {} ({chosen_by}): copy that \
                     cluster's key file there{or_else}; nothing was imported",
                    path.display()
                )))
            }
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// What [`load_for_import`](Self::load_for_import) says when a secret does not open with
    /// the key file it loaded.
    pub fn wrong_key_for_import(&self, secret: &str) -> AutomationError {
        let at = match self {
            KeySource::File(p) | KeySource::LocalDefault(p) => format!(" at {}", p.display()),
            KeySource::Missing => String::new(),
        };
        AutomationError::Key(format!(
            "secret {secret} does not open with the key file{at}: {SEALED_ELSEWHERE} (or the \
             value was altered); copy that cluster's key file here and point [secrets] \
             encrypt_key_file ({KEY_VAR}) at it; nothing was imported"
        ))
    }

    fn read(&self, p: &Path) -> Result<Arc<KeyFile>, AutomationError> {
        KeyFile::load(p)
            .map(Arc::new)
            .map_err(|e| self.read_error(e))
    }

    /// The key file's own error names its path; this says which setting chose it.
    fn read_error(&self, e: KeyFileError) -> AutomationError {
        let setting = match self {
            KeySource::LocalDefault(_) => {
                format!(
                    "the local-mode default, as [secrets] encrypt_key_file ({KEY_VAR}) is unset"
                )
            }
            _ => format!("[secrets] encrypt_key_file ({KEY_VAR})"),
        };
        AutomationError::Key(format!("{e} ({setting})"))
    }
}

const KEY_VAR: &str = "GATEWAY_SECRETS_ENCRYPT_KEY_FILE";

/// Why an import needs the exporting cluster's key file.
const SEALED_ELSEWHERE: &str =
    "the file's secrets are sealed with the key file of the cluster that exported it";

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
