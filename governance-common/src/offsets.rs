pub const BPRM_FILE: &str = "OFF_BPRM_FILE";
pub const BPRM_FILENAME: &str = "OFF_BPRM_FILENAME";
pub const FILE_INODE: &str = "OFF_FILE_INODE";
pub const FILE_PATH: &str = "OFF_FILE_PATH";
pub const FILE_MODE: &str = "OFF_FILE_MODE";
pub const FILE_FLAGS: &str = "OFF_FILE_FLAGS";
/// `file.f_owner`: the `struct fown_struct` that `file_send_sigiotask` is given is this field
/// of its file (embedded in `struct file` up to Linux 6.11).
pub const FILE_F_OWNER: &str = "OFF_FILE_F_OWNER";
/// 1 when `file.f_owner` is the `struct fown_struct` itself (up to Linux 6.11), so that
/// `file_send_sigiotask` can tell the file from its `fown`; 0 when it is a pointer (6.12 on),
/// and agents may then not arm files for SIGIO at all (sigio.rs: fail closed).
pub const FILE_F_OWNER_EMBEDDED: &str = "FILE_F_OWNER_EMBEDDED";
/// Where `file.f_owner` is a pointer (6.12 on): the offset of `fown_struct.file`, the owner's
/// pointer back to its file, or [`NO_FIELD`] where the kernel has none.
pub const FOWN_FILE: &str = "OFF_FOWN_FILE";
/// The value of an offset whose field this kernel does not have.
pub const NO_FIELD: u64 = u64::MAX;
pub const INODE_INO: &str = "OFF_INODE_INO";
pub const INODE_SB: &str = "OFF_INODE_SB";
pub const SB_DEV: &str = "OFF_SB_DEV";
pub const SB_MAGIC: &str = "OFF_SB_MAGIC";
pub const TASK_TGID: &str = "OFF_TASK_TGID";
pub const TASK_REAL_PARENT: &str = "OFF_TASK_REAL_PARENT";
pub const TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
pub const TASK_REAL_CRED: &str = "OFF_TASK_REAL_CRED";
/// `task_struct.cred`: the credentials the task acts with (what the kernel's permission
/// checks read), and in them the filesystem uid and two capability sets (mapping.rs).
pub const TASK_CRED: &str = "OFF_TASK_CRED";
pub const CRED_UID: &str = "OFF_CRED_UID";
pub const CRED_EUID: &str = "OFF_CRED_EUID";
pub const CRED_SUID: &str = "OFF_CRED_SUID";
pub const CRED_FSUID: &str = "OFF_CRED_FSUID";
pub const CRED_CAP_EFFECTIVE: &str = "OFF_CRED_CAP_EFFECTIVE";
pub const CRED_CAP_PERMITTED: &str = "OFF_CRED_CAP_PERMITTED";
/// `task_struct.flags`: `PF_IO_WORKER` (an io_uring worker thread; caps.rs).
pub const TASK_FLAGS: &str = "OFF_TASK_FLAGS";
/// `task_struct.io_uring`: the task's io_uring context, set once it has submitted to a ring
/// (caps.rs), or [`NO_FIELD`] where the kernel is built without io_uring.
pub const TASK_IO_URING: &str = "OFF_TASK_IO_URING";
pub const TASK_MM: &str = "OFF_TASK_MM";
pub const MM_EXE_FILE: &str = "OFF_MM_EXE_FILE";
pub const CRED_USER_NS: &str = "OFF_CRED_USER_NS";
pub const USERNS_LEVEL: &str = "OFF_USERNS_LEVEL";
pub const SB_FLAGS: &str = "OFF_SB_FLAGS";
pub const INODE_MODE: &str = "OFF_INODE_MODE";
pub const INODE_RDEV: &str = "OFF_INODE_RDEV";
pub const INODE_NLINK: &str = "OFF_INODE_NLINK";
/// `inode.i_uid`: the owner (a `kuid_t`, the uid in the initial user namespace).
pub const INODE_UID: &str = "OFF_INODE_UID";
/// `inode.i_mapping`, and its `address_space`'s mappings (`i_mmap`, an interval tree whose
/// first word is its root node: NULL when nothing maps the file) and count of shared writable
/// ones (`i_mmap_writable`).
pub const INODE_MAPPING: &str = "OFF_INODE_MAPPING";
pub const MAPPING_I_MMAP: &str = "OFF_MAPPING_I_MMAP";
pub const MAPPING_I_MMAP_WRITABLE: &str = "OFF_MAPPING_I_MMAP_WRITABLE";
pub const VMA_FILE: &str = "OFF_VMA_FILE";
pub const VMA_FLAGS: &str = "OFF_VMA_FLAGS";
pub const CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
pub const CGROUP_LEVEL: &str = "OFF_CGROUP_LEVEL";
pub const CGROUP_ANCESTORS: &str = "OFF_CGROUP_ANCESTORS";
pub const CGROUP_KN: &str = "OFF_CGROUP_KN";
pub const KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
pub const SOCKET_SK: &str = "OFF_SOCKET_SK";
pub const UNIX_SOCK_ADDR: &str = "OFF_UNIX_SOCK_ADDR";
pub const UNIX_SOCK_PATH: &str = "OFF_UNIX_SOCK_PATH";
pub const PATH_DENTRY: &str = "OFF_PATH_DENTRY";
pub const DENTRY_INODE: &str = "OFF_DENTRY_INODE";
pub const UNIX_ADDRESS_LEN: &str = "OFF_UNIX_ADDRESS_LEN";
pub const UNIX_ADDRESS_NAME: &str = "OFF_UNIX_ADDRESS_NAME";

