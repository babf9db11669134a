//! Every BPF map of the object: the tables the daemon writes (policy, grants, buckets,
//! protected and sandboxed processes, the proxy's address), the ones the programs fill for the
//! daemon and the proxy (events, counters, proxy connection records), and the per-CPU scratch
//! the programs use in place of stack. Names are the symbol names, which the daemon opens
//! (see governance_common::maps).
use crate::{identity::Answer, kernel::BPF_F_NO_PREALLOC};
use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use governance_common::sequence::{
    MAX_SEQ_CLASSES, MAX_SEQ_EGRESS_REPORTED, MAX_SEQ_STATE, SeqArmed, SeqEgressKey, SeqList,
    SeqStateKey,
};
use governance_common::{
    AgentKey, AgentValue, Bucket, BucketKey, COUNTERS_LEN, ConnKey, EVENTS_RING_BYTES, ExecKey,
    GrantKey, IdentFilter, IdentKey, IdentValue, MAX_AGENT_CREDS, MAX_AGENTS, MAX_BUCKETS,
    MAX_EXEC_RULES, MAX_GRANTS, MAX_IDENT_RULES, MAX_IPC_OBJECTS, MAX_KEYS, MAX_LOADERS,
    MAX_MQUEUES, MAX_NET_RULES, MAX_PATH_RULES, MAX_PROTECTED, MAX_PROXY_CONNS, MAX_RAW_DEVICES,
    MAX_SANDBOX_FILES, MAX_SANDBOXED, MAX_SIGIO_FILES, MAX_THROTTLES, MAX_WRITTEN, NetKey,
    NetValue, OrigDst, PathKey, ProxyAddr, RulePair, SigioOwner, Throttle, Written,
};
use governance_common::{ApiAddr, MAX_UNIX_PROTECTED, MAX_UNIX_RULES, UnixId, UnixKey};
use governance_common::{CountKey, MAX_COUNTS};

#[map]
pub(crate) static STATE: Array<u32> = Array::with_max_entries(4, 0);
#[map]
pub(crate) static AGENTS: HashMap<AgentKey, AgentValue> = HashMap::with_max_entries(MAX_AGENTS, 0);
#[map]
pub(crate) static EXEC_RULES: HashMap<ExecKey, RulePair> =
    HashMap::with_max_entries(MAX_EXEC_RULES, 0);
#[map]
pub(crate) static PATH_RULES: LpmTrie<PathKey, RulePair> =
    LpmTrie::with_max_entries(MAX_PATH_RULES, 0);
#[map]
pub(crate) static NET_RULES: LpmTrie<NetKey, NetValue> =
    LpmTrie::with_max_entries(MAX_NET_RULES, 0);
