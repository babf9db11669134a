//! The one source of truth for everything the eBPF programs and the daemon both know: map and
//! program names, limits, map key/value layouts and the decision event record.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled out as `_pad`
//! fields, so the kernel and userspace agree byte for byte and map keys hash deterministically)
//! and is checked for size at compile time.
#![no_std]

/// Names of the BPF maps, as the eBPF object defines them.
pub mod maps {
    /// cgroup id (u64) → [`crate::AgentValue`]: the cgroups that are agent roots.
    pub const AGENTS: &str = "AGENTS";
    /// [`crate::ExecKey`] → [`crate::RuleValue`]: exec rules, by the executable's identity.
    pub const EXEC_RULES: &str = "EXEC_RULES";
    /// LPM trie of [`crate::Net4Key`] → [`crate::RuleValue`]: IPv4 destination rules.
    pub const NET4_RULES: &str = "NET4_RULES";
    /// Ring buffer of [`crate::Event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the eBPF programs (the function names in governance-ebpf).
pub mod programs {
    /// LSM hook `bprm_check_security`: exec decisions.
    pub const EXEC: &str = "bprm_check_security";
    /// `cgroup/connect4`: IPv4 connect decisions.
    pub const CONNECT4: &str = "connect4";
}

/// Names of the read-only globals the daemon sets at load time: byte offsets of kernel struct
/// fields, resolved from the running kernel's BTF (the Rust eBPF toolchain has no CO-RE field
/// relocations, so the loader does this job).
pub mod offsets {
    /// `struct linux_binprm`, field `file` (`struct file *`).
    pub const BPRM_FILE: &str = "OFF_BPRM_FILE";
    /// `struct linux_binprm`, field `filename` (`const char *`).
    pub const BPRM_FILENAME: &str = "OFF_BPRM_FILENAME";
    /// `struct file`, field `f_inode` (`struct inode *`).
    pub const FILE_INODE: &str = "OFF_FILE_INODE";
    /// `struct inode`, field `i_ino` (`unsigned long`).
    pub const INODE_INO: &str = "OFF_INODE_INO";
    /// `struct inode`, field `i_sb` (`struct super_block *`).
    pub const INODE_SB: &str = "OFF_INODE_SB";
    /// `struct super_block`, field `s_dev` (`dev_t`, u32).
    pub const SB_DEV: &str = "OFF_SB_DEV";

    /// Every offset: (global name, struct, field).
    pub const ALL: [(&str, &str, &str); 6] = [
        (BPRM_FILE, "linux_binprm", "file"),
        (BPRM_FILENAME, "linux_binprm", "filename"),
        (FILE_INODE, "file", "f_inode"),
        (INODE_INO, "inode", "i_ino"),
        (INODE_SB, "inode", "i_sb"),
        (SB_DEV, "super_block", "s_dev"),
    ];
}

/// Name of the read-only global holding the policy generation a program instance enforces;
/// every event it emits carries it.
pub const GENERATION_GLOBAL: &str = "GENERATION";

/// How many cgroup levels below the root the kernel programs inspect when they look for the
/// agent a task belongs to. An agent root must sit at a level below this; its descendants may be
/// deeper (the walk goes top-down and stops at the first agent root).
pub const MAX_CGROUP_DEPTH: u32 = 32;
/// Capacity of [`maps::AGENTS`].
pub const MAX_AGENTS: u32 = 4096;
/// Capacity of [`maps::EXEC_RULES`].
pub const MAX_EXEC_RULES: u32 = 16384;
/// Capacity of [`maps::NET4_RULES`].
pub const MAX_NET4_RULES: u32 = 16384;
/// Size of the [`maps::EVENTS`] ring buffer, in bytes (a power of two, a multiple of the page).
pub const EVENTS_RING_BYTES: u32 = 4 << 20;
/// Bytes of path carried in an [`Event`], including the terminating NUL.
pub const EVENT_PATH_LEN: usize = 256;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// Rule id that means "no rule matched; the default posture decided".
pub const NO_RULE: u32 = 0;

/// What kind of action a decision is about.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec = 1,
    Connect4 = 2,
}

