//! Configuration errors: one line naming the file, the line and the
//! problem, exit status 78, and nothing else.

use std::fs;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use crate::util::*;

fn run_in(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(PIBL)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn with_config(text: &str, args: &[&str]) -> Output {
    let dir = TempDir::new();
    fs::write(dir.path().join("pibl.conf"), text).unwrap();
    run_in(&dir, args)
}

/// Exit 78 and exactly one stderr line, which starts with `expected`.
fn assert_config_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.starts_with(expected),
        "{stderr:?} should start with {expected:?}"
    );
    assert!(out.stdout.is_empty());
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn each_config_error_names_file_and_line() {
    let cases = [
        (
            "port = 1\nbackends = [\"127.0.0.1:1\"]\nbogus = 3\n",
            "pibl: pibl.conf:3: unknown field `bogus`",
        ),
        ("backends = [\"127.0.0.1:1\"\n", "pibl: pibl.conf:"),
        (
            "backends = [\"127.0.0.1:1\", \"no-port\"]\n",
            "pibl: pibl.conf:1: backend \"no-port\": expected host:port",
        ),
        (
            "port = 8080\nbackends = []\n",
            "pibl: pibl.conf:2: backends: the list is empty",
        ),
        ("port = 8080\n", "pibl: pibl.conf: no backends"),
        (
            "backends = [\"127.0.0.1:1\"]\nport = 99999\n",
            "pibl: pibl.conf:2:",
        ),
        (
            "backends = [\"127.0.0.1:1\"]\nport = \"eighty\"\n",
            "pibl: pibl.conf:2:",
        ),
        (
            "backends = [\"127.0.0.1:1\"]\nlisten = \"localhost!\"\n",
            "pibl: pibl.conf:2: listen:",
        ),
        (
            "backends = [\"127.0.0.1:1\"]\nmax_clients = 0\n",
            "pibl: pibl.conf:2: max_clients: must be at least 1",
        ),
        (
            "backends = [\"127.0.0.1:1\"]\n[log]\nfiel = \"x\"\n",
            "pibl: pibl.conf:3: unknown field `fiel`",
        ),
    ];
    for (text, expected) in cases {
        assert_config_error(&with_config(text, &[]), expected);
        assert_config_error(&with_config(text, &["--check"]), expected);
    }
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new();
    assert_config_error(
        &run_in(&dir, &[]),
        "pibl: pibl.conf: No such file or directory",
    );
    assert_config_error(
        &run_in(&dir, &["--config", "elsewhere.conf"]),
        "pibl: elsewhere.conf: No such file",
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let out = with_config("backends = [\"127.0.0.1:1\"]\n", &["--check"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pibl: pibl.conf: configuration ok\n"
    );
    let shipped = Command::new(PIBL)
        .args([
            "--check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pibl.conf"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        shipped.status.code(),
        Some(0),
        "the shipped pibl.conf is valid"
    );
}

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = with_config(
        "listen = \"127.0.0.1\"\nbackends = [\"127.0.0.1:1\"]\n",
        &["--port", &port],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert_eq!(
        stderr.trim_end(),
        format!("pibl: cannot listen on 127.0.0.1:{port}: Address already in use")
    );
}

#[test]
fn help_and_version() {
    let help = Command::new(PIBL).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config", "--port", "--listen", "--check", "demo", "backend",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}: {text}");
    }
    let version = Command::new(PIBL).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("pibl {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(PIBL).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(PIBL)
        .args(["--port", "http"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
