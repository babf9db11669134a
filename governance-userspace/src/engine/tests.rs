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
        pod: None,
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

/// Red team round 27: a shadow policy's proxy settings (a smaller body limit, interception,
/// idle timeouts) changed what the agent's requests met. Only enforcing policies set them; the
/// control is the same settings in enforce mode.
#[test]
fn a_shadow_policy_s_proxy_settings_change_nothing() {
    for (mode, applied) in [("shadow", false), ("enforce", true)] {
        let e = engine(&format!(
            "name: p\nagents: {{ cgroup: a }}\nmode: {mode}\n\
             proxy: {{ max_body: 10, intercept_tls: [api.example], idle_timeout: {{ api.example: 1s }} }}\n"
        ));
        let v = e.agent(&agent("a"));
        assert_eq!(v.max_body().is_some(), applied, "{mode}");
        assert_eq!(v.intercepts_tls("api.example"), applied, "{mode}");
        assert_eq!(v.idle_timeout("api.example").is_some(), applied, "{mode}");
    }
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

/// A throttle rule `t` of `rate` per minute (with `extra` rules before it, to move its index).
fn throttled(rate: u32, key: &str, extra: &str) -> String {
    format!(
        "name: p\nagents: {{ cgroup: 'agents/*' }}\nrules:\n{extra}\
         \x20 - id: t\n    http: {{ host: api.example }}\n    verdict: throttle\n    throttle: {{ rate: {rate}, per: 1m, key: {key} }}\n    reason: r\n"
    )
}

/// The next generation of `previous`, as the daemon makes it.
fn reload(previous: &Engine, yaml: &str, now: Instant) -> Engine {
    let mut next = Engine::new(
        parse(&[("p.yaml".into(), yaml.into())]).unwrap_or_else(|e| panic!("{e}")),
        previous.generation + 1,
    );
    next.carry_buckets(previous, now);
    next
}

#[test]
fn a_reload_of_the_same_policy_does_not_refill_a_throttle() {
    let yaml = throttled(3, "agent_rule", "");
    let g1 = engine(&yaml);
    let req = http("GET", "api.example", "/", json!({}));
    let t0 = Instant::now();
    let a = agent("agents/a");
    for _ in 0..3 {
        assert_eq!(g1.decide(&g1.agent(&a), &req, t0).verdict(), Verdict::Allow);
    }
    let g2 = reload(&g1, &yaml, t0);
    let d = g2.decide(&g2.agent(&a), &req, t0);
    assert_eq!(
        (d.verdict(), d.generation),
        (Verdict::Throttle, 8),
        "the budget spent under generation 7 stays spent under 8"
    );
    // A request the old generation is still deciding after the switch counts in the same
    // bucket: the generations share it.
    assert_eq!(
        g1.decide(&g1.agent(&a), &req, t0).verdict(),
        Verdict::Throttle
    );
    // Control: another agent's budget is its own, and time still refills (20 s a token).
    assert_eq!(
        g2.decide(&g2.agent(&agent("agents/b")), &req, t0).verdict(),
        Verdict::Allow
    );
    let later = t0 + Duration::from_secs(20);
    assert_eq!(
        g2.decide(&g2.agent(&a), &req, later).verdict(),
        Verdict::Allow
    );
    assert_eq!(
        g2.decide(&g2.agent(&a), &req, later).verdict(),
        Verdict::Throttle
    );
}

#[test]
fn buckets_follow_the_rule_name_not_its_position_for_every_key() {
    let req = http("GET", "api.example", "/", json!({}));
    let other = "\x20 - { id: first, http: { host: other.example }, verdict: allow, reason: r }\n";
    for key in ["agent_rule", "agent", "rule"] {
        let t0 = Instant::now();
        let g1 = engine(&throttled(2, key, ""));
        let a = agent("agents/a");
        for _ in 0..2 {
            assert_eq!(g1.decide(&g1.agent(&a), &req, t0).verdict(), Verdict::Allow);
        }
        // A rule added before `t` moves its index; the bucket stays `p/t`'s.
        let g2 = reload(&g1, &throttled(2, key, other), t0);
        assert_eq!(
            g2.decide(&g2.agent(&a), &req, t0).verdict(),
            Verdict::Throttle,
            "key {key}"
        );
    }
}

#[test]
fn a_changed_rate_carries_the_level_capped_at_the_new_burst() {
    let req = http("GET", "api.example", "/", json!({}));
    let a = agent("agents/a");
    let t0 = Instant::now();
    // 10 per minute, 4 spent: 6 left. Lowered to 3: 3 left, not 6 and not a fresh 3 on top.
    let g1 = engine(&throttled(10, "agent_rule", ""));
    for _ in 0..4 {
        assert_eq!(g1.decide(&g1.agent(&a), &req, t0).verdict(), Verdict::Allow);
    }
    let g2 = reload(&g1, &throttled(3, "agent_rule", ""), t0);
    let v = g2.agent(&a);
    let allowed = (0..10)
        .filter(|_| g2.decide(&v, &req, t0).verdict() == Verdict::Allow)
        .count();
    assert_eq!(allowed, 3);
    // Raised from 3 to 10 with nothing left: still nothing left (no fresh burst).
    let g3 = reload(&g2, &throttled(10, "agent_rule", ""), t0);
    assert_eq!(
        g3.decide(&g3.agent(&a), &req, t0).verdict(),
        Verdict::Throttle
    );
}

#[test]
fn buckets_of_removed_rules_and_full_buckets_are_dropped() {
    let req = http("GET", "api.example", "/", json!({}));
    let a = agent("agents/a");
    let t0 = Instant::now();
    let g1 = engine(&throttled(2, "agent_rule", ""));
    for _ in 0..2 {
        g1.decide(&g1.agent(&a), &req, t0);
    }
    let size = |e: &Engine| e.buckets.lock().unwrap().len();
    assert_eq!(size(&g1), 1);
    // The rule goes: so does its bucket; when it comes back it starts full, like a new rule.
    let g2 = reload(
        &g1,
        "name: p\nagents: { cgroup: 'agents/*' }\nrules: []\n",
        t0,
    );
    assert_eq!(size(&g2), 0);
    let g3 = reload(&g2, &throttled(2, "agent_rule", ""), t0);
    assert_eq!(g3.decide(&g3.agent(&a), &req, t0).verdict(), Verdict::Allow);
    // A bucket that has refilled completely decides as a missing one: dropped.
    assert_eq!(size(&g3), 1);
    let g4 = reload(
        &g3,
        &throttled(2, "agent_rule", ""),
        t0 + Duration::from_secs(60),
    );
    assert_eq!(size(&g4), 0);
    // A bucket still refilling is kept.
    g4.decide(&g4.agent(&a), &req, t0);
    let g5 = reload(
        &g4,
        &throttled(2, "agent_rule", ""),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(size(&g5), 1);
}

/// What the proxy decides before it resolves a name (`network_without_address`) is what
/// `decide` says for any address: rules rank by the range that matched the port, not by their
/// broadest (red team round 26: a name the proxy had not resolved yet reached a port a
/// narrower block refused, by `CONNECT` or an absolute-form request).
#[test]
fn a_decision_without_an_address_ranks_rules_as_one_with_it() {
    let e = engine(
        "name: p\nagents: { cgroup: a }\ndefaults: { network: block }\nrules:\n\
         \x20 - { id: low-ports, network: { ports: [1-1024] }, verdict: allow, reason: r }\n\
         \x20 - { id: not-1000-nor-high, network: { ports: [1000, 1025-65535] }, verdict: block, reason: r }\n\
         \x20 - { id: web, network: { ports: [80, 8000-8999], protocol: tcp }, verdict: allow, reason: r }\n\
         \x20 - { id: shadow-all, network: { ports: [1-65535] }, verdict: block, reason: r, mode: shadow }\n",
    );
    let v = e.agent(&agent("a"));
    let now = Instant::now();
    for port in [22, 80, 443, 999, 1000, 1001, 1024, 1025, 8080, 9000, 65535] {
        let without = e
            .network_without_address(&v, port, Protocol::Tcp, now)
            .expect("no rule names addresses");
        let with = e.decide(
            &v,
            &Action::Network {
                addr: "127.0.0.1".parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
            },
            now,
        );
        assert_eq!(
            (without.verdict(), without.rule.as_deref()),
            (with.verdict(), with.rule.as_deref()),
            "port {port}"
        );
    }
    let d = e
        .network_without_address(&v, 1000, Protocol::Tcp, now)
        .unwrap();
    assert_eq!(
        (d.verdict(), d.rule.as_deref()),
        (Verdict::Block, Some("p/not-1000-nor-high"))
    );
}
