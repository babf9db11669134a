//! `cargo xtask setup`: install everything the build, the tests and the VM need, idempotently.
//!
//! Each step first checks whether its thing is already there (cheap: a file, a version string, a
//! dpkg status), so a second run takes well under a second. Every other xtask command calls
//! [`ensure`] first, which is why the README's commands work on a fresh machine.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{capture, heartbeat, progress, run};

/// Debian packages: LLVM 22 for bpf-linker, qemu/busybox/cpio/zstd for the VM, bpftool to
/// inspect, curl (the demo agent's HTTP client in the VM, and a client of the compatibility
/// suite), python3-venv (the compatibility suite's Python packages live in a venv), and the
/// developer tools an agent runs in the VM's legitimate-work test: Debian's Python 3.11 with
/// pip, and git. rsyslog with its GnuTLS driver: the syslog exporter's tests send to a real
/// rsyslogd (governance-userspace/src/export/tests.rs). chromium: the compliance report test
/// renders the report in it (tests/tests/report_browser.rs).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "zstd",
    "bpftool",
    "curl",
    "python3-venv",
    "python3.11",
    "python3-pip",
    "git",
    "rsyslog",
    "rsyslog-gnutls",
    // Agents as containers (the containers test place): podman with runc, its bridge
    // network (netavark, iptables).
    "podman",
    "runc",
    "netavark",
    "iptables",
    // The compliance report rendered by a real browser (the report test place).
    "chromium",
    // The HTTP compatibility suite's PHP upstream: PHP's built-in server and Symfony's
    // request parsing (tests/compat/server.php).
    "php-cli",
    "php-symfony-http-foundation",
    // Its Sinatra upstream: Ruby, Sinatra 3 on Rack 2.2, on WEBrick (tests/compat/server.rb).
    "ruby",
    "ruby-rack",
    "ruby-sinatra",
    "ruby-webrick",
    // A btrfs filesystem for the host kernel test of identities on it (`stat` reports a
    // subvolume's device there, not the superblock's the kernel keys on).
    "btrfs-progs",
];

/// The package with `qemu-system-x86_64`.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// What an extracted qemu is made of besides [`QEMU_PACKAGE`]: its modules (the TCG
/// accelerator is one) and its firmware (`-kernel` boot with `-nodefaults` reads
/// bios-256k.bin from seabios, linuxboot_dma.bin and kvmvapic.bin from qemu-system-data; the
/// network ROMs of ipxe-qemu only with a NIC). Every other dependency is a shared library,
/// installed with apt.
const QEMU_PIECES: &[&str] = &[
    QEMU_PACKAGE,
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
];

/// `GOVERNANCE_SETUP_QEMU=extract`: use an extracted qemu even where apt could install one
/// (to try that path, or to keep qemu out of the system's packages).
const QEMU_ENV: &str = "GOVERNANCE_SETUP_QEMU";

/// `GOVERNANCE_SETUP_ALLOW_REMOVE=1`: let apt remove packages to install ours (said loudly).
const ALLOW_REMOVE_ENV: &str = "GOVERNANCE_SETUP_ALLOW_REMOVE";

/// bpf-linker 0.13 is the release that links with LLVM 21–23 (we use Debian's LLVM 22).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// cargo-deb, for `cargo xtask deb`.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// A kernel the VM tests boot: one of Debian 12's cloud kernels, whose built-in LSM lists have
/// `bpf`. Packages are `<prefix>N<suffix>`, images `vmlinuz-<series>N...`; the largest N is
/// the newest.
pub struct VmKernel {
    /// What the test summary calls it.
    pub label: &'static str,
    /// What its lines of output start with while the kernels run side by side.
    pub tag: &'static str,
    /// The package name up to the number that grows with each release.
    prefix: &'static str,
    suffix: &'static str,
    /// The image's file name up to that number (after `vmlinuz-`).
    series: &'static str,
    /// The VM tests that start a daemon about the daemon rather than the kernel, that this
    /// kernel runs and the others leave out (see `suite::run`). Each starts its daemon on the
    /// test process's shared set of programs (`governance_tests::shared_pins`), which it adopts
    /// in seconds; with a load of their own each (160 to 180 s of verifying in CI), split four
    /// and four, they made the step 28 and 34 minutes (2026-12-07).
    pub daemon_tests: &'static [&'static str],
}

