//! Sequence rules in the kernel: the per-class list of a class's sequence rules
//! ([`crate::maps::SEQ_CLASSES`]) and the per-agent armed state ([`crate::maps::SEQ_STATE`]).
//!
//! Each sequence rule of an agent also has a class of its own (a *sequence class*, numbered
//! like every class of the generation) whose path rules are the arming paths and whose
//! destination rules are the direct-egress allowlist: the file hook looks the opened path up
//! in it, the network hooks the destination, with the same tables and lookups as rules.

/// Most sequence rules one agent may have (a larger set refuses the generation).
pub const MAX_SEQ_RULES: usize = 4;
/// Capacity of [`crate::maps::SEQ_CLASSES`] (both slots).
pub const MAX_SEQ_CLASSES: u32 = 16384;
/// Capacity of [`crate::maps::SEQ_STATE`]: armed (agent, rule) pairs across agents. When full,
/// an open that would arm a rule is refused ([`crate::Cause::MapFull`]): fail closed.
pub const MAX_SEQ_STATE: u32 = 16384;

/// One sequence rule of a class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqEntry {
    /// The generation-independent id of the rule's armed state: FNV-1a of `<policy>/<rule>`
    /// (as throttle buckets), so an armed rule stays armed across reloads.
    pub state: u64,
    /// How long the rule stays armed, ns; 0: for the rest of the agent's life.
    pub window_ns: u64,
    /// Kernel rule id (slot bit included), what events name.
    pub rule_id: u32,
    /// The rule's sequence class: its arming paths and its direct-egress allowlist.
    pub class: u32,
    /// [`crate::Verdict`] as u8: block or escalate.
    pub verdict: u8,
    /// 1: a shadow rule (reported as "would have", never enforced).
    pub shadow: u8,
    pub _pad: [u8; 6],
}

/// Value of [`crate::maps::SEQ_CLASSES`]: a class's sequence rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqList {
    pub len: u32,
    pub _pad: u32,
    pub entries: [SeqEntry; MAX_SEQ_RULES],
}

/// Key of [`crate::maps::SEQ_STATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqStateKey {
    /// cgroup v2 id of the agent root.
    pub agent_cgroup: u64,
    /// [`SeqEntry::state`].
    pub state: u64,
}

/// Value of [`crate::maps::SEQ_STATE`]: when and by whom the rule was armed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqArmed {
    /// `bpf_ktime_get_ns()` of the arming open.
    pub armed_ns: u64,
    /// The process that opened the file.
    pub tgid: u32,
    /// Kernel rule id of the arming generation (its arming event names it).
    pub rule_id: u32,
}

/// Capacity of [`crate::maps::SEQ_EGRESS_REPORTED`] (least recently used entries go first).
pub const MAX_SEQ_EGRESS_REPORTED: u32 = 4096;
/// The `sequence_egress` program reports at most one refused packet per agent and destination
/// in this time (a retransmitting connection must not flood the event ring).
pub const SEQ_EGRESS_REPORT_NS: u64 = 1_000_000_000;

/// Key of [`crate::maps::SEQ_EGRESS_REPORTED`]: an agent and a destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeqEgressKey {
    /// cgroup v2 id of the agent root.
    pub agent_cgroup: u64,
    /// The destination ([`crate::net_object`] of its address and port).
    pub object: u64,
}
