//! Room recordings as WAV files (PCM, mono, 16-bit) under a configured
//! directory.
//!
//! The gateway names each file, never the client, so a room id cannot steer
//! it out of the directory. The header's sizes are brought up to date every
//! few seconds of audio, so a file cut off by a crash still plays up to
//! there; [`Recorder::finish`] makes them exact. The I/O is blocking
//! `std::fs`: callers run it off the async path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The canonical 44-byte WAV header: RIFF, `fmt ` (PCM) and `data` chunk
/// headers.
const HEADER_BYTES: u64 = 44;
/// Where the RIFF chunk's size (the file's length less 8) is written.
const RIFF_SIZE_OFFSET: u64 = 4;
/// Where the `data` chunk's size is written.
const DATA_SIZE_OFFSET: u64 = 40;
/// RIFF sizes are 32-bit: a WAV file cannot describe more than this.
const WAV_MAX_BYTES: u64 = u32::MAX as u64;
const BYTES_PER_SAMPLE: u64 = 2;
/// How much audio may be written before the header's sizes are updated,
/// i.e. the most a crash can leave out of the file's stated length.
const HEADER_UPDATE_PERIOD: Duration = Duration::from_secs(5);
/// The room id's share of a file name, at most.
const ROOM_ID_CHARS: usize = 32;

/// Where recordings go and how large one may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingLimits {
    /// Created if missing.
    pub directory: PathBuf,
    /// The largest file, header included; also capped at 4 GiB by the WAV
    /// format.
    pub max_bytes: u64,
}

/// Why a recording could not start, go on or finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    #[error("the disk holding the recordings is full")]
    DiskFull,
    #[error("the recording reached its size limit")]
    SizeLimit,
    #[error("writing the recording failed: {0}")]
    Io(String),
    #[error("the recordings directory cannot be used: {0}")]
    BadDirectory(String),
}

impl RecordingError {
    /// The reason code the client protocol reports.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordingError::DiskFull => "DISK_FULL",
            RecordingError::SizeLimit => "SIZE_LIMIT",
            RecordingError::Io(_) | RecordingError::BadDirectory(_) => "WRITE_FAILED",
        }
    }
}

impl From<io::Error> for RecordingError {
    fn from(error: io::Error) -> RecordingError {
        let out_of_space = error.kind() == io::ErrorKind::StorageFull
            || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if out_of_space {
            RecordingError::DiskFull
        } else {
            RecordingError::Io(error.to_string())
        }
    }
}

/// A recording written to the end and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRecording {
    pub path: PathBuf,
    pub file_name: String,
    /// The audio the file holds.
    pub duration: Duration,
    /// The file's length, header included.
    pub bytes: u64,
    /// Why the recording stopped before it was finished, or lost the audio
    /// still buffered when it was: the first error `write` returned, else
    /// the final flush's. `None` when the file holds everything written.
    pub cut_short_by: Option<RecordingError>,
}

/// One recording being written.
pub struct Recorder {
    path: PathBuf,
    file_name: String,
    wav: WavWriter<File>,
}

