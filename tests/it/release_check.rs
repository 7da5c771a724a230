//! 全网发布 end to end: the simulator plays WeChat's release check against the gateway; the
//! gateway answers the passive steps, token-control exchanges the test accounts' codes, and the
//! worker sends the `$code_from_api` customer-service messages. Then the worker's own
//! guarantees: a redelivered job is not sent twice, an impossible job is dead-lettered with its
//! reason.

use std::time::Duration;

use lapin::types::AMQPValue;
use prost::Message as _;
use wxhub_bus::{Outgoing, topology::RELEASE_CHECK_KEY};
use wxhub_proto::jobs::v1::ReleaseCheckJob;
use wxhub_sim::{MessageFilter, ReleaseCheckConfig};
use wxhub_tests::{COMPONENT, SHOP, SHOP_USER, Stack, TENANT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_passes_the_release_check() {
    let stack = Stack::start("release-check").await.unwrap();
    let config = ReleaseCheckConfig::for_gateway(COMPONENT, &stack.gateway_url, TENANT);
    let report = stack.sim.release_check(&config).await.unwrap();
    for step in &report.steps {
        println!(
            "{:<22} group {:?} {:>8.1} ms {} {}",
            step.step,
            step.group,
            step.duration_ms,
            if step.passed { "PASS" } else { "FAIL" },
            step.reason.as_deref().unwrap_or("")
        );
    }
    assert!(report.passed, "first failure: {:?}", report.first_failure());
    // ticket, then per group: authorized ×2, oa_event, oa_text, oa_query_auth_code, mp_query_auth_code.
    let async_steps = report
        .steps
        .iter()
        .filter(|s| s.step.ends_with("query_auth_code"))
        .count();
    assert_eq!(
        async_steps, 10,
        "every test OA and mini program sent its customer-service message"
    );
    let sent = stack.sim.messages(&MessageFilter {
        path: Some("/cgi-bin/message/custom/send".into()),
        ..MessageFilter::default()
    });
    assert_eq!(
        sent.len(),
        10,
        "exactly one customer-service message per async step"
    );
    assert!(sent.iter().all(|m| {
        m.content
            .as_deref()
            .is_some_and(|c| c.ends_with("_from_api"))
    }));
    stack.stop().await;
}

async fn publish_job(stack: &Stack, job: &ReleaseCheckJob, message_id: &str) {
    let exchange = stack.ns.topology().jobs_exchange();
    let body = job.encode_to_vec();
    stack
        .bus
        .publish(&Outgoing {
            exchange: &exchange,
            routing_key: RELEASE_CHECK_KEY,
            body: &body,
            message_id,
            message_type: "wxhub.jobs.v1.ReleaseCheckJob",
            headers: &[],
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_is_sent_once_and_an_impossible_one_is_dead_lettered() {
    let stack = Stack::start("worker-jobs").await.unwrap();
    // token-control needs a ticket before it can exchange codes.
    let push = stack.sim.push_ticket(COMPONENT).await.unwrap();
    assert!(push.delivered, "{push:?}");
    let authorized = stack.sim.authorize(COMPONENT, SHOP, false).await.unwrap();
    let job = ReleaseCheckJob {
        tenant: TENANT.into(),
        authorizer_appid: SHOP.into(),
        auth_code: authorized.authorized.auth_code.clone(),
        open_id: SHOP_USER.into(),
        dedupe_key: "acme:wx0acme0shop0oa:msg:1".into(),
        received_at_ms: 0,
    };
    // The same job twice at once (a duplicate handled concurrently with the first), then once
    // more after it was sent (the broker's redelivery after a lost ack looks like this).
    publish_job(&stack, &job, "job-1").await;
    publish_job(&stack, &job, "job-1").await;
    let filter = MessageFilter {
        touser: Some(SHOP_USER.into()),
        ..MessageFilter::default()
    };
    let first = stack
        .sim
        .wait_for_message(&filter, Duration::from_secs(20))
        .await;
    let expected = format!("{}_from_api", job.auth_code);
    assert_eq!(
        first.and_then(|m| m.content).as_deref(),
        Some(expected.as_str())
    );
    publish_job(&stack, &job, "job-1").await;

    // A job no one can complete: unknown authorizer, made-up code.
    let impossible = ReleaseCheckJob {
        authorizer_appid: "wx0nobody0here".into(),
        auth_code: "queryauthcode@@@made-up".into(),
        ..job.clone()
    };
    publish_job(&stack, &impossible, "job-2").await;
    let dead = stack
        .ns
        .drain_queue(
            &stack.bus,
            &stack.ns.topology().dead_queue(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        dead.len(),
        1,
        "the impossible job is dead-lettered, not dropped"
    );
    let headers = dead[0]
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let Some(AMQPValue::LongString(reason)) = headers.inner().get("x-wxhub-reason") else {
        panic!("no reason header: {headers:?}")
    };
    let reason = String::from_utf8_lossy(reason.as_bytes()).into_owned();
    assert!(reason.contains("token-control"), "{reason}");
    // By now the duplicate of job-1 has been consumed too (the queue is FIFO and job-2 came
    // after it): still exactly one message to the user.
    assert_eq!(
        stack.sim.messages(&filter).len(),
        1,
        "the redelivered job was not sent again"
    );
    stack.stop().await;
}

/// The callback path's appid and the account the code belongs to can differ (a test account
/// reached through another path, a misrouted callback): the answer goes out as the account
/// the exchange names, with its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_answers_as_the_account_the_exchange_names() {
    let stack = Stack::start("worker-appid").await.unwrap();
    let push = stack.sim.push_ticket(COMPONENT).await.unwrap();
    assert!(push.delivered, "{push:?}");
    let authorized = stack.sim.authorize(COMPONENT, SHOP, false).await.unwrap();
    let job = ReleaseCheckJob {
        tenant: TENANT.into(),
        authorizer_appid: "wx0acme0other0path".into(),
        auth_code: authorized.authorized.auth_code.clone(),
        open_id: SHOP_USER.into(),
        dedupe_key: "acme:wx0acme0other0path:msg:1".into(),
        received_at_ms: 0,
    };
    publish_job(&stack, &job, "job-other-path").await;
    let sent = stack
        .sim
        .wait_for_message(
            &MessageFilter {
                touser: Some(SHOP_USER.into()),
                ..MessageFilter::default()
            },
            Duration::from_secs(20),
        )
        .await
        .expect("the answer was sent");
    assert_eq!(
        sent.content.as_deref(),
        Some(format!("{}_from_api", job.auth_code).as_str())
    );
    assert_eq!(sent.appid, SHOP, "sent with the exchanged account's token");
    stack.stop().await;
}
