//! Secrets at rest: the cluster key file and the sealed form of every secret value.
//!
//! The key file (`[secrets] encrypt_key_file`, identical on every node) holds arbitrary bytes;
//! trailing line breaks are ignored so `openssl rand -base64 256 > key` and a 64-hex-character key
//! both work. Each secret gets its own random 16-byte salt; PBKDF2-HMAC-SHA256 with
//! [`PBKDF2_ITERATIONS`] rounds turns key file + salt into an AES-256 key, and AES-256-GCM with a
//! random 12-byte nonce seals the value. The stored form is
//! `v2:` + base64(salt ‖ nonce ‖ ciphertext ‖ tag). The GCM tag makes a wrong key file and a damaged
//! value indistinguishable and both are refused, never decrypted into garbage.
//!
//! A `v2` value is bound to its secret's name: the name is the cipher's associated data, so a
//! value copied under another name (by whoever can write the store) fails to open instead of
//! handing one secret's plaintext to the services that use the other. `v1` values, sealed by
//! earlier versions without a name, still open; [`is_unbound`] finds them so the active node
//! seals them again as `v2` (`ResourceStore::reseal_unbound_secrets`).
//!
//! Nothing here ever puts key material or plaintext into an error message or a `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// PBKDF2 rounds per secret. 100 000 rounds of HMAC-SHA256 cost roughly 30–60 ms of one core in
/// an optimised build, paid once per encryption and once per decryption (each secret has its own
/// salt, so nothing can be cached across secrets). That is negligible for a run that injects a
/// handful of secrets, and makes brute-forcing a weak key file proportionally expensive.
pub const PBKDF2_ITERATIONS: u32 = 100_000;
/// Prefix of the current sealed format (bound to the secret's name).
pub const VERSION_PREFIX: &str = "v2:";
/// Prefix of the earlier format, not bound to a name: opened, and sealed again as `v2`.
pub const UNBOUND_PREFIX: &str = "v1:";
/// What the associated data of a `v2` value starts with, before the secret's name.
const AAD_CONTEXT: &[u8] = b"autogate secret\0";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why the key file cannot be used. Messages name the path, never the contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// No file at the configured path: create one (`openssl rand -base64 256`) or fix the path.
    #[error("secrets key file {path} does not exist")]
    Missing { path: PathBuf },
    /// The file exists but cannot be read (permissions, a directory, I/O error).
    #[error("secrets key file {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is empty (or only line breaks): it would protect nothing.
    #[error("secrets key file {path} is empty")]
    Empty { path: PathBuf },
}

/// Why a sealed secret value cannot be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Authentication failed: another cluster's key file, or the stored value was altered.
    #[error("wrong key file or corrupted secret {name}")]
    WrongKeyOrCorrupted { name: String },
    /// The stored value is not in a format this version understands.
    #[error("secret {name} is not a sealed value: {reason}")]
    Malformed { name: String, reason: String },
    /// The decrypted value is not UTF-8 text.
    #[error("secret {name} does not hold UTF-8 text")]
    NotText { name: String },
    /// The cipher refused to seal (cannot happen for values below 64 GiB).
    #[error("sealing a secret value failed")]
    Seal,
}

/// The cluster's secrets key file, loaded in memory (wiped on drop).
#[derive(Clone)]
pub struct KeyFile {
    material: Zeroizing<Vec<u8>>,
    origin: Option<PathBuf>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.origin)
            .field("material", &"<redacted>")
            .finish()
    }
}

impl KeyFile {
    /// Reads the key file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyFileError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                KeyFileError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let mut key = Self::from_bytes(bytes).map_err(|_| KeyFileError::Empty {
            path: path.to_path_buf(),
        })?;
        key.origin = Some(path.to_path_buf());
        Ok(key)
    }

    /// Key material given directly (tests, or a key from elsewhere). Trailing `\n`/`\r` are
    /// dropped; what remains must not be empty.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyFileError> {
        let mut bytes = Zeroizing::new(bytes.into());
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(KeyFileError::Empty {
                path: PathBuf::from("<in memory>"),
            });
        }
        Ok(Self {
            material: bytes,
            origin: None,
        })
    }

    /// Where the key was loaded from, if from a file.
    pub fn path(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    fn cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.material, salt, PBKDF2_ITERATIONS, &mut key);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
        key.zeroize();
        cipher
    }

    /// Seals `plaintext` as the value of the secret `name`, with a fresh salt and nonce; two
    /// calls never give the same output, and the value opens under `name` only.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<String, SecretError> {
        let salt: [u8; SALT_LEN] = rand::random();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = aad(name);
        let sealed = self
            .cipher(&salt)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Seal)?;
        let mut raw = Vec::with_capacity(SALT_LEN + NONCE_LEN + sealed.len());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    /// Opens the value of the secret `name` sealed by [`seal`](Self::seal) (or an unbound `v1`
    /// value of an earlier version). A value sealed under another name does not open.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let raw = decode_sealed(name, sealed)?;
        let (salt, rest) = raw.split_at(SALT_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = if is_unbound(sealed) {
            Vec::new()
        } else {
            aad(name)
        };
        self.cipher(salt)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::WrongKeyOrCorrupted {
                name: name.to_owned(),
            })
    }

    /// [`open`](Self::open) for text values.
    pub fn open_text(&self, name: &str, sealed: &str) -> Result<Zeroizing<String>, SecretError> {
        let bytes = self.open(name, sealed)?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => Ok(Zeroizing::new(text.to_owned())),
            Err(_) => Err(SecretError::NotText {
                name: name.to_owned(),
            }),
        }
    }
}

