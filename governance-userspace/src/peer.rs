//! Who is on the other end of the control socket: the peer process the kernel names
//! (`SO_PEERCRED`) and the cgroups it runs in, so that the control API can refuse every process
//! inside an agent however it reached the socket.
//!
//! The pid `SO_PEERCRED` gives is the process that called connect(). Between then and the
//! moment its `/proc/PID/cgroup` is read, it may have exited and its pid been given to another
//! process, whose cgroup would then be read instead. A pidfd closes that gap: it names one
//! process for good, and a signal 0 sent through it after the read succeeds only if that very
//! process is still alive, so the pid was not reused meanwhile and the cgroup read was its own.
//!
//! - On Linux 6.5 and later the pidfd comes from the socket itself (`SO_PEERPIDFD`): it names
//!   the process that connected, with no window at all.
//! - Before 6.5, `pidfd_open(pid)` is all there is: it names whatever process has the pid when
//!   it is called. The connecting process could have exited and its pid been reused between
//!   its connect() and the daemon's accept (microseconds, while the daemon accepts), and the
//!   new process would be checked instead. Winning that takes exhausting the pid space to
//!   land a process *outside* the agent on that exact pid within that window, which an agent
//!   does not control. A peer that is gone without its pid being reused is refused.
//!
//! Where BPF LSM is active none of this is the guarantee: the kernel refuses agents' connects
//! to the control socket outright (by the socket file's identity, see the `unix` programs),
//! so an agent's connection never reaches the daemon. This check is what protects the API on
//! kernels without BPF LSM (degraded mode), and a second line everywhere.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

/// A process on the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPeer {
    /// Its process id, when the kernel gave one.
    pub pid: Option<u32>,
    pub uid: u32,
    /// Its cgroup as `/proc/PID/cgroup` names it (relative to the cgroup2 root).
    pub cgroup: String,
    /// The cgroup ids of its cgroup and of every ancestor up to the cgroup2 root (its own
    /// first). Err: why it could not be told (the API then refuses it).
    pub cgroups: Result<Vec<u64>, PeerError>,
    /// When it started ([`crate::procfs::start_time`]): with the pid, the process itself, for
    /// asking again later ([`LocalPeer::cgroups_now`]).
    pub start: Option<u64>,
}

impl Default for LocalPeer {
    fn default() -> Self {
        Self {
            pid: None,
            uid: 0,
            cgroup: String::new(),
            cgroups: Err(PeerError::NotIdentified),
            start: None,
        }
    }
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the peer that connected.
const SO_PEERPIDFD: libc::c_int = 77;
/// Deepest cgroup nesting walked (the kernel programs look 32 levels down).
const MAX_DEPTH: usize = 64;

/// Why a peer's cgroups could not be told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("not identified")]
    NotIdentified,
    #[error("the kernel gave no peer pid")]
    NoPid,
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("{0}: a path with a NUL byte")]
    NulInPath(String),
    /// A system call failed: what was done, and the error number.
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Os { what: String, errno: i32 },
    #[error("/proc/{0}/cgroup has no cgroup v2 line")]
    NoCgroupLine(i32),
    #[error("more than {MAX_DEPTH} cgroup levels")]
    TooDeep,
    #[error("the caller (pid {0}) exited while it was identified")]
    Exited(i32),
}

fn last_error(what: impl Into<String>) -> PeerError {
    PeerError::Os {
        what: what.into(),
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// A pidfd of the peer of the connected Unix socket `fd`, whose pid the kernel said is `pid`.
fn peer_pidfd(fd: RawFd, pid: i32) -> Result<OwnedFd, PeerError> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && pidfd >= 0 {
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(pidfd) });
    }
    // Before Linux 6.5 (ENOPROTOOPT): the process that has the pid now (see the module doc).
    // SAFETY: a plain system call.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(last_error(format!("pidfd_open({pid})")));
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Is the process of `pidfd` still alive (signal 0: nothing is sent)?
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: a plain system call on a descriptor we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// The cgroup v2 path in `/proc/PID/cgroup` text (the `0::` line).
pub fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// (device, inode) of an open descriptor.
fn id_of(fd: RawFd) -> Result<(u64, u64), PeerError> {
    // SAFETY: fstat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_error("fstat"));
    }
    Ok((st.st_dev, st.st_ino))
}

