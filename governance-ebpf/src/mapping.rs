//! Code mapped executable: the `mmap_file` and `file_mprotect` LSM hooks decide every
//! mapping of a file with PROT_EXEC by an agent, so that code the exec rules keep from running
//! cannot run without an exec: loaded by ld.so (`ld.so /usr/bin/nc`, see exec.rs), by
//! dlopen(), or by a hand-written loader.
//!
//! What decides a mapping:
//!
//! 1. The program's own image (the file the exec hook decided, `current->mm->exe_file`) is
//!    not decided again: the kernel's ELF loader maps it right after the exec, past the point
//!    where a refusal could still fail the exec cleanly (the process would be killed).
//!    Changing `exe_file` needs CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which agents do not get in
//!    the initial user namespace; in one of their own (`allow_user_namespaces`),
//!    `PR_SET_MM_MAP` asks only CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE there, and only once the
//!    old image is unmapped: code already running from anonymous memory (docs/limits.md).
//! 2. A file the kernel opened for an exec that is not the exec's own file: the interpreter
//!    an ELF names (`PT_INTERP`) when it is not the dynamic loader, and `uselib`'s library.
//!    The exec hook never sees it, so it is decided here as an exec is, by its identity, its
//!    path and the default (red team round 8: an allowed program naming a blocked one as its
//!    interpreter ran it, even one whose contents the agent may not read). A refusal comes
//!    past the exec's point of no return: the process is killed.
//! 3. Exact exec rules, by the file's identity (as the exec hook decides): `block` refuses the
//!    mapping; `escalate` refuses it unless the exec (or this mapping) was approved; `sandbox`
//!    puts the mapping process under the rule's profile, as running the file would; `allow`
//!    and `throttle` let it map (a throttle counts execs, not mappings).
//! 4. The default posture does not apply: every dynamically linked program maps libc, ld.so
//!    and more, which an exec allowlist never names. Prefix rules do not apply either:
//!    `file_mprotect` cannot resolve a path, so they could be sidestepped by mapping without
//!    PROT_EXEC and adding it later.
//! 5. Under an exec allowlist (default `block`), code maps executable only from files no agent
//!    could have put it in, decided by what the file and the process are now, never by a
//!    history of writes alone (red team round 17: a history kept in memory is gone after a
//!    reboot, holds nothing another node of shared storage wrote, and is keyed by an inode
//!    number a btrfs subvolume or vfat does not keep). Refused:
//!    - files with no name on any mount (memfd, SysV shared memory), which an agent fills with
//!      code as it would a file (`NAMELESS`);
//!    - files an agent's process opened to change, wrote through any descriptor, or mapped
//!      shared from a descriptor open for writing, since the daemon ran (`WRITTEN`, filled by
//!      `file_open` and `file::written_through`), whoever owns them now;
//!    - every other file, unless it is root-only ([`root_only`]: root's, writable by no one
//!      else, on a local filesystem not backed by a loop or network device) and either the
//!      process can write no root file (no root uid, none of `caps::WRITE_ROOT_FILES`), or
//!      (mmap only, where the path resolves) it has one name and the agent's policy refuses
//!      it writing that path (`WRITABLE`). So a root agent maps the system's libraries where
//!      the built-in protection of system files keeps it from writing them.
//!
//!    An exec rule that allows the file by path (a prefix such as a virtualenv the agent
//!    installs into) lets `mmap` map a written or writable file; the path is resolved only
//!    then, and only `mmap_file` can.
//!
//! Anonymous memory is not decided (JIT compilers need it): a program allowed to run can still
//! copy code it can read into anonymous memory and run it. Keep a blocked binary's contents
//! from being read (a `file` rule with `access: [read]`) where that matters.
use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::lsm,
    programs::LsmContext,
};
use governance_common::{Cause, ExecKey, GrantKey, Kind, RuleRef, Verdict, access, caps, exec_map};

