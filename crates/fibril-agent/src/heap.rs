//! The agent's use of malloc: one arena, and freed memory given back to the kernel.
//!
//! glibc's malloc keeps what a burst freed (a page of listed objects, a translation of
//! every Service) in its arenas, where it counts as the process's RSS until a later
//! allocation reuses it. The agent's steady state is small; after a burst it asks malloc to
//! return the free pages ([`trim`]) so its RSS shows that steady state. This complements,
//! and does not replace, keeping little state (see [`crate::services`]).

/// Makes every thread allocate from one malloc arena. Call before any thread starts.
///
/// glibc gives each thread that meets lock contention an arena of its own (up to 8 per
/// CPU); the agent's runtime threads then each keep the high-water mark of whatever burst
/// ran on them, and memory one thread freed is not reused by another. One arena keeps the
/// agent's RSS at its live state plus one burst. The agent's allocation rate is low: the
/// lock costs nothing that shows.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free heap pages of every malloc arena to the kernel (glibc's `malloc_trim`).
/// A no-op where the C library has no such call.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
