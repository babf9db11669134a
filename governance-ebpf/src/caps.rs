//! Capabilities an agent never gets: the `capable` LSM hook, and io_uring personalities (the
//! one way an agent could have the kernel check a capability against credentials other than
//! its own).
//!
//! An agent is often root in the host's namespaces. Its capabilities are keys to kernel
//! facilities that act around the policy: mounting, namespaces, kernel modules, raw memory and
//! devices, other processes' memory, the network configuration, the clock. The hook refuses
//! the capabilities of `governance_common::caps::REFUSED` to every task of an agent (see there
//! for why each), whatever its uid, unless the policy gives one back (`allow_capabilities`).
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::lsm, programs::LsmContext};
use governance_common::{
    Kind, allow, caps,
    caps::{URING_PERSONALITY, URING_SQPOLL},
    offsets::NO_FIELD,
};

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret},
    kernel::{
        CAP_OPT_NOAUDIT, OFF_TASK_FLAGS, OFF_TASK_IO_URING, OFF_TASK_REAL_CRED, OFF_USERNS_LEVEL,
        off, read_at,
    },
};

/// `task_struct.flags`: an io_uring worker (io-wq or SQPOLL thread; include/linux/sched.h).
const PF_IO_WORKER: u32 = 0x10;

/// Is `cred` the current task's own for the capability hook: its `real_cred`, or, in an io_uring
/// worker or a task with an io_uring context, credentials an agent task had (creds.rs). True if
/// unreadable (decide: fail closed).
///
/// A worker runs each request under the credentials of the task that queued it (`req->creds`,
/// taken when the request was prepared), while its own `real_cred` are the ones that task had
/// when the worker was made. An agent that changed its credentials in between (any `setuid`,
/// `capset`, even an unprivileged `prctl(PR_SET_KEEPCAPS)` makes new ones) would have its
/// requests' checks look borrowed, and an `IORING_OP_OPENAT` of `/proc/kcore` or `/dev/mem`
/// pass its `CAP_SYS_RAWIO` check (red team round 7). Likewise in the task itself: a request
/// linked behind one that went to a worker takes the submitter's credentials of that moment,
/// and when the head completes by a poll, the linked request runs in the submitter, under
/// those credentials (`io_issue_sqe`'s `override_creds`); after a credential change in
/// between, its `/dev/kmsg` open, `SCM_CREDENTIALS` of another pid or socket command passed
/// checks the agent's own credentials fail (red team round 24). Every credential change of an
/// agent task with an io_uring context is recorded, the credentials left and those made, so
/// those checks are the agent's, while a filesystem that borrows its mounter's credentials in
/// such a task (overlayfs reading `trusted.overlay.*`, copying a file up) is not refused.
#[inline(always)]
fn own(cred: u64) -> bool {
    // SAFETY: helper call without pointer arguments; the reads go through probe_read.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: see read_at.
    let (Ok(real), Ok(flags)) = (
        unsafe { read_at::<u64>(task, off(&OFF_TASK_REAL_CRED)) },
        unsafe { read_at::<u32>(task, off(&OFF_TASK_FLAGS)) },
    ) else {
        return true;
    };
    if real == cred {
        return true;
    }
    let uring = off(&OFF_TASK_IO_URING);
    // Unreadable reads as set (fail closed).
    // SAFETY: see read_at.
    let io = flags & PF_IO_WORKER != 0
        || (uring != NO_FIELD && !matches!(unsafe { read_at::<u64>(task, uring) }, Ok(0)));
    io && crate::creds::agent_had(task, cred)
}

