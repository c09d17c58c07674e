//! What an RTMP client sends on a TCP connection, to the gateway's server
//! session: the handshake, then chunks carrying AMF commands (connect,
//! createStream, publish, play, deleteStream), protocol control, user
//! control and audio. The first byte chooses whether a real client
//! handshake goes first (so the bytes after it reach the chunk reader and
//! the AMF decoder), how the rest is cut into reads, and how the driver
//! answers requests. Whatever comes in, the session must not panic.
#![no_main]

use dialtone_rtmp::{AudioTag, Bytes, PublishRefusal, ServerConfig, ServerEvent, ServerSession};
use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

/// One Speex frame, as the gateway sends a player.
const PLAYER_AUDIO: [u8; 3] = [0xB2, 0x1e, 0x5a];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let handshake_first = mode & 1 != 0;
    let accept_requests = mode & 2 != 0;
    // Reads of the whole input at once, or of 1 to 63 bytes.
    let read_size = match usize::from(mode >> 2) {
        0 => input.len().max(1),
        size => size,
    };
    let mut server = ServerSession::new(ServerConfig::default());
    if handshake_first {
        handshake(&mut server);
    }
    for read in input.chunks(read_size) {
        let Ok(events) = server.handle_input(read) else {
            // The driver closes the connection.
            return;
        };
        for event in events {
            answer(&mut server, event, accept_requests);
        }
        let _ = server.take_output();
    }
});

/// A client's simple handshake, which the session must complete.
fn handshake(server: &mut ServerSession) {
    let mut client = Handshake::new(PeerType::Client);
    let Ok(c0_c1) = client.generate_outbound_p0_and_p1() else {
        return;
    };
    assert!(server.handle_input(&c0_c1).is_ok(), "C0+C1 refused");
    match client.process_bytes(&server.take_output()) {
        Ok(HandshakeProcessResult::Completed { response_bytes, .. }) => {
            assert!(server.handle_input(&response_bytes).is_ok(), "C2 refused");
        }
        _ => panic!("the server's S0+S1+S2 did not complete a client's handshake"),
    }
}

/// Answers as the gateway's driver does; errors are the session refusing
/// an answer that no longer fits, which the driver logs.
fn answer(server: &mut ServerSession, event: ServerEvent, accept: bool) {
    match event {
        ServerEvent::PublishRequested { stream_id, .. } => {
            let _ = if accept {
                server.accept_publish(stream_id)
            } else {
                server.reject_publish(stream_id, PublishRefusal::BadName, "taken")
            };
        }
        ServerEvent::PlayRequested { stream_id, .. } => {
            if accept {
                let _ = server.accept_play(stream_id);
                let _ = server.send_audio(stream_id, 20, Bytes::from_static(&PLAYER_AUDIO));
                let _ = server.end_stream(stream_id, "call ended");
            } else {
                let _ = server.reject_play(stream_id, "no such stream");
            }
        }
        ServerEvent::Audio { data, .. } => {
            let _ = AudioTag::parse(&data);
        }
        ServerEvent::StreamClosed { stream_id } => {
            let _ = server.end_stream(stream_id, "closed");
        }
    }
}
