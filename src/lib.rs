//! catwalk: `git push` a repository or a package name, get a live, access-controlled MCP server.
//!
//! See ARCHITECTURE.md for the modules, the data path of a push and of an MCP request, and the invariants.

pub mod access;
pub mod bridge;
pub mod config;
pub mod datadir;
pub mod gateway;
pub mod init;
pub mod names;
pub mod pipeline;
pub mod runtime;
pub mod store;
pub mod tls;
