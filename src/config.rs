//! pibl.conf: the TOML file, its defaults, and validation.
//!
//! Pure: reads one file and returns a `Config` or an `Error` that names the
//! file, the line and the problem.  Backend names are resolved here, once, in
//! the parent, so no child ever waits on DNS.

use std::fs;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;

pub const DEFAULT_PATH: &str = "pibl.conf";
pub const DEFAULT_LISTEN: &str = "0.0.0.0";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_LOG_FILE: &str = "pibl.log";
/// Largest `[log] buffer`.
pub const MAX_LOG_BUFFER: usize = 1 << 20;
pub const DEFAULT_MAX_CLIENTS: usize = 512;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_SYSLOG_FACILITY: &str = "daemon";
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
pub const DEFAULT_CACHE_DIR: &str = "cache";
pub const DEFAULT_MIN_SPARE: i64 = 5;
pub const DEFAULT_MAX_SPARE: i64 = 10;
pub const DEFAULT_MAX_WORKERS: i64 = 256;
pub const DEFAULT_MAX_REQUESTS: i64 = 10_000;
pub const DEFAULT_CACHE_MAX_ENTRY: i64 = 64 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_SIZE: i64 = 1024 * 1024 * 1024;
/// Bytes of a request body held in memory before a file takes the rest,
/// by default, and at most.
pub const DEFAULT_BUFFER_IN_MEMORY: i64 = 64 * 1024;
pub const MAX_BUFFER_IN_MEMORY: usize = 64 << 20;
/// Bytes of a response held in memory for a slow client, by default.
pub const DEFAULT_RESPONSE_IN_MEMORY: i64 = 256 * 1024;
/// Most bytes of a response held in a temporary file, by default (nginx's
/// `proxy_max_temp_file_size`).
pub const DEFAULT_MAX_TEMP_FILE: i64 = 1 << 30;
pub const DEFAULT_TEMP_DIR: &str = "temp";
/// Most backends one configuration may list: the balancer's shared page
/// has a health slot for each.
pub const MAX_BACKENDS: usize = 256;
/// Most prefork workers: the scoreboard has a slot for each.
pub const MAX_WORKERS: usize = 4096;
/// Longest time any setting may name, in seconds (about 31 years): far
/// enough for "never", near enough that a deadline computed from it
/// cannot overflow the clock.
pub const MAX_SECONDS: u64 = 1_000_000_000;
/// Shortest timeout or interval, in seconds: shorter ones would round to
/// nothing, which socket timeouts refuse and intervals would spin on.
const MIN_SECONDS: f64 = 0.001;

/// One replica of the application, as written in the config and as resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// `host:port`, as written (without its scheme).
    pub name: String,
    pub addr: SocketAddr,
    /// Written `https://`: reached over TLS, its certificate verified for
    /// `host` (a name, or an IP address).
    pub tls: bool,
    pub host: String,
}

/// How connections are given to code that serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Model {
    /// One child process forked per connection.
    #[default]
    Fork,
    /// A pool of worker processes that accept connections in turn.
    Prefork,
    /// One thread per connection in a single process.
    Thread,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Fork => "fork",
            Model::Prefork => "prefork",
            Model::Thread => "thread",
        }
    }
}

/// The prefork model's pool of workers (Apache prefork's settings).
#[derive(Debug, Clone)]
pub struct PreforkConfig {
    /// Fewest idle workers: below, more are started.
    pub min_spare: usize,
    /// Most idle workers: above, some are stopped.
    pub max_spare: usize,
    /// Most workers, busy or idle: the most connections served at once.
    pub max_workers: usize,
    /// Connections a worker serves before it exits; 0: no limit.
    pub max_requests: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: String,
    pub model: Model,
    pub prefork: PreforkConfig,
    pub listen: IpAddr,
    pub port: u16,
    pub backends: Vec<Backend>,
    pub log_file: PathBuf,
    /// Bytes of access log lines a process may hold before writing them
    /// (`[log] buffer`); 0 writes each line as it comes.
    pub log_buffer: usize,
    /// Longest a held line waits (`[log] flush`).
    pub log_flush: Duration,
    pub max_clients: usize,
    /// Serve connections under SCHED_BATCH (see `sched`).
    pub sched_batch: bool,
    /// How long a stopping parent waits for children to finish.
    pub shutdown_timeout: Duration,
    /// Account to run as when started as root.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Where access lines and errors also go, if anywhere.
    pub syslog: Option<SyslogTarget>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub health: Health,
    pub cache: CacheConfig,
    pub buffering: Buffering,
    /// The `[tls]` table: HTTPS, and the backends' TLS.
    pub tls: Option<TlsConfig>,
    /// The `[compress]` table: compression on the fly.
    pub compress: Compress,
    /// The `[status]` table: the status page's listener, when it has one.
    pub status: Option<Status>,
}

/// The status page and metrics (`[status]`).
#[derive(Debug, Clone)]
pub struct Status {
    pub addr: SocketAddr,
    /// Client networks allowed; everyone else gets 403.
    pub allow: Vec<Cidr>,
}

/// A network: an address and the length of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n` or `v6/n`; a bare address is the one host.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let most = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= most).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address as
    /// its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let mask = match self.prefix {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// Responses compressed on their way to clients that accept it.
#[derive(Debug, Clone)]
pub struct Compress {
    pub enabled: bool,
    /// Media types compressed: `type/subtype`, or `type/*` (which never
    /// covers text/event-stream: only its own entry does).
    pub types: Vec<String>,
    /// Bodies of known length shorter than this go as they are.
    pub min_length: u64,
    /// 1 (fastest) to 9 (smallest), for gzip and Brotli alike.
    pub level: u32,
    /// Compress HTTPS responses that set cookies (BREACH: off).
    pub https_with_cookies: bool,
}

