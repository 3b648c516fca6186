//! Bad input against a live HTTP API, for the tests and the figures of `docs/security.md`: every
//! route of a core node (read from its OpenAPI document) or of the manager gets malformed and
//! hostile requests — path tricks and invalid UTF-8 in its parameters, bodies that are not JSON,
//! JSON of the wrong types, huge and deeply nested values, YAML alias bombs, oversized headers —
//! and the answers are counted. The goal: no 5xx answer, no crash, every request answered.
//!
//! Requests are written byte by byte on a raw socket (plain TCP or TLS), not through an HTTP
//! client: a client would refuse to send most of what an attacker sends (invalid UTF-8 in the
//! request line, a lying `Content-Type`, a 40 MiB body to an unauthenticated route). Cases are
//! a fixed list per route plus a seeded random mix, so a run is repeatable from its seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use autogate_tls::rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rng::Rng;

/// Where the requests go.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub port: u16,
    /// TLS client configuration when the API is HTTPS (the manager).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization` header value sent with most requests (so the handlers behind the
    /// authentication are reached too); a share of the requests goes without it.
    pub authorization: Option<String>,
}

/// One route: its method and path template (`{param}` segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    pub path: String,
}

impl Route {
    pub fn new(method: &str, path: &str) -> Route {
        Route {
            method: method.to_owned(),
            path: path.to_owned(),
        }
    }
}

/// The routes of a core node's OpenAPI document (`GET /api/v1/openapi.json`).
pub fn routes_of_openapi(doc: &serde_json::Value) -> Vec<Route> {
    let mut routes = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, ops) in paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                if ops.get(method).is_some() {
                    routes.push(Route::new(&method.to_uppercase(), path));
                }
            }
        }
    }
    routes
}

/// The manager's routes (it has no OpenAPI document): the REST API, the page and its feed, the
/// probes and the WebSocket endpoint.
pub fn manager_routes() -> Vec<Route> {
    [
        ("GET", "/api/v1/clusters"),
        ("POST", "/api/v1/clusters"),
        ("GET", "/api/v1/clusters/{id}"),
        ("PATCH", "/api/v1/clusters/{id}"),
        ("DELETE", "/api/v1/clusters/{id}"),
        ("GET", "/api/v1/clusters/{id}/sessions"),
        ("DELETE", "/api/v1/clusters/{id}/nodes/{node_id}"),
        ("POST", "/api/v1/clusters/{id}/ping"),
        ("POST", "/api/v1/clusters/{id}/reset-term"),
        ("POST", "/api/v1/events/ticket"),
        ("GET", "/api/v1/replicas"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/clusters/{id}/services"),
        ("POST", "/api/v1/clusters/{id}/services/{name}/run"),
        ("GET", "/api/v1/clusters/{id}/runs/{run_id}"),
        ("GET", "/ws"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/ui/app.js"),
    ]
    .into_iter()
    .map(|(m, p)| Route::new(m, p))
    .collect()
}

/// How big the biggest cases get.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// A large string value inside JSON.
    pub large_value: usize,
    /// A body far above any route's limit, sent once per route that takes a body.
    pub huge_body: usize,
    /// Random cases per route after the fixed ones.
    pub random_per_route: usize,
}

impl Sizes {
    /// For the test suite (a debug build, seconds per API).
    pub const QUICK: Sizes = Sizes {
        large_value: 256 * 1024,
        huge_body: 2 * 1024 * 1024,
        random_per_route: 20,
    };
    /// For the figures (a release build).
    pub const FULL: Sizes = Sizes {
        large_value: 1024 * 1024,
        huge_body: 40 * 1024 * 1024,
        random_per_route: 200,
    };
}

/// What the requests got.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub requests: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Connections the server closed (or that timed out) without an answer. A server may cut a
    /// request it will not read (a body far over its limit) before answering: counted, listed.
    pub unanswered: u64,
    /// Each 5xx answer and each unanswered request: method, target (cut), what came back.
    pub failures: Vec<String>,
}

impl Tally {
    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.unanswered += other.unanswered;
        self.failures.extend(other.failures);
    }
}

/// One request, as bytes.
#[derive(Clone)]
struct Case {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    authorized: bool,
}

