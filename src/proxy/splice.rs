//! Bodies of known length moved between two sockets inside the kernel,
//! with splice(2) through a pipe: the bytes never enter pibl's memory, and
//! a large body costs two system calls per pipeful instead of a read and a
//! write per buffer.  HAProxy does the same on Linux.
//!
//! Only plain bytes can go this way: a body pibl must re-frame (chunked) or
//! copy into the cache goes through the reader's buffer (see `body`).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};

use crate::http::body::CopyError;
use crate::http::wire::{Reader, Socket, write_all_vectored};
use crate::proxy::upload::{self, Sending};

/// Bodies shorter than this (after what the reader already holds) are
/// copied through the buffer: for them the pipe's two extra calls cost more
/// than the copies they save.
pub const MIN_SPLICE: u64 = 64 * 1024;

/// What the pipe is asked to hold: more per splice(2), fewer calls.  The
/// pages are the sockets' own, only referenced, so a pipe costs no memory
/// while empty.
const PIPE_SIZE: i32 = 1 << 18;

/// A pipe kept by one worker for its bodies.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet out.  Not zero only after a failed
    /// copy, and then the pipe is replaced before its next use (`is_clean`).
    held: usize,
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Best effort: a smaller pipe (the 64 KiB default, or the limit
        // in /proc/sys/fs/pipe-max-size) works too, with more calls.
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }

    /// Whether the pipe is empty: a copy that failed half-way leaves bytes
    /// that must not reach the next body.
    pub fn is_clean(&self) -> bool {
        self.held == 0
    }

    /// Moves exactly `len` bytes from `src` to `dst`.  The sockets' time
    /// limits (SO_RCVTIMEO, SO_SNDTIMEO) apply as they do to read and write.
    fn copy(&mut self, src: impl AsFd, dst: &TcpStream, len: u64) -> Result<(), CopyError> {
        let mut left = len;
        while left > 0 {
            let n = self.fill(&src, left).map_err(CopyError::Read)?;
            left -= n as u64;
            let flags = out_flags(left > 0);
            while self.held > 0 {
                let n = match retry(|| splice(&self.read, None, dst, None, self.held, flags)) {
                    // A request body to a backend (`upload`): room, or an
                    // early answer.
                    Err(e) if upload::waited(dst, &e).map_err(CopyError::Write)? => continue,
                    sent => sent.map_err(CopyError::Write)?,
                };
                if n == 0 {
                    return Err(CopyError::Write(io::ErrorKind::WriteZero.into()));
                }
                self.held -= n;
            }
        }
        Ok(())
    }
}

impl Pipe {
    /// Bytes in the pipe.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Splices up to `left` bytes (a pipeful at most) from `src` into the
    /// pipe; how many.
    pub fn fill(&mut self, src: impl AsFd, left: u64) -> io::Result<usize> {
        let want = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.capacity - self.held);
        let n = retry(|| {
            splice(
                &src,
                None,
                &self.write,
                None,
                want,
                SpliceFFlags::SPLICE_F_MOVE,
            )
        })?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.held += n;
        Ok(n)
    }

    /// Splices what the pipe holds to `dst`, a non-blocking socket, while
    /// it takes it: true once the pipe is empty, false when `dst` would
    /// block with bytes still in the pipe.  `more`: more of the body
    /// follows these bytes.
    pub fn drain_to(&mut self, dst: &TcpStream, more: bool) -> io::Result<bool> {
        let flags = out_flags(more);
        while self.held > 0 {
            match retry(|| splice(&self.read, None, dst, None, self.held, flags)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads what the pipe holds into `out`, emptying it.
    pub fn take_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = vec![0u8; self.held.min(1 << 16)];
        while self.held > 0 {
            let want = self.held.min(buf.len());
            let n = crate::sys::restarting(|| {
                nix::unistd::read(&self.read, &mut buf[..want]).map_err(io::Error::from)
            })?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out.extend_from_slice(&buf[..n]);
            self.held -= n;
        }
        Ok(())
    }
}

/// The flags of a splice(2) out of the pipe: MORE only while more of the
/// body follows, for on the last bytes it would hold back the final
/// segment.
fn out_flags(more: bool) -> SpliceFFlags {
    if more {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE
    } else {
        SpliceFFlags::SPLICE_F_MOVE
    }
}

/// Retries a splice(2) interrupted by a signal, as std's I/O does.
fn retry(mut call: impl FnMut() -> nix::Result<usize>) -> io::Result<usize> {
    crate::sys::restarting(|| call().map_err(io::Error::from))
}

/// Whether a body of `len` bytes, of which the reader already holds
/// `buffered`, is worth splicing.
pub fn worthwhile(len: u64, buffered: usize) -> bool {
    len.saturating_sub(buffered as u64) >= MIN_SPLICE
}

/// Sends `head` and a body of exactly `len` bytes from `src` to `dst`: the
/// head with whatever of the body `src` already read, in one writev(2),
/// then the rest spliced through `pipe`, which must be clean.
pub fn relay_length<R: Socket>(
    src: &mut Reader<R>,
    dst: &TcpStream,
    head: &[u8],
    len: u64,
    pipe: &mut Pipe,
) -> Result<u64, CopyError> {
    debug_assert!(pipe.is_clean());
    let take = src
        .buffered()
        .len()
        .min(usize::try_from(len).unwrap_or(usize::MAX));
    write_all_vectored(&mut Sending(dst), &[head, &src.buffered()[..take]])
        .map_err(CopyError::Write)?;
    src.consume(take);
    pipe.copy(src.get_ref().fd(), dst, len - take as u64)?;
    Ok(len)
}
