//! The pins on bpffs: mounting it, unloading, the build that pinned, and promoting a staged
//! handover.

use super::*;

/// Make sure `pin_dir` is on a bpf filesystem, mounting one at /sys/fs/bpf if that is where it
/// belongs and nothing is mounted there yet.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if on_bpffs(existing) {
        return Ok(());
    }
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs) {
        let _ = std::fs::create_dir_all(bpffs);
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
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

/// Whether any link is pinned under `pin_dir` (its programs are attached).
pub(super) fn has_links(pin_dir: &Path) -> bool {
    std::fs::read_dir(pin_dir.join(pins::LINKS)).is_ok_and(|mut d| d.next().is_some())
}

/// The build id the pins under `pin_dir` were made by (the one map every build keeps at the
/// same place: [`maps::STATE`], index [`STATE_BUILD`]).
pub(super) fn pinned_build(pin_dir: &Path) -> Result<u32, KernelError> {
    let name = maps::STATE;
    let data = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
        .map_err(|source| KernelError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
    let state: Array<_, u32> =
        Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
    state
        .get(&STATE_BUILD, 0)
        .map_err(|source| KernelError::Map { name, source })
}

/// Replace the pins under `dir` with the staged ones under `staged`: first the old links go
/// (their programs detach; the staged ones are attached already), then the old maps, then the
/// staged directories move into place (a rename on the bpf filesystem).
pub(super) fn promote(dir: &Path, staged: &Path) -> Result<(), KernelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KernelError::Pin { path, source }
    };
    for sub in [pins::LINKS, pins::MAPS] {
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
        std::fs::rename(&from, dir.join(sub)).map_err(io(&from))?;
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
