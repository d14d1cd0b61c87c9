//! Content codings (RFC 9110 §8.4): which one a client accepts, by its
//! Accept-Encoding (§12.5.3), and an encoder that compresses a body as it
//! streams, flushing whole blocks when asked so that what has come so far
//! reaches the client at once.

use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::Field;

/// A content coding pibl can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// Its token in Content-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn named(token: &str) -> Option<Coding> {
        if token.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            // RFC 9110 §8.4.1.3: x-gzip is gzip.
            Some(Coding::Gzip)
        } else {
            None
        }
    }
}

/// The coding to send a client whose request has `fields`, among
/// `offered` (in pibl's order of preference): the one the client prefers
/// (highest qvalue), ties going to pibl's order; `None` for the content as
/// it is.  A request without Accept-Encoding, or with one that does not
/// parse, gets none: a client that did not ask is never sent a coding.
pub fn negotiate(fields: &[Field], offered: &[Coding]) -> Option<Coding> {
    let mut prefs = Vec::new();
    let mut present = false;
    for value in super::values(fields, "accept-encoding") {
        present = true;
        parse_into(value, &mut prefs)?;
    }
    if !present {
        return None;
    }
    let weight = |coding: Coding| -> u16 {
        let named = prefs.iter().find(|p| p.coding == Some(coding));
        let any = prefs.iter().find(|p| p.wildcard);
        named.or(any).map_or(0, |p| p.q)
    };
    let mut best: Option<(Coding, u16)> = None;
    for &coding in offered {
        let q = weight(coding);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// One element of Accept-Encoding: a coding pibl knows, `*`, or another
/// (kept only so that it does not count as `*`); q in thousandths.
struct Preference {
    coding: Option<Coding>,
    wildcard: bool,
    q: u16,
}

/// Adds the elements of one Accept-Encoding value to `prefs`; `None` when
/// it does not parse.  An empty value is no element: only identity is
/// acceptable then.
fn parse_into(value: &[u8], prefs: &mut Vec<Preference>) -> Option<()> {
    let text = std::str::from_utf8(value).ok()?;
    for element in text.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue;
        }
        let mut parts = element.split(';');
        let token = parts.next()?.trim_matches([' ', '\t']);
        if token.is_empty() || !token.bytes().all(is_tchar) {
            return None;
        }
        let mut q = 1000;
        for param in parts {
            // OWS ";" OWS name "=" value: no whitespace around the "=".
            let (name, v) = param.split_once('=')?;
            let name = name.trim_start_matches([' ', '\t']);
            if name.is_empty() || !name.bytes().all(is_tchar) || v.starts_with([' ', '\t']) {
                return None;
            }
            if name.eq_ignore_ascii_case("q") {
                q = qvalue(v.trim_end_matches([' ', '\t']))?;
            }
        }
        prefs.push(Preference {
            coding: Coding::named(token),
            wildcard: token == "*",
            q,
        });
    }
    Some(())
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Brotli's window while compressing on the fly: 256 KiB (2^18), which
/// bounds the encoder's memory; a stored representation may afford more.
const BR_WINDOW_BITS: u32 = 18;
/// The encoder's own output buffer for brotli.
const BR_BUFFER: usize = 16 * 1024;

/// Compresses what is written to it into `W`.  `flush` ends the current
/// block so that the client can decode everything written so far (a sync
/// flush), at some cost in ratio: it is for when the source pauses.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Gzip(Box<GzEncoder<W>>),
    Br(Box<brotli::CompressorWriter<W>>),
}

