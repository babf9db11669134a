//! Which policies select an agent, found once per agent and generation.
//!
//! The compiler needs, for each agent, the policies whose selectors match it. Matching every
//! rule's policy against every agent was agents × rules glob matches (10 million for 1,000
//! agents with 10 rules each). Here each policy is matched against each agent at most once,
//! and a policy that names one cgroup (no glob characters, the common case with many agents)
//! is found by that name: such a selector can only match an agent of that very cgroup.

use std::collections::HashMap;

use crate::{
    agents::AgentCgroup,
    policy::{Policy, PolicySet},
};

/// The policies of a set, indexed by the one cgroup their selector names.
pub(crate) struct Selectors {
    /// Cgroup (trimmed of `/`) → indices of the policies naming exactly it.
    literal: HashMap<String, Vec<usize>>,
    /// Every other policy (a glob, or no cgroup at all).
    others: Vec<usize>,
    /// Number of each policy's first rule (rules are numbered 1.. in set order).
    first_rule: Vec<u32>,
}

impl Selectors {
    pub(crate) fn new(set: &PolicySet) -> Self {
        let mut literal: HashMap<String, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        let mut first_rule = Vec::with_capacity(set.policies.len());
        let mut n = 1u32;
        for (i, p) in set.policies.iter().enumerate() {
            first_rule.push(n);
            n += p.rules.len() as u32;
            match p.selector.literal_cgroup() {
                Some(c) => literal
                    .entry(c.trim_matches('/').to_owned())
                    .or_default()
                    .push(i),
                None => others.push(i),
            }
        }
        Self {
            literal,
            others,
            first_rule,
        }
    }

    /// The indices of the policies whose selector matches `agent`, in set order. (A literal
    /// selector matches only its own cgroup, so only those are looked at; the full selector,
    /// labels and pod included, still decides.)
    pub(crate) fn matching(&self, set: &PolicySet, agent: &AgentCgroup) -> Vec<usize> {
        let named = self
            .literal
            .get(agent.rel.trim_matches('/'))
            .map_or(&[][..], Vec::as_slice);
        let mut out: Vec<usize> = named
            .iter()
            .chain(&self.others)
            .copied()
            .filter(|&i| {
                set.policies[i].selector.matches(
                    &agent.rel,
                    agent.label.as_deref(),
                    agent.pod.as_ref(),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Of the policies `matching`, those that govern the agent: the ones in enforce mode (a
    /// shadow policy decides nothing, so it relaxes and reports nothing either).
    pub(crate) fn enforcing<'a>(set: &'a PolicySet, matching: &[usize]) -> Vec<&'a Policy> {
        matching
            .iter()
            .map(|&i| &*set.policies[i])
            .filter(|p| p.mode == crate::policy::Mode::Enforce)
            .collect()
    }

    /// The rules of the policies `matching`, each with its number, in set order (what
    /// `PolicySet::numbered` yields for these policies).
    pub(crate) fn rules<'a>(
        &'a self,
        set: &'a PolicySet,
        matching: &'a [usize],
    ) -> impl Iterator<Item = (&'a Policy, &'a crate::policy::Rule, u32)> + 'a {
        matching.iter().flat_map(move |&i| {
            let p = &*set.policies[i];
            p.rules
                .iter()
                .zip(self.first_rule[i]..)
                .map(move |(r, n)| (p, &**r, n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(rel: &str, label: Option<&str>) -> AgentCgroup {
        AgentCgroup {
            index: 0,
            name: rel.to_owned(),
            rel: rel.to_owned(),
            label: label.map(str::to_owned),
            path: std::path::PathBuf::from("/sys/fs/cgroup").join(rel),
            cgroup_id: 1,
            pod: None,
        }
    }

    /// The index finds exactly the policies the plain filter finds, in the same order, with
    /// the rule numbers `numbered` gives: literal, globbed, label and cgroup-less selectors,
    /// over 1,000 agents.
    #[test]
    fn matching_is_the_plain_filter_over_every_policy() {
        let mut yaml = String::new();
        for i in 0..40 {
            let agents = match i % 5 {
                0 => format!("{{ cgroup: agents/a{i} }}"),
                1 => format!("{{ cgroup: agents/a{} }}", i + 100),
                2 => "{ cgroup: 'agents/a1*' }".to_owned(),
                3 => "{ label: red }".to_owned(),
                _ => format!("{{ cgroup: agents/a{}, label: red }}", i - 1),
            };
            yaml.push_str(&format!(
                "---\nname: p{i}\nagents: {agents}\nrules:\n  - {{ id: r{i}a, network: {{ cidr: 10.0.0.{i}/32 }}, verdict: block, reason: t }}\n  - {{ id: r{i}b, network: {{ cidr: 10.1.0.{i}/32 }}, verdict: allow, reason: t }}\n"
            ));
        }
        let set =
            crate::policy::parse(&[("p.yaml".into(), yaml)]).unwrap_or_else(|e| panic!("{e}"));
        let index = Selectors::new(&set);
        let numbered: Vec<(*const Policy, String, u32)> = set
            .numbered()
            .map(|(p, r, n)| (p as *const Policy, r.id.clone(), n))
            .collect();
        let mut matched_some = 0;
        for a in 0..1000 {
            let label = (a % 3 == 0).then_some("red");
            let agent = agent(&format!("agents/a{a}"), label);
            let plain: Vec<usize> = (0..set.policies.len())
                .filter(|&i| {
                    set.policies[i]
                        .selector
                        .matches(&agent.rel, agent.label.as_deref(), None)
                })
                .collect();
            let found = index.matching(&set, &agent);
            assert_eq!(found, plain, "agent {}", agent.rel);
            let rules: Vec<(*const Policy, String, u32)> = index
                .rules(&set, &found)
                .map(|(p, r, n)| (p as *const Policy, r.id.clone(), n))
                .collect();
            let want: Vec<_> = numbered
                .iter()
                .filter(|(p, _, _)| found.iter().any(|&i| std::ptr::eq(&*set.policies[i], *p)))
                .cloned()
                .collect();
            assert_eq!(rules, want, "agent {}", agent.rel);
            matched_some += usize::from(!found.is_empty());
        }
        assert!(matched_some > 100, "{matched_some}");
    }
}
