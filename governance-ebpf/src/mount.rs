//! Mounts: mount, umount, remount, pivot_root and move_mount are refused to agents unless the
//! policy allows mounts (`kernel: { allow_mounts: true }`).
//!
//! A mount changes what a path names: a tmpfs over a directory a rule protects, a bind mount
//! of a protected file under a name no rule covers, a second cgroup2 mount outside the
//! protected cgroup path. Mounting needs CAP_SYS_ADMIN, which agents never get (caps.rs), so
//! these hooks are defence in depth and the precise event; they are what still holds where
//! an agent has CAP_SYS_ADMIN: inside a user namespace the policy let it make, or when the
//! policy gives it back. (The kernel asks the `sb_mount` hook before it checks CAP_SYS_ADMIN;
//! umount, pivot_root and move_mount check the capability first.)
//!
//! The new mount API reaches these hooks as well: fsconfig(FSCONFIG_CMD_RECONFIGURE) is a
//! remount (`sb_remount`), a mount made with fsopen/fsmount or open_tree(OPEN_TREE_CLONE) is
//! attached by move_mount (`move_mount`), and a filesystem made with fsopen is refused when it
//! is created (`sb_kern_mount`, fsconfig(FSCONFIG_CMD_CREATE)): used detached, through its
//! descriptor, it needs no move_mount (red team round 28: an overlay whose lower layer is a
//! protected directory read its files on 6.1, and one whose upper layer is a protected
//! directory changed them). fsopen, fspick, fsmount, open_tree and mount_setattr themselves
//! require CAP_SYS_ADMIN in the mount namespace's owner.
use aya_ebpf::{helpers::generated::bpf_d_path, macros::lsm, programs::LsmContext};
use governance_common::{Kind, allow, mount_op};

use crate::decide::{Decision, current_agent, emit, lsm_ret};

/// Decide a mount operation `op` for the current task and report it; `object` goes into the
/// event (the mount flags).
#[inline(always)]
fn mount_decision(op: u8, object: u64) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Mount, agent.value.allow & allow::MOUNTS == 0);
    emit(&agent, &d, |ev| {
        ev.detail = op;
        ev.object = object;
    });
    lsm_ret(&d)
}

/// mount(2), every kind: new mounts, bind mounts, remounts, moves, propagation changes.
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    // int sb_mount(const char *dev_name, const struct path *path, const char *type,
    //              unsigned long flags, void *data)
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let path: u64 = ctx.arg(1);
    let d = Decision::builtin(Kind::Mount, agent.value.allow & allow::MOUNTS == 0);
    emit(&agent, &d, |ev| {
        ev.detail = mount_op::MOUNT;
        ev.object = ctx.arg(3);
        // The mount point. Only here: bpf_d_path is allowed in a few hooks, sb_mount among
        // them; `path` is the hook's BTF-typed argument, as the helper requires.
        // SAFETY: the helper writes at most the buffer's size.
        let n = unsafe {
            bpf_d_path(
                path as *mut _,
                ev.path.as_mut_ptr().cast(),
                ev.path.len() as u32,
            )
        };
        if n < 0 {
            ev.path[0] = 0;
        }
    });
    lsm_ret(&d)
}

/// A new filesystem for userspace: mount(2) of one (after `sb_mount`) and
/// fsconfig(FSCONFIG_CMD_CREATE). Mounts the kernel makes itself (a new IPC namespace's
/// mqueue, automounts) do not come here.
#[lsm(hook = "sb_kern_mount")]
pub fn sb_kern_mount(ctx: LsmContext) -> i32 {
    // int sb_kern_mount(const struct super_block *sb)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    mount_decision(mount_op::NEW_FILESYSTEM, 0)
}

/// umount2(2).
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    // int sb_umount(struct vfsmount *mnt, int flags)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let flags: i32 = ctx.arg(1);
    mount_decision(mount_op::UMOUNT, flags as u64)
}

/// A superblock's options changed: mount(MS_REMOUNT) and fsconfig(FSCONFIG_CMD_RECONFIGURE).
#[lsm(hook = "sb_remount")]
pub fn sb_remount(ctx: LsmContext) -> i32 {
    // int sb_remount(struct super_block *sb, void *mnt_opts)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    mount_decision(mount_op::REMOUNT, 0)
}

/// pivot_root(2).
#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    // int sb_pivotroot(const struct path *old_path, const struct path *new_path)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    mount_decision(mount_op::PIVOT_ROOT, 0)
}

/// move_mount(2): moving a mount, or attaching one made by fsmount or open_tree.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    // int move_mount(const struct path *from_path, const struct path *to_path)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    mount_decision(mount_op::MOVE_MOUNT, 0)
}
