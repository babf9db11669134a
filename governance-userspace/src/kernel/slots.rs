//! What each generation slot of the rule tables holds, remembered in user space, and the
//! writes that turn it into the next generation.
//!
//! A generation is written into the slot the kernel does not read (the slot bit of its class
//! and rule ids) and then flipped to. The retired slot keeps its entries: the generation after
//! next is written over them, and only what differs is written ([`changes`]): entries that are
//! new or whose value changed, and deletes of keys the new generation does not have. A reload
//! that changes one rule writes a few entries instead of every entry of every agent (each a
//! syscall, and the LPM tries' inserts and deletes walk the trie).
//!
//! Finding a slot's entries by walking the tables costs every key of every table, and the LPM
//! tries' `get_next_key` is linear, so the walk is quadratic in the entries. So every entry is
//! recorded as it is written. A daemon that adopts pinned maps (a restart) does not know what a
//! previous process wrote: both slots are unknown, and the first install walks the tables
//! once ([`Enforcer::learn`]), recording both slots with their values; from then on every write
//! is exact. A slot whose writes failed half-way is unknown again (the next install walks once
//! more), and so is one whose entries were changed outside an install without being recorded.

use std::{hash::Hash, sync::Arc};

use aya::maps::{HashMap, LpmTrie, MapError, lpm_trie::Key};
use governance_common::{
    AgentKey, AgentValue, ExecKey, IdentKey, IdentValue, NetKey, NetValue, PATH_MAX, PathKey,
    RulePair, Throttle, UnixKey, maps,
};

use super::{Enforcer, KernelError};

/// One table's entries in a slot: key → value, sorted by key, one entry per key, with each
/// distinct value stored once (a thousand agents' built-in identity entries hold a handful of
/// distinct values).
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    /// (key, index into `values`).
    entries: Vec<(K, u32)>,
    values: Vec<V>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            values: Vec::new(),
        }
    }
}

/// A [`Table`] as its entries are gathered, in the order they are written: each value is
/// stored once as it comes (no list of full entries is ever held).
pub(super) struct TableBuilder<K, V> {
    entries: Vec<(K, u32)>,
    values: Vec<V>,
    /// (foldhash, not SipHash: every entry of a generation hashes its value here.)
    index: foldhash::HashMap<V, u32>,
}

impl<K, V> Default for TableBuilder<K, V> {
    fn default() -> Self {
        TableBuilder {
            entries: Vec::new(),
            values: Vec::new(),
            index: foldhash::HashMap::default(),
        }
    }
}

impl<K: Ord, V: Copy + Eq + Hash> TableBuilder<K, V> {
    pub(super) fn push(&mut self, (key, value): (K, V)) {
        let i = *self.index.entry(value).or_insert_with(|| {
            self.values.push(value);
            (self.values.len() - 1) as u32
        });
        self.entries.push((key, i));
    }

    /// Room for `n` more entries (a slot's tables are thousands of entries: no doubling).
    pub(super) fn reserve(&mut self, n: usize) {
        self.entries.reserve_exact(n);
    }

    /// Sorted by key; a key written twice keeps its last value, as the kernel's map does.
    pub(super) fn finish(self) -> Table<K, V> {
        let mut entries = self.entries;
        // Latest write first, then a stable sort: of one key's writes the latest comes first
        // and is the one `dedup_by` keeps. All in place.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| later.0 == kept.0);
        entries.shrink_to_fit();
        Table {
            entries,
            values: self.values,
        }
    }
}

impl<K: Ord, V: Copy + Eq + Hash> Table<K, V> {
    /// From (key, value) writes in the order made (see [`TableBuilder::finish`]).
    pub fn from_writes(writes: Vec<(K, V)>) -> Self {
        let mut b = TableBuilder::default();
        for w in writes {
            b.push(w);
        }
        b.finish()
    }

    /// These entries, then `later`'s (which win where both have a key).
    fn merged(self, later: Self) -> Self {
        let mut writes = self.into_writes();
        writes.extend(later.into_writes());
        Self::from_writes(writes)
    }

    fn into_writes(self) -> Vec<(K, V)> {
        let values = self.values;
        self.entries
            .into_iter()
            .map(|(k, i)| (k, values[i as usize]))
            .collect()
    }
}

