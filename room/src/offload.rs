//! Handing a steady same-codec relay to a faster forwarder, and taking it
//! back.
//!
//! A relay whose packets need nothing of the room but renumbering (plain
//! RTP both ways, one listener, no digits, tones, mixing or recording) can
//! be forwarded below the room, by the driver's kernel fast path. After
//! [`OFFLOAD_AFTER`] such packets in a row the room puts out an
//! [`Offload`]: what to take (source address, SSRC, payload type), what to
//! make of it (destination, our SSRC, payload type and the sequence and
//! timestamp offsets) and where the stream's counters stand. From then on
//! the driver reports the forwarder's [`OffloadProgress`]
//! ([`crate::Input::Offloaded`]) before the room's timers run and at least
//! every second, so that the
//! receiving leg's statistics and inactivity timer and the sending leg's
//! stream carry on as if the room had relayed every packet; and it ends
//! the offload (taking the forwarder's last progress) before any command
//! and before any datagram at the speaker's socket (one the forwarder left
//! to the room). Datagrams at the listener's socket do not touch the relay,
//! except when its far end moves: then the room asks for the relay back
//! itself ([`crate::Output::Reclaim`]).
//!
//! This module must not know how the forwarding is done.

use std::net::SocketAddr;
use std::time::Instant;

use crate::point::{Point, PointId, Route, Transport};
use crate::rtp::{RelayMapping, RelayProgress, RtpHeader};
use crate::stats::ReceivedProgress;

/// Relayed packets in a row before a relay is handed over: a stream
/// settles (latching, a first mapping) before it leaves the room.
pub const OFFLOAD_AFTER: u16 = 50;

/// The most packets (and octets) one report may add.
const MAX_REPORTED: u64 = u32::MAX as u64;

/// A relay for a forwarder to carry: packets from `source` with `ssrc` and
/// `payload_type` arriving at point `from`'s socket go out of point `to`'s
/// socket to `destination`, as `out_payload_type` and `out_ssrc`, renumbered
/// by `mapping`. Only IPv4 relays are handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offload {
    pub from: PointId,
    pub to: PointId,
    pub source: SocketAddr,
    pub ssrc: u32,
    pub payload_type: u8,
    pub destination: SocketAddr,
    pub out_payload_type: u8,
    pub out_ssrc: u32,
    pub mapping: RelayMapping,
    /// Where the received stream's statistics stand: the extended highest
    /// sequence number (whose low 16 bits are the mapping's highest) and
    /// the jitter, times 16, in units of `clock_rate`.
    pub extended_highest_sequence: u32,
    pub jitter_q4: u32,
    pub clock_rate: u32,
}

/// What a forwarder has done with an [`Offload`] since it took it: counts
/// from its start, the rest where the stream now stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadProgress {
    pub packets: u64,
    /// Payload octets.
    pub octets: u64,
    pub extended_highest_sequence: u32,
    pub highest_timestamp: u32,
    pub anchor_sequence: u16,
    pub jitter_q4: u32,
    /// When the last packet arrived.
    pub last_arrival: Option<Instant>,
}

/// Where a point's relay toward its listener stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffloadState {
    /// In the room, after this many relayed packets in a row that a
    /// forwarder could have carried.
    Counting(u16),
    /// With a forwarder, which had reported `packets` and `octets`.
    Offloaded {
        to: PointId,
        ssrc: u32,
        packets: u64,
        octets: u64,
    },
}

impl Default for OffloadState {
    fn default() -> Self {
        OffloadState::Counting(0)
    }
}

/// After point `from` relayed `header` from `source`: the offload to hand
/// over once the relay has been steady long enough.
pub(crate) fn consider(
    points: &mut [Point],
    from: usize,
    source: SocketAddr,
    header: &RtpHeader,
) -> Option<Offload> {
    let OffloadState::Counting(run) = points[from].offload else {
        return None;
    };
    let Some(offload) = candidate(points, from, source, header) else {
        points[from].offload = OffloadState::Counting(0);
        return None;
    };
    if run + 1 < OFFLOAD_AFTER {
        points[from].offload = OffloadState::Counting(run + 1);
        return None;
    }
    points[from].offload = OffloadState::Offloaded {
        to: offload.to,
        ssrc: offload.ssrc,
        packets: 0,
        octets: 0,
    };
    Some(offload)
}

