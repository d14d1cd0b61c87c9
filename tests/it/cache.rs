//! The disk cache: hits reach no backend; TTL and the origin's lifetimes;
//! what is never stored; Vary; invalidation; persistence across a crash;
//! corrupt and half-written entries.

use std::fs;
use std::path::PathBuf;

use crate::util::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nhello";

fn cached(backend: &RawBackend, ttl: u64) -> Proxy {
    ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config(&format!("[cache]\nttl = {ttl}\n"))
        .start()
}

fn hits(backend: &RawBackend) -> usize {
    backend.seen.lock().unwrap().len()
}

/// Waits until `n` entries are on disk: an entry is committed after the
/// last byte of its body has gone to the client, so a request on another
/// connection may come first.
fn wait_entries(dir: &TempDir, n: usize) {
    wait_until(&format!("{n} cache entries"), || entries(dir).len() == n);
}

/// The entries in the cache directory of the proxy run in `proxy_dir`.
fn entries(proxy_dir: &TempDir) -> Vec<PathBuf> {
    let mut files = cache_files(proxy_dir);
    files.retain(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    files
}

/// Every file in the cache's subdirectories: entries, and temporary files
/// (their names start with a dot).
fn cache_files(proxy_dir: &TempDir) -> Vec<PathBuf> {
    let list = |dir: PathBuf| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    list(proxy_dir.path().join("cache"))
        .into_iter()
        .filter(|p| p.is_dir())
        .flat_map(list)
        .collect()
}

/// A hit names, in its Via, the version the stored response came in, as
/// the miss that stored it did.
#[test]
fn a_hit_keeps_the_via_of_the_response_stored() {
    let backend = RawBackend::start(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    let miss = client.get("/old");
    assert_eq!(
        (miss.header("x-cache"), miss.header("via")),
        (Some("MISS"), Some("1.0 pibl"))
    );
    let hit = client.get("/old");
    assert_eq!(
        (
            hit.header("x-cache"),
            hit.header("via"),
            hit.text().as_str()
        ),
        (Some("HIT"), Some("1.0 pibl"), "ok")
    );
}

#[test]
fn a_hit_reaches_no_backend_and_head_is_served_from_a_get_entry() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    let first = client.get("/a");
    assert_eq!(
        (first.header("x-cache"), first.text().as_str()),
        (Some("MISS"), "hello")
    );
    let second = client.get("/a");
    assert_eq!(
        (second.header("x-cache"), second.text().as_str()),
        (Some("HIT"), "hello")
    );
    assert_eq!(second.header("etag"), Some("\"v1\""));
    assert!(second.header("age").is_some());
    client.send(b"HEAD /a HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = client.response("HEAD");
    assert_eq!(
        (head.header("x-cache"), head.header("content-length")),
        (Some("HIT"), Some("5"))
    );
    assert_eq!(client.get("/a").text(), "hello", "HEAD sent no body");
    assert_eq!(
        hits(&backend),
        1,
        "only the first request reached the backend"
    );
    let log = proxy.wait_log(4);
    let status: Vec<&str> = log.iter().map(|l| log_cache(l)).collect();
    assert_eq!(status, ["MISS", "HIT", "HIT", "HIT"]);
    assert!(log[1].contains(" - "), "a hit names no backend: {}", log[1]);
    // Another connection, another child: the same file.
    wait_entries(&proxy.dir, 1);
    assert_eq!(get(proxy.addr, "/a").header("x-cache"), Some("HIT"));
    assert_eq!(entries(&proxy.dir).len(), 1);
}

/// A hit answers without the backend, but the request's body is still on
/// the wire: it is read and dropped, never taken for the next request.
#[test]
fn a_hit_reads_and_drops_the_request_body() {
    let (backend, proxy, mut client) = one_stored(OK.to_vec(), "/b");
    // The body looks like a request of its own, as a smuggler's would.
    let sneaked = "GET /sneaked HTTP/1.1\r\nHost: test\r\n\r\n";
    client.send(
        format!(
            "GET /b HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{sneaked}",
            sneaked.len()
        )
        .as_bytes(),
    );
    let hit = client.response("GET");
    assert_eq!(
        (hit.header("x-cache"), hit.text().as_str()),
        (Some("HIT"), "hello")
    );
    client.send(
        b"GET /b HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let chunked = client.response("GET");
    assert_eq!(
        (chunked.status, chunked.header("x-cache")),
        (200, Some("HIT"))
    );
    let after = client.get("/b");
    assert_eq!((after.status, after.header("x-cache")), (200, Some("HIT")));
    assert_eq!(
        hits(&backend),
        1,
        "nothing but the first request reached the backend"
    );
    let log = proxy.wait_log(4);
    assert!(
        log.iter().all(|l| l.contains("\"GET /b HTTP/1.1\" 200")),
        "four requests for /b, nothing else: {log:#?}"
    );
}

#[test]
fn entries_expire_after_the_ttl_or_the_origins_shorter_lifetime() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 1);
    assert_eq!(get(proxy.addr, "/t").header("x-cache"), Some("MISS"));
    wait_entries(&proxy.dir, 1);
    wait_until("the entry to expire", || {
        get(proxy.addr, "/t").header("x-cache") == Some("EXPIRED")
    });
    assert_eq!(hits(&backend), 2);

    let short = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\nContent-Length: 1\r\n\r\nx",
    );
    let proxy = cached(&short, 3600);
    assert_eq!(get(proxy.addr, "/m").header("x-cache"), Some("MISS"));
    wait_entries(&proxy.dir, 1);
    wait_until("max-age to pass", || {
        get(proxy.addr, "/m").header("x-cache") == Some("EXPIRED")
    });
}

