//! [`MemberReader`]: a gzip stream's framed members inflated whole, on the reading thread
//! or on a pool; anything else streamed.

use std::io::{BufRead, Chain, Cursor, Read};

use libdeflater::{Crc, DecompressionError, Decompressor};

use super::pool::InflatePool;
use super::{framed_len, HEADER_LEN, MAX_MEMBER, TRAILER_LEN};

/// Inflates a gzip stream: framed members whole, anything else streaming.
pub struct MemberReader<R: BufRead> {
    source: Source<R>,
    inflater: Inflater,
    /// Inflated bytes not yet read, from `at` on.
    out: Vec<u8>,
    at: usize,
}

enum Inflater {
    /// On the reading thread, straight into the caller's buffer when the member fits.
    Inline(Decompressor),
    /// On a pool, several members in flight.
    Pool(InflatePool),
}

impl<R: BufRead> MemberReader<R> {
    /// Inflates on the reading thread.
    pub fn new(inner: R) -> Self {
        Self::with_threads(inner, 1)
    }

    /// Inflates framed members on `threads` threads (on the reading thread when 1).
    pub fn with_threads(inner: R, threads: usize) -> Self {
        let inflater = if threads > 1 {
            Inflater::Pool(InflatePool::new(threads))
        } else {
            Inflater::Inline(Decompressor::new())
        };
        Self {
            source: Source {
                state: State::Framed(inner),
                member: Vec::new(),
            },
            inflater,
            out: Vec::new(),
            at: 0,
        }
    }

    #[cfg(test)]
    pub(super) fn is_streaming(&self) -> bool {
        matches!(self.source.state, State::Streaming(_))
    }

    #[cfg(test)]
    pub(super) fn has_inflated(&self) -> bool {
        !self.out.is_empty()
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
            let next = match &mut self.inflater {
                Inflater::Inline(decompressor) => {
                    let Some(m) = self.source.read_member()? else {
                        return self.source.read_streaming(buf);
                    };
                    let deflated = deflated(&self.source.member, &m);
                    if m.size <= buf.len() {
                        // Straight into the caller's buffer, saving a copy.
                        inflate(decompressor, deflated, &mut buf[..m.size], m.crc)?;
                        if m.size > 0 {
                            return Ok(m.size);
                        }
                        continue;
                    }
                    let mut out = std::mem::take(&mut self.out);
                    out.resize(m.size, 0);
                    inflate(decompressor, deflated, &mut out, m.crc)?;
                    out
                }
                Inflater::Pool(pool) => {
                    while pool.has_room() {
                        let Some(m) = self.source.read_member()? else {
                            break;
                        };
                        pool.submit(&mut self.source.member, m);
                    }
                    // In order; the streamed rest only once every member before it is out.
                    let Some(out) = pool.next()? else {
                        return self.source.read_streaming(buf);
                    };
                    pool.recycle(std::mem::replace(&mut self.out, out));
                    self.at = 0;
                    continue;
                }
            };
            self.out = next;
            self.at = 0;
        }
    }
}

/// The compressed side: the stream, and the last framed member read from it.
struct Source<R: BufRead> {
    state: State<R>,
    /// The last member read, header and trailer included (the buffer may be longer).
    member: Vec<u8>,
}

enum State<R: BufRead> {
    Framed(R),
    Streaming(Box<flate2::bufread::MultiGzDecoder<Chain<Cursor<Vec<u8>>, R>>>),
    /// Between states, at the end, or after an error.
    Taken,
}

/// A framed member read into [`Source::member`].
pub(super) struct Member {
    /// Its length, header and trailer included.
    pub len: usize,
    pub crc: u32,
    /// Its inflated size.
    pub size: usize,
}

impl<R: BufRead> Source<R> {
    /// Reads the next framed member into `member`; `None` at the end of the stream, or
    /// once streaming has taken over.
    fn read_member(&mut self) -> std::io::Result<Option<Member>> {
        let mut inner = match std::mem::replace(&mut self.state, State::Taken) {
            State::Framed(inner) => inner,
            other => {
                self.state = other;
                return Ok(None);
            }
        };
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&mut inner)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)?;
        if head.is_empty() {
            return Ok(None);
        }
        let h: Option<[u8; HEADER_LEN]> = head.as_slice().try_into().ok();
        let len = h.and_then(|h| framed_len(&h).filter(|&len| len <= MAX_MEMBER));
        let (Some(h), Some(len)) = (h, len) else {
            self.stream_from(head, inner);
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

    /// Reads from the streamed rest; 0 at the end (or when nothing is streamed).
    fn read_streaming(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.state {
            State::Streaming(stream) => stream.read(buf),
            _ => Ok(0),
        }
    }
}

/// The deflate data of member `m`, held in `member`.
pub(super) fn deflated<'a>(member: &'a [u8], m: &Member) -> &'a [u8] {
    &member[HEADER_LEN..m.len - TRAILER_LEN]
}

/// Inflates `deflated` into exactly `out` and checks it against the member's CRC-32.
pub(super) fn inflate(
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

fn inflate_error(e: DecompressionError) -> String {
    match e {
        DecompressionError::BadData => "corrupt deflate data in a gzip member".to_string(),
        DecompressionError::InsufficientSpace => {
            "a gzip member inflates to more than its trailer says".to_string()
        }
    }
}

pub(super) fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
