//! Signal handling, for the parent and for each child.
//!
//! Handlers only store to atomics, which is async-signal-safe; the work is
//! done by the code that checks them.  A process keeps its signals blocked
//! except inside ppoll(2), which unblocks them atomically while it waits, so
//! none can arrive between a check of the flags and the wait that follows.
//!
//! The parent waits in ppoll on its listener.  A child waits in ppoll on its
//! idle client connection, so SIGTERM stops it between requests and never in
//! the middle of one.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::time::TimeSpec;

/// A child exited (or several did: signals do not queue).
pub static GOT_SIGCHLD: AtomicBool = AtomicBool::new(false);
/// SIGTERM or SIGINT: finish what is in flight, then stop.
pub static GOT_SIGTERM: AtomicBool = AtomicBool::new(false);
/// SIGQUIT: stop at once.
pub static GOT_SIGQUIT: AtomicBool = AtomicBool::new(false);
/// SIGHUP: reload the configuration.
pub static GOT_SIGHUP: AtomicBool = AtomicBool::new(false);
/// SIGUSR1: reopen the log file.
pub static GOT_SIGUSR1: AtomicBool = AtomicBool::new(false);
/// SIGUSR2: upgrade the binary (`models::upgrade`).
pub static GOT_SIGUSR2: AtomicBool = AtomicBool::new(false);

/// The signals the parent handles.
const PARENT_SIGNALS: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// The signals that stop a child, held back while it serves a request.
const CHILD_STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

extern "C" fn on_signal(signo: libc::c_int) {
    let flag = match signo {
        libc::SIGCHLD => &GOT_SIGCHLD,
        libc::SIGQUIT => &GOT_SIGQUIT,
        libc::SIGHUP => &GOT_SIGHUP,
        libc::SIGUSR1 => &GOT_SIGUSR1,
        libc::SIGUSR2 => &GOT_SIGUSR2,
        _ => &GOT_SIGTERM,
    };
    flag.store(true, Ordering::Relaxed);
}

/// Reads and clears a flag.
pub fn take(flag: &AtomicBool) -> bool {
    flag.swap(false, Ordering::Relaxed)
}

pub fn is_set(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    signals.iter().for_each(|&s| set.add(s));
    set
}

fn handle(signal: Signal, flags: SaFlags) -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), flags, SigSet::empty());
    // SAFETY: on_signal only stores to atomics, which is async-signal-safe.
    unsafe { sigaction(signal, &action) }.map(drop)
}

fn set_disposition(signal: Signal, handler: SigHandler) {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL and SIG_IGN install no code of ours.
    let _ = unsafe { sigaction(signal, &action) };
}

/// Installs the parent's handlers and blocks their signals.  Returns the
/// mask to wait with: the mask pibl started with, less the handled signals,
/// which a parent process may have left blocked (a blocked mask survives
/// fork and exec).
pub fn install_parent() -> nix::Result<SigSet> {
    // A file grown past RLIMIT_FSIZE (ulimit -f) raises SIGXFSZ, which
    // would kill the child mid-response.  Ignored, as PostgreSQL's
    // postmaster ignores it, the write fails with EFBIG instead: a cache
    // entry is given up, the response goes on.  Inherited by every child.
    set_disposition(Signal::SIGXFSZ, SigHandler::SigIgn);
    let mut wait_mask = set_of(&PARENT_SIGNALS).thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    for signal in PARENT_SIGNALS {
        wait_mask.remove(signal);
        // No SA_RESTART: a handled signal must end the wait it interrupts.
        let flags = if signal == Signal::SIGCHLD {
            SaFlags::SA_NOCLDSTOP
        } else {
            SaFlags::empty()
        };
        handle(signal, flags)?;
    }
    Ok(wait_mask)
}

/// In a new child: SIGTERM and SIGINT stop it between requests, SIGUSR1
/// asks for the log to be reopened, SIGHUP is the parent's business (a
/// terminal hang-up must not cut a response short), the rest is default.
/// Returns the mask for `wait_idle`.
pub fn install_child(parent_wait_mask: &SigSet) -> SigSet {
    for flag in [
        &GOT_SIGCHLD,
        &GOT_SIGTERM,
        &GOT_SIGQUIT,
        &GOT_SIGHUP,
        &GOT_SIGUSR1,
        &GOT_SIGUSR2,
    ] {
        flag.store(false, Ordering::Relaxed);
    }
    set_disposition(Signal::SIGCHLD, SigHandler::SigDfl);
    // An upgrade is the parent's business.
    set_disposition(Signal::SIGUSR2, SigHandler::SigIgn);
    set_disposition(Signal::SIGQUIT, SigHandler::SigDfl);
    set_disposition(Signal::SIGHUP, SigHandler::SigIgn);
    let _ = handle(Signal::SIGUSR1, SaFlags::SA_RESTART);
    for signal in CHILD_STOP_SIGNALS {
        let _ = handle(signal, SaFlags::empty());
    }
    let mut serving_mask = *parent_wait_mask;
    CHILD_STOP_SIGNALS.iter().for_each(|&s| serving_mask.add(s));
    let _ = serving_mask.thread_set_mask();
    *parent_wait_mask
}

