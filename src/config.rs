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
pub const DEFAULT_MAX_CLIENTS: usize = 512;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_SYSLOG_FACILITY: &str = "daemon";
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// One replica of the application, as written in the config and as resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: String,
    pub listen: IpAddr,
    pub port: u16,
    pub backends: Vec<Backend>,
    pub log_file: PathBuf,
    pub max_clients: usize,
    /// How long a stopping parent waits for children to finish.
    pub shutdown_timeout: Duration,
    /// Account to run as when started as root.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Where access lines and errors also go, if anywhere.
    pub syslog: Option<SyslogTarget>,
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
    listen: Option<Spanned<String>>,
    port: Option<u16>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    max_clients: Option<Spanned<i64>>,
    shutdown_timeout: Option<Spanned<i64>>,
    user: Option<String>,
    group: Option<String>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    file: Option<String>,
    syslog: Option<bool>,
    facility: Option<Spanned<String>>,
    syslog_socket: Option<String>,
}

/// Command-line values that take precedence over the file, at start-up
/// and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub listen: Option<IpAddr>,
}

impl Config {
    /// Reads the file at `path`, validates it, and applies `overrides`.
    pub fn load_with(path: &str, overrides: &Overrides) -> Result<Config, Error> {
        let mut config = Config::load(path)?;
        if let Some(port) = overrides.port {
            config.port = port;
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
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
        let at = |span: std::ops::Range<usize>, problem: String| {
            Error::config(path, line_of(text, span.start), problem)
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            Error::config(path, line, e.message().trim_end().replace('\n', "; "))
        })?;

        let listen = match raw.listen {
            None => DEFAULT_LISTEN.parse().expect("default listen address"),
            Some(s) => s.get_ref().parse().map_err(|_| {
                at(
                    s.span(),
                    format!("listen: \"{}\" is not an IP address", s.get_ref()),
                )
            })?,
        };
        let backends = match raw.backends {
            None => {
                return Err(Error::config(
                    path,
                    0,
                    "no backends: set backends = [\"host:port\", ...]",
                ));
            }
            Some(list) if list.get_ref().is_empty() => {
                return Err(at(list.span(), "backends: the list is empty".into()));
            }
            Some(list) => list
                .into_inner()
                .into_iter()
                .map(|b| resolve_backend(b.get_ref()).map_err(|p| at(b.span(), p)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let max_clients = match raw.max_clients {
            None => DEFAULT_MAX_CLIENTS,
            Some(m) if *m.get_ref() >= 1 => *m.get_ref() as usize,
            Some(m) => return Err(at(m.span(), "max_clients: must be at least 1".into())),
        };
        let shutdown_timeout = match raw.shutdown_timeout {
            None => Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            Some(t) if *t.get_ref() >= 0 => Duration::from_secs(*t.get_ref() as u64),
            Some(t) => {
                return Err(at(
                    t.span(),
                    "shutdown_timeout: must not be negative".into(),
                ));
            }
        };
        let log = raw.log.unwrap_or(RawLog {
            file: None,
            syslog: None,
            facility: None,
            syslog_socket: None,
        });
        let facility = match &log.facility {
            None => DEFAULT_SYSLOG_FACILITY.parse().expect("default facility"),
            Some(f) => f.get_ref().parse().map_err(|()| {
                at(
                    f.span(),
                    format!("facility: unknown syslog facility \"{}\"", f.get_ref()),
                )
            })?,
        };
        let syslog = log.syslog.unwrap_or(false).then(|| SyslogTarget {
            facility,
            socket: PathBuf::from(
                log.syslog_socket
                    .as_deref()
                    .unwrap_or(DEFAULT_SYSLOG_SOCKET),
            ),
        });
        let log_file = log.file.unwrap_or(DEFAULT_LOG_FILE.into());

        Ok(Config {
            path: path.to_string(),
            listen,
            port: raw.port.unwrap_or(DEFAULT_PORT),
            backends,
            log_file: PathBuf::from(log_file),
            max_clients,
            shutdown_timeout,
            user: raw.user,
            group: raw.group,
            syslog,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.port)
    }
}

/// "host:port" → a backend; hosts are resolved now, the first address wins.
fn resolve_backend(name: &str) -> Result<Backend, String> {
    let problem = |what: &str| format!("backend \"{name}\": {what}");
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
    Ok(Backend {
        name: name.to_string(),
        addr,
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
        assert_eq!(c.backends[0].addr, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            "t.conf",
            "listen = \"127.0.0.1\"\nport = 0\nmax_clients = 3\nbackends = [\"[::1]:1\", \"localhost:2\"]\n[log]\nfile = \"x.log\"\n",
        )
        .unwrap();
        assert_eq!(c.listen_addr(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.max_clients, 3);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].name, "localhost:2");
        assert_eq!(c.log_file, PathBuf::from("x.log"));
        assert!(c.syslog.is_none());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
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
        assert!(err("backends = [\n").starts_with("t.conf:"));
        assert!(!err("backends = [\n").contains('\n'));
    }
}
