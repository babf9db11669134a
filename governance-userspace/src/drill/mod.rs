//! Drills: "pick a known-bad action, attempt it from an agent, and confirm the engine returns
//! Block". This module plans them (pure: policy set → checks); the daemon runs them from a
//! canary agent of its own (`daemon::drill`).
//!
//! For each enforcing policy, the checks are every block rule's object (an HTTP rule's request
//! made up from it: `http.rs`) and one probe per kind whose default is block. Each is first decided by the policy engine for the canary (which
//! only that policy governs): a rule whose object a more specific rule decides otherwise
//! cannot be probed through that object and is reported `skipped` with why, never passed.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Instant,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    engine::{Action, AgentRef, Engine},
    policy::{
        Access, Kind, Matcher, Mode, PathMatch, Policy, PolicySet, Posture, Protocol, Selector,
        UnixTarget, Verdict,
    },
};

mod http;

pub use self::http::{HttpProbe, judge};

/// The label the canary agent carries (in the policy set the drill decides with, and in events).
pub const CANARY_LABEL: &str = "governance-drill-canary";

/// A destination no allow rule should cover: TEST-NET-1 (RFC 5737), never routed.
pub const DEFAULT_DENY_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The port probed when a rule names no port (discard).
const ANY_PORT: u16 = 9;

/// The drill part of a drill record (`kind: drill.passed` or `drill.failed`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Drill {
    pub id: String,
    pub checks: Vec<Check>,
    /// Per policy probed, whose tables its canary had: `<policy>: the live tables of agent X`
    /// or `<policy>: tables compiled for the drill (...)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<String>,
}

/// One check of a drill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Check {
    /// The policy the canary was governed by.
    pub policy: String,
    /// `<policy>/<rule>`, or `default` (a default-deny probe).
    pub rule: String,
    /// `exec`, `file`, `network`, `http`, `unix`.
    pub kind: String,
    /// What was attempted (`tcp 10.20.0.0:22`).
    pub object: String,
    /// What the policy says should happen (`block`).
    pub expected: String,
    /// What happened (`refused (EPERM)`, `connected`, ...); empty when skipped.
    pub got: String,
    pub passed: bool,
    /// Why the check was not run (then `passed` is false and it does not fail the drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_why: Option<String>,
}

impl Drill {
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.passed).count()
    }
    pub fn skipped(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.skipped_why.is_some())
            .count()
    }
    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed() - self.skipped()
    }
    /// Passed: no check failed, and at least one ran.
    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.passed() > 0
    }
    /// One line: `drill D: 5 checks, 4 passed, 0 failed, 1 skipped` and the failed checks.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "drill {} {}: {} checks, {} passed, {} failed, {} skipped",
            self.id,
            if self.ok() { "passed" } else { "FAILED" },
            self.checks.len(),
            self.passed(),
            self.failed(),
            self.skipped()
        );
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.passed && c.skipped_why.is_none())
            .map(|c| format!("{} {} {}: got {}", c.rule, c.kind, c.object, c.got))
            .collect();
        if !failed.is_empty() {
            s.push_str("; failed: ");
            s.push_str(&failed.join("; "));
        }
        s
    }
}

