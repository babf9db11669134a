//! What the daemon watches: the policy directory, the cgroup tree, and the directories of the
//! Unix sockets the kernel decides on by identity (inotify, for tokio).

use std::{
    collections::HashMap,
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context as _;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use super::burst::Change;
use crate::kernel::{self, Enforcer};

/// inotify for tokio.
pub(super) struct Watch {
    inotify: Inotify,
    /// The directory of each watch, where the events' names are wanted (the policy
    /// directory's; empty for the others).
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

/// One of the daemon's watches, kept for its life: the inotify instance is made once and its
/// directories are added again on the same instance when they may have changed. An agent
/// running as root shares root's per-user inotify limits with the daemon (128 instances, a
/// number of watches), so a watch made anew on every change was refused once an agent held
/// them all, and the error stopped the daemon (red team round 15). A watch that has no instance
/// (none could be made, or tokio could not register it) or that could not add a directory of
/// its tree is *blind*; the daemon then looks for itself once a second.
pub(super) struct Kept {
    fd: Option<AsyncFd<Watch>>,
    /// Every directory asked for was added (or was gone meanwhile).
    complete: bool,
    /// What is watched, for the log.
    what: &'static str,
    /// That it is blind was logged.
    told: bool,
}

impl Kept {
    pub(super) fn new(what: &'static str) -> Self {
        Self {
            fd: None,
            complete: false,
            what,
            told: false,
        }
    }

    /// Whether something it should report could go unseen.
    pub fn blind(&self) -> bool {
        self.fd.is_none() || !self.complete
    }

    /// Add `dirs` (each with its subdirectories down to `depth` levels, keeping each watch's
    /// directory if `named`), on the instance there is, else on a new one. Says once when the
    /// watch goes blind, and when it sees again.
    fn add(&mut self, dirs: &[PathBuf], flags: AddWatchFlags, depth: u32, named: bool) {
        self.add_pruned(dirs, flags, depth, named, &HashMap::new());
    }

    /// [`Kept::add`], where each directory of `prune` is watched with its own flags and not
    /// descended into.
    fn add_pruned(
        &mut self,
        dirs: &[PathBuf],
        flags: AddWatchFlags,
        depth: u32,
        named: bool,
        prune: &HashMap<&Path, AddWatchFlags>,
    ) {
        let why = match self.add_dirs(dirs, flags, depth, named, prune) {
            Ok(()) if self.complete => None,
            Ok(()) => Some("a directory could not be added".to_owned()),
            Err(e) => Some(e),
        };
        match why {
            Some(why) if !self.told => {
                self.told = true;
                tracing::error!(
                    "watching {}: {why}; looked at once a second instead until a watch can be \
                     made (an agent running as root shares root's inotify limits: \
                     fs.inotify.max_user_instances, max_user_watches)",
                    self.what
                );
            }
            None if self.told => {
                self.told = false;
                tracing::info!("watching {} again", self.what);
            }
            _ => {}
        }
    }

    fn add_dirs(
        &mut self,
        dirs: &[PathBuf],
        flags: AddWatchFlags,
        depth: u32,
        named: bool,
        prune: &HashMap<&Path, AddWatchFlags>,
    ) -> Result<(), String> {
        self.complete = false;
        if self.fd.is_none() {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| format!("inotify_init: {e}"))?;
            let w = Watch {
                inotify,
                dirs: HashMap::new(),
            };
            // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
            let fd = unsafe { AsyncFd::register_with_interest(w, tokio::io::Interest::READABLE) }
                .map_err(|e| format!("registering with the runtime: {}", e.into_parts().1))?;
            self.fd = Some(fd);
        }
        let Some(fd) = self.fd.as_mut() else {
            return Ok(());
        };
        let w = fd.get_mut();
        w.dirs.clear();
        let mut complete = true;
        let mut todo: Vec<(PathBuf, u32)> = dirs.iter().map(|d| (d.clone(), 0)).collect();
        while let Some((d, level)) = todo.pop() {
            let pruned = prune.get(d.as_path());
            match w.inotify.add_watch(&d, pruned.copied().unwrap_or(flags)) {
                Ok(wd) if named => {
                    w.dirs.insert(wd, d.clone());
                }
                Ok(_) => {}
                // Removed meanwhile (or not there yet: a socket directory made later, which
                // the once-a-second look covers).
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => continue,
                Err(_) => {
                    complete = false;
                    continue;
                }
            }
            if level < depth && pruned.is_none() {
                match std::fs::read_dir(&d) {
                    Ok(rd) => todo.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| (e.path(), level + 1)),
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Its subdirectories are not watched (out of descriptors, say).
                    Err(_) => complete = false,
                }
            }
        }
        self.complete = complete;
        Ok(())
    }

    /// Wait until it reports something and swallow it (never, without an instance).
    /// Cancel-safe, as [`changed`].
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        match &mut self.fd {
            Some(w) => changed(w).await,
            None => std::future::pending().await,
        }
    }
}

