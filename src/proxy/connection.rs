//! One client connection, from its first request to its close, whatever
//! runs it: a forked child, a prefork worker, or a thread.
//!
//! Requests on the connection are served in order (keep-alive and
//! pipelining), each logged, until the client closes, idles out, an
//! exchange leaves the connection unusable, or pibl is asked to stop, which
//! takes effect between requests only: a request once begun is finished.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process;
use std::time::{Duration, Instant};

use crate::diag;
use crate::http;
use crate::http::wire::{Reader, Socket};
use crate::log::{self, AccessLog, Entry};
use crate::proxy::exchange::{self, Client, Exchange};
use crate::proxy::forward;
use crate::proxy::pool::Pool;
use crate::proxy::request::{self, Incoming, Next, Request};
use crate::proxy::{BUFFER_SIZE, Context, End};
use crate::signals::{self, Idle, StopWatch};
use crate::stats::{self, CacheAnswer, Seat, State};
use crate::tls::{Stream, Tls};
use std::sync::Arc;

/// How long a connection idle as pibl stops (or as its prefork worker is
/// retired by a reload) is given to send its next request: one accepted
/// just then has its first on the way, and a busy client its next.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// A lingering close (`linger`) reads for at most this long in all, and
/// gives up after this long without a byte: nginx's lingering_time and
/// lingering_timeout.
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes a connection whose client may still be sending — a body pibl
/// refused or did not read, requests it will not answer — as nginx's
/// lingering close does: stops sending, and reads and drops what comes
/// until the client closes too.  Closed at once, with bytes unread, the
/// connection would be reset, and a client still writing its body would
/// get the reset instead of the answer it has yet to read.
fn linger(stream: Stream<'_>) {
    stream.close_notify();
    let stream = stream.socket();
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut dropped = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !signals::wait_readable(stream.as_fd(), left.min(LINGER_TIMEOUT)) {
            return;
        }
        match io::Read::read(&mut &*stream, &mut dropped) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What a client that sends plain HTTP to the HTTPS port is told.
const PLAIN_HTTP_ON_TLS_PORT: &str =
    "400 Bad Request: this port speaks HTTPS; the plain HTTP request was sent to the HTTPS port.\n";

/// Which listener a connection came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Plain = 0,
    Tls = 1,
}

/// The first byte a client sends, waited for until `deadline` and left
/// unread; `None` if it closes or sends nothing by then.
fn first_byte(stream: &TcpStream, deadline: Instant) -> Option<u8> {
    let left = deadline.saturating_duration_since(Instant::now());
    if !signals::wait_readable(stream.as_fd(), left) {
        return None;
    }
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// A plain-HTTP request answered with a 308 to the same target on the
/// HTTPS port (`redirect_http`), as nginx's `return 308 https://...`.
fn redirect_to_https(client: &Client<'_>, incoming: Incoming, port: Option<u16>) -> Exchange {
    let Incoming {
        head, target, ex, ..
    } = incoming;
    let mut ex = ex;
    if head.method != "GET" && head.method != "HEAD" && http::announces_body(&head) {
        ex.leave_body_unread();
    }
    let local = client.get_ref().socket().local_addr().map(|a| a.ip());
    let host = http::value(&head.fields, "host")
        .map(|h| strip_port(h).to_string())
        .or_else(|| {
            local.ok().map(|ip| match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            })
        })
        .unwrap_or_else(|| "localhost".into());
    let location = match port {
        Some(443) | None => format!("https://{host}{target}"),
        Some(p) => format!("https://{host}:{p}{target}"),
    };
    ex.send_error_with(client, 308, &[("Location", &location)]);
    ex
}

/// A Host field's host, without its port.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

fn say_log_unopened(ctx: &Context, e: &io::Error) {
    diag!(
        "cannot open log file {}: {}",
        ctx.config.log_file.display(),
        crate::error::describe_io(e)
    );
}

/// What serving connections needs beyond the context, kept by whatever
/// serves them: a prefork worker keeps its backend connections from one
/// client to the next.
pub struct Worker {
    log: Option<AccessLog>,
    pool: Pool,
    /// getpid(2) once, not once per log line.
    pid: u32,
    /// Its slot on the status page's scoreboard.
    _seat: Seat,
}

impl Worker {
    /// A worker.  A log file it cannot open is said, and its lines go to
    /// standard output alone — unless pibl is out of descriptors or
    /// memory, which passes: that is the caller's to wait out.
    pub fn open(ctx: &Context) -> io::Result<Worker> {
        let log = match AccessLog::open(&ctx.config.log_file, ctx.config.syslog.as_ref()) {
            Ok(log) => Some(log.buffered(ctx.config.log_buffer, ctx.config.log_flush)),
            Err(e) if crate::error::is_out_of_resources(&e) => return Err(e),
            Err(e) => {
                say_log_unopened(ctx, &e);
                None
            }
        };
        Ok(Worker::with_log(ctx, log))
    }

