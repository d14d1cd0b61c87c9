//! The thread model: one thread per client connection inside a single
//! process — the threaded design taught beside the forking one, on the very
//! same connection, relay, balancer, cache and log code.
//!
//! The main thread blocks every handled signal before it starts a thread,
//! so the signals reach it alone, in ppoll(2), as in the parent of the
//! process models.  It takes no part in serving: each connection thread,
//! with a copy of the context (its own cache and log descriptors: flock(2)
//! locks belong to open files, so threads exclude each other as processes
//! do), accepts its connections itself, as a prefork worker does.  A thread
//! whose connection has closed waits for the next as a spare, in epoll(2)
//! on the listening socket, keeping its backend connections, buffers and
//! log file: starting a thread maps and unmaps stacks, and each unmapping
//! of a multi-threaded process interrupts every other CPU to flush its TLB.
//! The listener is in each spare's epoll set with EPOLLEXCLUSIVE, so a
//! connection wakes one spare, not all — and one thread, where a main
//! thread accepting and handing connections over woke two.
//!
//! The spare that takes a connection when no other is left starts the next
//! thread, while fewer than `max_clients` run; beyond that, connections
//! wait in the listen queue for a thread to be free.  A spare ends after
//! waiting a while; when none is left, the main thread polls the listener
//! and starts a thread for the next connection.
//!
//! To stop, the main thread makes a pipe readable: spares end, idle
//! connections close, busy ones finish their request; it waits for the
//! threads, each of which writes a byte to a second pipe as it ends.  A
//! reload makes a new generation (configuration and listener) and retires
//! the old one through a pipe of its own: a thread takes the new
//! generation before its next connection, so a connection accepted after
//! the reload is served with the new configuration, while one kept alive
//! goes on with the configuration it began with.  The health checker and
//! the cache janitor are threads too.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::SigSet;

use crate::error::{Error, describe_io};
use crate::models::listener::{self, Listeners, Port, accept_failed};
use crate::models::supervise::{self, Helper, Reloader, say_full, say_reloaded};
use crate::models::upgrade::Upgrade;
use crate::proxy::Context;
use crate::proxy::connection::Worker;
use crate::signals::{
    self, GOT_SIGCHLD, GOT_SIGHUP, GOT_SIGQUIT, GOT_SIGTERM, GOT_SIGUSR1, GOT_SIGUSR2, StopWatch,
};
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
/// Pause before trying again after a thread could not be started, or a
/// spare could not wait in epoll(2).
const SPARE_RETRY: Duration = Duration::from_secs(1);

/// A client connection and its peer's address.
type Conn = (TcpStream, SocketAddr, Port);

/// A configuration's listener, and how its threads learn that a reload has
/// replaced it.
struct Generation {
    listeners: Listeners,
    /// Made readable, and `retired` set, once a reload replaces it.
    retire: (OwnedFd, OwnedFd),
    retired: AtomicBool,
}

impl Generation {
    fn new(listeners: Listeners) -> Result<Generation, Error> {
        Ok(Generation {
            listeners,
            retire: pipe()?,
            retired: AtomicBool::new(false),
        })
    }

    /// Tells the generation's threads to take the next one.
    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.retire.1, b"x");
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
}

/// What new connections are served with.
struct Current {
    ctx: Context,
    generation: Arc<Generation>,
}

/// What the main thread and the connection threads share.
struct Shared {
    current: Mutex<Current>,
    /// `max_clients` of the current configuration: most connection threads.
    max_threads: AtomicUsize,
    /// Connection threads, serving or spare.
    threads: AtomicUsize,
    /// Spares waiting for a connection, and threads starting as spares.
    idle: AtomicUsize,
    /// Connections being served.
    count: AtomicUsize,
    /// Set, and `stop` made readable, once pibl stops.
    stopping: AtomicBool,
    /// Spares and idle connections poll the read end.
    stop: (OwnedFd, OwnedFd),
    /// Set while the main thread waits for the threads to end.
    awaited: AtomicBool,
    /// Until when no thread is started, after one could not be: each
    /// connection accepted with no spare left would try again, and say so.
    no_start_until: Mutex<Option<Instant>>,
    /// The write end of the pipe the main thread polls.
    done: OwnedFd,
}

