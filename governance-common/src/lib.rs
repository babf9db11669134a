//! The one source of truth for everything the eBPF programs and the daemon both know: map,
//! program and pin names, limits, map key/value layouts and the decision event record.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled out as `_pad`
//! fields, so the kernel and userspace agree byte for byte and map keys hash deterministically)
//! and is checked for size at compile time.
//!
//! # Generations
//! The programs are loaded once and stay attached (pinned); policy changes only rewrite maps.
//! [`maps::STATE`] holds the active generation number `g`; its low bit is the active *slot*.
//! Every table entry of a generation lives in that generation's slot: [`AgentKey::slot`] for
//! the agent roots, and the top bit of every class id ([`class_id`]) for the rule tables. A
//! reload writes the complete next generation into the other slot, then flips [`maps::STATE`]
//! with one aligned 32-bit store, then deletes the old slot. A program reads the generation
//! once per decision, so it sees one generation whole.
#![no_std]

/// Names of the BPF maps, as the eBPF object defines them; also their pin file names.
pub mod maps;

/// The eBPF programs: function name in governance-ebpf (also the link pin name), and where it
/// attaches.
pub mod programs;

/// Where the daemon pins its maps and links (below the bpffs mount).
pub mod pins;
pub mod sequence;

/// Names of the read-only globals the daemon sets at load time: byte offsets of kernel struct
/// fields, resolved from the running kernel's BTF (the Rust eBPF toolchain has no CO-RE field
/// relocations, so the loader does this job).
pub mod offsets;

/// Discovery of agents nobody labelled: the `discover` program's records.
pub mod discover;

/// How many cgroup levels below the root the kernel programs inspect when they look for the
/// agent a task belongs to. An agent root must sit at a level below this; its descendants may be
/// deeper (the walk goes top-down and stops at the first agent root).
pub const MAX_CGROUP_DEPTH: u32 = 32;
/// System V IPC objects made by agents that the kernel programs remember (an agent whose
/// object cannot be recorded is refused the creation).
pub const MAX_IPC_OBJECTS: u32 = 16384;
/// Keys and keyrings made by agents that the kernel programs remember (an agent whose key cannot
/// be recorded is refused the key).
pub const MAX_KEYS: u32 = 16384;
/// POSIX message queues made by agents that the kernel programs remember (a queue that cannot be
/// recorded is out of its own agent's reach: fail closed).
pub const MAX_MQUEUES: u32 = 8192;
/// Files on which an agent turned on asynchronous notification (`O_ASYNC`, `FIOASYNC`) or
/// chose its signal (`F_SETSIG`), that the kernel programs remember until the file is freed
/// (see [`SigioOwner`]). Preallocated; when full, the enabling `fcntl` or `ioctl` is refused
/// ([`Cause::MapFull`]): a file not remembered could signal a process outside the agent.
pub const MAX_SIGIO_FILES: u32 = 4096;
/// Credentials that agent tasks with an io_uring context had as their own and then changed
/// (or made for a child), that the kernel programs remember until they are freed (see
/// [`maps::AGENT_CREDS`]). Preallocated; when full, recording ends (counted as a full map) and
/// every capability check in an io_uring task of an agent is taken as the agent's.
pub const MAX_AGENT_CREDS: u32 = 65536;
/// Capacity of [`maps::AGENTS`] (both slots).
pub const MAX_AGENTS: u32 = 8192;
/// Capacity of [`maps::EXEC_RULES`].
pub const MAX_EXEC_RULES: u32 = 32768;
/// Capacity of [`maps::PATH_RULES`].
pub const MAX_PATH_RULES: u32 = 65536;
/// Capacity of [`maps::NET_RULES`].
pub const MAX_NET_RULES: u32 = 32768;
/// Capacity of [`maps::BUCKETS`], [`maps::GRANTS`], [`maps::SANDBOXED`].
pub const MAX_BUCKETS: u32 = 16384;
/// Capacity of [`maps::THROTTLES`] (both slots: a generation holds at most half).
pub const MAX_THROTTLES: u32 = 8192;
pub const MAX_GRANTS: u32 = 16384;
pub const MAX_SANDBOXED: u32 = 16384;
/// Marks [`maps::SANDBOXED`] keeps free for forks in flight: a sandboxed process may not fork
/// (`task_alloc` refuses it, [`Cause::MapFull`]) once the table holds `MAX_SANDBOXED` minus
/// this many, so the child's mark always finds room (a child without its mark would run
/// under its agent's policy, not the profile). Far above the forks one CPU can have between
/// that check and the mark.
pub const SANDBOX_RESERVE: u32 = 1024;
pub const MAX_PROTECTED: u32 = 64;
/// Capacity of [`maps::SANDBOX_FILES`]: the files sandboxed processes hold open for writing
/// under their profiles, across the node. Allocated as it fills. When full, a sandboxed
/// process's open for writing is refused ([`Cause::MapFull`]): a descriptor that is not
/// remembered could not be written through.
pub const MAX_SANDBOX_FILES: u32 = 65536;
/// Capacity of [`maps::WRITTEN`]: files agents wrote, across agents, until unlinked. Allocated
/// as it fills (a million entries would be ~100 MiB preallocated). When full, an agent's open
/// for writing is refused ([`Cause::MapFull`]): a write that cannot be remembered could
/// otherwise be mapped executable later.
pub const MAX_WRITTEN: u32 = 1 << 20;
/// Capacity of [`maps::LOADERS`] and [`maps::RAW_DEVICES`].
pub const MAX_LOADERS: u32 = 64;
pub const MAX_RAW_DEVICES: u32 = 64;
/// `SO_PRIORITY` of the proxy's listening sockets (above 6: only CAP_NET_ADMIN or CAP_NET_RAW
/// in the namespace's owner sets it, which agents never have). The connect programs send an
/// agent's connect to the proxy's address only where the listener that would take it has this
/// priority: in a network namespace whose port range holds the proxy's port, an agent could
/// otherwise be given that port (`bind` to port 0, `listen` unbound) before the daemon's listener
/// and receive the requests, credentials and all, meant for the proxy (red team round 29). A
/// classid no qdisc is likely to have (major 0x676f).
pub const PROXY_LISTENER_PRIORITY: u32 = 0x676f_7600;

/// Capacity of [`maps::ORIG_DST`] and [`maps::PROXY_CONNS`] (LRU: the oldest entries go first).
pub const MAX_PROXY_CONNS: u32 = 65536;
/// Size of the [`maps::EVENTS`] ring buffer, in bytes (a power of two, a multiple of the page).
pub const EVENTS_RING_BYTES: u32 = 4 << 20;
/// Bytes of path in [`PathKey`] (and so the longest path a path rule can decide on,
/// NUL included): an LPM trie key holds at most 256 bytes of data, 5 go to the class and access.
pub const PATH_MAX: usize = 251;
/// Bytes of path carried in an [`Event`], including the terminating NUL.
pub const EVENT_PATH_LEN: usize = 256;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// Rule id that means "no rule".
pub const NO_RULE: u32 = 0;
/// Port/protocol alternatives held per destination prefix in [`NetValue`].
pub const NET_SLOTS: usize = 8;
/// Capacity of [`maps::UNIX_RULES`].
pub const MAX_UNIX_RULES: u32 = 16384;
/// Capacity of [`maps::UNIX_PROTECTED`].
pub const MAX_UNIX_PROTECTED: u32 = 1024;
/// Bytes of `sun_path` in a `struct sockaddr_un`.
pub const SUN_PATH_LEN: usize = 108;
/// Capacity of [`maps::IDENT_RULES`] (both slots). Allocated as entries are written, not up
/// front: every agent's class has its own entries (a dozen for the built-in protections).
pub const MAX_IDENT_RULES: u32 = 262_144;
/// How many directory levels above an opened (linked, renamed) object the programs look up in
/// [`maps::IDENT_RULES`]. A deeper object, for an agent whose class has identity rules for the
/// access, is refused (fail closed). Any path short enough for a path rule ([`PATH_MAX`]: at
/// most 125 levels of `/x`) is within it.
pub const MAX_IDENT_DEPTH: u32 = 128;

/// The layout of the runtime tables a handover carries from one build to the next
/// ([`maps::SANDBOXED`] with [`maps::SANDBOX_ANY`], [`maps::SANDBOX_FILES`],
/// [`maps::SIGIO_OWNERS`] with [`maps::SIGIO_ANY`], [`maps::IPC_OWNERS`], [`maps::KEY_OWNERS`],
/// [`maps::MQ_OWNERS`], [`maps::SEQ_STATE`], [`maps::WRITTEN`], [`maps::GRANTS`],
/// [`maps::BUCKETS`]) and of the [`Event`] records the new build reads from
/// the previous build's [`maps::EVENTS`]: their key and value types and what the values mean.
/// Kept in [`maps::STATE`] at [`STATE_LAYOUT`]; a change to any of those types, or to how their
/// values are computed, must bump it (and teach the handover the previous one).
///
/// 0 is the builds before the number was kept (no [`STATE_LAYOUT`] entry): the same types, but
/// a sandbox mark was a class number that other agents' profiles shifted, so their marks are
/// carried as a profile no generation has (the process then has every action refused).
///
/// 1 keyed a destination's grant on [`net_object`] alone and a file's on its path alone, which
/// other destinations and other accesses share: its grants are not carried (what they
/// approved is asked again).
///
/// 2 kept only the writing agent's root in [`maps::WRITTEN`]; 3 keeps a [`Written`], with the
/// inode the entry was made for. Entries of layouts before 3 are carried with no inode
/// ([`Written::inode`] 0: kept until the node restarts).
pub const RUNTIME_LAYOUT: u32 = 3;

