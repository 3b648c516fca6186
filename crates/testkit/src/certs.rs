//! A throw-away PKI for tests: one CA, a server certificate for `localhost`/`127.0.0.1` and client
//! certificates, written as PEM files into a temporary directory that disappears on drop.
//!
//! Kept self-contained (plain `rcgen`) so that TLS tests of other crates do not depend on the
//! production minting code they may be testing.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// CA, server and client certificates as PEM files. Paths stay valid while the value lives.
pub struct TestPki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    pub ca_cert: PathBuf,
    /// Valid for `localhost` and `127.0.0.1`, usable for server and client auth (etcd also dials
    /// itself with its server certificate).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate with common name `autogate-test-client`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

impl TestPki {
    /// Mints a fresh CA with one server and one client certificate.
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("autogate-pki-")
            .tempdir()
            .expect("cannot create temp dir for PKI");

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "autogate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(params, ca_key);
        let ca_cert = write(dir.path(), "ca.crt", &ca_pem);

        let (server_cert, server_key) = mint(
            dir.path(),
            &issuer,
            "server",
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = mint(
            dir.path(),
            &issuer,
            "client",
            "autogate-test-client",
            Vec::new(),
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        TestPki {
            dir,
            issuer,
            ca_pem,
            ca_cert,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Mints another client certificate with common name `name`; returns (certificate, key) paths.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let file = name.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_",
        );
        mint(
            self.dir.path(),
            &self.issuer,
            &file,
            name,
            Vec::new(),
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn mint(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    file: &str,
    common_name: &str,
    sans: Vec<String>,
    usages: &[ExtendedKeyUsagePurpose],
) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(sans).expect("certificate params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (
        write(dir, &format!("{file}.crt"), &cert.pem()),
        write(dir, &format!("{file}.key"), &key.serialize_pem()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_pem_files() {
        let pki = TestPki::new();
        for path in [&pki.ca_cert, &pki.server_cert, &pki.client_cert] {
            assert!(std::fs::read_to_string(path)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        assert!(std::fs::read_to_string(&pki.server_key)
            .unwrap()
            .contains("PRIVATE KEY"));
        let (cert, key) = pki.issue_client("node a/1");
        assert!(cert.ends_with("node_a_1.crt") && key.exists());
    }
}
