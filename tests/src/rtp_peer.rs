//! A client-side RTP endpoint for tests: what a native app behind the
//! WebSocket protocol would run. It sends a tone encoded with a real codec
//! (dialtone-codecs) at real-time pace, optionally dropping packets, and
//! decodes what it receives so a test can check the frequency it heard.
//! It also plays [`ScriptedStream`]s and records every packet it receives
//! ([`RtpPeer::play_and_record`]), as a client or as a SIP far end's media
//! (see [`crate::sipp::SippOptions::media_port`]), for checks of the relay.

use std::f64::consts::PI;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use dialtone_codecs::{new_decoder, new_encoder, Codec, MAX_PAYLOAD_LEN};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::rtp_stream::{ReceivedRtp, ScriptedStream};

/// Deadline for each gateway reply during call set-up.
const REPLY: Duration = Duration::from_secs(10);

/// A recording that has sent all it had to send ends once nothing arrived for this long (and
/// what it waited for did not all come): whatever the relay had in flight has arrived.
pub const RECORD_QUIET: Duration = Duration::from_secs(1);

/// A recording ends at the latest this long after its own sending ended (or after it started,
/// when it sends nothing), even while packets keep coming.
pub const RECORD_LIMIT: Duration = Duration::from_secs(10);

/// The SDP name, clock and payload type the peer answers with for `codec`.
pub fn sdp_format(codec: Codec) -> (&'static str, u32, u8) {
    match codec {
        Codec::Pcmu => ("PCMU/8000", 8000, 0),
        Codec::Pcma => ("PCMA/8000", 8000, 8),
        Codec::G722 => ("G722/8000", 8000, 9),
        Codec::Opus => ("opus/48000/2", 48000, 111),
        Codec::SpeexNarrow => ("speex/8000", 8000, 97),
        Codec::SpeexWide => ("speex/16000", 16000, 98),
        Codec::L16 => ("L16/16000", 16000, 99),
    }
}

pub struct RtpPeer {
    socket: UdpSocket,
    codec: Codec,
    /// The `a=ptime` of its SDP answer, if any.
    ptime_ms: Option<u32>,
    /// Frames sent by [`RtpPeer::exchange`] so far: the next one continues the stream (its
    /// sequence numbers, timestamps and tone phase), as a real sender does.
    frames_sent: std::sync::atomic::AtomicU32,
}