/// Value of [`maps::WRITTEN`]: who wrote a file first, and which inode the entry is for.
///
/// An entry is keyed by (device, inode number), which some filesystems do not keep unique or
/// stable: btrfs subvolumes share a device and number their inodes each from its own counter
/// (a snapshot's copies keep the numbers), an overlay's layers may share numbers, vfat gives
/// an inode a new number when it is read back. So an entry is removed only when the inode it
/// was made for (`inode`, its `struct inode` address) is destroyed with no link left; another
/// inode with the same key being destroyed leaves it (red team round 18). `inode` is 0 once
/// two inodes have written under one key, or the inode left the cache while its file lives
/// on (when it is read back it is another `struct inode`): such an entry stays until the node
/// restarts, which refuses more, never less.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// cgroup id of the agent root whose process wrote the file first.
    pub owner: u64,
    /// The `struct inode` the entry was made for; 0: none (kept for good).
    pub inode: u64,
}
/// Index in [`maps::STATE`] of the active generation (0: none loaded yet).
pub const STATE_GENERATION: u32 = 0;
/// Index in [`maps::STATE`] of the build id of the object that pinned the maps.
pub const STATE_BUILD: u32 = 1;
/// Index in [`maps::STATE`] of the [`RUNTIME_LAYOUT`] of the build that pinned the maps.
pub const STATE_LAYOUT: u32 = 2;
/// Index in [`maps::STATE`]: 1 when the programs were loaded knowing where a btrfs inode's
/// subvolume device is ([`offsets::BTRFS_INODE_VFS_INODE`] and the two after it), so that they
/// key btrfs files on it, and the daemon with them.
pub const STATE_BTRFS: u32 = 3;
/// A sandbox mark no generation has a class for ([`AgentKey::profile`] is 16 bits): what a
/// handover carries for a mark whose profile it cannot tell. Every action is then refused.
pub const UNKNOWN_PROFILE: u32 = u32::MAX;

/// The class id of class number `n` (1-based) in the generation `generation`: the slot is the
/// top bit, so a generation's tables never collide with the other slot's.
pub const fn class_id(generation: u32, n: u32) -> u32 {
    ((generation & 1) << 31) | n
}

/// The number of a class or rule id without its slot bit: the inverse of [`class_id`]
/// (`id_number(class_id(g, n)) == n`).
pub const fn id_number(id: u32) -> u32 {
    id & !(1 << 31)
}
const _: () = assert!(id_number(class_id(1, 5)) == 5 && id_number(class_id(2, 5)) == 5);

/// The slot of a generation.
pub const fn slot(generation: u32) -> u32 {
    generation & 1
}

/// What kind of action a decision is about.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec = 1,
    /// connect(), IPv4 or IPv6.
    Connect = 2,
    File = 3,
    /// sendmsg() on an unconnected UDP socket.
    Send = 4,
    /// socket() of a raw, packet or netlink socket.
    Socket = 5,
    /// A new user namespace.
    Userns = 6,
    /// The bpf() syscall.
    Bpf = 7,
    /// A signal to a protected process.
    Signal = 8,
    /// ptrace of a protected process.
    Ptrace = 9,
    /// Unlinking a file in bpffs (a pin).
    Unlink = 10,
    /// Changing another process's resources: rlimits, nice, I/O priority, scheduling,
    /// memory placement.
    Task = 17,
    /// A built-in guard (see [`guard`], in the event's `detail`): module autoloading, terminal
    /// input, signal ownership, the agent label.
    Guard = 18,
    /// An IPC object another subtree made ([`Event::port`]: [`ipc_object`]): a System V
    /// message queue, semaphore set or shared memory segment, a key or keyring, a POSIX message
    /// queue.
    Ipc = 19,
    /// A connect to (stream, seqpacket) or a datagram sent to a named Unix socket.
    Unix = 11,
    /// A capability agents never get ([`Event::detail`]: its number, see [`caps`]).
    Capability = 12,
    /// mount, umount, remount, pivot_root, move_mount ([`Event::detail`]: [`mount_op`]).
    Mount = 13,
    /// clone() into another cgroup or with new namespaces ([`Event::object`]: the flags).
    Clone = 14,
    /// A file mapped executable (mmap or mprotect with PROT_EXEC; [`Event::detail`]:
    /// [`exec_map`]).
    ExecMap = 15,
    /// A hard link or rename that would take an object out of the identity rules that protect
    /// it, an unlink or truncate of such an object, or a new entry made without an open where
    /// creating is refused ([`Event::detail`]: [`LINK_OP_LINK`], [`LINK_OP_RENAME`],
    /// [`LINK_OP_UNLINK`], [`LINK_OP_TRUNCATE`], [`LINK_OP_SYMLINK`], [`LINK_OP_MKDIR`],
    /// [`LINK_OP_MKNOD`], [`LINK_OP_RMDIR`], [`LINK_OP_CHMOD`], [`LINK_OP_CHOWN`],
    /// [`LINK_OP_CREATE`]).
    Link = 16,
}

/// [`Event::detail`] of a [`Kind::Link`] decision: a new hard link.
pub const LINK_OP_LINK: u8 = 1;
/// [`Event::detail`] of a [`Kind::Link`] decision: a rename (or one side of an exchange).
pub const LINK_OP_RENAME: u8 = 2;
/// [`Kind::Link`] detail: an unlink of an object the identity rules protect from writing.
pub const LINK_OP_UNLINK: u8 = 3;
/// [`Kind::Link`] detail: a truncate(2)/ftruncate(2) of such an object.
pub const LINK_OP_TRUNCATE: u8 = 4;
/// [`Kind::Link`] detail: a symlink made where the identity rules refuse creating.
pub const LINK_OP_SYMLINK: u8 = 5;
/// [`Kind::Link`] detail: a directory made there.
pub const LINK_OP_MKDIR: u8 = 6;
/// [`Kind::Link`] detail: a device node, FIFO, socket or empty file made there by mknod(2).
pub const LINK_OP_MKNOD: u8 = 7;
/// [`Kind::Link`] detail: a directory removed, as an unlink is decided.
pub const LINK_OP_RMDIR: u8 = 8;
/// [`Kind::Link`] detail: a chmod of an object the identity rules protect from writing.
pub const LINK_OP_CHMOD: u8 = 9;
/// [`Kind::Link`] detail: a chown of such an object.
pub const LINK_OP_CHOWN: u8 = 10;
/// [`Kind::Link`] detail: a regular file made where an identity rule blocks creating, refused
/// before it exists (mknod(2), or an open's O_CREAT).
pub const LINK_OP_CREATE: u8 = 11;

impl Kind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Connect,
            3 => Self::File,
            4 => Self::Send,
            5 => Self::Socket,
            6 => Self::Userns,
            7 => Self::Bpf,
            8 => Self::Signal,
            9 => Self::Ptrace,
            10 => Self::Unlink,
            17 => Self::Task,
            18 => Self::Guard,
            19 => Self::Ipc,
            11 => Self::Unix,
            12 => Self::Capability,
            13 => Self::Mount,
            14 => Self::Clone,
            15 => Self::ExecMap,
            16 => Self::Link,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Connect => "connect",
            Self::File => "file",
            Self::Send => "send",
            Self::Socket => "socket",
            Self::Userns => "userns",
            Self::Bpf => "bpf",
            Self::Signal => "signal",
            Self::Ptrace => "ptrace",
            Self::Unlink => "unlink",
            Self::Task => "task",
            Self::Guard => "guard",
            Self::Ipc => "ipc",
            Self::Unix => "unix",
            Self::Capability => "capability",
            Self::Mount => "mount",
            Self::Clone => "clone",
            Self::ExecMap => "exec_map",
            Self::Link => "link",
        }
    }
}

/// The verdict of a rule or default, as the policy language names it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Allow = 0,
    Throttle = 1,
    Sandbox = 2,
    Escalate = 3,
    Block = 4,
}

impl Verdict {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Allow,
            1 => Self::Throttle,
            2 => Self::Sandbox,
            3 => Self::Escalate,
            4 => Self::Block,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Throttle => "throttle",
            Self::Sandbox => "sandbox",
            Self::Escalate => "escalate",
            Self::Block => "block",
        }
    }
}

/// Why the kernel decided as it did, beyond the rule.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A rule matched (see [`Event::rule_id`]).
    Rule = 0,
    /// No rule matched; the agent's default posture applied.
    Default = 1,
    /// The program could not read the kernel object it decides on, and failed closed.
    Unreadable = 2,
    /// The path is longer than [`PATH_MAX`]: failed closed.
    TooLong = 3,
    /// An escalation was approved (a grant matched).
    Granted = 4,
    /// A built-in protection (escape, self-protection), not a policy rule.
    Builtin = 5,
    /// A `via_proxy` rule matched, but the action cannot go through the proxy (no proxy
    /// listens, or it is not a TCP connect): refused, never sent direct.
    NoProxy = 6,
    /// A table the kernel must record the action in is full ([`maps::WRITTEN`]): refused.
    MapFull = 7,
}

