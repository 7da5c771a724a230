//! The full-network release check: every step for all ten test accounts, answered exactly.

use prost::Message as _;
use reqwest::StatusCode;
use wxhub_gateway::release::TEST_ACCOUNTS;
use wxhub_message::{Message, Text};
use wxhub_proto::jobs::v1::ReleaseCheckJob;

use crate::common::*;

fn reply_text(m: &Message) -> &str {
    match m {
        Message::Text(Text { content, .. }) => content,
        other => panic!("not a text reply: {other:?}"),
    }
}

#[tokio::test]
async fn every_test_account_gets_the_exact_answers() {
    let h = Harness::start("gw-release").await;
    h.wait_connected().await;
    // Step 1: the ticket push is answered `success` (and goes to token-control as usual).
    let (status, body) = h
        .post(&callback(
            "/wx/comp/component",
            &comp(),
            Framing::Safe,
            &ticket_xml(COMP_APPID, "ticket@@@r"),
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    assert_eq!(h.take(&h.token_control()).await.len(), 1);

    for (i, (appid, gh)) in TEST_ACCOUNTS.iter().enumerate() {
        let path = format!("/wx/comp/callback/{appid}");
        let user = format!("ozy4qt{i}");

        // Event step: passive text `{Event}from_callback`, To/From swapped, encrypted.
        let xml = event_xml(gh, &user, "LOCATION", None);
        let (status, body) = h.post(&callback(&path, &comp(), Framing::Safe, &xml)).await;
        assert_eq!(status, StatusCode::OK, "{appid}");
        let reply = open_reply(&comp(), &body).unwrap_or_else(|e| panic!("{appid}: {e}: {body}"));
        assert_eq!(reply_text(&reply), "LOCATIONfrom_callback");
        assert_eq!(
            reply.header().to_user_name,
            user,
            "To is the request's From"
        );
        assert_eq!(
            reply.header().from_user_name,
            *gh,
            "From is the request's To"
        );
        assert_eq!(reply.header().msg_type, "text");

        // Text step.
        let xml = text_xml(
            gh,
            &user,
            "TESTCOMPONENT_MSG_TYPE_TEXT",
            7_400_000_000 + i as u64,
        );
        let (status, body) = h.post(&callback(&path, &comp(), Framing::Safe, &xml)).await;
        assert_eq!(status, StatusCode::OK);
        let reply = open_reply(&comp(), &body).unwrap();
        assert_eq!(reply_text(&reply), "TESTCOMPONENT_MSG_TYPE_TEXT_callback");
        assert_eq!(
            (
                reply.header().to_user_name.as_str(),
                reply.header().from_user_name.as_str()
            ),
            (user.as_str(), *gh)
        );

        // Customer-service step: empty answer, one job (even when WeChat retries).
        let code = format!("queryauthcode@@@code{i}-xFhe_-NgaES");
        let xml = text_xml(
            gh,
            &user,
            &format!("QUERY_AUTH_CODE:{code}"),
            7_500_000_000 + i as u64,
        );
        for _ in 0..2 {
            let (status, body) = h.post(&callback(&path, &comp(), Framing::Safe, &xml)).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        }
        let jobs = h.take(&h.release_check()).await;
        assert_eq!(jobs.len(), 1, "{appid}: one job");
        let m = &jobs[0];
        assert_eq!(m.delivery.routing_key.as_str(), "release-check");
        assert_eq!(
            m.delivery.properties.kind().as_ref().unwrap().as_str(),
            "wxhub.jobs.v1.ReleaseCheckJob"
        );
        let job = ReleaseCheckJob::decode(m.delivery.data.as_slice()).unwrap();
        assert_eq!(job.tenant, "comp");
        assert_eq!(job.authorizer_appid, *appid);
        assert_eq!(job.auth_code, code);
        assert_eq!(job.open_id, user);
        assert_eq!(job.dedupe_key, message_id(m));
        assert!(job.received_at_ms > 0);
    }
    // Test-account traffic is answered by the gateway, not published as ordinary events.
    assert!(h.take(&h.unrouted()).await.is_empty());
    let metrics = h.metrics().await;
    assert!(metrics.contains("wxhub_gateway_release_check_total"));
    h.stop().await;
}

#[tokio::test]
async fn test_accounts_are_recognised_by_username_and_plaintext_is_refused_like_any_component_callback()
 {
    let h = Harness::start("gw-release2").await;
    h.wait_connected().await;
    // The path appid is not a test account, but ToUserName is (mini-program group 3).
    let xml = event_xml("gh_393666f1fdf4", "oMini", "user_enter_tempsession", None);
    let (status, body) = h
        .post(&callback(
            "/wx/comp/callback/wxanyappid00001",
            &comp(),
            Framing::Safe,
            &xml,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply_text(&open_reply(&comp(), &body).unwrap()),
        "user_enter_tempsessionfrom_callback"
    );
    // WeChat encrypts every third-party platform callback: a plaintext one, even to a test
    // account, gets no passive reply.
    let xml = text_xml(
        "gh_2b3713f184a6",
        "oPlain",
        "TESTCOMPONENT_MSG_TYPE_TEXT",
        7_600_000_001,
    );
    let (status, body) = h
        .post(&callback(
            "/wx/comp/callback/wxa35b9c23cfe664eb",
            &comp(),
            Framing::Plain,
            &xml,
        ))
        .await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::BAD_REQUEST, "rejected: plaintext_not_allowed")
    );
    // Anything else to a test account: `success`, not published.
    let xml = text_xml("gh_2b3713f184a6", "oPlain", "hello robot", 7_600_000_002);
    let (status, body) = h
        .post(&callback(
            "/wx/comp/callback/wxa35b9c23cfe664eb",
            &comp(),
            Framing::Safe,
            &xml,
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    h.assert_no_state().await;
    h.stop().await;
}
