//! `cargo xtask deb [--test]`: the Debian package, and its test.
//!
//! The test installs the package with dpkg into a throwaway copy of this very system (an
//! overlay over `/` whose writes go to a tmpfs, in a mount namespace of its own, with a network
//! namespace of its own, a fresh bpffs at /sys/fs/bpf and a fresh /run and /tmp), so that the
//! host is never changed and its pins, sockets and ports are never touched. There it checks the
//! installed files, runs `systemd-analyze verify` on the unit (and prints `systemd-analyze
//! security --offline`'s score), then starts the unit's ExecStart the way systemd would: a clean
//! environment, the unit's CapabilityBoundingSet and NoNewPrivileges (setpriv), its
//! LimitMEMLOCK (prlimit), its state and runtime directories, and NOTIFY_SOCKET pointing to a
//! socket the test reads. It waits for READY=1, asks `governance status`, stops the daemon with
//! SIGTERM (STOPPING=1, exit 0) and unloads the programs.
//!
//! What it cannot show, with no systemd running here: that systemd itself starts the unit, and
//! that the daemon works under the unit's file-system sandboxing (ProtectSystem=strict,
//! ProtectHome=read-only, ...), which only systemd applies.

use std::{
    io::BufRead as _,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Counts, capture, progress, run, setup::is_root, target_dir, workspace_root};

/// The completion scripts the package installs: (shell, file in target/deb-extra).
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "governance.bash"),
    ("zsh", "_governance"),
    ("fish", "governance.fish"),
];

/// How long the daemon may take to say READY=1 (the unit's TimeoutStartSec) and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Build the release binary, its completion scripts and the package; returns the .deb.
pub fn build() -> Result<PathBuf> {
    progress("building governance (release) for the package");
    run(Command::new("cargo").args(["build", "--release", "-p", "governance-userspace"]))?;
    package(&target_dir().join("release/governance"), &[])
}

/// Package `bin` (cargo-deb takes the binary from the profile's directory: `--profile dev`
/// for target/debug) with its completion scripts; returns the .deb.
fn package(bin: &Path, cargo_deb_args: &[&str]) -> Result<PathBuf> {
    // Where governance-userspace's [package.metadata.deb] assets expect them.
    let extra = workspace_root().join("target/deb-extra");
    std::fs::create_dir_all(&extra)?;
    for (shell, file) in COMPLETIONS {
        let script = capture(Command::new(bin).args(["completions", shell]))?;
        std::fs::write(extra.join(file), script)?;
    }
    progress("packaging with cargo-deb");
    let out = capture(
        Command::new("cargo")
            .args(["deb", "-p", "governance-userspace", "--no-build"])
            .args(cargo_deb_args),
    )?;
    let deb = out
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb named no .deb")?;
    progress(&format!("built {}", deb.display()));
    Ok(deb)
}

/// `deb --test`: run [`inside`] in new mount and network namespaces.
pub fn test(deb: &Path) -> Result<()> {
    let started = Instant::now();
    let (ok, c) = counted(deb)?;
    if !ok {
        bail!("the package test failed after {} checks passed", c.passed);
    }
    progress(&format!(
        "package test passed in {:.0?}: {} checks passed, 0 failed",
        started.elapsed(),
        c.passed
    ));
    Ok(())
}

/// The package test as a place of `cargo xtask test`: `bin`, the debug build the other places
/// test, packaged (cargo-deb `--profile dev --fast`: it strips the binary; the fast compression
/// saves most of a minute) and tested as [`test`] does, each check counted (`package test: ok
/// CHECK` lines); a test that stops early counts one failure.
pub fn place(bin: &Path) -> Result<(bool, Counts)> {
    let deb = package(bin, &["--profile", "dev", "--fast"])?;
    counted(&deb)
}

