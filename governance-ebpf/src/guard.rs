//! Built-ins against getting something outside the agent to act for it, or changing what makes
//! it an agent: the kernel loading a module on the agent's behalf (modprobe runs outside, as
//! root), input pushed into a terminal another process reads, signal ownership of a file handed
//! to a process outside the agent, the agent label on cgroups, and a process moved into the
//! agent from outside, a cgroup named like an interface file. Refused to agents whatever the
//! policy says. (Renaming a cgroup, which would make a path selector miss it or give a cgroup
//! such a name, the kernel refuses on cgroup2 itself.)
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use governance_common::{Cause, Kind, allow, guard};

use crate::{
    decide::{Agent, Decision, cgroup_in_subtree, current_agent, emit, lsm_ret},
    kernel::{
        ANON_INODE_FS_MAGIC, Btf, CGROUP2_SUPER_MAGIC, DEVPTS_SUPER_MAGIC, MAY_WRITE,
        OFF_DENTRY_FSDATA, OFF_DENTRY_NAME, OFF_FILE_INODE, OFF_FILE_PATH, OFF_INODE_MAPPING,
        OFF_INODE_MODE, OFF_INODE_PRIVATE, OFF_INODE_SB, OFF_KERNFS_NODE_ID,
        OFF_KERNFS_NODE_PARENT, OFF_KERNFS_NODE_PRIV, OFF_KEY_TYPE, OFF_KEY_TYPE_NAME,
        OFF_MAPPING_I_MMAP, OFF_MAPPING_I_MMAP_WRITABLE, OFF_PATH_DENTRY, OFF_PROC_INODE_PID,
        OFF_PROC_INODE_VFS_INODE, OFF_QSTR_NAME, OFF_SB_MAGIC, OFF_SIGNAL_TTY, OFF_TASK_SIGNAL,
        OFF_TTY_SESSION, PROC_SUPER_MAGIC, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG, SYSFS_MAGIC, off,
        read_at,
    },
    protect::proc_owner_out_of_reach,
};

/// Refuse the current task if it belongs to an agent, reporting `what` (governance_common::guard).
#[inline(always)]
pub(crate) fn refuse(what: u8, object: u64) -> i32 {
    match current_agent() {
        Some(agent) => refuse_for(&agent, what, object),
        None => 0,
    }
}

/// Refuse `agent`'s current task, reporting `what` (governance_common::guard).
#[inline(always)]
fn refuse_for(agent: &Agent, what: u8, object: u64) -> i32 {
    let d = Decision::builtin(Kind::Guard, true);
    emit(agent, &d, |ev| {
        ev.detail = what;
        ev.object = object;
    });
    lsm_ret(&d)
}

/// Built-in: no open of a pty another session holds (governance_common::guard::OTHER_TERMINAL),
/// from `file_open`: a pty slave on devpts whose `tty_struct` (the dentry's `d_fsdata`) is the
/// controlling terminal of a session whose leader is outside the agent, unless it is the
/// opener's own controlling terminal. A pty no session holds (just made, or left) and one a
/// session of the agent holds pass. A leader that cannot be found or read counts as outside.
#[inline(always)]
pub(crate) fn other_terminal(agent: &Agent, file: Btf) -> i32 {
    let Ok(inode) = file.ptr(off(&OFF_FILE_INODE)) else {
        return 0;
    };
    if inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT != S_IFCHR {
        return 0;
    }
    match inode.ptr(off(&OFF_INODE_SB)) {
        Ok(sb) if sb.get::<u64>(off(&OFF_SB_MAGIC)) == DEVPTS_SUPER_MAGIC => {}
        _ => return 0,
    }
    // `d_fsdata` is a `void *` to the verifier: the terminal is read with `read_at`.
    let tty: u64 = match file.ptr(off(&OFF_FILE_PATH) + off(&OFF_PATH_DENTRY)) {
        Ok(dentry) => dentry.get(off(&OFF_DENTRY_FSDATA)),
        Err(_) => return 0,
    };
    // devpts's `ptmx` node: a new pty.
    if tty == 0 {
        return 0;
    }
    // SAFETY: see read_at; every pointer comes from the kernel and is read, never written.
    unsafe {
        let task = bpf_get_current_task();
        let own = read_at::<u64>(task, off(&OFF_TASK_SIGNAL))
            .and_then(|signal| read_at::<u64>(signal, off(&OFF_SIGNAL_TTY)));
        if own == Ok(tty) {
            return 0;
        }
        let session = match read_at::<u64>(tty, off(&OFF_TTY_SESSION)) {
            Ok(0) => return 0,
            Ok(session) => session,
            Err(_) => return refuse_for(agent, guard::OTHER_TERMINAL, 0),
        };
        // The session's leader.
        if crate::decide::pid_in_subtree(agent, session) {
            return 0;
        }
    }
    refuse_for(agent, guard::OTHER_TERMINAL, 0)
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
const TIOCCONS: u32 = 0x541d;
const FIOSETOWN: u32 = 0x8901;
const SIOCSPGRP: u32 = 0x8902;
const FIOASYNC: u32 = 0x5452;

/// Built-in: agents may not push input into a terminal (TIOCSTI: the next reader of the tty,
/// often a shell outside the agent, runs it; TIOCLINUX: console selection paste), take the
/// node's console output (TIOCCONS), hand a file's signal ownership to another process by
/// ioctl (FIOSETOWN, SIOCSPGRP: the argument is in user memory, so it is refused outright
/// rather than read), nor use a filesystem's ioctls that change files past the file hooks
/// ([`past_file_hooks`]). `FIOASYNC` (asynchronous notification on or off) records the file
/// as the agent's (sigio.rs). In a terminal session led outside the agent, the ioctls that
/// change its terminal from a background group, set its foreground group, or act on that
/// session's processes are refused (jobctl.rs). Other ioctls pass at once, before the agent
/// lookup: this hook runs for every ioctl on the node.
#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    ioctl(&ctx)
}

