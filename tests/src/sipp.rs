//! SIPp 3.6 as a scripted SIP peer: mostly a callee (UAS) that fails in precise ways (busy,
//! decline, not found, rings forever, never answers, re-INVITEs), for the gateway's failure
//! paths.
//!
//! Scenario files are committed in `tests/rig/sipp/` (compiled in, written to the instance's
//! temp dir); each file's header comment gives its exact SIP flow. Each instance runs one
//! scenario on 127.0.0.1 (`-i 127.0.0.1 -bind_local`, media `-mi 127.0.0.1`, control socket
//! `-ci 127.0.0.1`) on free ports, handles `-m` calls (default 1) and exits by itself: 0 when
//! every call completed its scenario, 1 when some call failed (unexpected message, receive
//! timeout, failed regex check), 255 when the global `-timeout` hit first (`-timeout_error`),
//! 254 when it could not bind. Everything it sent and received is traced to a file
//! (`-trace_msg`), read with [`Sipp::messages`].
//!
//! To reach a UAS through the rig's Kamailio, point [`crate::KamailioOptions::fixed_callee`]
//! at [`Sipp::sip_addr`] and call user `3000`; Kamailio only challenges requests whose From
//! user is one of its users (`1001`, `1002`, `2000`, `load<N>`).

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::process::{ChildGuard, STOP_GRACE};

/// The SIPp binary (Debian package `sip-tester`).
pub const SIPP_BIN: &str = "/usr/bin/sipp";

/// Deadline for a UAS to bind its SIP port after spawning.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default global timeout (`-timeout`): SIPp gives up and exits (255) after this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports besides SIP: media (RTP echo) = base, base + 2 (SIPp's video echo), control = base + 3.
const PORT_BLOCK: u16 = 4;

/// The callee scenarios (`tests/rig/sipp/<name>.xml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UasScenario {
    /// INVITE → 100, 180, 200 (SDP: PCMU + telephone-event/101); ACK; BYE → 200.
    Answer,
    /// INVITE → 100, 486 Busy Here; ACK.
    Busy,
    /// INVITE → 100, 603 Decline; ACK.
    Decline,
    /// INVITE → 100, 404 Not Found; ACK.
    NotFound,
    /// INVITE → 100, 180; CANCEL → 200, then 487 to the INVITE; ACK.
    RingForever,
    /// INVITE → nothing at all; the call ends silently after [`SippOptions::pause`]
    /// (default 10 s); retransmissions and CANCEL meanwhile are ignored (but traced).
    Silent,
    /// Like `Answer`, then after [`SippOptions::pause`] (default 500 ms) SIPp sends a
    /// re-INVITE (hold: SDP version 2, `a=sendonly`), expects 200 with SDP, ACKs; BYE → 200.
    AnswerThenReinvite,
    /// `AnswerThenReinvite` with `a=inactive`: a hold during which the callee sends nothing.
    AnswerThenInactive,
    /// Like `Answer` with an RFC 4028 session timer the callee refreshes
    /// (`Session-Expires: 3;refresher=uas`): one refresh re-INVITE after 1.5 s, then none; a
    /// BYE within 1.2 s of that refresh fails the scenario, a later one completes it.
    SessionTimer,
    /// Like `Answer` but the SDP has PCMU only (no telephone-event); any number of INFO → 200
    /// (bodies traced) until BYE → 200.
    AnswerNoTelephoneEvent,
    /// `Answer` with `a=ptime:30` in its SDP: a far end that sends and prefers 30 ms packets.
    AnswerPtime30,
    /// Like `AnswerThenReinvite`, with `Session-Expires: 18446744073709551615;refresher=uas`
    /// in the 200 and in the re-INVITE (same SDP, sendrecv): a session timer that overflows
    /// any clock.
    SessionExpiresOverflow,
    /// `SessionExpiresOverflow` without the header in the 200: only the re-INVITE has it.
    ReinviteSessionExpiresOverflow,
    /// Like `AnswerThenReinvite`, the re-INVITE offering G.722 before PCMU (`9 0 101`,
    /// sendrecv) once the call runs on PCMU.
    ReinviteG722First,
    /// INVITE → 100, 180; waits for the CANCEL, then answers the CANCEL 200 and the INVITE 200
    /// (SDP as `Answer`): a 200 that crossed the CANCEL. Expects ACK, then BYE → 200.
    AnswerCrossingCancel,
    /// Like `Answer`, but a BYE gets no answer (nor do its retransmissions): a far end that
    /// stopped answering. Ends silently after [`SippOptions::pause`] (default 60 s).
    AnswerIgnoringBye,
    /// A registrar: REGISTER → 200 (Expires: 300), then the next REGISTER of that Call-ID
    /// (refresh or unregistration) gets nothing. Ends silently after the pause (default 60 s).
    RegisterThenIgnore,
    /// INVITE → 100, 183 with SDP (as `Answer`'s), then after [`SippOptions::pause`]
    /// (default 4 s) 200 with the same SDP; ACK; BYE → 200: early media before the answer.
    EarlyMedia,
    /// Answers like `Answer`, then after the pause transfers the caller: REFER to
    /// [`SippOptions::refer_to`]; takes the NOTIFYs until one ends the subscription, then
    /// expects the caller's BYE.
    AnswerThenRefer,
    /// Answers, then sends a REFER the gateway must refuse (603); expects BYE.
    AnswerThenRefusedRefer,
    /// Answers, takes a REFER (202), NOTIFYs `SIP/2.0 200 OK` at once; expects BYE.
    AnswerThenTakeRefer,
    /// Answers, then takes two re-INVITEs: the hold (answered `recvonly`) and the resume
    /// (`sendrecv`); expects BYE.
    AnswerTakeHoldAndResume,
    /// Answers, refuses the first re-INVITE with 491 (glare), takes the retry (`recvonly`);
    /// expects BYE.
    AnswerGlareThenTakeHold,
    /// `EarlyMedia` with a reliable 183 (`Require: 100rel`, `RSeq: 1`): expects a PRACK and
    /// answers it 200 before the pause.
    EarlyMedia100rel,
    /// INVITE → 100, 503 Service Unavailable; ACK: a proxy out of service.
    Unavailable,
    /// REGISTER → 503 Service Unavailable: a registrar out of service.
    RegisterUnavailable,
}

