//! The DNS half of RFC 3263: NAPTR, SRV and A/AAAA lookups through
//! hickory-resolver, whose cache keeps each answer for its TTL. What to ask
//! and what the answers mean is decided in `locate`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use tracing::{debug, warn};

use crate::locate::{self, Destination, Naptr, Plan, Srv, DEFAULT_PORT};
use crate::target::{SipTarget, TargetError, TransportKind};

/// Finds where requests for a registrar or proxy go. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Locator {
    resolver: Arc<TokioResolver>,
}

impl Locator {
    /// Asks `servers` (`ip:port`), or the servers of /etc/resolv.conf when
    /// none are given. Only addresses of the family our SIP socket speaks
    /// (`ipv6`) are looked up.
    pub(crate) fn new(servers: &[SocketAddr], ipv6: bool) -> Result<Locator, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider.clone()).unwrap_or_else(|error| {
                // Numeric registrars and proxies still work; names will not.
                warn!(%error, "cannot read the system DNS configuration; only numeric SIP hosts will resolve");
                TokioResolver::builder_with_config(ResolverConfig::default(), provider)
            })
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], name_servers),
                provider,
            )
        };
        builder.options_mut().ip_strategy = match ipv6 {
            true => LookupIpStrategy::Ipv6thenIpv4,
            false => LookupIpStrategy::Ipv4Only,
        };
        let resolver = builder.build().map_err(|error| error.to_string())?;
        Ok(Locator {
            resolver: Arc::new(resolver),
        })
    }

    /// Every destination of `target`, in the order they are to be tried;
    /// never empty.
    pub(crate) async fn locate(&self, target: &SipTarget) -> Result<Vec<Destination>, TargetError> {
        let found = match locate::plan(target) {
            Plan::Literal(destination) => return Ok(vec![destination]),
            Plan::Address {
                host,
                port,
                transport,
            } => self.addresses(&host, port, transport).await,
            Plan::Srv { host, transport } => {
                let services = [(locate::srv_name(&host, transport), transport)];
                match self.services(&services).await {
                    Some(found) => Ok(found),
                    None => self.addresses(&host, DEFAULT_PORT, transport).await,
                }
            }
            Plan::Naptr { host } => {
                let mut services = locate::srv_names_from_naptr(&self.naptr(&host).await);
                if services.is_empty() {
                    services = locate::srv_names_without_naptr(&host);
                }
                match self.services(&services).await {
                    Some(found) => Ok(found),
                    None => {
                        self.addresses(&host, DEFAULT_PORT, TransportKind::Udp)
                            .await
                    }
                }
            }
        };
        let found = found.map_err(|error| TargetError::Unresolved(target.to_string(), error))?;
        debug!(%target, ?found, "SIP destinations");
        Ok(found)
    }

    async fn naptr(&self, host: &str) -> Vec<Naptr> {
        let lookup = match self.resolver.lookup(host, RecordType::NAPTR).await {
            Ok(lookup) => lookup,
            Err(error) => {
                debug!(%host, %error, "no NAPTR records");
                return vec![];
            }
        };
        lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::NAPTR(naptr) => Some(Naptr {
                    order: naptr.order,
                    preference: naptr.preference,
                    flags: String::from_utf8_lossy(&naptr.flags).into_owned(),
                    services: String::from_utf8_lossy(&naptr.services).into_owned(),
                    replacement: without_root(&naptr.replacement.to_string()),
                }),
                _ => None,
            })
            .collect()
    }

    /// The destinations of the first SRV name that has records, in RFC 2782
    /// order, each target expanded to its addresses; `None` when no name
    /// has any.
    async fn services(&self, names: &[(String, TransportKind)]) -> Option<Vec<Destination>> {
        for (name, transport) in names {
            let records = self.srv(name).await;
            if records.is_empty() {
                continue;
            }
            let ordered = locate::order_srv(&records, &mut |total| rand::random_range(0..=total));
            let mut found = Vec::new();
            for record in ordered {
                match self
                    .addresses(&record.target, record.port, *transport)
                    .await
                {
                    Ok(addresses) => found.extend(addresses),
                    Err(error) => {
                        debug!(target = %record.target, %error, "SRV target without addresses")
                    }
                }
            }
            if !found.is_empty() {
                return Some(found);
            }
        }
        None
    }

    async fn srv(&self, name: &str) -> Vec<Srv> {
        let lookup = match self.resolver.srv_lookup(name).await {
            Ok(lookup) => lookup,
            Err(error) => {
                debug!(%name, %error, "no SRV records");
                return vec![];
            }
        };
        lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(Srv {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: without_root(&srv.target.to_string()),
                }),
                _ => None,
            })
            .collect()
    }

    async fn addresses(
        &self,
        host: &str,
        port: u16,
        transport: TransportKind,
    ) -> Result<Vec<Destination>, String> {
        let found = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|error| error.to_string())?;
        let destinations: Vec<Destination> = found
            .iter()
            .map(|ip: IpAddr| Destination {
                addr: SocketAddr::new(ip, port),
                transport,
            })
            .collect();
        if destinations.is_empty() {
            return Err(format!("no address for {host}"));
        }
        Ok(destinations)
    }
}

/// `host.example.` → `host.example`; the root (`.`) → empty.
fn without_root(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_string()
}
