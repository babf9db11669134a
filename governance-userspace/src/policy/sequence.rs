//! Sequence rules: a rule that depends on what the agent did before. Once an agent has done
//! the arming action (`after`: an allowed open of a classified file), every outbound action of
//! it outside the rule's allowlists (`then`) gets the rule's verdict, for a window or for the
//! rest of the agent's life. See docs/policy.md, "Sequence rules".
//!
//! Where each allowlist applies, so that neither path is a bypass: a connection or datagram
//! that goes out directly is checked against `then.network`; a connection that goes to the
//! HTTP proxy (addressed to it, or sent there by a `via_proxy` rule) is let through by the
//! kernel and each request on it is checked by the proxy against `then.http`. An omitted
//! allowlist allows nothing.

use super::*;

/// A compiled sequence rule's matcher.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    /// The arming action: an open of a path this covers, for one of these accesses (empty:
    /// any access).
    pub after: PathMatch,
    pub after_access: Vec<Access>,
    /// Direct destinations that stay reachable once armed: (networks, port ranges); an
    /// address in one of the networks and a port in one of the ranges (empty: any port).
    pub network_except: Vec<IpNet>,
    pub ports_except: Vec<(u16, u16)>,
    /// HTTP hosts that stay reachable through the proxy once armed.
    pub hosts_except: Vec<HostMatch>,
    /// How long the rule stays armed; None: for the rest of the agent's life.
    pub window: Option<Duration>,
}

impl Sequence {
    /// Does an (allowed) open of `path` for `access` arm the rule?
    pub fn arms(&self, path: &Path, access: Access) -> bool {
        self.after.matches(path)
            && (self.after_access.is_empty() || self.after_access.contains(&access))
    }

    /// Is a direct connection or datagram to `addr:port` still allowed once armed?
    pub fn allows_addr(&self, addr: IpAddr, port: u16) -> bool {
        self.network_except.iter().any(|n| n.contains(addr))
            && (self.ports_except.is_empty()
                || self
                    .ports_except
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&port)))
    }

    /// Is an HTTP request to `host` (any case) still allowed once armed?
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts_except.iter().any(|h| h.matches(host))
    }

    /// Is an arming at `armed` still in force at `now`?
    pub fn in_force(&self, armed: std::time::Instant, now: std::time::Instant) -> bool {
        self.window
            .is_none_or(|w| now.saturating_duration_since(armed) < w)
    }
}

