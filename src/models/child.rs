//! The fork model's child: one client connection, then exit(2).
//!
//! Runs only in a process forked for the connection.  SIGTERM and SIGINT
//! stop it between requests (see `connection`); the exit status tells the
//! parent how the connection went.

use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};

use nix::sys::signal::SigSet;

use crate::proxy::connection::{Port, Worker};
use crate::proxy::{Context, End};
use crate::sched;
use crate::signals::{self, StopWatch};

/// Exit statuses: a small protocol from child to parent.
pub const EXIT_SERVED: i32 = 0;
pub const EXIT_CLIENT_FAULT: i32 = 1;
pub const EXIT_BACKEND_FAULT: i32 = 2;
pub const EXIT_INTERNAL: i32 = 3;

/// Serves the connection and exits; never returns to the accept loop.
pub fn serve(
    stream: TcpStream,
    port: Port,
    peer: SocketAddr,
    ctx: &Context,
    parent_mask: &SigSet,
) -> ! {
    let idle_mask = signals::install_child(parent_mask);
    sched::apply(ctx.config.sched_batch);
    let code = panic::catch_unwind(AssertUnwindSafe(|| {
        let end = Worker::new(ctx).serve(&stream, port, peer, ctx, StopWatch::Signals(idle_mask));
        exit_code(end)
    }))
    .unwrap_or(EXIT_INTERNAL);
    // Standard output flushed, the kernel closes the rest: nothing is left
    // for exit(3)'s handlers.
    crate::models::fork::flush_std();
    crate::sys::exit_now(code)
}

fn exit_code(end: End) -> i32 {
    match end {
        End::Served => EXIT_SERVED,
        End::ClientFault => EXIT_CLIENT_FAULT,
        End::BackendFault => EXIT_BACKEND_FAULT,
    }
}
