//! A drill's canary agent in the kernel maps (see [`crate::drill`]): its classes are written
//! into the *active* generation's slot beside the generation's own (numbered after them, see
//! [`super::compile_from`]), and every entry it added is removed again, whatever happened in
//! between. The generation does not change: real agents' tables are not touched.

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use governance_common::{
    AgentKey, AgentValue, BUILTIN_CLASS_BASE, Bucket, BucketKey, ExecKey, IdentKey, IdentValue,
    NetKey, NetValue, PathKey, RulePair, Written, maps,
};

use super::{Enforcer, KernelError, KernelPolicy, SlotEntries, slots::Table};

/// What a canary added to the maps, to be removed by [`Enforcer::remove_canary`].
#[derive(Debug, Default)]
pub struct Canary {
    pub cgroup_id: u64,
    /// The active slot when it was added.
    slot: u32,
    /// The canary's class ids (its own and its sandbox profiles').
    classes: Vec<u32>,
    /// Built-in path classes no live agent used, written for the canary.
    builtins: Vec<u32>,
    agents: Vec<AgentKey>,
}

/// The class id of a path or net key.
fn class_of(class_be: [u8; 4]) -> u32 {
    u32::from_be_bytes(class_be)
}

impl Enforcer {
    /// Write `policy` (compiled for the canary alone, for the active generation, with class
    /// numbers after the generation's own) into the active slot. On error, what was written is
    /// removed before returning.
    pub fn add_canary(&mut self, mut policy: KernelPolicy) -> Result<Canary, KernelError> {
        let active = self.generation()?;
        if active != policy.generation {
            return Err(KernelError::Canary(format!(
                "compiled for generation {}, generation {active} enforces",
                policy.generation
            )));
        }
        let slot = governance_common::slot(active);
        let existing = self.builtin_classes()?;
        let canary = Canary {
            cgroup_id: policy.agents.first().map_or(0, |(id, _)| *id),
            slot,
            classes: policy.classes.iter().map(|c| c.id).collect(),
            builtins: policy
                .builtins
                .iter()
                .map(|c| c.id)
                .filter(|id| !existing.contains(id))
                .collect(),
            agents: policy
                .agents
                .iter()
                .map(|(cgroup_id, _)| AgentKey {
                    cgroup_id: *cgroup_id,
                    slot,
                    profile: 0,
                })
                .chain(
                    policy
                        .profiles
                        .iter()
                        .map(|&(cgroup_id, profile, _)| AgentKey {
                            cgroup_id,
                            slot,
                            profile,
                        }),
                )
                .collect(),
        };
        // (Its socket files are not the generation's: the daemon keeps following those.)
        let mut entries = self.entries(&mut policy).entries;
        // The shared built-in classes already in the slot are the generation's, which its
        // agents' own identity entries were made against: the canary reads them as they are
        // and never rewrites them.
        entries.paths.retain(|k| !existing.contains(&k.0));
        entries.idents.retain(|k| !existing.contains(&k.0));
        // The active slot's filter gains the canary's identities before they are written.
        let result = self
            .write_ident_filter(slot, super::ident_filter::filter_of(&entries.idents), true)
            .and_then(|()| self.apply(slot, &SlotEntries::default(), &entries));
        // Recorded with the slot's own entries: should the canary's removal fail, the next
        // install into this slot deletes them (a key already removed is no error there).
        self.record_in_slot(slot, entries);
        let result = result
            .and_then(|_| self.write_sequences(&policy, slot))
            .and_then(|()| self.mark_allowlists(&policy, slot, false));
        if let Err(e) = result {
            let _ = self.remove_canary(&canary);
            return Err(e);
        }
        Ok(canary)
    }

    /// The canary as an agent root with the tables of a live agent (`value`: its entry in
    /// the active slot, see [`Enforcer::agent_value`]): what the drill probes is then what
    /// decides for that agent, as it is in the maps now.
    pub fn add_canary_agent(
        &mut self,
        cgroup_id: u64,
        value: AgentValue,
    ) -> Result<Canary, KernelError> {
        let key = self.put_agent(cgroup_id, value)?;
        Ok(Canary {
            cgroup_id,
            slot: key.slot,
            agents: vec![key],
            ..Default::default()
        })
    }

    /// Agent root `cgroup_id` written into the active slot with `value`, outside an install
    /// (a canary, a quarantined agent), and recorded as that slot's, so that the next install
    /// into it removes it.
    pub(super) fn put_agent(
        &mut self,
        cgroup_id: u64,
        value: AgentValue,
    ) -> Result<AgentKey, KernelError> {
        let slot = governance_common::slot(self.generation()?);
        let key = AgentKey {
            cgroup_id,
            slot,
            profile: 0,
        };
        let name = maps::AGENTS;
        let mut map: HashMap<_, AgentKey, AgentValue> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let written = map.insert(key, value, 0);
        self.record_in_slot(
            slot,
            SlotEntries {
                agents: Table::from_writes(vec![((cgroup_id, 0), value)]),
                ..Default::default()
            },
        );
        written.map_err(|source| KernelError::Map { name, source })?;
        Ok(key)
    }

