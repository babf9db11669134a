//! Decision events: the one event model every part of governance reports in.
//!
//! Kernel decisions (exec, file, network, self-protection), HTTP decisions of the proxy,
//! approvals, policy reloads and the daemon's lifecycle are all a [`Record`]: one documented
//! schema (`governance events schema` prints it as JSON Schema; `docs/event.schema.json` is the
//! committed copy), written to the audit log, streamed to subscribers as NDJSON, and printed as
//! one readable line ([`Record`]'s `Display`).
//!
//! The kernel side: a ring-buffer record ([`parse`]) is decoded with the names of the
//! generation that decided it ([`Names`]) into a [`Record`] ([`Record::from_kernel`]).

use std::{
    fmt,
    net::Ipv6Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use governance_common::{
    Cause, EXEC_DETAIL_LOADER, Event, FILE_DETAIL_RAW_DEVICE, Kind, SUN_PATH_LEN, Verdict,
    c_str_len, caps, exec_map, flags, mount_op, unix_detail, unix_hook, unix_protected,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where records are reported: every decision of the proxy, and every approval change.
pub type Sink = Arc<dyn Fn(Record) + Send + Sync>;

/// One event: a decision, an approval, a policy change or a lifecycle step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Record {
    /// Unique per node: `<daemon start, hex ms>-<sequence>`; sorts in emission order within one
    /// daemon run.
    pub id: String,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// The node's hostname.
    pub node: String,
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
    pub kind: String,
    /// What happened to the action: allow, block, throttle, sandbox, escalate, granted, kill
    /// (degraded exec: the process was killed after its exec). Empty for non-decisions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// Whether the action was refused.
    #[serde(default)]
    pub denied: bool,
    /// The verdict of the deciding rule or default (allow, block, throttle, sandbox, escalate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    /// `enforce`, or `shadow` when only a shadow rule or policy would have decided this way.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
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
    pub agent: Option<AgentInfo>,
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
    pub approval: Option<ApprovalInfo>,
    /// Free text for policy and lifecycle records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Numbers that go with lifecycle records (drop counts, rules, agents).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// On a live stream's own records (`stream.subscribed`, `stream.ended`): the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamInfo>,
}

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
    /// Record types (decision, approval, policy, lifecycle).
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
        if !self.kinds.is_empty() && !self.kinds.contains(&r.kind) {
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    #[default]
    Decision,
    Approval,
    Policy,
    Lifecycle,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Decision => "decision",
            RecordType::Approval => "approval",
            RecordType::Policy => "policy",
            RecordType::Lifecycle => "lifecycle",
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
    /// Kubernetes pod (empty until the Kubernetes integration).
    #[serde(default)]
    pub pod: String,
    /// Kubernetes namespace (empty until the Kubernetes integration).
    #[serde(default)]
    pub namespace: String,
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
    /// empty), `none` when enrichment was not attempted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub enrichment: String,
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

/// This node's name, for records.
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            boot_wall: SystemTime::now() - Duration::from_nanos(monotonic_ns()),
        }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(monotonic_ns)
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or_default()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..c_str_len(bytes)]).into_owned()
}

/// Decode a ring-buffer record. Returns None if it is not the size of an [`Event`].
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length matches, Event is repr(C) plain data (every bit pattern is valid),
    // and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// What kernel ids stand for in one generation: agents and rules.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Agent root cgroup id → the agent.
    pub agents: std::collections::HashMap<u64, AgentInfo>,
    /// Agent root cgroup id → the agent as the policy engine knows it.
    pub refs: std::collections::HashMap<u64, crate::engine::AgentRef>,
    /// Kernel rule number n (rule id without the slot bit) is `rules[n - 1]`.
    pub rules: Vec<RuleName>,
}

#[derive(Clone, Debug, Default)]
pub struct RuleName {
    /// `<policy>/<rule>`.
    pub id: String,
    pub reason: String,
    /// Escalation rules: how long a request may wait for approval, and what happens then.
    pub escalate: Option<(Duration, crate::policy::Posture)>,
    /// Whether the rule (or its policy) is in shadow mode.
    pub shadow: bool,
}

impl Names {
    pub fn rule(&self, rule_id: u32) -> Option<&RuleName> {
        (rule_id & 0x7fff_ffff)
            .checked_sub(1)
            .and_then(|i| self.rules.get(i as usize))
    }
}

