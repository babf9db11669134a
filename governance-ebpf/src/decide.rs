//! The decision every program shares: which agent the current task belongs to (`Agent`,
//! `current_agent`), what its tables say (`apply`, with the throttle bucket, sandbox mark and
//! escalation grant a verdict needs), how the decision is reported (`emit`) and returned to an
//! LSM hook (`lsm_ret`), and the drop and decision counters. Allowed actions a policy counts
//! instead are counted in `emit` (see `report`).
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
        bpf_ktime_get_ns,
    },
};
use governance_common::{
    AgentKey, AgentValue, Bucket, BucketKey, Cause, Counter, EVENTS_RING_BYTES, Event, GrantKey,
    Kind, MAX_CGROUP_DEPTH, MAX_SANDBOXED, NO_RULE, RulePair, RuleRef, SANDBOX_RESERVE, Verdict,
    flags, report, slot,
};

use crate::{
    kernel::{
        BPF_EXIST, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, EPERM,
        MAX_PID_NS_LEVEL, OFF_CGROUP_ANCESTORS, OFF_CGROUP_KN, OFF_CGROUP_LEVEL,
        OFF_CSS_SET_DFL_CGRP, OFF_KERNFS_NODE_ID, OFF_PID_LEVEL, OFF_PID_NUMBERS, OFF_PID_TASKS,
        OFF_TASK_CGROUPS, OFF_TASK_GROUP_LEADER, OFF_TASK_PID_LINKS, OFF_TASK_REAL_PARENT,
        OFF_TASK_TGID, OFF_TASK_THREAD_PID, OFF_UPID_NR, SIZE_UPID, off, read_at,
    },
    maps::{
        AGENTS, BUCKETS, COUNTERS, EVENTS, EVENTS_DROPPED, GRANTS, SANDBOX_ANY, SANDBOXED, STATE,
        THROTTLES,
    },
    report::Report,
};

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper call without pointer arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Has the kernel marked any process as sandboxed since this build's maps were made (see
/// governance_common::maps::SANDBOX_ANY)? Until then no process has a mark to look up: a
/// decision, a fork and an exit each skip the `SANDBOXED` lookup (an array load here).
#[inline(always)]
pub(crate) fn any_sandboxed() -> bool {
    SANDBOX_ANY.get(0).is_some_and(|any| *any != 0)
}

/// Mark process `tgid` as running under sandbox profile `profile`; false if the mark could not
/// be stored. The flag is set before the mark: a task that finds the mark finds the flag too
/// (the map update publishes the entry after the store). A new mark is counted (see
/// `sandbox_table_nearly_full`); a process marked again keeps its one count.
#[inline(always)]
pub(crate) fn mark_sandboxed(tgid: u32, profile: u32) -> bool {
    let Some(any) = SANDBOX_ANY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: an element of an array map; every writer stores the same value.
    unsafe { core::ptr::write_volatile(any, 1) };
    if SANDBOXED.insert(&tgid, &profile, BPF_NOEXIST).is_ok() {
        count_marks(1);
        return true;
    }
    // Already marked (a table that is full refuses a new key here too).
    SANDBOXED.insert(&tgid, &profile, BPF_EXIST).is_ok()
}

const MARKED: u32 = 0;
const ANOTHER_PROFILE: u32 = 1;
const NOT_STORED: u32 = 2;

/// A sandbox verdict's mark: `MARKED`, `ANOTHER_PROFILE` (the process is under another profile
/// already, `sandboxed`, and stays under it) or `NOT_STORED`. In a frame of its own: inlined
/// into every hook's decision, file_permission's stack went past 512 bytes.
#[inline(never)]
fn remark(tgid: u32, sandboxed: bool, profile: u32) -> u32 {
    // SAFETY: the value is Copy and read immediately.
    if sandboxed && unsafe { SANDBOXED.get(&tgid) }.is_some_and(|m| *m != profile) {
        return ANOTHER_PROFILE;
    }
    if mark_sandboxed(tgid, profile) {
        MARKED
    } else {
        NOT_STORED
    }
}

