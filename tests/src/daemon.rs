//! A `governance run` we started: the one harness of the kernel tests and the benchmarks.
//!
//! Its stderr is read into a [`StderrLog`]. Tests wait on it with [`Daemon::wait_for`] (which
//! panics at its deadline: a test fails loudly); benchmarks with [`Daemon::wait_line`] (which
//! returns an error and the arrival time they measure with).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::{SEQ, StderrLog, governance_bin};

/// Its control socket, audit log, CA and copy of the policy in force, below its state
/// directory.
pub const SOCKET: &str = "governance.sock";
pub const AUDIT: &str = "audit";
pub const POLICY_IN_FORCE: &str = "policy-in-force";

/// How long [`Daemon::wait_for`] waits.
const WAIT_FOR: Duration = Duration::from_secs(300);

/// How long a start may take until the control API listens: a guard against a daemon that
/// never serves, not a measure. Loading and verifying every program (about 3 million
/// instructions for the verifier) took 25 s in the emulated VM on 2026-12-01 and 90 to 200 s
/// on 2026-12-07 (a busier, slower machine; one host thread emulates both vCPUs, see
/// `xtask/src/vm.rs`), more with an attempt loop beside it.
const START_WITHIN: Duration = Duration::from_secs(900);

/// A `governance run` we started.
pub struct Daemon {
    pub child: Child,
    stderr: StderrLog,
    /// Where [`Daemon::wait_for`] goes on reading.
    read: AtomicUsize,
    /// Its state directory: control socket, audit log, node CA.
    pub state: PathBuf,
    /// Remove `state` on drop (it was made for this daemon alone).
    owned: bool,
    /// Set by [`Daemon::start`]: stop it (and unload these pins) on drop.
    stop_on_drop: Option<(PathBuf, PathBuf)>,
    /// Its "governance: enforcing ..." line, when [`Daemon::start`] saw one.
    pub enforcing: String,
}

impl Daemon {
    /// Start `bin run <args>` with `env`, stdout piped (tests) or to /dev/null (benchmarks),
    /// and collect its stderr.
    fn spawn(
        bin: &Path,
        args: &[OsString],
        env: &[(&str, &Path)],
        quiet: bool,
    ) -> Result<Daemon, String> {
        let mut child = Command::new(bin)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(if quiet { Stdio::null() } else { Stdio::piped() })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stderr = StderrLog::follow("the daemon", &mut child)?;
        Ok(Daemon {
            child,
            stderr,
            read: AtomicUsize::new(0),
            state: PathBuf::new(),
            owned: false,
            stop_on_drop: None,
            enforcing: String::new(),
        })
    }

    /// Start `governance run <args> --pins <pins>` as a benchmark does (stdout to /dev/null)
    /// and wait until its control API is up. Stopped, and its pins unloaded, on drop.
    pub fn start(governance: &Path, pins: &Path, args: &[OsString]) -> Result<Daemon, String> {
        let mut all: Vec<OsString> = vec!["--pins".into(), pins.into()];
        all.extend(args.iter().cloned());
        let mut d = Daemon::spawn(governance, &all, &[], true)?;
        d.stop_on_drop = Some((governance.to_owned(), pins.to_owned()));
        let from = 0;
        match d.wait_line(from, "governance: control API on", Duration::from_secs(180)) {
            Ok((at, _)) => {
                d.enforcing = d.stderr.lines()[..at]
                    .iter()
                    .rev()
                    .find(|(_, l)| l.contains("governance: enforcing"))
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default();
                Ok(d)
            }
            Err(e) => {
                d.stop();
                Err(format!("governance run did not start: {e}"))
            }
        }
    }

