//! A request read off a client connection and checked, or refused: what
//! `forward` may send on.

use std::io;
use std::net::IpAddr;
use std::time::Instant;

use crate::http::head::{HeadError, HeadRules, read_head};
use crate::http::{self, Framing, Reject, RequestHead};
use crate::proxy::Context;
use crate::proxy::exchange::{Client, Exchange, client_read_status, send};

/// What came on a client connection.
pub enum Next {
    /// The client closed (or idled out) cleanly between requests.
    Closed,
    /// A request pibl answered itself, refusing it.
    Refused(Exchange),
    /// A request to forward.
    Request(Incoming),
}

/// A checked request, with its exchange begun.
pub struct Incoming {
    pub head: RequestHead,
    /// The target to forward, in origin form.
    pub target: String,
    pub framing: Framing,
    pub ex: Exchange,
}

/// Reads the next request from `client` and checks it.
pub fn read(client: &mut Client<'_>, ctx: &Context) -> Next {
    let mut ex = Exchange::new();
    ex.tls = client.get_ref().protocol();
    if ex.tls.is_some()
        && let Some(max_age) = ctx.config.tls.as_ref().and_then(|t| t.hsts)
    {
        ex.hsts = Some(format!("max-age={max_age}"));
    }
    let mut req = match read_request(client, ctx) {
        Ok(None) => return Next::Closed,
        // Reset with not a byte of a request sent (a browser dropping a
        // kept connection, wrk at its end): nothing to answer or log, as
        // for a close, where nginx and HAProxy log nothing either.
        Err(HeadError::Io(e))
            if e.kind() == io::ErrorKind::ConnectionReset && client.buffered().is_empty() =>
        {
            return Next::Closed;
        }
        Ok(Some(req)) => req,
        Err(HeadError::Reject(r)) => return Next::Refused(ex.refuse(client, r.status)),
        Err(HeadError::Io(e)) => return Next::Refused(ex.refuse(client, client_read_status(&e))),
    };
    describe(&mut ex, &req);
    let (target, framing) = match check_request(&mut req, ctx.config.limits.max_body) {
        Ok(ok) => ok,
        Err(r) => {
            // The body is refused unread, and may not have come yet: the
            // close must drain it, however late it comes.
            if http::announces_body(&req) {
                ex.leave_body_unread();
            }
            return Next::Refused(ex.refuse(client, r.status));
        }
    };
    Next::Request(Incoming {
        head: req,
        target,
        framing,
        ex,
    })
}

/// Reads a request head within the configured bounds.
fn read_request(client: &mut Client<'_>, ctx: &Context) -> Result<Option<RequestHead>, HeadError> {
    let limits = &ctx.config.limits;
    let rules = HeadRules {
        max_size: limits.max_header_size,
        max_line: Some(limits.max_request_line),
        deadline: Some(Instant::now() + ctx.config.timeouts.client_header),
    };
    let max_fields = limits.max_headers;
    read_head(client, &rules, |buf| http::parse_request(buf, max_fields))
}

/// Notes in the exchange what the access log says of the request.
fn describe(ex: &mut Exchange, req: &RequestHead) {
    ex.request_line = format!("{} {} HTTP/1.{}", req.method, req.target, req.minor);
    ex.referer = http::values(&req.fields, "referer")
        .next()
        .map(<[u8]>::to_vec);
    ex.user_agent = http::values(&req.fields, "user-agent")
        .next()
        .map(<[u8]>::to_vec);
    ex.minor = req.minor;
    ex.keep_alive = http::client_keeps_alive(req);
}

/// Validates a request head and returns the target to forward (origin-form,
/// `origin_form`) and the body framing.
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
    let target = origin_form(req)?;
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

/// The target to forward, in origin form.  An absolute-form target's
/// authority replaces Host (RFC 9112 §3.2.2); its scheme, `http` or
/// `https` (as nginx takes both), is dropped with it.
fn origin_form(req: &mut RequestHead) -> Result<String, Reject> {
    let bad = |why| Reject { status: 400, why };
    if req.target.starts_with('/') || (req.target == "*" && req.method == "OPTIONS") {
        return Ok(req.target.clone());
    }
    if req.method == "CONNECT" {
        return Err(Reject {
            status: 501,
            why: "CONNECT is not supported",
        });
    }
    let Some(rest) = strip_prefix_ignore_case(&req.target, "http://")
        .or_else(|| strip_prefix_ignore_case(&req.target, "https://"))
    else {
        return Err(bad("invalid request target"));
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() {
        return Err(bad("empty authority"));
    }
    // The authority replaces Host, but a Host no request may carry is
    // refused as it is with a target in origin form: a space or a tab in
    // it is a request another server in the chain may read otherwise.
    let hosts_valid = http::values(&req.fields, "host").all(http::valid_host);
    if !hosts_valid || !http::valid_host(authority.as_bytes()) {
        return Err(bad("invalid Host"));
    }
    let target = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let host = http::Field {
        name: "Host".into(),
        value: authority.as_bytes().to_vec(),
    };
    req.fields.retain(|f| !f.name.eq_ignore_ascii_case("host"));
    req.fields.push(host);
    Ok(target)
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// A checked request, as it is forwarded.
pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub target: &'a str,
    pub framing: Framing,
    pub peer: IpAddr,
}

impl Request<'_> {
    /// Methods whose repetition has the effect of one (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.head.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }

    fn wants_continue(&self) -> bool {
        self.framing != Framing::Empty && self.head.minor == 1 && http::expects_continue(self.head)
    }

    /// Answers `Expect: 100-continue` just before pibl reads the body.
    /// pibl answers the expectation itself, as nginx does, and does not
    /// pass it on: a backend then never waits for a client that waits for
    /// it.
    pub fn send_continue(&self, client: &Client<'_>) {
        if self.wants_continue() {
            let _ = send(client, http::CONTINUE);
        }
    }
}
