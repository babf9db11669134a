//! The tables of one class (an agent root or a sandbox profile): path, exec, network and unix
//! rules ranked into the entries the programs look up.

use super::*;

/// What the kernel's path lookup answers for `query` (a path and NUL, or a directory and `/`):
/// the longest node of letter `letter` that `query` starts with.
pub(super) fn answer(c: &Class, letter: u8, query: &[u8]) -> Option<RulePair> {
    // Nodes end in `/` (directories) or NUL (exact paths): only those prefixes can match.
    let mut key = (letter, Vec::with_capacity(query.len()));
    (1..=query.len())
        .rev()
        .filter(|&n| n == query.len() || query[n - 1] == b'/')
        .find_map(|n| {
            key.1.clear();
            key.1.extend_from_slice(&query[..n]);
            c.paths.get(&key).copied()
        })
}

/// What one table holding both a class's own path nodes and its shared built-ins' (`builtin`,
/// see `Builtins`) would answer for `query`: a class is built from its own nodes only, and
/// decided beside the built-ins' table as if they were one ([`beside`]).
pub(super) fn answer_with(
    c: &Class,
    builtin: &Beside,
    letter: u8,
    query: &[u8],
) -> Option<RulePair> {
    beside(answer(c, letter, query), || builtin.answer(letter, query))
}

/// The first directories of a class's own path nodes: a query outside all of them (and no node
/// on `/`) has no answer of the class's own, so [`Tops::answer_with`] asks the built-ins alone
/// without a lookup per directory of the query (most of the paths a class's identities are
/// resolved for are the built-ins', where a class of a few rules has no node).
pub(super) struct Tops {
    root: bool,
    tops: foldhash::HashSet<Vec<u8>>,
}

impl Tops {
    pub(super) fn of(c: &Class) -> Self {
        let mut tops = Tops {
            root: false,
            tops: Default::default(),
        };
        // Only the identity letters' nodes: the only letters the resolution asks.
        for (_, node) in c.paths.keys().filter(|(l, _)| IDENT_LETTERS.contains(l)) {
            match top(node) {
                b"/" => tops.root = true,
                t => {
                    tops.tops.insert(t.to_vec());
                }
            }
        }
        tops
    }

    /// Whether the class's own nodes may answer `query` (else the built-ins alone do).
    pub(super) fn reaches(&self, query: &[u8]) -> bool {
        self.root || self.tops.contains(top(query))
    }

    /// [`answer_with`], for class `c` of these tops.
    pub(super) fn answer_with(
        &self,
        c: &Class,
        builtin: &Beside,
        letter: u8,
        query: &[u8],
    ) -> Option<RulePair> {
        if self.reaches(query) {
            answer_with(c, builtin, letter, query)
        } else {
            builtin.answer(letter, query)
        }
    }
}

/// A node's or query's first directory (`/srv/` of `/srv/a/b`), or all of it when it has none
/// (`/srv` and its NUL): a node that a query starts with (as [`answer`] looks them up) has the
/// query's, but for `/`.
fn top(bytes: &[u8]) -> &[u8] {
    match bytes.iter().skip(1).position(|&b| b == b'/') {
        Some(i) => &bytes[..i + 2],
        None => bytes,
    }
}

/// A shared built-in class as every class is decided beside it: its table, the paths its
/// identity letters' nodes name, sorted, and its answers, kept as they are asked. Each answer is
/// the same for every class that asks it: with a thousand agents, most of a compile was the
/// same built-in answers asked again, a path table lookup per directory of the query each time.
pub(crate) struct Beside {
    pub(super) table: Class,
    /// The paths of the table's [`IDENT_LETTERS`] nodes ([`named`]), sorted, once.
    pub(super) named: Vec<Vec<u8>>,
    /// query → (letter, [`answer`]) as asked.
    answers: std::cell::RefCell<foldhash::HashMap<Vec<u8>, Asked>>,
    /// What each of `named` gives a class that does not reach it (`Identities::plan`).
    pub(super) plan: std::cell::OnceCell<Rc<Vec<Planned>>>,
}

/// The answers asked of a query so far, by letter.
type Asked = Vec<(u8, Option<RulePair>)>;

impl Beside {
    pub(super) fn new(table: Class) -> Self {
        let mut named: Vec<Vec<u8>> = named(&table).map(<[u8]>::to_vec).collect();
        named.sort_unstable();
        named.dedup();
        Self {
            table,
            named,
            answers: Default::default(),
            plan: Default::default(),
        }
    }

