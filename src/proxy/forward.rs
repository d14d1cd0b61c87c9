//! A checked request on its way to a backend: the cache consulted, the
//! next backend picked, the request sent, the final response head read.
//!
//! Failures of a backend are hidden from the client where that is safe: a
//! backend that cannot be connected to has received nothing, so the request
//! goes to the next one; an idempotent request whose backend fails before
//! answering is sent again to the next one, if pibl still holds its whole
//! body; a POST that may have reached a backend is never replayed.

use std::io::{self, Write};

use crate::cache::Status as CacheStatus;
use crate::cache::plan::{self, Decision, Plan};
use crate::config::Backend;
use crate::diag;
use crate::error::describe_io;
use crate::http::body::{self, CopyError, Encode};
use crate::http::head::{HeadError, HeadRules, is_timeout, read_head};
use crate::http::wire::Reader;
use crate::http::{self, Framing, Persist, RequestHead, ResponseHead};
use crate::proxy::exchange::{Client, Exchange, describe, send};
use crate::proxy::pool::{self, Pool};
use crate::proxy::request::Request;
use crate::proxy::response::{self, Relay, Wanted};
use crate::proxy::spool::{Held, Spool};
use crate::proxy::upload::Upload;
use crate::proxy::{BUFFER_SIZE, Context, compress, from_cache, splice};
use crate::stats;
use crate::tls::Upstream;
use std::time::Instant;

/// Largest request body kept in memory so an idempotent request can be
/// sent again to another backend.
const REPLAY_BODY_MAX: u64 = BUFFER_SIZE as u64;

/// Why one attempt at a backend failed.
enum Failure {
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

/// A backend connection with the final response head read off it.
type Answered = (ResponseHead, Reader<Upstream>);

/// Answers `req` from the cache, or forwards it and relays the response.
pub fn forward(
    client: &mut Client<'_>,
    req: &Request<'_>,
    ctx: &Context,
    pool: &mut Pool,
    mut ex: Exchange,
) -> Exchange {
    let plan = match ctx
        .cache
        .as_ref()
        .map(|c| plan::consult(c, req.head, req.target))
    {
        Some(Decision::Hit(entry, key)) => {
            if let Err(e) = drop_body(client, req, ctx.config.limits.max_body) {
                return ex.refuse_body(client, &e);
            }
            return from_cache::serve(client, *entry, &key, req, ctx, ex, CacheStatus::Hit);
        }
        Some(Decision::Forward(plan)) => {
            ex.cache = Some(plan.status);
            Some(plan)
        }
        None => None,
    };
    let kept = match read_body(client, req, ctx) {
        Ok(kept) => kept,
        Err(CopyError::Write(e)) => {
            // pibl's own failure (a full disk): the client's body is left
            // unread, and no backend saw a byte of it.
            diag!("cannot hold a request body: {}", describe_io(&e));
            ex.leave_body_unread();
            return ex.refuse(client, 500);
        }
        Err(e) => return ex.refuse_body(client, &e.into()),
    };
    // A body held whole goes on with its length, however it came.
    let framing = match (&kept, req.framing) {
        (Some(held), Framing::Chunked) => Framing::Length(held.len()),
        _ => req.framing,
    };
    if let Framing::Length(n) = framing {
        ex.bytes_in = n;
    }
    let rewritten = plan.as_ref().and_then(|p| p.forwarded(req.head));
    let forwarding = Forwarding {
        client,
        req,
        sent: rewritten.as_ref().unwrap_or(req.head),
        framing,
        ctx,
        pool,
        kept,
        head: Vec::with_capacity(1024),
        cut_short: false,
        ex,
    };
    forwarding.run(plan)
}

/// One request being tried on the backends in turn.
struct Forwarding<'a, 'c> {
    client: &'a mut Client<'c>,
    req: &'a Request<'a>,
    /// The head sent: the client's, or the cache plan's rewriting of it.
    sent: &'a RequestHead,
    /// The body's framing as sent: a chunked body held whole goes with
    /// its length.
    framing: Framing,
    ctx: &'a Context,
    pool: &'a mut Pool,
    /// The whole body, when pibl holds it and can send it again.
    kept: Option<Held>,
    /// The head's bytes, as made for the backend being tried.
    head: Vec<u8>,
    /// The backend answered before it took the whole request: its
    /// connection cannot carry another.
    cut_short: bool,
    ex: Exchange,
}

impl Forwarding<'_, '_> {
    /// Only a request pibl could send again goes on a kept connection, and
    /// only its connection is kept afterwards.
    fn replayable(&self) -> bool {
        self.kept.is_some() && self.req.is_idempotent()
    }

