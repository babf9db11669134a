//! Decision events: kernel record → decoded event (agent name, rule) → one readable line.

use std::{
    fmt,
    net::Ipv6Addr,
    time::{Duration, SystemTime},
};

use governance_common::{Cause, Event, Kind, Verdict, c_str_len, flags};

/// A kernel decision, decoded and tied to the policy that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub time: SystemTime,
    pub kind: Option<Kind>,
    /// The deciding rule's (or default's) verdict.
    pub verdict: Option<Verdict>,
    pub cause: Option<Cause>,
    /// Was the action refused?
    pub denied: bool,
    /// `flags` bits of the event.
    pub flags: u8,
    pub agent: String,
    pub rule_id: u32,
    pub generation: u32,
    /// `<policy>/<rule>`, or why no rule applied.
    pub rule: String,
    /// The rule's reason, when a rule decided.
    pub reason: String,
    /// A shadow rule or default that would have decided otherwise: (verdict, rule).
    pub would: Option<(Option<Verdict>, String)>,
    /// Escalations held for approval: the token `governance approve` takes.
    pub approval: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// What was acted on, as `key=value` words: path, destination, socket family, target.
    pub object: String,
}
/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(Duration::from)
            .unwrap_or_default();
        Self {
            boot_wall: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(monotonic_ns)
    }
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

/// What kernel ids stand for in one generation: agent names and rules.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Agent root cgroup id → agent name.
    pub agents: std::collections::HashMap<u64, String>,
    /// Kernel rule number n (rule id without the slot bit) is `rules[n - 1]`.
    pub rules: Vec<RuleName>,
}

#[derive(Clone, Debug, Default)]
pub struct RuleName {
    /// `<policy>/<rule>`.
    pub id: String,
    pub reason: String,
    /// Escalation rules: how long a request may wait for approval.
    pub escalate_timeout: Option<Duration>,
}

impl Names {
    fn rule(&self, rule_id: u32) -> Option<&RuleName> {
        (rule_id & 0x7fff_ffff)
            .checked_sub(1)
            .and_then(|i| self.rules.get(i as usize))
    }
}

/// An approval token: what a grant needs (agent, kind, object) and until when the request may
/// be approved (CLOCK_MONOTONIC ns). Printed with escalation events, taken by `governance approve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approval {
    pub cgroup_id: u64,
    pub kind: u8,
    pub object: u64,
    pub deadline_ns: u64,
}

impl fmt::Display for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}.{}.{:x}.{:x}",
            self.cgroup_id, self.kind, self.object, self.deadline_ns
        )
    }
}

impl std::str::FromStr for Approval {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an approval token (it looks like 1a2b.1.3c4d.5e6f)");
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [cgroup, kind, object, deadline] = parts[..] else {
            return Err(bad());
        };
        let hex = |p: &str| u64::from_str_radix(p, 16).map_err(|_| bad());
        Ok(Self {
            cgroup_id: hex(cgroup)?,
            kind: kind.parse().map_err(|_| bad())?,
            object: hex(object)?,
            deadline_ns: hex(deadline)?,
        })
    }
}

