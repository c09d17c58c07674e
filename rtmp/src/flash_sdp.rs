//! The adapted SDP of seed 000: how an RTMP client learns where to connect,
//! which stream name to publish its microphone on and which one to play.
//!
//! It keeps SDP's line syntax (RFC 4566) but not its meaning: `c=` lines carry
//! RTMP URLs instead of addresses and each `m=` line names an RTMP stream with
//! the `i=` line that follows it. Rendered lines end in CRLF; the parser also
//! takes LF-only text and skips `a=`/`b=` lines (and other line types) it does
//! not know, so a later gateway can add attributes without breaking clients.

use std::fmt::Write as _;

use nom::branch::alt;
use nom::bytes::complete::{is_not, tag};
use nom::character::complete::{
    alpha1, anychar, char, digit1, line_ending, not_line_ending, space1,
};
use nom::combinator::{all_consuming, eof, opt, rest};
use nom::sequence::{preceded, separated_pair, terminated};
use nom::{IResult, Parser};

/// The `<proto>` field of every `m=` line in the adapted form.
const MEDIA_PROTOCOL: &str = "FLASH/RTMP";

/// The adapted SDP offered to an RTMP client for one call.
///
/// ```text
/// v=0
/// o=- 0 0 IN IP4 127.0.0.1
/// s=<session_name: the callId>
/// i=<session_id>
/// c=IN IP4 rtmp://gw.example.com:1935/live
/// c=IN IP4 rtmps://gw.example.com/live
/// c=IN IP4 rtmpt://gw.example.com/live
/// t=0 0
/// m=audio 0 FLASH/RTMP Speex
/// i=<audio.publish_stream>
/// a=recvonly
/// m=audio 0 FLASH/RTMP Speex
/// i=<audio.play_stream>
/// a=sendonly
/// ```
///
/// # Telling the two stream names apart
///
/// Each direction gets its own `m=` line with its `i=` stream name and a
/// direction attribute. As in any SDP offer (RFC 3264), the attribute speaks
/// for the SDP's author, the gateway: `a=recvonly` marks the stream the
/// gateway receives, i.e. the one the client publishes to; `a=sendonly` the
/// stream the gateway sends, i.e. the one the client plays.
///
/// An `m=` line without a direction attribute (or with `a=sendrecv`) names a
/// stream used both ways: the client publishes to and plays that one name, as
/// the original single-`i=` clients of seed 000 do. Rendering emits that
/// compact form when [`FlashMedia::publish_stream`] equals
/// [`FlashMedia::play_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashSdp {
    /// `s=`: the call's id.
    pub session_name: String,
    /// Session-level `i=`: the id of the client's session.
    pub session_id: String,
    /// One `c=IN IP4 <url>` line each, in order of preference:
    /// `rtmp://host:port/app`, `rtmps://…`, `rtmpt://…`.
    pub endpoints: Vec<String>,
    /// The `m=audio` lines, when the call carries audio.
    pub audio: Option<FlashMedia>,
    /// The `m=video` lines, only when the client asked for video.
    pub video: Option<FlashMedia>,
}

/// One medium of a [`FlashSdp`]: its codec and the two RTMP stream names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashMedia {
    /// The `<fmt>` field of the `m=` line, e.g. `Speex`, `PCMU`, `H264`.
    pub codec: String,
    /// The stream name the client publishes (its microphone or camera).
    pub publish_stream: String,
    /// The stream name the client plays (the far end).
    pub play_stream: String,
}

