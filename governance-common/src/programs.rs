/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// BPF LSM hook of this name.
    Lsm(&'static str),
    /// cgroup socket-address hook at the cgroup2 root.
    SockAddr(&'static str),
    /// raw tracepoint of this name.
    RawTracepoint(&'static str),
    /// sock_ops at the cgroup2 root.
    SockOps,
    /// cgroup_skb/egress at the cgroup2 root.
    SkbEgress,
    /// cgroup/sock_create (a cgroup_sock program) at the cgroup2 root.
    SockCreate,
    /// cgroup/setsockopt (a cgroup_sockopt program) at the cgroup2 root.
    SetSockopt,
}

/// A program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub attach: Attach,
    /// What it enforces, for operators.
    pub what: &'static str,
    /// Part of full enforcement (as opposed to the degraded fallback).
    pub required: bool,
}

const fn lsm(name: &'static str, what: &'static str) -> Program {
    Program {
        name,
        attach: Attach::Lsm(name),
        what,
        required: true,
    }
}
const fn sock(name: &'static str, what: &'static str) -> Program {
    Program {
        name,
        attach: Attach::SockAddr(name),
        what,
        required: true,
    }
}

pub const EXEC: Program = lsm("bprm_check_security", "exec");
pub const FILE: Program = lsm("file_open", "file open, POSIX message queues of others");
pub const SOCKET_CREATE: Program = lsm("socket_create", "raw/packet/netlink sockets");
pub const USERNS: Program = lsm("userns_create", "new user namespaces");
pub const BPF: Program = lsm("bpf", "bpf() syscall");
pub const TASK_KILL: Program = lsm("task_kill", "signals outside the agent");
pub const PTRACE: Program = lsm(
    "ptrace_access_check",
    "ptrace and /proc access outside the agent",
);
pub const TRACEME: Program = lsm("ptrace_traceme", "PTRACE_TRACEME under an exec allowlist");
pub const UNLINK: Program = lsm(
    "inode_unlink",
    "removing pins, POSIX message queues of others",
);
/// A second program on `inode_unlink`: named for what it guards.
pub const UNLINK_PROTECTED: Program = Program {
    name: "unlink_protected",
    attach: Attach::Lsm("inode_unlink"),
    what: "removing files the identity rules protect",
    required: true,
};
pub const TRUNCATE: Program = lsm("path_truncate", "truncate(2) of protected files");
pub const SETRLIMIT: Program = lsm("task_setrlimit", "rlimits of processes outside the agent");
pub const SETNICE: Program = lsm("task_setnice", "priority of processes outside the agent");
pub const SETIOPRIO: Program = lsm(
    "task_setioprio",
    "I/O priority of processes outside the agent",
);
pub const SETSCHEDULER: Program = lsm(
    "task_setscheduler",
    "scheduling of processes outside the agent",
);
pub const SETPGID: Program = lsm(
    "task_setpgid",
    "process groups joined in a terminal session led outside the agent",
);
pub const MOVEMEMORY: Program = lsm(
    "task_movememory",
    "memory placement of processes outside the agent",
);
pub const MODULE_REQUEST: Program = lsm("kernel_module_request", "module autoloading");
pub const KEY_ALLOC: Program = lsm(
    "key_alloc",
    "keys whose construction runs a program; who made each key",
);
pub const KEY_PERMISSION: Program = lsm("key_permission", "keys and keyrings of others");
/// Forgets a freed key. Linux 6.10 and later have no such hook (the LSM framework frees the
/// key's blob itself): there a key's record stays until another key is made at its address
/// (`key_alloc` writes or removes the record of every key made), so no key is taken for
/// another; the table fills only with keys agents made, and a full table refuses the next
/// (fail closed). See [`WHERE_PRESENT`].
pub const KEY_FREE: Program =
    where_present("key_free", "keys and keyrings of others (bookkeeping)");
/// Records who made each POSIX message queue (the hook where a new queue's inode is known).
pub const MQUEUE_MADE: Program = lsm("d_instantiate", "POSIX message queue owners");
pub const SETSOCKOPT: Program = lsm("socket_setsockopt", "source routes");
pub const CGROUP_BORDER: Program = lsm(
    "inode_permission",
    "processes moved into the agent, cgroups outside it, /proc files of processes outside",
);
pub const IOCTL: Program = lsm("file_ioctl", "terminal input injection, signal ownership");
pub const FILE_RECEIVE: Program = lsm(
    "file_receive",
    "io_uring rings passed into the agent (SCM_RIGHTS, pidfd_getfd, seccomp ADDFD)",
);
/// The 32-bit ioctl entry's hook (Linux 6.8, and the stable kernels it was backported to:
/// 6.1.75, 6.6.14, ...); before it, 32-bit ioctls reach `file_ioctl`. See [`WHERE_PRESENT`].
pub const IOCTL_COMPAT: Program = where_present(
    "file_ioctl_compat",
    "terminal input injection, signal ownership (32-bit ioctl)",
);
/// ACLs set and removed through the ACL interface, which Linux 6.2 and later use instead of
/// `inode_setxattr`.
pub const SET_ACL: Program = where_present("inode_set_acl", "ACLs of protected files");
pub const REMOVE_ACL: Program = where_present("inode_remove_acl", "ACLs of protected files");
/// ftruncate(2), which Linux 6.2 and later decide here instead of at `path_truncate`.
pub const FILE_TRUNCATE: Program = where_present(
    "file_truncate",
    "ftruncate(2) of protected files and of files a sandboxed process held",
);

const fn where_present(name: &'static str, what: &'static str) -> Program {
    Program {
        name,
        attach: Attach::Lsm(name),
        what,
        required: false,
    }
}

/// LSM hooks that only some kernels have, attached after [`ALL`]: part of full enforcement
/// where the kernel has the hook (`bpf_lsm_<hook>` in its BTF), and not needed where it has
/// not (what they see goes through another hook there; `key_free` has nothing to do there).
pub const WHERE_PRESENT: [Program; 5] =
    [IOCTL_COMPAT, SET_ACL, REMOVE_ACL, FILE_TRUNCATE, KEY_FREE];
pub const FCNTL: Program = lsm(
    "file_fcntl",
    "signal ownership (F_SETOWN); files armed for SIGIO (O_ASYNC, F_SETSIG)",
);
/// The kernel's SIGIO and SIGURG for a file an agent armed: none to a task outside the agent
/// (see governance-ebpf's sigio.rs).
pub const SIGIOTASK: Program = lsm(
    "file_send_sigiotask",
    "SIGIO/SIGURG from files agents armed, to processes outside the agent",
);
pub const SETXATTR: Program = lsm("inode_setxattr", "the agent label");
pub const REMOVEXATTR: Program = lsm("inode_removexattr", "the agent label");
pub const MSG_ALLOC: Program = lsm("msg_queue_alloc_security", "System V IPC owners");
pub const SHM_ALLOC: Program = lsm("shm_alloc_security", "System V IPC owners");
pub const SEM_ALLOC: Program = lsm("sem_alloc_security", "System V IPC owners");
pub const MSG_FREE: Program = lsm("msg_queue_free_security", "System V IPC owners");
pub const SHM_FREE: Program = lsm("shm_free_security", "System V IPC owners");
pub const SEM_FREE: Program = lsm("sem_free_security", "System V IPC owners");
pub const IPC_PERMISSION: Program = lsm("ipc_permission", "System V IPC of others");
pub const MSGCTL: Program = lsm("msg_queue_msgctl", "System V IPC of others");
pub const SHMCTL: Program = lsm("shm_shmctl", "System V IPC of others");
pub const SEMCTL: Program = lsm("sem_semctl", "System V IPC of others");

pub const CAPABLE: Program = lsm("capable", "capabilities agents never get");
pub const URING_CREDS: Program = lsm("uring_override_creds", "io_uring personalities");
pub const URING_SQPOLL: Program = lsm("uring_sqpoll", "io_uring polling threads");
pub const CRED_PREPARE: Program = lsm(
    "cred_prepare",
    "bookkeeping of credentials io_uring tasks of agents had",
);
pub const CRED_TRANSFER: Program = lsm(
    "cred_transfer",
    "bookkeeping of credentials io_uring tasks of agents had (keyrings)",
);
pub const CRED_ALLOC_BLANK: Program = lsm(
    "cred_alloc_blank",
    "session keyrings handed to a parent process",
);
pub const CRED_FREE: Program = lsm(
    "cred_free",
    "bookkeeping of credentials io_uring tasks of agents had",
);
pub const SB_MOUNT: Program = lsm("sb_mount", "mount");
pub const SB_UMOUNT: Program = lsm("sb_umount", "umount");
pub const SB_REMOUNT: Program = lsm("sb_remount", "remount");
pub const SB_PIVOTROOT: Program = lsm("sb_pivotroot", "pivot_root");
pub const MOVE_MOUNT: Program = lsm("move_mount", "move_mount (attaching new mounts)");
pub const SB_KERN_MOUNT: Program = lsm(
    "sb_kern_mount",
    "new filesystems (fsconfig FSCONFIG_CMD_CREATE, mount)",
);
pub const TASK_ALLOC: Program = lsm("task_alloc", "clone: other cgroups, namespaces");
pub const MMAP_FILE: Program = lsm("mmap_file", "code mapped executable (mmap)");
pub const FILE_MPROTECT: Program = lsm("file_mprotect", "code mapped executable (mprotect)");
/// Forget the files agents wrote once they are deleted (see [`crate::maps::WRITTEN`]).
pub const INODE_FREE: Program = lsm(
    "inode_free_security",
    "bookkeeping of agent-written files and agents' message queues",
);
pub const LINK: Program = lsm("inode_link", "hard links of protected files");
pub const RENAME: Program = lsm("inode_rename", "moving protected files out");
pub const SYMLINK: Program = lsm("inode_symlink", "symlinks where creating is refused");
pub const MKDIR: Program = lsm(
    "inode_mkdir",
    "directories where creating is refused, cgroups named like interface files",
);
pub const MKNOD: Program = lsm(
    "path_mknod",
    "files, device nodes, FIFOs made by mknod where creating is refused",
);
pub const CHMOD: Program = lsm("path_chmod", "chmod of protected files");
pub const CHOWN: Program = lsm("path_chown", "chown of protected files");
pub const RMDIR: Program = lsm("inode_rmdir", "removing protected directories");
pub const CONNECT4: Program = sock("connect4", "IPv4 connect");
pub const CONNECT6: Program = sock("connect6", "IPv6 connect");
pub const SENDMSG4: Program = sock("sendmsg4", "IPv4 UDP sendto");
pub const SENDMSG6: Program = sock("sendmsg6", "IPv6 UDP sendto");
pub const BIND4: Program = sock("bind4", "the daemon's ports (IPv4 bind)");
pub const BIND6: Program = sock("bind6", "the daemon's ports (IPv6 bind)");
pub const UNIX_CONNECT: Program = lsm("unix_stream_connect", "Unix stream/seqpacket connect");
pub const UNIX_SEND: Program = lsm("unix_may_send", "Unix datagram send and connect");
/// A sandboxed process's sends on the sockets it held before its sandbox verdict, and its
/// writes to files it did not open under its profile (see governance-ebpf's held.rs): two
/// hooks, as no one hook sees every way of sending, and the end of a file's life.
pub const HELD_SENDMSG: Program = lsm(
    "socket_sendmsg",
    "sandboxed sends on held sockets, source routes on datagrams",
);
pub const HELD_WRITE: Program = lsm(
    "file_permission",
    "sandboxed writes to held files, sendfile and splice to held sockets",
);
pub const HELD_FILE_FREE: Program = lsm(
    "file_free_security",
    "forgets the files sandboxed processes opened for writing, and files agents armed for SIGIO",
);
/// Sequence rules, per packet: an armed agent's connections made before the arming (TCP,
/// connected UDP) are held to the rule's allowlist too (see governance-ebpf's
/// sequence_egress.rs).
pub const SEQUENCE_EGRESS: Program = Program {
    name: "sequence_egress",
    attach: Attach::SkbEgress,
    what: "sequence rules on established connections (per packet)",
    required: true,
};
/// New IPv4 and IPv6 sockets other than TCP and UDP, refused to agents in the network stack
/// (see governance-ebpf's sock_create.rs): the `socket_create` LSM hook's decision, on kernels
/// without BPF LSM too.
pub const SOCK_CREATE: Program = Program {
    name: "sock_create",
    attach: Attach::SockCreate,
    what: "ping, raw, SCTP, MPTCP and UDP-Lite sockets",
    required: true,
};
/// Tie an agent's connection to the proxy to its original destination, by source address and
/// port.
pub const SOCK_OPS: Program = Program {
    name: "sock_ops",
    attach: Attach::SockOps,
    what: "proxy redirect bookkeeping",
    required: true,
};
/// Inherit the sandbox flag across fork; forget it at exit.
pub const FORK: Program = Program {
    name: "sched_process_fork",
    attach: Attach::RawTracepoint("sched_process_fork"),
    what: "sandbox inheritance",
    required: true,
};
pub const EXIT: Program = Program {
    name: "sched_process_exit",
    attach: Attach::RawTracepoint("sched_process_exit"),
    what: "sandbox cleanup",
    required: true,
};
/// Degraded exec enforcement: after the exec, SIGKILL the process if policy says block.
pub const EXEC_KILL: Program = Program {
    name: "sched_process_exec",
    attach: Attach::RawTracepoint("sched_process_exec"),
    what: "exec (DEGRADED: kill after exec)",
    required: false,
};

/// Discovery of agents nobody labelled: TLS ClientHellos and DNS queries of processes outside
/// every agent, copied for the daemon. Never enforces (always passes the packet) and is not
/// part of enforcement: a kernel that refuses it loses discovery only.
pub const DISCOVER: Program = Program {
    name: "discover",
    attach: Attach::SkbEgress,
    what: "discovery of unlabelled agents (TLS server names, DNS; never enforces)",
    required: false,
};

/// Full enforcement, in attach order: the network and tracepoint programs first (they load
/// everywhere), the LSM programs after.
/// Socket options refused to agents, in the network stack (kernels without BPF LSM too).
pub const SOCKOPT: Program = Program {
    name: "sockopt_set",
    attach: Attach::SetSockopt,
    what: "multicast memberships, source routes, marks, TCP_ULP (cgroup/setsockopt)",
    required: true,
};

pub const ALL: [Program; 81] = [
    FORK,
    EXIT,
    SOCK_OPS,
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    BIND4,
    BIND6,
    SEQUENCE_EGRESS,
    SOCK_CREATE,
    SOCKOPT,
    EXEC,
    FILE,
    SOCKET_CREATE,
    USERNS,
    BPF,
    TASK_KILL,
    PTRACE,
    TRACEME,
    UNLINK,
    SETRLIMIT,
    SETNICE,
    SETIOPRIO,
    SETSCHEDULER,
    SETPGID,
    MOVEMEMORY,
    MODULE_REQUEST,
    IOCTL,
    FCNTL,
    FILE_RECEIVE,
    SIGIOTASK,
    SETXATTR,
    REMOVEXATTR,
    MSG_ALLOC,
    SHM_ALLOC,
    SEM_ALLOC,
    MSG_FREE,
    SHM_FREE,
    SEM_FREE,
    IPC_PERMISSION,
    MSGCTL,
    SHMCTL,
    SEMCTL,
    UNIX_CONNECT,
    UNIX_SEND,
    HELD_SENDMSG,
    HELD_WRITE,
    HELD_FILE_FREE,
    CAPABLE,
    URING_CREDS,
    URING_SQPOLL,
    CRED_PREPARE,
    CRED_TRANSFER,
    CRED_ALLOC_BLANK,
    CRED_FREE,
    SB_MOUNT,
    SB_UMOUNT,
    SB_REMOUNT,
    SB_PIVOTROOT,
    MOVE_MOUNT,
    SB_KERN_MOUNT,
    TASK_ALLOC,
    MMAP_FILE,
    FILE_MPROTECT,
    INODE_FREE,
    LINK,
    RENAME,
    UNLINK_PROTECTED,
    TRUNCATE,
    SYMLINK,
    MKDIR,
    MKNOD,
    RMDIR,
    CHMOD,
    CHOWN,
    KEY_ALLOC,
    KEY_PERMISSION,
    MQUEUE_MADE,
    CGROUP_BORDER,
    SETSOCKOPT,
];