/// Values for a path parameter: already as they go on the wire.
fn param_values() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "x",
        "",
        "..",
        "../../../../etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%2f..%2f..%2fetc%2fshadow",
        "%00",
        "a%00b",
        "%ff%fe%fd",
        "%C3%BC%C3%B1%C3%AF",
        "%0d%0aX-Injected:%201",
        "$(id)",
        "%60id%60",
        "%7B%7B7*7%7D%7D",
        "-rf",
        "--upload-pack=touch%20/tmp/pwned",
        "%2F",
        "a/b/c",
        "018f0f3e-0000-7000-8000-000000000000",
        "admin",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(vec![0xff, 0xfe, b'a']);
    v.push(vec![b'A'; 300]);
    v.push(vec![b'A'; 70_000]);
    v
}

/// Field names the APIs take somewhere, to put values of the wrong type under.
const FIELDS: &[&str] = &[
    "name",
    "username",
    "password",
    "current_password",
    "role",
    "value",
    "url",
    "reference",
    "schema",
    "inputs",
    "params",
    "type",
    "description",
    "tags",
    "exec-command",
    "service-type",
    "repository",
    "secret",
    "certificates",
    "state",
    "cluster_id",
    "node",
    "host",
    "keytype",
    "key",
    "timeout",
    "term",
];

fn json_bodies(large: usize) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "null",
        "[]",
        "\"s\"",
        "12",
        "-1",
        "1e999",
        "true",
        "{}",
        "{\"\":\"\"}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(b"{\"name\":\"\xff\xfe\"}".to_vec());
    v.push(b"\xef\xbb\xbf{}".to_vec());
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    v.push(deep);
    let mut deep_obj = Vec::new();
    for _ in 0..20_000 {
        deep_obj.extend_from_slice(b"{\"a\":");
    }
    deep_obj.extend_from_slice(b"1");
    deep_obj.extend(vec![b'}'; 20_000]);
    v.push(deep_obj);
    let long = "x".repeat(large);
    v.push(format!("{{\"name\":\"{long}\"}}").into_bytes());
    v.push(format!("[{}]", vec!["{}"; large / 3].join(",")).into_bytes());
    v
}

/// Wrong-typed and hostile values for a field.
fn field_values() -> Vec<&'static str> {
    vec![
        "1",
        "true",
        "null",
        "[]",
        "{}",
        "[[[[[[[[]]]]]]]]",
        "\"\"",
        "\"../../etc/passwd\"",
        "\"--upload-pack=touch /tmp/pwned\"",
        "\"{{ lookup('pipe','id') }}\"",
        "\"$(id)\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "-99999999999999999999999",
        "1.5",
    ]
}

