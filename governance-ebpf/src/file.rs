//! File opens: the `file_open` LSM hook, and the path helpers it shares with exec (resolving a
//! file's path into the per-CPU path key, looking it up in the class's path rules, copying and
//! hashing it).
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_d_path, bpf_get_current_task},
    },
    macros::lsm,
    maps::lpm_trie::Key,
    programs::LsmContext,
};
use governance_common::{
    AgentValue, Cause, Counter, Event, FILE_DETAIL_RAW_DEVICE, GrantKey, Kind, PATH_MAX, PathKey,
    RulePair, Verdict, Written, access, builtin_class, flags, report,
};

use crate::{
    decide::{Agent, Decision, apply, count, current_agent, deciding, emit, lsm_ret},
    exec::file_identity,
    identity::{device_letters, walk},
    kernel::{
        BPF_NOEXIST, Btf, FMODE_EXEC, FMODE_EXEC_FLAG, FMODE_READ, FMODE_WRITE, O_ACCMODE, O_CREAT,
        O_TRUNC, OFF_FILE_FLAGS, OFF_FILE_INODE, OFF_FILE_MODE, OFF_FILE_PATH, OFF_FS_STRUCT_ROOT,
        OFF_FS_STRUCT_SEQ, OFF_INODE_MODE, OFF_INODE_RDEV, OFF_MNT_NAMESPACE_ROOT, OFF_MOUNT_MNT,
        OFF_MOUNT_MNT_MOUNTPOINT, OFF_MOUNT_MNT_NS, OFF_MOUNT_MNT_PARENT, OFF_NSPROXY_MNT_NS,
        OFF_PATH_DENTRY, OFF_PATH_MNT, OFF_TASK_FS, OFF_TASK_NSPROXY, OFF_VFSMOUNT_MNT_ROOT,
        S_IFBLK, S_IFCHR, S_IFMT, S_IFREG, off, read_at,
    },
    maps::{
        GRANT_SCRATCH, PATH_RULES, PATH_SCRATCH, RAW_DEVICES, SANDBOX_FILES, SANDBOXED, WRITTEN,
    },
    sequence,
};

/// The current task's root's sequence count (`fs_struct.seq`), read before a path is resolved
/// and given to [`path_in_view`] after it: a root changed in between (another thread's
/// `chroot`, as `bpf_d_path` read it) makes the name not in view (red team round 27b). Odd
/// (being changed) or unreadable: never in view.
#[inline(always)]
pub(crate) fn root_seq() -> u32 {
    // SAFETY: see read_at; the current task is valid while the program runs.
    unsafe {
        let task = bpf_get_current_task();
        read_at::<u64>(task, off(&OFF_TASK_FS))
            .and_then(|fs| read_at::<u32>(fs, off(&OFF_FS_STRUCT_SEQ)))
            .unwrap_or(1)
    }
}

/// How many mounts a root may sit on, each mounted on the root of the one below, above its
/// namespace's top (the node's root after an initramfs: one; a systemd service's before 254,
/// moved onto `/` in a namespace of its own: two; a bound for the verifier).
const ROOT_STACK: usize = 4;

