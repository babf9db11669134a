//! What the programs know of the kernel: the byte offsets of the kernel struct fields they read
//! (set by the loader), how to read through them, and the kernel's own constants (errno, file
//! mode and open flags, socket families, magic numbers, BPF helper flags).
use aya_ebpf::helpers::bpf_probe_read_kernel;

// Byte offsets of kernel struct fields, written by the loader from the running kernel's BTF
// (see governance_common::offsets). They live in .rodata, which the loader freezes, so the
// verifier sees them as constants. Read them with read_volatile: otherwise the compiler would
// fold in the placeholder 0.
macro_rules! offsets {
    ($($name:ident),*) => { $(#[unsafe(no_mangle)] pub(crate) static $name: u64 = 0;)* };
}
offsets!(
    OFF_BPRM_FILE,
    OFF_BPRM_FILENAME,
    OFF_FILE_INODE,
    OFF_FILE_PATH,
    OFF_FILE_MODE,
    OFF_FILE_FLAGS,
    OFF_INODE_INO,
    OFF_INODE_SB,
    OFF_SB_DEV,
    OFF_SB_MAGIC,
    OFF_TASK_TGID,
    OFF_TASK_REAL_PARENT,
    OFF_PATH_DENTRY,
    OFF_DENTRY_PARENT,
    OFF_DENTRY_INODE,
    OFF_DENTRY_SB,
    OFF_DENTRY_FLAGS,
    OFF_DENTRY_NAME,
    OFF_QSTR_NAME,
    OFF_SB_ROOT
);

#[inline(always)]
pub(crate) fn off(global: &u64) -> u64 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(global) }
}

/// Read a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) unsafe fn read_at<T>(base: u64, off: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }
}

pub(crate) const EPERM: i32 = 1;
pub(crate) const FMODE_READ: u32 = 0x1;
pub(crate) const FMODE_WRITE: u32 = 0x2;
pub(crate) const FMODE_EXEC: u32 = 0x20;
pub(crate) const FMODE_EXEC_FLAG: u32 = 0x20; // __FMODE_EXEC, in f_flags
pub(crate) const O_CREAT: u32 = 0o100;
pub(crate) const O_TRUNC: u32 = 0o1000;
pub(crate) const AF_NETLINK: i32 = 16;
pub(crate) const AF_PACKET: i32 = 17;
pub(crate) const SOCK_RAW: i32 = 3;
pub(crate) const SOCK_TYPE_MASK: i32 = 0xf;
pub(crate) const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
pub(crate) const SIGKILL: u32 = 9;
pub(crate) const BPF_NOEXIST: u64 = 1;
pub(crate) const BPF_F_NO_PREALLOC: u32 = 1;
pub(crate) const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
pub(crate) const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;
pub(crate) const BPF_RB_NO_WAKEUP: u64 = 1;
pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = 2;
pub(crate) const BPF_RB_AVAIL_DATA: u64 = 0;
/// `d_flags` bit of a dentry that may not be connected to its filesystem's root (what
/// open_by_handle_at can return for a file whose name is not in the dentry cache).
pub(crate) const DCACHE_DISCONNECTED: u32 = 0x20;
