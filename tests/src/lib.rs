//! Helpers for the kernel integration tests: real cgroups, real forked processes, real eBPF.
//!
//! Each test makes its own cgroups (removed on drop), installs its own policy (on its own copy of
//! the programs with [`load`], or as the next generation on the process's one copy with
//! [`install`]), and runs each attempt in a freshly forked child, so a denial is always paired
//! with a control run of the same attempt outside the agent.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use governance::{
    agents::{self, AgentCgroup},
    events,
    kernel::{self, Enforcer},
    policy,
};
use governance_common::Event;

mod daemon;
mod stderr_log;
pub use daemon::*;
pub use stderr_log::StderrLog;

/// Exit status a child uses to report that its syscall failed: `ERRNO_BASE + errno`.
pub const ERRNO_BASE: i32 = 100;

/// In a forked child: `socket(family, ty)` given `setsockopt(level, name, value)`. Exits 97 if
/// the socket cannot be made, [`ERRNO_BASE`] + errno if the option is refused.
///
/// # Safety
/// Raw syscalls; for the child of a fork (async-signal-safe calls only).
unsafe fn socket_with_opt(family: i32, ty: i32, level: i32, name: i32, value: &[u8]) -> i32 {
    // SAFETY: raw syscalls on a buffer of `value.len()` bytes.
    unsafe {
        let s = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            libc::_exit(97);
        }
        if libc::setsockopt(s, level, name, value.as_ptr().cast(), value.len() as u32) < 0 {
            libc::_exit(ERRNO_BASE + *libc::__errno_location());
        }
        s
    }
}

