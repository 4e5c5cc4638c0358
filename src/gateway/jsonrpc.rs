//! Raw JSON-RPC message classification.
//!
//! The gateway relays messages byte for byte so that fields and methods it does not know survive
//! the trip. It therefore never builds a full `serde_json::Value`: it borrows the top-level `id`,
//! `method`, and the few `params` members it routes on (`name`, `progressToken`,
//! `_meta.progressToken`, `requestId`), and skips everything else with `IgnoredAny`.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// What a JSON-RPC message is, decided from which top-level members it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `method` and `id`: needs an answer.
    Request,
    /// `method` without `id`.
    Notification,
    /// `id` with `result` or `error` and no `method`.
    Response,
}

/// A normalised request id usable as a map key: numbers keep their JSON text, strings are
/// unescaped, so `"a"` and `"\u0061"` are the same id while `1` and `"1"` stay distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKey {
    Num(Box<str>),
    Str(Box<str>),
}

impl IdKey {
    /// Parse a raw JSON id. `None` for ids JSON-RPC does not allow (null, objects, arrays, bools).
    pub fn from_raw(raw: &RawValue) -> Option<IdKey> {
        let text = raw.get().trim();
        match text.as_bytes().first()? {
            b'"' => serde_json::from_str::<String>(text).ok().map(|s| IdKey::Str(s.into_boxed_str())),
            b'-' | b'0'..=b'9' => Some(IdKey::Num(text.into())),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<&'a RawValue>,
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default)]
    protocol_version: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<&'a RawValue>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
    #[serde(rename = "protocolVersion", borrow, default)]
    protocol_version: Option<Cow<'a, str>>,
}

/// `Some` for every present value, `null` included (plain `Option` would turn `"id": null` into a
/// missing id, and a request with a null id into a notification).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// The routing-relevant facts about one message, plus where its `id` sits in the original bytes
/// (so shared mode can splice a rewritten id in without re-serialising the message).
#[derive(Debug, Clone)]
pub struct Classified {
    pub kind: Kind,
    pub id: Option<IdKey>,
    /// Byte range of the raw `id` value within the message.
    pub id_span: Option<Range<usize>>,
    pub method: Option<Box<str>>,
    /// `params.name` (the tool name of `tools/call`), for audit records.
    pub name: Option<Box<str>>,
    /// `params.progressToken` or `params._meta.progressToken`, as raw JSON text.
    pub progress_token: Option<Box<str>>,
    /// Byte range of that progress token within the message.
    pub progress_span: Option<Range<usize>>,
    /// `params.requestId` (for `notifications/cancelled`): raw text and byte range.
    pub request_id: Option<(IdKey, Range<usize>)>,
    /// `params.protocolVersion` (initialize requests).
    pub protocol_version: Option<Box<str>>,
    /// A response carrying `error`.
    pub is_error: bool,
    /// `params._meta` claims a protocol version: a 2026-07-28 ("modern") request.
    pub claims_version: bool,
}

/// Why a message is not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON at all (JSON-RPC -32700).
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message (JSON-RPC -32600).
    Shape(&'static str),
}

pub(crate) fn span_of(whole: &[u8], part: &RawValue) -> Range<usize> {
    let start = part.get().as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.get().len()
}

