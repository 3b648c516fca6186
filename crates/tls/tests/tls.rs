//! End-to-end tests of the TLS crate: real handshakes over loopback TCP with tokio-rustls,
//! file loading errors, fingerprints and `cert_gen` file handling.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use std::path::Path;
use std::sync::Arc;

use autogate_tls::rustls::pki_types::ServerName;
use autogate_tls::rustls::{ClientConfig, ServerConfig};
use autogate_tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const SEC1_FINGERPRINT: &str = "43d14b4d470fad13d516fa48d19f3c08a575fb8b0863e55a5058c9d0faf1aef3";

struct Outcome {
    /// Server side: Ok(peer certificate fingerprints) or the handshake error text.
    server: Result<Vec<String>, String>,
    /// Client side: Ok(()) if it could exchange one byte, else the error text.
    client: Result<(), String>,
}

/// Runs one connection: the server accepts, reads one byte and echoes it; the client writes
/// one byte and reads it back. TLS 1.3 client-certificate rejections only surface on the client
/// at its first read, hence the echo.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let (_, conn) = tls.get_ref();
                assert_eq!(conn.alpn_protocol(), Some(ALPN_HTTP1));
                let peers = conn
                    .peer_certificates()
                    .map(|certs| certs.iter().map(fingerprint_sha256).collect())
                    .unwrap_or_default();
                let mut byte = [0u8; 1];
                if tls.read_exact(&mut byte).await.is_ok() {
                    let _ = tls.write_all(&byte).await;
                    let _ = tls.flush().await;
                }
                Ok(peers)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let connector = TlsConnector::from(client);
    let client_result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .await;
    Outcome {
        server: server_task.await.unwrap(),
        client: client_result,
    }
}

struct Pki {
    ca: Ca,
    server: Issued,
}

fn pki() -> Pki {
    let ca = Ca::generate("test CA", Validity::days(10)).unwrap();
    let server = ca
        .issue(
            CertKind::Server,
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
            Validity::days(10),
        )
        .unwrap();
    Pki { ca, server }
}

fn server_cfg(pki: &Pki, auth: ClientAuth) -> Arc<ServerConfig> {
    server_config(
        vec![pki.server.cert_der().unwrap()],
        pki.server.key_der().unwrap(),
        auth,
    )
    .unwrap()
}

fn client_cfg(pki: &Pki, identity: Option<&Issued>) -> Arc<ClientConfig> {
    client_config(
        Roots::Pem(pki.ca.cert_pem().to_owned()),
        identity.map(|i| (vec![i.cert_der().unwrap()], i.key_der().unwrap())),
        false,
    )
    .unwrap()
}

fn fp(issued: &Issued) -> String {
    fingerprint_sha256(&issued.cert_der().unwrap())
}

#[tokio::test]
async fn mutual_tls_with_a_shared_ca() {
    let pki = pki();
    let node = pki
        .ca
        .issue(CertKind::Node, "node-1", &[], Validity::days(1))
        .unwrap();
    let out = handshake(
        server_cfg(&pki, ClientAuth::Required(vec![pki.ca.cert_der().clone()])),
        client_cfg(&pki, Some(&node)),
    )
    .await;
    assert_eq!(out.server.unwrap(), vec![fp(&node)]);
    out.client.unwrap();
}

#[tokio::test]
async fn any_presented_accepts_a_self_signed_client_and_exposes_it() {
    let pki = pki();
    let node = self_signed(CertKind::Node, "lonely-node", &[], Validity::days(1)).unwrap();
    for mandatory in [false, true] {
        let out = handshake(
            server_cfg(&pki, ClientAuth::AnyPresented { mandatory }),
            client_cfg(&pki, Some(&node)),
        )
        .await;
        assert_eq!(out.server.unwrap(), vec![fp(&node)]);
        out.client.unwrap();
    }
}