impl Cause {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Rule,
            1 => Self::Default,
            2 => Self::Unreadable,
            3 => Self::TooLong,
            4 => Self::Granted,
            5 => Self::Builtin,
            6 => Self::NoProxy,
            7 => Self::MapFull,
            _ => return None,
        })
    }
}

/// [`Event::flags`] bits.
pub mod flags {
    /// The action was refused (EPERM).
    pub const DENIED: u8 = 1;
    /// A shadow rule or default would have decided differently (see `shadow_*` fields).
    pub const SHADOW: u8 = 2;
    /// Degraded exec: the process was killed after the exec.
    pub const KILLED: u8 = 4;
    /// The acting process runs under a sandbox profile.
    pub const SANDBOXED: u8 = 8;
    /// The destination was rewritten to the policy proxy.
    pub const PROXIED: u8 = 16;
    /// A sampled allowed action (`report: { sample: N }`): it is in the counts too.
    pub const SAMPLED: u8 = 32;
    /// File: this open armed the sequence rule `rule_id` (first arming for the agent).
    pub const ARMED: u8 = 64;
    /// Connect/send: refused (or escalated) by the armed sequence rule `rule_id`.
    pub const SEQUENCE: u8 = 128;
}

/// Indexes into the [`maps::COUNTERS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Decision events that did not fit in the ring buffer.
    EventsDropped = 0,
    /// Decisions taken for agents (all verdicts).
    Decisions = 1,
    /// Decisions that refused the action.
    Denials = 2,
    /// Map updates the kernel programs could not make (bucket, sandbox): failed closed.
    MapFull = 3,
}

/// Number of slots in [`maps::COUNTERS`].
pub const COUNTERS_LEN: u32 = 4;

/// One side of a decision: the rule (or default) and its verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    /// Kernel rule id; [`NO_RULE`] for a default.
    pub rule_id: u32,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// 1 if this slot is in use.
    pub present: u8,
    /// Sandbox verdict: the profile's mark (see [`AgentKey::profile`]).
    /// Throttle verdict: whose bucket (see [`BucketKey`]). Allow verdict: how the allowed
    /// action is reported (see [`report`]).
    pub aux: u16,
}

/// Hashed as one word, not field by field: the daemon hashes the value of every entry of a
/// generation when it installs one.
impl core::hash::Hash for RuleRef {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(
            u64::from(self.rule_id)
                | u64::from(self.verdict) << 32
                | u64::from(self.present) << 40
                | u64::from(self.aux) << 48,
        );
    }
}

/// What applies to an object: the enforcing rule and, if a shadow rule ranks above it, that
/// one (reported as "would have", never enforced).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RulePair {
    pub enforce: RuleRef,
    pub shadow: RuleRef,
}

/// Key of [`maps::AGENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AgentKey {
    /// cgroup v2 id of the agent root.
    pub cgroup_id: u64,
    /// Generation slot (0 or 1).
    pub slot: u32,
    /// 0 for an agent root's class; for the class of one of its sandbox profiles, the mark
    /// [`maps::SANDBOXED`] holds for it: a hash of the profile's `<policy>/<profile>` name, the
    /// same in every generation and build (`kernel::compile::profile_key` in the daemon).
    pub profile: u32,
}

/// [`AgentValue::allow`] bits: what built-in protections the policy relaxes.
pub mod allow {
    /// Raw (SOCK_RAW), packet (AF_PACKET) and netlink sockets.
    pub const RAW_SOCKETS: u32 = 1;
    /// New user namespaces.
    pub const USER_NAMESPACES: u32 = 2;
    /// Container-runtime and service-manager sockets (see [`crate::unix_protected`]); never
    /// the daemon's control socket.
    pub const RUNTIME_SOCKETS: u32 = 4;
    /// mount, umount, remount, pivot_root, move_mount (where the agent holds CAP_SYS_ADMIN).
    pub const MOUNTS: u32 = 8;
    /// Running the dynamic loader as a program (`ld.so PROGRAM`).
    pub const LOADER_EXEC: u32 = 16;
    /// Writing the kernel's settings (/proc/sys, /proc/sysrq-trigger, /sys): selects the
    /// shared built-in path rules without them (see [`crate::builtin_class`]).
    pub const KERNEL_SETTINGS: u32 = 32;
    /// Writing the node's system files: selects the shared built-in path rules without them.
    pub const SYSTEM_FILES: u32 = 64;
    /// The policy proxy itself: a TCP connect to its address, and sends on a connection to
    /// it. Not a relaxation but a reach the class has: every agent's class and a `network:
    /// proxy` sandbox profile's have it; a `network: none` profile's, and the class of a mark
    /// whose profile is gone, do not (their connect to the proxy is decided by the network
    /// table, which refuses it).
    pub const PROXY: u32 = 128;
    /// Name-service sockets (nscd, systemd-resolved, sssd: see [`crate::unix_protected`]).
    pub const NAME_SERVICE_SOCKETS: u32 = 256;
}

/// First class number of the shared built-in path rules (after the slot bit): the node's
/// protected paths (the daemon's files, the kernel's settings, the system files) are the same
/// for every agent, so they are stored once per generation and combination of the relaxations
/// that change them, not once per agent. `file_open` looks them up beside the agent's own
/// class, and the most severe answer wins (a policy rule never outranks a built-in). Their
/// identity entries are shared under the same class (see [`IdentKey`], shared entries).
pub const BUILTIN_CLASS_BASE: u32 = 0x7fff_ff00;

/// The class number of an agent root the daemon found while it could not build a generation
/// (a policy that does not fit the kernel's tables, say): no tables of its own and every
/// default refusing, so everything it does is refused until a generation governs it
/// ([`AgentValue::refusing_everything`]). Below the built-in classes; no compiled class reaches it.
pub const QUARANTINE_CLASS: u32 = BUILTIN_CLASS_BASE - 1;

/// The class of the shared built-in path rules for an agent of class `class` (slot bit
/// included) whose [`allow`] bits are `allow`.
/// (Kernel settings 1, system files 2, runtime sockets 4: the orchestrator's credentials.)
pub const fn builtin_class(class: u32, allow: u32) -> u32 {
    let relaxed = ((allow & (allow::KERNEL_SETTINGS | allow::SYSTEM_FILES)) >> 5)
        | (allow & allow::RUNTIME_SOCKETS);
    (class & (1 << 31)) | BUILTIN_CLASS_BASE | relaxed
}
const _: () = assert!(
    builtin_class(class_id(1, 7), allow::SYSTEM_FILES) == class_id(1, BUILTIN_CLASS_BASE | 2)
        && builtin_class(class_id(2, 7), allow::LOADER_EXEC) == class_id(2, BUILTIN_CLASS_BASE)
        && builtin_class(class_id(2, 7), allow::RUNTIME_SOCKETS | allow::SYSTEM_FILES)
            == class_id(2, BUILTIN_CLASS_BASE | 6)
);

/// What a [`Kind::Ipc`] event is about (its `port`), and what its `detail` then holds.
pub mod ipc_object {
    /// A System V IPC object; `detail`: the `ipc_permission` flag (0: a control operation).
    pub const SYSV: u16 = 0;
    /// A key or keyring (`object`: its serial); `detail`: the permission the kernel asked for
    /// (`enum key_need_perm`, see [`key_need`]).
    pub const KEY: u16 = 1;
    /// A POSIX message queue (`object`: its inode number); `detail`: the open's accesses
    /// ([`crate::access`] letters as bits, as a file open's), or [`MQUEUE_UNLINK`].
    pub const MQUEUE: u16 = 2;
    /// [`MQUEUE`] detail: `mq_unlink`.
    pub const MQUEUE_UNLINK: u8 = 0x80;

    /// The name of an IPC object kind, for events.
    pub const fn name(port: u16) -> &'static str {
        match port {
            SYSV => "System V IPC",
            KEY => "key",
            MQUEUE => "POSIX message queue",
            _ => "?",
        }
    }

    /// The kernel's `enum key_need_perm` (6.1), by name.
    pub const fn key_need(need: u8) -> &'static str {
        match need {
            1 => "view",
            2 => "read",
            3 => "write",
            4 => "search",
            5 => "link",
            6 => "setattr",
            7 => "unlink",
            8 => "sysadmin override",
            9 => "authtoken override",
            10 => "deferred (lookup)",
            _ => "?",
        }
    }
}

/// What a [`Kind::Task`] event refused to change in another process (its `detail`).
pub mod task_change {
    pub const RLIMIT: u8 = 1;
    pub const NICE: u8 = 2;
    pub const IOPRIO: u8 = 3;
    pub const SCHEDULER: u8 = 4;
    pub const MEMORY: u8 = 5;