impl RtpPeer {
    pub async fn bind(codec: Codec) -> anyhow::Result<RtpPeer> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(RtpPeer::on(socket, codec))
    }

    /// A peer on a socket made elsewhere (another namespace's, say); non-blocking.
    pub fn from_std(socket: std::net::UdpSocket, codec: Codec) -> anyhow::Result<RtpPeer> {
        Ok(RtpPeer::on(UdpSocket::from_std(socket)?, codec))
    }

    fn on(socket: UdpSocket, codec: Codec) -> RtpPeer {
        RtpPeer {
            socket,
            codec,
            ptime_ms: None,
            frames_sent: Default::default(),
        }
    }

    /// Says `a=ptime:<ms>` in its SDP answer (the packet time it sends and wants).
    pub fn with_ptime(mut self, ms: u32) -> RtpPeer {
        self.ptime_ms = Some(ms);
        self
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// The `cc.audioCodecs` label of the peer's codec.
    pub fn label(&self) -> &'static str {
        sdp_format(self.codec).0
    }

    /// The SDP answer to the gateway's offer: our address, our codec and
    /// telephone-event.
    pub fn answer_sdp(&self) -> anyhow::Result<String> {
        let (name, _, pt) = sdp_format(self.codec);
        let address = self.local_addr()?;
        let (ip, port) = (address.ip(), address.port());
        let ptime = self
            .ptime_ms
            .map_or_else(String::new, |ms| format!("a=ptime:{ms}\r\n"));
        Ok(format!(
            "v=0\r\no=peer 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}\r\n\
             a=rtpmap:101 telephone-event/8000\r\n{ptime}a=sendrecv\r\n"
        ))
    }

    /// Sends `stream` to `to` at its packet time (a missing packet's slot passes in silence)
    /// while recording every RTP packet that arrives; then records on until `expected`
    /// packets arrived in all, or none for [`RECORD_QUIET`], or [`RECORD_LIMIT`] passed.
    pub async fn play_and_record(
        &self,
        to: SocketAddr,
        stream: &ScriptedStream,
        expected: usize,
    ) -> anyhow::Result<Vec<ReceivedRtp>> {
        self.record(Some((to, stream)), None, |received| {
            received.len() >= expected
        })
        .await
    }

    /// [`RtpPeer::play_and_record`], telling `progress` how many packets arrived so far, so
    /// that a test can act on the media flowing (an event, not a guess at a delay).
    pub async fn play_and_record_reporting(
        &self,
        to: SocketAddr,
        stream: &ScriptedStream,
        expected: usize,
        progress: &tokio::sync::watch::Sender<usize>,
    ) -> anyhow::Result<Vec<ReceivedRtp>> {
        self.record(Some((to, stream)), Some(progress), |received| {
            received.len() >= expected
        })
        .await
    }

    /// Records every RTP packet that arrives until `done` holds for what arrived, or none
    /// arrived for [`RECORD_QUIET`], or [`RECORD_LIMIT`] passed.
    pub async fn record_until(
        &self,
        done: impl FnMut(&[ReceivedRtp]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedRtp>> {
        self.record(None, None, done).await
    }

    async fn record(
        &self,
        play: Option<(SocketAddr, &ScriptedStream)>,
        progress: Option<&tokio::sync::watch::Sender<usize>>,
        mut done: impl FnMut(&[ReceivedRtp]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedRtp>> {
        let (mut slots, packet_time) = match play {
            Some((_, stream)) => (stream.slots().into_iter(), stream.packet_time),
            None => (Vec::new().into_iter(), Duration::from_millis(20)),
        };
        let mut playing = play.is_some();
        let mut ticks = tokio::time::interval(packet_time);
        let mut received = Vec::new();
        let mut buffer = [0u8; 2048];
        let mut quiet_at = Instant::now() + RECORD_QUIET;
        let mut limit_at = Instant::now() + RECORD_LIMIT;
        loop {
            if !playing && done(&received) {
                return Ok(received);
            }
            tokio::select! {
                _ = ticks.tick(), if playing => match (slots.next(), play) {
                    (Some(Some(index)), Some((to, stream))) => {
                        self.socket.send_to(&stream.packet(index), to).await?;
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        playing = false;
                        quiet_at = Instant::now() + RECORD_QUIET;
                        limit_at = Instant::now() + RECORD_LIMIT;
                    }
                },
                incoming = self.socket.recv_from(&mut buffer) => {
                    let (length, _) = incoming?;
                    // Anything else on the socket (a STUN probe, say) is no RTP of the stream.
                    if let Ok(packet) = ReceivedRtp::parse(&buffer[..length]) {
                        received.push(packet);
                        if let Some(progress) = progress {
                            progress.send_replace(received.len());
                        }
                    }
                    quiet_at = Instant::now() + RECORD_QUIET;
                }
                _ = tokio::time::sleep_until(quiet_at.min(limit_at)), if !playing => {
                    return Ok(received);
                }
            }
        }
    }

    /// Sends `seconds` of a `hz` tone to `to`, dropping every packet whose
    /// index is a multiple of `drop_every` (0: none), while collecting what
    /// arrives; returns the received audio decoded to PCM at the codec's rate.
    pub async fn exchange(
        &self,
        to: SocketAddr,
        hz: f64,
        seconds: f64,
        drop_every: u32,
    ) -> anyhow::Result<Vec<i16>> {
        Ok(self.exchange_packets(to, hz, seconds, drop_every).await?.0)
    }

    /// [`RtpPeer::exchange`], also returning the audio packets as they arrived, for their
    /// numbering and marker bits.
    pub async fn exchange_packets(
        &self,
        to: SocketAddr,
        hz: f64,
        seconds: f64,
        drop_every: u32,
    ) -> anyhow::Result<(Vec<i16>, Vec<ReceivedRtp>)> {
        let mut packets = Vec::new();
        let (_, clock, payload_type) = sdp_format(self.codec);
        let mut encoder = new_encoder(self.codec)?;
        let mut decoder = new_decoder(self.codec)?;
        let samples = self.codec.frame_samples();
        let rate = f64::from(self.codec.sample_rate().hz());
        let frames = (seconds * 50.0) as u32;
        let mut pcm = vec![0i16; samples];
        let mut payload = vec![0u8; MAX_PAYLOAD_LEN];
        let mut packet = Vec::with_capacity(12 + MAX_PAYLOAD_LEN);
        let mut heard = Vec::new();
        let mut decoded = vec![0i16; samples];
        let mut incoming = vec![0u8; 2048];
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let ssrc = 0x5eed_u32;
        let first = self
            .frames_sent
            .fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
        for index in 0..frames {
            let frame = first.wrapping_add(index);
            fill_tone(&mut pcm, hz, rate, u64::from(frame) * samples as u64);
            let length = encoder.encode(&pcm, &mut payload)?;
            let sequence = frame as u16;
            let timestamp = frame.wrapping_mul(clock / 50);
            packet.clear();
            packet.extend_from_slice(&[0x80, payload_type]);
            packet.extend_from_slice(&sequence.to_be_bytes());
            packet.extend_from_slice(&timestamp.to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&payload[..length]);
            if drop_every == 0 || index % drop_every != 0 {
                self.socket.send_to(&packet, to).await?;
            }
            // Collect what arrived during this frame.
            loop {
                tokio::select! {
                    received = self.socket.recv_from(&mut incoming) => {
                        let (length, _) = received?;
                        if length > 12 && incoming[1] & 0x7f == payload_type {
                            if let Ok(count) = decoder.decode(&incoming[12..length], &mut decoded) {
                                heard.extend_from_slice(&decoded[..count]);
                            }
                            if let Ok(packet) = ReceivedRtp::parse(&incoming[..length]) {
                                packets.push(packet);
                            }
                        }
                    }
                    _ = ticks.tick() => break,
                }
            }
        }
        Ok((heard, packets))
    }
}

/// Fills `out` with a `hz` tone at `rate`, continuing from sample
/// `first_sample` of the tone, at about -12 dBFS.
pub fn fill_tone(out: &mut [i16], hz: f64, rate: f64, first_sample: u64) {
    for (offset, sample) in out.iter_mut().enumerate() {
        let t = (first_sample + offset as u64) as f64 / rate;
        *sample = (8000.0 * (2.0 * PI * hz * t).sin()) as i16;
    }
}

/// The frequency with the most energy in `pcm` between 100 Hz and 4 kHz,
/// by a plain DFT over 10 Hz steps (slow but ample for a few seconds).
pub fn dominant_hz(pcm: &[i16], rate: u32) -> anyhow::Result<f64> {
    let skip = (rate / 2) as usize; // the first half second: set-up, jitter buffer
    let tail = pcm
        .get(skip..)
        .filter(|t| t.len() > rate as usize / 2)
        .context("too little audio heard")?;
    let window = &tail[..tail.len().min(rate as usize)];
    let mut best = (0.0, 0.0);
    let mut hz = 100.0;
    while hz <= 4000.0 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (n, &sample) in window.iter().enumerate() {
            let angle = 2.0 * PI * hz * n as f64 / f64::from(rate);
            re += f64::from(sample) * angle.cos();
            im += f64::from(sample) * angle.sin();
        }
        let power = re * re + im * im;
        if power > best.1 {
            best = (hz, power);
        }
        hz += 10.0;
    }
    Ok(best.0)
}

/// A call from a session with a client RTP point: START_CALL with
/// `cc.mediaTransport: ["RTP"]`, the gateway's SDP_OFFER answered for
/// `peer`, until CALL_STARTED. Returns the callId and where the gateway's
/// client point listens.
pub async fn start_rtp_call(
    ws: &mut crate::ws_client::WsClient,
    session_id: &str,
    b_uri: &str,
    peer: &RtpPeer,
) -> anyhow::Result<(String, SocketAddr)> {
    let (call_id, offer_sdp) = offer_rtp_call(ws, session_id, b_uri, peer.label()).await?;
    let point = sdp_audio_addr(&offer_sdp).context("the gateway's SDP_OFFER")?;
    ws.send_json(&serde_json::json!({
        "type": "SDP_ANSWER", "sessionId": session_id, "callId": call_id, "sdp": peer.answer_sdp()?,
    }))
    .await?;
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    Ok((call_id, point))
}

/// A call with a client RTP point offering `codec_label` that the client never answers: no
/// SDP_ANSWER, so the gateway never hears from the client's point. Returns the callId once
/// CALL_STARTED came.
pub async fn start_unanswered_rtp_call(
    ws: &mut crate::ws_client::WsClient,
    session_id: &str,
    b_uri: &str,
    codec_label: &str,
) -> anyhow::Result<String> {
    let (call_id, _) = offer_rtp_call(ws, session_id, b_uri, codec_label).await?;
    ws.recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
        .await?;
    Ok(call_id)
}

/// START_CALL with a client RTP point offering `codec_label`, up to the gateway's SDP_OFFER
/// for that point; returns the callId and the offer.
pub async fn offer_rtp_call(
    ws: &mut crate::ws_client::WsClient,
    session_id: &str,
    b_uri: &str,
    codec_label: &str,
) -> anyhow::Result<(String, String)> {
    let start = serde_json::json!({
        "type": "START_CALL", "sessionId": session_id, "bUri": b_uri,
        "cc": {"audioCodecs": [codec_label], "mediaTransport": ["RTP"]},
    });
    let call_id = ws.start_call(&start, REPLY).await?;
    let offer = ws.recv_type("SDP_OFFER", REPLY).await?;
    anyhow::ensure!(offer["callId"] == call_id.as_str(), "{offer}");
    let offer_sdp = offer["sdp"].as_str().context("SDP_OFFER without sdp")?;
    anyhow::ensure!(
        offer_sdp.contains(codec_label),
        "offer lacks {codec_label}: {offer_sdp}"
    );
    Ok((call_id, offer_sdp.to_owned()))
}

/// Where an SDP's first audio stream goes: its `m=audio` port at its `c=` address (the
/// media-level one, else the session's).
pub fn sdp_audio_addr(sdp: &str) -> anyhow::Result<SocketAddr> {
    let (mut session_ip, mut media_ip, mut port) = (None, None, None);
    let (mut in_media, mut in_audio) = (false, false);
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            if port.is_some() {
                break;
            }
            in_media = true;
            in_audio = media.starts_with("audio ");
            if in_audio {
                port = media.split(' ').nth(1).and_then(|p| p.parse::<u16>().ok());
            }
        } else if let Some(address) = line.strip_prefix("c=IN IP4 ") {
            let ip = address
                .split('/')
                .next()
                .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok());
            if in_audio {
                media_ip = ip;
            } else if !in_media {
                session_ip = ip;
            }
        }
    }
    let ip = media_ip
        .or(session_ip)
        .with_context(|| format!("no c=IN IP4 address for the audio in {sdp:?}"))?;
    let port = port.with_context(|| format!("no m=audio port in {sdp:?}"))?;
    Ok(SocketAddr::from((ip, port)))
}

