//! The kernel fast path: steady same-codec relays forwarded by a TC
//! program (bpf/relay.c) on the interfaces' ingress, so that a relayed
//! packet costs no system call, copy or wake-up of the gateway. The room
//! decides what may be forwarded there ([`dialtone_room::offload`]); this
//! module loads and attaches the program, writes its rules and reads back
//! how far each relay has got.
//!
//! The program is attached with TCX links (kernel 6.6 or later), which the
//! kernel removes when the gateway exits, however it exits: no rule or
//! program outlives the process. Several gateways on one host each attach
//! their own; a program passes on what is not for its ports. Loading needs
//! CAP_BPF and CAP_NET_ADMIN (or root): without them the gateway relays
//! every packet itself, as before.
//!
//! This module must not know rooms or calls: it deals in ports, addresses
//! and the rule the program reads.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData};
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use dialtone_room::offload::{Offload, OffloadProgress};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{debug, info};

/// The program, compiled by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.o"));

/// `struct rule` of bpf/relay.c, field for field. Addresses, ports and
/// SSRCs are kept as the wire has them (network order), so that the
/// program compares and writes them without swapping.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rule {
    bound_address: u32,
    source_address: u32,
    source_port: u16,
    payload_type: u8,
    out_payload_type: u8,
    ssrc: u32,
    out_ssrc: u32,
    out_source_address: u32,
    out_destination_address: u32,
    out_source_port: u16,
    out_destination_port: u16,
    sequence_offset: u16,
    anchor_sequence: u16,
    timestamp_offset: u32,
    clock_rate: u32,
    redirect_ifindex: u32,
    extended_highest_sequence: u32,
    highest_timestamp: u32,
    jitter_q4: u32,
    last_transit: u32,
    has_transit: u32,
    padding: u32,
    packets: u64,
    octets: u64,
    last_arrival_ns: u64,
}

// bpf/relay.c asserts the same size.
const _: () = assert!(size_of::<Rule>() == 96);

/// The wire's order of an address or port, as the program reads it from
/// memory.
fn wire_u32(address: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(address.octets())
}

fn wire_u16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// Where a relayed packet leaves from and how it is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Egress {
    source: Ipv4Addr,
    /// 0: the far end is on this host; the stack delivers the packet.
    ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("cannot load the program: {0}")]
    Load(String),
    #[error("cannot attach to the loopback interface: {0}")]
    Attach(String),
}

/// The loaded program, attached to every interface that was up when it
/// started, and its rules.
pub struct FastPath {
    rules: MapData,
    relays: Gauge,
    forwarded: Counter,
    /// Holds the program and its links: dropped, the kernel detaches them.
    _program: Ebpf,
}

impl FastPath {
    /// Loads the program with room for `capacity` rules and attaches it to
    /// the loopback interface and every other interface that is up.
    /// `relays` and `forwarded` count the relays it carries and the
    /// packets it forwarded.
    pub fn start(
        capacity: u32,
        relays: Gauge,
        forwarded: Counter,
    ) -> Result<Arc<FastPath>, FastPathError> {
        let mut program = EbpfLoader::new()
            .set_max_entries("RULES", capacity.max(1))
            .load(PROGRAM)
            .map_err(|error| FastPathError::Load(error.to_string()))?;
        let classifier: &mut SchedClassifier = program
            .program_mut("relay")
            .ok_or_else(|| FastPathError::Load("no program named relay".into()))?
            .try_into()
            .map_err(|error: aya::programs::ProgramError| FastPathError::Load(error.to_string()))?;
        classifier
            .load()
            .map_err(|error| FastPathError::Load(error.to_string()))?;
        let mut attached = Vec::new();
        for interface in interfaces_up() {
            let result = classifier.attach_with_options(
                &interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            );
            match result {
                Ok(_) => attached.push(interface),
                Err(error) if interface == "lo" => {
                    return Err(FastPathError::Attach(error.to_string()))
                }
                Err(error) => debug!(%interface, %error, "fast path not attached"),
            }
        }
        let rules = match program.take_map("RULES") {
            Some(Map::HashMap(rules)) => rules,
            _ => return Err(FastPathError::Load("no hash map named RULES".into())),
        };
        info!(?attached, capacity, "kernel fast path on");
        Ok(Arc::new(FastPath {
            rules,
            relays,
            forwarded,
            _program: program,
        }))
    }

