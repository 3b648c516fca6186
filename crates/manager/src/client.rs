//! The manager's admin client: HTTPS + bearer token over the REST API, used by
//! `autogate manager cluster …` and by tests and benchmarks.
//!
//! TLS goes through `autogate-tls` (ring, explicit roots), so the CLI verifies the manager
//! against the CA the operator names, or the manager's own self-signed certificate.

use std::path::Path;
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
    /// The manager answered with an error status; `message` is its `error` text.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The manager's message.
        message: String,
        /// The whole body.
        body: Value,
    },
}

impl ClientError {
    /// Process exit code for the CLI.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 64,
            ClientError::Unreachable { .. } => 69,
            ClientError::Api { .. } => 1,
        }
    }
}

/// A client of one manager.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    /// A client of the manager at `url` (`https://host:port`), authenticating with `token`,
    /// verifying the manager with the CA certificates in `ca` (else the system trust store).
    pub fn new(url: &str, token: &str, ca: Option<&Path>) -> Result<AdminClient, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ClientError::Usage(format!(
                "--url {url:?}: expected https://host:port"
            )));
        }
        let roots = match ca {
            Some(p) => autogate_tls::Roots::File(p.to_path_buf()),
            None => autogate_tls::Roots::System,
        };
        let tls = autogate_tls::client_config(roots, None, false).map_err(|e| {
            ClientError::Usage(match ca {
                Some(_) => format!("--ca: {e}"),
                None => format!("{e}; pass the manager's certificate with --ca FILE"),
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
        })
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
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: autogate_runtime::error_chain(&e),
        })?;
        let status = resp.status().as_u16();
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
        Ok((status, value))
    }

    /// Like [`AdminClient::send`], turning an error status into [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, value) = self.send(method, path, body).await?;
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
    /// `set`, `type`, `action`, `state`, `timeout_ms`).
    pub async fn run_with(
        &self,
        id: &str,
        service: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/clusters/{id}/services/{service}/run"),
            Some(body),
        )
        .await
    }
}
