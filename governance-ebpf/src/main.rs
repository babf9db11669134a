//! governance's kernel side: decide, from BPF maps, whether a task in an agent cgroup may do
//! what it is about to do, and report every such decision through a ring buffer.
//!
//! Each program has the same shape: read the active generation, find the agent the current
//! task belongs to (a walk up its cgroup ancestry, or its sandbox profile), look the action up
//! in that agent's class tables, fall back to the class default, apply the verdict (allow,
//! block, throttle, sandbox, escalate), emit an event, return. Tasks outside every agent are not
//! touched and produce no event. The verdict never depends on whether the event could be
//! written: a full ring buffer only bumps a drop counter.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: one stack slot, no copies for the verifier to track.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{
            bpf_d_path, bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
            bpf_get_current_task, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_send_signal,
        },
    },
    macros::{cgroup_sock_addr, lsm, map, raw_tracepoint, sock_ops},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{LsmContext, RawTracePointContext, SockAddrContext, SockOpsContext},
};
use governance_common::{
    AgentKey, AgentValue, Bucket, BucketKey, COUNTERS_LEN, Cause, ConnKey, Counter,
    EVENTS_RING_BYTES, Event, ExecKey, GrantKey, Kind, MAX_AGENTS, MAX_BUCKETS, MAX_CGROUP_DEPTH,
    MAX_EXEC_RULES, MAX_GRANTS, MAX_NET_RULES, MAX_PATH_RULES, MAX_PROTECTED, MAX_PROXY_CONNS,
    MAX_SANDBOXED, MAX_THROTTLES, NET_SLOTS, NO_RULE, NetKey, NetValue, OrigDst, PATH_MAX, PathKey,
    ProxyAddr, RulePair, RuleRef, Throttle, Verdict, access, allow, flags, net_object, proto, slot,
};

#[map]
static STATE: Array<u32> = Array::with_max_entries(2, 0);
#[map]
static AGENTS: HashMap<AgentKey, AgentValue> = HashMap::with_max_entries(MAX_AGENTS, 0);
#[map]
static EXEC_RULES: HashMap<ExecKey, RulePair> = HashMap::with_max_entries(MAX_EXEC_RULES, 0);
#[map]
static PATH_RULES: LpmTrie<PathKey, RulePair> = LpmTrie::with_max_entries(MAX_PATH_RULES, 0);
#[map]
static NET_RULES: LpmTrie<NetKey, NetValue> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);
#[map]
static BUCKETS: HashMap<BucketKey, Bucket> = HashMap::with_max_entries(MAX_BUCKETS, 0);
#[map]
static THROTTLES: HashMap<u32, Throttle> = HashMap::with_max_entries(MAX_THROTTLES, 0);
#[map]
static GRANTS: HashMap<GrantKey, u64> = HashMap::with_max_entries(MAX_GRANTS, 0);
#[map]
static SANDBOXED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SANDBOXED, 0);
#[map]
static PROTECTED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROTECTED, 0);
#[map]
static PROXY: Array<ProxyAddr> = Array::with_max_entries(1, 0);
#[map]
static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(MAX_PROXY_CONNS, 0);
#[map]
static PROXY_CONNS: LruHashMap<ConnKey, OrigDst> = LruHashMap::with_max_entries(MAX_PROXY_CONNS, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
/// Per-CPU scratch for a proxy connection's record (see `record_for_proxy`).
#[map]
static ORIG_SCRATCH: PerCpuArray<OrigDst> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU scratch for the path key: 260 bytes do not fit the 512-byte stack beside the rest.
#[map]
static PATH_SCRATCH: PerCpuArray<Key<PathKey>> = PerCpuArray::with_max_entries(1, 0);

// Byte offsets of kernel struct fields, written by the loader from the running kernel's BTF
// (see governance_common::offsets). They live in .rodata, which the loader freezes, so the
// verifier sees them as constants. Read them with read_volatile: otherwise the compiler would
// fold in the placeholder 0.
macro_rules! offsets {
    ($($name:ident),*) => { $(#[unsafe(no_mangle)] static $name: u64 = 0;)* };
}
offsets!(
    OFF_BPRM_FILE,
    OFF_BPRM_FILENAME,
    OFF_FILE_INODE,
    OFF_FILE_PATH,
    OFF_FILE_MODE,
    OFF_FILE_FLAGS,
    OFF_INODE_INO,
    OFF_INODE_SB,
    OFF_SB_DEV,
    OFF_SB_MAGIC,
    OFF_TASK_TGID,
    OFF_TASK_REAL_PARENT
);

#[inline(always)]
fn off(global: &u64) -> u64 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(global) }
}

const EPERM: i32 = 1;
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
const FMODE_EXEC_FLAG: u32 = 0x20; // __FMODE_EXEC, in f_flags
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const AF_NETLINK: i32 = 16;
const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;
const SOCK_TYPE_MASK: i32 = 0xf;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const SIGKILL: u32 = 9;
const BPF_NOEXIST: u64 = 1;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper call without pointer arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Read a `T` at `base + off` in kernel memory.
#[inline(always)]
unsafe fn read_at<T>(base: u64, off: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }
}

