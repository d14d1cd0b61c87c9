//! State shared by the parent and every child: anonymous MAP_SHARED memory.
//!
//! The mapping is made by the parent before it forks (and again at each
//! reload, for the children forked after it); every child inherits the same
//! physical pages, so an atomic update made by one child is seen by all.
//! Only lock-free atomics live here: a process may die at any instruction,
//! and a mutex it held would stay locked for ever.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
use nix::time::{ClockId, clock_gettime};

use crate::error::Error;

/// Most backends one configuration may list.
pub const MAX_BACKENDS: usize = 256;
/// Most prefork workers.
pub const MAX_WORKERS: usize = 4096;

/// Types that may live in shared pages: made of atomics only, so any
/// process may change them at any time, and valid when all bytes are zero.
///
/// # Safety
/// The implementing type must be valid when zero-filled and must contain
/// nothing but atomics (and arrays and structs of them).
pub unsafe trait Shareable {}

// SAFETY: atomics only; zero is "no requests yet, every backend up".
unsafe impl Shareable for SharedState {}
// SAFETY: atomics only; zero is "every slot free".
unsafe impl Shareable for Scoreboard {}
// SAFETY: atomics only; zero is "never said".
unsafe impl Shareable for Hush {}
// SAFETY: atomics only; zero is "not stopping".
unsafe impl Shareable for Stopping {}

/// One prefork worker's slot: what the parent counts to size the pool.
#[repr(C)]
pub struct WorkerSlot {
    /// One of the `SLOT_*` states.
    pub state: AtomicU32,
    /// Connections served so far.
    pub served: AtomicU64,
    /// The worker's pid, for `ps`-less inspection (0 when free).
    pub pid: AtomicI32,
    /// Set by the parent: stop before the next connection.
    pub retire: AtomicBool,
}

pub const SLOT_FREE: u32 = 0;
pub const SLOT_STARTING: u32 = 1;
pub const SLOT_IDLE: u32 = 2;
pub const SLOT_BUSY: u32 = 3;

/// Apache's scoreboard, reduced: one slot per prefork worker.
#[repr(C)]
pub struct Scoreboard {
    pub slots: [WorkerSlot; MAX_WORKERS],
}

/// Maps fresh shared pages holding a zeroed `T`.  They are never unmapped:
/// children forked with them use them until they exit, and the kernel
/// frees them when the last process that maps them is gone.
pub fn map<T: Shareable>() -> Result<&'static T, Error> {
    let len = NonZeroUsize::new(std::mem::size_of::<T>()).expect("non-empty state");
    // SAFETY: a fresh anonymous mapping aliases no Rust object; the kernel
    // zero-fills it, and all-zero bytes are a valid T (Shareable).  It is
    // page aligned, so the atomics are aligned.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }
    .map_err(|e| Error::os("cannot map shared memory", e.into()))?;
    // SAFETY: the mapping is valid, aligned and initialised (above), and is
    // never unmapped, so a 'static shared reference is sound; all mutation
    // goes through atomics.
    Ok(unsafe { ptr.cast::<T>().as_ref() })
}

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

/// When each kind of failure that can recur with every request was last
/// said (`now_ms`), by any of pibl's processes: see `log::worth_saying`.
#[repr(C)]
pub struct Hush {
    pub last_said_ms: [AtomicU64; crate::log::RECURRING_KINDS],
}

/// Set by the parent once it is told to stop, before it passes the stop on
/// to its children: see `signals::winding_down`.  Mapped once, at start,
/// so that children of every configuration see it.
#[repr(C)]
pub struct Stopping {
    pub asked: AtomicBool,
}

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process on the
/// machine, unaffected by changes of the wall clock.
pub fn now_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}
