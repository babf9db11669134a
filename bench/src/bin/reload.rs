//! `cargo xtask bench reload` and `cargo xtask bench rss`: how long a policy change takes to
//! enforce, and how much memory the daemon holds, with thousands of rules and agents.
//!
//! `reload` (one run measures all of it, side by side):
//! 1. *In process*, the daemon's own code path for a generation (what
//!    `governance::daemon::generation::build` does, step by step, with a timer around each):
//!    read and validate the policy directory (`policy::load_dir_hashed`, re-using the
//!    unchanged documents of the previous round's read, as the daemon does, while a thread lists
//!    the built-in protected directories, `kernel::ReadAhead`), find the agent cgroups
//!    (`agents::discover`), compile (`kernel::compile_ahead`, which also resolves file
//!    identities),
//!    install (`Enforcer::flip`: write what differs into the generation's slot, flip),
//!    then the names and the HTTP engine, then (outside both totals) `Enforcer::settle`.
//!    "Enforcing in the kernel" is the moment the kernel's
//!    active generation changes, seen by a second handle on the pinned maps polling it.
//! 2. *End to end*, a `governance run` we start: the policy file replaced (renamed into the
//!    directory) → the daemon's inotify → "…; reloading" → "enforcing … as generation N (…)"
//!    (printed right after the flip: the kernel enforces it) → "generation N is enforcing"
//!    (the HTTP engine too) on its stderr (each line stamped as it arrives); and the same
//!    after SIGHUP, without the daemon's settle window for a burst of file changes.
//!
//! Both for 10,000 rules of one agent and for 1,000 agents with 10 rules each (one policy
//! per agent); the mix is in `governance_bench::policies`.
//!
//! `rss`: a `governance run` (with its HTTP proxy) governing 1,000 agent cgroups with 10 rules
//! each: VmRSS and VmHWM after the first generation and after 10 reloads, against the same
//! daemon governing one agent with 10 rules, and where its resident set is (/proc/PID/smaps:
//! the executable's code, the BPF maps mapped into it, the heap); then the daemon's CPU while
//! idle, over 10 s.
//!
//! Needs root (eBPF, cgroups). On the host kernel the LSM programs do not load; the maps, the
//! compiler and the install path are the same, so the reload is measured as it is.
//! Usage:
//!   governance-bench-reload reload --governance PATH [--rounds N] [--e2e-rounds N]
//!                                  [--no-e2e] [--only 0|1] [--label TEXT]
//!   governance-bench-reload rss --governance PATH [--runs N] [--reloads N] [--label TEXT]

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::{ArgAction, Parser, ValueEnum, builder::RangedU64ValueParser};
use governance::{
    agents,
    daemon::generation::{names, selected},
    engine::Engine,
    kernel::{self, Enforcer, Protect},
    policy,
};
use governance_bench::{
    Daemon, Res, cgroup2_mount, ctx, median, min_max,
    policies::{AgentCgroups, Reals, policy_file, replace_file},
    positive,
};

/// The daemon's allocator (governance-userspace's main.rs): the compiler allocates a lot, and
/// the in-process figures should be the daemon's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RELOAD_REPORT: &str = "==> policy reload";
const RSS_REPORT: &str = "==> daemon memory";
/// The reload target: a policy change enforcing within this.
const TARGET_MS: f64 = 20.0;
/// The memory target for 1,000 agents and 10,000 rules.
const TARGET_RSS_MIB: f64 = 64.0;
const POLICY_FILE: &str = "bench.yaml";

struct Case {
    title: &'static str,
    agents: usize,
    rules: usize,
}

const CASES: [Case; 2] = [
    Case {
        title: "10,000 rules, 1 agent",
        agents: 1,
        rules: 10_000,
    },
    Case {
        title: "1,000 agents x 10 rules",
        agents: 1000,
        rules: 10,
    },
];

