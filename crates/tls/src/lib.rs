//! TLS in one place: certificate minting, loading PEM material, rustls configurations, the
//! verifiers the manager needs to pin certificates by fingerprint, and the accept loop of a TLS
//! port.
//!
//! Modules: `mint` (CA and certificates), `certgen` (the `cert-gen` command's files), `load`
//! (PEM, keys, fingerprints, certificate details), `config` (rustls client and server
//! configurations), `verify` (the verifiers behind [`ClientAuth`] and insecure clients),
//! `accept` ([`accept_loop`]: handshake timeout, connection caps in total and per client
//! address ([`ConnectionLimits`]), an [`AcceptHandler`] per port), `http1` ([`serve_http1`]:
//! one HTTP/1.1 connection with its header timeout and graceful stop), `error` ([`TlsError`]).
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
//! - [`accept_loop`] runs its tasks on the caller's task tracker and stops on its cancellation
//!   token; what a port does with a connection (or a failed handshake) is its handler's business.
#![forbid(unsafe_code)]

mod accept;
mod certgen;
mod config;
mod error;
mod http1;
mod load;
mod mint;
mod verify;

pub use accept::{
    accept_loop, accept_loop_with_limits, client_source, AcceptHandler, AcceptOptions, Accepted,
    ConnectionLimits, ConnectionSlot, HandshakeFailure, Refused,
};
pub use certgen::{
    cert_gen, cert_gen_with, load_ca, write_new_file, CertGenOptions, CA_CERT_FILE, CA_KEY_FILE,
    DEFAULT_CA_COMMON_NAME,
};
pub use config::{client_config, server_config, ClientAuth, Roots, ALPN_HTTP1};
pub use error::TlsError;
pub use http1::{serve_http1, Http1Limits};
pub use load::{
    cert_info, fingerprint_sha256, key_matches, load_certs, load_identity, load_key,
    parse_pem_certs, parse_pem_key, CertInfo, Identity,
};
pub use mint::{self_signed, Ca, CertKind, Issued, KeyType, Subject, Validity};

/// Re-exported so callers name the same types this crate returns.
pub use rustls;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};
