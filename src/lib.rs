//! pibl: a forking HTTP/1.1 reverse proxy and round-robin load balancer.
//!
//! `run` parses the command line and hands over to what it asks for:
//! serving (the models), the demo, or a cache command.  It maps errors to
//! exit statuses and holds no other logic.  The program is a library with
//! a one-line `main` so that the fuzz targets (fuzz/) can call the parsers.
//!
//! The layers, each using only those below it:
//!
//! - `demo`: the demo application and `pibl demo`;
//! - `models`: fork, prefork and thread — what serves connections;
//! - `proxy`: one connection, one exchange with a backend, the balancer;
//! - `cache`: the disk cache, its policy and its janitor;
//! - `tls`: HTTPS on rustls — handshakes, certificates, shared session
//!   tickets, and TLS to backends;
//! - `http`: message heads, bodies and conditional requests;
//! - process-wide pieces: `cli`, `config`, `log`, `signals`, `shm`, `sys`,
//!   `privileges`, `rlimit`, `sched`, `clock`, `error`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cache;
mod cli;
mod clock;
mod config;
mod demo;
mod error;
pub mod http;
mod log;
mod models;
mod privileges;
mod proxy;
mod rlimit;
mod sched;
mod shm;
mod signals;
mod stats;
mod status;
mod sys;
mod systemd;
pub mod tls;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Error;
use crate::log::AccessLog;
use crate::models::supervise::Reloader;
use crate::proxy::Context;

/// The whole program: what `main` runs.
pub fn run() -> ExitCode {
    // One line, no backtrace: a panic is a bug to report, not a crash dump.
    std::panic::set_hook(Box::new(|info| {
        diag!("internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli),
        Some(Command::Demo(args)) => demo::run(&cli, args),
        Some(Command::Backend(args)) => demo::backend::run(&cli, args),
        Some(Command::Cache(command)) => cli
            .load_config()
            .and_then(|config| cache::admin::run(&config, command)),
        Some(Command::Status(args)) => cli
            .load_config()
            .and_then(|config| status::client::run(&config, args.json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pibl: {e}");
            ExitCode::from(e.exit_status() as u8)
        }
    }
}

/// Serves until told to stop: everything that must be made before the
/// first fork is made here, in this order, then the models take over.
fn serve(cli: &Cli) -> Result<(), Error> {
    let config = cli.load_config()?;
    if cli.check {
        tls::check(&config)?;
        eprintln!("pibl: {}: configuration ok", config.path);
        return Ok(());
    }
    rlimit::raise_open_files(&config);
    // Fail now, with a clear message, rather than once per child.  This also
    // creates the file, so it can be handed to `user` below.
    AccessLog::open(&config.log_file, None).map_err(|e| {
        Error::os(
            format!("cannot open log file {}", config.log_file.display()),
            e,
        )
    })?;
    // Sockets systemd holds for pibl, or the pibl it upgrades hands over,
    // are used as they are; only what is not given is bound.
    systemd::take_upgrade_parent();
    tls::tickets::take_inherited_ring();
    proxy::balancer::take_inherited_health();
    let mut given = systemd::Inherited::take_from_environment()?;
    let listeners = models::listener::Listeners::open(&config, &mut given)?;
    // Before any shared page of a context, and kept by every reload.
    stats::init()?;
    let mut ctx = Context::build(config)?;
    ctx.https_port = listeners.https_port();
    ctx.status_listener = status::bind(&ctx.config, &mut given)?.map(std::sync::Arc::new);
    given.close_rest();
    let temp_dir = &ctx.config.buffering.temp_dir;
    proxy::spool::clear_dir(temp_dir).map_err(|e| {
        Error::os(
            format!("cannot use temporary directory {}", temp_dir.display()),
            e,
        )
    })?;
    let pid_file = cli.pid_file.as_deref().map(PidFile::write).transpose()?;
    let mut writable = vec![ctx.config.log_file.as_path(), temp_dir.as_path()];
    if ctx.cache.is_some() {
        writable.push(ctx.config.cache.dir.as_path());
    }
    privileges::drop_root(&ctx.config, &writable)?;
    log::set_diag_syslog(ctx.config.syslog.clone());
    log::share_hush()?;
    signals::share_stop()?;
    http::prepare();
    let reloader = Reloader {
        path: cli.config.clone(),
        overrides: cli.overrides(),
        program: models::upgrade::Program::at_start(cli.pid_file.clone()),
    };
    let result = models::run(listeners, ctx, reloader);
    drop(pid_file);
    result
}

/// `--pid-file`: written once listening, removed on exit.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, Error> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| Error::os(format!("cannot write pid file {}", path.display()), e))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    /// Removes the file if it is still this process's: after a binary
    /// upgrade the name holds the new parent's pid, and this one's went to
    /// `<file>.oldbin`.
    fn drop(&mut self) {
        let mut old = self.0.clone().into_os_string();
        old.push(".oldbin");
        let mine = format!("{}\n", std::process::id());
        for path in [self.0.clone(), std::path::PathBuf::from(old)] {
            if std::fs::read_to_string(&path).is_ok_and(|text| text == mine) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
