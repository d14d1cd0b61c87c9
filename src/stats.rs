//! What pibl counts, for its status page and metrics: a scoreboard (one
//! slot per child, prefork worker or connection thread, with what it is
//! doing), totals, per-backend counters and latency histograms, and the
//! cache's counters — all atomics in one shared mapping the parent makes
//! before it forks anything, and keeps across reloads, so that the counts
//! outlive the children that make them.
//!
//! A process claims a free slot with a compare-and-swap of its owner word
//! and writes only its own slot; the parent frees the slots of a child it
//! reaps, so a child killed at any instruction leaves none behind.  Text
//! (the client, the request line) is written under the slot's sequence
//! number, odd while it changes, and read again when it changed meanwhile:
//! a reader never blocks a writer.  Counters are added with relaxed
//! fetch-adds: each is exact, and nothing orders them against each other.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::config::MAX_BACKENDS;
use crate::shm::{self, Shareable};

/// Scoreboard slots.  A process or thread that finds none free serves
/// all the same, unseen on the scoreboard (`State` counts stay exact).
pub const SLOTS: usize = 1024;
/// Bytes of a request line kept in a slot; longer ones are cut.
const REQUEST_BYTES: usize = 64;
/// Bytes of a client address kept in a slot (`[v6]:port` fits).
const CLIENT_BYTES: usize = 48;
/// Bytes of a backend's name kept in its counters' slot.
const NAME_BYTES: usize = 64;
/// Upper bounds of the latency histogram's buckets, in seconds (the last,
/// +Inf, is implicit): Prometheus's defaults.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The requests-per-second history: this many periods of `PERIOD_MS`.
pub const HISTORY: usize = 60;
pub const PERIOD_MS: u64 = 5_000;

/// What a slot's owner is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// A prefork worker waiting for a connection.
    Idle = 1,
    Handshake,
    Reading,
    Backend,
    Writing,
    KeepAlive,
    Closing,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Idle,
        State::Handshake,
        State::Reading,
        State::Backend,
        State::Writing,
        State::KeepAlive,
        State::Closing,
    ];

    fn from_u32(n: u32) -> Option<State> {
        State::ALL.into_iter().find(|s| *s as u32 == n)
    }

    /// As the status page says it.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Handshake => "TLS handshake",
            State::Reading => "reading request",
            State::Backend => "waiting for backend",
            State::Writing => "writing response",
            State::KeepAlive => "keep-alive",
            State::Closing => "closing",
        }
    }

    /// Its letter in Apache's scoreboard (mod_status's `?auto`).
    pub fn letter(self) -> char {
        match self {
            State::Idle => '_',
            State::Handshake | State::Reading => 'R',
            State::Backend | State::Writing => 'W',
            State::KeepAlive => 'K',
            State::Closing => 'C',
        }
    }
}

/// One scoreboard slot.
#[repr(C)]
struct Slot {
    /// pid << 32 | thread id; 0 when free.
    owner: AtomicU64,
    state: AtomicU32,
    /// Odd while the text fields change.
    seq: AtomicU32,
    since_ms: AtomicU64,
    /// Requests served on the connection in hand.
    requests: AtomicU64,
    /// The backend of the request in hand: its index + 1; 0 for none.
    backend: AtomicU32,
    client: [AtomicU64; CLIENT_BYTES / 8],
    request: [AtomicU64; REQUEST_BYTES / 8],
}

/// One backend's counters, claimed by name.
#[repr(C)]
struct BackendCounters {
    /// Bytes of its name; all zero when the slot is free.
    name: [AtomicU64; NAME_BYTES / 8],
    active: AtomicI64,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    failures: AtomicU64,
    bytes: AtomicU64,
    latency_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// When it went down or up (`clock::now_ms`), and why it is down.
    changed_ms: AtomicU64,
    down_why: AtomicU32,
}

/// Why a backend is down, as the status page says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DownWhy {
    Up = 0,
    Failures = 1,
    Check = 2,
}

