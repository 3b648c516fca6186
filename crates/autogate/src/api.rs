//! The CLI's client of a core node's operator API (`client` mode, and the `ha` commands).
//!
//! Where to connect comes from `[client]` or the `--profile` section: host, port, `use_tls`,
//! an optional client certificate, and the CA from `[application] ca_certificate_file` (else
//! the system trust store). The API key is the profile's `api_key`, else the one `autogate
//! login` saved at `<working_dir>/api.key`. Every answer that is not a success becomes a
//! [`Failure`] carrying the server's own message, with an exit code a script can act on:
//! 77 (sysexits NOPERM) for a missing or expired key, 69 when the node cannot be reached, 64
//! for a request the node refuses as invalid.

use std::path::PathBuf;
use std::time::Duration;

use autogate_config::Config;
use reqwest::Method;
use serde_json::Value;

use crate::cli::Global;
use crate::exit::Failure;

/// Exit code when the API refuses the credentials (sysexits `EX_NOPERM`).
pub const NOPERM: u8 = 77;
/// Exit code when the node cannot be reached (sysexits `EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;

/// A client of one core node.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// Where `autogate login` keeps the API key.
pub fn key_path(config: &Config) -> PathBuf {
    config.application.working_dir.join("api.key")
}

impl ApiClient {
    /// From the configuration and `--profile`; the API key is optional here (login has none).
    pub fn from_config(config: &Config, global: &Global) -> Result<ApiClient, Failure> {
        let client = config
            .client_profile(global.profile.as_deref())
            .ok_or_else(|| {
                Failure::new(
                    64,
                    format!(
                        "unknown client profile {:?}: no [client:<name>] section has that name",
                        global.profile.as_deref().unwrap_or_default()
                    ),
                )
            })?;
        let scheme = if client.use_tls { "https" } else { "http" };
        let base = format!("{scheme}://{}:{}", client.host, client.port);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(3600));
        if client.use_tls {
            let roots = match &config.application.ca_certificate_file {
                Some(p) => autogate_tls::Roots::File(p.clone()),
                None => autogate_tls::Roots::System,
            };
            let identity = match (&client.certificate_file, &client.private_key_file) {
                (Some(c), Some(k)) => Some(
                    autogate_tls::load_identity(c, k)
                        .map_err(|e| Failure::new(64, format!("client certificate: {e}")))?,
                ),
                _ => None,
            };
            let tls = autogate_tls::client_config(roots, identity, false)
                .map_err(|e| Failure::new(64, format!("client TLS: {e}")))?;
            builder = builder.use_preconfigured_tls((*tls).clone());
        }
        let http = builder
            .build()
            .map_err(|e| Failure::new(1, format!("HTTP client: {e}")))?;
        let key = match &client.api_key {
            Some(k) => Some(k.expose().to_owned()),
            None => std::fs::read_to_string(key_path(config))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        };
        Ok(ApiClient { http, base, key })
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a JSON request; returns the JSON body of a success (`null` when empty). A
    /// non-success status is a [`Failure`] with the server's `error` message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, text) = self.send(req).await?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(failure(status, &value))
        }
    }

    /// Sends a request with a text body (YAML) and returns the text of a success.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<String, Failure> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(b);
        }
        let (status, text) = self.send(req).await?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Err(failure(status, &value))
        }
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<(u16, String), Failure> {
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                UNAVAILABLE,
                format!(
                    "cannot reach the core node at {}: {}",
                    self.base,
                    autogate_runtime::error_chain(&e)
                ),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::new(UNAVAILABLE, format!("reading the answer: {e}")))?;
        Ok((status, text))
    }
}

/// The server's message for a failed request, with an exit code per status class.
fn failure(status: u16, body: &Value) -> Failure {
    let msg = body["error"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| body.as_str().map(str::to_owned))
        .unwrap_or_else(|| "request failed".to_owned());
    // A request the node refuses as malformed or invalid (a bad definition, a missing
    // reference, inputs the decorator rejects) is the operator's to fix, as in local mode.
    let code = match status {
        401 | 403 => NOPERM,
        400 | 422 => crate::exit::USAGE,
        404 | 409 => 1,
        503 => UNAVAILABLE,
        _ => 1,
    };
    let mut message = format!("{msg} (HTTP {status})");
    if let Some(v) = body["detail"]["violations"].as_array() {
        for v in v {
            let at = v["pointer"]
                .as_str()
                .filter(|p| !p.is_empty())
                .unwrap_or("(root)");
            message.push_str(&format!(
                "\n  {at}: {}",
                v["message"].as_str().unwrap_or("")
            ));
        }
    }
    Failure::new(code, message)
}
