//! The manager's admin client: HTTPS + bearer token over the REST API, used by
//! `autogate manager cluster …`, `autogate manager status` and by tests and benchmarks.
//!
//! TLS goes through `autogate-tls` (ring, explicit roots), so the CLI verifies the manager
//! against the CA the operator names, or the manager's own self-signed certificate. Each trusted
//! file is kept with the setting that named it ([`Trust`]): when the manager's certificate does
//! not verify, the error says what was trusted and which setting to change, instead of a bare
//! `invalid peer certificate: UnknownIssuer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A bad URL or CA file: the operator's mistake (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The manager could not be reached (exit 69).
    #[error("cannot reach the manager at {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The manager answered with a certificate this client does not trust (exit 69, as nothing
    /// was said to it); `hint` names what was trusted and the setting to change.
    #[error("cannot reach the manager at {url}: {reason}\n{hint}")]
    Untrusted {
        /// The base URL.
        url: String,
        /// The TLS library's reason.
        reason: String,
        /// What was trusted, and what to do.
        hint: String,
    },
    /// The manager answered with an error status; `message` is its `error` text.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The manager's message.
        message: String,
        /// The whole body.
        body: Value,
        /// `Retry-After` (seconds): the manager says the same request may succeed then (it is
        /// stopping, and a run it kept is answered after its restart).
        retry_after: Option<u64>,
    },
}

impl ClientError {
    /// Process exit code for the CLI.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 64,
            ClientError::Unreachable { .. } | ClientError::Untrusted { .. } => 69,
            ClientError::Api { .. } => 1,
        }
    }
}

/// How the admin client verifies the manager, and what it presents.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// CA certificate files (PEM, one or more certificates each), each with the setting that
    /// named it (`--ca`, `application.ca_certificate_file`, …), for messages. Empty: the
    /// system trust store.
    pub roots: Vec<(PathBuf, String)>,
    /// A client certificate and its key to present (the manager asks for none on its REST API,
    /// but a proxy in front of it may).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// What to tell the operator to set when the manager's certificate does not verify, e.g.
    /// "set GATEWAY_APPLICATION_CA_CERTIFICATE_FILE (application.ca_certificate_file) to the CA
    /// that signed the manager's certificate, or pass --ca FILE".
    pub advice: String,
}

impl Trust {
    /// Trusts the CA certificates in `ca` (else the system trust store), as `--ca` would.
    pub fn ca(ca: Option<&Path>) -> Trust {
        Trust {
            roots: ca
                .map(|p| vec![(p.to_path_buf(), "--ca".to_owned())])
                .unwrap_or_default(),
            identity: None,
            advice: "pass the CA that signed the manager's certificate with --ca FILE".to_owned(),
        }
    }

    /// What was trusted, for messages: "/pki/ca.pem (application.ca_certificate_file)".
    pub fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "the system trust store (no CA file configured)".to_owned();
        }
        self.roots
            .iter()
            .map(|(p, from)| format!("{} ({from})", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn roots(&self) -> Result<autogate_tls::Roots, ClientError> {
        if self.roots.is_empty() {
            return Ok(autogate_tls::Roots::System);
        }
        let mut pem = String::new();
        for (path, from) in &self.roots {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClientError::Usage(format!("{from}: cannot read {}: {e}", path.display()))
            })?;
            autogate_tls::parse_pem_certs(&text)
                .map_err(|e| ClientError::Usage(format!("{from}: {}: {e}", path.display())))?;
            pem.push_str(&text);
            pem.push('\n');
        }
        Ok(autogate_tls::Roots::Pem(pem))
    }

    /// The hint for a certificate the client did not accept, by the TLS library's reason.
    fn hint(&self, reason: &str, url: &str) -> String {
        let trusted = self.describe();
        if reason.contains("NotValidForName") || reason.contains("not valid for name") {
            return format!(
                "The manager's certificate does not name the host of {url}: use a --url with a name \
                 the certificate has (see its subject alternative names), or reissue it with this \
                 one (autogate cert-gen server --san …). Trusted: {trusted}."
            );
        }
        if reason.contains("Expired") || reason.contains("expired") {
            return format!(
                "The manager's certificate has expired: renew it (manager.certificate_file). \
                 Trusted: {trusted}."
            );
        }
        format!(
            "The manager's certificate is not signed by a CA this command trusts. Trusted: \
             {trusted}. To trust the manager, {}.",
            self.advice
        )
    }
}

