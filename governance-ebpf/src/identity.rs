//! Names: file rules decided on the object, not only on the name it was reached by.
//!
//! A file has many names: a hard link, an ancestor directory renamed, a bind mount, another
//! mount namespace, a chroot. The daemon resolves what each file rule's path named when the
//! generation was loaded to (device, inode), the object itself and (for a directory) what is
//! below it, into `IDENT_RULES`. `walk` looks the opened object up, then each directory above it
//! (`d_parent` until the filesystem's root), one lookup per level: whatever name the open used,
//! the dentries above the object are the same. `file_open` folds the answer into the path
//! decision (the most severe wins). `inode_link` and `inode_rename` refuse what would take an
//! object out of the directory whose identity protects it (a new hard link elsewhere, a move
//! out): after that no ancestor of the new name carries the rule. A protected path missing at
//! the load has an entry for the name it would have in its deepest existing directory
//! (`SCOPE_NAME`), which every new name (link, rename, symlink, mkdir, mknod) is looked up in.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_loop},
    macros::lsm,
    programs::LsmContext,
};
use governance_common::{
    AgentValue, Cause, FILL_BUILTIN, FILL_DEFAULT, IDENT_FILTER_WORDS, IdentKey, IdentValue, Kind,
    LINK_OP_CHMOD, LINK_OP_CHOWN, LINK_OP_CREATE, LINK_OP_LINK, LINK_OP_MKDIR, LINK_OP_MKNOD,
    LINK_OP_RENAME, LINK_OP_RMDIR, LINK_OP_SYMLINK, LINK_OP_TRUNCATE, LINK_OP_UNLINK,
    MAX_IDENT_DEPTH, NAME_HASH_SEED, NO_RULE, RulePair, RuleRef, SCOPE_BELOW, SCOPE_DEVICE,
    SCOPE_FILL, SCOPE_HOLDS, SCOPE_NAME, SCOPE_SELF, Verdict, builtin_class, ident_filter_bit,
    name_hash_step, sequence::MAX_SEQ_RULES,
};

use crate::{
    decide::{Agent, Decision, current_agent, emit, lsm_ret},
    held::held_truncate,
    kernel::{
        BPF_FS_MAGIC, Btf, DCACHE_DISCONNECTED, OFF_DENTRY_FLAGS, OFF_DENTRY_INODE,
        OFF_DENTRY_NAME, OFF_DENTRY_PARENT, OFF_DENTRY_SB, OFF_FILE_PATH, OFF_INODE_INO,
        OFF_INODE_SB, OFF_PATH_DENTRY, OFF_QSTR_NAME, OFF_SB_DEV, OFF_SB_MAGIC, OFF_SB_ROOT,
        S_IFMT, S_IFREG, off, read_at,
    },
    maps::{IDENT_FILTER, IDENT_RULES, IDENT_SCRATCH, NAME_BUF, NAME_SCRATCH, SEQ_CLASSES},
};

/// What the identity rules say, per access letter (bits as in `Event::detail`: r=1 w=2 c=4
/// t=8). Four named fields, not an array: an index the verifier cannot see as a constant
/// becomes pointer arithmetic it refuses. Kept in per-CPU scratch (`IDENT_SCRATCH`): on the
/// stack, beside the path decision, it overflows file_open's 512 bytes.
#[derive(Clone, Copy, Default)]
pub(crate) struct Answer {
    /// Letters answered. Read and written through `found`/`add`, volatile: kept in a register,
    /// its exact value after each lookup made the paths that follow distinct to the verifier,
    /// which then could not prune them; from memory it is just a byte.
    found: u8,
    /// The letters of a judgement, and its fill's, once through memory (see `opaque`; slot 0
    /// only; in the padding before `read`).
    letters: u8,
    fill: u8,
    pub(crate) read: RulePair,
    pub(crate) write: RulePair,
    pub(crate) create: RulePair,
    pub(crate) truncate: RulePair,
    /// Where a walk's reads of btrfs subvolumes land (subvolume.rs): the walk's callback has
    /// no stack to spare for them.
    pub(crate) scratch: u64,
}

#[inline(always)]
fn has(p: &RulePair) -> bool {
    p.enforce.present != 0 || p.shadow.present != 0
}

/// Does `p` refuse or limit the access (an enforcing rule other than allow)?
#[inline(always)]
pub(crate) fn restricts(p: &RulePair) -> bool {
    p.enforce.present != 0 && p.enforce.verdict != Verdict::Allow as u8
}

/// The per-CPU answer `slot` (0: the object where it is, 1: where a new name would put it, 2:
/// the object a rename replaces), emptied.
#[inline(always)]
pub(crate) fn scratch(slot: u32) -> Result<&'static mut Answer, Cause> {
    let a = IDENT_SCRATCH.get_ptr_mut(slot).ok_or(Cause::Unreadable)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let a = unsafe { &mut *a };
    a.clear();
    Ok(a)
}

/// Copy a rule pair word by word. A plain assignment compiles to a byte-by-byte memcpy loop,
/// which the verifier walks for every letter at every level of the walk (it ran out of its
/// million instructions); four 32-bit loads and stores it checks once.
#[inline(always)]
fn copy_pair(dst: &mut RulePair, src: &RulePair) {
    let (d, s) = (
        (dst as *mut RulePair).cast::<u32>(),
        (src as *const RulePair).cast::<u32>(),
    );
    // SAFETY: RulePair is 16 bytes, 4-aligned, plain data; both pointers are valid for it.
    unsafe {
        core::ptr::write_volatile(d, core::ptr::read_volatile(s));
        core::ptr::write_volatile(d.add(1), core::ptr::read_volatile(s.add(1)));
        core::ptr::write_volatile(d.add(2), core::ptr::read_volatile(s.add(2)));
        core::ptr::write_volatile(d.add(3), core::ptr::read_volatile(s.add(3)));
    }
}

impl Answer {
    /// Take the letters of `v` still missing: the first entry met, walking up, decides a letter
    /// (the deepest rule, as the longest path prefix does for paths).
    #[inline(always)]
    fn take(&mut self, v: &IdentValue, want: u8) {
        let missing = want & !self.found();
        if missing & 1 != 0 && has(&v.rules[0]) {
            copy_pair(&mut self.read, &v.rules[0]);
            self.add(1);
        }
        if missing & 2 != 0 && has(&v.rules[1]) {
            copy_pair(&mut self.write, &v.rules[1]);
            self.add(2);
        }
        if missing & 4 != 0 && has(&v.rules[2]) {
            copy_pair(&mut self.create, &v.rules[2]);
            self.add(4);
        }
        if missing & 8 != 0 && has(&v.rules[3]) {
            copy_pair(&mut self.truncate, &v.rules[3]);
            self.add(8);
        }
    }

    /// The letters answered.
    #[inline(always)]
    pub(crate) fn found(&self) -> u8 {
        // SAFETY: a field of self.
        unsafe { core::ptr::read_volatile(&self.found) }
    }

