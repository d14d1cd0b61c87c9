//! Round robin over the backends that are up, exact across all children,
//! and the passive health that decides which are up.
//!
//! Each child asks `pick()` once per attempt.  The position lives in the
//! shared page, advanced with one atomic fetch-add, so the sequence is the
//! same whatever child serves the request: over 3N requests, 3 healthy
//! backends get exactly N each.  A backend that failed `max_fails` times
//! within `fail_timeout` is skipped until `fail_timeout` has passed, then
//! tried again (as nginx's `max_fails`/`fail_timeout`, and as there, never
//! when it is the only backend); one the active
//! health check marked down is skipped until the check sees it up.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::clock::now_ms;
use crate::config::{Backend, Health, MAX_BACKENDS};
use crate::diag;
use crate::error::Error;
use crate::notice;
use crate::shm::{self, Shareable};
use crate::stats::{self, BackendSlot, DownWhy};

/// What every process knows of one backend's health.
#[repr(C)]
struct BackendHealth {
    /// Failures counted in the current window.
    fails: AtomicU32,
    /// Start of the current failure window (`clock::now_ms`).
    window_start_ms: AtomicU64,
    /// Marked down by failures until this time (`clock::now_ms`); 0 when
    /// never.
    down_until_ms: AtomicU64,
    /// Marked down by the active health check.
    check_down: AtomicBool,
}

/// The balancer's shared page.  Zeroed memory is its initial state.
#[repr(C)]
struct SharedState {
    /// Requests dispatched so far; the next backend is this modulo the count.
    next_backend: AtomicUsize,
    backends: [BackendHealth; MAX_BACKENDS],
}

// SAFETY: atomics only; zero is "no requests yet, every backend up".
unsafe impl Shareable for SharedState {}

/// The variable that carries the backends' health to the new binary of an
/// upgrade: one line per backend, `name TAB down-until-ms TAB checked-down`.
pub const UPGRADE_HEALTH: &str = "PIBL_UPGRADE_HEALTH";

/// The health handed over by the pibl this one upgrades, for the first
/// balancer made (`take_inherited_health`).
static INHERITED_HEALTH: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Takes the backends' health the pibl this one upgrades handed over, so
/// that a backend it had found down stays down.  Called at start, before
/// any thread.
pub fn take_inherited_health() {
    if let Ok(text) = std::env::var(UPGRADE_HEALTH) {
        // SAFETY: called at start, before pibl starts any thread.
        unsafe { std::env::remove_var(UPGRADE_HEALTH) };
        *INHERITED_HEALTH.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }
}

#[derive(Clone)]
pub struct Balancer {
    backends: Vec<Backend>,
    health: Health,
    shared: &'static SharedState,
    /// Each backend's counters (`stats`), claimed by name.
    counters: Vec<BackendSlot>,
}

impl Balancer {
    /// A balancer over `backends`, with shared pages of its own: health
    /// slots belong to one backend list, so each configuration gets fresh
    /// ones.
    pub fn new(backends: Vec<Backend>, health: Health) -> Result<Balancer, Error> {
        assert!(
            !backends.is_empty(),
            "config validation guarantees a backend"
        );
        let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
        let counters = stats::backend_slots(&names)
            .into_iter()
            .map(BackendSlot)
            .collect();
        let balancer = Balancer {
            backends,
            health,
            shared: shm::map::<SharedState>()?,
            counters,
        };
        let inherited = INHERITED_HEALTH
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(text) = inherited {
            balancer.take_health(&text);
        }
        Ok(balancer)
    }

    /// The backends' health as `UPGRADE_HEALTH` carries it.  The times are
    /// CLOCK_MONOTONIC's, the same in every process of the machine.
    pub fn health_report(&self) -> String {
        (0..self.backends.len())
            .map(|i| {
                let slot = self.slot(i);
                format!(
                    "{}\t{}\t{}\n",
                    self.backends[i].name,
                    slot.down_until_ms.load(Ordering::Relaxed),
                    u8::from(slot.check_down.load(Ordering::Relaxed))
                )
            })
            .collect()
    }

    /// Takes the health `report` says of backends of the same names.
    fn take_health(&self, report: &str) {
        for line in report.lines() {
            let mut fields = line.split('\t');
            let (Some(name), Some(until), Some(checked)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some(i) = self.backends.iter().position(|b| b.name == name) else {
                continue;
            };
            let slot = self.slot(i);
            slot.down_until_ms
                .store(until.parse().unwrap_or(0), Ordering::Relaxed);
            slot.check_down.store(checked == "1", Ordering::Relaxed);
        }
    }

    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    /// Backend `i`'s counters.
    pub fn stats_slot(&self, i: usize) -> BackendSlot {
        self.counters[i]
    }

    fn slot(&self, i: usize) -> &BackendHealth {
        &self.shared.backends[i]
    }

    /// Is backend `i` to be used now?
    pub fn is_up(&self, i: usize, now: u64) -> bool {
        let slot = self.slot(i);
        slot.down_until_ms.load(Ordering::Relaxed) <= now
            && !slot.check_down.load(Ordering::Relaxed)
    }

    /// The next backend in the rotation that is up and not in `tried`;
    /// `None` when there is none.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        // Relaxed is enough: the counter orders nothing but itself.
        let draw = || self.shared.next_backend.fetch_add(1, Ordering::Relaxed);
        first_usable(draw, self.backends.len(), |i| {
            !tried.contains(&i) && self.is_up(i, now)
        })
    }

