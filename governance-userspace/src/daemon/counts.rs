//! The kernel's counts of allowed actions (`report: count` and `sample`): read once a second
//! into the metrics and `governance agents`, and written to the audit log as `decisions.counted`
//! records, so that the log states what was counted rather than recorded.
//!
//! A count record carries, for one agent and rule, the actions of each kind counted since the
//! previous count record: an auditor adds them up. One goes out every [`RECORD_EVERY`], after
//! a reload (rule ids change with the generation) and when the daemon stops, for every agent and
//! rule whose counts grew. The kernel keys its counters by generation; a generation that no
//! longer decides has its counters removed once a read finds them unchanged (every decision it
//! took is then in). When the daemon stops it takes the counters in full and resets them, so the
//! next run counts from there (the actions of the instant between that last read and the reset
//! are the only ones not in a record).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use governance_common::{CountKey, Kind};

use super::generation::SharedNames;
use crate::{
    events::{AgentInfo, Names, Record, RecordType},
    kernel::Enforcer,
    metrics::Metrics,
    pipeline::Publisher,
};

/// How often count records go to the audit log (when something was counted).
pub(super) const RECORD_EVERY: Duration = Duration::from_secs(30);

/// The file, beside the copy of the policy in force, that holds the kernel's totals the count
/// records so far cover ([`Counts::resume`]).
pub(super) const RECORDED: &str = "counted.json";
const RECORDED_VERSION: u32 = 1;

/// What [`RECORDED`] holds: per counter (agent, generation, rule, kind) the total the count
/// records cover, and the overflow entry's.
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    version: u32,
    /// The counters these totals are of ([`Enforcer::counters_identity`]).
    counters: String,
    totals: Vec<(u64, u32, u32, u8, u64)>,
    overflow: u64,
}

/// What the daemon has taken from the kernel's counters.
#[derive(Default)]
pub(super) struct Counts {
    /// Where the totals the count records cover are kept ([`RECORDED`]), and which counters
    /// they are of.
    recorded: Option<(std::path::PathBuf, String)>,
    /// The last total read per counter.
    seen: HashMap<CountKey, u64>,
    /// Counted since the last count record.
    pending: BTreeMap<CountKey, u64>,
    overflow_seen: u64,
    overflow_pending: u64,
    last_record: Option<Instant>,
    warned: bool,
}

/// Actions counted, by kind.
type Counted = BTreeMap<String, u64>;

/// Who and what a counter counts: the agent, its rule (`default`: none matched), the kind.
fn describe(
    names: &BTreeMap<u32, std::sync::Arc<Names>>,
    key: &CountKey,
) -> (std::sync::Arc<AgentInfo>, String) {
    let gen_names = names.get(&key.generation);
    let agent = gen_names
        .and_then(|n| n.agents.get(&key.agent))
        .cloned()
        .unwrap_or_else(|| {
            std::sync::Arc::new(AgentInfo {
                name: format!("cgroup {}", key.agent),
                cgroup_id: key.agent,
                ..Default::default()
            })
        });
    let rule = if key.rule_id == governance_common::NO_RULE {
        "default".to_owned()
    } else {
        gen_names
            .and_then(|n| n.rule(key.rule_id))
            .map(|r| r.id.clone())
            .unwrap_or_else(|| {
                format!(
                    "#{} (generation {})",
                    governance_common::id_number(key.rule_id),
                    key.generation
                )
            })
    };
    (agent, rule)
}

fn kind_name(key: &CountKey) -> &'static str {
    Kind::from_u8(key.kind).map_or("unknown", Kind::as_str)
}

