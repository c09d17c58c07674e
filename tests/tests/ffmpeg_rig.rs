//! The rig's RTMP client (`dialtone_tests::ffmpeg`) against a known-good RTMP server, without
//! a gateway: nginx with `libnginx-mod-rtmp` relays what ffmpeg publishes to an ffmpeg player,
//! and the player must hear the 1 kHz tone, for every FLV audio codec the rig publishes
//! (Opus as enhanced RTMP with the static ffmpeg of `imageio-ffmpeg`). A publish nginx denies
//! must be reported by `expect_refused`. No process outlives its test.
//!
//! Needs the Debian packages `ffmpeg`, `nginx`, `libnginx-mod-rtmp`, `python3-numpy` and the
//! venv `scripts/test.sh` sets up for Opus.

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use dialtone_tests::audio;
use dialtone_tests::ffmpeg::{expect_refused, AudioSource, FlvAudio, Player, Publisher};
use dialtone_tests::process::ChildGuard;
use dialtone_tests::wait::wait_until;
use dialtone_tests::{free_port, Logged};

const NGINX_BIN: &str = "/usr/sbin/nginx";
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const T: Duration = Duration::from_secs(15);
const TONE_HZ: f64 = 1000.0;
/// Long enough for the player to join, probe (1 s) and record [`PLAY_SECONDS`].
const TONE_SECONDS: f64 = 7.0;
const PLAY_SECONDS: f64 = 3.0;

/// A private nginx-rtmp on a free 127.0.0.1 port, in the foreground as a single process
/// (`master_process off`), stopped by PID when dropped. Application `live` relays any stream;
/// application `closed` denies every publish.
struct NginxRtmp {
    // Field order: the process stops before its dir goes.
    process: ChildGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NginxRtmp {
    fn start() -> anyhow::Result<NginxRtmp> {
        ensure!(
            Path::new(NGINX_BIN).exists() && Path::new(RTMP_MODULE).exists(),
            "nginx-rtmp is missing (apt-get install nginx libnginx-mod-rtmp)"
        );
        let dir = tempfile::Builder::new()
            .prefix("dialtone-nginx-rtmp-")
            .tempdir()?;
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "load_module {RTMP_MODULE};\n\
             daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log stderr info;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{\n\
             \x20   access_log {d}/rtmp_access.log;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       chunk_size 4096;\n\
             \x20       application live {{\n\
             \x20           live on;\n\
             \x20           record off;\n\
             \x20           allow publish 127.0.0.1;\n\
             \x20           deny publish all;\n\
             \x20           allow play all;\n\
             \x20       }}\n\
             \x20       application closed {{\n\
             \x20           live on;\n\
             \x20           deny publish all;\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(NGINX_BIN);
        // -e: the error log before the config is read goes to stderr too, not /var/log.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf_path);
        let process = ChildGuard::spawn("nginx-rtmp", cmd, &dir.path().join("nginx.log"))?;
        let nginx = NginxRtmp {
            process,
            port,
            _dir: dir,
        };
        // Ready when it accepts connections (it logs no line for that).
        wait_until(T, || {
            if let Some(status) = nginx.process.try_wait()? {
                anyhow::bail!("nginx exited ({status})\n{}", nginx.process.tail_report());
            }
            Ok(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok())
        })
        .with_context(|| format!("waiting for nginx-rtmp on 127.0.0.1:{port}"))?;
        Ok(nginx)
    }

    fn url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{stream}", self.port)
    }
}

impl Logged for NginxRtmp {
    fn process(&self) -> &ChildGuard {
        &self.process
    }
}

/// Which peer joins the stream first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// The player joins a stream already being published. nginx-rtmp needs this for AAC: a
    /// player that joined an idle stream got no AAC frames.
    PublisherFirst,
    /// The player waits on the idle stream and gets it from its first frame. Needed for
    /// Speex: a Speex decoder that starts mid-stream on a steady tone never settles (the tone
    /// comes out at -3 dBFS with under 30 % of its energy at 1 kHz, also when the FLV is cut
    /// offline), while one that gets every frame decodes it at its level.
    PlayerFirst,
}

