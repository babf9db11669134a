//! Policy → kernel map contents for one generation.
//!
//! Each agent root cgroup gets a *class*: its own rule tables, built from the policies whose
//! selectors match it, plus one class per sandbox profile its rules use. The tables are
//! pre-resolved so that one lookup answers each question in the kernel:
//!
//! - path rules (file, and exec prefixes) become LPM-trie nodes, one per access letter; each
//!   node's value is the best rule among *all* rules that cover the node (the kernel's longest
//!   match then yields the best rule among all rules covering the looked-up path);
//! - destination rules become LPM-trie nodes whose value lists every covering rule's
//!   port/protocol alternative, best first;
//! - Unix-socket rules become one entry per socket (the loader resolves a path to the socket
//!   file's identity; an abstract name is hashed), holding the best rule for that socket;
//! - "best" is the engine's precedence: most specific first, then block > escalate > sandbox >
//!   throttle > allow; shadow rules are carried beside the enforcing one, never instead of it.
//!
//! - file rules are also resolved to the identity of what their paths name now (see
//!   [`Identities`]): the file or directory itself and, for a directory, what is below it, so
//!   that the kernel decides on the object whatever name reaches it.
//!
//! HTTP rules are the proxy's. What the kernel cannot express is listed in `unenforceable`, so
//! the daemon can refuse to claim enforcement it does not have.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use governance_common::{
    AgentValue, IDENT_LETTERS, IdentValue, MAX_THROTTLES, NET_SLOTS, NO_RULE, NetEntry, PATH_MAX,
    RulePair, RuleRef, SCOPE_BELOW, SCOPE_HOLDS, SCOPE_SELF, Throttle, Verdict as KVerdict, access,
    allow, class_id, id_number, proto,
};

use crate::{
    agents::AgentCgroup,
    policy::{
        Access, Kind, Matcher, Mode, PathMatch, Policy, PolicySet, Posture, Protocol, Rule,
        SandboxNetwork, ThrottleKey, UnixTarget, Verdict,
    },
};

/// Paths the agents must never write: the policy directory and the pins (the cgroup tree
/// outside an agent's own subtree is added per agent); and the daemon's secrets, which they
/// must not read either.
#[derive(Clone, Debug, Default)]
pub struct Protect {
    /// cgroup2 mount point.
    pub cgroup_root: PathBuf,
    /// Directories no agent may write below.
    pub no_write: Vec<PathBuf>,
    /// Directories and files no agent may read or write: the audit log, the node CA's key, the
    /// API token.
    pub no_access: Vec<PathBuf>,
}

/// The interface files an agent may write in its own root cgroup: those of cgroup delegation.
const DELEGATED: [&str; 3] = ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];

/// The agent root's interface files it may not write (its limits and settings), as they are
/// on the node now (the controllers enabled above it decide which exist): the writable ones
/// (read-only statistics need no rule) except what delegation grants, `cgroup.kill` (it only
/// kills the agent) and the `*.pressure` files (writing one sets a PSI trigger for the reader).
/// None if the directory cannot be read.
fn root_interface_files(root: &std::path::Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir
        .flatten()
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o200 != 0)
        })
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !DELEGATED.contains(&name.as_ref())
                && name != "cgroup.kill"
                && !name.ends_with(".pressure")
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// One class: the tables of one agent root (or of one sandbox profile of it).
#[derive(Debug, Default)]
pub struct Class {
    /// Kernel class id (slot bit included).
    pub id: u32,
    pub value: AgentValue,
    /// Exact exec rules: the loader turns each path into (device, inode).
    pub exec: BTreeMap<PathBuf, RulePair>,
    /// (access letter, node bytes) → rules. Node bytes end in `/` (prefix) or NUL (exact).
    pub paths: BTreeMap<(u8, Vec<u8>), RulePair>,
    /// (prefix length over 128 bits, IPv6 address) → alternatives, best first.
    pub net: BTreeMap<(u32, [u8; 16]), Vec<NetEntry>>,
    /// Unix sockets → rules: the loader turns a path into the socket file's identity.
    pub unix: BTreeMap<UnixTarget, RulePair>,
    /// File rules by identity: (kernel device, inode, scope) → rules per access letter
    /// ([`IDENT_LETTERS`]); (0, 0, [`SCOPE_SELF`]) is the class's marker, whose slots say
    /// which letters some identity rule restricts (see governance_common::IdentKey).
    pub idents: BTreeMap<(u32, u64, u32), IdentValue>,
}

/// What goes into the maps for one generation.
#[derive(Debug, Default)]
pub struct KernelPolicy {
    pub generation: u32,
    /// Agent roots: (cgroup id, index into `classes`).
    pub agents: Vec<(u64, usize)>,
    /// Sandbox profile classes: (profile class number, index into `classes`).
    pub profiles: Vec<(u32, usize)>,
    pub classes: Vec<Class>,
    /// The shared built-in path rules, one class per combination of relaxations in use (see
    /// [`governance_common::builtin_class`]): path rules only.
    pub builtins: Vec<Class>,
    /// Throttle rules: (kernel rule id, rate and bucket id). See [`bucket_id`].
    pub throttles: Vec<(u32, Throttle)>,
    /// Policy the kernel programs cannot enforce, one line each.
    pub unenforceable: Vec<String>,
    /// Tables that do not fit (too many port alternatives at one prefix): refuse the generation.
    pub errors: Vec<String>,
    /// What the identity resolution could not cover, for the operator (the generation loads).
    pub notes: Vec<String>,
}

/// A rule as the compiler ranks it.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    specificity: [u32; 4],
    rule: RuleRef,
    shadow: bool,
}

impl Ranked {
    /// Precedence key: higher is better.
    fn key(&self) -> ([u32; 4], u8) {
        (self.specificity, self.rule.verdict)
    }
}

/// The best enforcing rule and, if it ranks above that one, the best shadow rule.
fn pair_of<'a>(covering: impl Iterator<Item = &'a Ranked>) -> Option<RulePair> {
    let mut enforce: Option<&Ranked> = None;
    let mut shadow: Option<&Ranked> = None;
    for r in covering {
        let slot = if r.shadow { &mut shadow } else { &mut enforce };
        if slot.is_none_or(|s| r.key() > s.key()) {
            *slot = Some(r);
        }
    }
    let shadow = shadow.filter(|s| enforce.is_none_or(|e| s.key() > e.key()));
    (enforce.is_some() || shadow.is_some()).then(|| RulePair {
        enforce: enforce.map(|r| r.rule).unwrap_or_default(),
        shadow: shadow.map(|r| r.rule).unwrap_or_default(),
    })
}

fn kverdict(v: Verdict) -> KVerdict {
    match v {
        Verdict::Allow => KVerdict::Allow,
        Verdict::Block => KVerdict::Block,
        Verdict::Throttle => KVerdict::Throttle,
        Verdict::Sandbox => KVerdict::Sandbox,
        Verdict::Escalate => KVerdict::Escalate,
    }
}

fn rule_ref(rule_id: u32, verdict: KVerdict, aux: u16) -> RuleRef {
    RuleRef {
        rule_id,
        verdict: verdict as u8,
        present: 1,
        aux,
    }
}

fn posture(p: Posture) -> KVerdict {
    match p {
        Posture::Allow => KVerdict::Allow,
        Posture::Block => KVerdict::Block,
    }
}

/// A path-rule node: the path and whether it is exact (else a directory prefix).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    path: Vec<u8>,
    exact: bool,
}

impl Node {
    fn bytes(&self) -> Vec<u8> {
        let mut b = self.path.clone();
        if self.exact {
            b.push(0);
        } else if b.last() != Some(&b'/') {
            b.push(b'/');
        }
        b
    }

    /// Does a rule at `self` cover the node `other`?
    fn covers(&self, other: &Node) -> bool {
        if self.exact {
            return other.exact && other.path == self.path;
        }
        let dir = &self.path;
        other.path == *dir
            || (other.path.starts_with(dir)
                && (dir.last() == Some(&b'/') || other.path.get(dir.len()) == Some(&b'/')))
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    p.as_os_str().as_bytes().to_vec()
}

/// The names a path rule must be stored under: as written, and where it resolves to now
/// (the kernel reports resolved paths: a rule on a symlink means the file behind it).
fn spellings(p: &Path) -> Vec<Vec<u8>> {
    let mut out = vec![path_bytes(p)];
    if let Ok(real) = std::fs::canonicalize(p)
        && real != p
    {
        out.push(path_bytes(&real));
    }
    out
}

fn letters(access: &[Access]) -> Vec<u8> {
    if access.is_empty() {
        return vec![
            access::READ,
            access::WRITE,
            access::CREATE,
            access::TRUNCATE,
        ];
    }
    access
        .iter()
        .map(|a| match a {
            Access::Read => access::READ,
            Access::Write => access::WRITE,
            Access::Create => access::CREATE,
            Access::Truncate => access::TRUNCATE,
            Access::Exec => access::EXEC,
        })
        .collect()
}

const WRITE_LETTERS: [u8; 3] = [access::WRITE, access::CREATE, access::TRUNCATE];

/// The kernel's settings, which root writes with no capability (only the files' modes), and
/// several of which make the kernel run a program of the writer's choosing as root, outside
/// every cgroup but the root: `kernel.core_pattern` (`|/path` on any crash),
/// `kernel.modprobe` (on any unknown module request), binfmt_misc (an interpreter for every
/// exec of a matching file, mounted at /proc/sys/fs/binfmt_misc), `/sys/kernel/uevent_helper`
/// (on every device event). The rest reconfigure the node under the policy (sysctls, device and
/// driver attributes in sysfs) or stop it (`/proc/sysrq-trigger`). Agents may not write them
/// unless a policy allows kernel settings; their own cgroup subtree (below /sys/fs/cgroup) is
/// more specific and stays writable.
const KERNEL_SETTINGS: [&str; 3] = ["/proc/sys", "/proc/sysrq-trigger", "/sys"];

/// The node's own programs, and the files that make the node run a program as root outside
/// every agent: the schedulers (cron, at), the service manager's units (in /etc, /usr/lib and
/// /run/systemd), the loader's preload list and library paths, logins (shell startup files,
/// PAM, sudo, SSH keys), udev rules, modprobe's `install` lines, dpkg's maintainer scripts, and
/// the binaries and libraries root runs. A root agent that writes one of them has code run for
/// it outside its cgroup (by cron within a minute, by the next login, by the next boot). Agents
/// may not write, create, truncate or name anything there unless a policy allows system files.
const SYSTEM_FILES: [&str; 21] = [
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/var/spool/cron",
    "/var/lib/dpkg/info",
    "/run/systemd",
    "/run/udev",
    "/root/.ssh",
    "/root/.profile",
    "/root/.bashrc",
    "/root/.bash_profile",
    "/root/.bash_login",
    "/root/.bash_logout",
    "/root/.config/systemd",
    "/root/.config/autostart",
];

/// Built-in directories whose entries the identity resolution does not enumerate (for other
/// names and mount points made before the load): too big to read on every reload.
const NOT_ENUMERATED: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
];

