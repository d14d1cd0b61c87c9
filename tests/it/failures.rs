//! Backend failures: failover, passive and active health, retries of
//! idempotent requests only, 502 and 504, and a load that survives a
//! backend killed and brought back.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// An address where nothing listens.
fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn a_refused_connection_fails_over_invisibly() {
    let a = Backend::start("a");
    let c = Backend::start("c");
    let dead = dead_address();
    let proxy =
        ProxyOptions::for_addrs(vec![a.addr.to_string(), dead.clone(), c.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    let names: Vec<String> = (0..9).map(|_| client.get("/whoami").text()).collect();
    assert!(names.iter().all(|n| n == "a\n" || n == "c\n"), "{names:?}");
    let log = proxy.wait_log(9);
    assert!(
        log[1].contains(&format!(" {dead}, {} ", c.addr)),
        "both tries logged: {}",
        log[1]
    );
    proxy.wait_stderr(&format!("backend {dead}: connect: Connection refused"));
    proxy.wait_stderr(&format!("backend {dead} marked down"));
    // Marked down, the dead backend is skipped: a and c alternate exactly.
    let later: Vec<&str> = log[3..].iter().map(|l| log_upstream(l)).collect();
    assert!(later.windows(2).all(|w| w[0] != w[1]), "{later:?}");
}

#[test]
fn a_backend_marked_down_is_tried_again_after_fail_timeout() {
    let a = Backend::start("a");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = ProxyOptions::for_addrs(vec![a.addr.to_string(), format!("127.0.0.1:{port}")])
        .config("fail_timeout = 0.5\n")
        .start();
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/whoami").text(), "a\n");
    }
    proxy.wait_stderr("marked down for 0.5 s");
    let _b = Backend::start_on("b", port);
    wait_until("backend b to be used again", || {
        get(proxy.addr, "/whoami").text() == "b\n"
    });
    proxy.wait_stderr(&format!("backend 127.0.0.1:{port} is up again"));
}

#[test]
fn idempotent_requests_are_retried_but_post_is_never_replayed() {
    // Reads the request, then hangs up without a word.
    let closer = RawBackend::start(b"");
    let good = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![closer.addr.to_string(), good.addr.to_string()])
        .config("max_fails = 100\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    // GET: tried on `closer`, which fails before answering; sent to `good`.
    assert_eq!(client.get("/one").text(), "ok");
    // PUT with a small body: kept, so it can be sent again.
    client.send(b"PUT /two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(client.response("PUT").text(), "ok");
    // POST: reached `closer`, may have had an effect there: 502, no replay.
    client.send(b"POST /three HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    let r = client.response("POST");
    assert_eq!(r.status, 502);
    let seen_good = good.seen.lock().unwrap().clone();
    let seen_closer = closer.seen.lock().unwrap().clone();
    assert!(
        seen_good.iter().any(|h| h.starts_with("GET /one ")),
        "{seen_good:?}"
    );
    assert!(
        seen_good.iter().any(|h| h.starts_with("PUT /two ")),
        "{seen_good:?}"
    );
    assert!(
        !seen_good.iter().any(|h| h.contains("POST")),
        "POST replayed: {seen_good:?}"
    );
    assert!(
        seen_closer.iter().any(|h| h.starts_with("POST /three ")),
        "{seen_closer:?}"
    );
    proxy.wait_stderr("closed without a response");
}

#[test]
fn a_silent_backend_is_504_and_a_malformed_one_502() {
    let slow = Backend::start("slow");
    let proxy = ProxyOptions::for_addrs(vec![slow.addr.to_string()])
        .config("backend_timeout = 0.5\nmax_fails = 100\n")
        .start();
    let r = get(proxy.addr, "/slow?ms=5000");
    assert_eq!(r.status, 504);
    proxy.wait_stderr("response: timed out");
    // Silent after its head, before the body's first byte: the client has
    // seen nothing yet, so it gets the 504 too.
    let mute = RawBackend::start_stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    let proxy = ProxyOptions::for_addrs(vec![mute.addr.to_string()])
        .config("backend_timeout = 0.5\nmax_fails = 100\n")
        .start();
    assert_eq!(get(proxy.addr, "/").status, 504);
    proxy.wait_stderr("response body: timed out");

    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\ncoded\r\n0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
        // A head, then a body that fails before its first byte.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let raw = RawBackend::start(answer);
        let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).config("max_fails = 100\n").start();
        let r = get(proxy.addr, "/");
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(answer));
        assert!(!r.text().contains("127.0.0.1"));
    }
}

