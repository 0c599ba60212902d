//! Raw HTTP/1.1 over a TcpStream: what reqwest will not do (half a header, a short body,
//! a head of an exact size) and reading until the server closes the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any raw-socket read in these tests waits before the test fails.
const SOCKET_LIMIT: Duration = Duration::from_secs(30);

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(SOCKET_LIMIT)).unwrap();
    stream.set_write_timeout(Some(SOCKET_LIMIT)).unwrap();
    stream
}

/// Reads until the server closes the connection (EOF or reset); panics when it stays
/// open past `SOCKET_LIMIT`. Returns what was read.
pub fn assert_closed(mut stream: TcpStream, what: &str) -> Vec<u8> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return seen,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                assert!(seen.len() < 1 << 20, "{what}: endless answer");
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return seen,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{what}: the connection is still open after {:?}",
                    started.elapsed()
                )
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One HTTP/1.1 answer read off a raw socket: status, head and body (Content-Length).
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub fn read_reply(stream: &mut TcpStream, what: &str) -> RawReply {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: reading the answer: {e}"));
        assert!(n > 0, "{what}: closed before a whole answer head: {data:?}");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        assert!(n > 0, "{what}: closed in the body");
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).to_string();
    RawReply { status, head, body }
}

/// A GET /health head of exactly `size` bytes with `count` header lines.
pub fn health_head(size: usize, count: usize) -> Vec<u8> {
    assert!(count >= 3);
    let mut head = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".to_string();
    for i in 0..count - 3 {
        head.push_str(&format!("X-Extra-{i}: {i}\r\n"));
    }
    let fixed = head.len() + "X-Pad: \r\n\r\n".len();
    assert!(size >= fixed, "{size} bytes cannot hold {count} headers");
    head.push_str(&format!("X-Pad: {}\r\n\r\n", "p".repeat(size - fixed)));
    assert_eq!(head.len(), size);
    head.into_bytes()
}

/// Sends `head` on a new connection; the answer's status, or `None` when the server
/// closed the connection without one.
pub fn send_head(addr: SocketAddr, head: &[u8], what: &str) -> Option<u16> {
    let mut stream = connect(addr);
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head);
    let seen = assert_closed(stream, what);
    let text = String::from_utf8_lossy(&seen);
    text.split_whitespace().nth(1)?.parse().ok()
}
