//! Loading certificates and keys from PEM files or text, and describing certificates.
//!
//! Errors name the file and say what is wrong with it (missing, not PEM, no certificate inside,
//! key does not match certificate), because these files are written by hand by operators and a
//! bare "bad certificate" sends them hunting.

use std::path::Path;

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::TlsError;

/// What [`cert_info`] tells about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the DER encoding, lower-case hex without separators (see [`fingerprint_sha256`]).
    pub fingerprint_sha256: String,
    /// The subject distinguished name as text, e.g. `CN=node-1`.
    pub subject: String,
    /// The issuer distinguished name as text.
    pub issuer: String,
    /// Start of the validity period.
    pub not_before: OffsetDateTime,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
    /// `true` when subject and issuer are the same name (a self-signed or root certificate).
    pub self_issued: bool,
}

/// SHA-256 of the certificate's DER bytes as lower-case hex, no colons: the form the manager
/// stores to pin certificates, independent of PEM formatting.
pub fn fingerprint_sha256(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Parses a certificate and returns its fingerprint, subject and validity.
pub fn cert_info(cert: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::BadPem {
            what: "certificate",
            reason: format!("not a valid X.509 certificate: {e}"),
        })?;
    let subject = parsed.subject().to_string();
    let issuer = parsed.issuer().to_string();
    Ok(CertInfo {
        fingerprint_sha256: fingerprint_sha256(cert),
        self_issued: parsed.subject().as_raw() == parsed.issuer().as_raw(),
        subject,
        issuer,
        not_before: parsed.validity().not_before.to_datetime(),
        not_after: parsed.validity().not_after.to_datetime(),
    })
}

/// All sections of a PEM text, or a reason why it is not PEM.
fn pem_sections(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if sections.is_empty() {
        let text = String::from_utf8_lossy(pem);
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err("the private key is encrypted; an unencrypted key is required".into());
        }
        return Err("not a PEM file (no -----BEGIN ...----- block found)".into());
    }
    Ok(sections)
}

fn certs_from_sections(
    sections: Vec<(SectionKind, Vec<u8>)>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = sections
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err("no certificate inside (expected a -----BEGIN CERTIFICATE----- block)".into());
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(format!("certificate #{} is not valid X.509: {e}", i + 1));
        }
    }
    Ok(certs)
}

fn key_from_sections(
    sections: Vec<(SectionKind, Vec<u8>)>,
) -> Result<PrivateKeyDer<'static>, String> {
    let mut keys = sections.into_iter().filter_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
        _ => None,
    });
    let key = keys.next().ok_or_else(|| {
        "no private key inside (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            .to_string()
    })?;
    if keys.next().is_some() {
        return Err("more than one private key inside".into());
    }
    // Parse with the provider now so a corrupt key is reported against its file.
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unusable private key: {e}"))?;
    Ok(key)
}

/// Parses every `CERTIFICATE` block of a PEM text (other blocks are ignored).
///
/// Fails when the text is not PEM or holds no valid certificate.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_sections(pem.as_bytes())
        .and_then(certs_from_sections)
        .map_err(|reason| TlsError::BadPem {
            what: "certificate",
            reason,
        })
}

/// Parses the one private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn parse_pem_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    pem_sections(pem.as_bytes())
        .and_then(key_from_sections)
        .map_err(|reason| TlsError::BadPem {
            what: "private key",
            reason,
        })
}

pub(crate) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TlsError::Missing {
                what,
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Loads every certificate of a PEM file (a chain: leaf first; or a bundle of roots).
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    let bytes = read_file(path, "certificate")?;
    pem_sections(&bytes)
        .and_then(certs_from_sections)
        .map_err(|reason| TlsError::bad_file(path, reason))
}

/// Loads the one private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.as_ref();
    let bytes = read_file(path, "private key")?;
    pem_sections(&bytes)
        .and_then(key_from_sections)
        .map_err(|reason| TlsError::bad_file(path, reason))
}

/// A certificate chain with its private key, as rustls wants them.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Loads a certificate chain and its key and checks that the key belongs to the first
/// certificate ([`TlsError::KeyMismatch`] names both files otherwise).
pub fn load_identity(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    if !key_matches(&certs, &key) {
        return Err(TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok((certs, key))
}

/// `true` when `key` is the private key of the first certificate of `certs`
/// (also `true` when the provider cannot tell, so exotic keys are not refused here).
pub fn key_matches(certs: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> bool {
    let provider = rustls::crypto::ring::default_provider();
    let Ok(signing_key) = provider.key_provider.load_private_key(key.clone_key()) else {
        return false;
    };
    let certified = rustls::sign::CertifiedKey::new(certs.to_vec(), signing_key);
    match certified.keys_match() {
        Ok(()) => true,
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => true,
        Err(_) => false,
    }
}
