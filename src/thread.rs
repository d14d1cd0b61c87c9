//! The thread model: one thread per client connection inside a single
//! process — the threaded design taught beside the forking one, on the very
//! same connection, relay, balancer, cache and log code.
//!
//! The main thread blocks every handled signal before it starts a thread,
//! so the signals reach it alone, in ppoll(2), as in the parent of the
//! process models.  It accepts, and gives each connection a thread of its
//! own, with a copy of the context (its own cache and log descriptors:
//! flock(2) locks belong to open files, so threads exclude each other as
//! processes do).  A thread whose connection has closed waits a while as a
//! spare for the next one, as in Apache's worker MPM, keeping its backend
//! connections, buffers and log file: starting a thread maps and unmaps
//! stacks, and each unmapping of a multi-threaded process interrupts every
//! other CPU to flush its TLB.  A connection that finds no spare gets a
//! new thread.
//!
//! Each connection's end writes a byte to a pipe, which wakes the main
//! thread when it waits for room under `max_clients` or for the last
//! connection at shutdown.  To stop, the main thread makes a second pipe
//! readable: idle connections see it, busy ones finish their request; and
//! it wakes the spares, which end.  A reload ends the spares too: a
//! connection accepted after it is served with the new configuration.
//! The health checker and the cache janitor are threads too.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
/// A connection thread's name in ps(1) and top(1), serving and spare.
const CONNECTION_THREAD: &std::ffi::CStr = c"pibl conn";
const SPARE_THREAD: &std::ffi::CStr = c"pibl spare";
/// Most spare threads kept waiting for a connection.
const MAX_SPARES: usize = 64;
/// How long a spare waits for a connection before it ends.
const SPARE_LIFETIME: Duration = Duration::from_secs(5);

/// A client connection and its peer's address.
type Conn = (TcpStream, SocketAddr);

/// What a spare thread is to do next.
enum Spare {
    Serve(Conn),
    /// Write its held log lines, then wait again.
    Flush,
    End,
}

/// Threads waiting for their next connection.
struct Spares {
    state: Mutex<SpareState>,
    wake: Condvar,
}

struct SpareState {
    /// Spares waiting and not yet promised a connection.
    idle: usize,
    /// Connections promised to spares, not yet taken.
    handed: VecDeque<Conn>,
    /// Bumped at each reload: spares of an older generation end.
    generation: u64,
    stopping: bool,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `conn` to a waiting spare; gives it back if there is none.
    fn hand(&self, conn: Conn) -> Option<Conn> {
        let mut state = self.lock();
        if state.idle == 0 {
            return Some(conn);
        }
        state.idle -= 1;
        state.handed.push_back(conn);
        drop(state);
        self.wake.notify_one();
        None
    }

