//! Job-control signals the kernel sends to the caller's own process group: a read of its
//! controlling terminal from a background process group (SIGTTIN), and a write there with
//! `TOSTOP` set or an ioctl that changes the terminal (SIGTTOU). `__tty_check_change` sends
//! them with `kill_pgrp(task_pgrp(current), sig, 1)`: a signal of the kernel's, which asks no
//! `task_kill`, to every process of the group. A process group is not a cgroup: an agent's
//! process shares one with processes outside the agent when the wrapper that started it made
//! no group of its own, or joins one with `setpgid` (any group of its session: the daemon
//! started with `&` from the same shell), and its terminal access would stop them all (red
//! team round 36).
//!
//! So these accesses are refused to agents' processes in the hook before the terminal's code
//! (`file_permission` for reads and writes, held.rs; `file_ioctl` for the ioctls, guard.rs), on
//! the kernel's own conditions: the file's terminal is the caller's controlling terminal, the
//! terminal has a foreground group and the caller's group is not it, and the caller neither
//! blocks nor ignores the signal (the kernel then signals nothing: a read gets EIO, a write or
//! an ioctl goes on, so a shell's `tcsetpgrp` with SIGTTOU blocked keeps working). A write
//! without `TOSTOP` signals nothing and passes, as do the ioctls that only read (`TCGETS`,
//! `TIOCGWINSZ`, `TIOCGPGRP`). A group the kernel finds orphaned gets EIO rather than a signal:
//! refused here all the same (an error either way). Every read and write of the node passes
//! here: the checks before the agent lookup are a helper call and typed loads, and one read of
//! a character device's `private_data` for a process that has a controlling terminal.
use aya_ebpf::helpers::bpf_get_current_task_btf;
use governance_common::{Kind, SIGNAL_DETAIL_JOB_CONTROL};

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret},
    kernel::{
        Btf, MAY_READ, MAY_WRITE, OFF_FILE_INODE, OFF_FILE_PRIVATE_DATA, OFF_INODE_MODE,
        OFF_PID_NUMBERS, OFF_SIGACTION_HANDLER, OFF_SIGHAND_ACTION, OFF_SIGNAL_PIDS,
        OFF_SIGNAL_TTY, OFF_TASK_BLOCKED, OFF_TASK_SIGHAND, OFF_TASK_SIGNAL,
        OFF_TTY_FILE_PRIVATE_TTY, OFF_TTY_LFLAG, OFF_TTY_LINK, OFF_TTY_PGRP, OFF_UPID_NR, S_IFCHR,
        S_IFMT, SIZE_K_SIGACTION, off, read_at,
    },
};

const SIGTTIN: u32 = 21;
const SIGTTOU: u32 = 22;
/// `termios.c_lflag`: background writes stop the writer's group.
const TOSTOP: u32 = 0o400;
/// `signal_struct.pids[PIDTYPE_PGID]`: the process group.
const PIDTYPE_PGID: u64 = 2;
/// `sa_handler` of a signal ignored.
const SIG_IGN: u64 = 1;

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

/// The current task, its `signal_struct` and its controlling terminal, if it has one.
struct Caller {
    task: Btf,
    signal: Btf,
    tty: Btf,
}

#[inline(always)]
fn caller() -> Option<Caller> {
    // SAFETY: no arguments; a trusted pointer to the current task, never NULL.
    let task = Btf::of(unsafe { bpf_get_current_task_btf() } as u64);
    let signal = task.ptr(off(&OFF_TASK_SIGNAL)).ok()?;
    let tty = signal.ptr(off(&OFF_SIGNAL_TTY)).ok()?;
    Some(Caller { task, signal, tty })
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
/// agent's process when the kernel would stop its process group for it. 0 lets it go on.
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
    stops_group(&c, sig)
}

/// An ioctl that changes the terminal ([`changes_terminal`]) on `file` by the current task:
/// refused likewise. The kernel checks the pty pair's other end for some (`set_termios` and
/// `tiocspgrp` on a pty master act on its slave, which may be the controlling terminal), so
/// both ends count here.
#[inline(always)]
pub(crate) fn terminal_ioctl(file: Btf) -> i32 {
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
    stops_group(&c, SIGTTOU)
}

/// Would `__tty_check_change(tty, sig)` signal the caller's process group? Then refused to an
/// agent's process, reported as a refused signal to that group.
#[inline(always)]
fn stops_group(c: &Caller, sig: u32) -> i32 {
    // No foreground group: the kernel signals nothing (and warns).
    let Ok(foreground) = c.tty.ptr(off(&OFF_TTY_PGRP)) else {
        return 0;
    };
    let group: u64 = c.signal.get(off(&OFF_SIGNAL_PIDS) + PIDTYPE_PGID * 8);
    if group == foreground.addr() || ignored(c.task, sig) {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    // The group's number in the initial namespace (`numbers[0]`), for the event.
    // SAFETY: see read_at.
    let pgid = unsafe { read_at::<u32>(group, off(&OFF_PID_NUMBERS) + off(&OFF_UPID_NR)) };
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        ev.port = sig as u16;
        ev.object = u64::from(pgid.unwrap_or(0));
        ev.detail = SIGNAL_DETAIL_JOB_CONTROL;
    });
    lsm_ret(&d)
}

/// The kernel's `is_ignored(sig)`: blocked by the calling thread, or ignored by its process.
/// Unreadable: not ignored (the access is decided as one that signals).
#[inline(always)]
fn ignored(task: Btf, sig: u32) -> bool {
    let bit = 1u64 << (sig - 1);
    if task.get::<u64>(off(&OFF_TASK_BLOCKED)) & bit != 0 {
        return true;
    }
    let Ok(sighand) = task.ptr(off(&OFF_TASK_SIGHAND)) else {
        return false;
    };
    // `action[sig - 1].sa.sa_handler`; an index the verifier would not place in a typed load.
    let at = off(&OFF_SIGHAND_ACTION)
        + u64::from(sig - 1) * off(&SIZE_K_SIGACTION)
        + off(&OFF_SIGACTION_HANDLER);
    // SAFETY: see read_at.
    let handler = unsafe { read_at::<u64>(sighand.addr(), at) };
    handler == Ok(SIG_IGN)
}