/// Is a built-in relaxed for `agent`: set true by an enforcing policy of the agent, false by
/// none?
fn relaxed_for(set: &PolicySet, agent: &AgentCgroup, get: fn(&Policy) -> Option<bool>) -> bool {
    let governing = || {
        set.policies.iter().filter(|p| {
            p.mode == Mode::Enforce
                && p.selector
                    .matches(&agent.rel, agent.label.as_deref(), agent.pod.as_ref())
        })
    };
    governing().any(|p| get(p) == Some(true)) && !governing().any(|p| get(p) == Some(false))
}

/// The [`allow`] bits of the built-ins a policy relaxed for `agent` that change the shared
/// built-in path rules (kernel settings, system files).
fn relaxations(set: &PolicySet, agent: &AgentCgroup) -> u32 {
    let mut bits = 0;
    if relaxed_for(set, agent, |p| p.allow_kernel_settings) {
        bits |= allow::KERNEL_SETTINGS;
    }
    if relaxed_for(set, agent, |p| p.allow_system_files) {
        bits |= allow::SYSTEM_FILES;
    }
    bits
}

/// The built-in path rules every agent shares (with the relaxations `relaxed`): no access to
/// the daemon's secrets; no writes to the policy, the pins, the daemon's executable, and,
/// unless relaxed, the kernel's settings and the node's system files. Each path as written and
/// as resolved now (a relative or symlinked --policy means the same directory as the kernel's
/// resolved path); a prefix node covers the path itself too (a file: the executable, the
/// token, the shell startup files).
fn shared_denied(protect: &Protect, relaxed: u32) -> Vec<(u8, Node, Ranked)> {
    let r = Ranked {
        specificity: [1, 0, u32::MAX - 1, 0],
        rule: rule_ref(NO_RULE, KVerdict::Block, 0),
        shadow: false,
    };
    let mut out = Vec::new();
    for letter in WRITE_LETTERS.into_iter().chain([access::READ]) {
        let mut denied: Vec<PathBuf> = protect.no_access.clone();
        if letter != access::READ {
            denied.extend(protect.no_write.iter().cloned());
            if relaxed & allow::KERNEL_SETTINGS == 0 {
                denied.extend(KERNEL_SETTINGS.iter().map(PathBuf::from));
            }
            if relaxed & allow::SYSTEM_FILES == 0 {
                denied.extend(SYSTEM_FILES.iter().map(PathBuf::from));
            }
        }
        for path in denied.iter().flat_map(|d| spellings(d)) {
            out.push((letter, Node { path, exact: false }, r));
        }
    }
    out
}

/// Leave the shared built-ins' own nodes to the built-in class (their answer there is the
/// same: a built-in outranks every rule).
fn drop_shared(c: &mut Class, shared: &[(u8, Node, Ranked)]) {
    for (letter, node, _) in shared {
        c.paths.remove(&(*letter, node.bytes()));
        let exact = Node {
            path: node.path.clone(),
            exact: true,
        };
        c.paths.remove(&(*letter, exact.bytes()));
    }
}

/// A destination rule: (prefix128, masked address, rank, port lo, port hi, protocol, via proxy).
type NetRule = (u32, [u8; 16], Ranked, u16, u16, u8, bool);

/// Path rules of one access letter by node, so the rules covering a node are found with one
/// lookup per directory level instead of a scan.
struct NodeIndex<'a> {
    by_node: BTreeMap<&'a Node, Vec<&'a Ranked>>,
}

impl<'a> NodeIndex<'a> {
    fn new(list: &'a [(Node, Ranked)]) -> Self {
        let mut by_node: BTreeMap<&Node, Vec<&Ranked>> = BTreeMap::new();
        for (n, r) in list {
            by_node.entry(n).or_default().push(r);
        }
        Self { by_node }
    }

