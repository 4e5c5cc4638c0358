//! Server-Sent Events framing and the streaming response body.
//!
//! Frames are formatted once, when a message is routed, so the same bytes go to the live
//! connection and into the session's replay buffer (for `Last-Event-ID` resumption).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// How long a client should wait before reconnecting (the `retry:` field), in milliseconds.
pub const RETRY_MS: u64 = 2000;

/// Sent every keep-alive interval so proxies and clients do not time out an idle stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// One SSE event carrying a JSON-RPC message. The message is a single line (stdio framing
/// guarantees no raw newlines), so one `data:` line suffices.
pub fn event(stream: u64, seq: u64, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 40);
    b.extend_from_slice(b"id: ");
    push_num(&mut b, stream);
    b.extend_from_slice(b"-");
    push_num(&mut b, seq);
    b.extend_from_slice(b"\nevent: message\ndata: ");
    let body = msg.strip_suffix(b"\n").unwrap_or(msg);
    // A bare CR or LF would end the `data:` line early for an SSE reader. Outside strings they are
    // JSON whitespace and inside strings JSON cannot hold them raw, so a space changes no value.
    if body.iter().any(|&c| c == b'\r' || c == b'\n') {
        b.extend(body.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }));
    } else {
        b.extend_from_slice(body);
    }
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// One SSE event without an id, for 2026-07-28 response streams (they are not resumable).
pub fn data_event(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 24);
    b.extend_from_slice(b"event: message\ndata: ");
    let body = msg.strip_suffix(b"\n").unwrap_or(msg);
    b.extend(body.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }));
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// The 2025-11-25 priming event: an event id with empty data, plus the reconnect delay, so a
/// client can resume the stream even if no message was sent on it yet.
pub fn priming(stream: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(48);
    b.extend_from_slice(b"id: ");
    push_num(&mut b, stream);
    b.extend_from_slice(b"-0\nretry: ");
    push_num(&mut b, RETRY_MS);
    b.extend_from_slice(b"\ndata: \n\n");
    b.freeze()
}

fn push_num(b: &mut BytesMut, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(&buf[i..]);
}

/// Parse an event id `STREAM-SEQ` as produced by [`event`].
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (s, q) = id.trim().split_once('-')?;
    Some((s.parse().ok()?, q.parse().ok()?))
}

/// Something that must happen when a stream's HTTP connection goes away (the session uses it
/// to count open streams for the dead-client reaper).
pub trait OnClose: Send + Sync {
    fn closed(&self);
}

/// Most bytes of one response stream waiting for a client that does not read (1 MiB). Past it the
/// stream is treated as disconnected: its sender is dropped, the body ends, and the client can resume
/// from the session's replay buffer with `Last-Event-ID` — the daemon never buffers without bound.
const MAX_STREAM_QUEUE: usize = 1 << 20;

/// A channel of one response stream's messages whose queued bytes are counted.
pub fn out_channel() -> (OutSink, OutStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (OutSink { tx, queued: queued.clone() }, OutStream { rx, queued })
}

/// The session's end of a response stream.
#[derive(Clone)]
pub struct OutSink {
    tx: mpsc::UnboundedSender<super::session::Out>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl OutSink {
    /// Sends a message; `Err` when the client is gone or has more than [`MAX_STREAM_QUEUE`] bytes
    /// unread (the caller then drops this sink, which ends the body).
    pub fn send(&self, out: super::session::Out) -> Result<(), ()> {
        use std::sync::atomic::Ordering;
        let len = out.len();
        if self.queued.load(Ordering::Acquire) + len > MAX_STREAM_QUEUE {
            return Err(());
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
        self.tx.send(out).map_err(|_| ())
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the HTTP body reading this stream is gone (the client closed the stream).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The HTTP body's end of a response stream.
pub struct OutStream {
    rx: mpsc::UnboundedReceiver<super::session::Out>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl OutStream {
    pub async fn recv(&mut self) -> Option<super::session::Out> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<super::session::Out>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(out)) = &polled {
            self.queued.fetch_sub(out.len(), std::sync::atomic::Ordering::AcqRel);
        }
        polled
    }
}

/// A streaming SSE body: frames from the channel, keep-alive comments when idle. It ends when
/// the sender side is dropped (the stream is complete or the session ended).
pub struct SseBody {
    first: Option<Bytes>,
    rx: OutStream,
    keepalive: Interval,
    on_close: Option<Box<dyn OnClose>>,
}

impl SseBody {
    pub fn new(
        first: Option<Bytes>,
        rx: OutStream,
        keepalive: Duration,
        on_close: Option<Box<dyn OnClose>>,
    ) -> Self {
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        SseBody { first, rx, keepalive, on_close }
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(b));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                self.keepalive.reset();
                return Poll::Ready(Some(b.into_bytes()));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        match Pin::new(&mut self.keepalive).poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Bytes::from_static(KEEPALIVE))),
            Poll::Pending => Poll::Pending,
        }
    }

    pub fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.poll_next(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if let Some(c) = self.on_close.take() {
            c.closed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose reader stops: sends fail once 1 MiB waits, and work again once it was read.
    #[tokio::test]
    async fn an_unread_stream_stops_taking_messages_at_one_mib() {
        let (sink, mut stream) = out_channel();
        let chunk = Bytes::from(vec![b'x'; 64 << 10]);
        let mut sent = 0;
        while sink.send(super::super::session::Out::Frame(chunk.clone())).is_ok() {
            sent += 1;
            assert!(sent <= 16, "more than 1 MiB was queued");
        }
        assert_eq!(sent, 16);
        stream.recv().await.unwrap();
        assert!(sink.send(super::super::session::Out::Frame(chunk)).is_ok());
    }

    #[test]
    fn frames() {
        assert_eq!(&event(3, 12, b"{\"a\":1}\n")[..], b"id: 3-12\nevent: message\ndata: {\"a\":1}\n\n");
        assert_eq!(&priming(0)[..], b"id: 0-0\nretry: 2000\ndata: \n\n");
        assert_eq!(parse_event_id("3-12"), Some((3, 12)));
        assert_eq!(parse_event_id("x"), None);
    }

    #[test]
    fn line_breaks_inside_a_message_do_not_end_the_data_line() {
        assert_eq!(
            &event(1, 2, b"{\"jsonrpc\":\"2.0\",\r\"method\":\"x\"}\r\n")[..],
            b"id: 1-2\nevent: message\ndata: {\"jsonrpc\":\"2.0\", \"method\":\"x\"} \n\n"
        );
    }
}
