//! The parent of the process models: accept and fork (fork model) or keep
//! a pool of workers (prefork model, see prefork.rs), reap, and answer
//! signals.  Nothing else.
//!
//! The parent is single-threaded for its whole life, so fork(2) is safe: no
//! lock can be held by a thread that does not exist in the child.  It never
//! reads a byte from a client; each accepted connection goes to a new child,
//! which serves it and exits.  At `max_clients` live children the parent
//! stops accepting, and new connections wait in the kernel's listen queue
//! until a child exits — the way Apache's prefork behaves at MaxRequestWorkers.
//!
//! Signals: SIGCHLD reaps; SIGHUP reloads pibl.conf for connections accepted
//! from then on; SIGUSR1 has every child reopen the log file; SIGTERM and
//! SIGINT stop gracefully (children finish the request in flight, for at
//! most `shutdown_timeout`); SIGQUIT stops at once.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::child;
use crate::config::{Config, Model, Overrides};
use crate::error::Error;
use crate::prefork::Prefork;
use crate::relay::Context;
use crate::signals::{self, GOT_SIGCHLD, GOT_SIGHUP, GOT_SIGQUIT, GOT_SIGTERM, GOT_SIGUSR1};
use crate::{diag, notice};

/// Pause after accept(2) fails for want of descriptors, so a full table
/// does not turn the loop into a busy spin.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted, and children forked behind one gate, per
/// wake-up of the fork model's parent.
const MAX_BATCH: usize = 64;
/// Fewest connections waiting that make a burst, accepted together.  Fewer
/// are taken one per wake-up, as they come: for them the parent's next
/// fork is not long in coming, and a gate would cost each child a wake-up.
const GATE_FROM: usize = 8;

/// What a reload needs to build a new context.
pub struct Reloader {
    pub path: String,
    pub overrides: Overrides,
}

/// The parent's state: the listener, the context children are forked
/// with, and the live children.
struct Parent {
    listener: TcpListener,
    ctx: Context,
    children: HashSet<Pid>,
    /// The helper processes: health checker, cache janitor.
    helpers: Vec<(Helper, Pid)>,
    /// The worker pool, in the prefork model.
    prefork: Option<Prefork>,
    wait_mask: SigSet,
}

/// Says where pibl listens.  Said only once every signal has its handler
/// and the helpers run, so whoever waits for this line may act on it at
/// once.
pub fn announce(listener: &TcpListener, ctx: &Context) -> Result<(), Error> {
    let bound = listener
        .local_addr()
        .map_err(|e| Error::os("cannot read the listening address", e))?;
    notice!(
        "listening on {bound}, {}, {} model",
        backend_count(ctx),
        ctx.config.model.name()
    );
    Ok(())
}

/// "1 backend", "3 backends".
fn backend_count(ctx: &Context) -> String {
    match ctx.config.backends.len() {
        1 => "1 backend".into(),
        n => format!("{n} backends"),
    }
}

/// Empties the standard streams' buffers before a fork: anything still
/// buffered would be written twice, once by each process.
pub fn flush_std() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

