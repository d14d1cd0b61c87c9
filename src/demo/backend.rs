//! `pibl backend`: one replica of the demo web application.
//!
//! A small HTTP/1.1 origin server, one thread per connection (it is the
//! application pibl balances, not pibl itself).  Every response names the
//! replica in an `X-Backend` field, and the resources below let a user (and
//! the tests) exercise each way a body can be framed:
//!
//!   /                 an HTML page naming the replica (not cacheable)
//!   /whoami           the replica's name, as text (not cacheable)
//!   /big?kb=N         N KiB (default 1024), Content-Length, streamed
//!   /chunked?n=N      N chunks (default 4), chunked transfer coding
//!   /close            a body delimited by closing the connection
//!   /slow?ms=N        answers after N ms (default 1000)
//!   /status?code=N    an empty response with status N (e.g. 204, 304)
//!   /headers          the request head as the replica received it
//!   /peer             the address the request came from (the proxy's end
//!                     of the connection: shows which requests shared one)
//!   /echo             the request body, sent back as it came
//!   /sink             reads the body; answers its length and FNV-1a hash

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crate::http::body::{self, Encode};
use clap::CommandFactory;

use crate::cli::{BackendArgs, Cli};
use crate::clock;
use crate::error::Error;
use crate::http::head::{HeadError, HeadRules, read_head};
use crate::http::wire::Reader;
use crate::http::{self, Framing, RequestHead};

const BUFFER_SIZE: usize = 64 * 1024;
/// The pages that name the replica differ from replica to replica: no
/// cache may keep them, or the rotation would no longer show.
const NO_STORE: (&str, &str) = ("Cache-Control", "no-store");

pub fn run(cli: &Cli, args: &BackendArgs) -> Result<(), Error> {
    let Some(port) = cli.port else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "pibl backend needs --port N",
            )
            .exit();
    };
    let listen = cli.listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let addr = SocketAddr::new(listen, port);
    // pibl's own listen backlog (511), not std's 128: a replica under a
    // benchmark must not refuse connections that pibl would queue.
    let listener = crate::models::listener::bind(addr)?;
    listener
        .set_nonblocking(false)
        .map_err(|e| Error::os("cannot make the listener blocking", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::os("cannot read the listening address", e))?;
    let name: Arc<str> = args
        .name
        .clone()
        .unwrap_or_else(|| bound.to_string())
        .into();
    eprintln!("pibl backend {name}: listening on {bound}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = Arc::clone(&name);
        thread::spawn(move || {
            let _ = serve(&stream, &name);
        });
    }
    Ok(())
}

fn serve(stream: &TcpStream, name: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = Reader::with_capacity(stream, BUFFER_SIZE);
    loop {
        let rules = HeadRules::for_response(BUFFER_SIZE);
        let req = match read_head(&mut reader, &rules, |buf| {
            http::parse_request(buf, http::MAX_FIELDS)
        }) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(HeadError::Reject(_)) => {
                return reply(stream, name, 400, false, &[], b"bad request\n");
            }
            Err(HeadError::Io(e)) => return Err(e),
        };
        let Ok(framing) = http::request_framing(&req) else {
            return reply(stream, name, 400, false, &[], b"bad framing\n");
        };
        if http::expects_continue(&req) && framing != Framing::Empty {
            (&mut &*stream).write_all(http::CONTINUE)?;
        }
        let keep = http::client_keeps_alive(&req);
        if !respond(&mut reader, stream, name, &req, framing, keep)? || !keep {
            return Ok(());
        }
    }
}

/// `value` of `key` in the query string of `target`, as a number.
fn query_number(target: &str, key: &str) -> Option<u64> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Answers one request.  False when the connection must close.
fn respond(
    reader: &mut Reader<&TcpStream>,
    stream: &TcpStream,
    name: &str,
    req: &RequestHead,
    framing: Framing,
    keep: bool,
) -> io::Result<bool> {
    let path = req.target.split('?').next().unwrap_or("/");
    let reply = Reply {
        stream,
        name,
        keep,
        head_only: req.method == "HEAD",
    };
    match path {
        "/echo" => return echo(reader, stream, name, framing, keep, reply.head_only),
        "/sink" => {
            let mut hash = Fnv::default();
            body::relay(reader, &mut hash, framing, Encode::Plain, 0).map_err(io::Error::from)?;
            let text = format!("bytes={} fnv1a={:016x}\n", hash.len, hash.state);
            reply.body(200, &[], text.as_bytes())?;
            return Ok(true);
        }
        _ => {
            body::relay(reader, &mut io::sink(), framing, Encode::Plain, 0)
                .map_err(io::Error::from)?;
        }
    }
    answer(&reply, path, req)
}

