//! The validated policy set: policies, their selectors, and rules with typed matchers.

use super::*;

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

    /// Whether every cgroup this selector can match lies strictly below `root` (relative to
    /// the cgroup2 mount): its literal cgroup is below it, or the directories its glob names
    /// before its first glob character are `root` or below it.
    pub fn only_below(&self, root: &str) -> bool {
        let Some(c) = self.cgroup.as_deref().map(|c| c.trim_matches('/')) else {
            return false;
        };
        let root = root.trim_matches('/');
        // The directory every match lies in or below: a literal itself, a glob's directories
        // before its first glob character. A selector that matches `root` itself (the literal
        // `root`, `root/**`) is not below it.
        let dir = match c.find(glob::GLOB_CHARS) {
            None => c,
            Some(at) => match c[..at].rfind('/') {
                Some(slash) => &c[..slash],
                None => return false,
            },
        };
        (dir == root || is_below(dir, root)) && !glob::path(c, root)
    }
}

/// Whether cgroup path `path` is strictly below `root` (both without leading or trailing `/`).
fn is_below(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/'))
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

/// The well-known NAT64 prefix, `64:ff9b::/96` (RFC 6052).
pub const NAT64_PREFIX: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);

/// An IP network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// IPv4 networks and addresses are compared as IPv4-mapped IPv6, so a rule for
    /// `10.0.0.0/8` also covers `::ffff:10.1.2.3`.
    pub(super) fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The IPv6 networks the kernel's tables key this network on (prefix length, address): an
    /// IPv6 network itself; an IPv4 network as IPv4-mapped IPv6 and under the NAT64 prefix
    /// `64:ff9b::/96` (RFC 6052), which an IPv6 network with NAT64 (DNS64 answers, IPv6-only
    /// clusters) routes to the same IPv4 host (red team round 15: a rule on an IPv4 address
    /// did not hold for its NAT64 spelling).
    pub fn ipv6_networks(&self) -> impl Iterator<Item = (u32, std::net::Ipv6Addr)> {
        let (v6, nat64) = match self.addr {
            IpAddr::V4(a) => {
                let bits = 96 + u32::from(self.prefix);
                let nat64 = u128::from(NAT64_PREFIX) | u128::from(u32::from(a));
                (
                    (bits, a.to_ipv6_mapped()),
                    Some((bits, std::net::Ipv6Addr::from(nat64))),
                )
            }
            IpAddr::V6(a) => ((u32::from(self.prefix), a), None),
        };
        std::iter::once(v6).chain(nat64)
    }

    pub fn prefix128(&self) -> u32 {
        u32::from(self.prefix) + if self.addr.is_ipv4() { 96 } else { 0 }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 network holds the NAT64 spelling of its addresses (see `ipv6_networks`).
        let addr = match addr {
            IpAddr::V6(a)
                if self.addr.is_ipv4() && u128::from(a) >> 32 == u128::from(NAT64_PREFIX) >> 32 =>
            {
                IpAddr::V4(std::net::Ipv4Addr::from(u128::from(a) as u32))
            }
            a => a,
        };
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
        // An IPv4 network spelt IPv4-mapped (`::ffff:10.0.0.0/104`) is that IPv4 network, with
        // its NAT64 spelling too (see `ipv6_networks`; red team round 34: the mapped spelling
        // of a block held for the address but not under `64:ff9b::/96`).
        if let IpAddr::V6(v6) = addr
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Ok(IpNet {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
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

impl HostMatch {
    /// Does `host` (any case) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct HttpMatcher {
    pub host: HostMatch,
    /// Uppercase methods; empty means any.
    pub methods: Vec<String>,
    /// In the form requests are matched in by rules that restrict (lowercase, no trailing
    /// slash).
    pub path: Option<String>,
    /// The same with its case kept, for an allow rule: a case-sensitive upstream serves
    /// `/files/PUBLIC.TXT` as another resource than `/files/public.txt`.
    pub path_exact: Option<String>,
    /// (lowercase name, value glob)
    pub headers: Vec<(String, String)>,
    pub body: Vec<Condition>,
    /// (tool name glob, conditions on the arguments)
    pub mcp: Option<(String, Vec<Condition>)>,
}

impl HttpMatcher {
    /// Whether the rule covers a request's `method`: it names none, or names it in any case. A
    /// rule naming `GET` covers `HEAD` too: Express, Starlette, Flask, Rails and Django run a
    /// GET route's handler for a HEAD (and drop the body of its answer), so the action is the
    /// GET's.
    pub fn covers_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self.methods.iter().any(|m| {
                m.eq_ignore_ascii_case(method)
                    || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
            })
    }
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
    /// Boxed: an HTTP matcher is four times the size of the others, and every rule's matcher
    /// would otherwise take its room (10,000 rules: 1.3 MiB; docs/benchmarks.md, Daemon memory).
    Http(Box<HttpMatcher>),
    Unix(UnixTarget),
    Sequence(Box<Sequence>),
}

impl Matcher {
    pub fn kind(&self) -> Kind {
        match self {
            Matcher::Exec(_) => Kind::Exec,
            Matcher::File { .. } => Kind::File,
            Matcher::Network { .. } => Kind::Network,
            Matcher::Http(_) => Kind::Http,
            Matcher::Unix(_) => Kind::Unix,
            Matcher::Sequence(_) => Kind::Sequence,
        }
    }

    /// The specificity of a network rule where it matched `addr` and `port`: that of its
    /// longest prefix holding the address and its narrowest range holding the port (a rule
    /// listing `10.20.0.5/32` beside `10.0.0.0/8` is a /32 rule at 10.20.0.5, not a /8 one;
    /// red team round 9). None if it does not match them; the rule's [`Self::specificity`] for
    /// other kinds.
    pub fn specificity_at(&self, addr: IpAddr, port: u16) -> Option<[u32; 4]> {
        let Matcher::Network { nets, ports, .. } = self else {
            return Some(self.specificity());
        };
        let prefix = if nets.is_empty() {
            0
        } else {
            nets.iter()
                .filter(|n| n.contains(addr))
                .map(|n| n.prefix128())
                .max()?
        };
        let range = if ports.is_empty() {
            (0, u16::MAX)
        } else {
            ports
                .iter()
                .copied()
                .filter(|(lo, hi)| (*lo..=*hi).contains(&port))
                .min_by_key(|(lo, hi)| hi - lo)?
        };
        Some(network_specificity(prefix, range))
    }

    /// Specificity, compared lexicographically; higher wins. See docs/policy.md, precedence.
    pub(super) fn specificity(&self) -> [u32; 4] {
        use std::os::unix::ffi::OsStrExt as _;
        let path = |p: &PathMatch| match p {
            PathMatch::Exact(e) => [2, path_rank(e.as_os_str().as_bytes(), true)],
            PathMatch::Prefix(d) => [1, path_rank(d.as_os_str().as_bytes(), false)],
        };
        match self {
            // A file rule's access list does not rank it: on the same path, the most severe
            // verdict wins, as documented (red team round 34: an allow listing every access
            // outranked a block on the same prefix, so any policy of the agent could lift
            // another's block).
            Matcher::Exec(p) | Matcher::File { path: p, .. } => {
                let [a, b] = path(p);
                [a, b, 0, 0]
            }
            Matcher::Network { nets, ports, .. } => {
                let prefix = nets.iter().map(|n| n.prefix128()).min().unwrap_or(0);
                let range = ports
                    .iter()
                    .copied()
                    .max_by_key(|(a, b)| b - a)
                    .unwrap_or((0, u16::MAX));
                network_specificity(prefix, range)
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
            // Not ranked: a sequence rule is not a candidate for an action (see engine).
            Matcher::Sequence(_) => [0; 4],
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
    /// The sandbox profiles as written; validation checked every `writable` prefix.
    pub sandbox_profiles: BTreeMap<String, model::SandboxProfile>,
    /// Shared: a re-read keeps the rules that did not change (see `items`).
    pub rules: Vec<Arc<Rule>>,
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
    /// `kernel.allow_name_service_sockets`, as written.
    pub allow_name_service_sockets: Option<bool>,
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

/// Every policy of a directory. Each policy is shared (`Arc`): the daemon's views of the
/// enforcing set and the parse of the next reload hold the same policies, not copies.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<std::sync::Arc<Policy>>,
}

impl PolicySet {
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.policies
            .iter()
            .flat_map(|p| p.rules.iter().map(|r| &**r))
    }

    /// Every rule with its policy and its kernel rule number: 1, 2, ... in set order. The one
    /// numbering that the compiled maps carry and that events are named by.
    pub fn numbered(&self) -> impl Iterator<Item = (&Policy, &Rule, u32)> {
        self.policies
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (&**p, &**r)))
            .zip(1u32..)
            .map(|((p, r), n)| (p, r, n))
    }

    /// The policies that select agents by Kubernetes identity (they need `run --kubernetes`).
    pub fn kubernetes_policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies
            .iter()
            .map(|p| &**p)
            .filter(|p| p.selector.pod.is_some())
    }
}

/// How a file or exec path ranks among paths ([`Matcher::specificity`]): its length, a prefix
/// counted with one trailing `/` however it was written (`/a/b` and `/a/b/` rank alike). The
/// kernel's entries for where a rule's path leads (a symlink on the way) rank by that path, as
/// the kernel names the files below it (red team round 27).
pub fn path_rank(path: &[u8], exact: bool) -> u32 {
    if exact {
        return path.len() as u32;
    }
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    end as u32 + 1
}

/// The specificity of a network rule's entry for a prefix of `prefix128` bits (IPv4 as
/// IPv4-mapped: 96 + its length; 0 for every address) and a port range: the longer prefix,
/// then the narrower range, wins (docs/policy.md, precedence).
pub fn network_specificity(prefix128: u32, (lo, hi): (u16, u16)) -> [u32; 4] {
    [prefix128, 65536 - (u32::from(hi) - u32::from(lo) + 1), 0, 0]
}