#[map]
pub(crate) static BUCKETS: HashMap<BucketKey, Bucket> = HashMap::with_max_entries(MAX_BUCKETS, 0);
#[map]
pub(crate) static THROTTLES: HashMap<u32, Throttle> = HashMap::with_max_entries(MAX_THROTTLES, 0);
#[map]
pub(crate) static GRANTS: HashMap<GrantKey, u64> = HashMap::with_max_entries(MAX_GRANTS, 0);
#[map]
pub(crate) static SANDBOXED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SANDBOXED, 0);
/// 1 once any process was marked in `SANDBOXED` (see governance_common::maps).
#[map]
pub(crate) static SANDBOX_ANY: Array<u32> = Array::with_max_entries(2, 0);
#[map]
pub(crate) static PROTECTED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROTECTED, 0);
#[map]
pub(crate) static PROXY: Array<ProxyAddr> = Array::with_max_entries(1, 0);
#[map]
pub(crate) static ORIG_DST: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_PROXY_CONNS, 0);
#[map]
pub(crate) static PROXY_CONNS: LruHashMap<ConnKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_PROXY_CONNS, 0);
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
/// Per-CPU scratch for a proxy connection's record (see `record_for_proxy`).
#[map]
pub(crate) static ORIG_SCRATCH: PerCpuArray<OrigDst> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU scratch for the path key: 260 bytes do not fit the 512-byte stack beside the rest.
#[map]
pub(crate) static PATH_SCRATCH: PerCpuArray<Key<PathKey>> = PerCpuArray::with_max_entries(1, 0);
/// `struct kern_ipc_perm *` (u64) → the agent root (cgroup id) that created that System V IPC
/// object; objects made outside every agent are not here.
#[map]
pub(crate) static IPC_OWNERS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_IPC_OBJECTS, 0);
/// `struct key *` (u64) → the agent root (cgroup id) that made that key or keyring; keys made
/// outside every agent (and the per-uid keyrings, and keys outside every quota) are not here.
/// Preallocated, like `IPC_OWNERS`: a key's record must not fail for want of memory.
#[map]
pub(crate) static KEY_OWNERS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_KEYS, 0);
/// `struct inode *` (u64) of a POSIX message queue → the agent root that made it; queues made
/// outside every agent are not here.
#[map]
pub(crate) static MQ_OWNERS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_MQUEUES, 0);
/// `struct file *` (u64) → the agent that armed it for SIGIO (see sigio.rs). Preallocated: a
/// record must not fail for want of memory when the table has room.
#[map]
pub(crate) static SIGIO_OWNERS: HashMap<u64, SigioOwner> =
    HashMap::with_max_entries(MAX_SIGIO_FILES, 0);
/// 1 once a file was recorded in `SIGIO_OWNERS` (see governance_common::maps).
#[map]
pub(crate) static SIGIO_ANY: Array<u32> = Array::with_max_entries(1, 0);
/// `struct cred *` (u64) → 1: credentials agent tasks with an io_uring context had or made
/// (see creds.rs). Preallocated: a record must not fail for want of memory when the table has
/// room.
#[map]
pub(crate) static AGENT_CREDS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_AGENT_CREDS, 0);
/// Agent root → its decision events the ring had no room for (see governance_common::maps).
#[map]
pub(crate) static EVENTS_DROPPED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_AGENTS, 0);
/// [0] when recording began, [1] 1 once any entry was recorded (see governance_common::maps).
#[map]
pub(crate) static AGENT_CREDS_STATE: Array<u64> = Array::with_max_entries(2, 0);
#[map]
pub(crate) static UNIX_RULES: HashMap<UnixKey, RulePair> =
    HashMap::with_max_entries(MAX_UNIX_RULES, 0);
#[map]
pub(crate) static UNIX_PROTECTED: HashMap<UnixId, u32> =
    HashMap::with_max_entries(MAX_UNIX_PROTECTED, 0);
#[map]
pub(crate) static API_ADDR: Array<ApiAddr> = Array::with_max_entries(1, 0);
/// Per-CPU scratch for a Unix socket's `sun_path` (108 bytes, in 128 so that a masked copy
/// length fits: more than the unix programs' stack can spare beside the event and the decision).
#[map]
pub(crate) static UNIX_SCRATCH: PerCpuArray<[u8; 128]> = PerCpuArray::with_max_entries(1, 0);
/// The object of the open `file_open` decides, for an escalation's grant (file.rs): device and
/// inode, written where an escalation decides and zero elsewhere. Through a map value, not the
/// stack: see `file::grant_identity`.
#[map]
pub(crate) static GRANT_SCRATCH: PerCpuArray<[u8; 16]> = PerCpuArray::with_max_entries(1, 0);
/// `struct file` address → profile mark: files sandboxed processes opened for writing under
/// their profile (see held.rs).
#[map]
pub(crate) static SANDBOX_FILES: HashMap<u64, u32> =
    HashMap::with_max_entries(MAX_SANDBOX_FILES, BPF_F_NO_PREALLOC);