impl Decision {
    pub fn new(ev: &Event, names: &Names, clock: &Clock) -> Self {
        let kind = Kind::from_u8(ev.kind);
        let cause = Cause::from_u8(ev.cause);
        let verdict = Verdict::from_u8(ev.verdict);
        let agent = names
            .agents
            .get(&ev.agent_cgroup)
            .cloned()
            .unwrap_or_else(|| format!("cgroup:{}", ev.agent_cgroup));
        let named = names.rule(ev.rule_id);
        let reason = named.map(|r| r.reason.clone()).unwrap_or_default();
        let rule = match (cause, named) {
            (Some(Cause::Rule | Cause::Granted), Some(rule)) => rule.id.clone(),
            (Some(Cause::Rule | Cause::Granted), None) => {
                format!(
                    "rule #{} (not in this policy generation)",
                    ev.rule_id & 0x7fff_ffff
                )
            }
            (Some(Cause::Default), _) => "default: no rule matched".into(),
            (Some(Cause::Unreadable), _) => "fail-closed: kernel object unreadable".into(),
            (Some(Cause::TooLong), _) => "fail-closed: path longer than the kernel matches".into(),
            (Some(Cause::Builtin), _) => format!(
                "built-in: {}",
                match kind {
                    Some(Kind::Socket) => "no raw, packet or netlink sockets for agents",
                    Some(Kind::Userns) => "no new user namespaces for agents",
                    Some(Kind::Bpf) => "no bpf() for agents",
                    Some(Kind::Signal | Kind::Ptrace) => "the daemon and proxy are protected",
                    Some(Kind::Unlink) => "the pins are protected",
                    Some(Kind::Exec) if ev.flags & flags::SANDBOXED != 0 => {
                        "sandbox profile missing from this generation"
                    }
                    _ => "protected path (cgroup tree, policy directory, pins, sandbox profile)",
                }
            ),
            (None, _) => format!("unknown cause {}", ev.cause),
        };
        let would = (ev.flags & flags::SHADOW != 0).then(|| {
            let by = names
                .rule(ev.shadow_rule_id)
                .map_or_else(|| "default".to_owned(), |r| r.id.clone());
            (Verdict::from_u8(ev.shadow_verdict), by)
        });
        let denied = ev.flags & flags::DENIED != 0;
        let approval = (denied && verdict == Some(Verdict::Escalate) && cause == Some(Cause::Rule))
            .then(|| Approval {
                cgroup_id: ev.agent_cgroup,
                kind: ev.kind,
                object: ev.object,
                deadline_ns: ev.time_ns.saturating_add(
                    named
                        .and_then(|r| r.escalate_timeout)
                        .unwrap_or(Duration::from_secs(300))
                        .as_nanos() as u64,
                ),
            })
            .map(|a| a.to_string());
        let dest = || {
            let ip = Ipv6Addr::from(ev.addr);
            let ip = ip
                .to_ipv4_mapped()
                .map_or_else(|| format!("[{ip}]"), |v4| v4.to_string());
            let proto = match ev.detail {
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                p => p.to_string(),
            };
            format!("dest={ip}:{} proto={proto}", ev.port)
        };
        let object = match kind {
            Some(Kind::Connect | Kind::Send) => dest(),
            Some(Kind::File) => {
                let mut a = String::new();
                for (bit, c) in [(1, 'r'), (2, 'w'), (4, 'c'), (8, 't')] {
                    if ev.detail & bit != 0 {
                        a.push(c);
                    }
                }
                format!("path={:?} access={a}", text(&ev.path))
            }
            Some(Kind::Socket) => format!("family={} type={}", ev.detail, ev.port),
            Some(Kind::Signal) => format!("target={} signal={}", ev.object, ev.port),
            Some(Kind::Ptrace) => format!("target={}", ev.object),
            Some(Kind::Bpf) => format!("cmd={}", ev.detail),
            Some(Kind::Userns) | Some(Kind::Unlink) | None => String::new(),
            Some(Kind::Exec) => format!("path={:?}", text(&ev.path)),
        };
        Self {
            time: clock.wall(ev.time_ns),
            kind,
            verdict,
            cause,
            denied,
            flags: ev.flags,
            agent,
            rule_id: ev.rule_id,
            rule,
            reason,
            would,
            approval,
            generation: ev.generation,
            cgroup_id: ev.cgroup_id,
            pid: ev.pid,
            tgid: ev.tgid,
            ppid: ev.ppid,
            uid: ev.uid,
            comm: text(&ev.comm),
            object,
        }
    }

