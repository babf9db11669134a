//! Attempts the kernel tests run inside an agent cgroup when a forked child is not enough.
//!
//! - `phantom-open ALLOWED DENIED N`: one thread flips a path buffer between ALLOWED and DENIED
//!   (same length) while this one opens the buffer N times. Every open that succeeds must be
//!   of ALLOWED's inode. Prints `opened=A denied=D wrong=W` and exits 1 if W > 0, 2 if the race
//!   never produced both outcomes.
//! - `phantom-exec ALLOWED DENIED N`: the same with posix_spawn (the child shares the buffer
//!   while it execs). Prints `ran=A denied=D`; the tests check the kernel's events.
//! - `flood PATH N`: open PATH N times as fast as possible (each denied), print the count.
//! - `connect-flood ADDR N`: N TCP connects to ADDR (ip:port) as fast as possible (each
//!   denied), print the count. The host kernel's socket hooks load where the LSM does not.
//! - `http-upstream ADDR NAME`: a minimal HTTP/1.1 server on ADDR that answers every request
//!   with `{"upstream": NAME, "method", "path", "body"}` (the demo's payments API).
//! - `dlopen LIB SYMBOL`: dlopen() LIB (the loader maps it executable) and look SYMBOL up in
//!   it; prints `loaded LIB` and exits 0, or the loader's error and exits 1. This binary is
//!   itself dynamically linked: running it at all exercises ld.so mapping libc.
//! - `uring-personality`: register this process's credentials as an io_uring personality and
//!   run a NOP under it; exits 0 when the NOP completes, 100 + errno when it is refused (the
//!   tests' ERRNO_BASE convention), 2 when io_uring itself fails.
//! - `uring-sqpoll`: set up an io_uring with a polling kernel thread (`IORING_SETUP_SQPOLL`);
//!   exits 0 when it was made, 100 + errno when it was refused, 2 when io_uring itself fails.
//! - `uring-after-keepcaps PATH`: open /dev/null by io_uring in a worker thread
//!   (`IOSQE_ASYNC`), change this process's credentials (`prctl(PR_SET_KEEPCAPS)`), open
//!   /dev/null there again (exits 3 if that fails), then PATH; exits 0 when PATH opened, 100 +
//!   errno when it was refused, 2 when io_uring itself fails.
//! - `uring-link-after-keepcaps PATH`: submit an io_uring poll of a pipe sent to a worker
//!   (`IOSQE_ASYNC`) with an open of PATH linked behind it, wait until the poll is armed (the
//!   ring's fdinfo lists it), change this process's credentials (`prctl(PR_SET_KEEPCAPS)`),
//!   then write the pipe: the head completes in this process and the open runs here under the
//!   credentials from before the change. Exits 0 when PATH opened, 100 + errno when it was
//!   refused, 4 when the poll was never armed, 2 when io_uring itself fails.
//! - `uring-overlay DIR NAME FILE`: make an io_uring ring (this process then has an io_uring
//!   context), change this process's credentials (`prctl(PR_SET_KEEPCAPS)`), list DIR and
//!   append a byte to FILE (on an overlay mount: FILE in its lower layer only, so the write
//!   copies it up). Exits 0 when NAME is not in DIR and the write worked, 3 when NAME is in DIR
//!   (overlayfs did not see DIR opaque), 5 when the write failed, 2 when io_uring or the
//!   listing fails. Overlayfs reads its `trusted.overlay.*` attributes and copies up under its
//!   mounter's credentials: legitimate work, not the agent's.
//! - `session-to-parent PROCS`: fork a child that moves itself into the cgroup whose
//!   `cgroup.procs` is PROCS, joins a new session keyring and hands it to this process, its
//!   parent, which stays outside (`KEYCTL_SESSION_TO_PARENT`; this process is single-threaded,
//!   as the kernel requires). Exits with the child's status: 0 when the keyring was handed
//!   over, 100 + errno when it was refused, 2 or 3 when the child could not join the cgroup or
//!   make the keyring.
//! - `pass-fd scm|addfd ring|pipe PROCS`: fork a child that moves itself into the cgroup whose
//!   `cgroup.procs` is PROCS, then make (after the fork, so that the child holds none) an
//!   io_uring ring with a polling thread (`ring`, `IORING_SETUP_SQPOLL`) or a pipe (`pipe`, its
//!   read end) and pass it to the child: over a Unix socket (`scm`, `SCM_RIGHTS`), or as the
//!   child's seccomp supervisor (`addfd`: the child installs a filter with a listener before it
//!   moves, hands the listener over, and one `getppid` of it waits on this process, which puts
//!   the descriptor in the child's table with `SECCOMP_IOCTL_NOTIF_ADDFD` and makes it the
//!   call's result). Exits with the child's status: 0 when the child holds the descriptor (its
//!   `/proc/self/fd` link names a ring or a pipe), 100 + errno when its receipt was refused
//!   (`addfd`: the ioctl's errno, given to the child as its call's), 3 when the message came
//!   without it (`scm`: `MSG_CTRUNC`); 100 + errno of this process's `sendmsg` when the kernel
//!   refused to send it (`scm`); 2 when a step of the setup failed.
//! - `held-sends FD...`: send five bytes on each inherited descriptor by each way Python has
//!   no call for: io_uring `SEND`, `WRITE`, `SENDMSG`, `SEND_ZC` (submitted by this thread),
//!   `SEND` forced to a worker thread (`IOSQE_ASYNC`) and `SEND` on a ring whose kernel thread
//!   submits it (`IORING_SETUP_SQPOLL`), io_uring `SPLICE` from a pipe, a Linux AIO `PWRITE`,
//!   and `sendmmsg`. Prints
//!   `FD WAY OUTCOME` lines (`ok`, `EPERM` or `errno N`).
//! - `lease-then-join PROCS ADDR`: take a write lease on its own `/proc/self/status` (before
//!   it is an agent: agents are refused leases), move itself into the cgroup whose
//!   `cgroup.procs` is PROCS, then make an explicit proxy request to ADDR (see `http-get`)
//!   while holding the lease: the daemon's read of that file for the connection would wait for
//!   the lease. Prints `lease ok` first.
//! - `unix-serve PATH`: a Unix listener at PATH (what an agent would put at a control socket's
//!   name); prints `listening`, then for the one connection it accepts, the bytes the client
//!   sent (`got N bytes: ...`; 0 when the client hung up first) after answering a fake status.
//! - `http-get ADDR`: one `GET http://example.invalid/` to the proxy at ADDR; prints the
//!   answer's status line (or `closed`, or the error) and the seconds it took.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

