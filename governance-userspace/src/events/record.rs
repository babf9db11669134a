//! The record: one event model for decisions, approvals, policy changes and lifecycle steps.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StreamInfo, rfc3339, time::put_digits};

/// Where records are reported: every decision of the proxy, and every approval change.
pub type Sink = Arc<dyn Fn(Record) + Send + Sync>;

/// A record's text that is most often one of a few fixed words (a kind, an outcome, a
/// verdict, a mode) or the node's name: those are borrowed, not allocated for each event.
pub type Text = std::borrow::Cow<'static, str>;

/// One event: a decision, an approval, a policy change or a lifecycle step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Record {
    /// Unique per node: `<daemon start, hex ms>-<sequence>`; sorts in emission order within one
    /// daemon run.
    pub id: String,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// The node's hostname.
    pub node: Text,
    /// What the record is about.
    #[serde(rename = "type")]
    pub ty: RecordType,
    /// Who decided or reported it.
    pub source: Source,
    /// The action, for decisions: exec, file, connect, send, socket, userns, bpf, signal,
    /// ptrace, unlink, unix (a Unix-socket connect or datagram), api (a request to the control
    /// API), capability, mount, clone, exec_map, task, guard, ipc, link (a hard link or rename
    /// refused: `object.detail.op`), http. For other types, a short event name
    /// (`approval.granted`, `policy.reloaded`, `daemon.started`, ...).
    pub kind: Text,
    /// What happened to the action: allow, block, throttle, sandbox, escalate, granted, kill
    /// (degraded exec: the process was killed after its exec). Empty for non-decisions.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub outcome: Text,
    /// Whether the action was refused.
    #[serde(default)]
    pub denied: bool,
    /// A sampled allowed action (`report: { sample: N }`): it is also in the count records
    /// (`decisions.counted`), so a sum of allowed actions counts it there, not here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
    /// The verdict of the deciding rule or default (allow, block, throttle, sandbox, escalate).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub verdict: Text,
    /// `enforce`, or `shadow` when only a shadow rule or policy would have decided this way.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub mode: Text,
    /// `<policy>/<rule id>`, `default` (no rule matched: the default posture), `builtin:<what>`
    /// (a built-in protection) or `fail-closed:<why>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// The rule's reason, or why the action was decided as it was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Policy generation that decided (0: none).
    #[serde(default)]
    pub generation: u32,
    /// A shadow rule that would have decided otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Arc<AgentInfo>>,
    /// The acting task's own cgroup (the agent root or a descendant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// What was acted on.
    #[serde(default, skip_serializing_if = "Object::is_empty")]
    pub object: Object,
    /// The approval this record opened or settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<ApprovalInfo>>,
    /// Free text for policy and lifecycle records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Numbers that go with lifecycle records (drop counts, rules, agents).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// On a live stream's own records (`stream.subscribed`, `stream.ended`): the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Box<StreamInfo>>,
    /// On a drill record (`drill.passed`, `drill.failed`): its checks (see docs/operations.md,
    /// "Drills").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Box<crate::drill::Drill>>,
    /// A sequence rule's decisions: the earlier action that armed the rule (on the record of
    /// that action itself too, whose `rule` is then the sequence rule it armed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub armed_by: Option<Box<super::sequence::ArmedBy>>,
    /// On a `discovery` record: the candidate agent (a process outside every agent that
    /// behaves like one) and its evidence. Never enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Box<crate::discovery::Evidence>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    #[default]
    Decision,
    Approval,
    Policy,
    Lifecycle,
    /// A candidate agent: a process outside every agent that behaves like one (discovery).
    Discovery,
}

impl RecordType {
    /// The name `serde` writes.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Decision => "decision",
            RecordType::Approval => "approval",
            RecordType::Policy => "policy",
            RecordType::Lifecycle => "lifecycle",
            RecordType::Discovery => "discovery",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The eBPF programs.
    #[default]
    Kernel,
    /// The HTTP policy proxy.
    Proxy,
    /// The decision API (pre-authorization requests).
    Api,
    /// The daemon itself.
    Daemon,
}

