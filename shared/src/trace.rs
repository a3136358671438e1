//! W3C Trace Context (`traceparent`), carried from the scanner's request through the queue to
//! the worker, so that the logs of one event share a trace id across processes.
//!
//! TODO: spans are not exported to an OpenTelemetry collector yet (no OTLP exporter in the
//! dependency tree); the trace and span ids are propagated and written into every log line, so a
//! collector that reads the logs can already join them.

use std::fmt;

use uuid::Uuid;

/// The header, in HTTP and in the AMQP message headers.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent's span id, when this context continues one.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn root() -> Self {
        Self { trace_id: random_trace_id(), span_id: random_span_id(), parent_id: None, flags: 1 }
    }

    /// A child span of a `traceparent` value, or a new trace when the value is absent or
    /// malformed (as the W3C recommendation asks).
    pub fn continue_from(header: Option<&[u8]>) -> Self {
        header.and_then(parse).map_or_else(Self::root, |parent| parent.child())
    }

    /// A new span in the same trace, with this one as its parent.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            parent_id: Some(self.span_id),
            flags: self.flags,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` value naming this span as the parent of the next.
    pub fn header(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }
}

/// Parses `version-traceid-parentid-flags`. Version `00` must have exactly four fields; a later
/// version may have more, and its first four are read the same way. All-zero ids are invalid.
pub fn parse(value: &[u8]) -> Option<TraceContext> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut fields = text.split('-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let span = fields.next()?;
    let flags = fields.next()?;
    let rest = fields.next();
    if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    from_hex(version)?;
    let trace_id: [u8; 16] = from_hex(trace)?.try_into().ok()?;
    let span_id: [u8; 8] = from_hex(span)?.try_into().ok()?;
    let flags: [u8; 1] = from_hex(flags)?.try_into().ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id, span_id, parent_id: None, flags: flags[0] })
}

fn random_trace_id() -> [u8; 16] {
    *Uuid::new_v4().as_bytes()
}

fn random_span_id() -> [u8; 8] {
    let bytes = Uuid::new_v4().into_bytes();
    let mut id = [0; 8];
    id.copy_from_slice(&bytes[..8]);
    id
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Lower-case hex only, as the recommendation requires.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_continued_in_the_same_trace() {
        let parent = parse(SAMPLE.as_bytes()).expect("valid");
        assert_eq!(parent.to_string(), SAMPLE);
        let child = TraceContext::continue_from(Some(SAMPLE.as_bytes()));
        assert_eq!(child.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(child.parent_id, Some(parent.span_id));
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.flags, 1);
        assert_eq!(parse(child.header().as_bytes()).map(|c| c.trace_id), Some(child.trace_id));
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
            let fresh = TraceContext::continue_from(Some(bad.as_bytes()));
            assert_eq!(fresh.parent_id, None);
            assert_ne!(fresh.trace_id, [0; 16]);
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse(later.as_bytes()).is_some());
    }
}
