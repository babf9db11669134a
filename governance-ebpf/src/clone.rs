//! clone(): the `task_alloc` LSM hook refuses an agent a child in another cgroup
//! (`clone3(CLONE_INTO_CGROUP)`) and a child in new namespaces.
//!
//! CLONE_INTO_CGROUP takes a directory fd of the target cgroup, opened read-only: the built-in
//! rule that keeps agents from writing `cgroup.procs` outside their subtree never sees a write,
//! so it is refused here, whatever the target (a child cgroup of the agent's own is reached by
//! writing its `cgroup.procs`). The hook runs before the kernel resolves the target cgroup.
//!
//! New namespaces need CAP_SYS_ADMIN, which agents never get (caps.rs); refusing them here
//! gives the precise event, and holds where the capability check does not: a clone is allowed
//! new namespaces only when the policy gives the agent CAP_SYS_ADMIN, or when they belong to a
//! user namespace the policy lets it make (created by the same clone, or the one it is in).
//! CLONE_NEWUSER itself is decided by `userns_create`.
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::lsm, programs::LsmContext};
use governance_common::{Cause, Counter, Kind, allow, caps};

use crate::{
    decide::{Agent, Decision, count, current_agent, emit, lsm_ret, sandbox_table_nearly_full},
    kernel::{
        CLONE_INTO_CGROUP, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID,
        CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, CLONE_THREAD, OFF_CRED_USER_NS,
        OFF_TASK_REAL_CRED, OFF_USERNS_LEVEL, off, read_at,
    },
};

const NEW_NAMESPACES: u64 = CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWTIME;

/// Is the current task inside a user namespace other than the initial one?
#[inline(always)]
fn in_child_userns() -> bool {
    // SAFETY: helper call without pointer arguments; reads go through probe_read.
    unsafe {
        let task = bpf_get_current_task();
        read_at::<u64>(task, off(&OFF_TASK_REAL_CRED))
            .and_then(|cred| read_at::<u64>(cred, off(&OFF_CRED_USER_NS)))
            .and_then(|ns| read_at::<u32>(ns, off(&OFF_USERNS_LEVEL)))
            .is_ok_and(|level| level > 0)
    }
}

/// May this agent's clone with `flags` create its new namespaces?
#[inline(always)]
fn namespaces_allowed(agent: &Agent, flags: u64) -> bool {
    agent.value.allow_caps & (1u64 << caps::SYS_ADMIN) != 0
        || (agent.value.allow & allow::USER_NAMESPACES != 0
            && (flags & CLONE_NEWUSER != 0 || in_child_userns()))
}

#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    // int task_alloc(struct task_struct *task, unsigned long clone_flags)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // Every fork and thread on the node comes here: the flags first, one comparison.
    let flags: u64 = ctx.arg(1);
    // A sandboxed process's new process needs a mark (sched_process_fork): refused while the
    // table has no room to spare (an array load for everyone else; see SANDBOX_RESERVE; a
    // count above 0 means the kernel has marked a process, so no `any_sandboxed` first).
    if flags & CLONE_THREAD == 0
        && sandbox_table_nearly_full()
        && let Some(agent) = current_agent()
        && agent.sandboxed
    {
        count(Counter::MapFull);
        let d = Decision::fail_closed(Kind::Clone, Cause::MapFull);
        emit(&agent, &d, |ev| ev.object = flags);
        return lsm_ret(&d);
    }
    if flags & (CLONE_INTO_CGROUP | NEW_NAMESPACES) == 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let denied = flags & CLONE_INTO_CGROUP != 0 || !namespaces_allowed(&agent, flags);
    let d = Decision::builtin(Kind::Clone, denied);
    emit(&agent, &d, |ev| ev.object = flags);
    lsm_ret(&d)
}
