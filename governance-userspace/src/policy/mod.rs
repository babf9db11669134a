//! The policy: YAML documents in a directory → validated, compiled rules.
//!
//! Every problem is reported with its file, line and column, and any problem rejects the whole
//! set: a typo never silently weakens a policy. The file format is in [`model`] (and
//! README); [`crate::engine`] decides with what this module produces.

pub mod cond;
pub mod glob;
pub mod kube;
pub mod model;
pub mod report;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use marked_yaml::{Marker, Span, Spanned};
pub use model::{Access, Mode, Posture, Protocol, SandboxNetwork, ThrottleKey, Verdict};

use self::cond::Condition;
pub use self::kube::{PodIdentity, PodSelector};

/// Longest exec/file path a rule may name (what the kernel side can match and report).
pub const MAX_PATH_LEN: usize = governance_common::EVENT_PATH_LEN - 1;
/// Most rules a policy set may hold.
pub const MAX_RULES: usize = governance_common::MAX_EXEC_RULES as usize;

/// What kind of action a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exec,
    File,
    Network,
    Http,
    Unix,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Exec,
        Kind::File,
        Kind::Network,
        Kind::Http,
        Kind::Unix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::File => "file",
            Kind::Network => "network",
            Kind::Http => "http",
            Kind::Unix => "unix",
        }
    }
}

/// Where something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in the policy set, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading policy directory {dir}")]
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

/// Which agents a policy governs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Glob over cgroup paths relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// Value of the `user.governance.agent` xattr.
    pub label: Option<String>,
    /// Kubernetes: the pod's labels, namespace, namespace labels, service account.
    pub pod: Option<PodSelector>,
}

impl std::fmt::Display for Selector {
    /// `cgroup=<glob> label=<value>`, as written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut words = Vec::new();
        if let Some(c) = &self.cgroup {
            words.push(format!("cgroup={c}"));
        }
        if let Some(l) = &self.label {
            words.push(format!("label={l}"));
        }
        if let Some(p) = &self.pod {
            words.extend(p.words());
        }
        f.write_str(&words.join(" "))
    }
}

impl Selector {
    /// Does an agent root with this cgroup path (relative), label and pod match? All given
    /// selectors must match; a Kubernetes selector never matches an agent whose pod is not
    /// known.
    pub fn matches(&self, cgroup: &str, label: Option<&str>, pod: Option<&PodIdentity>) -> bool {
        self.cgroup.as_deref().is_none_or(|g| glob::path(g, cgroup))
            && self.label.as_deref().is_none_or(|l| label == Some(l))
            && self.pod.as_ref().is_none_or(|p| p.matches(pod))
    }

    /// A cgroup selector that names one cgroup (no glob characters).
    pub fn literal_cgroup(&self) -> Option<&str> {
        self.cgroup.as_deref().filter(|c| !glob::is_glob(c))
    }
}

/// A path rule: an exact path or everything below a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(PathBuf),
    Prefix(PathBuf),
}

impl PathMatch {
    pub fn matches(&self, p: &Path) -> bool {
        match self {
            PathMatch::Exact(e) => p == e,
            PathMatch::Prefix(d) => p.starts_with(d),
        }
    }
}

/// An IP network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// IPv4 networks and addresses are compared as IPv4-mapped IPv6, so a rule for
    /// `10.0.0.0/8` also covers `::ffff:10.1.2.3`.
    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn prefix128(&self) -> u32 {
        u32::from(self.prefix) + if self.addr.is_ipv4() { 96 } else { 0 }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let len = self.prefix128();
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Self::bits(self.addr) & mask == Self::bits(addr) & mask
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR (a.b.c.d/n or x::y/n)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("bad prefix length in `{s}` (0 to {max})"))?,
            None => max,
        };
        let net = IpNet { addr, prefix };
        let host_bits = if u32::from(prefix) == u32::from(max) {
            0
        } else {
            Self::bits(addr) & (u128::MAX >> net.prefix128())
        };
        if host_bits != 0 {
            return Err(format!("`{s}` has host bits set after /{prefix}"));
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Host part of an HTTP rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lowercase host.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; any subdomain, not the apex.
    Suffix(String),
}

#[derive(Clone, Debug)]
pub struct HttpMatcher {
    pub host: HostMatch,
    /// Uppercase methods; empty means any.
    pub methods: Vec<String>,
    pub path: Option<String>,
    /// (lowercase name, value glob)
    pub headers: Vec<(String, String)>,
    pub body: Vec<Condition>,
    /// (tool name glob, conditions on the arguments)
    pub mcp: Option<(String, Vec<Condition>)>,
}

/// The Unix socket a `unix` rule is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnixTarget {
    /// A filesystem socket (the kernel decides on the socket file's identity).
    Path(PathBuf),
    /// An abstract socket's name, without the leading NUL.
    Abstract(Vec<u8>),
}

