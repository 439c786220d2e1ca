//! The `text/event-stream` parser: incremental, and bounded per event
//! (its data lines and the newlines joining them) at `MAX_MESSAGE`.

use super::MAX_MESSAGE;

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SseEvent {
    pub(super) event: Option<String>,
    pub(super) data: String,
    pub(super) id: Option<String>,
}

/// An incremental `text/event-stream` parser, bounded per event.
#[derive(Default)]
pub(super) struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    data_lines: usize,
    oversized: bool,
}

impl SseParser {
    /// Feeds bytes; returns the completed events (`None`: one that was too
    /// large and was dropped).
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<Option<SseEvent>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < MAX_MESSAGE {
                    self.line.push(b);
                } else {
                    self.oversized = true;
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                let had_data = self.data_lines > 0 || event.id.is_some();
                self.data_lines = 0;
                if std::mem::take(&mut self.oversized) {
                    out.push(None);
                } else if had_data {
                    out.push(Some(event));
                }
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    // The whole event counts: its data lines and the
                    // newlines that join them. Once over, nothing more is
                    // kept until the blank line drops it.
                    let separator = usize::from(self.data_lines > 0);
                    if self.oversized
                        || self.current.data.len() + separator + value.len() > MAX_MESSAGE
                    {
                        self.oversized = true;
                        self.current.data.clear();
                        self.current.data.shrink_to(0);
                    } else {
                        if separator == 1 {
                            self.current.data.push('\n');
                        }
                        self.current.data.push_str(value);
                    }
                    self.data_lines = self.data_lines.saturating_add(1);
                }
                "event" => self.current.event = Some(value.to_string()),
                "id" if !value.contains('\0') => self.current.id = Some(value.to_string()),
                _ => {} // comments (":keepalive"), retry, unknown fields
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_chunks_with_ids_comments_and_crlf() {
        let mut p = SseParser::default();
        let mut events = p.feed(b": keepalive\n\nid: 1\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(p.feed(b":1}\r\n\r\nevent: endpoint\ndata: /messages?s=x\n\n"));
        assert_eq!(
            events,
            vec![
                Some(SseEvent {
                    event: None,
                    data: "{\"a\":1}".into(),
                    id: Some("1".into())
                }),
                Some(SseEvent {
                    event: Some("endpoint".into()),
                    data: "/messages?s=x".into(),
                    id: None
                }),
            ]
        );
        let events = p.feed(b"data: a\ndata: b\n\n");
        assert_eq!(events[0].as_ref().unwrap().data, "a\nb");
    }

    #[test]
    fn a_flood_of_empty_data_lines_stays_bounded_and_is_dropped() {
        let mut p = SseParser::default();
        // 20 million empty data lines and no blank line: their joining
        // newlines alone are more than MAX_MESSAGE.
        let chunk = b"data:\n".repeat(1 << 20);
        for _ in 0..20 {
            assert!(p.feed(&chunk).is_empty());
            assert!(p.current.data.len() <= MAX_MESSAGE);
        }
        assert!(p.current.data.capacity() <= MAX_MESSAGE);
        // The event ends: it was too large, so it is dropped.
        assert_eq!(p.feed(b"\n"), vec![None]);
        // And the next one is whole again.
        let events = p.feed(b"data: {}\n\n");
        assert_eq!(events[0].as_ref().unwrap().data, "{}");
    }

    #[test]
    fn an_event_exactly_at_the_limit_is_kept_and_one_byte_more_is_not() {
        let mut p = SseParser::default();
        let half = "x".repeat(MAX_MESSAGE / 2);
        // Two halves and their newline: one byte over.
        let mut input = format!("data: {half}\ndata: {half}\n\n").into_bytes();
        assert_eq!(p.feed(&input), vec![None]);
        // One byte shorter: exactly the limit.
        input = format!("data: {half}\ndata: {}\n\n", &half[1..]).into_bytes();
        let events = p.feed(&input);
        assert_eq!(events[0].as_ref().unwrap().data.len(), MAX_MESSAGE);
    }
}
