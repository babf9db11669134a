//! Sequence rules → kernel tables: one sequence class per rule and agent (its arming paths as
//! path rules, its direct-egress allowlist as destination rules; see
//! governance_common::sequence), and the agent class's list of its sequence rules.
//!
//! An enforcing rule's class also holds its arming paths by identity (resolved as file rules'
//! paths are, see [`Identities::resolve`]), restricting the arming accesses: arming is by the
//! opened path, so the kernel's `inode_link` and `inode_rename` refuse an agent a new name that
//! would take a classified object out of the arming paths (a hard link elsewhere, a move out,
//! a rename of the arming directory or of a directory above it). Only those hooks read them:
//! `file_open` reads the agent class's identities, never a sequence class's.

use governance_common::sequence::{MAX_SEQ_RULES, SeqEntry, SeqList};

use super::*;
use crate::policy::Sequence;

/// The sequence classes of one agent's sequence rules (`rules`: the rule, its kernel rule id,
/// its matcher), appended to `classes`, and the list its classes carry; None without any.
pub(super) fn classes(
    rules: &[(&Rule, u32, &Sequence)],
    identities: &mut Identities,
    new_class: &mut impl FnMut() -> u32,
    classes: &mut Vec<Class>,
    errors: &mut Vec<String>,
    agent: &str,
) -> Option<SeqList> {
    if rules.is_empty() {
        return None;
    }
    if rules.len() > MAX_SEQ_RULES {
        errors.push(format!(
            "agent {agent}: {} sequence rules; the kernel holds {MAX_SEQ_RULES} per agent",
            rules.len()
        ));
        return None;
    }
    let mut list = SeqList {
        len: rules.len() as u32,
        ..Default::default()
    };
    for (i, (rule, rule_id, seq)) in rules.iter().enumerate() {
        let class = new_class();
        let mut tables = Rules::default();
        // The arming paths as restricting rules, for the identity resolution only.
        let mut names = Rules::default();
        let held = Ranked {
            specificity: [0; 4],
            rule: rule_ref(*rule_id, KVerdict::Block, 0),
            shadow: false,
        };
        let arming = Ranked {
            specificity: [0; 4],
            rule: rule_ref(*rule_id, KVerdict::Allow, 0),
            shadow: false,
        };
        let (path, exact) = match &seq.after {
            PathMatch::Exact(p) => (p, true),
            PathMatch::Prefix(p) => (p, false),
        };
        for letter in letters(&seq.after_access) {
            for spelled in identities.spellings(path) {
                let node = Node {
                    path: spelled,
                    exact,
                };
                names
                    .paths
                    .entry(letter)
                    .or_default()
                    .push((node.clone(), held));
                tables.paths.entry(letter).or_default().push((node, arming));
            }
        }
        let ranges = if seq.ports_except.is_empty() {
            vec![(0, u16::MAX)]
        } else {
            seq.ports_except.clone()
        };
        for (bits, addr) in seq.network_except.iter().flat_map(|n| n.ipv6_networks()) {
            for (lo, hi) in &ranges {
                tables.net.push((
                    bits,
                    masked(addr.octets(), bits),
                    arming,
                    *lo,
                    *hi,
                    proto::ANY,
                    false,
                ));
            }
        }
        let mut c = build_class(class, &tables, errors, agent);
        // A shadow rule restricts nothing, so it keeps no name from the agent either.
        if rule.mode != Mode::Shadow {
            // Its path tables are the class's own again (the errors too): only the identities
            // are kept.
            let mut named = build_class(class, &names, &mut Vec::new(), agent);
            identities.resolve(&mut named, &Beside::new(Class::default()));
            c.idents = named.idents;
        }
        classes.push(c);
        list.entries[i] = SeqEntry {
            state: bucket_id(&rule.id),
            window_ns: seq
                .window
                .map_or(0, |w| u64::try_from(w.as_nanos()).unwrap_or(u64::MAX)),
            rule_id: *rule_id,
            class,
            verdict: kverdict(rule.verdict) as u8,
            shadow: u8::from(rule.mode == Mode::Shadow),
            _pad: [0; 6],
        };
    }
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::compile::class::answer;

    /// `set` compiled as generation 3 for one agent, `agents/a`, with no daemon files.
    fn compiled(set: &crate::policy::PolicySet) -> KernelPolicy {
        let agent = AgentCgroup {
            index: 0,
            name: "a".into(),
            rel: "agents/a".into(),
            label: None,
            path: "/sys/fs/cgroup/agents/a".into(),
            cgroup_id: 42,
            pod: None,
        };
        let protect = Protect {
            cgroup_root: "/sys/fs/cgroup".into(),
            no_write: vec![],
            no_access: vec![],
            system_links: Vec::new(),
        };
        compile(set, &[agent], 3, &protect)
    }

    #[test]
    fn a_sequence_rule_gets_its_own_class_and_a_stable_state_id() {
        let set = crate::policy::parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: agents/a }\nrules:\n\
             \x20 - { id: x, file: { prefix: /data }, verdict: allow, reason: r }\n\
             \x20 - id: pii\n    sequence:\n      after: { file: { prefix: /data/pii, access: [read] } }\n      then: { network: { except: { cidr: 10.0.0.0/8, ports: 443 } } }\n      for: 2s\n    verdict: block\n    reason: r\n"
                .into(),
        )])
        .unwrap();
        let k = compiled(&set);
        assert!(k.errors.is_empty(), "{:?}", k.errors);
        let (class, list) = k.sequences[0];
        assert_eq!(class, k.classes[0].id);
        assert_eq!(list.len, 1);
        let e = list.entries[0];
        assert_eq!(e.rule_id, class_id(3, 2));
        assert_eq!(e.state, bucket_id("p/pii"), "the same in every generation");
        assert_eq!(e.window_ns, 2_000_000_000);
        assert_eq!(e.verdict, KVerdict::Block as u8);
        let seq = k
            .classes
            .iter()
            .find(|c| c.id == e.class)
            .expect("its class");
        assert!(answer(seq, access::READ, b"/data/pii/x.csv\0").is_some());
        assert!(answer(seq, access::WRITE, b"/data/pii/x.csv\0").is_none());
        assert!(answer(seq, access::READ, b"/data/public\0").is_none());
        let mapped: [u8; 16] = std::net::Ipv4Addr::new(10, 0, 0, 0)
            .to_ipv6_mapped()
            .octets();
        let allow = &seq.net[&(104, mapped)];
        assert_eq!((allow[0].port_lo, allow[0].port_hi), (443, 443));
        // The agent's own class has no trace of it.
        assert!(
            k.classes[0]
                .paths
                .keys()
                .all(|(_, p)| !p.starts_with(b"/data/pii"))
        );
    }

    #[test]
    fn an_enforcing_sequence_rule_holds_its_arming_paths_by_identity() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("seq-ident-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pii")).unwrap();
        std::fs::write(dir.join("pii/x.csv"), "x").unwrap();
        let d = dir.display();
        let set = crate::policy::parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: agents/a }}\nrules:\n\
                 \x20 - id: pii\n    sequence: {{ after: {{ file: {{ prefix: {d}/pii, access: [read] }} }} }}\n    verdict: block\n    reason: r\n\
                 \x20 - id: watched\n    mode: shadow\n    sequence: {{ after: {{ file: {{ prefix: {d}/pii, access: [read] }} }} }}\n    verdict: block\n    reason: r\n"
            ),
        )])
        .unwrap();
        let k = compiled(&set);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(k.errors.is_empty(), "{:?}", k.errors);
        let list = k.sequences[0].1;
        let class = |i: usize| {
            k.classes
                .iter()
                .find(|c| c.id == list.entries[i].class)
                .expect("its class")
        };
        let meta = std::fs::metadata(std::env::temp_dir()).unwrap();
        let (dev, above) = (crate::kernel::kernel_dev(meta.dev()), meta.ino());
        let enforcing = class(0);
        let pii = enforcing
            .idents
            .iter()
            .find(|(k, _)| k.2 == SCOPE_SELF)
            .map(|(_, v)| v)
            .expect("the arming directory by identity");
        assert_eq!(pii.rules[0].enforce.rule_id, list.entries[0].rule_id);
        assert!(identities::restricts(&pii.rules[0]), "restricts the read");
        assert!(!has(&pii.rules[1]), "and no other access");
        assert!(
            enforcing.idents.contains_key(&(dev, above, SCOPE_HOLDS, 0)),
            "the directories above it keep their names"
        );
        assert!(enforcing.idents.contains_key(&(dev, 0, SCOPE_DEVICE, 0)));
        // The arming itself is still by path, allowing: the open is not decided by it.
        assert_eq!(
            answer(
                enforcing,
                access::READ,
                format!("{d}/pii/x.csv\0").as_bytes()
            )
            .map(|p| p.enforce.verdict),
            Some(KVerdict::Allow as u8)
        );
        assert!(class(1).idents.is_empty(), "a shadow rule keeps no name");
    }
}