impl UasScenario {
    pub const ALL: [UasScenario; 26] = [
        UasScenario::Answer,
        UasScenario::Busy,
        UasScenario::Decline,
        UasScenario::NotFound,
        UasScenario::RingForever,
        UasScenario::Silent,
        UasScenario::AnswerThenReinvite,
        UasScenario::AnswerThenInactive,
        UasScenario::AnswerNoTelephoneEvent,
        UasScenario::SessionTimer,
        UasScenario::AnswerPtime30,
        UasScenario::SessionExpiresOverflow,
        UasScenario::ReinviteSessionExpiresOverflow,
        UasScenario::ReinviteG722First,
        UasScenario::AnswerCrossingCancel,
        UasScenario::AnswerIgnoringBye,
        UasScenario::RegisterThenIgnore,
        UasScenario::EarlyMedia,
        UasScenario::EarlyMedia100rel,
        UasScenario::AnswerThenRefer,
        UasScenario::AnswerThenRefusedRefer,
        UasScenario::AnswerThenTakeRefer,
        UasScenario::AnswerTakeHoldAndResume,
        UasScenario::AnswerGlareThenTakeHold,
        UasScenario::Unavailable,
        UasScenario::RegisterUnavailable,
    ];

    /// The file stem in `tests/rig/sipp/`.
    pub fn name(self) -> &'static str {
        match self {
            UasScenario::Answer => "answer",
            UasScenario::Busy => "busy",
            UasScenario::Decline => "decline",
            UasScenario::NotFound => "not_found",
            UasScenario::RingForever => "ring_forever",
            UasScenario::Silent => "silent",
            UasScenario::AnswerThenReinvite => "answer_then_reinvite",
            UasScenario::AnswerThenInactive => "answer_then_inactive",
            UasScenario::AnswerNoTelephoneEvent => "answer_no_telephone_event",
            UasScenario::SessionTimer => "session_timer",
            UasScenario::AnswerPtime30 => "answer_ptime30",
            UasScenario::SessionExpiresOverflow => "session_expires_overflow",
            UasScenario::ReinviteSessionExpiresOverflow => "reinvite_session_expires_overflow",
            UasScenario::ReinviteG722First => "reinvite_g722_first",
            UasScenario::AnswerCrossingCancel => "answer_crossing_cancel",
            UasScenario::AnswerIgnoringBye => "answer_ignoring_bye",
            UasScenario::RegisterThenIgnore => "register_then_ignore",
            UasScenario::EarlyMedia => "early_media",
            UasScenario::EarlyMedia100rel => "early_media_100rel",
            UasScenario::AnswerThenRefer => "answer_then_refer",
            UasScenario::AnswerThenRefusedRefer => "answer_then_refused_refer",
            UasScenario::AnswerThenTakeRefer => "answer_then_take_refer",
            UasScenario::AnswerTakeHoldAndResume => "answer_take_hold_and_resume",
            UasScenario::AnswerGlareThenTakeHold => "answer_glare_then_take_hold",
            UasScenario::Unavailable => "unavailable",
            UasScenario::RegisterUnavailable => "register_unavailable",
        }
    }

    fn xml(self) -> Cow<'static, str> {
        const REINVITE: &str = include_str!("../rig/sipp/answer_then_reinvite.xml");
        const ANSWER: &str = include_str!("../rig/sipp/answer.xml");
        const OVERFLOW: &str = include_str!("../rig/sipp/session_expires_overflow.xml");
        Cow::Borrowed(match self {
            UasScenario::Unavailable => {
                return Cow::Owned(
                    include_str!("../rig/sipp/busy.xml")
                        .replace("486 Busy Here", "503 Service Unavailable")
                        .replace("dialtone busy", "dialtone unavailable"),
                )
            }
            UasScenario::RegisterUnavailable => {
                include_str!("../rig/sipp/register_unavailable.xml")
            }
            UasScenario::AnswerPtime30 => {
                return Cow::Owned(
                    ANSWER
                        .replace("a=ptime:20", "a=ptime:30")
                        .replace("dialtone answer", "dialtone answer_ptime30"),
                )
            }
            UasScenario::ReinviteSessionExpiresOverflow => {
                // The first occurrence is the 200's header.
                return Cow::Owned(
                    OVERFLOW
                        .replacen(
                            "      Session-Expires: 18446744073709551615;refresher=uas\n",
                            "",
                            1,
                        )
                        .replace(
                            "dialtone session_expires_overflow",
                            "dialtone reinvite_session_expires_overflow",
                        ),
                );
            }
            UasScenario::AnswerIgnoringBye => {
                // Everything up to the BYE as `Answer`; then silence.
                let (until_bye, _) = ANSWER
                    .split_once("  <recv request=\"BYE\"/>")
                    .unwrap_or((ANSWER, ""));
                return Cow::Owned(
                    until_bye.replace("dialtone answer", "dialtone answer_ignoring_bye")
                        + "  <recv request=\"BYE\"/>\n\n  <pause/>\n</scenario>\n",
                );
            }
            UasScenario::RegisterThenIgnore => include_str!("../rig/sipp/register_then_ignore.xml"),
            UasScenario::SessionExpiresOverflow => OVERFLOW,
            UasScenario::ReinviteG722First => include_str!("../rig/sipp/reinvite_g722_first.xml"),
            UasScenario::AnswerThenInactive => {
                return Cow::Owned(
                    REINVITE
                        .replace("a=sendonly", "a=inactive")
                        .replace("answer_then_reinvite", "answer_then_inactive"),
                )
            }
            UasScenario::Answer => ANSWER,
            UasScenario::Busy => include_str!("../rig/sipp/busy.xml"),
            UasScenario::Decline => include_str!("../rig/sipp/decline.xml"),
            UasScenario::NotFound => include_str!("../rig/sipp/not_found.xml"),
            UasScenario::RingForever => include_str!("../rig/sipp/ring_forever.xml"),
            UasScenario::Silent => include_str!("../rig/sipp/silent.xml"),
            UasScenario::AnswerThenReinvite => REINVITE,
            UasScenario::AnswerNoTelephoneEvent => {
                include_str!("../rig/sipp/answer_no_telephone_event.xml")
            }
            UasScenario::SessionTimer => include_str!("../rig/sipp/session_timer.xml"),
            UasScenario::AnswerCrossingCancel => {
                include_str!("../rig/sipp/answer_crossing_cancel.xml")
            }
            UasScenario::EarlyMedia => include_str!("../rig/sipp/early_media.xml"),
            UasScenario::EarlyMedia100rel => include_str!("../rig/sipp/early_media_100rel.xml"),
            UasScenario::AnswerThenRefer => include_str!("../rig/sipp/answer_then_refer.xml"),
            UasScenario::AnswerThenRefusedRefer => {
                include_str!("../rig/sipp/answer_then_refused_refer.xml")
            }
            UasScenario::AnswerThenTakeRefer => {
                include_str!("../rig/sipp/answer_then_take_refer.xml")
            }
            UasScenario::AnswerTakeHoldAndResume => {
                include_str!("../rig/sipp/answer_take_hold_and_resume.xml")
            }
            UasScenario::AnswerGlareThenTakeHold => {
                include_str!("../rig/sipp/answer_glare_then_take_hold.xml")
            }
        })
    }

    /// The scenario's `<pause/>` length (`-d`) unless [`SippOptions::pause`] says otherwise.
    fn default_pause(self) -> Option<Duration> {
        match self {
            UasScenario::Silent => Some(Duration::from_secs(10)),
            UasScenario::AnswerIgnoringBye | UasScenario::RegisterThenIgnore => {
                Some(Duration::from_secs(60))
            }
            UasScenario::EarlyMedia | UasScenario::EarlyMedia100rel => Some(Duration::from_secs(4)),
            UasScenario::AnswerThenReinvite
            | UasScenario::AnswerThenInactive
            | UasScenario::SessionExpiresOverflow
            | UasScenario::ReinviteSessionExpiresOverflow
            | UasScenario::ReinviteG722First
            | UasScenario::AnswerThenRefusedRefer => Some(Duration::from_millis(500)),
            // Time for the test to hear the transferor before the transfer.
            UasScenario::AnswerThenRefer => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// Caller scenarios, for checking the rig itself (the UAS scenarios) without a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UacScenario {
    /// SIPp's built-in `uac`: INVITE; 100/180 optional; 200 → ACK; pause (`-d`); BYE → 200.
    /// Ignores Record-Route (the rig's Kamailio routes its ACK/BYE by R-URI anyway).
    Basic,
    /// `uac_reject.xml`: INVITE; 100/180 optional; expects 404, 486 or 603 and ACKs it.
    Reject,
    /// `uac_cancel.xml`: INVITE; waits for 180; CANCEL → 200; expects 487 and ACKs it.
    Cancel,
    /// `uac_info.xml`: INVITE (PCMU only); 200 → ACK; INFO `Signal=5`, INFO `Signal=#`
    /// (`application/dtmf-relay`), each → 200; BYE → 200.
    Info,
    /// `uac_ack_reinvite.xml`: INVITE (PCMU only); 200 → ACK and a re-INVITE (hold) back to
    /// back; its 200 → ACK; BYE → 200.
    AckThenReinvite,
}

impl UacScenario {
    pub fn name(self) -> &'static str {
        match self {
            UacScenario::Basic => "uac",
            UacScenario::Reject => "uac_reject",
            UacScenario::Cancel => "uac_cancel",
            UacScenario::Info => "uac_info",
            UacScenario::AckThenReinvite => "uac_ack_reinvite",
        }
    }

    fn xml(self) -> Option<&'static str> {
        match self {
            UacScenario::Basic => None,
            UacScenario::Reject => Some(include_str!("../rig/sipp/uac_reject.xml")),
            UacScenario::Cancel => Some(include_str!("../rig/sipp/uac_cancel.xml")),
            UacScenario::Info => Some(include_str!("../rig/sipp/uac_info.xml")),
            UacScenario::AckThenReinvite => Some(include_str!("../rig/sipp/uac_ack_reinvite.xml")),
        }
    }
}

