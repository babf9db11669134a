//! What the rest of the daemon sees of the log's state: outages, failures, gaps.

use std::collections::BTreeMap;

use super::*;

/// The writer's state as others see it (metrics, status, the proxy under `block`). Shared.
#[derive(Debug, Default)]
pub struct AuditHealth {
    pub(super) on_failure: OnFailure,
    pub(super) down: AtomicBool,
    pub(super) write_failures: AtomicU64,
    /// Records counted lost by gap records written.
    pub(super) records_lost: AtomicU64,
    /// Records refused during the current outage (a lower bound of what its gap will count).
    pub(super) refused_now: AtomicU64,
    pub(super) gaps: AtomicU64,
    /// Actions refused under [`OnFailure::Block`].
    pub(super) blocked: AtomicU64,
    /// (since, cause) of the current outage.
    pub(super) outage: Mutex<Option<(String, String)>>,
    pub(super) last_error: Mutex<Option<String>>,
}

/// [`AuditHealth`] at one moment, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// `ok` or `failing`.
    pub state: String,
    pub on_failure: String,
    pub write_failures: u64,
    pub records_lost: u64,
    pub gaps: u64,
    pub blocked: u64,
    /// During an outage: since when, why, and how many records were refused so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default)]
    pub refused_now: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl AuditHealth {
    pub fn new(on_failure: OnFailure) -> Self {
        Self {
            on_failure,
            ..Default::default()
        }
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Whether the log is being written (no outage).
    pub fn writable(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Under [`OnFailure::Block`] during an outage: why a governed action must be refused (the
    /// refusal is counted). None: go ahead.
    pub fn refusal(&self) -> Option<String> {
        if self.on_failure != OnFailure::Block || self.writable() {
            return None;
        }
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let since = lock(&self.outage)
            .as_ref()
            .map(|(since, _)| since.clone())
            .unwrap_or_default();
        Some(format!(
            "the audit log cannot be written (since {since}) and --audit-on-failure is block: \
             governed actions are refused until it can be written again"
        ))
    }

    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    pub fn records_lost(&self) -> u64 {
        self.records_lost.load(Ordering::Relaxed)
    }

    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn blocked(&self) -> u64 {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> HealthView {
        let outage = lock(&self.outage).clone();
        HealthView {
            state: if self.writable() { "ok" } else { "failing" }.into(),
            on_failure: self.on_failure.to_string(),
            write_failures: self.write_failures(),
            records_lost: self.records_lost(),
            gaps: self.gaps(),
            blocked: self.blocked(),
            refused_now: self.refused_now.load(Ordering::Relaxed),
            failing_since: outage.as_ref().map(|o| o.0.clone()),
            cause: outage.map(|o| o.1),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a gap record says (its `audit_gap` object): records that are not in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Records not written: buffered when the write failed, or refused during the outage.
    pub lost: u64,
    /// The last line written before the gap (None: the log had none); the gap record follows
    /// it directly.
    pub after_seq: Option<u64>,
    /// The last successful write: the lost records were made after it (RFC 3339).
    pub from: String,
    /// The first failed write.
    pub failed_at: String,
    /// When the log could be written again.
    pub until: String,
    /// Failed attempts (the first write and the retries).
    pub failures: u64,
    /// The first error.
    pub cause: String,
    /// Bytes of a torn line cut from the file on recovery.
    pub truncated_bytes: u64,
    /// Of the lost records, those the appender said were an agent's, by agent: how many, and
    /// how many of them were refusals (red team round 35: an agent that filled the audit
    /// filesystem hid its own refusals, and the gap did not say whose). Records of a removed
    /// file that were durable before the failure count in `lost` only. Absent in logs written
    /// before round 35.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_agent: Vec<AgentLoss>,
}

/// Whose a record is, as its appender says ([`AuditLog::append_json_by`]): the log itself knows
/// no event schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    /// The agent's name, as its records carry it.
    pub agent: String,
    /// Its root's cgroup id and path (two agents may share a name).
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
}

/// One agent's records in a gap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLoss {
    #[serde(flatten)]
    pub owner: Owner,
    /// Its records that are not in the log.
    pub lost: u64,
    /// How many of them were refusals (anything but allowed: block, escalate, throttle,
    /// sandbox, kill, fail-closed).
    pub denied: u64,
}

/// Lost records by agent: (lost, denied).
pub(super) type Tally = BTreeMap<Owner, (u64, u64)>;

pub(super) fn count(tally: &mut Tally, owner: &Owner, denied: bool) {
    let (lost, refused) = tally.entry(owner.clone()).or_default();
    *lost += 1;
    *refused += u64::from(denied);
}

/// Makes the body of a gap record (one JSON value, which must hold the [`Gap`] as its
/// `audit_gap` field); the daemon makes one of its event records.
pub type GapRecord = Box<dyn Fn(&Gap) -> Vec<u8> + Send>;

pub(super) fn plain_gap_record(gap: &Gap) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "lifecycle",
        "event": "audit.gap",
        "time": crate::events::rfc3339(SystemTime::now()),
        "audit_gap": gap,
    }))
    .unwrap_or_default()
}