fn usage() -> ! {
    eprintln!(
        "usage: redteam-helper phantom-open|phantom-exec ALLOWED DENIED N | flood PATH N | connect-flood ADDR N | http-upstream ADDR NAME | dlopen LIB SYMBOL | uring-personality | uring-sqpoll | uring-after-keepcaps PATH | uring-link-after-keepcaps PATH | uring-overlay DIR NAME FILE | session-to-parent PROCS | renamed-exec chroot|clone ROOT PATH | stacked-exec ROOT PATH | pass-fd scm|addfd ring|pipe PROCS | held-sends FD... | lease-then-join PROCS ADDR | unix-serve PATH | http-get ADDR"
    );
    std::process::exit(64)
}

/// A shared, flipped path buffer (NUL-terminated).
struct Flipper {
    buf: *mut u8,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct SendPtr(*mut u8);
// SAFETY: the buffer outlives the thread (joined in Drop); races on its bytes are the point.
unsafe impl Send for SendPtr {}

impl Flipper {
    fn new(a: &[u8], b: &[u8]) -> Self {
        assert_eq!(a.len(), b.len(), "paths must have the same length");
        let buf = Box::leak(vec![0u8; a.len() + 1].into_boxed_slice()).as_mut_ptr();
        // SAFETY: buf has a.len() + 1 bytes.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), buf, a.len()) };
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (a.to_vec(), b.to_vec());
        let (p, s) = (SendPtr(buf), stop.clone());
        let thread = std::thread::spawn(move || {
            let p = p;
            let mut flip = false;
            while !s.load(Ordering::Relaxed) {
                let src = if flip { &a } else { &b };
                for (i, c) in src.iter().enumerate() {
                    // SAFETY: in bounds; volatile so the writes are not optimised away.
                    unsafe { std::ptr::write_volatile(p.0.add(i), *c) };
                }
                flip = !flip;
            }
        });
        Self {
            buf,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["phantom-open", allowed, denied, n] => {
            let n: u32 = n.parse().unwrap_or_else(|_| usage());
            let allowed_ino = std::fs::metadata(allowed).expect("allowed file").ino();
            let f = Flipper::new(allowed.as_bytes(), denied.as_bytes());
            let (mut opened, mut refused, mut wrong) = (0, 0, 0);
            for _ in 0..n {
                // SAFETY: a NUL-terminated buffer (whose bytes another thread changes).
                let fd = unsafe { libc::open(f.buf.cast(), libc::O_RDONLY) };
                if fd < 0 {
                    refused += 1;
                    continue;
                }
                opened += 1;
                // SAFETY: fstat on our fd into a local.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                unsafe { libc::fstat(fd, &mut st) };
                if st.st_ino != allowed_ino {
                    wrong += 1;
                }
                unsafe { libc::close(fd) };
            }
            drop(f);
            println!("opened={opened} denied={refused} wrong={wrong}");
            std::process::exit(if wrong > 0 {
                1
            } else if opened == 0 || refused == 0 {
                2
            } else {
                0
            });
        }
        ["phantom-exec", allowed, denied, n] => {
            let n: u32 = n.parse().unwrap_or_else(|_| usage());
            let f = Flipper::new(allowed.as_bytes(), denied.as_bytes());
            let argv0 = CString::new("true").unwrap();
            let argv = [argv0.as_ptr().cast_mut(), std::ptr::null_mut()];
            let envp = [std::ptr::null_mut()];
            let (mut ran, mut refused) = (0, 0);
            for _ in 0..n {
                let mut pid = 0;
                // SAFETY: posix_spawn with valid argv/envp; the path buffer is shared (CLONE_VM).
                let r = unsafe {
                    libc::posix_spawn(
                        &mut pid,
                        f.buf.cast(),
                        std::ptr::null(),
                        std::ptr::null(),
                        argv.as_ptr(),
                        envp.as_ptr(),
                    )
                };
                if r != 0 {
                    refused += 1;
                    continue;
                }
                let mut status = 0;
                // SAFETY: our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                ran += 1;
            }
            drop(f);
            println!("ran={ran} denied={refused}");
            std::process::exit(if ran == 0 || refused == 0 { 2 } else { 0 });
        }
        ["flood", path, n] => {
            let n: u64 = n.parse().unwrap_or_else(|_| usage());
            let p = CString::new(std::path::Path::new(path).as_os_str().as_bytes()).unwrap();
            let mut refused = 0u64;
            for _ in 0..n {
                // SAFETY: valid C string.
                let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
                if fd < 0 {
                    refused += 1;
                } else {
                    unsafe { libc::close(fd) };
                }
            }
            println!("refused={refused}");
            std::process::exit(if refused == n { 0 } else { 1 });
        }
        ["connect-flood", addr, n] => {
            let n: u64 = n.parse().unwrap_or_else(|_| usage());
            let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| usage());
            let mut refused = 0u64;
            for _ in 0..n {
                match std::net::TcpStream::connect(addr) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
                    _ => {}
                }
            }
            println!("refused={refused}");
            std::process::exit(if refused == n { 0 } else { 1 });
        }
        ["http-upstream", addr, name] => {
            let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| {
                eprintln!("http-upstream: cannot listen on {addr}: {e}");
                std::process::exit(1)
            });
            let name = name.to_string();
            for conn in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || serve_one(conn, &name));
            }
        }
        ["dlopen", lib, symbol] => {
            let (c_lib, c_symbol) = (
                CString::new(lib).unwrap_or_else(|_| usage()),
                CString::new(symbol).unwrap_or_else(|_| usage()),
            );
            // SAFETY: valid C strings; the handle is used only here.
            let handle = unsafe { libc::dlopen(c_lib.as_ptr(), libc::RTLD_NOW) };
            // SAFETY: dlerror returns a C string owned by libc, or null.
            let error = || unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            if handle.is_null() {
                println!("dlopen {lib}: {}", error());
                std::process::exit(1);
            }
            // SAFETY: as above.
            if unsafe { libc::dlsym(handle, c_symbol.as_ptr()) }.is_null() {
                println!("dlsym {symbol}: {}", error());
                std::process::exit(1);
            }
            println!("loaded {lib}");
        }
        ["uring-personality"] => std::process::exit(match uring_personality() {
            Ok(0) => 0,
            Ok(res) if res < 0 => 100 - res,
            Ok(res) => {
                eprintln!("uring-personality: unexpected result {res}");
                2
            }
            Err(e) => {
                eprintln!("uring-personality: {e}");
                2
            }
        }),
        ["uring-after-keepcaps", path] => std::process::exit(uring_after_keepcaps(path)),
        ["uring-link-after-keepcaps", path] => std::process::exit(uring_link_after_keepcaps(path)),
        ["uring-overlay", dir, name, file] => std::process::exit(uring_overlay(dir, name, file)),
        ["uring-sqpoll"] => std::process::exit(match Ring::new(true) {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().map_or(2, |errno| 100 + errno),
        }),
        [
            "pass-fd",
            how @ ("scm" | "addfd"),
            what @ ("ring" | "pipe"),
            procs,
        ] => std::process::exit(pass_fd(how == "addfd", what == "ring", procs)),
        ["held-sends", ref fds @ ..] if !fds.is_empty() => {
            let fds: Vec<i32> = fds
                .iter()
                .map(|f| f.parse().unwrap_or_else(|_| usage()))
                .collect();
            held_sends(&fds);
        }
        ["lease-then-join", procs, addr] => {
            // SAFETY: ignoring SIGIO (the lease break's signal) and a lease on our own file.
            unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
            let f = std::fs::File::open("/proc/self/status").expect("/proc/self/status");
            use std::os::fd::AsRawFd as _;
            // SAFETY: fcntl on our own descriptor.
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
            if r != 0 {
                println!("lease failed: {}", std::io::Error::last_os_error());
                std::process::exit(2);
            }
            println!("lease ok");
            std::fs::write(procs, "0\n").expect("joining the cgroup");
            http_get(addr);
            drop(f);
        }
        ["session-to-parent", procs] => std::process::exit(session_to_parent(procs)),
        ["renamed-exec", how @ ("chroot" | "clone"), root, path] => {
            std::process::exit(renamed_exec(how == "chroot", root, path))
        }
        ["stacked-exec", root, path] => std::process::exit(stacked_exec(root, path)),
        ["http-get", addr] => http_get(addr),
        ["unix-serve", path] => {
            use std::io::{Read as _, Write as _};
            let l = std::os::unix::net::UnixListener::bind(path).expect("binding");
            println!("listening");
            let (mut c, _) = l.accept().expect("accepting");
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap_or(0);
            let body = b"{\"generation\":1}";
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = c.write_all(body);
            println!("got {n} bytes: {:?}", String::from_utf8_lossy(&buf[..n]));
            let _ = std::fs::remove_file(path);
        }
        _ => usage(),
    }
}

