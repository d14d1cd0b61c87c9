//! State shared by the parent and every child: one anonymous MAP_SHARED page.
//!
//! The mapping is made once, by the parent, before the first fork(2); every
//! child inherits the same physical page, so an atomic update made by one
//! child is seen by all.  Only lock-free atomics live here: a process may die
//! at any instruction, and a mutex it held would stay locked for ever.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};

use crate::error::Error;

/// The layout of the shared page.  Zeroed memory is its initial state.
#[repr(C)]
pub struct SharedState {
    /// Requests dispatched so far; the next backend is this modulo the count.
    pub next_backend: AtomicUsize,
}

impl SharedState {
    /// Maps the shared page.  It is never unmapped: it lives as long as the
    /// process tree, and the kernel frees it when the last process exits.
    pub fn map() -> Result<&'static SharedState, Error> {
        let len = NonZeroUsize::new(std::mem::size_of::<SharedState>()).expect("non-empty state");
        // SAFETY: a fresh anonymous mapping aliases no Rust object; the kernel
        // zero-fills it, and all-zero bytes are a valid SharedState (atomics
        // only).  It is page aligned, so the atomics are aligned.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| Error::os("cannot map shared memory", e.into()))?;
        // SAFETY: the mapping is valid, aligned and initialised (above), and
        // is never unmapped, so a 'static shared reference is sound; all
        // mutation goes through atomics.
        Ok(unsafe { ptr.cast::<SharedState>().as_ref() })
    }
}
