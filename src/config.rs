//! pibl.conf: the TOML file, its defaults, and validation.
//!
//! Pure: reads one file and returns a `Config` or an `Error` that names the
//! file, the line and the problem.  Backend names are resolved here, once, in
//! the parent, so no child ever waits on DNS.

use std::fs;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;

pub const DEFAULT_PATH: &str = "pibl.conf";
pub const DEFAULT_LISTEN: &str = "0.0.0.0";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_LOG_FILE: &str = "pibl.log";
pub const DEFAULT_MAX_CLIENTS: usize = 512;

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    port: Option<u16>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    max_clients: Option<Spanned<i64>>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    file: Option<String>,
}

impl Config {
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
        let log_file = raw
            .log
            .and_then(|l| l.file)
            .unwrap_or(DEFAULT_LOG_FILE.into());

        Ok(Config {
            path: path.to_string(),
            listen,
            port: raw.port.unwrap_or(DEFAULT_PORT),
            backends,
            log_file: PathBuf::from(log_file),
            max_clients,
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
