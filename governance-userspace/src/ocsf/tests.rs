use super::*;
use crate::events::{AgentInfo, ApprovalInfo, CgroupInfo, Object, Shadow, Source};

fn decision(kind: &str, outcome: &str, object: Object) -> Record {
    Record {
        id: "18f-00000001".into(),
        time: "2026-01-02T03:04:05.678901234Z".into(),
        node: "node-1".into(),
        kind: kind.to_owned().into(),
        outcome: outcome.to_owned().into(),
        denied: !matches!(outcome, "allow" | "granted" | "sandbox"),
        verdict: outcome.to_owned().into(),
        mode: "enforce".into(),
        rule: "bot/no-wget".into(),
        reason: "no downloads".into(),
        generation: 3,
        agent: Some(
            AgentInfo {
                name: "bot".into(),
                cgroup_id: 4000,
                ..Default::default()
            }
            .into(),
        ),
        cgroup: Some(CgroupInfo {
            id: 4242,
            path: String::new(),
        }),
        process: Some(ProcessInfo {
            pid: 10,
            tid: 11,
            ppid: 9,
            uid: 1000,
            comm: "sh".into(),
            exe: "/usr/bin/dash".into(),
            argv: vec!["sh".into(), "-c".into(), "wget x".into()],
            enrichment: "procfs".into(),
            ..Default::default()
        }),
        object,
        ..Default::default()
    }
}

/// (class_uid, activity_id, type_uid, disposition_id)
fn ids(e: &Value) -> (u64, u64, u64, Option<u64>) {
    (
        e["class_uid"].as_u64().unwrap(),
        e["activity_id"].as_u64().unwrap(),
        e["type_uid"].as_u64().unwrap(),
        e["disposition_id"].as_u64(),
    )
}

#[test]
fn containers_in_pods_have_the_container_profile() {
    let mut r = decision("exec", "block", Object::default());
    if let Some(a) = r.agent.as_mut().map(std::sync::Arc::make_mut) {
        a.pod = "coding-agent-7d9f8b6c5-x2x4k".into();
        a.namespace = "agents".into();
        a.container = "8e1f2c3d".into();
    }
    if let Some(p) = r.process.as_mut() {
        p.ns_pid = 7;
    }
    let e = to_ocsf(&r);
    assert_eq!(e["actor"]["process"]["xattributes"]["ns_pid"], 7, "{e:#}");
    let c = &e["actor"]["process"]["container"];
    assert_eq!(
        (c["uid"].clone(), c["orchestrator"].clone()),
        (json!("8e1f2c3d"), json!("Kubernetes")),
        "{e:#}"
    );
    assert_eq!(
        e["metadata"]["profiles"],
        json!(["host", "security_control", "container"])
    );
    assert_eq!(e["unmapped"]["agent"]["namespace"], "agents");
    assert_eq!(
        e["unmapped"]["agent"]["pod"],
        "coding-agent-7d9f8b6c5-x2x4k"
    );
}

