//! The proxy: one client connection's life (`connection`), and each of
//! its exchanges — the `request` read and checked, `forward`ed to a
//! backend (or answered `from_cache`), the `response` relayed back, all
//! recorded in an `exchange` — with what that needs: the `balancer`, the
//! `pool` of kept backend connections, `splice`(2), `upload`s, `health`
//! checks.  Runs in whatever the model made to serve — a child, a prefork
//! worker or a thread — and knows nothing of which.

pub mod absorb;
pub mod balancer;
pub mod compress;
pub mod connection;
pub mod exchange;
pub mod forward;
pub mod from_cache;
pub mod health;
pub mod pool;
pub mod request;
pub mod response;
pub mod splice;
pub mod spool;
pub mod upload;

use std::sync::Arc;

use crate::cache::Cache;
use crate::config::Config;
use crate::error::Error;
use balancer::Balancer;

/// Size of the buffer on each side of a connection; bodies pass through it.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// What every child needs, made by the parent before it forks.
pub struct Context {
    pub config: Config,
    pub balancer: Balancer,
    /// The response cache, when its TTL is not zero.
    pub cache: Option<Cache>,
    /// What HTTPS handshakes are made with, when there is an HTTPS port.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// What handshakes with `https://` backends are made with.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// The HTTPS listener's port as bound (the configured one, unless
    /// that is 0): where `redirect_http` sends clients.
    pub https_port: Option<u16>,
    /// The status page's listener (`[status]`), bound once at start and
    /// kept by every reload; its helper serves it.
    pub status_listener: Option<Arc<std::net::TcpListener>>,
}

impl Context {
    /// What connections are served with under `config`: the cache, and a
    /// balancer over fresh shared pages.  Made at start-up and at every
    /// reload.
    pub fn build(config: Config) -> Result<Context, Error> {
        let cache = Cache::open(&config)?;
        let temp_dir = &config.buffering.temp_dir;
        spool::make_dir(temp_dir).map_err(|e| {
            Error::os(
                format!("cannot use temporary directory {}", temp_dir.display()),
                e,
            )
        })?;
        let tls = config.tls.as_ref();
        let tls_server = match tls {
            Some(t) if t.port.is_some() => Some(crate::tls::server::config(t)?),
            _ => None,
        };
        let tls_client = match config.backends.iter().any(|b| b.tls) {
            true => Some(crate::tls::client::config(tls)?),
            false => None,
        };
        let balancer = Balancer::new(config.backends.clone(), config.health.clone())?;
        let https_port = config.tls_addr().map(|a| a.port());
        Ok(Context {
            config,
            balancer,
            cache,
            https_port,
            tls_server,
            tls_client,
            status_listener: None,
        })
    }

    /// A copy for a thread of its own (the thread model): the same shared
    /// pages and cache directory, its own descriptors.
    pub fn for_thread(&self) -> Context {
        Context {
            config: self.config.clone(),
            balancer: self.balancer.clone(),
            cache: self.cache.as_ref().map(Cache::for_thread),
            tls_server: self.tls_server.clone(),
            tls_client: self.tls_client.clone(),
            https_port: self.https_port,
            status_listener: self.status_listener.clone(),
        }
    }
}

/// How an exchange ended, from the child's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Served,
    /// The client sent something wrong, stalled, or went away.
    ClientFault,
    /// No backend could answer, or one answered badly.
    BackendFault,
}
