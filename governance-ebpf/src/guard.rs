//! Built-ins against getting something outside the agent to act for it, or changing what makes
//! it an agent: the kernel loading a module on the agent's behalf (modprobe runs outside, as
//! root), input pushed into a terminal another process reads, signal ownership of a file handed
//! to a process outside the agent, and the agent label on cgroups. Refused to agents whatever the
//! policy says. (Renaming a cgroup, which would make a path selector miss it, the kernel refuses
//! on cgroup2 itself.)
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use governance_common::{Kind, guard};

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret},
    kernel::{OFF_KEY_TYPE, OFF_KEY_TYPE_NAME, off, read_at},
};

/// Refuse the current task if it belongs to an agent, reporting `what` (governance_common::guard).
#[inline(always)]
fn refuse(what: u8, object: u64) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Guard, true);
    emit(&agent, &d, |ev| {
        ev.detail = what;
        ev.object = object;
    });
    lsm_ret(&d)
}

/// Built-in: no module autoloading for agents. `request_module()` (an unknown socket family, a
/// filesystem type, a device) makes the kernel run modprobe, outside the agent, as root.
#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    // int kernel_module_request(char *kmod_name)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    refuse(guard::MODULE_REQUEST, 0)
}

const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
const FIOSETOWN: u32 = 0x8901;
const SIOCSPGRP: u32 = 0x8902;

/// Built-in: agents may not push input into a terminal (TIOCSTI: the next reader of the tty,
/// often a shell outside the agent, runs it; TIOCLINUX: console selection paste), nor hand a
/// file's signal ownership to another process by ioctl (FIOSETOWN, SIOCSPGRP: the argument is
/// in user memory, so it is refused outright rather than read). Other ioctls pass at once,
/// before the agent lookup: this hook runs for every ioctl on the node.
#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    // int file_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    let what = match cmd {
        TIOCSTI | TIOCLINUX => guard::TERMINAL_INPUT,
        FIOSETOWN | SIOCSPGRP => guard::SIGNAL_OWNER,
        _ => return 0,
    };
    refuse(what, u64::from(cmd))
}

const F_SETOWN: u32 = 8;
const F_SETOWN_EX: u32 = 15;

/// Built-in: F_SETOWN makes the kernel signal the owner when I/O is possible (any signal, with
/// F_SETSIG): an agent may name only itself. F_SETOWN_EX's target is in user memory: refused.
#[lsm(hook = "file_fcntl")]
pub fn file_fcntl(ctx: LsmContext) -> i32 {
    // int file_fcntl(struct file *file, unsigned int cmd, unsigned long arg)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    match cmd {
        F_SETOWN => {
            let owner: i64 = ctx.arg(2);
            let tgid = (bpf_get_current_pid_tgid() >> 32) as i64;
            // 0 clears the owner; its own process is fine.
            if owner == 0 || owner == tgid {
                return 0;
            }
            refuse(guard::SIGNAL_OWNER, owner as u64)
        }
        F_SETOWN_EX => refuse(guard::SIGNAL_OWNER, 0),
        _ => 0,
    }
}

/// The agent label's xattr namespace (governance-userspace's agents::LABEL_XATTR lives in it).
const LABEL_PREFIX: &[u8; 16] = b"user.governance.";

/// Whether the xattr name at `name` (a kernel string) is in the label's namespace.
#[inline(always)]
fn is_label(name: u64) -> bool {
    let mut buf = [0u8; 17];
    // SAFETY: bounded by the buffer; a failed read counts as a label (fail closed).
    match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf) } {
        Ok(s) => s.len() >= 16 && &s[..16] == LABEL_PREFIX,
        Err(_) => true,
    }
}

/// Built-in: agents may not set the agent label (`user.governance.*`) anywhere: relabelling its
/// own cgroup would change which policy governs it, or make it no agent at all.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    // int inode_setxattr(struct user_namespace *mnt_userns, struct dentry *dentry,
    //                    const char *name, const void *value, size_t size, int flags)
    let previous: i32 = ctx.arg(6);
    if previous != 0 {
        return previous;
    }
    if !is_label(ctx.arg(2)) {
        return 0;
    }
    refuse(guard::LABEL, 0)
}

/// Built-in: nor remove it.
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    // int inode_removexattr(struct user_namespace *mnt_userns, struct dentry *dentry,
    //                       const char *name)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    if !is_label(ctx.arg(2)) {
        return 0;
    }
    refuse(guard::LABEL, 0)
}

/// Key types agents may make: keyrings, the plain payload types, and the authorisation key
/// `request_key` makes for its own upcall. A `user` key's upcall runs /sbin/request-key with
/// the handlers of /etc/request-key.conf, which agents may not write (system files). Every
/// other type (the upcall types; also asymmetric, big_key, trusted, encrypted, which agents
/// have no use for) is refused.
const LOCAL_KEY_TYPES: [&[u8]; 4] = [b"keyring\0", b"user\0", b"logon\0", b".request_key_auth\0"];

/// Does `name` start with `t` (which ends with its NUL, so a longer name with `t` as a prefix
/// does not)? Byte by byte, with constant bounds: a slice comparison would call memcmp, which
/// BPF has not.
#[inline(always)]
fn same(name: &[u8; 24], t: &[u8]) -> bool {
    let mut i = 0;
    while i < t.len() && i < name.len() {
        if name[i] != t[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Built-in: no keys of other types for agents. `request_key("dns_resolver", NAME)` makes the
/// kernel run /sbin/key.dns_resolver, outside every cgroup, which asks the node's resolver for
/// NAME: a DNS channel past the agent's network rules. The NFS and CIFS types are upcalls too.
/// The key is refused where it is made (`key_alloc`), before any upcall; a type the kernel
/// does not know yet needs a module, which agents may not load either.
#[lsm(hook = "key_alloc")]
pub fn key_alloc(ctx: LsmContext) -> i32 {
    // int key_alloc(struct key *key, const struct cred *cred, unsigned long flags)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // Most keys are made outside agents: the agent lookup first.
    if current_agent().is_none() {
        return 0;
    }
    let key: u64 = ctx.arg(0);
    let mut name = [0u8; 24];
    // SAFETY: see read_at; the copy is bounded by the buffer.
    let read = unsafe {
        read_at::<u64>(key, off(&OFF_KEY_TYPE))
            .and_then(|t| read_at::<u64>(t, off(&OFF_KEY_TYPE_NAME)))
            .map(|n| bpf_probe_read_kernel_str_bytes(n as *const u8, &mut name).map(|s| s.len()))
    };
    let local = match read {
        Ok(Ok(len)) => {
            let mut local = false;
            for t in LOCAL_KEY_TYPES {
                local |= t.len() == len + 1 && same(&name, t);
            }
            local
        }
        // Unreadable: refuse (fail closed).
        _ => false,
    };
    if local {
        0
    } else {
        refuse(guard::KEY_UPCALL, 0)
    }
}
