//! What the root benchmarks (`governance-bench-kernel`, `governance-bench-events`) share:
//! errors with context, medians and ranges, the cgroup2 mount, worker processes placed in a
//! cgroup before they start, and a `governance run` daemon started and stopped by pid.

pub mod policies;
pub mod tetragon;

use std::{
    collections::BTreeMap,
    fmt::Display,
    io::{Read as _, Write as _},
    num::ParseIntError,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    str::FromStr,
    time::Duration,
};

pub type Res<T> = Result<T, String>;

/// Attach what was being done to an error.
pub fn ctx<T, E: Display>(r: Result<T, E>, what: impl Display) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// 1.23M, 45.6k, 789.
pub fn ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// A path as a C string.
pub fn cstring(path: &Path) -> Res<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    ctx(
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        format_args!("{}", path.display()),
    )
}

/// A file's contents, trimmed, or `?`.
pub fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

/// The cgroup2 mount point, as the daemon finds it.
pub fn cgroup2_mount() -> Res<PathBuf> {
    ctx(governance::agents::cgroup2_mount(), "finding cgroup2")
}

/// Remove a cgroup we made (its tasks have exited; it can stay busy for a moment after).
pub fn remove_cgroup(path: &Path) {
    // The kernel releases it asynchronously, with nothing to wait on: retry the removal
    // itself, for up to 2 s (100 tries), then say so.
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                // Poll interval; the 100 tries bound the wait.
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => break,
        }
    }
    if path.exists() {
        eprintln!("bench: could not remove {}", path.display());
    }
}

/// A worker process: started waiting for a line on stdin, so that it can be moved into a
/// cgroup before it does anything; then told to go, and its stdout collected.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    pub fn spawn(cmd: &mut Command) -> Res<Worker> {
        let mut child = ctx(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn(),
            "starting a worker",
        )?;
        let stdin = child.stdin.take();
        Ok(Worker { child, stdin })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Move it into `cgroup` (a cgroup2 directory) and check that it is there.
    pub fn place(&self, cgroup: &Path) -> Res<()> {
        let pid = self.pid();
        let procs = cgroup.join("cgroup.procs");
        ctx(
            std::fs::write(&procs, pid.to_string()),
            format_args!("writing {pid} to {}", procs.display()),
        )?;
        let now = ctx(
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
            "reading the worker's cgroup",
        )?;
        let name = cgroup.file_name().unwrap_or_default().to_string_lossy();
        if !now
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&*name))
        {
            return Err(format!("the worker is not in {}: {now}", cgroup.display()));
        }
        Ok(())
    }

    pub fn go(&mut self) -> Res<()> {
        let mut stdin = self.stdin.take().ok_or("the worker was started already")?;
        ctx(stdin.write_all(b"go\n"), "starting the worker")
    }

    /// Wait for it; its stdout.
    pub fn finish(mut self) -> Res<String> {
        drop(self.stdin.take());
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            ctx(stdout.read_to_string(&mut out), "reading the worker")?;
        }
        let status = ctx(self.child.wait(), "waiting for the worker")?;
        if !status.success() {
            return Err(format!("a worker failed: {status}; it said {out:?}"));
        }
        Ok(out)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only when it was not finished: our own child, by its pid.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Worker side: wait for the start line on stdin.
pub fn wait_for_go() -> Res<()> {
    let mut go = String::new();
    ctx(
        std::io::stdin().read_line(&mut go),
        "waiting for the start signal",
    )
    .map(drop)
}

/// A `governance run` we started, stopped by pid (and its pins unloaded) on drop: the kernel
/// tests' harness.
pub use governance_tests::{AUDIT, Daemon, SOCKET};

/// "governance: stopping; 12 decisions, 0 denials, 3 events dropped, ..." → (12, 0, 3).
pub fn parse_stopping(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.split_once("stopping;")?.1;
    let mut found = BTreeMap::new();
    for part in rest.split(',') {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next())
            && let Ok(n) = n.parse::<u64>()
        {
            found.insert(what.to_owned(), n);
        }
    }
    Some((
        *found.get("decisions")?,
        *found.get("denials")?,
        *found.get("events")?,
    ))
}

/// `main` of a benchmark that measures in worker processes of its own binary: `--worker ARGS`
/// runs one measurement (its arguments are the worker's own, not parsed by clap), anything else
/// the benchmark, with its options `O` parsed by clap (which exits 2 on a usage error). Exits 1
/// with the error.
pub fn run_main<O: clap::Parser>(
    name: &str,
    worker: fn(&[String]) -> Res<()>,
    bench: impl FnOnce(O) -> Res<()>,
) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (who, result) = match args.split_first() {
        Some((first, rest)) if first == "--worker" => ("bench worker", worker(rest)),
        _ => (name, bench(O::parse())),
    };
    if let Err(e) = result {
        eprintln!("{who}: error: {e}");
        std::process::exit(1);
    }
}

/// A clap value parser for a count: a whole number, at least 1.
pub fn positive<T: FromStr<Err = ParseIntError> + Default + PartialEq>(s: &str) -> Res<T> {
    match s.trim().parse::<T>() {
        Ok(n) if n == T::default() => Err("must be at least 1".into()),
        r => r.map_err(|e| e.to_string()),
    }
}

/// Print a report between the lines `cargo xtask bench` looks for: `<begin>[: <label>]` first,
/// `<== end of report` last.
pub fn print_report(begin: &str, label: &str, lines: &[String]) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let label = if label.is_empty() {
        String::new()
    } else {
        format!(": {label}")
    };
    let _ = writeln!(stdout, "{begin}{label}");
    for line in lines {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = writeln!(stdout, "<== end of report");
}