impl Counts {
    /// Counts that go on from the totals the last count records covered, as kept at `path`
    /// ([`RECORDED`]). The kernel's counters are pinned and reset only when a daemon stops
    /// cleanly: after a crash (or a kill) they still hold what the records of the daemon before
    /// covered, which would be recorded again (red team round 32: an auditor's sum counted 205
    /// actions for 105). Only for the same counters (`counters`: this boot's, the same map):
    /// counters made anew (a reboot, an unload) may reuse a key (cgroup ids and generations
    /// start again), whose new actions must not be taken for recorded ones (the review of
    /// round 32: 10 of 38,010 went missing), and only for the counters the kernel still has (a
    /// clean stop removed its own). Nothing is kept where the counters' identity is unknown.
    pub(super) fn resume(path: std::path::PathBuf, enforcer: &Mutex<Enforcer>) -> Counts {
        let (counters, there) = match enforcer.lock() {
            Ok(mut e) => (e.counters_identity(), e.counted().unwrap_or_default()),
            Err(_) => (None, Vec::new()),
        };
        let Some(counters) = counters else {
            let _ = std::fs::remove_file(&path);
            return Counts::default();
        };
        let there: HashMap<CountKey, u64> = there.into_iter().collect();
        let mut counts = Counts {
            recorded: Some((path.clone(), counters.clone())),
            ..Default::default()
        };
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Recorded>(&b)) {
            Ok(Ok(r)) if r.version == RECORDED_VERSION && r.counters != counters => {
                // Of counters that are gone: never read again.
                let _ = std::fs::remove_file(&path);
            }
            Ok(Ok(r)) if r.version == RECORDED_VERSION => {
                for (agent, generation, rule_id, kind, total) in r.totals {
                    let key = CountKey {
                        agent,
                        generation,
                        rule_id,
                        kind,
                        _pad: [0; 7],
                    };
                    if there.contains_key(&key) {
                        counts.seen.insert(key, total);
                    }
                }
                counts.overflow_seen = r.overflow;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => tracing::warn!(
                "{}: not a file of this version; counts are recorded from the kernel's totals",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "{}: {e}; counts are recorded from the kernel's totals",
                path.display()
            ),
        }
        counts
    }

    /// Keep the totals the count records made so far cover ([`RECORDED`]).
    fn keep(&mut self) {
        let Some((path, counters)) = &self.recorded else {
            return;
        };
        let recorded = Recorded {
            version: RECORDED_VERSION,
            counters: counters.clone(),
            totals: self
                .seen
                .iter()
                .map(|(k, t)| (k.agent, k.generation, k.rule_id, k.kind, *t))
                .collect(),
            overflow: self.overflow_seen,
        };
        let written = serde_json::to_vec(&recorded)
            .map_err(std::io::Error::from)
            .and_then(|json| crate::durable::replace(path, 0o600, |w| w.write_all(&json)));
        if let Err(e) = written
            && !self.warned
        {
            tracing::warn!(
                "keeping the totals the count records cover in {}: {e}; after a crash the next \
                 daemon records them again",
                path.display()
            );
            self.warned = true;
        }
    }

    /// Read the kernel's counters: what grew goes to the metrics and the next count record.
    /// `reset`: take them in full and remove them (the daemon stops).
    pub(super) fn read(
        &mut self,
        enforcer: &Mutex<Enforcer>,
        names: &SharedNames,
        metrics: &Metrics,
        current: u32,
        reset: bool,
    ) {
        let Ok(mut e) = enforcer.lock() else { return };
        let all = match e.counted() {
            Ok(all) => all,
            Err(err) => {
                if !self.warned {
                    tracing::warn!("reading the kernel's counts of allowed actions: {err}");
                    self.warned = true;
                }
                return;
            }
        };
        let names = names.read().map(|n| n.clone()).unwrap_or_default();
        let mut done = Vec::new();
        for (key, total) in all {
            if key == CountKey::OVERFLOW {
                // Below what was seen: made again meanwhile, all of it is new.
                self.overflow_pending += if total < self.overflow_seen {
                    total
                } else {
                    total - self.overflow_seen
                };
                self.overflow_seen = total;
                metrics.counted().set_overflow(total);
                continue;
            }
            // Below what was seen: removed and made again meanwhile, all of it is new.
            let before = self.seen.get(&key).copied().unwrap_or(0);
            let grew = if total < before {
                total
            } else {
                total - before
            };
            if grew > 0 {
                *self.pending.entry(key).or_default() += grew;
                let (agent, rule) = describe(&names, &key);
                metrics.add_counted(&agent.name, &rule, kind_name(&key), grew);
            }
            self.seen.insert(key, total);
            if reset || (grew == 0 && key.generation != current) {
                done.push(key);
            }
        }
        if !done.is_empty() {
            match e.forget_counts(&done) {
                Ok(()) => {
                    for k in &done {
                        self.seen.remove(k);
                    }
                }
                Err(err) => tracing::warn!("removing taken counts of allowed actions: {err}"),
            }
        }
    }

