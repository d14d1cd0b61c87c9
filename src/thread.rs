//! The thread model: one thread per client connection inside a single
//! process — the threaded design taught beside the forking one, on the very
//! same connection, relay, balancer, cache and log code.
//!
//! The main thread blocks every handled signal before it starts a thread,
//! so the signals reach it alone, in ppoll(2), as in the parent of the
//! process models.  It accepts, and starts a thread per connection with a
//! copy of the context (its own cache and log descriptors: flock(2) locks
//! belong to open files, so threads exclude each other as processes do).
//! Each thread writes a byte to a pipe as it ends, which wakes the main
//! thread when it waits for room under `max_clients` or for the last
//! connection at shutdown.  To stop, the main thread makes a second pipe
//! readable: idle connections see it, busy ones finish their request.
//! The health checker and the cache janitor are threads too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::SigSet;

use crate::connection::Worker;
use crate::error::Error;
use crate::log::LOG_GENERATION;
use crate::parent::{Helper, Reloader, accept_failed};
use crate::relay::Context;
use crate::signals::{self, GOT_SIGHUP, GOT_SIGQUIT, GOT_SIGTERM, GOT_SIGUSR1, StopWatch};
use crate::{diag, notice};

/// Stack of a connection thread: the relay keeps its buffers on the heap,
/// so a small stack does (and 50 threads then map 50 × 256 KiB, not 2 MiB
/// each).
const STACK_SIZE: usize = 256 * 1024;
/// A connection thread's name in ps(1) and top(1).
const CONNECTION_THREAD: &str = "pibl conn";

struct Server {
    listener: TcpListener,
    ctx: Context,
    wait_mask: SigSet,
    /// Connection threads running.
    live: Arc<AtomicUsize>,
    /// Written to by each thread as it ends.
    done: (OwnedFd, Arc<OwnedFd>),
    /// Readable once pibl stops: the read end every idle connection polls.
    stop: (OwnedFd, OwnedFd),
    /// Each helper thread runs while its flag is true.
    helpers: Vec<Arc<AtomicBool>>,
}

pub fn run(listener: TcpListener, ctx: Context, reloader: Reloader) -> Result<(), Error> {
    let wait_mask = signals::install_parent()
        .map_err(|e| Error::os("cannot install signal handlers", e.into()))?;
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::os("cannot make a pipe", e.into()))
    };
    let (done_read, done_write) = pipe()?;
    let mut server = Server {
        listener,
        ctx,
        wait_mask,
        live: Arc::new(AtomicUsize::new(0)),
        done: (done_read, Arc::new(done_write)),
        stop: pipe()?,
        helpers: Vec::new(),
    };
    server.start_helpers();
    let bound = server
        .listener
        .local_addr()
        .map_err(|e| Error::os("cannot read the listening address", e))?;
    notice!(
        "listening on {bound}, {} backends, thread model",
        server.ctx.config.backends.len()
    );
    while !signals::is_set(&GOT_SIGTERM) && !signals::is_set(&GOT_SIGQUIT) {
        if signals::take(&GOT_SIGHUP) {
            server.reload(&reloader);
        }
        if signals::take(&GOT_SIGUSR1) {
            LOG_GENERATION.fetch_add(1, Ordering::Relaxed);
            notice!("reopening log files");
        }
        let room = server.live.load(Ordering::Relaxed) < server.ctx.config.max_clients;
        if server.wait(room, None) {
            server.accept_client();
        }
    }
    server.stop();
    Ok(())
}

