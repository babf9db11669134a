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
pub mod maps {
    /// Array[2] of u32: the active generation (0: none loaded yet), and the build id of the
    /// object that pinned the maps.
    pub const STATE: &str = "STATE";
    /// [`crate::AgentKey`] → [`crate::AgentValue`]: the cgroups that are agent roots.
    pub const AGENTS: &str = "AGENTS";
    /// [`crate::ExecKey`] → [`crate::RulePair`]: exec rules by the executable's identity.
    pub const EXEC_RULES: &str = "EXEC_RULES";
    /// LPM trie of [`crate::PathKey`] → [`crate::RulePair`]: path rules (file and exec).
    pub const PATH_RULES: &str = "PATH_RULES";
    /// LPM trie of [`crate::NetKey`] → [`crate::NetValue`]: destination rules.
    pub const NET_RULES: &str = "NET_RULES";
    /// [`crate::BucketKey`] → [`crate::Bucket`]: token buckets of throttle rules.
    pub const BUCKETS: &str = "BUCKETS";
    /// [`crate::GrantKey`] → expiry (u64, CLOCK_MONOTONIC ns): approved escalations.
    pub const GRANTS: &str = "GRANTS";
    /// tgid (u32) → class id (u32): processes running under a sandbox profile.
    pub const SANDBOXED: &str = "SANDBOXED";
    /// tgid (u32) → u32 (unused): processes agents may not signal or trace (the daemon, the
    /// proxy).
    pub const PROTECTED: &str = "PROTECTED";
    /// Array[1] of [`crate::ProxyAddr`]: where the policy proxy listens (`enabled` 0: none).
    pub const PROXY: &str = "PROXY";
    /// LRU hash, socket cookie (u64) → [`crate::OrigDst`]: agent TCP connects bound for the
    /// proxy, between connect() and the handshake.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// LRU hash, [`crate::ConnKey`] → [`crate::OrigDst`]: established agent connections to the
    /// proxy, by the client's source port; the proxy takes (reads and deletes) an entry when it
    /// accepts the connection.
    pub const PROXY_CONNS: &str = "PROXY_CONNS";
    /// Ring buffer of [`crate::Event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// [`crate::IdentKey`] → [`crate::IdentValue`]: file rules by the identity of the objects
    /// their paths named at load (files, and directories for what is below them).
    pub const IDENT_RULES: &str = "IDENT_RULES";

    /// Every map, in pin order.
    pub const ALL: [&str; 15] = [
        STATE,
        AGENTS,
        EXEC_RULES,
        PATH_RULES,
        NET_RULES,
        BUCKETS,
        GRANTS,
        SANDBOXED,
        PROTECTED,
        PROXY,
        ORIG_DST,
        PROXY_CONNS,
        EVENTS,
        COUNTERS,
        IDENT_RULES,
    ];
}

/// The eBPF programs: function name in governance-ebpf (also the link pin name), and where it
/// attaches.
pub mod programs {
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
    pub const FILE: Program = lsm("file_open", "file open");
    pub const SOCKET_CREATE: Program = lsm("socket_create", "raw/packet/netlink sockets");
    pub const USERNS: Program = lsm("userns_create", "new user namespaces");
    pub const BPF: Program = lsm("bpf", "bpf() syscall");
    pub const TASK_KILL: Program = lsm("task_kill", "signals to the daemon");
    pub const PTRACE: Program = lsm("ptrace_access_check", "ptrace of the daemon");
    pub const UNLINK: Program = lsm("inode_unlink", "removing pins");
    pub const LINK: Program = lsm("inode_link", "hard links of protected files");
    pub const RENAME: Program = lsm("inode_rename", "moving protected files out");
    pub const CONNECT4: Program = sock("connect4", "IPv4 connect");
    pub const CONNECT6: Program = sock("connect6", "IPv6 connect");
    pub const SENDMSG4: Program = sock("sendmsg4", "IPv4 UDP sendto");
    pub const SENDMSG6: Program = sock("sendmsg6", "IPv6 UDP sendto");
    /// Tie an agent's connection to the proxy to its original destination, by source port.
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

