//! The operator API over TLS (`[server] use_tls`): the rustls configurations of the listener,
//! of the HA crash probe and of standby forwarding. The port itself (handshakes under a
//! timeout, connection caps) is `transport`'s, on the accept loop of `autogate-tls`.
//!
//! Client certificates: with `client_cert_auth = true` one chaining to `[application]
//! ca_certificate_file` is required; otherwise a presented one must chain to that CA when one
//! is configured, and none is asked for when none is. Nodes talk to each other (probe,
//! forwarding) verifying the peer's certificate against that CA (else the system's trust
//! store) and the host name or address it is reached at, and, when client certificates are
//! required, presenting their own server certificate.

use std::sync::Arc;

use autogate_config::Config;
use autogate_tls::rustls::{ClientConfig, ServerConfig};
use autogate_tls::{ClientAuth, Roots, TlsError};

fn ca_certs(
    config: &Config,
) -> Result<Option<Vec<autogate_tls::CertificateDer<'static>>>, TlsError> {
    config
        .application
        .ca_certificate_file
        .as_ref()
        .map(autogate_tls::load_certs)
        .transpose()
}

/// The listener's rustls configuration from `[server]` and `[application] ca_certificate_file`.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let s = &config.server;
    let (cert, key) = match (&s.certificate_file, &s.private_key_file) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(TlsError::InvalidArgument(
                "server.use_tls needs server.certificate_file and server.private_key_file".into(),
            ))
        }
    };
    let (chain, key) = autogate_tls::load_identity(cert, key)?;
    let client_auth = match (s.client_cert_auth, ca_certs(config)?) {
        (true, Some(roots)) => ClientAuth::Required(roots),
        (true, None) => {
            return Err(TlsError::InvalidArgument(
                "server.client_cert_auth needs application.ca_certificate_file to verify client certificates".into(),
            ))
        }
        (false, Some(roots)) => ClientAuth::Optional(roots),
        (false, None) => ClientAuth::None,
    };
    autogate_tls::server_config(chain, key, client_auth)
}

/// How this node reaches other core nodes' TLS API: trusting the configured CA (else the
/// system store) and, when the API requires client certificates, presenting its own.
pub fn peer_client_config(config: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let s = &config.server;
    let roots = match &config.application.ca_certificate_file {
        Some(p) => Roots::File(p.clone()),
        None => Roots::System,
    };
    let identity = match (s.client_cert_auth, &s.certificate_file, &s.private_key_file) {
        (true, Some(c), Some(k)) => Some(autogate_tls::load_identity(c, k)?),
        _ => None,
    };
    autogate_tls::client_config(roots, identity, false)
}
