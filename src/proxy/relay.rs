//! One exchange: a request read from the client, relayed to the next
//! backend, and the backend's response relayed back.
//!
//! Runs in the child.  Knows nothing of processes or logs: it returns an
//! `Exchange` that says what happened, and the caller logs it and decides
//! whether the connection goes on.
//!
//! Failures of a backend are hidden from the client where that is safe: a
//! backend that cannot be connected to has received nothing, so the request
//! goes to the next one; an idempotent request whose backend fails before
//! answering is sent again to the next one, if pibl still holds its whole
//! body; a POST that may have reached a backend is never replayed.

use std::borrow::Cow;
use std::io::{self, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Instant, SystemTime};

use crate::cache::{self, Cache, Lookup, Status as CacheStatus};
use crate::config::Config;
use crate::http::body::{self, CopyError, Encode};
use crate::http::conditional::{self, Answer};
use crate::http::head::{HeadError, HeadRules, is_timeout, read_head};
use crate::http::wire::{self, Reader};
use crate::http::{self, Framing, Persist, Reject, RequestHead, ResponseHead};
use crate::proxy::pool::Pool;
use crate::proxy::splice;
use crate::proxy::upload::Upload;
use crate::proxy::{Context, End};

/// Size of the buffer on each side; bodies pass through it.
pub const BUFFER_SIZE: usize = 64 * 1024;
/// Largest request body kept in memory so an idempotent request can be
/// sent again to another backend.
const REPLAY_BODY_MAX: u64 = BUFFER_SIZE as u64;

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
    /// The backends tried, in order, as nginx logs `$upstream_addr`.
    pub upstream: Option<String>,
    pub time: SystemTime,
    pub started: Instant,
    pub keep_alive: bool,
    /// The client may still be sending a body pibl did not read: the
    /// connection is then closed lingering (`connection`).
    pub body_unread: bool,
    pub end: End,
    /// What the cache did, when there is one.
    pub cache: Option<CacheStatus>,
}

impl Exchange {
    fn new() -> Exchange {
        Exchange {
            request_line: "-".into(),
            referer: None,
            user_agent: None,
            minor: 1,
            status: 0,
            body_bytes: 0,
            upstream: None,
            time: SystemTime::now(),
            started: Instant::now(),
            keep_alive: false,
            body_unread: false,
            end: End::Served,
            cache: None,
        }
    }

    /// The request's body is left unread: the connection cannot carry
    /// another request.
    fn leave_body_unread(&mut self) {
        self.keep_alive = false;
        self.body_unread = true;
    }

    fn tried(&mut self, name: &str) {
        match &mut self.upstream {
            None => self.upstream = Some(name.to_string()),
            Some(list) => {
                list.push_str(", ");
                list.push_str(name);
            }
        }
    }
}

