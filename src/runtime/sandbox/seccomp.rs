//! One seccomp filter: no new user namespaces inside the sandbox.
//!
//! When the daemon is root the sandbox has no user namespace of its own (the server runs as a real
//! unprivileged uid), so bubblewrap's `--disable-userns` does not apply, and an unprivileged process
//! may normally create a user namespace and gain capabilities inside it. That gains nothing outside the
//! sandbox (mounts are locked, the PID namespace stays), but it widens the kernel surface reachable by a
//! hostile server. The filter makes `unshare`/`clone` with `CLONE_NEWUSER` fail with EPERM and `clone3`
//! (whose flags live in memory a filter cannot read) fail with ENOSYS, which makes the C libraries fall
//! back to `clone` (the approach Flatpak and Chromium take). Everything else is allowed.

use std::io;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// x32 system calls on x86_64 carry this bit; none exist elsewhere, so refusing them costs nothing.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const CLONE_NEWUSER: u32 = 0x1000_0000;

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16; // little-endian: the low 32 bits of args[0]

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program (see the module docs).
fn program() -> Vec<libc::sock_filter> {
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & 0xffff);
    vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, errno(libc::ENOSYS)), // a foreign ABI (e.g. i386 via int 0x80)
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
        jump(JEQ_K, libc::SYS_unshare as u32, 1, 0),
        jump(JEQ_K, libc::SYS_clone as u32, 0, 3),
        stmt(LD_W_ABS, OFFSET_ARG0_LOW),
        jump(JSET_K, CLONE_NEWUSER, 0, 1),
        stmt(RET_K, errno(libc::EPERM)),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs the filter on the calling thread (inherited across `exec`). Needs `no_new_privs`.
pub fn deny_user_namespaces() -> io::Result<()> {
    let filter = program();
    let prog =
        libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_inside_the_program() {
        let p = program();
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(i + 1 + (ins.jt as usize) < p.len() && i + 1 + (ins.jf as usize) < p.len(), "at {i}");
            }
        }
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }
}