/// `GET http://example.invalid/` through the proxy at `addr`; print the status line (or how
/// it ended) and the seconds it took.
fn http_get(addr: &str) {
    use std::io::{Read as _, Write as _};
    let started = std::time::Instant::now();
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        s.write_all(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\nConnection: close\r\n\r\n")?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        Ok(if n == 0 {
            "closed".into()
        } else {
            String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
        })
    })()
    .unwrap_or_else(|e| format!("error {e}"));
    println!(
        "answer {answer} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A one-entry io_uring: one request submitted and completed at a time.
struct Ring {
    fd: i32,
    sq: *mut u8,
    cq: *mut u8,
    sqes: *mut u8,
    /// io_sqring_offsets and io_cqring_offsets, as the kernel filled them.
    sq_off: [u32; 10],
    cq_off: [u32; 10],
    /// The ring was set up with IORING_SETUP_SQPOLL: its own kernel thread submits.
    sqpoll: bool,
}

/// A raw syscall's result, or the errno it set.
fn os(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Ring {
    /// A ring of one entry; with `sqpoll`, a kernel thread of this process submits its
    /// requests (IORING_SETUP_SQPOLL), idling for a second before it sleeps.
    fn new(sqpoll: bool) -> std::io::Result<Self> {
        Self::with_entries(1, sqpoll)
    }

    /// A ring of `entries` entries (a power of two).
    fn with_entries(entries: u32, sqpoll: bool) -> std::io::Result<Self> {
        // struct io_uring_params: 10 u32 (sq_entries, cq_entries, flags, sq_thread_cpu,
        // sq_thread_idle, ...), then io_sqring_offsets and io_cqring_offsets (40 bytes each).
        let mut params = [0u32; 30];
        if sqpoll {
            params[2] = 1 << 1;
            params[4] = 1000;
        }
        // SAFETY: raw syscalls on buffers of the sizes the kernel reads and writes.
        unsafe {
            let fd = os(libc::syscall(
                libc::SYS_io_uring_setup,
                entries,
                params.as_mut_ptr(),
            ))? as i32;
            let (sq_entries, cq_entries) = (params[0] as usize, params[1] as usize);
            let mut sq_off = [0u32; 10];
            let mut cq_off = [0u32; 10];
            sq_off.copy_from_slice(&params[10..20]);
            cq_off.copy_from_slice(&params[20..30]);
            let map = |len: usize, offset: i64| {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    offset,
                );
                if p == libc::MAP_FAILED {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(p.cast::<u8>())
                }
            };
            Ok(Self {
                fd,
                sq: map(sq_off[6] as usize + sq_entries * 4, 0)?,
                cq: map(cq_off[5] as usize + cq_entries * 16, 0x800_0000)?,
                sqes: map(sq_entries * 64, 0x1000_0000)?,
                sq_off,
                cq_off,
                sqpoll,
            })
        }
    }

    /// Submit one request (its 64-byte SQE) and return the result of its first completion
    /// (a count, or -errno). One request at a time: a ring that runs a request that completes
    /// twice (a zero-copy send, and its notification) runs no other.
    fn run(&self, sqe: &[u8; 64]) -> std::io::Result<i32> {
        // SAFETY: the rings were mapped by `new` with the sizes the kernel gave.
        unsafe {
            std::ptr::copy_nonoverlapping(sqe.as_ptr(), self.sqes, 64);
            let tail = self.sq.add(self.sq_off[1] as usize).cast::<u32>();
            let mask = *self.sq.add(self.sq_off[2] as usize).cast::<u32>();
            let t = std::ptr::read_volatile(tail);
            *self
                .sq
                .add(self.sq_off[6] as usize)
                .cast::<u32>()
                .add((t & mask) as usize) = 0;
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(tail, t.wrapping_add(1));
            // io_uring_enter(fd, to_submit 1, min_complete 1, IORING_ENTER_GETEVENTS, and
            // IORING_ENTER_SQ_WAKEUP for a polled ring, whose thread may be asleep).
            let flags = if self.sqpoll { 1 | 2 } else { 1 };
            os(libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                1,
                1,
                flags,
                std::ptr::null::<u8>(),
                0,
            ))?;
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let head = std::ptr::read_volatile(self.cq.add(self.cq_off[0] as usize).cast::<u32>());
            let cmask = *self.cq.add(self.cq_off[2] as usize).cast::<u32>();
            // struct io_uring_cqe { u64 user_data; i32 res; u32 flags; }
            let cqe = self
                .cq
                .add(self.cq_off[5] as usize + (head & cmask) as usize * 16);
            let res = cqe.add(8).cast::<i32>().read();
            // Consumed: the next request's completion is read next (a ring that runs one).
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(
                self.cq.add(self.cq_off[0] as usize).cast::<u32>(),
                head.wrapping_add(1),
            );
            Ok(res)
        }
    }
}