#[test]
fn exec_is_a_process_launch() {
    let r = decision(
        "exec",
        "block",
        Object {
            path: "/usr/bin/wget".into(),
            ..Default::default()
        },
    );
    let e = to_ocsf(&r);
    assert_eq!(ids(&e), (1007, 1, 100701, Some(2)), "{e:#}");
    assert_eq!(e["category_uid"], 1);
    assert_eq!(e["type_name"], "Process Activity: Launch");
    assert_eq!(e["time"], 1_767_323_045_678u64);
    assert_eq!(e["metadata"]["original_time"], r.time.as_str());
    assert_eq!(
        (e["severity_id"].clone(), e["status_id"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(e["action_id"], 2);
    assert_eq!(e["message"], r.to_string());
    assert_eq!(e["status_detail"], "no downloads");
    let m = &e["metadata"];
    assert_eq!(
        (
            m["version"].clone(),
            m["uid"].clone(),
            m["log_name"].clone()
        ),
        (json!("1.3.0"), json!("18f-00000001"), json!("decision"))
    );
    assert_eq!(m["product"]["name"], "governance");
    assert_eq!(m["product"]["vendor_name"], "governance");
    let p = &e["actor"]["process"];
    assert_eq!(p["pid"], 10);
    assert_eq!(p["name"], "sh");
    assert_eq!(p["file"]["path"], "/usr/bin/dash");
    assert_eq!(p["cmd_line"], "sh -c wget x");
    assert_eq!(p["parent_process"]["pid"], 9);
    assert_eq!(p["user"]["uid"], "1000");
    assert_eq!(e["process"]["file"]["path"], "/usr/bin/wget");
    assert_eq!(e["process"]["name"], "wget");
    assert_eq!(e["device"]["hostname"], "node-1");
    assert_eq!(e["authorizations"][0]["policy"]["uid"], "bot/no-wget");
    assert_eq!(e["authorizations"][0]["policy"]["name"], "bot");
    let u = &e["unmapped"];
    assert_eq!(u["agent"]["name"], "bot");
    assert_eq!(u["rule"], "bot/no-wget");
    assert_eq!(u["generation"], 3);
    assert_eq!(u["mode"], "enforce");
    assert_eq!(u["cgroup"]["id"], 4242);
    assert!(u.get("object").is_none(), "{u:#}");
}

#[test]
fn file_network_http_kernel_and_process_targets() {
    let file = to_ocsf(&decision(
        "file",
        "allow",
        Object {
            path: "/etc/shadow".into(),
            access: "rw".into(),
            ..Default::default()
        },
    ));
    assert_eq!(ids(&file), (1001, 14, 100114, Some(1)));
    assert_eq!(file["file"]["path"], "/etc/shadow");
    assert_eq!(file["file"]["name"], "shadow");
    assert_eq!(file["unmapped"]["access"], "rw");
    assert_eq!(
        (file["status_id"].clone(), file["severity_id"].clone()),
        (json!(1), json!(1))
    );

    let connect = to_ocsf(&decision(
        "connect",
        "block",
        Object {
            dest: "169.254.169.254:80".into(),
            protocol: "tcp".into(),
            ..Default::default()
        },
    ));
    assert_eq!(ids(&connect), (4001, 1, 400101, Some(2)));
    assert_eq!(connect["category_uid"], 4);
    assert_eq!(
        connect["dst_endpoint"],
        json!({"ip": "169.254.169.254", "port": 80})
    );
    let ci = &connect["connection_info"];
    assert_eq!(
        (ci["protocol_num"].clone(), ci["protocol_ver_id"].clone()),
        (json!(6), json!(4))
    );
    assert_eq!(ci["direction_id"], 2);

    let send = to_ocsf(&decision(
        "send",
        "throttle",
        Object {
            dest: "[::1]:53".into(),
            protocol: "udp".into(),
            ..Default::default()
        },
    ));
    assert_eq!(ids(&send), (4001, 6, 400106, Some(2)));
    assert_eq!(send["dst_endpoint"]["ip"], "::1");
    assert_eq!(send["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(send["severity_id"], 2);

    let mut r = decision(
        "http",
        "escalate",
        Object {
            method: "post".into(),
            url: "https://api.stripe.com:8443/v1/refunds?amount=500#x".into(),
            mcp_tool: "refund".into(),
            ..Default::default()
        },
    );
    r.source = Source::Proxy;
    r.approval = Some(
        ApprovalInfo {
            id: "ap-1".into(),
            state: "pending".into(),
            ..Default::default()
        }
        .into(),
    );
    let http = to_ocsf(&r);
    assert_eq!(ids(&http), (4002, 6, 400206, Some(14)));
    let req = &http["http_request"];
    assert_eq!(req["http_method"], "POST");
    assert_eq!(
        req["url"],
        json!({
            "url_string": "https://api.stripe.com:8443/v1/refunds?amount=500#x",
            "scheme": "https",
            "hostname": "api.stripe.com",
            "port": 8443,
            "path": "/v1/refunds",
            "query_string": "amount=500",
        })
    );
    assert_eq!(
        http["dst_endpoint"],
        json!({"hostname": "api.stripe.com", "port": 8443})
    );
    assert_eq!(http["metadata"]["log_provider"], "proxy");
    assert_eq!(http["unmapped"]["mcp_tool"], "refund");
    assert_eq!(http["unmapped"]["approval"]["id"], "ap-1");
    let mut patch = r.clone();
    patch.object.method = "PATCH".into();
    patch.object.url = "http://10.0.0.1/x".into();
    let patch = to_ocsf(&patch);
    assert_eq!(ids(&patch), (4002, 99, 400299, Some(14)));
    assert_eq!(patch["activity_name"], "PATCH");
    assert_eq!(patch["dst_endpoint"], json!({"ip": "10.0.0.1", "port": 80}));

    let bpf = to_ocsf(&decision("bpf", "block", Object::default()));
    assert_eq!(ids(&bpf), (1003, 4, 100304, Some(2)));
    assert_eq!(bpf["kernel"]["system_call"], "bpf");
    assert_eq!(bpf["severity_id"], 4);
    let userns = to_ocsf(&decision("userns", "block", Object::default()));
    assert_eq!(ids(&userns), (1003, 1, 100301, Some(2)));
    let with = |k: &str, v: &str| Object {
        detail: [(k.to_owned(), v.to_owned())].into(),
        ..Default::default()
    };
    let cap = to_ocsf(&decision(
        "capability",
        "block",
        with("capability", "CAP_SYS_ADMIN"),
    ));
    assert_eq!(ids(&cap), (1003, 4, 100304, Some(2)));
    assert_eq!(cap["kernel"]["name"], "CAP_SYS_ADMIN");
    let mount = to_ocsf(&decision("mount", "block", with("operation", "pivot_root")));
    assert_eq!(mount["kernel"]["system_call"], "pivot_root");
    let map = to_ocsf(&decision("exec_map", "block", with("via", "mprotect")));
    assert_eq!(ids(&map), (1003, 4, 100304, Some(2)));
    assert_eq!(map["kernel"]["system_call"], "mprotect");
    let clone = to_ocsf(&decision("clone", "block", Object::default()));
    assert_eq!(clone["kernel"]["system_call"], "clone");

    let target = |signal| Object {
        target_pid: 1,
        signal,
        ..Default::default()
    };
    let kill = to_ocsf(&decision("signal", "block", target(9)));
    assert_eq!(ids(&kill), (1007, 2, 100702, Some(2)));
    assert_eq!(kill["process"]["pid"], 1);
    let usr1 = to_ocsf(&decision("signal", "block", target(10)));
    assert_eq!(ids(&usr1), (1007, 99, 100799, Some(2)));
    assert_eq!(usr1["unmapped"]["signal"], 10);
    let ptrace = to_ocsf(&decision("ptrace", "block", target(0)));
    assert_eq!(ids(&ptrace), (1007, 3, 100703, Some(2)));

    let unlink = to_ocsf(&decision("unlink", "block", Object::default()));
    assert_eq!(ids(&unlink), (1001, 4, 100104, Some(2)));

    let op = |op: &str| {
        let mut o = Object::default();
        o.detail.insert("op".into(), op.into());
        o
    };
    let rename = to_ocsf(&decision("link", "block", op("rename")));
    assert_eq!(ids(&rename), (1001, 5, 100105, Some(2)));
    let link = to_ocsf(&decision("link", "block", op("link")));
    assert_eq!(ids(&link), (1001, 1, 100101, Some(2)));
}

#[test]
fn outcomes_set_disposition_and_severity() {
    let exec = |outcome| {
        let mut r = decision("exec", outcome, Object::default());
        r.object.path = "/bin/x".into();
        r
    };
    for (outcome, disposition, severity, action) in [
        ("allow", 1, 1, 1),
        ("granted", 8, 1, 1),
        ("sandbox", 4, 1, 1),
        ("escalate", 14, 2, 2),
        ("throttle", 2, 2, 2),
        ("block", 2, 3, 2),
        ("kill", 2, 4, 2),
    ] {
        let e = to_ocsf(&exec(outcome));
        assert_eq!(
            (
                e["disposition_id"].clone(),
                e["severity_id"].clone(),
                e["action_id"].clone()
            ),
            (json!(disposition), json!(severity), json!(action)),
            "{outcome}"
        );
    }
    let mut shadowed = exec("allow");
    shadowed.shadow = Some(Shadow {
        verdict: "block".into(),
        rule: "bot/new".into(),
    });
    let e = to_ocsf(&shadowed);
    assert_eq!(
        (e["disposition_id"].clone(), e["severity_id"].clone()),
        (json!(15), json!(2))
    );
    assert_eq!(e["unmapped"]["shadow"]["rule"], "bot/new");
}

#[test]
fn approvals_policy_and_lifecycle() {
    let approval = |kind: &str, state: &str| Record {
        ty: RecordType::Approval,
        kind: kind.to_owned().into(),
        node: "node-1".into(),
        agent: Some(
            AgentInfo {
                name: "bot".into(),
                ..Default::default()
            }
            .into(),
        ),
        object: Object {
            path: "/usr/bin/wget".into(),
            ..Default::default()
        },
        approval: Some(
            ApprovalInfo {
                id: "ap-1".into(),
                state: state.into(),
                by: if state == "pending" { "" } else { "alice" }.into(),
                reason: if state == "denied" { "no" } else { "" }.into(),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    };
    let requested = to_ocsf(&approval("approval.requested", "pending"));
    assert_eq!(ids(&requested), (3004, 1, 300401, None));
    assert_eq!(requested["category_uid"], 3);
    assert_eq!(requested["entity"]["uid"], "ap-1");
    assert_eq!(requested["severity_id"], 2);
    assert_eq!(requested["unmapped"]["object"]["path"], "/usr/bin/wget");
    let denied = to_ocsf(&approval("approval.denied", "denied"));
    assert_eq!(ids(&denied), (3004, 3, 300403, None));
    assert_eq!(denied["actor"]["user"]["name"], "alice");
    assert_eq!(denied["comment"], "no");
    assert_eq!(denied["entity"]["data"]["state"], "denied");

    let reloaded = to_ocsf(&Record::daemon(RecordType::Policy, "policy.reloaded", "ok"));
    assert_eq!(ids(&reloaded), (6002, 8, 600208, None));
    assert_eq!(reloaded["app"]["name"], "governance");
    assert_eq!(reloaded["status_id"], 1);
    let failed = to_ocsf(&Record::daemon(
        RecordType::Policy,
        "policy.reload_failed",
        "x",
    ));
    assert_eq!(
        (failed["status_id"].clone(), failed["severity_id"].clone()),
        (json!(2), json!(3))
    );
    let started = to_ocsf(&Record::daemon(RecordType::Lifecycle, "daemon.started", ""));
    assert_eq!(ids(&started), (6002, 3, 600203, None));
    assert!(started["time"].as_u64().unwrap() > 1_700_000_000_000);
}

#[test]
fn unknown_kinds_are_base_events() {
    let mut r = decision("unknown:200", "?", Object::default());
    r.time = "not a time".into();
    r.agent = None;
    r.process = None;
    let e = to_ocsf(&r);
    assert_eq!(ids(&e), (0, 99, 99, None));
    assert_eq!(e["category_uid"], 0);
    assert_eq!(e["activity_name"], "unknown:200");
    assert!(e.get("time").is_none());
    assert_eq!(e["metadata"]["original_time"], "not a time");
    assert_eq!(e["unmapped"]["node"], "node-1");
    assert!(
        e.get("device").is_none() && e.get("actor").is_none(),
        "{e:#}"
    );

    let mut lost = Record::daemon(RecordType::Lifecycle, "subscriber.lost", "3 lost");
    lost.counts.insert("lost".into(), 3);
    let e = to_ocsf(&lost);
    assert_eq!(ids(&e), (0, 99, 99, None));
    assert_eq!(e["unmapped"]["counts"]["lost"], 3);
    // Nothing at all still maps.
    let e = to_ocsf(&Record::default());
    assert_eq!(e["class_uid"], 0);
}

#[test]
fn urls_split_without_failing() {
    assert_eq!(
        split_url("http://user@[::1]:8080/a?b"),
        Url {
            scheme: "http",
            host: "::1",
            port: Some(8080),
            path: "/a",
            query: "b"
        }
    );
    assert_eq!(
        split_url("example.com:443"),
        Url {
            host: "example.com",
            port: Some(443),
            ..Default::default()
        }
    );
    assert_eq!(
        split_url("/only/path?q"),
        Url {
            path: "/only/path",
            query: "q",
            ..Default::default()
        }
    );
    for s in ["", "://", "[", "[::1", "a:b:c", "http://:99999/", "?#@[]:"] {
        let _ = split_url(s);
    }
}