/// The agent the current task belongs to.
struct Agent {
    value: AgentValue,
    generation: u32,
    /// cgroup id of the agent root.
    root: u64,
    /// cgroup id of the task itself.
    cgroup: u64,
    tgid: u32,
    sandboxed: bool,
}

/// The agent of the current task, or None for tasks outside every agent.
///
/// Walks the cgroup ancestry top-down (level 1 is the first level below the root) and stops at
/// the first agent root, so the outermost agent governs: a task cannot escape its agent's policy
/// by having a descendant cgroup labelled as some other agent. The helper returns 0 past the
/// task's own level, which ends the walk early; the constant bound is for the verifier.
///
/// A process that a sandbox verdict marked runs under its profile's class instead. A profile
/// the current generation does not have blocks everything (fail closed, see `no_profile`).
#[inline(always)]
fn current_agent() -> Option<Agent> {
    let generation = STATE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return None;
    }
    let slot = slot(generation);
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper call without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return None;
        }
        let key = AgentKey {
            cgroup_id: id,
            slot,
            profile: 0,
        };
        // SAFETY: the map value is Copy and read immediately.
        if let Some(found) = unsafe { AGENTS.get(&key) } {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            let mut agent = Agent {
                value: *found,
                generation,
                root: id,
                // SAFETY: helper call without pointer arguments.
                cgroup: unsafe { bpf_get_current_cgroup_id() },
                tgid,
                sandboxed: false,
            };
            // SAFETY: as above.
            if let Some(profile) = unsafe { SANDBOXED.get(&tgid) } {
                agent.sandboxed = true;
                let key = AgentKey {
                    cgroup_id: 0,
                    slot,
                    profile: *profile,
                };
                // SAFETY: as above.
                agent.value = match unsafe { AGENTS.get(&key) } {
                    Some(v) => *v,
                    None => no_profile(),
                };
            }
            return Some(agent);
        }
        level += 1;
    }
    None
}

/// The class of a sandboxed process whose profile is gone: no rules, every default blocks.
#[inline(always)]
fn no_profile() -> AgentValue {
    let block = RulePair {
        enforce: RuleRef {
            rule_id: NO_RULE,
            verdict: Verdict::Block as u8,
            present: 1,
            aux: 0,
        },
        shadow: RuleRef::default(),
    };
    AgentValue {
        class: 0,
        allow: 0,
        exec_default: block,
        file_default: block,
        net_default: block,
    }
}

/// A decision, before it is reported.
struct Decision {
    kind: Kind,
    verdict: Verdict,
    cause: Cause,
    rule_id: u32,
    denied: bool,
    shadow: RuleRef,
    object: u64,
    extra_flags: u8,
}

impl Decision {
    fn builtin(kind: Kind, denied: bool) -> Self {
        Self {
            kind,
            verdict: if denied {
                Verdict::Block
            } else {
                Verdict::Allow
            },
            cause: Cause::Builtin,
            rule_id: NO_RULE,
            denied,
            shadow: RuleRef::default(),
            object: 0,
            extra_flags: 0,
        }
    }

    fn fail_closed(kind: Kind, cause: Cause) -> Self {
        Self {
            cause,
            ..Self::builtin(kind, true)
        }
    }
}

/// Unknown verdict values (a newer daemon, a corrupted map) block: fail closed.
#[inline(always)]
fn verdict_of(raw: u8) -> Verdict {
    Verdict::from_u8(raw).unwrap_or(Verdict::Block)
}

