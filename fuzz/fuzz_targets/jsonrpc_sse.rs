//! The gateway's JSON-RPC and SSE framing (`gateway::jsonrpc`, `gateway::sse`) and its Streamable HTTP
//! header rules (`gateway::protocol`), reached through `catwalk::fuzzing`.
//!
//! The input is used as: a request body (classify, batch split, stdio line framing, id splicing), a
//! line a server wrote on stdout (classified, then framed as an SSE event exactly as a session does),
//! a `Last-Event-ID` value, and header values.
//!
//! Invariants: no panic; spans point at the values they name and splicing them yields a message that
//! classifies the same way; a stdio line holds exactly one newline, at its end; an SSE event, read back
//! by a parser that follows the SSE spec (lines end at CR, LF or CRLF), is one event with the id it was
//! given and the message as its data; error bodies are JSON-RPC errors with the id they were given;
//! `Last-Event-ID`s round-trip; a header check only accepts what its rule allows.
#![no_main]

use catwalk::fuzzing::headers;
use catwalk::fuzzing::jsonrpc::{self, IdKey, Kind};
use catwalk::fuzzing::sse;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// One parsed SSE event: its `id` field and its data (the `data` lines joined by `\n`).
#[derive(Debug, PartialEq)]
struct Event {
    id: Option<String>,
    data: String,
}

/// An SSE reader as the spec (and the MCP SDKs' parsers) define it: lines end at CRLF, CR or LF; a
/// blank line dispatches the event; `:` starts a comment; one space after the field's colon is dropped.
fn read_sse(stream: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let (mut id, mut data, mut has_data) = (None, String::new(), false);
    let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalised.split('\n') {
        if line.is_empty() {
            if has_data {
                events.push(Event {
                    id: id.clone(),
                    data: data.strip_suffix('\n').unwrap_or(&data).to_string(),
                });
            }
            (data, has_data) = (String::new(), false);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
                has_data = true;
            }
            "id" => id = Some(value.to_string()),
            _ => {}
        }
    }
    events
}

fn body(data: &[u8]) {
    if jsonrpc::is_batch(data) {
        if let Ok(items) = jsonrpc::split_batch(data) {
            assert!(!items.is_empty());
            for item in items {
                let _ = jsonrpc::classify(&item);
            }
        }
        return;
    }
    let Ok(c) = jsonrpc::classify(data) else { return };
    assert_eq!(c.kind == Kind::Request, c.method.is_some() && c.id.is_some());
    // Spans name the raw values they were taken from.
    if let Some(span) = c.id_span.clone() {
        let raw =
            serde_json::from_slice::<&serde_json::value::RawValue>(&data[span.clone()]).expect("id span");
        assert_eq!(IdKey::from_raw(raw), c.id);
        let spliced = jsonrpc::splice(data, span, b"17");
        let again = jsonrpc::classify(&spliced).expect("a spliced message still classifies");
        assert_eq!(again.id, Some(IdKey::Num("17".into())));
        assert_eq!((again.kind, &again.method), (c.kind, &c.method));
    }
    if let (Some(span), Some(token)) = (c.progress_span.clone(), c.progress_token.as_deref()) {
        assert_eq!(&data[span.clone()], token.as_bytes());
        let mut edits = vec![(span, b"\"p9\"".to_vec())];
        if let Some(id_span) = c.id_span.clone() {
            edits.push((id_span, b"42".to_vec()));
        }
        let again = jsonrpc::classify(&jsonrpc::splice_many(data, edits)).expect("splice_many");
        assert_eq!(again.progress_token.as_deref(), Some("\"p9\""));
    }
    if let Some((id, span)) = c.request_id.clone() {
        let raw =
            serde_json::from_slice::<&serde_json::value::RawValue>(&data[span]).expect("requestId span");
        assert_eq!(IdKey::from_raw(raw), Some(id));
    }
    // Framed for a child's stdin: one line, same message.
    let line = jsonrpc::to_line(data);
    assert!(line.ends_with(b"\n"));
    assert!(!line[..line.len() - 1].iter().any(|b| *b == b'\n' || *b == b'\r'));
    let again = jsonrpc::classify(&line).expect("a framed line still classifies");
    assert_eq!((again.kind, &again.id, &again.method), (c.kind, &c.id, &c.method));
    // An error answering it.
    let id = c.id.as_ref().map(jsonrpc::id_json);
    let message = String::from_utf8_lossy(&data[..data.len().min(64)]);
    let err = jsonrpc::error_body(id.as_deref(), -32000, &message);
    let e = jsonrpc::classify(&err).expect("error bodies are JSON-RPC");
    assert!(e.kind == Kind::Response && e.is_error && e.id == c.id, "{err:?}");
}

