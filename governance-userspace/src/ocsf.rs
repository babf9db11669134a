//! Records as OCSF 1.3.0 events, for SIEMs ([`to_ocsf`]).
//!
//! The Open Cybersecurity Schema Framework gives every event a class (what kind of activity)
//! and an activity within it; SIEMs that speak OCSF (Security Lake, Splunk's OCSF add-on,
//! Sentinel's ASIM mappings, ...) index by those numbers. The numbers here are from the schema
//! at tag `1.3.0` of github.com/ocsf/ocsf-schema (`events/system/process.json`,
//! `events/system/filesystem.json`, `events/system/kernel.json`,
//! `includes/network/network_activities.json`, `events/network/http.json`,
//! `events/iam/entity_management.json`, `events/application/application_lifecycle.json`,
//! `profiles/security_control.json`, `dictionary.json`), browsable at
//! <https://schema.ocsf.io/1.3.0/classes/process_activity> and its neighbours.
//!
//! # Classes
//!
//! | record                         | class (class_uid)               | activity (activity_id)      |
//! |--------------------------------|---------------------------------|-----------------------------|
//! | decision `exec`                | Process Activity (1007)         | Launch (1)                  |
//! | decision `ptrace`              | Process Activity (1007)         | Open (3)                    |
//! | decision `signal`              | Process Activity (1007)         | Terminate (2) for SIGKILL and SIGTERM, else Other (99) "Signal" |
//! | decision `file`                | File System Activity (1001)     | Open (14)                   |
//! | decision `unlink`              | File System Activity (1001)     | Delete (4)                  |
//! | decision `socket`              | Kernel Activity (1003)          | Invoke (4), system call `socket` |
//! | decision `bpf`                 | Kernel Activity (1003)          | Invoke (4), system call `bpf` |
//! | decision `userns`              | Kernel Activity (1003)          | Create (1), a user namespace |
//! | decision `capability`          | Kernel Activity (1003)          | Invoke (4), the capability as the kernel object |
//! | decision `mount`               | Kernel Activity (1003)          | Invoke (4), system call `mount`, `umount`, `remount`, `pivot_root` or `move_mount` |
//! | decision `clone`               | Kernel Activity (1003)          | Invoke (4), system call `clone` |
//! | decision `exec_map`            | Kernel Activity (1003)          | Invoke (4), system call `mmap` or `mprotect` |
//! | decision `connect`             | Network Activity (4001)         | Open (1)                    |
//! | decision `send`                | Network Activity (4001)         | Traffic (6)                 |
//! | decision `http`                | HTTP Activity (4002)            | by method: Connect 1, Delete 2, Get 3, Head 4, Options 5, Post 6, Put 7, Trace 8, else Other (99) with the method |
//! | approval                       | Entity Management (3004)        | Create (1) when requested, Update (3) when approved, denied, expired or withdrawn |
//! | `daemon.started`               | Application Lifecycle (6002)    | Start (3)                   |
//! | `daemon.stopping`, `daemon.stopped` | Application Lifecycle (6002) | Stop (4)                  |
//! | `policy.loaded`, `policy.reloaded`, `policy.reload_failed` | Application Lifecycle (6002) | Update (8) |
//! | anything else                  | Base Event (0)                  | Other (99), activity_name = our kind |
//!
//! `type_uid` is `class_uid * 100 + activity_id`; `category_uid` is the class's thousands
//! (1 System, 3 IAM, 4 Network, 6 Application, 0 for the base event).
//!
//! Choices worth knowing:
//!
//! - **file** is LSM `file_open`: the decision is about opening, not yet reading or writing, and
//!   1.3 has Open (14, "a request to create a file handle") for exactly that. The access asked
//!   for (`r`, `w`, `c` create, `t` truncate) is in `unmapped.access`.
//! - **connect** stays Open (1) when refused, with disposition Blocked; Refuse (5) in OCSF means
//!   the remote end refused. **send** is an unconnected datagram (UDP `sendmsg`): Traffic (6).
//! - **socket**, **bpf** and **userns** are refused kernel resources (raw/packet/netlink
//!   sockets, the bpf() call, new user namespaces), which is Kernel Activity's subject; ptrace
//!   is Process Activity Open ("obtain a handle ... to perform further actions upon that
//!   process"), signals to the protected daemon are Terminate when they would end it.
//! - **approvals** are not logins (Authorize Session 3003 assigns privileges to a new session)
//!   nor account changes: they are a request object that the daemon creates and a person
//!   settles at the control API, which is Entity Management's "create, read, update, delete
//!   operation on a managed entity". The entity is the approval (uid = its id, type
//!   `Approval Request`, data = state, deadline, who); who decided is `actor.user.name`, the
//!   denial reason `comment`.
//! - **policy and lifecycle**: starting, stopping and reconfiguring the daemon is Application
//!   Lifecycle (app = governance). Other daemon notices (`subscriber.lost`, ...) have no class
//!   and go out as base events.
//!
//! # Outcome, severity, disposition
//!
//! Decision classes (System and Network) carry the Security Control profile: `action_id`
//! Allowed (1) or Denied (2) from `denied`, and `disposition_id`:
//!
//! | outcome   | disposition_id          | status  | severity_id |
//! |-----------|-------------------------|---------|-------------|
//! | allow     | Allowed (1)             | Success | Informational (1) |
//! | granted   | Approved (8)            | Success | Informational (1) |
//! | sandbox   | Isolated (4)            | Success | Informational (1) |
//! | escalate  | Delayed (14)            | Failure | Low (2): a person decides |
//! | throttle  | Blocked (2)             | Failure | Low (2)     |
//! | block     | Blocked (2)             | Failure | Medium (3); High (4) for signal, ptrace, bpf, unlink: attacks on the enforcement itself |
//! | kill      | Blocked (2)             | Failure | High (4): the refused program ran until it was killed |
//!
//! An action that was let through although a shadow rule (or a shadow-mode rule) would have
//! refused it is disposition Detected (15, "a policy violation was detected without further
//! action"), severity Low. `status` follows `denied` (Failure when refused); `status_detail` is
//! the rule's reason and `message` the readable line. Isolated and Delayed describe what
//! happened better than the profile's usual pairing with Denied: a sandboxed action ran
//! (action Allowed), an escalated one is refused until approved (action Denied).
//! Policy reload failures are Failure and Medium; everything else Informational, an approval
//! request Low.
//!
//! # Other fields
//!
//! `time` (epoch ms, from our RFC 3339 `time`; the original string is
//! `metadata.original_time`), `metadata` (product governance, version 1.3.0, `uid` = record id,
//! `log_name` = record type, `log_provider` = source), `actor.process` (pid, tid, comm as
//! name, exe as file, argv as cmd_line, parent pid, uid as user, the pid in the process's own
//! PID namespace as `xattributes.ns_pid`, and `container` — the runtime's
//! container id as uid, orchestrator Kubernetes for pods), `device.hostname` (the node)
//! and, on decision classes, `authorizations[0]` (decision = verdict, policy uid = the rule,
//! desc = reason). Our fields with no OCSF home are under `unmapped`: `type`, `kind`, `agent`,
//! `rule` (also here, so one query works for every class), `verdict`, `outcome`, `mode`,
//! `generation`, `shadow`, `approval`, `cgroup`, `counts`, `armed_by` (a sequence rule's
//! arming action), and whatever of the object was not
//! mapped (`access`, `mcp_tool`, `signal`, `socket`, `detail`; the whole `object` for classes
//! that have no place for it). Fields are only written when we have them: a missing value is
//! left out, never sent empty. HTTP Activity's `http_response` is required by the schema but
//! a decision record does not carry the response, so it is left out.