/// How long a policy change takes to enforce, and how much memory the daemon holds, with
/// thousands of rules and agents (10,000 rules of one agent; 1,000 agents with 10 rules each).
/// `reload`: the daemon's generation code path timed step by step in process, and end to end
/// through a `governance run` (policy file replaced, SIGHUP). `rss`: the daemon's resident
/// memory after the first generation and after reloads, and its idle CPU. Needs root; run by
/// `cargo xtask bench reload` and `cargo xtask bench rss`.
#[derive(Parser)]
#[command(name = "governance-bench-reload")]
struct Opts {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// The governance binary to start as the daemon (`reload --no-e2e` does without).
    #[arg(
        long,
        env = "GOVERNANCE_BIN",
        value_name = "PATH",
        required_if_eq("mode", "rss"),
        required_unless_present = "e2e"
    )]
    governance: Option<PathBuf>,
    /// `reload`: rounds of the in-process generation, per case.
    #[arg(long, value_name = "N", default_value_t = 15, value_parser = positive::<usize>)]
    rounds: usize,
    /// `reload`: end-to-end rounds (a file replaced, then a SIGHUP), per case.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = positive::<usize>)]
    e2e_rounds: usize,
    /// `reload`: skip the end-to-end measurement.
    #[arg(long = "no-e2e", action = ArgAction::SetFalse)]
    e2e: bool,
    /// `rss`: daemons started per case.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive::<usize>)]
    runs: usize,
    /// `rss`: reloads before the second reading.
    #[arg(long, value_name = "N", default_value_t = 10)]
    reloads: u32,
    /// `reload`: only this case, for profiling: 0 (10,000 rules, 1 agent) or 1 (1,000 agents x
    /// 10 rules); both by default.
    #[arg(
        long,
        value_name = "CASE",
        value_parser = RangedU64ValueParser::<usize>::from(0..CASES.len() as u64)
    )]
    only: Option<usize>,
    /// A label for the report's first line (none by default).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    label: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// The time from a policy change to enforcing.
    Reload,
    /// The daemon's memory and idle CPU.
    Rss,
}

fn main() {
    let o = Opts::parse();
    let result = if !governance_bench::is_root() {
        Err("needs root: it loads eBPF programs and creates cgroups".into())
    } else {
        Env::new().and_then(|env| match o.mode {
            Mode::Reload => reload(&o, &env),
            Mode::Rss => rss(&o, &env),
        })
    };
    if let Err(e) = result {
        eprintln!("governance-bench-reload: error: {e}");
        std::process::exit(1);
    }
}

impl Opts {
    /// The governance binary (clap requires it wherever it is used).
    fn governance(&self) -> &Path {
        self.governance.as_deref().unwrap_or(Path::new(""))
    }
}

/// Our temporary directory, pins and agent cgroups; all removed when dropped.
struct Env {
    tmp: PathBuf,
    pins: PathBuf,
    root: PathBuf,
    cgroups: AgentCgroups,
    reals: Reals,
}

impl Env {
    fn new() -> Res<Env> {
        let pid = std::process::id();
        let root = cgroup2_mount()?;
        let tmp = std::env::temp_dir().join(format!("governance-bench-reload-{pid}"));
        ctx(
            std::fs::create_dir_all(&tmp),
            format_args!("creating {}", tmp.display()),
        )?;
        eprintln!("bench: creating 1,000 agent cgroups");
        let cgroups = AgentCgroups::create(&root, &format!("governance-bench-reload-{pid}"), 1000)?;
        Ok(Env {
            tmp,
            pins: PathBuf::from(format!("/sys/fs/bpf/governance-bench-reload-{pid}")),
            root,
            cgroups,
            reals: Reals::find(),
        })
    }

    /// A policy directory holding the case's policy file.
    fn policy_dir(&self, name: &str, case: &Case, note: &str, change: u16) -> Res<PathBuf> {
        let dir = self.tmp.join(name);
        ctx(
            std::fs::create_dir_all(&dir),
            format_args!("creating {}", dir.display()),
        )?;
        let text = self.policy_text(case, note, change);
        ctx(
            std::fs::write(dir.join(POLICY_FILE), text),
            "writing the policy",
        )?;
        Ok(dir)
    }

