//! Agent discovery: where cgroup v2 is mounted, and which cgroup (by id) each agent is.
//!
//! An agent is a cgroup and all of its descendants. The kernel side identifies a task's agent by
//! walking the task's cgroup ancestry, so only the agent's root cgroup needs an entry.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::policy::PolicySet;

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error(
        "no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with cgroup v2"
    )]
    NoCgroup2,
    #[error("listing the cgroup tree at {path}: {source}")]
    Walk { path: PathBuf, source: io::Error },
    #[error("agent `{agent}`: cgroup {path}: {source}")]
    Cgroup {
        agent: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// The mount point of the cgroup2 filesystem, from `/proc/self/mountinfo` (hybrid layouts
/// mount it somewhere below /sys/fs/cgroup, so never assume).
pub fn cgroup2_mount() -> Result<PathBuf, AgentsError> {
    let text = mountinfo_text().map_err(AgentsError::Mountinfo)?;
    find_cgroup2(&text).ok_or(AgentsError::NoCgroup2)
}

/// `/proc/self/mountinfo` as text, bytes that are not UTF-8 replaced: a mount point below a
/// directory whose name is not UTF-8 (an agent may rename a mount point's ancestor so) must
/// not make the table unreadable (red team round 12: the daemon did not start, and the mounts
/// below unlisted directories were all dropped).
fn mountinfo_text() -> std::io::Result<String> {
    crate::procfs::read("/proc/self/mountinfo").map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mounts_of(mountinfo, "cgroup2").next()
}

/// The mount points of the cgroup v1 hierarchies (a hybrid layout's `cpu`, `memory`,
/// `systemd`, ...), where container runtimes with the cgroupfs driver mirror a cgroup's path.
pub fn cgroup_v1_mounts() -> Vec<PathBuf> {
    mountinfo_text()
        .map(|text| mounts_of(&text, "cgroup").collect())
        .unwrap_or_default()
}

/// Every mount point of this mount namespace, from `/proc/self/mountinfo`, byte for byte (a
/// name need not be UTF-8); none if it cannot be read.
pub fn mount_points() -> Vec<PathBuf> {
    crate::procfs::read("/proc/self/mountinfo")
        .map(|text| mount_points_of(&text))
        .unwrap_or_default()
}

/// [`mount_points`] in a mount table already read (`/proc/self/mountinfo`'s text).
pub fn mount_points_of(mountinfo: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(4))
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(crate::procfs::unescape(m))))
        .collect()
}

fn mounts_of<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let kind = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (kind == fstype).then(|| {
            PathBuf::from(
                String::from_utf8_lossy(&crate::procfs::unescape(mount_point.as_bytes()))
                    .into_owned(),
            )
        })
    })
}

/// The cgroup v2 id of a cgroup directory: its inode number (what
/// `bpf_get_current_cgroup_id()` returns for tasks in it).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The cgroup whose id is `id`, relative to `root` (the cgroup2 mount), found by its kernfs
/// file handle (`open_by_handle_at` with the id, as systemd does; CAP_DAC_READ_SEARCH): one
/// lookup whatever the size of the tree. Err if no cgroup has that id (any more).
pub fn cgroup_by_id(root: &Path, id: u64) -> io::Result<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// `struct file_handle` with kernfs's 8-byte handle: the cgroup's id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    /// `FILEID_KERNFS` (include/linux/exportfs.h).
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = std::fs::File::open(root)?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid directory descriptor and a handle of the size it says; the descriptor
    // returned is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &raw mut handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let rel = path.strip_prefix(root).map_err(|_| {
        io::Error::other(format!(
            "cgroup {id} is at {}, outside {}",
            path.display(),
            root.display()
        ))
    })?;
    Ok(rel.to_string_lossy().into_owned())
}

/// The extended attribute that labels a cgroup as an agent.
pub const LABEL_XATTR: &str = "user.governance.agent";

/// A live agent: an agent root cgroup that a policy selector matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCgroup {
    /// Position in discovery order; the agent id is this plus one.
    pub index: usize,
    /// The label, or else the cgroup path.
    pub name: String,
    /// Path relative to the cgroup2 mount.
    pub rel: String,
    pub label: Option<String>,
    pub path: PathBuf,
    pub cgroup_id: u64,
    /// Kubernetes: the pod whose cgroup this is, as the API last told it.
    pub pod: Option<crate::policy::PodIdentity>,
}

