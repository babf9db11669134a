//! The capability inventory: what an agent can do under a policy set, computed from the rules
//! that govern it (as [`crate::engine`] decides with them), the default postures and the
//! built-in protections with their relaxations (as [`crate::kernel`] compiles them). Pure:
//! policy set + agent → [`AgentCapabilities`]. The daemon's `GET /v1/agents/capabilities`,
//! `governance agents --capabilities` and `governance policy diff` share it.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    engine::AgentRef,
    policy::{
        Access, HostMatch, Kind, Matcher, Mode, PathMatch, Policy, PolicySet, Posture, Protocol,
        Rule, SandboxTarget, ThrottleKey, Verdict,
    },
};

/// What one agent (or, without a daemon, the agents of one selector) can do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentCapabilities {
    /// The live agent's name, or `selector <selector>` for agents known only by selector.
    pub agent: String,
    pub selector: String,
    /// True when the entry describes the agents a selector would match, not a live agent.
    pub by_selector: bool,
    /// The enforcing policies that govern it, and the shadow ones (which decide nothing).
    pub policies: Vec<String>,
    pub shadow_policies: Vec<String>,
    /// Per kind, what an action no rule matches gets: `allow` or `block`.
    pub defaults: BTreeMap<String, String>,
    /// Every rule that governs it, per kind in precedence order (most specific first).
    pub items: Vec<Item>,
    /// The built-in refusals, and whether its policies relax each.
    pub builtins: Vec<Builtin>,
}

/// One rule as it applies to the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Item {
    /// `exec`, `file`, `network`, `http`, `unix`.
    pub kind: String,
    /// What the rule covers, in words (path and accesses, destination and route, request).
    pub object: String,
    /// `allow`, `block`, `throttle 10/1m per agent`, `sandbox profile X`, `escalate ...`.
    pub verdict: String,
    /// `<policy>/<rule>`.
    pub rule: String,
    /// A shadow rule: reported, never deciding.
    pub shadow: bool,
}

/// One built-in refusal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Builtin {
    /// The `kernel:` setting that relaxes it, or a short name when none can.
    pub name: String,
    pub refuses: String,
    /// Relaxed for this agent by its enforcing policies (for capabilities: `given_back`).
    pub relaxed: bool,
    /// `kernel.allow_capabilities`: the capabilities given back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub given_back: Vec<String>,
}

/// The built-ins a policy may relax: (setting, what it refuses, the setting's value).
type Relaxable = (&'static str, &'static str, fn(&Policy) -> Option<bool>);
const RELAXABLE: [Relaxable; 8] = [
    (
        "allow_raw_sockets",
        "sockets other than Unix, TCP and UDP (raw, packet, netlink)",
        |p| p.allow_raw_sockets,
    ),
    ("allow_user_namespaces", "new user namespaces", |p| {
        p.allow_user_namespaces
    }),
    (
        "allow_runtime_sockets",
        "container-runtime and service-manager sockets",
        |p| p.allow_runtime_sockets,
    ),
    (
        "allow_name_service_sockets",
        "name-service sockets (nscd, systemd-resolved, sssd): lookups past the network rules",
        |p| p.allow_name_service_sockets,
    ),
    ("allow_mounts", "mounts", |p| p.allow_mounts),
    (
        "allow_loader_exec",
        "running the dynamic loader as a program",
        |p| p.allow_loader_exec,
    ),
    (
        "allow_kernel_settings",
        "writes to /proc/sys, /proc/sysrq-trigger, /sys",
        |p| p.allow_kernel_settings,
    ),
    (
        "allow_system_files",
        "writes to the node's system files (/etc, /usr, /bin, /lib*, /boot, cron, root's startup files)",
        |p| p.allow_system_files,
    ),
];

