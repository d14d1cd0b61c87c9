//! pibl as a service: graceful and immediate stop, reload, log reopen,
//! nohup, pid file, privilege drop, syslog.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

fn options(backends: &[&Backend], extra: &str) -> ProxyOptions {
    ProxyOptions::for_addrs(backends.iter().map(|b| b.addr.to_string()).collect()).config(extra)
}

#[test]
fn sigterm_lets_a_200_mib_response_in_flight_complete() {
    let backends = Backend::start_many(1);
    let mut proxy = Proxy::start(&backends);
    let mut idle = Client::connect(proxy.addr);
    assert_eq!(idle.get("/whoami").status, 200);
    let mut busy = Client::connect(proxy.addr);
    let size: u64 = 200 * 1024 * 1024;
    busy.send(format!("GET /big?kb={} HTTP/1.1\r\nHost: t\r\n\r\n", size / 1024).as_bytes());
    assert_eq!(busy.head().status, 200);

    proxy.process.signal(Signal::SIGTERM);
    // The idle keep-alive connection is closed without a word...
    assert!(idle.is_closed());
    // ...the response in flight arrives whole, byte for byte...
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let n = busy.reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(b, ((at % 65_536) % 251) as u8, "byte {at}");
        }
        offset += n as u64;
    }
    // ...and then that connection closes too.
    assert_eq!(offset, size);
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
    assert!(
        std::net::TcpStream::connect(proxy.addr).is_err(),
        "still listening"
    );
}

/// A client whose request has reached a backend that answers after 60 s,
/// past the test's patience: a request surely in flight.
fn request_in_flight(extra: &str) -> (Proxy, Client) {
    let backend = RawBackend::start_slow(OK, std::time::Duration::from_secs(60));
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config(extra)
        .start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the request to reach the backend", || {
        !backend.seen.lock().unwrap().is_empty()
    });
    (proxy, client)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// A backend that holds each answer until the test lets it go: `arrived`
/// gives one message per request received, each message on `go` lets one
/// answer go.
struct GatedBackend {
    backend: RawBackend,
    arrived: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

impl GatedBackend {
    fn start() -> GatedBackend {
        let (arrived_tx, arrived) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let (arrived_tx, go_rx) = (Mutex::new(arrived_tx), Mutex::new(go_rx));
        let backend = RawBackend::start_answering(move |_| {
            let _ = arrived_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv();
            OK.to_vec()
        });
        GatedBackend {
            backend,
            arrived,
            go,
        }
    }
}

/// A keep-alive client whose request pibl relays when it is told to stop
/// (or, `reload`, when a reload retires its prefork worker) gets its
/// response with `Connection: close`, and the connection then closes: it
/// knows to take its next request elsewhere, where a connection closed
/// after a keep-alive response may meet that request on its way.  A
/// stopping pibl no longer listens, though a worker or thread still
/// serves: a new client is refused, not queued to be reset at the exit.
fn winding_down_closes_after_the_response(args: &[&str], tell: impl Fn(&Proxy), told: &str) {
    let gated = GatedBackend::start();
    let options = ProxyOptions::for_addrs(vec![gated.backend.addr.to_string()]);
    let mut proxy = options.args(args).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    gated.arrived.recv().unwrap();
    tell(&proxy);
    proxy.wait_stderr(told);
    if told == STOPPING {
        let late = std::net::TcpStream::connect(proxy.addr).map_err(|e| e.kind());
        assert_eq!(late.err(), Some(std::io::ErrorKind::ConnectionRefused));
    }
    gated.go.send(()).unwrap();
    let response = client.response("GET");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.is_closed());
    if told.starts_with("stopping") {
        assert_eq!(proxy.process.wait_exit().code(), Some(0));
    } else {
        // The new workers serve on.
        gated.go.send(()).unwrap();
        assert_eq!(get(proxy.addr, "/second").status, 200);
    }
}

