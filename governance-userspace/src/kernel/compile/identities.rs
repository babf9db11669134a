//! File rules resolved to identities: what each rule's path names now, by (device, inode), with
//! the hard links and mount points below protected directories.

use std::borrow::Cow;

use super::*;

/// Directory entries the identity resolution looks at below protected directories, per
/// generation (for hard links made before the load, and mount points).
pub(super) const ENUMERATION_BUDGET: usize = 50_000;

/// An object found on this host: kernel device, inode, directory or not.
pub(super) type Found = (u32, u64, bool);

/// What `lstat` says of a name: its identity, and its target if it is a symlink.
type Lstat = (Found, Option<Vec<u8>>);

/// A symlink on a rule's path: its own name (its directory's canonical path and its name) and
/// its own identity.
type Link = (Vec<u8>, Found);

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
/// A path that does not exist when the generation is built, and whose rules restrict creating
/// (or writing) it, has no identity, but its name does (scope `SCOPE_NAME`): the name it would
/// have in its deepest directory that exists (the path's own last component, or the first
/// missing directory on the way to it, refused whole: a new directory there would make the
/// path), with the path's answer for creating (else for writing) in the create slot. Every new
/// name the kernel judges (link, rename, symlink, mkdir, mknod) is looked up by its directory's
/// identity and its name's hash; opens are decided by their path, as before. That directory
/// and those above it hold it (`SCOPE_HOLDS`), as for an object: renamed, the name would be
/// somewhere else. Results are cached for the generation: agents share policies.
pub(crate) struct Identities {
    pub(super) stat: foldhash::HashMap<Vec<u8>, Option<(Vec<u8>, Found)>>,
    pub(super) below: foldhash::HashMap<Vec<u8>, Listing>,
    /// Listings read ahead of the compile ([`ReadAhead`]), taken as they are needed.
    pub(super) ahead: Listings,
    /// The thread still listing them: joined when the first listing is needed, so that the
    /// compile resolves its rules' paths and builds its tables meanwhile.
    pub(super) listing: Option<std::thread::JoinHandle<Listings>>,
    pub(super) budget: usize,
    pub(super) skip: Vec<Vec<u8>>,
    /// Directories not listed ([`not_enumerated`]), every spelling: below them only the mount
    /// points are looked for, in the mount table.
    pub(super) unlisted: Vec<Vec<u8>>,
    /// The mount table's mount points, read on first use.
    pub(super) mounts: Option<Vec<Vec<u8>>>,
    /// [`links_on`](Self::links_on)'s answers: agents share policies, so most paths are asked
    /// once per class.
    pub(super) links: foldhash::HashMap<Vec<u8>, Vec<Link>>,
    /// What `lstat` said of a name [`first_link`](Self::first_link) looked at: its identity and
    /// a symlink's target, or None where it is missing.
    pub(super) symlinks: foldhash::HashMap<Vec<u8>, Option<Lstat>>,
    pub(crate) notes: BTreeSet<String>,
    /// Resolve the shared built-ins' paths once per generation ([`Identities::plan`]); off
    /// only in the test that holds the plan to resolving each class in full.
    pub(super) plan_builtins: bool,
}

pub(super) fn restricts(p: &RulePair) -> bool {
    p.enforce.present != 0 && p.enforce.verdict != KVerdict::Allow as u8
}

pub(super) fn has(p: &RulePair) -> bool {
    p.enforce.present != 0 || p.shadow.present != 0
}

/// The more severe of two answers for one letter (the same object named twice: deny wins).
pub(crate) fn severer(a: RulePair, b: RulePair) -> RulePair {
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

/// What an answer holds of its object (see [`Identities::resolve`]): the enforcing rule, where
/// it restricts.
fn held_by(p: RulePair) -> RulePair {
    if restricts(&p) {
        RulePair {
            enforce: p.enforce,
            shadow: RuleRef::default(),
        }
    } else {
        RulePair::default()
    }
}

/// An object a class's identities are resolved for: its canonical path, identity and, where
/// the class does not reach it, its planned answers.
type Object<'a> = (Cow<'a, [u8]>, Found, Option<&'a Planned>);

/// What holds: the identities of the directories above a held object or name, and the answers
/// it holds.
type Holder<'a> = (Cow<'a, [(u32, u64)]>, [RulePair; 4]);

/// One of a shared built-in class's named paths as a class whose own nodes reach none of its
/// queries resolves it ([`Identities::plan`]).
#[derive(Default)]
pub(crate) struct Planned {
    /// Its canonical path and identity; None where it is missing.
    found: Option<(Vec<u8>, Found)>,
    /// The object's queries: itself, and (a directory) what is below it; for a missing path,
    /// the path's own.
    own: Vec<u8>,
    below: Option<Vec<u8>>,
    /// The built-ins' answers for them, by letter.
    rules: [RulePair; 4],
    rules_below: [RulePair; 4],
    /// What it holds ([`held_by`] of both), and whether what is below it is held.
    held: [RulePair; 4],
    protects_below: bool,
    /// Where it holds anything: the symlinks on its path, and the directories above it (a
    /// missing path's: above the name it would have).
    links: Vec<Link>,
    above: Vec<(u32, u64)>,
    /// Missing, with a rule refusing it: the name it would have (its directory's identity, the
    /// name's hash) and that rule ([`Identities::missing_name`]).
    name: Option<((u32, u64), u32, RulePair)>,
}