    /// The name of a change, for events.
    pub const fn name(detail: u8) -> &'static str {
        match detail {
            RLIMIT => "rlimit",
            NICE => "nice",
            IOPRIO => "ioprio",
            SCHEDULER => "scheduler",
            MEMORY => "memory",
            _ => "?",
        }
    }
}

/// What a [`Kind::Guard`] event refused (its `detail`).
pub mod guard {
    /// request_module(): the kernel would run modprobe for the agent.
    pub const MODULE_REQUEST: u8 = 1;
    /// TIOCSTI/TIOCLINUX: input pushed into a terminal.
    pub const TERMINAL_INPUT: u8 = 2;
    /// F_SETOWN to another process, F_SETOWN_EX, FIOSETOWN, SIOCSPGRP.
    pub const SIGNAL_OWNER: u8 = 3;
    /// Setting or removing a `user.governance.*` xattr (the agent label).
    pub const LABEL: u8 = 4;
    /// A key of a type whose construction (request_key) makes the kernel run a program outside
    /// the agent, as root: `dns_resolver` (a DNS query for a name of the agent's choice, past
    /// its network rules), the NFS and CIFS upcalls, and every type not known to be local.
    pub const KEY_UPCALL: u8 = 5;
    /// A write permission on a cgroup outside the agent's subtree: moving a process across
    /// its border (pulling one in through a `cgroup.procs` the agent owns), making or removing
    /// a cgroup there, writing its interface files.
    pub const CGROUP_BORDER: u8 = 6;
    /// A source route (an IPv4 source-route option, an IPv6 routing header) on a socket or a
    /// datagram: the packet would go on past the address the network rules decided on.
    pub const SOURCE_ROUTE: u8 = 7;
    /// A write to a `/proc/PID/` file of a process outside the agent's subtree that procfs
    /// does not guard with a ptrace check: its OOM score (`oom_score_adj`: the daemon first to
    /// go under memory pressure), fault injection (`make-it-fail`), `clear_refs`,
    /// `coredump_filter`, `timerslack_ns`, its autogroup's priority.
    pub const PROC_OF_OUTSIDE: u8 = 8;
    /// A file lease (`F_SETLEASE` with `F_RDLCK` or `F_WRLCK`): every open of the file by
    /// another process waits until the holder lets go or the lease break time (45 s) passes,
    /// the daemon's reads of the agent's `/proc/PID/status` (for each proxied connection) and
    /// of files it may read (the policy) among them.
    pub const LEASE: u8 = 9;
    /// A bind to the port the policy proxy or the daemon's TCP control API listens on, on
    /// any address ([`crate::Event::object`]: the port): while the daemon restarts, or before
    /// it opens its listener in a new network namespace, the agent's socket would take the
    /// connections the kernel sends to the proxy (other agents' requests among them).
    pub const DAEMON_PORT: u8 = 10;
    /// A write to a procfs file that belongs to no process (a sysctl, on any procfs: red team
    /// round 27), or to sysfs: the kernel's and devices' settings, such as a PCI device's
    /// configuration space (`/proc/bus/pci`: its command register cleared, the node's disk or
    /// network controller stops), interrupt affinities
    /// (`/proc/irq`), SCSI devices removed (`/proc/scsi/scsi`), ACPI wake-up (red team round 7).
    /// Refused unless a policy allows kernel settings.
    pub const KERNEL_PROC: u8 = 11;
    /// An open of a pty another session holds (its controlling terminal, a session leader
    /// outside the agent: an administrator's shell, a tmux pane): reading it races the shell
    /// for every line typed (passwords included); writing it puts text on their screen. The
    /// agent's own controlling terminal, and ptys no session holds or that a session of the
    /// agent holds (what `pexpect` and `script` make), stay open to it. Also taking such a
    /// terminal as its own controlling terminal (`TIOCSCTTY` with CAP_SYS_ADMIN takes it from
    /// the session that holds it: that session's processes lose their terminal), or hanging it
    /// up (`TIOCVHANGUP` with CAP_SYS_ADMIN: SIGHUP to the session's leader).
    pub const OTHER_TERMINAL: u8 = 12;
    /// A multicast group joined or its source filter set (`IP_ADD_MEMBERSHIP`, `IP_MSFILTER`,
    /// `MCAST_JOIN_SOURCE_GROUP`, `IPV6_JOIN_GROUP`, …): the kernel then sends IGMP or MLD
    /// reports onto the link that carry the group and every source address the agent chose, on
    /// a packet no socket owns, which no connect, sendmsg or egress program sees (red team
    /// round 15).
    pub const MULTICAST: u8 = 13;
    /// A write open of a process's memory (`/proc/PID/mem`, the agent's own included) under
    /// an exec allowlist: a write there reaches read-only text, which runs code no exec or
    /// mapping decision saw (red team round 16).
    pub const PROC_MEM: u8 = 14;
    /// A socket's or a datagram's mark (`SO_MARK`) or a transparent socket: the node's routing
    /// tables and firewall act on a mark (a VPN's bypass mark), so an allowed address would
    /// lead elsewhere (red team rounds 15 and 16).
    pub const PACKET_MARK: u8 = 15;
    /// Under an exec allowlist, a write to a file some process maps (and none maps shared and
    /// writable): a library or program it runs, whose code the write would change (red team
    /// round 15).
    pub const MAPPED_CODE: u8 = 16;
    /// A filesystem's own ioctl that changes files or the namespace past the hooks that decide
    /// opens, writes, creations and removals (red team round 19): a btrfs or bcachefs
    /// subvolume or snapshot made, removed, made writable or made the default (a tree of files
    /// appears under any name, `/etc` or `/usr` among them, with no create or write the hooks
    /// see, or leaves with no unlink), the extent moves and swaps of ext4, XFS and F2FS (a
    /// file's contents replaced by another's with no write), OCFS2's reflink (a new name with
    /// no create), fscrypt's encryption policy on a directory, FAT's attributes (a chmod with
    /// no `path_chmod`; round 20). [`crate::Event::object`]: the command.
    pub const FILESYSTEM_IOCTL: u8 = 17;
    /// An upper-layer protocol put on a TCP socket (`TCP_ULP`): `smc` moves the connection's
    /// data to SMC-R or SMC-D (loopback on 6.12), which no packet program sees, on a socket
    /// made without `socket_create` (red team round 24); kTLS (`tls`) falls back to TLS in
    /// user space. [`crate::Event::object`]: (level << 32) | option.
    pub const SOCKET_ULP: u8 = 18;
    /// A session keyring handed to a parent (`KEYCTL_SESSION_TO_PARENT`): one outside the
    /// agent would look keys up in a keyring the agent controls (a planted Kerberos ticket,
    /// credentials cleared; red team round 26); refused whoever the parent is (it may change
    /// under the call).
    pub const SESSION_KEYRING: u8 = 19;
    /// A source address the node need not own (`IP_FREEBIND`, `IPV6_FREEBIND`): Linux sends
    /// IPv6 from any address bound so, or named in `IPV6_PKTINFO` then, with no capability,
    /// so an allowed destination's replies and ICMPv6 errors (which quote the datagram) go to
    /// a host the policy refuses (red team round 27). [`crate::Event::object`]: (level << 32)
    /// | option.
    pub const FOREIGN_SOURCE: u8 = 20;
    /// A reuseport group's steering program set or removed (`SO_ATTACH_REUSEPORT_CBPF`,
    /// `SO_ATTACH_REUSEPORT_EBPF`, `SO_DETACH_REUSEPORT_BPF`): any socket of the group may
    /// replace it, so an agent bound beside a service of its uid that shares its port (a DNS
    /// cache, nginx with `reuseport`) would take every connection and datagram sent to that
    /// service, not the share the kernel's hash gives it (red team round 32).
    /// [`crate::Event::object`]: (level << 32) | option.
    pub const REUSEPORT_STEER: u8 = 21;
    /// An io_uring ring received from another process (`file_receive`: a seccomp supervisor's
    /// `SECCOMP_IOCTL_NOTIF_ADDFD`, `pidfd_getfd`, `SCM_RIGHTS`): a ring with a polling thread
    /// made outside submits what the agent writes into its shared memory as its maker, a
    /// process outside every agent to every hook (red team round 36: connects to blocked
    /// servers, no event). Every ring is refused, polled or not.
    pub const URING_RING: u8 = 22;
    /// A cgroup made with the name of an interface file (`memory.max`, `pids.x`, `cgroup.y`: a
    /// controller's name or `cgroup`, then a dot; red team round 36): when the operator later
    /// enables that controller for the cgroup's parent's children, the kernel cannot add the
    /// file to the cgroup holding the name, the write to `cgroup.subtree_control` fails, and no
    /// sibling (another agent under the same parent) gets the controller's limits.
    /// [`crate::Event::object`]: the parent cgroup's id.
    pub const CGROUP_NAME: u8 = 23;