#[test]
fn what_is_never_stored() {
    let answers: [&'static [u8]; 10] = [
        b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60, no-cache=\"Set-Cookie\"\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nVary: *\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 1\r\n\r\nx",
        // An Expires that is no date, and a lifetime spent before it came.
        b"HTTP/1.1 200 OK\r\nExpires: 0\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=5\r\nAge: 10\r\nContent-Length: 1\r\n\r\nx",
    ];
    answers.into_iter().for_each(never_stored);
}

#[test]
fn authorization_and_request_directives() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    let with_auth = |path: &str| {
        let mut c = Client::connect(proxy.addr);
        c.send(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Basic eDp5\r\n\r\n")
                .as_bytes(),
        );
        c.response("GET")
    };
    with_auth("/private");
    with_auth("/private");
    assert_eq!(
        hits(&backend),
        2,
        "a response to Authorization is not stored"
    );

    let public = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nCache-Control: public\r\nContent-Length: 1\r\n\r\np",
    );
    let proxy = cached(&public, 60);
    authorized_twice(&proxy, "/p");
    assert_eq!(hits(&public), 1, "unless it says public");

    // A request's no-cache bypasses the entry (and refreshes it); no-store
    // keeps the response out.
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /p HTTP/1.1\r\nHost: test\r\nCache-Control: no-cache\r\n\r\n");
    assert_eq!(c.response("GET").header("x-cache"), Some("BYPASS"));
    assert_eq!(hits(&public), 2);
    // So does HTTP/1.0's Pragma: no-cache, unless a Cache-Control says
    // otherwise (RFC 9111 §5.4).
    c.send(b"GET /p HTTP/1.1\r\nHost: test\r\nPragma: no-cache\r\n\r\n");
    assert_eq!(c.response("GET").header("x-cache"), Some("BYPASS"));
    assert_eq!(hits(&public), 3);
    c.send(
        b"GET /p HTTP/1.1\r\nHost: test\r\nPragma: no-cache\r\nCache-Control: max-age=60\r\n\r\n",
    );
    assert_eq!(c.response("GET").header("x-cache"), Some("HIT"));
    assert_eq!(hits(&public), 3);
}

#[test]
fn vary_stores_per_request_value_and_never_serves_a_mismatch() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nVary: Accept-Language\r\nContent-Length: 2\r\n\r\nhi",
    );
    let proxy = cached(&backend, 60);
    let ask = |lang: &str| {
        let mut c = Client::connect(proxy.addr);
        c.send(
            format!("GET /v HTTP/1.1\r\nHost: test\r\nAccept-Language: {lang}\r\n\r\n").as_bytes(),
        );
        c.response("GET").header("x-cache").unwrap().to_string()
    };
    assert_eq!(ask("es"), "MISS");
    wait_entries(&proxy.dir, 1);
    assert_eq!(ask("es"), "HIT");
    assert_eq!(ask("en"), "MISS", "stored for es, not served to en");
    assert_eq!(hits(&backend), 2);
}

#[test]
fn unsafe_methods_invalidate_the_url() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    client.get("/u");
    assert_eq!(client.get("/u").header("x-cache"), Some("HIT"));
    client.send(b"DELETE /u HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(client.response("DELETE").header("x-cache"), Some("BYPASS"));
    assert_eq!(client.get("/u").header("x-cache"), Some("MISS"));
}

/// A hot entry is kept in the serving process's memory once it has been
/// read twice; a keep-alive client must still see every change on disk at
/// once: a replacement of the same size (stored in the same second, so only
/// the file's identity tells them apart), and a purge.
#[test]
fn an_entry_kept_in_memory_follows_every_change_on_disk() {
    let answers = std::sync::atomic::AtomicUsize::new(0);
    let backend = RawBackend::start_answering(move |_| {
        let n = answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv{n}").into_bytes()
    });
    let proxy = cached(&backend, 60);
    let mut hot = Client::connect(proxy.addr);
    assert_eq!(hot.get("/h").text(), "v1");
    wait_entries(&proxy.dir, 1);
    for _ in 0..4 {
        let r = hot.get("/h");
        assert_eq!(
            (r.header("x-cache"), r.text().as_str()),
            (Some("HIT"), "v1")
        );
    }
    // Another connection replaces the entry: invalidated, fetched again.
    let mut other = Client::connect(proxy.addr);
    other.send(b"DELETE /h HTTP/1.1\r\nHost: test\r\n\r\n");
    other.response("DELETE");
    assert_eq!(other.get("/h").text(), "v3");
    wait_entries(&proxy.dir, 1);
    let r = hot.get("/h");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("HIT"), "v3")
    );
    for _ in 0..3 {
        assert_eq!(hot.get("/h").text(), "v3");
    }
    let purge = std::process::Command::new(PIBL)
        .args(["cache", "purge"])
        .current_dir(proxy.dir.path())
        .output()
        .unwrap();
    assert!(purge.status.success());
    let r = hot.get("/h");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("MISS"), "v4")
    );
    assert_eq!(hits(&backend), 4);
}