    #[inline(always)]
    fn add(&mut self, bit: u8) {
        let found = self.found() | bit;
        // SAFETY: a field of self.
        unsafe { core::ptr::write_volatile(&mut self.found, found) }
    }

    #[inline(always)]
    fn clear(&mut self) {
        // SAFETY: a field of self.
        unsafe { core::ptr::write_volatile(&mut self.found, 0) }
    }
}

/// The identity tables of an agent (or sandbox profile) on one device: its class's own entries,
/// then, for a key they lack, the shared built-in entries of its relaxations (see
/// governance_common::IdentKey, shared entries). `own` is 0 where the class has no entries of
/// its own on the device (class numbers start at 1): one lookup per key, in the shared class.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    own: u32,
    shared: u32,
}

impl Tables {
    #[inline(always)]
    fn get(self, dev: u32, ino: u64, scope: u32) -> Option<&'static IdentValue> {
        // Both classes are of one slot (its bit is the class's top bit).
        if !may_have(self.shared >> 31, dev, ino, scope) {
            return None;
        }
        self.entry(dev, ino, scope, 0)
    }

    /// The entry for the key, the filter not asked (the caller did).
    #[inline(always)]
    fn entry(self, dev: u32, ino: u64, scope: u32, name: u32) -> Option<&'static IdentValue> {
        let key = |class| IdentKey {
            class,
            dev,
            ino,
            scope,
            name,
        };
        if self.own != 0 {
            // SAFETY: values are plain data, read by the caller before the program returns.
            if let Some(v) = unsafe { IDENT_RULES.get(&key(self.own)) } {
                return Some(v);
            }
        }
        // SAFETY: as above.
        unsafe { IDENT_RULES.get(&key(self.shared)) }
    }
}

/// May slot `slot`'s identity tables have a key for (`dev`, `ino`, `scope`)? Its bit in the
/// slot's filter (see governance_common::maps::IDENT_FILTER): clear, no key of the slot is that
/// one, and the lookups are skipped (most levels of most walks). A filter that cannot be read
/// says yes: the lookups decide.
#[inline(always)]
fn may_have(slot: u32, dev: u32, ino: u64, scope: u32) -> bool {
    let Some(filter) = IDENT_FILTER.get(slot) else {
        return true;
    };
    let bit = ident_filter_bit(dev, ino, scope);
    // Masked, not only checked: the verifier then sees the load inside the value.
    let word = filter[(bit as usize / 64) & (IDENT_FILTER_WORDS - 1)];
    word & (1 << (bit % 64)) != 0
}

/// The letters a walk from `dentry` is for, and the tables it reads: the letters its device's
/// marker holds (see governance_common::IdentKey; a class's markers are always its own, one
/// lookup). 0 when no identity rule of the class could answer on that device (or the class
/// has none): the walk is skipped.
#[inline(always)]
pub(crate) fn device_letters(value: &AgentValue, dentry: Btf) -> Result<(u8, Tables), Cause> {
    Ok(match marked(value, dentry)? {
        Some((letters, tables)) => (letters, tables),
        None => (0, builtin_tables(value)),
    })
}

#[inline(always)]
fn builtin_tables(value: &AgentValue) -> Tables {
    Tables {
        own: value.class,
        shared: builtin_class(value.class, value.allow),
    }
}

/// The class's fill (see governance_common::SCOPE_FILL), if it has one.
#[inline(always)]
fn fill_of(class: u32) -> Option<&'static IdentValue> {
    let key = IdentKey {
        class,
        dev: 0,
        ino: 0,
        scope: SCOPE_FILL,
        name: 0,
    };
    // SAFETY: values are plain data, read by the caller before the program returns.
    unsafe { IDENT_RULES.get(&key) }
}

/// The letters of an answer's slots that hold a rule.
#[inline(always)]
fn letters_of(v: &IdentValue) -> u8 {
    u8::from(has(&v.rules[0]))
        | u8::from(has(&v.rules[1])) << 1
        | u8::from(has(&v.rules[2])) << 2
        | u8::from(has(&v.rules[3])) << 3
}

/// `device_letters` for a judgement beside an open's (a new name, a new entry, a removal): the
/// letters to walk for, the letters of the class's fill among them (0 without one), and the
/// tables. On a device where the class has entries (a marker), the fill's letters are walked
/// too; on one without, every name of the device has the same answer (the fill), and nothing is
/// walked.
#[inline(always)]
pub(crate) fn name_letters(value: &AgentValue, dentry: Btf) -> Result<(u8, u8, Tables), Cause> {
    Ok(match marked(value, dentry)? {
        Some((letters, tables)) => {
            let fill = fill_of(value.class).map_or(0, letters_of);
            let (letters, fill) = opaque(letters | fill, fill)?;
            (letters, fill, tables)
        }
        None => (0, 0, builtin_tables(value)),
    })
}

/// `letters` and `fill` as the verifier sees bytes read from a map: any value, the same on
/// every path. Computed bit by bit from the marker and the fill, they reached `judge` as a known
/// number per combination of bits, which each test of a letter made precise: the verifier
/// walked `judge` and the walks' callbacks once per combination and pruned none of them
/// (inode_link: 784,689 verified instructions with the fill, 214,335 before it; so, 181,417).
/// The letters are no less tested: each test is walked both ways, once.
#[inline(always)]
fn opaque(letters: u8, fill: u8) -> Result<(u8, u8), Cause> {
    let a = IDENT_SCRATCH.get_ptr_mut(0).ok_or(Cause::Unreadable)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs; fields of it.
    unsafe {
        core::ptr::write_volatile(&mut (*a).letters, letters);
        core::ptr::write_volatile(&mut (*a).fill, fill);
        Ok((
            core::ptr::read_volatile(&(*a).letters),
            core::ptr::read_volatile(&(*a).fill),
        ))
    }
}

/// The device's marker: None without one, else the letters it holds and the tables.
#[inline(always)]
fn marked(value: &AgentValue, dentry: Btf) -> Result<Option<(u8, Tables)>, Cause> {
    let dev = sb_dev_of(dentry)?;
    let mut tables = builtin_tables(value);
    let marker = IdentKey {
        class: value.class,
        dev,
        ino: 0,
        scope: SCOPE_DEVICE,
        name: 0,
    };
    // SAFETY: the value is read immediately.
    Ok(match unsafe { IDENT_RULES.get(&marker) } {
        Some(v) => {
            if !v.own_entries() {
                tables.own = 0;
            }
            let letters = u8::from(v.rules[0].enforce.present != 0)
                | u8::from(v.rules[1].enforce.present != 0) << 1
                | u8::from(v.rules[2].enforce.present != 0) << 2
                | u8::from(v.rules[3].enforce.present != 0) << 3;
            Some((letters, tables))
        }
        None => None,
    })
}

#[inline(always)]
fn look(answer: &mut Answer, tables: Tables, dev: u32, ino: u64, scope: u32, want: u8) {
    if let Some(v) = tables.get(dev, ino, scope) {
        answer.take(v, want);
    }
}

