//! The identity filter: per slot, one bit per (device, inode, scope) that the slot's identity
//! entries have, so that a walk looks up only the levels that may have one (see
//! governance_common::maps::IDENT_FILTER).
use aya::maps::Array;
use governance_common::{IDENT_FILTER_WORDS, IdentFilter, IdentValue, ident_filter_bit, maps};

use super::{Enforcer, KernelError, slots::Table};

/// The filter of the identities of `idents`, a slot's identity entries.
pub(super) fn filter_of(idents: &Table<(u32, u32, u64, u32, u32), IdentValue>) -> Box<IdentFilter> {
    let mut filter = Box::new([0; IDENT_FILTER_WORDS]);
    // A SCOPE_NAME key's bit is its directory's: the name is not in it.
    for ((_, dev, ino, scope, _), _) in idents.iter() {
        let bit = ident_filter_bit(*dev, *ino, *scope);
        filter[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    filter
}

impl Enforcer {
    /// Slot `slot`'s identity filter as the kernel holds it.
    pub fn ident_filter(&self, slot: u32) -> Result<Box<IdentFilter>, KernelError> {
        let name = maps::IDENT_FILTER;
        let map: Array<_, IdentFilter> =
            Array::try_from(self.map(name)?).map_err(|source| KernelError::Map { name, source })?;
        map.get(&slot, 0)
            .map(Box::new)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// Make slot `slot`'s filter `filter`, or (with `keep`) add its bits to what the slot's
    /// filter has. Replacing may clear bits: only for a slot no decision reads (the one an
    /// install writes), before its entries are written. The active slot's filter only ever
    /// gains bits, before the entries that need them are written (a drill's canary).
    pub(super) fn write_ident_filter(
        &mut self,
        slot: u32,
        mut filter: Box<IdentFilter>,
        keep: bool,
    ) -> Result<(), KernelError> {
        if keep {
            let held = self.ident_filter(slot)?;
            for (word, had) in filter.iter_mut().zip(held.iter()) {
                *word |= had;
            }
        }
        let name = maps::IDENT_FILTER;
        let mut map: Array<_, IdentFilter> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| KernelError::Map { name, source })?;
        map.set(slot, *filter, 0)
            .map_err(|source| KernelError::Map { name, source })
    }
}
