use std::path::PathBuf;

use super::*;
use crate::policy;

fn set(docs: &[&str]) -> PolicySet {
    let sources: Vec<(PathBuf, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (PathBuf::from(format!("p{i}.yaml")), d.to_string()))
        .collect();
    policy::parse(&sources).expect("valid policies")
}

const BOT: &str = "name: bot\nagents: { label: bot }\ndefaults: { exec: block }\n\
kernel: { allow_raw_sockets: true, allow_capabilities: [CAP_NET_ADMIN, CAP_SYS_TIME] }\n\
sandbox_profiles:\n  scratch: { network: proxy, writable: [/tmp/scratch] }\n\
rules:\n\
  - { id: git, exec: { path: /usr/bin/git }, verdict: allow, reason: r }\n\
  - { id: make, exec: { path: /usr/bin/make }, verdict: sandbox, sandbox: { profile: scratch }, reason: r }\n\
  - { id: tools, exec: { prefix: /opt/tools/ }, verdict: allow, reason: r }\n\
  - { id: data, file: { prefix: /data, access: [read] }, verdict: allow, reason: r }\n\
  - { id: web, network: { cidr: [10.0.0.0/8], ports: [443], via_proxy: true }, verdict: allow, reason: r }\n\
  - { id: llm, http: { host: api.llm.example, method: POST, path: /v1/chat }, verdict: throttle, throttle: { rate: 10, per: 1m, key: agent }, reason: r }\n\
  - { id: pay, http: { host: pay.example, mcp: { tool: refund } }, verdict: escalate, escalate: { timeout: 10m, on_timeout: block }, reason: r }\n";

const WATCH: &str = "name: watch\nmode: shadow\nagents: { label: bot }\ndefaults: { http: block }\n\
kernel: { allow_mounts: true }\n\
rules:\n  - { id: no-curl, exec: { path: /usr/bin/curl }, verdict: block, reason: r }\n";

const STRICT: &str = "name: strict\nagents: { cgroup: agents/* }\n\
kernel: { allow_raw_sockets: false, allow_capabilities: [CAP_NET_ADMIN] }\n\
rules:\n  - { id: ssh, file: { prefix: /root/.ssh }, verdict: block, reason: r }\n";

fn bot() -> AgentRef {
    AgentRef {
        name: "bot".into(),
        cgroup: "agents/bot".into(),
        label: Some("bot".into()),
        pod: None,
    }
}

#[test]
fn items_verdicts_defaults_and_shadow() {
    let c = of_agent(&set(&[BOT, WATCH]), &bot(), "label=bot");
    assert_eq!(c.policies, ["bot"]);
    assert_eq!(c.shadow_policies, ["watch"]);
    // The shadow policy's default decides nothing.
    assert_eq!(c.defaults["http"], "allow");
    assert_eq!(c.defaults["exec"], "block");
    let lines: Vec<String> = c
        .items
        .iter()
        .map(|i| format!("{} {}", i.kind, item_line(i)))
        .collect();
    assert_eq!(
        lines,
        [
            // Equally specific: the most severe first.
            "exec /usr/bin/curl: block (watch/no-curl) [shadow]",
            "exec /usr/bin/make: sandbox profile scratch (bot/make)",
            "exec /usr/bin/git: allow (bot/git)",
            "exec /opt/tools/**: allow (bot/tools)",
            "file /data/** (read): allow (bot/data)",
            "network 10.0.0.0/8 port 443 tcp/udp via the proxy: allow (bot/web)",
            "http POST api.llm.example/v1/chat: throttle 10/1m per agent (bot/llm)",
            "http any method pay.example/** mcp tool refund: escalate (timeout 10m, then block) (bot/pay)",
        ]
    );
    let b = |n: &str| c.builtins.iter().find(|b| b.name == n).unwrap().clone();
    assert!(b("allow_raw_sockets").relaxed);
    // A shadow policy relaxes nothing.
    assert!(!b("allow_mounts").relaxed);
    assert!(!b("daemon_secrets").relaxed);
    assert_eq!(
        b("allow_capabilities").given_back,
        ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    );
}

#[test]
fn relaxations_need_every_policy_to_agree() {
    let c = of_agent(&set(&[BOT, STRICT]), &bot(), "label=bot");
    let b = |n: &str| c.builtins.iter().find(|b| b.name == n).unwrap().clone();
    assert!(!b("allow_raw_sockets").relaxed, "strict objects");
    assert_eq!(b("allow_capabilities").given_back, ["CAP_NET_ADMIN"]);
    assert_eq!(c.policies, ["bot", "strict"]);
    // An agent neither selects has no policy, allows everything, refuses the built-ins.
    let other = AgentRef {
        name: "x".into(),
        cgroup: "elsewhere".into(),
        ..Default::default()
    };
    let c = of_agent(&set(&[BOT, STRICT]), &other, "");
    assert!(c.policies.is_empty() && c.items.is_empty());
    assert!(c.defaults.values().all(|d| d == "allow"));
    assert!(c.builtins.iter().all(|b| !b.relaxed));
}

#[test]
fn by_selector_and_diff() {
    let old = by_selector(&set(&[BOT, STRICT]));
    let names: Vec<&str> = old.iter().map(|c| c.agent.as_str()).collect();
    assert_eq!(names, ["selector cgroup=agents/*", "selector label=bot"]);
    assert!(old.iter().all(|c| c.by_selector));
    assert_eq!(diff(&old, &old), []);
    let changed =
        BOT.replace(
            "verdict: allow, reason: r }\n- { id: make",
            "verdict: block, reason: r }\n- { id: make",
        )
        .replace("allow_raw_sockets: true", "allow_raw_sockets: false")
        .replace(
            "- { id: tools, exec: { prefix: /opt/tools/ }, verdict: allow, reason: r }\n",
            "",
        )
        .replace(
            "defaults: { exec: block }",
            "defaults: { exec: block, network: block }",
        ) + "- { id: jq, exec: { path: /usr/bin/jq }, verdict: allow, reason: r }\n";
    let new = by_selector(&set(&[&changed, STRICT]));
    assert_eq!(
        render_diff(&diff(&old, &new)),
        "agent selector label=bot\n  \
         ~ network default: allow -> block\n  \
         ~ exec /usr/bin/git: allow (bot/git) -> block (bot/git)\n  \
         + exec /usr/bin/jq: allow (bot/jq)\n  \
         - exec /opt/tools/**: allow (bot/tools)\n  \
         ~ built-in allow_raw_sockets: relaxed -> refused\n"
    );
}

/// The shipped example policies, in words, exactly (`capabilities/examples.txt`; after a
/// deliberate change, rewrite it with `GOVERNANCE_BLESS=1`).
#[test]
fn the_shipped_examples_inventory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = policy::load_dir(&dir.join("../policies/examples")).unwrap();
    let mut out = String::new();
    for c in by_selector(&set) {
        render(&c, &mut out);
    }
    let golden = dir.join("src/capabilities/examples.txt");
    if std::env::var_os("GOVERNANCE_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());
}
