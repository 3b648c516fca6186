//! Custom certificate verifiers: accept-any-presented client certificates (for pinning) and
//! the insecure server verifier behind `insecure_tls`.
//!
//! Both still verify the handshake signature with the ring provider's algorithms: that proves
//! the peer holds the private key of the certificate it presented, which is exactly what makes a
//! fingerprint pin meaningful. Only the chain-of-trust check is skipped.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn ring_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Checks that `cert` parses and that `now` lies inside its validity period.
///
/// Uses rustls' context-carrying errors so the log line says when the certificate expired,
/// not just "bad certificate".
pub(crate) fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let to_unix = |t: i64| {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(t).unwrap_or(0),
        ))
    };
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_secs < not_before {
        return Err(Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before: to_unix(not_before),
            },
        ));
    }
    if now_secs > not_after {
        return Err(Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after: to_unix(not_after),
            },
        ));
    }
    Ok(())
}

/// Requests a client certificate and accepts any well-formed, currently valid one, self-signed
/// or CA-signed. The application decides who the peer is (the manager pins SHA-256
/// fingerprints per cluster).
#[derive(Debug)]
pub(crate) struct AnyPresentedVerifier {
    pub(crate) mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyPresentedVerifier {
    pub(crate) fn new(mandatory: bool) -> Self {
        AnyPresentedVerifier {
            mandatory,
            algorithms: ring_algorithms(),
        }
    }
}

impl ClientCertVerifier for AnyPresentedVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    // No hints: an empty list tells the client to send whatever certificate it has.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_validity(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts any server certificate (no chain, name or validity check). Only for
/// `insecure_tls=true`; the caller is the one that warns about it.
#[derive(Debug)]
pub(crate) struct InsecureServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl InsecureServerVerifier {
    pub(crate) fn new() -> Self {
        InsecureServerVerifier {
            algorithms: ring_algorithms(),
        }
    }
}

impl ServerCertVerifier for InsecureServerVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