/// The same for the 32-bit ioctl entry (`int $0x80`, 32-bit programs), which asks this hook
/// instead of `file_ioctl` since Linux 6.8 and the stable kernels it was backported to (6.1.75,
/// 6.6.14, ...): the commands it refuses have the same numbers there.
#[lsm(hook = "file_ioctl_compat")]
pub fn file_ioctl_compat(ctx: LsmContext) -> i32 {
    ioctl(&ctx)
}

/// The ioctl type (magic) of btrfs's commands (and of the VFS's FICLONE and FICLONERANGE,
/// which go through the write hooks and pass).
const BTRFS_IOCTL: u32 = 0x94;
/// btrfs: SNAP_CREATE, SUBVOL_CREATE, SNAP_DESTROY, DEFAULT_SUBVOL, SNAP_CREATE_V2,
/// SUBVOL_CREATE_V2, SUBVOL_SETFLAGS (read-only off), SNAP_DESTROY_V2; and the VFS's
/// FIDEDUPERANGE (54): its destination needs no read access, and its answer (same or differs)
/// tells the bytes of a file the agent may write and not read (red team round 29).
const BTRFS_SUBVOLUME: [u32; 9] = [1, 14, 15, 19, 23, 24, 26, 54, 63];
/// bcachefs: SUBVOLUME_CREATE, SUBVOLUME_DESTROY, and their `_v2` (29, 30).
const BCACHEFS_IOCTL: u32 = 0xbc;
const BCACHEFS_SUBVOLUME: [u32; 4] = [16, 17, 29, 30];
/// ext4: MOVE_EXT ('f' 15: the extents of a donor file into this one) and SWAP_BOOT ('f' 17:
/// this file's blocks swapped with the boot loader's inode); and fscrypt's
/// SET_ENCRYPTION_POLICY ('f' 19: an empty directory the agent owns or, with CAP_FOWNER, any,
/// encrypted under a key of its choosing: what others make there later is its to withhold),
/// REMOVE_ENCRYPTION_KEY and its ALL_USERS form ('f' 24, 25: any descriptor on the filesystem
/// locks an unlocked fscrypt home, every protected file in it unreadable to its owner's
/// processes outside the agent until the next login; red team round 29). And (round 30)
/// fs-verity's ENABLE_VERITY ('f' 133: needs only a read-only descriptor, and makes the file
/// unwritable to everyone for good).
const EXT4_IOCTL: u32 = b'f' as u32;
const F_COMMANDS: [u32; 6] = [15, 17, 19, 24, 25, 133];
/// The VFS's SETFLAGS ('f' 2) on a directory (round 30): an empty directory the agent owns
/// made case-insensitive (`FS_CASEFOLD_FL`), where `CONFIG.YAML` then answers for a protected
/// `config.yaml` not yet made; no file hook sees the flag. On files it passes (`chattr +C`,
/// `+A`; immutable and append-only need CAP_LINUX_IMMUTABLE, which agents never get).
const FS_SETFLAGS: u32 = 2;
/// OCFS2: REFLINK ('o' 4: a new name made, for a copy, with no create hook).
const OCFS2_IOCTL: u32 = b'o' as u32;
const OCFS2_REFLINK: u32 = 4;
/// FAT: SET_ATTRIBUTES ('r' 0x11: a chmod through a descriptor, with no `path_chmod`).
const FAT_IOCTL: u32 = b'r' as u32;
const FAT_SET_ATTRIBUTES: u32 = 0x11;
/// XFS: SWAPEXT ('X' 109, `xfs_fsr`'s extent swap of two files named in user memory).
const XFS_IOCTL: u32 = b'X' as u32;
const XFS_SWAPEXT: u32 = 109;
/// F2FS: MOVE_RANGE (0xf5 9, blocks moved into a file named in user memory).
const F2FS_IOCTL: u32 = 0xf5;
const F2FS_MOVE_RANGE: u32 = 9;

