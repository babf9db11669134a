/// Array[4] of u32: the active generation (0: none loaded yet), the build id of the object
/// that pinned the maps, its [`crate::RUNTIME_LAYOUT`] and whether its programs key btrfs files
/// on their subvolume (indices `crate::STATE_*`; builds before the layout was kept have two
/// entries, before the btrfs flag three).
pub const STATE: &str = "STATE";
/// [`crate::AgentKey`] → [`crate::AgentValue`]: the cgroups that are agent roots.
pub const AGENTS: &str = "AGENTS";
/// [`crate::ExecKey`] → [`crate::RulePair`]: exec rules by the executable's identity.
pub const EXEC_RULES: &str = "EXEC_RULES";
/// LPM trie of [`crate::PathKey`] → [`crate::RulePair`]: path rules (file and exec).
pub const PATH_RULES: &str = "PATH_RULES";
/// LPM trie of [`crate::NetKey`] → [`crate::NetValue`]: destination rules.
pub const NET_RULES: &str = "NET_RULES";
/// [`crate::BucketKey`] → [`crate::Bucket`]: the token buckets of throttle rules. Not per
/// generation: a bucket's key names the rule and agent it counts for, not a slot, so the
/// buckets outlive reloads (see [`crate::Throttle`]).
pub const BUCKETS: &str = "BUCKETS";
/// Kernel rule id (u32, slot bit included) → [`crate::Throttle`]: each throttle rule's
/// rate and bucket, per generation like the rule tables.
pub const THROTTLES: &str = "THROTTLES";
/// [`crate::GrantKey`] → expiry (u64, CLOCK_MONOTONIC ns): approved escalations.
pub const GRANTS: &str = "GRANTS";
/// tgid (u32) → profile mark (u32, [`crate::AgentKey::profile`]): processes running under a
/// sandbox profile of their agent.
pub const SANDBOXED: &str = "SANDBOXED";
/// Array[2] of u32: at 0, 1 once the kernel has marked any process in [`SANDBOXED`] (set
/// before the mark, never cleared; each build's maps start empty). Until then, no decision
/// looks its process up there, and no fork or exit touches the table. At 1, how many marks
/// [`SANDBOXED`] holds (the kernel counts what it adds and removes; a handover sets it to what
/// it carried), for [`crate::SANDBOX_RESERVE`].
pub const SANDBOX_ANY: &str = "SANDBOX_ANY";
/// `struct file` address (u64) → profile mark (u32): the regular files sandboxed processes
/// opened for writing under that profile (`file_open` adds, `file_free_security` removes).
/// A sandboxed process writes a regular file only through a descriptor found here with its
/// own mark (see [`crate::FILE_DETAIL_HELD`]).
pub const SANDBOX_FILES: &str = "SANDBOX_FILES";
/// `struct file` address (u64) → [`crate::SigioOwner`]: files on which an agent turned on
/// asynchronous notification (`F_SETFL` with `O_ASYNC`, `FIOASYNC`) or chose the signal
/// (`F_SETSIG`); `file_send_sigiotask` refuses their SIGIO and SIGURG to any task outside that
/// agent's subtree, `file_free_security` forgets the file.
pub const SIGIO_OWNERS: &str = "SIGIO_OWNERS";
/// Kernel address (u64) of a System V IPC object's `kern_ipc_perm` → the cgroup id (u64) of the
/// agent root whose process made it (agents reach only their own; alloc adds, free removes).
pub const IPC_OWNERS: &str = "IPC_OWNERS";
/// Kernel address (u64) of a `struct key` → the agent root that made it (as [`IPC_OWNERS`]).
pub const KEY_OWNERS: &str = "KEY_OWNERS";
/// Kernel address (u64) of a POSIX message queue's inode → the agent root that made it (as
/// [`IPC_OWNERS`]).
pub const MQ_OWNERS: &str = "MQ_OWNERS";
/// Array[1] of u32: 1 once any file was recorded in [`SIGIO_OWNERS`] (never cleared): until
/// then, freeing a file does not look there.
pub const SIGIO_ANY: &str = "SIGIO_ANY";
/// `struct cred` address (u64) → u32 (unused): credentials an agent task with an io_uring
/// context had as its own before a change, and those it made by the change (`cred_prepare`,
/// `cred_transfer` add; `cred_free` removes). io_uring runs a request under the credentials
/// its submitter had when it was queued, which need not be the task's own by the time it
/// runs; the `capable` hook takes a check in such a task under credentials found here (or the
/// task's own) as the agent's, and any other as borrowed by a subsystem (overlayfs acting
/// with its mounter's).
pub const AGENT_CREDS: &str = "AGENT_CREDS";
/// Array[2] of u64: [0] when recording into [`AGENT_CREDS`] began (CLOCK_MONOTONIC ns; 0:
/// not yet): a process that started before it may hold credentials never recorded, and every
/// check in its io_uring tasks is taken as the agent's. [1]: 1 once any entry was recorded.
pub const AGENT_CREDS_STATE: &str = "AGENT_CREDS_STATE";
/// Agent root's cgroup id (u64) → u64: decision events of that agent the ring had no room for
/// (`Counter::EventsDropped` counts them all; this says whose they were, for the daemon's
/// `events.dropped` records). The kernel adds entries; the daemon removes those of agents gone.
pub const EVENTS_DROPPED: &str = "EVENTS_DROPPED";
/// tgid (u32) → u32 (unused): processes agents may not signal or trace (the daemon, the
/// proxy).
pub const PROTECTED: &str = "PROTECTED";
/// Array[1] of [`crate::ProxyAddr`]: where the policy proxy listens (`enabled` 0: none).
pub const PROXY: &str = "PROXY";
/// LRU hash, socket cookie (u64) → [`crate::OrigDst`]: agent TCP connects bound for the
/// proxy, between connect() and the handshake.
pub const ORIG_DST: &str = "ORIG_DST";
/// LRU hash, [`crate::ConnKey`] → [`crate::OrigDst`]: established agent connections to the
/// proxy, by the client's source address and port; the proxy takes (reads and deletes) an entry when it
/// accepts the connection.
pub const PROXY_CONNS: &str = "PROXY_CONNS";
/// Ring buffer of [`crate::Event`] records.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU array of u64 counters, indexed by [`crate::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// [`crate::UnixKey`] → [`crate::RulePair`]: Unix-socket connect rules, by the bound
/// socket file's identity (filesystem sockets) or the hash of the name (abstract sockets).
pub const UNIX_RULES: &str = "UNIX_RULES";
/// [`crate::UnixId`] → [`crate::unix_protected`] value: socket files agents may not
/// connect to (the control socket; container-runtime and service-manager sockets).
pub const UNIX_PROTECTED: &str = "UNIX_PROTECTED";
/// Array[1] of [`crate::ApiAddr`]: where the daemon's TCP control API listens
/// (`enabled` 0: nowhere); agents' connects to it are refused.
pub const API_ADDR: &str = "API_ADDR";