/// Who may see the status page unless `[status] allow` says: this host.
pub const DEFAULT_STATUS_ALLOW: [&str; 2] = ["127.0.0.1/32", "::1/128"];

/// What `[compress] types` is unless set: text, and the structured text
/// of the web; never images, video, audio, fonts already compressed, or
/// archives.
pub const DEFAULT_COMPRESS_TYPES: [&str; 9] = [
    "text/*",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "image/svg+xml",
];

/// HTTPS beside HTTP, and how backends reached over TLS are verified.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The HTTPS port, on the same address; `None`: no HTTPS listener.
    pub port: Option<u16>,
    /// Certificate and key files; the first is the default, the others
    /// chosen by the name a client asks for (SNI).
    pub certificates: Vec<CertFiles>,
    /// Plain-HTTP requests answered with a 308 to the HTTPS port.
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=` on HTTPS responses.
    pub hsts: Option<u64>,
    /// Session ticket keys shared with other hosts; the first seals.
    pub ticket_key_files: Vec<PathBuf>,
    /// CA certificates backends' certificates are verified against,
    /// instead of the system's.
    pub backend_ca: Option<PathBuf>,
    /// pibl's own certificate and key, for backends that ask for one.
    pub backend_client: Option<CertFiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What pibl holds whole before passing it on, and where.
#[derive(Debug, Clone)]
pub struct Buffering {
    /// Read a request's whole body before a backend is chosen
    /// (`request_buffering`).
    pub request: bool,
    /// Most bytes of a request body held in memory; more go to a file
    /// (`client_body_buffer_size`).
    pub body_in_memory: usize,
    /// Hold a response for a client slower than its backend, so that the
    /// backend is read to the end and let go (`response_buffering`).
    pub response: bool,
    /// Most bytes of a response held in memory; more go to a file
    /// (`response_buffer_size`).
    pub response_in_memory: usize,
    /// Most bytes of a response held in a file; beyond, the rest streams
    /// at the client's pace (`max_temp_file_size`).
    pub max_temp_file: u64,
    /// Where the temporary files are, relative to the working directory
    /// (`temp_dir`).
    pub temp_dir: PathBuf,
}

/// The response cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Where entries live, relative to the working directory.
    pub dir: PathBuf,
    /// The lifetime of every entry; zero turns the cache off.
    pub ttl: Duration,
    /// Largest body stored; larger responses stream through uncached.
    pub max_entry: u64,
    /// Most bytes of entries kept; the least recently used go first.
    pub max_size: u64,
}

/// How long pibl waits for each side (nginx's defaults where it has one).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// For a backend to accept a connection.
    pub connect: Duration,
    /// For a backend's next bytes while it owes a response.
    pub backend: Duration,
    /// For a client's whole request head, from its first byte.
    pub client_header: Duration,
    /// For a client's next bytes of a request body.
    pub client_body: Duration,
    /// For an idle keep-alive client's next request.
    pub keepalive: Duration,
    /// For a client that stopped reading to take more bytes.
    pub send: Duration,
}

/// Bounds on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line (414 beyond).
    pub max_request_line: usize,
    /// Largest request head (431 beyond).
    pub max_header_size: usize,
    /// Most header fields (431 beyond).
    pub max_headers: usize,
    /// Largest request body in bytes (413 beyond); 0 for no limit.
    pub max_body: u64,
}

/// Backend health: passive (failures seen by children) and active checks.
#[derive(Debug, Clone)]
pub struct Health {
    /// Failures within `fail_timeout` that mark a backend down.
    pub max_fails: u32,
    /// The window for counting failures, and how long a backend stays down.
    pub fail_timeout: Duration,
    /// Active checks by a helper process, if configured.
    pub check: Option<HealthCheck>,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
}

/// A syslog destination: a facility and a local datagram socket.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub facility: syslog::Facility,
    pub socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: Option<Spanned<String>>,
    prefork: Option<RawPrefork>,
    listen: Option<Spanned<String>>,
    port: Option<u16>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    max_clients: Option<Spanned<i64>>,
    sched_batch: Option<bool>,
    shutdown_timeout: Option<Spanned<i64>>,
    user: Option<String>,
    group: Option<String>,
    log: Option<RawLog>,
    connect_timeout: Option<Spanned<f64>>,
    backend_timeout: Option<Spanned<f64>>,
    client_header_timeout: Option<Spanned<f64>>,
    client_body_timeout: Option<Spanned<f64>>,
    keepalive_timeout: Option<Spanned<f64>>,
    send_timeout: Option<Spanned<f64>>,
    max_request_line: Option<Spanned<i64>>,
    max_header_size: Option<Spanned<i64>>,
    max_headers: Option<Spanned<i64>>,
    max_body: Option<Spanned<i64>>,
    max_fails: Option<Spanned<i64>>,
    fail_timeout: Option<Spanned<f64>>,
    health_check: Option<Spanned<RawHealthCheck>>,
    request_buffering: Option<bool>,
    client_body_buffer_size: Option<Spanned<i64>>,
    response_buffering: Option<bool>,
    response_buffer_size: Option<Spanned<i64>>,
    max_temp_file_size: Option<Spanned<i64>>,
    temp_dir: Option<Spanned<String>>,
    cache: Option<RawCache>,
    tls: Option<Spanned<RawTls>>,
    compress: Option<RawCompress>,
    status: Option<Spanned<RawStatus>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    port: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCompress {
    enabled: Option<bool>,
    types: Option<Spanned<Vec<Spanned<String>>>>,
    min_length: Option<Spanned<i64>>,
    level: Option<Spanned<i64>>,
    https_with_cookies: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    port: Option<Spanned<i64>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    certificates: Option<Vec<Spanned<RawCertFiles>>>,
    redirect_http: Option<Spanned<bool>>,
    hsts: Option<Spanned<i64>>,
    ticket_key_file: Option<Spanned<OneOrMany>>,
    backend_ca: Option<Spanned<String>>,
    backend_cert: Option<Spanned<String>>,
    backend_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertFiles {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

/// A file name, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrefork {
    min_spare: Option<Spanned<i64>>,
    max_spare: Option<Spanned<i64>>,
    max_workers: Option<Spanned<i64>>,
    max_requests: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: Option<Spanned<String>>,
    ttl: Option<Spanned<i64>>,
    max_entry: Option<Spanned<i64>>,
    max_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    interval: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    file: Option<Spanned<String>>,
    buffer: Option<Spanned<i64>>,
    flush: Option<Spanned<f64>>,
    syslog: Option<bool>,
    facility: Option<Spanned<String>>,
    syslog_socket: Option<Spanned<String>>,
}

/// Command-line values that take precedence over the file, at start-up
/// and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub model: Option<Model>,
    pub port: Option<u16>,
    pub listen: Option<IpAddr>,
    /// `--ttl`: the cache's lifetime in seconds.
    pub ttl: Option<u64>,
}

impl Config {
    /// Reads the file at `path`, validates it, and applies `overrides`.
    pub fn load_with(path: &str, overrides: &Overrides) -> Result<Config, Error> {
        let mut config = Config::load(path)?;
        if let Some(model) = overrides.model {
            config.model = model;
        }
        if let Some(port) = overrides.port {
            config.port = port;
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(ttl) = overrides.ttl {
            config.cache.ttl = Duration::from_secs(ttl);
        }
        Ok(config)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &str) -> Result<Config, Error> {
        let text = fs::read_to_string(path)
            .map_err(|e| Error::config(path, 0, crate::error::describe_io(&e)))?;
        Config::parse(path, &text)
    }

    /// Validates `text` as the contents of the file `path`.
    pub fn parse(path: &str, text: &str) -> Result<Config, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            Error::config(path, line, e.message().trim_end().replace('\n', "; "))
        })?;
        let file = Checker { path, text };
        let listen = file.listen(&raw.listen)?;
        let backends = file.backends(&raw.backends)?;
        let max_clients = file.count(
            &raw.max_clients,
            "max_clients",
            DEFAULT_MAX_CLIENTS as i64,
            1,
        )?;
        let shutdown_timeout = file.whole_seconds(
            &raw.shutdown_timeout,
            "shutdown_timeout",
            DEFAULT_SHUTDOWN_TIMEOUT_SECS as i64,
        )?;
        let log = file.log(raw.log.as_ref().unwrap_or(&RawLog::default()))?;
        let timeouts = file.timeouts(&raw)?;
        let limits = file.limits(&raw)?;
        let health = file.health(&raw)?;
        let model = file.model(&raw.model)?;
        let prefork = file.prefork(raw.prefork.as_ref().unwrap_or(&RawPrefork::default()))?;
        let cache = file.cache(raw.cache.as_ref().unwrap_or(&RawCache::default()))?;
        let buffering = file.buffering(&raw)?;
        let port = raw.port.unwrap_or(DEFAULT_PORT);
        let compress = file.compress(raw.compress.as_ref().unwrap_or(&RawCompress::default()))?;
        let tls = raw.tls.as_ref().map(|t| file.tls(t, port)).transpose()?;
        let status = match &raw.status {
            Some(s) => file.status(s, port, tls.as_ref().and_then(|t| t.port))?,
            None => None,
        };
        Ok(Config {
            path: path.to_string(),
            model,
            prefork,
            listen,
            port,
            backends,
            log_file: log.file,
            log_buffer: log.buffer,
            log_flush: log.flush,
            max_clients: max_clients as usize,
            sched_batch: raw.sched_batch.unwrap_or(true),
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
            user: raw.user,
            group: raw.group,
            syslog: log.syslog,
            timeouts,
            limits,
            health,
            cache,
            buffering,
            tls,
            compress,
            status,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.port)
    }

    /// The HTTPS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        let port = self.tls.as_ref()?.port?;
        Some(SocketAddr::new(self.listen, port))
    }
}

/// The `[log]` table, checked.
struct LogConfig {
    file: PathBuf,
    buffer: usize,
    flush: Duration,
    syslog: Option<SyslogTarget>,
}

/// The problem with `what`, a timeout or interval out of `in_seconds_range`.
fn out_of_seconds_range(what: &str) -> String {
    format!("{what} must be from {MIN_SECONDS} to {MAX_SECONDS} seconds")
}

fn in_seconds_range(seconds: f64) -> bool {
    (MIN_SECONDS..=MAX_SECONDS as f64).contains(&seconds)
}

/// The file being checked, so that every problem names its line.
struct Checker<'a> {
    path: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn at(&self, span: std::ops::Range<usize>, problem: String) -> Error {
        Error::config(self.path, line_of(self.text, span.start), problem)
    }

    fn seconds(
        &self,
        v: &Option<Spanned<f64>>,
        name: &str,
        default: f64,
    ) -> Result<Duration, Error> {
        match v {
            None => Ok(Duration::from_secs_f64(default)),
            Some(v) if in_seconds_range(*v.get_ref()) => Ok(Duration::from_secs_f64(*v.get_ref())),
            Some(v) => Err(self.at(v.span(), out_of_seconds_range(&format!("{name}:")))),
        }
    }

    /// A whole number of seconds, 0 allowed.
    fn whole_seconds(
        &self,
        v: &Option<Spanned<i64>>,
        name: &str,
        default: i64,
    ) -> Result<u64, Error> {
        let n = self.count(v, name, default, 0)?;
        match v {
            Some(v) if n > MAX_SECONDS => Err(self.at(
                v.span(),
                format!("{name}: must be at most {MAX_SECONDS} seconds"),
            )),
            _ => Ok(n),
        }
    }

    fn count(
        &self,
        v: &Option<Spanned<i64>>,
        name: &str,
        default: i64,
        min: i64,
    ) -> Result<u64, Error> {
        match v {
            None => Ok(default as u64),
            Some(v) if *v.get_ref() >= min => Ok(*v.get_ref() as u64),
            Some(v) => Err(self.at(v.span(), format!("{name}: must be at least {min}"))),
        }
    }

    /// A file or directory name: empty names nothing, and would only fail
    /// at start-up, after --check had passed it.
    fn file_name(
        &self,
        v: &Option<Spanned<String>>,
        name: &str,
        default: &str,
    ) -> Result<PathBuf, Error> {
        match v {
            None => Ok(PathBuf::from(default)),
            Some(v) if v.get_ref().is_empty() => {
                Err(self.at(v.span(), format!("{name}: is empty")))
            }
            Some(v) => Ok(PathBuf::from(v.get_ref())),
        }
    }

    /// `v`, when it is at most `max`: else `problem`, at its line.
    fn at_most(
        &self,
        v: &Option<Spanned<i64>>,
        value: u64,
        max: u64,
        problem: String,
    ) -> Result<u64, Error> {
        match v {
            Some(v) if value > max => Err(self.at(v.span(), problem)),
            _ => Ok(value),
        }
    }

    fn listen(&self, v: &Option<Spanned<String>>) -> Result<IpAddr, Error> {
        let Some(s) = v else {
            return Ok(DEFAULT_LISTEN.parse().expect("default listen address"));
        };
        s.get_ref().parse().map_err(|_| {
            self.at(
                s.span(),
                format!("listen: \"{}\" is not an IP address", s.get_ref()),
            )
        })
    }

    fn backends(&self, v: &Option<Spanned<Vec<Spanned<String>>>>) -> Result<Vec<Backend>, Error> {
        let Some(list) = v else {
            return Err(Error::config(
                self.path,
                0,
                "no backends: set backends = [\"host:port\", ...]",
            ));
        };
        if list.get_ref().is_empty() {
            return Err(self.at(list.span(), "backends: the list is empty".into()));
        }
        if list.get_ref().len() > MAX_BACKENDS {
            let most = MAX_BACKENDS;
            return Err(self.at(
                list.span(),
                format!("backends: at most {most} are supported"),
            ));
        }
        list.get_ref()
            .iter()
            .map(|b| resolve_backend(b.get_ref()).map_err(|p| self.at(b.span(), p)))
            .collect()
    }

    fn log(&self, log: &RawLog) -> Result<LogConfig, Error> {
        let facility = match &log.facility {
            None => DEFAULT_SYSLOG_FACILITY.parse().expect("default facility"),
            Some(f) => f.get_ref().parse().map_err(|()| {
                self.at(
                    f.span(),
                    format!("facility: unknown syslog facility \"{}\"", f.get_ref()),
                )
            })?,
        };
        let socket = self.file_name(&log.syslog_socket, "syslog_socket", DEFAULT_SYSLOG_SOCKET)?;
        let file = self.file_name(&log.file, "file", DEFAULT_LOG_FILE)?;
        let buffer = self.count(&log.buffer, "buffer", 0, 0)?;
        let most = MAX_LOG_BUFFER as u64;
        let buffer = self.at_most(
            &log.buffer,
            buffer,
            most,
            format!("buffer: must be at most {most} bytes"),
        )?;
        Ok(LogConfig {
            file,
            buffer: buffer as usize,
            flush: self.seconds(&log.flush, "flush", 1.0)?,
            syslog: log
                .syslog
                .unwrap_or(false)
                .then_some(SyslogTarget { facility, socket }),
        })
    }

    fn timeouts(&self, raw: &RawConfig) -> Result<Timeouts, Error> {
        Ok(Timeouts {
            connect: self.seconds(&raw.connect_timeout, "connect_timeout", 5.0)?,
            backend: self.seconds(&raw.backend_timeout, "backend_timeout", 60.0)?,
            client_header: self.seconds(
                &raw.client_header_timeout,
                "client_header_timeout",
                60.0,
            )?,
            client_body: self.seconds(&raw.client_body_timeout, "client_body_timeout", 60.0)?,
            keepalive: self.seconds(&raw.keepalive_timeout, "keepalive_timeout", 75.0)?,
            send: self.seconds(&raw.send_timeout, "send_timeout", 60.0)?,
        })
    }

    fn limits(&self, raw: &RawConfig) -> Result<Limits, Error> {
        Ok(Limits {
            max_request_line: self.count(&raw.max_request_line, "max_request_line", 8192, 16)?
                as usize,
            max_header_size: self.count(&raw.max_header_size, "max_header_size", 32768, 64)?
                as usize,
            max_headers: self.count(&raw.max_headers, "max_headers", 100, 1)? as usize,
            max_body: self.count(&raw.max_body, "max_body", 0, 0)?,
        })
    }

    fn buffering(&self, raw: &RawConfig) -> Result<Buffering, Error> {
        let in_memory = |v, name, default| -> Result<usize, Error> {
            let bytes = self.count(v, name, default, 1)?;
            let most = MAX_BUFFER_IN_MEMORY as u64;
            let problem = format!("{name}: must be at most {most} bytes");
            Ok(self.at_most(v, bytes, most, problem)? as usize)
        };
        Ok(Buffering {
            request: raw.request_buffering.unwrap_or(true),
            body_in_memory: in_memory(
                &raw.client_body_buffer_size,
                "client_body_buffer_size",
                DEFAULT_BUFFER_IN_MEMORY,
            )?,
            response: raw.response_buffering.unwrap_or(true),
            response_in_memory: in_memory(
                &raw.response_buffer_size,
                "response_buffer_size",
                DEFAULT_RESPONSE_IN_MEMORY,
            )?,
            max_temp_file: self.count(
                &raw.max_temp_file_size,
                "max_temp_file_size",
                DEFAULT_MAX_TEMP_FILE,
                0,
            )?,
            temp_dir: self.file_name(&raw.temp_dir, "temp_dir", DEFAULT_TEMP_DIR)?,
        })
    }

    fn health(&self, raw: &RawConfig) -> Result<Health, Error> {
        let check = match &raw.health_check {
            None => None,
            Some(h) => Some(self.health_check(h)?),
        };
        Ok(Health {
            max_fails: self
                .count(&raw.max_fails, "max_fails", 1, 1)?
                .min(u64::from(u32::MAX)) as u32,
            fail_timeout: self.seconds(&raw.fail_timeout, "fail_timeout", 10.0)?,
            check,
        })
    }

    fn health_check(&self, h: &Spanned<RawHealthCheck>) -> Result<HealthCheck, Error> {
        let path = h.get_ref().path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(self.at(
                h.span(),
                format!("health_check: path \"{path}\" must start with / and hold no spaces"),
            ));
        }
        let interval = h.get_ref().interval.unwrap_or(5.0);
        if !in_seconds_range(interval) {
            return Err(self.at(h.span(), out_of_seconds_range("health_check: interval")));
        }
        Ok(HealthCheck {
            path,
            interval: Duration::from_secs_f64(interval),
        })
    }

    fn model(&self, v: &Option<Spanned<String>>) -> Result<Model, Error> {
        let Some(m) = v else {
            return Ok(Model::default());
        };
        clap::ValueEnum::from_str(m.get_ref(), false).map_err(|_| {
            self.at(
                m.span(),
                format!("model: \"{}\" is not fork, prefork or thread", m.get_ref()),
            )
        })
    }

    fn prefork(&self, raw: &RawPrefork) -> Result<PreforkConfig, Error> {
        let min_spare = self.count(&raw.min_spare, "min_spare", DEFAULT_MIN_SPARE, 1)?;
        let max_spare = self.count(&raw.max_spare, "max_spare", DEFAULT_MAX_SPARE, 1)?;
        let max_workers = self.count(&raw.max_workers, "max_workers", DEFAULT_MAX_WORKERS, 1)?;
        let max_requests =
            self.count(&raw.max_requests, "max_requests", DEFAULT_MAX_REQUESTS, 0)?;
        if max_spare < min_spare {
            let span = raw.max_spare.as_ref().map_or(0..0, Spanned::span);
            return Err(self.at(span, "max_spare: must be at least min_spare".into()));
        }
        let most = MAX_WORKERS as u64;
        let problem = format!("max_workers: at most {most} are supported");
        let max_workers = self.at_most(&raw.max_workers, max_workers, most, problem)?;
        Ok(PreforkConfig {
            min_spare: min_spare as usize,
            max_spare: max_spare as usize,
            max_workers: max_workers as usize,
            max_requests,
        })
    }

    fn cache(&self, raw: &RawCache) -> Result<CacheConfig, Error> {
        Ok(CacheConfig {
            dir: self.file_name(&raw.dir, "dir", DEFAULT_CACHE_DIR)?,
            ttl: Duration::from_secs(self.whole_seconds(&raw.ttl, "ttl", 0)?),
            max_entry: self.count(&raw.max_entry, "max_entry", DEFAULT_CACHE_MAX_ENTRY, 0)?,
            max_size: self.count(&raw.max_size, "max_size", DEFAULT_CACHE_MAX_SIZE, 0)?,
        })
    }
}

impl Checker<'_> {
    /// `[status]`: a listener of its own, on `listen` (127.0.0.1 unless
    /// said), never on the proxy's own ports; `allow` defaults to this
    /// host.  No port: no status page.
    fn status(
        &self,
        t: &Spanned<RawStatus>,
        plain: u16,
        https: Option<u16>,
    ) -> Result<Option<Status>, Error> {
        let raw = t.get_ref();
        let Some(p) = &raw.port else {
            return Ok(None);
        };
        let port = match u16::try_from(*p.get_ref()) {
            Ok(n) if n != 0 && (n == plain || Some(n) == https) => {
                return Err(self.at(p.span(), "port: the proxy listens there already".into()));
            }
            Ok(n) => n,
            Err(_) => return Err(self.at(p.span(), "port: must be from 0 to 65535".into())),
        };
        let listen = match &raw.listen {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.at(
                    s.span(),
                    format!("listen: \"{}\" is not an IP address", s.get_ref()),
                )
            })?,
        };
        let allow = match &raw.allow {
            None => DEFAULT_STATUS_ALLOW
                .iter()
                .map(|n| Cidr::parse(n).expect("default networks"))
                .collect(),
            Some(list) => list
                .get_ref()
                .iter()
                .map(|n| {
                    Cidr::parse(n.get_ref().trim()).ok_or_else(|| {
                        self.at(
                            n.span(),
                            format!(
                                "allow: \"{}\" is not a network (ADDRESS/PREFIX)",
                                n.get_ref()
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(Status {
            addr: SocketAddr::new(listen, port),
            allow,
        }))
    }

    fn compress(&self, raw: &RawCompress) -> Result<Compress, Error> {
        let types = match &raw.types {
            None => DEFAULT_COMPRESS_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            Some(list) => list
                .get_ref()
                .iter()
                .map(|t| {
                    let name = t.get_ref().trim().to_ascii_lowercase();
                    match name.split_once('/') {
                        Some((a, b)) if !a.is_empty() && !b.is_empty() && !name.contains(';') => {
                            Ok(name)
                        }
                        _ => Err(self.at(
                            t.span(),
                            format!("types: \"{}\" is not a media type", t.get_ref()),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let level = self.count(&raw.level, "level", 5, 1)?;
        let level = self.at_most(&raw.level, level, 9, "level: must be at most 9".into())?;
        Ok(Compress {
            enabled: raw.enabled.unwrap_or(false),
            types,
            min_length: self.count(&raw.min_length, "min_length", 256, 0)?,
            level: level as u32,
            https_with_cookies: raw.https_with_cookies.unwrap_or(false),
        })
    }

    fn tls(&self, t: &Spanned<RawTls>, plain_port: u16) -> Result<TlsConfig, Error> {
        let raw = t.get_ref();
        let port = match &raw.port {
            None => None,
            Some(p) => match u16::try_from(*p.get_ref()) {
                Err(_) => {
                    return Err(self.at(p.span(), "port: must be from 0 to 65535".into()));
                }
                Ok(n) if n == plain_port && n != 0 => {
                    let problem = format!("port: {n} is the plain HTTP port too");
                    return Err(self.at(p.span(), problem));
                }
                Ok(n) => Some(n),
            },
        };
        let mut certificates = Vec::new();
        if let Some(pair) = self.cert_files(&raw.cert, &raw.key, "")? {
            certificates.push(pair);
        }
        for c in raw.certificates.iter().flatten() {
            let pair = self.cert_files(&c.get_ref().cert, &c.get_ref().key, "")?;
            certificates.extend(pair);
        }
        if port.is_some() && certificates.is_empty() {
            return Err(self.at(
                t.span(),
                "tls: a port needs a certificate: set cert and key".into(),
            ));
        }
        let redirect_http = raw.redirect_http.as_ref().is_some_and(|r| *r.get_ref());
        if let (true, None, Some(r)) = (redirect_http, port, &raw.redirect_http) {
            return Err(self.at(r.span(), "redirect_http: needs an HTTPS port".into()));
        }
        let hsts = match &raw.hsts {
            None => None,
            Some(h) => Some(self.count(&Some(h.clone()), "hsts", 0, 0)?),
        };
        let ticket_key_files = match raw.ticket_key_file.as_ref().map(Spanned::get_ref) {
            None => Vec::new(),
            Some(OneOrMany::One(f)) => vec![PathBuf::from(f)],
            Some(OneOrMany::Many(fs)) => fs.iter().map(PathBuf::from).collect(),
        };
        if let Some(f) = &raw.ticket_key_file
            && ticket_key_files.iter().any(|p| p.as_os_str().is_empty())
        {
            return Err(self.at(f.span(), "ticket_key_file: is empty".into()));
        }
        let backend_ca = match &raw.backend_ca {
            None => None,
            Some(_) => Some(self.file_name(&raw.backend_ca, "backend_ca", "")?),
        };
        let backend_client = self.cert_files(&raw.backend_cert, &raw.backend_key, "backend_")?;
        Ok(TlsConfig {
            port,
            certificates,
            redirect_http,
            hsts,
            ticket_key_files,
            backend_ca,
            backend_client,
        })
    }

    /// `{prefix}cert` and `{prefix}key`, both or neither.
    fn cert_files(
        &self,
        cert: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
        prefix: &str,
    ) -> Result<Option<CertFiles>, Error> {
        let (c, k) = (format!("{prefix}cert"), format!("{prefix}key"));
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(v), None) => Err(self.at(v.span(), format!("{c}: needs {k} beside it"))),
            (None, Some(v)) => Err(self.at(v.span(), format!("{k}: needs {c} beside it"))),
            (Some(_), Some(_)) => Ok(Some(CertFiles {
                cert: self.file_name(cert, &c, "")?,
                key: self.file_name(key, &k, "")?,
            })),
        }
    }
}

/// "host:port" → a backend; hosts are resolved now, the first address wins.
fn resolve_backend(written: &str) -> Result<Backend, String> {
    let problem = |what: &str| format!("backend \"{written}\": {what}");
    let (tls, name) = match written.split_once("://") {
        None => (false, written),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        Some(_) => return Err(problem("the scheme must be http:// or https://")),
    };
    let name = name.strip_suffix('/').unwrap_or(name);
    let Some((host, port)) = name.rsplit_once(':') else {
        return Err(problem("expected host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(problem("expected host:port"));
    }
    let addr = name
        .to_socket_addrs()
        .map_err(|e| {
            problem(&format!(
                "cannot resolve: {}",
                crate::error::describe_io(&e)
            ))
        })?
        .next()
        .ok_or_else(|| problem("no address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Backend {
        name: name.to_string(),
        addr,
        tls,
        host: host.to_string(),
    })
}

/// 1-based line number of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("t.conf", text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse("t.conf", "backends = [\"127.0.0.1:9001\"]").unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.listen.to_string(), "0.0.0.0");
        assert_eq!(c.log_file, PathBuf::from("pibl.log"));
        assert_eq!(c.max_clients, DEFAULT_MAX_CLIENTS);
        assert!(c.sched_batch);
        assert_eq!(c.backends[0].addr, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn models_and_the_prefork_pool() {
        let b = "backends = [\"127.0.0.1:1\"]\n";
        let c = Config::parse("t.conf", b).unwrap();
        assert_eq!(c.model, Model::Fork);
        assert_eq!(c.prefork.max_requests, 10_000);
        let c = Config::parse(
            "t.conf",
            &format!("model = \"prefork\"\n{b}[prefork]\nmin_spare = 3\nmax_spare = 4\nmax_workers = 9\nmax_requests = 0\n"),
        )
        .unwrap();
        assert_eq!(c.model, Model::Prefork);
        assert_eq!(
            (
                c.prefork.min_spare,
                c.prefork.max_spare,
                c.prefork.max_workers,
                c.prefork.max_requests
            ),
            (3, 4, 9, 0)
        );
        assert_eq!(
            err(&format!("{b}model = \"fibers\"\n")),
            "t.conf:2: model: \"fibers\" is not fork, prefork or thread"
        );
        assert_eq!(
            err(&format!("{b}[prefork]\nmin_spare = 8\nmax_spare = 2\n")),
            "t.conf:4: max_spare: must be at least min_spare"
        );
        assert_eq!(
            err(&format!("{b}[prefork]\nmax_workers = 5000\n")),
            "t.conf:3: max_workers: at most 4096 are supported"
        );
    }

    #[test]
    fn log_buffer_and_flush() {
        let c = Config::parse("t.conf", "backends = [\"127.0.0.1:1\"]").unwrap();
        assert_eq!((c.log_buffer, c.log_flush), (0, Duration::from_secs(1)));
        let c = Config::parse(
            "t.conf",
            "backends = [\"127.0.0.1:1\"]\n[log]\nbuffer = 65536\nflush = 0.5\n",
        )
        .unwrap();
        assert_eq!(
            (c.log_buffer, c.log_flush),
            (65536, Duration::from_millis(500))
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[log]\nbuffer = 2000000\n"),
            "t.conf:3: buffer: must be at most 1048576 bytes"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[log]\nflush = 0\n"),
            "t.conf:3: flush: must be from 0.001 to 1000000000 seconds"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nsched_batch = \"yes\"\n"),
            "t.conf:2: invalid type: string \"yes\", expected a boolean"
        );
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            "t.conf",
            "listen = \"127.0.0.1\"\nport = 0\nmax_clients = 3\nsched_batch = false\nbackends = [\"[::1]:1\", \"localhost:2\"]\n[log]\nfile = \"x.log\"\n",
        )
        .unwrap();
        assert_eq!(c.listen_addr(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.max_clients, 3);
        assert!(!c.sched_batch);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].name, "localhost:2");
        assert_eq!(c.log_file, PathBuf::from("x.log"));
        assert!(c.syslog.is_none());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.cache.ttl, Duration::ZERO, "no cache unless asked");
        assert_eq!(c.cache.dir, PathBuf::from("cache"));
    }

    #[test]
    fn cache_keys() {
        let c = Config::parse(
            "t.conf",
            "backends = [\"127.0.0.1:1\"]\n[cache]\ndir = \"c\"\nttl = 30\nmax_entry = 1000\n",
        )
        .unwrap();
        assert_eq!(
            (c.cache.dir, c.cache.ttl, c.cache.max_entry),
            (PathBuf::from("c"), Duration::from_secs(30), 1000)
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[cache]\nttl = -1\n"),
            "t.conf:3: ttl: must be at least 0"
        );
    }

    #[test]
    fn failure_keys() {
        let c = Config::parse(
            "t.conf",
            "backends = [\"127.0.0.1:1\"]\nconnect_timeout = 0.5\nbackend_timeout = 2\nmax_body = 10\nmax_fails = 3\nfail_timeout = 1.5\nhealth_check = { path = \"/up\", interval = 0.25 }\n",
        )
        .unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(500));
        assert_eq!(c.timeouts.backend, Duration::from_secs(2));
        assert_eq!(c.timeouts.keepalive, Duration::from_secs(75));
        assert_eq!((c.limits.max_body, c.limits.max_headers), (10, 100));
        assert_eq!(
            (c.health.max_fails, c.health.fail_timeout),
            (3, Duration::from_millis(1500))
        );
        let check = c.health.check.unwrap();
        assert_eq!(
            (check.path.as_str(), check.interval),
            ("/up", Duration::from_millis(250))
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nsend_timeout = -1\n"),
            "t.conf:2: send_timeout: must be from 0.001 to 1000000000 seconds"
        );
        // Too short to be a socket timeout, too long for the clock.
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nbackend_timeout = 1e-12\n"),
            "t.conf:2: backend_timeout: must be from 0.001 to 1000000000 seconds"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nhealth_check = { interval = 1e-9 }\n"),
            "t.conf:2: health_check: interval must be from 0.001 to 1000000000 seconds"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nshutdown_timeout = 9223372036854775807\n"),
            "t.conf:2: shutdown_timeout: must be at most 1000000000 seconds"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[cache]\nttl = 1000000001\n"),
            "t.conf:3: ttl: must be at most 1000000000 seconds"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nmax_headers = 0\n"),
            "t.conf:2: max_headers: must be at least 1"
        );
        assert!(
            err("backends = [\"127.0.0.1:1\"]\nhealth_check = { path = \"up\" }\n")
                .starts_with("t.conf:2: health_check: path")
        );
        assert!(
            err("backends = [\"127.0.0.1:1\"]\nhealth_check = { paht = \"/\" }\n")
                .starts_with("t.conf:2: unknown field `paht`")
        );
    }

    #[test]
    fn service_keys() {
        let c = Config::parse(
            "t.conf",
            "backends = [\"127.0.0.1:1\"]\nshutdown_timeout = 3\nuser = \"nobody\"\ngroup = \"nogroup\"\n[log]\nsyslog = true\nfacility = \"local3\"\nsyslog_socket = \"/tmp/s\"\n",
        )
        .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(
            (c.user.as_deref(), c.group.as_deref()),
            (Some("nobody"), Some("nogroup"))
        );
        let target = c.syslog.unwrap();
        assert_eq!(target.facility as u32, syslog::Facility::LOG_LOCAL3 as u32);
        assert_eq!(target.socket, PathBuf::from("/tmp/s"));
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[log]\nsyslog = true\nfacility = \"kitchen\"\n"),
            "t.conf:4: facility: unknown syslog facility \"kitchen\""
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        assert!(err("port = 1\nprot = 2\n").starts_with("t.conf:2: unknown field `prot`"));
        assert!(err("backends = [\"127.0.0.1:1\"]\nport = 70000\n").starts_with("t.conf:2:"));
        assert_eq!(
            err("\nbackends = [\"127.0.0.1:1\", \"nope\"]\n"),
            "t.conf:2: backend \"nope\": expected host:port"
        );
        assert_eq!(
            err("backends = []\n"),
            "t.conf:1: backends: the list is empty"
        );
        assert!(err("port = 1\n").starts_with("t.conf: no backends"));
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n\nlisten = \"nowhere\"\n"),
            "t.conf:3: listen: \"nowhere\" is not an IP address"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\nmax_clients = 0\n"),
            "t.conf:2: max_clients: must be at least 1"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[log]\nfile = \"\"\n"),
            "t.conf:3: file: is empty"
        );
        assert_eq!(
            err("backends = [\"127.0.0.1:1\"]\n[cache]\nttl = 1\ndir = \"\"\n"),
            "t.conf:4: dir: is empty"
        );
        assert!(err("backends = [\n").starts_with("t.conf:"));
        assert!(!err("backends = [\n").contains('\n'));
    }

    #[test]
    fn tls_keys() {
        let c = Config::parse(
            "t.conf",
            "backends = [\"https://localhost:1\", \"http://127.0.0.1:2/\"]\n[tls]\nport = 8443\n\
             cert = \"a.pem\"\nkey = \"a.key\"\nhsts = 60\nticket_key_file = [\"t1\", \"t2\"]\n\
             [[tls.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .unwrap();
        assert!(c.backends[0].tls && !c.backends[1].tls);
        assert_eq!(c.backends[0].host, "localhost");
        assert_eq!(c.backends[1].name, "127.0.0.1:2");
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(c.tls_addr().unwrap().port(), 8443);
        assert_eq!(tls.certificates.len(), 2);
        assert_eq!(tls.certificates[1].key, PathBuf::from("b.key"));
        assert_eq!((tls.hsts, tls.redirect_http), (Some(60), false));
        assert_eq!(tls.ticket_key_files.len(), 2);
        // A [tls] without a port only configures the backends.
        let c = Config::parse(
            "t.conf",
            "backends = [\"https://[::1]:1\"]\n[tls]\nbackend_ca = \"ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.tls_addr(), None);
        assert_eq!(c.backends[0].host, "::1");
        let b = "backends = [\"127.0.0.1:1\"]\n";
        assert_eq!(
            err(&format!("{b}[tls]\nport = 8443\n")),
            "t.conf:2: tls: a port needs a certificate: set cert and key"
        );
        assert_eq!(
            err(&format!("{b}[tls]\nbackend_key = \"k\"\n")),
            "t.conf:3: backend_key: needs backend_cert beside it"
        );
        assert_eq!(
            err(&format!(
                "port = 8080\n{b}[tls]\nport = 8080\ncert = \"c\"\nkey = \"k\"\n"
            )),
            "t.conf:4: port: 8080 is the plain HTTP port too"
        );
        assert_eq!(
            err(&format!(
                "{b}[tls]\ncert = \"c\"\nkey = \"k\"\nredirect_http = true\n"
            )),
            "t.conf:5: redirect_http: needs an HTTPS port"
        );
        assert_eq!(
            err("backends = [\"ftp://h:1\"]\n"),
            "t.conf:1: backend \"ftp://h:1\": the scheme must be http:// or https://"
        );
    }

    #[test]
    fn status_keys_and_networks() {
        let b = "backends = [\"127.0.0.1:9001\"]\n";
        let c = Config::parse("t.conf", &format!("{b}[status]\nport = 8081\n")).unwrap();
        let status = c.status.unwrap();
        assert_eq!(status.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(status.allow.len(), 2);
        assert!(
            Config::parse("t.conf", &format!("{b}[status]\n"))
                .unwrap()
                .status
                .is_none()
        );
        assert!(err(&format!("{b}[status]\nport = 8080\n")).contains("listens there already"));
        assert!(
            err(&format!(
                "{b}[status]\nport = 1\nallow = [\"10.0.0.0/33\"]\n"
            ))
            .contains(":4: allow")
        );
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!net.contains("::1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn compress_keys() {
        let b = "backends = [\"127.0.0.1:1\"]\n";
        let c = Config::parse("t.conf", b).unwrap();
        assert!(!c.compress.enabled, "off unless asked");
        assert_eq!(c.compress.types.len(), DEFAULT_COMPRESS_TYPES.len());
        let c = Config::parse(
            "t.conf",
            &format!("{b}[compress]\nenabled = true\ntypes = [\"Text/HTML\"]\nlevel = 9\n"),
        )
        .unwrap();
        assert!(c.compress.enabled);
        assert_eq!(c.compress.types, ["text/html"]);
        assert_eq!((c.compress.level, c.compress.min_length), (9, 256));
        assert_eq!(
            err(&format!("{b}[compress]\nlevel = 12\n")),
            "t.conf:3: level: must be at most 9"
        );
        assert_eq!(
            err(&format!("{b}[compress]\ntypes = [\"html\"]\n")),
            "t.conf:3: types: \"html\" is not a media type"
        );
    }
}
