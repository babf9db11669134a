//! governance's kernel side: decide, from BPF maps, whether a task in an agent cgroup may do
//! what it is about to do, and report every such decision through a ring buffer.
//!
//! The shape of each program is the same: find the agent the current task belongs to (a walk up
//! its cgroup ancestry), look the action up in that agent's rules, fall back to the agent's
//! default posture, emit an event, return the verdict. Tasks outside every agent are not
//! touched and produce no event. The verdict never depends on whether the event could be
//! written: a full ring buffer only bumps a drop counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_ns,
        },
    },
    macros::{cgroup_sock_addr, lsm, map},
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{LsmContext, SockAddrContext},
};
use governance_common::{
    AgentValue, COUNTERS_LEN, Cause, Counter, EVENTS_RING_BYTES, Event, ExecKey, Kind, MAX_AGENTS,
    MAX_CGROUP_DEPTH, MAX_EXEC_RULES, MAX_NET4_RULES, NO_RULE, Net4Key, RuleValue, Verdict,
};

#[map]
static AGENTS: HashMap<u64, AgentValue> = HashMap::with_max_entries(MAX_AGENTS, 0);

#[map]
static EXEC_RULES: HashMap<ExecKey, RuleValue> = HashMap::with_max_entries(MAX_EXEC_RULES, 0);

#[map]
static NET4_RULES: LpmTrie<Net4Key, RuleValue> = LpmTrie::with_max_entries(MAX_NET4_RULES, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

// Byte offsets of kernel struct fields, written by the loader from the running kernel's BTF
// (see governance_common::offsets). They live in .rodata, which the loader freezes, so the
// verifier sees them as constants. Read them with read_volatile: otherwise the compiler would
// fold in the placeholder 0.
#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_BPRM_FILENAME: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_INODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_INO: u64 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_SB: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SB_DEV: u64 = 0;

/// The policy generation this instance enforces (set by the loader; stamped on every event).
#[unsafe(no_mangle)]
static GENERATION: u32 = 0;

#[inline(always)]
fn offset(global: &u64) -> u64 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(global) }
}

/// The agent the current task belongs to, and the cgroup id of the task itself.
///
/// Walks the cgroup ancestry top-down (level 1 is the first level below the root) and stops at
/// the first agent root, so the outermost agent governs: a task cannot escape its agent's policy
/// by having a descendant cgroup labelled as some other agent. The helper returns 0 past the
/// task's own level, which ends the walk early; the constant bound is for the verifier.
#[inline(always)]
fn current_agent() -> Option<(AgentValue, u64)> {
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper call without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return None;
        }
        // SAFETY: the map value is Copy and read immediately.
        if let Some(agent) = unsafe { AGENTS.get(id) } {
            // SAFETY: helper call without pointer arguments.
            return Some((*agent, unsafe { bpf_get_current_cgroup_id() }));
        }
        level += 1;
    }
    None
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The decision, before it is reported.
struct Decision {
    kind: Kind,
    verdict: Verdict,
    cause: Cause,
    rule_id: u32,
}

impl Decision {
    fn from_rule(kind: Kind, rule: Option<&RuleValue>, default: u8) -> Self {
        match rule {
            Some(rule) => Self {
                kind,
                verdict: verdict_of(rule.verdict),
                cause: Cause::Rule,
                rule_id: rule.rule_id,
            },
            None => Self {
                kind,
                verdict: verdict_of(default),
                cause: Cause::Default,
                rule_id: NO_RULE,
            },
        }
    }
}

/// Unknown verdict values (a newer daemon, a corrupted map) block: fail closed.
#[inline(always)]
fn verdict_of(raw: u8) -> Verdict {
    Verdict::from_u8(raw).unwrap_or(Verdict::Block)
}