    /// The first word of the line: what happened.
    pub fn outcome(&self) -> &'static str {
        if self.flags & flags::KILLED != 0 {
            return "KILL";
        }
        match (self.denied, self.verdict, self.cause) {
            (true, Some(Verdict::Throttle), _) => "THROTTLE",
            (true, Some(Verdict::Escalate), _) => "ESCALATE",
            (true, _, _) => "BLOCK",
            (false, Some(Verdict::Sandbox), _) => "SANDBOX",
            (false, _, Some(Cause::Granted)) => "GRANTED",
            (false, _, _) => "ALLOW",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.map_or("?", Kind::as_str);
        write!(
            f,
            "{} {:<8} {kind:<7} agent={} {} pid={} ppid={} comm={:?} uid={} cgroup={} gen={} verdict={} rule={}",
            rfc3339(self.time),
            self.outcome(),
            self.agent,
            self.object,
            self.tgid,
            self.ppid,
            self.comm,
            self.uid,
            self.cgroup_id,
            self.generation,
            self.verdict.map_or("?", Verdict::as_str),
            self.rule,
        )?;
        if self.flags & flags::SANDBOXED != 0 {
            f.write_str(" sandboxed")?;
        }
        if !self.reason.is_empty() {
            write!(f, " reason={:?}", self.reason)?;
        }
        if let Some((v, by)) = &self.would {
            write!(f, " shadow={}:{by}", v.map_or("?", |v| v.as_str()))?;
        }
        if let Some(token) = &self.approval {
            write!(f, " approve={token}")?;
        }
        Ok(())
    }
}

/// RFC 3339 UTC with milliseconds, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            agents: [(4000, "bot".to_owned())].into(),
            rules: vec![RuleName {
                id: "bot/no-wget".into(),
                reason: "no downloads".into(),
                escalate_timeout: Some(Duration::from_secs(60)),
            }],
        }
    }

    fn event() -> Event {
        // SAFETY: Event is plain data; all zeroes is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.time_ns = 1_500_000_000;
        ev.cgroup_id = 4242;
        ev.agent_cgroup = 4000;
        ev.pid = 10;
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
        let d = Decision::new(&event(), &names(), &clock);
        assert_eq!(d.agent, "bot");
        assert_eq!(d.object, "path=\"/usr/bin/wget\"");
        assert_eq!(d.rule, "bot/no-wget");
        let line = d.to_string();
        assert!(line.starts_with("1970-01-01T00:00:01.500Z BLOCK    exec    agent=bot path=\"/usr/bin/wget\" pid=10 ppid=9 comm=\"sh\""), "{line}");
        assert!(
            line.ends_with(" gen=3 verdict=block rule=bot/no-wget reason=\"no downloads\""),
            "{line}"
        );
    }

    #[test]
    fn escalations_carry_an_approval_token_that_round_trips() {
        let mut ev = event();
        ev.verdict = Verdict::Escalate as u8;
        ev.object = 0xabc;
        let d = Decision::new(&ev, &names(), &Clock::now());
        assert_eq!(d.outcome(), "ESCALATE");
        let token: Approval = d.approval.unwrap().parse().unwrap();
        assert_eq!(
            token,
            Approval {
                cgroup_id: 4000,
                kind: Kind::Exec as u8,
                object: 0xabc,
                deadline_ns: 61_500_000_000
            }
        );
        assert!("1.2.x".parse::<Approval>().is_err());
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
        let d = Decision::new(&ev, &names(), &clock);
        assert_eq!(
            (d.object.as_str(), d.agent.as_str()),
            ("dest=169.254.169.254:80 proto=tcp", "cgroup:99")
        );
        assert!(d.rule.contains("not in this policy generation"));
        assert!(d.to_string().contains(" shadow=block:bot/no-wget"), "{d}");
        ev.kind = 200;
        ev.verdict = 200;
        ev.cause = 200;
        ev.comm = [0xff; 16];
        let line = Decision::new(&ev, &names(), &clock).to_string();
        assert!(line.contains(" ? "), "{line}");
    }

    #[test]
    fn parse_checks_the_record_size() {
        assert!(parse(&[0u8; 3]).is_none());
        let bytes = [0u8; std::mem::size_of::<Event>()];
        assert_eq!(parse(&bytes).unwrap().cgroup_id, 0);
    }

    #[test]
    fn formats_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
