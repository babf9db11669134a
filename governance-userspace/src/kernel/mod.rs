//! Kernel loader and maps: probe what this kernel can enforce, load the eBPF object with the
//! struct offsets of the running kernel, attach the programs, and write the policy into the maps.

pub mod btf;
mod compile;

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError},
};
use governance_common::{
    AgentValue, Counter, ExecKey, Net4Key, RuleValue, maps, offsets, programs,
};

pub use compile::{KernelPolicy, compile};

/// The eBPF object, built by build.rs from governance-ebpf for this very build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governance"));

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
    #[error("exec rule {rule} ({path}): {source}")]
    ExecTarget {
        rule: String,
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
    pub cgroup2: Option<PathBuf>,
}

impl Probe {
    pub fn run() -> Self {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            kernel,
            btf: Path::new(btf::VMLINUX_BTF).exists(),
            lsm_list: read_lsm_list(),
            cgroup2: crate::agents::cgroup2_mount().ok(),
        }
    }

    /// Is `bpf` among the active LSMs?
    pub fn bpf_lsm_active(&self) -> bool {
        self.lsm_list
            .as_deref()
            .is_some_and(|l| l.trim().split(',').any(|m| m == "bpf"))
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

impl HookState {
    fn of(result: &Result<(), KernelError>) -> Self {
        match result {
            Ok(()) => HookState::Attached,
            Err(e) => HookState::Unavailable(explain(e)),
        }
    }
}

impl fmt::Display for HookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookState::Attached => f.write_str("attached"),
            HookState::Unavailable(why) => write!(f, "NOT AVAILABLE: {why}"),
        }
    }
}

/// Explain a program load/attach failure in terms an operator can act on.
fn explain(err: &KernelError) -> String {
    // Our error messages already include their sources.
    let mut msg = err.to_string();
    if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        msg.push_str(
            " (the kernel refused the program: `bpf` missing from the active LSMs, a lockdown or \
             host security policy that forbids this program type, or missing CAP_BPF/CAP_SYS_ADMIN)",
        );
    }
    msg
}

/// The loaded eBPF object: programs, maps, and what is attached.
pub struct Enforcer {
    ebpf: Ebpf,
    pub exec: HookState,
    pub connect4: HookState,
}

impl Enforcer {
    /// Are all hooks attached?
    pub fn fully_attached(&self) -> bool {
        [&self.exec, &self.connect4]
            .iter()
            .all(|h| matches!(h, HookState::Attached))
    }

    /// Load the object (creating its maps) with the running kernel's struct offsets, for policy
    /// generation `generation` (stamped on its events). Nothing is attached yet.
    pub fn load(generation: u32) -> Result<Self, KernelError> {
        let kbtf = btf::Btf::from_kernel()?;
        let mut values = Vec::new();
        for (global, strukt, field) in offsets::ALL {
            values.push((global, kbtf.field_offset(strukt, field)?));
        }
        let mut loader = EbpfLoader::new();
        for (global, value) in &values {
            loader.override_global(global, value, true);
        }
        loader.override_global(governance_common::GENERATION_GLOBAL, &generation, true);
        Ok(Self {
            ebpf: loader.load(EBPF_OBJECT)?,
            exec: HookState::Unavailable("not attached".into()),
            connect4: HookState::Unavailable("not attached".into()),
        })
    }

    /// Load and attach the exec program on the LSM hook `bprm_check_security`.
    pub fn attach_exec(&mut self) -> Result<(), KernelError> {
        let result = self.try_attach_exec();
        self.exec = HookState::of(&result);
        result
    }

    fn try_attach_exec(&mut self) -> Result<(), KernelError> {
        let name = programs::EXEC;
        let err = |source| KernelError::Program { name, source };
        let kbtf = aya::Btf::from_sys_fs().map_err(|e| err(ProgramError::Btf(e)))?;
        let prog: &mut Lsm = self.program(name)?;
        prog.load(name, &kbtf).map_err(err)?;
        prog.attach().map_err(err)?;
        Ok(())
    }

