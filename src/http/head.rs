//! Reading one message head off a connection, within the bounds pibl
//! sets: its size, its first line's length, and the time it may take.
//! Used for requests, responses and health checks alike.

use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::wire::{Reader, Socket};
use super::{Parsed, Reject};

/// Why a head could not be read.
pub enum HeadError {
    /// Not a head pibl accepts: the status to answer with, and why.
    Reject(Reject),
    /// The connection failed, ended, or took too long.
    Io(io::Error),
}

/// Whether `e` is a read or write that ran out of time (SO_RCVTIMEO and
/// SO_SNDTIMEO report EAGAIN).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Bounds on reading one head.
pub struct HeadRules {
    /// Largest head (431 beyond).
    pub max_size: usize,
    /// Longest first line (414 beyond); requests only.
    pub max_line: Option<usize>,
    /// When the whole head must be in, once its first byte is.
    pub deadline: Option<Instant>,
}

impl HeadRules {
    pub fn for_response(max_size: usize) -> HeadRules {
        HeadRules {
            max_size,
            max_line: None,
            deadline: None,
        }
    }
}

fn too_large(status: u16, why: &'static str) -> HeadError {
    HeadError::Reject(Reject { status, why })
}

/// Waits until `fd` is readable, at most until `deadline`.
fn wait_readable(fd: impl AsFd, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::ZERO);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, ms) {
        Ok(0) => Err(io::ErrorKind::TimedOut.into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads one head with `parse`, leaving what follows it buffered.
/// `Ok(None)`: the stream ended before its first byte.
pub fn read_head<R: Socket, T>(
    reader: &mut Reader<R>,
    rules: &HeadRules,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, Reject>,
) -> Result<Option<T>, HeadError> {
    loop {
        let buffered = reader.buffered();
        if let Some(max_line) = rules.max_line {
            let line = buffered
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(buffered.len());
            if line > max_line {
                return Err(too_large(414, "request line too long"));
            }
        }
        if !buffered.is_empty() {
            match parse(buffered).map_err(HeadError::Reject)? {
                Parsed::Done(_, len) if len > rules.max_size => {
                    return Err(too_large(431, "head too large"));
                }
                Parsed::Done(head, len) => {
                    reader.consume(len);
                    return Ok(Some(head));
                }
                Parsed::Partial if buffered.len() >= rules.max_size || reader.is_full() => {
                    return Err(too_large(431, "head too large"));
                }
                Parsed::Partial => {}
            }
        }
        let idle = reader.buffered().is_empty();
        if let (false, Some(deadline)) = (idle, rules.deadline)
            && !reader.get_ref().pending()
        {
            wait_readable(reader.get_ref().fd(), deadline).map_err(HeadError::Io)?;
        }
        match reader.fill() {
            Ok(0) if idle => return Ok(None),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}
