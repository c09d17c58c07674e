//! Debian's ffmpeg (5.1) as a real RTMP peer of `ServerSession`, over TCP on
//! 127.0.0.1: it publishes a 1 kHz tone in each FLV codec it can write (also
//! through an RTMPT tunnel), is refused a name it may not publish, and plays
//! G.711 µ-law the server generates. Needs `ffmpeg` on PATH
//! (`apt-get install ffmpeg`).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use dialtone_rtmp::{
    AudioTag, AudioTagKind, FlvAudioCodec, PublishRefusal, RtmptRequest, RtmptTunnels,
    ServerConfig, ServerEvent, ServerSession,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Long enough for ffmpeg to start, probe and run a few seconds of audio.
const PEER_LIMIT: Duration = Duration::from_secs(30);
const TONE_HZ: f64 = 1000.0;
const PUBLISH_NAME: &str = "call-7f3a-up";
const PLAY_NAME: &str = "call-7f3a-down";

/// An ffmpeg child process, killed (by its PID) if the test ends first.
struct Ffmpeg {
    child: Child,
}

impl Ffmpeg {
    fn spawn(args: &[&str]) -> Result<Ffmpeg> {
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting ffmpeg (apt-get install ffmpeg)")?;
        Ok(Ffmpeg { child })
    }

    async fn exit_status(&mut self) -> Result<ExitStatus> {
        timeout(PEER_LIMIT, self.child.wait())
            .await
            .context("ffmpeg did not exit in time")?
            .context("waiting for ffmpeg")
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        // SIGKILL to the child's PID; a child already reaped is left alone.
        let _ = self.child.start_kill();
    }
}

/// A file removed when the test ends.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the test server does with the one connection it serves.
struct Script {
    /// The only stream name publish or play requests are granted for.
    stream_name: &'static str,
    /// FLV audio tag bodies (timestamp, body) sent to an accepted player,
    /// followed by the end of the stream.
    play_audio: Vec<(u32, Vec<u8>)>,
}

/// What the client did on the connection.
#[derive(Default, Debug)]
struct Observed {
    refused: Vec<String>,
    audio: Vec<ReceivedTag>,
    closed_streams: usize,
}

#[derive(Debug)]
struct ReceivedTag {
    timestamp: u32,
    codec: FlvAudioCodec,
    kind: AudioTagKind,
    payload: Vec<u8>,
}

/// Serves one connection on a free 127.0.0.1 port in a task; returns the
/// port and the task's outcome.
async fn serve(script: Script) -> Result<(u16, tokio::task::JoinHandle<Result<Observed>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    Ok((port, tokio::spawn(serve_one(listener, script))))
}

/// Accepts one connection and drives a `ServerSession` over it until the
/// client hangs up.
async fn serve_one(listener: TcpListener, script: Script) -> Result<Observed> {
    let (mut socket, _) = timeout(PEER_LIMIT, listener.accept())
        .await
        .context("ffmpeg did not connect in time")??;
    let mut session = ServerSession::new(ServerConfig::default());
    let mut observed = Observed::default();
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = timeout(PEER_LIMIT, socket.read(&mut buffer))
            .await
            .context("the client went quiet without closing")?;
        // A reset after ffmpeg's last message is a hang-up like any other.
        let Ok(count @ 1..) = read else {
            return Ok(observed);
        };
        let events = session
            .handle_input(&buffer[..count])
            .context("ffmpeg's input is not valid RTMP")?;
        for event in events {
            handle_event(&mut session, &script, &mut observed, event)?;
        }
        if write_output(&mut session, &mut socket).await.is_err() {
            return Ok(observed);
        }
    }
}

