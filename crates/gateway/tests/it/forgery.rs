//! Forged and replayed callbacks (issue: forged component notices). What proves a body is the
//! `msg_signature` over its ciphertext: component tenants take nothing else; plaintext mode is an
//! Official Account's opt-in, and there a signed (timestamp, nonce) vouches for the first body it
//! carried only. No callback may carry a CreateTime from the future.

use std::sync::Arc;

use reqwest::StatusCode;
use wxhub_crypto::{random_nonce, signature};
use wxhub_runtime::FnClock;

use crate::common::*;

const AUTHORIZER: &str = "/wx/comp/callback/wxauth0000000001";
/// 2286-11-20: the CreateTime of the forged notices of the issue.
const FAR_FUTURE: i64 = 9_999_999_999;

fn notice_xml(info_type: &str, create_time: i64, rest: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{COMP_APPID}]]></AppId><CreateTime>{create_time}</CreateTime><InfoType><![CDATA[{info_type}]]></InfoType>{rest}</xml>"
    )
}

/// One of every notice type of wechat-protocol.md §2.2/§2.4, at `create_time`.
fn every_notice(create_time: i64) -> Vec<(&'static str, String)> {
    let authorization = "<AuthorizerAppid>wxauth0000000009</AuthorizerAppid><AuthorizationCode>queryauthcode@@@x</AuthorizationCode><AuthorizationCodeExpiredTime>1</AuthorizationCodeExpiredTime><PreAuthCode>pre</PreAuthCode>";
    vec![
        (
            "component_verify_ticket",
            notice_xml(
                "component_verify_ticket",
                create_time,
                "<ComponentVerifyTicket>ticket@@@forged</ComponentVerifyTicket>",
            ),
        ),
        (
            "authorized",
            notice_xml("authorized", create_time, authorization),
        ),
        (
            "updateauthorized",
            notice_xml("updateauthorized", create_time, authorization),
        ),
        (
            "unauthorized",
            notice_xml(
                "unauthorized",
                create_time,
                "<AuthorizerAppid>wxauth0000000009</AuthorizerAppid>",
            ),
        ),
        (
            "notify_third_fasteregister",
            notice_xml(
                "notify_third_fasteregister",
                create_time,
                "<appid>wxnew</appid><status>0</status><auth_code>ac</auth_code><msg>OK</msg>",
            ),
        ),
        (
            "an unknown InfoType",
            notice_xml("something_new", create_time, "<Z>1</Z>"),
        ),
    ]
}

fn text_at(to: &str, create_time: i64, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// The reproduction of the issue: a plaintext `unauthorized` (CreateTime 9999999999) signed with
/// a (token, timestamp, nonce) triple as found in any access log, then the same for a
/// `component_verify_ticket`. Refused; nothing published, no Redis key written.
#[tokio::test]
async fn forged_plaintext_notices_to_a_component_tenant_are_refused() {
    let h = Harness::start("gw-forge").await;
    h.wait_connected().await;
    let unauthorized = notice_xml(
        "unauthorized",
        FAR_FUTURE,
        "<AuthorizerAppid>wxauth0000000001</AuthorizerAppid>",
    );
    let ticket = notice_xml(
        "component_verify_ticket",
        FAR_FUTURE,
        "<ComponentVerifyTicket>ticket@@@forged</ComponentVerifyTicket>",
    );
    for forged in [&unauthorized, &ticket] {
        let (status, body) = h
            .post(&callback(
                "/wx/comp/component",
                &comp(),
                Framing::Plain,
                forged,
            ))
            .await;
        assert_eq!(
            (status, body.trim()),
            (StatusCode::BAD_REQUEST, "rejected: plaintext_not_allowed"),
            "{forged}"
        );
    }
    // The message URL of the component's authorizers is encrypted-only too.
    let (status, body) = h
        .post(&callback(
            AUTHORIZER,
            &comp(),
            Framing::Plain,
            &text_xml("gh_acme", "oUser", "forged", 7_800_000_001),
        ))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::BAD_REQUEST, "rejected: plaintext_not_allowed")
    );
    h.assert_no_state().await;
    assert!(
        h.metrics()
            .await
            .contains("reason=\"plaintext_not_allowed\"")
    );
    h.stop().await;
}

