//! Signal handling for the parent, and its undoing in each child.
//!
//! Handlers only store to atomics, which is async-signal-safe; the parent's
//! loop does the work.  The signals stay blocked except inside ppoll(2),
//! which unblocks them atomically while it waits, so none is lost between a
//! check of the flags and the wait.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};

/// A child exited (or several did: signals do not queue).
pub static GOT_SIGCHLD: AtomicBool = AtomicBool::new(false);
/// SIGTERM or SIGINT: stop.
pub static GOT_SIGTERM: AtomicBool = AtomicBool::new(false);

/// The signals the parent handles.
const HANDLED: [Signal; 3] = [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT];

extern "C" fn on_signal(signo: libc::c_int) {
    match signo {
        libc::SIGCHLD => GOT_SIGCHLD.store(true, Ordering::Relaxed),
        _ => GOT_SIGTERM.store(true, Ordering::Relaxed),
    }
}

/// Reads and clears a flag.
pub fn take(flag: &AtomicBool) -> bool {
    flag.swap(false, Ordering::Relaxed)
}

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    HANDLED.iter().for_each(|&s| set.add(s));
    set
}

/// Installs the parent's handlers and blocks their signals.  Returns the
/// mask to wait with (and to restore in children): the mask pibl started
/// with, less the handled signals, which a parent process may have left
/// blocked (a blocked mask survives fork and exec).
pub fn install_parent() -> nix::Result<SigSet> {
    // No SA_RESTART: a handled signal must end the wait it interrupts.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    let mut wait_mask = handled_set().thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    for signal in HANDLED {
        wait_mask.remove(signal);
        // SAFETY: on_signal only stores to atomics, which is
        // async-signal-safe, and the parent is single-threaded.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(wait_mask)
}

/// In a new child: default dispositions and the mask the parent started
/// with, so SIGTERM and SIGINT end the child as they would any process.
pub fn reset_in_child(mask: &SigSet) {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in HANDLED {
        // SAFETY: restoring the default disposition installs no handler.
        let _ = unsafe { sigaction(signal, &default) };
    }
    let _ = mask.thread_set_mask();
}
