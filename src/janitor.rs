//! The cache janitor: one helper process, forked by the parent when the
//! cache is on, that sweeps the cache directory every second.  It removes
//! expired entries, so no client waits on that, and keeps the entries
//! within `cache.max_size` by removing the least recently used.

use std::thread;
use std::time::Duration;

use crate::diag;
use crate::relay::Context;

/// Time between sweeps.  A sweep reads only the directory and each file's
/// times and size, so it is cheap.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs in the helper (a process, or a thread in the thread model) until
/// `keep_going` says no (a process: until SIGTERM).
pub fn run(ctx: &Context, keep_going: &dyn Fn() -> bool) {
    let Some(cache) = &ctx.cache else {
        return;
    };
    while keep_going() {
        match cache.sweep(ctx.config.cache.max_size) {
            Ok((_, 0)) => {}
            Ok((_, evicted)) => {
                diag!("cache over max_size: {evicted} least recently used entries removed")
            }
            Err(e) => diag!("cache sweep: {}", crate::error::describe_io(&e)),
        }
        thread::sleep(SWEEP_INTERVAL);
    }
}