/// Inode number of a dentry's inode (a negative dentry has none: unreadable).
#[inline(always)]
fn ino_of(dentry: Btf) -> Result<u64, Cause> {
    Ok(dentry.ptr(off(&OFF_DENTRY_INODE))?.get(off(&OFF_INODE_INO)))
}

/// The device of a dentry's object, as the identity keys hold it (its subvolume's on btrfs:
/// subvolume.rs).
#[inline(always)]
fn dev_of(dentry: Btf) -> Result<u32, Cause> {
    let mut buf = 0u64;
    dev_in(dentry, &mut buf)
}

/// `dev_of`, its reads landing in `buf` (a map value where the stack is spent), in a frame of
/// their own (see subvolume.rs `dentry_dev`).
#[inline(always)]
fn dev_in(dentry: Btf, buf: *mut u64) -> Result<u32, Cause> {
    crate::subvolume::dentry_dev(dentry, dentry.ptr(off(&OFF_DENTRY_SB))?, buf)
}

/// The device of a dentry's filesystem (its superblock's), as the markers hold it.
#[inline(always)]
fn sb_dev_of(dentry: Btf) -> Result<u32, Cause> {
    Ok(dentry.ptr(off(&OFF_DENTRY_SB))?.get(off(&OFF_SB_DEV)))
}

/// (device, inode) of a dentry's object, as the identity keys hold it.
#[inline(always)]
fn identity(dentry: Btf) -> Result<(u32, u64), Cause> {
    Ok((dev_of(dentry)?, ino_of(dentry)?))
}

#[inline(always)]
fn parent_of(dentry: Btf) -> Result<Btf, Cause> {
    dentry.ptr(off(&OFF_DENTRY_PARENT))
}

/// The identity rules for the letters in `want` that apply to the object `obj` (a dentry) where
/// it is: `obj` itself, then every directory above it (see `walk_up`).
#[inline(always)]
pub(crate) fn walk(
    slot: u32,
    tables: Tables,
    obj: Btf,
    want: u8,
    fill: (u8, u32),
) -> Result<&'static Answer, Cause> {
    look_self(scratch(slot)?, tables, obj, want)?;
    walk_up(slot, tables, obj, obj, want, fill)?;
    answer(slot)
}

/// The answer in scratch `slot` as it is now. Taken again after each walk: the walk's callback
/// writes it through a pointer of its own, which no reference held across the call would see.
#[inline(always)]
fn answer(slot: u32) -> Result<&'static Answer, Cause> {
    IDENT_SCRATCH.get(slot).ok_or(Cause::Unreadable)
}

/// The rules of `obj` itself (its own identity entry), for the letters in `want`.
#[inline(always)]
fn look_self(answer: &mut Answer, tables: Tables, obj: Btf, want: u8) -> Result<(), Cause> {
    // The reads of a btrfs subvolume into the answer's scratch: file_open's frame is full.
    let dev = dev_in(obj, &mut answer.scratch)?;
    let ino = ino_of(obj)?;
    look(answer, tables, dev, ino, SCOPE_SELF, want);
    Ok(())
}

/// One walk, between levels: `bpf_loop` hands the callback a pointer to it (on the caller's
/// stack). The dentries are kept as whole 8-byte words: the verifier keeps the type of a
/// pointer spilled that way, which the callback's loads through `child` need.
#[repr(C)]
struct Walk {
    tables: Tables,
    /// The superblock's device: every level's key device, but on btrfs (`BTRFS_WALK` in
    /// `want`), where each level's is its own subvolume's, read at each level.
    dev: u32,
    /// The letters of the class's fill to take where the walk found no entry (at the
    /// filesystem's root), 0 for none.
    fill: u32,
    /// The filesystem's root dentry (compared, never read through).
    root: u64,
    /// The last dentry looked at; its parent is next.
    child: Btf,
    /// The `IDENT_SCRATCH` slot of the answer.
    slot: u32,
    want: u32,
    /// `WALKING`, `DONE`, or `FAILED + Cause`.
    state: u32,
    /// The class whose fill is taken.
    class: u32,
}

/// `Walk::want`'s flag of a walk on btrfs: each level's key device is read (subvolume.rs).
const BTRFS_WALK: u32 = 1 << 8;

const WALKING: u32 = 0;
const DONE: u32 = 1;
const FAILED: u32 = 2;

