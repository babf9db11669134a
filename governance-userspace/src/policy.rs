//! The policy: YAML files in a directory → a validated model → numbered rules.
//!
//! This is the first, minimal format (version 0): which cgroups are agents, which executables
//! they may not run, and which IPv4 destinations they may not connect to. Everything else is
//! allowed. The full policy language (five verdicts, default postures, shadow mode, HTTP rules)
//! replaces it; keep this module the only place that knows the file format.
//!
//! ```yaml
//! agents:
//!   - name: billing-bot
//!     cgroup: governance/billing-bot   # relative to the cgroup2 mount
//!     exec:
//!       block: [/usr/bin/curl, /usr/bin/wget]
//!     network:
//!       block: [169.254.169.254/32]
//! ```

use std::{
    collections::HashSet,
    fmt,
    net::Ipv4Addr,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

/// One policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    agents: Vec<AgentSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSpec {
    name: String,
    cgroup: String,
    #[serde(default)]
    exec: ExecSpec,
    #[serde(default)]
    network: NetworkSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSpec {
    #[serde(default)]
    block: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpec {
    #[serde(default)]
    block: Vec<String>,
}

/// An IPv4 network, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| format!("bad prefix length in `{s}`"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address or CIDR (a.b.c.d/n)"))?;
        if prefix > 32 {
            return Err(format!("prefix length {prefix} in `{s}` is over 32"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An executable, by path (matched in the kernel by its device and inode).
    Exec(PathBuf),
    /// IPv4 destinations.
    Net4(Ipv4Net),
}

/// A rule of the compiled policy. Rule ids start at 1 (0 means "no rule").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    /// Index into [`Policy::agents`].
    pub agent: usize,
    /// Where it was written: `file:line` of the agent entry plus the list position.
    pub origin: String,
    pub target: Target,
}

/// An agent as the policy names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    /// cgroup path relative to the cgroup2 mount.
    pub cgroup: PathBuf,
}

/// The whole validated policy set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub agents: Vec<Agent>,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The rule with this id.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        id.checked_sub(1).and_then(|i| self.rules.get(i as usize))
    }
}

/// One problem found in the policy set, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading policy directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no policy files (*.yaml, *.yml) in {0}")]
    Empty(PathBuf),
    #[error("{} problem(s) in the policy; nothing was applied:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest path the policy accepts; longer ones cannot be reported whole by the kernel side.
pub const MAX_PATH_LEN: usize = governance_common::EVENT_PATH_LEN - 1;

/// Load every `*.yaml`/`*.yml` file in `dir` (sorted by name) into one policy. Any problem in
/// any file rejects the whole set: a typo never silently weakens a policy.
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    let dir_err = |source| PolicyError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_owned()));
    }
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => problems.push(Problem {
                file,
                line: None,
                message: e.to_string(),
            }),
        }
    }
    match parse(&sources) {
        Ok(policy) if problems.is_empty() => Ok(policy),
        Ok(_) => Err(PolicyError::Invalid(problems)),
        Err(PolicyError::Invalid(more)) => {
            problems.extend(more);
            Err(PolicyError::Invalid(problems))
        }
        Err(e) => Err(e),
    }
}

/// Parse and validate policy texts, given as (file name, contents).
pub fn parse(sources: &[(PathBuf, String)]) -> Result<Policy, PolicyError> {
    let mut policy = Policy::default();
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut cgroups = HashSet::new();
    for (file, text) in sources {
        let mut problem = |line: Option<(usize, usize)>, message: String| {
            problems.push(Problem {
                file: file.clone(),
                line,
                message,
            })
        };
        let parsed: PolicyFile = match serde_yaml::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let at = e.location().map(|l| (l.line(), l.column()));
                problem(at, e.to_string());
                continue;
            }
        };
        for spec in parsed.agents {
            // serde_yaml does not keep spans; point at the agent's `name:` line instead.
            let at = line_of(text, &spec.name);
            let agent = policy.agents.len();
            if spec.name.is_empty() {
                problem(at, "agent name is empty".into());
            } else if !names.insert(spec.name.clone()) {
                problem(at, format!("agent `{}` is defined twice", spec.name));
            }
            let cgroup = PathBuf::from(spec.cgroup.trim_start_matches('/'));
            if let Err(msg) = check_cgroup(&cgroup) {
                problem(
                    at,
                    format!("agent `{}`: cgroup `{}`: {msg}", spec.name, spec.cgroup),
                );
            } else if !cgroups.insert(cgroup.clone()) {
                problem(
                    at,
                    format!(
                        "agent `{}`: cgroup `{}` belongs to another agent",
                        spec.name, spec.cgroup
                    ),
                );
            }
            for (i, path) in spec.exec.block.iter().enumerate() {
                let origin = format!(
                    "{}:{}: agents[{}].exec.block[{i}]",
                    file.display(),
                    at.map_or(0, |a| a.0),
                    agent
                );
                match check_exec_path(path) {
                    Ok(p) => policy.rules.push(Rule {
                        id: 0,
                        agent,
                        origin,
                        target: Target::Exec(p),
                    }),
                    Err(msg) => problem(
                        at,
                        format!("agent `{}`: exec.block[{i}] `{path}`: {msg}", spec.name),
                    ),
                }
            }
            for (i, cidr) in spec.network.block.iter().enumerate() {
                let origin = format!(
                    "{}:{}: agents[{}].network.block[{i}]",
                    file.display(),
                    at.map_or(0, |a| a.0),
                    agent
                );
                match cidr.parse::<Ipv4Net>() {
                    Ok(net) => policy.rules.push(Rule {
                        id: 0,
                        agent,
                        origin,
                        target: Target::Net4(net),
                    }),
                    Err(msg) => problem(
                        at,
                        format!("agent `{}`: network.block[{i}]: {msg}", spec.name),
                    ),
                }
            }
            policy.agents.push(Agent {
                name: spec.name,
                cgroup,
            });
        }
    }
    let limits = [
        (
            policy.agents.len(),
            governance_common::MAX_AGENTS as usize,
            "agents",
        ),
        (
            policy
                .rules
                .iter()
                .filter(|r| matches!(r.target, Target::Exec(_)))
                .count(),
            governance_common::MAX_EXEC_RULES as usize,
            "exec rules",
        ),
        (
            policy
                .rules
                .iter()
                .filter(|r| matches!(r.target, Target::Net4(_)))
                .count(),
            governance_common::MAX_NET4_RULES as usize,
            "network rules",
        ),
    ];
    for (have, max, what) in limits {
        if have > max {
            problems.push(Problem {
                file: sources.first().map(|s| s.0.clone()).unwrap_or_default(),
                line: None,
                message: format!("{have} {what} in the policy set; the kernel maps hold {max}"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Invalid(problems));
    }
    for (i, rule) in policy.rules.iter_mut().enumerate() {
        rule.id = i as u32 + 1;
    }
    Ok(policy)
}

/// 1-based line and column of the `name: <name>` entry, for messages.
fn line_of(text: &str, name: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let col = l.find("name:")?;
        let value = l[col + 5..].trim().trim_matches(|c| c == '"' || c == '\'');
        (value == name).then_some((i + 1, col + 1))
    })
}

