//! One cache entry's file: its format, read (under a shared fs2 lock) and
//! checked, and the header written for it.
//!
//! An entry file is a header of fixed-width text lines, the response head
//! as the backend sent it, and the body:
//!
//! ```text
//! pibl-cache 1
//! key http://host/target
//! stored 00000001795460400        (Unix seconds)
//! expires 00000001795460460
//! head 00000000000000000123       (bytes of the head that follows)
//! body 00000000000000001024       (bytes of the body after it)
//! check 0123456789abcdef          (FNV-1a of the lines above and the head)
//! <empty line><head><body>
//! ```
//!
//! The file name is a hash of the key, and the full key inside is checked
//! on every read: no collision is served, and no request names a file.  A
//! file whose size or check does not agree with its header is corrupt: it
//! is removed and treated as a miss.  The body is not in the check, so a
//! hit can go from the file to the socket with sendfile(2) without being
//! read first; truncation, the likely damage, is caught by the size.
//!
//! A file on disk is input like a request: `parse` and `check` are pure,
//! unit-tested and fuzzed (fuzz/fuzz_targets/cache_entry.rs); `read` only
//! locks and reads the bytes they ask for.

use std::cell::Cell;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::http::{self, ResponseHead};

/// FNV-1a, 64 bits: the entries' check, and the hash that names their
/// files.
pub fn fnv1a(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

const MAGIC: &str = "pibl-cache 1\n";
/// Most bytes of header and head read to open an entry.
const MAX_PREFIX: usize = 96 * 1024;
/// What is read first: enough for the header and a usual head.
const FIRST_READ: usize = 8 * 1024;

thread_local! {
    /// Entries this thread marked used lately, by name hash: (hash, second).
    static TOUCHED: Cell<[(u64, u64); 8]> = const { Cell::new([(0, 0); 8]) };
}

/// Marks an entry used now, for the janitor's least-recently-used order.
/// The order needs seconds, not every hit: a thread marks one entry at most
/// once a second, which spares a hot entry a utimensat(2) per request.
pub fn touch(entry: &Entry) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let slot = (entry.name_hash % 8) as usize;
    let seen = TOUCHED.with(|t| {
        let mut all = t.get();
        let seen = all[slot] == (entry.name_hash, second);
        all[slot] = (entry.name_hash, second);
        t.set(all);
        seen
    });
    if !seen {
        let _ = entry.file.set_times(fs::FileTimes::new().set_accessed(now));
    }
}

/// An entry open for reading: its file, positioned nowhere in particular,
/// and its first bytes as read to check it.  A clone shares them (`Recent`).
#[derive(Clone)]
pub struct Entry {
    pub file: Rc<File>,
    pub head: Rc<ResponseHead>,
    /// The file's first bytes: header, head, and the body when it is small.
    pub(super) prefix: Rc<Vec<u8>>,
    /// Where the head is in `prefix`, for rewriting the header (`refresh`).
    pub(super) head_at: std::ops::Range<usize>,
    /// The hash that names the file.
    pub(super) name_hash: u64,
    pub stored: u64,
    pub expires: u64,
    pub body_offset: u64,
    pub body_len: u64,
}

impl Entry {
    /// The body, when the first read of the file took all of it: a small
    /// body is then sent from memory with the head, in one write.
    pub(super) fn body_in_memory(&self) -> Option<&[u8]> {
        self.prefix.get(self.body_range()?)
    }

    /// Where the body is in `prefix`, were it all there.
    fn body_range(&self) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(self.body_offset).ok()?;
        let end = usize::try_from(self.body_offset + self.body_len).ok()?;
        Some(start..end)
    }

    /// For a hit whose body came with the first read: marks the entry used
    /// and closes its file (unless `Recent` keeps it open, unlocked), which
    /// lets go of the shared lock, and returns the body.  The lock is then
    /// held for a read, not across the write to a client that may sleep:
    /// every flock(2) and close(2) on an entry walks the list of its
    /// holders, which on a hot entry would otherwise grow to one per
    /// connection.  An entry whose body is still in the file comes back as
    /// it is.
    pub fn into_body(self) -> Body {
        let Some(range) = self.body_range().filter(|r| r.end <= self.prefix.len()) else {
            return Body::InFile(self);
        };
        touch(&self);
        Body::InMemory(InMemory {
            prefix: self.prefix,
            range,
        })
    }
}

/// Where a hit's body is to be sent from (`Entry::into_body`).
pub enum Body {
    InMemory(InMemory),
    InFile(Entry),
}

/// A body read with its entry's header.
pub struct InMemory {
    prefix: Rc<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl InMemory {
    pub fn bytes(&self) -> &[u8] {
        &self.prefix[self.range.clone()]
    }
}

/// What an entry's header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub stored: u64,
    pub expires: u64,
    /// Where the head starts: just after the header's empty line.
    pub head_at: usize,
    pub head_len: usize,
    pub body_len: u64,
    /// The FNV-1a the header says of itself and the head, and where its
    /// line starts (what comes before is checked).
    check: u64,
    check_at: usize,
}

