//! The access log and diagnostics.
//!
//! One line per exchange, in Combined Log Format followed by the backend, the
//! duration in seconds, the serving child's pid and the cache status — the
//! same kind of extension
//! nginx users make with `$upstream_addr $request_time`, so GoAccess and awk
//! read it unchanged.  Each child opens the log file itself: flock(2) locks
//! belong to an open file description, and one inherited from the parent
//! would be a single lock shared by every child, excluding nobody.
//!
//! With `[log] buffer` set, a process holds its lines and writes them
//! together, as nginx's `access_log ... buffer= flush=`: when the buffer is
//! full, when the oldest line has waited `flush` seconds (the waits of
//! `connection`, `prefork` and `thread` wake for that), and when the
//! process or thread lets go of its log.  One locked write per buffer
//! instead of four system calls per line; whole lines all the same.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::clock;
use crate::config::SyslogTarget;
use crate::shm::{self, Shareable};

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
    /// HIT, MISS, EXPIRED or BYPASS; `-` without a cache.
    pub cache: Option<&'a str>,
    /// The TLS protocol (nginx's `$ssl_protocol`); `-` for plain HTTP.
    pub tls: Option<&'a str>,
}

/// The log line, newline included.
pub fn format_line(e: &Entry<'_>) -> String {
    let mut line = String::with_capacity(256);
    let _ = writeln!(
        line,
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" {} {}.{:03} {} {} {}",
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
        e.cache.unwrap_or("-"),
        e.tls.unwrap_or("-"),
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

/// A syslog connection, RFC 3164 messages tagged `pibl[PID]`.
type SyslogWriter = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

fn connect_syslog(target: &SyslogTarget) -> io::Result<SyslogWriter> {
    let formatter = syslog::Formatter3164 {
        facility: target.facility,
        hostname: None,
        process: "pibl".into(),
        pid: std::process::id(),
    };
    syslog::unix_custom(formatter, &target.socket)
        .map_err(|e| io::Error::other(format!("syslog {}: {e}", target.socket.display())))
}

/// The access log of one process: the file, standard output, and syslog
/// when configured.
pub struct AccessLog {
    path: PathBuf,
    file: File,
    syslog: Option<SyslogWriter>,
    /// The `LOG_GENERATION` the file was opened in.
    generation: u64,
    /// Lines not written yet, and how many bytes of them to hold at most
    /// (0: none, each line is written as it comes).
    pending: Vec<u8>,
    buffer: usize,
    /// How long a line may be held, and when the oldest held one is due.
    flush_after: Duration,
    due: Option<Instant>,
}

/// How many times this process was asked to reopen its log files.
static LOG_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Has every access log of this process open its file again by name
/// before its next line: for log rotation (SIGUSR1).  The signal is the
/// caller's to read; the log only counts generations, so that each thread
/// of the thread model reopens its own.
pub fn reopen_all() {
    LOG_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl AccessLog {
    /// Opens the sinks.  A syslog that cannot be reached is reported once
    /// and skipped: the file is the record.
    pub fn open(path: &Path, syslog: Option<&SyslogTarget>) -> io::Result<AccessLog> {
        let syslog =
            syslog.and_then(|target| connect_syslog(target).map_err(|e| crate::diag!("{e}")).ok());
        Ok(AccessLog {
            path: path.to_path_buf(),
            file: open_append(path)?,
            syslog,
            generation: LOG_GENERATION.load(Ordering::Relaxed),
            pending: Vec::new(),
            buffer: 0,
            flush_after: Duration::ZERO,
            due: None,
        })
    }

    /// Holds up to `buffer` bytes of lines, none longer than `flush_after`.
    pub fn buffered(mut self, buffer: usize, flush_after: Duration) -> AccessLog {
        self.buffer = buffer;
        self.flush_after = flush_after;
        self.pending = Vec::with_capacity(buffer);
        self
    }

    /// When the held lines must be written, if any are held.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Opens the file again by name, for log rotation: lines go to
    /// whatever file now has the name.
    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    /// Logs `line`: to syslog at once, and to the file and standard output
    /// now or, with a buffer, with the lines held.  A newer generation of
    /// the log (`reopen_all`) opens the file again first, after writing
    /// what is held to the old one.
    pub fn write(&mut self, line: &str) -> io::Result<()> {
        let generation = LOG_GENERATION.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            // The held lines go to the old file; the new one is opened
            // even if they could not be written.
            let flushed = self.flush();
            self.reopen()?;
            flushed?;
        }
        if let Some(syslog) = &mut self.syslog {
            let _ = syslog.info(line.trim_end());
        }
        if self.buffer == 0 {
            return append(&self.file, line.as_bytes());
        }
        if self.pending.len() + line.len() > self.buffer {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.due = Some(Instant::now() + self.flush_after);
        }
        self.pending.extend_from_slice(line.as_bytes());
        if self.pending.len() >= self.buffer {
            return self.flush();
        }
        Ok(())
    }

    /// Writes the held lines, if any.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = append(&self.file, &self.pending);
        self.pending.clear();
        self.due = None;
        written
    }
}

/// Appends whole lines to `file` in one write(2) under an exclusive
/// flock(2), and prints them on standard output while still holding the
/// lock, so neither copy is ever interleaved with another process's lines.
fn append(file: &File, lines: &[u8]) -> io::Result<()> {
    crate::sys::restarting(|| fs2::FileExt::lock_exclusive(file))?;
    let written = { file }.write_all(lines);
    // stdout may be closed or a full pipe; the file is the record.
    let mut out = io::stdout().lock();
    let _ = out.write_all(lines).and_then(|()| out.flush());
    drop(out);
    let unlocked = fs2::FileExt::unlock(file);
    written.and(unlocked)
}

/// A process or thread letting go of its log writes what it holds.
impl Drop for AccessLog {
    fn drop(&mut self) {
        report(self.flush());
    }
}

/// Says on standard error that the log file could not be written, once a
/// minute at most; the exchange it records goes on regardless, and its
/// line still goes to standard output.
pub fn report(written: io::Result<()>) {
    if let Err(e) = written
        && worth_saying(Recurring::LogWrite)
    {
        crate::diag!(
            "cannot write log file: {} (said once a minute at most)",
            crate::error::describe_io(&e)
        );
    }
}

/// Failures that, once they begin, tend to recur with every request — a
/// full disk fails every access-log line and every cache store — and are
/// said once a minute at most, across all of pibl's processes: a line a
/// request would bury everything else said (and fill the journal).  nginx
/// says a failing access-log write once a minute.
#[derive(Clone, Copy)]
pub enum Recurring {
    LogWrite = 0,
    CacheStore = 1,
    /// Every connection the configuration allows being served.
    Full = 2,
}

/// How many kinds of `Recurring` there are: the length of `Hush`'s record.
pub const RECURRING_KINDS: usize = 3;

/// Milliseconds between two sayings of one recurring thing (the janitor's
/// evictions keep to it too).
pub const RECURRING_QUIET: u64 = 60_000;

/// When each kind of failure that can recur with every request was last
/// said (`clock::now_ms`), by any of pibl's processes: see `worth_saying`.
#[repr(C)]
struct Hush {
    last_said_ms: [AtomicU64; RECURRING_KINDS],
}

// SAFETY: atomics only; zero is "never said".
unsafe impl Shareable for Hush {}

/// The parent's shared record of what was said when, inherited by every
/// child and seen by every thread; unset only in unit tests, which then
/// say everything.
static HUSH: OnceLock<&'static Hush> = OnceLock::new();

/// Maps the shared record `worth_saying` consults; once, before the first
/// process or thread that serves is started.
pub fn share_hush() -> Result<(), crate::error::Error> {
    let hush = shm::map::<Hush>()?;
    let _ = HUSH.set(hush);
    Ok(())
}

/// Whether a failure of kind `what` is to be said now: unless one was said
/// in the last minute by any process.  Of several meeting it at once, one
/// says it.
pub fn worth_saying(what: Recurring) -> bool {
    let Some(hush) = HUSH.get() else {
        return true;
    };
    let slot = &hush.last_said_ms[what as usize];
    let now = clock::now_ms().max(1);
    let last = slot.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < RECURRING_QUIET {
        return false;
    }
    slot.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Where diagnostics also go, besides standard error.  Set by the parent at
/// start-up and at each reload; a child inherits it.
static DIAG_SYSLOG: Mutex<Option<SyslogTarget>> = Mutex::new(None);

pub fn set_diag_syslog(target: Option<SyslogTarget>) {
    *DIAG_SYSLOG.lock().unwrap_or_else(|e| e.into_inner()) = target;
}

/// How much a diagnostic matters, as syslog ranks it.
#[derive(Clone, Copy)]
pub enum Level {
    Error,
    Notice,
}

/// Writes a diagnostic: `pibl[PID]: message` on standard error and, when
/// configured, a syslog message.  Diagnostics are rare, so each opens its
/// own syslog connection: none is left open for children to inherit.
pub fn diag(level: Level, message: std::fmt::Arguments<'_>) {
    // One write(2) for the whole line: eprintln! writes each piece of it
    // apart, and lines from processes sharing standard error would mix.
    let line = format!("pibl[{}]: {message}\n", std::process::id());
    let _ = io::stderr().write_all(line.as_bytes());
    let target = DIAG_SYSLOG
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(mut writer) = target.and_then(|t| connect_syslog(&t).ok()) {
        let _ = match level {
            Level::Error => writer.err(message.to_string()),
            Level::Notice => writer.notice(message.to_string()),
        };
    }
}

/// An error worth an operator's attention: `diag!("cannot open {}", path)`.
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::log::diag($crate::log::Level::Error, format_args!($($arg)*))
    };
}

/// A normal event of the daemon's life: listening, reloaded, reopened.
#[macro_export]
macro_rules! notice {
    ($($arg:tt)*) => {
        $crate::log::diag($crate::log::Level::Notice, format_args!($($arg)*))
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
            cache: Some("HIT"),
            tls: Some("TLSv1.3"),
        };
        assert_eq!(
            format_line(&e),
            "127.0.0.1 - - [23/Nov/2026:19:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 612 \"-\" \"curl/8.5.0 \\x01\" 127.0.0.1:9001 1.234 42 HIT TLSv1.3\n"
        );
    }
}
