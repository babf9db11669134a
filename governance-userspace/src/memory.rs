//! Giving memory back to the kernel after the daemon's bursts of allocation.
//!
//! The daemon's allocator (mimalloc, `main.rs`) hands the pages freed by a thread back to the
//! kernel only after its purge delay (1 s) and only when that thread calls it again. The
//! program load (the kernel's BTF, parsed) and each generation's build (the policy set, the
//! compiled tables, the HTTP engine) free tens of MiB at once, on whichever threads, and the
//! daemon then goes quiet: those pages stayed resident, twice the daemon's working set
//! (`cargo xtask bench rss`). Purging at every free (a delay of 0) gives them back but costs
//! the event pipeline about a fifth of its throughput (`cargo xtask bench events`), so the
//! daemon purges at once only during a [`Burst`].

use std::ffi::c_long;

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_e` of mimalloc v3's
/// `mimalloc.h`; libmimalloc-sys names no constant for it). Checked by the test below.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// While alive, freed pages go back to the kernel at once; dropped, the usual delay returns
/// and what is still held as free is handed back. Spans the program load and each
/// generation's build and swap, never the steady flow of events.
#[must_use = "the burst ends when this is dropped"]
pub struct Burst {
    delay: c_long,
}

impl Burst {
    pub fn start() -> Self {
        // SAFETY: mimalloc's options are plain integers, read and written from any thread.
        let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
        Burst { delay }
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        // SAFETY: as above; mi_collect takes no pointers and may be called at any time.
        unsafe {
            libmimalloc_sys::mi_collect(true);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, self.delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_mimallocs_and_a_burst_restores_it() {
        // SAFETY: reading an option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // mimalloc v3's default purge delay (options.c); no other option at this index has it.
        assert_eq!(
            get(),
            1000,
            "index {PURGE_DELAY} is not mi_option_purge_delay"
        );
        {
            let _b = Burst::start();
            assert_eq!(get(), 0);
        }
        assert_eq!(get(), 1000);
    }
}