/// The directories of the Unix sockets the kernel decides on by identity (runtime sockets, the
/// sockets `unix` rules name): a socket re-created there has a new identity. Added again after
/// each generation (its rules may name other sockets); one that does not exist is covered by
/// the once-a-second look.
pub(super) fn watch_sockets(w: &mut Kept, enforcer: &Mutex<Enforcer>) {
    let rule_paths = enforcer
        .lock()
        .map(|e| e.unix_rule_paths())
        .unwrap_or_default();
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB;
    let dirs: Vec<PathBuf> = kernel::unix::socket_dirs(&rule_paths).into_iter().collect();
    w.add(&dirs, flags, 0, false);
}

/// Look at the sockets the kernel decides on by identity again: a runtime socket that
/// appeared or was re-created is refused at once; a socket a rule names needs the next
/// generation (true).
pub(super) fn sockets_changed(enforcer: &Mutex<Enforcer>) -> bool {
    let Ok(mut e) = enforcer.lock() else {
        return false;
    };
    // The dynamic loaders too (a glibc upgrade): into the kernel's table at once, no
    // generation needed. (First: it reads the mounts again for both.)
    match e.loaders_changed() {
        Ok(true) => tracing::info!("the dynamic loaders changed; the kernel knows the new ones"),
        Ok(false) => {}
        Err(err) => tracing::error!("updating the dynamic loaders: {err}"),
    }
    match e.unix_sockets_changed() {
        Ok(c) => {
            if c.runtime {
                tracing::info!("the runtime sockets changed; the ones that exist are refused");
            }
            c.rules
        }
        Err(err) => {
            tracing::error!("refusing the runtime sockets: {err}");
            false
        }
    }
}

/// The policy directory and its subdirectories, with what tells a file being written
/// (`IN_MODIFY` until `IN_CLOSE_WRITE`, see [`super::burst`]).
pub(super) fn watch_policy(w: &mut Kept, dir: &Path) {
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    w.add(&[dir.to_owned()], flags, 16, true);
}

/// cgroups appearing, going, or getting a label (an xattr change is IN_ATTRIB). Not below the
/// `agents`' roots: a cgroup made in an agent is part of it, and discovery stops there too; an
/// agent root itself is watched for its label (its removal is its parent's `IN_DELETE`). An
/// agent that made thousands of cgroups in its subtree (which it may) made every change to the
/// tree a walk of them all, on the loop that finds new agents, and held root's inotify watches:
/// a new agent's processes ran ungoverned for seconds (red team round 29).
pub(super) fn watch_cgroups(w: &mut Kept, root: &Path, agents: &[crate::agents::AgentCgroup]) {
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_ONLYDIR;
    let prune: HashMap<&Path, AddWatchFlags> = agents
        .iter()
        .map(|a| {
            (
                a.path.as_path(),
                AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_ONLYDIR,
            )
        })
        .collect();
    w.add_pruned(
        &[root.to_owned()],
        flags,
        governance_common::MAX_CGROUP_DEPTH,
        false,
        &prune,
    );
}

