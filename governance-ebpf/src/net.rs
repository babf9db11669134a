//! Network: the cgroup socket-address programs (connect4/6, sendmsg4/6), which decide on a
//! destination and may send a connect through the policy proxy, bind4/6, which keep agents off
//! the daemon's ports, and the `sock_ops` program that files each proxied connection's record
//! under its source address and port for the proxy.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_addr, bpf_sock_tuple},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_lookup_tcp, bpf_sk_release,
    },
    macros::{cgroup_sock_addr, sock_ops},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockOpsContext},
};
use governance_common::{
    ApiAddr, Cause, ConnKey, Counter, GrantKey, Kind, NET_SLOTS, NetKey, PROXY_LISTENER_PRIORITY,
    ProxyAddr, RulePair, allow, flags, guard, net_object, proto,
};

use crate::{
    decide::{Agent, Decision, apply, count, current_agent, emit, or_no_rule},
    kernel::{AF_INET, AF_INET6, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    maps::{API_ADDR, NET_RULES, ORIG_DST, ORIG_SCRATCH, PROXY, PROXY_CONNS},
    sequence,
};

/// Network: the destination (IPv4 as IPv4-mapped IPv6) against the class's prefix table. One
/// longest-prefix lookup yields every rule that covers the address, most specific first; the
/// first whose port and protocol match decides.
#[inline(always)]
pub(crate) fn net_decision(
    kind: Kind,
    agent: &Agent,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
) -> (Decision, bool) {
    let key = Key::new(
        ((4 + 16) * 8) as u32,
        NetKey {
            class_be: agent.value.class.to_be_bytes(),
            addr,
        },
    );
    // `pair` initialised before the lookup, and passed as `Some` (see `or_no_rule`): with an
    // `Option` left `None` here, connect6 and sendmsg4 failed the verifier (`!read_ok`) once
    // the control-API check was added.
    let mut pair = RulePair::default();
    let mut via_proxy = false;
    if let Some(v) = NET_RULES.get(&key) {
        let mut i = 0;
        while i < NET_SLOTS {
            if i as u32 >= v.len {
                break;
            }
            let e = &v.entries[i];
            if port >= e.port_lo
                && port <= e.port_hi
                && (e.proto == proto::ANY || e.proto == protocol)
            {
                if e.shadow != 0 {
                    if pair.shadow.present == 0 {
                        pair.shadow = e.rule;
                    }
                } else {
                    pair.enforce = e.rule;
                    via_proxy = e.via_proxy != 0;
                    break;
                }
            }
            i += 1;
        }
    }
    let grant =
        GrantKey::new(agent.root, kind, net_object(&addr, port)).destination(addr, port, protocol);
    let default = agent.value.net_default;
    let d = apply(
        kind,
        agent,
        Some(or_no_rule(pair, &default)),
        default,
        grant,
    );
    (d, via_proxy)
}

#[inline(always)]
pub(crate) fn mapped4(ip4_be: u32) -> [u8; 16] {
    let b = ip4_be.to_ne_bytes(); // user_ip4 holds the address in network byte order.
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// A send with no address on a connected UDP socket comes here when it carries an IP-level
/// control message (`IP_TOS`, `IP_PKTINFO`, `IPV6_TCLASS`: QUIC and ECN stacks), which makes
/// the kernel treat the socket as unconnected: the program is given a zeroed address, and the
/// kernel then sends to the connected peer whatever the program writes. The peer is written
/// into the context, so what is decided (and recorded) is where the datagram goes (red team
/// round 29: it was decided as 127.0.0.1 port 0, refusing legitimate sends). The kernel
/// refuses a named datagram to port 0 itself, so a zero port here is always this case;
/// unconnected (no peer), it is left alone.
#[inline(always)]
fn to_peer_if_unnamed(sa: *mut bpf_sock_addr, v6: bool) {
    // SAFETY: the context pointer is valid for the program's run, and its `sk` is a socket
    // the verifier types as such (never null in these programs); 4-byte context stores.
    unsafe {
        if core::ptr::read_volatile(&(*sa).user_port) != 0 {
            return;
        }
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            return;
        }
        let dport = core::ptr::read_volatile(&(*sk).dst_port);
        // The peer, whole: a socket connected to port 0 of an address is connected too.
        let peer = if v6 {
            [
                core::ptr::read_volatile(&(*sk).dst_ip6[0]),
                core::ptr::read_volatile(&(*sk).dst_ip6[1]),
                core::ptr::read_volatile(&(*sk).dst_ip6[2]),
                core::ptr::read_volatile(&(*sk).dst_ip6[3]),
            ]
        } else {
            [core::ptr::read_volatile(&(*sk).dst_ip4), 0, 0, 0]
        };
        if dport == 0 && peer == [0; 4] {
            return;
        }
        if v6 {
            set_ip6(sa, peer);
        } else {
            core::ptr::write_volatile(&mut (*sa).user_ip4, peer[0]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(dport));
    }
}

/// The unspecified address is the local host to connect() and sendmsg() (the kernel routes
/// `0.0.0.0` to 127.0.0.1, or to the socket's bound address, and `::` to ::1): the destination
/// is rewritten to loopback before anything is decided, so a rule on loopback holds for it and
/// what is decided is where it goes. The rewrite is made in the context and read back from it,
/// not kept in a variable: a loopback constant beside the unknown address would have the
/// verifier walk everything after this once per branch (`connect6` went from 145,000 to
/// 483,000 instructions that way).
#[inline(always)]
fn to_loopback_if_unspecified(sa: *mut bpf_sock_addr, v6: bool) {
    // SAFETY: the context pointer is valid for the program's run; connect and sendmsg
    // programs may store to the destination (4-byte stores).
    unsafe {
        if !v6 {
            if core::ptr::read_volatile(&(*sa).user_ip4) == 0 {
                core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes([127, 0, 0, 1]));
            }
            return;
        }
        let w = user_ip6(sa);
        let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        if w[0] != 0 || w[1] != 0 || w[3] != 0 || (w[2] != 0 && w[2] != mapped) {
            return;
        }
        if w[2] == 0 {
            set_ip6(sa, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
        } else {
            set_ip6(sa, [0, 0, mapped, u32::from_ne_bytes([127, 0, 0, 1])]);
        }
    }
}

#[inline(always)]
fn ip6(words: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        a[i * 4] = b[0];
        a[i * 4 + 1] = b[1];
        a[i * 4 + 2] = b[2];
        a[i * 4 + 3] = b[3];
        i += 1;
    }
    a
}

/// Is `addr:port` where the policy proxy listens? (`addr` IPv6 or IPv4-mapped.)
/// Compared word by word: building the two candidate addresses would cost 32 bytes of the
/// 512-byte stack.
#[inline(always)]
pub(crate) fn is_proxy(p: &ProxyAddr, addr: &[u8; 16], port: u16) -> bool {
    if p.enabled == 0 || u32::from(port.to_be()) != p.port {
        return false;
    }
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let (w0, w1, w2, w3) = (w(0), w(4), w(8), w(12));
    let v4 = w0 == 0 && w1 == 0 && w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]) && w3 == p.ip4;
    v4 || (w0 == p.ip6[0] && w1 == p.ip6[1] && w2 == p.ip6[2] && w3 == p.ip6[3])
}

