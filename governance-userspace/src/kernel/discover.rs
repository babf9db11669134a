//! The discovery program's maps (see governance_common::discover): its ring buffer, taken once
//! by the daemon's discovery thread, and its per-CPU statistics.

use super::*;
use governance_common::discover::{
    DISCOVER_DROPPED, DISCOVER_LIMITED, DISCOVER_REPORTED, DiscoverEvent,
};

/// What the discovery program reported, dropped (ring full) and rate-limited, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoverStats {
    pub reported: u64,
    pub dropped: u64,
    pub limited: u64,
}

impl Enforcer {
    /// The discovery ring buffer (once).
    pub fn take_discover(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring(maps::DISCOVER)
    }

    /// Detach the discovery program (`run --no-discover`): its pinned link is removed, so the
    /// kernel drops it and processes outside agents pay nothing for discovery.
    pub fn detach_discover(&mut self) -> Result<(), KernelError> {
        let path = self.pin_dir.join(pins::LINKS).join(programs::DISCOVER.name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KernelError::Pin { path, source }),
        }
        for (p, h) in &mut self.hooks {
            if *p == programs::DISCOVER {
                *h = HookState::Unavailable("off (--no-discover)".into());
            }
        }
        Ok(())
    }

    /// The discovery program's statistics.
    pub fn discover_stats(&self) -> Result<DiscoverStats, KernelError> {
        let name = maps::DISCOVER_STATS;
        let map = self.map(name)?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        let sum = |slot: u32| -> Result<u64, KernelError> {
            Ok(array
                .get(&slot, 0)
                .map_err(|source| KernelError::Map { name, source })?
                .iter()
                .sum())
        };
        Ok(DiscoverStats {
            reported: sum(DISCOVER_REPORTED)?,
            dropped: sum(DISCOVER_DROPPED)?,
            limited: sum(DISCOVER_LIMITED)?,
        })
    }
}

/// One record of the discovery ring as the program wrote it (None if it is not one).
pub fn parse_discover(bytes: &[u8]) -> Option<DiscoverEvent> {
    if bytes.len() < std::mem::size_of::<DiscoverEvent>() {
        return None;
    }
    // SAFETY: DiscoverEvent is plain old data (every bit pattern valid), and the slice holds at
    // least its size; read_unaligned copes with the ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DiscoverEvent>()) })
}
