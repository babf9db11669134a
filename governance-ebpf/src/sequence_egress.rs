//! Sequence rules, per packet (`cgroup_skb/egress` at the cgroup2 root): a connection the
//! agent made before it armed a rule (TCP, connected UDP) never passes the connect or sendmsg
//! programs again, so each of its outgoing packets is checked here instead, whatever sent it
//! (write, send, sendfile, splice, io_uring, a retransmission). A packet of an armed agent
//! whose destination the armed rule's `then.network.except` leaves out, and that does not go to
//! the policy proxy, is dropped (`sequence::outside`, the lookup `restrict` makes for connects)
//! and reported, at most once a second per agent and destination.
//!
//! Its own program beside `discover` (not inside it): discovery looks at processes outside
//! agents and is optional (`required: false`), this enforces for agents and must attach.
//!
//! The packet's socket, not the current task, says whose it is (a retransmission runs in
//! softirq, in whatever task was interrupted): its cgroup's ancestry is walked top-down as
//! `current_agent` walks the task's. For the same reason, and because the kernel refuses the
//! current-task helpers to this program type before Linux 6.10, its events carry no process
//! (pid, comm 0) and are written here rather than by `decide::emit`.
//!
//! No sequence rule in the active generation: passed after two array reads. Not an agent's
//! packet, or an agent with no sequence rule: passed after the walk, before the headers are
//! read.
//!
//! First, every packet is looked at for a source route (an IPv6 routing header, an IPv4 loose
//! or strict source route option), which sends it on past the destination the connect and
//! sendmsg programs decided: an agent's such packet is dropped and reported as the guard
//! `source-route`. The LSM hooks (route.rs) refuse setting one, but not every way reaches them:
//! `sendmmsg` asks `socket_sendmsg` about its first message only and about each later one to a
//! new address, so a routing header in a later message to the same address went out, and in
//! degraded mode no hook refuses them at all (red team round 24). A packet with no extension
//! header and no IPv4 option (nearly all) passes this check after one load.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_get_socket_uid, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use governance_common::{
    AgentKey, COMM_LEN, Cause, Counter, EVENTS_RING_BYTES, Event, GrantKey, Kind, MAX_CGROUP_DEPTH,
    NO_RULE, Verdict, flags, guard, net_object, proto,
    sequence::{SEQ_EGRESS_REPORT_NS, SeqEgressKey},
    slot,
};

use crate::{
    decide::{count, now, verdict_of},
    kernel::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::{AGENTS, EVENTS, GRANTS, PROXY, SEQ_CLASSES, SEQ_EGRESS_REPORTED, STATE},
    net::is_proxy,
    sequence,
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[cgroup_skb(egress)]
pub fn sequence_egress(ctx: SkBuffContext) -> i32 {
    if let Some(what) = source_route(&ctx) {
        return refuse_source_route(&ctx, what);
    }
    decide(&ctx)
}

/// IPv6 extension headers: hop-by-hop options, routing, destination options.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DSTOPTS: u8 = 60;
/// How many extension headers are walked to find a routing header; a packet with more is
/// taken for a source-routed one (the loop's bound, for the verifier).
const MAX_EXT_HEADERS: u32 = 4;
/// IPv4 options: end of list, no operation, loose and strict source route.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// The most option bytes an IPv4 header has (its 60 bytes, less the fixed 20).
const MAX_IPV4_OPTIONS: usize = 40;

/// Whether the packet carries a source route, as route.rs names it: (level << 32) | option of
/// the socket option that would set it (`SOL_IPV6`/`IPV6_RTHDR`, `SOL_IP`/`IP_OPTIONS`). A
/// header that cannot be read counts as one (only an agent's packet is then dropped).
#[inline(always)]
fn source_route(ctx: &SkBuffContext) -> Option<u64> {
    const IPV6_RTHDR: u64 = (41 << 32) | 57;
    const IP_OPTIONS: u64 = 4;
    let family = u16::from_be(ctx.skb.protocol() as u16);
    if family == ETH_P_IPV6 {
        let Ok(mut next) = ctx.load::<u8>(6) else {
            return Some(IPV6_RTHDR);
        };
        let mut at = 40usize;
        for _ in 0..MAX_EXT_HEADERS {
            match next {
                IPV6_ROUTING => return Some(IPV6_RTHDR),
                IPV6_HOPOPTS | IPV6_DSTOPTS => {
                    // Next header, then the length in 8-byte units past the first 8.
                    let Ok(h) = ctx.load::<[u8; 2]>(at) else {
                        return Some(IPV6_RTHDR);
                    };
                    next = h[0];
                    at += (usize::from(h[1]) + 1) * 8;
                }
                _ => return None,
            }
        }
        return matches!(next, IPV6_ROUTING | IPV6_HOPOPTS | IPV6_DSTOPTS).then_some(IPV6_RTHDR);
    }
    if family != ETH_P_IP {
        return None;
    }
    let Ok(first) = ctx.load::<u8>(0) else {
        return Some(IP_OPTIONS);
    };
    let end = usize::from(first & 0x0f) * 4;
    let mut at = 20usize;
    // Each option is one byte at least: at most MAX_IPV4_OPTIONS steps.
    for _ in 0..MAX_IPV4_OPTIONS {
        if at >= end {
            return None;
        }
        let Ok(kind) = ctx.load::<u8>(at) else {
            return Some(IP_OPTIONS);
        };
        match kind {
            IPOPT_END => return None,
            IPOPT_NOOP => at += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Some(IP_OPTIONS),
            _ => {
                let Ok(len) = ctx.load::<u8>(at + 1) else {
                    return Some(IP_OPTIONS);
                };
                if len < 2 {
                    return Some(IP_OPTIONS);
                }
                at += usize::from(len);
            }
        }
    }
    None
}

/// Drop an agent's source-routed packet and report it (the guard `source-route`, at most once
/// a second per agent and option); pass anyone else's.
#[inline(always)]
fn refuse_source_route(ctx: &SkBuffContext, what: u64) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let Some((root, class, generation)) = agent_of(skb) else {
        return PASS;
    };
    count(Counter::Decisions);
    count(Counter::Denials);
    let t = now();
    if first_this_second(root, what, t) {
        report(
            skb,
            &Report {
                root,
                class,
                generation,
                rule_id: NO_RULE,
                verdict: Verdict::Block,
                cause: Cause::Builtin,
                flags: flags::DENIED,
                shadow_id: 0,
                shadow_verdict: 0,
                object: what,
                addr: [0; 16],
                port: 0,
                kind: Kind::Guard,
                detail: guard::SOURCE_ROUTE,
            },
        );
    }
    DROP
}

