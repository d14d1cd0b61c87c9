//! Response buffering, as nginx's `proxy_buffering`: a response body goes
//! to its client as fast as the client takes it, and what the client
//! cannot take yet is held — in memory up to `response_buffer_size`, then
//! in an unnamed temporary file up to `max_temp_file_size` — so that the
//! backend's body is read to its end at the backend's pace and its
//! connection let go, however slowly the client reads.  Beyond those
//! bounds the writes wait for the client: the rest streams.
//!
//! Each write to the client is a send(2) with MSG_DONTWAIT, which tells at
//! once whether the client keeps up, at no system call more than a plain
//! write: a small response costs what it did.  A body spliced from socket
//! to socket (`splice`), which has no such flag, makes the client's socket
//! non-blocking for its length; it stays in the kernel while the client
//! keeps up, and is held the moment it does not.  The waits an `Absorber`
//! does poll(2) with the send timeout, as a blocking write with
//! SO_SNDTIMEO would.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::config::Buffering;
use crate::http::Framing;
use crate::http::body::{self, CopyError, Encode};
use crate::http::wire::{Reader, Socket};
use crate::proxy::splice::{self, Pipe};
use crate::proxy::spool::unnamed_file;
use crate::tls::{Stream, Tls, Upstream};

/// How much of the held file goes to a TLS client at a time.
const FILE_PART: u64 = 64 * 1024;

/// Bytes held for a client that is behind, in order: what is in memory
/// goes first, then what is in the file.
struct Pending {
    memory: Vec<u8>,
    /// How much of `memory` has been sent.
    sent: usize,
    file: Option<File>,
    /// Offsets in `file`: sent up to `file_sent`, written up to `file_len`.
    file_sent: u64,
    file_len: u64,
}

impl Pending {
    fn len(&self) -> u64 {
        (self.memory.len() - self.sent) as u64 + (self.file_len - self.file_sent)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The client's side of a response body.
pub struct Absorber<'a> {
    out: Stream<'a>,
    held: Pending,
    in_memory: usize,
    max_in_file: u64,
    temp_dir: &'a Path,
    send_timeout: Duration,
    /// Response buffering on: writes do not wait for the client.
    buffering: bool,
    /// Whether the socket is non-blocking (while a body is spliced).
    nonblocking: bool,
}

impl<'a> Absorber<'a> {
    /// Writes to `out` held as `buffering` says, or (with response
    /// buffering off) as a plain blocking socket.
    pub fn new(out: Stream<'a>, buffering: &'a Buffering, send_timeout: Duration) -> Absorber<'a> {
        Absorber {
            out,
            held: Pending {
                memory: Vec::new(),
                sent: 0,
                file: None,
                file_sent: 0,
                file_len: 0,
            },
            in_memory: buffering.response_in_memory,
            max_in_file: buffering.max_temp_file,
            temp_dir: &buffering.temp_dir,
            send_timeout,
            buffering: buffering.response,
            nonblocking: false,
        }
    }