    /// Hands `offload` to the kernel: packets arriving at `receiving` go
    /// out as if sent from `sending`. The rule is taken back when the
    /// returned handle is dropped.
    pub fn install(
        self: &Arc<FastPath>,
        offload: &Offload,
        receiving: SocketAddr,
        sending: SocketAddr,
    ) -> io::Result<InstalledRule> {
        let unsupported = || io::Error::new(io::ErrorKind::Unsupported, "IPv4 relays only");
        let (SocketAddr::V4(source), SocketAddr::V4(destination)) =
            (offload.source, offload.destination)
        else {
            return Err(unsupported());
        };
        let (IpAddr::V4(bound), IpAddr::V4(sending_ip)) = (receiving.ip(), sending.ip()) else {
            return Err(unsupported());
        };
        let egress = egress(sending_ip, destination)?;
        let mapping = offload.mapping;
        let rule = Rule {
            bound_address: wire_u32(bound),
            source_address: wire_u32(*source.ip()),
            source_port: wire_u16(source.port()),
            payload_type: offload.payload_type,
            out_payload_type: offload.out_payload_type,
            ssrc: offload.ssrc.to_be(),
            out_ssrc: offload.out_ssrc.to_be(),
            out_source_address: wire_u32(egress.source),
            out_destination_address: wire_u32(*destination.ip()),
            out_source_port: wire_u16(sending.port()),
            out_destination_port: wire_u16(destination.port()),
            sequence_offset: mapping.sequence_offset,
            anchor_sequence: mapping.anchor_sequence,
            timestamp_offset: mapping.timestamp_offset,
            clock_rate: offload.clock_rate,
            redirect_ifindex: egress.ifindex,
            extended_highest_sequence: offload.extended_highest_sequence,
            highest_timestamp: mapping.highest_timestamp,
            jitter_q4: offload.jitter_q4,
            ..Rule::default()
        };
        let port = receiving.port();
        self.map_call(BPF_MAP_UPDATE_ELEM, port, &mut rule.clone(), BPF_NOEXIST)?;
        self.relays.inc();
        Ok(InstalledRule {
            fast_path: self.clone(),
            port: Some(port),
            counted: 0,
        })
    }