/// How to run a [`Sipp`] instance.
#[derive(Debug, Clone)]
pub struct SippOptions {
    /// SIP port to listen on (`None`: a free one). Lets a test start Kamailio with a fixed
    /// callee first and run several UAS instances on that port, one after the other.
    pub sip_port: Option<u16>,
    /// Global timeout (`-timeout`, with `-timeout_error`): SIPp exits 255 when it hits.
    pub timeout: Duration,
    /// Length of the scenario's `<pause/>` (`-d`): how long `Silent` stays silent, how long
    /// `AnswerThenReinvite` waits before its re-INVITE, how long `UacScenario::Basic` holds the
    /// call. `None`: the scenario's default.
    pub pause: Option<Duration>,
    /// Echo RTP received on the media port back to its sender (`-rtp_echo`).
    pub rtp_echo: bool,
    /// Calls to handle before exiting (`-m`).
    pub calls: u32,
    /// The port a UAS scenario's SDP names for its media (`[media_port]`) instead of SIPp's
    /// own: a socket the test binds, so the test sees every RTP packet sent to the callee and
    /// sends the callee's RTP itself. `None`: SIPp's media port.
    pub media_port: Option<u16>,
    /// The Refer-To value a transferring scenario sends (`[refer_to]`).
    pub refer_to: Option<String>,
}