impl Ring {
    /// Submit `entries` (at most the ring's size) in one `io_uring_enter`, without waiting.
    fn submit(&self, entries: &[[u8; 64]]) -> std::io::Result<()> {
        // SAFETY: the rings were mapped by `new` with the sizes the kernel gave; the caller
        // passes no more entries than the ring holds.
        unsafe {
            let tail = self.sq.add(self.sq_off[1] as usize).cast::<u32>();
            let t = std::ptr::read_volatile(tail);
            for (i, e) in entries.iter().enumerate() {
                std::ptr::copy_nonoverlapping(e.as_ptr(), self.sqes.add(i * 64), 64);
                let mask = *self.sq.add(self.sq_off[2] as usize).cast::<u32>();
                *self
                    .sq
                    .add(self.sq_off[6] as usize)
                    .cast::<u32>()
                    .add((t.wrapping_add(i as u32) & mask) as usize) = i as u32;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(tail, t.wrapping_add(entries.len() as u32));
            os(libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                entries.len(),
                0,
                0,
                std::ptr::null::<u8>(),
                0,
            ))?;
        }
        Ok(())
    }

    /// Wait for `n` completions and return them as (user_data, result).
    fn reap(&self, n: u32) -> std::io::Result<Vec<(u64, i32)>> {
        let mut out = Vec::new();
        // SAFETY: as in `run`.
        unsafe {
            while out.len() < n as usize {
                os(libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd,
                    0,
                    1,
                    1,
                    std::ptr::null::<u8>(),
                    0,
                ))?;
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                let head_at = self.cq.add(self.cq_off[0] as usize).cast::<u32>();
                let tail =
                    std::ptr::read_volatile(self.cq.add(self.cq_off[1] as usize).cast::<u32>());
                let cmask = *self.cq.add(self.cq_off[2] as usize).cast::<u32>();
                let mut head = std::ptr::read_volatile(head_at);
                while head != tail {
                    let cqe = self
                        .cq
                        .add(self.cq_off[5] as usize + (head & cmask) as usize * 16);
                    out.push((cqe.cast::<u64>().read(), cqe.add(8).cast::<i32>().read()));
                    head = head.wrapping_add(1);
                }
                std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
                std::ptr::write_volatile(head_at, head);
            }
        }
        Ok(out)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: our own descriptor (the mappings go with the process).
        unsafe { libc::close(self.fd) };
    }
}

/// An SQE: opcode at byte 0, fd at 4, off at 8, addr at 16, len at 24, the op's flags at 28,
/// personality at 42.
fn sqe(opcode: u8, fd: i32, addr: u64, len: u32) -> [u8; 64] {
    let mut e = [0u8; 64];
    e[0] = opcode;
    e[4..8].copy_from_slice(&fd.to_ne_bytes());
    e[16..24].copy_from_slice(&addr.to_ne_bytes());
    e[24..28].copy_from_slice(&len.to_ne_bytes());
    e
}

