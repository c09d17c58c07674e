//! The rig's SIP peers themselves, without a gateway: baresip registers at Kamailio and two
//! baresips call each other through it, hearing each other's tone and DTMF; every SIPp UAS
//! scenario runs its SIP flow against a SIPp or baresip caller, directly or through Kamailio's
//! fixed callee (user 3000). No peer process outlives its test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::audio;
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::kamailio::{Kamailio, KamailioOptions};
use dialtone_tests::sipp::{Sipp, SippOptions, UacScenario, UasScenario};
use dialtone_tests::wait::wait_until;

const T: Duration = Duration::from_secs(10);

/// SIPp instances here finish in about a second; a short global timeout keeps a broken
/// scenario from holding the test for long.
fn sipp_opts(sip_port: Option<u16>) -> SippOptions {
    SippOptions {
        sip_port,
        timeout: Duration::from_secs(10),
        ..SippOptions::default()
    }
}

/// A peer process the test started: its PID and something unique on its command line (the
/// instance dir), to check after drop that it is gone (the PID may be reused by an unrelated
/// process, which the marker tells apart).
struct Started {
    pid: u32,
    marker: PathBuf,
}

impl Started {
    fn of_baresip(b: &Baresip) -> Started {
        Started {
            pid: b.pid(),
            marker: b.dir().to_owned(),
        }
    }

    fn of_sipp(s: &Sipp) -> Started {
        Started {
            pid: s.pid(),
            marker: s.dir().to_owned(),
        }
    }
}

fn ensure_gone(started: &[Started]) -> anyhow::Result<()> {
    for s in started {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.pid)).unwrap_or_default();
        let marker = s.marker.to_string_lossy();
        ensure!(
            !String::from_utf8_lossy(&cmdline).contains(marker.as_ref()),
            "process {} ({marker}) survived its guard",
            s.pid
        );
    }
    Ok(())
}

fn phone(
    kam: &Kamailio,
    user: &str,
    auto_answer: bool,
    source: Option<&Path>,
) -> anyhow::Result<Baresip> {
    Baresip::start(BaresipOptions {
        account: Some(BaresipAccount::rig_user(user, kam.sip_addr())?),
        auto_answer,
        audio_source: source.map(Path::to_owned),
        record: true,
        ..BaresipOptions::default()
    })
}

#[test]
fn baresip_calls_baresip_through_kamailio() -> anyhow::Result<()> {
    let kam = Kamailio::start(KamailioOptions::default())?;
    let tones = tempfile::tempdir()?;
    let tone_1000 = tones.path().join("tone1000.wav");
    audio::tone_wav(&tone_1000, 1000.0, 30.0, 8000)?;

    // Callee 2000 plays the default 440 Hz tone; caller 1001 plays 1000 Hz.
    let callee = phone(&kam, "2000", true, None)?;
    let caller = phone(&kam, "1001", false, Some(&tone_1000))?;
    let started = [Started::of_baresip(&callee), Started::of_baresip(&caller)];
    for (user, bs) in [("2000", &callee), ("1001", &caller)] {
        let port = format!(":{}", bs.sip_addr().port());
        kam.wait_for_contacts(user, |c| c.iter().any(|u| u.contains(&port)), T)
            .with_context(|| format!("{user} registered"))?;
    }

    caller.dial(&format!("sip:2000@{}", kam.sip_addr()))?;
    let out = caller.wait_call_established(T)?;
    let inc = callee.wait_call_established(T)?;
    ensure!(out["direction"] == "outgoing" && inc["direction"] == "incoming");
    ensure!(inc["peeruri"] == caller.aor(), "{inc}");
    ensure!(out["id"] == inc["id"], "one Call-ID: {out} / {inc}");

    callee.wait_heard_audio(1.5, T)?;
    caller.wait_heard_audio(1.5, T)?;
    caller.send_dtmf("12#")?;
    wait_until(T, || Ok(callee.received_dtmf() == ['1', '2', '#']))
        .with_context(|| format!("DTMF; callee got {:?}", callee.received_dtmf()))?;

    caller.hangup()?;
    let closed = caller.wait_call_closed(T)?;
    ensure!(closed["param"] == "Connection reset by user", "{closed}");
    let closed = callee.wait_call_closed(T)?;
    ensure!(closed["param"] == "Connection reset by peer", "{closed}");

    for (bs, hz) in [(&callee, 1000.0), (&caller, 440.0)] {
        let rec = bs.wait_heard_recording_finished(T)?;
        let report = audio::analyze(&rec, hz)?;
        ensure!(
            report.dominant_near(hz, 5.0) && report.target_share > 0.8,
            "{} heard {report:?} in {}, expected {hz} Hz",
            bs.aor(),
            rec.display()
        );
    }

    // A second call the other way: 1001 does not auto-answer, so it rings until accepted.
    callee.dial(&format!("sip:1001@{}", kam.sip_addr()))?;
    let incoming = caller.wait_incoming(T)?;
    ensure!(incoming["peeruri"] == callee.aor(), "{incoming}");
    callee.wait_ringing(T)?;
    caller.accept()?;
    caller.wait_call_established(T)?;
    callee.wait_call_established(T)?;
    caller.hangup()?;
    callee.wait_call_closed(T)?;
    caller.wait_call_closed(T)?;

    drop((caller, callee));
    ensure_gone(&started)
}

