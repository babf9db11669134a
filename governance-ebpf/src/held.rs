//! What a sandboxed process does through descriptors it already held when it was sandboxed:
//! the `socket_sendmsg`, `file_permission` and `file_free_security` LSM hooks. The connect and
//! sendmsg programs decide a connection once, when it is made; a TCP connection (or connected
//! UDP socket, or Unix stream) made before the sandbox verdict never passes them again. So each
//! send of a sandboxed process is decided here as a connect to the socket's peer would be under
//! its profile.
//!
//! Files likewise: `file_open` decides a write once, at the open, and a file opened for
//! writing before the verdict would stay writable. A path cannot be resolved here
//! (`bpf_d_path` is refused to `file_permission`), so the profile's own opens are remembered
//! instead: `file_open` adds each file a sandboxed process opens for writing to
//! `SANDBOX_FILES` with its profile mark, `file_free_security` removes it when the file goes,
//! and a sandboxed process writes a regular file (or maps it shared and writable, see
//! mapping.rs, or truncates it, see identity.rs) only through a descriptor found there with
//! its own mark. Pipes, terminals,
//! devices and the kernel's internal files (memfd, SysV shared memory) are written as before.
//!
//! Two hooks, because no one hook sees every way of sending:
//! - `socket_sendmsg` (`sock_sendmsg`): `send`, `sendto`, `sendmsg`, `sendmmsg`, `write` and
//!   `writev` on a socket, io_uring's `SEND`, `SENDMSG`, `SEND_ZC` and `WRITE`;
//! - `file_permission` (`rw_verify_area` on the file written): `write`, `writev`, AIO,
//!   io_uring's `WRITE`, and the two that reach no `sock_sendmsg` before Linux 6.5,
//!   `sendfile` and `splice` (`kernel_sendpage`).
//!
//! What is decided, by the socket's family:
//! - TCP and UDP over IPv4 and IPv6: the peer address and port against the profile's network
//!   table (`net::net_decision`); a `via_proxy` answer refuses (the connection is direct); a
//!   TCP connection to the policy proxy passes (it decides each request) when the profile has
//!   the proxy's reach (`network: proxy`; under `network: none` the table refuses it), the
//!   control API is refused. A connected socket is decided on its peer whatever address the
//!   message names (an IPv6 UDP socket sends an AF_UNSPEC-named datagram to its peer, with no
//!   `sendmsg6` run). An unconnected socket passes: nothing goes out of it, or the datagram
//!   names an address, which the `sendmsg4/6` programs decide.
//! - Unix streams and seqpackets: the peer as `unix_stream_connect` decides it (datagrams:
//!   `unix_may_send` decides every one). An unnamed peer (a socketpair) passes.
//! - Every other family or protocol: refused, as `socket_create` refuses making one (a
//!   profile relaxes no built-in).
//!
//! Only refusals (and shadow "would refuse") are events: an allowed send is a packet of a
//! connection, not a decision. Processes that are not sandboxed pass after one array read
//! (`SANDBOX_ANY`, until the first sandbox verdict) or one hash lookup of their tgid; a
//! `file_permission` call that is not a write passes before either. (`file_permission` also
//! decides reads and writes of the caller's controlling terminal: jobctl.rs.)
use aya_ebpf::{helpers::generated::bpf_sock_from_file, macros::lsm, programs::LsmContext};
use governance_common::{Cause, FILE_DETAIL_HELD, Kind, allow, proto, unix_hook};

use crate::{
    decide::{Decision, any_sandboxed, current_agent, emit, lsm_ret},
    kernel::{
        AF_INET, AF_INET6, AF_UNIX, Btf, EPERM, MAY_WRITE, OFF_DENTRY_INODE, OFF_FILE_INODE,
        OFF_FILE_PATH, OFF_INODE_MODE, OFF_INODE_SB, OFF_PATH_DENTRY, OFF_SB_FLAGS, OFF_SOCK_DADDR,
        OFF_SOCK_DPORT, OFF_SOCK_FAMILY, OFF_SOCK_PROTOCOL, OFF_SOCK_V6_DADDR, OFF_SOCKET_SK,
        OFF_SOCKET_TYPE, OFF_UNIX_SOCK_PEER, S_IFMT, S_IFREG, SB_KERNMOUNT, SOCK_DGRAM, off,
        read_at,
    },
    maps::{API_ADDR, PROXY, SANDBOX_FILES, SANDBOXED},
    net::{is_api, is_proxy, mapped4, net_decision},
    unix::unix_decision,
};

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    // int socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // Every agent's datagrams: no source route (route.rs).
    if let Some(refused) = crate::route::datagram_route(Btf::arg(&ctx, 1)) {
        return refused;
    }
    if !any_sandboxed() {
        return 0;
    }
    held_send(Btf::arg(&ctx, 0))
}