/// A line the server wrote on stdout, routed to an SSE stream the way a session does it.
fn stdout_line(data: &[u8], stream: u64, seq: u64) {
    let end = data.iter().position(|b| *b == b'\n').map_or(data.len(), |i| i + 1);
    let line = &data[..end];
    let Ok(c) = jsonrpc::classify(line) else { return };
    // Whatever `classify` accepts is relayed byte for byte, so it must be UTF-8 as a whole.
    assert!(std::str::from_utf8(line).is_ok(), "classify accepted invalid UTF-8: {line:?}");
    let _ = jsonrpc::result_protocol_version(line);
    let _ = jsonrpc::raw_result(line);
    if c.kind == Kind::Response
        && let Some(id) = &c.id
    {
        assert!(jsonrpc::classify(jsonrpc::id_json(id).as_bytes()).is_err());
    }
    let frame = sse::event(stream, seq, line);
    let text = std::str::from_utf8(&frame).expect("a classified message is UTF-8");
    let events = read_sse(text);
    assert_eq!(events.len(), 1, "one message became {} SSE events: {text:?}", events.len());
    let expected_id = format!("{stream}-{seq}");
    assert_eq!(events[0].id.as_deref(), Some(expected_id.as_str()));
    assert_eq!(sse::parse_event_id(&expected_id), Some((stream, seq)));
    // The data is the message with CR/LF (JSON whitespace; raw ones cannot sit inside strings) as
    // spaces, compared byte for byte (not re-parsed: a number like 1e999 is valid JSON no f64 holds).
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let expected: Vec<u8> = body.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }).collect();
    assert_eq!(events[0].data.as_bytes(), &expected[..], "the SSE data is not the message: {text:?}");
    // The priming event: the stream's first id (`S-0`) and empty data.
    let priming = read_sse(std::str::from_utf8(&sse::priming(stream)).unwrap());
    assert_eq!(priming, [Event { id: Some(format!("{stream}-0")), data: String::new() }]);
}

fn headers_checks(data: &[u8]) {
    let mut parts = data.split(|b| *b == b'\n');
    let mut map = HeaderMap::new();
    for name in ["accept", "content-type", "mcp-protocol-version", "host", "origin"] {
        if let Some(v) = parts.next()
            && !v.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(v)
        {
            map.insert(name, v);
        }
    }
    let _ = headers::check_post_accept(&map);
    let _ = headers::check_get_accept(&map);
    let _ = headers::check_content_type(&map);
    if let Ok(Some(v)) = headers::header_version(&map, None) {
        assert!(headers::KNOWN_VERSIONS.contains(&v), "{v:?}");
        let _ = headers::batches_allowed(v);
    }
    let none: &[String] = &[];
    if map.contains_key("origin") {
        assert!(
            headers::check_origin(&map, none, None, false).is_err(),
            "an Origin passed with no allowed origins"
        );
    }
    let _ = headers::check_origin(&map, none, Some("https://deploy.example"), true);
    // The next input line plays an HTTP/2 `:authority`: it must pass the same rule as Host.
    let authority = parts.next().and_then(|a| std::str::from_utf8(a).ok()).filter(|a| !a.is_empty());
    assert!(headers::check_host(&map, authority, false).is_ok());
    if let Some(a) = authority
        && headers::check_host(&HeaderMap::new(), Some(a), true).is_ok()
    {
        let a = a.trim().to_ascii_lowercase();
        assert!(
            a.starts_with("localhost") || a.starts_with("127.0.0.1") || a.starts_with("[::1"),
            "authority {a:?} passed the loopback check"
        );
    }
    if headers::check_host(&map, None, true).is_ok()
        && let Some(host) = map.get("host").and_then(|h| h.to_str().ok())
    {
        // Lenient on malformed values a browser never sends (`[::1` without `]`, `127.0.0.1:x`), which
        // DNS rebinding cannot produce; strict on the host itself.
        let h = host.trim().to_ascii_lowercase();
        assert!(
            h.starts_with("localhost") || h.starts_with("127.0.0.1") || h.starts_with("[::1"),
            "Host {host:?} passed the loopback check"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    body(data);
    let (stream, seq) = match data {
        [a, b, ..] => (u64::from(*a) << 40 | u64::from(*b), u64::from(*b) * 1_000_003),
        _ => (0, 1),
    };
    stdout_line(data, stream, seq);
    stdout_line(data.get(2..).unwrap_or_default(), stream, seq);
    if let Ok(text) = std::str::from_utf8(data)
        && let Some((s, q)) = sse::parse_event_id(text)
    {
        assert_eq!(sse::parse_event_id(&format!("{s}-{q}")), Some((s, q)));
    }
    headers_checks(data);
});
