//! Attaching the programs: to the cgroup2 root, the LSM hooks and tracepoints, each as a pinned
//! link.

use super::*;
use aya::programs::{CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockopt};
use std::os::fd::AsFd as _;

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

/// Link `prog` to `target` (`BPF_LINK_CREATE` with `attach_type`, no flags) and pin the link
/// at `path` (`BPF_OBJ_PIN`); the descriptor is closed after, the pin keeps the link.
fn link_and_pin(
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
    path: &Path,
) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    // union bpf_attr's link_create: prog_fd, target_fd, attach_type, flags.
    let create: [u32; 4] = [
        prog.as_raw_fd() as u32,
        target.as_raw_fd() as u32,
        attach_type,
        0,
    ];
    // SAFETY: a BPF_LINK_CREATE attr of the size given, valid for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // union bpf_attr's obj_pin: pathname (u64), bpf_fd, file_flags.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let pin = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: a BPF_OBJ_PIN attr whose path outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
        Attach::SetSockopt => {
            let prog: &mut CgroupSockopt = prog.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            // aya 0.14 gives a sockopt link no `FdLink` to pin: the link is made and pinned
            // here, as aya does for the others (BPF_LINK_CREATE at the cgroup root, no flags).
            let path = pin_dir.join(pins::LINKS).join(name);
            let cgroup = open_cgroup(cgroup_root)?;
            let prog_fd = prog.fd().map_err(err)?;
            return link_and_pin(
                prog_fd.as_fd(),
                cgroup.as_fd(),
                aya_obj::generated::bpf_attach_type::BPF_CGROUP_SETSOCKOPT as u32,
                &path,
            )
            .map_err(|source| KernelError::Pin { path, source });
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
