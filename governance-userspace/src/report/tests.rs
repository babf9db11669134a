//! The report over small logs written with the real audit writer: exact counts, escaping,
//! and a damaged log reported as such.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde_json::json;

use super::*;
use crate::{
    audit::{AuditLog, AuditOptions},
    events::{AgentInfo, ApprovalInfo, Object},
};

const EVIL: &str = "<script>alert(1)</script>";
const EVIL_RULE: &str = "p/<img src=x onerror=alert(2)>";

/// 2026-11-01T00:00:00Z.
fn t0() -> SystemTime {
    parse_rfc3339("2026-11-01T00:00:00Z").unwrap()
}

fn at(secs: u64) -> String {
    rfc3339(t0() + Duration::from_secs(secs))
}

const H: u64 = 3600;
const D: u64 = 86400;

fn agent(name: &str) -> Option<std::sync::Arc<AgentInfo>> {
    Some(
        AgentInfo {
            name: name.into(),
            cgroup: format!("agents/{name}"),
            cgroup_id: 42,
            ..Default::default()
        }
        .into(),
    )
}

fn decision(secs: u64, who: &str, outcome: &str, rule: &str) -> Record {
    Record {
        id: format!("x-{secs}"),
        time: at(secs),
        node: "node-1".into(),
        ty: RecordType::Decision,
        kind: "connect".into(),
        outcome: outcome.to_owned().into(),
        verdict: outcome.to_owned().into(),
        denied: outcome != "allow",
        rule: rule.into(),
        agent: agent(who),
        object: Object {
            dest: "10.0.0.1:443".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn daemon(secs: u64, ty: RecordType, kind: &str) -> Record {
    Record {
        time: at(secs),
        node: "node-1".into(),
        ty,
        source: crate::events::Source::Daemon,
        kind: kind.to_owned().into(),
        ..Default::default()
    }
}

fn reloaded(secs: u64, generation: u32, hash: &str) -> Record {
    let mut r = daemon(secs, RecordType::Policy, "policy.reloaded");
    r.generation = generation;
    r.object.path = "/etc/governance/policies".into();
    r.object.detail.insert("sha256".into(), hash.into());
    r.counts.insert("rules".into(), 12);
    r.counts.insert("agents".into(), 2);
    r
}

fn approval(secs: u64, id: &str, state: &str, by: &str, why: &str) -> Record {
    let kind = if state == "pending" {
        "approval.requested".to_string()
    } else {
        format!("approval.{state}")
    };
    Record {
        time: at(secs),
        node: "node-1".into(),
        ty: RecordType::Approval,
        kind: kind.into(),
        rule: "p/ask".into(),
        agent: agent("coder"),
        object: Object {
            path: "/usr/bin/curl".into(),
            ..Default::default()
        },
        approval: Some(
            ApprovalInfo {
                id: id.into(),
                state: state.into(),
                by: by.into(),
                reason: why.into(),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Write `records` (JSON values) as a sealed log.
fn write_log(dir: &Path, records: &[Value]) {
    let opts = AuditOptions {
        signing_key: Some(key()),
        ..Default::default()
    };
    let mut log = AuditLog::open(dir, opts).unwrap();
    for r in records {
        log.append(r).unwrap();
    }
    log.close().unwrap();
}

/// Three days of records: two agents (one named like an attack), counted allowed actions,
/// escalations, two generations, a failed reload and a failed drill; plus records before and
/// after the period.
fn period_log(with_drill: bool) -> Vec<Value> {
    let v = |r: Record| serde_json::to_value(r).unwrap();
    let mut sampled = decision(D + 2 * H, "coder", "allow", "p/web");
    sampled.sampled = true;
    let mut counted = daemon(3 * H, RecordType::Lifecycle, "decisions.counted");
    counted.agent = agent("coder");
    counted.verdict = "allow".into();
    counted.rule = "p/web".into();
    counted.counts = [("connect".to_string(), 10), ("file".to_string(), 5)].into();
    let mut failed = daemon(2 * D, RecordType::Policy, "policy.reload_failed");
    failed.generation = 2;
    failed.message = "generation 2 keeps enforcing: bad yaml".into();
    let mut before = decision(0, "coder", "block", "p/no-nc");
    before.time = rfc3339(t0() - Duration::from_secs(10));
    let mut records = vec![
        {
            let mut r = v(reloaded(0, 1, &"a".repeat(64)));
            r["time"] = json!(rfc3339(t0() - Duration::from_secs(H)));
            r
        },
        v(before),
        v(decision(H, "coder", "block", "p/no-nc")),
        v(decision(2 * H, "coder", "block", "p/no-nc")),
        v(decision(2 * H + 5, "coder", "allow", "p/web")),
        v(counted),
        v(decision(D + 10, "coder", "escalate", "p/ask")),
        v(approval(D + 10, "a1", "pending", "", "")),
        v(approval(D + 70, "a1", "approved", "alice", "")),
        v(sampled),
        v(reloaded(D + H, 2, &"b".repeat(64))),
        v(decision(D + 2 * H, EVIL, "block", EVIL_RULE)),
        v(decision(D + 3 * H, EVIL, "block", EVIL_RULE)),
        v(decision(D + 4 * H, EVIL, "block", EVIL_RULE)),
        v(failed),
        v(approval(2 * D, "a2", "pending", "", "")),
        v(approval(
            2 * D + 30,
            "a2",
            "denied",
            "bob",
            "not <b>now</b>",
        )),
        v(approval(2 * D + H, "a3", "pending", "", "")),
        v(decision(2 * D + 3 * H, "coder", "block", "default")),
    ];
    if with_drill {
        let mut drill = v(daemon(2 * D + 2 * H, RecordType::Lifecycle, "drill.failed"));
        drill["counts"] = json!({"checks": 3, "passed": 2, "failed": 1, "skipped": 0});
        drill["message"] = json!("1 of 3 checks failed");
        drill["drill"] = json!({"id": "d1", "checks": [
            {"policy": "p", "rule": "no-nc", "kind": "exec", "object": "/usr/bin/nc",
             "expected": "block", "got": "allow", "passed": false, "skipped_why": null},
            {"policy": "p", "rule": "x", "kind": "file", "object": "/etc/shadow",
             "expected": "block", "got": "block", "passed": true},
            {"policy": "p", "rule": "y", "kind": "network", "object": "1.2.3.4:80",
             "expected": "block", "got": "", "passed": false, "skipped_why": "no route"},
        ]});
        records.push(drill);
    }
    // After the period: not counted.
    records.push(v(decision(3 * D + 60, "coder", "block", "p/no-nc")));
    records
}

fn options(dir: &Path) -> Options {
    Options {
        audit_dir: dir.to_owned(),
        since: t0(),
        until: t0() + Duration::from_secs(3 * D),
        agent: None,
        public_key: None,
        now: t0() + Duration::from_secs(3 * D + H),
    }
}

fn series(d: &Decisions) -> Vec<(&str, Vec<u64>)> {
    d.series
        .iter()
        .map(|s| (s.verdict.as_str(), s.counts.clone()))
        .collect()
}

#[test]
fn aggregates_a_period_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &period_log(true));
    let r = build(&options(dir.path())).unwrap();

    assert_eq!(r.node, "node-1");
    assert_eq!(r.period.bucket, "day");
    assert_eq!(
        r.period.buckets,
        [at(0), at(D), at(2 * D)],
        "one bucket per UTC day"
    );
    let v = &r.verification;
    assert!(v.passed, "{:?}", v.problem);
    assert_eq!((v.files, v.seals, v.records), (1, 1, 21));
    let public: String = key()
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v.seal_keys, [public]);
    assert_eq!(v.first_record.as_ref().unwrap().time, at(H));
    // The last written (the drill, appended last), not the latest.
    assert_eq!(v.last_record.as_ref().unwrap().time, at(2 * D + 2 * H));

    // Decisions: the sampled allow is in the count record, not counted twice; the records
    // before and after the period are not counted.
    let d = &r.decisions;
    assert_eq!(
        series(d),
        [
            ("allow", vec![16, 0, 0]),
            ("block", vec![2, 3, 1]),
            ("escalate", vec![0, 1, 0])
        ]
    );
    assert_eq!(d.counted, 15);
    assert_eq!(
        d.by_verdict,
        [
            ("allow".into(), 16),
            ("block".into(), 6),
            ("escalate".into(), 1)
        ]
        .into()
    );
    assert_eq!(d.refused, 7);
    let top: Vec<_> = d
        .top_refused
        .iter()
        .map(|r| (r.rule.as_str(), r.refused))
        .collect();
    assert_eq!(
        top,
        [(EVIL_RULE, 3), ("p/no-nc", 2), ("default", 1), ("p/ask", 1)]
    );
    let agents: Vec<_> = r.agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(agents, [EVIL, "coder"]);
    assert_eq!(series(&r.agents[0].decisions), [("block", vec![0, 3, 0])]);
    assert_eq!(r.agents[1].decisions.counted, 15);

    // Escalations: who, and how long.
    let e = &r.escalations;
    assert_eq!(e.total, 3);
    assert_eq!(
        e.by_state,
        [
            ("approved".into(), 1),
            ("denied".into(), 1),
            ("pending".into(), 1)
        ]
        .into()
    );
    let rows: Vec<_> = e
        .listed
        .iter()
        .map(|x| (x.id.as_str(), x.state.as_str(), x.by.as_str(), x.seconds))
        .collect();
    assert_eq!(
        rows,
        [
            ("a1", "approved", "alice", Some(60.0)),
            ("a2", "denied", "bob", Some(30.0)),
            ("a3", "pending", "", None)
        ]
    );
    assert_eq!(e.listed[0].requested, at(D + 10));
    assert_eq!(e.listed[0].object, "path=\"/usr/bin/curl\"");
    assert_eq!(e.max_seconds, Some(60.0));

    // Generations: the one enforcing at the start, until the next took over.
    let g = &r.generations;
    let start = g.at_start.as_ref().unwrap();
    assert_eq!(
        (
            start.generation,
            start.sha256.as_str(),
            start.until.as_str()
        ),
        (1, "a".repeat(64).as_str(), at(D + H).as_str())
    );
    assert_eq!(g.changes.len(), 1);
    assert_eq!(
        (
            g.changes[0].generation,
            g.changes[0].from.as_str(),
            g.changes[0].until.as_str()
        ),
        (2, at(D + H).as_str(), "")
    );
    assert_eq!((g.changes[0].rules, g.changes[0].agents), (12, 2));
    assert_eq!(g.failed_reloads.len(), 1);

    // The drill, and its failed check (the skipped one is not a failure).
    let dr = &r.drills;
    assert_eq!((dr.total, dr.passed, dr.failed), (1, 0, 1));
    let x = &dr.listed[0];
    assert_eq!(
        (x.checks, x.checks_passed, x.checks_failed, x.checks_skipped),
        (3, 2, 1, 0)
    );
    assert_eq!(
        x.failures,
        [DrillCheck {
            policy: "p".into(),
            rule: "no-nc".into(),
            kind: "exec".into(),
            object: "/usr/bin/nc".into(),
            expected: "block".into(),
            got: "allow".into(),
        }]
    );

    // HTML: the charts' bars, one per (bucket, verdict) with decisions.
    let html = html::render(&r);
    let node_chart = html
        .split("id=\"chart-node\"")
        .nth(1)
        .and_then(|s| s.split("</svg>").next())
        .unwrap();
    assert_eq!(node_chart.matches("<rect class=\"bar\"").count(), 5);
    assert!(node_chart.contains("data-series=\"3\" data-buckets=\"3\""));
    assert!(html.contains("<strong>PASSED</strong>"));
    assert!(!html.contains("No drills in this period"));
    assert!(html.contains("<strong style=\"color:#c62828\">FAILED</strong>"));
    assert!(html.contains(&"b".repeat(64)));
    // JSON and Markdown carry the same numbers.
    let json: Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["decisions"]["by_verdict"]["block"], 6);
    let md = markdown::render(&r);
    assert!(md.contains("| block | 6 |"), "{md}");
    assert!(md.contains("**PASSED**"));
}

/// Names from records are attacker-influenced: nothing of them reaches the page as markup.
#[test]
fn names_from_records_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &period_log(true));
    let r = build(&options(dir.path())).unwrap();
    let html = html::render(&r);
    assert!(!html.contains("<script"), "no script element");
    assert!(!html.contains("<img"), "no img element");
    assert!(!html.contains("<b>now"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("p/&lt;img src=x onerror=alert(2)&gt;"));
    assert_eq!(html::esc("a\"b'c&"), "a&quot;b&#39;c&amp;");
    assert_eq!(
        html::when("2026-11-30T13:07:42.123456789Z"),
        "2026-11-30 13:07:42 UTC"
    );
    assert_eq!(html::when("<b>"), "&lt;b&gt;");
    let md = markdown::render(&r);
    assert!(!md.contains("<script") && !md.contains("<img"), "{md}");
    assert_eq!(markdown::cell("a|b\nc"), "a\\|b c");
}

/// An auditor sees the absence of drills, and of everything else, stated.
#[test]
fn absent_drills_and_an_empty_period_are_stated() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &period_log(false));
    let r = build(&options(dir.path())).unwrap();
    assert_eq!(r.drills.total, 0);
    let html = html::render(&r);
    assert!(html.contains("No drills in this period"));
    assert!(markdown::render(&r).contains("No drills in this period."));

    // A period with nothing in it.
    let mut o = options(dir.path());
    o.since = t0() + Duration::from_secs(10 * D);
    o.until = t0() + Duration::from_secs(11 * D);
    let r = build(&o).unwrap();
    assert_eq!((r.records, r.period.bucket.as_str()), (0, "hour"));
    assert_eq!(r.period.buckets.len(), 24);
    assert!(r.verification.passed);
    let html = html::render(&r);
    for absent in [
        "No decisions in this period",
        "No refused actions in this period",
        "No escalations in this period",
        "No drills in this period",
    ] {
        assert!(html.contains(absent), "{absent}");
    }
    // The generation enforcing before the period is still named.
    assert_eq!(r.generations.at_start.as_ref().unwrap().generation, 2);
}

