#![allow(dead_code)] // a helper module: not every test uses every helper

//! Helpers: temporary directories, processes that clean up after
//! themselves, and a small HTTP/1.1 client.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const PIBL: &str = env!("CARGO_BIN_EXE_pibl");
/// Longest a test waits for anything it expects to happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A fresh directory under cargo's target tmpdir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("it-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit, at most PATIENCE.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit",
                self.pid()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines a process writes, collected by a thread, with a way to wait for
/// a given count, or for the end.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Collected>, Condvar)>);

#[derive(Default)]
pub struct Collected {
    lines: Vec<String>,
    /// The writer closed its end: every line is in.
    ended: bool,
}

impl Lines {
    pub fn collect(source: impl Read + Send + 'static) -> Lines {
        Lines::collect_after(Vec::new(), source)
    }

    /// `collect`, with `earlier` lines already read from `source`.
    pub fn collect_after(earlier: Vec<String>, source: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        lines.0.0.lock().unwrap().lines = earlier;
        let sink = lines.clone();
        thread::spawn(move || {
            let (lock, cond) = &*sink.0;
            for line in BufReader::new(source).lines() {
                let Ok(line) = line else { break };
                lock.lock().unwrap().lines.push(line);
                cond.notify_all();
            }
            lock.lock().unwrap().ended = true;
            cond.notify_all();
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.0.lock().unwrap().lines.clone()
    }

    /// The lines so far that contain `text`.
    pub fn containing(&self, text: &str) -> Vec<String> {
        let mut lines = self.snapshot();
        lines.retain(|l| l.contains(text));
        lines
    }

    /// Waits until the writer has closed its end; returns every line.
    pub fn wait_end(&self) -> Vec<String> {
        let (lock, cond) = &*self.0;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cond
            .wait_timeout_while(guard, PATIENCE, |c| !c.ended)
            .unwrap();
        assert!(!timeout.timed_out(), "the output did not end");
        guard.lines.clone()
    }

    /// Waits until at least `n` lines have arrived; returns them all.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let (lock, cond) = &*self.0;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cond
            .wait_timeout_while(guard, PATIENCE, |c| c.lines.len() < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "expected {n} lines, got {}: {:?}",
            guard.lines.len(),
            guard.lines
        );
        guard.lines.clone()
    }
}

/// Reads the first stderr line, which names the bound address after
/// "listening on ", and hands the rest of stderr to a collector.
/// The address in pibl's "listening on" line; the lines before it (a
/// warning, say) stay in what is collected.
fn read_listen_line(stderr: ChildStderr) -> (SocketAddr, [Option<SocketAddr>; 2], Lines) {
    let mut reader = BufReader::new(stderr);
    let mut before = Vec::new();
    let after = |line: &str, what: &str| -> Option<SocketAddr> {
        let rest = line.split(what).nth(1)?;
        Some(rest.split([',', ' ', '\n']).next()?.parse().unwrap())
    };
    let (addr, tls) = loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "pibl ended before listening: {before:?}");
        if let Some(addr) = after(&line, "listening on ") {
            break (
                addr,
                [after(&line, "HTTPS on "), after(&line, "status on ")],
            );
        }
        before.push(line.trim_end().to_string());
    };
    (addr, tls, Lines::collect_after(before, reader))
}

