//! The coders of content codings: an encoder that compresses a body as it
//! streams, flushing whole blocks when asked so that what has come so far
//! reaches the client at once, and a decoder for a body a client cannot
//! take in the coding it came in.

use std::io::{self, Write};

use std::cell::RefCell;

use flate2::write::MultiGzDecoder;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::coding::Coding;

/// Brotli's window while compressing on the fly: 256 KiB (2^18), which
/// bounds the encoder's memory.
const BR_WINDOW_BITS: u32 = 18;
/// A stored representation is made once and read many times: a 4 MiB
/// window (2^22, brotli's default) finds more to share.
const BR_STORED_WINDOW_BITS: u32 = 22;
/// The encoder's own output buffer for brotli, and the decoder's.
const BR_BUFFER: usize = 16 * 1024;
/// Levels for a stored representation: gzip's best; brotli's 9, whose
/// ratio is close to 11's at a fraction of its time, since the first
/// client to ask waits for it.
const STORED_GZIP_LEVEL: u32 = 9;
const STORED_BR_LEVEL: u32 = 9;

/// Compresses what is written to it into `W`.  `flush` ends the current
/// block so that the client can decode everything written so far (a sync
/// flush), at some cost in ratio: it is for when the source pauses.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Gzip(Box<Gzip<W>>),
    Br(Box<brotli::CompressorWriter<W>>),
}

impl<W: Write> Encoder<W> {
    /// An encoder for `coding` at `level` (gzip 1–9, brotli 0–11; clamped).
    pub fn new(coding: Coding, level: u32, out: W) -> Encoder<W> {
        Encoder::with_window(coding, level, BR_WINDOW_BITS, out)
    }

    /// An encoder for a representation the cache stores: slower, smaller.
    pub fn for_storage(coding: Coding, out: W) -> Encoder<W> {
        match coding {
            Coding::Gzip => Encoder::new(coding, STORED_GZIP_LEVEL, out),
            Coding::Br => Encoder::with_window(coding, STORED_BR_LEVEL, BR_STORED_WINDOW_BITS, out),
        }
    }

    fn with_window(coding: Coding, level: u32, window: u32, out: W) -> Encoder<W> {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(Box::new(Gzip::new(level.clamp(1, 9), out))),
            Coding::Br => Inner::Br(Box::new(brotli::CompressorWriter::new(
                out,
                BR_BUFFER,
                level.min(11),
                window,
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

/// Most deflate states a thread keeps for reuse.
const KEPT_DEFLATES: usize = 2;

thread_local! {
    /// Deflate states of finished gzip streams, by level, kept for the
    /// next: one holds some 300 KiB, which malloc(3) would map and the
    /// kernel fault in and zero again for every response; a reset one
    /// costs a clear of its hash table.
    static DEFLATES: RefCell<Vec<(u32, Box<Compress>)>> = const { RefCell::new(Vec::new()) };
}

/// Output written at a time by `Gzip`.
const GZIP_OUT: usize = 32 * 1024;

/// A gzip stream (zlib's own header and trailer) into `out`, its deflate
/// state taken from this thread's and given back when it ends.
struct Gzip<W: Write> {
    /// Taken by `finish`.
    out: Option<W>,
    level: u32,
    deflate: Option<Box<Compress>>,
    buf: Vec<u8>,
}

impl<W: Write> Gzip<W> {
    fn new(level: u32, out: W) -> Gzip<W> {
        let kept = DEFLATES.with_borrow_mut(|all| {
            let at = all.iter().position(|(l, _)| *l == level)?;
            Some(all.swap_remove(at).1)
        });
        let deflate =
            kept.unwrap_or_else(|| Box::new(Compress::new_gzip(Compression::new(level), 15)));
        Gzip {
            out: Some(out),
            level,
            deflate: Some(deflate),
            buf: Vec::with_capacity(GZIP_OUT),
        }
    }

    /// Deflates `input` with `flush`, writing what comes out, until the
    /// input is taken and (for a flush or the end) all is out.
    fn pump(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        let deflate = self.deflate.as_mut().expect("a stream not ended");
        let out = self.out.as_mut().expect("a stream not ended");
        loop {
            self.buf.clear();
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut self.buf, flush)
                .map_err(io::Error::other)?;
            input = &input[(deflate.total_in() - before) as usize..];
            if !self.buf.is_empty() {
                out.write_all(&self.buf)?;
            }
            let drained = self.buf.len() < self.buf.capacity();
            let ended = flush != FlushCompress::Finish || status == Status::StreamEnd;
            if input.is_empty() && drained && ended {
                return Ok(());
            }
        }
    }

    fn finish(mut self) -> io::Result<W> {
        self.pump(&[], FlushCompress::Finish)?;
        self.give_back();
        Ok(self.out.take().expect("a stream not ended"))
    }

    /// Gives the deflate state back to this thread, reset, for the next.
    fn give_back(&mut self) {
        if let Some(mut deflate) = self.deflate.take() {
            deflate.reset();
            DEFLATES.with_borrow_mut(|all| {
                if all.len() < KEPT_DEFLATES {
                    all.push((self.level, deflate));
                }
            });
        }
    }
}

impl<W: Write> Write for Gzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pump(buf, FlushCompress::None)?;
        Ok(buf.len())
    }

    /// A sync flush: what was written so far can be decoded.
    fn flush(&mut self) -> io::Result<()> {
        self.pump(&[], FlushCompress::Sync)?;
        self.out.as_mut().expect("a stream not ended").flush()
    }
}

impl<W: Write> Drop for Gzip<W> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Decompresses what is written to it into `W`.  Bytes that are not in
/// the coding fail a write (or `finish`, for a stream cut short) with
/// `InvalidData` or `InvalidInput`; so may `W`'s own errors, which the
/// caller tells apart by asking `W`.
pub struct Decoder<W: Write> {
    inner: DecoderInner<W>,
}

enum DecoderInner<W: Write> {
    // Several gzip members one after the other are one gzip body
    // (RFC 1952 §2.2).
    Gzip(Box<MultiGzDecoder<W>>),
    Br(Box<brotli::DecompressorWriter<W>>),
}

impl<W: Write> Decoder<W> {
    pub fn new(coding: Coding, out: W) -> Decoder<W> {
        let inner = match coding {
            Coding::Gzip => DecoderInner::Gzip(Box::new(MultiGzDecoder::new(out))),
            Coding::Br => {
                DecoderInner::Br(Box::new(brotli::DecompressorWriter::new(out, BR_BUFFER)))
            }
        };
        Decoder { inner }
    }

    pub fn get_ref(&self) -> &W {
        match &self.inner {
            DecoderInner::Gzip(gz) => gz.get_ref(),
            DecoderInner::Br(br) => br.get_ref(),
        }
    }

    /// Checks that the coded stream ended whole (a gzip trailer, brotli's
    /// last block) and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            DecoderInner::Gzip(gz) => gz.finish(),
            DecoderInner::Br(mut br) => {
                br.close()?;
                br.into_inner().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "brotli stream cut short")
                })
            }
        }
    }
}