/// Serves one request from `client`.  `None` when the client closed (or
/// idled out) cleanly between requests.
pub fn exchange(
    client: &mut Reader<&TcpStream>,
    peer: IpAddr,
    ctx: &Context,
    pool: &mut Pool,
) -> Option<Exchange> {
    let limits = &ctx.config.limits;
    let rules = HeadRules {
        max_size: limits.max_header_size,
        max_line: Some(limits.max_request_line),
        deadline: Some(Instant::now() + ctx.config.timeouts.client_header),
    };
    let max_fields = limits.max_headers;
    let head = read_head(client, &rules, |buf| http::parse_request(buf, max_fields));
    let mut ex = Exchange::new();
    let mut req = match head {
        Ok(None) => return None,
        // Reset with not a byte of a request sent (a browser dropping a
        // kept connection, wrk at its end): nothing to answer or log, as
        // for a close, where nginx and HAProxy log nothing either.
        Err(HeadError::Io(e))
            if e.kind() == io::ErrorKind::ConnectionReset && client.buffered().is_empty() =>
        {
            return None;
        }
        Ok(Some(req)) => req,
        Err(HeadError::Reject(r)) => return Some(refuse(client, ex, r.status)),
        Err(HeadError::Io(e)) => return Some(refuse(client, ex, client_read_status(&e))),
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
    let (target, framing) = match check_request(&mut req, limits.max_body) {
        Ok(ok) => ok,
        Err(r) => {
            // The body is refused unread, and may not have come yet: the
            // close must drain it, however late it comes.
            if http::announces_body(&req) {
                ex.leave_body_unread();
            }
            return Some(refuse(client, ex, r.status));
        }
    };
    let request = Request {
        head: &req,
        target: &target,
        framing,
        peer,
    };
    Some(relay_to_backend(client, &request, ctx, pool, ex))
}

/// Validates a request head and returns the target to forward (origin-form)
/// and the body framing.  An absolute-form target's authority replaces Host
/// (RFC 9112 §3.2.2); its scheme, `http` or `https` (as nginx takes both),
/// is dropped with it.
fn check_request(req: &mut RequestHead, max_body: u64) -> Result<(String, Framing), Reject> {
    let bad = |why| Reject { status: 400, why };
    let framing = http::request_framing(req)?;
    if let Framing::Length(n) = framing
        && max_body > 0
        && n > max_body
    {
        return Err(Reject {
            status: 413,
            why: "body larger than max_body",
        });
    }
    if req.target.contains('#') {
        // A fragment is the client's own business (RFC 9110 §4.2.5) and has
        // no place in a request-target: a backend or cache keying on the
        // target would take "/a#x" for another resource than "/a".
        // HAProxy refuses it too.
        return Err(bad("fragment in the request target"));
    }
    let target = if req.target.starts_with('/') || (req.target == "*" && req.method == "OPTIONS") {
        req.target.clone()
    } else if req.method == "CONNECT" {
        return Err(Reject {
            status: 501,
            why: "CONNECT is not supported",
        });
    } else if let Some(rest) = strip_prefix_ignore_case(&req.target, "http://")
        .or_else(|| strip_prefix_ignore_case(&req.target, "https://"))
    {
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
    if !http::values(&req.fields, "host").all(http::valid_host) {
        return Err(bad("invalid Host"));
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

/// The status for a request whose head or body could not be read: a
/// client too slow (408), a body over max_body (413), or bytes that are
/// not HTTP (400).
fn client_read_status(e: &io::Error) -> u16 {
    if is_timeout(e) {
        408
    } else if e.kind() == io::ErrorKind::FileTooLarge {
        413
    } else {
        400
    }
}

/// The status for a request body that could not be read to its end.  Bar
/// a client too slow (408), the client may still be sending the rest: the
/// close must drain it.
fn body_read_failed(ex: &mut Exchange, e: &io::Error) -> u16 {
    let status = client_read_status(e);
    if status != 408 {
        ex.leave_body_unread();
    }
    status
}

/// Answers `Expect: 100-continue` just before pibl reads the body.  pibl
/// answers the expectation itself, as nginx does, and does not pass it on:
/// a backend then never waits for a client that waits for it.
fn send_continue(client: &Reader<&TcpStream>, req: &Request<'_>) {
    if req.wants_continue() {
        let _ = send(client, http::CONTINUE);
    }
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

/// `refuse` for a request whose body could not be read to its end (`e`).
fn refuse_body(client: &Reader<&TcpStream>, mut ex: Exchange, e: &io::Error) -> Exchange {
    let status = body_read_failed(&mut ex, e);
    refuse(client, ex, status)
}

/// Writes an error response; a client that is gone cannot be told.
fn send_error(client: &Reader<&TcpStream>, ex: &mut Exchange, status: u16) {
    send_error_with(client, ex, status, &[]);
}

fn send_error_with(
    client: &Reader<&TcpStream>,
    ex: &mut Exchange,
    status: u16,
    extra: &[(&str, &str)],
) {
    let response = http::error_response_with(status, persist_for(ex), extra);
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

/// Whether the response keeps the connection, and so what it says; not
/// once pibl winds the connection down (`signals::winding_down`).
fn persist_for(ex: &mut Exchange) -> Persist {
    ex.keep_alive &= !crate::signals::winding_down();
    if ex.keep_alive {
        Persist::KeepAlive {
            http10: ex.minor == 0,
        }
    } else {
        Persist::Close
    }
}

/// Ends the exchange with a status pibl sends after backend failures.  The
/// client connection survives only if no request body is left unread.
fn backend_failed(
    client: &Reader<&TcpStream>,
    mut ex: Exchange,
    status: u16,
    body_pending: bool,
) -> Exchange {
    ex.end = End::BackendFault;
    if body_pending {
        ex.leave_body_unread();
    }
    send_error(client, &mut ex, status);
    ex
}

/// A checked request, ready to forward.
struct Request<'a> {
    head: &'a RequestHead,
    target: &'a str,
    framing: Framing,
    peer: IpAddr,
}

impl Request<'_> {
    /// Methods whose repetition has the effect of one (RFC 9110 §9.2.2).
    fn is_idempotent(&self) -> bool {
        matches!(
            self.head.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }

    fn wants_continue(&self) -> bool {
        self.framing != Framing::Empty && self.head.minor == 1 && http::expects_continue(self.head)
    }
}

/// Why one attempt at a backend failed.
enum Attempt {
    /// Nothing reached the backend: another may always be tried.
    NotSent(String),
    /// The request (or part of it) may have reached the backend; the status
    /// for the client if no other backend is tried.
    Sent(String, u16),
    /// The client failed while its body was being relayed, and has been
    /// answered: the exchange is over, and no backend is to blame.
    ClientFault,
    /// pibl itself could not make the connection (`is_local_shortage`):
    /// nothing was sent, and the backend is not to blame.
    Local(String),
}

/// Errors of pibl's own resources rather than of the backend: out of file
/// descriptors, memory, buffers or local ports.  Counted against the
/// backend, they would mark every backend down in turn while pibl is
/// overloaded, turning a passing shortage into seconds of 502s.
fn is_local_shortage(e: &io::Error) -> bool {
    crate::error::is_out_of_resources(e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

fn connect(addr: std::net::SocketAddr, config: &Config) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, config.timeouts.connect)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.timeouts.backend))?;
    stream.set_write_timeout(Some(config.timeouts.backend))?;
    Ok(stream)
}

fn describe(what: &str, e: &io::Error) -> String {
    if is_timeout(e) {
        format!("{what}: timed out")
    } else {
        format!("{what}: {}", crate::error::describe_io(e))
    }
}

/// Reads a whole small body, so the request can be sent more than once.
fn read_replayable_body(
    client: &mut Reader<&TcpStream>,
    req: &Request<'_>,
) -> Result<Option<Vec<u8>>, io::Error> {
    match req.framing {
        Framing::Empty => Ok(Some(Vec::new())),
        Framing::Length(n) if req.is_idempotent() && n <= REPLAY_BODY_MAX => {
            send_continue(client, req);
            let mut body = Vec::with_capacity(n as usize);
            body::relay(client, &mut body, req.framing, Encode::Plain, 0)
                .map_err(io::Error::from)?;
            Ok(Some(body))
        }
        _ => Ok(None),
    }
}

/// Reads a body no one needs — a hit's: it is on the wire before the next
/// request, and must not be taken for one (as nginx discards it).
fn drop_body(client: &mut Reader<&TcpStream>, req: &Request<'_>, max_body: u64) -> io::Result<()> {
    if req.framing == Framing::Empty {
        return Ok(());
    }
    send_continue(client, req);
    body::relay(
        client,
        &mut io::sink(),
        req.framing,
        Encode::Plain,
        max_body,
    )?;
    Ok(())
}

/// The cache's part in one exchange: the key, and what to do with the
/// response.
struct CachePlan<'c> {
    cache: &'c Cache,
    key: String,
    /// Held while this process fetches the URL for the cache; its file
    /// becomes the entry.
    fill: Option<cache::FillLock>,
    /// An expired entry to revalidate, when it has validators.
    stale: Option<cache::Entry>,
}

/// Looks the request up.  `Err` carries a stored response to send.
fn consult_cache<'c>(
    cache: Option<&'c Cache>,
    req: &Request<'_>,
    ex: &mut Exchange,
) -> Result<Option<CachePlan<'c>>, Box<cache::Entry>> {
    let Some(cache) = cache else { return Ok(None) };
    let key = cache::key(req.head, req.target);
    // HTTP/1.0's `Pragma: no-cache` asks the same of a request that has
    // no Cache-Control (RFC 9111 §5.4).
    let bypass = match http::values(&req.head.fields, "cache-control").next() {
        Some(_) => http::tokens(&req.head.fields, "cache-control")
            .iter()
            .any(|t| t == "no-cache" || t == "no-store"),
        None => http::tokens(&req.head.fields, "pragma")
            .iter()
            .any(|t| t == "no-cache"),
    };
    let status = match req.head.method.as_str() {
        "GET" | "HEAD" if !bypass => match cache.lookup(&key) {
            Lookup::Fresh(entry) if cache::matches_vary(req.head, &entry.head) => {
                return Err(Box::new(entry));
            }
            Lookup::Fresh(_) => CacheStatus::Miss,
            Lookup::Missing => return fill_or_hit(cache, key, req, ex, CacheStatus::Miss, None),
            Lookup::Stale(entry) => {
                let stale = revalidatable(req.head, entry);
                return fill_or_hit(cache, key, req, ex, CacheStatus::Expired, stale);
            }
        },
        _ => CacheStatus::Bypass,
    };
    ex.cache = Some(status);
    Ok(Some(CachePlan {
        cache,
        key,
        fill: None,
        stale: None,
    }))
}