/// RMS level of `pcm` in dBFS after its first half second (a full-scale
/// sine is about -3 dBFS, silence far below -60).
pub fn rms_dbfs(pcm: &[i16], rate: u32) -> f64 {
    let tail = pcm.get(rate as usize / 2..).unwrap_or_default();
    if tail.is_empty() {
        return f64::NEG_INFINITY;
    }
    let power = tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len() as f64;
    10.0 * (power / f64::from(i16::MAX).powi(2)).log10()
}

/// A spoken prompt (espeak-ng) as baresip's audio source: mono 16-bit
/// 8 kHz, repeated to last `seconds` at least.
pub fn speech_wav(path: &std::path::Path, text: &str, seconds: f64) -> anyhow::Result<()> {
    let spoken = path.with_extension("spoken.wav");
    let status = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&spoken)
        .arg(text)
        .status()
        .context("running espeak-ng (apt-get install espeak-ng)")?;
    anyhow::ensure!(status.success(), "espeak-ng failed: {status}");
    let repeats = (seconds / 2.0).ceil().max(1.0) as u32;
    let status = std::process::Command::new("sox")
        .arg(&spoken)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(path)
        .args(["repeat", &repeats.to_string()])
        .status()
        .context("running sox")?;
    anyhow::ensure!(status.success(), "sox failed: {status}");
    Ok(())
}

