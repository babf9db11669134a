//! Prometheus metrics for `GET /metrics`.
//!
//! One [`Metrics`] per daemon, shared in an `Arc`. Records are counted as they pass
//! ([`Metrics::observe`]); the daemon sets the numbers it keeps itself (generation, pending
//! approvals, kernel and pipeline counters, latencies) through the small setters; the kernel
//! counters and the process's own CPU, memory and file descriptors are read when scraped.
//! [`Metrics::render`] writes the OpenMetrics text format (what `prometheus-client` encodes);
//! serve it with [`CONTENT_TYPE`], which Prometheus scrapes natively. (Counters carry their
//! `_total` suffix on the samples, not on the `# TYPE` line, as OpenMetrics says; a parser of the
//! older 0.0.4 format would see them as untyped, hence the content type.)
//!
//! # What records are counted
//!
//! - type `decision`: `governance_decisions_total{kind,outcome,agent}`; when the record has a
//!   `shadow` (a shadow rule would have decided otherwise)
//!   `governance_shadow_decisions_total{kind,verdict}` with the shadow verdict; when its rule is
//!   `fail-closed:<why>`, `governance_fail_closed_total{kind,reason}` with `<why>`
//!   (`unreadable`, `too-long`, `no-proxy`).
//! - type `approval`: `governance_approvals_total{state}` with `approval.state` (`pending`,
//!   `approved`, `denied`, `expired`, `withdrawn`), or, without an `approval`, the state taken
//!   from the kind `approval.<state>` (`approval.requested` counts as `pending`). An escalate
//!   decision is counted as a decision only: the approval queue reports the request itself.
//! - type `policy`, kind `policy.reloaded`: `governance_policy_reloads_total{result="success"}`
//!   and `governance_policy_last_reload_successful` 1; kind `policy.reload_failed`:
//!   `{result="failure"}` and 0. Other policy kinds and all `lifecycle` records are not counted
//!   (the daemon counts its pipeline through the setters, so a `subscriber.lost` notice is not
//!   counted twice).
//!
//! # Bounded label values
//!
//! Every distinct label value is a series that lives for the daemon's lifetime, in the daemon's
//! memory and in Prometheus. `kind`, `outcome`, `verdict`, `state` and `reason` come from fixed
//! sets: anything else is counted as `_other`. The `agent` label takes at most
//! [`DEFAULT_AGENT_LIMIT`] (256, [`Metrics::with_agent_limit`]) distinct values: the first agents
//! seen keep their own series, every later agent is counted under `agent="_other"`, and a
//! decision without an agent under `agent="_none"`. Agents are cgroups, and an agent that may
//! create cgroups could otherwise mint a series per cgroup, growing the daemon and the
//! monitoring system without bound. With the bound, `governance_decisions_total` has at most
//! 12 kinds × 8 outcomes × (N + 2) agent values (in practice a few per agent), whatever the
//! node runs. Slots are never given back: a series that vanished and
//! came back would read as a counter reset. Per-agent detail beyond the limit is in the event
//! stream and the audit log, not in metrics.
//!
//! # Names
//!
//! `governance_build_info{version,commit,ebpf}` is always 1: the labels say which build runs
//! (see [`crate::version`]).
//!
//! Everything is under `governance_` except the process metrics, which use the standard names
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`) so
//! existing dashboards find them. The kernel's counters live in the pinned maps and are only
//! read by the daemon; they are exposed as real counters through a collector that emits the
//! last values given to [`Metrics::set_kernel_counters`] (a `ConstCounter` per scrape), the way
//! `prometheus-client` exposes values counted elsewhere.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::events::{Record, RecordType};

/// How many agents get their own `agent` label value by default.
pub const DEFAULT_AGENT_LIMIT: usize = 256;

/// The Content-Type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label value for anything outside a fixed set or over the agent limit.
pub const OTHER: &str = "_other";
/// The `agent` label value of a decision without an agent.
pub const NO_AGENT: &str = "_none";

const KINDS: &[&str] = &[
    "exec",
    "file",
    "connect",
    "send",
    "socket",
    "userns",
    "bpf",
    "signal",
    "ptrace",
    "unlink",
    "http",
    "capability",
    "mount",
    "clone",
    "exec_map",
    "link",
];
const OUTCOMES: &[&str] = &[
    "allow", "block", "throttle", "sandbox", "escalate", "granted", "kill",
];
/// The proxy's outcomes: the decision outcomes, and `error` (no answer from upstream).
const PROXY_OUTCOMES: &[&str] = &[
    "allow", "block", "throttle", "sandbox", "escalate", "granted", "kill", "error",
];
const VERDICTS: &[&str] = &["allow", "block", "throttle", "sandbox", "escalate"];
const APPROVAL_STATES: &[&str] = &["pending", "approved", "denied", "expired", "withdrawn"];
const FAIL_CLOSED: &[&str] = &["unreadable", "too-long", "no-proxy", "map-full"];

/// Latency buckets, seconds: 1 µs to 10 s in 1-2.5-5 steps (a proxy decision takes
/// microseconds, a proxied request up to seconds, an audit flush anything between).
const LATENCY_BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// `v` if it is in `set`, else [`OTHER`].
fn known(set: &[&'static str], v: &str) -> &'static str {
    set.iter().copied().find(|k| *k == v).unwrap_or(OTHER)
}

/// What a decision is counted under, as the record has it (the labels bound these): kind,
/// outcome, agent, shadow verdict, fail-closed reason.
type DecisionKey<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn decision_key(r: &Record) -> DecisionKey<'_> {
    (
        &r.kind,
        &r.outcome,
        r.agent.as_ref().map(|a| a.name.as_str()),
        r.shadow.as_ref().map(|s| s.verdict.as_str()),
        r.rule.strip_prefix("fail-closed:"),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    kind: &'static str,
    outcome: &'static str,
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    kind: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailClosedLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The daemon's metrics. Cheap to share: `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    agent_limit: usize,
    agents: Mutex<HashSet<String>>,
    decisions: Family<DecisionLabels, Counter>,
    shadow: Family<ShadowLabels, Counter>,
    fail_closed: Family<FailClosedLabels, Counter>,
    approvals: Family<StateLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    last_reload_ok: Gauge,
    generation: Gauge,
    pending_approvals: Gauge,
    kernel: Arc<KernelCounters>,
    audit: Arc<AuditCounters>,
    events_published: Counter,
    subscriber_lost: Counter,
    audit_records: Counter,
    audit_flush: Histogram,
    proxy_request: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    proxy_decision: Histogram,
    exporters: Arc<ExportCounters>,
    kubernetes_api: Gauge,
    counted: Arc<crate::counts::Counted>,
    drills: Family<ResultLabels, Counter>,
    drill_last_time: Gauge,
    drill_last_passed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_agent_limit(DEFAULT_AGENT_LIMIT)
    }

    /// At most `n` distinct `agent` label values (see the module doc).
    pub fn with_agent_limit(n: usize) -> Self {
        let m = Metrics {
            registry: Registry::default(),
            agent_limit: n,
            agents: Mutex::new(HashSet::new()),
            decisions: Family::default(),
            shadow: Family::default(),
            fail_closed: Family::default(),
            approvals: Family::default(),
            reloads: Family::default(),
            last_reload_ok: Gauge::default(),
            generation: Gauge::default(),
            pending_approvals: Gauge::default(),
            kernel: Arc::default(),
            audit: Arc::default(),
            events_published: Counter::default(),
            subscriber_lost: Counter::default(),
            audit_records: Counter::default(),
            audit_flush: latency_histogram(),
            proxy_request: Family::new_with_constructor(latency_histogram),
            proxy_decision: latency_histogram(),
            exporters: Arc::default(),
            kubernetes_api: Gauge::default(),
            counted: Arc::default(),
            drills: Family::default(),
            drill_last_time: Gauge::default(),
            drill_last_passed: Gauge::default(),
        };
        m.last_reload_ok.set(1);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let g = registry.sub_registry_with_prefix("governance");
        g.register(
            "decisions",
            "Decisions by kind, outcome and agent (agent bounded, see _other)",
            m.decisions.clone(),
        );
        g.register(
            "shadow_decisions",
            "Decisions a shadow rule would have made otherwise, by the shadow verdict",
            m.shadow.clone(),
        );
        g.register(
            "fail_closed",
            "Decisions refused because the kernel could not decide as the policy says",
            m.fail_closed.clone(),
        );
        g.register(
            "approvals",
            "Approval state changes by new state",
            m.approvals.clone(),
        );
        g.register(
            "policy_reloads",
            "Policy reloads by result",
            m.reloads.clone(),
        );
        g.register(
            "policy_last_reload_successful",
            "Whether the last policy reload succeeded (1) or failed (0)",
            m.last_reload_ok.clone(),
        );
        g.register(
            "policy_generation",
            "The policy generation the kernel enforces",
            m.generation.clone(),
        );
        g.register(
            "approvals_pending",
            "Approval requests waiting for a decision",
            m.pending_approvals.clone(),
        );
        let build = crate::version::Version::this();
        g.register(
            "build",
            "The daemon's build: version, git commit, SHA-256 (12 hex digits) of its eBPF object",
            Info::new(vec![
                ("version", build.version),
                ("commit", build.commit),
                ("ebpf", build.ebpf),
            ]),
        );
        g.register_collector(Box::new(m.kernel.clone()));
        g.register_collector(Box::new(m.audit.clone()));
        g.register_collector(Box::new(m.exporters.clone()));
        g.register_collector(Box::new(m.counted.clone()));
        g.register(
            "events_published",
            "Records published to the event pipeline",
            m.events_published.clone(),
        );
        g.register(
            "subscriber_events_lost",
            "Records not delivered to a subscriber whose queue was full",
            m.subscriber_lost.clone(),
        );
        g.register(
            "audit_records",
            "Records written to the audit log",
            m.audit_records.clone(),
        );
        g.register_with_unit(
            "audit_flush",
            "Time to flush the audit log",
            Unit::Seconds,
            m.audit_flush.clone(),
        );
        g.register_with_unit(
            "proxy_request_duration",
            "Proxied HTTP requests, from request to response, by outcome",
            Unit::Seconds,
            m.proxy_request.clone(),
        );
        g.register_with_unit(
            "proxy_decision_duration",
            "Time the proxy took to decide a request",
            Unit::Seconds,
            m.proxy_decision.clone(),
        );
        g.register(
            "kubernetes_api_reachable",
            "Kubernetes (run --kubernetes): whether the pods and namespaces are listed and watched (1) or the API server cannot be reached and the last known identities stand (0)",
            m.kubernetes_api.clone(),
        );
        g.register("drills", "Drills by result", m.drills.clone());
        g.register_with_unit(
            "drill_last_timestamp",
            "When the last drill ran (Unix time; 0: none since the daemon started)",
            Unit::Seconds,
            m.drill_last_time.clone(),
        );
        g.register(
            "drill_last_passed",
            "Whether the last drill passed (1) or failed (0); 0 before the first",
            m.drill_last_passed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A drill ran at `at` (Unix seconds): `passed`, or it failed.
    pub fn set_drill(&self, passed: bool, at: u64) {
        let result = if passed { "passed" } else { "failed" };
        self.drills.get_or_create(&ResultLabels { result }).inc();
        self.drill_last_time
            .set(i64::try_from(at).unwrap_or(i64::MAX));
        self.drill_last_passed.set(i64::from(passed));
    }

    pub fn set_kubernetes_api(&self, reachable: bool) {
        self.kubernetes_api.set(i64::from(reachable));
    }

    /// Count a record (see the module doc for what is counted).
    pub fn observe(&self, r: &Record) {
        self.observe_n(r, 1);
    }

    /// Count records, as [`Metrics::observe`] on each in turn. A run of decisions that count
    /// under the same labels is counted at once (a flood from one agent is one label lookup
    /// per batch, not per record).
    pub fn observe_all(&self, records: &[Record]) {
        let mut i = 0;
        while let Some(r) = records.get(i) {
            let mut n = 1;
            if r.ty == RecordType::Decision {
                let key = decision_key(r);
                while records.get(i + n).is_some_and(|next| {
                    next.ty == RecordType::Decision && decision_key(next) == key
                }) {
                    n += 1;
                }
            }
            self.observe_n(r, n as u64);
            i += n;
        }
    }

    /// Count `r` as `n` records (`n` > 1 only for decisions).
    fn observe_n(&self, r: &Record, n: u64) {
        match r.ty {
            RecordType::Decision => {
                let (kind, outcome, agent, shadow, fail_closed) = decision_key(r);
                let kind = known(KINDS, kind);
                let agent = agent.map_or_else(|| NO_AGENT.to_owned(), |a| self.agent_label(a));
                self.decisions
                    .get_or_create(&DecisionLabels {
                        kind,
                        outcome: known(OUTCOMES, outcome),
                        agent,
                    })
                    .inc_by(n);
                if let Some(verdict) = shadow {
                    self.shadow
                        .get_or_create(&ShadowLabels {
                            kind,
                            verdict: known(VERDICTS, verdict),
                        })
                        .inc_by(n);
                }
                if let Some(why) = fail_closed {
                    self.fail_closed
                        .get_or_create(&FailClosedLabels {
                            kind,
                            reason: known(FAIL_CLOSED, why),
                        })
                        .inc_by(n);
                }
            }
            RecordType::Approval => {
                let state = match &r.approval {
                    Some(a) => a.state.as_str(),
                    None => match r.kind.strip_prefix("approval.") {
                        Some("requested") => "pending",
                        Some(s) => s,
                        None => "",
                    },
                };
                self.approvals
                    .get_or_create(&StateLabels {
                        state: known(APPROVAL_STATES, state),
                    })
                    .inc();
            }
            RecordType::Policy => {
                let (result, ok) = match r.kind.as_ref() {
                    "policy.reloaded" => ("success", 1),
                    "policy.reload_failed" => ("failure", 0),
                    _ => return,
                };
                self.reloads.get_or_create(&ResultLabels { result }).inc();
                self.last_reload_ok.set(ok);
            }
            RecordType::Lifecycle | RecordType::Discovery => {}
        }
    }

    /// The `agent` label value for `name`: itself while there is room, else [`OTHER`].
    fn agent_label(&self, name: &str) -> String {
        let mut seen = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(name) {
            return name.to_owned();
        }
        if seen.len() < self.agent_limit {
            seen.insert(name.to_owned());
            return name.to_owned();
        }
        OTHER.to_owned()
    }

    /// `n` more allowed actions counted in the kernel (see [`crate::counts`]).
    pub fn add_counted(&self, agent: &str, rule: &str, kind: &str, n: u64) {
        self.counted
            .add(agent, self.agent_label(agent), rule, kind, n);
    }

    /// The counted allowed actions.
    pub fn counted(&self) -> &crate::counts::Counted {
        &self.counted
    }

    pub fn set_generation(&self, generation: u32) {
        self.generation.set(i64::from(generation));
    }

    pub fn set_pending_approvals(&self, n: u64) {
        self.pending_approvals
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The kernel's own counters (from the pinned stats map), as read by the daemon; exposed as
    /// `governance_kernel_{decisions,denials,ring_drops,map_full}_total`.
    pub fn set_kernel_counters(
        &self,
        decisions: u64,
        denials: u64,
        ring_drops: u64,
        map_full: u64,
    ) {
        let k = &self.kernel;
        k.decisions.store(decisions, Ordering::Relaxed);
        k.denials.store(denials, Ordering::Relaxed);
        k.ring_drops.store(ring_drops, Ordering::Relaxed);
        k.map_full.store(map_full, Ordering::Relaxed);
        k.set.store(true, Ordering::Relaxed);
    }

    pub fn inc_events_published(&self, n: u64) {
        self.events_published.inc_by(n);
    }

    pub fn inc_subscriber_events_lost(&self, n: u64) {
        self.subscriber_lost.inc_by(n);
    }

    pub fn inc_audit_records(&self, n: u64) {
        self.audit_records.inc_by(n);
    }

    /// Export the audit log's failure counters (read when scraped).
    pub fn watch_audit(&self, health: Arc<crate::audit::AuditHealth>) {
        let _ = self.audit.0.set(health);
    }

    /// Export an exporter's counters (read when scraped).
    pub fn watch_exporter(&self, stats: Arc<crate::export::Stats>) {
        if let Ok(mut e) = self.exporters.0.lock() {
            e.push(stats);
        }
    }

    pub fn observe_audit_flush(&self, took: Duration) {
        self.audit_flush.observe(took.as_secs_f64());
    }

    /// One proxied request: its outcome (a decision outcome, or `error`), the time from request
    /// to response, and the part of it spent deciding.
    pub fn observe_proxy(&self, outcome: &str, total: Duration, decision: Duration) {
        self.proxy_request
            .get_or_create(&OutcomeLabels {
                outcome: known(PROXY_OUTCOMES, outcome),
            })
            .observe(total.as_secs_f64());
        self.proxy_decision.observe(decision.as_secs_f64());
    }

    /// The OpenMetrics text exposition (serve with [`CONTENT_TYPE`]); reads the process
    /// metrics and the kernel counters as of now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String fails only if an encoder does; ours do not.
        if text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# EOF\n");
        }
        out
    }
}