/// Why a [`FlashSdp`] could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlashSdpError {
    #[error("line {line}: not a `<letter>=<value>` SDP line")]
    Syntax { line: usize },
    #[error("the first line must be `v=0`")]
    MissingVersion,
    #[error("no `s=` line (the call id)")]
    MissingSessionName,
    #[error("no session-level `i=` line (the session id)")]
    MissingSessionId,
    #[error("line {line}: `c=` must be `IN IP4 <url>` (or `IN IP6 <url>`)")]
    BadConnection { line: usize },
    #[error("line {line}: `m=` must be `<audio|video> 0 FLASH/RTMP <codec>`")]
    BadMedia { line: usize },
    #[error("line {line}: this `m=` line has no `i=` stream name")]
    MissingStreamId { line: usize },
    #[error("{media}: more than one stream for the same direction")]
    DuplicateDirection { media: &'static str },
    #[error("{media}: no stream the client publishes")]
    MissingPublishStream { media: &'static str },
    #[error("{media}: no stream the client plays")]
    MissingPlayStream { media: &'static str },
    #[error("field {field} is empty or holds characters SDP cannot carry: {value:?}")]
    UnrenderableField { field: &'static str, value: String },
}

/// What the client does with one `m=` section's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientPublishes,
    ClientPlays,
    Both,
}

impl Direction {
    /// The attribute says what the gateway, the SDP's author, does with the
    /// stream (RFC 3264): it receives what the client publishes.
    fn attribute(self) -> Option<&'static str> {
        match self {
            Direction::ClientPublishes => Some("recvonly"),
            Direction::ClientPlays => Some("sendonly"),
            Direction::Both => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    fn name(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

impl FlashSdp {
    /// Renders the SDP text, CRLF line endings. Fails when a field would
    /// break the line structure (a line break anywhere, or whitespace in the
    /// URLs, codecs and stream names that SDP separates by spaces).
    pub fn render(&self) -> Result<String, FlashSdpError> {
        let mut text = String::new();
        // Writing into a String cannot fail; the results are ignored on purpose.
        let _ = write!(text, "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n");
        let _ = write!(
            text,
            "s={}\r\n",
            checked_text("session_name", &self.session_name)?
        );
        let _ = write!(
            text,
            "i={}\r\n",
            checked_token("session_id", &self.session_id)?
        );
        for endpoint in &self.endpoints {
            let _ = write!(
                text,
                "c=IN IP4 {}\r\n",
                checked_token("endpoint", endpoint)?
            );
        }
        text.push_str("t=0 0\r\n");
        for (kind, media) in [
            (MediaKind::Audio, &self.audio),
            (MediaKind::Video, &self.video),
        ] {
            if let Some(media) = media {
                render_media(&mut text, kind, media)?;
            }
        }
        Ok(text)
    }

    /// Parses the adapted SDP. CRLF or LF line endings; unknown line types
    /// and attributes are skipped.
    pub fn parse(text: &str) -> Result<FlashSdp, FlashSdpError> {
        let mut lines = Vec::new();
        let mut input = text;
        let mut line = 0;
        while !input.is_empty() {
            line += 1;
            // Blank lines (a trailing one is common) carry nothing.
            if let Ok((remaining, _)) = line_ending::<&str, nom::error::Error<&str>>(input) {
                input = remaining;
                continue;
            }
            let (remaining, (kind, value)) =
                sdp_line(input).map_err(|_| FlashSdpError::Syntax { line })?;
            input = remaining;
            lines.push((line, kind, value));
        }

        if lines.first().map(|&(_, kind, value)| (kind, value)) != Some(('v', "0")) {
            return Err(FlashSdpError::MissingVersion);
        }

        let mut session_name = None;
        let mut session_id = None;
        let mut endpoints = Vec::new();
        let mut sections: Vec<MediaSection> = Vec::new();

        for &(line, kind, value) in &lines {
            match (kind, sections.last_mut()) {
                ('m', _) => sections.push(MediaSection::parse(value, line)?),
                ('i', Some(section)) if section.stream.is_none() => {
                    section.stream = Some(value.to_owned());
                }
                ('a', Some(section)) => match value {
                    "recvonly" => section.direction = Direction::ClientPublishes,
                    "sendonly" => section.direction = Direction::ClientPlays,
                    "sendrecv" => section.direction = Direction::Both,
                    _ => {}
                },
                ('s', None) => session_name = Some(value.to_owned()),
                ('i', None) => session_id = Some(value.to_owned()),
                ('c', None) => endpoints.push(
                    connection_url(value)
                        .map_err(|_| FlashSdpError::BadConnection { line })?
                        .1
                        .to_owned(),
                ),
                _ => {}
            }
        }

        Ok(FlashSdp {
            session_name: session_name.ok_or(FlashSdpError::MissingSessionName)?,
            session_id: session_id.ok_or(FlashSdpError::MissingSessionId)?,
            endpoints,
            audio: merge_sections(MediaKind::Audio, &sections)?,
            video: merge_sections(MediaKind::Video, &sections)?,
        })
    }
}

/// One `m=` line and what followed it up to the next `m=` line.
struct MediaSection {
    kind: Option<MediaKind>,
    codec: String,
    stream: Option<String>,
    direction: Direction,
    line: usize,
}

impl MediaSection {
    fn parse(value: &str, line: usize) -> Result<MediaSection, FlashSdpError> {
        let (_, (media, codec)) =
            media_description(value).map_err(|_| FlashSdpError::BadMedia { line })?;
        // Media other than audio and video (e.g. `application`) is kept as a
        // section so its `i=` is not mistaken for the session id, then ignored.
        let kind = match media {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        };
        Ok(MediaSection {
            kind,
            codec: codec.to_owned(),
            stream: None,
            direction: Direction::Both,
            line,
        })
    }
}

/// Joins the sections of one medium into its publish and play stream names.
fn merge_sections(
    kind: MediaKind,
    sections: &[MediaSection],
) -> Result<Option<FlashMedia>, FlashSdpError> {
    let media = kind.name();
    let mut codec = None;
    let mut publish_stream = None;
    let mut play_stream = None;
    for section in sections.iter().filter(|section| section.kind == Some(kind)) {
        let stream = section
            .stream
            .clone()
            .ok_or(FlashSdpError::MissingStreamId { line: section.line })?;
        codec.get_or_insert_with(|| section.codec.clone());
        let publishes = matches!(
            section.direction,
            Direction::ClientPublishes | Direction::Both
        );
        let plays = matches!(section.direction, Direction::ClientPlays | Direction::Both);
        for (wanted, slot) in [(publishes, &mut publish_stream), (plays, &mut play_stream)] {
            if wanted && slot.replace(stream.clone()).is_some() {
                return Err(FlashSdpError::DuplicateDirection { media });
            }
        }
    }
    let Some(codec) = codec else {
        return Ok(None);
    };
    Ok(Some(FlashMedia {
        codec,
        publish_stream: publish_stream.ok_or(FlashSdpError::MissingPublishStream { media })?,
        play_stream: play_stream.ok_or(FlashSdpError::MissingPlayStream { media })?,
    }))
}

fn render_media(
    text: &mut String,
    kind: MediaKind,
    media: &FlashMedia,
) -> Result<(), FlashSdpError> {
    let codec = checked_token("codec", &media.codec)?;
    let publish = checked_token("publish_stream", &media.publish_stream)?;
    let play = checked_token("play_stream", &media.play_stream)?;
    let streams = if publish == play {
        vec![(Direction::Both, publish)]
    } else {
        vec![
            (Direction::ClientPublishes, publish),
            (Direction::ClientPlays, play),
        ]
    };
    for (direction, stream) in streams {
        let _ = write!(
            text,
            "m={} 0 {MEDIA_PROTOCOL} {codec}\r\ni={stream}\r\n",
            kind.name()
        );
        if let Some(attribute) = direction.attribute() {
            let _ = write!(text, "a={attribute}\r\n");
        }
    }
    Ok(())
}

/// A value that must fit on one SDP line.
fn checked_text<'a>(field: &'static str, value: &'a str) -> Result<&'a str, FlashSdpError> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(FlashSdpError::UnrenderableField {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value)
}

/// A value that must also be a single space-separated SDP field.
fn checked_token<'a>(field: &'static str, value: &'a str) -> Result<&'a str, FlashSdpError> {
    let value = checked_text(field, value)?;
    if value.chars().any(char::is_whitespace) {
        return Err(FlashSdpError::UnrenderableField {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value)
}

/// `<type>=<value>` up to and including the line ending (or the end of text).
fn sdp_line(input: &str) -> IResult<&str, (char, &str)> {
    terminated(
        separated_pair(anychar, char('='), not_line_ending),
        alt((line_ending, eof)),
    )
    .parse(input)
}

/// The URL of a `c=IN IP4 <url>` value.
fn connection_url(value: &str) -> IResult<&str, &str> {
    all_consuming(preceded(
        (tag("IN"), space1, alt((tag("IP4"), tag("IP6"))), space1),
        terminated(is_not(" \t"), opt(space1)),
    ))
    .parse(value)
}

/// `<media> <port> FLASH/RTMP <codec>` → (media, codec).
fn media_description(value: &str) -> IResult<&str, (&str, &str)> {
    let (input, (media, _, _port, _, _proto, _, codec)) = (
        alpha1,
        space1,
        digit1,
        space1,
        tag(MEDIA_PROTOCOL),
        space1,
        rest,
    )
        .parse(value)?;
    let codec = codec.trim_end();
    if codec.is_empty() || codec.contains(char::is_whitespace) {
        return Err(nom::Err::Error(nom::error::Error::new(
            value,
            nom::error::ErrorKind::Verify,
        )));
    }
    Ok((input, (media, codec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_way_call() -> FlashSdp {
        FlashSdp {
            session_name: "call-7f3a".to_owned(),
            session_id: "550e8400-e29b-41d4-a716-446655440000".to_owned(),
            endpoints: vec![
                "rtmp://gw.example.com:1935/live".to_owned(),
                "rtmps://gw.example.com/live".to_owned(),
                "rtmpt://gw.example.com/live".to_owned(),
            ],
            audio: Some(FlashMedia {
                codec: "Speex".to_owned(),
                publish_stream: "up-4b1d9e".to_owned(),
                play_stream: "down-c20a77".to_owned(),
            }),
            video: None,
        }
    }

    #[test]
    fn renders_the_documented_form() {
        let text = two_way_call().render().unwrap();
        assert_eq!(
            text,
            "v=0\r\n\
             o=- 0 0 IN IP4 127.0.0.1\r\n\
             s=call-7f3a\r\n\
             i=550e8400-e29b-41d4-a716-446655440000\r\n\
             c=IN IP4 rtmp://gw.example.com:1935/live\r\n\
             c=IN IP4 rtmps://gw.example.com/live\r\n\
             c=IN IP4 rtmpt://gw.example.com/live\r\n\
             t=0 0\r\n\
             m=audio 0 FLASH/RTMP Speex\r\n\
             i=up-4b1d9e\r\n\
             a=recvonly\r\n\
             m=audio 0 FLASH/RTMP Speex\r\n\
             i=down-c20a77\r\n\
             a=sendonly\r\n"
        );
    }

    #[test]
    fn directions_are_the_gateways() {
        // The gateway receives (recvonly) what the client publishes, and
        // sends (sendonly) what it plays, whatever the order of the lines.
        let text = "v=0\ns=c\ni=s\n\
                    m=audio 0 FLASH/RTMP PCMU\ni=speaker\na=sendonly\n\
                    m=audio 0 FLASH/RTMP PCMU\ni=microphone\na=recvonly\n";
        let audio = FlashSdp::parse(text).unwrap().audio.unwrap();
        assert_eq!(audio.publish_stream, "microphone");
        assert_eq!(audio.play_stream, "speaker");
    }

    #[test]
    fn round_trips_audio_and_video() {
        let mut sdp = two_way_call();
        sdp.video = Some(FlashMedia {
            codec: "H264".to_owned(),
            publish_stream: "cam-up".to_owned(),
            play_stream: "cam-down".to_owned(),
        });
        assert_eq!(FlashSdp::parse(&sdp.render().unwrap()), Ok(sdp));
    }

    #[test]
    fn one_stream_both_ways_renders_as_a_single_m_line() {
        let mut sdp = two_way_call();
        if let Some(audio) = sdp.audio.as_mut() {
            audio.play_stream = audio.publish_stream.clone();
        }
        let text = sdp.render().unwrap();
        assert_eq!(text.matches("m=audio").count(), 1);
        assert!(!text.contains("a=sendonly") && !text.contains("a=recvonly"));
        assert_eq!(FlashSdp::parse(&text), Ok(sdp));
    }

    #[test]
    fn parses_the_seed_example_with_lf_endings() {
        // Seed 000's example, comments stripped: one i= per medium.
        let text = "v=0\n\
                    o=- 0 0 IN IP4 127.0.0.1\n\
                    s=CallId\n\
                    i=550e8400-e29b-41d4-a716-446655440000\n\
                    c=IN IP4 rtmps://1.cdn.com/live\n\
                    c=IN IP4 rtmp://1.cdn.com:80/live\n\
                    c=IN IP4 rtmp://1.cdn.com/live\n\
                    c=IN IP4 rtmpt://1.cdn.com/live\n\
                    t=0 0\n\
                    m=audio 0 FLASH/RTMP Speex\n\
                    i=550e8400-e29b-41d4-a716-446655440000\n\
                    m=video 0 FLASH/RTMP H264\n\
                    i=550e8400-e29b-41d4-a716-446655440000";
        let sdp = FlashSdp::parse(text).unwrap();
        assert_eq!(sdp.session_name, "CallId");
        assert_eq!(sdp.endpoints.len(), 4);
        assert_eq!(sdp.endpoints[1], "rtmp://1.cdn.com:80/live");
        let audio = sdp.audio.unwrap();
        assert_eq!(audio.codec, "Speex");
        assert_eq!(audio.publish_stream, audio.play_stream);
        assert_eq!(sdp.video.unwrap().codec, "H264");
    }

    #[test]
    fn skips_unknown_lines_and_attributes() {
        let text = two_way_call().render().unwrap().replace(
            "a=sendonly\r\n",
            "b=AS:32\r\na=rtpmap:97 speex/16000\r\na=sendonly\r\nx=later extension\r\n",
        );
        assert_eq!(FlashSdp::parse(&text), Ok(two_way_call()));
    }

    #[test]
    fn refuses_malformed_text() {
        let valid = two_way_call().render().unwrap();
        let cases: Vec<(String, FlashSdpError)> = vec![
            (String::new(), FlashSdpError::MissingVersion),
            (valid.replace("v=0", "v=1"), FlashSdpError::MissingVersion),
            (
                valid.replace("t=0 0\r\n", "garbage line\r\n"),
                FlashSdpError::Syntax { line: 8 },
            ),
            (
                valid.replace("s=call-7f3a\r\n", ""),
                FlashSdpError::MissingSessionName,
            ),
            (
                valid.replace("i=550e8400-e29b-41d4-a716-446655440000\r\n", ""),
                FlashSdpError::MissingSessionId,
            ),
            (
                valid.replace("c=IN IP4 rtmps", "c=rtmps"),
                FlashSdpError::BadConnection { line: 6 },
            ),
            (
                valid.replace("c=IN IP4 rtmps://gw.example.com/live", "c=IN IP4 a b"),
                FlashSdpError::BadConnection { line: 6 },
            ),
            (
                valid.replacen("0 FLASH/RTMP Speex", "0 RTP/AVP 0", 1),
                FlashSdpError::BadMedia { line: 9 },
            ),
            (
                valid.replacen(
                    "m=audio 0 FLASH/RTMP Speex",
                    "m=audio x FLASH/RTMP Speex",
                    1,
                ),
                FlashSdpError::BadMedia { line: 9 },
            ),
            (
                valid.replace("i=up-4b1d9e\r\n", ""),
                FlashSdpError::MissingStreamId { line: 9 },
            ),
            (
                valid.replace("a=recvonly", "a=sendonly"),
                FlashSdpError::DuplicateDirection { media: "audio" },
            ),
            (
                valid.replace("a=sendonly", "a=recvonly"),
                FlashSdpError::DuplicateDirection { media: "audio" },
            ),
            (
                valid.replace(
                    "i=down-c20a77\r\na=sendonly\r\n",
                    "i=down-c20a77\r\na=sendrecv\r\n",
                ),
                FlashSdpError::DuplicateDirection { media: "audio" },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(FlashSdp::parse(&text), Err(expected), "input:\n{text}");
        }
    }

    #[test]
    fn a_single_directed_stream_is_missing_its_other_half() {
        let text = "v=0\ns=c\ni=s\nm=audio 0 FLASH/RTMP Speex\ni=up\na=recvonly\n";
        assert_eq!(
            FlashSdp::parse(text),
            Err(FlashSdpError::MissingPlayStream { media: "audio" })
        );
    }

    #[test]
    fn survives_arbitrary_bytes() {
        // Every prefix of a valid SDP and a few hostile strings: errors or
        // values, never a panic.
        let valid = two_way_call().render().unwrap();
        for end in 0..=valid.len() {
            if let Some(prefix) = valid.get(..end) {
                let _ = FlashSdp::parse(prefix);
            }
        }
        for hostile in [
            "=",
            "\n\n\n",
            "\r\n\r",
            "v=0\r",
            "v=0\nm=",
            "v=0\nm=audio",
            "\u{0}=\u{0}",
        ] {
            let _ = FlashSdp::parse(hostile);
        }
    }

    #[test]
    fn refuses_to_render_fields_that_break_lines() {
        let mut sdp = two_way_call();
        sdp.session_name = "call\r\na=injected".to_owned();
        assert!(matches!(
            sdp.render(),
            Err(FlashSdpError::UnrenderableField {
                field: "session_name",
                ..
            })
        ));
        let mut sdp = two_way_call();
        if let Some(audio) = sdp.audio.as_mut() {
            audio.play_stream = "two words".to_owned();
        }
        assert!(matches!(
            sdp.render(),
            Err(FlashSdpError::UnrenderableField {
                field: "play_stream",
                ..
            })
        ));
    }
}
