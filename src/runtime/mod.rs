//! Runtimes run releases. The local runtime (the embedded default) installs packages into the data dir and
//! runs servers as child processes behind the gateway; the Fly runtime (`fly/`) runs each app on Fly.io
//! Machines and the gateway proxies to them over HTTP.

pub mod fly;
pub mod health;
pub mod http_server;
pub mod install;
pub mod routes;
pub mod sandbox;
