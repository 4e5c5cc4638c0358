//! Runtimes run releases. The local runtime (the embedded default) installs packages into the data dir and
//! runs servers as child processes behind the gateway.

pub mod install;
pub mod routes;
pub mod sandbox;