    /// Tries backend after backend, in the balancer's order, until one
    /// answers or none is left to try.
    fn run(mut self, mut plan: Option<Plan<'_>>) -> Exchange {
        let balancer = &self.ctx.balancer;
        let body_pending = self.kept.is_none() && self.req.framing != Framing::Empty;
        let mut tried = Vec::new();
        let mut status = 502;
        while let Some(i) = balancer.pick(&tried) {
            tried.push(i);
            let counters = balancer.stats_slot(i);
            let _active = counters.begin();
            stats::set_backend(i);
            let asked = Instant::now();
            match self.try_backend(i) {
                Ok(answered) => {
                    balancer.record_success(i);
                    let waited = asked.elapsed().as_micros() as u64;
                    counters.answered(answered.0.status, waited);
                    let ex = self.relay(i, answered, plan.as_mut());
                    counters.relayed(ex.body_bytes);
                    return ex;
                }
                Err(Failure::ClientFault) => return self.ex,
                Err(Failure::Local(why)) => {
                    // Not the backend's failure: the next is tried, and if
                    // all fail so, the client gets 503 (as from HAProxy):
                    // pibl is out of resources for now.
                    diag!("backend {}: {why}", balancer.backend(i).name);
                    status = 503;
                }
                Err(Failure::NotSent(why)) => {
                    counters.failed();
                    balancer.record_failure(i, &why);
                }
                Err(Failure::Sent(why, code)) => {
                    counters.failed();
                    balancer.record_failure(i, &why);
                    status = code;
                    if !self.replayable() {
                        return self.ex.backend_failed(self.client, status, false);
                    }
                }
            }
        }
        if tried.is_empty() {
            diag!("no backend is up");
        }
        self.ex.backend_failed(self.client, status, body_pending)
    }

    /// Sends the request to backend `i`: on a kept connection when it may,
    /// and on a new one if the kept one turns out closed.
    fn try_backend(&mut self, i: usize) -> Result<Answered, Failure> {
        let backend = self.ctx.balancer.backend(i);
        self.ex.tried(&backend.name);
        let replayable = self.replayable();
        let req = self.req;
        http::forward_request(
            self.sent,
            req.target,
            http::ClientSide {
                addr: req.peer,
                https: self.ex.tls.is_some(),
            },
            &backend.name,
            self.framing,
            replayable,
            &mut self.head,
        );
        let Some(idle) = replayable.then(|| self.pool.take(i)).flatten() else {
            return self.attempt(None, backend);
        };
        match self.attempt(Some(idle), backend) {
            // The backend closed the kept connection as pibl sent on it:
            // no fault of the backend's; the same request on a new one.
            Err(Failure::Sent(_, 502)) => self.attempt(None, backend),
            result => result,
        }
    }

    /// The backend answered: the cache's plan is followed, and the
    /// response relayed.
    fn relay(self, i: usize, answered: Answered, plan: Option<&mut Plan<'_>>) -> Exchange {
        let (resp, from_backend) = answered;
        // Judged as the request that was sent: a HEAD fetched as a GET is
        // stored, and refreshed, as a GET.
        let sent = self.sent;
        let client_head = self.req.head;
        let (mut store, mut whole) = (None, false);
        if let Some(plan) = plan {
            if let Some(entry) = plan.revalidated(sent, &resp) {
                self.pool.discard(from_backend);
                let (key, status) = (plan.key(), CacheStatus::Revalidated);
                let (client, req, ctx) = (self.client, self.req, self.ctx);
                return from_cache::serve(client, entry, key, req, ctx, self.ex, status);
            }
            whole = plan.wants_whole(client_head);
            store = plan.store(sent, &resp);
        }
        let head_only = sent.method != client_head.method;
        let compress = &self.ctx.config.compress;
        let decode = compress::to_decode(client_head, &resp, compress);
        let wanted = Wanted {
            method: &sent.method,
            head_only,
            // A body pibl decodes goes whole: its ranges are the coded one's.
            part: (whole && !head_only && decode.is_none())
                .then(|| response::part_of(client_head, &resp))
                .flatten(),
            coding: compress::wanted(client_head, compress),
            decode,
        };
        let keep = (self.replayable() && !self.cut_short).then_some(i);
        let relay = Relay {
            resp,
            from_backend,
            wanted,
            store,
            pool: self.pool,
            keep,
            buffering: &self.ctx.config.buffering,
            compress: &self.ctx.config.compress,
            send_timeout: self.ctx.config.timeouts.send,
        };
        response::relay(self.client, relay, self.ex)
    }

