//! Never down: a binary upgrade (SIGUSR2) under load with no failed
//! request and no refused connection, and one with a broken pibl.conf that
//! leaves the old parent serving; sockets held by systemd
//! (`systemd-socket-activate`); readiness told to a notify socket.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::*;

/// What a bounded load saw: requests answered 200, and failures (any
/// other outcome: an error status, a connection refused, a reset before a
/// whole response) with what they were.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.lock().unwrap().push(what);
    }
}

/// One GET on `stream`: the status, and whether the server keeps the
/// connection.  `None` when the connection closed before a byte of the
/// response: a kept connection the server closed as the request went,
/// which a client sends again on a new one (RFC 9112 §9.3.1).
fn exchange(stream: &TcpStream, path: &str) -> std::io::Result<Option<(u16, bool)>> {
    (&*stream).write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head[9..12].parse().unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    if !reader.buffer().is_empty() {
        return Err(std::io::Error::other("bytes after the response"));
    }
    let close = head.to_ascii_lowercase().contains("connection: close");
    Ok(Some((status, !close)))
}

/// Keep-alive clients (`kept`) and new-connection clients (`fresh`) asking
/// `addr` for /whoami until `stop`.
fn load(
    addr: SocketAddr,
    kept: usize,
    fresh: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, Vec<thread::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let mut handles = Vec::new();
    for i in 0..kept + fresh {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        let keep = i < kept;
        handles.push(thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            let mut retried = false;
            while !stop.load(Ordering::Relaxed) {
                let stream = match conn.take() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr) {
                        Ok(s) => {
                            s.set_read_timeout(Some(PATIENCE)).unwrap();
                            retried = true; // a new connection is not retried
                            s
                        }
                        Err(e) => {
                            tally.fail(format!("connect: {e}"));
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    },
                };
                match exchange(&stream, "/whoami") {
                    Ok(Some((200, again))) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if keep && again {
                            conn = Some(stream);
                            retried = false;
                        }
                    }
                    Ok(Some((status, _))) => tally.fail(format!("status {status}")),
                    Ok(None) if !retried => retried = true,
                    Ok(None) => tally.fail("closed before a response".into()),
                    Err(e) => tally.fail(format!("{e}")),
                }
            }
        }));
    }
    (tally, handles)
}

fn pid_in(proxy: &Proxy, file: &str) -> Option<i32> {
    std::fs::read_to_string(proxy.dir.path().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    stat_fields(&format!("/proc/{pid}/stat")).is_some_and(|f| f[0] != "Z")
}

/// Stops a parent that is not the test's child: SIGTERM, then waits for it.
struct Stray(i32);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while alive(self.0) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn sigusr2_upgrades_the_binary_without_failing_a_request() {
    let backends = Backend::start_many(2);
    let mut proxy = ProxyOptions::new(&backends)
        .config("[status]\nport = 0\n")
        .args(&["--pid-file", "pibl.pid"])
        .start();
    let old = proxy.pid();
    assert_eq!(pid_in(&proxy, "pibl.pid"), Some(old));
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = load(proxy.addr, 4, 2, Arc::clone(&stop));
    thread::sleep(Duration::from_millis(1200));
    let (old_children, _) = proxy.children();
    proxy.process.signal(Signal::SIGUSR2);
    proxy.wait_stderr("upgrade: serving; the old parent");
    assert_eq!(
        proxy.process.wait_exit().code(),
        Some(0),
        "the old parent drains and exits"
    );
    let new = pid_in(&proxy, "pibl.pid").expect("the new parent's pid file");
    let _stray = Stray(new);
    assert_ne!(new, old);
    assert!(!proxy.dir.path().join("pibl.pid.oldbin").exists());
    thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let failed = tally.failed.lock().unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    assert!(ok > 50, "only {ok} requests");
    // The new parent serves on the same ports, status page included.
    assert_eq!(get(proxy.addr, "/whoami?after").status, 200);
    let status = proxy.status_addr.unwrap();
    assert_eq!(get(status, "/healthz").text(), "ok\n");
    let mut line = String::new();
    wait_until("the request after the upgrade logged", || {
        line = proxy.stdout.containing("/whoami?after ").concat();
        !line.is_empty()
    });
    // Served by the new tree: the new parent (threads), one of its
    // children, which may be gone already (fork) — not the old tree.
    let served_by = log_pid(&line);
    assert!(
        served_by != old && !old_children.contains(&served_by),
        "{line}"
    );
    if model() != "fork" {
        assert!(
            served_by == new || parent_of(served_by) == Some(new),
            "{line}"
        );
    }
    wait_until("the old tree gone", || {
        !old_children.iter().any(|&p| alive(p))
    });
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(&format!("/proc/{pid}/stat"))?[1].parse().ok()
}

#[test]
fn an_upgrade_with_a_broken_config_leaves_the_old_parent_serving() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends)
        .args(&["--pid-file", "pibl.pid"])
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = load(proxy.addr, 2, 1, Arc::clone(&stop));
    std::fs::write(proxy.dir.path().join("pibl.conf"), "backends = [\n").unwrap();
    proxy.process.signal(Signal::SIGUSR2);
    let said = proxy.wait_stderr("before it served; still serving");
    assert!(said.contains("exited with status 78"), "{said}");
    assert!(
        proxy.stderr.containing("pibl.conf:").len() == 1,
        "the new binary said why"
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let failed = tally.failed.lock().unwrap();
    let first: Vec<_> = failed.iter().take(5).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first {first:?}",
        failed.len()
    );
    assert_eq!(pid_in(&proxy, "pibl.pid"), Some(proxy.pid()));
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
    assert!(alive(proxy.pid()));
}

