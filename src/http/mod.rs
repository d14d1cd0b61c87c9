//! HTTP/1.1 message heads (RFC 9110, RFC 9112): parsing with httparse,
//! framing rules, and the heads pibl forwards in each direction.
//!
//! Pure: bytes in, heads and bytes out.  No I/O happens here.

pub mod body;
pub mod codec;
pub mod coding;
pub mod conditional;
pub mod head;
pub mod wire;

use std::net::IpAddr;

/// Most fields pibl can accept in one head (max_headers is capped here).
pub const MAX_FIELDS: usize = 256;
/// Most fields accepted in a backend's response head; more is a 502.
pub const MAX_RESPONSE_FIELDS: usize = 100;

/// What pibl adds to `Via` for a message received as HTTP/1.`minor`:
/// the version it came in, and pibl's name (RFC 9110 §7.6.3).
fn via(minor: u8) -> &'static str {
    if minor == 0 { "1.0 pibl" } else { "1.1 pibl" }
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Vec<Field>,
}

#[cfg(test)]
impl ResponseHead {
    /// A 200 with `fields`: the response the unit tests start from.
    pub fn ok_with(fields: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            status: 200,
            reason: "OK".into(),
            minor: 1,
            fields: fields
                .iter()
                .map(|(n, v)| Field {
                    name: n.to_string(),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
        }
    }
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything up to the end of the connection (responses only).
    UntilClose,
}

/// Why a head was refused, and the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub why: &'static str,
}

const fn reject(status: u16, why: &'static str) -> Reject {
    Reject { status, why }
}

pub enum Parsed<T> {
    /// The head, and its length in bytes.
    Done(T, usize),
    Partial,
}

fn parse_error(e: httparse::Error) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => reject(431, "too many header fields"),
        httparse::Error::Version => reject(505, "unsupported HTTP version"),
        _ => reject(400, "malformed head"),
    }
}

fn own_fields(headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| Field {
            name: h.name.to_string(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// Parses a request head of at most `max_fields` fields (431 beyond).
/// Once, in the parent, before the first fork: httparse picks its SIMD
/// code by asking the CPU what it has (CPUID, which traps to the hypervisor
/// in a virtual machine) at its first parse, and keeps the answer in a
/// static.  Asked here, the answer is inherited by every child instead of
/// being asked again in each — a sixth of a short connection's CPU.
pub fn prepare() {
    let sample = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let _ = parse_request(sample, MAX_FIELDS);
    let _ = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

pub fn parse_request(buf: &[u8], max_fields: usize) -> Result<Parsed<RequestHead>, Reject> {
    // Left uninitialised: httparse writes the fields it finds, and 256
    // empty ones would be 8 KiB to fill for every request.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, &mut headers[..max_fields.min(MAX_FIELDS)]);
    let parsed = match parsed {
        Err(httparse::Error::Version) if !names_a_version(buf) => {
            Err(reject(400, "malformed request line"))
        }
        Err(httparse::Error::Version) => match later_minor(buf) {
            Some(as_http11) => return parse_request(&as_http11, max_fields),
            None => Err(parse_error(httparse::Error::Version)),
        },
        other => other.map_err(parse_error),
    };
    match parsed? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => Ok(Parsed::Done(
            RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                minor: req.version.unwrap_or(1),
                fields: own_fields(req.headers),
            },
            len,
        )),
    }
}

/// Does the request line end in a version, `HTTP/x.y`, after exactly one
/// space?  httparse reports any fault after the target as a bad version;
/// only a line that names one deserves a 505, the rest (two spaces, a
/// lower-case `http`) are malformed: 400.
fn names_a_version(buf: &[u8]) -> bool {
    let mut parts = request_line(buf).split(|&b| b == b' ');
    let version = (parts.next(), parts.next(), parts.next(), parts.next());
    matches!(version, (Some(_), Some(target), Some(v), None)
        if !target.is_empty() && matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit()))
}

/// A request of a later HTTP/1 minor version (`HTTP/1.2` to `HTTP/1.9`),
/// rewritten as HTTP/1.1: RFC 9110 §2.5 asks a recipient to process it as
/// the highest minor version it implements, as nginx does.  `None` for any
/// other version, which httparse refused (505).  Rare enough to copy.
fn later_minor(buf: &[u8]) -> Option<Vec<u8>> {
    let line = request_line(buf);
    let at = line.len().checked_sub(b"HTTP/1.x".len())?;
    match &line[at..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            let mut copy = buf.to_vec();
            copy[line.len() - 1] = b'1';
            Some(copy)
        }
        _ => None,
    }
}

