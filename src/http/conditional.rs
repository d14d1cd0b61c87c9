//! What a cache hit answers to a conditional or a range request: 304 when
//! the client's copy is current, 412 when its precondition fails, 206 with
//! one byte range of the stored body, 416 when the range lies beyond it
//! (RFC 9110 §13 and §14, RFC 9111 §4.3.2) — as nginx answers from its
//! cache, so a browser's revalidation or a resumed download costs the
//! backend nothing.
//!
//! Pure: the request, the stored head and the body's length in; the answer
//! out.  Only a stored 200 is answered so; any other status, whole.

use std::ops::Range;
use std::time::SystemTime;

use crate::clock::parse_http_date;
use crate::http::{self, RequestHead, ResponseHead};

/// The answer a hit gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The stored response, whole.
    Whole,
    /// 304: the client's copy is current; no body.
    NotModified,
    /// 412: the client's If-Match or If-Unmodified-Since does not hold.
    PreconditionFailed,
    /// 206: these bytes of the body.
    Part(Range<u64>),
    /// 416: the range starts beyond the body.
    Unsatisfiable,
}

/// Evaluates the request's conditions, in the order of RFC 9110 §13.2.2,
/// then its Range, against a stored response whose body is `len` bytes.
pub fn answer(req: &RequestHead, stored: &ResponseHead, len: u64) -> Answer {
    // Most requests carry neither: one look at the names, and done.
    let asks = |f: &http::Field| is_condition(f) || f.name.eq_ignore_ascii_case("range");
    if stored.status != 200 || !req.fields.iter().any(asks) {
        return Answer::Whole;
    }
    let etag = http::value(&stored.fields, "etag").map(str::trim);
    let modified = date_field(&stored.fields, "last-modified");
    if let Some(list) = list_field(&req.fields, "if-match") {
        if !tag_listed(&list, etag, Compare::Strong) {
            return Answer::PreconditionFailed;
        }
    } else if let Some(since) = date_field(&req.fields, "if-unmodified-since")
        && modified.is_some_and(|m| m > since)
    {
        return Answer::PreconditionFailed;
    }
    if let Some(list) = list_field(&req.fields, "if-none-match") {
        if tag_listed(&list, etag, Compare::Weak) {
            return Answer::NotModified;
        }
    } else if let Some(since) = date_field(&req.fields, "if-modified-since") {
        // Without Last-Modified, the Date the response was sent with
        // (RFC 9111 §4.3.2).
        let modified = modified.or_else(|| date_field(&stored.fields, "date"));
        if modified.is_some_and(|m| m <= since) {
            return Answer::NotModified;
        }
    }
    if req.method != "GET" {
        return Answer::Whole;
    }
    let Some(range) = http::value(&req.fields, "range") else {
        return Answer::Whole;
    };
    if !if_range_holds(req, etag, modified) {
        return Answer::Whole;
    }
    byte_range(range, len)
}

/// Is `field` a condition of the request's (If-Match, If-None-Match,
/// If-Modified-Since, If-Unmodified-Since, If-Range)?
pub fn is_condition(field: &http::Field) -> bool {
    let name = field.name.as_bytes();
    name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Both tags strong and the same (If-Match, If-Range).
    Strong,
    /// The same opaque tag, weak or not (If-None-Match).
    Weak,
}

/// Does the list (`*`, or entity tags separated by commas) name `etag`?
fn tag_listed(list: &str, etag: Option<&str>, compare: Compare) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    list.split(',')
        .map(str::trim)
        .any(|tag| same_tag(tag, etag, compare))
}

fn same_tag(a: &str, b: &str, compare: Compare) -> bool {
    let opaque = |t: &'_ str| -> Option<(bool, String)> {
        let (weak, rest) = match t.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let valid = rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"');
        valid.then(|| (weak, rest.to_string()))
    };
    match (opaque(a), opaque(b)) {
        (Some((weak_a, a)), Some((weak_b, b))) => {
            a == b && (compare == Compare::Weak || !(weak_a || weak_b))
        }
        _ => false,
    }
}

