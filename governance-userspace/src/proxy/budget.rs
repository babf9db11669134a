//! The bodies the proxy holds to decide on them: a budget per agent and one for all. A body is
//! the daemon's memory, not the agent's (its `memory.max` does not count it), and an agent has
//! up to `max_conns_per_agent` connections of 128 HTTP/2 streams each: without a budget, one
//! agent's streams of bodies it never finishes held gigabytes until `body_timeout` (red team
//! round 28: 254 streams took the daemon from 68 to 398 MB in two seconds). A body that does
//! not fit is refused at once (503), never waited for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reserved in KiB (a semaphore's permits are counted in `u32`s).
const UNIT: usize = 1024;

/// Agents whose budget is idle are forgotten once this many are known.
const AGENTS_KEPT: usize = 1024;

pub struct BodyBudget {
    per_agent: u32,
    total: Arc<Semaphore>,
    agents: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Room held for one body; given back when dropped.
#[derive(Debug)]
pub struct BodyHold {
    _agent: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl BodyBudget {
    pub fn new(per_agent: usize, total: usize) -> Self {
        let units = |b: usize| u32::try_from(b.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1);
        Self {
            per_agent: units(per_agent).min(units(total)),
            total: Arc::new(Semaphore::new(units(total) as usize)),
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// Room for a body of up to `bytes` for `agent`, if its budget and the total have it (a
    /// body larger than a budget takes the whole budget).
    pub fn reserve(&self, agent: &str, bytes: usize) -> Option<BodyHold> {
        let want = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.per_agent);
        let own = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            if agents.len() >= AGENTS_KEPT && !agents.contains_key(agent) {
                let full = self.per_agent as usize;
                agents.retain(|_, s| s.available_permits() < full);
            }
            agents
                .entry(agent.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_agent as usize)))
                .clone()
        };
        let agent = own.try_acquire_many_owned(want).ok()?;
        let total = self.total.clone().try_acquire_many_owned(want).ok()?;
        Some(BodyHold {
            _agent: agent,
            _total: total,
        })
    }
}

#[cfg(test)]
impl BodyBudget {
    /// Bytes held, for all agents (rounded to whole KiB).
    pub fn held(&self) -> usize {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .values()
            .map(|s| self.per_agent as usize - s.available_permits())
            .sum::<usize>()
            * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_holds_its_budget_and_no_more_and_gives_it_back() {
        let b = BodyBudget::new(4 << 20, 6 << 20);
        let held: Vec<BodyHold> = (0..4).map(|_| b.reserve("a", 1 << 20).unwrap()).collect();
        assert!(b.reserve("a", 1).is_none(), "a's budget is spent");
        // Another agent has its own, within what is left of the total (2 MiB).
        let other = b.reserve("b", 2 << 20).unwrap();
        assert!(b.reserve("c", 1 << 20).is_none(), "the total is spent");
        drop(held);
        assert!(b.reserve("a", 1 << 20).is_some(), "given back when dropped");
        drop(other);
        // A body larger than the budget takes all of it.
        let all = b.reserve("d", 64 << 20).unwrap();
        assert!(b.reserve("d", 1).is_none());
        drop(all);
    }
}
