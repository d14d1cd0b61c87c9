//! pibl: a forking HTTP/1.1 reverse proxy and round-robin load balancer.
//!
//! `run` parses the command line, loads the configuration, binds, and hands
//! over to the parent loop (or to the demo).  It maps errors to exit
//! statuses and holds no other logic.  The program is a library with a
//! one-line `main` so that the fuzz targets (fuzz/) can call the parsers.

#![deny(clippy::undocumented_unsafe_blocks)]

mod backend_app;
mod balancer;
pub mod body;
mod cache;
mod child;
mod cli;
mod clock;
mod conditional;
mod config;
mod connection;
mod demo;
mod error;
mod health;
pub mod http;
mod janitor;
mod log;
mod parent;
mod pool;
mod prefork;
mod privileges;
mod relay;
mod rlimit;
mod sched;
mod shm;
mod signals;
mod splice;
mod thread;
mod upload;
pub mod wire;

use std::process::ExitCode;

use clap::Parser;

use crate::balancer::Balancer;
use crate::cli::{CacheCommand, Cli, Command};
use crate::config::{Config, Overrides};
use crate::error::Error;
use crate::log::AccessLog;
use crate::relay::Context;
use crate::shm::SharedState;

/// The whole program: what `main` runs.
pub fn run() -> ExitCode {
    // One line, no backtrace: a panic is a bug to report, not a crash dump.
    std::panic::set_hook(Box::new(|info| {
        diag!("internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli),
        Some(Command::Demo) => demo::run(&cli),
        Some(Command::Backend(args)) => backend_app::run(&cli, args),
        Some(Command::Cache(command)) => cache_command(&cli, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pibl: {e}");
            ExitCode::from(e.exit_status() as u8)
        }
    }
}

/// The command line's overrides of the configuration file.
pub fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        model: cli.model,
        port: cli.port,
        listen: cli.listen,
        ttl: cli.ttl,
    }
}

/// The configuration file with the command line's overrides applied.
pub fn load_config(cli: &Cli) -> Result<Config, Error> {
    Config::load_with(&cli.config, &overrides(cli))
}

fn serve(cli: &Cli) -> Result<(), Error> {
    let config = load_config(cli)?;
    if cli.check {
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
    let listener = parent::bind(config.listen_addr())?;
    let ctx = build_context(config)?;
    let pid_file = cli.pid_file.as_deref().map(PidFile::write).transpose()?;
    let mut writable = vec![ctx.config.log_file.as_path()];
    if ctx.cache.is_some() {
        writable.push(ctx.config.cache.dir.as_path());
    }
    privileges::drop_root(&ctx.config, &writable)?;
    crate::log::set_diag_syslog(ctx.config.syslog.clone());
    crate::log::share_hush()?;
    crate::signals::share_stop()?;
    http::prepare();
    let reloader = parent::Reloader {
        path: cli.config.clone(),
        overrides: overrides(cli),
    };
    let result = parent::run(listener, ctx, reloader);
    drop(pid_file);
    result
}

/// What children are forked with, for `config`: the cache, and a balancer
/// over fresh shared pages (health slots belong to one backend list).
/// Used at start-up and at every reload.
pub fn build_context(config: Config) -> Result<Context, Error> {
    let cache = open_cache(&config)?;
    let shared = shm::map::<SharedState>()?;
    let balancer = Balancer::new(config.backends.clone(), config.health.clone(), shared);
    Ok(Context {
        config,
        balancer,
        cache,
    })
}

/// The cache, if its TTL is not zero, with its directory made and cleared
/// of what a crashed pibl left half-written.
pub fn open_cache(config: &Config) -> Result<Option<cache::Cache>, Error> {
    if config.cache.ttl.is_zero() {
        return Ok(None);
    }
    let cache = cache::Cache::new(
        config.cache.dir.clone(),
        config.cache.ttl,
        config.cache.max_entry,
    );
    cache.prepare().map_err(|e| {
        Error::os(
            format!("cannot use cache directory {}", config.cache.dir.display()),
            e,
        )
    })?;
    Ok(Some(cache))
}

/// `pibl cache ls` and `pibl cache purge [URL]`.
fn cache_command(cli: &Cli, command: &CacheCommand) -> Result<(), Error> {
    let config = load_config(cli)?;
    let dir = &config.cache.dir;
    let cache = cache::Cache::new(dir.clone(), config.cache.ttl, config.cache.max_entry);
    let failed = |e| Error::os(format!("cannot read cache directory {}", dir.display()), e);
    match command {
        CacheCommand::Ls => {
            if !dir.exists() {
                return Ok(());
            }
            println!("{:>10} {:>8} {:>8}  KEY", "SIZE", "AGE", "LEFT");
            for entry in cache.list().map_err(failed)? {
                println!(
                    "{:>10} {:>8} {:>8}  {}",
                    entry.size, entry.age, entry.left, entry.key
                );
            }
        }
        CacheCommand::Purge { url: None } => {
            let removed = if dir.exists() {
                cache.purge_all().map_err(failed)?
            } else {
                0
            };
            println!("{removed} entries removed");
        }
        CacheCommand::Purge { url: Some(url) } => {
            let key = cache::key_of_url(url)
                .ok_or_else(|| Error::Usage(format!("\"{url}\" is not an http:// URL")))?;
            let found = dir.exists() && cache.purge(&key).map_err(failed)?;
            println!(
                "{}",
                if found {
                    "1 entry removed"
                } else {
                    "no entry for that URL"
                }
            );
        }
    }
    Ok(())
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
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