/// Every notice type and account messages on every route: a CreateTime beyond the skew is
/// refused even when correctly encrypted (a compromised key, a bug at the sender), and nothing is
/// published. Within the skew is accepted.
#[tokio::test]
async fn a_create_time_from_the_future_is_refused_for_every_notice_and_message() {
    let h = Harness::start("gw-future").await;
    h.wait_connected().await;
    // Default skew: 60 s.
    let beyond = now() + 60 + 5;
    for at in [beyond, FAR_FUTURE] {
        for (what, xml) in every_notice(at) {
            let (status, body) = h
                .post(&callback(
                    "/wx/comp/component",
                    &comp(),
                    Framing::Safe,
                    &xml,
                ))
                .await;
            assert_eq!(
                (status, body.trim()),
                (StatusCode::BAD_REQUEST, "rejected: create_time_future"),
                "{what} at {at}"
            );
        }
        let wecom = format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{at}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_contact]]></Event><ChangeType>update_user</ChangeType><UserID>zhangsan</UserID><AgentID>1000002</AgentID></xml>"
        );
        for (path, crypt, framing, xml) in [
            (AUTHORIZER, comp(), Framing::Safe, text_at("gh_acme", at, 1)),
            (
                AUTHORIZER,
                comp(),
                Framing::Compatible,
                text_at("gh_acme", at, 2),
            ),
            (
                "/wx/oa/callback",
                oa(),
                Framing::Safe,
                text_at("gh_oa", at, 3),
            ),
            (
                "/wx/oa/callback",
                oa(),
                Framing::Plain,
                text_at("gh_oa", at, 4),
            ),
            ("/wx/corp/callback", corp(), Framing::Wecom, wecom),
        ] {
            let (status, body) = h.post(&callback(path, &crypt, framing, &xml)).await;
            assert_eq!(
                (status, body.trim()),
                (StatusCode::BAD_REQUEST, "rejected: create_time_future"),
                "{path} {framing:?} at {at}"
            );
        }
    }
    h.assert_no_state().await;

    // Within the skew: accepted (WeChat's clock may run slightly ahead of ours).
    let ahead = now() + 50;
    for (what, xml) in every_notice(ahead) {
        let (status, _) = h
            .post(&callback(
                "/wx/comp/component",
                &comp(),
                Framing::Safe,
                &xml,
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{what}");
    }
    let (status, _) = h
        .post(&callback(
            AUTHORIZER,
            &comp(),
            Framing::Safe,
            &text_at("gh_acme", ahead, 5),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let published = h.take(&h.token_control()).await.len() + h.take(&h.unrouted()).await.len();
    assert_eq!(published, every_notice(0).len() + 1);
    h.stop().await;
}

/// The skew is measured against the gateway's clock, which tests replace with the simulator's
/// virtual one (its pushes carry virtual time in CreateTime).
#[tokio::test]
async fn the_create_time_check_uses_the_injected_clock() {
    let two_hours_ahead = || wxhub_runtime::unix_ms() + 2 * 3600 * 1000;
    let h = Harness::start_with(
        "gw-clock",
        Options {
            clock: Some(FnClock::new(two_hours_ahead) as Arc<dyn wxhub_runtime::Clock>),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let virtual_now = two_hours_ahead() / 1000;
    let (status, body) = h
        .post(&callback(
            AUTHORIZER,
            &comp(),
            Framing::Safe,
            &text_at("gh_acme", virtual_now, 1),
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    let (status, _) = h
        .post(&callback(
            AUTHORIZER,
            &comp(),
            Framing::Safe,
            &text_at("gh_acme", virtual_now + 120, 2),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    h.stop().await;
}

/// A plaintext request with `body` under an exact `(timestamp, nonce)`.
fn plaintext(path: &str, token: &str, ts: i64, nonce: &str, body: &str) -> Callback {
    let ts = ts.to_string();
    Callback {
        path_and_query: format!(
            "{path}?signature={}&timestamp={ts}&nonce={nonce}&openid=oUser",
            signature(token, &ts, nonce)
        ),
        body: body.to_owned(),
    }
}

/// On an Official Account that opted into plaintext mode, a signed (timestamp, nonce) vouches
/// for the first body only: another body under it is refused, the same body again (a retry) is
/// accepted and deduplicated.
#[tokio::test]
async fn a_plaintext_nonce_carries_one_body_only() {
    let h = Harness::start("gw-nonce").await;
    h.wait_connected().await;
    let (ts, nonce) = (now(), random_nonce(10));
    let real = text_at("gh_oa", now(), 7_800_000_010);
    let forged = text_at("gh_oa", now(), 7_800_000_011).replace(">hi<", ">pay me<");
    let first = plaintext("/wx/oa/callback", "oatoken", ts, &nonce, &real);
    assert_eq!(h.post(&first).await, (StatusCode::OK, "success".to_owned()));
    let (status, body) = h
        .post(&plaintext(
            "/wx/oa/callback",
            "oatoken",
            ts,
            &nonce,
            &forged,
        ))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::UNAUTHORIZED, "rejected: nonce_reused")
    );
    // WeChat's retry: the same message, under the same or a new pair.
    assert_eq!(h.post(&first).await.0, StatusCode::OK);
    let retry = plaintext(
        "/wx/oa/callback",
        "oatoken",
        now(),
        &random_nonce(10),
        &real,
    );
    assert_eq!(h.post(&retry).await.0, StatusCode::OK);
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1, "the real message, once");
    assert_eq!(event_of(&got[0]).xml, real);
    assert_eq!(event_of(&got[0]).encrypt_mode, "plain");
    // The binding lives under the tenant's hash tag until the pair leaves the window (on any
    // replica): window 300 s + 60 s for the replicas' clocks.
    let key = format!("{}:{{oa}}:nonce:{ts}:{nonce}", h.ns.name());
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut h.ns.store().conn())
        .await
        .unwrap();
    assert!((300..=361).contains(&ttl), "{key}: {ttl}");
    // A nonce that cannot be a key part is refused before anything is written.
    let odd = plaintext("/wx/oa/callback", "oatoken", now(), "a:b", &real);
    assert_eq!(
        h.post(&odd).await,
        (StatusCode::BAD_REQUEST, "rejected: bad_nonce\n".to_owned())
    );
    h.stop().await;
}

/// The binding is the only proof of a plaintext body: without Redis a plaintext callback gets
/// 503 (WeChat retries), even where encrypted ones are published without dedupe.
#[tokio::test]
async fn plaintext_callbacks_fail_closed_without_redis() {
    let h = Harness::start_with(
        "gw-nonce-noredis",
        Options {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let xml = text_at("gh_oa", now(), 7_800_000_020);
    let (status, body) = h
        .post(&callback("/wx/oa/callback", &oa(), Framing::Plain, &xml))
        .await;
    assert_eq!(
        (status, body.trim()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: redis; retry later"
        )
    );
    assert!(h.take(&h.unrouted()).await.is_empty());
    let (status, _) = h
        .post(&callback("/wx/oa/callback", &oa(), Framing::Safe, &xml))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "encrypted: published without dedupe"
    );
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    h.stop().await;
}
