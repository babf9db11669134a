//! What goes into the VM: the files of its image (binaries, the eBPF object, Python and the
//! developer tools the tests use), and booting it with them.

use super::*;

/// Everything the VM image holds.
pub(super) fn image_files(b: &Built) -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![
        (
            b.governance.clone(),
            "/governance/bin/governance".to_owned(),
        ),
        (
            b.helper.clone(),
            "/governance/bin/redteam-helper".to_owned(),
        ),
    ];
    for t in &b.vm_tests {
        let name = t.file_name().unwrap_or_default().to_string_lossy();
        // cargo names test executables `<target>-<hash>`; drop the hash.
        let name = name.rsplit_once('-').map_or(name.as_ref(), |(n, _)| n);
        files.push((t.clone(), format!("/governance/tests/{name}")));
    }
    // The demo policy is what `governance run` enforces in the VM; the example policies
    // have HTTP rules for the proxy and are exercised by `governance policy test`.
    for (dir, guest) in [("policies/demo", "policies"), ("xtask/demo", "demo")] {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            files.push((path, format!("/governance/{guest}/{name}")));
        }
    }
    if let Some(obj) = ebpf_object() {
        files.push((obj, "/governance/governance.bpf.o".into()));
    }
    for bpftool in ["/usr/sbin/bpftool", "/usr/bin/bpftool"] {
        if Path::new(bpftool).exists() {
            files.push((bpftool.into(), "/usr/sbin/bpftool".into()));
            break;
        }
    }
    // Network tools an agent might reach for, as separate copies of busybox (busybox picks the
    // applet from argv[0]): each is its own file, so a policy can block it without blocking
    // every other busybox applet.
    let busybox = PathBuf::from("/bin/busybox");
    // (`busybox --install` would otherwise make them symlinks to busybox itself, and a rule that
    // blocks one would block every applet.)
    for tool in ["nc", "wget", "ash"] {
        files.push((busybox.clone(), format!("/usr/bin/{tool}")));
    }
    // A real HTTP client for the demo agent (busybox's static wget cannot resolve names).
    if Path::new("/usr/bin/curl").exists() {
        files.push(("/usr/bin/curl".into(), "/usr/bin/curl".into()));
    }
    developer_tools(&mut files)?;
    Ok(files)
}

/// Debian's Python standard library, less what no agent's work in the VM needs: tests, the Tk
/// GUI and IDLE, bundled docs, 2to3, ensurepip's wheels, the static library for embedding, and
/// test or example extension modules (a third of its size).
pub(super) const PYTHON_STDLIB: &str = "/usr/lib/python3.11";
pub(super) const PYTHON_STDLIB_SKIP: &[&str] = &[
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "config-3.11-x86_64-linux-gnu",
    "site-packages",
    "dist-packages",
    // Extension modules for tests and examples, and for Berkeley DB, crypt(3), terminals and
    // audio, which no tool here uses.
    "_ctypes_test.cpython-311-x86_64-linux-gnu.so",
    "_testbuffer.cpython-311-x86_64-linux-gnu.so",
    "_testcapi.cpython-311-x86_64-linux-gnu.so",
    "_testclinic.cpython-311-x86_64-linux-gnu.so",
    "_testimportmultiple.cpython-311-x86_64-linux-gnu.so",
    "_testinternalcapi.cpython-311-x86_64-linux-gnu.so",
    "_testmultiphase.cpython-311-x86_64-linux-gnu.so",
    "_xxsubinterpreters.cpython-311-x86_64-linux-gnu.so",
    "_xxtestfuzz.cpython-311-x86_64-linux-gnu.so",
    "xxlimited.cpython-311-x86_64-linux-gnu.so",
    "xxlimited_35.cpython-311-x86_64-linux-gnu.so",
    "_dbm.cpython-311-x86_64-linux-gnu.so",
    "_crypt.cpython-311-x86_64-linux-gnu.so",
    "_curses.cpython-311-x86_64-linux-gnu.so",
    "_curses_panel.cpython-311-x86_64-linux-gnu.so",
    "readline.cpython-311-x86_64-linux-gnu.so",
    "nis.cpython-311-x86_64-linux-gnu.so",
    "ossaudiodev.cpython-311-x86_64-linux-gnu.so",
];