impl Shared {
    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread's own copy of the current context, and its generation.
    fn take_current(&self) -> (Context, Arc<Generation>) {
        let current = self.current();
        (current.ctx.for_thread(), Arc::clone(&current.generation))
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether no spare waits where one could be started.
    fn needs_spare(&self) -> bool {
        !self.is_stopping()
            && self.idle.load(Ordering::SeqCst) == 0
            && self.threads.load(Ordering::SeqCst) < self.max_threads.load(Ordering::SeqCst)
    }

    /// Starts a connection thread, a spare from the start, if fewer than
    /// `max_clients` run.  False when one was wanted and could not start.
    fn start_thread(self: &Arc<Self>) -> bool {
        let mut no_start_until = self
            .no_start_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if no_start_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        let max = self.max_threads.load(Ordering::SeqCst);
        let reserved = self
            .threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        if reserved.is_err() {
            say_full("max_clients", max);
            return true;
        }
        self.idle.fetch_add(1, Ordering::SeqCst);
        // Its descriptors are opened here, not in the thread: out of them,
        // the caller learns it and pauses, where a thread failing each
        // time it starts would have the main thread start the next at once.
        let started = ConnThread::new(Arc::clone(self)).and_then(|conn_thread| {
            thread::Builder::new()
                // Named a spare from its first instant: ps(1) and the tests
                // never count it as serving a connection before it does.
                .name(SPARE_THREAD.to_string_lossy().into())
                .stack_size(STACK_SIZE)
                .spawn(move || {
                    // Made first, so dropped last: after the thread's
                    // worker, whose log writes its held lines as it goes.
                    let _exit = ThreadExit(Arc::clone(&conn_thread.shared));
                    conn_thread.run();
                })
        });
        if let Err(e) = started {
            self.idle.fetch_sub(1, Ordering::SeqCst);
            self.threads.fetch_sub(1, Ordering::SeqCst);
            *no_start_until = Some(Instant::now() + SPARE_RETRY);
            diag!(
                "cannot start a connection thread: {}; pausing",
                describe_io(&e)
            );
            return false;
        }
        true
    }

    /// Counts a thread back in as a spare, unless there are spares enough
    /// or pibl stops.
    fn enter_idle(&self) -> bool {
        !self.is_stopping()
            && self
                .idle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < MAX_SPARES).then_some(n + 1)
                })
                .is_ok()
    }

    fn leave_idle(&self) {
        self.idle.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the main thread: to watch the listener, or at shutdown.  Only
    /// then: a wake-up per connection would cost a context switch.
    fn wake_main(&self) {
        // A full pipe is awake enough.
        let _ = nix::unistd::write(&self.done, b"x");
    }

    /// A connection has ended.
    fn end(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        if self.awaited.load(Ordering::SeqCst) {
            self.wake_main();
        }
    }
}

/// Counts a connection thread out as it ends, however it ends, and wakes
/// the main thread if it waits for that or no spare is left.
struct ThreadExit(Arc<Shared>);

impl Drop for ThreadExit {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
        if self.0.awaited.load(Ordering::SeqCst) || self.0.needs_spare() {
            self.0.wake_main();
        }
    }
}

/// A connection thread's own: its copy of the context, what it keeps from
/// one connection to the next, and the epoll set it waits in as a spare.
struct ConnThread {
    shared: Arc<Shared>,
    generation: Arc<Generation>,
    ctx: Context,
    worker: Worker,
    epoll: Epoll,
    /// Whether the thread's name says it is a spare.
    named_spare: bool,
}

impl ConnThread {
    fn new(shared: Arc<Shared>) -> io::Result<ConnThread> {
        let (ctx, generation) = shared.take_current();
        let epoll = spare_epoll(&shared, &generation)?;
        let worker = Worker::open(&ctx)?;
        Ok(ConnThread {
            shared,
            generation,
            ctx,
            worker,
            epoll,
            // As `start_thread` names it.
            named_spare: true,
        })
    }

