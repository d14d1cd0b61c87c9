//! A response from the cache: the stored entry as it is, or its coded
//! representation for a client that asks for gzip or brotli (made once,
//! then sent as it is: `cache::coded`), or its body decoded for a client
//! that does not take the coding the backend sent it in.

use std::borrow::Cow;
use std::rc::Rc;

use crate::cache::hit::{self, Reply};
use crate::cache::{self, Entry, Status as CacheStatus};
use crate::diag;
use crate::http::coding::{self, Coding};
use crate::http::{self, Framing, RequestHead};
use crate::proxy::Context;
use crate::proxy::compress;
use crate::proxy::exchange::{Client, Exchange};
use crate::proxy::request::Request;

/// Answers `req` from the cache's `entry`, stored under `key`; `status` is
/// what X-Cache says.
pub fn serve(
    client: &Client<'_>,
    entry: Entry,
    key: &str,
    req: &Request<'_>,
    ctx: &Context,
    ex: Exchange,
    status: CacheStatus,
) -> Exchange {
    crate::stats::set_state(crate::stats::State::Writing);
    let cfg = &ctx.config.compress;
    if !cfg.enabled {
        return serve_entry(client, entry, req.head, ex, status, false);
    }
    if compress::compressible(&entry.head, cfg, ex.tls.is_some()) {
        let coding = compress::wanted(req.head, cfg).filter(|_| entry.body_len >= cfg.min_length);
        if let (Some(coding), Some(cache)) = (coding, &ctx.cache)
            && let Some(coded) = cache.coded(key, &entry, coding)
        {
            return serve_entry(client, coded, req.head, ex, status, false);
        }
        return serve_entry(client, entry, req.head, ex, status, true);
    }
    match compress::to_decode(req.head, &entry.head, cfg) {
        Some(coding) if entry.head.status != 206 => {
            serve_decoded(client, entry, req.head, ex, status, coding)
        }
        _ => serve_entry(client, entry, req.head, ex, status, false),
    }
}

/// Sends `entry` as it is stored; `vary`: with `Vary: Accept-Encoding`
/// added (an identity body another client gets compressed).
fn serve_entry(
    client: &Client<'_>,
    entry: Entry,
    req: &RequestHead,
    mut ex: Exchange,
    status: CacheStatus,
    vary: bool,
) -> Exchange {
    ex.cache = Some(status);
    let Some(hit) = answer(client, &entry, req, &mut ex, status) else {
        return ex;
    };
    let vary = vary.then(|| coding::vary_value(&hit.head)).flatten();
    let head = head_of(&hit, vary.as_deref(), &mut ex);
    let part = hit.part.clone();
    drop(hit);
    match hit::send(*client.get_ref(), &head, entry, part.clone()) {
        Ok(()) => ex.body_bytes = part.end - part.start,
        Err(_) => ex.client_gone(),
    }
    ex
}

/// The hit `req` gets from `entry`, or `None` when it got 412 or 416.
fn answer<'e>(
    client: &Client<'_>,
    entry: &'e Entry,
    req: &RequestHead,
    ex: &mut Exchange,
    status: CacheStatus,
) -> Option<hit::Hit<'e>> {
    match hit::reply(req, entry, status) {
        Reply::Send(hit) => Some(hit),
        Reply::PreconditionFailed => {
            ex.send_error(client, 412);
            None
        }
        Reply::Unsatisfiable(len) => {
            let range = format!("bytes */{len}");
            ex.send_error_with(client, 416, &[("Content-Range", &range)]);
            None
        }
    }
}

/// The head of a hit as the client gets it.
fn head_of(hit: &hit::Hit<'_>, vary: Option<&str>, ex: &mut Exchange) -> Vec<u8> {
    let mut head = Vec::with_capacity(1024);
    let persist = ex.persist();
    let mut fields = hit.fields();
    if let Some(vary) = vary {
        fields.push(("Vary", vary));
    }
    ex.add_hsts(&mut fields);
    http::forward_response_with(&hit.head, hit.framing, persist, &fields, &mut head);
    ex.status = hit.head.status;
    head
}

/// Sends `entry`, stored in `coding`, decoded: in chunks to an HTTP/1.1
/// client, to the close to an HTTP/1.0 one.  Its ranges are those of the
/// coded bytes: a Range is not honoured, the client gets the whole.
fn serve_decoded(
    client: &Client<'_>,
    entry: Entry,
    req: &RequestHead,
    mut ex: Exchange,
    status: CacheStatus,
    coding: Coding,
) -> Exchange {
    ex.cache = Some(status);
    let mut decoded = entry.clone();
    decoded.head = Rc::new(coding::decoded_head(&entry.head));
    let req = without_range(req);
    let Some(mut hit) = answer(client, &decoded, &req, &mut ex, status) else {
        return ex;
    };
    let sends_body = !hit.part.is_empty();
    let framing = match (hit.framing, ex.minor) {
        (Framing::Empty, _) => Framing::Empty,
        (_, 1) => Framing::Chunked,
        _ => {
            ex.keep_alive = false;
            Framing::UntilClose
        }
    };
    hit.recoded(framing);
    let head = head_of(&hit, None, &mut ex);
    drop(hit);
    let mut out = *client.get_ref();
    if std::io::Write::write_all(&mut out, &head).is_err() {
        ex.client_gone();
        return ex;
    }
    if sends_body {
        send_decoded(&entry, out, framing == Framing::Chunked, coding, &mut ex);
    }
    ex
}

/// Sends the decoded body of `entry`.  One that does not decode ends the
/// response there, the connection closed, as a backend's failure would.
fn send_decoded(
    entry: &Entry,
    out: crate::tls::Stream<'_>,
    chunked: bool,
    coding: Coding,
    ex: &mut Exchange,
) {
    let mut decoded = compress::Decoded::new(coding, out, chunked);
    let sent = cache::copy_body(entry, &mut decoded).and_then(|()| decoded.finish());
    match sent {
        Ok(n) => ex.body_bytes = n,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            diag!(
                "cache: {}: {}; response cut short",
                ex.request_line,
                crate::error::describe_io(&e)
            );
            ex.end = crate::proxy::End::BackendFault;
            ex.keep_alive = false;
        }
        Err(_) => ex.client_gone(),
    }
}

/// `req` without Range and If-Range.
fn without_range(req: &RequestHead) -> Cow<'_, RequestHead> {
    let ranged = |f: &http::Field| {
        f.name.eq_ignore_ascii_case("range") || f.name.eq_ignore_ascii_case("if-range")
    };
    if !req.fields.iter().any(ranged) {
        return Cow::Borrowed(req);
    }
    let mut whole = req.clone();
    whole.fields.retain(|f| !ranged(f));
    Cow::Owned(whole)
}
