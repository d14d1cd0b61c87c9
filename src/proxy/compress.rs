//! Compression on the fly (`[compress]`): which responses are compressed,
//! the head of a compressed one, and the writers its body goes through —
//! the encoder, flushed after every read from the backend so that a pause
//! never holds back what came before it (server-sent events, long polls),
//! then chunked framing for an HTTP/1.1 client.
//!
//! The other way, a response that came coded in a way the client does not
//! take is decoded on its way (as nginx's `gunzip`), and its coded bytes
//! are what the cache keeps.

use std::io::{self, Write};

use crate::config::Compress;
use crate::http::codec::{Decoder, Encoder};
use crate::http::coding::{self, Coding};
use crate::http::{self, Framing, RequestHead, ResponseHead};

pub use crate::http::coding::{add_vary, encoded_head};

/// The codings pibl offers, in its order of preference.
const OFFERED: [Coding; 2] = [Coding::Br, Coding::Gzip];

/// The coding the client of `req` would take, if `cfg` compresses at
/// all: none for a Range request (a part of a coded body is not what it
/// asked for).
pub fn wanted(req: &RequestHead, cfg: &Compress) -> Option<Coding> {
    if !cfg.enabled || http::values(&req.fields, "range").next().is_some() {
        return None;
    }
    coding::negotiate(&req.fields, &OFFERED)
}

/// Whether `resp` is one pibl compresses for a client that accepts it:
/// a status with a body worth it (200, 403, 404, as nginx's gzip), no
/// coding already, no `no-transform`, a type `cfg` lists; over HTTPS, no
/// cookie set, unless `https_with_cookies` (BREACH).
pub fn compressible(resp: &ResponseHead, cfg: &Compress, https: bool) -> bool {
    cfg.enabled
        && matches!(resp.status, 200 | 403 | 404)
        && http::values(&resp.fields, "content-encoding")
            .next()
            .is_none()
        && !no_transform(resp)
        && http::value(&resp.fields, "content-type").is_some_and(|t| type_listed(t, &cfg.types))
        && (!https
            || cfg.https_with_cookies
            || http::values(&resp.fields, "set-cookie").next().is_none())
}

/// The coding `resp` came in, if the client of `req` does not take it and
/// pibl is to decode it: one coding pibl knows, and no `no-transform`.
pub fn to_decode(req: &RequestHead, resp: &ResponseHead, cfg: &Compress) -> Option<Coding> {
    if !cfg.enabled || no_transform(resp) {
        return None;
    }
    let coding = Coding::of_response(resp)?;
    (!coding::accepts(&req.fields, coding)).then_some(coding)
}

fn no_transform(resp: &ResponseHead) -> bool {
    http::tokens(&resp.fields, "cache-control")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("no-transform"))
}

/// Whether `resp`, a 304, may stand for a response pibl would have
/// compressed: its type, if it says one, is listed.
pub fn may_stand_for_compressed(resp: &ResponseHead, cfg: &Compress) -> bool {
    cfg.enabled
        && resp.status == 304
        && http::value(&resp.fields, "content-type").is_none_or(|t| type_listed(t, &cfg.types))
}

/// Whether the body, framed as `framing`, is long enough to be worth it.
pub fn long_enough(framing: Framing, cfg: &Compress) -> bool {
    match framing {
        Framing::Empty => false,
        Framing::Length(n) => n >= cfg.min_length.max(1),
        Framing::Chunked | Framing::UntilClose => true,
    }
}

/// Whether the media type of `content_type` is in `types`.
fn type_listed(content_type: &str, types: &[String]) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((major, _)) = media.split_once('/') else {
        return false;
    };
    types.iter().any(|t| {
        *t == media
            || (media != "text/event-stream" && t.strip_suffix("/*").is_some_and(|m| m == major))
    })
}

/// Where a compressed body goes: `out`, in chunks for an HTTP/1.1 client
/// (`chunked`), counting what it sends.
pub struct Coded<W: Write> {
    encoder: Encoder<Framed<W>>,
}

impl<W: Write> Coded<W> {
    pub fn new(coding: Coding, cfg: &Compress, out: W, chunked: bool) -> Coded<W> {
        let framed = Framed::new(out, chunked);
        Coded {
            encoder: Encoder::new(coding, cfg.level, framed),
        }
    }

    /// Ends the coded body (and the chunks); the body bytes sent.
    pub fn finish(self) -> io::Result<u64> {
        let mut framed = self.encoder.finish()?;
        if framed.chunked {
            framed.out.write_all(b"0\r\n\r\n")?;
        }
        Ok(framed.sent)
    }
}

impl<W: Write> Write for Coded<W> {
    /// Compresses `buf` and sends what the encoder has: each write is
    /// what one read from the backend brought.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.encoder.write_all(buf)?;
        self.encoder.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.encoder.flush()
    }
}

/// Where a body pibl decodes goes: `out`, in chunks for an HTTP/1.1
/// client (`chunked`), counting what it sends.
pub struct Decoded<W: Write> {
    decoder: Decoder<Framed<W>>,
    coding: Coding,
}

impl<W: Write> Decoded<W> {
    pub fn new(coding: Coding, out: W, chunked: bool) -> Decoded<W> {
        Decoded {
            decoder: Decoder::new(coding, Framed::new(out, chunked)),
            coding,
        }
    }