    /// Takes the generation that replaced this thread's.  The old worker
    /// goes, its backend connections and held log lines with it: the new
    /// configuration may name other backends and another log.
    fn renew(&mut self) -> io::Result<()> {
        let named_spare = self.named_spare;
        *self = ConnThread::new(Arc::clone(&self.shared))?;
        self.named_spare = named_spare;
        self.apply_sched();
        Ok(())
    }

    /// The scheduling policy of this thread's configuration: set in the
    /// thread, not inherited, for the thread that started it may have had
    /// an older one.
    fn apply_sched(&self) {
        crate::sched::apply(self.ctx.config.sched_batch);
    }

    /// Serves connection after connection, until pibl stops, the thread
    /// has been a spare long enough, or a connection's serving panicked
    /// (the hook has said what happened; the worker's state is suspect).
    fn run(mut self) {
        self.apply_sched();
        // Started as a spare, counted as one already.
        let mut next = self.wait_for_client();
        while let Some((stream, peer, port)) = next {
            // Short of descriptors for the new configuration's epoll set
            // and log, the connection in hand is served with the old one
            // rather than dropped unanswered; the thread tries again
            // before its next, and ends if it still cannot.
            if self.generation.is_retired()
                && let Err(e) = self.renew()
            {
                diag!(
                    "connection from {peer} served with the configuration before the reload: {}",
                    describe_io(&e)
                );
            }
            self.shared.count.fetch_add(1, Ordering::SeqCst);
            if self.shared.idle.load(Ordering::SeqCst) == 0 && !self.shared.start_thread() {
                self.shared.wake_main();
            }
            let stop = StopWatch::Pipe(self.shared.stop.0.as_raw_fd());
            let served = panic::catch_unwind(AssertUnwindSafe(|| {
                self.worker.serve(&stream, port, peer, &self.ctx, stop);
            }));
            drop(stream);
            self.shared.end();
            if served.is_err() || !self.shared.enter_idle() {
                return;
            }
            next = self.wait_for_client();
        }
    }

    /// Waits as a spare (counted as one) for a connection; `None` when
    /// the thread should end.  An ending spare keeps a spare's name until
    /// it is gone, with its descriptors.
    fn wait_for_client(&mut self) -> Option<Conn> {
        let conn = self.accept_next();
        self.name(conn.is_none());
        conn
    }

    /// Names the thread in ps(1) a spare or serving.  Only when it
    /// changes, and a thread that takes its next connection without
    /// waiting is not named a spare: two prctl(2) per connection were a
    /// fifth of its system calls.
    fn name(&mut self, spare: bool) {
        if spare != self.named_spare {
            self.named_spare = spare;
            let name = if spare {
                SPARE_THREAD
            } else {
                CONNECTION_THREAD
            };
            let _ = nix::sys::prctl::set_name(name);
        }
    }

