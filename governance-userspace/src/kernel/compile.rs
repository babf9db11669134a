//! Policy → kernel map contents, for the subset the kernel programs enforce: exact-path exec
//! rules and IPv4 destination rules with allow/block verdicts, plus exec and network default
//! postures. Everything else is listed as not enforceable in the kernel, so the daemon can refuse
//! to claim enforcement it does not have.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use aya::maps::lpm_trie::Key;
use governance_common::{AgentValue, Net4Key, RuleValue, Verdict as KVerdict};

use crate::{
    agents::AgentCgroup,
    policy::{Kind, Matcher, Mode, PathMatch, PolicySet, Posture, Protocol, Verdict},
};

/// What goes into the maps.
#[derive(Debug, Default)]
pub struct KernelPolicy {
    /// cgroup id → agent entry.
    pub agents: Vec<(u64, AgentValue)>,
    /// (executable, agent id) → rule; the loader turns paths into (device, inode).
    pub exec: BTreeMap<(PathBuf, u32), RuleValue>,
    /// LPM key → rule.
    pub net4: BTreeMap<(u32, [u8; 8]), RuleValue>,
    /// Kernel rule id n is `rule_names[n - 1]`.
    pub rule_names: Vec<String>,
    /// Policy the kernel programs cannot enforce, one line each.
    pub unenforceable: Vec<String>,
}

impl KernelPolicy {
    pub fn net4_key(prefix: u32, data: [u8; 8]) -> Key<Net4Key> {
        Key::new(
            prefix,
            Net4Key {
                agent_be: [data[0], data[1], data[2], data[3]],
                addr: [data[4], data[5], data[6], data[7]],
            },
        )
    }
}

fn rule_value(rule_id: u32, verdict: Verdict) -> Option<RuleValue> {
    let verdict = match verdict {
        Verdict::Allow => KVerdict::Allow,
        Verdict::Block => KVerdict::Block,
        _ => return None,
    };
    Some(RuleValue {
        rule_id,
        verdict: verdict as u8,
        _pad: [0; 3],
    })
}

/// Keep the more severe of two rules for the same key (block beats allow).
fn merge<K: Ord>(map: &mut BTreeMap<K, RuleValue>, key: K, value: RuleValue) {
    let slot = map.entry(key).or_insert(value);
    if value.verdict > slot.verdict {
        *slot = value;
    }
}

