//! `Mcp-Param-{Name}` headers (MCP 2026-07-28, SEP-2243): a tool may mark an argument of its inputSchema with
//! `x-mcp-header: "Name"`, and a 2026-07-28 client calling it over Streamable HTTP mirrors the argument into
//! `Mcp-Param-Name`, so that load balancers and gateways can route on it without parsing bodies. The server
//! that acts on the body must check that the two agree, or an intermediary could have routed on one value
//! while the tool runs with another.
//!
//! A handshake-era stdio server knows nothing of this, and its clients' HTTP server is catwalk: so catwalk
//! checks. It learns the annotations of a release from its `tools/list` (once per release, `modern.rs`), and
//! refuses a call (400, -32020) whose header disagrees with its argument, that omits a header whose argument is
//! in the body, or that sends one for an argument the body does not have. The rules are the transport
//! specification's:
//! - only properties reachable through `properties` keys count (not under `items`, compositions or `$ref`);
//! - only string, integer, number and boolean properties may be annotated, with a token for a name
//!   (RFC 9110), unique per tool ignoring case; a tool with an invalid annotation is not checked at all
//!   (conforming clients drop such a tool from their lists);
//! - a null or absent argument means no header is expected; numbers compare as numbers, booleans as
//!   `true`/`false`, strings exactly, after the `=?base64?…?=` sentinel is decoded.

use std::collections::HashMap;

use http::HeaderMap;
use serde_json::Value;

/// What a tool's parameter is, for comparing its header with its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Boolean,
}

/// One annotated parameter of a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamHeader {
    /// `Region` of `x-mcp-header: "Region"`.
    name: String,
    /// The header as HTTP libraries key it: `mcp-param-region`.
    header: String,
    /// Property names from `arguments` down to the parameter.
    path: Vec<String>,
    kind: Kind,
}

/// The annotated parameters of each tool that has any (and whose annotations are valid).
pub type ToolHeaders = HashMap<String, Vec<ParamHeader>>;

/// Adds the annotations of the tools of one `tools/list` page to `table`.
pub fn scan(tools: &[Value], table: &mut ToolHeaders) {
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else { continue };
        let mut params = Vec::new();
        let valid = tool.get("inputSchema").is_none_or(|s| scan_schema(s, &mut Vec::new(), &mut params));
        let mut seen: Vec<String> = params.iter().map(|p| p.header.clone()).collect();
        seen.sort();
        seen.dedup();
        if valid && !params.is_empty() && seen.len() == params.len() {
            table.insert(name.to_string(), params);
        }
    }
}

/// Collects the annotations under `schema`'s `properties`; `false` when one is invalid.
fn scan_schema(schema: &Value, path: &mut Vec<String>, out: &mut Vec<ParamHeader>) -> bool {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return true };
    for (property, sub) in properties {
        path.push(property.clone());
        if let Some(annotation) = sub.get("x-mcp-header") {
            let kind = match sub.get("type").and_then(Value::as_str) {
                Some("string") => Some(Kind::String),
                Some("integer" | "number") => Some(Kind::Number),
                Some("boolean") => Some(Kind::Boolean),
                _ => None,
            };
            let name = annotation.as_str().filter(|n| is_token(n));
            let (Some(kind), Some(name)) = (kind, name) else { return false };
            out.push(ParamHeader {
                name: name.to_string(),
                header: format!("mcp-param-{}", name.to_ascii_lowercase()),
                path: path.clone(),
                kind,
            });
        } else if !scan_schema(sub, path, out) {
            return false;
        }
        path.pop();
    }
    true
}

/// An RFC 9110 token (the characters a header name may have).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks the `Mcp-Param-*` headers of a `tools/call` of a tool with annotated `params` against its
/// `arguments`. `decode` turns a header value into its text (the `=?base64?…?=` sentinel), `None` when it
/// is not valid. The error says what disagrees.
pub fn check(
    params: &[ParamHeader],
    headers: &HeaderMap,
    arguments: Option<&Value>,
    decode: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for p in params {
        let argument =
            arguments.and_then(|a| p.path.iter().try_fold(a, |v, key| v.get(key))).filter(|v| !v.is_null());
        let where_ = format!("arguments.{}", p.path.join("."));
        let header = match headers.get(&p.header) {
            None => None,
            Some(raw) => match raw.to_str().ok().map(str::trim).and_then(&decode) {
                Some(text) => Some(text),
                None => return Err(format!("the Mcp-Param-{} header is not a valid value", p.name)),
            },
        };
        match (argument, header) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(format!(
                    "{where_} is in the body but the Mcp-Param-{} header is missing (the tool's schema asks \
                     clients to mirror it)",
                    p.name
                ));
            }
            (None, Some(h)) => {
                return Err(format!(
                    "Mcp-Param-{} header {h:?} names a value {where_} does not have",
                    p.name
                ));
            }
            (Some(value), Some(h)) if !agrees(value, &h, p.kind) => {
                return Err(format!("Mcp-Param-{} header {h:?} does not match {where_} {value}", p.name));
            }
            (Some(_), Some(_)) => {}
        }
    }
    Ok(())
}

