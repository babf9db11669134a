//! `cargo xtask bench kernel`: what the kernel hooks cost the processes they watch, as
//! throughput ratios measured side by side in one run.
//!
//! Four loops, each timed for a fixed duration:
//! - openat: open + close of an existing file;
//! - open-fs: the same on a file in a tmpfs the benchmark mounts, a filesystem where no rule
//!   names anything (as a container's overlay), where the kernel skips the identity walk;
//! - execve: fork + execve of `/bin/busybox` as `true` + waitpid;
//! - connect: socket + connect to a closed loopback port (ECONNREFUSED) + close;
//! - write: one byte to `/dev/null`, opened once before the loop (every read and write on the
//!   node passes the `file_permission` program, which decides a sandboxed process's writes to
//!   the sockets it held);
//!
//! in three configurations, interleaved round by round (odd rounds in this order, even rounds
//! in reverse):
//! 1. no governance programs loaded;
//! 2. `governance run` enforcing a policy, the loop outside every agent;
//! 3. the loop in an agent cgroup whose policy has 1,000 rules (400 file, 300 exec, 300
//!    network) that the loop never matches, with defaults that allow what it does.
//!
//! Per loop it reports the median over the rounds of (2)/(1) and (3)/(1), each ratio taken
//! within one round, their range, and the median ops/s. Every measurement runs in a fresh
//! worker process (this binary with `--worker`); for (3) it is moved into the agent cgroup
//! before it starts.
//!
//! A last pass (unless --no-stats) turns on `kernel.bpf_stats_enabled` and reports each
//! program's run_time_ns / run_cnt per loop (separately, since the statistics cost time too):
//! outside every agent, in the agent under the 1,000-rule policy above, and in the agent under
//! policies of 10, 100, 1,000 and 10,000 rules next to what the loops do (see
//! `near_policy_yaml`), swapped by reloads of one daemon; a fixed number of calls per pass
//! (--stats-calls opens and writes, a fifth as many connects, a fiftieth as many execs), --stats-rounds
//! times over. It shows what the hooks cost per decision and whether that grows with the rules.
//!
//! With --tetragon DIR, the same pass for a peer follows (see `tetragon_pass`): Tetragon
//! enforcing the 1,000 rules on its own hooks, outside and inside its selectors.
//!
//! Needs root; `--help` lists the options. The governance binary is --governance, else
//! $GOVERNANCE_BIN.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{CString, c_char, c_int},
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::{ArgAction, Parser};
use governance_bench::{
    Daemon, Res, Worker, cgroup2_mount, ctx, median, min_max, ops, parse_stopping, positive,
    read_trim, remove_cgroup,
    tetragon::{self, Rules, Tetragon},
    wait_for_go,
};