/// Classify one JSON object (not an array) without parsing more than the routing members.
pub fn classify(msg: &[u8]) -> Result<Classified, Invalid> {
    // serde_json skips the members it ignores without checking their UTF-8; messages are forwarded
    // byte for byte, so they must be valid UTF-8 as a whole.
    if let Err(e) = std::str::from_utf8(msg) {
        return Err(Invalid::Parse(format!("the message is not valid UTF-8 ({e})")));
    }
    let env: Envelope<'_> = match serde_json::from_slice(msg) {
        Ok(e) => e,
        Err(e) if e.is_syntax() || e.is_eof() => return Err(Invalid::Parse(e.to_string())),
        Err(_) => return Err(Invalid::Shape("a JSON-RPC message must be a JSON object")),
    };
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(Invalid::Shape("the message lacks \"jsonrpc\": \"2.0\""));
    }
    let id = match env.id {
        Some(raw) => match IdKey::from_raw(raw) {
            Some(k) => Some((k, span_of(msg, raw))),
            None if raw.get().trim() == "null" && env.method.is_none() => None,
            None => return Err(Invalid::Shape("\"id\" must be a string or a number")),
        },
        None => None,
    };
    let kind = match (&env.method, &id) {
        (Some(_), Some(_)) => Kind::Request,
        (Some(_), None) => Kind::Notification,
        (None, _) if env.result.is_some() || env.error.is_some() => Kind::Response,
        (None, _) => {
            return Err(Invalid::Shape("the message has neither \"method\" nor \"result\"/\"error\""));
        }
    };
    let mut out = Classified {
        kind,
        id_span: id.as_ref().map(|(_, s)| s.clone()),
        id: id.map(|(k, _)| k),
        method: env.method.map(|m| m.into()),
        name: None,
        progress_token: None,
        progress_span: None,
        request_id: None,
        protocol_version: None,
        is_error: env.error.is_some(),
        claims_version: false,
    };
    if let Some(params) = env.params
        && out.method.is_some()
        && let Ok(p) = serde_json::from_str::<Params<'_>>(params.get())
    {
        out.name = p.name.map(|n| n.into());
        out.claims_version = p.meta.as_ref().is_some_and(|m| m.protocol_version.is_some());
        if let Some(t) = p.progress_token.or(p.meta.and_then(|m| m.progress_token)) {
            out.progress_token = Some(t.get().into());
            out.progress_span = Some(span_of(msg, t));
        }
        out.protocol_version = p.protocol_version.map(|v| v.into());
        if let Some(raw) = p.request_id
            && let Some(k) = IdKey::from_raw(raw)
        {
            out.request_id = Some((k, span_of(msg, raw)));
        }
    }
    Ok(out)
}

/// The first non-whitespace byte: `[` means a batch.
pub fn is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Split a batch into its elements' raw bytes.
pub fn split_batch(body: &[u8]) -> Result<Vec<Bytes>, Invalid> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| Invalid::Parse(e.to_string()))?;
    if items.is_empty() {
        return Err(Invalid::Shape("an empty batch is not a valid JSON-RPC message"));
    }
    Ok(items.into_iter().map(|r| Bytes::copy_from_slice(r.get().as_bytes())).collect())
}

/// Turn a message into one stdio line: JSON whitespace newlines become spaces (a JSON string
/// cannot contain a raw newline, so this never changes a value) and a single `\n` ends it.
pub fn to_line(msg: &[u8]) -> Bytes {
    let mut line = BytesMut::with_capacity(msg.len() + 1);
    line.extend_from_slice(msg);
    for b in line.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    line.extend_from_slice(b"\n");
    line.freeze()
}

/// Replace the bytes in `span` with `with` (used to rewrite ids in shared mode).
pub fn splice(msg: &[u8], span: Range<usize>, with: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + with.len());
    out.extend_from_slice(&msg[..span.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&msg[span.end..]);
    out.freeze()
}

/// Replace several non-overlapping spans at once.
pub fn splice_many(msg: &[u8], mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Bytes {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = BytesMut::with_capacity(msg.len() + 32);
    let mut at = 0;
    for (r, with) in edits {
        if r.start < at || r.end > msg.len() {
            continue;
        }
        out.extend_from_slice(&msg[at..r.start]);
        out.extend_from_slice(&with);
        at = r.end;
    }
    out.extend_from_slice(&msg[at..]);
    out.freeze()
}

/// A JSON-RPC error object as bytes. `id` is raw JSON (`null` when unknown).
pub fn error_body(id: Option<&str>, code: i64, message: &str) -> Bytes {
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{msg}}}}}",
        id.unwrap_or("null")
    ))
}

/// Render an id key back to JSON text.
pub fn id_json(id: &IdKey) -> String {
    match id {
        IdKey::Num(n) => n.to_string(),
        IdKey::Str(s) => serde_json::to_string(&**s).unwrap_or_else(|_| "null".into()),
    }
}

