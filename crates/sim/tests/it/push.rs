//! The callback pusher: WeChat's framing in every mode, reply decoding, retries, schedule.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use serde_json::json;
use wxhub_crypto::{Crypt, KeySlot, signature};
use wxhub_message::{
    ComponentNotice, Inbound, Limits, Message, Reply, encrypted_envelope, parse, parse_envelope,
};
use wxhub_sim::{
    AccountKind, AgentSeed, CallbackSeed, CorpSeed, Encryption, MessageSpec, PushRequest, Seed,
    VirtualClock,
};

use crate::common::*;

const C: &str = "wxcomp_push";
const A: &str = "wxauth_push";

fn crypt() -> Crypt {
    Crypt::from_parts(TOKEN, KEY, C).expect("crypt")
}

/// Checks the query signatures and decrypts the body as a receiver would.
fn open(
    captured: &Captured,
    crypt: &Crypt,
) -> Result<(std::collections::HashMap<String, String>, String)> {
    let q = query_map(&captured.query);
    let ts = q.get("timestamp").context("timestamp")?;
    let nonce = q.get("nonce").context("nonce")?;
    crypt.verify_signature(q.get("signature").context("signature")?, ts, nonce)?;
    assert_eq!(q.get("encrypt_type").map(String::as_str), Some("aes"));
    let env = parse_envelope(captured.body.as_bytes(), &Limits::default())?;
    let encrypt = env.encrypt().context("Encrypt")?;
    let plain = crypt.verify_and_decrypt(
        q.get("msg_signature").context("msg_signature")?,
        ts,
        nonce,
        encrypt,
    )?;
    Ok((q, plain.message_str()?.to_owned()))
}

