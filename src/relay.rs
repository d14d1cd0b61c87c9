//! One exchange: a request read from the client, relayed to the next
//! backend, and the backend's response relayed back.
//!
//! Runs in the child.  Knows nothing of processes or logs: it returns an
//! `Exchange` that says what happened, and the caller logs it and decides
//! whether the connection goes on.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use crate::balancer::Balancer;
use crate::body::{self, CopyError, Encode};
use crate::http::{self, Framing, Parsed, Persist, Reject, RequestHead, ResponseHead};
use crate::wire::Reader;

/// Read and write timeout on the client socket: a head, a body, an idle
/// keep-alive connection, a client that stopped reading (nginx: 60 s).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a backend to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence from a backend while it owes us bytes (nginx: 60 s).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Size of the buffer on each side; bodies pass through it.
pub const BUFFER_SIZE: usize = 64 * 1024;
/// Largest request head accepted (431 beyond).
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

/// How an exchange ended, from the child's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Served,
    /// The client sent something wrong, stalled, or went away.
    ClientFault,
    /// The backend could not be reached, stalled, or answered badly.
    BackendFault,
}

/// What happened, for the access log.
pub struct Exchange {
    /// `METHOD target HTTP/1.x`; `-` when no head could be read.
    pub request_line: String,
    pub referer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
    /// The client's HTTP minor version: 0 or 1.
    pub minor: u8,
    /// Status sent to the client; 0 when none could be.
    pub status: u16,
    pub body_bytes: u64,
    pub upstream: Option<String>,
    pub time: SystemTime,
    pub started: Instant,
    pub keep_alive: bool,
    pub end: End,
}

impl Exchange {
    fn new(time: SystemTime, started: Instant) -> Exchange {
        Exchange {
            request_line: "-".into(),
            referer: None,
            user_agent: None,
            minor: 1,
            status: 0,
            body_bytes: 0,
            upstream: None,
            time,
            started,
            keep_alive: false,
            end: End::Served,
        }
    }
}

