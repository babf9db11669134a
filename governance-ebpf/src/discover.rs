//! Discovery of agents nobody labelled (`cgroup_skb/egress` at the cgroup2 root): for packets
//! of processes outside every agent, a TLS ClientHello (its server name) or a DNS query (its
//! name) is copied, bounded, to a ring buffer of its own for the daemon, which decides whether
//! the process talks to an LLM provider. Evidence only: the program always passes the packet,
//! and agents' packets are not looked at beyond finding that they are agents'.
//!
//! The common path (every other packet) reads the IP and transport headers and a few payload
//! bytes; the agent lookup, the budget and the copy happen only for a ClientHello or a query.
//! A TCP packet too short to carry a ClientHello's first bytes (SYN, RST, ACK, FIN) ends on the
//! packet's length, before the reads it cannot need: each helper call counts on this path.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
            bpf_skb_load_bytes,
        },
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use governance_common::{
    AgentKey, MAX_CGROUP_DEPTH,
    discover::{
        DISCOVER_BUDGET, DISCOVER_BYTES, DISCOVER_DNS, DISCOVER_DROPPED, DISCOVER_IN_WINDOW,
        DISCOVER_LIMITED, DISCOVER_REPORTED, DISCOVER_TLS, DISCOVER_WINDOW, DISCOVER_WINDOW_NS,
        DiscoverEvent,
    },
    slot,
};

use crate::maps::{AGENTS, DISCOVER, DISCOVER_STATS, STATE};

/// 1 when this kernel lets cgroup_skb programs call `bpf_get_current_pid_tgid` and
/// `bpf_get_current_comm` (6.1 does not: the verifier refuses the program), set by the loader
/// from a probe ([`governance_common::discover::TASK_HELPERS_GLOBAL`]). In .rodata, frozen: the
/// verifier sees a constant and never walks the calls where it is 0; the daemon then attributes
/// the evidence to the socket's cgroup.
#[unsafe(no_mangle)]
static DISCOVER_TASK_HELPERS: u64 = 0;

const PASS: i32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
/// What is read of a TCP payload to recognise a ClientHello: the record header (5 bytes) and
/// the handshake message type.
const CLIENT_HELLO_HEAD: usize = 6;

#[cgroup_skb(egress)]
pub fn discover(ctx: SkBuffContext) -> i32 {
    let _ = try_discover(&ctx);
    PASS
}

/// Where the transport header starts, and the protocol: IPv4 (any header length, first
/// fragments only) or IPv6 (no extension headers: TCP or UDP right after the fixed header).
/// One copy of the header's first bytes: every helper call counts on this path, which every
/// packet takes.
#[inline(always)]
fn transport(ctx: &SkBuffContext) -> Option<(usize, u8)> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    if proto == ETH_P_IP {
        // version/IHL, ..., flags/fragment offset (6-7), TTL, protocol (9).
        let h: [u8; 10] = ctx.load(0).ok()?;
        if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return None; // a later fragment: no transport header
        }
        Some((usize::from(h[0] & 0x0f) * 4, h[9]))
    } else if proto == ETH_P_IPV6 {
        Some((40, ctx.load(6).ok()?))
    } else {
        None
    }
}