impl Header {
    /// Where the body starts in the file.
    pub fn body_offset(&self) -> u64 {
        (self.head_at + self.head_len) as u64
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Parses the header at the start of `bytes`, an entry file's first bytes.
/// `Ok(None)`: the header's end is not among them (read more, or the file
/// is damaged if there is no more).  Pure.
pub fn parse(bytes: &[u8]) -> io::Result<Option<Header>> {
    let Some(end) = bytes.windows(2).position(|w| w == b"\n\n") else {
        return Ok(None);
    };
    let head_at = end + 2;
    let text = std::str::from_utf8(&bytes[..head_at]).map_err(|_| damaged("header not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC.trim_end()) {
        return Err(damaged("not a cache entry"));
    }
    let mut field = |name: &str| -> io::Result<&str> {
        let line = lines.next().ok_or_else(|| damaged("short header"))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or_else(|| damaged("bad header line"))
    };
    let number = |v: &str| v.parse::<u64>().map_err(|_| damaged("bad number"));
    let key = field("key")?.to_string();
    let stored = number(field("stored")?)?;
    let expires = number(field("expires")?)?;
    let head_len = usize::try_from(number(field("head")?)?).map_err(|_| damaged("bad number"))?;
    let body_len = number(field("body")?)?;
    let check = u64::from_str_radix(field("check")?, 16).map_err(|_| damaged("bad check"))?;
    let check_at = text.find("\ncheck ").ok_or_else(|| damaged("no check"))? + 1;
    Ok(Some(Header {
        key,
        stored,
        expires,
        head_at,
        head_len,
        body_len,
        check,
        check_at,
    }))
}

/// Checks an entry whose header is `header` against its bytes: `prefix`,
/// the file's first bytes, which must hold the whole head, and `size`, the
/// file's.  Returns the head, parsed.  Pure.
pub fn check(header: &Header, prefix: &[u8], size: u64) -> io::Result<ResponseHead> {
    let head = header
        .head_at
        .checked_add(header.head_len)
        .and_then(|end| prefix.get(header.head_at..end))
        .ok_or_else(|| damaged("head cut short"))?;
    if fnv1a(fnv1a(FNV_START, &prefix[..header.check_at]), head) != header.check {
        return Err(damaged("check does not match"));
    }
    if header.body_offset().checked_add(header.body_len) != Some(size) {
        return Err(damaged("size does not match"));
    }
    match http::parse_response_head(head) {
        Ok(http::Parsed::Done(h, _)) => Ok(h),
        _ => Err(damaged("bad response head")),
    }
}

/// An entry's header: fixed-width lines, so it can be rewritten in place.
pub fn header_bytes(key: &str, stored: u64, expires: u64, head: &[u8], body_len: u64) -> Vec<u8> {
    let lines = format!(
        "{MAGIC}key {key}\nstored {stored:020}\nexpires {expires:020}\nhead {:020}\nbody {body_len:020}\n",
        head.len()
    );
    let check = fnv1a(fnv1a(FNV_START, lines.as_bytes()), head);
    format!("{lines}check {check:016x}\n\n").into_bytes()
}

/// Reads the header of an entry file, whatever its key.
pub fn read_header(file: File) -> io::Result<Header> {
    read(file, "").map(|(header, _)| header)
}

/// Reads and checks an entry's header and head.  `Ok(None)`: a sound entry
/// for another key (a hash collision).
pub fn read_entry(file: File, key: &str) -> io::Result<Option<Entry>> {
    let (header, entry) = read(file, key)?;
    Ok(entry.filter(|_| header.key == key))
}

/// Whether a failure to read an entry means the file is damaged (and goes),
/// not that reading it failed this once.
pub fn is_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Reads up to `buf.len()` bytes at `offset` in one pread(2) (more only if
/// interrupted).  Fewer bytes than asked mean the end of the file: entries
/// are regular files that no one extends.
fn read_some_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    crate::sys::restarting(|| file.read_at(buf, offset))
}

/// The first bytes of an entry file, at least its header and head when
/// they fit in `MAX_PREFIX`, and its size.  The first read asks for
/// `FIRST_READ` bytes: a smaller file is then read whole, its size known
/// without fstat(2) and its body ready to send.
fn read_prefix(file: &File) -> io::Result<(Vec<u8>, Option<Header>, u64)> {
    let mut prefix = vec![0u8; FIRST_READ];
    let n = read_some_at(file, &mut prefix, 0)?;
    prefix.truncate(n);
    let size = if n < FIRST_READ {
        n as u64
    } else {
        file.metadata()?.len()
    };
    let mut header = parse(&prefix)?;
    if header.is_none() && size > prefix.len() as u64 {
        let had = prefix.len();
        prefix.resize(size.min(MAX_PREFIX as u64) as usize, 0);
        file.read_exact_at(&mut prefix[had..], had as u64)?;
        header = parse(&prefix)?;
    }
    if let Some(h) = &header {
        let head_end = h.head_at.saturating_add(h.head_len);
        if head_end > prefix.len() && head_end as u64 <= size && head_end <= MAX_PREFIX {
            let had = prefix.len();
            prefix.resize(head_end, 0);
            file.read_exact_at(&mut prefix[had..], had as u64)?;
        }
    }
    Ok((prefix, header, size))
}

/// Reads and checks an entry, whatever its key, under a shared lock on it.
/// The lock is kept while the body is in memory (closing the file drops it,
/// one flock(2) fewer per hit) and let go otherwise.
fn read(file: File, key: &str) -> io::Result<(Header, Option<Entry>)> {
    crate::sys::restarting(|| fs2::FileExt::lock_shared(&file))?;
    let (prefix, header, size) = read_prefix(&file)?;
    let header = header.ok_or_else(|| damaged("no header"))?;
    let head = check(&header, &prefix, size)?;
    if header.key != key {
        return Ok((header, None));
    }
    let entry = Entry {
        file: Rc::new(file),
        head: Rc::new(head),
        prefix: Rc::new(prefix),
        head_at: header.head_at..header.head_at + header.head_len,
        name_hash: fnv1a(FNV_START, key.as_bytes()),
        stored: header.stored,
        expires: header.expires,
        body_offset: header.body_offset(),
        body_len: header.body_len,
    };
    if entry.body_in_memory().is_none() {
        let _ = fs2::FileExt::unlock(&*entry.file);
    }
    Ok((header, Some(entry)))
}

/// What `copy_body` reads at a time.
const READ_SIZE: usize = 64 * 1024;

/// Writes the whole of `entry`'s body to `out`, from memory or read from
/// its file a buffer at a time (to be coded or decoded on the way).
pub fn copy_body(entry: &Entry, out: &mut dyn io::Write) -> io::Result<()> {
    if let Some(body) = entry.body_in_memory() {
        return out.write_all(body);
    }
    let mut buf = vec![0u8; READ_SIZE];
    let end = entry.body_offset + entry.body_len;
    let mut at = entry.body_offset;
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let n = read_some_at(&entry.file, &mut buf[..want], at)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";

    fn file_bytes(key: &str) -> Vec<u8> {
        let mut bytes = header_bytes(key, 1_795_460_400, 1_795_460_460, HEAD, 5);
        bytes.extend_from_slice(HEAD);
        bytes.extend_from_slice(b"hello");
        bytes
    }

    #[test]
    fn a_written_header_parses_back_and_checks() {
        let bytes = file_bytes("http://a.example/x");
        let header = parse(&bytes).unwrap().unwrap();
        assert_eq!(header.key, "http://a.example/x");
        assert_eq!(
            (header.stored, header.expires),
            (1_795_460_400, 1_795_460_460)
        );
        assert_eq!((header.head_len, header.body_len), (HEAD.len(), 5));
        assert_eq!(
            &bytes[header.body_offset() as usize..],
            b"hello",
            "the body follows the head"
        );
        let head = check(&header, &bytes, bytes.len() as u64).unwrap();
        assert_eq!(head.status, 200);
    }

    #[test]
    fn a_header_not_all_there_asks_for_more() {
        let bytes = file_bytes("http://a.example/x");
        let header_end = parse(&bytes).unwrap().unwrap().head_at;
        assert_eq!(parse(&bytes[..header_end - 1]).unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
    }

    #[test]
    fn damage_is_found_wherever_it_is() {
        let bytes = file_bytes("http://a.example/x");
        let size = bytes.len() as u64;
        let header = parse(&bytes).unwrap().unwrap();
        // A changed byte of the head, of the key, of a number.
        for at in [header.head_at + 3, 20, header.check_at - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            let judged = parse(&bad).and_then(|h| {
                let h = h.ok_or_else(|| damaged("no header"))?;
                check(&h, &bad, size)
            });
            assert!(judged.is_err_and(|e| is_damage(&e)), "byte {at} changed");
        }
        // Cut short: the size no longer agrees.
        let cut = &bytes[..bytes.len() - 1];
        assert!(check(&header, cut, cut.len() as u64).is_err());
        // Not an entry at all.
        assert!(parse(b"GET / HTTP/1.1\n\n").is_err());
    }

    #[test]
    fn header_lengths_that_overflow_are_damage_not_a_panic() {
        let text = format!(
            "{MAGIC}key k\nstored 1\nexpires 2\nhead {}\nbody {}\ncheck 0\n\n",
            u64::MAX,
            u64::MAX
        );
        let bytes = text.as_bytes();
        if let Ok(Some(header)) = parse(bytes) {
            assert!(check(&header, bytes, bytes.len() as u64).is_err());
        }
    }
}
