//! The rules of a large document, kept between reads by their line and text: a document of
//! 10,000 rules edited in one takes 36-80 ms only to scan, with any of three YAML parsers (the
//! target for a change to be enforcing is 20 ms, `cargo xtask bench reload`). When its `rules:`
//! is a block sequence whose items can be told apart by their lines alone ([`split`]), a
//! re-read parses the rest of the document and the items that changed, each on its own at its
//! own line, and takes the others from the previous read as they were validated ([`reread`]):
//! validating a rule depends on its text and place and on its policy's name, mode and sandbox
//! profiles ([`RuleContext`]), and the kept rules are used only while those are the same.
//!
//! What makes an item's meaning its own: a block sequence's entries are delimited by
//! indentation; the YAML this module reads refuses anchors, aliases and tags (an error, so
//! nothing in one item can refer to another); and a scalar or flow collection left open in an
//! item does not parse on its own. Whatever [`split`] cannot be sure of, and anything that
//! does not read back cleanly, is read the usual way, as a whole document:
//! `policy::tests::a_reread_of_changed_items_reads_as_the_whole_document` holds the two ways
//! to the same policy and problems over generated documents and edits, hostile ones included.

use std::collections::{HashMap, HashSet};

use super::*;

/// Documents with fewer rules are read whole every time (and keep nothing).
pub(super) const MIN_ITEMS: usize = 64;

/// More changed rules than this (each parsed on its own, after as many empty lines as it is
/// down the document): the whole document is read instead.
const MAX_CHANGED: usize = 32;

/// Re-reads that took the kept rules (for the tests: that the way is taken at all).
#[cfg(test)]
pub(super) static REREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A document's rules as validated: by their first line and their text, and what they were
/// validated against (a rule's meaning depends on its policy's name, mode and sandbox
/// profiles, besides its own text and place).
#[derive(Debug)]
pub(super) struct Items {
    context: RuleContext,
    rules: HashMap<usize, (Box<str>, Arc<Rule>), foldhash::fast::RandomState>,
}

/// A document's `rules:` sequence, found from its lines.
#[derive(Debug)]
pub(super) struct Split<'a> {
    /// Each item: its first line (0-based, in the document) and its text (whole lines, up to
    /// the next item or the end of the sequence).
    pub(super) items: Vec<(usize, &'a str)>,
    /// The `rules:` line.
    key_line: usize,
    /// The document with `rules:` written `rules: []` and the items' lines emptied: the rest
    /// of the policy, at the same lines and columns.
    head: String,
}

/// Find the items of `doc`'s `rules:`, when its lines alone tell them apart: one `rules:` line
/// at column 0 (a trailing comment allowed), then only blank lines, comments and lines indented
/// with spaces, up to the next line at column 0 that is not a comment; each item starts with
/// `-` at the first item's indentation, and every other line is indented deeper. None
/// otherwise (the document is then read whole).
pub(super) fn split(doc: &str) -> Option<Split<'_>> {
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let is_key = |l: &str| {
        let l = l.trim_end();
        l == "rules:"
            || l.strip_prefix("rules:").is_some_and(|rest| {
                rest.starts_with([' ', '\t']) && rest.trim_start().starts_with('#')
            })
    };
    let mut keys = lines.iter().enumerate().filter(|(_, l)| is_key(l));
    let (key_line, _) = keys.next()?;
    if keys.next().is_some() {
        return None;
    }
    let mut items: Vec<(usize, usize)> = Vec::new(); // (first line, byte offset)
    let mut indent = None;
    let mut at = lines[..=key_line].iter().map(|l| l.len()).sum::<usize>();
    let mut end_line = lines.len();
    let mut end = doc.len();
    for (i, line) in lines.iter().enumerate().skip(key_line + 1) {
        let content = line.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            at += line.len();
            continue;
        }
        if trimmed.starts_with(|c: char| c.is_whitespace()) {
            // A tab (or other white space) in the indentation.
            return None;
        }
        let depth = content.len() - trimmed.len();
        let entry = trimmed == "-" || trimmed.starts_with("- ");
        match indent {
            None if entry => indent = Some(depth),
            None => return None,
            Some(k) if depth > k => {}
            Some(k) if depth == k && entry => {}
            Some(_) => {
                (end_line, end) = (i, at);
                break;
            }
        }
        if entry && Some(depth) == indent {
            items.push((i, at));
        }
        at += line.len();
    }
    if items.is_empty() {
        return None;
    }
    let mut head = String::with_capacity(doc.len() - (end - items[0].1) + 64);
    for (i, line) in lines.iter().enumerate() {
        if i == key_line {
            head.push_str("rules: []\n");
        } else if i > key_line && i < end_line {
            head.push('\n');
        } else {
            head.push_str(line);
        }
    }
    let items = items
        .iter()
        .enumerate()
        .map(|(n, &(line, start))| {
            let stop = items.get(n + 1).map_or(end, |next| next.1);
            (line, &doc[start..stop])
        })
        .collect();
    Some(Split {
        items,
        key_line,
        head,
    })
}