/// Run [`inside`] in new mount and network namespaces, echoing its output and counting its
/// checks.
fn counted(deb: &Path) -> Result<(bool, Counts)> {
    if !is_root() {
        bail!("the package test needs root (dpkg, mounts, namespaces, eBPF)");
    }
    let deb = deb
        .canonicalize()
        .with_context(|| format!("finding {}", deb.display()))?;
    let work = PathBuf::from(format!("/tmp/governance-deb-test-{}", std::process::id()));
    let mut child = Command::new("unshare")
        .args(["--mount", "--net", "--"])
        .arg(std::env::current_exe()?)
        .arg("deb-test-inside")
        .arg(&deb)
        .env("GOVERNANCE_DEB_TEST_DIR", &work)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the package test (unshare)")?;
    let mut c = Counts::default();
    let stdout = child.stdout.take().context("stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with(CHECKED) {
            c.passed += 1;
        }
    }
    let status = child.wait()?;
    // The mounts went with the namespace; the empty mount point stays on the host.
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        c.failed += 1;
    }
    Ok((status.success(), c))
}

/// What [`inside`] prints (on stdout) for each check that passed.
const CHECKED: &str = "package test: ok ";

fn passed(check: &str) {
    println!("{CHECKED}{check}");
}

/// A program in the throwaway system.
fn chroot(root: &Path, program: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).arg(program);
    c
}

fn sh(args: &[&str]) -> Result<()> {
    run(Command::new(args[0]).args(&args[1..]))
}