impl Identities {
    pub(crate) fn new(protect: &Protect) -> Self {
        crate::kernel::forget_mounts();
        let mut identities = Self {
            stat: Default::default(),
            below: Default::default(),
            ahead: Default::default(),
            listing: None,
            budget: ENUMERATION_BUDGET,
            // Not enumerated: the root and the cgroup tree (too big, and the cgroup tree has
            // its own protections).
            skip: vec![b"/".to_vec(), path_bytes(&protect.cgroup_root)],
            // The kernel settings' pseudo filesystems are not listed (hard links there need
            // capabilities agents do not get; walking /sys on every reload would make reloads
            // slow), but what is mounted below them is (red team round 20: efivarfs, tracefs,
            // configfs, pstore had no entries, so a root agent removed a firmware variable or
            // made a tracing instance with no rule asked).
            unlisted: KERNEL_SETTINGS
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            mounts: None,
            links: Default::default(),
            symlinks: Default::default(),
            notes: BTreeSet::new(),
            plan_builtins: true,
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for p in not_enumerated(&passwd) {
            let spelled = identities.spellings(&p);
            identities.unlisted.extend(spelled);
        }
        identities
    }

    /// The canonical path and identity of `path`, if it exists: what `canonicalize` and `stat`
    /// answer.
    pub(super) fn find(&mut self, path: &[u8]) -> Option<(Vec<u8>, Found)> {
        if let Some(known) = self.stat.get(path) {
            return known.clone();
        }
        let found = self.look_up(path);
        self.stat.insert(path.to_vec(), found.clone());
        found
    }

    /// The names a path rule must be stored under: as written, and where it resolves now if
    /// that is another path (the kernel reports resolved paths: a rule on a symlink means the
    /// file behind it). Resolved through [`find`](Self::find): rules share directories, and
    /// agents share policies.
    pub(super) fn spellings(&mut self, p: &Path) -> Vec<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut out = vec![path_bytes(p)];
        match self.find(&out[0]) {
            Some((real, _)) => {
                if Path::new(std::ffi::OsStr::from_bytes(&real)) != p {
                    out.push(real);
                }
            }
            // Missing: where a symlink on the way leads (a dangling link at the path: what an
            // open through it creates), if one does.
            None => {
                if let Some(led) = self.lead(&out[0])
                    && led != out[0]
                {
                    out.push(led);
                }
            }
        }
        out
    }

    /// [`find`](Self::find) without the cache. A path `parent/name` (a plain name) is found from
    /// its parent's answer, itself cached: `canonicalize` resolves a path's components from the
    /// root, so a parent that cannot be resolved, or is not a directory, leaves nothing to find
    /// below it, and a name that is not a symlink in the parent's canonical path is its own
    /// canonical name. Rules share directories (and the directories of missing paths are
    /// missing too), so this takes a `readlink` per component of every path down to an `lstat`
    /// per path.
    fn look_up(&mut self, path: &[u8]) -> Option<(Vec<u8>, Found)> {
        use std::os::unix::ffi::OsStrExt as _;
        let found = |real: &Path, meta: std::fs::Metadata| {
            let id = (
                crate::kernel::kernel_dev_at(real, meta.dev(), true),
                meta.ino(),
                meta.is_dir(),
            );
            Some((path_bytes(real), id))
        };
        let whole = Path::new(std::ffi::OsStr::from_bytes(path));
        if let Some(i) = path.iter().rposition(|&b| b == b'/')
            && i > 0
            && !matches!(&path[i + 1..], b"" | b"." | b"..")
        {
            let (real, (_, _, is_dir)) = self.find(&path[..i])?;
            if !is_dir {
                return None;
            }
            let mut real = real;
            if real.last() != Some(&b'/') {
                real.push(b'/');
            }
            real.extend_from_slice(&path[i + 1..]);
            let real = Path::new(std::ffi::OsStr::from_bytes(&real));
            let meta = std::fs::symlink_metadata(real).ok()?;
            if !meta.file_type().is_symlink() {
                return found(real, meta);
            }
        }
        let real = std::fs::canonicalize(whole).ok()?;
        let meta = std::fs::metadata(&real).ok()?;
        found(&real, meta)
    }

    /// Record what [`find`](Self::find) would answer for `file`, a directory entry of `dir`
    /// that is not a symlink and whose identity the listing gave: its canonical path is that of
    /// `dir` and its name.
    pub(super) fn found_in(&mut self, dir: &Path, file: &Path, found: Found) {
        let (Some((mut real, _)), Some(name)) = (self.find(&path_bytes(dir)), file.file_name())
        else {
            return;
        };
        if real.last() != Some(&b'/') {
            real.push(b'/');
        }
        real.extend_from_slice(name.as_encoded_bytes());
        self.stat.insert(path_bytes(file), Some((real, found)));
    }

