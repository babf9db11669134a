//! Job control: what an agent's process does to its terminal session that reaches processes of
//! the session outside the agent. The kernel signals the caller's whole process group for a
//! read of its controlling terminal from a background group (SIGTTIN), a write there with
//! `TOSTOP` set, or an ioctl that changes the terminal (SIGTTOU): `__tty_check_change` sends
//! them with `kill_pgrp(task_pgrp(current), sig, 1)`, a signal of the kernel's that asks no
//! `task_kill`. A process group is not a cgroup: an agent's process shares one with processes
//! outside when the wrapper that started it made no group of its own, or joins one with
//! `setpgid` (any group of its session: the daemon started with `&` from the same shell), and
//! its terminal access would stop them all (red team round 36). And `tcsetpgrp` makes any group
//! of the session the terminal's foreground, the others' next access then stopping them.
//!
//! Decided by who leads the caller's session. A session an agent's process leads holds only
//! that agent's processes (a session is made by `setsid` and entered only by fork), so its
//! job control stops nothing outside and nothing is refused there: an agent's shell works as
//! anywhere. In a session whose leader is outside the agent (the user's terminal, a launcher's),
//! or has exited, an agent's process may not join another process group (`task_setpgid`; a
//! group of its own, `setpgid(0, 0)`, is made as usual), make a group the terminal's
//! foreground (`TIOCSPGRP`), or read, write with `TOSTOP`, or change its controlling terminal
//! from a background group, whatever the state of its signals: the kernel checks the group and
//! the signal's state after the hook (and per 2 KiB chunk of a write), so a condition an agent
//! can change between the two is not one to decide on. What the agent cannot change is
//! enough: it stays in the group it was put in, or one of its own; and that group becomes the
//! foreground or the background only by the session's own job control (the user's shell).
//! The hooks: `file_permission` for reads and writes (held.rs), `file_ioctl` (guard.rs), and
//! `task_setpgid` here. Every read and write of a terminal passes `file_permission`: the checks
//! before the agent lookup are a helper call and typed loads, and one read of a character
//! device's `private_data` for a process that has a controlling terminal.
use aya_ebpf::{helpers::bpf_get_current_task_btf, macros::lsm, programs::LsmContext};
use governance_common::{Kind, SIGNAL_DETAIL_JOB_CONTROL, guard};

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret, pid_in_subtree},
    kernel::{
        Btf, MAX_PID_NS_LEVEL, MAY_READ, MAY_WRITE, OFF_FILE_INODE, OFF_FILE_PRIVATE_DATA,
        OFF_INODE_MODE, OFF_PID_LEVEL, OFF_PID_NUMBERS, OFF_SIGNAL_PIDS, OFF_SIGNAL_TTY,
        OFF_TASK_SIGNAL, OFF_TASK_THREAD_PID, OFF_TTY_FILE_PRIVATE_TTY, OFF_TTY_LFLAG,
        OFF_TTY_LINK, OFF_TTY_PGRP, OFF_TTY_SESSION, OFF_UPID_NR, S_IFCHR, S_IFMT, SIZE_UPID, off,
        read_at,
    },
};

const SIGTTIN: u16 = 21;
const SIGTTOU: u16 = 22;
/// `termios.c_lflag`: background writes stop the writer's group.
const TOSTOP: u32 = 0o400;
/// `signal_struct.pids[]`: the process group and the session.
const PIDTYPE_PGID: u64 = 2;
const PIDTYPE_SID: u64 = 3;
/// `tcsetpgrp`: sets the terminal's foreground group.
const TIOCSPGRP: u32 = 0x5410;
/// Makes a terminal the caller's controlling terminal.
pub(crate) const TIOCSCTTY: u32 = 0x540e;
/// Hangs a terminal up (`vhangup` of a descriptor): SIGHUP to the leader of its session.
pub(crate) const TIOCVHANGUP: u32 = 0x5437;
/// Exclusive mode: every later open of the terminal fails (EBUSY) but with CAP_SYS_ADMIN.
pub(crate) const TIOCEXCL: u32 = 0x540c;
/// Sets the window size, and sends SIGWINCH to the terminal's foreground group.
pub(crate) const TIOCSWINSZ: u32 = 0x5414;

/// The ioctls whose handlers call `tty_check_change` (SIGTTOU), by number in type `T`, whatever
/// the size bits (`TCSETS2` and its kin carry them): read in drivers/tty of 6.1 and 6.12,
/// `tty_ioctl` (TIOCSETD, TCSBRK, TCSBRKP, TIOCSBRK, TIOCCBRK before the command;
/// `tiocspgrp`: TIOCSPGRP), `n_tty_ioctl_helper` (TCXONC, TCFLSH) and `tty_mode_ioctl`'s
/// `set_termios` (TCSETS, TCSETSW, TCSETSF, TCSETA, TCSETAW, TCSETAF, TCSETS2, TCSETSW2,
/// TCSETSF2). (TCSETX and its kin answer ENOTTY since Linux 5.12.)
const CHANGES_TERMINAL: [u32; 17] = [
    0x02, 0x03, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x10, 0x23, 0x25, 0x27, 0x28, 0x2b, 0x2c,
    0x2d,
];
const TTY_IOCTL: u32 = b'T' as u32;

