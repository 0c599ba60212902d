//! gzip layers as a series of independent members, each of which says its own size in
//! its header (the mgzip framing: an `IG` subfield of FEXTRA). Any gzip reader reads
//! such a layer (RFC 1952 allows many members); surge reads it faster, because a member
//! of known size can be inflated in one call by libdeflate, about 1.5× the speed of a
//! streaming inflater on weights. `surge modelcar build` writes its gzip layers so.
//!
//! [`MemberReader`] takes any gzip stream: it inflates framed members whole and, from
//! the first member that is not framed (or is larger than [`MAX_MEMBER`]), falls back
//! to streaming for the rest of the layer.

use std::io::{BufRead, Chain, Cursor, Read, Write};

use libdeflater::{CompressionLvl, Compressor, Crc, DecompressionError, Decompressor};

/// The uncompressed bytes of one member that `surge modelcar build` writes: at most the
/// unpacker's read size, so that most members inflate straight into its buffer.
pub const MEMBER_BYTES: usize = super::unpack::COPY_BUFFER;
/// The largest member inflated whole (compressed or not); larger ones are streamed.
pub const MAX_MEMBER: usize = 64 << 20;

/// libdeflate's level 1: on bf16-like weights as small as miniz's fastest (0.80).
/// (`CompressionLvl::fastest()` is level 0, which stores without compressing.)
const LEVEL: CompressionLvl = match CompressionLvl::new(1) {
    Ok(level) => level,
    Err(_) => panic!("libdeflate has level 1"),
};
const HEADER_LEN: usize = 20;
const TRAILER_LEN: usize = 8;
/// ID1 ID2 CM FLG(FEXTRA) MTIME(4) XFL OS XLEN(8) 'I' 'G' LEN(4); then the member's
/// whole size (u32, little-endian, header and trailer included).
fn header(member_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 4, 255, 8, 0, b'I', b'G', 4, 0, 0, 0, 0, 0,
    ];
    h[16..].copy_from_slice(&member_len.to_le_bytes());
    h
}

/// The member's size, when `h` is a framed member's header.
fn framed_len(h: &[u8; HEADER_LEN]) -> Option<usize> {
    let fixed = h[..4] == [0x1f, 0x8b, 8, 4] && h[10..16] == [8, 0, b'I', b'G', 4, 0];
    let len = u32::from_le_bytes(h[16..].try_into().expect("4 bytes")) as usize;
    (fixed && len >= HEADER_LEN + TRAILER_LEN).then_some(len)
}

/// Writes a gzip stream as framed members of [`MEMBER_BYTES`] each (the last shorter).
pub struct MemberWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
    compressor: Compressor,
    compressed: Vec<u8>,
}

impl<W: Write> MemberWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::with_capacity(MEMBER_BYTES),
            compressor: Compressor::new(LEVEL),
            compressed: Vec::new(),
        }
    }

    /// Writes what is pending as a last member and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if !self.pending.is_empty() {
            self.write_member()?;
        }
        Ok(self.inner)
    }

    fn write_member(&mut self) -> std::io::Result<()> {
        let bound = self.compressor.deflate_compress_bound(self.pending.len());
        self.compressed.resize(bound, 0);
        let n = self
            .compressor
            .deflate_compress(&self.pending, &mut self.compressed)
            .map_err(std::io::Error::other)?;
        let member_len = u32::try_from(HEADER_LEN + n + TRAILER_LEN)
            .map_err(|_| std::io::Error::other("a gzip member over 4 GiB"))?;
        let mut crc = Crc::new();
        crc.update(&self.pending);
        self.inner.write_all(&header(member_len))?;
        self.inner.write_all(&self.compressed[..n])?;
        self.inner.write_all(&crc.sum().to_le_bytes())?;
        self.inner
            .write_all(&(self.pending.len() as u32).to_le_bytes())?;
        self.pending.clear();
        Ok(())
    }
}

