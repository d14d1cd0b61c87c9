//! Request buffering: pibl reads a request's whole body before it
//! chooses and contacts a backend, so a backend sees a request only once
//! it is complete and valid, or never; a slow upload holds no backend
//! while it dribbles; a body held whole can be sent again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Chunked bodies whose framing turns bad after the head, and after good
/// chunks: the request head would have reached a backend already had pibl
/// streamed the body.
const BAD_CHUNKED: &[(&str, &[u8])] = &[
    (
        "a chunk size that overflows 64 bits",
        b"5\r\nhello\r\n10000000000000000\r\n",
    ),
    ("a size line cut short by the end", b"5\r\nhello\r\n3"),
    (
        "a bad chunk after good ones",
        b"5\r\nhello\r\n5\r\nworld\r\nzz\r\nbad\r\n0\r\n\r\n",
    ),
    (
        "data longer than its chunk",
        b"5\r\nhello\r\n2\r\nlonger\r\n0\r\n\r\n",
    ),
];

/// Sends `body` after a chunked POST's head, in one write or byte by
/// byte, then ends the connection's sending side; returns the status.
fn send_bad_body(proxy: &Proxy, body: &[u8], dribbled: bool) -> u16 {
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut stream = client.stream().try_clone().unwrap();
    stream.set_nodelay(true).unwrap();
    if dribbled {
        for &byte in body {
            stream.write_all(&[byte]).unwrap();
        }
    } else {
        stream.write_all(body).unwrap();
    }
    let _ = stream.shutdown(Shutdown::Write);
    client.response("POST").status
}

#[test]
fn a_body_whose_framing_turns_bad_never_reaches_a_backend() {
    let raw = RawBackend::start(OK);
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    for &(what, body) in BAD_CHUNKED {
        for dribbled in [false, true] {
            let status = send_bad_body(&proxy, body, dribbled);
            assert_eq!(status, 400, "{what}, dribbled: {dribbled}");
        }
    }
    let seen = raw.seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "the backend saw: {seen:?}");
    assert_eq!(get(proxy.addr, "/").text(), "ok", "and pibl goes on");
}

/// A chunked body goes on with its length, its trailers dropped, as
/// nginx does; the backend sees no Transfer-Encoding.
#[test]
fn a_chunked_body_goes_on_with_its_length() {
    let raw = RawBackend::start(OK);
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(client.response("POST").status, 200);
    let seen = raw.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let head = seen[0].to_ascii_lowercase();
    assert!(head.contains("content-length: 10\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("x-trailer"), "{head}");
}

/// A request as `OneAtATime` saw it.
#[derive(Clone)]
struct Served {
    path: String,
    /// When its head came, and when its body was all read.
    came: Instant,
    whole: Instant,
    length: usize,
    /// When its answer was all written, once it was.
    written: Option<Instant>,
}

/// One request at a time, as a sync worker of gunicorn or a forking
/// server: `/big` gets 32 MiB by length, `/big-chunked` the same chunked,
/// anything else "ok"; it notes what it saw, when each request was whole,
/// and when each answer was written.
struct OneAtATime {
    addr: std::net::SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
}

/// More than the sockets between backend, pibl and client hold, with the
/// client's receive buffer kept small.
const BIG: usize = 32 << 20;

impl OneAtATime {
    fn start() -> OneAtATime {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&served);
        thread::spawn(move || {
            let block: Vec<u8> = (0..1 << 16).map(|i: u32| (i % 251) as u8).collect();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let head = read_head(&mut stream);
                let came = Instant::now();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                stream.read_exact(&mut body).unwrap();
                let whole = Instant::now();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let at = {
                    let mut served = record.lock().unwrap();
                    served.push(Served {
                        path: path.clone(),
                        came,
                        whole,
                        length,
                        written: None,
                    });
                    served.len() - 1
                };
                let sent = match path.as_str() {
                    "/big" => write_big(&mut stream, &block, false),
                    "/big-chunked" => write_big(&mut stream, &block, true),
                    _ => stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    ),
                };
                if sent.is_ok() {
                    record.lock().unwrap()[at].written = Some(Instant::now());
                }
            }
        });
        OneAtATime { addr, served }
    }

    /// When the answer to `path` was all written, if it was.
    fn written(&self, path: &str) -> Option<Instant> {
        let served = self.served.lock().unwrap();
        served.iter().find(|s| s.path == path)?.written
    }
}

