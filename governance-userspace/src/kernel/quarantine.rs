//! Agents found while no generation can be built: refused everything until one governs them.
//!
//! A reload that fails (a policy that does not fit the kernel's tables, a table an agent filled
//! with names, a kernel error) leaves the generation in force enforcing, and an agent cgroup
//! that appeared since is in none of its tables: nothing would decide for it (red team round
//! 24). Such an agent root is put in the active generation under the quarantine class
//! ([`governance_common::QUARANTINE_CLASS`]: no tables, every default refusing, the shared
//! built-ins beside). The next generation that installs holds it as its policy says, and the
//! entry goes with the slot it was written to.
use super::*;

impl Enforcer {
    /// Put agent root `cgroup_id` in the active generation under the quarantine class, unless
    /// the generation holds it already. Whether it was added.
    pub fn quarantine(&mut self, cgroup_id: u64) -> Result<bool, KernelError> {
        if self.agent_value(cgroup_id)?.is_some() {
            return Ok(false);
        }
        let class =
            governance_common::class_id(self.generation()?, governance_common::QUARANTINE_CLASS);
        self.put_agent(cgroup_id, AgentValue::refusing_everything(class))?;
        Ok(true)
    }
}
