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

use crate::balancer::Balancer;
use crate::config::Config;
use crate::diag;
use crate::log::{self, AccessLog, Entry};
use crate::relay::{self, BUFFER_SIZE, CLIENT_TIMEOUT, End, Exchange};
use crate::signals::{self, GOT_SIGTERM, GOT_SIGUSR1, Idle};
use crate::wire::Reader;

/// Exit statuses: a small protocol from child to parent.
pub const EXIT_SERVED: i32 = 0;
pub const EXIT_CLIENT_FAULT: i32 = 1;
pub const EXIT_BACKEND_FAULT: i32 = 2;
pub const EXIT_INTERNAL: i32 = 3;

/// What every child needs, made by the parent before it forks.
pub struct Context {
    pub config: Config,
    pub balancer: Balancer,
}

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
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(CLIENT_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)));
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
    let mut worst = End::Served;
    loop {
        // Between requests is the only place a child stops early, so a
        // request once begun is always finished.
        if reader.buffered().is_empty()
            && signals::wait_idle(stream.as_fd(), CLIENT_TIMEOUT, idle_mask) != Idle::Ready
        {
            break;
        }
        let Some(ex) = relay::exchange(&mut reader, peer.ip(), &ctx.balancer) else {
            break;
        };
        record(log.as_mut(), peer, &ex);
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

fn record(log: Option<&mut AccessLog>, peer: SocketAddr, ex: &Exchange) {
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
        pid: process::id(),
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