/// One level of `walk_up`: the parent of `child`, looked up; 1 ends the loop.
///
/// A `bpf_loop` callback: the verifier checks this body once, not once per level (as it does an
/// unrolled or bounded loop, which cost seconds of load time per walk and, with several walks
/// in a row, more than its million instructions).
#[inline(never)]
extern "C" fn walk_level(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `walk_up` passed to bpf_loop, on its stack.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let Some(answer) = IDENT_SCRATCH.get_ptr_mut(w.slot) else {
        w.state = FAILED + Cause::Unreadable as u32;
        return 1;
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let answer = unsafe { &mut *answer };
    let want = (w.want & 0xff) as u8;
    if answer.found() == want {
        w.state = DONE;
        return 1;
    }
    let child = w.child;
    let step = (|| {
        let dir = parent_of(child)?;
        if dir == child {
            if child.addr() != w.root {
                let flags: u32 = child.get(off(&OFF_DENTRY_FLAGS));
                if flags & DCACHE_DISCONNECTED != 0 {
                    return Err(Cause::Unreadable);
                }
            }
            // Here, in the callback the verifier checks once: in the programs, after each walk,
            // it multiplied their paths (inode_link: 950k verified instructions against 214k).
            if w.fill != 0 {
                // Gone since the letters were taken: the generation changed; fail closed.
                let v = fill_of(w.class).ok_or(Cause::Unreadable)?;
                answer.take(v, w.fill as u8);
            }
            return Ok(DONE);
        }
        // On btrfs each level's own subvolume (a nested one's root sits in its parent's tree);
        // the flag is set only where the programs know where it is, so the reads are all
        // this branch holds (each branch here is walked by the verifier for every walk).
        let dev = if w.want & BTRFS_WALK != 0 {
            match crate::subvolume::level_dev(dir.addr(), &mut answer.scratch) {
                crate::subvolume::UNREADABLE => return Err(Cause::Unreadable),
                dev => dev as u32,
            }
        } else {
            w.dev
        };
        look(answer, w.tables, dev, ino_of(dir)?, SCOPE_BELOW, want);
        w.child = dir;
        Ok(WALKING)
    })();
    w.state = match step {
        Ok(state) => state,
        Err(cause) => FAILED + cause as u32,
    };
    i64::from(w.state != WALKING)
}

/// The rules of every directory above `child` (a dentry in `obj`'s filesystem) up to the
/// filesystem's root, for the letters in `want` still missing, into the answer in scratch
/// `slot`: the first entry met decides a letter. For an open `child` is the object; for a new
/// name (link, rename), the new dentry.
///
/// The walk stays in one filesystem (`d_parent` never leaves it; mounts are not followed,
/// which is what makes bind mounts and other namespaces' views reach the same rules). It
/// fails closed on a dentry that is not connected to its root (a file opened by handle whose
/// name is not cached: its directories are unknown) and past `MAX_IDENT_DEPTH` levels.
/// Pseudo files (pipes, sockets, memfd) have no directory: only their own identity applies.
/// `fill`: the letters of the fill of `class` (see governance_common::SCOPE_FILL) taken at the
/// root for what no entry answered.
#[inline(always)]
fn walk_up(
    slot: u32,
    tables: Tables,
    obj: Btf,
    child: Btf,
    want: u8,
    (fill, class): (u8, u32),
) -> Result<(), Cause> {
    let sb = obj.ptr(off(&OFF_DENTRY_SB))?;
    let (dev, root) = (
        sb.get::<u32>(off(&OFF_SB_DEV)),
        sb.get::<u64>(off(&OFF_SB_ROOT)),
    );
    let mut w = Walk {
        tables,
        dev,
        fill: u32::from(fill & want),
        root,
        child,
        slot,
        // The flag in a field the walk has (each byte of file_open's frame counts: with its
        // own field the frame and the callback's came to 544 bytes, over the 512 of a chain).
        want: u32::from(want)
            | if crate::subvolume::keyed(sb) {
                BTRFS_WALK
            } else {
                0
            },
        state: WALKING,
        class,
    };
    // SAFETY: the callback is a function of this program; the context outlives the call.
    let n = unsafe {
        bpf_loop(
            MAX_IDENT_DEPTH,
            walk_level as *mut c_void,
            (&mut w as *mut Walk).cast(),
            0,
        )
    };
    if n < 0 {
        return Err(Cause::Unreadable);
    }
    match w.state {
        DONE => Ok(()),
        // Past the last level with letters still open: too deep to place.
        WALKING => Err(Cause::TooLong),
        failed => Err(Cause::from_u8((failed - FAILED) as u8).unwrap_or(Cause::Unreadable)),
    }
}

/// The letters `a` restricts.
#[inline(always)]
fn restricted(a: &Answer) -> u8 {
    u8::from(a.found() & 1 != 0 && restricts(&a.read))
        | u8::from(a.found() & 2 != 0 && restricts(&a.write)) << 1
        | u8::from(a.found() & 4 != 0 && restricts(&a.create)) << 2
        | u8::from(a.found() & 8 != 0 && restricts(&a.truncate)) << 3
}

/// The rule id of the first letter in `letters` that `a` restricts, as a refusal (see
/// `REFUSE`).
#[inline(always)]
fn first_rule(a: &Answer, letters: u8) -> u64 {
    let rule = if letters & 1 != 0 {
        a.read.enforce.rule_id
    } else if letters & 2 != 0 {
        a.write.enforce.rule_id
    } else if letters & 4 != 0 {
        a.create.enforce.rule_id
    } else {
        a.truncate.enforce.rule_id
    };
    REFUSE | u64::from(rule)
}

/// A link or rename judged: 0 lets it go on; `REFUSE | rule_id` refuses it for that rule. A
/// plain number, not an `Option<RuleRef>`: for `None` the compiler spilled a stale pointer
/// into the unused payload, half of a register the verifier refuses to store.
const REFUSE: u64 = 1 << 32;

/// The first restricting rule of `src` (letters in `letters`) that `dst` does not match or
/// exceed in severity, as a refusal (see `REFUSE`): the protection a new name would lose.
#[inline(always)]
fn lost(src: &Answer, dst: &Answer, letters: u8) -> u64 {
    let keeps = |bit: u8, s: &RulePair, d: &RulePair| {
        letters & bit == 0
            || !restricts(s)
            || (dst.found() & bit != 0
                && d.enforce.present != 0
                && d.enforce.verdict >= s.enforce.verdict)
    };
    let rule = if !keeps(1, &src.read, &dst.read) {
        src.read.enforce.rule_id
    } else if !keeps(2, &src.write, &dst.write) {
        src.write.enforce.rule_id
    } else if !keeps(4, &src.create, &dst.create) {
        src.create.enforce.rule_id
    } else if !keeps(8, &src.truncate, &dst.truncate) {
        src.truncate.enforce.rule_id
    } else {
        return 0;
    };
    REFUSE | u64::from(rule)
}

/// Is `obj` a directory above an object a restricting rule names (`SCOPE_HOLDS`)? 0, or
/// `REFUSE | rule_id` of the first letter in `letters` held.
#[inline(always)]
fn holds(tables: Tables, obj: Btf, letters: u8) -> Result<u64, Cause> {
    let (dev, ino) = identity(obj)?;
    let Some(v) = tables.get(dev, ino, SCOPE_HOLDS) else {
        return Ok(0);
    };
    let rule = if letters & 1 != 0 && restricts(&v.rules[0]) {
        v.rules[0].enforce.rule_id
    } else if letters & 2 != 0 && restricts(&v.rules[1]) {
        v.rules[1].enforce.rule_id
    } else if letters & 4 != 0 && restricts(&v.rules[2]) {
        v.rules[2].enforce.rule_id
    } else if letters & 8 != 0 && restricts(&v.rules[3]) {
        v.rules[3].enforce.rule_id
    } else {
        return Ok(0);
    };
    Ok(REFUSE | u64::from(rule))
}

/// A rename over an object replaces it: refused where writing or truncating it is. `target`
/// holds the replaced object's own rules, `dir` its directories' (the first entry met decides).
#[inline(always)]
fn replacing(target: &Answer, dir: &Answer, letters: u8) -> u64 {
    let decides = |bit: u8, own: &RulePair, above: &RulePair| {
        if letters & bit == 0 {
            None
        } else if target.found() & bit != 0 {
            restricts(own).then_some(own.enforce.rule_id)
        } else if dir.found() & bit != 0 {
            restricts(above).then_some(above.enforce.rule_id)
        } else {
            None
        }
    };
    match decides(2, &target.write, &dir.write)
        .or_else(|| decides(8, &target.truncate, &dir.truncate))
    {
        Some(rule) => REFUSE | u64::from(rule),
        None => 0,
    }
}

/// The first two points of `new_name`: an object that carries a restricting rule itself, or a
/// directory above such an object, keeps its name. 0, or `REFUSE | rule_id`.
#[inline(always)]
fn named_or_held(tables: Tables, old: Btf, letters: u8) -> Result<u64, Cause> {
    look_self(scratch(0)?, tables, old, letters)?;
    let own = restricted(answer(0)?);
    if own != 0 {
        return Ok(first_rule(answer(0)?, own));
    }
    holds(tables, old, letters)
}

/// See `new_name`: 0, or `REFUSE | rule_id`. Two walks at most (the object's directories, the
/// new name's), each one `bpf_loop`; a letter of `fill` that a walk finds no entry for takes
/// the class's fill (see governance_common::SCOPE_FILL), on both sides.
#[inline(always)]
fn judge(
    tables: Tables,
    old: Btf,
    new: Btf,
    letters: u8,
    fill: u8,
    class: u32,
) -> Result<u64, Cause> {
    let refused = named_or_held(tables, old, letters)?;
    if refused != 0 {
        return Ok(refused);
    }
    // The names themselves, where a protected path was missing at the load: the new one (a
    // link or rename into it), and the old one (an object made there since, by whoever, keeps
    // the name: linked or renamed elsewhere, it would be written under a name no rule reads).
    if letters & 4 != 0 {
        for name in [new, old] {
            let named = name_refusal(tables.own, tables.shared, name);
            if named & JUDGED_FAILED != 0 {
                return Err(Cause::from_u8(named as u8).unwrap_or(Cause::Unreadable));
            }
            if named != 0 {
                return Ok(named);
            }
        }
    }
    // The new name's directories (into slot 1, emptied first).
    scratch(1)?;
    walk_up(1, tables, old, new, letters, (fill, class))?;
    let dst = answer(1)?;
    // A new name is a create in its directory: refused where creating is.
    if restricted(dst) & 4 != 0 {
        return Ok(first_rule(dst, 4));
    }
    let replaced: u64 = new.get(off(&OFF_DENTRY_INODE));
    if replaced != 0 {
        look_self(scratch(2)?, tables, new, letters & (2 | 8))?;
        let refused = replacing(answer(2)?, dst, letters);
        if refused != 0 {
            return Ok(refused);
        }
        // A directory that holds protected paths or names is not replaced either (red team
        // round 14: `mv -T ~/w/x ~/.local` over an emptied `~/.local`, as `held_dir` refuses
        // its rmdir).
        let held = holds(tables, new, letters & (2 | 4))?;
        if held != 0 {
            return Ok(held);
        }
    }
    if parent_of(old)? == parent_of(new)? {
        return Ok(0);
    }
    walk_up(0, tables, old, old, letters, (fill, class))?;
    let src = answer(0)?;
    let kept = restricted(src);
    if kept == 0 {
        return Ok(0);
    }
    Ok(lost(src, answer(1)?, kept))
}

/// The (device, inode) of `dentry` in one number, for the record; 0 when unreadable.
#[inline(always)]
fn object_of(dentry: Btf) -> u64 {
    identity(dentry).map_or(0, |(dev, ino)| (u64::from(dev) << 32) ^ ino)
}

/// Refuse a `Kind::Link` operation `op` for `agent` and report it: by the rule `judged` names
/// (a built-in one when it has no rule number), or failing closed with its cause. The record
/// names `dentry` by its last component.
#[inline(always)]
fn refuse(agent: &Agent, judged: Result<u32, Cause>, dentry: Btf, object: u64, op: u8) -> i32 {
    let d = match judged {
        Ok(rule_id) => Decision {
            kind: Kind::Link,
            verdict: Verdict::Block,
            // A fill is reported as the default, or as the built-in rule on `/` it is (a
            // sandbox profile's: named by the record's sandboxed flag).
            cause: match rule_id {
                NO_RULE => Cause::Builtin,
                FILL_DEFAULT => Cause::Default,
                _ => Cause::Rule,
            },
            rule_id: match rule_id {
                FILL_DEFAULT | FILL_BUILTIN => NO_RULE,
                id => id,
            },
            denied: true,
            shadow: RuleRef::default(),
            object,
            extra_flags: 0,
            report: 0,
        },
        Err(cause) => Decision::fail_closed(Kind::Link, cause),
    };
    emit(agent, &d, |ev| {
        ev.detail = op;
        // SAFETY: see read_at; the copy is bounded by the destination buffer.
        unsafe {
            match read_at::<u64>(dentry.addr(), off(&OFF_DENTRY_NAME) + off(&OFF_QSTR_NAME)) {
                Ok(name) => {
                    if bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path).is_err() {
                        ev.path[0] = 0;
                    }
                }
                Err(_) => ev.path[0] = 0,
            }
        }
    });
    lsm_ret(&d)
}

