//! A blob's bytes handed from its download (async) to its unpacker (a blocking thread)
//! while they arrive, so that decompressing and unpacking overlap the download.

use std::io::{BufRead, Read};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Chunks in flight between one download and its unpacker (a few MiB at most).
const CHANNEL_CHUNKS: usize = 256;

/// A channel of chunks: the download's end and the unpacker's end.
pub fn channel() -> (ChunkSender, ChunkReader) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (
        ChunkSender { tx: Some(tx) },
        ChunkReader {
            rx,
            current: Bytes::new(),
        },
    )
}

/// The download's end. Once the reader is gone (the layer is unpacked, or failed) it
/// quietly stops sending: the download still runs to the end to check the digest.
pub struct ChunkSender {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl ChunkSender {
    pub async fn send(&mut self, chunk: Bytes) {
        if let Some(tx) = &self.tx {
            if tx.send(chunk).await.is_err() {
                self.tx = None;
            }
        }
    }
}

/// The unpacker's end: a blocking reader; end of file when the sender is dropped.
pub struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChunkReader {
    /// The first `n` bytes (fewer only when the stream is shorter), without consuming
    /// them: enough to tell the compression by its magic bytes.
    pub fn peek(&mut self, n: usize) -> &[u8] {
        if self.current.len() < n {
            let mut joined = BytesMut::from(&self.current[..]);
            while joined.len() < n {
                match self.rx.blocking_recv() {
                    Some(chunk) => joined.extend_from_slice(&chunk),
                    None => break,
                }
            }
            self.current = joined.freeze();
        }
        &self.current[..n.min(self.current.len())]
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amount: usize) {
        self.current.advance(amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ChunkSender {
        /// [`ChunkSender::send`] from a plain thread.
        fn blocking_send(&mut self, chunk: Bytes) {
            if let Some(tx) = &self.tx {
                if tx.blocking_send(chunk).is_err() {
                    self.tx = None;
                }
            }
        }
    }

    #[test]
    fn the_reader_sees_every_byte_in_order_and_peeks_across_chunks() {
        let (mut tx, mut rx) = channel();
        let sender = std::thread::spawn(move || {
            for chunk in [&b"ab"[..], b"", b"cdef", b"g"] {
                tx.blocking_send(Bytes::copy_from_slice(chunk));
            }
        });
        assert_eq!(rx.peek(4), b"abcd");
        let mut all = Vec::new();
        rx.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefg");
        sender.join().unwrap();
    }

    #[test]
    fn a_sender_outliving_its_reader_stops_sending_without_blocking() {
        let (mut tx, rx) = channel();
        drop(rx);
        for _ in 0..CHANNEL_CHUNKS * 2 {
            tx.blocking_send(Bytes::from_static(b"x"));
        }
        assert!(tx.tx.is_none());
    }
}
