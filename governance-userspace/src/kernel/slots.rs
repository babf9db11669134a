//! What each generation slot of the rule tables holds, remembered in user space.
//!
//! A generation is written into its slot (the slot bit of its class and rule ids) and the slot
//! of the generation before it is cleared after the flip. Finding a slot's entries by walking
//! the tables costs every key of every table, and the LPM tries' `get_next_key` is linear, so
//! the walk was quadratic in the entries (most of an install's time). Instead, [`write`]
//! records each key it writes, and clearing a slot deletes exactly those.
//!
//! A daemon that adopts pinned maps (a restart) does not know what a previous process wrote:
//! both slots are unknown, and the first install walks the tables once ([`Enforcer::learn`]),
//! recording the entries of both slots; from then on every clear is exact. A slot whose clear
//! failed half-way is unknown again (the next install walks once more).
//!
//! [`write`]: Enforcer::install

use aya::maps::{HashMap, LpmTrie, MapError, lpm_trie::Key};
use governance_common::{
    AgentKey, AgentValue, ExecKey, IdentKey, IdentValue, NetKey, NetValue, PATH_MAX, PathKey,
    RulePair, Throttle, UnixKey, maps,
};

use super::{Enforcer, KernelError};

/// The keys of one slot, in a compact form (a path key is 260 bytes in the kernel; here, its
/// bytes only).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotKeys {
    /// (cgroup id, profile); the slot is the slot's.
    pub agents: Vec<(u64, u32)>,
    /// (class, device, inode).
    pub exec: Vec<(u32, u32, u64)>,
    /// (class, access letter, node bytes).
    pub paths: Vec<(u32, u8, Box<[u8]>)>,
    /// (class, prefix length over 128 bits, address).
    pub net: Vec<(u32, u32, [u8; 16])>,
    /// Kernel rule ids.
    pub throttles: Vec<u32>,
    /// (class, device, inode).
    pub unix: Vec<(u32, u32, u64)>,
    /// (class, device, inode, scope).
    pub idents: Vec<(u32, u32, u64, u32)>,
}

impl SlotKeys {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.agents.len()
            + self.exec.len()
            + self.paths.len()
            + self.net.len()
            + self.throttles.len()
            + self.unix.len()
            + self.idents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sorted and without duplicates (a key written twice is one entry), for comparison.
    pub fn normalized(mut self) -> Self {
        fn norm<T: Ord>(v: &mut Vec<T>) {
            v.sort();
            v.dedup();
        }
        norm(&mut self.agents);
        norm(&mut self.exec);
        norm(&mut self.paths);
        norm(&mut self.net);
        norm(&mut self.throttles);
        norm(&mut self.unix);
        norm(&mut self.idents);
        self
    }
}

pub(super) fn path_key(class: u32, access: u8, bytes: &[u8]) -> Key<PathKey> {
    let mut path = [0u8; PATH_MAX];
    path[..bytes.len()].copy_from_slice(bytes);
    Key::new(
        ((5 + bytes.len()) * 8) as u32,
        PathKey {
            class_be: class.to_be_bytes(),
            access,
            path,
        },
    )
}

pub(super) fn net_key(class: u32, bits: u32, addr: [u8; 16]) -> Key<NetKey> {
    Key::new(
        32 + bits,
        NetKey {
            class_be: class.to_be_bytes(),
            addr,
        },
    )
}

