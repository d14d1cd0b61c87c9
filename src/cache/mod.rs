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
//!
//! The pieces: `entry` (the file format), `store` (writing, fill locks),
//! `recent` (entries kept in memory), `policy` (RFC 9111: what may be
//! stored, for how long), `plan` (what a request gets from the cache),
//! `hit` (answering from an entry), `coded` (gzip and brotli
//! representations of an entry), `janitor` (expiry and eviction),
//! `admin` (`pibl cache`).

pub mod admin;
pub mod coded;
pub mod entry;
pub mod hit;
pub mod janitor;
pub mod plan;
mod policy;
mod recent;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use entry::{Body, Entry, copy_body, touch};
pub use plan::Status;
pub use policy::{age, matches_vary, validators, vary_values};
pub use store::{Cache, Listing, Lookup, key, key_of_url};
pub use writer::{Fill, FillLock, StoreOnly, Writer};
