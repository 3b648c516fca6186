//! First-start material of the manager: its TLS certificate and the admin token.
//!
//! - **Certificate**: `manager.certificate_file`/`private_key_file` when configured. Otherwise a
//!   self-signed server certificate (10 years, SANs `localhost`, `127.0.0.1`, `::1`, the host
//!   name and the listen address) is minted into `<data_dir>/manager.pem` and
//!   `<data_dir>/manager-key.pem` (mode 0600) on first start and reused afterwards; its path
//!   and SHA-256 fingerprint are logged so an operator can hand the certificate to gateways
//!   (`connect.ca_certificate_file`) or pin it.
//! - **Admin token**: `manager.admin_token_file` when set (it must exist); otherwise
//!   `<data_dir>/admin.token`, created with 32 random bytes (hex) and mode 0600 on first
//!   start. Only the path is ever logged.

use std::path::{Path, PathBuf};

use autogate_config::Config;
use autogate_tls::{CertKind, Identity, Validity};
use rand::RngCore;

use autogate_tls::write_new_file;

use crate::error::ManagerError;

/// File name of the minted manager certificate inside `data_dir`.
pub const CERT_FILE: &str = "manager.pem";
/// File name of its key.
pub const KEY_FILE: &str = "manager-key.pem";
/// File name of the generated admin token inside `data_dir`.
pub const TOKEN_FILE: &str = "admin.token";

/// Creates the data directory (mode 0700: it holds the admin token and the store).
pub fn ensure_data_dir(dir: &Path) -> Result<(), ManagerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| ManagerError::file("create directory", dir, e))
}

/// The manager's TLS identity: configured, or minted once into `data_dir`.
pub fn identity(config: &Config) -> Result<Identity, ManagerError> {
    let m = &config.manager;
    if let (Some(cert), Some(key)) = (&m.certificate_file, &m.private_key_file) {
        let id = autogate_tls::load_identity(cert, key)?;
        if let Some(first) = id.0.first() {
            tracing::info!(
                "manager certificate {} (SHA-256 {})",
                cert.display(),
                autogate_tls::fingerprint_sha256(first)
            );
        }
        return Ok(id);
    }
    let cert_path = m.data_dir.join(CERT_FILE);
    let key_path = m.data_dir.join(KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let host = autogate_runtime::hostname();
        for extra in [host, m.listen_address.clone()] {
            if usable_san(&extra) && !sans.contains(&extra) {
                sans.push(extra);
            }
        }
        let issued = autogate_tls::self_signed(
            CertKind::Server,
            "autogate manager",
            &sans,
            Validity::days(3650),
        )?;
        // Key first: a certificate without its key would be reused and fail at load.
        let _ = std::fs::remove_file(&key_path);
        let _ = std::fs::remove_file(&cert_path);
        write_new_file(&key_path, issued.key_pem.as_bytes(), 0o600)
            .map_err(|e| ManagerError::file("write", &key_path, e))?;
        write_new_file(&cert_path, issued.cert_pem.as_bytes(), 0o644)
            .map_err(|e| ManagerError::file("write", &cert_path, e))?;
        let fp = issued
            .cert_der()
            .map(|d| autogate_tls::fingerprint_sha256(&d))
            .unwrap_or_default();
        tracing::info!(
            "no manager certificate configured: created a self-signed one at {} (SHA-256 {fp}); give it to gateways as their CA certificate, or configure manager.certificate_file and manager.private_key_file",
            cert_path.display()
        );
    }
    let id = autogate_tls::load_identity(&cert_path, &key_path)?;
    if let Some(first) = id.0.first() {
        tracing::info!(
            "manager certificate {} (SHA-256 {})",
            cert_path.display(),
            autogate_tls::fingerprint_sha256(first)
        );
    }
    Ok(id)
}

/// Whether `s` can be a SAN of the minted certificate: an IP address other than the unspecified
/// one, or a DNS name.
fn usable_san(s: &str) -> bool {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return !ip.is_unspecified();
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Reads the admin token, creating `<data_dir>/admin.token` when no file is configured and
/// none exists yet. Returns the token and its path.
pub fn admin_token(config: &Config) -> Result<(String, PathBuf), ManagerError> {
    let path = config.manager.admin_token_path();
    let generated = config.manager.admin_token_file.is_none();
    if generated && !path.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        write_new_file(&path, format!("{token}\n").as_bytes(), 0o600)
            .map_err(|e| ManagerError::file("create", &path, e))?;
        tracing::info!(
            "created the admin token at {} (mode 0600); send it as `Authorization: Bearer <token>`",
            path.display()
        );
    }
    if !generated && !path.exists() {
        return Err(ManagerError::Usage(format!(
            "manager.admin_token_file {} does not exist",
            path.display()
        )));
    }
    let token = read_token(&path)?;
    tracing::info!("admin token file {}", path.display());
    Ok((token, path))
}

/// Reads a token file: the first line, trimmed; an empty file is an error.
pub fn read_token(path: &Path) -> Result<String, ManagerError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManagerError::file("read", path, e))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(ManagerError::file(
            "read",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the admin token file is empty",
            ),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_exclude_unspecified_and_odd_names() {
        assert!(usable_san("127.0.0.1"));
        assert!(usable_san("gw-1.example"));
        assert!(!usable_san("0.0.0.0"));
        assert!(!usable_san("::"));
        assert!(!usable_san("bad name"));
        assert!(!usable_san(""));
    }
}