/// A delete of a key that is not there (a write that failed on that very key) is done.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl Enforcer {
    /// After a restart, record what the pinned tables hold in each slot (one walk of every
    /// table); nothing to do when both slots are known.
    pub(super) fn learn(&mut self) -> Result<(), KernelError> {
        if self.slots.iter().all(Option::is_some) {
            return Ok(());
        }
        let walked = self.walk_slots()?;
        self.slots = walked.map(Some);
        Ok(())
    }

    /// Every entry of both slots, read from the tables (a walk of every key). For a restart,
    /// and for tests, which compare it with what was recorded.
    pub fn walk_slots(&mut self) -> Result<[SlotKeys; 2], KernelError> {
        let mut out: [SlotKeys; 2] = Default::default();
        macro_rules! walk {
            ($name:expr, $ty:ident, $k:ty, $v:ty, |$key:ident| $slot:expr => $field:ident $rec:expr) => {{
                let name = $name;
                let map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
                for $key in map.keys() {
                    let $key = $key.map_err(|source| KernelError::Map { name, source })?;
                    out[($slot & 1) as usize].$field.push($rec);
                }
            }};
        }
        let of = |id: u32| id >> 31;
        walk!(maps::AGENTS, HashMap, AgentKey, AgentValue, |k| k.slot => agents (k.cgroup_id, k.profile));
        walk!(maps::EXEC_RULES, HashMap, ExecKey, RulePair, |k| of(k.class) => exec (k.class, k.dev, k.ino));
        walk!(maps::PATH_RULES, LpmTrie, PathKey, RulePair, |k| of(u32::from_be_bytes(k.data().class_be)) => paths {
            let len = (k.prefix_len() / 8).saturating_sub(5) as usize;
            let d = k.data();
            (u32::from_be_bytes(d.class_be), d.access, d.path[..len.min(PATH_MAX)].into())
        });
        walk!(maps::NET_RULES, LpmTrie, NetKey, NetValue, |k| of(u32::from_be_bytes(k.data().class_be)) => net
            (u32::from_be_bytes(k.data().class_be), k.prefix_len() - 32, k.data().addr));
        walk!(maps::THROTTLES, HashMap, u32, Throttle, |k| of(k) => throttles k);
        walk!(maps::UNIX_RULES, HashMap, UnixKey, RulePair, |k| of(k.class) => unix (k.class, k.dev, k.ino));
        walk!(maps::IDENT_RULES, HashMap, IdentKey, IdentValue, |k| of(k.class) => idents (k.class, k.dev, k.ino, k.scope));
        Ok(out)
    }

    /// What this process recorded for `slot` (None: unknown, after a restart until the first
    /// install), for tests.
    pub fn recorded_slot(&self, slot: u32) -> Option<&SlotKeys> {
        self.slots[(slot & 1) as usize].as_ref()
    }

    /// Add `keys` to what `slot` is known to hold (entries written beside a generation's own,
    /// a drill's canary): the slot's clear removes them too. An unknown slot stays unknown (its
    /// clear walks the tables).
    pub(super) fn record_in_slot(&mut self, slot: u32, keys: SlotKeys) {
        if let Some(known) = self.slots[(slot & 1) as usize].as_mut() {
            known.agents.extend(keys.agents);
            known.exec.extend(keys.exec);
            known.paths.extend(keys.paths);
            known.net.extend(keys.net);
            known.throttles.extend(keys.throttles);
            known.unix.extend(keys.unix);
            known.idents.extend(keys.idents);
        }
    }

    /// Remove exactly the recorded entries of `slot` (see [`Enforcer::learn`]). If a delete
    /// fails, the slot is unknown again.
    pub(super) fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError> {
        // The sequence lists are few (at most `MAX_SEQ_CLASSES`): their own table is walked.
        self.clear_sequences(slot)?;
        let i = (slot & 1) as usize;
        let Some(keys) = self.slots[i].take() else {
            self.learn()?;
            return self.clear_slot(slot);
        };
        let result = self.remove_keys(slot, &keys);
        self.slots[i] = match result {
            Ok(()) => Some(SlotKeys::default()),
            Err(_) => None,
        };
        result
    }

    fn remove_keys(&mut self, slot: u32, keys: &SlotKeys) -> Result<(), KernelError> {
        macro_rules! remove {
            ($name:expr, $ty:ident, $k:ty, $v:ty, $field:ident, |$e:ident| $key:expr) => {{
                if !keys.$field.is_empty() {
                    let name = $name;
                    let mut map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                        .map_err(|source| KernelError::Map { name, source })?;
                    for $e in &keys.$field {
                        absent_ok(map.remove(&$key))
                            .map_err(|source| KernelError::Map { name, source })?;
                    }
                }
            }};
        }
        remove!(maps::AGENTS, HashMap, AgentKey, AgentValue, agents, |e| {
            AgentKey {
                cgroup_id: e.0,
                slot,
                profile: e.1,
            }
        });
        remove!(maps::EXEC_RULES, HashMap, ExecKey, RulePair, exec, |e| {
            ExecKey {
                class: e.0,
                dev: e.1,
                ino: e.2,
            }
        });
        remove!(maps::PATH_RULES, LpmTrie, PathKey, RulePair, paths, |e| {
            path_key(e.0, e.1, &e.2)
        });
        remove!(
            maps::NET_RULES,
            LpmTrie,
            NetKey,
            NetValue,
            net,
            |e| net_key(e.0, e.1, e.2)
        );
        remove!(maps::THROTTLES, HashMap, u32, Throttle, throttles, |e| *e);
        remove!(maps::UNIX_RULES, HashMap, UnixKey, RulePair, unix, |e| {
            UnixKey {
                class: e.0,
                dev: e.1,
                ino: e.2,
            }
        });
        remove!(
            maps::IDENT_RULES,
            HashMap,
            IdentKey,
            IdentValue,
            idents,
            |e| IdentKey {
                class: e.0,
                dev: e.1,
                ino: e.2,
                scope: e.3,
                _pad: 0,
            }
        );
        Ok(())
    }
}
