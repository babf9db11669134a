//! Kernel loader and maps: probe what this kernel can enforce, load the eBPF object with the
//! struct offsets of the running kernel, attach the programs, and write the policy into the maps.

pub mod btf;
mod compile;
pub mod probe;
mod report;
pub use report::count_keys;
pub mod unix;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError, RawTracePoint, SockOps, links::FdLink,
    },
};
use governance_common::{
    AgentKey, AgentValue, Bucket, BucketKey, ConnKey, Counter, ExecKey, GrantKey, IdentKey,
    IdentValue, NET_SLOTS, NetEntry, NetKey, NetValue, OrigDst, PATH_MAX, PathKey, ProxyAddr,
    RulePair, Throttle, maps, offsets, pins,
    programs::{self, Attach, Program},
};

pub use compile::{Class, KernelPolicy, Protect, bucket_id, compile};

/// The eBPF object, built by build.rs from governance-ebpf for this very build.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governance"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("resolving kernel struct offsets from BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {what} `{name}` (stale or foreign object?)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("exec rule target {path}: {source}")]
    ExecTarget {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the programs pinned under {dir} are from another build of governance; run `governance unload` first (enforcement stops until the next `governance run`)"
    )]
    ForeignPins { dir: PathBuf },
    #[error("unix socket {path}: {source}")]
    UnixTarget {
        path: PathBuf,
        source: std::io::Error,
    },
}

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
            caps: std::fs::read_to_string("/proc/self/status")
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

const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

