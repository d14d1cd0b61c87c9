//! The listening socket, as every model uses it: bound with the options
//! pibl wants, configured for the model that accepts on it, accepted from,
//! and stopped.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::config::{Config, Model, Timeouts};
use crate::diag;
use crate::error::{Error, describe_io};
pub use crate::proxy::connection::Port;
use crate::systemd::Inherited;

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

/// The listening sockets: plain HTTP's, and HTTPS's when `[tls]` has a
/// port.
pub struct Listeners {
    pub plain: TcpListener,
    pub tls: Option<TcpListener>,
}

impl Listeners {
    /// The listeners `config` asks for: those `given` has (by systemd, or
    /// by the pibl this one upgrades), and the others bound.
    pub fn open(config: &Config, given: &mut Inherited) -> Result<Listeners, Error> {
        let mut take_or_bind = |addr| match given.take(addr) {
            Some(listener) => Ok(listener),
            None => bind(addr),
        };
        Ok(Listeners {
            plain: take_or_bind(config.listen_addr())?,
            tls: config.tls_addr().map(&mut take_or_bind).transpose()?,
        })
    }

    /// Each listener, with the kind of connections it accepts.
    pub fn each(&self) -> impl Iterator<Item = (&TcpListener, Port)> {
        std::iter::once((&self.plain, Port::Plain)).chain(self.tls.as_ref().map(|l| (l, Port::Tls)))
    }

    /// The HTTPS listener's port, as bound.
    pub fn https_port(&self) -> Option<u16> {
        Some(self.tls.as_ref()?.local_addr().ok()?.port())
    }

    pub fn get(&self, port: Port) -> &TcpListener {
        match (port, &self.tls) {
            (Port::Tls, Some(tls)) => tls,
            _ => &self.plain,
        }
    }

    pub fn try_clone(&self) -> io::Result<Listeners> {
        Ok(Listeners {
            plain: self.plain.try_clone()?,
            tls: self.tls.as_ref().map(TcpListener::try_clone).transpose()?,
        })
    }

    /// Sets on each what `config` asks (`configure`).
    pub fn configure(&self, config: &Config) -> Result<(), Error> {
        let all: Vec<&TcpListener> = self.each().map(|(l, _)| l).collect();
        configure_all(&all, config)
    }

    /// `stop_listening` on each.
    pub fn stop_listening(&self) {
        self.each()
            .for_each(|(listener, _)| stop_listening(listener));
    }

    /// For a reload from `current` to `config`: a listener bound for each
    /// address that changed — `Some(None)` for an HTTPS port no longer
    /// wanted — made before anything is changed.
    pub fn rebound_for(current: &Config, config: &Config) -> Result<Rebound, Error> {
        let plain = match config.listen_addr() != current.listen_addr() {
            true => Some(bind(config.listen_addr())?),
            false => None,
        };
        let tls = match config.tls_addr() != current.tls_addr() {
            true => Some(config.tls_addr().map(bind).transpose()?),
            false => None,
        };
        Ok(Rebound { plain, tls })
    }

    /// The listeners `rebound` leaves: the new ones where there are, else
    /// these.
    pub fn with<'a>(&'a self, rebound: &'a Rebound) -> Vec<&'a TcpListener> {
        let plain = rebound.plain.as_ref().unwrap_or(&self.plain);
        let tls = match &rebound.tls {
            Some(tls) => tls.as_ref(),
            None => self.tls.as_ref(),
        };
        std::iter::once(plain).chain(tls).collect()
    }

    /// Puts `rebound` in place; returns the listeners it replaced.
    pub fn replace(&mut self, rebound: Rebound) -> Vec<TcpListener> {
        let mut old = Vec::new();
        if let Some(plain) = rebound.plain {
            old.push(std::mem::replace(&mut self.plain, plain));
        }
        if let Some(tls) = rebound.tls {
            old.extend(std::mem::replace(&mut self.tls, tls));
        }
        old
    }
}

/// How one process takes connections from the listeners: with one,
/// accept(2) on it as it is configured (a prefork worker's blocks, waking
/// every `PREFORK_ACCEPT_WAKEUP`, `configure`); with two, a wait in
/// epoll(7) on both, each connection waking one waiter (EPOLLEXCLUSIVE,
/// as the thread model's spares wait), then accept(2) on the one ready.
pub struct Acceptor<'a> {
    listeners: &'a Listeners,
    epoll: Option<Epoll>,
}

impl<'a> Acceptor<'a> {
    pub fn new(listeners: &'a Listeners) -> io::Result<Acceptor<'a>> {
        let epoll = match listeners.tls {
            None => None,
            Some(_) => {
                let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
                let one = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
                for (listener, port) in listeners.each() {
                    epoll.add(listener, EpollEvent::new(one, port as u64))?;
                }
                Some(epoll)
            }
        };
        Ok(Acceptor { listeners, epoll })
    }

    /// One connection, and the kind of listener it came on; a WouldBlock
    /// error when none came within `wait` (or another process took it).
    pub fn accept(&self, wait: Duration) -> io::Result<(TcpStream, SocketAddr, Port)> {
        let Some(epoll) = &self.epoll else {
            let (stream, peer) = accept(&self.listeners.plain)?;
            return Ok((stream, peer, Port::Plain));
        };
        let timeout = EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::MAX);
        let mut events = [EpollEvent::empty(); 2];
        let port = match epoll.wait(&mut events, timeout)? {
            0 => return Err(io::ErrorKind::WouldBlock.into()),
            _ if events[0].data() == Port::Tls as u64 => Port::Tls,
            _ => Port::Plain,
        };
        let (stream, peer) = accept(self.listeners.get(port))?;
        Ok((stream, peer, port))
    }
}

/// A listener a reload binds anew, for each address that changed.
pub struct Rebound {
    plain: Option<TcpListener>,
    tls: Option<Option<TcpListener>>,
}

/// `configure` on every listener of `all`.
pub fn configure_all(all: &[&TcpListener], config: &Config) -> Result<(), Error> {
    let blocking = all.len() == 1;
    all.iter()
        .try_for_each(|listener| configure(listener, config, blocking))
}

/// Sets on `listener` what `config` asks of it, at start and at each
/// reload: the options every connection inherits, and, in the prefork
/// model with one listener (`blocking`), blocking accepts that wake every
/// `PREFORK_ACCEPT_WAKEUP` — set after, so that a reload cannot undo it
/// (each worker then gives the connections it accepts a request body's
/// timeout itself).  With two, workers wait in poll(2) for either.
fn configure(listener: &TcpListener, config: &Config, blocking: bool) -> Result<(), Error> {
    let fail = |e: io::Error| Error::os("cannot set the listening socket's options", e);
    set_inherited_options(listener, &config.timeouts).map_err(fail)?;
    if config.model == Model::Prefork && blocking {
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
