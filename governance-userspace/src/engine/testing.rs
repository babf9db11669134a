//! Policy tests as code: `*.tests.yaml` files beside the policies, each a list of actions and
//! the decision the policy set must make for them. `governance policy test DIR` runs them.
//!
//! ```yaml
//! agent: { cgroup: agents/refund-1, label: refund-agent }
//! # or, for Kubernetes selectors: agent: { pod: { name: x, namespace: y, labels: { app: z } } }
//! cases:
//!   - name: a $50 refund goes through
//!     http: { method: POST, host: api.payments.example, path: /v1/refunds, body: { amount: 50 } }
//!     expect: { verdict: allow, rule: refund-agent/refund-small }
//!   - name: the 601st search in an hour is throttled
//!     repeat: 601
//!     http: { method: POST, host: mcp.search.example, path: /mcp, mcp: { tool: web_search } }
//!     expect: { verdict: throttle }
//! ```

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Deserialize;
use serde_json::Value;

use super::{Action, AgentRef, Engine, HttpRequest};
use crate::policy::{self, Access, PolicySet, Protocol, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The agent the cases act as, unless a case names its own.
    #[serde(default)]
    agent: Option<AgentDoc>,
    cases: Vec<Case>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentDoc {
    #[serde(default)]
    cgroup: String,
    #[serde(default)]
    label: Option<String>,
    /// Kubernetes: the pod the agent is (`{ name, namespace, labels, namespace_labels,
    /// service_account }`), for `pod_labels`, `namespace`... selectors.
    #[serde(default)]
    pod: Option<crate::policy::PodIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    agent: Option<AgentDoc>,
    /// Run the action this many times at the same instant; `expect` is about the last.
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    exec: Option<PathBuf>,
    #[serde(default)]
    file: Option<FileDoc>,
    #[serde(default)]
    network: Option<NetworkDoc>,
    #[serde(default)]
    http: Option<HttpDoc>,
    #[serde(default)]
    unix: Option<UnixDoc>,
    /// Earlier actions of the agent, in order, before this one: those the policy allows may
    /// arm sequence rules (`after: [{ file: { path: /data/pii/x.csv, access: read } }]`).
    #[serde(default)]
    after: Vec<Earlier>,
    /// How long after the earlier actions this one happens (`30m`, `2h`); default: at once.
    #[serde(default)]
    elapsed: Option<String>,
    expect: Expect,
}

/// An earlier action of a case (a file open; what arms sequence rules).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Earlier {
    file: FileDoc,
}

/// `unix: { path: /run/x.sock }` or `unix: { abstract: name }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnixDoc {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default, rename = "abstract")]
    abstract_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    path: PathBuf,
    access: Access,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkDoc {
    addr: IpAddr,
    port: u16,
    #[serde(default)]
    protocol: Option<Protocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    method: String,
    host: String,
    path: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    /// Shorthand for an MCP JSON-RPC `tools/call` body.
    #[serde(default)]
    mcp: Option<McpDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpDoc {
    tool: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    verdict: Verdict,
    /// `<policy>/<rule>`, or `default` for the default posture. Not checked when omitted.
    #[serde(default)]
    rule: Option<String>,
    /// What shadow rules would have done, when they differ.
    #[serde(default)]
    shadow: Option<Verdict>,
}

/// The result of running the tests of a directory.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    /// Human-readable, one line per case plus a libtest-style summary.
    pub text: String,
}

impl Case {
    fn action(&self) -> Result<Action, String> {
        let given = [
            self.exec.is_some(),
            self.file.is_some(),
            self.network.is_some(),
            self.http.is_some(),
            self.unix.is_some(),
        ];
        if !policy::exactly_one(&given) {
            return Err("give exactly one of exec, file, network, http, unix".into());
        }
        if let Some(u) = &self.unix {
            let target = match (&u.path, &u.abstract_name) {
                (Some(p), None) => policy::UnixTarget::Path(p.clone()),
                (None, Some(n)) => policy::UnixTarget::Abstract(n.as_bytes().to_vec()),
                _ => return Err("unix: give exactly one of path or abstract".into()),
            };
            return Ok(Action::Unix { target });
        }
        if let Some(path) = &self.exec {
            return Ok(Action::Exec { path: path.clone() });
        }
        if let Some(f) = &self.file {
            return Ok(Action::File {
                path: f.path.clone(),
                access: f.access,
            });
        }
        if let Some(n) = &self.network {
            return Ok(Action::Network {
                addr: n.addr,
                port: n.port,
                protocol: n.protocol.unwrap_or(Protocol::Tcp),
            });
        }
        let h = self.http.as_ref().ok_or("no action")?;
        let body = match &h.mcp {
            Some(m) => Some(serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": { "name": m.tool, "arguments": m.arguments },
            })),
            None => h.body.clone(),
        };
        Ok(Action::Http(HttpRequest {
            method: h.method.clone(),
            host: h.host.clone(),
            path: h.path.clone(),
            headers: h
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body,
        }))
    }
}

