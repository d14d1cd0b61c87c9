//! Fuzzes what pibl reads from a client: the request head parser, the
//! framing rules, the head it forwards, the body decoder, and the
//! Accept-Encoding negotiation.
//!
//! Beyond "never panics", it checks three properties:
//! - a head pibl accepts and forwards parses back to one, identical framing;
//! - a body pibl relays decodes the same whether re-encoded or not;
//! - pibl's chunked output is itself valid chunked coding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pibl::http::body::{self, Encode};
use pibl::http::{self, Framing, Parsed};
use pibl::http::wire::Reader;

/// Decodes `input` framed as `framing`, re-encoded as `encode`, through a
/// small buffer so that lines and chunks straddle refills.
fn relay(input: &[u8], framing: Framing, encode: Encode) -> Option<Vec<u8>> {
    let mut reader = Reader::with_capacity(input, 61);
    let mut out = Vec::new();
    body::relay(&mut reader, &mut out, framing, encode, 1 << 20).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Done(req, len)) = http::parse_request(data, 100) else {
        return;
    };
    assert!(len <= data.len());
    // Accept-Encoding, whatever it says, picks a coding the client did not
    // refuse, or none.
    use http::coding::{negotiate, Coding};
    if let Some(coding) = negotiate(&req.fields, &[Coding::Br, Coding::Gzip]) {
        assert!(http::values(&req.fields, "accept-encoding").next().is_some(), "{coding:?} unasked");
    }
    let Ok(framing) = http::request_framing(&req) else {
        return;
    };

    let mut forwarded = Vec::new();
    http::forward_request(&req, &req.target, http::ClientSide { addr: "192.0.2.1".parse().unwrap(), https: false }, "backend:80", framing, false, &mut forwarded);
    match http::parse_request(&forwarded, http::MAX_FIELDS) {
        Ok(Parsed::Done(again, n)) => {
            assert_eq!(n, forwarded.len(), "forwarded head has trailing bytes");
            assert_eq!(http::request_framing(&again), Ok(framing), "framing changed");
            assert_eq!((again.method.as_str(), again.target.as_str()), (req.method.as_str(), req.target.as_str()));
        }
        _ => panic!("forwarded head does not parse: {:?}", String::from_utf8_lossy(&forwarded)),
    }

    let rest = &data[len..];
    let plain = relay(rest, framing, Encode::Plain);
    if framing == Framing::Chunked {
        let chunked = relay(rest, framing, Encode::Chunked);
        assert_eq!(plain.is_some(), chunked.is_some(), "decoding depends on the encoding");
        if let (Some(plain), Some(chunked)) = (plain, chunked) {
            assert_eq!(relay(&chunked, Framing::Chunked, Encode::Plain), Some(plain), "re-encoded chunks differ");
        }
    }
});