    /// The name of a guard, for events.
    pub const fn name(detail: u8) -> &'static str {
        match detail {
            MODULE_REQUEST => "module autoload",
            TERMINAL_INPUT => "terminal input injection",
            SIGNAL_OWNER => "signal ownership to another process",
            LABEL => "the agent label",
            KEY_UPCALL => "a key whose construction runs a program outside the agent",
            CGROUP_BORDER => "a cgroup outside the agent (a process moved across its border)",
            SOURCE_ROUTE => "a source route (past the destination the network rules decided on)",
            PROC_OF_OUTSIDE => "a /proc file of a process outside the agent",
            LEASE => "a file lease (others' opens of the file would wait for it)",
            DAEMON_PORT => "the policy proxy's or the control API's port (bind)",
            KERNEL_PROC => "a kernel or device setting (procfs or sysfs)",
            OTHER_TERMINAL => "a terminal another session holds",
            MULTICAST => "a multicast membership (its reports carry what the agent chose)",
            PROC_MEM => "a process's memory written (/proc/PID/mem) under an exec allowlist",
            PACKET_MARK => "a packet mark or transparent socket (routing and firewalls act on it)",
            MAPPED_CODE => "a write to a file a process maps as code, under an exec allowlist",
            FILESYSTEM_IOCTL => "a filesystem ioctl past the file hooks (subvolumes, extent moves)",
            SOCKET_ULP => "an upper-layer protocol on a TCP socket (TCP_ULP)",
            SESSION_KEYRING => "a session keyring handed to a parent process",
            FOREIGN_SOURCE => "a source address the node need not own (IP_FREEBIND)",
            REUSEPORT_STEER => "a reuseport group's steering program (every peer's traffic)",
            URING_RING => {
                "an io_uring ring from another process (its polling thread acts as its maker)"
            }
            CGROUP_NAME => {
                "a cgroup named like a controller's interface file (enabling that controller fails)"
            }
            _ => "?",
        }
    }
}

/// Linux capabilities: their names, and the ones agents never get.
///
/// An agent is often root in the host's namespaces, where a capability is a key to a kernel
/// facility that acts around the policy (the hooks decide on exec, files and connects, not on
/// what the kernel does for a privileged caller). The `capable` hook refuses the capabilities
/// of [`REFUSED`] to every task of an agent, whatever its uid; the rest stay, because ordinary
/// agent work needs them. A policy gives one back with `kernel: { allow_capabilities: [...] }`.
pub mod caps;

/// [`Event::detail`] of a [`Kind::Mount`] decision: which operation.
pub mod mount_op {
    pub const MOUNT: u8 = 1;
    pub const UMOUNT: u8 = 2;
    pub const REMOUNT: u8 = 3;
    pub const PIVOT_ROOT: u8 = 4;
    pub const MOVE_MOUNT: u8 = 5;
    /// A new filesystem (`sb_kern_mount`: fsconfig(FSCONFIG_CMD_CREATE), mount(2)).
    pub const NEW_FILESYSTEM: u8 = 6;
}

/// [`Event::detail`] and [`Event::port`] of a [`Kind::ExecMap`] decision.
pub mod exec_map {
    /// detail: mmap(PROT_EXEC).
    pub const MMAP: u8 = 1;
    /// detail: mprotect(PROT_EXEC).
    pub const MPROTECT: u8 = 2;
    /// port, with [`crate::Cause::Builtin`]: an agent wrote the file (allowlist agents).
    pub const WRITTEN: u16 = 1;
    /// port, with [`crate::Cause::Builtin`]: the file has no name on any mount (memfd, SysV
    /// shared memory; allowlist agents).
    pub const NAMELESS: u16 = 2;
    /// port, with [`crate::Cause::Builtin`]: an agent could have changed the file: it is not
    /// root-only (root's, writable by no one else, on a local filesystem not backed by a loop or
    /// network device), or the mapping process may write root's files and its policy does not
    /// keep it from writing the file's path (allowlist agents).
    pub const WRITABLE: u16 = 3;
    /// port, with [`crate::Cause::Builtin`]: a sandbox rule's file mapped by a process whose
    /// memory another process shares (`clone(CLONE_VM)` without `CLONE_THREAD`): the mapping
    /// would serve the other process, which the sandbox mark does not reach.
    pub const SHARED_MEMORY: u16 = 4;
}

/// [`Event::detail`] of a [`Kind::Exec`] decision with [`Cause::Builtin`]: the dynamic loader
/// run as the program.
pub const EXEC_DETAIL_LOADER: u8 = 1;
/// [`Event::detail`] of a [`Kind::File`] decision with [`Cause::Builtin`]: a raw storage
/// device (block device, or a character device of [`maps::RAW_DEVICES`]).
pub const FILE_DETAIL_RAW_DEVICE: u8 = 0x80;
/// [`Event::detail`] of a [`Kind::File`] decision with [`Cause::Builtin`]: a sandboxed
/// process wrote (or mapped shared and writable) a file through a descriptor it did not open
/// under its profile (one it held before its sandbox verdict, or was passed).
pub const FILE_DETAIL_HELD: u8 = 0x40;

/// [`Event::detail`] of a [`Kind::Signal`] refusal: the signal was the kernel's SIGIO or SIGURG
/// for a file an agent armed (`send_sigio`, `send_sigurg`), refused in
/// `file_send_sigiotask`. The event names the agent's process that armed the file (its pid,
/// comm and uid then), not the task whose I/O raised the signal.
pub const SIGNAL_DETAIL_SIGIO: u8 = 1;
/// [`Event::detail`] of a [`Kind::Signal`] refusal: a terminal access (a read of the
/// controlling terminal, a write with `TOSTOP`, an ioctl that changes it) from a background
/// process group, for which the kernel would stop the caller's whole process group (SIGTTIN,
/// SIGTTOU: `kill_pgrp`, no `task_kill`), processes outside the agent that share it included.
/// [`Event::port`]: the signal; [`Event::object`]: the process group.
pub const SIGNAL_DETAIL_JOB_CONTROL: u8 = 2;

/// Value of [`maps::SIGIO_OWNERS`]: the agent whose process turned on asynchronous
/// notification on a file, or chose its signal, as it was then: where its subtree is (the
/// agent root and its level, for `file_send_sigiotask`, which runs in whichever task raised
/// the I/O) and what the refusal's event says of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigioOwner {
    /// cgroup id of the agent root.
    pub root: u64,
    /// cgroup id of the process that armed the file.
    pub cgroup: u64,
    pub tgid: u32,
    /// The agent root's level in the cgroup2 hierarchy.
    pub level: u32,
    pub uid: u32,
    pub class: u32,
    pub generation: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Value of [`maps::AGENTS`]: the agent's class and its defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentValue {
    /// Class id ([`class_id`]): whose rule tables apply.
    pub class: u32,
    /// [`allow`] bits.
    pub allow: u32,
    pub exec_default: RulePair,
    pub file_default: RulePair,
    pub net_default: RulePair,
    /// Connects and datagrams to named Unix sockets no rule covers.
    pub unix_default: RulePair,
    /// Capabilities of [`caps::REFUSED`] the policy gives back (bit n: capability n).
    pub allow_caps: u64,
}

impl AgentValue {
    /// Class `class` with no relaxation, no capability, and exec, files, the network and Unix
    /// sockets refused by default: a sandboxed process whose profile is gone, an agent root
    /// under quarantine ([`QUARANTINE_CLASS`]).
    pub const fn refusing_everything(class: u32) -> Self {
        let block = RulePair {
            enforce: RuleRef {
                rule_id: NO_RULE,
                verdict: Verdict::Block as u8,
                present: 1,
                aux: 0,
            },
            shadow: RuleRef {
                rule_id: 0,
                verdict: 0,
                present: 0,
                aux: 0,
            },
        };
        AgentValue {
            class,
            allow: 0,
            exec_default: block,
            file_default: block,
            net_default: block,
            unix_default: block,
            allow_caps: 0,
        }
    }

    /// Does its exec default block (an exec allowlist)? Then no code may run that an exec rule
    /// did not decide: what the built-ins refuse besides (mapped code written, process memory,
    /// tracers) is refused only to these agents.
    #[inline(always)]
    pub fn exec_allowlist(&self) -> bool {
        self.exec_default.enforce.verdict == Verdict::Block as u8
    }
}

/// Key of [`maps::EXEC_RULES`]: a class and the identity of an executable, as the kernel holds
/// it: the superblock's device (kernel `dev_t` encoding, `MAJOR << 20 | MINOR`) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub class: u32,
    pub dev: u32,
    pub ino: u64,
}