impl UnixTarget {
    /// `/run/x.sock`, or `@name` for an abstract name (as `ss` shows it).
    pub fn display(&self) -> String {
        match self {
            UnixTarget::Path(p) => p.display().to_string(),
            UnixTarget::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Exec(PathMatch),
    File {
        path: PathMatch,
        /// Accesses covered; empty means all.
        access: Vec<Access>,
    },
    Network {
        /// Empty means any destination.
        nets: Vec<IpNet>,
        /// Inclusive ranges; empty means any port.
        ports: Vec<(u16, u16)>,
        protocol: Protocol,
        via_proxy: bool,
    },
    Http(HttpMatcher),
    Unix(UnixTarget),
}

impl Matcher {
    pub fn kind(&self) -> Kind {
        match self {
            Matcher::Exec(_) => Kind::Exec,
            Matcher::File { .. } => Kind::File,
            Matcher::Network { .. } => Kind::Network,
            Matcher::Http(_) => Kind::Http,
            Matcher::Unix(_) => Kind::Unix,
        }
    }

    /// Specificity, compared lexicographically; higher wins. See docs/policy.md, precedence.
    fn specificity(&self) -> [u32; 4] {
        let path = |p: &PathMatch| match p {
            PathMatch::Exact(e) => [2, e.as_os_str().len() as u32],
            PathMatch::Prefix(d) => [1, d.as_os_str().len() as u32],
        };
        match self {
            Matcher::Exec(p) => {
                let [a, b] = path(p);
                [a, b, 0, 0]
            }
            Matcher::File { path: p, access } => {
                let [a, b] = path(p);
                [a, b, u32::from(!access.is_empty()), 0]
            }
            Matcher::Network { nets, ports, .. } => {
                let prefix = nets.iter().map(|n| n.prefix128()).min().unwrap_or(0);
                let narrow = ports
                    .iter()
                    .map(|(a, b)| 65536 - (u32::from(*b) - u32::from(*a) + 1))
                    .min()
                    .unwrap_or(0);
                [prefix, narrow, 0, 0]
            }
            Matcher::Http(h) => {
                let host = match &h.host {
                    HostMatch::Exact(_) => 2,
                    HostMatch::Suffix(_) => 1,
                    HostMatch::Any => 0,
                };
                let literal_path = h.path.as_deref().map_or(0, |p| {
                    if glob::is_glob(p) {
                        p.split(['*', '?']).next().unwrap_or("").len() as u32
                    } else {
                        u32::MAX / 2
                    }
                });
                let conditions = u32::from(!h.methods.is_empty())
                    + h.headers.len() as u32
                    + h.body.len() as u32
                    + h.mcp.as_ref().map_or(0, |(_, a)| 1 + a.len() as u32);
                let suffix_len = match &h.host {
                    HostMatch::Suffix(s) => s.len() as u32,
                    _ => 0,
                };
                [host, suffix_len, literal_path, conditions]
            }
            // One socket each: all equally specific; the most severe verdict wins.
            Matcher::Unix(t) => match t {
                UnixTarget::Path(p) => [2, p.as_os_str().len() as u32, 0, 0],
                UnixTarget::Abstract(n) => [2, n.len() as u32, 0, 0],
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Throttle {
    pub rate: u32,
    pub per: Duration,
    pub key: ThrottleKey,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Escalate {
    pub timeout: Duration,
    pub on_timeout: Posture,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SandboxTarget {
    Profile(String),
    Upstream(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SandboxProfile {
    pub network: Option<SandboxNetwork>,
    pub writable: Vec<PathBuf>,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `<policy>/<rule id>`: what events quote.
    pub id: String,
    pub verdict: Verdict,
    pub reason: String,
    /// Effective mode (the rule's, else its policy's).
    pub mode: Mode,
    pub matcher: Matcher,
    pub throttle: Option<Throttle>,
    pub escalate: Option<Escalate>,
    pub sandbox: Option<SandboxTarget>,
    pub at: Location,
    pub specificity: [u32; 4],
    /// `report:`, as written (see [`report::of_rule`]).
    pub report: Option<report::Report>,
}

/// A compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    /// Where its `name` is written.
    pub at: Location,
    pub mode: Mode,
    pub selector: Selector,
    /// Default posture per kind, where the policy sets one.
    pub defaults: BTreeMap<Kind, Posture>,
    /// `defaults.report`: how allowed actions are reported per kind, where the policy says.
    pub report_defaults: BTreeMap<Kind, report::Report>,
    pub sandbox_profiles: BTreeMap<String, SandboxProfile>,
    pub rules: Vec<Rule>,
    /// `proxy.max_body`: the largest body the HTTP proxy buffers for this policy's agents.
    pub max_body: Option<usize>,
    /// `proxy.intercept_tls`: hosts whose TLS the proxy intercepts for this policy's agents.
    pub intercept_tls: Vec<HostMatch>,
    /// `proxy.idle_timeout`: how long a host's responses may go silent, per host.
    pub idle_timeouts: Vec<(HostMatch, Duration)>,
    /// `kernel.allow_raw_sockets`, as written.
    pub allow_raw_sockets: Option<bool>,
    /// `kernel.allow_user_namespaces`, as written.
    pub allow_user_namespaces: Option<bool>,
    /// `kernel.allow_runtime_sockets`, as written.
    pub allow_runtime_sockets: Option<bool>,
    /// `kernel.allow_capabilities`, as written: a mask of capability numbers (bit n:
    /// capability n), each one that agents are refused by default.
    pub allow_capabilities: Option<u64>,
    /// `kernel.allow_mounts`, as written.
    pub allow_mounts: Option<bool>,
    /// `kernel.allow_loader_exec`, as written.
    pub allow_loader_exec: Option<bool>,
    /// `kernel.allow_kernel_settings`, as written.
    pub allow_kernel_settings: Option<bool>,
    /// `kernel.allow_system_files`, as written.
    pub allow_system_files: Option<bool>,
}

/// Every policy of a directory.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

impl PolicySet {
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.policies.iter().flat_map(|p| p.rules.iter())
    }

    /// The policies that select agents by Kubernetes identity (they need `run --kubernetes`).
    pub fn kubernetes_policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().filter(|p| p.selector.pod.is_some())
    }
}

/// The capabilities agents are refused, by name, comma-separated.
fn refusable_capabilities() -> String {
    use governance_common::caps;
    (0..64)
        .filter(|c| caps::REFUSED & (1u64 << c) != 0)
        .map(caps::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Policy files of a directory, recursively, sorted; `*.tests.yaml` files are policy tests.
pub fn policy_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), PolicyError> {
    let mut policies = Vec::new();
    let mut tests = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| PolicyError::Dir {
            dir: d.clone(),
            source,
        })?;
        for entry in rd {
            let path = entry
                .map_err(|source| PolicyError::Dir {
                    dir: d.clone(),
                    source,
                })?
                .path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if !name.starts_with('.') {
                    dirs.push(path);
                }
            } else if name.ends_with(".tests.yaml") || name.ends_with(".tests.yml") {
                tests.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                policies.push(path);
            }
        }
    }
    policies.sort();
    tests.sort();
    Ok((policies, tests))
}

/// Load and validate every policy file below `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
    let (files, _) = policy_files(dir)?;
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
                at: None,
                message: e.to_string(),
            }),
        }
    }
    match parse(&sources) {
        Ok(set) if problems.is_empty() => Ok(set),
        Ok(_) => Err(PolicyError::Invalid(problems)),
        Err(PolicyError::Invalid(more)) => {
            problems.extend(more);
            Err(PolicyError::Invalid(problems))
        }
        Err(e) => Err(e),
    }
}

