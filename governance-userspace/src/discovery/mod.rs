//! Discovery of agents nobody labelled: processes outside every agent that talk to LLM
//! provider APIs (the server name of their TLS connections, their DNS queries: copied by the
//! kernel's `discover` program), run agent frameworks or run or call MCP servers (procfs).
//! Each is a candidate, reported as a `discovery` record with its evidence and listed by
//! `governance discover` with a suggested selector. Evidence only: nothing here refuses
//! anything, and a failure here never stops the daemon (it is counted and logged).
//!
//! A packet is tied to its process by the task that sent it, checked against the socket's
//! cgroup (the first data of a connection and a DNS query leave in the sender's own system
//! call); when the check fails, the candidate is its cgroup (`attributed: cgroup`).

pub mod api;
pub mod evidence;
pub mod hosts;
pub mod parse;
pub mod procs;
mod selector;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

pub use evidence::Evidence;
pub use hosts::Hosts;
pub use selector::{group_key, suggest};

use crate::events::{CgroupInfo, ProcessInfo, Record, RecordType, Source, rfc3339};

/// A candidate and its evidence is recorded again (with its count) at most this often.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(3600);
/// Candidates (process × evidence) kept; the least recently seen go first.
pub const MAX_CANDIDATES: usize = 4096;

/// (cgroup id, pid, what, value): one candidate and one piece of evidence.
type Key = (u64, u32, String, String);

struct Entry {
    evidence: Evidence,
    recorded: Instant,
    seen: Instant,
}

/// The candidates seen, deduplicated.
#[derive(Default)]
pub struct Table {
    entries: HashMap<Key, Entry>,
}

impl Table {
    /// Note a sighting; the record to publish, if this candidate+evidence is new or was last
    /// recorded [`RECORD_INTERVAL`] ago.
    pub fn see(&mut self, ev: Evidence, now: Instant) -> Option<Evidence> {
        let key = (ev.cgroup_id, ev.pid, ev.what.clone(), ev.value.clone());
        if let Some(e) = self.entries.get_mut(&key) {
            e.evidence.count += 1;
            e.evidence.last_seen = ev.last_seen;
            e.seen = now;
            if now.duration_since(e.recorded) >= RECORD_INTERVAL {
                e.recorded = now;
                return Some(e.evidence.clone());
            }
            return None;
        }
        if self.entries.len() >= MAX_CANDIDATES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seen)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        let mut ev = ev;
        ev.count = 1;
        self.entries.insert(
            key,
            Entry {
                evidence: ev.clone(),
                recorded: now,
                seen: now,
            },
        );
        Some(ev)
    }

    pub fn list(&self) -> Vec<Evidence> {
        let mut v: Vec<Evidence> = self.entries.values().map(|e| e.evidence.clone()).collect();
        v.sort_by(|a, b| {
            (&a.cgroup, a.pid, &a.what, &a.value).cmp(&(&b.cgroup, b.pid, &b.what, &b.value))
        });
        v
    }
}

/// Discovery's shared state: the host list, the candidates, and its own failure counts.
pub struct Discovery {
    pub hosts: Hosts,
    pub cgroup_root: PathBuf,
    pub table: Mutex<Table>,
    /// Events that could not be read or parsed, scans that failed.
    pub errors: std::sync::atomic::AtomicU64,
}

impl Discovery {
    pub fn new(hosts: Hosts, cgroup_root: PathBuf) -> Arc<Self> {
        Arc::new(Discovery {
            hosts,
            cgroup_root,
            table: Mutex::default(),
            errors: Default::default(),
        })
    }

    pub fn candidates(&self) -> Vec<Evidence> {
        self.table.lock().map(|t| t.list()).unwrap_or_default()
    }

    /// A ClientHello or DNS query the kernel copied: the candidate's evidence, if its name is
    /// on the host list.
    pub fn packet(&self, ev: &governance_common::discover::DiscoverEvent) -> Option<Evidence> {
        use governance_common::discover::{DISCOVER_DNS, DISCOVER_TLS};
        let len = (ev.len as usize).min(ev.payload.len());
        let payload = &ev.payload[..len];
        let (what, name) = match ev.kind {
            DISCOVER_TLS => ("sni", parse::sni(payload)?),
            DISCOVER_DNS => ("dns", parse::dns_query(payload)?),
            _ => return None,
        };
        let matched = self.hosts.matches(&name)?.to_owned();
        let tgid = (ev.pid_tgid >> 32) as u32;
        // The sending task, if it is in the socket's cgroup.
        let proc =
            procs::proc_info(&self.cgroup_root, tgid).filter(|p| p.cgroup_id == ev.cgroup_id);
        let now = rfc3339(SystemTime::now());
        let mut e = Evidence {
            what: what.into(),
            value: name,
            matched,
            cgroup_id: ev.cgroup_id,
            first_seen: now.clone(),
            last_seen: now,
            count: 1,
            ..Default::default()
        };
        match proc {
            Some(p) => {
                e.attributed = "pid".into();
                (e.pid, e.comm, e.exe, e.cmdline, e.cgroup) =
                    (p.pid, p.comm, p.exe, p.cmdline, p.cgroup);
            }
            None => {
                e.attributed = "cgroup".into();
                e.cgroup =
                    procs::cgroup_path_of_id(&self.cgroup_root, ev.cgroup_id).unwrap_or_default();
            }
        }
        (e.container, e.pod_uid) = procs::container_of(&e.cgroup);
        Some(e)
    }

    /// Note evidence; the record to publish, if any (see [`Table::see`]).
    pub fn note(&self, e: Evidence) -> Option<Record> {
        let fresh = self.table.lock().ok()?.see(e, Instant::now())?;
        Some(record(&fresh))
    }
}

/// The `discovery` record of a candidate's evidence.
pub fn record(e: &Evidence) -> Record {
    // What the candidate process chose (a server name, a query, its name, its cgroup's) is
    // quoted, as an event line's values are: a name with spaces would otherwise write fields
    // of its own into the line (red team round 35's review).
    let q = crate::events::display::quoted;
    let what = match e.what.as_str() {
        "sni" => format!("TLS to {}", q(&e.value)),
        "dns" => format!("a DNS query for {}", q(&e.value)),
        "mcp" => format!("MCP: {} ({})", q(&e.matched), q(&e.value)),
        _ => format!("agent framework {} ({})", q(&e.matched), q(&e.value)),
    };
    let who = if e.pid != 0 {
        format!("pid {} ({})", e.pid, q(&e.comm))
    } else {
        format!("a process of cgroup {}", q(&e.cgroup))
    };
    let mut r = Record::daemon(
        RecordType::Discovery,
        format!("candidate.{}", e.what),
        format!(
            "candidate agent: {who} outside every agent: {what}; matches {} (seen {} times; not enforced: label it to govern it)",
            q(&e.matched),
            e.count
        ),
    );
    r.source = if matches!(e.what.as_str(), "sni" | "dns") {
        Source::Kernel
    } else {
        Source::Daemon
    };
    r.cgroup = Some(CgroupInfo {
        id: e.cgroup_id,
        path: e.cgroup.clone(),
    });
    if e.pid != 0 {
        let mut p = ProcessInfo::from_procfs(e.pid);
        p.exe = e.exe.clone();
        r.process = Some(p);
    }
    r.candidate = Some(Box::new(e.clone()));
    r
}