#[tokio::test]
async fn ticket_push_is_signed_encrypted_and_uses_both_clocks() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let sim = start(Seed {
        components: vec![component(
            C,
            Some(format!("{}/wx/t/component", rx.url)),
            None,
        )],
        ..Default::default()
    })
    .await;
    sim.advance(Duration::from_secs(86_400));
    let report = sim.push_ticket(C).await?;
    assert!(report.delivered);
    assert_eq!(
        report.reply.as_ref().map(|r| r.kind.as_str()),
        Some("success")
    );
    let got = rx.captured();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/wx/t/component");
    assert!(
        got[0]
            .body
            .starts_with("<xml><AppId><![CDATA[wxcomp_push]]></AppId><Encrypt><![CDATA["),
        "{}",
        got[0].body
    );
    let (q, xml) = open(&got[0], &crypt())?;
    assert!(!q.contains_key("openid"));
    // The query timestamp is real time; CreateTime inside is virtual time.
    let ts: i64 = q["timestamp"].parse()?;
    assert!((ts - VirtualClock::wall_ms() / 1000).abs() < 5);
    match parse(&xml)? {
        Inbound::Component(ComponentNotice::VerifyTicket {
            app_id,
            create_time,
            ticket,
        }) => {
            assert_eq!(app_id, C);
            assert!((create_time - sim.clock().now_secs()).abs() < 5);
            assert!(create_time - ts > 86_000);
            assert_eq!(Some(ticket), sim.component(C).and_then(|c| c.latest_ticket));
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn message_push_to_an_authorizer_and_its_encrypted_reply() -> Result<()> {
    // The receiver answers with an encrypted passive reply, like a gateway.
    let behaviour: Behaviour = Arc::new(|_, cap: &Captured| {
        let c = crypt();
        let (_, xml) = open(cap, &c).expect("push decrypts");
        let Ok(Message::Text(t)) = wxhub_message::parse_message(&xml) else {
            return (StatusCode::OK, None, "success".into());
        };
        let reply = Reply::text(&t.header, 1, format!("echo {}", t.content)).to_xml();
        let env = encrypted_envelope(&c, KeySlot::Current, &reply, "1700000000", "nonce1")
            .expect("envelope");
        (StatusCode::OK, None, env)
    });
    let rx = Receiver::start(behaviour).await;
    let mut seed = Seed {
        components: vec![component(
            C,
            None,
            Some(format!("{}/wx/t/callback/$APPID$", rx.url)),
        )],
        accounts: vec![account(
            A,
            "gh_push_target",
            AccountKind::OfficialAccount,
            &[],
        )],
        authorizations: vec![authorization(C, A, "refreshtoken@@@p")],
        ..Default::default()
    };
    seed.accounts[0].users.clear();
    let sim = start(seed).await;
    let report = sim
        .push_message(&PushRequest::to_authorizer(
            C,
            A,
            "o_new_user",
            MessageSpec::text("hi there"),
        ))
        .await?;
    assert!(report.delivered, "{report:?}");
    let got = rx.captured();
    assert_eq!(got[0].path, format!("/wx/t/callback/{A}"));
    assert!(
        got[0]
            .body
            .starts_with("<xml><ToUserName><![CDATA[gh_push_target]]></ToUserName><Encrypt>")
    );
    let (q, xml) = open(&got[0], &crypt())?;
    assert_eq!(q.get("openid").map(String::as_str), Some("o_new_user"));
    let Message::Text(t) = wxhub_message::parse_message(&xml)? else {
        anyhow::bail!("not text: {xml}")
    };
    assert_eq!(
        (
            t.header.to_user_name.as_str(),
            t.header.from_user_name.as_str()
        ),
        ("gh_push_target", "o_new_user")
    );
    assert!(t.msg_id.is_some());
    let reply = report.reply.context("reply")?;
    assert_eq!(reply.kind, "encrypted");
    assert!(reply.xml.unwrap_or_default().contains("echo hi there"));

    // The user's message opened the customer-service window.
    let api = Api::new(&sim);
    let ctoken = api.component_token(&sim, C).await?;
    let token = api
        .authorizer_token(&ctoken, C, A, "refreshtoken@@@p")
        .await?;
    let sent = api
        .post(
            &format!("/cgi-bin/message/custom/send?access_token={token}"),
            json!({"touser": "o_new_user", "msgtype": "text", "text": {"content": "async"}}),
        )
        .await?;
    assert_eq!(errcode(&sent), 0, "{sent}");
    Ok(())
}

#[tokio::test]
async fn a_reply_with_a_bad_signature_is_reported_invalid() -> Result<()> {
    let behaviour: Behaviour = Arc::new(|_, _| {
        let env = encrypted_envelope(&crypt(), KeySlot::Current, "<xml/>", "1700000000", "n")
            .expect("env");
        (
            StatusCode::OK,
            None,
            env.replace("<TimeStamp>1700000000", "<TimeStamp>1700000001"),
        )
    });
    let rx = Receiver::start(behaviour).await;
    let sim = start(Seed {
        components: vec![component(C, None, Some(format!("{}/cb/$APPID$", rx.url)))],
        accounts: vec![account(A, "gh_x", AccountKind::OfficialAccount, &[])],
        authorizations: vec![authorization(C, A, "r")],
        ..Default::default()
    })
    .await;
    let report = sim
        .push_message(&PushRequest::to_authorizer(
            C,
            A,
            "o1",
            MessageSpec::subscribe(),
        ))
        .await?;
    let reply = report.reply.context("reply")?;
    assert_eq!(reply.kind, "invalid");
    assert!(reply.error.unwrap_or_default().contains("signature"));
    Ok(())
}

#[tokio::test]
async fn compatible_and_plain_modes_of_a_direct_account() -> Result<()> {
    let rx = Receiver::start(Arc::new(|_, cap: &Captured| {
        // Plain mode: answer with a plaintext passive reply.
        if cap.query.contains("encrypt_type") {
            (StatusCode::OK, None, String::new())
        } else {
            (
                StatusCode::OK,
                None,
                "<xml><ToUserName><![CDATA[o]]></ToUserName><Content><![CDATA[p]]></Content></xml>"
                    .into(),
            )
        }
    }))
    .await;
    let mut compat = account("wxcompat01", "gh_compat", AccountKind::OfficialAccount, &[]);
    compat.callback = Some(CallbackSeed {
        url: format!("{}/wx/compat/callback", rx.url),
        token: "direct-token".into(),
        aes_key: Some(KEY.into()),
        encryption: Encryption::Compatible,
    });
    let mut plain = account("wxplain001", "gh_plain", AccountKind::OfficialAccount, &[]);
    plain.callback = Some(CallbackSeed {
        url: format!("{}/wx/plain/callback", rx.url),
        token: "direct-token".into(),
        aes_key: None,
        encryption: Encryption::Plain,
    });
    let sim = start(Seed {
        accounts: vec![compat, plain],
        ..Default::default()
    })
    .await;

    let report = sim
        .push_message(&PushRequest::to_account(
            "wxcompat01",
            "o_c",
            MessageSpec::location_event(1.5, 2.5, 3.0),
        ))
        .await?;
    assert_eq!(
        report.reply.as_ref().map(|r| r.kind.as_str()),
        Some("empty")
    );
    let cap = &rx.captured()[0];
    let c = Crypt::from_parts("direct-token", KEY, "wxcompat01")?;
    let (_, xml) = open(cap, &c)?;
    // Compatible: the plaintext fields sit next to Encrypt in the body.
    assert!(
        cap.body.contains("<Event><![CDATA[LOCATION]]></Event>") && cap.body.contains("<Encrypt>")
    );
    assert!(xml.contains("<Latitude><![CDATA[1.500000]]></Latitude>"));

    let report = sim
        .push_message(&PushRequest::to_account(
            "wxplain001",
            "o_p",
            MessageSpec::click("MENU_1"),
        ))
        .await?;
    assert_eq!(
        report.reply.as_ref().map(|r| r.kind.as_str()),
        Some("plain")
    );
    let cap = &rx.captured()[1];
    let q = query_map(&cap.query);
    assert!(!q.contains_key("encrypt_type") && !q.contains_key("msg_signature"));
    assert_eq!(
        q["signature"],
        signature("direct-token", &q["timestamp"], &q["nonce"])
    );
    assert_eq!(q["openid"], "o_p");
    let Message::Event(e) = wxhub_message::parse_message(&cap.body)? else {
        anyhow::bail!("not an event")
    };
    assert_eq!(e.event, "CLICK");
    Ok(())
}

#[tokio::test]
async fn wecom_push_has_agent_id_and_only_msg_signature() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let sim = start(Seed {
        wecom: vec![CorpSeed {
            corpid: "ww_push".into(),
            agents: vec![AgentSeed {
                agentid: 1_000_002,
                secret: "s".into(),
                token: Some("wecom-token".into()),
                aes_key: Some(KEY.into()),
                callback_url: Some(format!("{}/wx/corp/callback", rx.url)),
            }],
        }],
        ..Default::default()
    })
    .await;
    let report = sim
        .push_message(&PushRequest::to_wecom(
            "ww_push",
            1_000_002,
            "zhangsan",
            MessageSpec::text("hello"),
        ))
        .await?;
    assert!(report.delivered);
    let cap = &rx.captured()[0];
    let q = query_map(&cap.query);
    assert!(!q.contains_key("signature") && !q.contains_key("encrypt_type"));
    let env = parse_envelope(cap.body.as_bytes(), &Limits::default())?;
    assert_eq!(
        (env.to_user_name(), env.agent_id()),
        (Some("ww_push"), Some("1000002"))
    );
    let c = Crypt::from_parts("wecom-token", KEY, "ww_push")?;
    let plain = c.verify_and_decrypt(
        &q["msg_signature"],
        &q["timestamp"],
        &q["nonce"],
        env.encrypt().context("Encrypt")?,
    )?;
    assert!(plain.message_str()?.contains("<AgentID>1000002</AgentID>"));
    Ok(())
}

#[tokio::test]
async fn retries_after_503_and_after_a_timeout() -> Result<()> {
    let rx = Receiver::start(Arc::new(|n, _| match n {
        1 => (StatusCode::SERVICE_UNAVAILABLE, None, "busy".into()),
        2 => (
            StatusCode::OK,
            Some(Duration::from_millis(2500)),
            "late".into(),
        ),
        _ => (StatusCode::OK, None, "success".into()),
    }))
    .await;
    let mut cfg = config(Seed {
        components: vec![component(C, Some(format!("{}/auth", rx.url)), None)],
        ..Default::default()
    });
    cfg.push_timeout = Duration::from_millis(1000);
    let sim = wxhub_sim::start(cfg).await?;
    let report = sim.push_ticket(C).await?;
    assert!(report.delivered);
    assert_eq!(report.attempts.len(), 3);
    assert_eq!(report.attempts[0].status, Some(503));
    assert!(
        report.attempts[1]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("timeout")
    );
    assert_eq!(report.attempts[2].status, Some(200));
    // Every attempt carried the same signed body.
    let got = rx.wait_for(3).await;
    assert_eq!(got[0].body, got[2].body);
    assert_eq!(got[0].query, got[2].query);
    Ok(())
}

#[tokio::test]
async fn gives_up_after_three_attempts() -> Result<()> {
    let rx = Receiver::start(Arc::new(|_, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, None, "no".into())
    }))
    .await;
    let sim = start(Seed {
        components: vec![component(C, Some(format!("{}/auth", rx.url)), None)],
        ..Default::default()
    })
    .await;
    let report = sim.push_ticket(C).await?;
    assert!(!report.delivered);
    assert_eq!(report.attempts.len(), 3);
    assert!(report.reply.is_none());
    // The ticket exists at "WeChat" even though nobody received it.
    assert!(sim.component(C).and_then(|c| c.latest_ticket).is_some());
    Ok(())
}

