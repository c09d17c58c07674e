//! ffmpeg as a real RTMP client: publishes a tone or a WAV file in one of the FLV audio codecs
//! Flash-era clients use ([`Publisher`]), plays a stream into a WAV file ([`Player`]), and
//! checks that a publish is refused ([`expect_refused`]).
//!
//! Two ffmpeg builds are used ([`ffmpeg_for`]):
//! - Debian 12's `/usr/bin/ffmpeg` (5.1, package `ffmpeg`) for Speex, G.711 µ-law and A-law,
//!   AAC and Nellymoser;
//! - for Opus, which Debian's 5.1 refuses in FLV, the static ffmpeg 9 bundled by the PyPI
//!   package `imageio-ffmpeg` (pinned to [`IMAGEIO_FFMPEG_VERSION`]), which writes and reads
//!   enhanced-RTMP Opus (FourCC `Opus` audio tags). `scripts/test.sh` installs it into the venv
//!   [`OPUS_FFMPEG_VENV`] under the repo root.
//!
//! Every ffmpeg runs with `-progress pipe:1`: its stdout carries `out_time_us=…` lines (the
//! media time written so far), which is how [`Publisher::wait_publishing`] and
//! [`Player::wait_receiving`] tell that media flows. ffmpeg's RTMP client returns from its
//! publish handshake right after *sending* `publish`, without waiting for the server's
//! `NetStream.Publish.Start`, so the publisher's log alone cannot show that the server
//! accepted it; a refusal shows as a write error (`Broken pipe`, or `Server error: …` when the
//! server answers with an error status) and a non-zero exit.
//!
//! ```no_run
//! # fn demo(port: u16) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use dialtone_tests::audio;
//! use dialtone_tests::ffmpeg::{AudioSource, FlvAudio, Player, Publisher};
//! let url = format!("rtmp://127.0.0.1:{port}/live/call-1");
//! let publisher = Publisher::start(&url, FlvAudio::Speex, AudioSource::Tone { hz: 1000.0, seconds: 8.0 })?;
//! publisher.wait_publishing(Duration::from_secs(10))?;
//! let dir = tempfile::tempdir()?;
//! let wav = dir.path().join("heard.wav");
//! let player = Player::start(&url, &wav, 3.0)?;
//! player.wait_receiving(Duration::from_secs(10))?;
//! assert!(player.wait_exit(Duration::from_secs(20))?.success());
//! assert!(audio::analyze(&wav, 1000.0)?.dominant_near(1000.0, 20.0));
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::process::{ChildGuard, Logged, STOP_GRACE};
use crate::wait::wait_for;

/// Debian's ffmpeg (package `ffmpeg`).
pub const DEBIAN_FFMPEG: &str = "/usr/bin/ffmpeg";

/// The pinned `imageio-ffmpeg` release whose static ffmpeg (9.0.2) does enhanced-RTMP Opus.
/// `scripts/test.sh` installs exactly this version; keep the two in step.
pub const IMAGEIO_FFMPEG_VERSION: &str = "0.8.1";

/// The venv holding `imageio-ffmpeg`, relative to the repo root (under the git-ignored
/// `target/`, independent of `CARGO_TARGET_DIR`).
pub const OPUS_FFMPEG_VENV: &str = "target/tools/venv";

/// Environment variable naming an ffmpeg to use for Opus instead of the venv's.
pub const OPUS_FFMPEG_ENV: &str = "DIALTONE_OPUS_FFMPEG";

/// Media time a publisher must have written (with the process still running) before
/// [`Publisher::wait_publishing`] believes the server took it: a server that refuses closes
/// the connection or answers with an error status, and ffmpeg fails on its next writes, well
/// within this much audio sent at real-time pace.
pub const PUBLISHING_AFTER: Duration = Duration::from_millis(300);

/// How long [`expect_refused`]'s publisher plays if it is (wrongly) not refused.
const REFUSED_TONE_SECONDS: f64 = 30.0;

/// Sample rate of the generated tone before the encoder resamples it.
const TONE_RATE: u32 = 48_000;

