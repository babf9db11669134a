//! The credentials io_uring tasks of agents had: what lets the `capable` hook (caps.rs) tell a
//! request that runs under credentials its agent had from a subsystem that borrows someone
//! else's.
//!
//! io_uring runs a request under the credentials its submitter had when it was queued: in a
//! worker thread (made earlier, with older credentials of its own), or in the submitter itself
//! when a request linked behind one that went to a worker runs after the submitter changed its
//! credentials. A check under such credentials is the agent's, though they are no longer the
//! task's own. Overlayfs (and other filesystems) acting under their mounter's credentials in
//! the same tasks is not. Credentials change only through `prepare_creds` (a `setuid`, a
//! `prctl`, a fork, an exec: `cred_prepare`, called with the task's current credentials) and a
//! keyring handed to a parent (`KEYCTL_SESSION_TO_PARENT`: `cred_transfer`, in the parent); at
//! each, in an agent task with an io_uring context, both the credentials left and the ones made
//! are recorded in `AGENT_CREDS`, and forgotten when they are freed (`cred_free`). A task's
//! credentials before its first change are its own (`real_cred`), and a request queued under
//! them is decided by that comparison while they are current, and by the record once they are
//! not.
//!
//! A `prepare_creds` under borrowed credentials (overlayfs preparing its copy-up or create
//! credentials from its mounter's) is not the task's change and records nothing: the hooks
//! record only what derives from the task's own `real_cred`.
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::lsm, programs::LsmContext};
use governance_common::{Counter, guard, offsets::NO_FIELD};

use crate::{
    decide::{count, current_agent},
    guard::refuse,
    kernel::{
        OFF_TASK_GROUP_LEADER, OFF_TASK_IO_URING, OFF_TASK_REAL_CRED, OFF_TASK_START_TIME, off,
        read_at,
    },
    maps::{AGENT_CREDS, AGENT_CREDS_STATE},
};

/// Did an agent task with an io_uring context have or make `cred`? True for credentials the
/// programs recorded; also true (every check the agent's, fail closed) for a task whose
/// process started before the recording began (it may hold credentials never recorded), or
/// when that cannot be read.
#[inline(always)]
pub(crate) fn agent_had(task: u64, cred: u64) -> bool {
    let since = AGENT_CREDS_STATE.get(0).copied().unwrap_or(0);
    if since == 0 {
        return true;
    }
    // The process's start, for its worker threads as for the task that made the ring.
    // SAFETY: see read_at.
    let started = unsafe {
        read_at::<u64>(task, off(&OFF_TASK_GROUP_LEADER))
            .and_then(|leader| read_at::<u64>(leader, off(&OFF_TASK_START_TIME)))
    };
    match started {
        Ok(started) if started >= since => {
            // SAFETY: the map value is Copy and read immediately.
            unsafe { AGENT_CREDS.get(&cred) }.is_some()
        }
        _ => true,
    }
}

/// Record `old` and `new` if the current task is an agent's with an io_uring context and `old`
/// is its own. When the table is full, the recording ends (its start set back to 0: every
/// check in an io_uring task of an agent is the agent's again, as before the first record;
/// counted as a full map) rather than refusing the change: a full table then costs precision
/// (overlayfs in such tasks), never a capability, and one agent filling it cannot make other
/// agents' forks fail. The daemon starts the recording again once the table has room
/// (`Enforcer::resume_credential_records`).
#[inline(always)]
fn record(new: u64, old: u64) {
    let uring = off(&OFF_TASK_IO_URING);
    if uring == NO_FIELD {
        return;
    }
    // SAFETY: helper call without pointer arguments.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: see read_at. An unreadable context reads as set, and unreadable credentials as
    // the task's own: recording more only takes more checks as the agent's.
    unsafe {
        if matches!(read_at::<u64>(task, uring), Ok(0)) {
            return;
        }
        if read_at::<u64>(task, off(&OFF_TASK_REAL_CRED)).is_ok_and(|real| real != old) {
            return;
        }
    }
    if current_agent().is_none() {
        return;
    }
    // Set before the records, so that no record is ever missed at its free.
    if let Some(any) = AGENT_CREDS_STATE.get_ptr_mut(1) {
        // SAFETY: a map value pointer, valid for the program's run; a plain store of 1.
        unsafe { *any = 1 };
    }
    if AGENT_CREDS.insert(&old, &1, 0).is_err() || AGENT_CREDS.insert(&new, &1, 0).is_err() {
        count(Counter::MapFull);
        if let Some(since) = AGENT_CREDS_STATE.get_ptr_mut(0) {
            // SAFETY: as above; a plain store of 0.
            unsafe { *since = 0 };
        }
    }
}

#[lsm(hook = "cred_prepare")]
pub fn cred_prepare(ctx: LsmContext) -> i32 {
    // int cred_prepare(struct cred *new, const struct cred *old, gfp_t gfp)
    let previous: i32 = ctx.arg(3);
    if previous == 0 {
        record(ctx.arg(0), ctx.arg(1));
    }
    previous
}

#[lsm(hook = "cred_transfer")]
pub fn cred_transfer(ctx: LsmContext) -> i32 {
    // void cred_transfer(struct cred *new, const struct cred *old), in the task whose
    // credentials another process replaces (its parent, by KEYCTL_SESSION_TO_PARENT).
    record(ctx.arg(0), ctx.arg(1));
    0
}

#[lsm(hook = "cred_free")]
pub fn cred_free(ctx: LsmContext) -> i32 {
    // void cred_free(struct cred *cred); runs from an RCU callback, for every cred of the node.
    if AGENT_CREDS_STATE.get(1).is_some_and(|any| *any != 0) {
        let cred: u64 = ctx.arg(0);
        let _ = AGENT_CREDS.remove(&cred);
    }
    0
}

/// A session keyring handed to a parent (`KEYCTL_SESSION_TO_PARENT`, the only maker of blank
/// credentials): refused to agents. The parent's credentials are replaced later, in the parent
/// (`cred_transfer`, which cannot refuse), and an outside parent would then look keys up in a
/// keyring the agent controls (red team round 26). Refused whoever the parent is: the kernel
/// reads the caller's parent again after this hook, and a parent inside the agent that exits in
/// between leaves the caller to a subreaper outside it (round 26's review).
#[lsm(hook = "cred_alloc_blank")]
pub fn cred_alloc_blank(ctx: LsmContext) -> i32 {
    // int cred_alloc_blank(struct cred *cred, gfp_t gfp)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    refuse(guard::SESSION_KEYRING, 0)
}