#[tokio::test]
async fn scheduled_ticket_push_follows_virtual_time() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let mut cfg = config(Seed {
        components: vec![component(C, Some(format!("{}/auth", rx.url)), None)],
        ..Default::default()
    });
    cfg.auto_ticket_push = true;
    let sim = wxhub_sim::start(cfg).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.captured().is_empty());
    sim.advance(Duration::from_secs(600));
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let (_, xml) = open(&got[0], &crypt())?;
    assert!(xml.contains("component_verify_ticket"));
    sim.advance(Duration::from_secs(600));
    assert_eq!(rx.wait_for(2).await.len(), 2);
    assert!(sim.component(C).is_some_and(|c| c.tickets.len() >= 2));
    Ok(())
}

#[tokio::test]
async fn push_through_the_admin_api_and_bad_requests() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let sim = start(Seed {
        components: vec![component(
            C,
            Some(format!("{}/auth", rx.url)),
            Some(format!("{}/cb/$APPID$", rx.url)),
        )],
        accounts: vec![account(
            A,
            "gh_admin_push",
            AccountKind::OfficialAccount,
            &[],
        )],
        authorizations: vec![authorization(C, A, "r")],
        ..Default::default()
    })
    .await;
    let api = Api::new(&sim);
    let r = api
        .post(
            "/sim/push/message",
            json!({"component_appid": C, "appid": A, "openid": "o_admin",
                   "message": {"msgtype": "event", "event": "SCAN", "event_key": "123", "fields": {"Ticket": "TICKET"}}}),
        )
        .await?;
    assert_eq!(r["delivered"], true);
    assert!(r["plaintext"].as_str().unwrap_or_default().contains("<Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>"));
    let r = api
        .post("/sim/push/ticket", json!({"component_appid": C}))
        .await?;
    assert_eq!(r["what"], "component_verify_ticket");
    for body in [
        json!({"component_appid": C, "appid": "wxnotauthorized", "message": {"msgtype": "text", "content": "x"}}),
        json!({"appid": A, "message": {"msgtype": "bogus"}}),
        json!({"message": {"msgtype": "text", "content": "x"}}),
    ] {
        let resp = api
            .http
            .post(format!("{}/sim/push/message", api.base))
            .json(&body)
            .send()
            .await?;
        assert!(
            resp.status() == 400 || resp.status() == 404,
            "{body}: {}",
            resp.status()
        );
    }
    Ok(())
}

