//! What the programs know of the kernel: the byte offsets of the kernel struct fields they read
//! (set by the loader), how to read through them, and the kernel's own constants (errno, file
//! mode and open flags, socket families, magic numbers, BPF helper flags).
use aya_ebpf::{bindings, helpers::bpf_probe_read_kernel, programs::LsmContext};
use governance_common::Cause;

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
    OFF_FILE_F_OWNER,
    FILE_F_OWNER_EMBEDDED,
    OFF_FOWN_FILE,
    OFF_INODE_INO,
    OFF_INODE_SB,
    OFF_SB_DEV,
    OFF_SB_MAGIC,
    OFF_TASK_TGID,
    OFF_TASK_REAL_PARENT,
    OFF_TASK_REAL_CRED,
    OFF_TASK_CRED,
    OFF_CRED_UID,
    OFF_CRED_EUID,
    OFF_CRED_SUID,
    OFF_CRED_FSUID,
    OFF_CRED_CAP_EFFECTIVE,
    OFF_CRED_CAP_PERMITTED,
    OFF_TASK_FLAGS,
    OFF_TASK_IO_URING,
    OFF_TASK_MM,
    OFF_TASK_CGROUPS,
    OFF_MM_EXE_FILE,
    OFF_CRED_USER_NS,
    OFF_USERNS_LEVEL,
    OFF_SB_FLAGS,
    OFF_INODE_MODE,
    OFF_INODE_RDEV,
    OFF_INODE_NLINK,
    OFF_INODE_UID,
    OFF_INODE_MAPPING,
    OFF_MAPPING_I_MMAP,
    OFF_MAPPING_I_MMAP_WRITABLE,
    OFF_VMA_FILE,
    OFF_VMA_FLAGS,
    OFF_CSS_SET_DFL_CGRP,
    OFF_CGROUP_LEVEL,
    OFF_CGROUP_ANCESTORS,
    OFF_CGROUP_KN,
    OFF_KERNFS_NODE_ID,
    OFF_SOCKET_SK,
    OFF_UNIX_SOCK_ADDR,
    OFF_UNIX_SOCK_PATH,
    OFF_PATH_DENTRY,
    OFF_DENTRY_INODE,
    OFF_UNIX_ADDRESS_LEN,
    OFF_UNIX_ADDRESS_NAME,
    OFF_DENTRY_PARENT,
    OFF_DENTRY_SB,
    OFF_DENTRY_FLAGS,
    OFF_DENTRY_NAME,
    OFF_QSTR_NAME,
    OFF_SB_ROOT,
    OFF_KEY_TYPE,
    OFF_KEY_TYPE_NAME,
    OFF_KEY_SERIAL,
    OFF_KEY_FLAGS,
    OFF_TASK_GROUP_LEADER,
    OFF_TASK_START_TIME,
    OFF_TASK_THREAD_PID,
    OFF_PID_LEVEL,
    OFF_PID_NUMBERS,
    OFF_UPID_NR,
    OFF_TASK_SIGNAL,
    OFF_SIGNAL_LIVE,
    OFF_MM_USERS,
    OFF_BTRFS_INODE_VFS_INODE,
    OFF_BTRFS_INODE_ROOT,
    OFF_BTRFS_ROOT_ANON_DEV,
    OFF_SIGNAL_TTY,
    OFF_DENTRY_FSDATA,
    OFF_TTY_SESSION,
    OFF_SOCKET_TYPE,
    OFF_SOCK_FAMILY,
    OFF_SOCK_DADDR,
    OFF_SOCK_V6_DADDR,
    OFF_SOCK_DPORT,
    OFF_SOCK_PROTOCOL,
    OFF_UNIX_SOCK_PEER,
    OFF_MSGHDR_CONTROL,
    OFF_MSGHDR_CONTROLLEN,
    OFF_INODE_PRIVATE,
    OFF_KERNFS_NODE_PARENT,
    OFF_KERNFS_NODE_PRIV,
    OFF_PROC_INODE_PID,
    OFF_PROC_INODE_VFS_INODE,
    OFF_PID_TASKS,
    OFF_TASK_PID_LINKS,
    OFF_TASK_FS,
    OFF_FS_STRUCT_ROOT,
    OFF_PATH_MNT,
    OFF_TASK_NSPROXY,
    OFF_NSPROXY_MNT_NS,
    OFF_MNT_NAMESPACE_ROOT,
    OFF_MOUNT_MNT,
    OFF_MOUNT_MNT_PARENT,
    OFF_MOUNT_MNT_NS,
    OFF_VFSMOUNT_MNT_ROOT,
    OFF_FS_STRUCT_SEQ,
    OFF_MOUNT_MNT_MOUNTPOINT,
    OFF_FILE_PRIVATE_DATA,
    OFF_TTY_FILE_PRIVATE_TTY,
    OFF_TTY_PGRP,
    OFF_TTY_LINK,
    OFF_TTY_LFLAG,
    OFF_SIGNAL_PIDS,
    SIZE_UPID
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

