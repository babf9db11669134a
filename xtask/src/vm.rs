//! The VM harness: an initramfs with our binaries and busybox, booted under qemu on a kernel
//! with BPF LSM, running one command as root and handing back its exit status.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{HEARTBEAT, capture, heartbeat, progress, run, setup};

/// Printed by /init after the command; carries its exit status out through the serial console.
const EXIT_SENTINEL: &str = "GOVERNANCE-VM-EXIT:";

/// /init: mount what the daemon and tests need, bring up loopback, run /governance/cmd.sh.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/governance/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# POSIX semaphores and shared memory (sem_open, shm_open: Python's multiprocessing) live here.
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
# Debian builds overlayfs and btrfs as modules; xtask keeps them beside the kernel image.
for m in /governance/modules/*.ko; do [ -f "$m" ] && insmod "$m"; done
ip link set lo up
echo "governance-vm: Linux $(uname -r), active LSMs: $(cat /sys/kernel/security/lsm)"
cd /governance
sh /governance/cmd.sh
echo "GOVERNANCE-VM-EXIT: $?"
sync
poweroff -f
"#;

/// What goes into the VM and what runs there.
pub struct Spec {
    pub kernel: PathBuf,
    /// (host file, absolute guest path). Executables and shared objects get their shared
    /// libraries added. A symlink to a file beside it (`python3 -> python3.11`) stays a symlink,
    /// so that both names are one file; any other symlink is copied as the file it names.
    pub files: Vec<(PathBuf, String)>,
    /// Shell script run as root by /init; its exit status is the VM's.
    pub script: String,
    pub timeout: Duration,
    pub memory_mib: u32,
    /// Emulate both vCPUs on one host thread (see [`boot`]): the tests, which attach and
    /// detach programs while processes run. The kernel bench keeps a thread per vCPU, so that
    /// its daemon has a host core of its own, as in its earlier runs; it attaches once per
    /// measurement, before the loop starts.
    pub one_thread: bool,
    /// Put before each line the guest prints and each progress line, when VMs run side by
    /// side (the suite's kernels).
    pub tag: Option<String>,
}

/// The result of a VM run.
pub struct Outcome {
    pub status: i32,
    pub output: Vec<String>,
}

/// Build the initramfs for `spec` under `work` and boot it.
pub fn boot(spec: &Spec, work: &Path) -> Result<Outcome> {
    let tag = spec
        .tag
        .as_deref()
        .map(|t| format!("[{t}] "))
        .unwrap_or_default();
    let initrd = heartbeat(&format!("{tag}building the initramfs"), || {
        build_initramfs(spec, work, &tag)
    })?;
    // A small scratch disk (NVMe, whose driver this kernel has built in): the tests need a
    // real block device (/dev/nvme0n1) and its raw character view (/dev/ng0n1).
    let disk = work.join("scratch-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).context("writing the scratch disk image")?;
    // And an empty btrfs (a second NVMe device, serial `btrfs`): the tests of files in
    // subvolumes, which they create in it.
    let btrfs = work.join("btrfs-disk.img");
    std::fs::File::create(&btrfs)
        .and_then(|f| f.set_len(128 << 20))
        .context("creating the btrfs disk image")?;
    run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&btrfs))
        .context("mkfs.btrfs (btrfs-progs; `cargo xtask setup` installs it)")?;
    // The system's qemu, or the copy `setup` extracted into its cache (with its firmware
    // directories and modules) when installing it with apt would have removed a package.
    let qemu = setup::qemu();
    let mut cmd = Command::new(&qemu.program);
    cmd.args(&qemu.args).envs(qemu.env.clone());
    cmd.arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&initrd)
        // A guest that locks up panics (softlockup_panic), printing every CPU's stack at
        // loglevel 5, instead of hanging until the deadline; watchdog_thresh=60 reports a CPU
        // only after 120 s without scheduling, which a busy host does not cause.
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=5 watchdog_thresh=60 softlockup_panic=1 \
             softlockup_all_cpu_backtrace=1 rdinit=/init",
        ])
        .args([
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            "2",
            "-cpu",
            "max",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=scratch,format=raw",
            disk.display()
        ))
        .args(["-device", "nvme,serial=governance,drive=scratch"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=btrfs,format=raw",
            btrfs.display()
        ))
        .args(["-device", "nvme,serial=btrfs,drive=btrfs"])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Software emulation by default: nested KVM on these machines exposes /dev/kvm but aborts
    // at the first vCPU setup. GOVERNANCE_VM_ACCEL=kvm opts in where KVM works.
    //
    // For the tests, one host thread runs both vCPUs (thread=single). With a thread per vCPU,
    // qemu 7.2 (Debian 12's) can keep executing a stale translation of kernel code that
    // another vCPU has just rewritten: attaching or detaching a BPF LSM program rewrites the hook
    // function's first instruction (text_poke_bp: int3, then the call), and a vCPU caught in
    // the middle ran the int3 forever (the kernel's int3 handler finds the call in memory and
    // sends it back to re-run it). The guest locked up with `RIP: bpf_lsm_mmap_file+0x0`, its
    // code bytes showing the call, in two of seven runs of the suite (or part of it) and
    // within five minutes of loading and unloading the programs while processes exec. A
    // single thread cannot translate while another vCPU writes. The suite takes about 40 %
    // longer this way (14 minutes against 10 from a fresh clone). On hardware (and KVM) the
    // CPU keeps cross-modified code coherent.
    let accel = std::env::var("GOVERNANCE_VM_ACCEL").unwrap_or_else(|_| {
        if spec.one_thread {
            "tcg,thread=single".into()
        } else {
            "tcg".into()
        }
    });
    cmd.args(["-accel", &accel]);
    progress(&format!(
        "{tag}booting {} in {} (timeout {:?})",
        spec.kernel.display(),
        qemu.program.display(),
        spec.timeout
    ));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.program.display()))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    let deadline = started + spec.timeout;
    let mut output = Vec::new();
    let mut status = None;
    let mut panic_line = None;
    // The guest's own output is its progress; after a quiet HEARTBEAT (a long test, the boot
    // under software emulation) we say that it is still running.
    let mut last_output = started;
    let mut next_beat = started + HEARTBEAT;
    loop {
        let wake = deadline.min(next_beat);
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                last_output = Instant::now();
                next_beat = last_output + HEARTBEAT;
                // Locked for each line: another VM's thread prints between them.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{tag}{line}");
                let _ = out.flush();
                // The command's last line may lack its newline: the sentinel can end a line.
                if let Some((_, code)) = line.rsplit_once(EXIT_SENTINEL) {
                    status = code.trim().parse::<i32>().ok();
                }
                if line.contains("Kernel panic") {
                    panic_line = Some(line.clone());
                }
                output.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                progress(&format!(
                    "{tag}still running in the VM: {} s elapsed, no output for {} s (gives up at {} s)",
                    started.elapsed().as_secs(),
                    last_output.elapsed().as_secs(),
                    spec.timeout.as_secs()
                ));
                next_beat = Instant::now() + HEARTBEAT;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // We started qemu; we end it, by its pid.
                let _ = child.kill();
                let _ = child.wait();
                let last: Vec<_> = output.iter().rev().take(5).rev().cloned().collect();
                bail!(
                    "the VM did not finish within {:?} (hung guest or a test stuck); last output:\n  {}",
                    spec.timeout,
                    last.join("\n  ")
                );
            }
        }
    }
    let _ = reader.join();
    let qemu_status = child.wait().context("waiting for qemu")?;
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    if let Some(line) = panic_line {
        bail!("the guest kernel panicked: {line}");
    }
    let Some(status) = status else {
        bail!(
            "the VM stopped without reporting the command's exit status (qemu {qemu_status}){}",
            if qemu_stderr.trim().is_empty() {
                String::new()
            } else {
                format!("; qemu said:\n{}", qemu_stderr.trim())
            }
        );
    };
    progress(&format!(
        "{tag}VM finished in {:.1?} with status {status}",
        started.elapsed()
    ));
    Ok(Outcome { status, output })
}

fn build_initramfs(spec: &Spec, work: &Path, tag: &str) -> Result<PathBuf> {
    let root = work.join("initramfs");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "governance",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found; `cargo xtask setup` installs busybox-static")?;
    place(&busybox, &root.join("bin/busybox"), false)?;
    write_exec(&root.join("init"), INIT)?;
    write_exec(&root.join("governance/cmd.sh"), &spec.script)?;
    std::fs::create_dir_all(root.join("governance/modules"))?;
    for module in std::fs::read_dir(crate::setup::modules_dir(&spec.kernel))
        .into_iter()
        .flatten()
        .flatten()
    {
        std::fs::copy(
            module.path(),
            root.join("governance/modules").join(module.file_name()),
        )?;
    }

    let mut libs = std::collections::BTreeSet::new();
    for (host, guest) in &spec.files {
        let dest = root.join(guest.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if let Ok(target) = std::fs::read_link(host)
            && target.components().count() == 1
        {
            std::os::unix::fs::symlink(&target, &dest)
                .with_context(|| format!("linking {} in the initramfs", dest.display()))?;
            continue;
        }
        let executable = is_dynamic_elf(host);
        place(host, &dest, executable)?;
        if executable {
            libs.extend(shared_libraries(host)?);
        }
    }
    for lib in libs {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }

    // zstd rather than gzip -1: smaller (42 against 50 MiB with Python and git in the image),
    // made in a third of the time, and unpacked a little faster by the emulated guest. Linux
    // reads a zstd initramfs since 5.9 (CONFIG_RD_ZSTD; Debian's kernels have it).
    let initrd = work.join("initramfs.cpio.zst");
    run(Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            "find . -print0 | cpio --null --create --format=newc --quiet | zstd -3 -T0 -q > \"$0\"",
        ])
        .arg(&initrd)
        .current_dir(&root))?;
    let size = std::fs::metadata(&initrd)?.len();
    progress(&format!(
        "{tag}initramfs ready: {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / 1048576.0
    ));
    Ok(initrd)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copy a file into the image; strip debug info from our (large, debug-built) executables.
/// The copy keeps the file's modification time: Python checks its bytecode caches
/// (`__pycache__/*.pyc`) against their source's, and would otherwise recompile every module
/// (and try to write the caches back) at each import.
fn place(host: &Path, dest: &Path, strip: bool) -> Result<()> {
    let stripped = strip
        && Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(host)
            .status()
            .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(host, dest)
            .with_context(|| format!("copying {} into the initramfs", host.display()))?;
    }
    let modified = std::fs::metadata(host)?.modified()?;
    // (futimens needs the file's owner, not write access: a read-only copy is fine.)
    std::fs::File::open(dest)?
        .set_modified(modified)
        .with_context(|| format!("setting the time of {}", dest.display()))?;
    Ok(())
}

fn is_dynamic_elf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && head == *b"\x7fELF"
        && capture(Command::new("ldd").arg(path)).is_ok_and(|o| o.contains("=>"))
}

/// The shared libraries (and the dynamic loader) an executable needs, from ldd.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = capture(Command::new("ldd").arg(exe))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Quote a word for the guest's shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn finds_shared_libraries_of_a_dynamic_executable() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}