    /// Rules at `node` itself and at every directory prefix that covers it.
    fn covering(&self, node: &Node) -> impl Iterator<Item = &'a Ranked> + '_ {
        let path = &node.path;
        // The directories that contain `path` (and `path` itself, as a directory).
        let mut dirs: Vec<Vec<u8>> = vec![b"/".to_vec()];
        for (i, c) in path.iter().enumerate() {
            if *c == b'/' && i > 0 {
                dirs.push(path[..i].to_vec());
                dirs.push(path[..=i].to_vec());
            }
        }
        dirs.push(path.clone());
        let mut keys: Vec<Node> = dirs
            .into_iter()
            .map(|path| Node { path, exact: false })
            .collect();
        if node.exact {
            keys.push(node.clone());
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| k.covers(node))
            .filter_map(|k| self.by_node.get(&k))
            .flatten()
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// Everything a class is built from, before push-down.
#[derive(Default, Clone)]
struct Rules {
    /// (letter, node) → rules stored there.
    paths: BTreeMap<u8, Vec<(Node, Ranked)>>,
    exec_exact: Vec<(PathBuf, Node)>,
    net: Vec<NetRule>,
    /// Exec, file, network, unix.
    defaults: [(Option<KVerdict>, Option<KVerdict>); 4],
    unix: Vec<(UnixTarget, Ranked)>,
}

/// The id of a throttle rule's buckets ([`governance_common::BucketKey::rule`]): FNV-1a of its
/// `<policy>/<rule>` name, never 0.
///
/// Throttles survive reloads. A generation's tables name rules by kernel rule id, which carries
/// the generation's slot bit and the rule's position in the set, and agents by class, numbered
/// in discovery order; both change from one generation to the next. A bucket is keyed by
/// neither: by the agent root's cgroup id and this id, which depend only on what the bucket
/// counts (the agent, and the rule's name). Each generation's `THROTTLES` entry of a rule (in
/// its slot, written before the flip like every other table) gives the programs the rule's rate
/// and this id, so the rule tables of the old and of the new generation lead to the *same*
/// bucket: there is nothing to copy, and so no moment at which a decision sees a fresh full
/// bucket or a copy that misses the tokens taken meanwhile. A rule whose rate changed keeps its
/// level, capped at the new burst when next used (the programs cap at the deciding
/// generation's capacity). After the flip the daemon deletes the buckets no rule or agent of the
/// new generation leads to (`Enforcer::install`), so a rule or agent that comes back later starts
/// full. A daemon that restarts computes the same ids, so its first generation carries the
/// pinned buckets too.
pub fn bucket_id(rule: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

pub fn compile(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
    protect: &Protect,
) -> KernelPolicy {
    let mut out = KernelPolicy {
        generation,
        ..Default::default()
    };
    // Rule number n (1-based, in set order) for each rule, and the sandbox profiles in use.
    let numbered: Vec<(&Policy, &Rule, u32)> = set.numbered().collect();
    let mut unenforceable = BTreeSet::new();
    let mut next_class = 0u32;
    let mut new_class = || {
        next_class += 1;
        class_id(generation, next_class)
    };
    let mut bucket_ids: BTreeMap<u64, &str> = BTreeMap::new();
    for (_, r, n) in &numbered {
        if let Some(t) = &r.throttle {
            let capacity = u64::from(t.rate.max(1));
            let bucket = bucket_id(&r.id);
            if let Some(other) = bucket_ids.insert(bucket, &r.id) {
                out.errors.push(format!(
                    "rules {other} and {} would share one throttle bucket (their names hash alike); rename one",
                    r.id
                ));
            }
            out.throttles.push((
                class_id(generation, *n),
                Throttle {
                    capacity,
                    interval_ns: (t.per.as_nanos() as u64 / capacity).max(1),
                    bucket,
                },
            ));
        }
    }
    if out.throttles.len() > (MAX_THROTTLES / 2) as usize {
        out.errors.push(format!(
            "{} throttle rules; the kernel holds {} per generation",
            out.throttles.len(),
            MAX_THROTTLES / 2
        ));
    }
    let mut identities = Identities::new(protect);
    // The same for every agent: resolved once (each spelling is a canonicalize).
    let cgroup_root = spellings(&protect.cgroup_root);
    let mut shared_by: BTreeMap<u32, Vec<(u8, Node, Ranked)>> = BTreeMap::new();
    for agent in agents {
        let class = new_class();
        let mut rules = Rules::default();
        let mut profiles: Vec<(String, &Policy, u32)> = Vec::new();
        for (p, rule, n) in &numbered {
            if !p
                .selector
                .matches(&agent.rel, agent.label.as_deref(), agent.pod.as_ref())
            {
                continue;
            }
            let why = |what: &str| format!("rule {} ({}): {what}", rule.id, rule.at);
            let mut aux = 0u16;
            match rule.verdict {
                Verdict::Sandbox => match &rule.sandbox {
                    Some(crate::policy::SandboxTarget::Profile(name)) => {
                        let pc = match profiles
                            .iter()
                            .find(|(pn, pp, _)| pn == name && std::ptr::eq(*pp, *p))
                        {
                            Some((_, _, c)) => *c,
                            None => {
                                let c = new_class();
                                profiles.push((name.clone(), p, c));
                                c
                            }
                        };
                        aux = (pc & 0xffff) as u16;
                    }
                    _ if rule.matcher.kind() != Kind::Http => {
                        unenforceable.insert(why(
                            "a sandbox upstream is for HTTP rules; the kernel needs a profile",
                        ));
                        continue;
                    }
                    _ => {}
                },
                Verdict::Allow => aux = crate::policy::report::of_rule(p, rule).aux(),
                Verdict::Throttle => {
                    aux = match rule.throttle.as_ref().map(|t| t.key) {
                        Some(ThrottleKey::Agent) => 1,
                        Some(ThrottleKey::Rule) => 2,
                        _ => 0,
                    };
                }
                _ => {}
            }
            let ranked = Ranked {
                specificity: rule.specificity,
                rule: rule_ref(class_id(generation, *n), kverdict(rule.verdict), aux),
                shadow: rule.mode == Mode::Shadow,
            };
            match &rule.matcher {
                Matcher::Exec(pm) => {
                    let (path, exact) = match pm {
                        PathMatch::Exact(p) => (p, true),
                        PathMatch::Prefix(p) => (p, false),
                    };
                    for spelled in spellings(path) {
                        let node = Node {
                            path: spelled,
                            exact,
                        };
                        if exact {
                            rules.exec_exact.push((path.clone(), node.clone()));
                        }
                        rules
                            .paths
                            .entry(access::EXEC)
                            .or_default()
                            .push((node, ranked));
                    }
                }
                Matcher::File { path: pm, access } => {
                    let (path, exact) = match pm {
                        PathMatch::Exact(p) => (p, true),
                        PathMatch::Prefix(p) => (p, false),
                    };
                    for letter in letters(access) {
                        if letter == access::EXEC {
                            unenforceable.insert(why(
                                "file access `exec` is decided by exec rules; write an exec rule",
                            ));
                            continue;
                        }
                        for spelled in spellings(path) {
                            let node = Node {
                                path: spelled,
                                exact,
                            };
                            rules.paths.entry(letter).or_default().push((node, ranked));
                        }
                    }
                }
                Matcher::Network {
                    nets,
                    ports,
                    protocol,
                    via_proxy,
                } => {
                    let proto = match protocol {
                        Protocol::Any => proto::ANY,
                        Protocol::Tcp => proto::TCP,
                        Protocol::Udp => proto::UDP,
                    };
                    let targets: Vec<(u32, [u8; 16])> = if nets.is_empty() {
                        vec![(0, [0; 16])]
                    } else {
                        nets.iter()
                            .map(|n| {
                                let (bits, addr) = match n.addr {
                                    IpAddr::V4(a) => (96 + u32::from(n.prefix), a.to_ipv6_mapped()),
                                    IpAddr::V6(a) => (u32::from(n.prefix), a),
                                };
                                (bits, masked(addr.octets(), bits))
                            })
                            .collect()
                    };
                    let ranges = if ports.is_empty() {
                        vec![(0, u16::MAX)]
                    } else {
                        ports.clone()
                    };
                    for (bits, addr) in targets {
                        for (lo, hi) in &ranges {
                            rules
                                .net
                                .push((bits, addr, ranked, *lo, *hi, proto, *via_proxy));
                        }
                    }
                }
                Matcher::Unix(target) => rules.unix.push((target.clone(), ranked)),
                Matcher::Http(_) => {}
            }
        }
        // Defaults: block if any enforcing policy of the agent says so; shadow policies'
        // block defaults are reported.
        for p in set.policies.iter().filter(|p| {
            p.selector
                .matches(&agent.rel, agent.label.as_deref(), agent.pod.as_ref())
        }) {
            for (kind, posture_) in &p.defaults {
                let i = match kind {
                    Kind::Exec => 0,
                    Kind::File => 1,
                    Kind::Network => 2,
                    Kind::Unix => 3,
                    Kind::Http => continue,
                };
                let v = posture(*posture_);
                let slot = if p.mode == Mode::Shadow {
                    &mut rules.defaults[i].1
                } else {
                    &mut rules.defaults[i].0
                };
                *slot = Some((*slot).map_or(v, |s| s.max(v)));
            }
        }
        // Built-in: no writes to the cgroup tree outside the agent's own subtree (that would
        // move a process out of the agent), to the policy directory or to the pins; nor, unless
        // a policy allows kernel settings, to the kernel's own settings (see KERNEL_SETTINGS).
        let builtin = |verdict| Ranked {
            specificity: [u32::MAX; 4],
            rule: rule_ref(NO_RULE, verdict, 0),
            shadow: false,
        };
        let reports = super::report::default_aux(set, agent);
        let relaxations = relaxations(set, agent);
        let shared = shared_by
            .entry(relaxations)
            .or_insert_with(|| shared_denied(protect, relaxations))
            .clone();
        for letter in WRITE_LETTERS.into_iter().chain([access::READ]) {
            let list = rules.paths.entry(letter).or_default();
            // The shared built-ins are in the class too, for the identity resolution and so
            // the rules below them are pushed down right; their own nodes are stored once, in
            // the built-in class (see `builtin_classes`).
            for (l, node, r) in &shared {
                if *l == letter {
                    list.push((node.clone(), *r));
                }
            }
            if letter == access::READ {
                continue;
            }
            for dir in cgroup_root.iter().cloned() {
                let mut r = builtin(KVerdict::Block);
                r.specificity = [1, 0, u32::MAX - 1, 0];
                list.push((
                    Node {
                        path: dir,
                        exact: false,
                    },
                    r,
                ));
            }
            let mut own = builtin(KVerdict::Allow);
            own.specificity = [1, 0, u32::MAX, 0];
            own.rule.aux = reports[1];
            list.push((
                Node {
                    path: path_bytes(&agent.path),
                    exact: false,
                },
                own,
            ));
        }
        // ... but not the agent root's own interface files: its limits (pids.max, memory.max,
        // cpu.max, cgroup.max.descendants, ...) are the operator's, as in cgroup delegation.
        // Writing one needs an open for write, so one exact rule per file, on `w`, is enough.
        {
            let list = rules.paths.entry(access::WRITE).or_default();
            for file in root_interface_files(&agent.path) {
                let mut r = builtin(KVerdict::Block);
                r.specificity = [1, 0, u32::MAX, 0];
                list.push((
                    Node {
                        path: path_bytes(&file),
                        exact: true,
                    },
                    r,
                ));
            }
        }
        let mut c = build_class(class, &rules, &mut out.errors, &agent.name);
        c.value.class = class;
        super::report::set_defaults(&mut c.value, reports);
        identities.resolve(&mut c);
        drop_shared(&mut c, &shared);
        c.value.allow |= relaxations;
        // Relaxed built-ins: set true by an enforcing policy of the agent, false by none. (A
        // sandbox profile's class keeps every protection.)
        let governing: Vec<&Policy> = set
            .policies
            .iter()
            .filter(|p| {
                p.mode == Mode::Enforce
                    && p.selector
                        .matches(&agent.rel, agent.label.as_deref(), agent.pod.as_ref())
            })
            .collect();
        let relaxed = |get: fn(&Policy) -> Option<bool>| {
            governing.iter().any(|p| get(p) == Some(true))
                && !governing.iter().any(|p| get(p) == Some(false))
        };
        if relaxed(|p| p.allow_raw_sockets) {
            c.value.allow |= governance_common::allow::RAW_SOCKETS;
        }
        if relaxed(|p| p.allow_user_namespaces) {
            c.value.allow |= governance_common::allow::USER_NAMESPACES;
        }
        if relaxed(|p| p.allow_runtime_sockets) {
            c.value.allow |= governance_common::allow::RUNTIME_SOCKETS;
        }
        if relaxed(|p| p.allow_mounts) {
            c.value.allow |= governance_common::allow::MOUNTS;
        }
        if relaxed(|p| p.allow_loader_exec) {
            c.value.allow |= governance_common::allow::LOADER_EXEC;
        }
        // Capabilities: given back when an enforcing policy lists one and every enforcing
        // policy that writes a list lists it (leaving one out objects to it).
        let lists: Vec<u64> = governing
            .iter()
            .filter_map(|p| p.allow_capabilities)
            .collect();
        if let Some(first) = lists.first() {
            c.value.allow_caps = lists.iter().fold(*first, |all, l| all & l);
        }
        out.agents.push((agent.cgroup_id, out.classes.len()));
        out.classes.push(c);
        for (name, p, pc) in profiles {
            let profile = &p.sandbox_profiles[&name];
            let mut constrained = rules.clone();
            // No network at all, or TCP only through the policy proxy: the agent's own network
            // rules do not apply inside the sandbox.
            constrained.net.clear();
            constrained.defaults[2] = (Some(KVerdict::Block), None);
            // Nor named Unix sockets: a local service is outside the sandbox just as the
            // network is (unnamed socketpairs stay usable).
            constrained.unix.clear();
            constrained.defaults[3] = (Some(KVerdict::Block), None);
            if profile.network == Some(SandboxNetwork::Proxy) {
                let mut r = builtin(KVerdict::Allow);
                r.specificity = [0; 4];
                constrained
                    .net
                    .push((0, [0; 16], r, 0, u16::MAX, proto::TCP, true));
            }
            // Writes only below the writable directories, whatever the agent's rules say.
            for letter in WRITE_LETTERS {
                let list = constrained.paths.entry(letter).or_default();
                let mut top = builtin(KVerdict::Block);
                top.specificity = [3, 0, 0, 0];
                list.push((
                    Node {
                        path: b"/".to_vec(),
                        exact: false,
                    },
                    top,
                ));
                for w in &profile.writable {
                    let mut ok = builtin(KVerdict::Allow);
                    ok.specificity = [3, w.len() as u32 + 1, 0, 0];
                    ok.rule.aux = reports[1];
                    list.push((
                        Node {
                            path: w.as_bytes().to_vec(),
                            exact: false,
                        },
                        ok,
                    ));
                }
            }
            let mut c = build_class(pc, &constrained, &mut out.errors, &agent.name);
            c.value.class = pc;
            super::report::set_defaults(&mut c.value, reports);
            identities.resolve(&mut c);
            drop_shared(&mut c, &shared);
            out.profiles.push((id_number(pc), out.classes.len()));
            out.classes.push(c);
        }
    }
    let combos: BTreeSet<u32> = out
        .classes
        .iter()
        .map(|c| c.value.allow & (allow::KERNEL_SETTINGS | allow::SYSTEM_FILES))
        .collect();
    for relaxed in combos {
        let mut rules = Rules::default();
        let shared = shared_by
            .entry(relaxed)
            .or_insert_with(|| shared_denied(protect, relaxed));
        for (letter, node, r) in shared.iter().cloned() {
            rules.paths.entry(letter).or_default().push((node, r));
        }
        // The cgroup tree is the classes' own (each agent's subtree is writable): a hole in
        // the kernel settings' `/sys` here, so this class says nothing there.
        if relaxed & allow::KERNEL_SETTINGS == 0 {
            for letter in WRITE_LETTERS {
                for dir in cgroup_root.iter().cloned() {
                    rules.paths.entry(letter).or_default().push((
                        Node {
                            path: dir,
                            exact: false,
                        },
                        Ranked {
                            specificity: [1, 0, u32::MAX, 0],
                            rule: RuleRef::default(),
                            shadow: false,
                        },
                    ));
                }
            }
        }
        let id = governance_common::builtin_class(class_id(generation, 0), relaxed);
        let c = build_class(id, &rules, &mut out.errors, "(built-in)");
        out.builtins.push(c);
    }
    let entries: usize = out
        .classes
        .iter()
        .chain(&out.builtins)
        .map(|c| c.paths.len())
        .sum();
    if entries > (governance_common::MAX_PATH_RULES / 2) as usize {
        out.errors.push(format!(
            "{entries} path rule entries; the kernel table holds {} per generation",
            governance_common::MAX_PATH_RULES / 2
        ));
    }
    out.unenforceable = unenforceable.into_iter().collect();
    out.notes = identities.notes.into_iter().collect();
    let idents: usize = out.classes.iter().map(|c| c.idents.len()).sum();
    if idents > (governance_common::MAX_IDENT_RULES / 2) as usize {
        out.errors.push(format!(
            "{idents} identity entries; the kernel table holds {} per generation",
            governance_common::MAX_IDENT_RULES / 2
        ));
    }
    out
}

/// Directory entries the identity resolution looks at below protected directories, per
/// generation (for hard links made before the load, and mount points).
const ENUMERATION_BUDGET: usize = 50_000;

/// An object found on this host: kernel device, inode, directory or not.
type Found = (u32, u64, bool);

/// Resolves a class's file rules to the identity of what their paths name now, into
/// [`Class::idents`]. Each object gets exactly the answer the path rules give its canonical
/// name: `self` is the answer for the path itself, `below` (directories) the answer for a name
/// inside it. The kernel looks the opened object up, then each directory above it; the first
/// entry met decides a letter (the deepest rule, as for paths), and the most severe of that and
/// the path decision wins.
///
/// Besides the rules' own paths: below a directory whose rules restrict an access, the files
/// that already have other names (a link count above 1: a hard link made before the load, which
/// the ancestor walk of that other name would not reach) and the mount points (a filesystem
/// mounted inside is walked up to its own root only). Neither is looked for below `/` or the
/// cgroup2 tree (kernfs has no hard links), and at most [`ENUMERATION_BUDGET`] entries are read
/// per generation; the rest goes to `notes`.
///
/// And every directory above a restricting rule's object (scope `SCOPE_HOLDS`): an agent may not
/// rename it, since the next generation would look for the object at the old path.
///
/// Paths that do not exist when the generation is built have no identity (their path rules
/// still apply). Results are cached for the generation: agents share policies.
pub(crate) struct Identities {
    stat: HashMap<Vec<u8>, Option<(Vec<u8>, Found)>>,
    below: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    budget: usize,
    skip: Vec<Vec<u8>>,
    pub(crate) notes: BTreeSet<String>,
}

fn restricts(p: &RulePair) -> bool {
    p.enforce.present != 0 && p.enforce.verdict != KVerdict::Allow as u8
}

fn has(p: &RulePair) -> bool {
    p.enforce.present != 0 || p.shadow.present != 0
}

/// The more severe of two answers for one letter (the same object named twice: deny wins).
fn severer(a: RulePair, b: RulePair) -> RulePair {
    if !has(&a) {
        return b;
    }
    if !has(&b) {
        return a;
    }
    let mut out = if b.enforce.present != 0
        && (a.enforce.present == 0 || b.enforce.verdict > a.enforce.verdict)
    {
        RulePair {
            enforce: b.enforce,
            shadow: a.shadow,
        }
    } else {
        a
    };
    if out.shadow.present == 0 {
        out.shadow = b.shadow;
    }
    out
}

impl Identities {
    pub(crate) fn new(protect: &Protect) -> Self {
        Self {
            stat: HashMap::new(),
            below: HashMap::new(),
            budget: ENUMERATION_BUDGET,
            // Not enumerated: the root and the cgroup tree (too big, and the cgroup tree has
            // its own protections), and the kernel settings' pseudo filesystems (hard links and
            // bind mounts there need capabilities agents do not get; walking /sys on every
            // reload would make reloads slow).
            skip: [b"/".to_vec(), path_bytes(&protect.cgroup_root)]
                .into_iter()
                .chain(KERNEL_SETTINGS.iter().map(|p| p.as_bytes().to_vec()))
                .chain(NOT_ENUMERATED.iter().flat_map(|p| spellings(Path::new(p))))
                .collect(),
            notes: BTreeSet::new(),
        }
    }

    /// The canonical path and identity of `path`, if it exists.
    fn find(&mut self, path: &[u8]) -> Option<(Vec<u8>, Found)> {
        use std::os::unix::ffi::OsStrExt as _;
        self.stat
            .entry(path.to_vec())
            .or_insert_with(|| {
                let p = Path::new(std::ffi::OsStr::from_bytes(path));
                let real = std::fs::canonicalize(p).ok()?;
                let meta = std::fs::metadata(&real).ok()?;
                Some((
                    path_bytes(&real),
                    (super::kernel_dev(meta.dev()), meta.ino(), meta.is_dir()),
                ))
            })
            .clone()
    }

    /// Below directory `dir` (canonical): files with more than one name, and mount points.
    fn enumerate(&mut self, dir: &[u8]) -> Vec<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt as _;
        if self.skip.iter().any(|s| s == dir) {
            return Vec::new();
        }
        if let Some(found) = self.below.get(dir) {
            return found.clone();
        }
        let mut found = Vec::new();
        let root = Path::new(std::ffi::OsStr::from_bytes(dir));
        let Ok(top) = std::fs::symlink_metadata(root) else {
            return found;
        };
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                if self.budget == 0 {
                    self.notes.insert(format!(
                        "identity: stopped looking below {} after {ENUMERATION_BUDGET} entries;                          hard links made before this load to files further below, and                          filesystems mounted further below, are decided by their paths only",
                        root.display()
                    ));
                    self.below.insert(dir.to_vec(), found.clone());
                    return found;
                }
                self.budget -= 1;
                let Ok(meta) = e.metadata() else { continue };
                let path = e.path();
                if meta.is_dir() {
                    if meta.dev() != top.dev() {
                        found.push(path_bytes(&path));
                    } else {
                        stack.push(path);
                    }
                } else if !meta.file_type().is_symlink() && meta.nlink() > 1 {
                    found.push(path_bytes(&path));
                }
            }
        }
        self.below.insert(dir.to_vec(), found.clone());
        found
    }

