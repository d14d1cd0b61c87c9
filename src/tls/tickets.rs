//! Session tickets every process of pibl can read: TLS 1.2 and 1.3
//! resumption that works when the ticket was issued by another child.
//!
//! rustls's own ticketer keeps its keys in the process that made it, and
//! rotates them there: a freshly forked child has issued nothing and would
//! refuse every ticket.  Here the keys live in a shared page the parent
//! maps, and fills with a first key, before it forks.  The key that seals
//! new tickets is replaced every `ROTATION`, by whichever process first
//! finds it due; the previous ones still open tickets until their slot is
//! reused, `SLOTS` rotations later.  The page is made once and kept across
//! reloads.
//!
//! With `ticket_key_file`, the keys come from files instead (as nginx's
//! `ssl_session_ticket_key`): the first seals, all open; several hosts
//! with the same files resume each other's sessions.  Rotating them is the
//! operator's: a new file first in the list, and a reload.
//!
//! A ticket is the key's 16-byte name, a random 12-byte nonce, and the
//! session state sealed with ChaCha20-Poly1305 under the named key.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::unix_now;
use crate::error::Error;

/// How long one key seals new tickets.
const ROTATION: u64 = 3600;
/// Keys kept: the one that seals, and those before it, which still open.
const SLOTS: usize = 3;
/// How long a ticket is good for, told to the client: a ticket sealed
/// just before its key was replaced still opens until that key's slot is
/// reused.
pub const LIFETIME: u32 = (ROTATION * (SLOTS as u64 - 1)) as u32;
/// A rotation whose process died half-way is taken over after this long.
const STALE_LOCK: u64 = 10;

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const WORDS: usize = (NAME_LEN + KEY_LEN) / 8;

/// One key: its name and its secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; KEY_LEN],
}

impl Key {
    fn random(rng: &SystemRandom) -> Option<Key> {
        let mut key = Key {
            name: [0; NAME_LEN],
            secret: [0; KEY_LEN],
        };
        rng.fill(&mut key.name).ok()?;
        rng.fill(&mut key.secret).ok()?;
        Some(key)
    }

    /// A key from a file's bytes, as nginx reads `ssl_session_ticket_key`:
    /// 80 bytes (a name, 32 bytes nginx gives to HMAC, and the key) or 48
    /// (a name and the key).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Key, String> {
        let secret = match bytes.len() {
            80 => &bytes[48..80],
            48 => &bytes[16..48],
            n => return Err(format!("is {n} bytes long; a ticket key file has 80 or 48")),
        };
        let mut key = Key {
            name: [0; NAME_LEN],
            secret: [0; KEY_LEN],
        };
        key.name.copy_from_slice(&bytes[..NAME_LEN]);
        key.secret.copy_from_slice(secret);
        Ok(key)
    }

    fn words(&self) -> [u64; WORDS] {
        let mut bytes = [0u8; NAME_LEN + KEY_LEN];
        bytes[..NAME_LEN].copy_from_slice(&self.name);
        bytes[NAME_LEN..].copy_from_slice(&self.secret);
        std::array::from_fn(|i| u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap()))
    }

    fn from_words(words: &[u64; WORDS]) -> Key {
        let mut bytes = [0u8; NAME_LEN + KEY_LEN];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        let mut key = Key {
            name: [0; NAME_LEN],
            secret: [0; KEY_LEN],
        };
        key.name.copy_from_slice(&bytes[..NAME_LEN]);
        key.secret.copy_from_slice(&bytes[NAME_LEN..]);
        key
    }

    fn sealer(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.secret).expect("32-byte key"))
    }
}