/// Does `cmd` change files or the namespace without the hooks that decide opens, writes,
/// creations and removals (guard::FILESYSTEM_IOCTL)? Matched by type and number, whatever the
/// argument's size (32-bit callers and the commands' versions differ there). Read in the
/// kernels' sources: `btrfs_mksubvol` checks only `inode_permission` on the parent (no
/// `inode_mkdir` hook, no open), `ext4_move_extents`, `xfs_swap_extents` and
/// `f2fs_move_file_range` no `file_permission`, `ocfs2_reflink_ioctl` no create hook (red
/// team rounds 19 and 20).
#[inline(always)]
fn past_file_hooks(cmd: u32) -> bool {
    let (kind, nr) = ((cmd >> 8) & 0xff, cmd & 0xff);
    match kind {
        BTRFS_IOCTL => BTRFS_SUBVOLUME.contains(&nr),
        BCACHEFS_IOCTL => BCACHEFS_SUBVOLUME.contains(&nr),
        EXT4_IOCTL => F_COMMANDS.contains(&nr),
        XFS_IOCTL => nr == XFS_SWAPEXT,
        F2FS_IOCTL => nr == F2FS_MOVE_RANGE,
        OCFS2_IOCTL => nr == OCFS2_REFLINK,
        FAT_IOCTL => nr == FAT_SET_ATTRIBUTES,
        _ => false,
    }
}

#[inline(always)]
fn ioctl(ctx: &LsmContext) -> i32 {
    // int file_ioctl(struct file *file, unsigned int cmd, unsigned long arg), and
    // file_ioctl_compat with the same arguments
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    let what = match cmd {
        TIOCSTI | TIOCLINUX => guard::TERMINAL_INPUT,
        // The node's console output sent to a terminal of the agent's (red team round 37).
        TIOCCONS => guard::OTHER_TERMINAL,
        FIOSETOWN | SIOCSPGRP => guard::SIGNAL_OWNER,
        // A change of the controlling terminal from a background group (jobctl.rs).
        _ if crate::jobctl::changes_terminal(cmd) => {
            return crate::jobctl::terminal_ioctl(Btf::arg(ctx, 0), cmd);
        }
        // Another session's terminal taken or hung up (jobctl.rs).
        crate::jobctl::TIOCSCTTY
        | crate::jobctl::TIOCVHANGUP
        | crate::jobctl::TIOCEXCL
        | crate::jobctl::TIOCSWINSZ => {
            return crate::jobctl::other_session_terminal(Btf::arg(ctx, 0), cmd);
        }
        _ if past_file_hooks(cmd) => guard::FILESYSTEM_IOCTL,
        _ if (cmd >> 8) & 0xff == EXT4_IOCTL && cmd & 0xff == FS_SETFLAGS => {
            // A mode that cannot be read counts as a directory's.
            let file = Btf::arg(ctx, 0);
            let dir = file.ptr(off(&OFF_FILE_INODE)).map_or(true, |inode| {
                inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT == S_IFDIR
            });
            if !dir {
                return 0;
            }
            guard::FILESYSTEM_IOCTL
        }
        // On or off (the flag is in user memory, not read): the file is the agent's (sigio.rs).
        FIOASYNC => {
            return match current_agent() {
                Some(agent) => crate::sigio::armed(&agent, ctx.arg(0)),
                None => 0,
            };
        }
        _ => return 0,
    };
    refuse(what, u64::from(cmd))
}