#[test]
fn all_backends_down_is_502_with_the_reason_logged() {
    let proxy = ProxyOptions::for_addrs(vec![dead_address(), dead_address()]).start();
    let r = get(proxy.addr, "/");
    assert_eq!(r.status, 502);
    let r = get(proxy.addr, "/");
    assert_eq!(r.status, 502);
    proxy.wait_stderr("no backend is up");
}

#[test]
fn the_health_checker_marks_backends_down_and_up() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = b.addr.port();
    let proxy = ProxyOptions::for_addrs(vec![a.addr.to_string(), b.addr.to_string()])
        .config("health_check = { path = \"/whoami\", interval = 0.2 }\n")
        .start();
    // A checker of its own (named once it runs: the parent does not wait).
    wait_until("the health checker", || {
        proxy.tasks_named("health checker") == 1
    });
    drop(b);
    proxy.wait_stderr(&format!("health check: backend 127.0.0.1:{port} is down"));
    // No client request had to fail for it to be skipped.
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/whoami").text(), "a\n");
    }
    let _b = Backend::start_on("b", port);
    proxy.wait_stderr(&format!(
        "health check: backend 127.0.0.1:{port} is up again"
    ));
    let names: Vec<String> = (0..4).map(|_| get(proxy.addr, "/whoami").text()).collect();
    assert_eq!(names.iter().filter(|n| *n == "b\n").count(), 2, "{names:?}");
    let refused = format!("]: backend 127.0.0.1:{port}: connect");
    assert!(
        proxy.stderr.containing(&refused).is_empty(),
        "a client request was refused"
    );
}

#[test]
fn killing_a_backend_under_load_loses_no_request() {
    let backends = Backend::start_many(3);
    let victim_port = backends[1].addr.port();
    let victim_name = backends[1].addr.to_string();
    let proxy = ProxyOptions::for_addrs(backends.iter().map(|b| b.addr.to_string()).collect())
        .config("fail_timeout = 0.5\n")
        .start();
    let mut backends: Vec<Option<Backend>> = backends.into_iter().map(Some).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    const CLIENTS: usize = 20;
    // A bound, not a target: the run stops once the recovery is seen.
    const MAX_PER_CLIENT: usize = 5_000;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (done, errors, stop, addr) =
                (done.clone(), errors.clone(), stop.clone(), proxy.addr);
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut names = Vec::new();
                for _ in 0..MAX_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = client.get("/whoami");
                    if r.status != 200 {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    names.push(r.text());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                names
            })
        })
        .collect();
    wait_until("1,500 requests", || done.load(Ordering::Relaxed) >= 1_500);
    backends[1]
        .as_mut()
        .unwrap()
        .process
        .signal(Signal::SIGKILL);
    backends[1] = None;
    wait_until("3,000 requests", || done.load(Ordering::Relaxed) >= 3_000);
    backends[1] = Some(Backend::start_on("b2", victim_port));
    proxy.wait_stderr(&format!("backend {victim_name} is up again"));
    let after_recovery = done.load(Ordering::Relaxed);
    let target = (after_recovery + 500).clamp(5_000, CLIENTS * MAX_PER_CLIENT);
    wait_until("5,000 requests, 500 of them after the recovery", || {
        done.load(Ordering::Relaxed) >= target
    });
    stop.store(true, Ordering::Relaxed);
    let names: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(names.len() >= 5_000, "{} requests", names.len());
    assert_eq!(errors.load(Ordering::Relaxed), 0, "client-visible errors");
    assert!(
        names.iter().any(|n| n == "b2\n"),
        "the restarted backend served again"
    );
    proxy.wait_stderr(&format!("backend {victim_name} marked down"));
}

