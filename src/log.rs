//! The access log and diagnostics.
//!
//! One line per exchange, in Combined Log Format followed by the backend, the
//! duration in seconds and the serving child's pid — the same extension
//! nginx users make with `$upstream_addr $request_time`, so GoAccess and awk
//! read it unchanged.  Each child opens the log file itself: flock(2) locks
//! belong to an open file description, and one inherited from the parent
//! would be a single lock shared by every child, excluding nobody.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::clock;

/// One exchange, as the access log records it.
pub struct Entry<'a> {
    pub client: IpAddr,
    /// When the request head was complete.
    pub time: SystemTime,
    /// `METHOD target HTTP/1.x`, or `-` when none could be read.
    pub request: &'a str,
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// The backend that answered, `-` when none did.
    pub upstream: Option<&'a str>,
    pub duration: Duration,
    pub pid: u32,
}

/// The log line, newline included.
pub fn format_line(e: &Entry<'_>) -> String {
    let mut line = String::with_capacity(256);
    let _ = writeln!(
        line,
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" {} {}.{:03} {}",
        e.client,
        clock::clf_time(e.time),
        escape(e.request.as_bytes()),
        e.status,
        e.body_bytes,
        e.referer.map_or("-".into(), escape),
        e.user_agent.map_or("-".into(), escape),
        e.upstream.unwrap_or("-"),
        e.duration.as_secs(),
        e.duration.subsec_millis(),
        e.pid,
    );
    line
}

/// Peer-supplied text made safe for a log line, as nginx does: quotes,
/// backslashes, control and non-ASCII bytes become `\xHH`.
fn escape(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The access log of one process: the file, and standard output.
pub struct AccessLog {
    file: File,
}

impl AccessLog {
    pub fn open(path: &Path) -> io::Result<AccessLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLog { file })
    }

    /// Appends `line` to the file in one write(2) under an exclusive flock(2),
    /// and prints it on standard output while still holding the lock, so
    /// neither copy is ever interleaved with another child's line.
    pub fn write(&self, line: &str) -> io::Result<()> {
        fs2::FileExt::lock_exclusive(&self.file)?;
        let written = (&self.file).write_all(line.as_bytes());
        // stdout may be closed or a full pipe; the file is the record.
        let mut out = io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        drop(out);
        let unlocked = fs2::FileExt::unlock(&self.file);
        written.and(unlocked)
    }
}

/// A diagnostic line on standard error: `pibl[PID]: message`.
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => {
        eprintln!("pibl[{}]: {}", std::process::id(), format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn combined_format_with_extras() {
        let e = Entry {
            client: "127.0.0.1".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_795_460_400),
            request: "GET /a\"b HTTP/1.1",
            status: 200,
            body_bytes: 612,
            referer: None,
            user_agent: Some(b"curl/8.5.0 \x01"),
            upstream: Some("127.0.0.1:9001"),
            duration: Duration::from_millis(1234),
            pid: 42,
        };
        assert_eq!(
            format_line(&e),
            "127.0.0.1 - - [23/Nov/2026:19:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 612 \"-\" \"curl/8.5.0 \\x01\" 127.0.0.1:9001 1.234 42\n"
        );
    }
}
