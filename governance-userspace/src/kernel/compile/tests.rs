use super::*;
use crate::policy::parse;
use std::net::IpAddr;

fn agent(index: usize, rel: &str, label: Option<&str>) -> AgentCgroup {
    AgentCgroup {
        index,
        name: rel.into(),
        rel: rel.into(),
        label: label.map(Into::into),
        path: PathBuf::from("/sys/fs/cgroup").join(rel),
        cgroup_id: 1000 + index as u64,
        pod: None,
    }
}

fn protect() -> Protect {
    Protect {
        cgroup_root: "/sys/fs/cgroup".into(),
        no_write: vec!["/etc/governance".into()],
        no_access: vec!["/var/lib/governance/audit".into()],
        system_links: Vec::new(),
    }
}

fn lookup(c: &Class, letter: u8, path: &str) -> Option<RulePair> {
    // What the kernel's longest-prefix match does.
    let mut q = path.as_bytes().to_vec();
    q.push(0);
    c.paths
        .iter()
        .filter(|((l, n), _)| *l == letter && q.starts_with(n))
        .max_by_key(|((_, n), _)| n.len())
        .map(|(_, v)| *v)
}

/// What the kernel's file_open decides from the path rules: the class's answer, and the
/// shared built-ins' where they have a rule and it is more severe.
fn decided(k: &KernelPolicy, c: &Class, letter: u8, path: &str) -> Option<RulePair> {
    let own = lookup(c, letter, path);
    let id = governance_common::builtin_class(c.id, c.value.allow);
    let shared = k
        .builtins
        .iter()
        .find(|b| b.id == id)
        .and_then(|b| lookup(b, letter, path))
        .filter(|p| p.enforce.present != 0);
    match (own, shared) {
        (Some(o), Some(s)) if o.enforce.present != 0 && o.enforce.verdict >= s.enforce.verdict => {
            Some(o)
        }
        (o, None) => o,
        (_, s) => s,
    }
}

/// Does a rule at node `rule` cover the node `other`? (The definition `NodeIndex::covering`
/// implements with one lookup per directory level.)
fn covers(rule: &Node, other: &Node) -> bool {
    if rule.exact {
        return other.exact && other.path == rule.path;
    }
    let dir = &rule.path;
    other.path == *dir
        || (other.path.starts_with(dir)
            && (dir.last() == Some(&b'/') || other.path.get(dir.len()) == Some(&b'/')))
}

/// What `build_class` must store for one letter's rules, by the definition: every node (and the
/// exact node a prefix not ending in `/` also stores), in the nodes' order, holds the best of
/// the rules of every node that covers it, taken in the nodes' order; of two nodes with one key
/// (`/d` and `/d/`), the later. The straightforward way: every node against every node.
fn reference_paths(list: &[(Node, Ranked)]) -> BTreeMap<Vec<u8>, RulePair> {
    let mut nodes: BTreeSet<Node> = BTreeSet::new();
    for (n, _) in list {
        nodes.insert(n.clone());
        if !n.exact && n.path.last() != Some(&b'/') {
            nodes.insert(Node {
                path: n.path.clone(),
                exact: true,
            });
        }
    }
    let mut out = BTreeMap::new();
    for node in &nodes {
        let covering = nodes
            .iter()
            .filter(|k| covers(k, node))
            .flat_map(|k| list.iter().filter(move |(n, _)| n == k))
            .map(|(_, r)| r);
        if let Some(pair) = pair_of(covering) {
            out.insert(Node::bytes_of(&node.path, node.exact), pair);
        }
    }
    out
}

/// One letter's rules as `build_class` stores them, and its exact exec rules.
fn built(list: &[(Node, Ranked)]) -> (BTreeMap<Vec<u8>, RulePair>, BTreeMap<PathBuf, RulePair>) {
    let exec_exact: Vec<(PathBuf, Node, ExecIdentity)> = list
        .iter()
        .filter(|(n, _)| n.exact)
        .map(|(n, _)| {
            let written = PathBuf::from(String::from_utf8_lossy(&n.path).into_owned());
            (written, n.clone(), None)
        })
        .collect();
    let rules = Rules {
        paths: [(access::EXEC, list.to_vec())].into(),
        exec_exact,
        ..Default::default()
    };
    let mut errors = Vec::new();
    let c = build_class(1, &rules, &mut errors, "test");
    assert!(errors.is_empty(), "{errors:?}");
    let paths = c
        .paths
        .into_iter()
        .map(|((l, bytes), pair)| {
            assert_eq!(l, access::EXEC);
            (bytes, pair)
        })
        .collect();
    let exec = c.exec.into_iter().map(|(p, (pair, _))| (p, pair)).collect();
    (paths, exec)
}

/// The exact exec rules' answers, by the definition: the answer at their exact node.
fn reference_exec(list: &[(Node, Ranked)]) -> BTreeMap<PathBuf, RulePair> {
    let paths = reference_paths(list);
    list.iter()
        .filter(|(n, _)| n.exact)
        .filter_map(|(n, _)| {
            let pair = paths.get(&Node::bytes_of(&n.path, true))?;
            Some((
                PathBuf::from(String::from_utf8_lossy(&n.path).into_owned()),
                *pair,
            ))
        })
        .collect()
}

/// The sweep (`pushed_down`) stores what the definition does: for exact and prefix nodes,
/// trailing and doubled slashes, the root, and paths that share a prefix but not a directory
/// (`/a/b-c` sorts between `/a/b` and `/a/b/c` by bytes). Two rules per node, of one rank, so the
/// order within a node and between nodes is checked too.
#[test]
fn path_tables_hold_the_best_covering_rule_of_every_node() {
    let paths = [
        "/", "/a", "/a/", "/a/b", "/a/b/", "/a/bc", "/a/b-c", "/a/b.c/d", "/a/b/c", "/ab", "//a",
        "/a//b", "a/b", "a",
    ];
    let list: Vec<(Node, Ranked)> = paths
        .iter()
        .flat_map(|p| {
            [false, true].map(|exact| Node {
                path: p.as_bytes().to_vec(),
                exact,
            })
        })
        .enumerate()
        .flat_map(|(i, n)| {
            [0, 1].map(|j| {
                // Later nodes rank higher, `/a/b` and `/a/b/` above all; a node's two alike.
                let rank = if n.path.starts_with(b"/a/b") && n.path.len() <= 5 {
                    100
                } else {
                    i as u32
                };
                let r = Ranked {
                    specificity: [rank, 0, 0, 0],
                    rule: rule_ref(2 * i as u32 + j, KVerdict::Block, 0),
                    shadow: j == 1 && i % 3 == 0,
                };
                (n.clone(), r)
            })
        })
        .collect();
    let (paths, exec) = built(&list);
    assert_eq!(paths, reference_paths(&list));
    assert_eq!(exec, reference_exec(&list));
    // Not vacuous. `/a/b/c` is below `/a/b` and `/a/b/`, which rank alike: the first rule of
    // the first node (`/a/b`, a prefix: rule 12) decides. `/a/b-c` is not below them: its own
    // exact node's first rule (26) decides.
    assert_eq!(paths[&b"/a/b/c\0"[..]].enforce.rule_id, 12);
    assert_eq!(paths[&b"/a/b-c\0"[..]].enforce.rule_id, 26);
}

