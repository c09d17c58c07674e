//! Requests refused for what they are, not for what they ask (RFC 3261
//! section 8.2, the cases of RFC 4475): another SIP version (505), a
//! mandatory header missing or unreadable (400), a method we do not take
//! (405 with Allow), a body we cannot read (415 with Accept), an offer we
//! cannot answer (488). Sans-IO: a request in, a refusal or nothing out;
//! `user_agent.rs` sends it.

use rsipstack::sip::headers::untyped::{Accept, Allow, Warning};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Request, Response, StatusCode, Version};

use crate::sdp;

/// The methods the user agent answers (the Allow of a 405).
pub(crate) const ALLOWED_METHODS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY";

/// Bodies an INVITE, re-INVITE or UPDATE may carry.
pub(crate) const OFFER_TYPES: &str = "application/sdp";

/// Bodies an INFO may carry: DTMF relay (RFC 6086 leaves the types to
/// the packages; these are the two every PBX sends).
pub(crate) const INFO_TYPES: &str = "application/dtmf-relay, application/dtmf";

/// A response that refuses a request, with the headers that tell the
/// sender what we would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    /// What is wrong, where the status does not say it (`Missing
    /// Call-ID`); sent as a Warning (399), since rsipstack writes only the
    /// standard reason phrase.
    pub reason: Option<&'static str>,
    pub headers: Vec<Header>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode) -> Refusal {
        Refusal {
            status,
            reason: None,
            headers: vec![],
        }
    }

    fn bad_request(reason: &'static str) -> Refusal {
        Refusal {
            reason: Some(reason),
            ..Refusal::new(StatusCode::BadRequest)
        }
    }

    /// 405 with the methods we take.
    pub(crate) fn method_not_allowed() -> Refusal {
        Refusal {
            headers: vec![Header::Allow(Allow::new(ALLOWED_METHODS))],
            ..Refusal::new(StatusCode::MethodNotAllowed)
        }
    }

    fn unsupported_media_type(accepted: &str) -> Refusal {
        Refusal {
            headers: vec![Header::Accept(Accept::new(accepted))],
            ..Refusal::new(StatusCode::UnsupportedMediaType)
        }
    }

    /// The response, stateless: built from the request's own Via, From,
    /// To, Call-ID and CSeq, as far as it has them.
    pub(crate) fn response_to(&self, request: &Request) -> Response {
        let mut headers: Vec<Header> = request
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h,
                    Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_)
                )
            })
            .cloned()
            .collect();
        // RFC 3261 8.2.6.2: a response outside a dialog gets our To tag.
        if let Ok(to) = request.to_header() {
            let tagged = match to.tag() {
                Ok(Some(_)) => to.clone(),
                _ => to.with_tag(rsipstack::transaction::make_tag()),
            };
            headers.push(Header::To(tagged));
        }
        headers.extend(self.headers.iter().cloned());
        if let Some(reason) = self.reason {
            headers.push(Header::Warning(Warning::new(format!(
                "399 dialtone \"{reason}\""
            ))));
        }
        headers.push(Header::ContentLength(0u32.into()));
        Response {
            status_code: self.status.clone(),
            wire_reason: None,
            version: Version::V2,
            headers: headers.into(),
            body: vec![],
        }
    }
}

/// What every request must be before a transaction is made for it: SIP/2.0
/// with readable Via, From, To, Call-ID and CSeq, the CSeq naming the
/// request's method. Without these the stack cannot even key a
/// transaction, and used to drop the request unanswered.
pub(crate) fn malformed(request: &Request) -> Option<Refusal> {
    if !matches!(request.version, Version::V2 | Version::V(2, 0)) {
        return Some(Refusal::new(StatusCode::VersionNotSupported));
    }
    if !request.headers.iter().any(|h| matches!(h, Header::Via(_))) {
        return Some(Refusal::bad_request("Missing Via"));
    }
    if request.from_header().and_then(|from| from.uri()).is_err() {
        return Some(Refusal::bad_request("Missing or Bad From"));
    }
    if request.to_header().and_then(|to| to.uri()).is_err() {
        return Some(Refusal::bad_request("Missing or Bad To"));
    }
    let has_call_id = request
        .call_id_header()
        .is_ok_and(|call_id| !call_id.value().trim().is_empty());
    if !has_call_id {
        return Some(Refusal::bad_request("Missing Call-ID"));
    }
    let cseq = request.cseq_header();
    let Ok((_, method)) = cseq.and_then(|c| Ok((c.seq()?, c.method()?))) else {
        return Some(Refusal::bad_request("Missing or Bad CSeq"));
    };
    if method != request.method {
        return Some(Refusal::bad_request("CSeq Method Mismatch"));
    }
    None
}

