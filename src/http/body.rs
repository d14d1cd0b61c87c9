//! Message bodies: read in one framing, written in another, through the
//! reader's fixed buffer, so a body of any size passes in constant memory.
//!
//! Chunked bodies are decoded and re-encoded rather than copied blindly:
//! what pibl sends is always framed by pibl, so a peer's odd chunk
//! extensions or trailers never reach the other side (RFC 9112 §7.1).

use std::io::{self, Read, Write};

use crate::http::Framing;
use crate::http::wire::{Reader, invalid, write_all_vectored};

/// Longest chunk-size line, extensions included, and longest trailer line.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer fields read (and dropped) after the last chunk.
const MAX_TRAILERS: usize = 64;
/// Bytes of small writes held to go out together in a chunked copy:
/// chunk-size lines, CRLFs and small chunks, which one by one cost a
/// system call each (three for each chunk passed on).
const HOLD: usize = 8192;

/// Which side a body copy failed on.
#[derive(Debug)]
pub enum CopyError {
    /// Reading from the source, or its framing was invalid (InvalidData).
    Read(io::Error),
    /// As `Read`, but before the head given to `relay_tapped` went out
    /// with the first body bytes: the destination has seen nothing, and
    /// may still be given an error answer instead.
    HeadUnsent(io::Error),
    /// Writing to the destination.
    Write(io::Error),
}

/// The error itself, whichever side it was on, for callers to whom the
/// side does not matter.
impl From<CopyError> for io::Error {
    fn from(e: CopyError) -> io::Error {
        match e {
            CopyError::Read(e) | CopyError::HeadUnsent(e) | CopyError::Write(e) => e,
        }
    }
}

/// How the copy delimits what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// The bytes as they are (Content-Length, or the end of the connection).
    Plain,
    /// Chunked transfer coding.
    Chunked,
}

/// Copies one body framed as `framing` from `src` to `dst`, encoded as
/// `encode`.  Returns the number of payload bytes.  A chunked body longer
/// than `limit` bytes (0: no limit) is a read error of kind FileTooLarge.
pub fn relay<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut W,
    framing: Framing,
    encode: Encode,
    limit: u64,
) -> Result<u64, CopyError> {
    relay_tapped(src, dst, &[], framing, encode, limit, None)
}

/// `relay`, first writing `head` (a response head) together with the first
/// body bytes, in one writev(2), and also writing every payload byte
/// (decoded, unframed) to `tap`: how the cache keeps a copy of a body on
/// its way to the client.  A read error before any body byte came is
/// `HeadUnsent`: the head has not been written either.
pub fn relay_tapped<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut W,
    head: &[u8],
    framing: Framing,
    encode: Encode,
    limit: u64,
    tap: Option<&mut dyn Write>,
) -> Result<u64, CopyError> {
    let limit = if limit == 0 { u64::MAX } else { limit };
    // Other copies move the reader's buffer whole, and hold nothing.
    let holds = framing == Framing::Chunked || encode == Encode::Chunked;
    let mut out = Out {
        dst,
        tap,
        head,
        held: if holds {
            Vec::with_capacity(HOLD)
        } else {
            Vec::new()
        },
    };
    let copied = match framing {
        Framing::Empty => Ok(0),
        Framing::Length(n) => copy_exact(src, &mut out, n, encode),
        Framing::Chunked => copy_chunked(src, &mut out, encode, limit),
        Framing::UntilClose => copy_until_close(src, &mut out, encode),
    };
    let sent = match copied {
        Err(CopyError::Read(e)) if !out.head.is_empty() => return Err(CopyError::HeadUnsent(e)),
        copied => copied?,
    };
    if encode == Encode::Chunked && framing != Framing::Empty {
        out.send(&[b"0\r\n\r\n"])?;
    }
    out.flush()?;
    Ok(sent)
}

/// A destination that passes on only the bytes at offsets `range` of what
/// is written to it, and drops the rest: a 206's part of a whole body that
/// flows past on its way into the cache.
pub struct Window<W> {
    inner: W,
    range: std::ops::Range<u64>,
    /// Offset of the next byte written.
    at: u64,
}

impl<W: Write> Window<W> {
    pub fn new(inner: W, range: std::ops::Range<u64>) -> Window<W> {
        Window {
            inner,
            range,
            at: 0,
        }
    }
}