/// Tells pibl to stop, or to reload; what it says when it has been told;
/// the arguments that run the prefork model, whose reload retires workers.
fn stop(proxy: &Proxy) {
    proxy.process.signal(Signal::SIGTERM);
}
fn reload(proxy: &Proxy) {
    proxy.process.signal(Signal::SIGHUP);
}
const STOPPING: &str = "stopping: connections close";
const RELOADED: &str = "configuration reloaded";
const PREFORK: [&str; 2] = ["--model", "prefork"];

#[test]
fn a_response_made_as_pibl_stops_says_connection_close() {
    winding_down_closes_after_the_response(&[], stop, STOPPING);
}

#[test]
fn a_response_made_as_a_reload_retires_its_worker_says_connection_close() {
    winding_down_closes_after_the_response(&PREFORK, reload, RELOADED);
}

/// A keep-alive client idle when pibl is told to stop (or, `reload`, when a
/// reload retires its prefork worker) that sends its next request just
/// then is answered, with `Connection: close`, rather than meeting a
/// connection closed under it.
fn asking_just_as_told_is_answered(args: &[&str], tell: impl Fn(&Proxy), told: &str) {
    let backend = Backend::start("a");
    let options = ProxyOptions::new(std::slice::from_ref(&backend));
    let proxy = options.args(args).start();
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/whoami").status, 200);
    tell(&proxy);
    proxy.wait_stderr(told);
    let response = client.get("/whoami");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.is_closed());
}

#[test]
fn a_kept_connection_asking_as_pibl_stops_is_answered() {
    asking_just_as_told_is_answered(&[], stop, STOPPING);
}

#[test]
fn a_kept_connection_asking_as_a_reload_retires_its_worker_is_answered() {
    asking_just_as_told_is_answered(&PREFORK, reload, RELOADED);
}

#[test]
fn shutdown_timeout_bounds_the_wait_for_stragglers() {
    let (mut proxy, mut client) = request_in_flight("shutdown_timeout = 1\n");
    proxy.process.signal(Signal::SIGTERM);
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
    assert!(client.is_closed());
    proxy.wait_stderr("still busy after shutdown_timeout");
}

#[test]
fn sigquit_stops_at_once() {
    // Were SIGQUIT graceful, the exit would take 60 s, past the test's patience.
    let (mut proxy, mut client) = request_in_flight("shutdown_timeout = 60\n");
    proxy.process.signal(Signal::SIGQUIT);
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
    assert!(client.is_closed());
}

#[test]
fn stopped_and_continued_it_serves_on_without_complaint() {
    // A shell's ^Z and fg: after SIGSTOP and SIGCONT some waits, epoll_wait(2)
    // among them, fail with EINTR though no handler ran (signal(7)).
    let backend = Backend::start("a");
    let proxy = Proxy::start(std::slice::from_ref(&backend));
    assert_eq!(get(proxy.addr, "/").status, 200);
    proxy.wait_settled();
    let mut idle = Client::connect(proxy.addr);
    assert_eq!(idle.get("/").status, 200);
    let mut tasks = proxy.children().0;
    tasks.push(proxy.pid());
    // A prefork worker may retire meanwhile: a task gone is no failure.
    let signal_all = |signal| {
        for &pid in &tasks {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    };
    let stopped = |pid: &i32| {
        stat_fields(&format!("/proc/{pid}/stat")).is_none_or(|f| f[0] == "T" || f[0] == "Z")
    };
    signal_all(Signal::SIGSTOP);
    wait_until("the proxy to stop", || tasks.iter().all(stopped));
    signal_all(Signal::SIGCONT);
    assert_eq!(idle.get("/").status, 200);
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    let complaints = proxy.stderr.containing("nterrupted");
    assert!(complaints.is_empty(), "{complaints:?}");
}

#[test]
fn sighup_reload_changes_backends_for_new_connections_only() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = options(&[&a], "").start();
    let mut kept = Client::connect(proxy.addr);
    assert_eq!(kept.get("/whoami").text(), "a\n");

    proxy.reload(&options(&[&b], ""));
    if model() == "prefork" {
        // Workers of the old configuration stop between requests, as
        // Apache's do at a graceful restart: the kept connection closes.
        assert!(kept.is_closed());
    }
    assert_eq!(
        get(proxy.addr, "/whoami").text(),
        "b\n",
        "new connections use the new list"
    );
    if model() == "prefork" {
        return;
    }
    for _ in 0..3 {
        assert_eq!(
            kept.get("/whoami").text(),
            "a\n",
            "an existing child keeps its list"
        );
    }
}

