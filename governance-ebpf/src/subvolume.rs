//! The device an identity key holds for a file: its superblock's, except on btrfs, where it is
//! the file's subvolume's.
//!
//! btrfs subvolumes share one superblock (one `s_dev`) and each numbers its inodes on its own
//! (every subvolume's root directory is inode 256), so (superblock device, inode) names several
//! files there: an identity allow entry matched a file of another subvolume with its number
//! (red team round 33). Each subvolume has an anonymous device of its own
//! (`BTRFS_I(inode)->root->anon_dev`), which `stat` reports. The loader sets where it is
//! (`OFF_BTRFS_*`, from the btrfs module's BTF, 0 where btrfs's types were not there) and
//! records in `STATE` whether it did, so that the daemon keys btrfs files as these helpers do.
//!
//! A device's marker (see governance_common::IdentKey) stays the superblock's: a walk up from a
//! file crosses from one subvolume into another (a nested subvolume's root sits in its parent's
//! tree) without crossing a mount, and the marker says whether any entry lies on the whole
//! filesystem.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_kernel};
use governance_common::Cause;

use crate::kernel::{
    BTRFS_MAGIC, Btf, OFF_BTRFS_INODE_ROOT, OFF_BTRFS_INODE_VFS_INODE, OFF_BTRFS_ROOT_ANON_DEV,
    OFF_DENTRY_INODE, OFF_INODE_SB, OFF_SB_DEV, OFF_SB_MAGIC, off, read_at,
};

/// Read 8 bytes at `src` into `buf`.
#[inline(always)]
fn read_into(buf: *mut u64, src: u64) -> Result<u64, Cause> {
    // SAFETY: `buf` is 8 writable bytes (the caller's); a bad `src` reads as an error.
    unsafe {
        if bpf_probe_read_kernel(buf.cast::<c_void>(), 8, src as *const c_void) != 0 {
            return Err(Cause::Unreadable);
        }
        Ok(*buf)
    }
}

/// The subvolume device of the btrfs inode at `inode`, or None where the programs were loaded
/// without btrfs's offsets. The reads land in `buf`: a map value where the stack is spent (the
/// walk's callback, whose frame and file_open's together may not pass 512 bytes).
#[inline(always)]
fn subvolume_dev(inode: u64, buf: *mut u64) -> Result<Option<u32>, Cause> {
    let vfs_inode = off(&OFF_BTRFS_INODE_VFS_INODE);
    if vfs_inode == 0 || inode < vfs_inode {
        return Ok(None);
    }
    let root = read_into(buf, inode - vfs_inode + off(&OFF_BTRFS_INODE_ROOT))?;
    if root == 0 {
        return Err(Cause::Unreadable);
    }
    // `dev_t`, 32 bits: the low half of the word read (little-endian).
    Ok(Some(
        read_into(buf, root + off(&OFF_BTRFS_ROOT_ANON_DEV))? as u32
    ))
}

/// Whether `magic` is btrfs's.
#[inline(always)]
fn btrfs(magic: u64) -> bool {
    magic & 0xffff_ffff == BTRFS_MAGIC
}

/// The key device of the inode at `inode` (a plain address), read through plain reads.
#[inline(always)]
pub(crate) fn inode_dev(inode: u64) -> Result<u32, Cause> {
    match inode_dev_outlined(inode) {
        UNREADABLE => Err(Cause::Unreadable),
        dev => Ok(dev as u32),
    }
}

/// `inode_dev`, in a frame of its own (inlined, its reads' buffers and spills took file_open's
/// frame from 448 bytes to 480, with the walk's callback past the 512 a chain of calls may
/// use), answering a plain number (a `Result` is returned through the stack, which the
/// verifier refuses for a function's arguments as declared): the device or `UNREADABLE`.
#[inline(never)]
fn inode_dev_outlined(inode: u64) -> u64 {
    // SAFETY: see read_at.
    let read = unsafe {
        read_at::<u64>(inode, off(&OFF_INODE_SB)).and_then(|sb| {
            Ok((
                read_at::<u32>(sb, off(&OFF_SB_DEV))?,
                read_at::<u64>(sb, off(&OFF_SB_MAGIC))?,
            ))
        })
    };
    let Ok((s_dev, magic)) = read else {
        return UNREADABLE;
    };
    if !btrfs(magic) {
        return u64::from(s_dev);
    }
    let mut buf = 0u64;
    match subvolume_dev(inode, &mut buf) {
        Ok(Some(dev)) => u64::from(dev),
        Ok(None) => u64::from(s_dev),
        Err(_) => UNREADABLE,
    }
}

/// Whether the superblock `sb` is a btrfs one: its files' key devices differ by subvolume.
#[inline(always)]
pub(crate) fn is_btrfs(sb: Btf) -> bool {
    btrfs(sb.get::<u64>(off(&OFF_SB_MAGIC)))
}

/// Whether files of the superblock `sb` are keyed on their subvolume: a btrfs, and the
/// programs loaded knowing where its subvolume device is.
#[inline(always)]
pub(crate) fn keyed(sb: Btf) -> bool {
    off(&OFF_BTRFS_INODE_VFS_INODE) != 0 && is_btrfs(sb)
}

/// The key device of a dentry's inode, whose superblock is `sb`; the reads land in `buf` (see
/// `subvolume_dev`).
#[inline(always)]
pub(crate) fn dentry_dev(dentry: Btf, sb: Btf, buf: *mut u64) -> Result<u32, Cause> {
    if !keyed(sb) {
        return Ok(sb.get::<u32>(off(&OFF_SB_DEV)));
    }
    match btrfs_dentry_dev(dentry.addr(), buf) {
        UNREADABLE => Err(Cause::Unreadable),
        dev => Ok(dev as u32),
    }
}

/// `level_dev` in a frame of its own (file_open's own frame has no room for its spills),
/// answering a plain number (see `inode_dev_outlined`).
#[inline(never)]
fn btrfs_dentry_dev(dentry: u64, buf: *mut u64) -> u64 {
    level_dev(dentry, buf)
}

/// A device, or `UNREADABLE`.
pub(crate) const UNREADABLE: u64 = 1 << 32;

/// The subvolume device of the dentry at `dentry` on a btrfs whose subvolumes are keyed
/// (`keyed`), or `UNREADABLE`: inline in the walk's callback (a call from it is one frame more,
/// at least 32 bytes to the verifier, which file_open's 448 and the callback's 56 leave no
/// room for), its reads into `buf` (map memory there).
#[inline(always)]
pub(crate) fn level_dev(dentry: u64, buf: *mut u64) -> u64 {
    // The inode as a plain number, not a typed pointer: the verifier refuses the arithmetic
    // that steps back from it to its `btrfs_inode` on a pointer it types.
    let Ok(inode) = read_into(buf, dentry + off(&OFF_DENTRY_INODE)) else {
        return UNREADABLE;
    };
    match subvolume_dev(inode, buf) {
        Ok(Some(dev)) => u64::from(dev),
        _ => UNREADABLE,
    }
}
