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
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use governance_common::{
    AgentValue, FILL_BUILTIN, FILL_DEFAULT, IDENT_LETTERS, IdentValue, MAX_THROTTLES, NET_SLOTS,
    NO_RULE, NetEntry, PATH_MAX, RulePair, RuleRef, SCOPE_BELOW, SCOPE_DEVICE, SCOPE_FILL,
    SCOPE_HOLDS, SCOPE_NAME, SCOPE_SELF, Throttle, Verdict as KVerdict, access, allow, class_id,
    name_hash, proto,
};

use crate::{
    agents::AgentCgroup,
    policy::{
        Access, Kind, Matcher, Mode, PathMatch, Policy, PolicySet, Posture, Protocol, Rule,
        SandboxNetwork, ThrottleKey, UnixTarget, Verdict,
    },
};

mod builtins;
mod class;
mod identities;
mod selectors;
mod sequence;

pub(crate) use self::builtins::homes;
pub use self::builtins::*;
pub(crate) use self::identities::severer;
pub use self::identities::{ReadAhead, unlisted_mounts};
pub(crate) use self::selectors::Selectors;
use self::{class::*, identities::*};

/// What an exact exec rule's path names when the generation is compiled: (kernel device,
/// inode), if it exists.
pub type ExecIdentity = Option<(u32, u64)>;

/// One class: the tables of one agent root (or of one sandbox profile of it).
#[derive(Debug, Default)]
pub struct Class {
    /// Kernel class id (slot bit included).
    pub id: u32,
    pub value: AgentValue,
    /// Exact exec rules, with the (device, inode) their path names now, as the compile found it
    /// (None: not found; the install looks again, and says why it skips the rule).
    pub exec: BTreeMap<PathBuf, (RulePair, ExecIdentity)>,
    /// (access letter, node bytes) → rules. Node bytes end in `/` (prefix) or NUL (exact).
    pub paths: BTreeMap<(u8, Vec<u8>), RulePair>,
    /// (prefix length over 128 bits, IPv6 address) → alternatives, best first.
    pub net: BTreeMap<(u32, [u8; 16]), Vec<NetEntry>>,
    /// Unix sockets → rules: the loader turns a path into the socket file's identity.
    pub unix: BTreeMap<UnixTarget, RulePair>,
    /// File rules by identity: (kernel device, inode, scope, name hash) → rules per access
    /// letter ([`IDENT_LETTERS`]); (device, 0, [`SCOPE_DEVICE`], 0) is a device's marker, whose
    /// slots say which letters a walk on that device is for (see governance_common::IdentKey).
    pub idents: BTreeMap<IdentAt, IdentValue>,
}

/// An identity entry's key in a class: (kernel device, inode, scope, name hash), as
/// governance_common::IdentKey holds them (the name hash 0 but for `SCOPE_NAME`).
pub type IdentAt = (u32, u64, u32, u32);

/// What goes into the maps for one generation.
#[derive(Debug, Default)]
pub struct KernelPolicy {
    pub generation: u32,
    /// Agent roots: (cgroup id, index into `classes`).
    pub agents: Vec<(u64, usize)>,
    /// Sandbox profile classes: (agent root cgroup id, [`profile_key`], index into
    /// `classes`).
    pub profiles: Vec<(u64, u32, usize)>,
    pub classes: Vec<Class>,
    /// The shared built-ins, one class per combination of relaxations in use (see
    /// [`governance_common::builtin_class`]): path rules and identity entries only.
    pub builtins: Vec<Class>,
    /// Throttle rules: (kernel rule id, rate and bucket id). See [`bucket_id`].
    pub throttles: Vec<(u32, Throttle)>,
    /// Policy the kernel programs cannot enforce, one line each.
    pub unenforceable: Vec<String>,
    /// Tables that do not fit (too many port alternatives at one prefix): refuse the generation.
    pub errors: Vec<String>,
    /// What the identity resolution could not cover, for the operator (the generation loads).
    pub notes: Vec<String>,
    /// Sequence rules: (class id, its list), for agent and sandbox-profile classes that have
    /// any. Their sequence classes are in `classes` (path and destination rules only).
    pub sequences: Vec<(u32, governance_common::sequence::SeqList)>,
}

