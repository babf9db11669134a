//! Agents found while no generation can be built: refused everything until one governs them.
//!
//! A reload that fails (a policy that does not fit the kernel's tables, a table an agent filled
//! with names, a kernel error) leaves the generation in force enforcing, and an agent cgroup
//! that appeared since is in none of its tables: nothing would decide for it (red team round
//! 24). Such an agent root is put in the active generation under the quarantine class
//! ([`governance_common::QUARANTINE_CLASS`]: no tables, every default refusing, the shared
//! built-ins beside). The next generation that installs holds it as its policy says, and the entry goes
//! with the slot it was written to.
use super::*;
use governance_common::AgentKey;

impl Enforcer {
    /// Put agent root `cgroup_id` in the active generation under the quarantine class, unless
    /// the generation holds it already. Whether it was added.
    pub fn quarantine(&mut self, cgroup_id: u64) -> Result<bool, KernelError> {
        if self.agent_value(cgroup_id)?.is_some() {
            return Ok(false);
        }
        let generation = self.generation()?;
        let slot = governance_common::slot(generation);
        let value = AgentValue::refusing_everything(governance_common::class_id(
            generation,
            governance_common::QUARANTINE_CLASS,
        ));
        let name = maps::AGENTS;
        let mut map: HashMap<_, AgentKey, AgentValue> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let key = AgentKey {
            cgroup_id,
            slot,
            profile: 0,
        };
        let written = map.insert(key, value, 0);
        self.record_in_slot(
            slot,
            slots::SlotEntries {
                agents: slots::Table::from_writes(vec![((cgroup_id, 0), value)]),
                ..Default::default()
            },
        );
        written.map_err(|source| KernelError::Map { name, source })?;
        Ok(true)
    }
}