/// A stale entry worth revalidating: it has validators, it matches the
/// request's Vary values, and the client sent no conditions of its own
/// (which pibl then passes on untouched).
fn revalidatable(req: &RequestHead, entry: cache::Entry) -> Option<cache::Entry> {
    let client_conditional = req.fields.iter().any(conditional::is_condition);
    let useful = !client_conditional
        && cache::matches_vary(req, &entry.head)
        && !cache::validators(&entry).is_empty();
    useful.then_some(entry)
}

/// A miss: fetch, holding the URL's fill lock, or wait for the process
/// that holds it and look again.
fn fill_or_hit<'c>(
    cache: &'c Cache,
    key: String,
    req: &Request<'_>,
    ex: &mut Exchange,
    status: CacheStatus,
    stale: Option<cache::Entry>,
) -> Result<Option<CachePlan<'c>>, Box<cache::Entry>> {
    ex.cache = Some(status);
    let fill = match cache.fill(&key) {
        cache::Fill::Fetch(lock) => Some(lock),
        cache::Fill::Pass => None,
        cache::Fill::Waited => match cache.lookup(&key) {
            Lookup::Fresh(entry) if cache::matches_vary(req.head, &entry.head) => {
                return Err(Box::new(entry));
            }
            // Not stored after all (not cacheable, or a failure): fetch
            // without the lock, so such URLs are not fetched one at a time.
            _ => None,
        },
    };
    Ok(Some(CachePlan {
        cache,
        key,
        fill,
        stale,
    }))
}