/// How a check is attempted from the canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A connect (TCP, or UDP when `udp`) to `addr`: refused by the kernel with EPERM.
    Connect { addr: SocketAddr, udp: bool },
    /// Run the first of `paths` that exists (traced: an exec that is not refused stops before
    /// its first instruction and is killed).
    Exec { paths: Vec<PathBuf> },
    /// Run the first executable file directly in `dir` that the rule decides (found when the
    /// drill runs).
    ExecUnder { dir: PathBuf },
    /// Open the first of `paths` that exists for `access`: `read` opens it read-only; `write`
    /// opens a scratch file the drill creates in that directory and removes; `create` creates
    /// that scratch file (removed after).
    Open { paths: Vec<PathBuf>, access: Access },
    /// An HTTP request sent through the proxy (explicit use: to the proxy's own address, so
    /// the kernel records the canary as its caller). The proxy never forwards a canary's
    /// request: one it would let through is answered `X-Governance-Drill: not forwarded`.
    Http(HttpProbe),
    /// A stream connect to a Unix socket: a filesystem socket that exists here, or an abstract
    /// name (the daemon listens on it for the probe when nothing does; the hook decides only
    /// when there is a socket to connect to).
    Unix(UnixTarget),
    /// A sequence rule armed by reads: a TCP connect to `addr` (which the rule does not
    /// except) before and after opening, read-only and reading nothing, `arm` (the rule's
    /// file, or the first file directly in its directory): refused after, not before.
    Sequence { arm: PathBuf, addr: SocketAddr },
}

/// The abstract socket of the default-deny Unix probe (the daemon listens on it meanwhile).
pub const DEFAULT_UNIX: &[u8] = b"governance-drill-default";

/// Binaries tried, in order, for the default-deny exec probe: the first that no rule covers.
const DEFAULT_EXEC: [&str; 5] = [
    "/usr/bin/true",
    "/bin/true",
    "/usr/bin/id",
    "/usr/bin/env",
    "/usr/bin/curl",
];
/// Files tried, in order, for the default-deny file probe (read-only).
const DEFAULT_FILE: [&str; 5] = [
    "/etc/hostname",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/hosts",
    "/proc/version",
];

/// A planned check: the record to fill, and how to probe it (None: skipped, with why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub check: Check,
    pub probe: Option<Probe>,
}

/// The policy set the canary is decided with: the same policies and rules in the same order
/// (so the kernel's rule numbers are the generation's), with `policy`'s selector replaced by
/// the canary's label and every other policy's by one that matches nothing.
pub fn canary_set(set: &PolicySet, policy: &str) -> PolicySet {
    let mut out = set.clone();
    for p in &mut out.policies {
        std::sync::Arc::make_mut(p).selector = Selector {
            cgroup: None,
            label: Some(if p.name == policy {
                CANARY_LABEL.into()
            } else {
                format!("{CANARY_LABEL}\0never")
            }),
            pod: None,
        };
    }
    out
}

/// The canary as the engine knows it.
pub fn canary_ref(cgroup: &str) -> AgentRef {
    AgentRef {
        name: CANARY_LABEL.into(),
        cgroup: cgroup.into(),
        label: Some(CANARY_LABEL.into()),
        pod: None,
    }
}

/// The policies a drill runs against: the enforcing ones (a shadow policy blocks nothing),
/// or only `only`.
pub fn policies<'a>(set: &'a PolicySet, only: Option<&str>) -> Vec<&'a Policy> {
    set.policies
        .iter()
        .map(|p| &**p)
        .filter(|p| p.mode == Mode::Enforce && only.is_none_or(|o| o == p.name))
        .collect()
}