impl Default for SippOptions {
    fn default() -> Self {
        SippOptions {
            sip_port: None,
            timeout: DEFAULT_TIMEOUT,
            pause: None,
            rtp_echo: false,
            calls: 1,
            media_port: None,
            refer_to: None,
        }
    }
}

/// One SIP message from SIPp's `-trace_msg` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedMessage {
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// The message, lines joined with `\n` (CRs removed).
    pub text: String,
}

impl TracedMessage {
    /// The start line, e.g. `INVITE sip:3000@127.0.0.1:5060 SIP/2.0` or `SIP/2.0 486 Busy Here`.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    /// Whether this is a `method` request.
    pub fn is_request(&self, method: &str) -> bool {
        self.first_line()
            .split_once(' ')
            .is_some_and(|(m, rest)| m == method && !rest.is_empty())
    }

    /// The status code, if this is a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.first_line().strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// The body (after the first empty line), empty if none.
    pub fn body(&self) -> &str {
        self.text.split_once("\n\n").map_or("", |(_, b)| b)
    }

    /// The first value of header `name` (case-insensitive; no compact forms).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }
}

/// A running SIPp, stopped by PID on drop if it has not exited by itself.
pub struct Sipp {
    guard: ChildGuard,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    name: &'static str,
    sip_port: u16,
    media_port: u16,
    keep_dir: bool,
}