/// An FLV audio codec ffmpeg can publish over RTMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlvAudio {
    /// Speex wideband, 16 kHz (the only rate FLV allows for Speex).
    Speex,
    /// G.711 µ-law, 8 kHz.
    PcmMuLaw,
    /// G.711 A-law, 8 kHz.
    PcmALaw,
    /// AAC-LC, 44.1 kHz (ffmpeg's native encoder).
    Aac,
    /// Opus, 48 kHz, as enhanced RTMP (needs the static ffmpeg, see [`ffmpeg_for`]).
    Opus,
    /// Nellymoser, 16 kHz.
    Nellymoser,
    /// Linear PCM, 16-bit little-endian, 22.05 kHz (FLV SoundFormat 3).
    LinearPcm,
}

impl FlvAudio {
    /// Every codec, in declaration order.
    pub const ALL: [FlvAudio; 7] = [
        FlvAudio::Speex,
        FlvAudio::PcmMuLaw,
        FlvAudio::PcmALaw,
        FlvAudio::Aac,
        FlvAudio::Opus,
        FlvAudio::Nellymoser,
        FlvAudio::LinearPcm,
    ];

    /// Short lowercase name, for stream names and file names.
    pub fn name(self) -> &'static str {
        match self {
            FlvAudio::Speex => "speex",
            FlvAudio::PcmMuLaw => "pcmu",
            FlvAudio::PcmALaw => "pcma",
            FlvAudio::Aac => "aac",
            FlvAudio::Opus => "opus",
            FlvAudio::Nellymoser => "nellymoser",
            FlvAudio::LinearPcm => "pcm",
        }
    }

    /// The sample rate the encoder runs at (what a player decodes to).
    pub fn sample_rate(self) -> u32 {
        match self {
            FlvAudio::Speex | FlvAudio::Nellymoser => 16_000,
            FlvAudio::PcmMuLaw | FlvAudio::PcmALaw => 8_000,
            FlvAudio::Aac => 44_100,
            FlvAudio::Opus => 48_000,
            FlvAudio::LinearPcm => 22_050,
        }
    }

    /// ffmpeg output options selecting this encoder (mono, at [`FlvAudio::sample_rate`]).
    pub fn encoder_args(self) -> Vec<String> {
        let codec: &[&str] = match self {
            FlvAudio::Speex => &["-c:a", "libspeex"],
            FlvAudio::PcmMuLaw => &["-c:a", "pcm_mulaw"],
            FlvAudio::PcmALaw => &["-c:a", "pcm_alaw"],
            FlvAudio::Aac => &["-c:a", "aac", "-b:a", "64k"],
            FlvAudio::Opus => &["-c:a", "libopus", "-b:a", "48k"],
            FlvAudio::Nellymoser => &["-c:a", "nellymoser"],
            FlvAudio::LinearPcm => &["-c:a", "pcm_s16le"],
        };
        let mut args: Vec<String> = codec.iter().map(|s| (*s).to_owned()).collect();
        args.extend([
            "-ar".to_owned(),
            self.sample_rate().to_string(),
            "-ac".to_owned(),
            "1".to_owned(),
        ]);
        args
    }

    /// The decoder a [`Player`] of this codec forces (`-c:a` before `-i`), if not ffmpeg's
    /// default: libspeex for Speex, since ffmpeg 5.1's native Speex decoder distorts a loud
    /// tone (a 1 kHz tone at -9 dBFS came out at -4 dBFS with 30 % of its energy at 1 kHz).
    pub fn decoder(self) -> Option<&'static str> {
        (self == FlvAudio::Speex).then_some("libspeex")
    }

    /// Whether the codec travels as enhanced RTMP (FourCC audio tags), which only the static
    /// ffmpeg writes and reads.
    pub fn is_enhanced(self) -> bool {
        self == FlvAudio::Opus
    }
}

/// The ffmpeg binary that can publish `codec`: Debian's, or for Opus the static one from
/// `imageio-ffmpeg` ([`opus_ffmpeg`]).
pub fn ffmpeg_for(codec: FlvAudio) -> anyhow::Result<PathBuf> {
    if codec.is_enhanced() {
        return opus_ffmpeg();
    }
    let path = PathBuf::from(DEBIAN_FFMPEG);
    if !path.exists() {
        bail!("{DEBIAN_FFMPEG} is missing (apt-get install ffmpeg)");
    }
    Ok(path)
}

