//! Invariants 1 and 2: a callback answered 2xx is in RabbitMQ, with the documented contract;
//! a retried callback (sequential or concurrent) is published once.

use reqwest::StatusCode;
use wxhub_bus::Topology;

use crate::common::*;

#[tokio::test]
async fn an_acknowledged_message_is_in_the_queue_with_the_full_contract() {
    let h = Harness::start("gw-ack").await;
    h.wait_connected().await;
    let xml = text_xml("gh_acme", "oUser1", "hello", 7_000_000_001);
    let cb = callback(
        "/wx/comp/callback/wxauth0000000001",
        &comp(),
        Framing::Safe,
        &xml,
    );
    let (status, body) = h
        .post_with(
            &cb,
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
        )
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));

    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1, "exactly one message");
    let m = &got[0];
    assert_eq!(
        m.delivery.routing_key.as_str(),
        Topology::event_key("comp", "wxauth0000000001", "text")
    );
    assert_eq!(
        m.delivery.exchange.as_str(),
        h.ns.topology().events_exchange()
    );
    let p = &m.delivery.properties;
    assert_eq!(message_id(m), "comp:wxauth0000000001:msg:7000000001");
    assert_eq!(
        p.kind().as_ref().unwrap().as_str(),
        "wxhub.events.v1.CallbackEvent"
    );
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/x-protobuf"
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let tp = header(m, "traceparent").expect("traceparent header");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );

    let e = event_of(m);
    assert_eq!(e.tenant, "comp");
    assert_eq!(e.tenant_kind, "component");
    assert_eq!(e.appid, "wxauth0000000001");
    assert_eq!(e.kind, "text");
    assert_eq!(e.xml, xml, "the decrypted XML exactly as sent");
    assert_eq!(e.dedupe_key, "comp:wxauth0000000001:msg:7000000001");
    assert!(e.received_at_ms > 0);
    assert_eq!(e.encrypt_mode, "safe");
    assert_eq!(e.to_user_name, "gh_acme");
    assert_eq!(e.from_user_name, "oUser1");
    assert!(e.create_time > 0);
    assert_eq!(e.msg_type, "text");
    assert_eq!(e.msg_id, 7_000_000_001);
    assert!(e.event.is_empty() && e.info_type.is_empty());

    // The dedupe marker lives under the tenant's hash tag.
    let keys = h.redis_keys().await;
    assert_eq!(
        keys,
        vec![format!(
            "{}:{{comp}}:dedupe:wxauth0000000001:msg:7000000001",
            h.ns.name()
        )]
    );
    h.stop().await;
}

#[tokio::test]
async fn events_route_by_event_and_component_notices_reach_token_control() {
    let h = Harness::start("gw-route").await;
    h.wait_connected().await;
    let xml = event_xml("gh_acme", "oUser2", "CLICK", Some("MENU_1"));
    let cb = callback(
        "/wx/comp/callback/wxauth0000000001",
        &comp(),
        Framing::Safe,
        &xml,
    );
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "comp.wxauth0000000001.event.click"
    );
    let e = event_of(&got[0]);
    assert_eq!(
        (e.event.as_str(), e.event_key.as_str()),
        ("CLICK", "MENU_1")
    );
    assert!(
        e.dedupe_key
            .starts_with("comp:wxauth0000000001:evt:oUser2:")
    );

    let ticket = ticket_xml(COMP_APPID, "ticket@@@abc");
    let cb = callback("/wx/comp/component", &comp(), Framing::Safe, &ticket);
    let (status, body) = h.post(&cb).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    let got = h.take(&h.token_control()).await;
    assert_eq!(got.len(), 1, "the bound token-control queue has the ticket");
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "comp.component.component_verify_ticket"
    );
    let e = event_of(&got[0]);
    assert_eq!(e.info_type, "component_verify_ticket");
    assert_eq!(e.appid, COMP_APPID);
    assert_eq!(e.kind, "component_verify_ticket");
    assert_eq!(e.xml, ticket);

    let authorized = format!(
        "<xml><AppId>{COMP_APPID}</AppId><CreateTime>{}</CreateTime><InfoType>authorized</InfoType><AuthorizerAppid>wxauth0000000009</AuthorizerAppid><AuthorizationCode>code@@@1</AuthorizationCode><AuthorizationCodeExpiredTime>1</AuthorizationCodeExpiredTime><PreAuthCode>pre</PreAuthCode></xml>",
        now()
    );
    let cb = callback("/wx/comp/component", &comp(), Framing::Safe, &authorized);
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    let got = h.take(&h.token_control()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_of(&got[0]).authorizer_appid, "wxauth0000000009");
    assert!(h.take(&h.unrouted()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_retried_callback_is_published_once() {
    let h = Harness::start("gw-retry").await;
    h.wait_connected().await;
    let xml = text_xml("gh_acme", "oUser3", "again", 7_000_000_002);
    // WeChat's retries are new requests (new nonce) with the same message.
    for attempt in 0..3 {
        let cb = callback(
            "/wx/comp/callback/wxauth0000000001",
            &comp(),
            Framing::Safe,
            &xml,
        );
        let (status, body) = h.post(&cb).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "success"),
            "attempt {attempt}"
        );
    }
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    // The same MsgId for another authorizer is another message.
    let cb = callback(
        "/wx/comp/callback/wxauth0000000002",
        &comp(),
        Framing::Safe,
        &xml,
    );
    assert_eq!(h.post(&cb).await.0, StatusCode::OK);
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    let metrics = h.metrics().await;
    assert!(metrics.contains("wxhub_gateway_dedupe_total"), "{metrics}");
    assert!(metrics.contains("outcome=\"duplicate\""), "{metrics}");
    h.stop().await;
}

#[tokio::test]
async fn concurrent_retries_are_published_once() {
    let h = Harness::start("gw-concurrent").await;
    h.wait_connected().await;
    let xml = text_xml("gh_acme", "oUser4", "burst", 7_000_000_003);
    let requests: Vec<_> = (0..16)
        .map(|_| {
            callback(
                "/wx/comp/callback/wxauth0000000001",
                &comp(),
                Framing::Safe,
                &xml,
            )
        })
        .collect();
    let answers = futures::future::join_all(requests.iter().map(|cb| h.post(cb))).await;
    for (status, body) in &answers {
        assert_eq!((*status, body.as_str()), (StatusCode::OK, "success"));
    }
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1, "16 concurrent deliveries, one message");

    // Many distinct messages at once are all published.
    let requests: Vec<_> = (0..40)
        .map(|i| {
            callback(
                "/wx/comp/callback/wxauth0000000001",
                &comp(),
                Framing::Safe,
                &text_xml("gh_acme", "oUser4", "n", 7_100_000_000 + i),
            )
        })
        .collect();
    let answers = futures::future::join_all(requests.iter().map(|cb| h.post(cb))).await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 40);
    let mut ids: Vec<_> = got.iter().map(message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    h.stop().await;
}
