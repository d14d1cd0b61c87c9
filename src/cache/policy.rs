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
        if req.method != "GET" || !CACHEABLE.contains(&resp.status) {
            return None;
        }
        let cc = http::tokens(&resp.fields, "cache-control");
        let has = |d: &str| cc.iter().any(|t| t == d || t.starts_with(&format!("{d}=")));
        let request_cc = http::tokens(&req.fields, "cache-control");
        // no-cache lets a cache store the response but never serve it
        // unvalidated (RFC 9111 §5.2.2.4): stored, it would be a request to
        // the backend every time all the same, so it is not stored, as nginx
        // does not store it.
        let restricted = has("no-store") || has("no-cache") || has("private");
        if restricted || request_cc.iter().any(|t| t == "no-store") {
            return None;
        }
        if http::values(&resp.fields, "set-cookie").next().is_some() {
            return None;
        }
        if http::values(&req.fields, "authorization").next().is_some()
            && !(has("public") || has("s-maxage"))
        {
            return None;
        }
        if http::tokens(&resp.fields, "vary").iter().any(|v| v == "*") {
            return None;
        }
        let seconds = |d: &str| {
            cc.iter().find_map(|t| {
                t.strip_prefix(&format!("{d}="))?
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
            })
        };
        let asked = seconds("s-maxage")
            .or_else(|| seconds("max-age"))
            .map(Duration::from_secs);
        // The origin's lifetime runs from when it made the response, which
        // may have aged in another cache on the way (RFC 9111 §4.2.3).
        let asked = asked
            .or_else(|| expires_in(resp))
            .map(|a| a.saturating_sub(Duration::from_secs(age_when_received(&resp.fields))));
        let lifetime = asked.map_or(self.ttl, |a| a.min(self.ttl));
        (!lifetime.is_zero()).then_some(lifetime)
    }
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