    /// Full enforcement, in attach order: the network and tracepoint programs first (they load
    /// everywhere), the LSM programs after.
    pub const ALL: [Program; 17] = [
        FORK,
        EXIT,
        SOCK_OPS,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        EXEC,
        FILE,
        SOCKET_CREATE,
        USERNS,
        BPF,
        TASK_KILL,
        PTRACE,
        UNLINK,
        LINK,
        RENAME,
    ];
}

/// Where the daemon pins its maps and links (below the bpffs mount).
pub mod pins {
    /// Default pin directory.
    pub const DIR: &str = "/sys/fs/bpf/governance";
    /// Subdirectory of links (a link pinned keeps its program attached).
    pub const LINKS: &str = "links";
    /// Subdirectory of maps.
    pub const MAPS: &str = "maps";
}

/// Names of the read-only globals the daemon sets at load time: byte offsets of kernel struct
/// fields, resolved from the running kernel's BTF (the Rust eBPF toolchain has no CO-RE field
/// relocations, so the loader does this job).
pub mod offsets {
    pub const BPRM_FILE: &str = "OFF_BPRM_FILE";
    pub const BPRM_FILENAME: &str = "OFF_BPRM_FILENAME";
    pub const FILE_INODE: &str = "OFF_FILE_INODE";
    pub const FILE_PATH: &str = "OFF_FILE_PATH";
    pub const FILE_MODE: &str = "OFF_FILE_MODE";
    pub const FILE_FLAGS: &str = "OFF_FILE_FLAGS";
    pub const INODE_INO: &str = "OFF_INODE_INO";
    pub const INODE_SB: &str = "OFF_INODE_SB";
    pub const SB_DEV: &str = "OFF_SB_DEV";
    pub const SB_MAGIC: &str = "OFF_SB_MAGIC";
    pub const TASK_TGID: &str = "OFF_TASK_TGID";
    pub const TASK_REAL_PARENT: &str = "OFF_TASK_REAL_PARENT";
    pub const PATH_DENTRY: &str = "OFF_PATH_DENTRY";
    pub const DENTRY_PARENT: &str = "OFF_DENTRY_PARENT";
    pub const DENTRY_INODE: &str = "OFF_DENTRY_INODE";
    pub const DENTRY_SB: &str = "OFF_DENTRY_SB";
    pub const DENTRY_FLAGS: &str = "OFF_DENTRY_FLAGS";
    pub const DENTRY_NAME: &str = "OFF_DENTRY_NAME";
    pub const QSTR_NAME: &str = "OFF_QSTR_NAME";
    pub const SB_ROOT: &str = "OFF_SB_ROOT";

    /// Every offset: (global name, struct, field).
    pub const ALL: [(&str, &str, &str); 20] = [
        (BPRM_FILE, "linux_binprm", "file"),
        (BPRM_FILENAME, "linux_binprm", "filename"),
        (FILE_INODE, "file", "f_inode"),
        (FILE_PATH, "file", "f_path"),
        (FILE_MODE, "file", "f_mode"),
        (FILE_FLAGS, "file", "f_flags"),
        (INODE_INO, "inode", "i_ino"),
        (INODE_SB, "inode", "i_sb"),
        (SB_DEV, "super_block", "s_dev"),
        (SB_MAGIC, "super_block", "s_magic"),
        (TASK_TGID, "task_struct", "tgid"),
        (TASK_REAL_PARENT, "task_struct", "real_parent"),
        (PATH_DENTRY, "path", "dentry"),
        (DENTRY_PARENT, "dentry", "d_parent"),
        (DENTRY_INODE, "dentry", "d_inode"),
        (DENTRY_SB, "dentry", "d_sb"),
        (DENTRY_FLAGS, "dentry", "d_flags"),
        (DENTRY_NAME, "dentry", "d_name"),
        (QSTR_NAME, "qstr", "name"),
        (SB_ROOT, "super_block", "s_root"),
    ];
}