/// Is `cmd` a terminal ioctl that stops a background caller's group ([`CHANGES_TERMINAL`])?
#[inline(always)]
pub(crate) fn changes_terminal(cmd: u32) -> bool {
    (cmd >> 8) & 0xff == TTY_IOCTL && CHANGES_TERMINAL.contains(&(cmd & 0xff))
}

/// `signal.pids[kind]`: a process's `struct pid` of that kind, as a number.
#[inline(always)]
fn pid_of(signal: Btf, kind: u64) -> u64 {
    signal.get(off(&OFF_SIGNAL_PIDS) + kind * 8)
}

/// The current task's `signal_struct` and its controlling terminal, if it has one.
struct Caller {
    signal: Btf,
    tty: Btf,
}

#[inline(always)]
fn caller() -> Option<Caller> {
    // SAFETY: no arguments; a trusted pointer to the current task, never NULL.
    let task = Btf::of(unsafe { bpf_get_current_task_btf() } as u64);
    let signal = task.ptr(off(&OFF_TASK_SIGNAL)).ok()?;
    let tty = signal.ptr(off(&OFF_SIGNAL_TTY)).ok()?;
    Some(Caller { signal, tty })
}

impl Caller {
    /// Is the caller's group not its terminal's foreground group? A terminal with none
    /// signals nothing (the kernel warns), so that counts as not.
    #[inline(always)]
    fn in_background(&self) -> bool {
        match self.tty.ptr(off(&OFF_TTY_PGRP)) {
            Ok(foreground) => pid_of(self.signal, PIDTYPE_PGID) != foreground.addr(),
            Err(_) => false,
        }
    }

    /// The caller's process group's number in the initial namespace (`numbers[0]`), for the
    /// event.
    #[inline(always)]
    fn group_number(&self) -> u32 {
        let group = pid_of(self.signal, PIDTYPE_PGID);
        // SAFETY: see read_at.
        unsafe { read_at::<u32>(group, off(&OFF_PID_NUMBERS) + off(&OFF_UPID_NR)) }.unwrap_or(0)
    }
}

/// The terminal behind `file` (a `struct tty_struct *` as a number), or 0: for a character
/// device, the first word of `private_data` (a tty file's `struct tty_file_private`). Another
/// driver's `private_data` is read the same way and matches no terminal.
#[inline(always)]
fn terminal_of(file: Btf) -> u64 {
    let Ok(inode) = file.ptr(off(&OFF_FILE_INODE)) else {
        return 0;
    };
    if inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT != S_IFCHR {
        return 0;
    }
    // A `void *` to the verifier: what it points to is read with `read_at`.
    let private: u64 = file.get(off(&OFF_FILE_PRIVATE_DATA));
    if private == 0 {
        return 0;
    }
    // SAFETY: see read_at.
    unsafe { read_at::<u64>(private, off(&OFF_TTY_FILE_PRIVATE_TTY)) }.unwrap_or(0)
}

/// A read or write (`file_permission`'s `mask`) of `file` by the current task: refused to an
/// agent's process from a background group of a session led outside the agent, for a read or
/// a write with `TOSTOP` set (a write without it signals nothing, in the background or not).
/// 0 lets it go on.
#[inline(always)]
pub(crate) fn terminal_access(file: Btf, mask: i32) -> i32 {
    if mask & (MAY_READ | MAY_WRITE) == 0 {
        return 0;
    }
    let Some(c) = caller() else {
        return 0;
    };
    if terminal_of(file) != c.tty.addr() {
        return 0;
    }
    let sig = if mask & MAY_WRITE != 0 {
        if c.tty.get::<u32>(off(&OFF_TTY_LFLAG)) & TOSTOP == 0 {
            return 0;
        }
        SIGTTOU
    } else {
        SIGTTIN
    };
    if !c.in_background() {
        return 0;
    }
    refuse_outside_session(c.signal, sig, c.group_number())
}

/// An ioctl that changes the terminal ([`changes_terminal`]) on `file` by the current task,
/// when the file's terminal, or for a pty master its slave, is the caller's controlling
/// terminal (`set_termios` and `tiocspgrp` on a master act on the slave): refused to an
/// agent's process in a session led outside the agent from a background group, and for
/// `TIOCSPGRP` from any group.
#[inline(always)]
pub(crate) fn terminal_ioctl(file: Btf, cmd: u32) -> i32 {
    let Some(c) = caller() else {
        return 0;
    };
    let tty = terminal_of(file);
    if tty == 0 {
        return 0;
    }
    // SAFETY: see read_at.
    let link = unsafe { read_at::<u64>(tty, off(&OFF_TTY_LINK)) }.unwrap_or(0);
    if tty != c.tty.addr() && link != c.tty.addr() {
        return 0;
    }
    if cmd != TIOCSPGRP && !c.in_background() {
        return 0;
    }
    refuse_outside_session(c.signal, SIGTTOU, c.group_number())
}

