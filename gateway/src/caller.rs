//! Who a session's outgoing calls come from, what it may call, and how:
//! one place that checks a target and makes the INVITE's parameters, for
//! START_CALL, TRANSFER_CALL and a far end's REFER the gateway follows.

use dialtone_sip::grammar;
use dialtone_sip::sdp::LocalAudio;
use dialtone_sip::{OutgoingCall, SipTarget};
use tracing::info;

use crate::config::AuthMode;
use crate::dial_plan::Refusal;
use crate::state::Gateway;

/// A session's identity toward SIP.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The session's user name: From's user part unless a caller number
    /// is claimed.
    user: String,
    /// START_SESSION's defaults for the session's calls.
    display_name: Option<String>,
    caller_number: Option<String>,
    from_domain: String,
    /// Digest credentials, when the registrar authenticates the session.
    credential: Option<(String, String)>,
    contact_user: String,
    asserted_identity: bool,
    proxy: Option<SipTarget>,
}

/// Where a call is to go, and what it carries besides the offer.
pub struct Dialled {
    pub target: String,
    pub display_name: Option<String>,
    pub caller_number: Option<String>,
    pub replaces: Option<String>,
    pub referred_by: Option<String>,
}

impl Dialled {
    pub fn to(target: String) -> Dialled {
        Dialled {
            target,
            display_name: None,
            caller_number: None,
            replaces: None,
            referred_by: None,
        }
    }
}

impl Caller {
    pub fn new(
        gateway: &Gateway,
        credentials: &(String, String),
        contact_user: String,
        (display_name, caller_number): (Option<String>, Option<String>),
    ) -> Caller {
        let config = &gateway.config;
        Caller {
            user: credentials.0.clone(),
            display_name,
            caller_number,
            from_domain: call_domain(gateway),
            credential: (config.auth_mode() == AuthMode::Registrar).then(|| credentials.clone()),
            contact_user,
            asserted_identity: config.calls.asserted_identity,
            // Validated at start-up.
            proxy: config.call_proxy().ok().flatten(),
        }
    }

    /// The caller number a call would go out with (`None`: the user
    /// name), if the user may claim it (`calls.caller_numbers`); `Err`
    /// names the number refused.
    pub fn claimed_number(
        &self,
        gateway: &Gateway,
        dialled: &Dialled,
    ) -> Result<Option<String>, String> {
        match dialled
            .caller_number
            .as_ref()
            .or(self.caller_number.as_ref())
        {
            Some(number) if *number != self.user => {
                let claimable = grammar::check_user(number).is_ok()
                    && gateway.caller_numbers.allows(&self.user, number);
                if claimable {
                    Ok(Some(number.clone()))
                } else {
                    Err(number.clone())
                }
            }
            _ => Ok(None),
        }
    }

    /// The INVITE's parameters; the caller number must have passed
    /// [`Caller::claimed_number`].
    pub fn call(&self, dialled: Dialled, offer: LocalAudio) -> OutgoingCall {
        let from_user = dialled
            .caller_number
            .or_else(|| self.caller_number.clone())
            .unwrap_or_else(|| self.user.clone());
        OutgoingCall {
            from_user,
            from_display_name: dialled.display_name.or_else(|| self.display_name.clone()),
            asserted_identity: self.asserted_identity,
            from_domain: self.from_domain.clone(),
            target: dialled.target,
            proxy: self.proxy.clone(),
            credential: self.credential.clone(),
            contact_user: self.contact_user.clone(),
            offer,
            replaces: dialled.replaces,
            referred_by: dialled.referred_by,
        }
    }
}

/// The domain of bare numbers in a bUri.
pub fn call_domain(gateway: &Gateway) -> String {
    gateway
        .config
        .sip_domain()
        .unwrap_or_else(|| gateway.sip.advertised_addr().to_string())
}

/// `given` (a bUri, a transfer target, a REFER's Refer-To) as a SIP URI,
/// if the SIP grammar and the dial plan allow it; otherwise why not, to
/// follow the name of the field it came in. With a proxy, the target's
/// host must be one the proxy serves: nothing goes elsewhere.
pub fn allowed_target(gateway: &Gateway, given: &str) -> Result<String, String> {
    let domain = call_domain(gateway);
    let target = grammar::request_uri(given, &domain).map_err(|error| error.to_string())?;
    let proxy = gateway.config.call_proxy().ok().flatten();
    let served = proxy
        .as_ref()
        .map(|proxy| vec![domain.clone(), proxy.host_port()]);
    let Err(refusal) = gateway.dial_plan.check(&target, served.as_deref()) else {
        return Ok(target);
    };
    info!(%target, ?refusal, "refused by the dial plan");
    let why = match refusal {
        Refusal::NotAllowed => "is not allowed by the dial plan".to_string(),
        Refusal::ForeignHost => {
            format!("names a host other than {domain}, the only one calls go to")
        }
    };
    Err(format!("{given:?} {why}"))
}