use std::time::UNIX_EPOCH;

use serde::Serialize;
use serde_json::{Value, json};

use crate::events::{ProcessInfo, Record, RecordType, parse_rfc3339};

/// The OCSF version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// An OCSF class and activity.
struct Class {
    uid: u32,
    name: &'static str,
    activity_id: u32,
    /// The activity's caption in the schema (`Other` for 99).
    activity: &'static str,
    /// For Other (99): what it was, in our words.
    other: String,
}

impl Class {
    fn new(uid: u32, name: &'static str, activity_id: u32, activity: &'static str) -> Self {
        Self {
            uid,
            name,
            activity_id,
            activity,
            other: String::new(),
        }
    }

    fn other(uid: u32, name: &'static str, what: &str) -> Self {
        Self {
            other: what.to_owned(),
            ..Self::new(uid, name, 99, "Other")
        }
    }

    fn category(&self) -> (u32, &'static str) {
        match self.uid / 1000 {
            1 => (1, "System Activity"),
            3 => (3, "Identity & Access Management"),
            4 => (4, "Network Activity"),
            6 => (6, "Application Activity"),
            _ => (0, "Uncategorized"),
        }
    }

    /// Classes with the Security Control profile (action, disposition, authorizations).
    fn security_control(&self) -> bool {
        matches!(self.uid / 1000, 1 | 4)
    }
}