/// A demo replica (`pibl backend`) on an ephemeral loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub process: Process,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, 0)
    }

    /// A replica on a given port (to bring one back where it was).
    pub fn start_on(name: &str, port: u16) -> Backend {
        let mut child = Command::new(PIBL)
            .args(["backend", "--port", &port.to_string(), "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, _, _) = read_listen_line(child.stderr.take().unwrap());
        Backend {
            addr,
            name: name.to_string(),
            process: Process { child },
        }
    }

    pub fn start_many(n: usize) -> Vec<Backend> {
        (1..=n).map(|i| Backend::start(&format!("b{i}"))).collect()
    }
}

/// How to start a proxy under test: the one way to start one.
///
/// ```ignore
/// let proxy = ProxyOptions::new(&backends).config("max_body = 10\n").start();
/// ```
#[derive(Clone)]
pub struct ProxyOptions {
    pub backends: Vec<String>,
    /// More lines for pibl.conf.
    pub extra: String,
    /// More command-line arguments.
    args: Vec<String>,
    /// A shell command run before pibl, in the shell that then execs it
    /// (`ulimit -n 64`; `exec 7</dev/null`: pibl starts with one more file).
    setup: Option<String>,
}

impl ProxyOptions {
    pub fn new(backends: &[Backend]) -> ProxyOptions {
        ProxyOptions::for_addrs(backends.iter().map(|b| b.addr.to_string()).collect())
    }

    /// A proxy for the backends at these addresses.
    pub fn for_addrs(backends: Vec<String>) -> ProxyOptions {
        ProxyOptions {
            backends,
            extra: String::new(),
            args: Vec::new(),
            setup: None,
        }
    }

    /// More lines of pibl.conf.
    pub fn config(mut self, lines: &str) -> ProxyOptions {
        self.extra.push_str(lines);
        self
    }

    /// More command-line arguments.
    pub fn args(mut self, args: &[&str]) -> ProxyOptions {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Started with sh's `ulimit {limit}` (`-n 64`: at most 64 open files,
    /// soft and hard limit alike).
    pub fn ulimit(self, limit: &str) -> ProxyOptions {
        self.setup(&format!("ulimit {limit}"))
    }

    /// Started by sh once `setup`, a shell command, has run in that shell.
    pub fn setup(mut self, setup: &str) -> ProxyOptions {
        self.setup = Some(setup.to_string());
        self
    }

    pub fn config_text(&self) -> String {
        let list: Vec<String> = self.backends.iter().map(|b| format!("\"{b}\"")).collect();
        format!(
            "listen = \"127.0.0.1\"\nport = 8080\nbackends = [{}]\n{}",
            list.join(", "),
            self.extra
        )
    }

    /// Starts the proxy in a new directory.
    pub fn start(self) -> Proxy {
        self.start_in(TempDir::new())
    }

    /// Starts the proxy in `dir` (perhaps one an earlier proxy used).
    pub fn start_in(self, dir: TempDir) -> Proxy {
        fs::write(dir.path().join("pibl.conf"), self.config_text()).unwrap();
        let mut command = match &self.setup {
            None => Command::new(PIBL),
            Some(setup) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("{setup} && exec \"$0\" \"$@\""), PIBL]);
                sh
            }
        };
        command.args(["--port", "0"]);
        if !self.args.iter().any(|a| a == "--model") {
            command.args(["--model", model().as_str()]);
        }
        let mut child = command
            .args(&self.args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let (addr, [tls_addr, status_addr], stderr) =
            read_listen_line(child.stderr.take().unwrap());
        Proxy {
            addr,
            tls_addr,
            status_addr,
            dir,
            stdout,
            stderr,
            process: Process { child },
        }
    }
}

/// pibl itself, in its own directory, listening on an ephemeral port.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The HTTPS listener's, when `[tls]` has a port.
    pub tls_addr: Option<SocketAddr>,
    /// The status listener's, when `[status]` has a port.
    pub status_addr: Option<SocketAddr>,
    pub dir: TempDir,
    pub stdout: Lines,
    pub stderr: Lines,
    pub process: Process,
}