/// Add `delta` (1, or u32::MAX for -1) to the count of marks, atomically.
#[inline(always)]
pub(crate) fn count_marks(delta: u32) {
    if let Some(n) = SANDBOX_ANY.get_ptr_mut(1) {
        // The BPF target has no atomic types (only loads and stores): the intrinsic is one
        // BPF_ATOMIC add, which the verifier accepts on a map value.
        // SAFETY: an element of an array map, aligned, written only atomically.
        #[cfg(target_arch = "bpf")]
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                n, delta,
            )
        };
        // (The host build of this crate, for checks and its tests.)
        // SAFETY: as above.
        #[cfg(not(target_arch = "bpf"))]
        unsafe { core::sync::atomic::AtomicU32::from_ptr(n) }
            .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Does the table of marks have fewer than `SANDBOX_RESERVE` free entries left?
#[inline(always)]
pub(crate) fn sandbox_table_nearly_full() -> bool {
    SANDBOX_ANY
        .get(1)
        .is_some_and(|n| *n >= MAX_SANDBOXED - SANDBOX_RESERVE)
}

/// The agent the current task belongs to.
pub(crate) struct Agent {
    pub(crate) value: AgentValue,
    pub(crate) generation: u32,
    /// cgroup id of the agent root.
    pub(crate) root: u64,
    /// The agent root's level in the cgroup2 hierarchy (1: just below the root).
    pub(crate) level: u32,
    /// cgroup id of the task itself.
    pub(crate) cgroup: u64,
    pub(crate) tgid: u32,
    pub(crate) sandboxed: bool,
    // Not the level at which the root was found: a loop counter kept live past the loop makes
    // the verifier check everything after it once per possible value (32 times), which took
    // minutes for the larger programs. `protect::in_agent` finds the level itself.
}