    /// Below directory `dir` (canonical): files with more than one name, and mount points.
    ///
    /// Listed once per generation, charged to the generation's budget: from the listing read
    /// ahead of the compile ([`ReadAhead`]) if it has one, from a complete listing of a
    /// directory above that went through `dir` (the same walk, below `dir`), or read now.
    pub(super) fn enumerate(&mut self, dir: &[u8]) -> Vec<Vec<u8>> {
        if self.skip.iter().any(|s| s == dir) {
            return Vec::new();
        }
        // Too big to list, but what is mounted inside them (a running container's rootfs, a
        // pod's volumes, `/boot/efi`) is in the mount table: without entries of their own,
        // those filesystems' names would go by the agent's default (red team round 11).
        if self.unlisted.iter().any(|s| s == dir) {
            let mounts = self.mounts.get_or_insert_with(|| {
                crate::agents::mount_points()
                    .iter()
                    .map(|m| path_bytes(m))
                    .collect()
            });
            // (Not the cgroup tree's mounts: agents manage their own cgroups.)
            return below(mounts, dir)
                .into_iter()
                .filter(|m| {
                    !within(m, CGROUP_MOUNTS.as_bytes())
                        && !self.skip.iter().any(|s| s != b"/" && within(m, s))
                })
                .collect();
        }
        if let Some(listed) = self.below.get(dir) {
            return listed.found.clone();
        }
        if let Some(thread) = self.listing.take() {
            self.ahead = thread.join().unwrap_or_default();
        }
        let listed = match self.ahead.remove(dir) {
            Some(ahead) if ahead.read <= self.budget => ahead,
            _ => self
                .within_listed(dir)
                .unwrap_or_else(|| Listing::read(dir, self.budget)),
        };
        self.budget -= listed.read;
        if !listed.complete {
            self.notes.insert(format!(
                "identity: stopped looking below {} after {ENUMERATION_BUDGET} entries; \
                 hard links made before this load to files further below, and filesystems \
                 mounted further below, are decided by their paths only",
                String::from_utf8_lossy(dir)
            ));
        }
        let found = listed.found.clone();
        self.below.insert(dir.to_vec(), listed);
        found
    }

    /// `dir`'s listing taken from a complete listing of a directory above it whose walk went
    /// through `dir` (so `dir` is on that directory's filesystem, as everything the walk met
    /// below it): the entries found below `dir`. Nothing is read, so nothing is charged.
    fn within_listed(&self, dir: &[u8]) -> Option<Listing> {
        let mut above = dir;
        while let Some(i) = above.iter().rposition(|&b| b == b'/') {
            if i == 0 {
                return None;
            }
            above = &above[..i];
            let Some(listed) = self.below.get(above).or_else(|| self.ahead.get(above)) else {
                continue;
            };
            if !listed.complete
                || listed
                    .dirs
                    .binary_search_by(|d| d.as_slice().cmp(dir))
                    .is_err()
            {
                return None;
            }
            let mut prefix = dir.to_vec();
            prefix.push(b'/');
            let below = |paths: &[Vec<u8>]| -> Vec<Vec<u8>> {
                paths
                    .iter()
                    .filter(|p| p.starts_with(&prefix))
                    .cloned()
                    .collect()
            };
            return Some(Listing {
                found: below(&listed.found),
                read: 0,
                complete: true,
                dirs: [dir.to_vec()]
                    .into_iter()
                    .chain(below(&listed.dirs))
                    .collect(),
            });
        }
        None
    }

    /// What each of `builtin`'s named paths gives a class whose own nodes reach none of its
    /// queries ([`Tops::reaches`]): the built-ins' answers, the same for every such class.
    /// Made once per generation and set of built-ins, on the first class resolved beside them.
    fn plan(&mut self, builtin: &Beside) -> Rc<Vec<Planned>> {
        if let Some(plan) = builtin.plan.get() {
            return Rc::clone(plan);
        }
        let plan: Vec<Planned> = builtin
            .named
            .iter()
            .map(|path| self.plan_path(path, |l, query| builtin.answer(l, query)))
            .collect();
        let plan = Rc::new(plan);
        // A second resolve in the same generation finds it set; none sets it between.
        let _ = builtin.plan.set(Rc::clone(&plan));
        plan
    }