/// Debian 12's own 6.1 (where the suite was first written) and its 6.12 (the kernel of
/// Debian 13, RHEL 10 and most current distributions: it calls other hooks for some
/// operations, `file_truncate` for ftruncate(2) from 6.2, and its verifier checks what LSM
/// programs return, from 6.10).
pub const VM_KERNELS: [VmKernel; 2] = [
    VmKernel {
        label: "kernel tests, VM 6.1 (BPF LSM)",
        tag: "vm 6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        series: "6.1.0-",
        daemon_tests: &[
            "a_drill_of_the_shipped_example_policies_passes",
            "daemon_events_and_approvals",
            "the_control_socket_name_cannot_be_taken_over",
            "the_daemon_is_never_the_oom_killers_choice",
            "unix_control_plane_is_refused_to_agents",
        ],
    },
    VmKernel {
        label: "kernel tests, VM 6.12 (BPF LSM)",
        tag: "vm 6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
        series: "6.12.",
        daemon_tests: &[
            "a_file_lease_never_stalls_the_proxy",
            "an_agent_holding_every_inotify_instance_does_not_stop_the_daemon",
            "file_opens_are_counted_and_the_count_records_add_up",
        ],
    },
];

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
    // Each step prints as it works (apt, rustup, cargo); the heartbeat covers its quiet parts.
    did |= heartbeat("installing Debian packages", apt_packages)?;
    did |= heartbeat("installing rust-src", nightly_rust_src)?;
    did |= heartbeat("building bpf-linker", bpf_linker)?;
    did |= heartbeat("building cargo-deb", cargo_deb)?;
    for k in &VM_KERNELS {
        did |= heartbeat("downloading the VM kernels", || vm_kernel_of(k))
            .map(|(_, installed)| installed)?;
    }
    did |= heartbeat(
        "installing the HTTP compatibility suite's packages",
        compat_packages,
    )?;
    did |= heartbeat("installing kubectl", kubectl)?;
    if did {
        progress(&format!("setup complete in {:.0?}", started.elapsed()));
    }
    Ok(())
}

/// `cargo xtask setup`: like [`ensure`], but always says what is there.
pub fn setup() -> Result<()> {
    ensure()?;
    progress(&format!(
        "toolchain ready: nightly rust-src, bpf-linker {BPF_LINKER_VERSION} (LLVM 22), cargo-deb {CARGO_DEB_VERSION}, qemu ({}), busybox, cpio, zstd, bpftool, Python 3.11 with pip, git, rsyslog, chromium, btrfs-progs, PHP with Symfony HttpFoundation, Ruby with Sinatra; VM kernels {}; the compatibility suite's packages in {}",
        qemu().program.display(),
        VM_KERNELS
            .iter()
            .map(|k| vm_kernel_of(k).map(|(p, _)| p.display().to_string()))
            .collect::<Result<Vec<_>>>()?
            .join(" and "),
        compat_dir().display()
    ));
    Ok(())
}

/// kubectl (its `kustomize` renders deploy/kubernetes for the manifest checks): any one on
/// PATH will do; else Debian's (kubernetes-client), installed as the other packages are.
fn kubectl() -> Result<bool> {
    let works = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(false);
    }
    progress("installing kubectl (Debian's kubernetes-client)");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    apt_install(&["kubernetes-client"])?;
    Ok(true)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Install what is missing of [`APT_PACKAGES`], never removing a package the user has.
