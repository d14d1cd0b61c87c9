//! The cache itself: its directory, where each entry's file is, and
//! reading, listing and removing entries.  Writing them is `writer`'s,
//! judging them `policy`'s, expiring and evicting them the `janitor`'s.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::{Entry, FNV_START, fnv1a, is_damage, read_entry, read_header};
use super::recent::Recent;
use crate::clock::unix_now;
use crate::http::{self, RequestHead};

/// Temporary files: an entry being written without a fill lock, a fill
/// lock (an entry being fetched), an entry being removed.  No entry's name
/// starts with a dot.
pub(super) const TEMP_PREFIX: &str = ".tmp-";
pub(super) const FILL_PREFIX: &str = ".fill-";
const EVICT_PREFIX: &str = ".evict-";
/// A mark that a URL's last response was not storable (`note_pass`).
pub(super) const PASS_PREFIX: &str = ".pass-";
/// Age past which a temporary file no one holds locked is debris, left by
/// a process that died (or, for a fill lock, a miss that stored nothing).
pub(super) const DEBRIS_AGE: Duration = Duration::from_secs(60);

pub struct Cache {
    pub(super) dir: PathBuf,
    pub(super) ttl: Duration,
    pub(super) max_entry: u64,
}

pub enum Lookup {
    Fresh(Entry),
    /// Expired, but perhaps still valid: revalidation may refresh it.
    Stale(Entry),
    Missing,
}

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
    pub(super) fn files(&self) -> io::Result<impl Iterator<Item = fs::DirEntry>> {
        let subdirs = fs::read_dir(&self.dir)?.flatten().filter(|d| {
            is_hex(&d.file_name().to_string_lossy(), 2) && d.file_type().is_ok_and(|t| t.is_dir())
        });
        Ok(subdirs.flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten()))
    }

    /// The subdirectory of the entry named by `hash`.
    pub(super) fn subdir(&self, hash: u64) -> PathBuf {
        self.dir.join(format!("{:02x}", hash & 0xff))
    }

    /// `<subdirectory>/<prefix><hash>`: where the entry for `key` is
    /// (prefix ""), or its fill lock.
    pub(super) fn name_of(&self, key: &str, prefix: &str) -> PathBuf {
        let hash = fnv1a(FNV_START, key.as_bytes());
        self.subdir(hash).join(format!("{prefix}{hash:016x}"))
    }

    pub(super) fn path_of(&self, key: &str) -> PathBuf {
        self.name_of(key, "")
    }

    /// Removes the entry at `path` if it is still the file `judged`
    /// describes (same inode, same mtime): a writer may have renamed a new
    /// entry over it, or a revalidation refreshed it, since it was judged.
    /// The entry is renamed aside first, so that what is checked is what
    /// is removed; a newer one found there is put back, unless yet another
    /// took the name meanwhile.
    pub(super) fn remove_if_same(&self, path: &Path, judged: (u64, SystemTime)) -> bool {
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

    /// Removes the entry for `key` and its coded representations; how
    /// many files that was.
    pub fn purge(&self, key: &str) -> io::Result<usize> {
        let identity = match fs::remove_file(self.path_of(key)) {
            Ok(()) => 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(identity + self.remove_representations(key)?)
    }

    /// Removes the entry for `key` and its representations, if any.
    pub fn remove(&self, key: &str) {
        let _ = self.purge(key);
    }
}

/// `<prefix><pid>-<n>`: a temporary file's name no other process or
/// thread makes.
pub(super) fn unique_name(prefix: &str) -> String {
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
pub(super) fn in_subdir(path: &Path, create: impl Fn() -> io::Result<File>) -> io::Result<File> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path.parent().unwrap_or(path))?;
            create()
        }
        done => done,
    }
}

/// Whether `name` is `len` hex digits: an entry's name (16, as an older
/// pibl kept them too) or a subdirectory's (2).
pub(super) fn is_hex(name: &str, len: usize) -> bool {
    name.len() == len && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A temporary file's name (an entry's never starts with a dot).
pub(super) fn is_temporary(name: &str) -> bool {
    [TEMP_PREFIX, FILL_PREFIX, EVICT_PREFIX, PASS_PREFIX]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Removes the temporary file or fill lock at `path` unless a process
/// holds its lock (it is being written, or a miss is being fetched).  The
/// file goes while this holds the lock, so that a process opening it
/// meanwhile finds, once it has the lock, that it is no longer there
/// (`is_at`).
pub(super) fn remove_unless_held(path: &Path) {
    if let Ok(file) = File::open(path)
        && fs2::FileExt::try_lock_exclusive(&file).is_ok()
        && is_at(&file, path)
    {
        let _ = fs::remove_file(path);
    }
}

/// Whether `file` is still the file at `path`: a lock file may be renamed
/// or removed between its opening and its locking.
pub(super) fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(open), Ok(named)) = (file.metadata(), fs::metadata(path)) else {
        return false;
    };
    (open.dev(), open.ino()) == (named.dev(), named.ino())
}

/// Renames `aside` back to `path` unless a file has taken that name.
pub(super) fn put_back(aside: &Path, path: &Path) -> bool {
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
