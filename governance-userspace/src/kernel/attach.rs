//! Attaching the programs: to the cgroup2 root, the LSM hooks and tracepoints, each as a pinned
//! link.

use super::*;
use aya::programs::{CgroupSkb, CgroupSkbAttachType, CgroupSock};

/// The cgroup2 root, to attach cgroup programs at. (cgroup links always coexist with other
/// programs; the kernel rejects BPF_F_ALLOW_MULTI for links (EINVAL), so they attach "single",
/// which sends no flags.)
pub(super) fn open_cgroup(cgroup_root: &Path) -> Result<std::fs::File, KernelError> {
    std::fs::File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
        path: cgroup_root.to_owned(),
        source,
    })
}

/// A cgroup program's link as an fd link, to pin.
pub(super) fn fd_link<L>(link: L, pin_dir: &Path, name: &'static str) -> Result<FdLink, KernelError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    link.try_into().map_err(|e| KernelError::Pin {
        path: pin_dir.join(pins::LINKS).join(name),
        source: std::io::Error::other(e),
    })
}

/// Load and attach one program, and pin its link.
pub(super) fn attach(
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
    // The program, a `$ty` whose `attach` takes the cgroup and the mode, loaded and attached
    // at the cgroup2 root, as an fd link.
    macro_rules! at_cgroup_root {
        ($ty:ty) => {{
            let prog: &mut $ty = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(open_cgroup(cgroup_root)?, CgroupAttachMode::Single);
            fd_link(
                prog.take_link(id.map_err(err)?).map_err(err)?,
                pin_dir,
                name,
            )?
        }};
    }
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
            at_cgroup_root!(CgroupSockAddr)
        }
        Attach::SockOps => {
            at_cgroup_root!(SockOps)
        }
        Attach::SkbEgress => {
            let prog: &mut CgroupSkb = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(
                open_cgroup(cgroup_root)?,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            );
            fd_link(
                prog.take_link(id.map_err(err)?).map_err(err)?,
                pin_dir,
                name,
            )?
        }
        Attach::SockCreate => {
            at_cgroup_root!(CgroupSock)
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