/// An exact exec rule carries the identity of what its path names when the generation is
/// compiled, as `stat` answers (through a symlink, the file behind it), for the install to
/// write; a missing path carries none (the install looks again and says why it skips it).
#[test]
fn exact_exec_rules_carry_what_their_path_names_now() {
    use std::os::unix::fs::MetadataExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::write(d.join("tool"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink(d.join("tool"), d.join("alias")).unwrap();
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\nrules:\n\
             \x20 - {{ id: t, exec: {{ path: {ds}/tool }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: a, exec: {{ path: {ds}/alias }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: m, exec: {{ path: {ds}/missing }}, verdict: block, reason: r }}\n"
        ),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
    let exec = &k.classes[0].exec;
    let meta = std::fs::metadata(d.join("tool")).unwrap();
    let tool = Some((crate::kernel::kernel_dev(meta.dev()), meta.ino()));
    assert_eq!(exec[&d.join("tool")].1, tool);
    assert_eq!(exec[&d.join("alias")].1, tool);
    assert_eq!(exec[&d.join("missing")].1, None);
    assert_eq!(exec[&d.join("missing")].0.enforce.rule_id, class_id(1, 3));
}

/// Red team round 27: a shadow policy selecting a parent makes the parent the agent (the
/// outermost root; a descendant never leaves its agent's policy), so the enforcing policy of a
/// cgroup below it did not apply, silently. Round 34: so did an enforcing one below an
/// enforcing parent (an org-wide baseline on `team/*`, a team's stricter policy on a cgroup
/// below one of its agents: `policy test` applied the stricter one, the kernel the baseline).
/// Each is said as not enforced (the generation is then refused without degraded mode), for a
/// literal cgroup and for a glob whose every match is below the root. Controls: a shadow
/// policy on a cgroup apart, a glob that also matches beside the agent, a sibling's prefix.
#[test]
fn an_enforcing_policy_inside_another_agent_is_not_enforced_and_said() {
    let text = "name: outer\nmode: shadow\nagents: { cgroup: team }\n\
                ---\nname: inner\nagents: { cgroup: team/agent }\n\
                ---\nname: apart\nmode: shadow\nagents: { cgroup: other }\n\
                ---\nname: boss\nagents: { cgroup: x }\n\
                ---\nname: worker\nagents: { cgroup: x/y }\n\
                ---\nname: workers\nagents: { cgroup: 'x/pool/*' }\n\
                ---\nname: anywhere\nagents: { cgroup: '*/z' }\n\
                ---\nname: sibling\nagents: { cgroup: 'xx/*' }\n";
    let set = parse(&[("p.yaml".into(), text.into())]).unwrap();
    let agents = [
        agent(0, "team", None),
        agent(1, "other", None),
        agent(2, "x", None),
    ];
    let k = compile(&set, &agents, 1, &protect());
    let mut said = k.unenforceable.clone();
    said.sort();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with("policy inner selects cgroup team/agent, inside agent team that only shadow policies govern"),
        "{said:?}"
    );
    assert!(
        said[1].starts_with(
            "policy worker selects cgroup x/y, inside agent x: the outermost agent root governs"
        ),
        "{said:?}"
    );
    assert!(
        said[2].starts_with("policy workers selects cgroup x/pool/*, inside agent x:"),
        "{said:?}"
    );
}

/// Red team round 27: the kernel names a file by where symlinks lead, so a rule written through
/// a link ranks, at the path it leads to, by that path. `block prefix: <d>/s` (a link to
/// `<d>/app/data/secrets`) ranked by its written length lost there to the shorter-written but
/// longer-resolved `allow prefix: <d>/app/data`, and the agent read the secrets.
#[test]
fn a_rule_through_a_symlink_ranks_by_where_it_leads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("app/data/secrets")).unwrap();
    std::fs::write(d.join("app/data/secrets/key"), "k").unwrap();
    std::fs::write(d.join("app/data/other"), "o").unwrap();
    std::os::unix::fs::symlink(d.join("app/data/secrets"), d.join("s")).unwrap();
    std::os::unix::fs::symlink(d.join("app/data/other"), d.join("o")).unwrap();
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\ndefaults: {{ file: block }}\nrules:\n\
             \x20 - {{ id: app, file: {{ prefix: {ds}/app/data }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: secrets, file: {{ prefix: {ds}/s/ }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: other, file: {{ path: {ds}/o }}, verdict: block, reason: r }}\n"
        ),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
    let c = &k.classes[0];
    let rule = |path: &Path| {
        lookup(c, access::READ, path.to_str().unwrap())
            .map(|p| (p.enforce.rule_id, p.enforce.verdict))
    };
    let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
    // As the kernel names them: through the link, both rules cover the secrets; the link's
    // rule, 8 bytes longer there, is the most specific.
    assert_eq!(
        rule(&d.join("app/data/secrets/key")),
        Some((class_id(1, 2), b))
    );
    assert_eq!(rule(&d.join("app/data/other")), Some((class_id(1, 3), b)));
    // The control: the rest of the directory is still allowed.
    std::fs::write(d.join("app/data/x"), "x").unwrap();
    assert_eq!(rule(&d.join("app/data/x")), Some((class_id(1, 1), a)));
    // And by identity, as file_open finds them.
    let c = &whole(&k, &k.classes[0]);
    assert_eq!(
        verdicts(c, ident(&d.join("app/data/secrets")), SCOPE_SELF),
        Some([Some((2, b)); 4])
    );
}

mod sweep {
    use proptest::prelude::*;

    use super::*;

    fn node() -> impl Strategy<Value = Node> {
        let part = prop::sample::select(vec!["a", "b", "a-b", "a.b", "ab", "", " "]);
        (
            prop::collection::vec(part, 0..5),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(parts, relative, slash, exact)| {
                let mut path = if relative { String::new() } else { "/".into() };
                path.push_str(&parts.join("/"));
                if slash && !path.ends_with('/') {
                    path.push('/');
                }
                if path.is_empty() {
                    path.push('a');
                }
                Node {
                    path: path.into_bytes(),
                    exact,
                }
            })
    }

    fn ranked() -> impl Strategy<Value = (u32, u8, bool)> {
        (0..3u32, 0..3u8, any::<bool>())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The sweep against the definition, over generated rule lists: ranks that tie, shadow
        /// rules, and names that sort between a directory and what is below it.
        #[test]
        fn generated_path_tables_match_the_definition(
            rules in prop::collection::vec((node(), ranked()), 1..40)
        ) {
            let verdicts = [KVerdict::Allow, KVerdict::Block, KVerdict::Escalate];
            let list: Vec<(Node, Ranked)> = rules
                .into_iter()
                .enumerate()
                .map(|(i, (n, (spec, v, shadow)))| {
                    let r = Ranked {
                        specificity: [spec, 0, 0, 0],
                        rule: rule_ref(i as u32 + 1, verdicts[v as usize], 0),
                        shadow,
                    };
                    (n, r)
                })
                .collect();
            let (paths, exec) = built(&list);
            prop_assert_eq!(paths, reference_paths(&list));
            prop_assert_eq!(exec, reference_exec(&list));
        }

        /// A class decided beside a shared built-in class answers as it did before the
        /// built-ins' answers were kept ([`Beside`]) and before the queries outside every first
        /// directory of the class were sent to the built-ins alone ([`class::Tops`]): the
        /// answer of both tables, looked up in full, for every query, asked twice.
        #[test]
        fn answers_beside_the_built_ins_are_the_tables_own(
            own in prop::collection::vec((node(), ranked(), 0..2usize), 0..12),
            shared in prop::collection::vec((node(), ranked(), 0..2usize), 0..12),
            queries in prop::collection::vec(node(), 1..24),
        ) {
            let letters = [access::READ, access::WRITE];
            let verdicts = [KVerdict::Allow, KVerdict::Block, KVerdict::Escalate];
            let class = |list: Vec<(Node, (u32, u8, bool), usize)>| {
                let mut rules = Rules::default();
                for (i, (n, (spec, v, shadow), l)) in list.into_iter().enumerate() {
                    let r = Ranked {
                        specificity: [spec, 0, 0, 0],
                        rule: rule_ref(i as u32 + 1, verdicts[v as usize], 0),
                        shadow,
                    };
                    rules.paths.entry(letters[l]).or_default().push((n, r));
                }
                build_class(1, &rules, &mut Vec::new(), "test")
            };
            let (own, reference_table) = (class(own), class(shared.clone()));
            let builtin = Beside::new(class(shared));
            let tops = class::Tops::of(&own);
            for _ in 0..2 {
                for q in &queries {
                    let query = Node::bytes_of(&q.path, q.exact);
                    for l in letters {
                        let whole = class::beside(class::answer(&own, l, &query), || {
                            class::answer(&reference_table, l, &query)
                        });
                        prop_assert_eq!(answer_with(&own, &builtin, l, &query), whole);
                        prop_assert_eq!(tops.answer_with(&own, &builtin, l, &query), whole);
                    }
                }
            }
        }
    }
}

#[test]
fn path_rules_push_down_so_the_longest_match_is_the_best_rule() {
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { cgroup: 'a/*' }\ndefaults: { file: allow }\nrules:\n\
         \x20 - { id: home, file: { prefix: /home/u }, verdict: allow, reason: r }\n\
         \x20 - { id: ssh, file: { prefix: /home/u/.ssh }, verdict: block, reason: r }\n\
         \x20 - { id: pub, file: { path: /home/u/.ssh/id.pub, access: [read] }, verdict: allow, reason: r }\n\
         \x20 - { id: trial, mode: shadow, file: { prefix: /home/u/.ssh/keys }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n"
            .into(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
    assert!(k.errors.is_empty(), "{:?}", k.errors);
    let c = &k.classes[0];
    let rule = |n: u32| class_id(1, n);
    let r = |p: &str| lookup(c, access::READ, p).map(|v| (v.enforce.rule_id, v.shadow.rule_id));
    assert_eq!(r("/home/u/notes"), Some((rule(1), 0)));
    assert_eq!(r("/home/u/.ssh"), Some((rule(2), 0)));
    assert_eq!(r("/home/u/.sshx"), Some((rule(1), 0)));
    assert_eq!(r("/home/u/.ssh/id"), Some((rule(2), 0)));
    assert_eq!(r("/home/u/.ssh/id.pub"), Some((rule(3), 0)));
    // Only reading is allowed by the exact rule; writing falls back to the prefix block.
    let w = lookup(c, access::WRITE, "/home/u/.ssh/id.pub").unwrap();
    assert_eq!(w.enforce.rule_id, rule(2));
    // The shadow rule ranks above the enforcing one and is carried beside it.
    assert_eq!(r("/home/u/.ssh/keys/k"), Some((rule(2), rule(4))));
    assert_eq!(r("/var/x"), None);
    // Built-ins: the cgroup tree is not writable except the agent's own subtree.
    let w = |p: &str| decided(&k, c, access::WRITE, p).map(|v| v.enforce.verdict);
    assert_eq!(
        w("/sys/fs/cgroup/other/cgroup.procs"),
        Some(KVerdict::Block as u8)
    );
    assert_eq!(
        w("/sys/fs/cgroup/a/one/child/cgroup.procs"),
        Some(KVerdict::Allow as u8)
    );
    assert_eq!(w("/etc/governance/p.yaml"), Some(KVerdict::Block as u8));
    // The daemon's secrets: neither written nor read.
    let audit = "/var/lib/governance/audit/audit-000001.jsonl";
    assert_eq!(w(audit), Some(KVerdict::Block as u8));
    assert_eq!(
        decided(&k, c, access::READ, audit).map(|v| v.enforce.verdict),
        Some(KVerdict::Block as u8)
    );
    // The policy directory stays readable (its files are no secret).
    assert_eq!(decided(&k, c, access::READ, "/etc/governance/p.yaml"), None);
    // The kernel's settings are not writable; the agent's own cgroup still is.
    for p in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/fs/binfmt_misc/register",
        "/proc/sysrq-trigger",
        "/sys/kernel/uevent_helper",
    ] {
        assert_eq!(w(p), Some(KVerdict::Block as u8), "{p}");
    }
    assert_eq!(
        lookup(c, access::READ, "/proc/sys/kernel/core_pattern"),
        None
    );
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { cgroup: 'a/*' }\nkernel: { allow_kernel_settings: true }\n".into(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
    let w = |p: &str| lookup(&k.classes[0], access::WRITE, p).map(|v| v.enforce.verdict);
    assert_eq!(w("/proc/sys/kernel/core_pattern"), None);
    assert_eq!(
        w("/sys/fs/cgroup/other/cgroup.procs"),
        Some(KVerdict::Block as u8)
    );
}

#[test]
fn network_alternatives_are_ordered_by_precedence_and_pushed_down() {
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { label: bot }\ndefaults: { network: block }\nrules:\n\
         \x20 - { id: tls, network: { cidr: 10.0.0.0/8, ports: 443 }, verdict: allow, reason: r }\n\
         \x20 - { id: ten, network: { cidr: 10.0.0.0/8 }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n\
         \x20 - { id: db, network: { cidr: 10.1.0.0/16, ports: 5432, protocol: tcp }, verdict: allow, reason: r }\n\
         \x20 - { id: v6, network: { cidr: 'fd00::/8' }, verdict: block, reason: r }\n"
            .into(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "x", Some("bot"))], 2, &protect());
    let c = &k.classes[0];
    assert_eq!(c.value.net_default.enforce.verdict, KVerdict::Block as u8);
    let node = |bits: u32, a: IpAddr| {
        let octets = match a {
            IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            IpAddr::V6(v) => v.octets(),
        };
        c.net[&(bits, octets)]
            .iter()
            .map(|e| (e.rule.rule_id & 0xffff, e.port_lo, e.port_hi, e.proto))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        node(104, "10.0.0.0".parse().unwrap()),
        [(1, 443, 443, 0), (2, 0, 65535, 0)]
    );
    assert_eq!(
        node(112, "10.1.0.0".parse().unwrap()),
        [(3, 5432, 5432, 6), (1, 443, 443, 0), (2, 0, 65535, 0)]
    );
    assert_eq!(node(8, "fd00::".parse().unwrap()), [(4, 0, 65535, 0)]);
    // Generation 2 uses slot 0: ids carry no slot bit.
    assert_eq!(c.id, class_id(2, 1));
}

#[test]
fn built_in_protections_are_relaxed_only_when_no_policy_objects() {
    let doc = |name: &str, kernel: &str| {
        (
            format!("{name}.yaml").into(),
            format!("name: {name}\nagents: {{ label: bot }}\n{kernel}"),
        )
    };
    let bits = |docs: Vec<(std::path::PathBuf, String)>| {
        let set = parse(&docs).unwrap();
        // (Every agent reaches the proxy: not a relaxation.)
        compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect()).classes[0]
            .value
            .allow
            & !governance_common::allow::PROXY
    };
    use governance_common::allow::{LOADER_EXEC, MOUNTS, RAW_SOCKETS, USER_NAMESPACES};
    assert_eq!(bits(vec![doc("a", "")]), 0);
    assert_eq!(
        bits(vec![
            doc(
                "a",
                "kernel: { allow_mounts: true, allow_loader_exec: true }"
            ),
            doc("b", "kernel: { allow_loader_exec: false }"),
        ]),
        MOUNTS
    );
    assert_eq!(
        bits(vec![doc("a", "kernel: { allow_loader_exec: true }")]),
        LOADER_EXEC
    );
    assert_eq!(
        bits(vec![doc("a", "kernel: { allow_raw_sockets: true }")]),
        RAW_SOCKETS
    );
    assert_eq!(
        bits(vec![
            doc(
                "a",
                "kernel: { allow_raw_sockets: true, allow_user_namespaces: true }"
            ),
            doc("b", "kernel: { allow_raw_sockets: false }"),
        ]),
        USER_NAMESPACES
    );
}

