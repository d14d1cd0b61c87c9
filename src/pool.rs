//! Idle connections to the backends, kept by one child for its next
//! requests (as nginx's upstream `keepalive`).
//!
//! A child serves one client at a time, so it needs at most one connection
//! per backend.  Connections live no longer than the child.  Only requests
//! pibl can send again (idempotent, body kept) go on a kept connection: the
//! backend may close an idle connection just as pibl sends on it, and such
//! a request is then simply sent again on a new one.

use std::net::TcpStream;
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub struct Pool {
    idle: Vec<Option<TcpStream>>,
}

impl Pool {
    pub fn new(backends: usize) -> Pool {
        Pool {
            idle: (0..backends).map(|_| None).collect(),
        }
    }

    /// The idle connection to backend `i`, unless the backend has closed
    /// it (or sent something unasked, which makes it unusable too).
    pub fn take(&mut self, i: usize) -> Option<TcpStream> {
        let stream = self.idle.get_mut(i)?.take()?;
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => Some(stream),
            _ => None,
        }
    }

    /// Keeps `stream` to backend `i` for the next request.
    pub fn put(&mut self, i: usize, stream: TcpStream) {
        if let Some(slot) = self.idle.get_mut(i) {
            *slot = Some(stream);
        }
    }
}
