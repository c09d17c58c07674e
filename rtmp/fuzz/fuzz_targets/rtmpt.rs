//! RTMPT: HTTP requests of RTMP tunnelled through POSTs. The input is a
//! series of requests separated by NUL bytes, each a path line then its
//! body; paths are parsed as the HTTP listener parses them and answered by
//! the listener's tunnels (at most two, so the cap is hit). Whatever the
//! requests, nothing may panic.
#![no_main]

use std::time::{Duration, Instant};

use dialtone_rtmp::{RtmptRequest, RtmptTunnels, ServerConfig};
use libfuzzer_sys::fuzz_target;

const MAX_TUNNELS: usize = 2;
const TUNNEL_IDS: [&str; 3] = ["t0", "t1", "t2"];

fuzz_target!(|data: &[u8]| {
    let mut tunnels = RtmptTunnels::new(ServerConfig::default(), MAX_TUNNELS);
    let start = Instant::now();
    for (index, request) in data.split(|&byte| byte == 0).enumerate() {
        let now = start + Duration::from_secs(index as u64);
        let (path, body) = match request.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&request[..end], &request[end + 1..]),
            None => (request, &[][..]),
        };
        let Ok(path) = std::str::from_utf8(path) else {
            continue;
        };
        match RtmptRequest::parse(path) {
            Some(RtmptRequest::Open) => {
                let _ = tunnels.open(TUNNEL_IDS[index % TUNNEL_IDS.len()], now);
            }
            Some(RtmptRequest::Send { tunnel, sequence }) => {
                let _ = tunnels.send(tunnel, sequence, body, now);
            }
            Some(RtmptRequest::Idle { tunnel, sequence }) => {
                let _ = tunnels.idle(tunnel, sequence, now);
            }
            Some(RtmptRequest::Close { tunnel, .. }) => {
                let _ = tunnels.close(tunnel);
            }
            None => {
                tunnels.expire(now, Duration::from_secs(2));
            }
        }
    }
});