impl<W: Write> Write for Decoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            DecoderInner::Gzip(gz) => gz.write(buf),
            DecoderInner::Br(br) => br.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            DecoderInner::Gzip(gz) => gz.flush(),
            DecoderInner::Br(br) => br.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const BOTH: [Coding; 2] = [Coding::Br, Coding::Gzip];

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
                Inner::Gzip(gz) => gz.out.as_ref().unwrap(),
                Inner::Br(br) => br.get_ref(),
            }
        }
    }

    fn encoded(coding: Coding, text: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::for_storage(coding, Vec::new());
        enc.write_all(text).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn the_decoder_undoes_the_encoder_in_any_pieces() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("<li>item {i}</li>\n").into_bytes())
            .collect();
        for coding in BOTH {
            let coded = encoded(coding, &text);
            for piece in [1, 7, 4096, coded.len()] {
                let mut dec = Decoder::new(coding, Vec::new());
                for part in coded.chunks(piece) {
                    dec.write_all(part).unwrap();
                }
                assert_eq!(
                    dec.finish().unwrap(),
                    text,
                    "{coding:?} in pieces of {piece}"
                );
            }
        }
        // Two gzip members are one body.
        let two = [
            encoded(Coding::Gzip, b"one "),
            encoded(Coding::Gzip, b"two"),
        ]
        .concat();
        let mut dec = Decoder::new(Coding::Gzip, Vec::new());
        dec.write_all(&two).unwrap();
        assert_eq!(dec.finish().unwrap(), b"one two");
    }

    #[test]
    fn a_reused_deflate_state_starts_each_stream_afresh() {
        // The second stream takes the first's state, left mid-stream by a
        // drop without `finish`: it must still be one whole gzip member.
        let mut cut = Encoder::new(Coding::Gzip, 5, Vec::new());
        cut.write_all(b"left unfinished").unwrap();
        drop(cut);
        for text in [&b"first"[..], b"second, longer than the first"] {
            let coded = {
                let mut enc = Encoder::new(Coding::Gzip, 5, Vec::new());
                enc.write_all(text).unwrap();
                enc.finish().unwrap()
            };
            let mut whole = Vec::new();
            flate2::read::GzDecoder::new(&coded[..])
                .read_to_end(&mut whole)
                .unwrap();
            assert_eq!(whole, text);
        }
    }

    #[test]
    fn what_is_not_in_the_coding_fails() {
        let text = b"not compressed at all, though it says it is".repeat(10);
        for coding in BOTH {
            let mut dec = Decoder::new(coding, Vec::new());
            let failed = dec.write_all(&text).is_err() || dec.finish().is_err();
            assert!(failed, "{coding:?}: plain text decoded");
            // Cut short: all but the last bytes.
            let coded = encoded(coding, &text);
            let mut dec = Decoder::new(coding, Vec::new());
            let failed = dec.write_all(&coded[..coded.len() - 4]).is_err() || dec.finish().is_err();
            assert!(failed, "{coding:?}: a stream cut short decoded");
        }
    }
}