///
/// apt resolves a conflict by removing the other side: on a machine with qemu-utils 10 from
/// bookworm-backports (a source apt was no longer configured with, so it could not even be
/// put back), installing bookworm's qemu-system-x86 7.2 removed it. So every install is
/// simulated first (`apt-get -s`, its `Remv` lines) and run with `--no-remove`.
///
/// For qemu, the one package known to conflict this way, there is a way around: its .debs
/// (the binary, its modules and firmware) are extracted into `cache_dir()/qemu`, like the VM
/// kernel, and run from there (see [`qemu`]); only its shared libraries are installed, with the
/// same check. Anything else that would remove a package stops the setup with the list and the
/// command that accepts it, unless GOVERNANCE_SETUP_ALLOW_REMOVE=1.
fn apt_packages() -> Result<bool> {
    let extract_wanted = std::env::var(QEMU_ENV).is_ok_and(|v| v == "extract");
    let extracted = extracted_qemu().is_some();
    // An extracted qemu stands for the package; so does the wish for one.
    let wanted: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| *p != QEMU_PACKAGE || !(extracted || extract_wanted))
        .collect();
    let mut missing = not_installed(&wanted)?;
    let mut extract = extract_wanted && !extracted;
    if missing.is_empty() && !extract {
        return Ok(false);
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}. Run `cargo xtask setup` as root: it installs them, \
             checking first that apt would remove nothing",
            if missing.is_empty() {
                format!("none, but {QEMU_ENV}=extract asks for an extracted qemu")
            } else {
                missing.join(" ")
            }
        );
    }
    if !missing.is_empty() {
        progress(&format!(
            "installing Debian packages: {} (about a minute)",
            missing.join(" ")
        ));
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    if missing.iter().any(|p| p == QEMU_PACKAGE) {
        let conflict = match apt_removals(&missing) {
            Ok(removed) if removed.is_empty() => None,
            Ok(removed) => Some(format!("remove {}", removed.join(", "))),
            Err(e) => Some(format!("fail ({e:#})")),
        };
        if let Some(conflict) = conflict {
            let rest: Vec<String> = missing
                .iter()
                .filter(|p| *p != QEMU_PACKAGE)
                .cloned()
                .collect();
            // Only when qemu is the cause: otherwise apt_install below refuses and says why.
            if rest.is_empty() || apt_removals(&rest).is_ok_and(|r| r.is_empty()) {
                progress(&format!(
                    "installing {QEMU_PACKAGE} with apt would {conflict}: extracting it into {} \
                     instead, your packages stay as they are",
                    qemu_dir().display()
                ));
                missing = rest;
                extract = true;
            }
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    if extract {
        extract_qemu()?;
    }
    Ok(true)
}

/// Which of `packages` dpkg does not list as installed.
fn not_installed<S: AsRef<str>>(packages: &[S]) -> Result<Vec<String>> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    // Unknown names make dpkg-query exit non-zero; what it lists is still right.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Status}\n"])
        .args(packages.iter().map(AsRef::as_ref))
        .output()
        .context("running dpkg-query (this setup supports Debian and Ubuntu)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| {
            !listing
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .map(str::to_owned)
        .collect())
}

/// What `apt-get install` of `packages` would remove, from a simulation (`apt-get -s`, no
/// root needed, nothing changed).
fn apt_removals<S: AsRef<str>>(packages: &[S]) -> Result<Vec<String>> {
    let sim = capture(
        Command::new("apt-get")
            .args(["-s", "install", "-y", "--no-install-recommends"])
            .args(packages.iter().map(AsRef::as_ref))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("simulating the install (apt-get -s install)")?;
    Ok(removals(&sim))
}

/// The packages a simulated apt run would remove: its `Remv <package> [<version>] ...` lines
/// (`Purg` when purging), as `package (version)`.
fn removals(sim: &str) -> Vec<String> {
    sim.lines()
        .filter_map(|l| l.strip_prefix("Remv ").or_else(|| l.strip_prefix("Purg ")))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let package = words.next()?;
            Some(match words.next().and_then(|v| v.strip_prefix('[')) {
                Some(v) => format!("{package} ({})", v.trim_end_matches(']')),
                None => package.to_owned(),
            })
        })
        .collect()
}