const PROCESS: &str = "Process Activity";
const FILE: &str = "File System Activity";
const KERNEL: &str = "Kernel Activity";
const NETWORK: &str = "Network Activity";
const HTTP: &str = "HTTP Activity";
const ENTITY: &str = "Entity Management";
const LIFECYCLE: &str = "Application Lifecycle";

fn class_of(r: &Record) -> Class {
    match r.ty {
        RecordType::Decision => match r.kind.as_ref() {
            "exec" => Class::new(1007, PROCESS, 1, "Launch"),
            "ptrace" => Class::new(1007, PROCESS, 3, "Open"),
            "signal" if matches!(r.object.signal, 9 | 15) => {
                Class::new(1007, PROCESS, 2, "Terminate")
            }
            "signal" => Class::other(1007, PROCESS, "Signal"),
            "file" => Class::new(1001, FILE, 14, "Open"),
            "unlink" => Class::new(1001, FILE, 4, "Delete"),
            "link" if r.object.detail.get("op").is_some_and(|o| o == "rename") => {
                Class::new(1001, FILE, 5, "Rename")
            }
            "link" => Class::new(1001, FILE, 1, "Create"),
            "socket" | "bpf" | "capability" | "mount" | "clone" | "exec_map" => {
                Class::new(1003, KERNEL, 4, "Invoke")
            }
            "userns" => Class::new(1003, KERNEL, 1, "Create"),
            "connect" => Class::new(4001, NETWORK, 1, "Open"),
            "send" => Class::new(4001, NETWORK, 6, "Traffic"),
            "http" => {
                let method = r.object.method.to_ascii_uppercase();
                let known = [
                    ("CONNECT", 1, "Connect"),
                    ("DELETE", 2, "Delete"),
                    ("GET", 3, "Get"),
                    ("HEAD", 4, "Head"),
                    ("OPTIONS", 5, "Options"),
                    ("POST", 6, "Post"),
                    ("PUT", 7, "Put"),
                    ("TRACE", 8, "Trace"),
                ];
                match known.iter().find(|(m, _, _)| *m == method) {
                    Some(&(_, id, caption)) => Class::new(4002, HTTP, id, caption),
                    None if method.is_empty() => Class::new(4002, HTTP, 0, "Unknown"),
                    None => Class::other(4002, HTTP, &method),
                }
            }
            kind => Class::other(0, "Base Event", kind),
        },
        RecordType::Approval => match approval_state(r) {
            "pending" => Class::new(3004, ENTITY, 1, "Create"),
            "approved" | "denied" | "expired" | "withdrawn" => {
                Class::new(3004, ENTITY, 3, "Update")
            }
            _ => Class::other(3004, ENTITY, &r.kind),
        },
        RecordType::Policy | RecordType::Lifecycle => match r.kind.as_ref() {
            "daemon.started" => Class::new(6002, LIFECYCLE, 3, "Start"),
            "daemon.stopping" | "daemon.stopped" => Class::new(6002, LIFECYCLE, 4, "Stop"),
            "policy.loaded" | "policy.reloaded" | "policy.reload_failed" => {
                Class::new(6002, LIFECYCLE, 8, "Update")
            }
            kind => Class::other(0, "Base Event", kind),
        },
        // Evidence about a process outside every agent: no OCSF class says "unlabelled agent".
        RecordType::Discovery => Class::other(0, "Base Event", &r.kind),
    }
}