use crate::{
    decide::{Agent, Decision, any_sandboxed, apply, current_agent, emit, lsm_ret},
    exec::file_identity,
    file::{copy_path, path_in_view, path_rules, resolve_path, root_seq, write_refused},
    held::held_write,
    kernel::{
        BCACHEFS_MAGIC, BTRFS_MAGIC, FMODE_EXEC, FMODE_EXEC_FLAG, FMODE_WRITE, MAP_SHARED,
        OFF_CRED_CAP_EFFECTIVE, OFF_CRED_CAP_PERMITTED, OFF_CRED_EUID, OFF_CRED_FSUID,
        OFF_CRED_SUID, OFF_CRED_UID, OFF_FILE_FLAGS, OFF_FILE_INODE, OFF_FILE_MODE, OFF_INODE_MODE,
        OFF_INODE_NLINK, OFF_INODE_SB, OFF_INODE_UID, OFF_MM_EXE_FILE, OFF_MM_USERS, OFF_SB_DEV,
        OFF_SB_FLAGS, OFF_SB_MAGIC, OFF_SIGNAL_LIVE, OFF_TASK_CRED, OFF_TASK_MM, OFF_TASK_SIGNAL,
        OFF_VMA_FILE, OFF_VMA_FLAGS, PROT_EXEC, PROT_WRITE, SB_KERNMOUNT, VM_SHARED, off, read_at,
    },
    maps::{EXEC_RULES, GRANTS, WRITTEN},
};

/// Is `file` the current process's own program (`current->mm->exe_file`)?
#[inline(always)]
fn is_program_image(file: u64) -> bool {
    // SAFETY: helper call without pointer arguments; reads go through probe_read.
    unsafe {
        read_at::<u64>(bpf_get_current_task(), off(&OFF_TASK_MM))
            .and_then(|mm| read_at::<u64>(mm, off(&OFF_MM_EXE_FILE)))
            .is_ok_and(|exe| exe == file)
    }
}

/// Did the kernel open `file` for an exec (`__FMODE_EXEC`, which user space cannot ask for)?
/// Unreadable counts as opened for an exec (decided: fail closed).
#[inline(always)]
fn opened_for_exec(file: u64) -> bool {
    // SAFETY: see read_at.
    unsafe {
        match (
            read_at::<u32>(file, off(&OFF_FILE_MODE)),
            read_at::<u32>(file, off(&OFF_FILE_FLAGS)),
        ) {
            (Ok(mode), Ok(flags)) => mode & FMODE_EXEC != 0 || flags & FMODE_EXEC_FLAG != 0,
            _ => true,
        }
    }
}

/// Was `file` opened for writing (`FMODE_WRITE`)? Unreadable counts as opened for writing.
#[inline(always)]
fn opened_for_writing(file: u64) -> bool {
    // SAFETY: see read_at.
    unsafe { read_at::<u32>(file, off(&OFF_FILE_MODE)) }
        .map_or(true, |mode| mode & FMODE_WRITE != 0)
}

/// Does another process share the current one's memory? `mm_users` counts every task using it
/// (each thread of each process sharing it, and passing references: a `/proc/PID/maps` reader
/// for a moment, when the answer is a false yes), `signal->live` the process's own threads.
/// Unreadable: yes (fail closed).
#[inline(always)]
fn shares_memory() -> bool {
    // SAFETY: helper call without arguments; then see read_at.
    unsafe {
        let task = bpf_get_current_task();
        let users = read_at::<u64>(task, off(&OFF_TASK_MM))
            .and_then(|mm| read_at::<i32>(mm, off(&OFF_MM_USERS)));
        let live = read_at::<u64>(task, off(&OFF_TASK_SIGNAL))
            .and_then(|signal| read_at::<i32>(signal, off(&OFF_SIGNAL_LIVE)));
        match (users, live) {
            (Ok(users), Ok(live)) => users > live,
            _ => true,
        }
    }
}

/// Does `file` live on a kernel-internal mount (no name on any mount a path could reach)?
/// Unreadable counts as nameless (refused under an allowlist: fail closed).
#[inline(always)]
fn is_nameless(file: u64) -> bool {
    // SAFETY: see read_at.
    unsafe {
        read_at::<u64>(file, off(&OFF_FILE_INODE))
            .and_then(|inode| read_at::<u64>(inode, off(&OFF_INODE_SB)))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_FLAGS)))
            .map_or(true, |flags| flags & SB_KERNMOUNT != 0)
    }
}

