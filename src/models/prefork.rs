//! The prefork model: a pool of worker processes, forked ahead of need,
//! that each accept(2) on the shared listening socket and serve one
//! connection at a time — Apache's prefork MPM.
//!
//! The parent never touches a connection.  It counts the idle workers on
//! the scoreboard (shared pages each worker writes its state to) and forks
//! more when fewer than `min_spare` are idle, plus one for each connection
//! waiting in the accept queue (TCP_INFO tells its length) — twice as many
//! each time in a row it has to, as Apache does — up to `max_workers`; it
//! stops an idle one, at most ten times a second, when more than
//! `max_spare` are idle beyond those the waiting connections need (through
//! a flag in its slot, which it reads between connections and at each
//! accept timeout).  A worker exits after `max_requests` connections, so a
//! leak cannot grow without bound.
//!
//! It looks every 10 ms while any worker is busy, for a burst may outrun
//! the spares at any moment, and 1 ms after it has forked workers, for the
//! rest of the burst is then still arriving; when all are idle it sleeps
//! until the first connection of the next burst (the listening socket
//! turning readable) or 100 ms.  A burst of fifty connections on a quiet
//! server then waits for its workers a few milliseconds, not a tick of 100.
//!
//! The kernel hands each new connection to one worker blocked in accept(2)
//! (no thundering herd).  The listening socket is blocking in this model,
//! with a receive timeout so that a worker that missed its SIGTERM (sent
//! just before it blocked) still stops within a second
//! (`listener::configure`).

use std::collections::HashMap;
use std::process;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::config::MAX_WORKERS;
use crate::diag;
use crate::error::Error;
use crate::models::fork::{self, ForkGate, Spawn};
use crate::models::listener::{self, Acceptor, Listeners, accept_failed, waiting_connections};
use crate::models::supervise::say_full;
use crate::proxy::Context;
use crate::proxy::connection::Worker;
use crate::shm::{self, Shareable};
use crate::signals::{self, StopWatch};

/// One prefork worker's slot: what the parent counts to size the pool.
#[repr(C)]
struct WorkerSlot {
    /// One of the `SLOT_*` states.
    state: AtomicU32,
    /// Connections served so far.
    served: AtomicU64,
    /// The worker's pid, for `ps`-less inspection (0 when free).
    pid: AtomicI32,
    /// Set by the parent at a reload: stop before the next connection, and
    /// close a kept-alive one after the response in hand.
    retire: AtomicBool,
}

const SLOT_FREE: u32 = 0;
const SLOT_STARTING: u32 = 1;
const SLOT_IDLE: u32 = 2;
const SLOT_BUSY: u32 = 3;
/// An idle worker the parent found spare: it exits instead of accepting
/// again.  Set only from IDLE, with a compare-and-swap the worker's own
/// IDLE to BUSY races against: a worker that has just taken a connection
/// is not spare, and serves it whole.
const SLOT_SPARE: u32 = 4;

/// Apache's scoreboard, reduced: one slot per prefork worker.
#[repr(C)]
struct Scoreboard {
    slots: [WorkerSlot; MAX_WORKERS],
}

// SAFETY: atomics only; zero is "every slot free".
unsafe impl Shareable for Scoreboard {}

/// How often the parent looks at the scoreboard when every worker is idle,
/// and stops an idle worker at most.
pub const TICK: Duration = Duration::from_millis(100);
/// How often it looks while workers are busy or starting.
pub const SHORT_TICK: Duration = Duration::from_millis(10);
/// How soon it looks again after forking workers: a burst is still
/// arriving, and the connections after the first ones must not wait a
/// whole tick for theirs.
pub const RAMP_TICK: Duration = Duration::from_millis(1);
/// Most workers forked in one tick.
const MAX_SPAWN_RATE: usize = 32;

/// A worker's name in ps(1).
pub const WORKER_NAME: &str = "pibl worker";

pub struct Prefork {
    board: &'static Scoreboard,
    /// Workers of the current configuration: pid → slot.
    workers: HashMap<Pid, usize>,
    /// Workers told to stop (an older configuration, or too many idle);
    /// their slots stay taken until they are reaped.
    retiring: HashMap<Pid, usize>,
    /// Workers to fork at the next shortage: doubles while shortages last.
    spawn_rate: usize,
    /// When an idle worker was last told to stop.
    last_retired: Instant,
}