pub fn compile(set: &PolicySet, agents: &[AgentCgroup]) -> KernelPolicy {
    let mut out = KernelPolicy {
        rule_names: set.rules().map(|r| r.id.clone()).collect(),
        ..Default::default()
    };
    // Kernel-side kinds only; HTTP rules belong to the proxy, which this list does not cover.
    let mut unenforceable = std::collections::BTreeSet::new();
    for agent in agents {
        let id = agent.agent_id();
        let mut defaults = [Posture::Allow; 2]; // exec, network
        let mut rule_id = 0u32;
        for p in &set.policies {
            let applies = p.selector.matches(&agent.rel, agent.label.as_deref());
            if applies {
                for (kind, posture) in &p.defaults {
                    let slot = match kind {
                        Kind::Exec => &mut defaults[0],
                        Kind::Network => &mut defaults[1],
                        Kind::File if *posture == Posture::Block => {
                            unenforceable.insert(format!(
                                "policy {}: `defaults.file: block` (file rules are not in the kernel yet)",
                                p.name
                            ));
                            continue;
                        }
                        _ => continue,
                    };
                    if p.mode == Mode::Shadow {
                        if *posture == Posture::Block {
                            unenforceable.insert(format!(
                                "policy {}: shadow default for {} (shadow mode is not in the kernel yet)",
                                p.name,
                                kind.as_str()
                            ));
                        }
                    } else if *posture == Posture::Block {
                        *slot = Posture::Block;
                    }
                }
            }
            for rule in &p.rules {
                rule_id += 1;
                if !applies {
                    continue;
                }
                let why = |what: &str| format!("rule {} ({}): {what}", rule.id, rule.at);
                if rule.matcher.kind() == Kind::Http {
                    continue; // decided by the HTTP engine, not the kernel
                }
                if rule.mode == Mode::Shadow {
                    unenforceable.insert(why("shadow mode is not in the kernel yet"));
                    continue;
                }
                let Some(value) = rule_value(rule_id, rule.verdict) else {
                    unenforceable.insert(why(
                        "throttle, sandbox and escalate are not in the kernel yet",
                    ));
                    continue;
                };
                match &rule.matcher {
                    Matcher::Exec(PathMatch::Exact(path)) => {
                        merge(&mut out.exec, (path.clone(), id), value);
                    }
                    Matcher::Exec(PathMatch::Prefix(_)) => {
                        unenforceable.insert(why("exec `prefix` rules are not in the kernel yet"));
                    }
                    Matcher::File { .. } => {
                        unenforceable.insert(why("file rules are not in the kernel yet"));
                    }
                    Matcher::Network {
                        nets,
                        ports,
                        protocol,
                        via_proxy,
                    } => {
                        if !ports.is_empty() || *protocol != Protocol::Any || *via_proxy {
                            unenforceable.insert(why(
                                "ports, protocol and via_proxy are not in the kernel yet",
                            ));
                            continue;
                        }
                        let targets: Vec<_> = if nets.is_empty() {
                            vec![(IpAddr::from([0, 0, 0, 0]), 0)]
                        } else {
                            nets.iter().map(|n| (n.addr, n.prefix)).collect()
                        };
                        for (addr, prefix) in targets {
                            let IpAddr::V4(v4) = addr else {
                                unenforceable
                                    .insert(why("IPv6 destinations are not in the kernel yet"));
                                continue;
                            };
                            let mut data = [0u8; 8];
                            data[..4].copy_from_slice(&id.to_be_bytes());
                            data[4..].copy_from_slice(&v4.octets());
                            merge(&mut out.net4, (32 + u32::from(prefix), data), value);
                        }
                    }
                    Matcher::Http(_) => {}
                }
            }
        }
        let k = |p: Posture| match p {
            Posture::Allow => KVerdict::Allow as u8,
            Posture::Block => KVerdict::Block as u8,
        };
        out.agents.push((
            agent.cgroup_id,
            AgentValue {
                agent_id: id,
                exec_default: k(defaults[0]),
                net_default: k(defaults[1]),
                _pad: [0; 2],
            },
        ));
    }
    out.unenforceable = unenforceable.into_iter().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn agent(index: usize, rel: &str, label: Option<&str>) -> AgentCgroup {
        AgentCgroup {
            index,
            name: rel.into(),
            rel: rel.into(),
            label: label.map(Into::into),
            path: PathBuf::from("/sys/fs/cgroup").join(rel),
            cgroup_id: 1000 + index as u64,
        }
    }

    #[test]
    fn compiles_exec_and_ipv4_rules_per_agent_and_lists_the_rest() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'a/*' }\ndefaults: { exec: block }\nrules:\n\
             \x20 - { id: curl, exec: { path: /usr/bin/curl }, verdict: block, reason: r }\n\
             \x20 - { id: git, exec: { path: /usr/bin/git }, verdict: allow, reason: r }\n\
             \x20 - { id: meta, network: { cidr: [169.254.0.0/16, 'fd00::/8'] }, verdict: block, reason: r }\n\
             \x20 - { id: tls, network: { cidr: 10.0.0.0/8, ports: 443 }, verdict: allow, reason: r }\n\
             \x20 - { id: bin, exec: { prefix: /opt/bin }, verdict: allow, reason: r }\n\
             \x20 - { id: key, file: { path: /etc/key }, verdict: block, reason: r }\n\
             \x20 - { id: api, http: { host: x.example }, verdict: block, reason: r }\n\
             \x20 - { id: trial, mode: shadow, exec: { path: /usr/bin/nc }, verdict: block, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let agents = [agent(0, "a/one", None), agent(1, "b/two", None)];
        let k = compile(&set, &agents);
        // Only a/one is governed by p: its rules, its default; b/two gets allow defaults.
        assert_eq!(k.agents.len(), 2);
        assert_eq!(k.agents[0].1.exec_default, KVerdict::Block as u8);
        assert_eq!(k.agents[1].1.exec_default, KVerdict::Allow as u8);
        let exec: Vec<_> = k
            .exec
            .iter()
            .map(|((p, a), v)| (p.to_str().unwrap(), *a, v.rule_id, v.verdict))
            .collect();
        assert_eq!(
            exec,
            [
                ("/usr/bin/curl", 1, 1, KVerdict::Block as u8),
                ("/usr/bin/git", 1, 2, KVerdict::Allow as u8)
            ]
        );
        let net: Vec<_> = k
            .net4
            .keys()
            .map(|(prefix, data)| (*prefix, *data))
            .collect();
        assert_eq!(net, [(48, [0, 0, 0, 1, 169, 254, 0, 0])]);
        assert_eq!(k.rule_names[2], "p/meta");
        let missing = k.unenforceable.join("\n");
        for id in ["p/meta", "p/tls", "p/bin", "p/key", "p/trial"] {
            assert!(
                missing.contains(&format!("rule {id} ")),
                "{id} not listed:\n{missing}"
            );
        }
        assert!(
            !missing.contains("p/api"),
            "HTTP rules are the proxy's:\n{missing}"
        );
    }

    #[test]
    fn block_wins_when_two_rules_meet_on_one_key() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { label: bot }\nrules:\n\
             \x20 - { id: allow, network: { cidr: 10.0.0.0/8 }, verdict: allow, reason: r }\n\
             \x20 - { id: block, network: { cidr: 10.0.0.0/8 }, verdict: block, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "x", Some("bot"))]);
        let v: Vec<_> = k.net4.values().map(|v| (v.rule_id, v.verdict)).collect();
        assert_eq!(v, [(2, KVerdict::Block as u8)]);
    }
}