/// `options`' configuration, listening on 127.0.0.2 instead.
fn moved(options: ProxyOptions) -> String {
    options
        .config_text()
        .replace("listen = \"127.0.0.1\"", "listen = \"127.0.0.2\"")
}

/// Whether `addr` refuses a connection: not a listen queue that takes it
/// (or, full, drops it) where no one will accept it.
fn refuses(addr: std::net::SocketAddr) -> bool {
    let tried = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    matches!(tried, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn sighup_moving_the_address_stops_the_old_listener_at_once() {
    let a = Backend::start("a");
    let proxy = options(&[&a], "").start();
    let old = proxy.addr;
    // A connection kept alive across the reload, still served where the
    // model keeps such connections.
    let mut kept = Client::connect(old);
    assert_eq!(kept.get("/whoami").status, 200);

    fs::write(
        proxy.dir.path().join("pibl.conf"),
        moved(options(&[&a], "")),
    )
    .unwrap();
    proxy.process.signal(Signal::SIGHUP);
    let line = proxy.wait_stderr("configuration reloaded");
    let new: std::net::SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(new.ip().to_string(), "127.0.0.2");
    assert_eq!(get(new, "/whoami").text(), "a\n");
    // Not left listening, with clients queued where no one accepts.
    wait_until("the old address to refuse connections", || refuses(old));
    if model() != "prefork" {
        assert_eq!(kept.get("/whoami").text(), "a\n");
    }
}

/// A connection still being served holds the old listener, in the prefork
/// model too (the worker's, inherited): the old address refuses all the
/// same, not left listening with clients queued where no one accepts.
#[test]
fn sighup_moving_the_address_stops_the_old_listener_under_a_busy_connection() {
    // An answer that never ends: its connection stays busy.
    let raw = RawBackend::start_stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
    let proxy = ProxyOptions::for_addrs(vec![raw.addr.to_string()]).start();
    let old = proxy.addr;
    let mut busy = std::net::TcpStream::connect(old).unwrap();
    busy.set_read_timeout(Some(PATIENCE)).unwrap();
    busy.write_all(b"GET /stalls HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until("the backend to have the request", || {
        !raw.seen.lock().unwrap().is_empty()
    });
    let options = ProxyOptions::for_addrs(vec![raw.addr.to_string()]);
    fs::write(proxy.dir.path().join("pibl.conf"), moved(options)).unwrap();
    proxy.process.signal(Signal::SIGHUP);
    proxy.wait_stderr("configuration reloaded");
    wait_until("the old address to refuse connections", || refuses(old));
    // And the busy connection is served on.
    let got = read_until(&mut busy, b"half");
    assert!(
        got.ends_with(b"half"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one() {
    let a = Backend::start("a");
    let proxy = options(&[&a], "").start();
    fs::write(
        proxy.dir.path().join("pibl.conf"),
        "backends = [\"127.0.0.1:1\"]\nnonsense = 1\n",
    )
    .unwrap();
    proxy.process.signal(Signal::SIGHUP);
    let line = proxy.wait_stderr("reload refused");
    assert!(
        line.contains("pibl.conf:2: unknown field `nonsense`"),
        "{line}"
    );
    assert_eq!(get(proxy.addr, "/whoami").text(), "a\n");
}

#[test]
fn sighup_rebinds_a_changed_port_or_refuses_a_taken_one() {
    let a = Backend::start("a");
    let dir = TempDir::new();
    let free = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (first, second) = (free(0), free(1));
    let conf = |port: u16| {
        format!(
            "listen = \"127.0.0.1\"\nport = {port}\nbackends = [\"{}\"]\n",
            a.addr
        )
    };
    fs::write(dir.path().join("pibl.conf"), conf(first)).unwrap();
    let child = Command::new(PIBL)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process { child };
    let stderr = process.child.stderr.take().unwrap();
    let lines = Lines::collect(stderr);
    lines.wait_for(1);
    assert_eq!(
        get(format!("127.0.0.1:{first}").parse().unwrap(), "/whoami").text(),
        "a\n"
    );

    fs::write(dir.path().join("pibl.conf"), conf(second)).unwrap();
    process.signal(Signal::SIGHUP);
    assert!(lines.wait_for(2)[1].contains(&format!("listening on 127.0.0.1:{second}")));
    assert_eq!(
        get(format!("127.0.0.1:{second}").parse().unwrap(), "/whoami").text(),
        "a\n"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", first)).is_err(),
        "old port still open"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    fs::write(dir.path().join("pibl.conf"), conf(taken_port)).unwrap();
    process.signal(Signal::SIGHUP);
    let refused = &lines.wait_for(3)[2];
    assert!(
        refused.contains(&format!("reload refused, configuration unchanged: cannot listen on 127.0.0.1:{taken_port}: Address already in use")),
        "{refused}"
    );
    assert_eq!(
        get(format!("127.0.0.1:{second}").parse().unwrap(), "/whoami").text(),
        "a\n"
    );
}

#[test]
fn sigusr1_reopens_the_log_for_rotation() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut kept = Client::connect(proxy.addr);
    kept.get("/whoami?n=1");
    proxy.wait_log(1);
    let log = proxy.dir.path().join("pibl.log");
    fs::rename(&log, proxy.dir.path().join("pibl.log.1")).unwrap();
    proxy.process.signal(Signal::SIGUSR1);
    proxy.wait_stderr("reopening log files");
    kept.get("/whoami?n=2");
    get(proxy.addr, "/whoami?n=3");
    proxy.wait_log(3);
    let old = fs::read_to_string(proxy.dir.path().join("pibl.log.1")).unwrap();
    let new = fs::read_to_string(&log).unwrap();
    assert!(
        old.contains("n=1") && !old.contains("n=2") && !old.contains("n=3"),
        "{old}"
    );
    assert!(
        new.contains("n=2") && new.contains("n=3") && !new.contains("n=1"),
        "{new}"
    );
}

#[test]
fn nohup_with_stdin_closed_and_a_pid_file() {
    let backends = Backend::start_many(1);
    let dir = TempDir::new();
    fs::write(
        dir.path().join("pibl.conf"),
        ProxyOptions::new(&backends).config_text(),
    )
    .unwrap();
    let pid_file = dir.path().join("pibl.pid");
    let mut command = Command::new("nohup");
    command
        .arg(PIBL)
        .args(["--port", "0", "--pid-file"])
        .arg(&pid_file)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: close(2) is async-signal-safe; it runs in the spawned child
    // between fork and exec, leaving standard input closed.
    unsafe {
        command.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    let mut process = Process { child };
    let stdout = Lines::collect(process.child.stdout.take().unwrap());
    let stderr = Lines::collect(process.child.stderr.take().unwrap());
    let first = stderr.wait_for(1)[0].clone();
    let addr = first
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", process.pid())
    );
    assert_eq!(get(addr, "/whoami").status, 200);
    assert_eq!(
        stdout.wait_for(1).len(),
        1,
        "a line per exchange, flushed at once"
    );
    // The hang-up nohup would ignore means reload here, as with nginx.
    process.signal(Signal::SIGHUP);
    assert!(stderr.wait_for(2)[1].contains("configuration reloaded"));
    assert_eq!(get(addr, "/whoami").status, 200);
    process.signal(Signal::SIGTERM);
    assert_eq!(process.wait_exit().code(), Some(0));
    assert!(!pid_file.exists(), "pid file removed on exit");
}

#[test]
fn root_drops_to_the_configured_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: nothing to drop");
        return;
    }
    let backends = Backend::start_many(1);
    let proxy = options(&[&backends[0]], "user = \"nobody\"\ngroup = \"nogroup\"\n").start();
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/whoami").status, 200);
    let uid_line = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(uid_line(proxy.pid()), "65534 65534 65534 65534");
    let log = proxy.wait_log(1);
    let server = log_pid(&log[0]);
    assert_eq!(uid_line(server), "65534 65534 65534 65534");
    assert_eq!(proxy.log_lines().len(), 1, "the log file stays writable");
}

#[test]
fn syslog_receives_access_lines_and_errors() {
    let backends = Backend::start_many(1);
    let dir = TempDir::new();
    let socket_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&socket_path).unwrap();
    syslog.set_read_timeout(Some(PATIENCE)).unwrap();
    let extra = format!(
        "[log]\nsyslog = true\nfacility = \"local3\"\nsyslog_socket = \"{}\"\n",
        socket_path.display()
    );
    let proxy = options(&[&backends[0]], &extra).start();
    let mut buf = vec![0u8; 4096];
    let mut next = || {
        let n = syslog.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // local3 = 19: notice <157>, info <158>, err <155>.
    let started = next();
    assert!(
        started.starts_with("<157>") && started.contains("listening on"),
        "{started}"
    );
    get(proxy.addr, "/whoami?via=syslog");
    let access = next();
    assert!(access.starts_with("<158>"), "{access}");
    assert!(
        access.contains("pibl[") && access.contains("\"GET /whoami?via=syslog HTTP/1.1\" 200 3"),
        "{access}"
    );
    fs::write(proxy.dir.path().join("pibl.conf"), "broken =").unwrap();
    proxy.process.signal(Signal::SIGHUP);
    let error = next();
    assert!(
        error.starts_with("<155>") && error.contains("reload refused"),
        "{error}"
    );
}

#[test]
fn every_flag_in_help_is_in_the_man_page() {
    // mdoc writes --pid-file as "Fl \-pid\-file"; compare without escapes.
    let page = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/pibl.1"))
        .unwrap()
        .replace('\\', "");
    for args in [&["--help"][..], &["backend", "--help"], &["demo", "--help"]] {
        let help = Command::new(PIBL).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        let flags: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .collect();
        assert!(!flags.is_empty());
        for flag in flags {
            assert!(
                page.contains(&format!("Fl -{}", &flag[2..])),
                "{flag} is missing from man/pibl.1"
            );
        }
    }
}

/// Started with a soft open-files limit below the hard one (a shell's
/// usual 1024), pibl raises it to the hard one, quietly.
#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends).ulimit("-Sn 64").start();
    let limits = fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (soft, hard) = (open_files[0], open_files[1]);
    assert_eq!(soft, hard);
    assert_ne!(soft, "64");
    assert_eq!(get(proxy.addr, "/").status, 200);
    let said = proxy.stderr.containing("open files");
    assert!(said.is_empty(), "{said:?}");
}

/// A reload's timeouts reach the connections accepted after it: they are
/// options of the listening socket, which each connection inherits.
#[test]
fn a_reload_gives_new_connections_its_timeouts() {
    let a = Backend::start("a");
    let proxy = options(&[&a], "client_body_timeout = 60\n").start();
    proxy.reload(&options(&[&a], "client_body_timeout = 0.5\n"));
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(client.response("POST").status, 408);
}