/// The checks of `policy` (by name) in `set`.
pub fn plan(set: &PolicySet, policy: &Policy) -> Vec<Planned> {
    let drill_set = canary_set(set, &policy.name);
    let engine = Engine::new(drill_set, 0);
    let view = engine.agent(&canary_ref(""));
    let now = Instant::now();
    let mut out = Vec::new();
    let check = |rule: &str, kind: Kind, object: String| Check {
        policy: policy.name.clone(),
        rule: rule.into(),
        kind: kind.as_str().into(),
        object,
        expected: "block".into(),
        ..Default::default()
    };
    let skip = |mut c: Check, why: String| {
        c.skipped_why = Some(why);
        Planned {
            check: c,
            probe: None,
        }
    };
    // Is the probe decided by the rule it stands for (None: the default)?
    let decided = |action: &Action, rule: Option<&str>| -> Result<(), String> {
        let d = engine.decide(&view, action, now);
        if d.verdict() == Verdict::Block && d.rule.as_deref() == rule {
            Ok(())
        } else {
            Err(format!(
                "the engine decides this object {} by {}, not by the rule under drill",
                d.verdict().as_str(),
                d.rule.as_deref().unwrap_or("default")
            ))
        }
    };
    for rule in &policy.rules {
        if rule.verdict != Verdict::Block || rule.mode != Mode::Enforce {
            continue;
        }
        let kind = rule.matcher.kind();
        match &rule.matcher {
            Matcher::Network {
                nets,
                ports,
                protocol,
                via_proxy,
            } => {
                // Per prefix, its first address, or its last when a more specific rule
                // decides the first.
                let addrs: Vec<Vec<IpAddr>> = if nets.is_empty() {
                    vec![vec![IpAddr::V4(DEFAULT_DENY_ADDR)]]
                } else {
                    nets.iter()
                        .map(|n| vec![n.addr, last(n.addr, n.prefix)])
                        .collect()
                };
                let port = ports.first().map_or(ANY_PORT, |(lo, _)| *lo);
                let udp = *protocol == Protocol::Udp;
                // One check per destination prefix of the rule.
                for candidates in addrs {
                    let addr = candidates
                        .iter()
                        .copied()
                        .find(|a| {
                            let action = Action::Network {
                                addr: *a,
                                port,
                                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                            };
                            decided(&action, Some(&rule.id)).is_ok()
                        })
                        .unwrap_or(candidates[0]);
                    let object =
                        format!("{} {}", if udp { "udp" } else { "tcp" }, sock(addr, port));
                    let c = check(&rule.id, kind, object);
                    if *via_proxy {
                        out.push(skip(
                            c,
                            "a via_proxy block rule is decided by the proxy's HTTP rules".into(),
                        ));
                        continue;
                    }
                    let action = Action::Network {
                        addr,
                        port,
                        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                    };
                    match decided(&action, Some(&rule.id)) {
                        Ok(()) => out.push(Planned {
                            check: c,
                            probe: Some(Probe::Connect {
                                addr: SocketAddr::new(addr, port),
                                udp,
                            }),
                        }),
                        Err(why) => out.push(skip(c, why)),
                    }
                }
            }
            Matcher::Exec(pm) => {
                let c = check(&rule.id, kind, crate::capabilities::object(&rule.matcher));
                match pm {
                    PathMatch::Exact(path) => {
                        let action = Action::Exec { path: path.clone() };
                        match decided(&action, Some(&rule.id)) {
                            Ok(()) => out.push(Planned {
                                check: c,
                                probe: Some(Probe::Exec {
                                    paths: vec![path.clone()],
                                }),
                            }),
                            Err(why) => out.push(skip(c, why)),
                        }
                    }
                    PathMatch::Prefix(dir) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::ExecUnder { dir: dir.clone() }),
                    }),
                }
            }
            Matcher::File { path: pm, access } => {
                let c = check(&rule.id, kind, crate::capabilities::object(&rule.matcher));
                // Read-only whenever the rule refuses reads; writes only on scratch files.
                let probe_access = if access.is_empty() || access.contains(&Access::Read) {
                    Access::Read
                } else if access.contains(&Access::Write) {
                    Access::Write
                } else if access.contains(&Access::Create) {
                    Access::Create
                } else {
                    out.push(skip(
                        c,
                        "only read, write and create accesses are probed".into(),
                    ));
                    continue;
                };
                let (path, prefix) = match pm {
                    PathMatch::Exact(p) => (p, false),
                    PathMatch::Prefix(p) => (p, true),
                };
                if probe_access != Access::Read && !prefix {
                    out.push(skip(
                        c,
                        "a write is probed only on a scratch file the drill creates under a \
                         prefix; this rule names one file"
                            .into(),
                    ));
                    continue;
                }
                let mut c = c;
                c.object = format!("{} {}", access_name(probe_access), path.display());
                let action = Action::File {
                    path: path.clone(),
                    access: probe_access,
                };
                match decided(&action, Some(&rule.id)) {
                    Ok(()) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::Open {
                            paths: vec![path.clone()],
                            access: probe_access,
                        }),
                    }),
                    Err(why) => out.push(skip(c, why)),
                }
            }
            Matcher::Http(m) => {
                let mut c = check(&rule.id, kind, crate::capabilities::object(&rule.matcher));
                let probe = HttpProbe::for_rule(m)
                    .and_then(|p| decided(&Action::Http(p.request()), Some(&rule.id)).map(|()| p));
                match probe {
                    Ok(p) => {
                        c.object = p.object();
                        out.push(Planned {
                            check: c,
                            probe: Some(Probe::Http(p)),
                        });
                    }
                    Err(why) => out.push(skip(c, format!("the request made up for it: {why}"))),
                }
            }
            Matcher::Unix(target) => {
                let c = check(&rule.id, kind, crate::capabilities::object(&rule.matcher));
                let action = Action::Unix {
                    target: target.clone(),
                };
                match decided(&action, Some(&rule.id)) {
                    Ok(()) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::Unix(target.clone())),
                    }),
                    Err(why) => out.push(skip(c, why)),
                }
            }
            Matcher::Sequence(seq) => {
                let addr = IpAddr::V4(DEFAULT_DENY_ADDR);
                let (arm, shown) = match &seq.after {
                    PathMatch::Exact(p) => (p.clone(), p.display().to_string()),
                    PathMatch::Prefix(d) => (
                        d.clone(),
                        format!("{}/*", d.display().to_string().trim_end_matches('/')),
                    ),
                };
                let c = check(
                    &rule.id,
                    kind,
                    format!("read {shown}, then tcp {}", sock(addr, ANY_PORT)),
                );
                let action = Action::Network {
                    addr,
                    port: ANY_PORT,
                    protocol: Protocol::Tcp,
                };
                let before = engine.decide(&view, &action, now);
                if !(seq.after_access.is_empty() || seq.after_access.contains(&Access::Read)) {
                    out.push(skip(c, "only a rule that reads arm is probed".into()));
                } else if seq.allows_addr(addr, ANY_PORT) {
                    out.push(skip(
                        c,
                        format!(
                            "the rule excepts {}: nothing to probe",
                            sock(addr, ANY_PORT)
                        ),
                    ));
                } else if before.verdict() == Verdict::Block {
                    out.push(skip(
                        c,
                        format!(
                            "the engine refuses the connect before arming too (by {}): not a \
                             test of the rule",
                            before.rule.as_deref().unwrap_or("default")
                        ),
                    ));
                } else {
                    out.push(Planned {
                        check: c,
                        probe: Some(Probe::Sequence {
                            arm,
                            addr: SocketAddr::new(addr, ANY_PORT),
                        }),
                    });
                }
            }
        }
    }
    // One default-deny probe per kind whose default is block.
    for (kind, posture) in &policy.defaults {
        if *posture != Posture::Block {
            continue;
        }
        match kind {
            Kind::Network => {
                let addr = IpAddr::V4(DEFAULT_DENY_ADDR);
                let c = check("default", *kind, format!("tcp {}", sock(addr, ANY_PORT)));
                let action = Action::Network {
                    addr,
                    port: ANY_PORT,
                    protocol: Protocol::Tcp,
                };
                match decided(&action, None) {
                    Ok(()) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::Connect {
                            addr: SocketAddr::new(addr, ANY_PORT),
                            udp: false,
                        }),
                    }),
                    Err(why) => out.push(skip(c, why)),
                }
            }
            Kind::Exec => {
                let found: Vec<PathBuf> = DEFAULT_EXEC
                    .iter()
                    .map(PathBuf::from)
                    .filter(|p| decided(&Action::Exec { path: p.clone() }, None).is_ok())
                    .collect();
                let c = check("default", *kind, "a binary no rule covers".into());
                out.push(if found.is_empty() {
                    skip(
                        c,
                        format!(
                            "every candidate ({}) is covered by a rule",
                            DEFAULT_EXEC.join(", ")
                        ),
                    )
                } else {
                    Planned {
                        check: c,
                        probe: Some(Probe::Exec { paths: found }),
                    }
                });
            }
            Kind::File => {
                let found: Vec<PathBuf> = DEFAULT_FILE
                    .iter()
                    .map(PathBuf::from)
                    .filter(|p| {
                        let action = Action::File {
                            path: p.clone(),
                            access: Access::Read,
                        };
                        decided(&action, None).is_ok()
                    })
                    .collect();
                let c = check("default", *kind, "read a file no rule covers".into());
                out.push(if found.is_empty() {
                    skip(
                        c,
                        format!(
                            "every candidate ({}) is covered by a rule",
                            DEFAULT_FILE.join(", ")
                        ),
                    )
                } else {
                    Planned {
                        check: c,
                        probe: Some(Probe::Open {
                            paths: found,
                            access: Access::Read,
                        }),
                    }
                });
            }
            Kind::Http => {
                let p = HttpProbe::default_deny();
                let c = check("default", *kind, p.object());
                match decided(&Action::Http(p.request()), None) {
                    Ok(()) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::Http(p)),
                    }),
                    Err(why) => out.push(skip(c, why)),
                }
            }
            Kind::Unix => {
                let target = UnixTarget::Abstract(DEFAULT_UNIX.to_vec());
                let c = check("default", *kind, format!("connect {}", target.display()));
                match decided(
                    &Action::Unix {
                        target: target.clone(),
                    },
                    None,
                ) {
                    Ok(()) => out.push(Planned {
                        check: c,
                        probe: Some(Probe::Unix(target)),
                    }),
                    Err(why) => out.push(skip(c, why)),
                }
            }
            _ => out.push(skip(
                check("default", *kind, "an object no rule covers".into()),
                format!("{} checks are not probed by the drill", kind.as_str()),
            )),
        }
    }
    out
}