/// The last kernel counters the daemon read; nothing is exposed before the first read.
#[derive(Debug, Default)]
struct KernelCounters {
    set: AtomicBool,
    decisions: AtomicU64,
    denials: AtomicU64,
    ring_drops: AtomicU64,
    map_full: AtomicU64,
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.set.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (name, help, v) in [
            (
                "kernel_decisions",
                "Decisions the eBPF programs made",
                &self.decisions,
            ),
            (
                "kernel_denials",
                "Actions the eBPF programs refused",
                &self.denials,
            ),
            (
                "kernel_ring_drops",
                "Decision events lost because the ring buffer was full",
                &self.ring_drops,
            ),
            (
                "kernel_map_full",
                "Kernel map updates that failed because the map was full",
                &self.map_full,
            ),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The exporters' counters (`--export`, `--notify-webhook`), labelled by exporter name (the
/// operator's configuration: a bounded set).
#[derive(Debug, Default)]
struct ExportCounters(Mutex<Vec<Arc<crate::export::Stats>>>);

impl Collector for ExportCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views: Vec<_> = match self.0.lock() {
            Ok(list) => list.iter().map(|s| s.view()).collect(),
            Err(_) => return Ok(()),
        };
        if views.is_empty() {
            return Ok(());
        }
        type Read = fn(&crate::export::ExporterView) -> u64;
        let families: [(&str, &str, Read); 3] = [
            (
                "export_records",
                "Records an exporter sent and had accepted",
                |v| v.sent,
            ),
            (
                "export_lost",
                "Records an exporter lost: its queue was full, or its last retry failed",
                |v| v.lost,
            ),
            (
                "export_failures",
                "Failed sends of an exporter, retries included",
                |v| v.failures,
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for v in &views {
                let labels = [("exporter", v.name.clone())];
                let c = ConstCounter::new(read(v));
                c.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The audit log's outages: counters kept by [`crate::audit::AuditHealth`], read when scraped.
#[derive(Debug, Default)]
struct AuditCounters(std::sync::OnceLock<Arc<crate::audit::AuditHealth>>);

impl Collector for AuditCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(h) = self.0.get() else {
            return Ok(());
        };
        for (name, help, v) in [
            (
                "audit_write_failures",
                "Failed audit log writes and fsyncs, retries included",
                h.write_failures(),
            ),
            (
                "audit_records_lost",
                "Records not in the audit log because it could not be written (as its gap records count them)",
                h.records_lost(),
            ),
            (
                "audit_gaps",
                "Gap records written to the audit log after it could be written again",
                h.gaps(),
            ),
            (
                "audit_blocked",
                "Actions refused because the audit log could not be written (--audit-on-failure block)",
                h.blocked(),
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(i64::from(h.writable()));
        g.encode(encoder.encode_descriptor(
            "audit_writable",
            "Whether the audit log is being written (0 during an outage)",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The daemon's own CPU time, resident memory and open descriptors, read from /proc/self at
/// each scrape. A value that cannot be read is left out.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        if let Some(rss) = resident_bytes() {
            let g = ConstGauge::new(rss);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(fds.count() as i64);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// utime + stime of /proc/self/stat (fields 14 and 15), in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = crate::procfs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / sysconf(libc::_SC_CLK_TCK)? as f64)
}

/// Resident pages of /proc/self/statm (field 2), in bytes.
fn resident_bytes() -> Option<i64> {
    let statm = crate::procfs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    i64::try_from(pages.checked_mul(sysconf(libc::_SC_PAGESIZE)?)?).ok()
}

#[cfg(test)]
mod tests;
