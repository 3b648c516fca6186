//! The manager link through an HTTP proxy: `CONNECT host:port`, then TLS end to end.
//!
//! A site whose machines reach the outside only through a proxy names it in
//! `[connect] proxy_url` (`GATEWAY_CONNECT_PROXY_URL` wins over the file, as for every key), with
//! `proxy_username` / `proxy_password` for basic authentication; without it, the node's
//! `HTTPS_PROXY` (or `https_proxy`) is used, the way the family's Go programs read it. Hosts in
//! `NO_PROXY` (or `no_proxy`) are dialled directly. A proxy taken from the environment is never
//! used for `localhost` or a loopback address (as Go does), so a machine-wide variable does not
//! capture a manager on the same machine; a proxy set in the configuration is meant for the
//! link and is always used, unless `NO_PROXY` names the manager.
//!
//! The tunnel is a few lines of HTTP/1.1, written here rather than taken from a crate because
//! the link needs what the crates reviewed do not give: the proxy's status line in the error
//! (`407 Proxy Authentication Required` is what an operator must see), a bound on the answer's
//! size, and credentials that never reach a log line or an error. The proxy's answer is
//! untrusted input: at most [`MAX_ANSWER`] bytes, within [`ANSWER_TIMEOUT`], and only its
//! printable characters are ever shown. Nothing is read past the blank line that ends the
//! answer, so the TLS handshake that follows starts on a clean stream.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use autogate_config::{Connect, HostPort, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest proxy answer (status line and headers) read before giving up.
pub const MAX_ANSWER: usize = 8 * 1024;
/// Time the proxy has to answer a CONNECT.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a status line an error shows.
const SHOWN_STATUS: usize = 200;

/// A proxy setting that cannot be used: a usage error found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    /// The URL (from the named setting) does not parse. It is never repeated: it may hold a
    /// password.
    #[error("{from}: {reason}; expected http://[user:password@]host[:port]")]
    BadUrl { from: String, reason: String },
    /// TLS to the proxy itself is not supported; the link is TLS end to end through the tunnel.
    #[error("{from}: an https:// proxy (TLS to the proxy itself) is not supported; use the proxy's http:// address: the manager link is TLS end to end through the tunnel anyway")]
    HttpsProxy { from: String },
}

/// Why a tunnel could not be opened. Each is one failed attempt of the link, which retries
/// with its back-off; the text names the proxy (without credentials) and what it said.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("proxy {proxy}: TCP connect: {source}")]
    Connect {
        proxy: String,
        source: std::io::Error,
    },
    #[error("proxy {proxy}: {source}")]
    Io {
        proxy: String,
        source: std::io::Error,
    },
    /// The proxy answered, but not with 2xx: its status line, as sent (printable part).
    #[error("proxy {proxy} refused CONNECT {target}: {status_line}")]
    Refused {
        proxy: String,
        target: String,
        status_line: String,
        /// The status code, when the line had one.
        code: Option<u16>,
    },
    #[error("proxy {proxy}: no answer to CONNECT within {ANSWER_TIMEOUT:?}")]
    Timeout { proxy: String },
    #[error("proxy {proxy}: closed the connection before answering CONNECT")]
    Closed { proxy: String },
    #[error("proxy {proxy}: answer to CONNECT longer than {MAX_ANSWER} bytes")]
    TooLarge { proxy: String },
    #[error("proxy {proxy}: not an HTTP answer to CONNECT: {line}")]
    Malformed { proxy: String, line: String },
}

/// Where the proxy setting came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySource {
    /// `connect.proxy_url` (file or `GATEWAY_CONNECT_PROXY_URL`).
    Config,
    /// The named environment variable (`HTTPS_PROXY` or `https_proxy`).
    Env(String),
}

impl fmt::Display for ProxySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySource::Config => f.write_str("connect.proxy_url"),
            ProxySource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// The proxy the manager link goes through, prepared once at start-up.