impl Source {
    /// The name `serde` writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kernel => "kernel",
            Source::Proxy => "proxy",
            Source::Api => "api",
            Source::Daemon => "daemon",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Shadow {
    pub verdict: String,
    pub rule: String,
}

/// The agent an event belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgentInfo {
    /// Its label, or else its cgroup path.
    pub name: String,
    /// What made the cgroup an agent: `cgroup=<glob>` and/or `label=<value>` of the policies
    /// that select it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// cgroup v2 id of the agent root.
    pub cgroup_id: u64,
    /// The agent root, relative to the cgroup2 mount.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    /// Kubernetes pod (`run --kubernetes`; empty outside pods).
    #[serde(default)]
    pub pod: String,
    /// Kubernetes namespace (`run --kubernetes`; empty outside pods).
    #[serde(default)]
    pub namespace: String,
    /// The container the acting process runs in: the runtime's container id, from its cgroup
    /// (the kubelet's layout; empty outside containers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupInfo {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub id: u64,
    /// Relative to the cgroup2 mount; empty when the cgroup is gone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessInfo {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    #[serde(default)]
    pub tid: u32,
    /// The process id as the process's own PID namespace numbers it (the pid inside its
    /// container), when that is not the node's namespace; `pid` is always the node's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ns_pid: u32,
    #[serde(default)]
    pub ppid: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub comm: String,
    /// The process's executable (`/proc/PID/exe`), when enriched.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exe: String,
    /// Its command line (`/proc/PID/cmdline`), when enriched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The process runs under a sandbox profile (a `sandbox` verdict confined it or a parent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandboxed: bool,
    /// `procfs` when what the kernel does not report was read from the live process (exe and
    /// argv for exec; comm, ppid and uid for HTTP, where the proxy knows only the pid), `gone`
    /// when the process had exited before it could be read (best effort: those fields are then
    /// empty), `changed` when an exec's process already ran another program (exe is what it
    /// runs now, argv empty: it would be that program's), `leased` when its status file was held by a file
    /// lease (never waited for), `none` when enrichment was not attempted.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub enrichment: Text,
}

/// What an action was about. Only the fields that apply to its kind are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Object {
    /// exec: the file name the exec asked for; file: the resolved path opened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// file: the accesses asked for, as letters (r, w, c = create, t = truncate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access: String,
    /// connect/send: the destination address and port (`1.2.3.4:443`, `[::1]:80`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dest: String,
    /// connect/send: tcp or udp; socket: the family and type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// http: the method.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// http: the full URL (scheme, host, path and query).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// http: the MCP tool of a JSON-RPC `tools/call`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mcp_tool: String,
    /// signal/ptrace: the protected process acted on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_pid: u32,
    /// signal: the signal number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub signal: u32,
    /// Extra facts about the object: the body fields a rule used, the bpf command, the
    /// upstream a sandboxed request went to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub detail: std::collections::BTreeMap<String, String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Object {
    pub fn is_empty(&self) -> bool {
        *self == Object::default()
    }
}

/// An approval request and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalInfo {
    /// The id `governance approve` and `governance deny` take.
    pub id: String,
    /// pending, approved, denied, expired, withdrawn (the HTTP client went away).
    pub state: String,
    /// Who approved or denied it (the control API's caller).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// Until when it may be decided (RFC 3339); after that the action stays refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deadline: String,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Event ids: a per-run prefix (the daemon's start time) and a sequence.
#[derive(Debug)]
pub struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self {
            prefix: format!("{ms:x}"),
            next: AtomicU64::new(1),
        }
    }

    /// `<prefix>-<sequence, at least 8 digits>`.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut buf = [0u8; 20];
        let width = digits.max(8);
        put_digits(&mut buf[..width], n);
        let mut id = String::with_capacity(self.prefix.len() + 1 + width);
        id.push_str(&self.prefix);
        id.push('-');
        id.push_str(std::str::from_utf8(&buf[..width]).unwrap_or_default());
        id
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