#[test]
fn baresip_with_a_wrong_password_fails_fast() -> anyhow::Result<()> {
    let kam = Kamailio::start(KamailioOptions::default())?;
    let start = std::time::Instant::now();
    let result = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount {
            user: "1002".to_owned(),
            password: "wrong".to_owned(),
            registrar: kam.sip_addr(),
        }),
        ..BaresipOptions::default()
    });
    let err = match result {
        Ok(bs) => anyhow::bail!("registered with a wrong password: {}", bs.aor()),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("401 Unauthorized"), "{err}");
    // The rig keeps a failed instance's dir for the post-mortem and names its log in the
    // error; this failure is expected, so clean up.
    let log = err.split(" log (").nth(1).and_then(|r| r.split(')').next());
    if let Some(dir) = log.and_then(|l| Path::new(l).parent()) {
        if dir.starts_with(std::env::temp_dir())
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("baresip-"))
        {
            std::fs::remove_dir_all(dir)?;
        }
    }
    ensure!(start.elapsed() < Duration::from_secs(5), "{err}");
    ensure!(kam.contacts("1002")?.is_empty());
    Ok(())
}

#[test]
fn sipp_busy_rejects_sipp_and_baresip_callers_through_kamailio() -> anyhow::Result<()> {
    // One port for the successive SIPp callees, so one Kamailio can route user 3000 to them.
    let callee_port = dialtone_tests::free_port();
    let kam = Kamailio::start(KamailioOptions {
        fixed_callee: Some(format!("127.0.0.1:{callee_port}").parse()?),
        ..KamailioOptions::default()
    })?;
    let mut started = Vec::new();

    // SIPp caller (From user "sipp": Kamailio does not challenge it).
    let uas = Sipp::uas(UasScenario::Busy, sipp_opts(Some(callee_port)))?;
    let uac = Sipp::uac(UacScenario::Reject, kam.sip_addr(), "3000", sipp_opts(None))?;
    started.extend([Started::of_sipp(&uas), Started::of_sipp(&uac)]);
    uac.wait_success(T)?;
    uas.wait_success(T)?;
    ensure!(uas.count_calls_successful()? == 1);
    let got = uac.wait_for_message("SIP/2.0 486 Busy Here", T)?;
    ensure!(!got.sent);
    // Kamailio ACKs the 486 hop by hop.
    ensure!(
        uas.received_requests("ACK").len() == 1,
        "{}",
        uas.messages_text()
    );
    drop((uac, uas));

    // baresip caller 1001 (answers Kamailio's challenge).
    let uas = Sipp::uas(UasScenario::Busy, sipp_opts(Some(callee_port)))?;
    let caller = phone(&kam, "1001", false, None)?;
    started.extend([Started::of_sipp(&uas), Started::of_baresip(&caller)]);
    caller.dial(&format!("sip:3000@{}", kam.sip_addr()))?;
    let closed = caller.wait_call_closed(T)?;
    ensure!(closed["param"] == "486 Busy Here", "{closed}");
    uas.wait_success(T)?;
    let invite = &uas.received_requests("INVITE")[..];
    ensure!(
        invite.len() == 1
            && invite[0]
                .header("From")
                .is_some_and(|f| f.contains("1001@")),
        "{invite:?}"
    );
    drop((caller, uas));
    ensure_gone(&started)
}