/// When the parent is to look at the pool again.
pub struct Wait {
    pub after: Duration,
    /// Also as soon as a client connects.
    pub on_connection: bool,
}

impl Prefork {
    pub fn new() -> Result<Prefork, Error> {
        Ok(Prefork {
            board: shm::map::<Scoreboard>()?,
            workers: HashMap::new(),
            retiring: HashMap::new(),
            spawn_rate: 1,
            last_retired: Instant::now(),
        })
    }

    fn state(&self, slot: usize) -> u32 {
        self.board.slots[slot].state.load(Ordering::Relaxed)
    }

    /// Starts or stops workers so that between `min_spare` and `max_spare`
    /// of them are idle.  A worker still starting counts as idle.  Returns
    /// when to look again.
    pub fn maintain(&mut self, listeners: &Listeners, ctx: &Context, parent_mask: &SigSet) -> Wait {
        let limits = &ctx.config.prefork;
        let idle: Vec<Pid> = self
            .workers
            .iter()
            .filter(|&(_, &slot)| matches!(self.state(slot), SLOT_IDLE | SLOT_STARTING))
            .map(|(&pid, _)| pid)
            .collect();
        let room = limits.max_workers.saturating_sub(self.workers.len());
        // Connections already waiting for a worker need one each, on top of
        // the spares: a burst is met at once, not over doublings 10 ms apart.
        let waiting: usize = listeners.each().map(|(l, _)| waiting_connections(l)).sum();
        let need = (limits.min_spare + waiting).saturating_sub(idle.len());
        if waiting > idle.len() && room == 0 {
            say_full("prefork.max_workers", limits.max_workers);
        }
        if need > 0 && room > 0 {
            let want = need.max(self.spawn_rate).min(room);
            // A lone worker has no batch to wait for.
            let gate = if want > 1 { ForkGate::new() } else { None };
            for _ in 0..want {
                self.spawn(listeners, ctx, parent_mask, gate.as_ref());
            }
            drop(gate);
            self.spawn_rate = (want * 2).min(MAX_SPAWN_RATE);
            return Wait {
                after: RAMP_TICK,
                on_connection: false,
            };
        }
        self.spawn_rate = 1;
        // One at a time, as Apache: a burst that made them may return.  A
        // worker meant for a connection still waiting is not spare, and one
        // still starting is about to take such a connection.
        let spare = idle.len().saturating_sub(waiting);
        if spare > limits.max_spare
            && self.last_retired.elapsed() >= TICK
            && let Some(&pid) = idle.iter().find(|&pid| self.make_spare(self.workers[pid]))
        {
            if let Some(slot) = self.workers.remove(&pid) {
                self.retiring.insert(pid, slot);
            }
            self.last_retired = Instant::now();
        }
        let quiet = waiting == 0 && idle.len() == self.workers.len();
        Wait {
            after: if quiet { TICK } else { SHORT_TICK },
            on_connection: quiet,
        }
    }

    /// A slot no worker holds: the parent marks a slot starting before it
    /// forks and free once it has reaped the worker, and no one else does.
    fn free_slot(&self) -> Option<usize> {
        (0..MAX_WORKERS).find(|&slot| self.state(slot) == SLOT_FREE)
    }

    fn spawn(
        &mut self,
        listeners: &Listeners,
        ctx: &Context,
        parent_mask: &SigSet,
        gate: Option<&ForkGate>,
    ) {
        let Some(slot) = self.free_slot() else { return };
        let board: &'static Scoreboard = self.board;
        let record = &board.slots[slot];
        record.state.store(SLOT_STARTING, Ordering::Relaxed);
        record.served.store(0, Ordering::Relaxed);
        record.retire.store(false, Ordering::Relaxed);
        // A worker outliving its parent would hold the port and serve with
        // no one to replace it: it dies with the parent (gracefully: the
        // connection in hand is finished).
        let how = Spawn {
            close: None,
            gate,
            dies_with_parent: true,
        };
        match fork::spawn(&how, || work(listeners, ctx, record, parent_mask)) {
            Ok(child) => {
                crate::stats::count(crate::stats::Event::Forked);
                self.workers.insert(child, slot);
            }
            Err(e) => {
                record.state.store(SLOT_FREE, Ordering::Relaxed);
                diag!("fork: {}; no new worker", e.desc());
            }
        }
    }