/// Split a file into YAML documents at `---` lines; returns (first line number, text).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(0, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            docs.push((i + 1, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// Parse and validate policy texts, given as (file name, contents).
pub fn parse(sources: &[(PathBuf, String)]) -> Result<PolicySet, PolicyError> {
    let mut set = PolicySet::default();
    let mut problems = Vec::new();
    let mut names: BTreeMap<String, Location> = BTreeMap::new();
    for (file, text) in sources {
        for (offset, doc) in documents(text) {
            let mut cx = Cx {
                file,
                offset,
                problems: &mut problems,
            };
            let node = match marked_yaml::parse_yaml_with_options(
                0,
                &doc,
                marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
            ) {
                Ok(node) => node,
                Err(e) => {
                    // Broken YAML: nothing after the first error can be trusted.
                    let (at, msg) = yaml_error(&e);
                    cx.problem_at(at, msg);
                    continue;
                }
            };
            let Some(policy) = cx.document(node) else {
                continue;
            };
            if let Some(first) = names.get(&policy.name) {
                problems.push(Problem {
                    file: file.clone(),
                    at: Some((policy.at.line, policy.at.column)),
                    message: format!("policy `{}` is already defined at {first}", policy.name),
                });
                continue;
            }
            names.insert(policy.name.clone(), policy.at.clone());
            set.policies.push(policy);
        }
    }
    if set.rule_count() > MAX_RULES {
        problems.push(Problem {
            file: sources.first().map(|s| s.0.clone()).unwrap_or_default(),
            at: None,
            message: format!(
                "{} rules in the policy set; the limit is {MAX_RULES}",
                set.rule_count()
            ),
        });
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(PolicyError::Invalid(problems))
    }
}

pub(crate) fn yaml_error(le: &marked_yaml::LoadError) -> (Option<Marker>, String) {
    use marked_yaml::LoadError;
    let at = match le {
        LoadError::TopLevelMustBeMapping(m)
        | LoadError::TopLevelMustBeSequence(m)
        | LoadError::UnexpectedAnchor(m)
        | LoadError::MappingKeyMustBeScalar(m)
        | LoadError::UnexpectedTag(m)
        | LoadError::ScanError(m, _) => Some(*m),
        LoadError::DuplicateKey(inner) => inner.key.span().start().copied(),
    };
    (at, format!("YAML: {le}"))
}

/// Most problems one part of a document (the policy without its rules, or one rule) reports:
/// each round of [`recover`] removes one entry, so this only bounds pathological input.
const MAX_PART_PROBLEMS: usize = 64;

/// A problem serde found in one part of a document.
struct Found {
    at: Option<Marker>,
    /// Where in the part (`http.method`), as serde names it.
    path: Option<String>,
    message: String,
    /// An unknown field: leaving it out changes nothing else the part says.
    unknown_field: bool,
}

impl Found {
    /// The message as the whole document would have it: `rules[2].verdict: unknown variant`.
    fn message(&self, prefix: &str) -> String {
        match (prefix, &self.path) {
            ("", Some(path)) => format!("{path}: {}", self.message),
            ("", None) => self.message.clone(),
            (prefix, Some(path)) => format!("{prefix}.{path}: {}", self.message),
            (prefix, None) => format!("{prefix}: {}", self.message),
        }
    }
}

