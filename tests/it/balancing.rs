//! Round robin is exact across children: over 3N requests each of 3
//! backends answers exactly N, however the requests arrive.

use std::thread;

use crate::util::*;

fn names(responses: &[Response]) -> Vec<String> {
    responses
        .iter()
        .map(|r| r.header("x-backend").unwrap().to_string())
        .collect()
}

#[test]
fn strict_rotation_over_sequential_connections() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    let responses: Vec<Response> = (0..30).map(|_| get(proxy.addr, "/whoami")).collect();
    let seen = names(&responses);
    // Each connection is a new child; the position still advances by one.
    for (i, name) in seen.iter().enumerate() {
        assert_eq!(name, &seen[i % 3], "request {i}: {seen:?}");
    }
    let counts = tally(seen.iter().map(String::as_str));
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    for r in &responses {
        assert_eq!(r.text(), format!("{}\n", r.header("x-backend").unwrap()));
    }
}

#[test]
fn exact_counts_over_concurrent_connections() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    let addr = proxy.addr;
    let workers: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || (0..30).map(|_| get(addr, "/whoami")).collect::<Vec<_>>()))
        .collect();
    let all: Vec<Response> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let counts = tally(names(&all).iter().map(String::as_str));
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 80), "{counts:?}");
}

#[test]
fn strict_rotation_over_one_keep_alive_connection() {
    let backends = Backend::start_many(3);
    let proxy = Proxy::start(&backends);
    let mut client = Client::connect(proxy.addr);
    let responses: Vec<Response> = (0..30).map(|_| client.get("/whoami")).collect();
    let seen = names(&responses);
    for (i, name) in seen.iter().enumerate() {
        assert_eq!(name, &seen[i % 3], "request {i}: {seen:?}");
    }
    let counts = tally(seen.iter().map(String::as_str));
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    // All 30 were served by one child.
    let log = proxy.wait_log(30);
    let pids: std::collections::HashSet<i32> = log.iter().map(|l| log_pid(l)).collect();
    assert_eq!(pids.len(), 1, "{log:?}");
}

#[test]
fn any_number_of_backends() {
    for n in [1, 5] {
        let backends = Backend::start_many(n);
        let proxy = Proxy::start(&backends);
        let mut client = Client::connect(proxy.addr);
        let responses: Vec<Response> = (0..n * 4).map(|_| client.get("/whoami")).collect();
        let counts = tally(names(&responses).iter().map(String::as_str));
        assert_eq!(counts.len(), n);
        assert!(counts.values().all(|&c| c == 4), "{counts:?}");
    }
}
