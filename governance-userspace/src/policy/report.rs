//! How allowed kernel actions are reported: `report:` on a rule, `defaults.report` per kind, the
//! built-in defaults, and their kernel encoding ([`governance_common::report`]). See
//! docs/policy.md, "Reporting allowed actions".

use std::collections::BTreeMap;

use marked_yaml::Spanned;

use super::{Cx, Kind, Policy, Rule, Verdict, model};

/// How the allowed actions of a rule or default are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// One event per action.
    Every,
    /// Counted per agent and rule, no event.
    Count,
    /// Counted, and one action in this many (at least 2) also an event.
    Sample(u16),
}

impl Report {
    /// Without a word from the policy: a default-allowed file open is counted (thousands
    /// behind one interpreter start), every other allowed action is an event.
    pub fn builtin(kind: Kind) -> Report {
        match kind {
            Kind::File => Report::Count,
            _ => Report::Every,
        }
    }

    /// The kernel encoding: an allow rule's or default's `RuleRef::aux`.
    pub fn aux(self) -> u16 {
        match self {
            Report::Every => governance_common::report::EVERY,
            Report::Count => governance_common::report::COUNT,
            Report::Sample(n) => n,
        }
    }

    /// Lower is more verbose: every, then sampling one in fewer, then counting.
    fn verbosity(self) -> u32 {
        match self {
            Report::Every => 0,
            Report::Sample(n) => u32::from(n),
            Report::Count => u32::MAX,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Every => f.write_str("every"),
            Report::Count => f.write_str("count"),
            Report::Sample(n) => write!(f, "sample 1/{n}"),
        }
    }
}

impl Policy {
    /// How this policy reports the allowed actions of `kind` its rules do not say about.
    pub fn report_for(&self, kind: Kind) -> Report {
        self.report_defaults
            .get(&kind)
            .copied()
            .unwrap_or_else(|| Report::builtin(kind))
    }
}

/// How the actions `rule` (of `policy`) allows are reported.
pub fn of_rule(policy: &Policy, rule: &Rule) -> Report {
    rule.report
        .unwrap_or_else(|| policy.report_for(rule.matcher.kind()))
}

/// How an agent's default-allowed actions of `kind` are reported, given the enforcing policies
/// that govern it: the most verbose of theirs (one asking for every event gets them).
pub fn of_default<'a>(policies: impl IntoIterator<Item = &'a Policy>, kind: Kind) -> Report {
    policies
        .into_iter()
        .map(|p| p.report_for(kind))
        .min_by_key(|r| r.verbosity())
        .unwrap_or_else(|| Report::builtin(kind))
}

