//! Built-in protections, which hold whatever the policy says (or unless it explicitly allows
//! them): no raw, packet or netlink sockets, no new user namespaces, no bpf(), no signal,
//! ptrace or pin removal aimed at the daemon and the proxy, and no ptrace of any process
//! outside the agent. Also the bookkeeping of WRITTEN when a file is gone.
use aya_ebpf::{
    helpers::generated::bpf_get_current_ancestor_cgroup_id, macros::lsm, programs::LsmContext,
};
use governance_common::{ExecKey, Kind, MAX_CGROUP_DEPTH, allow};

use crate::{
    decide::{Agent, Decision, current_agent, emit, lsm_ret},
    kernel::{
        AF_NETLINK, AF_PACKET, BPF_FS_MAGIC, OFF_CGROUP_ANCESTORS, OFF_CGROUP_KN, OFF_CGROUP_LEVEL,
        OFF_CSS_SET_DFL_CGRP, OFF_INODE_INO, OFF_INODE_NLINK, OFF_INODE_SB, OFF_KERNFS_NODE_ID,
        OFF_SB_DEV, OFF_SB_MAGIC, OFF_TASK_CGROUPS, OFF_TASK_TGID, PTRACE_MODE_ATTACH, SOCK_RAW,
        SOCK_TYPE_MASK, off, read_at,
    },
    maps::{PROTECTED, WRITTEN},
};

/// [`governance_common::Event::detail`] of a ptrace refused because the target is outside the
/// agent (rather than protected).
const PTRACE_OUTSIDE: u8 = 1;

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

/// The level (below the cgroup2 root) of the agent root of the current task, 0 if not found.
#[inline(always)]
fn agent_level(agent: &Agent) -> u32 {
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper call without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == agent.root {
            return level;
        }
        if id == 0 {
            break;
        }
        level += 1;
    }
    0
}

/// Is `task` (a `struct task_struct *`) in `agent` (its cgroup below the agent root)? Its
/// cgroup's ancestor at the agent root's level must be the agent root: `cgroup->ancestors[]`
/// holds every level's ancestor, the cgroup itself at its own level. Unreadable: no.
#[inline(always)]
fn in_agent(task: u64, agent: &Agent) -> bool {
    let level = agent_level(agent);
    // The verifier needs the index bounded; an agent root is never deeper.
    if level == 0 || level > MAX_CGROUP_DEPTH {
        return false;
    }
    // SAFETY: see read_at.
    unsafe {
        let Ok(cgrp) = read_at::<u64>(task, off(&OFF_TASK_CGROUPS))
            .and_then(|cset| read_at::<u64>(cset, off(&OFF_CSS_SET_DFL_CGRP)))
        else {
            return false;
        };
        match read_at::<i32>(cgrp, off(&OFF_CGROUP_LEVEL)) {
            Ok(l) if l >= level as i32 => {}
            _ => return false,
        }
        read_at::<u64>(cgrp, off(&OFF_CGROUP_ANCESTORS) + 8 * u64::from(level))
            .and_then(|a| read_at::<u64>(a, off(&OFF_CGROUP_KN)))
            .and_then(|kn| read_at::<u64>(kn, off(&OFF_KERNFS_NODE_ID)))
            .is_ok_and(|id| id == agent.root)
    }
}

/// Built-in: agents may not ptrace (or read /proc/PID/mem of) the daemon or the proxy, and may
/// not attach to any process outside their agent: ptrace, /proc/PID/mem, process_vm_readv and
/// process_vm_writev, pidfd_getfd (the kernel's PTRACE_MODE_ATTACH checks). A root agent needs
/// no capability to attach to another root process with the same capabilities, and code it
/// injects there runs outside the agent, in the other process's cgroup, under no policy.
/// Reading another process's metadata (/proc/PID/stat, what `ps` does) is not an attach.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let child: u64 = ctx.arg(0);
    if let Some(target) = protected(child) {
        let Some(agent) = current_agent() else {
            return 0;
        };
        let d = Decision::builtin(Kind::Ptrace, true);
        emit(&agent, &d, |ev| ev.object = u64::from(target));
        return lsm_ret(&d);
    }
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    if in_agent(child, &agent) {
        return 0;
    }
    let d = Decision::builtin(Kind::Ptrace, true);
    emit(&agent, &d, |ev| {
        ev.detail = PTRACE_OUTSIDE;
        // SAFETY: see read_at.
        ev.object = u64::from(unsafe { read_at::<u32>(child, off(&OFF_TASK_TGID)) }.unwrap_or(0));
    });
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

/// Bookkeeping: forget a file agents wrote when it is gone for good, that is when its inode is
/// destroyed with no link left (an inode is also destroyed when it leaves the cache under
/// memory pressure while its file lives on; those stay). An unlinked file that is still open
/// or mapped keeps its inode, and its entry, until the last reference goes. For every inode
/// the kernel frees: one read, and a map deletion only for deleted files.
#[lsm(hook = "inode_free_security")]
pub fn inode_free_security(ctx: LsmContext) -> i32 {
    // void inode_free_security(struct inode *inode)
    let inode: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    unsafe {
        if read_at::<u32>(inode, off(&OFF_INODE_NLINK)) != Ok(0) {
            return 0;
        }
        if let (Ok(ino), Ok(dev)) = (
            read_at::<u64>(inode, off(&OFF_INODE_INO)),
            read_at::<u64>(inode, off(&OFF_INODE_SB))
                .and_then(|sb| read_at::<u32>(sb, off(&OFF_SB_DEV))),
        ) {
            let _ = WRITTEN.remove(&ExecKey { class: 0, dev, ino });
        }
    }
    0
}