/// How many cgroup levels below the root the kernel programs inspect when they look for the
/// agent a task belongs to. An agent root must sit at a level below this; its descendants may be
/// deeper (the walk goes top-down and stops at the first agent root).
pub const MAX_CGROUP_DEPTH: u32 = 32;
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
pub const MAX_GRANTS: u32 = 16384;
pub const MAX_SANDBOXED: u32 = 16384;
pub const MAX_PROTECTED: u32 = 64;
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
/// Capacity of [`maps::IDENT_RULES`] (both slots). Allocated as entries are written, not up
/// front: every agent's class has its own entries (a dozen for the built-in protections).
pub const MAX_IDENT_RULES: u32 = 262_144;
/// How many directory levels above an opened (linked, renamed) object the programs look up in
/// [`maps::IDENT_RULES`]. A deeper object, for an agent whose class has identity rules for the
/// access, is refused (fail closed). Any path short enough for a path rule ([`PATH_MAX`]: at
/// most 125 levels of `/x`) is within it.
pub const MAX_IDENT_DEPTH: u32 = 128;

/// The class id of class number `n` (1-based) in the generation `generation`: the slot is the
/// top bit, so a generation's tables never collide with the other slot's.
pub const fn class_id(generation: u32, n: u32) -> u32 {
    ((generation & 1) << 31) | n
}

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
    /// A hard link or rename that would take an object out of the identity rules that protect
    /// it ([`Event::detail`]: [`LINK_OP_LINK`] or [`LINK_OP_RENAME`]).
    Link = 16,
}

/// [`Event::detail`] of a [`Kind::Link`] decision: a new hard link.
pub const LINK_OP_LINK: u8 = 1;
/// [`Event::detail`] of a [`Kind::Link`] decision: a rename (or one side of an exchange).
pub const LINK_OP_RENAME: u8 = 2;

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
    /// Sandbox verdict: the class number (within the slot) of the sandbox profile.
    /// Throttle verdict: whose bucket (see [`BucketKey`]).
    pub aux: u16,
}

/// What applies to an object: the enforcing rule and, if a shadow rule ranks above it, that
/// one (reported as "would have", never enforced).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// 0 for an agent root; for a sandbox profile's class, `cgroup_id` is 0 and this is the
    /// profile's class number.
    pub profile: u32,
}

/// [`AgentValue::allow`] bits: what built-in protections the policy relaxes.
pub mod allow {
    /// Raw (SOCK_RAW), packet (AF_PACKET) and netlink sockets.
    pub const RAW_SOCKETS: u32 = 1;
    /// New user namespaces.
    pub const USER_NAMESPACES: u32 = 2;
}

/// Value of [`maps::AGENTS`]: the agent's class and its defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentValue {
    /// Class id ([`class_id`]): whose rule tables apply.
    pub class: u32,
    /// [`allow`] bits.
    pub allow: u32,
    pub exec_default: RulePair,
    pub file_default: RulePair,
    pub net_default: RulePair,
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

/// Key of [`maps::IDENT_RULES`]: a class and the identity of a file or directory a file rule
/// named when the generation was loaded (device in the kernel `dev_t` encoding, as
/// [`ExecKey`]), and whether the rules are for the object itself, for what is below it, or for
/// the objects named below it (see the scopes).
///
/// `dev` 0 and `ino` 0 is the class's marker (no object has it): present when the class has
/// identity rules, its [`IdentValue`] slot `i` present when some identity rule of the class
/// refuses (or limits) access letter `i`. Agents whose class has none skip the walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentKey {
    pub class: u32,
    pub dev: u32,
    pub ino: u64,
    /// [`SCOPE_SELF`], [`SCOPE_BELOW`] or [`SCOPE_HOLDS`].
    pub scope: u32,
    pub _pad: u32,
}

