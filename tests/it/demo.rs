//! `pibl demo`: three replicas and the proxy from one command; Ctrl-C
//! (SIGINT to the whole process group, as a terminal sends it) stops them
//! all and leaves no process behind.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::util::*;

/// Ports free a moment ago.  The demo's replicas need ports written in the
/// config, so port 0 cannot be used for them.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[test]
fn demo_starts_three_replicas_and_ctrl_c_stops_everything() {
    let dir = TempDir::new();
    let ports = free_ports(5);
    let https_port = ports[3].to_string();
    let status_port = ports[4];
    let list: Vec<String> = ports[..3]
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    // The shipped configuration, on this machine's free ports.
    let shipped = include_str!("../../pibl.conf")
        .replace("listen = \"0.0.0.0\"", "listen = \"127.0.0.1\"")
        .replace(
            "backends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]",
            &format!("backends = [{}]", list.join(", ")),
        )
        .replace("port = 8081", &format!("port = {status_port}"));
    assert!(
        shipped.contains(&list[0]),
        "the shipped backends line moved"
    );
    fs::write(dir.path().join("pibl.conf"), shipped).unwrap();
    let child = Command::new(PIBL)
        .args(["demo", "--port", "0", "--https-port", &https_port])
        .current_dir(dir.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Process { child };
    let mut stderr = BufReader::new(demo.child.stderr.take().unwrap());
    let (mut proxy, mut try_https): (Option<SocketAddr>, Option<String>) = (None, None);
    let mut status_page = None;
    while proxy.is_none() || try_https.is_none() || status_page.is_none() {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "demo ended early");
        if let Some(rest) = line.split("listening on ").nth(1)
            && line.starts_with("pibl[")
        {
            proxy = Some(rest.split(',').next().unwrap().parse().unwrap());
        }
        if let Some(command) = line.split("try: ").nth(1) {
            try_https = Some(command.trim_end().to_string());
        }
        if let Some(url) = line.split("status page at ").nth(1) {
            status_page = Some(url.split(' ').next().unwrap().to_string());
        }
    }
    let proxy = proxy.unwrap();
    let names: Vec<String> = (0..6)
        .map(|_| {
            let r = get(proxy, "/");
            assert!(r.text().contains("<h1>Replica "), "{}", r.text());
            r.header("x-backend").unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "replica-1",
            "replica-2",
            "replica-3",
            "replica-1",
            "replica-2",
            "replica-3"
        ]
    );

    // Compressed, as the shipped configuration says: on the fly for the
    // miss, then the representation the cache made.
    for cache in ["MISS", "HIT"] {
        let out = Command::new("curl")
            .args(["-sS", "--compressed", "-D", "/dev/stderr"])
            .arg(format!("http://{proxy}/page?kb=16"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        assert!(head.contains("content-encoding: br\r\n"), "{head}");
        assert!(
            head.contains(&format!("x-cache: {}\r\n", cache.to_ascii_lowercase())),
            "{head}"
        );
        assert_eq!(out.stdout.len(), 16 * 1024);
        assert!(out.stdout.starts_with(b"<!DOCTYPE html>"));
    }

    // The status page the demo names, counting what was asked above.
    let status_page = status_page.unwrap();
    assert_eq!(status_page, format!("http://127.0.0.1:{status_port}/"));
    let status: SocketAddr = format!("127.0.0.1:{status_port}").parse().unwrap();
    assert_eq!(get(status, "/healthz").text(), "ok\n");
    let page = get(status, "/").text();
    let first = format!("data-backend=\"127.0.0.1:{}\"", ports[0]);
    assert!(page.contains(&first), "{page}");

    // The line the demo says works, run as it is.
    let command = try_https.unwrap();
    assert!(command.starts_with("curl --cacert "), "{command}");
    let words: Vec<&str> = command.split(' ').collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{command}: {page}");
    assert!(page.contains("<h1>Replica "), "{page}");

    let (pieces, _) = children_of(demo.pid());
    assert_eq!(pieces.len(), 4, "three replicas and the proxy");
    killpg(Pid::from_raw(demo.pid()), Signal::SIGINT).unwrap();
    assert_eq!(demo.wait_exit().code(), Some(0));
    for pid in pieces {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} outlived the demo"
        );
    }
}

/// A replica that cannot listen stops the demo with lines that say what
/// happened, and the exit status of a start-up failure.
#[test]
fn a_replica_that_cannot_start_stops_the_demo_clearly() {
    let dir = TempDir::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    fs::write(
        dir.path().join("pibl.conf"),
        format!("listen = \"127.0.0.1\"\nbackends = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let out = Command::new(PIBL)
        .args(["demo", "--port", "0"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pibl: ") && last.ends_with("the demo stopped") || last.contains("exited"),
        "{stderr}"
    );
    assert!(!stderr.contains("other error"), "{stderr}");
}
