//! Anonymous MAP_SHARED memory: how the parent and every child share state.
//!
//! The parent maps the pages before it forks (and again at each reload,
//! for the children forked after it); every child inherits the same
//! physical pages, so an atomic update made by one child is seen by all.
//! Only lock-free atomics live here: a process may die at any instruction,
//! and a mutex it held would stay locked for ever.
//!
//! This module only maps.  Each owner declares the layout of its own
//! pages and vouches for it with `Shareable`: the balancer its backends'
//! health, the prefork pool its scoreboard, the log its record of what was
//! said, the signals the parent's stop.

use std::num::NonZeroUsize;

use std::os::fd::OwnedFd;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};

use crate::error::Error;

/// Types that may live in shared pages: made of atomics only, so any
/// process may change them at any time, and valid when all bytes are zero.
///
/// # Safety
/// The implementing type must be valid when zero-filled and must contain
/// nothing but atomics (and arrays and structs of them).
pub unsafe trait Shareable {}

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

/// As `map`, but backed by a memory file (memfd_create(2)) whose
/// descriptor comes back too: a binary upgrade hands it to the new
/// program, which maps the very same pages (`map_inherited`).
pub fn map_file<T: Shareable>(name: &str) -> Result<(&'static T, OwnedFd), Error> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fail = |e: nix::errno::Errno| Error::os("cannot map shared memory", e.into());
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(fail)?;
    let len = std::mem::size_of::<T>();
    nix::unistd::ftruncate(&fd, len as libc::off_t).map_err(fail)?;
    // The file is fresh and zero-filled by ftruncate: a zeroed T.
    Ok((map_fd(&fd)?, fd))
}

/// The pages of the memory file `fd`, handed over by the pibl this one
/// upgrades: a `T` it made, if the file has a `T`'s size.
pub fn map_inherited<T: Shareable>(fd: OwnedFd) -> Result<(&'static T, OwnedFd), Error> {
    let size = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::os("cannot map inherited shared memory", e.into()))?
        .st_size;
    if size as usize != std::mem::size_of::<T>() {
        return Err(Error::Failed(format!(
            "inherited shared memory of {size} bytes, not {}",
            std::mem::size_of::<T>()
        )));
    }
    Ok((map_fd(&fd)?, fd))
}

fn map_fd<T: Shareable>(fd: &OwnedFd) -> Result<&'static T, Error> {
    use nix::sys::mman::mmap;
    let len = NonZeroUsize::new(std::mem::size_of::<T>()).expect("non-empty state");
    // SAFETY: a shared mapping of a memory file of a T's size, which holds
    // a T (zero-filled, or written through atomics by its maker); it
    // aliases no Rust object, is page aligned, and is never unmapped.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .map_err(|e| Error::os("cannot map shared memory", e.into()))?;
    // SAFETY: as in `map`: valid, aligned, initialised, never unmapped;
    // all mutation goes through atomics.
    Ok(unsafe { ptr.cast::<T>().as_ref() })
}