#[test]
fn the_agent_filter_keeps_one_agent() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &period_log(true));
    let mut o = options(dir.path());
    o.agent = Some("coder".into());
    let r = build(&o).unwrap();
    assert_eq!(
        r.decisions.by_verdict,
        [
            ("allow".into(), 16),
            ("block".into(), 3),
            ("escalate".into(), 1)
        ]
        .into()
    );
    assert_eq!(r.agents.len(), 1);
    assert_eq!(r.escalations.total, 3);
}

/// A tampered or truncated log: the report says FAILED and where, and still shows the period.
#[test]
fn a_damaged_log_is_reported_failed_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &period_log(true));
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("alice", "mallory", 1)).unwrap();
    let r = build(&options(dir.path())).unwrap();
    assert!(!r.verification.passed);
    let problem = r.verification.problem.clone().unwrap();
    assert!(
        problem.contains("line 9") && problem.contains("hash mismatch"),
        "{problem}"
    );
    let html = html::render(&r);
    assert!(html.contains("<strong>FAILED</strong>"));
    assert!(markdown::render(&r).contains("**FAILED**"));
    // The altered record is shown as it now reads (the verification says it is not to be
    // trusted).
    assert_eq!(r.escalations.listed[0].by, "mallory");

    // Truncated in the middle of a line, and garbage appended.
    let cut = &text[..text.len() / 2];
    std::fs::write(&file, format!("{cut}\n\0\u{1}garbage\n")).unwrap();
    let r = build(&options(dir.path())).unwrap();
    assert!(!r.verification.passed);
    assert!(r.unreadable_lines >= 1, "{}", r.unreadable_lines);
    assert!(html::render(&r).contains("FAILED"));

    // No log at all: an error naming the directory, not an empty report.
    let gone = dir.path().join("nope");
    let e = build(&options(&gone)).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

