//! The daemon's configuration file (`config::Config::parse`): TOML, unknown keys refused, durations,
//! addresses, TLS, runtime and static-app sections, then validation.
//!
//! Invariants: no panic, also in the helpers the daemon calls on an accepted config (public URL,
//! sandbox policy, SSH host and port); every refusal names the file.
#![no_main]

use std::path::Path;

use catwalk::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("/fuzz/catwalk.toml")) {
        Ok(config) => {
            let url = config.public_url();
            assert!(url.starts_with("http://") || url.starts_with("https://"), "{url:?}");
            let _ = config.sandbox_policy();
            let (host, _port) = config.ssh_host_port();
            assert!(!host.is_empty());
        }
        Err(e) => {
            assert!(matches!(e, ConfigError::Invalid { .. }));
            assert!(e.to_string().starts_with("/fuzz/catwalk.toml: "), "{e}");
        }
    }
});
