//! The concurrency models: what serves connections, on the one relay core
//! in `proxy`, which knows nothing of them.
//!
//! - fork: `parent` accepts and forks a `child` per connection;
//! - prefork: `parent` keeps a pool of `prefork` workers that accept;
//! - thread: `thread`, one thread per connection in one process.
//!
//! What all three share: the `listener`, the `supervise`or's reloads,
//! helpers and announcements, the binary `upgrade`, and (for the two that
//! fork) `fork`.

pub mod child;
pub mod fork;
pub mod listener;
pub mod parent;
pub mod prefork;
pub mod supervise;
pub mod thread;
pub mod upgrade;

use crate::config::Model;
use crate::error::Error;
use crate::proxy::Context;
use listener::Listeners;
use supervise::Reloader;

/// Serves connections on `listeners` with the configured model until
/// pibl is told to stop.
pub fn run(listeners: Listeners, ctx: Context, reloader: Reloader) -> Result<(), Error> {
    listeners.configure(&ctx.config)?;
    match ctx.config.model {
        Model::Thread => thread::run(listeners, ctx, reloader),
        Model::Fork | Model::Prefork => parent::run(listeners, ctx, reloader),
    }
}
