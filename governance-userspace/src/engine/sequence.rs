//! Sequence rules in the engine (see [`crate::policy::Sequence`]): which actions arm them, and
//! how an armed rule restricts the decision of a later action. The same semantics as the
//! kernel programs (the file hook arms, the network hooks refuse) and the proxy.
//!
//! An armed rule only ever makes a decision more severe: an action outside its allowlists gets
//! the rule's verdict unless the usual decision is already as severe (a block stays a block).

use std::time::Instant;

use std::sync::Arc;

use super::{Action, AgentRef, AgentRules, Decision, Engine};
use crate::{
    events::sequence::ArmedBy,
    policy::{Access, Kind, Matcher, Mode, Rule, Sequence},
};

/// A sequence rule an agent has armed.
#[derive(Clone, Debug, PartialEq)]
pub struct Armed {
    /// `<policy>/<rule>` of the sequence rule.
    pub rule: String,
    /// When the arming action happened.
    pub at: Instant,
    /// The arming action.
    pub by: ArmedBy,
}

/// Where the engine finds what an agent has armed: given the agent and the ids of its
/// sequence rules, the armed ones (the daemon reads the kernel's state; see
/// `daemon::sequence`). Without one, only [`Engine::decide_armed`]'s caller says.
pub type ArmedSource = Arc<dyn Fn(&AgentRef, &[&str]) -> Vec<Armed> + Send + Sync>;

/// `r`, `w`, `c`, `t`, `x`, as records write accesses.
pub(crate) fn access_letter(a: Access) -> &'static str {
    match a {
        Access::Read => "r",
        Access::Write => "w",
        Access::Create => "c",
        Access::Truncate => "t",
        Access::Exec => "x",
    }
}

