//! The tables of one class (an agent root or a sandbox profile): path, exec, network and unix
//! rules ranked into the entries the programs look up.

use super::*;

/// What the kernel's path lookup answers for `query` (a path and NUL, or a directory and `/`):
/// the longest node of letter `letter` that `query` starts with.
pub(super) fn answer(c: &Class, letter: u8, query: &[u8]) -> Option<RulePair> {
    // Nodes end in `/` (directories) or NUL (exact paths): only those prefixes can match.
    (1..=query.len())
        .rev()
        .filter(|&n| n == query.len() || query[n - 1] == b'/')
        .find_map(|n| c.paths.get(&(letter, query[..n].to_vec())).copied())
}

/// A name inside directory `dir`, as a path-lookup query.
pub(super) fn below_query(dir: &[u8]) -> Vec<u8> {
    let mut q = dir.to_vec();
    if q.last() != Some(&b'/') {
        q.push(b'/');
    }
    q
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
    for (letter, list) in &rules.paths {
        let index = NodeIndex::new(list);
        // A prefix rule for `/d` covers `/d` itself too: store that as an exact node.
        let nodes: BTreeSet<Node> = index
            .by_node
            .keys()
            .flat_map(|&(path, exact)| {
                let dir = (!exact && path.last() != Some(&b'/')).then(|| Node {
                    path: path.to_vec(),
                    exact: true,
                });
                std::iter::once(Node {
                    path: path.to_vec(),
                    exact,
                })
                .chain(dir)
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
