use crate::Codec;

/// Everything that can go wrong in this crate. No call panics on bad input:
/// malformed payloads and wrongly sized buffers come back as one of these.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("expected a {expected}-sample frame, got {actual} samples")]
    FrameLength { expected: usize, actual: usize },

    #[error("output buffer holds {available} but {required} are needed")]
    BufferTooSmall { required: usize, available: usize },

    #[error("empty {codec} payload")]
    EmptyPayload { codec: Codec },

    #[error("{codec} payload of {len} bytes does not hold one 20 ms frame")]
    PayloadLength { codec: Codec, len: usize },

    #[error("malformed {codec} payload")]
    MalformedPayload { codec: Codec },

    #[error("Opus packet lasts {samples} samples at 48 kHz, not one 20 ms frame (960)")]
    OpusFrameDuration { samples: usize },

    #[error("Opus: {0}")]
    Opus(#[from] audiopus::Error),

    #[error("Speex: {0}")]
    Speex(&'static str),

    #[error("resampler setup: {0}")]
    ResamplerSetup(#[from] rubato::ResamplerConstructionError),

    #[error("resampling: {0}")]
    Resample(#[from] rubato::ResampleError),

    #[error("{0} to {0} needs no transcoding: forward the payloads as they are")]
    SameCodec(Codec),

    #[error("AAC AudioSpecificConfig: {0}")]
    AacConfig(String),

    #[error("AAC frame: {0}")]
    AacFrame(&'static str),

    #[error("AAC: {0}")]
    Aac(#[from] symphonia_core::errors::Error),

    #[error("no 20 ms framing from {hz} Hz: the input rates are {supported:?}", supported = crate::PcmFramer::INPUT_RATES)]
    FramerInputRate { hz: u32 },

    #[error("linear PCM of {bits_per_sample} bits and {channels} channel(s): only 8 or 16 bits, mono or stereo")]
    LinearPcmFormat { bits_per_sample: u8, channels: u8 },

    #[error(
        "linear PCM payload of {len} bytes is not whole samples of {bytes_per_frame} bytes each"
    )]
    LinearPcmLength { len: usize, bytes_per_frame: usize },

    #[error("DTMF level {0} dBFS is not a finite level at or below {max} dBFS", max = crate::MAX_DTMF_LEVEL_DBFS)]
    DtmfLevel(f64),
}
