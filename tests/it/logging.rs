//! The access log: one well-formed line per exchange, in the file and on
//! stdout, never torn or interleaved, whatever the concurrency.

use std::collections::HashSet;
use std::thread;

use nix::sys::signal::Signal;

use crate::util::*;

/// The fields of a line, split as the README documents them.
#[derive(Debug)]
struct Line {
    client: String,
    request: String,
    status: u16,
    bytes: u64,
    user_agent: String,
    upstream: String,
    seconds: f64,
    pid: i32,
}

fn parse(line: &str) -> Line {
    // 127.0.0.1 - - [23/Nov/2026:19:26:19 +0000] "GET / HTTP/1.1" 200 176 "-" "ua" 127.0.0.1:9001 0.000 3860 - -
    let (client, rest) = line
        .split_once(" - - [")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (time, rest) = rest.split_once("] \"").unwrap();
    assert_eq!(time.len(), 26, "time {time:?}");
    assert!(time.ends_with(" +0000"));
    let (request, rest) = rest.split_once("\" ").unwrap();
    let parts: Vec<&str> = rest.split(' ').collect();
    assert_eq!(parts.len(), 9, "{line:?}");
    assert_eq!(parts[7], "-", "no cache configured");
    assert_eq!(parts[8], "-", "plain HTTP");
    assert_eq!(parts[2], "\"-\"");
    Line {
        client: client.to_string(),
        request: request.to_string(),
        status: parts[0].parse().unwrap(),
        bytes: parts[1].parse().unwrap(),
        user_agent: parts[3].trim_matches('"').to_string(),
        upstream: parts[4].to_string(),
        seconds: parts[5].parse().unwrap(),
        pid: parts[6].parse().unwrap(),
    }
}

#[test]
fn fifty_clients_times_twenty_requests_make_a_thousand_whole_lines() {
    fifty_times_twenty("");
}

/// The same with each process holding its lines in a small buffer: a
/// full buffer goes out in one locked write, whole lines only.
#[test]
fn buffered_lines_from_fifty_clients_are_as_whole() {
    fifty_times_twenty("[log]\nbuffer = 1000\nflush = 0.2\n");
}

fn fifty_times_twenty(extra: &str) {
    let backends = Backend::start_many(3);
    let mut options = ProxyOptions::new(&backends);
    options.extra = extra.into();
    let proxy = options.start();
    let addr = proxy.addr;
    let workers: Vec<_> = (0..50)
        .map(|c| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for r in 0..20 {
                    client.send(
                        format!("GET /whoami?client={c}&request={r} HTTP/1.1\r\nHost: t\r\nUser-Agent: tester-{c}\r\n\r\n")
                            .as_bytes(),
                    );
                    assert_eq!(client.response("GET").status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let stdout = proxy.wait_log(1000);
    proxy.wait_settled();
    let file = proxy.log_lines();
    assert_eq!(proxy.stdout.snapshot().len(), 1000);
    assert_eq!(file.len(), 1000);
    let mut from_file: Vec<&String> = file.iter().collect();
    let mut from_stdout: Vec<&String> = stdout.iter().collect();
    from_file.sort();
    from_stdout.sort();
    assert_eq!(from_file, from_stdout, "the same lines in both places");

    let upstreams: HashSet<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut requests = HashSet::new();
    for line in &file {
        let l = parse(line);
        assert_eq!(l.client, "127.0.0.1");
        assert_eq!((l.status, l.bytes), (200, 3), "{line}");
        assert!(upstreams.contains(&l.upstream), "{line}");
        assert!(l.seconds < 60.0 && l.pid > 0);
        let client = l
            .request
            .split("client=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        assert_eq!(l.user_agent, format!("tester-{client}"));
        assert!(requests.insert(l.request), "duplicate line {line}");
    }
    assert_eq!(requests.len(), 1000);
}

#[test]
fn refused_requests_are_logged_too() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(client.response("GET").status, 400);
    let line = parse(&proxy.wait_log(1)[0]);
    assert_eq!(
        (line.request.as_str(), line.status, line.upstream.as_str()),
        ("GET / HTTP/1.1", 400, "-")
    );
}

/// Held lines go out when they have waited `flush` seconds, though the
/// client stays connected and idle.
#[test]
fn held_lines_go_out_after_flush_while_the_client_idles() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    options.extra = "[log]\nbuffer = 65536\nflush = 1.5\n".into();
    let proxy = options.start();
    let mut client = Client::connect(proxy.addr);
    for _ in 0..3 {
        assert_eq!(client.get("/whoami").status, 200);
    }
    assert!(proxy.log_lines().is_empty(), "held, not written at once");
    assert_eq!(proxy.wait_log(3).len(), 3);
    assert_eq!(proxy.log_lines().len(), 3);
    assert_eq!(client.get("/whoami").status, 200, "still connected");
}

/// Held lines are written when their process or thread lets go of its
/// log: a child at its exit, a prefork worker or a spare thread as pibl
/// stops.
#[test]
fn held_lines_are_written_when_pibl_stops() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    options.extra = "[log]\nbuffer = 65536\nflush = 600\n".into();
    let mut proxy = options.start();
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    proxy.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.process.wait_exit().success());
    assert_eq!(proxy.log_lines().len(), 5);
}