/// The static ffmpeg that does enhanced-RTMP Opus: `$DIALTONE_OPUS_FFMPEG` if set, else the one
/// bundled by `imageio-ffmpeg` in the venv [`OPUS_FFMPEG_VENV`] (asked of the venv's python,
/// once per process).
pub fn opus_ffmpeg() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(OPUS_FFMPEG_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("{OPUS_FFMPEG_ENV}={} does not exist", path.display());
        }
        return Ok(path);
    }
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate_imageio_ffmpeg().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_imageio_ffmpeg() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests crate has no parent dir")?;
    let venv = root.join(OPUS_FFMPEG_VENV);
    let python = venv.join("bin/python");
    let install_hint = format!(
        "the static ffmpeg for Opus over RTMP is missing: run scripts/test.sh, or \
         `/usr/bin/python3 -m venv {OPUS_FFMPEG_VENV} && {OPUS_FFMPEG_VENV}/bin/pip install \
         imageio-ffmpeg=={IMAGEIO_FFMPEG_VERSION}` in {} (Debian package python3-venv), or set \
         {OPUS_FFMPEG_ENV}",
        root.display()
    );
    if !python.exists() {
        bail!("{install_hint} ({} not found)", python.display());
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{install_hint} ({} failed: {})",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!("{install_hint} (imageio_ffmpeg named {})", path.display());
    }
    Ok(path)
}

/// What a [`Publisher`] sends.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioSource {
    /// A sine tone at half full scale (like [`crate::audio::tone_wav`]) for `seconds`.
    Tone { hz: f64, seconds: f64 },
    /// A WAV file, played once.
    Wav(PathBuf),
}

impl AudioSource {
    /// ffmpeg input options (with `-re`: real-time pace, as a live client sends).
    fn input_args(&self) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            AudioSource::Tone { hz, seconds } => {
                if !(*hz > 0.0 && *seconds > 0.0) {
                    bail!("bad tone: hz={hz} seconds={seconds}");
                }
                vec![
                    "-re".into(),
                    "-f".into(),
                    "lavfi".into(),
                    "-i".into(),
                    format!("sine=frequency={hz}:sample_rate={TONE_RATE}:duration={seconds}"),
                    // lavfi's sine is at 1/8 full scale: +12 dB makes it 1/2.
                    "-af".into(),
                    "volume=4".into(),
                ]
            }
            AudioSource::Wav(path) => {
                if !path.is_file() {
                    bail!("no WAV file at {}", path.display());
                }
                vec![
                    "-re".into(),
                    "-i".into(),
                    path.to_string_lossy().into_owned(),
                ]
            }
        })
    }
}

/// Options every rig ffmpeg gets: no banner or stdin, verbose log (connection and stream
/// details), progress lines on stdout every 200 ms instead of the `\r` status line.
fn common_args() -> [&'static str; 10] {
    [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "verbose",
        "-progress",
        "pipe:1",
        "-stats_period",
        "0.2",
        "-y",
    ]
}

/// The last `out_time_us=` value ffmpeg reported (media time written), if any.
fn progress_out_time(guard: &ChildGuard) -> Option<Duration> {
    let log = guard.log_text();
    log.lines().rev().find_map(|line| {
        let value = line.strip_prefix("out_time_us=")?;
        let micros: u64 = value.trim().parse().ok()?;
        Some(Duration::from_micros(micros))
    })
}

/// Whether ffmpeg has reported the end of its work (`progress=end`).
fn progress_ended(guard: &ChildGuard) -> bool {
    guard.count_log("progress=end") > 0
}

fn spawn_ffmpeg(
    what: &str,
    binary: &Path,
    args: &[String],
) -> anyhow::Result<(tempfile::TempDir, ChildGuard)> {
    let dir = crate::instance_dir(&format!("dialtone-ffmpeg-{what}-"))?;
    let mut cmd = Command::new(binary);
    cmd.args(common_args()).args(args);
    let guard = ChildGuard::spawn(
        &format!("ffmpeg {what}"),
        cmd,
        &dir.path().join(format!("ffmpeg-{what}.log")),
    )
    .with_context(|| format!("starting {} (apt-get install ffmpeg)", binary.display()))?;
    Ok((dir, guard))
}

