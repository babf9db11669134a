//! System V IPC (message queues, semaphore sets, shared memory segments): an agent reaches only
//! the objects its own subtree created. Objects are global to the IPC namespace and uid 0 passes
//! every permission check, so without this a root agent could read and write the shared memory
//! of any service on the node, or feed its message queues. The creator is recorded when an
//! object is made (by its `struct kern_ipc_perm`, whose address is stable for the object's life)
//! and forgotten when it is freed; every later access (`ipcperms()` calls `ipc_permission` for
//! get, attach, send, receive, semop and stat) and every control operation checks it.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use governance_common::Kind;

use crate::{
    decide::{Decision, count, current_agent, emit, lsm_ret},
    maps::IPC_OWNERS,
};

/// Record the agent that creates an IPC object; refuse the creation if it cannot be recorded
/// (the agent would otherwise lose its own object: fail closed, counted).
#[inline(always)]
fn created(perm: u64) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    if IPC_OWNERS.insert(&perm, &agent.root, 0).is_err() {
        count(governance_common::Counter::MapFull);
        let d = Decision::fail_closed(Kind::Ipc, governance_common::Cause::Unreadable);
        emit(&agent, &d, |_| {});
        return lsm_ret(&d);
    }
    0
}

/// Refuse an agent an IPC object another subtree (or a process outside every agent) created.
#[inline(always)]
fn reach(perm: u64, what: u8) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    // SAFETY: the value is copied immediately.
    if unsafe { IPC_OWNERS.get(&perm) }.copied() == Some(agent.root) {
        return 0;
    }
    let d = Decision::builtin(Kind::Ipc, true);
    emit(&agent, &d, |ev| ev.detail = what);
    lsm_ret(&d)
}

#[lsm(hook = "msg_queue_alloc_security")]
pub fn msg_queue_alloc_security(ctx: LsmContext) -> i32 {
    // int msg_queue_alloc_security(struct kern_ipc_perm *perm)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    created(ctx.arg(0))
}

#[lsm(hook = "shm_alloc_security")]
pub fn shm_alloc_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    created(ctx.arg(0))
}

#[lsm(hook = "sem_alloc_security")]
pub fn sem_alloc_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    created(ctx.arg(0))
}

/// Forget an object when the kernel frees it (its address may be reused).
#[inline(always)]
fn freed(perm: u64) -> i32 {
    let _ = IPC_OWNERS.remove(&perm);
    0
}

#[lsm(hook = "msg_queue_free_security")]
pub fn msg_queue_free_security(ctx: LsmContext) -> i32 {
    // void msg_queue_free_security(struct kern_ipc_perm *perm)
    freed(ctx.arg(0))
}

#[lsm(hook = "shm_free_security")]
pub fn shm_free_security(ctx: LsmContext) -> i32 {
    freed(ctx.arg(0))
}

#[lsm(hook = "sem_free_security")]
pub fn sem_free_security(ctx: LsmContext) -> i32 {
    freed(ctx.arg(0))
}

/// Every access after the DAC check: get of an existing key, shmat, msgsnd, msgrcv, semop,
/// IPC_STAT.
#[lsm(hook = "ipc_permission")]
pub fn ipc_permission(ctx: LsmContext) -> i32 {
    // int ipc_permission(struct kern_ipc_perm *ipcp, short flag)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let flag: i32 = ctx.arg(1);
    reach(ctx.arg(0), flag as u8)
}

/// Control operations (IPC_SET, IPC_RMID, SHM_LOCK, ...) on an object; the *_INFO commands
/// name no object and pass.
#[inline(always)]
fn control(perm: u64) -> i32 {
    if perm == 0 {
        return 0;
    }
    reach(perm, 0)
}

#[lsm(hook = "msg_queue_msgctl")]
pub fn msg_queue_msgctl(ctx: LsmContext) -> i32 {
    // int msg_queue_msgctl(struct kern_ipc_perm *perm, int cmd)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    control(ctx.arg(0))
}

#[lsm(hook = "shm_shmctl")]
pub fn shm_shmctl(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    control(ctx.arg(0))
}

#[lsm(hook = "sem_semctl")]
pub fn sem_semctl(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    control(ctx.arg(0))
}
