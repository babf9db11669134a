//! Built-in protections, which hold whatever the policy says (or unless it explicitly allows
//! them): no sockets the network hooks do not decide on (raw, packet, netlink, other families
//! and protocols), no new user namespaces, no bpf(), no pin removal,
//! and no signal, ptrace, resource change or `/proc/PID/` write aimed at a process outside the
//! agent's own subtree (the daemon and the proxy above all). Also the bookkeeping of WRITTEN when a file is gone.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use governance_common::{ExecKey, Kind, allow, ipc_object, task_change};

use crate::{
    decide::{Agent, Decision, current_agent, emit, in_subtree, lsm_ret},
    kernel::{
        AF_INET_I32, AF_INET6_I32, AF_UNIX, BCACHEFS_MAGIC, BPF_FS_MAGIC, BTRFS_MAGIC, Btf,
        IPPROTO_TCP, IPPROTO_UDP, MQUEUE_MAGIC, OFF_DENTRY_INODE, OFF_INODE_INO, OFF_INODE_NLINK,
        OFF_INODE_SB, OFF_PID_TASKS, OFF_PROC_INODE_PID, OFF_PROC_INODE_VFS_INODE, OFF_SB_DEV,
        OFF_SB_MAGIC, OFF_TASK_PID_LINKS, OFF_TASK_TGID, SOCK_DGRAM, SOCK_STREAM, SOCK_TYPE_MASK,
        off, read_at,
    },
    maps::{PROTECTED, SANDBOXED, WRITTEN},
};

/// Built-in: agents get only the sockets the network hooks decide on (Unix, and TCP and UDP over
/// IPv4 and IPv6); raw, packet, netlink and every other family or protocol are refused unless
/// the policy allows them (`kernel.allow_raw_sockets`). Sockets the kernel makes for itself are
/// not agents'.
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
    let protocol: i32 = ctx.arg(2);
    if ordinary_socket(family, ty, protocol) {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    lsm_ret(&socket_decision(&agent, family, ty, protocol))
}

/// A socket the network hooks decide on: Unix sockets (their own hooks), and TCP and UDP over
/// IPv4 and IPv6 (cgroup connect and sendmsg). Every other family (vsock to the host, packet,
/// netlink, SCTP-capable, AF_ALG, ...) and every other protocol (ICMP ping sockets, SCTP,
/// MPTCP, UDP-Lite, DCCP, raw) would be egress the policy never decides on.
#[inline(always)]
pub(crate) fn ordinary_socket(family: i32, ty: i32, protocol: i32) -> bool {
    let kind = ty & SOCK_TYPE_MASK;
    family == AF_UNIX
        || ((family == AF_INET_I32 || family == AF_INET6_I32)
            && ((kind == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP))
                || (kind == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP))))
}

/// The event of a socket refused (or allowed by `allow_raw_sockets`).
#[inline(always)]
pub(crate) fn socket_decision(agent: &Agent, family: i32, ty: i32, protocol: i32) -> Decision {
    let d = Decision::builtin(Kind::Socket, agent.value.allow & allow::RAW_SOCKETS == 0);
    emit(agent, &d, |ev| {
        ev.detail = family as u8;
        ev.port = ty as u16;
        ev.object = protocol as u64;
    });
    d
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
    // int bpf(int cmd, union bpf_attr *attr, unsigned int size), and from Linux 6.14 a fourth
    // argument (`bool kernel`) before the return value of the programs that ran before: the
    // slot that holds that value elsewhere is not read here (a program that refused ends the
    // hook's programs anyway: the trampoline stops at the first that returns non-zero).
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

/// For a procfs inode of a `/proc/PID/` entry (`inode`, a `struct inode *`): its process, if
/// `agent` may not act on it ([`out_of_reach`], [`outside_sandbox`]); its tgid, for the event.
/// Other procfs inodes (no process: `PROC_I(inode)->pid` is NULL) are `None`. A process that
/// is gone, or a pointer that does not read, counts as out of reach (fail closed).
#[inline(always)]
pub(crate) fn proc_owner_out_of_reach(agent: &Agent, inode: u64) -> Option<u32> {
    // PROC_I(inode): every procfs inode is the `vfs_inode` of a `struct proc_inode`.
    let proc_inode = inode.wrapping_sub(off(&OFF_PROC_INODE_VFS_INODE));
    // SAFETY: see read_at; every pointer comes from the kernel and is read, never written.
    unsafe {
        let Ok(pid) = read_at::<u64>(proc_inode, off(&OFF_PROC_INODE_PID)) else {
            return Some(0);
        };
        if pid == 0 {
            return None;
        }
        // pid_task(pid, PIDTYPE_PID): the first of `pid->tasks[0]`, a task's `pid_links[0]`.
        let first = read_at::<u64>(pid, off(&OFF_PID_TASKS)).unwrap_or(0);
        if first == 0 {
            return Some(0);
        }
        let task = first.wrapping_sub(off(&OFF_TASK_PID_LINKS));
        out_of_reach(agent, task).or_else(|| outside_sandbox(agent, task))
    }
}

/// A process an agent may not act on: the daemon or the proxy (protected), or any process
/// outside the agent's own subtree. Returns the target's tgid, for the event.
#[inline(always)]
pub(crate) fn out_of_reach(agent: &Agent, task: u64) -> Option<u32> {
    if let Some(tgid) = protected(task) {
        return Some(tgid);
    }
    if in_subtree(agent, task) {
        return None;
    }
    // SAFETY: see read_at.
    Some(unsafe { read_at::<u32>(task, off(&OFF_TASK_TGID)) }.unwrap_or(0))
}

/// Built-in: agents may not signal processes outside their own subtree (the daemon and the
/// proxy above all). Signals the kernel sends (SIGCHLD to a parent, SIGPIPE, ...) do not come
/// through this hook; only kill(), tgkill(), sigqueue(), pidfd_send_signal() and friends do.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    // int task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //               const struct cred *cred)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let Some(target) = out_of_reach(&agent, ctx.arg(0)) else {
        return 0;
    };
    let sig: i32 = ctx.arg(2);
    // Signal 0 only probes for existence; refuse it too, it is of no use to an agent.
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        ev.port = sig as u16;
        ev.object = u64::from(target);
    });
    lsm_ret(&d)
}