pub enum HeadError {
    Reject(Reject),
    Io(io::Error),
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one head with `parse`, leaving what follows it buffered.
/// `Ok(None)`: the stream ended, or timed out, before its first byte.
pub fn read_head<R: Read, T>(
    reader: &mut Reader<R>,
    max: usize,
    parse: fn(&[u8]) -> Result<Parsed<T>, Reject>,
) -> Result<Option<T>, HeadError> {
    loop {
        let buffered = reader.buffered();
        if !buffered.is_empty() {
            match parse(buffered).map_err(HeadError::Reject)? {
                Parsed::Done(_, len) if len > max => {
                    return Err(HeadError::Reject(Reject {
                        status: 431,
                        why: "head too large",
                    }));
                }
                Parsed::Done(head, len) => {
                    reader.consume(len);
                    return Ok(Some(head));
                }
                Parsed::Partial if buffered.len() >= max || reader.is_full() => {
                    return Err(HeadError::Reject(Reject {
                        status: 431,
                        why: "head too large",
                    }));
                }
                Parsed::Partial => {}
            }
        }
        let idle = reader.buffered().is_empty();
        match reader.fill() {
            Ok(0) if idle => return Ok(None),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if idle && is_timeout(&e) => return Ok(None),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Serves one request from `client`.  `None` when the client closed (or
/// idled out) cleanly between requests.
pub fn exchange(
    client: &mut Reader<&TcpStream>,
    peer: IpAddr,
    balancer: &Balancer,
) -> Option<Exchange> {
    let head = read_head(client, MAX_REQUEST_HEAD, http::parse_request);
    let mut ex = Exchange::new(SystemTime::now(), Instant::now());
    let mut req = match head {
        Ok(None) => return None,
        Ok(Some(req)) => req,
        Err(HeadError::Reject(r)) => return Some(refuse(client, ex, r.status)),
        Err(HeadError::Io(e)) => {
            let status = if is_timeout(&e) { 408 } else { 400 };
            return Some(refuse(client, ex, status));
        }
    };
    ex.request_line = format!("{} {} HTTP/1.{}", req.method, req.target, req.minor);
    ex.referer = http::values(&req.fields, "referer")
        .next()
        .map(<[u8]>::to_vec);
    ex.user_agent = http::values(&req.fields, "user-agent")
        .next()
        .map(<[u8]>::to_vec);
    ex.minor = req.minor;
    ex.keep_alive = http::client_keeps_alive(&req);
    let (target, framing) = match check_request(&mut req) {
        Ok(ok) => ok,
        Err(r) => return Some(refuse(client, ex, r.status)),
    };
    Some(relay_to_backend(
        client, peer, balancer, &req, &target, framing, ex,
    ))
}

/// Validates a request head and returns the target to forward (origin-form)
/// and the body framing.  An absolute-form target's authority replaces Host
/// (RFC 9112 §3.2.2).
fn check_request(req: &mut RequestHead) -> Result<(String, Framing), Reject> {
    let bad = |why| Reject { status: 400, why };
    let framing = http::request_framing(req)?;
    let target = if req.target.starts_with('/') || (req.target == "*" && req.method == "OPTIONS") {
        req.target.clone()
    } else if req.method == "CONNECT" {
        return Err(Reject {
            status: 501,
            why: "CONNECT is not supported",
        });
    } else if let Some(rest) = strip_prefix_ignore_case(&req.target, "http://") {
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        if authority.is_empty() {
            return Err(bad("empty authority"));
        }
        req.fields.retain(|f| !f.name.eq_ignore_ascii_case("host"));
        req.fields.push(http::Field {
            name: "Host".into(),
            value: authority.as_bytes().to_vec(),
        });
        match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        }
    } else {
        return Err(bad("invalid request target"));
    };
    let hosts = http::values(&req.fields, "host").count();
    if (req.minor == 1 && hosts != 1) || hosts > 1 {
        return Err(bad("a request needs exactly one Host"));
    }
    if http::values(&req.fields, "expect").next().is_some() && !http::expects_continue(req) {
        return Err(Reject {
            status: 417,
            why: "unsupported expectation",
        });
    }
    Ok((target, framing))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Sends a response pibl makes itself and ends the exchange.  The
/// connection closes after any refusal of the client's request: what is
/// left of it on the wire cannot be trusted to frame the next one.
fn refuse(client: &Reader<&TcpStream>, mut ex: Exchange, status: u16) -> Exchange {
    ex.keep_alive = false;
    ex.end = End::ClientFault;
    send_error(client, &mut ex, status);
    ex
}

/// Writes an error response; a client that is gone cannot be told.
fn send_error(client: &Reader<&TcpStream>, ex: &mut Exchange, status: u16) {
    let persist = persist_for(ex);
    let response = http::error_response(status, persist);
    if send(client, &response).is_ok() {
        ex.status = status;
        ex.body_bytes = (response.len() - head_len(&response)) as u64;
    }
}

/// Writes bytes to the client of `client`.
fn send(client: &Reader<&TcpStream>, bytes: &[u8]) -> io::Result<()> {
    let mut out = *client.get_ref();
    out.write_all(bytes)
}

fn head_len(response: &[u8]) -> usize {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4)
}

fn persist_for(ex: &Exchange) -> Persist {
    if ex.keep_alive {
        Persist::KeepAlive {
            http10: ex.minor == 0,
        }
    } else {
        Persist::Close
    }
}

/// Ends the exchange with a status pibl sends after a backend failure.  The
/// client connection survives only if no request body is left unread.
fn backend_failed(
    client: &Reader<&TcpStream>,
    mut ex: Exchange,
    status: u16,
    body_pending: bool,
) -> Exchange {
    ex.end = End::BackendFault;
    ex.keep_alive &= !body_pending;
    send_error(client, &mut ex, status);
    ex
}

fn connect(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(BACKEND_TIMEOUT))?;
    stream.set_write_timeout(Some(BACKEND_TIMEOUT))?;
    Ok(stream)
}

fn relay_to_backend(
    client: &mut Reader<&TcpStream>,
    peer: IpAddr,
    balancer: &Balancer,
    req: &RequestHead,
    target: &str,
    framing: Framing,
    mut ex: Exchange,
) -> Exchange {
    let backend = balancer.pick();
    ex.upstream = Some(backend.name.clone());
    let has_body = framing != Framing::Empty;
    let Ok(upstream) = connect(backend.addr) else {
        return backend_failed(client, ex, 502, has_body);
    };
    let mut head = Vec::with_capacity(1024);
    http::forward_request(req, target, peer, &backend.name, framing, &mut head);
    if (&upstream).write_all(&head).is_err() {
        return backend_failed(client, ex, 502, has_body);
    }
    if has_body {
        if http::expects_continue(req) && req.minor == 1 {
            // pibl answers the expectation itself, as nginx does, and does
            // not pass it on: the backend then never waits for a client that
            // waits for it.
            let _ = send(client, b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let encode = if framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Plain
        };
        match body::relay(client, &mut &upstream, framing, encode) {
            Ok(_) => {}
            Err(CopyError::Read(e)) => {
                let status = if is_timeout(&e) { 408 } else { 400 };
                return refuse(client, ex, status);
            }
            // The backend stopped reading: it may have answered early (a
            // 413, say).  Its answer, if any, is read below; the unread rest
            // of the body makes the client connection unusable.
            Err(CopyError::Write(_)) => ex.keep_alive = false,
        }
    }
    relay_response(client, upstream, &req.method, ex)
}

/// Reads the backend's response head, relaying interim 1xx responses
/// (other than 100, which pibl already sent or the client did not ask for).
fn read_final_head(
    client: &Reader<&TcpStream>,
    upstream: &mut Reader<&TcpStream>,
    client_minor: u8,
) -> Result<ResponseHead, u16> {
    loop {
        let head = match read_head(upstream, BUFFER_SIZE, http::parse_response) {
            Ok(Some(h)) => h,
            Err(HeadError::Io(e)) if is_timeout(&e) => return Err(504),
            Ok(None) | Err(_) => return Err(502),
        };
        match head.status {
            101 => return Err(502), // pibl never forwards Upgrade
            100 => continue,
            102..=199 => {
                if client_minor == 1 {
                    let mut out = Vec::new();
                    http::forward_response(
                        &head,
                        Framing::Empty,
                        Persist::KeepAlive { http10: false },
                        &mut out,
                    );
                    let _ = send(client, &out);
                }
            }
            _ => return Ok(head),
        }
    }
}

fn relay_response(
    client: &Reader<&TcpStream>,
    upstream: TcpStream,
    method: &str,
    mut ex: Exchange,
) -> Exchange {
    let minor = ex.minor;
    let mut from_backend = Reader::with_capacity(&upstream, BUFFER_SIZE);
    let resp = match read_final_head(client, &mut from_backend, minor) {
        Ok(resp) => resp,
        Err(status) => return backend_failed(client, ex, status, false),
    };
    let Ok(framing) = http::response_framing(method, &resp) else {
        return backend_failed(client, ex, 502, false);
    };
    // A body delimited by the end of the connection is re-framed as chunks
    // for an HTTP/1.1 client, whose connection can then stay open; an
    // HTTP/1.0 client gets the plain bytes, and the close.
    let (to_client, encode) = match framing {
        Framing::Empty => (Framing::Empty, Encode::Plain),
        Framing::Length(n) => (Framing::Length(n), Encode::Plain),
        Framing::Chunked | Framing::UntilClose if minor == 1 => (Framing::Chunked, Encode::Chunked),
        Framing::Chunked | Framing::UntilClose => (Framing::UntilClose, Encode::Plain),
    };
    ex.keep_alive &= to_client != Framing::UntilClose;
    let mut head = Vec::with_capacity(1024);
    http::forward_response(&resp, to_client, persist_for(&ex), &mut head);
    let mut out = *client.get_ref();
    if out.write_all(&head).is_err() {
        ex.end = End::ClientFault;
        ex.keep_alive = false;
        return ex;
    }
    ex.status = resp.status;
    match body::relay(&mut from_backend, &mut out, framing, encode) {
        Ok(n) => ex.body_bytes = n,
        Err(CopyError::Read(_)) => {
            // The head is out: all that is left is to cut the connection,
            // so the client sees the body is incomplete.
            ex.end = End::BackendFault;
            ex.keep_alive = false;
        }
        Err(CopyError::Write(_)) => {
            ex.end = End::ClientFault;
            ex.keep_alive = false;
        }
    }
    ex
}
