//! Project automation: `cargo xtask setup | build | vm | test | demo | image`.

mod bench_events;
mod bench_kernel;
mod build;
mod deb;
mod docs_links;
mod image;
mod setup;
mod suite;
mod summary;
mod vm;
mod vm_files;

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use self::{build::*, suite::*, summary::*, vm_files::*};

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
        /// Kernel image for the VM tests instead of Debian's 6.1 and 6.12 (side by side, the
        /// daemon's own tests split between them): this kernel alone runs every VM test.
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
        /// `kernel` only: also run the per-program pass for Tetragon, in the VM (the host has
        /// no kprobes), from DIR/tetragon with its BPF objects in DIR/objs; see
        /// docs/benchmarks.md#peers for how to build them.
        #[arg(long, value_name = "DIR")]
        tetragon: Option<PathBuf>,
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
            // A VM of another kernel gets a disk and an image of its own (tagged by the image's
            // name), so that VMs of two kernels can run side by side.
            let tag = kernel
                .as_ref()
                .and_then(|k| k.file_name())
                .map(|n| n.to_string_lossy().into_owned());
            let out = boot(
                kernel,
                &b,
                script,
                Duration::from_secs(timeout),
                tag.as_deref(),
            )?;
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
        Cmd::Bench { which, tetragon } if which == "kernel" => {
            bench_kernel::run(&bench_kernel::KERNEL, tetragon.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            tetragon: Some(_), ..
        } => bail!("--tetragon goes with `cargo xtask bench kernel` only"),
        Cmd::Bench { which, .. } if which == "events" => {
            bench_kernel::run(&bench_events::EVENTS, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which, .. } if which == "reload" || which == "rss" => {
            bench_kernel::run_host(&bench_kernel::reload(&which))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { which, .. } if which == "http" => {
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
        Cmd::Bench { which, .. } => {
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

fn demo(kernel: Option<PathBuf>) -> Result<ExitCode> {
    setup::ensure()?;
    let b = build()?;
    let out = boot(
        kernel,
        &b,
        "sh /governance/demo/run.sh\n".into(),
        Duration::from_secs(300),
        None,
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