/// The node's system files are refused to agents for writing, creating and truncating (not
/// reading), unless a policy allows system files; a protected file (not a directory) is
/// refused by its own path too.
#[test]
fn system_files_are_refused_unless_a_policy_allows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("governance");
    std::fs::write(&exe, "x").unwrap();
    let mut protect = protect();
    protect.no_write.push(exe.clone());
    let class = |kernel: &str| {
        let set = parse(&[(
            "p.yaml".into(),
            format!("name: p\nagents: {{ label: bot }}\n{kernel}"),
        )])
        .unwrap();
        compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect)
    };
    let refused = |k: &KernelPolicy, letter: u8, path: &str| {
        decided(k, &k.classes[0], letter, path)
            .is_some_and(|r| r.enforce.present != 0 && r.enforce.verdict == KVerdict::Block as u8)
    };
    let k = class("");
    for path in [
        "/etc/cron.d/job",
        "/etc/ld.so.preload",
        "/etc/systemd/system/x.service",
        "/usr/bin/python3",
        "/var/spool/cron/crontabs/root",
        "/run/systemd/transient/x.service",
        "/root/.ssh/authorized_keys",
        "/root/.bashrc",
    ] {
        for letter in [access::WRITE, access::CREATE, access::TRUNCATE] {
            assert!(refused(&k, letter, path), "{path} {}", letter as char);
        }
        assert!(!refused(&k, access::READ, path), "{path} stays readable");
    }
    assert!(refused(&k, access::WRITE, exe.to_str().unwrap()));
    assert!(!refused(&k, access::WRITE, "/root/.cache/pip/x"));
    assert!(!refused(&k, access::WRITE, "/var/lib/app/data"));
    // The agent's own cgroup stays writable below the kernel settings' /sys (the hole in
    // the shared built-ins); other cgroups do not.
    assert!(!refused(
        &k,
        access::WRITE,
        "/sys/fs/cgroup/x/child/cgroup.procs"
    ));
    assert!(refused(
        &k,
        access::WRITE,
        "/sys/fs/cgroup/other/cgroup.procs"
    ));
    assert!(refused(&k, access::WRITE, "/sys/kernel/uevent_helper"));
    // Stored once: the class holds none of the shared nodes.
    assert!(
        !k.classes[0]
            .paths
            .keys()
            .any(|(_, n)| n.starts_with(b"/usr/") || n.starts_with(b"/etc/")),
        "{:?}",
        k.classes[0].paths.keys()
    );
    // The orchestrator's credentials are refused for reading too (red team round 11: with
    // them the API server runs a pod outside the agent), unless runtime sockets are allowed;
    // the rest of /etc and the kubelet's other files stay readable.
    for path in [
        "/etc/kubernetes/admin.conf",
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "/var/lib/kubelet/pods/0a1b/volumes/kubernetes.io~secret/db/password",
        "/etc/rancher/k3s/k3s.yaml",
        "/root/.kube/config",
    ] {
        assert!(refused(&k, access::READ, path), "{path}");
    }
    for path in ["/etc/hosts", "/var/lib/kubelet/config.yaml"] {
        assert!(!refused(&k, access::READ, path), "{path}");
    }
    let runtimes = class("kernel: { allow_runtime_sockets: true }");
    assert!(!refused(
        &runtimes,
        access::READ,
        "/etc/kubernetes/admin.conf"
    ));
    assert!(refused(
        &runtimes,
        access::WRITE,
        "/etc/kubernetes/admin.conf"
    ));
    let relaxed = class("kernel: { allow_system_files: true }");
    assert!(refused(
        &relaxed,
        access::READ,
        "/etc/kubernetes/admin.conf"
    ));
    assert!(!refused(&relaxed, access::WRITE, "/etc/cron.d/job"));
    assert!(!refused(&relaxed, access::CREATE, "/usr/local/lib/x.so"));
    // The daemon's own files are never relaxed.
    assert!(refused(&relaxed, access::WRITE, exe.to_str().unwrap()));
    assert!(refused(&relaxed, access::CREATE, "/etc/governance/p.yaml"));
    // Many agents share one built-in class per combination of relaxations.
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { cgroup: 'a/*' }\n".into(),
    )])
    .unwrap();
    let agents: Vec<_> = (0..50).map(|i| agent(i, &format!("a/{i}"), None)).collect();
    let many = compile(&set, &agents, 1, &protect);
    assert_eq!(many.builtins.len(), 1);
    let per_class = many.classes[0].paths.len();
    assert!(
        per_class < 20,
        "{per_class} path entries per agent: {:?}",
        many.classes[0].paths.keys()
    );
}

#[test]
fn unix_rules_are_one_entry_per_socket_with_the_best_rule() {
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { label: bot }\ndefaults: { unix: block }\n\
         sandbox_profiles: { jail: { network: none } }\nrules:\n\
         \x20 - { id: bus, unix: { path: /run/user/1/bus }, verdict: allow, reason: r }\n\
         \x20 - { id: bus-trial, mode: shadow, unix: { path: /run/user/1/bus }, verdict: block, reason: r }\n\
         \x20 - { id: x11, unix: { abstract: /tmp/.X11-unix/X0 }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n\
         \x20 - { id: tool, exec: { path: /bin/x }, verdict: sandbox, sandbox: { profile: jail }, reason: r }\n"
            .into(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect());
    assert!(k.errors.is_empty() && k.unenforceable.is_empty(), "{k:?}");
    let c = &k.classes[0];
    assert_eq!(c.value.unix_default.enforce.verdict, KVerdict::Block as u8);
    let bus = c.unix[&UnixTarget::Path("/run/user/1/bus".into())];
    assert_eq!(bus.enforce.rule_id, class_id(1, 1));
    assert_eq!(bus.enforce.verdict, KVerdict::Allow as u8);
    // The shadow rule is more severe at the same socket: carried beside it.
    assert_eq!(bus.shadow.rule_id, class_id(1, 2));
    let x11 = c.unix[&UnixTarget::Abstract(b"/tmp/.X11-unix/X0".to_vec())];
    assert_eq!(x11.enforce.verdict, KVerdict::Escalate as u8);
    // Nothing relaxed: the runtime sockets stay refused.
    assert_eq!(c.value.allow & governance_common::allow::RUNTIME_SOCKETS, 0);
    // The sandbox profile reaches no named socket: no rules, the default blocks.
    let jail = &k.classes[k.profiles[0].2];
    assert!(jail.unix.is_empty());
    assert_eq!(
        jail.value.unix_default.enforce.verdict,
        KVerdict::Block as u8
    );
    assert_eq!(jail.value.allow, 0);
}

#[test]
fn runtime_sockets_are_relaxed_like_the_other_built_ins() {
    let doc = |kernel: &str| {
        vec![(
            std::path::PathBuf::from("a.yaml"),
            format!("name: a\nagents: {{ label: bot }}\n{kernel}"),
        )]
    };
    let bits = |docs: Vec<(std::path::PathBuf, String)>| {
        compile(
            &parse(&docs).unwrap(),
            &[agent(0, "x", Some("bot"))],
            1,
            &protect(),
        )
        .classes[0]
            .value
            .allow
            & !governance_common::allow::PROXY
    };
    use governance_common::allow::RUNTIME_SOCKETS;
    assert_eq!(bits(doc("")), 0);
    assert_eq!(
        bits(doc("kernel: { allow_runtime_sockets: true }")),
        RUNTIME_SOCKETS
    );
    let mut both = doc("kernel: { allow_runtime_sockets: true }");
    both.push((
        "b.yaml".into(),
        "name: b\nagents: { label: bot }\nkernel: { allow_runtime_sockets: false }\n".into(),
    ));
    assert_eq!(bits(both), 0);
    // Name-service sockets have a relaxation of their own: neither implies the other.
    use governance_common::allow::NAME_SERVICE_SOCKETS;
    assert_eq!(
        bits(doc("kernel: { allow_name_service_sockets: true }")),
        NAME_SERVICE_SOCKETS
    );
    let mut both = doc("kernel: { allow_name_service_sockets: true }");
    both.push((
        "b.yaml".into(),
        "name: b\nagents: { label: bot }\nkernel: { allow_name_service_sockets: false }\n".into(),
    ));
    assert_eq!(bits(both), 0);
}

#[test]
fn capabilities_are_given_back_only_where_every_list_agrees() {
    use governance_common::caps::{NET_ADMIN, SYS_ADMIN, SYS_TIME};
    let doc = |name: &str, kernel: &str| {
        (
            format!("{name}.yaml").into(),
            format!("name: {name}\nagents: {{ label: bot }}\n{kernel}"),
        )
    };
    let caps = |docs: Vec<(std::path::PathBuf, String)>| {
        let set = parse(&docs).unwrap();
        compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect()).classes[0]
            .value
            .allow_caps
    };
    let bit = |c: u32| 1u64 << c;
    assert_eq!(caps(vec![doc("a", "")]), 0);
    assert_eq!(
        caps(vec![doc(
            "a",
            "kernel: { allow_capabilities: [CAP_NET_ADMIN, sys_time] }"
        )]),
        bit(NET_ADMIN) | bit(SYS_TIME)
    );
    // A policy without the field has no say; one with a list objects to what it leaves out.
    assert_eq!(
        caps(vec![
            doc(
                "a",
                "kernel: { allow_capabilities: [CAP_NET_ADMIN, CAP_SYS_ADMIN] }"
            ),
            doc("b", ""),
            doc("c", "kernel: { allow_capabilities: [CAP_SYS_ADMIN] }"),
        ]),
        bit(SYS_ADMIN)
    );
    assert_eq!(
        caps(vec![
            doc("a", "kernel: { allow_capabilities: [CAP_NET_ADMIN] }"),
            doc("b", "kernel: { allow_capabilities: [] }"),
        ]),
        0
    );
}

#[test]
fn via_proxy_rules_are_enforced_and_gaps_are_reported() {
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { label: bot }\nrules:\n\
         \x20 - { id: px, network: { cidr: 1.2.3.4/32, via_proxy: true }, verdict: allow, reason: r }\n\
         \x20 - { id: fx, file: { path: /bin/x, access: [exec] }, verdict: block, reason: r }\n\
         \x20 - { id: api, http: { host: x.example }, verdict: block, reason: r }\n"
            .into(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect());
    let missing = k.unenforceable.join("\n");
    assert!(!missing.contains("p/px"), "{missing}");
    assert!(missing.contains("rule p/fx "), "{missing}");
    assert!(
        !missing.contains("p/api"),
        "HTTP rules are the proxy's:\n{missing}"
    );
    let mapped = "::ffff:1.2.3.4"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let entries = &k.classes[0].net[&(128, mapped)];
    assert_eq!(entries[0].via_proxy, 1, "{entries:?}");
}