impl CachePlan<'_> {
    /// Whether `req` is a HEAD this exchange fetches as a GET, to store
    /// the response, as nginx's `proxy_cache_convert_head`: one holding
    /// the URL's fill lock (not one of a URL whose responses are not
    /// stored).  The client gets the head; the body goes to the cache.
    fn fetches_head_as_get(&self, req: &RequestHead) -> bool {
        req.method == "HEAD" && self.fill.is_some()
    }

    /// The request to forward, when it is not the client's own: a GET for
    /// a HEAD fetched as one; with the stale entry's validators added,
    /// when there is one to revalidate and the request is a GET (a HEAD
    /// made conditional could only be answered with the 304 meant for
    /// pibl); without Range and If-Range when `whole` (`wants_whole`).
    fn forwarded(&self, req: &RequestHead, whole: bool) -> Option<RequestHead> {
        let as_get = self.fetches_head_as_get(req);
        let revalidate = self.stale.is_some() && (req.method == "GET" || as_get);
        if !revalidate && !whole && !as_get {
            return None;
        }
        let mut head = req.clone();
        if as_get {
            head.method = "GET".into();
        }
        if let Some(entry) = self.stale.as_ref().filter(|_| revalidate) {
            head.fields.extend(cache::validators(entry));
        }
        if whole || as_get {
            head.fields.retain(|f| {
                !f.name.eq_ignore_ascii_case("range") && !f.name.eq_ignore_ascii_case("if-range")
            });
        }
        Some(head)
    }

    /// After a 304 to a conditional request: the entry, refreshed.
    fn revalidated(&mut self, req: &RequestHead, resp: &ResponseHead) -> Option<cache::Entry> {
        if resp.status != 304 {
            return None;
        }
        let entry = self.stale.take()?;
        self.cache.refresh(&self.key, entry, req, resp)
    }

    /// A writer for the body of `resp`, if it is to be stored; removes the
    /// stored entry after an unsafe method succeeds (RFC 9111 §4.4).
    fn store(&mut self, req: &RequestHead, resp: &ResponseHead) -> Option<cache::Writer> {
        let unsafe_method = !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE");
        if unsafe_method && resp.status < 400 {
            self.cache.remove(&self.key);
        }
        let lifetime = self.cache.lifetime(req, resp);
        let Some(lifetime) = lifetime.filter(|_| !self.cache.too_large(resp)) else {
            self.not_storable(req);
            return None;
        };
        let vary = cache::vary_values(req, resp);
        self.cache
            .begin(&self.key, resp, lifetime, vary, self.fill.take())
    }

    /// The response is not to be stored: the fill lock, if this exchange
    /// holds it, goes now rather than once the body is relayed, and for a
    /// GET the URL is noted, so that its next misses do not wait for one
    /// another (`Cache::fill`).
    fn not_storable(&mut self, req: &RequestHead) {
        if let Some(lock) = self.fill.take() {
            if req.method == "GET" {
                self.cache.note_pass(&self.key);
            }
            drop(lock);
        }
    }
}