fn handle_event(
    session: &mut ServerSession,
    script: &Script,
    observed: &mut Observed,
    event: ServerEvent,
) -> Result<()> {
    match event {
        ServerEvent::PublishRequested {
            stream_id, name, ..
        } => {
            if name == script.stream_name {
                session.accept_publish(stream_id)?;
            } else {
                session.reject_publish(stream_id, PublishRefusal::Denied, "unknown stream")?;
                observed.refused.push(name);
            }
        }
        ServerEvent::PlayRequested {
            stream_id, name, ..
        } => {
            if name != script.stream_name {
                session.reject_play(stream_id, "unknown stream")?;
                observed.refused.push(name);
                return Ok(());
            }
            session.accept_play(stream_id)?;
            for (timestamp, body) in &script.play_audio {
                session.send_audio(stream_id, *timestamp, body.clone().into())?;
            }
            session.end_stream(stream_id, "end of test audio")?;
        }
        ServerEvent::Audio {
            timestamp, data, ..
        } => {
            let tag = AudioTag::parse(&data).context("ffmpeg wrote an invalid FLV audio tag")?;
            observed.audio.push(ReceivedTag {
                timestamp,
                codec: tag.codec,
                kind: tag.kind,
                payload: tag.payload.to_vec(),
            });
        }
        ServerEvent::StreamClosed { .. } => observed.closed_streams += 1,
    }
    Ok(())
}

async fn write_output(session: &mut ServerSession, socket: &mut TcpStream) -> Result<()> {
    let output = session.take_output();
    if !output.is_empty() {
        timeout(PEER_LIMIT, socket.write_all(&output)).await??;
    }
    Ok(())
}

/// Publishes 3 s of a 1 kHz tone with `encoder_args` to `name` (the server
/// grants only [`PUBLISH_NAME`]); returns what the server saw and ffmpeg's
/// exit status.
async fn publish_tone(encoder_args: &[&str], name: &str) -> Result<(Observed, ExitStatus)> {
    let (port, server) = serve(Script {
        stream_name: PUBLISH_NAME,
        play_audio: Vec::new(),
    })
    .await?;
    let url = format!("rtmp://127.0.0.1:{port}/live/{name}");
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=16000",
        "-t",
        "3",
    ];
    args.extend_from_slice(encoder_args);
    args.extend_from_slice(&["-ac", "1", "-f", "flv", &url]);
    let mut ffmpeg = Ffmpeg::spawn(&args)?;
    let status = ffmpeg.exit_status().await?;
    let observed = timeout(PEER_LIMIT, server)
        .await
        .context("the server task did not finish")???;
    Ok((observed, status))
}

/// Milliseconds of audio covered, from the first to the last timestamp.
fn timestamp_span(audio: &[ReceivedTag]) -> u32 {
    match (audio.first(), audio.last()) {
        (Some(first), Some(last)) => last.timestamp - first.timestamp,
        _ => 0,
    }
}

#[tokio::test]
async fn ffmpeg_publishes_speex_16k() {
    let (observed, status) = publish_tone(&["-c:a", "libspeex", "-ar", "16000"], PUBLISH_NAME)
        .await
        .unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    assert!(observed.refused.is_empty());
    let audio = &observed.audio;
    assert!(
        audio
            .iter()
            .all(|tag| tag.codec == FlvAudioCodec::Speex && tag.kind == AudioTagKind::Frame),
        "{audio:?}"
    );
    // libspeex packs one 20 ms frame per packet: 150 for 3 s.
    assert!((140..=160).contains(&audio.len()), "{} frames", audio.len());
    assert!(audio.iter().all(|tag| !tag.payload.is_empty()));
    assert!(
        timestamp_span(audio) >= 2800,
        "{} ms",
        timestamp_span(audio)
    );
    assert_eq!(
        observed.closed_streams, 1,
        "ffmpeg deletes its stream when done"
    );
}

#[tokio::test]
async fn ffmpeg_publishes_speex_through_an_rtmpt_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_rtmpt(listener));
    let url = format!("rtmpt://127.0.0.1:{port}/live/{PUBLISH_NAME}");
    let mut ffmpeg = Ffmpeg::spawn(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=16000",
        "-t",
        "3",
        "-c:a",
        "libspeex",
        "-ar",
        "16000",
        "-ac",
        "1",
        "-f",
        "flv",
        &url,
    ])
    .unwrap();
    let status = ffmpeg.exit_status().await.unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    let observed = timeout(PEER_LIMIT, server)
        .await
        .expect("the server task did not finish")
        .expect("the server task panicked")
        .unwrap();
    let audio = &observed.audio;
    assert!(audio.iter().all(|tag| tag.codec == FlvAudioCodec::Speex));
    assert!((140..=160).contains(&audio.len()), "{} frames", audio.len());
    // ffmpeg's RTMPT close discards its buffered FCUnpublish/deleteStream
    // before posting /close, so the stream ends with the tunnel (the server
    // task only returns on /close).
    assert_eq!(observed.closed_streams, 0);
}