    /// One map command on the rule of `port`.
    fn map_call(
        &self,
        command: libc::c_long,
        port: u16,
        rule: &mut Rule,
        flags: u64,
    ) -> io::Result<()> {
        let attributes = MapElementAttributes {
            map_fd: self.rules.fd().as_fd().as_raw_fd() as u32,
            padding: 0,
            key: std::ptr::from_ref(&port) as u64,
            value: std::ptr::from_mut(rule) as u64,
            flags,
        };
        // SAFETY: the attributes point at a key and a value of the sizes
        // the map was made with, alive for the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                std::ptr::from_ref(&attributes),
                size_of::<MapElementAttributes>(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `bpf(2)` commands on map elements, and the flag that refuses to
/// overwrite.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_NOEXIST: u64 = 1;

/// The element commands' part of `union bpf_attr`.
#[repr(C)]
struct MapElementAttributes {
    map_fd: u32,
    padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A relay in the kernel's hands, until taken back or dropped (which
/// deletes its rule: a port that goes back to the pool must forward
/// nothing to its last call's far end).
pub struct InstalledRule {
    fast_path: Arc<FastPath>,
    port: Option<u16>,
    /// Its packets already added to the forwarded count.
    counted: u64,
}

impl InstalledRule {
    /// How far the relay has got, while the kernel goes on with it.
    pub fn progress(&mut self, now: Instant) -> io::Result<OffloadProgress> {
        self.read(BPF_MAP_LOOKUP_ELEM, now)
    }

    /// Takes the relay back from the kernel: its last progress.
    pub fn take(mut self, now: Instant) -> io::Result<OffloadProgress> {
        let progress = self.read(BPF_MAP_LOOKUP_AND_DELETE_ELEM, now);
        self.port = None;
        self.fast_path.relays.dec();
        progress
    }

    fn read(&mut self, command: libc::c_long, now: Instant) -> io::Result<OffloadProgress> {
        let port = self
            .port
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut rule = Rule::default();
        self.fast_path.map_call(command, port, &mut rule, 0)?;
        let counted = std::mem::replace(&mut self.counted, rule.packets);
        self.fast_path
            .forwarded
            .inc_by(rule.packets.saturating_sub(counted));
        Ok(progress(&rule, now))
    }
}

impl Drop for InstalledRule {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            self.fast_path.relays.dec();
            let mut unused = Rule::default();
            if let Err(error) = self
                .fast_path
                .map_call(BPF_MAP_DELETE_ELEM, port, &mut unused, 0)
            {
                debug!(port, %error, "fast path rule not deleted");
            }
        }
    }
}

/// The kernel's counters as the room takes them; the arrival time from
/// the kernel's monotonic clock, which `Instant` also reads.
fn progress(rule: &Rule, now: Instant) -> OffloadProgress {
    let last_arrival = (rule.packets > 0).then(|| {
        let ago = monotonic_ns().saturating_sub(rule.last_arrival_ns);
        now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now)
    });
    OffloadProgress {
        packets: rule.packets,
        octets: rule.octets,
        extended_highest_sequence: rule.extended_highest_sequence,
        highest_timestamp: rule.highest_timestamp,
        anchor_sequence: rule.anchor_sequence,
        jitter_q4: rule.jitter_q4,
        last_arrival,
    }
}

fn monotonic_ns() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(time.tv_nsec).unwrap_or(0)
}

/// How a packet from `sending` reaches `destination`: from the address
/// the routing table picks when the socket is bound to any, and through
/// the interface that holds that address, unless the destination is on
/// this host.
fn egress(sending: Ipv4Addr, destination: SocketAddrV4) -> io::Result<Egress> {
    let probe = UdpSocket::bind((sending, 0))?;
    probe.connect(destination)?;
    let IpAddr::V4(source) = probe.local_addr()?.ip() else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let addresses = interface_addresses()?;
    let local = destination.ip().is_loopback()
        || addresses
            .iter()
            .any(|(_, address)| address == destination.ip());
    if local {
        return Ok(Egress { source, ifindex: 0 });
    }
    let interface = addresses
        .iter()
        .find(|(_, address)| *address == source)
        .map(|(name, _)| name.clone())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no interface holds the source"))?;
    let name = std::ffi::CString::new(interface).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Egress { source, ifindex })
}

/// The IPv4 addresses of the host's interfaces, by interface name.
fn interface_addresses() -> io::Result<Vec<(String, Ipv4Addr)>> {
    Ok(interfaces()?
        .into_iter()
        .filter_map(|(name, _, address)| Some((name, address?)))
        .collect())
}

/// The interfaces that are up.
fn interfaces_up() -> Vec<String> {
    let mut names: Vec<String> = interfaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, up, _)| *up)
        .map(|(name, ..)| name)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every interface address entry: its interface's name, whether it is up,
/// and its IPv4 address if it is one.
fn interfaces() -> io::Result<Vec<(String, bool, Option<Ipv4Addr>)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills the pointer it is given, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut entries = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs made, not yet freed.
        let node = unsafe { &*entry };
        // SAFETY: ifa_name is a NUL-terminated string of the node.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let up = node.ifa_flags & libc::IFF_UP as u32 != 0;
        let address = (!node.ifa_addr.is_null())
            // SAFETY: a non-null address of the node; its family says
            // whether it is a sockaddr_in.
            .then(|| unsafe { &*node.ifa_addr })
            .filter(|address| i32::from(address.sa_family) == libc::AF_INET)
            // SAFETY: an AF_INET address is a sockaddr_in.
            .map(|_| unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in>() })
            .map(|address| Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)));
        entries.push((name, up, address));
        entry = node.ifa_next;
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(entries)
}