/// Apply what the tables say: the enforcing rule's verdict (or the default's), with the
/// throttle bucket, sandbox mark and escalation grant it needs. `object` identifies the thing
/// acted on, for escalation grants.
#[inline(always)]
fn apply(
    kind: Kind,
    agent: &Agent,
    rules: Option<RulePair>,
    default: RulePair,
    object: u64,
) -> Decision {
    let (pair, cause) = match rules {
        Some(p) if p.enforce.present != 0 => (p, Cause::Rule),
        // Only a shadow rule matched: the default enforces, the shadow rule is reported.
        Some(p) => (
            RulePair {
                enforce: default.enforce,
                shadow: p.shadow,
            },
            Cause::Default,
        ),
        None => (default, Cause::Default),
    };
    let rule = pair.enforce;
    let verdict = verdict_of(rule.verdict);
    let mut d = Decision {
        kind,
        verdict,
        cause,
        rule_id: rule.rule_id,
        denied: false,
        shadow: if pair.shadow.present != 0 && pair.shadow.verdict != rule.verdict {
            pair.shadow
        } else {
            RuleRef::default()
        },
        object,
        extra_flags: 0,
    };
    match verdict {
        Verdict::Allow => {}
        Verdict::Block => d.denied = true,
        Verdict::Throttle => d.denied = !take_token(agent.root, &rule),
        Verdict::Sandbox => {
            // Marked from now on, children included (sched_process_fork). If the mark cannot
            // be stored, the action is refused rather than run unconstrained.
            let profile = u32::from(rule.aux);
            if SANDBOXED.insert(&agent.tgid, &profile, 0).is_err() {
                count(Counter::MapFull);
                d.denied = true;
            }
        }
        Verdict::Escalate => {
            let key = GrantKey {
                cgroup_id: agent.root,
                kind: kind as u8,
                _pad: [0; 7],
                object,
            };
            // SAFETY: the value is read immediately.
            match unsafe { GRANTS.get(&key) } {
                Some(expiry) if *expiry > now() => d.cause = Cause::Granted,
                _ => d.denied = true,
            }
        }
    }
    d
}