pub fn run(listener: TcpListener, ctx: Context, reloader: Reloader) -> Result<(), Error> {
    set_inherited_options(&listener, &ctx.config)?;
    if ctx.config.model == Model::Thread {
        return crate::thread::run(listener, ctx, reloader);
    }
    let wait_mask = signals::install_parent()
        .map_err(|e| Error::os("cannot install signal handlers", e.into()))?;
    let prefork = match ctx.config.model {
        Model::Prefork => Some(Prefork::new()?),
        _ => None,
    };
    let mut parent = Parent {
        listener,
        ctx,
        children: HashSet::new(),
        helpers: Vec::new(),
        prefork,
        wait_mask,
    };
    parent.start_helpers();
    announce(&parent.listener, &parent.ctx)?;

    loop {
        if signals::take(&GOT_SIGCHLD) {
            parent.reap();
        }
        if stopping() {
            break;
        }
        if signals::take(&GOT_SIGHUP) {
            parent.reload(&reloader);
        }
        if signals::take(&GOT_SIGUSR1) {
            // Children open the log by name when they start; those already
            // running are told to open it again.
            signal_all(&parent.children, Signal::SIGUSR1);
            if let Some(pool) = &parent.prefork {
                signal_all(&pool.pids().collect(), Signal::SIGUSR1);
            }
            notice!("reopening log files");
        }
        if let Some(pool) = &mut parent.prefork {
            let next = pool.maintain(&parent.listener, &parent.ctx, &parent.wait_mask);
            parent.wait_for_event(next.on_connection, Some(next.after));
            continue;
        }
        let room = parent.children.len() < parent.ctx.config.max_clients;
        if parent.wait_for_event(room, None) {
            parent.accept_clients();
        }
    }
    let Parent {
        listener,
        ctx,
        mut children,
        helpers,
        prefork,
        wait_mask,
    } = parent;
    children.extend(helpers.iter().map(|&(_, pid)| pid));
    children.extend(prefork.iter().flat_map(|pool| pool.pids()));
    let timeout = if signals::is_set(&GOT_SIGQUIT) {
        Duration::ZERO
    } else {
        ctx.config.shutdown_timeout
    };
    stop_children(&mut children, listener, timeout, &wait_mask);
    Ok(())
}

impl Parent {
    /// Sleeps until a signal arrives, `timeout` passes, or (when `listen`)
    /// a client connects.  True when the listener is readable.
    fn wait_for_event(&self, listen: bool, timeout: Option<Duration>) -> bool {
        let mut fds = Vec::with_capacity(1);
        if listen {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        signals::wait_events(&mut fds, timeout, self.wait_mask)
            && fds.first().and_then(PollFd::any).unwrap_or(false)
    }

    /// Accepts a connection and forks its child — or, when a burst has
    /// filled the accept queue, every connection in it, their children
    /// gated, so that the last is not kept waiting behind the first ones'
    /// requests.
    fn accept_clients(&mut self) {
        let room = self
            .ctx
            .config
            .max_clients
            .saturating_sub(self.children.len());
        let waiting = waiting_connections(&self.listener);
        let burst = waiting >= GATE_FROM;
        let batch = if burst {
            waiting.min(MAX_BATCH).min(room.max(1))
        } else {
            1
        };
        let gate = if burst { ForkGate::new() } else { None };
        for _ in 0..batch {
            match self.listener.accept() {
                Ok((stream, peer)) => self.spawn_child(stream, peer, gate.as_ref()),
                Err(e) => {
                    accept_failed(&e);
                    break;
                }
            }
        }
    }

    fn spawn_child(&mut self, stream: TcpStream, peer: SocketAddr, gate: Option<&ForkGate>) {
        flush_std();
        // SAFETY: the parent is single-threaded (see the module comment), so
        // the child starts with every lock free and every invariant intact.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                self.children.insert(child);
                if self.children.len() == self.ctx.config.max_clients {
                    say_full("max_clients", self.ctx.config.max_clients);
                }
            }
            Ok(ForkResult::Child) => {
                // The child never returns here, so the listener's owner never
                // drops it: close the descriptor directly.
                let _ = nix::unistd::close(self.listener.as_raw_fd());
                if let Some(gate) = gate {
                    gate.wait();
                }
                child::serve(stream, peer, &self.ctx, &self.wait_mask);
            }
            Err(e) => diag!("fork: {}; dropping connection from {peer}", e.desc()),
        }
        // The parent's copy of the client socket closes here.
    }

    /// Forks the helpers the configuration asks for.
    fn start_helpers(&mut self) {
        if self.ctx.config.health.check.is_some() {
            self.start_helper(Helper::HealthChecker);
        }
        if self.ctx.cache.is_some() {
            self.start_helper(Helper::CacheJanitor);
        }
    }

    fn start_helper(&mut self, helper: Helper) {
        flush_std();
        let parent = std::process::id();
        // SAFETY: as in spawn_child: the parent is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => self.helpers.push((helper, child)),
            Ok(ForkResult::Child) => {
                let _ = nix::unistd::close(self.listener.as_raw_fd());
                signals::reset_to_default(&self.wait_mask);
                // A helper has no purpose without its parent: the kernel
                // ends it if the parent dies, even by SIGKILL (and the
                // check covers a parent that died before the call).
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(0);
                }
                // What ps(1) and top(1) show, as nginx's "cache manager".
                set_process_name(helper.name());
                helper.run(&self.ctx, &|| true);
                std::process::exit(0)
            }
            Err(e) => diag!("fork: {}; no {}", e.desc(), helper.name()),
        }
    }

    fn stop_helpers(&mut self) {
        for (_, pid) in self.helpers.drain(..) {
            let _ = kill(pid, Signal::SIGTERM);
            let _ = waitpid(pid, None);
        }
    }

    /// Re-reads the configuration.  Children already running keep the one
    /// they were forked with; an invalid file changes nothing.
    fn reload(&mut self, reloader: &Reloader) {
        let Some((ctx, moved_from)) = reload_context(reloader, &self.ctx, &mut self.listener)
        else {
            return;
        };
        self.ctx = ctx;
        if let Some(pool) = &mut self.prefork {
            pool.retire_all();
        }
        // Prefork workers still serving hold the old listener: it stops
        // listening for them all, once they know not to accept again.
        if let Some(old) = moved_from {
            crate::connection::stop_listening(&old);
        }
        say_reloaded(&self.listener, &self.ctx);
        self.stop_helpers();
        self.start_helpers();
    }

    /// Collects every exited child without blocking: a helper is started
    /// again, unless pibl is stopping (a service manager signals every
    /// process of pibl at once), a worker's slot freed.
    fn reap(&mut self) {
        let stopping = stopping();
        for (pid, status) in reap_children() {
            if let Some(at) = self.helpers.iter().position(|&(_, p)| p == pid) {
                let (helper, _) = self.helpers.remove(at);
                if stopping {
                    continue;
                }
                diag!("{} exited; starting another", helper.name());
                self.start_helper(helper);
                continue;
            }
            let known = self.children.remove(&pid)
                || self.prefork.as_mut().is_some_and(|pool| pool.reaped(pid));
            if known {
                report_exit(pid, status);
            }
        }
    }
}

