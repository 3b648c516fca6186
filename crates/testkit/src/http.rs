//! HTTP for tests and for the harness itself, through `reqwest`: one plain-HTTP client shared by
//! the whole test process, and a runtime of its own that every request runs on. Callers wait for
//! the answer on their own thread, as they would on a blocking socket, so the functions built on
//! this work from plain `#[test]`s and from inside async tests alike.
//!
//! Requests are sent with `Connection: close` and nothing is pooled: a test that stops a node
//! must not find the harness holding a connection to it, and each request sees the node as a
//! new client would. Redirects are not followed and no proxy from the environment is used.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-http")
            .enable_all()
            .build()
            .expect("the test HTTP client's runtime")
    })
}

/// Runs `fut` on the HTTP runtime; the calling thread waits for its output.
pub(crate) fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("an HTTP request of the test harness panicked")
}

/// A client builder with the harness's settings (no proxy, no redirects, no pooling).
pub(crate) fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
}

/// Builds a client inside the HTTP runtime's context.
pub(crate) fn build(builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    let _context = runtime().enter();
    builder.build()
}

fn plain() -> reqwest::Client {
    static PLAIN: OnceLock<reqwest::Client> = OnceLock::new();
    PLAIN
        .get_or_init(|| build(builder()).expect("the test HTTP client"))
        .clone()
}

/// The error with its causes (`error sending request: … : Connection refused`).
pub(crate) fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One request of `method` to `url` on `client`: (status, body as lossy UTF-8). `key` goes in
/// `Authorization: Bearer`; a body is sent as `content_type`. The `timeout` covers the whole
/// exchange, body included.
pub(crate) fn send(
    client: reqwest::Client,
    method: &str,
    url: String,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client
        .request(method, url)
        .header(reqwest::header::CONNECTION, "close")
        .timeout(timeout);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some((ct, bytes)) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(bytes.to_vec());
    }
    block_on(async move {
        let resp = req.send().await.map_err(|e| error_text(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| error_text(&e))?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// One plain-HTTP request to `addr` (`host:port`) and `path` (with its query): (status, body).
pub(crate) fn plain_request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    send(
        plain(),
        method,
        format!("http://{addr}{path}"),
        key,
        body,
        timeout,
    )
    .map_err(std::io::Error::other)
}
