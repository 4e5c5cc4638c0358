//! 2026-07-28 requests to a stdio server that speaks 2026-07-28 itself (`server_era.rs` said so): passed
//! to a pooled child as they are.
//!
//! What the gateway still does, and why:
//! - **The checks and the pool's rules** (`modern.rs` ran the revision's header checks, tokens and rate
//!   limits before this): a child serves one authorization context only, so a server's per-process
//!   state never crosses users, and requests of one context share children as on the translated path.
//! - **A retry reaches the process that asked**: SDKs seal `requestState` with a key of their process, so
//!   the retry of an `input_required` answer is lent the child that gave it (`pool::lease_resuming`).
//! - **Ids**: many requests share one stdio connection, so each goes out under a gateway id and comes
//!   back with the client's; a progress token is mapped the same way; a subscription's notifications are
//!   tagged with the client's request id again.
//! - **Caching hints**: a request made with a credential gets `cacheScope: private` whatever the server
//!   said, as on the translated path.
//!
//! What it leaves to the server: `server/discover` (its own versions, capabilities and instructions),
//! `input_required` rounds (its own keys and its own `requestState`: no process is parked for a user),
//! `Mcp-Param-*` checks against its own tools, and `subscriptions/listen` (a server that has no such method
//! gets its listen streams acknowledged with nothing by the gateway: it can send no notifications).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::exchange::{self, Exchange, params_of};
use super::modern::{META_SUBSCRIPTION, Record, bad_gateway, drive, lease_refusal};
use super::pool::{self, ChildMsg, Lease, Mode};
use super::protocol::{self as p, Resp};
use super::server_era::ServerEra;
use super::session::Out;
use super::sse::{self, SseBody};
use super::{AppRoute, Gateway};

/// The client's request as the child gets it: everything but the id (the pool gives it one).
pub(super) fn child_request(msg: Value) -> Value {
    let mut m = msg;
    if let Some(obj) = m.as_object_mut() {
        obj.remove("id");
    }
    m
}

/// Answers one modern request (checked, audited by `record`) through a child that speaks 2026-07-28.
#[allow(clippy::too_many_arguments)]
pub(super) async fn post(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    msg: Value,
    scope: &'static str,
    record: Record,
) -> Resp {
    // Alone only for log messages: everything else (input_required included) rides the request's own answer.
    let mode = if exchange::wants_logs(&msg) { Mode::Exclusive } else { Mode::Shared };
    let lent = match params_of(&msg, "requestState").and_then(Value::as_str) {
        Some(state) => pool::lease_resuming(gw, app, route, context, mode, state).await,
        None => pool::lease(gw, app, route, context, mode).await,
    };
    let lease = match lent {
        Ok(l) => l,
        Err(e) => return record.fail(lease_refusal(id, e)),
    };
    match Exchange::start(lease, msg, child_request, scope, ServerEra::Modern) {
        Some(ex) => drive(gw, ex, app, context, record).await,
        None => record.fail(bad_gateway(id, "Bad Gateway: the server process exited")),
    }
}