impl Kind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Connect4),
            _ => None,
        }
    }
}

/// The verdict a rule asks for. The kernel programs of this stage enforce `Allow` and `Block`;
/// the other verdicts of the policy language arrive with their own enforcement.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 0,
    Block = 1,
}

impl Verdict {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Allow),
            1 => Some(Self::Block),
            _ => None,
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
}

impl Cause {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Rule),
            1 => Some(Self::Default),
            2 => Some(Self::Unreadable),
            _ => None,
        }
    }
}

/// Indexes into the [`maps::COUNTERS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Decision events that did not fit in the ring buffer.
    EventsDropped = 0,
    /// Decisions taken for agents (all verdicts).
    Decisions = 1,
}

/// Number of slots in [`maps::COUNTERS`].
pub const COUNTERS_LEN: u32 = 2;

/// Value of [`maps::AGENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentValue {
    pub agent_id: u32,
    /// Default verdict for exec when no rule matches ([`Verdict`] as u8).
    pub exec_default: u8,
    /// Default verdict for IPv4 connect when no rule matches ([`Verdict`] as u8).
    pub net_default: u8,
    pub _pad: [u8; 2],
}

/// Key of [`maps::EXEC_RULES`]: an agent and the identity of an executable, as the kernel holds
/// it: the superblock's device (kernel `dev_t` encoding, `MAJOR << 20 | MINOR`) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub agent_id: u32,
    pub dev: u32,
    pub ino: u64,
}

/// Value of the rule maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleValue {
    pub rule_id: u32,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    pub _pad: [u8; 3],
}

/// Data part of the [`maps::NET4_RULES`] LPM-trie key. The trie matches bits from the first
/// byte on, so the agent id comes first (big-endian, always matched in full) and the address
/// after it: a rule for `a.b.c.d/n` is stored with prefix length `32 + n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4Key {
    /// Agent id, big-endian.
    pub agent_be: [u8; 4],
    /// IPv4 address, network byte order.
    pub addr: [u8; 4],
}

/// One decision, as the kernel reports it through [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the decision.
    pub time_ns: u64,
    /// cgroup v2 id of the acting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Thread id (kernel `pid`).
    pub pid: u32,
    /// Process id (kernel `tgid`).
    pub tgid: u32,
    pub uid: u32,
    pub agent_id: u32,
    pub rule_id: u32,
    /// [`Kind`] as u8.
    pub kind: u8,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`Cause`] as u8.
    pub cause: u8,
    pub _pad0: u8,
    /// Connect: destination port, host byte order.
    pub port: u16,
    pub _pad1: [u8; 2],
    /// Policy generation of the program instance that decided.
    pub generation: u32,
    /// Connect: destination address (IPv4 in the first 4 bytes, network byte order).
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Exec: the file name the kernel recorded for the exec, NUL-terminated.
    pub path: [u8; EVENT_PATH_LEN],
}

// Layouts are shared with the kernel: keep them free of implicit padding and fixed in size.
const _: () = assert!(core::mem::size_of::<AgentValue>() == 8);
const _: () = assert!(core::mem::size_of::<ExecKey>() == 16);
const _: () = assert!(core::mem::size_of::<RuleValue>() == 8);
const _: () = assert!(core::mem::size_of::<Net4Key>() == 8);
const _: () = assert!(core::mem::size_of::<Event>() == 48 + 16 + COMM_LEN + EVENT_PATH_LEN);
const _: () = assert!(core::mem::size_of::<Event>().is_multiple_of(8));

/// Length of a NUL-terminated byte string held in a fixed buffer.
pub fn c_str_len(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == 0).unwrap_or(buf.len())
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding (asserted above),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentValue {}
    unsafe impl aya::Pod for super::ExecKey {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::Net4Key {}
    unsafe impl aya::Pod for super::Event {}
}
