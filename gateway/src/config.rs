//! Configuration: built-in defaults, then one TOML file, then environment
//! variables. With no file and no variables the gateway serves on
//! 127.0.0.1 and accepts any user name (no registrar), which is what a
//! newcomer trying it on a laptop needs.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use dialtone_sip::SipTarget;
use dialtone_ws::IceServer;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub websocket: WebSocketConfig,
    pub sip: SipConfig,
    pub sessions: SessionsConfig,
    pub registrar: Option<RegistrarConfig>,
    pub users: Vec<StaticUser>,
    pub calls: CallsConfig,
    pub media: MediaConfig,
    pub webrtc: WebRtcConfig,
    pub rtmp: RtmpConfig,
    pub rooms: RoomsConfig,
    pub recording: RecordingConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// CREATE_MEDIA_POINT points a session may hold at once.
    pub max_points_per_session: usize,
    /// Members (JOIN_ROOM points and calls placed into a room) per room.
    pub max_members: usize,
    /// Conference rooms (CREATE_ROOM) on the gateway at once; a call's
    /// own room is not counted.
    pub max_rooms: usize,
    /// Who may join a room: `same_user` (sessions of the room owner's user,
    /// and users the owner invited with INVITE_TO_ROOM) or `anyone` (any
    /// session that knows the 128-bit roomId).
    pub join_policy: JoinPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    SameUser,
    Anyone,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Where recordings are written (WAV, 16 kHz mono); recording is off
    /// when unset.
    pub directory: Option<std::path::PathBuf>,
    /// A recording stops (RECORDING_STOPPED `SIZE_LIMIT`) at this size.
    pub max_bytes: u64,
    /// Recordings running at once on the gateway.
    pub max_recordings: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// A drain (SIGTERM, POST /drain) lets calls in progress go on at most
    /// this long; then the gateway stops and ends the ones left.
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// RTMP (with RTMPT on the HTTP port and RTMPS when configured).
    pub enabled: bool,
    /// Where RTMP clients connect.
    pub listen: SocketAddr,
    /// RTMPS: where TLS clients connect, with the certificate chain and
    /// key (PEM files); off unless all three are set.
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// The endpoints the Flash SDP lists (`rtmp://host:port/app`, ...);
    /// when empty, RTMP, RTMPS (when on) and RTMPT (on the HTTP port) at the
    /// advertised address, app `live`.
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// The address in the gateway's ICE candidates (behind NAT, the public
    /// one); the SIP side's advertised address when unset.
    pub public_ip: Option<IpAddr>,
    /// A WebRTC point whose ICE and DTLS have not completed this long after
    /// the client's answer fails the call (CALL_FAILED MEDIA_FAILED).
    pub connect_timeout_ms: u64,
    /// A connected WebRTC point from which nothing (no consent check, no
    /// media) arrives this long fails the call (RFC 7675 says 30 s).
    pub consent_timeout_ms: u64,
    /// STUN / TURN servers handed to clients in SESSION_STARTED.
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Where INVITEs go (`sip:host:port;transport=udp|tcp|tls` or `sips:…`); the registrar
    /// when empty. With neither, a bUri must name its host.
    pub proxy: String,
    /// Domain for bare numbers in bUri; the registrar's domain when empty.
    pub domain: String,
    /// An outgoing call not answered by then is cancelled: CALL_FAILED
    /// UNAVAILABE.
    pub no_answer_timeout_ms: u64,
    /// An incoming call the client neither accepts nor rejects by then gets
    /// 480 and CALL_FAILED UNAVAILABE.
    pub incoming_answer_timeout_ms: u64,
    /// Answer the built-in `echo`, `tone` and `digits` lines: `"auto"`
    /// (the default) turns them on only in open mode with every listener
    /// on loopback; `true` / `false` decide outright.
    pub test_lines: TestLinesSwitch,
    /// While an outgoing call rings without early media of its own (180
    /// without SDP), the client hears a ringback tone in this country's
    /// cadence; `off` (the default) leaves it silent.
    pub ringback: RingbackTone,
    /// Send P-Asserted-Identity (RFC 3325) with the session's identity on
    /// outgoing INVITEs: for a trunk that trusts the gateway. Off by
    /// default: toward an untrusted network it reveals nothing more than
    /// From, but a trunk that honours it must only hear it from us.
    pub asserted_identity: bool,
    /// A far end's REFER (it transfers us): `dial_plan` (the default)
    /// follows it when the client itself could call the target, `allow`
    /// follows any SIP target, `deny` refuses every REFER.
    pub incoming_refer: ReferPolicy,
    /// A WAV file (16-bit PCM mono, 8 kHz) a far end hears in a loop while
    /// the client holds it with `sendonly`; silence when empty.
    pub hold_music: std::path::PathBuf,
    /// Caller numbers (From's user part) a client may claim with
    /// `callerNumber`: user name, or `*` for everyone, to glob patterns.
    /// Empty: calls come from the user name only.
    pub caller_numbers: std::collections::BTreeMap<String, Vec<String>>,
    // Exposure and abuse controls (hardening, see docs/decisions.md).
    /// Test lines answer INVITEs from anyone, not only from the gateway's
    /// own SIP address.
    pub test_lines_public: bool,
    /// A test line call hangs up by itself after this.
    pub test_line_max_ms: u64,
    /// Dial plan: glob patterns (`*`, `?`) on the bUri's `user` (a pattern
    /// without `@`) or `user@host[:port]`; a call must match an `allow`
    /// pattern (when any is set) and no `deny` pattern.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Calls (outgoing and incoming) a session, a connection and the
    /// whole gateway may hold at once.
    pub max_calls_per_session: usize,
    pub max_calls_per_connection: usize,
    pub max_calls: usize,
    /// START_CALL per session: a burst, then this many per minute.
    pub start_burst: u32,
    pub starts_per_minute: u32,
    /// The longest dtmfString SEND_DTMF_SIGNAL takes.
    pub max_dtmf_digits: usize,
}