/// A minimal HTTP/1.1 server for one RTMPT client: keep-alive connections
/// (a new one whenever the client opens one), `Content-Length` bodies, until
/// the client closes its tunnel.
async fn serve_rtmpt(listener: TcpListener) -> Result<Observed> {
    const TUNNEL: &str = "tunnel-1";
    let script = Script {
        stream_name: PUBLISH_NAME,
        play_audio: Vec::new(),
    };
    let mut tunnels = RtmptTunnels::new(ServerConfig::default(), 1);
    let mut observed = Observed::default();
    loop {
        let (mut socket, _) = timeout(PEER_LIMIT, listener.accept())
            .await
            .context("the RTMPT client did not connect in time")??;
        let mut pending = Vec::new();
        while let Some((path, body)) = read_http_request(&mut socket, &mut pending).await? {
            let now = std::time::Instant::now();
            let (status, reply) = match RtmptRequest::parse(&path) {
                Some(RtmptRequest::Open) => ("200 OK", tunnels.open(TUNNEL, now)?),
                Some(RtmptRequest::Send { tunnel, sequence }) => {
                    let reply = tunnels.send(tunnel, sequence, &body, now)?;
                    let session = tunnels.session_mut(tunnel).context("tunnel gone")?;
                    for event in reply.events {
                        handle_event(session, &script, &mut observed, event)?;
                    }
                    // Answers to the events go out now rather than on the next poll.
                    let mut body = reply.body;
                    body.extend(session.take_output());
                    ("200 OK", body)
                }
                Some(RtmptRequest::Idle { tunnel, sequence }) => {
                    ("200 OK", tunnels.idle(tunnel, sequence, now)?.body)
                }
                Some(RtmptRequest::Close { tunnel, .. }) => {
                    let reply = tunnels.close(tunnel)?;
                    write_http_reply(&mut socket, "200 OK", &reply).await?;
                    return Ok(observed);
                }
                None => ("404 Not Found", Vec::new()),
            };
            write_http_reply(&mut socket, status, &reply).await?;
        }
    }
}

/// The path and body of the next request on `socket`, `None` at its end.
async fn read_http_request(
    socket: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> Result<Option<(String, Vec<u8>)>> {
    let mut buffer = [0_u8; 16 * 1024];
    loop {
        if let Some(end) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default();
            let path = match request_line.split(' ').collect::<Vec<_>>().as_slice() {
                ["POST", path, _version] => (*path).to_owned(),
                _ => bail!("not an RTMPT request: {request_line:?}"),
            };
            let length = lines
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map(|(_, value)| value.trim().parse::<usize>())
                .transpose()?
                .unwrap_or(0);
            let body_start = end + 4;
            if pending.len() >= body_start + length {
                let body = pending[body_start..body_start + length].to_vec();
                pending.drain(..body_start + length);
                return Ok(Some((path, body)));
            }
        }
        let read = timeout(PEER_LIMIT, socket.read(&mut buffer))
            .await
            .context("the RTMPT client went quiet")?;
        match read {
            Ok(count @ 1..) => pending.extend_from_slice(&buffer[..count]),
            _ => return Ok(None),
        }
    }
}

async fn write_http_reply(socket: &mut TcpStream, status: &str, body: &[u8]) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-fcs\r\n\
         Content-Length: {}\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await?;
    Ok(())
}

