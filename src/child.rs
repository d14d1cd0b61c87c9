//! A child: one client connection, from its first request to exit(2).
//!
//! Runs only in a forked child.  Requests on the connection are served in
//! order (keep-alive and pipelining), each logged, until the client closes,
//! idles out, an exchange leaves the connection unusable, or SIGTERM asks
//! the child to stop once the request in flight is answered.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::process;

use nix::sys::signal::SigSet;

use crate::diag;
use crate::log::{self, AccessLog, Entry};
use crate::pool::Pool;
pub use crate::relay::Context;
use crate::relay::{self, BUFFER_SIZE, End, Exchange};
use crate::signals::{self, GOT_SIGTERM, GOT_SIGUSR1, Idle};
use crate::wire::Reader;

/// Exit statuses: a small protocol from child to parent.
pub const EXIT_SERVED: i32 = 0;
pub const EXIT_CLIENT_FAULT: i32 = 1;
pub const EXIT_BACKEND_FAULT: i32 = 2;
pub const EXIT_INTERNAL: i32 = 3;

/// Serves the connection and exits; never returns to the accept loop.
pub fn serve(stream: TcpStream, peer: SocketAddr, ctx: &Context, parent_mask: &SigSet) -> ! {
    let idle_mask = signals::install_child(parent_mask);
    let code = panic::catch_unwind(AssertUnwindSafe(|| {
        serve_connection(&stream, peer, ctx, &idle_mask)
    }))
    .unwrap_or(EXIT_INTERNAL);
    let _ = io::stdout().flush();
    process::exit(code)
}

fn serve_connection(
    stream: &TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    idle_mask: &SigSet,
) -> i32 {
    let timeouts = &ctx.config.timeouts;
    // Reads time out as a body stalls; the head has its own deadline, and
    // the wait between requests its own timeout (below).
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(timeouts.client_body)))
        .and_then(|()| stream.set_write_timeout(Some(timeouts.send)));
    if let Err(e) = setup {
        diag!("client {peer}: {}", crate::error::describe_io(&e));
        return EXIT_CLIENT_FAULT;
    }
    let mut log = match AccessLog::open(&ctx.config.log_file, ctx.config.syslog.as_ref()) {
        Ok(log) => Some(log),
        Err(e) => {
            diag!(
                "cannot open log file {}: {}",
                ctx.config.log_file.display(),
                crate::error::describe_io(&e)
            );
            None
        }
    };
    let mut reader = Reader::with_capacity(stream, BUFFER_SIZE);
    // getpid(2) once, not once per log line.
    let pid = process::id();
    let mut pool = Pool::new(ctx.balancer.len(), BUFFER_SIZE);
    let mut worst = End::Served;
    // The first request is awaited as long as a head may take; later ones
    // as long as a keep-alive connection may idle (nginx does the same).
    let mut idle_timeout = timeouts.client_header;
    loop {
        // Between requests is the only place a child stops early, so a
        // request once begun is always finished.
        if reader.buffered().is_empty()
            && signals::wait_idle(stream.as_fd(), idle_timeout, idle_mask) != Idle::Ready
        {
            break;
        }
        idle_timeout = timeouts.keepalive;
        let Some(ex) = relay::exchange(&mut reader, peer.ip(), ctx, &mut pool) else {
            break;
        };
        record(log.as_mut(), peer, pid, &ex);
        worst = worst.max(ex.end);
        if !ex.keep_alive || signals::is_set(&GOT_SIGTERM) {
            break;
        }
    }
    match worst {
        End::Served => EXIT_SERVED,
        End::ClientFault => EXIT_CLIENT_FAULT,
        End::BackendFault => EXIT_BACKEND_FAULT,
    }
}

fn record(log: Option<&mut AccessLog>, peer: SocketAddr, pid: u32, ex: &Exchange) {
    let line = log::format_line(&Entry {
        client: peer.ip(),
        time: ex.time,
        request: &ex.request_line,
        status: ex.status,
        body_bytes: ex.body_bytes,
        referer: ex.referer.as_deref(),
        user_agent: ex.user_agent.as_deref(),
        upstream: ex.upstream.as_deref(),
        duration: ex.started.elapsed(),
        pid,
        cache: ex.cache.map(|c| c.as_str()),
    });
    match log {
        Some(log) => {
            if signals::take(&GOT_SIGUSR1) {
                if let Err(e) = log.reopen() {
                    diag!("cannot reopen log file: {}", crate::error::describe_io(&e));
                }
            }
            if let Err(e) = log.write(&line) {
                diag!("cannot write log file: {}", crate::error::describe_io(&e));
            }
        }
        None => print!("{line}"),
    }
}
