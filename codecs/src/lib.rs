//! Audio codecs and signal processing for Dialtone's media bridge.
//!
//! Everything here is sans-IO: PCM frames and encoded payloads go in, the
//! same come out. There are no sockets, no RTP headers, no timers and no
//! async runtime, and the crate knows nothing of SIP, SDP, WebSocket, RTMP
//! or RTP packetization: the caller strips and adds those.
//!
//! The frame model is fixed: mono `i16` PCM in 20 ms frames
//! ([`FRAME_DURATION`]), i.e. 160, 320 or 960 samples at 8, 16 or 48 kHz
//! ([`SampleRate`]). Every encoded payload carries exactly one such frame.
//!
//! - [`Codec`] names the six supported codecs; [`new_encoder`] and
//!   [`new_decoder`] build an [`Encoder`] or [`Decoder`] for one.
//! - [`Resampler`] converts 20 ms frames between 8, 16 and 48 kHz.
//! - [`Transcoder`] chains decoder → resampler → encoder for two different
//!   codecs (when both sides share a codec the caller forwards payloads
//!   untouched instead).
//! - [`DtmfGenerator`] and [`DtmfDetector`] produce and recognise in-band
//!   DTMF tones.
//!
//! Buffers are allocated when an encoder, decoder, resampler, transcoder or
//! detector is built; the per-frame calls write into caller-provided
//! buffers and do not allocate.

mod codec;
mod concealment;
mod dtmf;
mod error;
mod frame;
mod g711;
mod g722;
mod opus;
mod resample;
mod speex;
mod transcode;

pub use codec::{new_decoder, new_encoder, Codec, Decoder, Encoder, MAX_PAYLOAD_LEN};
pub use dtmf::{
    DtmfDetector, DtmfDigit, DtmfEvent, DtmfGenerator, DEFAULT_DTMF_LEVEL_DBFS, MAX_DTMF_LEVEL_DBFS,
};
pub use error::CodecError;
pub use frame::{SampleRate, FRAME_DURATION, MAX_FRAME_SAMPLES};
pub use g711::{
    alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear, G711Decoder, G711Encoder,
    G711Law,
};
pub use g722::{G722Decoder, G722Encoder};
pub use opus::{OpusDecoder, OpusEncoder};
pub use resample::Resampler;
pub use speex::{SpeexDecoder, SpeexEncoder, SpeexMode};
pub use transcode::Transcoder;
