//! TLS, on rustls: the `stream` a connection is read and written through
//! once its handshake is done; the `server` side — `certs` chosen by SNI,
//! session `tickets` under keys shared by every process — and the
//! `client` side, for backends reached over `https://`.
//!
//! Everything here is made before the first fork (the server and client
//! configurations, the ticket keys' shared page); each child, worker or
//! thread does its own handshakes with it.

pub mod certs;
pub mod client;
pub mod server;
pub mod stream;
pub mod tickets;

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};

use crate::http::wire::Socket;
pub use stream::Tls;

/// Reads and checks every file `config`'s TLS names, as a start would
/// (`pibl --check`): certificates, keys and that they match, CA bundles,
/// ticket keys.  An expired certificate is a warning, said, not an error.
pub fn check(config: &crate::config::Config) -> Result<(), crate::error::Error> {
    let tls = config.tls.as_ref();
    if let Some(t) = tls.filter(|t| t.port.is_some()) {
        server::config(t)?;
    }
    let for_backends = tls.is_some_and(|t| t.backend_ca.is_some() || t.backend_client.is_some());
    if for_backends || config.backends.iter().any(|b| b.tls) {
        client::config(tls)?;
    }
    Ok(())
}

/// How much of a file goes through memory at a time on its way to TLS:
/// a few records' worth.
const SEND_FILE_CHUNK: u64 = 64 * 1024;

/// A client connection as the relay reads and writes it: the socket
/// itself, or TLS over it.
#[derive(Clone, Copy)]
pub enum Stream<'a> {
    Plain(&'a TcpStream),
    Tls(&'a Tls),
}

impl<'a> Stream<'a> {
    /// The socket underneath, to poll, time out and shut.
    pub fn socket(self) -> &'a TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.socket(),
        }
    }

    /// The socket, when bytes go to it as they are: splice(2) and
    /// sendfile(2) may write to it.
    pub fn plain(self) -> Option<&'a TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// The TLS protocol version, for the access log; `None` on plain HTTP.
    pub fn protocol(self) -> Option<&'static str> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t.protocol()),
        }
    }

    /// Sends the bytes `range` of `file`: with sendfile(2) on a plain
    /// socket; read and encrypted on TLS, which the kernel cannot do here.
    pub fn send_file(self, file: &std::fs::File, range: std::ops::Range<u64>) -> io::Result<()> {
        let tls = match self {
            Stream::Plain(s) => return crate::sys::send_file(s, file, range),
            Stream::Tls(t) => t,
        };
        let mut buf = vec![0u8; (range.end - range.start).min(SEND_FILE_CHUNK) as usize];
        let mut at = range.start;
        while at < range.end {
            let want = ((range.end - at) as usize).min(buf.len());
            let n = std::os::unix::fs::FileExt::read_at(file, &mut buf[..want], at)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            (&mut &*tls).write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Before a close that must not lose what was sent: close_notify on
    /// TLS (a plain socket needs nothing).
    pub fn close_notify(self) {
        if let Stream::Tls(t) = self {
            t.close_notify();
        }
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for Stream<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }

    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_now(buf),
            Stream::Tls(t) => t.read_now(buf),
        }
    }

    fn pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.pending(),
        }
    }
}

/// A backend connection: owned, kept in the pool between requests.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

impl Upstream {
    /// As the relay writes to it and reads from it.
    pub fn stream(&self) -> Stream<'_> {
        match self {
            Upstream::Plain(s) => Stream::Plain(s),
            Upstream::Tls(t) => Stream::Tls(t),
        }
    }

    pub fn socket(&self) -> &TcpStream {
        self.stream().socket()
    }
}

impl Read for Upstream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream().read(buf)
    }
}

impl Socket for Upstream {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }

    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream().read_now(buf)
    }

    fn pending(&self) -> bool {
        self.stream().pending()
    }
}