/// Is `addr:port` where the daemon's TCP control API listens? (Every address of the port when
/// it listens on all of them.) Compared word by word, as `is_proxy`.
#[inline(always)]
pub(crate) fn is_api(a: &ApiAddr, addr: &[u8; 16], port: u16) -> bool {
    if a.enabled == 0 || a.port != port {
        return false;
    }
    if a.any_addr != 0 {
        return true;
    }
    let w = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    w(addr, 0) == w(&a.addr, 0)
        && w(addr, 4) == w(&a.addr, 4)
        && w(addr, 8) == w(&a.addr, 8)
        && w(addr, 12) == w(&a.addr, 12)
}

/// Is the socket that would take a connection to the proxy's address, in the caller's network
/// namespace, the daemon's listener (`PROXY_LISTENER_PRIORITY`)? Looked up as the kernel will
/// deliver the connection: IPv4 (`v4`: an IPv4 socket, or a dual-stack one going to an
/// IPv4-mapped address) or IPv6. No listener, or another's (an agent given the proxy's port in
/// its namespace): false, and the connect is refused rather than sent to it.
#[inline(always)]
fn proxy_listens(ctx: &SockAddrContext, p: &ProxyAddr, v4: bool) -> bool {
    // SAFETY: a plain-data union, zeroed.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // The tuple's size tells the helper the family.
    let size = if v4 {
        // SAFETY: writes of plain data into the union's IPv4 member.
        unsafe {
            t.__bindgen_anon_1.ipv4.daddr = p.ip4;
            t.__bindgen_anon_1.ipv4.dport = p.port as u16;
            core::mem::size_of_val(&t.__bindgen_anon_1.ipv4)
        }
    } else {
        // Writes of plain data into the union's IPv6 member.
        t.__bindgen_anon_1.ipv6.daddr = p.ip6;
        t.__bindgen_anon_1.ipv6.dport = p.port as u16;
        core::mem::size_of::<bpf_sock_tuple>()
    };
    // SAFETY: the program's own context and a tuple on the stack of the size given; the socket
    // returned is released below on the one path that has it.
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            ctx.sock_addr.cast(),
            &mut t,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let priority = (*sk).priority;
        bpf_sk_release(sk.cast());
        priority == PROXY_LISTENER_PRIORITY
    }
}