impl Sipp {
    /// Starts a UAS running `scenario` and waits (up to [`READY_TIMEOUT`]) until it listens on
    /// its SIP port.
    pub fn uas(scenario: UasScenario, opts: SippOptions) -> anyhow::Result<Sipp> {
        let pause = opts.pause.or(scenario.default_pause());
        let mut extra = Vec::new();
        if matches!(
            scenario,
            UasScenario::Silent | UasScenario::AnswerIgnoringBye | UasScenario::RegisterThenIgnore
        ) {
            // Retransmissions (and a CANCEL) during the pause must not end the call.
            extra.push("-pause_msg_ign".to_owned());
        }
        let mut xml = scenario.xml();
        if let Some(port) = opts.media_port {
            xml = Cow::Owned(xml.replace("[media_port]", &port.to_string()));
        }
        if let Some(refer_to) = &opts.refer_to {
            xml = Cow::Owned(xml.replace("[refer_to]", refer_to));
        }
        let sipp = Sipp::spawn(scenario.name(), Some(&xml), &opts, pause, &extra)?;
        if let Err(e) = sipp.wait_listening() {
            let mut sipp = sipp;
            sipp.keep_dir = true;
            return Err(e);
        }
        Ok(sipp)
    }

    /// Starts a caller running `scenario` against `target`, calling user `service`
    /// (e.g. `3000` through Kamailio); for the rig's self-tests.
    pub fn uac(
        scenario: UacScenario,
        target: SocketAddr,
        service: &str,
        opts: SippOptions,
    ) -> anyhow::Result<Sipp> {
        let extra = vec!["-s".to_owned(), service.to_owned(), target.to_string()];
        Sipp::spawn(scenario.name(), scenario.xml(), &opts, opts.pause, &extra)
    }