const F_SETFL: u32 = 4;
const F_SETOWN: u32 = 8;
const F_SETSIG: u32 = 10;
const F_SETOWN_EX: u32 = 15;
/// `O_ASYNC` (`FASYNC`) in `F_SETFL`'s flags.
const O_ASYNC: u64 = 0o20000;
const F_SETLEASE: u32 = 1024;
const F_UNLCK: i64 = 2;

/// Built-in: F_SETOWN makes the kernel signal the owner when I/O is possible (any signal, with
/// F_SETSIG): an agent may name only itself. F_SETOWN_EX's target is in user memory: refused.
/// Turning on `O_ASYNC` (`F_SETFL`) or choosing the signal (`F_SETSIG`) records the file as
/// the agent's (sigio.rs): a terminal makes its foreground group the owner by itself.
/// F_SETLEASE (but for letting one go): a lease makes every other process's open of the file
/// wait up to the lease break time (45 s), the daemon's reads of the agent's own procfs files
/// for each proxied connection and of the policy on reload among them (see guard::LEASE).
/// Other commands, and `F_SETFL` without `O_ASYNC`, pass before the agent lookup.
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
        F_SETFL | F_SETSIG => {
            let arg: u64 = ctx.arg(2);
            if cmd == F_SETFL && arg & O_ASYNC == 0 {
                return 0;
            }
            match current_agent() {
                Some(agent) => crate::sigio::armed(&agent, ctx.arg(0)),
                None => 0,
            }
        }
        F_SETLEASE => {
            let kind: i64 = ctx.arg(2);
            if kind == F_UNLCK {
                return 0;
            }
            refuse(guard::LEASE, kind as u64)
        }
        _ => 0,
    }
}

/// The name io_uring gives its ring files (`anon_inode:[io_uring]` in `/proc/PID/fd`), with
/// its NUL, compared as two loads: its first eight bytes, and its last four.
const URING_NAME_HEAD: u64 = u64::from_le_bytes(*b"[io_urin");
const URING_NAME_TAIL: u32 = u32::from_le_bytes(*b"ng]\0");

/// Is `file` an io_uring ring? An error is an unreadable file (the caller refuses: fail
/// closed).
///
/// io_uring makes its ring file (`io_uring_get_file`, io_uring/io_uring.c) with an
/// `anon_inode_getfile*("[io_uring]", &io_uring_fops, ...)` variant on Linux 6.1 and with
/// `anon_inode_create_getfile("[io_uring]", ...)` on 6.12; every variant goes through
/// `__anon_inode_getfile`, whose `alloc_file_pseudo` names the file's dentry after that argument
/// on the anonymous-inode filesystem's superblock (a `secure` variant only gives the file an
/// inode of its own there; `/proc/PID/fd` shows the dentry's name: `anon_inode:[io_uring]`).
/// Only kernel code names files on that superblock, and only io_uring names one `[io_uring]`,
/// so both tests together recognise every ring and nothing else: a file of another filesystem
/// named `[io_uring]` fails the first, another anonymous file (an eventfd, an epoll) the second.
/// (`f_op == &io_uring_fops` would need the symbol's address, which the programs do not have.)
#[inline(always)]
fn uring_file(file: Btf) -> Result<bool, Cause> {
    let sb = file.ptr(off(&OFF_FILE_INODE))?.ptr(off(&OFF_INODE_SB))?;
    if sb.get::<u64>(off(&OFF_SB_MAGIC)) != ANON_INODE_FS_MAGIC {
        return Ok(false);
    }
    let dentry = file.ptr(off(&OFF_FILE_PATH) + off(&OFF_PATH_DENTRY))?;
    let name: u64 = dentry.get(off(&OFF_DENTRY_NAME) + off(&OFF_QSTR_NAME));
    // SAFETY: see read_at. The eleven bytes of a shorter name stay within the dentry's inline
    // name (32 bytes or more), where every name of this superblock is kept.
    let (head, tail) = unsafe { (read_at::<u64>(name, 0), read_at::<u32>(name, 7)) };
    match (head, tail) {
        (Ok(head), Ok(tail)) => Ok(head == URING_NAME_HEAD && tail == URING_NAME_TAIL),
        _ => Err(Cause::Unreadable),
    }
}