/// `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TestLinesSwitch {
    Set(bool),
    Auto(AutoWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// RTP ports are taken from this range (inclusive), RTCP on the next
    /// odd port.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// An established call whose far end sends no RTP for this long (or
    /// never starts) ends with CALL_FAILED MEDIA_FAILED.
    pub rtp_timeout_ms: u64,
    /// How SEND_DTMF_SIGNAL reaches the SIP side: the first of these the
    /// call can use (`rfc4733` needs telephone-event negotiated, `inband`
    /// needs media).
    pub dtmf_send: Vec<DtmfMethod>,
    /// When to look for DTMF tones in the SIP side's audio.
    pub inband_detection: InbandDetection,
    /// Strict source on RTP points (the SIP leg, a client's plain RTP
    /// point): where the far end is, is learnt from its first packets and
    /// for 2 s after; from then on only that address is heard, so a
    /// stranger who finds the port cannot take the call's media over by
    /// sending with an SSRC of its own. Off: a new SSRC from anywhere moves
    /// the media at any time (loose symmetric RTP).
    pub strict_source: bool,
    /// SDES-SRTP on the SIP side (docs/decisions.md, "SRTP"): `off`,
    /// `offer` (SRTP whenever the far end offers it) or `require`.
    pub srtp: SrtpPolicy,
    /// Media loop threads, each driving many rooms; 0: one per core. New
    /// rooms fill the first loop until it is about half busy.
    pub threads: usize,
    /// Opus encoder effort, 0-10, while a media loop is busy
    /// (docs/performance.md weighs CPU against quality).
    pub opus_complexity: u8,
    /// The effort a media loop raises its encoders to, a step a second,
    /// while it is mostly idle (below a quarter busy); it lowers it again
    /// above half busy. At or below `opus_complexity`: fixed effort.
    pub opus_complexity_max: u8,
    /// Opus encoder rate in bit/s.
    pub opus_bitrate: i32,
    /// Steady same-codec relays forwarded by a TC program in the kernel
    /// (docs/decisions.md, "Kernel fast path"), when the gateway may load
    /// one (CAP_BPF and CAP_NET_ADMIN, kernel 6.6 or later); else, or when
    /// false, every packet goes through the gateway.
    pub kernel_fast_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP only: an `RTP/SAVP` offer gets 488.
    Off,
    /// Our offers are plain `RTP/AVP` (a SAVP offer cannot fall back);
    /// an `RTP/SAVP` offer is answered with SRTP, a plain one with RTP.
    Offer,
    /// Our offers are `RTP/SAVP`; a plain offer gets 488, a plain answer
    /// leaves the call without media.
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferPolicy {
    Allow,
    Deny,
    DialPlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingbackTone {
    Off,
    /// 440 + 480 Hz, 2 s on, 4 s off.
    Us,
    /// 425 Hz, 1 s on, 4 s off.
    Europe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMethod {
    Rfc4733,
    Info,
    Inband,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InbandDetection {
    /// When the far end negotiated no telephone-event.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// WebSocket (`/ws`), status, metrics and the web page share this address.
    pub listen: SocketAddr,
    /// The bearer token `POST /drain` needs; without one there is no
    /// `/drain` (404) and only SIGTERM drains.
    pub admin_token: Option<String>,
    // Exposure controls (hardening, see docs/decisions.md).
    /// Origins (`https://host[:port]`, or `*`) whose pages may open `/ws`;
    /// empty: only the gateway's own (the Origin's host equals the Host
    /// header). Requests without Origin (native clients) are let through.
    pub allowed_origins: Vec<String>,
    /// The bearer token `/status` and `/metrics` need (the admin token
    /// works too); open when unset.
    pub status_token: Option<String>,
    /// Reverse proxies whose X-Forwarded-For names the client (its last
    /// address), for the per-source-IP limits; without them every client
    /// behind a proxy shares the proxy's address.
    pub trusted_proxies: Vec<IpAddr>,
    /// PEM certificate chain and key: the listener then speaks only
    /// HTTPS (and WSS at `/ws`).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub max_message_bytes: usize,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_sessions_per_connection: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP and TCP both listen here.
    pub listen: SocketAddr,
    /// The address to advertise in Via / Contact when behind NAT.
    pub public_ip: Option<IpAddr>,
    pub user_agent: String,
    /// RFC 3261 T1; transactions time out after 64 × T1 (32 s by default).
    pub t1_ms: u64,
    /// An established call sends an in-dialog OPTIONS this often; no
    /// answer (or 481) ends the call: the far end is gone.
    pub dialog_keepalive_ms: u64,
    /// The SIP UDP socket's receive buffer, bytes; the kernel grants at
    /// most `net.core.rmem_max` (the gateway logs what it got).
    pub udp_receive_buffer: usize,
    /// PEM CA certificates trusted for registrars and proxies reached over
    /// TLS; the system's roots when unset.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM chain and key (PKCS#8 or PKCS#1) presented to a TLS server
    /// that asks for a client certificate.
    pub tls_client_cert: Option<std::path::PathBuf>,
    pub tls_client_key: Option<std::path::PathBuf>,
    /// DNS servers (`ip:port`) for registrar and proxy names (RFC 3263:
    /// NAPTR, SRV, A/AAAA); /etc/resolv.conf's when empty.
    pub dns_servers: Vec<SocketAddr>,
    /// A request to one of a name's servers that has no answer at all
    /// after this long goes to the next server; the last one gets the
    /// request's whole time.
    pub failover_timeout_ms: u64,
}

/// How START_SESSION checks a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Register the user's SIP account at `[registrar]`; its answer decides.
    Registrar,
    /// Check against `[[users]]`; nothing is registered (a trunk that
    /// authenticates by IP or per call).
    Static,
    /// Accept any user name. The default only when neither a registrar nor
    /// users are configured; logged loudly at start-up.
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Unset: `registrar` if `[registrar]` is configured, else `static` if
    /// `[[users]]` are, else `open`.
    pub auth: Option<AuthMode>,
    // Exposure and abuse controls (hardening, see docs/decisions.md).
    /// Open mode on a non-loopback address starts only with this set.
    pub allow_open_public: bool,
    /// START_SESSION per user name and per source IP: a burst, then this
    /// many per minute.
    pub start_burst: u32,
    pub starts_per_minute: u32,
    /// This many refused logins of one user name or one source IP within
    /// `failure_window_ms` lock it out for `lockout_ms`, doubling with each
    /// lockout up to `lockout_max_ms`.
    pub max_failures: u32,
    pub failure_window_ms: u64,
    pub lockout_ms: u64,
    pub lockout_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    /// `sip:host:port;transport=udp|tcp|tls`, or `sips:host[:port]` (TLS).
    pub address: String,
    /// Domain of the users' addresses of record; the registrar's host:port
    /// when empty.
    #[serde(default)]
    pub domain: String,
    #[serde(default = "default_expires")]
    pub expires_secs: u32,
    /// A REGISTER exchange (challenge included) that takes longer fails the
    /// session with TIMEOUT.
    #[serde(default = "default_register_timeout")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `dialtone=debug,info`); RUST_LOG wins.
    pub level: String,
    /// WARN and ERROR lines are cut at this many characters: peers and
    /// clients put text of any length into them (issue 14).
    pub max_line_chars: usize,
}

fn default_expires() -> u32 {
    300
}

fn default_register_timeout() -> u64 {
    5_000
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            max_points_per_session: 4,
            max_members: 16,
            max_rooms: 100,
            join_policy: JoinPolicy::SameUser,
        }
    }
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            directory: None,
            // An hour of 16 kHz mono is 115 MB.
            max_bytes: 512 * 1024 * 1024,
            max_recordings: 16,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            allowed_origins: Vec::new(),
            status_token: None,
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: 64 * 1024,
            ping_interval_ms: 20_000,
            ping_timeout_ms: 45_000,
            max_sessions_per_connection: 8,
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            public_ip: None,
            user_agent: format!("Dialtone/{}", env!("CARGO_PKG_VERSION")),
            t1_ms: 500,
            dialog_keepalive_ms: 30_000,
            // A burst of a thousand calls' INVITEs and BYEs.
            udp_receive_buffer: 4 * 1024 * 1024,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            dns_servers: vec![],
            // Four INVITE retransmissions at the default T1: a live server
            // has answered by then, and a caller barely notices the wait.
            failover_timeout_ms: 2000,
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            proxy: String::new(),
            domain: String::new(),
            no_answer_timeout_ms: 60_000,
            incoming_answer_timeout_ms: 30_000,
            test_lines: TestLinesSwitch::Auto(AutoWord::Auto),
            ringback: RingbackTone::Off,
            asserted_identity: false,
            incoming_refer: ReferPolicy::DialPlan,
            hold_music: std::path::PathBuf::new(),
            caller_numbers: Default::default(),
            test_lines_public: false,
            test_line_max_ms: 5 * 60_000,
            allow: Vec::new(),
            deny: Vec::new(),
            max_calls_per_session: 4,
            max_calls_per_connection: 16,
            max_calls: 1_000,
            start_burst: 10,
            starts_per_minute: 30,
            max_dtmf_digits: 64,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            auth: None,
            allow_open_public: false,
            start_burst: 20,
            starts_per_minute: 60,
            max_failures: 5,
            failure_window_ms: 60_000,
            lockout_ms: 30_000,
            lockout_max_ms: 15 * 60_000,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_port_min: 30_000,
            rtp_port_max: 39_999,
            rtp_timeout_ms: 30_000,
            dtmf_send: vec![DtmfMethod::Rfc4733, DtmfMethod::Info, DtmfMethod::Inband],
            inband_detection: InbandDetection::Auto,
            strict_source: true,
            srtp: SrtpPolicy::Off,
            threads: 0,
            opus_complexity: dialtone_codecs::OpusSettings::default().complexity,
            opus_complexity_max: 4,
            opus_bitrate: dialtone_codecs::OpusSettings::default().bitrate_bps,
            kernel_fast_path: true,
        }
    }
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            public_ip: None,
            connect_timeout_ms: 10_000,
            consent_timeout_ms: 30_000,
            ice_servers: Vec::new(),
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1935)),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            urls: Vec::new(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 60_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,rsipstack=warn".to_string(),
            max_line_chars: 1000,
        }
    }
}