    fn spawn(
        name: &'static str,
        xml: Option<&str>,
        opts: &SippOptions,
        pause: Option<Duration>,
        extra: &[String],
    ) -> anyhow::Result<Sipp> {
        if !Path::new(SIPP_BIN).exists() {
            bail!("{SIPP_BIN} not found: install SIPp (apt-get install sip-tester)");
        }
        if opts.calls == 0 {
            bail!("SippOptions::calls is 0");
        }
        let dir = crate::instance_dir("sipp-")?;
        let dir_path = dir.path().to_owned();
        let sip_port = opts.sip_port.unwrap_or_else(crate::free_port);
        let base = crate::ports::free_port_block(PORT_BLOCK);
        let (media_port, ctrl_port) = (base, base + 3);

        let mut cmd = Command::new(SIPP_BIN);
        match xml {
            Some(xml) => {
                let path = dir_path.join(format!("{name}.xml"));
                std::fs::write(&path, xml).with_context(|| format!("writing {name}.xml"))?;
                cmd.arg("-sf").arg(path);
            }
            None => {
                cmd.args(["-sn", name]);
            }
        }
        cmd.args(["-i", "127.0.0.1", "-bind_local", "-t", "u1"])
            .args(["-p", &sip_port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &media_port.to_string()])
            .args(["-ci", "127.0.0.1", "-cp", &ctrl_port.to_string()])
            .args(["-m", &opts.calls.to_string()])
            .args([
                "-timeout",
                &format!("{}ms", opts.timeout.as_millis().max(1)),
            ])
            .arg("-timeout_error")
            .arg("-nostdin")
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(dir_path.join("messages.log"))
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir_path.join("errors.log"))
            .arg("-trace_stat")
            .arg("-stf")
            .arg(dir_path.join("stats.csv"))
            .args(["-fd", "1"])
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(dir_path.join("screen.log"));
        if let Some(pause) = pause {
            cmd.args(["-d", &pause.as_millis().to_string()]);
        }
        if opts.rtp_echo {
            cmd.arg("-rtp_echo");
        }
        cmd.args(extra).current_dir(&dir_path);
        let guard = ChildGuard::spawn(&format!("sipp-{name}"), cmd, &dir_path.join("sipp.log"))?;
        Ok(Sipp {
            guard,
            dir: Some(dir),
            dir_path,
            name,
            sip_port,
            // SIPp binds its own media port (-mp) even when the SDP names the test's.
            media_port: opts.media_port.unwrap_or(media_port),
            keep_dir: false,
        })
    }

    fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if udp_port_bound_by(self.guard.pid(), self.sip_port) {
                return Ok(());
            }
            if let Some(status) = self.guard.try_wait()? {
                bail!(
                    "sipp {} exited ({status}) during startup\n{}\n{}",
                    self.name,
                    self.errors_text(),
                    self.guard.tail_report()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "sipp {} not listening on udp:{} within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.sip_addr(),
                    self.guard.tail_report()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `127.0.0.1:<sip port>` (UDP).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.sip_port))
    }

    /// Where its SDP says to send RTP: [`SippOptions::media_port`] if set, else SIPp's own
    /// (`-mp`; echoed back with [`SippOptions::rtp_echo`]).
    pub fn media_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.media_port))
    }

    /// The scenario's name (file stem).
    pub fn scenario_name(&self) -> &str {
        self.name
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The instance's temp dir (scenario, `messages.log`, `errors.log`, `stats.csv`,
    /// `screen.log`, `sipp.log`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The raw `-trace_msg` file: every SIP message SIPp sent or received so far, each after a
    /// `----- <timestamp>` line and `UDP message received [N] bytes :` / `UDP message sent
    /// (N bytes):`.
    pub fn messages_text(&self) -> String {
        std::fs::read_to_string(self.dir_path.join("messages.log")).unwrap_or_default()
    }

    /// [`Sipp::messages_text`], parsed, in order.
    pub fn messages(&self) -> Vec<TracedMessage> {
        parse_messages(&self.messages_text())
    }

    /// Requests of `method` SIPp received (e.g. `"INFO"`: their bodies are the DTMF).
    pub fn received_requests(&self, method: &str) -> Vec<TracedMessage> {
        self.messages()
            .into_iter()
            .filter(|m| !m.sent && m.is_request(method))
            .collect()
    }

    /// Waits until a traced message contains `pattern` (e.g. `"SIP/2.0 487"`, `"CANCEL sip:"`);
    /// returns the first such message. Fails at the deadline or once SIPp exited without it.
    pub fn wait_for_message(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> anyhow::Result<TracedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.guard.try_wait()?;
            let messages = self.messages();
            if let Some(m) = messages.iter().find(|m| m.text.contains(pattern)) {
                return Ok(m.clone());
            }
            let now = Instant::now();
            if exited.is_some() || now >= deadline {
                let seen: Vec<String> = messages
                    .iter()
                    .map(|m| format!("{} {}", if m.sent { ">" } else { "<" }, m.first_line()))
                    .collect();
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("timed out after {timeout:?}"),
                };
                bail!(
                    "sipp {}: {why} without a message containing {pattern:?}; messages: {seen:#?}\n{}",
                    self.name,
                    self.errors_text()
                );
            }
            std::thread::sleep(crate::wait::POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Waits until SIPp exits by itself; see the module doc for the codes.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.guard.wait_exit(timeout)
    }

    /// Waits for SIPp to exit and fails unless it exited 0 (every call completed its
    /// scenario); the error has SIPp's error file and the message flow.
    pub fn wait_success(&self, timeout: Duration) -> anyhow::Result<()> {
        let status = self.wait_exit(timeout)?;
        if status.success() {
            return Ok(());
        }
        let flow: Vec<String> = self
            .messages()
            .iter()
            .map(|m| format!("{} {}", if m.sent { ">" } else { "<" }, m.first_line()))
            .collect();
        bail!(
            "sipp {} exited {status}; messages: {flow:#?}\n{}\n{}",
            self.name,
            self.errors_text(),
            self.guard.tail_report()
        )
    }

    /// `SuccessfulCall(C)` from the statistics file (written every second and at exit).
    pub fn count_calls_successful(&self) -> anyhow::Result<u64> {
        self.stat("SuccessfulCall(C)")
    }

    /// `FailedCall(C)` from the statistics file.
    pub fn count_calls_failed(&self) -> anyhow::Result<u64> {
        self.stat("FailedCall(C)")
    }

    fn stat(&self, column: &str) -> anyhow::Result<u64> {
        let path = self.dir_path.join("stats.csv");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        stat_from_csv(&text, column).with_context(|| format!("{column} in {}", path.display()))
    }

    /// SIPp's error file (unexpected messages, timeouts, scenario errors); empty if none.
    pub fn errors_text(&self) -> String {
        std::fs::read_to_string(self.dir_path.join("errors.log")).unwrap_or_default()
    }

    /// SIPp's stdout/stderr (the final statistics screen, fatal errors).
    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// Whether the process still runs.
    pub fn is_running(&self) -> anyhow::Result<bool> {
        Ok(self.guard.try_wait()?.is_none())
    }

    /// Stops SIPp by PID if still running (SIGTERM, then SIGKILL after [`STOP_GRACE`]);
    /// returns its exit status.
    pub fn stop(&self) -> anyhow::Result<ExitStatus> {
        self.guard.stop(STOP_GRACE)
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[dialtone-tests] stopping sipp {}: {e:#}", self.name);
        }
        if self.keep_dir || crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, &format!("sipp {}", self.name));
            }
        }
    }
}