/// Take one token from the rule's bucket; false when empty.
///
/// The rule's rate comes from this generation's THROTTLES entry; the bucket is per agent and
/// rule, per agent, or shared by all agents of the rule (the rule's `aux`, see
/// governance_common::BucketKey), keyed by the agent root and the rule's generation-independent
/// bucket id, so a reload carries it over. A missing bucket is created full; if the rate is
/// missing or the bucket cannot be stored the action is refused (fail closed) and counted.
///
/// Two CPUs racing on one bucket may both see the same token: the refill and take are plain
/// loads and stores (bpf_spin_lock needs BTF-described maps, which this toolchain does not
/// emit), so the bound is exact on one CPU and may be exceeded by one per racing CPU.
#[inline(always)]
fn take_token(root: u64, rule: &RuleRef) -> bool {
    // SAFETY: the value is copied immediately.
    let Some(t) = (unsafe { THROTTLES.get(&rule.rule_id) }).copied() else {
        count(Counter::MapFull);
        return false;
    };
    let key = match rule.aux {
        1 => BucketKey {
            owner: root,
            rule: 0,
        },
        2 => BucketKey {
            owner: 0,
            rule: t.bucket,
        },
        _ => BucketKey {
            owner: root,
            rule: t.bucket,
        },
    };
    let b = match BUCKETS.get_ptr_mut(&key) {
        Some(b) => b,
        None => {
            let full = Bucket {
                tokens: t.capacity,
                last_ns: 0,
            };
            let _ = BUCKETS.insert(&key, &full, BPF_NOEXIST);
            match BUCKETS.get_ptr_mut(&key) {
                Some(b) => b,
                None => {
                    count(Counter::MapFull);
                    return false;
                }
            }
        }
    };
    // SAFETY: a map value pointer, valid for the program's run.
    let b = unsafe { &mut *b };
    let at = now();
    if b.last_ns == 0 || at < b.last_ns {
        b.last_ns = at;
    } else if let Some(refill) = (at - b.last_ns).checked_div(t.interval_ns)
        && refill > 0
    {
        b.tokens = b.tokens.saturating_add(refill);
        b.last_ns += refill * t.interval_ns;
    }
    // At most the burst of the generation deciding (a reload may have lowered it).
    if b.tokens > t.capacity {
        b.tokens = t.capacity;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// Report a decision. `fill` writes the action-specific fields (path, address, detail).
#[inline(always)]
fn emit(agent: &Agent, d: &Decision, fill: impl FnOnce(&mut Event)) {
    count(Counter::Decisions);
    if d.denied {
        count(Counter::Denials);
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    // SAFETY: the entry is a reserved, exclusively owned record of size_of::<Event>() bytes.
    // Every field is written before submit, except the tail of `path` past its NUL.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.time_ns = now();
    ev.cgroup_id = agent.cgroup;
    ev.agent_cgroup = agent.root;
    ev.object = d.object;
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.ppid = parent_tgid();
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.class = agent.value.class;
    ev.rule_id = d.rule_id;
    ev.shadow_rule_id = d.shadow.rule_id;
    ev.generation = agent.generation;
    ev.kind = d.kind as u8;
    ev.verdict = d.verdict as u8;
    ev.cause = d.cause as u8;
    let mut f = d.extra_flags;
    if d.denied {
        f |= flags::DENIED;
    }
    if d.shadow.present != 0 {
        f |= flags::SHADOW;
    }
    if agent.sandboxed {
        f |= flags::SANDBOXED;
    }
    ev.flags = f;
    ev.shadow_verdict = d.shadow.verdict;
    ev.detail = 0;
    ev.port = 0;
    ev.addr = [0; 16];
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.path[0] = 0;
    fill(ev);
    // No wakeup per event (about a microsecond each, and a context switch to the daemon per
    // decision): the daemon drains on a short timer, and is woken early only when the ring is
    // filling up.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > u64::from(EVENTS_RING_BYTES / 8) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// tgid of the current task's parent (0 if unreadable).
#[inline(always)]
fn parent_tgid() -> u32 {
    // SAFETY: helper call without pointer arguments; reads go through probe_read.
    unsafe {
        let task = bpf_get_current_task();
        match read_at::<u64>(task, off(&OFF_TASK_REAL_PARENT)) {
            Ok(parent) => read_at::<u32>(parent, off(&OFF_TASK_TGID)).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// LSM return for a decision: 0 lets the action go on, -EPERM refuses it.
#[inline(always)]
fn lsm_ret(d: &Decision) -> i32 {
    if d.denied { -EPERM } else { 0 }
}

/// (device, inode) of `file`: the object itself, whatever name led to it.
#[inline(always)]
fn file_identity(file: u64) -> Result<(u32, u64), i32> {
    // SAFETY: see read_at.
    unsafe {
        let inode: u64 = read_at(file, off(&OFF_FILE_INODE))?;
        let ino: u64 = read_at(inode, off(&OFF_INODE_INO))?;
        let sb: u64 = read_at(inode, off(&OFF_INODE_SB))?;
        let dev: u32 = read_at(sb, off(&OFF_SB_DEV))?;
        Ok((dev, ino))
    }
}

/// Resolve `file`'s path into the per-CPU path key (after the class and access bytes).
/// Ok(key) or the cause to fail closed with.
#[inline(always)]
fn resolve_path(file: u64, class: u32) -> Result<&'static mut Key<PathKey>, Cause> {
    let key = PATH_SCRATCH.get_ptr_mut(0).ok_or(Cause::Unreadable)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let key = unsafe { &mut *key };
    key.prefix_len = ((5 + PATH_MAX) * 8) as u32;
    key.data.class_be = class.to_be_bytes();
    // `file` came from the hook's BTF-typed arguments (or a field load from one), so the
    // verifier knows `file + f_path` is a `struct path *`, as bpf_d_path requires.
    // SAFETY: the helper writes at most PATH_MAX bytes into the buffer.
    let n = unsafe {
        bpf_d_path(
            (file + off(&OFF_FILE_PATH)) as *mut _,
            key.data.path.as_mut_ptr().cast(),
            PATH_MAX as u32,
        )
    };
    if n < 0 {
        // -ENAMETOOLONG: longer than a path rule can describe. Deny, never guess.
        return Err(if n == -36 {
            Cause::TooLong
        } else {
            Cause::Unreadable
        });
    }
    Ok(key)
}

/// The path rules for one access letter, or None.
#[inline(always)]
fn path_rules(key: &mut Key<PathKey>, access: u8) -> Option<RulePair> {
    key.data.access = access;
    PATH_RULES.get(&*key).copied()
}

/// Fold one access's answer (its rules, else the default) into the most severe so far.
#[inline(always)]
fn more_severe(
    worst: Option<RulePair>,
    found: Option<RulePair>,
    default: RulePair,
    matched: &mut bool,
) -> Option<RulePair> {
    *matched |= found.is_some();
    let pair = match found {
        Some(p) if p.enforce.present != 0 => p,
        Some(p) => RulePair {
            enforce: default.enforce,
            shadow: p.shadow,
        },
        None => default,
    };
    match worst {
        Some(w) if w.enforce.verdict >= pair.enforce.verdict => Some(w),
        _ => Some(pair),
    }
}

/// Copy the resolved path into the event.
#[inline(always)]
fn copy_path(ev: &mut Event, path: &[u8; PATH_MAX]) {
    // SAFETY: bounded by the destination buffer; the source is a NUL-terminated kernel string.
    if unsafe { bpf_probe_read_kernel_str_bytes(path.as_ptr(), &mut ev.path) }.is_err() {
        ev.path[0] = 0;
    }
}

/// FNV-1a of the resolved path (see governance_common::path_hash).
#[inline(always)]
fn hash_path(path: &[u8; PATH_MAX]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < PATH_MAX {
        let c = path[i];
        if c == 0 {
            break;
        }
        h ^= c as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// Exec: decide on the file the kernel is about to execute (`bprm->file`), never the name.
///
/// First the (device, inode) of that file against exact exec rules: the identity holds
/// whatever name led to it (symlink, hardlink, /proc/self/root, /proc/self/fd/N, execveat).
/// Then its resolved path (bpf_d_path) against prefix rules. Then the default. The hook runs
/// for each interpreter of a `#!` chain too.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // int bprm_check_security(struct linux_binprm *bprm); the last argument is the return
    // value of the BPF LSM programs that ran before this one. Never overturn a denial.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let bprm: u64 = ctx.arg(0);
    // A direct load from the BTF-typed `bprm`, so the verifier types `file` as a
    // `struct file *` (bpf_d_path needs that; bpf_probe_read would give a plain number).
    // SAFETY: the verifier turns this into a fault-tolerant kernel load.
    let file: u64 = unsafe { core::ptr::read_volatile((bprm + off(&OFF_BPRM_FILE)) as *const u64) };
    let d = exec_decision(&agent, file, true);
    emit(&agent, &d, |ev| {
        // The name the exec was asked for, for the record; the decision used the file.
        // SAFETY: see read_at.
        if let Ok(name) = unsafe { read_at::<u64>(bprm, off(&OFF_BPRM_FILENAME)) } {
            // SAFETY: bounded by the destination buffer; errors leave path empty.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
            {
                ev.path[0] = 0;
            }
        }
    });
    lsm_ret(&d)
}

#[inline(always)]
fn exec_decision(agent: &Agent, file: u64, with_path: bool) -> Decision {
    let class = agent.value.class;
    let default = agent.value.exec_default;
    let (dev, ino) = match file_identity(file) {
        Ok(id) => id,
        Err(_) => return Decision::fail_closed(Kind::Exec, Cause::Unreadable),
    };
    let object = ((dev as u64) << 32) ^ ino;
    let key = ExecKey { class, dev, ino };
    // SAFETY: the value is read immediately.
    if let Some(rules) = unsafe { EXEC_RULES.get(&key) } {
        return apply(Kind::Exec, agent, Some(*rules), default, object);
    }
    if !with_path {
        return apply(Kind::Exec, agent, None, default, object);
    }
    match resolve_path(file, class) {
        Ok(key) => {
            let rules = path_rules(key, access::EXEC);
            apply(Kind::Exec, agent, rules, default, object)
        }
        Err(cause) => Decision::fail_closed(Kind::Exec, cause),
    }
}

/// File opens: the resolved path of the opened file against the class's path rules, once per
/// access the open asks for (read, write, create, truncate); the most severe answer wins.
/// Opens for exec are decided by the exec hook, not here.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let file: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    let (fmode, fflags) = unsafe {
        match (
            read_at::<u32>(file, off(&OFF_FILE_MODE)),
            read_at::<u32>(file, off(&OFF_FILE_FLAGS)),
        ) {
            (Ok(m), Ok(f)) => (m, f),
            _ => {
                let d = Decision::fail_closed(Kind::File, Cause::Unreadable);
                emit(&agent, &d, |_| {});
                return lsm_ret(&d);
            }
        }
    };
    // Opens for exec (the binary, a #! interpreter) are decided by the exec hook. The open
    // flag (__FMODE_EXEC) is what this kernel's open_exec sets; FMODE_EXEC may come later.
    if fmode & FMODE_EXEC != 0 || fflags & FMODE_EXEC_FLAG != 0 {
        return 0;
    }
    let read = fmode & FMODE_READ != 0;
    let write = fmode & FMODE_WRITE != 0;
    let create = fflags & O_CREAT != 0;
    let truncate = fflags & O_TRUNC != 0;
    let asked =
        u8::from(read) | u8::from(write) << 1 | u8::from(create) << 2 | u8::from(truncate) << 3;
    let key = match resolve_path(file, agent.value.class) {
        Ok(key) => key,
        Err(cause) => {
            let d = Decision::fail_closed(Kind::File, cause);
            emit(&agent, &d, |ev| ev.detail = asked);
            return lsm_ret(&d);
        }
    };
    // The most severe of the per-access answers (verdicts are ordered by severity). Written
    // out per access: an indexed array of letters makes the verifier see pointer arithmetic.
    let default = agent.value.file_default;
    let mut worst: Option<RulePair> = None;
    let mut matched = false;
    if read {
        worst = more_severe(worst, path_rules(key, access::READ), default, &mut matched);
    }
    if write {
        worst = more_severe(worst, path_rules(key, access::WRITE), default, &mut matched);
    }
    if create {
        worst = more_severe(
            worst,
            path_rules(key, access::CREATE),
            default,
            &mut matched,
        );
    }
    if truncate {
        worst = more_severe(
            worst,
            path_rules(key, access::TRUNCATE),
            default,
            &mut matched,
        );
    }
    let object = hash_path(&key.data.path);
    let rules = if matched { worst } else { None };
    let d = apply(Kind::File, &agent, rules, agent.value.file_default, object);
    emit(&agent, &d, |ev| {
        ev.detail = asked;
        copy_path(ev, &key.data.path);
    });
    lsm_ret(&d)
}

/// Network: the destination (IPv4 as IPv4-mapped IPv6) against the class's prefix table. One
/// longest-prefix lookup yields every rule that covers the address, most specific first; the
/// first whose port and protocol match decides.
#[inline(always)]
fn net_decision(
    kind: Kind,
    agent: &Agent,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
) -> (Decision, bool) {
    let key = Key::new(
        ((4 + 16) * 8) as u32,
        NetKey {
            class_be: agent.value.class.to_be_bytes(),
            addr,
        },
    );
    let mut rules: Option<RulePair> = None;
    let mut via_proxy = false;
    if let Some(v) = NET_RULES.get(&key) {
        let mut pair = RulePair::default();
        let mut i = 0;
        while i < NET_SLOTS {
            if i as u32 >= v.len {
                break;
            }
            let e = &v.entries[i];
            if port >= e.port_lo
                && port <= e.port_hi
                && (e.proto == proto::ANY || e.proto == protocol)
            {
                if e.shadow != 0 {
                    if pair.shadow.present == 0 {
                        pair.shadow = e.rule;
                    }
                } else {
                    pair.enforce = e.rule;
                    via_proxy = e.via_proxy != 0;
                    break;
                }
            }
            i += 1;
        }
        if pair.enforce.present != 0 || pair.shadow.present != 0 {
            rules = Some(pair);
        }
    }
    let object = net_object(&addr, port);
    let d = apply(kind, agent, rules, agent.value.net_default, object);
    (d, via_proxy)
}

#[inline(always)]
fn mapped4(ip4_be: u32) -> [u8; 16] {
    let b = ip4_be.to_ne_bytes(); // user_ip4 holds the address in network byte order.
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

#[inline(always)]
fn ip6(words: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        a[i * 4] = b[0];
        a[i * 4 + 1] = b[1];
        a[i * 4 + 2] = b[2];
        a[i * 4 + 3] = b[3];
        i += 1;
    }
    a
}

/// Is `addr:port` where the policy proxy listens? (`addr` IPv6 or IPv4-mapped.)
/// Compared word by word: building the two candidate addresses would cost 32 bytes of the
/// 512-byte stack.
#[inline(always)]
fn is_proxy(p: &ProxyAddr, addr: &[u8; 16], port: u16) -> bool {
    if p.enabled == 0 || u32::from(port.to_be()) != p.port {
        return false;
    }
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let (w0, w1, w2, w3) = (w(0), w(4), w(8), w(12));
    let v4 = w0 == 0 && w1 == 0 && w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]) && w3 == p.ip4;
    v4 || (w0 == p.ip6[0] && w1 == p.ip6[1] && w2 == p.ip6[2] && w3 == p.ip6[3])
}

/// Remember where an agent's TCP connection to the proxy was going, by socket cookie, until
/// the handshake (see `sock_ops`) files it under the client's port for the proxy to find.
/// The record is built in per-CPU scratch: the connect programs' stack is nearly full (6.1's
/// verifier counts 512 bytes across the whole call chain, so no subprogram either).
#[inline(always)]
fn record_for_proxy(
    ctx: &SockAddrContext,
    agent: &Agent,
    addr: &[u8; 16],
    port: u16,
    redirected: bool,
) -> bool {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(orig) = ORIG_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let orig = unsafe { &mut *orig };
    orig.addr = if redirected { *addr } else { [0; 16] };
    orig.port = if redirected { port } else { 0 };
    orig.redirected = u8::from(redirected);
    orig._pad = 0;
    orig.tgid = agent.tgid;
    orig.agent_cgroup = agent.root;
    orig.cgroup_id = agent.cgroup;
    orig.generation = agent.generation;
    orig._pad2 = 0;
    ORIG_DST.insert(&cookie, &*orig, 0).is_ok()
}

/// Shared body of the four cgroup socket-address programs: 1 lets the call go on, 0 refuses
/// it with EPERM.
///
/// An agent's TCP connect to the proxy itself is always let through (it is governed there) and
/// recorded, so the proxy can tell which agent is calling. A `via_proxy` rule sends the connect
/// to the proxy instead: the destination is rewritten and the original recorded. Whatever
/// cannot go through the proxy (UDP, no proxy listening, no room to record) is refused: a
/// `via_proxy` action never goes out direct.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, kind: Kind, v6: bool) -> i32 {
    let Some(agent) = current_agent() else {
        return 1;
    };
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run; these are plain ctx loads.
    let (addr, port_be, protocol) = unsafe {
        let addr = if v6 {
            ip6((*sa).user_ip6)
        } else {
            mapped4((*sa).user_ip4)
        };
        (addr, (*sa).user_port, (*sa).protocol)
    };
    let port = u16::from_be(port_be as u16);
    let protocol = protocol as u8;
    let tcp_connect = kind == Kind::Connect && protocol == proto::TCP;
    let Some(proxy) = PROXY.get(0) else {
        return 0; // the map always has its one entry; fail closed if not
    };
    let (mut d, via_proxy) = if is_proxy(proxy, &addr, port) {
        let mut d = Decision::builtin(kind, false);
        if tcp_connect && !record_for_proxy(ctx, &agent, &addr, port, false) {
            count(Counter::MapFull);
            d = Decision::fail_closed(kind, Cause::NoProxy);
        }
        (d, false)
    } else {
        net_decision(kind, &agent, addr, port, protocol)
    };
    if via_proxy && !d.denied {
        if proxy.enabled == 0 || !tcp_connect {
            d = Decision::fail_closed(kind, Cause::NoProxy);
        } else if !record_for_proxy(ctx, &agent, &addr, port, true) {
            count(Counter::MapFull);
            d = Decision::fail_closed(kind, Cause::NoProxy);
        } else {
            // SAFETY: connect programs may rewrite the destination (4-byte ctx stores).
            unsafe {
                if !v6 {
                    (*sa).user_ip4 = proxy.ip4;
                } else if addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
                    // A dual-stack socket going to an IPv4 address: to the proxy's IPv4
                    // address, IPv4-mapped.
                    set_ip6(
                        sa,
                        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), proxy.ip4],
                    );
                } else {
                    set_ip6(sa, proxy.ip6);
                }
                (*sa).user_port = proxy.port;
            }
            d.extra_flags |= flags::PROXIED;
        }
    }
    emit(&agent, &d, |ev| {
        ev.addr = addr;
        ev.port = port;
        ev.detail = protocol;
    });
    if d.denied { 0 } else { 1 }
}