#[test]
fn a_lone_backend_is_never_marked_down() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // fail_timeout far beyond the test's patience: were the lone backend
    // marked down, it would not be asked again in time.
    let proxy = ProxyOptions::for_addrs(vec![format!("127.0.0.1:{port}")])
        .config("fail_timeout = 3600\n")
        .start();
    assert_eq!(get(proxy.addr, "/whoami").status, 502);
    let _back = Backend::start_on("back", port);
    assert_eq!(get(proxy.addr, "/whoami").text(), "back\n");
    assert!(proxy.stderr.containing("marked down").is_empty());
}

#[test]
fn backend_connections_are_kept_for_later_requests() {
    let backend = Backend::start("kept");
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    for _ in 0..20 {
        assert_eq!(client.get("/whoami").text(), "kept\n");
    }
    // The serving process's sockets: the client's, and one backend
    // connection that served all twenty (one per request would leave only
    // the client's), and the listener unless it is a forked child.
    let log = proxy.wait_log(20);
    let server = log_pid(&log[19]);
    let sockets = |pid: i32| {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .filter_map(|l| {
                l.strip_prefix("socket:[")
                    .map(|s| s.trim_end_matches(']').to_string())
            })
            .collect();
        inodes.len()
    };
    let listener = usize::from(model() != "fork");
    assert_eq!(sockets(server), 2 + listener);
    // A POST is never sent on a kept connection, nor leaves one behind.
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(client.response("POST").text(), "hi");
    let seen = client.get("/headers").text();
    assert!(
        !seen.contains("Connection: close"),
        "a GET asks to keep the connection: {seen}"
    );
}