/// A new name for `old` at `new` (a hard link, or a rename): refused for agents when it would
/// take the object out of the identity rules that restrict its access.
///
/// - An object that carries a restricting rule itself (a rule named it, or it had other names
///   at load) keeps no name but its own: the next generation resolves the rule's path again,
///   and a renamed (or linked, then unlinked) object would no longer be found there.
/// - A directory above such an object keeps its name: renaming it (even in place) would move
///   the rule's path away from the object.
/// - A new name is a create in its directory, and a rename over an object replaces it: refused
///   where the rules refuse creating there, or writing (truncating) the object replaced.
///   The name itself first: where a protected path was missing at the load, the name it would
///   have in its deepest existing directory has an entry of its own (`name_refusal`).
/// - An object below a directory with a restricting rule may be renamed within its directory
///   (it keeps every ancestor) or moved, or linked, below directories whose rules are at least
///   as severe for those accesses; not elsewhere.
///
/// Then the same, but the first, second and last points only, for the arming paths of each of
/// the agent's enforcing sequence rules (see `arming_names`).
#[inline(always)]
fn new_name(old: Btf, new: Btf, op: u8) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    // The old and the new name are on one filesystem (links and renames do not cross them).
    let judged = match name_letters(&agent.value, old) {
        Ok((0, _, _)) => Ok(0),
        Ok((letters, fill, tables)) => judge(tables, old, new, letters, fill, agent.value.class),
        Err(cause) => Err(cause),
    };
    // The sequence rules after the agent's own (the other order cost the verifier more:
    // inode_link 301k verified instructions against 215k; 57k without them).
    let judged = match judged {
        Ok(0) => arming_names(&agent, old, new),
        judged => judged,
    };
    match judged {
        Ok(0) => 0,
        judged => refuse(&agent, judged.map(|r| r as u32), old, object_of(old), op),
    }
}

/// A sequence rule is armed by the path an open resolves to: a classified object given a name
/// outside the rule's arming paths could be read without arming it. Each enforcing sequence
/// rule's class holds its arming paths by identity, restricting the arming accesses (see
/// governance-userspace kernel/compile/sequence.rs); a new name is judged against each as
/// against the agent's own identity rules, keeping only what moves the object out of them (an
/// object the arming paths name, a directory above one, a move or link out of an arming
/// directory), not what a create or a replace would refuse there: an arming directory is no
/// place an agent may not write. 0, or `REFUSE | rule_id` of the sequence rule.
#[inline(always)]
fn arming_names(agent: &Agent, old: Btf, new: Btf) -> Result<u64, Cause> {
    if !crate::sequence::any(governance_common::slot(agent.generation)) {
        return Ok(0);
    }
    let mut a = Arming {
        old,
        new,
        class: agent.value.class,
        dev: sb_dev_of(old)?,
        refused: 0,
        state: WALKING,
        _pad: 0,
    };
    // One rule per call of the callback: as an unrolled loop over the (at most 4) rules, the
    // verifier walked each rule's two walks and their branches apart, ten times the program's
    // count (inode_link: 57k verified instructions before, 600k so).
    // SAFETY: the callback is a function of this program; the context outlives the call.
    let n = unsafe {
        bpf_loop(
            MAX_SEQ_RULES as u32,
            arming_rule as *mut c_void,
            (&mut a as *mut Arming).cast(),
            0,
        )
    };
    if n < 0 {
        return Err(Cause::Unreadable);
    }
    match a.state {
        WALKING | DONE => Ok(a.refused),
        failed => Err(Cause::from_u8((failed - FAILED) as u8).unwrap_or(Cause::Unreadable)),
    }
}