/// Where and how one request is answered.
struct Reply<'a> {
    stream: &'a TcpStream,
    name: &'a str,
    keep: bool,
    head_only: bool,
}

impl Reply<'_> {
    /// A response with `body` (its head alone for a HEAD).
    fn send(&self, status: u16, fields: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        let (stream, name, keep) = (self.stream, self.name, self.keep);
        reply_maybe_head(stream, name, status, keep, fields, body, self.head_only)
    }

    /// Writes a 200's head with `fields` (and `Connection: close` unless
    /// the connection is kept); true when a body is to follow it.
    fn head(&self, fields: &[(&str, &str)]) -> io::Result<bool> {
        let mut fields = fields.to_vec();
        if !self.keep {
            fields.push(("Connection", "close"));
        }
        let mut out = self.stream;
        out.write_all(response_head(200, self.name, &fields).as_bytes())?;
        Ok(!self.head_only)
    }

    /// A response with `body`, whatever the method.
    fn body(&self, status: u16, fields: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        reply(self.stream, self.name, status, self.keep, fields, body)
    }
}

/// Answers a request whose body has been read: false when the connection
/// is to close.
fn answer(reply: &Reply<'_>, path: &str, req: &RequestHead) -> io::Result<bool> {
    let name = reply.name;
    let number = |key: &str, default: u64| query_number(&req.target, key).unwrap_or(default);
    match path {
        "/" => {
            let page = format!(
                "<!DOCTYPE html>\n<html><head><title>{name}</title></head>\n<body><h1>Replica {name}</h1>\n<p>This answer came from replica <b>{name}</b>, through pibl.</p></body></html>\n"
            );
            let ctype = [("Content-Type", "text/html; charset=utf-8"), NO_STORE];
            reply.send(200, &ctype, page.as_bytes())?;
        }
        "/whoami" => reply.send(200, &[NO_STORE], format!("{name}\n").as_bytes())?,
        "/big" => big(reply, number("kb", 1024))?,
        "/page" => page(reply, number("kb", 16))?,
        "/chunked" => chunked(reply, number("n", 4))?,
        "/close" => {
            let head = response_head(200, name, &[("Connection", "close")]);
            let mut out = reply.stream;
            out.write_all(head.as_bytes())?;
            if !reply.head_only {
                out.write_all(format!("closing after this, from {name}\n").as_bytes())?;
            }
            return Ok(false);
        }
        "/slow" => {
            thread::sleep(Duration::from_millis(number("ms", 1000)));
            reply.send(200, &[], format!("slow answer from {name}\n").as_bytes())?;
        }
        "/status" => {
            let code = number("code", 200) as u16;
            let code = if (200..600).contains(&code) {
                code
            } else {
                400
            };
            reply_maybe_head(reply.stream, name, code, reply.keep, &[], b"", true)?;
        }
        "/peer" => {
            let peer = reply.stream.peer_addr()?;
            reply.send(200, &[NO_STORE], format!("{peer}\n").as_bytes())?;
        }
        "/headers" => {
            let mut seen = format!("{} {} HTTP/1.{}\r\n", req.method, req.target, req.minor);
            for f in &req.fields {
                let value = String::from_utf8_lossy(&f.value);
                seen.push_str(&format!("{}: {value}\r\n", f.name));
            }
            reply.send(200, &[], seen.as_bytes())?;
        }
        _ => reply.send(404, &[], format!("no {path} on {name}\n").as_bytes())?,
    }
    Ok(true)
}