/// Nor does an entry kept in memory outlive its lifetime.
#[test]
fn an_entry_kept_in_memory_expires_on_time() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 1);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/e").header("x-cache"), Some("MISS"));
    wait_entries(&proxy.dir, 1);
    wait_until("the entry to expire on a kept-alive connection", || {
        client.get("/e").header("x-cache") == Some("EXPIRED")
    });
    assert_eq!(hits(&backend), 2);
}

#[test]
fn entries_survive_a_crash_and_are_served_with_backends_down() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    assert_eq!(get(proxy.addr, "/p").header("x-cache"), Some("MISS"));
    wait_entries(&proxy.dir, 1);
    let backend_addr = backend.addr.to_string();
    let dir = proxy.crash();
    drop(backend); // its thread lingers, but nothing answers on a new proxy's behalf
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let proxy = ProxyOptions::for_addrs(vec![gone])
        .config("[cache]\nttl = 60\n")
        .start_in(dir);
    let r = get(proxy.addr, "/p");
    assert_eq!(
        (r.status, r.header("x-cache"), r.text().as_str()),
        (200, Some("HIT"), "hello")
    );
    assert!(!backend_addr.is_empty());
}

#[test]
fn a_corrupt_entry_is_a_miss_and_is_removed() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    get(proxy.addr, "/c");
    wait_entries(&proxy.dir, 1);
    let files = entries(&proxy.dir);
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs::write(&files[0], &bytes).unwrap();
    let r = get(proxy.addr, "/c");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("MISS"), "hello")
    );
    let line = proxy
        .stderr
        .wait_for(1)
        .into_iter()
        .find(|l| l.contains("cache:"))
        .unwrap();
    assert!(line.contains("size does not match; removed"), "{line}");

    // A damaged header: detected by its check.
    wait_entries(&proxy.dir, 1);
    let files = entries(&proxy.dir);
    let mut bytes = fs::read(&files[0]).unwrap();
    let at = bytes.windows(6).position(|w| w == b"stored").unwrap() + 8;
    bytes[at] ^= 1;
    fs::write(&files[0], &bytes).unwrap();
    assert_eq!(get(proxy.addr, "/c").header("x-cache"), Some("MISS"));
    assert!(
        proxy
            .stderr
            .wait_for(2)
            .iter()
            .any(|l| l.contains("check does not match"))
    );
    assert_eq!(hits(&backend), 3);
}

/// A body bigger than the first read of an entry file: sent from the file
/// (sendfile), and its truncation found by the file's size all the same.
/// A backend answering `answer` to every request, a proxy caching for it,
/// and a client connection on which `path` has been fetched and stored.
fn one_stored(answer: Vec<u8>, path: &str) -> (RawBackend, Proxy, Client) {
    let backend = RawBackend::start_answering(move |_| answer.clone());
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get(path).header("x-cache"), Some("MISS"));
    wait_entries(&proxy.dir, 1);
    (backend, proxy, client)
}

/// Sends `fields` with a GET of `path` on `client` and reads the answer.
fn get_with(client: &mut Client, path: &str, fields: &str) -> Response {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{fields}\r\n").as_bytes());
    client.response("GET")
}

/// A hit answers a browser's revalidation with 304 and a resumed download
/// with the range asked for, from a body kept in memory (small) and from
/// the file (large), all on one connection, without the backend.
#[test]
fn hits_answer_conditional_and_range_requests() {
    let lm = "Tue, 24 Nov 2026 07:00:00 GMT";
    for size in [11, 200_000] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: text/plain\r\nETag: \"v1\"\r\nLast-Modified: {lm}\r\n\r\n"
        );
        let (backend, proxy, mut client) = one_stored([head.as_bytes(), &body].concat(), "/r");

        let whole = client.get("/r");
        assert_eq!(whole.header("accept-ranges"), Some("bytes"));
        let part = get_with(&mut client, "/r", "Range: bytes=2-4\r\n");
        assert_eq!((part.status, part.header("x-cache")), (206, Some("HIT")));
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes 2-4/{size}").as_str())
        );
        assert_eq!(part.body, body[2..5]);
        let tail = get_with(&mut client, "/r", "Range: bytes=-3\r\n");
        assert_eq!((tail.status, &tail.body[..]), (206, &body[size - 3..]));
        let from = get_with(&mut client, "/r", "Range: bytes=5-\r\n");
        assert_eq!((from.status, &from.body[..]), (206, &body[5..]));
        let beyond = get_with(&mut client, "/r", &format!("Range: bytes={size}-\r\n"));
        assert_eq!(beyond.status, 416);
        assert_eq!(
            beyond.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
        let two = get_with(&mut client, "/r", "Range: bytes=0-0,2-2\r\n");
        assert_eq!(
            (two.status, two.body.len()),
            (200, size),
            "several ranges: all"
        );
        let same = get_with(
            &mut client,
            "/r",
            "Range: bytes=0-1\r\nIf-Range: \"v1\"\r\n",
        );
        assert_eq!((same.status, &same.body[..]), (206, &body[..2]));
        let changed = get_with(
            &mut client,
            "/r",
            "Range: bytes=0-1\r\nIf-Range: \"v0\"\r\n",
        );
        assert_eq!((changed.status, changed.body.len()), (200, size));

        let current = get_with(&mut client, "/r", "If-None-Match: \"v0\", \"v1\"\r\n");
        assert_eq!(
            (current.status, current.header("x-cache")),
            (304, Some("HIT"))
        );
        assert_eq!(current.header("etag"), Some("\"v1\""));
        assert_eq!(current.header("content-length"), None);
        assert_eq!(current.header("content-type"), None);
        let dated = get_with(&mut client, "/r", &format!("If-Modified-Since: {lm}\r\n"));
        assert_eq!(dated.status, 304);
        let stale = get_with(&mut client, "/r", "If-None-Match: \"v0\"\r\n");
        assert_eq!((stale.status, stale.body.len()), (200, size));
        let failed = get_with(&mut client, "/r", "If-Match: \"v0\"\r\n");
        assert_eq!(failed.status, 412);

        let after = client.get("/r");
        assert_eq!(
            (after.status, after.body == body),
            (200, true),
            "the connection goes on"
        );
        assert_eq!(hits(&backend), 1, "one fetch for all");
        let log = proxy.wait_log(14);
        let statuses: Vec<&str> = log.iter().map(|l| l.split(' ').nth(8).unwrap()).collect();
        assert_eq!(
            statuses,
            [
                "200", "200", "206", "206", "206", "416", "200", "206", "200", "304", "304", "200",
                "412", "200"
            ]
        );
    }
}