/// An ffmpeg publishing audio to an RTMP URL (`rtmp://`, `rtmpt://` or `rtmps://`) as an FLV
/// stream, at real-time pace. Stopped by PID (SIGTERM, then SIGKILL) when dropped.
pub struct Publisher {
    // Field order: the process stops before its dir (and log) goes.
    process: ChildGuard,
    dir: Option<tempfile::TempDir>,
    url: String,
    codec: FlvAudio,
}

impl Publisher {
    /// Starts publishing `source` encoded as `codec` to `url`, with the ffmpeg from
    /// [`ffmpeg_for`]. Returns at once; see [`Publisher::wait_publishing`].
    pub fn start(url: &str, codec: FlvAudio, source: AudioSource) -> anyhow::Result<Publisher> {
        let binary = ffmpeg_for(codec)?;
        Publisher::start_with(&binary, url, codec, source)
    }

    /// [`Publisher::start`] with a given ffmpeg binary.
    pub fn start_with(
        binary: &Path,
        url: &str,
        codec: FlvAudio,
        source: AudioSource,
    ) -> anyhow::Result<Publisher> {
        let mut args = source.input_args()?;
        args.push("-vn".into());
        args.extend(codec.encoder_args());
        args.extend(["-f".into(), "flv".into(), url.to_owned()]);
        let (dir, process) = spawn_ffmpeg(&format!("publish-{}", codec.name()), binary, &args)?;
        Ok(Publisher {
            process,
            dir: Some(dir),
            url: url.to_owned(),
            codec,
        })
    }

    /// Waits until ffmpeg has written [`PUBLISHING_AFTER`] of audio to the connection and is
    /// still running (or has already finished a short source successfully). Fails early, with
    /// the log tail, if ffmpeg exits with an error (e.g. the publish was refused).
    pub fn wait_publishing(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for(timeout, || {
            let sent = progress_out_time(&self.process).unwrap_or_default();
            if let Some(status) = self.process.try_wait()? {
                if status.success() && progress_ended(&self.process) && !sent.is_zero() {
                    return Ok(Some(()));
                }
                bail!(
                    "{} exited ({status}) after sending {sent:?} to {}\n{}",
                    self.process.name(),
                    self.url,
                    self.process.tail_report()
                );
            }
            Ok((sent >= PUBLISHING_AFTER).then_some(()))
        })
        .with_context(|| {
            format!(
                "waiting for ffmpeg to publish {} to {}\n{}",
                self.codec.name(),
                self.url,
                self.process.tail_report()
            )
        })
    }

    /// Audio time written so far (ffmpeg's last progress report).
    pub fn sent(&self) -> Duration {
        progress_out_time(&self.process).unwrap_or_default()
    }

    /// Waits until ffmpeg exits by itself (at the end of its source, or on an error).
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Stops publishing now, as a client closing its page would: SIGTERM (ffmpeg unpublishes
    /// and closes), SIGKILL after [`STOP_GRACE`]. Returns the exit status.
    pub fn stop(&self) -> anyhow::Result<ExitStatus> {
        self.process.stop(STOP_GRACE)
    }

    /// Everything ffmpeg logged (verbose log and progress lines).
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The URL published to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The codec published.
    pub fn codec(&self) -> FlvAudio {
        self.codec
    }
}

impl Logged for Publisher {
    fn process(&self) -> &ChildGuard {
        &self.process
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Err(e) = self.process.stop(STOP_GRACE) {
            eprintln!("[dialtone-tests] stopping {}: {e:#}", self.process.name());
        }
        if crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, self.process.name());
            }
        }
    }
}

/// An ffmpeg playing an RTMP stream into a mono 16-bit PCM WAV file (at the stream's own sample
/// rate) for a given time. Stopped by PID when dropped.
pub struct Player {
    process: ChildGuard,
    dir: Option<tempfile::TempDir>,
    url: String,
    wav: PathBuf,
}

