//! Two gateways behind existing engines, configured by the repository's own deployment files:
//! Kamailio (deploy/kamailio: registrar and dispatcher) and nginx (deploy/nginx: the WebSocket
//! balancer), with only their addresses moved to free test ports. Clients land on both
//! gateways; a call to a user reaches the gateway holding that user's session; a call to an
//! extension goes out through the dispatcher; a gateway drained mid-test keeps its call, new
//! sessions land on the other one, and it exits when its last call ends.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use dialtone_tests::baresip::{Baresip, BaresipAccount, BaresipOptions};
use dialtone_tests::deploy::{replace_counted, repo_path, repo_text};
use dialtone_tests::gateway::Gateway;
use dialtone_tests::kamailio::{Kamailio, KamailioOptions, OwnConfig};
use dialtone_tests::nginx::Nginx;
use dialtone_tests::ports::free_port;
use dialtone_tests::sipp::{Sipp, SippOptions, UasScenario};
use dialtone_tests::wait::wait_until;
use dialtone_tests::ws_client::WsClient;
use serde_json::{json, Value};

const CLIENTS: usize = 40;
/// Clients that come after the drain, as users of their own.
const LATE_CLIENTS: usize = 5;
const REPLY: Duration = Duration::from_secs(10);
const PEER: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "scale-out-admin-token";
/// The softphone that calls the web users, a user of the registrar as well.
const CALLER: (&str, &str) = ("2000", "pw-2000");
/// An extension of the PBX behind the dispatcher.
const PBX_EXTENSION: &str = "600";

fn web_user(index: usize) -> (String, String) {
    (format!("web{index:02}"), format!("pw-web{index:02}"))
}

/// users.cfg for the test's users, in the form of deploy/kamailio/users.cfg.
fn kamailio_users() -> String {
    let mut users: Vec<(String, String)> = (0..CLIENTS + LATE_CLIENTS).map(web_user).collect();
    users.push((CALLER.0.to_string(), CALLER.1.to_string()));
    let lines: String = users
        .iter()
        .map(|(user, password)| format!("    $sht(users=>{user}) = \"{password}\";\n"))
        .collect();
    format!("event_route[htable:mod-init] {{\n{lines}}}\n")
}

fn gateway(registrar: SocketAddr) -> anyhow::Result<Gateway> {
    // Behind nginx, as deployed (docker-compose.yml trusts it too); the test's many clients
    // all come from 127.0.0.1: more than the per-address burst of sessions.
    Gateway::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         trusted_proxies = [\"127.0.0.1\"]\n\
         [sip]\nlisten = \"127.0.0.1:0\"\nt1_ms = 100\n\
         [registrar]\naddress = \"sip:{registrar};transport=udp\"\n\
         [sessions]\nstart_burst = 1000\n"
    ))
}

/// deploy/nginx/dialtone.conf with the test's addresses for the balancer and the gateways.
fn balancer_config(listen: SocketAddr, gateways: [&Gateway; 2]) -> anyhow::Result<String> {
    let conf = repo_text("deploy/nginx/dialtone.conf")?;
    let conf = replace_counted(&conf, "127.0.0.1:8090", &listen.to_string(), 1)?;
    let conf = replace_counted(
        &conf,
        "127.0.0.1:8081",
        &gateways[0].http_addr().to_string(),
        1,
    )?;
    replace_counted(
        &conf,
        "127.0.0.1:8082",
        &gateways[1].http_addr().to_string(),
        1,
    )
}

struct Client {
    ws: WsClient,
    session_id: String,
    user: String,
}

impl Client {
    async fn start(url: &str, index: usize) -> anyhow::Result<Client> {
        let (user, password) = web_user(index);
        let (ws, session_id) = WsClient::start_session(url, &user, &password)
            .await
            .with_context(|| format!("session of {user}"))?;
        Ok(Client {
            ws,
            session_id,
            user,
        })
    }

    async fn send(&mut self, mut message: Value) -> anyhow::Result<()> {
        message["sessionId"] = json!(self.session_id);
        self.ws.send_json(&message).await
    }
}

