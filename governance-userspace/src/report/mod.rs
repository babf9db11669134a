//! Compliance evidence (`governance report`): what the audit log says about a period, for an
//! auditor: decisions by verdict over time (kernel-counted allowed actions included), the most
//! refused rules, escalations and who decided them, the policy generations and their content
//! hashes, drills, and whether the log itself verifies. Read from the audit files directly
//! (the daemon need not run), one line at a time: memory is bounded by the period's buckets,
//! agents, rules and listed rows, not by the log's size.
//!
//! [`build`] makes the [`Report`] (the JSON form); [`html`] and [`markdown`] render it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::{
    audit,
    events::{Record, RecordType, parse_rfc3339, rfc3339},
};

pub mod html;
pub mod markdown;

#[cfg(test)]
mod tests;

/// Most agents with their own chart and tables; later agents are summed in [`OTHER_AGENTS`].
pub const MAX_AGENTS: usize = 200;
pub const OTHER_AGENTS: &str = "(other agents)";
/// Most escalations, drills, generations and failed reloads listed (all are counted).
pub const MAX_ROWS: usize = 2000;
/// Most buckets in a chart.
const MAX_BUCKETS: u64 = 1000;
/// Most distinct refused rules counted per agent and for the node; later ones are summed in
/// [`OTHER_RULES`].
pub const MAX_RULES: usize = 10_000;
pub const OTHER_RULES: &str = "(other rules)";
/// Most refused rules listed per agent and for the node.
pub const TOP_RULES: usize = 10;
/// Most failed checks listed per drill.
pub const MAX_DRILL_FAILURES: usize = 50;
/// The verdicts charted, in this order; anything else is `other`.
pub const VERDICTS: [&str; 8] = [
    "allow", "block", "escalate", "throttle", "sandbox", "granted", "kill", "other",
];