/// Was running this file (kind Exec), or mapping it (kind ExecMap), approved for the agent?
#[inline(always)]
fn granted(agent: &Agent, object: u64) -> bool {
    // SAFETY: helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut key = GrantKey::new(agent.root, Kind::Exec, object);
    // SAFETY: the values are read immediately.
    if unsafe { GRANTS.get(&key) }.is_some_and(|expiry| *expiry > now) {
        return true;
    }
    key.kind = Kind::ExecMap as u8;
    unsafe { GRANTS.get(&key) }.is_some_and(|expiry| *expiry > now)
}

/// The refusal of a mapping by the exact rule `rule`.
#[inline(always)]
fn by_rule(rule: RuleRef, object: u64) -> Decision {
    Decision {
        kind: Kind::ExecMap,
        verdict: Verdict::from_u8(rule.verdict).unwrap_or(Verdict::Block),
        cause: Cause::Rule,
        rule_id: rule.rule_id,
        denied: true,
        shadow: RuleRef::default(),
        object,
        extra_flags: 0,
        report: 0,
    }
}

/// The decision on mapping `file` executable, and the event's `port` (why a built-in refused
/// it); None: allowed, not reported. `with_path`: the hook may resolve paths (mmap only).
#[inline(always)]
fn map_decision(agent: &Agent, file: u64, with_path: bool) -> Option<(Decision, u16)> {
    if is_program_image(file) {
        return None;
    }
    // An interpreter the exec hook did not see (2. above): mmap only, where the path resolves.
    if with_path && opened_for_exec(file) && !crate::exec::is_loader(file) {
        let mut d = crate::exec::exec_decision(agent, file, true);
        // (Decided, and any approval looked up, as an exec; reported as the mapping.)
        d.kind = Kind::ExecMap;
        return Some((d, 0));
    }
    let Ok((dev, ino)) = file_identity(file) else {
        return Some((Decision::fail_closed(Kind::ExecMap, Cause::Unreadable), 0));
    };
    let object = ((dev as u64) << 32) ^ ino;
    let key = ExecKey {
        class: agent.value.class,
        dev,
        ino,
    };
    // SAFETY: the value is copied immediately.
    if let Some(rules) = unsafe { EXEC_RULES.get(&key) }.copied()
        && rules.enforce.present != 0
    {
        match Verdict::from_u8(rules.enforce.verdict) {
            Some(Verdict::Allow | Verdict::Throttle) => {}
            Some(Verdict::Sandbox) => {
                // The mark goes on the mapping process; the mapping is the memory's, which a
                // process made with clone(CLONE_VM) and no CLONE_THREAD shares: mapped by such
                // a child, the code ran in its unmarked parent (red team round 35).
                if shares_memory() {
                    let mut d = Decision::builtin(Kind::ExecMap, true);
                    d.object = object;
                    return Some((d, exec_map::SHARED_MEMORY));
                }
                let d = apply(
                    Kind::ExecMap,
                    agent,
                    Some(rules),
                    agent.value.exec_default,
                    GrantKey::new(agent.root, Kind::ExecMap, object),
                );
                return Some((d, 0));
            }
            Some(Verdict::Escalate) if granted(agent, object) => {}
            _ => return Some((by_rule(rules.enforce, object), 0)),
        }
    }
    if !agent.exec_allowlist() {
        return None;
    }
    // `root`: the file is root-only (so `why` is WRITABLE only for the process's credentials).
    let mut root = false;
    let why = if is_nameless(file) {
        exec_map::NAMELESS
    } else if crate::exec::written_key(file).map_or(true, |k| unsafe { WRITTEN.get(&k) }.is_some())
    {
        exec_map::WRITTEN
    } else {
        root = root_only(file);
        if root && !may_write_root_files() {
            return None;
        }
        exec_map::WRITABLE
    };
    // By path (mmap only): an exec rule allowing the file, or a root-only file with one name
    // that the agent may not write.
    let seq = root_seq();
    if why != exec_map::NAMELESS
        && with_path
        && let Ok(k) = resolve_path(file, agent.value.class)
        && path_in_view(file, seq)
    {
        if let Some(p) = path_rules(k, access::EXEC)
            && p.enforce.present != 0
            && p.enforce.verdict == Verdict::Allow as u8
        {
            return None;
        }
        if root && one_name(file) && write_refused(k, &agent.value) {
            return None;
        }
    }
    let mut d = Decision::builtin(Kind::ExecMap, true);
    d.object = object;
    Some((d, why))
}