/// A client uploading 1 MiB at 100 KiB/s holds no backend meanwhile: the
/// backend gets the whole request within moments of its last byte, and,
/// serving one request at a time, answers other clients in the meantime.
#[test]
fn a_slow_upload_reaches_the_backend_whole_and_holds_it_no_longer() {
    let backend = OneAtATime::start();
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()]).start();
    const SIZE: usize = 1 << 20;
    let mut client = Client::connect(proxy.addr);
    client.send(
        format!("POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let mut stream = client.stream().try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let block = vec![b'u'; 10 * 1024];
        for _ in 0..SIZE / block.len() {
            stream.write_all(&block).unwrap();
            thread::sleep(Duration::from_millis(100));
        }
        // Taken before the last bytes go: once they are out, the proxy
        // may forward the request before this thread runs again.
        let rest = SIZE % block.len();
        let last = Instant::now();
        stream.write_all(&block[..rest]).unwrap();
        last
    });
    // Meanwhile, other clients are served by the one backend.
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/other").text(), "ok");
    }
    let last_byte = uploader.join().unwrap();
    assert_eq!(client.response("POST").text(), "ok");
    let served = backend.served.lock().unwrap().clone();
    let slow = served.iter().find(|s| s.path == "/slow").unwrap();
    assert_eq!(slow.length, SIZE);
    assert!(
        slow.came >= last_byte,
        "the backend saw the head before the body was all in"
    );
    let took = slow.whole.duration_since(last_byte);
    assert!(
        took < Duration::from_secs(1),
        "the backend had the body {took:?} after its last byte"
    );
    let others: Vec<_> = served.iter().filter(|s| s.path == "/other").collect();
    assert_eq!(others.len(), 3);
    assert!(
        others.iter().all(|o| o.came < last_byte),
        "served meanwhile"
    );
}

/// An idempotent PUT with a 1 MiB body, held whole, is sent again to the
/// next backend when the first dies with it half sent.
#[test]
fn a_put_with_a_large_body_is_retried_after_a_backend_dies() {
    // Reads the head and hangs up: a backend dying with the body on its way.
    let dying = RawBackend::start(b"");
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::for_addrs(vec![dying.addr.to_string(), backends[0].addr.to_string()])
        .config("max_fails = 100\n")
        .start();
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut client = Client::connect(proxy.addr);
    client.send(
        format!(
            "PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    client.send(&body);
    let r = client.response("PUT");
    assert_eq!(r.status, 200);
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!(
        r.text(),
        format!("bytes={} fnv1a={hash:016x}\n", body.len())
    );
    assert_eq!(
        dying.seen.lock().unwrap().len(),
        1,
        "the first backend was tried"
    );
    let line = proxy.wait_log(1).pop().unwrap();
    assert!(
        line.contains(&format!("{}, {}", dying.addr, backends[0].addr)),
        "{line}"
    );
}

/// The files bodies are held in: none ever has a name there, not even
/// while the body is held, so none is left by a child killed mid-upload;
/// what a crash might leave is removed at the next start.
#[test]
fn temporary_files_are_never_left_behind() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends)
        .config("client_body_buffer_size = 1024\n")
        .start();
    let temp = proxy.dir.path().join("temp");
    let files = || std::fs::read_dir(&temp).unwrap().count();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&temp).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    // Held in a file (over 1 KiB), mid-upload, then the whole of it.
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
    client.send(&[b'x'; 100_000]);
    wait_until("the body to be held", || {
        let fds = open_fds_in(proxy.pid(), &proxy.children().0, "(deleted)");
        fds > 0
    });
    assert_eq!(files(), 0, "no name while held");
    client.send(&[b'x'; 100_000]);
    assert!(client.response("POST").text().starts_with("bytes=200000 "));
    assert_eq!(files(), 0);

    // A child (or, in the thread model, the proxy) killed mid-upload.
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
    client.send(&[b'x'; 100_000]);
    wait_until("the body to be held", || {
        open_fds_in(proxy.pid(), &proxy.children().0, "(deleted)") > 0
    });
    let dir = if model() == "thread" {
        proxy.crash()
    } else {
        for child in proxy.children().0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(client.is_closed());
        assert_eq!(files(), 0, "after SIGKILL");
        proxy.crash()
    };
    // Debris from a crash between an open and its unlink goes at start.
    std::fs::write(dir.path().join("temp/body-1-1"), b"left").unwrap();
    let again = ProxyOptions::new(&backends).start_in(dir);
    assert_eq!(
        std::fs::read_dir(again.dir.path().join("temp"))
            .unwrap()
            .count(),
        0
    );
}

