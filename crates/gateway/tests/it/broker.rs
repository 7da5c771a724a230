//! Invariant 1 under failure: with RabbitMQ down, hung or reconnecting, or Redis down, nothing
//! is acknowledged that was not stored, and WeChat's retry gets through after recovery without a
//! duplicate. Also the deadline and the graceful shutdown.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;

const PATH: &str = "/wx/comp/callback/wxauth0000000001";

async fn ready(h: &Harness) -> bool {
    h.get("/readyz").await.0 == StatusCode::OK
}

async fn wait_ready(h: &Harness, want: bool) {
    let ok = eventually(300, Duration::from_millis(100), || async {
        (ready(h).await == want).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "/readyz never became {}",
        if want { "ready" } else { "not ready" }
    );
}

#[tokio::test]
async fn with_the_broker_down_the_answer_is_503_and_the_retry_gets_through_after_recovery() {
    let proxy = Proxy::start(&broker_addr()).await;
    let h = Harness::start_with(
        "gw-down",
        Options {
            amqp_url: Some(proxy.amqp_url()),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    wait_ready(&h, true).await;

    proxy.set(ProxyMode::Down);
    let xml = text_xml("gh_acme", "oDown", "while down", 7_700_000_001);
    let (status, body) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("unavailable:"), "{body}");
    wait_ready(&h, false).await;
    // Still down: every retry is refused, and the failed attempts left no claim behind.
    let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.redis_keys().await.is_empty(), "released claims");
    assert!(h.take(&h.unrouted()).await.is_empty());

    proxy.set(ProxyMode::Up);
    wait_ready(&h, true).await;
    let (status, body) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 1, "stored exactly once");
    assert_eq!(message_id(&got[0]), "comp:wxauth0000000001:msg:7700000001");
    h.stop().await;
}