/// An INVITE (or re-INVITE, UPDATE) whose body is not an offer we can
/// answer: not SDP (415), or SDP without an audio stream in a codec we
/// carry (488). No body is fine: we offer in the answer.
pub(crate) fn unanswerable_offer(request: &Request) -> Option<Refusal> {
    if request.body.is_empty() {
        return None;
    }
    if !has_media_type(request, OFFER_TYPES) {
        return Some(Refusal::unsupported_media_type(OFFER_TYPES));
    }
    let answerable = std::str::from_utf8(&request.body)
        .ok()
        .and_then(|text| sdp::parse_remote(text).ok())
        .is_some_and(|offer| {
            let carried = sdp::sip_codecs();
            offer.codecs.iter().any(|offered| {
                !offered.is_telephone_event() && carried.iter().any(|c| c.same_format(offered))
            })
        });
    (!answerable).then(|| Refusal::new(StatusCode::NotAcceptableHere))
}

/// An INFO whose body is not one of [`INFO_TYPES`]; an INFO without a
/// body is fine (RFC 6086 section 4.2.1).
pub(crate) fn unreadable_info(request: &Request) -> Option<Refusal> {
    (!request.body.is_empty() && !has_media_type(request, INFO_TYPES))
        .then(|| Refusal::unsupported_media_type(INFO_TYPES))
}