/// A GET with a Range that misses is forwarded without it, so the whole
/// response comes back and is stored, and the client gets its range cut
/// from it as it passes (as nginx's cache does): a resource only ever
/// fetched in ranges is cached too.  One that may not be stored still
/// gets its range.
#[test]
fn a_range_that_misses_fetches_the_whole_and_gets_its_part() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let size = body.len();
    for (cache_control, second) in [("max-age=60", "HIT"), ("no-store", "MISS")] {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nCache-Control: {cache_control}\r\nETag: \"v1\"\r\n\r\n"
        );
        let whole = [head.as_bytes(), &body].concat();
        let backend = RawBackend::start_answering(move |_| whole.clone());
        let proxy = cached(&backend, 60);
        let mut client = Client::connect(proxy.addr);

        let first = get_with(&mut client, "/v", "Range: bytes=1000-1999\r\n");
        assert_eq!((first.status, first.header("x-cache")), (206, Some("MISS")));
        assert_eq!(
            first.header("content-range"),
            Some(format!("bytes 1000-1999/{size}").as_str())
        );
        assert!(
            first.body == body[1000..2000],
            "{cache_control}: the part asked for"
        );
        let again = get_with(&mut client, "/v", "Range: bytes=-10\r\n");
        assert_eq!((again.status, again.header("x-cache")), (206, Some(second)));
        assert!(again.body == body[size - 10..]);
        let changed = get_with(
            &mut client,
            "/w",
            "Range: bytes=0-9\r\nIf-Range: \"v0\"\r\n",
        );
        assert_eq!(
            (changed.status, changed.body.len()),
            (200, size),
            "If-Range names another version"
        );
        let seen = backend.seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .all(|h| !h.to_ascii_lowercase().contains("range:")),
            "forwarded whole: {seen:?}"
        );
    }
}

#[test]
fn a_large_entry_is_sent_from_the_file_and_checked_by_its_size() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let (backend, proxy, mut client) = one_stored([head.as_bytes(), &body].concat(), "/big");
    let hit = client.get("/big");
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(hit.body == body, "the stored body, byte for byte");
    client.send(b"HEAD /big HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = client.response("HEAD");
    assert_eq!(head.header("content-length"), Some("200000"));
    assert_eq!(
        client.get("/big").body.len(),
        body.len(),
        "HEAD sent no body"
    );
    assert_eq!(hits(&backend), 1);

    let file = &entries(&proxy.dir)[0];
    let mut bytes = fs::read(file).unwrap();
    bytes.truncate(bytes.len() - 1000);
    fs::write(file, &bytes).unwrap();
    let r = client.get("/big");
    assert_eq!(
        (r.header("x-cache"), r.body.len()),
        (Some("MISS"), body.len())
    );
    assert!(
        proxy
            .stderr
            .wait_for(1)
            .iter()
            .any(|l| l.contains("size does not match; removed"))
    );
    assert_eq!(hits(&backend), 2);
}

#[test]
fn a_write_cut_short_by_sigkill_leaves_no_visible_entry() {
    // 10 bytes promised, 5 sent, then silence: the child is mid-write.
    let backend = RawBackend::start_stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /k HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(client.head().header("x-cache"), Some("MISS"));
    // The entry being written: the URL's fill lock, once it holds bytes.
    let temp = |dir: &TempDir| {
        cache_files(dir)
            .iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".fill-")
            })
            .filter(|p| p.metadata().is_ok_and(|m| m.len() > 0))
            .count()
    };
    wait_until("the temporary file", || temp(&proxy.dir) == 1);
    let dir = proxy.crash();
    assert!(entries(&dir).is_empty(), "no entry is visible");
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config("[cache]\nttl = 60\n")
        .start_in(dir);
    assert_eq!(temp(&proxy.dir), 0, "the next start removes it");
    drop(proxy);
}