impl<K, V> Table<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries
            .iter()
            .map(|(k, i)| (k, &self.values[*i as usize]))
    }

    /// Forget the entries whose key `keep` refuses (they were deleted from the table).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|(k, _)| keep(k));
    }
}

impl<V> Table<PathAt, V> {
    /// This table's entries for the twin of `class` (its id with the slot bit flipped: the
    /// same class in the other slot), to share their bytes ([`Twins`]).
    pub(super) fn twins(&self, class: u32) -> Twins<'_> {
        let twin = class ^ (1 << 31);
        let from = self.entries.partition_point(|((c, _, _), _)| *c < twin);
        let to = self.entries.partition_point(|((c, _, _), _)| *c <= twin);
        Twins {
            rest: &self.entries[from..to],
        }
    }
}

/// One class's path entries in the other slot, walked beside the class's own in key order: a
/// node both have is stored once.
pub(super) struct Twins<'a> {
    rest: &'a [(PathAt, u32)],
}

impl Twins<'_> {
    /// The node's bytes: the twin's where it has the node, else `bytes`. Asked in key order.
    pub(super) fn bytes(&mut self, access: u8, bytes: Vec<u8>) -> Arc<[u8]> {
        let passed = self
            .rest
            .partition_point(|((_, a, b), _)| (*a, &b[..]) < (access, &bytes[..]));
        self.rest = &self.rest[passed..];
        match self.rest.first() {
            Some(((_, a, b), _)) if *a == access && b[..] == bytes[..] => Arc::clone(b),
            _ => bytes.into(),
        }
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for Table<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<K: Eq, V: Eq> Eq for Table<K, V> {}

/// What turns `old` into `new`: the entries to write (new keys and changed values) and the
/// keys to delete. One merge of the two sorted lists.
pub(super) fn changes<'a, K: Ord, V: Eq>(
    old: &'a Table<K, V>,
    new: &'a Table<K, V>,
) -> (Vec<(&'a K, &'a V)>, Vec<&'a K>) {
    let (mut write, mut delete) = (Vec::new(), Vec::new());
    let mut old = old.iter().peekable();
    for (k, v) in new.iter() {
        while let Some((ok, _)) = old.next_if(|(ok, _)| *ok < k) {
            delete.push(ok);
        }
        match old.next_if(|(ok, _)| *ok == k) {
            Some((_, ov)) if ov == v => {}
            _ => write.push((k, v)),
        }
    }
    delete.extend(old.map(|(k, _)| k));
    (write, delete)
}

/// A path entry's key: (class, access letter, node bytes). The bytes are shared with the
/// other slot's entry for the same class and node, which most of them have (see
/// [`Table::twins`]): both slots are recorded, and a path's bytes are most of a slot's
/// memory.
pub type PathAt = (u32, u8, Arc<[u8]>);
/// A network entry's key: (class, prefix length over 128 bits, address).
pub type NetAt = (u32, u32, [u8; 16]);

/// The entries of one slot, in a compact form (a path key is 260 bytes in the kernel; here, its
/// bytes only).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotEntries {
    /// (cgroup id, profile); the slot is the slot's.
    pub agents: Table<(u64, u32), AgentValue>,
    /// (class, device, inode).
    pub exec: Table<(u32, u32, u64), RulePair>,
    pub paths: Table<PathAt, RulePair>,
    pub net: Table<NetAt, NetValue>,
    /// Kernel rule ids.
    pub throttles: Table<u32, Throttle>,
    /// (class, device, inode).
    pub unix: Table<(u32, u32, u64), RulePair>,
    /// (class, device, inode, scope, name hash).
    pub idents: Table<(u32, u32, u64, u32, u32), IdentValue>,
}

/// A slot's entries as they are gathered, in the order they would be written.
#[derive(Default)]
pub(super) struct Writes {
    pub agents: TableBuilder<(u64, u32), AgentValue>,
    pub exec: TableBuilder<(u32, u32, u64), RulePair>,
    pub paths: TableBuilder<PathAt, RulePair>,
    pub net: TableBuilder<NetAt, NetValue>,
    pub throttles: TableBuilder<u32, Throttle>,
    pub unix: TableBuilder<(u32, u32, u64), RulePair>,
    pub idents: TableBuilder<(u32, u32, u64, u32, u32), IdentValue>,
}