impl Server {
    /// Sleeps until a signal, a thread's end, `timeout`, or (when
    /// `listen`) a client.  True when the listener is readable.
    fn wait(&self, listen: bool, timeout: Option<Duration>) -> bool {
        let mut fds = vec![PollFd::new(self.done.0.as_fd(), PollFlags::POLLIN)];
        if listen {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        if !signals::wait_events(&mut fds, timeout, self.wait_mask) {
            return false;
        }
        if fds[0].any() == Some(true) {
            drain(&self.done.0);
        }
        fds.get(1).and_then(PollFd::any).unwrap_or(false)
    }

    fn accept_client(&mut self) {
        match self.listener.accept() {
            Ok((stream, peer)) => self.spawn(stream, peer),
            Err(e) => accept_failed(&e),
        }
    }

    fn spawn(&mut self, stream: TcpStream, peer: SocketAddr) {
        // accept(2) does not pass the listener's O_NONBLOCK on; the
        // connection blocks, with timeouts, as in a child process.
        let ctx = self.ctx.for_thread();
        let stop = StopWatch::Pipe(self.stop.0.as_raw_fd());
        let ending = Ending {
            live: Arc::clone(&self.live),
            done: Arc::clone(&self.done.1),
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        let started = thread::Builder::new()
            .name(CONNECTION_THREAD.into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let _ending = ending;
                let served = panic::catch_unwind(AssertUnwindSafe(|| {
                    Worker::new(&ctx).serve(&stream, peer, &ctx, stop);
                }));
                // The panic hook has said what happened; the connection
                // closes, and the others go on.
                drop(served);
            });
        if let Err(e) = started {
            // The closure, with its Ending, was dropped: `live` is right.
            diag!(
                "cannot start a thread: {}; dropping connection from {peer}",
                crate::error::describe_io(&e)
            );
        }
    }

    fn start_helpers(&mut self) {
        let mut wanted = Vec::new();
        if self.ctx.config.health.check.is_some() {
            wanted.push(Helper::HealthChecker);
        }
        if self.ctx.cache.is_some() {
            wanted.push(Helper::CacheJanitor);
        }
        for helper in wanted {
            let running = Arc::new(AtomicBool::new(true));
            let flag = Arc::clone(&running);
            let ctx = self.ctx.for_thread();
            let started = thread::Builder::new()
                .name(helper.name().into())
                .spawn(move || helper.run(&ctx, &|| flag.load(Ordering::Relaxed)));
            match started {
                Ok(_) => self.helpers.push(running),
                Err(e) => diag!(
                    "cannot start a thread: {}; no {}",
                    crate::error::describe_io(&e),
                    helper.name()
                ),
            }
        }
    }

    /// Re-reads the configuration for connections accepted from now on;
    /// those running keep theirs.  An invalid file changes nothing.
    fn reload(&mut self, reloader: &Reloader) {
        let Some(ctx) = crate::parent::reload_context(reloader, &self.ctx, &mut self.listener)
        else {
            return;
        };
        self.ctx = ctx;
        for running in self.helpers.drain(..) {
            running.store(false, Ordering::Relaxed);
        }
        self.start_helpers();
    }

    /// Stops accepting, tells idle connections to close, and waits for
    /// busy ones at most `shutdown_timeout` (none at all after SIGQUIT).
    fn stop(self) {
        let _ = nix::unistd::write(&self.stop.1, b"x");
        let timeout = if signals::is_set(&GOT_SIGQUIT) {
            Duration::ZERO
        } else {
            self.ctx.config.shutdown_timeout
        };
        let deadline = Instant::now() + timeout;
        while self.live.load(Ordering::Relaxed) > 0 && !signals::is_set(&GOT_SIGQUIT) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                diag!(
                    "{} connections still busy after shutdown_timeout; closing them",
                    self.live.load(Ordering::Relaxed)
                );
                break;
            }
            self.wait(false, Some(left));
        }
        // Returning ends the process, and with it any thread still running.
    }
}

/// Dropped when a connection thread ends, however it ends.
struct Ending {
    live: Arc<AtomicUsize>,
    done: Arc<OwnedFd>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        // A full pipe is awake enough.
        let _ = nix::unistd::write(&*self.done, b"x");
    }
}

/// Empties a non-blocking pipe.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}