    /// A worker even when short of descriptors: the log file unopened is
    /// said, and its lines go to standard output alone.
    pub fn new(ctx: &Context) -> Worker {
        Worker::open(ctx).unwrap_or_else(|e| {
            say_log_unopened(ctx, &e);
            Worker::with_log(ctx, None)
        })
    }

    fn with_log(ctx: &Context, log: Option<AccessLog>) -> Worker {
        Worker {
            log,
            pool: Pool::new(ctx.balancer.len(), BUFFER_SIZE),
            pid: process::id(),
            _seat: Seat::claim(State::Idle),
        }
    }

    /// Serves the connection `stream`, accepted on a `port` of that kind,
    /// until it is done; returns the worst way an exchange on it ended.
    pub fn serve(
        &mut self,
        stream: &TcpStream,
        port: Port,
        peer: SocketAddr,
        ctx: &Context,
        stop: StopWatch,
    ) -> End {
        stats::count_connection();
        stats::set_connection(&peer.to_string());
        let end = match (port, &ctx.tls_server) {
            (Port::Tls, Some(config)) => {
                stats::set_state(State::Handshake);
                self.serve_tls(stream, config, peer, ctx, stop)
            }
            _ => self.serve_stream(Stream::Plain(stream), peer, ctx, stop),
        };
        stats::set_state(State::Idle);
        end
    }

