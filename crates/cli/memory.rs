//! Malloc settings for an agent that stays resident beside the app on a small host.
//!
//! glibc's malloc gives threads their own arenas, and after a large buffer is freed it raises its
//! mmap threshold (up to 32 MiB), so that later large buffers (a segment being encoded, a carried
//! WAL tail, a restored segment's frames) come from those arenas and their pages stay with the
//! process once freed. One arena and a fixed 256 KiB threshold hand such buffers back to the
//! system when they are freed. Measured with a writer committing flat out (100,000 transactions,
//! S3 replica): peak RSS 45–47 MB before, 32–35 MB after, the same CPU. A `MALLOC_ARENA_MAX` or
//! `MALLOC_MMAP_THRESHOLD_` in the environment is left to win.
//!
//! Only `replicate` and `run` use them. A restore that rebuilds a segment's frames (format 1, or
//! a format-2 segment that starts before the restore's state) holds tens of MB at a time: with a
//! fixed threshold they were mapped afresh for every segment, and the page faults took 30 % of
//! its time (it also reuses its frame buffers itself). Format-2 segments are applied in place.

/// Applies the settings; call before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    let set = |var: &str| std::env::var_os(var).is_some();
    // SAFETY: `mallopt` only changes malloc's parameters, and runs before any other thread
    // exists, so no allocation is in progress.
    unsafe {
        if !set("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if !set("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
}

/// Other platforms keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}