/// Register this process's credentials as an io_uring personality, submit a NOP under it and
/// return the completion's result (0, or -errno).
fn uring_personality() -> std::io::Result<i32> {
    let ring = Ring::new(false)?;
    // IORING_REGISTER_PERSONALITY: this process's credentials, by id.
    // SAFETY: a raw syscall without buffers.
    let personality = os(unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.fd,
            9,
            std::ptr::null::<u8>(),
            0,
        )
    })? as u16;
    // IORING_OP_NOP (0) under the personality.
    let mut nop = sqe(0, -1, 0, 0);
    nop[42..44].copy_from_slice(&personality.to_ne_bytes());
    ring.run(&nop)
}

/// Open `path` read-only by io_uring `OPENAT` (18) forced to a worker thread (`IOSQE_ASYNC`):
/// the descriptor, or -errno.
fn uring_open_async(ring: &Ring, path: &CString) -> std::io::Result<i32> {
    let mut open = sqe(18, libc::AT_FDCWD, path.as_ptr() as u64, 0);
    open[1] = 1 << 4;
    open[28..32].copy_from_slice(&(libc::O_RDONLY as u32).to_ne_bytes());
    ring.run(&open)
}

/// See `uring-after-keepcaps` in the module's documentation.
fn uring_after_keepcaps(path: &str) -> i32 {
    let null = CString::new("/dev/null").unwrap();
    let Ok(target) = CString::new(path) else {
        return 64;
    };
    let Ok(ring) = Ring::new(false) else {
        return 2;
    };
    // The worker is made now, with this process's credentials of now.
    match uring_open_async(&ring, &null) {
        Ok(fd) if fd >= 0 => unsafe { libc::close(fd) },
        _ => return 2,
    };
    // SAFETY: plain prctl(2); new credentials for this process, the same capabilities.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return 2;
    }
    match uring_open_async(&ring, &null) {
        Ok(fd) if fd >= 0 => unsafe { libc::close(fd) },
        _ => return 3,
    };
    match uring_open_async(&ring, &target) {
        Ok(fd) if fd >= 0 => {
            println!("opened {path}");
            0
        }
        Ok(errno) => 100 - errno,
        Err(_) => 2,
    }
}

/// See `session-to-parent` in the module's documentation.
fn session_to_parent(procs: &str) -> i32 {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    const KEYCTL_SESSION_TO_PARENT: libc::c_long = 18;
    // SAFETY: fork in a single-threaded process; the child calls only async-signal-safe
    // functions besides the write below (no lock is held across the fork).
    match unsafe { libc::fork() } {
        -1 => 2,
        0 => {
            if std::fs::write(procs, "0\n").is_err() {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: keyctl(2) with a valid C string and plain integers.
            unsafe {
                if libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_JOIN_SESSION_KEYRING,
                    c"gov-rt26".as_ptr(),
                ) < 0
                {
                    libc::_exit(3);
                }
                if libc::syscall(libc::SYS_keyctl, KEYCTL_SESSION_TO_PARENT) != 0 {
                    libc::_exit(100 + *libc::__errno_location());
                }
                libc::_exit(0)
            }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(child, &mut status, 0) } != child || !libc::WIFEXITED(status)
            {
                return 2;
            }
            libc::WEXITSTATUS(status)
        }
    }
}

/// `SCM_RIGHTS` of `fd` (or none, with -1) and one byte on the Unix socket `sock`.
fn send_fd(sock: i32, fd: i32) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64 for the alignment of a cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: msghdr and cmsg on local buffers of the sizes given.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if fd >= 0 {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd);
        }
        if libc::sendmsg(sock, &msg, 0) != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One byte from the Unix socket `sock` and the descriptor it carried: `Ok(None)` when it came
/// without one, `Err` with `MSG_CTRUNC` set (the kernel dropped it).
fn recv_fd(sock: i32) -> Result<Option<i32>, ()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: as in send_fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        if libc::recvmsg(sock, &mut msg, 0) != 1 {
            return Err(());
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        Ok(Some(libc::CMSG_DATA(cmsg).cast::<i32>().read_unaligned()))
    }
}

/// In the child of `pass_fd`: 0 if `fd`'s link names what was passed (a ring or a pipe), 5 if
/// not.
fn holds(fd: i32, ring: bool) -> i32 {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    let link = link.to_string_lossy();
    println!("pass-fd: the child holds {link}");
    let want = if ring {
        "anon_inode:[io_uring]"
    } else {
        "pipe:"
    };
    if link.starts_with(want) { 0 } else { 5 }
}