/// Built-in: no io_uring ring passed into an agent (governance_common::guard::URING_RING):
/// `file_receive` runs in the receiving task for every descriptor the kernel installs from
/// another process's file: `SECCOMP_IOCTL_NOTIF_ADDFD` (a supervisor outside puts it in the
/// agent's table), `pidfd_getfd`, `SCM_RIGHTS`. A ring with a polling thread
/// (`IORING_SETUP_SQPOLL`) made outside submits the requests an agent writes into its shared
/// memory as its maker, whom every hook takes for a process outside (red team round 36: a
/// socket, connect and send to a blocked server, no event); every ring is refused, polled or
/// not, as telling them apart would take another read and a ring passed at all is rare. Linux
/// 6.7 (and the stable kernels it went back to: Debian 12's 6.1 among them) refuses to send a
/// ring over `SCM_RIGHTS` itself (`EINVAL`), this hook its receipt on older ones; the agent's
/// `pidfd_getfd` of a process outside is refused at `ptrace_access_check`. Anything that is
/// not a ring passes before the agent lookup.
#[lsm(hook = "file_receive")]
pub fn file_receive(ctx: LsmContext) -> i32 {
    // int file_receive(struct file *file)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    if matches!(uring_file(Btf::arg(&ctx, 0)), Ok(false)) {
        return 0;
    }
    refuse(guard::URING_RING, 0)
}

/// The agent label's xattr namespace (governance-userspace's agents::LABEL_XATTR lives in it).
const LABEL_PREFIX: &[u8; 16] = b"user.governance.";

/// The xattrs that change what an object lets others do, or what running it grants: POSIX ACLs
/// (an ACL rewrites the mode: `u::---` is a chmod to 0) and file capabilities
/// (`security.capability` on a program gives whoever runs it root's powers).
const ACL_PREFIX: &[u8] = b"system.posix_acl_";
const CAPABILITY: &[u8] = b"security.capability\0";

/// A change of an xattr named `name` on `dentry`: the agent label is refused everywhere (see
/// `inode_setxattr`); an ACL or file capabilities on an object the identity rules protect from
/// writing, as a chmod is (`path_chmod`: the daemon's program, its socket directory, the
/// node's system files such as an interpreter in /usr/bin).
#[inline(always)]
fn xattr_changed(dentry: Btf, name: u64) -> i32 {
    let mut buf = [0u8; 32];
    // SAFETY: bounded by the buffer; a failed read counts as a label (fail closed).
    if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf) }.is_err() {
        return refuse(guard::LABEL, 0);
    }
    if same(&buf, LABEL_PREFIX) {
        return refuse(guard::LABEL, 0);
    }
    if same(&buf, ACL_PREFIX) || same(&buf, CAPABILITY) {
        return crate::identity::mode_changed(dentry);
    }
    0
}

/// Built-in: agents may not set the agent label (`user.governance.*`) anywhere: relabelling its
/// own cgroup would change which policy governs it, or make it no agent at all. Nor an ACL or
/// file capabilities where a chmod is refused (see `xattr_changed`).
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    // int inode_setxattr(struct user_namespace *mnt_userns, struct dentry *dentry,
    //                    const char *name, const void *value, size_t size, int flags)
    let previous: i32 = ctx.arg(6);
    if previous != 0 {
        return previous;
    }
    xattr_changed(Btf::arg(&ctx, 1), ctx.arg(2))
}

/// An ACL set through the ACL interface, which Linux 6.2 and later use for ACLs instead of
/// `inode_setxattr` (`vfs_set_acl`). Attached where the kernel has the hook.
#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    // int inode_set_acl(struct mnt_idmap *idmap, struct dentry *dentry,
    //                   const char *acl_name, struct posix_acl *kacl)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    crate::identity::mode_changed(Btf::arg(&ctx, 1))
}

/// An ACL removed through the ACL interface (Linux 6.2 and later), likewise.
#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    // int inode_remove_acl(struct mnt_idmap *idmap, struct dentry *dentry,
    //                      const char *acl_name)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    crate::identity::mode_changed(Btf::arg(&ctx, 1))
}

/// Built-in: nor remove it (nor an ACL or file capabilities where a chmod is refused).
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    // int inode_removexattr(struct user_namespace *mnt_userns, struct dentry *dentry,
    //                       const char *name)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    xattr_changed(Btf::arg(&ctx, 1), ctx.arg(2))
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
fn same<const N: usize>(name: &[u8; N], t: &[u8]) -> bool {
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
/// does not know yet needs a module, which agents may not load either. A key allowed is
/// recorded as its agent's (keys.rs).
#[lsm(hook = "key_alloc")]
pub fn key_alloc(ctx: LsmContext) -> i32 {
    // int key_alloc(struct key *key, const struct cred *cred, unsigned long flags)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let key: u64 = ctx.arg(0);
    // Most keys are made outside agents: the agent lookup first.
    let Some(agent) = current_agent() else {
        crate::keys::made_outside(key);
        return 0;
    };
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
        // Who made it: agents reach only their own keys (keys.rs).
        crate::keys::made(&agent, key, ctx.arg(2))
    } else {
        refuse_for(&agent, guard::KEY_UPCALL, 0)
    }
}