#[test]
fn ttl_flag_wins_and_zero_turns_the_cache_off() {
    let backend = RawBackend::start(OK);
    let options =
        || ProxyOptions::for_addrs(vec![backend.addr.to_string()]).config("[cache]\nttl = 60\n");
    let off = options().args(&["--ttl", "0"]).start();
    let r = get(off.addr, "/z");
    assert_eq!(r.header("x-cache"), None);
    get(off.addr, "/z");
    assert_eq!(hits(&backend), 2);
    assert!(!off.dir.path().join("cache").exists());
    let on = options().args(&["--ttl", "5"]).start();
    get(on.addr, "/z");
    wait_entries(&on.dir, 1);
    assert_eq!(get(on.addr, "/z").header("x-cache"), Some("HIT"));
}

#[test]
fn cache_ls_and_purge_while_serving() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    client.get("/a");
    client.get("/b?x=1");
    wait_entries(&proxy.dir, 2);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(PIBL)
            .args(args)
            .current_dir(proxy.dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listing = run(&["cache", "ls"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines[1].ends_with("  http://test/a") && lines[2].ends_with("  http://test/b?x=1"),
        "{listing}"
    );
    let mut listed: Vec<u64> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let mut on_disk: Vec<u64> = entries(&proxy.dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    listed.sort();
    on_disk.sort();
    assert_eq!(listed, on_disk, "sizes are the files' sizes");
    let left: i64 = lines[1].split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((55..=60).contains(&left), "{listing}");

    assert_eq!(
        run(&["cache", "purge", "http://TEST:80/a"]),
        "1 entry removed\n"
    );
    assert_eq!(client.get("/a").header("x-cache"), Some("MISS"));
    assert_eq!(client.get("/b?x=1").header("x-cache"), Some("HIT"));
    assert_eq!(run(&["cache", "purge"]), "2 entries removed\n");
    assert_eq!(client.get("/b?x=1").header("x-cache"), Some("MISS"));

    let wrong = std::process::Command::new(PIBL)
        .args(["cache", "purge", "test/a"])
        .current_dir(proxy.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        (
            wrong.status.code(),
            String::from_utf8_lossy(&wrong.stderr).as_ref()
        ),
        (Some(2), "pibl: \"test/a\" is not an http:// URL\n"),
        "a usage error, naming no configuration file"
    );
}

#[test]
fn the_janitor_removes_expired_entries_with_no_client_waiting() {
    let backend = RawBackend::start(OK);
    let proxy = cached(&backend, 1);
    get(proxy.addr, "/e");
    wait_entries(&proxy.dir, 1);
    wait_entries(&proxy.dir, 0);
    assert_eq!(hits(&backend), 1, "no request was needed");
    assert_eq!(
        proxy.tasks_named("cache janitor"),
        1,
        "a janitor of its own"
    );
}

#[test]
fn over_max_size_the_least_recently_used_go_first() {
    let backend = RawBackend::start(OK);
    // One entry's size, measured: every path below has the same length.
    let probe = cached(&backend, 60);
    get(probe.addr, "/1");
    wait_entries(&probe.dir, 1);
    let size = fs::metadata(&entries(&probe.dir)[0]).unwrap().len();
    drop(probe);

    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config(&format!("[cache]\nttl = 60\nmax_size = {}\n", size * 5 / 2))
        .start();
    let mut client = Client::connect(proxy.addr);
    client.get("/1");
    client.get("/2");
    assert_eq!(
        client.get("/1").header("x-cache"),
        Some("HIT"),
        "/1 is now the most recently used"
    );
    client.get("/3");
    let evicted = proxy.stderr.wait_for(1);
    assert!(
        evicted[0].contains("cache over max_size: 1 least recently used"),
        "{evicted:?}"
    );
    assert_eq!(entries(&proxy.dir).len(), 2);
    assert_eq!(client.get("/1").header("x-cache"), Some("HIT"));
    assert_eq!(
        client.get("/2").header("x-cache"),
        Some("MISS"),
        "/2 was the least recently used"
    );
}

#[test]
fn a_hundred_clients_at_once_cause_one_fetch() {
    let backend = RawBackend::start_slow(OK, std::time::Duration::from_millis(300));
    let proxy = cached(&backend, 60);
    let addr = proxy.addr;
    let clients: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || get(addr, "/popular")))
        .collect();
    let answers: Vec<Response> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.text() == "hello")
    );
    assert_eq!(hits(&backend), 1, "one fetch for 100 clients");
    let hit = answers
        .iter()
        .filter(|r| r.header("x-cache") == Some("HIT"))
        .count();
    assert_eq!(hit, 99, "the others were served the stored answer");
}

/// A backend whose responses live a second and carry `ETag: "v1"`, and
/// which answers a request naming that version with a 304 giving a
/// minute more.
fn revalidating_backend() -> RawBackend {
    RawBackend::start_answering(|head| {
        if head.contains("\r\nIf-None-Match: \"v1\"\r\n") {
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n"
                .to_vec()
        } else {
            by_method(head, "ETag: \"v1\"\r\nCache-Control: max-age=1\r\n")
        }
    })
}