/// The built-ins no policy relaxes.
const FIXED: [(&str, &str); 6] = [
    (
        "daemon_secrets",
        "any access to the audit log, the CA's key and the API token",
    ),
    (
        "daemon_files",
        "writes to the policy directory, the pins, the daemon's executable, the cgroup tree outside the agent",
    ),
    ("bpf", "bpf() and removing the pins"),
    (
        "other_processes",
        "signals, ptrace and /proc access to processes outside the agent",
    ),
    (
        "control_api",
        "the daemon's control socket and TCP control API",
    ),
    (
        "devices_and_terminals",
        "raw storage devices, module autoloading, terminal input injection, the agent label",
    ),
];

/// The capabilities of a live agent: every policy whose selector matches it governs it.
pub fn of_agent(set: &PolicySet, agent: &AgentRef, selector: &str) -> AgentCapabilities {
    let governing: Vec<&Policy> = set
        .policies
        .iter()
        .map(|p| &**p)
        .filter(|p| {
            p.selector
                .matches(&agent.cgroup, agent.label.as_deref(), agent.pod.as_ref())
        })
        .collect();
    build(agent.name.clone(), selector.into(), false, &governing)
}

/// Without live agents: one entry per distinct selector of the set, for an agent with that
/// selector's cgroup (a glob stands for itself) and label. Other policies whose selectors match
/// that agent govern it too; a Kubernetes selector's own policies always do.
pub fn by_selector(set: &PolicySet) -> Vec<AgentCapabilities> {
    let mut selectors: Vec<String> = set
        .policies
        .iter()
        .map(|p| p.selector.to_string())
        .collect();
    selectors.sort();
    selectors.dedup();
    selectors
        .into_iter()
        .map(|sel| {
            let own = set
                .policies
                .iter()
                .find(|p| p.selector.to_string() == sel)
                .map(|p| &p.selector);
            let cgroup = own.and_then(|s| s.cgroup.clone()).unwrap_or_default();
            let label = own.and_then(|s| s.label.clone());
            let governing: Vec<&Policy> = set
                .policies
                .iter()
                .map(|p| &**p)
                .filter(|p| {
                    p.selector.to_string() == sel
                        || (p.selector.pod.is_none()
                            && p.selector.matches(&cgroup, label.as_deref(), None))
                })
                .collect();
            build(format!("selector {sel}"), sel, true, &governing)
        })
        .collect()
}

fn build(
    agent: String,
    selector: String,
    by_selector: bool,
    governing: &[&Policy],
) -> AgentCapabilities {
    let enforcing: Vec<&Policy> = governing
        .iter()
        .copied()
        .filter(|p| p.mode == Mode::Enforce)
        .collect();
    let mut defaults = BTreeMap::new();
    for kind in Kind::ALL {
        let block = enforcing
            .iter()
            .any(|p| p.defaults.get(&kind) == Some(&Posture::Block));
        defaults.insert(
            kind.as_str().into(),
            if block { "block" } else { "allow" }.into(),
        );
    }
    let mut rules: Vec<&Rule> = governing
        .iter()
        .flat_map(|p| p.rules.iter().map(|r| &**r))
        .collect();
    // Per kind, in the engine's precedence order (stable: set order among equals).
    rules.sort_by(|a, b| {
        a.matcher
            .kind()
            .cmp(&b.matcher.kind())
            .then(b.specificity.cmp(&a.specificity))
            .then(b.verdict.cmp(&a.verdict))
    });
    let items = rules
        .into_iter()
        .map(|r| Item {
            kind: r.matcher.kind().as_str().into(),
            object: object(&r.matcher),
            verdict: verdict(r),
            rule: r.id.clone(),
            shadow: r.mode == Mode::Shadow,
        })
        .collect();
    let mut builtins: Vec<Builtin> = FIXED
        .iter()
        .map(|(name, refuses)| Builtin {
            name: (*name).into(),
            refuses: (*refuses).into(),
            ..Default::default()
        })
        .collect();
    for (name, refuses, get) in RELAXABLE {
        builtins.push(Builtin {
            name: name.into(),
            refuses: refuses.into(),
            relaxed: enforcing.iter().any(|p| get(p) == Some(true))
                && !enforcing.iter().any(|p| get(p) == Some(false)),
            given_back: Vec::new(),
        });
    }
    // Capabilities: given back when an enforcing policy lists one and every one that writes a
    // list lists it (as the kernel compiler does).
    let lists: Vec<u64> = enforcing
        .iter()
        .filter_map(|p| p.allow_capabilities)
        .collect();
    let given = lists
        .first()
        .map_or(0, |f| lists.iter().fold(*f, |all, l| all & l));
    builtins.push(Builtin {
        name: "allow_capabilities".into(),
        refuses: "the capabilities agents never get (CAP_SYS_ADMIN, CAP_NET_ADMIN, ...)".into(),
        relaxed: given != 0,
        given_back: (0..64)
            .filter(|c| given & (1u64 << c) != 0)
            .map(|c| governance_common::caps::name(c).to_string())
            .collect(),
    });
    AgentCapabilities {
        agent,
        selector,
        by_selector,
        policies: enforcing.iter().map(|p| p.name.clone()).collect(),
        shadow_policies: governing
            .iter()
            .filter(|p| p.mode == Mode::Shadow)
            .map(|p| p.name.clone())
            .collect(),
        defaults,
        items,
        builtins,
    }
}