    /// Start `governance run` as the benchmarks measure it, as deployed: every decision is
    /// drained, enriched and written to the audit log (the daemon's CPU is part of the cost);
    /// no proxy (the loops make no HTTP calls). Its socket, audit log and CA under `state`.
    pub fn start_enforcing(
        governance: &Path,
        pins: &Path,
        policy_dir: &Path,
        state: &Path,
        allow_degraded: bool,
    ) -> Result<Daemon, String> {
        let mut args: Vec<OsString> = vec!["--policy".into(), policy_dir.into()];
        for (flag, name) in [
            ("--socket", SOCKET),
            ("--audit-dir", AUDIT),
            ("--ca-dir", "ca"),
            ("--policy-in-force", POLICY_IN_FORCE),
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
        let mut d = Daemon::start(governance, pins, &args)?;
        d.state = state.to_owned();
        Ok(d)
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join(SOCKET)
    }

    /// Its audit log directory.
    pub fn audit(&self) -> PathBuf {
        self.state.join(AUDIT)
    }

    /// `governance <args> --socket <its socket>`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(governance_bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("running governance")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state `governance status` gives a program's hook (`attached`, `NOT AVAILABLE: ...`).
    pub fn hook_state(&self, program: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["hooks"]
            .as_array()?
            .iter()
            .find(|h| h["program"] == program)
            .map(|h| h["state"].clone())
    }

    /// `governance discover -o json`'s evidence, flattened with each group's selector.
    pub fn discovered(&self) -> Vec<(serde_json::Value, String)> {
        let out = self.cli(&["discover", "-o", "json"]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["enabled"], true, "{v}");
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| {
                let sel = g["suggested_selector"].as_str().unwrap_or("").to_owned();
                g["evidence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |e| (e.clone(), sel.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Its last `n` stderr lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.stderr.tail(n)
    }

    /// How many stderr lines it has printed so far.
    pub fn line_count(&self) -> usize {
        self.stderr.lines().len()
    }

    /// The first stderr line from number `from` on that contains `text`: its number and when
    /// it arrived. Waits up to `timeout`, and says why it stopped waiting.
    pub fn wait_line(
        &self,
        from: usize,
        text: &str,
        timeout: Duration,
    ) -> Result<(usize, Instant), String> {
        self.stderr.wait_line(&self.child, from, text, timeout)
    }

    /// Read stderr on from where the last call stopped until a line contains `needle` (up to
    /// 300 s); returns everything read. Panics if it does not come.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_within(needle, WAIT_FOR)
    }

    /// [`Daemon::wait_for`], up to `within`.
    pub fn wait_for_within(&self, needle: &str, within: Duration) -> String {
        let from = self.read.load(Ordering::Relaxed);
        match self.wait_line(from, needle, within) {
            Ok((at, _)) => {
                self.read.store(at + 1, Ordering::Relaxed);
                let lines = self.stderr.lines();
                let mut seen = String::new();
                for (_, l) in &lines[from..=at] {
                    seen.push_str(l);
                    seen.push('\n');
                }
                seen
            }
            Err(e) => panic!("governance never said {needle:?}: {e}"),
        }
    }

    /// SIGTERM, wait (60 s, then SIGKILL), then `governance unload` of the pins it was started
    /// with. Returns its "governance: stopping; ..." line, if it printed one.
    pub fn stop(&mut self) -> Option<String> {
        self.stderr.stop(&mut self.child, Duration::from_secs(60));
        if let Some((governance, pins)) = self.stop_on_drop.take() {
            let _ = Command::new(governance)
                .arg("unload")
                .arg("--pins")
                .arg(pins)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.stderr
            .lines()
            .iter()
            .find(|(_, l)| l.contains("governance: stopping;"))
            .map(|(_, l)| l.clone())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also a daemon still running when its handle goes (a test that failed before stopping
        // it, or one that ends with `drop`): ours, stopped by its pid. `try_wait` knows a child
        // already reaped (by `stop_daemon`) without looking its pid up again.
        if self.stop_on_drop.is_some() || matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

fn fresh_state() -> PathBuf {
    let state = PathBuf::from(format!(
        "/tmp/governance-test-{}-{}-state",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&state).unwrap();
    state
}

/// Start `governance run <args> --policy DIR` (stdout piped) and wait until its control API
/// is up. Returns the daemon and its stderr up to then. Pass `--pins DIR` in `args` (from
/// [`crate::pin_dir`]) and remove them with `governance unload` or [`governance::kernel::unload`].
/// The daemon gets its own state directory (socket, audit log, CA) and a free proxy port unless
/// `args` name them.
pub fn start_daemon(args: &[&str], policy_dir: &Path) -> (Daemon, String) {
    start_daemon_env(args, policy_dir, &[])
}

/// [`start_daemon`] with environment variables for the daemon (`KUBECONFIG`, say).
pub fn start_daemon_env(
    args: &[&str],
    policy_dir: &Path,
    env: &[(&str, &Path)],
) -> (Daemon, String) {
    let (mut d, seen) = start_daemon_with(args, policy_dir, fresh_state(), env);
    d.owned = true;
    (d, seen)
}

/// [`start_daemon`] with a given state directory, which the caller removes (a restarted daemon
/// reuses its audit log).
pub fn start_daemon_in(args: &[&str], policy_dir: &Path, state: PathBuf) -> (Daemon, String) {
    start_daemon_with(args, policy_dir, state, &[])
}

fn start_daemon_with(
    args: &[&str],
    policy_dir: &Path,
    state: PathBuf,
    env: &[(&str, &Path)],
) -> (Daemon, String) {
    let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
    let given = |flag: &str| args.contains(&flag);
    for (flag, name) in [
        ("--socket", SOCKET),
        ("--audit-dir", AUDIT),
        ("--ca-dir", "ca"),
        ("--policy-in-force", POLICY_IN_FORCE),
    ] {
        if !given(flag) {
            all.push(flag.into());
            all.push(state.join(name).into());
        }
    }
    if !given("--proxy-listen") && !given("--no-proxy") {
        all.extend(["--proxy-listen".into(), "127.0.0.1:0".into()]);
    }
    all.extend(["--policy".into(), policy_dir.into()]);
    let log = Path::new("warn");
    let mut env = env.to_vec();
    env.insert(0, ("GOVERNANCE_LOG", log));
    let started = Instant::now();
    let mut daemon =
        Daemon::spawn(&governance_bin(), &all, &env, false).expect("starting governance");
    daemon.state = state;
    let seen = daemon.wait_for_within("governance: control API on", START_WITHIN);
    // How long loading took, for a slow run's log (the VM's emulation varies fourfold).
    println!("harness: the daemon served after {:.1?}", started.elapsed());
    (daemon, seen)
}

/// Stop a daemon we started, by its pid, and check it exits cleanly.
pub fn stop_daemon(mut daemon: Daemon) {
    signal(&daemon, nix::sys::signal::SIGTERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "governance exited with {status:?}");
}

/// Send a signal to a daemon we started.
pub fn signal(daemon: &Daemon, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
}
