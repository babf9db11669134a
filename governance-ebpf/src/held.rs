//! Sends of a sandboxed process on the sockets it already held when it was sandboxed: the
//! `socket_sendmsg` and `file_permission` LSM hooks. The connect and sendmsg programs decide a
//! connection once, when it is made; a TCP connection (or connected UDP socket, or Unix stream)
//! made before the sandbox verdict never passes them again. So each send of a sandboxed process
//! is decided here as a connect to the socket's peer would be under its profile.
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
//!   table (`net::net_decision`); a `via_proxy` answer refuses (the connection is direct); the
//!   policy proxy's own address passes (it decides each request), the control API is refused.
//!   An unconnected socket passes: nothing goes out of it, or the datagram names an address,
//!   which the `sendmsg4/6` programs decide.
//! - Unix streams and seqpackets: the peer as `unix_stream_connect` decides it (datagrams:
//!   `unix_may_send` decides every one). An unnamed peer (a socketpair) passes.
//! - Every other family or protocol: refused, as `socket_create` refuses making one (a
//!   profile relaxes no built-in).
//!
//! Only refusals (and shadow "would refuse") are events: an allowed send is a packet of a
//! connection, not a decision. Processes that are not sandboxed pass after one array read
//! (`SANDBOX_ANY`, until the first sandbox verdict) or one hash lookup of their tgid; a
//! `file_permission` call that is not a write to a socket passes before either.
use aya_ebpf::{helpers::generated::bpf_sock_from_file, macros::lsm, programs::LsmContext};
use governance_common::{Cause, Kind, allow, proto, unix_hook};

use crate::{
    decide::{Decision, any_sandboxed, current_agent, emit, lsm_ret},
    kernel::{
        AF_INET, AF_INET6, AF_UNIX, Btf, EPERM, MAY_WRITE, OFF_MSGHDR_NAME, OFF_SOCK_DADDR,
        OFF_SOCK_DPORT, OFF_SOCK_FAMILY, OFF_SOCK_PROTOCOL, OFF_SOCK_V6_DADDR, OFF_SOCKET_SK,
        OFF_SOCKET_TYPE, OFF_UNIX_SOCK_PEER, SOCK_DGRAM, off, read_at,
    },
    maps::{API_ADDR, PROXY, SANDBOXED},
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
    if !any_sandboxed() {
        return 0;
    }
    let named = Btf::arg(&ctx, 1).get::<u64>(off(&OFF_MSGHDR_NAME)) != 0;
    held_send(Btf::arg(&ctx, 0), named)
}

#[lsm(hook = "file_permission")]
pub fn file_permission(ctx: LsmContext) -> i32 {
    // int file_permission(struct file *file, int mask)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 || !any_sandboxed() {
        return 0;
    }
    // The kernel's own test (`f_op == &socket_file_ops`): NULL for every other file.
    // SAFETY: the hook's own `struct file *` argument, which the helper takes.
    let sock = unsafe { bpf_sock_from_file(ctx.arg(0)) };
    if sock.is_null() {
        return 0;
    }
    held_send(Btf::of(sock as u64), false)
}

/// The decision on a send by the current task on `sock` (a `struct socket *`); `named`: the
/// message names a destination address. 0 lets it go on, -EPERM refuses it.
#[inline(always)]
fn held_send(sock: Btf, named: bool) -> i32 {
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
        // A datagram to a named address: the sendmsg4/6 programs decide that address.
        if named && protocol == proto::UDP {
            return 0;
        }
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
        // Not connected: nothing goes out (TCP: EPIPE; UDP without an address: EDESTADDRREQ).
        if addr == [0; 16] || addr == mapped4(0) {
            return 0;
        }
        let port = u16::from_be(sk.get::<u16>(off(&OFF_SOCK_DPORT)));
        let Some(proxy) = PROXY.get(0) else {
            return -EPERM; // the map always has its one entry; fail closed if not
        };
        if is_proxy(proxy, &addr, port) {
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
