//! The one place pibl forks: a child for a connection, a prefork worker,
//! a helper.  What every new process needs is done here once; what it
//! then runs sets up its own signals.
//!
//! Forking is safe because the parent is single-threaded for its whole
//! life (see `parent`): no lock can be held by a thread that does not
//! exist in the child.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use crate::models::listener::Listeners;

/// How to start a process.
#[derive(Default)]
pub struct Spawn<'a> {
    /// A listener the new process must not keep open: one that never
    /// accepts (a connection's child, a helper) would otherwise hold the
    /// port after pibl stops listening.
    pub close: Option<&'a Listeners>,
    /// Held until the parent has forked a whole batch (`ForkGate`).
    pub gate: Option<&'a ForkGate>,
    /// The process has no purpose without its parent: the kernel sends it
    /// SIGTERM when the parent dies, even by SIGKILL, and it exits at once
    /// if the parent died before that was set.
    pub dies_with_parent: bool,
}

/// Forks a process that runs `run`, and returns the child's pid in the
/// parent.  `run` is meant never to return (each caller's ends in an
/// exit); should one return, the process exits there, so that a child
/// never falls back into its parent's loop.
///
/// The standard streams are flushed first: anything still buffered would
/// be written twice, once by each process.
pub fn spawn(how: &Spawn<'_>, run: impl FnOnce()) -> nix::Result<Pid> {
    flush_std();
    let parent = std::process::id();
    // SAFETY: the parent is single-threaded (module comment), so the child
    // starts with every lock free and every invariant intact.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            // The child never returns to the frames that own these, so it
            // closes the descriptors directly.
            if let Some(listeners) = how.close {
                for (listener, _) in listeners.each() {
                    let _ = nix::unistd::close(listener.as_raw_fd());
                }
            }
            if let Some(gate) = how.gate {
                gate.wait();
            }
            if how.dies_with_parent {
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(0);
                }
            }
            run();
            std::process::exit(0)
        }
    }
}

/// Empties the standard streams' buffers, before a fork or an exit.
pub fn flush_std() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

/// Names this process (its comm, 15 bytes at most) for ps(1) and top(1).
pub fn set_process_name(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Holds a batch of new children (workers, in the prefork model) until the
/// parent has forked them all.  A new process is run at once, before the
/// one that forked it, so without it a parent forking fifty children on a
/// busy machine is put aside after each fork — the child serves its first
/// request meanwhile — and needs tens of milliseconds for the batch, while
/// the last connections wait; gated, each child only blocks.
pub struct ForkGate {
    read: OwnedFd,
    write: OwnedFd,
}

impl ForkGate {
    pub fn new() -> Option<ForkGate> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        Some(ForkGate { read, write })
    }

    /// In a new child: returns once the parent has dropped the gate (and
    /// every child of the batch has closed its copy of the write end).  The
    /// child never returns to the frame that owns the gate, so it closes
    /// the descriptors directly.
    fn wait(&self) {
        let _ = nix::unistd::close(self.write.as_raw_fd());
        let mut byte = [0u8];
        while let Err(Errno::EINTR) = nix::unistd::read(&self.read, &mut byte) {}
        let _ = nix::unistd::close(self.read.as_raw_fd());
    }
}