#[test]
fn sipp_uas_scenarios_run_their_flows() -> anyhow::Result<()> {
    let mut started = Vec::new();

    // ring_forever through Kamailio: the 487 must carry both Vias of the INVITE.
    let callee_port = dialtone_tests::free_port();
    let kam = Kamailio::start(KamailioOptions {
        fixed_callee: Some(format!("127.0.0.1:{callee_port}").parse()?),
        ..KamailioOptions::default()
    })?;
    let uas = Sipp::uas(UasScenario::RingForever, sipp_opts(Some(callee_port)))?;
    let uac = Sipp::uac(UacScenario::Cancel, kam.sip_addr(), "3000", sipp_opts(None))?;
    started.extend([Started::of_sipp(&uas), Started::of_sipp(&uac)]);
    uac.wait_success(T)?;
    uas.wait_success(T)?;
    // Each message once: retransmissions under load (INVITE, CANCEL and its 200, 487) are fine.
    let mut flow: Vec<String> = Vec::new();
    for m in uas.messages() {
        if !flow.iter().any(|l| l == m.first_line()) {
            flow.push(m.first_line().to_owned());
        }
    }
    ensure!(
        flow.iter()
            .map(|l| &l[..l.len().min(15)])
            .collect::<Vec<_>>()
            == [
                "INVITE sip:3000",
                "SIP/2.0 100 Try",
                "SIP/2.0 180 Rin",
                "CANCEL sip:3000",
                "SIP/2.0 200 OK",
                "SIP/2.0 487 Req",
                "ACK sip:3000@12",
            ],
        "{flow:#?}"
    );
    let terminated = uas.wait_for_message("SIP/2.0 487", T)?;
    ensure!(
        terminated.text.matches("\nVia:").count() == 2,
        "{}",
        terminated.text
    );
    ensure!(uac.wait_for_message("SIP/2.0 487", T).is_ok());
    drop((uac, uas));

    // RTP echo: what is sent to the media address comes back.
    let uas = Sipp::uas(
        UasScenario::Answer,
        SippOptions {
            rtp_echo: true,
            ..sipp_opts(None)
        },
    )?;
    started.push(Started::of_sipp(&uas));
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    rtp.set_read_timeout(Some(T))?;
    let packet = [0x80u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42, 0xff, 0xff];
    rtp.send_to(&packet, uas.media_addr())?;
    let mut buf = [0u8; 64];
    let (len, from) = rtp.recv_from(&mut buf)?;
    ensure!(buf[..len] == packet && from == uas.media_addr(), "{from}");
    drop(uas);

    // answer / not_found / decline, caller straight to the callee.
    for (scenario, uac_scenario, final_status) in [
        (UasScenario::Answer, UacScenario::Basic, 200),
        (UasScenario::NotFound, UacScenario::Reject, 404),
        (UasScenario::Decline, UacScenario::Reject, 603),
    ] {
        let uas = Sipp::uas(scenario, sipp_opts(None))?;
        let uac = Sipp::uac(uac_scenario, uas.sip_addr(), "3000", sipp_opts(None))?;
        started.extend([Started::of_sipp(&uas), Started::of_sipp(&uac)]);
        uac.wait_success(T)
            .with_context(|| format!("{scenario:?} caller"))?;
        uas.wait_success(T)
            .with_context(|| format!("{scenario:?} callee"))?;
        let finals: Vec<u16> = uas
            .messages()
            .iter()
            .filter(|m| m.sent && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE")))
            .filter_map(|m| m.status())
            .filter(|s| *s >= 200)
            .collect();
        ensure!(finals == [final_status], "{scenario:?}: {finals:?}");
    }
    // answer_no_telephone_event: PCMU only in its answer, every INFO answered and traced.
    let uas = Sipp::uas(UasScenario::AnswerNoTelephoneEvent, sipp_opts(None))?;
    let uac = Sipp::uac(UacScenario::Info, uas.sip_addr(), "3000", sipp_opts(None))?;
    started.extend([Started::of_sipp(&uas), Started::of_sipp(&uac)]);
    uas.wait_success(T)?;
    let bodies: Vec<String> = uas
        .received_requests("INFO")
        .iter()
        .map(|m| m.body().lines().next().unwrap_or_default().to_owned())
        .collect();
    ensure!(bodies == ["Signal=5", "Signal=#"], "{bodies:?}");
    let answer = uas.wait_for_message("SIP/2.0 200 OK", T)?;
    ensure!(
        answer.body().contains("m=audio") && !answer.body().contains("telephone-event"),
        "{}",
        answer.text
    );
    uac.wait_success(T)?;
    drop((uac, uas));

    // answer_then_reinvite, with an unregistered baresip calling it straight: baresip must
    // answer the hold re-INVITE (recvonly) and the call stays up until it hangs up.
    let uas = Sipp::uas(UasScenario::AnswerThenReinvite, sipp_opts(None))?;
    let caller = Baresip::start(BaresipOptions::default())?;
    started.extend([Started::of_sipp(&uas), Started::of_baresip(&caller)]);
    caller.dial(&format!("sip:3000@{}", uas.sip_addr()))?;
    caller.wait_call_established(T)?;
    let reinvite_answer = uas.wait_for_message("a=recvonly", T)?;
    ensure!(
        reinvite_answer.status() == Some(200),
        "{}",
        reinvite_answer.text
    );
    uas.wait_for_message("CSeq: 1 ACK", T)?;
    caller.hangup()?;
    caller.wait_call_closed(T)?;
    uas.wait_success(T)?;
    let reinvite = uas
        .messages()
        .into_iter()
        .find(|m| m.sent && m.is_request("INVITE"))
        .context("no re-INVITE sent")?;
    ensure!(reinvite.body().contains("a=sendonly"), "{}", reinvite.text);
    drop((caller, uas));

    // silent: the INVITE (and its retransmissions) get nothing back; SIPp ends by itself.
    let uas = Sipp::uas(
        UasScenario::Silent,
        SippOptions {
            pause: Some(Duration::from_millis(1500)),
            ..sipp_opts(None)
        },
    )?;
    let uac = Sipp::uac(UacScenario::Basic, uas.sip_addr(), "3000", sipp_opts(None))?;
    started.extend([Started::of_sipp(&uas), Started::of_sipp(&uac)]);
    uas.wait_success(T)?;
    let msgs = uas.messages();
    ensure!(
        msgs.iter().all(|m| !m.sent) && msgs.iter().filter(|m| m.is_request("INVITE")).count() >= 2,
        "{}",
        uas.messages_text()
    );
    ensure!(uac.is_running()?, "the caller should still be waiting");
    drop((uac, uas));

    drop(kam);
    ensure_gone(&started)
}