/// Is `file` named as the rules name files? `bpf_d_path` names a file from the task's root, and
/// only within its mount: a task whose root is a directory of its choosing (`chroot`, which a
/// user namespace's capabilities allow with no mount), or a file on a mount outside the task's
/// namespace (a detached `open_tree` clone or `fsmount`, reached through its descriptor), gets
/// names of its choosing: `/usr/bin/x` for a program it wrote (red team round 27: an exec
/// allowlist's `prefix: /usr/bin/` ran it). In view: the task's root is the whole of a mount
/// that sits, mount on mount, each on the root of the one below, on its namespace's top mount
/// (or is it: the VM's initramfs root; a container's after `pivot_root`; a service's moved onto
/// `/`), the file's mount is in that namespace, and the root did not change since `seq`
/// ([`root_seq`], read before the path was). False if unreadable (fail closed).
#[inline(always)]
pub(crate) fn path_in_view(file: u64, seq: u32) -> bool {
    if seq & 1 != 0 {
        return false;
    }
    // SAFETY: see read_at; the current task is valid while the program runs.
    unsafe {
        let task = bpf_get_current_task();
        let view = || -> Result<bool, i32> {
            let fs: u64 = read_at(task, off(&OFF_TASK_FS))?;
            let root = fs + off(&OFF_FS_STRUCT_ROOT);
            let root_mnt: u64 = read_at(root, off(&OFF_PATH_MNT))?;
            let root_dentry: u64 = read_at(root, off(&OFF_PATH_DENTRY))?;
            if read_at::<u64>(root_mnt, off(&OFF_VFSMOUNT_MNT_ROOT))? != root_dentry {
                return Ok(false);
            }
            let ns: u64 = read_at(
                read_at::<u64>(task, off(&OFF_TASK_NSPROXY))?,
                off(&OFF_NSPROXY_MNT_NS),
            )?;
            let top: u64 = read_at(ns, off(&OFF_MNT_NAMESPACE_ROOT))?;
            // `real_mount`: the `struct mount` around a `vfsmount`.
            let mut mount = root_mnt.wrapping_sub(off(&OFF_MOUNT_MNT));
            let mut at_top = mount == top;
            for _ in 0..ROOT_STACK {
                if at_top {
                    break;
                }
                let parent: u64 = read_at(mount, off(&OFF_MOUNT_MNT_PARENT))?;
                let on: u64 = read_at(mount, off(&OFF_MOUNT_MNT_MOUNTPOINT))?;
                let parent_root: u64 =
                    read_at(parent + off(&OFF_MOUNT_MNT), off(&OFF_VFSMOUNT_MNT_ROOT))?;
                // Detached (its own parent), or mounted below the parent's root: not a root.
                if parent == mount || on != parent_root {
                    return Ok(false);
                }
                mount = parent;
                at_top = mount == top;
            }
            let file_mnt: u64 = read_at(file, off(&OFF_FILE_PATH) + off(&OFF_PATH_MNT))?;
            let file_ns: u64 = read_at(
                file_mnt.wrapping_sub(off(&OFF_MOUNT_MNT)),
                off(&OFF_MOUNT_MNT_NS),
            )?;
            let same_root = read_at::<u32>(fs, off(&OFF_FS_STRUCT_SEQ))? == seq;
            Ok(at_top && file_ns == ns && same_root)
        };
        view().unwrap_or(false)
    }
}

/// Resolve `file`'s path into the per-CPU path key (after the class and access bytes).
/// Ok(key) or the cause to fail closed with.
#[inline(always)]
pub(crate) fn resolve_path(file: u64, class: u32) -> Result<&'static mut Key<PathKey>, Cause> {
    let key = PATH_SCRATCH.get_ptr_mut(0).ok_or(Cause::Unreadable)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let key = unsafe { &mut *key };
    key.prefix_len = ((5 + PATH_MAX) * 8) as u32;
    key.data.class_be = class.to_be_bytes();
    // `file` came from the hook's BTF-typed arguments (or a field load from one), so the
    // verifier knows `file + f_path` is a `struct path *`, as bpf_d_path requires.
    // SAFETY: the helper writes at most PATH_MAX bytes into the buffer.
    let n = unsafe {
        bpf_d_path(
            (file + off(&OFF_FILE_PATH)) as *mut _,
            key.data.path.as_mut_ptr().cast(),
            PATH_MAX as u32,
        )
    };
    if n < 0 {
        // -ENAMETOOLONG: longer than a path rule can describe. Deny, never guess.
        return Err(if n == -36 {
            Cause::TooLong
        } else {
            Cause::Unreadable
        });
    }
    Ok(key)
}

/// The path rules for one access letter, or None.
#[inline(always)]
pub(crate) fn path_rules(key: &mut Key<PathKey>, access: u8) -> Option<RulePair> {
    key.data.access = access;
    PATH_RULES.get(&*key).copied()
}

/// The shared built-in path rules (see `governance_common::builtin_class`) for one access
/// letter, looked up beside the class's own. Only a rule that is there counts: an entry with
/// none (the hole at the cgroup tree, below the kernel settings' `/sys`) is no answer.
#[inline(always)]
fn builtin_rules(key: &mut Key<PathKey>, value: &AgentValue, access: u8) -> Option<RulePair> {
    let own = key.data.class_be;
    key.data.class_be = builtin_class(value.class, value.allow).to_be_bytes();
    let found = path_rules(key, access);
    key.data.class_be = own;
    found.filter(|p| p.enforce.present != 0)
}