impl Cx<'_> {
    /// Validate `sequence:`; `verdict` is the rule's.
    pub(super) fn sequence(
        &mut self,
        span: &Span,
        verdict: &Spanned<Verdict>,
        s: &model::SequenceDoc,
    ) -> Option<Sequence> {
        let before = self.problems.len();
        if !matches!(**verdict, Verdict::Block | Verdict::Escalate) {
            self.problem(
                verdict.span(),
                format!(
                    "sequence: the verdict is what an armed rule does to egress outside its allowlists: `block` or `escalate`, not `{}`",
                    verdict.as_str()
                ),
            );
        }
        let f = &s.after.file;
        let after = self.path_match("sequence.after.file", span, &f.path, &f.prefix);
        if f.access.contains(&Access::Exec) {
            self.problem(
                span,
                "sequence.after.file: `exec` never arms a sequence rule (opens for exec are decided by the exec hook); use read, write, create or truncate",
            );
        }
        let mut network_except = Vec::new();
        let mut ports_except = Vec::new();
        if let Some(e) = s.then.network.as_ref().and_then(|n| n.except.as_ref()) {
            if let Some(list) = &e.cidr {
                for c in &list.0 {
                    match c.trim().parse::<IpNet>() {
                        Ok(net) => network_except.push(net),
                        Err(msg) => self.problem(
                            list.span(),
                            format!("sequence.then.network.except: bad CIDR: {msg}"),
                        ),
                    }
                }
            }
            if let Some(list) = &e.ports {
                if e.cidr.is_none() {
                    self.problem(
                        list.span(),
                        "sequence.then.network.except: `ports` without `cidr` allows nothing; give the networks too (`::/0` and `0.0.0.0/0` for any)",
                    );
                }
                for p in &list.0 {
                    match parse_ports(p) {
                        Ok(range) => ports_except.push(range),
                        Err(msg) => self
                            .problem(list.span(), format!("sequence.then.network.except: {msg}")),
                    }
                }
            }
        }
        let mut hosts_except = Vec::new();
        for h in s.then.http.iter().flat_map(|h| &h.except_hosts) {
            match host_match(&h.trim().to_ascii_lowercase()) {
                Ok(m) => hosts_except.push(m),
                Err(msg) => {
                    self.problem(h.span(), format!("sequence.then.http.except_hosts: {msg}"))
                }
            }
        }
        let window = s.window.as_ref().and_then(|w| match parse_duration(w) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.problem(w.span(), format!("sequence.for: {msg}"));
                None
            }
        });
        let after = after?;
        (self.problems.len() == before).then(|| Sequence {
            after,
            after_access: f.access.clone(),
            network_except,
            ports_except,
            hosts_except,
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(text: &str) -> Result<PolicySet, PolicyError> {
        parse(&[(PathBuf::from("p.yaml"), text.to_owned())])
    }

    const HEAD: &str = "name: p\nagents: { cgroup: agents/a }\nrules:\n";

    #[test]
    fn a_sequence_rule_compiles_with_its_parts() {
        let set = parse_one(&format!(
            "{HEAD}  - id: s\n    sequence:\n      after: {{ file: {{ prefix: /data/pii/, access: [read] }} }}\n      then:\n        network: {{ except: {{ cidr: [10.0.0.0/8], ports: [443, 8000-8999] }} }}\n        http: {{ except_hosts: [API.internal.example, '*.corp.example'] }}\n      for: 1h\n    verdict: escalate\n    escalate: {{ timeout: 5m }}\n    reason: r\n"
        ))
        .unwrap();
        let r = &set.policies[0].rules[0];
        assert_eq!(r.matcher.kind(), Kind::Sequence);
        let Matcher::Sequence(s) = &r.matcher else {
            panic!("{:?}", r.matcher)
        };
        assert_eq!(s.after, PathMatch::Prefix("/data/pii/".into()));
        assert!(s.arms(Path::new("/data/pii/x.csv"), Access::Read));
        assert!(!s.arms(Path::new("/data/pii/x.csv"), Access::Write));
        assert!(!s.arms(Path::new("/data/public/x.csv"), Access::Read));
        assert!(s.allows_addr("10.1.2.3".parse().unwrap(), 443));
        assert!(s.allows_addr("::ffff:10.1.2.3".parse().unwrap(), 8080));
        assert!(!s.allows_addr("10.1.2.3".parse().unwrap(), 22));
        assert!(!s.allows_addr("192.0.2.1".parse().unwrap(), 443));
        assert!(s.allows_host("api.internal.example"));
        assert!(s.allows_host("git.CORP.example"));
        assert!(!s.allows_host("corp.example"));
        assert!(!s.allows_host("evil.example"));
        assert_eq!(s.window, Some(Duration::from_secs(3600)));
        let t = std::time::Instant::now();
        assert!(s.in_force(t, t + Duration::from_secs(3599)));
        assert!(!s.in_force(t, t + Duration::from_secs(3600)));
    }

    #[test]
    fn an_omitted_allowlist_allows_nothing() {
        let set = parse_one(&format!(
            "{HEAD}  - {{ id: s, sequence: {{ after: {{ file: {{ path: /data/x }} }} }}, verdict: block, reason: r }}\n"
        ))
        .unwrap();
        let Matcher::Sequence(s) = &set.policies[0].rules[0].matcher else {
            panic!()
        };
        assert!(
            s.arms(Path::new("/data/x"), Access::Write),
            "no access list: any"
        );
        assert!(!s.allows_addr("10.0.0.1".parse().unwrap(), 443));
        assert!(!s.allows_host("anything.example"));
        assert_eq!(s.window, None);
    }

    #[test]
    fn bad_sequence_rules_are_refused_with_their_place() {
        let Err(PolicyError::Invalid(problems)) = parse_one(&format!(
            "{HEAD}  - id: a\n    sequence:\n      after: {{ file: {{ prefix: data/pii }} }}\n    verdict: allow\n    reason: r\n\
             \x20 - id: b\n    sequence:\n      after: {{ file: {{ path: /x, access: [exec] }} }}\n      then: {{ network: {{ except: {{ ports: [0] }} }}, http: {{ except_hosts: ['bad host'] }} }}\n      for: soon\n    verdict: block\n    reason: r\n\
             \x20 - id: c\n    sequence: {{ after: {{ file: {{ path: /x }} }} }}\n    file: {{ path: /y }}\n    verdict: block\n    reason: r\n\
             \x20 - id: d\n    sequence: {{ after: {{ http: {{ host: x }} }} }}\n    verdict: block\n    reason: r\n"
        )) else {
            panic!("expected problems")
        };
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let all = all.join("\n");
        for needle in [
            "p.yaml:7:14: sequence: the verdict is what an armed rule does",
            "p.yaml:6:32: sequence.after.file: `data/pii` is not an absolute path",
            "p.yaml:9:9: sequence.after.file: `exec` never arms a sequence rule",
            "p.yaml:12:43: sequence.then.network.except: `ports` without `cidr` allows nothing",
            "bad port or range `0`",
            "p.yaml:12:75: sequence.then.http.except_hosts: host `bad host`",
            "p.yaml:13:12: sequence.for: bad duration `soon`",
            "p.yaml:16:9: rule `c`: give exactly one of `exec`, `file`, `network`, `http`, `unix` or `sequence`",
            "p.yaml:22:26: rules[3].sequence.after.http: Unknown field `http`, expected `file`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn the_schema_describes_sequence_rules() {
        let schema = serde_json::to_string(&schemars::schema_for!(model::PolicyDoc)).unwrap();
        for word in [
            "sequence",
            "SequenceDoc",
            "except_hosts",
            "\"for\"",
            "after",
        ] {
            assert!(schema.contains(word), "{word} missing from the schema");
        }
    }
}