/// Every line of a list field, as one list.
fn list_field(fields: &[http::Field], name: &str) -> Option<String> {
    let lines: Vec<String> = http::values(fields, name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// A date field, ignored when it is not one HTTP-date.
fn date_field(fields: &[http::Field], name: &str) -> Option<SystemTime> {
    parse_http_date(http::value(fields, name)?.trim())
}

/// If-Range: the range is served only if the client's validator is the
/// stored one — a strong entity tag, or exactly the Last-Modified date.
fn if_range_holds(req: &RequestHead, etag: Option<&str>, modified: Option<SystemTime>) -> bool {
    let Some(validator) = http::value(&req.fields, "if-range").map(str::trim) else {
        return true;
    };
    if validator.starts_with('"') || validator.starts_with("W/") {
        return etag.is_some_and(|etag| same_tag(validator, etag, Compare::Strong));
    }
    parse_http_date(validator).is_some_and(|date| modified == Some(date))
}

/// One byte range of a body of `len` bytes (RFC 9110 §14.1.2).  A unit
/// other than bytes, a malformed range, or several ranges: the whole body,
/// as the RFC allows (pibl sends no multipart/byteranges).
fn byte_range(value: &str, len: u64) -> Answer {
    let Some((unit, set)) = value.split_once('=') else {
        return Answer::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Answer::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Answer::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            None => Answer::Whole,
            Some(0) => Answer::Unsatisfiable,
            Some(_) if len == 0 => Answer::Unsatisfiable,
            Some(n) => Answer::Part(len - n.min(len)..len),
        },
        (first, last) => {
            let Some(first) = number(first) else {
                return Answer::Whole;
            };
            let last = match last {
                "" => u64::MAX,
                last => match number(last) {
                    Some(l) if l >= first => l,
                    _ => return Answer::Whole,
                },
            };
            if first >= len {
                return Answer::Unsatisfiable;
            }
            Answer::Part(first..last.min(len - 1) + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: &str = "Tue, 24 Nov 2026 07:00:00 GMT";

    fn stored(fields: &[(&str, &str)]) -> ResponseHead {
        ResponseHead::ok_with(fields)
    }

    fn request(method: &str, fields: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: "/".into(),
            minor: 1,
            fields: stored(fields).fields,
        }
    }

    fn get(fields: &[(&str, &str)]) -> Answer {
        let entry = stored(&[("ETag", "\"v1\""), ("Last-Modified", LM)]);
        answer(&request("GET", fields), &entry, 100)
    }

    #[test]
    fn ranges() {
        let range = |r: &str| get(&[("Range", r)]);
        assert_eq!(range("bytes=0-9"), Answer::Part(0..10));
        assert_eq!(range("bytes=90-"), Answer::Part(90..100));
        assert_eq!(range("bytes=90-1000"), Answer::Part(90..100));
        assert_eq!(range("bytes=-10"), Answer::Part(90..100));
        assert_eq!(range("bytes=-1000"), Answer::Part(0..100));
        assert_eq!(range("BYTES = 5-5"), Answer::Part(5..6));
        assert_eq!(range("bytes=100-"), Answer::Unsatisfiable);
        assert_eq!(range("bytes=-0"), Answer::Unsatisfiable);
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes",
        ] {
            assert_eq!(range(ignored), Answer::Whole, "{ignored}");
        }
        let empty = stored(&[]);
        let req = request("GET", &[("Range", "bytes=-5")]);
        assert_eq!(answer(&req, &empty, 0), Answer::Unsatisfiable);
        let head = request("HEAD", &[("Range", "bytes=0-1")]);
        assert_eq!(answer(&head, &empty, 10), Answer::Whole, "GET only");
    }

    #[test]
    fn if_range_needs_the_stored_validator() {
        let with = |v: &str| get(&[("Range", "bytes=0-0"), ("If-Range", v)]);
        assert_eq!(with("\"v1\""), Answer::Part(0..1));
        assert_eq!(with(LM), Answer::Part(0..1));
        assert_eq!(with("\"v2\""), Answer::Whole);
        assert_eq!(with("W/\"v1\""), Answer::Whole, "a weak tag never matches");
        assert_eq!(with("Tue, 24 Nov 2026 07:00:01 GMT"), Answer::Whole);
    }

    #[test]
    fn preconditions_in_order() {
        assert_eq!(
            get(&[("If-None-Match", "\"v0\", \"v1\"")]),
            Answer::NotModified
        );
        assert_eq!(get(&[("If-None-Match", "W/\"v1\"")]), Answer::NotModified);
        assert_eq!(get(&[("If-None-Match", "*")]), Answer::NotModified);
        assert_eq!(get(&[("If-None-Match", "\"v2\"")]), Answer::Whole);
        assert_eq!(get(&[("If-Modified-Since", LM)]), Answer::NotModified);
        let earlier = "Tue, 24 Nov 2026 06:59:59 GMT";
        assert_eq!(get(&[("If-Modified-Since", earlier)]), Answer::Whole);
        assert_eq!(get(&[("If-Modified-Since", "yesterday")]), Answer::Whole);
        // If-None-Match decides alone when both are sent.
        let both = [("If-None-Match", "\"v2\""), ("If-Modified-Since", LM)];
        assert_eq!(get(&both), Answer::Whole);
        assert_eq!(get(&[("If-Match", "\"v2\"")]), Answer::PreconditionFailed);
        assert_eq!(get(&[("If-Match", "W/\"v1\"")]), Answer::PreconditionFailed);
        assert_eq!(get(&[("If-Match", "\"v1\"")]), Answer::Whole);
        assert_eq!(
            get(&[("If-Unmodified-Since", earlier)]),
            Answer::PreconditionFailed
        );
        let failed_first = [("If-Match", "\"v2\""), ("If-None-Match", "\"v1\"")];
        assert_eq!(get(&failed_first), Answer::PreconditionFailed);
        let current = [("If-None-Match", "\"v1\""), ("Range", "bytes=0-0")];
        assert_eq!(get(&current), Answer::NotModified);
    }

    #[test]
    fn only_a_stored_200_and_date_stands_for_last_modified() {
        let mut not_found = stored(&[("ETag", "\"v1\"")]);
        not_found.status = 404;
        let req = request("GET", &[("If-None-Match", "\"v1\"")]);
        assert_eq!(answer(&req, &not_found, 5), Answer::Whole);
        let dated = stored(&[("Date", LM)]);
        let req = request("GET", &[("If-Modified-Since", LM)]);
        assert_eq!(answer(&req, &dated, 5), Answer::NotModified);
        let untagged = stored(&[]);
        let req = request("GET", &[("If-None-Match", "\"v1\"")]);
        assert_eq!(answer(&req, &untagged, 5), Answer::Whole);
    }
}
