//! The concurrency models: a child per connection (fork), a worker per
//! connection at a time (prefork), a thread per connection (thread); every
//! child reaped, no descriptor leaked, at most max_clients at once.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn a_child_per_connection_serves_all_its_requests() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    let mut pids_by_connection = Vec::new();
    for c in 0..3 {
        let mut client = Client::connect(proxy.addr);
        for r in 0..4 {
            assert_eq!(client.get(&format!("/whoami?c={c}&r={r}")).status, 200);
        }
        drop(client);
        let log = proxy.wait_log((c + 1) * 4);
        let pids: HashSet<i32> = log[c * 4..].iter().map(|l| log_pid(l)).collect();
        assert_eq!(pids.len(), 1, "one process per connection: {log:?}");
        pids_by_connection.push(*pids.iter().next().unwrap());
    }
    let distinct: HashSet<i32> = pids_by_connection.iter().copied().collect();
    match model().as_str() {
        "fork" => assert_eq!(
            distinct.len(),
            3,
            "a new child for each connection: {pids_by_connection:?}"
        ),
        "thread" => assert_eq!(distinct, HashSet::from([proxy.pid()]), "one process"),
        _ => {}
    }
    if model() != "thread" {
        assert!(!distinct.contains(&proxy.pid()), "the parent serves nobody");
    }
}

#[test]
fn ten_thousand_connections_leave_no_zombie_and_no_descriptor() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
    proxy.wait_settled();
    proxy.wait_no_spares();
    let fds_before = open_fds(proxy.pid());

    let addr = proxy.addr;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut statuses = HashMap::new();
                for _ in 0..2500 {
                    *statuses.entry(get(addr, "/whoami").status).or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), HashMap::from([(200, 2500)]));
    }
    proxy.wait_settled();
    proxy.wait_no_spares();
    assert_eq!(
        open_fds(proxy.pid()),
        fds_before,
        "descriptors leaked in the parent"
    );
    assert_eq!(proxy.wait_log(10_001).len(), 10_001);
}

#[test]
fn max_clients_caps_live_children() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    // In the prefork model, the pool's bound is max_workers.
    options.extra = serving_at_most(2);
    let proxy = options.start();

    let mut first = Client::connect(proxy.addr);
    let mut second = Client::connect(proxy.addr);
    assert_eq!(first.get("/whoami").status, 200);
    assert_eq!(second.get("/whoami").status, 200);
    // A third connection is accepted by the kernel but not served while
    // two children are busy with idle keep-alive connections.
    let mut third = Client::connect(proxy.addr);
    third.send(b"GET /whoami HTTP/1.1\r\nHost: test\r\n\r\n");
    third
        .stream()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = third.reader.get_mut().read(&mut byte);
    assert!(waited.is_err(), "served beyond max_clients: {waited:?}");
    assert_eq!(proxy.serving(), 2);
    // And says so, naming what to raise, as Apache does.
    let setting = match model().as_str() {
        "prefork" => "prefork.max_workers",
        _ => "max_clients",
    };
    let said = proxy.wait_stderr("reached: new connections wait in the listen queue");
    assert!(said.contains(&format!("{setting} (2) reached")), "{said}");
    // One leaves; the third is served.
    drop(first);
    third.stream().set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(third.response("GET").status, 200);
}

#[test]
fn sigterm_stops_the_parent_and_its_children() {
    let backends = Backend::start_many(1);
    let mut proxy = Proxy::start(&backends);
    let mut idle = Client::connect(proxy.addr);
    assert_eq!(idle.get("/whoami").status, 200);
    let (children, _) = proxy.children();
    assert_eq!(children.is_empty(), model() == "thread");
    proxy.process.signal(Signal::SIGTERM);
    let status = proxy.process.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(idle.is_closed());
    for child in children {
        assert!(!std::path::Path::new(&format!("/proc/{child}")).exists());
    }
}

#[test]
fn a_helper_stopped_along_with_pibl_is_not_started_again() {
    // The helpers are threads in the thread model.
    if model() == "thread" {
        return;
    }
    let backends = Backend::start_many(1);
    let mut proxy = ProxyOptions::new(&backends)
        .config("[cache]\nttl = 60\n")
        .start();
    let comm = |pid: &i32| fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let (children, _) = proxy.children();
    let janitor = *children
        .iter()
        .find(|pid| comm(pid).trim_end() == "cache janitor")
        .expect("a cache janitor");
    // A service manager signals every process of pibl at once: the parent
    // learns of the janitor's end and of its own SIGTERM together.
    proxy.process.signal(Signal::SIGSTOP);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(janitor), Signal::SIGTERM).unwrap();
    wait_until("the janitor's end", || {
        proxy.children().1.contains(&janitor)
    });
    proxy.process.signal(Signal::SIGTERM);
    proxy.process.signal(Signal::SIGCONT);
    assert_eq!(proxy.process.wait_exit().code(), Some(0));
    let said = proxy.stderr.wait_end();
    assert!(
        !said.iter().any(|l| l.contains("starting another")),
        "{said:?}"
    );
}