/// Could only a process that may write root's files have changed `file`? Owned by root, with
/// no write permission for its group or others (an ACL granting write shows in the group
/// bits, as its mask), on a local filesystem whose owners and modes are the kernel's own
/// ([`LOCAL_FILESYSTEMS`]), not on a loop or network block device (whose backing file or
/// server others may write). False if unreadable (decided: fail closed).
#[inline(always)]
fn root_only(file: u64) -> bool {
    // SAFETY: see read_at.
    unsafe {
        let Ok(inode) = read_at::<u64>(file, off(&OFF_FILE_INODE)) else {
            return false;
        };
        let Ok(sb) = read_at::<u64>(inode, off(&OFF_INODE_SB)) else {
            return false;
        };
        let (Ok(magic), Ok(dev)) = (
            read_at::<u64>(sb, off(&OFF_SB_MAGIC)),
            read_at::<u32>(sb, off(&OFF_SB_DEV)),
        ) else {
            return false;
        };
        if !local(magic & 0xffff_ffff) || BACKED_DEVICES.contains(&(dev >> 20)) {
            return false;
        }
        matches!(
            (
                read_at::<u32>(inode, off(&OFF_INODE_UID)),
                read_at::<u16>(inode, off(&OFF_INODE_MODE)),
            ),
            (Ok(0), Ok(mode)) if mode & 0o022 == 0
        )
    }
}

/// The filesystems whose files' owners and modes say who may write them: the kernel checks
/// them against the writer's credentials, and nothing but this kernel writes them. Not NFS,
/// CIFS, Ceph, 9p or FUSE (their servers take writes from elsewhere, and CIFS and FUSE make
/// owners and modes up), nor vfat (owners are a mount option).
#[inline(always)]
fn local(magic: u64) -> bool {
    matches!(
        magic,
        0xef53 // ext2, ext3, ext4
            | 0x5846_5342 // XFS
            | BTRFS_MAGIC
            | 0x0102_1994 // tmpfs
            | 0x8584_58f6 // ramfs (the initramfs)
            | 0x794c_7630 // overlayfs
            | 0x7371_7368 // squashfs
            | 0xe0f5_e1e2 // EROFS
            | 0xf2f5_2010 // F2FS
            | BCACHEFS_MAGIC
    )
}

/// Block device majors whose contents another file or machine holds: loop (7), NBD (43). A
/// filesystem on one changes when its backing file or server is written, which no rule of the
/// filesystem sees.
const BACKED_DEVICES: [u32; 2] = [7, 43];

/// May the current process write files only root may write (or own them): root by any of its
/// user ids (real, effective, saved: `setresuid` back to one of them needs no capability; and
/// filesystem), or holding one of `caps::WRITE_ROOT_FILES` in its effective or permitted set?
/// The credentials it acts with (`current->cred`), as the kernel's permission checks read
/// them. True if unreadable (decided: fail closed).
#[inline(always)]
fn may_write_root_files() -> bool {
    // SAFETY: helper call without pointer arguments; the reads go through probe_read.
    unsafe {
        let Ok(cred) = read_at::<u64>(bpf_get_current_task(), off(&OFF_TASK_CRED)) else {
            return true;
        };
        let root = |field: &u64| read_at::<u32>(cred, off(field)).map_or(true, |id| id == 0);
        if root(&OFF_CRED_UID) || root(&OFF_CRED_EUID) || root(&OFF_CRED_SUID) {
            return true;
        }
        if root(&OFF_CRED_FSUID) {
            return true;
        }
        // kernel_cap_t is one u64 since Linux 6.3 and two u32 (low word first) before: read as
        // a u64 on a little-endian machine, both give the same bits.
        match (
            read_at::<u64>(cred, off(&OFF_CRED_CAP_EFFECTIVE)),
            read_at::<u64>(cred, off(&OFF_CRED_CAP_PERMITTED)),
        ) {
            (Ok(effective), Ok(permitted)) => (effective | permitted) & caps::WRITE_ROOT_FILES != 0,
            _ => true,
        }
    }
}

