//! Building what the tests and the VM run: the workspace's executables and the eBPF object.

use super::*;

pub(super) struct Built {
    pub(super) governance: PathBuf,
    pub(super) vm_tests: Vec<PathBuf>,
    /// tests/src/bin/redteam-helper.rs (threaded and bulk attempts).
    pub(super) helper: PathBuf,
}

/// Build with cargo and return the executables it reports: test harnesses when `tests`, else
/// plain binaries (`cargo test --no-run` also builds the package's binaries, which must never
/// be run as tests).
pub(super) fn cargo_executables(args: &[&str], tests: bool) -> Result<Vec<PathBuf>> {
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

pub(super) fn build() -> Result<Built> {
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
pub(super) fn ebpf_object() -> Option<PathBuf> {
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