fn bpf_listed(lsm_list: &str) -> bool {
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
    fn refused_with(&self, errno: i32) -> bool {
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

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

fn describe(t: &TestLoad) -> String {
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

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (include/uapi/linux/bpf.h), up to
/// `core_relo_cnt`; the kernel takes a shorter attr as zeros beyond it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
}

/// Load `r0 = 0; exit` as a program of `prog_type` (attached to nothing) and close it.
fn test_load(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32) -> TestLoad {
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

fn read_lsm_list() -> Option<String> {
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

/// How one hook fared.
#[derive(Debug, Clone)]
pub enum HookState {
    Attached,
    /// Could not be loaded or attached; the reason, in words.
    Unavailable(String),
}

impl fmt::Display for HookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookState::Attached => f.write_str("attached"),
            HookState::Unavailable(why) => write!(f, "NOT AVAILABLE: {why}"),
        }
    }
}

/// Explain a program load/attach failure in terms an operator can act on. Why the kernel
/// refuses a whole program type is said once, by [`diagnose`], not on every hook's line.
fn explain(err: &KernelError) -> String {
    if let KernelError::Program {
        name,
        source: ProgramError::LoadError {
            io_error,
            verifier_log,
        },
    } = err
        && verifier_log.to_string().trim().is_empty()
    {
        return format!(
            "program {name}: the kernel refused to load it ({io_error}, empty verifier log)"
        );
    }
    // Our error messages already include their sources.
    err.to_string()
}

/// The enforcement state in the kernel: the pinned maps and which programs are attached.
///
/// Everything lives under a bpffs directory (`pins::DIR` by default): `maps/NAME` and
/// `links/NAME`. A pinned link keeps its program attached when the daemon is gone, so
/// enforcement survives a crash with the last policy; a restarted daemon adopts the pins
/// instead of attaching again.
pub struct Enforcer {
    pub pin_dir: PathBuf,
    maps: BTreeMap<&'static str, Map>,
    /// Every program of the object (and the degraded exec fallback), with its state.
    pub hooks: Vec<(Program, HookState)>,
    /// True if the pins were there already (a restart), false if this process attached them.
    pub adopted: bool,
    /// The socket files the Unix-socket tables were written for (see [`unix`]).
    unix_targets: unix::UnixTargets,
    /// A handover in progress: the pin directory of the previous build, whose programs stay
    /// attached beside this build's (staged in [`HANDOVER_DIR`] below it) until
    /// [`Enforcer::finish_handover`].
    pub handover_from: Option<PathBuf>,
}

/// Where a new build stages its pins beside a previous build's (below the pin directory).
pub const HANDOVER_DIR: &str = "handover"; // (bpffs refuses dots in names)

/// Index of the build id in [`maps::STATE`].
const STATE_GENERATION: u32 = 0;
const STATE_BUILD: u32 = 1;

/// An identity of the embedded eBPF object, kept in the pins, so a daemon of another build
/// does not adopt programs whose maps it would misread (it hands over from them instead).
///
/// `GOVERNANCE_TEST_BUILD_SALT` (tests only) is mixed in: two daemons of one binary then
/// present different builds, so the handover runs between two real daemons. The handover
/// never reads the previous build's maps beyond its build id, so the salt changes nothing else
/// it does.
pub fn build_id() -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let salt = std::env::var("GOVERNANCE_TEST_BUILD_SALT").unwrap_or_default();
    for b in EBPF_OBJECT.iter().chain(salt.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

impl Enforcer {
    /// Are all the hooks of full enforcement attached?
    pub fn fully_attached(&self) -> bool {
        self.hooks
            .iter()
            .filter(|(p, _)| p.required)
            .all(|(_, h)| matches!(h, HookState::Attached))
    }

    /// Adopt the pins under `pin_dir` if they are there, else load the object, attach every
    /// program at `cgroup_root` (the cgroup2 root: the programs themselves decide who is an
    /// agent) and pin maps and links. With `degraded_exec`, a kernel that refuses the exec LSM
    /// gets the kill-after-exec tracepoint instead.
    pub fn start(
        pin_dir: &Path,
        cgroup_root: &Path,
        degraded_exec: bool,
    ) -> Result<Self, KernelError> {
        let next = pin_dir.join(HANDOVER_DIR);
        if next.exists() {
            // A handover a crash interrupted. If the previous build's programs are still
            // attached, drop what was staged (they enforce); if they were already detached, the
            // staged programs are what enforces: move them into place.
            if has_links(pin_dir) {
                unload(&next).map_err(|source| KernelError::Pin {
                    path: next.clone(),
                    source,
                })?;
            } else {
                promote(pin_dir, &next)?;
            }
        }
        if pin_dir.join(pins::MAPS).join(maps::STATE).exists() {
            if pinned_build(pin_dir)? == build_id() {
                return Self::adopt(pin_dir);
            }
            // Another build's programs enforce: load and attach ours beside them; they are
            // detached once this build enforces a policy (see `finish_handover`).
            let mut enforcer = Self::stage(&next, cgroup_root, degraded_exec)?;
            enforcer.handover_from = Some(pin_dir.to_owned());
            return Ok(enforcer);
        }
        Self::stage(pin_dir, cgroup_root, degraded_exec)
    }

    /// Load the object, attach and pin its programs and maps under `pin_dir`.
    fn stage(pin_dir: &Path, cgroup_root: &Path, degraded_exec: bool) -> Result<Self, KernelError> {
        ensure_bpffs(pin_dir)?;
        for sub in [pins::MAPS, pins::LINKS] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| KernelError::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        let result = Self::load_and_pin(pin_dir, cgroup_root, degraded_exec);
        if result.is_err() {
            // Nothing half-pinned stays behind.
            let _ = unload(pin_dir);
        }
        result
    }

    fn load_and_pin(
        pin_dir: &Path,
        cgroup_root: &Path,
        degraded_exec: bool,
    ) -> Result<Self, KernelError> {
        let kbtf = btf::Btf::from_kernel()?;
        let mut values = Vec::new();
        for (global, strukt, field) in offsets::ALL {
            values.push((global, kbtf.field_offset(strukt, field)?));
        }
        for (global, strukt) in offsets::SIZES {
            values.push((global, kbtf.struct_size(strukt)?));
        }
        let mut loader = EbpfLoader::new();
        for (global, value) in &values {
            loader.override_global(global, value, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in maps::ALL {
            let map = ebpf
                .map(name)
                .ok_or(KernelError::Missing { what: "map", name })?;
            let path = pin_dir.join(pins::MAPS).join(name);
            map.pin(&path).map_err(|e| KernelError::Pin {
                path,
                source: std::io::Error::other(e),
            })?;
        }
        // The build id goes in before anything is attached; the generation stays 0 (no
        // agents) until the first policy is installed.
        {
            let name = maps::STATE;
            let map = ebpf
                .map_mut(name)
                .ok_or(KernelError::Missing { what: "map", name })?;
            let mut state: Array<_, u32> =
                Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            state
                .set(STATE_BUILD, build_id(), 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let kernel_btf = aya::Btf::from_sys_fs().ok();
        let mut hooks = Vec::new();
        for program in programs::ALL {
            let result = attach(
                &mut ebpf,
                program,
                cgroup_root,
                kernel_btf.as_ref(),
                pin_dir,
            );
            hooks.push((
                program,
                result.as_ref().map_or_else(
                    |e| HookState::Unavailable(explain(e)),
                    |()| HookState::Attached,
                ),
            ));
        }
        let exec_missing = hooks
            .iter()
            .any(|(p, h)| *p == programs::EXEC && !matches!(h, HookState::Attached));
        if degraded_exec && exec_missing {
            let program = programs::EXEC_KILL;
            let result = attach(
                &mut ebpf,
                program,
                cgroup_root,
                kernel_btf.as_ref(),
                pin_dir,
            );
            hooks.push((
                program,
                result.as_ref().map_or_else(
                    |e| HookState::Unavailable(explain(e)),
                    |()| HookState::Attached,
                ),
            ));
        }
        // The programs stay attached through their pinned links; the maps are used through
        // their pins from here on, exactly as after a restart.
        drop(ebpf);
        let mut enforcer = Self::open(pin_dir)?;
        enforcer.hooks = hooks;
        enforcer.adopted = false;
        Ok(enforcer)
    }

    /// Open the pinned maps and see which links are pinned.
    pub fn adopt(pin_dir: &Path) -> Result<Self, KernelError> {
        let enforcer = Self::open(pin_dir)?;
        let build = enforcer.state(STATE_BUILD)?;
        if build != build_id() {
            return Err(KernelError::ForeignPins {
                dir: pin_dir.to_owned(),
            });
        }
        Ok(enforcer)
    }

    fn open(pin_dir: &Path) -> Result<Self, KernelError> {
        let mut opened = BTreeMap::new();
        for name in maps::ALL {
            let path = pin_dir.join(pins::MAPS).join(name);
            let data =
                MapData::from_pin(&path).map_err(|source| KernelError::Map { name, source })?;
            let map =
                Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
            opened.insert(name, map);
        }
        let hooks = programs::ALL
            .iter()
            .chain([&programs::EXEC_KILL])
            .filter_map(|p| {
                let pinned = pin_dir.join(pins::LINKS).join(p.name);
                if pinned.exists() {
                    Some((*p, HookState::Attached))
                } else if p.required {
                    Some((
                        *p,
                        HookState::Unavailable("not attached (no pinned link)".into()),
                    ))
                } else {
                    None
                }
            })
            .collect();
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            maps: opened,
            hooks,
            adopted: true,
            unix_targets: unix::UnixTargets::default(),
            handover_from: None,
        })
    }

    /// End a handover (see [`Enforcer::start`]): this build's programs enforce a policy, so
    /// the previous build's are detached and this build's pins move into the pin directory.
    /// Until now both builds' programs ran on every hook (each may refuse: the stricter wins).
    /// Returns whether there was a handover.
    pub fn finish_handover(&mut self) -> Result<bool, KernelError> {
        let Some(old) = self.handover_from.take() else {
            return Ok(false);
        };
        promote(&old, &self.pin_dir)?;
        self.pin_dir = old;
        Ok(true)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, KernelError> {
        self.maps
            .get_mut(name)
            .ok_or(KernelError::Missing { what: "map", name })
    }

    fn state(&self, index: u32) -> Result<u32, KernelError> {
        let name = maps::STATE;
        let map = self
            .maps
            .get(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        let state: Array<_, u32> =
            Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        state
            .get(&index, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// The generation the kernel enforces now (0: none yet).
    pub fn generation(&self) -> Result<u32, KernelError> {
        self.state(STATE_GENERATION)
    }

    /// Install a compiled generation: clear its slot, write every table, flip the active
    /// generation (one 32-bit store the programs read once per decision), then clear the other
    /// slot. Until the flip the previous generation enforces alone; after it, this one.
    ///
    /// Throttle buckets are not per slot: both generations' rules lead to the same bucket for
    /// the same rule and agent (see [`compile::bucket_id`]), so they carry over as they are.
    /// After the flip, the buckets this generation does not lead to are deleted.
    ///
    /// An executable that does not exist is reported and skipped (nothing to run, nothing to
    /// decide; path rules still cover that name), and so is a Unix socket a rule names that
    /// does not exist (the daemon installs the next generation when it appears). The runtime
    /// sockets that exist now are refused (see [`unix`]). Any map error aborts before the
    /// flip, so the previous generation keeps enforcing.
    pub fn install(&mut self, policy: &KernelPolicy) -> Result<Vec<KernelError>, KernelError> {
        let slot = governance_common::slot(policy.generation);
        // The node's own tables (not per generation): what a later package upgrade or module
        // load changed is picked up by every reload.
        self.set_loaders(&loader_identities())?;
        let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
        self.set_raw_devices(&raw_device_majors(&devices))?;
        self.clear_slot(slot)?;
        let skipped = self.write(policy, slot)?;
        self.protect_runtime_sockets()?;
        {
            let name = maps::STATE;
            let mut state: Array<_, u32> = Array::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            state
                .set(STATE_GENERATION, policy.generation, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        // Decisions that read the old generation just before the flip finish within
        // microseconds; give them far more before their tables go.
        std::thread::sleep(std::time::Duration::from_millis(5));
        self.clear_slot(slot ^ 1)?;
        self.prune_buckets(policy)?;
        Ok(skipped)
    }

    /// Delete the buckets of agents and rules that `policy` (the active generation) does not
    /// have: no decision can reach them any more, and a rule or agent that comes back starts
    /// with a full bucket, as a new one would.
    fn prune_buckets(&mut self, policy: &KernelPolicy) -> Result<(), KernelError> {
        let owners: std::collections::BTreeSet<u64> =
            policy.agents.iter().map(|(id, _)| *id).collect();
        let rules: std::collections::BTreeSet<u64> =
            policy.throttles.iter().map(|(_, t)| t.bucket).collect();
        let name = maps::BUCKETS;
        let mut buckets: HashMap<_, BucketKey, Bucket> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let stale: Vec<BucketKey> = buckets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                (k.owner != 0 && !owners.contains(&k.owner))
                    || (k.rule != 0 && !rules.contains(&k.rule))
            })
            .collect();
        for key in stale {
            buckets
                .remove(&key)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(())
    }

    /// The throttle buckets in the kernel (bucket key → level), for inspection.
    pub fn buckets(&self) -> Result<Vec<(BucketKey, Bucket)>, KernelError> {
        let name = maps::BUCKETS;
        let map = self
            .maps
            .get(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        let buckets: HashMap<_, BucketKey, Bucket> =
            HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        Ok(buckets.iter().filter_map(Result::ok).collect())
    }

    fn write(&mut self, policy: &KernelPolicy, slot: u32) -> Result<Vec<KernelError>, KernelError> {
        let mut skipped = Vec::new();
        {
            let name = maps::EXEC_RULES;
            let mut exec: HashMap<_, ExecKey, RulePair> = HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            for class in &policy.classes {
                for (path, value) in &class.exec {
                    let (dev, ino) = match exec_identity(path) {
                        Ok(id) => id,
                        Err(source) => {
                            skipped.push(KernelError::ExecTarget {
                                path: path.clone(),
                                source,
                            });
                            continue;
                        }
                    };
                    let key = ExecKey {
                        class: class.id,
                        dev,
                        ino,
                    };
                    exec.insert(key, value, 0)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }
        }
        {
            let name = maps::PATH_RULES;
            let mut trie: LpmTrie<_, PathKey, RulePair> = LpmTrie::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            for class in policy.classes.iter().chain(&policy.builtins) {
                for ((access, bytes), value) in &class.paths {
                    let mut path = [0u8; PATH_MAX];
                    path[..bytes.len()].copy_from_slice(bytes);
                    let key = Key::new(
                        ((5 + bytes.len()) * 8) as u32,
                        PathKey {
                            class_be: class.id.to_be_bytes(),
                            access: *access,
                            path,
                        },
                    );
                    trie.insert(&key, value, 0)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }
        }
        {
            let name = maps::NET_RULES;
            let mut trie: LpmTrie<_, NetKey, NetValue> = LpmTrie::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            for class in &policy.classes {
                for ((bits, addr), list) in &class.net {
                    let mut value = NetValue {
                        len: list.len() as u32,
                        _pad: 0,
                        entries: [NetEntry::default(); NET_SLOTS],
                    };
                    value.entries[..list.len()].copy_from_slice(list);
                    let key = Key::new(
                        32 + bits,
                        NetKey {
                            class_be: class.id.to_be_bytes(),
                            addr: *addr,
                        },
                    );
                    trie.insert(&key, value, 0)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }
        }
        {
            let name = maps::THROTTLES;
            let mut throttles: HashMap<_, u32, Throttle> =
                HashMap::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
            for (rule_id, throttle) in &policy.throttles {
                throttles
                    .insert(rule_id, throttle, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
            }
        }
        self.write_unix(policy, &mut skipped)?;
        {
            let name = maps::IDENT_RULES;
            let mut idents: HashMap<_, IdentKey, IdentValue> =
                HashMap::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
            for class in &policy.classes {
                for (&(dev, ino, scope), value) in &class.idents {
                    let key = IdentKey {
                        class: class.id,
                        dev,
                        ino,
                        scope,
                        _pad: 0,
                    };
                    idents
                        .insert(key, value, 0)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }
        }
        let name = maps::AGENTS;
        let mut agents: HashMap<_, AgentKey, AgentValue> =
            HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
        let roots = policy
            .agents
            .iter()
            .map(|(cgroup_id, i)| (*cgroup_id, 0, *i));
        let profiles = policy.profiles.iter().map(|(n, i)| (0, *n, *i));
        for (cgroup_id, profile, i) in roots.chain(profiles) {
            let key = AgentKey {
                cgroup_id,
                slot,
                profile,
            };
            agents
                .insert(key, policy.classes[i].value, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(skipped)
    }

    /// Remove every table entry of generation slot `slot`.
    fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError> {
        let of_id = |id: u32| id >> 31 == slot;
        macro_rules! clear {
            ($name:expr, $ty:ident, $k:ty, $v:ty, $pred:expr) => {{
                let name = $name;
                let mut map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
                let stale: Vec<_> = map.keys().filter_map(Result::ok).filter($pred).collect();
                for key in stale {
                    map.remove(&key)
                        .map_err(|source| KernelError::Map { name, source })?;
                }
            }};
        }
        clear!(
            maps::AGENTS,
            HashMap,
            AgentKey,
            AgentValue,
            |k: &AgentKey| k.slot == slot
        );
        clear!(
            maps::EXEC_RULES,
            HashMap,
            ExecKey,
            RulePair,
            |k: &ExecKey| of_id(k.class)
        );
        clear!(maps::PATH_RULES, LpmTrie, PathKey, RulePair, |k: &Key<
            PathKey,
        >| {
            of_id(u32::from_be_bytes(k.data().class_be))
        });
        clear!(maps::NET_RULES, LpmTrie, NetKey, NetValue, |k: &Key<
            NetKey,
        >| of_id(
            u32::from_be_bytes(k.data().class_be)
        ));
        clear!(maps::THROTTLES, HashMap, u32, Throttle, |k: &u32| of_id(*k));
        clear!(
            maps::UNIX_RULES,
            HashMap,
            governance_common::UnixKey,
            RulePair,
            |k: &governance_common::UnixKey| of_id(k.class)
        );
        clear!(
            maps::IDENT_RULES,
            HashMap,
            IdentKey,
            IdentValue,
            |k: &IdentKey| of_id(k.class)
        );
        Ok(())
    }

    /// The dynamic loaders' identities (see [`loader_identities`]): the map is set to exactly
    /// these, new entries first.
    pub fn set_loaders(&mut self, ids: &[(u32, u64)]) -> Result<(), KernelError> {
        let name = maps::LOADERS;
        let mut map: HashMap<_, ExecKey, u32> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let wanted: Vec<ExecKey> = ids
            .iter()
            .map(|&(dev, ino)| ExecKey { class: 0, dev, ino })
            .collect();
        for key in &wanted {
            map.insert(key, 0, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let stale: Vec<ExecKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = map.remove(&key);
        }
        Ok(())
    }

    /// Character-device majors that are raw views of storage: the map is set to exactly these.
    pub fn set_raw_devices(&mut self, majors: &[u32]) -> Result<(), KernelError> {
        let name = maps::RAW_DEVICES;
        let mut map: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        for major in majors {
            map.insert(major, 0, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|m| !majors.contains(m))
            .collect();
        for major in stale {
            let _ = map.remove(&major);
        }
        Ok(())
    }

    /// Processes agents may not signal or trace: the map is reset to exactly these.
    pub fn protect(&mut self, pids: &[u32]) -> Result<(), KernelError> {
        let name = maps::PROTECTED;
        let mut map: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for pid in old.iter().filter(|p| !pids.contains(p)) {
            let _ = map.remove(pid);
        }
        for pid in pids {
            map.insert(pid, 0, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(())
    }

    /// Where the policy proxy listens (None: nowhere; `via_proxy` connects are then refused).
    /// The programs send `via_proxy` connects to `v4` (IPv4 and IPv4-mapped destinations) or
    /// `v6`, on `port`.
    pub fn set_proxy(
        &mut self,
        proxy: Option<(Ipv4Addr, Ipv6Addr, u16)>,
    ) -> Result<(), KernelError> {
        let value = match proxy {
            None => ProxyAddr::default(),
            Some((v4, v6, port)) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ProxyAddr {
                    ip4: u32::from_ne_bytes(v4.octets()),
                    ip6: [word(0), word(4), word(8), word(12)],
                    port: u32::from(port.to_be()),
                    enabled: 1,
                }
            }
        };
        let name = maps::PROXY;
        let mut map: Array<_, ProxyAddr> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        map.set(0, value, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// Let an escalated action through for `cgroup_id`'s agent until `expiry_ns`
    /// (CLOCK_MONOTONIC).
    pub fn grant(&mut self, key: GrantKey, expiry_ns: u64) -> Result<(), KernelError> {
        let name = maps::GRANTS;
        let mut map: HashMap<_, GrantKey, u64> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        map.insert(key, expiry_ns, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// Agent roots of the active generation: cgroup id → class id.
    pub fn agents(&self) -> Result<Vec<(u64, u32)>, KernelError> {
        let slot = governance_common::slot(self.generation()?);
        let name = maps::AGENTS;
        let map = self
            .maps
            .get(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        let agents: HashMap<_, AgentKey, AgentValue> =
            HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let mut out: Vec<(u64, u32)> = agents
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.slot == slot && k.profile == 0)
            .map(|(k, v)| (k.cgroup_id, v.class))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The decision-event ring buffer (once: the consumer position is shared through the map,
    /// so events produced while no daemon ran are read first).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let name = maps::EVENTS;
        let map = self
            .maps
            .remove(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, KernelError> {
        Ok(self.counter_per_cpu(counter)?.iter().sum())
    }

    /// A kernel counter as each CPU counted it (index = CPU).
    pub fn counter_per_cpu(&self, counter: Counter) -> Result<Vec<u64>, KernelError> {
        let name = maps::COUNTERS;
        let map = self
            .maps
            .get(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let values = array
            .get(&(counter as u32), 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(values.to_vec())
    }
}

/// The kernel's record of agents' connections to the proxy, opened from its pin: the proxy
/// asks it who is on the other end of a connection it accepted.
pub struct ProxyConns {
    map: HashMap<MapData, ConnKey, OrigDst>,
}

impl ProxyConns {
    pub fn open(pin_dir: &Path) -> Result<Self, KernelError> {
        let name = maps::PROXY_CONNS;
        let data = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
            .map_err(|source| KernelError::Map { name, source })?;
        let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
        let map = HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        Ok(Self { map })
    }

    /// Take (read and delete) the record of the connection whose client end is `peer` in the
    /// network namespace `netns` (its cookie, see [`netns_cookie`]). None: not an agent's
    /// connection (or its record was lost: the caller refuses it).
    pub fn take(&mut self, peer: SocketAddr, netns: u64) -> Option<OrigDst> {
        let family = match peer {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        } as u32;
        let key = ConnKey {
            port: u32::from(peer.port()),
            family,
            netns,
        };
        let found = self.map.get(&key, 0).ok()?;
        let _ = self.map.remove(&key);
        Some(found)
    }
}

/// The cookie of the network namespace a socket belongs to (`SO_NETNS_COOKIE`, Linux 5.14),
/// the same number `bpf_get_netns_cookie` gives the programs.
pub fn netns_cookie(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and a buffer of the length given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cgroup2 root, to attach cgroup programs at. (cgroup links always coexist with other
/// programs; the kernel rejects BPF_F_ALLOW_MULTI for links (EINVAL), so they attach "single",
/// which sends no flags.)
fn open_cgroup(cgroup_root: &Path) -> Result<std::fs::File, KernelError> {
    std::fs::File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
        path: cgroup_root.to_owned(),
        source,
    })
}

/// A cgroup program's link as an fd link, to pin.
fn fd_link<L>(link: L, pin_dir: &Path, name: &'static str) -> Result<FdLink, KernelError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    link.try_into().map_err(|e| KernelError::Pin {
        path: pin_dir.join(pins::LINKS).join(name),
        source: std::io::Error::other(e),
    })
}

/// Load and attach one program, and pin its link.
fn attach(
    ebpf: &mut Ebpf,
    program: Program,
    cgroup_root: &Path,
    kernel_btf: Option<&aya::Btf>,
    pin_dir: &Path,
) -> Result<(), KernelError> {
    let name = program.name;
    let err = |source| KernelError::Program { name, source };
    let prog = ebpf.program_mut(name).ok_or(KernelError::Missing {
        what: "program",
        name,
    })?;
    let link: FdLink = match program.attach {
        Attach::Lsm(hook) => {
            let prog: &mut Lsm = prog.try_into().map_err(err)?;
            let btf = kernel_btf.ok_or_else(|| {
                err(ProgramError::Btf(aya::BtfError::FileError {
                    path: btf::VMLINUX_BTF.into(),
                    error: std::io::Error::from(std::io::ErrorKind::NotFound),
                }))
            })?;
            prog.load(hook, btf).map_err(err)?;
            let id = prog.attach().map_err(err)?;
            prog.take_link(id).map_err(err)?.into()
        }
        Attach::SockAddr(_) => {
            let prog: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(open_cgroup(cgroup_root)?, CgroupAttachMode::Single);
            fd_link(
                prog.take_link(id.map_err(err)?).map_err(err)?,
                pin_dir,
                name,
            )?
        }
        Attach::SockOps => {
            let prog: &mut SockOps = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(open_cgroup(cgroup_root)?, CgroupAttachMode::Single);
            fd_link(
                prog.take_link(id.map_err(err)?).map_err(err)?,
                pin_dir,
                name,
            )?
        }
        Attach::RawTracepoint(tp) => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(tp).map_err(err)?;
            prog.take_link(id).map_err(err)?.into()
        }
    };
    let path = pin_dir.join(pins::LINKS).join(name);
    link.pin(&path).map_err(|e| KernelError::Pin {
        path,
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

/// Make sure `pin_dir` is on a bpf filesystem, mounting one at /sys/fs/bpf if that is where it
/// belongs and nothing is mounted there yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if on_bpffs(existing) {
        return Ok(());
    }
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs) {
        let _ = std::fs::create_dir_all(bpffs);
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| KernelError::Pin {
            path: bpffs.to_owned(),
            source: std::io::Error::from(e),
        })?;
        if on_bpffs(bpffs) {
            return Ok(());
        }
    }
    Err(KernelError::Pin {
        path: pin_dir.to_owned(),
        source: std::io::Error::other("not on a bpf filesystem (mount -t bpf bpf DIR)"),
    })
}

/// Remove the pins below `pin_dir`: links first (which detaches the programs), then maps.
/// Returns the names removed.
pub fn unload(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    // A handover's staged pins first (both builds' programs go).
    let next = pin_dir.join(HANDOVER_DIR);
    if next.exists() {
        removed.extend(
            unload(&next)?
                .into_iter()
                .map(|r| format!("{HANDOVER_DIR}/{r}")),
        );
    }
    for sub in [pins::LINKS, pins::MAPS] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            std::fs::remove_file(e.path())?;
            removed.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
        std::fs::remove_dir(&dir)?;
    }
    if pin_dir.exists() {
        std::fs::remove_dir(pin_dir)?;
    }
    Ok(removed)
}

/// Whether any link is pinned under `pin_dir` (its programs are attached).
fn has_links(pin_dir: &Path) -> bool {
    std::fs::read_dir(pin_dir.join(pins::LINKS)).is_ok_and(|mut d| d.next().is_some())
}

/// The build id the pins under `pin_dir` were made by (the one map every build keeps at the
/// same place: [`maps::STATE`], index [`STATE_BUILD`]).
fn pinned_build(pin_dir: &Path) -> Result<u32, KernelError> {
    let name = maps::STATE;
    let data = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
        .map_err(|source| KernelError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
    let state: Array<_, u32> =
        Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
    state
        .get(&STATE_BUILD, 0)
        .map_err(|source| KernelError::Map { name, source })
}

/// Replace the pins under `dir` with the staged ones under `staged`: first the old links go
/// (their programs detach; the staged ones are attached already), then the old maps, then the
/// staged directories move into place (a rename on the bpf filesystem).
fn promote(dir: &Path, staged: &Path) -> Result<(), KernelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KernelError::Pin { path, source }
    };
    for sub in [pins::LINKS, pins::MAPS] {
        let old = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&old) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
            std::fs::remove_dir(&old).map_err(io(&old))?;
        }
    }
    for sub in [pins::MAPS, pins::LINKS] {
        let from = staged.join(sub);
        std::fs::rename(&from, dir.join(sub)).map_err(io(&from))?;
    }
    std::fs::remove_dir(staged).map_err(io(staged))?;
    Ok(())
}

/// Where dynamic loaders usually live (glibc and musl, x86_64 and arm64), besides the one this
/// daemon's own binary names.
const LOADER_PATHS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
];

/// The interpreter (PT_INTERP) a 64-bit little-endian ELF executable names, if any.
pub fn elf_interpreter(elf: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?) as usize);
    // ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
    (0..usize::from(phnum)).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        const PT_INTERP: u32 = 3;
        if u32_at(ph)? != PT_INTERP {
            return None;
        }
        let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let raw = elf.get(offset..offset.checked_add(size)?)?;
        let name = raw.split(|&b| b == 0).next()?;
        (!name.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
    })
}

/// The identities of this node's dynamic loaders, which agents may not run as programs: the
/// interpreter of the daemon's own binary, and the usual paths (symlinks followed). A loader
/// elsewhere (a Nix store, a conda environment) is not known; exec rules decide on it.
pub fn loader_identities() -> Vec<(u32, u64)> {
    // The program headers and the interpreter's name sit at the start of the file.
    let own = std::fs::File::open("/proc/self/exe").ok().and_then(|f| {
        let mut head = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 10), &mut head).ok()?;
        elf_interpreter(&head)
    });
    let mut ids: Vec<(u32, u64)> = own
        .into_iter()
        .chain(LOADER_PATHS.iter().map(PathBuf::from))
        .filter_map(|p| exec_identity(&p).ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Character-device drivers that pass commands to a disk (raw reads with no file rule on the
/// way): SCSI generic, block SCSI generic, NVMe generic, MTD (raw flash).
const RAW_CHAR_DRIVERS: &[&str] = &["sg", "bsg", "nvme-generic", "mtd"];
/// SCSI generic's fixed major, refused even before its module is loaded.
const SCSI_GENERIC_MAJOR: u32 = 21;

/// The majors of [`RAW_CHAR_DRIVERS`] in /proc/devices' "Character devices" section (the
/// drivers loaded now: a later module load is picked up by the next reload).
pub fn raw_device_majors(proc_devices: &str) -> Vec<u32> {
    let mut majors = vec![SCSI_GENERIC_MAJOR];
    let mut in_char = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if let (true, Some((major, name))) = (in_char, line.split_once(char::is_whitespace))
            && RAW_CHAR_DRIVERS.contains(&name.trim())
            && let Ok(major) = major.parse::<u32>()
        {
            majors.push(major);
        }
    }
    majors.sort_unstable();
    majors.dedup();
    majors
}

/// The identity the kernel will see for an executable: the superblock device in the kernel's
/// internal `dev_t` encoding (`MAJOR << 20 | MINOR`) and the inode number. `stat` follows
/// symlinks, so a rule naming a symlink blocks the file it points to.
pub fn exec_identity(path: &Path) -> std::io::Result<(u32, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((kernel_dev(meta.dev()), meta.ino()))
}

/// Userspace `st_dev` → kernel `dev_t` (`include/linux/kdev_t.h`).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(kernel_dev(libc::makedev(254, 1)), (254 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
        assert_eq!(kernel_dev(libc::makedev(8, 0x12345)), (8 << 20) | 0x12345);
    }

    #[test]
    fn the_loader_is_found_from_an_executables_program_header() {
        // This test binary is dynamically linked: its interpreter is the loader.
        let elf = std::fs::read("/proc/self/exe").unwrap();
        let interp = elf_interpreter(&elf).expect("a PT_INTERP");
        assert!(interp.to_string_lossy().contains("ld-"), "{interp:?}");
        assert!(
            loader_identities().contains(&exec_identity(&interp).unwrap()),
            "{interp:?}"
        );
        assert_eq!(elf_interpreter(b"\x7fELF\x02\x01 not much else"), None);
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn raw_storage_drivers_are_read_from_proc_devices() {
        let devices = "Character devices:\n  1 mem\n 21 sg\n246 nvme-generic\n247 nvme\n249 bsg\n\n\
                       Block devices:\n  8 sd\n259 blkext\n";
        assert_eq!(raw_device_majors(devices), [21, 246, 249]);
        assert_eq!(raw_device_majors(""), [21]);
    }

    #[test]
    fn the_embedded_object_has_every_program_and_map() {
        let obj = aya_obj_names();
        for name in programs::ALL
            .iter()
            .chain([&programs::EXEC_KILL])
            .map(|p| p.name)
        {
            assert!(
                obj.contains(&name.to_string()),
                "program {name} missing: {obj:?}"
            );
        }
        for name in maps::ALL {
            assert!(
                obj.contains(&name.to_string()),
                "map {name} missing: {obj:?}"
            );
        }
    }

    const ALL_CAPS: Caps = Caps {
        bpf: true,
        perfmon: true,
        sys_admin: true,
    };

    fn eperm() -> TestLoad {
        TestLoad::Refused {
            errno: libc::EPERM,
            log: String::new(),
        }
    }

    /// This very host: `bpf` listed, integrity lockdown, root with every capability, LSM and
    /// fentry loads refused with EPERM before the verifier, a socket filter loads.
    fn refusing_host() -> LsmFacts {
        LsmFacts {
            lsm_list: Some("lockdown,capability,landlock,bpf".into()),
            lockdown: Some("none [integrity] confidentiality".into()),
            caps: Some(ALL_CAPS),
            lsm: eperm(),
            tracing: eperm(),
            control: TestLoad::Loaded,
        }
    }

    #[test]
    fn a_host_that_refuses_bpf_lsm_is_not_told_to_boot_with_lsm_bpf() {
        let why = diagnose(&refusing_host()).unwrap();
        assert!(
            why.starts_with(
                "BPF LSM is active but this kernel refuses LSM program loads (EPERM, empty \
                 verifier log) although the process has CAP_BPF and CAP_SYS_ADMIN and lockdown \
                 is integrity: a host policy refuses BPF LSM and tracing programs"
            ),
            "{why}"
        );
        assert!(why.contains("while other program types load"), "{why}");
        assert!(
            why.ends_with(
                "the boot parameter cannot fix this. Run on a node that permits BPF LSM, or \
                 accept degraded mode with --allow-degraded."
            ),
            "{why}"
        );
        assert!(!why.contains("lsm="), "{why}");

        // Only LSM programs refused: still the host, and tracing is said to load.
        let only_lsm = LsmFacts {
            tracing: TestLoad::Loaded,
            ..refusing_host()
        };
        let why = diagnose(&only_lsm).unwrap();
        assert!(why.contains("a host policy refuses BPF LSM programs (tracing: loaded"));
        assert!(!why.contains("lsm="), "{why}");
    }

    #[test]
    fn the_boot_parameter_is_advised_only_when_bpf_is_not_listed() {
        let facts = LsmFacts {
            lsm_list: Some("lockdown,capability,landlock,yama".into()),
            lsm: TestLoad::Refused {
                errno: libc::EINVAL,
                log: String::new(),
            },
            ..refusing_host()
        };
        let why = diagnose(&facts).unwrap();
        assert!(
            why.contains("`bpf` is missing from the active LSMs")
                && why.contains("`lsm=lockdown,capability,landlock,yama,bpf`"),
            "{why}"
        );
        // bpf listed: never.
        for facts in [
            refusing_host(),
            LsmFacts {
                caps: Some(Caps {
                    bpf: false,
                    ..ALL_CAPS
                }),
                ..refusing_host()
            },
            LsmFacts {
                lockdown: Some("none integrity [confidentiality]".into()),
                ..refusing_host()
            },
            LsmFacts {
                control: eperm(),
                ..refusing_host()
            },
            LsmFacts {
                lockdown: None,
                caps: None,
                ..refusing_host()
            },
        ] {
            let why = diagnose(&facts).unwrap();
            assert!(!why.contains("lsm="), "{why}");
        }
    }

    #[test]
    fn each_cause_of_a_refused_lsm_load_is_named() {
        let no_caps = LsmFacts {
            caps: Some(Caps {
                bpf: false,
                perfmon: true,
                sys_admin: false,
            }),
            ..refusing_host()
        };
        let why = diagnose(&no_caps).unwrap();
        assert!(why.contains("lacks CAP_BPF and CAP_SYS_ADMIN"), "{why}");

        let confidential = LsmFacts {
            lockdown: Some("none integrity [confidentiality]".into()),
            ..refusing_host()
        };
        let why = diagnose(&confidential).unwrap();
        assert!(why.contains("lockdown is `confidentiality`"), "{why}");

        let no_bpf_at_all = LsmFacts {
            control: eperm(),
            ..refusing_host()
        };
        let why = diagnose(&no_bpf_at_all).unwrap();
        assert!(why.contains("refuses every BPF program load"), "{why}");

        let unknown = LsmFacts {
            lockdown: None,
            caps: None,
            ..refusing_host()
        };
        let why = diagnose(&unknown).unwrap();
        assert!(
            why.contains("capabilities are unknown") && why.contains("lockdown is unknown"),
            "{why}"
        );

        let verifier = LsmFacts {
            lsm: TestLoad::Refused {
                errno: libc::EINVAL,
                log: "\nunknown func bpf_lsm_file_open\n".into(),
            },
            ..refusing_host()
        };
        let why = diagnose(&verifier).unwrap();
        assert!(
            why.contains("rejects a minimal LSM program")
                && why.contains("verifier log: unknown func bpf_lsm_file_open"),
            "{why}"
        );

        let unreadable = LsmFacts {
            lsm_list: None,
            ..refusing_host()
        };
        let why = diagnose(&unreadable).unwrap();
        assert!(
            why.contains("/sys/kernel/security/lsm is unreadable"),
            "{why}"
        );
    }

    #[test]
    fn nothing_to_diagnose_when_lsm_programs_load() {
        let fine = LsmFacts {
            lsm: TestLoad::Loaded,
            tracing: TestLoad::Loaded,
            ..refusing_host()
        };
        assert_eq!(diagnose(&fine), None);
    }

    #[test]
    fn capabilities_and_lockdown_are_read() {
        let status = "Name:\tgovernance\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                      CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        assert_eq!(Caps::from_status(status), Some(ALL_CAPS));
        let bare = Caps::from_status("CapEff:\t0000000000200000\n").unwrap();
        assert_eq!(bare.missing(), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(Caps::from_status("CapEff: zz\n"), None);
        assert_eq!(Caps::from_status(""), None);
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality"),
            Some("integrity")
        );
        assert_eq!(
            lockdown_mode("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(lockdown_mode("garbage"), None);
    }

    /// The test loads run on this host without panicking, whatever it allows.
    #[test]
    fn test_loads_report_an_outcome() {
        let t = test_load(BPF_PROG_TYPE_SOCKET_FILTER, 0, 0);
        assert!(
            matches!(t, TestLoad::Loaded | TestLoad::Refused { .. }),
            "{t:?}"
        );
    }

    /// Symbol names in the embedded ELF object, read without loading anything.
    fn aya_obj_names() -> Vec<String> {
        // The ELF string table holds every symbol name; a substring scan is enough here.
        EBPF_OBJECT
            .split(|&b| b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .map(str::to_owned)
            .collect()
    }
}