/// Deserialize one part of a document, finding every problem serde can report: after each,
/// the entry at fault is left out and the part read again. A missing field after another
/// problem is not reported (it is most likely that problem: a misspelt or a rejected field),
/// and ends the part, as does a problem with the part as a whole. Some(value) only if what
/// remained deserialized.
fn recover<T: serde::de::DeserializeOwned>(mut node: marked_yaml::Node) -> (Option<T>, Vec<Found>) {
    use marked_yaml::Error;
    let mut found: Vec<Found> = Vec::new();
    while found.len() < MAX_PART_PROBLEMS {
        let e = match marked_yaml::from_node::<T>(&node) {
            Ok(value) => return (Some(value), found),
            Err(e) => e,
        };
        let missing = matches!(&*e, Error::Other(m, _) if m.starts_with("missing field"));
        if missing && !found.is_empty() {
            break;
        }
        let path = e.path().map(str::to_owned);
        let removed = !missing
            && path
                .as_deref()
                .is_some_and(|p| remove_entry(&mut node, entry_of(p)));
        found.push(Found {
            at: e.start_mark(),
            unknown_field: matches!(&*e, Error::UnknownFieldError(..)),
            path,
            message: e.into_inner().to_string(),
        });
        if !removed {
            break;
        }
    }
    (None, found)
}

/// The mapping entry a problem at `path` is in: a bad element of a list takes the whole list
/// out (leaving one element out would renumber the others' problems).
fn entry_of(mut path: &str) -> &str {
    while path.ends_with(']') {
        match path.rfind('[') {
            Some(i) => path = &path[..i],
            None => break,
        }
    }
    path
}

/// Remove the mapping entry at `path` (`http.method`, `access`, `a[1].b`); false if there is
/// none.
fn remove_entry(node: &mut marked_yaml::Node, path: &str) -> bool {
    use marked_yaml::Node;
    if path.is_empty() {
        return false;
    }
    match node {
        Node::Mapping(map) => {
            // The longest key the path starts with: keys may hold `.` or `[` themselves.
            let Some(key) = map
                .keys()
                .map(|k| k.as_str())
                .filter(|k| {
                    path.strip_prefix(k)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                })
                .max_by_key(|k| k.len())
                .map(str::to_owned)
            else {
                return false;
            };
            let rest = &path[key.len()..];
            if rest.is_empty() {
                return map.remove(key.as_str()).is_some();
            }
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            map.get_mut(key.as_str())
                .is_some_and(|n| remove_entry(n, rest))
        }
        Node::Sequence(seq) => {
            let Some((index, rest)) = path.strip_prefix('[').and_then(|p| p.split_once(']')) else {
                return false;
            };
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            index
                .parse::<usize>()
                .ok()
                .and_then(|i| seq.get_mut(i))
                .is_some_and(|n| remove_entry(n, rest))
        }
        Node::Scalar(_) => false,
    }
}

/// Validation context for one document.
struct Cx<'a> {
    file: &'a Path,
    /// Line offset of the document in its file.
    offset: usize,
    problems: &'a mut Vec<Problem>,
}