/// Waits until the one entry in the cache of the proxy run in `dir` is
/// stored and has expired (an entry's mtime is its expiry time).
fn wait_expired(dir: &TempDir) {
    wait_entries(dir, 1);
    let entry = entries(dir).remove(0);
    wait_until("the entry to expire", || {
        fs::metadata(&entry).unwrap().modified().unwrap()
            < std::time::SystemTime::now() - std::time::Duration::from_secs(1)
    });
}

#[test]
fn a_stale_entry_with_a_validator_is_revalidated_with_a_304() {
    let backend = revalidating_backend();
    let proxy = cached(&backend, 3600);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/r").header("x-cache"), Some("MISS"));
    wait_expired(&proxy.dir);
    let r = client.get("/r");
    assert_eq!(
        (r.status, r.header("x-cache"), r.text().as_str()),
        (200, Some("REVALIDATED"), "hello")
    );
    let seen = backend.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].contains("If-None-Match: \"v1\""), "{}", seen[1]);
    // The 304's max-age=60 now applies: a plain hit, no third request.
    assert_eq!(client.get("/r").header("x-cache"), Some("HIT"));
    assert_eq!(hits(&backend), 2);
}

/// What a backend answers a GET (with a body) or a HEAD (the same head),
/// with `fields` added and `body` five bytes long.
fn by_method(head: &str, fields: &str) -> Vec<u8> {
    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n{fields}\r\n");
    let mut bytes = answer.into_bytes();
    if head.starts_with("GET ") {
        bytes.extend_from_slice(b"hello");
    }
    bytes
}

/// As nginx (`proxy_cache_convert_head`): a HEAD that misses is fetched as
/// a GET and stored, so the GETs after it hit; the client gets the head.
#[test]
fn a_head_that_misses_is_fetched_as_a_get_and_stored() {
    let backend = RawBackend::start_answering(|head| by_method(head, "ETag: \"v1\"\r\n"));
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    client.send(b"HEAD /h HTTP/1.1\r\nHost: test\r\nRange: bytes=0-1\r\n\r\n");
    let head = client.response("HEAD");
    assert_eq!(
        (
            head.status,
            head.header("content-length"),
            head.header("x-cache")
        ),
        (200, Some("5"), Some("MISS"))
    );
    assert!(head.body.is_empty());
    wait_entries(&proxy.dir, 1);
    let r = client.get("/h");
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("HIT"), "hello"),
        "the HEAD sent no body, and its GET filled the cache"
    );
    let seen = backend.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("GET /h HTTP/1.1\r\n"), "{}", seen[0]);
    assert!(!seen[0].contains("Range"), "a HEAD's Range means nothing");
    assert_eq!(
        proxy
            .wait_log(2)
            .iter()
            .map(|l| l.split('"').nth(1).unwrap().to_string())
            .collect::<Vec<_>>(),
        ["HEAD /h HTTP/1.1", "GET /h HTTP/1.1"]
    );
}

/// A response that may not be stored is not read for a HEAD (the
/// backend connection goes instead), and the URL's next HEADs go to the
/// backend as HEADs.
#[test]
fn a_head_of_an_unstorable_url_is_not_fetched_as_a_get_again() {
    let backend =
        RawBackend::start_answering(|head| by_method(head, "Cache-Control: no-store\r\n"));
    let proxy = cached(&backend, 60);
    let mut client = Client::connect(proxy.addr);
    for _ in 0..2 {
        client.send(b"HEAD /n HTTP/1.1\r\nHost: test\r\n\r\n");
        let head = client.response("HEAD");
        assert_eq!(
            (head.status, head.header("content-length")),
            (200, Some("5"))
        );
    }
    assert_eq!(client.get("/n").text(), "hello");
    let seen = backend.seen.lock().unwrap().clone();
    let methods: Vec<&str> = seen.iter().map(|h| h.split(' ').next().unwrap()).collect();
    assert_eq!(methods, ["GET", "HEAD", "GET"]);
    assert!(entries(&proxy.dir).is_empty());
}

/// A HEAD on an expired entry revalidates it as a GET would: the client,
/// which sent no condition, gets a 200's head, never the 304.
#[test]
fn a_head_on_a_stale_entry_revalidates_it() {
    let backend = revalidating_backend();
    let proxy = cached(&backend, 3600);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/s").header("x-cache"), Some("MISS"));
    wait_expired(&proxy.dir);
    client.send(b"HEAD /s HTTP/1.1\r\nHost: test\r\n\r\n");
    let head = client.response("HEAD");
    assert_eq!(
        (
            head.status,
            head.header("x-cache"),
            head.header("content-length")
        ),
        (200, Some("REVALIDATED"), Some("5"))
    );
    let seen = backend.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].starts_with("GET /s "), "{}", seen[1]);
    assert_eq!(client.get("/s").header("x-cache"), Some("HIT"));
    assert_eq!(hits(&backend), 2);
}

#[test]
fn a_body_over_max_entry_streams_through_uncached() {
    let backend = RawBackend::start(OK);
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config("[cache]\nttl = 60\nmax_entry = 4\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    for _ in 0..2 {
        let r = client.get("/large");
        assert_eq!(
            (r.header("x-cache"), r.text().as_str()),
            (Some("MISS"), "hello")
        );
    }
    assert_eq!(hits(&backend), 2);
    assert!(entries(&proxy.dir).is_empty());
    // No copy of the body stays: only the URL's fill lock, kept for its
    // next miss, and the mark that its responses are not being stored (so
    // that its misses need not wait for one another).
    let mut names: Vec<String> = cache_files(&proxy.dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with(".fill-") && names[1].starts_with(".pass-"));
}