/// `inode_permission`'s mask bit of an open (`MAY_OPEN`): opens are decided by `file_open`.
const MAY_OPEN: i32 = 0x20;

/// Built-in write permissions for agents, on the two filesystems where a write acts on
/// something outside the agent that no other hook sees:
///
/// - cgroup2, asked other than by an open ([`cgroup_border`]; opens of the cgroup tree are
///   `file_open`'s, whose built-in rules refuse them);
/// - procfs: a `/proc/PID/` file of a process outside the agent
///   ([`crate::protect::proc_owner_out_of_reach`]), and the kernel's settings, /proc/sys
///   included ([`kernel_proc_file`]);
/// - sysfs, all of it ([`kernel_sysfs_file`]).
///
/// Every other permission check passes at once, before the agent lookup: this hook runs for
/// every permission check of the node, each component of a path walk included.
#[lsm(hook = "inode_permission")]
pub fn inode_permission(ctx: LsmContext) -> i32 {
    // int inode_permission(struct inode *inode, int mask)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    let inode = Btf::arg(&ctx, 0);
    // (A refusal only: a mapped file of cgroup2 or procfs still meets their checks below.)
    if mapped_code(inode) {
        let ret = mapped_code_written();
        if ret != 0 {
            return ret;
        }
    }
    let magic = match inode.ptr(off(&OFF_INODE_SB)) {
        Ok(sb) => sb.get::<u64>(off(&OFF_SB_MAGIC)),
        Err(_) => return 0,
    };
    match magic {
        CGROUP2_SUPER_MAGIC if mask & MAY_OPEN == 0 => cgroup_border(inode),
        PROC_SUPER_MAGIC => proc_of_outside(inode),
        SYSFS_MAGIC => kernel_sysfs_file(),
        _ => 0,
    }
}

/// Is `inode` a regular file some process maps, with no shared writable mapping (a library or
/// a program it runs)? Typed loads, no agent lookup: asked of every write permission of the
/// node, and true for few.
#[inline(always)]
fn mapped_code(inode: Btf) -> bool {
    if inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT != S_IFREG {
        return false;
    }
    let Ok(mapping) = inode.ptr(off(&OFF_INODE_MAPPING)) else {
        return false;
    };
    let root: u64 = mapping.get(off(&OFF_MAPPING_I_MMAP));
    let writable: i32 = mapping.get(off(&OFF_MAPPING_I_MMAP_WRITABLE));
    root != 0 && writable <= 0
}

/// A write (an open for writing, `truncate(2)`) of a file a process maps as code: refused to an
/// agent under an exec allowlist. Its written files never run there (mapping.rs refuses mapping
/// them), so a file mapped already is not written either: a private mapping reads the page
/// cache until a page is copied, so writing a library a process runs changes the code it runs
/// (red team round 15: mapped by an allowed program with `LD_PRELOAD`, then written). Shared
/// writable mappings (a database's, SQLite's `-shm`) are data, and pass. (Here, not in
/// file_open: a branch there doubled the verifier's work on it, past half its budget on 6.1.)
#[inline(always)]
fn mapped_code_written() -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    if !agent.exec_allowlist() {
        return 0;
    }
    refuse_for(&agent, guard::MAPPED_CODE, 0)
}

/// Is procfs inode `inode` a file of no process (`PROC_I(inode)->pid` NULL): a sysctl, or one
/// of the settings procfs keeps beside them? True if unreadable (refused: fail closed). Decided
/// by the object, on every procfs: a procfs of the agent's own (a new PID namespace's, mounted
/// with fsopen and never attached, or another one on the node such as a build chroot's) has the
/// node's sysctls under names no path rule holds (red team round 27: `core_pattern` written
/// through one).
#[inline(always)]
fn kernel_proc_file(inode: u64) -> bool {
    let proc_inode = inode.wrapping_sub(off(&OFF_PROC_INODE_VFS_INODE));
    // SAFETY: see read_at.
    let pid = unsafe { read_at::<u64>(proc_inode, off(&OFF_PROC_INODE_PID)) };
    !matches!(pid, Ok(p) if p != 0)
}