impl Cx<'_> {
    fn loc(&self, span: &Span) -> Location {
        let (line, column) = span.start().map_or((self.offset + 1, 1), |m| {
            (m.line() + self.offset, m.column())
        });
        Location {
            file: self.file.to_owned(),
            line,
            column,
        }
    }

    fn problem_at(&mut self, at: Option<Marker>, message: String) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            at: at.map(|m| (m.line() + self.offset, m.column())),
            message,
        });
    }

    fn problem(&mut self, span: &Span, message: impl Into<String>) {
        self.problem_at(span.start().copied(), message.into());
    }

    fn found(&mut self, found: Vec<Found>, prefix: &str) {
        for f in found {
            let message = f.message(prefix);
            self.problem_at(f.at, message);
        }
    }

    /// Read and validate one policy document (a parsed YAML tree); None if it had problems
    /// (recorded, in the order they appear).
    ///
    /// Every problem a document has is found, not just the first: the rules are read one by
    /// one, and a part with a problem is read again without the entry at fault (see
    /// [`recover`]). The parts read cleanly are then validated as usual; a part that had a
    /// problem is not, since what is left of it would report problems that are not there.
    fn document(&mut self, mut node: marked_yaml::Node) -> Option<Policy> {
        let before = self.problems.len();
        let rule_nodes = match node.as_mapping_mut().and_then(|m| m.get_mut("rules")) {
            Some(marked_yaml::Node::Sequence(seq)) => std::mem::take(&mut **seq),
            _ => Vec::new(),
        };
        let (doc, top) = recover::<model::PolicyDoc>(node);
        let top_clean = top.is_empty();
        let top_unknown_only = top.iter().all(|f| f.unknown_field);
        self.found(top, "");
        let mut rules = Vec::new();
        let mut rules_clean = true;
        for (i, rule) in rule_nodes.into_iter().enumerate() {
            match recover::<model::RuleDoc>(rule) {
                (Some(rule), found) if found.is_empty() => rules.push(rule),
                (_, found) => {
                    rules_clean = false;
                    self.found(found, &format!("rules[{i}]"));
                }
            }
        }
        let policy = doc.and_then(|mut doc| {
            doc.rules = rules;
            if top_clean {
                self.policy(doc).filter(|_| rules_clean)
            } else {
                if top_unknown_only {
                    // The rest of the policy says what it says: its rules can be checked.
                    self.rules_only(doc);
                }
                None
            }
        });
        self.problems[before..].sort_by_key(|p| p.at);
        policy
    }

    /// Validate the rules of a policy whose other parts had problems (already recorded).
    fn rules_only(&mut self, doc: model::PolicyDoc) {
        let mut ignored = Vec::new();
        let profiles = Cx {
            file: self.file,
            offset: self.offset,
            problems: &mut ignored,
        }
        .profiles(&doc.sandbox_profiles);
        let mode = doc.mode.as_ref().map_or(Mode::Enforce, |m| **m);
        self.rules(doc.name.trim(), mode, &profiles, doc.rules);
    }

    fn profiles(
        &mut self,
        docs: &BTreeMap<String, Spanned<model::SandboxProfile>>,
    ) -> BTreeMap<String, SandboxProfile> {
        let mut profiles = BTreeMap::new();
        for (pname, profile) in docs {
            let mut writable = Vec::new();
            for w in &profile.writable {
                match self.abs_path(w) {
                    Ok(p) => writable.push(p),
                    Err(msg) => {
                        self.problem(profile.span(), format!("sandbox profile `{pname}`: {msg}"))
                    }
                }
            }
            profiles.insert(
                pname.clone(),
                SandboxProfile {
                    network: profile.network,
                    writable,
                },
            );
        }
        profiles
    }

    fn rules(
        &mut self,
        name: &str,
        mode: Mode,
        profiles: &BTreeMap<String, SandboxProfile>,
        docs: Vec<model::RuleDoc>,
    ) -> Vec<Rule> {
        let mut ids: BTreeMap<String, Location> = BTreeMap::new();
        let mut rules = Vec::new();
        for r in docs {
            let at = self.loc(r.id.span());
            if let Some(first) = ids.get(r.id.as_str()) {
                self.problem(
                    r.id.span(),
                    format!("duplicate rule id `{}` (first at {first})", *r.id),
                );
                continue;
            }
            ids.insert(r.id.to_string(), at);
            if let Some(rule) = self.rule(name, mode, profiles, r) {
                rules.push(rule);
            }
        }
        rules
    }

    /// Validate one policy document; None if it had problems (already recorded).
    fn policy(&mut self, doc: model::PolicyDoc) -> Option<Policy> {
        let before = self.problems.len();
        let name = doc.name.trim().to_owned();
        if !valid_name(&name) {
            self.problem(
                doc.name.span(),
                format!("policy name `{name}`: use letters, digits, `-`, `_` or `.`"),
            );
        }
        let mode = doc.mode.as_ref().map_or(Mode::Enforce, |m| **m);
        let selector = self.selector(&doc.agents);
        let mut defaults = BTreeMap::new();
        for (kind, posture) in [
            (Kind::Exec, &doc.defaults.exec),
            (Kind::File, &doc.defaults.file),
            (Kind::Network, &doc.defaults.network),
            (Kind::Http, &doc.defaults.http),
            (Kind::Unix, &doc.defaults.unix),
        ] {
            if let Some(p) = posture {
                defaults.insert(kind, **p);
            }
        }
        let report_defaults = self.report_defaults(&doc.defaults.report);
        let profiles = self.profiles(&doc.sandbox_profiles);
        let rules = self.rules(&name, mode, &profiles, doc.rules);
        let max_body = doc
            .proxy
            .as_ref()
            .and_then(|p| p.max_body.as_ref())
            .and_then(|m| {
                match parse_size(m).and_then(|n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|n| (1..=MAX_BODY_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!("size `{}` must be between 1 byte and 1GiB", m.trim())
                        })
                }) {
                    Ok(n) => Some(n),
                    Err(msg) => {
                        self.problem(m.span(), format!("proxy.max_body: {msg}"));
                        None
                    }
                }
            });
        let mut intercept_tls = Vec::new();
        for h in doc.proxy.iter().flat_map(|p| &p.intercept_tls) {
            let host = h.trim().to_ascii_lowercase();
            let checked = if host.parse::<std::net::IpAddr>().is_ok() {
                Err(format!(
                    "host `{host}` is an IP address; TLS is intercepted by server name"
                ))
            } else {
                host_match(&host)
            };
            match checked {
                Ok(m) => intercept_tls.push(m),
                Err(msg) => self.problem(h.span(), format!("proxy.intercept_tls: {msg}")),
            }
        }
        let mut idle_timeouts = Vec::new();
        for (h, t) in doc.proxy.iter().flat_map(|p| &p.idle_timeout) {
            let host = h.trim().to_ascii_lowercase();
            match host_match(&host).and_then(|m| parse_duration(t).map(|d| (m, d))) {
                Ok(x) => idle_timeouts.push(x),
                Err(msg) => self.problem(t.span(), format!("proxy.idle_timeout: {msg}")),
            }
        }
        let at = self.loc(doc.name.span());
        let kernel = doc.kernel.unwrap_or_default();
        let allow_capabilities = kernel
            .allow_capabilities
            .as_ref()
            .map(|names| self.capabilities(names));
        (self.problems.len() == before).then(|| Policy {
            max_body,
            intercept_tls,
            idle_timeouts,
            allow_raw_sockets: kernel.allow_raw_sockets,
            allow_user_namespaces: kernel.allow_user_namespaces,
            allow_runtime_sockets: kernel.allow_runtime_sockets,
            allow_capabilities,
            allow_mounts: kernel.allow_mounts,
            allow_loader_exec: kernel.allow_loader_exec,
            allow_kernel_settings: kernel.allow_kernel_settings,
            allow_system_files: kernel.allow_system_files,
            name,
            at,
            description: doc
                .description
                .map(|d| d.trim().to_owned())
                .unwrap_or_default(),
            file: self.file.to_owned(),
            mode,
            selector: selector.unwrap_or_default(),
            defaults,
            report_defaults,
            sandbox_profiles: profiles,
            rules,
        })
    }

    /// `kernel.allow_capabilities`: capability names → mask. Every name must be a
    /// capability that agents are refused (the others they have already).
    fn capabilities(&mut self, names: &[model::Str]) -> u64 {
        use governance_common::caps;
        let mut mask = 0;
        for name in names {
            match caps::by_name(name) {
                Some(cap) if caps::REFUSED & (1 << cap) != 0 => mask |= 1 << cap,
                Some(cap) => self.problem(
                    name.span(),
                    format!(
                        "kernel.allow_capabilities: agents are never refused {}; only these can be given back: {}",
                        caps::name(cap),
                        refusable_capabilities()
                    ),
                ),
                None => self.problem(
                    name.span(),
                    format!(
                        "kernel.allow_capabilities: `{}` is not a capability (write e.g. CAP_NET_ADMIN); these can be given back: {}",
                        name.trim(),
                        refusable_capabilities()
                    ),
                ),
            }
        }
        mask
    }

    fn selector(&mut self, agents: &Spanned<model::AgentSelector>) -> Option<Selector> {
        let span = agents.span();
        let kube = agents.pod_labels.is_some()
            || agents.namespace.is_some()
            || agents.namespace_labels.is_some()
            || agents.service_account.is_some();
        if agents.cgroup.is_none() && agents.label.is_none() && !kube {
            self.problem(
                span,
                "empty selector: give `cgroup` (a path glob), `label`, or a Kubernetes selector \
                 (`pod_labels`, `namespace`, `namespace_labels`, `service_account`)",
            );
            return None;
        }
        let mut sel = Selector::default();
        if kube {
            sel.pod = Some(self.pod_selector(agents));
        }
        if let Some(c) = &agents.cgroup {
            let g = c.trim().trim_start_matches('/');
            let bad = if g.is_empty() {
                Some("the cgroup2 root itself is never an agent")
            } else if g.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                Some("empty, `.` and `..` segments never name a cgroup")
            } else if g.split('/').any(|s| s.starts_with("cgroup.")) {
                Some("`cgroup.*` names are the kernel's interface files, never cgroups")
            } else if g.contains('\0') {
                Some("NUL never appears in a cgroup name")
            } else if g.split('/').count() >= governance_common::MAX_CGROUP_DEPTH as usize {
                Some("deeper than the kernel programs look for agent roots")
            } else {
                None
            };
            match bad {
                Some(why) => self.problem(
                    c.span(),
                    format!("selector matches nothing: cgroup `{}`: {why}", **c),
                ),
                None => sel.cgroup = Some(g.to_owned()),
            }
        }
        if let Some(l) = &agents.label {
            if l.is_empty() || l.len() > 255 || l.chars().any(char::is_control) {
                self.problem(
                    l.span(),
                    "selector matches nothing: a label is 1 to 255 printable characters",
                );
            } else {
                sel.label = Some(l.to_string());
            }
        }
        Some(sel)
    }

    fn pod_selector(&mut self, agents: &model::AgentSelector) -> PodSelector {
        let mut pod = PodSelector::default();
        for (doc, out) in [
            (&agents.pod_labels, &mut pod.pod_labels),
            (&agents.namespace_labels, &mut pod.namespace_labels),
        ] {
            if let Some(doc) = doc {
                match kube::LabelSelector::from_doc(doc) {
                    Ok(s) => *out = Some(s),
                    Err(e) => self.problem(doc.span(), format!("selector matches nothing: {e}")),
                }
            }
        }
        if let Some(n) = &agents.namespace {
            if kube::dns_label(n) {
                pod.namespace = Some(n.to_string());
            } else {
                self.problem(
                    n.span(),
                    format!("selector matches nothing: namespace `{}` is not a DNS label (a-z, 0-9, `-`, at most 63)", **n),
                );
            }
        }
        if let Some(a) = &agents.service_account {
            if kube::dns_subdomain(a) {
                pod.service_account = Some(a.to_string());
            } else {
                self.problem(
                    a.span(),
                    format!(
                        "selector matches nothing: service account `{}` is not a DNS subdomain",
                        **a
                    ),
                );
            }
        }
        pod
    }

    fn abs_path(&self, p: &str) -> Result<PathBuf, String> {
        if !p.starts_with('/') {
            return Err(format!("`{p}` is not an absolute path"));
        }
        if p.len() > MAX_PATH_LEN {
            return Err(format!(
                "path is {} bytes long; the limit is {MAX_PATH_LEN}",
                p.len()
            ));
        }
        if p.split('/').any(|s| s == "." || s == "..") {
            return Err(format!(
                "`{p}` has `.` or `..` segments; write the resolved path"
            ));
        }
        Ok(PathBuf::from(p))
    }

    fn path_match(
        &mut self,
        what: &str,
        span: &Span,
        path: &Option<model::Str>,
        prefix: &Option<model::Str>,
    ) -> Option<PathMatch> {
        let (s, exact) = match (path, prefix) {
            (Some(p), None) => (p, true),
            (None, Some(p)) => (p, false),
            _ => {
                self.problem(
                    span,
                    format!("{what}: give exactly one of `path` or `prefix`"),
                );
                return None;
            }
        };
        match self.abs_path(s) {
            Ok(p) if exact => Some(PathMatch::Exact(p)),
            Ok(p) => Some(PathMatch::Prefix(p)),
            Err(msg) => {
                self.problem(s.span(), format!("{what}: {msg}"));
                None
            }
        }
    }

    fn unix_target(&mut self, span: &Span, u: &model::UnixMatch) -> Option<UnixTarget> {
        match (&u.path, &u.abstract_name) {
            (Some(p), None) => match self.abs_path(p) {
                Ok(p) => Some(UnixTarget::Path(p)),
                Err(msg) => {
                    self.problem(p.span(), format!("unix: {msg}"));
                    None
                }
            },
            (None, Some(n)) => {
                let bytes = n.as_bytes().to_vec();
                if bytes.is_empty() || bytes.len() >= governance_common::SUN_PATH_LEN {
                    self.problem(
                        n.span(),
                        format!(
                            "unix: an abstract name is 1 to {} bytes (without the leading NUL)",
                            governance_common::SUN_PATH_LEN - 1
                        ),
                    );
                    None
                } else {
                    Some(UnixTarget::Abstract(bytes))
                }
            }
            _ => {
                self.problem(span, "unix: give exactly one of `path` or `abstract`");
                None
            }
        }
    }

    fn conditions(&mut self, list: &[model::Str]) -> Vec<Condition> {
        list.iter()
            .filter_map(|c| match c.parse::<Condition>() {
                Ok(c) => Some(c),
                Err(msg) => {
                    self.problem(c.span(), format!("bad JSON condition `{}`: {msg}", **c));
                    None
                }
            })
            .collect()
    }

    fn matcher(&mut self, r: &model::RuleDoc) -> Option<Matcher> {
        let span = r.id.span();
        if !exactly_one(&[
            r.exec.is_some(),
            r.file.is_some(),
            r.network.is_some(),
            r.http.is_some(),
            r.unix.is_some(),
        ]) {
            self.problem(
                span,
                format!(
                    "rule `{}`: give exactly one of `exec`, `file`, `network`, `http` or `unix`",
                    *r.id
                ),
            );
            return None;
        }
        if let Some(u) = &r.unix {
            return self.unix_target(span, u).map(Matcher::Unix);
        }
        if let Some(e) = &r.exec {
            return self
                .path_match("exec", span, &e.path, &e.prefix)
                .map(Matcher::Exec);
        }
        if let Some(f) = &r.file {
            let path = self.path_match("file", span, &f.path, &f.prefix)?;
            return Some(Matcher::File {
                path,
                access: f.access.clone(),
            });
        }
        if let Some(n) = &r.network {
            let mut nets = Vec::new();
            if let Some(list) = &n.cidr {
                for c in &list.0 {
                    match c.trim().parse::<IpNet>() {
                        Ok(net) => nets.push(net),
                        Err(msg) => self.problem(list.span(), format!("bad CIDR: {msg}")),
                    }
                }
            }
            let mut ports = Vec::new();
            if let Some(list) = &n.ports {
                for p in &list.0 {
                    match parse_ports(p) {
                        Ok(range) => ports.push(range),
                        Err(msg) => self.problem(list.span(), msg),
                    }
                }
            }
            return Some(Matcher::Network {
                nets,
                ports,
                protocol: n.protocol.unwrap_or(Protocol::Any),
                via_proxy: n.via_proxy,
            });
        }
        let h = r.http.as_ref()?;
        let host = match &h.host {
            None => HostMatch::Any,
            Some(raw) => match host_match(&raw.trim().to_ascii_lowercase()) {
                Ok(m) => m,
                Err(msg) => {
                    self.problem(raw.span(), msg);
                    return None;
                }
            },
        };
        let mut methods = Vec::new();
        if let Some(list) = &h.method {
            for m in &list.0 {
                let up = m.trim().to_ascii_uppercase();
                if up.is_empty() || !up.chars().all(|c| c.is_ascii_alphabetic()) {
                    self.problem(list.span(), format!("`{m}` is not an HTTP method"));
                }
                methods.push(up);
            }
        }
        // Rule paths are matched in the form requests are: normalised as the proxy normalises
        // request paths, then ASCII-lowercased and without a trailing slash.
        let path = h.path.as_ref().and_then(|p| {
            if !p.starts_with('/') {
                self.problem(p.span(), format!("HTTP path `{}` must start with `/`", **p));
                return None;
            }
            match crate::proxy::request::normalise_path(p) {
                Ok(n) => Some(glob::match_path(&n).into_owned()),
                Err(e) => {
                    self.problem(
                        p.span(),
                        format!("HTTP path `{}` can never match a request: {e}", **p),
                    );
                    None
                }
            }
        });
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let body = self.conditions(&h.body);
        let mcp = h
            .mcp
            .as_ref()
            .map(|m| (m.tool.to_string(), self.conditions(&m.arguments)));
        Some(Matcher::Http(HttpMatcher {
            host,
            methods,
            path,
            headers,
            body,
            mcp,
        }))
    }

    fn rule(
        &mut self,
        policy: &str,
        policy_mode: Mode,
        profiles: &BTreeMap<String, SandboxProfile>,
        r: model::RuleDoc,
    ) -> Option<Rule> {
        let before = self.problems.len();
        let id_span = r.id.span();
        if !valid_name(&r.id) {
            self.problem(
                id_span,
                format!("rule id `{}`: use letters, digits, `-`, `_` or `.`", *r.id),
            );
        }
        if r.reason.trim().is_empty() {
            self.problem(
                r.reason.span(),
                "a rule needs a reason: events and denials quote it",
            );
        }
        let matcher = self.matcher(&r);
        let verdict = *r.verdict;
        let vspan = r.verdict.span();
        for (name, has, wanted) in [
            ("throttle", r.throttle.is_some(), Verdict::Throttle),
            ("escalate", r.escalate.is_some(), Verdict::Escalate),
            ("sandbox", r.sandbox.is_some(), Verdict::Sandbox),
        ] {
            if has && verdict != wanted {
                self.problem(
                    vspan,
                    format!("`{name}` settings only go with `verdict: {name}`"),
                );
            }
            if !has && verdict == wanted {
                self.problem(vspan, format!("`verdict: {name}` needs a `{name}:` block"));
            }
        }
        let throttle = r.throttle.as_ref().and_then(|t| {
            let rate = match &t.rate {
                Some(rate) if **rate > 0 => **rate,
                Some(rate) => {
                    self.problem(rate.span(), "throttle rate must be at least 1");
                    return None;
                }
                None => {
                    self.problem(
                        t.per.span(),
                        "a throttle needs a `rate` (requests per `per`)",
                    );
                    return None;
                }
            };
            match parse_duration(&t.per) {
                Ok(per) => Some(Throttle {
                    rate,
                    per,
                    key: t.key.unwrap_or(ThrottleKey::AgentRule),
                }),
                Err(msg) => {
                    self.problem(t.per.span(), msg);
                    None
                }
            }
        });
        let escalate = r.escalate.as_ref().and_then(|e| match &e.timeout {
            None => {
                self.problem(
                    vspan,
                    "an escalation needs a `timeout` (what if nobody answers?)",
                );
                None
            }
            Some(t) => match parse_duration(t) {
                Ok(timeout) => Some(Escalate {
                    timeout,
                    on_timeout: e.on_timeout.unwrap_or(Posture::Block),
                }),
                Err(msg) => {
                    self.problem(t.span(), msg);
                    None
                }
            },
        });
        let sandbox = r.sandbox.as_ref().and_then(|s| {
            let is_http = matcher.as_ref().is_some_and(|m| m.kind() == Kind::Http);
            match (&s.profile, &s.upstream) {
                (Some(p), None) if !is_http => {
                    if profiles.contains_key(p.as_str()) {
                        Some(SandboxTarget::Profile(p.to_string()))
                    } else {
                        self.problem(p.span(), format!("no sandbox profile `{}` in this policy's `sandbox_profiles`", **p));
                        None
                    }
                }
                (None, Some(u)) if is_http => {
                    if u.starts_with("http://") || u.starts_with("https://") {
                        Some(SandboxTarget::Upstream(u.to_string()))
                    } else {
                        self.problem(u.span(), format!("sandbox upstream `{}` must be an http:// or https:// URL", **u));
                        None
                    }
                }
                _ => {
                    self.problem(
                        vspan,
                        "sandbox: HTTP rules take `upstream`, other rules take `profile` (exactly one)",
                    );
                    None
                }
            }
        });
        let matcher = matcher?;
        let report = self.rule_report(&r.report, verdict, matcher.kind());
        (self.problems.len() == before).then(|| Rule {
            report,
            id: format!("{policy}/{}", *r.id),
            verdict,
            reason: r.reason.trim().to_owned(),
            mode: r.mode.as_ref().map_or(policy_mode, |m| **m),
            specificity: matcher.specificity(),
            matcher,
            throttle,
            escalate,
            sandbox,
            at: self.loc(id_span),
        })
    }
}

