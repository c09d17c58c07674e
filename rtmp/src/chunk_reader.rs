//! Reassembles the messages of an RTMP chunk stream (RTMP 1.0 §5.3) under
//! limits a server can afford when the peer is hostile.
//!
//! Why not rml_rtmp's `ChunkDeserializer`: it keeps one partial message for
//! all chunk streams (interleaved chunk streams corrupt it), subtracts
//! peer-controlled lengths without checks (a header that shrinks a message
//! mid-way panics in debug builds and asks for a near-`usize::MAX`
//! allocation in release builds), and buffers any announced message length.
//! This reader keeps a partial message per chunk stream, turns every such
//! case into a [`ChunkError`], and never buffers the payload of message
//! types the caller drops (video), so a camera's key frames cost nothing.
//!
//! It also applies the two chunk-layer control messages itself, Set Chunk
//! Size (type 1) and Abort (type 2), because they change how the very next
//! chunk is read.

use std::collections::HashMap;

/// The chunk size every RTMP peer starts with.
const INITIAL_CHUNK_SIZE: usize = 128;
/// A 24-bit timestamp field of all ones means "the real value follows in
/// four more bytes".
const EXTENDED_TIMESTAMP_MARKER: u32 = 0x00FF_FFFF;
/// More chunk streams than any client uses (ffmpeg and OBS use under ten);
/// each one keeps a header and possibly a partial message.
const MAX_CHUNK_STREAMS: usize = 64;

const TYPE_SET_CHUNK_SIZE: u8 = 1;
const TYPE_ABORT: u8 = 2;

/// Why the chunk stream cannot be read further; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("the peer asked for chunk size {requested}, outside 1..={max}")]
    ChunkSizeOutOfRange { requested: u32, max: usize },
    #[error("message of type {type_id} announces {length} bytes, more than the {max} allowed")]
    MessageTooLarge {
        type_id: u8,
        length: usize,
        max: usize,
    },
    #[error("chunk stream {csid} continues a header it never sent")]
    NoPreviousHeader { csid: u32 },
    #[error("chunk stream {csid} starts a new message header before finishing the last message")]
    HeaderInsideMessage { csid: u32 },
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams in use")]
    TooManyChunkStreams,
    #[error("malformed {what} control message")]
    BadControlMessage { what: &'static str },
}

/// A complete RTMP message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub type_id: u8,
    pub message_stream_id: u32,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

/// Limits and drop policy for a [`ChunkReader`].
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// The largest chunk size the peer may announce.
    pub max_chunk_size: usize,
    /// The largest message of a kept type the peer may send.
    pub max_message_size: usize,
    /// Message types skipped without buffering; they are never returned.
    pub dropped_types: &'static [u8],
}

/// What one chunk stream remembers from its last header, and its message in
/// progress.
#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last timestamp field (absolute after a type 0 header, a delta
    /// after types 1 and 2); a type 3 header that starts a message adds it
    /// again, as ffmpeg and librtmp do.
    timestamp_field: u32,
    /// The last header's timestamp field was the extended marker, so type 3
    /// chunks carry four extended-timestamp bytes too.
    extended: bool,
    message_length: usize,
    type_id: u8,
    message_stream_id: u32,
    /// Payload bytes of the message in progress received so far.
    received: usize,
    /// The message in progress, unless its type is dropped.
    payload: Vec<u8>,
}

impl ChunkStream {
    fn in_progress(&self) -> bool {
        self.received > 0
    }
}

/// One chunk read: its length on the wire and the message it completed.
struct ChunkRead {
    length: usize,
    completed: Option<ReceivedMessage>,
}

/// The fields of one chunk's header, read without consuming input.
struct ChunkHeader {
    format: u8,
    csid: u32,
    /// Header bytes before the payload.
    length: usize,
    timestamp_field: u32,
    extended: bool,
    message_length: usize,
    type_id: u8,
    message_stream_id: u32,
}

pub struct ChunkReader {
    limits: ChunkLimits,
    chunk_size: usize,
    input: Vec<u8>,
    streams: HashMap<u32, ChunkStream>,
}

