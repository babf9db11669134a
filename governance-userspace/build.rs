//! Build the eBPF object (governance-ebpf, for bpfel-unknown-none) and hand it to the crate as
//! `$OUT_DIR/governance`; tell the crate what `governance version` says: the git commit
//! (`GOVERNANCE_GIT_COMMIT`, 12 hex digits) and the SHA-256 of that object
//! (`GOVERNANCE_EBPF_SHA256`; its first 12 hex digits in `GOVERNANCE_EBPF`).
//!
//! A nested cargo (nightly, `-Z build-std=core`, linked by bpf-linker) does the build, so cargo's
//! own freshness checks decide what to rebuild: the object embedded is always the one built
//! from the sources of this build, never a stale copy. This is aya-build's approach, without
//! relaying every line of the inner build as a cargo warning.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest as _, Sha256};

const PACKAGE: &str = "governance-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    if let Err(e) = build() {
        eprintln!("{e}");
        println!(
            "cargo::error=building the eBPF object failed; it needs the nightly toolchain with \
             rust-src and bpf-linker 0.13: run `cargo xtask setup`. Details above."
        );
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest_dir.parent().ok_or("no workspace directory")?;
    for dir in ["governance-ebpf", "governance-common"] {
        println!("cargo::rerun-if-changed={}", workspace.join(dir).display());
    }
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_dir = out_dir.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--release",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir)
    .current_dir(workspace)
    // debuginfo makes the linker emit BTF, which the kernel needs for the maps.
    // --disable-expand-memcpy-in-order: by default bpf-linker has LLVM keep every memset as a
    // call to a byte-at-a-time memset subprogram (every zeroed field run, e.g. a key's padding,
    // 4 to 26 calls per program), which the verifier walks byte by byte on every path that
    // reaches it; without it, LLVM writes the zeroes as plain stores.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!(
            "--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f\
             -Clink-arg=--disable-expand-memcpy-in-order"
        ),
    )
    // The workspace's release profile is the daemon's (whole-program LTO); the eBPF object is
    // linked by bpf-linker as it always was.
    .env("CARGO_PROFILE_RELEASE_LTO", "false")
    .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
    // The outer build's compiler settings must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("running `rustup run nightly cargo build`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let built = target_dir.join(TARGET).join("release").join("governance");
    let dest = out_dir.join("governance");
    std::fs::copy(&built, &dest)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), dest.display()))?;
    let object = std::fs::read(&dest).map_err(|e| format!("reading {}: {e}", dest.display()))?;
    let digest: String = Sha256::digest(&object)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo::rustc-env=GOVERNANCE_EBPF_SHA256={digest}");
    println!("cargo::rustc-env=GOVERNANCE_EBPF={}", &digest[..12]);
    println!(
        "cargo::rustc-env=GOVERNANCE_GIT_COMMIT={}",
        git_commit(workspace)
    );
    Ok(())
}

/// The commit of the sources: `$GOVERNANCE_GIT_COMMIT` if set (a build from a source tarball
/// can say where it came from), else `git rev-parse --short=12 HEAD` in the workspace, else
/// `unknown`.
/// The build script runs again when HEAD moves (a commit, a checkout).
fn git_commit(workspace: &Path) -> String {
    println!("cargo::rerun-if-env-changed=GOVERNANCE_GIT_COMMIT");
    if let Ok(c) = env::var("GOVERNANCE_GIT_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // HEAD, the branch it names, and packed-refs (where a branch's commit may be instead).
    // Only files that exist: cargo runs the script every time for a missing one.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for f in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &f]) {
            let path = workspace.join(path);
            if path.exists() {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
    }
    commit
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = env::var_os("PATH").ok_or(())?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| Path::new(p).is_file())
        .ok_or(())
}
