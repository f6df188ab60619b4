//! Giving freed heap memory back to the kernel.
//!
//! glibc's malloc keeps what a burst freed (a page of listed objects, a translation of
//! every Service) in its arenas, where it counts as the process's RSS until a later
//! allocation reuses it. The agent's steady state is small; after a burst it asks malloc to
//! return the free pages ([`trim`]) so its RSS shows that steady state. This complements,
//! and does not replace, keeping little state (see [`crate::services`]).

/// Returns free heap pages of every malloc arena to the kernel (glibc's `malloc_trim`).
/// A no-op where the C library has no such call.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