/// In a helper process: every handled signal back to its default action,
/// and the mask pibl started with.
pub fn reset_to_default(parent_wait_mask: &SigSet) {
    for signal in PARENT_SIGNALS {
        set_disposition(signal, SigHandler::SigDfl);
    }
    // An upgrade is the parent's business; sent to the whole group (as
    // `systemctl kill` does by default), it must not end a helper.
    set_disposition(Signal::SIGUSR2, SigHandler::SigIgn);
    let _ = parent_wait_mask.thread_set_mask();
}

/// What ended an idle wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Idle {
    /// The connection has something to read (a request, or its end).
    Ready,
    /// Asked to stop.
    Stop,
    TimedOut,
}

/// How a connection waiting for its next request learns that pibl stops.
#[derive(Clone, Copy)]
pub enum StopWatch {
    /// In a child process: SIGTERM or SIGINT, blocked while it serves and
    /// unblocked (to this mask) only while it waits.
    Signals(SigSet),
    /// In a thread: a pipe that becomes readable when pibl stops (the
    /// process's signals go to its main thread, which sets `GOT_SIGTERM`
    /// and writes to the pipe).
    Pipe(RawFd),
}

/// ppoll(2) on `fds` with the signals of `mask` let in, at most `timeout`
/// (none: for ever).  False when a signal or an error (reported) ended the
/// wait; true when an event or the timeout did.
pub fn wait_events(fds: &mut [PollFd<'_>], timeout: Option<Duration>, mask: SigSet) -> bool {
    match ppoll(fds, timeout.map(TimeSpec::from_duration), Some(mask)) {
        Ok(_) => true,
        Err(Errno::EINTR) => false,
        Err(e) => {
            crate::diag!("ppoll: {}", e.desc());
            false
        }
    }
}

/// Waits for `fd` to be readable (or closed) for at most `timeout`, with
/// signals as they are; false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let wait = Some(TimeSpec::from_duration(timeout));
    loop {
        match ppoll(&mut [PollFd::new(fd, PollFlags::POLLIN)], wait, None) {
            Ok(0) => return false,
            Err(Errno::EINTR) => continue,
            _ => return true, // ready, or an error the read will report
        }
    }
}

/// Between requests: waits for the client to send, for the stop `watch`
/// reports, or for `timeout`.
pub fn wait_idle(fd: BorrowedFd<'_>, timeout: Duration, watch: StopWatch) -> Idle {
    loop {
        if is_set(&GOT_SIGTERM) {
            return Idle::Stop;
        }
        let wait = Some(TimeSpec::from_duration(timeout));
        let result = match watch {
            StopWatch::Signals(mask) => {
                ppoll(&mut [PollFd::new(fd, PollFlags::POLLIN)], wait, Some(mask))
            }
            StopWatch::Pipe(stop) => {
                // SAFETY: the pipe outlives every thread that watches it:
                // the main thread closes it only after joining them all.
                let stop = unsafe { BorrowedFd::borrow_raw(stop) };
                let mut fds = [
                    PollFd::new(fd, PollFlags::POLLIN),
                    PollFd::new(stop, PollFlags::POLLIN),
                ];
                ppoll(&mut fds, wait, None).map(|n| match fds[1].any() {
                    Some(true) => -1,
                    _ => n,
                })
            }
        };
        match result {
            Ok(0) => return Idle::TimedOut,
            Ok(-1) => return Idle::Stop,
            Ok(_) => return Idle::Ready,
            Err(Errno::EINTR) => continue,
            Err(_) => return Idle::Ready, // let the read report it
        }
    }
}

/// Set by the parent once it is told to stop, before it passes the stop on
/// to its children: see `winding_down`.  Mapped once, at start, so that
/// children of every configuration see it.
#[repr(C)]
struct Stopping {
    asked: AtomicBool,
}

// SAFETY: atomics only; zero is "not stopping".
unsafe impl crate::shm::Shareable for Stopping {}

/// The parent's stop, as its children see it.
static STOPPING: OnceLock<&'static Stopping> = OnceLock::new();
/// A prefork worker's own stop: its slot's `retire`, set at a reload.
static RETIRED: OnceLock<&'static AtomicBool> = OnceLock::new();

/// Maps the record of the parent's stop; once, before the first process
/// or thread that serves is started.
pub fn share_stop() -> Result<(), crate::error::Error> {
    let _ = STOPPING.set(crate::shm::map::<Stopping>()?);
    Ok(())
}

/// In the parent, told to stop: says so to every child, before the signal
/// that a serving child keeps blocked until its response is out.
pub fn announce_stop() {
    if let Some(stopping) = STOPPING.get() {
        stopping.asked.store(true, Ordering::SeqCst);
    }
}

/// In a prefork worker: `retire`, once set, winds its connection down.
pub fn watch_retirement(retire: &'static AtomicBool) {
    let _ = RETIRED.set(retire);
}

/// Whether the connection in hand is to end after the response being
/// made: pibl stops, or (prefork) a reload retired this worker.  The
/// response then says `Connection: close`, as HAProxy's do once it is
/// stopping, and the client takes its next request to a new connection;
/// closed without a word after a keep-alive response, the connection might
/// meet that request on its way and leave it unanswered.
pub fn winding_down() -> bool {
    let flag = |f: &AtomicBool| f.load(Ordering::Relaxed);
    is_set(&GOT_SIGTERM)
        || STOPPING.get().is_some_and(|s| flag(&s.asked))
        || RETIRED.get().is_some_and(|r| flag(r))
}
