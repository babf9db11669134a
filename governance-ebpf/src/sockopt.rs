//! Socket options, in the network stack (`cgroup/setsockopt` at the cgroup2 root): the same
//! refusals as the `socket_setsockopt` LSM hook (route.rs), for kernels without BPF LSM. There
//! an agent's multicast membership put what it chose into the kernel's IGMP and MLD reports,
//! which no socket owns and no packet program sees, past `network: block` (red team round 26);
//! and a source route, a mark or an upper-layer protocol went by no hook at all. With BPF LSM
//! the hook refuses first (the kernel asks it before the cgroup programs), so this program sees
//! only what it let through: one event per refusal.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};

use governance_common::guard;

use crate::{
    guard::refuse,
    route::{SO_PRIORITY, SOL_SOCKET, option_object, refused_option},
};

/// Built-in here, with or without BPF LSM (this program sees the value, the hook does not): a
/// socket priority above 6, which takes CAP_NET_RAW or CAP_NET_ADMIN, is the mark of the
/// daemon's proxy listeners (`PROXY_LISTENER_PRIORITY`): an agent given CAP_NET_RAW back
/// (`allow_raw_sockets`) could otherwise mark a listener of its own on the proxy's port and
/// receive other agents' proxied connects (red team round 29). 0 to 6 need nothing and pass.
#[cgroup_sockopt(setsockopt)]
pub fn sockopt_set(ctx: SockoptContext) -> i32 {
    // SAFETY: the context's own fields, which the verifier lets the program read.
    let (level, name) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let what = if level == SOL_SOCKET && name == SO_PRIORITY {
        // SAFETY: the kernel's copy of the value, read within [optval, optval_end) (the
        // verifier checks the bound); a value it did not copy reads as refused.
        let value = unsafe {
            let start = (*ctx.sockopt).__bindgen_anon_2.optval as *const u8;
            let end = (*ctx.sockopt).__bindgen_anon_3.optval_end as *const u8;
            if start.add(4) > end {
                None
            } else {
                Some(core::ptr::read_unaligned(start as *const i32))
            }
        };
        if value.is_some_and(|v| (0..=6).contains(&v)) {
            return 1;
        }
        guard::PACKET_MARK
    } else {
        match refused_option(level, name) {
            Some(what) => what,
            None => return 1,
        }
    };
    // 0 refuses the call (EPERM); 1 lets the kernel go on with the caller's value.
    if refuse(what, option_object(level, name)) != 0 {
        0
    } else {
        1
    }
}