#[tokio::test]
async fn any_presented_accepts_a_ca_signed_client() {
    let pki = pki();
    let other_ca = Ca::generate("someone else", Validity::days(1)).unwrap();
    let node = other_ca
        .issue(CertKind::Client, "n", &[], Validity::days(1))
        .unwrap();
    let out = handshake(
        server_cfg(&pki, ClientAuth::AnyPresented { mandatory: true }),
        client_cfg(&pki, Some(&node)),
    )
    .await;
    assert_eq!(out.server.unwrap(), vec![fp(&node)]);
}

#[tokio::test]
async fn expired_client_certificate_is_refused_with_a_clear_error() {
    let pki = pki();
    let expired = self_signed(CertKind::Node, "old", &[], Validity::expired()).unwrap();
    let out = handshake(
        server_cfg(&pki, ClientAuth::AnyPresented { mandatory: false }),
        client_cfg(&pki, Some(&expired)),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("expired"), "{err}");
    assert!(out.client.is_err());

    let future = self_signed(CertKind::Node, "new", &[], Validity::not_yet_valid()).unwrap();
    let out = handshake(
        server_cfg(&pki, ClientAuth::AnyPresented { mandatory: false }),
        client_cfg(&pki, Some(&future)),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("not valid yet"), "{err}");

    // The CA-verified path refuses expired certificates too.
    let expired = pki
        .ca
        .issue(CertKind::Client, "old", &[], Validity::expired())
        .unwrap();
    let out = handshake(
        server_cfg(&pki, ClientAuth::Required(vec![pki.ca.cert_der().clone()])),
        client_cfg(&pki, Some(&expired)),
    )
    .await;
    assert!(out.server.unwrap_err().contains("expired"));
}

