//! The rig itself, without a gateway: Kamailio starts on a free port, answers OPTIONS,
//! challenges with qop=auth and the configured algorithm, accepts the rig's users (answered by
//! a raw SIP client here), reports the bindings, and leaves no process behind when stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dialtone_tests::kamailio::{password_for, DigestAlgorithm, Kamailio, KamailioOptions};
use dialtone_tests::process::Logged;
use dialtone_tests::wait::wait_until;

const T: Duration = Duration::from_secs(5);

/// A minimal SIP UAC that sends REGISTERs over UDP or TCP from one local socket.
enum Transport {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

struct Uac {
    transport: Transport,
    registrar: SocketAddr,
    local: SocketAddr,
    call_id: String,
    cseq: u32,
}

impl Uac {
    fn new(registrar: SocketAddr, tcp: bool) -> anyhow::Result<Uac> {
        let transport = if tcp {
            let s = TcpStream::connect_timeout(&registrar, T)?;
            s.set_read_timeout(Some(T))?;
            Transport::Tcp(s)
        } else {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(T))?;
            Transport::Udp(s)
        };
        let local = match &transport {
            Transport::Udp(s) => s.local_addr()?,
            Transport::Tcp(s) => s.local_addr()?,
        };
        Ok(Uac {
            transport,
            registrar,
            local,
            call_id: format!("smoke-{}@127.0.0.1", local.port()),
            cseq: 0,
        })
    }

