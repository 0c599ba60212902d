//! An incremental server-sent-events parser: bytes in as they arrive, `data` payloads out.

/// One complete SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The event's data lines, joined with `\n`.
    Data(String),
    /// `data: [DONE]`, OpenAI's end of stream.
    Done,
}

/// Splits a byte stream into events. Handles `\n`, `\r\n` and `\r` line ends, lines and
/// multi-byte characters cut across reads, comments (`: keep-alive`), fields other than
/// `data` (ignored, as the SSE spec says) and multi-line data.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    /// The last byte seen was `\r`: a `\n` right after it ends nothing new.
    after_cr: bool,
}

/// No event may grow past this (a server that never ends a line).
pub const MAX_EVENT_BYTES: usize = 16 << 20;

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds the next bytes; returns the events they complete. Errs when one event
    /// grows past `MAX_EVENT_BYTES`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut events = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.end_line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.line.push(b);
                    let pending = self.data.as_ref().map_or(0, String::len);
                    if self.line.len() + pending > MAX_EVENT_BYTES {
                        return Err(format!("an SSE event longer than {MAX_EVENT_BYTES} bytes"));
                    }
                }
            }
        }
        Ok(events)
    }

    fn end_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(if data == "[DONE]" {
                SseEvent::Done
            } else {
                SseEvent::Data(data)
            });
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            out.extend(p.feed(chunk).unwrap());
        }
        out
    }

    #[test]
    fn parses_openai_streams_cut_anywhere() {
        let input = "data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\"é\"}\r\n\r\nevent: x\nid: 3\ndata: [DONE]\n\n";
        let want = vec![
            SseEvent::Data("{\"a\":1}".into()),
            SseEvent::Data("{\"b\":\"é\"}".into()),
            SseEvent::Done,
        ];
        for piece in 1..input.len() {
            assert_eq!(
                parse_in_pieces(input.as_bytes(), piece),
                want,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn joins_multiline_data_and_accepts_bare_cr() {
        let input = b"data: one\rdata:two\r\rdata\n\n";
        assert_eq!(
            parse_in_pieces(input, 3),
            vec![
                SseEvent::Data("one\ntwo".into()),
                SseEvent::Data(String::new())
            ]
        );
    }

    #[test]
    fn an_unfinished_event_is_not_emitted() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"data: {\"a\":1}\n").unwrap(), vec![]);
        assert_eq!(
            p.feed(b"\n").unwrap(),
            vec![SseEvent::Data("{\"a\":1}".into())]
        );
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(p.feed(&big).is_err());
    }
}