    /// The case's policy file; `change` sets one network rule's port.
    fn policy_text(&self, case: &Case, note: &str, change: u16) -> String {
        policy_file(
            &self.cgroups,
            case.agents,
            case.rules,
            &self.reals,
            note,
            change,
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = kernel::unload(&self.pins);
        let _ = std::fs::remove_dir(&self.pins);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// "12.3 [10.1-15.0]" (medians with ranges, in the unit given).
fn cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    let med = median(v);
    let digits = if med >= 100.0 { 0 } else { 1 };
    format!("{med:.digits$} [{lo:.digits$}-{hi:.digits$}]")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One in-process generation's phases, in ms.
#[derive(Default)]
struct Phases {
    load: f64,
    discover: f64,
    compile: f64,
    /// From the start of `install` to the kernel's flip.
    to_flip: f64,
    /// The rest of `Enforcer::flip`, until it returns.
    after_flip: f64,
    /// `Enforcer::settle`, after the engine: the grace period, then the retired slot cleaned up.
    settle: f64,
    /// Names and the HTTP engine.
    engine: f64,
    /// From the start to the kernel's flip: the kernel enforces.
    kernel_enforcing: f64,
    /// From the start until the HTTP engine is in place too.
    all: f64,
}

/// A thread with its own handle on the pinned maps that reports when the kernel's active
/// generation becomes the one it is told.
struct FlipWatch {
    tell: mpsc::Sender<u32>,
    seen: mpsc::Receiver<Res<Instant>>,
}

impl FlipWatch {
    fn start(pins: &Path) -> Res<FlipWatch> {
        let handle = ctx(Enforcer::adopt(pins), "opening the pinned maps")?;
        let (tell, told) = mpsc::channel::<u32>();
        let (report, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for want in told {
                let deadline = Instant::now() + Duration::from_secs(30);
                let r = loop {
                    match handle.generation() {
                        Ok(g) if g == want => break Ok(Instant::now()),
                        Ok(_) if Instant::now() > deadline => {
                            break Err(format!("generation {want} did not become active"));
                        }
                        Ok(_) => {}
                        Err(e) => break Err(format!("reading the active generation: {e}")),
                    }
                    // Poll interval (each poll is one map lookup): the resolution of the flip
                    // time, far below the figures measured.
                    std::thread::sleep(Duration::from_micros(20));
                };
                if report.send(r).is_err() {
                    return;
                }
            }
        });
        Ok(FlipWatch { tell, seen })
    }
}

/// The daemon's generation build, phase by phase, `rounds` times.
fn in_process(
    env: &Env,
    (i, case): (usize, &Case),
    enforcer: &mut Enforcer,
    watch: &FlipWatch,
    generation: &mut u32,
    rounds: usize,
    summary: &mut Vec<String>,
) -> Res<Vec<Phases>> {
    let dir = &env.policy_dir(&format!("in-process-{i}"), case, "in process", 0)?;
    let protect = Protect {
        cgroup_root: env.root.clone(),
        no_write: vec![dir.to_owned(), env.pins.clone()],
        no_access: vec![env.tmp.join("audit"), env.tmp.join("ca")],
        // What the daemon reads at each generation, read here too.
        system_links: governance::kernel::system_link_targets(std::path::Path::new("/etc")),
    };
    let mut out = Vec::new();
    let mut writes = Vec::new();
    // As the daemon keeps it: the documents of the previous read.
    let mut parsed = policy::Parsed::default();
    // As the daemon holds it while the next generation is built: the enforcing one's engine
    // and policies (freed after the new one replaces it, off the measured path).
    let mut enforcing = None;
    for round in 0..rounds {
        *generation += 1;
        let g = *generation;
        // The change: one rule of the file differs from the previous round's (one network
        // rule's port), as when one rule of a policy is edited.
        ctx(
            std::fs::write(
                dir.join(POLICY_FILE),
                env.policy_text(case, "in process", round as u16 + 1),
            ),
            "writing the policy",
        )?;
        let t0 = Instant::now();
        let ahead = kernel::ReadAhead::start(protect.clone());
        let (set, _) = ctx(
            policy::load_dir_hashed(dir, &mut parsed),
            "loading the policy",
        )?;
        let t1 = Instant::now();
        let found = ctx(
            agents::discover(&env.root, &set, false, None),
            "finding agents",
        )?;
        let t2 = Instant::now();
        let compiled = kernel::compile_ahead(&set, &found, g, ahead);
        let t3 = Instant::now();
        if !compiled.errors.is_empty() {
            return Err(format!("the policy does not fit: {:?}", compiled.errors));
        }
        // Counted before the install, which takes the tables.
        let count = |f: fn(&kernel::Class) -> usize| {
            (
                compiled.classes.iter().map(f).sum::<usize>(),
                compiled.builtins.iter().map(f).sum::<usize>(),
            )
        };
        let (paths, idents) = (count(|c| c.paths.len()), count(|c| c.idents.len()));
        let tables = format!(
            "{} classes; entries: {} path (+{} in the shared built-in classes), {} exec, {} network, {} identity (+{} shared); {} throttles",
            compiled.classes.len(),
            paths.0,
            paths.1,
            count(|c| c.exec.len()).0,
            count(|c| c.net.len()).0,
            idents.0,
            idents.1,
            compiled.throttles.len(),
        );
        ctx(watch.tell.send(g), "the flip watcher")?;
        // As the daemon does: the flip, then (after the engine) the cleanup after the retired
        // generation, which waits for an RCU grace period.
        let skipped = ctx(enforcer.flip(compiled), "installing")?;
        let t4 = Instant::now();
        writes.push(enforcer.last_install());
        let flip = ctx(watch.seen.recv(), "the flip watcher")??;
        let _names = names(&set, &found, &selected(&set, &found));
        let rules = set.rule_count();
        let engine = Engine::new(set, g);
        let t5 = Instant::now();
        drop(enforcing.replace(engine));
        ctx(
            enforcer.settle(),
            "cleaning up after the retired generation",
        )?;
        let t6 = Instant::now();
        if round == 0 {
            summary.push(format!(
                "  {rules} rules, {} agents → {tables}; {} exec paths skipped (missing)",
                found.len(),
                skipped.len(),
            ));
        }
        out.push(Phases {
            load: ms(t1 - t0),
            discover: ms(t2 - t1),
            compile: ms(t3 - t2),
            to_flip: ms(flip.saturating_duration_since(t3)),
            after_flip: ms(t4.saturating_duration_since(flip)),
            engine: ms(t5 - t4),
            settle: ms(t6 - t5),
            kernel_enforcing: ms(flip.saturating_duration_since(t0)),
            all: ms(t5 - t0),
        });
    }
    let shown: Vec<String> = writes
        .iter()
        .map(|w| format!("{}+{}", w.written, w.deleted))
        .collect();
    summary.push(format!(
        "  entries written+deleted by each round's install (the first writes over an empty or another case's slot): {}",
        shown.join(" ")
    ));
    Ok(out)
}

/// The end-to-end figures of one case, in ms: file replaced → all enforcing, file replaced →
/// "reloading", "reloading" → enforcing in the kernel and all enforcing, SIGHUP → the same.
#[derive(Default)]
struct EndToEnd {
    file_total: Vec<f64>,
    settle: Vec<f64>,
    build_kernel: Vec<f64>,
    build: Vec<f64>,
    sighup_kernel: Vec<f64>,
    sighup: Vec<f64>,
}

/// When the daemon said generation `g` enforces in the kernel (the line it prints right after
/// the flip) and then in the HTTP engine too, looking from its line `from` on.
fn enforcing(daemon: &Daemon, from: usize, g: u32) -> Res<(Instant, Instant)> {
    let timeout = Duration::from_secs(60);
    let (at, kernel) = daemon.wait_line(from, &format!(" as generation {g} ("), timeout)?;
    let (_, all) = daemon.wait_line(at, &format!("generation {g} is enforcing"), timeout)?;
    Ok((kernel, all))
}

/// A free loopback port for the daemon's proxy.
fn free_port() -> Res<u16> {
    let l = ctx(TcpListener::bind("127.0.0.1:0"), "finding a free port")?;
    Ok(ctx(l.local_addr(), "finding a free port")?.port())
}

/// Start `governance run` on `dir` (with its proxy, as deployed), enforcing what the host
/// kernel can.
/// Its pin directory is removed when dropped.
struct Started {
    daemon: Daemon,
    pins: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_dir(&self.pins);
    }
}

/// `governance run` from the executable `governance`, on the policy directory `dir`.
fn start_daemon(governance: &Path, env: &Env, dir: &Path, tag: &str) -> Res<Started> {
    let state = env.tmp.join(format!("state-{tag}"));
    let pins = PathBuf::from(format!("{}-{tag}", env.pins.display()));
    let mut args: Vec<OsString> = vec!["--policy".into(), dir.into()];
    for (flag, name) in [
        ("--socket", "governance.sock"),
        ("--audit-dir", "audit"),
        ("--ca-dir", "ca"),
        ("--policy-in-force", "policy-in-force"),
    ] {
        args.push(flag.into());
        args.push(state.join(name).into());
    }
    args.push("--proxy-listen".into());
    args.push(format!("127.0.0.1:{}", free_port()?).into());
    for flag in [
        "--quiet",
        "--detach-on-exit",
        "--no-create-cgroups",
        "--allow-degraded",
    ] {
        args.push(flag.into());
    }
    let daemon = Daemon::start(governance, &pins, &args)?;
    Ok(Started { daemon, pins })
}

fn end_to_end(o: &Opts, env: &Env, case: &Case, tag: &str) -> Res<EndToEnd> {
    let dir = env.policy_dir(&format!("policy-{tag}"), case, "round 0", 0)?;
    let started = start_daemon(o.governance(), env, &dir, tag)?;
    let daemon = &started.daemon;
    let text = |r: usize| env.policy_text(case, &format!("round {r}"), r as u16);
    // The daemon watches the directory from its loop, which starts after the first generation
    // (and after its control API, which Daemon::start waits for): a SIGHUP answered means the
    // loop, and so the watch, is running.
    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    let from = daemon.line_count();
    // Our own child, by its pid.
    ctx(
        nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP),
        "SIGHUP",
    )?;
    daemon.wait_line(from, "generation 2 is enforcing", Duration::from_secs(120))?;
    let mut e = EndToEnd::default();
    let mut g = 2;
    let timeout = Duration::from_secs(60);
    for r in 1..=o.e2e_rounds {
        let next = text(r);
        // The file replaced: through inotify and the daemon's settle window.
        g += 1;
        let from = daemon.line_count();
        let t0 = Instant::now();
        replace_file(&dir, POLICY_FILE, &next)?;
        let (_, t1) = daemon.wait_line(from, "the policy directory changed; reloading", timeout)?;
        let (tk, t2) = enforcing(daemon, from, g)?;
        e.file_total.push(ms(t2 - t0));
        e.settle.push(ms(t1.saturating_duration_since(t0)));
        e.build_kernel.push(ms(tk.saturating_duration_since(t1)));
        e.build.push(ms(t2.saturating_duration_since(t1)));
        // SIGHUP: the same reload, at once.
        g += 1;
        let from = daemon.line_count();
        let t0 = Instant::now();
        // Our own child, by its pid.
        ctx(
            nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP),
            "SIGHUP",
        )?;
        let (tk, t2) = enforcing(daemon, from, g)?;
        e.sighup_kernel.push(ms(tk - t0));
        e.sighup.push(ms(t2 - t0));
        eprintln!(
            "bench: {} e2e round {r}/{}: file → all enforcing {:.1} ms (settle {:.1}, reload → kernel {:.1}, → all {:.1}); SIGHUP → kernel enforcing {:.1} ms, → all {:.1}",
            case.title,
            o.e2e_rounds,
            e.file_total[r - 1],
            e.settle[r - 1],
            e.build_kernel[r - 1],
            e.build[r - 1],
            e.sighup_kernel[r - 1],
            e.sighup[r - 1]
        );
    }
    drop(started);
    Ok(e)
}

