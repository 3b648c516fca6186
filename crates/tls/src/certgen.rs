//! The logic of `autogate cert-gen`: mint a CA or a CA-signed certificate into a directory.
//!
//! Kinds: `ca`, `server`, `client`, `node` (a core node: server and client authentication) and
//! `runner` (the family's name for a runner's pair: the same uses as `node`, named `runner` by
//! default; a runner presents it to an etcd that asks for client certificates). The subject
//! beyond the common name and the key type come in [`CertGenOptions`].
//!
//! Files are created with `create_new` so an existing certificate is never overwritten (an
//! operator re-running the command must not silently invalidate every certificate signed by an
//! old CA), and private keys get mode 0600 from the moment they exist.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::TlsError;
use crate::load::read_file;
use crate::mint::{Ca, CertKind, KeyType, Subject, Validity};

/// File name of the CA certificate written by `cert-gen ca`.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key written by `cert-gen ca`.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Common name of a CA when none is given.
pub const DEFAULT_CA_COMMON_NAME: &str = "autogate CA";

/// What `cert-gen` can set beyond name, SANs and days.
#[derive(Debug, Clone, Default)]
pub struct CertGenOptions {
    pub subject: Subject,
    pub key_type: KeyType,
}

/// Mints a certificate of `kind` (`ca`, `server`, `client`, `node` or `runner`) into `output`.
///
/// - `ca` writes `ca.pem` and `ca-key.pem` (common name defaults to
///   [`DEFAULT_CA_COMMON_NAME`]);
/// - the other kinds load the CA from `ca_dir` (default: `output`) and write `<name>.pem` and
///   `<name>-key.pem`, where `name` is the common name, or the kind when none is given.
///
/// `output` is created when missing. Keys are written with mode 0600. Nothing is written when
/// any target file already exists ([`TlsError::AlreadyExists`] names it); if writing the key
/// fails after the certificate was written, the certificate is removed again. Returns the paths
/// written, certificate first.
pub fn cert_gen(
    kind: &str,
    output: &Path,
    common_name: Option<&str>,
    sans: &[String],
    days: u32,
    ca_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, TlsError> {
    cert_gen_with(
        kind,
        output,
        common_name,
        sans,
        days,
        ca_dir,
        &CertGenOptions::default(),
    )
}

/// [`cert_gen`] with a fuller subject and another key type.
pub fn cert_gen_with(
    kind: &str,
    output: &Path,
    common_name: Option<&str>,
    sans: &[String],
    days: u32,
    ca_dir: Option<&Path>,
    options: &CertGenOptions,
) -> Result<Vec<PathBuf>, TlsError> {
    // A runner's pair is a node's pair under its own name.
    let (kind, default_name): (CertKind, &str) = if kind.trim().eq_ignore_ascii_case("runner") {
        (CertKind::Node, "runner")
    } else {
        let k: CertKind = kind.parse().map_err(|_| {
            TlsError::InvalidArgument(format!(
                "unknown certificate kind `{kind}` (expected one of: ca, server, client, node, runner)"
            ))
        })?;
        (k, k.as_str())
    };
    if days == 0 {
        return Err(TlsError::InvalidArgument(
            "--days must be at least 1".into(),
        ));
    }
    let common_name = common_name.map(str::trim).filter(|s| !s.is_empty());
    let validity = Validity::days(days);

    let (issued_cert, issued_key, cert_path, key_path) = if kind == CertKind::Ca {
        let ca = Ca::generate_with(
            common_name.unwrap_or(DEFAULT_CA_COMMON_NAME),
            validity,
            &options.subject,
            options.key_type,
        )?;
        (
            ca.cert_pem().to_owned(),
            ca.key_pem().to_owned(),
            output.join(CA_CERT_FILE),
            output.join(CA_KEY_FILE),
        )
    } else {
        let name = common_name.unwrap_or(default_name);
        check_file_stem(name)?;
        let cert_path = output.join(format!("{name}.pem"));
        let key_path = output.join(format!("{name}-key.pem"));
        // Check the targets before touching the CA so the cheaper, likelier error comes first.
        refuse_existing(&[&cert_path, &key_path])?;
        let ca = load_ca(ca_dir.unwrap_or(output))?;
        let issued = ca.issue_with(
            kind,
            name,
            sans,
            validity,
            &options.subject,
            options.key_type,
        )?;
        (issued.cert_pem, issued.key_pem, cert_path, key_path)
    };

    refuse_existing(&[&cert_path, &key_path])?;
    std::fs::create_dir_all(output).map_err(|source| TlsError::Io {
        action: "create directory",
        path: output.to_path_buf(),
        source,
    })?;
    write_new(&cert_path, issued_cert.as_bytes(), 0o644)?;
    if let Err(e) = write_new(&key_path, issued_key.as_bytes(), 0o600) {
        // Do not leave a certificate whose key was never written.
        let _ = std::fs::remove_file(&cert_path);
        return Err(e);
    }
    Ok(vec![cert_path, key_path])
}

/// Loads the CA written by `cert-gen ca` from `dir`.
pub fn load_ca(dir: &Path) -> Result<Ca, TlsError> {
    let cert = dir.join(CA_CERT_FILE);
    let key = dir.join(CA_KEY_FILE);
    if !cert.exists() || !key.exists() {
        return Err(TlsError::CaMissing {
            dir: dir.to_path_buf(),
            cert,
            key,
        });
    }
    let cert_pem = read_text(&cert, "CA certificate")?;
    let key_pem = read_text(&key, "CA private key")?;
    Ca::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
        TlsError::BadPem { what, reason } => {
            let path = if what.contains("key") { &key } else { &cert };
            TlsError::bad_file(path, reason)
        }
        other => other,
    })
}

fn read_text(path: &Path, what: &'static str) -> Result<String, TlsError> {
    let bytes = read_file(path, what)?;
    String::from_utf8(bytes).map_err(|_| TlsError::bad_file(path, "not a PEM file (not text)"))
}

/// The name becomes part of a file name: keep it inside the output directory.
fn check_file_stem(name: &str) -> Result<(), TlsError> {
    let bad = name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control());
    if bad {
        return Err(TlsError::InvalidArgument(format!(
            "common name `{name}` cannot be used as a file name (no path separators, control \
             characters or leading dot)"
        )));
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> Result<(), TlsError> {
    for path in paths {
        // symlink_metadata: a dangling symlink is an existing file too.
        if path.symlink_metadata().is_ok() {
            return Err(TlsError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    write_new_file(path, contents, mode).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Writes a file that must not exist yet, with `mode` from the start (a key is never readable
/// by others, not even for an instant), synced to disk; a partly written file is removed.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    result
}