/// The whole shared mapping.
#[repr(C)]
struct Page {
    started_ms: AtomicU64,
    started_unix: AtomicU64,
    connections: AtomicU64,
    requests: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    reloads: AtomicU64,
    forked: AtomicU64,
    reaped: AtomicU64,
    cache: [AtomicU64; 5],
    cache_entries: AtomicU64,
    cache_bytes: AtomicU64,
    history: [(AtomicU64, AtomicU64); HISTORY],
    slots: [Slot; SLOTS],
    backends: [BackendCounters; MAX_BACKENDS],
}

// SAFETY: atomics only (and arrays and tuples of them); all-zero is "no
// slot taken, nothing counted".
unsafe impl Shareable for Page {}

static PAGE: OnceLock<&'static Page> = OnceLock::new();

/// Maps the page, once, in the parent before anything forks (a second
/// call keeps the first page: a reload keeps the counts).
pub fn init() -> Result<(), crate::error::Error> {
    if PAGE.get().is_none() {
        let page = shm::map::<Page>()?;
        page.started_ms.store(now_ms(), Ordering::Relaxed);
        page.started_unix
            .store(crate::clock::unix_now(), Ordering::Relaxed);
        let _ = PAGE.set(page);
    }
    Ok(())
}

/// The page, when `init` made it (not in `pibl cache` and other commands).
fn page() -> Option<&'static Page> {
    PAGE.get().copied()
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Counts what the parent does: a child forked or reaped, a reload.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Forked,
    Reaped,
    Reload,
}

pub fn count(event: Event) {
    if let Some(p) = page() {
        add(
            match event {
                Event::Forked => &p.forked,
                Event::Reaped => &p.reaped,
                Event::Reload => &p.reloads,
            },
            1,
        );
    }
}

/// The cache's answers, as X-Cache says them.
#[derive(Debug, Clone, Copy)]
pub enum CacheAnswer {
    Hit = 0,
    Miss,
    Expired,
    Revalidated,
    Bypass,
}

/// Counts one exchange at its end: its status, the bytes each way, what
/// the cache did, and a tick of the requests-per-second history.
pub fn count_exchange(status: u16, bytes_in: u64, bytes_out: u64, cache: Option<CacheAnswer>) {
    let Some(p) = page() else { return };
    if (100..600).contains(&status) {
        add(&p.requests[usize::from(status / 100 - 1)], 1);
    }
    add(&p.bytes_in, bytes_in);
    add(&p.bytes_out, bytes_out);
    if let Some(answer) = cache {
        add(&p.cache[answer as usize], 1);
    }
    tick(p, now_ms());
}

/// Counts a request in the history's current period, taking the period's
/// slot over from the one it held `HISTORY` periods ago.  Two processes
/// may both see the slot stale; the one whose swap wins resets it, and an
/// increment made in between is lost — a chart can afford that.
fn tick(p: &Page, now: u64) {
    let period = now / PERIOD_MS + 1;
    let (stamp, n) = &p.history[(period % HISTORY as u64) as usize];
    let seen = stamp.load(Ordering::Relaxed);
    if seen != period
        && stamp
            .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        n.store(0, Ordering::Relaxed);
    }
    add(n, 1);
}

/// Counts an accepted connection.
pub fn count_connection() {
    if let Some(p) = page() {
        add(&p.connections, 1);
    }
}

