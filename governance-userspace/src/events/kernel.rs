//! Ring-buffer records → [`Record`]s: decoded with the names of the generation that decided
//! them, and the grant a kernel escalation asks for.

use std::{net::Ipv6Addr, sync::Arc, time::Duration};

use governance_common::{
    Cause, EXEC_DETAIL_LOADER, Event, FILE_DETAIL_HELD, FILE_DETAIL_RAW_DEVICE, GrantKey, Kind,
    SIGNAL_DETAIL_JOB_CONTROL, SIGNAL_DETAIL_SIGIO, SUN_PATH_LEN, Verdict, c_str_len, caps,
    exec_map, flags, id_number, ipc_object, mount_op, unix_detail, unix_hook, unix_protected,
};

use super::{
    AgentInfo, CgroupInfo, Clock, Object, ProcessInfo, Record, RecordType, Shadow, Source, rfc3339,
};

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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Names {
    /// Agent root cgroup id → the agent.
    pub agents: std::collections::HashMap<u64, Arc<AgentInfo>>,
    /// Agent root cgroup id → the agent as the policy engine knows it.
    pub refs: std::collections::HashMap<u64, crate::engine::AgentRef>,
    /// Kernel rule number n (rule id without the slot bit) is `rules[n - 1]`.
    pub rules: Vec<RuleName>,
}

#[derive(Clone, Debug, Default, PartialEq)]
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
        id_number(rule_id)
            .checked_sub(1)
            .and_then(|i| self.rules.get(i as usize))
    }
}

/// The grant a kernel escalation asks for, if `ev` is one (refused, escalate verdict, a rule):
/// the key the kernel looks the same action up by.
pub fn requested_grant(ev: &Event) -> Option<GrantKey> {
    let escalation = ev.flags & flags::DENIED != 0
        && Verdict::from_u8(ev.verdict) == Some(Verdict::Escalate)
        && Cause::from_u8(ev.cause) == Some(Cause::Rule);
    escalation.then(|| GrantKey::of_event(ev))
}