/// Remember where an agent's TCP connection to the proxy was going, by socket cookie, until
/// the handshake (see `sock_ops`) files it under the client's port (and network namespace)
/// for the proxy to find.
/// The record is built in per-CPU scratch: the connect programs' stack is nearly full (6.1's
/// verifier counts 512 bytes across the whole call chain, so no subprogram either).
#[inline(always)]
fn record_for_proxy(
    ctx: &SockAddrContext,
    agent: &Agent,
    addr: &[u8; 16],
    port: u16,
    redirected: bool,
) -> bool {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(orig) = ORIG_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let orig = unsafe { &mut *orig };
    orig.addr = if redirected { *addr } else { [0; 16] };
    orig.port = if redirected { port } else { 0 };
    orig.redirected = u8::from(redirected);
    orig._pad = 0;
    orig.tgid = agent.tgid;
    orig.agent_cgroup = agent.root;
    orig.cgroup_id = agent.cgroup;
    orig.generation = agent.generation;
    orig._pad2 = 0;
    ORIG_DST.insert(&cookie, &*orig, 0).is_ok()
}

/// Shared body of the four cgroup socket-address programs: 1 lets the call go on, 0 refuses
/// it with EPERM.
///
/// Built-in, before everything: the daemon's TCP control API is refused to agents, whatever
/// the policy says (it approves escalations and reloads policy).
///
/// An agent's TCP connect to the proxy itself is let through (it is governed there) and
/// recorded, so the proxy can tell which agent is calling, when its class has the proxy's
/// reach (`allow::PROXY`: every agent's, not a `network: none` sandbox profile's, whose connect
/// to the proxy the network table decides like any other). A `via_proxy` rule sends the connect
/// to the proxy instead: the destination is rewritten and the original recorded. Whatever
/// cannot go through the proxy (UDP, no proxy listening, no room to record) is refused: a
/// `via_proxy` action never goes out direct.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, kind: Kind, v6: bool) -> i32 {
    let Some(agent) = current_agent() else {
        return 1;
    };
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    if kind == Kind::Send {
        to_peer_if_unnamed(sa, v6);
    }
    to_loopback_if_unspecified(sa, v6);
    // Read after the rewrite: `user_addr`'s loads are volatile, so they see what
    // `to_loopback_if_unspecified` may have stored (see there).
    let addr = user_addr(sa, v6);
    // SAFETY: the context pointer is valid for the program's run; plain ctx loads.
    let (port_be, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    let port = u16::from_be(port_be as u16);
    let protocol = protocol as u8;
    let tcp_connect = kind == Kind::Connect && protocol == proto::TCP;
    let Some(proxy) = PROXY.get(0) else {
        return 0; // the map always has its one entry; fail closed if not
    };
    // One decision and one report for every branch: a second inlined `emit` would not fit the
    // stack budget the verifier counts across the whole program.
    let api = API_ADDR.get(0).is_some_and(|a| is_api(a, &addr, port));
    // The proxy serves TCP: a datagram to its address is decided by the network rules like any
    // other (with a source route, its address is only the first hop). A class without the
    // proxy's reach (a `network: none` sandbox profile, a mark whose profile is gone) has its
    // connect to the proxy decided by its network table too, which refuses it: through the
    // proxy it would reach everything the proxy does (red team round 5, F1).
    let reach_proxy = agent.value.allow & allow::PROXY != 0;
    let to_proxy = !api && tcp_connect && reach_proxy && is_proxy(proxy, &addr, port);
    let (mut d, via_proxy) = if api {
        (Decision::builtin(kind, true), false)
    } else if to_proxy {
        (Decision::builtin(kind, false), false)
    } else {
        net_decision(kind, &agent, addr, port, protocol)
    };
    // Going to the proxy, addressed to it or sent there: only to the daemon's listener.
    let mapped = addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if to_proxy && !proxy_listens(ctx, proxy, !v6 || mapped) {
        d = Decision::fail_closed(kind, Cause::NoProxy);
    } else if to_proxy && !record_for_proxy(ctx, &agent, &addr, port, false) {
        count(Counter::MapFull);
        d = Decision::fail_closed(kind, Cause::NoProxy);
    }
    if via_proxy && !d.denied {
        if proxy.enabled == 0
            || !tcp_connect
            || !reach_proxy
            || !proxy_listens(ctx, proxy, !v6 || mapped)
        {
            d = Decision::fail_closed(kind, Cause::NoProxy);
        } else if !record_for_proxy(ctx, &agent, &addr, port, true) {
            count(Counter::MapFull);
            d = Decision::fail_closed(kind, Cause::NoProxy);
        } else {
            // SAFETY: connect programs may rewrite the destination (4-byte ctx stores).
            unsafe {
                if !v6 {
                    (*sa).user_ip4 = proxy.ip4;
                } else if mapped {
                    // A dual-stack socket going to an IPv4 address: to the proxy's IPv4
                    // address, IPv4-mapped.
                    set_ip6(
                        sa,
                        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), proxy.ip4],
                    );
                } else {
                    set_ip6(sa, proxy.ip6);
                }
                (*sa).user_port = proxy.port;
            }
            d.extra_flags |= flags::PROXIED;
        }
    }
    // Armed sequence rules decide what goes out directly; what goes to the proxy (addressed
    // to it, or sent there above) is decided there, per request.
    if !d.denied && !to_proxy && d.extra_flags & flags::PROXIED == 0 {
        sequence::restrict(&agent, &mut d, &addr, port, protocol);
    }
    emit(&agent, &d, |ev| {
        ev.addr = addr;
        ev.port = port;
        ev.detail = protocol;
    });
    if d.denied { 0 } else { 1 }
}