/// A pointer to a kernel object whose type the verifier knows from BTF: an LSM hook's argument,
/// or a pointer field loaded through one. Its fields are read with plain loads, which the JIT
/// emits as guarded loads (`BPF_PROBE_MEM`: a fault reads as 0) of a few instructions, where
/// `read_at` is a `bpf_probe_read_kernel` call: about 110 ns each under the VM's emulation, a
/// third of an allowed open's time in an agent (docs/benchmarks.md). A pointer read with
/// `read_at`, or from a context the verifier does not type (a raw tracepoint), is a plain
/// number to the verifier, which refuses a load through it: those stay with `read_at`.
///
/// Offsets must be the loader's constants (`off`): the verifier checks each load against the
/// BTF field at that offset, and refuses one it cannot place.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Btf(u64);

impl Btf {
    /// The `n`th argument of an LSM hook, a pointer to a kernel struct.
    #[inline(always)]
    pub(crate) fn arg(ctx: &LsmContext, n: usize) -> Self {
        Self(ctx.arg(n))
    }

    /// A typed pointer a helper returned (`bpf_sock_from_file`'s `struct socket *`), checked
    /// for NULL by the caller.
    #[inline(always)]
    pub(crate) fn of(p: u64) -> Self {
        Self(p)
    }

    /// The address, for a helper or a `read_at` (which take plain numbers).
    #[inline(always)]
    pub(crate) fn addr(self) -> u64 {
        self.0
    }

    /// The field of type `T` at `off`: a scalar field (a pointer field through `ptr`). A fault
    /// reads as 0.
    #[inline(always)]
    pub(crate) fn get<T: Copy>(self, off: u64) -> T {
        // SAFETY: a guarded load (see the type); the verifier checked it against BTF.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const T) }
    }

    /// The pointer field at `off`; NULL (or a fault) is an unreadable object.
    #[inline(always)]
    pub(crate) fn ptr(self, off: u64) -> Result<Self, Cause> {
        match self.get::<u64>(off) {
            0 => Err(Cause::Unreadable),
            p => Ok(Self(p)),
        }
    }
}