    /// Waits, as a spare of `generation`, for the next connection, or
    /// until `flush` (when the thread's held log lines are due).
    fn next(&self, generation: u64, flush: Option<Instant>) -> Spare {
        let mut state = self.lock();
        if state.generation != generation || state.stopping || state.idle >= MAX_SPARES {
            return Spare::End;
        }
        state.idle += 1;
        let lifetime = Instant::now() + SPARE_LIFETIME;
        let deadline = flush.map_or(lifetime, |f| f.min(lifetime));
        loop {
            // The generation first: a connection handed out after a
            // reload is for a spare of the new one.
            if state.generation != generation {
                return Spare::End;
            }
            if let Some(conn) = state.handed.pop_front() {
                return Spare::Serve(conn);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.stopping || left.is_zero() {
                state.idle -= 1;
                // Woken before its lifetime was up: by the log, not for good.
                return if !state.stopping && deadline < lifetime {
                    Spare::Flush
                } else {
                    Spare::End
                };
            }
            state = self
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A new generation: the waiting spares end, and connections handed to
    /// them and not yet taken are given back.
    fn renew(&self) -> Vec<Conn> {
        let mut state = self.lock();
        state.generation += 1;
        state.idle = 0;
        let handed = state.handed.drain(..).collect();
        drop(state);
        self.wake.notify_all();
        handed
    }

    fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }
}

struct Server {
    listener: TcpListener,
    ctx: Context,
    wait_mask: SigSet,
    live: Arc<Live>,
    spares: Arc<Spares>,
    /// The read end of `live.done`.
    done: OwnedFd,
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
    arena_per_thread(ctx.config.max_clients);
    let mut server = Server {
        listener,
        ctx,
        wait_mask,
        live: Arc::new(Live {
            count: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            awaited: AtomicBool::new(false),
            done: done_write,
        }),
        spares: Arc::new(Spares {
            state: Mutex::new(SpareState {
                idle: 0,
                handed: VecDeque::new(),
                generation: 0,
                stopping: false,
            }),
            wake: Condvar::new(),
        }),
        done: done_read,
        stop: pipe()?,
        helpers: Vec::new(),
    };
    server.start_helpers();
    crate::parent::announce(&server.listener, &server.ctx)?;
    while !signals::is_set(&GOT_SIGTERM) && !signals::is_set(&GOT_SIGQUIT) {
        if signals::take(&GOT_SIGHUP) {
            server.reload(&reloader);
        }
        if signals::take(&GOT_SIGUSR1) {
            LOG_GENERATION.fetch_add(1, Ordering::Relaxed);
            notice!("reopening log files");
        }
        let room = server.live.has_room(server.ctx.config.max_clients);
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
        let mut fds = vec![PollFd::new(self.done.as_fd(), PollFlags::POLLIN)];
        if listen {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        if !signals::wait_events(&mut fds, timeout, self.wait_mask) {
            return false;
        }
        if fds[0].any() == Some(true) {
            drain(&self.done);
        }
        fds.get(1).and_then(PollFd::any).unwrap_or(false)
    }

    fn accept_client(&mut self) {
        match self.listener.accept() {
            Ok(conn) => {
                self.live.count.fetch_add(1, Ordering::SeqCst);
                if let Some(conn) = self.spares.hand(conn) {
                    self.spawn(conn);
                }
            }
            Err(e) => accept_failed(&e),
        }
    }

    /// Starts a thread for `first`, which then serves connections until it
    /// has waited as a spare long enough.  `live` counts `first` already.
    fn spawn(&mut self, first: Conn) {
        // accept(2) does not pass the listener's O_NONBLOCK on; the
        // connection blocks, with timeouts, as in a child process.
        let ctx = self.ctx.for_thread();
        let stop = StopWatch::Pipe(self.stop.0.as_raw_fd());
        let spares = Arc::clone(&self.spares);
        let generation = spares.lock().generation;
        let live = Arc::clone(&self.live);
        let peer = first.1;
        self.live.threads.fetch_add(1, Ordering::SeqCst);
        let started = thread::Builder::new()
            .name(CONNECTION_THREAD.to_string_lossy().into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                // Declared first, so dropped last: after the worker, whose
                // log writes its held lines as it goes.
                let _exit = ThreadExit(Arc::clone(&live));
                let mut worker = Worker::new(&ctx);
                let mut next = Some(first);
                while let Some((stream, peer)) = next.take() {
                    let served = panic::catch_unwind(AssertUnwindSafe(|| {
                        worker.serve(&stream, peer, &ctx, stop);
                    }));
                    drop(stream);
                    live.end();
                    // After a panic (the hook has said what happened) the
                    // worker's state is suspect: the thread ends with it.
                    if served.is_ok() {
                        next = wait_as_spare(&spares, generation, &mut worker);
                    }
                }
            });
        if let Err(e) = started {
            // The closure was dropped unrun: the connection is not served.
            self.live.count.fetch_sub(1, Ordering::SeqCst);
            self.live.threads.fetch_sub(1, Ordering::SeqCst);
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
        for conn in self.spares.renew() {
            self.spawn(conn);
        }
        for running in self.helpers.drain(..) {
            running.store(false, Ordering::Relaxed);
        }
        self.start_helpers();
    }

    /// Stops accepting, tells idle connections to close, and waits for
    /// busy ones at most `shutdown_timeout` (none at all after SIGQUIT).
    fn stop(self) {
        let _ = nix::unistd::write(&self.stop.1, b"x");
        self.spares.stop();
        let timeout = if signals::is_set(&GOT_SIGQUIT) {
            Duration::ZERO
        } else {
            self.ctx.config.shutdown_timeout
        };
        let deadline = Instant::now() + timeout;
        self.live.awaited.store(true, Ordering::SeqCst);
        // Every connection thread, not only every connection: a thread
        // writes its held log lines as it ends.
        while self.live.threads.load(Ordering::SeqCst) > 0 && !signals::is_set(&GOT_SIGQUIT) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                diag!(
                    "{} connections still busy after shutdown_timeout; closing them",
                    self.live.count.load(Ordering::SeqCst)
                );
                break;
            }
            self.wait(false, Some(left));
        }
        // Returning ends the process, and with it any thread still running.
    }
}

/// The connections being served, and how the main thread learns that one
/// ended when it waits for that: for room under `max_clients`, or for the
/// last connection at shutdown.  Only then does an end write to the pipe:
/// a wake-up of the main thread per connection would cost a context switch.
struct Live {
    count: AtomicUsize,
    /// Connection threads, serving or spare.
    threads: AtomicUsize,
    /// Set while the main thread waits for an end.
    awaited: AtomicBool,
    /// The write end of the pipe the main thread polls.
    done: OwnedFd,
}

impl Live {
    /// Whether another connection may be served now.  When not, ends are
    /// awaited from now on, and one that came between the check and the
    /// flag is seen by the check after it.
    fn has_room(&self, max: usize) -> bool {
        self.awaited.store(true, Ordering::SeqCst);
        let room = self.count.load(Ordering::SeqCst) < max;
        if room {
            self.awaited.store(false, Ordering::SeqCst);
        }
        room
    }