    /// Asks worker `pid` to stop: `now`, with SIGTERM, which closes an
    /// idle keep-alive connection too; otherwise through its slot, which it
    /// reads after each connection and each accept timeout — no signal
    /// can then land between an accept and the read of the request.
    /// Marks the worker in `slot` spare, if it is still idle.
    fn make_spare(&self, slot: usize) -> bool {
        self.board.slots[slot]
            .state
            .compare_exchange(SLOT_IDLE, SLOT_SPARE, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Retires a worker at a reload: it stops accepting, and finishes the
    /// response in hand with `Connection: close`.
    fn retire(&mut self, pid: Pid) {
        if let Some(slot) = self.workers.remove(&pid) {
            self.board.slots[slot].retire.store(true, Ordering::Relaxed);
            let _ = kill(pid, Signal::SIGTERM);
            self.retiring.insert(pid, slot);
        }
    }

    /// Retires every worker: after a reload, new workers use the new
    /// configuration.  Their replacements are no burst: the doubling of
    /// forks starts again (a reload just after the start found it doubled
    /// by the first workers, and forked twice `min_spare`).
    pub fn retire_all(&mut self) {
        let pids: Vec<Pid> = self.workers.keys().copied().collect();
        pids.into_iter().for_each(|pid| self.retire(pid));
        self.spawn_rate = 1;
    }

    /// Forgets `pid` if it was a worker, freeing its slot.
    pub fn reaped(&mut self, pid: Pid) -> bool {
        let slot = self
            .workers
            .remove(&pid)
            .or_else(|| self.retiring.remove(&pid));
        if let Some(slot) = slot {
            self.board.slots[slot]
                .state
                .store(SLOT_FREE, Ordering::Relaxed);
        }
        slot.is_some()
    }

    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.workers.keys().chain(self.retiring.keys()).copied()
    }
}

/// A worker's life: accept, serve, until told to stop or `max_requests`.
fn work(
    listeners: &Listeners,
    ctx: &Context,
    slot: &'static WorkerSlot,
    parent_mask: &SigSet,
) -> ! {
    let limits = &ctx.config.prefork;
    let idle_mask = signals::install_child(parent_mask);
    signals::watch_retirement(&slot.retire);
    crate::sched::apply(ctx.config.sched_batch);
    fork::set_process_name(WORKER_NAME);
    let serving_mask = SigSet::thread_get_mask().unwrap_or(idle_mask);
    slot.pid.store(process::id() as i32, Ordering::Relaxed);
    let mut worker = Worker::new(ctx);
    let acceptor = match Acceptor::new(listeners) {
        Ok(acceptor) => acceptor,
        Err(e) => {
            diag!("prefork worker: {}", crate::error::describe_io(&e));
            process::exit(0)
        }
    };
    let mut served = 0u64;
    while limits.max_requests == 0 || served < limits.max_requests {
        // Idle again, unless found spare meanwhile (an accept that timed
        // out).
        let _ = slot
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != SLOT_SPARE).then_some(SLOT_IDLE)
            });
        // Stop signals are let in only while idle; one already pending
        // arrives here, before the flag is read.
        let _ = idle_mask.thread_set_mask();
        // Stopping (the signal or the parent's flag) or retired.
        if signals::winding_down() || slot.state.load(Ordering::Acquire) == SLOT_SPARE {
            break;
        }
        let accepted = acceptor.accept(listener::PREFORK_ACCEPT_WAKEUP);
        let _ = serving_mask.thread_set_mask();
        match accepted {
            Ok((stream, peer, port)) => {
                // Found spare just as it took this connection, the worker
                // serves it whole, and then exits.
                let spare = slot
                    .state
                    .compare_exchange(SLOT_IDLE, SLOT_BUSY, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err();
                // The listener's timeout is the accept wake-up (`listener::configure`).
                // Cannot fail on a socket just accepted.
                let _ = listener::set_receive_timeout(&stream, ctx.config.timeouts.client_body);
                worker.serve(&stream, port, peer, ctx, StopWatch::Signals(idle_mask));
                served += 1;
                slot.served.store(served, Ordering::Relaxed);
                if spare {
                    break;
                }
            }
            Err(e) => accept_failed(&e),
        }
        // The accept timeout wakes an idle worker each second, held log
        // lines then go out within a second of falling due.
        if worker.log_due().is_some_and(|due| due <= Instant::now()) {
            worker.flush_log();
        }
    }
    drop(worker); // with its log's held lines
    let _ = std::io::Write::flush(&mut std::io::stdout());
    process::exit(0)
}