/// `apt-get install` `packages` when a simulation shows it removes nothing; otherwise stop and
/// say what it would remove, unless GOVERNANCE_SETUP_ALLOW_REMOVE=1.
fn apt_install<S: AsRef<str>>(packages: &[S]) -> Result<()> {
    let names: Vec<&str> = packages.iter().map(AsRef::as_ref).collect();
    let removed = apt_removals(&names)?;
    let allow = std::env::var(ALLOW_REMOVE_ENV).is_ok_and(|v| v == "1");
    if !removed.is_empty() {
        if !allow {
            bail!(
                "installing {} with apt would REMOVE {}. Nothing was installed. To accept that, \
                 run as root `apt-get install --no-install-recommends {}` yourself, or run again \
                 with {ALLOW_REMOVE_ENV}=1",
                names.join(" "),
                removed.join(", "),
                names.join(" ")
            );
        }
        progress(&format!(
            "{ALLOW_REMOVE_ENV}=1: installing {} REMOVES {}",
            names.join(" "),
            removed.join(", ")
        ));
    }
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "--no-install-recommends"]);
    if !allow {
        // Should the answer change since the simulation: apt stops rather than remove.
        cmd.arg("--no-remove");
    }
    run(cmd.args(&names).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Where `setup` extracts qemu when it does not install it with apt.
fn qemu_dir() -> PathBuf {
    cache_dir().join("qemu")
}

/// The extracted qemu's root, if there is one (it is renamed into place once it ran).
fn extracted_qemu() -> Option<PathBuf> {
    let root = qemu_dir();
    root.join("usr/bin/qemu-system-x86_64")
        .is_file()
        .then_some(root)
}

/// How to run qemu: the program, and the arguments and environment it needs.
pub struct Qemu {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// The qemu the VM runs: `qemu-system-x86_64` from PATH, or the one [`apt_packages`] extracted
/// (when there is none on PATH, or GOVERNANCE_SETUP_QEMU=extract). The extracted one is told
/// where its firmware is (`-L`, searched before the built-in /usr/share/qemu, which may hold
/// another qemu's files) and its modules (QEMU_MODULE_DIR: TCG is a module in Debian's qemu).
pub fn qemu() -> Qemu {
    const PROGRAM: &str = "qemu-system-x86_64";
    let system = Qemu {
        program: PROGRAM.into(),
        args: Vec::new(),
        env: Vec::new(),
    };
    let Some(root) = extracted_qemu() else {
        return system;
    };
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(PROGRAM).is_file()));
    if on_path && !std::env::var(QEMU_ENV).is_ok_and(|v| v == "extract") {
        return system;
    }
    extracted_qemu_command(&root)
}

fn extracted_qemu_command(root: &Path) -> Qemu {
    let mut args = Vec::new();
    for dir in ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"] {
        args.push("-L".into());
        args.push(root.join(dir).into());
    }
    let env = qemu_module_dir(root)
        .map(|d| ("QEMU_MODULE_DIR".into(), d.into()))
        .into_iter()
        .collect();
    Qemu {
        program: root.join("usr/bin/qemu-system-x86_64"),
        args,
        env,
    }
}

/// `usr/lib/<multiarch>/qemu` under `root`, where the TCG accelerator module is.
fn qemu_module_dir(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root.join("usr/lib"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("qemu"))
        .find(|d| d.join("accel-tcg-x86_64.so").is_file())
}

/// Download qemu-system-x86 and its [`QEMU_PIECES`] (at the versions it names), extract them
/// into [`qemu_dir`], install the shared libraries they need (checked like every install) and
/// check that the result runs and has its firmware.
fn extract_qemu() -> Result<()> {
    let pid = std::process::id();
    let work = cache_dir().join(format!("qemu-download-{pid}"));
    let root = cache_dir().join(format!("qemu-partial-{pid}"));
    for dir in [&work, &root] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::create_dir_all(&work)?;
    progress(&format!(
        "downloading {} to run qemu from {}",
        QEMU_PIECES.join(" "),
        qemu_dir().display()
    ));
    apt_download(&work, &[QEMU_PACKAGE.to_owned()])?;
    let main = debs(&work)?
        .into_iter()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system-x86_"))
        })
        .context("apt-get download produced no qemu-system-x86 .deb")?;
    // qemu-system-common must be the very version of the binary (its modules check).
    let pieces: Vec<String> = deb_depends(&main)?
        .into_iter()
        .filter(|(name, _)| QEMU_PIECES.contains(&name.as_str()))
        .map(|(name, exact)| match exact {
            Some(v) => format!("{name}={v}"),
            None => name,
        })
        .collect();
    apt_download(&work, &pieces)?;
    let mut libraries = BTreeSet::new();
    for deb in debs(&work)? {
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        for (name, _) in deb_depends(&deb)? {
            if !QEMU_PIECES.contains(&name.as_str()) {
                libraries.insert(name);
            }
        }
    }
    let libraries: Vec<String> = libraries.into_iter().collect();
    let missing = not_installed(&libraries)?;
    if !missing.is_empty() {
        progress(&format!(
            "installing the libraries qemu needs: {}",
            missing.join(" ")
        ));
        apt_install(&missing)?;
    }
    check_extracted_qemu(&root)?;
    let dest = qemu_dir();
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&root, &dest)
        .with_context(|| format!("moving the extracted qemu to {}", dest.display()))?;
    std::fs::remove_dir_all(&work)?;
    progress(&format!(
        "qemu ready in {} (not installed with apt)",
        dest.display()
    ));
    Ok(())
}

