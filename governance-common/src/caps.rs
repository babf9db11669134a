/// `CAP_*` names by number (include/uapi/linux/capability.h).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const CHOWN: u32 = 0;
pub const DAC_OVERRIDE: u32 = 1;
pub const DAC_READ_SEARCH: u32 = 2;
pub const FOWNER: u32 = 3;
pub const SETUID: u32 = 7;
pub const SETPCAP: u32 = 8;
pub const LINUX_IMMUTABLE: u32 = 9;
pub const NET_ADMIN: u32 = 12;
pub const NET_RAW: u32 = 13;
pub const SYS_MODULE: u32 = 16;
pub const SYS_RAWIO: u32 = 17;
pub const SYS_CHROOT: u32 = 18;
pub const SYS_PTRACE: u32 = 19;
pub const SYS_PACCT: u32 = 20;
pub const SYS_ADMIN: u32 = 21;
pub const SYS_BOOT: u32 = 22;
/// [`crate::Event::detail`] of a capability event for a refused io_uring personality (no
/// capability has this number).
pub const URING_PERSONALITY: u8 = 255;
/// [`crate::Event::detail`] of a capability event for a refused io_uring polling thread.
pub const URING_SQPOLL: u8 = 254;

pub const SYS_NICE: u32 = 23;
pub const SYS_RESOURCE: u32 = 24;
pub const SYS_TIME: u32 = 25;
pub const SYS_TTY_CONFIG: u32 = 26;
pub const MKNOD: u32 = 27;
pub const AUDIT_CONTROL: u32 = 30;
pub const MAC_OVERRIDE: u32 = 32;
pub const MAC_ADMIN: u32 = 33;
pub const SYSLOG: u32 = 34;
pub const PERFMON: u32 = 38;
pub const BPF: u32 = 39;
pub const CHECKPOINT_RESTORE: u32 = 40;

const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// The capabilities with which a process may write files only root may write, or make itself
/// their owner: write without permission, own any file (and then `chmod` it), change owners,
/// become root, raise capabilities it may pass on. A process with one of them (in its
/// effective or permitted set), or running as root, could have changed any root-owned file;
/// under an exec allowlist such a process maps code only from files its policy keeps it from
/// writing (see the eBPF `mapping.rs`).
pub const WRITE_ROOT_FILES: u64 =
    bit(CHOWN) | bit(DAC_OVERRIDE) | bit(FOWNER) | bit(SETUID) | bit(SETPCAP);

