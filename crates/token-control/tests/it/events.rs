//! Component notices from RabbitMQ and the ticket lifecycle.

use std::time::Duration;

use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_store::AuthorizerStatus;

use crate::harness::*;

const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
const START_PUSH: &str = "/cgi-bin/component/api_start_push_ticket";

fn get(tenant: &str, appid: &str) -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        tenant: tenant.into(),
        appid: appid.into(),
        min_remaining_secs: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticket_and_authorization_notices_change_the_store() {
    let mut env = Env::start(Setup::new("tc-events", 2)).await;
    let clock = env.sim.clock();

    // component_verify_ticket: a newer push replaces the stored ticket.
    let ticket = env.new_ticket(ACME_APPID).await;
    env.deliver_ticket(&ticket, clock.now_secs() + 1, "ticket-1")
        .await;

    // authorized: the code is exchanged and the authorizer stored with token and schedule.
    let outcome = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    assert_eq!(outcome.authorized.info_type, "authorized");
    let xml = authorization_xml(
        "authorized",
        ACME_APPID,
        FRESH,
        &outcome.authorized.auth_code,
        clock.now_secs(),
    );
    env.publish_notice(ACME, ACME_APPID, "authorized", &xml, "auth-1")
        .await;
    // The profile is written after the refresh token (a second, best-effort call to WeChat):
    // wait for both.
    env.wait_for(|| async {
        env.auths
            .get(ACME, FRESH)
            .await
            .unwrap()
            .is_some_and(|r| r.refresh_token.is_some() && !r.profile.nick_name.is_empty())
    })
    .await;
    let rec = env.auths.get(ACME, FRESH).await.unwrap().unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Authorized);
    assert_eq!(
        rec.refresh_token.unwrap().expose(),
        outcome.authorized.refresh_token
    );
    assert_eq!(rec.profile.nick_name, "Fresh Bakery");
    let cred = format!("authorizer:{FRESH}");
    let view = env.sim.authorizer(ACME_APPID, FRESH).unwrap();
    let stored = env.creds.token(ACME, &cred).await.unwrap().unwrap();
    assert_eq!(Some(stored.value.expose()), view.access_token.as_deref());
    assert!(
        env.creds.due(ACME, &cred).await.unwrap().is_some(),
        "scheduled"
    );

    // The same message again (a duplicate from the crash window): no second exchange.
    let exchanges = env.calls(QUERY_AUTH, None);
    env.publish_notice(ACME, ACME_APPID, "authorized", &xml, "auth-1")
        .await;
    // A later, unrelated event proves the duplicate was consumed first (one queue, in order
    // per consumer is not guaranteed, so wait for both effects).
    let outcome2 = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    assert_eq!(outcome2.authorized.info_type, "updateauthorized");
    let xml2 = authorization_xml(
        "updateauthorized",
        ACME_APPID,
        FRESH,
        &outcome2.authorized.auth_code,
        clock.now_secs() + 2,
    );
    env.publish_notice(ACME, ACME_APPID, "updateauthorized", &xml2, "auth-2")
        .await;
    env.wait_for(|| async {
        env.auths
            .get(ACME, FRESH)
            .await
            .unwrap()
            .and_then(|r| r.refresh_token)
            .is_some_and(|r| r.expose() == outcome2.authorized.refresh_token)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.calls(QUERY_AUTH, None),
        exchanges + 1,
        "updateauthorized exchanged once; the duplicate not at all"
    );

    // unauthorized: revoked, tokens dropped, no token served.
    env.sim.revoke(ACME_APPID, FRESH).await.unwrap();
    let xml3 = format!(
        "<xml><AppId><![CDATA[{ACME_APPID}]]></AppId><CreateTime>{}</CreateTime><InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[{FRESH}]]></AuthorizerAppid></xml>",
        clock.now_secs() + 3
    );
    env.publish_notice(ACME, ACME_APPID, "unauthorized", &xml3, "unauth-1")
        .await;
    env.wait_for(|| async {
        env.auths
            .get(ACME, FRESH)
            .await
            .unwrap()
            .is_some_and(|r| r.status == AuthorizerStatus::Revoked)
    })
    .await;
    assert!(env.creds.token(ACME, &cred).await.unwrap().is_none());
    assert_eq!(env.creds.due(ACME, &cred).await.unwrap(), None);
    let mut c = env.client(0).await;
    let err = c
        .get_access_token(req(get(ACME, FRESH), KEY_ACME))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("no longer authorizes"), "{err}");

    // A malformed event goes to the dead letters, not back to the queue forever.
    env.publish_notice(ACME, ACME_APPID, "authorized", "<xml><oops", "bad-1")
        .await;
    let dead = env.dead_letters(Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some("bad-1")
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_ticket_triggers_start_push_ticket_once() {
    let mut setup =
        Setup::new("tc-noticket", 3).with("WXHUB_TOKEN_CONTROL__TICKET_CHECK_INTERVAL_MS", "100");
    setup.tickets = false;
    setup.wait_reconcile = false;
    let env = Env::start(setup).await;
    env.wait_for(|| async { env.calls(START_PUSH, Some(ACME_APPID)) >= 1 })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.calls(START_PUSH, Some(ACME_APPID)),
        1,
        "one request across three replicas within the guard period"
    );
    assert_eq!(env.calls(START_PUSH, Some(BETA_APPID)), 1);
    // Without a ticket the component token is a clear error, not an empty token.
    let mut c = env.client(0).await;
    let err = c
        .get_access_token(req(get(ACME, ""), KEY_ACME))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("component_verify_ticket"), "{err}");
    // Readiness reports it as degraded: every replica stays in the Service, so every other
    // tenant (and acme's authorizers, whose tokens need no ticket) is still served.
    let ready = reqwest::get(format!("http://{}/readyz", env.replicas[0].ops))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["tickets"]["status"], "degraded");
    assert!(body["tickets"]["detail"].as_str().unwrap().contains("acme"));
    let served = env
        .client(1)
        .await
        .get_access_token(req(get(OA, ""), KEY_DIRECT))
        .await;
    assert!(
        served.is_ok(),
        "another tenant is served meanwhile: {served:?}"
    );

    // Once a ticket arrives, the token is served and the service is ready.
    env.give_ticket(ACME_APPID, ACME).await;
    env.give_ticket(BETA_APPID, BETA).await;
    let token = c
        .get_access_token(req(get(ACME, ""), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Some(token.access_token.as_str()),
        env.sim
            .component(ACME_APPID)
            .unwrap()
            .access_token
            .as_deref()
    );
    let ready = reqwest::get(format!("http://{}/readyz", env.replicas[1].ops))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["tickets"]["status"], "ready", "{body}");
    let health = reqwest::get(format!("http://{}/healthz", env.replicas[1].ops))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_ticket_is_refreshed_by_asking_wechat() {
    let env = Env::start(
        Setup::new("tc-stale", 1).with("WXHUB_TOKEN_CONTROL__TICKET_CHECK_INTERVAL_MS", "100"),
    )
    .await;
    assert_eq!(
        env.calls(START_PUSH, Some(ACME_APPID)),
        0,
        "fresh ticket: no request"
    );
    // 25 virtual minutes without a push: stale (WeChat pushes every 10).
    env.sim.advance(Duration::from_secs(25 * 60));
    env.wait_for(|| async { env.calls(START_PUSH, Some(ACME_APPID)) >= 1 })
        .await;
    env.shutdown().await;
}

