//! The checks a drill plans, exactly, for the shipped example policies.

use super::*;

fn examples() -> PolicySet {
    crate::policy::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/examples"
    )))
    .unwrap()
}

/// `policy rule kind object -> probe or skipped`, one line per check.
fn lines(set: &PolicySet) -> Vec<String> {
    policies(set, None)
        .into_iter()
        .flat_map(|p| plan(set, p))
        .map(|p| {
            let c = &p.check;
            let how = match (&p.probe, &c.skipped_why) {
                (Some(Probe::Connect { addr, udp }), _) => {
                    format!("connect {} {addr}", if *udp { "udp" } else { "tcp" })
                }
                (Some(Probe::Exec { paths }), _) => format!("exec the first of {paths:?}"),
                (Some(Probe::ExecUnder { dir }), _) => format!("exec a file in {}", dir.display()),
                (Some(Probe::Open { paths, access }), _) => {
                    format!("open the first of {paths:?} for {access:?}")
                }
                (None, Some(why)) => format!("skipped: {why}"),
                (None, None) => "nothing".into(),
            };
            format!("{} {} {} {} -> {how}", c.policy, c.rule, c.kind, c.object)
        })
        .collect()
}

#[test]
fn the_shipped_examples_plan_exactly_these_checks() {
    let got = lines(&examples());
    let want = include_str!("tests.expected").lines().collect::<Vec<_>>();
    assert_eq!(got, want, "got:\n{}", got.join("\n"));
}

#[test]
fn a_block_rule_probes_where_it_decides_and_is_skipped_where_it_never_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "name: p\nagents: { cgroup: a }\nrules:\n  \
         - { id: all, network: { cidr: 10.0.0.0/8 }, verdict: block, reason: r }\n  \
         - { id: hole, network: { cidr: 10.0.0.0/24 }, verdict: allow, reason: r }\n  \
         - { id: pair, network: { cidr: 10.1.0.0/31 }, verdict: block, reason: r }\n  \
         - { id: both, network: { cidr: [10.1.0.0/32, 10.1.0.1/32] }, verdict: allow, reason: r }\n  \
         - { id: udp, network: { cidr: 10.9.0.0/16, ports: [53], protocol: udp }, verdict: block, reason: r }\n",
    )
    .unwrap();
    let set = crate::policy::load_dir(dir.path()).unwrap();
    let got = lines(&set);
    assert_eq!(
        got,
        vec![
            "p p/all network tcp 10.255.255.255:9 -> connect tcp 10.255.255.255:9",
            "p p/pair network tcp 10.1.0.0:9 -> skipped: the engine decides this object allow by p/both, not by the rule under drill",
            "p p/udp network udp 10.9.0.0:53 -> connect udp 10.9.0.0:53",
        ],
        "{got:#?}"
    );
}

#[test]
fn the_canary_set_keeps_every_rule_in_place_and_governs_the_canary_by_one_policy() {
    let set = examples();
    let c = canary_set(&set, "devops-agent");
    assert_eq!(set.rule_count(), c.rule_count());
    let canary = canary_ref("/governance-drill");
    let governing: Vec<&str> = c
        .policies
        .iter()
        .filter(|p| {
            p.selector
                .matches(&canary.cgroup, canary.label.as_deref(), None)
        })
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(governing, ["devops-agent"]);
}
