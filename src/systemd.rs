//! What systemd offers a daemon, by its documented protocols and without
//! libsystemd: listening sockets it holds for pibl (socket activation,
//! sd_listen_fds(3)) and readiness notifications (sd_notify(3)).  A binary
//! upgrade hands the sockets to the new pibl the same way, under a name of
//! its own (`UPGRADE_FDS`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::diag;
use crate::error::Error;

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;
/// The listening descriptors an upgrading pibl hands its new binary:
/// their numbers, comma-separated.
pub const UPGRADE_FDS: &str = "PIBL_UPGRADE_FDS";
/// The pid of the parent that started this pibl as its upgrade.
pub const UPGRADE_FROM: &str = "PIBL_UPGRADE_FROM";

/// The parent this pibl upgrades, read at start (`take_upgrade_parent`).
static UPGRADED_FROM: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Notes which parent started this pibl as its upgrade, if one did (and
/// removes the variable: pibl's own upgrade sets it afresh).
pub fn take_upgrade_parent() {
    if let Some(pid) = std::env::var(UPGRADE_FROM)
        .ok()
        .and_then(|p| p.parse().ok())
    {
        let _ = UPGRADED_FROM.set(pid);
    }
    // SAFETY: called at start, before pibl starts any thread.
    unsafe { std::env::remove_var(UPGRADE_FROM) };
}

/// Once this pibl serves: tells the parent it upgrades to stop (SIGTERM:
/// it stops accepting, its children finish, it exits), and the service
/// manager that this is the main process now.
pub fn tell_upgraded_parent() {
    let Some(&pid) = UPGRADED_FROM.get() else {
        return;
    };
    let old = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGTERM) {
        Ok(()) => crate::notice!("upgrade: serving; the old parent (pid {pid}) stops"),
        Err(e) => diag!(
            "upgrade: cannot tell the old parent (pid {pid}) to stop: {}",
            e.desc()
        ),
    }
}

/// Listening sockets pibl was given rather than bound: by systemd, or by
/// the pibl it upgrades.  Each is taken by the listener whose address it
/// has; what no listener takes is closed, and said.
pub struct Inherited(Vec<TcpListener>);

impl Inherited {
    /// The sockets this process was given, read once at start (and the
    /// variables that gave them removed, so that nothing pibl starts
    /// takes them for its own).
    pub fn take_from_environment() -> Result<Inherited, Error> {
        let mut fds = systemd_fds()?;
        fds.extend(upgrade_fds()?);
        let listeners = fds
            .into_iter()
            .map(listener_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inherited(listeners))
    }

    /// The given socket listening on `addr`, if any.  A wildcard address
    /// (0.0.0.0 or ::) matches a given wildcard socket of either family on
    /// the same port: systemd's `ListenStream=8080` is `[::]:8080`.  Port 0
    /// (`--port 0`: any port) takes the first given on the same address,
    /// in the order an upgrading pibl hands them over (plain, HTTPS,
    /// status), which is the order they are taken in.
    pub fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let same_ip = |a: SocketAddr| {
            a.ip() == addr.ip() || (a.ip().is_unspecified() && addr.ip().is_unspecified())
        };
        let at = self.0.iter().position(|l| {
            l.local_addr()
                .is_ok_and(|a| same_ip(a) && (a.port() == addr.port() || addr.port() == 0))
        })?;
        Some(self.0.remove(at))
    }

    /// Closes what no listener took, saying so.
    pub fn close_rest(self) {
        for listener in self.0 {
            let addr = listener
                .local_addr()
                .map_or("?".to_string(), |a| a.to_string());
            diag!("a socket given on {addr} matches no listener of the configuration; closed");
        }
    }
}

/// The descriptors of sd_listen_fds(3): LISTEN_FDS of them from 3, when
/// LISTEN_PID is this process.
fn systemd_fds() -> Result<Vec<RawFd>, Error> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at start, before pibl starts any thread.
        unsafe { std::env::remove_var(var) };
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: RawFd = count
        .parse()
        .map_err(|_| Error::Failed(format!("LISTEN_FDS={count} is not a number")))?;
    Ok((LISTEN_FDS_START..LISTEN_FDS_START + n).collect())
}

/// The descriptors an upgrading pibl handed over (`UPGRADE_FDS`).
fn upgrade_fds() -> Result<Vec<RawFd>, Error> {
    let Ok(list) = std::env::var(UPGRADE_FDS) else {
        return Ok(Vec::new());
    };
    // SAFETY: called at start, before pibl starts any thread.
    unsafe { std::env::remove_var(UPGRADE_FDS) };
    list.split(',')
        .map(|n| {
            n.trim().parse().map_err(|_| {
                Error::Failed(format!("{UPGRADE_FDS}={list} is not a list of descriptors"))
            })
        })
        .collect()
}

/// Descriptor `fd` as a listening TCP socket, close-on-exec and
/// non-blocking as pibl's own (`listener::bind`); an error if it is not one.
fn listener_of(fd: RawFd) -> Result<TcpListener, Error> {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    use nix::sys::socket::{getsockopt, sockopt};
    let not_one = |why: &str| Error::Failed(format!("descriptor {fd} given to pibl {why}"));
    // SAFETY: the descriptor was given to this process to own (above),
    // and nothing else in it refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening =
        getsockopt(&owned, sockopt::AcceptConn).map_err(|_| not_one("is not a socket"))?;
    let stream = getsockopt(&owned, sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    if !listening || !stream {
        return Err(not_one("is not a listening stream socket"));
    }
    let fail = |e: nix::errno::Errno| Error::os(format!("descriptor {fd}"), e.into());
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(fail)?;
    let flags = OFlag::from_bits_truncate(fcntl(&owned, FcntlArg::F_GETFL).map_err(fail)?);
    fcntl(&owned, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(fail)?;
    Ok(TcpListener::from(owned))
}

/// The descriptors of `listeners`, for `UPGRADE_FDS`.
pub fn fd_list(listeners: &[&TcpListener]) -> String {
    listeners
        .iter()
        .map(|l| l.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Tells the service manager `state` (sd_notify(3): `READY=1`,
/// `RELOADING=1`, `STOPPING=1`, `MAINPID=N`), when it asked
/// (`NOTIFY_SOCKET`); nothing otherwise.  A message that cannot be sent is
/// said once: systemd would then wait, and time pibl out.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        diag!(
            "cannot notify the service manager ({state}): {}",
            crate::error::describe_io(&e)
        );
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // An abstract socket: its name without the @.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name)?
        }
        None => UnixAddr::from_pathname(path)?,
    };
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