#[tokio::test]
async fn component_urls_can_be_set_after_start() -> Result<()> {
    let rx = Receiver::start(Receiver::success()).await;
    let sim = start(Seed {
        components: vec![component(C, None, None)],
        accounts: vec![account(A, "gh_late", AccountKind::OfficialAccount, &[])],
        authorizations: vec![authorization(C, A, "refreshtoken@@@late")],
        ..Default::default()
    })
    .await;
    assert!(sim.push_ticket(C).await.is_err(), "no URL yet");
    sim.set_component_urls(C, Some(format!("{}/auth", rx.url)), None)?;
    assert!(sim.push_ticket(C).await?.delivered);
    let api = Api::new(&sim);
    let view = api
        .post(
            &format!("/sim/components/{C}/urls"),
            json!({"message_url_template": format!("{}/cb/$APPID$", rx.url)}),
        )
        .await?;
    assert_eq!(view["auth_event_url"], format!("{}/auth", rx.url));
    // The authorization survived the URL change.
    assert_eq!(
        sim.authorizer(C, A).map(|a| a.refresh_token).as_deref(),
        Some("refreshtoken@@@late")
    );
    let report = sim
        .push_message(&PushRequest::to_authorizer(
            C,
            A,
            "o_late",
            MessageSpec::view("https://example.invalid/menu"),
        ))
        .await?;
    assert!(report.delivered);
    assert_eq!(rx.captured()[1].path, format!("/cb/{A}"));
    let bad = api
        .http
        .post(format!("{}/sim/components/{C}/urls", api.base))
        .json(&json!({"message_url_template": "http://x/no-placeholder"}))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let bad_field = sim
        .push_message(&PushRequest::to_authorizer(
            C,
            A,
            "o_late",
            MessageSpec::event("CLICK").field("a<b", "x"),
        ))
        .await;
    assert!(bad_field.is_err());
    Ok(())
}