/// An entry the file system refuses — here past the file-size limit
/// (ulimit -f), which without care also kills the writer with SIGXFSZ — is
/// given up and said; the response goes on whole, and uncached.
#[test]
fn an_entry_the_file_system_refuses_is_given_up_and_the_response_goes_on() {
    let backends = Backend::start_many(1);
    let options = ProxyOptions::new(&backends).config("[cache]\nttl = 60\n");
    let mut proxy = options.ulimit("-f 400").start();
    for _ in 0..2 {
        let r = get(proxy.addr, "/big?kb=1024");
        assert_eq!(
            (r.status, r.body.len(), r.header("x-cache")),
            (200, 1 << 20, Some("MISS"))
        );
    }
    let said = proxy.wait_stderr("cache: cannot store");
    assert!(
        said.ends_with("/big?kb=1024: File too large (said once a minute at most)"),
        "{said}"
    );
    // Both failed, and were said once: a full disk fails every store.
    proxy.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.process.wait_exit().success());
    let stderr = proxy.stderr.wait_end();
    let times = stderr.iter().filter(|l| l.contains("cannot store")).count();
    assert_eq!(times, 1, "{stderr:#?}");
}

/// Misses of a URL whose responses cannot be stored do not wait for one
/// another: once its first response proved unstorable, concurrent
/// requests reach the backend together.  The backend answers "together"
/// once it holds the three at once, and "alone" if it waited 3 s in vain,
/// as it would for requests sent one at a time.
#[test]
fn misses_of_an_unstorable_url_go_to_the_backend_together() {
    use std::sync::{Arc, Condvar, Mutex};
    let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
    let backend = RawBackend::start_answering(move |_| {
        let (count, cond) = &*arrived;
        let mut n = count.lock().unwrap();
        *n += 1;
        cond.notify_all();
        // The first request is answered at once; the next three together.
        let wanted = if *n == 1 { 1 } else { 4 };
        let (_n, wait) = cond
            .wait_timeout_while(n, std::time::Duration::from_secs(3), |n| *n < wanted)
            .unwrap();
        let body = if wait.timed_out() {
            "alone"
        } else {
            "together"
        };
        format!(
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let proxy = cached(&backend, 60);
    assert_eq!(get(proxy.addr, "/dynamic").text(), "together");
    let answers: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..3)
            .map(|_| s.spawn(|| get(proxy.addr, "/dynamic").text()))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(answers, ["together"; 3]);
}

/// A URL noted as unstorable is still stored once a response of it can be.
#[test]
fn a_url_whose_response_becomes_storable_is_stored() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let answered = AtomicUsize::new(0);
    let backend = RawBackend::start_answering(move |_| {
        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 3\r\n\r\nold".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew".to_vec()
        }
    });
    let proxy = cached(&backend, 60);
    assert_eq!(get(proxy.addr, "/page").text(), "old");
    assert_eq!(get(proxy.addr, "/page").text(), "new");
    wait_entries(&proxy.dir, 1);
    let hit = get(proxy.addr, "/page");
    assert_eq!(
        (hit.text(), hit.header("x-cache")),
        ("new".into(), Some("HIT"))
    );
    assert_eq!(hits(&backend), 2);
}

/// A chunked response found longer than `max_entry` as it is copied lets
/// the URL's fill lock go there and then: a second client reaches the
/// backend while the first response is still on its way.  The backend
/// holds the end of the first body until the second request comes, and
/// says "together" then, "alone" if it waited 3 s in vain.
#[test]
fn a_chunked_body_over_max_entry_lets_the_fill_lock_go_at_once() {
    use std::io::{BufRead, Read, Write};
    use std::sync::{Arc, Condvar, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let second_came = Arc::new((Mutex::new(false), Condvar::new()));
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let second_came = Arc::clone(&second_came);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let start = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                     2000\r\n{}\r\n",
                    "x".repeat(0x2000)
                );
                let _ = stream.write_all(start.as_bytes());
                let (came, cond) = &*second_came;
                let end = if n == 0 {
                    let wait = std::time::Duration::from_secs(3);
                    let (_came, waited) = cond
                        .wait_timeout_while(came.lock().unwrap(), wait, |came| !*came)
                        .unwrap();
                    if waited.timed_out() {
                        "alone"
                    } else {
                        "together"
                    }
                } else {
                    *came.lock().unwrap() = true;
                    cond.notify_all();
                    "second"
                };
                let _ =
                    stream.write_all(format!("{:x}\r\n{end}\r\n0\r\n\r\n", end.len()).as_bytes());
            });
        }
    });
    let proxy = ProxyOptions::for_addrs(vec![addr.to_string()])
        .config("[cache]\nttl = 60\nmax_entry = 4096\n")
        .start();
    let mut first = Client::connect(proxy.addr);
    first.send(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(first.head().status, 200);
    // Body bytes have come: pibl has copied past max_entry.
    assert!(!first.reader.fill_buf().unwrap().is_empty());
    let second = get(proxy.addr, "/stream");
    assert!(second.text().ends_with("second"));
    assert!(
        String::from_utf8(first.read_chunked())
            .unwrap()
            .ends_with("together")
    );
}

