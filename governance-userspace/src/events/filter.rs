//! What a subscriber selects ([`Filter`]), and what a live stream's own records say.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Record, RecordType};

/// Which records a subscriber wants. Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Filter {
    /// Agent name (its label, or its cgroup path) or agent root cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Outcomes (allow, block, throttle, sandbox, escalate, granted, kill); `denied` matches
    /// every refused action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<String>,
    /// Kinds (exec, file, connect, send, http, approval.granted, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Record types (decision, approval, policy, lifecycle, discovery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<RecordType>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        if let Some(want) = &self.agent {
            let Some(a) = &r.agent else { return false };
            if a.name != *want && a.cgroup != *want {
                return false;
            }
        }
        // Outcomes are those of decisions: approvals, policy and lifecycle records pass (select
        // them away with `types`).
        if !self.outcomes.is_empty()
            && r.ty == RecordType::Decision
            && !self
                .outcomes
                .iter()
                .any(|o| *o == r.outcome || (o == "denied" && r.denied))
        {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| *k == r.kind) {
            return false;
        }
        self.types.is_empty() || self.types.contains(&r.ty)
    }
}

/// What a live stream's own records say: `stream.subscribed`, the first record of every live
/// stream, and `stream.ended`, its last when the daemon ends it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamInfo {
    /// The subscription's filters, as the daemon understood them.
    pub filter: Filter,
    /// The id of the last record the daemon recorded before the subscription: live records
    /// are the ones after it. Empty when the daemon has recorded nothing yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_id: String,
    /// The audit sequence number of the first live record (a replay with `since` stops just
    /// before it).
    pub next_seq: u64,
}
