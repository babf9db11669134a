//! Source routes: an IPv4 loose or strict source route (`IP_OPTIONS` on the socket, or
//! `IP_RETOPTS` with one datagram) and an IPv6 routing header (`IPV6_RTHDR` or
//! `IPV6_2292PKTOPTIONS` on the socket, `IPV6_RTHDR` or `IPV6_2292RTHDR` with one datagram, or a
//! flow label made with one, `IPV6_FLOWLABEL_MGR`) send
//! a packet on to the route's last hop, while the connect and sendmsg programs decided on its
//! first (`udp_sendmsg` and `tcp_v4_connect` replace the destination after the cgroup hook
//! ran). No flag a program could read is left on the socket, so agents get no source route at
//! all, whatever the policy says: the `socket_setsockopt` hook refuses setting one, and
//! `socket_sendmsg` (held.rs) asks [`datagram_route`] about the datagram's control messages.
//! The same hook refuses multicast memberships, upper-layer protocols on TCP sockets and
//! binding to addresses the node need not own (see [`socket_setsockopt`]).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use governance_common::{allow, guard};

use crate::{
    decide::current_agent,
    guard::refuse,
    kernel::{Btf, OFF_MSGHDR_CONTROL, OFF_MSGHDR_CONTROLLEN, off, read_at},
};

const SOL_IP: i32 = 0;
pub(crate) const SOL_SOCKET: i32 = 1;
/// `SOL_SOCKET`'s `SO_PRIORITY`.
pub(crate) const SO_PRIORITY: i32 = 12;
/// A socket's or a datagram's mark, and transparent sockets (`IP_TRANSPARENT`,
/// `IPV6_TRANSPARENT`): `CAP_NET_RAW` grants them, which agents have only under
/// `allow_raw_sockets` (caps.rs); refused here then (a mark picks the node's routing table and
/// firewall treatment; red team rounds 15 and 16).
const SO_MARK: i32 = 36;
const IP_TRANSPARENT: i32 = 19;
const IPV6_TRANSPARENT: i32 = 75;
const IP_OPTIONS: i32 = 4;
/// An upper-layer protocol on a TCP socket (governance_common::guard::SOCKET_ULP).
const SOL_TCP: i32 = 6;
/// Binding to an address the node need not own (governance_common::guard::FOREIGN_SOURCE):
/// `IP_FREEBIND` at either level (IPv6 sockets honour it too), `IPV6_FREEBIND`.
const IP_FREEBIND: i32 = 15;
const IPV6_FREEBIND: i32 = 78;
const TCP_ULP: i32 = 31;
/// A reuseport group's steering program, set or removed (governance_common::guard::
/// REUSEPORT_STEER): `SO_ATTACH_REUSEPORT_CBPF`, `SO_ATTACH_REUSEPORT_EBPF`,
/// `SO_DETACH_REUSEPORT_BPF`.
const REUSEPORT_STEER: [i32; 3] = [51, 52, 68];
const IP_RETOPTS: i32 = 7;
const SOL_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_RTHDR: i32 = 57;
/// Flow label management: a label is made with options (`fl_create` takes a routing header
/// among them, `ip6_datagram_send_ctl`), which each datagram sent with that label carries
/// (`fl6_merge_options`, then `fl6_update_dst` replaces the destination after the sendmsg6
/// program decided). A socket uses only labels it got through this option, so refusing it
/// refuses every label's options.
const IPV6_FLOWLABEL_MGR: i32 = 32;
/// `sizeof(struct cmsghdr)`: `size_t cmsg_len; int cmsg_level; int cmsg_type;`.
const CMSG_HDR: u64 = 16;
/// How many control messages of one datagram are read; a datagram with more is refused to an
/// agent (the loop's bound, for the verifier).
const MAX_CMSGS: u32 = 16;

/// `IP_ADD_MEMBERSHIP` (35) to `IP_MSFILTER` (41) and the protocol-independent `MCAST_JOIN_GROUP`
/// (42) to `MCAST_MSFILTER` (48), at either level; `IPV6_ADD_MEMBERSHIP`, `IPV6_DROP_MEMBERSHIP`
/// (20, 21) and the anycast joins (27, 28) at `SOL_IPV6`.
const IP_MEMBERSHIP: core::ops::RangeInclusive<i32> = 35..=41;
const MCAST_MEMBERSHIP: core::ops::RangeInclusive<i32> = 42..=48;
const IPV6_MEMBERSHIP: [i32; 4] = [20, 21, 27, 28];