/// What the kernel's `net_decision` finds in class `c` for `addr:port` over `protocol`: the
/// enforcing entry of the longest prefix that covers the address whose ports and protocol
/// match (None: the class's default decides).
/// A network rule listing several prefixes or ranges ranks, at each, by that prefix and range,
/// as the engine decides (red team round 9: a rule blocking `[10.20.0.5/32, 10.0.0.0/8]` ranked
/// as a /8 rule everywhere, and a /16 allow beat its /32 block); the kernel's lookup and the
/// engine agree at every address and port, IPv4 addresses also in their NAT64 spelling.
#[test]
fn a_rule_s_prefixes_and_ranges_each_rank_by_their_own_length() {
    let yaml = "name: p\nagents: { label: bot }\nrules:\n\
         \x20 - { id: internal, network: { cidr: [10.20.0.5/32, 10.0.0.0/8] }, verdict: block, reason: r }\n\
         \x20 - { id: apps, network: { cidr: 10.20.0.0/16 }, verdict: allow, reason: r }\n\
         \x20 - { id: db, network: { cidr: 192.168.0.0/16, ports: [5432, 1024-65535] }, verdict: block, reason: r }\n\
         \x20 - { id: web, network: { cidr: 192.168.0.0/16, ports: 5000-5500 }, verdict: allow, reason: r }\n";
    let set = parse(&[("p.yaml".into(), yaml.into())]).unwrap();
    let k = compile(&set, &[agent(0, "x", Some("bot"))], 2, &protect());
    let engine = crate::engine::Engine::new(set.clone(), 2);
    let view = engine.agent(&crate::engine::AgentRef {
        name: "x".into(),
        cgroup: "x".into(),
        label: Some("bot".into()),
        pod: None,
    });
    for (addr, port, want) in [
        ("10.20.0.5", 8200, Some("internal")),
        ("10.20.1.1", 8200, Some("apps")),
        ("10.99.0.1", 80, Some("internal")),
        ("192.168.1.1", 5432, Some("db")),
        ("192.168.1.1", 5100, Some("web")),
        ("192.168.1.1", 6000, Some("db")),
        ("172.16.0.1", 80, None),
        // The NAT64 spellings of the same addresses (red team round 15).
        ("64:ff9b::a14:5", 8200, Some("internal")),
        ("64:ff9b::a14:101", 8200, Some("apps")),
        ("64:ff9b::c0a8:101", 5432, Some("db")),
        ("64:ff9b::ac10:1", 80, None),
        ("64:ff9c::a14:5", 8200, None),
    ] {
        let rule =
            net_lookup(&k.classes[0], addr, port, proto::TCP).map(|e| e.rule.rule_id & 0xffff);
        // Rule ids in the kernel: the rule's place in the document, from 1.
        let id = |name: &str| match name {
            "internal" => 1,
            "apps" => 2,
            "db" => 3,
            _ => 4,
        };
        assert_eq!(rule, want.map(id), "kernel: {addr}:{port}");
        let d = engine.decide(
            &view,
            &crate::engine::Action::Network {
                addr: addr.parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
            },
            std::time::Instant::now(),
        );
        assert_eq!(
            d.rule.as_deref(),
            want.map(|w| format!("p/{w}")).as_deref(),
            "engine: {addr}:{port}"
        );
    }
}

fn net_lookup(c: &Class, addr: &str, port: u16, protocol: u8) -> Option<NetEntry> {
    let ip = match addr.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
    .octets();
    let (_, entries) = c
        .net
        .iter()
        .filter(|((bits, prefix), _)| class::masked(ip, *bits) == *prefix)
        .max_by_key(|((bits, _), _)| *bits)?;
    entries
        .iter()
        .find(|e| {
            e.shadow == 0
                && (e.port_lo..=e.port_hi).contains(&port)
                && (e.proto == proto::ANY || e.proto == protocol)
        })
        .copied()
}

/// A sandbox profile is never looser than its agent (red team round 5, F5): `network: proxy`
/// keeps each of the agent's network rules (IPv4 and IPv6), with what goes on sent through the
/// proxy (`via_proxy`: allow, throttle, escalate; UDP then refused by the kernel), and what
/// the agent's default allows through the proxy too; a blocked destination stays blocked, and
/// an agent whose default blocks keeps that default in the profile. `network: none` keeps no
/// rule. Only the agent's and the `proxy` profile's classes reach the proxy itself (F1).
#[test]
fn a_proxy_sandbox_keeps_its_agent_s_network_rules() {
    let doc = |default: &str| {
        format!(
            "name: p\nagents: {{ label: bot }}\n{default}\
             sandbox_profiles:\n  jail: {{ network: none }}\n  proxied: {{ network: proxy }}\nrules:\n\
             \x20 - {{ id: metadata, network: {{ cidr: 169.254.169.254/32 }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: ula, network: {{ cidr: 'fd00::/8' }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: api, network: {{ cidr: 10.0.0.0/8, ports: [443] }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: dns, network: {{ ports: [53], protocol: udp }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: ask, network: {{ cidr: 10.1.0.0/16 }}, verdict: escalate, escalate: {{ timeout: 1m }}, reason: r }}\n\
             \x20 - {{ id: slow, network: {{ cidr: 10.2.0.0/16 }}, verdict: throttle, throttle: {{ rate: 5, per: 1m }}, reason: r }}\n\
             \x20 - {{ id: tool, exec: {{ path: /bin/x }}, verdict: sandbox, sandbox: {{ profile: proxied }}, reason: r }}\n\
             \x20 - {{ id: tool2, exec: {{ path: /bin/y }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: r }}\n"
        )
    };
    use governance_common::allow::PROXY;
    let profile = |k: &KernelPolicy, name: &str| {
        let key = u32::from(profile_key("p", name));
        let (_, _, i) = k.profiles.iter().find(|(_, k, _)| *k == key).unwrap();
        *i
    };
    let verdict = |e: Option<NetEntry>| e.map(|e| (e.rule.verdict, e.via_proxy));
    let (tcp, udp) = (proto::TCP, proto::UDP);
    let [block, allow_, throttle, escalate] = [
        KVerdict::Block,
        KVerdict::Allow,
        KVerdict::Throttle,
        KVerdict::Escalate,
    ]
    .map(|v| v as u8);
    // The agent's default allows.
    let k = compile(
        &parse(&[("p.yaml".into(), doc(""))]).unwrap(),
        &[agent(0, "x", Some("bot"))],
        1,
        &protect(),
    );
    assert!(k.errors.is_empty() && k.unenforceable.is_empty(), "{k:?}");
    let own = &k.classes[k.agents[0].1];
    let proxied = &k.classes[profile(&k, "proxied")];
    let jail = &k.classes[profile(&k, "jail")];
    // Negative control: the agent itself, direct.
    assert_eq!(
        verdict(net_lookup(own, "169.254.169.254", 80, tcp)),
        Some((block, 0))
    );
    assert_eq!(
        verdict(net_lookup(own, "10.0.0.1", 443, tcp)),
        Some((allow_, 0))
    );
    assert_eq!(net_lookup(own, "1.1.1.1", 443, tcp), None);
    // The profile: the agent's blocks hold (IPv4 and IPv6), by the agent's rule.
    let metadata = net_lookup(proxied, "169.254.169.254", 80, tcp).unwrap();
    assert_eq!(
        (metadata.rule.verdict, metadata.rule.rule_id),
        (block, class_id(1, 1))
    );
    assert_eq!(
        verdict(net_lookup(proxied, "fd00::1", 443, tcp)),
        Some((block, 0))
    );
    assert_eq!(
        verdict(net_lookup(proxied, "fd00::1", 53, udp)),
        Some((block, 0))
    );
    // What goes on goes through the proxy.
    for (addr, port, protocol, v) in [
        ("10.0.0.1", 443, tcp, allow_),
        ("10.1.0.1", 80, tcp, escalate),
        ("10.2.0.1", 80, tcp, throttle),
        ("8.8.8.8", 53, udp, allow_),
        ("1.1.1.1", 443, tcp, allow_),
        ("2001:db8::1", 443, tcp, allow_),
    ] {
        assert_eq!(
            verdict(net_lookup(proxied, addr, port, protocol)),
            Some((v, 1)),
            "{addr}:{port}/{protocol}"
        );
    }
    // UDP no rule covers: the default, which blocks.
    assert_eq!(net_lookup(proxied, "1.1.1.1", 123, udp), None);
    assert_eq!(proxied.value.net_default.enforce.verdict, block);
    assert!(jail.net.is_empty(), "{:?}", jail.net);
    assert_eq!(jail.value.net_default.enforce.verdict, block);
    // The proxy itself: the agent and `proxy`, not `none`.
    assert_ne!(own.value.allow & PROXY, 0);
    assert_ne!(proxied.value.allow & PROXY, 0);
    assert_eq!(jail.value.allow & PROXY, 0);
    // The agent's default blocks: so does the profile's, and only the agent's allows go on,
    // through the proxy.
    let k = compile(
        &parse(&[("p.yaml".into(), doc("defaults: { network: block }\n"))]).unwrap(),
        &[agent(0, "x", Some("bot"))],
        1,
        &protect(),
    );
    let own = &k.classes[k.agents[0].1];
    let proxied = &k.classes[profile(&k, "proxied")];
    assert_eq!(own.value.net_default.enforce.verdict, block);
    assert_eq!(net_lookup(proxied, "1.1.1.1", 443, tcp), None);
    assert_eq!(proxied.value.net_default.enforce.verdict, block);
    assert_eq!(
        verdict(net_lookup(proxied, "10.0.0.1", 443, tcp)),
        Some((allow_, 1))
    );
    assert_eq!(
        verdict(net_lookup(proxied, "169.254.169.254", 80, tcp)),
        Some((block, 0))
    );
}

/// The bucket the programs take a token from when agent `cgroup` connects to `ip` (a /32
/// throttle rule): what `take_token` in governance-ebpf computes from the tables.
fn kernel_bucket(k: &KernelPolicy, cgroup: u64, ip: &str) -> (governance_common::BucketKey, u64) {
    let (_, i) = k.agents.iter().find(|(id, _)| *id == cgroup).unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let entry = k.classes[*i].net[&(128, ip.to_ipv6_mapped().octets())][0];
    assert_eq!(entry.rule.verdict, KVerdict::Throttle as u8);
    let (_, t) = k
        .throttles
        .iter()
        .find(|(id, _)| *id == entry.rule.rule_id)
        .expect("every throttle rule of a generation has its rate in that generation");
    let (owner, rule) = match entry.rule.aux {
        1 => (cgroup, 0),
        2 => (0, t.bucket),
        _ => (cgroup, t.bucket),
    };
    (governance_common::BucketKey { owner, rule }, t.capacity)
}

fn throttle_policy(rate: u32, extra_rule: bool) -> PolicySet {
    let extra = if extra_rule {
        "\x20 - { id: before, network: { cidr: 10.0.0.0/8 }, verdict: block, reason: r }\n"
    } else {
        ""
    };
    parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\nrules:\n{extra}\
             \x20 - {{ id: mine, network: {{ cidr: 127.0.0.1/32 }}, verdict: throttle, throttle: {{ rate: {rate}, per: 1m }}, reason: r }}\n\
             \x20 - {{ id: ours, network: {{ cidr: 127.0.0.2/32 }}, verdict: throttle, throttle: {{ rate: 5, per: 1m, key: rule }}, reason: r }}\n\
             \x20 - {{ id: any, network: {{ cidr: 127.0.0.3/32 }}, verdict: throttle, throttle: {{ rate: 5, per: 1m, key: agent }}, reason: r }}\n"
        ),
    )])
    .unwrap()
}

#[test]
fn generations_lead_to_the_same_buckets_whatever_moves() {
    let with_id = |index, rel: &str, id| AgentCgroup {
        cgroup_id: id,
        ..agent(index, rel, None)
    };
    let g1 = compile(
        &throttle_policy(3, false),
        &[with_id(0, "a/one", 501), with_id(1, "a/two", 502)],
        1,
        &protect(),
    );
    // Generation 2: the other slot, a rule before the throttles (their kernel numbers
    // move), an agent before ours (the classes move).
    let g2 = compile(
        &throttle_policy(3, true),
        &[
            with_id(0, "a/new", 503),
            with_id(1, "a/one", 501),
            with_id(2, "a/two", 502),
        ],
        2,
        &protect(),
    );
    assert!(g1.errors.is_empty() && g2.errors.is_empty());
    let (ids1, ids2): (Vec<u32>, Vec<u32>) = (
        g1.throttles.iter().map(|(id, _)| *id).collect(),
        g2.throttles.iter().map(|(id, _)| *id).collect(),
    );
    assert!(
        ids1.iter().all(|id| !ids2.contains(id)),
        "kernel rule ids differ: {ids1:?} {ids2:?}"
    );
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        for agent in [501, 502] {
            assert_eq!(
                kernel_bucket(&g1, agent, ip),
                kernel_bucket(&g2, agent, ip),
                "agent {agent}, rule for {ip}"
            );
        }
    }
    // Still one bucket per agent for `mine`, one shared for `ours`, one per agent for
    // `any`; never another rule's.
    let key = |ip, agent| kernel_bucket(&g2, agent, ip).0;
    assert_ne!(key("127.0.0.1", 501), key("127.0.0.1", 502));
    assert_eq!(key("127.0.0.2", 501), key("127.0.0.2", 503));
    assert_eq!(key("127.0.0.2", 501).owner, 0);
    assert_eq!(key("127.0.0.3", 501).rule, 0);
    assert_ne!(key("127.0.0.3", 501), key("127.0.0.3", 502));
    assert_ne!(key("127.0.0.1", 501), key("127.0.0.3", 501));
    assert_eq!(key("127.0.0.1", 501).rule, bucket_id("p/mine"));
}

