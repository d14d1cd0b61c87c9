//! What every model's supervisor does besides serving: reload the
//! configuration, run the helpers, and say what pibl is doing.  Used by
//! the fork and prefork parent and by the thread model's main thread.

use std::net::TcpListener;
use std::time::Duration;

use crate::config::{Config, Model, Overrides};
use crate::error::Error;
use crate::models::listener::{self, Listeners};
use crate::proxy::Context;
use crate::{diag, notice};

/// What a reload needs to build a new context.
pub struct Reloader {
    pub path: String,
    pub overrides: Overrides,
    /// What a binary upgrade (SIGUSR2) starts again.
    pub program: Option<crate::models::upgrade::Program>,
}

/// Re-reads the configuration for `current`'s model and, when it is
/// valid, returns the new context and the listeners it no longer uses
/// (`listeners` then holds new ones for the addresses that changed).
/// Everything is made before anything is changed: a reload that fails at
/// any step returns `None` and leaves pibl exactly as it was.
pub fn reload_context(
    reloader: &Reloader,
    current: &Context,
    listeners: &mut Listeners,
) -> Option<(Context, Vec<TcpListener>)> {
    crate::systemd::notify("RELOADING=1");
    let reloaded = reload_context_now(reloader, current, listeners);
    crate::systemd::notify("READY=1");
    reloaded
}

fn reload_context_now(
    reloader: &Reloader,
    current: &Context,
    listeners: &mut Listeners,
) -> Option<(Context, Vec<TcpListener>)> {
    let model = current.config.model;
    let prepared = Config::load_with(&reloader.path, &reloader.overrides).and_then(|config| {
        let config = keep_model(config, model);
        let rebound = Listeners::rebound_for(&current.config, &config)?;
        listener::configure_all(&listeners.with(&rebound), &config)?;
        Ok((Context::build(config)?, rebound))
    });
    let (ctx, rebound) = match prepared {
        Ok(ready) => ready,
        Err(e) => {
            diag!("reload refused, configuration unchanged: {e}");
            return None;
        }
    };
    let moved_from = listeners.replace(rebound);
    let mut ctx = ctx;
    ctx.https_port = listeners.https_port();
    ctx.status_listener = current.status_listener.clone();
    if ctx.config.status.as_ref().map(|s| s.addr) != current.config.status.as_ref().map(|s| s.addr)
    {
        diag!("[status] cannot change on reload: still as at start (restart pibl to change it)");
    }
    crate::stats::count(crate::stats::Event::Reload);
    crate::log::set_diag_syslog(ctx.config.syslog.clone());
    Some((ctx, moved_from))
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

/// The supervisor's helpers: long-lived processes (threads, in the thread
/// model) that serve no client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    HealthChecker,
    CacheJanitor,
    StatusServer,
}

impl Helper {
    /// The helpers `ctx` asks for.
    pub fn wanted(ctx: &Context) -> Vec<Helper> {
        let mut wanted = Vec::new();
        if ctx.config.health.check.is_some() {
            wanted.push(Helper::HealthChecker);
        }
        if ctx.cache.is_some() {
            wanted.push(Helper::CacheJanitor);
        }
        if ctx.status_listener.is_some() {
            wanted.push(Helper::StatusServer);
        }
        wanted
    }

    /// The helper's work, for as long as `keep_going` says.
    pub fn run(self, ctx: &Context, keep_going: &dyn Fn() -> bool) {
        match self {
            Helper::HealthChecker => crate::proxy::health::run(ctx, keep_going),
            Helper::CacheJanitor => {
                if let Some(cache) = &ctx.cache {
                    crate::cache::janitor::run(cache, ctx.config.cache.max_size, keep_going);
                }
            }
            Helper::StatusServer => {
                if let Some(listener) = &ctx.status_listener {
                    crate::status::serve(listener, ctx, keep_going);
                }
            }
        }
    }

    /// Its name in ps(1) and top(1), as nginx's "cache manager".
    pub fn name(self) -> &'static str {
        match self {
            Helper::HealthChecker => "health checker",
            Helper::CacheJanitor => "cache janitor",
            Helper::StatusServer => "status server",
        }
    }
}

/// Says where pibl listens.  Said only once every signal has its handler
/// and the helpers run, so whoever waits for this line may act on it at
/// once.
pub fn announce(listeners: &Listeners, ctx: &Context) -> Result<(), Error> {
    let bound = listeners
        .plain
        .local_addr()
        .map_err(|e| Error::os("cannot read the listening address", e))?;
    notice!(
        "listening on {bound}, {}{}{}, {} model",
        https_address(listeners),
        status_address(ctx),
        backend_count(ctx),
        ctx.config.model.name()
    );
    crate::systemd::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    crate::systemd::tell_upgraded_parent();
    Ok(())
}

/// "status on ADDRESS, " when there is a status listener.
fn status_address(ctx: &Context) -> String {
    match ctx
        .status_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
    {
        Some(addr) => format!("status on {addr}, "),
        None => String::new(),
    }
}

/// "HTTPS on ADDRESS, " when there is an HTTPS listener.
fn https_address(listeners: &Listeners) -> String {
    match listeners.tls.as_ref().and_then(|l| l.local_addr().ok()) {
        Some(addr) => format!("HTTPS on {addr}, "),
        None => String::new(),
    }
}

/// Says that `ctx` serves new connections from now on.  Called once the
/// caller has put it in place: a client that reads this may rely on it.
pub fn say_reloaded(listeners: &Listeners, ctx: &Context) {
    notice!(
        "configuration reloaded: listening on {}, {}{}",
        listeners
            .plain
            .local_addr()
            .map_or("?".into(), |a| a.to_string()),
        https_address(listeners),
        backend_count(ctx)
    );
}

/// "1 backend", "3 backends".
fn backend_count(ctx: &Context) -> String {
    match ctx.config.backends.len() {
        1 => "1 backend".into(),
        n => format!("{n} backends"),
    }
}

/// Says that pibl stops, as nginx's "gracefully shutting down": once the
/// connections know it (`signals::winding_down`).
pub fn say_stopping(timeout: Duration) {
    crate::systemd::notify("STOPPING=1");
    if timeout.is_zero() {
        notice!("stopping now");
    } else {
        notice!(
            "stopping: connections close after the response in hand, within {} s",
            timeout.as_secs_f64()
        );
    }
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