#[tokio::test]
async fn ffmpeg_publishes_g711_mulaw_8k_with_the_tone_intact() {
    let (observed, status) = publish_tone(&["-c:a", "pcm_mulaw", "-ar", "8000"], PUBLISH_NAME)
        .await
        .unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    let audio = &observed.audio;
    assert!(audio
        .iter()
        .all(|tag| tag.codec == FlvAudioCodec::G711MuLaw));
    let samples: Vec<i16> = audio
        .iter()
        .flat_map(|tag| tag.payload.iter().map(|&code| ulaw_to_linear(code)))
        .collect();
    // One byte a sample at 8 kHz.
    assert!(
        (23_000..=25_000).contains(&samples.len()),
        "{} samples",
        samples.len()
    );
    let share = tone_share(&samples, 8000.0);
    assert!(share > 0.9, "1 kHz holds {share:.2} of the energy");
}

#[tokio::test]
async fn ffmpeg_publishes_aac_with_a_sequence_header_first() {
    let encoder = ["-c:a", "aac", "-ar", "44100", "-b:a", "64k"];
    let (observed, status) = publish_tone(&encoder, PUBLISH_NAME).await.unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    let audio = &observed.audio;
    assert!(audio.iter().all(|tag| tag.codec == FlvAudioCodec::Aac));
    let (header, frames) = audio.split_first().expect("AAC audio arrived");
    assert_eq!(header.kind, AudioTagKind::SequenceHeader);
    // AudioSpecificConfig: object type 2 (AAC-LC), rate index 4 (44.1 kHz), mono.
    assert_eq!(header.payload[..2], [0x12, 0x08]);
    assert!(frames.iter().all(|tag| tag.kind == AudioTagKind::Frame));
    // 1024 samples a frame: about 129 for 3 s at 44.1 kHz.
    assert!(frames.len() >= 120, "{} frames", frames.len());
}

#[tokio::test]
async fn ffmpeg_fails_when_its_publish_is_refused() {
    let (observed, status) = publish_tone(&["-c:a", "libspeex", "-ar", "16000"], "not-a-call")
        .await
        .unwrap();
    assert!(!status.success(), "ffmpeg should fail on a refused publish");
    assert_eq!(observed.refused, ["not-a-call"]);
    assert!(observed.audio.is_empty());
}

#[tokio::test]
async fn ffmpeg_plays_generated_mulaw() {
    // 4 s of a 1 kHz tone in 20 ms µ-law frames, all timestamped and sent
    // at once: an RTMP player paces by timestamps, not by arrival.
    const FRAME_SAMPLES: usize = 160;
    let tone: Vec<u8> = (0..4 * 8000)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * TONE_HZ * f64::from(n) / 8000.0;
            linear_to_ulaw((phase.sin() * 8000.0) as i16)
        })
        .collect();
    let play_audio = tone
        .chunks(FRAME_SAMPLES)
        .zip((0..).step_by(20))
        .map(|(frame, timestamp)| {
            let tag = AudioTag {
                codec: FlvAudioCodec::G711MuLaw,
                kind: AudioTagKind::Frame,
                payload: frame,
            };
            (timestamp, tag.to_bytes().expect("µ-law tag"))
        })
        .collect();

    let (port, server) = serve(Script {
        stream_name: PLAY_NAME,
        play_audio,
    })
    .await
    .unwrap();
    let wav = TempFile {
        path: std::env::temp_dir().join(format!("dialtone-rtmp-play-{port}.wav")),
    };
    let url = format!("rtmp://127.0.0.1:{port}/live/{PLAY_NAME}");
    let wav_path = wav.path.to_string_lossy().into_owned();
    let mut ffmpeg = Ffmpeg::spawn(&[
        "-analyzeduration",
        "1000000",
        "-i",
        &url,
        "-t",
        "2",
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        "-y",
        &wav_path,
    ])
    .unwrap();
    let status = ffmpeg.exit_status().await.unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    let observed = timeout(PEER_LIMIT, server)
        .await
        .expect("the server task did not finish")
        .expect("the server task panicked")
        .unwrap();
    assert!(observed.refused.is_empty());

    let bytes = std::fs::read(&wav.path).expect("ffmpeg wrote the wav");
    let (sample_rate, samples) = wav_mono_pcm16(&bytes).unwrap();
    assert_eq!(sample_rate, 8000);
    let seconds = samples.len() as f64 / f64::from(sample_rate);
    assert!((1.9..=2.1).contains(&seconds), "{seconds:.2} s recorded");
    let share = tone_share(&samples, f64::from(sample_rate));
    assert!(share > 0.9, "1 kHz holds {share:.2} of the energy");
}

