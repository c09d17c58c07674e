//! Transfers (RFC 3515 REFER, RFC 3891 Replaces, RFC 5589): reading the
//! Refer-To a far end sends, the NOTIFY sipfrag bodies that report a
//! transfer, and writing a Refer-To that replaces another dialog.

/// Where a far end's REFER asks us to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTarget {
    /// The Refer-To URI without its `?headers`; not checked against the
    /// SIP grammar here (the gateway checks it as a client's bUri).
    pub uri: String,
    /// A `Replaces` header for the new INVITE (an attended transfer),
    /// percent-decoded: `call-id;to-tag=…;from-tag=…`.
    pub replaces: Option<String>,
}

/// Longest Refer-To we read; a far end gets 400 for more.
const MAX_REFER_TO: usize = 1024;

/// Reads a Refer-To value: `<sip:bob@host?Replaces=…>`, with or without a
/// display name or angle brackets. `None` when there is no URI in it.
pub fn parse_refer_to(value: &str) -> Option<ReferTarget> {
    if value.len() > MAX_REFER_TO {
        return None;
    }
    let value = value.trim();
    let inner = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        (None, None) => value.split(';').next().unwrap_or_default(),
        _ => return None,
    };
    let (uri, headers) = inner.split_once('?').unwrap_or((inner, ""));
    let uri = uri.trim();
    let scheme = uri.split_once(':')?.0;
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return None;
    }
    let replaces = headers.split('&').find_map(|header| {
        let (name, value) = header.split_once('=')?;
        name.eq_ignore_ascii_case("replaces")
            .then(|| percent_decode(value))
            .flatten()
    });
    Some(ReferTarget {
        uri: uri.to_string(),
        replaces,
    })
}

/// The Refer-To value that asks a far end to call `target` replacing the
/// dialog `(call_id, local_tag, remote_tag)` of ours with it: the target
/// matches the Replaces' to-tag against its own tag, our remote tag.
pub fn refer_to_replacing(
    target: &str,
    call_id: &str,
    local_tag: &str,
    remote_tag: &str,
) -> String {
    let replaces = format!("{call_id};to-tag={remote_tag};from-tag={local_tag}");
    format!("<{target}?Replaces={}>", percent_encode(&replaces))
}

/// The status line of a REFER's NOTIFY (`Event: refer`, a `message/sipfrag`
/// body starting `SIP/2.0 200 OK`): code and reason.
pub fn sipfrag_status(body: &str) -> Option<(u16, String)> {
    let status_line = body.lines().next()?.trim();
    let rest = status_line.strip_prefix("SIP/2.0 ")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let code: u16 = code.parse().ok().filter(|code| (100..700).contains(code))?;
    Some((code, reason.chars().take(100).collect()))
}

/// A sipfrag body for a NOTIFY of ours: our reason phrases are ASCII and
/// short, but what a far end said on its own leg is cleaned anyway.
pub fn sipfrag(status: u16, reason: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect();
    format!("SIP/2.0 {status} {reason}\r\n")
}

/// Escapes everything but RFC 3261's `unreserved` characters, for a value
/// inside a URI's `?headers`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `None` for a broken escape or a result that is not UTF-8, or that holds
/// control characters (it becomes a header value).
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    let decoded = String::from_utf8(bytes).ok()?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refer_to_is_read_with_or_without_brackets_and_replaces() {
        assert_eq!(
            parse_refer_to("<sip:2001@pbx.example.com;user=phone>"),
            Some(ReferTarget {
                uri: "sip:2001@pbx.example.com;user=phone".to_string(),
                replaces: None,
            })
        );
        assert_eq!(
            parse_refer_to("sip:bob@10.0.0.1;transport=udp").map(|target| target.uri),
            Some("sip:bob@10.0.0.1".to_string())
        );
        let target = parse_refer_to(
            "\"Bob\" <sip:bob@h?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2&Require=replaces>",
        );
        assert_eq!(
            target,
            Some(ReferTarget {
                uri: "sip:bob@h".to_string(),
                replaces: Some("abc@h;to-tag=1;from-tag=2".to_string()),
            })
        );
    }

    #[test]
    fn what_is_no_sip_uri_is_refused() {
        for value in [
            "",
            "<>",
            "<tel:+123>",
            "<sip:bob@h",
            "http://example.com",
            "<sip:a@h?Replaces=%0D%0AX:1>",
        ] {
            let parsed = parse_refer_to(value);
            assert!(
                parsed
                    .as_ref()
                    .is_none_or(|target| target.replaces.is_none()),
                "{value:?} gave {parsed:?}"
            );
        }
        assert_eq!(parse_refer_to("<tel:+123>"), None);
        assert_eq!(parse_refer_to(&"a".repeat(2000)), None);
    }

    #[test]
    fn a_replacing_refer_to_reads_back_as_the_dialog_it_names() {
        let value = refer_to_replacing("sip:carol@127.0.0.1:5070", "x@y;z", "ours", "theirs");
        assert_eq!(
            value,
            "<sip:carol@127.0.0.1:5070?Replaces=x%40y%3Bz%3Bto-tag%3Dtheirs%3Bfrom-tag%3Dours>"
        );
        assert_eq!(
            parse_refer_to(&value).and_then(|target| target.replaces),
            Some("x@y;z;to-tag=theirs;from-tag=ours".to_string())
        );
    }

    #[test]
    fn sipfrag_status_lines_are_read_and_written() {
        assert_eq!(
            sipfrag_status("SIP/2.0 180 Ringing\r\n"),
            Some((180, "Ringing".to_string()))
        );
        assert_eq!(sipfrag_status("SIP/2.0 99 Odd"), None);
        assert_eq!(sipfrag_status("HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag(486, "Busy\r\nX: y"), "SIP/2.0 486 BusyX: y\r\n");
    }
}