#[test]
fn a_changed_rate_keeps_the_bucket_with_the_new_capacity() {
    let agents = [agent(0, "a/one", None)];
    let g1 = compile(&throttle_policy(10, false), &agents, 1, &protect());
    let g2 = compile(&throttle_policy(3, false), &agents, 2, &protect());
    let (k1, cap1) = kernel_bucket(&g1, 1000, "127.0.0.1");
    let (k2, cap2) = kernel_bucket(&g2, 1000, "127.0.0.1");
    assert_eq!(k1, k2, "the same bucket: its level carries over");
    assert_eq!(
        (cap1, cap2),
        (10, 3),
        "capped at the new burst when next used"
    );
    let interval = |k: &KernelPolicy| k.throttles[0].1.interval_ns;
    assert_eq!(interval(&g1), 6_000_000_000);
    assert_eq!(interval(&g2), 20_000_000_000);
}

#[test]
fn bucket_ids_are_stable_distinct_and_never_zero() {
    assert_eq!(bucket_id("p/mine"), bucket_id("p/mine"));
    assert_ne!(bucket_id("p/mine"), bucket_id("q/mine"));
    assert_ne!(bucket_id("p/mine"), bucket_id("p/ours"));
    // Pinned: a restarted daemon must compute the ids the pinned buckets carry.
    assert_eq!(bucket_id(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(bucket_id("a"), 0xaf63_dc4c_8601_ec8c);
}

/// (device, inode) as the kernel keys hold it.
fn ident(p: &Path) -> (u32, u64) {
    let m = std::fs::metadata(p).unwrap();
    (crate::kernel::kernel_dev(m.dev()), m.ino())
}

/// The identity entries the kernel finds for class `c` of `k`: its own, and for a key it lacks
/// its shared built-in class's; an entry with no slot present reads as none, and a marker's
/// flag for the class's own entries is cleared (what the entries say, not where they are).
fn whole(k: &KernelPolicy, c: &Class) -> Idents {
    let shared = governance_common::builtin_class(c.id, c.value.allow);
    let builtin = k
        .builtins
        .iter()
        .find(|b| b.id == shared)
        .expect("its built-in class");
    let mut out: Idents = builtin
        .idents
        .iter()
        .filter(|(k, _)| k.2 != SCOPE_DEVICE)
        .map(|(k, v)| (*k, *v))
        .collect();
    out.extend(c.idents.iter().map(|(k, v)| (*k, *v)));
    for v in out.values_mut() {
        v.set_own_entries(false);
    }
    out.retain(|_, v| v.rules.iter().any(super::identities::has));
    out
}

/// What the kernel (`identity::device_letters` and `Tables`) finds for `key` (device `key.0`),
/// given a class's own entries and its shared class's: the class's own marker; else, if the
/// marker says the class has entries of its own on the device, its own entry, else the shared
/// one. (Without a marker there is no walk, and nothing else is looked up on the device.)
fn kernel_finds(
    own: &Idents,
    shared: &Idents,
    key: IdentAt,
) -> Option<governance_common::IdentValue> {
    let marker = own.get(&(key.0, 0, SCOPE_DEVICE, 0));
    if key.2 == SCOPE_DEVICE {
        return marker.copied();
    }
    marker?;
    if marker.is_some_and(|m| m.own_entries())
        && let Some(v) = own.get(&key)
    {
        return Some(*v);
    }
    shared.get(&key).copied()
}

#[test]
fn shared_identity_entries_leave_every_lookup_as_the_whole_table_had_it() {
    use governance_common::IdentValue;
    // Generated tables over a few devices, inodes and scopes, with values from a small set, so
    // that the class and its shared class overlap in every way: equal, different, only one.
    let mut seed = 0x2545_f491_u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let values: Vec<IdentValue> = (0..4u8)
        .map(|i| {
            let mut v = IdentValue::default();
            v.rules[usize::from(i)] = RulePair {
                enforce: rule_ref(u32::from(i), KVerdict::Block, 0),
                shadow: RuleRef::default(),
            };
            v
        })
        .collect();
    for round in 0..200 {
        let mut table = |n| {
            let mut t = Idents::new();
            for _ in 0..n {
                let dev = next(3) as u32 + 1;
                let (ino, scope) = match next(4) {
                    0 => (0, SCOPE_DEVICE),
                    s => (next(6) + 1, s as u32 - 1),
                };
                t.insert((dev, ino, scope, 0), values[next(4) as usize]);
            }
            t
        };
        let (whole_class, shared) = (table(12), table(12));
        let mut c = Class {
            idents: whole_class.clone(),
            ..Default::default()
        };
        super::identities::share(&mut c, &shared);
        let keys: BTreeSet<_> = whole_class.keys().chain(shared.keys()).copied().collect();
        for key in keys {
            // Without a marker the kernel walks nowhere on the device.
            if !whole_class.contains_key(&(key.0, 0, SCOPE_DEVICE, 0)) {
                continue;
            }
            // As `whole` reads it: the marker's flag cleared, an empty entry as none.
            let found = kernel_finds(&c.idents, &shared, key)
                .map(|mut v| {
                    v.set_own_entries(false);
                    v
                })
                .filter(|v| v.rules.iter().any(super::identities::has));
            assert_eq!(
                found,
                whole_class.get(&key).copied(),
                "round {round}, key {key:?}: own {:?}, shared {shared:?}, whole {whole_class:?}",
                c.idents
            );
        }
    }
}

type Idents = BTreeMap<IdentAt, governance_common::IdentValue>;

/// Verdict per letter (r, w, c, t) of an identity entry; None where the slot is empty.
fn verdicts(c: &Idents, id: (u32, u64), scope: u32) -> Option<[Option<(u32, u8)>; 4]> {
    c.get(&(id.0, id.1, scope, 0)).map(|v| {
        v.rules.map(|r| {
            (r.enforce.present != 0).then_some((r.enforce.rule_id & 0xffff, r.enforce.verdict))
        })
    })
}

#[test]
fn file_rules_are_resolved_to_the_identity_of_what_they_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    for sub in ["secrets/sub", "out", "work"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for f in [
        "secrets/key",
        "secrets/linked",
        "secrets/pub",
        "ro.txt",
        "work/x",
    ] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    // A hard link made before the load: the other name is outside every rule.
    std::fs::hard_link(d.join("secrets/linked"), d.join("out/linked")).unwrap();
    std::os::unix::fs::symlink(d.join("ro.txt"), d.join("ro-link")).unwrap();
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\n\
             kernel: {{ allow_system_files: true }}\nrules:\n\
             \x20 - {{ id: secrets, file: {{ prefix: {ds}/secrets }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: pub, file: {{ path: {ds}/secrets/pub, access: [read] }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: ro, file: {{ path: {ds}/ro-link, access: [write, truncate] }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: work, file: {{ prefix: {ds}/work }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: gone, file: {{ prefix: {ds}/not-there }}, verdict: block, reason: r }}\n"
        ),
    )])
    .unwrap();
    let none = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
    assert!(k.errors.is_empty() && k.notes.is_empty(), "{k:?}");
    let c = &whole(&k, &k.classes[0]);
    let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
    let all = |rule, v| Some([Some((rule, v)); 4]);
    // The directory itself, and everything below it, whatever it is called later.
    assert_eq!(
        verdicts(c, ident(&d.join("secrets")), SCOPE_SELF),
        all(1, b)
    );
    assert_eq!(
        verdicts(c, ident(&d.join("secrets")), SCOPE_BELOW),
        all(1, b)
    );
    // Below it, the subdirectory needs no entry of its own (the walk reaches `secrets`).
    assert_eq!(verdicts(c, ident(&d.join("secrets/sub")), SCOPE_SELF), None);
    assert_eq!(verdicts(c, ident(&d.join("secrets/key")), SCOPE_SELF), None);
    // A file that already has another name carries the directory's answer itself.
    assert_eq!(
        verdicts(c, ident(&d.join("out/linked")), SCOPE_SELF),
        all(1, b)
    );
    // An exception inside: read is allowed by its own rule, the rest is the directory's.
    assert_eq!(
        verdicts(c, ident(&d.join("secrets/pub")), SCOPE_SELF),
        Some([Some((2, a)), Some((1, b)), Some((1, b)), Some((1, b))])
    );
    // A rule on a symlink names the file behind it; only its letters are present.
    assert_eq!(
        verdicts(c, ident(&d.join("ro.txt")), SCOPE_SELF),
        Some([None, Some((3, b)), None, Some((3, b))])
    );
    // And the symlink itself is held as that file is: replaced or removed, the rule's path
    // would name another file (red team round 11).
    let link = std::fs::symlink_metadata(d.join("ro-link")).unwrap();
    let link = (crate::kernel::kernel_dev(link.dev()), link.ino());
    assert_eq!(
        verdicts(c, link, SCOPE_SELF),
        Some([None, Some((3, b)), None, Some((3, b))])
    );
    // Allow rules are resolved too (the first entry met decides a letter).
    assert_eq!(verdicts(c, ident(&d.join("work")), SCOPE_BELOW), all(4, a));
    // The device's marker: some identity rule restricts every letter, and this device has
    // entries for each.
    let here = ident(&d).0;
    let marker = &c[&(here, 0, SCOPE_DEVICE, 0)];
    assert!(marker.rules.iter().all(restricts));
    device_markers_agree(c);
    // The directories above restricting rules' objects hold them (renaming one would move
    // a rule's path away): the most severe rule below, per letter. `secrets` holds `pub`.
    let held = |p: &Path| verdicts(c, ident(p), SCOPE_HOLDS).map(|v| v.map(|r| r.map(|r| r.1)));
    assert_eq!(held(&d), Some([Some(b); 4]));
    assert_eq!(held(Path::new("/")), Some([Some(b); 4]));
    assert_eq!(
        verdicts(c, ident(&d.join("secrets")), SCOPE_HOLDS),
        Some([None, Some((1, b)), Some((1, b)), Some((1, b))])
    );
    assert_eq!(verdicts(c, ident(&d.join("work")), SCOPE_HOLDS), None);
    // A path that does not exist has no identity (its path rule still applies); nothing
    // else is in the table: the marker, secrets and work (each itself and below), the
    // linked file, pub, ro.txt and the symlink to it, and the directories holding them
    // (secrets, and each directory from the temporary one up to the root).
    let holders = d.ancestors().count();
    // (The kernel settings' built-in protection, /proc/sys and /sys and what is mounted
    // below them, has identities of its own, on other filesystems.)
    // `gone`, missing, has its name in the temporary directory instead, as has the missing
    // cgroup root's built-in refusal (see missing_protected_paths_are_refused_by_their_names).
    let ours = c.keys().filter(|k| k.0 == here).count();
    assert_eq!(ours, 8 + 1 + 1 + holders + 2, "{:?}", c.keys());
    for missing in [&b"not-there"[..], b"no-cgroup-root"] {
        assert!(c.contains_key(&(here, ident(&d).1, SCOPE_NAME, name_hash(missing))));
    }

    // A class whose identity rules all allow needs no walk: no entries at all.
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\n\
             kernel: {{ allow_kernel_settings: true, allow_system_files: true }}\nrules:\n\
             \x20 - {{ id: work, file: {{ prefix: {ds}/work }}, verdict: allow, reason: r }}\n"
        ),
    )])
    .unwrap();
    // (The kernel settings' and system files' built-ins relaxed: nothing restricts, but the
    // cgroup tree's refusal, here at a path that does not exist: its name, the directories
    // holding it, and with a restricting entry, the allow rule's.)
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
    let c = whole(&k, &k.classes[0]);
    let cgroup_root = (here, ident(&d).1, SCOPE_NAME, name_hash(b"no-cgroup-root"));
    let work = ident(&d.join("work"));
    assert!(
        c.keys().all(|k| *k == cgroup_root
            || (k.0, k.1) == work
            || [SCOPE_DEVICE, SCOPE_HOLDS].contains(&k.2)),
        "{:?}",
        c.keys()
    );
}