/// A command (`cmd`) on `file` that acts on the processes of the session the terminal belongs
/// to: with CAP_SYS_ADMIN and 1 for argument `TIOCSCTTY` takes a terminal another session
/// holds from it (`session_clear_tty`: its processes lose their terminal and their job
/// control), and `TIOCVHANGUP` hangs it up (SIGHUP and SIGCONT to that session's leader, the
/// user's shell, from the kernel: no `task_kill`); with no capability `TIOCEXCL` makes every
/// later open of it fail (the `/dev/tty` of a password prompt) and `TIOCSWINSZ` changes its
/// size and sends SIGWINCH to its foreground group, from any group (red team round 37). Refused to an agent's process when the terminal, or a pty
/// master's slave, is held by a session whose leader is not in the agent, or has exited
/// (guard::OTHER_TERMINAL). A terminal no session holds (a pty just made: `script`,
/// `pexpect`) and one a session of the agent holds pass.
#[inline(always)]
pub(crate) fn other_session_terminal(file: Btf, cmd: u32) -> i32 {
    let tty = terminal_of(file);
    if tty == 0 {
        return 0;
    }
    // SAFETY: see read_at.
    let link = unsafe { read_at::<u64>(tty, off(&OFF_TTY_LINK)) }.unwrap_or(0);
    let Some(agent) = current_agent() else {
        return 0;
    };
    for t in [tty, link] {
        // SAFETY: see read_at.
        let session = unsafe { read_at::<u64>(t, off(&OFF_TTY_SESSION)) }.unwrap_or(0);
        if t != 0 && session != 0 && !pid_in_subtree(&agent, session) {
            return crate::guard::refuse(guard::OTHER_TERMINAL, u64::from(cmd));
        }
    }
    0
}

/// Built-in: an agent's process may not join another process group in a session led outside
/// the agent. `setpgid(p, pgid)`, after the kernel's checks (`p` is the caller or a child of
/// it, in the caller's session; the group is of that session); `pgid` as the caller numbers
/// it. A group of `p`'s own (`pgid` is `p`'s number) passes. Whether `p` has a controlling
/// terminal does not matter (red team round 37): a process that drops its own (`TIOCNOTTY`)
/// and joins a group of stopped processes outside, whose only tie to the session it then is,
/// orphans the group by exiting, and the kernel sends the group SIGHUP and SIGCONT
/// (`kill_orphaned_pgrp`, no `task_kill`).
#[lsm(hook = "task_setpgid")]
pub fn task_setpgid(ctx: LsmContext) -> i32 {
    // int task_setpgid(struct task_struct *p, pid_t pgid)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let p = Btf::arg(&ctx, 0);
    let Ok(signal) = p.ptr(off(&OFF_TASK_SIGNAL)) else {
        return 0;
    };
    let pgid: u32 = ctx.arg(1);
    if number_seen_by_caller(p) == Some(pgid) {
        return 0;
    }
    refuse_outside_session(signal, 0, pgid)
}

/// `p`'s process id as the current task numbers it (`task_pid_vnr`):
/// `p->thread_pid->numbers[level].nr`, `level` that of the current task's own PID namespace.
/// None if unreadable, or if `p` is not in that namespace.
#[inline(always)]
fn number_seen_by_caller(p: Btf) -> Option<u32> {
    // SAFETY: no arguments; a trusted pointer to the current task, never NULL.
    let task = Btf::of(unsafe { bpf_get_current_task_btf() } as u64);
    let level: u32 = task
        .ptr(off(&OFF_TASK_THREAD_PID))
        .ok()?
        .get(off(&OFF_PID_LEVEL));
    // `p`'s `struct pid` read as a plain number: the verifier refuses an index scaled by a
    // level (it keeps no bound through the multiplication) added to a typed pointer.
    // SAFETY: see read_at.
    unsafe {
        let theirs = read_at::<u64>(p.addr(), off(&OFF_TASK_THREAD_PID)).ok()?;
        if level > MAX_PID_NS_LEVEL || read_at::<u32>(theirs, off(&OFF_PID_LEVEL)).ok()? < level {
            return None;
        }
        let at = off(&OFF_PID_NUMBERS) + u64::from(level) * off(&SIZE_UPID) + off(&OFF_UPID_NR);
        read_at::<u32>(theirs, at).ok()
    }
}

/// Refuse the current task if it is an agent's and the leader of its session (`signal`'s) is
/// not in the agent, or has exited; reported as a refused job-control signal `sig` (0: none,
/// a `setpgid`) to the process group numbered `group`.
#[inline(always)]
fn refuse_outside_session(signal: Btf, sig: u16, group: u32) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    if pid_in_subtree(&agent, pid_of(signal, PIDTYPE_SID)) {
        return 0;
    }
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        ev.port = sig;
        ev.object = u64::from(group);
        ev.detail = SIGNAL_DETAIL_JOB_CONTROL;
    });
    lsm_ret(&d)
}
