//! The cache janitor: one helper process, forked by the parent when the
//! cache is on, that sweeps the cache directory every second (a large one
//! less often, see `rest_after`).  It removes
//! expired entries, so no client waits on that, and keeps the entries
//! within `cache.max_size` by removing the least recently used.

use std::collections::BinaryHeap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

use super::store::{Cache, DEBRIS_AGE, is_temporary, remove_unless_held};
use crate::diag;

/// Time between sweeps of a small cache.  A sweep reads only the directory
/// and each file's times and size, so it is cheap — for a few thousand
/// entries.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How many times as long as its last sweep took the janitor rests: a
/// sweep of hundreds of thousands of entries takes a second of CPU, and
/// the janitor must leave the CPUs to the children serving clients.
const REST_FACTOR: u32 = 9;
/// Evictions are said at most this often (as other recurring things),
/// summed: a cache in use sits at max_size and evicts on every sweep,
/// which is no news each second.
const SAY_EVERY: Duration = Duration::from_millis(crate::log::RECURRING_QUIET);

/// Runs in the helper (a process, or a thread in the thread model) until
/// `keep_going` says no (a process: until SIGTERM).
pub fn run(cache: &Cache, max_size: u64, keep_going: &dyn Fn() -> bool) {
    let mut unsaid = Evictions::default();
    while keep_going() {
        let started = cpu_time();
        match cache.sweep(max_size) {
            Ok((_, evicted)) => {
                if let Some(n) = unsaid.add(evicted, Instant::now()) {
                    diag!(
                        "cache over max_size: {n} least recently used entries removed \
                         (said once a minute at most)"
                    )
                }
            }
            Err(e) => diag!("cache sweep: {}", crate::error::describe_io(&e)),
        }
        thread::sleep(rest_after(cpu_time().saturating_sub(started)));
    }
}

/// Entries evicted since evictions were last said.
#[derive(Default)]
struct Evictions {
    count: usize,
    said: Option<Instant>,
}

impl Evictions {
    /// Adds a sweep's evictions; the sum to say now, if any, at most once
    /// every `SAY_EVERY`.
    fn add(&mut self, evicted: usize, now: Instant) -> Option<usize> {
        self.count += evicted;
        let due = self.said.is_none_or(|said| now >= said + SAY_EVERY);
        if self.count == 0 || !due {
            return None;
        }
        self.said = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// The CPU time this thread has used.  A sweep is judged by it, not by
/// the time it took: on a busy machine the janitor waits its turn among
/// many runnable children, and a rest reckoned from that wait would let
/// the cache outgrow max_size for many seconds.
fn cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// The pause after a sweep that used `sweep` of CPU time: a second, or
/// long enough that sweeping takes at most a tenth of one CPU.
fn rest_after(sweep: Duration) -> Duration {
    SWEEP_INTERVAL.max(sweep * REST_FACTOR)
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

impl Cache {
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
        let (mut total, mut entries) = (0, 0);
        for file in self.files()? {
            match self.judge(&file, now) {
                Judged::Expired(path, judged) => {
                    expired += usize::from(self.remove_if_same(&path, judged))
                }
                Judged::Live(live) => {
                    total += live.size;
                    entries += 1;
                }
                Judged::Other => {}
            }
        }
        if total <= max_size {
            crate::stats::set_cache_size(entries, total);
            return Ok((expired, 0));
        }
        let excess = total - max_size;
        // The least recently used entries whose sizes make up the excess:
        // a heap with the most recently used on top, which goes as soon as
        // the others make up the excess without it.
        let mut oldest = BinaryHeap::new();
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
        let evicted: Vec<u64> = oldest
            .into_sorted_vec()
            .into_iter()
            .filter(|live| self.remove_if_same(&live.path, live.judged))
            .map(|live| live.size)
            .collect();
        let gone: u64 = evicted.iter().sum();
        crate::stats::set_cache_size(entries - evicted.len() as u64, total - gone);
        Ok((expired, evicted.len()))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sweep_is_followed_by_a_long_rest() {
        assert_eq!(rest_after(Duration::from_millis(3)), SWEEP_INTERVAL);
        assert_eq!(
            rest_after(Duration::from_millis(500)),
            Duration::from_millis(4500)
        );
    }

    #[test]
    fn evictions_are_said_at_once_then_summed_once_a_minute() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut unsaid = Evictions::default();
        assert_eq!(unsaid.add(0, at(0)), None, "nothing to say");
        assert_eq!(unsaid.add(3, at(1)), Some(3), "the first at once");
        assert_eq!(unsaid.add(4, at(2)), None);
        assert_eq!(unsaid.add(5, at(60)), None);
        assert_eq!(unsaid.add(0, at(61)), Some(9), "a minute on, summed");
        assert_eq!(unsaid.add(0, at(200)), None, "nothing since");
        assert_eq!(unsaid.add(1, at(201)), Some(1));
    }
}