/// See `pass-fd` in the module's documentation.
fn pass_fd(addfd: bool, ring: bool, procs: &str) -> i32 {
    // struct seccomp_notif (80 bytes), seccomp_notif_resp and seccomp_notif_addfd (24 each):
    // _IOWR('!', 0), _IOWR('!', 1), _IOW('!', 3).
    const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
    const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
    const NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;
    const ADDFD_FLAG_SEND: u32 = 1 << 1;
    const FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
    const RET_USER_NOTIF: u32 = 0x7fc0_0000;
    let mut pair = [0i32; 2];
    // SAFETY: socketpair(2) into a local array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0 {
        return 2;
    }
    let (ours, theirs) = (pair[0], pair[1]);
    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: leaving the child with its status; the calls below are plain syscalls on
        // local buffers.
        unsafe {
            libc::close(ours);
            if addfd {
                // getppid() waits for the supervisor; every other call passes.
                let filter = [
                    libc::sock_filter {
                        code: 0x20,
                        jt: 0,
                        jf: 0,
                        k: 0,
                    },
                    libc::sock_filter {
                        code: 0x15,
                        jt: 0,
                        jf: 1,
                        k: libc::SYS_getppid as u32,
                    },
                    libc::sock_filter {
                        code: 0x06,
                        jt: 0,
                        jf: 0,
                        k: RET_USER_NOTIF,
                    },
                    libc::sock_filter {
                        code: 0x06,
                        jt: 0,
                        jf: 0,
                        k: libc::SECCOMP_RET_ALLOW,
                    },
                ];
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2);
                }
                let listener = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    FILTER_FLAG_NEW_LISTENER,
                    &prog,
                );
                if listener < 0 || send_fd(theirs, listener as i32).is_err() {
                    libc::_exit(2);
                }
                libc::close(listener as i32);
            }
            if std::fs::write(procs, "0\n").is_err() {
                libc::_exit(2);
            }
            if addfd {
                let fd = libc::syscall(libc::SYS_getppid);
                if fd < 0 {
                    libc::_exit(100 + *libc::__errno_location());
                }
                libc::_exit(holds(fd as i32, ring));
            }
            libc::_exit(match recv_fd(theirs) {
                Ok(Some(fd)) => holds(fd, ring),
                Ok(None) => 4,
                Err(()) => 3,
            });
        }
    }
    if child < 0 {
        return 2;
    }
    // SAFETY: closing our copy of the child's end.
    unsafe { libc::close(theirs) };
    // Made after the fork: the child holds only what it is passed.
    let ring_kept = match ring.then(|| Ring::new(true)).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pass-fd: io_uring_setup: {e}");
            return 2;
        }
    };
    let passed = match &ring_kept {
        Some(r) => r.fd,
        None => {
            let mut p = [0i32; 2];
            // SAFETY: pipe(2) into a local array.
            if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
                return 2;
            }
            p[0]
        }
    };
    let mut sent = 0;
    if addfd {
        let Ok(Some(listener)) = recv_fd(ours) else {
            return 2;
        };
        let mut notif = [0u64; 10];
        // SAFETY: ioctls on the listener with buffers of the sizes their numbers encode.
        unsafe {
            if libc::ioctl(listener, NOTIF_RECV, notif.as_mut_ptr()) != 0 {
                eprintln!("pass-fd: NOTIF_RECV: {}", std::io::Error::last_os_error());
                return 2;
            }
            // { id, flags, srcfd, newfd, newfd_flags }
            let mut add = [0u32; 6];
            add[0] = notif[0] as u32;
            add[1] = (notif[0] >> 32) as u32;
            add[2] = ADDFD_FLAG_SEND;
            add[3] = passed as u32;
            if libc::ioctl(listener, NOTIF_ADDFD, add.as_mut_ptr()) < 0 {
                let errno = *libc::__errno_location();
                println!("pass-fd: ADDFD: errno {errno}");
                // { id, val, error, flags }: the child's call fails with the ioctl's errno.
                let mut resp = [0u64; 3];
                resp[0] = notif[0];
                resp[2] = u64::from((-errno) as u32);
                if libc::ioctl(listener, NOTIF_SEND, resp.as_mut_ptr()) != 0 {
                    eprintln!("pass-fd: NOTIF_SEND: {}", std::io::Error::last_os_error());
                }
            }
        }
    } else if let Err(e) = send_fd(ours, passed) {
        println!("pass-fd: sendmsg: {e}");
        sent = 100 + e.raw_os_error().unwrap_or(0);
        // The child waits for a message: one without a descriptor.
        let _ = send_fd(ours, -1);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(child, &mut status, 0) } != child || !libc::WIFEXITED(status) {
        return 2;
    }
    drop(ring_kept);
    match (sent, libc::WEXITSTATUS(status)) {
        // Sent nothing: the child's 4 (no descriptor) is the sender's refusal.
        (refused @ 100.., 4) => refused,
        (_, code) => code,
    }
}

/// See `uring-overlay` in the module's documentation.
fn uring_overlay(dir: &str, name: &str, file: &str) -> i32 {
    // Kept open: the ring's context stays with this process either way.
    let Ok(_ring) = Ring::new(false) else {
        return 2;
    };
    // SAFETY: plain prctl(2); new credentials for this process, the same capabilities.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return 2;
    }
    let names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            eprintln!("uring-overlay: list {dir}: {e}");
            return 2;
        }
    };
    println!("{dir}: {names:?}");
    if names.iter().any(|n| n == name) {
        return 3;
    }
    use std::io::Write;
    match std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(b"x"))
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("uring-overlay: append to {file}: {e}");
            5
        }
    }
}