    /// Make the counters generation `generation` counts in (before it counts: the programs
    /// report an action with no counter as an event).
    pub(super) fn prepare(
        &mut self,
        enforcer: &Mutex<Enforcer>,
        set: &crate::policy::PolicySet,
        agents: &[crate::agents::AgentCgroup],
        generation: u32,
    ) {
        let (mut keys, wanted) = crate::kernel::count_keys(set, agents, generation);
        if keys.is_empty() {
            return;
        }
        // The entry that counts the actions that find no counter, first (never removed).
        keys.insert(0, CountKey::OVERFLOW);
        let Ok(mut e) = enforcer.lock() else { return };
        let wanted = wanted + 1;
        match e.prepare_counts(&keys) {
            Ok(there) if there < wanted => tracing::warn!(
                "the kernel's count table is full: {} of {wanted} counters of generation {generation} could not be made; those actions are recorded as events instead",
                wanted - there,
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                "making the counters of generation {generation}: {err}; counted actions are recorded as events instead"
            ),
        }
    }

    /// The count records of what was counted since the last ones (none if nothing was).
    pub(super) fn records(&mut self, names: &SharedNames) -> Vec<Record> {
        self.last_record = Some(Instant::now());
        if !self.pending.is_empty() || self.overflow_pending > 0 {
            // Kept before the records go out: a crash in between loses them rather than
            // counting them twice.
            self.keep();
        }
        let names = names.read().map(|n| n.clone()).unwrap_or_default();
        // One record per agent and rule, whatever generations counted.
        let mut by: BTreeMap<(u64, String), (std::sync::Arc<AgentInfo>, u32, Counted)> =
            BTreeMap::new();
        for (key, n) in std::mem::take(&mut self.pending) {
            let (agent, rule) = describe(&names, &key);
            let entry = by
                .entry((key.agent, rule))
                .or_insert_with(|| (agent, key.generation, BTreeMap::new()));
            entry.1 = entry.1.max(key.generation);
            *entry.2.entry(kind_name(&key).to_owned()).or_default() += n;
        }
        let mut out: Vec<Record> = by
            .into_iter()
            .map(|((_, rule), (agent, generation, counts))| {
                let mut r = Record::daemon(
                    RecordType::Lifecycle,
                    "decisions.counted",
                    "allowed actions counted, not recorded one by one, since the previous count record",
                );
                r.verdict = "allow".into();
                r.rule = rule;
                r.agent = Some(agent);
                r.generation = generation;
                r.counts = counts;
                r
            })
            .collect();
        if self.overflow_pending > 0 {
            let mut r = Record::daemon(
                RecordType::Lifecycle,
                "decisions.count_overflow",
                "the kernel's count table was full: these allowed actions were recorded as events instead of counted",
            );
            r.counts.insert(
                "overflow".into(),
                std::mem::take(&mut self.overflow_pending),
            );
            out.push(r);
        }
        out
    }

    /// Once a second: read, and publish the count records when they are due (`now`: a reload
    /// or the daemon stopping).
    pub(super) fn tick(
        &mut self,
        enforcer: &Mutex<Enforcer>,
        names: &SharedNames,
        metrics: &Metrics,
        publisher: &Publisher,
        current: u32,
        now: bool,
    ) {
        self.read(enforcer, names, metrics, current, false);
        let due = self.last_record.is_none_or(|t| t.elapsed() >= RECORD_EVERY);
        if now || due {
            let records = self.records(names);
            if !records.is_empty() {
                publisher.publish_batch(records);
            }
        }
    }
}