fn open_dir(at: RawFd, path: &CString) -> Result<OwnedFd, PeerError> {
    // SAFETY: a plain system call with a NUL-terminated path.
    let fd = unsafe {
        libc::openat(
            at,
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_error(format!("opening {}", path.to_string_lossy())));
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The cgroup ids (inode numbers) of `rel` below the cgroup2 mount `root` and of each of its
/// ancestors, its own first. Walked up through `..` from the opened directory, so a rename
/// of an ancestor meanwhile changes nothing.
pub fn cgroup_chain(root: &Path, rel: &str) -> Result<Vec<u64>, PeerError> {
    use std::os::unix::ffi::OsStrExt as _;
    let top = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| PeerError::NulInPath(root.display().to_string()))?;
    let top = open_dir(libc::AT_FDCWD, &top)?;
    let top_id = id_of(top.as_raw_fd())?;
    let rel = rel.trim_start_matches('/');
    let mut dir = if rel.is_empty() {
        top
    } else {
        let rel = CString::new(rel).map_err(|_| PeerError::NulInPath(rel.to_owned()))?;
        open_dir(top.as_raw_fd(), &rel)?
    };
    let dotdot = CString::new("..").unwrap_or_default();
    let mut chain = Vec::new();
    for _ in 0..MAX_DEPTH {
        let id = id_of(dir.as_raw_fd())?;
        chain.push(id.1);
        if id == top_id {
            return Ok(chain);
        }
        dir = open_dir(dir.as_raw_fd(), &dotdot)?;
    }
    Err(PeerError::TooDeep)
}

/// Identify the peer of the connected Unix socket `fd`, whose credentials the kernel gave as
/// `pid` and `uid`; `root` is the cgroup2 mount.
pub fn identify(fd: RawFd, pid: Option<i32>, uid: u32, root: Option<&Path>) -> LocalPeer {
    let mut peer = LocalPeer {
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        uid,
        ..Default::default()
    };
    peer.cgroups = (|| {
        let pid = pid.filter(|p| *p > 0).ok_or(PeerError::NoPid)?;
        let pidfd = peer_pidfd(fd, pid)?;
        let start = crate::procfs::start_time(pid as u32);
        let (rel, chain) = cgroups_of(pid, root)?;
        // The pid still names the process the pidfd names: what was read was its own.
        if !alive(&pidfd) {
            return Err(PeerError::Exited(pid));
        }
        peer.cgroup = rel;
        peer.start = start;
        Ok(chain)
    })();
    peer
}

impl LocalPeer {
    /// Its cgroup and cgroup ids as they are now: an error if it could not be told when it
    /// connected, or if its pid names no process now or another one (another start time).
    pub fn cgroups_now(&self, root: Option<&Path>) -> Result<(String, Vec<u64>), PeerError> {
        self.cgroups.as_ref().map_err(Clone::clone)?;
        let pid = self.pid.ok_or(PeerError::NoPid)?;
        let pid = i32::try_from(pid).map_err(|_| PeerError::NoPid)?;
        let now = cgroups_of(pid, root)?;
        match crate::procfs::start_time(pid as u32) {
            Some(t) if Some(t) == self.start => Ok(now),
            _ => Err(PeerError::Exited(pid)),
        }
    }
}

/// Process `pid`'s cgroup (as `/proc/PID/cgroup` names it) and the ids of it and its
/// ancestors ([`LocalPeer::cgroups`]); `root` is the cgroup2 mount.
pub fn cgroups_of(pid: i32, root: Option<&Path>) -> Result<(String, Vec<u64>), PeerError> {
    let root = root.ok_or(PeerError::NoCgroup2)?;
    let text = crate::procfs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
        PeerError::Os {
            what: format!("reading /proc/{pid}/cgroup"),
            errno: e.raw_os_error().unwrap_or(0),
        }
    })?;
    let rel = cgroup_v2_path(&text)
        .ok_or(PeerError::NoCgroupLine(pid))?
        .to_owned();
    let chain = cgroup_chain(root, &rel)?;
    Ok((rel, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_v2_line_is_found() {
        assert_eq!(
            cgroup_v2_path("12:pids:/x\n0::/agents/a/worker\n"),
            Some("/agents/a/worker")
        );
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn a_directory_chain_ends_at_the_root() {
        let root = std::env::temp_dir().join(format!("governance-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let chain = cgroup_chain(&root, "/a/b").unwrap();
        assert_eq!(
            chain,
            [ino(&root.join("a/b")), ino(&root.join("a")), ino(&root)]
        );
        assert_eq!(cgroup_chain(&root, "/").unwrap(), [ino(&root)]);
        assert!(cgroup_chain(&root, "/missing").is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// This process, through a socketpair: identified, with its own cgroup chain.
    #[test]
    fn a_live_peer_is_identified() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let Ok(root) = crate::agents::cgroup2_mount() else {
            return eprintln!("not checked: no cgroup2 mount");
        };
        let me = std::process::id() as i32;
        let peer = identify(a.as_raw_fd(), Some(me), 0, Some(&root));
        let chain = peer.cgroups.unwrap();
        assert_eq!(
            chain.last(),
            Some(&crate::agents::cgroup_id(&root).unwrap())
        );
        assert!(!peer.cgroup.is_empty());
    }
}