/// The agents' processes coming and going: each agent root's `cgroup.events`, which the kernel
/// modifies when its subtree becomes populated or empty (the proxy's listeners in the agents'
/// network namespaces follow their processes, see `netns`). An agent cgroup gone meanwhile is
/// left out.
pub(super) fn watch_populated(w: &mut Kept, agents: &[crate::agents::AgentCgroup]) {
    let files: Vec<PathBuf> = agents
        .iter()
        .map(|a| a.path.join("cgroup.events"))
        .collect();
    w.add(&files, AddWatchFlags::IN_MODIFY, 0, false);
}

/// Wait until `w` is readable and swallow what it says. Cancel-safe: nothing is consumed
/// unless the future completes, so a select! arm can be dropped without losing a change.
pub(super) async fn changed(w: &mut AsyncFd<Watch>) -> anyhow::Result<()> {
    events(w).await.map(drop)
}

/// Wait until `w` is readable and take what it says (cancel-safe, as [`changed`]).
async fn events(w: &mut AsyncFd<Watch>) -> anyhow::Result<Vec<InotifyEvent>> {
    let mut guard = w.readable_mut().await.context("inotify")?;
    let events = guard.get_inner().inotify.read_events().unwrap_or_default();
    guard.clear_ready();
    Ok(events)
}

/// The policy directory's changes ([`watch_policy`]), as the burst takes them (never, without
/// an instance).
pub(super) async fn policy_changes(w: &mut Kept) -> anyhow::Result<Vec<Change>> {
    let Some(w) = &mut w.fd else {
        return std::future::pending().await;
    };
    let events = events(w).await?;
    Ok(w.get_ref().changes(&events))
}

/// The policy directory's changes already reported and not yet taken (none: nothing waits).
pub(super) fn pending_policy_changes(w: &Kept) -> Vec<Change> {
    let Some(w) = &w.fd else {
        return Vec::new();
    };
    let w = w.get_ref();
    w.changes(&w.inotify.read_events().unwrap_or_default())
}

/// What the policy directory holds, for a blind policy watch's once-a-second look: each
/// entry's name, inode, size and modification time, down to the depth the watch goes
/// (through symlinks, as the policy is read: a ConfigMap's `..data`).
pub(super) fn policy_fingerprint(dir: &Path) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut todo = vec![(dir.to_owned(), 0u32)];
    let mut seen = 0usize;
    while let Some((d, level)) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            seen += 1;
            if seen > 100_000 {
                return h.finish();
            }
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            h.write(p.as_os_str().as_encoded_bytes());
            h.write_u64(m.ino());
            h.write_u64(m.len());
            h.write_i64(m.mtime());
            h.write_i64(m.mtime_nsec());
            if m.is_dir() && level < 16 {
                todo.push((p, level + 1));
            }
        }
    }
    h.finish()
}

impl Watch {
    /// What the policy directory's events say.
    fn changes(&self, events: &[InotifyEvent]) -> Vec<Change> {
        events.iter().map(|e| change(&self.dirs, e)).collect()
    }
}

/// What one event of the policy directory's watch says.
fn change(dirs: &HashMap<WatchDescriptor, PathBuf>, e: &InotifyEvent) -> Change {
    let m = e.mask;
    if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return Change::Lost;
    }
    let (Some(dir), Some(name)) = (dirs.get(&e.wd), &e.name) else {
        return Change::Other;
    };
    let path = dir.join(name);
    if m.contains(AddWatchFlags::IN_CREATE) {
        if m.contains(AddWatchFlags::IN_ISDIR) {
            // Not watched until the reload: what is written into it meanwhile is not seen.
            return Change::Unsure;
        }
        // A regular file with one name and nothing in it yet was just created by its writer
        // (`generate > policy.yaml`: the shell makes the file, the program writes it later).
        // Written already, its writes follow as IN_MODIFY; a symlink or a hard link is whole
        // as made.
        return match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() && m.nlink() == 1 && m.len() == 0 => {
                Change::Writing(path)
            }
            _ => Change::Other,
        };
    }
    if m.contains(AddWatchFlags::IN_MODIFY) {
        Change::Writing(path)
    } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
        Change::Closed(path)
    } else if m.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
        Change::Gone(path)
    } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
        Change::MovedIn(path)
    } else {
        Change::Other
    }
}