fn relay_to_backend(
    client: &mut Reader<&TcpStream>,
    req: &Request<'_>,
    ctx: &Context,
    pool: &mut Pool,
    mut ex: Exchange,
) -> Exchange {
    let mut plan = match consult_cache(ctx.cache.as_ref(), req, &mut ex) {
        Ok(plan) => plan,
        Err(entry) => {
            if let Err(e) = drop_body(client, req, ctx.config.limits.max_body) {
                return refuse_body(client, ex, &e);
            }
            return serve_hit(client, *entry, req, ex, CacheStatus::Hit);
        }
    };
    let kept = match read_replayable_body(client, req) {
        Ok(kept) => kept,
        Err(e) => return refuse_body(client, ex, &e),
    };
    let body_pending = kept.is_none() && req.framing != Framing::Empty;
    let balancer = &ctx.balancer;
    let whole = wants_whole(req.head, ex.cache);
    let forwarded = plan.as_ref().and_then(|p| p.forwarded(req.head, whole));
    let forwarded_head = forwarded.as_ref().unwrap_or(req.head);
    let head_only = forwarded_head.method != req.head.method;
    // Only a request pibl could send again goes on a kept connection, and
    // only its connection is kept afterwards.
    let replayable = kept.is_some() && req.is_idempotent();
    let mut tried = Vec::new();
    let mut status = 502;
    let mut head = Vec::with_capacity(1024);
    while let Some(i) = balancer.pick(&tried) {
        tried.push(i);
        let backend = balancer.backend(i);
        ex.tried(&backend.name);
        http::forward_request(
            forwarded_head,
            req.target,
            req.peer,
            &backend.name,
            req.framing,
            replayable,
            &mut head,
        );
        let idle = if replayable { pool.take(i) } else { None };
        let reused = idle.is_some();
        let mut result = attempt(
            client,
            req,
            ctx,
            pool,
            idle,
            backend.addr,
            &head,
            kept.as_deref(),
            &mut ex,
        );
        if reused && matches!(result, Err(Attempt::Sent(_, 502))) {
            // The backend closed the kept connection as pibl sent on it:
            // no fault of the backend's; the same request on a new one.
            result = attempt(
                client,
                req,
                ctx,
                pool,
                None,
                backend.addr,
                &head,
                kept.as_deref(),
                &mut ex,
            );
        }
        match result {
            Ok((resp, from_backend)) => {
                balancer.record_success(i);
                // Judged as the request that was sent: a HEAD fetched as a
                // GET is stored, and refreshed, as a GET.
                let sent = forwarded_head;
                if let Some(entry) = plan.as_mut().and_then(|p| p.revalidated(sent, &resp)) {
                    return serve_hit(client, entry, req, ex, CacheStatus::Revalidated);
                }
                let store = plan.as_mut().and_then(|p| p.store(sent, &resp));
                let keep = replayable.then_some(i);
                let wanted = Wanted {
                    method: &sent.method,
                    head_only,
                    part: (whole && !head_only)
                        .then(|| part_of(req.head, &resp))
                        .flatten(),
                };
                return relay_response(client, resp, from_backend, wanted, store, (pool, keep), ex);
            }
            Err(Attempt::ClientFault) => return ex,
            Err(Attempt::Local(why)) => {
                // Not the backend's failure: the next is tried, and if
                // all fail so, the client gets 503 (as from HAProxy):
                // pibl is out of resources for now.
                crate::diag!("backend {}: {why}", backend.name);
                status = 503;
            }
            Err(Attempt::NotSent(why)) => balancer.record_failure(i, &why),
            Err(Attempt::Sent(why, code)) => {
                balancer.record_failure(i, &why);
                status = code;
                if kept.is_none() || !req.is_idempotent() {
                    return backend_failed(client, ex, status, false);
                }
            }
        }
    }
    if tried.is_empty() {
        crate::diag!("no backend is up");
    }
    backend_failed(client, ex, status, body_pending)
}

/// One try at one backend: connect, send the request, read the final
/// response head.
/// `idle` is a kept connection to the backend at `addr`, if there is one.
#[allow(clippy::too_many_arguments)]
fn attempt(
    client: &mut Reader<&TcpStream>,
    req: &Request<'_>,
    ctx: &Context,
    pool: &mut Pool,
    idle: Option<Reader<TcpStream>>,
    addr: std::net::SocketAddr,
    head: &[u8],
    kept: Option<&[u8]>,
    ex: &mut Exchange,
) -> Result<(ResponseHead, Reader<TcpStream>), Attempt> {
    let mut from_backend = match idle {
        Some(conn) => conn,
        None => pool.wrap(connect(addr, &ctx.config).map_err(|e| {
            let why = describe("connect", &e);
            if is_local_shortage(&e) {
                Attempt::Local(why)
            } else {
                Attempt::NotSent(why)
            }
        })?),
    };
    let upstream = from_backend.get_ref();
    let sent = match kept {
        Some(body) => crate::http::wire::write_all_vectored(&mut &*upstream, &[head, body]),
        None => (&*upstream).write_all(head),
    };
    sent.map_err(|e| Attempt::Sent(describe("sending the request", &e), 502))?;
    if kept.is_none() {
        send_continue(client, req);
        let encode = if req.framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Plain
        };
        let pipe = match req.framing {
            Framing::Length(n) if splice::worthwhile(n, client.buffered().len()) => pool.pipe(),
            _ => None,
        };
        // Dropped, blocking again, before the answer is read.
        let upload = Upload::begin(upstream)
            .map_err(|e| Attempt::Sent(describe("sending the request", &e), 502))?;
        let copied = match (req.framing, pipe) {
            (Framing::Length(n), Some(pipe)) => {
                splice::relay_length(client, upstream, &[], n, pipe)
            }
            _ => body::relay(
                client,
                &mut upload.sink(),
                req.framing,
                encode,
                ctx.config.limits.max_body,
            ),
        };
        drop(upload);
        match copied {
            Ok(_) => {}
            Err(CopyError::Read(e) | CopyError::HeadUnsent(e)) => {
                // The client's fault; the exchange ends here, and the
                // caller must not blame the backend.
                ex.keep_alive = false;
                ex.end = End::ClientFault;
                let status = body_read_failed(ex, &e);
                send_error(client, ex, status);
                return Err(Attempt::ClientFault);
            }
            // The backend stopped reading: it may have answered early (a
            // 413, say); its answer, if any, is read below.  The unread rest
            // of the body makes the client connection unusable.
            Err(CopyError::Write(_)) => ex.leave_body_unread(),
        }
    }
    let resp = read_final_head(client, &mut from_backend, ex.minor)?;
    Ok((resp, from_backend))
}