/// See `uring-link-after-keepcaps` in the module's documentation.
fn uring_link_after_keepcaps(path: &str) -> i32 {
    let Ok(target) = CString::new(path) else {
        return 64;
    };
    let Ok(ring) = Ring::with_entries(2, false) else {
        return 2;
    };
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) into a local array of two.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return 2;
    }
    // The head: IORING_OP_POLL_ADD (6) for POLLIN on the pipe, sent to a worker (IOSQE_ASYNC,
    // 1 << 4) and linked (IOSQE_IO_LINK, 1 << 2): going to the worker gives every request of
    // the link this process's credentials of now. The linked one: IORING_OP_OPENAT (18).
    let mut head = sqe(6, pipe[0], 0, 0);
    head[1] = (1 << 4) | (1 << 2);
    head[28..32].copy_from_slice(&(libc::POLLIN as u32).to_ne_bytes());
    head[32..40].copy_from_slice(&1u64.to_ne_bytes());
    let mut open = sqe(18, libc::AT_FDCWD, target.as_ptr() as u64, 0);
    open[28..32].copy_from_slice(&(libc::O_RDONLY as u32).to_ne_bytes());
    open[32..40].copy_from_slice(&2u64.to_ne_bytes());
    if ring.submit(&[head, open]).is_err() {
        return 2;
    }
    // Wait until the worker has armed the head's poll (the ring's fdinfo lists it), so that
    // the head completes by the poll, in this process, and not in the worker.
    let fdinfo = format!("/proc/self/fdinfo/{}", ring.fd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let armed = std::fs::read_to_string(&fdinfo).is_ok_and(|info| {
            info.split_once("PollList:")
                .is_some_and(|(_, polls)| polls.contains("op=6"))
        });
        if armed {
            break;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("the head's poll was never listed as armed in {fdinfo}");
            return 4;
        }
        std::thread::yield_now();
    }
    // SAFETY: plain prctl(2); new credentials for this process, the same capabilities.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return 2;
    }
    // SAFETY: a one-byte write to our own pipe.
    if unsafe { libc::write(pipe[1], b"x".as_ptr().cast(), 1) } != 1 {
        return 2;
    }
    let Ok(done) = ring.reap(2) else {
        return 2;
    };
    match done.iter().find(|(id, _)| *id == 2).map(|(_, res)| *res) {
        Some(fd) if fd >= 0 => {
            println!("opened {path}");
            0
        }
        Some(errno) => 100 - errno,
        None => 2,
    }
}

/// The outcome of a send: `ok`, or the errno's name.
fn outcome(res: std::io::Result<i32>) -> String {
    let errno = match res {
        Ok(n) if n >= 0 => return "ok".into(),
        Ok(n) => -n,
        Err(e) => e.raw_os_error().unwrap_or(0),
    };
    match errno {
        libc::EPERM => "EPERM".into(),
        n => format!("errno {n}"),
    }
}

/// Each way of sending that takes no Python: io_uring's SEND, WRITE, SENDMSG and SEND_ZC, and
/// sendmmsg(2), five bytes each, on every descriptor in `fds`. Prints `FD NAME OUTCOME` lines.
fn held_sends(fds: &[i32]) {
    let data = *b"leak\n";
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the one iovec outlives every use below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let addr = data.as_ptr() as u64;
    let msg_addr = &msg as *const libc::msghdr as u64;
    for &fd in fds {
        // IORING_OP_SEND 26, IORING_OP_WRITE 23, IORING_OP_SENDMSG 9, IORING_OP_SEND_ZC 47;
        // the SQE's flags byte (1): IOSQE_ASYNC (1 << 4), run by an io-wq worker thread.
        for (name, op, a, len, async_, sqpoll) in [
            ("uring-send", 26u8, addr, 5u32, false, false),
            ("uring-write", 23, addr, 5, false, false),
            ("uring-sendmsg", 9, msg_addr, 1, false, false),
            ("uring-send-zc", 47, addr, 5, false, false),
            ("uring-send-async", 26, addr, 5, true, false),
            ("uring-send-sqpoll", 26, addr, 5, false, true),
        ] {
            let mut e = sqe(op, fd, a, len);
            if async_ {
                e[1] = 1 << 4;
            }
            // A ring per request (see `Ring::run`).
            let res = Ring::new(sqpoll).and_then(|ring| ring.run(&e));
            println!("{fd} {name} {}", outcome(res));
        }
        println!("{fd} uring-splice {}", outcome(uring_splice(fd, &data)));
        println!("{fd} aio-pwrite {}", outcome(aio_pwrite(fd, &data)));
        let mut mm = libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        };
        // SAFETY: one valid mmsghdr.
        let n = unsafe { libc::sendmmsg(fd, &mut mm, 1, 0) };
        let res = if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n)
        };
        println!("{fd} sendmmsg {}", outcome(res));
    }
}