    /// Whether a write failed on `out`'s side, not for the coded bytes.
    pub fn out_failed(&self) -> bool {
        self.decoder.get_ref().failed
    }

    /// Checks that the body ended whole, and ends the chunks; the body
    /// bytes sent.  Errors are as `write`'s.
    pub fn finish(self) -> io::Result<u64> {
        let coding = self.coding;
        let failed = self.out_failed();
        let mut framed = self
            .decoder
            .finish()
            .map_err(|e| undecodable(coding, e, failed))?;
        if framed.chunked {
            framed.out.write_all(b"0\r\n\r\n")?;
        }
        Ok(framed.sent)
    }
}

impl<W: Write> Write for Decoded<W> {
    /// Decodes `buf` and sends what it gives at once.  A body that is not
    /// in its coding fails with `InvalidData`, saying so.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let done = self
            .decoder
            .write_all(buf)
            .and_then(|()| self.decoder.flush());
        done.map_err(|e| undecodable(self.coding, e, self.out_failed()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.decoder.flush()
    }
}

/// A decoder's error `e`, said as the body's fault unless it was `out`'s.
fn undecodable(coding: Coding, e: io::Error, out_failed: bool) -> io::Error {
    if out_failed {
        return e;
    }
    let why = format!("body is not valid {} ({e})", coding.token());
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The coded bytes on their way out, framed as chunks when `chunked`.
struct Framed<W: Write> {
    out: W,
    chunked: bool,
    sent: u64,
    /// A write to `out` failed.
    failed: bool,
}

impl<W: Write> Framed<W> {
    fn new(out: W, chunked: bool) -> Framed<W> {
        Framed {
            out,
            chunked,
            sent: 0,
            failed: false,
        }
    }
}

impl<W: Write> Write for Framed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let written = if self.chunked {
            let size = format!("{:x}\r\n", buf.len());
            http::wire::write_all_vectored(&mut self.out, &[size.as_bytes(), buf, b"\r\n"])
        } else {
            self.out.write_all(buf)
        };
        if written.is_err() {
            self.failed = true;
        }
        written?;
        self.sent += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Compress {
        Compress {
            enabled: true,
            types: crate::config::DEFAULT_COMPRESS_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            min_length: 256,
            level: 5,
            https_with_cookies: false,
        }
    }

    fn resp(fields: &[(&str, &str)]) -> ResponseHead {
        ResponseHead::ok_with(fields)
    }

    #[test]
    fn what_is_compressed() {
        let c = cfg();
        let html = [("Content-Type", "text/html; charset=utf-8")];
        assert!(compressible(&resp(&html), &c, false));
        assert!(compressible(
            &resp(&[("Content-Type", "application/json")]),
            &c,
            false
        ));
        assert!(!compressible(
            &resp(&[("Content-Type", "image/png")]),
            &c,
            false
        ));
        assert!(!compressible(
            &resp(&[("Content-Type", "text/event-stream")]),
            &c,
            false
        ));
        assert!(!compressible(&resp(&[]), &c, false), "no type");
        let coded = [("Content-Type", "text/html"), ("Content-Encoding", "gzip")];
        assert!(!compressible(&resp(&coded), &c, false));
        let keep = [
            ("Content-Type", "text/html"),
            ("Cache-Control", "public, no-transform"),
        ];
        assert!(!compressible(&resp(&keep), &c, false));
        let cookie = [("Content-Type", "text/html"), ("Set-Cookie", "s=1")];
        assert!(compressible(&resp(&cookie), &c, false));
        assert!(!compressible(&resp(&cookie), &c, true), "BREACH");
        let mut listed = cfg();
        listed.types.push("text/event-stream".into());
        assert!(compressible(
            &resp(&[("Content-Type", "text/event-stream")]),
            &listed,
            false
        ));
        let mut moved = resp(&html);
        moved.status = 301;
        assert!(!compressible(&moved, &c, false));
        assert!(!long_enough(Framing::Length(255), &c));
        assert!(long_enough(Framing::Length(256), &c) && long_enough(Framing::Chunked, &c));
    }

    #[test]
    fn the_head_of_a_coded_body() {
        let r = resp(&[
            ("Content-Type", "text/html"),
            ("Content-Length", "1000"),
            ("Accept-Ranges", "bytes"),
            ("ETag", "\"abc\""),
            ("Vary", "Cookie"),
        ]);
        let h = encoded_head(&r, Coding::Gzip);
        let get = |n: &str| http::value(&h.fields, n).map(str::to_string);
        assert_eq!(get("content-length"), None);
        assert_eq!(get("accept-ranges"), None);
        assert_eq!(get("etag").as_deref(), Some("W/\"abc\""));
        assert_eq!(get("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(
            http::tokens(&h.fields, "vary"),
            ["cookie", "accept-encoding"].map(String::from)
        );
        // A weak tag stays as it is; Vary is not said twice.
        let again = encoded_head(&encoded_head(&r, Coding::Br), Coding::Br);
        assert_eq!(http::value(&again.fields, "etag"), Some("W/\"abc\""));
        assert_eq!(http::values(&again.fields, "vary").count(), 2);
    }
}