/// Rewrite `user_ip6`. One 4-byte store per word: an array assignment compiles to a byte copy,
/// and the verifier allows only whole-word stores to the context.
#[inline(always)]
unsafe fn set_ip6(sa: *mut bpf_sock_addr, w: [u32; 4]) {
    // SAFETY: the caller's context pointer; constant indexes within the array.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
    }
}

/// When an agent's connection to the proxy is established (the client side, before the proxy
/// can accept it), file its record under the client's source port: the proxy looks it up by
/// the peer port of the connection it accepts. Every other socket passes untouched.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is copied immediately.
    let Some(orig) = (unsafe { ORIG_DST.get(&cookie) }).copied() else {
        return 1;
    };
    // The family on the wire, as the proxy sees its peer: a dual-stack socket talking to an
    // IPv4-mapped address is IPv4.
    let mut family = ctx.family();
    if family == AF_INET6 {
        let r = ctx.remote_ip6();
        if r[0] == 0 && r[1] == 0 && r[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
            family = AF_INET;
        }
    }
    let key = ConnKey {
        port: ctx.local_port(),
        family,
    };
    if PROXY_CONNS.insert(&key, &orig, 0).is_err() {
        // The proxy will not find the connection and refuses it: fail closed.
        count(Counter::MapFull);
    }
    let _ = ORIG_DST.remove(&cookie);
    1
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Connect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Connect, true)
}

