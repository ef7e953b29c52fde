//! Giving freed heap back to the kernel after large reconciles.
//!
//! A first reconcile against thousands of peers builds large temporary maps and batches. glibc's
//! allocator keeps the freed pages in its arena, so the daemon's resident set would stay at that
//! peak for the rest of its life; at 5000 peers that is several MiB of a ~20 MiB footprint.
//! `malloc_trim(0)` returns free pages at the top of the heap and inside it (madvise), which is
//! what an operator watching the pod's memory expects after a burst. Called after passes that
//! handled many entries (changed or merely dumped and compared: a repair tick at 5000 peers
//! allocates a few MiB for the dumps), at a cost of about a millisecond.

/// Entries handled in one pass above which freed memory is handed back.
pub const TRIM_AFTER_ENTRIES: usize = 1000;

/// Returns free heap pages to the kernel (glibc only; a no-op elsewhere).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own free lists
    // under the allocator's lock and may call madvise/sbrk on free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the kernel (glibc only; a no-op elsewhere).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_is_harmless() {
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(v);
        super::release_free_memory();
        let w = vec![2u8; 4096];
        assert_eq!(w[4095], 2);
    }
}
