//! The reporting policy in the kernel tables: how each agent's default-allowed actions are
//! reported (the `aux` of its allow defaults; see governance_common::report). Rules carry
//! theirs from `policy::report::of_rule`.

use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use governance_common::{AgentValue, CountKey, MAX_COUNTS, RulePair, Verdict as KVerdict, maps};

use super::KernelError;

use crate::{
    agents::AgentCgroup,
    policy::{Kind, Mode, PolicySet, Verdict, report},
};

/// The report encodings of an agent's default-allowed exec, file, network and unix actions,
/// from the policies that govern it: the most verbose they ask for.
pub(crate) fn default_aux_of(governing: &[&crate::policy::Policy]) -> [u16; 4] {
    [Kind::Exec, Kind::File, Kind::Network, Kind::Unix]
        .map(|k| report::of_default(governing.iter().copied(), k).aux())
}

/// The kernel kinds of the actions a rule or default of `kind` decides.
fn kernel_kinds(kind: Kind) -> &'static [governance_common::Kind] {
    use governance_common::Kind as K;
    match kind {
        Kind::Exec => &[K::Exec],
        Kind::File => &[K::File],
        Kind::Network => &[K::Connect, K::Send],
        Kind::Unix => &[K::Unix],
        Kind::Http | Kind::Sequence => &[],
    }
}

/// Every counter generation `generation` can count in: per agent, each allow rule of its
/// enforcing policies that counts or samples, and each kind whose default-allowed actions do
/// (rule [`governance_common::NO_RULE`]; the built-in allows, of the agent's own cgroup and a
/// sandbox's writable directories, count there too). Numbered as `compile` numbers rules.
/// At most [`MAX_COUNTS`] keys (what the kernel table holds), and how many were wanted.
pub fn count_keys(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
) -> (Vec<CountKey>, usize) {
    let mut keys = Vec::new();
    let mut wanted = 0usize;
    let mut push = |key: CountKey| {
        wanted += 1;
        if keys.len() < MAX_COUNTS as usize {
            keys.push(key);
        }
    };
    // Each agent's policies are found through the compiler's selector index, as the compiler
    // finds them: matching every policy against every agent was agents × policies glob
    // matches (a million for 1,000 agents with a policy each), after every reload.
    let selectors = super::compile::Selectors::new(set);
    for agent in agents {
        let key = |rule_id: u32, kind: governance_common::Kind| CountKey {
            agent: agent.cgroup_id,
            generation,
            rule_id,
            kind: kind as u8,
            _pad: [0; 7],
        };
        let matching = selectors.matching(set, agent);
        for (p, rule, n) in selectors.rules(set, &matching) {
            if rule.mode != Mode::Enforce || rule.verdict != Verdict::Allow {
                continue;
            }
            if report::of_rule(p, rule) == report::Report::Every {
                continue;
            }
            for k in kernel_kinds(rule.matcher.kind()) {
                push(key(governance_common::class_id(generation, n), *k));
            }
        }
        let aux = default_aux_of(&super::compile::Selectors::enforcing(set, &matching));
        for (i, kind) in [Kind::Exec, Kind::File, Kind::Network, Kind::Unix]
            .into_iter()
            .enumerate()
        {
            if aux[i] != governance_common::report::EVERY {
                for k in kernel_kinds(kind) {
                    push(key(governance_common::NO_RULE, *k));
                }
            }
        }
    }
    (keys, wanted)
}

/// Write `aux` into a class's defaults that allow.
pub(crate) fn set_defaults(v: &mut AgentValue, aux: [u16; 4]) {
    let set = |d: &mut RulePair, aux: u16| {
        if d.enforce.verdict == KVerdict::Allow as u8 {
            d.enforce.aux = aux;
        }
    };
    set(&mut v.exec_default, aux[0]);
    set(&mut v.file_default, aux[1]);
    set(&mut v.net_default, aux[2]);
    set(&mut v.unix_default, aux[3]);
}