/// No write for agents to sysfs (the kernel's and devices' settings: power states, device
/// bindings, firmware), unless a policy allows kernel settings; on every sysfs, for the same
/// reason as [`kernel_proc_file`] (a network namespace's own sysfs shows the node's power
/// state). cgroup2 and the filesystems mounted below /sys are not sysfs.
#[inline(always)]
fn kernel_sysfs_file() -> i32 {
    match current_agent() {
        Some(agent) if agent.value.allow & allow::KERNEL_SETTINGS == 0 => {
            refuse_for(&agent, guard::KERNEL_PROC, 0)
        }
        _ => 0,
    }
}

/// No write permission for agents on a cgroup outside their subtree. Moving a process checks
/// write permission on the `cgroup.procs` of the common ancestor of its old and new cgroups
/// (`cgroup_procs_write_permission`), and nothing else an LSM sees: an agent writing the pid of
/// a process from outside into a `cgroup.procs` it owns would pull that process in (then take
/// its descriptors through `pidfd_getfd`, or freeze the daemon with `cgroup.freeze`, which no
/// signal hook sees). That ancestor is outside the agent, so the move is refused; a move within
/// the agent's subtree has its ancestor inside and passes. The same check refuses making,
/// removing or renaming cgroups outside (the parent directory's write permission).
#[inline(always)]
fn cgroup_border(inode: Btf) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    // The cgroup: a directory's kernfs node holds it; a file's, its directory's. `i_private`
    // is a `void *` to the verifier, so the nodes are read with `read_at`.
    let dir = inode.get::<u16>(off(&OFF_INODE_MODE)) & S_IFMT == S_IFDIR;
    let kn: u64 = inode.get(off(&OFF_INODE_PRIVATE));
    // SAFETY: see read_at.
    let (cgrp, id) = unsafe {
        let node = if dir {
            Ok(kn)
        } else {
            read_at::<u64>(kn, off(&OFF_KERNFS_NODE_PARENT))
        };
        let cgrp = node.and_then(|n| read_at::<u64>(n, off(&OFF_KERNFS_NODE_PRIV)));
        let id = node.and_then(|n| read_at::<u64>(n, off(&OFF_KERNFS_NODE_ID)));
        (cgrp.unwrap_or(0), id.unwrap_or(0))
    };
    // Unreadable: outside (fail closed).
    if cgrp != 0 && cgroup_in_subtree(&agent, cgrp) {
        return 0;
    }
    refuse_for(&agent, guard::CGROUP_BORDER, id)
}

/// A name's beginning, as the two little-endian words of its first 16 bytes hold it, and the
/// bits of each word it covers.
#[derive(Clone, Copy)]
struct Prefix {
    lo: u64,
    lo_mask: u64,
    hi: u64,
    hi_mask: u64,
}

