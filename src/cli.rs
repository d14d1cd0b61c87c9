//! The command line.  Flags override pibl.conf.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::error::Error;

#[derive(Parser, Debug)]
#[command(
    name = "pibl",
    version,
    about = "A forking HTTP/1.1 reverse proxy and round-robin load balancer",
    long_about = "A forking HTTP/1.1 reverse proxy and round-robin load balancer.\n\n\
                  With no command, pibl reads its configuration and serves: one child \
                  process per client connection, requests spread over the backends in \
                  strict round robin."
)]
pub struct Cli {
    /// Configuration file
    #[arg(short, long, global = true, value_name = "PATH", default_value = crate::config::DEFAULT_PATH)]
    pub config: String,

    /// Listen on this port instead of the configured one (0: any free port)
    #[arg(short, long, global = true, value_name = "N")]
    pub port: Option<u16>,

    /// Listen on this address instead of the configured one
    #[arg(short, long, global = true, value_name = "ADDR")]
    pub listen: Option<IpAddr>,

    /// How connections are served: a process forked for each, a pool of
    /// prefork workers, or a thread for each (overrides `model`)
    #[arg(short, long, value_enum, value_name = "MODEL")]
    pub model: Option<crate::config::Model>,

    /// Check the configuration and exit: 0 if valid, 78 if not
    #[arg(short = 't', long)]
    pub check: bool,

    /// Keep responses in the cache for this many seconds (0: no cache)
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=crate::config::MAX_SECONDS))]
    pub ttl: Option<u64>,

    /// Write the parent's pid to PATH once listening; removed on exit
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command line's overrides of the configuration file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model,
            port: self.port,
            listen: self.listen,
            ttl: self.ttl,
        }
    }

    /// The configuration file with the command line's overrides applied.
    pub fn load_config(&self) -> Result<Config, Error> {
        Config::load_with(&self.config, &self.overrides())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the demo: one replica per configured backend, and the proxy,
    /// serving HTTPS too
    Demo(DemoArgs),
    /// Run one replica of the demo web application on --port (and --listen,
    /// default 127.0.0.1)
    Backend(BackendArgs),
    /// List or purge the cache entries (safe while pibl runs)
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the running pibl's status page as a table, from the [status]
    /// listener
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Print the page's JSON (/status.json) instead, for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List every entry: key, size, age and time left
    Ls,
    /// Remove the entry for URL (http://host/path), or every entry
    Purge {
        /// The URL whose entry goes; none: all of them
        url: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// HTTPS port, when pibl.conf has no [tls] of its own (0: any free port)
    #[arg(long, value_name = "N", default_value_t = 8443)]
    pub https_port: u16,
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Name the replica gives itself (default: its address)
    #[arg(short, long, value_name = "NAME")]
    pub name: Option<String>,
}
