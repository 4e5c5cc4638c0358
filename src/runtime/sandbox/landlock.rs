//! The few Landlock calls the strict mode needs, as raw syscalls (the uapi is three syscalls and three
//! structs; a crate would add more surface than it saves).
//!
//! Landlock network rules are allow-lists: a ruleset that handles `CONNECT_TCP` denies every port not
//! explicitly allowed. Denying the daemon's own ports therefore means allowing all others (65 533 rules,
//! a few milliseconds at process start). The rule applies to those port numbers on every address, so
//! strict mode also blocks outbound connections to remote hosts on the daemon's port numbers.

use std::io;

/// Landlock ABI that introduced TCP bind/connect rules (Linux 6.7).
pub const ABI_NET: u32 = 4;
/// Landlock ABI that introduced scoping of abstract unix sockets and signals (Linux 6.12).
pub const ABI_SCOPE: u32 = 6;

const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_NET_PORT: u32 = 2;
const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

/// The kernel's Landlock ABI version, 0 when Landlock is not built in or not enabled.
pub fn abi() -> u32 {
    // SAFETY: with a null attribute and the VERSION flag the syscall only returns a number.
    let r = unsafe {
        libc::syscall(SYS_CREATE_RULESET, std::ptr::null::<RulesetAttr>(), 0usize, CREATE_RULESET_VERSION)
    };
    if r < 0 { 0 } else { r as u32 }
}

/// Restricts the calling thread (and what it executes) so that TCP connections to `deny_ports` fail
/// with EACCES, and, when `scope` is set, so that it cannot connect to abstract unix sockets or signal
/// processes outside its own Landlock domain. Needs `no_new_privs` set before.
pub fn restrict(deny_ports: &[u16], scope: bool) -> io::Result<()> {
    let abi = abi();
    if !deny_ports.is_empty() && abi < ABI_NET {
        return Err(io::Error::other(format!("Landlock TCP rules need ABI {ABI_NET}, the kernel has {abi}")));
    }
    if scope && abi < ABI_SCOPE {
        return Err(io::Error::other(format!("Landlock scopes need ABI {ABI_SCOPE}, the kernel has {abi}")));
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: if deny_ports.is_empty() { 0 } else { ACCESS_NET_CONNECT_TCP },
        scoped: if scope { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
    };
    if attr.handled_access_net == 0 && attr.scoped == 0 {
        return Ok(());
    }
    // Older ABIs do not know the `scoped` field; pass the struct size they expect.
    let size = if abi >= ABI_SCOPE { size_of::<RulesetAttr>() } else { 2 * size_of::<u64>() };
    // SAFETY: `attr` outlives the call and `size` does not exceed it.
    let fd = unsafe { libc::syscall(SYS_CREATE_RULESET, &attr as *const RulesetAttr, size, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = fd as libc::c_int;
    let result = (|| -> io::Result<()> {
        if attr.handled_access_net != 0 {
            for port in 0..=u16::MAX {
                if deny_ports.contains(&port) {
                    continue;
                }
                let rule = NetPortAttr { allowed_access: ACCESS_NET_CONNECT_TCP, port: u64::from(port) };
                // SAFETY: `rule` is a valid landlock_net_port_attr for the duration of the call.
                let r = unsafe {
                    libc::syscall(SYS_ADD_RULE, fd, RULE_NET_PORT, &rule as *const NetPortAttr, 0u32)
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: plain syscall on a ruleset fd we own.
        if unsafe { libc::syscall(SYS_RESTRICT_SELF, fd, 0u32) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: closing the fd we created.
    unsafe { libc::close(fd) };
    result
}
