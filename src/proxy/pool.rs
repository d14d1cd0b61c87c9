//! Connections to the backends: made (`connect`), and kept idle by one
//! child for its next requests (as nginx's upstream `keepalive`), with
//! their read buffers.
//!
//! A child serves one client at a time, so it needs at most one connection
//! per backend.  Connections live no longer than the child.  Only requests
//! pibl can send again (idempotent, body kept) go on a kept connection: the
//! backend may close an idle connection just as pibl sends on it, and such
//! a request is then simply sent again on a new one.
//!
//! A kept connection is looked at (poll(2)) before it is used only if it
//! has been idle long enough for the backend to have given up on it: a
//! server closes an idle connection after seconds (gunicorn 2 s, Apache and
//! Node.js 5 s, nginx 75 s), not within the microseconds between two
//! requests of a busy client, and one it closed anyway (a restart) costs a
//! request sent again, as above.  The look would be a system call more per
//! request on the keep-alive path.
//!
//! A connection that is not kept gives its buffer back, so a child
//! allocates (and the kernel faults in) one backend buffer, not one per
//! request.  The pipe large bodies are spliced through is kept here too.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::{Backend, Config};
use crate::http::wire::{Reader, Socket};
use crate::proxy::Context;
use crate::proxy::splice::Pipe;
use crate::tls::Upstream;

/// Why a new backend connection could not be made: the step that failed
/// ("connect", "TLS handshake"), and how.
pub struct ConnectError {
    pub step: &'static str,
    pub error: io::Error,
}

/// A new connection to `backend`, for a request or a health check: over
/// TLS when it is written `https://`, the handshake part of the connect
/// and bound by `connect_timeout` with it (as nginx's
/// proxy_connect_timeout).
pub fn connect(backend: &Backend, ctx: &Context) -> Result<Upstream, ConnectError> {
    let config = &ctx.config;
    let started = Instant::now();
    let stream = connect_tcp(backend.addr, config).map_err(|error| ConnectError {
        step: "connect",
        error,
    })?;
    if !backend.tls {
        return Ok(Upstream::Plain(stream));
    }
    let failed = |error| ConnectError {
        step: "TLS handshake",
        error,
    };
    let client = ctx
        .tls_client
        .as_ref()
        .ok_or_else(|| failed(io::Error::other("TLS is not configured")))?;
    let deadline = started + config.timeouts.connect;
    crate::tls::client::connect(client, &backend.host, stream, deadline)
        .map(|tls| Upstream::Tls(Box::new(tls)))
        .map_err(failed)
}

fn connect_tcp(addr: SocketAddr, config: &Config) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, config.timeouts.connect)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.timeouts.backend))?;
    stream.set_write_timeout(Some(config.timeouts.backend))?;
    Ok(stream)
}

/// How long a connection may have been idle and still be used without a
/// look: less than any server's idle timeout.
const FRESH: Duration = Duration::from_secs(1);

/// An idle connection and when it became idle.
struct Idle {
    conn: Reader<Upstream>,
    since: Instant,
}

pub struct Pool {
    idle: Vec<Option<Idle>>,
    spare: Vec<Vec<u8>>,
    buffer_size: usize,
    pipe: Option<Pipe>,
}

impl Pool {
    pub fn new(backends: usize, buffer_size: usize) -> Pool {
        Pool {
            idle: (0..backends).map(|_| None).collect(),
            spare: Vec::new(),
            buffer_size,
            pipe: None,
        }
    }

    /// A clean pipe for splicing a body: the one kept, or a new one at the
    /// first use and after a copy that failed half-way.  `None` if no pipe
    /// can be made (out of descriptors): the body is then copied instead.
    pub fn pipe(&mut self) -> Option<&mut Pipe> {
        if !self.pipe.as_ref().is_some_and(Pipe::is_clean) {
            self.pipe = Pipe::new().ok();
        }
        self.pipe.as_mut()
    }

    /// The idle connection to backend `i`, unless the backend has closed
    /// it (or sent something unasked, which makes it unusable too).
    pub fn take(&mut self, i: usize) -> Option<Reader<Upstream>> {
        let Idle { conn, since } = self.idle.get_mut(i)?.take()?;
        if since.elapsed() < FRESH {
            return Some(conn);
        }
        let mut fds = [PollFd::new(conn.get_ref().fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) if !conn.get_ref().pending() => Some(conn),
            _ => {
                self.discard(conn);
                None
            }
        }
    }

    /// A new connection, read through a recycled buffer when there is one.
    pub fn wrap(&mut self, stream: Upstream) -> Reader<Upstream> {
        match self.spare.pop() {
            Some(buf) => Reader::with_buffer(stream, buf),
            None => Reader::with_capacity(stream, self.buffer_size),
        }
    }

    /// Keeps `conn` to backend `i` for the next request.
    pub fn put(&mut self, i: usize, conn: Reader<Upstream>) {
        if let Some(slot) = self.idle.get_mut(i) {
            let since = Instant::now();
            if let Some(old) = slot.replace(Idle { conn, since }) {
                self.discard(old.conn);
            }
        }
    }

    /// Closes `conn`, keeping its buffer.
    pub fn discard(&mut self, conn: Reader<Upstream>) {
        let (_, buf) = conn.into_parts();
        self.spare.push(buf);
    }
}