/// Whether pibl has been told to stop (SIGTERM, SIGINT or SIGQUIT).
fn stopping() -> bool {
    signals::is_set(&GOT_SIGTERM) || signals::is_set(&GOT_SIGQUIT)
}

/// Holds a batch of new children (workers, in the prefork model) until the
/// parent has forked them all.  A new process is run at once, before the
/// one that forked it, so without it a parent forking fifty children on a
/// busy machine is put aside after each fork — the child serves its first
/// request meanwhile — and needs tens of milliseconds for the batch, while
/// the last connections wait; gated, each child only blocks.
pub struct ForkGate {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl ForkGate {
    pub fn new() -> Option<ForkGate> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        Some(ForkGate { read, write })
    }

    /// In a new child: returns once the parent has dropped the gate (and
    /// every child of the batch has closed its copy of the write end).  The
    /// child never returns to the frame that owns the gate, so it closes
    /// the descriptors directly, as it does the listener.
    pub fn wait(&self) {
        let _ = nix::unistd::close(std::os::fd::AsRawFd::as_raw_fd(&self.write));
        let mut byte = [0u8];
        while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&self.read, &mut byte) {}
        let _ = nix::unistd::close(std::os::fd::AsRawFd::as_raw_fd(&self.read));
    }
}

/// How many connections wait in `listener`'s accept queue: for a socket in
/// the LISTEN state, Linux reports that length as TCP_INFO's `tcpi_unacked`.
pub fn waiting_connections(listener: &TcpListener) -> usize {
    // SAFETY: tcp_info is plain integers, for which zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let done = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if done == 0 {
        info.tcpi_unacked as usize
    } else {
        0
    }
}