/// A YAML alias bomb ("billion laughs"): a few hundred bytes that expand to 10^9 nodes.
fn yaml_bomb() -> Vec<u8> {
    let mut y = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let (prev, next) = (w[0], w[1]);
        y.push_str(&format!(
            "{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    y.into_bytes()
}

fn yaml_bodies() -> Vec<Vec<u8>> {
    vec![
        yaml_bomb(),
        b"repositories: [".to_vec(),
        b"!!binary AAAA".to_vec(),
        b"secrets:\n  - name: x\n    value: v2:AAAA\n".to_vec(),
        b"services:\n  - name: \"\xff\"\n".to_vec(),
        b"---\n- &x [*x]\n".to_vec(),
    ]
}

/// Fills a template's `{param}` segments with `value`.
fn fill(path: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.extend_from_slice(value);
                rest = &rest[open + close + 1..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

fn takes_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

fn json_case(route: &Route, target: Vec<u8>, body: Vec<u8>) -> Case {
    Case {
        method: route.method.clone(),
        target,
        headers: vec![("Content-Type".into(), b"application/json".to_vec())],
        body: Some(body),
        authorized: true,
    }
}

/// The fixed cases of a route, then `sizes.random_per_route` seeded random ones.
fn cases(route: &Route, sizes: Sizes, rng: &mut Rng) -> Vec<Case> {
    let params = param_values();
    let has_params = route.path.contains('{');
    let plain = fill(&route.path, b"x");
    let mut out = Vec::new();
    let bare = |target: Vec<u8>| Case {
        method: route.method.clone(),
        target,
        headers: Vec::new(),
        body: None,
        authorized: true,
    };
    // Path tricks.
    if has_params {
        for p in &params {
            out.push(bare(fill(&route.path, p)));
        }
    } else {
        for p in &params {
            let mut t = plain.clone();
            t.extend_from_slice(b"/");
            t.extend_from_slice(p);
            out.push(bare(t));
        }
    }
    let mut q = plain.clone();
    q.extend_from_slice(b"?a=%ff&b=\xff&limit=-1&offset=99999999999999999999&");
    q.extend(vec![b'q'; 10_000]);
    out.push(bare(q));
    // Headers.
    for (name, value) in [
        (
            "Authorization",
            [b"Bearer ".as_slice(), &[b'A'; 10_000]].concat(),
        ),
        ("Authorization", b"Bearer \xff\xfe".to_vec()),
        ("Authorization", b"Basic YWRtaW46YWRtaW4=".to_vec()),
        ("Idempotency-Key", vec![b'k'; 10_000]),
        ("Idempotency-Key", b"\xff".to_vec()),
        ("Content-Type", b"application/json; charset=\xff".to_vec()),
        ("X-Forwarded-For", b"127.0.0.1, ../../".to_vec()),
    ] {
        let mut c = bare(plain.clone());
        c.authorized = name != "Authorization";
        c.headers.push((name.into(), value));
        out.push(c);
    }
    let mut anon = bare(plain.clone());
    anon.authorized = false;
    out.push(anon);
    if takes_body(&route.method) {
        for body in json_bodies(sizes.large_value) {
            out.push(json_case(route, plain.clone(), body));
        }
        for field in FIELDS {
            for value in field_values() {
                out.push(json_case(
                    route,
                    plain.clone(),
                    format!("{{\"{field}\":{value}}}").into_bytes(),
                ));
            }
        }
        for body in yaml_bodies() {
            let mut c = json_case(route, plain.clone(), body);
            c.headers = vec![("Content-Type".into(), b"application/yaml".to_vec())];
            out.push(c);
        }
        let mut text = json_case(route, plain.clone(), b"{}".to_vec());
        text.headers = vec![("Content-Type".into(), b"text/plain".to_vec())];
        out.push(text);
        let mut huge = json_case(route, plain.clone(), vec![b'a'; sizes.huge_body]);
        huge.authorized = false;
        out.push(huge);
    }
    // A seeded mix: a random parameter, a random body, sometimes no key.
    let bodies = json_bodies(sizes.large_value / 16);
    for _ in 0..sizes.random_per_route {
        let p = &params[rng.index(params.len())];
        let target = if has_params {
            fill(&route.path, p)
        } else {
            plain.clone()
        };
        let body = if takes_body(&route.method) {
            match rng.index(3) {
                0 => bodies[rng.index(bodies.len())].clone(),
                1 => {
                    let f = FIELDS[rng.index(FIELDS.len())];
                    let vals = field_values();
                    let g = FIELDS[rng.index(FIELDS.len())];
                    format!(
                        "{{\"{f}\":{},\"{g}\":{}}}",
                        vals[rng.index(vals.len())],
                        vals[rng.index(vals.len())]
                    )
                    .into_bytes()
                }
                _ => (0..rng.index(512)).map(|_| rng.next() as u8).collect(),
            }
        } else {
            Vec::new()
        };
        let mut c = json_case(route, target, body);
        if !takes_body(&route.method) {
            c.body = None;
            c.headers.clear();
        }
        c.authorized = rng.index(5) != 0;
        out.push(c);
    }
    out
}

fn request_bytes(case: &Case, authorization: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::new();
    head.extend_from_slice(case.method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(&case.target);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if case.authorized {
        if let Some(a) = authorization {
            head.extend_from_slice(format!("Authorization: {a}\r\n").as_bytes());
        }
    }
    for (name, value) in &case.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    let body = case.body.clone().unwrap_or_default();
    if case.body.is_some() {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    (head, body)
}

/// What came back for one request.
enum Answer {
    Status(u16, String),
    None(String),
}

async fn exchange<S>(stream: S, head: Vec<u8>, body: Vec<u8>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Written beside the read: a server may answer (413) before it has read a huge body, and
    // then stop reading it.
    let writer = tokio::spawn(async move {
        wr.write_all(&head).await?;
        for chunk in body.chunks(64 * 1024) {
            wr.write_all(chunk).await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // Up to the end of the headers, then a moment more for the start of the body (what a 5xx
    // says): an answer that streams (the manager's event feed) never ends by itself.
    let read = async {
        let mut body_until = None;
        loop {
            let more = match body_until {
                None => rd.read(&mut buf).await,
                Some(until) => match tokio::time::timeout_at(until, rd.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            match more {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() > 64 * 1024 {
                        break;
                    }
                    if body_until.is_none() && got.windows(4).any(|w| w == b"\r\n\r\n") {
                        body_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                    }
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .is_err();
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(s) => {
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            Answer::Status(s, body.chars().take(300).collect())
        }
        None if timed_out => Answer::None("no answer within 60 s".into()),
        None => Answer::None(format!("closed without an answer ({} bytes)", got.len())),
    }
}

async fn send(ep: &Endpoint, case: &Case) -> Answer {
    let (head, body) = request_bytes(case, ep.authorization.as_deref());
    let tcp = match TcpStream::connect(("127.0.0.1", ep.port)).await {
        Ok(t) => t,
        Err(e) => return Answer::None(format!("connect: {e}")),
    };
    match &ep.tls {
        None => exchange(tcp, head, body).await,
        Some(cfg) => {
            let name = match rustls::pki_types::ServerName::try_from("127.0.0.1") {
                Ok(n) => n.to_owned(),
                Err(e) => return Answer::None(e.to_string()),
            };
            match tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
            {
                Ok(tls) => exchange(tls, head, body).await,
                Err(e) => Answer::None(format!("TLS: {e}")),
            }
        }
    }
}

/// Sends every case of every route, `concurrency` at a time, and counts the answers.
pub async fn fire(
    ep: &Endpoint,
    routes: &[Route],
    sizes: Sizes,
    seed: u64,
    concurrency: usize,
) -> Tally {
    let mut rng = Rng::new(seed);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    // One route's cases at a time: the huge bodies of every route at once would not fit.
    for case in routes.iter().flat_map(|r| cases(r, sizes, &mut rng)) {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ep = ep.clone();
        tasks.spawn(async move {
            let answer = send(&ep, &case).await;
            drop(permit);
            let mut t = Tally {
                requests: 1,
                ..Tally::default()
            };
            let shown = || {
                let target = String::from_utf8_lossy(&case.target);
                format!(
                    "{} {}",
                    case.method,
                    target.chars().take(120).collect::<String>()
                )
            };
            match answer {
                Answer::Status(s, body) => {
                    *t.statuses.entry(s).or_default() += 1;
                    if s >= 500 {
                        t.failures.push(format!("{} → {s}: {body}", shown()));
                    }
                }
                Answer::None(why) => {
                    t.unanswered += 1;
                    t.failures.push(format!(
                        "{} (body {} bytes) → {why}",
                        shown(),
                        case.body.as_ref().map_or(0, Vec::len)
                    ));
                }
            }
            t
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(t) = done {
            tally.add(t);
        }
    }
    tally
}

/// [`fire`] from a plain thread.
pub fn fire_blocking(
    ep: &Endpoint,
    routes: &[Route],
    sizes: Sizes,
    seed: u64,
    concurrency: usize,
) -> Tally {
    let (ep, routes) = (ep.clone(), routes.to_vec());
    crate::http::block_on(async move { fire(&ep, &routes, sizes, seed, concurrency).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_cases_follow_the_seed() {
        assert_eq!(fill("/a/{x}/b/{y}", b".."), b"/a/../b/..".to_vec());
        let r = Route::new("POST", "/api/v1/users/{name}/password");
        let a = cases(&r, Sizes::QUICK, &mut Rng::new(7));
        let b = cases(&r, Sizes::QUICK, &mut Rng::new(7));
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.target == y.target && x.body == y.body));
        assert!(a.len() > 400, "{}", a.len());
    }

    #[test]
    fn the_yaml_bomb_is_small() {
        assert!(yaml_bomb().len() < 1024);
    }
}