    fn accept_next(&mut self) -> Option<Conn> {
        let lifetime = Instant::now() + SPARE_LIFETIME;
        loop {
            if self.shared.is_stopping() {
                self.shared.leave_idle();
                return None;
            }
            if self.generation.is_retired()
                && let Err(e) = self.renew()
            {
                diag!("connection thread ends: {}", describe_io(&e));
                self.shared.leave_idle();
                return None;
            }
            // Once before sleeping: a connection may be waiting already.
            for (listener, port) in self.generation.listeners.each() {
                match listener::accept(listener) {
                    Ok((stream, peer)) => {
                        self.shared.leave_idle();
                        return Some((stream, peer, port));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => accept_failed(&e),
                }
            }
            let due = self.worker.log_due();
            self.name(true);
            if self.sleep(due.map_or(lifetime, |due| due.min(lifetime))) {
                continue;
            }
            let now = Instant::now();
            if due.is_some_and(|due| due <= now) {
                self.worker.flush_log();
            }
            if now >= lifetime {
                self.shared.leave_idle();
                return None;
            }
        }
    }

    /// Sleeps until a client, the stop, a reload or `until`; false when
    /// `until` came first.
    fn sleep(&self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        // In whole milliseconds, rounded up: not woken just before `until`.
        let timeout = EpollTimeout::try_from(left.as_millis() + 1).unwrap_or(EpollTimeout::MAX);
        let mut events = [EpollEvent::empty(); 4];
        match self.epoll.wait(&mut events, timeout) {
            Ok(n) => n > 0,
            // A signal, or a stop and continue (^Z, fg): see signal(7).
            Err(Errno::EINTR) => true,
            Err(e) => {
                diag!("epoll_wait: {}", e.desc());
                thread::sleep(SPARE_RETRY);
                true
            }
        }
    }
}

/// A spare's epoll set: the listeners, each of which wakes one spare per
/// connection (EPOLLEXCLUSIVE), and the stop and retire pipes, which wake
/// them all.
fn spare_epoll(shared: &Shared, generation: &Generation) -> io::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let one = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
    for (listener, port) in generation.listeners.each() {
        let key = if port == Port::Tls { 3 } else { 0 };
        epoll.add(listener, EpollEvent::new(one, key))?;
    }
    epoll.add(&shared.stop.0, EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
    epoll.add(
        &generation.retire.0,
        EpollEvent::new(EpollFlags::EPOLLIN, 2),
    )?;
    Ok(epoll)
}

struct Server {
    shared: Arc<Shared>,
    wait_mask: SigSet,
    /// The read end of `shared.done`.
    done: OwnedFd,
    /// Each helper thread runs while its flag is true.
    helpers: Vec<Arc<AtomicBool>>,
    /// A binary upgrade under way (SIGUSR2).
    upgrade: Upgrade,
}

pub fn run(listeners: Listeners, ctx: Context, reloader: Reloader) -> Result<(), Error> {
    let wait_mask = signals::install_parent()
        .map_err(|e| Error::os("cannot install signal handlers", e.into()))?;
    let (done_read, done_write) = pipe()?;
    arena_per_thread(ctx.config.max_clients);
    supervise::announce(&listeners, &ctx)?;
    let mut server = Server {
        shared: Arc::new(Shared {
            max_threads: AtomicUsize::new(ctx.config.max_clients),
            current: Mutex::new(Current {
                ctx,
                generation: Arc::new(Generation::new(listeners)?),
            }),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop: pipe()?,
            awaited: AtomicBool::new(false),
            no_start_until: Mutex::new(None),
            done: done_write,
        }),
        wait_mask,
        done: done_read,
        helpers: Vec::new(),
        upgrade: Upgrade::default(),
    };
    server.start_helpers();
    while !signals::is_set(&GOT_SIGTERM) && !signals::is_set(&GOT_SIGQUIT) {
        if signals::take(&GOT_SIGHUP) {
            server.reload(&reloader);
        }
        if signals::take(&GOT_SIGUSR1) {
            crate::log::reopen_all();
            notice!("reopening log files");
        }
        let program = reloader.program.as_ref();
        if signals::take(&GOT_SIGCHLD) {
            server.upgrade.reap(program);
        }
        if signals::take(&GOT_SIGUSR2) {
            let current = server.shared.current();
            let listeners = &current.generation.listeners;
            server.upgrade.start(program, listeners, &current.ctx);
        }
        // With no spare, a client is the main thread's to see.
        let listen = server.shared.needs_spare();
        if server.wait(listen, None) && server.shared.needs_spare() && !server.shared.start_thread()
        {
            // The client still waits, the listener stays readable.
            server.wait(false, Some(SPARE_RETRY));
        }
    }
    server.stop();
    Ok(())
}

impl Server {
    /// Sleeps until a signal, a byte from a thread, `timeout`, or (when
    /// `listen`) a client.  True when the listener is readable.
    fn wait(&self, listen: bool, timeout: Option<Duration>) -> bool {
        let generation = listen.then(|| Arc::clone(&self.shared.current().generation));
        let mut fds = vec![PollFd::new(self.done.as_fd(), PollFlags::POLLIN)];
        if let Some(generation) = &generation {
            for (listener, _) in generation.listeners.each() {
                fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            }
        }
        if !signals::wait_events(&mut fds, timeout, self.wait_mask) {
            return false;
        }
        if fds[0].any() == Some(true) {
            drain(&self.done);
        }
        fds[1..].iter().any(|fd| fd.any().unwrap_or(false))
    }

