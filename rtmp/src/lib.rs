//! `dialtone-rtmp`: the RTMP side of the gateway, sans-IO.
//!
//! This crate owns what an RTMP client (a Flash-era softphone, ffmpeg, OBS, a
//! mobile SDK or a hardware encoder) sees of Dialtone:
//!
//! - [`FlashSdp`]: the adapted SDP of seed 000 that tells the client which
//!   RTMP endpoints to connect to and which stream names to publish and play.
//! - [`AudioTag`]: the FLV audio tag that heads every RTMP audio message
//!   (legacy SoundFormat byte or enhanced RTMP's FourCC header): which codec
//!   ([`FlvAudioCodec`]), which kind of packet, and the codec payload.
//! - [`ServerSession`]: the server side of one RTMP connection (handshake,
//!   chunking, connect / createStream / publish / play / closeStream /
//!   deleteStream and the replies real clients wait for), which turns the
//!   client's bytes into [`ServerEvent`]s and the gateway's answers and audio
//!   into bytes.
//! - [`RtmptTunnels`]: the same sessions tunnelled through HTTP POSTs (RTMPT:
//!   open / send / idle / close), for the gateway's HTTP server to route to.
//!
//! Everything is sans-IO: bytes and values go in, events and bytes come out.
//! There are no sockets, timers or async runtime here; the gateway drives
//! the state machines from its own tasks.
//!
//! The crate must not know about SIP, calls, rooms or tokio, nor look inside
//! codec payloads beyond the FLV framing: decoding, encoding and resampling
//! belong to `dialtone-codecs`, and deciding which stream names exist and who
//! may publish or play them belongs to the gateway.

#![forbid(unsafe_code)]

mod chunk_reader;
mod flash_sdp;
mod flv;
mod rtmpt;
mod server;

pub use bytes::Bytes;
pub use chunk_reader::ChunkError;
pub use flash_sdp::{FlashMedia, FlashSdp, FlashSdpError};
pub use flv::{opus_head, AudioTag, AudioTagKind, FlvAudioCodec, FlvError};
pub use rtmpt::{RtmptError, RtmptReply, RtmptRequest, RtmptTunnels, MAX_TUNNEL_ID_LEN};
pub use server::{
    PublishRefusal, RtmpError, ServerConfig, ServerEvent, ServerSession, MAX_COMMAND_SIZE,
};
