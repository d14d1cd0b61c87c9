//! `pibl status`: the status page as a table in the terminal (as
//! `apachectl status`), or its JSON, read from the configured listener.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;

/// How long `pibl status` waits for the status listener.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(config: &Config, json: bool) -> Result<(), Error> {
    let Some(status) = &config.status else {
        return Err(Error::config(
            &config.path,
            0,
            "no status page: set [status] port to see one",
        ));
    };
    let addr = reachable(status.addr);
    let target = if json { "/status.json" } else { "/status?text" };
    let body = fetch(addr, target)
        .map_err(|e| Error::os(format!("cannot read the status page at http://{addr}"), e))?;
    print!("{body}");
    Ok(())
}

/// The address to call for a listener bound to `addr`: this host's for a
/// wildcard.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// GET `target` from `addr`; the body of a 200, or an error saying the
/// status it got.
fn fetch(addr: SocketAddr, target: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pibl-status\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        let why = format!("answered {status}: {}", body.trim_end());
        return Err(std::io::Error::other(why));
    }
    Ok(body.to_string())
}
