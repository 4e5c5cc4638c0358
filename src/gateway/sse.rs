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

/// A streaming SSE body: frames from the channel, keep-alive comments when idle. It ends when
/// the sender side is dropped (the stream is complete or the session ended).
pub struct SseBody {
    first: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<super::session::Out>,
    keepalive: Interval,
    on_close: Option<Box<dyn OnClose>>,
}

impl SseBody {
    pub fn new(
        first: Option<Bytes>,
        rx: mpsc::UnboundedReceiver<super::session::Out>,
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
