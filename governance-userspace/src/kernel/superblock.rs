//! The device the kernel's programs key a file on: its superblock's (`inode->i_sb->s_dev`),
//! except on btrfs once the programs know its subvolumes (see governance-ebpf subvolume.rs):
//! there, the file's subvolume's, which `stat` reports.
//!
//! `stat` reports another device than the superblock's for a file in a btrfs subvolume (each
//! subvolume has an anonymous device of its own, the top-level one included) and for overlayfs
//! over layers on several filesystems, so identities computed from `st_dev` never matched there
//! (red team round 31: on a btrfs root the dynamic loader was not known as one, and every
//! identity rule was missed). `/proc/self/mountinfo` prints each mount's superblock device and
//! filesystem type; a file's mount is its statx `STATX_MNT_ID`. On btrfs the superblock's
//! device alone names several files (every subvolume numbers its inodes on its own: red team
//! round 33), so there the subvolume's is the key, and the superblock's is kept for the
//! device's marker ([`superblock_of`]).

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// The superblock devices of the mounts, as `st_dev` encodes them, and each mount's (device,
/// whether btrfs) by its id.
#[derive(Default)]
struct Mounts {
    superblocks: HashSet<u64>,
    by_id: HashMap<u64, (u64, bool)>,
}

impl Mounts {
    fn read() -> Mounts {
        let text = mountinfo();
        let mut m = Mounts::default();
        for ((id, dev, _), btrfs) in lines(&text).zip(btrfs_lines(&text)) {
            m.superblocks.insert(dev);
            m.by_id.insert(id, (dev, btrfs));
        }
        m
    }
}

/// Whether each line [`lines`] reads is a btrfs mount (its filesystem type, after ` - `).
fn btrfs_lines(text: &[u8]) -> impl Iterator<Item = bool> + '_ {
    text.split(|&b| b == b'\n')
        .filter(|line| lines(line).next().is_some())
        .map(|line| {
            line.windows(3)
                .position(|w| w == b" - ")
                .is_some_and(|i| line[i + 3..].starts_with(b"btrfs "))
        })
}

/// Whether btrfs files are keyed on their subvolume's device: set by the enforcer once the
/// programs know where it is ([`crate::kernel::Enforcer::key_btrfs_subvolumes`]).
static BY_SUBVOLUME: AtomicBool = AtomicBool::new(false);

/// Key btrfs files on their subvolume's device (`on`), or on their superblock's.
pub fn key_subvolumes(on: bool) {
    BY_SUBVOLUME.store(on, Ordering::SeqCst);
}

/// Each btrfs subvolume device met ([`kernel_dev_at`]), with its superblock's (kernel
/// encoding): the device a marker for its entries is under.
static SUBVOLUMES: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);

/// The superblock device of `dev` (kernel encoding), for the device markers: a btrfs
/// subvolume's device as [`kernel_dev_at`] last met it, unless some mount's superblock has that
/// device now (a number given again); any other device is its own.
pub fn superblock_of(dev: u32) -> u32 {
    // One lock at a time (`kernel_dev_at` takes them too, on the read-ahead's thread).
    let met = SUBVOLUMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(&dev).copied());
    match met {
        Some(sb) => {
            let mut mounts = MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
            let known = mounts.get_or_insert_with(Mounts::read);
            if known
                .superblocks
                .iter()
                .any(|&d| super::kernel_dev(d) == dev)
            {
                dev
            } else {
                sb
            }
        }
        None => dev,
    }
}

/// `id parent major:minor root mount-point ...` per line: the mount's id, its superblock's
/// device (as `st_dev` encodes it) and its point (as procfs prints it).
fn lines(text: &[u8]) -> impl Iterator<Item = (u64, u64, &[u8])> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        let id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let (major, minor) = std::str::from_utf8(fields.nth(1)?).ok()?.split_once(':')?;
        let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
        Some((id, dev, fields.nth(1)?))
    })
}

static MOUNTS: Mutex<Option<Mounts>> = Mutex::new(None);

/// Each mount's point (as procfs prints it) and superblock device (kernel encoding).
fn mounted(text: &[u8]) -> impl Iterator<Item = (Vec<u8>, u32)> + '_ {
    lines(text).map(|(_, dev, point)| (point.to_vec(), super::kernel_dev(dev)))
}

/// `/proc/self/mountinfo` now (empty if it does not read), for [`mounts_of`].
pub fn mountinfo() -> Vec<u8> {
    crate::procfs::read("/proc/self/mountinfo").unwrap_or_default()
}

