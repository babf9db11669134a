//! Built-in protections, which hold whatever the policy says (or unless it explicitly allows
//! them): no raw, packet or netlink sockets, no new user namespaces, no bpf(), and no signal,
//! ptrace or pin removal aimed at the daemon and the proxy.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use governance_common::{Kind, allow};

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret},
    kernel::{
        AF_NETLINK, AF_PACKET, BPF_FS_MAGIC, OFF_INODE_SB, OFF_SB_MAGIC, OFF_TASK_TGID, SOCK_RAW,
        SOCK_TYPE_MASK, off, read_at,
    },
    maps::PROTECTED,
};

/// Built-in: raw, packet and netlink sockets are refused to agents unless the policy allows
/// them (`kernel.allow_raw_sockets`). Sockets the kernel makes for itself are not agents'.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // int socket_create(int family, int type, int protocol, int kern)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let (family, ty, kern): (i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(3));
    if kern != 0 {
        return 0;
    }
    let special = family == AF_PACKET || family == AF_NETLINK || (ty & SOCK_TYPE_MASK) == SOCK_RAW;
    if !special {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Socket, agent.value.allow & allow::RAW_SOCKETS == 0);
    emit(&agent, &d, |ev| {
        ev.detail = family as u8;
        ev.port = ty as u16;
    });
    lsm_ret(&d)
}

/// Built-in: agents get no new user namespace unless the policy allows it.
#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(
        Kind::Userns,
        agent.value.allow & allow::USER_NAMESPACES == 0,
    );
    emit(&agent, &d, |_| {});
    lsm_ret(&d)
}

/// Built-in: agents may not use bpf() at all (no loading programs, no opening the pins).
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    // int bpf(int cmd, union bpf_attr *attr, unsigned int size)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    let d = Decision::builtin(Kind::Bpf, true);
    emit(&agent, &d, |ev| ev.detail = cmd as u8);
    lsm_ret(&d)
}

/// Is `task` (a `struct task_struct *`) one of the protected processes?
#[inline(always)]
fn protected(task: u64) -> Option<u32> {
    // SAFETY: see read_at.
    let tgid: u32 = unsafe { read_at(task, off(&OFF_TASK_TGID)) }.ok()?;
    // SAFETY: the value is not used.
    unsafe { PROTECTED.get(&tgid) }.map(|_| tgid)
}

/// Built-in: agents may not signal the daemon or the proxy.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    // int task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //               const struct cred *cred)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let sig: i32 = ctx.arg(2);
    let Some(target) = protected(ctx.arg(0)) else {
        return 0;
    };
    let Some(agent) = current_agent() else {
        return 0;
    };
    // Signal 0 only probes for existence; refuse it too, it is of no use to an agent.
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        ev.port = sig as u16;
        ev.object = u64::from(target);
    });
    lsm_ret(&d)
}

/// Built-in: agents may not ptrace (or read /proc/PID/mem of) the daemon or the proxy.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(target) = protected(ctx.arg(0)) else {
        return 0;
    };
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Ptrace, true);
    emit(&agent, &d, |ev| ev.object = u64::from(target));
    lsm_ret(&d)
}

/// Built-in: agents may not remove anything from a bpf filesystem (the pins that keep the
/// programs attached while the daemon is down).
#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    // int inode_unlink(struct inode *dir, struct dentry *dentry)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let dir: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    let magic = unsafe {
        read_at::<u64>(dir, off(&OFF_INODE_SB))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_MAGIC)))
    };
    let on_bpffs = match magic {
        Ok(m) => m & 0xffff_ffff == BPF_FS_MAGIC,
        Err(_) => true, // cannot tell: treat as a pin (only agents are affected)
    };
    if !on_bpffs {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Unlink, true);
    emit(&agent, &d, |_| {});
    lsm_ret(&d)
}