impl Proxy {
    /// A proxy for `backends` with the test configuration and nothing more
    /// (`ProxyOptions` for anything else).
    pub fn start(backends: &[Backend]) -> Proxy {
        ProxyOptions::new(backends).start()
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Kills the proxy with SIGKILL, as a crash would, and keeps its
    /// directory for another.
    pub fn crash(mut self) -> TempDir {
        for child in self.children().0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.process.signal(nix::sys::signal::Signal::SIGKILL);
        self.process.wait_exit();
        std::mem::replace(&mut self.dir, TempDir::new())
    }

    pub fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("pibl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits for a line on the proxy's standard error containing `text`,
    /// and returns it.
    pub fn wait_stderr(&self, text: &str) -> String {
        let mut found = None;
        wait_until(&format!("stderr line with {text:?}"), || {
            found = self.stderr.containing(text).into_iter().next();
            found.is_some()
        });
        found.expect("found above")
    }

    /// Rewrites pibl.conf from `options`, sends SIGHUP and waits until the
    /// new configuration serves: said on stderr and, in the prefork model,
    /// every worker of the old one gone (an idle one could still accept).
    pub fn reload(&self, options: &ProxyOptions) {
        fs::write(self.dir.path().join("pibl.conf"), options.config_text()).unwrap();
        let (before, _) = self.children();
        self.process.signal(nix::sys::signal::Signal::SIGHUP);
        self.wait_stderr("configuration reloaded");
        if model() == "prefork" {
            wait_until("the old workers to exit", || {
                let (now, _) = self.children();
                before.iter().all(|pid| !now.contains(pid))
            });
        }
    }

    /// Waits until `n` access lines are on stdout, returns them.
    pub fn wait_log(&self, n: usize) -> Vec<String> {
        self.stdout.wait_for(n)
    }

    /// The pids of the proxy's live (not zombie) children, and its zombies.
    pub fn children(&self) -> (Vec<i32>, Vec<i32>) {
        children_of(self.pid())
    }

    /// How many tasks of the proxy are called `name`: its threads and its
    /// children (pibl names its helpers, prefork workers and threads).
    pub fn tasks_named(&self, name: &str) -> usize {
        self.tasks_named_any(&[name])
    }

    /// How many tasks of the proxy are called any of `names`, each task's
    /// name read once: a thread renamed between two counts by name would
    /// be counted twice, or not at all.
    pub fn tasks_named_any(&self, names: &[&str]) -> usize {
        let children = self.children().0.into_iter();
        let children =
            children.filter(|pid| names.contains(&comm_of(&format!("/proc/{pid}")).as_str()));
        threads_named_any(self.pid(), names).len() + children.count()
    }

    /// The connections being served now, as the model shows them: live
    /// children (fork), busy-or-idle workers (prefork), threads not
    /// waiting as spares (thread).
    pub fn serving(&self) -> usize {
        match model().as_str() {
            "thread" => self.tasks_named("pibl conn"),
            "prefork" => self.tasks_named("pibl worker"),
            // Children only: the proxy's own main thread is "pibl" too.
            _ => self.tasks_named("pibl") - 1,
        }
    }

    /// Waits until no connection is being served and no child is a
    /// zombie: every child reaped, every connection thread ended or spare.
    /// (Prefork workers stay, waiting for the next connection.)
    pub fn wait_settled(&self) {
        wait_until("the proxy to settle", || {
            let (_, zombies) = self.children();
            let idle = match model().as_str() {
                "prefork" => true,
                _ => self.serving() == 0,
            };
            zombies.is_empty() && idle
        });
    }

    /// Waits until the thread model's spare threads have ended (after
    /// five seconds without a connection), and with them the descriptors
    /// they keep: log file, backend connections.
    pub fn wait_no_spares(&self) {
        if model() == "thread" {
            wait_until("the spare threads to end", || {
                self.tasks_named("pibl spare") == 0
            });
        }
    }

    /// Waits until the proxy has no child at all, live or zombie.
    pub fn wait_no_children(&self) {
        wait_until("the proxy's children to exit", || {
            let (live, zombies) = self.children();
            live.is_empty() && zombies.is_empty()
        });
    }
}

/// Configuration that lets the model serve at most `n` connections at
/// once: `max_clients`, or in the prefork model a pool of `n` workers.
pub fn serving_at_most(n: usize) -> String {
    match model().as_str() {
        "prefork" => format!("[prefork]\nmax_workers = {n}\nmin_spare = 1\nmax_spare = {n}\n"),
        _ => format!("max_clients = {n}\n"),
    }
}

/// The concurrency model the proxies of this run use: `PIBL_MODEL`, so
/// that tests/run.sh runs the suite once per model; fork by default.
pub fn model() -> String {
    std::env::var("PIBL_MODEL").unwrap_or_else(|_| "fork".into())
}

/// Polls `done` until it holds, at most PATIENCE.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The ids of the threads of process `pid` called `name` (none once it
/// is gone).
pub fn threads_named(pid: i32, name: &str) -> Vec<i32> {
    threads_named_any(pid, &[name])
}

/// The thread ids of process `pid` whose name is any of `names`, each
/// thread's name read once.
fn threads_named_any(pid: i32, names: &[&str]) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter(|t| names.contains(&comm_of(&t.path().display().to_string()).as_str()))
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The name of the task whose /proc directory is `dir` ("" once gone).
fn comm_of(dir: &str) -> String {
    let comm = fs::read_to_string(format!("{dir}/comm")).unwrap_or_default();
    comm.trim_end().to_string()
}

/// The fields of the /proc stat file at `path` from the third (the state)
/// on, which follow the command's ')'; `None` once the task is gone.
pub fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(path).ok()?;
    let after_comm = stat.rsplit(')').next()?;
    Some(after_comm.split_whitespace().map(str::to_string).collect())
}

/// (live, zombie) children of `pid`, from /proc.
pub fn children_of(pid: i32) -> (Vec<i32>, Vec<i32>) {
    let (mut live, mut zombies) = (Vec::new(), Vec::new());
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{child}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        if field("PPid:") == pid.to_string() {
            if field("State:").starts_with('Z') {
                zombies.push(child);
            } else {
                live.push(child);
            }
        }
    }
    (live, zombies)
}

