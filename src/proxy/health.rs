//! The active health check: one helper process, forked by the parent, that
//! probes every backend each `interval` and writes up or down into the
//! shared page every child reads — as HAProxy's `check` does.
//!
//! A probe is `GET path` on a new connection; a 2xx or 3xx answer within the
//! connect timeout (for connecting) and the backend timeout (for answering)
//! means up.  The helper never serves clients and never writes the access
//! log; it only says when a backend changes state.

use std::io::Write;
use std::thread;

use crate::config::{Backend, HealthCheck};
use crate::http;
use crate::http::head::{HeadRules, read_head};
use crate::http::wire::Reader;
use crate::proxy::Context;
use crate::proxy::exchange::describe;
use crate::proxy::pool;

/// Runs in the helper (a process, or a thread in the thread model) until
/// `keep_going` says no (a process: until SIGTERM).
pub fn run(ctx: &Context, keep_going: &dyn Fn() -> bool) {
    let Some(check) = &ctx.config.health.check else {
        return;
    };
    while keep_going() {
        for i in 0..ctx.balancer.len() {
            let result = probe(ctx.balancer.backend(i), check, ctx);
            let why = result.as_ref().err().cloned().unwrap_or_default();
            ctx.balancer.set_checked(i, result.is_ok(), &why);
        }
        thread::sleep(check.interval);
    }
}

/// One probe of one backend: `Ok` when it answers 2xx or 3xx.  Over TLS
/// for an `https://` backend, its certificate verified as for requests.
fn probe(backend: &Backend, check: &HealthCheck, ctx: &Context) -> Result<(), String> {
    let upstream = pool::connect(backend, ctx).map_err(|e| describe(e.step, &e.error))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pibl-health-check\r\nConnection: close\r\n\r\n",
        check.path, backend.name
    );
    upstream
        .stream()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {}", crate::error::describe_io(&e)))?;
    let mut reader = Reader::with_capacity(upstream.stream(), 16 * 1024);
    let rules = HeadRules::for_response(16 * 1024);
    match read_head(&mut reader, &rules, http::parse_response_head) {
        Ok(Some(head)) if (200..400).contains(&head.status) => Ok(()),
        Ok(Some(head)) => Err(format!("GET {} answered {}", check.path, head.status)),
        Ok(None) => Err("closed without a response".into()),
        Err(_) => Err("no valid response".into()),
    }
}
