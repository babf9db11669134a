//! The root benchmarks that run on the host and inside the VM, and print a report between two
//! marker lines that is printed again at the end: `cargo xtask bench kernel` (this file's
//! [`KERNEL`]) and `cargo xtask bench events` (bench_events.rs).
//!
//! `kernel`: the kernel hooks' overhead on openat, execve and connect, as throughput ratios
//! against no governance at all, measured side by side in one run, then each program's cost
//! per run outside agents and inside at 10 to 10,000 rules (bench/src/bin/kernel.rs).
//!
//! On the host, LSM programs do not load: the runs are `--allow-degraded` and measure the cgroup
//! socket hooks and the degraded exec path (the file and exec LSM hooks are absent). The VM
//! (Debian's 6.1 kernel with BPF LSM, 2 vCPUs, software emulation) measures every hook; its
//! numbers carry about ±15% noise per sample, hence several interleaved rounds.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo_executables, progress, setup, target_dir, vm};

/// A benchmark binary of governance-bench that needs root, and how to run it in both places.
pub struct RootBench {
    /// Its binary, in the governance-bench package.
    pub bin: &'static str,
    /// "the kernel benchmark", for progress lines.
    pub title: &'static str,
    /// The report's first line starts with this; its last line is [`REPORT_END`].
    pub report_begin: &'static str,
    /// Arguments on the host (besides --governance and --label).
    pub host_args: &'static [&'static str],
    pub host_label: &'static str,
    /// Arguments in the VM (besides --governance and --label).
    pub vm_args: &'static [&'static str],
    pub vm_label: &'static str,
    pub vm_timeout: Duration,
}

const REPORT_END: &str = "<== end of report";

/// `cargo xtask bench kernel`. On the host (no BPF LSM: --allow-degraded, so the socket hooks
/// and the degraded exec path are measured) and in the VM (every hook).
pub const KERNEL: RootBench = RootBench {
    bin: "governance-bench-kernel",
    title: "kernel benchmark",
    report_begin: "==> kernel hook overhead",
    host_args: &[
        "--rounds",
        "12",
        "--ms",
        "400",
        "--allow-degraded",
        "--stats-calls",
        "50000",
    ],
    host_label: "host kernel, no BPF LSM programs (degraded)",
    // The per-program pass at 10 to 10,000 rules: 10,000 opens per pass, 3 rounds of six
    // passes (about 3 minutes in the VM, beside the ratios' 4).
    vm_args: &[
        "--rounds",
        "6",
        "--ms",
        "300",
        "--stats-calls",
        "10000",
        "--stats-rounds",
        "3",
    ],
    vm_label: "VM: Debian 6.1 kernel with BPF LSM, qemu (2 vCPUs)",
    vm_timeout: Duration::from_secs(1200),
};

/// `cargo xtask bench reload` and `cargo xtask bench rss` (bench/src/bin/reload.rs): on the
/// host only (the maps, the compiler and the install path are the same there; the daemon's
/// memory does not depend on the LSM hooks). `which` is "reload" or "rss".
pub fn reload(which: &str) -> RootBench {
    let (host_args, report_begin): (&'static [&'static str], _) = if which == "rss" {
        (&["rss", "--runs", "3"], "==> daemon memory")
    } else {
        (
            &["reload", "--rounds", "10", "--e2e-rounds", "5"],
            "==> policy reload",
        )
    };
    RootBench {
        bin: "governance-bench-reload",
        title: "reload benchmark",
        report_begin,
        host_args,
        host_label: "host kernel (no BPF LSM programs; the same maps and install path)",
        vm_args: &[],
        vm_label: "",
        vm_timeout: Duration::ZERO,
    }
}