#[tokio::test]
async fn a_killed_connection_recovers_and_wechat_style_retries_deliver_once() {
    let h = Harness::start("gw-kill").await;
    h.wait_connected().await;
    let xml = text_xml("gh_acme", "oKill", "across a reconnect", 7_700_000_002);
    h.state.bus().kill_connection().await;
    // WeChat tries a callback three times; a client that keeps retrying like it eventually
    // gets through, and every answer before that is a refusal, never a false success.
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
        statuses.push(status);
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::OK),
        "never delivered: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    // Another retry after success is a duplicate.
    assert_eq!(
        h.post(&callback(PATH, &comp(), Framing::Safe, &xml))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_gateway_without_a_broker_refuses_everything_and_is_not_ready() {
    let h = Harness::start_with(
        "gw-nobroker",
        Options {
            amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
            ..Options::default()
        },
    )
    .await;
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"rabbitmq\""), "{body}");
    let ticket = ticket_xml(COMP_APPID, "ticket@@@nobroker");
    let (status, _) = h
        .post(&callback(
            "/wx/comp/component",
            &comp(),
            Framing::Safe,
            &ticket,
        ))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let xml = text_xml("gh_acme", "oNo", "x", 7_700_000_003);
    let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Bad input is still told apart from an outage.
    let (status, _) = h
        .post(&callback(
            "/wx/nobody/component",
            &comp(),
            Framing::Safe,
            &ticket,
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.assert_no_state().await;
    assert!(
        h.metrics()
            .await
            .contains("wxhub_gateway_unavailable_total")
    );
    h.stop().await;
}

#[tokio::test]
async fn a_broker_that_never_confirms_gets_503_at_the_deadline_and_no_duplicate_later() {
    let proxy = Proxy::start(&broker_addr()).await;
    let h = Harness::start_with(
        "gw-deadline",
        Options {
            amqp_url: Some(proxy.amqp_url()),
            env: vec![
                ("WXHUB_GATEWAY__DEADLINE_MS", "600".into()),
                ("WXHUB_GATEWAY__DEDUPE_TIMEOUT_MS", "200".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    // Warm Redis and the publish path first: this test gives the dedupe claim only 200 ms, and
    // a first claim that also has to connect can take longer on a busy machine (it would then
    // publish without a claim, which is not what is tested here).
    let warm = text_xml("gh_acme", "oWarm", "warm-up", 7_700_000_003);
    let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &warm)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    proxy.set(ProxyMode::Stalled);
    let xml = text_xml("gh_acme", "oSlow", "slow broker", 7_700_000_004);
    let (status, body) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!(
        (status, body.trim()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: deadline; retry later"
        )
    );
    assert!(proxy.held() > 0, "the publish reached the (stalled) broker");

    // The broker comes back: the late confirm still marks the callback done, so WeChat's retry
    // is acknowledged without a second copy.
    proxy.set(ProxyMode::Up);
    let delivered = eventually(100, Duration::from_millis(100), || async {
        let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(delivered.is_some());
    assert_eq!(h.take(&h.unrouted()).await.len(), 1, "one copy");
    h.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_default_policy_publishes_without_dedupe_and_stays_ready() {
    let h = Harness::start_with(
        "gw-noredis",
        Options {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    // It still takes callbacks, so it stays in the Service: ready, shown as degraded.
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["redis"]["status"], "degraded", "{body}");
    assert!(
        v["redis"]["detail"]
            .as_str()
            .unwrap()
            .contains("publishing without dedupe"),
        "{body}"
    );
    assert_eq!(v["rabbitmq"]["status"], "ready", "{body}");
    assert!(
        h.metrics()
            .await
            .contains("wxhub_readiness_degraded{check=\"redis\"} 1")
    );
    let xml = text_xml("gh_acme", "oNoRedis", "x", 7_700_000_005);
    for _ in 0..2 {
        let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
        assert_eq!(status, StatusCode::OK, "availability over dedupe");
    }
    // Nothing lost; the retry is a duplicate that carries the same message_id.
    let got = h.take(&h.unrouted()).await;
    assert_eq!(got.len(), 2);
    assert_eq!(message_id(&got[0]), message_id(&got[1]));
    assert!(h.metrics().await.contains("outcome=\"redis_down_publish\""));
    h.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_reject_policy_answers_503() {
    let h = Harness::start_with(
        "gw-noredis2",
        Options {
            redis_url: Some("redis://127.0.0.1:1".into()),
            env: vec![("WXHUB_GATEWAY__REDIS_DOWN", "reject".into())],
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let xml = text_xml("gh_acme", "oNoRedis", "x", 7_700_000_006);
    let (status, body) = h.post(&callback(PATH, &comp(), Framing::Safe, &xml)).await;
    assert_eq!(
        (status, body.trim()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: redis; retry later"
        )
    );
    assert!(h.take(&h.unrouted()).await.is_empty());
    // Every callback gets 503: out of the Service.
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("\"unready\""), "{body}");
    h.stop().await;
}

/// Every publisher channel is held by a publish the stalled broker never confirms; the retries
/// of another callback wait for a channel past their deadline and get 503. When the broker
/// comes back, none of those attempts may publish late: WeChat's next retry is the one that
/// stores the callback, once.
#[tokio::test]
async fn a_callback_answered_503_while_waiting_for_a_channel_is_not_published_later() {
    let proxy = Proxy::start(&broker_addr()).await;
    let mut h = Harness::start_with(
        "gw-stall-dup",
        Options {
            amqp_url: Some(proxy.amqp_url()),
            env: vec![
                ("WXHUB_AMQP__PUBLISHER_CHANNELS", "1".into()),
                ("WXHUB_GATEWAY__DEADLINE_MS", "600".into()),
                ("WXHUB_GATEWAY__DEDUPE_PENDING_TTL_MS", "600".into()),
                ("WXHUB_GATEWAY__DEDUPE_TIMEOUT_MS", "300".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    let warm = text_xml("gh_acme", "oWarm", "warm-up", 7_700_000_010);
    assert_eq!(
        h.post(&callback(PATH, &comp(), Framing::Safe, &warm))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);

    proxy.set(ProxyMode::Stalled);
    // A holds the only channel: sent, never confirmed while stalled.
    let a = text_xml("gh_acme", "oHold", "holds the channel", 7_700_000_011);
    let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &a)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // B's attempts wait for the channel until their deadline. Each starts after the previous
    // one's pending marker expired (600 ms), so each claims B afresh, as WeChat's retries
    // arriving seconds apart do.
    let b = text_xml("gh_acme", "oStuck", "waits for a channel", 7_700_000_012);
    const ATTEMPTS: usize = 3;
    for attempt in 0..ATTEMPTS {
        let started = std::time::Instant::now();
        let (status, body) = h.post(&callback(PATH, &comp(), Framing::Safe, &b)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {body}"
        );
        let left = Duration::from_millis(650).saturating_sub(started.elapsed());
        tokio::time::sleep(left).await;
    }

    // The broker recovers: A's confirm arrives, and WeChat retries B until it is stored.
    proxy.set(ProxyMode::Up);
    let stored = eventually(100, Duration::from_millis(100), || async {
        let (status, _) = h.post(&callback(PATH, &comp(), Framing::Safe, &b)).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(stored.is_some(), "B never got through after recovery");
    // Let every background publish finish (shutdown drains them), then count.
    h.shutdown().await.unwrap();
    let got = h.take(&h.unrouted()).await;
    let copies = |id: u64| {
        got.iter()
            .filter(|m| message_id(m) == format!("comp:wxauth0000000001:msg:{id}"))
            .count()
    };
    eprintln!(
        "stall: {ATTEMPTS} attempts of B answered 503 while waiting for a channel; copies of B \
         in the queue: {}; of A: {}",
        copies(7_700_000_012),
        copies(7_700_000_011)
    );
    assert_eq!(
        copies(7_700_000_011),
        1,
        "A was sent and confirmed late, once"
    );
    assert_eq!(
        copies(7_700_000_012),
        1,
        "B stored once, by the retry after recovery, not by the 503'd attempts"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_callbacks() {
    let proxy = Proxy::start(&broker_addr()).await;
    let mut h = Harness::start_with(
        "gw-drain",
        Options {
            amqp_url: Some(proxy.amqp_url()),
            env: vec![("WXHUB_GATEWAY__DEADLINE_MS", "4900".into())],
            ..Options::default()
        },
    )
    .await;
    h.wait_connected().await;
    proxy.set(ProxyMode::Stalled);
    let xml = text_xml("gh_acme", "oDrain", "in flight", 7_700_000_007);
    let cb = callback(PATH, &comp(), Framing::Safe, &xml);
    let (http, url) = (h.http.clone(), format!("{}{}", h.base, cb.path_and_query));
    let in_flight = tokio::spawn(async move {
        let res = http.post(url).body(cb.body).send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    });
    let reached = eventually(200, Duration::from_millis(20), || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the request is publishing");

    let serving = h.begin_shutdown();
    let addr = h.base.trim_start_matches("http://").to_owned();
    let refused = eventually(200, Duration::from_millis(20), || async {
        tokio::net::TcpStream::connect(&addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "no new connections once draining");

    proxy.set(ProxyMode::Up);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "success"),
        "the in-flight callback completed"
    );
    serving.await.unwrap().unwrap();
    assert_eq!(h.take(&h.unrouted()).await.len(), 1);
    h.stop().await;
}