/// Writes a mono 16-bit 8 kHz WAV: half a second of silence, then each
/// digit as a 100 ms DTMF tone with 200 ms of silence after it, then
/// `tail_seconds` of silence (baresip hangs up when its source file ends).
pub fn write_dtmf_wav(
    path: &std::path::Path,
    digits: &str,
    tail_seconds: f64,
) -> anyhow::Result<()> {
    use dialtone_codecs::{DtmfDigit, DtmfGenerator, SampleRate, DEFAULT_DTMF_LEVEL_DBFS};
    let mut samples: Vec<i16> = vec![0; 4000];
    let mut frame = [0i16; 160];
    for key in digits.chars() {
        let digit = DtmfDigit::from_char(key).with_context(|| format!("{key:?} is no DTMF key"))?;
        let mut tone = DtmfGenerator::new(
            SampleRate::Hz8000,
            digit,
            Duration::from_millis(100),
            DEFAULT_DTMF_LEVEL_DBFS,
        )?;
        while !tone.is_finished() {
            tone.fill_frame(&mut frame)?;
            samples.extend_from_slice(&frame);
        }
        samples.extend(std::iter::repeat_n(0, 1600));
    }
    samples.extend(std::iter::repeat_n(0, (tail_seconds * 8000.0) as usize));
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, wav).with_context(|| format!("writing {}", path.display()))
}

