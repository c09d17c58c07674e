//! The process's log: tracing to stderr, one event per line whatever a
//! peer or client put into it (issue 14). Attacker text reaches log fields
//! in many places (user names, bUri, SIP reason phrases and messages, SDP,
//! RTMP names, ICE candidates, errors quoting them), so the guarantees are
//! given once, where a formatted event is written, not at each call site:
//! - control characters are escaped (`\n`, `\r`, `\u{1b}`, ...), so a
//!   newline in a user name cannot forge a line and an escape sequence
//!   cannot drive the operator's terminal;
//! - `Authorization` / `Proxy-Authorization` values (digest credentials in
//!   the raw SIP messages rsipstack logs) and SDES-SRTP keys (`a=crypto`'s
//!   `inline:`, in SDP anywhere) are replaced by `<redacted>`;
//! - WARN and ERROR lines are cut at `log.max_line_chars`;
//! - tungstenite's TRACE events are never logged: they print every frame,
//!   START_SESSION passwords included, and no filter may turn them on.

use std::io::Write;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber: `directives` is a tracing filter
/// (RUST_LOG or `log.level`).
pub fn init(directives: &str, max_line_chars: usize, ansi: bool) -> anyhow::Result<()> {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(SafeStderr { max_line_chars })
        .with_ansi(ansi)
        .with_filter(EnvFilter::try_new(directives)?);
    tracing_subscriber::registry()
        .with(NoFrameLogs)
        .with(layer)
        .try_init()?;
    Ok(())
}

/// Vetoes tungstenite's TRACE events whatever the filter says. They come
/// through the `log` bridge, so their real target is in the normalized
/// metadata, not in the callsite's (`log`).
struct NoFrameLogs;

impl<S: Subscriber> Layer<S> for NoFrameLogs {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        !logs_frames(normalized.as_ref().unwrap_or_else(|| event.metadata()))
    }
}

/// tungstenite and tokio-tungstenite log whole frames at TRACE.
fn logs_frames(metadata: &Metadata<'_>) -> bool {
    *metadata.level() == Level::TRACE && metadata.target().contains("tungstenite")
}

/// Hands the fmt layer a buffer per event and writes it, made safe, to
/// stderr in one piece.
struct SafeStderr {
    max_line_chars: usize,
}

impl<'a> MakeWriter<'a> for SafeStderr {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine {
            text: Vec::new(),
            max_chars: None,
        }
    }

    fn make_writer_for(&'a self, metadata: &Metadata<'_>) -> EventLine {
        EventLine {
            text: Vec::new(),
            // More verbose levels compare greater: WARN and ERROR.
            max_chars: (*metadata.level() <= Level::WARN).then_some(self.max_line_chars),
        }
    }
}

struct EventLine {
    text: Vec<u8>,
    max_chars: Option<usize>,
}

impl Write for EventLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let line = safe_line(&String::from_utf8_lossy(&self.text), self.max_chars);
        // Nowhere to report a failing stderr.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// One formatted event as one safe line, ending in a newline.
fn safe_line(event: &str, max_chars: Option<usize>) -> String {
    let event = event.strip_suffix('\n').unwrap_or(event);
    let mut line = String::with_capacity(event.len() + 1);
    for c in event.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push('\t'),
            '\u{2028}' | '\u{2029}' => line.push_str(&c.escape_unicode().to_string()),
            c if c.is_control() => line.push_str(&c.escape_unicode().to_string()),
            c => line.push(c),
        }
    }
    let mut line = redact_credentials(&line);
    if let Some(max) = max_chars {
        let total = line.chars().count();
        if total > max {
            let cut = line
                .char_indices()
                .nth(max)
                .map_or(line.len(), |(at, _)| at);
            line.truncate(cut);
            line.push_str(&format!("… ({} more characters)", total - max));
        }
    }
    line.push('\n');
    line
}

/// Replaces the value of every `Authorization:` header (`Proxy-` too) and
/// of every SRTP key (`inline:`) up to the end of its (escaped) line.
fn redact_credentials(line: &str) -> String {
    ["authorization:", "inline:"]
        .iter()
        .fold(line.to_string(), |line, marker| redact_after(&line, marker))
}

fn redact_after(line: &str, marker: &str) -> String {
    const REDACTED: &str = " <redacted>";
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(marker) {
        let value_start = from + found + marker.len();
        out.push_str(&line[from..value_start]);
        out.push_str(REDACTED);
        // rsipstack logs messages with their CRLFs escaped (`\r\n`).
        from = line[value_start..]
            .find("\\r\\n")
            .map_or(line.len(), |end| value_start + end);
    }
    out.push_str(&line[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_a_field_cannot_start_a_line() {
        let event = "INFO session{user=bob\nFORGED ERROR admin logged in}: started\n";
        let line = safe_line(event, None);
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(line.contains("bob\\nFORGED"), "{line:?}");
        let escape = safe_line("x\u{1b}[31mred\r\0\n", None);
        assert_eq!(escape, "x\\u{1b}[31mred\\r\\u{0}\n");
    }

    #[test]
    fn warn_lines_are_cut_and_others_are_not() {
        let long = format!("WARN {}\n", "a".repeat(5000));
        let cut = safe_line(&long, Some(200));
        assert!(cut.starts_with("WARN aaa") && cut.len() < 260, "{cut}");
        assert!(cut.ends_with("… (4805 more characters)\n"), "{cut}");
        assert_eq!(safe_line(&long, None), long);
    }

    #[test]
    fn digest_credentials_are_redacted() {
        let logged = r#"udp send raw_message="REGISTER sip:r SIP/2.0\r\nAuthorization: Digest username=\"1001\", response=\"5f2a\"\r\nProxy-Authorization: Digest x\r\nCSeq: 2 REGISTER\r\n""#;
        let line = redact_credentials(logged);
        assert!(
            !line.contains("5f2a") && !line.contains("Digest x"),
            "{line}"
        );
        assert!(
            line.contains("Authorization: <redacted>\\r\\nCSeq: 2 REGISTER"),
            "{line}"
        );
        assert_eq!(redact_credentials("no secrets"), "no secrets");
        let sdp = r#"raw_message="m=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\na=sendrecv""#;
        let line = redact_credentials(sdp);
        assert!(!line.contains("WVNf"), "{line}");
        assert!(
            line.contains("AES_CM_128_HMAC_SHA1_80 inline: <redacted>\\r\\na=sendrecv"),
            "{line}"
        );
    }
}