/// The first line of `buf`, without its line end.
fn request_line(buf: &[u8]) -> &[u8] {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Is `value` a valid Host: a host name, IPv4 address or bracketed IP
/// literal, and an optional port (RFC 9110 §7.2, RFC 3986 §3.2.2)?  Empty
/// is allowed (a target with no authority).  Refused: spaces, `/`, `@`
/// and everything else a name cannot hold, as nginx refuses them.
pub fn valid_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

pub fn parse_response_head(buf: &[u8]) -> Result<Parsed<ResponseHead>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).map_err(parse_error)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => Ok(Parsed::Done(
            ResponseHead {
                status: resp.code.unwrap_or_default(),
                reason: resp.reason.unwrap_or_default().to_string(),
                minor: resp.version.unwrap_or(1),
                fields: own_fields(resp.headers),
            },
            len,
        )),
    }
}

/// The values of every field called `name`.
pub fn values<'a>(fields: &'a [Field], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value.as_slice())
}

/// The first value of `name`, as text.
pub fn value<'a>(fields: &'a [Field], name: &'a str) -> Option<&'a str> {
    values(fields, name)
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The comma-separated list elements of every `name` field, trimmed and
/// lower-cased (RFC 9110 §5.6.1).
pub fn tokens(fields: &[Field], name: &str) -> Vec<String> {
    values(fields, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The single Content-Length, or a reason to refuse the message: several
/// differing values, or one that is not a decimal number (RFC 9112 §6.3).
pub fn content_length(fields: &[Field]) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for value in values(fields, "content-length") {
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("invalid Content-Length")?;
            if found.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length values");
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Framing of a request body.  Refused: Transfer-Encoding beside
/// Content-Length, a final coding other than chunked, any coding pibl does
/// not implement (501), a bad Content-Length.
pub fn request_framing(req: &RequestHead) -> Result<Framing, Reject> {
    let codings = tokens(&req.fields, "transfer-encoding");
    let length = content_length(&req.fields).map_err(|why| reject(400, why))?;
    if values(&req.fields, "transfer-encoding").next().is_some() {
        if length.is_some() {
            return Err(reject(400, "both Transfer-Encoding and Content-Length"));
        }
        if req.minor == 0 {
            return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(reject(400, "final transfer coding is not chunked"));
        }
        if codings.len() > 1 {
            return Err(reject(501, "unsupported transfer coding"));
        }
        return Ok(Framing::Chunked);
    }
    Ok(match length {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Whether a request's head says a body follows, framed well or not.
pub fn announces_body(req: &RequestHead) -> bool {
    values(&req.fields, "transfer-encoding").next().is_some()
        || !matches!(content_length(&req.fields), Ok(None | Some(0)))
}

/// Framing of a response body, given the request's method and the status
/// (RFC 9112 §6.3 rules 1 to 7).
pub fn response_framing(method: &str, resp: &ResponseHead) -> Result<Framing, &'static str> {
    let length = content_length(&resp.fields)?;
    if method == "HEAD" || resp.status < 200 || resp.status == 204 || resp.status == 304 {
        return Ok(Framing::Empty);
    }
    if values(&resp.fields, "transfer-encoding").next().is_some() {
        if length.is_some() {
            return Err("both Transfer-Encoding and Content-Length");
        }
        // A final coding other than chunked: the body ends when the
        // backend closes (RFC 9112 §6.3, rule 4).  Codings before a final
        // chunked pibl can neither decode nor pass on: it frames what it
        // sends itself, and a client told nothing of them would take coded
        // bytes for the content.  A 502, as nginx answers.
        return match tokens(&resp.fields, "transfer-encoding").as_slice() {
            [only] if only == "chunked" => Ok(Framing::Chunked),
            [.., last] if last != "chunked" => Ok(Framing::UntilClose),
            _ => Err("unsupported transfer coding"),
        };
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// May pibl send another request on the backend connection that carried
/// this response?  HTTP/1.1, and no `Connection: close`.
pub fn backend_keeps_alive(resp: &ResponseHead) -> bool {
    resp.minor == 1
        && !tokens(&resp.fields, "connection")
            .iter()
            .any(|t| t == "close")
}

/// Does the client want the connection kept open after this request?
pub fn client_keeps_alive(req: &RequestHead) -> bool {
    let connection = tokens(&req.fields, "connection");
    if req.minor == 0 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    }
}

/// The interim response that lets a client send the body it held back.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Does the client ask for `100 Continue` before it sends the body?
pub fn expects_continue(req: &RequestHead) -> bool {
    value(&req.fields, "expect").is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus those pibl writes itself.
fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    const ALWAYS: [&str; 13] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        // Rewritten by pibl below, not copied.
        "content-length",
        "expect",
        "via",
        "x-forwarded-proto",
    ];
    ALWAYS.iter().any(|h| name.eq_ignore_ascii_case(h))
        || listed.iter().any(|t| name.eq_ignore_ascii_case(t))
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Copies the end-to-end fields, dropping hop-by-hop ones and any also named
/// in `skip`.
fn push_end_to_end(out: &mut Vec<u8>, fields: &[Field], skip: &[&str]) {
    let listed = tokens(fields, "connection");
    for f in fields {
        if !is_hop_by_hop(&f.name, &listed) && !skip.iter().any(|s| f.name.eq_ignore_ascii_case(s))
        {
            push_field(out, &f.name, &f.value);
        }
    }
}

/// `existing, ours` for list fields such as Via and X-Forwarded-For.
fn appended(fields: &[Field], name: &str, ours: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values(fields, name) {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours.as_bytes());
    out
}

fn push_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => push_field(out, "Content-Length", n.to_string().as_bytes()),
        Framing::Chunked => push_field(out, "Transfer-Encoding", b"chunked"),
        Framing::Empty | Framing::UntilClose => {}
    }
}

/// Who sent a request, as a backend is told (X-Forwarded-For, -Proto).
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    pub addr: IpAddr,
    /// The request came over HTTPS.
    pub https: bool,
}

/// The head pibl sends to a backend: HTTP/1.1, origin-form target, Host
/// kept, hop-by-hop fields dropped, X-Forwarded-For/-Proto and Via added, one
/// unambiguous framing, and `Connection: close` unless pibl means to keep
/// the connection for another request (`keep_alive`).
pub fn forward_request(
    req: &RequestHead,
    target: &str,
    client: ClientSide,
    backend_host: &str,
    framing: Framing,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_end_to_end(out, &req.fields, &["x-forwarded-for", "x-forwarded-proto"]);
    if values(&req.fields, "host").next().is_none() {
        push_field(out, "Host", backend_host.as_bytes());
    }
    push_field(
        out,
        "X-Forwarded-For",
        &appended(&req.fields, "x-forwarded-for", &client.addr.to_string()),
    );
    let proto: &[u8] = if client.https { b"https" } else { b"http" };
    push_field(out, "X-Forwarded-Proto", proto);
    push_field(out, "Via", &appended(&req.fields, "via", via(req.minor)));
    push_framing(out, framing);
    // An empty body the client announced is announced again: some servers
    // refuse a POST without a length (411), and RFC 9110 §8.6 asks for it.
    if framing == Framing::Empty && values(&req.fields, "content-length").next().is_some() {
        out.extend_from_slice(b"Content-Length: 0\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the `Connection` field of a response to the client must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Keep the connection; HTTP/1.0 clients need to be told so.
    KeepAlive {
        http10: bool,
    },
    Close,
}

/// The head pibl sends to its client.  `framing` is how pibl itself
/// delimits the body; `Empty` keeps the backend's Content-Length, which for
/// HEAD and 304 describes a body not sent.
pub fn forward_response(
    resp: &ResponseHead,
    framing: Framing,
    persist: Persist,
    out: &mut Vec<u8>,
) {
    forward_response_with(resp, framing, persist, &[], out);
}

/// `forward_response`, with fields of pibl's own (`X-Cache`, `Age`) in
/// place of any the response had of the same names.
pub fn forward_response_with(
    resp: &ResponseHead,
    framing: Framing,
    persist: Persist,
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason).as_bytes());
    let replaced: Vec<&str> = extra
        .iter()
        .map(|(name, _)| *name)
        .chain(["x-pibl-vary", "x-pibl-source"])
        .collect();
    push_end_to_end(out, &resp.fields, &replaced);
    for (name, value) in extra {
        push_field(out, name, value.as_bytes());
    }
    // A HEAD's or a 304's length is the representation's, worth passing
    // on; a 1xx or a 204 must not have one (RFC 9110 §8.6).
    if framing == Framing::Empty
        && resp.status >= 200
        && resp.status != 204
        && let Ok(Some(n)) = content_length(&resp.fields)
    {
        push_field(out, "Content-Length", n.to_string().as_bytes());
    }
    push_field(out, "Via", &appended(&resp.fields, "via", via(resp.minor)));
    push_framing(out, framing);
    match persist {
        Persist::KeepAlive { http10: true } => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persist::KeepAlive { http10: false } => {}
        Persist::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase pibl uses for the statuses it generates itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A complete response generated by pibl itself (errors), in the manner of
/// nginx's: a short HTML page that names no internal address.
pub fn error_response(status: u16, persist: Persist) -> Vec<u8> {
    error_response_with(status, persist, &[])
}

/// `error_response`, with fields of its own (416's `Content-Range`).
pub fn error_response_with(status: u16, persist: Persist, extra: &[(&str, &str)]) -> Vec<u8> {
    let title = format!("{status} {}", reason(status));
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>pibl</center>\r\n</body>\r\n</html>\r\n"
    );
    let connection = match persist {
        Persist::KeepAlive { http10: true } => "Connection: keep-alive\r\n",
        Persist::KeepAlive { http10: false } => "",
        Persist::Close => "Connection: close\r\n",
    };
    let extra: String = extra
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    format!(
        "HTTP/1.1 {title}\r\nServer: pibl\r\nContent-Type: text/html\r\nContent-Length: {}\r\n{extra}{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `stored` with another status, and without the fields `dropped`: a 206
/// or 304 made from a whole response.
pub fn restated(stored: &ResponseHead, status: u16, dropped: &[&str]) -> ResponseHead {
    let mut head = stored.clone();
    head.status = status;
    head.reason = reason(status).to_string();
    head.fields
        .retain(|f| !dropped.iter().any(|d| f.name.eq_ignore_ascii_case(d)));
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> RequestHead {
        match parse_request(text.as_bytes(), 100).unwrap() {
            Parsed::Done(h, n) => {
                assert_eq!(n, text.len());
                h
            }
            Parsed::Partial => panic!("partial"),
        }
    }

    fn resp(text: &str) -> ResponseHead {
        match parse_response_head(text.as_bytes()).unwrap() {
            Parsed::Done(h, _) => h,
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn request_framing_rules() {
        let f = |t: &str| request_framing(&req(t));
        assert_eq!(f("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap_err()
                .status,
            501
        );
    }

    #[test]
    fn a_body_is_announced_by_any_framing_field_but_a_zero_length() {
        let f = |t: &str| announces_body(&req(t));
        assert!(!f("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!f("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        assert!(f("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
        assert!(f("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n"));
        assert!(f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"));
    }

    #[test]
    fn response_framing_rules() {
        let ok = resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(response_framing("GET", &ok), Ok(Framing::Length(10)));
        assert_eq!(response_framing("HEAD", &ok), Ok(Framing::Empty));
        let none = resp("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(response_framing("GET", &none), Ok(Framing::Empty));
        let close = resp("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(response_framing("GET", &close), Ok(Framing::UntilClose));
        let chunked = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_framing("GET", &chunked), Ok(Framing::Chunked));
        let both =
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(response_framing("GET", &both).is_err());
        // A final coding other than chunked: until the backend closes.
        for coded in ["gzip", "identity", "chunked, gzip"] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coded}\r\n\r\n");
            let framing = response_framing("GET", &resp(&text));
            assert_eq!(framing, Ok(Framing::UntilClose), "{coded}");
        }
        let coded_then_chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(response_framing("GET", &resp(coded_then_chunked)).is_err());
    }

    #[test]
    fn keep_alive_by_version() {
        assert!(client_keeps_alive(&req(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )));
        assert!(!client_keeps_alive(&req(
            "GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"
        )));
        assert!(!client_keeps_alive(&req("GET / HTTP/1.0\r\n\r\n")));
        assert!(client_keeps_alive(&req(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )));
    }

    #[test]
    fn forwarded_request_drops_hop_by_hop_and_adds_proxy_fields() {
        let r = req(
            "POST /x HTTP/1.1\r\nHost: site\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: b\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.0 old\r\nContent-Length: 3\r\nAccept: */*\r\n\r\n",
        );
        let mut out = Vec::new();
        forward_request(
            &r,
            "/x",
            ClientSide {
                addr: "127.0.0.2".parse().unwrap(),
                https: false,
            },
            "b:1",
            Framing::Length(3),
            false,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /x HTTP/1.1\r\nHost: site\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.2\r\nX-Forwarded-Proto: http\r\nVia: 1.0 old, 1.1 pibl\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_request_keeps_an_announced_empty_body() {
        let forwarded = |text: &str| {
            let r = req(text);
            let mut out = Vec::new();
            let framing = request_framing(&r).unwrap();
            forward_request(
                &r,
                "/",
                ClientSide {
                    addr: "127.0.0.2".parse().unwrap(),
                    https: false,
                },
                "b:1",
                framing,
                true,
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        let posted = forwarded("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert!(
            posted.ends_with("Via: 1.1 pibl\r\nContent-Length: 0\r\n\r\n"),
            "{posted}"
        );
        let got = forwarded("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!got.contains("Content-Length"), "{got}");
    }

    #[test]
    fn forwarded_request_without_host_names_the_backend() {
        let r = req("GET / HTTP/1.0\r\n\r\n");
        let mut out = Vec::new();
        forward_request(
            &r,
            "/",
            ClientSide {
                addr: "::1".parse().unwrap(),
                https: false,
            },
            "b:1",
            Framing::Empty,
            true,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nHost: b:1\r\n"));
        assert!(
            !text.contains("Connection"),
            "keep-alive is HTTP/1.1's default"
        );
    }

    #[test]
    fn forwarded_response_reframes() {
        let r = resp(
            "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nServer: x\r\n\r\n",
        );
        let mut out = Vec::new();
        forward_response(&r, Framing::UntilClose, Persist::Close, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nServer: x\r\nVia: 1.1 pibl\r\nConnection: close\r\n\r\n"
        );
        let head = resp("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n");
        let mut out = Vec::new();
        forward_response(
            &head,
            Framing::Empty,
            Persist::KeepAlive { http10: true },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nVia: 1.1 pibl\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn hosts() {
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "",
            "a-b_c.d~",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a b", "a/b", "u@host", "a\\b", "\"x\"", "a\tb", "h\u{e9}", "a?b", "a#b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn a_later_http1_minor_version_is_read_as_http11() {
        let text = b"GET /a HTTP/1.7\r\nHost: x\r\n\r\nnext";
        match parse_request(text, 100) {
            Ok(Parsed::Done(head, len)) => {
                assert_eq!((head.target.as_str(), head.minor), ("/a", 1));
                assert_eq!(&text[len..], b"next");
            }
            _ => panic!("HTTP/1.7 refused"),
        }
        assert!(matches!(
            parse_request(b"GET /a HTTP/1.7\r\nHost: x\r\n", 100),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn parse_errors_map_to_statuses() {
        let status = |text: &[u8]| parse_request(text, 100).err().map(|r| r.status);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(status(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n"), Some(505));
        assert_eq!(status(b"GET / HTTP/0.9\r\nHost: x\r\n\r\n"), Some(505));
        assert_eq!(status(b"GET /  HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / http/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.1x\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Some(400));
        let many: String = (0..11).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(text.as_bytes(), 10).err().map(|r| r.status),
            Some(431)
        );
        assert!(matches!(
            parse_request(text.as_bytes(), 11),
            Ok(Parsed::Done(..))
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost", 100),
            Ok(Parsed::Partial)
        ));
    }
}
