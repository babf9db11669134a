//! The worker: denied attempts as fast as it can, in its own process in the agent cgroup.

use super::*;

// ---------------------------------------------------------------------------------------------
// The worker: denied attempts as fast as it can, in its own process in the agent cgroup.

/// `--worker connect ADDR|open PATH COUNT MS`: after the start line on stdin, make attempts
/// until COUNT were made (0: no limit) or MS milliseconds passed (0: no limit). Prints
/// "<attempts> <denied> <nanoseconds> <CPU nanoseconds>" (its CPU time over the attempts, user
/// and system: the system calls, the kernel's programs and the ring buffer's wakeups).
pub(super) fn worker(args: &[String]) -> Res<()> {
    let [kind, target, count, ms] = args else {
        return Err("usage: --worker connect ADDR|open PATH COUNT MS".into());
    };
    let count: u64 = ctx(count.parse(), "COUNT")?;
    let ms: u64 = ctx(ms.parse(), "MS")?;
    let limit = (ms > 0).then(|| Duration::from_millis(ms));
    let mut attempt: Box<dyn FnMut() -> bool> = match kind.as_str() {
        "connect" => {
            let addr: SocketAddr = ctx(target.parse(), "ADDR")?;
            let SocketAddr::V4(v4) = addr else {
                return Err("connect: an IPv4 address".into());
            };
            // One socket for every attempt: a connect the program refuses leaves it unconnected,
            // so the loop costs a connect(2) per decision and not a socket(2) and close(2) too.
            // SAFETY: plain socket(2).
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            Box::new(move || {
                // SAFETY: a valid socket and sockaddr_in of the right length.
                let r = unsafe {
                    libc::connect(
                        fd,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            })
        }
        "open" => {
            let path = PathBuf::from(target);
            let path = governance_bench::cstring(&path)?;
            Box::new(move || {
                // SAFETY: a NUL-terminated path; the fd is closed if the open succeeds.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd >= 0 {
                    unsafe { libc::close(fd) };
                    return false;
                }
                std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            })
        }
        other => return Err(format!("unknown worker kind {other}")),
    };
    wait_for_go()?;
    let cpu_start = own_cpu();
    let start = Instant::now();
    let (mut n, mut denied) = (0u64, 0u64);
    loop {
        if attempt() {
            denied += 1;
        }
        n += 1;
        if count > 0 && n >= count {
            break;
        }
        if let Some(d) = limit
            && n % 64 == 0
            && start.elapsed() >= d
        {
            break;
        }
    }
    let elapsed = start.elapsed();
    let cpu = own_cpu().saturating_sub(cpu_start);
    println!("{n} {denied} {} {}", elapsed.as_nanos(), cpu.as_nanos());
    Ok(())
}

/// This process's CPU time so far, user and system.
fn own_cpu() -> Duration {
    // SAFETY: getrusage(2) fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub(super) struct Flood {
    pub(super) attempts: u64,
    pub(super) denied: u64,
    /// The longest worker's time.
    pub(super) elapsed: Duration,
    /// The workers' CPU time, together.
    pub(super) cpu: Duration,
}

/// Start `n` workers, place them in `cgroup`, start them together; wait for them all.
pub(super) fn flood(
    env: &Env,
    n: usize,
    count: u64,
    ms: u64,
    started: &mut Option<Instant>,
) -> Res<Flood> {
    let mut workers = Vec::new();
    for _ in 0..n {
        let w = Worker::spawn(
            Command::new(&env.self_exe)
                .arg("--worker")
                .args(env.workload.args())
                .arg(count.to_string())
                .arg(ms.to_string()),
        )?;
        w.place(&env.cgroup)?;
        workers.push(w);
    }
    *started = Some(Instant::now());
    for w in &mut workers {
        w.go()?;
    }
    let mut f = Flood {
        attempts: 0,
        denied: 0,
        elapsed: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    for w in workers {
        let out = w.finish()?;
        let v: Vec<u64> = out
            .split_whitespace()
            .map(|w| w.parse().unwrap_or(0))
            .collect();
        let [a, d, ns, cpu] = v[..] else {
            return Err(format!("unexpected worker output {out:?}"));
        };
        f.attempts += a;
        f.denied += d;
        f.elapsed = f.elapsed.max(Duration::from_nanos(ns));
        f.cpu += Duration::from_nanos(cpu);
    }
    if f.denied != f.attempts {
        return Err(format!(
            "{} of {} attempts were not denied: the policy does not hold the flood",
            f.attempts - f.denied,
            f.attempts
        ));
    }
    Ok(f)
}
