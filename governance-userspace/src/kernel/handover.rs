//! What a new build takes over from the previous build's maps when it hands over (see
//! [`Enforcer::finish_handover`]): the state the programs keep between decisions, which no
//! policy holds and a new build's empty maps would otherwise forget. Sandbox marks (a marked
//! process would run under its agent's policy instead of its profile) and the files those
//! processes opened for writing under their profiles, armed sequence rules,
//! the files agents wrote (which an exec allowlist keeps from being mapped executable), approved
//! grants and throttle buckets; and the kernel objects agents made or armed, by address: the
//! files armed for SIGIO (whose signal to a process outside the agent is refused), and the
//! System V IPC objects, keys and message queues an agent reaches because it made them.
//!
//! Both builds' programs run on every hook until the previous build's links go, so what the
//! previous build records meanwhile is decided by both; the copy is made in that window, after
//! this build enforces its first generation and before the previous build is detached.

use super::*;

/// What one handover carried, table by table (entries written into this build's maps).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The [`governance_common::RUNTIME_LAYOUT`] of the previous build (0: before it was kept).
    pub layout: u32,
    pub sandboxed: usize,
    /// Marks carried as [`UNKNOWN_PROFILE`]: their profile could not be told.
    pub unknown_profiles: usize,
    pub sequences: usize,
    pub written: usize,
    /// Files sandboxed processes opened for writing under their profiles.
    pub sandbox_files: usize,
    pub grants: usize,
    pub buckets: usize,
    /// Files agents armed for SIGIO.
    pub sigio_files: usize,
    /// System V IPC objects, keys and message queues agents made.
    pub owned_objects: usize,
    /// Tables not carried (a layout this build cannot read), for the operator.
    pub not_carried: Vec<&'static str>,
}

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sandboxed processes ({} with a profile this build cannot tell, every action refused), {} files they opened for writing, {} armed sequence rules, {} files agents wrote, {} grants, {} throttle buckets, {} files agents armed for SIGIO, {} IPC objects, keys and message queues agents made",
            self.sandboxed,
            self.unknown_profiles,
            self.sandbox_files,
            self.sequences,
            self.written,
            self.grants,
            self.buckets,
            self.sigio_files,
            self.owned_objects
        )?;
        if !self.not_carried.is_empty() {
            let why = if self.layout > governance_common::RUNTIME_LAYOUT {
                "is newer than"
            } else {
                "keyed grants more broadly than"
            };
            write!(
                f,
                "; not carried (the previous build's layout {} {why} this build's {}): {}",
                self.layout,
                governance_common::RUNTIME_LAYOUT,
                self.not_carried.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The previous build's map `name`, opened from its pin.
fn open_old_data(old_pins: &Path, name: &'static str) -> Result<MapData, KernelError> {
    MapData::from_pin(old_pins.join(pins::MAPS).join(name))
        .map_err(|source| KernelError::Map { name, source })
}

fn open_old(old_pins: &Path, name: &'static str) -> Result<Map, KernelError> {
    Map::from_map_data(open_old_data(old_pins, name)?)
        .map_err(|source| KernelError::Map { name, source })
}

/// The previous build's runtime layout: its [`STATE_LAYOUT`] entry, 0 where it has none.
fn old_layout(old_pins: &Path) -> Result<u32, KernelError> {
    let name = maps::STATE;
    let map = open_old(old_pins, name)?;
    let state: Array<_, u32> =
        Array::try_from(&map).map_err(|source| KernelError::Map { name, source })?;
    match state.get(&STATE_LAYOUT, 0) {
        Ok(layout) => Ok(layout),
        Err(aya::maps::MapError::OutOfBounds { .. }) => Ok(0),
        Err(source) => Err(KernelError::Map { name, source }),
    }
}

impl Enforcer {
    /// Copy the runtime tables of the build whose pins are under `old_pins` into this build's
    /// (see the module). An entry this build already made is kept, except a throttle bucket,
    /// which keeps the lower level of the two. A sandbox mark whose meaning the previous
    /// build's layout does not give is carried as [`UNKNOWN_PROFILE`]: fail closed.
    pub(super) fn carry_over(&mut self, old_pins: &Path) -> Result<Carried, KernelError> {
        let layout = old_layout(old_pins)?;
        // Layout 1 has this layout's marks and objects (only its grants differ, below).
        let known = (1..=governance_common::RUNTIME_LAYOUT).contains(&layout);
        let mut carried = Carried {
            layout,
            ..Default::default()
        };
        // Marks first (the flag before them, as the kernel sets it).
        let marks: Vec<(u32, u32)> = entries(old_pins, maps::SANDBOXED)?;
        if !marks.is_empty() {
            let name = maps::SANDBOX_ANY;
            let mut any: Array<_, u32> = Array::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            any.set(0, 1, 0)
                .map_err(|source| KernelError::Map { name, source })?;
        }
        let marks: Vec<(u32, u32)> = marks
            .into_iter()
            .map(|(tgid, mark)| (tgid, if known { mark } else { UNKNOWN_PROFILE }))
            .collect();
        carried.unknown_profiles = marks.iter().filter(|(_, m)| *m == UNKNOWN_PROFILE).count();
        carried.sandboxed = self.merge(maps::SANDBOXED, &marks, |_, _| false)?;
        // A process that exited while its mark was copied: the exit hook of this build may
        // have run before the mark was written (only where this daemon sees the node's pids).
        if sees_node_pids() {
            let name = maps::SANDBOXED;
            let mut map: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
            for (tgid, _) in &marks {
                if !Path::new("/proc").join(tgid.to_string()).exists() {
                    let _ = map.remove(tgid);
                }
            }
        }
        self.recount_marks()?;
        // The files the marked processes opened for writing under their profiles, with the
        // same marks; a build before this table has none to give (writes through those
        // descriptors are then refused: fail closed).
        if known {
            carried.sandbox_files = self.carry_objects::<u32>(old_pins, maps::SANDBOX_FILES)?;
            // The flag first, as the kernel sets it: this build's `file_free_security` then
            // forgets a carried file once it is freed.
            if old_pins.join(pins::MAPS).join(maps::SIGIO_OWNERS).exists() {
                let name = maps::SIGIO_ANY;
                let mut any: Array<_, u32> = Array::try_from(self.map_mut(name)?)
                    .map_err(|source| KernelError::Map { name, source })?;
                any.set(0, 1, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
            }
            carried.sigio_files =
                self.carry_objects::<governance_common::SigioOwner>(old_pins, maps::SIGIO_OWNERS)?;
            for name in [maps::IPC_OWNERS, maps::KEY_OWNERS, maps::MQ_OWNERS] {
                carried.owned_objects += self.carry_objects::<u64>(old_pins, name)?;
            }
        }
        // Builds before the layout was kept have the same types for these (see
        // `RUNTIME_LAYOUT`); a newer layout cannot be read.
        if layout > governance_common::RUNTIME_LAYOUT {
            carried.not_carried = vec![maps::SEQ_STATE, maps::WRITTEN, maps::GRANTS, maps::BUCKETS];
            return Ok(carried);
        }
        let seq: Vec<(SeqStateKey, SeqArmed)> = entries(old_pins, maps::SEQ_STATE)?;
        carried.sequences = self.merge(maps::SEQ_STATE, &seq, |_, _| false)?;
        // Before layout 3 an entry held only its writer: carried with no inode, it stays until
        // the node restarts (see `Written`).
        let written: Vec<(ExecKey, governance_common::Written)> = if layout >= 3 {
            entries(old_pins, maps::WRITTEN)?
        } else {
            entries::<ExecKey, u64>(old_pins, maps::WRITTEN)?
                .into_iter()
                .map(|(key, owner)| (key, governance_common::Written { owner, inode: 0 }))
                .collect()
        };
        carried.written = self.merge(maps::WRITTEN, &written, |_, _| false)?;
        // Before layout 2 a grant's key was too broad to carry (see `RUNTIME_LAYOUT`): what it
        // approved is asked again.
        if layout == governance_common::RUNTIME_LAYOUT {
            let grants: Vec<(GrantKey, u64)> = entries(old_pins, maps::GRANTS)?;
            carried.grants = self.merge(maps::GRANTS, &grants, |_, _| false)?;
        } else {
            carried.not_carried.push(maps::GRANTS);
        }
        let buckets: Vec<(BucketKey, Bucket)> = entries(old_pins, maps::BUCKETS)?;
        carried.buckets = self.merge(maps::BUCKETS, &buckets, |old: &Bucket, mine: &Bucket| {
            old.tokens < mine.tokens
        })?;
        Ok(carried)
    }

    /// Set the count of marks ([`maps::SANDBOX_ANY`] at 1) to what [`maps::SANDBOXED`] holds
    /// now: the kernel counts only the marks it makes and removes, not those written here.
    fn recount_marks(&mut self) -> Result<(), KernelError> {
        let name = maps::SANDBOXED;
        let marks: HashMap<_, u32, u32> = HashMap::try_from(self.map(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        // (A walk the kernel's changes restart may see a key twice: counted once.)
        let bound = 2 * governance_common::MAX_SANDBOXED as usize;
        let held = marks
            .keys()
            .take(bound)
            .filter_map(Result::ok)
            .collect::<std::collections::BTreeSet<u32>>()
            .len() as u32;
        let name = maps::SANDBOX_ANY;
        let mut any: Array<_, u32> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        any.set(1, held, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// Carry the previous build's map `name` of kernel objects by address (a `struct file`, an
    /// IPC object, a key, an inode) into this build's; 0 where that build had no such table.
    /// An object freed while it was copied would leave its address behind, for the next object
    /// the kernel puts there: the previous build's free hook removes the entry from its own map
    /// (this build's finds none yet to remove), so each entry carried is looked up there again
    /// after the copy and dropped here if it is gone. An object freed later is this build's
    /// free hook's. Returns the entries kept.
    fn carry_objects<V: aya::Pod>(
        &mut self,
        old_pins: &Path,
        name: &'static str,
    ) -> Result<usize, KernelError> {
        if !old_pins.join(pins::MAPS).join(name).exists() {
            return Ok(0);
        }
        let objects: Vec<(u64, V)> = entries(old_pins, name)?;
        let mut map: HashMap<_, u64, V> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let mut written = Vec::new();
        for (k, v) in &objects {
            match map.get(k, 0) {
                Ok(_) => continue,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(KernelError::Map { name, source }),
            }
            map.insert(k, v, 0)
                .map_err(|source| KernelError::Map { name, source })?;
            written.push(*k);
        }
        let old = Map::from_map_data(open_old_data(old_pins, name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let old: HashMap<_, u64, V> =
            HashMap::try_from(&old).map_err(|source| KernelError::Map { name, source })?;
        let mut kept = written.len();
        for k in &written {
            match old.get(k, 0) {
                Ok(_) => {}
                Err(aya::maps::MapError::KeyNotFound) => {
                    let _ = map.remove(k);
                    kept -= 1;
                }
                Err(source) => return Err(KernelError::Map { name, source }),
            }
        }
        Ok(kept)
    }

    /// Write `from` into this build's map `name`: a key it lacks gets the entry, a key it
    /// has keeps its value unless `replace(carried, mine)`. Returns the entries written.
    fn merge<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        from: &[(K, V)],
        replace: impl Fn(&V, &V) -> bool,
    ) -> Result<usize, KernelError> {
        let mut map: HashMap<_, K, V> = HashMap::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        let mut written = 0;
        for (k, v) in from {
            let write = match map.get(k, 0) {
                Ok(mine) => replace(v, &mine),
                Err(aya::maps::MapError::KeyNotFound) => true,
                Err(source) => return Err(KernelError::Map { name, source }),
            };
            if write {
                map.insert(k, v, 0)
                    .map_err(|source| KernelError::Map { name, source })?;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// Every entry of the previous build's hash map `name` (a table both builds' programs change
/// meanwhile: a key removed while it is read is skipped; the walk is bounded by twice the
/// map's capacity).
fn entries<K: aya::Pod, V: aya::Pod>(
    old_pins: &Path,
    name: &'static str,
) -> Result<Vec<(K, V)>, KernelError> {
    let data = open_old_data(old_pins, name)?;
    let bound = data
        .info()
        .map_err(|source| KernelError::Map { name, source })?
        .max_entries() as usize
        * 2;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
    let map: HashMap<_, K, V> =
        HashMap::try_from(&map).map_err(|source| KernelError::Map { name, source })?;
    let mut out = Vec::new();
    for entry in map.iter().take(bound) {
        match entry {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(KernelError::Map { name, source }),
        }
    }
    Ok(out)
}

/// Does this process see the node's process ids (the initial PID namespace: one `NSpid`)?
fn sees_node_pids() -> bool {
    crate::procfs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| ids.split_whitespace().count() == 1)
    })
}

impl Enforcer {
    /// During a handover, the previous build's event ring (what it decided after its daemon
    /// stopped is still in it), if its layout is one this build reads: see
    /// [`governance_common::RUNTIME_LAYOUT`].
    pub fn previous_events(&self) -> Result<Option<RingBuf<MapData>>, KernelError> {
        let Some(old) = &self.handover_from else {
            return Ok(None);
        };
        if old_layout(old)? > governance_common::RUNTIME_LAYOUT {
            return Ok(None);
        }
        let name = maps::EVENTS;
        let ring = RingBuf::try_from(open_old(old, name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(Some(ring))
    }
}