impl<W: Write> Write for Window<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.at + buf.len() as u64;
        let from = self.range.start.clamp(self.at, end);
        let to = self.range.end.clamp(self.at, end);
        if from < to {
            let slice = (from - self.at) as usize..(to - self.at) as usize;
            self.inner.write_all(&buf[slice])?;
        }
        self.at = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The destination of a copy, the optional tap beside it, what is still
/// to be written before the body, and, in a chunked copy, small writes
/// held to go with the next (`HOLD`).  Whatever is held goes out before
/// the copy waits for its source (`flush_before_waiting`), so holding
/// never delays a byte.
struct Out<'a, 'b, 'h, W> {
    dst: &'a mut W,
    tap: Option<&'b mut dyn Write>,
    head: &'h [u8],
    /// Its capacity is what may be held: none outside chunked copies.
    held: Vec<u8>,
}

impl<W: Write> Out<'_, '_, '_, W> {
    /// Writes `parts` (at most four), after the head if it is not out yet
    /// and what is held; or holds them, if they fit.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), CopyError> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        if self.held.len() + size <= self.held.capacity() {
            parts
                .iter()
                .for_each(|part| self.held.extend_from_slice(part));
            return Ok(());
        }
        let mut all: [&[u8]; 6] = [self.head, &self.held, &[], &[], &[], &[]];
        all[2..2 + parts.len()].copy_from_slice(parts);
        write_all_vectored(self.dst, &all[..2 + parts.len()]).map_err(CopyError::Write)?;
        self.head = &[];
        self.held.clear();
        Ok(())
    }

    /// Writes the head, if it is not out yet, and what is held.
    fn flush(&mut self) -> Result<(), CopyError> {
        if self.head.is_empty() && self.held.is_empty() {
            return Ok(());
        }
        write_all_vectored(self.dst, &[self.head, &self.held]).map_err(CopyError::Write)?;
        self.head = &[];
        self.held.clear();
        Ok(())
    }

    /// Flushes what is held when reading `src` for what comes next —
    /// `line`, or any bytes — might wait: held bytes go out as soon as the
    /// source has nothing more to go with them.  A head with no body byte
    /// yet keeps waiting for one, as in every copy: so that a body that
    /// fails before its first byte can still be answered (`HeadUnsent`).
    fn flush_before_waiting<R: Read>(
        &mut self,
        src: &Reader<R>,
        line: bool,
    ) -> Result<(), CopyError> {
        let ready = if line {
            src.buffered().contains(&b'\n')
        } else {
            !src.buffered().is_empty()
        };
        if ready || self.held.is_empty() {
            return Ok(());
        }
        self.flush()
    }
}

/// Writes `data` once, as one chunk if `encode` asks for it.
fn emit<W: Write>(
    out: &mut Out<'_, '_, '_, W>,
    data: &[u8],
    encode: Encode,
) -> Result<(), CopyError> {
    if let Some(tap) = out.tap.as_mut() {
        let _ = tap.write_all(data);
    }
    match encode {
        Encode::Plain => out.send(&[data]),
        Encode::Chunked => {
            let mut size = [0u8; 18];
            out.send(&[chunk_size_line(data.len() as u64, &mut size), data, b"\r\n"])
        }
    }
}