/// The daemon, stopped (by its pid) if the test ends early.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0
            && c.try_wait().is_ok_and(|s| s.is_none())
        {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// The test, inside its namespaces (see the module doc).
pub fn inside(deb: &Path) -> Result<()> {
    let work = PathBuf::from(
        std::env::var_os("GOVERNANCE_DEB_TEST_DIR").context("GOVERNANCE_DEB_TEST_DIR unset")?,
    );
    // Nothing mounted here reaches the host.
    sh(&["mount", "--make-rprivate", "/"])?;
    std::fs::create_dir_all(&work)?;
    let w = |p: &str| work.join(p).to_string_lossy().into_owned();
    sh(&["mount", "-t", "tmpfs", "tmpfs", &w("")])?;
    for d in ["upper", "work", "root"] {
        std::fs::create_dir(work.join(d))?;
    }
    let options = format!("lowerdir=/,upperdir={},workdir={}", w("upper"), w("work"));
    sh(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &options,
        &w("root"),
    ])?;
    let root = work.join("root");
    let r = |p: &str| {
        root.join(p.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned()
    };
    for d in ["/proc", "/sys", "/dev"] {
        sh(&["mount", "--rbind", d, &r(d)])?;
    }
    for d in ["/run", "/tmp"] {
        sh(&["mount", "-t", "tmpfs", "tmpfs", &r(d)])?;
    }
    // A bpffs of its own: the pins are the test's alone, and go with it.
    sh(&["mount", "-t", "bpf", "bpf", &r("/sys/fs/bpf")])?;
    sh(&["ip", "link", "set", "lo", "up"])?;

    // Install.
    std::fs::copy(deb, r("/tmp/governance.deb"))?;
    progress("dpkg -i the package into a throwaway overlay of this system");
    run(chroot(&root, "dpkg")
        .args(["-i", "/tmp/governance.deb"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    passed("dpkg -i installs the package");
    let unit_path = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(|d| format!("{d}/governance.service"))
        .find(|p| Path::new(&r(p)).exists())
        .context("the package installed no governance.service")?;
    for f in [
        "/usr/bin/governance",
        "/etc/governance/config.yaml",
        "/etc/governance/policies/example.yaml",
        "/usr/share/bash-completion/completions/governance",
        "/usr/share/zsh/vendor-completions/_governance",
        "/usr/share/fish/vendor_completions.d/governance.fish",
        "/usr/share/doc/governance/copyright",
        "/etc/systemd/system/multi-user.target.wants/governance.service",
    ] {
        if std::fs::symlink_metadata(r(f)).is_err() {
            bail!("the package did not install {f}");
        }
    }
    passed(
        "it installs the binary, the unit (enabled), the config, the policies, the completions, the docs",
    );
    let conffiles = std::fs::read_to_string(r("/var/lib/dpkg/info/governance.conffiles"))
        .context("the package has no conffiles")?;
    for f in [
        "/etc/governance/config.yaml",
        "/etc/governance/policies/example.yaml",
    ] {
        if !conffiles.lines().any(|l| l.trim() == f) {
            bail!("{f} is not a conffile (an upgrade would overwrite the operator's edits)");
        }
    }
    passed("the config and the policies are conffiles");
    run(chroot(&root, "/usr/bin/governance").args([
        "policy",
        "check",
        "/etc/governance/policies",
    ]))?;
    passed("governance policy check accepts the installed policies");

    // The unit, as systemd reads it.
    progress(&format!("systemd-analyze verify {unit_path}"));
    let verify = chroot(&root, "systemd-analyze")
        .args(["verify", &unit_path])
        .output()?;
    let said = String::from_utf8_lossy(&verify.stderr);
    if !verify.status.success() || said.contains("governance.service") {
        bail!(
            "systemd-analyze verify {unit_path}: {}\n{said}",
            verify.status
        );
    }
    passed("systemd-analyze verify accepts the unit");
    if let Ok(sec) =
        capture(chroot(&root, "systemd-analyze").args(["security", "--offline=true", &unit_path]))
        && let Some(score) = sec.lines().find(|l| l.contains("Overall exposure level"))
    {
        progress(&format!("systemd-analyze security: {}", score.trim()));
    }
    let unit = std::fs::read_to_string(r(&unit_path))?;
    let directive = |key: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .next_back()
            .map(str::to_owned)
    };
    let exec_start = directive("ExecStart").context("the unit has no ExecStart")?;
    if directive("Type").as_deref() != Some("notify") {
        bail!("the unit is not Type=notify");
    }
    passed("the unit is Type=notify with an ExecStart");

    // Start it as systemd would.
    for (dir, mode) in [
        ("StateDirectory", "StateDirectoryMode"),
        ("RuntimeDirectory", "RuntimeDirectoryMode"),
    ] {
        if let Some(name) = directive(dir) {
            let base = if dir == "StateDirectory" {
                "/var/lib"
            } else {
                "/run"
            };
            let path = r(&format!("{base}/{name}"));
            std::fs::create_dir_all(&path)?;
            let mode = directive(mode).map_or(Ok(0o755), |m| u32::from_str_radix(&m, 8))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    // This host's kernel may refuse BPF LSM programs (exec and file enforcement); the node's
    // config then allows running degraded, the way an operator would say it.
    let config = r("/etc/governance/config.yaml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("\n# added by the package test\nallow_degraded: true\n");
    std::fs::write(&config, text)?;

    let notify = UnixDatagram::bind(r("/run/notify.sock"))?;
    let mut cmd = chroot(&root, "prlimit");
    if let Some(memlock) = directive("LimitMEMLOCK") {
        if has_cap_sys_resource()? {
            // systemd's `infinity` is prlimit's `unlimited`.
            let memlock = memlock.replace("infinity", "unlimited");
            cmd.arg(format!("--memlock={memlock}:{memlock}"));
        } else {
            progress(&format!(
                "LimitMEMLOCK={memlock} not applied: this machine withholds CAP_SYS_RESOURCE \
                 (kernels from 5.11 do not charge BPF maps to memlock)"
            ));
        }
    }
    cmd.args(["--", "setpriv"]);
    if let Some(caps) = directive("CapabilityBoundingSet") {
        let caps: Vec<String> = caps
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")));
    }
    if directive("NoNewPrivileges").as_deref() == Some("yes") {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--").args(exec_start.split_whitespace());
    let log = work.join("daemon.log");
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NOTIFY_SOCKET", "/run/notify.sock")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    progress(&format!("starting the unit's ExecStart: {exec_start}"));
    let started = Instant::now();
    let mut daemon = Daemon(Some(cmd.spawn().context("starting the daemon")?));
    let Some(child) = daemon.0.as_mut() else {
        unreachable!()
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_for(&notify, "READY=1", START_TIMEOUT, child)
        .with_context(|| format!("waiting for READY=1; the daemon's log:\n{}", log_text()))?;
    progress(&format!(
        "READY=1 after {:.1?} ({})",
        started.elapsed(),
        ready.replace('\n', "; ")
    ));
    passed("the unit's ExecStart, as systemd runs it, says READY=1");

    // It answers, and says which build it is.
    let version = capture(chroot(&root, "/usr/bin/governance").args(["version", "-o", "json"]))?;
    let version: serde_json::Value = serde_json::from_str(&version)?;
    let status = chroot(&root, "/usr/bin/governance")
        .args(["status", "-o", "json"])
        .output()?;
    // 0: every hook attached; 3: degraded (this host's kernel).
    if !matches!(status.status.code(), Some(0 | 3)) {
        bail!(
            "governance status: {}: {}",
            status.status,
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)
        .with_context(|| String::from_utf8_lossy(&status.stdout).into_owned())?;
    if status["version"] != version || status["generation"] != 1 {
        bail!("governance status says {status}; expected generation 1 and version {version}");
    }
    if status["agents"] != 0 {
        bail!(
            "the installed policy directory governs {} agents, not none",
            status["agents"]
        );
    }
    progress(&format!(
        "governance status: generation 1, no agents, version {version}"
    ));
    passed("governance status: generation 1, no agents, the package's version");
    // Under the unit's bounding set, what it keeps after start (docs/operations.md): with the
    // proxy on (the unit's default), CAP_NET_RAW too, to mark the proxy's listeners in agents'
    // network namespaces (red team round 29).
    let kept = serde_json::json!({
        "daemon": [
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_NET_RAW",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE"
        ],
        "proxy": [],
    });
    if status["capabilities"] != kept {
        bail!(
            "after start the daemon holds {}; expected {kept}",
            status["capabilities"]
        );
    }
    passed("after start it keeps only the documented capabilities; its proxy threads none");

    // Stop as systemd would: SIGTERM, STOPPING=1, exit 0.
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(&notify, "STOPPING=1", STOP_TIMEOUT, child)
        .with_context(|| format!("waiting for STOPPING=1; the daemon's log:\n{}", log_text()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut c = daemon.0.take().context("the daemon is gone")?;
    let pid = c.id();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait());
    });
    let exit = match rx.recv_timeout(STOP_TIMEOUT) {
        Ok(exit) => exit?,
        Err(_) => {
            // SAFETY: as above; the waiting thread reaps it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("the daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
    };
    if !exit.success() {
        bail!(
            "the daemon exited with {exit} (signal {:?}); its log:\n{}",
            exit.signal(),
            log_text()
        );
    }
    passed("SIGTERM: STOPPING=1, exit 0");
    // The programs stay attached after a stop (fail closed); take them away.
    run(chroot(&root, "/usr/bin/governance").arg("unload"))?;
    passed("governance unload removes the programs");
    Ok(())
}

/// Whether this process may raise a hard resource limit (some sandboxes withhold it from root).
fn has_cap_sys_resource() -> Result<bool> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    Ok(eff & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Read notifications until one has `want` as a line; fails at the deadline or when the
/// daemon exits first.
fn wait_for(
    socket: &UnixDatagram,
    want: &str,
    timeout: Duration,
    daemon: &mut std::process::Child,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no {want} within {timeout:?}");
        }
        // Bounded, so that a daemon that died is noticed.
        socket.set_read_timeout(Some(left.min(Duration::from_secs(1))))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return Ok(msg);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(status) = daemon.try_wait()? {
                    bail!("the daemon exited with {status} before {want}");
                }
            }
            Err(e) => return Err(e).context("reading NOTIFY_SOCKET"),
        }
    }
}