/// Move `data` into `fd` by io_uring `SPLICE` (30) from a pipe it was written to.
fn uring_splice(fd: i32, data: &[u8]) -> std::io::Result<i32> {
    let mut pipe = [0i32; 2];
    // SAFETY: a pipe into a local array, written from a live buffer, closed once used.
    unsafe {
        os(libc::pipe(pipe.as_mut_ptr()).into())?;
        let res = os(libc::write(pipe[1], data.as_ptr().cast(), data.len()) as libc::c_long)
            .and_then(|_| {
                // The SQE: off (the output's offset) at 8 and splice_off_in at 16, both -1 (none:
                // a socket and a pipe have no position), len at 24, splice_fd_in (i32) at 44.
                let mut e = sqe(30, fd, u64::MAX, data.len() as u32);
                e[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
                e[44..48].copy_from_slice(&pipe[0].to_ne_bytes());
                Ring::new(false)?.run(&e)
            });
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        res
    }
}

/// Write `data` to `fd` by Linux AIO (io_setup, io_submit of one IOCB_CMD_PWRITE at offset 0,
/// io_getevents): the write's result, or the errno io_submit refused it with.
fn aio_pwrite(fd: i32, data: &[u8]) -> std::io::Result<i32> {
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: raw syscalls on a context, an iocb and an event that outlive them.
    unsafe {
        os(libc::syscall(libc::SYS_io_setup, 1, &mut ctx))?;
        // struct iocb (64 bytes): aio_data at 0, aio_key and aio_rw_flags at 8 and 12,
        // aio_lio_opcode (u16) at 16, aio_fildes (u32) at 20, aio_buf at 24, aio_nbytes at 32,
        // aio_offset at 40.
        let mut iocb = [0u8; 64];
        iocb[16..18].copy_from_slice(&1u16.to_ne_bytes()); // IOCB_CMD_PWRITE
        iocb[20..24].copy_from_slice(&fd.to_ne_bytes());
        iocb[24..32].copy_from_slice(&(data.as_ptr() as u64).to_ne_bytes());
        iocb[32..40].copy_from_slice(&(data.len() as u64).to_ne_bytes());
        let list = [iocb.as_mut_ptr()];
        let submitted = os(libc::syscall(libc::SYS_io_submit, ctx, 1, list.as_ptr()));
        // struct io_event { u64 data; u64 obj; i64 res; i64 res2; }
        let mut event = [0i64; 4];
        let res = submitted.and_then(|_| {
            os(libc::syscall(
                libc::SYS_io_getevents,
                ctx,
                1,
                1,
                event.as_mut_ptr(),
                std::ptr::null::<u8>(),
            ))
        });
        libc::syscall(libc::SYS_io_destroy, ctx);
        res.map(|_| event[2] as i32)
    }
}

/// Answer one HTTP/1.1 request (head, then a Content-Length body) and close.
fn serve_one(mut conn: std::net::TcpStream, name: &str) {
    use std::io::{Read as _, Write as _};
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 << 10 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let body = String::from_utf8_lossy(&buf[head_end..]);
    let reply = format!(
        "{{\"upstream\":{name:?},\"method\":{method:?},\"path\":{path:?},\"body\":{body:?}}}\n"
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

/// A program the agent wrote, run under a name of its choosing (red team round 27): a tiny
/// static ELF (it exits 0) written at ROOT/PATH, then, in a new user namespace, either
/// `chroot(ROOT)` and `execv(PATH)`, or a detached clone of ROOT's tree (`open_tree`, in a new
/// mount namespace too) and `execveat` through it: both name it PATH. Exits with the
/// program's 0, 100 + errno of the exec, or 2 if a step before it failed.
fn renamed_exec(chroot: bool, root: &str, path: &str) -> i32 {
    use std::os::unix::fs::PermissionsExt as _;
    let inner = path.trim_start_matches('/');
    let file = std::path::Path::new(root).join(inner);
    let written = std::fs::create_dir_all(file.parent().unwrap_or(std::path::Path::new(root)))
        .and_then(|()| std::fs::write(&file, tiny_elf()))
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)));
    if let Err(e) = written {
        eprintln!("renamed-exec: writing {}: {e}", file.display());
        return 2;
    }
    let flags = libc::CLONE_NEWUSER | if chroot { 0 } else { libc::CLONE_NEWNS };
    // SAFETY: plain unshare(2) of this single-threaded process.
    if unsafe { libc::unshare(flags) } != 0 {
        eprintln!("renamed-exec: unshare: {}", std::io::Error::last_os_error());
        return 2;
    }
    let root_c = CString::new(root).unwrap_or_else(|_| usage());
    let argv = [c"renamed".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    if chroot {
        let path_c = CString::new(path).unwrap_or_else(|_| usage());
        // SAFETY: valid C strings and NULL-terminated arrays.
        unsafe {
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                eprintln!("renamed-exec: chroot: {}", std::io::Error::last_os_error());
                return 2;
            }
            libc::execve(path_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
    } else {
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        let inner_c = CString::new(inner).unwrap_or_else(|_| usage());
        // SAFETY: open_tree(2) and execveat(2) with valid C strings and arrays.
        unsafe {
            let tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                root_c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            );
            if tree < 0 {
                eprintln!(
                    "renamed-exec: open_tree: {}",
                    std::io::Error::last_os_error()
                );
                return 2;
            }
            libc::syscall(
                libc::SYS_execveat,
                tree as libc::c_int,
                inner_c.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                0,
            );
        }
    }
    let e = std::io::Error::last_os_error();
    eprintln!("renamed-exec: exec {path}: {e}");
    e.raw_os_error().map_or(2, |errno| 100 + errno)
}

/// What systemd before 254 does for a service with a namespace of its own, twice over (red team
/// round 27b): in a new mount namespace, `/` bound at ROOT, ROOT moved onto `/` and made the
/// root with `chroot(".")`; then PATH run. The root is a mount on the root of the one below:
/// in view. Exits with the program's status, 100 + errno of the exec, or 2 before it.
fn stacked_exec(root: &str, path: &str) -> i32 {
    let root_c = CString::new(root).unwrap_or_else(|_| usage());
    let path_c = CString::new(path).unwrap_or_else(|_| usage());
    let step = |what: &str, r: libc::c_int| {
        if r != 0 {
            eprintln!("stacked-exec: {what}: {}", std::io::Error::last_os_error());
        }
        r == 0
    };
    // SAFETY: mount(2), chdir(2), chroot(2), execve(2) with valid C strings and arrays.
    unsafe {
        let ok = step("unshare", libc::unshare(libc::CLONE_NEWNS))
            && step(
                "make / private",
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
            );
        if !ok {
            return 2;
        }
        for _ in 0..2 {
            let _ = libc::mkdir(root_c.as_ptr(), 0o755);
            let ok = step(
                "bind / at ROOT",
                libc::mount(
                    c"/".as_ptr(),
                    root_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
            ) && step("chdir ROOT", libc::chdir(root_c.as_ptr()))
                && step(
                    "move ROOT onto /",
                    libc::mount(
                        root_c.as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_MOVE,
                        std::ptr::null(),
                    ),
                )
                && step("chroot .", libc::chroot(c".".as_ptr()))
                && step("chdir /", libc::chdir(c"/".as_ptr()));
            if !ok {
                return 2;
            }
        }
        let argv = [path_c.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        libc::execve(path_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    let e = std::io::Error::last_os_error();
    eprintln!("stacked-exec: exec {path}: {e}");
    e.raw_os_error().map_or(2, |errno| 100 + errno)
}

/// An x86-64 ELF executable of one segment whose code is `exit(0)`.
fn tiny_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    // mov eax, 60 (exit); xor edi, edi; syscall
    let code: &[u8] = &[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}
