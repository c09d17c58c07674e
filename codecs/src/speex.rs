//! Speex narrowband (8 kHz) and wideband (16 kHz) through libspeex 1.2.1,
//! which `speex-sys` bundles, compiles and binds.
//!
//! This wraps `speex-sys` directly rather than its companion `speex-safe`:
//! that wrapper cannot conceal a lost frame (libspeex does it when handed a
//! null bitstream, which `speex-safe` has no way to pass), its types are not
//! `Send`, and it unwraps libspeex results internally.

use std::ffi::{c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};

use speex_sys as sys;

use crate::{Codec, CodecError, Decoder, Encoder};

/// libspeex's default quality, fixed-rate: 15 kbit/s narrowband, 27.8
/// kbit/s wideband (see [`Codec::max_payload_len`]).
const QUALITY: c_int = 8;

/// Which Speex band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeexMode {
    Narrowband,
    Wideband,
}

impl SpeexMode {
    fn codec(self) -> Codec {
        match self {
            Self::Narrowband => Codec::SpeexNarrow,
            Self::Wideband => Codec::SpeexWide,
        }
    }

    fn definition(self) -> Result<*const sys::SpeexMode, CodecError> {
        let id = match self {
            Self::Narrowband => sys::SPEEX_MODEID_NB,
            Self::Wideband => sys::SPEEX_MODEID_WB,
        };
        // SAFETY: looks the id up in libspeex's static mode table; both ids
        // exist, and a null result is handled below anyway.
        let definition = unsafe { sys::speex_lib_get_mode(id) };
        if definition.is_null() {
            Err(CodecError::Speex("libspeex lacks the requested mode"))
        } else {
            Ok(definition)
        }
    }
}

/// A `SpeexBits` bitstream with the buffer libspeex allocated for it.
struct Bits(sys::SpeexBits);

impl Bits {
    fn new() -> Result<Self, CodecError> {
        // Zeroed rather than uninitialised: if libspeex cannot allocate its
        // buffer it returns early and leaves the struct untouched.
        let mut bits = MaybeUninit::<sys::SpeexBits>::zeroed();
        // SAFETY: `bits` points to writable memory of the right type;
        // every field of the all-zero struct is a valid value.
        let bits = unsafe {
            sys::speex_bits_init(bits.as_mut_ptr());
            bits.assume_init()
        };
        if bits.chars.is_null() {
            return Err(CodecError::Speex("cannot allocate a bitstream"));
        }
        Ok(Self(bits))
    }

    fn as_mut_ptr(&mut self) -> *mut sys::SpeexBits {
        &mut self.0
    }

    /// Bytes libspeex can load without reallocating its buffer.
    fn capacity(&self) -> usize {
        usize::try_from(self.0.buf_size).unwrap_or(0)
    }
}

impl Drop for Bits {
    fn drop(&mut self) {
        // SAFETY: initialised by `speex_bits_init` in `new`, freed once.
        unsafe { sys::speex_bits_destroy(&mut self.0) }
    }
}

fn check_ctl(status: c_int) -> Result<(), CodecError> {
    match status {
        0 => Ok(()),
        _ => Err(CodecError::Speex("control request rejected")),
    }
}

fn check_frame_size(mode: SpeexMode, frame_size: c_int) -> Result<(), CodecError> {
    if usize::try_from(frame_size) == Ok(mode.codec().frame_samples()) {
        Ok(())
    } else {
        Err(CodecError::Speex("libspeex frame size is not 20 ms"))
    }
}

/// Speex encoder, fixed rate at quality 8.
pub struct SpeexEncoder {
    mode: SpeexMode,
    state: NonNull<c_void>,
    bits: Bits,
    /// libspeex may overwrite its input, so the caller's frame is copied
    /// here first.
    scratch: Vec<i16>,
}

// SAFETY: the encoder state and bitstream are heap memory owned by this
// value alone; libspeex keeps no thread-bound or global mutable state, and
// every call goes through `&mut self`.
unsafe impl Send for SpeexEncoder {}

impl SpeexEncoder {
    pub fn new(mode: SpeexMode) -> Result<Self, CodecError> {
        let definition = mode.definition()?;
        let bits = Bits::new()?;
        // SAFETY: `definition` is a valid mode from libspeex's table.
        let state = NonNull::new(unsafe { sys::speex_encoder_init(definition) })
            .ok_or(CodecError::Speex("cannot create an encoder"))?;
        let mut encoder = Self {
            mode,
            state,
            bits,
            scratch: vec![0; mode.codec().frame_samples()],
        };
        let mut quality = QUALITY;
        encoder.ctl(sys::SPEEX_SET_QUALITY, &mut quality)?;
        let mut frame_size = 0;
        encoder.ctl(sys::SPEEX_GET_FRAME_SIZE, &mut frame_size)?;
        check_frame_size(mode, frame_size)?;
        Ok(encoder)
    }

    fn ctl(&mut self, request: c_int, value: &mut c_int) -> Result<(), CodecError> {
        // SAFETY: the state is live; the requests used here read or write
        // one `int` through the pointer.
        check_ctl(unsafe {
            sys::speex_encoder_ctl(self.state.as_ptr(), request, ptr::from_mut(value).cast())
        })
    }
}