fn reload(o: &Opts, env: &Env) -> Res<()> {
    let mut lines = vec![format!(
        "target: a policy change enforcing in the kernel within {TARGET_MS} ms for 10,000 rules (atomic: one flip)"
    )];
    let cases: Vec<&Case> = CASES
        .iter()
        .enumerate()
        .filter(|(i, _)| o.only.is_none_or(|only| only == *i))
        .map(|(_, c)| c)
        .collect();
    let mut summary = Vec::new();
    let mut results = Vec::new();
    {
        eprintln!("bench: loading and attaching the programs (in process)");
        let mut enforcer = ctx(Enforcer::start(&env.pins, &env.root, true), "loading")?;
        let watch = FlipWatch::start(&env.pins)?;
        let mut generation = 0;
        for (i, case) in cases.iter().enumerate() {
            eprintln!("bench: in process, {}: {} rounds", case.title, o.rounds);
            summary.push(format!("{}:", case.title));
            let phases = in_process(
                env,
                (i, case),
                &mut enforcer,
                &watch,
                &mut generation,
                o.rounds,
                &mut summary,
            )?;
            results.push(phases);
        }
    }
    let _ = kernel::unload(&env.pins);
    lines.push(format!(
        "in process (the daemon's build of a generation, phase by phase), ms, median [min-max] over {} rounds:",
        o.rounds
    ));
    // Which step is what (docs/benchmarks.md, "Policy reload", says the same).
    for step in [
        "  load+validate: policy::load_dir_hashed (read every policy file, parse and validate the documents that changed)",
        "  find agents: agents::discover (the cgroup tree)",
        "  compile: kernel::compile (the generation's tables, file identities resolved)",
        "  install→flip: Enforcer::flip (node tables, the entries of the new slot that differ from what it held written, runtime sockets refused, the flip)",
        "  after flip: the rest of Enforcer::flip, until it returns",
        "  names+HTTP engine: built after the kernel enforces (event names, the proxy's engine)",
        "  settle: Enforcer::settle, after the engine (an RCU grace period for decisions that read the retired generation, then its sequence lists cleared and stale buckets deleted)",
    ] {
        lines.push(step.into());
    }
    lines.push(
        "| case | load+validate | find agents | compile | install→flip | after flip | names+HTTP engine | settle | change→kernel enforcing | change→all enforcing |".into(),
    );
    lines.push("|---|---|---|---|---|---|---|---|---|---|".into());
    for (case, p) in cases.iter().zip(&results) {
        let col = |f: fn(&Phases) -> f64| cell(&p.iter().map(f).collect::<Vec<_>>());
        let kernel = p.iter().map(|x| x.kernel_enforcing).collect::<Vec<_>>();
        let verdict = if median(&kernel) <= TARGET_MS {
            "met"
        } else {
            "MISSED"
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({verdict}) | {} |",
            case.title,
            col(|x| x.load),
            col(|x| x.discover),
            col(|x| x.compile),
            col(|x| x.to_flip),
            col(|x| x.after_flip),
            col(|x| x.engine),
            col(|x| x.settle),
            cell(&kernel),
            col(|x| x.all),
        ));
    }
    lines.extend(summary);
    if o.e2e {
        let mut e2e = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            eprintln!("bench: end to end, {}: {} rounds", case.title, o.e2e_rounds);
            e2e.push(end_to_end(o, env, case, &format!("e2e-{i}"))?);
        }
        lines.push(format!(
            "end to end (`governance run`, its stderr stamped as it arrives), ms, median [min-max] over {} rounds:",
            o.e2e_rounds
        ));
        lines.push("| case | file replaced→all enforcing | of which settle window + inotify | reloading→kernel enforcing | reloading→all enforcing | SIGHUP→kernel enforcing | SIGHUP→all enforcing |".into());
        lines.push("|---|---|---|---|---|---|---|".into());
        for (case, e) in cases.iter().zip(&e2e) {
            lines.push(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                case.title,
                cell(&e.file_total),
                cell(&e.settle),
                cell(&e.build_kernel),
                cell(&e.build),
                cell(&e.sighup_kernel),
                cell(&e.sighup)
            ));
        }
    }
    println!();
    governance_bench::print_report(RELOAD_REPORT, &o.label, &lines);
    Ok(())
}

