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
    // curl decodes what it asked for, byte for byte.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--compressed", "-D", "/dev/stderr"])
        .arg(format!("http://{}/p", proxy.addr))
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&curl.stderr)
            .to_ascii_lowercase()
            .contains("content-encoding: ")
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), body);
    // The access log counts the bytes sent: the coded ones.
    let line = &proxy.wait_log(4)[0];
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

fn pibl_cache(proxy: &Proxy, args: &[&str]) -> String {
    let out = std::process::Command::new(PIBL)
        .arg("cache")
        .args(args)
        .current_dir(proxy.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cache_keeps_each_coding_once_and_sends_it_as_it_is() {
    let body = page(400);
    let b = backend("text/html", "Cache-Control: max-age=60\r\n", body.clone());
    let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
        .config(ON)
        .args(&["--ttl", "60"])
        .start();
    // The miss is compressed on the fly; the cache keeps the identity.
    let r = request(&proxy, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), body);
    // Then each coding is a hit, with its exact length.
    for (accept, coding) in [("gzip", Some("gzip")), ("br", Some("br")), ("", None)] {
        for _ in 0..2 {
            let fields = format!("Accept-Encoding: {accept}\r\n");
            let r = request(&proxy, if accept.is_empty() { "" } else { &fields });
            assert_eq!(r.header("x-cache"), Some("HIT"), "{accept}");
            assert_eq!(r.header("content-encoding"), coding);
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str())
            );
            assert_eq!(r.header("vary"), Some("Accept-Encoding"));
            assert_eq!(r.header("x-pibl-source"), None);
            match coding {
                Some(c) => {
                    assert!(r.body.len() * 4 < body.len(), "{c}: {} bytes", r.body.len());
                    assert_eq!(decode(c, &r.body), body);
                    assert_eq!(r.header("etag"), Some("W/\"v1\""));
                    assert_eq!(r.header("accept-ranges"), None);
                }
                None => {
                    assert_eq!(r.text(), body);
                    assert_eq!(r.header("etag"), Some("\"v1\""));
                    assert_eq!(r.header("accept-ranges"), Some("bytes"));
                }
            }
        }
    }
    // Revalidation with the weak tag a coded copy carries, or the strong one.
    for (accept, tag) in [
        ("gzip", "W/\"v1\""),
        ("br", "W/\"v1\""),
        ("identity", "\"v1\""),
    ] {
        let fields = format!("Accept-Encoding: {accept}\r\nIf-None-Match: {tag}\r\n");
        let r = request(&proxy, &fields);
        assert_eq!(r.status, 304, "{fields}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{fields}");
    }
    // A range is cut from the identity.
    let r = request(&proxy, "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n");
    assert_eq!((r.status, r.header("content-encoding")), (206, None));
    assert_eq!(r.text(), body[..10]);
    assert_eq!(
        b.seen.lock().unwrap().len(),
        1,
        "one request reached the backend"
    );
    // Every representation is listed, and purged with its URL.
    let listing = pibl_cache(&proxy, &["ls"]);
    for key in ["http://t/p", "http://t/p gzip", "http://t/p br"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("  {key}"))),
            "{listing}"
        );
    }
    assert_eq!(
        pibl_cache(&proxy, &["purge", "http://t/p"]),
        "3 entries removed (the URL's coded representations with it)\n"
    );
    let r = request(&proxy, "Accept-Encoding: br\r\n");
    assert_eq!(
        (r.header("x-cache"), r.header("content-encoding")),
        (Some("MISS"), Some("br"))
    );
    assert_eq!(b.seen.lock().unwrap().len(), 2);
}

/// Compressed by `coding`, as a backend would send it.
fn compressed(coding: &str, text: &str) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(text.as_bytes()).unwrap();
            e.finish().unwrap()
        }
        _ => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 20);
            e.write_all(text.as_bytes()).unwrap();
            drop(e);
            out
        }
    }
}

/// A backend answering with `body` said to be in `coding`.
fn coded_backend(coding: &'static str, cache: &'static str, body: Vec<u8>) -> RawBackend {
    RawBackend::start_answering(move |_| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: {coding}\r\n\
             Content-Length: {}\r\nETag: \"c1\"\r\n{cache}\r\n",
            body.len()
        );
        [head.as_bytes(), &body].concat()
    })
}