    fn start_helpers(&mut self) {
        let current = self.shared.current();
        for helper in Helper::wanted(&current.ctx) {
            let running = Arc::new(AtomicBool::new(true));
            let flag = Arc::clone(&running);
            let ctx = current.ctx.for_thread();
            let started = thread::Builder::new()
                .name(helper.name().into())
                .spawn(move || helper.run(&ctx, &|| flag.load(Ordering::Relaxed)));
            match started {
                Ok(_) => self.helpers.push(running),
                Err(e) => diag!(
                    "cannot start a thread: {}; no {}",
                    describe_io(&e),
                    helper.name()
                ),
            }
        }
    }

    /// Re-reads the configuration for connections accepted from now on;
    /// those running keep theirs.  An invalid file changes nothing.
    fn reload(&mut self, reloader: &Reloader) {
        let mut current = self.shared.current();
        let old = Arc::clone(&current.generation);
        let mut listeners = match old.listeners.try_clone() {
            Ok(listeners) => listeners,
            Err(e) => {
                diag!(
                    "reload refused, configuration unchanged: cannot duplicate the listener: {}",
                    describe_io(&e)
                );
                return;
            }
        };
        let Some((ctx, moved_from)) =
            supervise::reload_context(reloader, &current.ctx, &mut listeners)
        else {
            return; // said why
        };
        let generation = match Generation::new(listeners) {
            Ok(generation) => generation,
            Err(e) => {
                diag!("reload refused, configuration unchanged: {e}");
                return;
            }
        };
        self.shared
            .max_threads
            .store(ctx.config.max_clients, Ordering::SeqCst);
        *current = Current {
            ctx,
            generation: Arc::new(generation),
        };
        // A listener left for another address (`moved_from` is a copy of
        // the old generation's) stops listening at once, as the process
        // models close theirs, though busy threads still hold it: a client
        // is refused, not left in a queue no one reads.
        for old_listener in &moved_from {
            listener::stop_listening(old_listener);
        }
        old.retire();
        say_reloaded(&current.generation.listeners, &current.ctx);
        drop(current);
        for running in self.helpers.drain(..) {
            running.store(false, Ordering::Relaxed);
        }
        self.start_helpers();
    }

    /// Stops accepting, tells idle connections to close, and waits for
    /// busy ones at most `shutdown_timeout` (none at all after SIGQUIT).
    fn stop(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Threads still serving hold the listener open.  Before they are
        // told: a connection answered with `Connection: close` is not to
        // find its client's next one queued.
        // Not when a new binary serves on them too (an upgrade).
        if !self.upgrade.handed_over() {
            self.shared.current().generation.listeners.stop_listening();
        }
        let _ = nix::unistd::write(&self.shared.stop.1, b"x");
        let timeout = if signals::is_set(&GOT_SIGQUIT) {
            Duration::ZERO
        } else {
            self.shared.current().ctx.config.shutdown_timeout
        };
        supervise::say_stopping(timeout);
        let deadline = Instant::now() + timeout;
        self.shared.awaited.store(true, Ordering::SeqCst);
        // Every connection thread, not only every connection: a thread
        // writes its held log lines as it ends.
        while self.shared.threads.load(Ordering::SeqCst) > 0 && !signals::is_set(&GOT_SIGQUIT) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                diag!(
                    "{} connections still busy after shutdown_timeout; closing them",
                    self.shared.count.load(Ordering::SeqCst)
                );
                break;
            }
            self.wait(false, Some(left));
        }
        // Returning ends the process, and with it any thread still running.
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| Error::os("cannot make a pipe", e.into()))
}

/// Lets glibc's malloc give every connection thread an arena of its own.
/// By default it makes at most eight per CPU and shares them out, each
/// behind a lock: fifty threads on two CPUs then queue for sixteen locks on
/// every allocation above the per-thread cache's sizes, and the waits are
/// context switches (docs/performance.md).  An arena is
/// address space reserved, not memory: only the pages used are resident.
fn arena_per_thread(max_clients: usize) {
    crate::sys::set_malloc_arenas(max_clients.saturating_add(8));
}

/// Empties a non-blocking pipe.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}