    /// What `path` gives a class whose path tables answer `answer` (a letter, a query): the
    /// object it names now, its answers and what it holds, or, missing, the name it would have.
    fn plan_path(
        &mut self,
        path: &[u8],
        answer: impl Fn(u8, &[u8]) -> Option<RulePair>,
    ) -> Planned {
        let Some((real, found)) = self.find(path) else {
            let own = Node::bytes_of(path, true);
            let mut planned = Planned::default();
            if let Some(rule) = name_rule(|l| answer(l, &own))
                && let Some((dir, name)) = self.missing_name(path)
            {
                planned.name = Some(((dir.1.0, dir.1.1), name_hash(&name), rule));
                planned.above = self.above(&name_in(dir.0, &name));
                planned.links = self.links_on(path);
            }
            planned.own = own;
            return planned;
        };
        let own = Node::bytes_of(&real, true);
        let below = found.2.then(|| Node::bytes_of(&real, false));
        let answers = |query: &[u8]| IDENT_LETTERS.map(|l| answer(l, query).unwrap_or_default());
        let rules = answers(&own);
        let rules_below = below.as_deref().map(answers).unwrap_or_default();
        // What restricts access to the object itself, or below it.
        let mut held = rules.map(held_by);
        let below_held = rules_below.map(held_by);
        let protects_below = below.is_some() && below_held.iter().any(has);
        for (h, b) in held.iter_mut().zip(below_held) {
            *h = severer(*h, b);
        }
        let (links, above) = if held.iter().any(has) {
            (self.links_on(path), self.above(&real))
        } else {
            (Vec::new(), Vec::new())
        };
        Planned {
            found: Some((real, found)),
            own,
            below,
            rules,
            rules_below,
            held,
            protects_below,
            links,
            above,
            name: None,
        }
    }

