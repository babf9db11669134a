//! Exec: the `bprm_check_security` LSM hook, which decides on the file about to be executed
//! (its identity, then its path), and the degraded `sched_process_exec` tracepoint that
//! stands in for it on kernels without BPF LSM.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use governance_common::{
    Cause, EXEC_DETAIL_LOADER, ExecKey, GrantKey, Kind, RulePair, access, allow, flags,
};

use crate::{
    decide::{Agent, Decision, apply, current_agent, emit, lsm_ret},
    file::{path_in_view, path_rules, resolve_path, root_seq},
    kernel::{
        Btf, OFF_BPRM_FILE, OFF_BPRM_FILENAME, OFF_FILE_INODE, OFF_INODE_INO, OFF_INODE_SB,
        OFF_SB_DEV, SIGKILL, off, read_at,
    },
    maps::{EXEC_RULES, LOADERS, WRITTEN},
};

/// Exec: decide on the file the kernel is about to execute (`bprm->file`), never the name.
///
/// First the (device, inode) of that file against exact exec rules: the identity holds
/// whatever name led to it (symlink, hardlink, /proc/self/root, /proc/self/fd/N, execveat).
/// Then its resolved path (bpf_d_path) against prefix rules. Then the default. The hook runs
/// for each interpreter of a `#!` chain too.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // int bprm_check_security(struct linux_binprm *bprm); the last argument is the return
    // value of the BPF LSM programs that ran before this one. Never overturn a denial.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let bprm = Btf::arg(&ctx, 0);
    // A load through the BTF-typed `bprm` (see kernel::Btf), so the verifier types `file` as a
    // `struct file *` (bpf_d_path needs that; bpf_probe_read would give a plain number).
    let file: u64 = bprm.get(off(&OFF_BPRM_FILE));
    let loader = agent.value.allow & allow::LOADER_EXEC == 0 && is_loader(file);
    let d = if loader {
        Decision::builtin(Kind::Exec, true)
    } else {
        exec_decision(&agent, file, true)
    };
    emit(&agent, &d, |ev| {
        if loader {
            ev.detail = EXEC_DETAIL_LOADER;
        }
        // The name the exec was asked for, for the record; the decision used the file.
        // SAFETY: see read_at.
        if let Ok(name) = unsafe { read_at::<u64>(bprm.addr(), off(&OFF_BPRM_FILENAME)) } {
            // SAFETY: bounded by the destination buffer; errors leave path empty.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
            {
                ev.path[0] = 0;
            }
        }
    });
    lsm_ret(&d)
}

#[inline(always)]
pub(crate) fn exec_decision(agent: &Agent, file: u64, with_path: bool) -> Decision {
    let class = agent.value.class;
    let default = agent.value.exec_default;
    let (dev, ino) = match file_identity(file) {
        Ok(id) => id,
        Err(_) => return Decision::fail_closed(Kind::Exec, Cause::Unreadable),
    };
    let grant = GrantKey::new(agent.root, Kind::Exec, ((dev as u64) << 32) ^ ino);
    let key = ExecKey { class, dev, ino };
    // A hit and its rules, never an `Option` whose `None` leaves the payload undefined: the
    // verifier refused the merged branches reading it (`R3 !read_ok`).
    // SAFETY: the value is copied immediately.
    let (hit, found) = match unsafe { EXEC_RULES.get(&key) } {
        Some(r) => (true, *r),
        None => (false, RulePair::default()),
    };
    // A file an agent wrote is not simply taken for the program an exact rule names by its
    // identity: an inode number freed by an outside upgrade and given again to a file an agent
    // made would run as that program (red team round 11). It gets the more severe of the
    // identity's answer and its path's, the identity's on a tie (round 14: a throttled or
    // sandboxed program's number would still beat an allowlist's default); the exact rule's
    // path is in the path table too, so the program itself is decided as before.
    let mut written = false;
    if hit {
        // SAFETY: only presence is read.
        written = match written_key(file) {
            Ok(key) => unsafe { WRITTEN.get(&key) }.is_some(),
            // Unknown: as written (the more severe of the two answers).
            Err(_) => true,
        };
    }
    // Through the stack as a plain flag: derived from the lookup's pointer, the verifier
    // refused the flag's use (`bitwise operator &= on pointer prohibited`).
    // SAFETY: a local variable.
    let written = unsafe { core::ptr::read_volatile(&written) };
    if hit && !written {
        return apply(Kind::Exec, agent, Some(found), default, grant);
    }
    // The verdict the identity's answer gives (the default's where it has no enforcing rule).
    let by_identity = if found.enforce.present != 0 {
        found.enforce.verdict
    } else {
        default.enforce.verdict
    };
    if !with_path {
        if written && by_identity >= default.enforce.verdict {
            return apply(Kind::Exec, agent, Some(found), default, grant);
        }
        return apply(Kind::Exec, agent, None, default, grant);
    }
    let seq = root_seq();
    match resolve_path(file, class) {
        Ok(key) => {
            let mut rules = path_rules(key, access::EXEC);
            // A name of the task's choosing (a chroot, a detached mount: `path_in_view`) may
            // refuse, never allow more than the default.
            if let Some(p) = rules
                && p.enforce.verdict < default.enforce.verdict
                && !path_in_view(file, seq)
            {
                rules = None;
            }
            if written {
                let by_path = match rules {
                    Some(p) if p.enforce.present != 0 => p.enforce.verdict,
                    _ => default.enforce.verdict,
                };
                if by_identity >= by_path {
                    return apply(Kind::Exec, agent, Some(found), default, grant);
                }
            }
            apply(Kind::Exec, agent, rules, default, grant)
        }
        Err(cause) => Decision::fail_closed(Kind::Exec, cause),
    }
}