impl Recorder {
    /// Creates a new file for `room_id`'s recording, named
    /// `<UTC yyyymmddThhmmssZ of started>-<room id>-<8 random hex>.wav`
    /// (the room id reduced to at most 32 ASCII letters and digits, `room`
    /// when none is left), and writes its header.
    pub fn create(
        limits: &RecordingLimits,
        room_id: &str,
        sample_rate: u32,
        started: SystemTime,
    ) -> Result<Recorder, RecordingError> {
        let directory = usable_directory(&limits.directory)?;
        let file_name = recording_file_name(room_id, started);
        let path = directory.join(&file_name);
        // Never an existing file, and never through a link planted in its
        // place.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        // The name has no separator; this catches the directory itself
        // being swapped for a link after it was resolved.
        let resolved = fs::canonicalize(&path)?;
        if resolved.parent() != Some(directory.as_path()) {
            return Err(RecordingError::BadDirectory(format!(
                "{} resolves to {}",
                path.display(),
                resolved.display()
            )));
        }
        match WavWriter::new(file, sample_rate, limits.max_bytes) {
            Ok(wav) => Ok(Recorder {
                path,
                file_name,
                wav,
            }),
            Err(error) => {
                // A file without its header is no recording; the name is
                // ours (create_new), so removing it harms nothing else.
                let _ = fs::remove_file(&path);
                Err(error)
            }
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Appends samples. Once it fails (size limit, full disk, I/O error) the
    /// recording has stopped: later calls return the same error and write
    /// nothing, and [`Recorder::finish`] closes what was written.
    pub fn write(&mut self, samples: &[i16]) -> Result<(), RecordingError> {
        self.wav.write(samples)
    }

    /// Writes out what is buffered, sets the header to the audio the file
    /// holds and syncs it to disk. Audio the disk refused is left out and
    /// reported in [`FinishedRecording::cut_short_by`]; an error means the
    /// file could not be closed properly (it still plays up to its last
    /// header update).
    pub fn finish(self) -> Result<FinishedRecording, RecordingError> {
        let (file, written) = self.wav.finish()?;
        file.sync_all()?;
        Ok(FinishedRecording {
            path: self.path,
            file_name: self.file_name,
            duration: written.duration,
            bytes: written.file_bytes,
            cut_short_by: written.cut_short_by,
        })
    }
}

/// What [`WavWriter::finish`] left in the file.
struct WrittenWav {
    duration: Duration,
    file_bytes: u64,
    cut_short_by: Option<RecordingError>,
}

/// The WAV format over any seekable writer, so that a full disk can be
/// simulated in tests.
struct WavWriter<W: Write + Seek> {
    out: BufWriter<W>,
    sample_rate: u32,
    max_bytes: u64,
    /// Sample bytes accepted so far (in the file or still buffered).
    data_bytes: u64,
    /// The data size the header in the file states.
    stated_data_bytes: u64,
    header_update_bytes: u64,
    stopped_by: Option<RecordingError>,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes the header with zero sizes and flushes it, so that a full
    /// disk is known before the recording is said to have started.
    fn new(inner: W, sample_rate: u32, max_bytes: u64) -> Result<WavWriter<W>, RecordingError> {
        let max_bytes = max_bytes.min(WAV_MAX_BYTES);
        if max_bytes < HEADER_BYTES {
            return Err(RecordingError::SizeLimit);
        }
        let mut out = BufWriter::new(inner);
        out.write_all(&wav_header(sample_rate))?;
        out.flush()?;
        Ok(WavWriter {
            out,
            sample_rate,
            max_bytes,
            data_bytes: 0,
            stated_data_bytes: 0,
            header_update_bytes: u64::from(sample_rate)
                * BYTES_PER_SAMPLE
                * HEADER_UPDATE_PERIOD.as_secs(),
            stopped_by: None,
        })
    }

    fn write(&mut self, samples: &[i16]) -> Result<(), RecordingError> {
        if let Some(error) = &self.stopped_by {
            return Err(error.clone());
        }
        let bytes = samples.len() as u64 * BYTES_PER_SAMPLE;
        if HEADER_BYTES + self.data_bytes + bytes > self.max_bytes {
            return Err(self.stop(RecordingError::SizeLimit));
        }
        for sample in samples {
            if let Err(error) = self.out.write_all(&sample.to_le_bytes()) {
                return Err(self.stop(error.into()));
            }
        }
        self.data_bytes += bytes;
        if self.data_bytes - self.stated_data_bytes >= self.header_update_bytes {
            if let Err(error) = self.update_header() {
                return Err(self.stop(error.into()));
            }
        }
        Ok(())
    }

    fn stop(&mut self, error: RecordingError) -> RecordingError {
        self.stopped_by = Some(error.clone());
        error
    }

    fn update_header(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let file = self.out.get_mut();
        write_sizes(file, self.data_bytes)?;
        file.seek(SeekFrom::End(0))?;
        self.stated_data_bytes = self.data_bytes;
        Ok(())
    }

    /// The header's sizes are taken from the file's length, not from what
    /// was accepted, so that they stay true when the disk refused the tail.
    fn finish(self) -> Result<(W, WrittenWav), RecordingError> {
        let WavWriter {
            mut out,
            sample_rate,
            stopped_by,
            ..
        } = self;
        let flushed = out.flush();
        // Whatever the flush could not write is dropped here.
        let (mut file, _unwritten) = out.into_parts();
        let cut_short_by = stopped_by.or(flushed.err().map(RecordingError::from));
        let file_bytes = file.seek(SeekFrom::End(0))?;
        // Whole samples only: a write cut short may have left half of one.
        let data_bytes = file_bytes.saturating_sub(HEADER_BYTES) & !1;
        write_sizes(&mut file, data_bytes)?;
        file.flush()?;
        let duration = audio_duration(data_bytes / BYTES_PER_SAMPLE, sample_rate);
        Ok((
            file,
            WrittenWav {
                duration,
                file_bytes,
                cut_short_by,
            },
        ))
    }
}

/// How long `samples` last at `sample_rate` (zero for a zero rate).
fn audio_duration(samples: u64, sample_rate: u32) -> Duration {
    let rate = u64::from(sample_rate);
    match (samples.checked_div(rate), samples.checked_rem(rate)) {
        (Some(seconds), Some(remainder)) => {
            Duration::from_secs(seconds) + Duration::from_nanos(remainder * 1_000_000_000 / rate)
        }
        _ => Duration::ZERO,
    }
}

/// The header of a mono 16-bit PCM file at `sample_rate`, sizes zero.
fn wav_header(sample_rate: u32) -> [u8; HEADER_BYTES as usize] {
    let channels: u16 = 1;
    let bits_per_sample: u16 = 16;
    let block_align = channels * bits_per_sample / 8;
    let byte_rate = sample_rate.saturating_mul(u32::from(block_align));
    let mut header = [0u8; HEADER_BYTES as usize];
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &0u32.to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(), // PCM
        &channels.to_le_bytes(),
        &sample_rate.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &block_align.to_le_bytes(),
        &bits_per_sample.to_le_bytes(),
        b"data",
        &0u32.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        header[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    header
}

/// Sets the RIFF and `data` sizes for `data_bytes` of samples; leaves the
/// position after the `data` size.
fn write_sizes(file: &mut (impl Write + Seek), data_bytes: u64) -> io::Result<()> {
    // Within range: every caller keeps the file under WAV_MAX_BYTES.
    let data_size = u32::try_from(data_bytes).unwrap_or(u32::MAX);
    let riff_size = u32::try_from(data_bytes + HEADER_BYTES - 8).unwrap_or(u32::MAX);
    file.seek(SeekFrom::Start(RIFF_SIZE_OFFSET))?;
    file.write_all(&riff_size.to_le_bytes())?;
    file.seek(SeekFrom::Start(DATA_SIZE_OFFSET))?;
    file.write_all(&data_size.to_le_bytes())
}

/// The directory, created if missing, with every link resolved.
fn usable_directory(directory: &Path) -> Result<PathBuf, RecordingError> {
    let bad = |error: io::Error| {
        RecordingError::BadDirectory(format!("{}: {error}", directory.display()))
    };
    fs::create_dir_all(directory).map_err(bad)?;
    fs::canonicalize(directory).map_err(bad)
}

fn recording_file_name(room_id: &str, started: SystemTime) -> String {
    let mut room: String = room_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(ROOM_ID_CHARS)
        .collect();
    if room.is_empty() {
        room.push_str("room");
    }
    let random: u32 = rand::random();
    format!("{}-{room}-{random:08x}.wav", utc_timestamp(started))
}

/// `yyyymmddThhmmssZ`; times before 1970 count as 1970.
fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// (year, month, day) of a count of days since 1970-01-01, by Howard
/// Hinnant's `civil_from_days` (the proleptic Gregorian calendar in 400-year
/// eras starting on March 1st, so that leap days fall at an era's end).
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// 2023-11-14 22:13:20 UTC.
    const STARTED_SECONDS: u64 = 1_700_000_000;

    fn started() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(STARTED_SECONDS)
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> TestDir {
            let random: u64 = rand::random();
            let path = std::env::temp_dir().join(format!("dialtone-recording-{random:016x}"));
            fs::create_dir(&path).unwrap();
            TestDir(fs::canonicalize(&path).unwrap())
        }

        fn limits(&self, max_bytes: u64) -> RecordingLimits {
            RecordingLimits {
                directory: self.0.clone(),
                max_bytes,
            }
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// What a WAV player reads from a file's header, and the samples.
    #[derive(Debug)]
    struct ParsedWav {
        sample_rate: u32,
        channels: u16,
        bits_per_sample: u16,
        riff_size: u32,
        samples: Vec<i16>,
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([bytes[at], bytes[at + 1]])
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    /// Reads a canonical PCM WAV as a player would: the samples are the
    /// ones the `data` size states, which must all be in the file.
    fn parse_wav(bytes: &[u8]) -> ParsedWav {
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(bytes, 16), 16, "fmt chunk size");
        assert_eq!(u16_at(bytes, 20), 1, "PCM");
        assert_eq!(&bytes[36..40], b"data");
        let data_size = u32_at(bytes, 40) as usize;
        assert!(
            44 + data_size <= bytes.len(),
            "data size past the file's end"
        );
        let sample_rate = u32_at(bytes, 24);
        let block_align = u16_at(bytes, 32);
        assert_eq!(u32_at(bytes, 28), sample_rate * u32::from(block_align));
        ParsedWav {
            sample_rate,
            channels: u16_at(bytes, 22),
            bits_per_sample: u16_at(bytes, 34),
            riff_size: u32_at(bytes, 4),
            samples: bytes[44..44 + data_size]
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                .collect(),
        }
    }

    /// 20 ms frames of a sawtooth, so that every sample is checkable.
    fn frames(sample_rate: u32, count: usize) -> Vec<Vec<i16>> {
        let frame_len = sample_rate as usize / 50;
        (0..count)
            .map(|frame| {
                (0..frame_len)
                    .map(|i| ((frame * frame_len + i) % 65_536) as u16 as i16)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_finished_recording_plays_back_at_its_rate_and_length() {
        let dir = TestDir::new();
        let limits = RecordingLimits {
            directory: dir.0.join("not/yet/there"),
            max_bytes: 10_000_000,
        };
        let mut recorder = Recorder::create(&limits, "call-1", 16_000, started()).unwrap();
        let audio = frames(16_000, 75); // 1.5 s
        for frame in &audio {
            recorder.write(frame).unwrap();
        }
        let finished = recorder.finish().unwrap();

        assert_eq!(finished.duration, Duration::from_millis(1500));
        assert_eq!(finished.cut_short_by, None);
        assert_eq!(
            finished.path,
            dir.0.join("not/yet/there").join(&finished.file_name)
        );
        let bytes = fs::read(&finished.path).unwrap();
        assert_eq!(finished.bytes, bytes.len() as u64);
        let wav = parse_wav(&bytes);
        assert_eq!(
            (wav.sample_rate, wav.channels, wav.bits_per_sample),
            (16_000, 1, 16)
        );
        assert_eq!(wav.riff_size as usize, bytes.len() - 8);
        assert_eq!(wav.samples, audio.concat());
    }

    #[test]
    fn a_recording_cut_off_before_finish_plays_up_to_its_last_header_update() {
        let dir = TestDir::new();
        let mut recorder =
            Recorder::create(&dir.limits(10_000_000), "r", 8_000, started()).unwrap();
        let audio = frames(8_000, 300); // 6 s
        for frame in &audio {
            recorder.write(frame).unwrap();
        }
        // Read while the recorder still holds audio back: what a crash
        // would leave.
        let wav = parse_wav(&fs::read(recorder.path()).unwrap());
        assert_eq!(wav.samples.len(), 5 * 8_000);
        assert_eq!(wav.samples, audio.concat()[..5 * 8_000]);
        assert_eq!(wav.riff_size, 36 + 5 * 8_000 * 2);
    }

    #[test]
    fn the_file_name_is_the_gateways_and_stays_in_the_directory() {
        let dir = TestDir::new();
        let hostile = [
            ("../../etc/passwd", "etcpasswd"),
            ("a/b\\c\n", "abc"),
            ("/", "room"),
            ("", "room"),
            ("ünï/../x", "nx"),
        ];
        let long = "x".repeat(100);
        for (room_id, kept) in hostile.into_iter().chain([(long.as_str(), &long[..32])]) {
            let recorder = Recorder::create(&dir.limits(1000), room_id, 8_000, started()).unwrap();
            let name = recorder.file_name();
            assert_eq!(recorder.path(), dir.0.join(name), "{room_id:?}");
            let prefix = format!("20231114T221320Z-{kept}-");
            let random = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".wav"))
                .unwrap_or_else(|| panic!("{room_id:?} gave {name:?}"));
            assert_eq!(random.len(), 8, "{name:?}");
            assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{name:?}");
        }
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 6);
    }

    #[test]
    fn two_recordings_in_the_same_second_get_their_own_files() {
        let dir = TestDir::new();
        let first = Recorder::create(&dir.limits(1000), "room", 8_000, started()).unwrap();
        let second = Recorder::create(&dir.limits(1000), "room", 8_000, started()).unwrap();
        assert_ne!(first.path(), second.path());
        assert!(first.path().exists() && second.path().exists());
    }

    #[test]
    fn a_directory_reached_through_a_link_is_resolved() {
        let dir = TestDir::new();
        let real = dir.0.join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let limits = RecordingLimits {
            directory: link,
            max_bytes: 1000,
        };
        let recorder = Recorder::create(&limits, "room", 8_000, started()).unwrap();
        assert_eq!(recorder.path().parent(), Some(real.as_path()));
        assert!(recorder.path().is_file());
    }

    #[test]
    fn a_directory_that_is_a_file_is_refused() {
        let dir = TestDir::new();
        let not_a_directory = dir.0.join("file");
        fs::write(&not_a_directory, b"").unwrap();
        let limits = RecordingLimits {
            directory: not_a_directory,
            max_bytes: 1000,
        };
        let refused = Recorder::create(&limits, "room", 8_000, started());
        assert!(
            matches!(refused, Err(RecordingError::BadDirectory(_))),
            "{:?}",
            refused.err()
        );
    }

    #[test]
    fn the_size_limit_stops_the_recording_and_keeps_what_fit() {
        let dir = TestDir::new();
        let mut recorder =
            Recorder::create(&dir.limits(44 + 1000), "room", 8_000, started()).unwrap();
        recorder.write(&[1; 400]).unwrap();
        assert_eq!(recorder.write(&[2; 200]), Err(RecordingError::SizeLimit));
        // Stopped: even a sample that would fit is refused.
        assert_eq!(recorder.write(&[3]), Err(RecordingError::SizeLimit));
        let finished = recorder.finish().unwrap();

        assert_eq!(finished.cut_short_by, Some(RecordingError::SizeLimit));
        assert_eq!(finished.duration, Duration::from_millis(50));
        assert_eq!(finished.bytes, 44 + 800);
        let wav = parse_wav(&fs::read(&finished.path).unwrap());
        assert_eq!(wav.samples, vec![1; 400]);
    }

    /// A disk with room for `capacity` bytes: writes past it fail with
    /// ENOSPC, overwrites within it succeed.
    struct SmallDisk {
        file: Cursor<Vec<u8>>,
        capacity: u64,
    }

    impl Write for SmallDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.capacity.saturating_sub(self.file.position()) as usize;
            if room == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.file.write(&buf[..buf.len().min(room)])
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for SmallDisk {
        fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
            self.file.seek(position)
        }
    }

    #[test]
    fn a_full_disk_stops_the_recording_and_the_file_states_what_it_holds() {
        // Room for 20 001 bytes of samples: half a sample at the end.
        let disk = SmallDisk {
            file: Cursor::new(Vec::new()),
            capacity: 44 + 20_001,
        };
        let mut wav = WavWriter::new(disk, 8_000, u64::MAX).unwrap();
        let audio = frames(8_000, 100); // 2 s = 32 000 bytes
        let failure = audio.iter().find_map(|frame| wav.write(frame).err());
        assert_eq!(failure, Some(RecordingError::DiskFull));
        assert_eq!(wav.write(&[0; 160]), Err(RecordingError::DiskFull));

        let (disk, written) = wav.finish().unwrap();
        assert_eq!(written.cut_short_by, Some(RecordingError::DiskFull));
        assert_eq!(written.duration, Duration::from_millis(1250));
        let parsed = parse_wav(disk.file.get_ref());
        assert_eq!(parsed.samples, audio.concat()[..10_000]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn dev_full_refuses_the_header() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return; // no /dev/full in this sandbox
        };
        assert_eq!(
            WavWriter::new(full, 8_000, u64::MAX).err(),
            Some(RecordingError::DiskFull)
        );
    }

    #[test]
    fn errors_carry_the_protocols_reason_codes() {
        let quota = RecordingError::from(io::Error::from_raw_os_error(libc::EDQUOT));
        let no_space = RecordingError::from(io::Error::from_raw_os_error(libc::ENOSPC));
        let denied = RecordingError::from(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            (quota.reason(), no_space.reason()),
            ("DISK_FULL", "DISK_FULL")
        );
        assert_eq!(denied.reason(), "WRITE_FAILED");
        assert_eq!(RecordingError::SizeLimit.reason(), "SIZE_LIMIT");
        assert_eq!(
            RecordingError::BadDirectory(String::new()).reason(),
            "WRITE_FAILED"
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |seconds| utc_timestamp(UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(STARTED_SECONDS), "20231114T221320Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_735_689_599), "20241231T235959Z");
        assert_eq!(at(4_107_542_400), "21000301T000000Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            "19700101T000000Z"
        );
    }
}
