//! The cache janitor: one helper process, forked by the parent when the
//! cache is on, that sweeps the cache directory every second (a large one
//! less often, see `rest_after`).  It removes
//! expired entries, so no client waits on that, and keeps the entries
//! within `cache.max_size` by removing the least recently used.

use std::thread;
use std::time::{Duration, Instant};

use crate::diag;
use crate::relay::Context;

/// Time between sweeps of a small cache.  A sweep reads only the directory
/// and each file's times and size, so it is cheap — for a few thousand
/// entries.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How many times as long as its last sweep took the janitor rests: a
/// sweep of hundreds of thousands of entries takes a second of CPU, and
/// the janitor must leave the CPUs to the children serving clients.
const REST_FACTOR: u32 = 9;

/// Runs in the helper (a process, or a thread in the thread model) until
/// `keep_going` says no (a process: until SIGTERM).
pub fn run(ctx: &Context, keep_going: &dyn Fn() -> bool) {
    let Some(cache) = &ctx.cache else {
        return;
    };
    while keep_going() {
        let started = Instant::now();
        match cache.sweep(ctx.config.cache.max_size) {
            Ok((_, 0)) => {}
            Ok((_, evicted)) => {
                diag!("cache over max_size: {evicted} least recently used entries removed")
            }
            Err(e) => diag!("cache sweep: {}", crate::error::describe_io(&e)),
        }
        thread::sleep(rest_after(started.elapsed()));
    }
}

/// The pause after a sweep that took `sweep`: a second, or long enough
/// that sweeping takes at most a tenth of one CPU.
fn rest_after(sweep: Duration) -> Duration {
    SWEEP_INTERVAL.max(sweep * REST_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sweep_is_followed_by_a_long_rest() {
        assert_eq!(rest_after(Duration::from_millis(3)), SWEEP_INTERVAL);
        assert_eq!(
            rest_after(Duration::from_millis(500)),
            Duration::from_millis(4500)
        );
    }
}