/// The extracted qemu starts (its libraries resolve), knows the `pc` machine, and has the
/// firmware and TCG module that a `-kernel` boot with `-nodefaults` reads.
fn check_extracted_qemu(root: &Path) -> Result<()> {
    let q = extracted_qemu_command(root);
    let version = capture(
        Command::new(&q.program)
            .arg("--version")
            .envs(q.env.clone()),
    )
    .context("the extracted qemu does not start")?;
    let machines = capture(
        Command::new(&q.program)
            .args(&q.args)
            .args(["-machine", "help"])
            .envs(q.env.clone()),
    )?;
    if !machines.lines().any(|l| l.starts_with("pc ")) {
        bail!("the extracted qemu knows no `pc` machine:\n{machines}");
    }
    let module_dir = qemu_module_dir(root).with_context(|| {
        format!(
            "no accel-tcg-x86_64.so under {}/usr/lib/*/qemu",
            root.display()
        )
    })?;
    for firmware in [
        "usr/share/seabios/bios-256k.bin",
        "usr/share/qemu/linuxboot_dma.bin",
        "usr/share/qemu/kvmvapic.bin",
    ] {
        if !root.join(firmware).is_file() {
            bail!("the extracted qemu has no {firmware}");
        }
    }
    let module = module_dir.join("accel-tcg-x86_64.so");
    let ldd = capture(Command::new("ldd").arg(&module))?;
    if let Some(l) = ldd.lines().find(|l| l.contains("not found")) {
        bail!(
            "{} needs a library that is missing: {}",
            module.display(),
            l.trim()
        );
    }
    progress(&format!(
        "extracted {}",
        version.lines().next().unwrap_or_default()
    ));
    Ok(())
}

/// `apt-get download` into `dir` (as root too: apt's sandbox user cannot write there).
fn apt_download(dir: &Path, packages: &[String]) -> Result<()> {
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .args(packages)
        .current_dir(dir))
}

/// The .deb files in `dir`.
fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect())
}

/// A .deb's Depends, each as (package, the version it must be exactly, if it says `=`).
fn deb_depends(deb: &Path) -> Result<Vec<(String, Option<String>)>> {
    let field = capture(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
    Ok(parse_depends(&field))
}

/// `libfoo1 (>= 1.2), bar (= 1:2.0), baz | qux` -> libfoo1, bar (exactly 1:2.0), baz: the
/// first of alternatives, without an architecture qualifier.
fn parse_depends(field: &str) -> Vec<(String, Option<String>)> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let (name, constraint) = first.split_once('(').unwrap_or((first, ""));
            let name = name.trim().split(':').next()?.to_owned();
            if name.is_empty() {
                return None;
            }
            let exact = constraint
                .trim()
                .strip_prefix('=')
                .map(|v| v.trim().trim_end_matches(')').trim().to_owned());
            Some((name, exact))
        })
        .collect()
}

/// The compatibility suite's scripts and pin files (in the workspace, where xtask runs).
const COMPAT_SCRIPTS: &str = "tests/compat";
/// The files that pin its packages: pip's requirements (every package, exact), npm's manifest
/// and lock.
const COMPAT_PINS: &[&str] = &["requirements.txt", "package.json", "package-lock.json"];

/// Where the compatibility suite's packages are installed: GOVERNANCE_COMPAT_DIR, else
/// `cache_dir()/compat` (the suite's test looks in the same place).
pub fn compat_dir() -> PathBuf {
    std::env::var_os("GOVERNANCE_COMPAT_DIR")
        .map_or_else(|| cache_dir().join("compat"), PathBuf::from)
}