/// The capabilities agents never get, each for the facility it opens around the policy:
///
/// - `CAP_SYS_ADMIN`: mount, new namespaces and setns, pivot_root, swapon, quotactl,
///   sethostname, TIOCSTI (typing into another terminal), trusted xattrs, fanotify, and
///   most device ioctls: the catch-all of kernel administration.
/// - `CAP_SYS_MODULE`: loading kernel code; `CAP_SYS_BOOT`: reboot and kexec (replace the
///   kernel, and with it every hook).
/// - `CAP_SYS_RAWIO`: /dev/mem, /dev/port, /proc/kcore, MSRs, iopl/ioperm, raw SCSI
///   commands: memory and devices without files.
/// - `CAP_SYS_PTRACE`: the memory of processes with more privilege or another uid.
/// - `CAP_DAC_READ_SEARCH`: open_by_handle_at, which opens a file by a handle, without a
///   path for the file rules to match (root keeps reading files through
///   `CAP_DAC_OVERRIDE`).
/// - `CAP_MKNOD`: device nodes (a disk, memory) under a name no rule expects.
/// - `CAP_SYS_CHROOT`: chroot, and entering other mount namespaces (setns): other views
///   of the file system than the one the path rules describe.
/// - `CAP_NET_ADMIN`: routes, firewall, interfaces: rewiring the network around the
///   connect rules and the proxy (ioctls need no netlink socket).
/// - `CAP_NET_RAW`: besides raw and packet sockets (refused by `socket_create` too), a
///   socket's or a datagram's mark (`SO_MARK`, which the kernel grants for `CAP_NET_RAW` before
///   it asks for `CAP_NET_ADMIN`, since 5.17) and transparent sockets (`IP_TRANSPARENT`): a
///   mark chooses the node's routing table and firewall treatment (a VPN's bypass mark, a
///   firewall's accept mark), so an allowed address would lead elsewhere (red team round 15).
/// - `CAP_SYS_TIME`: the clock (certificate and token validity, audit timestamps).
/// - `CAP_LINUX_IMMUTABLE`: append-only and immutable files (locking or unlocking logs
///   and configuration).
/// - `CAP_MAC_ADMIN`, `CAP_MAC_OVERRIDE`: the other security modules' policy.
/// - `CAP_AUDIT_CONTROL`: the kernel audit rules (switching auditing off).
/// - `CAP_SYSLOG`: the kernel log and kernel addresses.
/// - `CAP_BPF`, `CAP_PERFMON`: programs in the kernel and tracing of other processes
///   (bpf() is refused by its own hook too).
/// - `CAP_CHECKPOINT_RESTORE`: choosing pids, PR_SET_MM, /proc/PID/map_files.
/// - `CAP_SYS_RESOURCE`: PR_SET_MM (rewriting what the kernel holds as the process's
///   executable, which the mapping rules rely on), and resource limits, quotas and reserved
///   disk space that keep one tenant from exhausting the node.
/// - `CAP_SYS_PACCT`: process accounting (switching it off, or writing it to a file).
/// - `CAP_SYS_TTY_CONFIG`: vhangup and console key maps (commands typed at the console).
/// - `CAP_SYS_NICE`: real-time scheduling and I/O classes (`SCHED_FIFO`, `SCHED_DEADLINE`,
///   `IOPRIO_CLASS_RT`), which cgroup v2's CPU limits do not hold: one busy real-time thread
///   per CPU starves every other process of the node, the daemon and the proxy among them
///   (red team round 8). Lowering one's own priority needs no capability.
///
/// Kept: `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID` (files, as the file
/// rules decide), `CAP_SETUID`, `CAP_SETGID`, `CAP_SETPCAP`, `CAP_SETFCAP` (sudo-like
/// tools, dropping privilege), `CAP_KILL` (signals to the daemon are refused by their own
/// hook), `CAP_NET_BIND_SERVICE`, `CAP_NET_BROADCAST`, `CAP_IPC_LOCK`, `CAP_IPC_OWNER`, `CAP_LEASE`, `CAP_AUDIT_WRITE`, `CAP_AUDIT_READ`, `CAP_WAKE_ALARM`,
/// `CAP_BLOCK_SUSPEND`.
pub const REFUSED: u64 = bit(SYS_ADMIN)
    | bit(SYS_MODULE)
    | bit(SYS_BOOT)
    | bit(SYS_RAWIO)
    | bit(SYS_PTRACE)
    | bit(DAC_READ_SEARCH)
    | bit(MKNOD)
    | bit(SYS_CHROOT)
    | bit(NET_ADMIN)
    | bit(NET_RAW)
    | bit(SYS_TIME)
    | bit(LINUX_IMMUTABLE)
    | bit(MAC_ADMIN)
    | bit(MAC_OVERRIDE)
    | bit(AUDIT_CONTROL)
    | bit(SYSLOG)
    | bit(BPF)
    | bit(PERFMON)
    | bit(CHECKPOINT_RESTORE)
    | bit(SYS_RESOURCE)
    | bit(SYS_PACCT)
    | bit(SYS_TTY_CONFIG)
    | bit(SYS_NICE);

/// The number of a capability name (`CAP_NET_ADMIN`, `net_admin`, any case).
pub fn by_name(name: &str) -> Option<u32> {
    let upper = name.trim();
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(upper) || n[4..].eq_ignore_ascii_case(upper))
        .map(|i| i as u32)
}

/// The name of capability `cap`, or `cap<N>`.
pub fn name(cap: u32) -> &'static str {
    NAMES.get(cap as usize).copied().unwrap_or("CAP_?")
}