/// [`IdentKey::scope`]: the rules for the object itself (a file, or a directory opened as one).
pub const SCOPE_SELF: u32 = 0;
/// [`IdentKey::scope`]: the rules for what is below a directory (its files and subdirectories,
/// whatever they are called and whenever they were made).
pub const SCOPE_BELOW: u32 = 1;
/// [`IdentKey::scope`]: a directory above an object that a restricting rule names (its rules:
/// the most severe of those rules). Renaming it would move the rule's path away from the
/// object, and the next generation would not find it: refused to agents.
pub const SCOPE_HOLDS: u32 = 2;
/// [`IdentKey::scope`]: a device's marker (`ino` 0), see [`IdentKey`].
pub const SCOPE_DEVICE: u32 = 3;
/// [`IdentKey::scope`]: a class's answer outside every entry (`dev` 0, `ino` 0), for the
/// letters it restricts: what its path rules say for a name no more specific rule covers (a
/// rule on `/`, such as a sandbox profile's refusal of writes outside its writable
/// directories, else the class's file default). A walk that finds no entry for such a letter
/// takes this answer when a new name (link, rename), a removal or a truncate is judged: on
/// the object's old name and on its new one alike, so that a name given where an allow rule's
/// directory is cannot loosen what the object's old place refused. Opens are decided by their
/// path, which says the same, and do not read it.
pub const SCOPE_FILL: u32 = 4;
/// [`IdentKey::scope`]: a name in a directory, for a protected path that did not exist when
/// the generation was loaded (`dev` and `ino`: the deepest directory on the path that did;
/// [`IdentKey::name`]: [`name_hash`] of the path's next component). Its create slot holds what
/// making that name would be refused as: the path rules' answer for the protected path for
/// creating, else for writing (a name made by a rename, a link or a symlink has content the
/// agent chose). A directory on the way to the protected path is refused whole: a new
/// directory there would make the protected path. `inode_link`, `inode_rename` (the new name),
/// `inode_symlink`, `inode_mkdir` and `inode_mknod` look it up for the new dentry (its parent's
/// identity and its name's hash) and refuse where it restricts; opens are decided by their path.
/// Its [`IDENT_FILTER`](maps::IDENT_FILTER) bit is the directory's (the name left out), so the
/// kernel hashes a name only in a directory that has such entries.
pub const SCOPE_NAME: u32 = 5;
/// The rule id of a [`SCOPE_FILL`] answer that is the class's file default (reported as the
/// default posture).
pub const FILL_DEFAULT: u32 = 0x7fff_fffe;
/// The rule id of a [`SCOPE_FILL`] answer that is a built-in rule on `/` (a sandbox profile's
/// writable directories: reported as the built-in rule it is).
pub const FILL_BUILTIN: u32 = 0x7fff_fffd;

/// Key of [`maps::IDENT_RULES`]: a class and the identity of a file or directory a file rule
/// named when the generation was loaded (device in the kernel `dev_t` encoding, as
/// [`ExecKey`]), and whether the rules are for the object itself, for what is below it, or for
/// the objects named below it (see the scopes).
///
/// `ino` 0 with [`SCOPE_DEVICE`] is a device's marker: its [`IdentValue`] slot `i` is present
/// when some identity rule of the class refuses (or limits) access letter `i` and the class has
/// an entry for that letter on this device. A walk stays on the device of the object it starts
/// from (every key it looks up has that `dev`), so on a device without a marker, or for a
/// letter its marker lacks, the walk could find nothing, and the kernel skips it: an agent's
/// opens on a filesystem where no identity rule names anything (a container's overlay, a
/// tmpfs, /proc) cost no walk.
///
/// Shared entries: most of a class's entries are those of the built-in protections (the
/// daemon's files, the kernel's settings, the system files), the same in every class of a
/// generation with the same relaxations. They are stored once, under the class
/// [`builtin_class`] gives (as the shared built-in path rules are), and each class keeps only
/// the entries in which it differs: a key the class lacks is looked up in its shared class.
/// An entry with no slot present stands for "none here" where the shared class has one. The
/// markers are never shared: each class keeps its own, which also says whether the class has
/// entries of its own on the device ([`IdentValue::own_entries`]); where it has none, the walk
/// reads the shared class only, one lookup per level as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentKey {
    pub class: u32,
    pub dev: u32,
    pub ino: u64,
    /// [`SCOPE_SELF`], [`SCOPE_BELOW`], [`SCOPE_HOLDS`], [`SCOPE_DEVICE`], [`SCOPE_FILL`] or
    /// [`SCOPE_NAME`].
    pub scope: u32,
    /// With [`SCOPE_NAME`], [`name_hash`] of the name in directory (`dev`, `ino`); else 0.
    pub name: u32,
}

/// Longest name of one directory entry (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// FNV-1a (32-bit) offset basis: [`name_hash`] of the empty name.
pub const NAME_HASH_SEED: u32 = 0x811c_9dc5;

/// One byte of [`name_hash`] (FNV-1a, 32-bit): the kernel's hash loop takes it byte by byte.
#[inline(always)]
pub const fn name_hash_step(hash: u32, byte: u8) -> u32 {
    (hash ^ byte as u32).wrapping_mul(0x0100_0193)
}

/// The hash of a directory entry's name (its first [`NAME_MAX`] bytes) that [`SCOPE_NAME`]
/// keys hold. The kernel's own `d_name.hash` is salted by the parent dentry's address, so the
/// programs compute this one over the name's bytes, with [`name_hash_step`].
pub const fn name_hash(name: &[u8]) -> u32 {
    let mut h = NAME_HASH_SEED;
    let mut i = 0;
    while i < name.len() && i < NAME_MAX {
        h = name_hash_step(h, name[i]);
        i += 1;
    }
    h
}
// FNV-1a 32-bit test vectors.
const _: () = assert!(
    name_hash(b"") == 0x811c_9dc5
        && name_hash(b"a") == 0xe40c_292c
        && name_hash(b"foobar") == 0xbf9c_f968
);

/// Bits in each slot's identity filter ([`maps::IDENT_FILTER`]): with the 15,000 identities of
/// 1,000 agents, about 3 % of the bits are set.
pub const IDENT_FILTER_BITS: u32 = 1 << 19;
/// 64-bit words in one slot's identity filter.
pub const IDENT_FILTER_WORDS: usize = (IDENT_FILTER_BITS / 64) as usize;
/// One slot's identity filter (64 KiB): bit [`ident_filter_bit`] is set for the identity and
/// scope of every [`IdentKey`] in the slot, whatever its class.
pub type IdentFilter = [u64; IDENT_FILTER_WORDS];

/// The bit of (`dev`, `ino`, `scope`) in an [`IdentFilter`] (multiplicative hashing). With the
/// scope: the directories above a protected object have [`SCOPE_HOLDS`] entries, which a walk
/// (looking for [`SCOPE_BELOW`]) never reads. A [`SCOPE_NAME`] key's bit is its directory's,
/// without the name. The kernel and the daemon both compute it here.
pub const fn ident_filter_bit(dev: u32, ino: u64, scope: u32) -> u32 {
    let key = ino ^ ((dev as u64) << 32) ^ ((scope as u64) << 60);
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - IDENT_FILTER_BITS.trailing_zeros())) as u32
}
const _: () = assert!(
    IDENT_FILTER_BITS.is_power_of_two()
        && ident_filter_bit(u32::MAX, u64::MAX, SCOPE_DEVICE) < IDENT_FILTER_BITS
        && ident_filter_bit(8, 2, SCOPE_SELF) != ident_filter_bit(8, 3, SCOPE_SELF)
        && ident_filter_bit(8, 2, SCOPE_BELOW) != ident_filter_bit(8, 2, SCOPE_HOLDS)
);

/// Value of [`maps::IDENT_RULES`]: the rules per access letter, in the order of
/// [`IDENT_LETTERS`] (the bits of [`Event::detail`]); a slot with neither side present has no
/// rule here, and the next directory up decides that letter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentValue {
    pub rules: [RulePair; 4],
}

impl IdentValue {
    /// For a device's marker: does the class have entries of its own on the device (see
    /// [`IdentKey`], shared entries)? Kept in the first slot's shadow side, which a marker
    /// does not otherwise use.
    pub const fn own_entries(&self) -> bool {
        self.rules[0].shadow.present != 0
    }

    /// Set [`own_entries`](Self::own_entries) of a marker.
    pub const fn set_own_entries(&mut self, own: bool) {
        self.rules[0].shadow.present = own as u8;
    }
}

/// The access letters of [`IdentValue::rules`], in order.
pub const IDENT_LETTERS: [u8; 4] = [
    access::READ,
    access::WRITE,
    access::CREATE,
    access::TRUNCATE,
];

/// Access letters of [`PathKey::access`].
pub mod access {
    pub const READ: u8 = b'r';
    pub const WRITE: u8 = b'w';
    pub const CREATE: u8 = b'c';
    pub const TRUNCATE: u8 = b't';
    pub const EXEC: u8 = b'x';
}

/// Data of the [`maps::PATH_RULES`] LPM-trie key: class (big-endian), the access letter, then
/// the path bytes. A prefix rule for directory `/d` is stored as `/d/` with its length in bits;
/// an exact rule as the path with its NUL, so it matches that path only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub class_be: [u8; 4],
    pub access: u8,
    pub path: [u8; PATH_MAX],
}

/// Data of the [`maps::NET_RULES`] LPM-trie key: class (big-endian), then the IPv6 address
/// (IPv4 as IPv4-mapped `::ffff:a.b.c.d`, so IPv4 rules also cover IPv4-mapped IPv6 connects).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub class_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Protocols of [`NetEntry::proto`].
pub mod proto {
    pub const ANY: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// One port/protocol alternative at a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetEntry {
    pub rule: RuleRef,
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`proto`] value.
    pub proto: u8,
    /// 1: send the connection to the policy proxy instead.
    pub via_proxy: u8,
    /// 1: a shadow rule (reported, never enforced).
    pub shadow: u8,
    pub _pad: u8,
}