const FILE_RULES: usize = 400;
const EXEC_RULES: usize = 300;
const NET_RULES: usize = 300;
const RULES: usize = FILE_RULES + EXEC_RULES + NET_RULES;
const BUSYBOX: &str = "/bin/busybox";
/// The exec loop runs this many times longer than the others (each exec is a thousand times
/// slower than an open).
const EXEC_FACTOR: u64 = 3;
/// A pause after starting or stopping the daemon, so its start-up and the kernel's clean-up
/// (freeing programs and maps) stay out of the measurements. Not a readiness wait: starting
/// waits for the daemon's "enforcing" line and stopping for its exit and `governance unload`.
/// What is left has no completion to wait on (the kernel frees programs and maps after an RCU
/// grace period, in deferred work): a quiet period, for measurement hygiene only.
const SETTLE: Duration = Duration::from_millis(200);
/// Marks the report's lines, so that `cargo xtask bench kernel` can print it again at the end.
const REPORT_BEGIN: &str = "==> kernel hook overhead";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    Open,
    OpenOwnFs,
    Exec,
    Connect,
    Write,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Open,
        Workload::OpenOwnFs,
        Workload::Exec,
        Workload::Connect,
        Workload::Write,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Open => "openat",
            Workload::OpenOwnFs => "open-fs",
            Workload::Exec => "execve",
            Workload::Connect => "connect",
            Workload::Write => "write",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Targets for (2)/(1) and (3)/(1).
    fn targets(self) -> Option<(f64, f64)> {
        match self {
            Workload::Open | Workload::OpenOwnFs | Workload::Connect | Workload::Write => {
                Some((0.98, 0.90))
            }
            Workload::Exec => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    /// No governance programs loaded.
    Bare,
    /// Governance enforcing, the loop outside every agent.
    Loaded,
    /// The loop in the agent cgroup.
    Agent,
}

impl Config {
    const ALL: [Config; 3] = [Config::Bare, Config::Loaded, Config::Agent];

    fn tag(self) -> &'static str {
        match self {
            Config::Bare => "(1)",
            Config::Loaded => "(2)",
            Config::Agent => "(3)",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker: one loop, timed, in its own process.

/// Call `op` until `d` has passed; (calls, time taken).
fn run_for(d: Duration, op: &mut impl FnMut() -> Res<()>) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        op()?;
        n += 1;
        let elapsed = start.elapsed();
        if elapsed >= d {
            return Ok((n, elapsed));
        }
    }
}

/// Call `op` `n` times; (calls, time taken).
fn run_n(n: u64, op: &mut impl FnMut() -> Res<()>) -> Res<(u64, Duration)> {
    let start = Instant::now();
    for _ in 0..n {
        op()?;
    }
    Ok((n, start.elapsed()))
}

/// How long a worker runs its loop: milliseconds (`300`), or a number of calls (`x2000`).
#[derive(Clone, Copy)]
enum Budget {
    Ms(u64),
    Calls(u64),
}

impl Budget {
    fn parse(s: &str) -> Res<Budget> {
        match s.strip_prefix('x') {
            Some(n) => Ok(Budget::Calls(ctx(n.parse(), "calls")?)),
            None => Ok(Budget::Ms(ctx(s.parse(), "MS")?)),
        }
    }

    fn arg(self) -> String {
        match self {
            Budget::Ms(ms) => ms.to_string(),
            Budget::Calls(n) => format!("x{n}"),
        }
    }
}

/// Warm up for a tenth of the budget, then measure; prints "<calls> <nanoseconds>".
fn timed(budget: Budget, mut op: impl FnMut() -> Res<()>) -> Res<()> {
    let (n, elapsed) = match budget {
        Budget::Ms(ms) => {
            run_for(Duration::from_millis(ms / 10), &mut op)?;
            run_for(Duration::from_millis(ms), &mut op)?
        }
        Budget::Calls(n) => {
            run_n(n / 10, &mut op)?;
            run_n(n, &mut op)?
        }
    };
    println!("{n} {}", elapsed.as_nanos());
    Ok(())
}

/// `--worker KIND MS|xCALLS FILE PORT`: wait for a line on stdin (the parent moves us into
/// the agent cgroup first), then run the loop.
fn worker(args: &[String]) -> Res<()> {
    let [kind, ms, file, port] = args else {
        return Err(
            "usage: --worker openat|open-fs|execve|connect|write MS|xCALLS FILE PORT".into(),
        );
    };
    let kind = Workload::parse(kind).ok_or_else(|| format!("unknown workload {kind}"))?;
    let ms = Budget::parse(ms)?;
    let port: u16 = ctx(port.parse(), "PORT")?;
    let file = PathBuf::from(file);
    wait_for_go()?;
    match kind {
        Workload::Open | Workload::OpenOwnFs => timed(ms, || {
            ctx(
                std::fs::File::open(&file),
                format_args!("open {}", file.display()),
            )
            .map(drop)
        }),
        Workload::Exec => {
            let path = CString::new(BUSYBOX).map_err(|e| e.to_string())?;
            let arg0 = CString::new("true").map_err(|e| e.to_string())?;
            let argv: [*const c_char; 2] = [arg0.as_ptr(), std::ptr::null()];
            let envp: [*const c_char; 1] = [std::ptr::null()];
            timed(ms, || {
                // SAFETY: the worker is single-threaded; the child calls only execve and _exit
                // on memory prepared before the fork.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    return Err(format!("fork: {}", std::io::Error::last_os_error()));
                }
                if pid == 0 {
                    // SAFETY: as above; pointers stay valid, the arrays are NULL-terminated.
                    unsafe {
                        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                        libc::_exit(127)
                    }
                }
                let mut status: c_int = 0;
                // SAFETY: waits for our own child; status is a valid out pointer.
                if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                    return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
                }
                if status != 0 {
                    return Err(format!(
                        "{BUSYBOX} true: wait status {status:#x} (127<<8: execve failed)"
                    ));
                }
                Ok(())
            })
        }
        Workload::Write => {
            let null = ctx(
                std::fs::OpenOptions::new().write(true).open("/dev/null"),
                "open /dev/null",
            )?;
            timed(ms, || {
                ctx(std::io::Write::write(&mut &null, b"x"), "write /dev/null").map(drop)
            })
        }
        Workload::Connect => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            timed(ms, || match TcpStream::connect(addr) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
                Ok(_) => Err(format!("something listens on {addr}; expected nothing")),
                Err(e) => Err(format!("connect {addr}: {e} (expected ECONNREFUSED)")),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// Start `governance run` and wait until it enforces.
fn start_daemon(env: &Env) -> Res<Daemon> {
    Daemon::start_enforcing(
        &env.governance,
        &env.pins,
        &env.policy_dir,
        &env.tmp,
        env.allow_degraded,
    )
}

// ---------------------------------------------------------------------------------------------
// The environment: files, cgroup, pins; removed on drop.

struct Env {
    governance: PathBuf,
    allow_degraded: bool,
    ms: u64,
    tmp: PathBuf,
    policy_dir: PathBuf,
    file: PathBuf,
    /// A tmpfs mounted for the open-fs loop, and its file.
    fs: PathBuf,
    fs_file: PathBuf,
    port: u16,
    cgroup: PathBuf,
    /// The agent cgroup relative to the cgroup2 mount, as the policy names it.
    cgroup_rel: String,
    pins: PathBuf,
    self_exe: PathBuf,
    /// The value of kernel.bpf_stats_enabled to put back.
    restore_stats: Option<String>,
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(old) = self.restore_stats.take() {
            let _ = std::fs::write(STATS_SYSCTL, old);
        }
        // The workers have exited.
        remove_cgroup(&self.cgroup);
        if let Ok(fs) = CString::new(self.fs.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; detached, in case something still uses it.
            unsafe { libc::umount2(fs.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
        let _ = std::fs::remove_dir(&self.pins);
    }
}

/// The benchmark policy's rules, which the loops never match: file and exec rules (half exact
/// paths, half prefixes) and network /32s.
fn far_rules() -> (Rules, Rules, Vec<String>) {
    let split =
        |n: usize, exact: &dyn Fn(usize) -> String, prefix: &dyn Fn(usize) -> String| Rules {
            exact: (0..n).step_by(2).map(exact).collect(),
            prefix: (1..n).step_by(2).map(prefix).collect(),
        };
    let files = split(
        FILE_RULES,
        &|i| format!("/nonexistent-bench/files/{i}/data.txt"),
        &|i| format!("/nonexistent-bench/dirs/{i}"),
    );
    let execs = split(
        EXEC_RULES,
        &|i| format!("/nonexistent-bench/bin/tool-{i}"),
        &|i| format!("/nonexistent-bench/opt/{i}"),
    );
    let nets = (0..NET_RULES)
        .map(|i| format!("10.{}.{}.{}/32", i / 65536 + 1, (i / 256) % 256, i % 256))
        .collect();
    (files, execs, nets)
}

/// The benchmark policy: 1,000 rules the loops never match; defaults allow them.
fn policy_yaml(cgroup_rel: &str) -> String {
    let mut y = format!(
        "# Generated by governance-bench-kernel: {RULES} rules that the benchmark loops never match.\n\
         name: bench\n\
         description: Kernel hook overhead benchmark.\n\
         agents:\n  cgroup: {cgroup_rel}\n\
         defaults: {{ exec: allow, file: allow, network: allow }}\n\
         rules:\n"
    );
    let mut rule = |id: String, what: String| {
        y.push_str(&format!(
            "  - {{ id: {id}, {what}, verdict: block, reason: bench }}\n"
        ));
    };
    let (files, execs, nets) = far_rules();
    for (kind, rules) in [("file", files), ("exec", execs)] {
        for (i, p) in rules.exact.iter().enumerate() {
            rule(
                format!("{kind}-path-{i}"),
                format!("{kind}: {{ path: {p} }}"),
            );
        }
        for (i, p) in rules.prefix.iter().enumerate() {
            rule(
                format!("{kind}-prefix-{i}"),
                format!("{kind}: {{ prefix: {p} }}"),
            );
        }
    }
    for (i, cidr) in nets.iter().enumerate() {
        rule(format!("net-{i}"), format!("network: {{ cidr: [{cidr}] }}"));
    }
    y
}

impl Env {
    fn new(opts: &Opts) -> Res<Env> {
        let pid = std::process::id();
        let tmp = std::env::temp_dir().join(format!("governance-bench-{pid}"));
        let root = cgroup2_mount()?;
        let cgroup_rel = format!("governance-bench-{pid}");
        let mut env = Env {
            governance: opts.governance.clone(),
            allow_degraded: opts.allow_degraded,
            ms: opts.ms,
            policy_dir: tmp.join("policy"),
            file: tmp.join("target.txt"),
            fs: tmp.join("fs"),
            fs_file: tmp.join("fs/target.txt"),
            tmp,
            port: 0,
            cgroup: root.join(&cgroup_rel),
            cgroup_rel: cgroup_rel.clone(),
            pins: PathBuf::from(format!("/sys/fs/bpf/governance-bench-{pid}")),
            self_exe: ctx(std::env::current_exe(), "finding this executable")?,
            restore_stats: None,
        };
        ctx(
            std::fs::create_dir_all(&env.policy_dir),
            format_args!("creating {}", env.policy_dir.display()),
        )?;
        ctx(
            std::fs::write(&env.file, "governance kernel benchmark\n"),
            format_args!("writing {}", env.file.display()),
        )?;
        ctx(
            std::fs::create_dir(&env.fs),
            format_args!("creating {}", env.fs.display()),
        )?;
        let fs = CString::new(env.fs.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: valid C strings; a tmpfs mounted by the benchmark, unmounted on drop.
        if unsafe {
            libc::mount(
                c"governance-bench".as_ptr(),
                fs.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(format!(
                "mounting a tmpfs at {}: {}",
                env.fs.display(),
                std::io::Error::last_os_error()
            ));
        }
        ctx(
            std::fs::write(&env.fs_file, "governance kernel benchmark\n"),
            format_args!("writing {}", env.fs_file.display()),
        )?;
        let policy = env.policy_dir.join("bench.yaml");
        ctx(
            std::fs::write(&policy, policy_yaml(&cgroup_rel)),
            format_args!("writing {}", policy.display()),
        )?;
        ctx(
            std::fs::create_dir(&env.cgroup),
            format_args!("creating the cgroup {}", env.cgroup.display()),
        )?;
        // A loopback port with no listener: bind one, note it, close it.
        env.port = {
            let l = ctx(TcpListener::bind("127.0.0.1:0"), "binding a loopback port")?;
            ctx(l.local_addr(), "local address")?.port()
        };
        match TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.port))) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            other => return Err(format!("127.0.0.1:{} is not closed: {other:?}", env.port)),
        }
        let out = ctx(
            Command::new(&env.governance)
                .args(["policy", "check"])
                .arg(&env.policy_dir)
                .output(),
            format_args!("running {} policy check", env.governance.display()),
        )?;
        if !out.status.success() {
            return Err(format!(
                "the generated policy does not validate:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("bench: {}", String::from_utf8_lossy(&out.stdout).trim());
        Ok(env)
    }

    /// Run one loop in a fresh worker; ops per second.
    fn measure(&self, w: Workload, in_agent: bool) -> Res<f64> {
        let ms = if w == Workload::Exec {
            self.ms * EXEC_FACTOR
        } else {
            self.ms
        };
        self.measure_for(w, in_agent, Budget::Ms(ms))
    }

    /// Run one loop in a fresh worker for `budget`; ops per second.
    fn measure_for(&self, w: Workload, in_agent: bool, budget: Budget) -> Res<f64> {
        let cgroup = in_agent.then_some(self.cgroup.as_path());
        self.run_worker(&self.self_exe, w, budget, self.loop_file(w), cgroup)
    }

    /// Turn on kernel.bpf_stats_enabled until [`Env::restore_stats`] (or the drop).
    fn enable_stats(&mut self) -> Res<()> {
        let old = ctx(
            std::fs::read_to_string(STATS_SYSCTL),
            format_args!("reading {STATS_SYSCTL}"),
        )?;
        self.restore_stats.get_or_insert(old.trim().to_owned());
        ctx(
            std::fs::write(STATS_SYSCTL, "1"),
            "enabling kernel.bpf_stats_enabled",
        )
    }

    fn restore_stats(&mut self) -> Res<()> {
        match self.restore_stats.take() {
            Some(old) => ctx(
                std::fs::write(STATS_SYSCTL, &old),
                "restoring kernel.bpf_stats_enabled",
            ),
            None => Ok(()),
        }
    }

    /// The file a loop opens.
    fn loop_file(&self, w: Workload) -> &Path {
        if w == Workload::OpenOwnFs {
            &self.fs_file
        } else {
            &self.file
        }
    }

    /// Run one loop of `exe --worker` on `file`, in `cgroup` if given; ops per second.
    fn run_worker(
        &self,
        exe: &Path,
        w: Workload,
        budget: Budget,
        file: &Path,
        cgroup: Option<&Path>,
    ) -> Res<f64> {
        let mut worker = Worker::spawn(
            Command::new(exe)
                .arg("--worker")
                .arg(w.name())
                .arg(budget.arg())
                .arg(file)
                .arg(self.port.to_string()),
        )?;
        if let Some(cgroup) = cgroup {
            worker.place(cgroup)?;
        }
        worker.go()?;
        let out = worker.finish()?;
        let mut words = out.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(n)), Some(Ok(ns))) if ns > 0 => Ok(n as f64 * 1e9 / ns as f64),
            _ => Err(format!("unexpected {} worker output {out:?}", w.name())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-program statistics (bpftool).

/// Programs loaded after `before` (and held by `daemon` where bpftool names the holders):
/// name → (run_time_ns, run_cnt).
fn prog_stats(daemon: u32, before: &BTreeSet<u64>) -> Res<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let progs = bpftool_progs()?;
    let held = |p: &serde_json::Value| {
        p["pids"].as_array().is_some_and(|pids| {
            pids.iter()
                .any(|h| h["pid"].as_u64() == Some(u64::from(daemon)))
        })
    };
    // Where bpftool names the holders, only the daemon's: programs loaded meanwhile by others
    // (pinned, so held by no process) are not ours.
    let named = progs.iter().any(held);
    for p in progs {
        let Some(id) = p["id"].as_u64() else { continue };
        if before.contains(&id) || (named && !held(&p)) {
            continue;
        }
        let name = p["name"]
            .as_str()
            .map_or_else(|| format!("id {id}"), str::to_owned);
        // The `bpf` hook's runs are bpftool's own calls, not the loops'.
        if name == "bpf" {
            continue;
        }
        let name = if out.contains_key(&name) {
            format!("{name} (id {id})")
        } else {
            name
        };
        out.insert(
            name,
            (
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(out)
}

fn bpftool_progs() -> Res<Vec<serde_json::Value>> {
    let out = ctx(
        Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output(),
        "running bpftool",
    )?;
    if !out.status.success() {
        return Err(format!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = ctx(serde_json::from_slice(&out.stdout), "bpftool's JSON")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The ids of the programs loaded now.
fn prog_ids() -> Res<BTreeSet<u64>> {
    Ok(bpftool_progs()?
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

/// Rule counts of the per-program pass.
const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// A policy of `n` rules (40 % file, 30 % exec, 30 % network) that the loops never match, as
/// close to what they do as a rule can be without matching: file rules in the loop file's
/// directory, exec rules in busybox's directory, network rules in 127.0.0.0/8 next to
/// 127.0.0.1. A lookup whose cost grew with the rules sharing a prefix with what it looks up
/// would show here. Defaults allow. File rules are for `read` and `write` only, so that 10,000
/// rules fit half the path table (a generation's share).
fn near_policy_yaml(cgroup_rel: &str, n: usize, dir: &str, bin_dir: &str) -> String {
    let (files, execs) = (n * 4 / 10, n * 3 / 10);
    let nets = n - files - execs;
    let mut y = format!(
        "# Generated by governance-bench-kernel: {n} rules next to what the loops do, matching none.\n\
         name: bench\n\
         description: Kernel hook cost at {n} rules.\n\
         agents:\n  cgroup: {cgroup_rel}\n\
         defaults: {{ exec: allow, file: allow, network: allow }}\n\
         rules:\n"
    );
    let mut rule = |id: String, what: String| {
        y.push_str(&format!(
            "  - {{ id: {id}, {what}, verdict: block, reason: bench }}\n"
        ));
    };
    for i in 0..files {
        let what = if i % 2 == 0 {
            format!("file: {{ path: {dir}/nomatch-{i}.txt, access: [read, write] }}")
        } else {
            format!("file: {{ prefix: {dir}/nomatch-dir-{i}, access: [read, write] }}")
        };
        rule(format!("file-{i}"), what);
    }
    for i in 0..execs {
        let what = if i % 2 == 0 {
            format!("exec: {{ path: {bin_dir}/nomatch-tool-{i} }}")
        } else {
            format!("exec: {{ prefix: {bin_dir}/nomatch-dir-{i} }}")
        };
        rule(format!("exec-{i}"), what);
    }
    for i in 0..nets {
        let what = format!(
            "network: {{ cidr: [127.{}.{}.{}/32] }}",
            i / 65536,
            (i / 256) % 256 + 1,
            i % 256
        );
        rule(format!("net-{i}"), what);
    }
    y
}

/// Calls per worker in the per-program pass: `calls` opens, a fifth as many connects, a
/// fiftieth as many execs (each exec costs a fork and a process).
fn pass_budget(w: Workload, calls: u64) -> u64 {
    match w {
        Workload::Open | Workload::OpenOwnFs | Workload::Write => calls,
        Workload::Connect => (calls / 5).max(10),
        Workload::Exec => (calls / 50).max(10),
    }
}

/// Per-program costs measured in a pass: (workload, program) → column → ns/run, one per
/// round; and runs per call, last seen.
#[derive(Default)]
struct Cells {
    ns: BTreeMap<(Workload, String), BTreeMap<usize, Vec<f64>>>,
    per_call: BTreeMap<(Workload, String), f64>,
}

impl Cells {
    /// Record, in column `c`, the programs that ran between `last` and `now` at least once every
    /// other call of a worker that made `n` calls of `w` (the loop's programs, not the worker's
    /// own start and exit; the warm-up adds a tenth). Notes the hooks the loops are about in
    /// `line`.
    fn add(
        &mut self,
        w: Workload,
        c: usize,
        n: u64,
        last: &BTreeMap<String, (u64, u64)>,
        now: &BTreeMap<String, (u64, u64)>,
        line: &mut String,
    ) {
        for (name, &(ns, cnt)) in now {
            let (ns0, cnt0) = last.get(name).copied().unwrap_or((0, 0));
            let (dns, dcnt) = (ns.saturating_sub(ns0), cnt.saturating_sub(cnt0));
            if dcnt < n / 2 {
                continue;
            }
            let v = dns as f64 / dcnt as f64;
            let key = (w, name.clone());
            self.ns
                .entry(key.clone())
                .or_default()
                .entry(c)
                .or_default()
                .push(v);
            self.per_call.insert(key, dcnt as f64 / (n + n / 10) as f64);
            if [
                "file_open",
                "bprm_check",
                "connect4",
                "file_permission",
                "generic_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            {
                line.push_str(&format!("  {} {name} {v:.0} ns/run", w.name()));
            }
        }
    }

    /// The table: a row per (loop, program), a column per `titles`, median [min-max] over the
    /// rounds, and the costliest column against the first (outside every agent).
    fn rows(&self, titles: &[&str], whose: &str) -> Vec<String> {
        let mut rows = Vec::new();
        let width = self
            .ns
            .keys()
            .map(|(_, p)| p.len())
            .max()
            .unwrap_or(0)
            .max(19);
        let mut head = format!("  {:<8} {:<width$} {:>9}", "loop", "program", "runs/call");
        for t in titles {
            head.push_str(&format!(" {t:>22}"));
        }
        head.push_str(&format!(" {:>9}", "max/out"));
        rows.push(head);
        for ((w, name), by_col) in &self.ns {
            let mut line = format!(
                "  {:<8} {:<width$} {:>9.1}",
                w.name(),
                name,
                self.per_call
                    .get(&(*w, name.clone()))
                    .copied()
                    .unwrap_or(0.0)
            );
            let mut outside = None;
            let mut worst: f64 = 0.0;
            for c in 0..titles.len() {
                match by_col.get(&c) {
                    Some(v) => {
                        let (lo, hi) = min_max(v);
                        let med = median(v);
                        if c == 0 {
                            outside = Some(med);
                        } else {
                            worst = worst.max(med);
                        }
                        line.push_str(&format!(" {:>22}", format!("{med:.0} [{lo:.0}-{hi:.0}]")));
                    }
                    None => line.push_str(&format!(" {:>22}", "-")),
                }
            }
            match outside {
                Some(o) if o > 0.0 && worst > 0.0 => {
                    line.push_str(&format!(" {:>8.1}x", worst / o))
                }
                _ => line.push_str(&format!(" {:>9}", "-")),
            }
            rows.push(line);
        }
        if self.ns.is_empty() {
            rows.push(format!("  (bpftool reported no runs of {whose} programs)"));
        }
        rows
    }
}

/// A per-program pass over the programs `pid` holds that were loaded after `before`.
struct Pass {
    pid: u32,
    before: BTreeSet<u64>,
    /// Their counters, last read.
    last: BTreeMap<String, (u64, u64)>,
    cells: Cells,
}

impl Pass {
    fn new(pid: u32, before: BTreeSet<u64>) -> Res<Pass> {
        let last = prog_stats(pid, &before)?;
        Ok(Pass {
            pid,
            before,
            last,
            cells: Cells::default(),
        })
    }

    /// Column `c`: each loop's fixed number of calls ([`pass_budget`]) in a fresh worker run
    /// from `exe`, in `cgroup` if given, and the program runs each caused.
    fn column(
        &mut self,
        env: &Env,
        exe: &Path,
        cgroup: Option<&Path>,
        calls: u64,
        c: usize,
        line: &mut String,
    ) -> Res<()> {
        for w in Workload::ALL {
            let n = pass_budget(w, calls);
            env.run_worker(exe, w, Budget::Calls(n), env.loop_file(w), cgroup)?;
            let now = prog_stats(self.pid, &self.before)?;
            self.cells.add(w, c, n, &self.last, &now, line);
            self.last = now;
        }
        Ok(())
    }
}

/// One column of the per-program table: where the loop runs, under which policy.
struct Column {
    title: String,
    in_agent: bool,
    /// The policy to load first (None: keep the one loaded).
    policy: Option<String>,
}

/// A separate pass with kernel.bpf_stats_enabled=1: each program's average run time per loop,
/// outside every agent, and in the agent under the benchmark's 1,000-rule policy and under
/// policies of [`SIZES`] rules next to what the loops do (see [`near_policy_yaml`]). Each pass
/// runs a fixed number of calls in a fresh worker; policies are swapped by replacing the policy
/// file (the daemon reloads), `rounds` times over. Returns the report's lines.
fn stats_pass(env: &mut Env, calls: u64, rounds: usize) -> Res<Vec<String>> {
    let before = prog_ids()?;
    env.enable_stats()?;
    let dir = env
        .file
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let bin_dir = std::fs::canonicalize(BUSYBOX)
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
        .unwrap_or_else(|| "/bin".into());
    let mut columns = vec![
        Column {
            title: "outside".into(),
            in_agent: false,
            policy: None,
        },
        Column {
            title: format!("{RULES} far"),
            in_agent: true,
            policy: Some(policy_yaml(&env.cgroup_rel)),
        },
    ];
    for n in SIZES {
        columns.push(Column {
            title: format!("{n} near"),
            in_agent: true,
            policy: Some(near_policy_yaml(&env.cgroup_rel, n, &dir, &bin_dir)),
        });
    }
    let started = Instant::now();
    let mut daemon = start_daemon(env)?;
    // Measurement settling, not synchronisation: see SETTLE.
    std::thread::sleep(SETTLE);
    let pid = daemon.child.id();
    // The daemon watches the policy directory from its loop, which starts after its first
    // generation: a SIGHUP answered means the watch is up (as bench reload does).
    let mut generation = 2;
    let from = daemon.line_count();
    // Our own child, by its pid.
    ctx(
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGHUP,
        ),
        "SIGHUP",
    )?;
    daemon.wait_line(from, "generation 2 is enforcing", Duration::from_secs(120))?;
    let mut pass = Pass::new(pid, before)?;
    for round in 1..=rounds {
        for (c, col) in columns.iter_mut().enumerate() {
            if let Some(policy) = &col.policy {
                let t = Instant::now();
                let from = daemon.line_count();
                governance_bench::policies::replace_file(&env.policy_dir, "bench.yaml", policy)?;
                generation += 1;
                daemon.wait_line(
                    from,
                    &format!("generation {generation} is enforcing"),
                    Duration::from_secs(300),
                )?;
                eprintln!(
                    "bench: stats round {round}/{rounds}: {} rules loaded in {:.1} s",
                    col.title,
                    t.elapsed().as_secs_f64()
                );
                // Measurement settling, not synchronisation: see SETTLE.
                std::thread::sleep(SETTLE);
            }
            let mut line = format!("bench: stats round {round}/{rounds}, {}:", col.title);
            let cgroup = col.in_agent.then_some(env.cgroup.as_path());
            pass.column(env, &env.self_exe, cgroup, calls, c, &mut line)?;
            eprintln!("{line}  ({:.0} s so far)", started.elapsed().as_secs_f64());
        }
    }
    daemon.stop();
    env.restore_stats()?;
    let mut rows = vec![format!(
        "per program, ns/run (run_time_ns / run_cnt with kernel.bpf_stats_enabled=1), median [min-max] over {rounds} rounds; \
         {} opens and writes, {} connects, {} execs per pass, each in a fresh worker; {:.0} s for the pass",
        pass_budget(Workload::Open, calls),
        pass_budget(Workload::Connect, calls),
        pass_budget(Workload::Exec, calls),
        started.elapsed().as_secs_f64()
    )];
    rows.push(format!(
        "  columns: outside every agent; in the agent with the {RULES}-rule policy above (far from the loops); \
         in the agent with N rules next to the loops (file rules in {dir}, exec rules in {bin_dir}, /32s in 127.0.0.0/8; none match)"
    ));
    let titles: Vec<&str> = columns.iter().map(|c| c.title.as_str()).collect();
    rows.extend(pass.cells.rows(&titles, "the daemon's"));
    Ok(rows)
}

/// The peer's pass (`--tetragon DIR`): Tetragon enforcing the benchmark policy's rules (see
/// `governance_bench::tetragon`), each of its programs' ns/run per loop outside its selectors
/// and inside them (the workers run from the copy of this binary its policies select), as
/// [`stats_pass`] measures ours: the same loops and calls, `rounds` times. Runs after it, with
/// no governance programs loaded. Returns the report's lines.
fn tetragon_pass(env: &mut Env, dir: &Path, calls: u64, rounds: usize) -> Res<Vec<String>> {
    let before = prog_ids()?;
    env.enable_stats()?;
    let mkdir = |d: &Path| {
        ctx(
            std::fs::create_dir_all(d),
            format_args!("creating {}", d.display()),
        )
    };
    // The executable its policies select, standing for the agent: a copy of this one.
    let agent_dir = env.tmp.join("tetragon-agent");
    mkdir(&agent_dir)?;
    let agent_exe = agent_dir.join("governance-bench-kernel");
    ctx(
        std::fs::copy(&env.self_exe, &agent_exe),
        format_args!("copying this binary to {}", agent_exe.display()),
    )?;
    // A file its file_open policy refuses the agent, to check that it enforces.
    let blocked_dir = env.tmp.join("tetragon-blocked");
    mkdir(&blocked_dir)?;
    let blocked = blocked_dir.join("f");
    ctx(
        std::fs::write(&blocked, "x\n"),
        format_args!("writing {}", blocked.display()),
    )?;
    let (mut files, execs, nets) = far_rules();
    files.prefix.push(blocked_dir.display().to_string());
    let policy_dir = env.tmp.join("tetragon-policy");
    mkdir(&policy_dir)?;
    let policies = tetragon::policies(&agent_exe, &files, &execs, &nets)?;
    for (name, yaml) in &policies {
        let path = policy_dir.join(name);
        ctx(
            std::fs::write(&path, yaml),
            format_args!("writing {}", path.display()),
        )?;
    }
    let bpf_dir = format!("governance-bench-tetragon-{}", std::process::id());
    let started = Instant::now();
    let mut peer = Tetragon::start(
        dir,
        &policy_dir,
        policies.len(),
        &bpf_dir,
        &env.tmp.join("tetragon-events.json"),
    )?;
    eprintln!(
        "bench: tetragon enforcing its {} policies after {:.0} s",
        policies.len(),
        started.elapsed().as_secs_f64()
    );
    // Measurement settling, not synchronisation: see SETTLE.
    std::thread::sleep(SETTLE);
    let (outside, inside) = (env.self_exe.clone(), agent_exe);
    let one = Budget::Calls(1);
    if let Err(e) = env.run_worker(&outside, Workload::Open, one, &blocked, None) {
        return Err(format!(
            "outside tetragon's selectors, opening {} failed: {e}",
            blocked.display()
        ));
    }
    eprintln!(
        "bench: the agent's open of {} must fail next (a check that tetragon enforces):",
        blocked.display()
    );
    if env
        .run_worker(&inside, Workload::Open, one, &blocked, None)
        .is_ok()
    {
        return Err(format!(
            "tetragon let the agent open {}, which its policy refuses: the comparison would be void; its last lines:\n{}",
            blocked.display(),
            peer.tail(15)
        ));
    }
    let pid = peer.pid();
    let titles = ["outside", "in its selectors"];
    let mut pass = Pass::new(pid, before)?;
    for round in 1..=rounds {
        for (c, exe) in [&outside, &inside].into_iter().enumerate() {
            let mut line = format!("bench: tetragon round {round}/{rounds}, {}:", titles[c]);
            pass.column(env, exe, None, calls, c, &mut line)?;
            eprintln!("{line}  ({:.0} s so far)", started.elapsed().as_secs_f64());
        }
    }
    peer.stop();
    env.restore_stats()?;
    let mut rows = vec![
        format!(
            "peer: Tetragon ({}), per program, ns/run as above, median [min-max] over {rounds} rounds, the same loops and calls; {:.0} s for the pass",
            dir.display(),
            started.elapsed().as_secs_f64()
        ),
        format!(
            "  its policies: the {RULES} rules above ({} file paths and prefixes on the file_open LSM hook, {} exec on bprm_check_security, with Override; {NET_RULES} /32s on a tcp_connect kprobe, with Sigkill), \
             each selecting one executable (matchBinaries: Tetragon has no cgroup selector outside Kubernetes); checked: it refused that executable's open under a prefix and allowed this one's",
            FILE_RULES + 1,
            EXEC_RULES
        ),
        "  columns: outside its selectors (this binary); in its selectors (the copy its policies select)".to_owned(),
    ];
    rows.extend(pass.cells.rows(&titles, "Tetragon's"));
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// What the kernel hooks cost the processes they watch, as throughput ratios measured side by
/// side in one run: open, exec, connect and write loops with no governance programs loaded, with
/// `governance run` enforcing (the loop outside every agent), and in an agent cgroup under 1,000
/// rules that never match; then (unless --no-stats) each program's run time per call. Every
/// measurement runs in a fresh worker process. Needs root; run by `cargo xtask bench kernel`.
#[derive(Parser)]
#[command(name = "governance-bench-kernel")]
struct Opts {
    /// The governance binary to start as the daemon.
    #[arg(long, env = "GOVERNANCE_BIN", value_name = "PATH")]
    governance: PathBuf,
    /// Milliseconds per timed loop (three times as long for execve; +10% warm-up).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = positive::<u64>)]
    ms: u64,
    /// Rounds of the three configurations (odd rounds in order, even rounds in reverse).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive::<usize>)]
    rounds: usize,
    /// Pass --allow-degraded to `governance run` (where BPF LSM programs do not load).
    #[arg(long)]
    allow_degraded: bool,
    /// A label for the report's first line (none by default).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    label: String,
    /// Skip the per-program statistics pass (kernel.bpf_stats_enabled, bpftool).
    #[arg(long = "no-stats", action = ArgAction::SetFalse)]
    stats: bool,
    /// Opens and writes per pass of the per-program statistics pass (a fifth as many connects,
    /// a fiftieth as many execs).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive::<u64>)]
    stats_calls: u64,
    /// Rounds of the per-program statistics pass.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive::<usize>)]
    stats_rounds: usize,
    /// After the per-program pass, the same pass for a peer: Tetragon enforcing the benchmark
    /// policy's 1,000 rules on its own hooks, run from DIR/tetragon with its BPF objects in
    /// DIR/objs (docs/benchmarks.md#peers says how to build them). Needs BPF LSM and kprobes.
    #[arg(long, value_name = "DIR", value_parser = tetragon_dir, conflicts_with = "stats")]
    tetragon: Option<PathBuf>,
}

fn tetragon_dir(s: &str) -> Res<PathBuf> {
    tetragon::check_dir(Path::new(s))
}

fn ratio_cell(r: &[f64], target: Option<f64>) -> String {
    let (lo, hi) = min_max(r);
    let med = median(r);
    let t = match target {
        Some(t) if med >= t => format!(" (target >= {t:.2}: met)"),
        Some(t) => format!(" (target >= {t:.2}: MISSED)"),
        None => " (no target)".into(),
    };
    format!("{med:.3} [{lo:.3}-{hi:.3}]{t}")
}

fn bench(opts: Opts) -> Res<()> {
    if !governance_bench::is_root() {
        return Err("needs root: it loads eBPF programs and creates a cgroup".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(format!("{BUSYBOX} is missing (install busybox-static)"));
    }
    let mut env = Env::new(&opts)?;
    eprintln!(
        "bench: agent cgroup {}, policy {}, file {}, closed port 127.0.0.1:{}",
        env.cgroup.display(),
        env.policy_dir.display(),
        env.file.display(),
        env.port
    );
    // ops/s per (config, workload), one per round.
    let mut results: BTreeMap<(Config, Workload), Vec<f64>> = BTreeMap::new();
    let mut enforcing = String::new();
    let (mut decisions, mut denials, mut dropped) = (0u64, 0u64, 0u64);
    let mut stop = |d: Option<Daemon>| {
        let Some(mut d) = d else { return };
        enforcing = d.enforcing.clone();
        match d.stop().as_deref().and_then(parse_stopping) {
            Some((a, b, c)) => {
                decisions += a;
                denials += b;
                dropped += c;
            }
            None => eprintln!("bench: the daemon printed no stopping line"),
        }
        // Measurement settling, not synchronisation: see SETTLE.
        std::thread::sleep(SETTLE);
    };
    for round in 1..=opts.rounds {
        // Odd rounds go (1),(2),(3), even rounds (3),(2),(1): drift over a round (the machine
        // is shared) weighs on both ends alike instead of always on (3).
        let mut order = Config::ALL;
        if round % 2 == 0 {
            order.reverse();
        }
        let mut daemon = None;
        for config in order {
            if config == Config::Bare {
                stop(daemon.take());
            } else if daemon.is_none() {
                daemon = Some(start_daemon(&env)?);
                // Measurement settling, not synchronisation: see SETTLE.
                std::thread::sleep(SETTLE);
            }
            let mut line = format!("bench: round {round}/{} {}", opts.rounds, config.tag());
            for w in Workload::ALL {
                let r = env.measure(w, config == Config::Agent)?;
                results.entry((config, w)).or_default().push(r);
                line.push_str(&format!("  {} {}/s", w.name(), ops(r)));
            }
            eprintln!("{line}");
        }
        stop(daemon.take());
    }
    let stats = if opts.stats {
        if Command::new("bpftool")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Path::new(STATS_SYSCTL).exists()
        {
            eprintln!("bench: per-program statistics pass (kernel.bpf_stats_enabled=1)");
            let ours = stats_pass(&mut env, opts.stats_calls, opts.stats_rounds);
            match (ours, &opts.tetragon) {
                (Ok(mut rows), Some(dir)) => {
                    eprintln!(
                        "bench: the peer's per-program pass: tetragon from {}",
                        dir.display()
                    );
                    rows.extend(tetragon_pass(
                        &mut env,
                        dir,
                        opts.stats_calls,
                        opts.stats_rounds,
                    )?);
                    Some(Ok(rows))
                }
                (ours, _) => Some(ours),
            }
        } else {
            Some(Err(
                "bpftool or kernel.bpf_stats_enabled is not available".into()
            ))
        }
    } else {
        None
    };

    let mut r = Vec::new();
    r.push(format!(
        "kernel {}, LSMs {}; {} rounds of (1),(2),(3) (even rounds in reverse), {} ms per loop ({} for execve; +10% warm-up), each in a fresh process",
        read_trim("/proc/sys/kernel/osrelease"),
        read_trim("/sys/kernel/security/lsm"),
        opts.rounds,
        opts.ms,
        opts.ms * EXEC_FACTOR
    ));
    r.push("(1) no governance programs loaded".into());
    r.push("(2) `governance run` enforcing, the loop outside every agent".into());
    r.push(format!(
        "(3) the loop in an agent cgroup, {RULES} rules ({FILE_RULES} file, {EXEC_RULES} exec, {NET_RULES} network; none match), defaults allow"
    ));
    r.push(format!("daemon: {}", enforcing.trim()));
    r.push(format!(
        "{:<8} {:>9} {:>9} {:>9}   {:<44} {}",
        "loop",
        "(1) op/s",
        "(2) op/s",
        "(3) op/s",
        "(2)/(1) median [min-max]",
        "(3)/(1) median [min-max]"
    ));
    for w in Workload::ALL {
        let get = |c| results.get(&(c, w)).cloned().unwrap_or_default();
        let (bare, loaded, agent) = (get(Config::Bare), get(Config::Loaded), get(Config::Agent));
        let pairwise =
            |x: &[f64]| -> Vec<f64> { x.iter().zip(&bare).map(|(a, b)| a / b).collect() };
        let targets = w.targets();
        r.push(format!(
            "{:<8} {:>9} {:>9} {:>9}   {:<44} {}",
            w.name(),
            ops(median(&bare)),
            ops(median(&loaded)),
            ops(median(&agent)),
            ratio_cell(&pairwise(&loaded), targets.map(|t| t.0)),
            ratio_cell(&pairwise(&agent), targets.map(|t| t.1)),
        ));
    }
    r.push(format!(
        "daemon counters over the rounds: {decisions} decisions, {denials} denials, {dropped} events dropped (ring buffer full)"
    ));
    if denials > 0 {
        r.push(
            "WARNING: the kernel denied something the loops did; the policy should allow them"
                .into(),
        );
    }
    match stats {
        Some(Ok(rows)) => {
            r.extend(rows);
        }
        Some(Err(e)) => r.push(format!("per-program statistics: not available ({e})")),
        None => {}
    }
    governance_bench::print_report(REPORT_BEGIN, &opts.label, &r);
    drop(env);
    Ok(())
}

fn main() {
    governance_bench::run_main("governance-bench-kernel", worker, bench);
}