fn count(gateway: &Gateway, key: &str) -> anyhow::Result<i64> {
    gateway.status()?[key]
        .as_i64()
        .with_context(|| format!("/status has no {key}"))
}

/// Which of the gateways holds `user`'s registration (its Contact names the gateway's SIP port).
fn holder_of(kamailio: &Kamailio, user: &str, gateways: [&Gateway; 2]) -> anyhow::Result<usize> {
    let contacts = kamailio.contacts(user)?;
    ensure!(contacts.len() == 1, "{user}: {contacts:?}");
    gateways
        .iter()
        .position(|g| contacts[0].contains(&format!(":{}", g.sip_addr().port())))
        .with_context(|| format!("{user}'s contact {} names neither gateway", contacts[0]))
}

#[tokio::test]
async fn two_gateways_behind_kamailio_and_nginx_share_clients_calls_and_a_drain(
) -> anyhow::Result<()> {
    // The PBX behind the dispatcher answers the extension and holds the call until its BYE.
    let pbx = Sipp::uas(
        UasScenario::Answer,
        SippOptions {
            rtp_echo: true,
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
    )?;
    let kamailio = Kamailio::start(KamailioOptions {
        own_config: Some(OwnConfig {
            file: repo_path("deploy/kamailio/kamailio.cfg"),
            files: vec![
                ("users.cfg".to_string(), kamailio_users()),
                (
                    "dispatcher.list".to_string(),
                    format!("1 sip:{}\n", pbx.sip_addr()),
                ),
            ],
            defines: vec!["DISPATCHER_LIST=\"@DIR@/dispatcher.list\"".to_string()],
        }),
        ..Default::default()
    })?;
    let gateways = [gateway(kamailio.sip_addr())?, gateway(kamailio.sip_addr())?];
    let [a, b] = [&gateways[0], &gateways[1]];
    let balancer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let _nginx = Nginx::start(&balancer_config(balancer, [a, b])?, balancer)?;
    let url = format!("ws://{balancer}/ws");

    // 40 clients through the balancer, on both gateways.
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        clients.push(Client::start(&url, index).await?);
    }
    let connections = [count(a, "wsConnections")?, count(b, "wsConnections")?];
    let sessions = [count(a, "sessions")?, count(b, "sessions")?];
    ensure!(
        connections.iter().sum::<i64>() == CLIENTS as i64,
        "{connections:?}"
    );
    ensure!(
        sessions.iter().sum::<i64>() == CLIENTS as i64,
        "{sessions:?}"
    );
    ensure!(
        connections.iter().all(|c| *c > 0),
        "one gateway got every client: {connections:?}"
    );

    // A call to each user reaches the gateway that holds the user's session.
    let caller = Baresip::start(BaresipOptions {
        account: Some(BaresipAccount {
            user: CALLER.0.to_string(),
            password: CALLER.1.to_string(),
            registrar: kamailio.sip_addr(),
        }),
        ..Default::default()
    })?;
    let mut holders = Vec::new();
    for client in &mut clients {
        let holder = holder_of(&kamailio, &client.user, [a, b])?;
        holders.push(holder);
        caller.dial(&format!("sip:{}@{}", client.user, kamailio.sip_addr()))?;
        let incoming = client.ws.recv_type("INCOMING_CALL", REPLY).await?;
        ensure!(
            incoming["sessionId"] == client.session_id.as_str(),
            "{incoming}"
        );
        let calls = [count(a, "calls")?, count(b, "calls")?];
        ensure!(
            calls[holder] == 1 && calls[1 - holder] == 0,
            "{}: calls {calls:?}",
            client.user
        );
        let call_id = incoming["callId"]
            .as_str()
            .context("no callId")?
            .to_string();
        client
            .send(json!({"type": "REJECT_CALL", "callId": call_id, "reason": "BUSY"}))
            .await?;
        client.ws.recv_type("CALL_FINISHED", REPLY).await?;
        caller.wait_call_closed(PEER)?;
    }

    // A call to an extension goes out through the dispatcher, from a client on gateway A.
    let on_a: Vec<usize> = (0..CLIENTS).filter(|i| holders[*i] == 0).collect();
    ensure!(on_a.len() >= 2, "gateway A holds {} sessions", on_a.len());
    let (caller_index, neighbour_index) = (on_a[0], on_a[1]);
    let call_id = {
        let client = &mut clients[caller_index];
        let session_id = client.session_id.clone();
        let call_id = client
            .ws
            .start_call(
                &json!({"type": "START_CALL", "sessionId": session_id, "bUri": PBX_EXTENSION}),
                REPLY,
            )
            .await?;
        let started = client
            .ws
            .recv_type_skipping("CALL_STARTED", &["CALL_STARTING"], REPLY)
            .await?;
        ensure!(started["callId"] == call_id.as_str(), "{started}");
        call_id
    };
    let invite = pbx.wait_for_message("INVITE sip:", PEER)?;
    ensure!(
        invite
            .first_line()
            .starts_with(&format!("INVITE sip:{PBX_EXTENSION}@")),
        "{}",
        invite.first_line()
    );
    ensure!(
        invite
            .header("Record-Route")
            .is_some_and(|route| route.contains(&kamailio.sip_port().to_string())),
        "the INVITE did not come through Kamailio:\n{}",
        invite.text
    );

    // Drain A: it says so, keeps its call, refuses sessions; new clients land on B.
    ensure!(a.http_post("/drain", Some("not-the-admin-token-at-all"))?.0 == 401);
    ensure!(a.http_post("/drain", Some(ADMIN_TOKEN))?.0 == 202);
    ensure!(a.http_get("/health")? == (503, "draining\n".to_string()));
    ensure!(b.http_get("/health")?.0 == 200);
    let neighbour = &mut clients[neighbour_index];
    neighbour
        .ws
        .send_json(&json!({"type": "START_SESSION", "username": "web99", "password": "x"}))
        .await?;
    let refused = neighbour.ws.recv_type("ERROR", REPLY).await?;
    ensure!(refused["code"] == "DRAINING", "{refused}");
    let connections_before = [count(a, "wsConnections")?, count(b, "wsConnections")?];
    let mut late = Vec::new();
    for index in CLIENTS..CLIENTS + LATE_CLIENTS {
        late.push(Client::start(&url, index).await?);
        ensure!(
            holder_of(&kamailio, &web_user(index).0, [a, b])? == 1,
            "a late client on A"
        );
    }
    let connections_after = [count(a, "wsConnections")?, count(b, "wsConnections")?];
    ensure!(
        connections_after
            == [
                connections_before[0],
                connections_before[1] + LATE_CLIENTS as i64
            ],
        "before {connections_before:?}, after {connections_after:?}"
    );
    ensure!(count(a, "calls")? == 1, "the drain cut the call");
    ensure!(pbx.received_requests("BYE").is_empty(), "the PBX got a BYE");
    ensure!(a.try_wait()?.is_none(), "A left with a call up");

    // The call ends when its user hangs up; then A leaves, telling its clients.
    clients[caller_index]
        .send(json!({"type": "HANGUP_CALL", "callId": call_id}))
        .await?;
    clients[caller_index]
        .ws
        .recv_type("CALL_FINISHED", REPLY)
        .await?;
    pbx.wait_success(PEER)?;
    let status = a.wait_exit(Duration::from_secs(30))?;
    ensure!(status.success(), "A exited with {status}");
    clients[neighbour_index]
        .ws
        .recv_type("DISCONNECTED", REPLY)
        .await?;
    // Its sessions unregistered; B's are all there.
    wait_until(PEER, || {
        Ok(on_a.iter().all(|i| {
            kamailio
                .contacts(&clients[*i].user)
                .is_ok_and(|c| c.is_empty())
        }))
    })
    .context("A's registrations are still at Kamailio")?;
    let on_b = holders.iter().filter(|h| **h == 1).count() + LATE_CLIENTS;
    ensure!(
        count(b, "sessions")? == on_b as i64,
        "B should hold {on_b} sessions"
    );
    Ok(())
}
