//! How every child catwalk starts is detached from the daemon: servers, installs, stdio MCP children.
//!
//! A leaf module so that the gateway (which spawns stdio children) and the runtimes (servers, installs)
//! share it without the gateway reaching up into the runtime.

/// Starts `cmd` in a new session: its own process group (stopped as a whole with `killpg`) and no
/// controlling terminal, so nothing it runs can inject keystrokes into the daemon's terminal.
/// Every server and install is spawned this way, sandboxed or not.
pub fn own_session(cmd: &mut tokio::process::Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}
