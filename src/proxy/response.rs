//! A response on its way to the client: from a backend, its head
//! forwarded and its body relayed (spliced, re-framed, cut to a range,
//! stored in the cache as it passes, compressed or decoded).

use std::borrow::Cow;
use std::ops::Range;

use crate::cache;
use crate::config::Buffering;
use crate::config::Compress;
use crate::diag;
use crate::http::body::{self, CopyError, Encode};
use crate::http::coding::{self, Coding};
use crate::http::conditional::{self, Answer};
use crate::http::head::is_timeout;
use crate::http::wire::Reader;
use crate::http::{self, Framing, RequestHead, ResponseHead, restated};
use crate::proxy::End;
use crate::proxy::absorb::Absorber;
use crate::proxy::compress;
use crate::proxy::exchange::{Client, Exchange, describe, send};
use crate::proxy::pool::Pool;
use crate::proxy::splice;
use crate::tls::Upstream;
use std::time::Duration;

/// What the client asked of a response: the method it is an answer to;
/// whether it wants the head alone (a HEAD fetched as a GET); the part
/// of its body to send, if only a part (a 206), with the whole's length.
pub struct Wanted<'a> {
    pub method: &'a str,
    pub head_only: bool,
    pub part: Option<(Range<u64>, u64)>,
    /// The coding the client accepts, when pibl compresses (`compress`).
    pub coding: Option<Coding>,
    /// The coding the response came in, when the client does not take it
    /// and pibl decodes it (`compress::to_decode`).
    pub decode: Option<Coding>,
}

/// A change of coding on the way to the client.
#[derive(Clone, Copy)]
enum Recode {
    Encode(Coding),
    Decode(Coding),
}

/// A backend's response, its head read, and where it goes.
pub struct Relay<'a> {
    pub resp: ResponseHead,
    pub from_backend: Reader<Upstream>,
    pub wanted: Wanted<'a>,
    /// The cache's copy of the body, when it is stored.
    pub store: Option<cache::Writer>,
    pub pool: &'a mut Pool,
    /// The backend whose connection may be kept for the next request.
    pub keep: Option<usize>,
    /// How the body is held for a client slower than the backend.
    pub buffering: &'a Buffering,
    pub compress: &'a Compress,
    pub send_timeout: Duration,
}

/// The part of the whole response `resp` the client's Range asks for,
/// and the whole's length, when there is one to send as a 206: one range,
/// of a 200 whose length is known.
pub fn part_of(req: &RequestHead, resp: &ResponseHead) -> Option<(Range<u64>, u64)> {
    let Ok(Framing::Length(len)) = http::response_framing("GET", resp) else {
        return None;
    };
    match conditional::answer(req, resp, len) {
        Answer::Part(range) => Some((range, len)),
        _ => None,
    }
}

/// Relays the response `r` to the client.
pub fn relay(client: &Client<'_>, mut r: Relay<'_>, mut ex: Exchange) -> Exchange {
    crate::stats::set_state(crate::stats::State::Writing);
    let framing = match http::response_framing(r.wanted.method, &r.resp) {
        Ok(framing) => framing,
        Err(why) => {
            diag!("backend {}: malformed response: {why}", ex.backend());
            return ex.backend_failed(client, 502, false);
        }
    };
    let recode = recode_for(&mut r, framing, ex.tls.is_some());
    let (to_client, encode) = client_framing(framing, &r.wanted, ex.minor, recode.is_some());
    ex.keep_alive &= to_client != Framing::UntilClose;
    let head = head_for_client(&r, to_client, &mut ex);
    if r.wanted.head_only {
        return send_head_and_store(client, &head, r, framing, ex);
    }
    let mut out = Absorber::new(*client.get_ref(), r.buffering, r.send_timeout);
    let copied = match recode {
        Some(recode) => copy_recoded(&mut out, &head, &mut r, framing, recode, to_client),
        None => copy_body(&mut out, &head, &mut r, framing, encode),
    };
    match copied {
        Ok(n) => {
            ex.body_bytes = n;
            if let Some(writer) = r.store {
                writer.commit();
            }
            // The backend is let go before a slow client has read what
            // pibl holds for it.
            give_back(r.pool, r.keep, r.from_backend, &r.resp, framing);
            if out.finish().is_err() {
                ex.client_gone();
            }
        }
        Err(CopyError::HeadUnsent(e)) => {
            // The backend failed before the body's first byte, so the
            // client has seen nothing yet: it gets the error, as when the
            // head itself is bad (nginx closes without a word here).
            diag!(
                "backend {}: {}",
                ex.backend(),
                describe("response body", &e)
            );
            r.pool.discard(r.from_backend);
            let status = if is_timeout(&e) { 504 } else { 502 };
            return ex.backend_failed(client, status, false);
        }
        Err(CopyError::Read(e)) => {
            // The head is out: all that is left is to cut the connection,
            // so the client sees the body is incomplete — after what pibl
            // holds for it, as it would have had it streamed.
            let _ = out.finish();
            diag!(
                "backend {}: {}; response cut short",
                ex.backend(),
                describe("response body", &e)
            );
            ex.end = End::BackendFault;
            ex.keep_alive = false;
        }
        Err(CopyError::Write(_)) => ex.client_gone(),
    }
    ex
}