    /// Resolve the class's file rules (and what they protect) into `c.idents`.
    pub(crate) fn resolve(&mut self, c: &mut Class) {
        let letters = IDENT_LETTERS;
        // The paths the class's file rules name (exec rules have their own identities).
        let named: BTreeSet<Vec<u8>> = c
            .paths
            .keys()
            .filter(|(l, _)| letters.contains(l))
            .map(|(_, node)| {
                let mut p = node.clone();
                if p.last() == Some(&0) || (p.len() > 1 && p.last() == Some(&b'/')) {
                    p.pop();
                }
                p
            })
            .collect();
        let mut objects: Vec<(Vec<u8>, Found)> = Vec::new();
        let mut protected_dirs: Vec<Vec<u8>> = Vec::new();
        let mut holders: Vec<(Vec<u8>, [RulePair; 4])> = Vec::new();
        for path in &named {
            let Some((real, found)) = self.find(path) else {
                continue;
            };
            // The rules that restrict access to the object itself, or below it.
            let restricting = |query: &[u8]| {
                letters.map(|l| {
                    answer(c, l, query)
                        .filter(restricts)
                        .map(|p| RulePair {
                            enforce: p.enforce,
                            shadow: RuleRef::default(),
                        })
                        .unwrap_or_default()
                })
            };
            let mut exact = real.clone();
            exact.push(0);
            let mut held = restricting(&exact);
            if found.2 {
                let below = restricting(&below_query(&real));
                if below.iter().any(has) {
                    protected_dirs.push(real.clone());
                }
                for (h, b) in held.iter_mut().zip(below) {
                    *h = severer(*h, b);
                }
            }
            if held.iter().any(has) {
                holders.push((real.clone(), held));
            }
            objects.push((real, found));
        }
        protected_dirs.sort();
        protected_dirs.dedup();
        for dir in protected_dirs {
            for path in self.enumerate(&dir) {
                if let Some(found) = self.find(&path) {
                    objects.push(found);
                }
            }
        }
        objects.sort();
        objects.dedup();
        for (real, (dev, ino, is_dir)) in objects {
            let mut exact = real.clone();
            exact.push(0);
            let mut scopes = vec![(SCOPE_SELF, exact)];
            if is_dir {
                scopes.push((SCOPE_BELOW, below_query(&real)));
            }
            for (scope, query) in scopes {
                let rules = letters.map(|l| answer(c, l, &query).unwrap_or_default());
                if !rules.iter().any(has) {
                    continue;
                }
                let entry = c.idents.entry((dev, ino, scope)).or_default();
                for (slot, r) in entry.rules.iter_mut().zip(rules) {
                    *slot = severer(*slot, r);
                }
            }
        }
        // The directories above a restricting rule's object: renaming one moves the rule's path
        // away from the object.
        for (real, held) in holders {
            let mut dir = real.as_slice();
            while let Some(i) = dir.iter().rposition(|&b| b == b'/') {
                if dir == b"/" {
                    break;
                }
                dir = if i == 0 { &dir[..1] } else { &dir[..i] };
                let Some((_, (dev, ino, _))) = self.find(dir) else {
                    break;
                };
                let entry = c.idents.entry((dev, ino, SCOPE_HOLDS)).or_default();
                for (slot, r) in entry.rules.iter_mut().zip(held) {
                    *slot = severer(*slot, r);
                }
            }
        }
        let mut marker = IdentValue::default();
        for v in c.idents.values() {
            for (m, r) in marker.rules.iter_mut().zip(&v.rules) {
                if restricts(r) {
                    *m = RulePair {
                        enforce: rule_ref(NO_RULE, KVerdict::Block, 0),
                        shadow: RuleRef::default(),
                    };
                }
            }
        }
        if marker.rules.iter().any(has) {
            c.idents.insert((0, 0, SCOPE_SELF), marker);
        } else {
            // Nothing restricts: the answers could never change a decision; the kernel skips
            // the walk for this class.
            c.idents.clear();
        }
    }
}