/// VmRSS, VmHWM and RssAnon (its heap and stacks) of `pid`, in MiB.
fn memory(pid: u32) -> Res<(f64, f64, f64)> {
    let status = ctx(
        std::fs::read_to_string(format!("/proc/{pid}/status")),
        "reading the daemon's status",
    )?;
    let field = |name: &str| -> Res<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or(format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = ctx(
            line.split_whitespace().nth(1).unwrap_or_default().parse(),
            name,
        )?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?))
}

/// Where `pid`'s resident set is, from /proc/PID/smaps, in MiB: the executable's code (its
/// mapping with `x`), the rest of the executable (read-only data, relocated data), the BPF maps
/// mapped into it (the event ring: its data pages are mapped twice), other files (libc), and
/// anonymous memory (heap and stacks). A line for the report.
fn resident_by_mapping(pid: u32) -> Res<String> {
    let exe = ctx(
        std::fs::read_link(format!("/proc/{pid}/exe")),
        "reading the daemon's executable",
    )?;
    let exe = exe.to_string_lossy().into_owned();
    let smaps = ctx(
        std::fs::read_to_string(format!("/proc/{pid}/smaps")),
        "reading the daemon's smaps",
    )?;
    // [code, other executable, bpf maps, other files, anonymous], in KiB.
    let mut kib = [0u64; 5];
    let mut class = 4;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first == "Rss:" {
            kib[class] += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: range, perms, offset, dev, inode, [path].
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            class = if path == exe && perms.contains('x') {
                0
            } else if path == exe {
                1
            } else if path.starts_with("anon_inode:bpf") {
                2
            } else if path.starts_with('/') {
                3
            } else {
                4
            };
        }
    }
    let mib = |k: u64| k as f64 / 1024.0;
    Ok(format!(
        "executable code {:.1}, executable data {:.1}, BPF maps {:.1}, other files {:.1}, anonymous {:.1} MiB",
        mib(kib[0]),
        mib(kib[1]),
        mib(kib[2]),
        mib(kib[3]),
        mib(kib[4])
    ))
}

