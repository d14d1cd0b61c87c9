//! Compression on the fly (`[compress]`): negotiated codings decoded by
//! real decoders, the headers that go with them, what is never coded, and
//! a stream whose first event reaches the client while the backend waits.

use std::io::{BufRead, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;

use crate::util::*;

const ON: &str = "[compress]\nenabled = true\n";

/// A page of `n` lines, as a backend would send HTML.
fn page(n: usize) -> String {
    (0..n)
        .map(|i| format!("<p>line {i} of the page</p>\n"))
        .collect()
}

/// A backend answering every request with `body`, typed `content_type`,
/// with `extra` fields.
fn backend(content_type: &'static str, extra: &'static str, body: String) -> RawBackend {
    RawBackend::start_answering(move |_| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             ETag: \"v1\"\r\nAccept-Ranges: bytes\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

fn request(proxy: &Proxy, fields: &str) -> Response {
    let mut client = Client::connect(proxy.addr);
    client.send(format!("GET /p HTTP/1.1\r\nHost: t\r\n{fields}\r\n").as_bytes());
    client.response("GET")
}

fn decode(coding: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_string(&mut out),
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_string(&mut out),
        other => panic!("coding {other}"),
    }
    .unwrap();
    out
}

#[test]
fn gzip_and_br_as_the_client_prefers_with_their_headers() {
    let body = page(200);
    let b = backend("text/html; charset=utf-8", "", body.clone());
    let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
        .config(ON)
        .start();
    for (accept, coding) in [
        ("gzip, deflate, br", "br"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("x-gzip", "gzip"),
    ] {
        let r = request(&proxy, &format!("Accept-Encoding: {accept}\r\n"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.header("accept-ranges"), None);
        assert_eq!(r.header("etag"), Some("W/\"v1\""));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.body.len() * 4 < body.len(), "{} bytes", r.body.len());
        assert_eq!(decode(coding, &r.body), body);
    }
    // The access log counts the bytes sent: the coded ones.
    let line = &proxy.wait_log(3)[0];
    assert!(!line.contains(&format!(" 200 {} ", body.len())), "{line}");
}

#[test]
fn what_goes_as_it_is() {
    let body = page(200);
    let html = backend("text/html", "", body.clone());
    let png = backend("image/png", "", body.clone());
    let kept = backend("text/html", "Cache-Control: no-transform\r\n", body.clone());
    let gzip = "Accept-Encoding: gzip\r\n";
    let start = |b: &RawBackend| {
        ProxyOptions::for_addrs(vec![b.addr.to_string()])
            .config(ON)
            .start()
    };
    let html_proxy = start(&html);
    for fields in [
        "",
        "Accept-Encoding: identity\r\n",
        "Accept-Encoding: gzip;q=0, br;q=0\r\n",
        "Accept-Encoding: gzip;q=5\r\n",
    ] {
        let r = request(&html_proxy, fields);
        assert_eq!(r.header("content-encoding"), None, "{fields}");
        assert_eq!(r.text(), body);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{fields}");
    }
    // A range of the identity body, not of a coded one.
    let r = request(&html_proxy, &format!("{gzip}Range: bytes=0-9\r\n"));
    assert_eq!(r.header("content-encoding"), None);
    for (b, vary) in [(&png, None), (&kept, None)] {
        let proxy = start(b);
        let r = request(&proxy, gzip);
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(r.header("vary"), vary);
        assert_eq!(r.text(), body);
    }
    // Off unless turned on.
    let off = ProxyOptions::for_addrs(vec![html.addr.to_string()]).start();
    let r = request(&off, gzip);
    assert_eq!(
        (r.header("content-encoding"), r.header("vary")),
        (None, None)
    );
}

#[test]
fn a_response_the_cache_stores_is_sent_as_it_is() {
    let body = page(200);
    let b = backend("text/html", "Cache-Control: max-age=60\r\n", body.clone());
    let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
        .config(ON)
        .args(&["--ttl", "60"])
        .start();
    for status in ["MISS", "HIT"] {
        let r = request(&proxy, "Accept-Encoding: gzip\r\n");
        assert_eq!(r.header("x-cache"), Some(status));
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(r.text(), body);
    }
}

/// A backend that sends one event of a stream, then waits until told
/// (at most PATIENCE) before the next and the end.
fn pausing_stream(go: mpsc::Receiver<()>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        read_head(&mut s);
        let event = |n: usize| {
            let data = format!("data: event {n} {}\n\n", "x".repeat(300));
            format!("{:x}\r\n{data}\r\n", data.len())
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                    Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.write_all(format!("{head}{}", event(1)).as_bytes())
            .unwrap();
        let _ = go.recv_timeout(PATIENCE);
        s.write_all(format!("{}0\r\n\r\n", event(2)).as_bytes())
            .unwrap();
    });
    addr
}

#[test]
fn a_stream_is_flushed_when_the_backend_pauses() {
    let (go, wait) = mpsc::channel();
    let addr = pausing_stream(wait);
    let proxy = ProxyOptions::for_addrs(vec![addr.to_string()])
        .config(&format!("{ON}types = [\"text/event-stream\"]\n"))
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /events HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let head = client.head();
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    // Decode chunk by chunk what has come: the first event, whole, before
    // the backend sends the second.
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    while !String::from_utf8_lossy(decoder.get_ref()).contains("event 1") {
        let mut size = String::new();
        client.reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
        assert!(n > 0, "the stream ended before its first event");
        let mut chunk = vec![0u8; n + 2];
        client.reader.read_exact(&mut chunk).unwrap();
        decoder.write_all(&chunk[..n]).unwrap();
        decoder.flush().unwrap();
    }
    assert!(!String::from_utf8_lossy(decoder.get_ref()).contains("event 2"));
    go.send(()).unwrap();
    let rest = client.read_chunked();
    decoder.write_all(&rest).unwrap();
    let all = decoder.finish().unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.ends_with(&format!("data: event 2 {}\n\n", "x".repeat(300))),
        "{text}"
    );
}
