//! Fuzzes what pibl reads from a TLS client before anything is proven: a
//! session ticket, which any client may send forged; and the DER walk
//! that reads a certificate's validity period (`pibl --check`, start,
//! reload).
//!
//! Beyond "never panics": a forged ticket never opens, and whatever pibl
//! seals it opens again, byte for byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::tls::certs::validity;
use pibl::tls::tickets::{Key, Ticketer};
use rustls::server::ProducesTickets;

fuzz_target!(|data: &[u8]| {
    let key = Key::from_file_bytes(&[7u8; 80]).expect("80 bytes");
    let tickets = Ticketer::from_files(vec![key]);
    assert!(tickets.decrypt(data).is_none(), "a forged ticket opened");
    let sealed = tickets.encrypt(data).expect("sealed");
    assert_eq!(tickets.decrypt(&sealed).as_deref(), Some(data));
    if let Some((not_before, not_after)) = validity(data) {
        // Times are whole seconds from 1950 on, as RFC 5280 allows.
        assert!(not_before < 1 << 40 && not_after < 1 << 40);
    }
});
