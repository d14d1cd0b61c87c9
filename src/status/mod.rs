//! The status listener (`[status]`): a live page, Prometheus metrics,
//! Apache's `?auto`, JSON, a health answer — served by a helper process
//! of its own from the shared counters (`stats`), never by the proxy's
//! children, so that a flood of requests here slows none of them.  And
//! `pibl status`, its client on the command line.
//!
//! The helper answers one request per connection, one connection at a
//! time, with the proxy's head limits and timeouts; a client outside
//! `allow` gets 403 and nothing else.

pub mod client;
mod render;

use std::io::{self, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::diag;
use crate::http::head::{HeadRules, read_head};
use crate::http::wire::Reader;
use crate::http::{self, Parsed, Reject, RequestHead};
use crate::proxy::Context;
use render::Report;

/// How often the helper looks whether it is to stop, while no one calls.
const POLL: Duration = Duration::from_millis(500);

/// The status listener `config` asks for, if any: the one `given` has
/// for its address, or one bound now.
pub fn bind(
    config: &crate::config::Config,
    given: &mut crate::systemd::Inherited,
) -> Result<Option<TcpListener>, crate::error::Error> {
    let Some(status) = &config.status else {
        return Ok(None);
    };
    if let Some(listener) = given.take(status.addr) {
        return Ok(Some(listener));
    }
    let listener = TcpListener::bind(status.addr).map_err(|e| {
        crate::error::Error::os(format!("cannot listen on {} for [status]", status.addr), e)
    })?;
    Ok(Some(listener))
}

/// Serves `listener` until `keep_going` says no (a process: until SIGTERM).
pub fn serve(listener: &TcpListener, ctx: &Context, keep_going: &dyn Fn() -> bool) {
    while keep_going() {
        if !crate::signals::wait_readable(listener.as_fd(), POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(&stream, peer.ip(), ctx) {
                    diag!("status page: {peer}: {}", crate::error::describe_io(&e));
                }
            }
            Err(e) if crate::error::is_out_of_resources(&e) => std::thread::sleep(POLL),
            Err(_) => {}
        }
    }
}

/// Reads one request from `stream` and answers it.
fn answer(stream: &TcpStream, peer: IpAddr, ctx: &Context) -> io::Result<()> {
    let timeouts = &ctx.config.timeouts;
    stream.set_read_timeout(Some(timeouts.client_header))?;
    stream.set_write_timeout(Some(timeouts.send))?;
    let allowed = ctx
        .config
        .status
        .as_ref()
        .is_some_and(|s| s.allow.iter().any(|net| net.contains(peer)));
    let limits = &ctx.config.limits;
    let rules = HeadRules {
        max_size: limits.max_header_size,
        max_line: Some(limits.max_request_line),
        deadline: Some(Instant::now() + timeouts.client_header),
    };
    let mut reader = Reader::with_capacity(stream, 16 * 1024);
    let max_fields = limits.max_headers;
    let parse = |buf: &[u8]| -> Result<Parsed<RequestHead>, Reject> {
        http::parse_request(buf, max_fields)
    };
    let reply = match read_head(&mut reader, &rules, parse) {
        Ok(None) => return Ok(()),
        Err(_) => Reply::text(400, "bad request\n"),
        Ok(Some(_)) if !allowed => Reply::text(403, "forbidden\n"),
        Ok(Some(req)) => {
            let head_only = req.method == "HEAD";
            return route(&req, ctx).send(stream, head_only);
        }
    };
    reply.send(stream, false)
}

/// A response of the status listener.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }

    fn send(&self, mut stream: &TcpStream, head_only: bool) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nServer: pibl\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            http::reason(self.status),
            self.content_type,
            self.body.len()
        );
        stream.write_all(head.as_bytes())?;
        if !head_only {
            stream.write_all(self.body.as_bytes())?;
        }
        Ok(())
    }
}

/// What the request for `req.target` gets.
fn route(req: &RequestHead, ctx: &Context) -> Reply {
    if req.method != "GET" && req.method != "HEAD" {
        return Reply::text(405, "only GET and HEAD\n");
    }
    let report = Report::take(ctx);
    let (content_type, body) = match req.target.as_str() {
        "/" => ("text/html; charset=utf-8", render::html(&report)),
        "/metrics" => (
            "text/plain; version=0.0.4; charset=utf-8",
            render::metrics(&report),
        ),
        "/status?auto" => ("text/plain; charset=utf-8", render::auto(&report)),
        "/status?text" => ("text/plain; charset=utf-8", render::text(&report)),
        "/status.json" => ("application/json", render::json(&report)),
        "/healthz" if report.any_backend_up() => ("text/plain; charset=utf-8", "ok\n".into()),
        "/healthz" => {
            return Reply::text(503, "no backend is up\n");
        }
        _ => return Reply::text(404, "not found\n"),
    };
    Reply {
        status: 200,
        content_type,
        body,
    }
}
