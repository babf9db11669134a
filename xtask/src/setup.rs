//! `cargo xtask setup`: install everything the build, the tests and the VM need, idempotently.
//!
//! Each step first checks whether its thing is already there (cheap: a file, a version string, a
//! dpkg status), so a second run takes well under a second. Every other xtask command calls
//! [`ensure`] first, which is why the README's commands work on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{capture, progress, run};

/// Debian packages: LLVM 22 for bpf-linker, qemu/busybox/cpio for the VM, bpftool to inspect,
/// curl (the demo agent's HTTP client in the VM).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "bpftool",
    "curl",
];

/// bpf-linker 0.13 is the release that links with LLVM 21–23 (we use Debian's LLVM 22).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The VM kernel: Debian's 6.1 cloud kernel, whose built-in LSM list ends in `bpf`.
const KERNEL_PACKAGE_PREFIX: &str = "linux-image-6.1.0-";
const KERNEL_PACKAGE_SUFFIX: &str = "-cloud-amd64-unsigned";

/// Where downloaded artefacts live, shared by every clone on the machine.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("governance")
}

/// Make sure everything is installed; print what is done. Fast when nothing is missing.
pub fn ensure() -> Result<()> {
    let started = Instant::now();
    let mut did = false;
    did |= apt_packages()?;
    did |= nightly_rust_src()?;
    did |= bpf_linker()?;
    did |= vm_kernel().map(|(_, installed)| installed)?;
    if did {
        progress(&format!("setup complete in {:.0?}", started.elapsed()));
    }
    Ok(())
}

/// `cargo xtask setup`: like [`ensure`], but always says what is there.
pub fn setup() -> Result<()> {
    ensure()?;
    progress(&format!(
        "toolchain ready: nightly rust-src, bpf-linker {BPF_LINKER_VERSION} (LLVM 22), qemu, busybox, cpio, bpftool; VM kernel {}",
        vm_kernel()?.0.display()
    ));
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_packages() -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Status}\n"])
        .args(APT_PACKAGES)
        .output()
        .context("running dpkg-query (this setup supports Debian and Ubuntu)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !listing
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}. Install them as root: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    progress(&format!(
        "installing Debian packages: {} (about a minute)",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(true)
}

fn nightly_rust_src() -> Result<bool> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (the eBPF build needs rustup's nightly toolchain)")?;
    if installed.status.success()
        && String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|l| l.starts_with("rust-src"))
    {
        return Ok(false);
    }
    if installed.status.success() {
        progress("adding the rust-src component to the nightly toolchain (for -Z build-std)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    } else {
        progress("installing the nightly toolchain with rust-src (the eBPF programs need it)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    Ok(true)
}

fn bpf_linker() -> Result<bool> {
    if let Ok(v) = capture(Command::new("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        return Ok(false);
    }
    if !Path::new(LLVM_PREFIX).join("lib").exists() {
        bail!("{LLVM_PREFIX} is missing; llvm-22-dev did not install");
    }
    progress(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    ));
    run(Command::new("cargo")
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        // Without it the link fails with "unable to find library -lLLVM".
        .env("LLVM_PREFIX", LLVM_PREFIX))?;
    Ok(true)
}

/// The VM kernel image, downloading it if needed. Returns (path, whether it was installed now).
pub fn vm_kernel() -> Result<(PathBuf, bool)> {
    let dir = cache_dir().join("kernel");
    if let Some(existing) = cached_kernel(&dir) {
        return Ok((existing, false));
    }
    // apt-cache only knows the packages after an update; a fresh machine may have no lists.
    let mut package = newest_kernel_package()?;
    if package.is_none() && is_root() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        package = newest_kernel_package()?;
    }
    let Some(package) = package else {
        bail!(
            "no {KERNEL_PACKAGE_PREFIX}N{KERNEL_PACKAGE_SUFFIX} package is known to apt; \
             run apt-get update, or pass --kernel PATH to a kernel with BPF LSM"
        );
    };
    progress(&format!("downloading the VM kernel: {package}"));
    let work = dir.join(format!("download-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(&package)
        .current_dir(&work))?;
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(work.join("root")))?;
    let vmlinuz = std::fs::read_dir(work.join("root/boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no boot/vmlinuz-*")?;
    let dest = dir.join(vmlinuz.file_name().unwrap_or_default());
    std::fs::copy(&vmlinuz, &dest)?;
    std::fs::remove_dir_all(&work)?;
    Ok((dest, true))
}

fn cached_kernel(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-6.1.0-"))
        })
        .collect();
    found.sort_by_key(|p| kernel_abi(&p.to_string_lossy()));
    found.pop()
}

/// The `N` of `...6.1.0-N-cloud...`, for picking the newest.
fn kernel_abi(name: &str) -> u32 {
    name.split("6.1.0-")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn newest_kernel_package() -> Result<Option<String>> {
    let out = capture(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^{KERNEL_PACKAGE_PREFIX}[0-9]+{KERNEL_PACKAGE_SUFFIX}$"),
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| kernel_abi(p))
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_kernel_abi() {
        assert_eq!(kernel_abi("linux-image-6.1.0-56-cloud-amd64-unsigned"), 56);
        assert_eq!(kernel_abi("vmlinuz-6.1.0-9-cloud-amd64"), 9);
        assert_eq!(kernel_abi("garbage"), 0);
    }
}