/// Says what a failed accept(2) is worth saying, and pauses when the
/// descriptor table is full, so the loop does not spin.
pub fn accept_failed(e: &io::Error) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            diag!("accept: {}; pausing", crate::error::describe_io(e));
            std::thread::sleep(FD_EXHAUSTED_PAUSE);
        }
        // EAGAIN: nothing after all (or a prefork worker's accept timeout);
        // EINTR: a signal, which the caller will look at; ECONNABORTED,
        // ENOTCONN: the client left before we got to it (so fast it has no
        // address); EINVAL: the listener no longer listens, pibl stopping
        // (`connection::stop_listening`).  None is worth a word.
        Some(libc::EINVAL) => {}
        _ if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
        ) => {}
        _ => diag!("accept: {}", crate::error::describe_io(e)),
    }
}

/// Names this process (its comm, 15 bytes at most) for ps(1) and top(1).
pub fn set_process_name(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Re-reads the configuration for `current`'s model and, when it is
/// valid, returns the new context and, if the address changed, the old
/// listener (`listener` is then the new one).  Everything is made before
/// anything is changed: a reload that fails at any step returns `None` and
/// leaves pibl exactly as it was.
pub fn reload_context(
    reloader: &Reloader,
    current: &Context,
    listener: &mut TcpListener,
) -> Option<(Context, Option<TcpListener>)> {
    let listen = current.config.listen_addr();
    let model = current.config.model;
    let prepared = Config::load_with(&reloader.path, &reloader.overrides).and_then(|config| {
        let config = keep_model(config, model);
        let rebound = if config.listen_addr() != listen {
            Some(bind(config.listen_addr())?)
        } else {
            None
        };
        set_inherited_options(rebound.as_ref().unwrap_or(listener), &config)?;
        Ok((crate::build_context(config)?, rebound))
    });
    let (ctx, rebound) = match prepared {
        Ok(ready) => ready,
        Err(e) => {
            diag!("reload refused, configuration unchanged: {e}");
            return None;
        }
    };
    let moved_from = rebound.map(|rebound| std::mem::replace(listener, rebound));
    crate::log::set_diag_syslog(ctx.config.syslog.clone());
    Some((ctx, moved_from))
}

/// Says that pibl stops, as nginx's "gracefully shutting down": once the
/// connections know it (`signals::winding_down`).
pub fn say_stopping(timeout: Duration) {
    if timeout.is_zero() {
        notice!("stopping now");
    } else {
        notice!(
            "stopping: connections close after the response in hand, within {} s",
            timeout.as_secs_f64()
        );
    }
}

/// `connection::set_inherited_options` for `config`, at start or reload.
/// In the prefork model the listener's receive timeout is then made the
/// workers' wake-up in accept(2) (`Prefork::prepare`) — after, so that a
/// reload cannot undo it — and each worker gives the connections it
/// accepts a request body's timeout itself.
fn set_inherited_options(listener: &TcpListener, config: &Config) -> Result<(), Error> {
    crate::connection::set_inherited_options(listener, &config.timeouts)
        .map_err(|e| Error::os("cannot set the listening socket's options", e))?;
    if config.model == Model::Prefork {
        Prefork::prepare(listener)?;
    }
    Ok(())
}

/// Says that `ctx` serves new connections from now on.  Called once the
/// caller has put it in place: a client that reads this may rely on it.
pub fn say_reloaded(listener: &TcpListener, ctx: &Context) {
    notice!(
        "configuration reloaded: listening on {}, {}",
        listener.local_addr().map_or("?".into(), |a| a.to_string()),
        backend_count(ctx)
    );
}

/// Says that as many connections are being served as `setting` allows
/// (`max`), so that further ones wait in the listen queue — as Apache's
/// "server reached MaxRequestWorkers setting".  Once a minute at most: a
/// server that is full stays so for a while.
pub fn say_full(setting: &str, max: usize) {
    if crate::log::worth_saying(crate::log::Recurring::Full) {
        diag!(
            "{setting} ({max}) reached: new connections wait in the listen queue; \
             consider raising {setting} (said once a minute at most)"
        );
    }
}

/// The model is chosen at start: a reload keeps it, and says so if the
/// file now asks for another.
fn keep_model(mut config: Config, model: Model) -> Config {
    if config.model != model {
        diag!(
            "model cannot change on reload: still {} (restart pibl for {})",
            model.name(),
            config.model.name()
        );
        config.model = model;
    }
    config
}

fn signal_all(children: &HashSet<Pid>, signal: Signal) {
    for &pid in children {
        let _ = kill(pid, signal);
    }
}

/// Asks every child to finish the request in flight and waits for them,
/// at most `timeout` (a second SIGQUIT cuts it short); then kills the rest.
fn stop_children(
    children: &mut HashSet<Pid>,
    listener: TcpListener,
    timeout: Duration,
    wait_mask: &SigSet,
) {
    signals::announce_stop();
    // Prefork workers still serving hold the listener open.  After the
    // announcement: an idle one woken in accept(2) by this reads it.
    crate::connection::stop_listening(&listener);
    drop(listener);
    say_stopping(timeout);
    signal_all(children, Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    forget_reaped(children);
    while !children.is_empty() && !signals::is_set(&GOT_SIGQUIT) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            diag!(
                "{} children still busy after shutdown_timeout; killing them",
                children.len()
            );
            break;
        }
        signals::wait_events(&mut [], Some(left), *wait_mask);
        if signals::take(&GOT_SIGCHLD) {
            forget_reaped(children);
        }
    }
    signal_all(children, Signal::SIGKILL);
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

/// Connections the kernel completes and queues while the parent is busy
/// or at max_clients; nginx's default.  (std's TcpListener uses 128, too
/// few for a burst: the rest wait for SYN retransmits, a second or more.)
const LISTEN_BACKLOG: i32 = 511;

/// A non-blocking listening socket on `addr`, with a message naming it on
/// failure.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, setsockopt, socket, sockopt,
    };
    let fail = |e: Errno| Error::os(format!("cannot listen on {addr}"), e.into());
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(fail)?;
    // Restarting must not wait for old connections in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(fail)?;
    nix::sys::socket::listen(&fd, Backlog::new(LISTEN_BACKLOG).map_err(fail)?).map_err(fail)?;
    defer_accept(&fd).map_err(fail)?;
    Ok(TcpListener::from(fd))
}