/// Checks the shape of a sealed value (prefix, base64, minimum length) without any key; used to
/// validate imported secrets before anything is written.
pub fn check_sealed(name: &str, sealed: &str) -> Result<(), SecretError> {
    decode_sealed(name, sealed).map(|_| ())
}

/// Whether `sealed` is a `v1` value of an earlier version, not bound to its secret's name.
pub fn is_unbound(sealed: &str) -> bool {
    sealed.starts_with(UNBOUND_PREFIX)
}

fn aad(name: &str) -> Vec<u8> {
    [AAD_CONTEXT, name.as_bytes()].concat()
}

fn decode_sealed(name: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
    let malformed = |reason: &str| SecretError::Malformed {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let body = sealed
        .strip_prefix(VERSION_PREFIX)
        .or_else(|| sealed.strip_prefix(UNBOUND_PREFIX))
        .ok_or_else(|| malformed("missing the \"v2:\" version prefix"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| malformed("not base64"))?;
    if raw.len() < SALT_LEN + NONCE_LEN + TAG_LEN {
        return Err(malformed("too short"));
    }
    Ok(raw)
}

/// A value sealed as earlier versions did (unbound, `v1:`), for the tests of what reads them.
#[cfg(test)]
pub(crate) fn seal_unbound(key: &KeyFile, plaintext: &[u8]) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = key
        .cipher(&salt)
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .unwrap_or_default();
    format!(
        "{UNBOUND_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode([&salt[..], &nonce[..], &ct].concat())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = KeyFile::from_bytes("correct horse battery staple\n").unwrap();
        let sealed = key.seal("db", b"s3cr3t-value").unwrap();
        assert!(sealed.starts_with("v2:"));
        assert_eq!(&*key.open_text("db", &sealed).unwrap(), "s3cr3t-value");
    }

    #[test]
    fn trailing_newline_is_ignored() {
        let a = KeyFile::from_bytes("k3y\n").unwrap();
        let b = KeyFile::from_bytes("k3y").unwrap();
        let sealed = a.seal("n", b"x").unwrap();
        assert_eq!(&*b.open_text("n", &sealed).unwrap(), "x");
    }

    #[test]
    fn wrong_key_fails_clearly() {
        let a = KeyFile::from_bytes("key-a").unwrap();
        let b = KeyFile::from_bytes("key-b").unwrap();
        let sealed = a.seal("db-password", b"value").unwrap();
        let err = b.open("db-password", &sealed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong key file or corrupted secret db-password"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let key = KeyFile::from_bytes("key").unwrap();
        let sealed = key.seal("s", b"value").unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed[3..])
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!(
            "v2:{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        assert!(matches!(
            key.open("s", &tampered),
            Err(SecretError::WrongKeyOrCorrupted { .. })
        ));
        assert!(matches!(
            key.open("s", "v3:abc"),
            Err(SecretError::Malformed { .. })
        ));
        assert!(matches!(
            key.open("s", "v1:!!"),
            Err(SecretError::Malformed { .. })
        ));
    }

    #[test]
    fn a_value_copied_under_another_name_does_not_open() {
        let key = KeyFile::from_bytes("key").unwrap();
        let sealed = key.seal("prod-db-password", b"the-prod-password").unwrap();
        assert_eq!(
            key.open("lab-db-password", &sealed),
            Err(SecretError::WrongKeyOrCorrupted {
                name: "lab-db-password".into()
            })
        );
        assert_eq!(
            &*key.open_text("prod-db-password", &sealed).unwrap(),
            "the-prod-password"
        );
    }

    #[test]
    fn an_unbound_value_of_an_earlier_version_still_opens() {
        let key = KeyFile::from_bytes("key").unwrap();
        // Sealed as earlier versions did: no associated data, `v1:`.
        let old = seal_unbound(&key, b"old");
        assert!(is_unbound(&old));
        assert_eq!(&*key.open_text("any-name", &old).unwrap(), "old");
        assert!(!is_unbound(&key.seal("n", b"new").unwrap()));
    }

    #[test]
    fn ciphertext_hides_plaintext_and_differs() {
        let key = KeyFile::from_bytes("key").unwrap();
        let plain = "PLAINTEXT-MARKER-123";
        let one = key.seal("s", plain.as_bytes()).unwrap();
        let two = key.seal("s", plain.as_bytes()).unwrap();
        assert_ne!(one, two);
        for sealed in [&one, &two] {
            assert!(!sealed.contains(plain));
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&sealed[3..])
                .unwrap();
            assert!(!raw.windows(plain.len()).any(|w| w == plain.as_bytes()));
        }
    }

    #[test]
    fn key_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let err = KeyFile::load(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Missing { .. }));
        assert!(err.to_string().contains("nope.key"));

        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "\n\n").unwrap();
        let err = KeyFile::load(&empty).unwrap_err();
        assert!(matches!(err, KeyFileError::Empty { .. }));
        assert!(err.to_string().contains("empty.key"));

        let err = KeyFile::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyFileError::Unreadable { .. }));

        let good = dir.path().join("good.key");
        std::fs::write(&good, "TOPSECRETKEYMATERIAL\n").unwrap();
        let key = KeyFile::load(&good).unwrap();
        assert!(!format!("{key:?}").contains("TOPSECRET"));
        assert_eq!(key.path(), Some(good.as_path()));
    }
}