/// The context's address (IPv4 as IPv4-mapped IPv6), read with volatile 4-byte loads (the
/// context allows no wider one), so that it is what `to_loopback_if_unspecified` may have
/// stored.
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, v6: bool) -> [u8; 16] {
    // SAFETY: the caller's context pointer; plain 4-byte context loads.
    unsafe {
        if v6 {
            ip6(user_ip6(sa))
        } else {
            mapped4(core::ptr::read_volatile(&(*sa).user_ip4))
        }
    }
}

/// Read `user_ip6`, one volatile 4-byte load per word (the context allows no wider load).
#[inline(always)]
unsafe fn user_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: the caller's context pointer; constant indexes within the array.
    unsafe {
        [
            core::ptr::read_volatile(&(*sa).user_ip6[0]),
            core::ptr::read_volatile(&(*sa).user_ip6[1]),
            core::ptr::read_volatile(&(*sa).user_ip6[2]),
            core::ptr::read_volatile(&(*sa).user_ip6[3]),
        ]
    }
}

/// Rewrite `user_ip6`. One 4-byte store per word: an array assignment compiles to a byte copy,
/// and the verifier allows only whole-word stores to the context.
#[inline(always)]
unsafe fn set_ip6(sa: *mut bpf_sock_addr, w: [u32; 4]) {
    // SAFETY: the caller's context pointer; constant indexes within the array.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
    }
}

