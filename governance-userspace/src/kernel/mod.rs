//! Kernel loader and maps: probe what this kernel can enforce, load the eBPF object with the
//! struct offsets of the running kernel, attach the programs, and write the policy into the maps.

mod attach;
mod bpffs;
pub mod btf;
mod canary;
mod compile;
mod discover;
mod facts;
mod handover;
mod host_files;
mod ident_filter;
pub mod probe;
mod proxy_conns;
mod quarantine;
mod report;
mod sequence;
pub use report::count_keys;
mod slots;
pub use slots::{SlotEntries, Written};
mod superblock;
pub use superblock::{
    forget_mounts, kernel_dev_at, mountinfo, mounts_of, remounted, superblock_of,
};
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
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError, RawTracePoint, SockOps, links::FdLink,
    },
};
use governance_common::{
    AgentKey, AgentValue, Bucket, BucketKey, ConnKey, Counter, ExecKey, GrantKey, NET_SLOTS,
    NetEntry, NetValue, OrigDst, ProxyAddr, STATE_BTRFS, STATE_BUILD, STATE_GENERATION,
    STATE_LAYOUT, UNKNOWN_PROFILE, maps, offsets, pins,
    programs::{self, Attach, Program},
    sequence::{SeqArmed, SeqStateKey},
};

use self::attach::*;
pub use self::{
    bpffs::*, discover::*, facts::*, host_files::*, proxy_conns::*, sequence::armed_source,
};

pub use canary::Canary;
pub use compile::{
    Class, KernelPolicy, Protect, ReadAhead, bucket_id, compile, compile_ahead, compile_from,
    system_link_targets, unlisted_mounts,
};
pub(crate) use compile::{Selectors, homes};
pub use handover::Carried;

/// The eBPF object, built by build.rs from governance-ebpf for this very build.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governance"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the drill's canary: {0}")]
    Canary(String),
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
    /// The entries each generation slot holds (see [`slots`]); None: unknown (pins adopted
    /// from a previous process, writes that failed half-way, or a drill that failed).
    slots: [Option<SlotEntries>; 2],
    /// What the last install wrote and deleted.
    last_install: Written,
    /// When (CLOCK_MONOTONIC ns) this process first flipped a generation in.
    enforcing_since: Option<u64>,
    /// The generation the last flip made active, until [`Enforcer::settle`] has cleaned up
    /// after the one it retired (its tables were taken by the install).
    unsettled: Option<KernelPolicy>,
    /// The dynamic loaders' identities the `LOADERS` map holds ([`Enforcer::loaders_changed`]).
    loaders: Vec<(u32, u64)>,
}