pub const PROC_INODE_PID: &str = "OFF_PROC_INODE_PID";
pub const PROC_INODE_VFS_INODE: &str = "OFF_PROC_INODE_VFS_INODE";
pub const PID_TASKS: &str = "OFF_PID_TASKS";
pub const TASK_PID_LINKS: &str = "OFF_TASK_PID_LINKS";
pub const DENTRY_PARENT: &str = "OFF_DENTRY_PARENT";
pub const DENTRY_SB: &str = "OFF_DENTRY_SB";
pub const DENTRY_FLAGS: &str = "OFF_DENTRY_FLAGS";
pub const DENTRY_NAME: &str = "OFF_DENTRY_NAME";
pub const QSTR_NAME: &str = "OFF_QSTR_NAME";
pub const SB_ROOT: &str = "OFF_SB_ROOT";
pub const KEY_TYPE: &str = "OFF_KEY_TYPE";
pub const KEY_TYPE_NAME: &str = "OFF_KEY_TYPE_NAME";
/// `key.serial`: the key's number, for events.
pub const KEY_SERIAL: &str = "OFF_KEY_SERIAL";
/// `key.flags`: whether the key counts against a user's quota (`KEY_FLAG_IN_QUOTA`).
pub const KEY_FLAGS: &str = "OFF_KEY_FLAGS";
pub const TASK_GROUP_LEADER: &str = "OFF_TASK_GROUP_LEADER";
/// `task_struct.start_time`: when the task started (CLOCK_MONOTONIC ns; caps.rs).
pub const TASK_START_TIME: &str = "OFF_TASK_START_TIME";
pub const TASK_THREAD_PID: &str = "OFF_TASK_THREAD_PID";
pub const PID_LEVEL: &str = "OFF_PID_LEVEL";
pub const PID_NUMBERS: &str = "OFF_PID_NUMBERS";
pub const UPID_NR: &str = "OFF_UPID_NR";
pub const TASK_SIGNAL: &str = "OFF_TASK_SIGNAL";
/// `signal_struct.live` (an `atomic_t`): the thread group's threads that have not exited.
pub const SIGNAL_LIVE: &str = "OFF_SIGNAL_LIVE";
/// Where a btrfs inode's subvolume device is (`BTRFS_I(inode)->root->anon_dev`, what `stat`
/// reports): offsets in the btrfs module's types (`/sys/kernel/btf/btrfs`, or the kernel's where
/// btrfs is built in), 0 where btrfs's types were not there when the programs were loaded (see
/// governance-ebpf subvolume.rs). Not in [`ALL`]: a kernel may have no btrfs.
pub const BTRFS_INODE_VFS_INODE: &str = "OFF_BTRFS_INODE_VFS_INODE";
pub const BTRFS_INODE_ROOT: &str = "OFF_BTRFS_INODE_ROOT";
pub const BTRFS_ROOT_ANON_DEV: &str = "OFF_BTRFS_ROOT_ANON_DEV";
/// `mm_struct.mm_users` (an `atomic_t`): the tasks using the memory (every thread of every
/// process sharing it, and passing references); mapping.rs.
pub const MM_USERS: &str = "OFF_MM_USERS";
/// `signal_struct.tty`: the thread group's controlling terminal.
pub const SIGNAL_TTY: &str = "OFF_SIGNAL_TTY";
/// `dentry.d_fsdata`: on devpts, a pty slave's `struct tty_struct`.
pub const DENTRY_FSDATA: &str = "OFF_DENTRY_FSDATA";
/// `tty_struct.session`: the `struct pid` of the session the terminal is the controlling
/// terminal of, NULL if none.
pub const TTY_SESSION: &str = "OFF_TTY_SESSION";
/// What decides whether a terminal access makes the kernel stop the caller's own process group
/// (governance-ebpf jobctl.rs): a tty file's `private_data` (a `struct tty_file_private`, whose
/// `tty` is the terminal), the terminal's foreground group (`ctrl.pgrp`, directly in the struct
/// before Linux 5.13), its pty pair (`link`), its local modes (`termios.c_lflag`, `TOSTOP`);
/// the caller's process group and session (`signal_struct.pids[]`).
pub const FILE_PRIVATE_DATA: &str = "OFF_FILE_PRIVATE_DATA";
pub const TTY_FILE_PRIVATE_TTY: &str = "OFF_TTY_FILE_PRIVATE_TTY";
pub const TTY_PGRP: &str = "OFF_TTY_PGRP";
pub const TTY_LINK: &str = "OFF_TTY_LINK";
pub const TTY_LFLAG: &str = "OFF_TTY_LFLAG";
pub const SIGNAL_PIDS: &str = "OFF_SIGNAL_PIDS";
pub const SOCKET_TYPE: &str = "OFF_SOCKET_TYPE";
pub const SOCK_FAMILY: &str = "OFF_SOCK_FAMILY";
pub const SOCK_DADDR: &str = "OFF_SOCK_DADDR";
pub const SOCK_V6_DADDR: &str = "OFF_SOCK_V6_DADDR";
pub const SOCK_DPORT: &str = "OFF_SOCK_DPORT";
pub const SOCK_PROTOCOL: &str = "OFF_SOCK_PROTOCOL";
pub const UNIX_SOCK_PEER: &str = "OFF_UNIX_SOCK_PEER";
pub const MSGHDR_CONTROL: &str = "OFF_MSGHDR_CONTROL";
pub const MSGHDR_CONTROLLEN: &str = "OFF_MSGHDR_CONTROLLEN";
pub const INODE_PRIVATE: &str = "OFF_INODE_PRIVATE";
pub const KERNFS_NODE_PARENT: &str = "OFF_KERNFS_NODE_PARENT";
pub const KERNFS_NODE_PRIV: &str = "OFF_KERNFS_NODE_PRIV";
/// Where a task's root is, and whether a file is named from it (file.rs `path_in_view`): the
/// task's `fs_struct` root (`struct path`: its mount and dentry), its mount namespace and that
/// namespace's top mount, and a `struct mount`'s parent, namespace and embedded `vfsmount`.
pub const TASK_FS: &str = "OFF_TASK_FS";
pub const FS_STRUCT_ROOT: &str = "OFF_FS_STRUCT_ROOT";
pub const PATH_MNT: &str = "OFF_PATH_MNT";
pub const TASK_NSPROXY: &str = "OFF_TASK_NSPROXY";
pub const NSPROXY_MNT_NS: &str = "OFF_NSPROXY_MNT_NS";
pub const MNT_NAMESPACE_ROOT: &str = "OFF_MNT_NAMESPACE_ROOT";
pub const MOUNT_MNT: &str = "OFF_MOUNT_MNT";
pub const MOUNT_MNT_PARENT: &str = "OFF_MOUNT_MNT_PARENT";
pub const MOUNT_MNT_NS: &str = "OFF_MOUNT_MNT_NS";
pub const VFSMOUNT_MNT_ROOT: &str = "OFF_VFSMOUNT_MNT_ROOT";
/// `fs_struct.seq`: its sequence count (the first word, whether a `seqcount_spinlock_t` or a
/// `seqlock_t`), which a change of root (`chroot`, `pivot_root`) advances.
pub const FS_STRUCT_SEQ: &str = "OFF_FS_STRUCT_SEQ";
pub const MOUNT_MNT_MOUNTPOINT: &str = "OFF_MOUNT_MNT_MOUNTPOINT";
/// `sizeof(struct upid)`: the stride of `pid.numbers[]`.
pub const UPID_SIZE: &str = "SIZE_UPID";

