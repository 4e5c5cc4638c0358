//! catwalk: `git push` a repository or a package name, get a live, access-controlled MCP server.
//!
//! See ARCHITECTURE.md for the modules, the data path of a push and of an MCP request, and the invariants.

pub mod access;
pub mod authorized_keys;
pub mod bridge;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datadir;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod git;
pub mod identity;
pub mod init;
pub mod listener;
pub mod names;
pub mod oauth;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod platform;
pub mod process_group;
pub mod runtime;
pub mod ssh;
pub mod store;
pub mod terminal_text;
pub mod tls;
pub mod up;
