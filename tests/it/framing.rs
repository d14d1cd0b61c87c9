//! HTTP/1.1 relay semantics (RFC 9110, RFC 9112): framing in both
//! directions, bodiless responses, keep-alive by version, 100-continue,
//! pipelining, and the fields a proxy drops and adds.

use crate::util::*;

#[test]
fn chunked_response_stays_chunked_for_http11_and_is_plain_for_http10() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    let r = client.get("/chunked?n=3");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.text(),
        "chunk 1 of 3 from b1\nchunk 2 of 3 from b1\nchunk 3 of 3 from b1\n"
    );
    assert_eq!(
        client.get("/whoami").text(),
        "b1\n",
        "connection still usable"
    );

    let mut old = Client::connect(proxy.addr);
    old.send(b"GET /chunked?n=2 HTTP/1.0\r\n\r\n");
    let r = old.response("GET");
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "chunk 1 of 2 from b1\nchunk 2 of 2 from b1\n");
}

#[test]
fn close_delimited_body_is_rechunked_so_the_connection_survives() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    let r = client.get("/close");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "closing after this, from b1\n");
    assert_eq!(client.get("/whoami").status, 200);
}

#[test]
fn request_bodies_by_length_and_chunked() {
    let backends = Backend::start_many(1);
    // Held whole (request_buffering, the default), a chunked body goes on
    // with its length; streamed, re-chunked.
    for (buffered, framing) in [
        (true, "Content-Length: 11"),
        (false, "Transfer-Encoding: chunked"),
    ] {
        let proxy = ProxyOptions::new(&backends)
            .config(&format!("request_buffering = {buffered}\n"))
            .start();
        let mut client = Client::connect(proxy.addr);
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
        let r = client.response("POST");
        assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
        // Extensions and trailers from the client do not reach the
        // backend; the body does.
        client.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n");
        let r = client.response("PUT");
        assert_eq!(r.text(), "hello world");
        client.send(b"POST /headers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        let seen = client.response("POST").text();
        assert!(seen.contains(&format!("{framing}\r\n")), "{seen}");
        let other = if buffered {
            "Transfer-Encoding"
        } else {
            "Content-Length"
        };
        assert!(!seen.contains(other), "one framing only: {seen}");
        assert!(!seen.contains("X-Trailer"), "{seen}");
    }
}

#[test]
fn head_204_and_304_carry_no_body() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(b"HEAD /big?kb=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = client.response("HEAD");
    assert_eq!((r.status, r.header("content-length")), (200, Some("5120")));
    for code in [204, 304] {
        let r = client.get(&format!("/status?code={code}"));
        assert_eq!(r.status, code);
        assert!(r.body.is_empty());
    }
    // Had a body byte slipped through, this answer would be misread.
    assert_eq!(client.get("/whoami").text(), "b1\n");
}

#[test]
fn expect_100_continue() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"POST /headers HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    let interim = client.head();
    assert_eq!(
        interim.status, 100,
        "pibl asks for the body before it is sent"
    );
    client.send(b"body");
    let r = client.response("POST");
    assert_eq!(r.status, 200);
    assert!(
        !r.text().to_ascii_lowercase().contains("expect"),
        "{}",
        r.text()
    );
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(client.head().status, 100);
    client.send(b"ok");
    assert_eq!(client.response("POST").text(), "ok");
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(client.response("POST").status, 417);
}

#[test]
fn http10_keep_alive_only_when_asked() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /whoami HTTP/1.0\r\n\r\n");
    let r = client.response("GET");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(client.is_closed());

    let mut client = Client::connect(proxy.addr);
    for _ in 0..3 {
        client.send(b"GET /whoami HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = client.response("GET");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.text(), "b1\n");
    }
    client.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(client.response("GET").header("connection"), Some("close"));
    assert!(client.is_closed());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET /slow?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /chunked?n=2 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          HEAD /big?kb=1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let slow = client.response("GET");
    assert!(slow.text().starts_with("slow answer"), "{}", slow.text());
    let second = client.response("GET");
    assert!(second.text().starts_with("chunk 1 of 2"));
    assert_eq!(client.response("POST").text(), "abc");
    assert_eq!(
        client.response("HEAD").header("content-length"),
        Some("1024")
    );
    let last = client.response("GET");
    // Five requests over three backends: the fifth goes where the second did.
    assert_eq!(
        last.text(),
        format!("{}\n", second.header("x-backend").unwrap())
    );
    assert_ne!(slow.header("x-backend"), second.header("x-backend"));
}