/// Whether the request's Content-Type (parameters and case ignored) is one
/// of `accepted` (a comma-separated list).
fn has_media_type(request: &Request, accepted: &str) -> bool {
    let Some(content_type) = request.headers.iter().find_map(|h| match h {
        Header::ContentType(c) => Some(c.value().to_string()),
        _ => None,
    }) else {
        return false;
    };
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    accepted
        .split(',')
        .any(|one| one.trim().eq_ignore_ascii_case(media_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `head` with `\n` line ends, then the blank line, then `body`.
    fn request(text: &str) -> Request {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let text = format!("{}\r\n\r\n{body}", head.replace('\n', "\r\n"));
        Request::try_from(text.as_str()).expect("a request the stack parses")
    }

    const HEADERS: &str = "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\n\
        From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:echo@127.0.0.1>\n\
        Call-ID: c1\nMax-Forwards: 70\n";

    fn options(line: &str, headers: &str, cseq: &str) -> Request {
        request(&format!("{line}\n{headers}{cseq}Content-Length: 0\n\n"))
    }

    #[test]
    fn a_whole_request_passes() {
        let ok = options(
            "OPTIONS sip:echo@127.0.0.1 SIP/2.0",
            HEADERS,
            "CSeq: 1 OPTIONS\n",
        );
        assert_eq!(malformed(&ok), None);
    }

    #[test]
    fn another_version_or_a_missing_header_is_refused() {
        let status = |line: &str, headers: &str, cseq: &str| {
            malformed(&options(line, headers, cseq)).map(|r| (r.status.code(), r.reason))
        };
        let line = "OPTIONS sip:echo@127.0.0.1 SIP/2.0";
        let cseq = "CSeq: 1 OPTIONS\n";
        assert_eq!(
            status("OPTIONS sip:echo@127.0.0.1 SIP/7.0", HEADERS, cseq),
            Some((505, None))
        );
        for (header, reason) in [
            ("Call-ID", "Missing Call-ID"),
            ("From", "Missing or Bad From"),
            ("To", "Missing or Bad To"),
        ] {
            let without: String = HEADERS
                .lines()
                .filter(|l| !l.starts_with(&format!("{header}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(status(line, &without, cseq), Some((400, Some(reason))));
        }
        assert_eq!(
            status(line, HEADERS, ""),
            Some((400, Some("Missing or Bad CSeq")))
        );
        assert_eq!(
            status(line, HEADERS, "CSeq: 1 INVITE\n"),
            Some((400, Some("CSeq Method Mismatch")))
        );
    }

    #[test]
    fn the_refusal_echoes_the_request_and_tags_to() {
        let bad = options(
            "OPTIONS sip:echo@127.0.0.1 SIP/3.0",
            HEADERS,
            "CSeq: 7 OPTIONS\n",
        );
        let response = malformed(&bad).unwrap().response_to(&bad).to_string();
        assert!(response.starts_with("SIP/2.0 505"), "{response}");
        for echoed in [
            "branch=z9hG4bK1",
            "Call-ID: c1",
            "CSeq: 7 OPTIONS",
            ";tag=1",
        ] {
            assert!(response.contains(echoed), "{echoed}: {response}");
        }
        let without_call_id = options(
            "OPTIONS sip:e@h SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK2\nFrom: <sip:a@h>;tag=1\nTo: <sip:e@h>\n",
            "CSeq: 1 OPTIONS\n",
        );
        let response = malformed(&without_call_id)
            .unwrap()
            .response_to(&without_call_id)
            .to_string();
        for echoed in ["SIP/2.0 400", "Warning: 399 dialtone \"Missing Call-ID\""] {
            assert!(response.contains(echoed), "{echoed}: {response}");
        }
        let to = response.lines().find(|l| l.starts_with("To:")).unwrap();
        assert!(to.contains(";tag="), "{to}");
    }

    fn invite(content_type: &str, body: &str) -> Request {
        request(&format!(
            "INVITE sip:echo@127.0.0.1 SIP/2.0\n{HEADERS}CSeq: 1 INVITE\n\
             Content-Type: {content_type}\nContent-Length: {}\n\n{body}",
            body.len()
        ))
    }

    #[test]
    fn offers_are_answerable_sdp_or_refused() {
        let sdp = |formats: &str, rtpmap: &str| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 4000 RTP/AVP {formats}\r\n{rtpmap}"
            )
        };
        let pcmu = sdp("0", "");
        assert_eq!(unanswerable_offer(&invite("application/sdp", &pcmu)), None);
        assert_eq!(
            unanswerable_offer(&invite("Application/SDP; charset=x", &pcmu)),
            None
        );
        let refused = |content_type: &str, body: &str| {
            unanswerable_offer(&invite(content_type, body)).map(|r| r.status.code())
        };
        assert_eq!(refused("text/plain", &pcmu), Some(415));
        let only_g729 = sdp("18", "a=rtpmap:18 G729/8000\r\n");
        assert_eq!(refused("application/sdp", &only_g729), Some(488));
        assert_eq!(refused("application/sdp", "not sdp at all"), Some(488));
        let video = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 4000 RTP/AVP 96\r\n";
        assert_eq!(refused("application/sdp", video), Some(488));
    }

    #[test]
    fn info_bodies_are_dtmf_or_refused() {
        let info = |content_type: &str| {
            request(&format!(
                "INFO sip:echo@127.0.0.1 SIP/2.0\n{HEADERS}CSeq: 2 INFO\n\
                 Content-Type: {content_type}\nContent-Length: 1\n\n5"
            ))
        };
        assert_eq!(unreadable_info(&info("application/dtmf-relay")), None);
        assert_eq!(unreadable_info(&info("application/dtmf")), None);
        let refused = unreadable_info(&info("text/plain")).unwrap();
        assert_eq!(refused.status.code(), 415);
        assert_eq!(
            refused.headers,
            vec![Header::Accept(Accept::new(INFO_TYPES))]
        );
    }
}