    /// Serves an HTTPS connection: its handshake, within the time a request
    /// head may take, then its requests as on plain HTTP.  A handshake
    /// that fails or times out ends the connection without a word in the
    /// access log (there was no request), as with nginx.
    fn serve_tls(
        &mut self,
        stream: &TcpStream,
        config: &Arc<rustls::ServerConfig>,
        peer: SocketAddr,
        ctx: &Context,
        stop: StopWatch,
    ) -> End {
        let deadline = Instant::now() + ctx.config.timeouts.client_header;
        match first_byte(stream, deadline) {
            Some(b) if b.is_ascii_alphabetic() => {
                return self.refuse_plain_http(stream, peer, ctx);
            }
            Some(_) => {}
            None => return End::ClientFault,
        }
        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
            return End::ClientFault;
        };
        // The relay and rustls both need the socket; a second descriptor
        // for it costs a dup(2), once per connection.
        let Ok(sock) = stream.try_clone() else {
            return End::ClientFault;
        };
        let tls = Tls::new(conn, sock);
        if tls.handshake(deadline).is_err() {
            return End::ClientFault;
        }
        let end = self.serve_stream(Stream::Tls(&tls), peer, ctx, stop);
        tls.close_notify();
        end
    }

    /// Plain HTTP sent to the HTTPS port: its head is read, and answered
    /// with a 400 that says so in plain words (nginx's 497 case), and the
    /// connection closed.
    fn refuse_plain_http(&mut self, stream: &TcpStream, peer: SocketAddr, ctx: &Context) -> End {
        let mut reader = Reader::with_capacity(Stream::Plain(stream), BUFFER_SIZE);
        let mut ex = match request::read(&mut reader, ctx) {
            Next::Closed => return End::ClientFault,
            Next::Refused(ex) => ex,
            Next::Request(incoming) => {
                let mut ex = incoming.ex;
                let text = PLAIN_HTTP_ON_TLS_PORT;
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\nServer: pibl\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                if exchange::send(&reader, response.as_bytes()).is_ok() {
                    ex.status = 400;
                    ex.body_bytes = text.len() as u64;
                }
                ex.end = End::ClientFault;
                ex
            }
        };
        ex.keep_alive = false;
        self.record(peer, &ex);
        linger(Stream::Plain(stream));
        End::ClientFault
    }

    /// Serves requests on `stream` until the connection is done.
    fn serve_stream(
        &mut self,
        stream: Stream<'_>,
        peer: SocketAddr,
        ctx: &Context,
        stop: StopWatch,
    ) -> End {
        // TCP_NODELAY and the socket's timeouts come from the listener
        // (`set_inherited_options`).
        let timeouts = &ctx.config.timeouts;
        let mut reader = Reader::with_capacity(stream, BUFFER_SIZE);
        let mut worst = End::Served;
        // The first request is awaited as long as a head may take; later
        // ones as long as a keep-alive connection may idle (as nginx).
        let mut idle_timeout = timeouts.client_header;
        let mut first = true;
        loop {
            // The first request is usually there already, the kernel
            // having queued the connection once it came (TCP_DEFER_ACCEPT,
            // `listener::bind`): one recv(2) then, not a ppoll(2) and a recv.
            stats::set_state(if first {
                State::Reading
            } else {
                State::KeepAlive
            });
            let arrived = first && reader.buffered().is_empty() && reader.fill_now().is_ok();
            if reader.buffered().is_empty() && !arrived {
                match self.wait_for_request(stream, idle_timeout, stop) {
                    Idle::Ready => {}
                    // A client may be sending its next request just as pibl
                    // stops: closing at once would meet it on its way, and
                    // the client would see a reset, not an answer (the race
                    // of RFC 9112 §9.5).  It gets the grace to send it, and
                    // an answer with `Connection: close`; an idle one is
                    // closed after the grace.
                    Idle::Stop if signals::wait_readable(stream.fd(), STOP_GRACE) => {}
                    _ => break,
                }
            }
            first = false;
            idle_timeout = timeouts.keepalive;
            let Some(ex) = self.exchange(&mut reader, peer, ctx) else {
                break;
            };
            self.record(peer, &ex);
            worst = worst.max(ex.end);
            if !ex.keep_alive {
                let unread = ex.body_unread
                    || !reader.buffered().is_empty()
                    || (ex.end == End::ClientFault
                        && signals::wait_readable(stream.fd(), Duration::ZERO));
                if unread {
                    stats::set_state(State::Closing);
                    linger(stream);
                }
                break;
            }
            // Told to stop meanwhile, the connection goes on to the wait
            // for its next request, which says so at once and gives the
            // client the grace to send it (a pipelined one is there
            // already); the answer says `Connection: close`.
        }
        worst
    }

    /// Serves one request from `reader`, or refuses it.  `None` when the
    /// client closed (or idled out) cleanly between requests.
    fn exchange(
        &mut self,
        reader: &mut Client<'_>,
        peer: SocketAddr,
        ctx: &Context,
    ) -> Option<Exchange> {
        let incoming = match request::read(reader, ctx) {
            Next::Closed => return None,
            Next::Refused(ex) => return Some(ex),
            Next::Request(incoming) => incoming,
        };
        if let Some(tls) = &ctx.config.tls
            && tls.redirect_http
            && incoming.ex.tls.is_none()
        {
            return Some(redirect_to_https(reader, incoming, ctx.https_port));
        }
        let Incoming {
            head,
            target,
            framing,
            ex,
        } = incoming;
        stats::set_request(&ex.request_line);
        stats::set_state(State::Backend);
        let req = Request {
            head: &head,
            target: &target,
            framing,
            peer: peer.ip(),
        };
        Some(forward::forward(reader, &req, ctx, &mut self.pool, ex))
    }

    /// Waits for the next request as `signals::wait_idle` does, writing the
    /// access log's held lines when they fall due meanwhile.
    fn wait_for_request(&mut self, stream: Stream<'_>, timeout: Duration, stop: StopWatch) -> Idle {
        if stream.pending() {
            return Idle::Ready;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            match self.log_due() {
                Some(due) if due < deadline => {
                    let wait = due.saturating_duration_since(now);
                    match signals::wait_idle(stream.fd(), wait, stop) {
                        Idle::TimedOut => self.flush_log(),
                        other => return other,
                    }
                }
                _ => {
                    let wait = deadline.saturating_duration_since(now);
                    return signals::wait_idle(stream.fd(), wait, stop);
                }
            }
        }
    }

    /// When the access log's held lines must be written, if any are held.
    pub fn log_due(&self) -> Option<Instant> {
        self.log.as_ref().and_then(AccessLog::due)
    }

    /// Writes the access log's held lines.
    pub fn flush_log(&mut self) {
        if let Some(log) = &mut self.log {
            log::report(log.flush());
        }
    }

    fn record(&mut self, peer: SocketAddr, ex: &Exchange) {
        // SIGUSR1 (log rotation) reaches a child or worker as a flag; the
        // line goes to whatever file has the name now.
        if signals::take(&signals::GOT_SIGUSR1) {
            log::reopen_all();
        }
        stats::count_exchange(
            ex.status,
            ex.bytes_in,
            ex.body_bytes,
            ex.cache.map(cache_answer),
        );
        let line = log::format_line(&Entry {
            client: peer.ip(),
            time: ex.time,
            request: &ex.request_line,
            status: ex.status,
            body_bytes: ex.body_bytes,
            referer: ex.referer.as_deref(),
            user_agent: ex.user_agent.as_deref(),
            upstream: ex.upstream.as_deref(),
            duration: ex.started.elapsed(),
            pid: self.pid,
            cache: ex.cache.map(|c| c.as_str()),
            tls: ex.tls,
        });
        match &mut self.log {
            Some(log) => {
                log::report(log.write(&line));
            }
            None => print!("{line}"),
        }
    }
}

/// What the cache did, as the status page counts it.
fn cache_answer(status: crate::cache::Status) -> CacheAnswer {
    use crate::cache::Status;
    match status {
        Status::Hit => CacheAnswer::Hit,
        Status::Miss => CacheAnswer::Miss,
        Status::Expired => CacheAnswer::Expired,
        Status::Revalidated => CacheAnswer::Revalidated,
        Status::Bypass => CacheAnswer::Bypass,
    }
}
