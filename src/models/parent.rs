//! The process models' parent: accept and fork (fork model) or keep a
//! pool of workers (prefork model, see `prefork`), reap, and answer
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
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::Model;
use crate::diag;
use crate::error::Error;
use crate::models::child;
use crate::models::fork::{self, ForkGate, Spawn};
use crate::models::listener::{self, Listeners, Port, accept_failed, waiting_connections};
use crate::models::prefork::Prefork;
use crate::models::supervise::{self, Helper, Reloader, say_full};
use crate::models::upgrade::{Program, Upgrade};
use crate::proxy::Context;
use crate::signals::{
    self, GOT_SIGCHLD, GOT_SIGHUP, GOT_SIGQUIT, GOT_SIGTERM, GOT_SIGUSR1, GOT_SIGUSR2,
};

/// Most connections accepted, and children forked behind one gate, per
/// wake-up of the fork model's parent.
const MAX_BATCH: usize = 64;
/// Fewest connections waiting that make a burst, accepted together.  Fewer
/// are taken one per wake-up, as they come: for them the parent's next
/// fork is not long in coming, and a gate would cost each child a wake-up.
const GATE_FROM: usize = 8;

/// The parent's state: the listener, the context children are forked
/// with, and the live children.
struct Parent {
    listeners: Listeners,
    ctx: Context,
    children: HashSet<Pid>,
    /// The helper processes: health checker, cache janitor.
    helpers: Vec<(Helper, Pid)>,
    /// The worker pool, in the prefork model.
    prefork: Option<Prefork>,
    wait_mask: SigSet,
    /// A binary upgrade under way (SIGUSR2).
    upgrade: Upgrade,
}

/// The fork and prefork models, until pibl is told to stop.
pub fn run(listeners: Listeners, ctx: Context, reloader: Reloader) -> Result<(), Error> {
    let wait_mask = signals::install_parent()
        .map_err(|e| Error::os("cannot install signal handlers", e.into()))?;
    let prefork = match ctx.config.model {
        Model::Prefork => Some(Prefork::new()?),
        _ => None,
    };
    let mut parent = Parent {
        listeners,
        ctx,
        children: HashSet::new(),
        helpers: Vec::new(),
        prefork,
        wait_mask,
        upgrade: Upgrade::default(),
    };
    parent.start_helpers();
    supervise::announce(&parent.listeners, &parent.ctx)?;
    while !stopping() {
        parent.serve_once(&reloader);
    }
    parent.stop();
    Ok(())
}

impl Parent {
    /// One turn of the loop: act on the signals that came, then wait for
    /// the next event and serve it.
    fn serve_once(&mut self, reloader: &Reloader) {
        let program = reloader.program.as_ref();
        if signals::take(&GOT_SIGCHLD) {
            self.reap(program);
        }
        if stopping() {
            return;
        }
        if signals::take(&GOT_SIGUSR2) {
            self.upgrade.start(program, &self.listeners, &self.ctx);
        }
        if signals::take(&GOT_SIGHUP) {
            self.reload(reloader);
        }
        if signals::take(&GOT_SIGUSR1) {
            self.reopen_logs();
        }
        if let Some(pool) = &mut self.prefork {
            let next = pool.maintain(&self.listeners, &self.ctx, &self.wait_mask);
            self.wait_for_event(next.on_connection, Some(next.after));
            return;
        }
        let room = self.children.len() < self.ctx.config.max_clients;
        let ready = self.wait_for_event(room, None);
        for port in [Port::Plain, Port::Tls] {
            if ready.contains(&Some(port)) {
                self.accept_clients(port);
            }
        }
    }

    /// Sleeps until a signal arrives, `timeout` passes, or (when `listen`)
    /// a client connects.  The kinds of listener that are readable.
    fn wait_for_event(&self, listen: bool, timeout: Option<Duration>) -> [Option<Port>; 2] {
        let mut fds = Vec::with_capacity(2);
        let mut ports = [None; 2];
        if listen {
            for (i, (listener, port)) in self.listeners.each().enumerate() {
                fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
                ports[i] = Some(port);
            }
        }
        if !signals::wait_events(&mut fds, timeout, self.wait_mask) {
            return [None; 2];
        }
        let readable = |i: usize| fds.get(i).and_then(PollFd::any).unwrap_or(false);
        [0, 1].map(|i| ports[i].filter(|_| readable(i)))
    }

