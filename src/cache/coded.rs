//! Coded representations of a stored response: its body in gzip or
//! brotli, made once from the identity entry and kept beside it, so that
//! a hit for a client that asks for a coding is a file sent as it is,
//! with its exact length, rather than a compression per request (which is
//! what nginx's gzip does to every hit from its cache).
//!
//! A representation is an entry of its own, under the URL's key and its
//! coding's token (`http://host/a gzip`: no key holds a space), with the
//! identity's head made for the coding (`http::coding::encoded_head`),
//! its stored and expiry times, and `X-Pibl-Source`, which names the
//! identity file it was made from: its inode, birth time and stored time.
//! A representation is served only while that is still the identity entry
//! and the identity is fresh; a new response or a revalidation of the
//! identity makes it stale, and the next client to ask makes it again.
//! Making one takes the fill lock of its own key, so two processes never
//! compress the same body at once; the one that waits serves what the
//! other made.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::UNIX_EPOCH;

use super::entry::{Entry, copy_body};
use super::store::{Cache, Lookup};
use super::writer::Fill;
use crate::http::codec::Encoder;
use crate::http::coding::{Coding, encoded_head};
use crate::http::{self, Field};

/// The field of a representation's head that names its source.
pub const SOURCE_FIELD: &str = "X-Pibl-Source";

/// The codings a representation may be in.
pub const CODINGS: [Coding; 2] = [Coding::Br, Coding::Gzip];

/// The key of `key`'s representation in `coding`.
pub fn coded_key(key: &str, coding: Coding) -> String {
    format!("{key} {}", coding.token())
}

/// Whether `entry` is a coded representation (made by pibl).
pub fn is_representation(entry: &Entry) -> bool {
    http::value(&entry.head.fields, SOURCE_FIELD).is_some()
}

/// What names the identity entry a representation is made from.
fn source_of(identity: &Entry) -> Option<String> {
    let meta = identity.file.metadata().ok()?;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Some(format!("{:x}.{born}.{}", meta.ino(), identity.stored))
}

impl Cache {
    /// The representation of `identity` (the entry for `key`) in `coding`:
    /// the stored one if it was made from this very entry, else one made
    /// now.  `None` if it cannot be (another process is making it and
    /// gave up, a full disk): the identity is served instead.
    pub fn coded(&self, key: &str, identity: &Entry, coding: Coding) -> Option<Entry> {
        let coded_key = coded_key(key, coding);
        let source = source_of(identity)?;
        if let Some(entry) = self.representation(&coded_key, &source) {
            return Some(entry);
        }
        if let Fill::Fetch(lock) = self.fill(&coded_key) {
            let mut head = encoded_head(&identity.head, coding);
            head.fields.push(Field {
                name: SOURCE_FIELD.into(),
                value: source.clone().into_bytes(),
            });
            let times = (identity.stored, identity.expires);
            let writer = self.begin_derived(&coded_key, &head, times, lock)?;
            let mut encoder = Encoder::for_storage(coding, writer);
            copy_body(identity, &mut encoder).ok()?;
            encoder.finish().ok()?.commit();
        }
        self.representation(&coded_key, &source)
    }

    /// The stored representation at `coded_key`, if made from `source`.
    fn representation(&self, coded_key: &str, source: &str) -> Option<Entry> {
        match self.lookup(coded_key) {
            Lookup::Fresh(entry) | Lookup::Stale(entry)
                if http::value(&entry.head.fields, SOURCE_FIELD) == Some(source) =>
            {
                Some(entry)
            }
            _ => None,
        }
    }

    /// Removes `key`'s representations; how many there were.
    pub(super) fn remove_representations(&self, key: &str) -> io::Result<usize> {
        let mut removed = 0;
        for coding in CODINGS {
            match std::fs::remove_file(self.path_of(&coded_key(key, coding))) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}