impl super::Enforcer {
    /// The `COUNTS` map, opened as what it is.
    fn counts_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, CountKey, u64>, KernelError> {
        let name = maps::COUNTS;
        let map = self
            .maps
            .get_mut(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        PerCpuHashMap::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// Which counters these are: this boot and the `COUNTS` map's id (a map made anew, after an
    /// unload or a reboot, has another), for what is kept of them outside the kernel.
    pub fn counters_identity(&self) -> Option<String> {
        let aya::maps::Map::PerCpuHashMap(map) = self.maps.get(maps::COUNTS)? else {
            return None;
        };
        let id = map.info().ok()?.id();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(format!("{}/{id}", boot.trim()))
    }

    /// The kernel's counts of allowed actions (see governance_common::maps::COUNTS), summed
    /// over the CPUs. Makes the overflow entry the first time (the programs count in it the
    /// actions they reported as events because the map was full).
    pub fn counted(&mut self) -> Result<Vec<(CountKey, u64)>, KernelError> {
        let name = maps::COUNTS;
        let mut counts = self.counts_map()?;
        if counts.get(&CountKey::OVERFLOW, 0).is_err() {
            let zero = PerCpuValues::try_from(vec![0u64; possible_cpus()?])
                .map_err(|e| map_error(name, "per-cpu values", e))?;
            counts
                .insert(CountKey::OVERFLOW, zero, BPF_NOEXIST)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let mut out = Vec::new();
        for item in counts.iter() {
            let (key, values) = item.map_err(|source| KernelError::Map { name, source })?;
            out.push((key, values.iter().sum()));
        }
        Ok(out)
    }

    /// Make the counters of `keys` that are not there yet, zero on every CPU; how many are
    /// there now. A full map makes fewer (the rest are reported as events).
    pub fn prepare_counts(&mut self, keys: &[CountKey]) -> Result<usize, KernelError> {
        let name = maps::COUNTS;
        let mut counts = self.counts_map()?;
        let cpus = possible_cpus()?;
        let mut there = 0;
        for key in keys {
            let zero = PerCpuValues::try_from(vec![0u64; cpus])
                .map_err(|e| map_error(name, "per-cpu values", e))?;
            match counts.insert(*key, zero, BPF_NOEXIST) {
                Ok(()) => there += 1,
                Err(_) if counts.get(key, 0).is_ok() => there += 1,
                // Full: the rest would fail too.
                Err(_) => break,
            }
        }
        Ok(there)
    }

    /// Remove counts the daemon has taken in full (those of generations that no longer decide).
    pub fn forget_counts(&mut self, keys: &[CountKey]) -> Result<(), KernelError> {
        let name = maps::COUNTS;
        let mut counts = self.counts_map()?;
        for key in keys {
            match counts.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(KernelError::Map { name, source }),
            }
        }
        Ok(())
    }
}

/// `BPF_NOEXIST`: make the entry only if it is not there.
const BPF_NOEXIST: u64 = 1;

fn map_error(name: &'static str, call: &'static str, io_error: std::io::Error) -> KernelError {
    KernelError::Map {
        name,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// The number of possible CPUs: the length of a per-CPU map's values.
fn possible_cpus() -> Result<usize, KernelError> {
    aya::util::nr_cpus().map_err(|(_, e)| map_error(maps::COUNTS, "nr_cpus", e))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use governance_common::{Kind as K, NO_RULE, class_id, report as enc};

    use super::*;
    use crate::policy::parse;

    fn agent(index: usize, rel: &str) -> AgentCgroup {
        AgentCgroup {
            index,
            name: rel.into(),
            rel: rel.into(),
            label: None,
            path: PathBuf::from("/sys/fs/cgroup").join(rel),
            cgroup_id: 1000 + index as u64,
            pod: None,
        }
    }

    #[test]
    fn counters_are_made_for_counting_rules_and_defaults_only() {
        let set = parse(&[(
            PathBuf::from("p.yaml"),
            "name: p\nagents: { cgroup: a }\ndefaults: { report: { exec: count } }\nrules:\n\
             \x20 - { id: n, network: { cidr: 10.0.0.0/8 }, verdict: allow, reason: r, report: count }\n\
             \x20 - { id: e, network: { cidr: 10.1.0.0/16 }, verdict: allow, reason: r }\n\
             \x20 - { id: b, file: { path: /x }, verdict: block, reason: r }\n\
             \x20 - { id: f, file: { path: /y }, verdict: allow, reason: r }\n"
                .to_owned(),
        )])
        .unwrap();
        let a = agent(0, "a");
        let (keys, wanted) = count_keys(&set, std::slice::from_ref(&a), 3);
        let got: Vec<(u32, K)> = keys
            .iter()
            .map(|k| (k.rule_id, K::from_u8(k.kind).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (class_id(3, 1), K::Connect),
                (class_id(3, 1), K::Send),
                (class_id(3, 4), K::File),
                (NO_RULE, K::Exec),
                (NO_RULE, K::File),
            ]
        );
        assert_eq!(wanted, keys.len());
        assert!(
            keys.iter()
                .all(|k| k.agent == a.cgroup_id && k.generation == 3)
        );
        assert_eq!(
            default_aux_of(&[&*set.policies[0]]),
            [enc::COUNT, enc::COUNT, enc::EVERY, enc::EVERY]
        );
        // A cgroup no enforcing policy governs has the built-in defaults: file opens counted.
        let (keys, _) = count_keys(&set, &[agent(1, "other")], 3);
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].rule_id, keys[0].kind), (NO_RULE, K::File as u8));
    }

    /// The counters found through the selector index are the ones found by matching every
    /// policy against every agent (what `count_keys` did before): literal, globbed, label and
    /// shadow policies, rules in shadow mode, and each report mode, over 300 agents.
    #[test]
    fn counters_found_through_the_index_are_those_of_every_policy() {
        let mut yaml = String::new();
        for i in 0..30 {
            let agents = match i % 5 {
                0 => format!("{{ cgroup: agents/a{i} }}"),
                1 => "{ cgroup: 'agents/a1*' }".to_owned(),
                2 => "{ label: red }".to_owned(),
                3 => format!("{{ cgroup: agents/a{}, label: red }}", i + 1),
                _ => format!("{{ cgroup: agents/a{} }}", i + 200),
            };
            // A shadow policy's defaults would count what no enforcing policy counts.
            let (mode, counted) = if i % 7 == 3 {
                ("mode: shadow\n", "exec: count, unix: count")
            } else {
                ("", "network: count")
            };
            let report = ["every", "count", "{ sample: 10 }"][i % 3];
            yaml.push_str(&format!(
                "---\nname: p{i}\nagents: {agents}\n{mode}defaults: {{ report: {{ {counted} }} }}\nrules:\n\
                 \x20 - {{ id: a, network: {{ cidr: 10.0.0.{i}/32 }}, verdict: allow, reason: t, report: count }}\n\
                 \x20 - {{ id: b, file: {{ path: /x{i} }}, verdict: allow, reason: t, mode: shadow }}\n\
                 \x20 - {{ id: c, exec: {{ path: /bin/c{i} }}, verdict: allow, reason: t, report: {report} }}\n\
                 \x20 - {{ id: d, file: {{ path: /y{i} }}, verdict: block, reason: t }}\n"
            ));
        }
        let set = parse(&[(PathBuf::from("p.yaml"), yaml)]).unwrap_or_else(|e| panic!("{e}"));
        let agents: Vec<AgentCgroup> = (0..300)
            .map(|i| {
                let mut a = agent(i, &format!("agents/a{i}"));
                a.label = (i % 4 == 0).then(|| "red".to_owned());
                a
            })
            .collect();
        let (keys, wanted) = count_keys(&set, &agents, 5);
        let mut plain = Vec::new();
        for a in &agents {
            let key = |rule_id, kind: governance_common::Kind| (a.cgroup_id, rule_id, kind as u8);
            let matches = |p: &crate::policy::Policy| {
                p.selector
                    .matches(&a.rel, a.label.as_deref(), a.pod.as_ref())
            };
            for (p, rule, n) in set.numbered() {
                if matches(p)
                    && rule.mode == Mode::Enforce
                    && rule.verdict == Verdict::Allow
                    && report::of_rule(p, rule) != report::Report::Every
                {
                    for k in kernel_kinds(rule.matcher.kind()) {
                        plain.push(key(class_id(5, n), *k));
                    }
                }
            }
            let governing: Vec<&crate::policy::Policy> = set
                .policies
                .iter()
                .map(|p| &**p)
                .filter(|p| p.mode == Mode::Enforce && matches(p))
                .collect();
            let aux = default_aux_of(&governing);
            for (i, kind) in [Kind::Exec, Kind::File, Kind::Network, Kind::Unix]
                .into_iter()
                .enumerate()
            {
                if aux[i] != enc::EVERY {
                    for k in kernel_kinds(kind) {
                        plain.push(key(NO_RULE, *k));
                    }
                }
            }
        }
        let got: Vec<(u64, u32, u8)> = keys.iter().map(|k| (k.agent, k.rule_id, k.kind)).collect();
        assert_eq!(got, plain);
        assert_eq!(wanted, plain.len());
        // The cases are all there: rule counters, default counters, agents with none.
        let rules = got.iter().filter(|k| k.1 != NO_RULE).count();
        assert!(
            rules > 100 && got.len() > rules + 300,
            "{rules} of {}",
            got.len()
        );
    }
}