/// Run every test file against `set`.
pub fn run(set: &PolicySet, files: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for file in files {
        let _ = writeln!(report.text, "{}", file.display());
        if let Err(e) = run_file(set, file, &mut report) {
            report.failed += 1;
            let _ = writeln!(report.text, "  FAIL  {e}");
        }
    }
    let _ = writeln!(
        report.text,
        "test result: {}. {} passed; {} failed; 0 ignored",
        if report.failed == 0 { "ok" } else { "FAILED" },
        report.passed,
        report.failed
    );
    report
}

fn run_file(set: &PolicySet, file: &Path, report: &mut Report) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let tests: TestFile = serde_norway::from_str(&text).map_err(|e| match e.location() {
        Some(l) => format!("{}:{}:{}: {e}", file.display(), l.line(), l.column()),
        None => format!("{}: {e}", file.display()),
    })?;
    for case in &tests.cases {
        let result = run_case(set, tests.agent.as_ref(), case);
        match result {
            Ok(()) => {
                report.passed += 1;
                let _ = writeln!(report.text, "  ok    {}", case.name);
            }
            Err(why) => {
                report.failed += 1;
                let _ = writeln!(report.text, "  FAIL  {}: {why}", case.name);
            }
        }
    }
    Ok(())
}

/// The outermost of `cgroup` and its ancestors that a policy selects by its cgroup: the agent
/// root the kernel finds for a process in `cgroup` (`cgroup` itself when none is).
fn outermost_agent(set: &PolicySet, cgroup: &str) -> String {
    let path = cgroup.trim_matches('/');
    let ends = path.match_indices('/').map(|(i, _)| i).chain([path.len()]);
    for end in ends {
        let candidate = &path[..end];
        if set
            .policies
            .iter()
            .any(|p| p.selector.matches(candidate, None, None))
        {
            return candidate.to_owned();
        }
    }
    cgroup.to_owned()
}