/// Value of [`maps::NET_RULES`]: every rule that covers the prefix, most specific first (the
/// compiler pushes rules of shorter prefixes down into longer ones, so one lookup suffices).
/// The first matching enforcing entry decides; a shadow entry before it is reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetValue {
    pub len: u32,
    pub _pad: u32,
    pub entries: [NetEntry; NET_SLOTS],
}

/// Where the policy proxy listens, in the byte orders of `struct bpf_sock_addr` (so the
/// programs compare and rewrite without conversions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyAddr {
    /// IPv4 address, network byte order (as `user_ip4`).
    pub ip4: u32,
    /// IPv6 address, as `user_ip6` (four network-order words).
    pub ip6: [u32; 4],
    /// Port, network byte order in the low 16 bits (as `user_port`).
    pub port: u32,
    /// 1 when a proxy listens; 0: `via_proxy` connects are refused (fail closed).
    pub enabled: u32,
}

/// An agent's connection to the proxy: where it was going and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// The destination the agent asked for (IPv4 as IPv4-mapped IPv6); all zero when the agent
    /// connected to the proxy itself (explicit proxy use).
    pub addr: [u8; 16],
    /// Its port, host byte order.
    pub port: u16,
    /// 1 if the kernel rewrote the destination to the proxy (a `via_proxy` rule).
    pub redirected: u8,
    pub _pad: u8,
    /// Process id (tgid) of the connecting task.
    pub tgid: u32,
    /// cgroup v2 id of the agent root.
    pub agent_cgroup: u64,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Policy generation that decided the connect.
    pub generation: u32,
    pub _pad2: u32,
}

/// Key of [`maps::PROXY_CONNS`]: the client side of a connection to the proxy, its address as
/// well as its port: two sockets may share a source port on different addresses (127.0.0.1
/// and 127.0.0.2, the node's address), and each must find its own record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The client's source address as on the wire, IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// The client's source port, host byte order.
    pub port: u32,
    /// AF_INET (2) or AF_INET6 (10), as on the wire: a dual-stack socket connected to an
    /// IPv4-mapped address counts as AF_INET (the proxy sees an IPv4 peer).
    pub family: u32,
    /// The network namespace's cookie (`bpf_get_netns_cookie`; `SO_NETNS_COOKIE` on the
    /// accepted socket): agents in their own network namespaces (pods, containers) reuse the
    /// same source ports, each reaching a proxy listener in its own namespace.
    pub netns: u64,
}

/// Key of [`maps::BUCKETS`], by the rule's [`RuleRef::aux`]: 0 (agent, rule), one bucket per
/// agent and rule; 1 (agent, 0), one per agent, shared by its rules keyed so; 2 (0, rule), one
/// shared by every agent.
///
/// Neither part depends on the generation: `owner` is the agent root's cgroup id (a sandboxed
/// process counts against its agent's buckets), `rule` the rule's [`Throttle::bucket`], a hash of
/// its `<policy>/<rule>` name. The rule tables of every generation that still has the rule lead
/// to the same bucket, so a reload neither refills nor resets it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub owner: u64,
    pub rule: u64,
}

/// A token bucket's level: `tokens` left at `last_ns` (`bpf_ktime_get_ns`; 0: never used).
/// Created full by the programs on first use; its capacity and refill rate are the rule's
/// [`Throttle`] in the generation that decides, so a reload that lowers the rate caps the level
/// at the new burst the next time the bucket is used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Value of [`maps::THROTTLES`]: a throttle rule's rate in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Throttle {
    /// Burst: the most tokens a bucket holds.
    pub capacity: u64,
    /// One token comes back per `interval_ns`.
    pub interval_ns: u64,
    /// [`BucketKey::rule`] of the rule's buckets: the same in every generation (never 0).
    pub bucket: u64,
}

/// Key of [`maps::GRANTS`]: what an approved escalation lets through again. Built by
/// [`GrantKey::new`] and its refinements in the kernel, and from the escalation's [`Event`] by
/// [`GrantKey::of_event`] in the daemon, so that a grant is looked up exactly as it was asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The agent root.
    pub cgroup_id: u64,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// File: the accesses the open asked for ([`Event::detail`]'s access bits: a grant to read
    /// is not one to write); connect and send: the protocol; otherwise 0.
    pub detail: u8,
    /// Connect and send: the destination port; otherwise 0.
    pub port: u16,
    pub _pad: [u8; 4],
    /// The object: (dev << 32 ^ ino) for exec, FNV-1a of the path for file, [`net_object`]
    /// for connect and send; for unix, (dev << 32 ^ ino) of the socket file or the name's
    /// [`unix_name_hash`].
    pub object: u64,
    /// Connect and send: the destination address, exactly (IPv4 mapped). File: the opened
    /// object's device and inode ([`GrantKey::identity`]). Otherwise zero. A 64-bit fold of a
    /// destination is shared by other destinations (red team round 11: 2^16 IPv4 address and
    /// port pairs per value of [`net_object`]), and a path's hash by paths an agent can make
    /// (round 24).
    pub addr: [u8; 16],
}

/// [`Event::detail`]'s access bits of a [`Kind::File`] decision (read 1, write 2, create 4,
/// truncate 8); its other bits are the decision's own.
pub const FILE_DETAIL_ACCESSES: u8 = 0x0f;

impl GrantKey {
    /// The grant of `object` of kind `kind` to the agent `cgroup_id`.
    pub const fn new(cgroup_id: u64, kind: Kind, object: u64) -> Self {
        GrantKey {
            cgroup_id,
            kind: kind as u8,
            detail: 0,
            port: 0,
            _pad: [0; 4],
            object,
            addr: [0; 16],
        }
    }

    /// A file's grant, for exactly the accesses `asked` ([`FILE_DETAIL_ACCESSES`] bits).
    pub const fn accesses(mut self, asked: u8) -> Self {
        self.detail = asked & FILE_DETAIL_ACCESSES;
        self
    }

    /// A file's grant, for exactly this object: its device (the first four bytes, native
    /// order) and inode number (the last eight) in [`addr`](Self::addr), beside the path's
    /// hash in [`object`](Self::object). The file program writes the same bytes into its
    /// event's `addr`.
    pub const fn identity(mut self, addr: [u8; 16]) -> Self {
        self.addr = addr;
        self
    }

    /// A destination's grant: exactly this address, port and protocol.
    pub const fn destination(mut self, addr: [u8; 16], port: u16, protocol: u8) -> Self {
        self.addr = addr;
        self.port = port;
        self.detail = protocol;
        self
    }

    /// The grant the kernel looks up for the action `ev` reports (an escalation's event).
    pub const fn of_event(ev: &Event) -> Self {
        let key = GrantKey {
            cgroup_id: ev.agent_cgroup,
            kind: ev.kind,
            detail: 0,
            port: 0,
            _pad: [0; 4],
            object: ev.object,
            addr: [0; 16],
        };
        if ev.kind == Kind::File as u8 {
            key.accesses(ev.detail).identity(ev.addr)
        } else if ev.kind == Kind::Connect as u8 || ev.kind == Kind::Send as u8 {
            key.destination(ev.addr, ev.port, ev.detail)
        } else {
            key
        }
    }
}

/// One decision, as the kernel reports it through [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the decision.
    pub time_ns: u64,
    /// cgroup v2 id of the acting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// cgroup v2 id of the agent root the task belongs to.
    pub agent_cgroup: u64,
    /// The object identity for an escalation grant ([`GrantKey::object`]). For a file open,
    /// only when an escalate rule or default decides it (0 otherwise: nothing else reads it).
    pub object: u64,
    /// Thread id (kernel `pid`).
    pub pid: u32,
    /// Process id (kernel `tgid`).
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
    pub uid: u32,
    /// Class id of the tables that decided.
    pub class: u32,
    pub rule_id: u32,
    /// Shadow rule id, when [`flags::SHADOW`].
    pub shadow_rule_id: u32,
    /// Policy generation that decided.
    pub generation: u32,
    /// Process id (tgid) as the process's own PID namespace numbers it (a container's view),
    /// when that namespace is not the initial one; 0 in the node's namespace.
    pub ns_pid: u32,
    /// Zero (keeps the record a multiple of 8 bytes without implicit padding).
    pub _reserved: u32,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// [`Verdict`] as u8: the verdict of the deciding rule or default.
    pub verdict: u8,
    /// [`Cause`] as u8.
    pub cause: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// The shadow verdict ([`Verdict`] as u8), when [`flags::SHADOW`].
    pub shadow_verdict: u8,
    /// File: the accesses asked for ([`access`] letters as bits: r=1 w=2 c=4 t=8 x=16).
    /// Connect/send: the protocol. Socket: the family. Unix: [`unix_detail`].
    pub detail: u8,
    /// Connect/send: destination port, host byte order. Signal: the signal. Unix:
    /// [`unix_hook`].
    pub port: u16,
    /// Connect/send: destination address (IPv6, or IPv4-mapped IPv6). Unix: the socket file's
    /// device (bytes 0-3, native order), the address length the socket was bound with (bytes
    /// 4-7) and the inode number (bytes 8-15).
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Exec: the file name the kernel recorded for the exec. File: the resolved path. Unix:
    /// the `sun_path` the target socket was bound with (the server's name for it, for the
    /// record; the decision used its identity), raw: an abstract name starts with a NUL.
    /// NUL-terminated (except a Unix abstract name; its length is in `addr`).
    pub path: [u8; EVENT_PATH_LEN],
}