/// Proportional memory of `pid` in KiB: shared pages divided among the
/// processes that map them, so a sum over processes counts each once
/// (0 once it is gone).
pub fn pss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    /// Every field line, in order, as received.
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection with a buffered reader: over TCP, or over TLS
/// (`tls::connect`).
pub struct Client<S: Read + Write = TcpStream> {
    pub reader: BufReader<S>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}

impl<S: Read + Write> Client<S> {
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Sends a GET for `path` on this connection and reads the answer.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.response("GET")
    }

    /// Reads the head of one response (interim ones included).
    pub fn head(&mut self) -> Response {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        assert!(
            status_line.starts_with("HTTP/1."),
            "bad status line {status_line:?}"
        );
        let status = status_line[9..12].parse().unwrap();
        let mut fields = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.ends_with("\r\n"), "bad field line {line:?}");
            if line == "\r\n" {
                break;
            }
            let (name, value) = line.trim_end().split_once(':').unwrap();
            fields.push((name.to_string(), value.trim().to_string()));
        }
        let headers = fields
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        Response {
            status,
            headers,
            fields,
            body: Vec::new(),
        }
    }

    /// Reads one final response to a request with `method`.
    pub fn response(&mut self, method: &str) -> Response {
        let mut resp = self.head();
        while resp.status < 200 {
            resp = self.head();
        }
        if method == "HEAD" || resp.status == 204 || resp.status == 304 {
            return resp;
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            resp.body = self.read_chunked();
        } else if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            resp.body = body;
        } else {
            self.reader.read_to_end(&mut resp.body).unwrap();
        }
        resp
    }

    /// Reads a chunked body, after `head`.
    pub fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                assert_eq!(chunk, b"\r\n");
                return body;
            }
            assert_eq!(&chunk[size..], b"\r\n");
            body.extend_from_slice(&chunk[..size]);
        }
    }

    /// True once the server has closed the connection (EOF, nothing more).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut client = Client::connect(addr);
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes());
    client.response("GET")
}

/// Counts of each value of `X-Backend` over `responses`.
pub fn tally<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n.to_string()).or_insert(0) += 1;
    }
    counts
}

/// A backend that answers every connection with fixed bytes after reading
/// the request head, and keeps the heads it received.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

/// A request head read byte by byte (none of what follows it is taken),
/// up to its blank line or the end of the stream.
pub fn read_head(stream: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_until(stream, b"\r\n\r\n")).into_owned()
}

/// Bytes read one at a time until they end with `end`, or the stream
/// does (or fails: a read timeout).
pub fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(end) && stream.read(&mut byte).unwrap_or(0) == 1 {
        got.push(byte[0]);
    }
    got
}