/// clone3's CLONE_INTO_CGROUP.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The reason of a refusal by a built-in protected path (`builtin:protected-path`).
const PROTECTED_PATH: &str = "a protected path: the cgroup tree outside the agent, the daemon's files (policy, pins, executable, audit log, keys), the kernel's settings, the node's system files";

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
            unix_protected::NAME_SERVICE => (
                "name-service-socket",
                "name-service sockets (nscd, systemd-resolved, sssd) look names up outside the \
                 agent, past its network rules: refused unless the policy sets \
                 kernel.allow_name_service_sockets",
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
        Some(Kind::Signal) if ev.detail == SIGNAL_DETAIL_JOB_CONTROL => (
            "job-control",
            "job control in a terminal session led outside the agent: joining another process \
             group, setting the terminal's foreground group, or using the terminal from a \
             background group (the kernel stops the whole group: SIGTTIN, SIGTTOU), which \
             reaches the session's processes outside the agent",
        ),
        Some(k @ (Kind::Signal | Kind::Ptrace | Kind::Task)) => (
            k.as_str(),
            "processes outside the agent (the daemon and the proxy above all) are out of its reach",
        ),
        Some(Kind::Unlink) => ("unlink", "the pins are protected"),
        Some(Kind::Guard) => ("guard", governance_common::guard::name(ev.detail)),
        Some(Kind::Ipc) => match ev.port {
            ipc_object::KEY => (
                "key",
                "keys and keyrings made outside the agent (the per-uid keyrings, a session \
                 keyring from outside, keys made before the daemon) are out of its reach",
            ),
            ipc_object::MQUEUE => (
                "mqueue",
                "POSIX message queues made outside the agent are out of its reach",
            ),
            _ => (
                "ipc",
                "System V IPC objects made outside the agent are out of its reach",
            ),
        },
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
            "no devices that reach past the rules for agents (raw storage; tun, tap and PPP; input devices; other terminals' screens)",
        ),
        Some(Kind::File) if ev.detail & FILE_DETAIL_HELD != 0 => (
            "held-file",
            "a sandboxed process writes files only through descriptors it opened under its profile",
        ),
        Some(Kind::Capability) if ev.detail == caps::URING_PERSONALITY => (
            "capability",
            "no io_uring personalities for agents (credentials other than their own)",
        ),
        Some(Kind::Capability) if ev.detail == caps::URING_SQPOLL => (
            "capability",
            "no io_uring polling threads for agents (they submit whoever's requests reach the ring)",
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
        Some(Kind::ExecMap) if ev.port == exec_map::SHARED_MEMORY => (
            "shared-memory-code",
            "a sandboxed program is not mapped by a process whose memory another process shares (the other would run it outside the sandbox)",
        ),
        Some(Kind::ExecMap) if ev.port == exec_map::WRITABLE => (
            "writable-code",
            "under an exec allowlist, code maps executable only from files an agent cannot have changed: root's and writable by no one else on a local filesystem, for a process that may not write root's files, or below a path its policy keeps it from writing",
        ),
        Some(Kind::ExecMap) => (
            "written-code",
            "under an exec allowlist, files an agent wrote are not mapped executable",
        ),
        Some(Kind::Link) => ("protected-path", PROTECTED_PATH),
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

/// `a.b.c.d:port` or `[v6]:port`. The IPv4 case, the common one, is written digit by digit:
/// `core::fmt` made it a sizeable part of the drainer's time (`cargo xtask bench events`).
fn dest(ip: Ipv6Addr, port: u16) -> String {
    let Some(v4) = ip.to_ipv4_mapped() else {
        return format!("[{ip}]:{port}");
    };
    let mut digits = itoa::Buffer::new();
    let mut s = String::with_capacity(21);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(digits.format(octet));
    }
    s.push(':');
    s.push_str(digits.format(port));
    s
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
        unix_hook::CONNECT | unix_hook::HELD => "unix-stream".into(),
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
            (Some(Cause::Rule), _) if id_number(ev.rule_id) == 0 => {
                if ev.flags & flags::SANDBOXED != 0 {
                    (
                        "builtin:sandbox".into(),
                        "the sandbox profile: writes only below its writable directories, and its network setting".into(),
                    )
                } else {
                    ("builtin:protected-path".into(), PROTECTED_PATH.into())
                }
            }
            (Some(Cause::Rule | Cause::Granted), Some(r)) => (r.id.clone(), r.reason.clone()),
            (Some(Cause::Rule | Cause::Granted), None) => (
                format!("#{}", id_number(ev.rule_id)),
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
            (Some(Cause::MapFull), _) if kind == Some(Kind::File) && ev.detail & 0b1110 == 0 => (
                "fail-closed:map-full".into(),
                "the kernel's table of armed sequence rules is full; an open that would arm one \
                 is refused"
                    .into(),
            ),
            (Some(Cause::MapFull), _) => (
                "fail-closed:map-full".into(),
                "the kernel's table of files agents wrote (or of files sandboxed processes opened \
                 for writing) is full; a write it cannot remember is refused"
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
            .unwrap_or_else(|| {
                Arc::new(AgentInfo {
                    name: format!("cgroup:{}", ev.agent_cgroup),
                    cgroup_id: ev.agent_cgroup,
                    ..Default::default()
                })
            });
        let mut object = Object::default();
        match kind {
            Some(Kind::Connect | Kind::Send) => {
                object.dest = dest(Ipv6Addr::from(ev.addr), ev.port);
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
                    object
                        .detail
                        .insert("device".into(), "bypasses the rules".into());
                }
                if ev.detail & FILE_DETAIL_HELD != 0 {
                    object
                        .detail
                        .insert("descriptor".into(), "not opened under the profile".into());
                }
            }
            Some(Kind::Exec) => object.path = text(&ev.path),
            Some(Kind::Socket) => {
                object.protocol = format!("family={} type={}", ev.detail, ev.port)
            }
            Some(Kind::Signal) => {
                object.target_pid = ev.object as u32;
                object.signal = u32::from(ev.port);
                if ev.detail == SIGNAL_DETAIL_SIGIO {
                    object.detail.insert(
                        "via".into(),
                        "SIGIO/SIGURG of a file the agent armed (O_ASYNC, F_SETSIG)".into(),
                    );
                }
                if ev.detail == SIGNAL_DETAIL_JOB_CONTROL {
                    object.detail.insert(
                        "via".into(),
                        "job control in a session led outside the agent: its controlling \
                         terminal used from a background group, or the foreground group set \
                         (target: the caller's group), or another group joined with setpgid \
                         (target: that group, as the caller numbers it; no signal)"
                            .into(),
                    );
                }
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
                let what = ipc_object::name(ev.port);
                object.detail.insert("object".into(), what.into());
                match ev.port {
                    ipc_object::KEY => {
                        object.detail.insert("key".into(), ev.object.to_string());
                        let need = ipc_object::key_need(ev.detail);
                        object.detail.insert("permission".into(), need.into());
                    }
                    ipc_object::MQUEUE => {
                        object.detail.insert("inode".into(), ev.object.to_string());
                        if ev.detail == ipc_object::MQUEUE_UNLINK {
                            object.detail.insert("op".into(), "unlink".into());
                        } else {
                            object.detail.insert("op".into(), "open".into());
                            for (bit, c) in [(1, 'r'), (2, 'w'), (4, 'c'), (8, 't')] {
                                if ev.detail & bit != 0 {
                                    object.access.push(c);
                                }
                            }
                        }
                    }
                    _ => {
                        object.detail.insert("flag".into(), ev.detail.to_string());
                    }
                }
            }
            Some(Kind::Unix) => unix_object(ev, &mut object),
            Some(Kind::Capability) => {
                let what = match ev.detail {
                    caps::URING_PERSONALITY => "io_uring personality".into(),
                    caps::URING_SQPOLL => "io_uring polling thread".into(),
                    cap => caps::name(u32::from(cap)).to_owned(),
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
                    mount_op::NEW_FILESYSTEM => "new_filesystem",
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
                    governance_common::LINK_OP_SYMLINK => "symlink",
                    governance_common::LINK_OP_MKDIR => "mkdir",
                    governance_common::LINK_OP_MKNOD => "mknod",
                    governance_common::LINK_OP_RMDIR => "rmdir",
                    governance_common::LINK_OP_CHMOD => "chmod",
                    governance_common::LINK_OP_CHOWN => "chown",
                    governance_common::LINK_OP_CREATE => "create",
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
            node: "".into(),
            ty: RecordType::Decision,
            source: Source::Kernel,
            kind: kind.map_or_else(
                || format!("unknown:{}", ev.kind).into(),
                |k| k.as_str().into(),
            ),
            outcome: outcome_of(ev, verdict, cause).into(),
            denied: ev.flags & flags::DENIED != 0,
            sampled: ev.flags & flags::SAMPLED != 0,
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
                ns_pid: ev.ns_pid,
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
            drill: None,
            armed_by: None,
            candidate: None,
        }
    }
}