/// Capabilities: refuse the ones agents never get.
///
/// This hook runs for every capability check of every privileged task on the node, so the
/// order is by cost: the capability against a constant mask (most checks are for
/// capabilities agents keep, and cost one comparison), then the agent walk (a few map
/// lookups, and only for the refused capabilities), then the credentials.
///
/// Only a check on the task's own credentials is the agent's ([`own`]): when a subsystem acts
/// with borrowed credentials (overlayfs does its work on the lower and upper layers with the
/// mounter's, `access()` with the real uid's, `has_capability()` asks about another task),
/// `cred` is not `current->real_cred`, and refusing would break that subsystem, not the agent.
/// io_uring personalities, which would let an agent pick such credentials itself, are refused
/// below, and in io_uring's workers every check is the agent's.
#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    // int capable(const struct cred *cred, struct user_namespace *ns, int cap,
    //             unsigned int opts)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let cap: i32 = ctx.arg(2);
    if !(0..64).contains(&cap) || caps::REFUSED & (1u64 << cap) == 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    if !own(ctx.arg(0)) {
        return 0;
    }
    let opts: u32 = ctx.arg(3);
    let audited = opts & CAP_OPT_NOAUDIT == 0;
    let mut d = Decision::builtin(Kind::Capability, true);
    // A policy that allows raw sockets gives back what the kernel asks to make one
    // (`CAP_NET_RAW`); the marks it would also grant stay refused (route.rs).
    let raw = cap == caps::NET_RAW as i32 && agent.value.allow & allow::RAW_SOCKETS != 0;
    if agent.value.allow_caps & (1u64 << cap) != 0 || raw {
        d = Decision::builtin(Kind::Capability, false);
    } else if agent.value.allow & allow::USER_NAMESPACES != 0 && cap != caps::NET_ADMIN as i32 {
        // A policy that lets the agent make user namespaces lets it hold capabilities inside
        // them (what rootless containers need): the kernel limits those to the namespace's
        // own resources. Checks against the initial namespace (level 0) stay refused, and so
        // does CAP_NET_ADMIN in any: a network namespace that belongs to a user namespace the
        // agent did not make (a rootless or user-namespaced container's, which is the agent)
        // has a way out, and its tunnels and routes carry what the connect rules allowed to
        // addresses they refuse (red team round 28: an IPIP tunnel by ioctl, no netlink).
        let ns: u64 = ctx.arg(1);
        // SAFETY: see read_at.
        if let Ok(level) = unsafe { read_at::<u32>(ns, off(&OFF_USERNS_LEVEL)) }
            && level > 0
        {
            return 0;
        }
    }
    // A no-audit check is a probe ("would I have it?", e.g. before a fallback): refused all
    // the same, but not reported, as the kernel's own audit does not report it.
    if audited {
        emit(&agent, &d, |ev| {
            ev.detail = cap as u8;
            ev.object = cap as u64;
        });
    }
    lsm_ret(&d)
}

/// io_uring polling threads (`IORING_SETUP_SQPOLL`): refused to agents. The thread submits the
/// requests of whoever writes the ring's shared memory, and is the process that made the ring
/// to every hook (its tgid, its mark): a sandboxed process forked from it, or handed the ring,
/// had its requests run as the unmarked maker's, outside its sandbox (red team round 10). A
/// ring without the thread works as before (its requests are the submitter's, or its workers').
#[lsm(hook = "uring_sqpoll")]
pub fn uring_sqpoll(ctx: LsmContext) -> i32 {
    // int uring_sqpoll(void)
    refuse_uring(ctx.arg(0), URING_SQPOLL)
}

/// io_uring personalities: an agent may not run io_uring requests under credentials it
/// registered earlier (which it could keep from before a setuid, and which would then not be
/// its own for the capability hook).
#[lsm(hook = "uring_override_creds")]
pub fn uring_override_creds(ctx: LsmContext) -> i32 {
    // int uring_override_creds(const struct cred *new)
    refuse_uring(ctx.arg(1), URING_PERSONALITY)
}

/// An io_uring facility refused to agents (`previous`: the BPF programs' return before this
/// one, never overturned), reported as a capability event with `marker` for its detail.
#[inline(always)]
fn refuse_uring(previous: i32, marker: u8) -> i32 {
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Capability, true);
    emit(&agent, &d, |ev| ev.detail = marker);
    lsm_ret(&d)
}
