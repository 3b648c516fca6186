//! The accept loop over loopback TCP: connections reach the handler with their peer's
//! certificate, a silent client is dropped after the handshake timeout without blocking
//! anyone, the connection cap refuses the one too many until a slot is freed, a failed
//! handshake is reported, and cancelling the token closes the port and ends every task.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autogate_tls::rustls::pki_types::ServerName;
use autogate_tls::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Event {
    /// The connection, handed to the test so it decides how long the slot is held.
    Conn(Box<Accepted>),
    Failed(SocketAddr, &'static str),
}

#[derive(Debug)]
struct Recorder(mpsc::UnboundedSender<Event>);

impl AcceptHandler for Recorder {
    async fn accepted(&self, conn: Accepted) {
        let _ = self.0.send(Event::Conn(Box::new(conn)));
    }

    fn failed(&self, addr: SocketAddr, failure: HandshakeFailure) {
        let _ = self.0.send(Event::Failed(addr, failure.as_str()));
    }
}

struct Port {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    token: CancellationToken,
    tracker: TaskTracker,
    server: Issued,
}

impl Port {
    async fn start(options: AcceptOptions) -> Port {
        let server = self_signed(
            CertKind::Server,
            "localhost",
            &["127.0.0.1".into()],
            Validity::days(1),
        )
        .unwrap();
        let config = server_config(
            vec![server.cert_der().unwrap()],
            server.key_der().unwrap(),
            ClientAuth::AnyPresented { mandatory: false },
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            config,
            options,
            Arc::new(Recorder(tx)),
            token.clone(),
            tracker.clone(),
        ));
        Port {
            addr,
            events,
            token,
            tracker,
            server,
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event from the accept loop")
            .expect("the handler is alive")
    }

    async fn next_conn(&mut self) -> Accepted {
        match self.next().await {
            Event::Conn(c) => *c,
            other => panic!("expected a connection, got {other:?}"),
        }
    }

    async fn next_failure(&mut self) -> (SocketAddr, &'static str) {
        match self.next().await {
            Event::Failed(addr, why) => (addr, why),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// A TLS client trusting the port's certificate, presenting `identity`.
    async fn connect(
        &self,
        identity: Option<&Issued>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = client_config(
            Roots::Pem(self.server.cert_pem.clone()),
            identity.map(|i| (vec![i.cert_der().unwrap()], i.key_der().unwrap())),
            false,
        )
        .unwrap();
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    }
}

fn options(handshake_timeout: Duration, max_connections: usize) -> AcceptOptions {
    AcceptOptions {
        handshake_timeout,
        max_connections,
    }
}

#[tokio::test]
async fn connections_reach_the_handler_with_their_peer_certificate() {
    let mut port = Port::start(options(WAIT, 8)).await;
    let client = self_signed(CertKind::Node, "node-1", &[], Validity::days(1)).unwrap();
    let tls = port.connect(Some(&client)).await.unwrap();
    let conn = port.next_conn().await;
    assert_eq!(conn.addr, tls.get_ref().0.local_addr().unwrap());
    let presented = conn.stream.get_ref().1.peer_certificates().unwrap();
    assert_eq!(
        fingerprint_sha256(&presented[0]),
        fingerprint_sha256(&client.cert_der().unwrap())
    );
    // Without a certificate too (the port does not require one).
    let _tls = port.connect(None).await.unwrap();
    let conn = port.next_conn().await;
    assert!(conn.stream.get_ref().1.peer_certificates().is_none());
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_timeout_and_blocks_nobody() {
    let mut port = Port::start(options(Duration::from_millis(300), 8)).await;
    let silent = TcpStream::connect(port.addr).await.unwrap();
    // Meanwhile a real client gets through at once.
    let _tls = port.connect(None).await.unwrap();
    port.next_conn().await;
    let (addr, why) = port.next_failure().await;
    assert_eq!(why, "timeout");
    assert_eq!(addr, silent.local_addr().unwrap());
}

#[tokio::test]
async fn a_failed_handshake_is_reported() {
    let mut port = Port::start(options(WAIT, 8)).await;
    let mut plain = TcpStream::connect(port.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (addr, why) = port.next_failure().await;
    assert_eq!((addr, why), (plain.local_addr().unwrap(), "error"));
}

#[tokio::test]
async fn the_cap_refuses_one_too_many_until_a_slot_is_freed() {
    let mut port = Port::start(options(WAIT, 1)).await;
    let _first = port.connect(None).await.unwrap();
    let held = port.next_conn().await;
    // The one slot is held: the next connection is closed before any handshake.
    assert!(port.connect(None).await.is_err());
    assert_eq!(port.next_failure().await.1, "overload");
    // Only the slot counts: the stream may live on without it.
    let Accepted { stream, slot, .. } = held;
    drop(slot);
    let _again = port.connect(None).await.unwrap();
    port.next_conn().await;
    drop(stream);
}

#[tokio::test]
async fn cancelling_closes_the_port_and_ends_every_task() {
    let mut port = Port::start(options(WAIT, 8)).await;
    // A handshake in progress when the token fires is abandoned.
    let _silent = TcpStream::connect(port.addr).await.unwrap();
    let _tls = port.connect(None).await.unwrap();
    port.next_conn().await;
    port.token.cancel();
    port.tracker.close();
    tokio::time::timeout(WAIT, port.tracker.wait())
        .await
        .expect("every task ended");
    assert!(TcpStream::connect(port.addr).await.is_err());
    // The silent client was never reported: its handshake was abandoned, not failed.
    assert!(port.events.try_recv().is_err());
}

#[test]
fn failure_labels_are_fixed() {
    assert_eq!(HandshakeFailure::Overload.as_str(), "overload");
    assert_eq!(HandshakeFailure::Timeout.as_str(), "timeout");
    let e = HandshakeFailure::Error(std::io::ErrorKind::InvalidData.into());
    assert_eq!(e.as_str(), "error");
}