/// Reads the backend's response head, relaying interim 1xx responses
/// (other than 100, which pibl already sent or the client did not ask for).
fn read_final_head(
    client: &Reader<&TcpStream>,
    upstream: &mut Reader<TcpStream>,
    client_minor: u8,
) -> Result<ResponseHead, Attempt> {
    let rules = HeadRules::for_response(BUFFER_SIZE);
    loop {
        let head = match read_head(upstream, &rules, http::parse_response_head) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Attempt::Sent("closed without a response".into(), 502)),
            Err(HeadError::Io(e)) if is_timeout(&e) => {
                return Err(Attempt::Sent(describe("response", &e), 504));
            }
            Err(HeadError::Io(e)) => return Err(Attempt::Sent(describe("response", &e), 502)),
            Err(HeadError::Reject(r)) => {
                return Err(Attempt::Sent(format!("malformed response: {}", r.why), 502));
            }
        };
        match head.status {
            101 => {
                return Err(Attempt::Sent(
                    "unexpected 101 Switching Protocols".into(),
                    502,
                ));
            }
            100 => continue,
            0..=99 | 600.. => {
                let why = format!("invalid status {}", head.status);
                return Err(Attempt::Sent(why, 502));
            }
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

/// Should a GET that missed be forwarded without its Range, so that the
/// whole response comes back to be stored?  Its range is then cut from the
/// response as it passes (`part_of`), as nginx does with its cache: else
/// a resource only ever fetched in ranges (a video, a resumed download)
/// would come back as 206s, which are not stored, and never be cached.
fn wants_whole(req: &RequestHead, status: Option<CacheStatus>) -> bool {
    matches!(status, Some(CacheStatus::Miss | CacheStatus::Expired))
        && req.method == "GET"
        && http::values(&req.fields, "range").next().is_some()
}

/// The part of the whole response `resp` the client's Range asks for,
/// and the whole's length, when there is one to send as a 206: one range,
/// of a 200 whose length is known.
fn part_of(req: &RequestHead, resp: &ResponseHead) -> Option<(std::ops::Range<u64>, u64)> {
    let Ok(Framing::Length(len)) = http::response_framing("GET", resp) else {
        return None;
    };
    match conditional::answer(req, resp, len) {
        Answer::Part(range) => Some((range, len)),
        _ => None,
    }
}

/// What the client asked of a response: the method it is an answer to;
/// whether it wants the head alone (a HEAD fetched as a GET); the part
/// of its body to send, if only a part (a 206), with the whole's length.
struct Wanted<'a> {
    method: &'a str,
    head_only: bool,
    part: Option<(std::ops::Range<u64>, u64)>,
}

