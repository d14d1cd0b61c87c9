//! The parent: accept, fork, reap.  Nothing else.
//!
//! The parent is single-threaded for its whole life, so fork(2) is safe: no
//! lock can be held by a thread that does not exist in the child.  It never
//! reads a byte from a client; each accepted connection goes to a new child,
//! which serves it and exits.  At `max_clients` live children the parent
//! stops accepting, and new connections wait in the kernel's listen queue
//! until a child exits — the way Apache's prefork behaves at MaxRequestWorkers.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::child::{self, Context};
use crate::diag;
use crate::error::Error;
use crate::signals::{self, GOT_SIGCHLD, GOT_SIGTERM};

/// Pause after accept(2) fails for want of descriptors, so a full table
/// does not turn the loop into a busy spin.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

pub fn run(listener: TcpListener, ctx: Context) -> Result<(), Error> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::os("cannot make the listener non-blocking", e))?;
    let wait_mask = signals::install_parent()
        .map_err(|e| Error::os("cannot install signal handlers", e.into()))?;
    let mut children: HashSet<Pid> = HashSet::new();

    loop {
        if signals::take(&GOT_SIGCHLD) {
            reap_children(&mut children);
        }
        if GOT_SIGTERM.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let room = children.len() < ctx.config.max_clients;
        if wait_for_event(&listener, room, wait_mask) {
            accept_client(&listener, &ctx, &mut children, &wait_mask);
        }
    }
    drop(listener);
    stop_children(&mut children);
    Ok(())
}

/// Sleeps until a signal arrives or, when there is room for a child, a
/// client connects.  True when the listener is readable.
fn wait_for_event(listener: &TcpListener, room: bool, mask: SigSet) -> bool {
    let mut fds = Vec::with_capacity(1);
    if room {
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
    }
    match ppoll(&mut fds, None, Some(mask)) {
        Ok(_) => fds.first().and_then(PollFd::any).unwrap_or(false),
        Err(Errno::EINTR) => false,
        Err(e) => {
            diag!("ppoll: {}", e.desc());
            false
        }
    }
}

fn accept_client(
    listener: &TcpListener,
    ctx: &Context,
    children: &mut HashSet<Pid>,
    mask: &SigSet,
) {
    match listener.accept() {
        Ok((stream, peer)) => spawn_child(listener, stream, peer, ctx, children, mask),
        Err(e) => match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => {
                diag!("accept: {}; pausing", crate::error::describe_io(&e));
                std::thread::sleep(FD_EXHAUSTED_PAUSE);
            }
            // EAGAIN: another wake-up took it; ECONNABORTED: the client
            // left before we got to it.  Neither is worth a word.
            _ if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionAborted
            ) => {}
            _ => diag!("accept: {}", crate::error::describe_io(&e)),
        },
    }
}

fn spawn_child(
    listener: &TcpListener,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    children: &mut HashSet<Pid>,
    mask: &SigSet,
) {
    // Anything still buffered would be written twice, once by each process.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: the parent is single-threaded (see the module comment), so
    // the child starts with every lock free and every invariant intact.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            children.insert(child);
        }
        Ok(ForkResult::Child) => {
            // The child never returns here, so the listener's owner never
            // drops it: close the descriptor directly.
            let _ = nix::unistd::close(listener.as_raw_fd());
            child::serve(stream, peer, ctx, mask);
        }
        Err(e) => diag!("fork: {}; dropping connection from {peer}", e.desc()),
    }
    // The parent's copy of the client socket closes here.
}

/// Collects every exited child without blocking.
fn reap_children(children: &mut HashSet<Pid>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(WaitStatus::Exited(pid, code)) => {
                children.remove(&pid);
                if code == child::EXIT_INTERNAL {
                    diag!("child {pid} failed (exit {code})");
                }
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                children.remove(&pid);
                if signal != Signal::SIGTERM && signal != Signal::SIGINT {
                    diag!("child {pid} killed by {signal}");
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                diag!("waitpid: {}", e.desc());
                return;
            }
        }
    }
}

/// Ends every child and waits for all of them.
fn stop_children(children: &mut HashSet<Pid>) {
    for &pid in children.iter() {
        let _ = kill(pid, Signal::SIGTERM);
    }
    while !children.is_empty() {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    children.remove(&pid);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