/// A prefork proxy with a `[prefork]` table of `settings`.
fn prefork(backends: &[Backend], settings: &str) -> Proxy {
    let mut options = ProxyOptions::new(backends);
    options.extra = format!("[prefork]\n{settings}");
    options.args(&["--model", "prefork"]).start()
}

fn workers(proxy: &Proxy) -> usize {
    proxy.tasks_named("pibl worker")
}

#[test]
fn the_prefork_pool_grows_with_the_load_and_shrinks_back() {
    let backends = Backend::start_many(1);
    let proxy = prefork(&backends, POOL_2_TO_8);
    grow_and_shrink(&proxy);
}

/// After a reload too, spares beyond `max_spare` go within a second: the
/// listening socket's options, set again at the reload, keep the workers'
/// one-second wake-up in accept(2) (`client_body_timeout`, 60 s, had
/// taken its place, and a spare told to go stayed that long).
#[test]
fn the_prefork_pool_shrinks_back_after_a_reload() {
    let backends = Backend::start_many(1);
    let proxy = prefork(&backends, POOL_2_TO_8);
    let mut options = ProxyOptions::new(&backends);
    options.extra = format!("[prefork]\n{POOL_2_TO_8}");
    proxy.reload(&options);
    grow_and_shrink(&proxy);
}

/// A reload's replacements are no burst: `min_spare` of them, even when
/// the reload comes within a millisecond of the first workers' forks, as
/// it does here, which had doubled the next batch (twice `min_spare`).
#[test]
fn a_reload_just_after_the_start_forks_min_spare_workers() {
    let backends = Backend::start_many(1);
    let proxy = prefork(&backends, "min_spare = 2\nmax_spare = 10\n");
    let mut options = ProxyOptions::new(&backends);
    // The reload's workers are told from any before by their log file.
    options.extra = "[log]\nfile = \"new.log\"\n[prefork]\nmin_spare = 2\nmax_spare = 10\n".into();
    fs::write(proxy.dir.path().join("pibl.conf"), options.config_text()).unwrap();
    proxy.process.signal(Signal::SIGHUP);
    proxy.wait_stderr("configuration reloaded");
    // Earlier workers are reaped only once the parent has forked the
    // reload's: with none of them left, alive or not, every fork is done.
    let new_log = proxy.dir.path().join("new.log");
    let mut workers = Vec::new();
    wait_until("the reload's workers alone", || {
        let (live, zombies) = proxy.children();
        workers = live;
        zombies.is_empty()
            && !workers.is_empty()
            && workers.iter().all(|&pid| holds_open(pid, &new_log))
    });
    assert_eq!(workers.len(), 2, "{workers:?}");
}

/// Whether process `pid` has the file at `path` open.
fn holds_open(pid: i32, path: &std::path::Path) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

const POOL_2_TO_8: &str = "min_spare = 2\nmax_spare = 3\nmax_workers = 8\n";

/// From two or three idle workers (`min_spare`, `max_spare`) to six busy
/// and two spare, and back to `max_spare` once the six clients have gone.
fn grow_and_shrink(proxy: &Proxy) {
    // Idle workers between `min_spare` and `max_spare`: the pool forks
    // the first and trims its spares to the second.
    wait_until("min_spare to max_spare idle workers", || {
        (2..=3).contains(&workers(proxy))
    });
    // Six clients at once, each holding its worker with keep-alive.
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(proxy.addr)).collect();
    for client in &mut clients {
        assert_eq!(client.get("/whoami").status, 200);
    }
    // Six busy, and the pool tops up its spares, within max_workers.
    wait_until("spare workers beside the busy ones", || workers(proxy) == 8);
    let pids: HashSet<i32> = proxy.wait_log(6).iter().map(|l| log_pid(l)).collect();
    assert_eq!(pids.len(), 6, "one worker per connection at a time");
    drop(clients);
    wait_until("the idle workers to shrink to max_spare", || {
        workers(proxy) == 3
    });
}

