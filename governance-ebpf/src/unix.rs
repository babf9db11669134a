//! Unix sockets: the `unix_stream_connect` and `unix_may_send` LSM hooks, which decide on the
//! socket an agent connects (stream, seqpacket) or sends a datagram to. They decide on the
//! kernel's own object for the target socket, found by the kernel from whatever name the agent
//! gave, never on that name: a filesystem socket by its bound socket file's identity (device,
//! inode), so hard links, bind mounts, `/proc/self/root` and relative paths reach the same
//! decision; an abstract socket by its name. Unnamed sockets (socketpair, a datagram peer that
//! never bound) are let through unreported.
//!
//! Before the policy: the built-in refusals of [`UNIX_PROTECTED`] (the daemon's control
//! socket, always; container-runtime and service-manager sockets unless the policy relaxes
//! them with `allow_runtime_sockets`; name-service sockets unless it relaxes them with
//! `allow_name_service_sockets`).
use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use governance_common::{
    Cause, GrantKey, Kind, RulePair, SUN_PATH_LEN, UNIX_ABSTRACT_DEV, UnixId, UnixKey, allow,
    unix_detail, unix_hook, unix_protected,
};

use crate::{
    decide::{Decision, apply, current_agent, emit, lsm_ret, or_no_rule},
    kernel::{
        OFF_DENTRY_INODE, OFF_INODE_INO, OFF_PATH_DENTRY, OFF_SOCKET_SK, OFF_UNIX_ADDRESS_LEN,
        OFF_UNIX_ADDRESS_NAME, OFF_UNIX_SOCK_ADDR, OFF_UNIX_SOCK_PATH, off, read_at,
    },
    maps::{UNIX_PROTECTED, UNIX_RULES, UNIX_SCRATCH},
};

/// `offsetof(struct sockaddr_un, sun_path)`: the address family before it (fixed by the ABI).
const SUN_PATH_OFF: u64 = 2;
/// Mask that bounds a copy's length for the verifier: 127 bytes at most, which both
/// destinations hold (the 128-byte scratch, the event's 256-byte path). Lengths are checked
/// against [`SUN_PATH_LEN`] first; the mask is only what the verifier can follow through
/// LLVM's arithmetic.
const COPY_MASK: u32 = 0x7f;

/// Copy `n` bytes (at most [`SUN_PATH_LEN`]) of kernel memory at `src` into `dst`.
#[inline(always)]
fn copy_name(dst: *mut u8, src: u64, n: u32) -> bool {
    // SAFETY: the helper validates the source address; the length is masked below the
    // destination's size (see COPY_MASK).
    unsafe { bpf_probe_read_kernel(dst.cast(), n & COPY_MASK, src as *const _) == 0 }
}