impl ChunkReader {
    pub fn new(limits: ChunkLimits) -> ChunkReader {
        ChunkReader {
            limits,
            chunk_size: INITIAL_CHUNK_SIZE,
            input: Vec::new(),
            streams: HashMap::new(),
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<ReceivedMessage>, ChunkError> {
        let mut consumed = 0;
        let result = loop {
            match self.read_chunk(consumed) {
                Ok(Some(chunk)) => {
                    consumed += chunk.length;
                    if chunk.completed.is_some() {
                        break Ok(chunk.completed);
                    }
                }
                Ok(None) => break Ok(None),
                Err(error) => break Err(error),
            }
        };
        self.input.drain(..consumed);
        result
    }

    /// Reads one whole chunk starting at `offset`, or `None` if the chunk is
    /// not all there yet.
    fn read_chunk(&mut self, offset: usize) -> Result<Option<ChunkRead>, ChunkError> {
        let input = self.input.get(offset..).unwrap_or_default();
        let Some(header) = self.read_header(input)? else {
            return Ok(None);
        };

        if !self.streams.contains_key(&header.csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams);
        }
        let dropped = self.limits.dropped_types.contains(&header.type_id);
        if !dropped && header.message_length > self.limits.max_message_size {
            return Err(ChunkError::MessageTooLarge {
                type_id: header.type_id,
                length: header.message_length,
                max: self.limits.max_message_size,
            });
        }

        let received = self.streams.get(&header.csid).map_or(0, |s| s.received);
        let payload_length = header
            .message_length
            .saturating_sub(received)
            .min(self.chunk_size);
        let Some(payload) = input.get(header.length..header.length + payload_length) else {
            return Ok(None);
        };

        let stream = self.streams.entry(header.csid).or_default();
        if !stream.in_progress() {
            stream.timestamp = if header.format == 0 {
                header.timestamp_field
            } else {
                stream.timestamp.wrapping_add(header.timestamp_field)
            };
            stream.timestamp_field = header.timestamp_field;
        }
        if header.format < 3 {
            stream.extended = header.extended;
            stream.message_length = header.message_length;
            stream.type_id = header.type_id;
            stream.message_stream_id = header.message_stream_id;
        }
        if !dropped {
            stream.payload.extend_from_slice(payload);
        }
        stream.received += payload_length;

        let length = header.length + payload_length;
        let incomplete = ChunkRead {
            length,
            completed: None,
        };
        if stream.received < stream.message_length {
            return Ok(Some(incomplete));
        }
        stream.received = 0;
        let message = ReceivedMessage {
            type_id: stream.type_id,
            message_stream_id: stream.message_stream_id,
            timestamp: stream.timestamp,
            payload: std::mem::take(&mut stream.payload),
        };
        match message.type_id {
            _ if dropped => {}
            TYPE_SET_CHUNK_SIZE => self.set_chunk_size(&message.payload)?,
            TYPE_ABORT => self.abort(&message.payload)?,
            _ => {
                return Ok(Some(ChunkRead {
                    length,
                    completed: Some(message),
                }))
            }
        }
        Ok(Some(incomplete))
    }

    /// Parses the basic, message and extended-timestamp headers at the start
    /// of `input`, filling in what a compressed header leaves out.
    fn read_header(&self, input: &[u8]) -> Result<Option<ChunkHeader>, ChunkError> {
        let mut reader = ByteReader { input, position: 0 };
        let Some(first) = reader.byte() else {
            return Ok(None);
        };
        let format = first >> 6;
        let csid = match first & 0x3f {
            0 => match reader.byte() {
                Some(low) => 64 + u32::from(low),
                None => return Ok(None),
            },
            1 => match reader.bytes::<2>() {
                Some([low, high]) => 64 + u32::from(low) + 256 * u32::from(high),
                None => return Ok(None),
            },
            csid => u32::from(csid),
        };

        let previous = self.streams.get(&csid);
        if format == 0 {
            if previous.is_some_and(ChunkStream::in_progress) {
                return Err(ChunkError::HeaderInsideMessage { csid });
            }
        } else {
            match previous {
                None => return Err(ChunkError::NoPreviousHeader { csid }),
                Some(stream) if format < 3 && stream.in_progress() => {
                    return Err(ChunkError::HeaderInsideMessage { csid });
                }
                Some(_) => {}
            }
        }

        let mut header = ChunkHeader {
            format,
            csid,
            length: 0,
            timestamp_field: previous.map_or(0, |s| s.timestamp_field),
            extended: previous.is_some_and(|s| s.extended),
            message_length: previous.map_or(0, |s| s.message_length),
            type_id: previous.map_or(0, |s| s.type_id),
            message_stream_id: previous.map_or(0, |s| s.message_stream_id),
        };
        if format < 3 {
            let Some(field) = reader.u24() else {
                return Ok(None);
            };
            header.timestamp_field = field;
            header.extended = field == EXTENDED_TIMESTAMP_MARKER;
        }
        if format < 2 {
            let (Some(length), Some(type_id)) = (reader.u24(), reader.byte()) else {
                return Ok(None);
            };
            header.message_length = length as usize;
            header.type_id = type_id;
        }
        if format == 0 {
            let Some(stream_id) = reader.bytes::<4>() else {
                return Ok(None);
            };
            // The one little-endian field of the chunk header.
            header.message_stream_id = u32::from_le_bytes(stream_id);
        }
        if header.extended {
            let Some(extended) = reader.bytes::<4>() else {
                return Ok(None);
            };
            // A type 3 chunk repeats the extended timestamp of the header it
            // continues; only the first chunk of a message sets the field.
            if format < 3 || !previous.is_some_and(ChunkStream::in_progress) {
                header.timestamp_field = u32::from_be_bytes(extended);
            }
        }
        header.length = reader.position;
        Ok(Some(header))
    }

    fn set_chunk_size(&mut self, payload: &[u8]) -> Result<(), ChunkError> {
        let bytes = payload
            .first_chunk::<4>()
            .ok_or(ChunkError::BadControlMessage {
                what: "Set Chunk Size",
            })?;
        // The top bit is reserved and must be zero; a set bit reads as out of range.
        let requested = u32::from_be_bytes(*bytes);
        let max = self.limits.max_chunk_size;
        match usize::try_from(requested) {
            Ok(size) if (1..=max).contains(&size) => {
                self.chunk_size = size;
                Ok(())
            }
            _ => Err(ChunkError::ChunkSizeOutOfRange { requested, max }),
        }
    }

    fn abort(&mut self, payload: &[u8]) -> Result<(), ChunkError> {
        let bytes = payload
            .first_chunk::<4>()
            .ok_or(ChunkError::BadControlMessage { what: "Abort" })?;
        if let Some(stream) = self.streams.get_mut(&u32::from_be_bytes(*bytes)) {
            stream.received = 0;
            stream.payload.clear();
        }
        Ok(())
    }
}

/// Big-endian reads from a slice that report running out instead of panicking.
struct ByteReader<'a> {
    input: &'a [u8],
    position: usize,
}

