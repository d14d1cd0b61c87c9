//! A request body sent to a backend that may answer before reading it all.
//!
//! A backend may refuse an upload as soon as it has the head — a 413, a
//! 401 — answer at once, and read no more of the body (RFC 9110 §15.5.14
//! lets it).  Sent with blocking writes, the rest of the body would then
//! wait out `backend_timeout` before pibl read the answer the backend gave
//! long before.  So while a streamed body goes out, the backend's socket is
//! non-blocking, and a write that finds no room waits in poll(2) for room
//! *or* for the answer: a backend that has spoken and takes nothing more
//! has answered early, and its answer is read (and the client's connection,
//! its body unread, is closed after it).
//!
//! pibl relays one way at a time: a backend that streams its answer back
//! while it still reads the body (an echo) stalls once the buffers between
//! them are full, as behind Apache's mod_proxy.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The backend's side of a request body being sent: non-blocking for as
/// long as it lives.
pub struct Upload<'a>(&'a TcpStream);

impl<'a> Upload<'a> {
    pub fn begin(stream: &'a TcpStream) -> io::Result<Upload<'a>> {
        stream.set_nonblocking(true)?;
        Ok(Upload(stream))
    }

    /// Where the body is written.
    pub fn sink(&self) -> Sending<'a> {
        Sending(self.0)
    }
}

impl Drop for Upload<'_> {
    /// Blocking again, for the answer and for the next request: its time
    /// limits (SO_RCVTIMEO, SO_SNDTIMEO) apply only then.
    fn drop(&mut self) {
        let _ = self.0.set_nonblocking(false);
    }
}

/// Writes to a socket; when it is non-blocking (an `Upload`), a write that
/// finds no room waits in `wait_to_send` as a blocking one would, but not
/// past an early answer.  On a blocking socket, a plain write.
pub struct Sending<'a>(pub &'a TcpStream);

impl Write for Sending<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&*self.0).write(buf) {
                Err(e) if waited(self.0, &e)? => {}
                done => return done,
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match (&*self.0).write_vectored(bufs) {
                Err(e) if waited(self.0, &e)? => {}
                done => return done,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// After a write to `stream` failed with `e`: whether it is to go again,
/// having waited for room (`wait_to_send`).  Only on a non-blocking socket:
/// a blocking one's EAGAIN is its send timeout.
pub fn waited(stream: &TcpStream, e: &io::Error) -> io::Result<bool> {
    if e.kind() == io::ErrorKind::WouldBlock && is_nonblocking(stream) {
        wait_to_send(stream)?;
        return Ok(true);
    }
    Ok(false)
}

fn is_nonblocking(stream: &TcpStream) -> bool {
    fcntl(stream.as_fd(), FcntlArg::F_GETFL)
        .is_ok_and(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
}

/// Waits until the backend at `stream` can take more of the body, at most
/// the socket's send timeout (a TimedOut error then, as a blocking write's).
/// An error too when the backend has answered and takes no more.
fn wait_to_send(stream: &TcpStream) -> io::Result<()> {
    let timeout = match stream.write_timeout()? {
        Some(limit) => PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let mut fds = [PollFd::new(
        stream.as_fd(),
        PollFlags::POLLOUT | PollFlags::POLLIN,
    )];
    let ready = crate::sys::restarting(|| poll(&mut fds, timeout).map_err(io::Error::from))?;
    if ready == 0 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let ready = fds[0].revents().unwrap_or(PollFlags::empty());
    if ready.contains(PollFlags::POLLOUT) {
        Ok(())
    } else {
        // Spoken, or gone: either way the body goes no further.
        Err(io::Error::other(
            "the backend answered before taking the whole body",
        ))
    }
}
