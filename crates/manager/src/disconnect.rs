//! Why a gateway's connection was lost, in the words an operator reads in the session history
//! and the page's timeline.
//!
//! The WebSocket, TLS and socket libraries describe a lost connection in their own terms
//! (`IO error: peer closed connection without sending TLS close_notify: https://docs.rs/…`).
//! That text is for whoever debugs the manager, so it goes to the log; the history records one
//! of the few plain sentences of [`ConnectionLoss`], which say what happened from the
//! operator's point of view (the node stopped, the network went quiet, …).

use std::fmt;
use std::io;

use autogate_tls::rustls;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::Error as WsError;

/// How a gateway's connection was lost, without a close frame to explain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLoss {
    /// The connection ended without a WebSocket close frame or TLS `close_notify`: the node's
    /// process was killed or crashed, or something between dropped the connection quietly.
    NoClose,
    /// A TCP reset from the node's side (or a middlebox), also seen as a broken pipe or an
    /// aborted connection when the manager writes.
    Reset,
    /// The operating system gave up on the connection (retransmissions or keepalives
    /// unanswered): the node's host or the network between is gone.
    NetworkTimeout,
    /// Nothing came from the gateway for this many seconds (the manager's silence limit).
    Silent(u64),
    /// The gateway did not read what the manager sent for this many seconds.
    NotReading(u64),
    /// The TLS layer failed: bad record, unexpected alert.
    Tls,
    /// The node broke the WebSocket protocol (bad frame, bad UTF-8 in a text frame, …).
    Protocol,
    /// The WebSocket was already closed (the gateway's close frame came first).
    Closed,
    /// Any other I/O failure.
    Other,
}

impl ConnectionLoss {
    /// Classifies an error of the WebSocket stream (reading or writing). Capacity errors (a
    /// frame above the limit) are the session's own business and come out as
    /// [`ConnectionLoss::Other`].
    pub fn of_ws(e: &WsError) -> ConnectionLoss {
        match e {
            WsError::Io(io) => Self::of_io(io),
            WsError::Tls(_) => ConnectionLoss::Tls,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                ConnectionLoss::NoClose
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed => ConnectionLoss::Closed,
            WsError::Protocol(_) | WsError::Utf8(_) | WsError::AttackAttempt => {
                ConnectionLoss::Protocol
            }
            _ => ConnectionLoss::Other,
        }
    }

    /// Classifies a socket error (rustls reports its failures as I/O errors too).
    pub fn of_io(e: &io::Error) -> ConnectionLoss {
        use io::ErrorKind as K;
        match e.kind() {
            // rustls: "peer closed connection without sending TLS close_notify"; plain TCP:
            // end of stream in the middle of a frame.
            K::UnexpectedEof => ConnectionLoss::NoClose,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ConnectionLoss::Reset,
            K::TimedOut => ConnectionLoss::NetworkTimeout,
            _ if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                ConnectionLoss::Tls
            }
            _ => ConnectionLoss::Other,
        }
    }
}

impl fmt::Display for ConnectionLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionLoss::NoClose => {
                f.write_str("connection lost: the node stopped without closing the session")
            }
            ConnectionLoss::Reset => f.write_str("connection reset by the node"),
            ConnectionLoss::NetworkTimeout => {
                f.write_str("connection lost: the network stopped answering")
            }
            ConnectionLoss::Silent(s) => write!(f, "connection lost: no data for {s} s"),
            ConnectionLoss::NotReading(s) => {
                write!(f, "connection lost: the node did not read for {s} s")
            }
            ConnectionLoss::Tls => {
                f.write_str("connection lost: TLS error (details in the manager's log)")
            }
            ConnectionLoss::Protocol => f.write_str(
                "connection lost: the node broke the WebSocket protocol (details in the manager's log)",
            ),
            ConnectionLoss::Closed => f.write_str("connection closed by the gateway"),
            ConnectionLoss::Other => {
                f.write_str("connection lost: network error (details in the manager's log)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error rustls gives when the peer closes TCP without `close_notify`.
    fn rustls_eof() -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        )
    }

    #[test]
    fn library_errors_become_plain_words() {
        let cases = [
            (
                WsError::Io(rustls_eof()),
                "connection lost: the node stopped without closing the session",
            ),
            (
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                "connection lost: the node stopped without closing the session",
            ),
            (
                WsError::Io(io::ErrorKind::ConnectionReset.into()),
                "connection reset by the node",
            ),
            (
                WsError::Io(io::ErrorKind::BrokenPipe.into()),
                "connection reset by the node",
            ),
            (
                WsError::Io(io::ErrorKind::TimedOut.into()),
                "connection lost: the network stopped answering",
            ),
            (
                WsError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::DecryptError,
                )),
                "connection lost: TLS error (details in the manager's log)",
            ),
            (
                WsError::Protocol(ProtocolError::NonZeroReservedBits),
                "connection lost: the node broke the WebSocket protocol (details in the manager's log)",
            ),
            (WsError::ConnectionClosed, "connection closed by the gateway"),
            (
                WsError::Io(io::ErrorKind::OutOfMemory.into()),
                "connection lost: network error (details in the manager's log)",
            ),
        ];
        for (e, want) in cases {
            let got = ConnectionLoss::of_ws(&e).to_string();
            assert_eq!(got, want, "{e}");
            assert!(!got.contains("https://") && !got.contains("docs.rs"));
        }
        assert_eq!(
            ConnectionLoss::Silent(30).to_string(),
            "connection lost: no data for 30 s"
        );
        assert_eq!(
            ConnectionLoss::NotReading(10).to_string(),
            "connection lost: the node did not read for 10 s"
        );
    }
}