impl Engine {
    fn sequences<'a>(
        &'a self,
        view: &'a AgentRules,
    ) -> impl Iterator<Item = (usize, &'a Rule, &'a Sequence)> + 'a {
        view.by_kind
            .get(&Kind::Sequence)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(move |&i| match &self.rule(i).matcher {
                Matcher::Sequence(s) => Some((i, self.rule(i), &**s)),
                _ => None,
            })
    }

    /// The sequence rules of the agent that `action` arms, if it is carried out (an open the
    /// decision allowed): what the agent's state should record.
    pub fn arming(&self, view: &AgentRules, action: &Action, now: Instant) -> Vec<Armed> {
        let Action::File { path, access } = action else {
            return Vec::new();
        };
        self.sequences(view)
            .filter(|(_, _, s)| s.arms(path, *access))
            .map(|(_, r, _)| Armed {
                rule: r.id.clone(),
                at: now,
                by: ArmedBy {
                    rule: r.id.clone(),
                    kind: "file".into(),
                    object: path.display().to_string(),
                    access: access_letter(*access).into(),
                    ..Default::default()
                },
            })
            .collect()
    }

    /// Use `source` for what agents have armed, in every [`Engine::decide`].
    pub fn with_armed_source(mut self, source: ArmedSource) -> Self {
        self.armed = Some(source);
        self
    }

    /// What the agent of `view` has armed, per the engine's source (nothing without one, or
    /// when the agent has no sequence rules).
    pub fn armed_now(&self, view: &AgentRules) -> Vec<Armed> {
        let Some(source) = &self.armed else {
            return Vec::new();
        };
        let ids: Vec<&str> = self
            .sequences(view)
            .map(|(_, r, _)| r.id.as_str())
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        source(&view.agent, &ids)
    }

    /// The refusal that an enforcing sequence rule the agent has armed now (the engine's
    /// source) makes of `action`, if any (the most severe): what a connection opened before
    /// the arming meets when the proxy re-checks it. Nothing else is decided (no token of a
    /// throttle rule is taken).
    pub fn armed_refusal(
        &self,
        view: &AgentRules,
        action: &Action,
        now: Instant,
    ) -> Option<Decision> {
        let armed = self.armed_now(view);
        if armed.is_empty() {
            return None;
        }
        let mut worst: Option<Decision> = None;
        for (i, rule, s) in self.sequences(view) {
            if rule.mode != Mode::Enforce {
                continue;
            }
            let Some(a) = first_arming(&armed, &rule.id) else {
                continue;
            };
            let outside = s.in_force(a.at, now)
                && match action {
                    Action::Network { addr, port, .. } => !s.allows_addr(*addr, *port),
                    Action::Http(req) => !s.allows_host(&req.host),
                    _ => false,
                };
            if !outside {
                continue;
            }
            let mut d = self.apply(i, &view.agent, now, false);
            d.armed_by = Some(a.by.clone());
            if d.outcome != super::Outcome::Allow
                && worst.as_ref().is_none_or(|w| d.verdict() > w.verdict())
            {
                worst = Some(d);
            }
        }
        worst
    }

    /// Decide `action` for an agent that has armed the sequence rules in `armed` (earlier
    /// armings of a rule count from the first: a window is not extended by a second read).
    pub fn decide_armed(
        &self,
        view: &AgentRules,
        action: &Action,
        now: Instant,
        armed: &[Armed],
    ) -> Decision {
        let mut decision = self.decide_plain(view, action, now);
        if armed.is_empty() || !matches!(action, Action::Network { .. } | Action::Http(_)) {
            return decision;
        }
        // A connection a `via_proxy` rule sends to the proxy is decided there, per request,
        // against `then.http`; the kernel lets it through.
        let proxied = matches!(action, Action::Network { .. })
            && decision.rule.as_deref().is_some_and(|id| {
                self.rules.iter().any(|&(p, r)| {
                    let rule = &self.set.policies[p].rules[r];
                    rule.id == id
                        && matches!(
                            rule.matcher,
                            Matcher::Network {
                                via_proxy: true,
                                ..
                            }
                        )
                })
            });
        for (i, rule, s) in self.sequences(view) {
            let Some(a) = first_arming(armed, &rule.id) else {
                continue;
            };
            if !s.in_force(a.at, now) {
                continue;
            }
            let outside = match action {
                Action::Network { addr, port, .. } => !proxied && !s.allows_addr(*addr, *port),
                Action::Http(req) => !s.allows_host(&req.host),
                _ => false,
            };
            if !outside {
                continue;
            }
            let shadow = rule.mode == Mode::Shadow;
            let mut d = self.apply(i, &view.agent, now, shadow);
            d.armed_by = Some(a.by.clone());
            if shadow {
                if decision.shadow.is_none() && d.verdict() > decision.verdict() {
                    decision.shadow = Some(Box::new(d));
                }
            } else if d.verdict() > decision.verdict() {
                d.shadow = decision.shadow.take();
                decision = d;
            }
        }
        decision
    }
}

