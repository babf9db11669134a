//! What the running kernel allows, told without installing anything: BPF LSM in the LSM list,
//! lockdown, our capabilities, and test loads of an LSM and a tracing program; and the
//! diagnosis `governance probe` and a refused start give.

use super::*;

/// What the running kernel offers, as far as can be told without loading anything.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kernel: String,
    pub btf: bool,
    /// Contents of /sys/kernel/security/lsm, if securityfs is readable.
    pub lsm_list: Option<String>,
    /// Contents of /sys/kernel/security/lockdown (`none [integrity] confidentiality`), if
    /// readable.
    pub lockdown: Option<String>,
    /// The capabilities of this process that loading programs needs.
    pub caps: Option<Caps>,
    pub cgroup2: Option<PathBuf>,
}

impl Probe {
    pub fn run() -> Self {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        // Reading the LSM list mounts securityfs if need be; lockdown lives there too.
        let lsm_list = read_lsm_list();
        Self {
            kernel,
            btf: Path::new(btf::VMLINUX_BTF).exists(),
            lsm_list,
            lockdown: std::fs::read_to_string(LOCKDOWN)
                .ok()
                .map(|s| s.trim().to_owned()),
            caps: crate::procfs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| Caps::from_status(&s)),
            cgroup2: crate::agents::cgroup2_mount().ok(),
        }
    }

    /// Is `bpf` among the active LSMs?
    pub fn bpf_lsm_active(&self) -> bool {
        self.lsm_list.as_deref().is_some_and(bpf_listed)
    }

    /// The facts that say why LSM programs do or do not load here: what this probe read, and
    /// test loads of a minimal LSM, fentry and socket filter program (loaded, never attached,
    /// and closed at once).
    pub fn lsm_facts(&self) -> LsmFacts {
        let kbtf = btf::Btf::from_kernel();
        let func = |names: &[&str]| -> Result<u32, String> {
            let kbtf = kbtf.as_ref().map_err(|e| e.to_string())?;
            names
                .iter()
                .find_map(|n| kbtf.func_id(n))
                .ok_or_else(|| format!("kernel BTF has none of {}", names.join(", ")))
        };
        let lsm = match func(&["bpf_lsm_file_open"]) {
            Ok(id) => test_load(BPF_PROG_TYPE_LSM, BPF_LSM_MAC, id),
            Err(why) => TestLoad::NotTried(why),
        };
        let tracing = match func(&["security_file_open", "vfs_read", "do_sys_openat2"]) {
            Ok(id) => test_load(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, id),
            Err(why) => TestLoad::NotTried(why),
        };
        LsmFacts {
            lsm_list: self.lsm_list.clone(),
            lockdown: self.lockdown.clone(),
            caps: self.caps,
            lsm,
            tracing,
            control: test_load(BPF_PROG_TYPE_SOCKET_FILTER, 0, 0),
        }
    }
}

pub(super) const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

pub(super) fn bpf_listed(lsm_list: &str) -> bool {
    lsm_list.trim().split(',').any(|m| m.trim() == "bpf")
}

/// The active lockdown mode: the bracketed word of /sys/kernel/security/lockdown.
pub fn lockdown_mode(raw: &str) -> Option<&str> {
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

/// The capabilities that loading and attaching the programs needs, as the process holds them
/// (effective set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub bpf: bool,
    pub perfmon: bool,
    pub sys_admin: bool,
}

impl Caps {
    const SYS_ADMIN: u32 = 21;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;

    /// From a capability mask (`CapEff`).
    pub fn from_mask(mask: u64) -> Self {
        let has = |cap: u32| mask >> cap & 1 == 1;
        Self {
            bpf: has(Self::BPF),
            perfmon: has(Self::PERFMON),
            sys_admin: has(Self::SYS_ADMIN),
        }
    }

    /// From the text of /proc/self/status (its `CapEff` line).
    pub fn from_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Self::from_mask)
    }

    /// The names of those missing.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.bpf, "CAP_BPF"),
            (self.perfmon, "CAP_PERFMON"),
            (self.sys_admin, "CAP_SYS_ADMIN"),
        ]
        .into_iter()
        .filter(|(has, _)| !has)
        .map(|(_, name)| name)
        .collect()
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing = self.missing();
        if missing.is_empty() {
            f.write_str("CAP_BPF CAP_PERFMON CAP_SYS_ADMIN")
        } else {
            write!(f, "MISSING {}", missing.join(" "))
        }
    }
}

