//! What may be stored and for how long, and what a stored response says
//! of itself: RFC 9111's rules, apart from how entries are kept.

use std::time::{Duration, SystemTime};

use super::entry::Entry;
use super::store::Cache;
use crate::clock::unix_now;
use crate::http::{self, RequestHead, ResponseHead};

/// Statuses cacheable by default (RFC 9110 §15.1, RFC 9111 §4.2.2).
const CACHEABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

impl Cache {
    /// Whether `resp` says it is longer than `max_entry`: not to be stored,
    /// known before its body is read.
    pub fn too_large(&self, resp: &ResponseHead) -> bool {
        http::content_length(&resp.fields).is_ok_and(|len| len.is_some_and(|n| n > self.max_entry))
    }

    /// How long a response may be stored: the launch TTL, or less if the
    /// origin asks for less.  `None`: it may not be stored at all.
    pub fn lifetime(&self, req: &RequestHead, resp: &ResponseHead) -> Option<Duration> {
        let cc = Directives::of(&resp.fields);
        if req.method != "GET" || !storable(req, resp, &cc) {
            return None;
        }
        // The origin's lifetime runs from when it made the response, which
        // may have aged in another cache on the way (RFC 9111 §4.2.3).
        let explicit = cc.explicit_lifetime().or_else(|| expires_in(resp));
        let asked = explicit
            .map(|a| a.saturating_sub(Duration::from_secs(age_when_received(&resp.fields))));
        // Without explicit freshness, only the heuristically cacheable
        // statuses (RFC 9110 §15.1), and any status marked `public`
        // (RFC 9111 §4.2.2), take the launch TTL.
        if asked.is_none() && !CACHEABLE.contains(&resp.status) && !cc.has("public") {
            return None;
        }
        let lifetime = asked.map_or(self.ttl, |a| a.min(self.ttl));
        (!lifetime.is_zero()).then_some(lifetime)
    }
}

/// Whether `resp` to `req`, whose directives are `cc`, may be stored at
/// all, whatever its lifetime (RFC 9111 §3): a final, whole response (not
/// a 206, nor a 304 to a condition pibl passed on), that neither side
/// forbids storing.
fn storable(req: &RequestHead, resp: &ResponseHead, cc: &Directives) -> bool {
    if resp.status < 200 || resp.status == 206 || resp.status == 304 {
        return false;
    }
    // no-cache lets a cache store the response but never serve it
    // unvalidated (RFC 9111 §5.2.2.4): stored, it would be a request to
    // the backend every time all the same, so it is not stored, as nginx
    // does not store it.
    if cc.has("no-store") || cc.has("no-cache") || cc.has("private") {
        return false;
    }
    if Directives::of(&req.fields).has("no-store") {
        return false;
    }
    if http::values(&resp.fields, "set-cookie").next().is_some() {
        return false;
    }
    // A response to a request with credentials is stored only when the
    // origin says a shared cache may reuse it (RFC 9111 §3.5).
    if http::values(&req.fields, "authorization").next().is_some()
        && !(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate"))
    {
        return false;
    }
    !http::tokens(&resp.fields, "vary").iter().any(|v| v == "*")
}

/// Largest delta-seconds a cache need represent: a greater one, or one
/// that overflows, is taken as 2^31 (RFC 9111 §1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A message's Cache-Control directives, lower-cased.
struct Directives(Vec<String>);

impl Directives {
    fn of(fields: &[http::Field]) -> Directives {
        Directives(http::tokens(fields, "cache-control"))
    }

    /// Whether `name` is present, with or without an argument.
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|t| directive_name(t) == name)
    }

    /// The argument of `name`, if present (`Some(None)`: present with none).
    fn argument(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|t| directive_name(t) == name)
            .map(|t| t.split_once('=').map(|(_, v)| v.trim()))
    }

    /// The lifetime `s-maxage` (a shared cache's, first) or `max-age`
    /// gives, if either is present.  One that is not delta-seconds (`-1`,
    /// `'60'`, `1.5`, none at all) makes the response stale on arrival,
    /// never fresh (RFC 9111 §4.2.1).
    fn explicit_lifetime(&self) -> Option<Duration> {
        let given = self
            .argument("s-maxage")
            .or_else(|| self.argument("max-age"))?;
        Some(Duration::from_secs(
            given.and_then(delta_seconds).unwrap_or(0),
        ))
    }
}