#[derive(Clone)]
pub struct Proxy {
    host: String,
    port: u16,
    /// The `Proxy-Authorization` header value (`Basic …`): a secret.
    authorization: Option<Secret>,
    source: ProxySource,
    no_proxy: NoProxy,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.shown())
            .field("authenticated", &self.authorization.is_some())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy for the manager link, if any: `connect.proxy_url` (already resolved from
    /// environment and file), else `HTTPS_PROXY` / `https_proxy`, read through `env`.
    /// `proxy_username` / `proxy_password` win over credentials written in the URL.
    pub fn resolve(
        connect: &Connect,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ProxyConfigError> {
        let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (raw, source) = match &connect.proxy_url {
            Some(url) => (url.clone(), ProxySource::Config),
            None => match ["HTTPS_PROXY", "https_proxy"]
                .iter()
                .find_map(|name| nonempty(name).map(|v| (v, ProxySource::Env((*name).into()))))
            {
                Some(found) => found,
                None => {
                    if connect.proxy_username.is_some() || connect.proxy_password.is_some() {
                        tracing::warn!(
                            "connect.proxy_username / connect.proxy_password are set but no proxy is (connect.proxy_url or HTTPS_PROXY): the manager is dialled directly"
                        );
                    }
                    return Ok(None);
                }
            },
        };
        let parsed = parse_proxy_url(&raw).map_err(|e| match e {
            UrlProblem::Https => ProxyConfigError::HttpsProxy {
                from: source.to_string(),
            },
            UrlProblem::Bad(reason) => ProxyConfigError::BadUrl {
                from: source.to_string(),
                reason,
            },
        })?;
        let user = connect.proxy_username.clone().or(parsed.user);
        let password = match &connect.proxy_password {
            Some(p) => Some(p.expose().to_owned()),
            None => parsed.password,
        };
        let authorization = match (user, password) {
            (Some(u), p) => Some(Secret::new(format!(
                "Basic {}",
                base64(format!("{u}:{}", p.unwrap_or_default()).as_bytes())
            ))),
            (None, Some(_)) => {
                tracing::warn!(
                    "connect.proxy_password is set without connect.proxy_username: the proxy is used without authentication"
                );
                None
            }
            (None, None) => None,
        };
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|name| env(name))
            .map(|v| NoProxy::parse(&v))
            .unwrap_or_default();
        Ok(Some(Proxy {
            host: parsed.host,
            port: parsed.port,
            authorization,
            source,
            no_proxy,
        }))
    }

    /// `http://host:port`: the proxy as logs and errors show it, never with credentials.
    pub fn shown(&self) -> String {
        format!(
            "http://{}",
            HostPort {
                host: self.host.clone(),
                port: self.port
            }
        )
    }

    /// Where the setting came from.
    pub fn source(&self) -> &ProxySource {
        &self.source
    }

    /// Whether the link to `target` goes through this proxy.
    pub fn applies_to(&self, target: &HostPort) -> bool {
        if self.no_proxy.matches(target) {
            return false;
        }
        // Go's rule for proxies from the environment: never for the machine itself.
        if matches!(self.source, ProxySource::Env(_)) && is_local(&target.host) {
            return false;
        }
        true
    }

    /// A TCP stream to `target` through the proxy: connected, CONNECT answered with 2xx.
    pub async fn tunnel(&self, target: &HostPort) -> Result<TcpStream, TunnelError> {
        let proxy = self.shown();
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| TunnelError::Connect {
                proxy: proxy.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(auth.expose());
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let answer = async {
            tcp.write_all(request.as_bytes())
                .await
                .map_err(AnswerProblem::Io)?;
            read_answer(&mut tcp).await
        };
        let head = match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Err(_) => return Err(TunnelError::Timeout { proxy }),
            Ok(Err(AnswerProblem::Io(source))) => return Err(TunnelError::Io { proxy, source }),
            Ok(Err(AnswerProblem::Closed)) => return Err(TunnelError::Closed { proxy }),
            Ok(Err(AnswerProblem::TooLarge)) => return Err(TunnelError::TooLarge { proxy }),
            Ok(Ok(head)) => head,
        };
        let status_line = shown_line(head.split(|&b| b == b'\n').next().unwrap_or_default());
        match status_code(&status_line) {
            Some(code) if (200..300).contains(&code) => Ok(tcp),
            Some(code) => Err(TunnelError::Refused {
                proxy,
                target: target.to_string(),
                status_line,
                code: Some(code),
            }),
            None => Err(TunnelError::Malformed {
                proxy,
                line: status_line,
            }),
        }
    }
}

enum AnswerProblem {
    Io(std::io::Error),
    Closed,
    TooLarge,
}

