//! What the daemon watches: the policy directory, the cgroup tree, and the directories of the
//! Unix sockets the kernel decides on by identity (inotify, for tokio).

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context as _;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::kernel::{self, Enforcer};

/// inotify for tokio.
pub(super) struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watch `dir` and its subdirectories (down to `depth` levels).
fn watch(dir: &Path, flags: AddWatchFlags, depth: u32) -> anyhow::Result<AsyncFd<Watch>> {
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let mut dirs: Vec<(PathBuf, u32)> = vec![(dir.to_owned(), 0)];
    while let Some((d, level)) = dirs.pop() {
        if let Err(e) = inotify.add_watch(&d, flags) {
            if level == 0 {
                return Err(e).with_context(|| format!("watching {}", d.display()));
            }
            continue; // removed meanwhile
        }
        if level < depth
            && let Ok(rd) = std::fs::read_dir(&d)
        {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), level + 1)),
            );
        }
    }
    // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
    unsafe { AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching {}: {}", dir.display(), e.into_parts().1))
}

/// The directories of the Unix sockets the kernel decides on by identity (runtime sockets, the
/// sockets `unix` rules name): a socket re-created there has a new identity.
pub(super) fn watch_sockets(enforcer: &Mutex<Enforcer>) -> anyhow::Result<AsyncFd<Watch>> {
    let rule_paths = enforcer
        .lock()
        .map(|e| e.unix_rule_paths())
        .unwrap_or_default();
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB;
    for dir in kernel::unix::socket_dirs(&rule_paths) {
        // A directory removed meanwhile: the once-a-second check covers it.
        let _ = inotify.add_watch(&dir, flags);
    }
    // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
    unsafe { AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the socket directories: {}", e.into_parts().1))
}

/// Look at the sockets the kernel decides on by identity again: a runtime socket that
/// appeared or was re-created is refused at once; a socket a rule names needs the next
/// generation (true).
pub(super) fn sockets_changed(enforcer: &Mutex<Enforcer>) -> bool {
    let Ok(mut e) = enforcer.lock() else {
        return false;
    };
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

pub(super) fn watch_policy(dir: &Path) -> anyhow::Result<AsyncFd<Watch>> {
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    watch(dir, flags, 16)
}

/// cgroups appearing, going, or getting a label (an xattr change is IN_ATTRIB).
pub(super) fn watch_cgroups(root: &Path) -> anyhow::Result<AsyncFd<Watch>> {
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_ONLYDIR;
    watch(root, flags, governance_common::MAX_CGROUP_DEPTH)
}

/// Wait until `w` is readable and swallow what it says. Cancel-safe: nothing is consumed
/// unless the future completes, so a select! arm can be dropped without losing a change.
pub(super) async fn changed(w: &mut AsyncFd<Watch>) -> anyhow::Result<()> {
    let mut guard = w.readable_mut().await.context("inotify")?;
    let _ = guard.get_inner().0.read_events();
    guard.clear_ready();
    Ok(())
}

/// The daemon's three watches.
pub(super) struct Watches {
    pub policy: AsyncFd<Watch>,
    pub cgroups: AsyncFd<Watch>,
    pub sockets: AsyncFd<Watch>,
}

impl Watches {
    /// Watch the policy directory, the cgroup tree below `root`, and the socket directories
    /// (again after a new generation: its directories and sockets may be new).
    pub fn new(policy: &Path, root: &Path, enforcer: &Mutex<Enforcer>) -> anyhow::Result<Self> {
        Ok(Self {
            policy: watch_policy(policy)?,
            cgroups: watch_cgroups(root)?,
            sockets: watch_sockets(enforcer)?,
        })
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