/// Publishes a 1 kHz tone in `codec` through nginx and records it with a player; the
/// recording must be the tone, at about its level.
fn tone_round_trip(codec: FlvAudio, source: Option<AudioSource>, join: Join) -> anyhow::Result<()> {
    let started = Instant::now();
    let nginx = NginxRtmp::start()?;
    let name = format!("tone-{}", codec.name());
    let url = nginx.url("live", &name);
    let source = source.unwrap_or(AudioSource::Tone {
        hz: TONE_HZ,
        seconds: TONE_SECONDS,
    });
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join(format!("heard-{}.wav", codec.name()));

    let mut player = None;
    if join == Join::PlayerFirst {
        player = Some(Player::start_for(codec, &url, &wav, PLAY_SECONDS)?);
        nginx.wait_for_log(&format!("play: name='{name}'"), T)?;
    }
    let publisher = Publisher::start(&url, codec, source)?;
    publisher.wait_publishing(T)?;
    // The server's side: nginx took the publish.
    nginx.wait_for_log(&format!("publish: name='{name}'"), T)?;
    let player = match player {
        Some(player) => player,
        None => Player::start_for(codec, &url, &wav, PLAY_SECONDS)?,
    };
    player.wait_receiving(T)?;
    let status = player.wait_exit(T)?;
    ensure!(
        status.success(),
        "player failed ({status}):\n{}",
        player.log_text()
    );
    let report = audio::analyze(&wav, TONE_HZ)?;
    eprintln!("{codec:?}: {report:?}");
    ensure!(
        report.dominant_near(TONE_HZ, 20.0) && report.target_share > 0.8,
        "{codec:?}: the player did not hear the tone: {report:?}"
    );
    ensure!(
        (PLAY_SECONDS - report.duration_s - audio::ANALYZE_SKIP_SECONDS).abs() < 0.2,
        "{codec:?}: recorded {:.2} s, asked for {PLAY_SECONDS} s",
        report.duration_s + audio::ANALYZE_SKIP_SECONDS
    );
    // The tone goes out at -9 dBFS. ffmpeg's Nellymoser codec pair returns it about 17 dB
    // quieter (also straight from a file, without RTMP).
    let min_dbfs = if codec == FlvAudio::Nellymoser {
        -30.0
    } else {
        -12.0
    };
    ensure!(
        report.rms_dbfs > min_dbfs,
        "{codec:?}: tone too quiet: {report:?}"
    );

    // The publisher finishes its source and unpublishes cleanly.
    let status = publisher.wait_exit(T)?;
    ensure!(
        status.success(),
        "publisher failed ({status}):\n{}",
        publisher.log_text()
    );
    nginx.wait_for_log("deleteStream", T)?;

    let (publisher_pid, player_pid) = (publisher.pid(), player.pid());
    drop(publisher);
    drop(player);
    for pid in [publisher_pid, player_pid] {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .contains(&name),
            "ffmpeg {pid} survived its guard"
        );
    }
    eprintln!("{codec:?}: round trip in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn speex_tone_through_nginx_rtmp() -> anyhow::Result<()> {
    tone_round_trip(FlvAudio::Speex, None, Join::PlayerFirst)
}

#[test]
fn pcmu_tone_through_nginx_rtmp() -> anyhow::Result<()> {
    tone_round_trip(FlvAudio::PcmMuLaw, None, Join::PublisherFirst)
}

#[test]
fn pcma_tone_from_a_wav_file_through_nginx_rtmp() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("tone.wav");
    audio::tone_wav(&wav, TONE_HZ, TONE_SECONDS, 8000)?;
    tone_round_trip(
        FlvAudio::PcmALaw,
        Some(AudioSource::Wav(wav)),
        Join::PublisherFirst,
    )
}

#[test]
fn aac_tone_through_nginx_rtmp() -> anyhow::Result<()> {
    tone_round_trip(FlvAudio::Aac, None, Join::PublisherFirst)
}

#[test]
fn nellymoser_tone_through_nginx_rtmp() -> anyhow::Result<()> {
    tone_round_trip(FlvAudio::Nellymoser, None, Join::PublisherFirst)
}

/// Enhanced RTMP: nginx-rtmp 1.2.2 knows nothing of FourCC audio tags but relays them as they
/// are. It does not cache the Opus sequence header for a player that joins later, so the
/// player decodes without the OpusHead (ffmpeg then assumes stereo; the player downmixes).
#[test]
fn opus_tone_through_nginx_rtmp() -> anyhow::Result<()> {
    tone_round_trip(FlvAudio::Opus, None, Join::PublisherFirst)
}

#[test]
fn denied_publish_is_refused() -> anyhow::Result<()> {
    let nginx = NginxRtmp::start()?;
    let url = nginx.url("closed", "not-allowed");
    let log = expect_refused(&url, FlvAudio::Speex, T)?;
    ensure!(
        log.contains("Broken pipe") || log.contains("Error"),
        "ffmpeg's log does not show the refusal:\n{log}"
    );
    nginx.wait_for_log("access forbidden by rule", T)?;
    // A refused publisher never counts as publishing.
    let publisher = Publisher::start(
        &url,
        FlvAudio::PcmALaw,
        AudioSource::Tone {
            hz: TONE_HZ,
            seconds: TONE_SECONDS,
        },
    )?;
    let waited = publisher.wait_publishing(T);
    ensure!(waited.is_err(), "a refused publisher passed as publishing");
    ensure!(!publisher.wait_exit(T)?.success());
    // And expect_refused fails when the publish is accepted.
    let accepted = expect_refused(
        &nginx.url("live", "allowed"),
        FlvAudio::PcmMuLaw,
        Duration::from_secs(2),
    );
    ensure!(accepted.is_err(), "an accepted publish passed as refused");
    Ok(())
}
