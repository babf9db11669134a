//! Decision events: kernel record → decoded event (agent name, rule) → one readable line.

use std::{
    fmt,
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use governance_common::{Cause, Event, Kind, Verdict, c_str_len};

/// A kernel decision, decoded and tied to the policy that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub time: SystemTime,
    pub kind: Option<Kind>,
    pub verdict: Option<Verdict>,
    pub cause: Option<Cause>,
    pub agent: String,
    pub rule_id: u32,
    pub generation: u32,
    /// `<policy>/<rule>`, or why no rule applied.
    pub rule: String,
    /// The rule's reason, when a rule decided.
    pub reason: String,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
    /// Exec: the path the exec named. Connect: `addr:port`.
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

/// What kernel ids stand for: agent names and rules (id, reason) of the loaded generation.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Agent id n is `agents[n - 1]`.
    pub agents: Vec<String>,
    /// Kernel rule id n is `rules[n - 1]`: (`<policy>/<rule>`, reason).
    pub rules: Vec<(String, String)>,
}

impl Decision {
    pub fn new(ev: &Event, names: &Names, clock: &Clock) -> Self {
        let kind = Kind::from_u8(ev.kind);
        let cause = Cause::from_u8(ev.cause);
        let agent = ev
            .agent_id
            .checked_sub(1)
            .and_then(|i| names.agents.get(i as usize))
            .map_or_else(|| format!("#{}", ev.agent_id), Clone::clone);
        let named = ev
            .rule_id
            .checked_sub(1)
            .and_then(|i| names.rules.get(i as usize));
        let reason = named.map(|r| r.1.clone()).unwrap_or_default();
        let rule = match (cause, named) {
            (Some(Cause::Rule), Some(rule)) => rule.0.clone(),
            (Some(Cause::Rule), None) => {
                format!("rule #{} (not in the current policy)", ev.rule_id)
            }
            (Some(Cause::Default), _) => "default: no rule matched".into(),
            (Some(Cause::Unreadable), _) => "fail-closed: kernel object unreadable".into(),
            (None, _) => format!("unknown cause {}", ev.cause),
        };
        let object = match kind {
            Some(Kind::Connect4) => {
                let a = [ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]];
                format!("{}:{}", Ipv4Addr::from(a), ev.port)
            }
            _ => text(&ev.path),
        };
        Self {
            time: clock.wall(ev.time_ns),
            kind,
            verdict: Verdict::from_u8(ev.verdict),
            cause,
            agent,
            rule_id: ev.rule_id,
            rule,
            reason,
            generation: ev.generation,
            cgroup_id: ev.cgroup_id,
            pid: ev.pid,
            tgid: ev.tgid,
            uid: ev.uid,
            comm: text(&ev.comm),
            object,
        }
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

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Some(Verdict::Allow) => "ALLOW",
            Some(Verdict::Block) => "BLOCK",
            None => "?",
        };
        let kind = match self.kind {
            Some(Kind::Exec) => "exec",
            Some(Kind::Connect4) => "connect",
            None => "?",
        };
        write!(
            f,
            "{} {verdict:<5} {kind:<7} agent={} {}={:?} pid={} comm={:?} uid={} cgroup={} gen={} rule={}",
            rfc3339(self.time),
            self.agent,
            if self.kind == Some(Kind::Connect4) {
                "dest"
            } else {
                "path"
            },
            self.object,
            self.tgid,
            self.comm,
            self.uid,
            self.cgroup_id,
            self.generation,
            self.rule,
        )?;
        if !self.reason.is_empty() {
            write!(f, " reason={:?}", self.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Names {
        Names {
            agents: vec!["bot".into()],
            rules: vec![("bot/no-wget".into(), "no downloads".into())],
        }
    }

    fn event() -> Event {
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.time_ns = 1_500_000_000;
        ev.cgroup_id = 4242;
        ev.pid = 10;
        ev.tgid = 10;
        ev.agent_id = 1;
        ev.rule_id = 1;
        ev.generation = 3;
        ev.kind = Kind::Exec as u8;
        ev.verdict = Verdict::Block as u8;
        ev.cause = Cause::Rule as u8;
        ev.comm[..2].copy_from_slice(b"sh");
        ev.path[..13].copy_from_slice(b"/usr/bin/wget");
        ev
    }

    #[test]
    fn decodes_a_block_with_its_rule() {
        let clock = Clock {
            boot_wall: SystemTime::UNIX_EPOCH,
        };
        let d = Decision::new(&event(), &policy(), &clock);
        assert_eq!(d.agent, "bot");
        assert_eq!(d.object, "/usr/bin/wget");
        assert_eq!(d.comm, "sh");
        assert_eq!(d.rule, "bot/no-wget");
        let line = d.to_string();
        assert!(line.starts_with("1970-01-01T00:00:01.500Z BLOCK exec    agent=bot path=\"/usr/bin/wget\" pid=10 comm=\"sh\""), "{line}");
        assert!(
            line.ends_with(" rule=bot/no-wget reason=\"no downloads\""),
            "{line}"
        );
    }

    #[test]
    fn decodes_connect_and_unknowns_without_panicking() {
        let clock = Clock::now();
        let mut ev = event();
        ev.kind = Kind::Connect4 as u8;
        ev.addr[..4].copy_from_slice(&[169, 254, 169, 254]);
        ev.port = 80;
        ev.agent_id = 99;
        ev.rule_id = 77;
        let d = Decision::new(&ev, &policy(), &clock);
        assert_eq!(
            (d.object.as_str(), d.agent.as_str()),
            ("169.254.169.254:80", "#99")
        );
        assert!(d.rule.contains("not in the current policy"));
        ev.kind = 200;
        ev.verdict = 200;
        ev.cause = 200;
        ev.comm = [0xff; 16];
        let line = Decision::new(&ev, &policy(), &clock).to_string();
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