fn check_cgroup(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("empty: the cgroup2 root itself cannot be an agent".into());
    }
    let mut depth = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            _ => {
                return Err("must be a plain path below the cgroup2 mount (no `.` or `..`)".into());
            }
        }
    }
    if depth >= governance_common::MAX_CGROUP_DEPTH as usize {
        return Err(format!(
            "{depth} levels deep; agent cgroups must be fewer than {} levels below the root",
            governance_common::MAX_CGROUP_DEPTH
        ));
    }
    Ok(())
}

fn check_exec_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("must be an absolute path".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "{} bytes long; the limit is {MAX_PATH_LEN}",
            path.len()
        ));
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Policy, PolicyError> {
        parse(&[(PathBuf::from("p.yaml"), text.to_owned())])
    }

    fn problems(text: &str) -> Vec<String> {
        match one(text) {
            Err(PolicyError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn parses_agents_and_numbers_rules() {
        let p = one(
            "agents:\n  - name: a\n    cgroup: /gov/a\n    exec:\n      block: [/usr/bin/curl, /bin/nc]\n    network:\n      block: [10.0.0.0/8, 1.2.3.4]\n",
        )
        .unwrap();
        assert_eq!(
            p.agents,
            vec![Agent {
                name: "a".into(),
                cgroup: "gov/a".into()
            }]
        );
        let ids: Vec<u32> = p.rules.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(
            p.rule(1).unwrap().target,
            Target::Exec("/usr/bin/curl".into())
        );
        assert_eq!(
            p.rule(4).unwrap().target,
            Target::Net4(Ipv4Net {
                addr: [1, 2, 3, 4].into(),
                prefix: 32
            })
        );
        assert!(p.rule(0).is_none() && p.rule(5).is_none());
    }

    #[test]
    fn unknown_field_names_file_line_and_column() {
        let errs =
            problems("agents:\n  - name: a\n    cgroup: x\n    exce:\n      block: [/bin/sh]\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("p.yaml:4:5: "), "{}", errs[0]);
        assert!(errs[0].contains("unknown field `exce`"), "{}", errs[0]);
    }

    #[test]
    fn every_problem_is_reported_and_nothing_applies() {
        let errs = problems(
            "agents:\n  - name: a\n    cgroup: ../escape\n    exec:\n      block: [curl]\n    network:\n      block: [10.0.0.1/8, 300.1.1.1]\n  - name: a\n    cgroup: b\n",
        );
        let all = errs.join("\n");
        for needle in [
            "no `.` or `..`",
            "exec.block[0] `curl`: must be an absolute path",
            "host bits set; did you mean 10.0.0.0/8",
            "`300.1.1.1` is not an IPv4 address",
            "agent `a` is defined twice",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(errs[0].starts_with("p.yaml:2:5: "), "{all}");
    }

    #[test]
    fn rejects_limits_and_bad_documents() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        let errs = problems(&format!(
            "agents:\n  - name: a\n    cgroup: a\n    exec:\n      block: [{long}]\n"
        ));
        assert!(errs[0].contains("bytes long"), "{errs:?}");
        let deep = vec!["d"; 40].join("/");
        let errs = problems(&format!("agents:\n  - name: a\n    cgroup: {deep}\n"));
        assert!(errs[0].contains("levels deep"), "{errs:?}");
        assert!(problems("agents: 3\n")[0].starts_with("p.yaml:1:"));
        assert!(!problems(": : :\n").is_empty());
        assert!(problems("agents:\n  - name: ''\n    cgroup: ''\n").len() == 2);
    }

    #[test]
    fn the_shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let p = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!p.agents.is_empty() && !p.rules.is_empty());
    }

    #[test]
    fn load_dir_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load_dir(dir.path()), Err(PolicyError::Empty(_))));
        assert!(matches!(
            load_dir(&dir.path().join("nope")),
            Err(PolicyError::Dir { .. })
        ));
        std::fs::write(dir.path().join("a.yaml"), "agents: [").unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.yaml:2:1: "), "{err}");
    }
}
