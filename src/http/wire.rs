//! Buffered reading and vectored writing on sockets.
//!
//! `Reader` keeps the bytes read past the end of one message (the next
//! pipelined request, the start of a body) for the next reader of the stream,
//! which `std::io::BufReader` hides behind its `BufRead` interface.
//!
//! Its buffer is zeroed only as far as reads have reached: a child that
//! serves small messages touches a page or two of it, not all 64 KiB, and
//! each page not touched is a page fault not taken.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The first stretch of a buffer that reads may use; it doubles each
/// time a read fills what there is, up to the capacity, so a long body is
/// read in reads of the whole capacity, not of the first stretch.
const FIRST_WINDOW: usize = 4096;

pub struct Reader<R> {
    inner: R,
    /// `buf.len()` is the zeroed, usable part; `buf.capacity()` the most
    /// (growing within it never reallocates).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled the window: the next one gets a wider one,
    /// even if everything read has been consumed since (as a body copy
    /// does after each read).
    widen: bool,
}

impl<R: Read> Reader<R> {
    pub fn with_capacity(inner: R, capacity: usize) -> Reader<R> {
        Reader::with_buffer(inner, Vec::with_capacity(capacity))
    }

    /// A reader that uses `buf` (whose bytes count for nothing), as
    /// returned by `into_parts`: no allocation, and no zeroing again, per
    /// backend exchange.
    pub fn with_buffer(inner: R, buf: Vec<u8>) -> Reader<R> {
        Reader {
            inner,
            buf,
            start: 0,
            end: 0,
            widen: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The stream, for another reader; whatever is buffered is lost.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The stream and the buffer, for reuse; whatever is buffered is lost.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.inner, self.buf)
    }

    /// The bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consume past buffered bytes");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// True when the buffer holds as much unconsumed data as it can.
    pub fn is_full(&self) -> bool {
        self.end - self.start == self.buf.capacity()
    }

    /// Reads once more from the stream, after what is buffered.  Returns the
    /// number of new bytes: 0 means end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        self.fill_by(|inner, buf| inner.read(buf))
    }

    /// `fill`, reading with `read` rather than the stream's own `read`.
    fn fill_by(
        &mut self,
        mut read: impl FnMut(&mut R, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let capacity = self.buf.capacity();
        if (self.end == self.buf.len() || self.widen) && self.buf.len() < capacity {
            let grown = (self.buf.len() * 2).max(FIRST_WINDOW).min(capacity);
            self.buf.resize(grown, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("read buffer full"));
        }
        loop {
            match read(&mut self.inner, &mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    self.widen = n > 0 && self.end == self.buf.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure something is buffered; false at end of stream.
    pub fn fill_some(&mut self) -> io::Result<bool> {
        Ok(!self.buffered().is_empty() || self.fill()? > 0)
    }

    /// Buffers one line ending in CRLF, of at most `max` bytes, and returns
    /// its length including the CRLF.  A line ending in a bare LF, or one
    /// longer than `max`, is an InvalidData error.
    pub fn line(&mut self, max: usize) -> io::Result<usize> {
        let mut searched = 0;
        loop {
            let buffered = self.buffered();
            if let Some(i) = buffered[searched..].iter().position(|&b| b == b'\n') {
                let len = searched + i + 1;
                if len > max {
                    return Err(invalid("line too long"));
                }
                if len < 2 || buffered[len - 2] != b'\r' {
                    return Err(invalid("line ends in a bare LF"));
                }
                return Ok(len);
            }
            searched = buffered.len();
            if searched >= max || self.is_full() {
                return Err(invalid("line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A stream `Reader` reads from that is a socket underneath: what a
/// wait in poll(2) and a read that must not wait need of it.
pub trait Socket: Read {
    /// The socket, to poll.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Reads what has come, without waiting: a WouldBlock error when
    /// nothing has.
    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        recv(self.fd().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }

    /// Whether bytes wait to be read that poll(2) on the socket would not
    /// show (a TLS layer's decrypted plaintext).
    fn pending(&self) -> bool {
        false
    }
}

impl Socket for &std::net::TcpStream {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl Socket for std::net::TcpStream {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl<R: Socket> Reader<R> {
    /// `fill` without waiting: a WouldBlock error when the socket has
    /// nothing yet.
    pub fn fill_now(&mut self) -> io::Result<usize> {
        self.fill_by(|inner, buf| inner.read_now(buf))
    }
}

pub fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes every byte of every slice, with as few writev(2) calls as the
/// kernel allows: one, normally, for a chunk's size line, data and CRLF.
pub fn write_all_vectored(out: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut done = 0usize; // bytes written so far, across all parts
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while done < total {
        let mut skip = done;
        let slices: Vec<IoSlice<'_>> = parts
            .iter()
            .filter_map(|p| {
                if skip >= p.len() {
                    skip -= p.len();
                    None
                } else {
                    let s = IoSlice::new(&p[skip..]);
                    skip = 0;
                    Some(s)
                }
            })
            .collect();
        match out.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_leftovers() {
        let mut r = Reader::with_capacity(&b"5\r\nhello\r\n0\r\n\r\nnext"[..], 8);
        assert_eq!(r.line(100).unwrap(), 3);
        assert_eq!(&r.buffered()[..1], b"5");
        r.consume(3);
        r.fill().unwrap();
        assert_eq!(&r.buffered()[..5], b"hello");
    }

    #[test]
    fn bare_lf_and_long_lines_are_refused() {
        let mut r = Reader::with_capacity(&b"abc\n"[..], 16);
        assert_eq!(r.line(100).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut r = Reader::with_capacity(&b"abcdefghijkl\r\n"[..], 64);
        assert_eq!(r.line(4).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// A source that hands out as much as asked, and counts the reads.
    struct Plenty {
        left: usize,
        reads: usize,
    }

    impl Read for Plenty {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.left);
            buf[..n].fill(b'x');
            self.left -= n;
            self.reads += 1;
            Ok(n)
        }
    }

    #[test]
    fn a_long_copy_reads_with_the_whole_capacity() {
        // As a body copy does: read, consume everything, read again.
        let mut r = Reader::with_capacity(
            Plenty {
                left: 1 << 20,
                reads: 0,
            },
            64 * 1024,
        );
        let mut sizes = Vec::new();
        while r.fill_some().unwrap() {
            sizes.push(r.buffered().len());
            let n = r.buffered().len();
            r.consume(n);
        }
        assert_eq!(sizes.iter().sum::<usize>(), 1 << 20);
        assert_eq!(&sizes[..5], [4096, 8192, 16384, 32768, 65536]);
        // Every read after the ramp takes all 64 KiB (the last takes what is left).
        assert!(
            sizes[5..sizes.len() - 1].iter().all(|&n| n == 65536),
            "{sizes:?}"
        );
        assert_eq!(r.get_ref().reads, sizes.len() + 1);
    }

    #[test]
    fn a_short_message_touches_only_the_first_window() {
        let mut r = Reader::with_capacity(&[b'y'; 100][..], 64 * 1024);
        while r.fill_some().unwrap() {
            let n = r.buffered().len();
            r.consume(n);
        }
        assert_eq!(r.buf.len(), FIRST_WINDOW);
    }

    #[test]
    fn vectored_write_survives_short_writes() {
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Dribble(Vec::new());
        write_all_vectored(&mut d, &[b"ab", b"", b"cdefg", b"h"]).unwrap();
        assert_eq!(d.0, b"abcdefgh");
    }
}