/// [`crate::ExecKey`] (class 0: the file's identity) → [`crate::Written`]: files an agent
/// opened for writing, creating or truncating, and (under an exec allowlist) wrote through any
/// descriptor or mapped shared and writable. Under an exec allowlist they are never mapped
/// executable (see [`crate::MAX_WRITTEN`]).
pub const WRITTEN: &str = "WRITTEN";
/// [`crate::ExecKey`] (class 0) → u32 (unused): the dynamic loaders of this node, which an
/// agent may not run as a program (`ld.so /usr/bin/nc`). Written by the daemon.
pub const LOADERS: &str = "LOADERS";
/// Character-device major (u32) → u32 (unused): drivers that give a raw view of storage
/// (SCSI generic, bsg, NVMe generic), refused to agents like block devices. Written by the
/// daemon from /proc/devices.
pub const RAW_DEVICES: &str = "RAW_DEVICES";

/// [`crate::IdentKey`] → [`crate::IdentValue`]: file rules by the identity of the objects
/// their paths named at load (files, and directories for what is below them).
pub const IDENT_RULES: &str = "IDENT_RULES";
/// Array[2], one per slot, of [`crate::IdentFilter`]: the bit ([`crate::ident_filter_bit`]) of
/// the identity and scope of every key in the slot's part of [`IDENT_RULES`]. A walk looks a
/// level up only where its bit is set. The daemon sets a key's bit before it writes
/// the key; it makes a slot's filter anew (exactly the bits of the slot's entries) only before
/// an install writes that slot, which no decision reads then. Each build's maps start empty.
pub const IDENT_FILTER: &str = "IDENT_FILTER";