/// A backend that answers one request a connection without saying
/// `Connection: close`: each kept connection is closed under the next
/// request, which goes again on a new one, unseen by the client and with
/// no word said.
#[test]
fn a_kept_connection_the_backend_closed_is_replaced_unseen() {
    let once = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = ProxyOptions::for_addrs(vec![once.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    for _ in 0..10 {
        assert_eq!(client.get("/").text(), "ok");
    }
    assert!(proxy.wait_log(10).iter().all(|l| l.contains(" 200 ")));
    assert_eq!(once.seen.lock().unwrap().len(), 10);
    let said = proxy.stderr.containing("backend");
    assert!(said.is_empty(), "{said:?}");
}

/// What a backend sends on a connection idle in pibl's keeping (a 408 as
/// it gives up on it) is never taken for the answer to the next request.
/// The connection is idle longer than the second within which pibl uses a
/// kept connection without a look: that idle time is what is tested.
#[test]
fn bytes_unasked_on_an_idle_kept_connection_are_never_an_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (give_up, given_up) = std::sync::mpsc::channel::<()>();
    let (gave_up, has_given_up) = std::sync::mpsc::channel::<()>();
    thread::spawn(move || {
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
        ];
        for (n, answer) in answers.into_iter().enumerate() {
            let (mut conn, _) = listener.accept().unwrap();
            read_head(&mut conn);
            conn.write_all(answer).unwrap();
            if n == 0 {
                given_up.recv().unwrap();
                let timeout = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n";
                conn.write_all(timeout).unwrap();
                drop(conn);
                gave_up.send(()).unwrap();
            }
        }
    });
    let proxy = ProxyOptions::for_addrs(vec![addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/").text(), "first");
    let answered = Instant::now();
    give_up.send(()).unwrap();
    has_given_up.recv().unwrap();
    // The input under test: the connection idle longer than that second.
    let idle = Duration::from_millis(1200);
    thread::sleep(idle.saturating_sub(answered.elapsed()));
    assert_eq!(client.get("/").text(), "second");
}

/// Diagnostics written by many processes at once arrive as whole lines on
/// the standard error they share, never pieces of two run together.
#[test]
fn diagnostics_from_many_clients_at_once_are_whole_lines() {
    let backends = Backend::start_many(2);
    let dead = dead_address();
    let mut list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    list.push(dead.clone());
    // Never marked down: every third request finds it refusing, and says so.
    let proxy = ProxyOptions::for_addrs(list)
        .config("max_fails = 1000000\n")
        .start();
    let addr = proxy.addr;
    let clients: Vec<_> = (0..40)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(get(addr, "/whoami").status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    proxy.wait_log(400);
    let refused = format!("]: backend {dead}: connect: Connection refused");
    let lines = proxy.stderr.wait_for(100);
    let mut seen = 0;
    for line in &lines {
        assert!(line.starts_with("pibl["), "a line cut or mixed: {line:?}");
        if line.contains("connect") {
            assert!(line.ends_with(&refused), "a line cut or mixed: {line:?}");
            seen += 1;
        }
    }
    assert!(seen >= 100, "{seen} refusals reported");
}

/// pibl out of file descriptors cannot connect to any backend: the client
/// gets 503, no backend is blamed (marked down) for pibl's shortage, and
/// all is well once descriptors are free again.  A connection takes a
/// descriptor as it is accepted, a new thread two (its epoll set and log
/// file): started holding none, one or two more files, pibl runs out at
/// each of the three in turn.
#[test]
fn running_out_of_descriptors_is_503_and_blames_no_backend() {
    for held in ["", " 7</dev/null", " 7</dev/null 8</dev/null"] {
        out_of_descriptors(&format!("ulimit -n 64 && exec{held}"));
    }
}

fn out_of_descriptors(setup: &str) {
    let backends = Backend::start_many(2);
    let proxy = ProxyOptions::new(&backends)
        .args(&["--model", "thread"])
        .setup(setup)
        .start();
    proxy.wait_stderr("open files limit (64)");
    let began = Instant::now();
    // Connections that began a request, one descriptor each, until pibl
    // has none left to accept with or to start a thread with.
    let mut waiting: Vec<Client> = (0..80)
        .map(|_| {
            let mut client = Client::connect(proxy.addr);
            client.send(b"GET / HTTP/1.1\r\n");
            client
        })
        .collect();
    proxy.wait_stderr("Too many open files; pausing");
    // A thread that could not start gave back the one descriptor it got,
    // if it got one: then the first request takes it for its backend
    // connection, which its thread keeps for the next, and the second
    // finds none.
    let answer = |client: &mut Client| {
        client.send(b"Host: t\r\n\r\n");
        client.response("GET").status
    };
    let mut served = 0;
    let mut status = answer(&mut waiting[0]);
    if status == 200 {
        served = 1;
        status = answer(&mut waiting[1]);
    }
    assert_eq!(status, 503, "{setup}");
    // Both backends tried, each said on standard error; a backend marked
    // down would have been said between the two.
    let refused = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("connect: Too many open files"))
            .count()
    };
    wait_until("both backends tried", || {
        refused(&proxy.stderr.snapshot()) >= 2
    });
    let said = proxy.stderr.containing("marked down");
    assert!(said.is_empty(), "{said:#?}");

    // Every connection closed and logged (400: a head cut short), its
    // descriptors free: the next request is served.
    drop(waiting);
    let log = proxy.wait_log(80);
    assert_eq!(
        log.iter().filter(|l| l.contains("\" 400 ")).count(),
        79 - served,
        "{log:#?}"
    );
    assert_eq!(get(proxy.addr, "/").status, 200);
    // Short of descriptors, pibl paused between tries (a second to start
    // a thread, a tenth to accept), where it once tried again at once,
    // thousands of times a second, each said.
    let pauses = proxy.stderr.containing("; pausing").len();
    let most = 10 + 50 * began.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        pauses <= most,
        "{setup}: {pauses} pauses said, {most} at most"
    );
}

/// A response whose Transfer-Encoding does not end in chunked is read
/// until the backend closes (RFC 9112 §6.3, rule 4) and relayed without
/// that field, framed by pibl: chunked for an HTTP/1.1 client, the close
/// for an HTTP/1.0 one.  (For a request the rule stays strict: 400.)
#[test]
fn a_response_whose_coding_is_not_chunked_is_read_until_the_close() {
    let raw = RawBackend::start(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\ncoded bytes");
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = client.response("GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "coded bytes");
    assert_eq!(client.get("/").text(), "coded bytes", "kept alive");

    let mut old = Client::connect(proxy.addr);
    old.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = old.response("GET");
    assert_eq!((r.status, r.header("transfer-encoding")), (200, None));
    assert_eq!(r.text(), "coded bytes");
    assert!(old.is_closed());
}