/// CPU time (user and system, all threads) `pid` has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Res<Duration> {
    let stat = ctx(
        std::fs::read_to_string(format!("/proc/{pid}/stat")),
        "reading the daemon's stat",
    )?;
    // After the name (in parentheses, which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat
        .rfind(')')
        .map_or("", |i| &stat[i + 1..])
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Res<u64> {
        ctx(
            fields
                .get(i - 3)
                .copied()
                .unwrap_or_default()
                .parse::<u64>(),
            format!("field {i} of /proc/{pid}/stat"),
        )
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(14)? + ticks(15)?) as f64 / hz,
    ))
}

/// How long the daemon's idle CPU is measured for, after the reloads.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn rss(o: &Opts, env: &Env) -> Res<()> {
    let reloads = o.reloads;
    let cases = [
        Case {
            title: "1 agent x 10 rules (baseline)",
            agents: 1,
            rules: 10,
        },
        Case {
            title: "1,000 agents x 10 rules",
            agents: 1000,
            rules: 10,
        },
    ];
    // The daemons run from a copy written just now, as a package install leaves its executable
    // (in the page cache from its writes). The same bytes touch 2-3 MiB more code pages that
    // way than as the linker wrote them or read back from the disk after a reboot (measured:
    // the kernel maps more of the page cache around each fault, probably its larger folios
    // for a file written in large writes). This measures the larger.
    let installed = env.tmp.join("governance");
    ctx(
        std::fs::copy(o.governance(), &installed),
        "copying the governance executable",
    )?;
    // Per case: (rss, hwm, anon) after the first generation, and after the reloads.
    type Mem = (f64, f64, f64);
    let mut first: Vec<Vec<Mem>> = vec![Vec::new(); cases.len()];
    let mut last: Vec<Vec<Mem>> = vec![Vec::new(); cases.len()];
    // Per case: the daemon's CPU while idle after the reloads, in % of one CPU.
    let mut idle: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    // Where the last daemon of each case had its resident set after the reloads.
    let mut resident: Vec<String> = vec![String::new(); cases.len()];
    for run in 1..=o.runs {
        for (i, case) in cases.iter().enumerate() {
            let tag = format!("rss-{i}-{run}");
            let dir = env.policy_dir(&format!("policy-{tag}"), case, "rss", 0)?;
            let started = start_daemon(&installed, env, &dir, &tag)?;
            let daemon = &started.daemon;
            let a = memory(daemon.pid())?;
            let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
            for g in 2..=reloads + 1 {
                let from = daemon.line_count();
                // Our own child, by its pid.
                ctx(
                    nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP),
                    "SIGHUP",
                )?;
                daemon.wait_line(
                    from,
                    &format!("generation {g} is enforcing"),
                    Duration::from_secs(60),
                )?;
            }
            let b = memory(daemon.pid())?;
            resident[i] = resident_by_mapping(daemon.pid())?;
            eprintln!(
                "bench: run {run}/{}, {}: first generation VmRSS {:.1} MiB (VmHWM {:.1}, RssAnon {:.1}); after {reloads} reloads {:.1} MiB (VmHWM {:.1}, RssAnon {:.1}): {}",
                o.runs, case.title, a.0, a.1, a.2, b.0, b.1, b.2, resident[i]
            );
            // Idle: no agent acts, no policy changes; what the daemon's own once-a-second
            // work costs (agent processes' network namespaces, counters, socket files). A
            // measurement over a fixed window, not a wait for something.
            let (t0, c0) = (Instant::now(), cpu_time(daemon.pid())?);
            std::thread::sleep(IDLE_WINDOW);
            let used = cpu_time(daemon.pid())?.saturating_sub(c0);
            let cpu = 100.0 * used.as_secs_f64() / t0.elapsed().as_secs_f64();
            eprintln!(
                "bench: run {run}/{}, {}: CPU while idle {cpu:.2} % of one CPU",
                o.runs, case.title
            );
            idle[i].push(cpu);
            first[i].push(a);
            last[i].push(b);
            drop(started);
        }
    }
    let mut lines = vec![
        format!(
            "`governance run` with its HTTP proxy; MiB, median [min-max] over {} daemons; target: VmHWM <= {TARGET_RSS_MIB} MiB with 1,000 agents and 10,000 rules",
            o.runs
        ),
        format!(
            "| agents x rules | VmRSS, first generation | VmHWM, first generation | VmRSS after {reloads} reloads | VmHWM after {reloads} reloads | RssAnon after {reloads} reloads |"
        ),
        "|---|---|---|---|---|---|".into(),
    ];
    for (i, case) in cases.iter().enumerate() {
        let col = |v: &[Mem], f: fn(&Mem) -> f64| cell(&v.iter().map(f).collect::<Vec<_>>());
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            case.title,
            col(&first[i], |x| x.0),
            col(&first[i], |x| x.1),
            col(&last[i], |x| x.0),
            col(&last[i], |x| x.1),
            col(&last[i], |x| x.2),
        ));
    }
    for (case, cpu) in cases.iter().zip(&idle) {
        lines.push(format!(
            "{}, CPU while idle after the reloads ({} s): {} % of one CPU",
            case.title,
            IDLE_WINDOW.as_secs(),
            cell(cpu)
        ));
    }
    for (case, where_) in cases.iter().zip(&resident) {
        lines.push(format!(
            "{}, the last daemon after {reloads} reloads: {where_}",
            case.title
        ));
    }
    let hwm = median(&last[1].iter().map(|x| x.1).collect::<Vec<_>>());
    lines.push(format!(
        "1,000 agents x 10 rules, VmHWM after {reloads} reloads {hwm:.1} MiB: target {}",
        if hwm <= TARGET_RSS_MIB {
            "met"
        } else {
            "MISSED"
        }
    ));
    println!();
    governance_bench::print_report(RSS_REPORT, &o.label, &lines);
    Ok(())
}