/// Every struct size: (global name, struct).
pub const SIZES: [(&str, &str); 1] = [(UPID_SIZE, "upid")];

/// Every offset: (global name, struct, field).
pub const ALL: [(&str, &str, &str); 105] = [
    (BPRM_FILE, "linux_binprm", "file"),
    (BPRM_FILENAME, "linux_binprm", "filename"),
    (FILE_INODE, "file", "f_inode"),
    (FILE_PATH, "file", "f_path"),
    (FILE_MODE, "file", "f_mode"),
    (FILE_FLAGS, "file", "f_flags"),
    (FILE_F_OWNER, "file", "f_owner"),
    (INODE_INO, "inode", "i_ino"),
    (INODE_SB, "inode", "i_sb"),
    (SB_DEV, "super_block", "s_dev"),
    (SB_MAGIC, "super_block", "s_magic"),
    (TASK_TGID, "task_struct", "tgid"),
    (TASK_REAL_PARENT, "task_struct", "real_parent"),
    (TASK_CGROUPS, "task_struct", "cgroups"),
    (TASK_REAL_CRED, "task_struct", "real_cred"),
    (TASK_CRED, "task_struct", "cred"),
    (CRED_UID, "cred", "uid"),
    (CRED_EUID, "cred", "euid"),
    (CRED_SUID, "cred", "suid"),
    (CRED_FSUID, "cred", "fsuid"),
    (CRED_CAP_EFFECTIVE, "cred", "cap_effective"),
    (CRED_CAP_PERMITTED, "cred", "cap_permitted"),
    (TASK_FLAGS, "task_struct", "flags"),
    (TASK_MM, "task_struct", "mm"),
    (MM_EXE_FILE, "mm_struct", "exe_file"),
    (CRED_USER_NS, "cred", "user_ns"),
    (USERNS_LEVEL, "user_namespace", "level"),
    (SB_FLAGS, "super_block", "s_flags"),
    (INODE_MODE, "inode", "i_mode"),
    (INODE_RDEV, "inode", "i_rdev"),
    (INODE_NLINK, "inode", "i_nlink"),
    (INODE_UID, "inode", "i_uid"),
    (INODE_MAPPING, "inode", "i_mapping"),
    (MAPPING_I_MMAP, "address_space", "i_mmap"),
    (MAPPING_I_MMAP_WRITABLE, "address_space", "i_mmap_writable"),
    (VMA_FILE, "vm_area_struct", "vm_file"),
    (VMA_FLAGS, "vm_area_struct", "vm_flags"),
    (CSS_SET_DFL_CGRP, "css_set", "dfl_cgrp"),
    (CGROUP_LEVEL, "cgroup", "level"),
    (CGROUP_ANCESTORS, "cgroup", "ancestors"),
    (CGROUP_KN, "cgroup", "kn"),
    (KERNFS_NODE_ID, "kernfs_node", "id"),
    (SOCKET_SK, "socket", "sk"),
    (UNIX_SOCK_ADDR, "unix_sock", "addr"),
    (UNIX_SOCK_PATH, "unix_sock", "path"),
    (PATH_DENTRY, "path", "dentry"),
    (DENTRY_INODE, "dentry", "d_inode"),
    (UNIX_ADDRESS_LEN, "unix_address", "len"),
    (UNIX_ADDRESS_NAME, "unix_address", "name"),
    (DENTRY_PARENT, "dentry", "d_parent"),
    (DENTRY_SB, "dentry", "d_sb"),
    (DENTRY_FLAGS, "dentry", "d_flags"),
    (DENTRY_NAME, "dentry", "d_name"),
    (QSTR_NAME, "qstr", "name"),
    (SB_ROOT, "super_block", "s_root"),
    (KEY_TYPE, "key", "type"),
    (KEY_TYPE_NAME, "key_type", "name"),
    (KEY_SERIAL, "key", "serial"),
    (KEY_FLAGS, "key", "flags"),
    (TASK_GROUP_LEADER, "task_struct", "group_leader"),
    (TASK_START_TIME, "task_struct", "start_time"),
    (TASK_THREAD_PID, "task_struct", "thread_pid"),
    (PID_LEVEL, "pid", "level"),
    (PID_NUMBERS, "pid", "numbers"),
    (UPID_NR, "upid", "nr"),
    (TASK_SIGNAL, "task_struct", "signal"),
    (SIGNAL_LIVE, "signal_struct", "live"),
    (MM_USERS, "mm_struct", "mm_users"),
    (SIGNAL_TTY, "signal_struct", "tty"),
    (DENTRY_FSDATA, "dentry", "d_fsdata"),
    // In `ctrl` since Linux 5.13 (directly in the struct before).
    (TTY_SESSION, "tty_struct", "ctrl.session|session"),
    (FILE_PRIVATE_DATA, "file", "private_data"),
    (TTY_FILE_PRIVATE_TTY, "tty_file_private", "tty"),
    (TTY_PGRP, "tty_struct", "ctrl.pgrp|pgrp"),
    (TTY_LINK, "tty_struct", "link"),
    (TTY_LFLAG, "tty_struct", "termios.c_lflag"),
    (SIGNAL_PIDS, "signal_struct", "pids"),
    (SOCKET_TYPE, "socket", "type"),
    // `struct sock` begins with its `sock_common` (`__sk_common`): these are offsets in both.
    (SOCK_FAMILY, "sock_common", "skc_family"),
    (SOCK_DADDR, "sock_common", "skc_daddr"),
    (SOCK_V6_DADDR, "sock_common", "skc_v6_daddr"),
    (SOCK_DPORT, "sock_common", "skc_dport"),
    (SOCK_PROTOCOL, "sock", "sk_protocol"),
    (UNIX_SOCK_PEER, "unix_sock", "peer"),
    (MSGHDR_CONTROL, "msghdr", "msg_control"),
    (MSGHDR_CONTROLLEN, "msghdr", "msg_controllen"),
    // A kernfs inode's node (cgroup2 files and directories), its directory, and a directory's
    // cgroup.
    (INODE_PRIVATE, "inode", "i_private"),
    (KERNFS_NODE_PARENT, "kernfs_node", "parent|__parent"),
    (KERNFS_NODE_PRIV, "kernfs_node", "priv"),
    // A procfs inode's process: `PROC_I(inode)->pid`, then `pid_task(pid, PIDTYPE_PID)`
    // (`pid->tasks[PIDTYPE_PID].first`, a task's `pid_links[PIDTYPE_PID]`; PIDTYPE_PID is 0).
    (PROC_INODE_PID, "proc_inode", "pid"),
    (PROC_INODE_VFS_INODE, "proc_inode", "vfs_inode"),
    (PID_TASKS, "pid", "tasks"),
    (TASK_PID_LINKS, "task_struct", "pid_links"),
    (TASK_FS, "task_struct", "fs"),
    (FS_STRUCT_ROOT, "fs_struct", "root"),
    (PATH_MNT, "path", "mnt"),
    (TASK_NSPROXY, "task_struct", "nsproxy"),
    (NSPROXY_MNT_NS, "nsproxy", "mnt_ns"),
    (MNT_NAMESPACE_ROOT, "mnt_namespace", "root"),
    (MOUNT_MNT, "mount", "mnt"),
    (MOUNT_MNT_PARENT, "mount", "mnt_parent"),
    (MOUNT_MNT_NS, "mount", "mnt_ns"),
    (VFSMOUNT_MNT_ROOT, "vfsmount", "mnt_root"),
    (FS_STRUCT_SEQ, "fs_struct", "seq"),
    (MOUNT_MNT_MOUNTPOINT, "mount", "mnt_mountpoint"),
];