/// For a sandboxed process: a target that is not under the same sandbox mark (its tgid, for
/// the event). Tracing a process of its agent that is not confined (attaching, writing its
/// memory, taking its descriptors) would act through it outside the profile.
#[inline(always)]
fn outside_sandbox(agent: &Agent, task: u64) -> Option<u32> {
    if !agent.sandboxed {
        return None;
    }
    // SAFETY: see read_at.
    let tgid: u32 = unsafe { read_at(task, off(&OFF_TASK_TGID)) }.unwrap_or(0);
    // SAFETY: the values are Copy and read at once.
    let (mine, theirs) = unsafe { (SANDBOXED.get(&agent.tgid), SANDBOXED.get(&tgid)) };
    match (mine, theirs) {
        (Some(m), Some(t)) if m == t => None,
        _ => Some(tgid),
    }
}

/// `PTRACE_MODE_NOAUDIT`: the caller only probes (procfs deciding which fields to show).
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
/// `PTRACE_MODE_ATTACH`: the caller may change the target (ptrace attach, `/proc/PID/mem`,
/// `process_vm_writev`).
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Under an exec allowlist: a target of its own agent the caller would attach to (its tgid,
/// for the event). A tracer writes any code into an allowed program (`PTRACE_POKETEXT`,
/// `/proc/PID/mem`, which write read-only text), past every exec and mapping decision (red
/// team round 16); debuggers and tracers under an allowlist are refused with it.
#[inline(always)]
fn injects_code(agent: &Agent, task: u64, mode: u32) -> Option<u32> {
    if mode & PTRACE_MODE_ATTACH == 0 || !agent.exec_allowlist() {
        return None;
    }
    // SAFETY: see read_at.
    Some(unsafe { read_at(task, off(&OFF_TASK_TGID)) }.unwrap_or(0))
}

/// Under an exec allowlist, no `PTRACE_TRACEME`: a child that asks to be traced gives its
/// parent in the agent what [`injects_code`] refuses an attach (`PTRACE_POKETEXT` into the
/// allowed program it then runs; red team round 16). The daemon's drill confines its exec
/// probe with seccomp instead of tracing it. Reported with the would-be tracer's tgid.
#[lsm(hook = "ptrace_traceme")]
pub fn ptrace_traceme(ctx: LsmContext) -> i32 {
    // int ptrace_traceme(struct task_struct *parent)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    if !agent.exec_allowlist() {
        return 0;
    }
    let parent: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    let tracer = unsafe { read_at::<u32>(parent, off(&OFF_TASK_TGID)) }.unwrap_or(0);
    let d = Decision::builtin(Kind::Ptrace, true);
    emit(&agent, &d, |ev| {
        ev.object = u64::from(tracer);
        ev.detail = PTRACE_MODE_ATTACH as u8;
    });
    lsm_ret(&d)
}

/// Built-in: agents may not trace or inspect processes outside their own subtree, nor may a
/// sandboxed process trace one that is not under its sandbox mark. Every
/// ptrace_may_access() check comes here: ptrace attach, /proc/PID/mem, environ, fd/, root and
/// cwd (another process's files and mount namespace), pidfd_getfd (taking its descriptors),
/// process_vm_readv/writev, kcmp, perf events on a task. Refused regardless; reported unless
/// the check is a no-audit probe (`ps` reading /proc/PID/stat asks one per process).
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let task: u64 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    let target = out_of_reach(&agent, task)
        .or_else(|| outside_sandbox(&agent, task))
        .or_else(|| injects_code(&agent, task, mode));
    let Some(target) = target else {
        return 0;
    };
    let d = Decision::builtin(Kind::Ptrace, true);
    if mode & PTRACE_MODE_NOAUDIT == 0 {
        emit(&agent, &d, |ev| {
            ev.object = u64::from(target);
            ev.detail = mode as u8;
        });
    }
    lsm_ret(&d)
}