/// A log file the file system refuses (here past the file-size limit,
/// ulimit -f) is said once, not once a line: on a full disk under load, a
/// diagnostic per request would bury everything else said.  Every line
/// still goes to standard output.
#[test]
fn a_log_file_that_cannot_be_written_is_said_once_not_per_line() {
    let backends = Backend::start_many(1);
    // 512 bytes: a few lines, then every write fails.
    let mut proxy = ProxyOptions::new(&backends).ulimit("-f 1").start();
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    assert_eq!(proxy.stdout.wait_for(20).len(), 20);
    let written = proxy.log_lines().len();
    assert!(written < 20, "{written} lines fit under 512 bytes");
    proxy.process.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.process.wait_exit().success());
    let stderr = proxy.stderr.wait_end();
    let said: Vec<_> = stderr
        .iter()
        .filter(|l| l.contains("cannot write log file"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr:#?}");
    assert!(said[0].contains("File too large"), "{said:?}");
}

/// Whether task `pid` waits in flock(2) now.
fn in_flock(pid: i32) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    syscall.split(' ').next() == Some(&libc::SYS_flock.to_string())
}

/// Whether process `pid` has a signal not yet delivered (its handler not
/// yet run).
fn signal_pending(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().any(|line| {
        let pending = line
            .strip_prefix("SigPnd:")
            .or(line.strip_prefix("ShdPnd:"));
        pending.is_some_and(|mask| !mask.trim().trim_start_matches('0').is_empty())
    })
}

/// A prefork worker told to stop writes its held lines under the log's
/// lock; a second stop signal while it waits for the lock (Ctrl-C at a
/// terminal signals every process of the group, and the parent passes the
/// stop on too) must not make it give them up.
#[test]
fn a_second_stop_signal_while_waiting_for_the_log_lock_loses_no_line() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    options.extra = "[log]\nbuffer = 65536\nflush = 600\n".into();
    let mut proxy = options.args(&["--model", "prefork"]).start();
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
    // Held by the worker that served it, until the worker lets go of its
    // log; meanwhile the lock is held here, as another writer would.
    let log = std::fs::File::open(proxy.dir.path().join("pibl.log")).unwrap();
    fs2::FileExt::lock_exclusive(&log).unwrap();
    assert!(proxy.log_lines().is_empty(), "held, not written at once");
    proxy.process.signal(Signal::SIGTERM);
    let mut waiting = Vec::new();
    wait_until("a worker to wait for the log's lock", || {
        waiting = proxy
            .children()
            .0
            .into_iter()
            .filter(|&p| in_flock(p))
            .collect();
        !waiting.is_empty()
    });
    for &pid in &waiting {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT).unwrap();
    }
    // Let go only once the signal has interrupted the wait.
    wait_until("the workers to take the signal", || {
        !waiting.iter().any(|&pid| signal_pending(pid))
    });
    fs2::FileExt::unlock(&log).unwrap();
    assert!(proxy.process.wait_exit().success());
    assert_eq!(proxy.log_lines().len(), 1, "{:?}", proxy.stderr.wait_end());
}

/// A client that resets its kept connection between requests (as wrk does
/// at its end, or a browser dropping one) asked nothing: no line is logged
/// for it, as nginx and HAProxy log none.
#[test]
fn a_connection_reset_between_requests_logs_no_line() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    // One connection served at a time: the second is served only once the
    // first is done with, so its line comes after any the first made.
    options.extra = serving_at_most(1);
    let proxy = options.start();
    let mut first = Client::connect(proxy.addr);
    assert_eq!(first.get("/whoami").status, 200);
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(first.stream(), nix::sys::socket::sockopt::Linger, &linger)
        .unwrap();
    drop(first); // closed with a reset
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
    let lines = proxy.wait_log(2);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"GET /whoami HTTP/1.1\" 200 ")),
        "{lines:#?}"
    );
}