/// Exactly one of the alternatives is given (rules and test cases name one kind of action).
pub(crate) fn exactly_one(given: &[bool]) -> bool {
    given.iter().filter(|g| **g).count() == 1
}

/// A host pattern (trimmed, lowercase): `*` (any host), `*.example` (any subdomain) or a name.
fn host_match(h: &str) -> Result<HostMatch, String> {
    if h == "*" {
        return Ok(HostMatch::Any);
    }
    let (bare, suffix) = match h.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (h, false),
    };
    if bare.is_empty()
        || !bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
    {
        return Err(format!("host `{h}`: use `name.example` or `*.example`"));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{bare}"))
    } else {
        HostMatch::Exact(bare.to_owned())
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `443`, `8000-8999`.
fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("bad port or range `{s}` (1-65535, `lo-hi`)");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Largest `proxy.max_body` a policy may set.
pub const MAX_BODY_LIMIT: usize = 1 << 30;

/// `4096`, `64KiB`, `1MiB`, `1GiB` (binary units; `K`, `KB` and `KiB` are the same, in any
/// case).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let bad = || format!("bad size `{s}`: use a number of bytes or KiB, MiB, GiB (256KiB)");
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `500ms`, `30s`, `10m`, `1h`, `1d`, more than zero: for timeouts, windows and rotation ages.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_span(s)?;
    if d.is_zero() {
        return Err(format!("duration `{}` must be more than zero", s.trim()));
    }
    Ok(d)
}

/// The one duration grammar (policies, the command line, the API's `since`): a number and a
/// unit, `ms`, `s`, `m`, `h` or `d`; zero is allowed ([`parse_duration`] refuses it).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("bad duration `{s}`: use a number and a unit (500ms, 30s, 10m, 1h, 1d)")
    })?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration unit in `{s}`: use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

#[cfg(test)]
mod tests;
