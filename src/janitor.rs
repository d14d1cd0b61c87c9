//! The cache janitor: one helper process, forked by the parent when the
//! cache is on, that sweeps the cache directory every second.  It removes
//! expired entries, so no client waits on that, and keeps the entries
//! within `cache.max_size` by removing the least recently used.

use std::process;
use std::thread;
use std::time::Duration;

use crate::diag;
use crate::relay::Context;

/// Time between sweeps.  A sweep reads only the directory and each file's
/// times and size, so it is cheap.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs in the helper, for ever (until SIGTERM).
pub fn run(ctx: &Context) -> ! {
    let Some(cache) = &ctx.cache else {
        process::exit(0)
    };
    loop {
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
