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
//! Audio that comes otherwise (AAC, FLV linear PCM) is decoded to PCM and
//! re-framed into 20 ms frames of [`Codec::L16`] first.
//!
//! - [`Codec`] names the seven supported codecs; [`new_encoder`] and
//!   [`new_decoder`] build an [`Encoder`] or [`Decoder`] for one.
//! - [`AacDecoder`] decodes AAC-LC access units, and
//!   [`linear_pcm_to_mono`] unpacks FLV linear PCM, to mono PCM at the
//!   stream's rate; [`PcmFramer`] resamples that and cuts it into 20 ms
//!   L16 payloads.
//! - [`Resampler`] converts 20 ms frames between 8, 16 and 48 kHz.
//! - [`Transcoder`] chains decoder → resampler → encoder for two different
//!   codecs (when both sides share a codec the caller forwards payloads
//!   untouched instead).
//! - [`DtmfGenerator`] and [`DtmfDetector`] produce and recognise in-band
//!   DTMF tones.
//!
//! Buffers are allocated when an encoder, decoder, resampler, transcoder or
//! detector is built; the per-frame calls write into caller-provided
//! buffers and do not allocate. The AAC and re-framing calls, whose output
//! length varies, append to vectors instead.

mod aac;
mod codec;
mod concealment;
mod dtmf;
mod error;
mod frame;
mod framer;
mod g711;
mod g722;
mod l16;
mod opus;
mod resample;
mod signal;
mod speex;
mod transcode;

pub use aac::AacDecoder;
pub use codec::{new_decoder, new_encoder, Codec, Decoder, Encoder, MAX_PAYLOAD_LEN};
pub use dtmf::{
    DtmfDetector, DtmfDigit, DtmfEvent, DtmfGenerator, DEFAULT_DTMF_LEVEL_DBFS, MAX_DTMF_LEVEL_DBFS,
};
pub use error::CodecError;
pub use frame::{SampleRate, FRAME_DURATION, MAX_FRAME_SAMPLES};
pub use framer::{linear_pcm_to_mono, PcmFramer};
pub use g711::{
    alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear, G711Decoder, G711Encoder,
    G711Law,
};
pub use g722::{G722Decoder, G722Encoder};
pub use l16::{L16Decoder, L16Encoder};
pub use opus::{set_opus_settings, OpusDecoder, OpusEncoder, OpusSettings};
pub use resample::Resampler;
pub use signal::voice_like_frames;
pub use speex::{SpeexDecoder, SpeexEncoder, SpeexMode};
pub use transcode::Transcoder;