#[test]
fn hop_by_hop_fields_dropped_and_proxy_fields_added_to_requests() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Private\r\n\
          X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n\
          Upgrade: websocket\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
          X-Forwarded-For: 192.0.2.7\r\nVia: 1.0 edge\r\nX-Forwarded-Proto: https\r\nAccept: text/plain\r\n\r\n",
    );
    let seen = client.response("GET").text();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines,
        [
            "GET /headers HTTP/1.1",
            "Host: app.example",
            "Accept: text/plain",
            "X-Forwarded-For: 192.0.2.7, 127.0.0.1",
            "X-Forwarded-Proto: http",
            "Via: 1.0 edge, 1.1 pibl",
        ]
    );
    // Via names the version a request came in.
    let mut old = Client::connect(proxy.addr);
    old.send(b"GET /headers HTTP/1.0\r\nHost: app.example\r\n\r\n");
    let seen = old.response("GET").text();
    assert!(seen.lines().any(|l| l == "Via: 1.0 pibl"), "{seen}");
}

#[test]
fn hop_by_hop_fields_dropped_from_responses() {
    let raw = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=9\r\n\
          Upgrade: h2c\r\nTrailer: X-T\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
    );
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    let r = client.get("/");
    let names: Vec<&str> = r.fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["X-Kept", "Via", "Content-Length"]);
    assert_eq!(
        (r.header("via"), r.text().as_str()),
        (Some("1.1 pibl"), "ok")
    );
    // The backend closed its side; the client's connection is kept.
    assert_eq!(client.get("/").text(), "ok");

    // Via names the version a response came in.
    let old = RawBackend::start(b"HTTP/1.0 200 OK\r\nVia: 1.1 app\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![old.addr.to_string()]).start();
    assert_eq!(
        get(proxy.addr, "/").header("via"),
        Some("1.1 app, 1.0 pibl")
    );
}

#[test]
fn absolute_form_target_becomes_origin_form_with_its_host() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET http://site.example:81/headers?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    let seen = client.response("GET").text();
    assert!(seen.starts_with("GET /headers?x=1 HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nHost: site.example:81\r\n") && !seen.contains("other"),
        "{seen}"
    );
    client.send(b"GET HTTPS://secure.example/headers?q HTTP/1.1\r\nHost: other\r\n\r\n");
    let r = client.response("GET");
    let seen = r.text();
    assert!(seen.starts_with("GET /headers?q HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\nHost: secure.example\r\n"), "{seen}");
    client.send(b"GET ftp://site.example/ HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(client.response("GET").status, 400);
}

#[test]
fn bad_requests_get_4xx_and_others_keep_being_served() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let cases: [(&[u8], u16); 9] = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /whoami#top HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://a/whoami#top HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    ];
    for (request, status) in cases {
        let mut client = Client::connect(proxy.addr);
        client.send(request);
        let r = client.response("GET");
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(request));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(client.is_closed());
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    let mut client = Client::connect(proxy.addr);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40_000)
    );
    client.send(huge.as_bytes());
    assert_eq!(client.response("GET").status, 431);
}

#[test]
fn backend_down_is_502_naming_no_address() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let proxy = ProxyOptions::for_addrs(vec![addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    let r = client.get("/");
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
    assert_eq!(
        client.get("/").status,
        502,
        "the client connection survives"
    );
}

#[test]
fn interim_1xx_responses_are_relayed_without_a_body() {
    let raw = RawBackend::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let hints = client.head();
    assert_eq!(
        (hints.status, hints.header("link")),
        (103, Some("</style.css>; rel=preload"))
    );
    let r = client.response("GET");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // An HTTP/1.0 client, which knows no 1xx, gets the final response only.
    let mut old = Client::connect(proxy.addr);
    old.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(old.head().status, 200);
}

/// RFC 9110 §8.6: a 1xx or a 204 carries no Content-Length, whatever the
/// backend sent (a client that believed it would wait for, or swallow, a
/// body that never comes); a 304's, the length of the representation, is
/// kept.
#[test]
fn no_content_length_on_1xx_or_204() {
    let raw = RawBackend::start_answering(|head| {
        if head.starts_with("GET /304 ") {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 102 Processing\r\nContent-Length: 0\r\n\r\n\
              HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"
                .to_vec()
        }
    });
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"DELETE /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let interim = client.head();
    assert_eq!(
        (interim.status, interim.header("content-length")),
        (102, None)
    );
    let done = client.response("DELETE");
    assert_eq!((done.status, done.header("content-length")), (204, None));
    let r = client.get("/304");
    assert_eq!((r.status, r.header("content-length")), (304, Some("3")));
}

/// RFC 9110 §2.5: a later minor version of HTTP/1 is served as HTTP/1.1
/// (kept alive, answered in 1.1), not refused.
#[test]
fn a_later_http1_minor_version_is_served_as_http11() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /headers HTTP/1.4\r\nHost: a\r\n\r\n");
    let r = client.response("GET");
    assert_eq!((r.status, r.header("connection")), (200, None));
    assert!(
        r.text().starts_with("GET /headers HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    assert_eq!(client.get("/whoami").text(), "b1\n");
}