/// A backend answering `answer` behind a cache: asked twice, both
/// requests reach it, and nothing is stored.
fn never_stored(answer: &'static [u8]) {
    let backend = RawBackend::start(answer);
    let proxy = cached(&backend, 60);
    let said = String::from_utf8_lossy(answer);
    for _ in 0..2 {
        let r = get(proxy.addr, "/n");
        assert_eq!(r.header("x-cache"), Some("MISS"), "{said}");
    }
    assert_eq!(hits(&backend), 2, "{said}");
    assert!(entries(&proxy.dir).is_empty(), "{said}");
}

/// A max-age or s-maxage that is not delta-seconds makes the response
/// stale, never fresh (RFC 9111 §1.2.2, §4.2.1); a double-quoted one is
/// accepted, as recipients are to (§5.2), and one too large for any clock
/// is taken as 2^31 seconds, so the launch TTL bounds it.
#[test]
fn freshness_that_is_not_delta_seconds_is_stale() {
    let stale: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=-1\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age='3600'\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1.5\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60x\r\nContent-Length: 1\r\n\r\nx",
        // s-maxage wins over max-age in a shared cache, broken or not.
        b"HTTP/1.1 200 OK\r\nCache-Control: s-maxage=soon, max-age=60\r\nContent-Length: 1\r\n\r\nx",
    ];
    stale.into_iter().for_each(never_stored);
    let fresh: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=\"3600\"\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=99999999999999999999999\r\nContent-Length: 1\r\n\r\nx",
    ];
    for answer in fresh {
        let backend = RawBackend::start(answer);
        let proxy = cached(&backend, 60);
        get(proxy.addr, "/f");
        wait_entries(&proxy.dir, 1);
        let hit = get(proxy.addr, "/f");
        let said = String::from_utf8_lossy(answer);
        assert_eq!(hit.header("x-cache"), Some("HIT"), "{said}");
        assert_eq!(hits(&backend), 1, "{said}");
        let listing = pibl_cache_ls(&proxy.dir);
        let left: i64 = listing[1]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (0..=60).contains(&left),
            "the launch TTL bounds it: {listing:?}"
        );
    }
}

/// Any final status may be stored when the response has explicit
/// freshness (RFC 9111 §3), unknown ones too; without it, only the
/// heuristically cacheable statuses take the launch TTL, and `public`
/// (§4.2.2).  A 206 is never stored.
#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    let stored: [&'static [u8]; 8] = [
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /x\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 400 Bad Request\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 500 Internal Server Error\r\nCache-Control: s-maxage=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 599 Unknown\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 299 Unknown\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nDate: Mon, 07 Dec 2026 12:00:00 GMT\r\nExpires: Mon, 07 Dec 2026 13:00:00 GMT\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 503 Service Unavailable\r\nCache-Control: public\r\nContent-Length: 1\r\n\r\nx",
    ];
    for answer in stored {
        let backend = RawBackend::start(answer);
        let proxy = cached(&backend, 60);
        let said = String::from_utf8_lossy(answer);
        let first = get(proxy.addr, "/r");
        assert_eq!(first.header("x-cache"), Some("MISS"), "{said}");
        wait_entries(&proxy.dir, 1);
        let second = get(proxy.addr, "/r");
        assert_eq!(
            (second.status, second.header("x-cache")),
            (first.status, Some("HIT")),
            "{said}"
        );
        assert_eq!(hits(&backend), 1, "{said}");
    }
    let not_stored: [&'static [u8]; 3] = [
        b"HTTP/1.1 599 Unknown\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/2\r\nCache-Control: max-age=3600\r\nContent-Length: 1\r\n\r\nx",
    ];
    not_stored.into_iter().for_each(never_stored);
}

/// A request with Authorization may be answered from the cache when the
/// stored response says must-revalidate, public or s-maxage (RFC 9111
/// §3.5).
#[test]
fn authorization_is_answered_from_a_response_that_says_must_revalidate() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60, must-revalidate\r\nContent-Length: 1\r\n\r\nm",
    );
    let proxy = cached(&backend, 60);
    assert_eq!(authorized_twice(&proxy, "/m"), ["MISS", "HIT"]);
    assert_eq!(hits(&backend), 1);
}

/// Asks twice for `path` with credentials, letting the first answer be
/// stored if it is to be; the X-Cache of each answer.
fn authorized_twice(proxy: &Proxy, path: &str) -> Vec<String> {
    (0..2)
        .map(|round| {
            let mut c = Client::connect(proxy.addr);
            let head =
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Basic eDp5\r\n\r\n");
            c.send(head.as_bytes());
            let said = c
                .response("GET")
                .header("x-cache")
                .unwrap_or("")
                .to_string();
            if round == 0 && said == "MISS" {
                wait_entries(&proxy.dir, 1);
            }
            said
        })
        .collect()
}

/// `pibl cache ls` in the proxy's directory, line by line.
fn pibl_cache_ls(dir: &TempDir) -> Vec<String> {
    let out = std::process::Command::new(PIBL)
        .args(["cache", "ls"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
