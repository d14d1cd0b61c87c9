//! What the cache makes of a request: answer it from a stored entry, or
//! forward it with a plan for the response — revalidate a stale entry,
//! fetch a HEAD as a GET, ask for the whole of a range, store what comes
//! back — all decided here, so that the proxy only follows the plan.

use super::entry::Entry;
use super::policy::{matches_vary, validators, vary_values};
use super::store::{Cache, Lookup, key};
use super::writer::{Fill, FillLock, Writer};
use crate::http::conditional;
use crate::http::{self, RequestHead, ResponseHead};

/// What the cache says to a request, as the `X-Cache` field reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Expired,
    Revalidated,
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Expired => "EXPIRED",
            Status::Revalidated => "REVALIDATED",
            Status::Bypass => "BYPASS",
        }
    }
}

/// The cache's answer to a request.
pub enum Decision<'c> {
    /// A fresh entry that matches the request, and its key: send it.
    Hit(Box<Entry>, String),
    /// Forward the request, and follow the plan with the response.
    Forward(Plan<'c>),
}

/// The cache's part in one forwarded exchange: the key, and what to do
/// with the response.
pub struct Plan<'c> {
    cache: &'c Cache,
    key: String,
    /// What `X-Cache` says of the exchange, unless it ends in a hit.
    pub status: Status,
    /// Held while this process fetches the URL for the cache; its file
    /// becomes the entry.
    fill: Option<FillLock>,
    /// An expired entry to revalidate, when it has validators.
    stale: Option<Entry>,
}

/// Looks up the request for `target`.  A GET or HEAD may be a hit; any
/// other method bypasses the cache (and an unsafe one that succeeds
/// removes the entry, `Plan::store`).
pub fn consult<'c>(cache: &'c Cache, req: &RequestHead, target: &str) -> Decision<'c> {
    let key = key(req, target);
    if !matches!(req.method.as_str(), "GET" | "HEAD") || bypasses(req) {
        return Decision::Forward(Plan::new(cache, key, Status::Bypass, None));
    }
    match cache.lookup(&key) {
        Lookup::Fresh(entry) if matches_vary(req, &entry.head) => {
            Decision::Hit(Box::new(entry), key)
        }
        Lookup::Fresh(_) => Decision::Forward(Plan::new(cache, key, Status::Miss, None)),
        Lookup::Missing => fill_or_hit(cache, key, req, Status::Miss, None),
        Lookup::Stale(entry) => {
            let stale = revalidatable(req, entry);
            fill_or_hit(cache, key, req, Status::Expired, stale)
        }
    }
}

/// Whether the client asks not to be answered from the cache:
/// `Cache-Control: no-cache` or `no-store`, or HTTP/1.0's
/// `Pragma: no-cache` in a request with no Cache-Control (RFC 9111 §5.4).
fn bypasses(req: &RequestHead) -> bool {
    match http::values(&req.fields, "cache-control").next() {
        Some(_) => http::tokens(&req.fields, "cache-control")
            .iter()
            .any(|t| t == "no-cache" || t == "no-store"),
        None => http::tokens(&req.fields, "pragma")
            .iter()
            .any(|t| t == "no-cache"),
    }
}

/// A stale entry worth revalidating: it has validators, it matches the
/// request's Vary values, and the client sent no conditions of its own
/// (which pibl then passes on untouched).
fn revalidatable(req: &RequestHead, entry: Entry) -> Option<Entry> {
    let client_conditional = req.fields.iter().any(conditional::is_condition);
    let useful =
        !client_conditional && matches_vary(req, &entry.head) && !validators(&entry).is_empty();
    useful.then_some(entry)
}

/// A miss: fetch, holding the URL's fill lock, or wait for the process
/// that holds it and look again.
fn fill_or_hit<'c>(
    cache: &'c Cache,
    key: String,
    req: &RequestHead,
    status: Status,
    stale: Option<Entry>,
) -> Decision<'c> {
    let fill = match cache.fill(&key) {
        Fill::Fetch(lock) => Some(lock),
        Fill::Pass => None,
        Fill::Waited => match cache.lookup(&key) {
            Lookup::Fresh(entry) if matches_vary(req, &entry.head) => {
                return Decision::Hit(Box::new(entry), key);
            }
            // Not stored after all (not cacheable, or a failure): fetch
            // without the lock, so such URLs are not fetched one at a time.
            _ => None,
        },
    };
    let mut plan = Plan::new(cache, key, status, fill);
    plan.stale = stale;
    Decision::Forward(plan)
}

impl<'c> Plan<'c> {
    fn new(cache: &'c Cache, key: String, status: Status, fill: Option<FillLock>) -> Plan<'c> {
        Plan {
            cache,
            key,
            status,
            fill,
            stale: None,
        }
    }

    /// Whether `req` is a HEAD this exchange fetches as a GET, to store
    /// the response, as nginx's `proxy_cache_convert_head`: one holding
    /// the URL's fill lock (not one of a URL whose responses are not
    /// stored).  The client gets the head; the body goes to the cache.
    fn fetches_head_as_get(&self, req: &RequestHead) -> bool {
        req.method == "HEAD" && self.fill.is_some()
    }

    /// Should a GET that missed be forwarded without its Range, so that
    /// the whole response comes back to be stored?  Its range is then cut
    /// from the response as it passes, as nginx does with its cache: else
    /// a resource only ever fetched in ranges (a video, a resumed
    /// download) would come back as 206s, which are not stored, and never
    /// be cached.
    pub fn wants_whole(&self, req: &RequestHead) -> bool {
        matches!(self.status, Status::Miss | Status::Expired)
            && req.method == "GET"
            && http::values(&req.fields, "range").next().is_some()
    }

    /// The request to forward, when it is not the client's own: a GET for
    /// a HEAD fetched as one; with the stale entry's validators added,
    /// when there is one to revalidate and the request is a GET (a HEAD
    /// made conditional could only be answered with the 304 meant for
    /// pibl); without Range and If-Range when `wants_whole`.
    pub fn forwarded(&self, req: &RequestHead) -> Option<RequestHead> {
        let whole = self.wants_whole(req);
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
            head.fields.extend(validators(entry));
        }
        if whole || as_get {
            head.fields.retain(|f| {
                !f.name.eq_ignore_ascii_case("range") && !f.name.eq_ignore_ascii_case("if-range")
            });
        }
        Some(head)
    }

    /// The cache key of the request.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// After a 304 to a conditional request: the entry, refreshed.
    pub fn revalidated(&mut self, req: &RequestHead, resp: &ResponseHead) -> Option<Entry> {
        if resp.status != 304 {
            return None;
        }
        let entry = self.stale.take()?;
        self.cache.refresh(&self.key, entry, req, resp)
    }

    /// A writer for the body of `resp`, if it is to be stored; removes the
    /// stored entry after an unsafe method succeeds (RFC 9111 §4.4).
    pub fn store(&mut self, req: &RequestHead, resp: &ResponseHead) -> Option<Writer> {
        let unsafe_method = !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE");
        if unsafe_method && resp.status < 400 {
            self.cache.remove(&self.key);
        }
        let lifetime = self.cache.lifetime(req, resp);
        let Some(lifetime) = lifetime.filter(|_| !self.cache.too_large(resp)) else {
            self.not_storable(req);
            return None;
        };
        let vary = vary_values(req, resp);
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