/// One slot of the ring, guarded by a sequence number (odd while it is
/// being written): a reader that sees it change reads again.
#[repr(C)]
struct Slot {
    seq: AtomicU64,
    /// When its key was made, in Unix seconds; 0: empty.
    made: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// The shared page.
#[repr(C)]
struct Ring {
    /// The slot whose key seals.
    current: AtomicU32,
    /// Unix second a rotation began, 0 when none is under way.
    rotating: AtomicU64,
    slots: [Slot; SLOTS],
}

// SAFETY: atomics only; all zero is an empty ring (no key yet), which
// `shared` fills before the page is used.
unsafe impl crate::shm::Shareable for Ring {}

impl Slot {
    fn read(&self) -> Option<Key> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            if self.made.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(Key::from_words(&words));
            }
        }
    }

    fn write(&self, key: &Key, made: u64) {
        self.seq.fetch_add(1, Ordering::Acquire);
        for (w, v) in self.words.iter().zip(key.words()) {
            w.store(v, Ordering::Relaxed);
        }
        self.made.store(made, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }
}

impl Ring {
    /// Replaces the oldest key with a new one that seals from now on, if
    /// the current one is due and no other process is at it.
    fn rotate_if_due(&self, rng: &SystemRandom) {
        let now = unix_now();
        let current = self.current.load(Ordering::Acquire) as usize % SLOTS;
        if now < self.slots[current].made.load(Ordering::Relaxed) + ROTATION {
            return;
        }
        let began = self.rotating.load(Ordering::Relaxed);
        if (began != 0 && now < began + STALE_LOCK)
            || self
                .rotating
                .compare_exchange(began, now, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Checked again: another process may have rotated meanwhile.
        let current = self.current.load(Ordering::Acquire) as usize % SLOTS;
        if now >= self.slots[current].made.load(Ordering::Relaxed) + ROTATION
            && let Some(key) = Key::random(rng)
        {
            let next = (current + 1) % SLOTS;
            self.slots[next].write(&key, now);
            self.current.store(next as u32, Ordering::Release);
        }
        self.rotating.store(0, Ordering::Release);
    }

    fn sealing(&self) -> Option<Key> {
        self.slots[self.current.load(Ordering::Acquire) as usize % SLOTS].read()
    }

    fn named(&self, name: &[u8]) -> Option<Key> {
        self.slots
            .iter()
            .filter_map(Slot::read)
            .find(|k| k.name[..] == *name)
    }
}

/// Where the keys come from.
enum Source {
    Shared(&'static Ring),
    Files(Vec<Key>),
}

/// rustls's ticket producer, over the shared keys or the files'.
pub struct Ticketer {
    source: Source,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticketer")
    }
}

static RING: OnceLock<&'static Ring> = OnceLock::new();
/// The memory file behind the ring, for a binary upgrade to hand over.
static RING_FILE: OnceLock<std::os::fd::OwnedFd> = OnceLock::new();
/// The ring's memory file handed over by the pibl this one upgrades.
static INHERITED: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// The variable that names the ring's memory file during an upgrade.
pub const UPGRADE_TICKETS: &str = "PIBL_UPGRADE_TICKETS";

/// Takes the ring handed over by the pibl this one upgrades, if any, so
/// that tickets sealed before the upgrade still open after it.  Called at
/// start, before any thread.
pub fn take_inherited_ring() {
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var(UPGRADE_TICKETS)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: called at start, before pibl starts any thread.
    unsafe { std::env::remove_var(UPGRADE_TICKETS) };
    // SAFETY: the descriptor was handed to this process to own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    *INHERITED.lock().unwrap_or_else(|p| p.into_inner()) = Some(owned);
}

/// The ring's memory file, for the upgrade to hand over, once made.
pub fn ring_file() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    RING_FILE.get().map(AsRawFd::as_raw_fd)
}

/// The ring: the one handed over, or a new one with its first key.
fn make_ring() -> Result<&'static Ring, Error> {
    let inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(fd) = inherited {
        match crate::shm::map_inherited::<Ring>(fd) {
            Ok((ring, fd)) => {
                let _ = RING_FILE.set(fd);
                return Ok(ring);
            }
            Err(e) => crate::diag!("upgrade: ticket keys not taken over ({e}); new ones made"),
        }
    }
    let (ring, fd) = crate::shm::map_file::<Ring>("pibl-ticket-keys")?;
    let key = Key::random(&SystemRandom::new()).ok_or_else(|| {
        Error::os(
            "cannot make a ticket key",
            std::io::Error::other("no random"),
        )
    })?;
    ring.slots[0].write(&key, unix_now());
    let _ = RING_FILE.set(fd);
    Ok(ring)
}

