//! The response cache: one file per entry in a directory under the working
//! directory, so entries survive a crash or restart of pibl.
//!
//! Entries are spread over 256 subdirectories named by the last two hex
//! digits of their name, as nginx's `levels=2`: creating and renaming a
//! file lock its directory, and one directory would make every miss of
//! every child wait its turn there.
//!
//! Children share it through the file system alone.  An entry is written
//! to a temporary file beside its place, under an exclusive fs2 lock on
//! that file, and rename(2)d into place before the lock goes.  For a
//! miss, the temporary file is the URL's fill lock, `.fill-<hash>`: the
//! one file other processes missing the same URL wait on (see `fill`).  A
//! rename is atomic, so a reader sees a whole old entry or a whole new one,
//! and a writer killed half-way leaves only a temporary file, which no
//! reader opens and the janitor or the next start removes.  No lock spans
//! the directory: writers of different URLs never wait for each other, and
//! whoever removes an entry it has judged (the janitor) first renames it
//! aside and makes sure it is the file it judged (`remove_if_same`).
//! Readers take a shared fs2 lock on the entry they opened while they read
//! its header; the one change made in place, a revalidation's new header,
//! takes it exclusive.  A process keeps the few small entries it serves
//! most in memory, and checks with one stat(2) per hit that the name still
//! holds the very file it read (`Recent`).
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

pub mod admin;
pub mod janitor;

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::wire::write_all_vectored;
use crate::http::{self, RequestHead, ResponseHead};

const MAGIC: &str = "pibl-cache 1\n";
/// Temporary files: an entry being written without a fill lock, a fill
/// lock (an entry being fetched), an entry being removed.  No entry's name
/// starts with a dot.
const TEMP_PREFIX: &str = ".tmp-";
const FILL_PREFIX: &str = ".fill-";
const EVICT_PREFIX: &str = ".evict-";
/// A mark that a URL's last response was not storable (`note_pass`).
const PASS_PREFIX: &str = ".pass-";
/// Age past which a temporary file no one holds locked is debris, left by
/// a process that died (or, for a fill lock, a miss that stored nothing).
const DEBRIS_AGE: Duration = Duration::from_secs(60);
/// Most bytes of header and head read to open an entry.
const MAX_PREFIX: usize = 96 * 1024;
/// What is read first: enough for the header and a usual head.
const FIRST_READ: usize = 8 * 1024;

/// Statuses cacheable by default (RFC 9110 §15.1, RFC 9111 §4.2.2).
const CACHEABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

pub struct Cache {
    dir: PathBuf,
    ttl: Duration,
    max_entry: u64,
}

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

/// The few small entries this thread served last, kept in memory with
/// their file open (unlocked), as nginx's `open_file_cache` keeps
/// descriptors: a hot entry is then found with one stat(2) of its name
/// instead of open, flock, pread and close and a check of its header.
///
/// The stat must show the very file that was read and checked, unchanged:
/// same device, inode and birth time (the inode of a replaced entry may
/// be reused by its successor, its birth time not), same size, and same
/// mtime, which every change of an entry sets (it is the expiry time).
/// An entry renamed over, refreshed, purged or evicted is then read again
/// from disk, and an expired one is never served from here.  Only an entry
/// read twice from disk by this thread is kept, so a client walking many
/// URLs costs no extra system calls.
struct Recent {
    path: PathBuf,
    /// The full key, checked as on disk: a colliding key names the same file.
    key: String,
    identity: Identity,
    entry: Entry,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    modified: SystemTime,
    born: SystemTime,
}

/// Entries a thread keeps in memory, at most.
const RECENT_MAX: usize = 4;

thread_local! {
    static RECENT: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
    /// Name hashes of entries this thread read from disk lately.
    static READ_BEFORE: Cell<[u64; 8]> = const { Cell::new([0; 8]) };
}

impl Identity {
    /// None where the file system does not record birth times.
    fn of(meta: &fs::Metadata) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            modified: meta.modified().ok()?,
            born: meta.created().ok()?,
        })
    }
}

impl Recent {
    /// The fresh entry kept for `key` at `path`, if its file is still the
    /// one read.
    fn find(path: &Path, key: &str) -> Option<Entry> {
        RECENT.with_borrow_mut(|recent| {
            let at = recent.iter().position(|r| r.path == path && r.key == key)?;
            let same = fs::metadata(path).ok().and_then(|m| Identity::of(&m));
            if same != Some(recent[at].identity) || recent[at].entry.expires <= unix_now() {
                recent.remove(at);
                return None;
            }
            Some(recent[at].entry.clone())
        })
    }

    /// Keeps a fresh entry just read from disk, if it is small and was
    /// read before.  Its shared lock goes now: this copy of the file stays
    /// open and must not hold back a writer.
    fn offer(path: &Path, key: &str, entry: &Entry) {
        if entry.body_in_memory().is_none() {
            return;
        }
        let slot = (entry.name_hash % 8) as usize;
        let mut seen = READ_BEFORE.get();
        let again = seen[slot] == entry.name_hash;
        seen[slot] = entry.name_hash;
        READ_BEFORE.set(seen);
        if !again {
            return;
        }
        let Some(identity) = entry.file.metadata().ok().and_then(|m| Identity::of(&m)) else {
            return;
        };
        if fs2::FileExt::unlock(&*entry.file).is_err() {
            return;
        }
        RECENT.with_borrow_mut(|recent| {
            recent.retain(|r| r.path != path);
            recent.truncate(RECENT_MAX - 1);
            recent.insert(
                0,
                Recent {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    identity,
                    entry: entry.clone(),
                },
            );
        });
    }
}

/// What the cache says to a request, as the `X-Cache` field reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Expired,
    Revalidated,
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Expired => "EXPIRED",
            Status::Revalidated => "REVALIDATED",
            Status::Bypass => "BYPASS",
        }
    }
}

/// An entry open for reading: its file, positioned nowhere in particular,
/// and its first bytes as read to check it.  A clone shares them (`Recent`).
#[derive(Clone)]
pub struct Entry {
    pub file: Rc<File>,
    pub head: Rc<ResponseHead>,
    /// The file's first bytes: header, head, and the body when it is small.
    prefix: Rc<Vec<u8>>,
    /// Where the head is in `prefix`, for rewriting the header (`refresh`).
    head_at: std::ops::Range<usize>,
    /// The hash that names the file.
    name_hash: u64,
    pub stored: u64,
    pub expires: u64,
    pub body_offset: u64,
    pub body_len: u64,
}