impl From<Writes> for SlotEntries {
    fn from(w: Writes) -> Self {
        SlotEntries {
            agents: w.agents.finish(),
            exec: w.exec.finish(),
            paths: w.paths.finish(),
            net: w.net.finish(),
            throttles: w.throttles.finish(),
            unix: w.unix.finish(),
            idents: w.idents.finish(),
        }
    }
}

impl SlotEntries {
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

    /// These entries and `later`'s (which win where both have a key).
    fn merged(self, later: SlotEntries) -> SlotEntries {
        SlotEntries {
            agents: self.agents.merged(later.agents),
            exec: self.exec.merged(later.exec),
            paths: self.paths.merged(later.paths),
            net: self.net.merged(later.net),
            throttles: self.throttles.merged(later.throttles),
            unix: self.unix.merged(later.unix),
            idents: self.idents.merged(later.idents),
        }
    }
}

/// How many entries an install wrote and deleted in the tables of its slot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub written: usize,
    pub deleted: usize,
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
    pub fn walk_slots(&mut self) -> Result<[SlotEntries; 2], KernelError> {
        let mut out: [Writes; 2] = Default::default();
        macro_rules! walk {
            ($name:expr, $ty:ident, $k:ty, $v:ty, |$key:ident| $slot:expr => $field:ident $rec:expr) => {{
                let name = $name;
                let map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
                for entry in map.iter() {
                    let ($key, value) =
                        entry.map_err(|source| KernelError::Map { name, source })?;
                    out[($slot & 1) as usize].$field.push(($rec, value));
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
        walk!(maps::IDENT_RULES, HashMap, IdentKey, IdentValue, |k| of(k.class) => idents (k.class, k.dev, k.ino, k.scope, k.name));
        Ok(out.map(SlotEntries::from))
    }

    /// Forget what both slots hold: the next install reads the tables back (one walk) before it
    /// writes what differs. For when they may not hold what was recorded: a drill found the
    /// kernel deciding otherwise than the policy says.
    pub fn forget_slots(&mut self) {
        self.slots = [None, None];
    }

    /// What this process recorded for `slot` (None: unknown, after a restart until the first
    /// install), for tests.
    pub fn recorded_slot(&self, slot: u32) -> Option<&SlotEntries> {
        self.slots[(slot & 1) as usize].as_ref()
    }

    /// Add `entries`, written beside a generation's own (a drill's canary), to what `slot` is
    /// known to hold. An unknown slot stays unknown.
    pub(super) fn record_in_slot(&mut self, slot: u32, entries: SlotEntries) {
        let i = (slot & 1) as usize;
        if let Some(known) = self.slots[i].take() {
            self.slots[i] = Some(known.merged(entries));
        }
    }

    /// Forget the entries of `slot` that were deleted outside an install (a canary's): those
    /// of the classes `class` accepts and the agent entries `agents`.
    pub(super) fn forget_in_slot(
        &mut self,
        slot: u32,
        class: &dyn Fn(u32) -> bool,
        agents: &[AgentKey],
    ) {
        let Some(known) = self.slots[(slot & 1) as usize].as_mut() else {
            return;
        };
        known.agents.retain(|&(cgroup_id, profile)| {
            !agents.contains(&AgentKey {
                cgroup_id,
                slot,
                profile,
            })
        });
        known.exec.retain(|k| !class(k.0));
        known.paths.retain(|k| !class(k.0));
        known.net.retain(|k| !class(k.0));
        known.unix.retain(|k| !class(k.0));
        known.idents.retain(|k| !class(k.0));
    }

    /// Make the tables' `slot` hold `new` instead of `old` (what it holds now): deletes first
    /// (they make room), then the writes of new and changed entries.
    pub(super) fn apply(
        &mut self,
        slot: u32,
        old: &SlotEntries,
        new: &SlotEntries,
    ) -> Result<Written, KernelError> {
        let mut done = Written::default();
        macro_rules! apply {
            ($name:expr, $ty:ident, $k:ty, $v:ty, $field:ident, |$e:ident| $key:expr) => {{
                let (write, delete) = changes(&old.$field, &new.$field);
                if !write.is_empty() || !delete.is_empty() {
                    let name = $name;
                    let mut map: $ty<_, $k, $v> = $ty::try_from(self.map_mut(name)?)
                        .map_err(|source| KernelError::Map { name, source })?;
                    for $e in delete {
                        absent_ok(map.remove(&$key))
                            .map_err(|source| KernelError::Map { name, source })?;
                        done.deleted += 1;
                    }
                    for ($e, value) in write {
                        map.insert(&$key, value, 0)
                            .map_err(|source| KernelError::Map { name, source })?;
                        done.written += 1;
                    }
                }
            }};
        }
        apply!(maps::EXEC_RULES, HashMap, ExecKey, RulePair, exec, |e| {
            ExecKey {
                class: e.0,
                dev: e.1,
                ino: e.2,
            }
        });
        apply!(maps::PATH_RULES, LpmTrie, PathKey, RulePair, paths, |e| {
            path_key(e.0, e.1, &e.2)
        });
        apply!(
            maps::NET_RULES,
            LpmTrie,
            NetKey,
            NetValue,
            net,
            |e| net_key(e.0, e.1, e.2)
        );
        apply!(maps::THROTTLES, HashMap, u32, Throttle, throttles, |e| *e);
        apply!(maps::UNIX_RULES, HashMap, UnixKey, RulePair, unix, |e| {
            UnixKey {
                class: e.0,
                dev: e.1,
                ino: e.2,
            }
        });
        apply!(
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
                name: e.4,
            }
        );
        // The agents last: an agent entry leads to its class's tables, complete by now.
        apply!(maps::AGENTS, HashMap, AgentKey, AgentValue, agents, |e| {
            AgentKey {
                cgroup_id: e.0,
                slot,
                profile: e.1,
            }
        });
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_keeps_the_last_write_of_a_key_and_each_value_once() {
        let t = Table::from_writes(vec![(3, 'c'), (1, 'a'), (3, 'x'), (2, 'a'), (1, 'b')]);
        let got: Vec<(i32, char)> = t.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(got, [(1, 'b'), (2, 'a'), (3, 'x')]);
        assert_eq!(t.values.len(), 4, "c, a, x, b: each distinct value once");
    }

    #[test]
    fn changes_write_new_and_changed_entries_and_delete_the_rest() {
        let old = Table::from_writes(vec![(1, 'a'), (2, 'b'), (3, 'c'), (5, 'e')]);
        let new = Table::from_writes(vec![(2, 'b'), (3, 'd'), (4, 'e'), (6, 'f')]);
        let (write, delete) = changes(&old, &new);
        let write: Vec<(i32, char)> = write.into_iter().map(|(k, v)| (*k, *v)).collect();
        let delete: Vec<i32> = delete.into_iter().copied().collect();
        assert_eq!(write, [(3, 'd'), (4, 'e'), (6, 'f')]);
        assert_eq!(delete, [1, 5]);
        let (write, delete) = changes(&new, &new);
        assert!(write.is_empty() && delete.is_empty(), "the same: nothing");
        let empty = Table::default();
        let (write, delete) = changes(&empty, &new);
        assert_eq!(
            (write.len(), delete.len()),
            (4, 0),
            "into an empty slot: all"
        );
    }

    #[test]
    fn a_path_s_bytes_are_shared_with_the_other_slot_s_entry_of_the_same_class() {
        let (class, twin) = (7, 7 | (1 << 31));
        let pair = RulePair::default();
        let at = |class, access, path: &str| -> PathAt { (class, access, path.as_bytes().into()) };
        let other = Table::from_writes(vec![
            (at(twin, 2, "/etc/"), pair),
            (at(twin, 2, "/home/a/"), pair),
            (at(twin, 4, "/home/a/"), pair),
            (at(class, 2, "/srv/"), pair),
            (at(8 | (1 << 31), 2, "/srv/"), pair),
        ]);
        let shares = |got: &Arc<[u8]>| other.iter().any(|((_, _, b), _)| Arc::ptr_eq(got, b));
        let mut twins = other.twins(class);
        // Asked in key order, as the class's own table is walked.
        for (access, path, shared) in [
            (2, "/a/", false),
            (2, "/home/a/", true),
            (2, "/srv/", false), // the same slot's class, and another class's twin
            (4, "/home/a/", true),
            (4, "/z/", false),
        ] {
            let got = twins.bytes(access, path.as_bytes().to_vec());
            assert_eq!(&got[..], path.as_bytes());
            assert_eq!(shares(&got), shared, "{access} {path}");
        }
    }
}