    /// [`answer`] of the table, asked once per query and letter.
    pub(super) fn answer(&self, letter: u8, query: &[u8]) -> Option<RulePair> {
        let mut answers = self.answers.borrow_mut();
        if let Some(known) = answers.get(query)
            && let Some((_, a)) = known.iter().find(|(l, _)| *l == letter)
        {
            return *a;
        }
        let a = answer(&self.table, letter, query);
        answers.entry(query.to_vec()).or_default().push((letter, a));
        a
    }
}

/// The paths a class's [`IDENT_LETTERS`] nodes name: a node without its trailing NUL (exact) or
/// `/` (prefix; `/` itself stays).
pub(super) fn named(c: &Class) -> impl Iterator<Item = &[u8]> {
    c.paths
        .keys()
        .filter(|(l, _)| IDENT_LETTERS.contains(l))
        .map(|(_, node)| match node.split_last() {
            Some((0, p)) => p,
            Some((b'/', p)) if !p.is_empty() => p,
            _ => node,
        })
}

/// A node's answer among a class's own rules (`own`) and the shared built-ins' (`builtin`), as
/// [`pushed_down`] would give it in one table holding both. Every rule of a class outranks
/// every shared built-in (a built-in ranks as the refusal of the cgroup tree, [`CGROUP_TREE`];
/// a rule's path, an agent's own subtree and a sandbox profile's directories rank above it),
/// and the refusals of the cgroup tree, which rank alike, are the same rule in both. So the
/// built-ins decide only where no enforcing rule of the class covers the node: then their
/// refusal enforces, and the class's shadow rule, which outranks it, stays beside it.
pub(super) fn beside(
    own: Option<RulePair>,
    builtin: impl FnOnce() -> Option<RulePair>,
) -> Option<RulePair> {
    match own {
        Some(o) if o.enforce.present != 0 => Some(o),
        Some(o) => Some(builtin().map_or(o, |b| RulePair {
            enforce: b.enforce,
            shadow: o.shadow,
        })),
        None => builtin(),
    }
}

/// Class `c`'s path entries as one table with its shared built-ins' nodes would hold them
/// ([`beside`]): only an entry with no enforcing rule of its own can change.
pub(super) fn beside_builtins(c: &mut Class, builtin: &Beside) {
    for ((letter, node), pair) in c.paths.iter_mut() {
        if pair.enforce.present == 0
            && let Some(b) = builtin.answer(*letter, node)
        {
            pair.enforce = b.enforce;
        }
    }
}

/// Zero the bits of `addr` past `bits`.
pub(super) fn masked(addr: [u8; 16], bits: u32) -> [u8; 16] {
    let v = u128::from_be_bytes(addr);
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits.min(128))
    };
    (v & mask).to_be_bytes()
}

/// Every node of one letter's path rules, with the answer the kernel's longest match must find
/// there: the best ([`pair_of`]) of the rules at the node and at every prefix node that covers
/// it, taken in the nodes' order (shortest first, then the exact node), which decides between
/// rules that rank alike. A prefix rule for `/d` covers `/d` itself too, so it gets an exact
/// node as well.
///
/// One sweep instead of a lookup per directory level of every node: in the order where `/`
/// sorts below every other byte, the nodes a prefix covers come right after it and before
/// anything else, so while the nodes are visited in that order the prefixes covering the one
/// visited are exactly a stack of those not yet left behind, shortest at the bottom, each
/// holding the best of itself and those below it.
pub(super) fn pushed_down(list: &[(Node, Ranked)]) -> Vec<(&[u8], bool, Option<RulePair>)> {
    /// A rule at its node, or (no rule) the exact node a prefix also stores.
    struct Visit<'a> {
        /// The node's path in the sweep's order: in `keys`, `/` mapped to 0 (a path has no NUL).
        key: std::ops::Range<usize>,
        exact: bool,
        path: &'a [u8],
        rule: Option<&'a Ranked>,
    }
    let mut keys: Vec<u8> = Vec::with_capacity(list.iter().map(|(n, _)| n.path.len()).sum());
    let mut order: Vec<Visit> = Vec::with_capacity(list.len() * 2);
    for (node, rule) in list {
        let start = keys.len();
        keys.extend(node.path.iter().map(|&b| if b == b'/' { 0 } else { b }));
        let key = start..keys.len();
        let path = &node.path[..];
        if !node.exact && path.last() != Some(&b'/') {
            order.push(Visit {
                key: key.clone(),
                exact: true,
                path,
                rule: None,
            });
        }
        order.push(Visit {
            key,
            exact: node.exact,
            path,
            rule: Some(rule),
        });
    }
    // Stable: a node's rules stay in the list's order.
    order.sort_by(|a, b| (&keys[a.key.clone()], a.exact).cmp(&(&keys[b.key.clone()], b.exact)));
    let mut out = Vec::new();
    let mut open: Vec<(&[u8], Best)> = Vec::new();
    let mut visits = order.iter().peekable();
    while let Some(first) = visits.peek() {
        let (exact, path) = (first.exact, first.path);
        while open
            .last()
            .is_some_and(|(dir, _)| !prefix_covers(dir, path))
        {
            open.pop();
        }
        let mut best = open.last().map(|(_, b)| *b).unwrap_or_default();
        while let Some(v) = visits.next_if(|v| v.exact == exact && v.path == path) {
            if let Some(r) = v.rule {
                best.add(r);
            }
        }
        if !exact {
            open.push((path, best));
        }
        out.push((path, exact, best.pair()));
    }
    out
}

