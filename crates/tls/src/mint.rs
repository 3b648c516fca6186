//! Minting certificates: a small CA, leaf certificates it signs, and self-signed leaves.
//!
//! Every key is ECDSA P-256 and written as unencrypted PKCS#8 PEM ("PRIVATE KEY"): it is what
//! rcgen produces with the ring backend, every TLS stack accepts it, and it keeps handshakes cheap.
//! The same code serves `autogate cert-gen` and tests that need certificates (including already
//! expired ones, hence the explicit [`Validity`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::error::TlsError;
use crate::load::parse_pem_certs;

/// What a certificate is for; decides basic constraints, key usage and extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// A certificate authority (may sign other certificates, not usable as a TLS identity).
    Ca,
    /// A TLS server (EKU serverAuth), e.g. the manager's or a core node's API listener.
    Server,
    /// A TLS client (EKU clientAuth), e.g. an operator's client certificate.
    Client,
    /// A core node's key pair: EKU serverAuth **and** clientAuth, so one pair serves the node's
    /// API and its connection to the manager.
    Node,
}

impl CertKind {
    /// The name used on the command line and in file names (`ca`, `server`, `client`, `node`).
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Ca => "ca",
            CertKind::Server => "server",
            CertKind::Client => "client",
            CertKind::Node => "node",
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertKind {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ca" => Ok(CertKind::Ca),
            "server" => Ok(CertKind::Server),
            "client" => Ok(CertKind::Client),
            "node" => Ok(CertKind::Node),
            other => Err(TlsError::InvalidArgument(format!(
                "unknown certificate kind `{other}` (expected one of: ca, server, client, node)"
            ))),
        }
    }
}

/// The algorithm of a minted key. ECDSA P-256 unless asked (`cert-gen --key-type`): ring, the
/// crypto backend, generates no RSA keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyType {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Ed25519 => "ed25519",
        }
    }

    fn generate(self) -> Result<KeyPair, TlsError> {
        let alg = match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        };
        KeyPair::generate_for(alg).map_err(TlsError::mint)
    }
}

/// The subject's fields beyond the common name (`cert-gen --organization …`); empty ones are
/// left out of the certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    /// Two letters (ISO 3166), as X.509 requires.
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
}

impl Subject {
    fn fill(&self, dn: &mut DistinguishedName) -> Result<(), TlsError> {
        let fields = [
            (DnType::OrganizationName, &self.organization, "organization"),
            (
                DnType::OrganizationalUnitName,
                &self.organizational_unit,
                "organizational unit",
            ),
            (DnType::CountryName, &self.country, "country"),
            (DnType::StateOrProvinceName, &self.state, "state"),
            (DnType::LocalityName, &self.locality, "locality"),
        ];
        for (ty, value, what) in fields {
            let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
                continue;
            };
            if v.chars().any(char::is_control) || v.len() > 64 {
                // The value is the caller's: shown cut, so a huge one is not echoed whole.
                let shown: String = v.chars().take(64).collect();
                let cut = if shown.len() < v.len() { "…" } else { "" };
                return Err(TlsError::InvalidArgument(format!(
                    "subject {what} `{}{cut}`: at most 64 characters, no control characters",
                    shown.escape_debug()
                )));
            }
            if ty == DnType::CountryName
                && !(v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(TlsError::InvalidArgument(format!(
                    "subject country `{v}`: two letters (ISO 3166), e.g. US"
                )));
            }
            dn.push(ty, v);
        }
        Ok(())
    }
}

/// The validity window of a certificate being minted.
///
/// The fields are public so tests can build windows entirely in the past or in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// How far `not_before` is moved into the past, so a peer whose clock is a little behind
    /// does not reject a certificate minted a moment ago.
    pub const CLOCK_SKEW: Duration = Duration::minutes(5);

    /// The latest `not_after` X.509 can express (GeneralizedTime has four-digit years).
    pub const LATEST: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

    /// Valid from (now − [`Self::CLOCK_SKEW`]) for `n` days from now; an `n` reaching past
    /// [`Self::LATEST`] is capped there rather than overflowing.
    pub fn days(n: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        let not_after = now
            .checked_add(Duration::days(i64::from(n)))
            .filter(|t| *t <= Self::LATEST)
            .unwrap_or(Self::LATEST);
        Validity {
            not_before: now - Self::CLOCK_SKEW,
            not_after,
        }
    }

    /// A window that ended yesterday (started three days ago): for tests of expiry handling.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(3),
            not_after: now - Duration::days(1),
        }
    }

    /// A window that starts tomorrow: for tests of "not yet valid" handling.
    pub fn not_yet_valid() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(3),
        }
    }

    fn check(&self) -> Result<(), TlsError> {
        if self.not_after <= self.not_before {
            return Err(TlsError::InvalidArgument(format!(
                "certificate validity ends ({}) before it starts ({})",
                self.not_after, self.not_before
            )));
        }
        Ok(())
    }
}

