//! Writing entries: the fill lock one process holds while it fetches a
//! URL for the cache, the writer that turns its file into the entry, and
//! a revalidation's refresh of an entry in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::{Entry, header_bytes};
use super::store::{
    Cache, DEBRIS_AGE, FILL_PREFIX, PASS_PREFIX, TEMP_PREFIX, in_subdir, is_at, unique_name,
};
use crate::clock::unix_now;
use crate::http::wire::write_all_vectored;
use crate::http::{RequestHead, ResponseHead};

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

impl Cache {
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
        // The request's values of the fields named in Vary, so a later
        // request is served this entry only if it sends the same.
        let vary: Vec<_> = vary.iter().map(|v| ("X-Pibl-Vary", v.as_str())).collect();
        let head = head_bytes(resp, true, &vary);
        let expires = stored + lifetime.as_secs().max(1);
        Some(self.writer(key, (file, temp), head, stored, expires))
    }

    /// Starts writing the entry for `key` (a coded representation) with
    /// the head `resp` and the times of the entry it is made from, into
    /// the file of `fill`.
    pub(super) fn begin_derived(
        &self,
        key: &str,
        resp: &ResponseHead,
        (stored, expires): (u64, u64),
        fill: FillLock,
    ) -> Option<Writer> {
        let FillLock { file, path } = fill;
        let head = head_bytes(resp, false, &[]);
        Some(self.writer(key, (emptied(file)?, path), head, stored, expires))
    }

    fn writer(
        &self,
        key: &str,
        (file, temp): (File, PathBuf),
        head: Vec<u8>,
        stored: u64,
        expires: u64,
    ) -> Writer {
        let mut writer = Writer {
            file,
            temp,
            target: self.path_of(key),
            pass_mark: self.name_of(key, PASS_PREFIX),
            key: key.to_string(),
            stored,
            expires,
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
        writer
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

/// A head as an entry stores it, with `extra` fields of pibl's own.  The
/// version it came in is kept, for the Via of every hit (RFC 9110 §7.6.3).
/// A backend's response (`from_backend`) may not set fields named like
/// pibl's own: they go.
fn head_bytes(resp: &ResponseHead, from_backend: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head =
        format!("HTTP/1.{} {} {}\r\n", resp.minor, resp.status, resp.reason).into_bytes();
    let own = |name: &str| {
        name.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-pibl-"))
    };
    let fields = resp.fields.iter().map(|f| (f.name.as_str(), &f.value[..]));
    for (name, value) in fields
        .filter(|(name, _)| !(from_backend && own(name)))
        .chain(extra.iter().map(|(n, v)| (*n, v.as_bytes())))
    {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}
