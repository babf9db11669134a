//! The kernel's sequence-rule tables (see governance_common::sequence): each generation's
//! per-class lists, and the armed state, which outlives generations.
//!
//! Across reloads: the state is keyed by the agent root and a hash of the rule's name, so a
//! rule that keeps its `<policy>/<rule>` id stays armed (its window still runs from the first
//! arming; a changed `for` applies to it). After each install the entries of agents and rules
//! the new generation does not have are deleted: a rule that is removed and comes back starts
//! unarmed, and an agent whose cgroup went away leaves nothing behind. The table is bounded
//! ([`MAX_SEQ_STATE`]); when it is full an arming open is refused (fail closed).

use governance_common::sequence::{MAX_SEQ_STATE, SeqArmed, SeqList, SeqStateKey};

use super::*;

impl Enforcer {
    pub(super) fn write_sequences(
        &mut self,
        policy: &KernelPolicy,
        slot: u32,
    ) -> Result<(), KernelError> {
        let name = maps::SEQ_CLASSES;
        let mut lists: HashMap<_, u32, SeqList> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        for (class, list) in &policy.sequences {
            lists
                .insert(class, list, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        // Set, never cleared here: a drill's canary adds its lists to the active slot.
        if !policy.sequences.is_empty() {
            self.set_seq_any(slot, 1)?;
        }
        Ok(())
    }

    /// `sequence_egress` walks a packet's cgroups only while its slot's flag is set.
    fn set_seq_any(&mut self, slot: u32, value: u32) -> Result<(), KernelError> {
        let name = maps::SEQ_ANY;
        let mut any: Array<_, u32> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        any.set(slot, value, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    pub(super) fn clear_sequences(&mut self, slot: u32) -> Result<(), KernelError> {
        self.set_seq_any(slot, 0)?;
        let name = maps::SEQ_CLASSES;
        let mut lists: HashMap<_, u32, SeqList> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let stale: Vec<u32> = lists
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k >> 31 == slot)
            .collect();
        for key in stale {
            lists
                .remove(&key)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(())
    }

    /// Delete the armed state that `policy` (the active generation) cannot reach: agents it
    /// does not have, rules none of its classes lists.
    pub(super) fn prune_sequences(&mut self, policy: &KernelPolicy) -> Result<(), KernelError> {
        let agents: std::collections::BTreeSet<u64> =
            policy.agents.iter().map(|(id, _)| *id).collect();
        let rules: std::collections::BTreeSet<u64> = policy
            .sequences
            .iter()
            .flat_map(|(_, l)| l.entries[..l.len as usize].iter().map(|e| e.state))
            .collect();
        let name = maps::SEQ_STATE;
        let mut state: HashMap<_, SeqStateKey, SeqArmed> =
            HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
        let stale: Vec<SeqStateKey> = state
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !agents.contains(&k.agent_cgroup) || !rules.contains(&k.state))
            .collect();
        for key in stale {
            state
                .remove(&key)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let left = state.keys().count();
        if left as u32 * 10 >= MAX_SEQ_STATE * 9 {
            tracing::warn!(
                armed = left,
                capacity = MAX_SEQ_STATE,
                "the sequence-rule state table is nearly full: opens that would arm a rule are refused when it is"
            );
        }
        Ok(())
    }

    /// The armed sequence rules: (agent root, rule state id) → when and by whom.
    pub fn armed(&self) -> Result<Vec<(SeqStateKey, SeqArmed)>, KernelError> {
        let name = maps::SEQ_STATE;
        let map = self.map(name)?;
        let state: HashMap<_, SeqStateKey, SeqArmed> =
            HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        Ok(state.iter().filter_map(Result::ok).collect())
    }
}

/// What the engine (the HTTP proxy) reads of the armed state: the pinned table, by agent.
/// Opened from the pin so that it needs no `Enforcer` lock per request.
pub fn armed_source(
    pin_dir: &Path,
    agents: &[crate::agents::AgentCgroup],
) -> crate::engine::ArmedSource {
    use crate::{engine::Armed, events::sequence::ArmedBy};
    let name = maps::SEQ_STATE;
    let map = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
        .map_err(|source| KernelError::Map { name, source })
        .and_then(|d| Map::from_map_data(d).map_err(|source| KernelError::Map { name, source }))
        .and_then(|m| {
            HashMap::<MapData, SeqStateKey, SeqArmed>::try_from(m)
                .map_err(|source| KernelError::Map { name, source })
        });
    let map = match map {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(
                "sequence rules: the kernel's armed state cannot be read ({e}); the proxy treats every sequence rule as armed (fail closed)"
            );
            None
        }
    };
    let ids: std::collections::HashMap<String, u64> = agents
        .iter()
        .map(|a| (a.rel.clone(), a.cgroup_id))
        .collect();
    std::sync::Arc::new(move |agent, rules| {
        let now = std::time::Instant::now();
        let mono = crate::events::monotonic_ns();
        let clock = crate::events::Clock::now();
        let cgroup = ids.get(&agent.cgroup).copied();
        rules
            .iter()
            .filter_map(|rule| {
                let unknown = |why: &str| Armed {
                    rule: rule.to_string(),
                    at: now,
                    by: ArmedBy {
                        rule: rule.to_string(),
                        kind: format!("unknown: {why}"),
                        ..Default::default()
                    },
                };
                let (Some(map), Some(cgroup)) = (&map, cgroup) else {
                    // An agent the generation does not know, or no state: fail closed.
                    return Some(unknown("the kernel's armed state is not available"));
                };
                let key = SeqStateKey {
                    agent_cgroup: cgroup,
                    state: compile::bucket_id(rule),
                };
                let armed = match map.get(&key, 0) {
                    Ok(a) => a,
                    Err(aya::maps::MapError::KeyNotFound) => return None,
                    Err(e) => return Some(unknown(&e.to_string())),
                };
                let ago = std::time::Duration::from_nanos(mono.saturating_sub(armed.armed_ns));
                let by = crate::events::sequence::known(cgroup, rule).unwrap_or(ArmedBy {
                    rule: rule.to_string(),
                    kind: "file".into(),
                    pid: armed.tgid,
                    time: crate::events::rfc3339(clock.wall(armed.armed_ns)),
                    ..Default::default()
                });
                Some(Armed {
                    rule: rule.to_string(),
                    at: now.checked_sub(ago).unwrap_or(now),
                    by,
                })
            })
            .collect()
    })
}
