//! What every HTTP(S) listener does with a new connection before hyper sees it: admit it within the
//! connection caps, and give it a deadline for its first bytes.
//!
//! Why: hyper-util's `auto` builder first reads the start of the connection to choose HTTP/1.1 or
//! HTTP/2, and nothing bounds that wait — hyper's own `header_read_timeout` starts only after the
//! choice. A client that connects and sends nothing, or 23 of the 24 bytes of the HTTP/2 preface, would
//! hold its connection (and a task) forever; a few thousand such clients exhaust file descriptors
//! (slowloris). So [`first_bytes`] reads until the protocol is decided, within a deadline, and hands
//! hyper an IO that replays those bytes; the caps in [`ConnLimits`] bound how many connections any one
//! address, and everyone together, may hold.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4); anything else is HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Caps on open connections: in total, and per client address (0: no cap).
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits { max_total, max_per_ip, open: Mutex::new((0, HashMap::new())) })
    }

    /// Admits a connection from `ip`, or says which cap refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_total > 0 && open.0 >= self.max_total {
            return Err("max_connections");
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Err("max_connections_per_ip");
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Ok(ConnPermit { limits: self.clone(), ip })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Reads the start of `io` until HTTP/1.1 or HTTP/2 can be told apart (or the client closed), within
/// `deadline`; the returned IO replays what was read. `Err` (timed out, or an IO error): drop the
/// connection.
pub async fn first_bytes<S: AsyncRead + Unpin>(mut io: S, deadline: Duration) -> io::Result<Replay<S>> {
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        let mut buf = [0u8; 24];
        while seen.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&seen) {
            let want = H2_PREFACE.len() - seen.len();
            let n = io.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(())) => Ok(Replay { prefix: seen, at: 0, inner: io }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no request started within the deadline")),
    }
}

/// An IO that yields `prefix` before reading from `inner` (writes go straight through).
pub struct Replay<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let start = self.at;
            buf.put_slice(&self.prefix[start..start + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_bytes_read_to_decide_are_replayed() {
        for request in [&b"GET / HTTP/1.1\r\n\r\n"[..], H2_PREFACE, b"P"] {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(request).await.unwrap();
            client.shutdown().await.unwrap();
            let mut io = first_bytes(server, Duration::from_secs(5)).await.unwrap();
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, request);
        }
    }

    #[tokio::test]
    async fn a_stalled_preface_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&H2_PREFACE[..23]).await.unwrap();
        let err = first_bytes(server, Duration::from_millis(50)).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[test]
    fn caps_count_per_address_and_in_total() {
        let limits = ConnLimits::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some("max_connections_per_ip"));
        let _p3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some("max_connections"));
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }
}
