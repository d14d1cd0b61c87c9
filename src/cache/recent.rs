//! The few small entries a thread served last, kept in memory (see
//! `Recent`).

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::entry::Entry;
use crate::clock::unix_now;

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
pub(super) struct Recent {
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
    pub(super) fn find(path: &Path, key: &str) -> Option<Entry> {
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
    pub(super) fn offer(path: &Path, key: &str, entry: &Entry) {
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
