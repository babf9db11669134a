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
//!
//! And data embedded in the binary that is read once (the eBPF object) is paged out after
//! that read ([`page_out`]).

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

/// Take the pages of `bytes`, read-only data of the executable, out of the resident set
/// (`MADV_PAGEOUT`, Linux 5.4): the kernel reclaims them and, if they are read again, faults
/// them back in from the executable, so the content is unchanged whatever happens. Only the
/// pages `bytes` covers whole are paged out, so neighbouring data is not touched. A kernel
/// without it keeps the pages resident (logged; nothing else changes).
pub fn page_out(bytes: &'static [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside `bytes`, a live 'static mapping; MADV_PAGEOUT neither
    // unmaps nor changes its content (it is advice about residency only).
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the embedded data stays resident (madvise MADV_PAGEOUT)"
        );
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

    /// Resident pages of `bytes`, from /proc/self/pagemap (bit 63: present; readable for the
    /// process's own pages without privileges).
    fn resident_pages(bytes: &[u8]) -> (usize, usize) {
        use std::os::unix::fs::FileExt as _;
        let page = 4096;
        let first = bytes.as_ptr() as usize / page;
        let last = (bytes.as_ptr() as usize + bytes.len() - 1) / page;
        let map = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut entries = vec![0u8; (last - first + 1) * 8];
        map.read_exact_at(&mut entries, (first * 8) as u64).unwrap();
        let present = entries
            .chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
            .count();
        (present, last - first + 1)
    }

    #[test]
    fn paging_out_the_ebpf_object_drops_its_pages_and_keeps_its_content() {
        use sha2::{Digest as _, Sha256};
        let object = crate::kernel::EBPF_OBJECT;
        let digest = |b: &[u8]| -> String {
            Sha256::digest(b)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(digest(object), env!("GOVERNANCE_EBPF_SHA256"));
        let (before, pages) = resident_pages(object);
        assert!(
            before > pages * 9 / 10,
            "{before} of {pages} pages resident after reading"
        );
        page_out(object);
        let (after, _) = resident_pages(object);
        assert!(
            after < pages / 10,
            "{after} of {pages} pages of the object still resident after page_out"
        );
        // Read again: the same bytes, faulted back in from the executable.
        assert_eq!(digest(object), env!("GOVERNANCE_EBPF_SHA256"));
    }
}