/// Fold one access's answer (its rules, else the default) into the most severe so far.
#[inline(always)]
fn more_severe(
    worst: Option<RulePair>,
    found: Option<RulePair>,
    default: RulePair,
    matched: &mut bool,
) -> Option<RulePair> {
    *matched |= found.is_some();
    let pair = match found {
        Some(p) if p.enforce.present != 0 => p,
        Some(p) => RulePair {
            enforce: default.enforce,
            shadow: p.shadow,
        },
        None => default,
    };
    match worst {
        Some(w) if w.enforce.verdict >= pair.enforce.verdict => Some(w),
        _ => Some(pair),
    }
}

/// Does the agent's policy refuse it writing at `key`'s path: its path rules, the built-ins and
/// the default for `write`, the most severe, enforced (not shadow), `block`? (mapping.rs)
#[inline(always)]
pub(crate) fn write_refused(key: &mut Key<PathKey>, value: &AgentValue) -> bool {
    let mut matched = false;
    let mut worst = more_severe(
        None,
        path_rules(key, access::WRITE),
        value.file_default,
        &mut matched,
    );
    if let Some(b) = builtin_rules(key, value, access::WRITE) {
        worst = more_severe(worst, Some(b), value.file_default, &mut matched);
    }
    worst.is_some_and(|p| p.enforce.verdict == Verdict::Block as u8)
}

/// Copy the resolved path into the event.
#[inline(always)]
pub(crate) fn copy_path(ev: &mut Event, path: &[u8; PATH_MAX]) {
    // SAFETY: bounded by the destination buffer; the source is a NUL-terminated kernel string.
    if unsafe { bpf_probe_read_kernel_str_bytes(path.as_ptr(), &mut ev.path) }.is_err() {
        ev.path[0] = 0;
    }
}

