//! The listening socket, as every model uses it: bound with the options
//! pibl wants, configured for the model that accepts on it, accepted from,
//! and stopped.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;

use crate::config::{Config, Model, Timeouts};
use crate::diag;
use crate::error::{Error, describe_io};

/// Connections the kernel completes and queues while the parent is busy
/// or at max_clients; nginx's default.  (std's TcpListener uses 128, too
/// few for a burst: the rest wait for SYN retransmits, a second or more.)
const LISTEN_BACKLOG: i32 = 511;
/// Seconds the kernel holds a connection whose client has sent nothing
/// before queueing it anyway (`bind`).
const DEFER_ACCEPT_SECS: libc::c_int = 1;
/// Pause after accept(2) fails for want of descriptors, so a full table
/// does not turn the loop into a busy spin.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// How long an idle prefork worker blocks in accept(2) before it looks at
/// its flags again: a worker that missed its SIGTERM (sent just before it
/// blocked) still stops within this.
pub const PREFORK_ACCEPT_WAKEUP: Duration = Duration::from_secs(1);

/// A non-blocking listening socket on `addr`, with a message naming it on
/// failure.  A connection is queued for accept(2) only once its request
/// has arrived (or a second has passed), as nginx's `listen ... deferred`:
/// whoever accepts it finds the request there and reads it without
/// sleeping again.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, setsockopt, socket, sockopt,
    };
    let fail = |e: Errno| Error::os(format!("cannot listen on {addr}"), e.into());
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(fail)?;
    // Restarting must not wait for old connections in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(fail)?;
    nix::sys::socket::listen(&fd, Backlog::new(LISTEN_BACKLOG).map_err(fail)?).map_err(fail)?;
    crate::sys::set_defer_accept(&fd, DEFER_ACCEPT_SECS)
        .map_err(|e| Error::os(format!("cannot listen on {addr}"), e))?;
    Ok(TcpListener::from(fd))
}

/// Sets on `listener` what `config` asks of it, at start and at each
/// reload: the options every connection inherits, and, in the prefork
/// model, blocking accepts that wake every `PREFORK_ACCEPT_WAKEUP` — set
/// after, so that a reload cannot undo it (each worker then gives the
/// connections it accepts a request body's timeout itself).
pub fn configure(listener: &TcpListener, config: &Config) -> Result<(), Error> {
    let fail = |e: io::Error| Error::os("cannot set the listening socket's options", e);
    set_inherited_options(listener, &config.timeouts).map_err(fail)?;
    if config.model == Model::Prefork {
        listener.set_nonblocking(false).map_err(fail)?;
        set_receive_timeout(listener, PREFORK_ACCEPT_WAKEUP).map_err(fail)?;
    }
    Ok(())
}

/// Sets on `listener` the options every connection needs: TCP_NODELAY,
/// and the read and write timeouts of a request body and of a client that
/// stopped reading (the head and the wait between requests have deadlines
/// of their own).  Linux copies a listening socket's options into each
/// socket accept(2) returns, so three setsockopt(2) calls at each start and
/// reload stand for three on every connection.
fn set_inherited_options(listener: &TcpListener, timeouts: &Timeouts) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(listener, sockopt::TcpNoDelay, &true)?;
    set_receive_timeout(listener, timeouts.client_body)?;
    setsockopt(listener, sockopt::SendTimeout, &timeval(timeouts.send))?;
    Ok(())
}

/// Sets a socket's SO_RCVTIMEO: how long a blocking read (or, on a
/// listening socket, accept(2)) waits.  Zero waits for ever.
pub fn set_receive_timeout(socket: &impl AsFd, timeout: Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::ReceiveTimeout, &timeval(timeout))?;
    Ok(())
}

fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    use nix::sys::time::TimeValLike;
    nix::sys::time::TimeVal::microseconds(d.as_micros() as i64)
}

/// accept(2) once, with the peer's address: `sys::accept`.
pub fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    crate::sys::accept(listener)
}

/// How many connections wait in `listener`'s accept queue.
pub fn waiting_connections(listener: &TcpListener) -> usize {
    crate::sys::queued_connections(listener)
}

/// Says what a failed accept(2) is worth saying, and pauses when the
/// descriptor table is full, so the loop does not spin.
pub fn accept_failed(e: &io::Error) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            diag!("accept: {}; pausing", describe_io(e));
            std::thread::sleep(FD_EXHAUSTED_PAUSE);
        }
        // EAGAIN: nothing after all (or a prefork worker's accept timeout);
        // EINTR: a signal, which the caller will look at; ECONNABORTED,
        // ENOTCONN: the client left before we got to it (so fast it has no
        // address); EINVAL: the listener no longer listens, pibl stopping
        // (`stop_listening`).  None is worth a word.
        Some(libc::EINVAL) => {}
        _ if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
        ) => {}
        _ => diag!("accept: {}", describe_io(e)),
    }
}

/// Ends listening on `listener` for every process and thread that holds
/// it, not only the caller's descriptor: Linux stops a listening socket at
/// shutdown(SHUT_RD), as HAProxy pauses one.  A client connecting after
/// is refused at once, as by nginx once it has closed its listening
/// sockets at a stop, rather than queued where no one will accept it and
/// reset after it has sent its request.
pub fn stop_listening(listener: &TcpListener) {
    use nix::sys::socket::{Shutdown, shutdown};
    let _ = shutdown(listener.as_raw_fd(), Shutdown::Read);
}