impl Cx<'_> {
    /// One `report:` value.
    fn report_value(&mut self, r: &Spanned<model::Report>, what: &str) -> Option<Report> {
        match **r {
            model::Report::Every => Some(Report::Every),
            model::Report::Count => Some(Report::Count),
            model::Report::Sample(1) => Some(Report::Every),
            model::Report::Sample(n) => match u16::try_from(n) {
                Ok(n) if n >= 2 => Some(Report::Sample(n)),
                _ => {
                    self.problem(
                        r.span(),
                        format!("{what}: sample one in N, N from 1 to 65535 (not {n})"),
                    );
                    None
                }
            },
        }
    }

    /// A rule's `report:`: only for the allowed actions of kernel rules.
    pub(super) fn rule_report(
        &mut self,
        r: &Option<Spanned<model::Report>>,
        verdict: Verdict,
        kind: Kind,
    ) -> Option<Report> {
        let r = r.as_ref()?;
        if verdict != Verdict::Allow {
            self.problem(
                r.span(),
                format!(
                    "report: only allowed actions are counted or sampled; every `{}` decision is an event",
                    verdict.as_str()
                ),
            );
            return None;
        }
        if kind == Kind::Http {
            self.problem(
                r.span(),
                "report: is for exec, file, network and unix rules; the proxy records every HTTP decision",
            );
            return None;
        }
        self.report_value(r, "report")
    }

    /// `defaults.report`.
    pub(super) fn report_defaults(
        &mut self,
        d: &Option<model::ReportDefaults>,
    ) -> BTreeMap<Kind, Report> {
        let mut out = BTreeMap::new();
        let Some(d) = d else { return out };
        for (kind, r, name) in [
            (Kind::Exec, &d.exec, "defaults.report.exec"),
            (Kind::File, &d.file, "defaults.report.file"),
            (Kind::Network, &d.network, "defaults.report.network"),
            (Kind::Unix, &d.unix, "defaults.report.unix"),
        ] {
            if let Some(r) = r
                && let Some(v) = self.report_value(r, name)
            {
                out.insert(kind, v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::Report;
    use crate::policy::{Kind, PolicyError, PolicySet, parse};

    fn one(text: &str) -> Result<PolicySet, PolicyError> {
        parse(&[(PathBuf::from("p.yaml"), text.to_owned())])
    }

    const HEAD: &str = "name: p\nagents: { cgroup: agents/a }\n";

    #[test]
    fn rules_and_defaults_say_how_allowed_actions_are_reported() {
        let set = one(&format!(
            "{HEAD}defaults: {{ report: {{ exec: count, network: {{ sample: 100 }} }} }}\nrules:\n\
             \x20 - {{ id: a, file: {{ prefix: /tmp }}, verdict: allow, reason: r, report: every }}\n\
             \x20 - {{ id: b, network: {{ cidr: 127.0.0.1 }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: c, exec: {{ prefix: /bin }}, verdict: allow, reason: r, report: {{ sample: 1 }} }}\n\
             \x20 - {{ id: d, file: {{ prefix: /var }}, verdict: allow, reason: r }}\n"
        ))
        .unwrap();
        let p = &set.policies[0];
        let of = |i: usize| super::of_rule(p, &p.rules[i]);
        assert_eq!(of(0), Report::Every);
        assert_eq!(of(1), Report::Sample(100));
        assert_eq!(of(2), Report::Every);
        assert_eq!(of(3), Report::Count, "file opens are counted by default");
        assert_eq!(p.report_for(Kind::Exec), Report::Count);
        assert_eq!(p.report_for(Kind::Unix), Report::Every);
        assert_eq!(Report::Sample(100).aux(), 100);
        assert_eq!(Report::Count.aux(), governance_common::report::COUNT);
    }

    #[test]
    fn the_most_verbose_default_of_an_agents_policies_applies() {
        let a = one(&format!(
            "{HEAD}defaults: {{ report: {{ file: every }} }}\n"
        ))
        .unwrap();
        let b = one(&format!(
            "{HEAD}defaults: {{ report: {{ file: {{ sample: 5 }} }} }}\n"
        ))
        .unwrap();
        let c = one(HEAD).unwrap();
        let (a, b, c) = (&*a.policies[0], &*b.policies[0], &*c.policies[0]);
        assert_eq!(super::of_default([b, c], Kind::File), Report::Sample(5));
        assert_eq!(super::of_default([a, b, c], Kind::File), Report::Every);
        assert_eq!(super::of_default([c], Kind::File), Report::Count);
        assert_eq!(super::of_default([c], Kind::Exec), Report::Every);
    }

    #[test]
    fn misplaced_or_malformed_reports_are_problems_with_their_place() {
        let problems = |text: String| match one(&text) {
            Err(PolicyError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            other => panic!("expected problems, got {other:?}"),
        };
        let p = problems(format!(
            "{HEAD}rules:\n  - {{ id: a, file: {{ prefix: /tmp }}, verdict: block, reason: r, report: count }}\n"
        ));
        assert!(
            p[0].contains("p.yaml:4:") && p[0].contains("every `block` decision is an event"),
            "{p:?}"
        );
        let p = problems(format!(
            "{HEAD}rules:\n  - {{ id: a, http: {{ host: x.example }}, verdict: allow, reason: r, report: count }}\n"
        ));
        assert!(p[0].contains("proxy records every HTTP decision"), "{p:?}");
        let p = problems(format!(
            "{HEAD}defaults: {{ report: {{ file: {{ sample: 0 }} }} }}\n"
        ));
        assert!(
            p[0].contains("p.yaml:3:") && p[0].contains("defaults.report.file"),
            "{p:?}"
        );
        let p = problems(format!("{HEAD}defaults: {{ report: {{ http: count }} }}\n"));
        assert!(p[0].contains("p.yaml:3:"), "{p:?}");
        let p = problems(format!(
            "{HEAD}rules:\n  - {{ id: a, file: {{ prefix: /tmp }}, verdict: allow, reason: r, report: often }}\n"
        ));
        assert!(p[0].contains("p.yaml:4:"), "{p:?}");
    }
}