    /// The AGENTS entry of agent root `cgroup_id` in the active slot.
    pub fn agent_value(&self, cgroup_id: u64) -> Result<Option<AgentValue>, KernelError> {
        let slot = governance_common::slot(self.generation()?);
        let agents = self.agents_map()?;
        let key = AgentKey {
            cgroup_id,
            slot,
            profile: 0,
        };
        match agents.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::Map {
                name: maps::AGENTS,
                source,
            }),
        }
    }

    /// Remove every entry [`Enforcer::add_canary`] wrote, and what the canary's processes left
    /// keyed by its cgroup (throttle buckets, files it wrote, sequence rules it armed).
    pub fn remove_canary(&mut self, canary: &Canary) -> Result<(), KernelError> {
        let ours = |id: u32| canary.classes.contains(&id) || canary.builtins.contains(&id);
        let result = self.remove_canary_entries(canary, &ours);
        match result {
            Ok(()) => self.forget_in_slot(canary.slot, &ours, &canary.agents),
            // Removed half-way: what the slot holds is unknown (the next install into it walks
            // the tables).
            Err(_) => self.slots[(canary.slot & 1) as usize] = None,
        }
        result
    }

    fn remove_canary_entries(
        &mut self,
        canary: &Canary,
        ours: &dyn Fn(u32) -> bool,
    ) -> Result<(), KernelError> {
        macro_rules! remove {
            ($name:expr, $ty:ident, $k:ty, $v:ty, $pred:expr) => {{
                let name = $name;
                let mut map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
                // An error ends the walk: never taken for "no more keys" (red team round 17:
                // a short list of built-in classes would take the generation's for the canary's).
                let keys: Vec<_> = map
                    .keys()
                    .collect::<Result<_, _>>()
                    .map_err(|source| KernelError::Map { name, source })?;
                let stale: Vec<_> = keys.into_iter().filter($pred).collect();
                for key in stale {
                    map.remove(&key)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }};
        }
        // The agent entries first: from then on the canary's processes are nobody's.
        remove!(
            maps::AGENTS,
            HashMap,
            AgentKey,
            AgentValue,
            |k: &AgentKey| { canary.agents.contains(k) }
        );
        remove!(
            maps::EXEC_RULES,
            HashMap,
            ExecKey,
            RulePair,
            |k: &ExecKey| { ours(k.class) }
        );
        remove!(maps::PATH_RULES, LpmTrie, PathKey, RulePair, |k: &Key<
            PathKey,
        >| {
            ours(class_of(k.data().class_be))
        });
        remove!(maps::NET_RULES, LpmTrie, NetKey, NetValue, |k: &Key<
            NetKey,
        >| ours(
            class_of(k.data().class_be)
        ));
        remove!(
            maps::UNIX_RULES,
            HashMap,
            governance_common::UnixKey,
            RulePair,
            |k: &governance_common::UnixKey| ours(k.class)
        );
        remove!(
            maps::IDENT_RULES,
            HashMap,
            IdentKey,
            IdentValue,
            |k: &IdentKey| { ours(k.class) }
        );
        remove!(
            maps::SEQ_CLASSES,
            HashMap,
            u32,
            governance_common::sequence::SeqList,
            |k: &u32| ours(*k)
        );
        if canary.cgroup_id != 0 {
            remove!(
                maps::BUCKETS,
                HashMap,
                BucketKey,
                Bucket,
                |k: &BucketKey| { k.owner == canary.cgroup_id }
            );
            let name = maps::WRITTEN;
            let mut map: HashMap<_, ExecKey, Written> = HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            let entries: Vec<(ExecKey, Written)> = map
                .iter()
                .collect::<Result<_, _>>()
                .map_err(|source| KernelError::Map { name, source })?;
            let stale: Vec<ExecKey> = entries
                .into_iter()
                .filter(|(_, written)| written.owner == canary.cgroup_id)
                .map(|(k, _)| k)
                .collect();
            for key in stale {
                map.remove(&key)
                    .map_err(|source| KernelError::Map { name, source })?;
            }
            // What a sequence probe armed, and its refused packets' report times.
            remove!(
                maps::SEQ_STATE,
                HashMap,
                governance_common::sequence::SeqStateKey,
                governance_common::sequence::SeqArmed,
                |k: &governance_common::sequence::SeqStateKey| k.agent_cgroup == canary.cgroup_id
            );
            // An LRU hash: aya reads and removes it as a HashMap.
            remove!(
                maps::SEQ_EGRESS_REPORTED,
                HashMap,
                governance_common::sequence::SeqEgressKey,
                u64,
                |k: &governance_common::sequence::SeqEgressKey| k.agent_cgroup == canary.cgroup_id
            );
        }
        Ok(())
    }

    /// The built-in path classes in the maps now.
    fn builtin_classes(&mut self) -> Result<Vec<u32>, KernelError> {
        let name = maps::PATH_RULES;
        let map: LpmTrie<_, PathKey, RulePair> = LpmTrie::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let keys: Vec<_> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| KernelError::Map { name, source })?;
        let mut out: Vec<u32> = keys
            .into_iter()
            .map(|k| class_of(k.data().class_be))
            .filter(|c| governance_common::id_number(*c) >= BUILTIN_CLASS_BASE)
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The cgroup ids of the agent entries in the AGENTS map (both slots), for checks that a
    /// canary left nothing behind.
    pub fn agent_cgroups(&self) -> Result<Vec<u64>, KernelError> {
        Ok(self
            .agents_map()?
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.cgroup_id)
            .collect())
    }
}