#[test]
fn identities_of_built_in_protections_and_write_only_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let cg = d.join("cgroup");
    std::fs::create_dir_all(cg.join("a/one")).unwrap();
    std::fs::create_dir_all(d.join("policy")).unwrap();
    let protect = Protect {
        cgroup_root: cg.clone(),
        no_write: vec![d.join("policy")],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { cgroup: 'a/*' }\n".into(),
    )])
    .unwrap();
    let mut one = agent(0, "a/one", None);
    one.path = cg.join("a/one");
    let k = compile(&set, &[one], 1, &protect);
    let c = &whole(&k, &k.classes[0]);
    let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
    let w = |v| Some([None, Some((0, v)), Some((0, v)), Some((0, v))]);
    assert_eq!(verdicts(c, ident(&cg), SCOPE_BELOW), w(b));
    assert_eq!(verdicts(c, ident(&cg.join("a/one")), SCOPE_BELOW), w(a));
    assert_eq!(verdicts(c, ident(&d.join("policy")), SCOPE_BELOW), w(b));
    // Only writes are restricted: reads skip the walk.
    let marker = c[&(ident(&d).0, 0, SCOPE_DEVICE, 0)];
    assert_eq!(
        marker.rules.map(|r| restricts(&r)),
        [false, true, true, true]
    );
    device_markers_agree(c);
}

/// Every device with identity entries has a marker whose letters are exactly those that some
/// entry of the class restricts (on any device) and some entry on that device answers, and
/// no other device has one: the kernel walks only where an entry could answer.
fn device_markers_agree(c: &Idents) {
    let has = super::identities::has;
    let entries = || c.iter().filter(|(k, _)| k.2 != SCOPE_DEVICE);
    let restricted: Vec<bool> = (0..4)
        .map(|i| entries().any(|(_, v)| restricts(&v.rules[i])))
        .collect();
    let devs: BTreeSet<u32> = c.keys().map(|k| k.0).collect();
    for dev in devs {
        let want: Vec<bool> = (0..4)
            .map(|i| restricted[i] && entries().any(|(k, v)| k.0 == dev && has(&v.rules[i])))
            .collect();
        match c.get(&(dev, 0, SCOPE_DEVICE, 0)) {
            Some(m) => assert_eq!(m.rules.map(|r| restricts(&r)).to_vec(), want, "dev {dev}"),
            None => assert!(!want.contains(&true), "dev {dev}: no marker"),
        }
    }
}

/// `Identities::find` answers every path as `canonicalize` and `stat` do, though it finds a
/// path from its parent's cached answer, and a rule's spellings through it are the path and
/// its `canonicalize`d form where that differs (and, for a missing path, where its symlinks
/// lead): over files, directories, missing names, names
/// below a file or a missing directory, symlinks (to a directory, a file, up the tree,
/// absolute, dangling, in a loop), doubled and trailing slashes, `.` and `..`.
#[test]
fn find_answers_as_canonicalize_and_stat() {
    use std::os::unix::{fs::MetadataExt as _, fs::symlink};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("a/b/c")).unwrap();
    std::fs::write(d.join("a/b/file"), "x").unwrap();
    symlink(d.join("a/b"), d.join("abs")).unwrap();
    symlink("b/c", d.join("a/rel")).unwrap();
    symlink("../file", d.join("a/b/c/up")).unwrap();
    symlink("file", d.join("a/b/tofile")).unwrap();
    symlink("missing", d.join("a/dangling")).unwrap();
    symlink("loop2", d.join("a/loop1")).unwrap();
    symlink("loop1", d.join("a/loop2")).unwrap();
    symlink("/", d.join("a/root")).unwrap();
    let names = [
        "",
        "a",
        "a/b",
        "a/b/c",
        "a/b/file",
        "a/b/file/x",
        "a/none",
        "a/none/x/y",
        "abs",
        "abs/c",
        "abs/file",
        "abs/c/up",
        "a/rel",
        "a/rel/up",
        "a/rel/up/x",
        "a/b/tofile",
        "a/dangling",
        "a/dangling/x",
        "a/loop1",
        "a/loop1/x",
        "a/root",
        "a/root/etc",
        "a/root/etc/hostname",
        "a//b",
        "a/b/",
        "a/b/c/",
        "a/./b",
        "a/b/..",
        "a/b/../b/file",
        "a/rel/../file",
        "abs/c/up/..",
    ];
    // Each path asked of a fresh cache, and of one that all the paths before it went through.
    let mut shared = Identities::new(&protect());
    for name in names.iter().chain(names.iter().rev()) {
        let path = format!("{}/{name}", d.display());
        let want = std::fs::canonicalize(&path).ok().and_then(|real| {
            let meta = std::fs::metadata(&real).ok()?;
            let id = (
                crate::kernel::kernel_dev(meta.dev()),
                meta.ino(),
                meta.is_dir(),
            );
            Some((path_bytes(&real), id))
        });
        let fresh = Identities::new(&protect()).find(path.as_bytes());
        assert_eq!(fresh, want, "{path}");
        assert_eq!(shared.find(path.as_bytes()), want, "{path}");
        let p = Path::new(&path);
        let mut spelled = vec![path_bytes(p)];
        if let Ok(real) = std::fs::canonicalize(p)
            && real != p
        {
            spelled.push(path_bytes(&real));
        }
        // A missing path adds where a symlink on the way leads, if one does (below).
        let got = shared.spellings(p);
        assert_eq!(got[..spelled.len()], spelled[..], "{path}");
        assert!(got.len() == spelled.len() || spelled.len() == 1, "{path}");
    }
    // Where missing paths lead through their symlinks: a dangling link to its target, a
    // chain followed to the end with the rest kept; a path with no link on the way, nothing.
    let mut led = |name: &str| -> Vec<String> {
        shared
            .spellings(&d.join(name))
            .iter()
            .skip(1)
            .map(|s| String::from_utf8_lossy(s).replace(d.to_str().unwrap(), ""))
            .collect()
    };
    assert_eq!(led("a/dangling"), ["/a/missing"]);
    assert_eq!(led("a/dangling/x"), ["/a/missing/x"]);
    assert_eq!(led("a/rel/up/x"), ["/a/b/file/x"]);
    assert!(led("a/none/x/y").is_empty());
    assert!(led("a/b/file/x").is_empty());
}

/// A tree of directories with files that have other names outside it (hard links), for the
/// listings: `top/{a, a/b, a/b/c}`, each with a file linked from `out/`, and plain files.
fn linked_tree() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    for sub in ["top/a/b/c", "out", "rules/x"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for (i, dir) in ["top", "top/a", "top/a/b", "top/a/b/c", "rules", "rules/x"]
        .iter()
        .enumerate()
    {
        std::fs::write(d.join(dir).join("plain"), "x").unwrap();
        std::fs::write(d.join(dir).join("linked"), "x").unwrap();
        std::fs::hard_link(d.join(dir).join("linked"), d.join(format!("out/{i}"))).unwrap();
    }
    (tmp, d)
}

/// The built-in protected directories listed ahead of the compile (`ReadAhead`), and listings
/// taken from a listing above, leave the generation as the compile reading each itself.
#[test]
fn listings_read_ahead_leave_the_generation_as_it_was() {
    let (_tmp, d) = linked_tree();
    let protect = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![d.join("top")],
        no_access: vec![d.join("top/a/b")],
        system_links: Vec::new(),
    };
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\n\
             kernel: {{ allow_system_files: true, allow_kernel_settings: true }}\nrules:\n\
             \x20 - {{ id: a, file: {{ prefix: {ds}/top/a, access: [read] }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: c, file: {{ prefix: {ds}/top/a/b/c }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: x, file: {{ prefix: {ds}/rules/x }}, verdict: block, reason: r }}\n"
        ),
    )])
    .unwrap();
    let agents = [agent(0, "a/one", None)];
    let itself = compile(&set, &agents, 1, &protect);
    let ahead = compile_ahead(&set, &agents, 1, ReadAhead::start(protect.clone()));
    assert!(
        itself.errors.is_empty() && itself.notes.is_empty(),
        "{itself:?}"
    );
    assert_eq!(format!("{ahead:?}"), format!("{itself:?}"));
    // Not vacuous: the other names of the files below the protected directories carry their
    // directories' answers, in the class (its rules) and in the built-ins (the protections).
    // (`rules` itself is not: its file, out/4, has none.)
    let c = &whole(&itself, &itself.classes[0]);
    for i in 0..6 {
        let other = verdicts(c, ident(&d.join(format!("out/{i}"))), SCOPE_SELF);
        assert_eq!(other.is_some(), i != 4, "out/{i}: {:?}", c.keys());
    }
}

/// The read-ahead lists none of the directories too big to list (`/usr`, `/opt`, `/boot`,
/// container storage, homes' caches), as the compile itself does not: their mount points come
/// from the mount table (this stop's first version listed them, and a 10,000-rule reload took
/// 450 ms instead of 13).
#[test]
fn the_read_ahead_lists_no_unlisted_directory() {
    let ahead = ReadAhead::start(protect());
    let listed = ahead.thread.expect("the read-ahead thread").join().unwrap();
    for dir in ["/usr", "/opt", "/boot", "/var/lib/containers"] {
        let real = std::fs::canonicalize(dir).map_or_else(|_| dir.into(), |p| path_bytes(&p));
        assert!(!listed.contains_key(&real), "{dir} listed ahead");
    }
}

/// A directory's listing is taken from a complete listing of a directory above it (charging
/// nothing), and from one read ahead only within the budget; otherwise it is read.
#[test]
fn a_listing_comes_from_above_only_when_that_one_is_complete() {
    let (_tmp, d) = linked_tree();
    let bytes = |p: &str| path_bytes(&d.join(p));
    let read = |p: &str| Listing::read(&bytes(p), ENUMERATION_BUDGET);
    let full = read("top").read;
    assert!(read("top").complete && full > 10);
    // Below a complete listing: the same entries as reading it, nothing charged.
    let mut ids = Identities::new(&protect());
    assert_eq!(ids.enumerate(&bytes("top")), read("top").found);
    assert_eq!(ids.budget, ENUMERATION_BUDGET - full);
    for sub in ["top/a", "top/a/b", "top/a/b/c"] {
        let want = read(sub).found;
        assert!(!want.is_empty(), "{sub}");
        assert_eq!(ids.enumerate(&bytes(sub)), want, "{sub}");
    }
    assert_eq!(ids.budget, ENUMERATION_BUDGET - full);
    // Below a listing cut short by the budget: read again.
    let mut ids = Identities::new(&protect());
    ids.budget = 3;
    ids.enumerate(&bytes("top"));
    assert_eq!(ids.budget, 0);
    assert_eq!(ids.notes.len(), 1);
    ids.budget = ENUMERATION_BUDGET;
    assert_eq!(ids.enumerate(&bytes("top/a/b")), read("top/a/b").found);
    assert_eq!(ids.budget, ENUMERATION_BUDGET - read("top/a/b").read);
    // Read ahead: taken (and charged) when the budget holds it, else read now, and cut.
    for (budget, taken) in [(full, true), (full - 1, false)] {
        let mut ids = Identities::new(&protect());
        let mut stale = read("top");
        stale.found.push(b"/read/ahead".to_vec());
        ids.ahead.insert(bytes("top"), stale);
        ids.budget = budget;
        let found = ids.enumerate(&bytes("top"));
        assert_eq!(found.contains(&b"/read/ahead".to_vec()), taken, "{budget}");
        assert_eq!(ids.budget, 0);
        assert_eq!(ids.notes.is_empty(), taken);
    }
}

