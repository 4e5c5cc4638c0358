//! The machines' network of the fake: `/6pn/<machine_id>/...` like 6PN (refused while the machine does
//! not listen), `/flycast/<app>/...` like fly-proxy (instance pinned by `fly-force-instance-id`, stopped
//! machines autostarted). Bodies are streamed both ways, so SSE works end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

use super::{Body, Inner, State, err, launch};

/// The machines' network: forwards to a machine's bridge (streamed), like 6PN or fly-proxy.
pub(super) async fn network(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    rest: &str,
    flycast: bool,
) -> Response<Body> {
    let (target, tail) = rest
        .split_once('/')
        .map(|(a, b)| (a.to_string(), format!("/{b}")))
        .unwrap_or((rest.into(), "/".into()));
    let forced = req.headers().get("fly-force-instance-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let addr = {
            let mut guard = inner.state.lock().unwrap();
            let st: &mut State = &mut guard;
            let found = st.apps.iter().find_map(|(name, a)| {
                a.machines
                    .values()
                    .find(|m| {
                        if flycast {
                            name == &target
                                && forced.as_deref().is_none_or(|f| f == m.id)
                                && !m.skip_service_registration
                                && m.state != "destroyed"
                        } else {
                            m.id == target
                        }
                    })
                    .map(|m| (name.clone(), m.id.clone(), m.state.clone(), m.addr))
            });
            let Some((app, id, state, addr)) = found else {
                return err(502, "no machine to route to", "proxy");
            };
            match state.as_str() {
                // fly-proxy starts a stopped machine whose service has autostart (Flycast only).
                "stopped" if flycast => {
                    launch(&inner, st, &app, &id);
                    None
                }
                "started" => addr,
                other => return err(502, &format!("machine {id} is {other}"), "proxy"),
            }
        };
        if let Some(a) = addr {
            break a;
        }
        if !flycast {
            // 6PN has no waiting proxy: a machine that does not listen yet refuses the connection.
            return err(502, "connection refused", "proxy");
        }
        if Instant::now() >= deadline {
            return err(502, "machine did not start listening", "proxy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let method = req.method().clone();
    let mut out = inner.http.request(method, format!("http://{addr}{tail}"));
    for (k, v) in req.headers() {
        if !matches!(k.as_str(), "host" | "connection" | "content-length" | "transfer-encoding") {
            out = out.header(k, v);
        }
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => return err(502, &format!("machine unreachable: {e}"), "proxy"),
    };
    let mut r = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !matches!(k.as_str(), "connection" | "content-length" | "transfer-encoding") {
            r = r.header(k, v);
        }
    }
    let stream = resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    r.body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .unwrap_or_else(|_| err(502, "bad upstream answer", "proxy"))
}
