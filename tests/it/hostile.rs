//! Slow, greedy and malformed clients: timeouts, a slowloris attack,
//! size limits, and strict, smuggling-proof framing (RFC 9112 §6.3, §11.2).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::util::*;

#[test]
fn a_head_that_never_ends_gets_408() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("client_header_timeout = 0.5\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /whoami HTTP/1.1\r\nHo");
    let r = client.response("GET");
    assert_eq!((r.status, r.header("connection")), (408, Some("close")));
    assert!(client.is_closed());
    // A connection that sends nothing at all is closed without a word.
    let mut silent = Client::connect(proxy.addr);
    assert!(silent.is_closed());
}

#[test]
fn a_request_sent_after_a_pause_is_served() {
    // The kernel holds a connection back from accept(2) until its request
    // arrives (TCP_DEFER_ACCEPT) for one second, then queues it anyway: a
    // client that pauses longer before sending is served all the same.
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.get("/whoami").status, 200);
    assert_eq!(client.get("/whoami").status, 200, "and kept alive");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("keepalive_timeout = 0.5\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/whoami").status, 200);
    assert!(
        client.is_closed(),
        "closed after keepalive_timeout, without a response"
    );
}

#[test]
fn a_stalled_body_gets_408() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("client_body_timeout = 0.5\n")
        .start();
    for method in ["POST", "PUT"] {
        let mut client = Client::connect(proxy.addr);
        client.send(
            format!("{method} /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
                .as_bytes(),
        );
        assert_eq!(client.response(method).status, 408, "{method}");
        assert!(client.is_closed());
    }
}

/// A body whose client pauses for longer than a second, well within
/// `client_body_timeout`, is relayed whole — before a reload and after.
/// (A prefork worker's connections had inherited the one-second timeout of
/// its wait in accept(2) instead.)
#[test]
fn a_body_paused_within_client_body_timeout_is_relayed() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    options.extra = "client_body_timeout = 10\n".into();
    let proxy = options.clone().start();
    for reloaded in [false, true] {
        if reloaded {
            proxy.reload(&options);
        }
        let mut client = Client::connect(proxy.addr);
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello");
        // The pause is what is tested.
        thread::sleep(Duration::from_millis(1500));
        client.send(b"world");
        let r = client.response("POST");
        assert_eq!(
            (r.status, r.text()),
            (200, "helloworld".into()),
            "reloaded: {reloaded}"
        );
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("send_timeout = 0.5\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /big?kb=200000 HTTP/1.1\r\nHost: t\r\n\r\n");
    // The client reads nothing; pibl gives up after send_timeout, and logs.
    let log = proxy.wait_log(1);
    assert!(
        log[0].contains("\"GET /big?kb=200000 HTTP/1.1\" 200 "),
        "{}",
        log[0]
    );
}

#[test]
fn slowloris_does_not_starve_a_normal_client() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("client_header_timeout = 5\n")
        .start();
    const ATTACKERS: usize = 500;
    let mut slow: Vec<TcpStream> = (0..ATTACKERS)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // The attack: one more header byte per second on every connection,
    // for two seconds.
    for _ in 0..2 {
        thread::sleep(Duration::from_secs(1));
        for s in &mut slow {
            s.write_all(b"a").unwrap();
        }
        // A normal client is served at once all the same.
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    // And the attackers are cut off when client_header_timeout is up.
    for s in &mut slow {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
}

#[test]
fn size_limits_414_431_413() {
    let raw = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()])
        .config("max_request_line = 100\nmax_header_size = 1024\nmax_headers = 5\nmax_body = 10\n")
        .start();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(200));
    let many_fields: String = (0..6).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (long_target.into_bytes(), 414),
        (
            format!("GET / HTTP/1.1\r\nHost: t\r\n{many_fields}\r\n").into_bytes(),
            431,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "b".repeat(2000)
            )
            .into_bytes(),
            431,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
            413,
        ),
    ];
    for (request, status) in cases {
        let mut client = Client::connect(proxy.addr);
        client.send(&request);
        let r = client.response("GET");
        assert_eq!(
            r.status,
            status,
            "{}",
            String::from_utf8_lossy(&request[..60.min(request.len())])
        );
        assert!(client.is_closed());
    }
    // None reached the backend; within the limits all is well.
    assert_eq!(get(proxy.addr, "/ok").text(), "ok");
    let seen = raw.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");

    // A chunked body has no size up front: it is streamed until it passes
    // max_body, then cut off with 413 (the backend sees an unfinished body).
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()])
        .config("max_body = 10\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
    assert_eq!(
        client.response("POST").text(),
        "bytes=10 fnv1a=10d9315e924a5581\n",
        "10 bytes pass"
    );
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(client.response("POST").status, 413);
    assert!(client.is_closed());
}