    /// The identities of the directories above `real` (canonical), nearest first, up to the
    /// first that cannot be found: the directories that hold an object there
    /// ([`SCOPE_HOLDS`]).
    fn above(&mut self, real: &[u8]) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut dir = real;
        while let Some(i) = dir.iter().rposition(|&b| b == b'/') {
            if dir == b"/" {
                break;
            }
            dir = if i == 0 { &dir[..1] } else { &dir[..i] };
            let Some((_, (dev, ino, _))) = self.find(dir) else {
                break;
            };
            out.push((dev, ino));
        }
        out
    }

    /// Resolve the class's file rules (and what they protect) into `c.idents`.
    pub(crate) fn resolve(&mut self, c: &mut Class, builtin: &Beside) {
        let letters = IDENT_LETTERS;
        let tops = class::Tops::of(c);
        // The paths the class's file rules and its shared built-ins name (exec rules have
        // their own identities), in order: the built-ins' as planned (where the class's nodes
        // reach none of a path's queries, its answers are the built-ins', planned once per
        // generation: with a thousand agents, each resolving the same few thousand built-in
        // paths was most of a compile), the class's few put in between.
        let plan = if self.plan_builtins {
            self.plan(builtin)
        } else {
            Rc::new(Vec::new())
        };
        let mut own: Vec<&[u8]> = class::named(c).collect();
        own.sort_unstable();
        own.dedup();
        let mut named: Vec<(&[u8], Option<&Planned>)> =
            Vec::with_capacity(builtin.named.len() + own.len());
        {
            let mut planned = builtin
                .named
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_slice(), plan.get(i)))
                .peekable();
            let mut own = own.into_iter().peekable();
            loop {
                let next = match (planned.peek(), own.peek()) {
                    (Some(b), Some(o)) if b.0 <= *o => {
                        if b.0 == *o {
                            own.next();
                        }
                        planned.next()
                    }
                    (_, Some(_)) => own.next().map(|o| (o, None)),
                    (Some(_), None) => planned.next(),
                    (None, None) => break,
                };
                named.extend(next);
            }
        }
        // Each path as planned where the class does not reach it, else as the class decides it
        // (in `own_plans`, by index: the references are taken once all are made).
        let mut own_plans: Vec<Planned> = Vec::new();
        let chosen: Vec<Result<&Planned, usize>> = named
            .into_iter()
            .map(|(path, planned)| match planned {
                Some(p)
                    if !tops.reaches(&p.own)
                        && p.below.as_deref().is_none_or(|b| !tops.reaches(b)) =>
                {
                    Ok(p)
                }
                _ => {
                    let p = self.plan_path(path, |l, query| tops.answer_with(c, builtin, l, query));
                    own_plans.push(p);
                    Err(own_plans.len() - 1)
                }
            })
            .collect();
        let mut objects: Vec<Object<'_>> = Vec::new();
        let mut protected_dirs: Vec<Vec<u8>> = Vec::new();
        let mut holders: Vec<Holder<'_>> = Vec::new();
        let mut missing: Vec<&Planned> = Vec::new();
        // (a symlink's own name and identity, the answers it holds)
        let mut links: Vec<(Link, [RulePair; 4])> = Vec::new();
        for p in chosen {
            let p = p.unwrap_or_else(|i| &own_plans[i]);
            let Some((real, found)) = &p.found else {
                missing.push(p);
                continue;
            };
            if p.protects_below {
                protected_dirs.push(real.clone());
            }
            if p.held.iter().any(has) {
                holders.push((Cow::Borrowed(&p.above), p.held));
                links.extend(p.links.iter().map(|l| (l.clone(), p.held)));
            }
            // An object none of whose answers has a rule makes no entry.
            if p.rules.iter().chain(&p.rules_below).any(has) {
                objects.push((Cow::Borrowed(real), *found, Some(p)));
            }
        }
        protected_dirs.sort();
        protected_dirs.dedup();
        for dir in protected_dirs {
            for path in self.enumerate(&dir) {
                if let Some((real, found)) = self.find(&path) {
                    objects.push((Cow::Owned(real), found, None));
                }
            }
        }
        objects.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        objects.dedup_by(|a, b| (&a.0, a.1) == (&b.0, b.1));
        for (real, (dev, ino, is_dir), planned) in objects {
            let scoped = match planned {
                Some(p) => [
                    (SCOPE_SELF, Some(p.rules)),
                    (SCOPE_BELOW, Some(p.rules_below)),
                ],
                None => [(SCOPE_SELF, None), (SCOPE_BELOW, None)],
            };
            for (scope, rules) in scoped {
                if scope == SCOPE_BELOW && !is_dir {
                    continue;
                }
                let rules = rules.unwrap_or_else(|| {
                    let query = Node::bytes_of(&real, scope == SCOPE_SELF);
                    letters.map(|l| tops.answer_with(c, builtin, l, &query).unwrap_or_default())
                });
                if !rules.iter().any(has) {
                    continue;
                }
                let entry = c.idents.entry((dev, ino, scope, 0)).or_default();
                for (slot, r) in entry.rules.iter_mut().zip(rules) {
                    *slot = severer(*slot, r);
                }
            }
        }
        // The protected paths missing now: the names they would have (see above).
        for p in missing {
            let Some(((dev, ino), hash, rule)) = p.name else {
                continue;
            };
            let entry = c.idents.entry((dev, ino, SCOPE_NAME, hash)).or_default();
            entry.rules[2] = severer(entry.rules[2], rule);
            let mut held = [RulePair::default(); 4];
            held[2] = rule;
            holders.push((Cow::Borrowed(&p.above), held));
            // A symlink on the way (a dangling one at the path itself) is not replaced either.
            let linked = [RulePair::default(), rule, rule, rule];
            links.extend(p.links.iter().map(|l| (l.clone(), linked)));
        }
        // The symlinks on the way to a restricting rule's object (merged /usr's `/bin`, a
        // dotfile manager's `~/.bashrc`): each is held as the object is, so that it is not
        // replaced, removed or renamed to point the rule's path elsewhere, and the directories
        // above it hold it (red team round 11: `mv -T /tmp/evil /bin` was allowed).
        for ((link, (dev, ino, _)), held) in links {
            let entry = c.idents.entry((dev, ino, SCOPE_SELF, 0)).or_default();
            for (slot, r) in entry.rules.iter_mut().zip(held) {
                *slot = severer(*slot, r);
            }
            holders.push((Cow::Owned(self.above(&link)), held));
        }
        // The directories above a restricting rule's object: renaming one moves the rule's path
        // away from the object.
        for (above, held) in holders {
            for &(dev, ino) in above.iter() {
                let entry = c.idents.entry((dev, ino, SCOPE_HOLDS, 0)).or_default();
                for (slot, r) in entry.rules.iter_mut().zip(held) {
                    *slot = severer(*slot, r);
                }
            }
        }
        // The letters some identity rule of the class restricts: the only ones a walk is for.
        let mut restricted = [false; 4];
        for v in c.idents.values() {
            for (m, r) in restricted.iter_mut().zip(&v.rules) {
                *m |= restricts(r);
            }
        }
        // The class's answer outside every entry, for the letters it restricts (see
        // governance_common::SCOPE_FILL): a new name is judged with it on both sides.
        let fill = fill_of(c, builtin);
        let filled = fill.iter().any(has);
        if !restricted.contains(&true) && !filled {
            // Nothing restricts: the answers could never change a decision; the kernel skips
            // the walk for this class.
            c.idents.clear();
            return;
        }
        // Each device's marker: the restricted letters the class has entries for on it (see
        // governance_common::IdentKey). A walk never leaves its object's filesystem; it
        // crosses btrfs subvolumes, so a marker is the superblock's.
        let mut markers: BTreeMap<u32, IdentValue> = BTreeMap::new();
        // The entries are ordered by device: its superblock asked once per device (a lookup
        // under a lock), not once per entry.
        let mut last: Option<(u32, u32)> = None;
        for (&(dev, _, _, _), v) in &c.idents {
            let sb = match last {
                Some((d, sb)) if d == dev => sb,
                _ => crate::kernel::superblock_of(dev),
            };
            last = Some((dev, sb));
            let marker = markers.entry(sb).or_default();
            for ((m, r), &restricted) in marker.rules.iter_mut().zip(&v.rules).zip(&restricted) {
                if restricted && has(r) {
                    *m = RulePair {
                        enforce: rule_ref(NO_RULE, KVerdict::Block, 0),
                        shadow: RuleRef::default(),
                    };
                }
            }
        }
        for (dev, marker) in markers {
            // With a fill, every device the class has entries on is judged (for the letters
            // of the fill) even when no entry there restricts: its allow entries are what a
            // new name must not reach from outside them.
            if filled || marker.rules.iter().any(has) {
                c.idents.insert((dev, 0, SCOPE_DEVICE, 0), marker);
            }
        }
        if filled {
            c.idents
                .insert((0, 0, SCOPE_FILL, 0), IdentValue { rules: fill });
        }
    }
}