#[inline(always)]
fn try_discover(ctx: &SkBuffContext) -> Option<()> {
    let (l4, protocol) = transport(ctx)?;
    let len = ctx.len() as usize;
    let (kind, payload, port) = if protocol == IPPROTO_TCP {
        // No room for a TCP header (20 bytes) and a record's first 6 bytes: no ClientHello.
        if len < l4 + 20 + CLIENT_HELLO_HEAD {
            return None;
        }
        // Ports, sequence and acknowledgment numbers, data offset (12): one copy.
        let t: [u8; 13] = ctx.load(l4).ok()?;
        let payload = l4 + usize::from(t[12] >> 4) * 4;
        // Options but no payload (a SYN, an ACK with timestamps): ends here.
        if len < payload + CLIENT_HELLO_HEAD {
            return None;
        }
        // A TLS handshake record (0x16), version 3.x, whose first message is a ClientHello (1).
        let head: [u8; CLIENT_HELLO_HEAD] = ctx.load(payload).ok()?;
        if head[0] != 0x16 || head[1] != 0x03 || head[5] != 0x01 {
            return None;
        }
        (DISCOVER_TLS, payload, u16::from_be_bytes([t[2], t[3]]))
    } else if protocol == IPPROTO_UDP {
        let port = u16::from_be(ctx.load(l4 + 2).ok()?);
        if port != DNS_PORT {
            return None;
        }
        (DISCOVER_DNS, l4 + 8, port)
    } else {
        return None;
    };
    let skb: *mut __sk_buff = ctx.skb.skb;
    if in_agent(skb) || !within_budget() {
        return None;
    }
    let Some(mut entry) = DISCOVER.reserve::<DiscoverEvent>(0) else {
        stat(DISCOVER_DROPPED);
        return None;
    };
    let ev = entry.as_mut_ptr();
    let avail = ctx.len().saturating_sub(payload as u32);
    // Bounded for the verifier: 1 to the buffer's size, by construction (a zero check is
    // folded away by the compiler). A payload of 0 bytes makes the copy fail: discarded.
    let n = avail.saturating_sub(1).min(DISCOVER_BYTES as u32 - 1) + 1;
    // SAFETY: the entry is a reserved, exclusively owned record of size_of::<DiscoverEvent>()
    // bytes; `n` is at most the payload buffer's size; the helpers take the program's context.
    let copied = unsafe {
        bpf_skb_load_bytes(
            skb.cast(),
            payload as u32,
            (*ev).payload.as_mut_ptr().cast(),
            n,
        )
    } == 0;
    if !copied {
        entry.discard(0);
        return None;
    }
    // SAFETY: as above.
    unsafe {
        (*ev).cgroup_id = bpf_skb_cgroup_id(skb);
        (*ev).cookie = bpf_get_socket_cookie(skb.cast());
        (*ev).time_ns = bpf_ktime_get_ns();
        if crate::kernel::off(&DISCOVER_TASK_HELPERS) != 0 {
            (*ev).pid_tgid = bpf_get_current_pid_tgid();
            (*ev).comm = bpf_get_current_comm().unwrap_or_default();
        } else {
            (*ev).pid_tgid = 0;
            (*ev).comm = [0; 16];
        }
        (*ev).kind = kind;
        (*ev)._pad = [0];
        (*ev).port = port;
        (*ev).len = n;
    }
    entry.submit(0);
    stat(DISCOVER_REPORTED);
    Some(())
}

/// Does the socket's cgroup lie in an agent (the same top-down walk as `current_agent`, on the
/// socket's cgroup)? With no generation loaded there are no agents.
#[inline(always)]
fn in_agent(skb: *mut __sk_buff) -> bool {
    let generation = STATE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return false;
    }
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: the helper takes the program's own context.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            return false;
        }
        let key = AgentKey {
            cgroup_id: id,
            slot: slot(generation),
            profile: 0,
        };
        // SAFETY: only presence is read.
        if unsafe { AGENTS.get(&key) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// This CPU's budget of reports per window (see `DISCOVER_BUDGET`).
#[inline(always)]
fn within_budget() -> bool {
    let (Some(start), Some(n)) = (
        DISCOVER_STATS.get_ptr_mut(DISCOVER_WINDOW),
        DISCOVER_STATS.get_ptr_mut(DISCOVER_IN_WINDOW),
    ) else {
        return false;
    };
    // SAFETY: helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slots of a per-CPU map; only this CPU writes them.
    unsafe {
        if now.wrapping_sub(*start) >= DISCOVER_WINDOW_NS {
            *start = now;
            *n = 0;
        }
        if *n >= DISCOVER_BUDGET {
            stat(DISCOVER_LIMITED);
            return false;
        }
        *n += 1;
    }
    true
}

#[inline(always)]
fn stat(slot: u32) {
    if let Some(v) = DISCOVER_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU map; only this CPU writes it.
        unsafe { *v += 1 };
    }
}
