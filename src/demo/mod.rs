//! `pibl demo`: one replica of the demo application per configured backend,
//! and the proxy, in the foreground.  Ctrl-C (or SIGTERM) stops them all.
//!
//! It serves HTTPS too, with a certificate it makes (`tls`), and says how
//! to try it, and where the status page is when pibl.conf has one.
//!
//! Each piece is this same binary, started as its own process, exactly as a
//! user would start it by hand; the demo only starts, watches and stops them.

pub mod backend;
mod tls;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::unistd::Pid;

use crate::cli::{Cli, DemoArgs};
use crate::error::Error;

/// How long a replica may take to start listening.
const REPLICA_START_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(cli: &Cli, args: &DemoArgs) -> Result<(), Error> {
    let config = cli.load_config()?;
    let https = tls::prepare(&cli.config, &config, args.https_port)?;
    let exe =
        std::env::current_exe().map_err(|e| Error::os("cannot find the pibl executable", e))?;
    // Blocked before any process starts, so no signal can slip past
    // sigwait(2) below.  spawn() clears the mask again in each piece.
    let mut watched = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        watched.add(s);
    }
    watched
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| Error::os("cannot block signals", e.into()))?;

    let mut children = Vec::new();
    let started = start_all(&exe, cli, &config, &https.config, &mut children);
    if let (Ok(()), Some(line)) = (&started, &https.try_line) {
        crate::notice!("demo: HTTPS too; try: {line}");
    }
    if let (Ok(()), Some(status)) = (&started, &config.status) {
        crate::notice!(
            "demo: status page at http://{}/ (pibl status in a terminal)",
            status.addr
        );
    }
    let outcome = match started {
        Ok(()) => watch(&watched, &mut children),
        Err(e) => Err(e),
    };
    stop_all(&mut children);
    outcome
}

fn start_all(
    exe: &std::path::Path,
    cli: &Cli,
    config: &crate::config::Config,
    proxy_config: &std::path::Path,
    children: &mut Vec<Child>,
) -> Result<(), Error> {
    for (i, backend) in config.backends.iter().enumerate() {
        let mut cmd = Command::new(exe);
        cmd.arg("backend")
            .arg("--listen")
            .arg(backend.addr.ip().to_string())
            .arg("--port")
            .arg(backend.addr.port().to_string())
            .arg("--name")
            .arg(format!("replica-{}", i + 1));
        children.push(spawn(cmd)?);
        wait_listening(backend.addr, children.last_mut().expect("just pushed"))?;
    }
    let mut proxy = Command::new(exe);
    proxy.arg("--config").arg(proxy_config);
    if let Some(port) = cli.port {
        proxy.arg("--port").arg(port.to_string());
    }
    if let Some(listen) = cli.listen {
        proxy.arg("--listen").arg(listen.to_string());
    }
    children.push(spawn(proxy)?);
    Ok(())
}

fn spawn(mut cmd: Command) -> Result<Child, Error> {
    // SAFETY: the closure runs between fork and exec and calls only
    // sigprocmask(2) and prctl(2), both async-signal-safe.  The first undoes
    // the demo's blocked signals, which exec would otherwise pass on; the
    // second makes the piece die with the demo, even on SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty().thread_set_mask()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::os("cannot start a demo process", e))
}

/// Polls until the replica accepts connections, or fails if it exits or
/// takes too long.
fn wait_listening(addr: SocketAddr, replica: &mut Child) -> Result<(), Error> {
    let deadline = Instant::now() + REPLICA_START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        let failed = |why: &str| Error::Failed(format!("replica on {addr} {why}"));
        if let Ok(Some(_)) = replica.try_wait() {
            return Err(failed("exited"));
        }
        if Instant::now() > deadline {
            return Err(failed("did not start listening"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for Ctrl-C or SIGTERM (a clean stop), or for a piece to exit on
/// its own (an error: the demo is incomplete without it).
fn watch(watched: &SigSet, children: &mut [Child]) -> Result<(), Error> {
    loop {
        match watched.wait() {
            Ok(Signal::SIGCHLD) => {
                for child in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let id = child.id();
                        let why = format!("demo process {id} ended ({status}); the demo stopped");
                        return Err(Error::Failed(why));
                    }
                }
            }
            Ok(_) => return Ok(()),
            Err(e) => return Err(Error::os("sigwait", e.into())),
        }
    }
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut().rev() {
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}