/// The files the exact exec rules of `policy` that do not block name: the kernel decides an
/// exec by the file's identity, so a default-deny candidate that *is* one of them (a busybox
/// link to an allowed `/bin/sh`) would be allowed, rightly, whatever its name.
pub fn exec_allowed_files(set: &PolicySet, policy: &str) -> Vec<PathBuf> {
    set.policies
        .iter()
        .filter(|p| p.name == policy)
        .flat_map(|p| &p.rules)
        .filter(|r| r.verdict != Verdict::Block)
        .filter_map(|r| match &r.matcher {
            Matcher::Exec(PathMatch::Exact(p)) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The first executable regular file directly in `dir` (by name) that `rule` of `policy`
/// decides for the canary: what an [`Probe::ExecUnder`] runs. Neither a symlink nor a file
/// with another name: the kernel decides the file that runs, which another name (planted by an
/// agent that may write `dir`: a link to an allowed `/bin/sh`) may rightly let run, and the
/// drill would report a broken enforcement (red team round 17).
pub fn exec_under(set: &PolicySet, policy: &str, rule: &str, dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let engine = Engine::new(canary_set(set, policy), 0);
    let view = engine.agent(&canary_ref(""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    files.sort();
    files.into_iter().find(|p| {
        let d = engine.decide(&view, &Action::Exec { path: p.clone() }, Instant::now());
        d.verdict() == Verdict::Block && d.rule.as_deref() == Some(rule)
    })
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Create => "create",
        Access::Truncate => "truncate",
        Access::Exec => "exec",
    }
}

/// The last address of `addr`/`prefix`.
fn last(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) | host).into())
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) | host).into())
        }
    }
}

fn sock(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests;
