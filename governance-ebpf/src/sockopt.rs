//! Socket options, in the network stack (`cgroup/setsockopt` at the cgroup2 root): the same
//! refusals as the `socket_setsockopt` LSM hook (route.rs), for kernels without BPF LSM. There
//! an agent's multicast membership put what it chose into the kernel's IGMP and MLD reports,
//! which no socket owns and no packet program sees, past `network: block` (red team round 26);
//! and a source route, a mark or an upper-layer protocol went by no hook at all. With BPF LSM
//! the hook refuses first (the kernel asks it before the cgroup programs), so this program sees
//! only what it let through: one event per refusal.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};

use crate::{
    guard::refuse,
    route::{option_object, refused_option},
};

#[cgroup_sockopt(setsockopt)]
pub fn sockopt_set(ctx: SockoptContext) -> i32 {
    // SAFETY: the context's own fields, which the verifier lets the program read.
    let (level, name) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let Some(what) = refused_option(level, name) else {
        return 1;
    };
    // 0 refuses the call (EPERM); 1 lets the kernel go on with the caller's value.
    if refuse(what, option_object(level, name)) != 0 {
        0
    } else {
        1
    }
}