/// A freshly minted certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, one `CERTIFICATE` PEM block.
    pub cert_pem: String,
    /// The private key, one PKCS#8 `PRIVATE KEY` PEM block.
    pub key_pem: String,
}

// The key is a secret: never print it, not even in a debug dump of a failing test.
impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// The certificate as DER, ready for rustls.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        first_cert(&self.cert_pem, "certificate")
    }

    /// The private key as DER, ready for rustls.
    pub fn key_der(&self) -> Result<rustls_pki_types::PrivateKeyDer<'static>, TlsError> {
        crate::load::parse_pem_key(&self.key_pem)
    }
}

/// A certificate authority able to issue leaf certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// Generates a new self-signed CA (path length unconstrained).
    pub fn generate(common_name: &str, validity: Validity) -> Result<Ca, TlsError> {
        Self::generate_with(
            common_name,
            validity,
            &Subject::default(),
            KeyType::default(),
        )
    }

    /// [`generate`](Self::generate) with more of a subject and another key type.
    pub fn generate_with(
        common_name: &str,
        validity: Validity,
        subject: &Subject,
        key_type: KeyType,
    ) -> Result<Ca, TlsError> {
        validity.check()?;
        let mut params = base_params(common_name, validity)?;
        subject.fill(&mut params.distinguished_name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = key_type.generate()?;
        let cert = params.self_signed(&key).map_err(TlsError::mint)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and PKCS#8 PEM key.
    ///
    /// Checks that the certificate is a CA and that the key belongs to it, so a mix-up is
    /// reported here and not as a confusing handshake failure later.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let cert_der = first_cert(cert_pem, "CA certificate")?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::BadPem {
                what: "CA certificate",
                reason: format!("not a valid X.509 certificate: {e}"),
            })?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(TlsError::BadPem {
                what: "CA certificate",
                reason: "the certificate is not a CA (basic constraints CA:TRUE missing)".into(),
            });
        }
        if key_pem.contains("ENCRYPTED PRIVATE KEY") {
            return Err(TlsError::BadPem {
                what: "CA private key",
                reason: "the key is encrypted; provide an unencrypted PKCS#8 key".into(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::BadPem {
            what: "CA private key",
            reason: format!(
                "{e} (an unencrypted PKCS#8 \"PRIVATE KEY\" is required; convert with \
                 `openssl pkcs8 -topk8 -nocrypt -in KEY`)"
            ),
        })?;
        if key.der_bytes() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(TlsError::BadPem {
                what: "CA private key",
                reason: "the key does not belong to the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(TlsError::mint)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate of `kind` signed by this CA.
    ///
    /// `sans`: entries that parse as IP addresses become IP SANs, the others DNS SANs. For
    /// [`CertKind::Server`] and [`CertKind::Node`] with no SAN, the common name is used as the
    /// only SAN when it is a valid host name or IP address, so `--cn localhost` just works.
    /// Issuing [`CertKind::Ca`] makes an intermediate CA.
    pub fn issue(
        &self,
        kind: CertKind,
        common_name: &str,
        sans: &[String],
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        self.issue_with(
            kind,
            common_name,
            sans,
            validity,
            &Subject::default(),
            KeyType::default(),
        )
    }

    /// [`issue`](Self::issue) with more of a subject and another key type.
    pub fn issue_with(
        &self,
        kind: CertKind,
        common_name: &str,
        sans: &[String],
        validity: Validity,
        subject: &Subject,
        key_type: KeyType,
    ) -> Result<Issued, TlsError> {
        let mut params = leaf_params(kind, common_name, sans, validity)?;
        subject.fill(&mut params.distinguished_name)?;
        let key = key_type.generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::mint)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Mints a self-signed certificate of `kind` (same SAN rules as [`Ca::issue`]).
///
/// Self-signed node certificates are what the manager pins by fingerprint when a cluster has no
/// CA of its own.
pub fn self_signed(
    kind: CertKind,
    common_name: &str,
    sans: &[String],
    validity: Validity,
) -> Result<Issued, TlsError> {
    let params = leaf_params(kind, common_name, sans, validity)?;
    let key = KeyPair::generate().map_err(TlsError::mint)?;
    let cert = params.self_signed(&key).map_err(TlsError::mint)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn first_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    parse_pem_certs(pem)
        .map_err(|e| match e {
            TlsError::BadPem { reason, .. } => TlsError::BadPem { what, reason },
            other => other,
        })?
        .into_iter()
        .next()
        .ok_or(TlsError::BadPem {
            what,
            reason: "no certificate inside".into(),
        })
}

fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams, TlsError> {
    let cn = common_name.trim();
    if cn.is_empty() {
        return Err(TlsError::InvalidArgument(
            "the certificate common name must not be empty".into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

fn leaf_params(
    kind: CertKind,
    common_name: &str,
    sans: &[String],
    validity: Validity,
) -> Result<CertificateParams, TlsError> {
    validity.check()?;
    let mut params = base_params(common_name, validity)?;
    let mut san_list = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<Vec<_>, _>>()?;
    if san_list.is_empty() && matches!(kind, CertKind::Server | CertKind::Node) {
        // A server certificate without SAN cannot be verified by any modern client; the common
        // name is the obvious candidate when it looks like a host.
        if let Ok(san) = parse_san(common_name) {
            san_list.push(san);
        }
    }
    params.subject_alt_names = san_list;
    params.use_authority_key_identifier_extension = kind != CertKind::Ca;
    match kind {
        CertKind::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        CertKind::Server | CertKind::Client | CertKind::Node => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = match kind {
                CertKind::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                CertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                _ => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            };
        }
    }
    Ok(params)
}

/// Parses one SAN: an IP address, otherwise a DNS name (wildcards allowed in the first label).
fn parse_san(raw: &str) -> Result<SanType, TlsError> {
    let s = raw.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        });
    if !valid {
        return Err(TlsError::InvalidArgument(format!(
            "invalid subject alternative name `{raw}`: expected a DNS name or an IP address"
        )));
    }
    let ia5 = s.to_owned().try_into().map_err(|e| {
        TlsError::InvalidArgument(format!("invalid subject alternative name `{raw}`: {e}"))
    })?;
    Ok(SanType::DnsName(ia5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::cert_info;

    #[test]
    fn a_huge_subject_value_is_refused_and_not_echoed_whole() {
        let subject = Subject {
            organization: Some("a".repeat(100_000)),
            ..Subject::default()
        };
        let e = subject
            .fill(&mut DistinguishedName::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("organization") && e.contains("at most 64"),
            "{e}"
        );
        assert!(e.len() < 200, "{} bytes", e.len());
    }

    #[test]
    fn ca_issues_node_certificates_with_both_ekus() {
        let ca = Ca::generate("autogate test CA", Validity::days(30)).unwrap();
        let node = ca
            .issue(
                CertKind::Node,
                "node-1",
                &["127.0.0.1".into(), "node-1.example".into()],
                Validity::days(10),
            )
            .unwrap();
        let der = node.cert_der().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 2);
        let info = cert_info(&der).unwrap();
        assert_eq!(info.subject, "CN=node-1");
        assert_eq!(info.issuer, "CN=autogate test CA");
        assert!(!info.self_issued);
        node.key_der().unwrap();
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate("round trip", Validity::days(1)).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = again
            .issue(CertKind::Server, "localhost", &[], Validity::days(1))
            .unwrap();
        let info = cert_info(&leaf.cert_der().unwrap()).unwrap();
        assert_eq!(info.issuer, "CN=round trip");
    }

    #[test]
    fn ca_from_pem_rejects_mismatched_key_and_non_ca() {
        let a = Ca::generate("a", Validity::days(1)).unwrap();
        let b = Ca::generate("b", Validity::days(1)).unwrap();
        let err = Ca::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let leaf = a
            .issue(CertKind::Client, "c", &[], Validity::days(1))
            .unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert!(Ca::from_pem("garbage", a.key_pem()).is_err());
    }

    #[test]
    fn expired_validity_is_kept() {
        let v = Validity::expired();
        let c = self_signed(CertKind::Client, "old", &[], v).unwrap();
        let info = cert_info(&c.cert_der().unwrap()).unwrap();
        assert!(info.not_after < OffsetDateTime::now_utc());
        assert!(info.self_issued);
        assert_eq!(
            info.not_after.unix_timestamp(),
            v.not_after.unix_timestamp()
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let err = self_signed(
            CertKind::Server,
            "x",
            &["bad name!".into()],
            Validity::days(1),
        )
        .unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("bad name!"));
        assert!(self_signed(CertKind::Server, " ", &[], Validity::days(1)).is_err());
        let backwards = Validity {
            not_before: OffsetDateTime::now_utc(),
            not_after: OffsetDateTime::now_utc() - Duration::days(1),
        };
        assert!(self_signed(CertKind::Server, "x", &[], backwards).is_err());
        assert!("bogus".parse::<CertKind>().is_err());
        assert_eq!("Node".parse::<CertKind>().unwrap(), CertKind::Node);
    }

    #[test]
    fn huge_validity_is_capped_not_a_panic() {
        let v = Validity::days(u32::MAX);
        assert_eq!(v.not_after, Validity::LATEST);
        let c = self_signed(CertKind::Node, "forever", &[], v).unwrap();
        let info = cert_info(&c.cert_der().unwrap()).unwrap();
        assert_eq!(info.not_after.year(), 9999);
    }

    #[test]
    fn server_without_sans_gets_its_common_name() {
        let c = self_signed(CertKind::Server, "localhost", &[], Validity::days(1)).unwrap();
        let der = c.cert_der().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 1);
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}