/// Reads up to and including the blank line that ends the answer's head, and not one byte
/// more: what follows belongs to the TLS handshake. One byte per read is fine for the few
/// hundred bytes of a proxy's answer, once per connection.
async fn read_answer(tcp: &mut TcpStream) -> Result<Vec<u8>, AnswerProblem> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    loop {
        match tcp.read(&mut byte).await {
            Ok(0) => return Err(AnswerProblem::Closed),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(AnswerProblem::Io(e)),
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() >= MAX_ANSWER {
            return Err(AnswerProblem::TooLarge);
        }
    }
}

/// The printable part of one line of the proxy's answer, bounded.
fn shown_line(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter(|c| !c.is_control())
        .take(SHOWN_STATUS)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The code of `HTTP/1.x NNN reason`.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Hosts dialled directly (`NO_PROXY`): comma-separated; `*` for all; `host`, `example.com`
/// (the domain and its subdomains), `.example.com` (subdomains only), an IP address or a CIDR
/// block, each with an optional `:port` — Go's reading of the variable.
#[derive(Debug, Clone, Default)]
struct NoProxy {
    all: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone)]
enum NoProxyEntry {
    Ip(IpAddr, Option<u16>),
    Cidr(IpAddr, u8),
    /// A lowercase domain; `with_host`: the name itself matches too, not only its subdomains.
    Domain {
        suffix: String,
        with_host: bool,
        port: Option<u16>,
    },
}

impl NoProxy {
    fn parse(raw: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.all = true;
                continue;
            }
            if let Some((addr, bits)) = item.split_once('/') {
                if let (Ok(ip), Ok(bits)) = (addr.parse::<IpAddr>(), bits.parse::<u8>()) {
                    out.entries.push(NoProxyEntry::Cidr(ip, bits));
                }
                continue;
            }
            let (host, port) = split_port(item);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                out.entries.push(NoProxyEntry::Ip(ip, port));
                continue;
            }
            let host = host.to_ascii_lowercase();
            let (suffix, with_host) = match host.strip_prefix("*.") {
                Some(rest) => (rest.to_owned(), false),
                None => match host.strip_prefix('.') {
                    Some(rest) => (rest.to_owned(), false),
                    None => (host, true),
                },
            };
            if !suffix.is_empty() {
                out.entries.push(NoProxyEntry::Domain {
                    suffix,
                    with_host,
                    port,
                });
            }
        }
        out
    }

    fn matches(&self, target: &HostPort) -> bool {
        if self.all {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == target.port);
        let ip = target.host.parse::<IpAddr>().ok();
        let host = target.host.to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            NoProxyEntry::Ip(a, p) => ip == Some(*a) && port_ok(p),
            NoProxyEntry::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            NoProxyEntry::Domain {
                suffix,
                with_host,
                port,
            } => {
                let sub = host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|rest| rest.ends_with('.'));
                (sub || (*with_host && host == *suffix)) && port_ok(port)
            }
        })
    }
}

/// `host:port` → (host, port); a bare IPv6 address has no port.
fn split_port(item: &str) -> (&str, Option<u16>) {
    if let Some(rest) = item.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h, p.parse().ok());
        }
        return (item, None);
    }
    match item.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (item, None),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[derive(Debug)]
