//! Sequence rules (see governance_common::sequence): the file hook arms an agent's sequence
//! rules (`arm`), the connect and sendmsg programs refuse what an armed rule leaves out
//! (`restrict`), and so does, per packet, the `sequence_egress` program (its own file) for
//! connections made before the arming (both through `outside`). The armed state is per agent root, so every process and thread of the agent
//! (children, processes started later, processes in descendant cgroups) is restricted alike.
use aya_ebpf::maps::lpm_trie::Key;
use governance_common::{
    Cause, GrantKey, NET_SLOTS, NetKey, PathKey, RuleRef, Verdict, access, flags, report,
    sequence::{MAX_SEQ_RULES, SeqArmed, SeqEntry, SeqStateKey},
    slot,
};

use crate::{
    decide::{Agent, Decision, now, verdict_of},
    file::path_rules,
    kernel::BPF_NOEXIST,
    maps::{GRANTS, NET_RULES, SEQ_ANY, SEQ_CLASSES, SEQ_STATE},
};

/// Does the generation in `slot` have any sequence rule? One array load (the slot's flag, set
/// before the generation is switched to and cleared only after it is left): without rules, the
/// class's hash lookup (about 100 ns under the VM's emulation) is skipped on every open and
/// connect, and `sequence_egress` walks no packet's cgroups.
#[inline(always)]
pub(crate) fn any(slot: u32) -> bool {
    SEQ_ANY.get(slot).is_some_and(|&any| any != 0)
}

/// Arm the sequence rules of the agent's class whose arming paths cover the opened path (the
/// per-CPU path key, resolved) for one of the accesses asked (`asked`: r=1 w=2 c=4 t=8).
/// Ok(rule id) of the first rule this open armed for the first time (the open's event names
/// it; 0: none), Err when the state table is full (the caller refuses the open: an agent never
/// holds classified data without the restriction that goes with it).
#[inline(always)]
pub(crate) fn arm(agent: &Agent, key: &mut Key<PathKey>, asked: u8) -> Result<u32, ()> {
    if !any(slot(agent.generation)) {
        return Ok(0);
    }
    // SAFETY: a map value, read in place for the program's run.
    let Some(list) = (unsafe { SEQ_CLASSES.get(&agent.value.class) }) else {
        return Ok(0);
    };
    let own = key.data.class_be;
    let mut first = 0u32;
    let mut full = false;
    let mut i = 0;
    while i < MAX_SEQ_RULES {
        if i as u32 >= list.len {
            break;
        }
        let e = &list.entries[i];
        i += 1;
        // The rule's sequence class holds its arming paths, per access letter.
        key.data.class_be = e.class.to_be_bytes();
        let hit = (asked & 1 != 0 && path_rules(key, access::READ).is_some())
            || (asked & 2 != 0 && path_rules(key, access::WRITE).is_some())
            || (asked & 4 != 0 && path_rules(key, access::CREATE).is_some())
            || (asked & 8 != 0 && path_rules(key, access::TRUNCATE).is_some());
        if !hit {
            continue;
        }
        let skey = SeqStateKey {
            agent_cgroup: agent.root,
            state: e.state,
        };
        let armed = SeqArmed {
            armed_ns: now(),
            tgid: agent.tgid,
            rule_id: e.rule_id,
        };
        // The first arming counts (a window runs from it); later ones leave it as it is.
        if SEQ_STATE.insert(&skey, &armed, BPF_NOEXIST).is_ok() {
            if first == 0 {
                first = e.rule_id;
            }
        // SAFETY: only whether the entry exists is used.
        } else if unsafe { SEQ_STATE.get(&skey) }.is_none() {
            full = true;
        }
    }
    key.data.class_be = own;
    if full { Err(()) } else { Ok(first) }
}

/// Is `addr:port` in the direct-egress allowlist of sequence class `class`? One longest-prefix
/// lookup, as for destination rules; any alternative whose port range holds `port` allows.
#[inline(always)]
fn allowed(class: u32, addr: &[u8; 16], port: u16) -> bool {
    let key = Key::new(
        ((4 + 16) * 8) as u32,
        NetKey {
            class_be: class.to_be_bytes(),
            addr: *addr,
        },
    );
    let Some(v) = NET_RULES.get(&key) else {
        return false;
    };
    let mut i = 0;
    while i < NET_SLOTS {
        if i as u32 >= v.len {
            break;
        }
        let e = &v.entries[i];
        if port >= e.port_lo && port <= e.port_hi {
            return true;
        }
        i += 1;
    }
    false
}

/// The armed sequence rules of class `class` (agent root `root`) that are within their window
/// at `t` and whose direct-egress allowlist leaves `addr:port` out, in the rules' order: `on`
/// gets each and says whether to stop. What `restrict` (connects, datagrams) and the
/// per-packet `sequence_egress` program share.
#[inline(always)]
pub(crate) fn outside(
    class: u32,
    root: u64,
    addr: &[u8; 16],
    port: u16,
    t: u64,
    mut on: impl FnMut(&SeqEntry) -> bool,
) {
    // SAFETY: a map value, read in place for the program's run.
    let Some(list) = (unsafe { SEQ_CLASSES.get(&class) }) else {
        return;
    };
    let mut i = 0;
    while i < MAX_SEQ_RULES {
        if i as u32 >= list.len {
            break;
        }
        let e = &list.entries[i];
        i += 1;
        let skey = SeqStateKey {
            agent_cgroup: root,
            state: e.state,
        };
        // SAFETY: the value is copied immediately.
        let Some(armed_ns) = (unsafe { SEQ_STATE.get(&skey) }).map(|s| s.armed_ns) else {
            continue;
        };
        if e.window_ns != 0 && t.wrapping_sub(armed_ns) >= e.window_ns {
            continue;
        }
        if allowed(e.class, addr, port) {
            continue;
        }
        if on(e) {
            return;
        }
    }
}

/// A connect or datagram of the agent that goes out directly (not to the proxy, which decides
/// each request on it): if an armed sequence rule of its class (within its window) does not
/// allow the destination, the decision becomes that rule's: refused, or for an escalating rule
/// refused unless an approved grant covers this destination (as `apply` does). A shadow rule
/// is reported beside the decision instead. Only called for decisions that allow.
#[inline(always)]
pub(crate) fn restrict(agent: &Agent, d: &mut Decision, addr: &[u8; 16], port: u16, protocol: u8) {
    if !any(slot(agent.generation)) {
        return;
    }
    let t = now();
    outside(agent.value.class, agent.root, addr, port, t, |e| {
        if e.shadow != 0 {
            if d.shadow.present == 0 {
                d.shadow = RuleRef {
                    rule_id: e.rule_id,
                    verdict: e.verdict,
                    present: 1,
                    aux: 0,
                };
                d.extra_flags |= flags::SEQUENCE;
            }
            return false;
        }
        d.verdict = verdict_of(e.verdict);
        d.rule_id = e.rule_id;
        d.cause = Cause::Rule;
        d.report = report::EVERY;
        d.extra_flags |= flags::SEQUENCE;
        d.denied = true;
        if d.verdict == Verdict::Escalate {
            let key =
                GrantKey::new(agent.root, d.kind, d.object).destination(*addr, port, protocol);
            // SAFETY: the value is read immediately.
            if unsafe { GRANTS.get(&key) }.is_some_and(|expiry| *expiry > t) {
                d.cause = Cause::Granted;
                d.denied = false;
            }
        }
        true
    });
}
