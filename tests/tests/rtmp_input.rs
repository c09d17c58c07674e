//! Bad RTMP input over raw TCP: garbage, a handshake that stops half way,
//! a chunk announcing an oversized message. Each closes that connection
//! only; a client in the middle of its own session is not disturbed and the
//! gateway keeps serving.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dialtone_tests::gateway::{Gateway, LOOPBACK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANDSHAKE_PART: usize = 1536;
/// The gateway's limit on a client's setup (handshake and connect), with
/// margin.
const SETUP_LIMIT: Duration = Duration::from_secs(15);

/// C0 and C1 of a plain (unsigned) handshake.
fn c0_c1() -> Vec<u8> {
    let mut bytes = vec![3u8];
    bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    bytes.extend((8..HANDSHAKE_PART).map(|i| (i * 7 % 251) as u8));
    bytes
}

/// Connects and completes the handshake (C0 C1, S0 S1 S2, C2).
async fn handshaken(address: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(&c0_c1()).await?;
    let mut reply = vec![0u8; 1 + 2 * HANDSHAKE_PART];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .context("no S0 S1 S2")??;
    ensure!(reply[0] == 3, "S0 is {}", reply[0]);
    // C2 echoes S1.
    stream.write_all(&reply[1..=HANDSHAKE_PART]).await?;
    Ok(stream)
}

/// Sends `connect` (app `live`) as a client does after its handshake and
/// waits for the gateway's first answer.
async fn connect_app(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut command = vec![0x02, 0, 7];
    command.extend_from_slice(b"connect");
    command.push(0x00);
    command.extend_from_slice(&1.0f64.to_be_bytes());
    command.push(0x03);
    command.extend_from_slice(&[0, 3]);
    command.extend_from_slice(b"app");
    command.extend_from_slice(&[0x02, 0, 4]);
    command.extend_from_slice(b"live");
    command.extend_from_slice(&[0, 0, 0x09]);
    let length = command.len() as u32;
    let mut chunk = vec![0x03, 0, 0, 0];
    chunk.extend_from_slice(&length.to_be_bytes()[1..]);
    chunk.push(0x14);
    chunk.extend_from_slice(&[0, 0, 0, 0]);
    chunk.extend_from_slice(&command);
    stream.write_all(&chunk).await?;
    let mut answer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .context("no answer to connect")??;
    ensure!(read > 0, "closed instead of answering connect");
    Ok(())
}

/// The gateway closes `stream` within `limit`.
async fn closed_within(mut stream: TcpStream, limit: Duration) -> anyhow::Result<()> {
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    if closed.is_err() {
        bail!("the connection is still open after {limit:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_rtmp_input_closes_only_that_connection() -> anyhow::Result<()> {
    let gateway = Gateway::start(LOOPBACK)?;
    let rtmp = gateway.rtmp_addr()?;
    let mut bystander = handshaken(rtmp).await?;
    connect_app(&mut bystander).await?;

    // Garbage instead of a handshake.
    let mut garbage = TcpStream::connect(rtmp).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    closed_within(garbage, Duration::from_secs(5))
        .await
        .context("garbage")?;

    // A handshake that stops half way, the socket left open.
    let mut truncated = TcpStream::connect(rtmp).await?;
    truncated.write_all(&c0_c1()[..700]).await?;
    closed_within(truncated, SETUP_LIMIT)
        .await
        .context("truncated handshake")?;

    // A chunk announcing a 16 MB command message.
    let mut oversized = handshaken(rtmp).await?;
    let mut chunk = vec![0x03];
    chunk.extend_from_slice(&[0, 0, 0]); // timestamp
    chunk.extend_from_slice(&[0xff, 0xff, 0xff]); // message length
    chunk.push(0x14); // AMF0 command
    chunk.extend_from_slice(&[0, 0, 0, 0]);
    chunk.extend_from_slice(&[0x02; 128]);
    oversized.write_all(&chunk).await?;
    closed_within(oversized, Duration::from_secs(5))
        .await
        .context("oversized chunk")?;

    // The bystander's connection is untouched, and new clients are served.
    let mut probe = [0u8; 4096];
    loop {
        // What is left of the connect answer, then nothing: open and quiet.
        match tokio::time::timeout(Duration::from_millis(300), bystander.read(&mut probe)).await {
            Err(_) => break,
            Ok(Ok(read)) if read > 0 => continue,
            Ok(other) => bail!("the bystander's connection was closed: {other:?}"),
        }
    }
    handshaken(rtmp)
        .await
        .context("a new client after the bad ones")?;
    let (status, _) = gateway.http_get("/health")?;
    ensure!(status == 200, "health {status}");
    Ok(())
}