impl Agent {
    /// [`AgentValue::exec_allowlist`] of its class.
    #[inline(always)]
    pub(crate) fn exec_allowlist(&self) -> bool {
        self.value.exec_allowlist()
    }
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
pub(crate) fn current_agent() -> Option<Agent> {
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
                level,
                // SAFETY: helper call without pointer arguments.
                cgroup: unsafe { bpf_get_current_cgroup_id() },
                tgid,
                sandboxed: false,
            };
            let mark = if any_sandboxed() {
                // SAFETY: as above.
                unsafe { SANDBOXED.get(&tgid) }
            } else {
                None
            };
            if let Some(profile) = mark {
                agent.sandboxed = true;
                // Under its own agent root: a mark never reaches another agent's profile.
                let key = AgentKey {
                    cgroup_id: id,
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

/// Whether `task` (a `struct task_struct *`) runs inside `agent`'s subtree: its cgroup2 cgroup
/// (`task->cgroups->dfl_cgrp`) is in it ([`cgroup_in_subtree`]). A task the program cannot
/// place counts as outside (fail closed: only agents are refused).
#[inline(always)]
pub(crate) fn in_subtree(agent: &Agent, task: u64) -> bool {
    // SAFETY: see read_at; every pointer comes from the kernel and is read, never written.
    unsafe {
        let Ok(cset) = read_at::<u64>(task, off(&OFF_TASK_CGROUPS)) else {
            return false;
        };
        let Ok(cgrp) = read_at::<u64>(cset, off(&OFF_CSS_SET_DFL_CGRP)) else {
            return false;
        };
        cgroup_in_subtree(agent, cgrp)
    }
}

/// Whether the process a `struct pid` names (`pid_task(pid, PIDTYPE_PID)`: the first of
/// `pid->tasks[0]`, a task's `pid_links[0]`) is in `agent`'s subtree. None (a session or group
/// whose leader has exited), or one that cannot be read, counts as outside.
#[inline(always)]
pub(crate) fn pid_in_subtree(agent: &Agent, pid: u64) -> bool {
    // SAFETY: see read_at; every pointer comes from the kernel and is read, never written.
    let first = unsafe { read_at::<u64>(pid, off(&OFF_PID_TASKS)) }.unwrap_or(0);
    first != 0 && in_subtree(agent, first.wrapping_sub(off(&OFF_TASK_PID_LINKS)))
}

/// Whether the cgroup2 cgroup `cgrp` (a `struct cgroup *`) is `agent`'s root or one of its
/// descendants: its ancestor at the agent root's level is the agent root
/// (`cgrp->ancestors[level]->kn->id`). One that cannot be read counts as outside.
#[inline(always)]
pub(crate) fn cgroup_in_subtree(agent: &Agent, cgrp: u64) -> bool {
    // SAFETY: see read_at; every pointer comes from the kernel and is read, never written.
    unsafe {
        let Ok(level) = read_at::<i32>(cgrp, off(&OFF_CGROUP_LEVEL)) else {
            return false;
        };
        if level < agent.level as i32 {
            return false;
        }
        // ancestors[] is indexed by level; agent.level is at most MAX_CGROUP_DEPTH, which the
        // verifier need not know: the address is only passed to a probe read.
        let slot = off(&OFF_CGROUP_ANCESTORS) + u64::from(agent.level) * 8;
        let Ok(ancestor) = read_at::<u64>(cgrp, slot) else {
            return false;
        };
        let Ok(kn) = read_at::<u64>(ancestor, off(&OFF_CGROUP_KN)) else {
            return false;
        };
        read_at::<u64>(kn, off(&OFF_KERNFS_NODE_ID)) == Ok(agent.root)
    }
}

/// The class of a sandboxed process whose profile is gone: no rules, every default blocks.
#[inline(always)]
fn no_profile() -> AgentValue {
    AgentValue::refusing_everything(0)
}

/// A decision, before it is reported.
pub(crate) struct Decision {
    pub(crate) kind: Kind,
    pub(crate) verdict: Verdict,
    pub(crate) cause: Cause,
    pub(crate) rule_id: u32,
    pub(crate) denied: bool,
    pub(crate) shadow: RuleRef,
    pub(crate) object: u64,
    pub(crate) extra_flags: u8,
    /// How the action is reported if it is allowed (governance_common::report).
    pub(crate) report: u16,
}

impl Decision {
    pub(crate) fn builtin(kind: Kind, denied: bool) -> Self {
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
            report: report::EVERY,
        }
    }

    pub(crate) fn fail_closed(kind: Kind, cause: Cause) -> Self {
        Self {
            cause,
            ..Self::builtin(kind, true)
        }
    }
}

/// Unknown verdict values (a newer daemon, a corrupted map) block: fail closed.
#[inline(always)]
pub(crate) fn verdict_of(raw: u8) -> Verdict {
    Verdict::from_u8(raw).unwrap_or(Verdict::Block)
}

/// Apply what the tables say: the enforcing rule's verdict (or the default's), with the
/// throttle bucket, sandbox mark and escalation grant it needs. `object` identifies the thing
/// acted on, for escalation grants.
#[inline(always)]
pub(crate) fn apply(
    kind: Kind,
    agent: &Agent,
    rules: Option<RulePair>,
    default: RulePair,
    grant: GrantKey,
) -> Decision {
    let (pair, cause) = deciding(rules, default);
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
        object: grant.object,
        extra_flags: 0,
        report: if verdict == Verdict::Allow {
            rule.aux
        } else {
            report::EVERY
        },
    };
    match verdict {
        Verdict::Allow => {}
        Verdict::Block => d.denied = true,
        Verdict::Throttle => d.denied = !take_token(agent.root, &rule),
        Verdict::Sandbox => {
            // Marked from now on, children included (sched_process_fork). If the mark cannot
            // be stored, the action is refused rather than run unconstrained.
            let profile = u32::from(rule.aux);
            // A process under another profile already is not moved to this one: profiles do
            // not compose, and this one may be looser than its own (a `none` network moved to
            // `proxy` by a file rule's verdict). The action is refused instead (red team
            // round 5).
            match remark(agent.tgid, agent.sandboxed, profile) {
                MARKED => {}
                ANOTHER_PROFILE => d.denied = true,
                _ => {
                    count(Counter::MapFull);
                    d.denied = true;
                }
            }
        }
        Verdict::Escalate => {
            // SAFETY: the value is read immediately.
            match unsafe { GRANTS.get(&grant) } {
                Some(expiry) if *expiry > now() => d.cause = Cause::Granted,
                _ => d.denied = true,
            }
        }
    }
    d
}

/// The rule pair that decides, and why: the enforcing rule found, else the default (beside a
/// shadow rule found, which is reported).
#[inline(always)]
pub(crate) fn deciding(rules: Option<RulePair>, default: RulePair) -> (RulePair, Cause) {
    match rules {
        Some(p) if p.enforce.present != 0 => (p, Cause::Rule),
        Some(p) => (
            RulePair {
                enforce: default.enforce,
                shadow: p.shadow,
            },
            Cause::Default,
        ),
        None => (default, Cause::Default),
    }
}

/// What `apply` needs to decide as it does for `None` (no rule), as a defined value: `found`
/// if it holds a rule, else nothing enforcing beside the default's shadow. For callers whose
/// `Option<RulePair>` the verifier refuses: a `None` leaves the payload undefined, LLVM merges
/// `apply`'s arms into selects over it, and the verifier rejects reading the uninitialised
/// register (`R1 !read_ok`).
#[inline(always)]
pub(crate) fn or_no_rule(found: RulePair, default: &RulePair) -> RulePair {
    if found.enforce.present != 0 || found.shadow.present != 0 {
        found
    } else {
        RulePair {
            enforce: RuleRef::default(),
            shadow: default.shadow,
        }
    }
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
pub(crate) fn emit(agent: &Agent, d: &Decision, fill: impl FnOnce(&mut Event)) {
    count(Counter::Decisions);
    if d.denied {
        count(Counter::Denials);
    }
    let reported = crate::report::report(agent, d);
    if reported == Report::Counted {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        count_dropped(agent.root);
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
    ev.ns_pid = ns_tgid();
    ev._reserved = 0;
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
    if reported == Report::Sampled {
        f |= flags::SAMPLED;
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

/// An event of agent `root` the ring had no room for, counted for that agent (`EVENTS_DROPPED`):
/// one agent filling the ring drops every agent's events, and the daemon's record says whose
/// (red team round 26). The first drop of an agent makes its entry; a full table leaves the
/// node-wide counter alone to count it. In a frame of its own: inlined into every `emit`,
/// its key and value took `file_open`'s stack past 512 bytes with the frames it calls.
#[inline(never)]
fn count_dropped(root: u64) {
    let n = match EVENTS_DROPPED.get_ptr_mut(&root) {
        Some(n) => n,
        None => {
            if EVENTS_DROPPED.insert(&root, &1, BPF_NOEXIST).is_ok() {
                return;
            }
            // Made meanwhile on another CPU (or the table is full: nothing to add to).
            let Some(n) = EVENTS_DROPPED.get_ptr_mut(&root) else {
                return;
            };
            n
        }
    };
    // SAFETY: a hash map value, aligned, written only atomically (see `count_marks`).
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            n, 1,
        )
    };
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(n) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
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

/// The current process's id (tgid) in its own PID namespace, or 0 when that is the initial
/// namespace (or unreadable): `task->group_leader->thread_pid->numbers[level].nr`, what
/// `task_tgid_vnr()` gives the process itself. `level` is bounded by the kernel's nesting
/// limit before it scales the index (the read itself is a probe_read, so the bound is for
/// sanity, not for the verifier).
#[inline(always)]
fn ns_tgid() -> u32 {
    // SAFETY: helper call without pointer arguments; reads go through probe_read.
    unsafe {
        let task = bpf_get_current_task();
        let Ok(leader) = read_at::<u64>(task, off(&OFF_TASK_GROUP_LEADER)) else {
            return 0;
        };
        let Ok(pid) = read_at::<u64>(leader, off(&OFF_TASK_THREAD_PID)) else {
            return 0;
        };
        let level = read_at::<u32>(pid, off(&OFF_PID_LEVEL)).unwrap_or(0);
        if level == 0 || level > MAX_PID_NS_LEVEL {
            return 0;
        }
        let upid = off(&OFF_PID_NUMBERS) + u64::from(level) * off(&SIZE_UPID);
        read_at::<u32>(pid, upid + off(&OFF_UPID_NR)).unwrap_or(0)
    }
}

/// LSM return for a decision: 0 lets the action go on, -EPERM refuses it.
#[inline(always)]
pub(crate) fn lsm_ret(d: &Decision) -> i32 {
    // Linux 6.10 and later load an LSM program only if the verifier can show every value it
    // returns lies in [-4095, 0]. Written plainly, the compiler negates the flag (`r0 = -r0`),
    // of which those verifiers keep no range; the flag read back from the stack as a byte and
    // compared makes each path return a constant.
    // SAFETY: a read of a local.
    let denied = unsafe { core::ptr::read_volatile(&u8::from(d.denied)) };
    if denied != 0 { -EPERM } else { 0 }
}