/// How many of the open descriptors of `pid` and `children` point at
/// something whose name ends with `suffix`.
fn open_fds_in(pid: i32, children: &[i32], suffix: &str) -> usize {
    std::iter::once(pid)
        .chain(children.iter().copied())
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().ends_with(suffix))
        .count()
}

fn write_big(stream: &mut std::net::TcpStream, block: &[u8], chunked: bool) -> std::io::Result<()> {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {BIG}")
    };
    stream.write_all(
        format!("HTTP/1.1 200 OK\r\n{framing}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    for _ in 0..BIG / block.len() {
        if chunked {
            stream.write_all(format!("{:x}\r\n", block.len()).as_bytes())?;
        }
        stream.write_all(block)?;
        if chunked {
            stream.write_all(b"\r\n")?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// A client reading a 32 MiB response slowly holds its backend no longer
/// than the backend takes to send it: pibl holds the rest (memory, then a
/// temporary file), so the backend, serving one request at a time,
/// answers other clients while the slow one still reads — spliced (a
/// length) or copied (chunked, sent on to an HTTP/1.0 client as it is),
/// and every byte arrives.
#[test]
fn a_slow_reader_frees_the_backend_long_before_it_finishes() {
    for (path, version) in [("/big", "1.1"), ("/big-chunked", "1.0")] {
        let backend = OneAtATime::start();
        let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()]).start();
        let mut client = Client::connect(proxy.addr);
        nix::sys::socket::setsockopt(
            client.stream(),
            nix::sys::socket::sockopt::RcvBuf,
            &(128 * 1024),
        )
        .unwrap();
        let started = Instant::now();
        client.send(format!("GET {path} HTTP/{version}\r\nHost: t\r\n\r\n").as_bytes());
        let head = client.head();
        assert_eq!(head.status, 200);
        // About 8 MiB a second: four seconds for the whole.
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let mut other_answered = None;
        let mut wrong = None;
        while got < BIG {
            let n = client.reader.read(&mut buf).unwrap();
            assert!(n > 0, "{path}: the body ended at {got}");
            if wrong.is_none() {
                wrong = (0..n).find(|&i| buf[i] != (((got + i) % 65_536) % 251) as u8);
            }
            got += n;
            thread::sleep(Duration::from_millis(8));
            if other_answered.is_none() && backend.written(path).is_some() {
                assert_eq!(get(proxy.addr, "/other").text(), "ok");
                other_answered = Some(got);
            }
        }
        let finished = Instant::now();
        assert_eq!(wrong, None, "{path}: first wrong byte");
        let freed = backend.written(path).expect("the backend wrote it all");
        let (freed, whole) = (freed - started, finished - started);
        assert!(
            freed < whole / 3,
            "{path}: backend freed after {freed:?}, the client took {whole:?}"
        );
        let at = other_answered.expect("another client was answered meanwhile");
        assert!(
            at < BIG / 2,
            "{path}: another client answered after {at} bytes of {BIG}"
        );
    }
}
