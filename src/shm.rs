//! State shared by the parent and every child: anonymous MAP_SHARED memory.
//!
//! The mapping is made by the parent before it forks (and again at each
//! reload, for the children forked after it); every child inherits the same
//! physical pages, so an atomic update made by one child is seen by all.
//! Only lock-free atomics live here: a process may die at any instruction,
//! and a mutex it held would stay locked for ever.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
use nix::time::{ClockId, clock_gettime};

use crate::error::Error;

/// Most backends one configuration may list.
pub const MAX_BACKENDS: usize = 256;

/// What every process knows of one backend's health.
#[repr(C)]
pub struct BackendHealth {
    /// Failures counted in the current window.
    pub fails: AtomicU32,
    /// Start of the current failure window (`now_ms`).
    pub window_start_ms: AtomicU64,
    /// Marked down by failures until this time (`now_ms`); 0 when never.
    pub down_until_ms: AtomicU64,
    /// Marked down by the active health check.
    pub check_down: AtomicBool,
}

/// The layout of the shared pages.  Zeroed memory is its initial state.
#[repr(C)]
pub struct SharedState {
    /// Requests dispatched so far; the next backend is this modulo the count.
    pub next_backend: AtomicUsize,
    pub backends: [BackendHealth; MAX_BACKENDS],
}

impl SharedState {
    /// Maps fresh shared pages.  They are never unmapped: children forked
    /// with them use them until they exit, and the kernel frees them when
    /// the last process that maps them is gone.
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

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process on the
/// machine, unaffected by changes of the wall clock.
pub fn now_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}