fn directive_name(token: &str) -> &str {
    token.split_once('=').map_or(token, |(name, _)| name).trim()
}

/// A delta-seconds value (RFC 9111 §1.2.2): digits only, in the token form
/// or, as recipients are to accept, the quoted-string form (RFC 9111
/// §5.2); clamped to 2^31.  `None` for anything else.
fn delta_seconds(value: &str) -> Option<u64> {
    let digits = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// The `Age` of a stored response now (RFC 9111 §4.2.3): its age when
/// stored, as the origin or an upstream cache said, plus the time since.
pub fn age(entry: &Entry) -> u64 {
    age_when_received(&entry.head.fields) + unix_now().saturating_sub(entry.stored)
}

/// The `Age` a response came with: 0 when it has none, or none that reads.
fn age_when_received(fields: &[http::Field]) -> u64 {
    http::value(fields, "age")
        .and_then(|a| a.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// `Expires` minus `Date` (or now), when the origin sent an `Expires`.
/// One that is no date (`0`, say) means already expired (RFC 9111 §5.3).
fn expires_in(resp: &ResponseHead) -> Option<Duration> {
    let value = http::value(&resp.fields, "expires")?;
    let Some(expires) = crate::clock::parse_http_date(value) else {
        return Some(Duration::ZERO);
    };
    let date = http::value(&resp.fields, "date")
        .and_then(crate::clock::parse_http_date)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or_default())
}

/// The names in the response's Vary field, with the request's values:
/// `name=value` lines for the entry, which `matches_vary` checks.
pub fn vary_values(req: &RequestHead, resp: &ResponseHead) -> Vec<String> {
    http::tokens(&resp.fields, "vary")
        .iter()
        .map(|name| {
            let value: Vec<String> = http::values(&req.fields, name)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .collect();
            format!("{name}={}", value.join(", "))
        })
        .collect()
}

/// Does `req` send the same values as the request an entry was stored for?
pub fn matches_vary(req: &RequestHead, entry: &ResponseHead) -> bool {
    let stored: Vec<String> = http::values(&entry.fields, "x-pibl-vary")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let now = vary_values(req, entry);
    stored == now
}

/// The conditional fields that ask the origin whether a stored response is
/// still valid (RFC 9111 §4.3.1).
pub fn validators(entry: &Entry) -> Vec<http::Field> {
    let mut fields = Vec::new();
    if let Some(etag) = http::values(&entry.head.fields, "etag").next() {
        fields.push(http::Field {
            name: "If-None-Match".into(),
            value: etag.to_vec(),
        });
    }
    if let Some(date) = http::values(&entry.head.fields, "last-modified").next() {
        fields.push(http::Field {
            name: "If-Modified-Since".into(),
            value: date.to_vec(),
        });
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_seconds_are_digits_alone() {
        assert_eq!(delta_seconds("3600"), Some(3600));
        assert_eq!(delta_seconds("\"3600\""), Some(3600));
        assert_eq!(delta_seconds("0"), Some(0));
        for bad in ["-1", "'3600'", "1.5", "", "\"", "\"36", "0x10", "+5", "5 6"] {
            assert_eq!(delta_seconds(bad), None, "{bad:?}");
        }
        assert_eq!(delta_seconds("99999999999999999999999"), Some(1 << 31));
        assert_eq!(delta_seconds("4294967296"), Some(1 << 31));
    }
}
