//! The process model: a child per connection, every child reaped, no
//! descriptor leaked, at most max_clients children at once.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

/// The pid field (the last but one) of an access-log line.
fn pid_of(line: &str) -> i32 {
    line.rsplit(' ').nth(1).unwrap().parse().unwrap()
}

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
        let pids: HashSet<i32> = log[c * 4..].iter().map(|l| pid_of(l)).collect();
        assert_eq!(pids.len(), 1, "one child per connection: {log:?}");
        pids_by_connection.push(*pids.iter().next().unwrap());
    }
    let distinct: HashSet<i32> = pids_by_connection.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "a new child for each connection: {pids_by_connection:?}"
    );
    assert!(!distinct.contains(&proxy.pid()), "the parent serves nobody");
}

#[test]
fn ten_thousand_connections_leave_no_zombie_and_no_descriptor() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    assert_eq!(get(proxy.addr, "/whoami").status, 200);
    proxy.wait_no_children();
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
    proxy.wait_no_children();
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
    options.extra = "max_clients = 2\n".into();
    let proxy = Proxy::start_with(options);

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
    assert_eq!(proxy.children().0.len(), 2);
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
    assert_eq!(children.len(), 1);
    proxy.process.signal(Signal::SIGTERM);
    let status = proxy.process.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(idle.is_closed());
    assert!(!std::path::Path::new(&format!("/proc/{}", children[0])).exists());
}