/// How a test load of one minimal program went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestLoad {
    Loaded,
    /// The kernel refused it: the errno, and the verifier log (empty when the program was
    /// refused before the verifier saw it).
    Refused {
        errno: i32,
        log: String,
    },
    /// Not tried, and why.
    NotTried(String),
}

impl TestLoad {
    pub(super) fn refused_with(&self, errno: i32) -> bool {
        matches!(self, TestLoad::Refused { errno: e, .. } if *e == errno)
    }
}

/// What decides whether BPF LSM programs can be loaded here (see [`diagnose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmFacts {
    /// /sys/kernel/security/lsm, if readable.
    pub lsm_list: Option<String>,
    /// /sys/kernel/security/lockdown, if readable.
    pub lockdown: Option<String>,
    /// The process's capabilities, if known.
    pub caps: Option<Caps>,
    /// A minimal LSM program (`lsm/file_open`).
    pub lsm: TestLoad,
    /// A minimal tracing program (fentry).
    pub tracing: TestLoad,
    /// A minimal socket filter: does this process get to load programs at all?
    pub control: TestLoad,
}

/// Why BPF LSM programs cannot be used here, in words an operator can act on; None if a
/// minimal LSM program loads (a hook that still fails says why on its own line).
///
/// The boot parameter (`lsm=...,bpf`) is advised only when `bpf` is missing from the active
/// LSMs: when it is listed, booting with it again changes nothing.
pub fn diagnose(f: &LsmFacts) -> Option<String> {
    const DEGRADED: &str = "or accept degraded mode with --allow-degraded";
    if f.lsm == TestLoad::Loaded {
        return None;
    }
    let Some(list) = f.lsm_list.as_deref().map(str::trim) else {
        return Some(format!(
            "cannot tell whether BPF LSM is active: /sys/kernel/security/lsm is unreadable \
             (mount securityfs on /sys/kernel/security), and LSM programs do not load ({}). \
             Run on a node with BPF LSM, {DEGRADED}.",
            describe(&f.lsm)
        ));
    };
    if !bpf_listed(list) {
        let boot = if list.is_empty() {
            "lsm=bpf".to_owned()
        } else {
            format!("lsm={list},bpf")
        };
        return Some(format!(
            "BPF LSM is not active: `bpf` is missing from the active LSMs ({list}). Boot with \
             `{boot}` (the kernel also needs CONFIG_BPF_LSM=y), {DEGRADED}."
        ));
    }
    let TestLoad::Refused { errno, log } = &f.lsm else {
        return Some(format!(
            "BPF LSM is active ({list}) but could not be tested: {}. {}",
            describe(&f.lsm),
            "See the hooks' lines for why they failed."
        ));
    };
    if *errno != libc::EPERM {
        return Some(format!(
            "BPF LSM is active ({list}) but the kernel rejects a minimal LSM program ({}). \
             Run on a node that permits BPF LSM, {DEGRADED}.",
            describe(&f.lsm)
        ));
    }
    if let Some(missing) = f.caps.map(|c| c.missing()).filter(|m| !m.is_empty()) {
        return Some(format!(
            "BPF LSM is active but this kernel refuses LSM program loads (EPERM): the process \
             lacks {}. Run as root with every capability (a container needs CAP_BPF, \
             CAP_PERFMON and CAP_SYS_ADMIN), {DEGRADED}.",
            missing.join(" and ")
        ));
    }
    if f.control.refused_with(libc::EPERM) {
        return Some(format!(
            "this kernel refuses every BPF program load (EPERM), even a socket filter: bpf() \
             is forbidden to this process (seccomp, a container runtime or a sandbox), not \
             just BPF LSM. Run where bpf() is allowed, {DEGRADED}."
        ));
    }
    let mode = f.lockdown.as_deref().and_then(lockdown_mode);
    if mode == Some("confidentiality") {
        return Some(format!(
            "BPF LSM is active but this kernel refuses LSM program loads (EPERM): lockdown is \
             `confidentiality`, which forbids BPF programs that read kernel memory. Boot with \
             `lockdown=integrity` (or without lockdown) if your platform allows it, run on a \
             node that permits BPF LSM, {DEGRADED}."
        ));
    }
    let log = if log.trim().is_empty() {
        "EPERM, empty verifier log".to_owned()
    } else {
        format!("EPERM, verifier log: {}", first_line(log))
    };
    let caps = match f.caps {
        Some(_) => "although the process has CAP_BPF and CAP_SYS_ADMIN",
        None => "(the process's capabilities are unknown)",
    };
    let lockdown = match (mode, &f.lockdown) {
        (Some(m), _) => m.to_owned(),
        (None, Some(raw)) => format!("`{raw}`"),
        (None, None) => "unknown (/sys/kernel/security/lockdown unreadable)".to_owned(),
    };
    let loads = if f.control == TestLoad::Loaded {
        ", while other program types load"
    } else {
        ""
    };
    let host = if f.tracing.refused_with(libc::EPERM) {
        format!(
            "a host policy refuses BPF LSM and tracing programs (a minimal fentry program is \
             refused the same way{loads}: the hypervisor's or sandbox's kernel, or a security \
             module, not the boot command line)"
        )
    } else {
        format!(
            "a host policy refuses BPF LSM programs (tracing: {}{loads})",
            describe(&f.tracing)
        )
    };
    Some(format!(
        "BPF LSM is active but this kernel refuses LSM program loads ({log}) {caps} and \
         lockdown is {lockdown}: {host}; the boot parameter cannot fix this. Run on a node \
         that permits BPF LSM, {DEGRADED}."
    ))
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

pub(super) fn describe(t: &TestLoad) -> String {
    match t {
        TestLoad::Loaded => "loaded".into(),
        TestLoad::Refused { errno, log } => {
            let err = std::io::Error::from_raw_os_error(*errno);
            if log.trim().is_empty() {
                format!("{err}, empty verifier log")
            } else {
                format!("{err}, verifier log: {}", first_line(log))
            }
        }
        TestLoad::NotTried(why) => format!("not tried: {why}"),
    }
}

pub(super) const BPF_PROG_LOAD: libc::c_long = 5;
pub(super) const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
pub(super) const BPF_PROG_TYPE_TRACING: u32 = 26;
pub(super) const BPF_PROG_TYPE_LSM: u32 = 29;
pub(super) const BPF_TRACE_FENTRY: u32 = 24;
pub(super) const BPF_LSM_MAC: u32 = 27;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (include/uapi/linux/bpf.h), up to
/// `core_relo_cnt`; the kernel takes a shorter attr as zeros beyond it.
#[repr(C)]
#[derive(Default)]
pub(super) struct ProgLoadAttr {
    pub(super) prog_type: u32,
    pub(super) insn_cnt: u32,
    pub(super) insns: u64,
    pub(super) license: u64,
    pub(super) log_level: u32,
    pub(super) log_size: u32,
    pub(super) log_buf: u64,
    pub(super) kern_version: u32,
    pub(super) prog_flags: u32,
    pub(super) prog_name: [u8; 16],
    pub(super) prog_ifindex: u32,
    pub(super) expected_attach_type: u32,
    pub(super) prog_btf_fd: u32,
    pub(super) func_info_rec_size: u32,
    pub(super) func_info: u64,
    pub(super) func_info_cnt: u32,
    pub(super) line_info_rec_size: u32,
    pub(super) line_info: u64,
    pub(super) line_info_cnt: u32,
    pub(super) attach_btf_id: u32,
    pub(super) attach_btf_obj_fd: u32,
    pub(super) core_relo_cnt: u32,
}

/// Load `r0 = 0; exit` as a program of `prog_type` (attached to nothing) and close it.
pub(super) fn test_load(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32) -> TestLoad {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // mov64 r0, 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type,
        attach_btf_id,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attr whose pointers (instructions, license, log
    // buffer of `log_size` bytes) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return TestLoad::Loaded;
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    TestLoad::Refused {
        errno,
        log: String::from_utf8_lossy(&log[..end]).trim().to_owned(),
    }
}

pub(super) fn read_lsm_list() -> Option<String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    if let Ok(s) = std::fs::read_to_string(LSM) {
        return Some(s.trim().to_owned());
    }
    // securityfs is often not mounted in minimal environments; mount it (as the kernel docs
    // suggest) and try again. Failure just means "unknown".
    let _ = nix::mount::mount(
        Some("securityfs"),
        "/sys/kernel/security",
        Some("securityfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    std::fs::read_to_string(LSM)
        .ok()
        .map(|s| s.trim().to_owned())
}
