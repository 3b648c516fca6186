//! Crash probing of an active node whose API is served over TLS: the same proof as
//! [`HttpProber`](crate::HttpProber) — a refused TCP connection proves nothing listens, an
//! answer of `GET /api/v1/health` names the node — with a TLS handshake in between.
//!
//! A failed handshake proves nothing (a certificate problem is not a dead process), so it
//! counts as a timeout, never as a refusal.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::driver::{health_node_id, Prober};
use crate::machine::ProbeResult;

/// Probes over TLS with `config` (trusting the cluster's CA).
#[derive(Clone)]
pub struct TlsProber {
    pub timeout: Duration,
    connector: TlsConnector,
}

impl fmt::Debug for TlsProber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProber")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TlsProber {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsProber {
            timeout: Duration::from_millis(800),
            connector: TlsConnector::from(config),
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Prober for TlsProber {
    fn probe<'a>(&'a self, address: &'a str) -> BoxFuture<'a, ProbeResult> {
        async move {
            let connect =
                tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address));
            let tcp = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return ProbeResult::Refused
                }
                _ => return ProbeResult::Timeout,
            };
            let Ok(name) = ServerName::try_from(host_of(address).to_owned()) else {
                return ProbeResult::Timeout;
            };
            let exchange = async {
                let mut stream = self.connector.connect(name, tcp).await?;
                let request = format!(
                    "GET /api/v1/health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await?;
                let mut body = Vec::new();
                // A server may close without TLS close_notify; what was read still counts.
                let _ = stream.read_to_end(&mut body).await;
                Ok::<_, std::io::Error>(body)
            };
            let Ok(Ok(response)) = tokio::time::timeout(self.timeout, exchange).await else {
                return ProbeResult::Timeout;
            };
            health_node_id(&response)
                .map_or(ProbeResult::Timeout, |node_id| ProbeResult::Answered { node_id })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:50051"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:443"), "node-1.example");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }
}