/// A notification of a subscription's child as its client must see it: the subscription id the server
/// knows (the gateway's request id `n`) becomes the client's request id.
fn retagged(line: &[u8], n: u64, client_id: &Value) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(line) else { return Bytes::copy_from_slice(line) };
    match v.pointer_mut(&format!("/params/_meta/{}", META_SUBSCRIPTION.replace('/', "~1"))) {
        Some(tag) if *tag == json!(n) => *tag = client_id.clone(),
        _ => return Bytes::copy_from_slice(line),
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The client's id on the child's final answer to a subscription (an error, or the end of it).
fn with_client_id(line: &[u8], client_id: &Value) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(line) else { return Bytes::copy_from_slice(line) };
    v["id"] = client_id.clone();
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// `subscriptions/listen` on `lease`, for as long as the stream is open. Whatever the server sends for it
/// reaches the client: the acknowledgement, then the notifications it chose (tagged with the subscription,
/// which is the gateway's request id: `PooledChild` routes them here by it).
///
/// The child is shared with the context's other requests (`Mode::Shared`): a modern server reports the
/// changes of its own process only (the SDKs' subscription bus is in-process), so the calls that change
/// something must reach the process that holds the stream. Requests of the context prefer a child they
/// can share, and this one is such a child. When the client closes the stream the server hears
/// `notifications/cancelled`, which ends its subscription.
pub(super) async fn listen(gw: &Arc<Gateway>, lease: Lease, id: &Value, msg: &Value, record: Record) -> Resp {
    let Some((n, mut rx)) = lease.request(child_request(msg.clone())) else {
        return record.fail(bad_gateway(id, "Bad Gateway: the server process exited"));
    };
    // The first thing the server says decides the answer's shape: a refusal is a plain JSON answer.
    let first = rx.recv().await;
    let first = match first {
        Some(ChildMsg::Response(line)) => {
            let answer: Value = serde_json::from_slice(&line).unwrap_or_default();
            if answer.pointer("/error/code") == Some(&json!(-32601)) {
                // A server without subscriptions has none to offer: acknowledged with nothing, as its
                // capabilities say, rather than failing clients that always listen.
                drop(lease);
                return hold_empty(gw, id, record);
            }
            record.done(200, answer.get("error").is_some());
            return p::json(StatusCode::OK, with_client_id(&line, id));
        }
        Some(ChildMsg::Notification(line, _)) => retagged(&line, n, id),
        Some(ChildMsg::Request(line, c)) => {
            lease.refuse(&line, &c);
            return record.fail(bad_gateway(id, "Bad Gateway: the server asked its client a question"));
        }
        Some(ChildMsg::Exited(why)) => {
            return record.fail(bad_gateway(id, &format!("Bad Gateway: the server process ended: {why}")));
        }
        None => return record.fail(bad_gateway(id, "Bad Gateway: the server process went away")),
    };
    let (sink, stream) = sse::out_channel();
    let _ = sink.send(Out::Frame(sse::data_event(&first)));
    let id = id.clone();
    tokio::spawn(async move {
        let mut error = false;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sink.closed() => break,
            };
            let frame = match msg {
                Some(ChildMsg::Notification(line, _)) => retagged(&line, n, &id),
                Some(ChildMsg::Response(line)) => {
                    let _ = sink.send(Out::Frame(sse::data_event(&with_client_id(&line, &id))));
                    break;
                }
                Some(ChildMsg::Request(line, c)) => {
                    lease.refuse(&line, &c);
                    continue;
                }
                Some(ChildMsg::Exited(_)) | None => {
                    error = true;
                    break;
                }
            };
            if sink.send(Out::Frame(sse::data_event(&frame))).is_err() {
                break;
            }
        }
        if error || sink.is_closed() {
            lease.cancel(n, "the client closed its subscriptions/listen stream");
        }
        drop(lease);
        record.done(200, error);
    });
    p::sse_response(SseBody::new(None, stream, gw.cfg.keepalive_interval, None))
}

/// A listen stream acknowledged with no notification types, open until the client closes it.
fn hold_empty(gw: &Arc<Gateway>, id: &Value, record: Record) -> Resp {
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"_meta": {META_SUBSCRIPTION: id}, "notifications": {}}});
    let (sink, stream) = sse::out_channel();
    let _ = sink.send(Out::Frame(sse::data_event(&serde_json::to_vec(&ack).unwrap_or_default())));
    tokio::spawn(async move {
        sink.closed().await;
        record.done(200, false);
    });
    p::sse_response(SseBody::new(None, stream, gw.cfg.keepalive_interval, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriptions_notifications_carry_the_clients_id() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":7}}}"#;
        let v: Value = serde_json::from_slice(&retagged(line, 7, &json!("client-1"))).unwrap();
        assert_eq!(v["params"]["_meta"][META_SUBSCRIPTION], "client-1");
        // Another subscription's tag (or none) is left alone.
        assert_eq!(&retagged(line, 8, &json!("c"))[..], &line[..]);
        let plain = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        assert_eq!(&retagged(plain, 7, &json!("c"))[..], &plain[..]);
    }

    #[test]
    fn the_child_gets_the_request_without_its_id() {
        let msg = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": {"a": 1}}});
        assert_eq!(
            child_request(msg),
            json!({"jsonrpc": "2.0", "method": "tools/list", "params": {"_meta": {"a": 1}}})
        );
    }
}