/// `arming_names` between rules: `bpf_loop` hands the callback a pointer to it (on the caller's
/// stack; the dentries as whole words, as in `Walk`).
#[repr(C)]
struct Arming {
    old: Btf,
    new: Btf,
    /// The agent's class, whose `SEQ_CLASSES` list is walked.
    class: u32,
    dev: u32,
    /// 0, or `REFUSE | rule_id`.
    refused: u64,
    /// `WALKING`, `DONE`, or `FAILED + Cause`.
    state: u32,
    _pad: u32,
}

/// One sequence rule of `arming_names`: its class's marker on the device, then `keeps_out`; 1
/// ends the loop (a refusal, a failure, or no rule left).
#[inline(never)]
extern "C" fn arming_rule(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Arming` that `arming_names` passed to bpf_loop, on its stack.
    let a = unsafe { &mut *ctx.cast::<Arming>() };
    // SAFETY: the value is read immediately.
    let Some(list) = (unsafe { SEQ_CLASSES.get(&a.class) }) else {
        a.state = DONE;
        return 1;
    };
    if index >= list.len {
        a.state = DONE;
        return 1;
    }
    // Masked, not only checked: the compiler checked a copy of the index, which left the
    // verifier an unbounded one for the load (MAX_SEQ_RULES is a power of two).
    const _: () = assert!(MAX_SEQ_RULES.is_power_of_two());
    let class = list.entries[index as usize & (MAX_SEQ_RULES - 1)].class;
    let marker = IdentKey {
        class,
        dev: a.dev,
        ino: 0,
        scope: SCOPE_DEVICE,
        name: 0,
    };
    // SAFETY: the value is read immediately.
    let letters = match unsafe { IDENT_RULES.get(&marker) } {
        Some(v) => {
            u8::from(v.rules[0].enforce.present != 0)
                | u8::from(v.rules[1].enforce.present != 0) << 1
                | u8::from(v.rules[2].enforce.present != 0) << 2
                | u8::from(v.rules[3].enforce.present != 0) << 3
        }
        None => return 0,
    };
    if letters == 0 {
        return 0;
    }
    // One table: a sequence class has no shared built-in entries.
    let tables = Tables {
        own: 0,
        shared: class,
    };
    match keeps_out(tables, a.old, a.new, letters) {
        Ok(0) => 0,
        Ok(refused) => {
            a.refused = refused;
            a.state = DONE;
            1
        }
        Err(cause) => {
            a.state = FAILED + cause as u32;
            1
        }
    }
}

/// `judge` without the create and replace checks (see `arming_names`).
#[inline(always)]
fn keeps_out(tables: Tables, old: Btf, new: Btf, letters: u8) -> Result<u64, Cause> {
    let refused = named_or_held(tables, old, letters)?;
    if refused != 0 {
        return Ok(refused);
    }
    if parent_of(old)? == parent_of(new)? {
        return Ok(0);
    }
    walk_up(0, tables, old, old, letters, (0, 0))?;
    let kept = restricted(answer(0)?);
    if kept == 0 {
        return Ok(0);
    }
    scratch(1)?;
    walk_up(1, tables, old, new, letters, (0, 0))?;
    Ok(lost(answer(0)?, answer(1)?, kept))
}

/// Hard links: `link(old, new)` of an object protected by identity to a directory outside the
/// rule (what would let the agent open it by a name no rule names).
#[lsm(hook = "inode_link")]
pub fn inode_link(ctx: LsmContext) -> i32 {
    // int inode_link(struct dentry *old_dentry, struct inode *dir, struct dentry *new_dentry)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    new_name(Btf::arg(&ctx, 0), Btf::arg(&ctx, 2), LINK_OP_LINK)
}

/// Renames: moving an object protected by identity (or a directory above one) out of the rule.
/// RENAME_EXCHANGE calls the hook once per direction.
#[lsm(hook = "inode_rename")]
pub fn inode_rename(ctx: LsmContext) -> i32 {
    // int inode_rename(struct inode *old_dir, struct dentry *old_dentry,
    //                  struct inode *new_dir, struct dentry *new_dentry)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    new_name(Btf::arg(&ctx, 1), Btf::arg(&ctx, 3), LINK_OP_RENAME)
}

/// An object changed where it is, without an open that file_open decides: removed (`unlink`:
/// a policy file gone means the next reload has no policy for the agent) or truncated
/// (`truncate(2)`, or `ftruncate(2)` of a file opened only for writing). Decided on the
/// object's identity rules (the object and the directories above it), as a write, and as a
/// truncate for a truncate; only refusals are reported. An object no identity rule restricts
/// passes at once.
#[inline(always)]
fn changed_in_place(dentry: Btf, truncate: bool, op: u8) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let asked = if truncate { 2 | 8 } else { 2 };
    let (want, fill, tables) = match name_letters(&agent.value, dentry) {
        Ok((letters, fill, tables)) => (letters & asked, fill & asked, tables),
        Err(cause) => return refuse(&agent, Err(cause), dentry, object_of(dentry), op),
    };
    if want == 0 {
        return 0;
    }
    let refusal = match walk(0, tables, dentry, want, (fill, agent.value.class)) {
        Ok(a) => {
            if want & 2 != 0 && a.found() & 2 != 0 && restricts(&a.write) {
                Ok(a.write.enforce.rule_id)
            } else if want & 8 != 0 && a.found() & 8 != 0 && restricts(&a.truncate) {
                Ok(a.truncate.enforce.rule_id)
            } else {
                return 0;
            }
        }
        Err(cause) => Err(cause),
    };
    refuse(&agent, refusal, dentry, object_of(dentry), op)
}

/// Removing a name of an object the identity rules protect from writing.
#[lsm(hook = "inode_unlink")]
pub fn unlink_protected(ctx: LsmContext) -> i32 {
    // int inode_unlink(struct inode *dir, struct dentry *dentry)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    // A pin on a bpf filesystem is the `inode_unlink` program's (protect.rs): one decision.
    let dir: u64 = ctx.arg(0);
    // SAFETY: see read_at.
    let magic = unsafe {
        read_at::<u64>(dir, off(&OFF_INODE_SB))
            .and_then(|sb| read_at::<u64>(sb, off(&OFF_SB_MAGIC)))
    };
    if magic.is_ok_and(|m| m & 0xffff_ffff == BPF_FS_MAGIC) {
        return 0;
    }
    changed_in_place(Btf::arg(&ctx, 1), false, LINK_OP_UNLINK)
}

/// truncate(2) and ftruncate(2) of an object the identity rules protect from writing or
/// truncating (an open with O_TRUNC was decided by file_open already, and agrees).
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    // int path_truncate(const struct path *path)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // A sandboxed process's, only through a descriptor it opened under its profile.
    let held = held_truncate(ctx.arg(0));
    if held != 0 {
        return held;
    }
    path_changed(Btf::arg(&ctx, 0), true, LINK_OP_TRUNCATE)
}

/// ftruncate(2) on Linux 6.2 and later, which asks this hook instead of `path_truncate` (as
/// does the truncation of an open with O_TRUNC, which file_open decided already and which
/// agrees): the same decision, on the file's own path (red team round 15: without it an
/// `ftruncate` of a protected file, or of one a sandboxed process held from before its
/// verdict, was decided by nothing on those kernels). Attached where the kernel has the hook.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    // int file_truncate(struct file *file)
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let file = Btf::arg(&ctx, 0);
    let held = held_truncate(file.addr() + off(&OFF_FILE_PATH));
    if held != 0 {
        return held;
    }
    dentry_changed(
        file.ptr(off(&OFF_FILE_PATH) + off(&OFF_PATH_DENTRY)),
        true,
        LINK_OP_TRUNCATE,
    )
}

/// An ACL or file capabilities set on, or removed from, `dentry` (guard.rs): decided as a chmod.
#[inline(always)]
pub(crate) fn mode_changed(dentry: Btf) -> i32 {
    changed_in_place(dentry, false, LINK_OP_CHMOD)
}

/// `changed_in_place` for the object a `struct path` names (failing closed for an agent when
/// the path cannot be read).
#[inline(always)]
fn path_changed(path: Btf, truncate: bool, op: u8) -> i32 {
    dentry_changed(path.ptr(off(&OFF_PATH_DENTRY)), truncate, op)
}

/// `changed_in_place` for `dentry` as read (failing closed for an agent when it could not be).
#[inline(always)]
fn dentry_changed(dentry: Result<Btf, Cause>, truncate: bool, op: u8) -> i32 {
    match dentry {
        Ok(dentry) => changed_in_place(dentry, truncate, op),
        Err(_) => match current_agent() {
            Some(agent) => {
                let d = Decision::fail_closed(Kind::Link, Cause::Unreadable);
                emit(&agent, &d, |ev| ev.detail = op);
                lsm_ret(&d)
            }
            None => 0,
        },
    }
}

/// chmod(2), fchmod(2), fchmodat(2) of an object the identity rules protect from writing:
/// a mode of 0 on the daemon's program stops its next start, a mode of 1777 on its socket
/// directory makes the directory shared (red team round 5). Decided as an unlink is.
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    // int path_chmod(const struct path *path, umode_t mode)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    path_changed(Btf::arg(&ctx, 0), false, LINK_OP_CHMOD)
}

/// chown(2) and its siblings, likewise.
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    // int path_chown(const struct path *path, kuid_t uid, kgid_t gid)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    path_changed(Btf::arg(&ctx, 0), false, LINK_OP_CHOWN)
}

/// A new entry made without an open, which file_open never sees: a symlink (a name pointing
/// anywhere: a symlink in a unit directory is how a service is enabled, one at a preload list
/// makes the loader read a file of the agent's), a directory, or what mknod(2) makes. A create
/// in its directory: refused where the identity rules of the directories above it refuse
/// creating (one walk, from the new entry's directory), or, where no entry answers, the class's
/// fill does (a sandboxed process's new entry outside its writable directories).
///
/// A regular file (`file`: mknod(2) of one, or an open's O_CREAT, which asks the same hook
/// before the file exists) is refused here only where an identity rule blocks creating, without
/// the fill: what else a create's rules say (escalate and its approved retry, throttle, the
/// sandbox's writable directories named by path) is file_open's to decide, on the path.
#[inline(always)]
fn new_entry(dentry: Btf, op: u8, file: bool) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    // Its name first, where a protected path was missing at the load (see `entry_name`), then
    // its directories. A regular file's name is refused here where its rule blocks creating
    // (an empty file at a missing login file's name, linked elsewhere, would be written there
    // and run at the next login); what else its rules say is file_open's, on the path.
    let judged = match entry_name(&agent.value, dentry, file) {
        0 => judge_new_entry(&agent.value, dentry, file),
        named => named,
    };
    match judged {
        0 => 0,
        judged if judged & JUDGED_FAILED != 0 => {
            let cause = Cause::from_u8(judged as u8).unwrap_or(Cause::Unreadable);
            refuse_new_entry(&agent, Err(cause), dentry, op)
        }
        judged => refuse_new_entry(&agent, Ok(judged as u32), dentry, op),
    }
}

/// A judgement that failed (`JUDGED_FAILED | cause`), beside 0 and `REFUSE | rule_id`.
const JUDGED_FAILED: u64 = 1 << 33;

/// `new_entry`'s judgement: 0, `REFUSE | rule_id`, or `JUDGED_FAILED | cause`. In a frame of
/// its own, as is the refusal: inlined, the program's frame (408 bytes in inode_symlink) with
/// the walk's callback and its callee below it came to 544, over the verifier's 512 for a chain
/// of calls.
#[inline(never)]
fn judge_new_entry(value: &AgentValue, dentry: Btf, file: bool) -> u64 {
    let judged = (|| -> Result<u64, Cause> {
        let (letters, fill, tables) = name_letters(value, dentry)?;
        let want = letters & 4;
        if want == 0 {
            return Ok(0);
        }
        let fill = if file { 0 } else { fill & 4 };
        scratch(1)?;
        walk_up(1, tables, dentry, dentry, want, (fill, value.class))?;
        let dir = answer(1)?;
        let refused = restricted(dir) & 4 != 0
            && (!file || dir.create.enforce.verdict == Verdict::Block as u8);
        Ok(if refused { first_rule(dir, 4) } else { 0 })
    })();
    match judged {
        Ok(judged) => judged,
        Err(cause) => JUDGED_FAILED | cause as u64,
    }
}

/// A new name judged by the name itself (see governance_common::SCOPE_NAME): where a protected
/// path did not exist when the generation was loaded, the daemon wrote an entry for the name
/// that path would have in its deepest directory that did (the path's own name, or the
/// directory on the way to it). Looked up under the new dentry's parent (device, inode) and
/// the hash of its name: 0, `REFUSE | rule_id` where its create slot restricts, or
/// `JUDGED_FAILED | cause`. The filter bit of the directory first (the name left out): in a
/// directory with no such entry (most), no name is read or hashed.
///
/// In a frame of its own (with the hash loop's context), as `judge_new_entry`'s: inode_link
/// and inode_rename call it from their judgement, inlined in the program; new entries through
/// `entry_name`.
#[inline(never)]
fn name_refusal(own: u32, shared: u32, dentry: Btf) -> u64 {
    match named(Tables { own, shared }, dentry, false) {
        Ok(judged) => judged,
        Err(cause) => JUDGED_FAILED | cause as u64,
    }
}

/// `name_refusal` for a new entry (symlink, mkdir, mknod), its tables found from the device's
/// marker (no marker, or one without the create letter: no name entry on the device). Called
/// from the program, beside `judge_new_entry`, not inside it: that chain of frames (the
/// program's, the judgement's, this one's and the hash loop's callback) came to 544 bytes of
/// stack, over the verifier's 512.
#[inline(never)]
fn entry_name(value: &AgentValue, dentry: Btf, block_only: bool) -> u64 {
    let judged = (|| -> Result<u64, Cause> {
        match marked(value, dentry)? {
            Some((letters, tables)) if letters & 4 != 0 => named(tables, dentry, block_only),
            _ => Ok(0),
        }
    })();
    match judged {
        Ok(judged) => judged,
        Err(cause) => JUDGED_FAILED | cause as u64,
    }
}

/// See `name_refusal`: 0, or `REFUSE | rule_id` (with `block_only`, only where the create slot
/// blocks).
#[inline(always)]
fn named(tables: Tables, dentry: Btf, block_only: bool) -> Result<u64, Cause> {
    let (dev, dir) = identity(parent_of(dentry)?)?;
    if !may_have(tables.shared >> 31, dev, dir, SCOPE_NAME) {
        return Ok(0);
    }
    let hash = hash_name(dentry)?;
    Ok(match tables.entry(dev, dir, SCOPE_NAME, hash) {
        Some(v)
            if restricts(&v.rules[2])
                && (!block_only || v.rules[2].enforce.verdict == Verdict::Block as u8) =>
        {
            REFUSE | u64::from(v.rules[2].enforce.rule_id)
        }
        _ => 0,
    })
}

/// governance_common::name_hash of `dentry`'s name: read into per-CPU scratch, then hashed by
/// a `bpf_loop` callback, one byte a call (the verifier checks its body once).
#[inline(always)]
fn hash_name(dentry: Btf) -> Result<u32, Cause> {
    let buf = NAME_SCRATCH.get_ptr_mut(0).ok_or(Cause::Unreadable)?;
    let name: u64 = dentry.get(off(&OFF_DENTRY_NAME) + off(&OFF_QSTR_NAME));
    // SAFETY: per-CPU scratch, exclusively ours while the program runs; the copy is bounded by
    // it, and the helper validates the source address.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut *buf) }
        .map_err(|_| Cause::Unreadable)?
        .len();
    let mut h = NameHash {
        hash: NAME_HASH_SEED,
        len: len as u32,
        failed: 0,
        _pad: 0,
    };
    // SAFETY: the callback is a function of this program; the context outlives the call.
    let n = unsafe {
        bpf_loop(
            NAME_BUF as u32,
            hash_byte as *mut c_void,
            (&mut h as *mut NameHash).cast(),
            0,
        )
    };
    if n < 0 || h.failed != 0 {
        return Err(Cause::Unreadable);
    }
    Ok(h.hash)
}

/// `hash_name` between bytes.
#[repr(C)]
struct NameHash {
    hash: u32,
    /// The name's length (without its NUL).
    len: u32,
    /// The scratch could not be read: the hash is not the name's.
    failed: u32,
    _pad: u32,
}

/// One byte of `hash_name`; 1 ends the loop (past the name).
#[inline(never)]
extern "C" fn hash_byte(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `NameHash` that `hash_name` passed to bpf_loop, on its stack.
    let h = unsafe { &mut *ctx.cast::<NameHash>() };
    if index >= h.len {
        return 1;
    }
    let Some(buf) = NAME_SCRATCH.get_ptr(0) else {
        h.failed = 1;
        return 1;
    };
    // SAFETY: per-CPU scratch; masked, so inside it (NAME_BUF is a power of two).
    let byte = unsafe { (*buf)[index as usize & (NAME_BUF - 1)] };
    h.hash = name_hash_step(h.hash, byte);
    0
}

/// `refuse` for a new entry, which has no object yet.
#[inline(never)]
fn refuse_new_entry(agent: &Agent, judged: Result<u32, Cause>, dentry: Btf, op: u8) -> i32 {
    refuse(agent, judged, dentry, 0, op)
}

#[lsm(hook = "inode_symlink")]
pub fn inode_symlink(ctx: LsmContext) -> i32 {
    // int inode_symlink(struct inode *dir, struct dentry *dentry, const char *old_name)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    new_entry(Btf::arg(&ctx, 1), LINK_OP_SYMLINK, false)
}

#[lsm(hook = "inode_mkdir")]
pub fn inode_mkdir(ctx: LsmContext) -> i32 {
    // int inode_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let named = crate::guard::cgroup_name(Btf::arg(&ctx, 0), Btf::arg(&ctx, 1));
    if named != 0 {
        return named;
    }
    new_entry(Btf::arg(&ctx, 1), LINK_OP_MKDIR, false)
}

/// mknod(2) of every type, and an open's O_CREAT (`may_o_create`), before the entry exists:
/// `path_mknod`, not `inode_mknod`, which a regular file (mode S_IFREG or 0) never reaches
/// (`vfs_create` asks `inode_create`): an empty file made that way in a unit directory masks
/// the unit, in the audit directory stops the daemon's next start (red team round 5).
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    // int path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
    //                unsigned int dev)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // umode_t: 16 bits.
    let mode: u64 = ctx.arg(2);
    let fmt = (mode as u16) & S_IFMT;
    if fmt == 0 || fmt == S_IFREG {
        new_entry(Btf::arg(&ctx, 1), LINK_OP_CREATE, true)
    } else {
        new_entry(Btf::arg(&ctx, 1), LINK_OP_MKNOD, false)
    }
}

/// Removing a directory (empty: what a rule names, or a directory below a protected one),
/// decided as an unlink is.
#[lsm(hook = "inode_rmdir")]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    // int inode_rmdir(struct inode *dir, struct dentry *dentry)
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let dentry = Btf::arg(&ctx, 1);
    let ret = changed_in_place(dentry, false, LINK_OP_RMDIR);
    if ret != 0 {
        return ret;
    }
    held_dir(dentry)
}

/// A directory above a protected object or a protected name that is missing (`SCOPE_HOLDS`,
/// as a rename of it is refused): removed, its name could be made again as a symlink or a
/// directory moved in from elsewhere, and the protected paths below it would lead there (red
/// team round 12: `~/.local` emptied, removed and made a symlink, then `~/.local/bin`).
#[inline(always)]
fn held_dir(dentry: Btf) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let (letters, tables) = match name_letters(&agent.value, dentry) {
        Ok((letters, _, tables)) => (letters & (2 | 4), tables),
        Err(cause) => return refuse(&agent, Err(cause), dentry, object_of(dentry), LINK_OP_RMDIR),
    };
    if letters == 0 {
        return 0;
    }
    match holds(tables, dentry, letters) {
        Ok(0) => 0,
        Ok(r) => refuse(
            &agent,
            Ok(r as u32),
            dentry,
            object_of(dentry),
            LINK_OP_RMDIR,
        ),
        Err(cause) => refuse(&agent, Err(cause), dentry, object_of(dentry), LINK_OP_RMDIR),
    }
}