// What the kernel's UAPI headers define (errno, open flags, socket families): not in
// aya-ebpf-bindings, which carries the BPF UAPI only; the BPF ones below come from it.
pub(crate) const EPERM: i32 = 1;
/// `MAX_PID_NS_LEVEL`: how deep PID namespaces nest.
pub(crate) const MAX_PID_NS_LEVEL: u32 = 32;
pub(crate) const FMODE_READ: u32 = 0x1;
pub(crate) const FMODE_WRITE: u32 = 0x2;
pub(crate) const FMODE_EXEC: u32 = 0x20;
pub(crate) const FMODE_EXEC_FLAG: u32 = 0x20; // __FMODE_EXEC, in f_flags
pub(crate) const O_CREAT: u32 = 0o100;
/// `O_ACCMODE`, and its value 3, which asks no mode of the file (`OPEN_FMODE(3)` is 0) while
/// the kernel checks both read and write permission for it (`ACC_MODE(3)`): an ioctl-only
/// descriptor.
pub(crate) const O_ACCMODE: u32 = 0o3;
pub(crate) const O_TRUNC: u32 = 0o1000;
pub(crate) const SOCK_STREAM: i32 = 1;
pub(crate) const SOCK_DGRAM: i32 = 2;
pub(crate) const AF_UNIX: i32 = 1;
pub(crate) const AF_INET_I32: i32 = 2;
pub(crate) const AF_INET6_I32: i32 = 10;
pub(crate) const IPPROTO_TCP: i32 = 6;
pub(crate) const IPPROTO_UDP: i32 = 17;
/// `file_permission`'s mask bit of a write (`MAY_WRITE`).
pub(crate) const MAY_WRITE: i32 = 0x2;
/// `file_permission`'s mask bit of a read (`MAY_READ`).
pub(crate) const MAY_READ: i32 = 0x4;
pub(crate) const SOCK_TYPE_MASK: i32 = 0xf;
pub(crate) const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
pub(crate) const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
pub(crate) const PROC_SUPER_MAGIC: u64 = 0x9fa0;
pub(crate) const SYSFS_MAGIC: u64 = 0x6265_6572;
pub(crate) const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;
/// The anonymous-inode filesystem (`anon_inode_getfile` and its variants: io_uring rings,
/// eventfds, epoll instances).
pub(crate) const ANON_INODE_FS_MAGIC: u64 = 0x0904_1934;
/// The kernel-internal mount of POSIX message queues (one per IPC namespace; /dev/mqueue is
/// the same superblock).
pub(crate) const MQUEUE_MAGIC: u64 = 0x1980_0202;
/// The filesystems with snapshots: a file's copy under the same (device, inode number).
pub(crate) const BTRFS_MAGIC: u64 = 0x9123_683e;
pub(crate) const BCACHEFS_MAGIC: u64 = 0xca45_1a4e;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const SIGKILL: u32 = 9;
pub(crate) const BPF_NOEXIST: u64 = bindings::BPF_NOEXIST as u64;
pub(crate) const BPF_EXIST: u64 = bindings::BPF_EXIST as u64;
pub(crate) const BPF_F_NO_PREALLOC: u32 = bindings::BPF_F_NO_PREALLOC;
pub(crate) const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 =
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
pub(crate) const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;
pub(crate) const BPF_RB_NO_WAKEUP: u64 = bindings::BPF_RB_NO_WAKEUP as u64;
pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = bindings::BPF_RB_FORCE_WAKEUP as u64;
pub(crate) const BPF_RB_AVAIL_DATA: u64 = bindings::BPF_RB_AVAIL_DATA as u64;
/// capable(): `opts` bit of a check that is not to be audited (a probe: "would I have it?").
pub(crate) const CAP_OPT_NOAUDIT: u32 = 1 << 1;
pub(crate) const PROT_EXEC: u64 = 0x4;
pub(crate) const PROT_WRITE: u64 = 0x2;
/// mmap flags: a shared mapping (MAP_SHARED_VALIDATE has the bit too), whose writes reach the
/// file; vm_flags: the same of a mapping.
pub(crate) const MAP_SHARED: u64 = 0x1;
pub(crate) const VM_SHARED: u64 = 0x8;
pub(crate) const S_IFMT: u16 = 0o170000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFCHR: u16 = 0o020000;
/// super_block.s_flags of a kernel-internal mount (kern_mount: memfd and SysV shm live there).
pub(crate) const SB_KERNMOUNT: u64 = 1 << 22;
/// The clone flags that create namespaces (CLONE_NEWUSER is decided by userns_create).
pub(crate) const CLONE_NEWTIME: u64 = 0x0000_0080;
pub(crate) const CLONE_NEWNS: u64 = 0x0002_0000;
pub(crate) const CLONE_NEWCGROUP: u64 = 0x0200_0000;
pub(crate) const CLONE_NEWUTS: u64 = 0x0400_0000;
pub(crate) const CLONE_NEWIPC: u64 = 0x0800_0000;
pub(crate) const CLONE_NEWUSER: u64 = 0x1000_0000;
pub(crate) const CLONE_NEWPID: u64 = 0x2000_0000;
pub(crate) const CLONE_NEWNET: u64 = 0x4000_0000;
/// clone3 only: start the child in the cgroup of the given directory fd.
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// A new thread of the same process (no new mark to make).
pub(crate) const CLONE_THREAD: u64 = 0x0001_0000;
/// `d_flags` bit of a dentry that may not be connected to its filesystem's root (what
/// open_by_handle_at can return for a file whose name is not in the dentry cache).
pub(crate) const DCACHE_DISCONNECTED: u32 = 0x20;