/// Wait until every program run that began before the call has ended: an RCU grace period.
/// Each program runs inside an RCU read-side critical section (none is sleepable: the LSM
/// trampolines, the cgroup program arrays and the tracepoints all take `rcu_read_lock` around
/// a run), and `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()` (kernel/sched/
/// membarrier.c; the BPF selftests' `kern_sync_rcu` waits the same way). It holds however long
/// a run was delayed (an interrupt storm, a preempted vCPU), which no fixed wait does. On a
/// kernel that refuses it (`nohz_full` CPUs: EINVAL; no membarrier: ENOSYS) the wait falls
/// back to 50 ms, far longer than a run, and says so once.
pub fn grace_period() {
    /// `MEMBARRIER_CMD_GLOBAL` (include/uapi/linux/membarrier.h; the libc crate names none).
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; flags 0 is the only value this command accepts.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        static SAID: std::sync::Once = std::sync::Once::new();
        let error = std::io::Error::last_os_error();
        SAID.call_once(|| {
            tracing::warn!(
                %error,
                "the kernel offers no RCU grace period to wait on (membarrier); a retired generation's cleanup waits 50 ms instead"
            );
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Where a new build stages its pins beside a previous build's (below the pin directory).
pub const HANDOVER_DIR: &str = "handover"; // (bpffs refuses dots in names)

/// An identity of the embedded eBPF object, kept in the pins, so a daemon of another build
/// does not adopt programs whose maps it would misread (it hands over from them instead).
///
/// `GOVERNANCE_TEST_BUILD_SALT` (tests only) is mixed in: two daemons of one binary then
/// present different builds, so the handover runs between two real daemons. Beyond the build
/// id, a handover reads only the previous build's runtime tables, by their layout number (see
/// [`handover`]), which the salt does not change.
///
/// Computed once: reading the object again would bring its pages back into the resident set
/// (see [`Enforcer::start`]).
pub fn build_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut h: u32 = 0x811c_9dc5;
        let salt = std::env::var("GOVERNANCE_TEST_BUILD_SALT").unwrap_or_default();
        for b in EBPF_OBJECT.iter().chain(salt.as_bytes()) {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h.max(1)
    })
}

/// What [`Enforcer::entries`] gathers from a compiled generation.
pub(super) struct Gathered {
    pub entries: SlotEntries,
    pub skipped: Vec<KernelError>,
    /// The socket files its `unix` rules name, as resolved.
    pub unix_paths: Vec<(PathBuf, Option<(u32, u64)>)>,
}

impl Enforcer {
    /// Are all the hooks of full enforcement attached?
    /// Is the exec LSM hook attached? Without it (degraded mode), exec is decided after the
    /// fact from the program's identity alone: no path rule is read.
    pub fn exec_by_path(&self) -> bool {
        self.hooks.iter().any(|(p, h)| {
            p.name == governance_common::programs::EXEC.name && matches!(h, HookState::Attached)
        })
    }

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
    ///
    /// Then the embedded object (3.9 MB, read whole to load it and to compute [`build_id`]) is
    /// taken out of the daemon's resident set: nothing reads it again.
    pub fn start(
        pin_dir: &Path,
        cgroup_root: &Path,
        degraded_exec: bool,
    ) -> Result<Self, KernelError> {
        let started = Self::load_or_adopt(pin_dir, cgroup_root, degraded_exec);
        crate::memory::page_out(EBPF_OBJECT);
        let mut enforcer = started?;
        enforcer.key_btrfs_subvolumes()?;
        Ok(enforcer)
    }

    /// Key btrfs files as the programs do: on their subvolume's device where the programs were
    /// loaded knowing btrfs's types (`STATE_BTRFS`), else on the superblock's. Called at each
    /// start and before each generation is built; where btrfs's types are there now but were
    /// not when the programs were loaded (the module loaded later), says once that its
    /// subvolumes share identities until the programs are loaded again. Returns whether btrfs
    /// files are keyed on their subvolumes.
    pub fn key_btrfs_subvolumes(&mut self) -> Result<bool, KernelError> {
        let keyed = self.state(STATE_BTRFS)? != 0;
        superblock::key_subvolumes(keyed);
        if !keyed && std::path::Path::new("/sys/kernel/btf/btrfs").exists() {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    "btrfs was loaded after the programs: files on btrfs are keyed on the \
                     superblock's device, which every subvolume shares, until the programs are \
                     loaded again (`governance unload`, then start; docs/limits.md)"
                );
            });
        }
        Ok(keyed)
    }

    fn load_or_adopt(
        pin_dir: &Path,
        cgroup_root: &Path,
        degraded_exec: bool,
    ) -> Result<Self, KernelError> {
        // Pins adopted are checked as pins made: in a directory others can write, they are
        // not ours to keep (see `secure_pin_dirs`).
        if pin_dir.exists() {
            secure_pin_dirs(pin_dir)?;
        }
        let next = pin_dir.join(HANDOVER_DIR);
        if next.exists() {
            // A handover a crash interrupted. If what was staged is not whole (its build id
            // not written yet: killed while attaching), or the previous build's programs are
            // still attached and their set whole (its build id kept: `promote` clears it
            // before the first link goes), drop what was staged (they enforce); otherwise the
            // staged programs are what enforces, or are about to: finish moving them into
            // place.
            let staged_partial = matches!(pinned_build(&next), Ok(0));
            if staged_partial || (has_links(pin_dir) && !matches!(pinned_build(pin_dir), Ok(0))) {
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
        secure_pin_dirs(pin_dir)?;
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
        // The kernel's BTF (5 MB on disk) is parsed three times: for the struct offsets, by
        // the loader (for relocations), and for attaching. Each parse is tens of MiB of heap,
        // so each is dropped before the next: one alive at a time keeps the daemon's peak
        // memory down (the allocator keeps what the process once used).
        let (values, btrfs) = {
            let kbtf = btf::Btf::from_kernel()?;
            let mut values = Vec::new();
            for (global, strukt, field) in offsets::ALL {
                values.push((global, kbtf.field_offset(strukt, field)?));
            }
            for (global, strukt) in offsets::SIZES {
                values.push((global, kbtf.struct_size(strukt)?));
            }
            let embedded = !kbtf.field_is_pointer("file", "f_owner")?;
            // From 6.12 the owner is allocated apart and points back to its file.
            let back = if embedded {
                offsets::NO_FIELD
            } else {
                kbtf.field_offset("fown_struct", "file")
                    .unwrap_or(offsets::NO_FIELD)
            };
            if !embedded && back == offsets::NO_FIELD {
                tracing::warn!(
                    "this kernel's file.f_owner is a pointer with no way back to its file: agents may not arm files for SIGIO (O_ASYNC, FIOASYNC, F_SETSIG)"
                );
            }
            values.push((offsets::FILE_F_OWNER_EMBEDDED, u64::from(embedded)));
            values.push((offsets::FOWN_FILE, back));
            // Without io_uring in the kernel no request can run under captured credentials.
            values.push((
                offsets::TASK_IO_URING,
                kbtf.field_offset("task_struct", "io_uring")
                    .unwrap_or(offsets::NO_FIELD),
            ));
            values.push((
                governance_common::discover::TASK_HELPERS_GLOBAL,
                u64::from(discover_task_helpers()),
            ));
            // Where a btrfs inode's subvolume device is, if btrfs's types are here (the module
            // loaded, or built in); 0: btrfs files keyed on the superblock's device.
            drop(kbtf);
            let btrfs = match btf::Btf::btrfs_offsets() {
                // The programs key on subvolumes only with the inode's offset (subvolume.rs
                // `keyed`): the record says the same.
                Ok(found) => found.filter(|o| o.vfs_inode != 0),
                Err(e) => {
                    tracing::warn!(
                        "btrfs's types do not read ({e}): files on btrfs are keyed on the \
                         superblock's device, which every subvolume shares (docs/limits.md)"
                    );
                    None
                }
            };
            for (global, value) in [
                (
                    offsets::BTRFS_INODE_VFS_INODE,
                    btrfs.map_or(0, |o| o.vfs_inode),
                ),
                (offsets::BTRFS_INODE_ROOT, btrfs.map_or(0, |o| o.root)),
                (
                    offsets::BTRFS_ROOT_ANON_DEV,
                    btrfs.map_or(0, |o| o.anon_dev),
                ),
            ] {
                values.push((global, value));
            }
            (values, btrfs.is_some())
        };
        let loading = std::time::Instant::now();
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            for (global, value) in &values {
                loader.override_global(global, value, true);
            }
            loader.load(EBPF_OBJECT)?
        };
        let relocated = loading.elapsed();
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
        let set_state = |ebpf: &mut aya::Ebpf, index: u32, value: u32| {
            let name = maps::STATE;
            let map = ebpf
                .map_mut(name)
                .ok_or(KernelError::Missing { what: "map", name })?;
            let mut state: Array<_, u32> =
                Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            state
                .set(index, value, 0)
                .map_err(|source| KernelError::Map { name, source })
        };
        // The runtime layout goes in before anything is attached; the generation stays 0 (no
        // agents) until the first policy is installed. The build id goes in last, once every
        // program is attached (below).
        set_state(&mut ebpf, STATE_LAYOUT, governance_common::RUNTIME_LAYOUT)?;
        set_state(&mut ebpf, STATE_BTRFS, u32::from(btrfs))?;
        let reading = std::time::Instant::now();
        let kernel_btf = aya::Btf::from_sys_fs().ok();
        let btf_read = reading.elapsed();
        let attaching = std::time::Instant::now();
        // Attach one program: its state for the operator.
        let attach_one = |ebpf: &mut aya::Ebpf, program| match attach(
            ebpf,
            program,
            cgroup_root,
            kernel_btf.as_ref(),
            pin_dir,
        ) {
            Ok(()) => HookState::Attached,
            Err(e) => HookState::Unavailable(explain(&e)),
        };
        let mut hooks = Vec::new();
        for program in programs::ALL {
            hooks.push((program, attach_one(&mut ebpf, program)));
        }
        // Hooks only some kernels have: part of full enforcement where the kernel has them;
        // elsewhere what they see goes through another hook.
        for program in programs::WHERE_PRESENT {
            let present = kernel_btf.as_ref().is_some_and(|b| {
                b.id_by_type_name_kind(
                    &format!("bpf_lsm_{}", program.name),
                    aya_obj::btf::BtfKind::Func,
                )
                .is_ok()
            });
            if present {
                let required = programs::Program {
                    required: true,
                    ..program
                };
                hooks.push((required, attach_one(&mut ebpf, program)));
            }
        }
        // Discovery (never enforcement): attached when the kernel allows, its failure only
        // reported.
        hooks.push((
            programs::DISCOVER,
            attach_one(&mut ebpf, programs::DISCOVER),
        ));
        let exec_missing = hooks
            .iter()
            .any(|(p, h)| *p == programs::EXEC && !matches!(h, HookState::Attached));
        if degraded_exec && exec_missing {
            hooks.push((
                programs::EXEC_KILL,
                attach_one(&mut ebpf, programs::EXEC_KILL),
            ));
        }
        // Where a start's time goes (the verifier's, mostly; see docs/benchmarks.md).
        tracing::info!(
            object_ms = relocated.as_millis() as u64,
            btf_ms = btf_read.as_millis() as u64,
            programs_ms = attaching.elapsed().as_millis() as u64,
            programs = hooks.len(),
            "loaded the eBPF object and its programs"
        );
        // The credentials io_uring tasks of agents had are recorded from now on (creds.rs):
        // processes started before (also those of a previous build's time, whose records are
        // not carried over) are decided as before the recording.
        {
            let name = maps::AGENT_CREDS_STATE;
            let map = ebpf
                .map_mut(name)
                .ok_or(KernelError::Missing { what: "map", name })?;
            let mut state: Array<_, u64> =
                Array::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            state
                .set(0, crate::events::time::monotonic_ns(), 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        // Every program is attached and pinned: the set is this build's, whole. Only now does
        // it carry the build id that a restart adopts without loading anything (red team
        // round 33: written before the attaching, a start killed half-way left a set that
        // every later start adopted, its missing hooks never attached). A set without it is
        // another build's to the next start, which loads and attaches its own beside it and
        // then retires it (`load_or_adopt`).
        set_state(&mut ebpf, STATE_BUILD, build_id())?;
        // The programs stay attached through their pinned links; the maps are used through
        // their pins from here on, exactly as after a restart.
        drop(ebpf);
        drop(kernel_btf);
        let mut enforcer = Self::open(pin_dir)?;
        enforcer.hooks = hooks;
        enforcer.adopted = false;
        // The maps were created just now: both slots are empty.
        enforcer.slots = [Some(SlotEntries::default()), Some(SlotEntries::default())];
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
            .chain(&programs::WHERE_PRESENT)
            .chain([&programs::EXEC_KILL, &programs::DISCOVER])
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
            slots: [None, None],
            last_install: Written::default(),
            loaders: Vec::new(),
            enforcing_since: None,
            unsettled: None,
        })
    }

    /// End a handover (see [`Enforcer::start`]): this build's programs enforce a policy, so
    /// the previous build's are detached and this build's pins move into the pin directory.
    /// Until now both builds' programs ran on every hook (each may refuse: the stricter wins).
    /// First the previous build's runtime state is copied into this build's maps (see
    /// [`handover`]); if that fails, the previous build stays attached beside this one.
    /// Returns what was carried over, None if there was no handover.
    pub fn finish_handover(&mut self) -> Result<Option<Carried>, KernelError> {
        let Some(old) = self.handover_from.take() else {
            return Ok(None);
        };
        let carried = match self.carry_over(&old) {
            Ok(carried) => carried,
            Err(e) => {
                self.handover_from = Some(old);
                return Err(e);
            }
        };
        promote(&old, &self.pin_dir)?;
        self.pin_dir = old;
        Ok(Some(carried))
    }

    /// When this process first installed a generation (CLOCK_MONOTONIC ns, taken just
    /// before the flip), if it has.
    pub fn enforcing_since(&self) -> Option<u64> {
        self.enforcing_since
    }

    fn map(&self, name: &'static str) -> Result<&Map, KernelError> {
        self.maps
            .get(name)
            .ok_or(KernelError::Missing { what: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, KernelError> {
        self.maps
            .get_mut(name)
            .ok_or(KernelError::Missing { what: "map", name })
    }

    fn state(&self, index: u32) -> Result<u32, KernelError> {
        let name = maps::STATE;
        let map = self.map(name)?;
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

    /// Install a compiled generation: write its slot, flip the active generation (one 32-bit
    /// store the programs read once per decision). Until the flip the previous generation
    /// enforces alone; after it, this one. The slot written is the one retired at the previous
    /// flip, which still holds the generation before that: only the entries that differ are
    /// written and deleted (see [`slots`]), so after the writes the slot holds exactly this
    /// generation's tables.
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
    pub fn install(&mut self, policy: KernelPolicy) -> Result<Vec<KernelError>, KernelError> {
        let skipped = self.flip(policy)?;
        self.settle()?;
        Ok(skipped)
    }

    /// [`install`](Self::install) up to the flip: when this returns Ok, the kernel enforces
    /// the new generation. What is left ([`settle`](Self::settle)) waits until no decision
    /// can still be reading the generation the flip retired; the caller may first say that
    /// the new one enforces. A flip settles the previous one first, so the slot it writes is
    /// never one that a decision still reads.
    pub fn flip(&mut self, mut policy: KernelPolicy) -> Result<Vec<KernelError>, KernelError> {
        self.settle()?;
        let slot = governance_common::slot(policy.generation);
        // The node's own tables (not per generation): what a later package upgrade or module
        // load changed is picked up by every reload.
        self.loaders_changed()?;
        let devices = crate::procfs::read_to_string("/proc/devices").unwrap_or_default();
        let misc = crate::procfs::read_to_string("/proc/misc").unwrap_or_default();
        let ttys = crate::procfs::read_to_string("/proc/tty/drivers").unwrap_or_default();
        self.set_raw_devices(&raw_device_majors(&devices, &misc, &ttys))?;
        // Both slots known (after a restart: one walk of the tables).
        self.learn()?;
        let Gathered {
            entries: new,
            skipped,
            unix_paths,
        } = self.entries(&mut policy);
        let old = self.slots[slot as usize].take().unwrap_or_default();
        // The slot's identity filter first: exactly the identities the slot is to hold.
        let result = self
            .write_ident_filter(slot, ident_filter::filter_of(&new.idents), false)
            .and_then(|()| self.apply(slot, &old, &new));
        // A slot whose writes failed half-way is unknown: the next install walks it.
        self.slots[slot as usize] = result.is_ok().then_some(new);
        self.last_install = result?;
        self.clear_sequences(slot)?;
        self.write_sequences(&policy, slot)?;
        self.mark_allowlists(&policy, slot, true)?;
        self.protect_runtime_sockets()?;
        {
            let name = maps::STATE;
            let mut state: Array<_, u32> = Array::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            let now = crate::events::monotonic_ns();
            state
                .set(STATE_GENERATION, policy.generation, 0)
                .map_err(|source| KernelError::Map { name, source })?;
            self.enforcing_since.get_or_insert(now);
        }
        // Only now: until the flip the generation before enforces, and its sockets are the
        // ones to follow.
        self.set_unix_rule_paths(unix_paths);
        self.unsettled = Some(policy);
        Ok(skipped)
    }

    /// Set the slot's [`maps::ALLOWLIST_ANY`] flag: 1 when a class of `policy` has an exec
    /// allowlist, so that the kernel looks at writes through descriptors (`written_through`).
    /// `exact`: the slot holds `policy` alone (an install before its flip: 0 when it has
    /// none); else `policy` is added to the slot (a canary: set, never cleared).
    fn mark_allowlists(
        &mut self,
        policy: &KernelPolicy,
        slot: u32,
        exact: bool,
    ) -> Result<(), KernelError> {
        let any = policy.classes.iter().any(|c| c.value.exec_allowlist());
        if !any && !exact {
            return Ok(());
        }
        let name = maps::ALLOWLIST_ANY;
        let mut flags: Array<_, u32> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        flags
            .set(slot, u32::from(any), 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// After a [`flip`](Self::flip): once every decision that read the retired generation has
    /// finished (an RCU grace period, [`grace_period`]), clear its sequence lists and delete
    /// the throttle buckets and sequence state the new generation does not lead to. Nothing to
    /// do if the last flip was settled. A failure leaves it to the next settle (and so the
    /// next flip fails before it writes anything).
    pub fn settle(&mut self) -> Result<(), KernelError> {
        match self.unsettled() {
            Some(generation) => {
                grace_period();
                self.settle_waited(generation)
            }
            None => Ok(()),
        }
    }

    /// The generation whose flip is not settled yet, if any.
    pub fn unsettled(&self) -> Option<u32> {
        self.unsettled.as_ref().map(|p| p.generation)
    }

    /// [`settle`](Self::settle) for a caller that has waited for a [`grace_period`] which began
    /// after the flip to `generation` (it read [`unsettled`](Self::unsettled) after that flip):
    /// so it can wait without holding the kernel state. Nothing to do if that flip was settled
    /// meanwhile or a later one made (that one waits for its own grace period).
    pub fn settle_waited(&mut self, generation: u32) -> Result<(), KernelError> {
        let Some(policy) = self.unsettled.take_if(|p| p.generation == generation) else {
            return Ok(());
        };
        let retired = governance_common::slot(policy.generation) ^ 1;
        let result = self
            .clear_sequences(retired)
            .and_then(|()| self.prune_buckets(&policy))
            .and_then(|()| self.prune_sequences(&policy));
        if result.is_err() {
            self.unsettled = Some(policy);
        }
        result
    }

    /// How many entries the last install wrote and deleted in its slot's tables.
    pub fn last_install(&self) -> slots::Written {
        self.last_install
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
        let map = self.map(name)?;
        let buckets: HashMap<_, BucketKey, Bucket> =
            HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        Ok(buckets.iter().filter_map(Result::ok).collect())
    }

    /// The entries of `policy`'s tables (for either slot), what was skipped (an executable or
    /// a socket file that does not exist), and the socket files its `unix` rules name, as
    /// resolved. The classes' tables are taken out of `policy` as they are gathered, so the
    /// generation is never held twice.
    pub(super) fn entries(&mut self, policy: &mut KernelPolicy) -> Gathered {
        let mut skipped = Vec::new();
        let mut w = slots::Writes::default();
        let count = |f: fn(&Class) -> usize| -> usize {
            policy.classes.iter().chain(&policy.builtins).map(f).sum()
        };
        w.exec.reserve(count(|c| c.exec.len()));
        w.paths.reserve(count(|c| c.paths.len()));
        w.net.reserve(count(|c| c.net.len()));
        w.idents.reserve(count(|c| c.idents.len()));
        for class in &mut policy.classes {
            // Two exact rules that name one file (hard links: `/usr/bin/perl` and
            // `/usr/bin/perl5.36.0`) give it the more severe answer, as two names of one object
            // do everywhere (red team round 17: the later name's used to win).
            let mut by_file: BTreeMap<(u32, u64), governance_common::RulePair> = BTreeMap::new();
            for (path, (value, found)) in std::mem::take(&mut class.exec) {
                match found.map_or_else(|| exec_identity(&path), Ok) {
                    Ok(id) => {
                        let merged = by_file.entry(id).or_default();
                        *merged = compile::severer(*merged, value);
                    }
                    Err(source) => skipped.push(KernelError::ExecTarget { path, source }),
                }
            }
            for ((dev, ino), value) in by_file {
                w.exec.push(((class.id, dev, ino), value));
            }
        }
        // A node's bytes shared with the other slot's record where it has the same entry
        // (a reload keeps most of them): the two slots' records hold one copy.
        let slot = governance_common::slot(policy.generation);
        let other = &self.slots[(slot ^ 1) as usize];
        let empty = slots::Table::default();
        for class in policy.classes.iter_mut().chain(&mut policy.builtins) {
            let mut twins = other.as_ref().map_or(&empty, |s| &s.paths).twins(class.id);
            // In key order, as `twins` asks.
            for ((access, bytes), value) in std::mem::take(&mut class.paths) {
                let bytes = twins.bytes(access, bytes);
                w.paths.push(((class.id, access, bytes), value));
            }
        }
        for class in &mut policy.classes {
            for ((bits, addr), list) in std::mem::take(&mut class.net) {
                let mut value = NetValue {
                    len: list.len() as u32,
                    _pad: 0,
                    entries: [NetEntry::default(); NET_SLOTS],
                };
                value.entries[..list.len()].copy_from_slice(&list);
                w.net.push(((class.id, bits, addr), value));
            }
        }
        for (rule_id, throttle) in &policy.throttles {
            w.throttles.push((*rule_id, *throttle));
        }
        let unix_paths = Self::unix_entries(policy, &mut skipped, &mut w);
        for class in policy.classes.iter_mut().chain(&mut policy.builtins) {
            for ((dev, ino, scope, name), value) in std::mem::take(&mut class.idents) {
                w.idents.push(((class.id, dev, ino, scope, name), value));
            }
        }
        let roots = policy
            .agents
            .iter()
            .map(|(cgroup_id, i)| (*cgroup_id, 0, *i));
        let profiles = policy.profiles.iter().copied();
        for (cgroup_id, profile, i) in roots.chain(profiles) {
            w.agents
                .push(((cgroup_id, profile), policy.classes[i].value));
        }
        Gathered {
            entries: w.into(),
            skipped,
            unix_paths,
        }
    }

    /// The dynamic loaders as they are now, in the `LOADERS` map if they changed (true): at
    /// every flip, and once a second, since a glibc upgrade renames a new loader into place and
    /// until the map knows it, under an exec allowlist every dynamically linked program an
    /// agent starts is refused at its interpreter's mapping (red team round 31).
    pub fn loaders_changed(&mut self) -> Result<bool, KernelError> {
        forget_mounts();
        let now = loader_identities();
        if now == self.loaders {
            return Ok(false);
        }
        self.set_loaders(&now)?;
        self.loaders = now;
        Ok(true)
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

    /// Processes agents may not signal or trace: the map is reset to exactly these, each with
    /// its start stamp ([`crate::procfs::start_stamp`]), by which the CLI tells the daemon from
    /// a process given its pid after it exited.
    pub fn protect(&mut self, pids: &[u32]) -> Result<(), KernelError> {
        let name = maps::PROTECTED;
        let mut map: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for pid in old.iter().filter(|p| !pids.contains(p)) {
            let _ = map.remove(pid);
        }
        for pid in pids {
            map.insert(pid, crate::procfs::start_stamp(*pid), 0)
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
        let mut out: Vec<(u64, u32)> = self
            .agents_map()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.slot == slot && k.profile == 0)
            .map(|(k, v)| (k.cgroup_id, v.class))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The AGENTS map (both slots), to read.
    fn agents_map(&self) -> Result<HashMap<&MapData, AgentKey, AgentValue>, KernelError> {
        let name = maps::AGENTS;
        let map = self.map(name)?;
        HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// The decision-event ring buffer (once: the consumer position is shared through the map,
    /// so events produced while no daemon ran are read first).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring(maps::EVENTS)
    }

    /// A ring buffer map, taken out of the enforcer (it has one consumer).
    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, KernelError> {
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

    /// Start recording the credentials io_uring tasks of agents had again (creds.rs) if the
    /// kernel ended it for a full table (its start at 0) and the table is less than half full
    /// now: processes started from now on are decided by the record again, older ones as
    /// before it. Whether it started again.
    pub fn resume_credential_records(&mut self) -> Result<bool, KernelError> {
        let name = maps::AGENT_CREDS_STATE;
        let state: Array<_, u64> =
            Array::try_from(self.map(name)?).map_err(|source| KernelError::Map { name, source })?;
        if state
            .get(&0, 0)
            .map_err(|source| KernelError::Map { name, source })?
            != 0
        {
            return Ok(false);
        }
        let records = {
            let name = maps::AGENT_CREDS;
            let map: HashMap<_, u64, u32> = HashMap::try_from(self.map(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            map.keys()
                .take(governance_common::MAX_AGENT_CREDS as usize)
                .count()
        };
        if records >= governance_common::MAX_AGENT_CREDS as usize / 2 {
            return Ok(false);
        }
        let mut state: Array<_, u64> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        state
            .set(0, crate::events::time::monotonic_ns(), 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(true)
    }

    /// The decision events the ring had no room for, by agent root (`EVENTS_DROPPED`), since
    /// each agent's entry was made.
    pub fn dropped_by_agent(&self) -> Result<Vec<(u64, u64)>, KernelError> {
        let name = maps::EVENTS_DROPPED;
        let map: HashMap<_, u64, u64> = HashMap::try_from(self.map(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        // (A walk the kernel's inserts restart may see a key twice: kept once, its latest count.)
        let mut out: Vec<(u64, u64)> = map
            .iter()
            .take(2 * governance_common::MAX_AGENTS as usize)
            .filter_map(Result::ok)
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        out.dedup_by_key(|(root, _)| *root);
        Ok(out)
    }

    /// Forget the drop counts of agent roots `gone` (see [`Enforcer::dropped_by_agent`]).
    pub fn forget_dropped(&mut self, gone: &[u64]) -> Result<(), KernelError> {
        let name = maps::EVENTS_DROPPED;
        let mut map: HashMap<_, u64, u64> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        for root in gone {
            match map.remove(root) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(KernelError::Map { name, source }),
            }
        }
        Ok(())
    }

    /// A kernel counter as each CPU counted it (index = CPU).
    pub fn counter_per_cpu(&self, counter: Counter) -> Result<Vec<u64>, KernelError> {
        let name = maps::COUNTERS;
        let map = self.map(name)?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let values = array
            .get(&(counter as u32), 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(values.to_vec())
    }
}

#[cfg(test)]
mod tests;

/// Whether cgroup_skb programs may call `bpf_get_current_pid_tgid` and `bpf_get_current_comm`
/// here (the `discover` program names the sending process only then; see its
/// `DISCOVER_TASK_HELPERS`). A probe that cannot run counts as no.
fn discover_task_helpers() -> bool {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    [
        BpfHelper::BPF_FUNC_get_current_pid_tgid,
        BpfHelper::BPF_FUNC_get_current_comm,
    ]
    .into_iter()
    .all(|h| is_helper_supported(ProgramType::CgroupSkb, h).unwrap_or(false))
}
