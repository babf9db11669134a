//! What the root benchmarks (`governance-bench-kernel`, `governance-bench-events`) share:
//! errors with context, medians and ranges, the cgroup2 mount, worker processes placed in a
//! cgroup before they start, and a `governance run` daemon started and stopped by pid.

pub mod policies;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Display,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
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

/// A `governance run` we started.
pub struct Daemon {
    pub child: Child,
    /// Its stderr lines, each with when it arrived.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<JoinHandle<()>>,
    /// Its "governance: enforcing ..." line.
    pub enforcing: String,
    governance: PathBuf,
    pins: PathBuf,
}

/// Where [`Daemon::start_enforcing`] puts the control socket and the audit log.
pub const SOCKET: &str = "governance.sock";
pub const AUDIT: &str = "audit";

impl Daemon {
    /// Start `governance run` as the benchmarks measure it, as deployed: every decision is
    /// drained, enriched and written to the audit log (the daemon's CPU is part of the cost);
    /// no proxy (the loops make no HTTP calls). Its socket, audit log and CA under `state`.
    pub fn start_enforcing(
        governance: &Path,
        pins: &Path,
        policy_dir: &Path,
        state: &Path,
        allow_degraded: bool,
    ) -> Res<Daemon> {
        let mut args: Vec<OsString> = vec!["--policy".into(), policy_dir.into()];
        for (flag, name) in [
            ("--socket", SOCKET),
            ("--audit-dir", AUDIT),
            ("--ca-dir", "ca"),
        ] {
            args.push(flag.into());
            args.push(state.join(name).into());
        }
        for flag in [
            "--no-proxy",
            "--quiet",
            "--detach-on-exit",
            "--no-create-cgroups",
        ] {
            args.push(flag.into());
        }
        if allow_degraded {
            args.push("--allow-degraded".into());
        }
        Daemon::start(governance, pins, &args)
    }

    /// Start `governance run <args> --pins <pins>` (stdout to /dev/null, stderr collected) and
    /// wait until its control API is up.
    pub fn start(governance: &Path, pins: &Path, args: &[OsString]) -> Res<Daemon> {
        let mut child = ctx(
            Command::new(governance)
                .arg("run")
                .arg("--pins")
                .arg(pins)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn(),
            format_args!("starting {}", governance.display()),
        )?;
        let stderr = child.stderr.take().ok_or("daemon stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), line.clone()));
                    let _ = tx.send(line);
                }
            })
        };
        let mut daemon = Daemon {
            child,
            lines,
            reader: Some(reader),
            enforcing: String::new(),
            governance: governance.to_owned(),
            pins: pins.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("governance: control API on") => {
                    return Ok(daemon);
                }
                Ok(line) if line.contains("governance: enforcing") => {
                    daemon.enforcing = line;
                }
                Ok(_) => {}
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => "did not start enforcing within 180 s",
                        mpsc::RecvTimeoutError::Disconnected => "stopped before enforcing",
                    };
                    let _ = daemon.stop();
                    return Err(format!(
                        "governance run {why}; its stderr:\n  {}",
                        daemon.tail(30).join("\n  ")
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// How many stderr lines it has printed so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The first stderr line from number `from` on that contains `text`, with when it arrived
    /// and its number; waits up to `timeout` for it.
    pub fn wait_line(&self, from: usize, text: &str, timeout: Duration) -> Res<(usize, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = lines.iter().skip(from).position(|(_, l)| l.contains(text)) {
                    return Ok((from + i, lines[from + i].0));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not print {text:?} within {timeout:?}; its stderr:\n  {}",
                    self.tail(20).join("\n  ")
                ));
            }
            // Poll interval: the line's arrival time is stamped by the reader, not here.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM (with --detach-on-exit it removes its pins), wait, then `governance unload` to
    /// be sure. Returns its "governance: stopping; ..." line, if it printed one.
    pub fn stop(&mut self) -> Option<String> {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Our own child, by its pid.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                // Poll interval; the deadline above bounds the wait for its exit.
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("bench: governance run ignored SIGTERM for 60 s; killing it");
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = Command::new(&self.governance)
            .arg("unload")
            .arg("--pins")
            .arg(&self.pins)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .find(|(_, l)| l.contains("governance: stopping;"))
            .map(|(_, l)| l.clone())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.stop();
        }
    }
}

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
/// runs one measurement, anything else the benchmark. Exits 1 with the error.
pub fn run_main(
    name: &str,
    worker: fn(&[String]) -> Res<()>,
    bench: impl FnOnce(&[String]) -> Res<()>,
) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (who, result) = match args.split_first() {
        Some((first, rest)) if first == "--worker" => ("bench worker", worker(rest)),
        _ => (name, bench(&args)),
    };
    if let Err(e) = result {
        eprintln!("{who}: error: {e}");
        std::process::exit(1);
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