/// A WARN line shorter than this loses its own words, not only a peer's.
const MIN_LOG_LINE_CHARS: usize = 200;
/// Resource bounds (issue 14): how long a connection may say nothing, how
/// many a listener takes, and how much a remote peer may queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// An HTTP request head must arrive within this; it also ends a
    /// keep-alive connection with no next request. RTMP: the handshake and
    /// `connect` must be done within this.
    pub header_timeout_ms: u64,
    /// An RTMP connection with nothing read or written for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A SIP-over-TCP connection on which nothing arrives for this long is
    /// closed. Longer than the registration's lifetime, whose refreshes
    /// keep the registrar's connection (its way to reach us) busy.
    pub sip_tcp_idle_timeout_ms: u64,
    /// Connections each listener (HTTP, RTMP, RTMPS, SIP over TCP) holds at
    /// once; more are closed on accept.
    pub max_connections: usize,
    /// Connections one source address holds on each listener at once.
    pub max_connections_per_ip: usize,
    /// RTMPT tunnels open at once, and per source address.
    pub max_rtmpt_tunnels: usize,
    pub max_rtmpt_tunnels_per_ip: usize,
    /// Client commands queued for one session; beyond, ERROR `BUSY`.
    pub session_command_queue: usize,
    /// FLV frames from one RTMP publisher, and frames for one connection's
    /// players, queued; beyond, frames are dropped.
    pub rtmp_frame_queue: usize,
    /// A write to an RTMP client that does not complete within this (a
    /// player with a zero window) closes the connection.
    pub rtmp_write_timeout_ms: u64,
    /// Digits waiting to go out as SIP INFO in one call; beyond, dropped
    /// with ERROR `BUSY`.
    pub info_digit_queue: usize,
    /// After the stop (drain deadline, SIGINT, second SIGTERM) sessions get
    /// this long to hang up and unregister, the SIP stack as long again;
    /// then the process exits whatever peers have not answered.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            sip_tcp_idle_timeout_ms: 600_000,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_rtmpt_tunnels: 1_000,
            max_rtmpt_tunnels_per_ip: 16,
            session_command_queue: 64,
            rtmp_frame_queue: 100,
            rtmp_write_timeout_ms: 10_000,
            info_digit_queue: 64,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let nonzero = [
            ("header_timeout_ms", self.header_timeout_ms as usize),
            ("idle_timeout_ms", self.idle_timeout_ms as usize),
            (
                "sip_tcp_idle_timeout_ms",
                self.sip_tcp_idle_timeout_ms as usize,
            ),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_rtmpt_tunnels", self.max_rtmpt_tunnels),
            ("max_rtmpt_tunnels_per_ip", self.max_rtmpt_tunnels_per_ip),
            ("session_command_queue", self.session_command_queue),
            ("rtmp_frame_queue", self.rtmp_frame_queue),
            ("rtmp_write_timeout_ms", self.rtmp_write_timeout_ms as usize),
            ("info_digit_queue", self.info_digit_queue),
            ("shutdown_grace_ms", self.shutdown_grace_ms as usize),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, value)| *value == 0) {
            bail!("limits.{name} must be at least 1");
        }
        Ok(())
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn sip_tcp_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.sip_tcp_idle_timeout_ms)
    }

    pub fn rtmp_write_timeout(&self) -> Duration {
        Duration::from_millis(self.rtmp_write_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// The shortest `http.admin_token` accepted.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The environment variables that override the file, with what they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DIALTONE_HTTP_LISTEN", "http.listen"),
    ("DIALTONE_ADMIN_TOKEN", "http.admin_token"),
    ("DIALTONE_DRAIN_TIMEOUT_MS", "shutdown.drain_timeout_ms"),
    ("DIALTONE_SIP_LISTEN", "sip.listen"),
    ("DIALTONE_SIP_PUBLIC_IP", "sip.public_ip"),
    ("DIALTONE_WEBRTC_PUBLIC_IP", "webrtc.public_ip"),
    (
        "DIALTONE_RTMP_LISTEN",
        "rtmp.listen (\"off\" turns RTMP off)",
    ),
    ("DIALTONE_REGISTRAR", "registrar.address"),
    ("DIALTONE_SIP_DOMAIN", "registrar.domain"),
    ("DIALTONE_AUTH", "sessions.auth"),
    ("DIALTONE_LOG", "log.level"),
    ("DIALTONE_ALLOW_OPEN_PUBLIC", "sessions.allow_open_public"),
    ("DIALTONE_STATUS_TOKEN", "http.status_token"),
    ("DIALTONE_KERNEL_FAST_PATH", "media.kernel_fast_path"),
    (
        "DIALTONE_TRUSTED_PROXIES",
        "http.trusted_proxies (comma-separated addresses)",
    ),
];

impl Config {
    /// Defaults, then `path` if given, then the environment.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        for (name, _) in ENV_OVERRIDES {
            let Some(value) = env(name) else { continue };
            let bad = || format!("environment variable {name}={value:?} is invalid");
            match *name {
                "DIALTONE_HTTP_LISTEN" => self.http.listen = value.parse().with_context(bad)?,
                "DIALTONE_ADMIN_TOKEN" => self.http.admin_token = Some(value.clone()),
                "DIALTONE_DRAIN_TIMEOUT_MS" => {
                    self.shutdown.drain_timeout_ms = value.parse().with_context(bad)?
                }
                "DIALTONE_SIP_LISTEN" => self.sip.listen = value.parse().with_context(bad)?,
                "DIALTONE_SIP_PUBLIC_IP" => {
                    self.sip.public_ip = Some(value.parse().with_context(bad)?)
                }
                "DIALTONE_WEBRTC_PUBLIC_IP" => {
                    self.webrtc.public_ip = Some(value.parse().with_context(bad)?)
                }
                "DIALTONE_RTMP_LISTEN" => match value.as_str() {
                    "off" => self.rtmp.enabled = false,
                    address => self.rtmp.listen = address.parse().with_context(bad)?,
                },
                "DIALTONE_REGISTRAR" => {
                    let registrar = self.registrar.get_or_insert_with(|| RegistrarConfig {
                        address: String::new(),
                        domain: String::new(),
                        expires_secs: default_expires(),
                        timeout_ms: default_register_timeout(),
                    });
                    registrar.address = value.clone();
                }
                "DIALTONE_SIP_DOMAIN" => match self.registrar.as_mut() {
                    Some(registrar) => registrar.domain = value.clone(),
                    None => bail!("{name} needs a registrar (DIALTONE_REGISTRAR)"),
                },
                "DIALTONE_AUTH" => {
                    self.sessions.auth = Some(
                        toml::Value::String(value.clone())
                            .try_into()
                            .with_context(bad)?,
                    )
                }
                "DIALTONE_LOG" => self.log.level = value.clone(),
                "DIALTONE_ALLOW_OPEN_PUBLIC" => {
                    self.sessions.allow_open_public = value.parse().with_context(bad)?
                }
                "DIALTONE_STATUS_TOKEN" => self.http.status_token = Some(value.clone()),
                "DIALTONE_KERNEL_FAST_PATH" => {
                    self.media.kernel_fast_path = value.parse().with_context(bad)?
                }
                "DIALTONE_TRUSTED_PROXIES" => {
                    self.http.trusted_proxies = value
                        .split(',')
                        .map(|address| address.trim().parse())
                        .collect::<Result<_, _>>()
                        .with_context(bad)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(registrar) = &self.registrar {
            registrar.target()?;
            if registrar.expires_secs == 0 {
                bail!("registrar.expires_secs must be at least 1");
            }
        }
        if self.auth_mode() == AuthMode::Registrar && self.registrar.is_none() {
            bail!("sessions.auth = \"registrar\" needs a [registrar] section");
        }
        self.call_proxy()?;
        if self.media.rtp_port_min < 1024 || self.media.rtp_port_min >= self.media.rtp_port_max {
            bail!("media.rtp_port_min must be at least 1024 and below media.rtp_port_max");
        }
        let complexity = dialtone_codecs::OpusSettings::COMPLEXITY_RANGE;
        within(
            "media.opus_complexity",
            self.media.opus_complexity,
            &complexity,
        )?;
        within(
            "media.opus_complexity_max",
            self.media.opus_complexity_max,
            &complexity,
        )?;
        let bitrate = dialtone_codecs::OpusSettings::BITRATE_RANGE;
        within("media.opus_bitrate", self.media.opus_bitrate, &bitrate)?;
        let tls = [
            self.rtmp.tls_listen.is_some(),
            self.rtmp.tls_cert.is_some(),
            self.rtmp.tls_key.is_some(),
        ];
        if tls.contains(&true) && tls.contains(&false) {
            bail!("rtmp.tls_listen, rtmp.tls_cert and rtmp.tls_key go together");
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            bail!("http.tls_cert and http.tls_key go together");
        }
        // Zero would make every connection's ping timer panic.
        if self.websocket.ping_interval_ms == 0 {
            bail!("websocket.ping_interval_ms must be at least 1");
        }
        self.limits.validate()?;
        if let Some(registrar) = &self.registrar {
            if self.limits.sip_tcp_idle_timeout_ms <= u64::from(registrar.expires_secs) * 1000 {
                bail!("limits.sip_tcp_idle_timeout_ms must exceed registrar.expires_secs: the registrar reaches us over the registration's connection, which only refreshes keep busy");
            }
        }
        if self.websocket.ping_timeout_ms <= self.websocket.ping_interval_ms {
            bail!("websocket.ping_timeout_ms must exceed websocket.ping_interval_ms");
        }
        if self.log.max_line_chars < MIN_LOG_LINE_CHARS {
            bail!("log.max_line_chars must be at least {MIN_LOG_LINE_CHARS}");
        }
        for (name, token) in [
            ("http.admin_token", &self.http.admin_token),
            ("http.status_token", &self.http.status_token),
        ] {
            // A short token is guessable over the network.
            if let Some(token) = token {
                if token.len() < MIN_ADMIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
                    bail!(
                        "{name} must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces"
                    );
                }
            }
        }
        self.validate_exposure()
    }

    /// Hardening: an open gateway is for a laptop; the limits must leave
    /// something to do.
    fn validate_exposure(&self) -> anyhow::Result<()> {
        if self.auth_mode() == AuthMode::Open && !self.sessions.allow_open_public {
            if let Some((name, address)) = self.public_listeners().next() {
                bail!(
                    "{name} = {address} is not a loopback address, and with no registrar and no \
                     users anyone who reaches it may place calls (auth = \"open\"): configure \
                     [registrar] or [[users]], listen on 127.0.0.1, or set \
                     sessions.allow_open_public = true (DIALTONE_ALLOW_OPEN_PUBLIC=true) if you \
                     mean it"
                );
            }
        }
        let calls = &self.calls;
        let sessions = &self.sessions;
        for (name, value) in [
            ("calls.max_calls_per_session", calls.max_calls_per_session),
            (
                "calls.max_calls_per_connection",
                calls.max_calls_per_connection,
            ),
            ("calls.max_calls", calls.max_calls),
            ("calls.max_dtmf_digits", calls.max_dtmf_digits),
            ("calls.start_burst", calls.start_burst as usize),
            ("calls.starts_per_minute", calls.starts_per_minute as usize),
            ("sessions.start_burst", sessions.start_burst as usize),
            (
                "sessions.starts_per_minute",
                sessions.starts_per_minute as usize,
            ),
            ("sessions.max_failures", sessions.max_failures as usize),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if calls.test_line_max_ms == 0 || sessions.lockout_ms == 0 {
            bail!("calls.test_line_max_ms and sessions.lockout_ms must be at least 1");
        }
        if sessions.lockout_max_ms < sessions.lockout_ms {
            bail!("sessions.lockout_max_ms must be at least sessions.lockout_ms");
        }
        crate::dial_plan::DialPlan::new(&calls.allow, &calls.deny)?;
        crate::dial_plan::CallerNumbers::new(&calls.caller_numbers)?;
        self.hold_music()?;
        Ok(())
    }

    /// `calls.hold_music`, read; `None` when not set.
    pub fn hold_music(&self) -> anyhow::Result<Option<std::sync::Arc<[i16]>>> {
        match self.calls.hold_music.as_os_str().is_empty() {
            true => Ok(None),
            false => crate::hold_music::load(&self.calls.hold_music).map(Some),
        }
    }

    /// The HTTP and SIP listeners not on a loopback address, by setting
    /// name: where strangers reach sessions and the test lines. (RTMP
    /// only carries media of calls a session placed.)
    fn public_listeners(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> {
        [
            ("http.listen", self.http.listen),
            ("sip.listen", self.sip.listen),
        ]
        .into_iter()
        .filter(|(_, address)| !address.ip().is_loopback())
    }

    /// Whether the test lines answer: `"auto"` means only in open mode
    /// with every listener on loopback, where the only callers are the
    /// machine's own.
    pub fn test_lines_on(&self) -> bool {
        match self.calls.test_lines {
            TestLinesSwitch::Set(on) => on,
            TestLinesSwitch::Auto(_) => {
                self.auth_mode() == AuthMode::Open && self.public_listeners().next().is_none()
            }
        }
    }

    /// START_SESSION limits, from `[sessions]`.
    pub(crate) fn login_limits(&self) -> crate::rate_limit::LoginLimits {
        let sessions = &self.sessions;
        crate::rate_limit::LoginLimits {
            burst: sessions.start_burst,
            per_minute: sessions.starts_per_minute,
            max_failures: sessions.max_failures,
            failure_window: Duration::from_millis(sessions.failure_window_ms),
            lockout: Duration::from_millis(sessions.lockout_ms),
            lockout_max: Duration::from_millis(sessions.lockout_max_ms),
        }
    }

    /// The limits `/status` and `/metrics` show.
    pub(crate) fn limits(&self) -> crate::metrics::Limits {
        crate::metrics::Limits {
            max_points_per_session: self.rooms.max_points_per_session,
            max_members: self.rooms.max_members,
            max_rooms: self.rooms.max_rooms,
            max_recordings: self.recording.max_recordings,
            max_recording_bytes: self.recording.max_bytes,
        }
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.sessions.auth.unwrap_or(if self.registrar.is_some() {
            AuthMode::Registrar
        } else if !self.users.is_empty() {
            AuthMode::Static
        } else {
            AuthMode::Open
        })
    }
}

impl Config {
    /// One line saying what the gateway will do, for `--check-config`.
    pub fn summary(&self) -> String {
        let auth = match (self.auth_mode(), &self.registrar) {
            (AuthMode::Registrar, Some(registrar)) => format!("registrar {}", registrar.address),
            (AuthMode::Static, _) => format!("static ({} users)", self.users.len()),
            (mode, _) => format!("{mode:?}").to_lowercase(),
        };
        let rtmp = match self.rtmp.enabled {
            true => self.rtmp.listen.to_string(),
            false => "off".to_string(),
        };
        let drain = match self.http.admin_token {
            Some(_) => "SIGTERM or POST /drain",
            None => "SIGTERM",
        };
        format!(
            "config ok: http {}, sip {}, auth {auth}, rtmp {rtmp}, rtp ports {}-{}, drain on {drain} (at most {} ms)",
            self.http.listen,
            self.sip.listen,
            self.media.rtp_port_min,
            self.media.rtp_port_max,
            self.shutdown.drain_timeout_ms,
        )
    }

    /// Where INVITEs go: `[calls] proxy`, else the registrar, else nowhere
    /// fixed (the bUri's host).
    pub fn call_proxy(&self) -> anyhow::Result<Option<SipTarget>> {
        if !self.calls.proxy.is_empty() {
            return Ok(Some(
                self.calls
                    .proxy
                    .parse()
                    .with_context(|| format!("calls.proxy {:?}", self.calls.proxy))?,
            ));
        }
        self.registrar
            .as_ref()
            .map(RegistrarConfig::target)
            .transpose()
    }

    /// The domain of our users' addresses and of bare numbers; `None`
    /// when neither `[calls] domain` nor a registrar says, and the gateway's
    /// own SIP address is the domain (where the test lines answer).
    pub fn sip_domain(&self) -> Option<String> {
        if !self.calls.domain.is_empty() {
            return Some(self.calls.domain.clone());
        }
        let registrar = self.registrar.as_ref()?;
        if !registrar.domain.is_empty() {
            return Some(registrar.domain.clone());
        }
        registrar.target().ok().map(|t| t.host_port())
    }
}

impl RegistrarConfig {
    pub fn target(&self) -> anyhow::Result<SipTarget> {
        self.address
            .parse()
            .with_context(|| format!("registrar.address {:?}", self.address))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl WebSocketConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
}

/// A setting that must lie in `range`.
fn within<T>(name: &str, value: T, range: &std::ops::RangeInclusive<T>) -> anyhow::Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if !range.contains(&value) {
        bail!("{name} must be from {} to {}", range.start(), range.end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_serve_locally_in_open_mode() {
        let config = Config::load(None, no_env).unwrap();
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.auth_mode(), AuthMode::Open);
        assert!(config.media.strict_source, "safe by default");
    }

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dialtone.example.toml");
        let config = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(config.auth_mode(), AuthMode::Registrar);
    }

    #[test]
    fn environment_overrides_the_file_and_defaults() {
        let env = |name: &str| match name {
            "DIALTONE_REGISTRAR" => Some("sip:127.0.0.1:5070;transport=tcp".to_string()),
            "DIALTONE_HTTP_LISTEN" => Some("0.0.0.0:9000".to_string()),
            _ => None,
        };
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.auth_mode(), AuthMode::Registrar);
        assert_eq!(config.http.listen.port(), 9000);
        let target = config.registrar.unwrap().target().unwrap();
        assert_eq!(target.port, Some(5070));
    }

    #[test]
    fn admin_token_comes_from_the_environment_and_must_be_long() {
        let env =
            |name: &str| (name == "DIALTONE_ADMIN_TOKEN").then(|| "0123456789abcdef".to_string());
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.http.admin_token.as_deref(), Some("0123456789abcdef"));
        assert!(config.summary().contains("POST /drain"));
        let short = |name: &str| (name == "DIALTONE_ADMIN_TOKEN").then(|| "secret".to_string());
        assert!(Config::load(None, short).is_err());
    }

    #[test]
    fn open_mode_on_a_public_address_needs_a_word_from_the_operator() {
        let public =
            |name: &str| (name == "DIALTONE_HTTP_LISTEN").then(|| "0.0.0.0:8080".to_string());
        let error = Config::load(None, public).unwrap_err().to_string();
        assert!(error.contains("http.listen = 0.0.0.0:8080"), "{error}");
        let allowed = |name: &str| match name {
            "DIALTONE_SIP_LISTEN" => Some("0.0.0.0:5060".to_string()),
            "DIALTONE_ALLOW_OPEN_PUBLIC" => Some("true".to_string()),
            _ => None,
        };
        let config = Config::load(None, allowed).unwrap();
        assert!(!config.test_lines_on(), "no test lines on a public address");
    }

    #[test]
    fn test_lines_are_on_by_default_only_for_a_local_open_gateway() {
        assert!(Config::load(None, no_env).unwrap().test_lines_on());
        let with_users: Config =
            toml::from_str("[[users]]\nusername = \"a\"\npassword = \"b\"\n").unwrap();
        assert!(!with_users.test_lines_on());
        let forced: Config = toml::from_str(
            "[calls]\ntest_lines = true\n[[users]]\nusername = \"a\"\npassword = \"b\"\n",
        )
        .unwrap();
        assert!(forced.test_lines_on());
        let off: Config = toml::from_str("[calls]\ntest_lines = false\n").unwrap();
        assert!(!off.test_lines_on());
        assert!(toml::from_str::<Config>("[calls]\ntest_lines = \"sometimes\"\n").is_err());
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        let bad_env = |name: &str| (name == "DIALTONE_AUTH").then(|| "maybe".to_string());
        assert!(Config::load(None, bad_env).is_err());
        let typo: Result<Config, _> = toml::from_str("[http]\nlisten_on = \"1.2.3.4:1\"\n");
        assert!(typo.is_err());
        let no_pings: Result<Config, _> = toml::from_str("[websocket]\nping_interval_ms = 0\n");
        let no_pings = no_pings.unwrap().validate().unwrap_err().to_string();
        assert!(no_pings.contains("ping_interval_ms"), "{no_pings}");
        let no_idle: Config = toml::from_str("[limits]\nidle_timeout_ms = 0\n").unwrap();
        assert!(no_idle.validate().is_err());
        let registrar_mode_alone: Config =
            toml::from_str("[sessions]\nauth = \"registrar\"\n").unwrap();
        assert!(registrar_mode_alone.validate().is_err());
        for (setting, named) in [
            (
                "opus_complexity = 11",
                "media.opus_complexity must be from 0 to 10",
            ),
            (
                "opus_complexity_max = 12",
                "media.opus_complexity_max must be from 0 to 10",
            ),
            (
                "opus_bitrate = 100",
                "media.opus_bitrate must be from 500 to 512000",
            ),
        ] {
            let config: Config = toml::from_str(&format!("[media]\n{setting}\n")).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert_eq!(error, named);
        }
    }
}