/// Does a prefix rule at `dir` cover `path`: the directory itself, or a name below it?
pub(super) fn prefix_covers(dir: &[u8], path: &[u8]) -> bool {
    path.starts_with(dir)
        && (path.len() == dir.len()
            || (!dir.is_empty()
                && (dir.last() == Some(&b'/') || path.get(dir.len()) == Some(&b'/'))))
}

/// One letter's path table ([`pushed_down`]): its entries sorted by key, one per key; the
/// nodes too long for the kernel, as errors; for exec, the exact exec rules' answers.
struct LetterTable {
    entries: Vec<((u8, Vec<u8>), RulePair)>,
    errors: Vec<String>,
    exec: Vec<(PathBuf, (RulePair, ExecIdentity))>,
}

fn letter_table(
    letter: u8,
    list: &[(Node, Ranked)],
    exec_exact: &[(PathBuf, Node, ExecIdentity)],
    agent: &str,
) -> LetterTable {
    let answers = pushed_down(list);
    let mut entries = Vec::with_capacity(answers.len());
    let mut long: Vec<(&[u8], bool)> = Vec::new();
    for &(path, exact, pair) in &answers {
        let bytes = Node::bytes_of(path, exact);
        if bytes.len() > PATH_MAX {
            long.push((path, exact));
            continue;
        }
        if let Some(pair) = pair {
            entries.push(((letter, bytes), pair));
        }
    }
    long.sort();
    let errors = long
        .into_iter()
        .map(|(path, _)| {
            format!(
                "agent {agent}: path {} is longer than the kernel can match ({} bytes)",
                String::from_utf8_lossy(path),
                PATH_MAX - 2
            )
        })
        .collect();
    let mut exec = Vec::new();
    if letter == access::EXEC {
        let exact: foldhash::HashMap<&[u8], RulePair> = answers
            .iter()
            .filter(|(_, exact, _)| *exact)
            .filter_map(|&(path, _, pair)| Some((path, pair?)))
            .collect();
        for (path, node, id) in exec_exact {
            if let Some(pair) = exact.get(&node.path[..]) {
                exec.push((path.clone(), (*pair, *id)));
            }
        }
    }
    // Two prefix nodes, `/d` and `/d/`, store one entry: the later's (it covers `/d` too, so it
    // holds the better of the two). A stable sort keeps the sweep's order among equal keys.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut deduped: Vec<((u8, Vec<u8>), RulePair)> = Vec::with_capacity(entries.len());
    for entry in entries {
        match deduped.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => deduped.push(entry),
        }
    }
    LetterTable {
        entries: deduped,
        errors,
        exec,
    }
}

pub(super) fn build_class(
    class: u32,
    rules: &Rules,
    errors: &mut Vec<String>,
    agent: &str,
) -> Class {
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
    let tables = rules
        .paths
        .iter()
        .map(|(&letter, list)| letter_table(letter, list, &rules.exec_exact, agent));
    // In letter order: the keys start with the letter, so the tables' entries, each sorted, are
    // sorted together.
    let mut paths = Vec::new();
    for t in tables {
        paths.extend(t.entries);
        errors.extend(t.errors);
        c.exec.extend(t.exec);
    }
    c.paths = paths.into_iter().collect();
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
