//! A TLS connection over a blocking socket, used as the socket is: `&Tls`
//! reads and writes plaintext, with the socket's own time limits
//! (SO_RCVTIMEO, SO_SNDTIMEO) on every wait.
//!
//! The relay holds a connection by shared reference on both sides at once
//! — the request reader and the response writer — as it holds a
//! `&TcpStream`; the rustls state sits in a `RefCell` for that.  A
//! connection belongs to one thread, and no borrow outlives a call.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::poll::PollFlags;
use rustls::Connection;

/// A TLS connection and the socket it runs over.
pub struct Tls {
    conn: RefCell<Connection>,
    sock: TcpStream,
}

impl Tls {
    pub fn new(conn: impl Into<Connection>, sock: TcpStream) -> Tls {
        Tls {
            conn: RefCell::new(conn.into()),
            sock,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Completes the handshake by `deadline`: each wait for the peer is
    /// bounded by what is left of it, so a peer that sends a byte at a
    /// time is dropped as surely as a silent one.
    pub fn handshake(&self, deadline: Instant) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        while conn.is_handshaking() {
            send_all(&mut conn, &self.sock)?;
            if !conn.is_handshaking() {
                break;
            }
            crate::sys::wait_until(&self.sock, PollFlags::POLLIN, deadline)?;
            if conn.read_tls(&mut &self.sock)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            process(&mut conn, &self.sock)?;
        }
        // TLS 1.3 tickets and the server's last flight go out now.
        send_all(&mut conn, &self.sock)
    }

    /// "TLSv1.3", "TLSv1.2": what nginx's `$ssl_protocol` says.
    pub fn protocol(&self) -> &'static str {
        match self.conn.borrow().protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        }
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.conn.borrow().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Whether plaintext, or records not yet decrypted, wait in rustls:
    /// bytes to read that poll(2) on the socket would not show.
    pub fn pending(&self) -> bool {
        let mut conn = self.conn.borrow_mut();
        match conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            // The read will say what went wrong.
            Err(_) => true,
        }
    }

    /// Reads plaintext; `now`: without waiting for the socket (WouldBlock
    /// when nothing has come).  A peer that closes without close_notify
    /// ends the stream as one that sends it: HTTP frames its messages,
    /// and nginx reads such a close the same way.
    fn read_plain(&self, buf: &mut [u8], now: bool) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // What the peer's records asked for (a key update's answer).
            send_all(&mut conn, &self.sock)?;
            let got = if now {
                conn.read_tls(&mut DontWait(&self.sock))?
            } else {
                conn.read_tls(&mut &self.sock)?
            };
            if got == 0 {
                return Ok(0);
            }
            process(&mut conn, &self.sock)?;
        }
    }

    /// Encrypts `bufs` (as much as rustls takes at once) and sends it.
    fn write_plain(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        let n = conn.writer().write_vectored(bufs)?;
        send_all(&mut conn, &self.sock)?;
        Ok(n)
    }

    /// Takes `parts` only if what was encrypted before has gone out, and
    /// sends what it can without waiting, unless `wait`: the bytes taken,
    /// 0 when the peer takes nothing now.  What is taken but not yet sent
    /// stays in rustls, to go out with the next call (`send_held`).
    pub fn send_some(&self, parts: &[&[u8]], wait: bool) -> io::Result<usize> {
        if !self.send_held(wait)? {
            return Ok(0);
        }
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut conn = self.conn.borrow_mut();
        let n = conn.writer().write_vectored(&slices)?;
        drop(conn);
        self.send_held(wait)?;
        Ok(n)
    }

    /// Sends what rustls holds; `wait`: all of it.  True when nothing is
    /// left held.
    pub fn send_held(&self, wait: bool) -> io::Result<bool> {
        let mut conn = self.conn.borrow_mut();
        if wait {
            send_all(&mut conn, &self.sock)?;
            return Ok(true);
        }
        while conn.wants_write() {
            match conn.write_tls(&mut DontWait(&self.sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether encrypted bytes wait to be sent.
    pub fn holds_output(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Says close_notify, as a TLS peer closes: before a close, or before
    /// the write side is shut for a lingering close.  Without waiting: a
    /// client that stopped reading must not hold the connection open for
    /// another send timeout.
    pub fn close_notify(&self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.send_held(false);
    }
}

impl Read for &Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf, false)
    }
}

impl Write for &Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_plain(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls {
    /// `read` without waiting: WouldBlock when nothing has come.
    pub fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf, true)
    }
}

/// Decrypts what has been read; a peer that breaks the protocol is told
/// why (the alert rustls queued) before the error goes up.
fn process(conn: &mut Connection, sock: &TcpStream) -> io::Result<()> {
    match conn.process_new_packets() {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = send_all(conn, sock);
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// Sends every encrypted byte rustls holds, waiting as a blocking socket
/// does (within SO_SNDTIMEO).
fn send_all(conn: &mut Connection, mut sock: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket, read and written with MSG_DONTWAIT: a would-block is an
/// error at once, whatever the socket's own mode.
struct DontWait<'a>(&'a TcpStream);

impl Read for DontWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        recv(self.0.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

impl Write for DontWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        sendmsg::<SockaddrStorage>(self.0.as_raw_fd(), bufs, &[], flags, None)
            .map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