/// When an agent's connection to the proxy is established (the client side, before the proxy
/// can accept it), file its record under the client's source port: the proxy looks it up by
/// the peer port of the connection it accepts. Any other connection to the proxy removes a
/// record left under its source (stale: that source is this connection's now).
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is copied immediately.
    let orig = (unsafe { ORIG_DST.get(&cookie) }).copied();
    // The family on the wire, as the proxy sees its peer (a dual-stack socket talking to an
    // IPv4-mapped address is IPv4), and the source address as the proxy sees its peer's, IPv4
    // as IPv4-mapped IPv6 (the words are in network byte order: their bytes are the wire's).
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let mut family = ctx.family();
    let local = if family == AF_INET6 {
        let r = ctx.remote_ip6();
        if r[0] == 0 && r[1] == 0 && r[2] == mapped {
            family = AF_INET;
        }
        // One volatile 4-byte load per word: the context allows no wider load, which a copy
        // of the array into bytes would otherwise become.
        // SAFETY: the program's own context; constant indexes within the array.
        unsafe {
            let ops = ctx.ops;
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ]
        }
    } else {
        [0, 0, mapped, ctx.local_ip4()]
    };
    let addr = ip6(local);
    // The namespace too: agents in their own network namespaces (pods) reach a proxy
    // listener in their namespace (see docs/kernel.md, the proxy redirect) from source ports
    // that other namespaces use as well.
    // SAFETY: the helper takes the program's own context (sock_ops since Linux 5.15).
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    let key = ConnKey {
        addr,
        port: ctx.local_port(),
        family,
        netns,
    };
    let Some(orig) = orig else {
        // A connection to the proxy of no agent's, or one whose pending entry was evicted (a
        // flood of connects filled the table): a record left under its source by an earlier
        // connection the proxy never accepted would answer for it (red team round 27).
        // Removed: the proxy refuses a connection it finds no record of. Only for the proxy's
        // port: connections elsewhere may share a live one's source port (round 27b). (The
        // context's remote port is the wire's, in its upper 16 bits.)
        let to_proxy = PROXY
            .get(0)
            .is_some_and(|p| p.enabled != 0 && ctx.remote_port() >> 16 == p.port);
        if to_proxy {
            let _ = PROXY_CONNS.remove(&key);
        }
        return 1;
    };
    if PROXY_CONNS.insert(&key, &orig, 0).is_err() {
        // The proxy will not find the connection and refuses it: fail closed.
        count(Counter::MapFull);
    }
    let _ = ORIG_DST.remove(&cookie);
    1
}

/// Built-in: an agent never binds the port the policy proxy or the daemon's TCP control API
/// listens on, on any address (a wildcard bind takes a loopback address's connections when
/// nothing else holds them) and in any network namespace (the daemon's listener in a pod's
/// namespace has the same port). While the daemon restarts, or before it opens its listener in
/// a new namespace, the agent's socket would take the connections the kernel sends to the
/// proxy: other agents' requests, their credentials among them, and the daemon's own bind.
/// The port is compared before the agent lookup: every bind on the node runs this.
#[inline(always)]
fn bind(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the program's own context; plain 4-byte loads.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    if port == 0 {
        return 1;
    }
    let proxy = PROXY
        .get(0)
        .is_some_and(|p| p.port == u32::from(port.to_be()));
    let api = API_ADDR
        .get(0)
        .is_some_and(|a| a.enabled != 0 && a.port == port);
    if !proxy && !api {
        return 1;
    }
    let Some(agent) = current_agent() else {
        return 1;
    };
    let addr = user_addr(sa, v6);
    let d = Decision::builtin(Kind::Guard, true);
    emit(&agent, &d, |ev| {
        ev.detail = guard::DAEMON_PORT;
        ev.object = u64::from(port);
        ev.addr = addr;
        ev.port = port;
    });
    0
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    bind(&ctx, false)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    bind(&ctx, true)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Connect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Connect, true)
}

/// Unconnected UDP (sendto/sendmsg with an address): the same table as connect.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Send, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Send, true)
}