/// The mounts (point, device) in `mountinfo` ([`mountinfo`], read before the generation's
/// identities were: a remount meanwhile shows as a change) of the devices a generation's
/// identity entries are on (`devices`, kernel encoding), for [`remounted`].
pub fn mounts_of(mountinfo: &[u8], devices: &HashSet<u32>) -> Vec<(Vec<u8>, u32)> {
    let mut out: Vec<_> = mounted(mountinfo)
        .filter(|(_, d)| devices.contains(d))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a mount of `recorded` ([`mounts_of`]) is gone or holds another device now: a
/// filesystem unmounted and mounted again (an automounted network home expired and mounted
/// again, a disk attached again, an administrator's remount) gets another device number, so
/// the identity entries compiled for its files (keyed by device and inode) no longer match
/// them, and the next generation is due (red team round 31).
pub fn remounted(mountinfo: &[u8], recorded: &[(Vec<u8>, u32)]) -> bool {
    if recorded.is_empty() || mountinfo.is_empty() {
        return false;
    }
    let now: HashSet<(Vec<u8>, u32)> = mounted(mountinfo).collect();
    recorded.iter().any(|m| !now.contains(m))
}

/// The kernel's device (its encoding, [`super::kernel_dev`]) for the file at `path` whose
/// `stat` device is `st_dev` (`follow`: whether that `stat` followed a final symlink). A
/// device that is some mount's superblock's is the kernel's; another is looked up through the
/// file's mount, the table read again when the mount is new: a btrfs mount's file keeps
/// `st_dev` (its subvolume's) while [`key_subvolumes`] is on, any other takes the mount's
/// superblock device. `st_dev` as it is when the mount cannot be found.
pub fn kernel_dev_at(path: &Path, st_dev: u64, follow: bool) -> u32 {
    let superblock = |mounts: &mut Option<Mounts>| {
        mounts
            .get_or_insert_with(Mounts::read)
            .superblocks
            .contains(&st_dev)
    };
    if superblock(&mut MOUNTS.lock().unwrap_or_else(|e| e.into_inner())) {
        return super::kernel_dev(st_dev);
    }
    let Some(id) = mount_id(path, follow) else {
        return super::kernel_dev(st_dev);
    };
    let mount = {
        let mut mounts = MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let known = mounts.get_or_insert_with(Mounts::read);
        if !known.by_id.contains_key(&id) {
            *known = Mounts::read();
        }
        known.by_id.get(&id).copied()
    };
    // The mount table's lock let go before the subvolumes' is taken (`superblock_of` takes
    // them one at a time too: the compile and the read-ahead run on two threads).
    match mount {
        Some((sb, true)) if BY_SUBVOLUME.load(Ordering::SeqCst) => {
            let (dev, sb) = (super::kernel_dev(st_dev), super::kernel_dev(sb));
            SUBVOLUMES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(dev, sb);
            dev
        }
        Some((sb, _)) => super::kernel_dev(sb),
        None => super::kernel_dev(st_dev),
    }
}

/// Read the mounts again at the next [`kernel_dev_at`]: at the start of every identity
/// resolution and every look at the loaders and sockets, so that a mount id given again to
/// another mount, or a device number to another filesystem, is never answered from before.
pub fn forget_mounts() {
    *MOUNTS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The id of the mount `path` is on (statx `STATX_MNT_ID`, Linux 5.8).
fn mount_id(path: &Path, follow: bool) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: `c` is a NUL-terminated path and `stx` a buffer of the struct statx fills.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    // SAFETY: zeroed, then filled by a successful statx.
    let stx = unsafe { stx.assume_init() };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn mountinfo_lines_give_each_mount_s_superblock_device() {
        let text = b"22 1 0:21 / /proc rw - proc proc rw\n\
              31 1 0:40 /root / rw - btrfs /dev/vda2 rw\n\
              bad line\n\
              32 31 0:40 /home /home rw shared:1 - btrfs /dev/vda2 rw\n\
              33 1 0:41 / /btrfs rw - tmpfs btrfs rw\n";
        assert_eq!(
            btrfs_lines(text).collect::<Vec<_>>(),
            [false, true, true, false],
            "each parsed line's type (a tmpfs whose source is named btrfs is not btrfs)"
        );
        let m: Vec<_> = lines(text).take(3).collect();
        let btrfs = libc::makedev(0, 40);
        assert_eq!(
            m,
            [
                (22, libc::makedev(0, 21), &b"/proc"[..]),
                (31, btrfs, &b"/"[..]),
                (32, btrfs, &b"/home"[..]),
            ]
        );
    }

    #[test]
    fn a_mount_gone_or_on_another_device_is_a_remount() {
        let text = std::fs::read("/proc/self/mountinfo").unwrap();
        let all: Vec<_> = mounted(&text).collect();
        let root = all
            .iter()
            .find(|(p, _)| p == b"/")
            .cloned()
            .expect("a root mount");
        let devices: HashSet<u32> = [root.1].into();
        let recorded = mounts_of(&mountinfo(), &devices);
        assert!(recorded.contains(&root), "{recorded:?}");
        assert!(!remounted(&mountinfo(), &recorded), "nothing changed");
        assert!(!remounted(&mountinfo(), &[]));
        let moved = [(root.0.clone(), root.1 ^ 1)];
        assert!(
            remounted(&mountinfo(), &moved),
            "the root on another device"
        );
        let gone = [(b"/no/such/mount".to_vec(), root.1)];
        assert!(remounted(&mountinfo(), &gone), "unmounted");
    }

    /// On this machine's own filesystems `stat` and mountinfo agree; the answer is `st_dev`'s
    /// (a btrfs file, whose `st_dev` is in no mountinfo line, is the case of
    /// `host_kernel::identities_on_btrfs_are_each_subvolume_s`).
    #[test]
    fn a_file_s_device_is_its_mount_s_superblock_s() {
        for p in ["/proc/self/status", "/", "/tmp"] {
            let meta = std::fs::metadata(p).unwrap();
            assert_eq!(
                kernel_dev_at(Path::new(p), meta.dev(), true),
                super::super::kernel_dev(meta.dev()),
                "{p}"
            );
        }
    }
}
