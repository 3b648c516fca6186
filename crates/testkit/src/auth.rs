//! Logging in to a core node from tests: every `/api/v1` route but health, the OpenAPI document
//! and login needs an API key. A node started with [`with_admin_password`] bootstraps `admin`
//! with [`ADMIN_PASSWORD`] (through `GATEWAY_SERVER_ADMIN_PASSWORD_FILE`, as an operator
//! would), and [`admin_key`] logs in over HTTP.
//!
//! [`get_with_key`] and [`request`] are plain-HTTP requests like [`crate::http_get`];
//! [`authed_get`] remembers one key per port so that polling loops log in once, not on every
//! poll (argon2 is deliberately slow).

use std::collections::HashMap;
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

/// The temporary password of `admin` that `node` generated on its first start: its log names the
/// file (never the password), and the file and the working directory holding it are this user's
/// only — asserted here, so every test that reads the password checks where it was left.
pub fn temporary_password(node: &crate::process::Process, deadline: Duration) -> String {
    use std::os::unix::fs::MetadataExt;
    node.wait_for_line("CREATED TEMPORARY ADMIN", deadline);
    node.wait_for_line("username: admin", deadline);
    let line = node.wait_for_line("password: in ", deadline);
    let path = line
        .text
        .split("password: in ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no file named in {:?}", line.text));
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .mode()
            & 0o777
    };
    assert_eq!(mode(&path), 0o600, "{}", path.display());
    let dir = path.parent().expect("the working directory");
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let password = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned();
    assert!(password.len() >= 12, "{password:?}");
    assert!(
        !node.logs().contains(&password),
        "the password reached the log"
    );
    password
}

/// One HTTP request on loopback without TLS: (status, body). `key` goes in
/// `Authorization: Bearer`; a body is sent as `content_type`. An error when nothing answers
/// within 60 s.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, String)> {
    crate::http::plain_request(addr, method, path, key, body, Duration::from_secs(60))
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
    let client = crate::http::build(crate::http::builder().use_preconfigured_tls((*tls).clone()))
        .map_err(|e| crate::http::error_text(&e))?;
    crate::http::send(
        client,
        method,
        format!("https://{addr}{path}"),
        key,
        body,
        Duration::from_secs(60),
    )
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