impl RawBackend {
    /// Answers, then holds the connection open without a word more: a
    /// response that never ends.
    pub fn start_stalling(answer: &'static [u8]) -> RawBackend {
        RawBackend::start_with(answer, true, Duration::ZERO)
    }

    pub fn start(answer: &'static [u8]) -> RawBackend {
        RawBackend::start_with(answer, false, Duration::ZERO)
    }

    /// Answers each request with what `answer` makes of its head.
    pub fn start_answering(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> RawBackend {
        RawBackend::start_general(Arc::new(answer), false, Duration::ZERO)
    }

    /// Answers each request after `delay`, each connection in a thread of
    /// its own.
    pub fn start_slow(answer: &'static [u8], delay: Duration) -> RawBackend {
        RawBackend::start_with(answer, false, delay)
    }

    fn start_with(answer: &'static [u8], stall: bool, delay: Duration) -> RawBackend {
        RawBackend::start_general(Arc::new(move |_: &str| answer.to_vec()), stall, delay)
    }

    #[allow(clippy::type_complexity)]
    fn start_general(
        answer: Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>,
        stall: bool,
        delay: Duration,
    ) -> RawBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let record = Arc::clone(&record);
                let answer = Arc::clone(&answer);
                thread::spawn(move || {
                    let head = read_head(&mut stream);
                    let bytes = answer(&head);
                    record.lock().unwrap().push(head);
                    thread::sleep(delay);
                    let _ = stream.write_all(&bytes);
                    if stall {
                        // Keep it open until the peer goes away.
                        let _ = stream.read(&mut [0u8; 1]);
                    }
                });
            }
        });
        RawBackend { addr, seen }
    }
}

/// Samples the summed PSS of the proxy and its children until stopped;
/// returns the peak in KiB and how many samples saw a child.
pub struct PssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: thread::JoinHandle<u64>,
}

impl PssSampler {
    pub fn start(parent: i32) -> PssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let handle = thread::spawn(move || {
            let mut with_child = 0;
            while !s.load(Ordering::Relaxed) {
                let (children, _) = children_of(parent);
                // A thread of the proxy's own, in the thread model.
                let threads =
                    std::fs::read_dir(format!("/proc/{parent}/task")).map_or(0, |d| d.count());
                with_child += u64::from(!children.is_empty() || threads > 1);
                let total = pss_kib(parent) + children.iter().map(|&c| pss_kib(c)).sum::<u64>();
                p.fetch_max(total, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
            with_child
        });
        PssSampler { stop, peak, handle }
    }

    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.join().unwrap();
        (self.peak.load(Ordering::Relaxed), samples)
    }
}

/// An access-log line's fields from the end: `… duration pid cache tls`.
fn log_field_from_end(line: &str, n: usize) -> &str {
    line.rsplit(' ')
        .nth(n)
        .unwrap_or_else(|| panic!("{line:?}"))
}

/// The pid that served an access-log line.
pub fn log_pid(line: &str) -> i32 {
    log_field_from_end(line, 2).parse().unwrap()
}

/// What the cache did, as an access-log line says (`-` without one).
pub fn log_cache(line: &str) -> &str {
    log_field_from_end(line, 1)
}

/// The backends tried, as an access-log line says.
pub fn log_upstream(line: &str) -> &str {
    log_field_from_end(line, 4)
}

/// The byte `pibl backend` sends at `offset` of /big.
pub fn pattern_at(offset: u64) -> u8 {
    ((offset % 65_536) % 251) as u8
}

/// Reads a /big body of `size` bytes from `reader`, checking every byte,
/// in reads of whatever comes (the whole body is never held).
pub fn read_big(reader: &mut impl Read, size: u64) {
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < size {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "body ended at {offset}");
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(b, pattern_at(at), "byte {at}");
        }
        offset += n as u64;
    }
}

/// FNV-1a, as `pibl backend`'s /sink computes it.
pub fn fnv1a(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A loopback port free a moment ago, for what must name its port in a
/// file before it starts (another process may take it meanwhile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