    /// One try at one backend: connect (unless `idle`, a kept connection
    /// to it, is given), send the request, read the final response head.
    fn attempt(
        &mut self,
        idle: Option<Reader<Upstream>>,
        backend: &Backend,
    ) -> Result<Answered, Failure> {
        self.cut_short = false;
        let mut from_backend = match idle {
            Some(conn) => conn,
            None => self
                .pool
                .wrap(pool::connect(backend, self.ctx).map_err(|e| {
                    let why = describe(e.step, &e.error);
                    if is_local_shortage(&e.error) {
                        Failure::Local(why)
                    } else {
                        Failure::NotSent(why)
                    }
                })?),
        };
        let upstream = from_backend.get_ref();
        let Some(body) = &self.kept else {
            upstream
                .stream()
                .write_all(&self.head)
                .map_err(|e| Failure::Sent(describe("sending the request", &e), 502))?;
            self.send_body(upstream)?;
            let resp = read_final_head(self.client, &mut from_backend, self.ex.minor)?;
            return Ok((resp, from_backend));
        };
        // A backend that stopped reading may have answered early (a 413,
        // a 401): its answer is read all the same, and relayed; the
        // connection, its request cut short, is not kept.  The client's
        // connection goes on, its body read whole.
        let sent = body.send(&self.head, upstream.stream());
        let resp = read_final_head(self.client, &mut from_backend, self.ex.minor);
        match (sent, resp) {
            (Ok(()), resp) => Ok((resp?, from_backend)),
            (Err(_), Ok(resp)) => {
                self.cut_short = true;
                Ok((resp, from_backend))
            }
            (Err(e), Err(_)) => Err(Failure::Sent(describe("sending the request", &e), 502)),
        }
    }

    /// Relays the request body from the client as it comes.
    fn send_body(&mut self, upstream: &Upstream) -> Result<(), Failure> {
        let (client, req) = (&mut *self.client, self.req);
        req.send_continue(client);
        let encode = if req.framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Plain
        };
        let plain = match (client.get_ref().plain(), upstream) {
            (Some(_), Upstream::Plain(to)) => Some(to),
            _ => None,
        };
        let pipe = match req.framing {
            Framing::Length(n)
                if plain.is_some() && splice::worthwhile(n, client.buffered().len()) =>
            {
                self.pool.pipe()
            }
            _ => None,
        };
        let max_body = self.ctx.config.limits.max_body;
        let copied = match upstream {
            // Written through TLS as it comes: a backend that answers
            // early is heard once the body is out or its writes time out.
            Upstream::Tls(_) => {
                let mut to = upstream.stream();
                body::relay(client, &mut to, req.framing, encode, max_body)
            }
            Upstream::Plain(to) => {
                // Dropped, blocking again, before the answer is read.
                let upload = Upload::begin(to)
                    .map_err(|e| Failure::Sent(describe("sending the request", &e), 502))?;
                match (req.framing, pipe) {
                    (Framing::Length(n), Some(pipe)) => {
                        splice::relay_length(client, to, &[], n, pipe)
                    }
                    _ => body::relay(client, &mut upload.sink(), req.framing, encode, max_body),
                }
            }
        };
        match copied {
            Ok(_) => Ok(()),
            Err(CopyError::Read(e) | CopyError::HeadUnsent(e)) => {
                // The client's fault; the exchange ends here, and the
                // caller must not blame the backend.
                self.ex.client_gone();
                let status = self.ex.body_read_failed(&e);
                self.ex.send_error(self.client, status);
                Err(Failure::ClientFault)
            }
            // The backend stopped reading: it may have answered early (a
            // 413, say); its answer, if any, is read next.  The unread rest
            // of the body makes the client connection unusable.
            Err(CopyError::Write(_)) => {
                self.ex.leave_body_unread();
                Ok(())
            }
        }
    }
}

