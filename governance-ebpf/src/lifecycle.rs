//! Process lifecycle: the sandbox mark follows a process across fork and is dropped at exit.
//! Both return at once while no process was ever marked (`any_sandboxed`).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use governance_common::Counter;

use crate::{
    decide::{any_sandboxed, count, mark_sandboxed},
    kernel::{OFF_TASK_TGID, off, read_at},
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

/// Forget a sandboxed process when it exits, so its pid cannot pass the mark on.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    if !any_sandboxed() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == (pid_tgid >> 32) as u32 {
        let _ = SANDBOXED.remove(&((pid_tgid >> 32) as u32));
    }
    0
}