/// Run `b` on the host only, and print its report again at the end.
pub fn run_host(b: &RootBench) -> Result<()> {
    setup::ensure()?;
    if !setup::is_root() {
        bail!(
            "the {} loads eBPF programs and creates cgroups, so it must run as root",
            b.title
        );
    }
    progress(&format!(
        "building governance and the {} (release)",
        b.title
    ));
    let governance = release_binary("governance-userspace", "governance")?;
    let bench = release_binary("governance-bench", b.bin)?;
    progress(&format!(
        "{} on the host: {}",
        b.title,
        b.host_args.join(" ")
    ));
    let lines = on_host(b, &bench, &governance)?;
    println!();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// Run `b` on the host and in the VM, and print both reports again at the end. `tetragon`:
/// the kernel benchmark's peer (a directory with `tetragon` and `objs/`), for the VM run.
pub fn run(b: &RootBench, tetragon: Option<&Path>) -> Result<()> {
    // Before the builds and the host run, not after them in the VM.
    if let Some(dir) = tetragon {
        for need in ["tetragon", "objs"] {
            if !dir.join(need).exists() {
                bail!(
                    "--tetragon {}: {need} is missing there; bench/peers/build-tetragon.sh SRC DIR builds \
                     DIR/tetragon and DIR/objs (docs/benchmarks.md#tetragon-side-by-side)",
                    dir.display()
                );
            }
        }
    }
    setup::ensure()?;
    if !setup::is_root() {
        bail!(
            "the {} loads eBPF programs and creates a cgroup, so it must run as root",
            b.title
        );
    }
    progress(&format!(
        "building governance and the {} (release)",
        b.title
    ));
    let governance = release_binary("governance-userspace", "governance")?;
    let bench = release_binary("governance-bench", b.bin)?;

    progress(&format!(
        "{} on the host ({}): {}",
        b.title,
        b.host_label,
        b.host_args.join(" ")
    ));
    let host = on_host(b, &bench, &governance);
    if let Err(e) = &host {
        progress(&format!("the host run failed: {e:#}"));
    }

    progress(&format!(
        "{} in the VM ({}): {}",
        b.title,
        b.vm_label,
        b.vm_args.join(" ")
    ));
    let guest = in_vm(b, &bench, &governance, tetragon);
    if let Err(e) = &guest {
        progress(&format!("the VM run failed: {e:#}"));
    }

    println!();
    for (place, r) in [("host", &host), ("VM", &guest)] {
        match r {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Err(e) => println!("{place}: no report: {e:#}"),
        }
        println!();
    }
    match (host, guest) {
        (Ok(_), Ok(_)) => Ok(()),
        _ => bail!("the {} did not complete everywhere (see above)", b.title),
    }
}

/// `cargo build --release` one binary; its path.
fn release_binary(package: &str, bin: &str) -> Result<PathBuf> {
    cargo_executables(&["build", "--release", "-p", package, "--bin", bin], false)?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == bin))
        .with_context(|| format!("cargo built no {bin}"))
}

/// The report's lines (from its first line to its last) in `output`.
fn report(b: &RootBench, output: &[String]) -> Result<Vec<String>> {
    let start = output
        .iter()
        .position(|l| l.starts_with(b.report_begin))
        .context("the benchmark printed no report")?;
    let end = output[start..]
        .iter()
        .position(|l| l.starts_with(REPORT_END))
        .context("the benchmark's report is cut short")?;
    Ok(output[start..start + end].to_vec())
}

fn on_host(b: &RootBench, bench: &Path, governance: &Path) -> Result<Vec<String>> {
    let mut child = Command::new(bench)
        .arg("--governance")
        .arg(governance)
        .args(b.host_args)
        .args(["--label", b.host_label])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bench.display()))?;
    let mut output = Vec::new();
    for line in BufReader::new(child.stdout.take().context("bench stdout")?).lines() {
        let line = line?;
        println!("{line}");
        output.push(line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed: {status}", bench.display());
    }
    report(b, &output)
}

/// Where the peer's files go in the VM.
const GUEST_TETRAGON: &str = "/peer/tetragon";

fn in_vm(
    b: &RootBench,
    bench: &Path,
    governance: &Path,
    tetragon: Option<&Path>,
) -> Result<Vec<String>> {
    let guest_bench = format!("/governance/bin/{}", b.bin);
    let mut files = vec![
        (
            governance.to_owned(),
            "/governance/bin/governance".to_owned(),
        ),
        (bench.to_owned(), guest_bench.clone()),
    ];
    if let Some(bpftool) = ["/usr/sbin/bpftool", "/usr/bin/bpftool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        files.push((bpftool.into(), "/usr/sbin/bpftool".into()));
    }
    let mut args: Vec<&str> = b.vm_args.to_vec();
    if let Some(dir) = tetragon {
        files.push((dir.join("tetragon"), format!("{GUEST_TETRAGON}/tetragon")));
        let objs = dir.join("objs");
        for entry in
            std::fs::read_dir(&objs).with_context(|| format!("reading {}", objs.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            files.push((path.clone(), format!("{GUEST_TETRAGON}/objs/{name}")));
        }
        args.extend(["--tetragon", GUEST_TETRAGON]);
    }
    let script = format!(
        "{guest_bench} --governance /governance/bin/governance {} --label {}\n",
        args.iter()
            .map(|a| vm::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        vm::shell_quote(b.vm_label)
    );
    let spec = vm::Spec {
        kernel: setup::vm_kernel()?.0,
        files,
        script,
        timeout: b.vm_timeout,
        memory_mib: 1536,
        one_thread: false,
        tag: None,
    };
    // Its own work directory, so that a `cargo xtask test` at the same time keeps its image.
    let work = target_dir().join("governance-vm-bench");
    std::fs::create_dir_all(&work)?;
    let out = vm::boot(&spec, &work)?;
    if out.status != 0 {
        bail!("the benchmark in the VM exited with status {}", out.status);
    }
    report(b, &out.output)
}