/// Value of [`maps::IDENT_RULES`]: the rules per access letter, in the order of
/// [`IDENT_LETTERS`] (the bits of [`Event::detail`]); a slot with neither side present has no
/// rule here, and the next directory up decides that letter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentValue {
    pub rules: [RulePair; 4],
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Key of [`maps::PROXY_CONNS`]: the client side of a connection to the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The client's source port, host byte order.
    pub port: u32,
    /// AF_INET (2) or AF_INET6 (10), as on the wire: a dual-stack socket connected to an
    /// IPv4-mapped address counts as AF_INET (the proxy sees an IPv4 peer).
    pub family: u32,
}

/// [`BucketKey::class`] of a throttle rule's template: the full bucket the daemon writes, which
/// the programs copy when they first need a bucket of that rule.
pub const BUCKET_TEMPLATE: u32 = u32::MAX;

/// Key of [`maps::BUCKETS`]: by the rule's [`RuleRef::aux`]: 0 (class, rule), one bucket per
/// agent and rule; 1 (class, 0), one per agent; 2 (0, rule), one shared by every agent;
/// ([`BUCKET_TEMPLATE`], rule) is the template.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub class: u32,
    pub rule_id: u32,
}

/// A token bucket: `capacity` tokens, refilled at one token per `interval_ns`.
/// Written by the daemon with a full bucket; updated by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
    pub capacity: u64,
    pub interval_ns: u64,
}

/// Key of [`maps::GRANTS`]: what an approved escalation lets through again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The agent root.
    pub cgroup_id: u64,
    /// [`Kind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 7],
    /// The object: (dev << 32 ^ ino) for exec, FNV-1a of the path for file, address and port
    /// for connect.
    pub object: u64,
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
    /// The object identity for an escalation grant ([`GrantKey::object`]).
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
    /// Connect/send: the protocol. Socket: the family.
    pub detail: u8,
    /// Connect/send: destination port, host byte order. Signal: the signal.
    pub port: u16,
    /// Connect/send: destination address (IPv6, or IPv4-mapped IPv6).
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Exec: the file name the kernel recorded for the exec. File: the resolved path.
    /// NUL-terminated.
    pub path: [u8; EVENT_PATH_LEN],
}

// Layouts are shared with the kernel: keep them free of implicit padding and fixed in size.
const _: () = assert!(core::mem::size_of::<RuleRef>() == 8);
const _: () = assert!(core::mem::size_of::<RulePair>() == 16);
const _: () = assert!(core::mem::size_of::<AgentKey>() == 16);
const _: () = assert!(core::mem::size_of::<AgentValue>() == 56);
const _: () = assert!(core::mem::size_of::<ExecKey>() == 16);
const _: () = assert!(core::mem::size_of::<IdentKey>() == 24);
const _: () = assert!(core::mem::size_of::<IdentValue>() == 64);
const _: () = assert!(core::mem::size_of::<PathKey>() == 256);
const _: () = assert!(core::mem::size_of::<NetKey>() == 20);
const _: () = assert!(core::mem::size_of::<NetEntry>() == 16);
const _: () = assert!(core::mem::size_of::<NetValue>() == 8 + 16 * NET_SLOTS);
const _: () = assert!(core::mem::size_of::<BucketKey>() == 8);
const _: () = assert!(core::mem::size_of::<Bucket>() == 32);
const _: () = assert!(core::mem::size_of::<GrantKey>() == 24);
const _: () = assert!(core::mem::size_of::<ProxyAddr>() == 28);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 48);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);
const _: () =
    assert!(core::mem::size_of::<Event>() == 32 + 32 + 8 + 16 + COMM_LEN + EVENT_PATH_LEN);
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding (asserted above),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentKey {}
    unsafe impl aya::Pod for super::AgentValue {}
    unsafe impl aya::Pod for super::ExecKey {}
    unsafe impl aya::Pod for super::RulePair {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetValue {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ProxyAddr {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::IdentKey {}
    unsafe impl aya::Pod for super::IdentValue {}
}
