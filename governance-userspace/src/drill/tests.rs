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
                (Some(Probe::Http(h)), _) => format!(
                    "send through the proxy{}: {}",
                    if h.mcp { " (MCP)" } else { "" },
                    String::from_utf8_lossy(&h.wire()).replace("\r\n", " | ")
                ),
                (Some(Probe::Unix(t)), _) => format!("connect unix {}", t.display()),
                (Some(Probe::Sequence { arm, addr }), _) => {
                    format!(
                        "connect {addr}, open {} read-only, connect again",
                        arm.display()
                    )
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

/// An exec check runs a file of the blocked directory that has no other name: a symlink or a
/// hard link there may be another name of an allowed program, which the kernel rightly runs.
#[test]
fn an_exec_check_runs_no_other_name_of_a_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let exe = |name: &str| {
        let p = tools.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    std::os::unix::fs::symlink("/bin/sh", tools.join("0")).unwrap();
    std::fs::hard_link(exe("1"), tools.join("2")).unwrap();
    let own = exe("3");
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "name: p\nagents: {{ cgroup: a }}\nrules:\n  \
             - {{ id: tools, exec: {{ prefix: {} }}, verdict: block, reason: r }}\n",
            tools.display()
        ),
    )
    .unwrap();
    let set = crate::policy::load_dir(dir.path()).unwrap();
    assert_eq!(exec_under(&set, "p", "p/tools", &tools), Some(own));
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

/// A rule's body conditions get a body that meets them (checked by the conditions
/// themselves); one no simple value meets is named.
#[test]
fn made_up_bodies_meet_their_rules_conditions() {
    use serde_json::json;
    let body = |conds: &[&str]| -> Result<serde_json::Value, String> {
        let m = crate::policy::HttpMatcher {
            host: crate::policy::HostMatch::Exact("h.example".into()),
            methods: vec![],
            path: None,
            path_exact: None,
            headers: vec![],
            body: conds.iter().map(|c| c.parse().unwrap()).collect(),
            mcp: None,
        };
        HttpProbe::for_rule(&m).map(|p| serde_json::from_str(&p.body.unwrap()).unwrap())
    };
    for (conds, want) in [
        (&["$.amount > 1000"][..], json!({"amount": 1001})),
        (
            &["$.amount > 100", "$.amount <= 1000"],
            json!({"amount": 101}),
        ),
        (&["$.amount < 0.5"], json!({"amount": -0.5})),
        (
            &["$.items[1].sku == \"X\""],
            json!({"items": [null, {"sku": "X"}]}),
        ),
        (&["$.query contains \"DROP\""], json!({"query": "DROP"})),
        (&["$.tags contains 7"], json!({"tags": [7]})),
        (
            &["$.sql matches \"DELETE *\""],
            json!({"sql": "DELETE drill"}),
        ),
        (&["$.mode in [\"a\", \"b\"]"], json!({"mode": "a"})),
        (
            &["$.dry_run exists", "$.n != 3"],
            json!({"dry_run": true, "n": 4}),
        ),
    ] {
        assert_eq!(body(conds), Ok(want), "{conds:?}");
    }
    let none = body(&["$.s < \"\""]).unwrap_err();
    assert!(none.contains("`$.s < \"\"`"), "{none}");
    let clash = body(&["$.n > 5", "$.n < 3"]).unwrap_err();
    assert!(clash.contains("$.n"), "{clash}");
}

/// Only a refusal by the rule under drill passes: not another rule's, not a built-in refusal,
/// not the proxy's "not forwarded" answer to a canary, not an upstream's answer, not silence.
#[test]
fn the_judge_passes_only_a_refusal_by_the_rule_under_drill() {
    let probe = HttpProbe::default_deny();
    let refusal = |status: &str, rule: &str, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-governance-rule: {rule}\r\n{extra}\r\n{{\"reason\":\"why\"}}"
        )
    };
    let judge = |answer: &str| super::judge(&probe, "p/r", answer.as_bytes());
    assert_eq!(
        judge(&refusal("403 Forbidden", "p/r", "")),
        Ok("refused (HTTP 403, rule p/r)".into())
    );
    assert_eq!(
        judge(&refusal("403 Forbidden", "p/other", "")),
        Err("HTTP 403 by p/other (why), not a refusal by the rule under drill".into())
    );
    assert_eq!(
        judge(&refusal(
            "409 Conflict",
            "p/r",
            "x-governance-drill: the policy allows it by p/r\r\n"
        )),
        Err("not refused: the policy allows it by p/r".into())
    );
    assert_eq!(
        judge("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        Err("HTTP 200 from the proxy, no rule named".into())
    );
    assert_eq!(
        judge(""),
        Err("no answer: the proxy closed the connection".into())
    );
    let mcp = HttpProbe {
        mcp: true,
        ..HttpProbe::default_deny()
    };
    let rpc = |body: &str| {
        super::judge(
            &mcp,
            "p/r",
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}").as_bytes(),
        )
    };
    assert_eq!(
        rpc(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"blocked","data":{"rule":"p/r"}}}"#
        ),
        Ok("refused (JSON-RPC error -32001, rule p/r)".into())
    );
    assert!(rpc(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_err());
}