    /// The client's socket, when writes to it are plain blocking ones
    /// (response buffering off, no TLS).
    pub fn plain(&self) -> Option<&'a TcpStream> {
        self.out.plain().filter(|_| !self.buffering)
    }

    /// Whether bytes may be spliced to the client: not through TLS.
    pub fn can_splice(&self) -> bool {
        self.out.plain().is_some()
    }

    /// Whether bytes wait for the client.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends everything held, waiting for the client as long as the send
    /// timeout allows each write: after the backend has been let go.
    pub fn finish(&mut self) -> io::Result<()> {
        self.drain(true)?;
        if let Stream::Tls(tls) = self.out {
            tls.send_held(true).map_err(timed_out)?;
        }
        Ok(())
    }

    /// Sends what is held: as much as the client takes now, or (`wait`)
    /// all of it.
    fn drain(&mut self, wait: bool) -> io::Result<()> {
        while self.held.sent < self.held.memory.len() {
            let n = self.send(&[&self.held.memory[self.held.sent..]], wait)?;
            if n == 0 {
                return Ok(());
            }
            self.held.sent += n;
        }
        if self.held.sent > 0 && self.held.file.is_none() {
            self.held.memory.clear();
            self.held.sent = 0;
        }
        // sendfile(2) has no MSG_DONTWAIT: on a blocking socket, the file's
        // part waits for a wait.  TLS reads it and sends it as memory.
        let tls = matches!(self.out, Stream::Tls(_));
        while self.held.file_sent < self.held.file_len && (wait || self.nonblocking || tls) {
            let Some(file) = &self.held.file else { break };
            let (from, to) = (self.held.file_sent, self.held.file_len);
            let n = match self.out {
                Stream::Tls(t) => send_file_part(t, file, from, to, wait)?,
                Stream::Plain(_) => self.retry(|out| send_file_once(out, file, from, to), wait)?,
            };
            if n == 0 {
                return Ok(());
            }
            self.held.file_sent += n as u64;
        }
        if self.held.is_empty() {
            self.held.memory.clear();
            self.held.sent = 0;
            self.held.file_sent = 0;
            self.held.file_len = 0;
            if let Some(file) = &self.held.file {
                let _ = file.set_len(0);
            }
        }
        Ok(())
    }

    /// One send(2) of `parts`: the bytes sent, 0 when the client takes
    /// nothing now (unless `wait`: then it is waited for, within the send
    /// timeout).
    fn send(&self, parts: &[&[u8]], wait: bool) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
        if let Stream::Tls(tls) = self.out {
            return tls.send_some(parts, wait).map_err(timed_out);
        }
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let flags = if wait {
            MsgFlags::MSG_NOSIGNAL
        } else {
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.out.socket());
        self.retry(
            |_| sendmsg::<SockaddrStorage>(fd, &slices, &[], flags, None).map_err(io::Error::from),
            wait,
        )
    }

    /// One write by `write`, as `send` says; a blocking socket's own time
    /// limit (SO_SNDTIMEO) ends a wait as the poll's would.
    fn retry(
        &self,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
        wait: bool,
    ) -> io::Result<usize> {
        let deadline = Instant::now() + self.send_timeout;
        let out = self.out.socket();
        loop {
            match write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !wait => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.nonblocking => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    crate::sys::wait_until(out, PollFlags::POLLOUT, deadline)?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Holds `data` for the client, in memory or in the file; when the
    /// bounds are reached, sends what is held first, waiting for the
    /// client, and then `data` itself if it still does not fit.
    fn hold(&mut self, data: &[u8]) -> io::Result<()> {
        let in_file = self.held.file_len - self.held.file_sent;
        let memory_room = self.held.file.is_none() || in_file == 0;
        if memory_room && self.held.memory.len() + data.len() <= self.in_memory {
            self.held.memory.extend_from_slice(data);
            return Ok(());
        }
        if self.held.file_len + data.len() as u64 <= self.max_in_file {
            let file = match &mut self.held.file {
                Some(file) => file,
                None => self.held.file.insert(unnamed_file(self.temp_dir)?),
            };
            std::os::unix::fs::FileExt::write_all_at(&*file, data, self.held.file_len)?;
            self.held.file_len += data.len() as u64;
            return Ok(());
        }
        // Past the bounds: the rest streams at the client's pace.
        self.drain(true)?;
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.send(&[rest], true)?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Copies `len` bytes of a body from `src` to the client: spliced
    /// through `pipe` while the client keeps up, then, as soon as it does
    /// not, read and held, so that the backend is read to the end.
    pub fn splice_from(
        &mut self,
        src: &mut Reader<Upstream>,
        head: &[u8],
        len: u64,
        pipe: &mut Pipe,
    ) -> Result<u64, CopyError> {
        let (Some(out), Upstream::Plain(_)) = (self.out.plain(), src.get_ref()) else {
            self.write_all_vectored(&[head])
                .map_err(CopyError::HeadUnsent)?;
            return body::relay(src, self, Framing::Length(len), Encode::Plain, 0);
        };
        self.nonblocking = out.set_nonblocking(true).is_ok();
        if !self.nonblocking {
            return splice::relay_length(src, out, head, len, pipe);
        }
        let take = src
            .buffered()
            .len()
            .min(usize::try_from(len).unwrap_or(usize::MAX));
        self.write_all_vectored(&[head, &src.buffered()[..take]])
            .map_err(CopyError::Write)?;
        src.consume(take);
        let mut left = len - take as u64;
        while left > 0 && !self.is_holding() {
            let n = pipe
                .fill(src.get_ref().fd(), left)
                .map_err(CopyError::Read)?;
            left -= n as u64;
            let more = left > 0;
            if !pipe.drain_to(out, more).map_err(CopyError::Write)? {
                // The client is behind: what the pipe holds is held here.
                let mut bytes = Vec::with_capacity(pipe.held());
                pipe.take_into(&mut bytes).map_err(CopyError::Read)?;
                self.hold(&bytes).map_err(CopyError::Write)?;
            }
        }
        if left > 0 {
            body::relay(src, self, Framing::Length(left), Encode::Plain, 0)?;
        }
        Ok(len)
    }

    fn write_all_vectored(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let n = if self.held.is_empty() {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            if total == 0 {
                return Ok(());
            }
            self.send(parts, !self.buffering)?
        } else {
            0
        };
        let mut skip = n;
        for part in parts {
            let unsent = &part[skip.min(part.len())..];
            skip = skip.saturating_sub(part.len());
            if !unsent.is_empty() {
                self.hold(unsent)?;
            }
        }
        Ok(())
    }
}

impl Write for Absorber<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.buffering {
            return { self.out }.write_vectored(bufs);
        }
        self.drain(false)?;
        let parts: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        self.write_all_vectored(&parts)?;
        Ok(parts.iter().map(|p| p.len()).sum())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Absorber<'_> {
    /// The socket blocking again, for the next request and its timeouts.
    fn drop(&mut self) {
        if self.nonblocking {
            let _ = self.out.socket().set_nonblocking(false);
        }
    }
}

/// What a blocking TLS send that ran out of time says: SO_SNDTIMEO's
/// EAGAIN, told as the time-out it is.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

/// Sends some of the bytes `from..to` of `file` over TLS, as `send` sends
/// memory: 0 when the client takes nothing now (unless `wait`).
fn send_file_part(tls: &Tls, file: &File, from: u64, to: u64, wait: bool) -> io::Result<usize> {
    if !tls.send_held(wait).map_err(timed_out)? {
        return Ok(0);
    }
    let mut buf = vec![0u8; (to - from).min(FILE_PART) as usize];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, from)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    tls.send_some(&[&buf[..n]], wait).map_err(timed_out)
}

/// One sendfile(2) of the bytes `from..to` of `file` to `out`.
fn send_file_once(out: &TcpStream, file: &File, from: u64, to: u64) -> io::Result<usize> {
    let mut offset = from as libc::off_t;
    let count = (to - from).min(1 << 30) as usize;
    nix::sys::sendfile::sendfile(out, file, Some(&mut offset), count).map_err(io::Error::from)
}