#[test]
fn a_coded_response_is_decoded_for_a_client_that_does_not_take_it() {
    let text = page(300);
    for coding in ["gzip", "br"] {
        let coded = compressed(coding, &text);
        for cache in [
            "Cache-Control: no-store\r\n",
            "Cache-Control: max-age=60\r\n",
        ] {
            let b = coded_backend(coding, cache, coded.clone());
            let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
                .config(ON)
                .args(&["--ttl", "60"])
                .start();
            for _ in 0..2 {
                // As it came for a client that takes it…
                let r = request(&proxy, &format!("Accept-Encoding: {coding}\r\n"));
                assert_eq!(r.header("content-encoding"), Some(coding));
                assert_eq!(r.body, coded, "{coding} {cache}");
                assert_eq!(r.header("etag"), Some("\"c1\""));
                // …decoded for one that does not.
                let r = request(&proxy, "");
                assert_eq!(r.status, 200);
                assert_eq!(r.header("content-encoding"), None, "{coding} {cache}");
                assert_eq!(r.header("content-length"), None);
                assert_eq!(r.header("transfer-encoding"), Some("chunked"));
                assert_eq!(r.header("etag"), Some("W/\"c1\""));
                assert_eq!(r.header("vary"), Some("Accept-Encoding"));
                assert_eq!(r.text(), text, "{coding} {cache}");
            }
            let expected = if cache.contains("no-store") { 4 } else { 1 };
            assert_eq!(b.seen.lock().unwrap().len(), expected, "{coding} {cache}");
        }
    }
    // An HTTP/1.0 client gets the decoded body to the close.
    let b = coded_backend("gzip", "", compressed("gzip", &text));
    let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
        .config(ON)
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /p HTTP/1.0\r\n\r\n");
    let r = client.response("GET");
    assert_eq!(
        (r.header("content-encoding"), r.header("connection")),
        (None, Some("close"))
    );
    assert_eq!(r.text(), text);
}

#[test]
fn a_body_that_is_not_its_coding_is_relayed_or_cut_short() {
    let lie = b"this is not gzip at all, whatever the head says".repeat(20);
    for cache in [
        "Cache-Control: no-store\r\n",
        "Cache-Control: max-age=60\r\n",
    ] {
        let b = coded_backend("gzip", cache, lie.clone());
        let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
            .config(ON)
            .args(&["--ttl", "60"])
            .start();
        // Relayed as it came to a client that takes gzip: pibl has no
        // need to look.
        let r = request(&proxy, "Accept-Encoding: gzip\r\n");
        assert_eq!((r.status, &r.body), (200, &lie));
        // Cut short for one that does not: the chunks never end.
        let mut client = Client::connect(proxy.addr);
        client.send(b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n");
        let head = client.head();
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        let mut rest = Vec::new();
        let _ = client.reader.read_to_end(&mut rest);
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "{cache}: the body was ended as whole"
        );
        let said = proxy.wait_stderr("is not valid gzip");
        assert!(said.contains("response cut short"), "{said}");
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

/// FNV-1a and length of what `curl` with `args` writes, read as it comes.
fn curl_digest(args: &[&str], url: &str) -> (u64, u64) {
    let mut curl = std::process::Command::new("curl")
        .args(["-sS"])
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = curl.stdout.take().unwrap();
    let (mut hash, mut len) = (0xcbf2_9ce4_8422_2325u64, 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash = fnv1a(hash, &buf[..n]);
        len += n as u64;
    }
    assert!(curl.wait().unwrap().success());
    (hash, len)
}

#[test]
fn a_256_mib_page_is_compressed_as_it_streams_in_flat_memory() {
    const SIZE: u64 = 256 << 20;
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends).config(ON).start();
    let url = format!("http://{}/page?kb={}", proxy.addr, SIZE >> 10);
    let sampler = PssSampler::start(proxy.pid());
    // gzip: brotli's encoder is generic code, built here without
    // optimisation, and would take a minute over 256 MiB.
    let coded = curl_digest(&["--compressed", "-H", "Accept-Encoding: gzip"], &url);
    let (peak, samples) = sampler.finish();
    assert!(samples > 0, "no sample saw the child");
    assert!(peak < 48 * 1024, "proxy PSS peaked at {peak} KiB");
    let plain = curl_digest(&[], &url);
    assert_eq!(coded, plain);
    assert_eq!(plain.1, SIZE);
    // The log says what went on the wire: a fraction of it.
    let line = &proxy.wait_log(2)[0];
    let sent: u64 = line
        .split(" 200 ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent < SIZE / 3, "{line}");
}