impl<W: Write> Write for MemberWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(MEMBER_BYTES - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == MEMBER_BYTES {
            self.write_member()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Inflates a gzip stream: framed members whole, anything else streaming.
pub struct MemberReader<R: BufRead> {
    state: State<R>,
    decompressor: Decompressor,
    member: Vec<u8>,
    out: Vec<u8>,
    at: usize,
}

enum State<R: BufRead> {
    Framed(R),
    Streaming(Box<flate2::bufread::MultiGzDecoder<Chain<Cursor<Vec<u8>>, R>>>),
    /// Between states, or after an error.
    Taken,
}

impl<R: BufRead> MemberReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            state: State::Framed(inner),
            decompressor: Decompressor::new(),
            member: Vec::new(),
            out: Vec::new(),
            at: 0,
        }
    }

    /// Reads the next framed member into `member`; `None` at the end of the stream, or
    /// once streaming has taken over.
    fn read_member(&mut self) -> std::io::Result<Option<Member>> {
        let State::Framed(mut inner) = std::mem::replace(&mut self.state, State::Taken) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN];
        let got = read_up_to(&mut inner, &mut h)?;
        if got == 0 {
            return Ok(None);
        }
        let len = (got == HEADER_LEN)
            .then(|| framed_len(&h))
            .flatten()
            .filter(|&len| len <= MAX_MEMBER);
        let Some(len) = len else {
            self.stream_from(h[..got].to_vec(), inner);
            return Ok(None);
        };
        if self.member.len() < len {
            self.member.resize(len, 0);
        }
        let member = &mut self.member[..len];
        member[..HEADER_LEN].copy_from_slice(&h);
        inner.read_exact(&mut member[HEADER_LEN..])?;
        let trailer = &member[len - TRAILER_LEN..];
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) as usize;
        if size > MAX_MEMBER {
            let read = member.to_vec();
            self.stream_from(read, inner);
            return Ok(None);
        }
        self.state = State::Framed(inner);
        Ok(Some(Member { len, crc, size }))
    }

    /// Streams the rest of the layer, starting with `read` (bytes already taken from it).
    fn stream_from(&mut self, read: Vec<u8>, inner: R) {
        let rest = Cursor::new(read).chain(inner);
        self.state = State::Streaming(Box::new(flate2::bufread::MultiGzDecoder::new(rest)));
    }
}

impl<R: BufRead> Read for MemberReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < self.out.len() {
                let n = buf.len().min(self.out.len() - self.at);
                buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if let State::Streaming(stream) = &mut self.state {
                return stream.read(buf);
            }
            let Some(m) = self.read_member()? else {
                if matches!(self.state, State::Streaming(_)) {
                    continue;
                }
                return Ok(0);
            };
            let deflated = &self.member[HEADER_LEN..m.len - TRAILER_LEN];
            if m.size <= buf.len() {
                // Straight into the caller's buffer, saving a copy.
                inflate(&mut self.decompressor, deflated, &mut buf[..m.size], m.crc)?;
                if m.size > 0 {
                    return Ok(m.size);
                }
                continue;
            }
            self.out.resize(m.size, 0);
            self.at = 0;
            inflate(&mut self.decompressor, deflated, &mut self.out, m.crc)?;
        }
    }
}

/// A framed member read into [`MemberReader::member`].
struct Member {
    /// Its length, header and trailer included.
    len: usize,
    crc: u32,
    /// Its inflated size.
    size: usize,
}

/// Inflates `deflated` into exactly `out` and checks it against the member's CRC-32.
fn inflate(
    decompressor: &mut Decompressor,
    deflated: &[u8],
    out: &mut [u8],
    crc: u32,
) -> std::io::Result<()> {
    let n = decompressor
        .deflate_decompress(deflated, out)
        .map_err(|e| invalid(inflate_error(e)))?;
    if n != out.len() {
        return Err(invalid(format!(
            "a gzip member inflated to {n} bytes, its trailer says {}",
            out.len()
        )));
    }
    let mut check = Crc::new();
    check.update(out);
    if check.sum() != crc {
        return Err(invalid("a gzip member fails its CRC-32 check".to_string()));
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn inflate_error(e: DecompressionError) -> String {
    match e {
        DecompressionError::BadData => "corrupt deflate data in a gzip member".to_string(),
        DecompressionError::InsufficientSpace => {
            "a gzip member inflates to more than its trailer says".to_string()
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
#[path = "gzip_members/tests.rs"]
mod tests;
