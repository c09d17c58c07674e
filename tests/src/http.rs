//! Minimal blocking HTTP/1.1 client, enough for the gateway's /status, /metrics and /drain.
//!
//! A hand-rolled client keeps the rig free of a heavy HTTP stack and shows exactly what went
//! over the wire when something is off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Sends `GET path` with `Connection: close` and returns (status code, body).
/// Handles `Content-Length`, `Transfer-Encoding: chunked` and read-to-EOF bodies.
pub(crate) fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    request(addr, "GET", path, &[], timeout)
}

/// Sends `method path` with the extra `headers`, no body and `Connection: close`; returns
/// (status code, body) whatever the code.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to http://{addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n{extra}{length}Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending {method} {path} to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading response to {method} {path} from {addr}"))?;
    parse_response(&raw).with_context(|| {
        format!(
            "bad HTTP response to {method} {path} from {addr}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(500)])
        )
    })
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no end of headers");
    };
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("bad status code in {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(len) = content_length {
        if body.len() < len {
            bail!("body truncated: {} of {len} bytes", body.len());
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).context("body is not UTF-8")?;
    Ok((code, body))
}

fn decode_chunked(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            bail!("chunk size line not terminated");
        };
        let size_line = std::str::from_utf8(&data[..eol]).context("chunk size not UTF-8")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk truncated");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() -> anyhow::Result<()> {
        let (code, body) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")?;
        assert_eq!((code, body.as_str()), (200, "{}"));
        let (code, body) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )?;
        assert_eq!((code, body.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
        Ok(())
    }
}
