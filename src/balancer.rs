//! Round robin over the backends, exact across all children.
//!
//! Each child asks `pick()` once per request.  The position lives in the
//! shared page, advanced with one atomic fetch-add, so the sequence is the
//! same whatever child serves the request: over 3N requests, 3 backends get
//! exactly N each.

use std::sync::atomic::Ordering;

use crate::config::Backend;
use crate::shm::SharedState;

pub struct Balancer {
    backends: Vec<Backend>,
    shared: &'static SharedState,
}

impl Balancer {
    pub fn new(backends: Vec<Backend>, shared: &'static SharedState) -> Balancer {
        assert!(
            !backends.is_empty(),
            "config validation guarantees a backend"
        );
        Balancer { backends, shared }
    }

    /// The backend for the next request.
    pub fn pick(&self) -> &Backend {
        // Relaxed is enough: the counter orders nothing but itself.
        let turn = self.shared.next_backend.fetch_add(1, Ordering::Relaxed);
        &self.backends[turn % self.backends.len()]
    }
}
