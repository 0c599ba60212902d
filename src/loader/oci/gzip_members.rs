//! gzip layers as a series of independent members, each of which says its own size in
//! its header (the mgzip framing: an `IG` subfield of FEXTRA). Any gzip reader reads
//! such a layer (RFC 1952 allows many members); surge reads it faster, because a member
//! of known size can be inflated in one call by libdeflate, about 1.5× the speed of a
//! streaming inflater on weights. `surge modelcar build` writes its gzip layers so.
//!
//! [`MemberReader`] takes any gzip stream: it inflates framed members whole (on several
//! threads when it is given them) and, from the first member that is not framed (or is
//! larger than [`MAX_MEMBER`]), falls back to streaming for the rest of the layer.

mod pool;
mod reader;

use std::io::Write;

use libdeflater::{CompressionLvl, Compressor, Crc};

pub use reader::MemberReader;

/// The uncompressed bytes of one member that `surge modelcar build` writes: at most the
/// unpacker's read size, so that most members inflate straight into its buffer.
pub const MEMBER_BYTES: usize = super::unpack::COPY_BUFFER;
/// The largest member inflated whole (compressed or not); larger ones are streamed. It
/// bounds what a layer holds in memory: a pool keeps 2 members per thread in flight.
pub const MAX_MEMBER: usize = 8 << 20;

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

#[cfg(test)]
#[path = "gzip_members/tests.rs"]
mod tests;
