//! `cargo xtask image`: the daemon's container image, from a local release build.
//!
//! The root filesystem is the `governance` binary (its eBPF object is built in) and the
//! shared libraries `ldd` says it loads, laid out in target/image/rootfs; the
//! deploy/kubernetes/Containerfile copies it `FROM scratch`, built with buildah (or podman).
//! Nothing is pulled from a registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{capture, progress, run, target_dir};

/// The image's name in the local store.
pub const NAME: &str = "localhost/governance";

pub fn image(tag: &str, archive: Option<&Path>) -> Result<()> {
    let tool = ["buildah", "podman"]
        .into_iter()
        .find(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context("neither buildah nor podman is installed (apt-get install buildah)")?;
    progress("building the daemon (release)");
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "governance-userspace",
        "--bin",
        "governance",
    ]))?;
    let bin = target_dir().join("release/governance");
    let context = target_dir().join("image");
    let rootfs = context.join("rootfs");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("removing {}", context.display()))?;
    }
    for dir in [
        "usr/bin",
        "tmp",
        "etc/governance/policies",
        "var/lib/governance",
        "run/governance",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))
            .with_context(|| format!("creating {}", rootfs.join(dir).display()))?;
    }
    copy(&bin, &rootfs.join("usr/bin/governance"))?;
    let libs = shared_libraries(&bin)?;
    for lib in &libs {
        copy(lib, &rootfs.join(lib.strip_prefix("/").unwrap_or(lib)))?;
    }
    copy(
        Path::new("deploy/kubernetes/Containerfile"),
        &context.join("Containerfile"),
    )?;
    let reference = format!("{NAME}:{tag}");
    progress(&format!(
        "building {reference} with {tool} (the binary and {} libraries)",
        libs.len()
    ));
    run(Command::new(tool)
        .args(["build", "--network=none", "--file"])
        .arg(context.join("Containerfile"))
        .args(["--tag", &reference])
        .arg(&context))?;
    if let Some(path) = archive {
        let path = std::path::absolute(path)?;
        match tool {
            "buildah" => run(Command::new("buildah")
                .arg("push")
                .arg(&reference)
                .arg(format!("oci-archive:{}:{reference}", path.display())))?,
            _ => run(Command::new("podman")
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(&path)
                .arg(&reference))?,
        }
        progress(&format!("saved {reference} to {}", path.display()));
    }
    progress(&format!("built {reference}"));
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The files of the shared libraries (and the dynamic loader) `bin` loads, from `ldd`.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let text = capture(Command::new("ldd").arg(bin))?;
    let libs = parse_ldd(&text);
    if libs.is_empty() && !text.contains("statically linked") {
        bail!("ldd names no libraries for {}:\n{text}", bin.display());
    }
    Ok(libs)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2
/// (0x…)` name files; `linux-vdso.so.1 (0x…)` is the kernel's.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_files() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1b5f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c5a0000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c3b0000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1d6a0000)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