/// Files agents wrote (identity, class 0) → who wrote one first, and its inode (see
/// governance_common::Written).
#[map]
pub(crate) static WRITTEN: HashMap<ExecKey, Written> =
    HashMap::with_max_entries(MAX_WRITTEN, BPF_F_NO_PREALLOC);
/// The dynamic loaders' identities (class 0).
#[map]
pub(crate) static LOADERS: HashMap<ExecKey, u32> = HashMap::with_max_entries(MAX_LOADERS, 0);
/// Character-device majors that are raw views of storage.
#[map]
pub(crate) static RAW_DEVICES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_RAW_DEVICES, 0);
/// Not preallocated (BPF_F_NO_PREALLOC): sized for thousands of agents, filled by few.
#[map]
pub(crate) static IDENT_RULES: HashMap<IdentKey, IdentValue> =
    HashMap::with_max_entries(MAX_IDENT_RULES, BPF_F_NO_PREALLOC);
/// Per slot, the identities that have a key in `IDENT_RULES` (see governance_common::maps).
#[map]
pub(crate) static IDENT_FILTER: Array<IdentFilter> = Array::with_max_entries(2, 0);
/// Per-CPU scratch for identity answers (see `identity::Answer`): the object, the new name, the
/// object a rename replaces.
#[map]
pub(crate) static IDENT_SCRATCH: PerCpuArray<Answer> = PerCpuArray::with_max_entries(3, 0);
/// Per-CPU scratch for a new directory entry's name (NAME_MAX bytes and its NUL), hashed for
/// its `SCOPE_NAME` entry (see `identity::name_refusal`).
#[map]
pub(crate) static NAME_SCRATCH: PerCpuArray<[u8; NAME_BUF]> = PerCpuArray::with_max_entries(1, 0);
/// The size of `NAME_SCRATCH`: a power of two, so that a masked index stays inside it.
pub(crate) const NAME_BUF: usize = governance_common::NAME_MAX + 1;
const _: () = assert!(NAME_BUF.is_power_of_two());
/// Allowed actions counted rather than reported (see `report`). Not preallocated: per-CPU
/// values for every possible entry would be large on big machines.
#[map]
pub(crate) static COUNTS: PerCpuHashMap<CountKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_COUNTS, BPF_F_NO_PREALLOC);
/// The sequence rules of each class (see governance_common::sequence).
#[map]
pub(crate) static SEQ_CLASSES: HashMap<u32, SeqList> =
    HashMap::with_max_entries(MAX_SEQ_CLASSES, BPF_F_NO_PREALLOC);
/// Per slot, 1 when its generation has any sequence rule (see governance_common::maps).
#[map]
pub(crate) static SEQ_ANY: Array<u32> = Array::with_max_entries(2, 0);
/// Per slot, 1 when its generation has an exec allowlist (see governance_common::maps).
#[map]
pub(crate) static ALLOWLIST_ANY: Array<u32> = Array::with_max_entries(2, 0);
/// The sequence rules each agent has armed. Preallocated: an arming must not fail for want of
/// memory when the table has room.
#[map]
pub(crate) static SEQ_STATE: HashMap<SeqStateKey, SeqArmed> =
    HashMap::with_max_entries(MAX_SEQ_STATE, 0);
/// TLS ClientHellos and DNS queries of processes outside every agent (see `discover`).
#[map]
pub(crate) static DISCOVER: RingBuf =
    RingBuf::with_byte_size(governance_common::discover::DISCOVER_RING_BYTES, 0);
/// Per CPU: reported, dropped, rate-limited, and the budget's window (see `discover`).
#[map]
pub(crate) static DISCOVER_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(governance_common::discover::DISCOVER_STATS_LEN, 0);
/// When `sequence_egress` last reported a refused packet, per agent and destination.
#[map]
pub(crate) static SEQ_EGRESS_REPORTED: LruHashMap<SeqEgressKey, u64> =
    LruHashMap::with_max_entries(MAX_SEQ_EGRESS_REPORTED, 0);