impl KernelPolicy {
    /// The devices its identities are on (kernel encoding): the device markers' and the
    /// files' of exact exec rules ([`crate::kernel::remounted`]).
    pub fn identity_devices(&self) -> std::collections::HashSet<u32> {
        self.classes
            .iter()
            .chain(&self.builtins)
            .flat_map(|c| {
                let markers = c.idents.keys().filter(|k| k.2 == SCOPE_DEVICE).map(|k| k.0);
                let execs = c
                    .exec
                    .values()
                    .filter_map(|(_, id)| id.map(|(dev, _)| crate::kernel::superblock_of(dev)));
                markers.chain(execs)
            })
            .collect()
    }
}

/// Rank of the built-in refusal of writes to the cgroup tree: below an agent's own subtree.
const CGROUP_TREE: [u32; 4] = [1, 0, u32::MAX - 1, 0];
/// Rank of an agent's own cgroup subtree (writable) and of its root's interface files (not):
/// above the refusal of the rest of the cgroup tree.
const OWN_SUBTREE: [u32; 4] = [1, 0, u32::MAX, 0];

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

    /// This rule as ranked at `path`, one of its path's spellings: the kernel names files by
    /// where symlinks lead, so an entry where the rule's path leads ranks by that path, as a
    /// rule written there would (red team round 27: `block prefix: /s/`, a link to
    /// `/srv/app/data/secrets`, ranked by `/s/` lost there to `allow prefix: /srv/app/data/`).
    fn at(self, path: &[u8], exact: bool) -> Ranked {
        let mut ranked = self;
        ranked.specificity[1] = crate::policy::path_rank(path, exact);
        ranked
    }
}

/// Above the sandbox profiles' refusal of writes and their writable directories: the agent's own
/// rules inside those directories ([`agent_rules_within`]), in the agent's order.
const WITHIN_WRITABLE: u32 = u32::MAX / 2;

/// A sandbox profile's writable directories restrict its agent's writes, never grant them (red
/// team round 31: a profile writable at `/srv/work` let a sandboxed process write the
/// `/srv/work/.git/hooks` its agent may not). Inside each writable directory `w` the agent's
/// own entries of `list` (its rules and its class's built-ins: the cgroup tree outside its
/// subtree) decide as they do for the agent: those below `w` where they are, the prefixes
/// above `w` moved to `w`, and the agent's refusing default (if any) at `w` under them, all
/// ranked above the profile's refusal of `/` and its allow of `w`.
fn agent_rules_within(
    list: &[(Node, Ranked)],
    writable: &[String],
    refusing_default: Option<Ranked>,
) -> Vec<(Node, Ranked)> {
    // `p` is `dir` or a name below it.
    fn below(p: &[u8], dir: &[u8]) -> bool {
        let dir = dir.strip_suffix(b"/").unwrap_or(dir);
        p.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    }
    let lifted = |r: &Ranked| {
        let [a, b, c, _] = r.specificity;
        Ranked {
            specificity: [3, WITHIN_WRITABLE.saturating_add(a), b, c],
            ..*r
        }
    };
    let mut out = Vec::new();
    for w in writable.iter().map(|w| w.as_bytes()) {
        let at_w = Node {
            path: w.to_vec(),
            exact: false,
        };
        for (node, r) in list {
            if below(&node.path, w) {
                out.push((node.clone(), lifted(r)));
            } else if !node.exact && below(w, &node.path) {
                out.push((at_w.clone(), lifted(r)));
            }
        }
        if let Some(d) = refusing_default {
            let d = Ranked {
                specificity: [3, WITHIN_WRITABLE, 0, 0],
                ..d
            };
            out.push((at_w, d));
        }
    }
    out
}

/// The best enforcing rule and, if it ranks above that one, the best shadow rule.
fn pair_of<'a>(covering: impl Iterator<Item = &'a Ranked>) -> Option<RulePair> {
    let mut best = Best::default();
    covering.for_each(|r| best.add(r));
    best.pair()
}

/// [`pair_of`] as a fold: the rules seen so far, the first of equal rank kept.
#[derive(Clone, Copy, Default)]
struct Best<'a> {
    enforce: Option<&'a Ranked>,
    shadow: Option<&'a Ranked>,
}