/// The items of a document read whole and validated without a problem, to keep for the next
/// read: `policy` is what it read as, its rules starting at `lines` (0-based). Kept only when
/// each rule is the item the lines found: one rule per item, each starting on its item's first
/// line (or, after a `-` alone on that line, further down the item). Otherwise an item the
/// lines found could be part of a string or a rule that started above it, and its text would
/// not be what the rule kept under it was.
pub(super) fn keep(split: &Split, policy: &Policy, lines: &[usize]) -> Option<Items> {
    let rules = &policy.rules;
    if split.items.len() != rules.len() || rules.len() != lines.len() {
        return None;
    }
    let within = |n: usize, at: usize| {
        let (first, text) = split.items[n];
        let next = split.items.get(n + 1).map_or(usize::MAX, |i| i.0);
        at == first || (at > first && at < next && text.lines().next().map(str::trim) == Some("-"))
    };
    if !lines.iter().enumerate().all(|(n, &at)| within(n, at)) {
        return None;
    }
    Some(Items {
        context: RuleContext::of(policy),
        rules: split
            .items
            .iter()
            .zip(rules)
            .map(|(&(line, text), rule)| (line, (text.into(), rule.clone())))
            .collect(),
    })
}

/// Read a document from `split` and the items of its previous read: the rest of the policy
/// parsed and validated, the items that changed parsed and validated each on its own, the
/// others taken from `earlier` as they were validated (when the policy's name, mode and
/// sandbox profiles are those they were validated against). None (nothing recorded in `cx`)
/// when it cannot be read this way or has any problem: the caller reads the whole document,
/// for the messages.
pub(super) fn reread(cx: &mut Cx, split: &Split, mut earlier: Items) -> Option<(Policy, Items)> {
    let head = marked_yaml::parse_yaml_with_options(0, split.head.as_str(), yaml_options()).ok()?;
    // `rules` is the key on the line found, and its value the `[]` written there: the line was
    // not inside a string of the rest of the document.
    let mapping = head.as_mapping()?;
    let (key, value) = mapping.iter().find(|(k, _)| k.as_str() == "rules")?;
    let key_at = key.span().start()?;
    if (key_at.line(), key_at.column()) != (split.key_line + 1, 1)
        || !value.as_sequence().is_some_and(|s| s.is_empty())
    {
        return None;
    }
    let mut problems = Vec::new();
    let mut quiet = Cx {
        file: cx.file,
        offset: cx.offset,
        problems: &mut problems,
    };
    let parts = quiet.parts(head);
    if !parts.clean() || !parts.rules.is_empty() {
        return None;
    }
    let policy = quiet.policy_with(parts.doc?, |cx, context, _| {
        if *context != earlier.context {
            return None;
        }
        // The kept rules are updated in place: only the changed items' are written.
        let mut rules = Vec::with_capacity(split.items.len());
        let mut changed = 0;
        for &(line, text) in &split.items {
            match earlier.rules.get(&line) {
                Some((was, rule)) if **was == *text => rules.push(rule.clone()),
                _ => {
                    changed += 1;
                    if changed > MAX_CHANGED {
                        return None;
                    }
                    let doc = alone(line, text)?;
                    let rule =
                        Arc::new(cx.rule(&context.name, context.mode, &context.profiles, doc)?);
                    rules.push(rule.clone());
                    earlier.rules.insert(line, (text.into(), rule));
                }
            }
        }
        // A duplicate id: the whole read says where.
        let mut ids: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
        if !rules.iter().all(|r| ids.insert(&r.id)) {
            return None;
        }
        // The rules of lines that no longer start an item.
        if earlier.rules.len() != split.items.len() {
            let lines: HashSet<usize, foldhash::fast::RandomState> =
                split.items.iter().map(|&(line, _)| line).collect();
            earlier.rules.retain(|line, _| lines.contains(line));
        }
        Some(rules)
    })?;
    if !problems.is_empty() {
        return None;
    }
    #[cfg(test)]
    REREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some((policy, earlier))
}

/// One item, parsed on its own at its line (after that many empty lines): exactly one entry,
/// read without a problem.
fn alone(line: usize, text: &str) -> Option<model::RuleDoc> {
    let mut yaml = "\n".repeat(line);
    yaml.push_str(text);
    let options = yaml_options().toplevel_sequence();
    let node = marked_yaml::parse_yaml_with_options(0, yaml, options).ok()?;
    let mut entries = match node {
        marked_yaml::Node::Sequence(s) if s.len() == 1 => s,
        _ => return None,
    };
    match recover::<model::RuleDoc>(entries.remove(0)) {
        (Some(rule), found) if found.is_empty() => Some(rule),
        _ => None,
    }
}