/// A client that writes its whole body before it reads (as a simple one
/// does) still gets the answer when its body is refused before it is read:
/// by pibl (413 over max_body) or by a backend answering early.  pibl
/// reads and drops the rest before it closes, as nginx's lingering close.
#[test]
fn a_refused_body_is_drained_so_the_client_reads_the_answer() {
    let early = RawBackend::start(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
    );
    // Streamed (request_buffering off): the backend answers with the body
    // still coming, which pibl then drains.
    let proxy = ProxyOptions::for_addrs(vec![early.addr.to_string()])
        .config("request_buffering = false\n")
        .start();
    let limited = ProxyOptions::for_addrs(vec![early.addr.to_string()])
        .config("max_body = 1000\n")
        .start();
    // More than the socket buffers on both sides hold, so the writes
    // outlast pibl's answer.
    let body = vec![b'x'; 32 << 20];
    for (addr, status) in [(limited.addr, 413), (proxy.addr, 401)] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let written = stream.write_all(&body);
        assert!(
            written.is_ok(),
            "{status}: the body was cut off: {written:?}"
        );
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "{status}: {read:?}");
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    }
}

/// A refused request's body may still be on its way when the refusal is
/// sent: it is drained however late it comes, not met with a reset.  Here
/// the client reads the whole refusal before it sends a byte of its body.
#[test]
fn a_body_that_follows_its_refusal_is_drained() {
    let raw = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()])
        .config("max_body = 1000\n")
        .start();
    let body = vec![b'x'; 8 << 20];
    let starts = [
        (format!("Content-Length: {}\r\n\r\n", body.len()), 413),
        // An unsupported coding before chunked: 501, the chunks to follow.
        ("Transfer-Encoding: gzip, chunked\r\n\r\n".to_string(), 501),
        // A chunk that passes max_body: 413 at its size, the chunk to follow.
        ("Transfer-Encoding: chunked\r\n\r\n800\r\n".to_string(), 413),
    ];
    for (start, status) in starts {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!("POST /up HTTP/1.1\r\nHost: t\r\n{start}");
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let written = stream.write_all(&body);
        assert!(written.is_ok(), "{status}: the body met {written:?}");
    }
}

/// Requests that must be refused, never forwarded: (bytes, status).
const SMUGGLING: &[(&[u8], u16)] = &[
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-CR: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-NUL: a\0b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Ctl: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost\t: t\r\n\r\n", 400),
    (b"G<T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nBad[Name]: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400),
    (b"GET nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET http:///x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t u\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t/u\r\n\r\n", 400),
    (b"GET http://user@t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    // The absolute target's authority replaces Host, but a Host no request
    // may carry is refused all the same.
    (b"GET http://t/ HTTP/1.1\r\nHost: t u\r\n\r\n", 400),
    (b"GET http://t/ HTTP/1.1\r\nHost: t\tu\r\n\r\n", 400),
    (b"GET http://t/ HTTP/1.1\r\nHost: t/u\r\n\r\n", 400),
    (b"GET http://t/ HTTP/1.1\r\nHost: t\r\nHost: u v\r\n\r\n", 400),
    (b"GET /  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
];

#[test]
fn ambiguous_or_malformed_requests_are_refused_and_never_forwarded() {
    let raw = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    for &(request, status) in SMUGGLING {
        let mut client = Client::connect(proxy.addr);
        client.send(request);
        let r = client.response("GET");
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(request));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(client.is_closed());
    }
    assert!(
        raw.seen.lock().unwrap().is_empty(),
        "forwarded: {:?}",
        raw.seen.lock().unwrap()
    );
    assert_eq!(
        get(proxy.addr, "/").text(),
        "ok",
        "and pibl goes on serving"
    );
}

#[test]
fn bad_chunks_are_refused_and_never_reach_the_backend() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()]).start();
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloEXTRA\r\n0\r\n\r\n",
        b"fffffffffffffffffffff\r\nx\r\n",
        b"5;ext\x01=1\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut client = Client::connect(proxy.addr);
        let mut request =
            b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        client.send(&request);
        let r = client.response("POST");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert!(client.is_closed());
    }
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
}

#[test]
fn bare_lf_heads_are_accepted_and_forwarded_with_crlf() {
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line ending.
    // pibl does so in heads, which it re-writes with CRLF anyway, so the
    // backend never sees the ambiguity; it refuses bare LF in chunked
    // framing, which it does not re-read line by line the same way.
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![backends[0].addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /headers HTTP/1.1\nHost: t\nX-Lf: yes\n\n");
    let seen = client.response("GET").text();
    assert!(
        seen.starts_with("GET /headers HTTP/1.1\r\nHost: t\r\nX-Lf: yes\r\n"),
        "{seen:?}"
    );
}
