//! The reporting policy for allowed actions: an `allow` rule or default says (in its
//! `RuleRef::aux`, see governance_common::report) whether each allowed action is an event, is
//! counted, or is counted with one in N also an event. Everything else is always an event.
//!
//! Counts are per CPU in `COUNTS`, per agent root, generation, rule and kind; the daemon makes
//! the entries and sums them. Without an entry (the map was full, no daemon runs) the action is
//! reported as an event instead (nothing goes unseen) and the overflow entry counts it; the
//! decision itself never depends on the counters.
use governance_common::{Cause, CountKey, Verdict, report};

use crate::{
    decide::{Agent, Decision},
    maps::COUNTS,
};

/// How one decision is reported.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// An event.
    Event,
    /// Counted, and an event too (a sample).
    Sampled,
    /// Counted only.
    Counted,
}

/// Count the decision if its policy says so, and say whether it is (also) an event.
#[inline(always)]
pub(crate) fn report(agent: &Agent, d: &Decision) -> Report {
    if d.report == report::EVERY
        || d.denied
        || d.verdict != Verdict::Allow
        || d.extra_flags != 0
        || d.shadow.present != 0
        || !matches!(d.cause, Cause::Rule | Cause::Default)
    {
        return Report::Event;
    }
    let key = CountKey {
        agent: agent.root,
        generation: agent.generation,
        rule_id: d.rule_id,
        kind: d.kind as u8,
        _pad: [0; 7],
    };
    // The daemon makes every counter a generation can need (a program cannot: the other CPUs'
    // slots of an entry it inserts are not cleared on every kernel). One that is not there (the
    // table was full, or no daemon runs) means an event, counted as such.
    let Some(v) = COUNTS.get_ptr_mut(&key) else {
        if let Some(o) = COUNTS.get_ptr_mut(&CountKey::OVERFLOW) {
            // SAFETY: this CPU's slot of a map value, only this CPU writes it.
            unsafe { *o += 1 };
        }
        return Report::Event;
    };
    // SAFETY: as above.
    let n = unsafe {
        *v += 1;
        *v
    };
    if d.report > report::COUNT && n % u64::from(d.report) == 1 {
        Report::Sampled
    } else {
        Report::Counted
    }
}