/// How many symlinks [`Identities::links_on`] and [`Identities::lead`] follow in a row (the
/// kernel's own limit is 40).
const MAX_LINK_HOPS: u32 = 8;

impl Identities {
    /// The symlinks on `path` (as written), each by its own name (its directory's canonical
    /// path and its name) and its own identity (`lstat`), and those on each link's target
    /// (with the rest of `path` after the link): a chain's middle link (`~/dotfiles` in
    /// `~/.bashrc → ~/dotfiles/bashrc`) replaced would point the path elsewhere too, and a
    /// link whose target is missing is held as well. A component is a symlink when its
    /// canonical path is not its directory's and its name; both come from
    /// [`find`](Self::find)'s cache, so only a link (or a missing name) costs an `lstat`.
    fn links_on(&mut self, path: &[u8]) -> Vec<Link> {
        if let Some(known) = self.links.get(path) {
            return known.clone();
        }
        let mut out = Vec::new();
        self.links_into(path, MAX_LINK_HOPS, &mut out);
        self.links.insert(path.to_vec(), out.clone());
        out
    }

    fn links_into(&mut self, path: &[u8], hops: u32, out: &mut Vec<Link>) {
        if let Some((link, id, target)) = self.first_link(path) {
            out.push((link, id));
            if hops > 0 {
                self.links_into(&target, hops - 1, out);
            }
        }
    }

    /// Where `path` leads when it does not resolve: its first symlink followed as the kernel
    /// would, again up to [`MAX_LINK_HOPS`], the missing rest kept (a dangling `~/.gitconfig →
    /// ~/dots/gitconfig` leads to `~/dots/gitconfig`, a name the agent could make). None if no
    /// symlink is on the way.
    pub(super) fn lead(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        let mut led = self.first_link(path)?.2;
        for _ in 0..MAX_LINK_HOPS {
            match self.first_link(&led) {
                Some((_, _, next)) => led = next,
                None => break,
            }
        }
        Some(led)
    }

    /// The first symlink among `path`'s components: its own name and identity, and the path
    /// it leads to (its target, made absolute and plain, with the rest of `path`).
    fn first_link(&mut self, path: &[u8]) -> Option<(Vec<u8>, Found, Vec<u8>)> {
        use std::os::unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::MetadataExt as _,
        };
        if path.first() != Some(&b'/') {
            return None;
        }
        let mut end = 0;
        while end < path.len() {
            let next = path[end + 1..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |i| end + 1 + i);
            let (dir, name) = (&path[..end.max(1)], &path[end + 1..next]);
            end = next;
            if matches!(name, b"" | b"." | b"..") {
                continue;
            }
            let (mut own, _) = self.find(dir)?;
            if own.last() != Some(&b'/') {
                own.push(b'/');
            }
            own.extend_from_slice(name);
            if self
                .find(&path[..next])
                .is_some_and(|(real, _)| real == own)
            {
                continue;
            }
            // Another canonical path, or none: a symlink (dangling or not), or missing. Asked
            // once per name for the generation (rules share their missing directories).
            let looked = match self.symlinks.get(&own) {
                Some(known) => known.clone(),
                None => {
                    let found = std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(&own))
                        .map(|meta| {
                            let dev = crate::kernel::kernel_dev_at(
                                Path::new(std::ffi::OsStr::from_bytes(&own)),
                                meta.dev(),
                                false,
                            );
                            let id = (dev, meta.ino(), false);
                            let target = meta
                                .file_type()
                                .is_symlink()
                                .then(|| std::fs::read_link(std::ffi::OsStr::from_bytes(&own)))
                                .and_then(Result::ok)
                                .map(|t| t.into_os_string().into_vec());
                            (id, target)
                        })
                        .ok();
                    self.symlinks.insert(own.clone(), found.clone());
                    found
                }
            };
            let (id, target) = looked?;
            let Some(target) = target else {
                continue;
            };
            let mut led = if target.first() == Some(&b'/') {
                Vec::new()
            } else {
                own[..own.iter().rposition(|&b| b == b'/').unwrap_or(0)].to_vec()
            };
            led.push(b'/');
            led.extend_from_slice(&target);
            led.extend_from_slice(&path[next..]);
            return Some((own, id, plain(&led)));
        }
        None
    }
}