/// The first arming of sequence rule `rule` among `armed` (its window runs from it).
fn first_arming<'a>(armed: &'a [Armed], rule: &str) -> Option<&'a Armed> {
    armed.iter().filter(|a| a.rule == rule).min_by_key(|a| a.at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        engine::{AgentRef, HttpRequest, Outcome},
        policy::{Access, Protocol, Verdict, parse},
    };

    fn engine(rules: &str) -> Engine {
        let yaml = format!("name: p\nagents: {{ cgroup: a }}\nrules:\n{rules}");
        Engine::new(
            parse(&[("p.yaml".into(), yaml)]).unwrap_or_else(|e| panic!("{e}")),
            1,
        )
    }

    fn agent(cgroup: &str) -> AgentRef {
        AgentRef {
            name: cgroup.into(),
            cgroup: cgroup.into(),
            ..Default::default()
        }
    }

    fn read(p: &str) -> Action {
        Action::File {
            path: p.into(),
            access: Access::Read,
        }
    }

    fn net(addr: &str, port: u16) -> Action {
        Action::Network {
            addr: addr.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn get(host: &str) -> Action {
        Action::Http(HttpRequest {
            method: "GET".into(),
            host: host.into(),
            path: "/".into(),
            ..Default::default()
        })
    }

    const PII: &str = "  - id: pii\n    sequence:\n      after: { file: { prefix: /data/pii, access: [read] } }\n      then: { network: { except: { cidr: 10.0.0.0/8 } }, http: { except_hosts: [api.internal] } }\n      for: 1h\n    verdict: block\n    reason: no exfiltration after PII\n";

    #[test]
    fn an_armed_rule_refuses_egress_outside_its_allowlists_and_names_the_arming_action() {
        let e = engine(PII);
        let view = e.agent(&agent("a"));
        let t0 = Instant::now();
        assert!(e.arming(&view, &read("/data/public/x"), t0).is_empty());
        let armed = e.arming(&view, &read("/data/pii/x.csv"), t0);
        assert_eq!(armed.len(), 1);
        assert_eq!(
            (armed[0].by.object.as_str(), armed[0].by.access.as_str()),
            ("/data/pii/x.csv", "r")
        );
        let d = e.decide_armed(&view, &net("192.0.2.1", 443), t0, &armed);
        assert_eq!(d.outcome, Outcome::Block);
        assert_eq!(d.rule.as_deref(), Some("p/pii"));
        assert_eq!(d.armed_by.as_ref(), Some(&armed[0].by));
        let d = e.decide_armed(&view, &get("evil.example"), t0, &armed);
        assert_eq!(
            (d.verdict(), d.rule.as_deref()),
            (Verdict::Block, Some("p/pii"))
        );
        // Controls: the allowlists, an agent that did not arm it, and the end of the window.
        for ok in [net("10.9.9.9", 22), get("API.internal")] {
            assert_eq!(
                e.decide_armed(&view, &ok, t0, &armed).outcome,
                Outcome::Allow
            );
        }
        assert_eq!(
            e.decide_armed(&view, &net("192.0.2.1", 443), t0, &[])
                .outcome,
            Outcome::Allow
        );
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            e.decide_armed(&view, &net("192.0.2.1", 443), later, &armed)
                .outcome,
            Outcome::Allow
        );
        // Other kinds of action are not restricted.
        assert_eq!(
            e.decide_armed(&view, &read("/etc/hosts"), t0, &armed)
                .outcome,
            Outcome::Allow
        );
    }

    #[test]
    fn an_armed_rule_only_makes_decisions_more_severe() {
        let e = engine(&format!(
            "{PII}  - {{ id: never, network: {{ cidr: 192.0.2.0/24 }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: proxied, network: {{ cidr: 198.51.100.0/24, via_proxy: true }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: esc, sequence: {{ after: {{ file: {{ path: /data/secret }} }} }}, verdict: escalate, escalate: {{ timeout: 1m }}, reason: r }}\n\
             \x20 - {{ id: watch, mode: shadow, sequence: {{ after: {{ file: {{ path: /data/watched }} }} }}, verdict: block, reason: r }}\n"
        ));
        let view = e.agent(&agent("a"));
        let t0 = Instant::now();
        let armed = e.arming(&view, &read("/data/pii/x"), t0);
        // Already blocked by its own rule: that rule stays the answer.
        let d = e.decide_armed(&view, &net("192.0.2.1", 443), t0, &armed);
        assert_eq!(d.rule.as_deref(), Some("p/never"));
        // Sent to the proxy: decided there, per request, against `then.http`.
        let d = e.decide_armed(&view, &net("198.51.100.7", 443), t0, &armed);
        assert_eq!(
            (d.outcome, d.rule.as_deref()),
            (Outcome::Allow, Some("p/proxied"))
        );
        // An escalating sequence rule escalates.
        let armed = e.arming(&view, &read("/data/secret"), t0);
        let d = e.decide_armed(&view, &get("x.example"), t0, &armed);
        assert_eq!(
            (d.verdict(), d.rule.as_deref()),
            (Verdict::Escalate, Some("p/esc"))
        );
        // A shadow one says what it would have done, and changes nothing.
        let armed = e.arming(&view, &read("/data/watched"), t0);
        let d = e.decide_armed(&view, &get("x.example"), t0, &armed);
        assert_eq!(d.outcome, Outcome::Allow);
        let shadow = d.shadow.expect("a shadow decision");
        assert_eq!(
            (shadow.verdict(), shadow.rule.as_deref()),
            (Verdict::Block, Some("p/watch"))
        );
        assert_eq!(
            shadow.armed_by.map(|a| (a.rule, a.object)),
            Some(("p/watch".to_string(), "/data/watched".to_string()))
        );
    }
}
