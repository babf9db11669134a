//! Process lifecycle: the sandbox mark follows a process across fork and is dropped at exit.
//! Both return at once while no process was ever marked (`any_sandboxed`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_task},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use governance_common::Counter;

use crate::{
    decide::{any_sandboxed, count, count_marks, mark_sandboxed},
    kernel::{OFF_SIGNAL_LIVE, OFF_TASK_SIGNAL, OFF_TASK_TGID, off, read_at},
    maps::SANDBOXED,
};

/// A sandboxed process's children are sandboxed too.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    if !any_sandboxed() {
        return 0;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is Copy and read immediately.
    let Some(profile) = (unsafe { SANDBOXED.get(&parent_tgid) }).copied() else {
        return 0;
    };
    let child: u64 = ctx.arg(1);
    // SAFETY: see read_at.
    if let Ok(tgid) = unsafe { read_at::<u32>(child, off(&OFF_TASK_TGID)) }
        && tgid != parent_tgid
        && !mark_sandboxed(tgid, profile)
    {
        // The child runs under its agent's own class instead of the profile: counted and
        // reported by the daemon (MapFull), as the map is sized far above any sane load.
        count(Counter::MapFull);
    }
    0
}

/// Forget a sandboxed process when its last thread exits, so its pid cannot pass the mark on.
///
/// Not when its main thread exits: `pthread_exit` in the main thread ends that thread alone and
/// the others run on under the same tgid, marked. The tracepoint fires after the exiting thread
/// was taken off `signal->live`, so the last thread of the group reads 0 there; a group whose
/// count cannot be read keeps its mark (stale, never missing). Only a marked process's threads
/// read it: every other exit is one lookup.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    if !any_sandboxed() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is not used.
    if unsafe { SANDBOXED.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: helper call without pointer arguments; reads go through probe_read.
    let live = unsafe {
        read_at::<u64>(bpf_get_current_task(), off(&OFF_TASK_SIGNAL))
            .and_then(|signal| read_at::<i32>(signal, off(&OFF_SIGNAL_LIVE)))
    };
    if live == Ok(0) && SANDBOXED.remove(&tgid).is_ok() {
        count_marks(u32::MAX);
    }
    0
}
