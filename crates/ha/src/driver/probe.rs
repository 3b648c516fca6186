//! Crash probing of the active node: a refused TCP connection to its API address proves nothing
//! listens there, and an answer of `GET /api/v1/health` names the node (`node_id`). The API is
//! plain HTTP or HTTPS; the protocol is a parameter of the one prober, and only the stream the
//! request goes over differs.
//!
//! Nothing but a refusal counts as a refusal: no answer in time, an answer that is not the
//! health document, or a failed TLS handshake (a certificate problem is not a dead process) all
//! count as a timeout, which proves nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::machine::ProbeResult;

/// How the active node's API is reached.
#[derive(Clone, Debug)]
pub enum ProbeProtocol {
    Http,
    /// HTTPS with this client configuration (trusting the cluster's CA).
    Tls(Arc<ClientConfig>),
}

/// Probes an active node's API address.
#[derive(Clone)]
pub struct Prober {
    /// Bounds the connection, then the exchange (handshake, request, response), each.
    pub timeout: Duration,
    /// `None` for plain HTTP.
    tls: Option<TlsConnector>,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Prober {
    /// Plain HTTP.
    fn default() -> Self {
        Prober::new(ProbeProtocol::Http)
    }
}

impl Prober {
    pub fn new(protocol: ProbeProtocol) -> Self {
        Prober {
            timeout: Duration::from_millis(800),
            tls: match protocol {
                ProbeProtocol::Http => None,
                ProbeProtocol::Tls(config) => Some(TlsConnector::from(config)),
            },
        }
    }

    /// One probe of `address` (`host:port`).
    pub async fn probe(&self, address: &str) -> ProbeResult {
        let connect = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address));
        let tcp = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return ProbeResult::Refused
            }
            _ => return ProbeResult::Timeout,
        };
        let exchange = async {
            match &self.tls {
                None => ask_health(tcp, address).await,
                Some(connector) => {
                    let name = ServerName::try_from(host_of(address).to_owned())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    ask_health(connector.connect(name, tcp).await?, address).await
                }
            }
        };
        let Ok(Ok(response)) = tokio::time::timeout(self.timeout, exchange).await else {
            return ProbeResult::Timeout;
        };
        health_node_id(&response).map_or(ProbeResult::Timeout, |node_id| ProbeResult::Answered {
            node_id,
        })
    }
}

/// Sends `GET /api/v1/health` over `stream` and returns what came back until the server closed.
async fn ask_health<S>(mut stream: S, address: &str) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A server may close without TLS close_notify (or reset after answering): what was read
    // still counts, and a cut answer fails to parse anyway.
    let _ = stream.read_to_end(&mut response).await;
    Ok(response)
}

/// The `node_id` of an HTTP response carrying the health document.
fn health_node_id(response: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    value.get("node_id")?.as_str().map(str::to_owned)
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::{health_node_id, host_of};

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:50051"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:443"), "node-1.example");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }

    #[test]
    fn only_a_health_document_names_a_node() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"node_id\":\"a_1\"}";
        assert_eq!(health_node_id(ok).as_deref(), Some("a_1"));
        let refused = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"node_id\":\"a_1\"}";
        assert_eq!(health_node_id(refused), None);
        assert_eq!(health_node_id(b"HTTP/1.1 200 OK\r\n\r\n{\"status\""), None);
        assert_eq!(health_node_id(b""), None);
    }
}