/// The tools of `legitimate_work_keeps_running` (tests/tests/vm_lsm.rs), as Debian installs
/// them (`cargo xtask setup` does): Python 3.11 with its standard library (the extension
/// modules bring their libraries: libssl, libsqlite3, libffi, ...) and its bytecode caches
/// (without them every import compiles under the VM's emulated CPU), pip, and git with its
/// templates. Git's `init`, `add`, `commit` and `log` are built into /usr/bin/git:
/// /usr/lib/git-core is left out.
pub(super) fn developer_tools(files: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for exe in ["/usr/bin/python3.11", "/usr/bin/python3", "/usr/bin/git"] {
        if !Path::new(exe).exists() {
            bail!("{exe} not found; `cargo xtask setup` installs python3-pip and git");
        }
        files.push((exe.into(), exe.into()));
    }
    add_tree(Path::new(PYTHON_STDLIB), PYTHON_STDLIB_SKIP, files)?;
    // What `git init` copies into a new repository (a description, info/exclude, sample hooks).
    add_tree(Path::new("/usr/share/git-core/templates"), &[], files)?;
    // pip and its metadata (pip-<version>.dist-info), without the rest of dist-packages.
    let dist = Path::new("/usr/lib/python3/dist-packages");
    let mut pip = 0;
    for entry in std::fs::read_dir(dist).with_context(|| format!("reading {}", dist.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "pip" || (name.starts_with("pip-") && name.ends_with(".dist-info")) {
            add_tree(&entry.path(), &[], files)?;
            pip += 1;
        }
    }
    if pip != 2 {
        bail!(
            "pip not found in {}; `cargo xtask setup` installs python3-pip",
            dist.display()
        );
    }
    Ok(())
}

/// Every file below `dir` (at the same path in the guest), except the entries named in `skip`.
pub(super) fn add_tree(
    dir: &Path,
    skip: &[&str],
    files: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if skip.iter().any(|s| entry.file_name() == **s) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            add_tree(&path, skip, files)?;
        } else {
            files.push((path.clone(), path.to_string_lossy().into_owned()));
        }
    }
    Ok(())
}

pub(super) fn boot(
    kernel: Option<PathBuf>,
    b: &Built,
    script: String,
    timeout: Duration,
    tag: Option<&str>,
) -> Result<vm::Outcome> {
    let kernel = match kernel {
        Some(k) => k,
        None => setup::vm_kernel()?.0,
    };
    let spec = vm::Spec {
        kernel,
        files: image_files(b)?,
        script,
        timeout,
        memory_mib: 1536,
        one_thread: true,
        tag: tag.map(str::to_owned),
    };
    // A VM running beside another (of another kernel, tagged, or of the same one) has an image
    // and a disk of its own: the first work directory of its kernel no running VM holds.
    let kernel_dir = target_dir()
        .join("governance-vm")
        .join(tag.unwrap_or_default().replace(' ', "-"));
    let (work, _held) = free_slot(&kernel_dir)?;
    vm::boot(&spec, &work)
}

/// The first work directory under `dir` (itself, then `dir/2`, `dir/3`, …) whose lock no other
/// process holds, with the lock, held until the returned file is dropped.
fn free_slot(dir: &Path) -> Result<(PathBuf, std::fs::File)> {
    for n in 1..=16 {
        let work = if n == 1 {
            dir.to_path_buf()
        } else {
            dir.join(n.to_string())
        };
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let lock = std::fs::File::create(work.join(".lock"))
            .with_context(|| format!("creating {}", work.join(".lock").display()))?;
        match lock.try_lock() {
            Ok(()) => return Ok((work, lock)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", work.display()));
            }
        }
    }
    bail!(
        "16 VMs of this kernel are already running (each holds a work directory under {})",
        dir.display()
    )
}
