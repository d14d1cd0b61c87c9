//! Answering from the cache: the stored head with `Age` and `X-Cache`, and
//! the body straight from the entry's file with sendfile(2) — or, when it
//! is small enough to have come with the first read of the file, from
//! memory.  A conditional or range request may get 304, 412, 206 or 416
//! instead (`http::conditional`).

use std::borrow::Cow;
use std::io;
use std::ops::Range;

use super::coded::is_representation;
use super::entry::{Body, Entry, touch};
use super::plan::Status;
use super::policy::age;
use crate::http::conditional::{self, Answer};
use crate::http::wire::write_all_vectored;
use crate::http::{Framing, RequestHead, ResponseHead, restated};
use crate::tls::Stream;

/// Representation fields a 304 leaves out, as nginx's does: the client
/// keeps those of its own copy (RFC 9110 §15.4.5).
const NOT_IN_304: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "accept-ranges",
];

/// What a request gets from a fresh entry.
pub enum Reply<'e> {
    /// A response from the entry.
    Send(Hit<'e>),
    /// 412: a precondition of the request failed.
    PreconditionFailed,
    /// 416: no byte of the range asked for exists; the body's length.
    Unsatisfiable(u64),
}

/// A response made from an entry.
pub struct Hit<'e> {
    /// The stored head, or a 206 or 304 restated from it.
    pub head: Cow<'e, ResponseHead>,
    pub framing: Framing,
    /// The bytes of the body to send: none for a HEAD or a 304.
    pub part: Range<u64>,
    age: String,
    status: Status,
    /// Accept-Ranges on a whole 200, Content-Range on a part.
    range_field: Option<(&'static str, String)>,
}

impl Hit<'_> {
    /// For a body sent otherwise than stored (decoded): no Accept-Ranges,
    /// no length.
    pub fn recoded(&mut self, framing: Framing) {
        self.range_field = None;
        self.framing = framing;
    }

    /// The fields pibl adds to the stored head: Age, X-Cache, and
    /// Accept-Ranges or Content-Range.
    pub fn fields(&self) -> Vec<(&str, &str)> {
        let mut fields = vec![
            ("Age", self.age.as_str()),
            ("X-Cache", self.status.as_str()),
        ];
        if let Some((name, value)) = &self.range_field {
            fields.push((name, value.as_str()));
        }
        fields
    }
}

/// The reply to `req` from `entry`; `status` is what X-Cache says (HIT,
/// or REVALIDATED after a 304 from the backend).
pub fn reply<'e>(req: &RequestHead, entry: &'e Entry, status: Status) -> Reply<'e> {
    let len = entry.body_len;
    let (head, part, range_field) = match conditional::answer(req, &entry.head, len) {
        Answer::Whole if entry.head.status == 200 && !is_representation(entry) => (
            Cow::Borrowed(&*entry.head),
            0..len,
            Some(("Accept-Ranges", "bytes".to_string())),
        ),
        Answer::Whole => (Cow::Borrowed(&*entry.head), 0..len, None),
        Answer::Part(range) => {
            let content_range = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            let head = Cow::Owned(restated(&entry.head, 206, &[]));
            (head, range, Some(("Content-Range", content_range)))
        }
        Answer::NotModified => (
            Cow::Owned(restated(&entry.head, 304, NOT_IN_304)),
            0..0,
            None,
        ),
        Answer::PreconditionFailed => return Reply::PreconditionFailed,
        Answer::Unsatisfiable => return Reply::Unsatisfiable(len),
    };
    let framing = match head.status {
        204 | 304 => Framing::Empty,
        _ => Framing::Length(part.end - part.start),
    };
    let part = if req.method == "HEAD" { 0..0 } else { part };
    Reply::Send(Hit {
        head,
        framing,
        part,
        age: age(entry).to_string(),
        status,
        range_field,
    })
}

/// Sends a hit's `head` (bytes) and the bytes `part` of the entry's body
/// to `out`.
pub fn send(out: Stream<'_>, head: &[u8], entry: Entry, part: Range<u64>) -> io::Result<()> {
    match entry.into_body() {
        // Read whole to check the entry: the head and body in one write.
        Body::InMemory(body) => {
            let body = &body.bytes()[part.start as usize..part.end as usize];
            write_all_vectored(&mut { out }, &[head, body])
        }
        Body::InFile(entry) => {
            let sent = match io::Write::write_all(&mut { out }, head) {
                Ok(()) if !part.is_empty() => {
                    let at = entry.body_offset;
                    out.send_file(&entry.file, at + part.start..at + part.end)
                }
                other => other,
            };
            // After the reads: the kernel stamps reads with a coarser
            // clock, which must not leave this use looking older.
            touch(&entry);
            sent
        }
    }
}
