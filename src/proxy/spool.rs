//! A body held whole on its way through pibl: in memory up to a bound,
//! then in a temporary file, as nginx buffers request bodies
//! (`client_body_buffer_size`, `client_body_temp_path`).
//!
//! A temporary file has no name from the start (O_TMPFILE), or loses it
//! the moment it is open where the file system cannot make unnamed files:
//! a pibl killed at any instruction leaves nothing behind, and the kernel
//! frees the space once the last descriptor closes.  The directory is
//! made mode 0700 when pibl starts, and whatever a crash left there in
//! the instant between an open and its unlink is removed then.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::http::wire::write_all_vectored;
use crate::tls::Stream;

/// Makes `dir`, mode 0700 (at start-up and at each reload).
pub fn make_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Empties `dir` of what a pibl that died left: at start-up, before any
/// child could be writing there.
pub fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// A new temporary file in `dir` that no name leads to.
pub fn unnamed_file(dir: &Path) -> io::Result<File> {
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            named_then_unlinked(dir)
        }
        done => done,
    }
}

/// For a file system without O_TMPFILE: a file made with a name no other
/// process or thread makes, then unlinked at once.
fn named_then_unlinked(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("body-{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

/// Where a body is being gathered.
pub struct Spool<'d> {
    memory: Vec<u8>,
    /// Most bytes held in memory; beyond, the body goes to a file.
    in_memory: usize,
    dir: &'d Path,
    file: Option<File>,
    len: u64,
}

impl<'d> Spool<'d> {
    pub fn new(in_memory: usize, dir: &'d Path) -> Spool<'d> {
        Spool {
            memory: Vec::new(),
            in_memory,
            dir,
            file: None,
            len: 0,
        }
    }

    /// The body gathered.
    pub fn held(self) -> Held {
        match self.file {
            Some(file) => Held::File {
                file,
                len: self.len,
            },
            None => Held::Memory(self.memory),
        }
    }
}

impl Write for Spool<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + data.len() > self.in_memory {
            let mut file = unnamed_file(self.dir)?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(data)?,
            None => self.memory.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A whole body, held.
pub enum Held {
    Memory(Vec<u8>),
    /// In an unnamed temporary file, from offset 0.
    File {
        file: File,
        len: u64,
    },
}

impl Held {
    pub fn empty() -> Held {
        Held::Memory(Vec::new())
    }

    pub fn len(&self) -> u64 {
        match self {
            Held::Memory(bytes) => bytes.len() as u64,
            Held::File { len, .. } => *len,
        }
    }

    /// Sends `head` and the body to `out`: a body in memory with it in one
    /// writev(2), one in a file after it with sendfile(2).  As often as
    /// asked: a request is sent again this way to another backend.
    pub fn send(&self, head: &[u8], out: Stream<'_>) -> io::Result<()> {
        match self {
            Held::Memory(body) => write_all_vectored(&mut { out }, &[head, body]),
            Held::File { file, len } => {
                { out }.write_all(head)?;
                out.send_file(file, 0..*len)
            }
        }
    }
}