/// The charts' buckets follow the period's span, and stay few for any span.
#[test]
fn buckets_follow_the_span() {
    let grid = |days: u64| Grid::new(t0(), t0() + Duration::from_secs(days * D));
    let g = grid(2);
    assert_eq!((g.name, g.n), ("hour", 48));
    let g = grid(30);
    assert_eq!((g.name, g.n), ("day", 30));
    let g = grid(700);
    assert_eq!(g.name, "week");
    assert_eq!(g.n, 101, "aligned to the epoch's weeks");
    let g = Grid::new(
        SystemTime::UNIX_EPOCH,
        t0() + Duration::from_secs(365 * 100 * D),
    );
    assert_eq!(g.name, "multi-day");
    assert!(g.n <= 1000 && g.n > 900, "{}", g.n);
    assert_eq!(
        g.index(t0()),
        Some(
            ((t0()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs())
                / g.secs) as usize
        )
    );
    assert_eq!(grid(1).index(t0() - Duration::from_secs(1)), None);
}

/// The audit directory is the daemon's: the flag, else the config file's `audit_dir`.
#[test]
fn the_audit_dir_is_the_daemons() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReportArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "policy: /p\naudit_dir: /srv/audit\n").unwrap();
    let parse = |extra: &[&str]| {
        let argv = ["report", "--config", config.to_str().unwrap()];
        Cli::parse_from(argv.iter().chain(extra)).args
    };
    assert_eq!(audit_dir(&parse(&[])).unwrap(), Path::new("/srv/audit"));
    assert_eq!(
        audit_dir(&parse(&["--audit-dir", "/elsewhere"])).unwrap(),
        Path::new("/elsewhere")
    );
    std::fs::write(&config, "policy: /p\n").unwrap();
    assert_eq!(
        audit_dir(&parse(&[])).unwrap(),
        Path::new(DEFAULT_AUDIT_DIR)
    );
    std::fs::write(&config, "audit_dir: [1]\n").unwrap();
    assert!(audit_dir(&parse(&[])).is_err());
    std::fs::remove_file(&config).unwrap();
    let e = audit_dir(&parse(&[])).unwrap_err().to_string();
    assert!(e.contains("config.yaml"), "{e}");
}