/// A sandbox mark names its profile, not its position: the rule's mark and the profile's
/// AGENTS key are the hash of `<policy>/<profile>` under the agent's own root, the same when
/// other profiles and agents come before it (which shift every class number).
#[test]
fn a_sandbox_mark_is_the_profile_s_name_under_its_agent() {
    let doc = |other: bool| {
        let mut d = String::from(
            "name: p\nagents: { label: bot }\nsandbox_profiles:\n  jail: { network: none }\n  open: { network: proxy }\nrules:\n",
        );
        if other {
            d.push_str("  - { id: first, exec: { path: /bin/y }, verdict: sandbox, sandbox: { profile: open }, reason: r }\n");
        }
        d.push_str("  - { id: tool, exec: { path: /bin/x }, verdict: sandbox, sandbox: { profile: jail }, reason: r }\n");
        parse(&[("p.yaml".into(), d)]).unwrap()
    };
    let jail = u32::from(profile_key("p", "jail"));
    let mark_of = |k: &KernelPolicy, cgroup: u64| {
        let (_, key, i) = k
            .profiles
            .iter()
            .find(|(c, key, _)| *c == cgroup && *key == jail)?;
        let rule = k.classes[*i].value.class;
        Some((*key, rule))
    };
    let one = compile(&doc(false), &[agent(0, "x", Some("bot"))], 1, &protect());
    let two = compile(
        &doc(true),
        &[agent(0, "w", Some("bot")), agent(1, "x", Some("bot"))],
        2,
        &protect(),
    );
    assert!(
        one.errors.is_empty() && two.errors.is_empty(),
        "{:?}{:?}",
        one.errors,
        two.errors
    );
    // The class numbers moved; the mark did not.
    let (k1, c1) = mark_of(&one, 1000).expect("jail of agent x");
    let (k2, c2) = mark_of(&two, 1001).expect("jail of agent x, after agent w and profile open");
    assert_eq!(k1, k2);
    assert_ne!(
        governance_common::id_number(c1),
        governance_common::id_number(c2)
    );
    // Each agent's profiles are its own: agent w has its own jail under its own root.
    assert!(mark_of(&two, 1000).is_some());
    assert_eq!(two.profiles.len(), 4, "{:?}", two.profiles);
    // The rules carry the same mark as their profile's key.
    let x = &two.classes[two.agents.iter().find(|(c, _)| *c == 1001).unwrap().1];
    let marks: Vec<u16> = x
        .exec
        .values()
        .map(|(pair, _)| pair)
        .chain(x.paths.values())
        .filter(|r| r.enforce.verdict == KVerdict::Sandbox as u8)
        .map(|r| r.enforce.aux)
        .collect();
    assert!(marks.contains(&(jail as u16)), "{marks:?}");
}

/// Two profiles of one agent whose names hash to the same mark: the generation is refused
/// with both names (a mark must name exactly one profile).
#[test]
fn profiles_whose_marks_collide_are_refused() {
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..5000)
        .map(|i| format!("s{i}"))
        .find_map(|n| {
            seen.insert(profile_key("p", &n), n.clone())
                .map(|other| (other, n))
        })
        .expect("a collision among 5,000 16-bit hashes");
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ label: bot }}\nsandbox_profiles:\n  {a}: {{ network: none }}\n  {b}: {{ network: none }}\nrules:\n\
             \x20 - {{ id: one, exec: {{ path: /bin/x }}, verdict: sandbox, sandbox: {{ profile: {a} }}, reason: r }}\n\
             \x20 - {{ id: two, exec: {{ path: /bin/y }}, verdict: sandbox, sandbox: {{ profile: {b} }}, reason: r }}\n"
        ),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect());
    assert!(
        k.errors
            .iter()
            .any(|e| e.contains(&format!("p/{a} and p/{b} would share one mark"))),
        "{:?}",
        k.errors
    );
}

/// Red team round 4 (F2, F3): a class whose path rules restrict a letter outside every more
/// specific rule (its file default, or a sandbox profile's refusal of writes below `/`) has
/// that answer as its fill, and a marker on every device it has entries on, so that a new name
/// is judged on that device (see governance_common::SCOPE_FILL).
#[test]
fn restrictive_defaults_and_sandbox_profiles_have_a_fill() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    for sub in ["work", "scratch"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\ndefaults: {{ file: block }}\n\
             sandbox_profiles:\n  jail: {{ network: none, writable: [{ds}/scratch] }}\n\
             rules:\n\
             \x20 - {{ id: work, file: {{ prefix: {ds}/work }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: sb, exec: {{ path: /bin/true }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: r }}\n"
        ),
    )])
    .unwrap();
    let none = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
    assert!(k.errors.is_empty(), "{k:?}");
    let here = ident(&d).0;
    let b = KVerdict::Block as u8;
    let fill = |c: &Class| {
        c.idents.get(&(0, 0, SCOPE_FILL, 0)).map(|v| {
            v.rules
                .map(|r| (r.enforce.present != 0).then_some((r.enforce.rule_id, r.enforce.verdict)))
        })
    };
    // The agent: every letter is the default's.
    let agent = &k.classes[0];
    assert_eq!(fill(agent), Some([Some((FILL_DEFAULT, b)); 4]));
    assert!(agent.idents.contains_key(&(here, 0, SCOPE_DEVICE, 0)));
    // Its profile: writes are the built-in rule on `/`; reads the agent's default.
    let profile = &k.classes[1];
    assert_eq!(
        fill(profile),
        Some([
            Some((FILL_DEFAULT, b)),
            Some((FILL_BUILTIN, b)),
            Some((FILL_BUILTIN, b)),
            Some((FILL_BUILTIN, b))
        ])
    );
    assert!(profile.idents.contains_key(&(here, 0, SCOPE_DEVICE, 0)));
}

/// Red team round 5, F1: a protected path that does not exist when the generation is loaded has
/// no identity, so a new name made there by a link, a rename, a symlink or mkdir was judged by
/// the directories above it only (`/root`, where `/root/.profile` was missing, has no rule).
/// Its name has an entry instead (`SCOPE_NAME`): under the deepest directory that exists, the
/// hash of the next component, with the path's answer for creating (else for writing) in the
/// create slot; a missing directory on the way is refused whole. That directory and those
/// above it hold the name (renamed, it would be elsewhere), and the device's marker has the
/// create letter, so the kernel looks the name up.
#[test]
fn missing_protected_paths_are_refused_by_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("home")).unwrap();
    std::fs::write(d.join("home/.bashrc"), "x").unwrap();
    std::os::unix::fs::symlink(d.join("home"), d.join("home-link")).unwrap();
    let ds = d.display();
    let set = parse(&[(
        "p.yaml".into(),
        format!(
            "name: p\nagents: {{ cgroup: 'a/*' }}\n\
             kernel: {{ allow_system_files: true }}\nrules:\n\
             \x20 - {{ id: profile, file: {{ path: {ds}/home/.profile }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: deep, file: {{ prefix: {ds}/gone/deeper/cfg }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: wonly, file: {{ path: {ds}/w.txt, access: [write] }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: ronly, file: {{ path: {ds}/r.txt, access: [read] }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: ok, file: {{ prefix: {ds}/ok }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: bashrc, file: {{ path: {ds}/home/.bashrc }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: linked, file: {{ path: {ds}/home-link/.zshrc }}, verdict: block, reason: r }}\n"
        ),
    )])
    .unwrap();
    let protect = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![d.join("policy-missing")],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect);
    assert!(k.errors.is_empty(), "{k:?}");
    let c = &whole(&k, &k.classes[0]);
    let b = KVerdict::Block as u8;
    let (dev, top) = ident(&d);
    let home = ident(&d.join("home"));
    let name = |dir: (u32, u64), n: &str| {
        let v = c.get(&(dir.0, dir.1, SCOPE_NAME, name_hash(n.as_bytes())))?;
        let present = v.rules.map(|r| r.enforce.present != 0);
        assert_eq!(
            present,
            [false, false, true, false],
            "{n}: the create slot only"
        );
        Some((
            v.rules[2].enforce.rule_id & 0xffff,
            v.rules[2].enforce.verdict,
        ))
    };
    // The missing file in an existing directory: its own name, its own rule.
    assert_eq!(name(home, ".profile"), Some((1, b)));
    // A missing directory on the way to a protected path: refused whole.
    assert_eq!(name((dev, top), "gone"), Some((2, b)));
    assert_eq!(name((dev, top), "deeper"), None);
    // A rule on writing only: a new name there has content the agent chose.
    assert_eq!(name((dev, top), "w.txt"), Some((3, b)));
    // Reading only, or allowed: no name entry.
    assert_eq!(name((dev, top), "r.txt"), None);
    assert_eq!(name((dev, top), "ok"), None);
    // An existing file is its own identity, not a name.
    assert_eq!(name(home, ".bashrc"), None);
    let bashrc = ident(&d.join("home/.bashrc"));
    assert!(c.contains_key(&(bashrc.0, bashrc.1, SCOPE_SELF, 0)));
    // Through a symlinked directory: the name in the directory it leads to.
    assert_eq!(name(home, ".zshrc"), Some((7, b)));
    // A built-in protection's missing path: in the shared built-in class, as a built-in.
    assert_eq!(name((dev, top), "policy-missing"), Some((0, b)));
    let shared = governance_common::builtin_class(k.classes[0].id, k.classes[0].value.allow);
    let builtin = k.builtins.iter().find(|c| c.id == shared).unwrap();
    let key = (dev, top, SCOPE_NAME, name_hash(b"policy-missing"));
    assert!(builtin.idents.contains_key(&key));
    assert!(
        !k.classes[0].idents.contains_key(&key),
        "shared, not the class's own"
    );
    // The directories holding the names keep theirs (renamed, the name would be elsewhere).
    let held = |p: &Path| verdicts(c, ident(p), SCOPE_HOLDS).map(|v| v[2].map(|r| r.1));
    assert_eq!(held(&d.join("home")), Some(Some(b)));
    assert_eq!(held(&d), Some(Some(b)));
    assert_eq!(held(Path::new("/")), Some(Some(b)));
    // The device's marker has the create letter: the kernel looks names up there.
    assert!(restricts(&c[&(dev, 0, SCOPE_DEVICE, 0)].rules[2]));
    device_markers_agree(c);
}

