//! The release-check runner against a minimal responder written here with the crypto and
//! message crates: it passes when the responder is right and names the failing step otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::routing::post;
use serde_json::{Value, json};
use wxhub_crypto::{Crypt, KeySlot};
use wxhub_message::{
    ComponentNotice, Inbound, Limits, Message, Reply, encrypted_envelope, parse, parse_envelope,
};
use wxhub_sim::{ReleaseCheckConfig, Seed, SimHandle};

use crate::common::*;

const C: &str = "wxcomp_release";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Correct,
    WrongText,
    SlowText,
    NoApiCall,
}

#[derive(Clone)]
struct Responder {
    crypt: Crypt,
    sim: String,
    http: reqwest::Client,
    ticket: Arc<Mutex<Option<String>>>,
    variant: Variant,
}

fn decrypt(r: &Responder, q: Option<String>, body: &[u8]) -> Option<String> {
    let q = query_map(&q.unwrap_or_default());
    let env = parse_envelope(body, &Limits::default()).ok()?;
    r.crypt
        .verify_signature(q.get("signature")?, q.get("timestamp")?, q.get("nonce")?)
        .ok()?;
    let plain = r
        .crypt
        .verify_and_decrypt(
            q.get("msg_signature")?,
            q.get("timestamp")?,
            q.get("nonce")?,
            env.encrypt()?,
        )
        .ok()?;
    plain.message_str().ok().map(str::to_owned)
}

async fn component_url(State(r): State<Responder>, RawQuery(q): RawQuery, body: Bytes) -> String {
    if let Some(xml) = decrypt(&r, q, &body)
        && let Ok(Inbound::Component(ComponentNotice::VerifyTicket { ticket, .. })) = parse(&xml)
    {
        *r.ticket.lock().unwrap() = Some(ticket);
    }
    "success".into()
}

