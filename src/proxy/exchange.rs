//! What one exchange did, for the access log and for the connection that
//! decides whether to go on, and the replies pibl makes itself.

use std::io::{self, Write};
use std::time::{Instant, SystemTime};

use crate::cache::Status as CacheStatus;
use crate::http::head::is_timeout;
use crate::http::wire::Reader;
use crate::http::{self, Persist};
use crate::proxy::End;
use crate::tls::Stream;

/// What happened, for the access log.
pub struct Exchange {
    /// `METHOD target HTTP/1.x`; `-` when no head could be read.
    pub request_line: String,
    pub referer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
    /// The client's HTTP minor version: 0 or 1.
    pub minor: u8,
    /// Status sent to the client; 0 when none could be.
    pub status: u16,
    pub body_bytes: u64,
    /// Bytes of the request's body, when pibl held it or its length was
    /// stated (a chunked body streamed on is not counted).
    pub bytes_in: u64,
    /// The backends tried, in order, as nginx logs `$upstream_addr`.
    pub upstream: Option<String>,
    pub time: SystemTime,
    pub started: Instant,
    pub keep_alive: bool,
    /// The client may still be sending a body pibl did not read: the
    /// connection is then closed lingering (`connection`).
    pub body_unread: bool,
    pub end: End,
    /// What the cache did, when there is one.
    pub cache: Option<CacheStatus>,
    /// The TLS protocol the request came over; `None` for plain HTTP.
    pub tls: Option<&'static str>,
    /// Strict-Transport-Security's value, for an HTTPS response when
    /// `hsts` is set.
    pub hsts: Option<String>,
}

/// A client connection, as the exchange writes to it.
pub type Client<'a> = Reader<Stream<'a>>;

impl Exchange {
    pub fn new() -> Exchange {
        Exchange {
            request_line: "-".into(),
            referer: None,
            user_agent: None,
            minor: 1,
            status: 0,
            body_bytes: 0,
            bytes_in: 0,
            upstream: None,
            time: SystemTime::now(),
            started: Instant::now(),
            keep_alive: false,
            body_unread: false,
            end: End::Served,
            cache: None,
            tls: None,
            hsts: None,
        }
    }

    /// The request's body is left unread: the connection cannot carry
    /// another request.
    pub fn leave_body_unread(&mut self) {
        self.keep_alive = false;
        self.body_unread = true;
    }

    /// Notes that backend `name` was tried.
    pub fn tried(&mut self, name: &str) {
        match &mut self.upstream {
            None => self.upstream = Some(name.to_string()),
            Some(list) => {
                list.push_str(", ");
                list.push_str(name);
            }
        }
    }

    /// The backends tried, for a diagnostic.
    pub fn backend(&self) -> &str {
        self.upstream.as_deref().unwrap_or("-")
    }

    /// Whether the response keeps the connection, and so what it says; not
    /// once pibl winds the connection down (`signals::winding_down`).
    pub fn persist(&mut self) -> Persist {
        self.keep_alive &= !crate::signals::winding_down();
        if self.keep_alive {
            Persist::KeepAlive {
                http10: self.minor == 0,
            }
        } else {
            Persist::Close
        }
    }

    /// Sends a response pibl makes itself and ends the exchange.  The
    /// connection closes after any refusal of the client's request: what is
    /// left of it on the wire cannot be trusted to frame the next one.
    pub fn refuse(mut self, client: &Client<'_>, status: u16) -> Exchange {
        self.keep_alive = false;
        self.end = End::ClientFault;
        self.send_error(client, status);
        self
    }

    /// `refuse` for a request whose body could not be read to its end (`e`).
    pub fn refuse_body(mut self, client: &Client<'_>, e: &io::Error) -> Exchange {
        let status = self.body_read_failed(e);
        self.refuse(client, status)
    }

    /// The status for a request body that could not be read to its end.
    /// Bar a client too slow (408), the client may still be sending the
    /// rest: the close must drain it.
    pub fn body_read_failed(&mut self, e: &io::Error) -> u16 {
        let status = client_read_status(e);
        if status != 408 {
            self.leave_body_unread();
        }
        status
    }

    /// Ends the exchange with a status pibl sends after backend failures.
    /// The client connection survives only if no request body is left
    /// unread.
    pub fn backend_failed(
        mut self,
        client: &Client<'_>,
        status: u16,
        body_pending: bool,
    ) -> Exchange {
        self.end = End::BackendFault;
        if body_pending {
            self.leave_body_unread();
        }
        self.send_error(client, status);
        self
    }

    /// Writes an error response; a client that is gone cannot be told.
    pub fn send_error(&mut self, client: &Client<'_>, status: u16) {
        self.send_error_with(client, status, &[]);
    }

    pub fn send_error_with(&mut self, client: &Client<'_>, status: u16, extra: &[(&str, &str)]) {
        let persist = self.persist();
        let mut extra = extra.to_vec();
        self.add_hsts(&mut extra);
        let response = http::error_response_with(status, persist, &extra);
        if send(client, &response).is_ok() {
            self.status = status;
            self.body_bytes = (response.len() - head_len(&response)) as u64;
        }
    }

    /// Adds Strict-Transport-Security to a response's `fields`, when the
    /// exchange is on HTTPS and `hsts` asks for it.
    pub fn add_hsts<'a>(&'a self, fields: &mut Vec<(&'a str, &'a str)>) {
        if let Some(value) = &self.hsts {
            fields.push(("Strict-Transport-Security", value));
        }
    }

    /// The client stopped reading or went away: the exchange ends there.
    pub fn client_gone(&mut self) {
        self.end = End::ClientFault;
        self.keep_alive = false;
    }
}

/// The status for a request whose head or body could not be read: a
/// client too slow (408), a body over max_body (413), or bytes that are
/// not HTTP (400).
pub fn client_read_status(e: &io::Error) -> u16 {
    if is_timeout(e) {
        408
    } else if e.kind() == io::ErrorKind::FileTooLarge {
        413
    } else {
        400
    }
}

/// "what: timed out", or "what: " and the system's word for `e`: a
/// backend's failure, for a diagnostic.
pub fn describe(what: &str, e: &io::Error) -> String {
    if is_timeout(e) {
        format!("{what}: timed out")
    } else {
        format!("{what}: {}", crate::error::describe_io(e))
    }
}

/// Writes bytes to the client.
pub fn send(client: &Client<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut out = *client.get_ref();
    out.write_all(bytes)
}

fn head_len(response: &[u8]) -> usize {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4)
}