impl Drop for SpeexEncoder {
    fn drop(&mut self) {
        // SAFETY: created by `speex_encoder_init`, destroyed once.
        unsafe { sys::speex_encoder_destroy(self.state.as_ptr()) }
    }
}

impl Encoder for SpeexEncoder {
    fn codec(&self) -> Codec {
        self.mode.codec()
    }

    fn encode(&mut self, pcm: &[i16], payload: &mut [u8]) -> Result<usize, CodecError> {
        let codec = self.codec();
        codec.sample_rate().check_frame(pcm)?;
        let out = codec.payload_out(payload)?;
        self.scratch.copy_from_slice(pcm);
        let bits = self.bits.as_mut_ptr();
        // SAFETY: state and bitstream are live; `scratch` holds exactly the
        // mode's frame size, which libspeex reads (and may overwrite).
        let encoded_len = unsafe {
            sys::speex_bits_reset(bits);
            sys::speex_encode_int(self.state.as_ptr(), self.scratch.as_mut_ptr(), bits);
            sys::speex_bits_nbytes(bits)
        };
        let encoded_len = usize::try_from(encoded_len).unwrap_or(usize::MAX);
        // speex_bits_write would silently cut a frame that does not fit.
        if encoded_len > out.len() {
            return Err(CodecError::BufferTooSmall {
                required: encoded_len,
                available: out.len(),
            });
        }
        let capacity = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: writes at most `capacity` bytes into `out`.
        let written =
            unsafe { sys::speex_bits_write(bits, out.as_mut_ptr().cast::<c_char>(), capacity) };
        Ok(usize::try_from(written).unwrap_or(0))
    }
}

/// Speex decoder with libspeex's own concealment (and its perceptual
/// enhancer, on by default). Each payload must start with one 20 ms frame;
/// anything after it is ignored.
pub struct SpeexDecoder {
    mode: SpeexMode,
    state: NonNull<c_void>,
    bits: Bits,
}

// SAFETY: as for `SpeexEncoder`.
unsafe impl Send for SpeexDecoder {}

impl SpeexDecoder {
    pub fn new(mode: SpeexMode) -> Result<Self, CodecError> {
        let definition = mode.definition()?;
        let bits = Bits::new()?;
        // SAFETY: `definition` is a valid mode from libspeex's table.
        let state = NonNull::new(unsafe { sys::speex_decoder_init(definition) })
            .ok_or(CodecError::Speex("cannot create a decoder"))?;
        let decoder = Self { mode, state, bits };
        let mut frame_size = 0;
        // SAFETY: the state is live; GET_FRAME_SIZE writes one `int`.
        check_ctl(unsafe {
            sys::speex_decoder_ctl(
                decoder.state.as_ptr(),
                sys::SPEEX_GET_FRAME_SIZE,
                ptr::from_mut(&mut frame_size).cast(),
            )
        })?;
        check_frame_size(mode, frame_size)?;
        Ok(decoder)
    }
}

impl Drop for SpeexDecoder {
    fn drop(&mut self) {
        // SAFETY: created by `speex_decoder_init`, destroyed once.
        unsafe { sys::speex_decoder_destroy(self.state.as_ptr()) }
    }
}

impl Decoder for SpeexDecoder {
    fn codec(&self) -> Codec {
        self.mode.codec()
    }

    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        let codec = self.codec();
        let out = codec.sample_rate().frame_out(pcm)?;
        let wrong_length = CodecError::PayloadLength {
            codec,
            len: payload.len(),
        };
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload { codec });
        }
        if payload.len() > self.bits.capacity() {
            return Err(wrong_length);
        }
        let bits = self.bits.as_mut_ptr();
        // SAFETY: the payload fits the bitstream's buffer (checked above) and
        // `out` holds the mode's frame size, all libspeex writes.
        let (status, remaining_bits) = unsafe {
            sys::speex_bits_read_from(
                bits,
                payload.as_ptr().cast::<c_char>(),
                payload.len() as c_int,
            );
            let status = sys::speex_decode_int(self.state.as_ptr(), bits, out.as_mut_ptr());
            (status, sys::speex_bits_remaining(bits))
        };
        match status {
            0 if remaining_bits >= 0 => Ok(out.len()),
            // -1: the payload ended before a frame; a negative remainder:
            // the decoder had to read past its end.
            0 | -1 => Err(wrong_length),
            _ => Err(CodecError::MalformedPayload { codec }),
        }
    }

    fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let out = self.codec().sample_rate().frame_out(pcm)?;
        // SAFETY: a null bitstream is libspeex's signal for a lost frame;
        // `out` holds the mode's frame size.
        let status = unsafe {
            sys::speex_decode_int(self.state.as_ptr(), ptr::null_mut(), out.as_mut_ptr())
        };
        match status {
            0 => Ok(out.len()),
            _ => Err(CodecError::Speex("concealment failed")),
        }
    }
}