/// A CreateTime no real notice can carry (the reproduction used it).
const FAR_FUTURE: i64 = 9_999_999_999;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_future_notices_of_every_type_change_nothing() {
    let mut env = Env::start(Setup::new("tc-future", 1)).await;
    let before = env.durable_snapshot().await;
    let acked = env
        .metric("wxhub_token_events_total{outcome=\"ack\"}")
        .await;
    env.sim.clear_calls();

    let ticket = env.new_ticket(ACME_APPID).await;
    let fresh = env.sim.authorize(ACME_APPID, FRESH, false).await.unwrap();
    let update = env.sim.authorize(ACME_APPID, AUTH1, false).await.unwrap();
    assert_eq!(update.authorized.info_type, "updateauthorized");
    let notices = [
        (
            "component_verify_ticket",
            ticket_xml(ACME_APPID, &ticket, FAR_FUTURE),
        ),
        (
            "authorized",
            authorization_xml(
                "authorized",
                ACME_APPID,
                FRESH,
                &fresh.authorized.auth_code,
                FAR_FUTURE,
            ),
        ),
        (
            "updateauthorized",
            authorization_xml(
                "updateauthorized",
                ACME_APPID,
                AUTH1,
                &update.authorized.auth_code,
                FAR_FUTURE,
            ),
        ),
        (
            "unauthorized",
            unauthorized_xml(ACME_APPID, AUTH2, FAR_FUTURE),
        ),
    ];
    for (i, (info_type, xml)) in notices.iter().enumerate() {
        env.publish_notice(ACME, ACME_APPID, info_type, xml, &format!("future-{i}"))
            .await;
    }
    env.wait_for(|| async {
        env.metric("wxhub_token_events_total{outcome=\"ack\"}")
            .await
            >= acked + 4.0
    })
    .await;
    assert_eq!(
        env.durable_snapshot().await,
        before,
        "far-future notices changed the store"
    );
    assert_eq!(env.calls(QUERY_AUTH, None), 0, "no code was exchanged");
    assert_eq!(
        env.metric("wxhub_token_events_future_total").await,
        4.0,
        "each is counted"
    );
    // The accounts still work: AUTH2 was not revoked.
    let mut c = env.client(0).await;
    c.get_access_token(req(get(ACME, AUTH2), KEY_ACME))
        .await
        .expect("AUTH2 still authorized");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_poisoned_with_far_future_times_still_take_real_events() {
    let mut env = Env::start(Setup::new("tc-poisoned", 1)).await;
    let clock = env.sim.clock();
    // What a forged far-future `unauthorized` and ticket left behind before the fix.
    let mut conn = env.store.conn();
    let keys = env.store.keys(ACME);
    for appid in [AUTH1, AUTH2] {
        let _: () = redis::cmd("HSET")
            .arg(keys.authorizer(appid))
            .arg("status")
            .arg("revoked")
            .arg("status_at")
            .arg(FAR_FUTURE * 1000)
            .arg("reason")
            .arg("unauthorized")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("HDEL")
            .arg(keys.authorizer(appid))
            .arg("rt")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(keys.ticket())
        .arg("v")
        .arg("forged-ticket")
        .arg("ct")
        .arg(FAR_FUTURE)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A real ticket push is stored.
    let ticket = env.new_ticket(ACME_APPID).await;
    env.deliver_ticket(&ticket, clock.now_secs(), "real-ticket")
        .await;
    // A real authorization notice re-authorizes AUTH1.
    env.authorize_by_notice((ACME, ACME_APPID), AUTH1, clock.now_secs(), "real-auth")
        .await;
    env.wait_authorizer(AUTH1, |r| {
        r.status == AuthorizerStatus::Authorized && r.refresh_token.is_some()
    })
    .await;
    // A reconcile re-authorizes AUTH2 (WeChat lists it).
    let mut c = env.client(0).await;
    c.sync_authorizers(req(
        wxhub_proto::token::v1::SyncAuthorizersRequest {
            tenant: ACME.into(),
        },
        KEY_ACME,
    ))
    .await
    .unwrap();
    let rec = env.auths.get(ACME, AUTH2).await.unwrap().unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Authorized);
    assert!(rec.status_at_ms <= clock.now_ms(), "ordering time healed");
    for appid in [AUTH1, AUTH2] {
        c.get_access_token(req(get(ACME, appid), KEY_ACME))
            .await
            .unwrap_or_else(|e| panic!("{appid} served: {e}"));
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_revoked_by_a_real_notice_re_authorizes_normally() {
    let mut env = Env::start(Setup::new("tc-reauth", 1)).await;
    let clock = env.sim.clock();
    let mut c = env.client(0).await;
    c.get_access_token(req(get(ACME, AUTH1), KEY_ACME))
        .await
        .unwrap();
    env.sim.revoke(ACME_APPID, AUTH1).await.unwrap();
    let xml = unauthorized_xml(ACME_APPID, AUTH1, clock.now_secs());
    env.publish_notice(ACME, ACME_APPID, "unauthorized", &xml, "revoke-1")
        .await;
    env.wait_authorizer(AUTH1, |r| r.status == AuthorizerStatus::Revoked)
        .await;
    // The merchant authorizes again a moment later.
    env.sim.advance(Duration::from_secs(5));
    let outcome = env
        .authorize_by_notice((ACME, ACME_APPID), AUTH1, clock.now_secs(), "reauth-1")
        .await;
    assert_eq!(outcome.authorized.info_type, "authorized");
    env.wait_authorizer(AUTH1, |r| r.status == AuthorizerStatus::Authorized)
        .await;
    let token = c
        .get_access_token(req(get(ACME, AUTH1), KEY_ACME))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Some(token.access_token.as_str()),
        env.sim
            .authorizer(ACME_APPID, AUTH1)
            .unwrap()
            .access_token
            .as_deref()
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorization_before_any_ticket_is_retried_not_dead_lettered() {
    let mut setup =
        Setup::new("tc-early-auth", 1).with("WXHUB_TOKEN_CONTROL__REQUEST_TIMEOUT_MS", "1500");
    setup.tickets = false;
    setup.wait_reconcile = false;
    let mut env = Env::start(setup).await;
    let clock = env.sim.clock();
    env.authorize_by_notice((ACME, ACME_APPID), FRESH, clock.now_secs(), "early-auth")
        .await;
    // It waited for a ticket, then went back to the queue.
    env.wait_for(|| async {
        env.metric("wxhub_token_events_total{outcome=\"requeue\"}")
            .await
            >= 1.0
    })
    .await;
    env.give_ticket(ACME_APPID, ACME).await;
    env.wait_authorizer(FRESH, |r| {
        r.status == AuthorizerStatus::Authorized && r.refresh_token.is_some()
    })
    .await;
    let dead = env.dead_letters(Duration::from_millis(200)).await;
    assert!(dead.is_empty(), "nothing dead-lettered");

    // A code that cannot be exchanged still falls back to the list (which brings back AUTH2's
    // refresh token, removed here so only that re-list can restore it).
    let mut conn = env.store.conn();
    let _: i64 = redis::cmd("HDEL")
        .arg(env.store.keys(ACME).authorizer(AUTH2))
        .arg("rt")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = env.calls("/cgi-bin/component/api_get_authorizer_list", None);
    let xml = authorization_xml(
        "updateauthorized",
        ACME_APPID,
        AUTH2,
        "queryauthcode@@@never-issued",
        clock.now_secs(),
    );
    env.publish_notice(ACME, ACME_APPID, "updateauthorized", &xml, "bad-code")
        .await;
    env.wait_authorizer(AUTH2, |r| r.refresh_token.is_some())
        .await;
    assert!(env.calls("/cgi-bin/component/api_get_authorizer_list", None) > before);

    // Without a ticket ever, it is dead-lettered on the queue's last delivery, with the reason.
    env.authorize_by_notice(
        (BETA, BETA_APPID),
        FRESH,
        clock.now_secs(),
        "never-a-ticket",
    )
    .await;
    let dead = env.dead_letters(Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].delivery.properties.headers().as_ref().unwrap();
    let Some(lapin::types::AMQPValue::LongString(reason)) = headers.inner().get("x-wxhub-reason")
    else {
        panic!("no reason header: {headers:?}")
    };
    let reason = String::from_utf8_lossy(reason.as_bytes());
    assert!(
        reason.contains("no usable component_verify_ticket in 5 deliveries"),
        "{reason}"
    );
    env.shutdown().await;
}

/// A notice that fails for a passing reason (here its dedupe record reads WRONGTYPE, as a Redis
/// that refuses or does not answer fails it) for more deliveries than the broker's delivery
/// limit (5 here) waits in the delay queues instead of the broker's requeues: nothing is
/// dead-lettered, and it applies once Redis answers. Requeued instead (before), the broker
/// dead-lettered it after its sixth delivery: a Redis outage of about 7 minutes (at the default
/// limit of 20) lost every notice that arrived meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notice_failing_past_the_delivery_limit_waits_and_applies_when_redis_answers() {
    let delays = [200u32, 400];
    let mut env = Env::start(
        Setup::new("tc-notice-later", 1).with("WXHUB_TOKEN_CONTROL__RETRY_DELAYS_MS", "[200, 400]"),
    )
    .await;
    let bus = env.bus().await;
    // Declared when the first notice is put off: deleted with the namespace.
    for ms in delays {
        env.ns.track_queue(format!(
            "{}.retry.{ms}",
            bus.topology().token_control_queue()
        ));
    }
    let clock = env.sim.clock();
    let record = env.store.keys(ACME).consumed("revoke-later");
    let mut conn = env.store.conn();
    let _: () = redis::cmd("RPUSH")
        .arg(&record)
        .arg("not a ledger entry")
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sim.revoke(ACME_APPID, AUTH2).await.unwrap();
    let xml = unauthorized_xml(ACME_APPID, AUTH2, clock.now_secs());
    env.publish_notice(ACME, ACME_APPID, "unauthorized", &xml, "revoke-later")
        .await;
    // Seven failed deliveries, two more than the delivery limit.
    env.wait_for(|| async {
        env.metric("wxhub_token_events_total{outcome=\"deferred\"}")
            .await
            >= 7.0
    })
    .await;
    let dead = env.dead_letters(Duration::from_millis(200)).await;
    assert!(dead.is_empty(), "dead-lettered: {}", dead.len());
    assert_eq!(
        env.auths.get(ACME, AUTH2).await.unwrap().unwrap().status,
        AuthorizerStatus::Authorized
    );
    let _: () = redis::cmd("DEL")
        .arg(&record)
        .query_async(&mut conn)
        .await
        .unwrap();
    env.wait_authorizer(AUTH2, |r| r.status == AuthorizerStatus::Revoked)
        .await;
    env.shutdown().await;
}
