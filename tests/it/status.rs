//! The status listener (`[status]`): counts that move as requests pass,
//! a backend going down, the scoreboard catching a child waiting for its
//! backend, who may look, and each form read by the tool that reads it —
//! `jq`, `promtool`, Apache's `?auto` format, a headless `chromium`, and
//! `pibl status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;

use crate::util::*;

const STATUS: &str = "[status]\nport = 0\n";

fn status_proxy(backends: &[Backend], extra: &str) -> Proxy {
    ProxyOptions::new(backends)
        .config(&format!("{extra}{STATUS}"))
        .start()
}

fn status_addr(proxy: &Proxy) -> SocketAddr {
    proxy.status_addr.expect("a status listener")
}

/// GET `path` from the status listener: status and body.
fn page(proxy: &Proxy, path: &str) -> (u16, String) {
    let r = get(status_addr(proxy), path);
    (r.status, r.text())
}

/// `program args`, `input` on its standard input: what it did.
fn piped(program: &str, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `filter` run by jq over /status.json, its output trimmed.
fn jq(proxy: &Proxy, filter: &str) -> String {
    let (status, json) = page(proxy, "/status.json");
    assert_eq!(status, 200);
    let out = piped("jq", &["-r", filter], &json);
    assert!(out.status.success(), "jq {filter}: {out:?}\n{json}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The samples of /metrics: `name{labels}` to value.
fn metrics(proxy: &Proxy) -> HashMap<String, f64> {
    let (status, text) = page(proxy, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn metric(proxy: &Proxy, name: &str) -> f64 {
    metrics(proxy).get(name).copied().unwrap_or(-1.0)
}

#[test]
fn every_count_moves_with_the_requests() {
    const N: usize = 30;
    let backends = Backend::start_many(3);
    let proxy = status_proxy(&backends, "");
    for _ in 0..N {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    // Counted once each response is out: wait for the last one.
    wait_until("thirty 2xx counted", || {
        metric(&proxy, "pibl_requests_total{code=\"2xx\"}") == N as f64
    });
    let m = metrics(&proxy);
    for b in &backends {
        let label = format!("{{backend=\"{}\"}}", b.addr);
        assert_eq!(
            m[&format!("pibl_backend_requests_total{label}")],
            10.0,
            "{label}"
        );
        assert_eq!(
            m[&format!("pibl_backend_response_seconds_count{label}")],
            10.0
        );
        let inf = format!(
            "pibl_backend_response_seconds_bucket{{backend=\"{}\",le=\"+Inf\"}}",
            b.addr
        );
        assert_eq!(m[&inf], 10.0);
        assert_eq!(m[&format!("pibl_backend_up{label}")], 1.0);
        assert_eq!(m[&format!("pibl_backend_active{label}")], 0.0);
    }
    assert!(m["pibl_connections_total"] >= N as f64);
    assert_eq!(m["pibl_requests_total{code=\"5xx\"}"], 0.0);
    assert_eq!(jq(&proxy, ".requests.total"), N.to_string());
    assert_eq!(jq(&proxy, "[.backends[].requests] | add"), N.to_string());
    assert_eq!(
        jq(&proxy, "[.backends[].histogram.counts | add] | add"),
        N.to_string()
    );
    assert_eq!(jq(&proxy, ".backends | map(.up) | all"), "true");
    if model() == "fork" {
        // One child per connection, each reaped.
        wait_until("every child reaped", || {
            jq(&proxy, ".children_reaped") == jq(&proxy, ".children_forked")
        });
        assert!(jq(&proxy, ".children_forked").parse::<usize>().unwrap() >= N);
    }
    // Apache's ?auto, as its readers parse it: "Key: value" lines.
    let (_, auto) = page(&proxy, "/status?auto");
    let fields: HashMap<&str, &str> = auto.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(fields["Total Accesses"], N.to_string(), "{auto}");
    let board = fields["Scoreboard"];
    assert!(board.chars().all(|c| "_RWKC".contains(c)), "{auto}");
    let busy: usize = fields["BusyWorkers"].parse().unwrap();
    let idle: usize = fields["IdleWorkers"].parse().unwrap();
    assert_eq!(busy + idle, board.len(), "{auto}");
}

#[test]
fn a_dead_backend_shows_down_and_healthz_follows() {
    let backends = Backend::start_many(2);
    let check = "health_check = { path = \"/whoami\", interval = 0.2 }\n";
    let proxy = status_proxy(&backends, check);
    assert_eq!(page(&proxy, "/healthz"), (200, "ok\n".to_string()));
    let first = backends[0].addr.to_string();
    backends[0]
        .process
        .signal(nix::sys::signal::Signal::SIGKILL);
    let up = format!("pibl_backend_up{{backend=\"{first}\"}}");
    wait_until("the dead backend down in /metrics", || {
        metric(&proxy, &up) == 0.0
    });
    let down = format!(".backends[] | select(.name == \"{first}\") | .down_because");
    assert_eq!(jq(&proxy, &down), "active check");
    let (_, html) = page(&proxy, "/");
    let row = html
        .lines()
        .find(|l| l.contains(&format!("data-backend=\"{first}\"")))
        .unwrap();
    assert!(row.contains("class=\"down\""), "{row}");
    assert_eq!(page(&proxy, "/healthz").0, 200, "one backend is still up");
    backends[1]
        .process
        .signal(nix::sys::signal::Signal::SIGKILL);
    wait_until("/healthz to say 503", || page(&proxy, "/healthz").0 == 503);
}

#[test]
fn the_scoreboard_shows_a_child_waiting_for_its_backend() {
    let backends = Backend::start_many(1);
    let proxy = status_proxy(&backends, "");
    let addr = proxy.addr;
    let slow = thread::spawn(move || get(addr, "/slow?ms=1500").status);
    let waiting = ".scoreboard[] | select(.state == \"waiting for backend\")";
    wait_until("a slot waiting for the backend", || {
        !jq(&proxy, &format!("[{waiting}] | length")).starts_with('0')
    });
    assert_eq!(
        jq(&proxy, &format!("{waiting} | .request")),
        "GET /slow?ms=1500 HTTP/1.1"
    );
    assert_eq!(
        jq(&proxy, &format!("{waiting} | .backend")),
        backends[0].addr.to_string()
    );
    assert!(jq(&proxy, &format!("{waiting} | .client")).starts_with("127.0.0.1:"));
    let (_, text) = page(&proxy, "/status?text");
    assert!(text.contains("waiting for backend"), "{text}");
    assert_eq!(slow.join().unwrap(), 200);
    wait_until("the slot no longer waiting", || {
        jq(&proxy, &format!("[{waiting}] | length")) == "0"
    });
}

/// curl's status code for `url`, calling from `from`.
fn curl_code(from: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            from,
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_allowed_networks_see_it_and_bad_requests_get_400() {
    let backends = Backend::start_many(1);
    let proxy = ProxyOptions::new(&backends)
        .config("[status]\nport = 0\nlisten = \"0.0.0.0\"\nallow = [\"127.0.0.1/32\"]\n")
        .start();
    let port = status_addr(&proxy).port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(curl_code("127.0.0.1", &url), "200");
    assert_eq!(curl_code("127.0.0.2", &url), "403");
    let mut client = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    client.send(b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(client.response("GET").status, 400);
    assert_eq!(page(&proxy, "/nowhere").0, 404);
    // The proxy's own port knows nothing of it.
    assert_ne!(
        get(proxy.addr, "/metrics").text(),
        page(&proxy, "/metrics").1
    );
}

#[test]
fn promtool_finds_nothing_wrong_with_the_metrics() {
    let backends = Backend::start_many(2);
    let proxy = ProxyOptions::new(&backends)
        .config(STATUS)
        .args(&["--ttl", "60"])
        .start();
    for _ in 0..4 {
        get(proxy.addr, "/big?kb=1");
    }
    let (_, text) = page(&proxy, "/metrics");
    assert!(
        text.contains("pibl_cache_requests_total{result=\"hit\"}"),
        "{text}"
    );
    let out = piped("promtool", &["check", "metrics"], &text);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{said}\n{text}"
    );
}

#[test]
fn a_headless_browser_renders_the_page_with_the_right_numbers() {
    let backends = Backend::start_many(2);
    let proxy = status_proxy(&backends, "");
    for _ in 0..6 {
        get(proxy.addr, "/whoami");
    }
    wait_until("six requests counted", || {
        jq(&proxy, ".requests.total") == "6"
    });
    let url = format!("http://{}/", status_addr(&proxy));
    let out = Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args(["--disable-dev-shm-usage", "--dump-dom", &url])
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in &backends {
        let row = dom
            .split("<tr")
            .find(|r| r.contains(&format!("data-backend=\"{}\"", b.addr)))
            .unwrap_or_else(|| panic!("no row for {} in {dom}", b.addr));
        assert!(row.contains("<td class=\"num requests\">3</td>"), "{row}");
        assert!(row.contains("class=\"up\""), "{row}");
    }
    assert!(dom.contains("id=\"scoreboard-table\""), "{dom}");
    assert!(dom.contains("<b>6</b>requests"), "{dom}");
    assert!(dom.contains("id=\"rate-chart\""), "{dom}");
}

#[test]
fn pibl_status_prints_the_table_and_the_json() {
    let backends = Backend::start_many(1);
    // pibl status reads the configured port: one free a moment ago.
    let port = free_port();
    let proxy = ProxyOptions::new(&backends)
        .config(&format!("[status]\nport = {port}\n"))
        .start();
    get(proxy.addr, "/whoami");
    let run = |args: &[&str]| {
        Command::new(PIBL)
            .arg("status")
            .args(args)
            .current_dir(proxy.dir.path())
            .output()
            .unwrap()
    };
    let table = run(&[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(
        text.contains("BACKEND") && text.contains(&backends[0].addr.to_string()),
        "{text}"
    );
    let json = run(&["--json"]);
    assert!(String::from_utf8_lossy(&json.stdout).starts_with("{\"version\":"));
    // Without a [status] port: the configuration says so, exit 78.
    std::fs::write(
        proxy.dir.path().join("other.conf"),
        "backends = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let none = run(&["--config", "other.conf"]);
    assert_eq!(none.status.code(), Some(78), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no status page"));
}

/// The status listener is a helper's: a client stalling it and others
/// flooding it hold no request to the proxy, whatever the model.
#[test]
fn a_stalled_and_flooded_status_listener_holds_nothing_of_the_proxy() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let backends = Backend::start_many(1);
    let proxy = status_proxy(&backends, "");
    let status = status_addr(&proxy);
    // Connected, and silent: the helper waits on it (client_header_timeout).
    let _stalled = std::net::TcpStream::connect(status).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (stop, tried) = (Arc::clone(&stop), Arc::clone(&tried));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Bounded: with the helper held, the queue fills, and a
                    // connect would wait on SYN retransmits.
                    let wait = std::time::Duration::from_millis(200);
                    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&status, wait) {
                        use std::io::Write;
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
                        tried.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        })
        .collect();
    wait_until("the flood under way", || tried.load(Ordering::Relaxed) > 20);
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/whoami").status, 200);
    }
    stop.store(true, Ordering::Relaxed);
    flood.into_iter().for_each(|t| t.join().unwrap());
}
