//! The CLI's client of a core node's operator API (`client` mode, and the `ha`, `login` and
//! users commands).
//!
//! Where to connect comes from `[client]` or the `--profile` section: host, port, `use_tls`,
//! an optional client certificate, and the CA from `[application] ca_certificate_file` (else
//! the system trust store). The API key is the profile's `api_key`, else the one `autogate
//! login` kept for that host and port (see [`key_path`]), else the single `api.key` of earlier
//! versions. Every answer that is not a success becomes a [`Failure`] carrying the server's own
//! message, with an exit code a script can act on: 77 (sysexits NOPERM) for a missing or
//! expired key (with where the CLI looked for it), 69 when the node cannot be reached, 64 for a
//! request the node refuses as invalid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_config::{Client, Config};
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
    /// Where the key was looked for, to say what to do when the node refuses it.
    origin: KeyOrigin,
    /// Where `login` keeps this node's key.
    key_file: PathBuf,
}

/// Where the API key sent to the node came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyOrigin {
    /// `api_key` of `[client]` or of the profile.
    Config,
    /// The file `login` kept for this node.
    NodeFile,
    /// The single file of earlier versions, whose node is not recorded.
    Legacy(PathBuf),
    /// None found.
    Missing,
    /// Not looked for: `login` sends none.
    NotNeeded,
}

/// Where `autogate login` keeps the API key of the node at `client`'s host and port:
/// `<working_dir>/api-keys/<host>_<port>.key`. One file per node, so that logging in to a
/// second node leaves the first one's key in place; two profiles naming the same node share it.
pub fn key_path(config: &Config, client: &Client) -> PathBuf {
    // Only characters that are safe in a file name on every system are kept; an IPv6
    // address's colons become underscores, and the port after the last `_` keeps names apart.
    let host: String = client
        .host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config
        .application
        .working_dir
        .join("api-keys")
        .join(format!("{host}_{}.key", client.port))
}

/// The one key file of earlier versions. It does not say which node it belongs to, so it is
/// read only for a node that has no key file of its own.
pub fn legacy_key_path(config: &Config) -> PathBuf {
    config.application.working_dir.join("api.key")
}

fn read_key(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl ApiClient {
    /// From the configuration and `--profile`, with the API key of the node it names.
    pub fn from_config(config: &Config, global: &Global) -> Result<ApiClient, Failure> {
        Self::build(config, global, true)
    }

    /// For `login`: the same node, no key sent.
    pub fn for_login(config: &Config, global: &Global) -> Result<ApiClient, Failure> {
        Self::build(config, global, false)
    }

    fn build(config: &Config, global: &Global, with_key: bool) -> Result<ApiClient, Failure> {
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
        let key_file = key_path(config, client);
        let (key, origin) = if !with_key {
            (None, KeyOrigin::NotNeeded)
        } else if let Some(k) = &client.api_key {
            (Some(k.expose().to_owned()), KeyOrigin::Config)
        } else if let Some(k) = read_key(&key_file) {
            (Some(k), KeyOrigin::NodeFile)
        } else {
            let legacy = legacy_key_path(config);
            match read_key(&legacy) {
                Some(k) => (Some(k), KeyOrigin::Legacy(legacy)),
                None => (None, KeyOrigin::Missing),
            }
        };
        Ok(ApiClient {
            http,
            base,
            key,
            origin,
            key_file,
        })
    }

    /// Where `login` keeps this node's API key.
    pub fn key_file(&self) -> &Path {
        &self.key_file
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
        self.answer(status, text)
    }

    /// [`call`](Self::call) with an `Idempotency-Key` header. The outer error is a request that
    /// got no answer (the node could not be reached, or the connection broke before the answer
    /// came): the caller may send it again under the same key. The inner result is the answer.
    pub async fn call_keyed(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<Result<Value, Failure>, Failure> {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("idempotency-key", idempotency_key)
            .json(body);
        let (status, text) = self.send(req).await?;
        Ok(self.answer(status, text))
    }

    fn answer(&self, status: u16, text: String) -> Result<Value, Failure> {
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(self.hint(failure(status, &value)))
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
            Err(self.hint(failure(status, &value)))
        }
    }

    /// A refused key, with what the CLI knows about where it came from: the node only knows
    /// that the key it got (if any) is not valid.
    fn hint(&self, mut f: Failure) -> Failure {
        if f.code != NOPERM {
            return f;
        }
        let file = self.key_file.display();
        match &self.origin {
            KeyOrigin::Missing => f.message.push_str(&format!(
                "\n  no API key is kept for {} (looked for {file}): run `autogate login USER` \
                 with the same [client] host/port or --profile",
                self.base
            )),
            KeyOrigin::Legacy(p) => f.message.push_str(&format!(
                "\n  the key sent was {}, kept by an earlier version for the last node it logged \
                 in to; run `autogate login USER` to keep a key for {} in {file}",
                p.display(),
                self.base
            )),
            KeyOrigin::Config | KeyOrigin::NodeFile | KeyOrigin::NotNeeded => {}
        }
        f
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