/// This node's name, for records: the hostname when it is first asked for (read once, so that
/// every record shares it instead of allocating it).
pub fn node_name() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into())
    })
}

impl Record {
    /// A policy or lifecycle record from the daemon.
    /// The record as JSON with one member more, beside its own (`audit_gap`, `audit_cut`: facts
    /// of the audit log's that are no field of a record).
    pub fn with_member(&self, name: &str, value: impl Serialize) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let (serde_json::Value::Object(m), Ok(extra)) = (&mut v, serde_json::to_value(value)) {
            m.insert(name.into(), extra);
        }
        v
    }

    pub fn daemon(ty: RecordType, kind: impl Into<Text>, message: impl Into<String>) -> Self {
        Record {
            time: rfc3339(SystemTime::now()),
            node: node_name().into(),
            ty,
            source: Source::Daemon,
            kind: kind.into(),
            message: message.into(),
            ..Default::default()
        }
    }
}

impl ProcessInfo {
    /// A live process as procfs describes it (`/proc/PID/status`: comm, ppid, real uid, its pid
    /// in its own PID namespace), for
    /// a decision the kernel did not report itself (the proxy knows only the client's pid).
    /// Marked `gone` when the process has already exited, `leased` when someone holds a lease
    /// on its status file (never waited for: see [`crate::procfs`]).
    pub fn from_procfs(pid: u32) -> ProcessInfo {
        Self::read_procfs(pid).unwrap_or_else(|_| ProcessInfo {
            pid,
            enrichment: "leased".into(),
            ..Default::default()
        })
    }

    /// [`from_procfs`](Self::from_procfs), but a lease on the process's status file is an
    /// error (`EWOULDBLOCK`), for a caller that must fail closed on it (the proxy's
    /// identification of a client).
    pub fn read_procfs(pid: u32) -> std::io::Result<ProcessInfo> {
        let mut p = ProcessInfo {
            pid,
            ..Default::default()
        };
        let status = match crate::procfs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(s) => s,
            Err(e) if crate::procfs::leased(&e) => return Err(e),
            Err(_) => String::new(),
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let number = |v: &str| v.split_whitespace().next()?.parse().ok();
        match (
            field("Name"),
            field("PPid").and_then(number),
            field("Uid").and_then(number),
        ) {
            (Some(comm), Some(ppid), Some(uid)) => {
                (p.comm, p.ppid, p.uid) = (comm.to_owned(), ppid, uid);
                p.enrichment = "procfs".into();
            }
            _ => p.enrichment = "gone".into(),
        }
        // NSpid: its pid in each PID namespace from procfs's (the node's) down to its own.
        let ns: Vec<u32> = field("NSpid")
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if let [_, .., own] = ns[..] {
            p.ns_pid = own;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered() {
        let ids = Ids::new();
        let (a, b) = (ids.next(), ids.next());
        assert!(a < b, "{a} {b}");
        assert_eq!(a, format!("{}-00000001", ids.prefix));
        for n in [
            0,
            9,
            10,
            99_999_999,
            100_000_000,
            123_456_789_012,
            u64::MAX - 1,
        ] {
            ids.next.store(n, Ordering::Relaxed);
            assert_eq!(ids.next(), format!("{}-{n:08}", ids.prefix));
        }
    }

    /// comm, ppid and uid of a live process from procfs; a process that is gone is marked so.
    #[test]
    fn process_from_procfs() {
        let p = ProcessInfo::from_procfs(std::process::id());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(p.comm, comm.trim_end());
        assert_eq!(p.ppid, std::os::unix::process::parent_id());
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.enrichment, "procfs");
        assert_eq!(p.ns_pid, 0, "in the node's PID namespace");
        // pid_max is at most 2^22: this pid cannot exist.
        let gone = ProcessInfo::from_procfs(1 << 23);
        assert_eq!((gone.comm.as_str(), gone.enrichment.as_ref()), ("", "gone"));
    }
}