#[test]
fn a_prefork_worker_exits_after_max_requests_connections() {
    let backends = Backend::start_many(1);
    let proxy = prefork(
        &backends,
        "min_spare = 1\nmax_spare = 1\nmax_workers = 1\nmax_requests = 2\n",
    );
    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    let pids: Vec<i32> = proxy.wait_log(6).iter().map(|l| log_pid(l)).collect();
    // One worker at a time, each replaced after two connections.
    for pair in pids.chunks(2) {
        assert_eq!(pair[0], pair[1], "{pids:?}");
    }
    let distinct: HashSet<i32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
}

#[test]
fn the_thread_model_serves_from_one_process() {
    let backends = Backend::start_many(3);
    let proxy = ProxyOptions::new(&backends)
        .args(&["--model", "thread"])
        .start();
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(proxy.addr)).collect();
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(
            client
                .get("/whoami")
                .header("x-backend")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(proxy.tasks_named("pibl conn"), 3, "a thread per connection");
    assert!(proxy.children().0.is_empty(), "no child process");
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "round robin over threads: {seen:?}");
    let pids: HashSet<i32> = proxy.wait_log(3).iter().map(|l| log_pid(l)).collect();
    assert_eq!(pids, HashSet::from([proxy.pid()]));
}

/// A connection thread whose client has gone waits as a spare for the next
/// connection, with its backend connections: twenty clients one after
/// another are served over far fewer backend connections than twenty.
#[test]
fn thread_spares_serve_later_clients_over_kept_backend_connections() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends)
        .args(&["--model", "thread"])
        .start();
    let peers: HashSet<String> = (0..20).map(|_| get(proxy.addr, "/peer").text()).collect();
    // One a thread, and threads are few: see below.
    assert!(
        peers.len() <= 8,
        "{} backend connections for 20 clients",
        peers.len()
    );
    // A thread is started when the one taking a connection finds no other
    // spare; the one that served the client before may not be back yet
    // (under load, not for a few connections running), so a few more than
    // two — but not one a client.
    let threads = proxy.tasks_named_any(&["pibl conn", "pibl spare"]);
    assert!(threads <= 8, "{threads} threads: spares were not reused");
    proxy.wait_settled();
    assert!(
        proxy.tasks_named("pibl spare") >= 1,
        "spares wait, named so"
    );
}

#[test]
fn prefork_workers_do_not_outlive_a_killed_parent() {
    let backends = Backend::start_many(1);
    let proxy = prefork(&backends, "min_spare = 3\nmax_spare = 3\n");
    wait_until("the workers to start", || workers(&proxy) == 3);
    let (pids, _) = proxy.children();
    // The parent alone is killed, as by the OOM killer.
    proxy.process.signal(Signal::SIGKILL);
    let mut proxy = proxy;
    proxy.process.wait_exit();
    let gone = |pid: &i32| stat_fields(&format!("/proc/{pid}/stat")).is_none_or(|f| f[0] == "Z");
    wait_until("the orphaned workers to stop", || pids.iter().all(gone));
}

/// The scheduling policy of task `tid` of process `pid` (field 41 of its
/// stat: 0 SCHED_OTHER, 3 SCHED_BATCH).
fn policy_of(pid: i32, tid: i32) -> u32 {
    let fields = stat_fields(&format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    fields[41 - 3].parse().unwrap()
}

/// The policy of the tasks serving connections now: the process of the
/// log line `line`, or in the thread model the threads named so — all of
/// them (a thread whose connection just closed may not be gone yet), which
/// must agree.
fn serving_policy(line: &str) -> u32 {
    let pid = log_pid(line);
    if model() != "thread" {
        return policy_of(pid, pid);
    }
    let all: Vec<u32> = threads_named(pid, "pibl conn")
        .into_iter()
        .map(|tid| policy_of(pid, tid))
        .collect();
    assert!(
        !all.is_empty() && all.iter().all(|&p| p == all[0]),
        "{all:?}"
    );
    all[0]
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

#[test]
fn connections_are_served_under_sched_batch_unless_turned_off() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/whoami").status, 200);
    let line = &proxy.wait_log(1)[0];
    assert_eq!(serving_policy(line), SCHED_BATCH, "{line}");
    // The parent (or main thread) must run as soon as clients arrive.
    assert_eq!(
        policy_of(proxy.pid(), proxy.pid()),
        SCHED_OTHER,
        "the parent"
    );
    drop(client);
    wait_until("no thread to serve a connection", || {
        proxy.tasks_named("pibl conn") == 0
    });

    // Turned off by a reload: connections from then on run as usual.
    let mut options = ProxyOptions::new(&backends);
    options.extra = "sched_batch = false\n".into();
    proxy.reload(&options);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/whoami").status, 200);
    let line = &proxy.wait_log(2)[1];
    assert_eq!(serving_policy(line), SCHED_OTHER, "{line}");
}
