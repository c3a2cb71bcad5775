//! The worker's allocator policy. libtorch frees each batch's large tensors and allocates
//! the same sizes again for the next batch. By default glibc serves blocks that large with
//! mmap and hands them back to the kernel on free, so every batch page-faults its
//! activations in afresh: half of a features run's CPU time was system time. The worker
//! keeps freed memory in its heap instead, and long runs give free pages back between
//! chunks of work, which limits how far peak memory grows with the number of chunks
//! (docs/BENCHMARKS.md, "Session 4").

/// Serves large blocks from the heap and never trims it on free. Called once, first
/// thing in `main`.
pub fn keep_freed_memory_in_the_heap() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread
    // starts and before libtorch allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Gives the heap's free pages back to the kernel, between chunks of a long run.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and only returns unused memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