/// Report a decision. `fill` writes the action-specific fields (path or address).
#[inline(always)]
fn emit(agent: &AgentValue, cgroup_id: u64, d: &Decision, fill: impl FnOnce(&mut Event)) {
    count(Counter::Decisions);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    // SAFETY: the entry is a reserved, exclusively owned record of size_of::<Event>() bytes.
    // Every field is written before submit, except the tail of `path` past its NUL.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper call without pointer arguments.
    ev.time_ns = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = cgroup_id;
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.agent_id = agent.agent_id;
    ev.rule_id = d.rule_id;
    ev.kind = d.kind as u8;
    ev.verdict = d.verdict as u8;
    ev.cause = d.cause as u8;
    ev._pad0 = 0;
    ev.port = 0;
    ev._pad1 = [0; 2];
    // SAFETY: a plain read of a static (volatile so the loader's value is used).
    ev.generation = unsafe { core::ptr::read_volatile(&GENERATION) };
    ev.addr = [0; 16];
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.path[0] = 0;
    fill(ev);
    entry.submit(0);
}

/// Read a `T` at `base + off` in kernel memory.
#[inline(always)]
unsafe fn read_at<T>(base: u64, off: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }
}

/// (device, inode) of the file the kernel is about to execute: `bprm->file->f_inode`.
/// This is the object that will run, whatever name (symlink, hardlink, /proc/self/fd/N,
/// execveat(AT_EMPTY_PATH)) led to it.
#[inline(always)]
fn exec_identity(bprm: u64) -> Result<(u32, u64), i32> {
    let off_file = offset(&OFF_BPRM_FILE);
    if off_file == 0 {
        // The loader did not set the offsets: we cannot know what is executed.
        return Err(-1);
    }
    // SAFETY: see read_at.
    unsafe {
        let file: u64 = read_at(bprm, off_file)?;
        let inode: u64 = read_at(file, offset(&OFF_FILE_INODE))?;
        let ino: u64 = read_at(inode, offset(&OFF_INODE_INO))?;
        let sb: u64 = read_at(inode, offset(&OFF_INODE_SB))?;
        let dev: u32 = read_at(sb, offset(&OFF_SB_DEV))?;
        Ok((dev, ino))
    }
}

/// LSM return for a verdict: 0 lets the exec go on, -EPERM refuses it.
#[inline(always)]
fn lsm_ret(v: Verdict) -> i32 {
    const EPERM: i32 = 1;
    match v {
        Verdict::Allow => 0,
        Verdict::Block => -EPERM,
    }
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // int bprm_check_security(struct linux_binprm *bprm); the last argument is the return
    // value of the BPF LSM programs that ran before this one. Never overturn a denial.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some((agent, cgroup_id)) = current_agent() else {
        return 0;
    };
    let bprm: u64 = ctx.arg(0);
    let decision = match exec_identity(bprm) {
        Ok((dev, ino)) => {
            let key = ExecKey {
                agent_id: agent.agent_id,
                dev,
                ino,
            };
            // SAFETY: the value is read immediately.
            let rule = unsafe { EXEC_RULES.get(key) };
            Decision::from_rule(Kind::Exec, rule, agent.exec_default)
        }
        Err(_) => Decision {
            kind: Kind::Exec,
            verdict: Verdict::Block,
            cause: Cause::Unreadable,
            rule_id: NO_RULE,
        },
    };
    emit(&agent, cgroup_id, &decision, |ev| {
        // The name the exec was asked for, for the record; the decision above used the inode.
        // SAFETY: see read_at.
        if let Ok(name) = unsafe { read_at::<u64>(bprm, offset(&OFF_BPRM_FILENAME)) } {
            // SAFETY: bounded by the destination buffer; errors leave path empty.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
            {
                ev.path[0] = 0;
            }
        }
    });
    lsm_ret(decision.verdict)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // cgroup/connect4 returns 1 to let the connect go on, 0 to refuse it with EPERM.
    let Some((agent, cgroup_id)) = current_agent() else {
        return 1;
    };
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run; these are plain ctx loads.
    let (ip4, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let addr = ip4.to_ne_bytes(); // user_ip4 holds the address in network byte order.
    let key = Key::new(
        64,
        Net4Key {
            agent_be: agent.agent_id.to_be_bytes(),
            addr,
        },
    );
    let rule = NET4_RULES.get(&key);
    let decision = Decision::from_rule(Kind::Connect4, rule, agent.net_default);
    emit(&agent, cgroup_id, &decision, |ev| {
        ev.addr[..4].copy_from_slice(&addr);
        ev.port = u16::from_be(port_be as u16);
    });
    match decision.verdict {
        Verdict::Allow => 1,
        Verdict::Block => 0,
    }
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