/// Unconnected UDP (sendto/sendmsg with an address): the same table as connect.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Send, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Kind::Send, true)
}

/// Built-in: raw, packet and netlink sockets are refused to agents unless the policy allows
/// them (`kernel.allow_raw_sockets`). Sockets the kernel makes for itself are not agents'.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // int socket_create(int family, int type, int protocol, int kern)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let (family, ty, kern): (i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(3));
    if kern != 0 {
        return 0;
    }
    let special = family == AF_PACKET || family == AF_NETLINK || (ty & SOCK_TYPE_MASK) == SOCK_RAW;
    if !special {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Socket, agent.value.allow & allow::RAW_SOCKETS == 0);
    emit(&agent, &d, |ev| {
        ev.detail = family as u8;
        ev.port = ty as u16;
    });
    lsm_ret(&d)
}

/// Built-in: agents get no new user namespace unless the policy allows it.
#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(
        Kind::Userns,
        agent.value.allow & allow::USER_NAMESPACES == 0,
    );
    emit(&agent, &d, |_| {});
    lsm_ret(&d)
}

/// Built-in: agents may not use bpf() at all (no loading programs, no opening the pins).
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    // int bpf(int cmd, union bpf_attr *attr, unsigned int size)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    let d = Decision::builtin(Kind::Bpf, true);
    emit(&agent, &d, |ev| ev.detail = cmd as u8);
    lsm_ret(&d)
}