impl<'a> Best<'a> {
    fn add(&mut self, r: &'a Ranked) {
        let slot = if r.shadow {
            &mut self.shadow
        } else {
            &mut self.enforce
        };
        if slot.is_none_or(|s| r.key() > s.key()) {
            *slot = Some(r);
        }
    }

    fn pair(self) -> Option<RulePair> {
        let Best { enforce, shadow } = self;
        let shadow = shadow.filter(|s| enforce.is_none_or(|e| s.key() > e.key()));
        (enforce.is_some() || shadow.is_some()).then(|| RulePair {
            enforce: enforce.map(|r| r.rule).unwrap_or_default(),
            shadow: shadow.map(|r| r.rule).unwrap_or_default(),
        })
    }
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
    /// The node as the kernel's trie holds it: the path and NUL (exact) or `/` (a prefix). The
    /// same bytes are the lookup's query for the object at `path` itself (exact) or for a name
    /// inside directory `path`.
    fn bytes_of(path: &[u8], exact: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(path.len() + 1);
        b.extend_from_slice(path);
        if exact {
            b.push(0);
        } else if b.last() != Some(&b'/') {
            b.push(b'/');
        }
        b
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    p.as_os_str().as_bytes().to_vec()
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

/// A destination rule: (prefix128, masked address, rank, port lo, port hi, protocol, via proxy).
type NetRule = (u32, [u8; 16], Ranked, u16, u16, u8, bool);

/// Everything a class is built from, before push-down.
#[derive(Default, Clone)]
struct Rules {
    /// (letter, node) → rules stored there.
    paths: BTreeMap<u8, Vec<(Node, Ranked)>>,
    /// Exact exec rules: the path as written, a node it is stored under, and what it names now
    /// (kernel device, inode), if it exists.
    exec_exact: Vec<(PathBuf, Node, ExecIdentity)>,
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

/// The number a sandbox mark holds for profile `profile` of policy `policy`: a hash of its
/// `<policy>/<profile>` name (never 0, which means the agent's own class). The kernel looks a
/// marked process's class up under its own agent root and this number, so a mark means the
/// same profile of the same agent in every generation and every build, whatever other agents
/// and profiles come and go (a class number is an index, which they shift).
pub fn profile_key(policy: &str, profile: &str) -> u16 {
    let h = bucket_id(&format!("{policy}/{profile}"));
    let folded = (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16;
    folded.max(1)
}

pub fn compile(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
    protect: &Protect,
) -> KernelPolicy {
    compile_from(set, agents, generation, protect, 0)
}

/// [`compile`] for what `ahead` protects, with the built-in protected directories listed
/// ahead ([`ReadAhead`]).
pub fn compile_ahead(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
    mut ahead: ReadAhead,
) -> KernelPolicy {
    let mut identities = Identities::new(&ahead.protect);
    identities.listing = ahead.thread.take();
    compile_with(set, agents, generation, &ahead.protect, 0, identities)
}

/// [`compile`], numbering the classes after `first_class` (a drill's canary is added beside
/// the generation's own classes, which are numbered from 1: see [`crate::drill`]).
pub fn compile_from(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
    protect: &Protect,
    first_class: u32,
) -> KernelPolicy {
    let identities = Identities::new(protect);
    compile_with(set, agents, generation, protect, first_class, identities)
}

fn compile_with(
    set: &PolicySet,
    agents: &[AgentCgroup],
    generation: u32,
    protect: &Protect,
    first_class: u32,
    mut identities: Identities,
) -> KernelPolicy {
    let mut out = KernelPolicy {
        generation,
        ..Default::default()
    };
    // Rule number n (1-based, in set order) for each rule, and the sandbox profiles in use.
    let numbered: Vec<(&Policy, &Rule, u32)> = set.numbered().collect();
    let mut unenforceable = BTreeSet::new();
    let mut next_class = first_class;
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
    // The same for every agent: resolved once.
    let cgroup_root = identities.spellings(&protect.cgroup_root);
    let mut builtins = Builtins {
        protect,
        cgroup_root: &cgroup_root,
        generation,
        shared: BTreeMap::new(),
        classes: BTreeMap::new(),
    };
    let mut seq_classes = Vec::new();
    let selectors = Selectors::new(set);
    for agent in agents {
        let class = new_class();
        let mut rules = Rules::default();
        let mut profiles: Vec<(String, &Policy, u32, u16)> = Vec::new();
        let mut sequences = Vec::new();
        // The policies that select this agent, each matched once (see `selectors`).
        let matching = selectors.matching(set, agent);
        let selected: Vec<(&Policy, &Rule, u32)> = selectors.rules(set, &matching).collect();
        let governing = Selectors::enforcing(set, &matching);
        // An enforcing policy whose cgroups all lie inside an agent: the outermost root is the
        // agent (a descendant never leaves its agent's policy), so that policy does not apply
        // there (red team round 27: a shadow rollout on a parent silently ended the child's
        // enforcement; round 34: so did an enforcing baseline on a parent, the child's
        // stricter policy dropped). Not enforced: said at every load, and the generation is
        // refused unless degraded enforcement is accepted. (A glob or label selector that also
        // matches elsewhere applies there; one inside an agent is not found by the walk,
        // which stops at agent roots.)
        for p in set
            .policies
            .iter()
            .filter(|p| p.mode == crate::policy::Mode::Enforce)
        {
            if !p.selector.only_below(&agent.rel) {
                continue;
            }
            let cgroup = p.selector.cgroup.as_deref().unwrap_or_default();
            unenforceable.insert(if governing.is_empty() {
                format!(
                    "policy {} selects cgroup {cgroup}, inside agent {} that only shadow \
                     policies govern: the outermost agent root governs, so it does not apply; \
                     select apart cgroups for the shadow policy",
                    p.name, agent.rel
                )
            } else {
                format!(
                    "policy {} selects cgroup {cgroup}, inside agent {}: the outermost agent \
                     root governs, with its own policies, so it does not apply there; put its \
                     rules in the policies of {} or select apart cgroups",
                    p.name, agent.rel, agent.rel
                )
            });
        }
        for (p, rule, n) in &selected {
            let why = |what: &str| format!("rule {} ({}): {what}", rule.id, rule.at);
            let mut aux = 0u16;
            match rule.verdict {
                Verdict::Sandbox => match &rule.sandbox {
                    Some(crate::policy::SandboxTarget::Profile(name)) => {
                        aux = match profiles
                            .iter()
                            .find(|(pn, pp, _, _)| pn == name && std::ptr::eq(*pp, *p))
                        {
                            Some((_, _, _, key)) => *key,
                            None => {
                                let key = profile_key(&p.name, name);
                                if let Some((other, op, _, _)) =
                                    profiles.iter().find(|(_, _, _, k)| *k == key)
                                {
                                    out.errors.push(format!(
                                        "sandbox profiles {}/{other} and {}/{name} would share one mark in agent {} (their names hash alike); rename one",
                                        op.name, p.name, agent.name
                                    ));
                                }
                                profiles.push((name.clone(), p, new_class(), key));
                                key
                            }
                        };
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
                    let spellings = identities.spellings(path);
                    // What the path names now (just resolved for its spellings).
                    let id = exact
                        .then(|| identities.find(&spellings[0]))
                        .flatten()
                        .map(|(_, (dev, ino, _))| (dev, ino));
                    for spelled in spellings {
                        let ranked = ranked.at(&spelled, exact);
                        let node = Node {
                            path: spelled,
                            exact,
                        };
                        if exact {
                            rules.exec_exact.push((path.clone(), node.clone(), id));
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
                    // Resolved once for every letter.
                    let spelled = identities.spellings(path);
                    for letter in letters(access) {
                        if letter == access::EXEC {
                            unenforceable.insert(why(
                                "file access `exec` is decided by exec rules; write an exec rule",
                            ));
                            continue;
                        }
                        for path in &spelled {
                            let node = Node {
                                path: path.clone(),
                                exact,
                            };
                            let ranked = ranked.at(path, exact);
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
                            .flat_map(|n| n.ipv6_networks())
                            .map(|(bits, addr)| (bits, masked(addr.octets(), bits)))
                            .collect()
                    };
                    let ranges = if ports.is_empty() {
                        vec![(0, u16::MAX)]
                    } else {
                        ports.clone()
                    };
                    // Each entry ranks by its own prefix and range, not by the rule's broadest
                    // (as the engine does: `Matcher::specificity_at`).
                    for (bits, addr) in targets {
                        for &(lo, hi) in &ranges {
                            let ranked = Ranked {
                                specificity: crate::policy::network_specificity(bits, (lo, hi)),
                                ..ranked
                            };
                            rules
                                .net
                                .push((bits, addr, ranked, lo, hi, proto, *via_proxy));
                        }
                    }
                }
                Matcher::Unix(target) => rules.unix.push((target.clone(), ranked)),
                Matcher::Sequence(seq) => sequences.push((*rule, ranked.rule.rule_id, &**seq)),
                Matcher::Http(_) => {}
            }
        }
        // Defaults: block if any enforcing policy of the agent says so; shadow policies'
        // block defaults are reported.
        for p in matching.iter().map(|&i| &set.policies[i]) {
            for (kind, posture_) in &p.defaults {
                let i = match kind {
                    Kind::Exec => 0,
                    Kind::File => 1,
                    Kind::Network => 2,
                    Kind::Unix => 3,
                    Kind::Http | Kind::Sequence => continue,
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
        let reports = super::report::default_aux_of(&governing);
        let relaxations = relaxations(&governing);
        // The shared built-ins' nodes are not the class's: it is decided beside their table
        // (`class::beside`), and their own entries are stored once, in the built-in class.
        let shared = builtins.shared(relaxations, &mut identities, &mut out.errors);
        for letter in WRITE_LETTERS {
            let list = rules.paths.entry(letter).or_default();
            for dir in cgroup_root.iter().cloned() {
                let mut r = builtin(KVerdict::Block);
                r.specificity = CGROUP_TREE;
                list.push((
                    Node {
                        path: dir,
                        exact: false,
                    },
                    r,
                ));
            }
            let mut own = builtin(KVerdict::Allow);
            own.specificity = OWN_SUBTREE;
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
            for (file, found) in root_interface_files(&agent.path) {
                identities.found_in(&agent.path, &file, found);
                let mut r = builtin(KVerdict::Block);
                r.specificity = OWN_SUBTREE;
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
        identities.resolve(&mut c, &shared.table);
        beside_builtins(&mut c, &shared.table);
        drop_shared(&mut c, &shared.keys);
        // Every agent reaches the policy proxy (which decides each of its requests).
        c.value.allow |= relaxations | allow::PROXY;
        // Relaxed built-ins: set true by an enforcing policy of the agent, false by none. (A
        // sandbox profile's class keeps every protection.)
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
        if relaxed(|p| p.allow_name_service_sockets) {
            c.value.allow |= governance_common::allow::NAME_SERVICE_SOCKETS;
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
        builtins.share(&mut c, &mut identities, &mut out.errors);
        let seq_list = sequence::classes(
            &sequences,
            &mut identities,
            &mut new_class,
            &mut seq_classes,
            &mut out.errors,
            &agent.name,
        );
        if let Some(list) = seq_list {
            out.sequences.push((class, list));
        }
        out.agents.push((agent.cgroup_id, out.classes.len()));
        out.classes.push(c);
        for (name, p, pc, key) in profiles {
            let profile = &p.sandbox_profiles[&name];
            let mut constrained = rules.clone();
            let through_proxy = profile.network == Some(SandboxNetwork::Proxy);
            constrained_network(&mut constrained, through_proxy, builtin(KVerdict::Allow));
            // Nor named Unix sockets: a local service is outside the sandbox just as the
            // network is (unnamed socketpairs stay usable).
            constrained.unix.clear();
            constrained.defaults[3] = (Some(KVerdict::Block), None);
            // Writes only below the writable directories, and there as the agent's own rules
            // and default say.
            let refusing_default = rules.defaults[1]
                .0
                .filter(|v| *v != KVerdict::Allow)
                .map(builtin);
            for letter in WRITE_LETTERS {
                let own = rules.paths.get(&letter).map_or(&[][..], |l| &l[..]);
                let within = agent_rules_within(own, &profile.writable, refusing_default);
                let list = constrained.paths.entry(letter).or_default();
                list.extend(within);
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
            // The proxy itself only under `network: proxy` (none: not even the proxy, through
            // which the process would reach what the proxy does; red team round 5, F1).
            if through_proxy {
                c.value.allow |= allow::PROXY;
            }
            super::report::set_defaults(&mut c.value, reports);
            identities.resolve(&mut c, &shared.table);
            beside_builtins(&mut c, &shared.table);
            drop_shared(&mut c, &shared.keys);
            builtins.share(&mut c, &mut identities, &mut out.errors);
            if let Some(list) = seq_list {
                out.sequences.push((pc, list));
            }
            out.profiles
                .push((agent.cgroup_id, u32::from(key), out.classes.len()));
            out.classes.push(c);
        }
    }
    // Every class has its built-in class (made by `Builtins::share`).
    out.builtins = builtins.classes.into_values().collect();
    // After the built-in classes: a sequence class relaxes nothing and holds no built-ins.
    out.classes.extend(seq_classes);
    out.unenforceable = unenforceable.into_iter().collect();
    out.notes = std::mem::take(&mut identities.notes).into_iter().collect();
    let count =
        |f: fn(&Class) -> usize| -> usize { out.classes.iter().chain(&out.builtins).map(f).sum() };
    let sizes = [
        (
            count(|c| c.paths.len()),
            "path rule",
            governance_common::MAX_PATH_RULES,
        ),
        (
            count(|c| c.idents.len()),
            "identity",
            governance_common::MAX_IDENT_RULES,
        ),
    ];
    for (entries, what, max) in sizes {
        if entries > (max / 2) as usize {
            out.errors.push(format!(
                "{entries} {what} entries; the kernel table holds {} per generation",
                max / 2
            ));
        }
    }
    out
}

/// The network of a sandbox profile's class, from its agent's rules (`rules`, changed in place).
///
/// `network: none` (`through_proxy` false): no destination at all, whatever the agent's rules
/// say (its rules go, its default blocks).
///
/// `network: proxy`: the agent's own rules, each of them, with every rule that may let a connect
/// go on (`allow`, `throttle`, `sandbox`, a granted `escalate`) made `via_proxy`, so that what
/// goes on goes to the proxy; `block` and the refusals of `escalate` and `throttle` stay
/// (IPv4 and IPv6 alike, shadow rules as they were). What the agent's default allows goes to
/// the proxy too (`allow_all`, TCP, below every rule); what it blocks stays blocked. UDP has
/// no proxy: a `via_proxy` datagram is refused (`no_proxy`), and one no rule covers meets the
/// default, which blocks. So a sandboxed process never reaches what its agent may not, and
/// reaches the rest only through the proxy (red team round 5, F5: the profile used to be one
/// catch-all rule to the proxy, which dropped the agent's blocks, and the proxy applies only
/// HTTP rules to what the kernel sends it).
fn constrained_network(rules: &mut Rules, through_proxy: bool, mut allow_all: Ranked) {
    let agent_default = rules.defaults[2];
    if !through_proxy {
        rules.net.clear();
        rules.defaults[2] = (Some(KVerdict::Block), None);
        return;
    }
    for rule in &mut rules.net {
        // (A block refuses before any redirect.)
        if rule.2.rule.verdict != KVerdict::Block as u8 {
            rule.6 = true;
        }
    }
    rules.defaults[2] = (Some(KVerdict::Block), agent_default.1);
    if agent_default.0.unwrap_or(KVerdict::Allow) != KVerdict::Block {
        allow_all.specificity = [0; 4];
        rules
            .net
            .push((0, [0; 16], allow_all, 0, u16::MAX, proto::TCP, true));
    }
}

/// The built-in path rules of one combination of relaxations, shared by the classes with those
/// relaxations (see [`governance_common::builtin_class`]).
struct Shared {
    nodes: Vec<(u8, Node, Ranked)>,
    /// Their keys in a class's table ([`shared_keys`]).
    keys: builtins::SharedKeys,
    /// With the refusal of the cgroup tree every class has (each allows its own subtree).
    every_class: Rules,
    /// `every_class`'s path table: what each class is decided beside ([`class::beside`]).
    table: Beside,
}

/// A generation's shared built-ins, per combination of relaxations in use: their rules, and
/// their class (path rules and identity entries), each made on first use.
struct Builtins<'a> {
    protect: &'a Protect,
    /// Every spelling of the cgroup2 root.
    cgroup_root: &'a [Vec<u8>],
    generation: u32,
    shared: BTreeMap<u32, Rc<Shared>>,
    classes: BTreeMap<u32, Class>,
}

impl Builtins<'_> {
    /// The shared built-in rules of the relaxations `relaxed`.
    fn shared(
        &mut self,
        relaxed: u32,
        identities: &mut Identities,
        errors: &mut Vec<String>,
    ) -> Rc<Shared> {
        let (protect, cgroup_root) = (self.protect, self.cgroup_root);
        let id = governance_common::builtin_class(class_id(self.generation, 0), relaxed);
        Rc::clone(self.shared.entry(relaxed).or_insert_with(|| {
            let nodes = shared_denied(protect, relaxed, identities);
            let keys = shared_keys(&nodes);
            let mut every_class = Rules::default();
            for (letter, node, r) in nodes.iter().cloned() {
                every_class.paths.entry(letter).or_default().push((node, r));
            }
            for letter in WRITE_LETTERS {
                for dir in cgroup_root.iter().cloned() {
                    every_class.paths.entry(letter).or_default().push((
                        Node {
                            path: dir,
                            exact: false,
                        },
                        Ranked {
                            specificity: CGROUP_TREE,
                            rule: rule_ref(NO_RULE, KVerdict::Block, 0),
                            shadow: false,
                        },
                    ));
                }
            }
            let table = Beside::new(build_class(id, &every_class, errors, "(built-in)"));
            Rc::new(Shared {
                nodes,
                keys,
                every_class,
                table,
            })
        }))
    }

    /// Keep in class `c` only the identity entries in which it differs from the shared
    /// built-in class of its relaxations (see governance_common::IdentKey, shared entries).
    fn share(&mut self, c: &mut Class, identities: &mut Identities, errors: &mut Vec<String>) {
        let relaxed = c.value.allow & builtins::SHARED_RELAXATIONS;
        if !self.classes.contains_key(&relaxed) {
            let class = self.class(relaxed, identities, errors);
            self.classes.insert(relaxed, class);
        }
        identities::share(c, &self.classes[&relaxed].idents);
    }

    /// The shared built-in class of the relaxations `relaxed`.
    fn class(
        &mut self,
        relaxed: u32,
        identities: &mut Identities,
        errors: &mut Vec<String>,
    ) -> Class {
        let shared = self.shared(relaxed, identities, errors);
        let mut rules = Rules::default();
        for (letter, node, r) in shared.nodes.iter().cloned() {
            rules.paths.entry(letter).or_default().push((node, r));
        }
        // The path rules are looked up beside each class's, the most severe answer winning:
        // the cgroup tree is the classes' own (each agent's subtree is writable), a hole in
        // the kernel settings' `/sys` here, so this class says nothing there.
        if relaxed & allow::KERNEL_SETTINGS == 0 {
            for letter in WRITE_LETTERS {
                for dir in self.cgroup_root.iter().cloned() {
                    rules.paths.entry(letter).or_default().push((
                        Node {
                            path: dir,
                            exact: false,
                        },
                        Ranked {
                            specificity: OWN_SUBTREE,
                            rule: RuleRef::default(),
                            shadow: false,
                        },
                    ));
                }
            }
        }
        let id = governance_common::builtin_class(class_id(self.generation, 0), relaxed);
        let mut class = build_class(id, &rules, errors, "(built-in)");
        // The identity entries are looked up in this class only where an agent's class has
        // none of its own (see `identities::share`), so they are those every class has.
        let mut idents = build_class(id, &shared.every_class, errors, "(built-in)");
        identities.resolve(&mut idents, &Beside::new(Class::default()));
        class.idents = idents.idents;
        class
    }
}

#[cfg(test)]
mod tests;