/// An approval record's state: `approval.state`, or the kind's `approval.<state>`.
fn approval_state(r: &Record) -> &str {
    match &r.approval {
        Some(a) => &a.state,
        None => match r.kind.strip_prefix("approval.") {
            Some("requested") => "pending",
            Some(s) => s,
            None => "",
        },
    }
}

/// Whether a shadow rule (or the shadow-mode rule that decided) would have refused what was
/// let through.
fn shadow_refusal(r: &Record) -> bool {
    let would = if r.mode == "shadow" {
        r.verdict.as_ref()
    } else {
        r.shadow.as_ref().map_or("allow", |s| s.verdict.as_str())
    };
    !r.denied && matches!(would, "block" | "throttle" | "escalate" | "sandbox")
}

/// (severity_id, disposition_id) of a decision.
fn decision_rating(r: &Record) -> (u32, u32) {
    if shadow_refusal(r) {
        return (2, 15);
    }
    match r.outcome.as_ref() {
        "allow" => (1, 1),
        "granted" => (1, 8),
        "sandbox" => (1, 4),
        "escalate" => (2, 14),
        "throttle" => (2, 2),
        "block" if matches!(r.kind.as_ref(), "signal" | "ptrace" | "bpf" | "unlink") => (4, 2),
        "block" => (3, 2),
        "kill" => (4, 2),
        _ if r.denied => (3, 2),
        _ => (0, 0),
    }
}

fn severity_caption(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        _ => "Unknown",
    }
}

fn disposition_caption(id: u32) -> &'static str {
    match id {
        1 => "Allowed",
        2 => "Blocked",
        4 => "Isolated",
        8 => "Approved",
        14 => "Delayed",
        15 => "Detected",
        _ => "Unknown",
    }
}

/// `v` as JSON (our types always serialize; Null otherwise).
fn val<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Drops nulls, empty strings, empty arrays and empty objects, recursively. Returns whether
/// `v` itself is worth keeping.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            a.retain_mut(prune);
            !a.is_empty()
        }
        Value::Object(o) => {
            o.retain(|_, v| prune(v));
            !o.is_empty()
        }
        Value::Bool(_) | Value::Number(_) => true,
    }
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An OCSF file object; `type_id` 1 is Regular File, 0 Unknown.
fn file(path: &str, type_id: u32) -> Value {
    if path.is_empty() {
        return json!({ "type_id": 0, "type": "Unknown" });
    }
    json!({
        "path": path,
        "name": basename(path),
        "type_id": type_id,
        "type": if type_id == 1 { "Regular File" } else { "Unknown" },
    })
}

fn process(p: &ProcessInfo) -> Value {
    json!({
        "pid": p.pid,
        "tid": nonzero(p.tid),
        "name": p.comm,
        "file": (!p.exe.is_empty()).then(|| file(&p.exe, 1)),
        "cmd_line": p.argv.join(" "),
        "parent_process": nonzero(p.ppid).map(|pid| json!({ "pid": pid })),
        "user": { "uid": p.uid.to_string() },
        // The pid inside its container (its own PID namespace): OCSF has no field for it.
        "xattributes": nonzero(p.ns_pid).map(|n| json!({ "ns_pid": n })),
    })
}

/// The parts of a URL OCSF names.
#[derive(Debug, Default, PartialEq)]
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
    path: &'a str,
    query: &'a str,
}

/// Splits `scheme://[user@]host[:port]/path?query#fragment`; also takes the authority form
/// of CONNECT (`host:443`) and the origin form (`/path?query`). Never fails: what does not
/// parse stays empty.
fn split_url(s: &str) -> Url<'_> {
    let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => (v6, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    Url {
        scheme,
        host,
        port: port.and_then(|p| p.parse().ok()),
        path,
        query,
    }
}

/// A network endpoint: `ip` when `host` is an address, else `hostname`.
fn endpoint(host: &str, port: Option<u16>) -> Value {
    let ip = host.parse::<std::net::IpAddr>().ok();
    json!({
        "ip": ip.map(|ip| ip.to_string()),
        "hostname": if ip.is_some() { "" } else { host },
        "port": port,
    })
}