/// Is `task` (a `struct task_struct *`) one of the protected processes?
#[inline(always)]
fn protected(task: u64) -> Option<u32> {
    // SAFETY: see read_at.
    let tgid: u32 = unsafe { read_at(task, off(&OFF_TASK_TGID)) }.ok()?;
    // SAFETY: the value is not used.
    unsafe { PROTECTED.get(&tgid) }.map(|_| tgid)
}

/// Built-in: agents may not signal the daemon or the proxy.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    // int task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //               const struct cred *cred)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let sig: i32 = ctx.arg(2);
    let Some(target) = protected(ctx.arg(0)) else {
        return 0;
    };
    let Some(agent) = current_agent() else {
        return 0;
    };
    // Signal 0 only probes for existence; refuse it too, it is of no use to an agent.
    let d = Decision::builtin(Kind::Signal, true);
    emit(&agent, &d, |ev| {
        ev.port = sig as u16;
        ev.object = u64::from(target);
    });
    lsm_ret(&d)
}

/// Built-in: agents may not ptrace (or read /proc/PID/mem of) the daemon or the proxy.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(target) = protected(ctx.arg(0)) else {
        return 0;
    };
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Ptrace, true);
    emit(&agent, &d, |ev| ev.object = u64::from(target));
    lsm_ret(&d)
}