/// What `installed` in [`compat_dir`] holds once the pinned packages are in: the pin files
/// themselves, so that any change to a pin installs again (the test compares it too).
fn compat_stamp(scripts: &Path) -> Result<String> {
    let mut stamp = String::new();
    for f in COMPAT_PINS {
        let path = scripts.join(f);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        stamp.push_str(&format!("== {f}\n{text}"));
    }
    Ok(stamp)
}

/// Install the HTTP compatibility suite's packages at the versions pinned in tests/compat:
/// Python (FastAPI, uvicorn, requests, httpx with h2, aiohttp, the MCP SDK, Tornado) into a
/// venv, and Node (Express 5) with `npm ci`, both under [`compat_dir`]. Nothing is done when
/// the stamp says the pins are installed; a changed pin installs again.
fn compat_packages() -> Result<bool> {
    let scripts = Path::new(COMPAT_SCRIPTS);
    let dir = compat_dir();
    let stamp_file = dir.join("installed");
    let stamp = compat_stamp(scripts)?;
    if std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(false);
    }
    progress(&format!(
        "installing the HTTP compatibility suite's packages (pinned in {COMPAT_SCRIPTS}) into {}",
        dir.display()
    ));
    std::fs::create_dir_all(&dir)?;
    // Written again only once everything is in.
    let _ = std::fs::remove_file(&stamp_file);

    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let usable = Command::new(&python)
        .args(["-c", ""])
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        let base = compat_python()?;
        progress(&format!(
            "creating a venv at {} with {}",
            venv.display(),
            base
        ));
        if venv.exists() {
            std::fs::remove_dir_all(&venv)?;
        }
        run(Command::new(&base).args(["-m", "venv"]).arg(&venv))?;
    }
    progress("pip: installing the pinned Python packages");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(scripts.join("requirements.txt")))?;

    let node_version = capture(Command::new("node").arg("--version"))
        .context("the compatibility suite needs Node.js 18 or later (node and npm on PATH)")?;
    let major: u32 = node_version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        bail!(
            "the compatibility suite needs Node.js 18 or later (fetch, Express 5); found {}",
            node_version.trim()
        );
    }
    let node = dir.join("node");
    std::fs::create_dir_all(&node)?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(scripts.join(f), node.join(f))?;
    }
    progress("npm ci: installing the pinned Node packages");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&node))?;
    std::fs::write(&stamp_file, stamp)?;
    progress(&format!(
        "the compatibility suite's packages are in {}",
        dir.display()
    ));
    Ok(true)
}

/// A Python 3.10+ (the MCP SDK's floor) whose venv module works: `python3` on PATH, else
/// Debian's.
fn compat_python() -> Result<String> {
    const CHECK: &str = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))";
    for candidate in ["python3", "/usr/bin/python3"] {
        if Command::new(candidate)
            .args(["-c", CHECK])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(candidate.to_owned());
        }
    }
    bail!(
        "the compatibility suite needs Python 3.10 or later with its venv module \
         (Debian: python3-venv); neither python3 on PATH nor /usr/bin/python3 will do"
    )
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