/// Whether a connection failed on the manager's certificate (rather than the network).
fn certificate_refused(reason: &str) -> bool {
    reason.contains("invalid peer certificate")
}

/// A client of one manager.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
    trust: Trust,
}

impl AdminClient {
    /// A client of the manager at `url` (`https://host:port`), authenticating with `token`,
    /// verifying the manager with the CA certificates in `ca` (else the system trust store).
    pub fn new(url: &str, token: &str, ca: Option<&Path>) -> Result<AdminClient, ClientError> {
        Self::with_trust(url, token, Trust::ca(ca))
    }

    /// A client of the manager at `url`, verifying it as `trust` says.
    pub fn with_trust(url: &str, token: &str, trust: Trust) -> Result<AdminClient, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ClientError::Usage(format!(
                "--url {url:?}: expected https://host:port"
            )));
        }
        let roots = trust.roots()?;
        let identity = match &trust.identity {
            Some((cert, key)) => Some(autogate_tls::load_identity(cert, key).map_err(|e| {
                ClientError::Usage(format!("client certificate {}: {e}", cert.display()))
            })?),
            None => None,
        };
        let system = matches!(roots, autogate_tls::Roots::System);
        let tls = autogate_tls::client_config(roots, identity, false).map_err(|e| {
            ClientError::Usage(if system {
                format!("{e}; {}", trust.advice)
            } else {
                format!("{}: {e}", trust.describe())
            })
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(AdminClient {
            http,
            base,
            token: token.to_owned(),
            trust,
        })
    }

    /// What this client trusts, for messages.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the status and JSON body (`null` when empty) whatever the
    /// status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        self.send_keyed(method, path, body, None).await
    }

    /// [`send`](Self::send) with an `Idempotency-Key` header: the manager runs a request it
    /// has seen under that key once, and answers a repeat with the same outcome.
    pub async fn send_keyed(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value), ClientError> {
        let (status, _, value) = self.send_raw(method, path, body, idempotency_key).await?;
        Ok((status, value))
    }

    /// [`send_keyed`](Self::send_keyed) with the answer's `Retry-After`, in seconds.
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Option<u64>, Value), ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let reason = autogate_runtime::error_chain(&e);
            if certificate_refused(&reason) {
                ClientError::Untrusted {
                    hint: self.trust.hint(&reason, &self.base),
                    url: self.base.clone(),
                    reason,
                }
            } else {
                ClientError::Unreachable {
                    url: self.base.clone(),
                    reason,
                }
            }
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: autogate_runtime::error_chain(&e),
        })?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, retry_after, value))
    }

    /// Like [`AdminClient::send`], turning an error status into [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.call_keyed(method, path, body, None).await
    }

    /// [`call`](Self::call) with an `Idempotency-Key` header.
    pub async fn call_keyed(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let (status, retry_after, value) =
            self.send_raw(method, path, body, idempotency_key).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        // `{"error": "<sentence>"}`, or the run endpoint's `{"error": {"message": …}}`.
        let message = match value.get("error") {
            Some(Value::String(m)) => Some(m.clone()),
            Some(e) => e.get("message").and_then(Value::as_str).map(str::to_owned),
            None => None,
        }
        .unwrap_or_else(|| format!("the manager answered HTTP {status}: {value}"));
        Err(ClientError::Api {
            status,
            message,
            body: value,
            retry_after,
        })
    }

    /// `GET /api/v1/clusters`.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/api/v1/clusters", None).await
    }

    /// `GET /api/v1/clusters/{id}`.
    pub async fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/api/v1/clusters/{id}"), None)
            .await
    }

    /// `POST /api/v1/clusters`.
    pub async fn create(
        &self,
        id: &str,
        name: Option<&str>,
        state: &str,
        certificates: &[String],
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "cluster_id": id, "state": state, "certificates": certificates });
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        self.call(Method::POST, "/api/v1/clusters", Some(&body))
            .await
    }

    /// `PATCH /api/v1/clusters/{id}`.
    pub async fn patch(&self, id: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(body))
            .await
    }

    /// `DELETE /api/v1/clusters/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/api/v1/clusters/{id}"), None)
            .await
            .map(|_| ())
    }

    /// `GET /api/v1/clusters/{id}/sessions`.
    pub async fn sessions(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/clusters/{id}/sessions"),
            None,
        )
        .await
    }

    /// `POST /api/v1/clusters/{id}/ping`.
    pub async fn ping(&self, id: &str) -> Result<Value, ClientError> {
        self.call(Method::POST, &format!("/api/v1/clusters/{id}/ping"), None)
            .await
    }

    /// `POST /api/v1/clusters/{id}/reset-term`: forget the cluster's highest term (and close its
    /// live session); answers the old term.
    pub async fn reset_term(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/clusters/{id}/reset-term"),
            None,
        )
        .await
    }

    /// `GET /api/v1/replicas`: the manager's store (backend, endpoints, prefix, revision,
    /// whether it answers) and the replicas sharing it, the one that answered marked `this`.
    /// Used by `autogate manager status`.
    pub async fn replicas(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/api/v1/replicas", None).await
    }

    /// `GET /api/v1/clusters/{id}/services`.
    pub async fn services(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/v1/clusters/{id}/services"),
            None,
        )
        .await
    }

    /// `POST /api/v1/clusters/{id}/services/{name}/run` with these inputs: the family's reply
    /// (`status: completed` and `result`) or, for any other status, [`ClientError::Api`] whose
    /// body is the `status: error` reply.
    pub async fn run(&self, id: &str, service: &str, inputs: &Value) -> Result<Value, ClientError> {
        self.run_with(id, service, &json!({ "inputs": inputs }))
            .await
    }

    /// `POST /api/v1/clusters/{id}/services/{name}/run` with a whole request body (`inputs`,
    /// `set`, `type`, `action`, `state`, `timeout_ms`). The request carries a fresh
    /// `Idempotency-Key` and is sent again under it when the manager cannot be reached, or
    /// answers 504 with `Retry-After` (a manager stopping: the run goes on, and the same key
    /// gets its answer after the restart): the run happens once, whichever attempt got through.
    pub async fn run_with(
        &self,
        id: &str,
        service: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        let key = uuid::Uuid::now_v7().to_string();
        let path = format!("/api/v1/clusters/{id}/services/{service}/run");
        let mut delay = RUN_RETRY_FIRST;
        let give_up = std::time::Instant::now() + RUN_RETRY_FOR;
        loop {
            match self
                .call_keyed(Method::POST, &path, Some(body), Some(&key))
                .await
            {
                Err(ClientError::Unreachable { .. }) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RUN_RETRY_MAX);
                }
                Err(ClientError::Api {
                    status: 504,
                    retry_after: Some(after),
                    ..
                }) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_secs(after).clamp(delay, RUN_RETRY_MAX))
                        .await;
                    delay = (delay * 2).min(RUN_RETRY_MAX);
                }
                other => return other,
            }
        }
    }
}

/// First pause before a run is sent again to a manager that could not be reached.
const RUN_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between two attempts.
const RUN_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a run is sent again before the unreachable manager is reported: a restart.
const RUN_RETRY_FOR: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_says_what_was_trusted_and_what_to_set() {
        let trust = Trust {
            roots: vec![(
                PathBuf::from("/pki/ca.pem"),
                "application.ca_certificate_file".to_owned(),
            )],
            identity: None,
            advice: "set GATEWAY_APPLICATION_CA_CERTIFICATE_FILE".to_owned(),
        };
        let url = "https://127.0.0.1:8443";
        let issuer = trust.hint("invalid peer certificate: UnknownIssuer", url);
        assert!(
            issuer.contains("/pki/ca.pem (application.ca_certificate_file)"),
            "{issuer}"
        );
        assert!(
            issuer.contains("set GATEWAY_APPLICATION_CA_CERTIFICATE_FILE"),
            "{issuer}"
        );
        let name = trust.hint("invalid peer certificate: NotValidForName", url);
        assert!(name.contains("does not name the host"), "{name}");
        assert!(Trust::default().describe().contains("system trust store"));
        assert!(certificate_refused(
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(!certificate_refused("Connection refused (os error 111)"));
    }
}