/// What the kernel's path lookup answers for `query` (a path and NUL, or a directory and `/`):
/// the longest node of letter `letter` that `query` starts with.
fn answer(c: &Class, letter: u8, query: &[u8]) -> Option<RulePair> {
    // Nodes end in `/` (directories) or NUL (exact paths): only those prefixes can match.
    (1..=query.len())
        .rev()
        .filter(|&n| n == query.len() || query[n - 1] == b'/')
        .find_map(|n| c.paths.get(&(letter, query[..n].to_vec())).copied())
}

/// A name inside directory `dir`, as a path-lookup query.
fn below_query(dir: &[u8]) -> Vec<u8> {
    let mut q = dir.to_vec();
    if q.last() != Some(&b'/') {
        q.push(b'/');
    }
    q
}

/// Zero the bits of `addr` past `bits`.
fn masked(addr: [u8; 16], bits: u32) -> [u8; 16] {
    let v = u128::from_be_bytes(addr);
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits.min(128))
    };
    (v & mask).to_be_bytes()
}

fn build_class(class: u32, rules: &Rules, errors: &mut Vec<String>, agent: &str) -> Class {
    let mut c = Class {
        id: class,
        ..Default::default()
    };
    let default = |(enforce, shadow): (Option<KVerdict>, Option<KVerdict>)| {
        let enforce = enforce.unwrap_or(KVerdict::Allow);
        RulePair {
            enforce: rule_ref(NO_RULE, enforce, 0),
            shadow: shadow
                .filter(|s| *s != enforce)
                .map(|s| rule_ref(NO_RULE, s, 0))
                .unwrap_or_default(),
        }
    };
    c.value = AgentValue {
        class,
        allow: 0,
        exec_default: default(rules.defaults[0]),
        file_default: default(rules.defaults[1]),
        net_default: default(rules.defaults[2]),
        unix_default: default(rules.defaults[3]),
        allow_caps: 0,
    };
    for (letter, list) in &rules.paths {
        let index = NodeIndex::new(list);
        // A prefix rule for `/d` covers `/d` itself too: store that as an exact node.
        let nodes: BTreeSet<Node> = index
            .by_node
            .keys()
            .flat_map(|n| {
                let dir = (!n.exact && n.path.last() != Some(&b'/')).then(|| Node {
                    path: n.path.clone(),
                    exact: true,
                });
                std::iter::once((*n).clone()).chain(dir)
            })
            .collect();
        for node in &nodes {
            let bytes = node.bytes();
            if bytes.len() > PATH_MAX {
                errors.push(format!(
                    "agent {agent}: path {} is longer than the kernel can match ({} bytes)",
                    String::from_utf8_lossy(&node.path),
                    PATH_MAX - 2
                ));
                continue;
            }
            if let Some(pair) = pair_of(index.covering(node)) {
                c.paths.insert((*letter, bytes), pair);
            }
        }
        if *letter == access::EXEC {
            for (path, node) in &rules.exec_exact {
                if let Some(pair) = pair_of(index.covering(node)) {
                    c.exec.insert(path.clone(), pair);
                }
            }
        }
    }
    let mut by_socket: BTreeMap<&UnixTarget, Vec<&Ranked>> = BTreeMap::new();
    for (target, r) in &rules.unix {
        by_socket.entry(target).or_default().push(r);
    }
    for (target, list) in by_socket {
        if let Some(pair) = pair_of(list.into_iter()) {
            c.unix.insert(target.clone(), pair);
        }
    }
    // Destination rules by (prefix length, masked address), so the rules covering a node are
    // found with one lookup per shorter prefix length instead of a scan.
    let mut by_prefix: BTreeMap<(u32, [u8; 16]), Vec<&NetRule>> = BTreeMap::new();
    for e in &rules.net {
        by_prefix.entry((e.0, e.1)).or_default().push(e);
    }
    let lengths: BTreeSet<u32> = by_prefix.keys().map(|(b, _)| *b).collect();
    for &(bits, addr) in by_prefix.keys() {
        let mut entries: Vec<(Ranked, NetEntry)> = lengths
            .iter()
            .filter(|b| **b <= bits)
            .filter_map(|b| by_prefix.get(&(*b, masked(addr, *b))))
            .flatten()
            .map(|(_, _, r, lo, hi, proto, via)| {
                (
                    *r,
                    NetEntry {
                        rule: r.rule,
                        port_lo: *lo,
                        port_hi: *hi,
                        proto: *proto,
                        via_proxy: u8::from(*via),
                        shadow: u8::from(r.shadow),
                        _pad: 0,
                    },
                )
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.key()));
        // An enforcing entry that matches every port and protocol ends the kernel's search:
        // nothing after it can decide.
        if let Some(i) = entries.iter().position(|(r, e)| {
            !r.shadow && e.port_lo == 0 && e.port_hi == u16::MAX && e.proto == proto::ANY
        }) {
            entries.truncate(i + 1);
        }
        if entries.len() > NET_SLOTS {
            errors.push(format!(
                "agent {agent}: {} port/protocol alternatives cover {}/{}; the kernel holds {NET_SLOTS} per prefix",
                entries.len(),
                std::net::Ipv6Addr::from(addr),
                bits
            ));
            continue;
        }
        c.net
            .insert((bits, addr), entries.into_iter().map(|(_, e)| e).collect());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn agent(index: usize, rel: &str, label: Option<&str>) -> AgentCgroup {
        AgentCgroup {
            index,
            name: rel.into(),
            rel: rel.into(),
            label: label.map(Into::into),
            path: PathBuf::from("/sys/fs/cgroup").join(rel),
            cgroup_id: 1000 + index as u64,
            pod: None,
        }
    }

    fn protect() -> Protect {
        Protect {
            cgroup_root: "/sys/fs/cgroup".into(),
            no_write: vec!["/etc/governance".into()],
            no_access: vec!["/var/lib/governance/audit".into()],
        }
    }

    fn lookup(c: &Class, letter: u8, path: &str) -> Option<RulePair> {
        // What the kernel's longest-prefix match does.
        let mut q = path.as_bytes().to_vec();
        q.push(0);
        c.paths
            .iter()
            .filter(|((l, n), _)| *l == letter && q.starts_with(n))
            .max_by_key(|((_, n), _)| n.len())
            .map(|(_, v)| *v)
    }

    /// What the kernel's file_open decides from the path rules: the class's answer, and the
    /// shared built-ins' where they have a rule and it is more severe.
    fn decided(k: &KernelPolicy, c: &Class, letter: u8, path: &str) -> Option<RulePair> {
        let own = lookup(c, letter, path);
        let id = governance_common::builtin_class(c.id, c.value.allow);
        let shared = k
            .builtins
            .iter()
            .find(|b| b.id == id)
            .and_then(|b| lookup(b, letter, path))
            .filter(|p| p.enforce.present != 0);
        match (own, shared) {
            (Some(o), Some(s))
                if o.enforce.present != 0 && o.enforce.verdict >= s.enforce.verdict =>
            {
                Some(o)
            }
            (o, None) => o,
            (_, s) => s,
        }
    }

    #[test]
    fn path_rules_push_down_so_the_longest_match_is_the_best_rule() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'a/*' }\ndefaults: { file: allow }\nrules:\n\
             \x20 - { id: home, file: { prefix: /home/u }, verdict: allow, reason: r }\n\
             \x20 - { id: ssh, file: { prefix: /home/u/.ssh }, verdict: block, reason: r }\n\
             \x20 - { id: pub, file: { path: /home/u/.ssh/id.pub, access: [read] }, verdict: allow, reason: r }\n\
             \x20 - { id: trial, mode: shadow, file: { prefix: /home/u/.ssh/keys }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
        assert!(k.errors.is_empty(), "{:?}", k.errors);
        let c = &k.classes[0];
        let rule = |n: u32| class_id(1, n);
        let r = |p: &str| lookup(c, access::READ, p).map(|v| (v.enforce.rule_id, v.shadow.rule_id));
        assert_eq!(r("/home/u/notes"), Some((rule(1), 0)));
        assert_eq!(r("/home/u/.ssh"), Some((rule(2), 0)));
        assert_eq!(r("/home/u/.sshx"), Some((rule(1), 0)));
        assert_eq!(r("/home/u/.ssh/id"), Some((rule(2), 0)));
        assert_eq!(r("/home/u/.ssh/id.pub"), Some((rule(3), 0)));
        // Only reading is allowed by the exact rule; writing falls back to the prefix block.
        let w = lookup(c, access::WRITE, "/home/u/.ssh/id.pub").unwrap();
        assert_eq!(w.enforce.rule_id, rule(2));
        // The shadow rule ranks above the enforcing one and is carried beside it.
        assert_eq!(r("/home/u/.ssh/keys/k"), Some((rule(2), rule(4))));
        assert_eq!(r("/var/x"), None);
        // Built-ins: the cgroup tree is not writable except the agent's own subtree.
        let w = |p: &str| decided(&k, c, access::WRITE, p).map(|v| v.enforce.verdict);
        assert_eq!(
            w("/sys/fs/cgroup/other/cgroup.procs"),
            Some(KVerdict::Block as u8)
        );
        assert_eq!(
            w("/sys/fs/cgroup/a/one/child/cgroup.procs"),
            Some(KVerdict::Allow as u8)
        );
        assert_eq!(w("/etc/governance/p.yaml"), Some(KVerdict::Block as u8));
        // The daemon's secrets: neither written nor read.
        let audit = "/var/lib/governance/audit/audit-000001.jsonl";
        assert_eq!(w(audit), Some(KVerdict::Block as u8));
        assert_eq!(
            decided(&k, c, access::READ, audit).map(|v| v.enforce.verdict),
            Some(KVerdict::Block as u8)
        );
        // The policy directory stays readable (its files are no secret).
        assert_eq!(decided(&k, c, access::READ, "/etc/governance/p.yaml"), None);
        // The kernel's settings are not writable; the agent's own cgroup still is.
        for p in [
            "/proc/sys/kernel/core_pattern",
            "/proc/sys/fs/binfmt_misc/register",
            "/proc/sysrq-trigger",
            "/sys/kernel/uevent_helper",
        ] {
            assert_eq!(w(p), Some(KVerdict::Block as u8), "{p}");
        }
        assert_eq!(
            lookup(c, access::READ, "/proc/sys/kernel/core_pattern"),
            None
        );
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'a/*' }\nkernel: { allow_kernel_settings: true }\n".into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "a/one", None)], 1, &protect());
        let w = |p: &str| lookup(&k.classes[0], access::WRITE, p).map(|v| v.enforce.verdict);
        assert_eq!(w("/proc/sys/kernel/core_pattern"), None);
        assert_eq!(
            w("/sys/fs/cgroup/other/cgroup.procs"),
            Some(KVerdict::Block as u8)
        );
    }

    #[test]
    fn network_alternatives_are_ordered_by_precedence_and_pushed_down() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { label: bot }\ndefaults: { network: block }\nrules:\n\
             \x20 - { id: tls, network: { cidr: 10.0.0.0/8, ports: 443 }, verdict: allow, reason: r }\n\
             \x20 - { id: ten, network: { cidr: 10.0.0.0/8 }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n\
             \x20 - { id: db, network: { cidr: 10.1.0.0/16, ports: 5432, protocol: tcp }, verdict: allow, reason: r }\n\
             \x20 - { id: v6, network: { cidr: 'fd00::/8' }, verdict: block, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "x", Some("bot"))], 2, &protect());
        let c = &k.classes[0];
        assert_eq!(c.value.net_default.enforce.verdict, KVerdict::Block as u8);
        let node = |bits: u32, a: IpAddr| {
            let octets = match a {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            c.net[&(bits, octets)]
                .iter()
                .map(|e| (e.rule.rule_id & 0xffff, e.port_lo, e.port_hi, e.proto))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            node(104, "10.0.0.0".parse().unwrap()),
            [(1, 443, 443, 0), (2, 0, 65535, 0)]
        );
        assert_eq!(
            node(112, "10.1.0.0".parse().unwrap()),
            [(3, 5432, 5432, 6), (1, 443, 443, 0), (2, 0, 65535, 0)]
        );
        assert_eq!(node(8, "fd00::".parse().unwrap()), [(4, 0, 65535, 0)]);
        // Generation 2 uses slot 0: ids carry no slot bit.
        assert_eq!(c.id, class_id(2, 1));
    }

    #[test]
    fn built_in_protections_are_relaxed_only_when_no_policy_objects() {
        let doc = |name: &str, kernel: &str| {
            (
                format!("{name}.yaml").into(),
                format!("name: {name}\nagents: {{ label: bot }}\n{kernel}"),
            )
        };
        let bits = |docs: Vec<(std::path::PathBuf, String)>| {
            let set = parse(&docs).unwrap();
            compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect()).classes[0]
                .value
                .allow
        };
        use governance_common::allow::{LOADER_EXEC, MOUNTS, RAW_SOCKETS, USER_NAMESPACES};
        assert_eq!(bits(vec![doc("a", "")]), 0);
        assert_eq!(
            bits(vec![
                doc(
                    "a",
                    "kernel: { allow_mounts: true, allow_loader_exec: true }"
                ),
                doc("b", "kernel: { allow_loader_exec: false }"),
            ]),
            MOUNTS
        );
        assert_eq!(
            bits(vec![doc("a", "kernel: { allow_loader_exec: true }")]),
            LOADER_EXEC
        );
        assert_eq!(
            bits(vec![doc("a", "kernel: { allow_raw_sockets: true }")]),
            RAW_SOCKETS
        );
        assert_eq!(
            bits(vec![
                doc(
                    "a",
                    "kernel: { allow_raw_sockets: true, allow_user_namespaces: true }"
                ),
                doc("b", "kernel: { allow_raw_sockets: false }"),
            ]),
            USER_NAMESPACES
        );
    }

    /// The node's system files are refused to agents for writing, creating and truncating (not
    /// reading), unless a policy allows system files; a protected file (not a directory) is
    /// refused by its own path too.
    #[test]
    fn system_files_are_refused_unless_a_policy_allows_them() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("governance");
        std::fs::write(&exe, "x").unwrap();
        let mut protect = protect();
        protect.no_write.push(exe.clone());
        let class = |kernel: &str| {
            let set = parse(&[(
                "p.yaml".into(),
                format!("name: p\nagents: {{ label: bot }}\n{kernel}"),
            )])
            .unwrap();
            compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect)
        };
        let refused = |k: &KernelPolicy, letter: u8, path: &str| {
            decided(k, &k.classes[0], letter, path).is_some_and(|r| {
                r.enforce.present != 0 && r.enforce.verdict == KVerdict::Block as u8
            })
        };
        let k = class("");
        for path in [
            "/etc/cron.d/job",
            "/etc/ld.so.preload",
            "/etc/systemd/system/x.service",
            "/usr/bin/python3",
            "/var/spool/cron/crontabs/root",
            "/run/systemd/transient/x.service",
            "/root/.ssh/authorized_keys",
            "/root/.bashrc",
        ] {
            for letter in [access::WRITE, access::CREATE, access::TRUNCATE] {
                assert!(refused(&k, letter, path), "{path} {}", letter as char);
            }
            assert!(!refused(&k, access::READ, path), "{path} stays readable");
        }
        assert!(refused(&k, access::WRITE, exe.to_str().unwrap()));
        assert!(!refused(&k, access::WRITE, "/root/.cache/pip/x"));
        assert!(!refused(&k, access::WRITE, "/var/lib/app/data"));
        // The agent's own cgroup stays writable below the kernel settings' /sys (the hole in
        // the shared built-ins); other cgroups do not.
        assert!(!refused(
            &k,
            access::WRITE,
            "/sys/fs/cgroup/x/child/cgroup.procs"
        ));
        assert!(refused(
            &k,
            access::WRITE,
            "/sys/fs/cgroup/other/cgroup.procs"
        ));
        assert!(refused(&k, access::WRITE, "/sys/kernel/uevent_helper"));
        // Stored once: the class holds none of the shared nodes.
        assert!(
            !k.classes[0]
                .paths
                .keys()
                .any(|(_, n)| n.starts_with(b"/usr/") || n.starts_with(b"/etc/")),
            "{:?}",
            k.classes[0].paths.keys()
        );
        let relaxed = class("kernel: { allow_system_files: true }");
        assert!(!refused(&relaxed, access::WRITE, "/etc/cron.d/job"));
        assert!(!refused(&relaxed, access::CREATE, "/usr/local/lib/x.so"));
        // The daemon's own files are never relaxed.
        assert!(refused(&relaxed, access::WRITE, exe.to_str().unwrap()));
        assert!(refused(&relaxed, access::CREATE, "/etc/governance/p.yaml"));
        // Many agents share one built-in class per combination of relaxations.
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'a/*' }\n".into(),
        )])
        .unwrap();
        let agents: Vec<_> = (0..50).map(|i| agent(i, &format!("a/{i}"), None)).collect();
        let many = compile(&set, &agents, 1, &protect);
        assert_eq!(many.builtins.len(), 1);
        let per_class = many.classes[0].paths.len();
        assert!(
            per_class < 20,
            "{per_class} path entries per agent: {:?}",
            many.classes[0].paths.keys()
        );
    }

    #[test]
    fn unix_rules_are_one_entry_per_socket_with_the_best_rule() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { label: bot }\ndefaults: { unix: block }\n\
             sandbox_profiles: { jail: { network: none } }\nrules:\n\
             \x20 - { id: bus, unix: { path: /run/user/1/bus }, verdict: allow, reason: r }\n\
             \x20 - { id: bus-trial, mode: shadow, unix: { path: /run/user/1/bus }, verdict: block, reason: r }\n\
             \x20 - { id: x11, unix: { abstract: /tmp/.X11-unix/X0 }, verdict: escalate, escalate: { timeout: 1m }, reason: r }\n\
             \x20 - { id: tool, exec: { path: /bin/x }, verdict: sandbox, sandbox: { profile: jail }, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect());
        assert!(k.errors.is_empty() && k.unenforceable.is_empty(), "{k:?}");
        let c = &k.classes[0];
        assert_eq!(c.value.unix_default.enforce.verdict, KVerdict::Block as u8);
        let bus = c.unix[&UnixTarget::Path("/run/user/1/bus".into())];
        assert_eq!(bus.enforce.rule_id, class_id(1, 1));
        assert_eq!(bus.enforce.verdict, KVerdict::Allow as u8);
        // The shadow rule is more severe at the same socket: carried beside it.
        assert_eq!(bus.shadow.rule_id, class_id(1, 2));
        let x11 = c.unix[&UnixTarget::Abstract(b"/tmp/.X11-unix/X0".to_vec())];
        assert_eq!(x11.enforce.verdict, KVerdict::Escalate as u8);
        // Nothing relaxed: the runtime sockets stay refused.
        assert_eq!(c.value.allow & governance_common::allow::RUNTIME_SOCKETS, 0);
        // The sandbox profile reaches no named socket: no rules, the default blocks.
        let jail = &k.classes[k.profiles[0].1];
        assert!(jail.unix.is_empty());
        assert_eq!(
            jail.value.unix_default.enforce.verdict,
            KVerdict::Block as u8
        );
        assert_eq!(jail.value.allow, 0);
    }

    #[test]
    fn runtime_sockets_are_relaxed_like_the_other_built_ins() {
        let doc = |kernel: &str| {
            vec![(
                std::path::PathBuf::from("a.yaml"),
                format!("name: a\nagents: {{ label: bot }}\n{kernel}"),
            )]
        };
        let bits = |docs: Vec<(std::path::PathBuf, String)>| {
            compile(
                &parse(&docs).unwrap(),
                &[agent(0, "x", Some("bot"))],
                1,
                &protect(),
            )
            .classes[0]
                .value
                .allow
        };
        use governance_common::allow::RUNTIME_SOCKETS;
        assert_eq!(bits(doc("")), 0);
        assert_eq!(
            bits(doc("kernel: { allow_runtime_sockets: true }")),
            RUNTIME_SOCKETS
        );
        let mut both = doc("kernel: { allow_runtime_sockets: true }");
        both.push((
            "b.yaml".into(),
            "name: b\nagents: { label: bot }\nkernel: { allow_runtime_sockets: false }\n".into(),
        ));
        assert_eq!(bits(both), 0);
    }

    #[test]
    fn capabilities_are_given_back_only_where_every_list_agrees() {
        use governance_common::caps::{NET_ADMIN, SYS_ADMIN, SYS_TIME};
        let doc = |name: &str, kernel: &str| {
            (
                format!("{name}.yaml").into(),
                format!("name: {name}\nagents: {{ label: bot }}\n{kernel}"),
            )
        };
        let caps = |docs: Vec<(std::path::PathBuf, String)>| {
            let set = parse(&docs).unwrap();
            compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect()).classes[0]
                .value
                .allow_caps
        };
        let bit = |c: u32| 1u64 << c;
        assert_eq!(caps(vec![doc("a", "")]), 0);
        assert_eq!(
            caps(vec![doc(
                "a",
                "kernel: { allow_capabilities: [CAP_NET_ADMIN, sys_time] }"
            )]),
            bit(NET_ADMIN) | bit(SYS_TIME)
        );
        // A policy without the field has no say; one with a list objects to what it leaves out.
        assert_eq!(
            caps(vec![
                doc(
                    "a",
                    "kernel: { allow_capabilities: [CAP_NET_ADMIN, CAP_SYS_ADMIN] }"
                ),
                doc("b", ""),
                doc("c", "kernel: { allow_capabilities: [CAP_SYS_ADMIN] }"),
            ]),
            bit(SYS_ADMIN)
        );
        assert_eq!(
            caps(vec![
                doc("a", "kernel: { allow_capabilities: [CAP_NET_ADMIN] }"),
                doc("b", "kernel: { allow_capabilities: [] }"),
            ]),
            0
        );
    }

    #[test]
    fn via_proxy_rules_are_enforced_and_gaps_are_reported() {
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { label: bot }\nrules:\n\
             \x20 - { id: px, network: { cidr: 1.2.3.4/32, via_proxy: true }, verdict: allow, reason: r }\n\
             \x20 - { id: fx, file: { path: /bin/x, access: [exec] }, verdict: block, reason: r }\n\
             \x20 - { id: api, http: { host: x.example }, verdict: block, reason: r }\n"
                .into(),
        )])
        .unwrap();
        let k = compile(&set, &[agent(0, "x", Some("bot"))], 1, &protect());
        let missing = k.unenforceable.join("\n");
        assert!(!missing.contains("p/px"), "{missing}");
        assert!(missing.contains("rule p/fx "), "{missing}");
        assert!(
            !missing.contains("p/api"),
            "HTTP rules are the proxy's:\n{missing}"
        );
        let mapped = "::ffff:1.2.3.4"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let entries = &k.classes[0].net[&(128, mapped)];
        assert_eq!(entries[0].via_proxy, 1, "{entries:?}");
    }

    /// The bucket the programs take a token from when agent `cgroup` connects to `ip` (a /32
    /// throttle rule): what `take_token` in governance-ebpf computes from the tables.
    fn kernel_bucket(
        k: &KernelPolicy,
        cgroup: u64,
        ip: &str,
    ) -> (governance_common::BucketKey, u64) {
        let (_, i) = k.agents.iter().find(|(id, _)| *id == cgroup).unwrap();
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let entry = k.classes[*i].net[&(128, ip.to_ipv6_mapped().octets())][0];
        assert_eq!(entry.rule.verdict, KVerdict::Throttle as u8);
        let (_, t) = k
            .throttles
            .iter()
            .find(|(id, _)| *id == entry.rule.rule_id)
            .expect("every throttle rule of a generation has its rate in that generation");
        let (owner, rule) = match entry.rule.aux {
            1 => (cgroup, 0),
            2 => (0, t.bucket),
            _ => (cgroup, t.bucket),
        };
        (governance_common::BucketKey { owner, rule }, t.capacity)
    }

    fn throttle_policy(rate: u32, extra_rule: bool) -> PolicySet {
        let extra = if extra_rule {
            "\x20 - { id: before, network: { cidr: 10.0.0.0/8 }, verdict: block, reason: r }\n"
        } else {
            ""
        };
        parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: 'a/*' }}\nrules:\n{extra}\
                 \x20 - {{ id: mine, network: {{ cidr: 127.0.0.1/32 }}, verdict: throttle, throttle: {{ rate: {rate}, per: 1m }}, reason: r }}\n\
                 \x20 - {{ id: ours, network: {{ cidr: 127.0.0.2/32 }}, verdict: throttle, throttle: {{ rate: 5, per: 1m, key: rule }}, reason: r }}\n\
                 \x20 - {{ id: any, network: {{ cidr: 127.0.0.3/32 }}, verdict: throttle, throttle: {{ rate: 5, per: 1m, key: agent }}, reason: r }}\n"
            ),
        )])
        .unwrap()
    }

    #[test]
    fn generations_lead_to_the_same_buckets_whatever_moves() {
        let with_id = |index, rel: &str, id| AgentCgroup {
            cgroup_id: id,
            ..agent(index, rel, None)
        };
        let g1 = compile(
            &throttle_policy(3, false),
            &[with_id(0, "a/one", 501), with_id(1, "a/two", 502)],
            1,
            &protect(),
        );
        // Generation 2: the other slot, a rule before the throttles (their kernel numbers
        // move), an agent before ours (the classes move).
        let g2 = compile(
            &throttle_policy(3, true),
            &[
                with_id(0, "a/new", 503),
                with_id(1, "a/one", 501),
                with_id(2, "a/two", 502),
            ],
            2,
            &protect(),
        );
        assert!(g1.errors.is_empty() && g2.errors.is_empty());
        let (ids1, ids2): (Vec<u32>, Vec<u32>) = (
            g1.throttles.iter().map(|(id, _)| *id).collect(),
            g2.throttles.iter().map(|(id, _)| *id).collect(),
        );
        assert!(
            ids1.iter().all(|id| !ids2.contains(id)),
            "kernel rule ids differ: {ids1:?} {ids2:?}"
        );
        for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
            for agent in [501, 502] {
                assert_eq!(
                    kernel_bucket(&g1, agent, ip),
                    kernel_bucket(&g2, agent, ip),
                    "agent {agent}, rule for {ip}"
                );
            }
        }
        // Still one bucket per agent for `mine`, one shared for `ours`, one per agent for
        // `any`; never another rule's.
        let key = |ip, agent| kernel_bucket(&g2, agent, ip).0;
        assert_ne!(key("127.0.0.1", 501), key("127.0.0.1", 502));
        assert_eq!(key("127.0.0.2", 501), key("127.0.0.2", 503));
        assert_eq!(key("127.0.0.2", 501).owner, 0);
        assert_eq!(key("127.0.0.3", 501).rule, 0);
        assert_ne!(key("127.0.0.3", 501), key("127.0.0.3", 502));
        assert_ne!(key("127.0.0.1", 501), key("127.0.0.3", 501));
        assert_eq!(key("127.0.0.1", 501).rule, bucket_id("p/mine"));
    }

    #[test]
    fn a_changed_rate_keeps_the_bucket_with_the_new_capacity() {
        let agents = [agent(0, "a/one", None)];
        let g1 = compile(&throttle_policy(10, false), &agents, 1, &protect());
        let g2 = compile(&throttle_policy(3, false), &agents, 2, &protect());
        let (k1, cap1) = kernel_bucket(&g1, 1000, "127.0.0.1");
        let (k2, cap2) = kernel_bucket(&g2, 1000, "127.0.0.1");
        assert_eq!(k1, k2, "the same bucket: its level carries over");
        assert_eq!(
            (cap1, cap2),
            (10, 3),
            "capped at the new burst when next used"
        );
        let interval = |k: &KernelPolicy| k.throttles[0].1.interval_ns;
        assert_eq!(interval(&g1), 6_000_000_000);
        assert_eq!(interval(&g2), 20_000_000_000);
    }

    #[test]
    fn bucket_ids_are_stable_distinct_and_never_zero() {
        assert_eq!(bucket_id("p/mine"), bucket_id("p/mine"));
        assert_ne!(bucket_id("p/mine"), bucket_id("q/mine"));
        assert_ne!(bucket_id("p/mine"), bucket_id("p/ours"));
        // Pinned: a restarted daemon must compute the ids the pinned buckets carry.
        assert_eq!(bucket_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(bucket_id("a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// (device, inode) as the kernel keys hold it.
    fn ident(p: &Path) -> (u32, u64) {
        let m = std::fs::metadata(p).unwrap();
        (crate::kernel::kernel_dev(m.dev()), m.ino())
    }

    /// Verdict per letter (r, w, c, t) of an identity entry; None where the slot is empty.
    fn verdicts(c: &Class, id: (u32, u64), scope: u32) -> Option<[Option<(u32, u8)>; 4]> {
        c.idents.get(&(id.0, id.1, scope)).map(|v| {
            v.rules.map(|r| {
                (r.enforce.present != 0).then_some((r.enforce.rule_id & 0xffff, r.enforce.verdict))
            })
        })
    }

    #[test]
    fn file_rules_are_resolved_to_the_identity_of_what_they_name() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        for sub in ["secrets/sub", "out", "work"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in [
            "secrets/key",
            "secrets/linked",
            "secrets/pub",
            "ro.txt",
            "work/x",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        // A hard link made before the load: the other name is outside every rule.
        std::fs::hard_link(d.join("secrets/linked"), d.join("out/linked")).unwrap();
        std::os::unix::fs::symlink(d.join("ro.txt"), d.join("ro-link")).unwrap();
        let ds = d.display();
        let set = parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: 'a/*' }}\n\
                 kernel: {{ allow_system_files: true }}\nrules:\n\
                 \x20 - {{ id: secrets, file: {{ prefix: {ds}/secrets }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: pub, file: {{ path: {ds}/secrets/pub, access: [read] }}, verdict: allow, reason: r }}\n\
                 \x20 - {{ id: ro, file: {{ path: {ds}/ro-link, access: [write, truncate] }}, verdict: block, reason: r }}\n\
                 \x20 - {{ id: work, file: {{ prefix: {ds}/work }}, verdict: allow, reason: r }}\n\
                 \x20 - {{ id: gone, file: {{ prefix: {ds}/not-there }}, verdict: block, reason: r }}\n"
            ),
        )])
        .unwrap();
        let none = Protect {
            cgroup_root: d.join("no-cgroup-root"),
            no_write: vec![],
            no_access: vec![],
        };
        let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
        assert!(k.errors.is_empty() && k.notes.is_empty(), "{k:?}");
        let c = &k.classes[0];
        let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
        let all = |rule, v| Some([Some((rule, v)); 4]);
        // The directory itself, and everything below it, whatever it is called later.
        assert_eq!(
            verdicts(c, ident(&d.join("secrets")), SCOPE_SELF),
            all(1, b)
        );
        assert_eq!(
            verdicts(c, ident(&d.join("secrets")), SCOPE_BELOW),
            all(1, b)
        );
        // Below it, the subdirectory needs no entry of its own (the walk reaches `secrets`).
        assert_eq!(verdicts(c, ident(&d.join("secrets/sub")), SCOPE_SELF), None);
        assert_eq!(verdicts(c, ident(&d.join("secrets/key")), SCOPE_SELF), None);
        // A file that already has another name carries the directory's answer itself.
        assert_eq!(
            verdicts(c, ident(&d.join("out/linked")), SCOPE_SELF),
            all(1, b)
        );
        // An exception inside: read is allowed by its own rule, the rest is the directory's.
        assert_eq!(
            verdicts(c, ident(&d.join("secrets/pub")), SCOPE_SELF),
            Some([Some((2, a)), Some((1, b)), Some((1, b)), Some((1, b))])
        );
        // A rule on a symlink names the file behind it; only its letters are present.
        assert_eq!(
            verdicts(c, ident(&d.join("ro.txt")), SCOPE_SELF),
            Some([None, Some((3, b)), None, Some((3, b))])
        );
        // Allow rules are resolved too (the first entry met decides a letter).
        assert_eq!(verdicts(c, ident(&d.join("work")), SCOPE_BELOW), all(4, a));
        // The marker: some identity rule restricts every letter.
        let marker = &c.idents[&(0, 0, SCOPE_SELF)];
        assert!(marker.rules.iter().all(restricts));
        // The directories above restricting rules' objects hold them (renaming one would move
        // a rule's path away): the most severe rule below, per letter. `secrets` holds `pub`.
        let held = |p: &Path| verdicts(c, ident(p), SCOPE_HOLDS).map(|v| v.map(|r| r.map(|r| r.1)));
        assert_eq!(held(&d), Some([Some(b); 4]));
        assert_eq!(held(Path::new("/")), Some([Some(b); 4]));
        assert_eq!(
            verdicts(c, ident(&d.join("secrets")), SCOPE_HOLDS),
            Some([None, Some((1, b)), Some((1, b)), Some((1, b))])
        );
        assert_eq!(verdicts(c, ident(&d.join("work")), SCOPE_HOLDS), None);
        // A path that does not exist has no identity (its path rule still applies); nothing
        // else is in the table: the marker, secrets and work (each itself and below), the
        // linked file, pub, ro.txt, and the directories holding them (secrets, and each
        // directory from the temporary one up to the root).
        let holders = d.ancestors().count();
        // (The kernel settings' built-in protection, /proc/sys and /sys and what is mounted
        // below them, has identities of its own, on other filesystems.)
        let here = ident(&d).0;
        let ours = c.idents.keys().filter(|k| k.0 == here || k.0 == 0).count();
        assert_eq!(ours, 8 + 1 + holders, "{:?}", c.idents.keys());

        // A class whose identity rules all allow needs no walk: no entries at all.
        let set = parse(&[(
            "p.yaml".into(),
            format!(
                "name: p\nagents: {{ cgroup: 'a/*' }}\n\
                 kernel: {{ allow_kernel_settings: true, allow_system_files: true }}\nrules:\n\
                 \x20 - {{ id: work, file: {{ prefix: {ds}/work }}, verdict: allow, reason: r }}\n"
            ),
        )])
        .unwrap();
        // (The kernel settings' and system files' built-ins relaxed: nothing restricts.)
        let k = compile(&set, &[agent(0, "a/one", None)], 1, &none);
        assert!(
            k.classes[0].idents.is_empty(),
            "{:?}",
            k.classes[0].idents.keys()
        );
    }

    #[test]
    fn identities_of_built_in_protections_and_write_only_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let cg = d.join("cgroup");
        std::fs::create_dir_all(cg.join("a/one")).unwrap();
        std::fs::create_dir_all(d.join("policy")).unwrap();
        let protect = Protect {
            cgroup_root: cg.clone(),
            no_write: vec![d.join("policy")],
            no_access: vec![],
        };
        let set = parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'a/*' }\n".into(),
        )])
        .unwrap();
        let mut one = agent(0, "a/one", None);
        one.path = cg.join("a/one");
        let k = compile(&set, &[one], 1, &protect);
        let c = &k.classes[0];
        let (b, a) = (KVerdict::Block as u8, KVerdict::Allow as u8);
        let w = |v| Some([None, Some((0, v)), Some((0, v)), Some((0, v))]);
        assert_eq!(verdicts(c, ident(&cg), SCOPE_BELOW), w(b));
        assert_eq!(verdicts(c, ident(&cg.join("a/one")), SCOPE_BELOW), w(a));
        assert_eq!(verdicts(c, ident(&d.join("policy")), SCOPE_BELOW), w(b));
        // Only writes are restricted: reads skip the walk.
        let marker = c.idents[&(0, 0, SCOPE_SELF)];
        assert_eq!(
            marker.rules.map(|r| restricts(&r)),
            [false, true, true, true]
        );
    }
}