    /// A connection has ended.
    fn end(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.tell();
    }

    /// Wakes the main thread if it waits for an end.
    fn tell(&self) {
        if self.awaited.load(Ordering::SeqCst) {
            // A full pipe is awake enough.
            let _ = nix::unistd::write(&self.done, b"x");
        }
    }
}

/// Counts a connection thread out as it ends, however it ends.
struct ThreadExit(Arc<Live>);

impl Drop for ThreadExit {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
        self.0.tell();
    }
}

/// A thread's wait, named so in ps(1), for its next connection; `None` when
/// it should end.  Held log lines are written when they fall due.
fn wait_as_spare(spares: &Spares, generation: u64, worker: &mut Worker) -> Option<Conn> {
    let _ = nix::sys::prctl::set_name(SPARE_THREAD);
    let next = loop {
        match spares.next(generation, worker.log_due()) {
            Spare::Serve(conn) => break Some(conn),
            Spare::Flush => worker.flush_log(),
            Spare::End => break None,
        }
    };
    let _ = nix::sys::prctl::set_name(CONNECTION_THREAD);
    next
}

/// Lets glibc's malloc give every connection thread an arena of its own.
/// By default it makes at most eight per CPU and shares them out, each
/// behind a lock: fifty threads on two CPUs then queue for sixteen locks on
/// every allocation above the per-thread cache's sizes, and the waits are
/// context switches (a cache hit was 40% slower for it).  An arena is
/// address space reserved, not memory: only the pages used are resident.
fn arena_per_thread(max_clients: usize) {
    #[cfg(target_env = "gnu")]
    {
        let arenas = i32::try_from(max_clients.saturating_add(8)).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes two integers and changes a malloc setting.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = max_clients;
}

/// Empties a non-blocking pipe.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}
