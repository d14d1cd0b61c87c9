//! The startup error type and the exit statuses pibl documents.
//!
//! Only start-up can fail this way: once the parent is accepting, problems are
//! logged and the daemon keeps serving.  Each variant maps to one exit status,
//! taken from sysexits(3) where one fits.

use std::fmt;
use std::io;

/// A wrong command line, as clap exits for one.
pub const EXIT_USAGE: i32 = 2;
/// Bad or missing configuration (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
/// An operating-system failure at start-up: bind, mmap, fork (EX_OSERR).
pub const EXIT_OSERR: i32 = 71;

#[derive(Debug)]
pub enum Error {
    /// A configuration problem: `file:line: problem`, line 0 when none applies.
    Config {
        file: String,
        line: usize,
        problem: String,
    },
    /// A system call failed on a named object ("cannot listen on 0.0.0.0:80").
    Os { what: String, source: io::Error },
    /// An argument clap cannot judge (a URL to purge).
    Usage(String),
    /// Something pibl started did not come up or did not last (the demo's
    /// pieces): said as it is, with no errno to add.
    Failed(String),
}

impl Error {
    pub fn config(file: &str, line: usize, problem: impl Into<String>) -> Error {
        Error::Config {
            file: file.to_string(),
            line,
            problem: problem.into(),
        }
    }

    pub fn os(what: impl Into<String>, source: io::Error) -> Error {
        Error::Os {
            what: what.into(),
            source,
        }
    }

    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Config { .. } => EXIT_CONFIG,
            Error::Os { .. } | Error::Failed(_) => EXIT_OSERR,
            Error::Usage(_) => EXIT_USAGE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config {
                file,
                line: 0,
                problem,
            } => write!(f, "{file}: {problem}"),
            Error::Config {
                file,
                line,
                problem,
            } => write!(f, "{file}:{line}: {problem}"),
            Error::Os { what, source } => write!(f, "{what}: {}", describe_io(source)),
            Error::Usage(problem) | Error::Failed(problem) => f.write_str(problem),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(source),
            Error::Config { .. } | Error::Usage(_) | Error::Failed(_) => None,
        }
    }
}

/// strerror(3)'s text without Rust's " (os error N)" suffix, the way Unix
/// daemons print it.
pub fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// Whether `e` is pibl's own shortage of descriptors, memory or buffers,
/// which passes, rather than a fault of what it was working with.
pub fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