    fn proto(&self) -> &'static str {
        match self.transport {
            Transport::Udp(_) => "udp",
            Transport::Tcp(_) => "tcp",
        }
    }

    /// Sends a REGISTER (with `authorization` if given) and returns the response.
    fn register(
        &mut self,
        user: &str,
        expires: u32,
        authorization: Option<&str>,
    ) -> anyhow::Result<String> {
        self.cseq += 1;
        let (proto, local, reg) = (self.proto(), self.local, self.registrar);
        let mut msg = format!(
            "REGISTER sip:{reg} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK-smoke-{cseq}-{port};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@127.0.0.1>;tag=smoke{port}\r\n\
             To: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local};transport={proto}>\r\n\
             Expires: {expires}\r\n\
             User-Agent: rig-smoke\r\n",
            via = proto.to_uppercase(),
            cseq = self.cseq,
            port = local.port(),
            call_id = self.call_id,
        );
        if let Some(auth) = authorization {
            msg.push_str(&format!("Authorization: {auth}\r\n"));
        }
        msg.push_str("Content-Length: 0\r\n\r\n");
        match &mut self.transport {
            Transport::Udp(s) => {
                s.send_to(msg.as_bytes(), reg)?;
                let mut buf = vec![0u8; 65535];
                let len = s.recv(&mut buf).context("no UDP response")?;
                Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
            }
            Transport::Tcp(s) => {
                s.write_all(msg.as_bytes())?;
                // Responses here have no body: read up to the blank line.
                let mut data = Vec::new();
                let mut byte = [0u8; 1];
                while !data.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).context("reading TCP response")? == 0 {
                        bail!("TCP connection closed mid-response");
                    }
                    data.push(byte[0]);
                }
                Ok(String::from_utf8_lossy(&data).into_owned())
            }
        }
    }

    /// Full registration: unauthenticated REGISTER, 401 challenge, answered REGISTER.
    /// Returns (challenge header, final response).
    fn register_with_auth(
        &mut self,
        user: &str,
        password: &str,
        expires: u32,
    ) -> anyhow::Result<(String, String)> {
        let challenge_response = self.register(user, expires, None)?;
        ensure!(
            status(&challenge_response) == 401,
            "expected 401, got {challenge_response}"
        );
        let challenge =
            header(&challenge_response, "WWW-Authenticate").context("no WWW-Authenticate")?;
        let auth = digest_answer(
            &challenge,
            user,
            password,
            &format!("sip:{}", self.registrar),
        )?;
        let response = self.register(user, expires, Some(&auth))?;
        Ok((challenge, response))
    }
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn header(response: &str, name: &str) -> Option<String> {
    response.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Parameter `name` of a Digest challenge (quoted or not).
fn param(challenge: &str, name: &str) -> Option<String> {
    let rest = challenge.strip_prefix("Digest")?;
    rest.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// RFC 7616 / 3261 digest response with qop=auth.
fn digest_answer(challenge: &str, user: &str, password: &str, uri: &str) -> anyhow::Result<String> {
    use md5::Digest as _;
    let realm = param(challenge, "realm").context("no realm")?;
    let nonce = param(challenge, "nonce").context("no nonce")?;
    let algorithm = param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    let h = |s: String| -> String {
        if algorithm == "SHA-256" {
            hex(&sha2::Sha256::digest(s.as_bytes()))
        } else {
            hex(&md5::Md5::digest(s.as_bytes()))
        }
    };
    let (nc, cnonce) = ("00000001", "0a4f113b");
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("REGISTER:{uri}"));
    let response = h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    Ok(format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", qop=auth, nc={nc}"
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `pid` still runs Kamailio with config `cfg` (zombies don't count).
fn runs_config(pid: u32, cfg: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == cfg.as_bytes()))
}

#[test]
fn kamailio_sha256_registers_reports_bindings_and_stops_cleanly() -> anyhow::Result<()> {
    let mut kam = Kamailio::start(KamailioOptions {
        algorithm: DigestAlgorithm::Sha256,
        ..Default::default()
    })?;
    let status_line = kam.options_ping(T)?;
    ensure!(status_line == "SIP/2.0 200 Keepalive", "{status_line}");
    ensure!(
        kam.pids().len() > 5,
        "core.psx should list the workers: {:?}",
        kam.pids()
    );
    ensure!(kam.total_contacts()? == 0);

    // Challenge: qop="auth" and algorithm=SHA-256; a wrong password is challenged again.
    let mut uac = Uac::new(kam.sip_addr(), false)?;
    let (challenge, response) = uac.register_with_auth("1001", "wrong", 60)?;
    ensure!(challenge.contains("qop=\"auth\""), "{challenge}");
    ensure!(challenge.contains("algorithm=SHA-256"), "{challenge}");
    ensure!(
        status(&response) == 401,
        "wrong password accepted: {response}"
    );

    // A load user over UDP, with a computed password.
    let pw = password_for("load7").context("load7 has a password")?;
    let (_, response) = uac.register_with_auth("load7", &pw, 30)?;
    ensure!(status(&response) == 200, "{response}");
    let contacts = kam.wait_for_contacts("load7", |c| c.len() == 1, T)?;
    ensure!(
        contacts[0].starts_with("sip:load7@127.0.0.1:"),
        "{contacts:?}"
    );
    let details = kam.contact_details("load7")?;
    ensure!(details.len() == 1, "{details:?}");
    let first = &details[0];
    ensure!(
        first.aor == "load7" && first.transport == "udp",
        "{first:?}"
    );
    ensure!(first.expires <= 30 && first.expires >= 25, "{first:?}");
    ensure!(first.user_agent == "rig-smoke", "{first:?}");

    // Refresh: same Call-ID, higher CSeq.
    let (_, response) = uac.register_with_auth("load7", &pw, 30)?;
    ensure!(status(&response) == 200, "{response}");
    let refreshed = kam.contact_details("load7")?;
    ensure!(
        refreshed.len() == 1 && refreshed[0].cseq > first.cseq,
        "{first:?} -> {refreshed:?}"
    );

    // 1001 over TCP.
    let mut tcp_uac = Uac::new(kam.sip_addr(), true)?;
    let (_, response) = tcp_uac.register_with_auth("1001", "secret1001", 60)?;
    ensure!(status(&response) == 200, "{response}");
    let tcp = kam.contact_details("1001")?;
    ensure!(tcp.len() == 1 && tcp[0].transport == "tcp", "{tcp:?}");
    ensure!(kam.total_contacts()? == 2);
    ensure!(kam.contacts("100")?.is_empty(), "AOR match must be exact");

    // The log shows every REGISTER (2 for the wrong password, 2 per registration).
    kam.wait_for_log(
        &format!("REQ REGISTER sip:{} from sip:1001@", kam.sip_addr()),
        T,
    )?;
    ensure!(kam.count_log("REQ REGISTER ") == 8, "{}", kam.log_text());

    // Unregister (Expires: 0) empties the binding.
    let (_, response) = uac.register_with_auth("load7", &pw, 0)?;
    ensure!(status(&response) == 200, "{response}");
    kam.wait_for_contacts("load7", |c| c.is_empty(), T)?;

    // Stop: no process of this instance remains.
    let pids = kam.pids().to_vec();
    let cfg = kam.config_path().to_string_lossy().into_owned();
    kam.stop()?;
    ensure!(kam.running_pids().is_empty(), "{:?}", kam.running_pids());
    ensure!(!pids.iter().any(|p| runs_config(*p, &cfg)));
    ensure!(
        kam.options_ping(Duration::from_millis(300)).is_err(),
        "still answering"
    );
    Ok(())
}

#[test]
fn kamailio_md5_one_second_expiry_and_drop_leaves_nothing() -> anyhow::Result<()> {
    let callee: SocketAddr = "127.0.0.1:5999".parse()?;
    let kam = Kamailio::start(KamailioOptions {
        algorithm: DigestAlgorithm::Md5,
        fixed_callee: Some(callee),
        ..Default::default()
    })?;
    let cfg_text = std::fs::read_to_string(kam.config_path())?;
    ensure!(
        cfg_text.contains("\"sip:127.0.0.1:5999\""),
        "callee not substituted"
    );

    let mut uac = Uac::new(kam.sip_addr(), false)?;
    let (challenge, response) = uac.register_with_auth("2000", "secret2000", 1)?;
    ensure!(challenge.contains("qop=\"auth\""), "{challenge}");
    ensure!(challenge.contains("algorithm=MD5"), "{challenge}");
    ensure!(status(&response) == 200, "{response}");
    // min_expires = 1: the registrar grants 1 s and the binding disappears by itself.
    let contact = header(&response, "Contact").unwrap_or_default();
    ensure!(contact.ends_with("expires=1"), "{response}");
    wait_until(Duration::from_secs(5), || {
        Ok(kam.contacts("2000")?.is_empty())
    })
    .context("1 s binding did not expire")?;

    let pids = kam.pids().to_vec();
    let cfg = kam.config_path().to_string_lossy().into_owned();
    let dir = kam.dir().to_owned();
    drop(kam);
    ensure!(
        !pids.iter().any(|p| runs_config(*p, &cfg)),
        "processes left: {pids:?}"
    );
    ensure!(!Path::new(&dir).exists(), "temp dir left behind");
    Ok(())
}

#[test]
fn two_instances_run_side_by_side() -> anyhow::Result<()> {
    let a = Kamailio::start(KamailioOptions::default())?;
    let b = Kamailio::start(KamailioOptions::default())?;
    ensure!(a.sip_port() != b.sip_port());
    ensure!(a.options_ping(T)?.contains("200") && b.options_ping(T)?.contains("200"));
    let mut uac = Uac::new(a.sip_addr(), false)?;
    let (_, response) = uac.register_with_auth("1002", "secret1002", 60)?;
    ensure!(status(&response) == 200, "{response}");
    ensure!(a.contacts("1002")?.len() == 1 && b.contacts("1002")?.is_empty());
    Ok(())
}