fn agrees(value: &Value, header: &str, kind: Kind) -> bool {
    match kind {
        Kind::String => value.as_str() == Some(header),
        Kind::Number => match (value.as_f64(), header.parse::<f64>()) {
            (Some(v), Ok(h)) => v == h,
            _ => false,
        },
        Kind::Boolean => value.as_bool().map(|b| if b { "true" } else { "false" }) == Some(header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(tools: Value) -> ToolHeaders {
        let mut t = ToolHeaders::new();
        scan(tools.as_array().unwrap(), &mut t);
        t
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn plain(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn finds_annotations_through_properties_only() {
        let t = table(json!([
            {"name": "deploy", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}},
                "list": {"type": "array", "items": {"type": "string"}}
            }}},
            {"name": "plain", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}},
            {"name": "object_annotated", "inputSchema": {"type": "object", "properties": {
                "o": {"type": "object", "x-mcp-header": "O"}}}},
            {"name": "bad_name", "inputSchema": {"type": "object", "properties": {
                "r": {"type": "string", "x-mcp-header": "Has Space"}}}},
            {"name": "twice", "inputSchema": {"type": "object", "properties": {
                "a": {"type": "string", "x-mcp-header": "Same"}, "b": {"type": "string", "x-mcp-header": "same"}}}}
        ]));
        assert_eq!(
            t.keys().collect::<Vec<_>>(),
            vec!["deploy"],
            "invalid or absent annotations are not enforced"
        );
        let deploy = &t["deploy"];
        assert_eq!(deploy.len(), 2);
        assert!(deploy.iter().any(|p| p.header == "mcp-param-dry-run" && p.path == ["opts", "dry"]));
    }

    #[test]
    fn headers_must_agree_with_arguments() {
        let t = table(json!([{"name": "t", "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "on": {"type": "boolean", "x-mcp-header": "On"}
        }}}]));
        let p = &t["t"];
        let args = json!({"region": "us-west1", "count": 42, "on": true});
        let all = [("mcp-param-region", "us-west1"), ("mcp-param-count", "42.0"), ("mcp-param-on", "true")];
        assert_eq!(check(p, &headers(&all), Some(&args), plain), Ok(()));
        // Header names are case-insensitive; values are trimmed of surrounding whitespace.
        let spaced =
            [("Mcp-Param-Region", " us-west1 "), ("MCP-PARAM-COUNT", "42"), ("mcp-param-on", "true")];
        assert_eq!(check(p, &headers(&spaced), Some(&args), plain), Ok(()));
        let wrong = [("mcp-param-region", "eu-west1"), ("mcp-param-count", "42"), ("mcp-param-on", "true")];
        assert!(
            check(p, &headers(&wrong), Some(&args), plain)
                .unwrap_err()
                .contains("does not match arguments.region")
        );
        let missing = [("mcp-param-count", "42"), ("mcp-param-on", "true")];
        assert!(check(p, &headers(&missing), Some(&args), plain).unwrap_err().contains("header is missing"));
        // Null or absent arguments expect no header; a header for them is a mismatch.
        let sparse = json!({"region": null});
        assert_eq!(check(p, &headers(&[]), Some(&sparse), plain), Ok(()));
        assert_eq!(check(p, &headers(&[]), None, plain), Ok(()));
        assert!(check(p, &headers(&[("mcp-param-on", "true")]), Some(&sparse), plain).is_err());
        let bad_bool =
            [("mcp-param-region", "us-west1"), ("mcp-param-count", "42"), ("mcp-param-on", "True")];
        assert!(check(p, &headers(&bad_bool), Some(&args), plain).is_err());
        // A value the decoder refuses (bad Base64) is refused whatever the body says.
        assert!(check(p, &headers(&all), Some(&args), |_| None).unwrap_err().contains("not a valid value"));
    }
}