/// Turn a record into an OCSF 1.3.0 event (see the module doc for the mapping).
pub fn to_ocsf(r: &Record) -> Value {
    let class = class_of(r);
    let (category_uid, category_name) = class.category();
    let decision = r.ty == RecordType::Decision;
    let (severity_id, disposition_id) = match r.ty {
        RecordType::Decision => decision_rating(r),
        RecordType::Approval if approval_state(r) == "pending" => (2, 0),
        RecordType::Policy if r.kind == "policy.reload_failed" => (3, 0),
        _ => (1, 0),
    };
    let failed = if decision {
        Some(r.denied)
    } else if class.uid == 0 {
        None
    } else {
        Some(r.kind == "policy.reload_failed")
    };
    let time_ms = parse_rfc3339(&r.time)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let profiles: &[&str] = match class.uid {
        0 => &[],
        _ if class.security_control() => &["host", "security_control"],
        _ => &["host"],
    };

    let mut e = json!({
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class.uid,
        "class_name": class.name,
        "activity_id": class.activity_id,
        "activity_name": if class.activity_id == 99 { class.other.as_str() } else { class.activity },
        "type_uid": u64::from(class.uid) * 100 + u64::from(class.activity_id),
        "type_name": format!("{}: {}", class.name, class.activity),
        "time": time_ms,
        "severity_id": severity_id,
        "severity": severity_caption(severity_id),
        "status_id": failed.map(|f| if f { 2 } else { 1 }),
        "status": failed.map(|f| if f { "Failure" } else { "Success" }),
        "status_detail": r.reason,
        "message": r.to_string(),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "governance",
                "vendor_name": "governance",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": r.id,
            "log_name": r.ty.as_str(),
            "log_provider": val(&r.source),
            "original_time": r.time,
            "profiles": profiles,
        },
        "actor": {
            "process": r.process.as_ref().map(process),
            "user": r.approval.as_ref().map(|a| json!({ "name": a.by })),
        },
        // device.hostname is the one device field we know; the base event has no device.
        "device": (class.uid != 0 && !r.node.is_empty())
            .then(|| json!({ "hostname": r.node, "type_id": 0, "type": "Unknown" })),
    });

    // The container profile: the acting process's container (its runtime id, from the
    // cgroup path) and, in Kubernetes, the orchestrator.
    if let Some(a) = &r.agent
        && !a.container.is_empty()
        && let Some(p) = e
            .pointer_mut("/actor/process")
            .and_then(Value::as_object_mut)
    {
        p.insert(
            "container".into(),
            json!({
                "uid": a.container,
                "orchestrator": (!a.pod.is_empty()).then_some("Kubernetes"),
            }),
        );
        if let Some(Value::Array(profiles)) = e.pointer_mut("/metadata/profiles") {
            profiles.push("container".into());
        }
    }

    let o = &r.object;
    let mut object_mapped = true;
    let specific = match class.uid {
        1007 if r.kind == "exec" => json!({
            "process": {
                "pid": r.process.as_ref().map(|p| p.pid),
                "name": basename(&o.path),
                "file": file(&o.path, 1),
            },
        }),
        1007 => json!({ "process": { "pid": o.target_pid } }),
        1001 => json!({ "file": file(&o.path, 0) }),
        1003 => {
            let kernel = match r.kind.as_ref() {
                "userns" => json!({ "name": "user namespace", "type_id": 99, "type": "Other" }),
                "capability" => json!({
                    "name": o.detail.get("capability").map_or("capability", String::as_str),
                    "type_id": 99,
                    "type": "Other",
                }),
                "mount" | "exec_map" => {
                    let call = o
                        .detail
                        .get(if r.kind == "mount" {
                            "operation"
                        } else {
                            "via"
                        })
                        .map_or(r.kind.as_ref(), String::as_str);
                    json!({
                        "name": call,
                        "type_id": 2,
                        "type": "System Call",
                        "system_call": call,
                    })
                }
                call => json!({
                    "name": call,
                    "type_id": 2,
                    "type": "System Call",
                    "system_call": call,
                }),
            };
            json!({ "kernel": kernel })
        }
        4001 => {
            let dest = o.dest.parse::<std::net::SocketAddr>().ok();
            let num = match o.protocol.as_str() {
                "tcp" => Some(6),
                "udp" => Some(17),
                p => p.parse::<u8>().ok(),
            };
            json!({
                "dst_endpoint": dest.map(|d| endpoint(&d.ip().to_string(), Some(d.port()))),
                "connection_info": {
                    "direction_id": 2,
                    "direction": "Outbound",
                    "protocol_name": o.protocol,
                    "protocol_num": num,
                    "protocol_ver_id": dest.map(|d| if d.is_ipv4() { 4 } else { 6 }),
                },
            })
        }
        4002 => {
            let u = split_url(&o.url);
            let default_port = match u.scheme {
                "http" => Some(80),
                "https" => Some(443),
                _ => None,
            };
            json!({
                "http_request": {
                    "http_method": o.method.to_ascii_uppercase(),
                    "url": {
                        "url_string": o.url,
                        "scheme": u.scheme,
                        "hostname": u.host,
                        "port": u.port,
                        "path": u.path,
                        "query_string": u.query,
                    },
                },
                "dst_endpoint": endpoint(u.host, u.port.or(default_port)),
            })
        }
        3004 => {
            object_mapped = false;
            let a = r.approval.as_ref();
            json!({
                "entity": {
                    "uid": a.map(|a| a.id.as_str()),
                    "type": "Approval Request",
                    "data": a.map(|a| json!({
                        "state": a.state,
                        "by": a.by,
                        "deadline": a.deadline,
                    })),
                },
                "comment": a.map(|a| a.reason.as_str()),
            })
        }
        6002 => {
            object_mapped = false;
            json!({
                "app": {
                    "name": "governance",
                    "vendor_name": "governance",
                    "version": env!("CARGO_PKG_VERSION"),
                },
            })
        }
        _ => {
            object_mapped = false;
            json!({})
        }
    };

    let verdict = if r.verdict.is_empty() {
        &r.outcome
    } else {
        &r.verdict
    };
    let control = class.security_control().then(|| {
        let (policy, _) = r.rule.split_once('/').unwrap_or((&r.rule, ""));
        json!({
            "action_id": if r.denied { 2 } else { 1 },
            "action": if r.denied { "Denied" } else { "Allowed" },
            "disposition_id": disposition_id,
            "disposition": disposition_caption(disposition_id),
            "authorizations": (!r.rule.is_empty()).then(|| json!([{
                "decision": verdict,
                "policy": { "uid": r.rule, "name": policy, "desc": r.reason },
            }])),
        })
    });

    let unmapped = json!({
        "type": r.ty.as_str(),
        "kind": r.kind,
        // The base event has no device: keep the node with the rest.
        "node": if class.uid == 0 { r.node.as_ref() } else { "" },
        "agent": val(&r.agent),
        "rule": r.rule,
        "verdict": r.verdict,
        "outcome": r.outcome,
        "mode": r.mode,
        "generation": nonzero(r.generation),
        "shadow": val(&r.shadow),
        "approval": val(&r.approval),
        "cgroup": val(&r.cgroup),
        "counts": val(&r.counts),
        "armed_by": val(&r.armed_by),
        "enrichment": r.process.as_ref().map(|p| p.enrichment.as_ref()),
        "object": if object_mapped { Value::Null } else { val(o) },
        "access": if object_mapped { o.access.as_str() } else { "" },
        "mcp_tool": if object_mapped { o.mcp_tool.as_str() } else { "" },
        "signal": if object_mapped { nonzero(o.signal) } else { None },
        "socket": if object_mapped && r.kind == "socket" { o.protocol.as_str() } else { "" },
        "detail": if object_mapped { val(&o.detail) } else { Value::Null },
    });

    if let Value::Object(m) = &mut e {
        for part in [Some(specific), control].into_iter().flatten() {
            if let Value::Object(p) = part {
                m.extend(p);
            }
        }
        m.insert("unmapped".into(), unmapped);
    }
    prune(&mut e);
    e
}

#[cfg(test)]
mod tests;
