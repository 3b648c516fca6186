//! A cuttable TCP proxy on loopback, to put network faults between two real processes: a node
//! and its etcd, a node and the manager.
//!
//! [`TcpProxy::start`] listens on a free loopback port and forwards every connection to the
//! upstream address, both ways. Faults:
//!
//! * [`cut_refuse`](TcpProxy::cut_refuse) (also [`cut`](TcpProxy::cut)): every live connection
//!   is closed and the listening socket is dropped, so new connects are refused — a process
//!   that went away, a firewall that rejects;
//! * [`cut_blackhole`](TcpProxy::cut_blackhole): nothing is forwarded any more in either
//!   direction, but nothing is closed either: live connections stay open and silent, new
//!   connections are accepted and then hang — a partition, a frozen peer. Requests time out
//!   instead of failing fast;
//! * [`restore`](TcpProxy::restore): forwarding resumes on the same address. Connections held
//!   through a blackhole carry on with the bytes that waited (like TCP after a healed partition);
//!   connections accepted during it are then connected upstream.
//!
//! Every control call returns once the fault is in place. The proxy runs on its own thread and
//! Tokio runtime, so it works from plain `#[test]`s and from async tests alike; dropping it
//! closes everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Refuse,
    Blackhole,
}

enum Control {
    Set(Mode, std::sync::mpsc::Sender<()>),
    Stop,
}

/// A running proxy; see the module documentation.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: String,
    control: mpsc::UnboundedSender<Control>,
    accepted: Arc<AtomicU64>,
    mode: std::sync::Mutex<Mode>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Forward a free loopback port to `upstream` (`host:port`), starting in forwarding mode.
    pub fn start(upstream: &str) -> TcpProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy port");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("proxy address");
        let (control, control_rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let upstream_owned = upstream.to_owned();
        let counter = accepted.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    run(addr, listener, upstream_owned, control_rx, counter).await;
                });
            })
            .expect("spawn proxy thread");
        TcpProxy {
            addr,
            upstream: upstream.to_owned(),
            control,
            accepted,
            mode: std::sync::Mutex::new(Mode::Forward),
            thread: Some(thread),
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, the form `GATEWAY_*_HOSTS` settings take.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Connections accepted so far (in any mode).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Same as [`cut_refuse`](Self::cut_refuse).
    pub fn cut(&self) {
        self.cut_refuse();
    }

    /// Close every live connection and stop listening: connects are refused.
    pub fn cut_refuse(&self) {
        self.set(Mode::Refuse);
    }

    /// Forward nothing, close nothing: live connections go silent, new ones are accepted and hang.
    pub fn cut_blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Forward again, on the same address.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }

    fn set(&self, mode: Mode) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(Control::Set(mode, tx))
            .expect("proxy thread is running");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("proxy applies the mode change");
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    addr: SocketAddr,
    listener: TcpListener,
    upstream: String,
    mut control: mpsc::UnboundedReceiver<Control>,
    accepted: Arc<AtomicU64>,
) {
    let (mode_tx, mode_rx) = watch::channel(Mode::Forward);
    let mut listener = Some(listener);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = control.recv() => {
                let Some(Control::Set(mode, ack)) = c else { break };
                match mode {
                    Mode::Refuse => {
                        // Stop listening first: from now on, connects are refused.
                        listener = None;
                        mode_tx.send_replace(mode);
                        for task in conns.drain(..) {
                            task.abort();
                            let _ = task.await;
                        }
                    }
                    Mode::Forward | Mode::Blackhole => {
                        if listener.is_none() {
                            listener = Some(rebind(addr).await);
                        }
                        mode_tx.send_replace(mode);
                    }
                }
                let _ = ack.send(());
            }
            r = accept => {
                if let Ok((client, _)) = r {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_nodelay(true);
                    conns.retain(|t| !t.is_finished());
                    conns.push(tokio::spawn(connection(client, upstream.clone(), mode_rx.clone())));
                }
            }
        }
    }
    for task in conns {
        task.abort();
    }
}