/// What a kernel escalation asks to let through: the agent, the kind and the object identity
/// (see governance_common::GrantKey).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantRequest {
    pub cgroup_id: u64,
    pub kind: u8,
    pub object: u64,
}

impl GrantRequest {
    /// The grant an escalation event asks for, if it is one (refused, escalate verdict, a rule).
    pub fn of(ev: &Event) -> Option<Self> {
        let escalation = ev.flags & flags::DENIED != 0
            && Verdict::from_u8(ev.verdict) == Some(Verdict::Escalate)
            && Cause::from_u8(ev.cause) == Some(Cause::Rule);
        escalation.then_some(Self {
            cgroup_id: ev.agent_cgroup,
            kind: ev.kind,
            object: ev.object,
        })
    }
}

/// [`Event::detail`] of a capability event for a refused io_uring personality.
const URING_PERSONALITY: u8 = 255;
/// clone3's CLONE_INTO_CGROUP.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The rule name (after `builtin:`) and reason of a built-in decision.
fn builtin_what(kind: Option<Kind>, ev: &Event) -> (&'static str, &'static str) {
    let denied = ev.flags & flags::DENIED != 0;
    match kind {
        Some(Kind::Connect | Kind::Send) if denied => (
            "control-api",
            "the daemon's control API is refused to agents",
        ),
        Some(Kind::Unix) => match u32::from(ev.detail >> unix_detail::PROTECTED_SHIFT) {
            unix_protected::CONTROL => (
                "control-socket",
                "the daemon's control socket is refused to agents",
            ),
            unix_protected::RUNTIME => (
                "runtime-socket",
                "container-runtime and service-manager sockets start processes outside the \
                 agent: refused unless the policy sets kernel.allow_runtime_sockets",
            ),
            _ => ("unix", "Unix sockets"),
        },
        Some(Kind::Socket) => (
            "socket",
            "agents get Unix, TCP and UDP sockets only (no raw, packet, netlink, other families \
             or protocols)",
        ),
        Some(Kind::Userns) => ("userns", "no new user namespaces for agents"),
        Some(Kind::Bpf) => ("bpf", "no bpf() for agents"),
        Some(k @ (Kind::Signal | Kind::Ptrace | Kind::Task)) => (
            k.as_str(),
            "processes outside the agent (the daemon and the proxy above all) are out of its reach",
        ),
        Some(Kind::Unlink) => ("unlink", "the pins are protected"),
        Some(Kind::Guard) => ("guard", governance_common::guard::name(ev.detail)),
        Some(Kind::Ipc) => (
            "ipc",
            "System V IPC objects made outside the agent are out of its reach",
        ),
        Some(Kind::Connect | Kind::Send) => (
            kind.map_or("?", Kind::as_str),
            "connections to the policy proxy are let through",
        ),
        Some(Kind::Exec) if ev.detail == EXEC_DETAIL_LOADER => (
            "loader",
            "the dynamic loader runs programs only as their interpreter, not as a program",
        ),
        Some(Kind::Exec) if ev.flags & flags::SANDBOXED != 0 => {
            ("exec", "sandbox profile missing from this generation")
        }
        Some(Kind::File) if ev.detail & FILE_DETAIL_RAW_DEVICE != 0 => (
            "raw-device",
            "no raw storage devices for agents (block devices, SCSI and NVMe generic)",
        ),
        Some(Kind::Capability) if ev.detail == URING_PERSONALITY => (
            "capability",
            "no io_uring personalities for agents (credentials other than their own)",
        ),
        Some(Kind::Capability) => ("capability", "a capability agents never get"),
        Some(Kind::Mount) => ("mount", "no mounts for agents"),
        Some(Kind::Clone) if ev.object & CLONE_INTO_CGROUP != 0 => (
            "clone",
            "no children in another cgroup (clone3 CLONE_INTO_CGROUP)",
        ),
        Some(Kind::Clone) => ("clone", "no new namespaces for agents"),
        Some(Kind::ExecMap) if ev.port == exec_map::NAMELESS => (
            "nameless-code",
            "under an exec allowlist, memory with no file name (memfd, shared memory) is not mapped executable",
        ),
        Some(Kind::ExecMap) => (
            "written-code",
            "under an exec allowlist, files an agent wrote are not mapped executable",
        ),
        _ => (
            kind.map_or("?", Kind::as_str),
            "protected path (cgroup tree, policy directory, pins)",
        ),
    }
}

