//! Entry points for the `cargo fuzz` targets in `fuzz/` (see `scripts/fuzz`); not an API.
//!
//! The gateway's JSON-RPC classification, SSE framing and header rules are private to `gateway` so
//! that nothing else in the daemon depends on them. The fuzzers still have to reach the real code, not
//! a copy, so this module re-exports exactly the functions they call (`gateway` widens those three
//! modules to `pub(crate)` for it) and nothing is added to the public surface otherwise. Everything
//! else the fuzzers need (`commands::split_line`, `pipeline::analyse`, `pipeline::secrets::parse_dotenv`,
//! `config::Config::parse`, `names`) is public already.

/// `gateway::jsonrpc`: classifying, splitting, re-framing and splicing raw JSON-RPC messages.
pub mod jsonrpc {
    pub use crate::gateway::jsonrpc::{
        Classified, IdKey, Invalid, Kind, classify, error_body, id_json, is_batch, raw_result,
        result_protocol_version, splice, splice_many, split_batch, to_line,
    };
}

/// `gateway::sse`: event framing and `Last-Event-ID` parsing.
pub mod sse {
    pub use crate::gateway::sse::{event, parse_event_id, priming};
}

/// `gateway::protocol`: the Streamable HTTP header rules (Accept, Content-Type, MCP-Protocol-Version,
/// Host, Origin). Each returns `Ok` or a refusal response.
pub mod headers {
    pub use crate::gateway::protocol::{
        KNOWN_VERSIONS, batches_allowed, check_content_type, check_get_accept, check_host, check_origin,
        check_post_accept, header_version,
    };
}
