//! Discovery of agents nobody labelled: what the `discover` program (governance-ebpf's
//! `discover.rs`, `cgroup_skb/egress` at the cgroup2 root) hands to the daemon for processes
//! outside every agent. Evidence only: the program always lets the packet pass.

/// Bytes of payload a [`DiscoverEvent`] carries: the start of a TLS ClientHello (its server
/// name is within it for the ClientHellos of common clients, post-quantum key shares included)
/// or a whole DNS query.
pub const DISCOVER_BYTES: usize = 2048;
/// Size of the [`crate::maps::DISCOVER`] ring buffer, in bytes (a power of two, a multiple of
/// the page): about 120 events waiting for the daemon.
pub const DISCOVER_RING_BYTES: u32 = 256 << 10;
/// Events each CPU may report per [`DISCOVER_WINDOW_NS`]; more are counted
/// ([`DISCOVER_LIMITED`]) and dropped, so a process opening thousands of TLS connections a
/// second costs the daemon a bounded amount.
pub const DISCOVER_BUDGET: u64 = 200;
pub const DISCOVER_WINDOW_NS: u64 = 1_000_000_000;

/// [`DiscoverEvent::kind`]: a TLS ClientHello (TCP payload `16 03 xx LL LL 01`).
pub const DISCOVER_TLS: u8 = 1;
/// The `discover` program's read-only global: 1 when the kernel lets cgroup_skb programs call
/// `bpf_get_current_pid_tgid` and `bpf_get_current_comm` (probed by the loader; 6.1 does not,
/// and the evidence is then attributed to the socket's cgroup).
pub const TASK_HELPERS_GLOBAL: &str = "DISCOVER_TASK_HELPERS";
/// [`DiscoverEvent::kind`]: a DNS query (UDP to port 53).
pub const DISCOVER_DNS: u8 = 2;

/// Slots of [`crate::maps::DISCOVER_STATS`] (per CPU, u64).
pub const DISCOVER_REPORTED: u32 = 0;
/// Not reported: the ring was full.
pub const DISCOVER_DROPPED: u32 = 1;
/// Not reported: over the per-CPU budget.
pub const DISCOVER_LIMITED: u32 = 2;
/// Window start (ns) and events in it, per CPU: the budget's state.
pub const DISCOVER_WINDOW: u32 = 3;
pub const DISCOVER_IN_WINDOW: u32 = 4;
pub const DISCOVER_STATS_LEN: u32 = 5;

/// One ClientHello or DNS query of a process outside every agent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DiscoverEvent {
    /// The socket's cgroup (v2 id).
    pub cgroup_id: u64,
    /// The socket cookie.
    pub cookie: u64,
    /// The task the packet was sent from (`bpf_get_current_pid_tgid`): the sender when the
    /// packet leaves in its own system call (the first data of a connection, a DNS query), but
    /// an unrelated task when it leaves later from a softirq; the daemon checks it against
    /// the cgroup before trusting it.
    pub pid_tgid: u64,
    pub time_ns: u64,
    pub comm: [u8; crate::COMM_LEN],
    /// [`DISCOVER_TLS`] or [`DISCOVER_DNS`].
    pub kind: u8,
    pub _pad: [u8; 1],
    /// Destination port (host order).
    pub port: u16,
    /// Bytes of `payload` filled.
    pub len: u32,
    pub payload: [u8; DISCOVER_BYTES],
}
const _: () = assert!(core::mem::size_of::<DiscoverEvent>() == 56 + DISCOVER_BYTES);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, no implicit padding (asserted above).
unsafe impl aya::Pod for DiscoverEvent {}