/// Built-in: agents may not remove anything from a bpf filesystem (the pins that keep the
/// programs attached while the daemon is down).
#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    // int inode_unlink(struct inode *dir, struct dentry *dentry)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let dir: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    let magic = unsafe {
        read_at::<u64>(dir, off(&OFF_INODE_SB))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_MAGIC)))
    };
    let on_bpffs = match magic {
        Ok(m) => m & 0xffff_ffff == BPF_FS_MAGIC,
        Err(_) => true, // cannot tell: treat as a pin (only agents are affected)
    };
    if !on_bpffs {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let d = Decision::builtin(Kind::Unlink, true);
    emit(&agent, &d, |_| {});
    lsm_ret(&d)
}

/// A sandboxed process's children are sandboxed too.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is Copy and read immediately.
    let Some(profile) = (unsafe { SANDBOXED.get(&parent_tgid) }).copied() else {
        return 0;
    };
    let child: u64 = ctx.arg(1);
    // SAFETY: see read_at.
    if let Ok(tgid) = unsafe { read_at::<u32>(child, off(&OFF_TASK_TGID)) }
        && tgid != parent_tgid
        && SANDBOXED.insert(&tgid, &profile, 0).is_err()
    {
        // The child runs under its agent's own class instead of the profile: counted and
        // reported by the daemon (MapFull), as the map is sized far above any sane load.
        count(Counter::MapFull);
    }
    0
}

/// Forget a sandboxed process when it exits, so its pid cannot pass the mark on.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == (pid_tgid >> 32) as u32 {
        let _ = SANDBOXED.remove(&((pid_tgid >> 32) as u32));
    }
    0
}

/// Degraded exec enforcement, for kernels without BPF LSM: right after an exec, decide on the
/// executed file's identity and SIGKILL the process if the policy blocks it. Weaker than the
/// LSM: the exec has happened (the new image is mapped, and may have run until the signal is
/// delivered on the way back to user space), and only exact (inode) rules and the default apply.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let Some(agent) = current_agent() else {
        return 0;
    };
    let bprm: u64 = ctx.arg(2);
    // SAFETY: see read_at.
    let file = unsafe { read_at::<u64>(bprm, off(&OFF_BPRM_FILE)) }.unwrap_or(0);
    let mut d = exec_decision(&agent, file, false);
    // SAFETY: helper call without pointer arguments.
    if d.denied && unsafe { bpf_send_signal(SIGKILL) } == 0 {
        d.extra_flags |= flags::KILLED;
    }
    emit(&agent, &d, |ev| {
        // SAFETY: see read_at.
        if let Ok(name) = unsafe { read_at::<u64>(bprm, off(&OFF_BPRM_FILENAME)) } {
            // SAFETY: bounded by the destination buffer; errors leave path empty.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
            {
                ev.path[0] = 0;
            }
        }
    });
    0
}

// On the host (clippy, cargo check) a dependency brings std and its panic handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