/// Built-in: agents may not give a socket a source route, nor join a multicast group (the
/// kernel's IGMP and MLD reports, sent on the node's behalf, carry the group and the source
/// filter the agent chose: data out past every network rule), nor put an upper-layer protocol
/// on a TCP socket (`TCP_ULP`: `smc` carries its data where no packet program sees it), nor
/// bind to an address the node need not own (`IP_FREEBIND`, `IPV6_FREEBIND`).
#[lsm(hook = "socket_setsockopt")]
pub fn socket_setsockopt(ctx: LsmContext) -> i32 {
    // int socket_setsockopt(struct socket *sock, int level, int optname)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let (level, name): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    match refused_option(level, name) {
        Some(what) => refuse(what, option_object(level, name)),
        // An agent given CAP_NET_RAW back (`allow_raw_sockets`) could set a priority above 6,
        // the daemon's proxy listeners' mark, through a call `cgroup/setsockopt` does not see
        // (32-bit, io_uring), and the value is not the hook's to read: no priority for it at
        // all (red team round 29). Other agents' priorities above 6 the kernel refuses itself.
        None if level == SOL_SOCKET && name == SO_PRIORITY => match current_agent() {
            Some(agent) if agent.value.allow & allow::RAW_SOCKETS != 0 => {
                refuse(guard::PACKET_MARK, option_object(level, name))
            }
            _ => 0,
        },
        None => 0,
    }
}

/// The built-in refusal (governance_common::guard) of setting socket option `name` at `level`,
/// for the LSM hook above and for kernels without BPF LSM (sockopt.rs): a source route, a mark
/// or a transparent socket, an upper-layer protocol, a multicast membership.
#[inline(always)]
pub(crate) fn refused_option(level: i32, name: i32) -> Option<u8> {
    let route = (level == SOL_IP && name == IP_OPTIONS)
        || (level == SOL_IPV6
            && (name == IPV6_RTHDR || name == IPV6_2292PKTOPTIONS || name == IPV6_FLOWLABEL_MGR));
    if route {
        return Some(guard::SOURCE_ROUTE);
    }
    let marks = (level == SOL_SOCKET && name == SO_MARK)
        || (level == SOL_IP && name == IP_TRANSPARENT)
        || (level == SOL_IPV6 && name == IPV6_TRANSPARENT);
    if marks {
        return Some(guard::PACKET_MARK);
    }
    if level == SOL_TCP && name == TCP_ULP {
        return Some(guard::SOCKET_ULP);
    }
    if level == SOL_SOCKET && REUSEPORT_STEER.contains(&name) {
        return Some(guard::REUSEPORT_STEER);
    }
    if (level == SOL_IP && name == IP_FREEBIND) || (level == SOL_IPV6 && name == IPV6_FREEBIND) {
        return Some(guard::FOREIGN_SOURCE);
    }
    let multicast = (level == SOL_IP && IP_MEMBERSHIP.contains(&name))
        || ((level == SOL_IP || level == SOL_IPV6) && MCAST_MEMBERSHIP.contains(&name))
        || (level == SOL_IPV6 && IPV6_MEMBERSHIP.contains(&name));
    multicast.then_some(guard::MULTICAST)
}

/// A socket option as an event's object: (level << 32) | name.
#[inline(always)]
pub(crate) fn option_object(level: i32, name: i32) -> u64 {
    ((level as u64) << 32) | name as u32 as u64
}

/// For `socket_sendmsg`: the refusal when `msg` (a `struct msghdr *`) carries a source route
/// or a mark in its control messages and the sender is an agent; None otherwise. The control messages
/// are the kernel's copy by then (`____sys_sendmsg` copies them before `sock_sendmsg`), walked
/// as `for_each_cmsghdr` walks them; a malformed one ends the walk (the kernel refuses the send
/// itself: `CMSG_OK`), an unreadable one or more than [`MAX_CMSGS`] count as a route.
#[inline(always)]
pub(crate) fn datagram_route(msg: Btf) -> Option<i32> {
    let len: u64 = msg.get(off(&OFF_MSGHDR_CONTROLLEN));
    if len < CMSG_HDR {
        return None;
    }
    let control: u64 = msg.get(off(&OFF_MSGHDR_CONTROL));
    let mut at: u64 = 0;
    let mut found: Option<u64> = None;
    let mut i = 0;
    while i < MAX_CMSGS {
        if at + CMSG_HDR > len {
            break;
        }
        // SAFETY: see read_at.
        let Ok(hdr) = (unsafe { read_at::<[u64; 2]>(control, at) }) else {
            found = Some(0);
            break;
        };
        let cmsg_len = hdr[0];
        if cmsg_len < CMSG_HDR || cmsg_len > len - at {
            break;
        }
        let (level, ty) = (hdr[1] as u32 as i32, (hdr[1] >> 32) as u32 as i32);
        if (level == SOL_IP && ty == IP_RETOPTS)
            || (level == SOL_IPV6 && (ty == IPV6_RTHDR || ty == IPV6_2292RTHDR))
            || (level == SOL_SOCKET && ty == SO_MARK)
        {
            found = Some(((level as u64) << 32) | ty as u64);
            break;
        }
        at += (cmsg_len + 7) & !7;
        i += 1;
    }
    if i == MAX_CMSGS && at + CMSG_HDR <= len {
        found = Some(0);
    }
    let what = found?;
    // A mark is reported as setsockopt reports it; a route, or a message that does not read,
    // as a source route.
    let detail = if (what >> 32) as i32 == SOL_SOCKET {
        guard::PACKET_MARK
    } else {
        guard::SOURCE_ROUTE
    };
    match refuse(detail, what) {
        0 => None,
        ret => Some(ret),
    }
}