impl AgentCgroup {
    /// The id the kernel maps use (1-based; 0 is never an agent).
    pub fn agent_id(&self) -> u32 {
        self.index as u32 + 1
    }

    pub fn agent_ref(&self) -> crate::engine::AgentRef {
        crate::engine::AgentRef {
            name: self.name.clone(),
            cgroup: self.rel.clone(),
            label: self.label.clone(),
            pod: self.pod.clone(),
        }
    }
}

/// The `user.governance.agent` label of a cgroup directory, if any.
pub fn label(dir: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(LABEL_XATTR).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| {
        String::from_utf8_lossy(&buf[..n as usize])
            .trim()
            .to_owned()
    })
}

/// Find the agent roots below `root` that the policy set's selectors match.
///
/// With `pods` (Kubernetes), a pod's cgroup (the pod-level slice the kubelet makes) carries
/// the pod's identity, which Kubernetes selectors match; pods the API deleted whose cgroups
/// are gone are forgotten. With `create`, the cgroups named literally by selectors without a label are created first,
/// so an agent placed there later is governed from its first instruction (the daemon never
/// removes them: they may hold processes). The walk stops descending at an agent root: its
/// descendants are part of it (the outermost agent wins, as in the kernel). When every
/// selector names one cgroup by its path, those cgroups are looked up instead of walking the
/// tree, with the same result.
pub fn discover(
    root: &Path,
    set: &PolicySet,
    create: bool,
    pods: Option<&crate::kubernetes::Identities>,
) -> Result<Vec<AgentCgroup>, AgentsError> {
    let mut live_pods = std::collections::HashSet::new();
    for p in &set.policies {
        if let (Some(rel), None, true) = (p.selector.literal_cgroup(), &p.selector.label, create) {
            let path = root.join(rel);
            if !path.exists() {
                std::fs::create_dir_all(&path).map_err(|source| AgentsError::Cgroup {
                    agent: p.name.clone(),
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(policy = %p.name, path = %path.display(), "created agent cgroup");
            }
        }
    }
    // A cgroup's label (an xattr read) is needed to match only when a selector names one;
    // otherwise it is read for the agents found alone (it names them).
    let by_label = set.policies.iter().any(|p| p.selector.label.is_some());
    let mut found = Vec::new();
    if let Some(literals) = literal_roots(set, pods.is_some()) {
        // Every selector names one cgroup: the walk would find exactly those of them that are
        // directories, less those below another one found (an agent root's descendants are
        // part of it; in component order a cgroup's ancestors come first). One `lstat` per
        // selector instead of reading every cgroup directory of the node.
        let mut roots = std::collections::HashSet::new();
        for rel in literals {
            let child = root.join(rel);
            if Path::new(rel).ancestors().any(|a| roots.contains(a))
                || !std::fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir())
            {
                continue;
            }
            roots.insert(Path::new(rel));
            let label = label(&child);
            if let Some(agent) = agent_root(child, rel.to_owned(), label, None)? {
                found.push(agent);
            }
        }
    } else {
        let mut stack = vec![(root.to_owned(), 0u32)];
        while let Some((dir, depth)) = stack.pop() {
            // A cgroup removed meanwhile has no agents; any other error (out of descriptors,
            // memory) is no answer: the walk fails, and the generation in force stays (red team
            // round 16: an empty walk dropped every agent).
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(AgentsError::Walk {
                        path: dir.clone(),
                        source,
                    });
                }
            };
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            for child in children.into_iter().rev() {
                let rel = child
                    .strip_prefix(root)
                    .unwrap_or(&child)
                    .to_string_lossy()
                    .into_owned();
                let label = if by_label { label(&child) } else { None };
                let pod = pods.and_then(|ids| {
                    let pc =
                        crate::kubernetes::cgroup::parse(&rel).filter(|p| p.pod_path == rel)?;
                    live_pods.insert(pc.uid.clone());
                    ids.pod(&pc.uid)
                });
                if set
                    .policies
                    .iter()
                    .any(|p| p.selector.matches(&rel, label.as_deref(), pod.as_ref()))
                {
                    let label = if by_label { label } else { self::label(&child) };
                    if let Some(agent) = agent_root(child, rel, label, pod)? {
                        found.push(agent);
                    }
                } else if depth + 1 < governance_common::MAX_CGROUP_DEPTH {
                    stack.push((child, depth + 1));
                }
            }
        }
    }
    if let Some(ids) = pods {
        ids.forget_deleted(&live_pods);
    }
    // Never the daemon's own cgroup or one above it (red team round 30: a selector that covered
    // it made the daemon an agent of its own programs, which refused its proxy listener's
    // mark, and it stopped; on Kubernetes, `pod_labels: {}` matches the daemon's pod too).
    // Left out, and said once: the daemon cannot govern itself, and failing the whole
    // discovery would leave every new agent ungoverned.
    if let Some(own) = own_cgroup(root) {
        found.retain(|agent| {
            let holds = own.starts_with(&agent.path);
            if holds && said_once(&agent.path) {
                crate::say!(
                    "agent `{}`: cgroup {} holds the daemon itself ({}): left out of the agents (the daemon cannot govern itself); select the agents' cgroups below it, or run the daemon outside it",
                    agent.name,
                    agent.path.display(),
                    own.display()
                );
            }
            !holds
        });
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    for (i, a) in found.iter_mut().enumerate() {
        a.index = i;
    }
    Ok(found)
}

