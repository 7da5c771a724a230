//! End to end with wxhub-sim: its pusher (signing, encrypting and retrying like WeChat) and its
//! full-network release-check runner drive the gateway; a stand-in for the worker consumes the
//! release-check jobs the gateway publishes and completes the customer-service step.

use std::time::Duration;

use prost::Message as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wxhub_bus::{Outcome, Received};
use wxhub_proto::jobs::v1::ReleaseCheckJob;
use wxhub_runtime::FnClock;
use wxhub_sim::{MessageSpec, PushRequest, ReleaseCheckConfig, Seed, SimConfig, SimHandle};

use crate::common::*;

const COMPONENT: &str = "wx0acme0component";
const SECRET: &str = "acme-component-secret";
const TOKEN: &str = "acme-message-token";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const SHOP: &str = "wx0acme0shop0oa";

fn acme_tenants() -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"{SECRET}\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{KEY}\"\n"
    )
}

async fn sim_for(gateway: &str) -> SimHandle {
    let seed = Seed::from_toml(&format!(
        r#"
[[components]]
appid = "{COMPONENT}"
secret = "{SECRET}"
token = "{TOKEN}"
aes_key = "{KEY}"
auth_event_url = "{gateway}/wx/acme/component"
message_url_template = "{gateway}/wx/acme/callback/$APPID$"
encryption = "safe"
auto_ticket_push = false

[[accounts]]
appid = "{SHOP}"
user_name = "gh_acme_shop_oa"

[[accounts.users]]
openid = "o_acme_alice"

[[authorizations]]
component_appid = "{COMPONENT}"
authorizer_appid = "{SHOP}"
"#
    ))
    .unwrap();
    wxhub_sim::start(SimConfig {
        seed: Some(seed),
        auto_ticket_push: false,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// wxhub-sim puts its virtual time in `CreateTime` (and real time in the query `timestamp`):
/// after the sim's clock was advanced, a gateway on the sim's clock takes its pushes, while one
/// on the system clock refuses them as coming from the future.
#[tokio::test]
async fn after_the_sims_clock_advanced_its_pushes_need_a_gateway_on_that_clock() {
    let sim = sim_for("http://127.0.0.1:1").await;
    sim.advance(Duration::from_secs(3 * 3600));
    let clock = sim.clock();
    let on_sim_clock = Harness::start_with(
        "gw-sim-clock",
        Options {
            tenants: Some(acme_tenants()),
            clock: Some(FnClock::new(move || clock.now_ms())),
            ..Options::default()
        },
    )
    .await;
    let on_system_clock = Harness::start_with(
        "gw-sys-clock",
        Options {
            tenants: Some(acme_tenants()),
            ..Options::default()
        },
    )
    .await;
    let point_sim_at = |h: &Harness| {
        sim.set_component_urls(
            COMPONENT,
            Some(format!("{}/wx/acme/component", h.base)),
            Some(format!("{}/wx/acme/callback/$APPID$", h.base)),
        )
        .unwrap();
    };
    let text = PushRequest::to_authorizer(COMPONENT, SHOP, "o_acme_alice", MessageSpec::text("hi"));

    on_sim_clock.wait_connected().await;
    point_sim_at(&on_sim_clock);
    assert!(sim.push_ticket(COMPONENT).await.unwrap().delivered);
    assert!(sim.push_message(&text).await.unwrap().delivered);
    assert_eq!(
        on_sim_clock.take(&on_sim_clock.token_control()).await.len(),
        1
    );
    assert_eq!(on_sim_clock.take(&on_sim_clock.unrouted()).await.len(), 1);

    on_system_clock.wait_connected().await;
    point_sim_at(&on_system_clock);
    let report = sim.push_message(&text).await.unwrap();
    assert!(!report.delivered, "{report:?}");
    assert!(
        report.attempts.iter().all(|a| a.status == Some(400)),
        "{:?}",
        report.attempts
    );
    on_system_clock.assert_no_state().await;
    sim.shutdown().await;
    on_sim_clock.stop().await;
    on_system_clock.stop().await;
}

#[tokio::test]
async fn the_sims_pusher_delivers_through_the_gateway() {
    let proxy = Proxy::start(&broker_addr()).await;
    let h = Harness::start_with(
        "gw-sim-push",
        Options {
            tenants: Some(acme_tenants()),
            amqp_url: Some(proxy.amqp_url()),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let sim = sim_for(&h.base).await;

    let report = sim.push_ticket(COMPONENT).await.unwrap();
    assert!(report.delivered, "{report:?}");
    assert_eq!(report.reply.as_ref().unwrap().kind, "success");
    let got = h.take(&h.token_control()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).xml, report.plaintext);

    let text = PushRequest::to_authorizer(COMPONENT, SHOP, "o_acme_alice", MessageSpec::text("hi"));
    let report = sim.push_message(&text).await.unwrap();
    assert!(report.delivered && report.attempts.len() == 1, "{report:?}");
    assert_eq!(report.reply.as_ref().unwrap().kind, "success");
    let click = PushRequest::to_authorizer(
        COMPONENT,
        SHOP,
        "o_acme_alice",
        MessageSpec::click("MENU_BUY"),
    );
    assert!(sim.push_message(&click).await.unwrap().delivered);
    let got = h.take(&h.unrouted()).await;
    let keys: Vec<_> = got
        .iter()
        .map(|m| m.delivery.routing_key.to_string())
        .collect();
    assert_eq!(
        keys,
        vec![
            format!("acme.{SHOP}.text"),
            format!("acme.{SHOP}.event.click")
        ]
    );
    assert_eq!(event_of(&got[0]).xml, report.plaintext);

    // The broker goes down: every one of WeChat's three attempts is refused, none acknowledged.
    proxy.set(ProxyMode::Down);
    let lost = PushRequest::to_authorizer(
        COMPONENT,
        SHOP,
        "o_acme_alice",
        MessageSpec::text("during the outage"),
    );
    let report = sim.push_message(&lost).await.unwrap();
    assert!(!report.delivered, "{report:?}");
    assert_eq!(report.attempts.len(), 3);
    assert!(
        report.attempts.iter().all(|a| a.status == Some(503)),
        "{:?}",
        report.attempts
    );
    assert!(h.take(&h.unrouted()).await.is_empty());

    // After recovery WeChat's retry of the same signed body gets through, once.
    proxy.set(ProxyMode::Up);
    let ready = eventually(300, Duration::from_millis(100), || async {
        (h.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some());
    for _ in 0..2 {
        let res = h
            .http
            .post(&report.url)
            .body(report.body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).xml, report.plaintext);
    sim.shutdown().await;
    h.stop().await;
}

/// What the worker will do with a release-check job: exchange the code, then send
/// `{code}_from_api` to the test user through the customer-service API (wechat-protocol.md §4.2).
async fn complete_release_check_job(
    http: &reqwest::Client,
    sim: &str,
    job: &ReleaseCheckJob,
) -> Result<(), String> {
    let post = |url: String, body: Value| async move {
        let v: Value = http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if v.get("errcode").and_then(Value::as_i64).unwrap_or(0) != 0 {
            return Err(v.to_string());
        }
        Ok::<Value, String>(v)
    };
    let component: Value = http
        .get(format!("{sim}/sim/components/{COMPONENT}"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let ticket = component["latest_ticket"]
        .as_str()
        .ok_or("no ticket")?
        .to_owned();
    let token = post(
        format!("{sim}/cgi-bin/component/api_component_token"),
        json!({"component_appid": COMPONENT, "component_appsecret": SECRET, "component_verify_ticket": ticket}),
    )
    .await?;
    let token = token["component_access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let auth = post(
        format!("{sim}/cgi-bin/component/api_query_auth?component_access_token={token}"),
        json!({"component_appid": COMPONENT, "authorization_code": job.auth_code}),
    )
    .await?;
    let access = auth["authorization_info"]["authorizer_access_token"]
        .as_str()
        .ok_or("no authorizer token")?
        .to_owned();
    post(
        format!("{sim}/cgi-bin/message/custom/send?access_token={access}"),
        json!({"touser": job.open_id, "msgtype": "text", "text": {"content": format!("{}_from_api", job.auth_code)}}),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_sims_release_check_passes_against_the_gateway() {
    let h = Harness::start_with(
        "gw-sim-release",
        Options {
            tenants: Some(acme_tenants()),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let sim = sim_for(&h.base).await;

    let worker_cancel = CancellationToken::new();
    let sim_base = sim.base_url();
    let http = http();
    let worker = tokio::spawn(wxhub_bus::consume(
        h.reader.clone(),
        h.release_check(),
        4,
        Duration::from_secs(5),
        move |received: Received| {
            let (http, sim_base) = (http.clone(), sim_base.clone());
            async move {
                if received.message_type.as_deref() != Some("wxhub.jobs.v1.ReleaseCheckJob") {
                    return Outcome::DeadLetter("unexpected message type".into());
                }
                let Ok(job) = ReleaseCheckJob::decode(received.body.as_slice()) else {
                    return Outcome::DeadLetter("not a ReleaseCheckJob".into());
                };
                match complete_release_check_job(&http, &sim_base, &job).await {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::DeadLetter(e),
                }
            }
        },
        worker_cancel.clone(),
    ));

    let report = sim
        .release_check(&ReleaseCheckConfig::for_gateway(COMPONENT, &h.base, "acme"))
        .await
        .unwrap();
    assert!(report.passed, "{report}");
    // ticket + per group: 2 authorized, oa_event, oa_text, oa_query_auth_code, mp_query_auth_code.
    assert_eq!(report.steps.len(), 1 + 5 * 6, "{report}");
    for step in [
        "ticket",
        "authorized",
        "oa_event",
        "oa_text",
        "oa_query_auth_code",
        "mp_query_auth_code",
    ] {
        assert!(
            report.steps.iter().any(|s| s.step == step && s.passed),
            "{step}: {report}"
        );
    }
    // The authorized notices reached token-control's queue; test-account messages did not
    // become ordinary events.
    assert_eq!(h.take(&h.token_control()).await.len(), 1 + 10);
    assert!(h.take(&h.unrouted()).await.is_empty());
    worker_cancel.cancel();
    worker.await.unwrap();
    sim.shutdown().await;
    h.stop().await;
}