/// Per-CPU hash of [`crate::CountKey`] → u64: allowed actions counted rather than
/// reported (see [`crate::report`]).
pub const COUNTS: &str = "COUNTS";

/// Class id (u32, slot bit included) → [`crate::sequence::SeqList`]: the sequence rules of a
/// class, per generation like the rule tables.
pub const SEQ_CLASSES: &str = "SEQ_CLASSES";
/// [`crate::sequence::SeqStateKey`] → [`crate::sequence::SeqArmed`]: the sequence rules each
/// agent has armed. Not per generation (keyed by the rule's name hash), so armed rules stay
/// armed across reloads; the daemon deletes the entries of agents and rules that are gone.
pub const SEQ_STATE: &str = "SEQ_STATE";
/// Ring buffer of [`crate::discover::DiscoverEvent`]: TLS ClientHellos and DNS queries of
/// processes outside every agent (discovery: evidence, never enforcement).
pub const DISCOVER: &str = "DISCOVER";
/// Per-CPU array of u64, indexed by the `crate::discover::DISCOVER_*` slots: what the
/// `discover` program reported, dropped and rate-limited.
pub const DISCOVER_STATS: &str = "DISCOVER_STATS";
/// LRU hash of [`crate::sequence::SeqEgressKey`] → u64 (`bpf_ktime_get_ns()`): when the
/// `sequence_egress` program last reported a refused packet for that agent and destination.
pub const SEQ_EGRESS_REPORTED: &str = "SEQ_EGRESS_REPORTED";
/// Array of u32 indexed by slot: 1 when that slot's generation has any sequence rule. Without
/// it, opens arm nothing and connects are restricted by nothing without looking up their
/// class's sequence rules, and `sequence_egress` passes a packet without walking its socket's
/// cgroups.
pub const SEQ_ANY: &str = "SEQ_ANY";
/// Array of u32 indexed by slot: 1 when that slot's generation has a class whose exec default
/// blocks (an exec allowlist). Without it, writes through descriptors are not looked at (see
/// [`WRITTEN`]).
pub const ALLOWLIST_ANY: &str = "ALLOWLIST_ANY";

/// Every map, in pin order.
pub const ALL: [&str; 41] = [
    STATE,
    AGENTS,
    EXEC_RULES,
    PATH_RULES,
    NET_RULES,
    BUCKETS,
    THROTTLES,
    GRANTS,
    SANDBOXED,
    SANDBOX_ANY,
    SANDBOX_FILES,
    SIGIO_OWNERS,
    SIGIO_ANY,
    AGENT_CREDS,
    AGENT_CREDS_STATE,
    IPC_OWNERS,
    KEY_OWNERS,
    MQ_OWNERS,
    PROTECTED,
    PROXY,
    ORIG_DST,
    PROXY_CONNS,
    EVENTS,
    EVENTS_DROPPED,
    COUNTERS,
    UNIX_RULES,
    UNIX_PROTECTED,
    API_ADDR,
    WRITTEN,
    LOADERS,
    RAW_DEVICES,
    IDENT_RULES,
    IDENT_FILTER,
    COUNTS,
    SEQ_CLASSES,
    SEQ_STATE,
    DISCOVER,
    DISCOVER_STATS,
    SEQ_EGRESS_REPORTED,
    SEQ_ANY,
    ALLOWLIST_ANY,
];