async fn post_json(r: &Responder, path: &str, body: Value) -> Option<Value> {
    r.http
        .post(format!("{}{path}", r.sim))
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// What a real gateway + worker do for QUERY_AUTH_CODE, asynchronously.
async fn answer_from_api(r: Responder, code: String, openid: String) -> Option<()> {
    let ticket = r.ticket.lock().unwrap().clone()?;
    let ct = post_json(
        &r,
        "/cgi-bin/component/api_component_token",
        json!({"component_appid": C, "component_appsecret": SECRET, "component_verify_ticket": ticket}),
    )
    .await?;
    let ct = ct["component_access_token"].as_str()?.to_owned();
    let auth = post_json(
        &r,
        &format!("/cgi-bin/component/api_query_auth?component_access_token={ct}"),
        json!({"component_appid": C, "authorization_code": code}),
    )
    .await?;
    let token = auth["authorization_info"]["authorizer_access_token"]
        .as_str()?
        .to_owned();
    post_json(
        &r,
        &format!("/cgi-bin/message/custom/send?access_token={token}"),
        json!({"touser": openid, "msgtype": "text", "text": {"content": format!("{code}_from_api")}}),
    )
    .await?;
    Some(())
}

async fn callback_url(
    State(r): State<Responder>,
    Path((_tenant, _appid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> String {
    let Some(xml) = decrypt(&r, q, &body) else {
        return String::new();
    };
    let Ok(message) = wxhub_message::parse_message(&xml) else {
        return String::new();
    };
    let header = message.header().clone();
    let content = match &message {
        Message::Event(e) => format!("{}from_callback", e.event),
        Message::Text(t) if t.content == "TESTCOMPONENT_MSG_TYPE_TEXT" => match r.variant {
            Variant::WrongText => "TESTCOMPONENT_MSG_TYPE_TEXT".into(),
            Variant::SlowText => {
                tokio::time::sleep(Duration::from_millis(4500)).await;
                "TESTCOMPONENT_MSG_TYPE_TEXT_callback".into()
            }
            _ => "TESTCOMPONENT_MSG_TYPE_TEXT_callback".into(),
        },
        Message::Text(t) => {
            if let Some(code) = t.content.strip_prefix("QUERY_AUTH_CODE:")
                && r.variant != Variant::NoApiCall
            {
                tokio::spawn(answer_from_api(
                    r.clone(),
                    code.to_owned(),
                    header.from_user_name.clone(),
                ));
            }
            return String::new();
        }
        _ => return "success".into(),
    };
    let reply = Reply::text(&header, 1, content).to_xml();
    encrypted_envelope(&r.crypt, KeySlot::Current, &reply, "1700000000", "123456")
        .unwrap_or_default()
}

async fn responder(sim: &SimHandle, variant: Variant) -> String {
    let state = Responder {
        crypt: Crypt::from_parts(TOKEN, KEY, C).unwrap(),
        sim: sim.base_url(),
        http: client(),
        ticket: Arc::new(Mutex::new(None)),
        variant,
    };
    let app = Router::new()
        .route("/wx/{tenant}/component", post(component_url))
        .route("/wx/{tenant}/callback/{appid}", post(callback_url))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

async fn sim() -> SimHandle {
    start(Seed {
        components: vec![component(C, None, None)],
        ..Default::default()
    })
    .await
}

fn cfg(gateway: &str, groups: Vec<u8>) -> ReleaseCheckConfig {
    let mut cfg = ReleaseCheckConfig::for_gateway(C, gateway, "acme");
    cfg.groups = groups;
    cfg.reply_limit_ms = 3000;
    cfg.api_wait_ms = 5000;
    cfg
}

#[tokio::test]
async fn passes_against_a_correct_responder_for_all_groups() -> Result<()> {
    let sim = sim().await;
    let gateway = responder(&sim, Variant::Correct).await;
    let report = sim
        .release_check(&cfg(&gateway, vec![1, 2, 3, 4, 5]))
        .await?;
    assert!(report.passed, "{report}");
    // ticket + 5 × (2 authorized + oa_event + oa_text + oa_query_auth_code + mp_query_auth_code)
    assert_eq!(report.steps.len(), 31);
    let names: Vec<&str> = report
        .steps
        .iter()
        .take(7)
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ticket",
            "authorized",
            "authorized",
            "oa_event",
            "oa_text",
            "oa_query_auth_code",
            "mp_query_auth_code"
        ]
    );
    assert!(report.steps.iter().all(|s| s.duration_ms >= 0.0));
    // The customer-service messages really went through the API.
    let sent = sim.messages(&Default::default());
    assert_eq!(sent.len(), 10);
    assert!(sent.iter().all(|m| {
        m.content
            .as_deref()
            .is_some_and(|c| c.ends_with("_from_api"))
    }));
    Ok(())
}

#[tokio::test]
async fn names_the_step_when_the_reply_content_is_wrong() -> Result<()> {
    let sim = sim().await;
    let gateway = responder(&sim, Variant::WrongText).await;
    let report = sim.release_check(&cfg(&gateway, vec![2])).await?;
    assert!(!report.passed);
    let failed = report.first_failure().expect("a failure");
    assert_eq!((failed.step.as_str(), failed.group), ("oa_text", Some(2)));
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("TESTCOMPONENT_MSG_TYPE_TEXT_callback"),
        "{failed}"
    );
    Ok(())
}

#[tokio::test]
async fn names_the_step_when_the_reply_is_too_slow() -> Result<()> {
    let sim = sim().await;
    let gateway = responder(&sim, Variant::SlowText).await;
    let report = sim.release_check(&cfg(&gateway, vec![1])).await?;
    let failed = report.first_failure().expect("a failure");
    assert_eq!(failed.step, "oa_text");
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no reply within 3000 ms"),
        "{failed}"
    );
    Ok(())
}

#[tokio::test]
async fn names_the_step_when_no_api_message_arrives() -> Result<()> {
    let sim = sim().await;
    let gateway = responder(&sim, Variant::NoApiCall).await;
    let mut c = cfg(&gateway, vec![3]);
    c.api_wait_ms = 300;
    let report = sim.release_check(&c).await?;
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(failed, ["oa_query_auth_code", "mp_query_auth_code"]);
    Ok(())
}

#[tokio::test]
async fn fails_the_ticket_step_when_the_gateway_is_down() -> Result<()> {
    let sim = sim().await;
    // Nothing listens on port 9 of 127.0.0.1.
    let report = sim
        .release_check(&cfg("http://127.0.0.1:9", vec![1]))
        .await?;
    assert!(!report.passed);
    assert_eq!(report.steps[0].step, "ticket");
    assert!(!report.steps[0].passed);
    Ok(())
}

#[tokio::test]
async fn rejects_bad_configuration() -> Result<()> {
    let sim = sim().await;
    let mut bad = cfg("http://127.0.0.1:9", vec![6]);
    assert!(sim.release_check(&bad).await.is_err());
    bad.groups = vec![1];
    bad.component_appid = "wxunknown".into();
    assert!(sim.release_check(&bad).await.is_err());
    // No URLs given and none seeded.
    assert!(
        sim.release_check(&ReleaseCheckConfig::new(C))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn cli_release_check_drives_a_running_sim() -> Result<()> {
    let sim = sim().await;
    let good = responder(&sim, Variant::Correct).await;
    let bad = responder(&sim, Variant::WrongText).await;
    let run = |gateway: String| {
        let sim_url = sim.base_url();
        async move {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let code = wxhub_sim::cli::main_with(
                [
                    "wxhub-sim",
                    "release-check",
                    "--sim",
                    &sim_url,
                    "--component",
                    C,
                    "--gateway",
                    &gateway,
                    "--tenant",
                    "acme",
                    "--groups",
                    "1",
                    "--reply-limit-ms",
                    "3000",
                    "--api-wait-ms",
                    "5000",
                ],
                &mut out,
                &mut err,
            )
            .await;
            (code, String::from_utf8_lossy(&out).into_owned())
        }
    };
    let (code, out) = run(good).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("PASS group 1 oa_query_auth_code") && out.contains("PASSED"),
        "{out}"
    );
    let (code, out) = run(bad).await;
    assert_eq!(code, std::process::ExitCode::from(1));
    assert!(out.contains("FAIL group 1 oa_text"), "{out}");
    Ok(())
}
