//! The pins on bpffs: mounting it, unloading, the build that pinned, and promoting a staged
//! handover.

use super::*;

/// Make sure `pin_dir` is on a bpf filesystem, mounting one at /sys/fs/bpf if that is where it
/// belongs and nothing is mounted there yet.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if on_bpffs(existing) {
        return Ok(());
    }
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs) {
        let _ = std::fs::create_dir_all(bpffs);
        // Root's alone: the kernel's default mode is 1777.
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| KernelError::Pin {
            path: bpffs.to_owned(),
            source: std::io::Error::from(e),
        })?;
        if on_bpffs(bpffs) {
            return Ok(());
        }
    }
    Err(KernelError::Pin {
        path: pin_dir.to_owned(),
        source: std::io::Error::other("not on a bpf filesystem (mount -t bpf bpf DIR)"),
    })
}

/// Whether `p` is on a bpf filesystem.
fn on_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Make `pin_dir` and its `maps` and `links` directories (root's, 0700) and check that no one
/// but root can change them or the directories above them, up to the bpf filesystem's root:
/// removing a link's pin detaches its program, so whoever could write there could end
/// enforcement (red team round 28: a pin directory a user made before the daemon's first start
/// was theirs, and so were the links in it). A directory above may be writable by others if
/// it is sticky (bpffs's own root is 1777 when mounted without a mode): others cannot remove
/// or rename root's entries there. Symlinks are refused.
pub(super) fn secure_pin_dirs(pin_dir: &Path) -> Result<(), KernelError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let pin_err = |path: &Path, problem: String| KernelError::Pin {
        path: path.to_owned(),
        source: std::io::Error::other(problem),
    };
    let ours = [
        pin_dir.to_owned(),
        pin_dir.join(pins::MAPS),
        pin_dir.join(pins::LINKS),
    ];
    for dir in &ours {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KernelError::Pin {
                path: dir.clone(),
                source,
            })?;
    }
    let bpffs_root = pin_dir
        .ancestors()
        .find(|p| p.parent().is_none_or(|up| !on_bpffs(up)))
        .unwrap_or(pin_dir);
    let above = pin_dir
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(bpffs_root))
        .map(Path::to_owned);
    for (dir, own) in ours
        .iter()
        .map(|d| (d.clone(), true))
        .chain(above.map(|d| (d, false)))
    {
        let meta = std::fs::symlink_metadata(&dir).map_err(|source| KernelError::Pin {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(pin_err(&dir, "not a directory (a symlink?)".into()));
        }
        let writable_by_others = meta.mode() & 0o022 != 0 && (own || meta.mode() & 0o1000 == 0);
        if meta.uid() != 0 || writable_by_others {
            return Err(pin_err(
                &dir,
                format!(
                    "owned by uid {} with mode {:o}: whoever can write it can remove the pins, \
                     which ends enforcement; remove it (`governance unload --pins {}`, then \
                     rmdir) or give it to root with mode 0700",
                    meta.uid(),
                    meta.mode() & 0o7777,
                    pin_dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Remove a pinned link, and detach its program before returning. The pin is opened first
/// and closed after it is gone: from Linux 6.12 the kernel frees a link whose last reference
/// was its pin later, from a work queue (`bpf_link_put`), so its program could still decide
/// for a while after the unlink; closing a descriptor frees it at once
/// (`bpf_link_put_direct`). A pin that is not a link is removed as a file.
fn remove_link(path: &Path) -> std::io::Result<()> {
    match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(link) => link.unpin().map(drop),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Remove the pins below `pin_dir`: links first (which detaches the programs, by the time this
/// returns), then maps. Returns the names removed.
pub fn unload(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    // A handover's staged pins first (both builds' programs go).
    let next = pin_dir.join(HANDOVER_DIR);
    if next.exists() {
        removed.extend(
            unload(&next)?
                .into_iter()
                .map(|r| format!("{HANDOVER_DIR}/{r}")),
        );
    }
    // The set stops being a whole one of its build before its first link goes: an unload cut
    // short leaves what a start takes for another build's and replaces, never one it adopts
    // with hooks missing (red team round 33).
    disown(pin_dir);
    for sub in [pins::LINKS, pins::MAPS] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if sub == pins::LINKS {
                remove_link(&e.path())?;
            } else {
                std::fs::remove_file(e.path())?;
            }
            removed.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
        std::fs::remove_dir(&dir)?;
    }
    if pin_dir.exists() {
        std::fs::remove_dir(pin_dir)?;
    }
    Ok(removed)
}

/// Clear the build id of the pins under `pin_dir`, if any (see [`pinned_build`]).
fn disown(pin_dir: &Path) {
    if let Ok(mut state) = pinned_state(pin_dir) {
        let _ = state.set(STATE_BUILD, 0, 0);
    }
}

/// Whether any link is pinned under `pin_dir` (its programs are attached).
pub(super) fn has_links(pin_dir: &Path) -> bool {
    std::fs::read_dir(pin_dir.join(pins::LINKS)).is_ok_and(|mut d| d.next().is_some())
}

/// The build id the pins under `pin_dir` were made by (the one map every build keeps at the
/// same place: [`maps::STATE`], index [`STATE_BUILD`]).
pub(super) fn pinned_build(pin_dir: &Path) -> Result<u32, KernelError> {
    pinned_state(pin_dir)?
        .get(&STATE_BUILD, 0)
        .map_err(|source| KernelError::Map {
            name: maps::STATE,
            source,
        })
}

/// The [`maps::STATE`] map pinned under `pin_dir`.
fn pinned_state(pin_dir: &Path) -> Result<Array<MapData, u32>, KernelError> {
    let name = maps::STATE;
    let data = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
        .map_err(|source| KernelError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
    Array::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// Replace the pins under `dir` with the staged ones under `staged`: first the old set is
/// disowned (its build id cleared: a start after a crash from here on finishes this), then
/// the old links go (their programs detach; the staged ones are attached already), then the
/// old maps, then the staged directories move into place (a rename on the bpf filesystem).
/// Each step is skipped where a crash left it done, so a start can run it again from anywhere
/// (red team round 33: a crash between the renames left new maps that the next start removed
/// as old ones, and every start after it failed).
pub(super) fn promote(dir: &Path, staged: &Path) -> Result<(), KernelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KernelError::Pin { path, source }
    };
    if staged.join(pins::MAPS).exists() {
        // (Not yet replaced: the maps at `dir` are the old set's.)
        disown(dir);
    }
    for sub in [pins::LINKS, pins::MAPS] {
        if !staged.join(sub).exists() {
            // Moved into place already: what is at `dir` is the staged set's.
            continue;
        }
        let old = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&old) {
            for e in entries.flatten() {
                let removed = if sub == pins::LINKS {
                    remove_link(&e.path())
                } else {
                    std::fs::remove_file(e.path())
                };
                removed.map_err(io(&e.path()))?;
            }
            std::fs::remove_dir(&old).map_err(io(&old))?;
        }
    }
    for sub in [pins::MAPS, pins::LINKS] {
        let from = staged.join(sub);
        if from.exists() {
            std::fs::rename(&from, dir.join(sub)).map_err(io(&from))?;
        }
    }
    std::fs::remove_dir(staged).map_err(io(staged))?;
    Ok(())
}

/// The processes the kernel programs pinned under `pin_dir` protect ([`maps::PROTECTED`]: the
/// daemon that loaded them), read from the pin. None if nothing readable is pinned there.
fn pinned_protected(pin_dir: &Path) -> Option<Vec<(u32, u32)>> {
    let path = pin_dir.join(pins::MAPS).join(maps::PROTECTED);
    if !path.exists() {
        return None;
    }
    let map = Map::from_map_data(MapData::from_pin(&path).ok()?).ok()?;
    let protected: HashMap<_, u32, u32> = HashMap::try_from(map).ok()?;
    Some(protected.iter().filter_map(Result::ok).collect())
}

/// Is `pid` a process the kernel protects from agents (a governance daemon: its tgid is in the
/// [`maps::PROTECTED`] of some pinned set of programs, with the start stamp it has now, so that a
/// process given a stopped daemon's pid is not taken for it; red team round 22)? Looks in `extra` (`GOVERNANCE_PINS`),
/// the default pin directory and each directory directly below /sys/fs/bpf. None if no pinned
/// programs were found at all (nothing enforces on this node, or they are pinned elsewhere).
pub fn protected_by_kernel(pid: u32, extra: Option<&Path>) -> Option<bool> {
    let bpffs = Path::new("/sys/fs/bpf");
    let mut dirs: Vec<PathBuf> = extra.into_iter().map(Path::to_owned).collect();
    dirs.push(PathBuf::from(pins::DIR));
    if let Ok(entries) = std::fs::read_dir(bpffs) {
        dirs.extend(entries.flatten().map(|e| e.path()).take(256));
    }
    let stamp = crate::procfs::start_stamp(pid);
    let mut found = false;
    for dir in dirs {
        if let Some(pids) = pinned_protected(&dir) {
            if pids.contains(&(pid, stamp)) && stamp != 0 {
                return Some(true);
            }
            found = true;
        }
    }
    found.then_some(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Red team round 28: a pin directory someone else can write is refused, with what to do;
    /// root's 0700 (made by the check) and root's 0755 are kept.
    #[test]
    fn pin_directories_others_can_write_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pins = tmp.path().join("pins");
        secure_pin_dirs(&pins).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&pins), 0o700);
        assert_eq!(mode(&pins.join(pins::MAPS)), 0o700);
        std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_pin_dirs(&pins).unwrap();
        for (dir, m) in [(pins.join(pins::LINKS), 0o777), (pins.clone(), 0o1777)] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).unwrap();
            let e = secure_pin_dirs(&pins).unwrap_err().to_string();
            assert!(e.contains("ends enforcement"), "{e}");
            assert!(e.contains(&dir.display().to_string()), "{e}");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(pins.join(pins::MAPS), Some(65534), None).unwrap();
            let e = secure_pin_dirs(&pins).unwrap_err().to_string();
            assert!(e.contains("uid 65534"), "{e}");
        }
        // A symlink in its place is no directory of ours.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(secure_pin_dirs(&link).is_err());
    }
}