impl Player {
    /// Plays `url` with Debian's ffmpeg into `out_wav` for `seconds` of audio, then exits;
    /// ffmpeg picks the decoder. Prefer [`Player::start_for`] when the codec is known: it
    /// picks the right ffmpeg for Opus and the reference decoder for Speex.
    ///
    /// With nginx-rtmp, start the player after the publisher: a player that joined an idle
    /// stream got no AAC frames there.
    pub fn start(url: &str, out_wav: &Path, seconds: f64) -> anyhow::Result<Player> {
        Player::spawn(Path::new(DEBIAN_FFMPEG), None, url, out_wav, seconds)
    }

    /// Like [`Player::start`] for a stream known to carry `codec`: uses the ffmpeg of
    /// [`ffmpeg_for`] (Debian's 5.1 cannot read enhanced-RTMP Opus) and the decoder of
    /// [`FlvAudio::decoder`] (for Speex libspeex: ffmpeg 5.1's native Speex decoder distorts a
    /// loud tone and gets its level wrong).
    pub fn start_for(
        codec: FlvAudio,
        url: &str,
        out_wav: &Path,
        seconds: f64,
    ) -> anyhow::Result<Player> {
        let binary = ffmpeg_for(codec)?;
        Player::spawn(&binary, codec.decoder(), url, out_wav, seconds)
    }

    fn spawn(
        binary: &Path,
        decoder: Option<&str>,
        url: &str,
        out_wav: &Path,
        seconds: f64,
    ) -> anyhow::Result<Player> {
        if seconds.is_nan() || seconds <= 0.0 {
            bail!("bad play time {seconds}");
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(decoder) = decoder {
            args.extend(["-c:a".to_owned(), decoder.to_owned()]);
        }
        args.extend([
            // 1 s of probing is enough for an audio-only stream (the default 5 s would eat the
            // start of a short call), as the rtmp crate's ffmpeg tests found.
            "-analyzeduration".into(),
            "1000000".into(),
            "-i".into(),
            url.to_owned(),
            "-vn".into(),
            "-t".into(),
            seconds.to_string(),
            "-map_metadata".into(),
            "-1".into(),
            "-ac".into(),
            "1".into(),
            "-c:a".into(),
            "pcm_s16le".into(),
            "-f".into(),
            "wav".into(),
            out_wav.to_string_lossy().into_owned(),
        ]);
        let (dir, process) = spawn_ffmpeg("play", binary, &args)?;
        Ok(Player {
            process,
            dir: Some(dir),
            url: url.to_owned(),
            wav: out_wav.to_owned(),
        })
    }

    /// Waits until the player has written decoded audio to the WAV file (its progress shows a
    /// media time above zero). Fails early, with the log tail, if ffmpeg exits without any.
    pub fn wait_receiving(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for(timeout, || {
            let written = progress_out_time(&self.process).unwrap_or_default();
            if !written.is_zero() {
                return Ok(Some(()));
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "{} exited ({status}) before receiving audio from {}\n{}",
                    self.process.name(),
                    self.url,
                    self.process.tail_report()
                );
            }
            Ok(None)
        })
        .with_context(|| {
            format!(
                "waiting for ffmpeg to receive audio from {}\n{}",
                self.url,
                self.process.tail_report()
            )
        })
    }

    /// Audio time written to the WAV so far.
    pub fn received(&self) -> Duration {
        progress_out_time(&self.process).unwrap_or_default()
    }

    /// Waits until ffmpeg exits by itself (after `seconds` of audio, or at the stream's end,
    /// or on an error). The WAV file is complete once it exited successfully.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Stops playing now (SIGTERM: ffmpeg still finishes the WAV header), SIGKILL after
    /// [`STOP_GRACE`].
    pub fn stop(&self) -> anyhow::Result<ExitStatus> {
        self.process.stop(STOP_GRACE)
    }

    /// The WAV file written.
    pub fn wav(&self) -> &Path {
        &self.wav
    }

    /// Everything ffmpeg logged.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Logged for Player {
    fn process(&self) -> &ChildGuard {
        &self.process
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        if let Err(e) = self.process.stop(STOP_GRACE) {
            eprintln!("[dialtone-tests] stopping {}: {e:#}", self.process.name());
        }
        if crate::keep_artifacts() {
            if let Some(dir) = self.dir.take() {
                crate::retain_dir(dir, self.process.name());
            }
        }
    }
}

