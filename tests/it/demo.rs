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
    let ports = free_ports(3);
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    fs::write(
        dir.path().join("pibl.conf"),
        format!("listen = \"127.0.0.1\"\nbackends = [{}]\n", list.join(", ")),
    )
    .unwrap();
    let child = Command::new(PIBL)
        .args(["demo", "--port", "0"])
        .current_dir(dir.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Process { child };
    let mut stderr = BufReader::new(demo.child.stderr.take().unwrap());
    let proxy: SocketAddr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "demo ended early");
        if let Some(rest) = line.split("listening on ").nth(1) {
            if line.starts_with("pibl[") {
                break rest.split(',').next().unwrap().parse().unwrap();
            }
        }
    };
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
