//! Which earlier action armed a sequence rule, on the records of the rule's decisions.
//!
//! The kernel reports an arming once, on the event of the open that armed the rule (flag
//! `ARMED`; its rule is the sequence rule). The drainer remembers it per agent and rule (one
//! table per daemon, [`known`]) and names it on every later refusal by that rule (flag
//! `SEQUENCE`); the proxy names it from the same table (see `daemon::sequence`).

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use governance_common::{Event, flags};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Record;

/// The action that armed a sequence rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ArmedBy {
    /// `<policy>/<rule id>` of the sequence rule.
    pub rule: String,
    /// The kind of action: `file`.
    pub kind: String,
    /// What it acted on: the path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// The accesses (`r`, `w`, `c`, `t`) of a file open.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access: String,
    /// The process that did it.
    #[serde(default)]
    pub pid: u32,
    /// When (RFC 3339, UTC); empty when the arming was before the daemon started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
}

/// Most armings remembered (beyond it, the oldest-keyed go: a refusal then says the arming
/// is not known, never guesses).
const MAX_ARMINGS: usize = 16384;

/// The armings the kernel reported, per agent root and rule.
#[derive(Debug, Default)]
pub struct Armings {
    by: HashMap<(u64, String), ArmedBy>,
}

static ARMINGS: LazyLock<Mutex<Armings>> = LazyLock::new(Default::default);

/// How many armings the kernel has reported (the drainer counts them): what the proxy's
/// spliced connections wait on to re-check the armed state (see `proxy::tunnel`).
static ARMED_COUNT: LazyLock<tokio::sync::watch::Sender<u64>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Fill `r.armed_by` for a sequence-rule kernel event `ev` (and remember an arming) in the
/// daemon's table; an arming also wakes what waits in [`armings`]. Other events are left
/// alone.
pub fn name(ev: &Event, r: &mut Record) {
    if ev.flags & (flags::ARMED | flags::SEQUENCE) != 0 {
        ARMINGS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .name(ev, r);
    }
    if ev.flags & flags::ARMED != 0 {
        armed_changed();
    }
}

/// Some agent's armed state changed: wake every receiver of [`armings`].
pub fn armed_changed() {
    ARMED_COUNT.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that sees each [`armed_changed`] from now on. The events it counts come from
/// the ring buffer, which can drop them: who waits on it re-checks on a timer as well.
pub fn armings() -> tokio::sync::watch::Receiver<u64> {
    ARMED_COUNT.subscribe()
}

/// The arming of `rule` by the agent whose root is `agent_cgroup`, if the kernel reported it.
pub fn known(agent_cgroup: u64, rule: &str) -> Option<ArmedBy> {
    ARMINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .by
        .get(&(agent_cgroup, rule.to_owned()))
        .cloned()
}

impl Armings {
    /// Fill `r.armed_by` for a sequence-rule event `ev` (and remember an arming).
    pub fn name(&mut self, ev: &Event, r: &mut Record) {
        let key = (ev.agent_cgroup, r.rule.clone());
        if ev.flags & flags::ARMED != 0 {
            let armed = ArmedBy {
                rule: r.rule.clone(),
                kind: r.kind.to_string(),
                object: r.object.path.clone(),
                access: r.object.access.clone(),
                pid: ev.tgid,
                time: r.time.clone(),
            };
            if self.by.len() >= MAX_ARMINGS && !self.by.contains_key(&key) {
                self.by.clear();
            }
            self.by.insert(key, armed.clone());
            r.armed_by = Some(Box::new(armed));
        } else if ev.flags & flags::SEQUENCE != 0 {
            let rule = match &r.shadow {
                // A shadow sequence rule: the decision stands, the shadow names the rule.
                Some(s) if ev.flags & flags::DENIED == 0 => s.rule.clone(),
                _ => r.rule.clone(),
            };
            r.armed_by = Some(Box::new(
                self.by
                    .get(&(ev.agent_cgroup, rule.clone()))
                    .cloned()
                    .unwrap_or(ArmedBy {
                        rule,
                        kind: "unknown: armed before the daemon started".into(),
                        ..Default::default()
                    }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use governance_common::{Kind, Verdict};

    use super::*;

    fn event(kind: Kind, flags: u8, tgid: u32) -> Event {
        // SAFETY: Event is plain data; all zeroes is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.agent_cgroup = 77;
        ev.tgid = tgid;
        ev.kind = kind as u8;
        ev.verdict = Verdict::Block as u8;
        ev.flags = flags;
        ev
    }

    #[test]
    fn a_refusal_names_the_open_that_armed_its_rule() {
        let mut t = Armings::default();
        let mut arming = Record {
            kind: "file".into(),
            rule: "p/pii".into(),
            time: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        arming.object.path = "/data/pii/x.csv".into();
        arming.object.access = "r".into();
        t.name(&event(Kind::File, flags::ARMED, 5), &mut arming);
        let by = arming.armed_by.clone().expect("the arming names itself");
        assert_eq!(
            (
                by.rule.as_str(),
                by.kind.as_str(),
                by.object.as_str(),
                by.pid
            ),
            ("p/pii", "file", "/data/pii/x.csv", 5)
        );
        let mut refusal = Record {
            kind: "connect".into(),
            rule: "p/pii".into(),
            ..Default::default()
        };
        t.name(
            &event(Kind::Connect, flags::SEQUENCE | flags::DENIED, 9),
            &mut refusal,
        );
        assert_eq!(refusal.armed_by, Some(by));
        // In words and in OCSF.
        refusal.ty = super::super::RecordType::Decision;
        let line = refusal.to_string();
        assert!(
            line.contains(" armed_by=file:\"/data/pii/x.csv\" armed_pid=5"),
            "{line}"
        );
        let ocsf = crate::ocsf::to_ocsf(&refusal);
        assert_eq!(
            ocsf["unmapped"]["armed_by"]["object"], "/data/pii/x.csv",
            "{ocsf}"
        );
        // An arming from before the daemon started is said to be unknown, never guessed.
        let mut other = Record {
            rule: "p/other".into(),
            ..Default::default()
        };
        t.name(
            &event(Kind::Connect, flags::SEQUENCE | flags::DENIED, 9),
            &mut other,
        );
        assert!(other.armed_by.unwrap().kind.starts_with("unknown"));
        // Events of no sequence rule are left alone.
        let mut plain = Record::default();
        t.name(&event(Kind::Connect, flags::DENIED, 9), &mut plain);
        assert_eq!(plain.armed_by, None);
    }
}
