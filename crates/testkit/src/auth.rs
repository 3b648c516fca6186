//! Logging in to a core node from tests: every `/api/v1` route but health, the OpenAPI document
//! and login needs an API key. A node started with [`with_admin_password`] bootstraps `admin`
//! with [`ADMIN_PASSWORD`] (through `GATEWAY_SERVER_ADMIN_PASSWORD_FILE`, as an operator
//! would), and [`admin_key`] logs in over HTTP.
//!
//! [`get_with_key`] and [`request`] are plain-HTTP clients like [`crate::http_get`];
//! [`authed_get`] remembers one key per port so that polling loops log in once, not on every
//! poll (argon2 is deliberately slow).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::process::{poll_until, Autogate};

/// The admin password nodes get from [`with_admin_password`].
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// Writes [`ADMIN_PASSWORD`] to a file in the process's home and points
/// `GATEWAY_SERVER_ADMIN_PASSWORD_FILE` at it.
pub fn with_admin_password(cmd: Autogate) -> Autogate {
    let path = cmd.home().join("admin.password");
    std::fs::write(&path, format!("{ADMIN_PASSWORD}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    cmd.env(
        "GATEWAY_SERVER_ADMIN_PASSWORD_FILE",
        path.display().to_string(),
    )
}

/// One HTTP/1.1 request on loopback without TLS: (status, body). `key` goes in
/// `Authorization: Bearer`; a body is sent as `content_type`.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let (ct, bytes) = body.unwrap_or(("", b""));
    if body.is_some() {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(bytes)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(body)
        }
        Some((_, body)) => body.to_owned(),
        None => String::new(),
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `POST /api/v1/login`: (status, body).
pub fn login(addr: &str, username: &str, password: &str) -> std::io::Result<(u16, String)> {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    request(
        addr,
        "POST",
        "/api/v1/login",
        None,
        Some(("application/json", body.as_bytes())),
    )
}

/// `GET path` with an API key.
pub fn get_with_key(addr: &str, path: &str, key: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, Some(key), None)
}

/// Logs in as `admin` on the node at `127.0.0.1:port`, retrying until it answers (or panics
/// after `deadline`); returns the API key.
pub fn admin_key_within(port: u16, deadline: Duration) -> String {
    let addr = format!("127.0.0.1:{port}");
    poll_until("admin login", deadline, || {
        let (status, body) = login(&addr, "admin", ADMIN_PASSWORD).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["api_key"].as_str().map(str::to_owned)
    })
}

/// [`admin_key_within`] with the usual start-up deadline (30 s).
pub fn admin_key(port: u16) -> String {
    admin_key_within(port, Duration::from_secs(30))
}

fn keys() -> &'static Mutex<HashMap<u16, String>> {
    static KEYS: OnceLock<Mutex<HashMap<u16, String>>> = OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// `GET path` on `127.0.0.1:port` as `admin`, logging in on first use (one attempt) and again
/// after a 401. `None` when the node does not answer or login is not possible right now;
/// polling callers simply try again.
pub fn authed_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = format!("127.0.0.1:{port}");
    let cached = keys()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let key = match cached {
        Some(k) => k,
        None => {
            let (status, body) = login(&addr, "admin", ADMIN_PASSWORD).ok()?;
            if status != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let k = v["api_key"].as_str()?.to_owned();
            keys()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(port, k.clone());
            k
        }
    };
    let (status, body) = get_with_key(&addr, path, &key).ok()?;
    if status == 401 {
        keys()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
        return None;
    }
    Some((status, body))
}

/// One HTTPS request to `addr` (`host:port`) trusting the CA file `ca`, presenting
/// `identity` (certificate file, key file) when given: (status, body), or the client's error
/// text (handshake refused, …).
pub fn https_request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<(u16, String), String> {
    let identity = identity
        .map(|(c, k)| autogate_tls::load_identity(c, k))
        .transpose()
        .map_err(|e| e.to_string())?;
    let tls =
        autogate_tls::client_config(autogate_tls::Roots::File(ca.to_path_buf()), identity, false)
            .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, format!("https://{addr}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some((ct, bytes)) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(bytes.to_vec());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let resp = req.send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    })
}

/// Logs in as `admin` over HTTPS (see [`https_request`]), retrying until `deadline`.
pub fn admin_key_tls(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    deadline: Duration,
) -> String {
    let body = serde_json::json!({ "username": "admin", "password": ADMIN_PASSWORD }).to_string();
    poll_until("admin login over HTTPS", deadline, || {
        let (status, text) = https_request(
            addr,
            "POST",
            "/api/v1/login",
            None,
            Some(("application/json", body.as_bytes())),
            ca,
            identity,
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["api_key"].as_str().map(str::to_owned)
    })
}