impl ByteReader<'_> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.input.get(self.position..)?.first_chunk::<N>()?;
        self.position += N;
        Some(*bytes)
    }

    fn byte(&mut self) -> Option<u8> {
        self.bytes::<1>().map(|[byte]| byte)
    }

    fn u24(&mut self) -> Option<u32> {
        self.bytes::<3>()
            .map(|[high, middle, low]| u32::from_be_bytes([0, high, middle, low]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_chunk_size: 65_536,
        max_message_size: 65_536,
        dropped_types: &[9],
    };

    fn payload(type_id: u8, stream: u32, timestamp: u32, data: &[u8]) -> MessagePayload {
        MessagePayload {
            timestamp: RtmpTimestamp::new(timestamp),
            message_stream_id: stream,
            type_id,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn read_all(reader: &mut ChunkReader) -> Vec<ReceivedMessage> {
        let mut messages = Vec::new();
        while let Some(message) = reader.next_message().unwrap() {
            messages.push(message);
        }
        messages
    }

    #[test]
    fn reads_what_rml_rtmp_writes_byte_by_byte() {
        // Compressed headers (types 1, 2, 3), a message split over chunks,
        // a chunk size change and a timestamp past the 24-bit field.
        let mut serializer = ChunkSerializer::new();
        let big: Vec<u8> = (0..1000_u32).map(|i| (i % 251) as u8).collect();
        let sent = [
            payload(8, 1, 0, &[0xB2, 1, 2]),
            payload(8, 1, 20, &[0xB2, 3, 4]),
            payload(8, 1, 40, &[0xB2, 5, 6]),
            payload(20, 0, 0, &big),
            payload(8, 1, 0x0100_0000, &big),
            payload(8, 1, 0x0100_0014, &[0xB2, 7]),
        ];
        let mut wire = Vec::new();
        for (index, message) in sent.iter().enumerate() {
            if index == 4 {
                wire.extend(
                    serializer
                        .set_max_chunk_size(300, RtmpTimestamp::new(0))
                        .unwrap()
                        .bytes,
                );
            }
            wire.extend(serializer.serialize(message, false, false).unwrap().bytes);
        }

        let mut reader = ChunkReader::new(LIMITS);
        let mut received = Vec::new();
        for byte in wire {
            reader.push(&[byte]);
            received.extend(read_all(&mut reader));
        }
        let expected: Vec<ReceivedMessage> = sent
            .iter()
            .map(|m| ReceivedMessage {
                type_id: m.type_id,
                message_stream_id: m.message_stream_id,
                timestamp: m.timestamp.value,
                payload: m.data.to_vec(),
            })
            .collect();
        assert_eq!(received, expected);
    }

    #[test]
    fn interleaved_chunk_streams_keep_their_own_messages() {
        // csid 4 and csid 5 each split a 200-byte message in two 128-byte
        // chunks and interleave them.
        let first: Vec<u8> = vec![1; 200];
        let second: Vec<u8> = vec![2; 200];
        let header = |csid: u8, type_id: u8| vec![csid, 0, 0, 0, 0, 0, 200, type_id, 1, 0, 0, 0];
        let mut wire = header(4, 8);
        wire.extend(&first[..128]);
        wire.extend(header(5, 18));
        wire.extend(&second[..128]);
        wire.push(0xC0 | 4);
        wire.extend(&first[128..]);
        wire.push(0xC0 | 5);
        wire.extend(&second[128..]);

        let mut reader = ChunkReader::new(LIMITS);
        reader.push(&wire);
        let messages = read_all(&mut reader);
        assert_eq!(messages.len(), 2);
        assert_eq!((messages[0].type_id, &messages[0].payload), (8, &first));
        assert_eq!((messages[1].type_id, &messages[1].payload), (18, &second));
    }

    #[test]
    fn dropped_types_are_skipped_whatever_their_size() {
        let mut serializer = ChunkSerializer::new();
        let key_frame = vec![0x17; 200_000];
        let mut reader = ChunkReader::new(LIMITS);
        reader.push(
            &serializer
                .serialize(&payload(9, 1, 0, &key_frame), false, false)
                .unwrap()
                .bytes,
        );
        reader.push(
            &serializer
                .serialize(&payload(8, 1, 0, &[0xB2]), false, false)
                .unwrap()
                .bytes,
        );
        let messages = read_all(&mut reader);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].type_id, 8);
    }

    #[test]
    fn refuses_an_oversized_message_from_its_header() {
        let mut reader = ChunkReader::new(LIMITS);
        // Type 0 header on csid 3: 1 MiB command message, no payload sent yet.
        reader.push(&[3, 0, 0, 0, 0x10, 0, 0, 20, 0, 0, 0, 0]);
        assert_eq!(
            reader.next_message(),
            Err(ChunkError::MessageTooLarge {
                type_id: 20,
                length: 0x10_0000,
                max: 65_536
            })
        );
    }

    #[test]
    fn refuses_chunk_sizes_out_of_range() {
        for requested in [0_u32, 65_537, 0x8000_0000] {
            let mut reader = ChunkReader::new(LIMITS);
            let mut wire = vec![2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            wire.extend(requested.to_be_bytes());
            reader.push(&wire);
            assert_eq!(
                reader.next_message(),
                Err(ChunkError::ChunkSizeOutOfRange {
                    requested,
                    max: 65_536
                })
            );
        }
    }

    #[test]
    fn refuses_headers_that_do_not_fit_the_stream_state() {
        let mut reader = ChunkReader::new(LIMITS);
        reader.push(&[0x43, 0, 0, 0, 0, 0, 1, 20]);
        assert_eq!(
            reader.next_message(),
            Err(ChunkError::NoPreviousHeader { csid: 3 })
        );

        // A 300-byte message on csid 3, then a type 1 header that shrinks it
        // mid-way: the case that underflows rml_rtmp's deserializer.
        let mut reader = ChunkReader::new(LIMITS);
        let mut wire = vec![3, 0, 0, 0, 0, 1, 0x2c, 20, 0, 0, 0, 0];
        wire.extend([0; 128]);
        wire.extend([0x43, 0, 0, 0, 0, 0, 10, 20]);
        reader.push(&wire);
        assert_eq!(
            reader.next_message(),
            Err(ChunkError::HeaderInsideMessage { csid: 3 })
        );
    }

    #[test]
    fn abort_discards_the_partial_message() {
        let mut reader = ChunkReader::new(LIMITS);
        let mut wire = vec![4, 0, 0, 0, 0, 1, 0x2c, 8, 1, 0, 0, 0];
        wire.extend([7; 128]);
        // Abort (type 2) for csid 4, then a fresh 2-byte message on csid 4.
        wire.extend([2, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 0, 0, 4]);
        wire.extend([4, 0, 0, 0, 0, 0, 2, 8, 1, 0, 0, 0, 0xB2, 9]);
        reader.push(&wire);
        let messages = read_all(&mut reader);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].payload, [0xB2, 9]);
    }

    #[test]
    fn garbage_errs_or_waits_but_never_panics() {
        let mut seed = 0x2545_f491_u32;
        for _ in 0..200 {
            let mut reader = ChunkReader::new(LIMITS);
            let garbage: Vec<u8> = (0..512)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed.to_le_bytes()[0]
                })
                .collect();
            reader.push(&garbage);
            while let Ok(Some(_)) = reader.next_message() {}
        }
    }
}