/// The daemon's three watches.
pub(super) struct Watches {
    pub policy: Kept,
    pub cgroups: Kept,
    pub sockets: Kept,
}

impl Watches {
    /// Watch the policy directory, the cgroup tree below `root`, and the socket directories.
    /// Never fails: a watch that cannot be made is blind (see [`Kept`]).
    pub fn new(
        policy: &Path,
        root: &Path,
        agents: &[crate::agents::AgentCgroup],
        enforcer: &Mutex<Enforcer>,
    ) -> Self {
        let mut w = Self {
            policy: Kept::new("the policy directory"),
            cgroups: Kept::new("the cgroup tree"),
            sockets: Kept::new("the runtime sockets' directories"),
        };
        watch_policy(&mut w.policy, policy);
        watch_cgroups(&mut w.cgroups, root, agents);
        watch_sockets(&mut w.sockets, enforcer);
        w
    }
}

/// A Kubernetes identity changed (never, without `--kubernetes`).
pub(super) async fn pods_changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let alive = match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !alive {
        std::future::pending::<()>().await;
    }
}

pub(super) fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleep until `due`, or forever when nothing is due.
pub(super) async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, time::Duration};

    use super::*;

    const POLICY: &str = "name: NAME\nagents: { cgroup: agents/bot }\n";

    /// A ConfigMap volume as the kubelet writes it: the files in a timestamped directory,
    /// `..data` a symlink to it, each key a symlink through `..data`.
    fn configmap_version(dir: &Path, stamp: &str, name: &str) {
        let v = dir.join(stamp);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("policy.yaml"), POLICY.replace("NAME", name)).unwrap();
    }

    /// An update swaps `..data` atomically (a new `..data_tmp` symlink renamed over it), then
    /// removes the old directory: the policy directory's watch sees the rename, and the policy
    /// loaded afterwards is the new one, read once through the key's symlink.
    #[tokio::test]
    async fn a_configmap_update_swapping_the_data_symlink_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        configmap_version(dir, "..2026_11_30_07_00_00.000000001", "old");
        symlink("..2026_11_30_07_00_00.000000001", dir.join("..data")).unwrap();
        symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
        assert_eq!(
            crate::policy::load_dir(dir).unwrap().policies[0].name,
            "old"
        );

        let mut kept = Kept::new("the test's policy directory");
        watch_policy(&mut kept, dir);
        assert!(!kept.blind());
        let w = kept.fd.as_mut().unwrap();
        configmap_version(dir, "..2026_11_30_07_05_00.000000002", "new");
        symlink("..2026_11_30_07_05_00.000000002", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join("..2026_11_30_07_00_00.000000001")).unwrap();

        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut guard = w.readable_mut().await.unwrap();
                let events = guard.get_inner().inotify.read_events().unwrap_or_default();
                guard.clear_ready();
                if events.iter().any(|e| {
                    e.mask.contains(AddWatchFlags::IN_MOVED_TO)
                        && e.name.as_deref() == Some(std::ffi::OsStr::new("..data"))
                }) {
                    break;
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "the `..data` rename was not seen");
        let set = crate::policy::load_dir(dir).unwrap();
        let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["new"]);
    }

    /// The cgroup watch stops at agent roots (red team round 29): what an agent makes in its
    /// subtree, deep or right below its root, is not watched (nor walked), while a cgroup made
    /// elsewhere and an agent root's own attributes (its label) are reported. A plain
    /// directory tree stands for the cgroup tree (inotify is the same).
    #[tokio::test]
    async fn the_cgroup_watch_stops_at_agent_roots() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["agent/x/y", "other"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let agent = crate::agents::AgentCgroup {
            index: 0,
            name: "agent".into(),
            rel: "agent".into(),
            label: None,
            path: root.join("agent"),
            cgroup_id: 1,
            pod: None,
        };
        let mut w = Kept::new("the test's cgroup tree");
        watch_cgroups(&mut w, root, &[agent]);
        assert!(!w.blind());
        // Reported events, until `expect` is among them (10 s), or what came for 200 ms.
        async fn events_for(w: &mut Kept, expect: Option<&str>) -> Vec<String> {
            let fd = w.fd.as_mut().unwrap();
            let mut names = Vec::new();
            let wait = if expect.is_some() { 10_000 } else { 200 };
            let _ = tokio::time::timeout(Duration::from_millis(wait), async {
                loop {
                    let mut guard = fd.readable_mut().await.unwrap();
                    let events = guard.get_inner().inotify.read_events().unwrap_or_default();
                    guard.clear_ready();
                    names.extend(events.iter().map(|e| {
                        e.name
                            .as_deref()
                            .map_or("(self)".into(), |n| n.to_string_lossy().into_owned())
                    }));
                    if expect.is_some_and(|x| names.iter().any(|n| n == x)) {
                        break;
                    }
                }
            })
            .await;
            names
        }
        // Inside the agent: nothing reported (so no walk follows).
        std::fs::create_dir(root.join("agent/x/y/deep")).unwrap();
        std::fs::create_dir(root.join("agent/child")).unwrap();
        assert_eq!(events_for(&mut w, None).await, Vec::<String>::new());
        // Elsewhere: reported.
        std::fs::create_dir(root.join("other/new")).unwrap();
        assert!(
            events_for(&mut w, Some("new"))
                .await
                .contains(&"new".into())
        );
        // The agent root's own attributes (a label is an xattr, IN_ATTRIB as a mode is).
        std::fs::set_permissions(root.join("agent"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let seen = events_for(&mut w, Some("(self)")).await;
        assert!(seen.iter().any(|n| n == "(self)"), "{seen:?}");
    }

    /// Read the watch until `done` holds for the burst, or fail after 10 s.
    async fn until_burst(
        w: &mut Kept,
        b: &mut super::super::burst::Burst,
        done: impl Fn(&super::super::burst::Burst) -> bool,
        what: &str,
    ) {
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            while !done(b) {
                let c = policy_changes(w).await.unwrap();
                b.note(c, tokio::time::Instant::now());
            }
        })
        .await;
        assert!(r.is_ok(), "{what}: not seen within 10 s; the burst: {b:?}");
    }

    /// Through a real inotify: a file the shell made for a generator's output holds the reload
    /// (it is empty, then half-written) until its writer closes it; a file written elsewhere
    /// and renamed in is due after the quiet at once.
    #[tokio::test]
    async fn a_policy_file_is_read_only_once_its_writer_has_closed_it() {
        use std::io::Write as _;

        use super::super::burst::{Burst, Due, NOTE_AFTER};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut w = Kept::new("the test's policy directory");
        watch_policy(&mut w, dir);
        let mut b = Burst::default();
        let holds = |b: &Burst| {
            b.due()
                .is_some_and(|d| d >= tokio::time::Instant::now() + NOTE_AFTER / 2)
        };

        // Created empty, nothing written yet: held.
        let mut f = std::fs::File::create(dir.join("gen.yaml")).unwrap();
        until_burst(&mut w, &mut b, holds, "the creation").await;
        // Half a policy written: still held.
        f.write_all(b"name: half\n").unwrap();
        until_burst(&mut w, &mut b, holds, "the first write").await;
        // Closed: due after the quiet.
        f.write_all(b"agents: { cgroup: agents/bot }\n").unwrap();
        drop(f);
        until_burst(
            &mut w,
            &mut b,
            |b| b.due().is_some() && !holds(b),
            "the close",
        )
        .await;
        assert_eq!(b.fire(), Due::Reload);

        // Written elsewhere, renamed in: due after the quiet, never held.
        let staged = tmp.path().join("..staged");
        std::fs::write(&staged, POLICY.replace("NAME", "whole")).unwrap();
        let mut w = Kept::new("the test's policy directory");
        watch_policy(&mut w, dir);
        let mut b = Burst::default();
        std::fs::rename(&staged, dir.join("whole.yaml")).unwrap();
        until_burst(&mut w, &mut b, |b| b.due().is_some(), "the rename").await;
        assert!(!holds(&b), "a renamed file is whole: {b:?}");
    }
}