/// A cgroup made for one test, removed (with its children) when dropped.
pub struct TestCgroup {
    /// Path relative to the cgroup2 mount.
    pub rel: PathBuf,
    pub path: PathBuf,
}

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestCgroup {
    /// A new cgroup directly below the cgroup2 root, unique to this process and call.
    pub fn new(label: &str) -> Self {
        let root = agents::cgroup2_mount().expect("cgroup2 must be mounted for kernel tests");
        let rel = PathBuf::from(format!(
            "governance-test-{}-{}-{label}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let path = root.join(&rel);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { rel, path }
    }

    /// A child cgroup of this one (removed with it).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    pub fn id(&self) -> u64 {
        agents::cgroup_id(&self.path).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
        // A container runtime with the cgroupfs driver (podman with runc, in a hybrid layout)
        // makes the same path below every v1 hierarchy too.
        for v1 in agents::cgroup_v1_mounts() {
            let mirror = v1.join(&self.rel);
            if mirror.exists() {
                remove_cgroup_tree(&mirror);
            }
        }
    }
}

/// Remove cgroup `top` and every cgroup below it, children first.
fn remove_cgroup_tree(top: &Path) {
    // Children first; the processes we forked have all been reaped by now.
    let mut dirs = vec![top.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    // A cgroup stays busy for a moment after its last task exits (the kernel releases it
    // asynchronously, with nothing to wait on): retry the removal itself, for up to 2 s.
    for d in dirs.iter().rev() {
        let removed = poll_until(Duration::from_secs(2), || {
            let busy = libc::EBUSY;
            !matches!(std::fs::remove_dir(d), Err(e) if e.raw_os_error() == Some(busy))
        });
        if !removed {
            // Not a panic: this runs on drop, possibly while a failed test unwinds.
            eprintln!("cgroup {} still busy after 2 s; left behind", d.display());
        }
    }
}

/// keyctl(2) commands and special keyring ids (linux/keyctl.h).
pub const KEYCTL_UPDATE: libc::c_long = 2;
pub const KEYCTL_SETPERM: libc::c_long = 5;
pub const KEYCTL_LINK: libc::c_long = 8;
pub const KEYCTL_SEARCH: libc::c_long = 10;
pub const KEYCTL_READ: libc::c_long = 11;
pub const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
pub const KEYCTL_INVALIDATE: libc::c_long = 21;
pub const KEY_SPEC_PROCESS_KEYRING: i32 = -2;
pub const KEY_SPEC_SESSION_KEYRING: i32 = -3;
pub const KEY_SPEC_USER_KEYRING: i32 = -4;

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | O_CLOEXEC)`: a detached copy of the tree at
/// `path`, or -1 (errno set).
///
/// # Safety
/// A plain system call; `path` is a valid C string.
unsafe fn open_tree_clone(path: &std::ffi::CStr) -> libc::c_long {
    const OPEN_TREE_CLONE: libc::c_long = 1;
    // SAFETY: see above.
    unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
        )
    }
}

/// What a forked child does once it is in its cgroup. Everything it needs is prepared before
/// the fork: after fork, in a multithreaded test process, the child may only make raw syscalls.
pub enum Attempt {
    /// execve(path, argv, {}).
    Exec { path: CString, argv: Vec<CString> },
    /// execveat(fd of path opened O_PATH, "", argv, {}, AT_EMPTY_PATH).
    ExecFd { path: CString, argv: Vec<CString> },
    /// open(path, flags).
    Open { path: CString, flags: i32 },
    /// open(path, O_PATH), then open("/proc/self/fd/N", flags).
    Reopen { path: CString, flags: i32 },
    /// openat2(AT_FDCWD, path, { flags, resolve }).
    Openat2 {
        path: CString,
        flags: i32,
        resolve: u64,
    },
    /// A connect (TCP, or UDP when `udp`) to an IPv4 or IPv6 address.
    Connect {
        addr: std::net::SocketAddr,
        udp: bool,
    },
    /// sendto() of one UDP datagram on an unconnected socket.
    SendTo { addr: std::net::SocketAddr },
    /// TCP Fast Open: sendto(MSG_FASTOPEN) of one byte on an unconnected TCP socket (the
    /// connect happens inside the send).
    FastOpen { addr: std::net::SocketAddr },
    /// sendmsg() of one UDP datagram to `addr` with one control message (`level`, `ty`, `data`
    /// of at most 96 bytes). With `after_plain`, sendmmsg() of two datagrams to `addr`, the
    /// first without the control message: the kernel asks the LSM about the first only. The
    /// kernel drops a later message's error, so "only the first sent" is reported as EPERM.
    SendMsgCmsg {
        addr: std::net::SocketAddr,
        level: i32,
        ty: i32,
        data: Vec<u8>,
        after_plain: bool,
    },
    /// A UDP socket given setsockopt(level, name, value), then sendto() of one datagram to
    /// `addr` (an option that changes where the datagram goes).
    SendToWithOpt {
        addr: std::net::SocketAddr,
        level: i32,
        name: i32,
        value: Vec<u8>,
    },
    /// socket(family, type, 0), then setsockopt(level, name, value).
    SetSockOpt {
        family: i32,
        ty: i32,
        level: i32,
        name: i32,
        value: Vec<u8>,
    },
    /// socket(family, type, protocol).
    Socket { family: i32, ty: i32, protocol: i32 },
    /// unshare(flags).
    Unshare { flags: i32 },
    /// bpf(BPF_OBJ_GET, path): open a pinned object.
    BpfObjGet { path: CString },
    /// kill(pid, sig).
    Kill { pid: i32, sig: i32 },
    /// ptrace(PTRACE_SEIZE, pid) (detached again when the child exits).
    PtraceSeize { pid: i32 },
    /// ptrace(PTRACE_TRACEME): the attempt's parent (the test) would trace it.
    PtraceTraceme,
    /// open(path, O_WRONLY) and write(data).
    Write { path: CString, data: Vec<u8> },
    /// write(fd, data) to a descriptor the attempt inherited, or (`mapped`) mmap it shared
    /// and writable and copy `data` into the mapping.
    WriteFd {
        fd: i32,
        data: Vec<u8>,
        mapped: bool,
    },
    /// unlink(path).
    Unlink { path: CString },
    /// fd = open(path), unlink(path), execve("/proc/self/fd/<fd>").
    ExecUnlinked { path: CString, argv: Vec<CString> },
    /// link(from, to): a new hard link.
    Link { from: CString, to: CString },
    /// In a new user namespace (and mount namespace, for `clone`): chroot(root) and
    /// open(path, flags), or a detached clone of root's tree (`open_tree(OPEN_TREE_CLONE)`) and
    /// openat(tree, path without its leading `/`): both name the file `path`.
    RenamedOpen {
        clone: bool,
        root: CString,
        path: CString,
        flags: i32,
    },
    /// In a new user and mount namespace (root mapped): fsopen("overlay"), fsconfig lowerdir
    /// (`lower`: two directories, `a:b`), FSCONFIG_CMD_CREATE, fsmount; then open `file`
    /// through the detached mount for reading.
    FsopenOverlay { lower: CString, file: CString },
    /// In a new user and network namespace: its loopback brought up with SIOCSIFFLAGS on an
    /// AF_INET socket (CAP_NET_ADMIN in the namespace; no netlink).
    UsernsLoopbackUp,
    /// chroot(root), chdir("/"), then open(path, flags).
    ChrootOpen {
        root: CString,
        path: CString,
        flags: i32,
    },
    /// In a mount namespace of its own (unshare(CLONE_NEWNS), so the mount goes with the
    /// child): mount(source, target, fstype, mount_flags), then open(path, flags).
    MountOpen {
        source: CString,
        target: CString,
        /// Empty for a bind mount.
        fstype: CString,
        mount_flags: u64,
        path: CString,
        flags: i32,
    },
    /// fd = open(dir, O_RDONLY | O_DIRECTORY), then open_by_handle_at(fd, handle, flags);
    /// `handle` is a `struct file_handle` from name_to_handle_at.
    OpenByHandleAt {
        dir: CString,
        handle: Vec<u8>,
        flags: i32,
    },
    /// connect() of an AF_UNIX stream socket to the socket file at `path`.
    UnixConnect { path: CString },
    /// connect() of an AF_UNIX stream socket to the abstract name `name` (no leading NUL).
    UnixConnectAbstract { name: Vec<u8> },
    /// sendto() of one datagram from an unbound AF_UNIX datagram socket to `path`.
    UnixSendTo { path: CString },
    /// chdir(dir), then connect() of an AF_UNIX stream socket to the relative path `name`.
    UnixConnectRelative { dir: CString, name: CString },
    /// prlimit(pid, RLIMIT_NOFILE, its current limits): a change that changes nothing.
    Prlimit { pid: i32 },
    /// setpriority(PRIO_PROCESS, pid, 0).
    SetPriority { pid: i32 },
    /// sched_setscheduler(0, SCHED_FIFO, priority 1): real-time scheduling for itself.
    SchedFifo,
    /// process_vm_readv of one byte at `addr` in `pid`.
    ProcessVmRead { pid: i32, addr: u64 },
    /// pidfd_getfd(pidfd_open(pid), fd): take a copy of another process's descriptor.
    PidfdGetfd { pid: i32, fd: i32 },
    /// truncate(path, 0).
    Truncate { path: CString },
    /// fd = open(path, O_WRONLY), ftruncate(fd, 0).
    Ftruncate { path: CString },
    /// fd = open(path, O_RDWR | O_NOCTTY), ioctl(fd, cmd, &byte) (TIOCSTI pushes `byte`).
    Ioctl { path: CString, cmd: u64, byte: u8 },
    /// fd = open(path, O_RDONLY), ioctl(fd, cmd, &0u64): an ioctl whose argument is zeroes, on
    /// a file or a directory.
    IoctlZeroed { path: CString, cmd: u64 },
    /// The same through the 32-bit system call entry (`int $0x80`, ioctl is 54 there), its
    /// argument in memory below 4 GiB: the kernel asks `file_ioctl_compat`, not `file_ioctl`
    /// (Linux 6.8, and the stable kernels it was backported to).
    IoctlCompat { path: CString, cmd: u64, byte: u8 },
    /// fcntl(pipe's read end, F_SETOWN, pid); pid 0 means the process itself.
    SetOwn { pid: i32 },
    /// The red team's terminal SIGIO: `tty`, an inherited descriptor of a pty's slave (as an
    /// agent started from a terminal holds it; an agent may not open a terminal another
    /// session holds, see `guard::OTHER_TERMINAL`), opened O_RDWR | O_NOCTTY | O_NONBLOCK, its
    /// input flushed (`tcflush(TCIFLUSH)`), fcntl(fd, F_SETSIG, sig), then asynchronous notification on (`ioctl(FIOASYNC)` when
    /// `fioasync`, else `fcntl(F_SETFL, O_ASYNC)`: the terminal makes its foreground group the
    /// file's owner), then "x\n" written to `master` (an inherited descriptor of the pty's
    /// master), which a kworker delivers to the slave: its SIGIO goes to that group. The
    /// descriptor is held until the input is readable and the line discipline is done with it
    /// (the signal was tried; a second flush), then exit 0; 96 when no input came in 20 s.
    TtySigio {
        tty: i32,
        master: i32,
        sig: i32,
        fioasync: bool,
    },
    /// Asynchronous notification to the process itself, SIGIO blocked and waited for (5 s):
    /// on a pipe (`F_SETOWN` to itself, `O_ASYNC` on the read end, a write), or, with `ptmx`,
    /// on a terminal of its own (a new session, a pty whose slave it makes its controlling
    /// terminal, `O_ASYNC` on the slave: owned by its own foreground group, input written to
    /// the master). Exit 0 once SIGIO arrived, 95 when it did not.
    SelfSigio { ptmx: Option<CString> },
    /// setxattr(path, name, value).
    SetXattr {
        path: CString,
        name: CString,
        value: Vec<u8>,
    },
    /// removexattr(path, name).
    RemoveXattr { path: CString, name: CString },
    /// rename(from, to).
    Rename { from: CString, to: CString },
    /// socket(AF_UNIX, SOCK_STREAM), bind(path), listen: a listener of its own at `path`.
    UnixBind { path: CString },
    /// socket(family of `addr`, SOCK_STREAM), bind(addr), listen: a TCP listener of its own.
    Bind { addr: std::net::SocketAddr },
    /// open(path, O_RDONLY), then fcntl(F_SETLEASE, kind) (F_RDLCK or F_WRLCK), SIGIO ignored.
    Lease { path: CString, kind: i32 },
    /// First, when `trigger` is set, open(trigger, O_RDONLY) (a file rule with the sandbox
    /// verdict marks the process); then a new name for `from` at `to`: `op` 0 link(2), 1
    /// rename(2), 2 renameat2(RENAME_EXCHANGE), 3 linkat(2) of "/proc/self/fd/N" for an O_PATH
    /// descriptor of `from` (AT_SYMLINK_FOLLOW); or a new entry or a removal: 4 symlink(from,
    /// to), 5 mkdir(to), 6 mknod(to, a FIFO), 7 rmdir(from); or a change of attributes: 8
    /// chmod(from, 04777), 9 chown(from, 4242, 4242).
    NewName {
        trigger: Option<CString>,
        op: u8,
        from: CString,
        to: CString,
    },
    /// shmat(id, NULL, SHM_RDONLY).
    ShmAttach { id: i32 },
    /// msgsnd(id, one byte, IPC_NOWAIT).
    MsgSend { id: i32 },
    /// shmctl(id, IPC_RMID).
    ShmRemove { id: i32 },
    /// shmget(IPC_PRIVATE), shmat, shmdt, shmctl(IPC_RMID): an object of its own.
    ShmOwn,
    /// mount(source, target, fstype, flags, NULL).
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: u64,
    },
    /// umount2(target, 0).
    Umount { target: CString },
    /// chroot(path).
    Chroot { path: CString },
    /// pivot_root(new_root, put_old).
    PivotRoot { new_root: CString, put_old: CString },
    /// fd = open_tree(AT_FDCWD, from, OPEN_TREE_CLONE), move_mount(fd, "", AT_FDCWD, to,
    /// MOVE_MOUNT_F_EMPTY_PATH): a detached copy of a mount, attached elsewhere.
    OpenTreeMove { from: CString, to: CString },
    /// setns(open(path), nstype).
    Setns { path: CString, nstype: i32 },
    /// unshare(flags); if `map_root`, write "0 0 1" to /proc/self/uid_map; then mount a tmpfs
    /// at `target`.
    UnshareMount {
        flags: i32,
        map_root: bool,
        target: CString,
    },
    /// name_to_handle_at(path), then open_by_handle_at(open(mount_dir), handle, O_RDONLY).
    OpenByHandle { path: CString, mount_dir: CString },
    /// mknod(path, mode, dev).
    Mknod { path: CString, mode: u32, dev: u64 },
    /// chmod(path, mode).
    Chmod { path: CString, mode: u32 },
    /// chown(path, uid, gid).
    Chown { path: CString, uid: u32, gid: u32 },
    /// request_key(ty, description, "callout", KEY_SPEC_PROCESS_KEYRING): with callout data,
    /// so a key not found is constructed (the upcall).
    RequestKey { ty: CString, description: CString },
    /// add_key(ty, description, "v", 1, KEY_SPEC_PROCESS_KEYRING).
    AddKey { ty: CString, description: CString },
    /// keyctl(KEYCTL_READ, id) into a buffer.
    KeyRead { id: i32 },
    /// keyctl(KEYCTL_UPDATE, id, "changed").
    KeyUpdate { id: i32 },
    /// keyctl(KEYCTL_SEARCH, keyring, "user", description, 0).
    KeySearch { keyring: i32, description: CString },
    /// keyctl(KEYCTL_LINK, id, KEY_SPEC_PROCESS_KEYRING): into a keyring of its own.
    KeyLink { id: i32 },
    /// Keys of its own: add_key(user) to its process keyring, read, update, read; then a new
    /// session keyring (KEYCTL_JOIN_SESSION_KEYRING), a key added to it, read.
    KeyOwn,
    /// mq_open(name, flags) (the syscall's name: no leading `/`).
    MqOpen { name: CString, flags: i32 },
    /// mq_open(name, O_WRONLY | O_NONBLOCK), then mq_timedsend of one byte.
    MqSend { name: CString },
    /// mq_unlink(name).
    MqUnlink { name: CString },
    /// A queue of its own: mq_open(name, O_CREAT | O_EXCL | O_RDWR), send, receive, open again
    /// (read), mq_unlink.
    MqOwn { name: CString },
    /// symlink(target, path).
    Symlink { target: CString, path: CString },
    /// mkdir(path, 0755).
    Mkdir { path: CString },
    /// init_module() of a few bytes that are no module.
    InitModule,
    /// finit_module(open(path)).
    FinitModule { path: CString },
    /// kexec_load(0, 0, NULL, KEXEC_ARCH_DEFAULT): no segments (unloads a loaded image).
    KexecLoad,
    /// sethostname(name).
    Sethostname { name: Vec<u8> },
    /// clone3(flags, and the cgroup fd of `cgroup` with CLONE_INTO_CGROUP); the child exits 0
    /// at once and is waited for.
    Clone3 { flags: u64, cgroup: Option<CString> },
    /// open(path), then mmap(PROT_READ|PROT_EXEC) one page of it, or (with `mprotect`) mmap
    /// it PROT_READ and mprotect it to PROT_READ|PROT_EXEC.
    MapExec { path: CString, mprotect: bool },
    /// The same, by a process that first became `uid` (setresuid: not root, and with no
    /// capabilities left).
    MapExecAs {
        path: CString,
        mprotect: bool,
        uid: u32,
    },
    /// Copy `src` to `dst` (created or truncated), then mmap the copy PROT_READ|PROT_EXEC;
    /// with `unlink_first`, unlink `dst` before the mmap (through the fd still open).
    CopyMapExec {
        src: CString,
        dst: CString,
        unlink_first: bool,
    },
    /// memfd_create, copy `src` into it, mmap it PROT_READ|PROT_EXEC.
    MemfdMapExec { src: CString },
    /// open(path), then a child made with clone(CLONE_VM) and no CLONE_THREAD (its own
    /// process, sharing this one's memory) mmaps it PROT_READ|PROT_EXEC: the mapping is this
    /// process's too. The child's errno is the outcome.
    MapExecShared { path: CString },
    /// A private System V shared memory segment (mode 0700) attached, executable with `exec`
    /// (`SHM_EXEC`), then removed.
    ShmExec { exec: bool },
}

/// A `sockaddr_un` and its length: a path, or an abstract name (a NUL, then the name).
fn sockaddr_un(bytes: &[u8], abstract_name: bool) -> (libc::sockaddr_un, u32) {
    // SAFETY: plain data; all zeroes is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let start = usize::from(abstract_name);
    assert!(
        start + bytes.len() < sa.sun_path.len(),
        "socket address too long"
    );
    for (i, b) in bytes.iter().enumerate() {
        sa.sun_path[start + i] = *b as libc::c_char;
    }
    // The family, then the path with its NUL, or the NUL and the name (no terminator).
    let len = 2 + start + bytes.len() + usize::from(!abstract_name);
    (sa, len as u32)
}

impl Attempt {
    pub fn exec(path: &Path, argv0: &str) -> Self {
        Attempt::Exec {
            path: cstr(path),
            argv: vec![CString::new(argv0).unwrap()],
        }
    }

    pub fn exec_args(path: &Path, argv: &[&str]) -> Self {
        Attempt::Exec {
            path: cstr(path),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
        }
    }

    pub fn exec_fd(path: &Path, argv0: &str) -> Self {
        Attempt::ExecFd {
            path: cstr(path),
            argv: vec![CString::new(argv0).unwrap()],
        }
    }

    pub fn open(path: &Path, flags: i32) -> Self {
        Attempt::Open {
            path: cstr(path),
            flags,
        }
    }

    pub fn connect(addr: std::net::SocketAddr) -> Self {
        Attempt::Connect { addr, udp: false }
    }

    pub fn write(path: &Path, data: &str) -> Self {
        Attempt::Write {
            path: cstr(path),
            data: data.as_bytes().to_vec(),
        }
    }

    pub fn link(from: &Path, to: &Path) -> Self {
        Attempt::Link {
            from: cstr(from),
            to: cstr(to),
        }
    }

    pub fn rename(from: &Path, to: &Path) -> Self {
        Attempt::Rename {
            from: cstr(from),
            to: cstr(to),
        }
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A sockaddr for `addr`, as bytes and length.
fn sockaddr(addr: &std::net::SocketAddr) -> (libc::sockaddr_in6, u32, i32) {
    // SAFETY: plain data; all zeroes is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_in6.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    (&mut sa as *mut libc::sockaddr_in6).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            };
            (
                sa,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
                libc::AF_INET,
            )
        }
        std::net::SocketAddr::V6(a) => {
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            (
                sa,
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
                libc::AF_INET6,
            )
        }
    }
}

/// Write "/proc/self/fd/<fd>\0" into `buf` without allocating (for use after fork).
fn proc_self_fd(buf: &mut [u8; 25], fd: i32) {
    let mut n = fd as u32;
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[14 + i] = digits[len - 1 - i];
    }
    buf[14 + len] = 0;
}

/// Copy everything from `from` to `to` with read/write on a stack buffer (for use after fork).
unsafe fn copy_fd(from: i32, to: i32) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: our fds, our buffer.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return true;
        }
        if n < 0 || unsafe { libc::write(to, buf.as_ptr().cast(), n as usize) } != n {
            return false;
        }
    }
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Outcome {
    /// The syscall failed with this errno.
    Errno(i32),
    /// The child (or the program it executed) exited with this status.
    Exited(i32),
    /// The child was killed by this signal.
    Signaled(i32),
}

/// Fork a child with comm `comm`, move it into `cgroup` (if any), make the attempt, and wait.
/// Returns the child's pid and how it ended.
pub fn run_in(cgroup: Option<&Path>, comm: &str, attempt: &Attempt) -> (u32, Outcome) {
    run_in_namespaces(cgroup, comm, attempt, None)
}

/// The namespaces a container runtime makes for a container, for [`run_in_namespaces`]: new
/// mount, PID and network namespaces, `source` bind-mounted on `target` in the new mount
/// namespace (the container's view of a node directory), loopback up and TCP listeners on
/// `listen` in the new network namespace.
pub struct Container {
    source: CString,
    target: CString,
    listen: Vec<(libc::sockaddr_in6, u32, i32)>,
}

impl Container {
    pub fn new(source: &Path, target: &Path, listen: &[std::net::SocketAddr]) -> Self {
        Self {
            source: cstr(source),
            target: cstr(target),
            listen: listen.iter().map(sockaddr).collect(),
        }
    }
}

/// In a forked child: make `c`'s namespaces (as root, before joining any agent, as a runtime
/// does), then fork the container's first process, which returns from here (pid 1 of the new
/// PID namespace). The intermediate process writes that process's pid (as the node numbers it)
/// to `pid_out`, waits for it and ends as it ended. Raw syscalls only (after fork).
unsafe fn enter_container(c: &Container, pid_out: i32) {
    unsafe {
        let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
        let mut ok = libc::unshare(flags) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                c.source.as_ptr(),
                c.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) == 0;
        // Loopback up: struct ifreq { char name[16]; short flags; ... }.
        let mut ifr = [0u8; 40];
        ifr[..3].copy_from_slice(b"lo\0");
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        ifr[16..18].copy_from_slice(&up.to_ne_bytes());
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        ok = ok && s >= 0 && libc::ioctl(s, libc::SIOCSIFFLAGS, ifr.as_ptr()) == 0;
        for (sa, len, family) in &c.listen {
            let l = libc::socket(*family, libc::SOCK_STREAM, 0);
            ok = ok
                && l >= 0
                && libc::bind(l, (sa as *const libc::sockaddr_in6).cast(), *len) == 0
                && libc::listen(l, 64) == 0;
        }
        if !ok {
            libc::_exit(96);
        }
        let pid = libc::fork();
        if pid < 0 {
            libc::_exit(96);
        }
        if pid == 0 {
            libc::close(pid_out);
            return;
        }
        libc::write(pid_out, (&pid as *const i32).cast(), 4);
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid {
            libc::_exit(96);
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// One one-byte message sent to the POSIX queue `mqd` (`mq_timedsend`, no timeout).
fn mq_send_one(mqd: libc::c_long) -> libc::c_long {
    // SAFETY: the message outlives the call; a bad descriptor fails with EBADF.
    unsafe {
        libc::syscall(
            libc::SYS_mq_timedsend,
            mqd,
            b"m".as_ptr(),
            1usize,
            0u32,
            0usize,
        )
    }
}

/// [`run_in`], in a container's namespaces when `container` is given: the attempt is made by
/// the container's first process (pid 1 inside), and the pid returned is that process's pid as
/// the node numbers it.
pub fn run_in_namespaces(
    cgroup: Option<&Path>,
    comm: &str,
    attempt: &Attempt,
    container: Option<&Container>,
) -> (u32, Outcome) {
    let mut pid_pipe = [-1i32; 2];
    if container.is_some() {
        // SAFETY: a pipe into a local array.
        assert_eq!(unsafe { libc::pipe(pid_pipe.as_mut_ptr()) }, 0, "pipe");
    }
    let procs = cgroup.map(|c| cstr(&c.join("cgroup.procs")));
    let comm = CString::new(comm).unwrap();
    let argv_ptrs = |argv: &[CString]| {
        let mut v: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        v.push(std::ptr::null());
        v
    };
    let argv = match attempt {
        Attempt::Exec { argv, .. }
        | Attempt::ExecFd { argv, .. }
        | Attempt::ExecUnlinked { argv, .. } => argv_ptrs(argv),
        _ => Vec::new(),
    };
    let sa = match attempt {
        Attempt::Connect { addr, .. }
        | Attempt::SendTo { addr }
        | Attempt::FastOpen { addr }
        | Attempt::SendMsgCmsg { addr, .. }
        | Attempt::SendToWithOpt { addr, .. }
        | Attempt::Bind { addr } => Some(sockaddr(addr)),
        _ => None,
    };
    let un = match attempt {
        Attempt::UnixConnect { path } | Attempt::UnixSendTo { path } => {
            Some(sockaddr_un(path.as_bytes(), false))
        }
        Attempt::UnixConnectAbstract { name } => Some(sockaddr_un(name, true)),
        Attempt::UnixBind { path } => Some(sockaddr_un(path.as_bytes(), false)),
        Attempt::UnixConnectRelative { name, .. } => Some(sockaddr_un(name.as_bytes(), false)),
        _ => None,
    };
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let empty = c"";
    let mut proc_fd = *b"/proc/self/fd/0000000000\0";

    // SAFETY: the child only makes async-signal-safe raw syscalls on data prepared above, then
    // execs or _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            if let Some(c) = container {
                libc::close(pid_pipe[0]);
                enter_container(c, pid_pipe[1]);
            }
            let fail = |_: ()| -> ! { libc::_exit(ERRNO_BASE + *libc::__errno_location()) };
            let check = |r: libc::c_long| {
                if r < 0 {
                    fail(())
                }
            };
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    // Could not join the cgroup: a harness failure, distinct from any errno.
                    libc::_exit(99);
                }
                libc::close(fd);
            }
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            match attempt {
                Attempt::Exec { path, .. } => {
                    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    fail(())
                }
                Attempt::ExecFd { path, .. } => {
                    let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    libc::syscall(
                        libc::SYS_execveat,
                        fd,
                        empty.as_ptr(),
                        argv.as_ptr(),
                        envp.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    );
                    fail(())
                }
                Attempt::Open { path, flags } => {
                    check(libc::open(path.as_ptr(), *flags, 0o644).into());
                }
                Attempt::Reopen { path, flags } => {
                    let fd = libc::open(path.as_ptr(), libc::O_PATH);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    proc_self_fd(&mut proc_fd, fd);
                    check(libc::open(proc_fd.as_ptr().cast(), *flags).into());
                }
                Attempt::ExecUnlinked { path, .. } => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    if fd < 0 || libc::unlink(path.as_ptr()) != 0 {
                        libc::_exit(98);
                    }
                    proc_self_fd(&mut proc_fd, fd);
                    libc::execve(proc_fd.as_ptr().cast(), argv.as_ptr(), envp.as_ptr());
                    fail(())
                }
                Attempt::Openat2 {
                    path,
                    flags,
                    resolve,
                } => {
                    // struct open_how { u64 flags, mode, resolve; }
                    let how: [u64; 3] = [*flags as u64, 0, *resolve];
                    check(libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        how.as_ptr(),
                        std::mem::size_of_val(&how),
                    ));
                }
                Attempt::Connect { udp, .. } => {
                    let (sa, len, family) = sa.unwrap();
                    let ty = if *udp {
                        libc::SOCK_DGRAM
                    } else {
                        libc::SOCK_STREAM
                    };
                    let s = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::connect(s, (&sa as *const libc::sockaddr_in6).cast(), len).into());
                }
                Attempt::FastOpen { .. } => {
                    let (sa, len, family) = sa.unwrap();
                    let s = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::sendto(
                        s,
                        b"q".as_ptr().cast(),
                        1,
                        libc::MSG_FASTOPEN,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        len,
                    ) as libc::c_long);
                }
                Attempt::SendMsgCmsg {
                    level,
                    ty,
                    data,
                    after_plain,
                    ..
                } => {
                    let (sa, len, family) = sa.unwrap();
                    let s = libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    // One cmsghdr (len, level, type), its data, padded to 8 bytes.
                    let mut control = [0u64; 14];
                    let n = data.len().min(96);
                    control[0] = (16 + n) as u64;
                    control[1] = u64::from(*level as u32) | u64::from(*ty as u32) << 32;
                    let bytes = control.as_mut_ptr().cast::<u8>().add(16);
                    std::ptr::copy_nonoverlapping(data.as_ptr(), bytes, n);
                    let mut iov = libc::iovec {
                        iov_base: b"q".as_ptr() as *mut libc::c_void,
                        iov_len: 1,
                    };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_name = (&sa as *const libc::sockaddr_in6) as *mut libc::c_void;
                    msg.msg_namelen = len;
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = control.as_mut_ptr().cast();
                    msg.msg_controllen = 16 + n.div_ceil(8) * 8;
                    if *after_plain {
                        let mut plain = msg;
                        plain.msg_control = std::ptr::null_mut();
                        plain.msg_controllen = 0;
                        let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
                        msgs[0].msg_hdr = plain;
                        msgs[1].msg_hdr = msg;
                        match libc::sendmmsg(s, msgs.as_mut_ptr(), 2, 0) {
                            2 => libc::_exit(0),
                            1 => libc::_exit(ERRNO_BASE + libc::EPERM),
                            r => check(r as libc::c_long),
                        }
                    }
                    check(libc::sendmsg(s, &msg, 0) as libc::c_long);
                }
                Attempt::SendToWithOpt {
                    level, name, value, ..
                } => {
                    let (sa, len, family) = sa.unwrap();
                    let s = socket_with_opt(family, libc::SOCK_DGRAM, *level, *name, value);
                    check(libc::sendto(
                        s,
                        b"q".as_ptr().cast(),
                        1,
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        len,
                    ) as libc::c_long);
                }
                Attempt::SetSockOpt {
                    family,
                    ty,
                    level,
                    name,
                    value,
                } => {
                    socket_with_opt(*family, *ty, *level, *name, value);
                }
                Attempt::SendTo { .. } => {
                    let (sa, len, family) = sa.unwrap();
                    let s = libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::sendto(
                        s,
                        b"q".as_ptr().cast(),
                        1,
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        len,
                    ) as libc::c_long);
                }
                Attempt::Socket {
                    family,
                    ty,
                    protocol,
                } => check(libc::socket(*family, *ty, *protocol).into()),
                Attempt::Unshare { flags } => check(libc::unshare(*flags).into()),
                Attempt::BpfObjGet { path } => {
                    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags.
                    let mut attr = [0u64; 16];
                    attr[0] = path.as_ptr() as u64;
                    check(libc::syscall(
                        libc::SYS_bpf,
                        7, // BPF_OBJ_GET
                        attr.as_mut_ptr(),
                        std::mem::size_of_val(&attr),
                    ));
                }
                Attempt::Kill { pid, sig } => check(libc::kill(*pid, *sig).into()),
                Attempt::PtraceSeize { pid } => check(libc::ptrace(
                    libc::PTRACE_SEIZE,
                    *pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )),
                Attempt::PtraceTraceme => check(libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )),
                Attempt::Write { path, data } => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    check(fd.into());
                    check(libc::write(fd, data.as_ptr().cast(), data.len()) as libc::c_long);
                }
                Attempt::WriteFd {
                    fd,
                    data,
                    mapped: false,
                } => check(libc::write(*fd, data.as_ptr().cast(), data.len()) as libc::c_long),
                Attempt::WriteFd {
                    fd,
                    data,
                    mapped: true,
                } => {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        *fd,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        fail(())
                    }
                    std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), data.len());
                }
                Attempt::Unlink { path } => check(libc::unlink(path.as_ptr()).into()),
                Attempt::Link { from, to } => check(libc::link(from.as_ptr(), to.as_ptr()).into()),
                Attempt::RenamedOpen {
                    clone,
                    root,
                    path,
                    flags,
                } => {
                    let ns = if *clone { libc::CLONE_NEWNS } else { 0 };
                    if libc::unshare(libc::CLONE_NEWUSER | ns) != 0 {
                        libc::_exit(98);
                    }
                    if *clone {
                        let tree = open_tree_clone(root);
                        if tree < 0 {
                            libc::_exit(98);
                        }
                        let inner = path.as_ptr().add(1);
                        check(libc::openat(tree as i32, inner, *flags).into());
                    } else {
                        if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                            libc::_exit(98);
                        }
                        check(libc::open(path.as_ptr(), *flags).into());
                    }
                }
                Attempt::FsopenOverlay { lower, file } => {
                    const FSCONFIG_SET_STRING: libc::c_long = 1;
                    const FSCONFIG_CMD_CREATE: libc::c_long = 6;
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                        libc::_exit(98);
                    }
                    let map = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_WRONLY);
                    if map < 0 || libc::write(map, b"0 0 1".as_ptr().cast(), 5) != 5 {
                        libc::_exit(98);
                    }
                    libc::close(map);
                    let fs = libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), 0);
                    if fs < 0
                        || libc::syscall(
                            libc::SYS_fsconfig,
                            fs,
                            FSCONFIG_SET_STRING,
                            c"lowerdir".as_ptr(),
                            lower.as_ptr(),
                            0,
                        ) != 0
                    {
                        libc::_exit(98);
                    }
                    check(libc::syscall(
                        libc::SYS_fsconfig,
                        fs,
                        FSCONFIG_CMD_CREATE,
                        std::ptr::null::<libc::c_char>(),
                        std::ptr::null::<libc::c_char>(),
                        0,
                    ));
                    let mnt = libc::syscall(libc::SYS_fsmount, fs, 0, 0);
                    check(mnt);
                    check(libc::openat(mnt as i32, file.as_ptr(), libc::O_RDONLY).into());
                }
                Attempt::UsernsLoopbackUp => {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                        libc::_exit(98);
                    }
                    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if sock < 0 {
                        libc::_exit(98);
                    }
                    let mut ifr: libc::ifreq = std::mem::zeroed();
                    for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo") {
                        *d = *b as libc::c_char;
                    }
                    ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK) as libc::c_short;
                    check(libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr).into());
                }
                Attempt::ChrootOpen { root, path, flags } => {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        libc::_exit(98);
                    }
                    check(libc::open(path.as_ptr(), *flags).into());
                }
                Attempt::MountOpen {
                    source,
                    target,
                    fstype,
                    mount_flags,
                    path,
                    flags,
                } => {
                    // Private, so nothing propagates back to the test's namespace.
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                    {
                        libc::_exit(98);
                    }
                    let fstype = if fstype.is_empty() {
                        std::ptr::null()
                    } else {
                        fstype.as_ptr()
                    };
                    if libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        fstype,
                        *mount_flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        libc::_exit(98);
                    }
                    check(libc::open(path.as_ptr(), *flags).into());
                }
                Attempt::OpenByHandleAt { dir, handle, flags } => {
                    let fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::syscall(
                        libc::SYS_open_by_handle_at,
                        fd,
                        handle.as_ptr(),
                        *flags,
                    ));
                }
                Attempt::UnixConnect { .. }
                | Attempt::UnixConnectAbstract { .. }
                | Attempt::UnixConnectRelative { .. } => {
                    if let Attempt::UnixConnectRelative { dir, .. } = attempt
                        && libc::chdir(dir.as_ptr()) != 0
                    {
                        libc::_exit(98);
                    }
                    let (sa, len) = un.unwrap();
                    let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::connect(s, (&sa as *const libc::sockaddr_un).cast(), len).into());
                }
                Attempt::UnixSendTo { .. } => {
                    let (sa, len) = un.unwrap();
                    let s = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::sendto(
                        s,
                        b"q".as_ptr().cast(),
                        1,
                        0,
                        (&sa as *const libc::sockaddr_un).cast(),
                        len,
                    ) as libc::c_long);
                }
                Attempt::Prlimit { pid } => {
                    let mut old: libc::rlimit = std::mem::zeroed();
                    check(
                        libc::prlimit(*pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old).into(),
                    );
                    check(
                        libc::prlimit(*pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()).into(),
                    );
                }
                Attempt::SetPriority { pid } => {
                    check(libc::setpriority(libc::PRIO_PROCESS, *pid as libc::id_t, 0).into());
                }
                Attempt::SchedFifo => {
                    let param = libc::sched_param { sched_priority: 1 };
                    check(libc::sched_setscheduler(0, libc::SCHED_FIFO, &param).into());
                }
                Attempt::ProcessVmRead { pid, addr } => {
                    let mut byte = 0u8;
                    let local = libc::iovec {
                        iov_base: (&mut byte as *mut u8).cast(),
                        iov_len: 1,
                    };
                    let remote = libc::iovec {
                        iov_base: *addr as *mut libc::c_void,
                        iov_len: 1,
                    };
                    check(libc::process_vm_readv(*pid, &local, 1, &remote, 1, 0) as libc::c_long);
                }
                Attempt::Truncate { path } => check(libc::truncate(path.as_ptr(), 0).into()),
                Attempt::Ftruncate { path } => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::ftruncate(fd, 0).into());
                }
                Attempt::Ioctl { path, cmd, byte } => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::ioctl(fd, *cmd as _, byte as *const u8).into());
                }
                Attempt::IoctlZeroed { path, cmd } => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    let zeroes = 0u64;
                    check(libc::ioctl(fd, *cmd as _, &zeroes as *const u64).into());
                }
                Attempt::IoctlCompat { path, cmd, byte } => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    let low = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                        -1,
                        0,
                    );
                    if low == libc::MAP_FAILED {
                        libc::_exit(96);
                    }
                    *low.cast::<u8>() = *byte;
                    let ret: i64;
                    // rbx is LLVM's: the first argument goes through it by exchange. The
                    // compat entry does not keep r8-r15.
                    std::arch::asm!(
                        "xchg {fd}, rbx",
                        "int 0x80",
                        "xchg {fd}, rbx",
                        fd = inout(reg) fd as u64 => _,
                        inlateout("rax") 54i64 => ret,
                        in("rcx") *cmd,
                        in("rdx") low as u64,
                        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                        out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                    );
                    // The 32-bit entry returns a 32-bit result.
                    if (ret as i32) < 0 {
                        libc::_exit(ERRNO_BASE - ret as i32);
                    }
                }
                Attempt::SetOwn { pid } => {
                    let mut fds = [0; 2];
                    if libc::pipe(fds.as_mut_ptr()) != 0 {
                        libc::_exit(98);
                    }
                    let owner = if *pid == 0 { libc::getpid() } else { *pid };
                    check(libc::fcntl(fds[0], libc::F_SETOWN, owner).into());
                }
                Attempt::TtySigio {
                    tty: fd,
                    master,
                    sig,
                    fioasync,
                } => {
                    let fd = *fd;
                    // A readable terminal below must mean this attempt's own input.
                    check(libc::tcflush(fd, libc::TCIFLUSH).into());
                    // F_SETSIG (10): not in the libc crate for glibc.
                    check(libc::fcntl(fd, 10, *sig).into());
                    if *fioasync {
                        let on: libc::c_int = 1;
                        check(libc::ioctl(fd, libc::FIOASYNC, &on).into());
                    } else {
                        let fl = libc::fcntl(fd, libc::F_GETFL);
                        check(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC).into());
                    }
                    if libc::write(*master, b"x\n".as_ptr().cast(), 2) != 2 {
                        libc::_exit(97);
                    }
                    // Hold the descriptor (closing it turns the notification off) until the
                    // line discipline has the input: it raises SIGIO (`kill_fasync`) before
                    // it wakes readers, so readable means the signal was tried. 20 s deadline.
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    if libc::poll(&mut pfd, 1, 20_000) != 1 {
                        libc::_exit(96);
                    }
                    // The input is visible before `kill_fasync` runs, and a flush waits for
                    // the line discipline's receive to end (its termios lock, taken for
                    // writing): past it, the signal was tried. It also leaves the terminal
                    // empty for the next attempt.
                    check(libc::tcflush(fd, libc::TCIFLUSH).into());
                }
                Attempt::SelfSigio { ptmx } => {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGIO);
                    if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                        libc::_exit(98);
                    }
                    // (descriptor armed, descriptor written)
                    let (armed, written) = match ptmx {
                        None => {
                            let mut fds = [0; 2];
                            if libc::pipe(fds.as_mut_ptr()) != 0 {
                                libc::_exit(98);
                            }
                            check(libc::fcntl(fds[0], libc::F_SETOWN, libc::getpid()).into());
                            (fds[0], fds[1])
                        }
                        Some(ptmx) => {
                            let mut unlock: libc::c_int = 0;
                            let m = libc::open(ptmx.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                            if libc::setsid() < 0
                                || m < 0
                                || libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) != 0
                            {
                                libc::_exit(98);
                            }
                            let s = libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR);
                            if s < 0 || libc::ioctl(s, libc::TIOCSCTTY, 0) != 0 {
                                libc::_exit(98);
                            }
                            (s, m)
                        }
                    };
                    let fl = libc::fcntl(armed, libc::F_GETFL);
                    check(libc::fcntl(armed, libc::F_SETFL, fl | libc::O_ASYNC).into());
                    if libc::write(written, b"x\n".as_ptr().cast(), 2) != 2 {
                        libc::_exit(97);
                    }
                    let t = libc::timespec {
                        tv_sec: 5,
                        tv_nsec: 0,
                    };
                    if libc::sigtimedwait(&set, std::ptr::null_mut(), &t) != libc::SIGIO {
                        libc::_exit(95);
                    }
                }
                Attempt::SetXattr { path, name, value } => check(
                    libc::setxattr(
                        path.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                    .into(),
                ),
                Attempt::RemoveXattr { path, name } => {
                    check(libc::removexattr(path.as_ptr(), name.as_ptr()).into());
                }
                Attempt::Bind { .. } => {
                    let (sa, len, family) = sa.unwrap();
                    let s = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::bind(s, (&sa as *const libc::sockaddr_in6).cast(), len).into());
                    check(libc::listen(s, 1).into());
                }
                Attempt::UnixBind { .. } => {
                    let (sa, len) = un.unwrap();
                    let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        libc::_exit(97);
                    }
                    check(libc::bind(s, (&sa as *const libc::sockaddr_un).cast(), len).into());
                    check(libc::listen(s, 1).into());
                }
                Attempt::Lease { path, kind } => {
                    libc::signal(libc::SIGIO, libc::SIG_IGN);
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::fcntl(fd, libc::F_SETLEASE, *kind).into());
                }
                Attempt::Rename { from, to } => {
                    check(libc::rename(from.as_ptr(), to.as_ptr()).into());
                }
                Attempt::NewName {
                    trigger,
                    op,
                    from,
                    to,
                } => {
                    if let Some(trigger) = trigger
                        && libc::open(trigger.as_ptr(), libc::O_RDONLY) < 0
                    {
                        libc::_exit(96);
                    }
                    let (from, to) = (from.as_ptr(), to.as_ptr());
                    let r = match op {
                        0 => libc::link(from, to).into(),
                        1 => libc::rename(from, to).into(),
                        2 => libc::syscall(
                            libc::SYS_renameat2,
                            libc::AT_FDCWD,
                            from,
                            libc::AT_FDCWD,
                            to,
                            libc::RENAME_EXCHANGE,
                        ),
                        4 => libc::symlink(from, to).into(),
                        5 => libc::mkdir(to, 0o755).into(),
                        6 => libc::mknod(to, libc::S_IFIFO | 0o600, 0).into(),
                        7 => libc::rmdir(from).into(),
                        8 => libc::chmod(from, 0o4777).into(),
                        9 => libc::chown(from, 4242, 4242).into(),
                        _ => {
                            let fd = libc::open(from, libc::O_PATH);
                            if fd < 0 {
                                libc::_exit(98);
                            }
                            proc_self_fd(&mut proc_fd, fd);
                            libc::linkat(
                                libc::AT_FDCWD,
                                proc_fd.as_ptr().cast(),
                                libc::AT_FDCWD,
                                to,
                                libc::AT_SYMLINK_FOLLOW,
                            )
                            .into()
                        }
                    };
                    check(r);
                }
                Attempt::ShmAttach { id } => {
                    let at = libc::shmat(*id, std::ptr::null(), libc::SHM_RDONLY);
                    check(if at as isize == -1 { -1 } else { 0 });
                }
                Attempt::MsgSend { id } => {
                    let msg: [libc::c_long; 2] = [1, 0];
                    check(libc::msgsnd(*id, msg.as_ptr().cast(), 1, libc::IPC_NOWAIT).into());
                }
                Attempt::ShmRemove { id } => {
                    check(libc::shmctl(*id, libc::IPC_RMID, std::ptr::null_mut()).into());
                }
                Attempt::ShmOwn => {
                    let id = libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600);
                    check(id.into());
                    let at = libc::shmat(id, std::ptr::null(), 0);
                    check(if at as isize == -1 { -1 } else { 0 });
                    check(libc::shmdt(at).into());
                    check(libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()).into());
                }
                Attempt::PidfdGetfd { pid, fd } => {
                    let pidfd = libc::syscall(libc::SYS_pidfd_open, *pid, 0);
                    if pidfd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::syscall(libc::SYS_pidfd_getfd, pidfd, *fd, 0));
                }
                Attempt::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                } => check(
                    libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ptr(),
                        *flags,
                        std::ptr::null(),
                    )
                    .into(),
                ),
                Attempt::Umount { target } => check(libc::umount2(target.as_ptr(), 0).into()),
                Attempt::Chroot { path } => check(libc::chroot(path.as_ptr()).into()),
                Attempt::PivotRoot { new_root, put_old } => check(libc::syscall(
                    libc::SYS_pivot_root,
                    new_root.as_ptr(),
                    put_old.as_ptr(),
                )),
                Attempt::OpenTreeMove { from, to } => {
                    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
                    let fd = open_tree_clone(from);
                    check(fd);
                    check(libc::syscall(
                        libc::SYS_move_mount,
                        fd,
                        empty.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    ));
                }
                Attempt::Setns { path, nstype } => {
                    // Opening another process's namespace is itself a ptrace_may_access() check.
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    check(fd.into());
                    check(libc::setns(fd, *nstype).into());
                }
                Attempt::UnshareMount {
                    flags,
                    map_root,
                    target,
                } => {
                    check(libc::unshare(*flags).into());
                    if *map_root {
                        let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_WRONLY);
                        if fd < 0 || libc::write(fd, b"0 0 1".as_ptr().cast(), 5) != 5 {
                            libc::_exit(98);
                        }
                        libc::close(fd);
                    }
                    check(
                        libc::mount(
                            c"none".as_ptr(),
                            target.as_ptr(),
                            c"tmpfs".as_ptr(),
                            0,
                            std::ptr::null(),
                        )
                        .into(),
                    );
                }
                Attempt::OpenByHandle { path, mount_dir } => {
                    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
                    let mut handle = [0u32; 34];
                    handle[0] = 128;
                    let mut mount_id = 0i32;
                    if libc::syscall(
                        libc::SYS_name_to_handle_at,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        handle.as_mut_ptr(),
                        &mut mount_id,
                        0,
                    ) != 0
                    {
                        libc::_exit(98);
                    }
                    let mfd = libc::open(mount_dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    if mfd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::syscall(
                        libc::SYS_open_by_handle_at,
                        mfd,
                        handle.as_mut_ptr(),
                        libc::O_RDONLY,
                    ));
                }
                Attempt::Mknod { path, mode, dev } => {
                    check(libc::mknod(path.as_ptr(), *mode, *dev).into())
                }
                Attempt::Chmod { path, mode } => check(libc::chmod(path.as_ptr(), *mode).into()),
                Attempt::Chown { path, uid, gid } => {
                    check(libc::chown(path.as_ptr(), *uid, *gid).into())
                }
                Attempt::RequestKey { ty, description } => check(libc::syscall(
                    libc::SYS_request_key,
                    ty.as_ptr(),
                    description.as_ptr(),
                    c"callout".as_ptr(),
                    -2i32,
                )),
                Attempt::AddKey { ty, description } => check(libc::syscall(
                    libc::SYS_add_key,
                    ty.as_ptr(),
                    description.as_ptr(),
                    b"v".as_ptr(),
                    1usize,
                    -2i32,
                )),
                Attempt::KeyRead { id } => {
                    let mut buf = [0u8; 64];
                    check(libc::syscall(
                        libc::SYS_keyctl,
                        KEYCTL_READ,
                        *id,
                        buf.as_mut_ptr(),
                        buf.len(),
                    ));
                }
                Attempt::KeyUpdate { id } => check(libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_UPDATE,
                    *id,
                    b"changed".as_ptr(),
                    7usize,
                )),
                Attempt::KeySearch {
                    keyring,
                    description,
                } => check(libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_SEARCH,
                    *keyring,
                    c"user".as_ptr(),
                    description.as_ptr(),
                    0,
                )),
                Attempt::KeyLink { id } => check(libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_LINK,
                    *id,
                    KEY_SPEC_PROCESS_KEYRING,
                )),
                Attempt::KeyOwn => {
                    let mut buf = [0u8; 16];
                    for keyring in [KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING] {
                        if keyring == KEY_SPEC_SESSION_KEYRING {
                            check(libc::syscall(
                                libc::SYS_keyctl,
                                KEYCTL_JOIN_SESSION_KEYRING,
                                0usize,
                            ));
                        }
                        let id = libc::syscall(
                            libc::SYS_add_key,
                            c"user".as_ptr(),
                            c"own".as_ptr(),
                            b"v".as_ptr(),
                            1usize,
                            keyring,
                        );
                        check(id);
                        let read = |buf: &mut [u8; 16]| {
                            libc::syscall(libc::SYS_keyctl, KEYCTL_READ, id, buf.as_mut_ptr(), 16)
                        };
                        check(read(&mut buf));
                        check(libc::syscall(
                            libc::SYS_keyctl,
                            KEYCTL_UPDATE,
                            id,
                            b"w".as_ptr(),
                            1usize,
                        ));
                        if read(&mut buf) != 1 || buf[0] != b'w' {
                            libc::_exit(97);
                        }
                    }
                }
                Attempt::MqOpen { name, flags } => check(libc::syscall(
                    libc::SYS_mq_open,
                    name.as_ptr(),
                    *flags,
                    0o600,
                    0usize,
                )),
                Attempt::MqSend { name } => {
                    let mqd = libc::syscall(
                        libc::SYS_mq_open,
                        name.as_ptr(),
                        libc::O_WRONLY | libc::O_NONBLOCK,
                        0o600,
                        0usize,
                    );
                    check(mqd);
                    check(mq_send_one(mqd));
                }
                Attempt::MqUnlink { name } => {
                    check(libc::syscall(libc::SYS_mq_unlink, name.as_ptr()))
                }
                Attempt::MqOwn { name } => {
                    // The default attributes (10 messages of 8192 bytes): attributes of its
                    // own make the kernel probe CAP_SYS_RESOURCE, which agents are refused.
                    let mqd = libc::syscall(
                        libc::SYS_mq_open,
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK,
                        0o600,
                        0usize,
                    );
                    check(mqd);
                    check(mq_send_one(mqd));
                    let mut buf = [0u8; 8192];
                    let got = libc::syscall(
                        libc::SYS_mq_timedreceive,
                        mqd,
                        buf.as_mut_ptr(),
                        buf.len(),
                        0usize,
                        0usize,
                    );
                    if got != 1 || buf[0] != b'm' {
                        libc::_exit(97);
                    }
                    let again = libc::syscall(
                        libc::SYS_mq_open,
                        name.as_ptr(),
                        libc::O_RDONLY,
                        0o600,
                        0usize,
                    );
                    check(again);
                    check(libc::syscall(libc::SYS_mq_unlink, name.as_ptr()));
                }
                Attempt::Symlink { target, path } => {
                    check(libc::symlink(target.as_ptr(), path.as_ptr()).into())
                }
                Attempt::Mkdir { path } => check(libc::mkdir(path.as_ptr(), 0o755).into()),
                Attempt::InitModule => check(libc::syscall(
                    libc::SYS_init_module,
                    b"not a module".as_ptr(),
                    12usize,
                    empty.as_ptr(),
                )),
                Attempt::FinitModule { path } => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    check(libc::syscall(libc::SYS_finit_module, fd, empty.as_ptr(), 0));
                }
                Attempt::KexecLoad => check(libc::syscall(
                    libc::SYS_kexec_load,
                    0usize,
                    0usize,
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                )),
                Attempt::Sethostname { name } => {
                    check(libc::sethostname(name.as_ptr().cast(), name.len()).into())
                }
                Attempt::Clone3 { flags, cgroup } => {
                    // struct clone_args, up to `cgroup` (CLONE_ARGS_SIZE_VER2).
                    let mut args = [0u64; 11];
                    args[0] = *flags;
                    args[4] = libc::SIGCHLD as u64;
                    if let Some(cg) = cgroup {
                        let fd = libc::open(cg.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                        if fd < 0 {
                            libc::_exit(98);
                        }
                        args[10] = fd as u64;
                    }
                    let pid = libc::syscall(
                        libc::SYS_clone3,
                        args.as_mut_ptr(),
                        std::mem::size_of_val(&args),
                    );
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    check(pid);
                    let mut status = 0;
                    if libc::waitpid(pid as i32, &mut status, 0) != pid as i32 || status != 0 {
                        libc::_exit(96);
                    }
                }
                Attempt::MapExec { path, mprotect } | Attempt::MapExecAs { path, mprotect, .. } => {
                    if let Attempt::MapExecAs { uid, .. } = attempt
                        && (libc::setgroups(0, std::ptr::null()) != 0
                            || libc::setresgid(*uid, *uid, *uid) != 0
                            || libc::setresuid(*uid, *uid, *uid) != 0)
                    {
                        libc::_exit(98);
                    }
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    let prot = if *mprotect {
                        libc::PROT_READ
                    } else {
                        libc::PROT_READ | libc::PROT_EXEC
                    };
                    let p = libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0);
                    if p == libc::MAP_FAILED {
                        fail(())
                    }
                    if *mprotect {
                        check(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC).into());
                    }
                }
                Attempt::CopyMapExec {
                    src,
                    dst,
                    unlink_first,
                } => {
                    let from = libc::open(src.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    let to = libc::open(
                        dst.as_ptr(),
                        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o755,
                    );
                    if from < 0 || to < 0 || !copy_fd(from, to) {
                        libc::_exit(98);
                    }
                    if *unlink_first && libc::unlink(dst.as_ptr()) != 0 {
                        libc::_exit(98);
                    }
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE,
                        to,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        fail(())
                    }
                }
                Attempt::ShmExec { exec } => {
                    let id = libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o700);
                    if id < 0 {
                        libc::_exit(98);
                    }
                    let flags = if *exec { libc::SHM_EXEC } else { 0 };
                    let p = libc::shmat(id, std::ptr::null(), flags);
                    let errno = *libc::__errno_location();
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    if p as isize == -1 {
                        libc::_exit(ERRNO_BASE + errno);
                    }
                }
                Attempt::MapExecShared { path } => {
                    static FD: AtomicI32 = AtomicI32::new(-1);
                    static ERRNO: AtomicI32 = AtomicI32::new(-1);
                    extern "C" fn map(_: *mut libc::c_void) -> libc::c_int {
                        // SAFETY: the descriptor is open; the mapping is only made.
                        let p = unsafe {
                            libc::mmap(
                                std::ptr::null_mut(),
                                4096,
                                libc::PROT_READ | libc::PROT_EXEC,
                                libc::MAP_PRIVATE,
                                FD.load(Ordering::SeqCst),
                                0,
                            )
                        };
                        let errno = if p == libc::MAP_FAILED {
                            // SAFETY: this thread's errno.
                            unsafe { *libc::__errno_location() }
                        } else {
                            0
                        };
                        ERRNO.store(errno, Ordering::SeqCst);
                        0
                    }
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(98);
                    }
                    FD.store(fd, Ordering::SeqCst);
                    let mut stack = vec![0u8; 64 << 10];
                    let top = stack.as_mut_ptr().add(stack.len()).cast::<libc::c_void>();
                    let pid = libc::clone(
                        map,
                        top,
                        libc::CLONE_VM | libc::SIGCHLD,
                        std::ptr::null_mut(),
                    );
                    if pid < 0 {
                        libc::_exit(98);
                    }
                    let mut status = 0;
                    if libc::waitpid(pid, &mut status, 0) != pid {
                        libc::_exit(98);
                    }
                    match ERRNO.load(Ordering::SeqCst) {
                        0 => {}
                        errno if errno > 0 => libc::_exit(ERRNO_BASE + errno),
                        _ => libc::_exit(98),
                    }
                }
                Attempt::MemfdMapExec { src } => {
                    let from = libc::open(src.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    let to = libc::memfd_create(c"code".as_ptr(), libc::MFD_CLOEXEC);
                    if from < 0 || to < 0 || !copy_fd(from, to) {
                        libc::_exit(98);
                    }
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE,
                        to,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        fail(())
                    }
                }
            }
            libc::_exit(0)
        }
    }
    let mut reported = pid;
    if container.is_some() {
        // SAFETY: reading the container process's pid from our pipe, then closing our ends.
        unsafe {
            libc::close(pid_pipe[1]);
            let mut inner = 0i32;
            if libc::read(pid_pipe[0], (&mut inner as *mut i32).cast(), 4) == 4 {
                reported = inner;
            }
            libc::close(pid_pipe[0]);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    let outcome = if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        let code = libc::WEXITSTATUS(status);
        assert!(
            !(96..=99).contains(&code),
            "child {pid}: harness step failed (exit {code})"
        );
        if code >= ERRNO_BASE {
            Outcome::Errno(code - ERRNO_BASE)
        } else {
            Outcome::Exited(code)
        }
    };
    assert!(
        container.is_none() || reported != pid,
        "the container's first process was not started"
    );
    (reported as u32, outcome)
}

/// The programs, attached with a policy under a pin directory of their own (removed on drop),
/// and their event stream.
pub struct Loaded {
    pub enforcer: Enforcer,
    pub agents: Vec<AgentCgroup>,
    pub events: RingBuf<MapData>,
    pub pins: PinDir,
    /// Kernel rule id of the n-th rule (1-based) of the policy.
    pub generation: u32,
}

/// A pin directory unique to this process and call, unloaded when dropped so that a failing
/// test leaves nothing attached (declare it before the daemon that uses it: locals drop in
/// reverse order, so the daemon is gone first). The process's shared one ([`install`]) is
/// unloaded when the process exits instead.
pub struct PinDir(PathBuf, Unload);

/// When a [`PinDir`] is unloaded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unload {
    OnDrop,
    AtExit,
}

/// Whether the network namespace of `pid` has a TCP listener on `port` (its /proc/PID/net
/// views that namespace).
pub fn listens_in(pid: &str, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .is_ok_and(|t| tcp_table_listens(&t, port))
    })
}

/// Whether `table` (the text of /proc/net/tcp or tcp6) has a socket listening on `port`.
pub fn tcp_table_listens(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    table
        .lines()
        .any(|l| l.contains(&want) && l.split_whitespace().nth(3) == Some("0A"))
}

/// The generation a daemon's start enforced, from what it said at start (1 on a fresh set; the
/// one after the pinned set's last on an adopted one).
pub fn first_generation(seen: &str) -> u64 {
    seen.lines()
        .find_map(|l| l.split(" as generation ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the generation the start enforced:\n{seen}"))
}

/// The port of the daemon's HTTP policy proxy, from what it said at start.
pub fn proxy_port(seen: &str) -> u16 {
    seen.lines()
        .find_map(|l| l.split("HTTP policy proxy on 127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the proxy's port:\n{seen}"))
}

pub fn pin_dir(label: &str) -> PinDir {
    PinDir(
        PathBuf::from(format!(
            "/sys/fs/bpf/governance-test-{}-{}-{label}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )),
        Unload::OnDrop,
    )
}

impl std::ops::Deref for PinDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for PinDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.1 == Unload::OnDrop && self.0.exists() {
            let _ = kernel::unload(&self.0);
        }
    }
}

/// Parse `yaml`, resolve its agents (cgroups must exist), attach every program this kernel
/// allows (with the degraded exec fallback where the LSM is refused) and install the policy,
/// all under a pin directory of its own. Tests check the hooks they need with
/// [`Loaded::require`].
pub fn load(yaml: &str) -> Loaded {
    load_under(yaml, pin_dir("load"))
}

/// The pin directory [`install`] shares within this process.
static SHARED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn unload_shared() {
    if let Some(pins) = SHARED.get() {
        let _ = kernel::unload(pins);
    }
}

/// As [`load`], but on this process's one set of programs: the first call loads and attaches
/// them, and every call installs `yaml` on them as the next generation, as a daemon's reload
/// does (the previous test's agents and tables are replaced, the counters carry on). Loading
/// costs about a minute of verifier time under emulation, which the VM suite would otherwise
/// pay once per test. What an earlier test left in the event ring is dropped first. The
/// programs are unloaded when the process exits.
pub fn install(yaml: &str) -> Loaded {
    load_under(yaml, shared_pins())
}

/// The process's shared pinned set, which [`install`] loads once and then adopts, unloaded when
/// the process exits. A daemon test about the daemon (its events, control socket, proxy), not
/// about loading programs, starts its daemon on it without `--detach-on-exit`: the start adopts
/// the programs instead of verifying every one of them again (minutes under emulation), as a
/// restart does, and the policy it installs is a generation after the set's last one.
pub fn shared_pins() -> PinDir {
    let pins = SHARED.get_or_init(|| {
        // SAFETY: registers a function without arguments, run once at exit.
        unsafe { libc::atexit(unload_shared) };
        PathBuf::from(format!(
            "/sys/fs/bpf/governance-test-{}-shared",
            std::process::id()
        ))
    });
    PinDir(pins.clone(), Unload::AtExit)
}

fn load_under(yaml: &str, pins: PinDir) -> Loaded {
    let policy = policy::parse(&[("test-policy.yaml".into(), yaml.to_owned())])
        .unwrap_or_else(|e| panic!("{e}"));
    let root = agents::cgroup2_mount().unwrap();
    let agents = agents::discover(&root, &policy, false, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !agents.is_empty(),
        "the test policy's agent cgroup was not found"
    );
    let mut enforcer =
        Enforcer::start(&pins, &root, true).unwrap_or_else(|e| panic!("loading eBPF: {e}"));
    // A daemon test that ran on the shared set ([`shared_pins`]) left its own settings behind:
    // its pid protected, its proxy's and TCP API's addresses, which a later process given that
    // pid or port would meet. The hook cases start from none.
    enforcer.protect(&[]).unwrap();
    enforcer.set_proxy(None).unwrap();
    enforcer.set_api_addr(None).unwrap();
    let generation = enforcer.generation().unwrap() + 1;
    let protect = kernel::Protect {
        cgroup_root: root.clone(),
        no_write: vec![pins.to_path_buf()],
        no_access: vec![],
        // As the daemon: where /etc's symlinks lead.
        system_links: kernel::system_link_targets(Path::new("/etc")),
    };
    let compiled = kernel::compile(&policy, &agents, generation, &protect);
    assert!(
        compiled.unenforceable.is_empty() && compiled.errors.is_empty(),
        "{:?} {:?}",
        compiled.unenforceable,
        compiled.errors
    );
    let skipped = enforcer.install(compiled).unwrap_or_else(|e| panic!("{e}"));
    assert!(skipped.is_empty(), "rules not installed: {skipped:?}");
    let mut events = enforcer.take_events().unwrap();
    while events.next().is_some() {}
    Loaded {
        enforcer,
        agents,
        events,
        pins,
        generation,
    }
}

impl Loaded {
    /// Panic unless the program `name` is attached.
    pub fn require(&self, name: &str) {
        let (_, state) = self
            .enforcer
            .hooks
            .iter()
            .find(|(p, _)| p.name == name)
            .unwrap_or_else(|| panic!("no program {name}"));
        assert!(
            matches!(state, kernel::HookState::Attached),
            "{name} must attach on this kernel: {state}"
        );
    }

    /// The kernel id of the policy's n-th rule (1-based).
    pub fn rule(&self, n: u32) -> u32 {
        governance_common::class_id(self.generation, n)
    }

    /// Arm the sequence rule `<policy>/<rule>` (the policy's n-th rule) for the agent rooted at
    /// cgroup `agent`, armed by process `tgid`: what the file hook writes in `SEQ_STATE` on the
    /// first classified read (see governance-ebpf's sequence.rs).
    pub fn arm_sequence(&self, agent: u64, name: &str, n: u32, tgid: u32) {
        arm_sequence_at(&self.pins, agent, name, self.rule(n), tgid);
    }

    /// Wait (up to 5 s) for the event emitted for process `pid`, skipping others.
    pub fn event_for(&mut self, pid: u32) -> Event {
        self.try_event_for(pid, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no decision event for pid {pid} within 5 s"))
    }

    /// Like [`Self::event_for`] but None on timeout (for asserting absence). Absence needs no
    /// long wait: the hooks put their event in the ring before the system call returns, and
    /// [`run_in`] reaps the child first, so an event for it is already there to be read.
    pub fn try_event_for(&mut self, pid: u32, wait: Duration) -> Option<Event> {
        self.try_event_where(wait, |ev| ev.tgid == pid)
    }

    /// The next event (within 5 s) that satisfies `pred`, skipping others.
    pub fn event_where(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        self.try_event_where(Duration::from_secs(5), pred)
            .expect("no matching decision event within 5 s")
    }

    /// The next event (within `wait`) that satisfies `pred`, skipping others.
    pub fn try_event_where(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(item) = self.events.next() {
                let ev = events::parse(&item).expect("event record of the wrong size");
                if pred(&ev) {
                    return Some(ev);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Poll interval; the deadline above bounds the wait.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Call `cond` until it holds, for up to `within`; whether it did. The calls are spaced from
/// 1 ms, doubling up to 100 ms: quick conditions are seen at once, slow ones are not hammered.
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Poll interval; the deadline above bounds the wait.
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Wait until `cond` holds, for up to `within`; panics naming `what` (what never happened)
/// otherwise.
pub fn wait_until(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(within, cond),
        "timed out after {within:?} waiting for {what}"
    );
}

/// Wait until `f` gives a value, for up to `within`, and return it; panics naming `what`
/// otherwise.
pub fn wait_for_value<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let mut value = None;
    wait_until(what, within, || {
        value = f();
        value.is_some()
    });
    value.expect("set when the wait ended")
}

/// The NUL-terminated text in a fixed buffer.
pub fn text(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[..governance_common::c_str_len(buf)]).into_owned()
}

/// Path of the `governance` binary under test (set by `cargo xtask test`).
pub fn governance_bin() -> PathBuf {
    std::env::var_os("GOVERNANCE_BIN")
        .map(PathBuf::from)
        .expect("GOVERNANCE_BIN is not set; run the kernel tests through `cargo xtask test`")
}

/// Fail loudly unless we are root: kernel tests never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel tests need root (to load eBPF and create cgroups); run them with `cargo xtask test` as root"
    );
}

/// `program args...` to run inside `cgroup` (it joins the cgroup between fork and exec), or
/// outside every agent when `cgroup` is None.
pub fn command_in(cgroup: Option<&Path>, program: &str, args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(cg) = cgroup {
        let procs = cstr(&cg.join("cgroup.procs"));
        // SAFETY: between fork and exec only open/write/close (async-signal-safe) on data
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
    cmd
}

/// Spawn `cmd` with its stdin and stdout piped, and return once its first line of output is
/// `ready` (`what` names it if it is not). The line is read a byte at a time, so the rest of
/// its output stays in `child.stdout` for the caller.
pub fn spawn_ready(cmd: &mut std::process::Command, what: &str) -> Reaped {
    use std::io::Read as _;
    let mut child = Reaped(
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    );
    let (mut line, mut byte) = (Vec::new(), [0u8]);
    let out = child.stdout.as_mut().unwrap();
    while line.len() < 64 {
        out.read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("{what} ended before `ready`: {e}"));
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&line),
        "ready",
        "{what} did not start"
    );
    child
}

/// A child process of ours that is killed (by its pid) and reaped when dropped, so a failing
/// test leaves no subscriber or server behind.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process of ours in a mount namespace of its own, where `source` is bind-mounted on
/// `target`: another mount namespace's view of a directory, which other processes reach
/// through `/proc/<pid>/root`. Killed (by its pid) and reaped when dropped.
pub struct MountNsView {
    pub pid: i32,
}

impl MountNsView {
    pub fn new(source: &Path, target: &Path) -> Self {
        let (source, target) = (cstr(source), cstr(target));
        let mut fds = [0i32; 2];
        // SAFETY: a pipe into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: the child only makes raw syscalls on data prepared above, then waits to be
        // killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
                    && libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) == 0;
                let byte: u8 = if ok { b'1' } else { b'0' };
                libc::write(fds[1], (&byte as *const u8).cast(), 1);
                if !ok {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let mut byte = 0u8;
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let view = Self { pid };
        assert!(
            n == 1 && byte == b'1',
            "the mount namespace view was not made"
        );
        view
    }

    /// `path` (absolute, in that namespace) as other processes reach it.
    pub fn path(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.strip_prefix("/").unwrap())
    }
}

impl Drop for MountNsView {
    fn drop(&mut self) {
        // SAFETY: our own child, by its pid.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

impl Loaded {
    /// Compile `yaml` again for the same agents and install it as the next generation, as a
    /// daemon's reload does (identities are resolved again: a replaced file is the new one).
    pub fn reload(&mut self, yaml: &str) {
        let policy = policy::parse(&[("test-policy.yaml".into(), yaml.to_owned())])
            .unwrap_or_else(|e| panic!("{e}"));
        let protect = kernel::Protect {
            cgroup_root: agents::cgroup2_mount().unwrap(),
            no_write: vec![self.pins.to_path_buf()],
            no_access: vec![],
            system_links: kernel::system_link_targets(Path::new("/etc")),
        };
        let generation = self.generation + 1;
        let compiled = kernel::compile(&policy, &self.agents, generation, &protect);
        assert!(
            compiled.unenforceable.is_empty() && compiled.errors.is_empty(),
            "{:?} {:?}",
            compiled.unenforceable,
            compiled.errors
        );
        let skipped = self
            .enforcer
            .install(compiled)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(skipped.is_empty(), "rules not installed: {skipped:?}");
        self.generation = generation;
    }
}

/// A btrfs filesystem mounted for a test: the VM's btrfs disk (an NVMe device with serial
/// `btrfs`, made empty by `cargo xtask vm` at each boot), or on the host a 128 MiB image made
/// with `mkfs.btrfs` and mounted through a loop device. Unmounted (and the image removed)
/// however the test ends.
pub struct Btrfs {
    pub mnt: PathBuf,
    dir: PathBuf,
}

impl Btrfs {
    pub fn mount(label: &str) -> Btrfs {
        let dir = PathBuf::from(format!(
            "/tmp/governance-btrfs-{label}-{}",
            std::process::id()
        ));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let ran = |cmd: &mut std::process::Command| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        match vm_disk("btrfs") {
            Some(device) => ran(std::process::Command::new("mount")
                .args(["-t", "btrfs"])
                .arg(device)
                .arg(&mnt)),
            None => {
                let image = dir.join("fs.img");
                std::fs::File::create(&image)
                    .unwrap()
                    .set_len(128 << 20)
                    .unwrap();
                ran(std::process::Command::new("mkfs.btrfs")
                    .arg("-q")
                    .arg(&image));
                ran(std::process::Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&mnt));
            }
        }
        Btrfs { mnt, dir }
    }

    /// A new subvolume at `rel` below the mount point (BTRFS_IOC_SUBVOL_CREATE on its parent
    /// directory, which may be in another subvolume: a nested one): it numbers its inodes on
    /// its own, from 256 (its root) on.
    pub fn subvolume(&self, rel: &str) -> PathBuf {
        let at = self.mnt.join(rel);
        let name = at.file_name().unwrap().to_string_lossy().into_owned();
        // struct btrfs_ioctl_vol_args { __s64 fd; char name[4088]; }
        let mut args = vec![0u8; 4096];
        args[8..8 + name.len()].copy_from_slice(name.as_bytes());
        // _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
        const SUBVOL_CREATE: u64 = (1 << 30) | (4096 << 16) | (0x94 << 8) | 14;
        let dir = std::fs::File::open(at.parent().unwrap()).unwrap();
        // SAFETY: the argument is the 4096-byte struct the ioctl reads.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                SUBVOL_CREATE as _,
                args.as_mut_ptr(),
            )
        };
        assert_eq!(
            r,
            0,
            "creating the subvolume {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        at
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The block device of the VM's NVMe disk with serial `serial` (`cargo xtask vm` attaches
/// `governance`, a raw scratch disk, and `btrfs`), None outside the VM.
pub fn vm_disk(serial: &str) -> Option<PathBuf> {
    std::fs::read_dir("/sys/class/nvme")
        .ok()?
        .flatten()
        .find_map(|c| {
            let found = std::fs::read_to_string(c.path().join("serial")).ok()?;
            (found.trim() == serial)
                .then(|| PathBuf::from(format!("/dev/{}n1", c.file_name().to_string_lossy())))
        })
}

/// The `struct file_handle` of `path` (name_to_handle_at), for [`Attempt::OpenByHandle`].
pub fn file_handle(path: &Path) -> Vec<u8> {
    let path = cstr(path);
    // struct file_handle { u32 handle_bytes; int handle_type; unsigned char f_handle[]; }
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0i32;
    // SAFETY: the buffer holds the header and 128 bytes of handle, as handle_bytes says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    buf.truncate(8 + len);
    buf
}

/// [`start_daemon`] for a daemon presenting another build id (`GOVERNANCE_TEST_BUILD_SALT`,
/// tests only): two daemons of one binary started with different salts hand over as two builds
/// do (the second refuses to adopt the first's pins).
pub fn start_daemon_of_build(args: &[&str], policy_dir: &Path, salt: &str) -> (Daemon, String) {
    start_daemon_env(
        args,
        policy_dir,
        &[("GOVERNANCE_TEST_BUILD_SALT", Path::new(salt))],
    )
}

/// Attempts made in a cgroup by a thread, one after the other in turn, until [`Self::stop`]:
/// how many of each were made, and how many were not refused (anything but EPERM).
pub struct AttemptLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tried: std::sync::Arc<Vec<AtomicU32>>,
    thread: std::thread::JoinHandle<Vec<u32>>,
}

impl AttemptLoop {
    pub fn start(cgroup: &Path, comm: &str, attempts: Vec<Attempt>) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let tried = Arc::new(
            attempts
                .iter()
                .map(|_| AtomicU32::new(0))
                .collect::<Vec<_>>(),
        );
        let (s, t, cgroup, comm) = (
            stop.clone(),
            tried.clone(),
            cgroup.to_path_buf(),
            comm.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            let mut allowed = vec![0u32; attempts.len()];
            while !s.load(Ordering::Relaxed) {
                let round = std::time::Instant::now();
                for (i, attempt) in attempts.iter().enumerate() {
                    if run_in(Some(&cgroup), &comm, attempt).1 != Outcome::Errno(libc::EPERM) {
                        allowed[i] += 1;
                    }
                    t[i].fetch_add(1, Ordering::Relaxed);
                }
                // Paced, not a wait for anything: idle three times as long as the round took,
                // so that the loop takes a quarter of a CPU at most. In the emulated VM (both
                // vCPUs on one host thread) an unpaced loop took half the machine from the
                // daemon it runs against, whose programs then took 300 s to load.
                std::thread::sleep((round.elapsed() * 3).min(std::time::Duration::from_secs(1)));
            }
            allowed
        });
        Self {
            stop,
            tried,
            thread,
        }
    }

    /// Attempts made so far, all kinds together.
    pub fn tried(&self) -> u32 {
        self.tried.iter().map(|t| t.load(Ordering::Relaxed)).sum()
    }

    /// Wait (up to `within`) until `more` attempts beyond `from` have been made.
    pub fn wait_for(&self, what: &str, from: u32, more: u32, within: Duration) {
        wait_until(what, within, || self.tried() >= from + more);
    }

    /// Stop, and return (attempts made, attempts not refused) for each attempt.
    pub fn stop(self) -> Vec<(u32, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        let allowed = self.thread.join().expect("the attempt loop panicked");
        self.tried
            .iter()
            .zip(allowed)
            .map(|(t, a)| (t.load(Ordering::Relaxed), a))
            .collect()
    }
}

/// Every record of an audit log directory, in order (the `record` of each line; seals are not
/// records).
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            // Only whole lines: the daemon may be writing the last one (a read mid-write saw
            // half a record).
            std::fs::read_to_string(f)
                .unwrap()
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter_map(|line| line.get("record").cloned())
        .collect()
}

/// `GET /metrics` from a daemon's `--health-listen` address: the body and headers, as text.
pub fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `series` (name and labels, as exposed) in a metrics page.
pub fn metric_value(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A process (in `cgroup`, or outside every agent) holding connections it made before anything
/// else happens: TCP to `out` (not allowlisted), TCP to `ok` (allowlisted) and a connected UDP
/// socket to `udp`. It sends `before` on each, says `ready`, and on each line of its input sends
/// `after` on each and says `sent udp=<result>`; with `read`, it first reads that file (in the
/// same process: the read that arms a sequence rule, between the connect and the send).
pub struct Established {
    pub child: Reaped,
    lines: std::io::BufReader<std::process::ChildStdout>,
    pub out: std::net::TcpStream,
    pub ok: std::net::TcpStream,
    pub udp: std::net::UdpSocket,
    pub out_port: u16,
    pub udp_port: u16,
}

impl Established {
    pub fn start(cgroup: Option<&Path>, read: Option<&Path>) -> Self {
        use std::io::Read as _;
        let out_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ok_l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let (out_addr, ok_addr) = (out_l.local_addr().unwrap(), ok_l.local_addr().unwrap());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let script = r#"
import errno, socket, sys
t = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
k = socket.create_connection(("127.0.0.2", int(sys.argv[2])))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", int(sys.argv[3])))
def send(word):
    t.sendall(word); k.sendall(word)
    try:
        u.send(word); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
send(b"before\n")
print("ready", flush=True)
for _ in sys.stdin:
    if sys.argv[4]:
        open(sys.argv[4]).read()
    print("sent udp=" + send(b"after\n"), flush=True)
"#;
        let ports = [
            out_addr.port().to_string(),
            ok_addr.port().to_string(),
            udp_port.to_string(),
            read.map(|p| p.display().to_string()).unwrap_or_default(),
        ];
        let mut child = spawn_ready(
            &mut command_in(
                cgroup,
                "python3",
                &["-c", script, &ports[0], &ports[1], &ports[2], &ports[3]],
            ),
            "the sender",
        );
        let lines = std::io::BufReader::new(child.stdout.take().unwrap());
        // Both connections are established (in the listeners' queues) once it is ready.
        let (out, _) = out_l.accept().unwrap();
        let (ok, _) = ok_l.accept().unwrap();
        for s in [&out, &ok] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 7];
            (&*s).read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"before\n");
        }
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let n = udp.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"before\n");
        Self {
            child,
            lines,
            out,
            ok,
            udp,
            out_port: out_addr.port(),
            udp_port,
        }
    }

    /// Send `after` on each connection; what the datagram's send returned.
    pub fn send_after(&mut self) -> String {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.lines, &mut line).unwrap();
        line.trim()
            .strip_prefix("sent udp=")
            .unwrap_or_else(|| panic!("the sender said {line:?}"))
            .to_owned()
    }

    /// Whether `after` arrives on `s` within `within`.
    pub fn tcp_got_after(s: &std::net::TcpStream, within: Duration) -> bool {
        use std::io::Read as _;
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 6];
        match (&*s).read_exact(&mut buf) {
            Ok(()) => {
                assert_eq!(&buf, b"after\n");
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    pub fn udp_got_after(&self, within: Duration) -> bool {
        self.udp.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 16];
        match self.udp.recv(&mut buf) {
            Ok(n) => {
                assert_eq!(&buf[..n], b"after\n");
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Arm sequence rule `name` (`<policy>/<rule id>`) for the agent rooted at cgroup `agent` in
/// the pinned `SEQ_STATE` under `pins`, as `file_open` does on a matching read (hosts without
/// BPF LSM have no file hook to arm it), by process `tgid`, naming kernel rule `rule_id`.
pub fn arm_sequence_at(pins: &Path, agent: u64, name: &str, rule_id: u32, tgid: u32) {
    use aya::maps::{HashMap, Map};
    use governance_common::sequence::{SeqArmed, SeqStateKey};
    let pin = pins.join(governance_common::pins::MAPS).join("SEQ_STATE");
    let map = Map::from_map_data(MapData::from_pin(&pin).unwrap()).unwrap();
    let mut state: HashMap<_, SeqStateKey, SeqArmed> = HashMap::try_from(map).unwrap();
    let key = SeqStateKey {
        agent_cgroup: agent,
        state: kernel::bucket_id(name),
    };
    let armed = SeqArmed {
        armed_ns: governance::events::monotonic_ns(),
        tgid,
        rule_id,
    };
    state.insert(key, armed, 0).unwrap();
}