#[test]
fn sockets_from_systemd_are_served_and_not_bound_again() {
    let backends = Backend::start_many(1);
    let port = free_port();
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join("pibl.conf"),
        format!(
            "listen = \"127.0.0.1\"\nport = {port}\nbackends = [\"{}\"]\n",
            backends[0].addr
        ),
    )
    .unwrap();
    let child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            PIBL,
            "--model",
            &model(),
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    let mut activator = Process { child };
    let stderr = Lines::collect(activator.child.stderr.take().unwrap());
    // Held by systemd-socket-activate: a connection now waits in its queue,
    // and starts pibl, which would fail to bind the port itself.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("the activator listening", || {
        TcpStream::connect(addr).is_ok()
    });
    let r = get(addr, "/whoami");
    assert_eq!(r.status, 200, "{:?}", stderr.snapshot());
    assert!(
        stderr.containing("listening on 127.0.0.1:").len() == 1,
        "{:?}",
        stderr.snapshot()
    );
    activator.signal(Signal::SIGTERM);
    assert_eq!(activator.wait_exit().code(), Some(0));
}

#[test]
fn readiness_reload_and_stop_are_told_to_the_notify_socket() {
    let backends = Backend::start_many(1);
    let dir = TempDir::new();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut proxy = ProxyOptions::new(&backends)
        .setup(&format!("export NOTIFY_SOCKET={}", path.display()))
        .start();
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), format!("READY=1\nMAINPID={}", proxy.pid()));
    proxy.process.signal(Signal::SIGHUP);
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    proxy.process.signal(Signal::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
}

/// `openssl s_client` to `port` with `session` (`-sess_out` or
/// `-sess_in`): what it printed.
fn s_client(proxy: &Proxy, port: u16, session: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile", "ca.pem", "-ign_eof"])
        .args([session, "session"])
        .current_dir(proxy.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_sessions_and_backend_health_survive_an_upgrade() {
    let backends = Backend::start_many(2);
    let dir = TempDir::new();
    let pki = crate::tls::Pki::new("Test CA");
    pki.leaf(&["localhost"], dir.path(), "site");
    pki.write_ca(dir.path(), "ca.pem");
    let mut proxy = ProxyOptions::new(&backends)
        .config("[tls]\nport = 0\ncert = \"site.pem\"\nkey = \"site.key\"\n")
        .args(&["--pid-file", "pibl.pid"])
        .start_in(dir);
    let tls_port = proxy.tls_addr.unwrap().port();
    let first = s_client(&proxy, tls_port, "-sess_out");
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    // A backend found dead, marked down by the failure.
    let dead = backends[0].addr.to_string();
    backends[0].process.signal(Signal::SIGKILL);
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    proxy.wait_stderr(&format!("backend {dead} marked down"));
    let tried = |proxy: &Proxy| proxy.stderr.containing(&format!("backend {dead}: ")).len();
    let tried_before = tried(&proxy);
    proxy.process.signal(Signal::SIGUSR2);
    proxy.wait_stderr("upgrade: serving; the old parent");
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
    let _stray = Stray(pid_in(&proxy, "pibl.pid").unwrap());
    // The new parent opens tickets the old one sealed…
    let second = s_client(&proxy, tls_port, "-sess_in");
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
    assert!(second.contains("HTTP/1.1 200"), "{second}");
    // …and does not try the backend the old one had found down.
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    assert_eq!(tried(&proxy), tried_before, "{:?}", proxy.stderr.snapshot());
}
