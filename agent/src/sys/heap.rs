//! The agent's heap: glibc malloc tuned for a long-lived, mostly idle daemon in a small VM.
//!
//! glibc gives each thread that allocates its own arena; the agent's short-lived blocking
//! threads (tokio's `spawn_blocking` pool) would each leave one behind, with freed but untrimmed
//! memory, so RSS crept up over thousands of container lifecycles. One arena shared by every
//! thread, and handing freed memory back after each container is deleted, keep the resident set
//! flat (`rgcs bench soak`).

/// Limits malloc to `arenas` arenas. Call before any other thread exists.
pub fn limit_arenas(arenas: i32) {
    // SAFETY: mallopt only changes allocator parameters; it is called before the process has
    // another thread, and M_ARENA_MAX accepts any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Returns free memory at the top of the heap (and of every arena) to the kernel.
pub fn trim() {
    // SAFETY: malloc_trim takes the allocator's own locks and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