#[lsm(hook = "file_permission")]
pub fn file_permission(ctx: LsmContext) -> i32 {
    // int file_permission(struct file *file, int mask)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mask: i32 = ctx.arg(1);
    // A read or write of the controlling terminal that would stop the caller's process group
    // (jobctl.rs).
    let ret = crate::jobctl::terminal_access(Btf::arg(&ctx, 0), mask);
    if ret != 0 {
        return ret;
    }
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    // A write through a descriptor the agent may not have opened itself (file.rs).
    // (No path: `bpf_d_path` is not allowed in this hook.)
    let ret = crate::file::written_through(ctx.arg(0), false);
    if ret != 0 {
        return ret;
    }
    if !any_sandboxed() {
        return 0;
    }
    // The kernel's own test (`f_op == &socket_file_ops`): NULL for every other file.
    // SAFETY: the hook's own `struct file *` argument, which the helper takes.
    let sock = unsafe { bpf_sock_from_file(ctx.arg(0)) };
    if sock.is_null() {
        return held_write(ctx.arg(0));
    }
    held_send(Btf::of(sock as u64))
}

#[lsm(hook = "file_free_security")]
pub fn file_free_security(ctx: LsmContext) -> i32 {
    // void file_free_security(struct file *file): the file's last reference is gone, and its
    // address may be reused for another file.
    let file: u64 = ctx.arg(0);
    if any_sandboxed() {
        let _ = SANDBOX_FILES.remove(&file);
    }
    // The files agents armed for SIGIO (sigio.rs).
    crate::sigio::forget(file);
    0
}

/// The decision on a write by the current task to `file` (a `struct file *` that is not a
/// socket), or on mapping it shared and writable. 0 lets it go on, -EPERM refuses it.
#[inline(always)]
pub(crate) fn held_write(file: u64) -> i32 {
    // SAFETY: see read_at.
    let inode = unsafe { read_at::<u64>(file, off(&OFF_FILE_INODE)) };
    // The access letters of a file event: write (see file::file_open).
    held_file(file, inode, 2)
}

/// The decision on truncate(2) or ftruncate(2) of `path` (a `struct path *`) by the current
/// task. ftruncate's path is its file's own `f_path`, so the file it belongs to is found by
/// subtracting the field's offset (an address compared, never read); truncate(2) names a path
/// that belongs to no file, so a sandboxed process truncates by descriptor only.
#[inline(always)]
pub(crate) fn held_truncate(path: u64) -> i32 {
    if !any_sandboxed() {
        return 0;
    }
    // SAFETY: see read_at.
    let inode = unsafe {
        read_at::<u64>(path, off(&OFF_PATH_DENTRY))
            .and_then(|dentry| read_at::<u64>(dentry, off(&OFF_DENTRY_INODE)))
    };
    // Write and truncate.
    held_file(path.wrapping_sub(off(&OFF_FILE_PATH)), inode, 2 | 8)
}

/// A sandboxed process changes a regular file (`inode`, as read) only through `file`, a
/// descriptor it opened under its profile; `letters`: the file event's access letters.
#[inline(always)]
fn held_file(file: u64, inode: Result<u64, i32>, letters: u8) -> i32 {
    // SAFETY: helper call without pointer arguments.
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out.
    let Some(mark) = (unsafe { SANDBOXED.get(&tgid) }).copied() else {
        return 0;
    };
    let (mode, sb_flags) = match inode {
        // SAFETY: see read_at.
        Ok(inode) => unsafe {
            (
                read_at::<u16>(inode, off(&OFF_INODE_MODE)).unwrap_or(S_IFREG),
                read_at::<u64>(inode, off(&OFF_INODE_SB))
                    .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_FLAGS)))
                    .unwrap_or(0),
            )
        },
        // Unreadable: decided as a regular file (fail closed).
        Err(_) => (S_IFREG, 0),
    };
    if mode & S_IFMT != S_IFREG || sb_flags & SB_KERNMOUNT != 0 {
        return 0;
    }
    // SAFETY: the value is compared, not kept.
    if unsafe { SANDBOX_FILES.get(&file) } == Some(&mark) {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    if !agent.sandboxed {
        return 0;
    }
    let d = Decision::builtin(Kind::File, true);
    emit(&agent, &d, |ev| ev.detail = letters | FILE_DETAIL_HELD);
    lsm_ret(&d)
}

