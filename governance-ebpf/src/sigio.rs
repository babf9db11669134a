//! Signals the kernel sends for a file's I/O (SIGIO, or the signal `F_SETSIG` chose, and
//! SIGURG): none from a file an agent armed to a process outside the agent's subtree.
//!
//! `kill()` and its kin reach `task_kill`, and handing a file's signal ownership to another
//! process (`F_SETOWN`, `FIOSETOWN`, `SIOCSPGRP`) is refused (guard.rs); but a terminal hands
//! it over by itself: turning on `O_ASYNC` (or `FIOASYNC`) on a tty makes its foreground
//! process group the file's owner (`__tty_fasync`), and `F_SETSIG` makes the signal anything,
//! SIGKILL included. `send_sigio` and `send_sigurg` ask no `task_kill`, only
//! `file_send_sigiotask`, per task they would signal, in the context of whichever task raised
//! the I/O (a kworker flushing a tty, a softirq): not the agent. So the decision is on the
//! file: when a process in an agent turns on asynchronous notification (`F_SETFL` with
//! `O_ASYNC`, `FIOASYNC`) or chooses the signal (`F_SETSIG`), the file is recorded with its
//! agent ([`armed`], from guard.rs's `file_fcntl` and `file_ioctl`), and every signal for it to
//! a task outside that agent's subtree is refused (the kernel skips that task) and reported as
//! a refused signal. Recorded whatever owner the file has (one an outside process set, or a
//! terminal's foreground group), and whether the file's `O_ASYNC` was already on; forgotten
//! when the file is freed (`file_free_security`, held.rs). A file armed only outside agents
//! is not recorded: its signals are the outside process's arrangement.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_uid_gid},
    macros::lsm,
    programs::LsmContext,
};
use governance_common::{AgentValue, Cause, Counter, Kind, SIGNAL_DETAIL_SIGIO, SigioOwner, guard};

use crate::{
    decide::{Agent, Decision, count, emit, lsm_ret},
    kernel::{FILE_F_OWNER_EMBEDDED, OFF_FILE_F_OWNER, OFF_FOWN_FILE, off, read_at},
    maps::{SIGIO_ANY, SIGIO_OWNERS},
    protect::out_of_reach,
};

/// SIGIO's number: what `send_sigio` sends when the file's signal is 0 (none chosen).
const SIGIO: i32 = 29;

/// A process of `agent` arms `file` (a `struct file *`) for asynchronous notification:
/// remember the file as that agent's. 0 lets the fcntl or ioctl go on; when the table is full,
/// it is refused (a file not remembered could signal outside the agent: fail closed, counted).
#[inline(always)]
pub(crate) fn armed(agent: &Agent, file: u64) -> i32 {
    // From Linux 6.12 `file.f_owner` is a pointer, and `file_send_sigiotask` finds the file
    // through the owner's pointer back to it; a kernel with neither: no file is armed by an
    // agent there (fail closed).
    if off(&FILE_F_OWNER_EMBEDDED) == 0
        && off(&OFF_FOWN_FILE) == governance_common::offsets::NO_FIELD
    {
        let d = Decision::builtin(Kind::Guard, true);
        emit(agent, &d, |ev| ev.detail = guard::SIGNAL_OWNER);
        return lsm_ret(&d);
    }
    let owner = SigioOwner {
        root: agent.root,
        cgroup: agent.cgroup,
        tgid: agent.tgid,
        level: agent.level,
        uid: bpf_get_current_uid_gid() as u32,
        class: agent.value.class,
        generation: agent.generation,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // Set before the record, so that no file recorded is ever missed at its free.
    if let Some(any) = SIGIO_ANY.get_ptr_mut(0) {
        // SAFETY: a map value pointer, valid for the program's run; a plain store of 1.
        unsafe { *any = 1 };
    }
    // The latest agent to arm the file owns it (flags 0: insert or replace).
    if SIGIO_OWNERS.insert(&file, &owner, 0).is_err() {
        count(Counter::MapFull);
        let d = Decision::fail_closed(Kind::Guard, Cause::MapFull);
        emit(agent, &d, |ev| ev.detail = guard::SIGNAL_OWNER);
        return lsm_ret(&d);
    }
    0
}

/// `file` (a `struct file *`) is freed: forget it (its address may be reused).
#[inline(always)]
pub(crate) fn forget(file: u64) {
    if SIGIO_ANY.get(0).is_some_and(|any| *any != 0) {
        let _ = SIGIO_OWNERS.remove(&file);
    }
}

#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    // int file_send_sigiotask(struct task_struct *tsk, struct fown_struct *fown, int sig)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // `fown` is the file's own `f_owner` field: the file is found by subtracting the field's
    // offset (an address used as a key, never read). From 6.12 it is allocated apart and
    // points back to its file.
    let fown: u64 = ctx.arg(1);
    let file = if off(&FILE_F_OWNER_EMBEDDED) != 0 {
        fown.wrapping_sub(off(&OFF_FILE_F_OWNER))
    } else {
        // SAFETY: see read_at. Unreadable: no file, so no agent's (this signal is not one an
        // agent armed a file for, as far as can be told).
        unsafe { read_at::<u64>(fown, off(&OFF_FOWN_FILE)) }.unwrap_or(0)
    };
    // SAFETY: the value is copied out at once.
    let Some(owner) = (unsafe { SIGIO_OWNERS.get(&file) }).copied() else {
        return 0;
    };
    // The agent as it was when it armed the file: what `out_of_reach` and `emit` read of it
    // (its subtree, and the event's agent, cgroup, class and generation).
    let agent = Agent {
        value: AgentValue {
            class: owner.class,
            ..AgentValue::default()
        },
        generation: owner.generation,
        root: owner.root,
        level: owner.level,
        cgroup: owner.cgroup,
        tgid: owner.tgid,
        sandboxed: false,
    };
    let Some(target) = out_of_reach(&agent, ctx.arg(0)) else {
        return 0;
    };
    let sig: i32 = ctx.arg(2);
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        // The agent's process that armed the file, not the task that raised the I/O.
        ev.pid = owner.tgid;
        ev.tgid = owner.tgid;
        ev.ppid = 0;
        ev.ns_pid = 0;
        ev.uid = owner.uid;
        ev.comm = owner.comm;
        ev.port = if sig == 0 { SIGIO as u16 } else { sig as u16 };
        ev.object = u64::from(target);
        ev.detail = SIGNAL_DETAIL_SIGIO;
    });
    lsm_ret(&d)
}
