//! Project automation: `cargo xtask setup | build | vm | test | demo | image`.

mod bench_events;
mod bench_kernel;
mod deb;
mod docs_links;
mod image;
mod setup;
mod vm;

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo governance. Every command installs what it needs first (see `setup`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and VM pieces: nightly rust-src, LLVM 22, bpf-linker 0.13, qemu,
    /// busybox, cpio, zstd, bpftool, Debian's 6.1 kernel, and the developer tools an agent runs in
    /// the VM (Debian's Python 3.11 with pip, git); and the HTTP compatibility suite's
    /// packages, pinned in tests/compat (a venv and node_modules under
    /// ~/.cache/governance/compat). Idempotent; fast when all is there.
    ///
    /// Never removes a package: each apt install is simulated first. When apt's qemu would
    /// replace one (a newer qemu-utils, say), qemu is extracted into ~/.cache/governance/qemu
    /// and run from there instead (GOVERNANCE_SETUP_QEMU=extract asks for that anyway); any
    /// other removal stops the setup, unless GOVERNANCE_SETUP_ALLOW_REMOVE=1.
    Setup,
    /// Build the daemon (with its eBPF object) and the kernel test executables.
    Build,
    /// Boot the VM (kernel with BPF LSM) and run CMD in it as root; exits with CMD's status.
    ///
    /// The image holds busybox, /governance/bin/governance, the kernel test executables in
    /// /governance/tests, the policies in /governance/policies and the eBPF object. cgroup2,
    /// bpffs, securityfs and tracefs are mounted and loopback is up.
    Vm {
        /// Kernel image to boot instead of the Debian 6.1 one.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Give up (and stop the VM) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Command to run in the guest.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Run every test: formatting, clippy, unit tests, host kernel tests (cgroup socket hooks,
    /// needs root), the HTTP compatibility suite (real clients and frameworks through the
    /// redirect, host kernel) and the BPF LSM tests inside the VM. Prints how many ran in each
    /// place.
    Test {
        /// Kernel image for the VM tests instead of the Debian 6.1 one.
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// Run a benchmark in release mode; ratios are measured side by side in one run.
    ///
    /// `policy`: the HTTP decision on 1,000 rules, against regorus (Rego) on the same policy.
    ///
    /// `http`: the HTTP policy proxy's added latency (open loop, p50/p99) and saturation
    /// throughput, against the same upstream directly.
    ///
    /// `kernel` (root): the hooks' overhead on openat, execve and connect loops as throughput
    /// ratios to no governance, (2) loaded with the loop outside every agent and (3) inside an
    /// agent with 1,000 rules; on the host (degraded: no LSM hooks) and in the VM (every hook).
    ///
    /// `events` (root): decision events per second drained from the kernel's ring buffer, and
    /// through the daemon's whole pipeline (audit log, metrics, a live subscriber) under a flood
    /// of denied actions from an agent, with where loss begins and that it is counted; on the
    /// host (denied connects) and in the VM (denied opens).
    ///
    /// `reload` (root, host): a policy change to enforcing with 10,000 rules and with 1,000
    /// agents, phase by phase in process and end to end through `governance run`.
    ///
    /// `rss` (root, host): the daemon's memory with 1,000 agent cgroups and 10,000 rules.
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["policy", "kernel", "http", "events", "reload", "rss"])]
        which: String,
    },
    /// Boot the VM, start `governance run` with the shipped policies, and let a scripted
    /// agent try allowed and blocked actions; the decisions appear as they happen.
    Demo {
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// Build the Debian package (target/debian/governance_*.deb) with cargo-deb: the binary,
    /// the systemd unit, /etc/governance (config example, a policy directory that governs
    /// nothing), completions, docs. See docs/operations.md.
    Deb {
        /// Then test it (root): install it with dpkg into a throwaway overlay of this system,
        /// check the unit with systemd-analyze, start its ExecStart as the unit would (its
        /// capability bounding set, no new privileges, NOTIFY_SOCKET) and wait for READY=1 and
        /// `governance status`.
        #[arg(long)]
        test: bool,
    },
    /// (Internal) the inside of `deb --test`, in its own mount and network namespaces.
    #[command(hide = true)]
    DebTestInside { deb: PathBuf },
    /// Build the daemon's container image (localhost/governance:TAG) from a local release
    /// build with buildah or podman, `FROM scratch` (deploy/kubernetes/Containerfile); with
    /// --archive, also save it as an OCI archive to load into a cluster's runtime.
    Image {
        #[arg(long, default_value = "latest")]
        tag: String,
        /// Also write the image here as an OCI archive (`ctr -n k8s.io images import FILE`,
        /// `kind load image-archive FILE`).
        #[arg(long)]
        archive: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    std::env::set_current_dir(workspace_root()).context("entering the workspace")?;
    match cli.command {
        Cmd::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Cmd::Build => {
            setup::ensure()?;
            let b = build()?;
            progress(&format!("built {}", b.governance.display()));
            for t in &b.vm_tests {
                progress(&format!("built {}", t.display()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Vm {
            kernel,
            timeout,
            cmd,
        } => {
            setup::ensure()?;
            let b = build()?;
            let script = format!(
                "{}\n",
                cmd.iter()
                    .map(|w| vm::shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let out = boot(kernel, &b, script, Duration::from_secs(timeout))?;
            Ok(ExitCode::from(out.status.clamp(0, 255) as u8))
        }
        Cmd::Test { kernel } => test(kernel),
        Cmd::Demo { kernel } => demo(kernel),
        Cmd::Deb { test } => {
            setup::ensure()?;
            let deb = deb::build()?;
            if test {
                deb::test(&deb)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DebTestInside { deb } => deb::inside(&deb).map(|()| ExitCode::SUCCESS),
        Cmd::Image { tag, archive } => {
            image::image(&tag, archive.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Bench { which } if which == "kernel" => {
            bench_kernel::run(&bench_kernel::KERNEL)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which } if which == "events" => {
            bench_kernel::run(&bench_events::EVENTS)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which } if which == "reload" || which == "rss" => {
            bench_kernel::run_host(&bench_kernel::reload(&which))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which } if which == "http" => {
            progress("building the HTTP proxy benchmark (release)");
            // Not --quiet: a first release build takes minutes, and cargo's "Compiling" lines
            // are what shows it is moving.
            run(Command::new("cargo").args([
                "run",
                "--release",
                "-p",
                "governance-bench",
                "--bin",
                "governance-bench-http",
            ]))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which } => {
            progress("building the benchmarks (release)");
            run(Command::new("cargo")
                .args(["run", "--release", "-p", "governance-bench", "--"])
                .arg(which))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// cargo's target directory (absolute), honouring CARGO_TARGET_DIR.
fn target_dir() -> PathBuf {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    workspace_root().join(dir)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Whether stderr is a terminal (where cargo draws its progress bar and escapes mean something).
fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Bold progress lines only on a terminal, and never when NO_COLOR is set (to anything but the
/// empty string, as https://no-color.org says): a log file or CI output gets plain text.
fn colour() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A progress line, so long steps never look hung.
pub fn progress(msg: &str) {
    if colour() {
        eprintln!("\x1b[1m[xtask]\x1b[0m {msg}");
    } else {
        eprintln!("[xtask] {msg}");
    }
}

/// How long a step may go without a word from xtask.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Run `f`, a long step, and print `[xtask] still <doing>: N s elapsed` every [`HEARTBEAT`]
/// until it returns. cargo says nothing while one big crate or a build script (the eBPF build)
/// compiles, and a test can run for minutes without output: this keeps every stretch short.
pub fn heartbeat<T>(doing: &str, f: impl FnOnce() -> T) -> T {
    beating(
        HEARTBEAT,
        doing,
        |line| {
            // On a terminal, first clear the line cargo's progress bar may be drawn on.
            if stderr_is_terminal() {
                eprint!("\r\x1b[K");
            }
            progress(&line);
        },
        f,
    )
}

/// [`heartbeat`], saying its line with `say` every `every`.
fn beating<T>(
    every: Duration,
    doing: &str,
    say: impl Fn(String) + Send + 'static,
    f: impl FnOnce() -> T,
) -> T {
    let (done, finished) = mpsc::channel::<()>();
    let doing = doing.to_owned();
    let started = Instant::now();
    let beat = std::thread::spawn(move || {
        // Woken by the step's end (the sender dropped) or by the interval passing.
        while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(every) {
            say(format!(
                "still {doing}: {} s elapsed",
                started.elapsed().as_secs()
            ));
        }
    });
    let out = f();
    drop(done);
    let _ = beat.join();
    out
}

/// A duration for people: `4.2 s`, `11 min 02 s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

/// Run a command, inheriting stdio; fail with the command line on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Run a command and return its stdout; fail on a non-zero exit.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Built {
    governance: PathBuf,
    vm_tests: Vec<PathBuf>,
    /// tests/src/bin/redteam-helper.rs (threaded and bulk attempts).
    helper: PathBuf,
}

/// Build with cargo and return the executables it reports: test harnesses when `tests`, else
/// plain binaries (`cargo test --no-run` also builds the package's binaries, which must never
/// be run as tests).
fn cargo_executables(args: &[&str], tests: bool) -> Result<Vec<PathBuf>> {
    let mut child = Command::new("cargo")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    let mut exes = Vec::new();
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"].as_bool() == Some(tests)
            && let Some(exe) = msg["executable"].as_str()
        {
            exes.push(PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(exes)
}

fn build() -> Result<Built> {
    progress("building governance (and its eBPF object)");
    // The eBPF object is built by governance-userspace's build script, which prints nothing
    // while it runs: the heartbeat speaks for it.
    let governance = heartbeat("building governance (and its eBPF object)", || {
        cargo_executables(
            &["build", "-p", "governance-userspace", "--bin", "governance"],
            false,
        )
    })?
    .into_iter()
    .next()
    .context("cargo built no governance binary")?;
    progress("building the kernel test executables");
    let vm_tests = heartbeat("building the kernel test executables", || {
        cargo_executables(
            &[
                "test",
                "-p",
                "governance-tests",
                "--test",
                "vm_lsm",
                "--no-run",
            ],
            true,
        )
    })?;
    if vm_tests.is_empty() {
        bail!("cargo built no VM test executable");
    }
    let helper = heartbeat("building the red-team helper", || {
        cargo_executables(
            &["build", "-p", "governance-tests", "--bin", "redteam-helper"],
            false,
        )
    })?
    .into_iter()
    .next()
    .context("cargo built no redteam-helper")?;
    Ok(Built {
        governance,
        vm_tests,
        helper,
    })
}

/// The eBPF object the build embedded (newest build-script output).
fn ebpf_object() -> Option<PathBuf> {
    let build_dir = target_dir().join("debug/build");
    std::fs::read_dir(build_dir)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("governance-userspace-")
        })
        .map(|e| e.path().join("out/governance"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Everything the VM image holds.
fn image_files(b: &Built) -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![
        (
            b.governance.clone(),
            "/governance/bin/governance".to_owned(),
        ),
        (
            b.helper.clone(),
            "/governance/bin/redteam-helper".to_owned(),
        ),
    ];
    for t in &b.vm_tests {
        let name = t.file_name().unwrap_or_default().to_string_lossy();
        // cargo names test executables `<target>-<hash>`; drop the hash.
        let name = name.rsplit_once('-').map_or(name.as_ref(), |(n, _)| n);
        files.push((t.clone(), format!("/governance/tests/{name}")));
    }
    // The demo policy is what `governance run` enforces in the VM; the example policies
    // have HTTP rules for the proxy and are exercised by `governance policy test`.
    for (dir, guest) in [("policies/demo", "policies"), ("xtask/demo", "demo")] {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            files.push((path, format!("/governance/{guest}/{name}")));
        }
    }
    if let Some(obj) = ebpf_object() {
        files.push((obj, "/governance/governance.bpf.o".into()));
    }
    for bpftool in ["/usr/sbin/bpftool", "/usr/bin/bpftool"] {
        if Path::new(bpftool).exists() {
            files.push((bpftool.into(), "/usr/sbin/bpftool".into()));
            break;
        }
    }
    // Network tools an agent might reach for, as separate copies of busybox (busybox picks the
    // applet from argv[0]): each is its own file, so a policy can block it without blocking
    // every other busybox applet.
    let busybox = PathBuf::from("/bin/busybox");
    // (`busybox --install` would otherwise make them symlinks to busybox itself, and a rule that
    // blocks one would block every applet.)
    for tool in ["nc", "wget", "ash"] {
        files.push((busybox.clone(), format!("/usr/bin/{tool}")));
    }
    // A real HTTP client for the demo agent (busybox's static wget cannot resolve names).
    if Path::new("/usr/bin/curl").exists() {
        files.push(("/usr/bin/curl".into(), "/usr/bin/curl".into()));
    }
    developer_tools(&mut files)?;
    Ok(files)
}

/// Debian's Python standard library, less what no agent's work in the VM needs: tests, the Tk
/// GUI and IDLE, bundled docs, 2to3, ensurepip's wheels, the static library for embedding, and
/// test or example extension modules (a third of its size).
const PYTHON_STDLIB: &str = "/usr/lib/python3.11";
const PYTHON_STDLIB_SKIP: &[&str] = &[
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "config-3.11-x86_64-linux-gnu",
    "site-packages",
    "dist-packages",
    // Extension modules for tests and examples, and for Berkeley DB, crypt(3), terminals and
    // audio, which no tool here uses.
    "_ctypes_test.cpython-311-x86_64-linux-gnu.so",
    "_testbuffer.cpython-311-x86_64-linux-gnu.so",
    "_testcapi.cpython-311-x86_64-linux-gnu.so",
    "_testclinic.cpython-311-x86_64-linux-gnu.so",
    "_testimportmultiple.cpython-311-x86_64-linux-gnu.so",
    "_testinternalcapi.cpython-311-x86_64-linux-gnu.so",
    "_testmultiphase.cpython-311-x86_64-linux-gnu.so",
    "_xxsubinterpreters.cpython-311-x86_64-linux-gnu.so",
    "_xxtestfuzz.cpython-311-x86_64-linux-gnu.so",
    "xxlimited.cpython-311-x86_64-linux-gnu.so",
    "xxlimited_35.cpython-311-x86_64-linux-gnu.so",
    "_dbm.cpython-311-x86_64-linux-gnu.so",
    "_crypt.cpython-311-x86_64-linux-gnu.so",
    "_curses.cpython-311-x86_64-linux-gnu.so",
    "_curses_panel.cpython-311-x86_64-linux-gnu.so",
    "readline.cpython-311-x86_64-linux-gnu.so",
    "nis.cpython-311-x86_64-linux-gnu.so",
    "ossaudiodev.cpython-311-x86_64-linux-gnu.so",
];

/// The tools of `legitimate_work_keeps_running` (tests/tests/vm_lsm.rs), as Debian installs
/// them (`cargo xtask setup` does): Python 3.11 with its standard library (the extension
/// modules bring their libraries: libssl, libsqlite3, libffi, ...) and its bytecode caches
/// (without them every import compiles under the VM's emulated CPU), pip, and git with its
/// templates. Git's `init`, `add`, `commit` and `log` are built into /usr/bin/git:
/// /usr/lib/git-core is left out.
fn developer_tools(files: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for exe in ["/usr/bin/python3.11", "/usr/bin/python3", "/usr/bin/git"] {
        if !Path::new(exe).exists() {
            bail!("{exe} not found; `cargo xtask setup` installs python3-pip and git");
        }
        files.push((exe.into(), exe.into()));
    }
    add_tree(Path::new(PYTHON_STDLIB), PYTHON_STDLIB_SKIP, files)?;
    // What `git init` copies into a new repository (a description, info/exclude, sample hooks).
    add_tree(Path::new("/usr/share/git-core/templates"), &[], files)?;
    // pip and its metadata (pip-<version>.dist-info), without the rest of dist-packages.
    let dist = Path::new("/usr/lib/python3/dist-packages");
    let mut pip = 0;
    for entry in std::fs::read_dir(dist).with_context(|| format!("reading {}", dist.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "pip" || (name.starts_with("pip-") && name.ends_with(".dist-info")) {
            add_tree(&entry.path(), &[], files)?;
            pip += 1;
        }
    }
    if pip != 2 {
        bail!(
            "pip not found in {}; `cargo xtask setup` installs python3-pip",
            dist.display()
        );
    }
    Ok(())
}

/// Every file below `dir` (at the same path in the guest), except the entries named in `skip`.
fn add_tree(dir: &Path, skip: &[&str], files: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if skip.iter().any(|s| entry.file_name() == **s) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            add_tree(&path, skip, files)?;
        } else {
            files.push((path.clone(), path.to_string_lossy().into_owned()));
        }
    }
    Ok(())
}

fn boot(
    kernel: Option<PathBuf>,
    b: &Built,
    script: String,
    timeout: Duration,
) -> Result<vm::Outcome> {
    let kernel = match kernel {
        Some(k) => k,
        None => setup::vm_kernel()?.0,
    };
    let spec = vm::Spec {
        kernel,
        files: image_files(b)?,
        script,
        timeout,
        memory_mib: 1536,
    };
    let work = target_dir().join("governance-vm");
    std::fs::create_dir_all(&work)?;
    vm::boot(&spec, &work)
}

/// libtest's summary numbers, added up.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    passed: u32,
    failed: u32,
    ignored: u32,
    /// Red-team cases tried, denied as expected, and their controls allowed (lines the kernel
    /// tests print: `redteam: tried|denied|control <case>`).
    tried: u32,
    denied: u32,
    controls: u32,
    /// Cases of the HTTP compatibility suite, which runs them all in one test and prints a
    /// line per case (`compat: ok ...`, `compat: FAILED ...`).
    cases_passed: u32,
    cases_failed: u32,
    /// The HTTP differential test's line (`differential: N variants, M refused or decided as
    /// canonical, F acted on differently ...`, from the unit tests): how many were seen, and
    /// their numbers added up.
    differential_runs: u32,
    variants: u32,
    variants_as_canonical: u32,
    variants_differ: u32,
}

impl Counts {
    fn add_line(&mut self, line: &str) {
        if let Some(at) = line.find("compat: ") {
            match line[at..].split_whitespace().nth(1) {
                Some("ok") => self.cases_passed += 1,
                Some("FAILED") => self.cases_failed += 1,
                _ => {}
            }
        }
        // libtest may print `test name ... ` or progress dots on the same line first.
        if let Some(at) = line.find("differential: ")
            && let Some((n, same, differ)) = differential(&line[at + "differential: ".len()..])
        {
            self.differential_runs += 1;
            self.variants += n;
            self.variants_as_canonical += same;
            self.variants_differ += differ;
        }
        if let Some(at) = line.find("redteam: ") {
            match line[at..].split_whitespace().nth(1) {
                Some("tried") => self.tried += 1,
                Some("denied") => self.denied += 1,
                Some("control") => self.controls += 1,
                _ => {}
            }
        }
        // "test result: ok. 18 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ..."
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `N variants, M refused or decided as canonical, F acted on differently ...` → (N, M, F).
fn differential(rest: &str) -> Option<(u32, u32, u32)> {
    let words: Vec<&str> = rest.split_whitespace().take(12).collect();
    match words.as_slice() {
        [
            n,
            "variants,",
            same,
            "refused",
            "or",
            "decided",
            "as",
            "canonical,",
            differ,
            "acted",
            "on",
            last,
        ] if last.starts_with("differently") => {
            Some((n.parse().ok()?, same.parse().ok()?, differ.parse().ok()?))
        }
        _ => None,
    }
}

impl Counts {
    /// The summary's line for the HTTP differential test, and whether it passed: it must have
    /// run (printed its line), on some variants, and none acted on differently.
    fn differential_summary(&self) -> (bool, String) {
        if self.differential_runs == 0 {
            return (
                false,
                "HTTP differential test: did not run (no `differential:` line in the unit tests' output)   <- FAILED".into(),
            );
        }
        let ok = self.variants > 0 && self.variants_differ == 0;
        let mut line = format!(
            "HTTP differential test: {} variants of the example policies' rules; {} refused or decided as the upstream frameworks act on them",
            self.variants, self.variants_as_canonical
        );
        if self.variants_differ > 0 {
            line += &format!("; {} acted on differently", self.variants_differ);
        }
        if !ok {
            line += "   <- FAILED";
        }
        (ok, line)
    }

    /// The suite's cases in place of libtest's tests, when it printed any (its one test
    /// stands for them all; if it failed before a case ran, that failure is what counts).
    fn as_cases(self) -> Counts {
        if self.cases_passed + self.cases_failed == 0 {
            return self;
        }
        Counts {
            passed: self.cases_passed,
            failed: self.cases_failed,
            ignored: 0,
            ..self
        }
    }
}

/// Run a cargo test command, echoing its output as it comes and counting its results.
fn counted(args: &[&str], env: &[(&str, &Path)]) -> Result<(bool, Counts)> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut out = std::io::stdout();
    let mut counts = Counts::default();
    // Echoed as it is read, not line by line: libtest's progress dots and `test name ... `
    // come before their newline.
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading cargo test's output"),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            counts.add_line(String::from_utf8_lossy(&line).trim_end());
        }
    }
    if !pending.is_empty() {
        counts.add_line(String::from_utf8_lossy(&pending).trim_end());
    }
    Ok((child.wait()?.success(), counts))
}

/// How long each step of `cargo xtask test` took, for the end of its report.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.0.push((name, started.elapsed()));
        out
    }
}

fn test(kernel: Option<PathBuf>) -> Result<ExitCode> {
    let started = Instant::now();
    let mut steps = Steps::default();
    steps.time("setup", setup::ensure)?;
    if !setup::is_root() {
        bail!(
            "the kernel tests load eBPF programs and create cgroups, so `cargo xtask test` must run as root"
        );
    }
    // No --quiet for cargo anywhere below: on a fresh clone clippy and the test builds compile
    // for minutes, and cargo's "Compiling ..." lines (on stderr) are what shows them moving.
    progress("checking formatting (cargo fmt --check)");
    steps.time("formatting", || {
        heartbeat("checking formatting", || {
            run(Command::new("cargo").args(["fmt", "--all", "--check"]))
        })
    })?;
    progress("linting (cargo clippy --workspace --all-targets -D warnings)");
    steps.time("clippy", || {
        heartbeat("linting (cargo clippy)", || {
            run(Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })
    })?;
    let b = steps.time("build", build)?;
    let mut places: Vec<(&str, bool, Counts)> = Vec::new();

    progress("unit tests (host)");
    // `-- --quiet`: libtest prints a dot per test (echoed as they come), cargo its progress.
    let (ok, c) = steps.time("unit tests", || {
        heartbeat("building and running the unit tests", || {
            counted(&["test", "--", "--quiet"], &[])
        })
    })?;
    places.push(("unit tests, host", ok, c));

    progress("policy check and policy tests (policies/)");
    let (ok, c) = steps.time("policy tests", || {
        heartbeat("checking and testing the policies", || -> Result<_> {
            run(Command::new(&b.governance).args(["policy", "check", "policies"]))?;
            let out = Command::new(&b.governance)
                .args(["policy", "test", "policies"])
                .output()
                .context("running governance policy test")?;
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{text}{}", String::from_utf8_lossy(&out.stderr));
            let mut c = Counts::default();
            text.lines().for_each(|l| c.add_line(l));
            Ok((out.status.success(), c))
        })
    })?;
    places.push(("policy tests (policies/)", ok, c));

    progress("kernel tests on the host kernel (cgroup socket programs)");
    let (ok, c) = steps.time("kernel tests, host kernel", || {
        heartbeat("building and running the host kernel tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "host_kernel",
                    "--",
                    "--nocapture",
                    // One at a time: several start daemons, floods and 1,000-cgroup churns, and
                    // they share two cores; in parallel their timing assertions measure each
                    // other.
                    "--test-threads=1",
                ],
                &[("GOVERNANCE_BIN", &b.governance)],
            )
        })
    })?;
    places.push(("kernel tests, host kernel", ok, c));

    progress("audit log faults: a tmpfs filled to the brim, then given room again");
    let (ok, c) = steps.time("audit log faults", || {
        heartbeat("running the audit fault tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "audit_faults",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[],
            )
        })
    })?;
    places.push(("audit log faults (tmpfs filled)", ok, c));

    progress("containers: agents as podman containers (runc, busybox), host kernel");
    let (ok, c) = steps.time("containers", || {
        heartbeat("running the container tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "containers",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[("GOVERNANCE_BIN", &b.governance)],
            )
        })
    })?;
    places.push(("containers (podman, host kernel)", ok, c));
    progress("manifest checks: kubectl kustomize deploy/kubernetes against the API's types");
    let (ok, c) = steps.time("manifest checks", || {
        heartbeat("checking the Kubernetes manifests", || {
            counted(
                &["test", "-p", "governance-tests", "--test", "manifests"],
                &[],
            )
        })
    })?;
    places.push(("manifest checks (deploy/kubernetes)", ok, c));

    progress("package test: this build's .deb installed in a throwaway system, its unit started");
    let (ok, c) = steps
        .time("package test", || {
            heartbeat("building and testing the package", || {
                deb::place(&b.governance)
            })
        })
        .unwrap_or_else(|e| {
            eprintln!("xtask: the package test could not run: {e:#}");
            (false, Counts::default())
        });
    places.push(("package test (.deb, unit started)", ok, c));

    progress(
        "HTTP compatibility suite: real clients and frameworks through the kernel redirect (host kernel)",
    );
    let compat_dir = setup::compat_dir();
    let (ok, c) = steps.time("HTTP compatibility", || {
        heartbeat("running the HTTP compatibility suite", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "compat",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[
                    ("GOVERNANCE_BIN", &b.governance),
                    ("GOVERNANCE_COMPAT_DIR", &compat_dir),
                ],
            )
        })
    })?;
    places.push((
        "HTTP compatibility (real clients, host kernel)",
        ok,
        c.as_cases(),
    ));

    progress("kernel tests in the VM (BPF LSM)");
    // The guest prints each test as it starts and ends (--nocapture, one thread); vm::boot
    // says when the guest has been quiet for a while.
    let script = "export RUST_BACKTRACE=1 GOVERNANCE_BIN=/governance/bin/governance\n\
                  rc=0\n\
                  for t in /governance/tests/*; do echo \"== $t\"; \"$t\" --test-threads=1 --nocapture || rc=1; done\n\
                  exit $rc\n";
    let vm = steps.time("kernel tests, VM", || {
        boot(kernel, &b, script.into(), Duration::from_secs(1800))
    });
    let (ok, c) = match &vm {
        Ok(out) => {
            let mut c = Counts::default();
            out.output.iter().for_each(|l| c.add_line(l));
            (out.status == 0, c)
        }
        Err(e) => {
            eprintln!("xtask: VM tests could not run: {e:#}");
            (false, Counts::default())
        }
    };
    places.push(("kernel tests, VM (BPF LSM)", ok, c));

    println!();
    println!("test summary");
    let mut total = Counts::default();
    let mut all_ok = true;
    let width = places.iter().map(|(p, _, _)| p.len()).max().unwrap_or(0);
    for (place, ok, c) in &places {
        println!(
            "  {place:<width$} {:>3} passed, {} failed, {} ignored{}",
            c.passed,
            c.failed,
            c.ignored,
            if *ok { "" } else { "   <- FAILED" }
        );
        // A place that ran nothing has not shown anything: that is a failure, never a skip.
        all_ok &= *ok && c.passed > 0;
        total.passed += c.passed;
        total.failed += c.failed;
        total.ignored += c.ignored;
        total.tried += c.tried;
        total.denied += c.denied;
        total.controls += c.controls;
        total.differential_runs += c.differential_runs;
        total.variants += c.variants;
        total.variants_as_canonical += c.variants_as_canonical;
        total.variants_differ += c.variants_differ;
    }
    println!(
        "red team: {} cases tried, {} denied as expected, {} controls allowed",
        total.tried, total.denied, total.controls
    );
    let (differential_ok, line) = total.differential_summary();
    println!("{line}");
    all_ok &= differential_ok;
    // A place that failed without a failing test (build, boot, harness) counts as one failure;
    // so does a differential test that did not run.
    let broken = places
        .iter()
        .filter(|(_, ok, c)| (!ok || c.passed == 0) && c.failed == 0)
        .count() as u32
        + u32::from(total.differential_runs == 0);
    println!("{} passed, {} failed", total.passed, total.failed + broken);
    println!();
    println!("time per step");
    for (step, took) in &steps.0 {
        println!("  {step:<28} {:>12}", human(*took));
    }
    println!("  {:<28} {:>12}", "total", human(started.elapsed()));
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo(kernel: Option<PathBuf>) -> Result<ExitCode> {
    setup::ensure()?;
    let b = build()?;
    let out = boot(
        kernel,
        &b,
        "sh /governance/demo/run.sh\n".into(),
        Duration::from_secs(300),
    )?;
    Ok(ExitCode::from(out.status.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mediated path in docs/threat-model.md names its test; the test must exist.
    /// `vm_lsm::f`, `host_kernel::f`, `compat::f` are `fn f` in tests/tests/<file>.rs;
    /// `src:path::f` is `fn f` in that source file.
    #[test]
    fn threat_model_rows_name_tests_that_exist() {
        let root = workspace_root();
        let doc = std::fs::read_to_string(root.join("docs/threat-model.md")).unwrap();
        let mut named = 0;
        for row in doc.lines().filter(|l| l.starts_with('|')) {
            let Some(last) = row.trim_end_matches('|').rsplit('|').next() else {
                continue;
            };
            for name in last.split('`').skip(1).step_by(2) {
                let (file, func) = if let Some(rest) = name.strip_prefix("src:") {
                    let Some((path, func)) = rest.rsplit_once("::") else {
                        panic!("`{name}`: src:PATH::FUNCTION")
                    };
                    (root.join(path), func)
                } else if let Some((suite, func)) = name.split_once("::")
                    && ["vm_lsm", "host_kernel", "compat"].contains(&suite)
                {
                    (root.join(format!("tests/tests/{suite}.rs")), func)
                } else {
                    continue;
                };
                let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                    panic!("{}: {e} (named in the threat model)", file.display())
                });
                assert!(
                    text.contains(&format!("fn {func}(")),
                    "docs/threat-model.md names `{name}`, which is not a test in {}",
                    file.display()
                );
                named += 1;
            }
        }
        assert!(named >= 30, "only {named} tests named in the threat model");
    }

    #[test]
    fn counts_libtest_summaries() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 18 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.04s");
        c.add_line(
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("unrelated 5 passed");
        assert_eq!((c.passed, c.failed, c.ignored), (19, 3, 2));
        c.add_line("test exec_cases ... redteam: tried 1 exec blocked binary");
        c.add_line("..redteam: denied 16 connect (host)");
        c.add_line("redteam: control 16 connect (host)");
        c.add_line("no redteam here");
        assert_eq!((c.tried, c.denied, c.controls), (1, 1, 1));
    }

    #[test]
    fn counts_compatibility_cases_in_place_of_the_test() {
        let mut c = Counts::default();
        c.add_line("compat: upstreams FastAPI 127.0.0.21:1, ...");
        c.add_line("compat: ok     curl            FastAPI  allow   0.1 s  200");
        c.add_line("compat: ok     requests        FastAPI  allow   0.1 s  200");
        c.add_line("compat: FAILED httpx           FastAPI  block   0.1 s  why");
        c.add_line("compat: 3 cases, 2 passed, 1 failed in 40s");
        c.add_line("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        let cases = c.as_cases();
        assert_eq!((cases.passed, cases.failed, cases.ignored), (2, 1, 0));
        // No case ran (the packages were missing): the test's own failure counts.
        let mut c = Counts::default();
        c.add_line("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        assert_eq!((c.as_cases().passed, c.as_cases().failed), (0, 1));
    }

    #[test]
    fn counts_the_differential_test() {
        let mut c = Counts::default();
        // Not run: the summary says so, and the run fails.
        let (ok, line) = c.differential_summary();
        assert!(!ok);
        assert!(line.contains("did not run"), "{line}");
        c.add_line("differential: 12 variants (an older wording)");
        c.add_line("a differential: of some other kind");
        assert_eq!(c.differential_runs, 0);
        // After libtest's progress dots, as `-- --quiet` prints them.
        c.add_line(
            "....differential: 2143 variants, 2143 refused or decided as canonical, 0 acted on differently (1325 refused, 818 decided as canonical, 0 batches decided more severely than a lenient reader acting on part of them; 0 acted on by no modelled framework); framework readings: {\"Express\": 1029}",
        );
        assert_eq!(
            (
                c.differential_runs,
                c.variants,
                c.variants_as_canonical,
                c.variants_differ
            ),
            (1, 2143, 2143, 0)
        );
        let (ok, line) = c.differential_summary();
        assert!(ok, "{line}");
        assert_eq!(
            line,
            "HTTP differential test: 2143 variants of the example policies' rules; 2143 refused or decided as the upstream frameworks act on them"
        );
        let mut c = Counts::default();
        c.add_line(
            "differential: 10 variants, 9 refused or decided as canonical, 1 acted on differently",
        );
        let (ok, line) = c.differential_summary();
        assert!(!ok);
        assert!(
            line.ends_with("; 1 acted on differently   <- FAILED"),
            "{line}"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_millis(4_240)), "4.2 s");
        assert_eq!(human(Duration::from_millis(59_940)), "59.9 s");
        assert_eq!(human(Duration::from_secs(60)), "1 min 00 s");
        assert_eq!(human(Duration::from_secs(662)), "11 min 02 s");
    }

    #[test]
    fn heartbeat_speaks_while_the_step_runs() {
        let (heard, hear) = mpsc::channel();
        let lines = beating(
            Duration::from_millis(10),
            "testing",
            move |line| {
                let _ = heard.send(line);
            },
            // The step ends once the heartbeat has spoken twice.
            || {
                let wait = Duration::from_secs(10);
                [hear.recv_timeout(wait), hear.recv_timeout(wait)]
                    .map(|l| l.expect("no heartbeat within 10 s while the step ran"))
            },
        );
        for line in lines {
            assert!(
                line.starts_with("still testing: ") && line.ends_with(" s elapsed"),
                "{line}"
            );
        }
    }

    #[test]
    fn heartbeat_returns_the_steps_value_at_once() {
        // A step shorter than the interval says nothing and does not wait for the interval.
        let started = Instant::now();
        assert_eq!(heartbeat("testing", || 7), 7);
        assert!(started.elapsed() < HEARTBEAT);
    }
}