/// True the first time `path` is given (a warning said once per cgroup).
fn said_once(path: &Path) -> bool {
    static SAID: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    SAID.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_owned())
}

/// The daemon's own cgroup below `root` (the cgroup2 mount), found once: the path
/// `/proc/self/cgroup` gives, where that cgroup has this process; else (a cgroup namespace
/// shows its own root as `/`, as in a pod) the cgroup whose `cgroup.procs` lists this process,
/// looked for in the tree.
fn own_cgroup(root: &Path) -> Option<&'static PathBuf> {
    static OWN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let pid = std::process::id().to_string();
        let holds = |dir: &Path| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|l| l == pid))
        };
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let named = root.join(rel.trim_start_matches('/'));
        if holds(&named) {
            return Some(named);
        }
        // Bounded, and past subtrees with no process (agents' own thousands of cgroups).
        let (mut looked, mut hit) = (0, false);
        let stopped = each_cgroup(root, |dir| {
            looked += 1;
            hit = holds(dir);
            hit || looked > 65_536
        });
        stopped.filter(|_| hit)
    })
    .as_ref()
}

/// The cgroups the selectors name, in component order (a cgroup before its descendants), if
/// every selector names one cgroup by its path alone (no glob, label or pod) and the names are
/// as validation leaves them (relative, no empty, `.` or `..` segment, within the depth the
/// walk looks); None otherwise, and then [`discover`] walks the tree.
fn literal_roots(set: &PolicySet, pods: bool) -> Option<Vec<&str>> {
    if pods {
        return None;
    }
    let mut rels = set
        .policies
        .iter()
        .map(|p| {
            let s = &p.selector;
            let rel = s
                .literal_cgroup()
                .filter(|_| s.label.is_none() && s.pod.is_none())?;
            let segments = rel.split('/');
            (segments.clone().all(|seg| !matches!(seg, "" | "." | ".."))
                && segments.count() < governance_common::MAX_CGROUP_DEPTH as usize)
                .then_some(rel)
        })
        .collect::<Option<Vec<&str>>>()?;
    rels.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    rels.dedup();
    Some(rels)
}

/// The agent root at `path` (`rel` below the cgroup2 root), which a selector matched; None if
/// it was removed since it was found (its removal is a change the daemon's watch sees).
fn agent_root(
    path: PathBuf,
    rel: String,
    label: Option<String>,
    pod: Option<crate::policy::PodIdentity>,
) -> Result<Option<AgentCgroup>, AgentsError> {
    let cgroup_id = match cgroup_id(&path) {
        Ok(id) => id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AgentsError::Cgroup {
                agent: rel,
                path,
                source,
            });
        }
    };
    let name = match (&label, &pod) {
        (Some(l), _) => l.clone(),
        (None, Some(p)) => format!("{}/{}", p.namespace, p.name),
        (None, None) => rel.clone(),
    };
    Ok(Some(AgentCgroup {
        index: 0,
        name,
        rel,
        label,
        cgroup_id,
        path,
        pod,
    }))
}

/// Every cgroup below `root`, by id (for naming cgroup ids in reports).
pub fn cgroup_paths(root: &Path) -> std::collections::HashMap<u64, PathBuf> {
    let mut out = std::collections::HashMap::new();
    each_cgroup(root, |dir| {
        if let Ok(id) = cgroup_id(dir) {
            out.insert(id, dir.to_owned());
        }
        false
    });
    out
}

