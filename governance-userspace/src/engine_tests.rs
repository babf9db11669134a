use super::*;
use crate::policy::parse;
use serde_json::json;

fn engine(yaml: &str) -> Engine {
    Engine::new(
        parse(&[("p.yaml".into(), yaml.into())]).unwrap_or_else(|e| panic!("{e}")),
        7,
    )
}

fn agent(cgroup: &str) -> AgentRef {
    AgentRef {
        name: cgroup.into(),
        cgroup: cgroup.into(),
        label: None,
    }
}

fn exec(p: &str) -> Action {
    Action::Exec { path: p.into() }
}

fn http(method: &str, host: &str, path: &str, body: Value) -> Action {
    Action::Http(HttpRequest {
        method: method.into(),
        host: host.into(),
        path: path.into(),
        headers: vec![],
        body: Some(body),
    })
}

#[test]
fn most_specific_wins_and_block_beats_allow_at_equal_specificity() {
    let e = engine(
        "name: p\nagents: { cgroup: a }\nrules:\n\
         \x20 - { id: dir-allow, exec: { prefix: /usr/bin }, verdict: allow, reason: r }\n\
         \x20 - { id: curl-block, exec: { path: /usr/bin/curl }, verdict: block, reason: r }\n\
         \x20 - { id: git-allow, exec: { path: /usr/bin/git }, verdict: allow, reason: r }\n\
         \x20 - { id: git-block, exec: { path: /usr/bin/git }, verdict: block, reason: r }\n\
         \x20 - { id: local, exec: { prefix: /usr/bin/local }, verdict: block, reason: r }\n",
    );
    let v = e.agent(&agent("a"));
    let now = Instant::now();
    let d = |p| e.decide(&v, &exec(p), now);
    assert_eq!(
        (
            d("/usr/bin/curl").verdict(),
            d("/usr/bin/curl").rule.as_deref()
        ),
        (Verdict::Block, Some("p/curl-block"))
    );
    assert_eq!(d("/usr/bin/ls").rule.as_deref(), Some("p/dir-allow"));
    assert_eq!(d("/usr/bin/git").rule.as_deref(), Some("p/git-block"));
    assert_eq!(d("/usr/bin/local/x").rule.as_deref(), Some("p/local"));
    assert_eq!(d("/usr/bin/git").generation, 7);
    let other = e.agent(&agent("b"));
    assert_eq!(e.decide(&other, &exec("/usr/bin/curl"), now).rule, None);
}