fn path(p: &PathMatch) -> String {
    match p {
        PathMatch::Exact(e) => e.display().to_string(),
        PathMatch::Prefix(d) => format!("{}/**", d.display().to_string().trim_end_matches('/')),
    }
}

pub(crate) fn object(m: &Matcher) -> String {
    match m {
        Matcher::Exec(p) => path(p),
        Matcher::File { path: p, access } => {
            let access = if access.is_empty() {
                "any access".to_string()
            } else {
                access
                    .iter()
                    .map(|a| match a {
                        Access::Read => "read",
                        Access::Write => "write",
                        Access::Create => "create",
                        Access::Truncate => "truncate",
                        Access::Exec => "exec",
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!("{} ({access})", path(p))
        }
        Matcher::Network {
            nets,
            ports,
            protocol,
            via_proxy,
        } => {
            let dest = if nets.is_empty() {
                "any address".to_string()
            } else {
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let ports = if ports.is_empty() {
                "any port".to_string()
            } else {
                let p: Vec<String> = ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                format!("port {}", p.join(","))
            };
            let proto = match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Any => "tcp/udp",
            };
            let via = if *via_proxy {
                "via the proxy"
            } else {
                "direct"
            };
            format!("{dest} {ports} {proto} {via}")
        }
        Matcher::Http(h) => {
            let mut s = if h.methods.is_empty() {
                "any method".to_string()
            } else {
                h.methods.join(",")
            };
            let host = match &h.host {
                HostMatch::Any => "any host".to_string(),
                HostMatch::Exact(e) => e.clone(),
                HostMatch::Suffix(x) => format!("*{x}"),
            };
            let _ = write!(s, " {host}{}", h.path.as_deref().unwrap_or("/**"));
            for (name, value) in &h.headers {
                let _ = write!(s, " header {name}: {value}");
            }
            for c in &h.body {
                let _ = write!(s, " body {c}");
            }
            if let Some((tool, args)) = &h.mcp {
                let _ = write!(s, " mcp tool {tool}");
                for c in args {
                    let _ = write!(s, " argument {c}");
                }
            }
            s
        }
        Matcher::Unix(t) => t.display(),
        Matcher::Sequence(s) => sequence(s),
    }
}

/// A sequence rule: what arms it, what stays allowed once armed, and for how long.
fn sequence(s: &crate::policy::Sequence) -> String {
    let access = if s.after_access.is_empty() {
        "any access".to_string()
    } else {
        s.after_access
            .iter()
            .map(|a| format!("{a:?}").to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",")
    };
    let none = |v: Vec<String>| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(",")
        }
    };
    let mut direct = none(s.network_except.iter().map(|n| n.to_string()).collect());
    if !s.ports_except.is_empty() {
        let p: Vec<String> = s
            .ports_except
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let _ = write!(direct, " port {}", p.join(","));
    }
    let hosts = none(
        s.hosts_except
            .iter()
            .map(|h| match h {
                HostMatch::Any => "any host".to_string(),
                HostMatch::Exact(e) => e.clone(),
                HostMatch::Suffix(x) => format!("*{x}"),
            })
            .collect(),
    );
    let window = s.window.map_or("for the agent's life".to_string(), |w| {
        format!("for {}", duration(w))
    });
    format!(
        "after {} ({access}): egress except direct {direct}, http {hosts}, {window}",
        path(&s.after)
    )
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn verdict(r: &Rule) -> String {
    match (r.verdict, &r.throttle, &r.sandbox, &r.escalate) {
        (Verdict::Throttle, Some(t), _, _) => {
            let key = match t.key {
                ThrottleKey::Agent => "agent",
                ThrottleKey::Rule => "rule",
                ThrottleKey::AgentRule => "agent_rule",
            };
            format!("throttle {}/{} per {key}", t.rate, duration(t.per))
        }
        (Verdict::Sandbox, _, Some(SandboxTarget::Profile(p)), _) => format!("sandbox profile {p}"),
        (Verdict::Sandbox, _, Some(SandboxTarget::Upstream(u)), _) => {
            format!("sandbox upstream {u}")
        }
        (Verdict::Escalate, _, _, Some(e)) => format!(
            "escalate (timeout {}, then {})",
            duration(e.timeout),
            match e.on_timeout {
                Posture::Allow => "allow",
                Posture::Block => "block",
            }
        ),
        (v, ..) => v.as_str().into(),
    }
}

/// The inventory in words (`governance agents --capabilities`).
pub fn render(c: &AgentCapabilities, out: &mut String) {
    if c.by_selector {
        let _ = writeln!(out, "agents selected by {}", c.selector);
        let _ = writeln!(
            out,
            "  (described by selector, no live agent: policies that select other agents may apply to some of them)"
        );
    } else {
        let _ = writeln!(out, "agent {} (selector {:?})", c.agent, c.selector);
    }
    let none = |v: &[String]| {
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(out, "  policies: {}", none(&c.policies));
    if !c.shadow_policies.is_empty() {
        let _ = writeln!(
            out,
            "  shadow policies (decide nothing): {}",
            none(&c.shadow_policies)
        );
    }
    for kind in Kind::ALL {
        let k = kind.as_str();
        let _ = writeln!(
            out,
            "  {k}: everything not listed: {}",
            c.defaults.get(k).map_or("allow", String::as_str)
        );
        for i in c.items.iter().filter(|i| i.kind == k) {
            let _ = writeln!(out, "    {}", item_line(i));
        }
    }
    let k = Kind::Sequence.as_str();
    if c.items.iter().any(|i| i.kind == k) {
        let _ = writeln!(
            out,
            "  sequence restrictions (once armed, the verdict for egress outside):"
        );
        for i in c.items.iter().filter(|i| i.kind == k) {
            let _ = writeln!(out, "    {}", item_line(i));
        }
    }
    let _ = writeln!(out, "  built-in refusals:");
    for b in &c.builtins {
        let state = if b.relaxed {
            if b.given_back.is_empty() {
                "RELAXED".to_string()
            } else {
                format!("RELAXED for {}", b.given_back.join(","))
            }
        } else {
            "refused".into()
        };
        let _ = writeln!(out, "    {:<26} {state}: {}", b.name, b.refuses);
    }
}

fn item_line(i: &Item) -> String {
    format!(
        "{}: {} ({}){}",
        i.object,
        i.verdict,
        i.rule,
        if i.shadow { " [shadow]" } else { "" }
    )
}

/// One agent's changes in a [`diff`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDiff {
    pub agent: String,
    /// `+ ...` added, `- ...` removed, `~ ...: old -> new` changed.
    pub changes: Vec<String>,
}

/// A [`diff`] in words: each changed agent, then its changes.
pub fn render_diff(diff: &[AgentDiff]) -> String {
    let mut out = String::new();
    for d in diff {
        let _ = writeln!(out, "agent {}", d.agent);
        for l in &d.changes {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

/// How the capabilities change from `old` to `new`, agent by agent (matched by name): `+`
/// added, `-` removed, `~` changed. Empty when nothing changes.
pub fn diff(old: &[AgentCapabilities], new: &[AgentCapabilities]) -> Vec<AgentDiff> {
    let mut names: Vec<&str> = old.iter().chain(new).map(|c| c.agent.as_str()).collect();
    names.sort();
    names.dedup();
    let empty = AgentCapabilities::default();
    let mut out = Vec::new();
    for name in names {
        let a = old.iter().find(|c| c.agent == name);
        let b = new.iter().find(|c| c.agent == name);
        let mut lines = Vec::new();
        if a.is_none() {
            lines.push("+ agent (newly selected)".to_string());
        }
        if b.is_none() {
            lines.push("- agent (no longer selected)".to_string());
        }
        let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
        for (k, v) in &b.defaults {
            let was = a.defaults.get(k);
            if was.is_some_and(|w| w != v) {
                lines.push(format!("~ {k} default: {} -> {v}", was.map_or("", |s| s)));
            }
        }
        // Items by (kind, object, shadow): the same thing granted with another verdict or by
        // another rule is a change.
        let key =
            |i: &Item| -> (String, String, bool) { (i.kind.clone(), i.object.clone(), i.shadow) };
        let index = |c: &AgentCapabilities| -> BTreeMap<(String, String, bool), Vec<Item>> {
            let mut m: BTreeMap<_, Vec<Item>> = BTreeMap::new();
            for i in &c.items {
                m.entry(key(i)).or_default().push(i.clone());
            }
            m
        };
        let (ia, ib) = (index(a), index(b));
        for (k, items) in &ib {
            match ia.get(k) {
                None => lines.extend(
                    items
                        .iter()
                        .map(|i| format!("+ {} {}", i.kind, item_line(i))),
                ),
                Some(was) if was != items => {
                    let show = |v: &[Item]| {
                        v.iter()
                            .map(|i| format!("{} ({})", i.verdict, i.rule))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    lines.push(format!(
                        "~ {} {}{}: {} -> {}",
                        k.0,
                        k.1,
                        if k.2 { " [shadow]" } else { "" },
                        show(was),
                        show(items)
                    ));
                }
                Some(_) => {}
            }
        }
        for (k, items) in &ia {
            if !ib.contains_key(k) {
                lines.extend(
                    items
                        .iter()
                        .map(|i| format!("- {} {}", i.kind, item_line(i))),
                );
            }
        }
        for bb in &b.builtins {
            let was = a.builtins.iter().find(|x| x.name == bb.name);
            if let Some(was) = was
                && (was.relaxed != bb.relaxed || was.given_back != bb.given_back)
            {
                let state = |x: &Builtin| {
                    if !x.relaxed {
                        "refused".to_string()
                    } else if x.given_back.is_empty() {
                        "relaxed".into()
                    } else {
                        format!("relaxed for {}", x.given_back.join(","))
                    }
                };
                lines.push(format!(
                    "~ built-in {}: {} -> {}",
                    bb.name,
                    state(was),
                    state(bb)
                ));
            }
        }
        if !lines.is_empty() {
            out.push(AgentDiff {
                agent: name.into(),
                changes: lines,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
