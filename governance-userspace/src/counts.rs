//! Allowed actions the kernel counted rather than recorded (`report: count` and `sample`, see
//! docs/policy.md): the totals since the daemon started, per agent, rule and kind, for the
//! metrics (`governance_allowed_counted_total`) and `governance agents`. The daemon reads the
//! kernel's counters (daemon/counts.rs) and adds what they grew by here.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

/// (agent, rule, kind) → allowed actions counted.
type Table = BTreeMap<(String, String, String), u64>;

#[derive(Debug, Default)]
struct Inner {
    /// By agent name (for the API).
    agents: Table,
    /// By the metrics' bounded agent label.
    labelled: Table,
    /// Actions reported as events because the kernel's count table was full.
    overflow: u64,
    read: bool,
}

/// The totals. Shared in an `Arc` by the daemon, the metrics and the API.
#[derive(Debug, Default)]
pub struct Counted(Mutex<Inner>);

impl Counted {
    /// `n` more allowed actions of `kind` by `agent` (metrics label `label`) under `rule`.
    pub fn add(&self, agent: &str, label: String, rule: &str, kind: &str, n: u64) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t.agents
            .entry((agent.to_owned(), rule.to_owned(), kind.to_owned()))
            .or_default() += n;
        *t.labelled
            .entry((label, rule.to_owned(), kind.to_owned()))
            .or_default() += n;
        t.read = true;
    }

    /// The kernel's overflow count, as last read.
    pub fn set_overflow(&self, n: u64) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        t.overflow = n;
        t.read = true;
    }

    /// One agent's counts: `<rule> <kind>` → n.
    pub fn of_agent(&self, agent: &str) -> BTreeMap<String, u64> {
        let t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        t.agents
            .iter()
            .filter(|((a, _, _), _)| a == agent)
            .map(|((_, rule, kind), n)| (format!("{rule} {kind}"), *n))
            .collect()
    }
}

impl Collector for Counted {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !t.read {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "allowed_counted",
            "Allowed actions the kernel counted rather than recorded (report: count or sample), by agent (bounded, see _other), rule (`default`: no rule matched) and kind",
            None,
            MetricType::Counter,
        )?;
        for ((agent, rule, kind), n) in &t.labelled {
            let labels = [
                ("agent", agent.clone()),
                ("rule", rule.clone()),
                ("kind", kind.clone()),
            ];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let c = ConstCounter::new(t.overflow);
        c.encode(encoder.encode_descriptor(
            "kernel_count_overflow",
            "Allowed actions reported as events instead of counted because the kernel's count table was full",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}