    /// Counts a failure of backend `i`, marking it down at `max_fails`.
    pub fn record_failure(&self, i: usize, why: &str) {
        let (slot, name) = (self.slot(i), &self.backends[i].name);
        let now = now_ms();
        let window = self.health.fail_timeout.as_millis() as u64;
        let fails = if now.saturating_sub(slot.window_start_ms.load(Ordering::Relaxed)) > window {
            slot.window_start_ms.store(now, Ordering::Relaxed);
            slot.fails.store(1, Ordering::Relaxed);
            1
        } else {
            slot.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        diag!("backend {name}: {why}");
        // As nginx: a lone backend is never marked down, since skipping it
        // would only turn a passing failure into a run of 502s.
        if fails >= self.health.max_fails && self.backends.len() > 1 {
            let was = slot.down_until_ms.swap(now + window, Ordering::Relaxed);
            if was <= now {
                self.counters[i].changed(DownWhy::Failures);
                diag!(
                    "backend {name} marked down for {:.1} s after {fails} failure(s)",
                    self.health.fail_timeout.as_secs_f64()
                );
            }
        }
    }

    /// Notes that backend `i` answered: a backend marked down is up again.
    pub fn record_success(&self, i: usize) {
        let slot = self.slot(i);
        if slot.down_until_ms.load(Ordering::Relaxed) != 0
            && slot.down_until_ms.swap(0, Ordering::Relaxed) != 0
        {
            slot.fails.store(0, Ordering::Relaxed);
            self.counters[i].changed(DownWhy::Up);
            notice!("backend {} is up again", self.backends[i].name);
        }
    }

    /// For the active health check: sets backend `i` up or down, and says
    /// so when that changes.
    pub fn set_checked(&self, i: usize, up: bool, why: &str) {
        let was_down = self.slot(i).check_down.swap(!up, Ordering::Relaxed);
        let name = &self.backends[i].name;
        match (was_down, up) {
            (false, false) => {
                self.counters[i].changed(DownWhy::Check);
                diag!("health check: backend {name} is down: {why}")
            }
            (true, true) => {
                self.counters[i].changed(DownWhy::Up);
                notice!("health check: backend {name} is up again")
            }
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }
}

/// Of `n` backends, the first `usable` one the rotation `draw` lands on,
/// in at most `n` draws; failing that, the first usable one after the last
/// draw.  The draws alone are not enough: other processes draw from the
/// same counter meanwhile, and a child's `n` draws can all land on the one
/// backend that is down (1, 4, 7 of 3), which answered "no backend is up"
/// with two up — a few hundred 502s a second while one of three was down.
fn first_usable(
    mut draw: impl FnMut() -> usize,
    n: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut last = 0;
    for _ in 0..n {
        last = draw() % n;
        if usable(last) {
            return Some(last);
        }
    }
    (1..n).map(|k| (last + k) % n).find(|&i| usable(i))
}

#[cfg(test)]
mod tests {
    use super::first_usable;

    /// Draws from a counter that others advance too: each draw skips
    /// `others` values.
    fn drawing(start: usize, others: usize) -> impl FnMut() -> usize {
        let mut next = start;
        move || {
            let drawn = next;
            next += 1 + others;
            drawn
        }
    }

    #[test]
    fn with_the_counter_to_itself_the_rotation_decides() {
        let up = |i: usize| i != 1;
        assert_eq!(first_usable(drawing(0, 0), 3, up), Some(0));
        assert_eq!(first_usable(drawing(1, 0), 3, up), Some(2), "1 is skipped");
        assert_eq!(first_usable(drawing(2, 0), 3, up), Some(2));
    }

    #[test]
    fn draws_that_all_meet_the_down_backend_still_find_an_up_one() {
        // Two other draws between each of ours: 1, 4, 7 are all backend 1.
        assert_eq!(first_usable(drawing(1, 2), 3, |i| i != 1), Some(2));
        // One of two up, an odd number of draws between ours.
        assert_eq!(first_usable(drawing(0, 1), 2, |i| i == 1), Some(1));
    }

    #[test]
    fn none_when_none_is_usable() {
        assert_eq!(first_usable(drawing(0, 0), 3, |_| false), None);
        assert_eq!(first_usable(drawing(5, 7), 1, |_| false), None);
    }
}