#[test]
fn defaults_block_if_any_enforcing_policy_says_so() {
    let e = engine(
        "name: p\nagents: { cgroup: a }\ndefaults: { exec: block }\n---\nname: q\nagents: { cgroup: '*' }\ndefaults: { exec: allow, network: block }\nmode: shadow\n",
    );
    let v = e.agent(&agent("a"));
    let now = Instant::now();
    let d = e.decide(&v, &exec("/bin/x"), now);
    assert_eq!((d.verdict(), d.rule.clone()), (Verdict::Block, None));
    assert!(d.reason.contains("default for exec is block"));
    // The shadow policy's network default would block; the outcome is still allow.
    let n = Action::Network {
        addr: "1.2.3.4".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let d = e.decide(&v, &n, now);
    assert_eq!(d.verdict(), Verdict::Allow);
    assert_eq!(d.shadow.map(|s| s.verdict()), Some(Verdict::Block));
}

#[test]
fn shadow_rules_report_but_never_decide() {
    let e = engine(
        "name: p\nagents: { cgroup: a }\nrules:\n\
         \x20 - { id: strict, mode: shadow, exec: { path: /bin/x }, verdict: block, reason: r }\n\
         \x20 - { id: loose, exec: { prefix: /bin }, verdict: allow, reason: r }\n",
    );
    let v = e.agent(&agent("a"));
    let d = e.decide(&v, &exec("/bin/x"), Instant::now());
    assert_eq!(
        (d.verdict(), d.rule.as_deref()),
        (Verdict::Allow, Some("p/loose"))
    );
    let s = d.shadow.expect("shadow decision");
    assert_eq!(
        (s.verdict(), s.rule.as_deref()),
        (Verdict::Block, Some("p/strict"))
    );
    // No shadow when the shadow rule agrees or does not match.
    assert!(
        e.decide(&v, &exec("/bin/y"), Instant::now())
            .shadow
            .is_none()
    );
}

#[test]
fn throttle_buckets_refill_over_time_and_are_keyed() {
    let e = engine(
        "name: p\nagents: { cgroup: 'agents/*' }\nrules:\n\
         \x20 - id: t\n    http: { host: api.example }\n    verdict: throttle\n    throttle: { rate: 2, per: 10s }\n    reason: r\n",
    );
    let (a, b) = (e.agent(&agent("agents/a")), e.agent(&agent("agents/b")));
    let req = http("GET", "api.example", "/", json!({}));
    let t0 = Instant::now();
    assert_eq!(e.decide(&a, &req, t0).verdict(), Verdict::Allow);
    assert_eq!(e.decide(&a, &req, t0).verdict(), Verdict::Allow);
    let third = e.decide(&a, &req, t0);
    assert_eq!(
        third.outcome,
        Outcome::Throttle {
            retry_after: Duration::from_secs(5)
        }
    );
    // Another agent has its own bucket (key agent_rule, the default).
    assert_eq!(e.decide(&b, &req, t0).verdict(), Verdict::Allow);
    // Half the window refills one token.
    assert_eq!(
        e.decide(&a, &req, t0 + Duration::from_secs(5)).verdict(),
        Verdict::Allow
    );
    assert_eq!(
        e.decide(&a, &req, t0 + Duration::from_secs(5)).verdict(),
        Verdict::Throttle
    );
}

#[test]
fn throttle_is_exact_under_concurrency() {
    let e = std::sync::Arc::new(engine(
        "name: p\nagents: { cgroup: a }\nrules:\n\
         \x20 - id: t\n    http: { host: api.example }\n    verdict: throttle\n    throttle: { rate: 1000, per: 1h }\n    reason: r\n",
    ));
    let now = Instant::now();
    let allowed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                s.spawn(move || {
                    let v = e.agent(&agent("a"));
                    let req = http("GET", "api.example", "/", json!({}));
                    (0..500)
                        .filter(|_| e.decide(&v, &req, now).verdict() == Verdict::Allow)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 1000);
}

#[test]
fn http_matching_covers_hosts_methods_paths_headers_bodies_and_mcp() {
    let e = engine(
        "name: p\nagents: { cgroup: a }\ndefaults: { http: block }\nrules:\n\
         \x20 - { id: wild, http: { host: '*.example.com' }, verdict: allow, reason: r }\n\
         \x20 - { id: exact, http: { host: api.example.com, method: [GET] }, verdict: allow, reason: r }\n\
         \x20 - { id: hdr, http: { host: api.example.com, method: POST, headers: { x-env: 'prod*' } }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n\
         \x20 - { id: tool, http: { mcp: { tool: 'delete_*', arguments: ['$.force == true'] } }, verdict: block, reason: r }\n",
    );
    let v = e.agent(&agent("a"));
    let now = Instant::now();
    let rule = |a: &Action| e.decide(&v, a, now).rule;
    assert_eq!(
        rule(&http("GET", "API.example.com", "/x", json!(null))).as_deref(),
        Some("p/exact")
    );
    assert_eq!(
        rule(&http("PUT", "api.example.com", "/x", json!(null))).as_deref(),
        Some("p/wild")
    );
    assert_eq!(
        rule(&http("GET", "example.com", "/", json!(null))),
        None,
        "a wildcard does not cover the apex"
    );
    let mut req = HttpRequest {
        method: "POST".into(),
        host: "api.example.com".into(),
        path: "/".into(),
        headers: vec![("X-Env".into(), "production".into())],
        body: None,
    };
    assert_eq!(rule(&Action::Http(req.clone())).as_deref(), Some("p/hdr"));
    req.headers.clear();
    assert_eq!(rule(&Action::Http(req)).as_deref(), Some("p/wild"));
    let call = |tool: &str, force: bool| {
        http(
            "POST",
            "mcp.internal",
            "/mcp",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"force": force}}}),
        )
    };
    assert_eq!(rule(&call("delete_repo", true)).as_deref(), Some("p/tool"));
    let d = e.decide(&v, &call("delete_repo", false), now);
    assert_eq!(
        (d.verdict(), d.rule),
        (Verdict::Block, None),
        "no rule: the default blocks"
    );
}