/// `cargo deb` at [`CARGO_DEB_VERSION`], built from crates.io if missing or another version.
fn cargo_deb() -> Result<bool> {
    if let Ok(v) = capture(Command::new("cargo-deb").arg("--version"))
        && v.split_whitespace().any(|w| w == CARGO_DEB_VERSION)
    {
        return Ok(false);
    }
    progress(&format!(
        "building cargo-deb {CARGO_DEB_VERSION} (a few minutes)"
    ));
    run(Command::new("cargo")
        .args(["install", "--locked", "--force"])
        .arg(format!("cargo-deb@{CARGO_DEB_VERSION}")))?;
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

/// The first of [`VM_KERNELS`] (6.1), downloading it if needed: the kernel `cargo xtask vm`
/// and the benchmarks boot unless told another. Returns (path, whether it was installed now).
pub fn vm_kernel() -> Result<(PathBuf, bool)> {
    vm_kernel_of(&VM_KERNELS[0])
}

/// `k`'s newest image, downloading it if needed. Returns (path, whether it was installed now).
pub fn vm_kernel_of(k: &VmKernel) -> Result<(PathBuf, bool)> {
    let dir = cache_dir().join("kernel");
    if let Some(existing) = cached_kernel(&dir, k) {
        return Ok((existing, false));
    }
    // apt-cache only knows the packages after an update; a fresh machine may have no lists.
    let mut package = newest_kernel_package(k)?;
    if package.is_none() && is_root() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        package = newest_kernel_package(k)?;
    }
    let Some(package) = package else {
        bail!(
            "no {}N{} package is known to apt; run apt-get update, or pass --kernel PATH to a \
             kernel with BPF LSM",
            k.prefix,
            k.suffix
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
    extract_modules(&work.join("root"), &modules_dir(&dest))?;
    std::fs::copy(&vmlinuz, &dest)?;
    std::fs::remove_dir_all(&work)?;
    Ok((dest, true))
}

/// The modules the VM loads at boot, in order (path under the release's `kernel/`, without
/// `.ko`; whether the kernel may have it built in instead): Debian builds overlayfs (the tests
/// of agents on container filesystems) and btrfs with what it needs (the tests of subvolume
/// identities) as modules, and the VM has no /lib/modules.
const VM_MODULES: &[(&str, bool)] = &[
    ("fs/overlayfs/overlay", false),
    ("lib/zstd/zstd_compress", true),
    ("lib/raid6/raid6_pq", false),
    ("crypto/xor", false),
    ("lib/libcrc32c", false),
    ("fs/btrfs/btrfs", false),
];

/// Where the modules of the kernel image `kernel` are kept, beside it: `NN-name.ko`, loaded in
/// the order of their names.
pub fn modules_dir(kernel: &Path) -> PathBuf {
    let mut name = kernel.file_name().unwrap_or_default().to_os_string();
    name.push(".modules");
    kernel.with_file_name(name)
}

/// Copy [`VM_MODULES`] of the unpacked kernel package `root` into `dest`, decompressed (Debian
/// compresses modules with xz from some releases on).
fn extract_modules(root: &Path, dest: &Path) -> Result<()> {
    let release = std::fs::read_dir(root.join("lib/modules"))
        .or_else(|_| std::fs::read_dir(root.join("usr/lib/modules")))
        .context("the kernel package has no lib/modules")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("kernel").is_dir())
        .context("the kernel package has no lib/modules/RELEASE/kernel")?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    for (n, (module, optional)) in VM_MODULES.iter().enumerate() {
        let base = release.join("kernel").join(module);
        let name = Path::new(module)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let out = dest.join(format!("{n:02}-{name}.ko"));
        let found = [
            ("ko", None),
            ("ko.xz", Some("xz")),
            ("ko.zst", Some("zstd")),
        ]
        .into_iter()
        .map(|(ext, tool)| (base.with_extension(ext), tool))
        .find(|(p, _)| p.exists());
        match found {
            Some((p, None)) => {
                std::fs::copy(&p, &out)?;
            }
            Some((p, Some(tool))) => {
                let done = Command::new(tool)
                    .arg("-dc")
                    .arg(&p)
                    .output()
                    .with_context(|| format!("running {tool} on {}", p.display()))?;
                anyhow::ensure!(
                    done.status.success(),
                    "{tool} -dc {}: {}",
                    p.display(),
                    String::from_utf8_lossy(&done.stderr)
                );
                std::fs::write(&out, done.stdout)?;
            }
            None if *optional => {}
            None => bail!("the kernel package has no kernel/{module}.ko (the VM loads it at boot)"),
        }
    }
    Ok(())
}

/// The newest image of `k` cached in `dir` with its modules beside it (one cached before the
/// modules were kept is downloaded again).
fn cached_kernel(dir: &Path, k: &VmKernel) -> Option<PathBuf> {
    let image = format!("vmlinuz-{}", k.series);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&image) && !n.ends_with(".overlay.ko") && !n.ends_with(".modules")
            })
        })
        .filter(|p| modules_dir(p).join("05-btrfs.ko").exists())
        .collect();
    found.sort_by_key(|p| release(&p.to_string_lossy(), k.series));
    found.pop()
}