/// Sets the cache's size as the janitor last found it.
pub fn set_cache_size(entries: u64, bytes: u64) {
    if let Some(p) = page() {
        p.cache_entries.store(entries, Ordering::Relaxed);
        p.cache_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Writes `text` into `words`, cut to fit, zero-padded.
fn store_text(words: &[AtomicU64], text: &[u8]) {
    for (i, word) in words.iter().enumerate() {
        let mut bytes = [0u8; 8];
        for (j, b) in bytes.iter_mut().enumerate() {
            *b = text.get(i * 8 + j).copied().unwrap_or(0);
        }
        word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
}

fn load_text(words: &[AtomicU64]) -> String {
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The counters' slot of each backend named in `names`, claimed by name
/// (the parent's alone, at start and at each reload): a backend kept
/// across a reload keeps its counts.  `None` for one that finds no slot.
pub fn backend_slots(names: &[String]) -> Vec<Option<usize>> {
    let Some(p) = page() else {
        return vec![None; names.len()];
    };
    names
        .iter()
        .map(|name| {
            let mine = |b: &BackendCounters| load_text(&b.name) == *name;
            if let Some(at) = p.backends.iter().position(mine) {
                return Some(at);
            }
            let free = p
                .backends
                .iter()
                .position(|b| load_text(&b.name).is_empty())?;
            store_text(&p.backends[free].name, name.as_bytes());
            Some(free)
        })
        .collect()
}

/// A backend's counters' slot, as `backend_slots` gave it.
#[derive(Debug, Clone, Copy)]
pub struct BackendSlot(pub Option<usize>);

impl BackendSlot {
    fn counters(self) -> Option<&'static BackendCounters> {
        Some(&page()?.backends[self.0?])
    }

    /// A request goes to it: counted active until the guard goes, however
    /// the attempt ends.
    pub fn begin(self) -> Active {
        if let Some(b) = self.counters() {
            b.active.fetch_add(1, Ordering::Relaxed);
        }
        Active(self)
    }

    /// It answered `status` after `latency_us` (request sent to head read).
    pub fn answered(self, status: u16, latency_us: u64) {
        let Some(b) = self.counters() else { return };
        add(&b.requests, 1);
        if status >= 500 {
            add(&b.errors_5xx, 1);
        }
        add(&b.latency_us, latency_us);
        let secs = latency_us as f64 / 1e6;
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        add(&b.buckets[bucket], 1);
    }

    /// Bytes of a response body relayed from it.
    pub fn relayed(self, bytes: u64) {
        if let Some(b) = self.counters() {
            add(&b.bytes, bytes);
        }
    }

    /// It failed (could not be connected to, or failed to answer).
    pub fn failed(self) {
        if let Some(b) = self.counters() {
            add(&b.failures, 1);
        }
    }

    /// It went down (for `why`) or up.
    pub fn changed(self, why: DownWhy) {
        if let Some(b) = self.counters() {
            b.down_why.store(why as u32, Ordering::Relaxed);
            b.changed_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// The slot of the seat this thread holds, if any.
    static CURRENT: std::cell::Cell<Option<&'static Slot>> = const { std::cell::Cell::new(None) };
}

/// A request in flight to a backend (`BackendSlot::begin`).
pub struct Active(BackendSlot);

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(b) = self.0.counters() {
            b.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// This process's or thread's scoreboard slot, held while it serves; what
/// it does is said with `set_state` and the other `set_` functions, which
/// write to the seat this thread holds.
pub struct Seat {
    slot: Option<&'static Slot>,
}

impl Seat {
    /// Claims a free slot for this thread; a seat without a slot when none
    /// is free, or without the page.
    pub fn claim(state: State) -> Seat {
        let owner = owner_of(std::process::id(), nix::unistd::gettid().as_raw() as u32);
        // A plain load first: a compare-and-swap on every taken slot would
        // take each one's cache line from the process that owns it.
        let slot = page().and_then(|p| {
            p.slots.iter().find(|s| {
                s.owner.load(Ordering::Relaxed) == 0
                    && s.owner
                        .compare_exchange(0, owner, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
        });
        CURRENT.set(slot);
        set_connection("");
        set_state(state);
        Seat { slot }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            CURRENT.set(None);
            s.owner.store(0, Ordering::Release);
        }
    }
}

fn with_seat(f: impl FnOnce(&Slot)) {
    if let Some(s) = CURRENT.get() {
        f(s);
    }
}

pub fn set_state(state: State) {
    with_seat(|s| {
        s.state.store(state as u32, Ordering::Relaxed);
        s.since_ms.store(now_ms(), Ordering::Relaxed);
    });
}

/// A new connection from `client`: its count of requests starts at 0.
pub fn set_connection(client: &str) {
    with_seat(|s| {
        s.requests.store(0, Ordering::Relaxed);
        write_text(s, |s| {
            store_text(&s.client, client.as_bytes());
            store_text(&s.request, b"");
        });
        s.backend.store(0, Ordering::Relaxed);
    });
}

/// The request in hand: its line.
pub fn set_request(line: &str) {
    with_seat(|s| {
        write_text(s, |s| store_text(&s.request, line.as_bytes()));
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.backend.store(0, Ordering::Relaxed);
    });
}

/// The backend (its index) the request in hand went to.
pub fn set_backend(index: usize) {
    with_seat(|s| s.backend.store(index as u32 + 1, Ordering::Relaxed));
}

fn write_text(s: &Slot, write: impl FnOnce(&Slot)) {
    s.seq.fetch_add(1, Ordering::AcqRel);
    write(s);
    s.seq.fetch_add(1, Ordering::Release);
}

/// A slot's owner word: `pid` and the thread's id (the pid for a
/// process's main thread).
fn owner_of(pid: u32, thread: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(thread)
}

/// Frees the slots of process `pid`, reaped: it may have died before it
/// freed them itself.
pub fn free_slots_of(pid: u32) {
    if let Some(p) = page() {
        for s in &p.slots {
            if (s.owner.load(Ordering::Relaxed) >> 32) as u32 == pid {
                s.owner.store(0, Ordering::Release);
            }
        }
    }
}

// ---------------------------------------------------------- reading ----

/// A copy of one taken slot, for the status page.
#[derive(Debug, Clone)]
pub struct SlotView {
    pub pid: u32,
    pub thread: u32,
    pub state: State,
    pub seconds: f64,
    pub requests: u64,
    /// The backend's index.
    pub backend: Option<usize>,
    pub client: String,
    pub request: String,
}

/// A copy of one backend's counters.
#[derive(Debug, Clone, Default)]
pub struct BackendView {
    pub active: i64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub failures: u64,
    pub bytes: u64,
    pub latency_us: u64,
    /// Counts per bucket (not cumulative); the last is +Inf.
    pub buckets: Vec<u64>,
    /// Milliseconds since it last went down or up; `None` if never.
    pub changed_ago_ms: Option<u64>,
    pub down_why: u32,
}

/// A copy of everything counted, taken now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub started_unix: u64,
    pub connections: u64,
    /// Requests by status class, 1xx to 5xx.
    pub requests: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reloads: u64,
    pub forked: u64,
    pub reaped: u64,
    /// Hits, misses, expired, revalidated, bypass.
    pub cache: [u64; 5],
    pub cache_entries: u64,
    pub cache_bytes: u64,
    /// Requests per period, oldest first, the current (partial) one last.
    pub history: Vec<u64>,
    pub slots: Vec<SlotView>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let Some(p) = page() else {
            return Snapshot::default();
        };
        let now = now_ms();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            uptime_ms: now.saturating_sub(load(&p.started_ms)),
            started_unix: load(&p.started_unix),
            connections: load(&p.connections),
            requests: std::array::from_fn(|i| load(&p.requests[i])),
            bytes_in: load(&p.bytes_in),
            bytes_out: load(&p.bytes_out),
            reloads: load(&p.reloads),
            forked: load(&p.forked),
            reaped: load(&p.reaped),
            cache: std::array::from_fn(|i| load(&p.cache[i])),
            cache_entries: load(&p.cache_entries),
            cache_bytes: load(&p.cache_bytes),
            history: history(p, now),
            slots: p.slots.iter().filter_map(|s| view(s, now)).collect(),
        }
    }

    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// The requests of the last `HISTORY` periods, oldest first; a period no
/// request stamped counts 0.
fn history(p: &Page, now: u64) -> Vec<u64> {
    let current = now / PERIOD_MS + 1;
    (0..HISTORY as u64)
        .rev()
        .map(|back| {
            let Some(period) = current.checked_sub(back) else {
                return 0;
            };
            let (stamp, n) = &p.history[(period % HISTORY as u64) as usize];
            if stamp.load(Ordering::Relaxed) == period {
                n.load(Ordering::Relaxed)
            } else {
                0
            }
        })
        .collect()
}

fn view(s: &Slot, now: u64) -> Option<SlotView> {
    let owner = s.owner.load(Ordering::Acquire);
    let state = State::from_u32(s.state.load(Ordering::Relaxed))?;
    if owner == 0 {
        return None;
    }
    let (client, request) = read_text(s);
    let backend = s.backend.load(Ordering::Relaxed);
    Some(SlotView {
        pid: (owner >> 32) as u32,
        // A process's main thread has the pid for its id: no thread.
        thread: Some(owner as u32)
            .filter(|&t| t != (owner >> 32) as u32)
            .unwrap_or(0),
        state,
        seconds: now.saturating_sub(s.since_ms.load(Ordering::Relaxed)) as f64 / 1000.0,
        requests: s.requests.load(Ordering::Relaxed),
        backend: (backend > 0).then(|| backend as usize - 1),
        client,
        request,
    })
}

/// The slot's text, read whole: again if a writer changed it meanwhile
/// (a few times at most; then as it is).
fn read_text(s: &Slot) -> (String, String) {
    for _ in 0..4 {
        let before = s.seq.load(Ordering::Acquire);
        let text = (load_text(&s.client), load_text(&s.request));
        if before.is_multiple_of(2) && s.seq.load(Ordering::Acquire) == before {
            return text;
        }
    }
    (load_text(&s.client), load_text(&s.request))
}

/// The counters of backend slot `slot`.
pub fn backend_view(slot: BackendSlot) -> BackendView {
    let Some(b) = slot.counters() else {
        return BackendView {
            buckets: vec![0; BUCKETS.len() + 1],
            ..BackendView::default()
        };
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let changed = load(&b.changed_ms);
    BackendView {
        active: b.active.load(Ordering::Relaxed).max(0),
        requests: load(&b.requests),
        errors_5xx: load(&b.errors_5xx),
        failures: load(&b.failures),
        bytes: load(&b.bytes),
        latency_us: load(&b.latency_us),
        buckets: b.buckets.iter().map(load).collect(),
        changed_ago_ms: (changed > 0).then(|| now_ms().saturating_sub(changed)),
        down_why: b.down_why.load(Ordering::Relaxed),
    }
}

impl BackendView {
    /// The mean latency in seconds, if any request was answered.
    pub fn mean(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_us as f64 / 1e6 / self.requests as f64)
    }

    /// The upper bound of the bucket the `q` quantile falls in (`None` for
    /// no request, +Inf as the last bucket's bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_cut_to_its_room() {
        let words: [AtomicU64; 2] = Default::default();
        store_text(&words, b"GET / HTTP/1.1");
        assert_eq!(load_text(&words), "GET / HTTP/1.1");
        store_text(&words, b"a much longer request line than sixteen bytes");
        assert_eq!(load_text(&words), "a much longer re");
        store_text(&words, b"");
        assert_eq!(load_text(&words), "");
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut v = BackendView {
            buckets: vec![0; BUCKETS.len() + 1],
            ..BackendView::default()
        };
        assert_eq!(v.quantile(0.99), None);
        v.buckets[0] = 98; // <= 5 ms
        v.buckets[4] = 1; // <= 100 ms
        v.buckets[BUCKETS.len()] = 1; // > 10 s
        v.requests = 100;
        assert_eq!(v.quantile(0.5), Some(0.005));
        assert_eq!(v.quantile(0.99), Some(0.1));
        assert_eq!(v.quantile(1.0), Some(f64::INFINITY));
    }
}