/// `path` with `.`, `..` and repeated slashes taken out by name (a link's target read from a
/// canonical directory: `..` leaves that directory).
fn plain(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The paths of `paths` strictly below directory `dir`.
fn below(paths: &[Vec<u8>], dir: &[u8]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .filter(|p| p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
        .cloned()
        .collect()
}

/// `path` is `dir` or below it.
fn within(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Where cgroup hierarchies are mounted (cgroup2, and a hybrid layout's v1 hierarchies):
/// not given identity entries below [`KERNEL_SETTINGS`].
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// The filesystems mounted below the directories that are not listed ([`not_enumerated`] and
/// [`KERNEL_SETTINGS`], each where it resolves now; not the cgroup tree's), by mount point: a
/// generation gives them identity entries, so a change (a container started, a volume
/// mounted, tracefs mounted on first use) is worth the next one. Sorted. `mountinfo`:
/// [`crate::kernel::mountinfo`].
pub fn unlisted_mounts(mountinfo: &[u8]) -> Vec<Vec<u8>> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let dirs: Vec<Vec<u8>> = not_enumerated(&passwd)
        .iter()
        .map(|p| path_bytes(&std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())))
        .chain(KERNEL_SETTINGS.iter().map(|p| p.as_bytes().to_vec()))
        .collect();
    let mounts: Vec<Vec<u8>> = crate::agents::mount_points_of(mountinfo)
        .iter()
        .map(|m| path_bytes(m))
        .collect();
    let mut out: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|d| below(&mounts, d))
        .filter(|m| !within(m, CGROUP_MOUNTS.as_bytes()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What [`Identities::missing_name`] finds: the directory (canonical path and identity), and
/// the name in it.
type MissingName = ((Vec<u8>, Found), Vec<u8>);

/// The rule that refuses making a missing path, from its answers (`answer`, by letter): its
/// answer for creating, else for writing, where one restricts.
fn name_rule(answer: impl Fn(u8) -> Option<RulePair>) -> Option<RulePair> {
    let restricting = |letter| answer(letter).filter(restricts);
    let rule = restricting(access::CREATE).or_else(|| restricting(access::WRITE))?;
    Some(RulePair {
        enforce: rule.enforce,
        shadow: RuleRef::default(),
    })
}

/// The path of `name` in directory `dir` (canonical).
fn name_in(mut dir: Vec<u8>, name: &[u8]) -> Vec<u8> {
    if dir.last() != Some(&b'/') {
        dir.push(b'/');
    }
    dir.extend_from_slice(name);
    dir
}

impl Identities {
    /// For `path`, a rule's path that does not exist now: its deepest directory that does
    /// (canonical path and identity) and the name of `path`'s next component there (see
    /// [`name_rule`] for the rule that name is refused by).
    fn missing_name(&mut self, path: &[u8]) -> Option<MissingName> {
        if path.first() != Some(&b'/') {
            return None;
        }
        let mut end = path.len();
        loop {
            let i = path[..end].iter().rposition(|&b| b == b'/')?;
            let dir = if i == 0 { &path[..1] } else { &path[..i] };
            if let Some(found) = self.find(dir) {
                let name = path[i + 1..].split(|&b| b == b'/').next()?;
                if matches!(name, b"" | b"." | b"..") || !found.1.2 {
                    return None;
                }
                return Some((found, name.to_vec()));
            }
            if i == 0 {
                return None;
            }
            end = i;
        }
    }
}

/// A class's [`SCOPE_FILL`] answer, per letter of [`IDENT_LETTERS`]: what its path rules say
/// for a name only `/` covers (a rule on `/`, else the file default), where that restricts.
/// Reported as the rule on `/`, or as the built-in or the default it is ([`FILL_BUILTIN`],
/// [`FILL_DEFAULT`]).
pub(super) fn fill_of(c: &Class, builtin: &Beside) -> [RulePair; 4] {
    IDENT_LETTERS.map(|l| {
        let (rule, default) =
            match answer_with(c, builtin, l, b"/").filter(|p| p.enforce.present != 0) {
                Some(p) => (p.enforce, false),
                None => (c.value.file_default.enforce, true),
            };
        if rule.present == 0 || rule.verdict == KVerdict::Allow as u8 {
            return RulePair::default();
        }
        let rule_id = match (default, rule.rule_id) {
            (true, _) => FILL_DEFAULT,
            (false, NO_RULE) => FILL_BUILTIN,
            (false, id) => id,
        };
        RulePair {
            enforce: RuleRef { rule_id, ..rule },
            shadow: RuleRef::default(),
        }
    })
}

impl Drop for Identities {
    /// A compile that needed no listing still waits for the thread listing them: it leaves
    /// nothing running behind it.
    fn drop(&mut self) {
        if let Some(thread) = self.listing.take() {
            let _ = thread.join();
        }
    }
}

/// Listings by directory (canonical).
pub(super) type Listings = foldhash::HashMap<Vec<u8>, Listing>;

/// What one walk below a directory found ([`Identities::enumerate`]).
pub(super) struct Listing {
    /// Files with more than one name, and mount points.
    pub(super) found: Vec<Vec<u8>>,
    /// The entries it read (charged to the budget).
    pub(super) read: usize,
    /// It read everything below (it did not stop at the budget).
    pub(super) complete: bool,
    /// The directories it went into, sorted.
    pub(super) dirs: Vec<Vec<u8>>,
}

impl Listing {
    /// Walk below `dir` (canonical), reading at most `budget` entries: a directory on another
    /// device is a mount point (not walked into), and a file that is not a symlink with a link
    /// count above 1 has another name.
    pub(super) fn read(dir: &[u8], budget: usize) -> Listing {
        use std::os::unix::ffi::OsStrExt as _;
        let mut out = Listing {
            found: Vec::new(),
            read: 0,
            complete: true,
            dirs: Vec::new(),
        };
        let root = Path::new(std::ffi::OsStr::from_bytes(dir));
        let Ok(top) = std::fs::symlink_metadata(root) else {
            return out;
        };
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            out.dirs.push(path_bytes(&d));
            for e in entries.flatten() {
                if out.read == budget {
                    out.complete = false;
                    return out;
                }
                out.read += 1;
                // A symlink is neither walked into nor another name of a file: no `statx` (the
                // listing's type, when the filesystem gives one).
                if e.file_type().is_ok_and(|t| t.is_symlink()) {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                let path = e.path();
                if meta.is_dir() {
                    if meta.dev() != top.dev() {
                        out.found.push(path_bytes(&path));
                    } else {
                        stack.push(path);
                    }
                } else if !meta.file_type().is_symlink() && meta.nlink() > 1 {
                    out.found.push(path_bytes(&path));
                }
            }
        }
        out.dirs.sort();
        out
    }
}

/// The built-in protected directories (every relaxation's: the daemon's, the kernel settings'
/// and the system files' that are listed at all) listed on a thread of their own while the
/// daemon reads the policy and compiles it up to the first listing it needs: they do not depend
/// on the policy, and listing them is most of resolving a generation's identities (thousands of
/// `statx`). Each listing is what the compile would read itself a few milliseconds later, and a
/// listing the walk cut short is read again by it.
pub struct ReadAhead {
    /// What the generation protects: the compile's too ([`super::compile_ahead`]).
    pub(super) protect: Protect,
    /// None if the thread could not be started: the compile lists everything itself.
    pub(super) thread: Option<std::thread::JoinHandle<Listings>>,
}

impl ReadAhead {
    pub fn start(protect: Protect) -> ReadAhead {
        let listed = protect.clone();
        let thread = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                let mut identities = Identities::new(&listed);
                let mut out = foldhash::HashMap::default();
                for dir in denied_dirs(&listed, 0, access::WRITE) {
                    for spelled in identities.spellings(&dir) {
                        let Some((real, (_, _, true))) = identities.find(&spelled) else {
                            continue;
                        };
                        // (Neither the skipped directories nor the unlisted ones, whose mount
                        // points come from the mount table.)
                        if identities.skip.contains(&real)
                            || identities.unlisted.contains(&real)
                            || out.contains_key(&real)
                        {
                            continue;
                        }
                        let listing = Listing::read(&real, ENUMERATION_BUDGET);
                        if listing.complete {
                            out.insert(real, listing);
                        }
                    }
                }
                out
            })
            .inspect_err(|e| tracing::warn!("listing the protected directories ahead: {e}"))
            .ok();
        ReadAhead { protect, thread }
    }
}

/// Keep in `c` only the identity entries in which it differs from `shared`, the entries of its
/// shared built-in class, which the kernel reads for every key the class lacks (see
/// governance_common::IdentKey, shared entries):
///
/// - an entry equal to the shared one is dropped;
/// - a key only the shared class has gets an entry with no slot present ("none here");
/// - the device markers stay the class's own (the kernel reads no other, so a device the class
///   has no marker for costs one lookup, as before), flagged ([`IdentValue::own_entries`]) on
///   the devices where the class keeps entries of its own; elsewhere the kernel reads the
///   shared class alone.
///
/// For every key, what the kernel then finds is what the class's whole table held, or an
/// entry with no slot present where it held none (which reads as none).
pub(super) fn share(c: &mut Class, shared: &BTreeMap<IdentAt, IdentValue>) {
    for (key, value) in shared.iter().filter(|(k, _)| k.2 != SCOPE_DEVICE) {
        match c.idents.entry(*key) {
            std::collections::btree_map::Entry::Occupied(own) => {
                if own.get() == value {
                    own.remove();
                }
            }
            std::collections::btree_map::Entry::Vacant(none) => {
                none.insert(IdentValue::default());
            }
        }
    }
    let own_devices: BTreeSet<u32> = c
        .idents
        .keys()
        .filter(|k| k.2 != SCOPE_DEVICE)
        .map(|k| k.0)
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .map(crate::kernel::superblock_of)
        .collect();
    for dev in own_devices {
        if let Some(marker) = c.idents.get_mut(&(dev, 0, SCOPE_DEVICE, 0)) {
            marker.set_own_entries(true);
        }
    }
}