impl Entry {
    /// The body, when the first read of the file took all of it: a small
    /// body is then sent from memory with the head, in one write.
    fn body_in_memory(&self) -> Option<&[u8]> {
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

pub enum Lookup {
    Fresh(Entry),
    /// Expired, but perhaps still valid: revalidation may refresh it.
    Stale(Entry),
    Missing,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn fnv1a(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The cache key of a request: scheme, host (lower-cased, default port
/// dropped) and target.  Requests without a Host share the empty host.
pub fn key(req: &RequestHead, target: &str) -> String {
    key_of(
        http::value(&req.fields, "host").unwrap_or("").trim(),
        target,
    )
}

/// `http://host/target`, the host lower-cased and without port 80.
fn key_of(host: &str, target: &str) -> String {
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix(":80").unwrap_or(&host);
    format!("http://{host}{target}")
}

impl Cache {
    pub fn new(dir: PathBuf, ttl: Duration, max_entry: u64) -> Cache {
        Cache {
            dir,
            ttl,
            max_entry,
        }
    }

    /// The cache `config` asks for, if its TTL is not zero, with its
    /// directory made and cleared of what a crashed pibl left half-written.
    pub fn open(config: &crate::config::Config) -> Result<Option<Cache>, crate::error::Error> {
        let settings = &config.cache;
        if settings.ttl.is_zero() {
            return Ok(None);
        }
        let cache = Cache::new(settings.dir.clone(), settings.ttl, settings.max_entry);
        cache.prepare().map_err(|e| {
            crate::error::Error::os(
                format!("cannot use cache directory {}", settings.dir.display()),
                e,
            )
        })?;
        Ok(Some(cache))
    }

    /// The same cache for another thread.
    pub fn for_thread(&self) -> Cache {
        Cache::new(self.dir.clone(), self.ttl, self.max_entry)
    }

    /// Creates the directory and removes temporary files left by a pibl
    /// that died while writing.  Run by the parent at start-up and at each
    /// reload, when children may be writing: a file held locked is theirs.
    /// Entries and temporary files directly in the directory are those of
    /// an older pibl, which kept them there: they go too.
    pub fn prepare(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let old = is_hex(&name, 16) || is_temporary(&name) || name == ".lock";
            if old && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        for entry in self.files()? {
            if is_temporary(&entry.file_name().to_string_lossy()) {
                remove_unless_held(&entry.path());
            }
        }
        Ok(())
    }

    /// Every file in the entries' subdirectories, entries and temporary.
    fn files(&self) -> io::Result<impl Iterator<Item = fs::DirEntry>> {
        let subdirs = fs::read_dir(&self.dir)?.flatten().filter(|d| {
            is_hex(&d.file_name().to_string_lossy(), 2) && d.file_type().is_ok_and(|t| t.is_dir())
        });
        Ok(subdirs.flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten()))
    }

    /// The subdirectory of the entry named by `hash`.
    fn subdir(&self, hash: u64) -> PathBuf {
        self.dir.join(format!("{:02x}", hash & 0xff))
    }

    /// `<subdirectory>/<prefix><hash>`: where the entry for `key` is
    /// (prefix ""), or its fill lock.
    fn name_of(&self, key: &str, prefix: &str) -> PathBuf {
        let hash = fnv1a(FNV_START, key.as_bytes());
        self.subdir(hash).join(format!("{prefix}{hash:016x}"))
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.name_of(key, "")
    }

    /// Removes the entry at `path` if it is still the file `judged`
    /// describes (same inode, same mtime): a writer may have renamed a new
    /// entry over it, or a revalidation refreshed it, since it was judged.
    /// The entry is renamed aside first, so that what is checked is what
    /// is removed; a newer one found there is put back, unless yet another
    /// took the name meanwhile.
    fn remove_if_same(&self, path: &Path, judged: (u64, SystemTime)) -> bool {
        use std::os::unix::fs::MetadataExt;
        let aside = path.with_file_name(unique_name(EVICT_PREFIX));
        if fs::rename(path, &aside).is_err() {
            return false;
        }
        let same = fs::metadata(&aside)
            .is_ok_and(|m| (m.ino(), m.modified().unwrap_or(UNIX_EPOCH)) == judged);
        if !same && put_back(&aside, path) {
            return false;
        }
        let _ = fs::remove_file(&aside);
        same
    }

    /// The entry for `key`, if there is a sound one.  A corrupt entry, or one
    /// stored for another key, is removed and reported missing.
    pub fn lookup(&self, key: &str) -> Lookup {
        let path = self.path_of(key);
        if let Some(entry) = Recent::find(&path, key) {
            return Lookup::Fresh(entry);
        }
        let Ok(file) = File::open(&path) else {
            return Lookup::Missing;
        };
        match read_entry(file, key) {
            Ok(Some(entry)) if entry.expires > unix_now() => {
                Recent::offer(&path, key, &entry);
                Lookup::Fresh(entry)
            }
            Ok(Some(entry)) => Lookup::Stale(entry),
            Ok(None) => Lookup::Missing,
            Err(e) if is_damage(&e) => {
                crate::diag!("cache: {}: {e}; removed", path.display());
                self.remove(key);
                Lookup::Missing
            }
            Err(_) => Lookup::Missing,
        }
    }

    /// Every sound entry: key, file size, age and seconds left (negative
    /// once expired).  Damaged files are skipped, not removed: listing
    /// changes nothing.
    pub fn list(&self) -> io::Result<Vec<Listing>> {
        let now = unix_now();
        let mut all = Vec::new();
        for entry in self.files()? {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if let Ok(header) = read_header(file) {
                all.push(Listing {
                    key: header.key,
                    size,
                    age: now.saturating_sub(header.stored),
                    left: header.expires as i64 - now as i64,
                });
            }
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// Removes every entry; returns how many.
    pub fn purge_all(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in self.files()? {
            if !entry.file_name().to_string_lossy().starts_with('.')
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the entry for `key`; true if there was one.
    pub fn purge(&self, key: &str) -> io::Result<bool> {
        match fs::remove_file(self.path_of(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One sweep of the janitor: removes entries expired for longer than
    /// the TTL (kept that long so they can be revalidated), then the least
    /// recently used until the entries fit in `max_size` bytes.  Uses only
    /// each file's times and size (see `Writer::commit`).  Expired entries
    /// go as they are found, so a sweep cut short still makes progress, and
    /// its memory does not grow with the cache: only the entries to evict
    /// are held, found by a second pass when the first finds too many bytes.
    pub fn sweep(&self, max_size: u64) -> io::Result<(usize, usize)> {
        let now = SystemTime::now();
        let mut expired = 0;
        let mut total = 0;
        for file in self.files()? {
            match self.judge(&file, now) {
                Judged::Expired(path, judged) => {
                    expired += usize::from(self.remove_if_same(&path, judged))
                }
                Judged::Live(live) => total += live.size,
                Judged::Other => {}
            }
        }
        if total <= max_size {
            return Ok((expired, 0));
        }
        let excess = total - max_size;
        // The least recently used entries whose sizes make up the excess:
        // a heap with the most recently used on top, which goes as soon as
        // the others make up the excess without it.
        let mut oldest = std::collections::BinaryHeap::new();
        let mut held = 0;
        for file in self.files()? {
            let Judged::Live(live) = self.judge(&file, now) else {
                continue;
            };
            held += live.size;
            oldest.push(live);
            while oldest.peek().is_some_and(|top| held - top.size >= excess) {
                held -= oldest.pop().map_or(0, |top| top.size);
            }
        }
        let evicted = oldest
            .into_sorted_vec()
            .into_iter()
            .filter(|live| self.remove_if_same(&live.path, live.judged))
            .count();
        Ok((expired, evicted))
    }

    /// What the sweep makes of one file of the cache's subdirectories;
    /// debris goes at once.
    fn judge(&self, file: &fs::DirEntry, now: SystemTime) -> Judged {
        use std::os::unix::fs::MetadataExt;
        let name = file.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            // Fill locks of misses that stored nothing are left for the
            // next miss; those unused for a while go, with what dead
            // processes left.
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m + DEBRIS_AGE < now);
            if old && is_temporary(&name) {
                remove_unless_held(&file.path());
            }
            return Judged::Other;
        }
        let Ok(meta) = file.metadata() else {
            return Judged::Other;
        };
        let modified = meta.modified().unwrap_or(now);
        let judged = (meta.ino(), modified);
        if modified + self.ttl <= now {
            return Judged::Expired(file.path(), judged);
        }
        Judged::Live(Live {
            used: meta.accessed().unwrap_or(UNIX_EPOCH),
            size: meta.len(),
            path: file.path(),
            judged,
        })
    }

    /// For a miss on `key`: `Fill::Fetch(lock)` when this process is the
    /// first to want it and should fetch it, holding `lock` until the entry
    /// is stored; `Fill::Waited` when another process was fetching it and
    /// has finished (or `FILL_WAIT` passed), so a second look may now hit.
    /// This is nginx's `proxy_cache_lock`: 100 clients asking at once for
    /// one uncached URL cause one fetch, not 100.  `Fill::Pass` when the
    /// URL's last response could not be stored (`note_pass`): a dynamic
    /// page, say, which the lock would have fetched one request at a time.
    pub fn fill(&self, key: &str) -> Fill {
        if self.passes(key) {
            return Fill::Pass;
        }
        let path = self.name_of(key, FILL_PREFIX);
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let Ok(file) = in_subdir(&path, open) else {
            return Fill::Waited;
        };
        if fs2::FileExt::try_lock_exclusive(&file).is_ok() {
            if is_at(&file, &path) {
                return Fill::Fetch(FillLock { file, path });
            }
            // The holder renamed the file into place as the entry (or
            // removed it) between this open and this lock: the lock won
            // is that of a file no longer the fill lock, perhaps the new
            // entry itself, which must not be emptied and written over.
            // The fetch is done; a second look may hit.
            return Fill::Waited;
        }
        // The holder renames the file into place as the entry (or removes
        // it) before it lets go, or lets go as soon as it knows it will not
        // store the response: the lock is free once the entry is.
        let deadline = std::time::Instant::now() + FILL_WAIT;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(FILL_POLL);
            if fs2::FileExt::try_lock_shared(&file).is_ok() {
                break;
            }
        }
        Fill::Waited
    }

    /// Whether `resp` says it is longer than `max_entry`: not to be stored,
    /// known before its body is read.
    pub fn too_large(&self, resp: &ResponseHead) -> bool {
        http::content_length(&resp.fields).is_ok_and(|len| len.is_some_and(|n| n > self.max_entry))
    }

    /// Notes that the response fetched for `key` under its fill lock could
    /// not be stored, so that misses of the URL skip the lock for a while
    /// (Varnish's "hit-for-miss").  Their responses are still offered to
    /// the cache: one that can be stored is.
    pub fn note_pass(&self, key: &str) {
        mark_pass(&self.name_of(key, PASS_PREFIX));
    }

    /// Whether a mark made by `note_pass` for `key` is younger than the
    /// TTL and `DEBRIS_AGE` (after which the janitor removes it).
    fn passes(&self, key: &str) -> bool {
        let lasts = self.ttl.min(DEBRIS_AGE);
        fs::metadata(self.name_of(key, PASS_PREFIX))
            .and_then(|m| m.modified())
            .is_ok_and(|made| made + lasts > SystemTime::now())
    }

    /// After a 304 for a stale entry: a new lifetime from the stored head
    /// updated with the 304's fields (RFC 9111 §4.3.4), written into the
    /// entry's header in place.  Returns the entry, fresh again.
    pub fn refresh(
        &self,
        key: &str,
        mut entry: Entry,
        req: &RequestHead,
        not_modified: &ResponseHead,
    ) -> Option<Entry> {
        let mut updated = ResponseHead::clone(&entry.head);
        updated.fields.retain(|f| {
            !not_modified
                .fields
                .iter()
                .any(|n| n.name.eq_ignore_ascii_case(&f.name))
        });
        updated.fields.extend(not_modified.fields.iter().cloned());
        let lifetime = self.lifetime(req, &updated)?;
        let stored = unix_now();
        let expires = stored + lifetime.as_secs().max(1);
        let raw_head = &entry.prefix[entry.head_at.clone()];
        let header = header_bytes(key, stored, expires, raw_head, entry.body_len);
        // Written through a descriptor checked to hold the entry's own
        // file: should a new entry take the name meanwhile, it is the old
        // file that is refreshed, which no one opens any more.
        let file = OpenOptions::new()
            .write(true)
            .open(self.path_of(key))
            .ok()?;
        use std::os::unix::fs::MetadataExt;
        if file.metadata().ok()?.ino() != entry.file.metadata().ok()?.ino() {
            return None; // replaced meanwhile: leave the newer entry be
        }
        // Readers hold the entry's shared lock while they read its header
        // (this process too, through `entry.file`, whose lock this turns
        // exclusive); the entry stays stale if they never leave a gap.
        lock_within(&entry.file).ok()?;
        file.write_all_at(&header, 0).ok()?;
        let _ = file.set_times(
            fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(expires)),
        );
        entry.stored = stored;
        entry.expires = expires;
        Some(entry)
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&self, key: &str) {
        let _ = fs::remove_file(self.path_of(key));
    }

    /// How long a response may be stored: the launch TTL, or less if the
    /// origin asks for less.  `None`: it may not be stored at all.
    pub fn lifetime(&self, req: &RequestHead, resp: &ResponseHead) -> Option<Duration> {
        if req.method != "GET" || !CACHEABLE.contains(&resp.status) {
            return None;
        }
        let cc = http::tokens(&resp.fields, "cache-control");
        let has = |d: &str| cc.iter().any(|t| t == d || t.starts_with(&format!("{d}=")));
        let request_cc = http::tokens(&req.fields, "cache-control");
        // no-cache lets a cache store the response but never serve it
        // unvalidated (RFC 9111 §5.2.2.4): stored, it would be a request to
        // the backend every time all the same, so it is not stored, as nginx
        // does not store it.
        let restricted = has("no-store") || has("no-cache") || has("private");
        if restricted || request_cc.iter().any(|t| t == "no-store") {
            return None;
        }
        if http::values(&resp.fields, "set-cookie").next().is_some() {
            return None;
        }
        if http::values(&req.fields, "authorization").next().is_some()
            && !(has("public") || has("s-maxage"))
        {
            return None;
        }
        if http::tokens(&resp.fields, "vary").iter().any(|v| v == "*") {
            return None;
        }
        let seconds = |d: &str| {
            cc.iter().find_map(|t| {
                t.strip_prefix(&format!("{d}="))?
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
            })
        };
        let asked = seconds("s-maxage")
            .or_else(|| seconds("max-age"))
            .map(Duration::from_secs);
        // The origin's lifetime runs from when it made the response, which
        // may have aged in another cache on the way (RFC 9111 §4.2.3).
        let asked = asked
            .or_else(|| expires_in(resp))
            .map(|a| a.saturating_sub(Duration::from_secs(age_when_received(&resp.fields))));
        let lifetime = asked.map_or(self.ttl, |a| a.min(self.ttl));
        (!lifetime.is_zero()).then_some(lifetime)
    }

    /// Starts writing an entry for `key`, into the file of `fill` when
    /// this process holds the URL's fill lock, else into a new temporary
    /// file; `None` if the cache directory cannot take it (a full disk must
    /// not fail the response).
    pub fn begin(
        &self,
        key: &str,
        resp: &ResponseHead,
        lifetime: Duration,
        vary: Vec<String>,
        fill: Option<FillLock>,
    ) -> Option<Writer> {
        let (file, temp) = match fill {
            Some(FillLock { file, path }) => (emptied(file)?, path),
            None => self.temporary(key)?,
        };
        let stored = unix_now();
        // The version it came in, for the Via of every hit (RFC 9110 §7.6.3).
        let mut head =
            format!("HTTP/1.{} {} {}\r\n", resp.minor, resp.status, resp.reason).into_bytes();
        for f in &resp.fields {
            head.extend_from_slice(f.name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(&f.value);
            head.extend_from_slice(b"\r\n");
        }
        for v in vary {
            // The request's values of the fields named in Vary, so a later
            // request is served this entry only if it sends the same.
            head.extend_from_slice(b"X-Pibl-Vary: ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let mut writer = Writer {
            file,
            temp,
            target: self.path_of(key),
            pass_mark: self.name_of(key, PASS_PREFIX),
            key: key.to_string(),
            stored,
            expires: stored + lifetime.as_secs().max(1),
            head,
            body_len: 0,
            limit: self.max_entry,
            failed: false,
            gone: false,
        };
        // The header for now, with the body's length still 0; `commit`
        // writes it again, same size, once the length is known.
        let header = writer.header();
        if let Err(e) = write_all_vectored(&mut writer.file, &[&header, &writer.head]) {
            writer.fail(&e);
        }
        Some(writer)
    }

    /// A new temporary file for an entry, locked as a fill lock is, so
    /// that `prepare` and the janitor know it is in use.
    fn temporary(&self, key: &str) -> Option<(File, PathBuf)> {
        let path = self.path_of(key).with_file_name(unique_name(TEMP_PREFIX));
        let open = || OpenOptions::new().create_new(true).write(true).open(&path);
        let file = in_subdir(&path, open)
            .map_err(|e| cannot_store(key, &e))
            .ok()?;
        let _ = fs2::FileExt::try_lock_exclusive(&file);
        Some((file, path))
    }
}

/// `<prefix><pid>-<n>`: a temporary file's name no other process or
/// thread makes.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a file with `create`, and its subdirectory first if that is
/// missing: made as needed, so a cache directory emptied by hand while
/// pibl runs fills again.
fn in_subdir(path: &Path, create: impl Fn() -> io::Result<File>) -> io::Result<File> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path.parent().unwrap_or(path))?;
            create()
        }
        done => done,
    }
}

/// A fill lock's file, emptied of what a process that died writing it
/// left.  Truncated only if it holds bytes: ext4 writes a file truncated
/// to nothing out when it is closed (its `auto_da_alloc`, for programs
/// that rewrite files in place), which would make every miss wait for the
/// disk.
fn emptied(file: File) -> Option<File> {
    if file.metadata().ok()?.len() > 0 {
        file.set_len(0).ok()?;
    }
    Some(file)
}

/// Makes (or renews) the pass mark at `path` (`Cache::note_pass`).
fn mark_pass(path: &Path) {
    if let Ok(file) = in_subdir(path, || File::create(path)) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Whether `name` is `len` hex digits: an entry's name (16, as an older
/// pibl kept them too) or a subdirectory's (2).
fn is_hex(name: &str, len: usize) -> bool {
    name.len() == len && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A temporary file's name (an entry's never starts with a dot).
fn is_temporary(name: &str) -> bool {
    [TEMP_PREFIX, FILL_PREFIX, EVICT_PREFIX, PASS_PREFIX]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Removes the temporary file or fill lock at `path` unless a process
/// holds its lock (it is being written, or a miss is being fetched).  The
/// file goes while this holds the lock, so that a process opening it
/// meanwhile finds, once it has the lock, that it is no longer there
/// (`is_at`).
fn remove_unless_held(path: &Path) {
    if let Ok(file) = File::open(path)
        && fs2::FileExt::try_lock_exclusive(&file).is_ok()
        && is_at(&file, path)
    {
        let _ = fs::remove_file(path);
    }
}

/// Whether `file` is still the file at `path`: a lock file may be renamed
/// or removed between its opening and its locking.
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(open), Ok(named)) = (file.metadata(), fs::metadata(path)) else {
        return false;
    };
    (open.dev(), open.ino()) == (named.dev(), named.ino())
}

/// Renames `aside` back to `path` unless a file has taken that name.
fn put_back(aside: &Path, path: &Path) -> bool {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(
        AT_FDCWD,
        aside,
        AT_FDCWD,
        path,
        RenameFlags::RENAME_NOREPLACE,
    )
    .is_ok()
}

/// The `Age` of a stored response now (RFC 9111 §4.2.3): its age when
/// stored, as the origin or an upstream cache said, plus the time since.
pub fn age(entry: &Entry) -> u64 {
    age_when_received(&entry.head.fields) + unix_now().saturating_sub(entry.stored)
}

/// The `Age` a response came with: 0 when it has none, or none that reads.
fn age_when_received(fields: &[http::Field]) -> u64 {
    http::value(fields, "age")
        .and_then(|a| a.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// `Expires` minus `Date` (or now), when the origin sent an `Expires`.
/// One that is no date (`0`, say) means already expired (RFC 9111 §5.3).
fn expires_in(resp: &ResponseHead) -> Option<Duration> {
    let value = http::value(&resp.fields, "expires")?;
    let Some(expires) = crate::clock::parse_http_date(value) else {
        return Some(Duration::ZERO);
    };
    let date = http::value(&resp.fields, "date")
        .and_then(crate::clock::parse_http_date)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or_default())
}

/// The names in the response's Vary field, with the request's values:
/// `name=value` lines for the entry, which `matches_vary` checks.
pub fn vary_values(req: &RequestHead, resp: &ResponseHead) -> Vec<String> {
    http::tokens(&resp.fields, "vary")
        .iter()
        .map(|name| {
            let value: Vec<String> = http::values(&req.fields, name)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .collect();
            format!("{name}={}", value.join(", "))
        })
        .collect()
}

/// Does `req` send the same values as the request an entry was stored for?
pub fn matches_vary(req: &RequestHead, entry: &ResponseHead) -> bool {
    let stored: Vec<String> = http::values(&entry.fields, "x-pibl-vary")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let now = vary_values(req, entry);
    stored == now
}

/// Longest wait of a revalidation for the exclusive lock on its entry.
/// flock(2) gives a waiting exclusive lock no precedence over new shared
/// ones, so under a steady stream of readers a blocking wait could last
/// for ever; a child finishing a response gives up the change instead (the
/// entry stays stale, and is revalidated again later).
const EXCLUSIVE_WAIT: Duration = Duration::from_millis(50);

/// Takes the exclusive lock on `file` if it can within `EXCLUSIVE_WAIT`.
fn lock_within(file: &File) -> io::Result<()> {
    let deadline = std::time::Instant::now() + EXCLUSIVE_WAIT;
    loop {
        if fs2::FileExt::try_lock_exclusive(file).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A file as the janitor judges it (`Cache::judge`).
enum Judged {
    /// Expired for longer than the TTL: its path, inode and mtime.
    Expired(PathBuf, (u64, SystemTime)),
    Live(Live),
    /// Not an entry, or gone.
    Other,
}

/// An unexpired entry, ordered by its last use.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Live {
    used: SystemTime,
    size: u64,
    path: PathBuf,
    judged: (u64, SystemTime),
}

/// Longest wait for another process fetching the same URL (nginx's
/// `proxy_cache_lock_timeout`).
const FILL_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting process looks whether the fetch is done.
const FILL_POLL: Duration = Duration::from_millis(5);

pub enum Fill {
    Fetch(FillLock),
    Waited,
    /// Fetch without the lock: the URL's responses are not being stored.
    Pass,
}

/// Held by the one process fetching a URL for the cache; released when
/// dropped (or when the process dies: flock(2) locks go with it).  Its
/// file becomes the entry (`Cache::begin`), so other processes find the
/// lock free once the entry is in place.
pub struct FillLock {
    file: File,
    path: PathBuf,
}

/// One line of `pibl cache ls`.
pub struct Listing {
    pub key: String,
    pub size: u64,
    pub age: u64,
    pub left: i64,
}

/// The cache key of a URL given on the command line, as `key` makes it
/// for a request: `http://Host:80/p` and `http://host/p` are one entry.
pub fn key_of_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, target) = rest.split_at(cut);
    let target = if target.is_empty() { "/" } else { target };
    Some(key_of(host, target))
}

/// What the header of an entry says.
struct Header {
    key: String,
    stored: u64,
    expires: u64,
}

fn read_header(file: File) -> io::Result<Header> {
    read_entry_any(file, "").map(|(header, _)| header)
}

/// Reads and checks an entry's header and head.  `Ok(None)`: a sound entry
/// for another key (a hash collision).
fn read_entry(file: File, key: &str) -> io::Result<Option<Entry>> {
    let (header, entry) = read_entry_any(file, key)?;
    Ok(entry.filter(|_| header.key == key))
}

/// Whether a failure to read an entry means the file is damaged (and goes),
/// not that reading it failed this once.
fn is_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Reads up to `buf.len()` bytes at `offset` in one pread(2) (more only if
/// interrupted).  Fewer bytes than asked mean the end of the file: entries
/// are regular files that no one extends.
fn read_some_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads and checks an entry, whatever its key, under a shared lock on it.
/// The first read asks for `FIRST_READ` bytes: a smaller file is then read
/// whole, its size known without fstat(2) and its body ready to send.  The
/// lock is kept while the body is in memory (closing the file drops it,
/// one flock(2) fewer per hit) and let go otherwise.
fn read_entry_any(file: File, key: &str) -> io::Result<(Header, Option<Entry>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    crate::sys::restarting(|| fs2::FileExt::lock_shared(&file))?;
    let mut prefix = vec![0u8; FIRST_READ];
    let n = read_some_at(&file, &mut prefix, 0)?;
    prefix.truncate(n);
    let size = if n < FIRST_READ {
        n as u64
    } else {
        file.metadata()?.len()
    };
    let header_end = |bytes: &[u8]| bytes.windows(2).position(|w| w == b"\n\n");
    let mut found = header_end(&prefix);
    if found.is_none() && size as usize > prefix.len() {
        let had = prefix.len();
        prefix.resize((size as usize).min(MAX_PREFIX), 0);
        file.read_exact_at(&mut prefix[had..], had as u64)?;
        found = header_end(&prefix);
    }
    let end = found.ok_or_else(|| bad("no header"))? + 2;
    let header = std::str::from_utf8(&prefix[..end]).map_err(|_| bad("header not text"))?;
    let mut lines = header.lines();
    if lines.next() != Some(MAGIC.trim_end()) {
        return Err(bad("not a cache entry"));
    }
    let mut field = |name: &str| -> io::Result<String> {
        let line = lines.next().ok_or_else(|| bad("short header"))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| bad("bad header line"))
    };
    let stored_key = field("key")?;
    let number = |v: String| v.parse::<u64>().map_err(|_| bad("bad number"));
    let stored = number(field("stored")?)?;
    let expires = number(field("expires")?)?;
    let head_len = number(field("head")?)? as usize;
    let body_len = number(field("body")?)?;
    let check = u64::from_str_radix(&field("check")?, 16).map_err(|_| bad("bad check"))?;
    let check_at = header.find("check ").ok_or_else(|| bad("no check"))?;
    if end + head_len > prefix.len()
        && (end + head_len) as u64 <= size
        && end + head_len <= MAX_PREFIX
    {
        let had = prefix.len();
        prefix.resize(end + head_len, 0);
        file.read_exact_at(&mut prefix[had..], had as u64)?;
    }
    let head = prefix
        .get(end..end + head_len)
        .ok_or_else(|| bad("head cut short"))?;
    if fnv1a(fnv1a(FNV_START, &prefix[..check_at]), head) != check {
        return Err(bad("check does not match"));
    }
    let body_offset = (end + head_len) as u64;
    if size != body_offset + body_len {
        return Err(bad("size does not match"));
    }
    let head = match http::parse_response_head(head) {
        Ok(http::Parsed::Done(h, _)) => h,
        _ => return Err(bad("bad response head")),
    };
    let header = Header {
        key: stored_key,
        stored,
        expires,
    };
    if header.key != key {
        return Ok((header, None));
    }
    let entry = Entry {
        file: Rc::new(file),
        head: Rc::new(head),
        prefix: Rc::new(prefix),
        head_at: end..end + head_len,
        name_hash: fnv1a(FNV_START, key.as_bytes()),
        stored,
        expires,
        body_offset,
        body_len,
    };
    if entry.body_in_memory().is_none() {
        let _ = fs2::FileExt::unlock(&*entry.file);
    }
    Ok((header, Some(entry)))
}

/// An entry's header: fixed-width lines, so it can be rewritten in place.
fn header_bytes(key: &str, stored: u64, expires: u64, head: &[u8], body_len: u64) -> Vec<u8> {
    let lines = format!(
        "{MAGIC}key {key}\nstored {stored:020}\nexpires {expires:020}\nhead {:020}\nbody {body_len:020}\n",
        head.len()
    );
    let check = fnv1a(fnv1a(FNV_START, lines.as_bytes()), head);
    format!("{lines}check {check:016x}\n\n").into_bytes()
}

/// The conditional fields that ask the origin whether a stored response is
/// still valid (RFC 9111 §4.3.1).
pub fn validators(entry: &Entry) -> Vec<http::Field> {
    let mut fields = Vec::new();
    if let Some(etag) = http::values(&entry.head.fields, "etag").next() {
        fields.push(http::Field {
            name: "If-None-Match".into(),
            value: etag.to_vec(),
        });
    }
    if let Some(date) = http::values(&entry.head.fields, "last-modified").next() {
        fields.push(http::Field {
            name: "If-Modified-Since".into(),
            value: date.to_vec(),
        });
    }
    fields
}

/// An entry being written.  It becomes visible only at `commit`.
pub struct Writer {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    key: String,
    stored: u64,
    expires: u64,
    head: Vec<u8>,
    body_len: u64,
    limit: u64,
    failed: bool,
    /// Where `give_up_early` marks the URL as not stored (`note_pass`).
    pass_mark: PathBuf,
    /// The file is no longer at `temp`: renamed into place, or removed
    /// early (`give_up_early`).  Its name is not removed again: another
    /// writer may have made a new file there since.
    gone: bool,
}

impl Writer {
    fn header(&self) -> Vec<u8> {
        header_bytes(
            &self.key,
            self.stored,
            self.expires,
            &self.head,
            self.body_len,
        )
    }

    /// Gives the entry up for an I/O error, said once: a full disk, say.
    /// The response it copies goes on.
    fn fail(&mut self, e: &io::Error) {
        if !self.failed {
            cannot_store(&self.key, e);
            self.failed = true;
        }
    }

    /// For a body found longer than `max_entry` as it is copied (a
    /// chunked one: a stated length is judged at the head): the URL is
    /// marked as not stored and the file goes with its lock now, not once
    /// the rest of the body has been relayed, so that clients waiting on
    /// the fill lock fetch for themselves meanwhile (`Cache::fill`).
    fn give_up_early(&mut self) {
        mark_pass(&self.pass_mark);
        let _ = fs::remove_file(&self.temp);
        self.gone = true;
        let _ = fs2::FileExt::unlock(&self.file);
    }

    /// Makes the entry visible, if all of the body was written; says
    /// whether it did.
    pub fn commit(mut self) -> bool {
        if self.failed {
            return false;
        }
        let header = self.header();
        if let Err(e) = self.file.write_all_at(&header, 0) {
            cannot_store(&self.key, &e);
            return false;
        }
        // The janitor reads expiry and last use from the file's times
        // alone: mtime is when the entry expires, atime when it was used.
        let times = fs::FileTimes::new()
            .set_modified(UNIX_EPOCH + Duration::from_secs(self.expires))
            .set_accessed(SystemTime::now());
        let _ = self.file.set_times(times);
        // Still under this file's exclusive lock, which goes when the
        // writer is dropped, just after.
        match fs::rename(&self.temp, &self.target) {
            Ok(()) => self.gone = true,
            Err(e) => cannot_store(&self.key, &e),
        }
        self.gone
    }
}

/// Says that an entry could not be written, as nginx's "write() to cache
/// file failed", once a minute at most (a full disk fails every store):
/// the response still goes to the client, uncached.
fn cannot_store(key: &str, e: &io::Error) {
    if !crate::log::worth_saying(crate::log::Recurring::CacheStore) {
        return;
    }
    crate::diag!(
        "cache: cannot store {key}: {} (said once a minute at most)",
        crate::error::describe_io(e)
    );
}

/// A writer as the only destination of a body (a HEAD fetched as a GET):
/// writing fails once the entry is given up, so that the rest of the body
/// is not read for nothing.
pub struct StoreOnly<'a>(pub &'a mut Writer);

impl Write for StoreOnly<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.0.write(data)?;
        if self.0.failed {
            return Err(io::Error::other("not stored"));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.failed {
            self.body_len += data.len() as u64;
            if self.body_len > self.limit {
                // Larger than max_entry: passed through, as configured.
                self.failed = true;
                self.give_up_early();
            } else if let Err(e) = self.file.write_all(data) {
                self.fail(&e);
            }
        }
        // The cache never fails the response it copies.
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    /// Whatever was not renamed into place goes, before its lock does.
    fn drop(&mut self) {
        if !self.gone {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_counts_the_age_a_response_came_with() {
        let cache = Cache::new(std::env::temp_dir(), Duration::from_secs(3600), 1 << 20);
        let req = match http::parse_request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", 10) {
            Ok(http::Parsed::Done(head, _)) => head,
            _ => unreachable!(),
        };
        let lifetime = |fields: &str| {
            let text = format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 0\r\n\r\n");
            match http::parse_response_head(text.as_bytes()) {
                Ok(http::Parsed::Done(resp, _)) => cache.lifetime(&req, &resp),
                _ => unreachable!(),
            }
        };
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(
            lifetime("Cache-Control: max-age=100\r\nAge: 40\r\n"),
            secs(60)
        );
        assert_eq!(
            lifetime("Cache-Control: max-age=100\r\nAge: x\r\n"),
            secs(100)
        );
        assert_eq!(lifetime("Cache-Control: max-age=5\r\nAge: 10\r\n"), None);
        let dated = "Date: Mon, 23 Nov 2026 10:00:00 GMT\r\n";
        let expires = "Expires: Mon, 23 Nov 2026 10:01:40 GMT\r\n";
        assert_eq!(lifetime(&format!("{dated}{expires}Age: 30\r\n")), secs(70));
        assert_eq!(lifetime("Expires: 0\r\n"), None);
        assert_eq!(
            lifetime("Expires: 0\r\nCache-Control: max-age=9\r\n"),
            secs(9)
        );
        // No lifetime from the origin: the launch TTL, whatever the Age.
        assert_eq!(lifetime("Age: 50\r\n"), secs(3600));
    }

    /// A cache in a fresh directory of its own, holding one small entry
    /// for `key`, written as a store would.
    fn cache_with_entry(key: &str) -> Cache {
        let dir = std::env::temp_dir().join(format!(
            "pibl-cache-test-{}-{:x}",
            std::process::id(),
            fnv1a(FNV_START, key.as_bytes())
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let cache = Cache::new(dir, Duration::from_secs(60), 1 << 20);
        put_entry(&cache, key);
        cache
    }

    /// Writes a small entry for `key` into `cache`, as a store would, and
    /// returns its path.
    fn put_entry(cache: &Cache, key: &str) -> PathBuf {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let now = unix_now();
        let mut bytes = header_bytes(key, now, now + 60, head, 5);
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(b"hello");
        let path = cache.path_of(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_sweep_over_max_size_removes_the_least_recently_used_that_make_up_the_excess() {
        let cache = cache_with_entry("http://test/sweep-0");
        let mut paths = vec![cache.path_of("http://test/sweep-0")];
        paths.extend((1..6).map(|i| put_entry(&cache, &format!("http://test/sweep-{i}"))));
        // Last used in the order 3, 0, 5, 1, 4, 2.
        for (rank, i) in [3, 0, 5, 1, 4, 2].into_iter().enumerate() {
            let used = UNIX_EPOCH + Duration::from_secs(1_000_000 + rank as u64);
            let file = File::options().write(true).open(&paths[i]).unwrap();
            file.set_times(fs::FileTimes::new().set_accessed(used))
                .unwrap();
        }
        let size = fs::metadata(&paths[0]).unwrap().len();
        assert_eq!(cache.sweep(size * 6).unwrap(), (0, 0), "all fit");
        assert_eq!(cache.sweep(size * 4 - 1).unwrap(), (0, 3));
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [false, true, true, false, true, false]);
        let _ = fs::remove_dir_all(&cache.dir);
    }

    fn judged(path: &Path) -> (u64, SystemTime) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).unwrap();
        (meta.ino(), meta.modified().unwrap())
    }

    /// Files in the cache's subdirectories whose names start with a dot.
    fn temporaries(cache: &Cache) -> Vec<PathBuf> {
        cache
            .files()
            .unwrap()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect()
    }

    #[test]
    fn an_entry_is_removed_only_if_it_is_the_file_judged() {
        let key = "http://test/judged";
        let cache = cache_with_entry(key);
        let path = cache.path_of(key);
        let old = judged(&path);
        // A writer renames a new entry over the judged one.
        let newer = path.with_file_name(".tmp-newer");
        fs::copy(&path, &newer).unwrap();
        fs::rename(&newer, &path).unwrap();
        assert!(!cache.remove_if_same(&path, old), "a newer entry stays");
        assert!(matches!(cache.lookup(key), Lookup::Fresh(_)));
        assert!(cache.remove_if_same(&path, judged(&path)));
        assert!(!path.exists());
        assert!(temporaries(&cache).is_empty(), "nothing is left aside");
        let _ = fs::remove_dir_all(&cache.dir);
    }

    /// Takes the fill lock for `key`, as the first process to miss it
    /// does, and begins storing a response of two bytes into it.
    fn begin_filling(cache: &Cache, key: &str) -> Writer {
        let Fill::Fetch(lock) = cache.fill(key) else {
            panic!("no one else holds the fill lock");
        };
        begin_storing(cache, key, lock)
    }

    /// Begins storing a response of two bytes for `key` under `lock`.
    fn begin_storing(cache: &Cache, key: &str, lock: FillLock) -> Writer {
        let resp = ResponseHead {
            minor: 1,
            status: 200,
            reason: "OK".into(),
            fields: vec![http::Field {
                name: "Content-Length".into(),
                value: b"2".to_vec(),
            }],
        };
        let ttl = Duration::from_secs(60);
        cache
            .begin(key, &resp, ttl, Vec::new(), Some(lock))
            .unwrap()
    }

    #[test]
    fn a_fill_lock_left_half_written_is_emptied_for_the_next_store() {
        let key = "http://test/half";
        let cache = cache_with_entry(key);
        let path = cache.path_of(key);
        fs::rename(&path, cache.name_of(key, FILL_PREFIX)).unwrap();
        let mut writer = begin_filling(&cache, key);
        writer.write_all(b"hi").unwrap();
        writer.commit();
        let Lookup::Fresh(entry) = cache.lookup(key) else {
            panic!("a sound entry");
        };
        assert_eq!(entry.body_len, 2);
        let _ = fs::remove_dir_all(&cache.dir);
    }

    #[test]
    fn a_fill_lock_becomes_the_entry_and_is_free_once_it_is_stored() {
        let key = "http://test/filled";
        let cache = cache_with_entry("http://test/other");
        let mut writer = begin_filling(&cache, key);
        // The prepare of a reload leaves a file in use alone.
        cache.prepare().unwrap();
        let names = temporaries(&cache);
        assert_eq!(names.len(), 1);
        // Another process missing the same URL waits on this file.
        let waiter = File::open(&names[0]).unwrap();
        assert!(fs2::FileExt::try_lock_shared(&waiter).is_err(), "held");
        writer.write_all(b"hi").unwrap();
        writer.commit();
        assert!(
            temporaries(&cache).is_empty(),
            "the fill lock became the entry"
        );
        assert!(
            fs2::FileExt::try_lock_shared(&waiter).is_ok(),
            "and is free"
        );
        assert_eq!(judged(&cache.path_of(key)).0, {
            use std::os::unix::fs::MetadataExt;
            waiter.metadata().unwrap().ino()
        });
        let Lookup::Fresh(entry) = cache.lookup(key) else {
            panic!("stored");
        };
        assert_eq!((entry.body_len, entry.head.status), (2, 200));
        let _ = fs::remove_dir_all(&cache.dir);
    }

    #[test]
    fn misses_racing_for_one_url_each_store_under_a_lock_of_their_own() {
        // One process renaming its fill lock into place as the entry while
        // another opens the fill lock's name: the second must not take the
        // entry's file for a fill lock of its own, empty it and write over
        // it (each takes a fresh one, or waits).
        let key = "http://test/race";
        let cache = cache_with_entry("http://test/other");
        let (stored, lost) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let cache = cache.for_thread();
                    for _ in 0..400 {
                        if let Fill::Fetch(lock) = cache.fill(key) {
                            let mut writer = begin_storing(&cache, key, lock);
                            writer.write_all(b"hi").unwrap();
                            let counter = if writer.commit() { &stored } else { &lost };
                            counter.fetch_add(1, Ordering::Relaxed);
                            cache.remove(key);
                        }
                    }
                });
            }
        });
        let (stored, lost) = (stored.into_inner(), lost.into_inner());
        assert!(stored > 0);
        assert_eq!(
            lost, 0,
            "stores that found their file gone ({stored} stored)"
        );
        let _ = fs::remove_dir_all(&cache.dir);
    }

    #[test]
    fn start_up_removes_an_older_layouts_files_and_nothing_else() {
        let cache = cache_with_entry("http://test/layout");
        let top = |name: &str| cache.dir.join(name);
        for name in ["0123456789abcdef", ".lock", ".tmp-1-0", "notes.txt"] {
            fs::write(top(name), b"x").unwrap();
        }
        cache.prepare().unwrap();
        assert!(!top("0123456789abcdef").exists() && !top(".lock").exists());
        assert!(!top(".tmp-1-0").exists());
        assert!(top("notes.txt").exists(), "not a file pibl made");
        assert!(matches!(
            cache.lookup("http://test/layout"),
            Lookup::Fresh(_)
        ));
        let _ = fs::remove_dir_all(&cache.dir);
    }

    #[test]
    fn an_entry_is_kept_in_memory_after_two_reads_and_only_for_its_key() {
        let key = "http://test/kept";
        let cache = cache_with_entry(key);
        let path = cache.path_of(key);
        assert!(matches!(cache.lookup(key), Lookup::Fresh(_)));
        assert!(Recent::find(&path, key).is_none(), "one read keeps nothing");
        assert!(matches!(cache.lookup(key), Lookup::Fresh(_)));
        assert!(Recent::find(&path, key).is_some(), "two reads keep it");
        assert!(
            Recent::find(&path, "http://test/other").is_none(),
            "a key whose hash named the same file is not served it"
        );
        fs::remove_file(&path).unwrap();
        assert!(
            Recent::find(&path, key).is_none(),
            "a removed entry is let go"
        );
        let _ = fs::remove_dir_all(&cache.dir);
    }
}