/// Bind `addr` again after a refusal period (SO_REUSEADDR is set by Tokio on Unix; retry briefly
/// in case the port lingers).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("cannot listen on {addr} again: {last:?}");
}

/// Wait until the proxy forwards; `false` if the proxy is gone.
async fn forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    mode.wait_for(|m| *m == Mode::Forward).await.is_ok()
}

async fn connection(client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    // Accepted during a blackhole: hold the client until forwarding resumes.
    if !forwarding(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, mode.clone());
    let down = pump(sr, cw, mode);
    // When one direction ends, the whole connection ends (both sockets close on drop).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump<R, W>(mut from: R, mut to: W, mut mode: watch::Receiver<Mode>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Reads are cancel-safe: a mode change just re-checks the mode.
            changed = mode.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        // Bytes read just as a blackhole began wait for the restore.
        if !forwarding(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream as StdStream;

    /// An echo server on a free port; every connection echoes until EOF.
    fn echo_server() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(p: &TcpProxy) -> StdStream {
        let s = StdStream::connect(p.addr()).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    fn roundtrip(s: &mut StdStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("echo");
        got
    }

    fn silent_for(s: &mut StdStream, d: Duration) -> bool {
        s.set_read_timeout(Some(d)).expect("timeout");
        let mut b = [0u8; 1];
        let r = s.read(&mut b);
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut)
    }

    #[test]
    fn forwards_both_ways_including_large_transfers() {
        let p = TcpProxy::start(&echo_server());
        let mut s = connect(&p);
        assert_eq!(roundtrip(&mut s, b"hello"), b"hello");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone().expect("clone");
        let sent = big.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).expect("write big"));
        let mut got = vec![0u8; big.len()];
        s.read_exact(&mut got).expect("read big");
        writer.join().expect("writer");
        assert!(got == big, "payload corrupted");
        assert_eq!(p.accepted(), 1);
        assert_eq!(p.mode(), Mode::Forward);
    }

    #[test]
    fn cut_refuse_closes_live_connections_and_refuses_new_ones_until_restored() {
        let p = TcpProxy::start(&echo_server());
        let mut live = connect(&p);
        assert_eq!(roundtrip(&mut live, b"x"), b"x");
        p.cut_refuse();
        let mut b = [0u8; 1];
        match live.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("live connection not closed by the cut: {other:?}"),
        }
        let e = StdStream::connect(p.addr()).expect_err("connect must be refused");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        p.restore();
        let mut again = connect(&p);
        assert_eq!(roundtrip(&mut again, b"back"), b"back");
        // Cutting twice and restoring twice is harmless.
        p.cut();
        p.cut();
        assert!(StdStream::connect(p.addr()).is_err());
        p.restore();
        p.restore();
        let mut third = connect(&p);
        assert_eq!(roundtrip(&mut third, b"3"), b"3");
    }

    #[test]
    fn blackhole_silences_live_and_new_connections_and_restore_delivers_what_waited() {
        let p = TcpProxy::start(&echo_server());
        let mut live = connect(&p);
        assert_eq!(roundtrip(&mut live, b"before"), b"before");
        p.cut_blackhole();
        live.write_all(b"during").expect("writes are accepted");
        assert!(silent_for(&mut live, Duration::from_millis(300)));
        // New connections are accepted, then nothing comes back.
        let mut fresh = connect(&p);
        fresh.write_all(b"new").expect("write");
        assert!(silent_for(&mut fresh, Duration::from_millis(300)));
        p.restore();
        let mut got = [0u8; 6];
        live.read_exact(&mut got)
            .expect("held bytes delivered after restore");
        assert_eq!(&got, b"during");
        let mut got = [0u8; 3];
        fresh
            .read_exact(&mut got)
            .expect("held connection forwarded");
        assert_eq!(&got, b"new");
        assert_eq!(roundtrip(&mut live, b"after"), b"after");
    }

    #[test]
    fn an_upstream_that_is_down_closes_the_client() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let p = TcpProxy::start(&dead);
        let mut s = connect(&p);
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the proxy to close: {other:?}"),
        }
    }
}
