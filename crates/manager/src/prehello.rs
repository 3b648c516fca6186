//! The frame limit of a gateway connection before its `hello` is accepted.
//!
//! Until the manager knows which cluster a connection speaks for, it has no reason to buffer
//! more than a `hello` needs: [`PRE_HELLO_LIMIT`] bytes per message, far below
//! `manager.max_frame_size`. The WebSocket library's own limit is fixed when the stream is
//! built, so this one sits below it, on the bytes themselves: [`Guarded`] wraps the upgraded
//! connection and follows the client's frame headers as they are read. A header that announces
//! a frame (or a fragmented message) above the limit fails the read before its payload is
//! buffered, and the reason is kept in the shared [`Gate`] so the session can close with 1009
//! and say why. Once `hello` is accepted the session lifts the gate and the wrapper only passes
//! bytes through; from then on `manager.max_frame_size` applies, as before.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest message a connection may send before its `hello` is accepted. A `hello` lists the
/// cluster's nodes, runners included (about 150 bytes each): 32 KiB leaves room for about two
/// hundred, while a connection that has not proven who it is holds at most this much.
pub const PRE_HELLO_LIMIT: usize = 32 * 1024;

/// Shared between a [`Guarded`] stream and its session: whether the limit still applies and
/// why it tripped.
#[derive(Debug)]
pub struct Gate {
    limit: usize,
    lifted: AtomicBool,
    tripped: Mutex<Option<String>>,
}

impl Gate {
    /// A gate closed at `limit` bytes per message.
    pub fn new(limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limit,
            lifted: AtomicBool::new(false),
            tripped: Mutex::new(None),
        })
    }

    /// `hello` was accepted: no more limit of this gate's own.
    pub fn lift(&self) {
        self.lifted.store(true, Ordering::Release);
    }

    /// Why the limit tripped, if it did: the close reason.
    pub fn tripped(&self) -> Option<String> {
        self.tripped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn trip(&self, reason: String) {
        *self.tripped.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}

/// Follows client-to-server WebSocket frame headers (RFC 6455 §5.2) across reads.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: u64,
    /// Payload of the data message being received so far (fragments added up).
    message: u64,
}

impl Frames {
    /// Feeds bytes just read; `Err(size)` when a message grows above `limit`.
    fn feed(&mut self, mut bytes: &[u8], limit: u64) -> Result<(), u64> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7F;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let len = match ext {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(b)
                }
            };
            let fin = self.header[0] & 0x80 != 0;
            let opcode = self.header[0] & 0x0F;
            // Control frames (8 and up) sit between fragments and are limited by the protocol.
            if opcode < 8 {
                if opcode != 0 {
                    self.message = 0;
                }
                self.message = self.message.saturating_add(len);
                if self.message > limit {
                    return Err(self.message);
                }
                if fin {
                    self.message = 0;
                }
            }
            self.payload_left = len;
            self.have = 0;
        }
        Ok(())
    }
}

/// The upgraded connection under the pre-`hello` limit (see the module documentation).
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    gate: Arc<Gate>,
    frames: Frames,
    /// The limit tripped: bytes pass through from now on (the session is closing).
    done: bool,
}

impl<S> Guarded<S> {
    /// `inner` under `gate`.
    pub fn new(inner: S, gate: Arc<Gate>) -> Self {
        Guarded {
            inner,
            gate,
            frames: Frames::default(),
            done: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if this.done || this.gate.lifted.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let limit = this.gate.limit as u64;
        if let Err(size) = this.frames.feed(&buf.filled()[before..], limit) {
            this.done = true;
            let reason =
                format!("a frame of {size} bytes before hello exceeds the limit of {limit} bytes");
            this.gate.trip(reason.clone());
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A masked client frame header for a payload of `len` bytes.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![u8::from(fin) << 7 | opcode];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn frames_under_the_limit_pass_byte_by_byte_and_at_once() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 1000, 8192] {
            stream.extend(frame(true, 1, len));
            stream.extend(frame(true, 9, 4)); // a ping between messages
        }
        let mut f = Frames::default();
        assert_eq!(f.feed(&stream, 8192), Ok(()));
        let mut f = Frames::default();
        for b in &stream {
            assert_eq!(f.feed(std::slice::from_ref(b), 8192), Ok(()));
        }
        assert_eq!(f.have, 0);
        assert_eq!(f.payload_left, 0);
    }

    #[test]
    fn a_large_header_trips_before_its_payload() {
        let mut f = Frames::default();
        assert_eq!(
            f.feed(&header(true, 1, 64 * 1024), 32 * 1024),
            Err(64 * 1024)
        );
        let mut f = Frames::default();
        assert_eq!(f.feed(&header(true, 2, u64::MAX), 32 * 1024), Err(u64::MAX));
    }

    #[test]
    fn fragments_add_up() {
        let mut f = Frames::default();
        let mut s = frame(false, 1, 6000);
        s.extend(frame(true, 9, 0));
        s.extend(frame(false, 0, 6000));
        assert_eq!(f.feed(&s, 16_000), Ok(()));
        assert_eq!(f.feed(&frame(true, 0, 6000), 16_000), Err(18_000));
        // A finished message starts the count again.
        let mut f = Frames::default();
        for _ in 0..10 {
            assert_eq!(f.feed(&frame(true, 1, 6000), 16_000), Ok(()));
        }
    }
}