/// Key of [`maps::UNIX_RULES`]: a class and the socket an agent connects or sends to, as the
/// kernel holds it. A filesystem socket is its bound socket file's identity (`dev` in the
/// kernel's `dev_t` encoding, as [`ExecKey`], and the inode number); an abstract socket has
/// `dev` [`UNIX_ABSTRACT_DEV`] and `ino` the [`unix_name_hash`] of its name (no real
/// superblock has device 0: anonymous devices start at minor 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    pub class: u32,
    pub dev: u32,
    pub ino: u64,
}

/// [`UnixKey::dev`] of an abstract socket's name.
pub const UNIX_ABSTRACT_DEV: u32 = 0;

/// Key of [`maps::UNIX_PROTECTED`]: a socket file's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixId {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Values of [`maps::UNIX_PROTECTED`]: why a socket file is refused to agents.
pub mod unix_protected {
    /// The daemon's control socket: always refused, no policy relaxes it.
    pub const CONTROL: u32 = 1;
    /// A container-runtime or service-manager socket (`docker.sock`, `containerd.sock`,
    /// systemd's private socket, the system D-Bus, ...): whoever talks to it can start
    /// processes outside the agent. Refused unless the policy sets
    /// `kernel: { allow_runtime_sockets: true }` ([`crate::allow::RUNTIME_SOCKETS`]).
    pub const RUNTIME: u32 = 2;
    /// A name-service socket (nscd's, systemd-resolved's, sssd's NSS pipe): the service looks
    /// names up for its client, so an agent that asks it for `<data>.attacker.example` sends a
    /// DNS query out that its own network rules would refuse. Refused unless the policy sets
    /// `kernel: { allow_name_service_sockets: true }` ([`crate::allow::NAME_SERVICE_SOCKETS`]);
    /// the C library then resolves itself, as its network rules decide.
    pub const NAME_SERVICE: u32 = 3;
}

/// [`Event::detail`] of a [`Kind::Unix`] decision: what the target socket's address is.
pub mod unix_detail {
    /// A socket file (its identity decided).
    pub const PATH: u8 = 1;
    /// An abstract name (its hash decided).
    pub const ABSTRACT: u8 = 2;
    /// A built-in refusal puts its [`crate::unix_protected`] value in the high nibble.
    pub const PROTECTED_SHIFT: u8 = 4;
}

/// [`Event::port`] of a [`Kind::Unix`] decision: which hook decided.
pub mod unix_hook {
    /// `connect()` of a stream or seqpacket socket (`unix_stream_connect`).
    pub const CONNECT: u16 = 1;
    /// A datagram `sendmsg()`/`connect()` (`unix_may_send`).
    pub const SEND: u16 = 2;
    /// A send on a stream or seqpacket socket a sandboxed process already held when it was
    /// sandboxed (`socket_sendmsg`, `file_permission`): decided as a connect to its peer.
    pub const HELD: u16 = 3;
}

/// Where the daemon's TCP control API listens, for [`maps::API_ADDR`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiAddr {
    /// The listening address, IPv4 as IPv4-mapped IPv6 (as the connect programs see it).
    pub addr: [u8; 16],
    /// The port, host byte order.
    pub port: u16,
    /// 1: the API listens on every address (`0.0.0.0` or `::`): every destination with this
    /// port may be it, so every agent connect to the port is refused.
    pub any_addr: u8,
    /// 1 when the API listens on TCP.
    pub enabled: u8,
    pub _pad: u32,
}

/// FNV-1a over an abstract socket name (the bytes after the leading NUL, at most
/// [`SUN_PATH_LEN`] - 1), seeded with its length (names may hold NUL bytes): the
/// [`UnixKey::ino`] and grant object of an abstract socket. The eBPF side computes the same.
pub fn unix_name_hash(name: &[u8]) -> u64 {
    let n = if name.len() < SUN_PATH_LEN {
        name.len()
    } else {
        SUN_PATH_LEN - 1
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ n as u64;
    h = h.wrapping_mul(0x0100_0000_01b3);
    let mut i = 0;
    while i < n {
        h ^= name[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

// Layouts are shared with the kernel: keep them free of implicit padding and fixed in size.
const _: () = assert!(core::mem::size_of::<RuleRef>() == 8);
const _: () = assert!(core::mem::size_of::<RulePair>() == 16);
const _: () = assert!(core::mem::size_of::<AgentKey>() == 16);
const _: () = assert!(core::mem::size_of::<AgentValue>() == 80);
const _: () = assert!(core::mem::size_of::<ExecKey>() == 16);
const _: () = assert!(core::mem::size_of::<IdentKey>() == 24);
const _: () = assert!(core::mem::size_of::<IdentValue>() == 64);
const _: () = assert!(core::mem::size_of::<PathKey>() == 256);
const _: () = assert!(core::mem::size_of::<NetKey>() == 20);
const _: () = assert!(core::mem::size_of::<NetEntry>() == 16);
const _: () = assert!(core::mem::size_of::<NetValue>() == 8 + 16 * NET_SLOTS);
const _: () = assert!(core::mem::size_of::<BucketKey>() == 16);
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);
const _: () = assert!(core::mem::size_of::<Throttle>() == 24);
const _: () = assert!(core::mem::size_of::<GrantKey>() == 40);
const _: () = assert!(core::mem::size_of::<ProxyAddr>() == 28);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 48);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 32);
const _: () = assert!(core::mem::size_of::<UnixKey>() == 16);
const _: () = assert!(core::mem::size_of::<UnixId>() == 16);
const _: () = assert!(core::mem::size_of::<ApiAddr>() == 24);
const _: () =
    assert!(core::mem::size_of::<Event>() == 32 + 40 + 8 + 16 + COMM_LEN + EVENT_PATH_LEN);
const _: () = assert!(core::mem::size_of::<Event>().is_multiple_of(8));

/// Length of a NUL-terminated byte string held in a fixed buffer.
pub fn c_str_len(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == 0).unwrap_or(buf.len())
}

/// FNV-1a over a NUL-terminated path (at most [`PATH_MAX`] bytes): the object of a file
/// escalation grant. The eBPF side computes the same over the same bytes.
pub fn path_hash(path: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < PATH_MAX && i < path.len() && path[i] != 0 {
        h ^= path[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// The grant object of a destination.
pub const fn net_object(addr: &[u8; 16], port: u16) -> u64 {
    let mut h: u64 = port as u64;
    let mut i = 0;
    while i < 16 {
        h = h.rotate_left(5) ^ addr[i] as u64;
        i += 1;
    }
    h
}

/// How an allowed action is reported: the [`RuleRef::aux`] of an `allow` rule or default.
/// Every other decision (a denial, an escalation, a throttle, a sandboxing, a shadow "would
/// have", a failure closed) is an event whatever this says.
pub mod report {
    /// One event per action.
    pub const EVERY: u16 = 0;
    /// No event: a per-CPU counter per agent, rule and kind in [`crate::maps::COUNTS`].
    pub const COUNT: u16 = 1;
    // 2..=65535: counted, and one action in that many is also an event (flags::SAMPLED).
}

/// Capacity of [`maps::COUNTS`] (allocated as it fills). The daemon makes the entries a
/// generation needs; an action whose entry is not there (the map was full, no daemon runs) is
/// reported as an event instead, and [`CountKey::OVERFLOW`] counts it.
pub const MAX_COUNTS: u32 = 65536;

/// Key of [`maps::COUNTS`]: the agent root, the generation and rule that allowed (rule
/// [`NO_RULE`]: the default posture) and the [`Kind`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub agent: u64,
    pub generation: u32,
    pub rule_id: u32,
    pub kind: u8,
    pub _pad: [u8; 7],
}

impl CountKey {
    /// The entry (written by the daemon, never removed) that counts the actions reported as
    /// events because their entry was not there.
    pub const OVERFLOW: CountKey = CountKey {
        agent: 0,
        generation: 0,
        rule_id: 0,
        kind: 0,
        _pad: [0; 7],
    };
}
const _: () = assert!(core::mem::size_of::<CountKey>() == 24);
const _: () = assert!(core::mem::size_of::<SigioOwner>() == 40 + COMM_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding (asserted above),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentKey {}
    unsafe impl aya::Pod for super::AgentValue {}
    unsafe impl aya::Pod for super::ExecKey {}
    unsafe impl aya::Pod for super::Written {}
    unsafe impl aya::Pod for super::RulePair {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetValue {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::Throttle {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ProxyAddr {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::UnixKey {}
    unsafe impl aya::Pod for super::UnixId {}
    unsafe impl aya::Pod for super::ApiAddr {}
    unsafe impl aya::Pod for super::IdentKey {}
    unsafe impl aya::Pod for super::IdentValue {}
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::SigioOwner {}
    unsafe impl aya::Pod for super::sequence::SeqList {}
    unsafe impl aya::Pod for super::sequence::SeqStateKey {}
    unsafe impl aya::Pod for super::sequence::SeqArmed {}
    unsafe impl aya::Pod for super::sequence::SeqEgressKey {}
}