/// Seconds the kernel holds a connection whose client has sent nothing
/// before queueing it anyway.
const DEFER_ACCEPT: libc::c_int = 1;

/// Queues a connection for accept(2) only once its request has arrived (or
/// DEFER_ACCEPT has passed), as nginx's `listen ... deferred`: whoever
/// accepts it finds the request there and reads it without sleeping again.
fn defer_accept(fd: &impl AsRawFd) -> Result<(), Errno> {
    let seconds = DEFER_ACCEPT;
    // SAFETY: the option's value is a c_int, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of_val(&seconds) as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// The parent's helper processes: long-lived children that serve no client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    HealthChecker,
    CacheJanitor,
}

impl Helper {
    /// The helper's work, for as long as `keep_going` says.
    pub fn run(self, ctx: &Context, keep_going: &dyn Fn() -> bool) {
        match self {
            Helper::HealthChecker => crate::health::run(ctx, keep_going),
            Helper::CacheJanitor => crate::janitor::run(ctx, keep_going),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Helper::HealthChecker => "health checker",
            Helper::CacheJanitor => "cache janitor",
        }
    }
}

fn forget_reaped(children: &mut HashSet<Pid>) {
    for (pid, _) in reap_children() {
        children.remove(&pid);
    }
}

/// Collects every exited child without blocking.
fn reap_children() -> Vec<(Pid, WaitStatus)> {
    let mut gone = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return gone,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    gone.push((pid, status));
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                diag!("waitpid: {}", e.desc());
                return gone;
            }
        }
    }
}

/// Says what is worth saying about a child's or worker's end.
fn report_exit(pid: Pid, status: WaitStatus) {
    match status {
        WaitStatus::Exited(_, code) if code == child::EXIT_INTERNAL => {
            diag!("child {pid} failed (exit {code})");
        }
        WaitStatus::Signaled(_, signal, _)
            if !matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) =>
        {
            diag!("child {pid} killed by {signal}");
        }
        _ => {}
    }
}