/// `governance report`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// The start of the period: RFC 3339, or back from now (`30d`, `12h`).
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// The end of the period (RFC 3339, or back from now); default now.
    #[arg(long)]
    pub until: Option<String>,
    /// The audit log directory. Default: the daemon's, as `governance run` would take it
    /// (GOVERNANCE_AUDIT_DIR, else `audit_dir` of the config file, else
    /// /var/lib/governance/audit).
    #[arg(long, env = "GOVERNANCE_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// The daemon's config file, for its `audit_dir` (default /etc/governance/config.yaml when
    /// it exists).
    #[arg(long, env = "GOVERNANCE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only this agent's decisions and escalations (its name or cgroup path).
    #[arg(long)]
    pub agent: Option<String>,
    /// Check the seals against this Ed25519 public key (hex or a key file), as `audit verify
    /// --public-key` does.
    #[arg(long)]
    pub public_key: Option<String>,
    #[arg(long, value_parser = ["html", "json", "md"], default_value = "html")]
    pub format: String,
    /// Write the report to this file (default: stdout).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// The report (its JSON form).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The nodes the period's records come from (normally one), or this host's name.
    pub node: String,
    pub generated_at: String,
    pub tool: crate::version::Version,
    pub audit_dir: String,
    pub period: Period,
    /// `--agent`: the decisions and escalations are this agent's only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_filter: Option<String>,
    pub verification: Verification,
    /// The whole node (or the filtered agent).
    pub decisions: Decisions,
    /// Per agent, by name; decisions without an agent are under `(no agent)`.
    pub agents: Vec<AgentDecisions>,
    pub escalations: Escalations,
    pub generations: Generations,
    pub drills: Drills,
    /// Records of the period read.
    pub records: u64,
    /// Lines of the files read that are not audit lines at all (a damaged log: see
    /// `verification`).
    pub unreadable_lines: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Period {
    pub since: String,
    pub until: String,
    /// `hour`, `day`, `week`, or `multi-day` for periods of decades (see `buckets`).
    pub bucket: String,
    /// The start of each bucket of the charts (RFC 3339).
    pub buckets: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    /// The whole log verifies: chain, seals, checkpoint.
    pub passed: bool,
    /// Why it failed: the first broken place (file, line, seq) and what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub files: usize,
    pub records: u64,
    pub seals: u64,
    pub recoveries: u64,
    pub unsealed_records: u64,
    pub first_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub last_hash: String,
    /// With a retention checkpoint: `signed` or `not signed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    pub gaps: Vec<audit::Gap>,
    pub lost_records: u64,
    /// `--public-key`: the key every seal had to be signed with (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_key: Option<String>,
    /// The Ed25519 keys (hex) that signed the seals of the files read for the period.
    pub seal_keys: Vec<String>,
    /// The first and last record of the period (time and seq).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_record: Option<RecordRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_record: Option<RecordRef>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RecordRef {
    pub seq: u64,
    pub time: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Decisions {
    /// Decisions by verdict (the outcome), kernel-counted allowed actions included in `allow`.
    pub by_verdict: BTreeMap<String, u64>,
    /// Of `allow`: the actions from count records (`decisions.counted`).
    pub counted: u64,
    /// Per verdict with any decision, in [`VERDICTS`] order: the count in each bucket.
    pub series: Vec<Series>,
    /// The most refused rules, most first.
    pub top_refused: Vec<RuleCount>,
    /// Refused decisions.
    pub refused: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Series {
    pub verdict: String,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RuleCount {
    pub rule: String,
    pub refused: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentDecisions {
    pub agent: String,
    pub decisions: Decisions,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Escalations {
    pub total: u64,
    /// By final state in the period: approved, denied, expired, withdrawn, pending.
    pub by_state: BTreeMap<String, u64>,
    /// Seconds from request to decision, over those decided (approved or denied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<f64>,
    pub listed: Vec<Escalation>,
    /// Approval records past the first [`MAX_ROWS`] escalations: neither listed nor counted
    /// above.
    pub not_listed: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Escalation {
    pub id: String,
    pub agent: String,
    pub rule: String,
    pub reason: String,
    pub object: String,
    /// When it was requested (empty: before the period).
    pub requested: String,
    pub state: String,
    /// Who approved or denied it.
    pub by: String,
    pub decided: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why it was denied.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub denial: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Generations {
    /// The generation enforcing when the period began (its `policy.reloaded` record is the last
    /// one before `since` in the files read), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_start: Option<Generation>,
    /// Generations that took over during the period.
    pub changes: Vec<Generation>,
    pub failed_reloads: Vec<FailedReload>,
    pub not_listed: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Generation {
    pub generation: u32,
    /// When it started enforcing.
    pub from: String,
    /// When the next one took over (empty: still enforcing at the end of the period).
    pub until: String,
    /// The policy's content hash (empty when the record predates it).
    pub sha256: String,
    pub policy: String,
    pub rules: u64,
    pub agents: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FailedReload {
    pub time: String,
    /// The generation that kept enforcing.
    pub generation: u32,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Drills {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub listed: Vec<Drill>,
    pub not_listed: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Drill {
    pub time: String,
    pub passed: bool,
    pub checks: u64,
    pub checks_passed: u64,
    pub checks_failed: u64,
    pub checks_skipped: u64,
    pub message: String,
    /// The checks that failed (at most [`MAX_DRILL_FAILURES`]).
    pub failures: Vec<DrillCheck>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DrillCheck {
    pub policy: String,
    pub rule: String,
    pub kind: String,
    pub object: String,
    pub expected: String,
    pub got: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--{what} {text:?}: {source}")]
    Time {
        what: &'static str,
        text: String,
        source: crate::api::QueryError,
    },
    #[error("the period is empty: --since {since} is not before --until {until}")]
    Empty { since: String, until: String },
    #[error("{}: no audit log directory here (--audit-dir)", .0.display())]
    NoLog(PathBuf),
    #[error(transparent)]
    ConfigFile(#[from] crate::cli::config::ConfigError),
    #[error("the config file {0}")]
    Config(String),
    #[error("reading the audit log: {0}")]
    Audit(#[from] audit::AuditError),
}

/// What to report on.
#[derive(Clone, Debug)]
pub struct Options {
    pub audit_dir: PathBuf,
    pub since: SystemTime,
    pub until: SystemTime,
    pub agent: Option<String>,
    pub public_key: Option<VerifyingKey>,
    /// The time the report is made (and `now` for `--since 30d`).
    pub now: SystemTime,
}

impl Options {
    pub fn from_args(
        a: &ReportArgs,
        public_key: Option<VerifyingKey>,
    ) -> Result<Self, ReportError> {
        let time = |what, text: &str| {
            crate::api::parse_since(text).map_err(|source| ReportError::Time {
                what,
                text: text.to_owned(),
                source,
            })
        };
        let now = SystemTime::now();
        let since = time("since", &a.since)?;
        let until = a.until.as_deref().map_or(Ok(now), |u| time("until", u))?;
        Ok(Options {
            audit_dir: audit_dir(a)?,
            since,
            until,
            agent: a.agent.clone(),
            public_key,
            now,
        })
    }
}

/// Where the daemon writes its audit log: `--audit-dir` (or its variable), else the config
/// file's `audit_dir`, else the daemon's default.
fn audit_dir(a: &ReportArgs) -> Result<PathBuf, ReportError> {
    if let Some(dir) = &a.audit_dir {
        return Ok(dir.clone());
    }
    let from_file = crate::cli::config::read(a.config.as_deref())?
        .map(|(path, text)| {
            let v: serde_norway::Value = serde_norway::from_str(&text)
                .map_err(|e| ReportError::Config(format!("{}: {e}", path.display())))?;
            match v.get("audit_dir") {
                None => Ok(None),
                Some(serde_norway::Value::String(dir)) => Ok(Some(PathBuf::from(dir))),
                Some(_) => Err(ReportError::Config(format!(
                    "{}: audit_dir is not a path",
                    path.display()
                ))),
            }
        })
        .transpose()?
        .flatten();
    Ok(from_file.unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_DIR)))
}

/// `governance run`'s `--audit-dir` default.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/governance/audit";

/// Records a little after `until` are still read (records are written in time order, but
/// threads of the daemon stamp them a little before writing them); after this, reading stops.
const UNTIL_SLACK: Duration = Duration::from_secs(3600);

/// Make the report: verify the whole log, then read the period's records once.
pub fn build(o: &Options) -> Result<Report, ReportError> {
    if o.since >= o.until {
        return Err(ReportError::Empty {
            since: rfc3339(o.since),
            until: rfc3339(o.until),
        });
    }
    if !o.audit_dir.is_dir() {
        return Err(ReportError::NoLog(o.audit_dir.clone()));
    }
    let grid = Grid::new(o.since, o.until);
    let mut r = Report {
        generated_at: rfc3339(o.now),
        tool: crate::version::Version::this(),
        audit_dir: o.audit_dir.display().to_string(),
        period: Period {
            since: rfc3339(o.since),
            until: rfc3339(o.until),
            bucket: grid.name.into(),
            buckets: (0..grid.n).map(|i| rfc3339(grid.start_of(i))).collect(),
        },
        agent_filter: o.agent.clone(),
        verification: verification(o),
        ..Default::default()
    };
    let mut acc = Acc {
        grid,
        node: Tally::new(grid.n),
        agents: BTreeMap::new(),
        escalations: Vec::new(),
        open: HashMap::new(),
        nodes: BTreeSet::new(),
        keys: BTreeSet::new(),
        unlisted: 0,
    };
    let mut gens = Generations::default();
    let unreadable = audit::replay_lines(&o.audit_dir, o.since, |line| {
        if line.seal {
            if let Ok(v) = serde_json::from_slice::<Value>(line.json)
                && let Some(k) = v.get("public_key").and_then(Value::as_str)
                && acc.keys.len() < 16
            {
                acc.keys.insert(k.to_owned());
            }
            return true;
        }
        let Ok(value) = serde_json::from_slice::<Value>(line.json) else {
            return true;
        };
        let Ok(rec) = Record::deserialize(&value) else {
            return true;
        };
        let Some(t) = parse_rfc3339(&rec.time) else {
            return true;
        };
        if t >= o.until {
            return t < o.until + UNTIL_SLACK;
        }
        if t < o.since {
            // What enforced when the period began.
            if rec.ty == RecordType::Policy && rec.kind == "policy.reloaded" {
                gens.at_start = Some(generation(&rec));
            }
            return true;
        }
        r.records += 1;
        let at = RecordRef {
            seq: line.seq,
            time: rec.time.clone(),
        };
        r.verification
            .first_record
            .get_or_insert_with(|| at.clone());
        r.verification.last_record = Some(at);
        if acc.nodes.len() < 8 && !rec.node.is_empty() {
            acc.nodes.insert(rec.node.to_string());
        }
        let agent = rec.agent.as_ref();
        let mine = o
            .agent
            .as_ref()
            .is_none_or(|want| agent.is_some_and(|a| a.name == *want || a.cgroup == *want));
        match rec.ty {
            RecordType::Decision if mine && !rec.sampled => acc.decision(&rec, t),
            RecordType::Lifecycle if mine && rec.kind == "decisions.counted" => {
                acc.counted(&rec, t)
            }
            RecordType::Lifecycle if rec.kind.starts_with("drill.") => {
                drill(&mut r.drills, &rec, value.get("drill"))
            }
            RecordType::Approval if mine => acc.approval(&rec),
            RecordType::Policy if rec.kind == "policy.reloaded" => {
                if gens.changes.len() < MAX_ROWS {
                    gens.changes.push(generation(&rec));
                } else {
                    gens.not_listed += 1;
                }
            }
            RecordType::Policy if rec.kind == "policy.reload_failed" => {
                if gens.failed_reloads.len() < MAX_ROWS {
                    gens.failed_reloads.push(FailedReload {
                        time: rec.time.clone(),
                        generation: rec.generation,
                        message: rec.message.clone(),
                    });
                } else {
                    gens.not_listed += 1;
                }
            }
            _ => {}
        }
        true
    });
    match unreadable {
        Ok(n) => r.unreadable_lines = n,
        // Verification already says what is wrong with the log; a log that cannot be read at
        // all (no directory) is reported as such, not as an empty period.
        Err(e) if r.verification.passed => return Err(e.into()),
        Err(_) => {}
    }
    // Each generation enforces until the next one takes over.
    let mut next_from = String::new();
    for g in gens.changes.iter_mut().rev() {
        g.until = std::mem::replace(&mut next_from, g.from.clone());
    }
    if let Some(g) = &mut gens.at_start {
        g.until = gens
            .changes
            .first()
            .map(|c| c.from.clone())
            .unwrap_or_default();
    }
    r.generations = gens;
    r.node = if acc.nodes.is_empty() {
        crate::events::node_name().to_owned()
    } else {
        acc.nodes.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    r.verification.seal_keys = acc.keys.iter().cloned().collect();
    r.escalations = acc.escalations();
    r.decisions = acc.node.finish();
    r.agents = std::mem::take(&mut acc.agents)
        .into_iter()
        .map(|(agent, t)| AgentDecisions {
            agent,
            decisions: t.finish(),
        })
        .collect();
    Ok(r)
}

fn verification(o: &Options) -> Verification {
    let mut v = Verification {
        expected_key: o
            .public_key
            .map(|k| k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()),
        ..Default::default()
    };
    match audit::verify(std::slice::from_ref(&o.audit_dir), o.public_key) {
        Ok(rep) => {
            v.passed = true;
            v.files = rep.files;
            v.records = rep.records;
            v.seals = rep.seals;
            v.recoveries = rep.recoveries;
            v.unsealed_records = rep.unsealed_records;
            v.first_seq = rep.first_seq;
            v.last_seq = rep.last_seq;
            v.last_hash = rep.last_hash;
            v.checkpoint = rep
                .checkpoint_signed
                .map(|s| if s { "signed" } else { "not signed" }.into());
            v.lost_records = rep.lost_records;
            v.gaps = rep.gaps.into_iter().map(|(_, g)| g).collect();
        }
        Err(e) => v.problem = Some(e.to_string()),
    }
    v
}

/// The charts' time buckets: hours for a period of up to two days, days up to 400 days, weeks
/// beyond (and longer, for periods of decades); aligned to UTC.
#[derive(Clone, Copy, Debug)]
struct Grid {
    name: &'static str,
    secs: u64,
    first: u64,
    n: usize,
}

impl Grid {
    fn new(since: SystemTime, until: SystemTime) -> Grid {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let (s, u) = (secs(since), secs(until).max(secs(since) + 1));
        let (name, len) = if u - s <= 48 * 3600 {
            ("hour", 3600)
        } else if u - s <= 400 * 86400 {
            ("day", 86400)
        } else if u - s <= MAX_BUCKETS * 7 * 86400 {
            ("week", 7 * 86400)
        } else {
            // Decades: at most MAX_BUCKETS buckets of whole days.
            (
                "multi-day",
                (u - s).div_ceil(MAX_BUCKETS).div_ceil(86400) * 86400,
            )
        };
        let first = s / len * len;
        let n = (u - first).div_ceil(len) as usize;
        Grid {
            name,
            secs: len,
            first,
            n,
        }
    }

    fn start_of(&self, i: usize) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.first + i as u64 * self.secs)
    }

    fn index(&self, t: SystemTime) -> Option<usize> {
        let s = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        let i = (s.checked_sub(self.first)? / self.secs) as usize;
        (i < self.n).then_some(i)
    }
}

/// Decisions of the node or of one agent, as they are counted.
struct Tally {
    /// Verdict index ([`VERDICTS`]) → per bucket.
    series: Vec<Vec<u64>>,
    counted: u64,
    refused: BTreeMap<String, u64>,
}

impl Tally {
    fn new(buckets: usize) -> Tally {
        Tally {
            series: vec![vec![0; buckets]; VERDICTS.len()],
            counted: 0,
            refused: BTreeMap::new(),
        }
    }

    /// One decision of verdict `v` in bucket `b`, refused by `rule`.
    fn add(&mut self, v: usize, b: usize, refused: Option<&str>) {
        self.series[v][b] += 1;
        if let Some(rule) = refused {
            let rule = if self.refused.contains_key(rule) || self.refused.len() < MAX_RULES {
                rule
            } else {
                OTHER_RULES
            };
            *self.refused.entry(rule.to_owned()).or_default() += 1;
        }
    }

    fn finish(self) -> Decisions {
        let mut d = Decisions {
            counted: self.counted,
            ..Default::default()
        };
        for (v, counts) in VERDICTS.iter().zip(self.series) {
            let total: u64 = counts.iter().sum();
            if total > 0 {
                d.by_verdict.insert((*v).into(), total);
                d.series.push(Series {
                    verdict: (*v).into(),
                    counts,
                });
            }
        }
        d.refused = self.refused.values().sum();
        let mut rules: Vec<_> = self.refused.into_iter().collect();
        rules.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        d.top_refused = rules
            .into_iter()
            .take(TOP_RULES)
            .map(|(rule, refused)| RuleCount { rule, refused })
            .collect();
        d
    }
}

fn verdict_index(rec: &Record) -> usize {
    let v = if rec.outcome.is_empty() {
        &rec.verdict
    } else {
        &rec.outcome
    };
    VERDICTS
        .iter()
        .position(|x| x == v)
        .unwrap_or(VERDICTS.len() - 1)
}

struct Acc {
    grid: Grid,
    node: Tally,
    agents: BTreeMap<String, Tally>,
    escalations: Vec<Escalation>,
    /// Approval id → index in `escalations`.
    open: HashMap<String, usize>,
    nodes: BTreeSet<String>,
    keys: BTreeSet<String>,
    /// Approval records of escalations past the listed ones.
    unlisted: u64,
}

impl Acc {
    fn agent(&mut self, rec: &Record) -> &mut Tally {
        let name = rec.agent.as_ref().map_or("(no agent)", |a| a.name.as_str());
        let name = if self.agents.contains_key(name) || self.agents.len() < MAX_AGENTS {
            name
        } else {
            OTHER_AGENTS
        };
        let n = self.grid.n;
        self.agents
            .entry(name.to_owned())
            .or_insert_with(|| Tally::new(n))
    }

    fn decision(&mut self, rec: &Record, t: SystemTime) {
        let Some(b) = self.grid.index(t) else { return };
        let v = verdict_index(rec);
        let rule = if rec.rule.is_empty() {
            "(none)"
        } else {
            rec.rule.as_str()
        };
        self.node.add(v, b, rec.denied.then_some(rule));
        self.agent(rec).add(v, b, rec.denied.then_some(rule));
    }

    fn counted(&mut self, rec: &Record, t: SystemTime) {
        let Some(b) = self.grid.index(t) else { return };
        let n: u64 = rec.counts.values().fold(0, |a, c| a.saturating_add(*c));
        self.node.series[0][b] += n;
        self.node.counted += n;
        let a = self.agent(rec);
        a.series[0][b] += n;
        a.counted += n;
    }

    fn approval(&mut self, rec: &Record) {
        let Some(info) = &rec.approval else { return };
        let idx = match self.open.get(&info.id) {
            Some(i) => *i,
            None if self.escalations.len() < MAX_ROWS => {
                self.escalations.push(Escalation {
                    id: info.id.clone(),
                    agent: rec
                        .agent
                        .as_ref()
                        .map(|a| a.name.clone())
                        .unwrap_or_default(),
                    rule: rec.rule.clone(),
                    reason: rec.reason.clone(),
                    object: rec.object_words(),
                    state: "pending".into(),
                    ..Default::default()
                });
                self.open
                    .insert(info.id.clone(), self.escalations.len() - 1);
                self.escalations.len() - 1
            }
            None => {
                // Past the listed ones: counted, not followed.
                self.unlisted += 1;
                return;
            }
        };
        let e = &mut self.escalations[idx];
        if rec.kind == "approval.requested" {
            e.requested = rec.time.clone();
            return;
        }
        e.state = info.state.clone();
        e.by = info.by.clone();
        e.denial = info.reason.clone();
        e.decided = rec.time.clone();
        if matches!(info.state.as_str(), "approved" | "denied")
            && let (Some(a), Some(b)) = (parse_rfc3339(&e.requested), parse_rfc3339(&e.decided))
        {
            e.seconds = b.duration_since(a).ok().map(|d| d.as_secs_f64());
        }
    }

    fn escalations(&mut self) -> Escalations {
        let mut out = Escalations {
            not_listed: self.unlisted,
            ..Default::default()
        };
        let mut secs = Vec::new();
        for e in std::mem::take(&mut self.escalations) {
            out.total += 1;
            *out.by_state.entry(e.state.clone()).or_default() += 1;
            secs.extend(e.seconds);
            out.listed.push(e);
        }
        secs.sort_by(f64::total_cmp);
        out.max_seconds = secs.last().copied();
        out.median_seconds = (!secs.is_empty()).then(|| secs[secs.len() / 2]);
        out
    }
}

fn generation(rec: &Record) -> Generation {
    Generation {
        generation: rec.generation,
        from: rec.time.clone(),
        until: String::new(),
        sha256: rec.object.detail.get("sha256").cloned().unwrap_or_default(),
        policy: rec.object.path.clone(),
        rules: rec.counts.get("rules").copied().unwrap_or_default(),
        agents: rec.counts.get("agents").copied().unwrap_or_default(),
    }
}

/// A drill record (`drill.passed`, `drill.failed`): its counts, and the failed checks of its
/// optional `drill` object, read loosely (any field may be missing).
fn drill(d: &mut Drills, rec: &Record, detail: Option<&Value>) {
    let passed = rec.kind == "drill.passed";
    d.total += 1;
    if passed {
        d.passed += 1;
    } else {
        d.failed += 1;
    }
    if d.listed.len() >= MAX_ROWS {
        d.not_listed += 1;
        return;
    }
    let count = |k: &str| rec.counts.get(k).copied().unwrap_or_default();
    let text = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let failures = detail
        .and_then(|v| v.get("checks"))
        .and_then(Value::as_array)
        .map(|checks| {
            checks
                .iter()
                .filter(|c| {
                    c.get("passed") == Some(&Value::Bool(false))
                        && c.get("skipped_why").is_none_or(Value::is_null)
                })
                .take(MAX_DRILL_FAILURES)
                .map(|c| DrillCheck {
                    policy: text(c, "policy"),
                    rule: text(c, "rule"),
                    kind: text(c, "kind"),
                    object: text(c, "object"),
                    expected: text(c, "expected"),
                    got: text(c, "got"),
                })
                .collect()
        })
        .unwrap_or_default();
    d.listed.push(Drill {
        time: rec.time.clone(),
        passed,
        checks: count("checks"),
        checks_passed: count("passed"),
        checks_failed: count("failed"),
        checks_skipped: count("skipped"),
        message: rec.message.clone(),
        failures,
    });
}

/// `governance report`: write the report; exit status 1 when the log does not verify.
pub fn run(a: &ReportArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let key = a
        .public_key
        .as_deref()
        .map(audit::parse_public_key)
        .transpose()
        .context("--public-key")?;
    let report = build(&Options::from_args(a, key)?)?;
    let text = match a.format.as_str() {
        "json" => serde_json::to_string_pretty(&report)? + "\n",
        "md" => markdown::render(&report),
        _ => html::render(&report),
    };
    match &a.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    if !report.verification.passed {
        eprintln!(
            "governance: the audit log did NOT verify: {}",
            report.verification.problem.as_deref().unwrap_or("?")
        );
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

use serde::Deserialize as _;
