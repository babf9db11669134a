use super::*;
use crate::events::{AgentInfo, ApprovalInfo, Shadow};

fn decision(kind: &str, outcome: &str, agent: &str) -> Record {
    Record {
        kind: kind.to_owned().into(),
        outcome: outcome.to_owned().into(),
        agent: Some(
            AgentInfo {
                name: agent.into(),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Every sample of `text`: (name, labels, value); panics on a line that is not
/// `name{k="v",...} value`, a comment, or the closing `# EOF`.
type Sample = (String, Vec<(String, String)>, f64);

fn samples(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| not_a_sample(line));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let r = rest.strip_prefix(',').unwrap_or(rest);
                if let Some(r) = r.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (key, r) = r.split_once("=\"").unwrap_or_else(|| not_a_sample(line));
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => not_a_sample(line),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => not_a_sample(line),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = &r[end + 1..];
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| not_a_sample(line));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| not_a_sample(line)),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

fn not_a_sample<T>(line: &str) -> T {
    panic!("not a sample line: {line:?}")
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text).into_iter().find_map(|(n, l, v)| {
        let same = l.len() == labels.len()
            && labels
                .iter()
                .all(|(k, want)| l.iter().any(|(lk, lv)| lk == k && lv == want));
        (n == name && same).then_some(v)
    })
}

#[test]
fn says_which_build_runs() {
    let v = crate::version::Version::this();
    let t = Metrics::new().render();
    let labels = [
        ("version", v.version.as_str()),
        ("commit", v.commit.as_str()),
        ("ebpf", v.ebpf.as_str()),
    ];
    assert_eq!(
        value(&t, "governance_build_info", &labels),
        Some(1.0),
        "{t}"
    );
}

#[test]
fn counts_records() {
    let m = Metrics::new();
    m.observe(&decision("exec", "block", "bot"));
    m.observe(&decision("exec", "block", "bot"));
    m.observe(&decision("connect", "allow", "bot"));
    m.observe(&decision("unknown:200", "weird", "bot"));
    let mut shadowed = decision("file", "allow", "bot");
    shadowed.shadow = Some(Shadow {
        verdict: "block".into(),
        rule: "p/r".into(),
    });
    m.observe(&shadowed);
    let mut failed = decision("connect", "block", "bot");
    failed.rule = "fail-closed:no-proxy".into();
    m.observe(&failed);
    m.observe(&Record {
        kind: "http".into(),
        outcome: "allow".into(),
        ..Default::default()
    });
    m.observe(&Record {
        ty: RecordType::Approval,
        kind: "approval.approved".into(),
        approval: Some(
            ApprovalInfo {
                state: "approved".into(),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    });
    m.observe(&Record {
        ty: RecordType::Approval,
        kind: "approval.requested".into(),
        ..Default::default()
    });
    m.observe(&Record::daemon(RecordType::Policy, "policy.reloaded", ""));
    m.observe(&Record::daemon(
        RecordType::Policy,
        "policy.reload_failed",
        "bad",
    ));
    m.set_generation(7);
    m.set_pending_approvals(2);
    m.set_kernel_counters(100, 10, 1, 0);
    m.inc_events_published(5);
    m.inc_subscriber_events_lost(3);
    m.inc_audit_records(4);
    m.observe_audit_flush(Duration::from_millis(3));
    m.observe_proxy("allow", Duration::from_micros(80), Duration::from_micros(5));
    m.observe_proxy("teapot", Duration::from_secs(2), Duration::from_micros(5));

    let t = m.render();
    let v = |name: &str, labels: &[(&str, &str)]| value(&t, name, labels);
    let d = |kind, outcome, agent| {
        v(
            "governance_decisions_total",
            &[("kind", kind), ("outcome", outcome), ("agent", agent)],
        )
    };
    assert_eq!(d("exec", "block", "bot"), Some(2.0), "{t}");
    assert_eq!(d("connect", "allow", "bot"), Some(1.0));
    assert_eq!(d("_other", "_other", "bot"), Some(1.0));
    assert_eq!(d("http", "allow", "_none"), Some(1.0));
    assert_eq!(
        v(
            "governance_shadow_decisions_total",
            &[("kind", "file"), ("verdict", "block")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "governance_fail_closed_total",
            &[("kind", "connect"), ("reason", "no-proxy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v("governance_approvals_total", &[("state", "approved")]),
        Some(1.0)
    );
    assert_eq!(
        v("governance_approvals_total", &[("state", "pending")]),
        Some(1.0)
    );
    for result in ["success", "failure"] {
        let l = [("result", result)];
        assert_eq!(v("governance_policy_reloads_total", &l), Some(1.0));
    }
    assert_eq!(
        v("governance_policy_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(v("governance_policy_generation", &[]), Some(7.0));
    assert_eq!(v("governance_approvals_pending", &[]), Some(2.0));
    assert_eq!(v("governance_kernel_decisions_total", &[]), Some(100.0));
    assert_eq!(v("governance_kernel_denials_total", &[]), Some(10.0));
    assert_eq!(v("governance_kernel_ring_drops_total", &[]), Some(1.0));
    assert_eq!(v("governance_kernel_map_full_total", &[]), Some(0.0));
    assert_eq!(v("governance_events_published_total", &[]), Some(5.0));
    assert_eq!(v("governance_subscriber_events_lost_total", &[]), Some(3.0));
    assert_eq!(v("governance_audit_records_total", &[]), Some(4.0));
    assert_eq!(v("governance_audit_flush_seconds_count", &[]), Some(1.0));
    let req = "governance_proxy_request_duration_seconds_bucket";
    assert_eq!(v(req, &[("outcome", "allow"), ("le", "0.0001")]), Some(1.0));
    assert_eq!(
        v(req, &[("outcome", "allow"), ("le", "0.00005")]),
        Some(0.0)
    );
    assert_eq!(v(req, &[("outcome", "_other"), ("le", "+Inf")]), Some(1.0));
    assert_eq!(
        v("governance_proxy_decision_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert!(t.contains("# TYPE governance_decisions counter\n"), "{t}");
}

/// Counting a batch at once is counting its records one by one: runs of the same labels,
/// label changes inside a run (agent, shadow, fail-closed), other record types between, and
/// the agent limit reached in the middle of a batch.
#[test]
fn observe_all_counts_as_observe_does() {
    let mut batch = Vec::new();
    for i in 0..40 {
        let mut r = decision(
            ["exec", "connect"][i / 10 % 2],
            ["block", "allow"][i / 7 % 2],
            &format!("bot-{}", i / 5),
        );
        if i % 11 == 3 {
            r.shadow = Some(Shadow {
                verdict: "block".into(),
                rule: "p/r".into(),
            });
        }
        if i % 13 == 4 {
            r.rule = "fail-closed:unreadable".into();
        }
        if i == 20 {
            batch.push(Record::daemon(RecordType::Policy, "policy.reloaded", ""));
        }
        batch.push(r);
    }
    batch.push(Record {
        kind: "http".into(),
        outcome: "allow".into(),
        ..Default::default()
    });
    let (one, all) = (Metrics::with_agent_limit(3), Metrics::with_agent_limit(3));
    for r in &batch {
        one.observe(r);
    }
    all.observe_all(&batch[..17]);
    all.observe_all(&batch[17..]);
    // Series in any order (a family keeps them in a hash map).
    let governance = |t: String| {
        let mut lines: Vec<String> = t
            .lines()
            .filter(|l| l.starts_with("governance_"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(governance(one.render()), governance(all.render()));
}

#[test]
fn agent_label_is_bounded() {
    fn shared<T: Send + Sync>() {}
    shared::<Metrics>();

    let n = 4;
    let m = Metrics::with_agent_limit(n);
    for i in 0..n + 5 {
        m.observe(&decision("exec", "allow", &format!("agent-{i}")));
    }
    // An agent that has a slot keeps it.
    m.observe(&decision("exec", "allow", "agent-0"));
    let t = m.render();
    let agents: HashSet<String> = samples(&t)
        .into_iter()
        .filter(|(n, _, _)| n == "governance_decisions_total")
        .flat_map(|(_, l, _)| l.into_iter().filter(|(k, _)| k == "agent"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(agents.len(), n + 1, "{agents:?}");
    assert!(agents.contains(OTHER));
    let l = [("kind", "exec"), ("outcome", "allow")];
    let other = [l[0], l[1], ("agent", OTHER)];
    assert_eq!(value(&t, "governance_decisions_total", &other), Some(5.0));
    let first = [l[0], l[1], ("agent", "agent-0")];
    assert_eq!(value(&t, "governance_decisions_total", &first), Some(2.0));
}

#[test]
fn process_metrics_are_read_at_scrape() {
    let m = Metrics::new();
    // Spend some CPU so the clock-tick counters have moved.
    let start = std::time::Instant::now();
    let mut cpu = 0.0;
    while start.elapsed() < Duration::from_secs(5) {
        cpu = value(&m.render(), "process_cpu_seconds_total", &[]).unwrap_or_default();
        if cpu > 0.0 {
            break;
        }
    }
    let t = m.render();
    assert!(cpu > 0.0, "{t}");
    let rss = value(&t, "process_resident_memory_bytes", &[]).unwrap_or_default();
    assert!(rss > 0.0, "{t}");
    let fds = value(&t, "process_open_fds", &[]).unwrap_or_default();
    assert!(fds >= 3.0, "{t}");
    // Nothing from the kernel until the daemon has read it.
    assert!(!t.contains("governance_kernel_"), "{t}");
}

#[test]
fn renders_valid_text_with_awkward_agent_names() {
    let m = Metrics::new();
    m.observe(&decision("exec", "allow", "we\"ird\\name\nnewline"));
    let t = m.render();
    let l = [
        ("kind", "exec"),
        ("outcome", "allow"),
        ("agent", "we\"ird\\name\nnewline"),
    ];
    assert_eq!(
        value(&t, "governance_decisions_total", &l),
        Some(1.0),
        "{t}"
    );
}
