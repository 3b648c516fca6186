//! TLS in one place: certificate minting, loading PEM material, rustls configurations and the
//! verifiers the manager needs to pin certificates by fingerprint.
//!
//! Every rustls configuration built here uses the `ring` crypto provider explicitly (never a
//! process-wide default), so the binary behaves the same whatever other crates install.
//!
//! Choices callers should know:
//! - Minted keys are ECDSA P-256, written as unencrypted PKCS#8 PEM; loading also accepts
//!   PKCS#1 and SEC1 keys (a CA loaded with [`Ca::from_pem`] needs PKCS#8, a limit of rcgen with
//!   ring).
//! - [`ClientAuth::AnyPresented`] accepts any valid-in-time client certificate, self-signed or
//!   not, after checking the handshake signature; authorisation (fingerprint pinning) is the
//!   application's job, using `peer_certificates()` and [`fingerprint_sha256`].
//! - [`Roots::System`] reads the operating system's trust store through `rustls-native-certs`.
//! - Both sides offer ALPN `http/1.1` ([`ALPN_HTTP1`]).
//! - [`TlsError::is_usage`] tells operator mistakes (exit 64) from internal failures.
#![forbid(unsafe_code)]

mod certgen;
mod config;
mod error;
mod load;
mod mint;
mod verify;

pub use certgen::{
    cert_gen, load_ca, write_new_file, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_CA_COMMON_NAME,
};
pub use config::{client_config, server_config, ClientAuth, Roots, ALPN_HTTP1};
pub use error::TlsError;
pub use load::{
    cert_info, fingerprint_sha256, key_matches, load_certs, load_identity, load_key,
    parse_pem_certs, parse_pem_key, CertInfo, Identity,
};
pub use mint::{self_signed, Ca, CertKind, Issued, Validity};

/// Re-exported so callers name the same types this crate returns.
pub use rustls;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};