/// Errors of pibl's own resources rather than of the backend: out of file
/// descriptors, memory, buffers or local ports.  Counted against the
/// backend, they would mark every backend down in turn while pibl is
/// overloaded, turning a passing shortage into seconds of 502s.
fn is_local_shortage(e: &io::Error) -> bool {
    crate::error::is_out_of_resources(e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Reads the request's body whole, before any backend is chosen, when
/// pibl is to hold it: always with `request_buffering` (in memory up to
/// `client_body_buffer_size`, then in a temporary file), and otherwise a
/// small body of an idempotent request, so that it can be sent again.
/// `None`: the body is to stream to the backend as it comes.  A body
/// whose framing turns out bad is refused here, and no backend ever sees
/// a byte of its request.
fn read_body(
    client: &mut Client<'_>,
    req: &Request<'_>,
    ctx: &Context,
) -> Result<Option<Held>, CopyError> {
    let buffering = &ctx.config.buffering;
    let in_memory = match req.framing {
        Framing::Empty => return Ok(Some(Held::empty())),
        _ if buffering.request => buffering.body_in_memory,
        Framing::Length(n) if req.is_idempotent() && n <= REPLAY_BODY_MAX => n as usize,
        _ => return Ok(None),
    };
    req.send_continue(client);
    let mut spool = Spool::new(in_memory, &buffering.temp_dir);
    let max_body = ctx.config.limits.max_body;
    body::relay(client, &mut spool, req.framing, Encode::Plain, max_body)?;
    Ok(Some(spool.held()))
}

/// Reads a body no one needs — a hit's: it is on the wire before the next
/// request, and must not be taken for one (as nginx discards it).
fn drop_body(client: &mut Client<'_>, req: &Request<'_>, max_body: u64) -> io::Result<()> {
    if req.framing == Framing::Empty {
        return Ok(());
    }
    req.send_continue(client);
    body::relay(
        client,
        &mut io::sink(),
        req.framing,
        Encode::Plain,
        max_body,
    )?;
    Ok(())
}

/// Reads the backend's response head, relaying interim 1xx responses
/// (other than 100, which pibl already sent or the client did not ask for).
fn read_final_head(
    client: &Client<'_>,
    upstream: &mut Reader<Upstream>,
    client_minor: u8,
) -> Result<ResponseHead, Failure> {
    let rules = HeadRules::for_response(BUFFER_SIZE);
    loop {
        let head = match read_head(upstream, &rules, http::parse_response_head) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Failure::Sent("closed without a response".into(), 502)),
            Err(HeadError::Io(e)) if is_timeout(&e) => {
                return Err(Failure::Sent(describe("response", &e), 504));
            }
            Err(HeadError::Io(e)) => return Err(Failure::Sent(describe("response", &e), 502)),
            Err(HeadError::Reject(r)) => {
                return Err(Failure::Sent(format!("malformed response: {}", r.why), 502));
            }
        };
        match head.status {
            101 => {
                return Err(Failure::Sent(
                    "unexpected 101 Switching Protocols".into(),
                    502,
                ));
            }
            100 => continue,
            0..=99 | 600.. => {
                let why = format!("invalid status {}", head.status);
                return Err(Failure::Sent(why, 502));
            }
            102..=199 => relay_interim(client, &head, client_minor),
            _ => return Ok(head),
        }
    }
}

/// Passes an interim response (102, 103…) on to an HTTP/1.1 client.
fn relay_interim(client: &Client<'_>, head: &ResponseHead, client_minor: u8) {
    if client_minor == 1 {
        let mut out = Vec::new();
        let persist = Persist::KeepAlive { http10: false };
        http::forward_response(head, Framing::Empty, persist, &mut out);
        let _ = send(client, &out);
    }
}