/// Publishes a 1 kHz tone in `codec` to `url`, expecting the server to refuse it: returns
/// ffmpeg's log once it exits with an error. Fails if ffmpeg exits successfully or is still
/// running after `timeout` (then it is stopped by PID).
pub fn expect_refused(url: &str, codec: FlvAudio, timeout: Duration) -> anyhow::Result<String> {
    let publisher = Publisher::start(
        url,
        codec,
        AudioSource::Tone {
            hz: 1000.0,
            seconds: REFUSED_TONE_SECONDS,
        },
    )?;
    let status = publisher
        .wait_exit(timeout)
        .with_context(|| format!("publishing {} to {url} was not refused", codec.name()))?;
    let log = publisher.log_text();
    if status.success() {
        bail!(
            "publishing {} to {url} was not refused: ffmpeg exited 0\n{}",
            codec.name(),
            publisher.process.tail_report()
        );
    }
    Ok(log)
}

/// What the gateway's Flash SDP (the SDP_OFFER of an RTMP point) says.
pub struct FlashOffer {
    /// Its session name: the callId, or the pointId of a media point.
    pub name: String,
    pub endpoints: Vec<String>,
    /// The stream the client publishes to.
    pub publish: String,
    /// The stream the client plays.
    pub play: String,
}

impl FlashOffer {
    /// Reads the adapted SDP by its documented form: `c=` endpoints, and the `i=` names after
    /// the `m=audio` lines, told apart by the gateway's direction (`a=recvonly`: the client
    /// publishes, `a=sendonly`: it plays).
    pub fn parse(name: &str, sdp: &str) -> anyhow::Result<FlashOffer> {
        let mut endpoints = Vec::new();
        let (mut publish, mut play, mut stream) = (None, None, None);
        for line in sdp.lines() {
            if let Some(url) = line.strip_prefix("c=IN IP4 ") {
                endpoints.push(url.to_string());
            } else if line.starts_with("m=") {
                stream = None;
            } else if let Some(id) = line.strip_prefix("i=") {
                stream = Some(id.to_string());
            } else if line == "a=recvonly" {
                publish = stream.clone();
            } else if line == "a=sendonly" {
                play = stream.clone();
            }
        }
        anyhow::ensure!(
            sdp.contains("m=audio 0 FLASH/RTMP "),
            "not the adapted SDP:\n{sdp}"
        );
        Ok(FlashOffer {
            name: name.to_string(),
            endpoints,
            publish: publish.context("no stream to publish")?,
            play: play.context("no stream to play")?,
        })
    }

    /// The stream URL of `name` at the endpoint with `scheme`.
    pub fn url(&self, scheme: &str, name: &str) -> anyhow::Result<String> {
        let endpoint = self
            .endpoints
            .iter()
            .find(|url| url.starts_with(&format!("{scheme}://")))
            .with_context(|| format!("no {scheme} endpoint in {:?}", self.endpoints))?;
        Ok(format!("{endpoint}/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_args_name_codec_rate_and_mono() {
        assert_eq!(
            FlvAudio::Speex.encoder_args(),
            ["-c:a", "libspeex", "-ar", "16000", "-ac", "1"]
        );
        assert_eq!(
            FlvAudio::PcmALaw.encoder_args(),
            ["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"]
        );
        for codec in FlvAudio::ALL {
            let args = codec.encoder_args();
            let rate = codec.sample_rate().to_string();
            assert!(
                args.windows(2).any(|w| w == ["-ar", rate.as_str()]),
                "{codec:?}"
            );
        }
        assert!(FlvAudio::ALL
            .iter()
            .filter(|c| c.is_enhanced())
            .eq([&FlvAudio::Opus]));
    }

    #[test]
    fn tone_source_is_real_time() -> anyhow::Result<()> {
        let args = AudioSource::Tone {
            hz: 1000.0,
            seconds: 2.5,
        }
        .input_args()?;
        assert_eq!(args[0], "-re");
        assert!(args.contains(&"sine=frequency=1000:sample_rate=48000:duration=2.5".to_owned()));
        assert!(AudioSource::Tone {
            hz: 0.0,
            seconds: 1.0
        }
        .input_args()
        .is_err());
        assert!(AudioSource::Wav(PathBuf::from("/nonexistent.wav"))
            .input_args()
            .is_err());
        Ok(())
    }
}
