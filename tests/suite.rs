//! The test suite: one binary, one link step (as ripgrep does), instead of one per file on a 2-core
//! machine. Each file of `tests/` is a module; the helpers they share are declared once here.
//!
//! Run one file's tests with `cargo nextest run -E 'test(/^foundation_push::/)'`, or a name filter:
//! `./test foundation_push::`.

// Shared helpers (see tests/HARNESS.md).
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/deps.rs"]
mod deps;
#[path = "common/fly_daemon.rs"]
mod fly_daemon;
mod fly_fake;
mod gateway_support;
mod isolation_support;
#[path = "common/mcp.rs"]
mod mcp;
mod oauth_support;
mod tls_support;

mod bad_inputs;
mod deploy_concurrency;
mod deploy_enrich;
mod deploy_http;
mod deploy_push;
mod fly_live;
mod fly_machines;
mod fly_push;
mod fly_runtime;
mod fly_scale;
mod fly_source;
mod foundation_push;
mod foundation_shutdown;
mod foundation_ssh;
mod gateway_children;
mod gateway_daemon;
mod gateway_http;
mod gateway_input_required;
mod gateway_modern;
mod gateway_proxy;
mod gateway_rmcp;
mod gateway_sdk;
mod gateway_spares;
mod harness;
mod isolation_config_files;
mod isolation_hostile;
mod isolation_limits;
mod isolation_modes;
mod isolation_network;
mod isolation_push;
mod isolation_real_servers;
mod isolation_secrets;
mod isolation_tenants;
mod isolation_tree;
mod oauth;
mod oauth_browser;
mod pipeline_registry;
mod runtime_install;
mod tls_acme;
mod tls_daemon;
mod tls_files;
