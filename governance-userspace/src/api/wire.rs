//! The control API on the wire: what the daemon answers and what the command line reads, one
//! definition for both; the bodies of the approval requests; the query of `GET /v1/events`.
//!
//! The daemon sends an answer through a JSON value ([`crate::api`]'s `answer`): its keys come
//! out sorted, as they always have. Every field has a default, so an answer with a field more
//! or less (another daemon version) still reads.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::approvals::PendingView;

/// `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub generation: u32,
    pub degraded: bool,
    pub policy_dir: PathBuf,
    pub pins: PathBuf,
    pub reload_failures: u64,
    /// The last reload error, if the last reload failed.
    pub last_error: Option<String>,
    pub hooks: Vec<Hook>,
    /// How many agents the current generation governs.
    pub agents: usize,
    /// The kernel's counters; None when the kernel state could not be read.
    pub kernel: Option<KernelCounters>,
    pub pipeline_backlog: usize,
    pub pending_approvals: usize,
    /// Where the HTTP policy proxy listens; None: it does not run.
    pub proxy: Option<String>,
    /// The audit log directory; None: no audit log.
    pub audit: Option<PathBuf>,
    /// Whether the audit log is being written, and its failures.
    pub audit_log: Option<crate::audit::HealthView>,
    /// The exporters (`--export`, `--notify-webhook`): records sent and lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exporters: Vec<crate::export::ExporterView>,
    /// RFC 3339.
    pub started: String,
    /// The daemon's build: version, commit, eBPF object hash. None from a daemon older than
    /// this field.
    pub version: Option<crate::version::Version>,
    /// The capabilities the daemon kept after start (docs/operations.md says why each). None
    /// from a daemon older than this field, or one still starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// The capabilities of [`Status`]: the daemon's threads' permitted set after start, and the
/// proxy's threads' (None: no proxy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub daemon: Vec<String>,
    pub proxy: Option<Vec<String>>,
}

/// One program of [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hook {
    pub program: String,
    /// What it enforces.
    pub enforces: String,
    /// `attached`, or why not.
    pub state: String,
}

/// The kernel's counters in [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelCounters {
    pub decisions: u64,
    pub denials: u64,
    pub events_dropped: u64,
    pub events_dropped_per_cpu: Vec<u64>,
    pub map_full: u64,
}

/// `GET /v1/agents`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agents {
    pub generation: u32,
    pub agents: Vec<Agent>,
}

/// One live agent of [`Agents`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    pub name: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub selector: String,
    pub policies: Vec<String>,
    /// Decisions by outcome.
    pub decisions: BTreeMap<String, u64>,
    /// Allowed actions counted rather than recorded (`report: count`, `sample`), since the
    /// daemon started: `<rule> <kind>` → n (rule `default`: no rule matched).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counted: BTreeMap<String, u64>,
    /// Kubernetes: the agent's pod and its namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `GET /v1/agents/capabilities`: what each live agent can do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentCapabilitiesList {
    pub generation: u32,
    pub agents: Vec<AgentCapabilities>,
}

pub use crate::capabilities::{AgentCapabilities, Builtin, Item};

/// `POST /v1/policy/reload`: the generation that now enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reloaded {
    pub generation: u32,
}

/// `POST /v1/drill`: the drill that ran (see docs/operations.md, "Drills").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillResult {
    /// No check failed and at least one ran.
    pub passed: bool,
    /// One line, as in the `drill.*` record's message.
    pub summary: String,
    pub drill: crate::drill::Drill,
}

/// The body of `POST /v1/drill`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillAsk {
    /// Drill this policy only (default: every enforcing policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pending {
    pub pending: Vec<PendingView>,
}

/// `POST /v1/approvals/{id}/approve`: the approved request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    pub approved: PendingView,
}

/// `POST /v1/approvals/{id}/deny`: the denied request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    pub denied: PendingView,
}

/// An error answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}

/// The body of `POST /v1/approvals/{id}/approve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approve {
    /// How long a kernel grant lets the action through (`30s`, `10m`, `1h`); default 5m.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    /// Who approves, beside the caller the connection identifies.
    #[serde(default)]
    pub by: Option<String>,
}

/// The body of `POST /v1/approvals/{id}/deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
}

/// The query of `GET /v1/events` (URL-encoded; absent fields are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Keep streaming (`true`, `1`, `yes` or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Comma-separated outcomes (`verdict` is accepted as a synonym).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// RFC 3339 time, or a duration back from now (`30s`, `10m`, `2h`, `1d`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `json` (default) or `ocsf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Records this subscriber's queue holds before it loses some (default 8192).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
}

impl EventsQuery {
    /// `/v1/events?…`.
    pub fn path(&self) -> String {
        format!(
            "/v1/events?{}",
            serde_urlencoded::to_string(self).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_query_goes_through_the_url_and_back() {
        let q = EventsQuery {
            follow: Some("true".into()),
            agent: Some("a b/c&d".into()),
            verdict: Some("block,escalate".into()),
            since: Some("2024-01-01T00:00:00+01:00".into()),
            queue: Some(16),
            ..Default::default()
        };
        let path = q.path();
        let query = path.strip_prefix("/v1/events?").unwrap();
        assert!(!query.contains(' ') && !query.contains("/c&"), "{query}");
        assert_eq!(serde_urlencoded::from_str::<EventsQuery>(query).unwrap(), q);
        assert_eq!(EventsQuery::default().path(), "/v1/events?");
    }
}

/// `GET /v1/discover`: candidate agents (processes outside every agent that behave like
/// agents), grouped by container, pod or cgroup. Evidence, never enforcement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Discover {
    /// False with `run --no-discover`.
    pub enabled: bool,
    pub groups: Vec<CandidateGroup>,
    /// The `discover` program: reported, dropped (ring full), rate-limited; None when it is
    /// not attached.
    pub kernel: Option<DiscoverKernel>,
    /// Events the daemon could not read and scans that failed.
    pub errors: u64,
}

/// One group of [`Discover`]: the candidates of one container, pod or cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CandidateGroup {
    /// `container`, `pod` or `cgroup`.
    pub by: String,
    /// The container id, pod uid or cgroup path.
    pub key: String,
    /// The cgroup paths of its candidates.
    pub cgroups: Vec<String>,
    /// A policy `agents:` snippet that would govern it, to paste into a policy.
    pub suggested_selector: String,
    pub evidence: Vec<crate::discovery::Evidence>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverKernel {
    pub reported: u64,
    pub dropped: u64,
    pub limited: u64,
}