/// `SIZE CRLF` in hex, formatted into `buf` without allocating.
fn chunk_size_line(size: u64, buf: &mut [u8; 18]) -> &[u8] {
    let digits = (16 - size.leading_zeros() as usize / 4).max(1);
    for (i, b) in buf[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    &buf[..digits + 2]
}

fn copy_exact<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut Out<'_, '_, '_, W>,
    len: u64,
    encode: Encode,
) -> Result<u64, CopyError> {
    let mut left = len;
    while left > 0 {
        dst.flush_before_waiting(src, false)?;
        if !src.fill_some().map_err(CopyError::Read)? {
            return Err(CopyError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        let take = src
            .buffered()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        emit(dst, &src.buffered()[..take], encode)?;
        src.consume(take);
        left -= take as u64;
    }
    Ok(len)
}

fn copy_until_close<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut Out<'_, '_, '_, W>,
    encode: Encode,
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    while {
        dst.flush_before_waiting(src, false)?;
        src.fill_some().map_err(CopyError::Read)?
    } {
        let n = src.buffered().len();
        emit(dst, src.buffered(), encode)?;
        src.consume(n);
        total += n as u64;
    }
    Ok(total)
}

fn copy_chunked<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut Out<'_, '_, '_, W>,
    encode: Encode,
    limit: u64,
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        dst.flush_before_waiting(src, true)?;
        let line = src.line(MAX_CHUNK_LINE).map_err(CopyError::Read)?;
        let size = parse_chunk_size(&src.buffered()[..line - 2]).map_err(CopyError::Read)?;
        src.consume(line);
        if total.saturating_add(size) > limit {
            return Err(CopyError::Read(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "body larger than max_body",
            )));
        }
        if size == 0 {
            skip_trailers(src, dst)?;
            return Ok(total);
        }
        if encode == Encode::Chunked {
            let mut line = [0u8; 18];
            dst.send(&[chunk_size_line(size, &mut line)])?;
        }
        copy_exact(src, dst, size, Encode::Plain)?;
        dst.flush_before_waiting(src, true)?;
        let end = src.line(2).map_err(CopyError::Read)?;
        if end != 2 {
            return Err(CopyError::Read(invalid("chunk data longer than its size")));
        }
        src.consume(2);
        if encode == Encode::Chunked {
            dst.send(&[b"\r\n"])?;
        }
        total += size;
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, then nothing or
/// extensions after optional blanks and a `;`.  Extensions are dropped.
pub fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(invalid("bad chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(invalid("bad chunk size"));
    }
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(invalid("control character in chunk extension"));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| invalid("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("bad chunk size"))
}

/// Reads the trailer section up to its empty line; pibl forwards no
/// trailer fields.
fn skip_trailers<R: Read, W: Write>(
    src: &mut Reader<R>,
    dst: &mut Out<'_, '_, '_, W>,
) -> Result<(), CopyError> {
    for _ in 0..=MAX_TRAILERS {
        dst.flush_before_waiting(src, true)?;
        let line = src.line(MAX_CHUNK_LINE).map_err(CopyError::Read)?;
        src.consume(line);
        if line == 2 {
            return Ok(());
        }
    }
    Err(CopyError::Read(invalid("too many trailer fields")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_passes_its_range_whatever_the_writes() {
        let body: Vec<u8> = (0..100u8).collect();
        for step in [1, 7, 30, 100] {
            let mut out = Vec::new();
            let mut window = Window::new(&mut out, 25..60);
            for piece in body.chunks(step) {
                assert_eq!(window.write(piece).unwrap(), piece.len());
            }
            assert_eq!(out, &body[25..60], "writes of {step}");
        }
    }

    fn run(input: &[u8], framing: Framing, encode: Encode) -> Result<(Vec<u8>, u64), CopyError> {
        // A small buffer, so bodies cross many refills.
        let mut src =
            Reader::with_capacity(input, if framing == Framing::Chunked { 16 } else { 7 });
        let mut out = Vec::new();
        let n = relay(&mut src, &mut out, framing, encode, 0)?;
        Ok((out, n))
    }

    #[test]
    fn chunked_is_decoded_and_reencoded() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (plain, n) = run(input, Framing::Chunked, Encode::Plain).unwrap();
        assert_eq!((plain.as_slice(), n), (&b"hello world"[..], 11));
        let (chunked, _) = run(input, Framing::Chunked, Encode::Chunked).unwrap();
        assert_eq!(chunked, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }

    #[test]
    fn length_and_close_framings() {
        let (out, n) = run(b"abcdefghijXYZ", Framing::Length(10), Encode::Plain).unwrap();
        assert_eq!((out.as_slice(), n), (&b"abcdefghij"[..], 10));
        let (out, _) = run(b"abcdefghij", Framing::UntilClose, Encode::Chunked).unwrap();
        assert_eq!(out, b"7\r\nabcdefg\r\n3\r\nhij\r\n0\r\n\r\n");
        assert!(matches!(
            run(b"abc", Framing::Length(10), Encode::Plain),
            Err(CopyError::Read(_))
        ));
    }

    /// Counts write calls: the head must leave with the first body bytes.
    struct Writes(Vec<Vec<u8>>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.push(b.to_vec());
            Ok(b.len())
        }
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.0
                .push(bufs.iter().flat_map(|b| b.iter().copied()).collect());
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn head_goes_out_with_the_first_body_bytes() {
        let cases: [(&[u8], Framing, Encode, &[u8]); 3] = [
            (b"hello", Framing::Length(5), Encode::Plain, b"HEADhello"),
            (
                b"hello",
                Framing::UntilClose,
                Encode::Chunked,
                b"HEAD5\r\nhello\r\n",
            ),
            (b"", Framing::Empty, Encode::Plain, b"HEAD"),
        ];
        for (input, framing, encode, first) in cases {
            let mut src = Reader::with_capacity(input, 64);
            let mut out = Writes(Vec::new());
            relay_tapped(&mut src, &mut out, b"HEAD", framing, encode, 0, None).unwrap();
            assert_eq!(out.0[0], first, "{framing:?}");
        }
    }

    #[test]
    fn small_chunks_go_out_together() {
        let mut input = b"1\r\nx\r\n".repeat(1000);
        input.extend_from_slice(b"0\r\n\r\n");
        let mut src = Reader::with_capacity(&input[..], 1 << 16);
        let mut out = Writes(Vec::new());
        relay_tapped(
            &mut src,
            &mut out,
            b"HEAD",
            Framing::Chunked,
            Encode::Chunked,
            0,
            None,
        )
        .unwrap();
        // A write for each read (the reader's window grows from 4 KiB),
        // not three for each chunk.
        assert!(out.0.len() <= 3, "{} writes", out.0.len());
        assert_eq!(out.0.concat(), [&b"HEAD"[..], &input].concat());
    }

    /// Gives one piece per read, and notes how many bytes had been
    /// written when each read was asked for.
    struct Pieces<'a> {
        pieces: std::collections::VecDeque<&'a [u8]>,
        written: std::rc::Rc<std::cell::Cell<usize>>,
        seen: Vec<usize>,
    }
    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.seen.push(self.written.get());
            let piece = self.pieces.pop_front().unwrap_or_default();
            buf[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        }
    }
    struct Counted(std::rc::Rc<std::cell::Cell<usize>>);
    impl Write for Counted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.set(self.0.get() + b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn what_is_held_goes_out_before_the_source_is_waited_for() {
        let written = std::rc::Rc::new(std::cell::Cell::new(0));
        let pieces = [&b"5\r\nhello\r\n"[..], b"5\r\nworld\r\n", b"0\r\n\r\n"];
        let source = Pieces {
            pieces: pieces.into_iter().collect(),
            written: written.clone(),
            seen: Vec::new(),
        };
        let mut src = Reader::with_capacity(source, 64);
        let mut out = Counted(written.clone());
        relay_tapped(
            &mut src,
            &mut out,
            b"HEAD",
            Framing::Chunked,
            Encode::Plain,
            0,
            None,
        )
        .unwrap();
        // Before the second read "HEADhello" was out, before the third
        // "world" too; the end needed no more reads.
        assert_eq!(src.get_ref().seen, [0, 9, 14]);
        assert_eq!(written.get(), 14);
    }

    #[test]
    fn chunk_size_lines() {
        for size in [0u64, 1, 0xf, 0x10, 0xabc, 0x1_0000, u64::MAX] {
            let mut buf = [0u8; 18];
            assert_eq!(
                chunk_size_line(size, &mut buf),
                format!("{size:x}\r\n").as_bytes()
            );
        }
    }

    #[test]
    fn chunked_limit() {
        let mut src = Reader::with_capacity(&b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..], 64);
        let err = relay(
            &mut src,
            &mut Vec::new(),
            Framing::Chunked,
            Encode::Plain,
            10,
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::Read(e) if e.kind() == io::ErrorKind::FileTooLarge));
    }

    #[test]
    fn bad_chunks_are_read_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\nhello\n0\n\n",
            b"-5\r\nhello\r\n",
        ] {
            assert!(
                matches!(
                    run(bad, Framing::Chunked, Encode::Plain),
                    Err(CopyError::Read(_))
                ),
                "{bad:?}"
            );
        }
    }
}