/// How the body goes to the client, framed as the backend sent it: a
/// body delimited by the end of the connection is re-framed as chunks for
/// an HTTP/1.1 client, whose connection can then stay open; an HTTP/1.0
/// client gets the plain bytes, and the close.
fn client_framing(
    framing: Framing,
    wanted: &Wanted<'_>,
    minor: u8,
    coded: bool,
) -> (Framing, Encode) {
    let (to_client, encode) = match framing {
        // A coded body's length is known only once it is sent.
        _ if coded && minor == 1 => (Framing::Chunked, Encode::Plain),
        _ if coded => (Framing::UntilClose, Encode::Plain),
        Framing::Empty => (Framing::Empty, Encode::Plain),
        Framing::Length(n) => (Framing::Length(n), Encode::Plain),
        Framing::Chunked | Framing::UntilClose if minor == 1 => (Framing::Chunked, Encode::Chunked),
        Framing::Chunked | Framing::UntilClose => (Framing::UntilClose, Encode::Plain),
    };
    if wanted.head_only {
        return (Framing::Empty, encode);
    }
    match &wanted.part {
        Some((part, _)) => (Framing::Length(part.end - part.start), encode),
        None => (to_client, encode),
    }
}

/// The head the client gets: the backend's (or a 206 made from it, for a
/// part), with X-Cache when there is a cache and Content-Range for a part.
fn head_for_client(r: &Relay<'_>, to_client: Framing, ex: &mut Exchange) -> Vec<u8> {
    let content_range = r
        .wanted
        .part
        .as_ref()
        .map(|(part, len)| format!("bytes {}-{}/{len}", part.start, part.end - 1));
    let mut extra = Vec::with_capacity(2);
    if let Some(status) = ex.cache {
        extra.push(("X-Cache", status.as_str()));
    }
    if let Some(range) = &content_range {
        extra.push(("Content-Range", range.as_str()));
    }
    let persist = ex.persist();
    ex.add_hsts(&mut extra);
    let shown = match &r.wanted.part {
        Some(_) => Cow::Owned(restated(&r.resp, 206, &[])),
        None => Cow::Borrowed(&r.resp),
    };
    let mut head = Vec::with_capacity(1024);
    http::forward_response_with(&shown, to_client, persist, &extra, &mut head);
    ex.status = shown.status;
    head
}

/// Sends `head` and the body: spliced from backend to client when it is a
/// large plain one no one else needs, through a window onto the part
/// asked for, or copied (and re-framed, and tapped for the cache).
fn copy_body(
    out: &mut Absorber<'_>,
    head: &[u8],
    r: &mut Relay<'_>,
    framing: Framing,
    encode: Encode,
) -> Result<u64, CopyError> {
    if let Framing::Length(n) = framing
        && r.store.is_none()
        && r.wanted.part.is_none()
        && encode == Encode::Plain
        && splice::worthwhile(n, r.from_backend.buffered().len())
        && out.can_splice()
        && matches!(r.from_backend.get_ref(), Upstream::Plain(_))
        && let Some(pipe) = r.pool.pipe()
    {
        return match out.plain() {
            Some(client) => splice::relay_length(&mut r.from_backend, client, head, n, pipe),
            None => out.splice_from(&mut r.from_backend, head, n, pipe),
        };
    }
    let tap = r.store.as_mut().map(|w| w as &mut dyn std::io::Write);
    match &r.wanted.part {
        // The head alone, then the body through a window onto the part.
        Some((part, _)) => {
            std::io::Write::write_all(out, head).map_err(CopyError::Write)?;
            let mut window = body::Window::new(&mut *out, part.clone());
            body::relay_tapped(
                &mut r.from_backend,
                &mut window,
                &[],
                framing,
                encode,
                0,
                tap,
            )
            .map(|_| part.end - part.start)
        }
        None => body::relay_tapped(&mut r.from_backend, out, head, framing, encode, 0, tap),
    }
}