/// FNV-1a of the resolved path (see governance_common::path_hash): an escalation grant's object.
#[inline(always)]
fn hash_path(path: &[u8; PATH_MAX]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < PATH_MAX {
        let c = path[i];
        if c == 0 {
            break;
        }
        h ^= c as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// Is `file` a device that reaches past the rules: a block device, or a character device the
/// daemon lists in RAW_DEVICES (drivers that pass commands to a disk, SCSI generic, bsg, NVMe
/// generic; and those that reach a network with no socket, take or make input, or show other
/// terminals: tun, macvtap, ipvtap, PPP, uinput, uhid, input, hidraw, vcs, uio, usbmon,
/// vhost-vsock, /dev/mem, /dev/port, MSRs; see `host_files.rs`)? Reading a disk directly
/// bypasses every file rule and needs no capability (only the device node's permissions, which
/// root has); so does attaching to an existing tap. /proc/kcore is refused by its open's
/// CAP_SYS_RAWIO check (caps.rs), as /dev/mem and /dev/port are too. An unreadable mode counts as
/// raw (only agents are affected, and only when the file has no inode to read).
#[inline(always)]
fn raw_device(file: Btf) -> bool {
    let (mode, rdev) = match file.ptr(off(&OFF_FILE_INODE)) {
        Ok(inode) => (
            inode.get::<u16>(off(&OFF_INODE_MODE)),
            inode.get::<u32>(off(&OFF_INODE_RDEV)),
        ),
        Err(_) => (S_IFBLK, 0),
    };
    match mode & S_IFMT {
        S_IFBLK => true,
        // The kernel's dev_t: major in the top 12 bits. A driver's every device by its major,
        // a single one by its whole dev_t (at least 1 << 20, so never a major).
        // SAFETY: the values are not used.
        S_IFCHR => unsafe {
            RAW_DEVICES.get(&(rdev >> 20)).is_some() || RAW_DEVICES.get(&rdev).is_some()
        },
        _ => false,
    }
}

/// Remember that an agent's process opened `file` to change it, or wrote it (see mapping.rs):
/// `owner` is the agent root. False if the table is full: the open or write is then refused,
/// since a write that is not remembered could be mapped executable later.
///
/// An entry is made once, for the inode that wrote first; another inode under the same key
/// (see governance_common::Written) makes it one that stays.
///
/// A function of its own, for the verifier's sake: with its lookups, `file_open` verifies in
/// 451k instructions processed on Linux 6.1 (343k when it only inserted; half the budget,
/// 500k, is the bar of `every_program_verifies_well_within_the_budget`).
#[inline(never)]
pub(crate) fn remember_written(owner: u64, file: u64) -> bool {
    // SAFETY: see read_at.
    let Ok(inode) = (unsafe { read_at::<u64>(file, off(&OFF_FILE_INODE)) }) else {
        return false;
    };
    let Ok(key) = crate::exec::written_key(file) else {
        return false;
    };
    // Looked up first: most writes are to a file already remembered.
    if let Some(found) = WRITTEN.get_ptr_mut(&key) {
        // SAFETY: a value of the map, written in place (one aligned word).
        unsafe {
            if (*found).inode != inode && (*found).inode != 0 {
                (*found).inode = 0;
            }
        }
        return true;
    }
    // Inserted only if absent, so another CPU's entry made in between stays as it is (it is
    // remembered then, for that CPU's inode); full: not remembered.
    // SAFETY (the get): only tested for presence.
    WRITTEN
        .insert(&key, &Written { owner, inode }, BPF_NOEXIST)
        .is_ok()
        || unsafe { WRITTEN.get(&key) }.is_some()
}

/// Has the active generation an exec allowlist (`ALLOWLIST_ANY`: two array lookups)?
#[inline(always)]
pub(crate) fn allowlist_any() -> bool {
    let generation = crate::maps::STATE.get(0).copied().unwrap_or(0);
    crate::maps::ALLOWLIST_ANY
        .get(governance_common::slot(generation))
        .is_some_and(|&any| any != 0)
}

/// A write through `file` by the current task (`file_permission`), or its shared writable
/// mapping (`mmap_file`, `file_mprotect`): under an exec allowlist, an agent's write to a
/// regular file through a descriptor it did not open (inherited from a launcher outside the
/// agent, passed over a Unix socket, opened before the policy) is remembered as an open for
/// writing is (red team round 18). 0, or the refusal when the table is full. `with_path`:
/// `file` is the hook's own BTF-typed argument in a hook where `bpf_d_path` is allowed (the
/// kernel's sleepable hooks: `mmap_file`, not `file_permission`), so the refusal's event can
/// name its path.
#[inline(always)]
pub(crate) fn written_through(file: u64, with_path: bool) -> i32 {
    // Only while some agent of the active generation has an exec allowlist: every write on the
    // node passes here.
    if !allowlist_any() {
        return 0;
    }
    // SAFETY: see read_at.
    let regular = unsafe {
        read_at::<u64>(file, off(&OFF_FILE_INODE))
            .and_then(|inode| read_at::<u16>(inode, off(&OFF_INODE_MODE)))
            .is_ok_and(|mode| mode & S_IFMT == S_IFREG)
    };
    if !regular {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    // Any agent's write, as in file_open: a file another agent wrote is refused to the
    // agents with an allowlist.
    if remember_written(agent.root, file) {
        return 0;
    }
    count(Counter::MapFull);
    let d = Decision::fail_closed(Kind::File, Cause::MapFull);
    emit(&agent, &d, |ev| {
        ev.detail = 2;
        if with_path && let Ok(key) = resolve_path(file, agent.value.class) {
            copy_path(ev, &key.data.path);
        }
    });
    lsm_ret(&d)
}

/// Remember that a sandboxed process opened `file` for writing under its profile: the one
/// kind of descriptor it may write a regular file through (see held.rs). False if the table
/// is full: the open is then refused.
#[inline(always)]
fn remember_sandbox_file(agent: &Agent, file: Btf) -> bool {
    // SAFETY: the value is copied out.
    match unsafe { SANDBOXED.get(&agent.tgid) }.copied() {
        Some(mark) => SANDBOX_FILES.insert(&file.addr(), &mark, 0).is_ok(),
        None => true,
    }
}

/// File opens: the resolved path of the opened file against the class's path rules, once per
/// access the open asks for (read, write, create, truncate), and, when the class has identity
/// rules for those accesses, the opened object and the directories above it against them
/// (see `identity::walk`); the most severe answer wins. Opens for exec are decided by the exec
/// hook, not here.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    // The file being opened: the hook's argument, which cannot fault (see kernel::Btf).
    let file = Btf::arg(&ctx, 0);
    let (fmode, fflags) = (
        file.get::<u32>(off(&OFF_FILE_MODE)),
        file.get::<u32>(off(&OFF_FILE_FLAGS)),
    );
    // Opens for exec (the binary, a #! interpreter) are decided by the exec hook. The open
    // flag (__FMODE_EXEC) is what this kernel's open_exec sets; FMODE_EXEC may come later.
    if fmode & FMODE_EXEC != 0 || fflags & FMODE_EXEC_FLAG != 0 {
        return 0;
    }
    // Access mode 3 opens a descriptor for ioctls only (no FMODE_READ or FMODE_WRITE), which
    // the kernel permits as reading and writing: decided as both (red team round 11: with
    // neither, no rule was looked up and the default decided, so a `/dev/kvm` or camera
    // blocked by path was usable, and a no-access secret could be ioctl'd).
    let ioctl_only = fflags & O_ACCMODE == O_ACCMODE;
    let read = fmode & FMODE_READ != 0 || ioctl_only;
    let write = fmode & FMODE_WRITE != 0 || ioctl_only;
    let create = fflags & O_CREAT != 0;
    let truncate = fflags & O_TRUNC != 0;
    let asked =
        u8::from(read) | u8::from(write) << 1 | u8::from(create) << 2 | u8::from(truncate) << 3;
    if raw_device(file) {
        let d = Decision::builtin(Kind::File, true);
        emit(&agent, &d, |ev| {
            ev.detail = asked | FILE_DETAIL_RAW_DEVICE;
            if let Ok(key) = resolve_path(file.addr(), agent.value.class) {
                copy_path(ev, &key.data.path);
            }
        });
        return lsm_ret(&d);
    }
    // A terminal another session holds (guard.rs): refused whatever the rules say.
    let ret = crate::guard::other_terminal(&agent, file);
    if ret != 0 {
        return ret;
    }
    // Another subtree's POSIX message queue (mqueue.rs): refused whatever the rules say.
    if let Ok(inode) = file.ptr(off(&OFF_FILE_INODE))
        && crate::mqueue::is_queue(inode)
    {
        let ret = crate::mqueue::reach(&agent, inode, asked);
        if ret != 0 {
            return ret;
        }
    }
    let key = match resolve_path(file.addr(), agent.value.class) {
        Ok(key) => key,
        Err(cause) => {
            let d = Decision::fail_closed(Kind::File, cause);
            emit(&agent, &d, |ev| ev.detail = asked);
            return lsm_ret(&d);
        }
    };
    // The most severe of the per-access answers (verdicts are ordered by severity). Written
    // out per access: an indexed array of letters makes the verifier see pointer arithmetic.
    let default = agent.value.file_default;
    let mut worst: Option<RulePair> = None;
    let mut matched = false;
    if read {
        worst = more_severe(worst, path_rules(key, access::READ), default, &mut matched);
        if let Some(b) = builtin_rules(key, &agent.value, access::READ) {
            worst = more_severe(worst, Some(b), default, &mut matched);
        }
    }
    if write {
        worst = more_severe(worst, path_rules(key, access::WRITE), default, &mut matched);
        if let Some(b) = builtin_rules(key, &agent.value, access::WRITE) {
            worst = more_severe(worst, Some(b), default, &mut matched);
        }
    }
    if create {
        worst = more_severe(
            worst,
            path_rules(key, access::CREATE),
            default,
            &mut matched,
        );
        if let Some(b) = builtin_rules(key, &agent.value, access::CREATE) {
            worst = more_severe(worst, Some(b), default, &mut matched);
        }
    }
    if truncate {
        worst = more_severe(
            worst,
            path_rules(key, access::TRUNCATE),
            default,
            &mut matched,
        );
        if let Some(b) = builtin_rules(key, &agent.value, access::TRUNCATE) {
            worst = more_severe(worst, Some(b), default, &mut matched);
        }
    }
    // The same object by any other name: a hard link, a renamed directory, a bind mount,
    // another namespace's view. Skipped (two reads and a lookup) where no identity rule of the
    // class could answer: on a device without one, or for letters none restricts.
    let ident = file
        .ptr(off(&OFF_FILE_PATH) + off(&OFF_PATH_DENTRY))
        .and_then(|dentry| match device_letters(&agent.value, dentry)? {
            (letters, tables) if letters & asked != 0 => {
                walk(0, tables, dentry, letters & asked, (0, 0)).map(Some)
            }
            _ => Ok(None),
        });
    match ident {
        Ok(None) => {}
        Ok(Some(a)) => {
            if a.found() & 1 != 0 {
                worst = more_severe(worst, Some(a.read), default, &mut matched);
            }
            if a.found() & 2 != 0 {
                worst = more_severe(worst, Some(a.write), default, &mut matched);
            }
            if a.found() & 4 != 0 {
                worst = more_severe(worst, Some(a.create), default, &mut matched);
            }
            if a.found() & 8 != 0 {
                worst = more_severe(worst, Some(a.truncate), default, &mut matched);
            }
        }
        Err(cause) => {
            let d = Decision::fail_closed(Kind::File, cause);
            emit(&agent, &d, |ev| {
                ev.detail = asked;
                copy_path(ev, &key.data.path);
            });
            return lsm_ret(&d);
        }
    }
    let rules = if matched { worst } else { None };
    // An escalation's grant is of the path (its hash) and of the object opened (its device and
    // inode): a path whose 64-bit hash an agent made equal to another's (a second preimage of
    // FNV-1a takes minutes) is another object (red team round 24). Nothing else reads either:
    // the loop over the path's bytes and the reads are skipped for every other open.
    let escalate = deciding(rules, default).0.enforce.verdict == Verdict::Escalate as u8;
    let object = if escalate {
        hash_path(&key.data.path)
    } else {
        0
    };
    let Some(identity) = grant_identity(file.addr(), escalate) else {
        let d = Decision::fail_closed(Kind::File, Cause::Unreadable);
        emit(&agent, &d, |ev| ev.detail = asked);
        return lsm_ret(&d);
    };
    let grant = GrantKey::new(agent.root, Kind::File, object)
        .accesses(asked)
        .identity(*identity);
    let mut d = apply(Kind::File, &agent, rules, default, grant);
    // One refusal for both tables: a second branch of its own doubled the paths the verifier
    // walks after it (file_open's count rose by three quarters).
    if !d.denied
        && (write || create || truncate)
        && (!remember_written(agent.root, file.addr())
            || (write && agent.sandboxed && !remember_sandbox_file(&agent, file)))
    {
        count(Counter::MapFull);
        d = Decision::fail_closed(Kind::File, Cause::MapFull);
        d.object = object;
    }
    // An allowed open may arm the agent's sequence rules; the first arming of a rule is
    // reported by this open's event, which then names the sequence rule.
    if !d.denied {
        match sequence::arm(&agent, key, asked) {
            Ok(0) => {}
            Ok(rule) => {
                // Named by the sequence rule, whatever allowed the open (a rule or the default).
                d.rule_id = rule;
                d.cause = Cause::Rule;
                d.extra_flags |= flags::ARMED;
                d.report = report::EVERY;
            }
            Err(()) => {
                count(Counter::MapFull);
                d = Decision::fail_closed(Kind::File, Cause::MapFull);
                d.object = object;
            }
        }
    }
    emit(&agent, &d, |ev| {
        ev.detail = asked;
        ev.addr = *identity;
        copy_path(ev, &key.data.path);
    });
    lsm_ret(&d)
}

/// The opened object in a file grant's key ([`GrantKey::identity`]) where an escalation
/// decides (zero elsewhere): the device in the first four bytes, the inode number in the last
/// eight, as a Unix event's address holds them; zero if unreadable (the path's hash alone, as
/// the event then says too). None only if the per-CPU scratch is missing (fail closed).
///
/// Verifier: built on the stack only where an escalation decides, the bytes split every path
/// after it in two (known zeros beside unknown bytes), and `file_open` went past the
/// verifier's million instructions. Written into a map value and read from there (into the
/// grant's key and the event, with no copy of their own on the stack, which has no 16 bytes to
/// spare), they are unknown bytes on every path, which prunes as one.
#[inline(always)]
fn grant_identity(file: u64, escalate: bool) -> Option<&'static [u8; 16]> {
    let at = GRANT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let at = unsafe { &mut *at };
    *at = [0; 16];
    if escalate && let Ok((dev, ino)) = file_identity(file) {
        at[..4].copy_from_slice(&dev.to_ne_bytes());
        at[8..].copy_from_slice(&ino.to_ne_bytes());
    }
    Some(at)
}
