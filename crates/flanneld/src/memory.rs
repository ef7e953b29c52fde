//! Giving memory back to the kernel: freed heap after large reconciles, and the start-up code
//! once the daemon is up.
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

/// Hands back the pages of flanneld's own code and read-only data that start-up faulted in.
///
/// Start-up runs code that a settled daemon never runs again (flag and config parsing, the
/// first list and its decoding, device creation, rule installation), and the kernel maps code
/// in 64 KiB windows around each fault, so a started flanneld has nearly all of its 10 MiB of
/// code resident: more than half of its whole footprint at 5000 peers. Once the first full
/// pass is done, the read-only mappings of the executable are paged out (`MADV_PAGEOUT`): the
/// pages are clean copies of the file, so nothing is lost, and the code the daemon keeps
/// running is faulted back in on use. Pages another process maps too (a second flanneld, the
/// shared libraries) are left alone by the kernel. Returns the bytes advised; errors (kernels
/// before 5.4, no `/proc`) leave memory as it was and are only logged at debug.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release_startup_code() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in readonly_mappings_of(&maps, &exe.to_string_lossy()) {
        let len = end - start;
        // SAFETY: the range is a whole mapping of this process, read from /proc/self/maps;
        // MADV_PAGEOUT only drops clean file-backed pages from the page tables (the kernel
        // re-reads them on the next access) and never changes what the memory holds.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc == 0 {
            advised += len;
        } else {
            tracing::debug!(
                "madvise(MADV_PAGEOUT) of {start:#x}-{end:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    advised
}

/// Hands back the start-up code (Linux only; a no-op elsewhere).
#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() -> usize {
    0
}

/// The address ranges of `/proc/self/maps` lines that map `path` without write permission.
fn readonly_mappings_of(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            // offset, device, inode, then the path (which may contain spaces).
            let name = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            if name != path || !perms.starts_with('r') || perms.as_bytes().get(1) == Some(&b'w') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b > a).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn readonly_mappings_are_found_by_path() {
        let maps = "\
55d0a0000000-55d0a0400000 r--p 00000000 fd:01 123 /usr/bin/flanneld
55d0a0400000-55d0a0e00000 r-xp 00400000 fd:01 123 /usr/bin/flanneld
55d0a0e00000-55d0a0f00000 rw-p 00e00000 fd:01 123 /usr/bin/flanneld
55d0a1000000-55d0a1100000 r--p 00000000 fd:01 124 /usr/bin/flanneld-old
7f0000000000-7f0000100000 r-xp 00000000 fd:01 200 /usr/lib/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
7f0000400000-7f0000500000 r--p 00000000 fd:01 300 /opt/my dir/flanneld
";
        assert_eq!(
            super::readonly_mappings_of(maps, "/usr/bin/flanneld"),
            [
                (0x55d0_a000_0000, 0x55d0_a040_0000),
                (0x55d0_a040_0000, 0x55d0_a0e0_0000)
            ]
        );
        assert_eq!(
            super::readonly_mappings_of(maps, "/opt/my dir/flanneld"),
            [(0x7f00_0040_0000, 0x7f00_0050_0000)]
        );
    }

    /// The test binary keeps running normally after its own code was paged out.
    #[test]
    fn paging_out_own_code_is_harmless() {
        let advised = super::release_startup_code();
        assert!(advised > 0 || !cfg!(target_os = "linux"));
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }

    #[test]
    fn trimming_is_harmless() {
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(v);
        super::release_free_memory();
        let w = vec![2u8; 4096];
        assert_eq!(w[4095], 2);
    }
}
