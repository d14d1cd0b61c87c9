//! The cache's behaviour across its pieces: storing under fill locks,
//! lifetimes, sweeping, entries kept in memory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::{FNV_START, fnv1a, header_bytes};
use super::recent::Recent;
use super::store::{Cache, FILL_PREFIX, Lookup};
use super::writer::{Fill, FillLock, Writer};
use crate::clock::unix_now;
use crate::http::{self, ResponseHead};

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