#[test]
fn ulaw_round_trips_within_its_quantisation() {
    for sample in [-32_000_i16, -1000, -1, 0, 1, 100, 1000, 8000, 32_000] {
        let decoded = ulaw_to_linear(linear_to_ulaw(sample));
        let error = (i32::from(decoded) - i32::from(sample)).abs();
        assert!(
            error <= i32::from(sample).abs() / 16 + 8,
            "{sample} → {decoded}"
        );
    }
}

/// The sample rate and samples of a mono 16-bit PCM WAV file.
fn wav_mono_pcm16(bytes: &[u8]) -> Result<(u32, Vec<i16>)> {
    let read_u16 = |at: usize| -> Result<u16> {
        match bytes.get(at..at + 2) {
            Some(&[low, high]) => Ok(u16::from_le_bytes([low, high])),
            _ => Err(anyhow!("the wav ends at byte {at}")),
        }
    };
    let read_u32 = |at: usize| -> Result<u32> {
        Ok(u32::from(read_u16(at)?) | u32::from(read_u16(at + 2)?) << 16)
    };
    ensure!(
        bytes.get(..4) == Some(b"RIFF") && bytes.get(8..12) == Some(b"WAVE"),
        "not a wav file"
    );
    let mut position = 12;
    let mut sample_rate = None;
    while let Some(id) = bytes.get(position..position + 4) {
        let size = read_u32(position + 4)? as usize;
        let body = position + 8;
        match id {
            b"fmt " => {
                ensure!(read_u16(body + 2)? == 1, "not mono");
                ensure!(read_u16(body + 14)? == 16, "not 16-bit");
                sample_rate = Some(read_u32(body + 4)?);
            }
            b"data" => {
                let data = bytes.get(body..).unwrap_or_default();
                let samples = data
                    .chunks_exact(2)
                    .take(size / 2)
                    .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                    .collect();
                return Ok((sample_rate.context("data chunk before fmt")?, samples));
            }
            _ => {}
        }
        position = body + size + size % 2;
    }
    bail!("no data chunk in the wav")
}

/// The share of the signal's energy at 1 kHz (Goertzel over 20 ms blocks,
/// which hold a whole number of periods).
fn tone_share(samples: &[i16], sample_rate: f64) -> f64 {
    let block = (sample_rate / 50.0) as usize;
    let coefficient = 2.0 * (2.0 * std::f64::consts::PI * TONE_HZ / sample_rate).cos();
    let (mut tone, mut total) = (0.0, 0.0);
    for chunk in samples.chunks_exact(block) {
        let (mut previous, mut before) = (0.0_f64, 0.0_f64);
        for &sample in chunk {
            let current = f64::from(sample) + coefficient * previous - before;
            before = previous;
            previous = current;
        }
        let power = previous * previous + before * before - coefficient * previous * before;
        // For a pure tone on the bin frequency, 2|X|²/N is the block's energy.
        tone += 2.0 * power / block as f64;
        total += chunk.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
    }
    if total == 0.0 {
        0.0
    } else {
        tone / total
    }
}

/// G.711 µ-law encoding (with the usual 0x84 bias).
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let value = i32::from(sample);
    let sign = if value < 0 { 0x80 } else { 0 };
    let magnitude = value.abs().min(CLIP) + BIAS;
    // The highest set bit is between 7 and 14: the segment is its distance from 7.
    let exponent = (24 - magnitude.leading_zeros() as i32).clamp(0, 7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

fn ulaw_to_linear(code: u8) -> i16 {
    let code = !code;
    let exponent = i32::from((code >> 4) & 0x07);
    let mantissa = i32::from(code & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let value = if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    };
    value as i16
}