/// The decision on sending to or connecting to the socket `sk` (a `struct sock *` of
/// `AF_UNIX`), for the hook `hook` ([`unix_hook`]). 0 lets it go on, -EPERM refuses it. A send
/// on a held stream (`unix_hook::HELD`, see held.rs) is an event only when it is refused (or
/// a shadow rule would refuse it).
#[inline(always)]
pub(crate) fn unix_decision(sk: u64, hook: u16) -> i32 {
    // SAFETY: see read_at.
    let addr = unsafe { read_at::<u64>(sk, off(&OFF_UNIX_SOCK_ADDR)) };
    // An unnamed socket: nothing outside the agent is named by it (a socketpair, or a
    // datagram peer that never bound); not a decision.
    if addr == Ok(0) {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let Ok(addr) = addr else {
        let d = Decision::fail_closed(Kind::Unix, Cause::Unreadable);
        emit(&agent, &d, |ev| ev.port = hook);
        return lsm_ret(&d);
    };
    // The address as the socket was bound: `len` counts the family, then sun_path.
    // SAFETY: see read_at.
    let len = unsafe { read_at::<i32>(addr, off(&OFF_UNIX_ADDRESS_LEN)) }.unwrap_or(0);
    let name = addr + off(&OFF_UNIX_ADDRESS_NAME) + SUN_PATH_OFF;
    let n = len - SUN_PATH_OFF as i32;
    let Some(buf) = UNIX_SCRATCH.get_ptr_mut(0) else {
        return 0; // the per-CPU array always has its one entry
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let buf = unsafe { &mut *buf };
    if n < 1 || n > SUN_PATH_LEN as i32 || !copy_name(buf.as_mut_ptr(), name, n as u32) {
        let d = Decision::fail_closed(Kind::Unix, Cause::Unreadable);
        emit(&agent, &d, |ev| ev.port = hook);
        return lsm_ret(&d);
    }
    let n = n as u32;
    // A socket file: its identity (the inode of `unix_sk(sk)->path.dentry`). An abstract name:
    // its hash.
    let (dev, ino, detail) = if buf[0] != 0 {
        // SAFETY: see read_at.
        let id = unsafe {
            read_at::<u64>(sk, off(&OFF_UNIX_SOCK_PATH) + off(&OFF_PATH_DENTRY))
                .and_then(|dentry| read_at::<u64>(dentry, off(&OFF_DENTRY_INODE)))
                .and_then(|inode| {
                    let ino = read_at::<u64>(inode, off(&OFF_INODE_INO))?;
                    let dev = crate::subvolume::inode_dev(inode).map_err(|_| -1)?;
                    Ok((dev, ino))
                })
        };
        match id {
            Ok((dev, ino)) if ino != 0 => (dev, ino, unix_detail::PATH),
            _ => {
                let d = Decision::fail_closed(Kind::Unix, Cause::Unreadable);
                emit(&agent, &d, |ev| ev.port = hook);
                return lsm_ret(&d);
            }
        }
    } else {
        (
            UNIX_ABSTRACT_DEV,
            name_hash(buf, n - 1),
            unix_detail::ABSTRACT,
        )
    };
    let object = if detail == unix_detail::PATH {
        (u64::from(dev) << 32) ^ ino
    } else {
        ino
    };
    let fill = |ev: &mut governance_common::Event, detail: u8| {
        ev.detail = detail;
        ev.port = hook;
        let d = dev.to_ne_bytes();
        let l = n.to_ne_bytes();
        let i = ino.to_ne_bytes();
        ev.addr = [
            d[0], d[1], d[2], d[3], l[0], l[1], l[2], l[3], i[0], i[1], i[2], i[3], i[4], i[5],
            i[6], i[7],
        ];
        if !copy_name(ev.path.as_mut_ptr(), name, n) {
            ev.path[0] = 0;
        }
    };
    // Built-in: the control socket always, runtime and name-service sockets unless relaxed (a sandboxed
    // process's class relaxes nothing). A relaxed runtime socket goes on to the rules. Path
    // sockets by identity, abstract names (an X display, a containerd shim) by their hash.
    let id = UnixId { dev, _pad: 0, ino };
    // SAFETY: the value is copied immediately.
    if let Some(why) = unsafe { UNIX_PROTECTED.get(&id) }.copied() {
        let relaxed = (why == unix_protected::RUNTIME
            && agent.value.allow & allow::RUNTIME_SOCKETS != 0)
            || (why == unix_protected::NAME_SERVICE
                && agent.value.allow & allow::NAME_SERVICE_SOCKETS != 0);
        if !relaxed {
            let mut d = Decision::builtin(Kind::Unix, true);
            d.object = object;
            // Which built-in, in the high nibble of the detail.
            let detail = detail | ((why as u8 & 0xf) << unix_detail::PROTECTED_SHIFT);
            emit(&agent, &d, |ev| fill(ev, detail));
            return lsm_ret(&d);
        }
    }
    let key = UnixKey {
        class: agent.value.class,
        dev,
        ino,
    };
    // Passed as `Some` (see `or_no_rule`): a `None`'s undefined payload is what the verifier
    // refuses once LLVM merges `apply`'s arms.
    // SAFETY: the value is copied immediately.
    let found: RulePair = unsafe { UNIX_RULES.get(&key) }.copied().unwrap_or_default();
    let default = agent.value.unix_default;
    let d = apply(
        Kind::Unix,
        &agent,
        Some(or_no_rule(found, &default)),
        default,
        GrantKey::new(agent.root, Kind::Unix, object),
    );
    if hook == unix_hook::HELD && !d.denied && d.shadow.present == 0 {
        return 0;
    }
    emit(&agent, &d, |ev| fill(ev, detail));
    lsm_ret(&d)
}

/// governance_common::unix_name_hash over `buf[1..=m]` (the abstract name after its NUL).
#[inline(always)]
fn name_hash(buf: &[u8; 128], m: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(m);
    h = h.wrapping_mul(0x0100_0000_01b3);
    let mut i = 0;
    while i < SUN_PATH_LEN - 1 {
        if i as u32 >= m {
            break;
        }
        h ^= buf[i + 1] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// Stream and seqpacket connects: `other` is the listening socket the kernel found for the
/// address the agent gave.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    // int unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    unix_decision(ctx.arg(1), unix_hook::CONNECT)
}

/// Datagrams: every `sendmsg()` to a peer (named by the call or by an earlier `connect()`),
/// and a datagram socket's `connect()`. `other` is the receiving socket.
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    // int unix_may_send(struct socket *sock, struct socket *other)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let other: u64 = ctx.arg(1);
    // SAFETY: see read_at.
    let sk = match unsafe { read_at::<u64>(other, off(&OFF_SOCKET_SK)) } {
        Ok(sk) => sk,
        Err(_) => return unix_unreadable(),
    };
    unix_decision(sk, unix_hook::SEND)
}

/// The receiving socket could not be read: refused for agents (fail closed).
#[inline(always)]
fn unix_unreadable() -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::fail_closed(Kind::Unix, Cause::Unreadable);
    emit(&agent, &d, |ev| ev.port = unix_hook::SEND);
    lsm_ret(&d)
}