/// The DTMF digits heard in a mono 16-bit 8 kHz WAV (baresip's recordings),
/// in order.
pub fn dtmf_in_wav(path: &std::path::Path) -> anyhow::Result<Vec<char>> {
    use dialtone_codecs::{DtmfDetector, DtmfEvent, SampleRate};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .and_then(|at| bytes.get(at + 8..))
        .context("no data chunk")?;
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut detector = DtmfDetector::new(SampleRate::Hz8000);
    let mut digits = Vec::new();
    for frame in samples.chunks_exact(160) {
        if let Some(DtmfEvent::Started(digit)) = detector.process(frame)? {
            digits.push(digit.as_char());
        }
    }
    Ok(digits)
}

/// What the client plays in [`srtp_call_tones_both_ways`].
pub const SRTP_CALL_TONE_HZ: f64 = 1000.0;

/// An SRTP call between the client's RTP point and baresip, as both hear it: plays a
/// [`SRTP_CALL_TONE_HZ`] tone from the client's point while baresip plays its own (440 Hz);
/// checks that the SIP leg took baresip's stream (each packet counted
/// there passed SRTP authentication; baresip 1.0 sends one plain RTCP
/// packet before its SRTCP is keyed, which is rejected); ends the call
/// from the client; checks what each side heard.
pub async fn srtp_call_tones_both_ways(
    gateway: &crate::gateway::Gateway,
    ws: &mut crate::ws_client::WsClient,
    session_id: &str,
    call_id: &str,
    point: std::net::SocketAddr,
    peer: &RtpPeer,
    baresip: &crate::baresip::Baresip,
) -> anyhow::Result<()> {
    let heard = peer.exchange(point, SRTP_CALL_TONE_HZ, 3.0, 0).await?;
    let stats = gateway.status()?["media"][call_id].clone();
    anyhow::ensure!(
        stats["packetsReceived"].as_u64().is_some_and(|n| n > 50)
            && stats["srtpRejected"].as_u64().is_some_and(|n| n <= 2),
        "the SIP leg: {stats}"
    );
    ws.send_json(
        &serde_json::json!({"type": "HANGUP_CALL", "sessionId": session_id, "callId": call_id}),
    )
    .await?;
    ws.recv_type("CALL_FINISHED", REPLY).await?;
    baresip.wait_call_closed(REPLY)?;
    let recording = baresip.wait_heard_recording_finished(REPLY)?;
    let baresip_heard = crate::audio::analyze(&recording, SRTP_CALL_TONE_HZ)?.dominant_hz;
    let client_heard = dominant_hz(&heard, 8000)?;
    anyhow::ensure!(
        (baresip_heard - SRTP_CALL_TONE_HZ).abs() < 15.0,
        "baresip heard {baresip_heard} Hz"
    );
    anyhow::ensure!(
        (client_heard - 440.0).abs() < 15.0,
        "the client heard {client_heard} Hz"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_audio_address() -> anyhow::Result<()> {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\n\
                   c=IN IP4 10.0.0.9\r\nm=audio 30002 RTP/AVP 0 101\r\na=sendrecv\r\n";
        assert_eq!(sdp_audio_addr(sdp)?, "127.0.0.1:30002".parse()?);
        let media_level = "v=0\nc=IN IP4 127.0.0.1\nm=audio 4000 RTP/AVP 0\nc=IN IP4 127.0.0.2\n";
        assert_eq!(sdp_audio_addr(media_level)?, "127.0.0.2:4000".parse()?);
        assert!(sdp_audio_addr("v=0\nm=audio 4000 RTP/AVP 0\n").is_err());
        Ok(())
    }

    #[test]
    fn dtmf_wav_round_trip() -> anyhow::Result<()> {
        let file = tempfile::NamedTempFile::with_suffix(".wav")?;
        write_dtmf_wav(file.path(), "159#*0", 0.2)?;
        assert_eq!(dtmf_in_wav(file.path())?, ['1', '5', '9', '#', '*', '0']);
        Ok(())
    }
}
