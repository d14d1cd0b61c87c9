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

use std::sync::atomic::Ordering;

use crate::config::{Backend, Health};
use crate::diag;
use crate::notice;
use crate::shm::{BackendHealth, SharedState, now_ms};

#[derive(Clone)]
pub struct Balancer {
    backends: Vec<Backend>,
    health: Health,
    shared: &'static SharedState,
}

impl Balancer {
    pub fn new(backends: Vec<Backend>, health: Health, shared: &'static SharedState) -> Balancer {
        assert!(
            !backends.is_empty(),
            "config validation guarantees a backend"
        );
        Balancer {
            backends,
            health,
            shared,
        }
    }

    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
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
        let n = self.backends.len();
        for _ in 0..n {
            // Relaxed is enough: the counter orders nothing but itself.
            let i = self.shared.next_backend.fetch_add(1, Ordering::Relaxed) % n;
            if !tried.contains(&i) && self.is_up(i, now) {
                return Some(i);
            }
        }
        None
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
            notice!("backend {} is up again", self.backends[i].name);
        }
    }

    /// For the active health check: sets backend `i` up or down, and says
    /// so when that changes.
    pub fn set_checked(&self, i: usize, up: bool, why: &str) {
        let was_down = self.slot(i).check_down.swap(!up, Ordering::Relaxed);
        let name = &self.backends[i].name;
        match (was_down, up) {
            (false, false) => diag!("health check: backend {name} is down: {why}"),
            (true, true) => notice!("health check: backend {name} is up again"),
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }
}