/// The offload that would carry on what the room just did with `header`
/// from point `from`, if nothing but renumbering was done to it.
fn candidate(
    points: &[Point],
    from: usize,
    source: SocketAddr,
    header: &RtpHeader,
) -> Option<Offload> {
    let speaker = &points[from];
    let plain = |point: &Point| {
        point.srtp.is_none()
            && matches!(point.transport, Transport::Rtp(_))
            && point.line().is_none()
    };
    let receives = speaker.receive.map(|(payload_type, _)| payload_type);
    if !plain(speaker)
        || !source.is_ipv4()
        || receives != Some(header.payload_type)
        || speaker.mix_input.is_some()
        || speaker.detector.is_some()
    {
        return None;
    }
    let Transport::Rtp(latch) = &speaker.transport else {
        return None;
    };
    if !latch.is_latched_to(source) {
        return None;
    }
    let mut listeners = points
        .iter()
        .enumerate()
        .filter(|(index, point)| *index != from && point.hears(speaker.id));
    let (_, listener) = listeners.next()?;
    if listeners.next().is_some()
        || !plain(listener)
        || !matches!(listener.route, Some(Route::Relay))
        || listener.needs_ticks()
    {
        return None;
    }
    let destination = listener.destination().filter(SocketAddr::is_ipv4)?;
    let (out_payload_type, _) = listener.audio?;
    let mapping = listener
        .sender
        .relay_mapping()
        .filter(|mapping| mapping.ssrc == header.ssrc)?;
    let received = match &speaker.watch {
        Some(watch) => watch.stats.receiver().progress().filter(|progress| {
            progress.ssrc == header.ssrc
                && progress.extended_highest_sequence as u16 == mapping.highest_sequence
        })?,
        None => ReceivedProgress {
            ssrc: header.ssrc,
            extended_highest_sequence: u32::from(mapping.highest_sequence),
            jitter_q4: 0,
        },
    };
    Some(Offload {
        from: speaker.id,
        to: listener.id,
        source,
        ssrc: header.ssrc,
        payload_type: header.payload_type,
        destination,
        out_payload_type,
        out_ssrc: listener.sender.ssrc(),
        mapping,
        extended_highest_sequence: received.extended_highest_sequence,
        jitter_q4: received.jitter_q4,
        clock_rate: speaker.clock(),
    })
}

/// Takes in a forwarder's progress with point `from`'s relay; `ended`: the
/// relay is back in the room.
pub(crate) fn progressed(
    points: &mut [Point],
    now: Instant,
    from: PointId,
    progress: OffloadProgress,
    ended: bool,
) {
    let Some(speaker) = points.iter_mut().find(|point| point.id == from) else {
        return;
    };
    let OffloadState::Offloaded {
        to,
        ssrc,
        packets,
        octets,
    } = speaker.offload
    else {
        return;
    };
    // A report can only add what a forwarder could have done meanwhile;
    // the bound keeps a false one from overflowing the counters.
    let new_packets = progress.packets.saturating_sub(packets).min(MAX_REPORTED);
    let new_octets = progress.octets.saturating_sub(octets).min(MAX_REPORTED);
    speaker.offload = if ended {
        OffloadState::Counting(0)
    } else {
        OffloadState::Offloaded {
            to,
            ssrc,
            packets: packets.max(progress.packets),
            octets: octets.max(progress.octets),
        }
    };
    if new_packets == 0 {
        return;
    }
    if let Some(watch) = speaker.watch.as_mut() {
        watch
            .inactivity
            .on_packet(progress.last_arrival.unwrap_or(now));
        let received = ReceivedProgress {
            ssrc,
            extended_highest_sequence: progress.extended_highest_sequence,
            jitter_q4: progress.jitter_q4,
        };
        watch
            .stats
            .receiver_mut()
            .received_elsewhere(received, new_packets, new_octets);
    }
    if let Some(listener) = points.iter_mut().find(|point| point.id == to) {
        let relayed = RelayProgress {
            highest_sequence: progress.extended_highest_sequence as u16,
            highest_timestamp: progress.highest_timestamp,
            anchor_sequence: progress.anchor_sequence,
        };
        listener
            .sender
            .relayed_elsewhere(relayed, new_packets, new_octets);
    }
}

/// The points whose relays go to `listener`, with a forwarder.
pub(crate) fn offloaded_to(
    points: &[Point],
    listener: PointId,
) -> impl Iterator<Item = PointId> + '_ {
    points.iter().filter_map(move |point| match point.offload {
        OffloadState::Offloaded { to, .. } if to == listener => Some(point.id),
        _ => None,
    })
}