impl Ticketer {
    /// The ticketer over the shared ring, mapped and given its first key
    /// on the first call — in the parent, before it forks — and the same
    /// ring at every reload after.
    pub fn shared() -> Result<Arc<Ticketer>, Error> {
        let ring = match RING.get() {
            Some(ring) => *ring,
            None => {
                let ring = make_ring()?;
                *RING.get_or_init(|| ring)
            }
        };
        Ok(Arc::new(Ticketer {
            source: Source::Shared(ring),
            rng: SystemRandom::new(),
        }))
    }

    /// The ticketer over keys read from files; the first seals.
    pub fn from_files(keys: Vec<Key>) -> Arc<Ticketer> {
        Arc::new(Ticketer {
            source: Source::Files(keys),
            rng: SystemRandom::new(),
        })
    }

    fn sealing(&self) -> Option<Key> {
        match &self.source {
            Source::Shared(ring) => {
                ring.rotate_if_due(&self.rng);
                ring.sealing()
            }
            Source::Files(keys) => keys.first().copied(),
        }
    }

    fn named(&self, name: &[u8]) -> Option<Key> {
        match &self.source {
            Source::Shared(ring) => ring.named(name),
            Source::Files(keys) => keys.iter().find(|k| k.name[..] == *name).copied(),
        }
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.sealing()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.sealer()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.named(name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .sealer()
            .open_in_place(nonce, Aad::from(name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn ring_with(keys: &[(Key, u64)]) -> &'static Ring {
        let ring = crate::shm::map::<Ring>().unwrap();
        for (i, (key, made)) in keys.iter().enumerate() {
            ring.slots[i].write(key, *made);
            ring.current.store(i as u32, Ordering::Relaxed);
        }
        ring
    }

    fn shared(ring: &'static Ring) -> Ticketer {
        Ticketer {
            source: Source::Shared(ring),
            rng: SystemRandom::new(),
        }
    }

    #[test]
    fn a_ticket_opens_under_another_ticketer_over_the_same_keys() {
        let key = Key::random(&SystemRandom::new()).unwrap();
        let ring = ring_with(&[(key, unix_now())]);
        let ticket = shared(ring).encrypt(b"session state").unwrap();
        assert_eq!(shared(ring).decrypt(&ticket).unwrap(), b"session state");
        // Tampered, or under keys it was not sealed with: refused.
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(shared(ring).decrypt(&bad).is_none());
        let other = ring_with(&[(Key::random(&SystemRandom::new()).unwrap(), unix_now())]);
        assert!(shared(other).decrypt(&ticket).is_none());
        assert!(shared(ring).decrypt(&ticket[..20]).is_none());
    }

    #[test]
    fn rotation_seals_with_a_new_key_and_still_opens_old_tickets() {
        let old = Key::random(&SystemRandom::new()).unwrap();
        let ring = ring_with(&[(old, unix_now() - ROTATION - 1)]);
        let t = shared(ring);
        let before = {
            // Sealed under the old key directly, as a ticket issued an hour ago.
            let fresh = Ticketer::from_files(vec![old]);
            fresh.encrypt(b"old").unwrap()
        };
        let after = t.encrypt(b"new").unwrap();
        assert_ne!(&after[..NAME_LEN], &old.name[..], "a new key seals");
        assert_eq!(ring.current.load(Ordering::Relaxed), 1);
        assert_eq!(t.decrypt(&before).unwrap(), b"old");
        assert_eq!(t.decrypt(&after).unwrap(), b"new");
        // Not due: no second rotation.
        t.encrypt(b"x").unwrap();
        assert_eq!(ring.current.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn key_files_of_80_or_48_bytes() {
        let bytes: Vec<u8> = (0..80).collect();
        let k = Key::from_file_bytes(&bytes).unwrap();
        assert_eq!(k.name, std::array::from_fn(|i| i as u8));
        assert_eq!(k.secret[0], 48);
        assert_eq!(Key::from_file_bytes(&bytes[..48]).unwrap().secret[0], 16);
        assert!(Key::from_file_bytes(&bytes[..47]).is_err());
    }
}
