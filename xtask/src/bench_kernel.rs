//! `cargo xtask bench kernel`: the kernel hooks' overhead on openat, execve and connect, as
//! throughput ratios against no governance at all, measured side by side in one run
//! (bench/src/bin/kernel.rs), on the host and inside the VM.
//!
//! On the host, LSM programs do not load: the run is `--allow-degraded` and measures the cgroup
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

/// The report's first and last lines (see bench/src/bin/kernel.rs).
const REPORT_BEGIN: &str = "==> kernel hook overhead";
const REPORT_END: &str = "<== end of report";

/// Rounds and milliseconds per loop: on the host, and in the (slow) VM.
const HOST: (u32, u32) = (7, 400);
const VM: (u32, u32) = (5, 300);

pub fn run() -> Result<()> {
    setup::ensure()?;
    if !setup::is_root() {
        bail!(
            "the kernel benchmark loads eBPF programs and creates a cgroup, so it must run as root"
        );
    }
    progress("building governance and the kernel benchmark (release)");
    let governance = release_binary("governance-userspace", "governance")?;
    let bench = release_binary("governance-bench", "governance-bench-kernel")?;

    progress(&format!(
        "kernel benchmark on the host: {} rounds, {} ms per loop (no BPF LSM here: \
         --allow-degraded, so the socket hooks and the degraded exec path are measured)",
        HOST.0, HOST.1
    ));
    let host = on_host(&bench, &governance);
    if let Err(e) = &host {
        progress(&format!("the host run failed: {e:#}"));
    }

    progress(&format!(
        "kernel benchmark in the VM (BPF LSM, every hook): {} rounds, {} ms per loop",
        VM.0, VM.1
    ));
    let guest = in_vm(&bench, &governance);
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
        _ => bail!("the kernel benchmark did not complete everywhere (see above)"),
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
fn report(output: &[String]) -> Result<Vec<String>> {
    let start = output
        .iter()
        .position(|l| l.starts_with(REPORT_BEGIN))
        .context("the benchmark printed no report")?;
    let end = output[start..]
        .iter()
        .position(|l| l.starts_with(REPORT_END))
        .context("the benchmark's report is cut short")?;
    Ok(output[start..start + end].to_vec())
}

fn on_host(bench: &Path, governance: &Path) -> Result<Vec<String>> {
    let mut child = Command::new(bench)
        .arg("--governance")
        .arg(governance)
        .args(["--rounds", &HOST.0.to_string(), "--ms", &HOST.1.to_string()])
        .args([
            "--allow-degraded",
            "--label",
            "host kernel, no BPF LSM programs (degraded)",
        ])
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
    report(&output)
}

fn in_vm(bench: &Path, governance: &Path) -> Result<Vec<String>> {
    let mut files = vec![
        (
            governance.to_owned(),
            "/governance/bin/governance".to_owned(),
        ),
        (
            bench.to_owned(),
            "/governance/bin/governance-bench-kernel".to_owned(),
        ),
    ];
    if let Some(bpftool) = ["/usr/sbin/bpftool", "/usr/bin/bpftool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        files.push((bpftool.into(), "/usr/sbin/bpftool".into()));
    }
    let label = "VM: Debian 6.1 kernel with BPF LSM, qemu (2 vCPUs)";
    let script = format!(
        "/governance/bin/governance-bench-kernel --governance /governance/bin/governance \
         --rounds {} --ms {} --label {}\n",
        VM.0,
        VM.1,
        vm::shell_quote(label)
    );
    let spec = vm::Spec {
        kernel: setup::vm_kernel()?.0,
        files,
        script,
        timeout: Duration::from_secs(420),
        memory_mib: 1536,
    };
    // Its own work directory, so that a `cargo xtask test` at the same time keeps its image.
    let work = target_dir().join("governance-vm-bench");
    std::fs::create_dir_all(&work)?;
    let out = vm::boot(&spec, &work)?;
    if out.status != 0 {
        bail!("the benchmark in the VM exited with status {}", out.status);
    }
    report(&out.output)
}
