//! The system calls that neither std nor nix wraps the way pibl needs,
//! gathered here so that every raw `libc` call and its SAFETY note can be
//! read together.  Each function is a thin, safe wrapper: it takes owned
//! or borrowed Rust values and returns `io::Result`, and none keeps a
//! pointer past the call.
//!
//! Elsewhere, `unsafe` stays with what it is about: fork(2) in
//! `models::fork`, sigaction(2) in `signals`, mmap(2) in `shm`.

use std::fs::File;
use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// Calls `call` again for as long as a signal interrupts it.  For the
/// waits pibl does not mean a signal to end, such as flock(2)'s for the log
/// file: the stop signals' handlers have no SA_RESTART, so that they do
/// end the waits meant to be ended (between requests, in accept), and a
/// second stop signal — Ctrl-C at a terminal signals every process of the
/// group, and the parent passes the stop on too — would otherwise make a
/// stopping worker give up the log lines it holds.
pub fn restarting<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// Waits until `fd` has one of `events` (POLLIN, POLLOUT), at most until
/// `deadline`: a TimedOut error after that, as a socket's own time limit
/// gives.
pub fn wait_until(
    fd: impl AsFd,
    events: nix::poll::PollFlags,
    deadline: std::time::Instant,
) -> io::Result<()> {
    use nix::poll::{PollFd, PollTimeout, poll};
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::ZERO);
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    match restarting(|| poll(&mut fds, ms).map_err(io::Error::from))? {
        0 => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    }
}

/// accept4(2) once, close-on-exec, with the peer's address (no
/// getpeername(2) after it).  Once: std's `accept` tries again after
/// EINTR, and a prefork worker must see the signal that interrupted it.
pub fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: an all-zero sockaddr_storage is a valid (empty) address.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: addr and len describe a buffer the kernel may fill.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut addr).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: the kernel wrote `len` bytes of an address to `addr`.
    let peer =
        unsafe { SockaddrStorage::from_raw((&raw const addr).cast(), Some(len)) }.and_then(|a| {
            a.as_sockaddr_in()
                .map(|&v4| SocketAddr::from(v4))
                .or_else(|| a.as_sockaddr_in6().map(|&v6| SocketAddr::from(v6)))
        });
    // A listener of pibl's is IPv4 or IPv6; anything else is not a client.
    let peer = peer.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTCONN))?;
    Ok((stream, peer))
}

/// How many connections wait in `listener`'s accept queue: for a socket in
/// the LISTEN state, Linux reports that length as TCP_INFO's `tcpi_unacked`.
/// 0 when it cannot be read.
pub fn queued_connections(listener: &TcpListener) -> usize {
    // SAFETY: tcp_info is plain integers, for which zero is a valid value.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let done = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if done == 0 {
        info.tcpi_unacked as usize
    } else {
        0
    }
}

/// Sets TCP_DEFER_ACCEPT on a listening socket: a connection is queued for
/// accept(2) once data has arrived on it, or after `seconds`.
pub fn set_defer_accept(fd: &impl AsRawFd, seconds: libc::c_int) -> io::Result<()> {
    // SAFETY: the option's value is a c_int, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            mem::size_of_val(&seconds) as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the bytes `range` of `file` to `out` inside the kernel, with
/// sendfile(2), to the end or an error.
pub fn send_file(out: impl AsFd, file: &File, range: Range<u64>) -> io::Result<()> {
    let mut offset = range.start as libc::off_t;
    while (offset as u64) < range.end {
        let left = (range.end - offset as u64).min(1 << 30) as usize;
        match nix::sys::sendfile::sendfile(&out, file, Some(&mut offset), left) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// _exit(2): ends the process without the C library's exit handlers and
/// stdio clean-up.  A forked child that has flushed what it must has
/// nothing for them to do, and running them touches pages it has not
/// touched yet — each a page fault.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and does not return.
    unsafe { libc::_exit(code) }
}

/// The calling thread's scheduling policy (sched_getscheduler(2)).
pub fn scheduler() -> io::Result<libc::c_int> {
    // SAFETY: no pointers; 0 is the calling thread.
    match unsafe { libc::sched_getscheduler(0) } {
        -1 => Err(io::Error::last_os_error()),
        policy => Ok(policy),
    }
}

/// Puts the calling thread under `policy` at priority 0, as SCHED_OTHER,
/// SCHED_BATCH and SCHED_IDLE take (sched_setscheduler(2)).
pub fn set_scheduler(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param that outlives the call; 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets glibc's malloc make up to `arenas` arenas (mallopt(3)
/// M_ARENA_MAX); a no-op with other C libraries.
pub fn set_malloc_arenas(arenas: usize) {
    #[cfg(target_env = "gnu")]
    {
        let arenas = i32::try_from(arenas).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes two integers and changes a malloc setting.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}
