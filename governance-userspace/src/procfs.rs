//! Reading procfs, and any file an agent could hold a lease on, without waiting for a lease.
//!
//! An agent may take a file lease (`fcntl(F_SETLEASE)`) on a file it owns, its own
//! `/proc/PID/status` among them; an open of that file by anyone else then waits until the
//! holder lets go or `/proc/sys/fs/lease-break-time` (45 s) passes. The daemon reads agents'
//! procfs files for every proxied connection and every event it enriches: a blocking open there
//! stalls the proxy for every agent. Every such open here is `O_NONBLOCK`, which makes the
//! kernel's `break_lease` answer `EWOULDBLOCK` at once: the caller treats that as "cannot read"
//! (the proxy refuses the connection it cannot identify). The kernel programs refuse agents
//! leases as well (the `file_fcntl` guard); this is the daemon's side of it.

use std::{
    fs::File,
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Open `path` for reading, never waiting for a lease (`EWOULDBLOCK` instead).
pub fn open(path: impl AsRef<Path>) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The whole of `path`, never waiting for a lease (see [`open`]).
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The whole of `path` as text, never waiting for a lease (see [`open`]).
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    let mut s = String::new();
    open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

/// When process `pid` started (`/proc/PID/stat`'s `starttime`, in clock ticks since boot): with
/// its pid, it names one process, where a pid alone may be given to another after it exits.
pub fn start_time(pid: u32) -> Option<u64> {
    // Bytes: the command may be any bytes (`PR_SET_NAME`), or a character cut in half.
    let stat = read(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis (the command may hold spaces and parentheses):
    // state is field 3, starttime field 22.
    let rest = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    std::str::from_utf8(rest)
        .ok()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// [`start_time`] as the kernel's table of the daemon's processes keeps it
/// ([`governance_common::maps::PROTECTED`]'s value): its low 32 bits, never 0 (0: not known).
pub fn start_stamp(pid: u32) -> u32 {
    start_time(pid).map_or(0, |t| (t as u32).max(1))
}

/// A name as procfs's seq files print it (`/proc/self/mountinfo`, `/proc/swaps`), its space,
/// tab, newline and backslash escaped as octal `\NNN`, back to its bytes.
pub fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Did the read fail because someone holds a lease on the file?
pub fn leased(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;

    const F_SETLEASE: libc::c_int = 1024;

    /// A write lease held by another process: the open answers at once, EWOULDBLOCK, where a
    /// plain open would wait for the lease break time.
    #[test]
    fn a_leased_file_is_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("governance-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "x").unwrap();
        assert_eq!(read_to_string(&path).unwrap(), "x");
        let (rx, tx) = {
            let mut fds = [0; 2];
            // SAFETY: a pipe into a local array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            (fds[0], fds[1])
        };
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child only makes syscalls and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: syscalls on our own descriptors; the child never returns.
            unsafe {
                libc::signal(libc::SIGIO, libc::SIG_IGN);
                let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY);
                let r = libc::fcntl(fd, F_SETLEASE, libc::F_WRLCK);
                let ok: u8 = u8::from(r == 0);
                libc::write(tx, (&ok as *const u8).cast(), 1);
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        let mut ok = 0u8;
        // SAFETY: one byte into a local.
        unsafe { libc::read(rx, (&mut ok as *mut u8).cast(), 1) };
        let started = std::time::Instant::now();
        let r = read_to_string(&path);
        let took = started.elapsed();
        // SAFETY: our child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            libc::close(tx);
            libc::close(rx);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            ok, 1,
            "the child could not take a lease (fs.leases-enable?)"
        );
        let e = r.expect_err("the lease holder's file, not waited for");
        assert!(leased(&e), "{e}");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
}
