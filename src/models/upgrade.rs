//! The binary upgrade, as nginx's SIGUSR2: the parent starts its binary
//! again — the path it resolved at start, with the arguments it was given
//! — handing over its listening sockets as inherited descriptors
//! (`systemd::UPGRADE_FDS`).  The new parent loads and checks its
//! configuration, takes the sockets instead of binding, serves, and only
//! then tells the old one (SIGTERM, `systemd::tell_upgraded_parent`),
//! which stops accepting, lets its children finish, and exits.  Should
//! the new one fail first (a bad configuration, a crash), the old one
//! reaps it, says so, and goes on as if nothing had happened.
//!
//! Handed over besides the sockets: the memory file of the TLS ticket keys
//! (`tls::tickets::UPGRADE_TICKETS`), so sessions resume across the
//! upgrade, and the backends' health (`proxy::balancer::UPGRADE_HEALTH`).
//!
//! The pid file follows the serving parent: the old one renames its file
//! to `<file>.oldbin` when it starts the new binary, which writes its own
//! at `<file>`; a failed upgrade renames it back.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::models::listener::Listeners;
use crate::proxy::Context;
use crate::proxy::balancer::UPGRADE_HEALTH;
use crate::systemd::{UPGRADE_FDS, UPGRADE_FROM};
use crate::tls::tickets::UPGRADE_TICKETS;
use crate::{diag, notice};

/// What starting pibl again takes: resolved at start, since the binary's
/// file may be replaced (the point of an upgrade) and `/proc/self/exe`
/// then names a deleted file.
#[derive(Debug, Clone)]
pub struct Program {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub pid_file: Option<PathBuf>,
}

impl Program {
    pub fn at_start(pid_file: Option<PathBuf>) -> Option<Program> {
        let exe = std::env::current_exe().ok()?;
        Some(Program {
            exe,
            args: std::env::args_os().skip(1).collect(),
            pid_file: pid_file.map(|p| std::path::absolute(&p).unwrap_or(p)),
        })
    }

    fn old_pid_file(&self) -> Option<(PathBuf, PathBuf)> {
        let file = self.pid_file.clone()?;
        let mut old = file.clone().into_os_string();
        old.push(".oldbin");
        Some((file, PathBuf::from(old)))
    }
}

/// An upgrade under way: the new binary's pid, until it serves (and this
/// parent is told to stop) or fails.
#[derive(Default)]
pub struct Upgrade {
    child: Option<Pid>,
}

impl Upgrade {
    /// SIGUSR2: starts the new binary with `listeners` and `status`.
    pub fn start(&mut self, program: Option<&Program>, listeners: &Listeners, ctx: &Context) {
        let status = ctx.status_listener.as_deref();
        if let Some(pid) = self.child {
            diag!("upgrade: the new binary (pid {pid}) has not served yet; SIGUSR2 ignored");
            return;
        }
        let Some(program) = program else {
            diag!("upgrade: cannot find this program's own path; SIGUSR2 ignored");
            return;
        };
        let mut handed: Vec<&TcpListener> = listeners.each().map(|(l, _)| l).collect();
        handed.extend(status);
        let mut fds: Vec<i32> = handed.iter().map(|l| l.as_raw_fd()).collect();
        let tickets = crate::tls::tickets::ring_file();
        fds.extend(tickets);
        if let Some((file, old)) = program.old_pid_file() {
            let _ = std::fs::rename(&file, &old);
        }
        let mut command = Command::new(&program.exe);
        command
            .args(&program.args)
            .env(UPGRADE_FDS, crate::systemd::fd_list(&handed))
            .env(UPGRADE_FROM, std::process::id().to_string())
            .env(UPGRADE_HEALTH, ctx.balancer.health_report());
        if let Some(fd) = tickets {
            command.env(UPGRADE_TICKETS, fd.to_string());
        }
        // SAFETY: between fork and exec the closure only calls fcntl(2),
        // which is async-signal-safe, on descriptors it was given.
        unsafe {
            command.pre_exec(move || {
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        match command.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                notice!(
                    "upgrade: started {} as pid {pid}; this parent stops once it serves",
                    program.exe.display()
                );
                self.child = Some(pid);
            }
            Err(e) => {
                diag!(
                    "upgrade: cannot start {}: {}; still serving",
                    program.exe.display(),
                    crate::error::describe_io(&e)
                );
                self.restore_pid_file(program);
            }
        }
    }

    /// Whether the listeners are the new binary's too: then stopping must
    /// close this process's descriptors only, never shut the sockets down
    /// (`listener::stop_listening`), which would stop them for it as well.
    pub fn handed_over(&self) -> bool {
        self.child.is_some()
    }

    /// Whether `pid`, reaped, was the new binary: it ended before it
    /// served, so this parent goes on.
    pub fn reaped(&mut self, pid: Pid, status: WaitStatus, program: Option<&Program>) -> bool {
        if self.child != Some(pid) {
            return false;
        }
        self.child = None;
        let how = match status {
            WaitStatus::Exited(_, code) => format!("exited with status {code}"),
            WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
            _ => "ended".to_string(),
        };
        diag!("upgrade: the new binary (pid {pid}) {how} before it served; still serving");
        if let Some(program) = program {
            self.restore_pid_file(program);
        }
        true
    }

    /// Reaps the new binary if it has ended (the thread model, which has no
    /// children of its own to reap).
    pub fn reap(&mut self, program: Option<&Program>) {
        use nix::sys::wait::{WaitPidFlag, waitpid};
        if let Some(pid) = self.child
            && let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
            && status != WaitStatus::StillAlive
        {
            self.reaped(pid, status, program);
        }
    }

    fn restore_pid_file(&self, program: &Program) {
        if let Some((file, old)) = program.old_pid_file() {
            let _ = std::fs::rename(&old, &file);
        }
    }
}