struct ParsedUrl {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

enum UrlProblem {
    Https,
    Bad(String),
}

/// `http://[user[:password]@]host[:port][/]`; a value without a scheme is taken as http (as Go
/// does for `HTTPS_PROXY=proxy:3128`). The port defaults to 80. Messages never repeat the
/// value: it may hold a password.
fn parse_proxy_url(raw: &str) -> Result<ParsedUrl, UrlProblem> {
    let raw = raw.trim();
    let lower = raw.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        return Err(UrlProblem::Https);
    } else if lower.starts_with("http://") {
        &raw["http://".len()..]
    } else if lower.contains("://") {
        return Err(UrlProblem::Bad(
            "only http:// proxies are supported (no SOCKS)".into(),
        ));
    } else {
        raw
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) || authority.contains(char::is_whitespace) {
        return Err(UrlProblem::Bad(
            "a proxy URL has no path, query or spaces".into(),
        ));
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = percent_decode(user)
                .ok_or_else(|| UrlProblem::Bad("bad %-escape in the user name".into()))?;
            let pass = pass
                .map(|p| {
                    percent_decode(p)
                        .ok_or_else(|| UrlProblem::Bad("bad %-escape in the password".into()))
                })
                .transpose()?;
            (Some(user), pass)
        }
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| UrlProblem::Bad("unclosed '[' in the host".into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlProblem::Bad("junk after the IPv6 address".into())),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(UrlProblem::Bad("no usable host name".into()));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlProblem::Bad("the port must be 1-65535".into()))?,
    };
    Ok(ParsedUrl {
        host: host.to_owned(),
        port,
        user,
        password,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding (RFC 4648), for the one header that needs it.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    fn connect(url: Option<&str>, user: Option<&str>, pass: Option<&str>) -> Connect {
        let mut opts = autogate_config::LoadOptions {
            etc_dir: Some("/nonexistent-autogate-etc".into()),
            ..Default::default()
        };
        opts.env
            .insert("GATEWAY_CONNECT_HOSTS".into(), "manager.example:443".into());
        let mut c = autogate_config::load(&opts).unwrap().connect.clone();
        c.proxy_url = url.map(Into::into);
        c.proxy_username = user.map(Into::into);
        c.proxy_password = pass.map(Secret::new);
        c
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn config_wins_over_environment_and_credentials_over_the_url() {
        let c = connect(Some("http://a:b@proxy.corp:3128"), Some("u"), Some("p"));
        let p = Proxy::resolve(&c, env(&[("HTTPS_PROXY", "http://other:1")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.shown(), "http://proxy.corp:3128");
        assert_eq!(p.source, ProxySource::Config);
        assert_eq!(
            p.authorization.unwrap().expose(),
            format!("Basic {}", base64(b"u:p"))
        );
        // Credentials from the URL when no key is set, %-decoded.
        let c = connect(Some("http://a%40x:b%3Ac@proxy.corp:3128/"), None, None);
        let p = Proxy::resolve(&c, env(&[])).unwrap().unwrap();
        assert_eq!(
            p.authorization.unwrap().expose(),
            format!("Basic {}", base64(b"a@x:b:c"))
        );
    }

    #[test]
    fn environment_is_the_fallback_and_spares_loopback() {
        let c = connect(None, None, None);
        assert!(Proxy::resolve(&c, env(&[])).unwrap().is_none());
        // HTTP_PROXY is for http:// URLs; the link is wss://.
        assert!(Proxy::resolve(&c, env(&[("HTTP_PROXY", "http://p:1")]))
            .unwrap()
            .is_none());
        let p = Proxy::resolve(&c, env(&[("https_proxy", "p.corp:8080")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.shown(), "http://p.corp:8080");
        assert_eq!(p.source, ProxySource::Env("https_proxy".into()));
        assert!(p.applies_to(&hp("manager.example", 443)));
        assert!(!p.applies_to(&hp("127.0.0.1", 443)));
        assert!(!p.applies_to(&hp("localhost", 443)));
        assert!(!p.applies_to(&hp("::1", 443)));
        // A configured proxy is for the link, wherever the manager is.
        let c = connect(Some("http://p:3128"), None, None);
        let p = Proxy::resolve(&c, env(&[])).unwrap().unwrap();
        assert!(p.applies_to(&hp("127.0.0.1", 443)));
        // Default port 80.
        let c = connect(Some("http://p"), None, None);
        assert_eq!(Proxy::resolve(&c, env(&[])).unwrap().unwrap().port, 80);
    }

    #[test]
    fn no_proxy_follows_go() {
        let c = connect(Some("http://p:3128"), None, None);
        let with = |v: &str| {
            Proxy::resolve(&c, env(&[("NO_PROXY", v)]))
                .unwrap()
                .unwrap()
        };
        let p = with("corp.example, .internal,10.0.0.0/8 ,192.168.1.5,[::1]:443,other:8443");
        assert!(!p.applies_to(&hp("corp.example", 443)));
        assert!(!p.applies_to(&hp("m.corp.example", 443)));
        assert!(p.applies_to(&hp("xcorp.example", 443)));
        assert!(!p.applies_to(&hp("a.internal", 443)));
        assert!(p.applies_to(&hp("internal", 443)));
        assert!(!p.applies_to(&hp("10.1.2.3", 443)));
        assert!(p.applies_to(&hp("11.1.2.3", 443)));
        assert!(!p.applies_to(&hp("192.168.1.5", 443)));
        assert!(!p.applies_to(&hp("::1", 443)));
        assert!(p.applies_to(&hp("::1", 444)));
        assert!(!p.applies_to(&hp("other", 8443)));
        assert!(p.applies_to(&hp("other", 443)));
        assert!(!with("*").applies_to(&hp("anything", 1)));
        assert!(with("").applies_to(&hp("anything", 1)));
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for bad in [
            "http://user:s3cret@",
            "http://user:s3cret@host:99999",
            "socks5://user:s3cret@host:1080",
            "http://user:s3cret@host:1/path",
            "http://user:s3cret@ho st:1",
        ] {
            let c = connect(Some(bad), None, None);
            let e = Proxy::resolve(&c, env(&[])).unwrap_err();
            assert!(matches!(e, ProxyConfigError::BadUrl { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
            assert!(e.to_string().contains("connect.proxy_url"), "{e}");
        }
        let c = connect(None, None, None);
        let e = Proxy::resolve(&c, env(&[("HTTPS_PROXY", "https://u:s3cret@p:1")])).unwrap_err();
        assert!(matches!(e, ProxyConfigError::HttpsProxy { .. }), "{e}");
        assert!(e.to_string().contains("HTTPS_PROXY"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        // Debug of the proxy never shows the credentials either.
        let c = connect(Some("http://u:s3cret@p:1"), None, None);
        let p = Proxy::resolve(&c, env(&[])).unwrap().unwrap();
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(!format!("{p:?}").contains(&base64(b"u:s3cret")));
    }

    /// A fake proxy that reads one CONNECT request and answers `answer` bytes.
    async fn fake_proxy(answer: Vec<u8>) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut req = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
                    break;
                }
                req.push_str(&line);
            }
            let mut s = r.into_inner();
            let _ = s.write_all(&answer).await;
            // Keep the connection open a moment so "closed" is not what the client sees.
            tokio::time::sleep(Duration::from_millis(200)).await;
            req
        });
        (port, task)
    }

    fn proxy_at(port: u16, user: Option<&str>) -> Proxy {
        let c = connect(Some(&format!("http://127.0.0.1:{port}")), user, Some("pw"));
        Proxy::resolve(&c, env(&[])).unwrap().unwrap()
    }

    #[tokio::test]
    async fn tunnel_sends_connect_with_credentials_and_takes_2xx() {
        let (port, req) =
            fake_proxy(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n".to_vec()).await;
        let mut tcp = proxy_at(port, Some("u"))
            .tunnel(&hp("manager.example", 8443))
            .await
            .unwrap();
        let req = req.await.unwrap();
        assert!(
            req.starts_with("CONNECT manager.example:8443 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Host: manager.example:8443\r\n"), "{req}");
        assert!(
            req.contains(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(b"u:pw")
            )),
            "{req}"
        );
        // Nothing past the head was consumed: the stream is at its end now.
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // No user: no header.
        let (port, req) = fake_proxy(b"HTTP/1.0 200 OK\r\n\r\n".to_vec()).await;
        proxy_at(port, None).tunnel(&hp("::1", 443)).await.unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("CONNECT [::1]:443 HTTP/1.1\r\n"), "{req}");
        assert!(!req.contains("Proxy-Authorization"), "{req}");
    }

    #[tokio::test]
    async fn refusals_carry_the_status_line_and_hostile_answers_are_bounded() {
        let (port, _req) = fake_proxy(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n".to_vec(),
        )
        .await;
        let e = proxy_at(port, Some("u"))
            .tunnel(&hp("m", 443))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                TunnelError::Refused {
                    code: Some(407),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!("proxy http://127.0.0.1:{port} refused CONNECT m:443: HTTP/1.1 407 Proxy Authentication Required")
        );
        assert!(!e.to_string().contains("pw"));

        let (port, _req) = fake_proxy(b"HTTP/1.1 403 Forbidden\x1b[31m\r\n\r\n".to_vec()).await;
        let e = proxy_at(port, None)
            .tunnel(&hp("m", 443))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "proxy http://127.0.0.1:{port} refused CONNECT m:443: HTTP/1.1 403 Forbidden[31m"
            )
        );

        let (port, _req) = fake_proxy(vec![b'A'; MAX_ANSWER * 2]).await;
        let e = proxy_at(port, None)
            .tunnel(&hp("m", 443))
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::TooLarge { .. }), "{e}");

        let (port, _req) = fake_proxy(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        let e = proxy_at(port, None)
            .tunnel(&hp("m", 443))
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::Malformed { .. }), "{e}");

        let (port, _req) = fake_proxy(b"HTTP/1.1 200 OK\r\n".to_vec()).await;
        let e = proxy_at(port, None)
            .tunnel(&hp("m", 443))
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::Closed { .. }), "{e}");
    }
}