/// The names of the clone flags that make a clone a decision.
fn clone_flag_names(flags: u64) -> String {
    const NAMES: [(u64, &str); 8] = [
        (0x0000_0080, "CLONE_NEWTIME"),
        (0x0002_0000, "CLONE_NEWNS"),
        (0x0200_0000, "CLONE_NEWCGROUP"),
        (0x0400_0000, "CLONE_NEWUTS"),
        (0x0800_0000, "CLONE_NEWIPC"),
        (0x2000_0000, "CLONE_NEWPID"),
        (0x4000_0000, "CLONE_NEWNET"),
        (CLONE_INTO_CGROUP, "CLONE_INTO_CGROUP"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// The outcome word of a decision.
fn outcome_of(ev: &Event, verdict: Option<Verdict>, cause: Option<Cause>) -> &'static str {
    let denied = ev.flags & flags::DENIED != 0;
    if ev.flags & flags::KILLED != 0 {
        return "kill";
    }
    match (denied, verdict, cause) {
        (true, Some(Verdict::Throttle), _) => "throttle",
        (true, Some(Verdict::Escalate), _) => "escalate",
        (true, _, _) => "block",
        (false, Some(Verdict::Sandbox), _) => "sandbox",
        (false, _, Some(Cause::Granted)) => "granted",
        (false, _, _) => "allow",
    }
}

/// The object of a Unix-socket decision: the name the target socket was bound with (`@name`
/// for an abstract one), the kind of socket and, for a socket file, the identity that decided.
fn unix_object(ev: &Event, object: &mut Object) {
    let word =
        |i: usize| u32::from_ne_bytes([ev.addr[i], ev.addr[i + 1], ev.addr[i + 2], ev.addr[i + 3]]);
    let dev = word(0);
    let len = (word(4) as usize).min(SUN_PATH_LEN);
    let ino = u64::from_ne_bytes(ev.addr[8..16].try_into().unwrap_or_default());
    let name = &ev.path[..len.min(ev.path.len())];
    match ev.detail & 0xf {
        unix_detail::PATH => {
            object.path = text(name);
            object.detail.insert(
                "inode".into(),
                format!("{}:{}:{ino}", dev >> 20, dev & 0xf_ffff),
            );
        }
        unix_detail::ABSTRACT => {
            // As `ss` shows it: `@`, and `@` for each NUL in the name.
            let shown: Vec<u8> = name
                .iter()
                .skip(1)
                .map(|&b| if b == 0 { b'@' } else { b })
                .collect();
            object.path = format!("@{}", String::from_utf8_lossy(&shown));
        }
        _ => {}
    }
    object.protocol = match ev.port {
        unix_hook::CONNECT => "unix-stream".into(),
        unix_hook::SEND => "unix-dgram".into(),
        _ => "unix".into(),
    };
}

impl Record {
    /// A decision the kernel reported, named with its generation's `names`.
    pub fn from_kernel(ev: &Event, names: &Names, clock: &Clock) -> Self {
        let kind = Kind::from_u8(ev.kind);
        let cause = Cause::from_u8(ev.cause);
        let verdict = Verdict::from_u8(ev.verdict);
        let named = names.rule(ev.rule_id);
        let (rule, reason) = match (cause, named) {
            // Path rules the compiler adds itself (no rule number): the protected paths and
            // the sandbox profile's writable directories.
            (Some(Cause::Rule), _) if ev.rule_id & 0x7fff_ffff == 0 => {
                if ev.flags & flags::SANDBOXED != 0 {
                    (
                        "builtin:sandbox".into(),
                        "the sandbox profile: writes only below its writable directories, and its network setting".into(),
                    )
                } else {
                    (
                        "builtin:protected-path".into(),
                        "no writes to the cgroup tree outside the agent, the policy directory or the pins".into(),
                    )
                }
            }
            (Some(Cause::Rule | Cause::Granted), Some(r)) => (r.id.clone(), r.reason.clone()),
            (Some(Cause::Rule | Cause::Granted), None) => (
                format!("#{}", ev.rule_id & 0x7fff_ffff),
                "the rule is not in a known policy generation".into(),
            ),
            (Some(Cause::Default), _) => (
                "default".into(),
                "no rule matched: the agent's default posture".into(),
            ),
            (Some(Cause::Unreadable), _) => (
                "fail-closed:unreadable".into(),
                "the kernel object could not be read".into(),
            ),
            (Some(Cause::TooLong), _) => (
                "fail-closed:too-long".into(),
                "the path is longer than the kernel matches".into(),
            ),
            (Some(Cause::Builtin), _) => {
                let (name, what) = builtin_what(kind, ev);
                (format!("builtin:{name}"), what.into())
            }
            (Some(Cause::MapFull), _) => (
                "fail-closed:map-full".into(),
                "the kernel's table of files agents wrote is full; a write it cannot remember \
                 is refused"
                    .into(),
            ),
            (Some(Cause::NoProxy), _) => (
                "fail-closed:no-proxy".into(),
                "a via_proxy rule matched, but the connection cannot go through the policy proxy \
                 (no proxy listening, not TCP, or no room to record it); never sent direct"
                    .into(),
            ),
            (None, _) => (format!("unknown-cause:{}", ev.cause), String::new()),
        };
        let shadow = (ev.flags & flags::SHADOW != 0).then(|| Shadow {
            verdict: Verdict::from_u8(ev.shadow_verdict)
                .map_or("?", Verdict::as_str)
                .into(),
            rule: names
                .rule(ev.shadow_rule_id)
                .map_or_else(|| "default".to_owned(), |r| r.id.clone()),
        });
        let agent = names
            .agents
            .get(&ev.agent_cgroup)
            .cloned()
            .unwrap_or_else(|| AgentInfo {
                name: format!("cgroup:{}", ev.agent_cgroup),
                cgroup_id: ev.agent_cgroup,
                ..Default::default()
            });
        let mut object = Object::default();
        match kind {
            Some(Kind::Connect | Kind::Send) => {
                let ip = Ipv6Addr::from(ev.addr);
                object.dest = match ip.to_ipv4_mapped() {
                    Some(v4) => format!("{v4}:{}", ev.port),
                    None => format!("[{ip}]:{}", ev.port),
                };
                object.protocol = match ev.detail {
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    p => p.to_string(),
                };
                if ev.flags & flags::PROXIED != 0 {
                    object
                        .detail
                        .insert("redirected".into(), "policy proxy".into());
                }
            }
            Some(Kind::File) => {
                object.path = text(&ev.path);
                for (bit, c) in [(1, 'r'), (2, 'w'), (4, 'c'), (8, 't')] {
                    if ev.detail & bit != 0 {
                        object.access.push(c);
                    }
                }
                if ev.detail & FILE_DETAIL_RAW_DEVICE != 0 {
                    object.detail.insert("device".into(), "raw storage".into());
                }
            }
            Some(Kind::Exec) => object.path = text(&ev.path),
            Some(Kind::Socket) => {
                object.protocol = format!("family={} type={}", ev.detail, ev.port)
            }
            Some(Kind::Signal) => {
                object.target_pid = ev.object as u32;
                object.signal = u32::from(ev.port);
            }
            Some(Kind::Ptrace) => {
                object.target_pid = ev.object as u32;
                object.detail.insert("mode".into(), ev.detail.to_string());
            }
            Some(Kind::Guard) => {
                object.detail.insert(
                    "guard".into(),
                    governance_common::guard::name(ev.detail).into(),
                );
                if ev.object != 0 {
                    object.detail.insert("arg".into(), ev.object.to_string());
                }
            }
            Some(Kind::Task) => {
                object.target_pid = ev.object as u32;
                let what = governance_common::task_change::name(ev.detail);
                object.detail.insert("change".into(), what.into());
            }
            Some(Kind::Bpf) => {
                object.detail.insert("cmd".into(), ev.detail.to_string());
            }
            Some(Kind::Ipc) => {
                object.detail.insert("flag".into(), ev.detail.to_string());
            }
            Some(Kind::Unix) => unix_object(ev, &mut object),
            Some(Kind::Capability) => {
                let what = if ev.detail == URING_PERSONALITY {
                    "io_uring personality".into()
                } else {
                    caps::name(u32::from(ev.detail)).to_owned()
                };
                object.detail.insert("capability".into(), what);
            }
            Some(Kind::Mount) => {
                object.path = text(&ev.path);
                let op = match ev.detail {
                    mount_op::MOUNT => "mount",
                    mount_op::UMOUNT => "umount",
                    mount_op::REMOUNT => "remount",
                    mount_op::PIVOT_ROOT => "pivot_root",
                    mount_op::MOVE_MOUNT => "move_mount",
                    _ => "?",
                };
                object.detail.insert("operation".into(), op.into());
                if ev.object != 0 {
                    object
                        .detail
                        .insert("flags".into(), format!("{:#x}", ev.object));
                }
            }
            Some(Kind::Clone) => {
                object
                    .detail
                    .insert("flags".into(), clone_flag_names(ev.object));
            }
            Some(Kind::ExecMap) => {
                object.path = text(&ev.path);
                let via = match ev.detail {
                    exec_map::MMAP => "mmap",
                    exec_map::MPROTECT => "mprotect",
                    _ => "?",
                };
                object.detail.insert("via".into(), via.into());
            }
            Some(Kind::Link) => {
                object.path = text(&ev.path);
                let op = match ev.detail {
                    governance_common::LINK_OP_LINK => "link",
                    governance_common::LINK_OP_RENAME => "rename",
                    governance_common::LINK_OP_UNLINK => "unlink",
                    governance_common::LINK_OP_TRUNCATE => "truncate",
                    _ => "?",
                };
                object.detail.insert("op".into(), op.into());
            }
            Some(Kind::Userns | Kind::Unlink) | None => {}
        }
        let shadow_mode = named.is_some_and(|r| r.shadow);
        Record {
            id: String::new(),
            time: rfc3339(clock.wall(ev.time_ns)),
            node: String::new(),
            ty: RecordType::Decision,
            source: Source::Kernel,
            kind: kind.map_or_else(|| format!("unknown:{}", ev.kind), |k| k.as_str().into()),
            outcome: outcome_of(ev, verdict, cause).into(),
            denied: ev.flags & flags::DENIED != 0,
            verdict: verdict.map_or("?", Verdict::as_str).into(),
            mode: if shadow_mode { "shadow" } else { "enforce" }.into(),
            rule,
            reason,
            generation: ev.generation,
            shadow,
            agent: Some(agent),
            cgroup: Some(CgroupInfo {
                id: ev.cgroup_id,
                path: String::new(),
            }),
            process: Some(ProcessInfo {
                pid: ev.tgid,
                tid: ev.pid,
                ppid: ev.ppid,
                uid: ev.uid,
                comm: text(&ev.comm),
                sandboxed: ev.flags & flags::SANDBOXED != 0,
                enrichment: "none".into(),
                ..Default::default()
            }),
            object,
            approval: None,
            message: String::new(),
            counts: Default::default(),
            stream: None,
        }
    }

    /// A policy or lifecycle record from the daemon.
    pub fn daemon(ty: RecordType, kind: &str, message: impl Into<String>) -> Self {
        Record {
            time: rfc3339(SystemTime::now()),
            ty,
            source: Source::Daemon,
            kind: kind.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    /// The readable form of the object: `path="/usr/bin/nc"`, `dest=1.2.3.4:80 proto=tcp`, ...
    fn object_words(&self) -> String {
        let o = &self.object;
        let mut w = Vec::new();
        if !o.method.is_empty() {
            w.push(format!("{} {}", o.method, o.url));
        } else if !o.url.is_empty() {
            w.push(format!("url={}", o.url));
        }
        if !o.mcp_tool.is_empty() {
            w.push(format!("mcp_tool={}", o.mcp_tool));
        }
        if !o.path.is_empty() {
            w.push(format!("path={:?}", o.path));
        }
        if !o.access.is_empty() {
            w.push(format!("access={}", o.access));
        }
        if !o.dest.is_empty() {
            w.push(format!("dest={}", o.dest));
        }
        if !o.protocol.is_empty() {
            w.push(format!("proto={}", o.protocol));
        }
        if o.target_pid != 0 {
            w.push(format!("target={}", o.target_pid));
        }
        if o.signal != 0 {
            w.push(format!("signal={}", o.signal));
        }
        for (k, v) in &o.detail {
            w.push(format!("{k}={v:?}"));
        }
        w.join(" ")
    }
}

/// One readable line per record, for people (and grep): time, OUTCOME, kind, agent, object,
/// process, rule, reason.
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = if self.ty == RecordType::Decision {
            self.outcome.to_uppercase()
        } else {
            self.ty.as_str().to_uppercase()
        };
        write!(f, "{} {head:<8} {:<7}", self.time, self.kind)?;
        if let Some(a) = &self.agent {
            write!(f, " agent={}", a.name)?;
        }
        let object = self.object_words();
        if !object.is_empty() {
            write!(f, " {object}")?;
        }
        if let Some(p) = &self.process {
            write!(
                f,
                " pid={} ppid={} comm={:?} uid={}",
                p.pid, p.ppid, p.comm, p.uid
            )?;
            if !p.exe.is_empty() {
                write!(f, " exe={:?}", p.exe)?;
            }
            if p.sandboxed {
                f.write_str(" sandboxed")?;
            }
        }
        if let Some(c) = &self.cgroup {
            write!(f, " cgroup={}", c.id)?;
        }
        if self.ty == RecordType::Decision {
            write!(
                f,
                " gen={} verdict={} rule={}",
                self.generation, self.verdict, self.rule
            )?;
            if self.mode == "shadow" {
                f.write_str(" mode=shadow")?;
            }
        }
        if !self.reason.is_empty() {
            write!(f, " reason={:?}", self.reason)?;
        }
        if let Some(s) = &self.shadow {
            write!(f, " shadow={}:{}", s.verdict, s.rule)?;
        }
        if let Some(a) = &self.approval {
            write!(f, " approval={} state={}", a.id, a.state)?;
            if !a.by.is_empty() {
                write!(f, " by={:?}", a.by)?;
            }
        }
        if !self.message.is_empty() {
            // One record, one line: a multi-line message (a reload's errors) is joined.
            write!(f, " {}", self.message.replace('\n', " | "))?;
        }
        for (k, v) in &self.counts {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Year, month, day, and seconds into the day, of a time since the epoch (Howard Hinnant's
/// civil-from-days).
fn civil(d: Duration) -> (i64, i64, i64, u64) {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day, rem)
}

/// [`rfc3339`] with `format!`: for years past 9999.
fn rfc3339_formatted(d: Duration) -> String {
    let (year, month, day, rem) = civil(d);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// RFC 3339 UTC with nanoseconds, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, rem) = civil(d);
    if !(0..=9999).contains(&year) {
        return rfc3339_formatted(d);
    }
    // The same, without the formatting machinery (every decision event is stamped).
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    for (at, len, value) in [
        (0, 4, year as u64),
        (5, 2, month as u64),
        (8, 2, day as u64),
        (11, 2, rem / 3600),
        (14, 2, rem / 60 % 60),
        (17, 2, rem % 60),
        (20, 9, u64::from(d.subsec_nanos())),
    ] {
        put_digits(&mut out[at..at + len], value);
    }
    // ASCII digits and separators.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// `value` in decimal, zero-padded to fill `dst` (the lowest digits if it does not fit).
fn put_digits(dst: &mut [u8], mut value: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl ProcessInfo {
    /// A live process as procfs describes it (`/proc/PID/status`: comm, ppid, real uid), for
    /// a decision the kernel did not report itself (the proxy knows only the client's pid).
    /// Marked `gone` when the process has already exited.
    pub fn from_procfs(pid: u32) -> ProcessInfo {
        let mut p = ProcessInfo {
            pid,
            ..Default::default()
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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
        p
    }
}

/// Parse what [`rfc3339`] writes (and any RFC 3339 UTC time with `Z`): for `--since` and
/// replay from the audit log.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse().ok()?
    };
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            agents: [(
                4000,
                AgentInfo {
                    name: "bot".into(),
                    selector: "cgroup=agents/bot".into(),
                    cgroup_id: 4000,
                    cgroup: "agents/bot".into(),
                    ..Default::default()
                },
            )]
            .into(),
            refs: Default::default(),
            rules: vec![RuleName {
                id: "bot/no-wget".into(),
                reason: "no downloads".into(),
                escalate: Some((Duration::from_secs(60), crate::policy::Posture::Block)),
                shadow: false,
            }],
        }
    }

    fn event() -> Event {
        // SAFETY: Event is plain data; all zeroes is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.time_ns = 1_500_000_000;
        ev.cgroup_id = 4242;
        ev.agent_cgroup = 4000;
        ev.pid = 11;
        ev.tgid = 10;
        ev.ppid = 9;
        ev.rule_id = governance_common::class_id(3, 1);
        ev.generation = 3;
        ev.kind = Kind::Exec as u8;
        ev.verdict = Verdict::Block as u8;
        ev.cause = Cause::Rule as u8;
        ev.flags = flags::DENIED;
        ev.comm[..2].copy_from_slice(b"sh");
        ev.path[..13].copy_from_slice(b"/usr/bin/wget");
        ev
    }

    #[test]
    fn decodes_a_block_with_its_rule() {
        let clock = Clock {
            boot_wall: SystemTime::UNIX_EPOCH,
        };
        let r = Record::from_kernel(&event(), &names(), &clock);
        assert_eq!(r.agent.as_ref().unwrap().name, "bot");
        assert_eq!(r.object.path, "/usr/bin/wget");
        assert_eq!(r.rule, "bot/no-wget");
        assert_eq!((r.outcome.as_str(), r.denied), ("block", true));
        let p = r.process.as_ref().unwrap();
        assert_eq!((p.pid, p.tid, p.ppid), (10, 11, 9));
        let line = r.to_string();
        assert!(
            line.starts_with(
                "1970-01-01T00:00:01.500000000Z BLOCK    exec    agent=bot path=\"/usr/bin/wget\" pid=10 ppid=9 comm=\"sh\""
            ),
            "{line}"
        );
        assert!(
            line.ends_with(" gen=3 verdict=block rule=bot/no-wget reason=\"no downloads\""),
            "{line}"
        );
        // The JSON form round-trips.
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }

    #[test]
    fn escalations_name_the_grant_they_ask_for() {
        let mut ev = event();
        ev.verdict = Verdict::Escalate as u8;
        ev.object = 0xabc;
        let r = Record::from_kernel(&ev, &names(), &Clock::now());
        assert_eq!(r.outcome, "escalate");
        assert_eq!(
            GrantRequest::of(&ev),
            Some(GrantRequest {
                cgroup_id: 4000,
                kind: Kind::Exec as u8,
                object: 0xabc
            })
        );
        ev.flags = 0;
        assert_eq!(GrantRequest::of(&ev), None);
    }

    #[test]
    fn decodes_connect_shadow_and_unknowns_without_panicking() {
        let clock = Clock::now();
        let mut ev = event();
        ev.kind = Kind::Connect as u8;
        ev.addr = std::net::Ipv4Addr::new(169, 254, 169, 254)
            .to_ipv6_mapped()
            .octets();
        ev.port = 80;
        ev.detail = 6;
        ev.agent_cgroup = 99;
        ev.rule_id = 77;
        ev.flags = flags::SHADOW;
        ev.verdict = Verdict::Allow as u8;
        ev.shadow_verdict = Verdict::Block as u8;
        ev.shadow_rule_id = 1;
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(
            (
                r.object.dest.as_str(),
                r.object.protocol.as_str(),
                r.agent.as_ref().unwrap().name.as_str()
            ),
            ("169.254.169.254:80", "tcp", "cgroup:99")
        );
        assert_eq!(r.rule, "#77");
        assert!(r.to_string().contains(" shadow=block:bot/no-wget"), "{r}");
        ev.kind = 200;
        ev.verdict = 200;
        ev.cause = 200;
        ev.comm = [0xff; 16];
        let line = Record::from_kernel(&ev, &names(), &clock).to_string();
        assert!(line.contains("unknown:200"), "{line}");
    }

    #[test]
    fn decodes_unix_sockets_and_names_their_built_ins() {
        use governance_common::{unix_detail, unix_hook, unix_protected};
        let clock = Clock::now();
        let mut ev = event();
        ev.kind = Kind::Unix as u8;
        ev.cause = Cause::Builtin as u8;
        ev.rule_id = 0;
        ev.detail =
            unix_detail::PATH | (unix_protected::CONTROL as u8) << unix_detail::PROTECTED_SHIFT;
        ev.port = unix_hook::CONNECT;
        let sock = b"/run/governance/governance.sock\0";
        ev.path = [0; governance_common::EVENT_PATH_LEN];
        ev.path[..sock.len()].copy_from_slice(sock);
        let dev = (8u32 << 20) | 1;
        ev.addr[..4].copy_from_slice(&dev.to_ne_bytes());
        ev.addr[4..8].copy_from_slice(&(sock.len() as u32).to_ne_bytes());
        ev.addr[8..].copy_from_slice(&77u64.to_ne_bytes());
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(r.kind, "unix");
        assert_eq!(r.rule, "builtin:control-socket");
        assert_eq!(r.object.path, "/run/governance/governance.sock");
        assert_eq!(r.object.protocol, "unix-stream");
        assert_eq!(r.object.detail["inode"], "8:1:77");
        ev.detail =
            unix_detail::PATH | (unix_protected::RUNTIME as u8) << unix_detail::PROTECTED_SHIFT;
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(r.rule, "builtin:runtime-socket");
        assert!(r.reason.contains("allow_runtime_sockets"), "{r}");
        // An abstract name, with a NUL inside, sent a datagram: as `ss` shows it.
        ev.detail = unix_detail::ABSTRACT;
        ev.port = unix_hook::SEND;
        let name = b"\0bus\0x";
        ev.path = [0; governance_common::EVENT_PATH_LEN];
        ev.path[..name.len()].copy_from_slice(name);
        ev.addr[4..8].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        ev.cause = Cause::Rule as u8;
        ev.rule_id = governance_common::class_id(3, 1);
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(r.object.path, "@bus@x");
        assert_eq!(r.object.protocol, "unix-dgram");
        assert_eq!(r.rule, "bot/no-wget");
        // The TCP control API, refused in connect4/6.
        let mut ev = event();
        ev.kind = Kind::Connect as u8;
        ev.cause = Cause::Builtin as u8;
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(r.rule, "builtin:control-api");
        ev.flags = 0;
        let r = Record::from_kernel(&ev, &names(), &clock);
        assert_eq!(r.rule, "builtin:connect", "the proxy, let through");
    }

    #[test]
    fn decodes_a_refused_link_or_rename() {
        let mut ev = event();
        ev.kind = Kind::Link as u8;
        ev.detail = governance_common::LINK_OP_RENAME;
        ev.path = [0; governance_common::EVENT_PATH_LEN];
        ev.path[..3].copy_from_slice(b"key");
        let r = Record::from_kernel(&ev, &names(), &Clock::now());
        assert_eq!((r.kind.as_str(), r.outcome.as_str()), ("link", "block"));
        assert_eq!(r.object.path, "key");
        assert_eq!(r.object.detail["op"], "rename");
        assert_eq!(r.rule, "bot/no-wget");
        ev.detail = governance_common::LINK_OP_LINK;
        let r = Record::from_kernel(&ev, &names(), &Clock::now());
        assert_eq!(r.object.detail["op"], "link");
    }

    #[test]
    fn parse_checks_the_record_size() {
        assert!(parse(&[0u8; 3]).is_none());
        let bytes = [0u8; std::mem::size_of::<Event>()];
        assert_eq!(parse(&bytes).unwrap().cgroup_id, 0);
    }

    #[test]
    fn formats_and_parses_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123456789Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(leap));
        for bad in [
            "",
            "2000-02-29",
            "2000-13-01T00:00:00Z",
            "x-y-zTa:b:cZ",
            "2000-01-01T00:00:00.x1Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

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
        // pid_max is at most 2^22: this pid cannot exist.
        let gone = ProcessInfo::from_procfs(1 << 23);
        assert_eq!((gone.comm.as_str(), gone.enrichment.as_str()), ("", "gone"));
    }

    #[test]
    fn dates_are_formatted_as_by_format() {
        let at = |secs, nanos| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(at(1_795_330_278, 251_580_230)),
            "2026-11-22T06:51:18.251580230Z"
        );
        let reference =
            |t: SystemTime| rfc3339_formatted(t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..10_000u64 {
            // Anything up to the year 2554, and the edges.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = match i {
                0 => 0,
                1 => 253_402_300_799_999_999_999, // 9999-12-31T23:59:59.999999999Z
                2 => 253_402_300_800_000_000_000, // year 10000: the slow path
                _ => u128::from(x),
            };
            let t = SystemTime::UNIX_EPOCH
                + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
            assert_eq!(rfc3339(t), reference(t));
        }
    }
}

#[cfg(test)]
mod schema_tests {
    /// `docs/event.schema.json` is what `governance events --schema` prints: regenerate it with
    /// that command when the record changes.
    #[test]
    fn the_committed_schema_is_current() {
        let schema = schemars::schema_for!(super::Record);
        let now = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let committed = include_str!("../../docs/event.schema.json");
        assert!(
            committed == now,
            "docs/event.schema.json is stale: run `governance events --schema > docs/event.schema.json`"
        );
    }
}