/// Extract `result.protocolVersion` from an initialize response.
pub fn result_protocol_version(msg: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    #[derive(Deserialize)]
    struct E {
        result: Option<R>,
    }
    serde_json::from_slice::<E>(msg).ok()?.result?.protocol_version
}

/// Extract the raw `result` member of a response (shared mode caches the initialize result).
pub fn raw_result(msg: &[u8]) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    let e: E<'_> = serde_json::from_slice(msg).ok()?;
    e.result.map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_ids_and_invalid_utf8() {
        // A request with a null id is refused (MCP ids are strings or integers)...
        let e = classify(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).unwrap_err();
        assert_eq!(e, Invalid::Shape("\"id\" must be a string or a number"));
        // ...while an error response may carry one (JSON-RPC: the id could not be read).
        let r = classify(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).unwrap();
        assert_eq!((r.kind, r.id), (Kind::Response, None));
        // Invalid UTF-8 in a member nobody parses is still refused.
        let bad = b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"x\":\"\xff\"}";
        assert!(matches!(classify(bad), Err(Invalid::Parse(m)) if m.contains("UTF-8")));
    }

    #[test]
    fn classifies_kinds() {
        let r = classify(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"p1"}}}"#).unwrap();
        assert_eq!(r.kind, Kind::Request);
        assert_eq!(r.id, Some(IdKey::Num("7".into())));
        assert_eq!(r.name.as_deref(), Some("echo"));
        assert_eq!(r.progress_token.as_deref(), Some("\"p1\""));
        let n = classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind, Kind::Notification);
        let s = classify(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert_eq!(s.kind, Kind::Response);
        assert_eq!(s.id, Some(IdKey::Str("a".into())));
    }

    #[test]
    fn rejects_bad_messages() {
        assert!(matches!(classify(b"{nope"), Err(Invalid::Parse(_))));
        assert!(matches!(classify(b"42"), Err(Invalid::Shape(_))));
        assert!(matches!(classify(br#"{"id":1,"method":"x"}"#), Err(Invalid::Shape(_))));
        assert!(matches!(classify(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#), Err(Invalid::Shape(_))));
        assert!(matches!(classify(br#"{"jsonrpc":"2.0","id":1}"#), Err(Invalid::Shape(_))));
    }

    #[test]
    fn id_span_splices() {
        let m = br#"{"jsonrpc":"2.0", "id" : "abc","method":"m"}"#;
        let c = classify(m).unwrap();
        let out = splice(m, c.id_span.unwrap(), b"17");
        assert_eq!(&out[..], br#"{"jsonrpc":"2.0", "id" : 17,"method":"m"}"#);
    }

    #[test]
    fn progress_token_span() {
        let m = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"tok"},"name":"x"}}"#;
        let c = classify(m).unwrap();
        let out = splice_many(
            m,
            vec![(c.progress_span.unwrap(), b"\"p9\"".to_vec()), (c.id_span.unwrap(), b"42".to_vec())],
        );
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"_meta":{"progressToken":"p9"},"name":"x"}}"#
        );
    }

    #[test]
    fn escaped_string_ids_are_equal() {
        let a = classify(br#"{"jsonrpc":"2.0","id":"a","method":"m"}"#).unwrap();
        let b = classify(br#"{"jsonrpc":"2.0","id":"\u0061","method":"m"}"#).unwrap();
        assert_eq!(a.id, b.id);
    }

    #[test]
    fn lines_have_no_inner_newlines() {
        let l = to_line(b"{\n\"a\": \"x\\ny\"\r\n}");
        assert_eq!(&l[..], b"{ \"a\": \"x\\ny\"  }\n");
    }

    #[test]
    fn batches_split() {
        assert!(is_batch(b"  [1]"));
        assert_eq!(split_batch(b"[{\"a\":1}, {\"b\":2}]").unwrap().len(), 2);
        assert!(split_batch(b"[]").is_err());
    }
}
