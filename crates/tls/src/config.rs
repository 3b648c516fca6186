//! rustls server and client configurations, always built on the `ring` provider.
//!
//! Building with `builder_with_provider(ring)` instead of relying on a process-wide default
//! provider means no other crate in the binary can change which crypto we use, and no code path
//! panics because nobody installed a default.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;
use crate::load::{load_certs, parse_pem_certs, Identity};
use crate::verify::{AnyPresentedVerifier, InsecureServerVerifier};

/// The ALPN protocol both sides offer: every HTTP and WebSocket endpoint of autogate is
/// HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How a server treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Do not ask for a client certificate.
    None,
    /// Ask for one; when presented it must chain to one of these roots; clients without a
    /// certificate are let through (the application sees no peer certificate).
    Optional(Vec<CertificateDer<'static>>),
    /// A certificate chaining to one of these roots is required.
    Required(Vec<CertificateDer<'static>>),
    /// Ask for a certificate and accept ANY well-formed one that is inside its validity period,
    /// self-signed or CA-signed; the handshake signature is still verified, so the peer proves it
    /// holds the key. The application authorises the peer (the manager pins SHA-256
    /// fingerprints per cluster).
    ///
    /// `mandatory: false` lets a client without certificate complete the handshake so the
    /// application can answer with a clear message ("no client certificate presented")
    /// instead of a bare TLS alert the operator cannot read; the manager uses `false`.
    /// `mandatory: true` refuses such clients during the handshake.
    AnyPresented {
        /// Whether a client without certificate fails the handshake.
        mandatory: bool,
    },
}

/// Where a client finds the certificate authorities it trusts.
#[derive(Debug, Clone)]
pub enum Roots {
    /// A PEM bundle file (one or more CA certificates).
    File(PathBuf),
    /// PEM text (one or more CA certificates).
    Pem(String),
    /// The operating system's trust store, read with `rustls-native-certs` (so it honours
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` and includes CAs the operator installed in the OS,
    /// like the product family's Go binaries do); it is an error when that store is empty.
    System,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(
    certs: Vec<CertificateDer<'static>>,
    source: &str,
) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (_added, ignored) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(TlsError::InvalidArgument(format!(
            "no usable CA certificate in {source}{}",
            if ignored > 0 {
                format!(" ({ignored} certificate(s) could not be used as trust anchors)")
            } else {
                String::new()
            }
        )));
    }
    Ok(store)
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Builds a server configuration presenting `cert_chain`/`key`, ALPN `http/1.1`.
///
/// Fails when the key does not match the certificate or when `client_auth` roots are unusable.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) | ClientAuth::Required(roots) if roots.is_empty() => {
            return Err(TlsError::InvalidArgument(
                "client certificate verification needs at least one CA certificate".into(),
            ));
        }
        ClientAuth::Optional(roots) => {
            let store = root_store(roots, "the client CA list")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                .allow_unauthenticated()
                .build()
                .map_err(config_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::Required(roots) => {
            let store = root_store(roots, "the client CA list")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(config_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::AnyPresented { mandatory } => {
            builder.with_client_cert_verifier(Arc::new(AnyPresentedVerifier::new(mandatory)))
        }
    };
    if cert_chain.is_empty() {
        return Err(TlsError::InvalidArgument(
            "the server certificate chain is empty".into(),
        ));
    }
    let mut config = builder
        .with_single_cert(cert_chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::InvalidArgument(
                "the server private key does not match its certificate".into(),
            ),
            other => config_err(other),
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client configuration: trust `roots`, present `identity` when given, ALPN
/// `http/1.1`.
///
/// `insecure: true` accepts any server certificate (no chain, host name or expiry check; the
/// handshake signature is still verified) and ignores `roots`. It logs nothing: the caller
/// warns the operator.
pub fn client_config(
    roots: Roots,
    identity: Option<Identity>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(InsecureServerVerifier::new()))
    } else {
        let store = match roots {
            Roots::File(path) => {
                let certs = load_certs(&path)?;
                root_store(certs, &path.display().to_string())?
            }
            Roots::Pem(pem) => root_store(parse_pem_certs(&pem)?, "the CA certificate text")?,
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    return Err(TlsError::InvalidArgument(format!(
                        "no CA certificate found in the system trust store{why}; install the \
                         ca-certificates package or configure a CA certificate file"
                    )));
                }
                root_store(found.certs, "the system trust store")?
            }
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(config_err)?;
        builder.with_webpki_verifier(verifier)
    };
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::InvalidArgument(
                    "the client private key does not match its certificate".into(),
                ),
                other => config_err(other),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}