fn response_head(status: u16, name: &str, fields: &[(&str, &str)]) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: pibl-backend\r\nDate: {}\r\nX-Backend: {name}\r\n",
        http::reason(status).replace("Unknown", "Status"),
        clock::http_date(SystemTime::now())
    );
    for (k, v) in fields {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn reply(
    stream: &TcpStream,
    name: &str,
    status: u16,
    keep: bool,
    fields: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    reply_maybe_head(stream, name, status, keep, fields, body, false)
}

/// A response with a Content-Length body; `head_only` sends the head alone
/// (HEAD requests, and statuses without a body).
fn reply_maybe_head(
    stream: &TcpStream,
    name: &str,
    status: u16,
    keep: bool,
    fields: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = fields.to_vec();
    if status != 204 && status != 304 {
        all.push(("Content-Length", &len));
    }
    if !keep {
        all.push(("Connection", "close"));
    }
    let mut out = response_head(status, name, &all).into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    let mut stream = stream;
    stream.write_all(&out)
}

fn big(reply: &Reply<'_>, kb: u64) -> io::Result<()> {
    let len = (kb * 1024).to_string();
    let fields = [
        ("Content-Length", len.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    if !reply.head(&fields)? {
        return Ok(());
    }
    let mut out = reply.stream;
    let block = pattern_block();
    let mut left = kb * 1024;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// `/page`: an HTML table of `kb` KiB, the same from every replica, which
/// a cache may keep and compresses as a real page does.
fn page(reply: &Reply<'_>, kb: u64) -> io::Result<()> {
    let len = (kb * 1024).to_string();
    let fields = [
        ("Content-Length", len.as_str()),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "max-age=60"),
    ];
    if !reply.head(&fields)? {
        return Ok(());
    }
    let mut out = io::BufWriter::with_capacity(BUFFER_SIZE, reply.stream);
    page_text(kb * 1024, |bytes| out.write_all(bytes))?;
    out.flush()
}

/// The first `len` bytes of the `/page` text, given to `each` a row at a
/// time: a table of numbered rows, its words picked by a hash of the row
/// number.
pub fn page_text(len: u64, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    const WORDS: [&str; 16] = [
        "anchor", "basalt", "cobalt", "dune", "ember", "fjord", "granite", "harbor", "iris",
        "juniper", "kelp", "lumen", "meadow", "nickel", "orchid", "prairie",
    ];
    let top = b"<!DOCTYPE html>\n<html><head><title>Catalogue</title></head>\n<body><table>\n";
    let mut left = len;
    let mut give = |bytes: &[u8]| -> io::Result<bool> {
        let n = left.min(bytes.len() as u64) as usize;
        each(&bytes[..n])?;
        left -= n as u64;
        Ok(left > 0)
    };
    let mut more = give(top)?;
    let mut i: u64 = 0;
    while more {
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let word = |k: u64| WORDS[((h >> (4 * k)) & 15) as usize];
        let row = format!(
            "<tr><td class=\"id\">{i}</td><td>{} {}</td><td class=\"price\">{}.{:02}</td><td>{}</td></tr>\n",
            word(0),
            word(1),
            h % 1000,
            h % 97,
            word(2)
        );
        more = give(row.as_bytes())?;
        i += 1;
    }
    Ok(())
}

/// 64 KiB of the byte pattern `/big` repeats: byte i is i mod 251, so a
/// misplaced or lost block shows.
pub fn pattern_block() -> Vec<u8> {
    (0..BUFFER_SIZE).map(|i| (i % 251) as u8).collect()
}

fn chunked(reply: &Reply<'_>, n: u64) -> io::Result<()> {
    let fields = [
        ("Transfer-Encoding", "chunked"),
        ("Content-Type", "text/plain"),
    ];
    if !reply.head(&fields)? {
        return Ok(());
    }
    let (mut out, name) = (reply.stream, reply.name);
    for i in 1..=n {
        let data = format!("chunk {i} of {n} from {name}\n");
        out.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    }
    out.write_all(b"0\r\n\r\n")
}

/// Sends the body back in the framing it came in.
fn echo(
    reader: &mut Reader<&TcpStream>,
    stream: &TcpStream,
    name: &str,
    framing: Framing,
    keep: bool,
    head_only: bool,
) -> io::Result<bool> {
    let (field, value, encode) = match framing {
        Framing::Chunked => (
            "Transfer-Encoding",
            String::from("chunked"),
            Encode::Chunked,
        ),
        Framing::Length(n) => ("Content-Length", n.to_string(), Encode::Plain),
        _ => ("Content-Length", String::from("0"), Encode::Plain),
    };
    let mut fields = vec![(field, value.as_str())];
    if !keep {
        fields.push(("Connection", "close"));
    }
    let mut out = stream;
    out.write_all(response_head(200, name, &fields).as_bytes())?;
    if head_only {
        body::relay(reader, &mut io::sink(), framing, Encode::Plain, 0).map_err(io::Error::from)?;
    } else {
        body::relay(reader, &mut out, framing, encode, 0).map_err(io::Error::from)?;
    }
    Ok(true)
}

/// Counts and hashes what is written to it (FNV-1a, 64 bits).
struct Fnv {
    len: u64,
    state: u64,
}

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv {
            len: 0,
            state: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.state = (self.state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