/// The number after `series` in a package's or an image's name (`56` of
/// `linux-image-6.1.0-56-cloud-amd64-unsigned`, `118` of `vmlinuz-6.12.118+deb12-cloud-amd64`),
/// for picking the newest.
fn release(name: &str, series: &str) -> u32 {
    name.split(series)
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn newest_kernel_package(k: &VmKernel) -> Result<Option<String>> {
    let out = capture(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!(
            "^{}[0-9]+{}$",
            k.prefix.replace('.', "\\."),
            k.suffix.replace('.', "\\.").replace('+', "\\+")
        ),
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| release(p, k.series))
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kernel's own daemon tests exist in the VM suite and start a daemon on the shared
    /// set, and no test is left to two kernels or to none: a name that drifted would run
    /// nowhere, and a daemon loading a set of its own would verify every program again.
    #[test]
    fn each_daemon_test_left_to_one_kernel_is_a_daemon_test_of_the_suite() {
        let suite = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests/vm_lsm.rs"),
        )
        .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for k in &VM_KERNELS {
            for t in k.daemon_tests {
                assert!(seen.insert(*t), "{t}: left to two kernels");
                let at = suite
                    .find(&format!("\nfn {t}() {{\n"))
                    .unwrap_or_else(|| panic!("{t}: no such test in tests/tests/vm_lsm.rs"));
                let body = &suite[at..];
                let end = body[1..].find("\n#[test]").map_or(body.len(), |e| e + 1);
                let body = &body[..end];
                assert!(body.contains("start_daemon"), "{t}: starts no daemon");
                assert!(
                    body.contains("shared_pins()") && !body.contains("--detach-on-exit"),
                    "{t}: its daemon does not start on the shared set, or detaches it"
                );
            }
        }
        assert!(!seen.is_empty());
    }

    #[test]
    fn finds_what_apt_would_remove() {
        // `apt-get -s install -y --no-install-recommends qemu-system-x86` on a machine with
        // qemu-utils from bookworm-backports.
        let sim = "\
NOTE: This is only a simulation!
Reading package lists...
The following packages will be REMOVED:
  qemu-utils
The following NEW packages will be installed:
  qemu-system-common qemu-system-data qemu-system-x86 seabios
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.13/stable [amd64])
Inst libzstd1 [1.5.4+dfsg2-5] (1.5.4+dfsg2-5+deb12u1 Debian-Security:12/stable-security [amd64])
Remv libfoo:i386 [2.0] [bar:i386 ]
Purg oldthing [0.1]
Conf qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.13/stable [amd64])
";
        assert_eq!(
            removals(sim),
            [
                "qemu-utils (1:10.0.2+ds-2+deb13u1~bpo12+1)",
                "libfoo:i386 (2.0)",
                "oldthing (0.1)"
            ]
        );
        // Upgrades and new packages are not removals.
        assert!(removals("Inst a (1 x [amd64])\nConf a (1 x [amd64])\nRemvx b [1]\n").is_empty());
        assert!(removals("").is_empty());
    }

    #[test]
    fn reads_depends_fields() {
        let deps = parse_depends(
            "libaio1 (>= 0.3.93), qemu-system-common (= 1:7.2+dfsg-7+deb12u18+b3), \
             qemu-system-data (>> 1:7.2+dfsg~), seabios, libc6:any | libc6.1, python3:any (>= 3)",
        );
        let want: Vec<(String, Option<String>)> = [
            ("libaio1", None),
            ("qemu-system-common", Some("1:7.2+dfsg-7+deb12u18+b3")),
            ("qemu-system-data", None),
            ("seabios", None),
            ("libc6", None),
            ("python3", None),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
        .collect();
        assert_eq!(deps, want);
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn picks_the_newest_kernel_abi() {
        let [old, new] = &VM_KERNELS;
        assert_eq!(
            release("linux-image-6.1.0-56-cloud-amd64-unsigned", old.series),
            56
        );
        assert_eq!(release("vmlinuz-6.1.0-9-cloud-amd64", old.series), 9);
        assert_eq!(
            release(
                "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
                new.series
            ),
            118
        );
        assert_eq!(release("vmlinuz-6.12.41+deb12-cloud-amd64", new.series), 41);
        assert_eq!(release("garbage", old.series), 0);
    }
}
