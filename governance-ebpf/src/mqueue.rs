//! POSIX message queues: an agent reaches only the queues its own subtree made, like System V
//! IPC (ipc.rs). Queues live on the kernel-internal mqueue mount of their IPC namespace (which
//! /dev/mqueue shows too), root passes their permission bits, and nothing else decides on them:
//! without this a root agent could open another service's queue and feed it (`mq_open`,
//! `mq_send`) or remove it (`mq_unlink`).
//!
//! The maker is recorded, by the queue's inode, where the new inode is first known: the
//! `d_instantiate` of its dentry, in `mqueue_create_attr()` (ipc/mqueue.c), which both
//! `mq_open(O_CREAT)` and an `open(O_CREAT)` below /dev/mqueue run in the maker's context
//! (`inode_create` runs before the inode exists). It is forgotten when the inode is freed
//! (`inode_free_security`, protect.rs). The open is the gate (`file_open`, file.rs): every
//! other queue call (`mq_timedsend`, `mq_timedreceive`, `mq_notify`, `mq_getsetattr`) acts on
//! the descriptor it made; `mq_unlink` and unlink(2) below /dev/mqueue are refused at
//! `inode_unlink` (protect.rs). Queues made outside every agent, or before the daemon started,
//! have no record: out of every agent's reach (fail closed).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use governance_common::{Cause, Counter, Kind, ipc_object};

use crate::{
    decide::{Agent, Decision, count, current_agent, emit, lsm_ret},
    kernel::{
        Btf, MQUEUE_MAGIC, OFF_INODE_INO, OFF_INODE_MODE, OFF_INODE_SB, OFF_SB_MAGIC, S_IFMT,
        S_IFREG, off,
    },
    maps::MQ_OWNERS,
};

/// Whether `inode` is a message queue: a regular file on an mqueue superblock (its root
/// directory is not one).
#[inline(always)]
pub(crate) fn is_queue(inode: Btf) -> bool {
    let magic = match inode.ptr(off(&OFF_INODE_SB)) {
        Ok(sb) => sb.get::<u64>(off(&OFF_SB_MAGIC)),
        Err(_) => return false,
    };
    magic == MQUEUE_MAGIC && inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT == S_IFREG
}

/// Record the agent that makes a queue. Runs for every dentry the kernel instantiates: the
/// superblock's magic first, the agent lookup only for a queue.
#[lsm(hook = "d_instantiate")]
pub fn d_instantiate(ctx: LsmContext) -> i32 {
    // void d_instantiate(struct dentry *dentry, struct inode *inode)
    let inode = Btf::arg(&ctx, 1);
    if inode.addr() == 0 || !is_queue(inode) {
        return 0;
    }
    let Some(agent) = current_agent() else {
        // A record left at this address by a freed inode that was never seen freed is not
        // this queue's.
        let _ = MQ_OWNERS.remove(&inode.addr());
        return 0;
    };
    if MQ_OWNERS.insert(&inode.addr(), &agent.root, 0).is_err() {
        // A void hook: the queue is made, but unrecorded it is out of its own agent's reach
        // (fail closed), which the event says.
        count(Counter::MapFull);
        let d = Decision::fail_closed(Kind::Ipc, Cause::MapFull);
        emit(&agent, &d, |ev| {
            ev.port = ipc_object::MQUEUE;
            ev.object = inode.get::<u64>(off(&OFF_INODE_INO));
        });
    }
    0
}

/// The refusal of `agent`'s `detail` (an open's accesses, or an unlink) on the queue `inode`,
/// unless its subtree made it.
#[inline(always)]
pub(crate) fn reach(agent: &Agent, inode: Btf, detail: u8) -> i32 {
    // SAFETY: the value is copied immediately.
    if unsafe { MQ_OWNERS.get(&inode.addr()) }.copied() == Some(agent.root) {
        return 0;
    }
    let d = Decision::builtin(Kind::Ipc, true);
    emit(agent, &d, |ev| {
        ev.port = ipc_object::MQUEUE;
        ev.detail = detail;
        ev.object = inode.get::<u64>(off(&OFF_INODE_INO));
    });
    lsm_ret(&d)
}

/// Forget a queue when its inode is freed (its address may be reused).
#[inline(always)]
pub(crate) fn freed(inode: Btf) {
    let _ = MQ_OWNERS.remove(&inode.addr());
}