/// The agent the packet's socket belongs to: (agent root, class, generation). None at once
/// when the active generation has no sequence rule at all (`SEQ_ANY`, an array: no hash): no
/// walk.
#[inline(always)]
fn skb_agent(skb: *mut __sk_buff) -> Option<(u64, u32, u32)> {
    let generation = STATE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return None;
    }
    if !sequence::any(slot(generation)) {
        return None;
    }
    agent_in(skb, generation)
}

/// The agent the packet's socket belongs to in the active generation, whatever its rules.
#[inline(always)]
fn agent_of(skb: *mut __sk_buff) -> Option<(u64, u32, u32)> {
    match STATE.get(0).copied().unwrap_or(0) {
        0 => None,
        generation => agent_in(skb, generation),
    }
}

/// The agent the packet's socket belongs to in `generation` (not 0): its cgroup's ancestry
/// walked top-down, as `current_agent` walks the task's.
#[inline(always)]
fn agent_in(skb: *mut __sk_buff, generation: u32) -> Option<(u64, u32, u32)> {
    let slot = slot(generation);
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: the helper takes the program's own context.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            return None;
        }
        let key = AgentKey {
            cgroup_id: id,
            slot,
            profile: 0,
        };
        // SAFETY: the class is copied immediately.
        if let Some(v) = unsafe { AGENTS.get(&key) } {
            return Some((id, v.class, generation));
        }
        level += 1;
    }
    None
}

/// The packet's destination: address (IPv4 as IPv4-mapped IPv6), port (host order; 0 for a
/// protocol without ports, or an IPv6 packet whose first header is an extension header, so
/// that only an allowlist entry for every port lets it through) and protocol. None for a later
/// IPv4 fragment: the first one carries the ports and is decided; without it the datagram is
/// never reassembled. Fixed-size copies with bpf_skb_load_bytes (`ctx.load`): bounded reads
/// the verifier accepts whatever the packet's length.
#[inline(always)]
fn destination(ctx: &SkBuffContext) -> Option<([u8; 16], u16, u8)> {
    let family = u16::from_be(ctx.skb.protocol() as u16);
    let (addr, l4, protocol) = if family == ETH_P_IP {
        let h: [u8; 20] = ctx.load(0).ok()?;
        if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return None;
        }
        let addr = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, h[16], h[17], h[18], h[19],
        ];
        (addr, usize::from(h[0] & 0x0f) * 4, h[9])
    } else if family == ETH_P_IPV6 {
        let protocol: u8 = ctx.load(6).ok()?;
        let addr: [u8; 16] = ctx.load(24).ok()?;
        (addr, 40, protocol)
    } else {
        return None;
    };
    let port = if protocol == proto::TCP || protocol == proto::UDP {
        // Destination port: bytes 2-3 of both headers.
        u16::from_be(ctx.load(l4 + 2).ok()?)
    } else {
        0
    };
    Some((addr, port, protocol))
}

