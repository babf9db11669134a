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