/// The change of coding the body goes through, if any, with the head made
/// for it: compressed for a client that asks (`compress`), or decoded for
/// one that does not take the coding it came in; only for a body sent
/// whole.  A response that could have been compressed says `Vary:
/// Accept-Encoding` either way, so that a cache after pibl keeps the two
/// apart; so does a 304 that may stand for one.
fn recode_for(r: &mut Relay<'_>, framing: Framing, https: bool) -> Option<Recode> {
    let whole = !r.wanted.head_only && r.wanted.part.is_none() && framing != Framing::Empty;
    if compress::compressible(&r.resp, r.compress, https) {
        compress::add_vary(&mut r.resp);
        let coding = r
            .wanted
            .coding
            .filter(|_| whole && compress::long_enough(framing, r.compress))?;
        r.resp = compress::encoded_head(&r.resp, coding);
        return Some(Recode::Encode(coding));
    }
    if compress::may_stand_for_compressed(&r.resp, r.compress) {
        compress::add_vary(&mut r.resp);
    }
    let coding = r.wanted.decode.filter(|_| whole && r.resp.status != 206)?;
    r.resp = coding::decoded_head(&r.resp);
    Some(Recode::Decode(coding))
}

/// Sends `head` and the body coded or decoded as it streams, framed as
/// `to_client` says; the cache, if it stores the response, gets it as
/// it came.  A body that does not decode ends the response as a
/// backend's failure would (`CopyError::Read`).
fn copy_recoded(
    out: &mut Absorber<'_>,
    head: &[u8],
    r: &mut Relay<'_>,
    framing: Framing,
    recode: Recode,
    to_client: Framing,
) -> Result<u64, CopyError> {
    std::io::Write::write_all(out, head).map_err(CopyError::HeadUnsent)?;
    let chunked = to_client == Framing::Chunked;
    let tap = r.store.as_mut().map(|w| w as &mut dyn std::io::Write);
    let from = &mut r.from_backend;
    match recode {
        Recode::Encode(coding) => {
            let mut coded = compress::Coded::new(coding, r.compress, &mut *out, chunked);
            body::relay_tapped(from, &mut coded, &[], framing, Encode::Plain, 0, tap)?;
            coded.finish().map_err(CopyError::Write)
        }
        Recode::Decode(coding) => {
            let mut decoded = compress::Decoded::new(coding, &mut *out, chunked);
            match body::relay_tapped(from, &mut decoded, &[], framing, Encode::Plain, 0, tap) {
                Err(CopyError::Write(e)) => return Err(undecodable_is_read(e)),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            decoded.finish().map_err(undecodable_is_read)
        }
    }
}

/// A write error of a decoding writer: the body's fault (InvalidData, see
/// `compress::Decoded`), or the client's.
fn undecodable_is_read(e: std::io::Error) -> CopyError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        CopyError::Read(e)
    } else {
        CopyError::Write(e)
    }
}

/// Keeps the backend connection that carried `resp`, whose body has
/// been read to its end, for the next request to backend `keep` — if it
/// can carry another.
fn give_back(
    pool: &mut Pool,
    keep: Option<usize>,
    from_backend: Reader<Upstream>,
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
    client: &Client<'_>,
    head: &[u8],
    mut r: Relay<'_>,
    framing: Framing,
    mut ex: Exchange,
) -> Exchange {
    if send(client, head).is_err() {
        ex.client_gone();
        r.pool.discard(r.from_backend);
        return ex;
    }
    let Some(mut writer) = r.store else {
        r.pool.discard(r.from_backend);
        return ex;
    };
    let mut only = cache::StoreOnly(&mut writer);
    match body::relay(&mut r.from_backend, &mut only, framing, Encode::Plain, 0) {
        Ok(_) => {
            writer.commit();
            give_back(r.pool, r.keep, r.from_backend, &r.resp, framing);
        }
        Err(CopyError::Read(e) | CopyError::HeadUnsent(e)) => {
            diag!(
                "backend {}: {}; not stored",
                ex.backend(),
                describe("response body", &e)
            );
            r.pool.discard(r.from_backend);
        }
        Err(CopyError::Write(_)) => r.pool.discard(r.from_backend),
    }
    ex
}