/// Visit `root` and the cgroups below it (down to the kernel's depth) until `stop` says so;
/// the cgroup it stopped at.
fn each_cgroup(root: &Path, mut stop: impl FnMut(&Path) -> bool) -> Option<PathBuf> {
    let mut stack = vec![(root.to_owned(), 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        if stop(&dir) {
            return Some(dir);
        }
        if depth < governance_common::MAX_CGROUP_DEPTH
            && let Ok(entries) = std::fs::read_dir(&dir)
        {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), depth + 1)),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let info = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw shared:10 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2(info), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(find_cgroup2("32 31 0:27 / /x rw - cgroup cgroup rw"), None);
        assert_eq!(find_cgroup2("garbage\n\n - \n"), None);
        let v1: Vec<PathBuf> = mounts_of(info, "cgroup").collect();
        assert_eq!(v1, [PathBuf::from("/sys/fs/cgroup/cpu")]);
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(crate::procfs::unescape(br"/mnt/my\040cg"), b"/mnt/my cg");
        // A name that is not UTF-8 is kept byte for byte, and hides no other mount.
        let info = b"40 1 0:50 / /home/\xff/remote rw - fuse.sshfs x rw\n41 1 0:51 / /var/lib/docker/overlay2/a/merged rw - overlay overlay rw\n";
        let points = mount_points_of(info);
        use std::os::unix::ffi::OsStrExt as _;
        assert_eq!(points[0].as_os_str().as_bytes(), b"/home/\xff/remote");
        assert_eq!(
            points[1],
            PathBuf::from("/var/lib/docker/overlay2/a/merged")
        );
        assert_eq!(crate::procfs::unescape(br"/a\\b\0"), br"/a\\b\0");
    }

    /// Selectors that each name one cgroup are looked up directly; the agents found are those
    /// the walk finds: existing directories only, none below another agent root, each once.
    /// (The walk is forced by one more policy whose glob matches nothing.)
    #[test]
    fn named_cgroups_are_found_as_the_walk_finds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["a/b/c", "a-b/c", "d/e/f/g", "h"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("file"), "").unwrap();
        let policies = |cgroups: &[&str], walk: bool| {
            let mut text = String::new();
            let globs = walk.then_some("nothing/*");
            for (i, c) in cgroups.iter().chain(&globs).enumerate() {
                text.push_str(&format!("---\nname: p{i}\nagents: {{ cgroup: '{c}' }}\n"));
            }
            crate::policy::parse(&[("p.yaml".into(), text)]).unwrap()
        };
        let cases: [&[&str]; 6] = [
            &[
                "a",
                "a/b/c",
                "a-b/c",
                "d/e/f",
                "h",
                "file",
                "missing",
                "missing/x",
            ],
            &["a/b/c", "a/b", "d/e/f/g", "d/e"],
            &["h", "h", "a-b", "a"],
            &["d/e/f/g"],
            &["missing"],
            &["a/b", "a-b/c/x", "d"],
        ];
        for cgroups in cases {
            let named = discover(root, &policies(cgroups, false), false, None).unwrap();
            let walked = discover(root, &policies(cgroups, true), false, None).unwrap();
            assert_eq!(named, walked, "{cgroups:?}");
            assert!(literal_roots(&policies(cgroups, false), false).is_some());
            assert!(literal_roots(&policies(cgroups, true), false).is_none());
        }
    }

    /// A tree that does not read is no answer, never "no agents" (red team round 16: a daemon
    /// out of descriptors read the tree as empty, and the reload dropped every agent). A
    /// cgroup removed meanwhile is fine. (A root that is not a directory stands in for a
    /// listing that fails: EMFILE cannot be made here without starving the test runner.)
    #[test]
    fn a_tree_that_does_not_list_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-directory");
        std::fs::write(&file, "").unwrap();
        let set = crate::policy::parse(&[(
            "p.yaml".into(),
            "name: p\nagents: { cgroup: 'agents/*' }\n".into(),
        )])
        .unwrap();
        let err = discover(&file, &set, false, None).unwrap_err();
        assert!(matches!(err, AgentsError::Walk { .. }), "{err}");
        assert!(
            discover(&tmp.path().join("gone"), &set, false, None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn this_machine_has_cgroup2_and_ids_are_inodes() {
        let root = cgroup2_mount().unwrap();
        let id = cgroup_id(&root).unwrap();
        assert_ne!(id, 0);
    }
}