fn run_case(set: &PolicySet, default_agent: Option<&AgentDoc>, case: &Case) -> Result<(), String> {
    let agent = case
        .agent
        .as_ref()
        .or(default_agent)
        .ok_or("no agent: set `agent` in the file or the case")?;
    // The agent is the outermost cgroup a selector matches, as in the kernel: a case written
    // for a cgroup inside another agent gets that agent's policies (red team round 34: `policy
    // test` applied a policy the kernel never did). Cgroups alone: a label or a pod is the
    // case's own.
    let cgroup = match (&agent.label, &agent.pod) {
        (None, None) => outermost_agent(set, &agent.cgroup),
        _ => agent.cgroup.clone(),
    };
    let agent = AgentRef {
        name: match (&agent.label, &agent.pod) {
            (Some(l), _) => l.clone(),
            (None, Some(p)) => format!("{}/{}", p.namespace, p.name),
            (None, None) => cgroup.clone(),
        },
        cgroup,
        label: agent.label.clone(),
        pod: agent.pod.clone(),
    };
    let action = case.action()?;
    // A fresh engine per case: throttle buckets start full.
    let engine = Engine::new(set.clone(), 0);
    let view = engine.agent(&agent);
    let start = Instant::now();
    let mut armed = Vec::new();
    for e in &case.after {
        let earlier = Action::File {
            path: e.file.path.clone(),
            access: e.file.access,
        };
        if engine
            .decide_armed(&view, &earlier, start, &armed)
            .verdict()
            == Verdict::Allow
        {
            armed.extend(engine.arming(&view, &earlier, start));
        }
    }
    let elapsed = match &case.elapsed {
        Some(e) => policy::parse_span(e).map_err(|e| format!("elapsed: {e}"))?,
        None => std::time::Duration::ZERO,
    };
    let now = start + elapsed;
    let mut decision = engine.decide_armed(&view, &action, now, &armed);
    for _ in 1..case.repeat.unwrap_or(1) {
        decision = engine.decide_armed(&view, &action, now, &armed);
    }
    let got_rule = decision.rule.clone().unwrap_or_else(|| "default".into());
    let describe = |v: Verdict, rule: &str| format!("{} ({rule})", v.as_str());
    let mut problems = Vec::new();
    if decision.verdict() != case.expect.verdict
        || case.expect.rule.as_ref().is_some_and(|r| *r != got_rule)
    {
        problems.push(format!(
            "expected {}, got {}",
            describe(
                case.expect.verdict,
                case.expect.rule.as_deref().unwrap_or("any rule")
            ),
            describe(decision.verdict(), &got_rule)
        ));
    }
    let got_shadow = decision.shadow.as_ref().map(|s| s.verdict());
    if let Some(want) = case.expect.shadow
        && got_shadow != Some(want)
    {
        problems.push(format!(
            "expected shadow {}, got {}",
            want.as_str(),
            got_shadow.map_or("none", Verdict::as_str)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_shipped_policy_tests_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = policy::load_dir(&dir).unwrap();
        let (_, tests) = policy::policy_files(&dir).unwrap();
        let report = run(&set, &tests);
        assert_eq!(report.failed, 0, "{}", report.text);
        assert!(report.passed >= 40, "{}", report.text);
    }

    /// The report of the tests `tests` (a `*.tests.yaml` text) beside the policy `policy`.
    fn run_beside(policy: &str, tests: &str) -> Report {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), policy).unwrap();
        let file = dir.path().join("p.tests.yaml");
        std::fs::write(&file, tests).unwrap();
        run(&policy::load_dir(dir.path()).unwrap(), &[file])
    }

    /// Red team round 34: a case for a cgroup inside another agent is decided by that agent's
    /// policies, as the kernel decides it (an org-wide baseline on `org/*`, a stricter policy
    /// on a cgroup below one of its agents: `policy test` applied the stricter one, the kernel
    /// the baseline).
    #[test]
    fn a_case_inside_another_agent_gets_the_outer_agent_s_policies() {
        let policy = "name: org-wide\nagents: { cgroup: 'org/*' }\nrules:\n\
                      \x20 - { id: web, network: { cidr: 127.0.0.0/8, ports: [80] }, verdict: allow, reason: baseline }\n\
                      ---\nname: strict\nagents: { cgroup: org/team/refund }\ndefaults: { network: block }\nrules:\n\
                      \x20 - { id: admin, network: { cidr: 127.0.0.3/32, ports: [80] }, verdict: block, reason: x }\n";
        let case = |name: &str, verdict: &str, rule: &str| {
            format!(
                "  - name: {name}\n    network: {{ addr: 127.0.0.3, port: 80, protocol: tcp }}\n    expect: {{ verdict: {verdict}, rule: {rule} }}\n"
            )
        };
        let report = run_beside(
            policy,
            &format!(
                "agent: {{ cgroup: org/team/refund }}\ncases:\n{}{}",
                case("the outer agent's rule", "allow", "org-wide/web"),
                case("the inner policy's", "block", "strict/admin"),
            ),
        );
        assert_eq!((report.passed, report.failed), (1, 1), "{}", report.text);
        assert!(
            report.text.contains("FAIL  the inner policy's"),
            "{}",
            report.text
        );
    }

    /// Red team round 34: a file rule without `access` does not decide exec, as in the kernel
    /// (exec rules do); with access listed, an equal path's block outranks an allow.
    #[test]
    fn file_rules_decide_as_the_kernel_does() {
        let policy = "name: pa\nagents: { cgroup: a }\nrules:\n\
                      \x20 - { id: no-secrets, file: { prefix: /srv/secrets }, verdict: block, reason: x }\n\
                      \x20 - { id: rw-listed, file: { prefix: /srv/secrets, access: [read, write, create, truncate] }, verdict: allow, reason: y }\n";
        let report = run_beside(
            policy,
            "agent: { cgroup: a }\ncases:\n\
             \x20 - name: exec is not a file access\n    file: { path: /srv/secrets/tool, access: exec }\n    expect: { verdict: allow }\n\
             \x20 - name: the block wins at equal rank\n    file: { path: /srv/secrets/key.pem, access: read }\n    expect: { verdict: block, rule: pa/no-secrets }\n",
        );
        assert_eq!((report.passed, report.failed), (2, 0), "{}", report.text);
    }

    /// The policy the Kubernetes deployment ships, with pods as agents.
    #[test]
    fn the_kubernetes_policy_tests_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/policies");
        let set = policy::load_dir(&dir).unwrap();
        let (_, tests) = policy::policy_files(&dir).unwrap();
        let report = run(&set, &tests);
        assert_eq!(report.failed, 0, "{}", report.text);
        assert!(report.passed >= 3, "{}", report.text);
    }
}
