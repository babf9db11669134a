//! New sockets, in the network stack (`cgroup/sock_create` at the cgroup2 root): the same
//! decision as the `socket_create` LSM hook (protect.rs), for kernels without BPF LSM. There
//! the network rules are the cgroup connect and sendmsg programs' alone, and an agent's ICMP
//! ping socket (any uid, where `net.ipv4.ping_group_range` lets it), raw socket, SCTP, MPTCP
//! (whose extra subflows a kernel worker connects) or UDP-Lite socket sent past them (red team
//! round 24). With BPF LSM the hook refuses first and this program sees only what it let
//! through: it reports refusals only, so an allowed raw socket is one event.
//!
//! The kernel runs it for IPv4 and IPv6 sockets only (`inet_create`, `inet6_create`), in the
//! task that makes the socket, never for the kernel's own: other families (vsock, packet,
//! netlink) are the LSM hook's alone (docs/limits.md, degraded mode).
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use governance_common::allow;

use crate::{
    decide::current_agent,
    protect::{ordinary_socket, socket_decision},
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context's socket; the verifier allows reading these fields.
    let (family, ty, protocol) = unsafe {
        let sk = &*ctx.sock;
        (sk.family as i32, sk.type_ as i32, sk.protocol as i32)
    };
    if ordinary_socket(family, ty, protocol) {
        return 1;
    }
    let Some(agent) = current_agent() else {
        return 1;
    };
    // Relaxed (`allow_raw_sockets`): made, and reported by the LSM hook where there is one.
    if agent.value.allow & allow::RAW_SOCKETS != 0 {
        return 1;
    }
    socket_decision(&agent, family, ty, protocol);
    // 0 refuses the socket (EPERM).
    0
}