#[tokio::test]
async fn missing_client_certificate_depends_on_mandatory() {
    let pki = pki();
    let out = handshake(
        server_cfg(&pki, ClientAuth::AnyPresented { mandatory: true }),
        client_cfg(&pki, None),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(out.client.is_err());

    // Not mandatory: the handshake completes and the application sees no certificate.
    let out = handshake(
        server_cfg(&pki, ClientAuth::AnyPresented { mandatory: false }),
        client_cfg(&pki, None),
    )
    .await;
    assert_eq!(out.server.unwrap(), Vec::<String>::new());
    out.client.unwrap();

    let out = handshake(
        server_cfg(&pki, ClientAuth::Optional(vec![pki.ca.cert_der().clone()])),
        client_cfg(&pki, None),
    )
    .await;
    assert_eq!(out.server.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn client_from_another_ca_is_refused_when_required() {
    let pki = pki();
    let other_ca = Ca::generate("intruder CA", Validity::days(1)).unwrap();
    let intruder = other_ca
        .issue(CertKind::Node, "intruder", &[], Validity::days(1))
        .unwrap();
    for auth in [
        ClientAuth::Required(vec![pki.ca.cert_der().clone()]),
        ClientAuth::Optional(vec![pki.ca.cert_der().clone()]),
    ] {
        let out = handshake(server_cfg(&pki, auth), client_cfg(&pki, Some(&intruder))).await;
        let err = out.server.unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown issuer"),
            "{err}"
        );
        assert!(out.client.is_err());
    }
}

#[tokio::test]
async fn client_checks_the_server_unless_insecure() {
    let pki = pki();
    let rogue = self_signed(CertKind::Server, "localhost", &[], Validity::days(1)).unwrap();
    let rogue_server = server_config(
        vec![rogue.cert_der().unwrap()],
        rogue.key_der().unwrap(),
        ClientAuth::None,
    )
    .unwrap();
    let out = handshake(rogue_server.clone(), client_cfg(&pki, None)).await;
    assert!(out.client.unwrap_err().contains("UnknownIssuer"));

    let insecure = client_config(Roots::Pem(String::new()), None, true).unwrap();
    let out = handshake(rogue_server, insecure).await;
    out.client.unwrap();
    out.server.unwrap();

    // Expired server certificate: refused by a verifying client.
    let expired = pki
        .ca
        .issue(CertKind::Server, "localhost", &[], Validity::expired())
        .unwrap();
    let expired_server = server_config(
        vec![expired.cert_der().unwrap()],
        expired.key_der().unwrap(),
        ClientAuth::None,
    )
    .unwrap();
    let out = handshake(expired_server, client_cfg(&pki, None)).await;
    assert!(out.client.unwrap_err().contains("expired"));
}

#[test]
fn configs_reject_mismatched_keys_and_empty_roots() {
    let pki = pki();
    let other = self_signed(CertKind::Server, "other", &[], Validity::days(1)).unwrap();
    let err = server_config(
        vec![pki.server.cert_der().unwrap()],
        other.key_der().unwrap(),
        ClientAuth::None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = client_config(
        Roots::Pem(pki.ca.cert_pem().to_owned()),
        Some((
            vec![pki.server.cert_der().unwrap()],
            other.key_der().unwrap(),
        )),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(server_config(
        vec![pki.server.cert_der().unwrap()],
        pki.server.key_der().unwrap(),
        ClientAuth::Required(vec![]),
    )
    .is_err());
    let err = client_config(Roots::Pem("nothing here".into()), None, false).unwrap_err();
    assert!(err.is_usage());
    let err = client_config(Roots::File("/nonexistent/ca.pem".into()), None, false).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn fingerprints_are_stable_and_formatted() {
    let certs = load_certs(Path::new(DATA).join("sec1.pem")).unwrap();
    assert_eq!(fingerprint_sha256(&certs[0]), SEC1_FINGERPRINT);
    let info = cert_info(&certs[0]).unwrap();
    assert_eq!(info.fingerprint_sha256, SEC1_FINGERPRINT);
    assert_eq!(info.subject, "CN=sec1");
    assert!(info.self_issued);
    assert!(info.not_before < info.not_after);

    // PEM formatting (CRLF line endings, surrounding text) does not change the fingerprint.
    let pem = std::fs::read_to_string(Path::new(DATA).join("sec1.pem")).unwrap();
    let reformatted = format!("comment line\r\n{}", pem.replace('\n', "\r\n"));
    assert_eq!(
        fingerprint_sha256(&parse_pem_certs(&reformatted).unwrap()[0]),
        SEC1_FINGERPRINT
    );

    let minted = self_signed(CertKind::Node, "n", &[], Validity::days(1)).unwrap();
    let a = fp(&minted);
    assert_eq!(a, fp(&minted));
    assert_eq!(a.len(), 64);
    assert!(a
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

#[test]
fn key_formats_pkcs8_pkcs1_sec1_load_and_match() {
    for name in ["sec1", "pkcs1"] {
        let cert = Path::new(DATA).join(format!("{name}.pem"));
        let key = Path::new(DATA).join(format!("{name}-key.pem"));
        load_identity(&cert, &key).unwrap();
        // And the loaded identity works in a server configuration.
        let (chain, key) = load_identity(&cert, &key).unwrap();
        server_config(chain, key, ClientAuth::None).unwrap();
    }
    let err = load_identity(
        Path::new(DATA).join("sec1.pem"),
        Path::new(DATA).join("pkcs1-key.pem"),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("pkcs1-key.pem") && text.contains("sec1.pem"),
        "{text}"
    );
}

#[test]
fn loading_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = load_certs(&missing).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }));
    assert!(err.to_string().contains("nope.pem"));
    assert!(err.is_usage());

    let not_pem = dir.path().join("junk.pem");
    std::fs::write(&not_pem, "hello world\n").unwrap();
    let err = load_certs(&not_pem).unwrap_err().to_string();
    assert!(
        err.contains("junk.pem") && err.contains("not a PEM file"),
        "{err}"
    );
    let err = load_key(&not_pem).unwrap_err().to_string();
    assert!(err.contains("not a PEM file"), "{err}");

    // A key file given where a certificate is expected, and the reverse.
    let key_only = Path::new(DATA).join("sec1-key.pem");
    let err = load_certs(&key_only).unwrap_err().to_string();
    assert!(err.contains("no certificate inside"), "{err}");
    let err = load_key(Path::new(DATA).join("sec1.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no private key inside"), "{err}");

    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_certs(&broken).unwrap_err().to_string();
    assert!(err.contains("not valid X.509"), "{err}");

    let encrypted = dir.path().join("enc.pem");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_key(&encrypted).unwrap_err().to_string();
    assert!(err.contains("encrypted"), "{err}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn cert_gen_writes_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");

    let err = cert_gen("node", &out, Some("node-1"), &[], 30, None).unwrap_err();
    assert!(matches!(err, TlsError::CaMissing { .. }));
    assert!(
        err.to_string()
            .contains("run `autogate cert-gen ca --output DIR` first"),
        "{err}"
    );

    let written = cert_gen("ca", &out, None, &[], 365, None).unwrap();
    assert_eq!(written, vec![out.join("ca.pem"), out.join("ca-key.pem")]);
    #[cfg(unix)]
    assert_eq!(mode(&out.join("ca-key.pem")), 0o600);

    let written = cert_gen(
        "node",
        &out,
        Some("node-1"),
        &["10.0.0.1".into(), "node-1.lan".into()],
        30,
        None,
    )
    .unwrap();
    assert_eq!(
        written,
        vec![out.join("node-1.pem"), out.join("node-1-key.pem")]
    );
    #[cfg(unix)]
    assert_eq!(mode(&out.join("node-1-key.pem")), 0o600);
    let (chain, _) = load_identity(&written[0], &written[1]).unwrap();
    let info = cert_info(&chain[0]).unwrap();
    assert_eq!(info.subject, "CN=node-1");
    assert_eq!(info.issuer, "CN=autogate CA");

    // No common name: the kind names the files.
    let written = cert_gen("server", &out, None, &[], 30, None).unwrap();
    assert_eq!(written[0], out.join("server.pem"));

    // Refuse to overwrite, naming the file, and leave the existing files untouched.
    let before = std::fs::read(out.join("ca.pem")).unwrap();
    let err = cert_gen("ca", &out, None, &[], 365, None).unwrap_err();
    assert!(matches!(err, TlsError::AlreadyExists { .. }));
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), before);
    let err = cert_gen("node", &out, Some("node-1"), &[], 30, None).unwrap_err();
    assert!(err.to_string().contains("node-1.pem"), "{err}");

    // A separate CA directory.
    let other = dir.path().join("elsewhere");
    let written = cert_gen("client", &other, Some("op"), &[], 1, Some(&out)).unwrap();
    assert_eq!(written[1], other.join("op-key.pem"));

    // Bad arguments.
    assert!(cert_gen("bogus", &out, None, &[], 1, None)
        .unwrap_err()
        .to_string()
        .contains("bogus"));
    assert!(cert_gen("client", &out, Some("x"), &[], 0, None).is_err());
    assert!(cert_gen("client", &out, Some("../escape"), &[], 1, None).is_err());
    assert!(cert_gen("client", &out, Some("a/b"), &[], 1, None).is_err());
}

#[test]
fn cert_gen_reports_a_broken_ca_against_its_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), "not pem").unwrap();
    let err = cert_gen("node", dir.path(), None, &[], 1, None).unwrap_err();
    assert!(err.is_usage());
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!dir.path().join("node.pem").exists());
}

#[test]
fn system_roots_load_or_fail_clearly() {
    // Depends on the machine: either the OS store has CAs, or the error says what to do.
    match client_config(Roots::System, None, false) {
        Ok(_) => {}
        Err(e) => assert!(e.to_string().contains("system trust store"), "{e}"),
    }
}
