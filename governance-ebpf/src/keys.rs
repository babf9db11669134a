//! Keys and keyrings: an agent reaches only the keys its own subtree made. Keys are the
//! kernel's, shared by every process of a uid: the per-uid keyrings (`@u`, `@us`), a session
//! keyring handed down from outside, any key by its serial. Without this an agent running as the
//! uid of a service would read that service's secrets (`KEYCTL_READ`) and replace them
//! (`KEYCTL_UPDATE`). The maker is recorded when a key is made (`key_alloc`, by the key's
//! address: the serial is given after the LSM hook) and forgotten when it is freed (`key_free`);
//! every permission check the kernel makes after its own (`key_task_permission` calls
//! `key_permission` for view, read, write, search, link, setattr, and for the lookups that
//! defer the check) refuses an agent a key made elsewhere.
//!
//! Not recorded, so out of every agent's reach: keys made before the daemon loaded the programs
//! (fail closed), the per-uid keyrings (`KEY_ALLOC_UID_KEYRING`: shared by every process of the
//! uid, whoever touched them first) and keys outside every quota (`KEY_ALLOC_NOT_IN_QUOTA`: the
//! kernel's own keyrings, the per-uid persistent keyrings, the registers). The kernel's own
//! keyrings are searched on an agent's behalf (a signature checked against the system
//! keyrings), so a search of a key outside every quota passes; what it finds is still checked.
use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use governance_common::{Cause, Counter, Kind, ipc_object};

use crate::{
    decide::{Agent, Decision, count, current_agent, emit, lsm_ret},
    kernel::{OFF_KEY_FLAGS, OFF_KEY_SERIAL, off, read_at},
    maps::KEY_OWNERS,
};

/// key_alloc flags (include/linux/key.h): a key outside every quota; a per-uid keyring.
const KEY_ALLOC_NOT_IN_QUOTA: u64 = 0x2;
const KEY_ALLOC_UID_KEYRING: u64 = 0x10;
/// `key.flags` bit of a key that counts against its user's quota (`KEY_FLAG_IN_QUOTA`, bit 2
/// since 2.6).
const KEY_FLAG_IN_QUOTA: u64 = 1 << 2;
/// `enum key_need_perm` (6.1): a search, an unlink from a keyring.
const KEY_NEED_SEARCH: u32 = 4;
const KEY_NEED_UNLINK: u32 = 7;
/// `key_ref_t` is a `struct key *` with bit 0 set when the caller possesses the key.
const KEY_REF_POSSESSED: u64 = 1;

/// A key made in `agent` (its type already allowed): record it, or refuse the key if the table
/// is full (the agent would otherwise lose its own key: fail closed, counted).
#[inline(always)]
pub(crate) fn made(agent: &Agent, key: u64, flags: u64) -> i32 {
    if flags & (KEY_ALLOC_NOT_IN_QUOTA | KEY_ALLOC_UID_KEYRING) != 0 {
        made_outside(key);
        return 0;
    }
    if KEY_OWNERS.insert(&key, &agent.root, 0).is_err() {
        count(Counter::MapFull);
        let d = Decision::fail_closed(Kind::Ipc, Cause::MapFull);
        emit(agent, &d, |ev| ev.port = ipc_object::KEY);
        return lsm_ret(&d);
    }
    0
}

/// A key made outside every agent: no record. One left at this address by a key that a later
/// hook refused (so never freed through `key_free`) is not this key's.
#[inline(always)]
pub(crate) fn made_outside(key: u64) {
    let _ = KEY_OWNERS.remove(&key);
}

/// Every check after the kernel's own: refuse an agent a key its subtree did not make.
#[lsm(hook = "key_permission")]
pub fn key_permission(ctx: LsmContext) -> i32 {
    // int key_permission(key_ref_t key_ref, const struct cred *cred,
    //                    enum key_need_perm need_perm)
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let need: u32 = ctx.arg(2);
    // An unlink asks only the keyring (write), which is checked on its own; the key's check is
    // a formality the kernel expects no LSM to refuse.
    if need == KEY_NEED_UNLINK {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    // `key_ref_t` points to a struct the kernel never defines: the verifier refuses to load
    // it from the context ("arg0 type FWD is not a struct"), so it is copied out of the
    // context (the hook's arguments, 8 bytes each) as a number. Unreadable: refused.
    // SAFETY: a bounded copy from the context, which the helper validates.
    let key_ref = unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }.unwrap_or(0);
    let key = key_ref & !KEY_REF_POSSESSED;
    // SAFETY: the value is copied immediately.
    if unsafe { KEY_OWNERS.get(&key) }.copied() == Some(agent.root) {
        return 0;
    }
    // SAFETY: see read_at. An unreadable key is refused (fail closed).
    let flags = unsafe { read_at::<u64>(key, off(&OFF_KEY_FLAGS)) }.unwrap_or(KEY_FLAG_IN_QUOTA);
    if need == KEY_NEED_SEARCH && flags & KEY_FLAG_IN_QUOTA == 0 {
        return 0;
    }
    // SAFETY: see read_at; for the event only.
    let serial = unsafe { read_at::<i32>(key, off(&OFF_KEY_SERIAL)) }.unwrap_or(0);
    let d = Decision::builtin(Kind::Ipc, true);
    emit(&agent, &d, |ev| {
        ev.port = ipc_object::KEY;
        ev.detail = need as u8;
        ev.object = serial as u32 as u64;
    });
    // EPERM, not EACCES: keyctl_read_key() reads a possessed key anyway when the check fails
    // with EACCES.
    lsm_ret(&d)
}

/// Forget a key when the kernel frees it (its address may be reused).
#[lsm(hook = "key_free")]
pub fn key_free(ctx: LsmContext) -> i32 {
    // void key_free(struct key *key)
    let key: u64 = ctx.arg(0);
    let _ = KEY_OWNERS.remove(&key);
    0
}
