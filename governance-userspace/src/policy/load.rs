//! Reading a policy directory: the files, their YAML documents, and recovery that reports
//! every problem of a document rather than the first.

use super::*;

/// The capabilities agents are refused, by name, comma-separated.
pub(super) fn refusable_capabilities() -> String {
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
    let root = std::fs::canonicalize(dir).map_err(|source| PolicyError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
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
            if name.starts_with('.') && path.is_dir() {
                continue;
            }
            // What a link the loader would read names must stay inside the directory the
            // daemon protects (a Kubernetes ConfigMap's links into its own `..data` do); a link
            // to a missing file is refused too, as an agent could make the file.
            let read = name.ends_with(".yaml") || name.ends_with(".yml") || path.is_dir();
            if read && path.is_symlink() {
                let inside = std::fs::canonicalize(&path).map(|t| (t.starts_with(&root), t));
                match inside {
                    Ok((true, _)) => {}
                    Ok((false, target)) => {
                        return Err(PolicyError::Outside {
                            path,
                            target: target.display().to_string(),
                            dir: root,
                        });
                    }
                    Err(e) => {
                        let target = std::fs::read_link(&path)
                            .map_or_else(|_| e.to_string(), |t| format!("{} ({e})", t.display()));
                        return Err(PolicyError::Outside {
                            path,
                            target,
                            dir: root,
                        });
                    }
                }
            }
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
    load_dir_hashed(dir, &mut Parsed::default()).map(|(set, _)| set)
}

/// The policy files of a directory as read: each file's path and text, in the order read
/// (sorted by path), their SHA-256s, and the policy's content hash of those very bytes (see
/// [`load_dir_hashed`]).
pub struct Sources {
    pub files: Vec<(PathBuf, String)>,
    digests: Vec<[u8; 32]>,
    pub hash: String,
    /// The files that could not be read.
    unreadable: Vec<Problem>,
}

/// Read the policy files below `dir` (no parsing).
fn read_dir(dir: &Path) -> Result<Sources, PolicyError> {
    use sha2::{Digest, Sha256};
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
    let mut manifest = Sha256::new();
    let mut digests = Vec::with_capacity(sources.len());
    for (file, text) in &sources {
        let relative = file.strip_prefix(dir).unwrap_or(file);
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let line = format!("{}  {}\n", hex(&digest), relative.display());
        manifest.update(line.as_bytes());
        digests.push(digest);
    }
    Ok(Sources {
        files: sources,
        digests,
        hash: hex(&manifest.finalize()),
        unreadable: problems,
    })
}

/// [`load_dir`], and the policy's content hash (64 hex digits) of the very bytes it read:
/// SHA-256 over one line per policy file, in the order read (sorted by path),
/// `<SHA-256 of the file, hex>  <path relative to dir>\n` (what `sha256sum` prints for
/// each file, so `cd DIR && sha256sum FILES... | sha256sum` reproduces it).
/// The documents that did not change since `parsed` was filled are not parsed again (see
/// [`Parsed`]).
pub fn load_dir_hashed(
    dir: &Path,
    parsed: &mut Parsed,
) -> Result<(PolicySet, String), PolicyError> {
    let (set, sources) = load_sources(dir, parsed)?;
    Ok((set, sources.hash))
}

/// [`load_dir_hashed`], with the sources it read.
pub fn load_sources(dir: &Path, parsed: &mut Parsed) -> Result<(PolicySet, Sources), PolicyError> {
    let mut sources = read_dir(dir)?;
    let mut problems = std::mem::take(&mut sources.unreadable);
    match parse_hashed(&sources.files, Some(&sources.digests), parsed) {
        Ok(set) if problems.is_empty() => Ok((set, sources)),
        Ok(_) => Err(PolicyError::Invalid(problems)),
        Err(PolicyError::Invalid(more)) => {
            problems.extend(more);
            Err(PolicyError::Invalid(problems))
        }
        Err(e) => Err(e),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Split a file into YAML documents at `---` lines; returns (first line number, text), the
/// text a slice of the file's (a document of 10,000 rules is not copied line by line).
pub(super) fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut first, mut start, mut at) = (0, 0, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            docs.push((first, &text[start..at]));
            (first, start) = (i + 1, at + line.len());
        }
        at += line.len();
    }
    docs.push((first, &text[start..]));
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// A policy document: its file, its first line, and the SHA-256 of its text.
type DocKey = (PathBuf, usize, [u8; 32]);

/// The policies of the documents a previous read validated without a problem, kept by a
/// daemon between reloads ([`load_dir_hashed`], [`parse_reusing`]). Reading and validating a
/// document depends on nothing but its text and where it is (no file system, no clock), so a
/// reload that finds the same text at the same place takes the policy from here: only the
/// documents that changed are parsed again. The policies are shared with the sets that hold
/// them, not copied.
///
/// A large document that changed keeps its rules too, each by its line and text
/// ([`super::items`]): only the rules that changed are parsed again.
#[derive(Debug, Default)]
pub struct Parsed {
    docs: BTreeMap<DocKey, std::sync::Arc<Policy>>,
    /// By file and first line of the document.
    items: BTreeMap<(PathBuf, usize), items::Items>,
}

/// Parse and validate policy texts, given as (file name, contents).
pub fn parse(sources: &[(PathBuf, String)]) -> Result<PolicySet, PolicyError> {
    parse_reusing(sources, &mut Parsed::default())
}

/// [`parse`], taking the policies of unchanged documents from `parsed`, which is left holding
/// this read's.
pub fn parse_reusing(
    sources: &[(PathBuf, String)],
    parsed: &mut Parsed,
) -> Result<PolicySet, PolicyError> {
    parse_hashed(sources, None, parsed)
}

/// [`parse_reusing`], given the SHA-256 of each source's text if already computed (a document
/// that is its whole file has that hash).
fn parse_hashed(
    sources: &[(PathBuf, String)],
    digests: Option<&[[u8; 32]]>,
    parsed: &mut Parsed,
) -> Result<PolicySet, PolicyError> {
    use sha2::{Digest, Sha256};
    let mut set = PolicySet::default();
    let mut problems = Vec::new();
    let mut names: BTreeMap<String, Location> = BTreeMap::new();
    let mut earlier = std::mem::take(&mut parsed.docs);
    let mut earlier_items = std::mem::take(&mut parsed.items);
    for (n, (path, text)) in sources.iter().enumerate() {
        // One copy of the file's name for every location in it.
        let file: Arc<Path> = Arc::from(path.as_path());
        let file = &file;
        for (offset, doc) in documents(text) {
            let digest = match digests.and_then(|d| d.get(n)) {
                Some(whole) if doc.len() == text.len() => *whole,
                _ => Sha256::digest(doc.as_bytes()).into(),
            };
            let key: DocKey = (path.clone(), offset, digest);
            let items_key = (path.clone(), offset);
            // (the policy, whether the document had no problem: only those are kept)
            let (policy, clean) = match earlier.remove(&key) {
                Some(policy) => {
                    if let Some(items) = earlier_items.remove(&items_key) {
                        parsed.items.insert(items_key, items);
                    }
                    (policy, true)
                }
                None => {
                    let before = problems.len();
                    let mut cx = Cx {
                        file,
                        offset,
                        problems: &mut problems,
                    };
                    let was = earlier_items.remove(&items_key);
                    let (Some(policy), items) = parse_document(&mut cx, doc, was) else {
                        continue;
                    };
                    let clean = problems.len() == before;
                    if let (true, Some(items)) = (clean, items) {
                        parsed.items.insert(items_key, items);
                    }
                    (std::sync::Arc::new(policy), clean)
                }
            };
            if clean {
                parsed.docs.insert(key, policy.clone());
            }
            if let Some(first) = names.get(&policy.name) {
                problems.push(Problem {
                    file: path.clone(),
                    at: Some((policy.at.line, policy.at.column)),
                    message: format!("policy `{}` is already defined at {first}", policy.name),
                });
                continue;
            }
            names.insert(policy.name.clone(), policy.at.clone());
            set.policies.push(policy);
        }
    }
    problems.extend(agent_budgets_disagree(&set));
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

/// `key: agent` throttles share one bucket per agent, in the kernel and in the proxy: with
/// different rates, a fast rule's refills would fill a slow rule's budget (red team round 24:
/// a rule of 2 an hour let through 3,600 beside one of 1,000 a minute). Every such rule must
/// give the same rate and window; the second and later ones that differ are errors.
fn agent_budgets_disagree(set: &PolicySet) -> Vec<Problem> {
    let mut first: Option<(&Rule, &Throttle)> = None;
    let mut problems = Vec::new();
    for rule in set.policies.iter().flat_map(|p| p.rules.iter()) {
        let Some(t) = rule
            .throttle
            .as_ref()
            .filter(|t| rule.verdict == Verdict::Throttle && t.key == ThrottleKey::Agent)
        else {
            continue;
        };
        match first {
            None => first = Some((rule, t)),
            Some((r, f)) if (f.rate, f.per) != (t.rate, t.per) => problems.push(Problem {
                file: rule.at.file.to_path_buf(),
                at: Some((rule.at.line, rule.at.column)),
                message: format!(
                    "`key: agent` throttles share one bucket per agent, so they must give one rate: \
                     this one is {} per {:?}, `{}` at {} is {} per {:?} (or use `key: agent_rule`)",
                    t.rate, t.per, r.id, r.at, f.rate, f.per
                ),
            }),
            Some(_) => {}
        }
    }
    problems
}

/// One YAML document read and validated; None if it had problems (recorded in `cx`). With
/// it, the rules of a large document by their line and text, for its next read; `was` are
/// those of its previous read (see [`super::items`]).
fn parse_document(
    cx: &mut Cx,
    doc: &str,
    was: Option<items::Items>,
) -> (Option<Policy>, Option<items::Items>) {
    let split = items::split(doc).filter(|s| s.items.len() >= items::MIN_ITEMS);
    if let (Some(split), Some(was)) = (&split, was)
        && let Some((policy, items)) = items::reread(cx, split, was)
    {
        return (Some(policy), Some(items));
    }
    let node = match marked_yaml::parse_yaml_with_options(0, doc, yaml_options()) {
        Ok(node) => node,
        Err(e) => {
            // Broken YAML: nothing after the first error can be trusted.
            let (at, msg) = yaml_error(&e);
            cx.problem_at(at, msg);
            return (None, None);
        }
    };
    let before = cx.problems.len();
    let mut parts = cx.parts(node);
    let lines = std::mem::take(&mut parts.rule_lines);
    let policy = cx.finish(parts, before);
    let items = split
        .zip(policy.as_ref())
        .filter(|_| cx.problems.len() == before)
        .and_then(|(s, policy)| items::keep(&s, policy, &lines));
    (policy, items)
}

/// How a policy document is read: a key given twice is an error.
pub(super) fn yaml_options() -> marked_yaml::LoaderOptions {
    marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true)
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
pub(super) const MAX_PART_PROBLEMS: usize = 64;

/// A problem serde found in one part of a document.
pub(super) struct Found {
    pub(super) at: Option<Marker>,
    /// Where in the part (`http.method`), as serde names it.
    pub(super) path: Option<String>,
    pub(super) message: String,
    /// An unknown field: leaving it out changes nothing else the part says.
    pub(super) unknown_field: bool,
}

impl Found {
    /// The message as the whole document would have it: `rules[2].verdict: unknown variant`.
    pub(super) fn message(&self, prefix: &str) -> String {
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
pub(super) fn recover<T: serde::de::DeserializeOwned>(
    mut node: marked_yaml::Node,
) -> (Option<T>, Vec<Found>) {
    use marked_yaml::Error;
    // Most parts are clean: read them without tracking serde's path (`from_node` tracks it
    // for every field, which was about half of the deserializing), and read a part with a
    // problem again through `from_node`, for the problem with its path.
    if let Ok(value) = T::deserialize(marked_yaml::spanned_serde::NodeDeserializer::new(&node)) {
        return (Some(value), Vec::new());
    }
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
pub(super) fn entry_of(mut path: &str) -> &str {
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
pub(super) fn remove_entry(node: &mut marked_yaml::Node, path: &str) -> bool {
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