/// Refuse an agent changing the resources of a process outside its subtree (`what`: which
/// change, in the event's detail; see governance_common::task_change).
#[inline(always)]
fn refuse_change(task: u64, what: u8) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let Some(target) = out_of_reach(&agent, task) else {
        return 0;
    };
    let d = Decision::builtin(Kind::Task, true);
    emit(&agent, &d, |ev| {
        ev.object = u64::from(target);
        ev.detail = what;
    });
    lsm_ret(&d)
}

/// Built-in: no prlimit() on processes outside the agent (an fd limit of 0 on the daemon).
#[lsm(hook = "task_setrlimit")]
pub fn task_setrlimit(ctx: LsmContext) -> i32 {
    // int task_setrlimit(struct task_struct *p, unsigned int resource, struct rlimit *new_rlim)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    refuse_change(ctx.arg(0), task_change::RLIMIT)
}

/// Built-in: no setpriority() on processes outside the agent.
#[lsm(hook = "task_setnice")]
pub fn task_setnice(ctx: LsmContext) -> i32 {
    // int task_setnice(struct task_struct *p, int nice)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    refuse_change(ctx.arg(0), task_change::NICE)
}

/// Built-in: no ioprio_set() on processes outside the agent.
#[lsm(hook = "task_setioprio")]
pub fn task_setioprio(ctx: LsmContext) -> i32 {
    // int task_setioprio(struct task_struct *p, int ioprio)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    refuse_change(ctx.arg(0), task_change::IOPRIO)
}

/// Built-in: no sched_setscheduler()/sched_setaffinity() on processes outside the agent.
#[lsm(hook = "task_setscheduler")]
pub fn task_setscheduler(ctx: LsmContext) -> i32 {
    // int task_setscheduler(struct task_struct *p)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    refuse_change(ctx.arg(0), task_change::SCHEDULER)
}

/// Built-in: no migrate_pages()/move_pages() on processes outside the agent.
#[lsm(hook = "task_movememory")]
pub fn task_movememory(ctx: LsmContext) -> i32 {
    // int task_movememory(struct task_struct *p)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    refuse_change(ctx.arg(0), task_change::MEMORY)
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
    // `mq_unlink`, or unlink(2) below /dev/mqueue: only the agent's own queues (mqueue.rs).
    if magic == Ok(MQUEUE_MAGIC) {
        let Some(agent) = current_agent() else {
            return 0;
        };
        return match Btf::arg(&ctx, 1).ptr(off(&OFF_DENTRY_INODE)) {
            Ok(inode) => crate::mqueue::reach(&agent, inode, ipc_object::MQUEUE_UNLINK),
            Err(_) => 0,
        };
    }
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

/// Bookkeeping: forget a file agents wrote when it is gone for good, that is when the inode
/// its entry was made for is destroyed with no link left. An inode is also destroyed when it
/// leaves the cache under memory pressure while its file lives on: its entry then stays for
/// good (the file read back is another inode). An unlinked file that is still open or mapped
/// keeps its inode, and its entry, until the last reference goes. Another inode under the same
/// key (btrfs subvolumes, an overlay's layers) never removes it (see
/// governance_common::Written), nor does a file's removal on a filesystem with snapshots. For
/// every inode the kernel frees: three reads and a lookup.
#[lsm(hook = "inode_free_security")]
pub fn inode_free_security(ctx: LsmContext) -> i32 {
    // void inode_free_security(struct inode *inode)
    let inode: u64 = ctx.arg(0);
    // A message queue's record (mqueue.rs): guarded loads, a map deletion only for queues.
    let typed = Btf::arg(&ctx, 0);
    if crate::mqueue::is_queue(typed) {
        crate::mqueue::freed(typed);
        return 0;
    }
    // SAFETY: see read_at.
    unsafe {
        // The superblock's device, as `WRITTEN` keys files (exec.rs `written_key`).
        let (Ok(ino), Ok(dev)) = (
            read_at::<u64>(inode, off(&OFF_INODE_INO)),
            read_at::<u64>(inode, off(&OFF_INODE_SB))
                .and_then(|sb| read_at::<u32>(sb, off(&OFF_SB_DEV))),
        ) else {
            return 0;
        };
        let key = ExecKey { class: 0, dev, ino };
        let Some(found) = WRITTEN.get_ptr_mut(&key) else {
            return 0;
        };
        if (*found).inode != inode {
            return 0;
        }
        // A snapshot (btrfs, bcachefs) is a copy of the file under the same key in another
        // inode, which outlives this one and was never written: the entry stays for good
        // (red team round 19).
        let snapshots = read_at::<u64>(inode, off(&OFF_INODE_SB))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_MAGIC)))
            .map_or(true, |m| {
                matches!(m & 0xffff_ffff, BTRFS_MAGIC | BCACHEFS_MAGIC)
            });
        if !snapshots && read_at::<u32>(inode, off(&OFF_INODE_NLINK)) == Ok(0) {
            let _ = WRITTEN.remove(&key);
        } else {
            (*found).inode = 0;
        }
    }
    0
}