impl Prefix {
    /// `p` (at most 16 bytes), at compile time.
    const fn of(p: &[u8]) -> Self {
        let mut words = [0u64; 2];
        let mut masks = [0u64; 2];
        let mut i = 0;
        while i < p.len() {
            words[i / 8] |= (p[i] as u64) << (8 * (i % 8));
            masks[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        Self {
            lo: words[0],
            lo_mask: masks[0],
            hi: words[1],
            hi_mask: masks[1],
        }
    }

    #[inline(always)]
    fn starts(self, lo: u64, hi: u64) -> bool {
        lo & self.lo_mask == self.lo && hi & self.hi_mask == self.hi
    }
}

/// Does the name whose first 16 bytes are `lo`, `hi` (zeros past its end) begin like one of
/// cgroup2's interface files: `<subsystem>.` (the names of include/linux/cgroup_subsys.h,
/// v1-only ones included) or a core file's, `cgroup.` and the pressure files' (`cpu.`, `io.`,
/// `memory.`, `irq.`)? With `cgroup_debug`, a subsystem's debug files begin `.__DEBUG__.`.
/// One masked comparison each, written out: a table of the names (slices) made a loop whose
/// pointers into .rodata the verifier could not follow.
#[inline(always)]
fn interface_file_name(lo: u64, hi: u64) -> bool {
    macro_rules! any {
        ($($p:literal),*) => { false $(|| const { Prefix::of($p) }.starts(lo, hi))* };
    }
    any!(
        b"cgroup.",
        b"cpu.",
        b"cpuset.",
        b"cpuacct.",
        b"io.",
        b"irq.",
        b"memory.",
        b"devices.",
        b"freezer.",
        b"net_cls.",
        b"net_prio.",
        b"perf_event.",
        b"hugetlb.",
        b"pids.",
        b"rdma.",
        b"misc.",
        b"dmem.",
        b"debug.",
        b".__DEBUG__."
    )
}

/// Built-in: no cgroup of an agent's named like an interface file (`memory.max`, `pids.x`,
/// `cgroup.y`; red team round 36), from `inode_mkdir` with the directory it is made in. The
/// kernel adds a controller's files to every child when the operator enables it in the
/// parent's `cgroup.subtree_control`; a child cgroup already holding one of their names makes
/// that write fail (EEXIST), for every child of the parent: sibling agents go without the
/// limits. Only a name's beginning up to its first dot is asked: systemd's `foo.service`,
/// `user.slice`, `docker-ID.scope` pass, as do `memory` and `memoryx.y`. Asked of cgroup2 only
/// (its superblock first, before the agent lookup); a name that cannot be read is refused
/// (fail closed). In a frame of its own: inlined, it took inode_mkdir's frame (with its agent
/// and the name) past the 512 bytes of BPF's stack.
#[inline(never)]
pub(crate) fn cgroup_name(dir: Btf, dentry: Btf) -> i32 {
    match dir.ptr(off(&OFF_INODE_SB)) {
        Ok(sb) if sb.get::<u64>(off(&OFF_SB_MAGIC)) == CGROUP2_SUPER_MAGIC => {}
        _ => return 0,
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    // Zeroed: past a shorter name's end, zeros, which no prefix's dot matches. A longer name
    // is cut, which is all the prefixes need.
    let mut name = [0u8; 16];
    let at: u64 = dentry.get(off(&OFF_DENTRY_NAME) + off(&OFF_QSTR_NAME));
    // SAFETY: the copy is bounded by the buffer; the helper validates the source address.
    let read = unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, &mut name) }.is_ok();
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = name;
    let lo = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
    let hi = u64::from_le_bytes([i, j, k, l, m, n, o, p]);
    if read && !interface_file_name(lo, hi) {
        return 0;
    }
    // The parent cgroup's id: its directory's kernfs node (`i_private`, a `void *`).
    let kn: u64 = dir.get(off(&OFF_INODE_PRIVATE));
    // SAFETY: see read_at.
    let id = unsafe { read_at::<u64>(kn, off(&OFF_KERNFS_NODE_ID)) }.unwrap_or(0);
    refuse_for(&agent, guard::CGROUP_NAME, id)
}

/// No write for agents to a `/proc/PID/` file of a process outside their subtree (or, for a
/// sandboxed process, outside its sandbox), opens included: procfs guards some of those files
/// with a ptrace check (`mem`, `attr`), which `ptrace_access_check` refuses, but not all
/// (`oom_score_adj`, `make-it-fail`, `clear_refs`, `coredump_filter`, `sched_autogroup`).
/// The procfs files that belong to no process are the kernel's and the devices' settings
/// (/proc/sys, `/proc/sysrq-trigger`, `/proc/bus/pci`, `/proc/irq`, ...): refused here, unless a
/// policy allows kernel settings ([`kernel_proc_file`]); `file_open`'s built-in rules refuse
/// the node's /proc/sys by path as well.
#[inline(always)]
fn proc_of_outside(inode: Btf) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    if agent.value.allow & allow::KERNEL_SETTINGS == 0 && kernel_proc_file(inode.addr()) {
        return refuse_for(&agent, guard::KERNEL_PROC, 0);
    }
    if let Some(tgid) = proc_owner_out_of_reach(&agent, inode.addr()) {
        return refuse_for(&agent, guard::PROC_OF_OUTSIDE, u64::from(tgid));
    }
    // A process's memory (`/proc/PID/mem`, the one file of a process's directory with mode
    // 0600) under an exec allowlist: its writes reach read-only text, so a shell writes a
    // loader into itself and runs any program (DDexec; red team round 16). Its own process's
    // never reaches `ptrace_access_check` (the kernel lets a process introspect itself before
    // asking a security module).
    if inode.get::<u16>(off(&OFF_INODE_MODE)) == S_IFREG | 0o600 && agent.exec_allowlist() {
        return refuse_for(&agent, guard::PROC_MEM, 0);
    }
    0
}
