//! What every connection and session shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use dialtone_sip::UserAgent;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call_slots::CallCount;
use crate::config::Config;
use crate::dial_plan::DialPlan;
use crate::media_ports::PortPool;
use crate::metrics::{Metrics, Status};
use crate::rate_limit::LoginLimiter;
use crate::rooms::Rooms;
use crate::rtmp_streams::RtmpStreams;
use crate::rtmpt::Rtmpt;
use dialtone_room::stats::MediaStatsSnapshot;
use dialtone_room::webrtc::WebRtcSettings;

pub struct Gateway {
    pub config: Config,
    pub sip: UserAgent,
    pub metrics: Arc<Metrics>,
    pub ports: Arc<PortPool>,
    /// Every connection and session task, so shutdown can wait for them and
    /// /status can count them.
    pub tasks: TaskTracker,
    /// The media loops every room runs on.
    pub media: crate::media_engine::MediaEngine,
    /// Cancelled on shutdown: connections say DISCONNECTED and end.
    pub shutdown: CancellationToken,
    /// Cancelled when a drain starts (SIGTERM, POST /drain): new
    /// connections and sessions are refused, `/health` says so.
    pub draining: CancellationToken,
    /// What every WebRTC point shares (certificate, candidate address).
    pub webrtc: WebRtcSettings,
    /// Where RTMP clients connect, when RTMP is on.
    pub rtmp_addr: Option<std::net::SocketAddr>,
    /// The stream names of calls with an RTMP point.
    pub rtmp_streams: Arc<RtmpStreams>,
    /// RTMPT tunnels on the HTTP port, when RTMP is on.
    pub rtmpt: Option<Arc<Rtmpt>>,
    /// The endpoints a Flash SDP lists.
    pub rtmp_urls: Vec<String>,
    /// Media statistics of the calls whose media flows, by callId.
    pub call_media: Mutex<HashMap<String, MediaStatsWatch>>,
    /// Every room that can be joined, by roomId.
    pub rooms: Arc<Rooms>,
    // Abuse controls (hardening).
    /// START_SESSION limits per user name and source IP.
    pub login_limiter: Mutex<LoginLimiter>,
    /// Which bUris clients may call.
    pub dial_plan: DialPlan,
    /// Which caller numbers each user may claim.
    pub caller_numbers: crate::dial_plan::CallerNumbers,
    /// What a far end the client holds hears (`calls.hold_music`).
    pub hold_music: Option<std::sync::Arc<[i16]>>,
    /// Calls of every session, against `calls.max_calls`.
    pub calls_held: CallCount,
}

pub type MediaStatsWatch = watch::Receiver<Option<MediaStatsSnapshot>>;

impl Gateway {
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Live counts, read fresh from the SIP stack and the task tracker.
    pub fn status(&self) -> Status {
        let sip = self.sip.stats();
        self.metrics.tasks.set(self.tasks.len() as i64);
        self.metrics.sip_transactions.set(sip.transactions as i64);
        self.metrics.sip_connections.set(sip.connections as i64);
        self.metrics.sip_dialogs.set(sip.dialogs as i64);
        self.metrics
            .set_media_loops(self.media.loads().into_iter().map(|load| {
                (
                    f64::from(load.busy_per_mille) / 1000.0,
                    i64::from(load.rooms_measured),
                )
            }));
        let media = self
            .call_media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(call_id, stats)| Some((call_id.clone(), (*stats.borrow())?)))
            .collect();
        Status {
            media,
            limits: self.config.limits(),
            draining: self.is_draining(),
            ..self.metrics.status()
        }
    }
}
