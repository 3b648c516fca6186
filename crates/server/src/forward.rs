//! Writes on a standby core node: with HA on, only the active node writes to the cluster's
//! resources (its writes are fenced by its term) and runs services, so a standby hands each
//! write, run and login to the active node's API, with the caller's `Authorization` header,
//! and returns the active node's answer as it is. Reads stay local: every core node reads the
//! same shared store.
//!
//! The active node's address is the one it published in its node record (`ha.status()`
//! candidates). A request already forwarded once is never forwarded again, so two nodes that
//! briefly disagree about who is active cannot bounce a request between them.
//!
//! Every forwarded request carries a credential (a password, or the caller's API key), so a
//! node whose API is plain HTTP forwards only to a loopback address: to any other it answers
//! 502 naming the fix (`server.use_tls` on the cluster's nodes) instead of sending the
//! credential readable across the network — the address comes from the store, and whoever
//! can write there could otherwise point it anywhere. Over TLS the peer's certificate is
//! verified against the cluster's CA and the address it is reached at (`tls`).

use std::sync::Arc;
use std::time::Duration;

use autogate_ha::Leadership;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Node;

/// Marks a request a standby forwarded; its value is the standby's node id.
pub const FORWARDED_BY: &str = "x-autogate-forwarded-by";
/// The header naming one run across repeats (see `api::keyed`).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Largest body a standby forwards (import files are the biggest).
const MAX_BODY: usize = 32 << 20;
/// Bound on reaching the active node; the answer itself may take as long as the run does.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection to the active node stays pooled unused: shorter than the
/// `server.header_read_timeout` the active node closes idle connections after (10 s by
/// default), so a request is seldom sent on a connection the peer is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The request, given back to be handled on this node.
#[derive(Debug)]
pub struct Local(pub Request);

/// Sends requests on to the active node.
#[derive(Debug, Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    scheme: &'static str,
}

impl Forwarder {
    /// Over plain HTTP (the API of every node is plain HTTP).
    pub fn plain() -> Self {
        Forwarder {
            http: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_idle_timeout(POOL_IDLE)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            scheme: "http",
        }
    }

    /// Over HTTPS with `tls` (the cluster CA as roots, this node's certificate as identity when
    /// the API requires client certificates).
    pub fn tls(tls: Arc<autogate_tls::rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Ok(Forwarder {
            http: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_idle_timeout(POOL_IDLE)
                .redirect(reqwest::redirect::Policy::none())
                .use_preconfigured_tls((*tls).clone())
                .build()?,
            scheme: "https",
        })
    }

    /// Forwards `req` when this node is a standby; gives it back when this node handles it.
    pub async fn forward(&self, node: &Node, req: Request) -> Result<Response, Local> {
        let Some(ha) = &node.ha else {
            return Err(Local(req));
        };
        if matches!(ha.current(), Leadership::Active { .. }) {
            return Err(Local(req));
        }
        let status = ha.status();
        let cluster = &node.config.application.cluster_id;
        let Some(active) = status.active_node_id.clone() else {
            return Ok(unavailable(format!(
                "no active core node in cluster {cluster}: writes and runs need the active node; retry once one is elected"
            )));
        };
        if active == node.id.as_str() {
            // Elected a moment ago; the leadership watch has not caught up yet.
            return Err(Local(req));
        }
        if let Some(by) = req.headers().get(FORWARDED_BY) {
            let by = by.to_str().unwrap_or("?");
            return Ok(unavailable(format!(
                "node {} is not the active node either (request forwarded by {by}); the active node is {active}: retry",
                node.id.as_str()
            )));
        }
        let address = status
            .candidates
            .iter()
            .find(|c| c.node_id == active)
            .and_then(|c| c.address.clone())
            .or_else(|| {
                ha.nodes()
                    .into_iter()
                    .find(|r| r.node_id == active)
                    .and_then(|r| r.address)
            });
        let Some(address) = address else {
            return Ok(unavailable(format!(
                "the active core node {active} has not published its API address (connect.advertise_address); retry"
            )));
        };
        if self.scheme == "http" && !is_loopback(&address) {
            // Anyone can send logins: one line a minute says it, not one per request.
            if warn_due() {
                tracing::warn!(
                    %active,
                    %address,
                    "refusing to forward requests with credentials in plaintext to the active node; set server.use_tls = true on every core node of the cluster"
                );
            }
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "this standby core node ({}) will not forward the request to the active node {active} at {address}: its API is plain HTTP and the request carries a password or an API key, which would cross the network readable; enable server.use_tls (with server.certificate_file and server.private_key_file) on every core node of cluster {cluster}",
                    node.id.as_str()
                ),
            ));
        }
        Ok(self.send(node, &active, &address, req).await)
    }

    async fn send(&self, node: &Node, active: &str, address: &str, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let url = format!("{}://{address}{path}", self.scheme);
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return too_large(MAX_BODY);
        }
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return body_error(&e, MAX_BODY),
        };
        let mut out = self
            .http
            .request(parts.method.clone(), url)
            .header(FORWARDED_BY, node.id.as_str())
            .body(bytes);
        // The `Idempotency-Key` of a run is what makes the active node answer a repeat from
        // the run it already made; every value is passed, so the active node sees what a
        // direct caller would (and refuses more than one key).
        for name in [
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static(IDEMPOTENCY_KEY),
        ] {
            for v in parts.headers.get_all(&name) {
                out = out.header(name.clone(), v.clone());
            }
        }
        tracing::debug!(method = %parts.method, path = parts.uri.path(), %active, "forwarding to the active node");
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) => {
                return unavailable(format!(
                    "cannot reach the active core node {active} at {address}: {}",
                    autogate_runtime::error_chain(&e)
                ))
            }
        };
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return unavailable(format!(
                    "the active core node {active} did not finish its answer: {}",
                    autogate_runtime::error_chain(&e)
                ))
            }
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        if let Ok(v) = HeaderValue::from_str(active) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-autogate-answered-by"), v);
        }
        response
    }
}

/// Whether the warning about plaintext forwarding is due: at most once a minute per process.
fn warn_due() -> bool {
    static LIMIT: std::sync::LazyLock<autogate_runtime::ratelimit::LogLimiter> =
        std::sync::LazyLock::new(|| autogate_runtime::ratelimit::LogLimiter::new(1.0 / 60.0, 1.0));
    LIMIT.allow().is_some()
}

/// Whether `address` (`host:port` from a node record) is this machine's loopback. Only IP
/// literals and `localhost` count: any other name may resolve to anything.
fn is_loopback(address: &str) -> bool {
    if let Ok(addr) = address.parse::<std::net::SocketAddr>() {
        return addr.ip().to_canonical().is_loopback();
    }
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The answer to a request body that could not be read: larger than `limit` (413), too slow
/// (408), or broken off (400).
pub(crate) fn body_error(e: &axum::Error, limit: usize) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return too_large(limit);
        }
        if let Some(t) = err.downcast_ref::<crate::transport::BodyTimeout>() {
            return error(StatusCode::REQUEST_TIMEOUT, t.to_string());
        }
        source = err.source();
    }
    error(
        StatusCode::BAD_REQUEST,
        format!("reading the request body: {e}"),
    )
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than this route accepts ({limit} bytes)"),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unavailable(message: String) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, message)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_addresses_count_as_local() {
        for a in [
            "127.0.0.1:50051",
            "127.9.9.9:1",
            "[::1]:50051",
            "localhost:50051",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.5:50051",
            "[fd00::2]:50051",
            "0.0.0.0:50051",
            "core-1.example.com:50051",
            "localhost.evil.example:1",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
