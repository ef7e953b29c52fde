//! Giving freed heap back to the kernel after the rare large allocations.
//!
//! A start-up or a re-list parses thousands of objects and the whole nft table as JSON; once
//! they are stripped and compiled, glibc keeps the freed pages in its arenas, so the resident
//! size would stay at that peak for the life of the process. `malloc_trim` returns free pages
//! (also from the middle of the heap) after such a sync; steady-state syncs allocate little and
//! do not call it.

/// Returns the allocator's free pages to the kernel (glibc; a no-op elsewhere).
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers from us; it walks glibc's own arenas under their
    // locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the kernel (glibc; a no-op elsewhere).
#[cfg(not(target_env = "gnu"))]
pub fn release_freed_memory() {}