impl<W: Write> Encoder<W> {
    /// An encoder for `coding` at `level` (gzip 1–9, brotli 0–11; clamped).
    pub fn new(coding: Coding, level: u32, out: W) -> Encoder<W> {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(Box::new(GzEncoder::new(
                out,
                Compression::new(level.clamp(1, 9)),
            ))),
            Coding::Br => Inner::Br(Box::new(brotli::CompressorWriter::new(
                out,
                BR_BUFFER,
                level.min(11),
                BR_WINDOW_BITS,
            ))),
        };
        Encoder { inner }
    }

    /// Ends the coded stream (its trailer) and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::Gzip(gz) => gz.finish(),
            Inner::Br(mut br) => {
                // into_inner finishes the stream but cannot say it failed:
                // a flush first surfaces a writer's error.
                br.flush()?;
                Ok(br.into_inner())
            }
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(gz) => gz.write(buf),
            Inner::Br(br) => br.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip(gz) => gz.flush(),
            Inner::Br(br) => br.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const BOTH: [Coding; 2] = [Coding::Br, Coding::Gzip];

    fn fields(values: &[&str]) -> Vec<Field> {
        values
            .iter()
            .map(|v| Field {
                name: "Accept-Encoding".into(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
    }

    fn pick(values: &[&str]) -> Option<Coding> {
        negotiate(&fields(values), &BOTH)
    }

    #[test]
    fn the_clients_preference_then_pibls_order() {
        assert_eq!(
            pick(&["gzip, deflate, br"]),
            Some(Coding::Br),
            "tie: pibl's order"
        );
        assert_eq!(pick(&["gzip;q=1.0, br;q=0.5"]), Some(Coding::Gzip));
        assert_eq!(pick(&["br;q=0.001, gzip;q=0.002"]), Some(Coding::Gzip));
        assert_eq!(pick(&["GZIP"]), Some(Coding::Gzip));
        assert_eq!(pick(&["x-gzip"]), Some(Coding::Gzip));
        assert_eq!(
            pick(&["deflate", "gzip"]),
            Some(Coding::Gzip),
            "fields combine"
        );
        assert_eq!(pick(&["*"]), Some(Coding::Br));
        assert_eq!(
            pick(&["*;q=0.5, br;q=0.1"]),
            Some(Coding::Gzip),
            "named beats *"
        );
        assert_eq!(
            negotiate(&fields(&["br, gzip"]), &[Coding::Gzip]),
            Some(Coding::Gzip)
        );
    }

    #[test]
    fn refusals_and_absence_mean_identity() {
        assert_eq!(negotiate(&[], &BOTH), None, "no field: not asked");
        assert_eq!(pick(&[""]), None, "empty: identity only");
        assert_eq!(pick(&["identity"]), None);
        assert_eq!(pick(&["gzip;q=0, br;q=0"]), None);
        assert_eq!(pick(&["*;q=0"]), None);
        assert_eq!(pick(&["br;q=0, *"]), Some(Coding::Gzip));
        assert_eq!(
            pick(&["identity;q=0"]),
            None,
            "nothing else offered by the client"
        );
        assert_eq!(pick(&["gzip, identity;q=0"]), Some(Coding::Gzip));
    }

    #[test]
    fn malformed_is_absent() {
        for bad in [
            "gzip;q=2",
            "gzip;q=0.5555",
            "gzip;q=",
            "gzip;q=abc",
            "gz ip",
            "gzip;q",
            ";q=1",
            "gzip;q=1.5",
        ] {
            assert_eq!(pick(&[bad]), None, "{bad}");
        }
        assert_eq!(
            pick(&["gzip ; q=0.8 , br ; q = 0.9"]),
            None,
            "spaces around = are not allowed"
        );
        assert_eq!(pick(&["gzip ;q=0.8, br;q=0.9 "]), Some(Coding::Br));
        assert_eq!(
            pick(&["gzip;level=1"]),
            Some(Coding::Gzip),
            "other parameters ignored"
        );
    }

    fn decode(coding: Coding, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                // A decoder that stops at what it has: a flushed prefix decodes whole.
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(bytes).unwrap();
                d.flush().unwrap();
                out = d.get_ref().clone();
            }
            Coding::Br => {
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                d.write_all(bytes).unwrap();
                d.flush().unwrap();
                out.extend_from_slice(d.get_ref());
            }
        }
        out
    }

    #[test]
    fn a_flushed_prefix_decodes_whole_and_the_end_round_trips() {
        let text: Vec<u8> = b"data: event number one\n\n".repeat(40);
        for coding in BOTH {
            let mut enc = Encoder::new(coding, 5, Vec::new());
            enc.write_all(&text).unwrap();
            enc.flush().unwrap();
            let so_far = enc.inner_bytes().to_vec();
            assert_eq!(decode(coding, &so_far), text, "{coding:?} after a flush");
            enc.write_all(b"last").unwrap();
            let all = enc.finish().unwrap();
            assert!(
                all.len() < text.len() / 4,
                "{coding:?} compressed {}",
                all.len()
            );
            let mut whole = Vec::new();
            match coding {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&all[..])
                        .read_to_end(&mut whole)
                        .unwrap();
                }
                Coding::Br => {
                    brotli::Decompressor::new(&all[..], 4096)
                        .read_to_end(&mut whole)
                        .unwrap();
                }
            }
            assert_eq!(whole, [&text[..], b"last"].concat());
        }
    }

    impl Encoder<Vec<u8>> {
        fn inner_bytes(&self) -> &[u8] {
            match &self.inner {
                Inner::Gzip(gz) => gz.get_ref(),
                Inner::Br(br) => br.get_ref(),
            }
        }
    }
}