/// The decision on a send by the current task on `sock` (a `struct socket *`). 0 lets it go
/// on, -EPERM refuses it.
#[inline(always)]
fn held_send(sock: Btf) -> i32 {
    // SAFETY: helper call without pointer arguments.
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only presence is read.
    if unsafe { SANDBOXED.get(&tgid) }.is_none() {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    if !agent.sandboxed {
        return 0;
    }
    let Ok(sk) = sock.ptr(off(&OFF_SOCKET_SK)) else {
        return 0; // no sock: the send fails on its own (a socket being released)
    };
    let family = u32::from(sk.get::<u16>(off(&OFF_SOCK_FAMILY)));
    let protocol = sk.get::<u16>(off(&OFF_SOCK_PROTOCOL));
    let inet = family == AF_INET || family == AF_INET6;
    if inet && (protocol == u16::from(proto::TCP) || protocol == u16::from(proto::UDP)) {
        let protocol = protocol as u8;
        let addr = if family == AF_INET {
            mapped4(sk.get::<u32>(off(&OFF_SOCK_DADDR)))
        } else {
            // Two 8-byte loads: a guarded load is at most 8 bytes.
            let hi = sk.get::<u64>(off(&OFF_SOCK_V6_DADDR)).to_ne_bytes();
            let lo = sk.get::<u64>(off(&OFF_SOCK_V6_DADDR) + 8).to_ne_bytes();
            [
                hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3],
                lo[4], lo[5], lo[6], lo[7],
            ]
        };
        // Not connected: nothing goes out but a datagram to an address the message names,
        // which the sendmsg4/6 programs decide (TCP: EPIPE; UDP without one: EDESTADDRREQ).
        // Connected, every send is decided on the peer, whether or not the message names an
        // address: the kernel sends to the connected peer, with no sendmsg program run, for
        // names it reads as none (`udpv6_sendmsg`: an AF_UNSPEC name; red team round 5, F4),
        // and a named datagram on a connected socket is decided here and by sendmsg4/6 alike.
        if addr == [0; 16] || addr == mapped4(0) {
            return 0;
        }
        let port = u16::from_be(sk.get::<u16>(off(&OFF_SOCK_DPORT)));
        let Some(proxy) = PROXY.get(0) else {
            return -EPERM; // the map always has its one entry; fail closed if not
        };
        // The proxy: a TCP connection to it, for a class with the proxy's reach (not a
        // `network: none` profile's, whose send the network table below refuses).
        if protocol == proto::TCP
            && agent.value.allow & allow::PROXY != 0
            && is_proxy(proxy, &addr, port)
        {
            return 0;
        }
        let d = if API_ADDR.get(0).is_some_and(|a| is_api(a, &addr, port)) {
            Decision::builtin(Kind::Send, true)
        } else {
            let (d, via_proxy) = net_decision(Kind::Send, &agent, addr, port, protocol);
            if via_proxy && !d.denied {
                // The connection is direct: it cannot be sent through the proxy now.
                Decision::fail_closed(Kind::Send, Cause::NoProxy)
            } else {
                d
            }
        };
        if !d.denied && d.shadow.present == 0 {
            return 0;
        }
        emit(&agent, &d, |ev| {
            ev.addr = addr;
            ev.port = port;
            ev.detail = protocol;
        });
        return lsm_ret(&d);
    }
    if family == AF_UNIX as u32 {
        // Datagrams: `unix_may_send` decides each one.
        if i32::from(sock.get::<i16>(off(&OFF_SOCKET_TYPE))) == SOCK_DGRAM {
            return 0;
        }
        // The connected peer (`unix_sk(sk)->peer`), past `struct sock`: not a field the
        // verifier can place from the `struct sock` it knows, so a probe read.
        // SAFETY: see read_at.
        return match unsafe { read_at::<u64>(sk.addr(), off(&OFF_UNIX_SOCK_PEER)) } {
            Ok(0) => 0, // not connected: the send fails on its own (ENOTCONN)
            Ok(peer) => unix_decision(peer, unix_hook::HELD),
            Err(_) => {
                let d = Decision::fail_closed(Kind::Unix, Cause::Unreadable);
                emit(&agent, &d, |ev| ev.port = unix_hook::HELD);
                lsm_ret(&d)
            }
        };
    }
    // Any other family or protocol, as `socket_create` decides making one.
    let d = Decision::builtin(Kind::Socket, agent.value.allow & allow::RAW_SOCKETS == 0);
    if !d.denied {
        return 0;
    }
    emit(&agent, &d, |ev| {
        ev.detail = family as u8;
        ev.port = sock.get::<i16>(off(&OFF_SOCKET_TYPE)) as u16;
        ev.object = u64::from(protocol);
    });
    lsm_ret(&d)
}