/// Relays the response whose head is `resp` to the client.
fn relay_response(
    client: &Reader<&TcpStream>,
    resp: ResponseHead,
    mut from_backend: Reader<TcpStream>,
    wanted: Wanted<'_>,
    mut store: Option<cache::Writer>,
    (pool, keep): (&mut Pool, Option<usize>),
    mut ex: Exchange,
) -> Exchange {
    let framing = match http::response_framing(wanted.method, &resp) {
        Ok(framing) => framing,
        Err(why) => {
            let backend = ex.upstream.as_deref().unwrap_or("-");
            crate::diag!("backend {backend}: malformed response: {why}");
            return backend_failed(client, ex, 502, false);
        }
    };
    // A body delimited by the end of the connection is re-framed as chunks
    // for an HTTP/1.1 client, whose connection can then stay open; an
    // HTTP/1.0 client gets the plain bytes, and the close.
    let (to_client, encode) = match framing {
        Framing::Empty => (Framing::Empty, Encode::Plain),
        Framing::Length(n) => (Framing::Length(n), Encode::Plain),
        Framing::Chunked | Framing::UntilClose if ex.minor == 1 => {
            (Framing::Chunked, Encode::Chunked)
        }
        Framing::Chunked | Framing::UntilClose => (Framing::UntilClose, Encode::Plain),
    };
    let to_client = if wanted.head_only {
        Framing::Empty
    } else {
        to_client
    };
    ex.keep_alive &= to_client != Framing::UntilClose;
    let mut head = Vec::with_capacity(1024);
    // X-Cache, and for a part its Content-Range (a part comes of a miss,
    // so never without X-Cache).
    let content_range = wanted
        .part
        .as_ref()
        .map(|(part, len)| format!("bytes {}-{}/{len}", part.start, part.end - 1));
    let extra = [
        ("X-Cache", ex.cache.map_or("", |c| c.as_str())),
        (
            "Content-Range",
            content_range.as_deref().unwrap_or_default(),
        ),
    ];
    let extra = &extra[..usize::from(ex.cache.is_some()) + usize::from(content_range.is_some())];
    let (shown, to_client) = match &wanted.part {
        Some((part, _)) => (
            Cow::Owned(restated(&resp, 206, &[])),
            Framing::Length(part.end - part.start),
        ),
        None => (Cow::Borrowed(&resp), to_client),
    };
    http::forward_response_with(&shown, to_client, persist_for(&mut ex), extra, &mut head);
    ex.status = shown.status;
    if wanted.head_only {
        return send_head_and_store(
            client,
            &head,
            (&resp, from_backend, framing),
            store,
            pool,
            keep,
            ex,
        );
    }
    let mut out = *client.get_ref();
    let pipe = match framing {
        Framing::Length(n)
            if store.is_none()
                && wanted.part.is_none()
                && encode == Encode::Plain
                && splice::worthwhile(n, from_backend.buffered().len()) =>
        {
            pool.pipe()
        }
        _ => None,
    };
    let tap = store.as_mut().map(|w| w as &mut dyn Write);
    let copied = match (framing, pipe, &wanted.part) {
        (Framing::Length(n), Some(pipe), _) => {
            splice::relay_length(&mut from_backend, out, &head, n, pipe)
        }
        // The head alone, then the body through a window onto the part.
        (_, _, Some((part, _))) => send(client, &head)
            .map_err(CopyError::Write)
            .and_then(|()| {
                let mut window = body::Window::new(out, part.clone());
                body::relay_tapped(&mut from_backend, &mut window, &[], framing, encode, 0, tap)
                    .map(|_| part.end - part.start)
            }),
        _ => body::relay_tapped(&mut from_backend, &mut out, &head, framing, encode, 0, tap),
    };
    match copied {
        Ok(n) => {
            ex.body_bytes = n;
            if let Some(writer) = store {
                writer.commit();
            }
            give_back(pool, keep, from_backend, &resp, framing);
        }
        Err(CopyError::HeadUnsent(e)) => {
            // The backend failed before the body's first byte, so the
            // client has seen nothing yet: it gets the error, as when the
            // head itself is bad (nginx closes without a word here).
            crate::diag!(
                "backend {}: {}",
                ex.upstream.as_deref().unwrap_or("-"),
                describe("response body", &e)
            );
            pool.discard(from_backend);
            let status = if is_timeout(&e) { 504 } else { 502 };
            return backend_failed(client, ex, status, false);
        }
        Err(CopyError::Read(e)) => {
            // The head is out: all that is left is to cut the connection,
            // so the client sees the body is incomplete.
            crate::diag!(
                "backend {}: {}; response cut short",
                ex.upstream.as_deref().unwrap_or("-"),
                describe("response body", &e)
            );
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

/// Keeps the backend connection that carried `resp`, whose body has
/// been read to its end, for the next request to backend `keep` — if it
/// can carry another.
fn give_back(
    pool: &mut Pool,
    keep: Option<usize>,
    from_backend: Reader<TcpStream>,
    resp: &ResponseHead,
    framing: Framing,
) {
    let reusable = framing != Framing::UntilClose
        && http::backend_keeps_alive(resp)
        && from_backend.buffered().is_empty();
    match keep {
        Some(i) if reusable => pool.put(i, from_backend),
        _ => pool.discard(from_backend),
    }
}

/// A HEAD fetched as a GET: the client gets `head`; the body goes to the
/// cache alone.  When it is not to be stored (or stops being, past
/// `max_entry`) the rest is not read for nothing: the backend connection
/// goes instead.
fn send_head_and_store(
    client: &Reader<&TcpStream>,
    head: &[u8],
    (resp, mut from_backend, framing): (&ResponseHead, Reader<TcpStream>, Framing),
    store: Option<cache::Writer>,
    pool: &mut Pool,
    keep: Option<usize>,
    mut ex: Exchange,
) -> Exchange {
    if send(client, head).is_err() {
        ex.end = End::ClientFault;
        ex.keep_alive = false;
        pool.discard(from_backend);
        return ex;
    }
    let Some(mut writer) = store else {
        pool.discard(from_backend);
        return ex;
    };
    let mut only = cache::StoreOnly(&mut writer);
    match body::relay(&mut from_backend, &mut only, framing, Encode::Plain, 0) {
        Ok(_) => {
            writer.commit();
            give_back(pool, keep, from_backend, resp, framing);
        }
        Err(CopyError::Read(e) | CopyError::HeadUnsent(e)) => {
            crate::diag!(
                "backend {}: {}; not stored",
                ex.upstream.as_deref().unwrap_or("-"),
                describe("response body", &e)
            );
            pool.discard(from_backend);
        }
        Err(CopyError::Write(_)) => pool.discard(from_backend),
    }
    ex
}

/// Answers from the cache: the stored head with `Age` and `X-Cache: HIT`,
/// and the body straight from the file with sendfile(2) — or, when it is
/// small enough to have come with the first read of the file, from memory.
/// A conditional or range request may get 304, 412, 206 or 416 instead
/// (`conditional`).
fn serve_hit(
    client: &Reader<&TcpStream>,
    entry: cache::Entry,
    req: &Request<'_>,
    mut ex: Exchange,
    status: CacheStatus,
) -> Exchange {
    ex.cache = Some(status);
    let len = entry.body_len;
    let age = cache::age(&entry).to_string();
    let content_range;
    // Age, X-Cache, and Accept-Ranges or Content-Range.
    let mut extra = [
        ("Age", age.as_str()),
        ("X-Cache", status.as_str()),
        ("", ""),
    ];
    let mut fields = 2;
    let (head, part) = match conditional::answer(req.head, &entry.head, len) {
        Answer::Whole if entry.head.status == 200 => {
            (extra[2], fields) = (("Accept-Ranges", "bytes"), 3);
            (Cow::Borrowed(&*entry.head), 0..len)
        }
        Answer::Whole => (Cow::Borrowed(&*entry.head), 0..len),
        Answer::Part(range) => {
            content_range = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            (extra[2], fields) = (("Content-Range", content_range.as_str()), 3);
            (Cow::Owned(restated(&entry.head, 206, &[])), range)
        }
        Answer::NotModified => (Cow::Owned(restated(&entry.head, 304, NOT_IN_304)), 0..0),
        Answer::PreconditionFailed => {
            send_error(client, &mut ex, 412);
            return ex;
        }
        Answer::Unsatisfiable => {
            send_error_with(
                client,
                &mut ex,
                416,
                &[("Content-Range", &format!("bytes */{len}"))],
            );
            return ex;
        }
    };
    let framing = match head.status {
        204 | 304 => Framing::Empty,
        _ => Framing::Length(part.end - part.start),
    };
    let mut bytes = Vec::with_capacity(1024);
    let extra = &extra[..fields];
    http::forward_response_with(&head, framing, persist_for(&mut ex), extra, &mut bytes);
    ex.status = head.status;
    let part = if req.head.method == "HEAD" {
        0..0
    } else {
        part
    };
    match send_hit(client, &bytes, entry, part.clone()) {
        Ok(()) => ex.body_bytes = part.end - part.start,
        Err(_) => {
            ex.end = End::ClientFault;
            ex.keep_alive = false;
        }
    }
    ex
}

/// Sends a hit's head and the bytes `part` of its body.
fn send_hit(
    client: &Reader<&TcpStream>,
    head: &[u8],
    entry: cache::Entry,
    part: std::ops::Range<u64>,
) -> io::Result<()> {
    match entry.into_body() {
        // Read whole to check the entry: the head and body in one write.
        cache::Body::InMemory(body) => {
            let body = &body.bytes()[part.start as usize..part.end as usize];
            wire::write_all_vectored(&mut { *client.get_ref() }, &[head, body])
        }
        cache::Body::InFile(entry) => {
            let sent = match send(client, head) {
                Ok(()) if !part.is_empty() => send_file(client, &entry, part),
                other => other,
            };
            // After the reads: the kernel stamps reads with a coarser
            // clock, which must not leave this use looking older.
            cache::touch(&entry);
            sent
        }
    }
}

/// Representation fields a 304 leaves out, as nginx's does: the client
/// keeps those of its own copy (RFC 9110 §15.4.5).
const NOT_IN_304: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "accept-ranges",
];

/// The stored head with another status, and without the fields `dropped`.
fn restated(stored: &ResponseHead, status: u16, dropped: &[&str]) -> ResponseHead {
    let mut head = stored.clone();
    head.status = status;
    head.reason = http::reason(status).to_string();
    head.fields
        .retain(|f| !dropped.iter().any(|d| f.name.eq_ignore_ascii_case(d)));
    head
}

/// Copies the bytes `part` of the entry's body to the client inside the
/// kernel.
fn send_file(
    client: &Reader<&TcpStream>,
    entry: &cache::Entry,
    part: std::ops::Range<u64>,
) -> io::Result<()> {
    let mut offset = (entry.body_offset + part.start) as libc::off_t;
    let end = entry.body_offset + part.end;
    while (offset as u64) < end {
        let left = (end - offset as u64).min(1 << 30) as usize;
        match nix::sys::sendfile::sendfile(client.get_ref(), &entry.file, Some(&mut offset), left) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
