//! Fuzzes what pibl reads from its cache directory: an entry file is input
//! too, and a damaged one (a full disk, a crash, a hand edit) must be
//! refused, never served and never a panic.
//!
//! Beyond "never panics", it checks that whatever `parse` and `check`
//! accept is an entry the writer could have made: its header, written
//! again from what was parsed, parses back to the same values.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::cache::entry::{check, header_bytes, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(header)) = parse(data) else {
        return;
    };
    if check(&header, data, data.len() as u64).is_err() {
        return;
    }
    let head = &data[header.head_at..header.head_at + header.head_len];
    let again = header_bytes(&header.key, header.stored, header.expires, head, header.body_len);
    let reparsed = parse(&again).expect("a written header parses").expect("whole");
    assert_eq!(
        (&reparsed.key, reparsed.stored, reparsed.expires, reparsed.head_len, reparsed.body_len),
        (&header.key, header.stored, header.expires, header.head_len, header.body_len)
    );
});