    /// Load and attach the IPv4 connect program at `cgroup_root` (normally the cgroup2 root:
    /// the program itself decides who is an agent), alongside any other programs there.
    pub fn attach_connect4(&mut self, cgroup_root: &Path) -> Result<(), KernelError> {
        let result = self.try_attach_connect4(cgroup_root);
        self.connect4 = HookState::of(&result);
        result
    }

    fn try_attach_connect4(&mut self, cgroup_root: &Path) -> Result<(), KernelError> {
        let name = programs::CONNECT4;
        let err = |source| KernelError::Program { name, source };
        let cgroup = std::fs::File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
            path: cgroup_root.to_owned(),
            source,
        })?;
        let prog: &mut CgroupSockAddr = self.program(name)?;
        prog.load().map_err(err)?;
        // On kernels with bpf_link (5.7+) aya creates a link, and cgroup links always coexist
        // with other programs; the kernel rejects BPF_F_ALLOW_MULTI there (EINVAL), so ask for
        // the "single" mode, which sends no flags.
        prog.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
        Ok(())
    }

    /// A program of the object, as its concrete type.
    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, KernelError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing {
                what: "program",
                name,
            })?
            .try_into()
            .map_err(|source| KernelError::Program { name, source })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf
            .map_mut(name)
            .ok_or(KernelError::Missing { what: "map", name })
    }

    /// Write compiled policy into the maps: rules first, then the agent roots that use them,
    /// so an agent never runs with half its rules.
    ///
    /// An executable that does not exist is reported and skipped (nothing to run, nothing to
    /// decide; it is picked up at the next load). Any map error aborts.
    pub fn install(&mut self, policy: &KernelPolicy) -> Result<Vec<KernelError>, KernelError> {
        let mut skipped = Vec::new();
        {
            let name = maps::EXEC_RULES;
            let mut exec: HashMap<_, ExecKey, RuleValue> =
                HashMap::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
            for ((path, agent_id), value) in &policy.exec {
                let (dev, ino) = match exec_identity(path) {
                    Ok(id) => id,
                    Err(source) => {
                        skipped.push(KernelError::ExecTarget {
                            rule: policy
                                .rule_names
                                .get((value.rule_id as usize).saturating_sub(1))
                                .cloned()
                                .unwrap_or_default(),
                            path: path.clone(),
                            source,
                        });
                        continue;
                    }
                };
                if let Ok(target) = std::fs::canonicalize(path)
                    && target != *path
                {
                    tracing::info!(
                        "exec rule names {}, which resolves to {}: that file is what is decided on",
                        path.display(),
                        target.display()
                    );
                }
                let key = ExecKey {
                    agent_id: *agent_id,
                    dev,
                    ino,
                };
                exec.insert(key, value, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
            }
        }
        {
            let name = maps::NET4_RULES;
            let mut net: LpmTrie<_, Net4Key, RuleValue> = LpmTrie::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            for ((prefix, data), value) in &policy.net4 {
                net.insert(&KernelPolicy::net4_key(*prefix, *data), value, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
            }
        }
        let name = maps::AGENTS;
        let mut map: HashMap<_, u64, AgentValue> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        for (cgroup_id, value) in &policy.agents {
            map.insert(cgroup_id, value, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        Ok(skipped)
    }

    /// Take the decision-event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let name = maps::EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, KernelError> {
        let name = maps::COUNTERS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(KernelError::Missing { what: "map", name })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let values = array
            .get(&(counter as u32), 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(values.iter().sum())
    }
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
    fn the_embedded_object_has_every_program_and_map() {
        let obj = aya_obj_names();
        for name in [programs::EXEC, programs::CONNECT4] {
            assert!(
                obj.contains(&name.to_string()),
                "program {name} missing: {obj:?}"
            );
        }
        for name in [
            maps::AGENTS,
            maps::EXEC_RULES,
            maps::NET4_RULES,
            maps::EVENTS,
            maps::COUNTERS,
        ] {
            assert!(
                obj.contains(&name.to_string()),
                "map {name} missing: {obj:?}"
            );
        }
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