/// Built-in: the dynamic loader is not run as a program. `ld.so /usr/bin/nc` runs nc's code
/// with only an exec of ld.so, which the exec rules allow wherever dynamically linked programs
/// run; the loader then maps the program itself (which the mapping rules decide, see
/// mapping.rs), but an allowlist would otherwise have to name ld.so and thereby everything it
/// can load. As the interpreter of a dynamically linked program (PT_INTERP) the kernel maps
/// ld.so without this hook, so those programs are not affected. The daemon puts the loaders'
/// identities in LOADERS (its own PT_INTERP and the usual paths).
#[inline(always)]
pub(crate) fn is_loader(file: u64) -> bool {
    match file_identity(file) {
        // SAFETY: the value is not used.
        Ok((dev, ino)) => unsafe { LOADERS.get(&ExecKey { class: 0, dev, ino }) }.is_some(),
        // The exec decision fails closed on an unreadable file anyway.
        Err(_) => false,
    }
}

/// The `WRITTEN` key of `file`: its superblock's device, not its subvolume's (subvolume.rs).
/// A btrfs snapshot, which something outside the agents may make of a subvolume at any time
/// (snapper, timeshift), copies each file under its number into a new subvolume: keyed on the
/// superblock, the copy of a file an agent wrote is as written as the file (red team round 19).
#[inline(always)]
pub(crate) fn written_key(file: u64) -> Result<ExecKey, i32> {
    // SAFETY: see read_at.
    unsafe {
        let inode: u64 = read_at(file, off(&OFF_FILE_INODE))?;
        let ino: u64 = read_at(inode, off(&OFF_INODE_INO))?;
        let sb: u64 = read_at(inode, off(&OFF_INODE_SB))?;
        let dev: u32 = read_at(sb, off(&OFF_SB_DEV))?;
        Ok(ExecKey { class: 0, dev, ino })
    }
}

/// (device, inode) of `file`: the object itself, whatever name led to it.
#[inline(always)]
pub(crate) fn file_identity(file: u64) -> Result<(u32, u64), i32> {
    // SAFETY: see read_at.
    unsafe {
        let inode: u64 = read_at(file, off(&OFF_FILE_INODE))?;
        let ino: u64 = read_at(inode, off(&OFF_INODE_INO))?;
        let dev = crate::subvolume::inode_dev(inode).map_err(|_| -1)?;
        Ok((dev, ino))
    }
}

/// Degraded exec enforcement, for kernels without BPF LSM: right after an exec, decide on the
/// executed file's identity and SIGKILL the process if the policy blocks it. Weaker than the
/// LSM: the exec has happened (the new image is mapped, and may have run until the signal is
/// delivered on the way back to user space), and only exact (inode) rules and the default apply.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let Some(agent) = current_agent() else {
        return 0;
    };
    let bprm: u64 = ctx.arg(2);
    // SAFETY: see read_at.
    let file = unsafe { read_at::<u64>(bprm, off(&OFF_BPRM_FILE)) }.unwrap_or(0);
    // The loader run as a program (`ld.so /usr/bin/id`) is refused here too: it would run a
    // program no rule was asked about (red team round 29; `bprm_check_security` above).
    let loader = agent.value.allow & allow::LOADER_EXEC == 0 && is_loader(file);
    let mut d = if loader {
        Decision::builtin(Kind::Exec, true)
    } else {
        exec_decision(&agent, file, false)
    };
    // SAFETY: helper call without pointer arguments.
    if d.denied && unsafe { bpf_send_signal(SIGKILL) } == 0 {
        d.extra_flags |= flags::KILLED;
    }
    emit(&agent, &d, |ev| {
        if loader {
            ev.detail = EXEC_DETAIL_LOADER;
        }
        // SAFETY: see read_at.
        if let Ok(name) = unsafe { read_at::<u64>(bprm, off(&OFF_BPRM_FILENAME)) } {
            // SAFETY: bounded by the destination buffer; errors leave path empty.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path) }.is_err()
            {
                ev.path[0] = 0;
            }
        }
    });
    0
}
