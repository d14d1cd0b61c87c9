//! pibl: a forking HTTP/1.1 reverse proxy and round-robin load balancer.
//!
//! main parses the command line, loads the configuration, binds, and hands
//! over to the parent loop (or to the demo).  It maps errors to exit
//! statuses and holds no other logic.

#![deny(clippy::undocumented_unsafe_blocks)]

mod backend_app;
mod balancer;
mod body;
mod child;
mod cli;
mod clock;
mod config;
mod demo;
mod error;
mod http;
mod log;
mod parent;
mod relay;
mod shm;
mod signals;
mod wire;

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;

use crate::balancer::Balancer;
use crate::child::Context;
use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::Error;
use crate::log::AccessLog;
use crate::shm::SharedState;

fn main() -> ExitCode {
    // One line, no backtrace: a panic is a bug to report, not a crash dump.
    std::panic::set_hook(Box::new(|info| {
        diag!("internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli),
        Some(Command::Demo) => demo::run(&cli),
        Some(Command::Backend(args)) => backend_app::run(&cli, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pibl: {e}");
            ExitCode::from(e.exit_status() as u8)
        }
    }
}

/// The configuration file with the command line's overrides applied.
pub fn load_config(cli: &Cli) -> Result<Config, Error> {
    let mut config = Config::load(&cli.config)?;
    if let Some(port) = cli.port {
        config.port = port;
    }
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    Ok(config)
}

fn serve(cli: &Cli) -> Result<(), Error> {
    let config = load_config(cli)?;
    if cli.check {
        eprintln!("pibl: {}: configuration ok", config.path);
        return Ok(());
    }
    // Fail now, with a clear message, rather than once per child.
    AccessLog::open(&config.log_file).map_err(|e| {
        Error::os(
            format!("cannot open log file {}", config.log_file.display()),
            e,
        )
    })?;
    let addr = config.listen_addr();
    let listener =
        TcpListener::bind(addr).map_err(|e| Error::os(format!("cannot listen on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::os("cannot read the listening address", e))?;
    let shared = SharedState::map()?;
    let balancer = Balancer::new(config.backends.clone(), shared);
    diag!("listening on {bound}, {} backends", config.backends.len());
    parent::run(listener, Context { config, balancer })
}