    /// Accepts a connection and forks its child — or, when a burst has
    /// filled the accept queue, every connection in it, their children
    /// gated, so that the last is not kept waiting behind the first ones'
    /// requests.
    fn accept_clients(&mut self, port: Port) {
        let listener = self.listeners.get(port);
        let room = self
            .ctx
            .config
            .max_clients
            .saturating_sub(self.children.len());
        let waiting = waiting_connections(listener);
        let burst = waiting >= GATE_FROM;
        let batch = if burst {
            waiting.min(MAX_BATCH).min(room.max(1))
        } else {
            1
        };
        let gate = if burst { ForkGate::new() } else { None };
        for _ in 0..batch {
            match self.listeners.get(port).accept() {
                Ok((stream, peer)) => self.spawn_child(stream, port, peer, gate.as_ref()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !stopping() => {
                    // Shut down by another process that holds it (an old
                    // parent that stopped listening for both): it stays
                    // readable for ever, and ppoll(2), returning at once,
                    // would never deliver the SIGTERM meant to stop this
                    // loop.  There is nothing left to serve: stop.
                    diag!(
                        "the {port:?} listening socket was shut down by another process; stopping"
                    );
                    signals::GOT_SIGTERM.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    accept_failed(&e);
                    break;
                }
            }
        }
    }

    fn spawn_child(
        &mut self,
        stream: TcpStream,
        port: Port,
        peer: SocketAddr,
        gate: Option<&ForkGate>,
    ) {
        let how = Spawn {
            close: Some(&self.listeners),
            gate,
            dies_with_parent: false,
        };
        let (ctx, wait_mask) = (&self.ctx, &self.wait_mask);
        match fork::spawn(&how, || child::serve(stream, port, peer, ctx, wait_mask)) {
            Ok(child) => {
                crate::stats::count(crate::stats::Event::Forked);
                self.children.insert(child);
                if self.children.len() == self.ctx.config.max_clients {
                    say_full("max_clients", self.ctx.config.max_clients);
                }
            }
            Err(e) => diag!("fork: {}; dropping connection from {peer}", e.desc()),
        }
        // The parent's copy of the client socket closed as the closure that
        // owned it was dropped.
    }

    /// Forks the helpers the configuration asks for.
    fn start_helpers(&mut self) {
        for helper in Helper::wanted(&self.ctx) {
            self.start_helper(helper);
        }
    }

    fn start_helper(&mut self, helper: Helper) {
        let how = Spawn {
            close: Some(&self.listeners),
            gate: None,
            dies_with_parent: true,
        };
        let (ctx, wait_mask) = (&self.ctx, &self.wait_mask);
        let started = fork::spawn(&how, || {
            signals::reset_to_default(wait_mask);
            fork::set_process_name(helper.name());
            helper.run(ctx, &|| true);
            std::process::exit(0)
        });
        match started {
            Ok(pid) => self.helpers.push((helper, pid)),
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
        let Some((ctx, moved_from)) =
            supervise::reload_context(reloader, &self.ctx, &mut self.listeners)
        else {
            return;
        };
        self.ctx = ctx;
        if let Some(pool) = &mut self.prefork {
            pool.retire_all();
        }
        // Prefork workers still serving hold the old listener: it stops
        // listening for them all, once they know not to accept again.
        for old in &moved_from {
            listener::stop_listening(old);
        }
        supervise::say_reloaded(&self.listeners, &self.ctx);
        self.stop_helpers();
        self.start_helpers();
    }

    /// Children open the log by name when they start; those already
    /// running are told to open it again.
    fn reopen_logs(&self) {
        signal_all(self.children.iter().copied(), Signal::SIGUSR1);
        if let Some(pool) = &self.prefork {
            signal_all(pool.pids(), Signal::SIGUSR1);
        }
        crate::notice!("reopening log files");
    }

    /// Collects every exited child without blocking: a helper is started
    /// again, unless pibl is stopping (a service manager signals every
    /// process of pibl at once), a worker's slot freed.
    fn reap(&mut self, program: Option<&Program>) {
        let stopping = stopping();
        for (pid, status) in reap_children() {
            if self.upgrade.reaped(pid, status, program) {
                continue;
            }
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
                crate::stats::count(crate::stats::Event::Reaped);
                crate::stats::free_slots_of(pid.as_raw() as u32);
                report_exit(pid, status);
            }
        }
    }

    /// Stops: every child, worker and helper is asked to finish the
    /// request in flight, within `shutdown_timeout` (none after SIGQUIT).
    fn stop(self) {
        let Parent {
            listeners,
            ctx,
            mut children,
            helpers,
            prefork,
            wait_mask,
            upgrade,
        } = self;
        children.extend(helpers.iter().map(|&(_, pid)| pid));
        children.extend(prefork.iter().flat_map(|pool| pool.pids()));
        let timeout = if signals::is_set(&GOT_SIGQUIT) {
            Duration::ZERO
        } else {
            ctx.config.shutdown_timeout
        };
        let shut = !upgrade.handed_over();
        stop_children(&mut children, listeners, shut, timeout, &wait_mask);
    }
}

/// Whether pibl has been told to stop (SIGTERM, SIGINT or SIGQUIT).
fn stopping() -> bool {
    signals::is_set(&GOT_SIGTERM) || signals::is_set(&GOT_SIGQUIT)
}

fn signal_all(children: impl IntoIterator<Item = Pid>, signal: Signal) {
    for pid in children {
        let _ = kill(pid, signal);
    }
}

/// Asks every child to finish the request in flight and waits for them,
/// at most `timeout` (a second SIGQUIT cuts it short); then kills the rest.
fn stop_children(
    children: &mut HashSet<Pid>,
    listeners: Listeners,
    shut: bool,
    timeout: Duration,
    wait_mask: &SigSet,
) {
    signals::announce_stop();
    // Prefork workers still serving hold the listeners open.  After the
    // announcement: an idle one woken in accept(2) by this reads it.  Not
    // when a new binary serves on them too (`shut` false): SIGTERM, below,
    // wakes the workers instead.
    if shut {
        listeners.stop_listening();
    }
    drop(listeners);
    supervise::say_stopping(timeout);
    signal_all(children.iter().copied(), Signal::SIGTERM);
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
    signal_all(children.iter().copied(), Signal::SIGKILL);
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