/// Splits a `-trace_msg` file into messages.
fn parse_messages(text: &str) -> Vec<TracedMessage> {
    let mut out = Vec::new();
    let mut current: Option<(bool, Vec<&str>)> = None;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    while let Some(line) = lines.next() {
        if line.starts_with("-----------------------------------------------") {
            if let Some((sent, body)) = current.take() {
                out.push(finish_message(sent, &body));
            }
            let kind = lines.next().unwrap_or_default();
            let sent = if kind.contains("message sent") {
                true
            } else if kind.contains("message received") {
                false
            } else {
                continue;
            };
            // A blank line separates the header from the message.
            let _ = lines.next();
            current = Some((sent, Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push(line);
        }
    }
    if let Some((sent, body)) = current {
        out.push(finish_message(sent, &body));
    }
    out
}

fn finish_message(sent: bool, lines: &[&str]) -> TracedMessage {
    let mut end = lines.len();
    while end > 0 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    TracedMessage {
        sent,
        text: lines[..end].join("\n"),
    }
}

/// The value of `column` in the last row of a SIPp `-trace_stat` CSV (`;`-separated).
fn stat_from_csv(text: &str, column: &str) -> anyhow::Result<u64> {
    let mut rows = text.lines().filter(|l| !l.trim().is_empty());
    let header = rows.next().context("empty statistics file")?;
    let index = header
        .split(';')
        .position(|c| c == column)
        .with_context(|| format!("no column {column}"))?;
    let last = rows.next_back().context("no statistics row yet")?;
    let value = last
        .split(';')
        .nth(index)
        .with_context(|| format!("short row {last:?}"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("bad value {value:?}"))
}

/// Whether process `pid` has a UDP socket bound to 127.0.0.1:`port` (from /proc/net/udp and
/// the process's fds), so "listening" means *this* SIPp, not whoever else took the port.
fn udp_port_bound_by(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&local.as_str()))
                .then(|| fields.get(9).map(|s| (*s).to_owned()))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .any(|inode| inodes.contains(&inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str =
        "----------------------------------------------- 2026-11-22 03:15:03.188798\n\
UDP message received [506] bytes :\n\
\n\
INVITE sip:3000@127.0.0.1:17060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:17070;branch=z9hG4bK-1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 5\r\n\
\r\n\
v=0\r\n\
\n\
----------------------------------------------- 2026-11-22 03:15:03.188929\n\
UDP message sent (240 bytes):\n\
\n\
SIP/2.0 486 Busy Here\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\
\r\n\
\n";

    #[test]
    fn parses_message_trace() {
        let msgs = parse_messages(TRACE);
        assert_eq!(msgs.len(), 2);
        assert!(!msgs[0].sent);
        assert!(msgs[0].is_request("INVITE"));
        assert!(!msgs[0].is_request("INFO"));
        assert_eq!(msgs[0].header("cseq"), Some("1 INVITE"));
        assert_eq!(msgs[0].body(), "v=0");
        assert!(msgs[1].sent);
        assert_eq!(msgs[1].status(), Some(486));
        assert_eq!(msgs[1].first_line(), "SIP/2.0 486 Busy Here");
        assert_eq!(msgs[1].body(), "");
    }

    #[test]
    fn reads_stats_csv() -> anyhow::Result<()> {
        let csv = "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(C);\n\
                   a;0;0;0;\n\
                   b;1;1;0;\n";
        assert_eq!(stat_from_csv(csv, "SuccessfulCall(C)")?, 1);
        assert_eq!(stat_from_csv(csv, "FailedCall(C)")?, 0);
        assert!(stat_from_csv(csv, "Nope").is_err());
        assert!(stat_from_csv("StartTime;\n", "StartTime").is_err());
        Ok(())
    }

    #[test]
    fn scenario_files_are_distinct() {
        for s in UasScenario::ALL {
            assert!(
                s.xml()
                    .contains(&format!("<scenario name=\"dialtone {}\">", s.name())),
                "{s:?}"
            );
        }
    }
}
