//! Server-Sent Events encoding: a frame as one event, `id:` (its stream position, when it has
//! one), `event:` (its name, when it has one: `gap`), then one `data:` line per line of its
//! text, then a blank line; the browser's `EventSource` joins the lines with `\n` and hands the
//! text to `onmessage` (unnamed events) or to the listener of that name
//! (`addEventListener("gap", …)`). The text is exactly what a compat websocket client receives,
//! so one application code reads both.

use std::io::Write as _;

use crate::stream::Frame;

/// Appends `text` as `data:` lines and the blank line that ends an event.
pub fn push_data(out: &mut Vec<u8>, text: &str) {
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // A lone `\r` is also a line end for the browser; keep the text's lines intact.
        for part in line.split('\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

/// A frame's event, `id:` line included when it has a position: the same for every stream
/// (the position is the stream's), so made once and shared.
pub fn event(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 64);
    if let Some(position) = frame.position() {
        let _ = writeln!(out, "id: {position}");
    }
    if let Some(name) = frame.name() {
        let _ = writeln!(out, "event: {name}");
    }
    push_data(&mut out, frame.as_str());
    out
}

/// The named event a stream ends with (`event: close`), after an optional `retry:` advice in
/// milliseconds, carrying `text` (the compat `Close` event).
pub fn close(retry_ms: Option<u64>, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(ms) = retry_ms {
        let _ = writeln!(out, "retry: {ms}");
    }
    out.extend_from_slice(b"event: close\n");
    push_data(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_data_lines() {
        let mut out = Vec::new();
        push_data(&mut out, "a\nb\r\nc\rd");
        assert_eq!(out, b"data: a\ndata: b\ndata: c\ndata: d\n\n");
        let mut out = Vec::new();
        push_data(&mut out, "");
        assert_eq!(out, b"data: \n\n");
        assert_eq!(event(&Frame::text("x")), b"data: x\n\n");
        assert_eq!(
            event(&Frame::named("gap", "{}".into())),
            b"event: gap\ndata: {}\n\n"
        );
    }
}