/// Has `file` one name (no hard link through which it could be written under another path)?
#[inline(always)]
fn one_name(file: u64) -> bool {
    // SAFETY: see read_at.
    unsafe {
        read_at::<u64>(file, off(&OFF_FILE_INODE))
            .and_then(|inode| read_at::<u32>(inode, off(&OFF_INODE_NLINK)))
            .is_ok_and(|n| n == 1)
    }
}

/// mmap(PROT_EXEC) of a file (and the kernel's own mappings: the ELF loader's, uselib's).
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    // int mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    //               unsigned long flags)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // `prot`, not `reqprot`: what the mapping will be (READ_IMPLIES_EXEC adds PROT_EXEC).
    let prot: u64 = ctx.arg(2);
    let file: u64 = ctx.arg(0);
    let flags: u64 = ctx.arg(3);
    // A shared mapping of a file open for writing writes it, now or after an mprotect: under
    // an exec allowlist it is remembered as a write (file.rs `written_through`).
    if flags & MAP_SHARED != 0 && file != 0 && opened_for_writing(file) {
        let ret = crate::file::written_through(file, true);
        if ret != 0 {
            return ret;
        }
    }
    // A shared writable mapping writes the file: a sandboxed process's, only of a file it
    // opened under its profile (see held.rs).
    if prot & PROT_WRITE != 0 && flags & MAP_SHARED != 0 && file != 0 && any_sandboxed() {
        let held = held_write(file);
        if held != 0 {
            return held;
        }
    }
    if prot & PROT_EXEC == 0 || file == 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let Some((d, why)) = map_decision(&agent, file, true) else {
        return 0;
    };
    emit(&agent, &d, |ev| {
        ev.detail = exec_map::MMAP;
        ev.port = why;
        if let Ok(k) = resolve_path(file, agent.value.class) {
            copy_path(ev, &k.data.path);
        }
    });
    lsm_ret(&d)
}

/// mprotect(PROT_EXEC) of a mapping of a file. The mapping's file (`vma->vm_file`) is read
/// from kernel memory, so no path can be resolved here (and the event has none); on overlayfs
/// it is the file of the layer below, whose identity exact rules do not name.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    // int file_mprotect(struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let prot: u64 = ctx.arg(2);
    let vma: u64 = ctx.arg(0);
    // Making a shared mapping writable writes its file (see mmap_file).
    if prot & PROT_WRITE != 0 && (crate::file::allowlist_any() || any_sandboxed()) {
        // SAFETY: see read_at.
        let (file, vm_flags) = unsafe {
            (
                read_at::<u64>(vma, off(&OFF_VMA_FILE)).unwrap_or(0),
                read_at::<u64>(vma, off(&OFF_VMA_FLAGS)).unwrap_or(VM_SHARED),
            )
        };
        if file != 0 && vm_flags & VM_SHARED != 0 {
            let ret = crate::file::written_through(file, false);
            if ret != 0 {
                return ret;
            }
            let held = if any_sandboxed() { held_write(file) } else { 0 };
            if held != 0 {
                return held;
            }
        }
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    // SAFETY: see read_at.
    let file = unsafe { read_at::<u64>(vma, off(&OFF_VMA_FILE)) }.unwrap_or(0);
    if file == 0 {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let Some((d, why)) = map_decision(&agent, file, false) else {
        return 0;
    };
    emit(&agent, &d, |ev| {
        ev.detail = exec_map::MPROTECT;
        ev.port = why;
    });
    lsm_ret(&d)
}