/// Red team round 31: a sandbox profile's writable directories restrict its agent's writes and
/// never grant them. Inside `work` (writable) the profile decides as the agent does: its
/// block below (`.git/hooks`), a block on a prefix above (`/…/srv`, moved to `work`), and its
/// refusing default; outside `work` every write is refused. Controls: what the agent allows
/// inside `work` stays allowed to the profile.
#[test]
fn a_sandbox_profile_keeps_its_agent_s_write_rules_inside_its_writable_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    for sub in ["work/.git/hooks", "work/src", "work/cfg", "other"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let ds = d.display();
    let none = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
    let verdict_of = |k: &KernelPolicy, c: &Class, letter, path: &str| {
        decided(k, c, letter, &format!("{ds}/{path}")).map(|p| p.enforce.verdict)
    };
    for default in ["allow", "block"] {
        let set = parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: 'a/*' }}\ndefaults: {{ file: {default} }}\n\
                 sandbox_profiles:\n  build: {{ network: none, writable: [{ds}/work] }}\n\
                 rules:\n\
                 \x20 - {{ id: hooks, file: {{ prefix: {ds}/work/.git/hooks, access: [write, create] }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: cfg, file: {{ path: {ds}/work/cfg/app.yaml, access: [write] }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: src, file: {{ prefix: {ds}/work/src }}, verdict: allow, reason: r }}\n\
                 \x20 - {{ id: sb, exec: {{ path: /usr/bin/env }}, verdict: sandbox, sandbox: {{ profile: build }}, reason: r }}\n"
            ),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
        assert!(k.errors.is_empty(), "{k:?}");
        let (agent_class, profile) = (&k.classes[0], &k.classes[1]);
        for (letter, path) in [
            (access::WRITE, "work/.git/hooks/pre-commit"),
            (access::CREATE, "work/.git/hooks/pre-commit"),
            (access::WRITE, "work/cfg/app.yaml"),
        ] {
            let agent_says = verdict_of(&k, agent_class, letter, path);
            assert_ne!(agent_says, Some(a), "{default}: the agent's {path}");
            assert_eq!(
                verdict_of(&k, profile, letter, path),
                agent_says,
                "{default}: the profile writes {path} as its agent does"
            );
        }
        // Control: the agent's allow inside `work` holds in the profile.
        assert_eq!(
            verdict_of(&k, profile, access::WRITE, "work/src/main.rs"),
            Some(a)
        );
        // Elsewhere in `work`, the agent's default.
        let elsewhere = verdict_of(&k, profile, access::WRITE, "work/notes.txt");
        assert_eq!(
            elsewhere.unwrap_or(a),
            if default == "block" { b } else { a },
            "{default}"
        );
        // Outside it, nothing is writable.
        assert_eq!(verdict_of(&k, profile, access::WRITE, "other/x"), Some(b));
        // The hooks directory's identity (a hard link or another name for it) says the same.
        // (Checked below too: the agent's built-ins inside a writable directory.)
        let hooks = verdicts(
            &whole(&k, profile),
            ident(&d.join("work/.git/hooks")),
            SCOPE_BELOW,
        )
        .expect("an identity entry for the hooks directory");
        assert!(
            hooks[1..3].iter().all(|s| s.is_some_and(|(_, v)| v == b)),
            "{default}: {hooks:?}"
        );
    }
}

/// The agent's built-in write refusals hold for its sandbox profiles inside their writable
/// directories too (red team round 31's review): with `/sys/fs/cgroup` writable, a sandboxed
/// process may still not write another cgroup's `cgroup.procs` (leaving the agent); its own
/// subtree stays writable, as it is to the agent.
#[test]
fn a_sandbox_profile_keeps_its_agent_s_built_in_refusals_inside_its_writable_directories() {
    let set = parse(&[(
        "p.yaml".into(),
        "name: p\nagents: { cgroup: 'a/*' }\n\
         sandbox_profiles:\n  wide: { network: none, writable: [/sys/fs/cgroup, /] }\n\
         rules:\n\
         \x20 - { id: sb, exec: { path: /usr/bin/env }, verdict: sandbox, sandbox: { profile: wide }, reason: r }\n"
            .to_owned(),
    )])
    .unwrap();
    let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
    assert!(k.errors.is_empty(), "{k:?}");
    let (agent_class, profile) = (&k.classes[0], &k.classes[1]);
    for (path, verdict) in [
        ("/sys/fs/cgroup/other/cgroup.procs", KVerdict::Block),
        ("/sys/fs/cgroup/a/one/child/cgroup.procs", KVerdict::Allow),
    ] {
        for c in [agent_class, profile] {
            assert_eq!(
                decided(&k, c, access::WRITE, path).map(|v| v.enforce.verdict),
                Some(verdict as u8),
                "{path} in class {}",
                c.id
            );
        }
    }
}

/// Red team round 32: `prefix: /d/` is the directory and what is below it, as `prefix: /d` is.
/// Written with the slash, the directory itself had no entry in the path table (`/d\0`) and so
/// none of its own in the identity table: the agent renamed it (its sequence rule's arming
/// directory, or a write-protected one, filled again under the old name), listed it or changed
/// its mode; a missing one had no entry for its name, so the agent made it.
#[test]
fn a_prefix_with_a_trailing_slash_is_the_prefix_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("conf")).unwrap();
    std::fs::create_dir_all(d.join("pii")).unwrap();
    std::fs::write(d.join("conf/app.yaml"), "x").unwrap();
    let ds = d.display();
    let policy = |slash: &str| {
        parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: 'a/*' }}\nrules:\n\
                 \x20 - {{ id: conf, file: {{ prefix: {ds}/conf{slash}, access: [write, create] }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: plugins, file: {{ prefix: {ds}/plugins{slash}, access: [write, create] }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: bin, exec: {{ prefix: {ds}/conf{slash} }}, verdict: block, reason: r }}\n\
                 \x20 - id: pii\n    sequence: {{ after: {{ file: {{ prefix: {ds}/pii{slash}, access: [read] }} }}, then: {{ network: {{ except: {{ cidr: [10.0.0.0/8] }} }} }} }}\n    verdict: block\n    reason: r\n"
            ),
        )])
        .unwrap()
    };
    let none = Protect {
        cgroup_root: d.join("no-cgroup-root"),
        no_write: vec![],
        no_access: vec![],
        system_links: Vec::new(),
    };
    let agents = [agent(0, "a/one", None)];
    let (with, without) = (
        compile(&policy("/"), &agents, 1, &none),
        compile(&policy(""), &agents, 1, &none),
    );
    assert!(with.errors.is_empty(), "{:?}", with.errors);
    for (a, b) in with.classes.iter().zip(&without.classes) {
        assert_eq!(a.paths, b.paths, "path entries of class {:#x}", a.id);
        assert_eq!(a.idents, b.idents, "identity entries of class {:#x}", a.id);
        assert_eq!(a.exec, b.exec);
    }
    assert_eq!(with.classes.len(), without.classes.len());
    // The directory itself, by its path and by its identity; the missing one by its name.
    let c = &with.classes[0];
    let conf = format!("{ds}/conf\0");
    assert_eq!(
        lookup(c, access::WRITE, &conf).map(|p| p.enforce.verdict),
        Some(KVerdict::Block as u8)
    );
    let here = ident(&d).0;
    let idents = whole(&with, c);
    assert!(idents.contains_key(&(here, ident(&d.join("conf")).1, SCOPE_SELF, 0)));
    assert!(idents.contains_key(&(here, ident(&d).1, SCOPE_NAME, name_hash(b"plugins"))));
    // The sequence class holds its arming directory itself.
    let seq = with.sequences[0].1.entries[0].class;
    let armed = with
        .classes
        .iter()
        .find(|c| c.id == seq)
        .expect("its class");
    assert!(
        armed
            .idents
            .contains_key(&(here, ident(&d.join("pii")).1, SCOPE_SELF, 0))
    );
}

/// The shared built-ins' paths are resolved once per generation for every class whose own nodes
/// do not reach them (`Identities::plan`): the generation must come out as when each class
/// resolved them itself. Agents whose rules reach the built-ins' directories in every way (a
/// rule relaxing one, a stricter one, a rule on `/`, shadow rules, relaxations, missing paths,
/// hard and symbolic links) beside agents whose rules reach none, over this host's own
/// built-in protections.
#[test]
fn built_ins_planned_once_resolve_as_each_class_resolved_them() {
    // The protected files apart from the agents' cgroups (every class's own nodes reach the
    // first directory of its cgroup), so that classes whose rules name nothing there resolve
    // them as planned.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let cgroups = tempfile::tempdir().unwrap();
    let cg = cgroups.path().canonicalize().unwrap();
    for sub in ["policy", "audit", "data/sub", "out"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("data/key"), "x").unwrap();
    std::fs::write(d.join("policy/p.yaml"), "x").unwrap();
    std::fs::hard_link(d.join("data/key"), d.join("out/key")).unwrap();
    std::os::unix::fs::symlink(d.join("data"), d.join("link")).unwrap();
    let protect = Protect {
        cgroup_root: cg.clone(),
        // A protected path missing now, through a symlink: its name, and the link, held.
        no_write: vec![
            d.join("policy"),
            "/etc/governance".into(),
            d.join("link/later"),
        ],
        no_access: vec![d.join("audit")],
        system_links: Vec::new(),
    };
    let ds = d.display();
    let rules = [
        "{ id: shadow-read, file: { path: /etc/shadow, access: [read] }, verdict: allow, reason: r }".to_owned(),
        "{ id: etc, file: { prefix: /etc }, verdict: block, reason: r }".to_owned(),
        "{ id: root, file: { prefix: / , access: [write] }, verdict: escalate, escalate: { timeout: 1m }, reason: r }".to_owned(),
        "{ id: homes, file: { prefix: /home }, verdict: allow, reason: r }".to_owned(),
        "{ id: proc, file: { prefix: /proc/sys, access: [write] }, verdict: allow, reason: r }".to_owned(),
        "{ id: var, file: { prefix: /var/lib, access: [read] }, verdict: block, mode: shadow, reason: r }".to_owned(),
        format!("{{ id: data, file: {{ prefix: {ds}/data }}, verdict: block, reason: r }}"),
        format!("{{ id: link, file: {{ path: {ds}/link/key, access: [write] }}, verdict: block, reason: r }}"),
        format!("{{ id: gone, file: {{ prefix: {ds}/gone/deeper }}, verdict: block, reason: r }}"),
        format!("{{ id: policy, file: {{ prefix: {ds}/policy }}, verdict: allow, reason: r }}"),
        "{ id: usr, file: { prefix: /usr/bin, access: [write] }, verdict: sandbox, sandbox: { profile: s }, reason: r }".to_owned(),
    ];
    let mut docs = Vec::new();
    let mut agents = Vec::new();
    // Each agent: one rule, a pair, or none; with and without relaxations.
    for (i, kernel) in ["", "kernel: { allow_system_files: true }\n"]
        .iter()
        .enumerate()
    {
        for j in 0..=rules.len() {
            let n = docs.len();
            let picked: Vec<&String> = match j {
                0 => Vec::new(),
                j => {
                    let other = (j * 7 + i) % rules.len();
                    if other == j - 1 {
                        vec![&rules[j - 1]]
                    } else {
                        vec![&rules[j - 1], &rules[other]]
                    }
                }
            };
            let mut doc = format!("name: p{n}\nagents: {{ cgroup: a{n} }}\n{kernel}");
            if picked.iter().any(|r| r.contains("profile: s")) {
                doc.push_str("sandbox_profiles: { s: { writable: [/tmp] } }\n");
            }
            if !picked.is_empty() {
                doc.push_str("rules:\n");
                for r in picked {
                    doc.push_str(&format!("  - {r}\n"));
                }
            }
            docs.push((format!("p{n}.yaml").into(), doc));
            let mut a = agent(n, &format!("a{n}"), None);
            a.path = cg.join(format!("a{n}"));
            std::fs::create_dir_all(&a.path).unwrap();
            agents.push(a);
        }
    }
    let set = parse(&docs).unwrap();
    let planned = compile(&set, &agents, 1, &protect);
    let mut each = Identities::new(&protect);
    each.plan_builtins = false;
    let resolved = compile_with(&set, &agents, 1, &protect, 0, each);
    assert!(planned.errors.is_empty(), "{:?}", planned.errors);
    assert!(
        planned.classes.iter().any(|c| !c.idents.is_empty()),
        "no class has identity entries of its own: the test reaches nothing"
    );
    let (planned, resolved) = (format!("{planned:#?}"), format!("{resolved:#?}"));
    if planned != resolved {
        let first = planned
            .lines()
            .zip(resolved.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let around = |s: &str| {
            s.lines()
                .skip(first.saturating_sub(20))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "planned and per-class resolution differ at line {first}:\n--- planned\n{}\n--- each class\n{}",
            around(&planned),
            around(&resolved)
        );
    }
}