#[inline(always)]
fn decide(ctx: &SkBuffContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let Some((root, class, generation)) = skb_agent(skb) else {
        return PASS;
    };
    // SAFETY: only presence is read.
    if unsafe { SEQ_CLASSES.get(&class) }.is_none() {
        return PASS;
    }
    let Some((addr, port, protocol)) = destination(ctx) else {
        return PASS;
    };
    let Some(proxy) = PROXY.get(0) else {
        return DROP; // the map always has its one entry; fail closed if not
    };
    // The proxy decides each request on its connections (`then.http`).
    if is_proxy(proxy, &addr, port) {
        return PASS;
    }
    let t = now();
    let object = net_object(&addr, port);
    // The first enforcing rule that refuses (0: none), else the first shadow rule that would.
    let (mut rule_id, mut verdict, mut shadow_id, mut shadow_verdict) = (0u32, 0u8, 0u32, 0u8);
    sequence::outside(class, root, &addr, port, t, |e| {
        if e.shadow != 0 {
            if shadow_id == 0 {
                (shadow_id, shadow_verdict) = (e.rule_id, e.verdict);
            }
            return false;
        }
        (rule_id, verdict) = (e.rule_id, e.verdict);
        true
    });
    if rule_id == 0 && shadow_id == 0 {
        return PASS;
    }
    let mut denied = rule_id != 0;
    let mut cause = Cause::Rule;
    if denied
        && verdict_of(verdict) == Verdict::Escalate
        && granted(root, object, &addr, port, protocol, t)
    {
        denied = false;
        cause = Cause::Granted;
    }
    if denied || shadow_id != 0 {
        count(Counter::Decisions);
        if denied {
            count(Counter::Denials);
        }
        if first_this_second(root, object, t) {
            let mut f = flags::SEQUENCE;
            if denied {
                f |= flags::DENIED;
            }
            if shadow_id != 0 {
                f |= flags::SHADOW;
            }
            // Shadow only: the packet goes out (allowed, as far as the enforcing rules go).
            let (rule_id, verdict, cause) = if rule_id != 0 {
                (rule_id, verdict_of(verdict), cause)
            } else {
                (NO_RULE, Verdict::Allow, Cause::Default)
            };
            report(
                skb,
                &Report {
                    root,
                    class,
                    generation,
                    rule_id,
                    verdict,
                    cause,
                    flags: f,
                    shadow_id,
                    shadow_verdict,
                    object,
                    addr,
                    port,
                    kind: Kind::Send,
                    detail: protocol,
                },
            );
        }
    }
    if denied { DROP } else { PASS }
}

/// An approved escalation for this destination: a grant for a connect or a datagram to it.
#[inline(always)]
fn granted(root: u64, object: u64, addr: &[u8; 16], port: u16, protocol: u8, t: u64) -> bool {
    let mut key = GrantKey::new(root, Kind::Connect, object).destination(*addr, port, protocol);
    // SAFETY: the value is read immediately.
    if unsafe { GRANTS.get(&key) }.is_some_and(|expiry| *expiry > t) {
        return true;
    }
    key.kind = Kind::Send as u8;
    // SAFETY: as above.
    unsafe { GRANTS.get(&key) }.is_some_and(|expiry| *expiry > t)
}

/// Whether no refusal was reported for this agent and destination in the last second (and
/// record this one). A full table (LRU: it never is) or a lost race reports once more.
#[inline(always)]
fn first_this_second(root: u64, object: u64, t: u64) -> bool {
    let key = SeqEgressKey {
        agent_cgroup: root,
        object,
    };
    if let Some(last) = SEQ_EGRESS_REPORTED.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for the program's run.
        unsafe {
            if t.wrapping_sub(*last) < SEQ_EGRESS_REPORT_NS {
                return false;
            }
            *last = t;
        }
        return true;
    }
    let _ = SEQ_EGRESS_REPORTED.insert(&key, &t, 0);
    true
}

/// What a refused (or, for a shadow rule, would-be refused) packet's event says.
struct Report {
    root: u64,
    class: u32,
    generation: u32,
    rule_id: u32,
    verdict: Verdict,
    cause: Cause,
    flags: u8,
    shadow_id: u32,
    shadow_verdict: u8,
    object: u64,
    addr: [u8; 16],
    port: u16,
    kind: Kind,
    detail: u8,
}

/// The event of a packet decision (kind `send`, or a guard's), as `decide::emit` writes it,
/// without the process (see the module's comment).
#[inline(always)]
fn report(skb: *mut __sk_buff, r: &Report) {
    // SAFETY: the helper takes the program's own context.
    let (cgroup, uid) = unsafe { (bpf_skb_cgroup_id(skb), bpf_get_socket_uid(skb)) };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    // SAFETY: the entry is a reserved, exclusively owned record of size_of::<Event>() bytes.
    // Every field is written before submit, except the tail of `path` past its NUL.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.time_ns = now();
    ev.cgroup_id = cgroup;
    ev.agent_cgroup = r.root;
    ev.object = r.object;
    ev.pid = 0;
    ev.tgid = 0;
    ev.ppid = 0;
    ev.ns_pid = 0;
    ev._reserved = 0;
    ev.uid = uid;
    ev.class = r.class;
    ev.rule_id = r.rule_id;
    ev.shadow_rule_id = r.shadow_id;
    ev.generation = r.generation;
    ev.kind = r.kind as u8;
    ev.verdict = r.verdict as u8;
    ev.cause = r.cause as u8;
    ev.flags = r.flags;
    ev.shadow_verdict = r.shadow_verdict;
    ev.detail = r.detail;
    ev.port = r.port;
    ev.addr = r.addr;
    ev.comm = [0; COMM_LEN];
    ev.path[0] = 0;
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA) > u64::from(EVENTS_RING_BYTES / 8) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake);
}
