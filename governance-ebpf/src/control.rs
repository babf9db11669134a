//! The control plane's inputs in the cgroup tree: which cgroups are agents, and under which
//! policy, follows from their paths (`agents: { cgroup: GLOB }`) and their
//! `user.governance.agent` label (`agents: { label: NAME }`). An agent that relabels its own
//! cgroup would choose its own policy at the next reload (which the relabelling itself
//! triggers), or stop being an agent at all. So agents may not set or remove extended
//! attributes on the cgroup filesystem. (Paths need nothing: cgroup v2 refuses every rename.)
use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use governance_common::Kind;

use crate::{
    decide::{Decision, current_agent, emit, lsm_ret},
    kernel::{OFF_DENTRY_INODE, OFF_INODE_SB, OFF_SB_MAGIC, off, read_at},
};

/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Is `inode` (a `struct inode *`) on the cgroup2 filesystem? Unreadable counts as yes (only
/// agents are affected).
#[inline(always)]
fn on_cgroupfs(inode: u64) -> bool {
    // SAFETY: see read_at.
    let magic = unsafe {
        read_at::<u64>(inode, off(&OFF_INODE_SB))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_MAGIC)))
    };
    match magic {
        Ok(m) => m & 0xffff_ffff == CGROUP2_SUPER_MAGIC,
        Err(_) => true,
    }
}

/// The inode of `dentry` is on the cgroup2 filesystem.
#[inline(always)]
fn dentry_on_cgroupfs(dentry: u64) -> bool {
    // SAFETY: see read_at.
    match unsafe { read_at::<u64>(dentry, off(&OFF_DENTRY_INODE)) } {
        Ok(inode) => on_cgroupfs(inode),
        Err(_) => true,
    }
}

/// Refuse the current task if it is an agent: a built-in file decision (the cgroup tree is a
/// protected path), with `name` (a kernel string: the attribute's name) for the record.
#[inline(always)]
fn refuse(name: u64) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::File, true);
    emit(&agent, &d, |ev| {
        // Written as an attribute change: the write access letter.
        ev.detail = 2;
        // SAFETY: bounded by the destination buffer; errors leave path empty.
        if name == 0
            || unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
        {
            ev.path[0] = 0;
        }
    });
    lsm_ret(&d)
}

/// Built-in: agents may not set extended attributes on the cgroup filesystem (the agent label).
#[lsm(hook = "inode_setxattr")]
pub fn cgroup_setxattr(ctx: LsmContext) -> i32 {
    // int inode_setxattr(struct mnt_idmap *idmap (user_namespace before 6.3),
    //                    struct dentry *dentry, const char *name, const void *value,
    //                    size_t size, int flags)
    let previous: i32 = ctx.arg(6);
    if previous != 0 {
        return previous;
    }
    if !dentry_on_cgroupfs(ctx.arg(1)) {
        return 0;
    }
    refuse(ctx.arg(2))
}

/// Built-in: agents may not remove extended attributes on the cgroup filesystem.
#[lsm(hook = "inode_removexattr")]
pub fn cgroup_removexattr(ctx: LsmContext) -> i32 {
    // int inode_removexattr(struct mnt_idmap *idmap, struct dentry *dentry, const char *name)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    if !dentry_on_cgroupfs(ctx.arg(1)) {
        return 0;
    }
    refuse(ctx.arg(2))
}
