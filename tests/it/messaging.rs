//! The messaging service end to end: enqueue over gRPC → RabbitMQ → worker → wxhub-sim as
//! WeChat, and WeChat's delivery reports back through the gateway. Invariant 6 of design §9:
//! a job is sent at most once after it was recorded sent; a failing job ends `failed` or dead
//! with its reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;
use wxhub_bus::Outgoing;
use wxhub_bus::topology::SEND_KEY;
use wxhub_proto::jobs::v1::{SendBatch, SendJob};
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_sim::{CallFilter, FaultSpec, MessageFilter};
use wxhub_store::{Authorizers, Claim, JobState, Jobs, NewJob, Settle};
use wxhub_tests::{
    AUTH_MP, AUTH1, AUTH2, BETA, BLOCKED_USER, GATEWAY_KEY, OPS_KEY, SUBSCRIBE_TEMPLATE, Setup,
    Stack, TEMPLATE, TENANT, req, user,
};
use wxhub_worker::announce::{Announcer, SEND_BATCH_TYPE, SEND_JOB_TYPE, new_route, send_job};

const CUSTOM: &str = "/cgi-bin/message/custom/send";
const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
const SUBSCRIBE: &str = "/cgi-bin/message/subscribe/send";
const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";

/// Short delays so retries, deferrals and parks happen within a test.
const FAST: [(&str, &str); 5] = [
    ("WXHUB_WORKER__RETRY_DELAYS_MS", "[300, 600]"),
    ("WXHUB_WORKER__RATE_LIMITED_DELAY_MS", "300"),
    ("WXHUB_WORKER__USER_COOLDOWN_MS", "300"),
    ("WXHUB_WORKER__QUOTA_PARK_MS", "1500"),
    ("WXHUB_AMQP__PREFETCH", "50"),
];

async fn stack(label: &str, extra: &[(&str, &str)]) -> Stack {
    let mut setup = Setup::new(label);
    setup.tickets = true;
    setup.worker_env = FAST
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Stack::start_with(setup).await.unwrap()
}

async fn client(addr: std::net::SocketAddr) -> MessagingClient<Channel> {
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match MessagingClient::connect(url.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "worker not serving: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn enqueue(appid: &str, key: &str, message: Message) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        tenant: TENANT.into(),
        appid: appid.into(),
        idempotency_key: key.into(),
        message: Some(message),
    }
}

fn text(to: &str, content: &str) -> Message {
    Message::Custom(pb::CustomMessage {
        touser: to.into(),
        msgtype: "text".into(),
        body_json: serde_json::json!({ "content": content }).to_string(),
        kf_account: String::new(),
    })
}

fn template(to: &str) -> Message {
    Message::Template(pb::TemplateMessage {
        touser: to.into(),
        template_id: TEMPLATE.into(),
        data: [(
            "keyword1".to_owned(),
            pb::TemplateValue {
                value: "shipped".into(),
                color: String::new(),
            },
        )]
        .into(),
        ..Default::default()
    })
}

fn subscribe(to: &str) -> pb::SubscribeMessage {
    pb::SubscribeMessage {
        touser: to.into(),
        template_id: SUBSCRIBE_TEMPLATE.into(),
        data: [("thing1".to_owned(), "tomorrow".to_owned())].into(),
        ..Default::default()
    }
}

async fn send(c: &mut MessagingClient<Channel>, r: pb::EnqueueRequest) -> pb::Job {
    c.enqueue(req(r, OPS_KEY)).await.unwrap().into_inner()
}

/// The tenant's recent jobs (every state).
async fn jobs_of(c: &mut MessagingClient<Channel>, tenant: &str) -> Vec<pb::Job> {
    c.list_jobs(req(
        pb::ListJobsRequest {
            tenant: tenant.into(),
            ..Default::default()
        },
        OPS_KEY,
    ))
    .await
    .unwrap()
    .into_inner()
    .jobs
}

async fn job(c: &mut MessagingClient<Channel>, id: &str) -> pb::Job {
    c.get_job(req(
        pb::GetJobRequest {
            job_id: id.to_owned(),
        },
        OPS_KEY,
    ))
    .await
    .unwrap()
    .into_inner()
}

/// Polls the job until `done` holds (at most 30 s).
async fn wait_job(
    c: &mut MessagingClient<Channel>,
    id: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(c, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job never got there: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Job `id` as Enqueue stores it: a customer-service text to user 0 of AUTH1.
fn custom_job(id: &str) -> NewJob {
    let body = serde_json::json!({"touser": user(0), "msgtype": "text", "text": {"content": "x"}});
    NewJob {
        id: id.to_owned(),
        appid: AUTH1.into(),
        kind: "custom".into(),
        api: CUSTOM.into(),
        touser: user(0),
        body: body.to_string(),
        idempotency_key: None,
        campaign: None,
        now_ms: wxhub_runtime::unix_ms(),
    }
}

/// Publishes `job`'s announcement to the send queue by hand (one message, no headers).
async fn announce_by_hand(stack: &Stack, job: SendJob) {
    let body = job.encode_to_vec();
    let exchange = stack.ns.topology().jobs_exchange();
    stack
        .bus
        .publish(&Outgoing {
            exchange: &exchange,
            routing_key: SEND_KEY,
            body: &body,
            message_id: &job.job_id,
            message_type: SEND_JOB_TYPE,
            headers: &[],
        })
        .await
        .unwrap();
}

/// Takes the stack's dead letters (acking them); waits up to `wait` for the first.
async fn dead_letters(stack: &Stack, wait: Duration) -> Vec<lapin::message::BasicGetMessage> {
    let dead = stack.ns.topology().dead_queue();
    stack.ns.drain_queue(&stack.bus, &dead, wait).await
}

fn is(state: &'static str) -> impl Fn(&pb::Job) -> bool {
    move |j| j.state_name == state
}

/// Stores custom job `id` as a worker `owner` that sent it and recorded it `sent` (with WeChat's
/// `msgid`; 0 for none) would have left it.
async fn recorded_sent(jobs: &Jobs, id: &str, owner: &str, msgid: i64, now: i64) {
    jobs.create(TENANT, &custom_job(id)).await.unwrap();
    assert!(matches!(
        jobs.claim(TENANT, id, "", owner, now, now + 5000)
            .await
            .unwrap(),
        Claim::Claimed { .. }
    ));
    let settle = Settle {
        state: JobState::Sent,
        errcode: 0,
        reason: String::new(),
        msgid,
        next_at_ms: 0,
        attempt: None,
        count_attempt: true,
        now_ms: now,
        campaign: String::new(),
    };
    jobs.settle(TENANT, id, AUTH1, owner, &settle)
        .await
        .unwrap();
}

/// The stack's job store, as a test reads and writes it directly.
fn job_store(stack: &Stack) -> Jobs {
    Jobs::new(
        stack.store.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
}

fn messages(stack: &Stack, path: &str, to: &str) -> usize {
    stack
        .sim
        .messages(&MessageFilter {
            touser: Some(to.into()),
            path: Some(path.into()),
            ..MessageFilter::default()
        })
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_sent_reported_and_deduplicated_by_key() {
    let stack = stack("msg-send", &[]).await;
    let mut c = client(stack.worker).await;

    // A customer-service message, with a customer-service account.
    let custom = Message::Custom(pb::CustomMessage {
        kf_account: "kf1@acme".into(),
        ..match text(&user(0), "hello") {
            Message::Custom(m) => m,
            _ => unreachable!(),
        }
    });
    let j = send(&mut c, enqueue(AUTH1, "", custom)).await;
    assert!(
        matches!(j.state_name.as_str(), "queued" | "sending" | "sent"),
        "{j:?}"
    );
    let j = wait_job(&mut c, &j.id, is("sent")).await;
    assert_eq!((j.attempts_made, j.attempts.len()), (1, 1));
    assert_eq!(messages(&stack, CUSTOM, &user(0)), 1);

    // Template, mini-program subscribe and OA subscription notice: sent, then WeChat's report.
    let t = send(&mut c, enqueue(AUTH1, "", template(&user(1)))).await;
    let s = send(
        &mut c,
        enqueue(AUTH_MP, "", Message::Subscribe(subscribe(&user(2)))),
    )
    .await;
    let b = send(
        &mut c,
        enqueue(AUTH1, "", Message::Bizsend(subscribe(&user(3)))),
    )
    .await;
    let blocked = send(&mut c, enqueue(AUTH1, "", template(&user(BLOCKED_USER)))).await;
    for id in [&t.id, &s.id, &b.id] {
        let j = wait_job(&mut c, id, is("delivered")).await;
        assert_ne!(j.msgid, 0);
        assert_eq!(j.delivery_status, "success");
    }
    let j = wait_job(&mut c, &blocked.id, is("delivery_failed")).await;
    assert_eq!(j.delivery_status, "failed:user block");
    assert_eq!(messages(&stack, SUBSCRIBE, &user(2)), 1);

    // Idempotency: the same key returns the same job, and nothing is sent twice.
    let first = send(&mut c, enqueue(AUTH1, "order-42", text(&user(4), "once"))).await;
    let again = send(&mut c, enqueue(AUTH1, "order-42", text(&user(4), "twice?"))).await;
    assert_eq!(first.id, again.id);
    wait_job(&mut c, &first.id, is("sent")).await;
    let later = send(
        &mut c,
        enqueue(AUTH1, "order-42", text(&user(4), "thrice?")),
    )
    .await;
    assert_eq!(
        (later.id.as_str(), later.state_name.as_str()),
        (first.id.as_str(), "sent")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(messages(&stack, CUSTOM, &user(4)), 1);

    // Lists.
    let listed = c
        .list_jobs(req(
            pb::ListJobsRequest {
                tenant: TENANT.into(),
                state: "delivered".into(),
                limit: 10,
            },
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 3);
    stack.stop().await;
}

/// A stack, and its client, where `AUTH2` revoked the authorization: what
/// [`refused_messages`] expects.
async fn stack_refusing(label: &str) -> (Stack, MessagingClient<Channel>) {
    let stack = stack(label, &[]).await;
    let c = client(stack.worker).await;
    let now = wxhub_runtime::unix_ms();
    Authorizers::new(stack.store.clone())
        .revoke(TENANT, AUTH2, now, now, "unauthorized")
        .await
        .unwrap();
    (stack, c)
}

/// Messages Enqueue refuses (with `AUTH2` revoked), each with its code and a word of its
/// error: what a message of an EnqueueBatch is answered too.
fn refused_messages() -> Vec<(pb::EnqueueRequest, Code, &'static str)> {
    let raw = |msgtype: &str, body: &str| {
        Message::Custom(pb::CustomMessage {
            touser: user(0),
            msgtype: msgtype.into(),
            body_json: body.into(),
            kf_account: String::new(),
        })
    };
    let mut bad_template = match template(&user(0)) {
        Message::Template(t) => t,
        _ => unreachable!(),
    };
    bad_template.data.clear();
    vec![
        (
            enqueue(AUTH1, "", text("", "x")),
            Code::InvalidArgument,
            "custom.touser",
        ),
        (
            enqueue(AUTH1, "", text("o/../x", "x")),
            Code::InvalidArgument,
            "custom.touser",
        ),
        (
            enqueue(AUTH1, "", raw("gif", "{}")),
            Code::InvalidArgument,
            "custom.msgtype",
        ),
        (
            enqueue(AUTH1, "", raw("image", "{}")),
            Code::InvalidArgument,
            "custom.image.media_id",
        ),
        (
            enqueue(AUTH1, "", text(&user(0), &"长".repeat(700))),
            Code::InvalidArgument,
            "2048",
        ),
        (
            enqueue(AUTH1, "", Message::Template(bad_template)),
            Code::InvalidArgument,
            "template.data",
        ),
        (
            pb::EnqueueRequest {
                message: None,
                ..enqueue(AUTH1, "", text("o1", "x"))
            },
            Code::InvalidArgument,
            "message",
        ),
        (
            enqueue(AUTH1, "bad key", text("o1", "x")),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            enqueue("wx0nobody000000", "", text("o1", "x")),
            Code::NotFound,
            "wx0nobody000000",
        ),
        (
            enqueue(AUTH2, "", text("o1", "x")),
            Code::FailedPrecondition,
            "revoked",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_queued() {
    let (stack, mut c) = stack_refusing("msg-bad").await;
    let mut cases: Vec<(pb::EnqueueRequest, &str, Code, &str)> = refused_messages()
        .into_iter()
        .map(|(r, code, needle)| (r, OPS_KEY, code, needle))
        .collect();
    cases.extend([
        (
            pb::EnqueueRequest {
                tenant: BETA.into(),
                ..enqueue(AUTH1, "", text("o1", "x"))
            },
            GATEWAY_KEY,
            Code::PermissionDenied,
            "beta",
        ),
        (
            pb::EnqueueRequest {
                tenant: "nope".into(),
                ..enqueue(AUTH1, "", text("o1", "x"))
            },
            OPS_KEY,
            Code::NotFound,
            "nope",
        ),
        (
            enqueue(AUTH1, "", text("o1", "x")),
            "wrong-key",
            Code::Unauthenticated,
            "API key",
        ),
    ]);
    for (r, key, code, needle) in cases {
        let what = format!("{r:?}");
        let status = c.enqueue(req(r, key)).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: {}",
            status.message()
        );
    }
    let listed = jobs_of(&mut c, TENANT).await;
    assert!(listed.is_empty(), "{listed:?}");
    let status = c
        .get_job(req(
            pb::GetJobRequest {
                job_id: "beta.0000000000000000aaaa".into(),
            },
            GATEWAY_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let sends = stack.sim.messages(&MessageFilter::default()).len();
    assert_eq!(sends, 0);
    stack.stop().await;
}

/// EnqueueBatch answers every message as Enqueue would answer it alone: the good ones stored,
/// announced and sent once, each bad one refused (with its index) and never stored, a repeated
/// idempotency key the first message's job; a refused call stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_message_as_enqueue_would_alone() {
    let (stack, mut c) = stack_refusing("msg-batch").await;
    let batch = |messages: Vec<pb::EnqueueRequest>| pb::EnqueueBatchRequest {
        tenant: TENANT.into(),
        messages,
    };

    // The call itself: refused whole, nothing stored.
    let one = || vec![enqueue(AUTH1, "", text(&user(0), "x"))];
    let too_many = vec![enqueue(AUTH1, "", text(&user(0), "x")); 501];
    for (r, key, code, needle) in [
        (batch(vec![]), OPS_KEY, Code::InvalidArgument, "messages"),
        (batch(too_many), OPS_KEY, Code::InvalidArgument, "500"),
        (
            pb::EnqueueBatchRequest {
                tenant: BETA.into(),
                messages: one(),
            },
            GATEWAY_KEY,
            Code::PermissionDenied,
            "beta",
        ),
        (batch(one()), "wrong-key", Code::Unauthenticated, "API key"),
    ] {
        let status = c.enqueue_batch(req(r, key)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{}", status.message());
    }
    assert!(jobs_of(&mut c, TENANT).await.is_empty());

    // Two good messages, every message Enqueue refuses, a repeat of the first one's key and a
    // message of another tenant.
    let mut sent = vec![
        enqueue(AUTH1, "batch-1", template(&user(10))),
        enqueue(AUTH1, "", text(&user(11), "in a batch")),
    ];
    let refused = refused_messages();
    sent.extend(refused.iter().map(|(r, _, _)| r.clone()));
    sent.push(enqueue(AUTH1, "batch-1", template(&user(12))));
    sent.push(pb::EnqueueRequest {
        tenant: BETA.into(),
        ..enqueue(AUTH1, "", text(&user(13), "x"))
    });
    let results = c
        .enqueue_batch(req(batch(sent), OPS_KEY))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), refused.len() + 4);
    let (first, second) = (&results[0], &results[1]);
    assert_eq!((first.code, second.code), (0, 0), "{results:?}");
    let (t, x) = (first.job.clone().unwrap(), second.job.clone().unwrap());
    assert_eq!((t.kind.as_str(), x.kind.as_str()), ("template", "custom"));
    for (i, (r, (_, code, needle))) in results[2..].iter().zip(&refused).enumerate() {
        assert_eq!(r.code, *code as i32, "messages[{}]: {r:?}", i + 2);
        assert!(r.job.is_none());
        assert!(
            r.error.contains(needle) && r.error.contains(&format!("messages[{}]", i + 2)),
            "{}",
            r.error
        );
    }
    let repeat = &results[refused.len() + 2];
    assert_eq!(repeat.code, 0, "{repeat:?}");
    assert_eq!(
        repeat.job.as_ref().map(|j| j.id.as_str()),
        Some(t.id.as_str())
    );
    let other = &results[refused.len() + 3];
    assert_eq!(other.code, Code::InvalidArgument as i32, "{other:?}");
    assert!(other.error.contains("tenant"), "{}", other.error);

    // The two good ones are sent, once each; nothing else was stored or sent — a retry of
    // the batch with the key included.
    wait_job(&mut c, &t.id, is("delivered")).await;
    let retried = c
        .enqueue_batch(req(
            batch(vec![enqueue(AUTH1, "batch-1", template(&user(10)))]),
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        retried[0]
            .job
            .as_ref()
            .map(|j| (j.id.as_str(), j.state_name.as_str())),
        Some((t.id.as_str(), "delivered"))
    );
    wait_job(&mut c, &x.id, is("sent")).await;
    assert_eq!(messages(&stack, TEMPLATE_SEND, &user(10)), 1);
    assert_eq!(messages(&stack, CUSTOM, &user(11)), 1);
    assert_eq!(stack.sim.messages(&MessageFilter::default()).len(), 2);
    let mut listed: Vec<String> = jobs_of(&mut c, TENANT)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    listed.sort();
    let mut stored = vec![t.id, x.id];
    stored.sort();
    assert_eq!(listed, stored);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_classification_row_ends_where_it_should() {
    let stack = stack("msg-classes", &[]).await;
    let mut c = client(stack.worker).await;
    // (fault on template/send, times) → (final state, attempts counted, errcode, calls made)
    let rows: [(i64, Option<u64>, &str, u32, i64); 7] = [
        (48001, Some(1), "failed", 1, 48001), // permanent: WeChat's code and message
        (43116, Some(1), "failed", 1, 43116), // template banned
        (-1, Some(1), "delivered", 2, 0),     // transient: one retry
        (45011, Some(2), "delivered", 1, 0),  // minute quota: deferred, not counted
        (43117, Some(1), "delivered", 1, 0),  // per-user frequency: cool-down, not counted
        (42001, Some(1), "delivered", 1, 0),  // token: healed at once, not an extra attempt
        (-1, None, "dead", 3, -1),            // transient forever: dead after 3 attempts
    ];
    for (i, (code, times, state, counted, errcode)) in rows.into_iter().enumerate() {
        stack.sim.clear_faults();
        stack
            .sim
            .add_fault(FaultSpec::error(TEMPLATE_SEND, code, times))
            .unwrap();
        let to = user(10 + i);
        let j = send(&mut c, enqueue(AUTH1, "", template(&to))).await;
        let j = wait_job(&mut c, &j.id, is(state)).await;
        assert_eq!(
            (j.attempts_made, j.errcode),
            (counted, errcode),
            "row {code}: {j:?}"
        );
        if state == "failed" {
            assert!(!j.reason.is_empty());
        }
        if state == "dead" {
            assert!(
                j.reason.contains("gave up after 3 attempts"),
                "{}",
                j.reason
            );
            let dead = c
                .list_dead(req(
                    pb::ListDeadRequest {
                        tenant: TENANT.into(),
                        limit: 10,
                    },
                    OPS_KEY,
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(dead.jobs.iter().any(|d| d.id == j.id));
            // The dead letter carries the reason.
            let letters = dead_letters(&stack, Duration::from_secs(5)).await;
            assert!(!letters.is_empty());
            // An operator replays it once WeChat is well again.
            stack.sim.clear_faults();
            let replayed = c
                .replay_dead(req(
                    pb::ReplayDeadRequest {
                        job_id: j.id.clone(),
                    },
                    OPS_KEY,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(replayed.state_name, "queued");
            wait_job(&mut c, &j.id, is("delivered")).await;
        }
    }
    // Permanent answers of WeChat's own rules (no fault): unknown openid, subscribe without a
    // credit (43101 after the user's 5).
    stack.sim.clear_faults();
    let j = send(&mut c, enqueue(AUTH1, "", text("o_not_a_follower", "x"))).await;
    let j = wait_job(&mut c, &j.id, is("failed")).await;
    assert_eq!(j.errcode, 40003);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            send(
                &mut c,
                enqueue(AUTH_MP, "", Message::Subscribe(subscribe(&user(30)))),
            )
            .await
            .id,
        );
    }
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let j = wait_job(&mut c, id, |j| {
            matches!(j.state_name.as_str(), "delivered" | "failed")
        })
        .await;
        if j.state_name == "failed" {
            assert_eq!(j.errcode, 43101);
        }
        *by_state.entry(j.state_name).or_default() += 1;
    }
    assert_eq!(by_state.get("failed"), Some(&1), "{by_state:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_healed_once_under_50_concurrent_jobs() {
    let stack = stack(
        "msg-heal",
        &[
            (
                "WXHUB_WORKER__LIMITS__TEMPLATE",
                "{ count = 1000, period_ms = 1000, burst = 1000 }",
            ),
            ("WXHUB_WORKER__SEND_CONCURRENCY", "64"),
        ],
    )
    .await;
    let mut c = client(stack.worker).await;
    // Warm the token cache.
    let j = send(&mut c, enqueue(AUTH1, "", template(&user(0)))).await;
    wait_job(&mut c, &j.id, is("delivered")).await;
    let refreshes = stack.calls(AUTHORIZER_TOKEN, Some(AUTH1));
    // WeChat invalidates the token behind everyone's back.
    assert!(stack.sim.invalidate_tokens(AUTH1) > 0);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            send(&mut c, enqueue(AUTH1, "", template(&user(i))).clone())
                .await
                .id,
        );
    }
    for id in &ids {
        let j = wait_job(&mut c, id, |j| {
            matches!(j.state_name.as_str(), "sent" | "delivered")
        })
        .await;
        assert_eq!(j.attempts_made, 1, "the heal is not an attempt: {j:?}");
    }
    let rejected = stack
        .sim
        .calls(&CallFilter {
            path: Some(TEMPLATE_SEND.into()),
            appid: None,
            errcode: Some(40001),
        })
        .len();
    assert!(rejected >= 1);
    assert_eq!(
        stack.calls(AUTHORIZER_TOKEN, Some(AUTH1)) - refreshes,
        1,
        "one refresh for {rejected} rejections"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_parks_the_api_and_unknown_outcomes_are_never_resent_blindly() {
    let stack = stack(
        "msg-park",
        &[
            ("WXHUB_WECHAT__TIMEOUT_MS", "1000"),
            ("WXHUB_WORKER__LEASE_MS", "3000"),
        ],
    )
    .await;
    let mut c = client(stack.worker).await;

    // 45009: the (account, template API) pair is parked; jobs wait without being burned.
    stack
        .sim
        .add_fault(FaultSpec::error(TEMPLATE_SEND, 45009, Some(1)))
        .unwrap();
    let first = send(&mut c, enqueue(AUTH1, "", template(&user(0)))).await;
    wait_job(&mut c, &first.id, |j| j.errcode == 45009).await;
    let parked_at = Instant::now();
    let calls = stack.calls(TEMPLATE_SEND, None);
    let more: Vec<String> = futures::future::join_all((1..4).map(|i| {
        let mut c = c.clone();
        async move {
            send(&mut c, enqueue(AUTH1, "", template(&user(i))))
                .await
                .id
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        stack.calls(TEMPLATE_SEND, None),
        calls,
        "nothing is sent while parked"
    );
    for id in more.iter().chain([&first.id]) {
        let j = wait_job(&mut c, id, is("delivered")).await;
        assert_eq!(j.attempts_made, 1, "{j:?}");
    }
    assert!(parked_at.elapsed() >= Duration::from_millis(1000));

    // Unknown outcome: WeChat got the request, the answer came after the worker's timeout.
    for (message, path, to, appid) in [
        (text(&user(10), "maybe"), CUSTOM, user(10), AUTH1),
        (
            Message::Subscribe(subscribe(&user(11))),
            SUBSCRIBE,
            user(11),
            AUTH_MP,
        ),
    ] {
        stack.sim.clear_faults();
        stack
            .sim
            .add_fault(FaultSpec::respond_after(
                path,
                Duration::from_millis(1500),
                Some(1),
            ))
            .unwrap();
        let j = send(&mut c, enqueue(appid, "", message)).await;
        let j = wait_job(&mut c, &j.id, is("unknown")).await;
        assert!(j.reason.contains("may have been delivered"), "{}", j.reason);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            messages(&stack, path, &to),
            1,
            "delivered once, never resent"
        );
        assert_eq!(job(&mut c, &j.id).await.state_name, "unknown");
    }
    // A template is resent with the same client_msg_id: WeChat keeps one.
    stack.sim.clear_faults();
    stack
        .sim
        .add_fault(FaultSpec::respond_after(
            TEMPLATE_SEND,
            Duration::from_millis(1500),
            Some(1),
        ))
        .unwrap();
    let j = send(&mut c, enqueue(AUTH1, "", template(&user(12)))).await;
    let j = wait_job(&mut c, &j.id, is("delivered")).await;
    assert_eq!(j.attempts_made, 2);
    assert_eq!(messages(&stack, TEMPLATE_SEND, &user(12)), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_recorded_sent_or_mid_send_is_not_sent_again() {
    let stack = stack("msg-redeliver", &[("WXHUB_WORKER__LEASE_MS", "6000")]).await;
    let mut c = client(stack.worker).await;
    let jobs = job_store(&stack);
    // No route: the worker reads the job before its claim (as for held jobs).
    let announce = |id: String| announce_by_hand(&stack, send_job(TENANT, &id, None));
    let now = wxhub_runtime::unix_ms();
    // A worker sent it and recorded it, then died before its ack: the broker redelivers.
    let sent_id = wxhub_store::jobs::new_id(TENANT, now);
    recorded_sent(&jobs, &sent_id, "dead-worker", 0, now).await;
    announce(sent_id.clone()).await;
    // A worker died between its send and the record: the lease runs out, the outcome is unknown.
    let mid_id = wxhub_store::jobs::new_id(TENANT, now + 1);
    jobs.create(TENANT, &custom_job(&mid_id)).await.unwrap();
    jobs.claim(TENANT, &mid_id, "", "dead-worker", now, now + 1500)
        .await
        .unwrap();
    announce(mid_id.clone()).await;
    let j = wait_job(&mut c, &mid_id, is("unknown")).await;
    assert!(
        j.reason.contains("stopped before recording"),
        "{}",
        j.reason
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(job(&mut c, &sent_id).await.state_name, "sent");
    assert_eq!(
        messages(&stack, CUSTOM, &user(0)),
        0,
        "nothing was sent again"
    );
    stack.stop().await;
}

/// A store that fails one job's every delivery for longer than the broker's delivery limit
/// (5 deliveries here), while the other jobs of the queue go through (one Redis Cluster shard
/// failing over; their acks keep the bus's requeue pauses at 200 ms), loses nothing: the job
/// waits in the delay queues, not in the dead letters, and is sent once when its store
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_store_fails_past_the_delivery_limit_is_sent_when_it_answers() {
    let stack = stack("msg-store-fails", &[]).await;
    let mut c = client(stack.worker).await;
    let jobs = job_store(&stack);
    let id = wxhub_store::jobs::new_id(TENANT, wxhub_runtime::unix_ms());
    let new = custom_job(&id);
    jobs.create(TENANT, &new).await.unwrap();
    // The account's send bucket holds a list: every claim of the job fails with WRONGTYPE,
    // as a store that refuses or does not answer fails it.
    let bucket = stack
        .store
        .keys(TENANT)
        .limit(&format!("send:{AUTH1}:custom"));
    let mut conn = stack.store.conn();
    let _: () = redis::cmd("RPUSH")
        .arg(&bucket)
        .arg("not a bucket")
        .query_async(&mut conn)
        .await
        .unwrap();
    announce_by_hand(&stack, send_job(TENANT, &id, Some(new_route(&new)))).await;
    // Five requeues would take about a second (200 ms apart while other jobs are acked); the
    // store fails for three, and templates go through meanwhile.
    let mut others = Vec::new();
    for i in 0..30 {
        others.push(
            send(&mut c, enqueue(AUTH1, "", template(&user(i))))
                .await
                .id,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for other in &others {
        // A template's delivery report follows its send.
        wait_job(&mut c, other, |j| {
            matches!(j.state_name.as_str(), "sent" | "delivered")
        })
        .await;
    }
    assert_eq!(job(&mut c, &id).await.state_name, "queued");
    assert_eq!(messages(&stack, CUSTOM, &user(0)), 0);
    let dead = dead_letters(&stack, Duration::from_millis(300)).await;
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    let _: () = redis::cmd("DEL")
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_job(&mut c, &id, is("sent")).await;
    assert_eq!(messages(&stack, CUSTOM, &user(0)), 1);
    stack.stop().await;
}

/// How many delivery reports this process's workers put in a delay queue because their store
/// failed (`wxhub_worker_deferred_total{reason="report_store"}`).
fn report_store_deferrals() -> f64 {
    wxhub_runtime::ops::prometheus()
        .render()
        .lines()
        .filter(|l| l.starts_with("wxhub_worker_deferred_total") && l.contains("report_store"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A delivery report whose job the store cannot look up, for more deliveries than the broker's
/// delivery limit (5 here), is not dead-lettered: it waits in the delay queues and is recorded
/// when the store answers again. Requeued instead (before), the broker dead-lettered it after
/// its sixth handling and the job stayed `sent` for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_report_whose_store_fails_past_the_delivery_limit_is_recorded_when_it_answers() {
    let stack = stack("msg-report-store", &[]).await;
    let mut c = client(stack.worker).await;
    let jobs = job_store(&stack);
    let now = wxhub_runtime::unix_ms();
    // A job sent by a worker, with the msgid WeChat gave it.
    let id = wxhub_store::jobs::new_id(TENANT, now);
    let msgid: i64 = 987_654_321_012;
    recorded_sent(&jobs, &id, "a-worker", msgid, now).await;
    // The msgid's index holds a list: every lookup of the report's job fails with WRONGTYPE,
    // as a store that refuses or does not answer fails it.
    let index = stack.store.keys(TENANT).msgid(AUTH1, msgid);
    let mut conn = stack.store.conn();
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&index)
        .cmd("RPUSH")
        .arg(&index)
        .arg("not a job id")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = report_store_deferrals();
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msgid}</MsgID><Status><![CDATA[success]]></Status></xml>",
        user(0),
        now / 1000
    );
    let report = wxhub_proto::events::v1::CallbackEvent {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        kind: "event.templatesendjobfinish".into(),
        xml,
        dedupe_key: format!("report-{msgid}"),
        ..Default::default()
    }
    .encode_to_vec();
    let queue = stack.ns.topology().send_status_queue();
    stack
        .bus
        .publish(&Outgoing {
            exchange: "",
            routing_key: &queue,
            body: &report,
            message_id: &format!("report-{msgid}"),
            message_type: "wxhub.events.v1.CallbackEvent",
            headers: &[],
        })
        .await
        .unwrap();
    // Seven failed handlings, two more than the delivery limit (the delay queues: 300 ms,
    // 600 ms, then 1 s each). Requeued, the report was handled six times and dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while report_store_deferrals() - before < 7.0 {
        assert!(
            Instant::now() < deadline,
            "the report was put off {} times in 20 s",
            report_store_deferrals() - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = dead_letters(&stack, Duration::from_millis(300)).await;
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    assert_eq!(job(&mut c, &id).await.state_name, "sent");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&index)
        .cmd("SET")
        .arg(&index)
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let j = wait_job(&mut c, &id, is("delivered")).await;
    assert_eq!(j.delivery_status, "success");
    stack.stop().await;
}

/// Concurrent announcements are group-committed: they share messages, and each job is in
/// exactly one message (a SendJob alone, or a SendBatch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_announcements_share_messages_and_each_job_is_in_exactly_one() {
    let ns = wxhub_testkit::Namespace::new("msg-announce");
    let cancel = tokio_util::sync::CancellationToken::new();
    let bus = ns.bus(&cancel).await;
    let announcer = Announcer::start(bus.clone(), 64);
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:04}")).collect();
    let results = futures::future::join_all(
        ids.iter()
            .map(|id| announcer.announce(send_job(TENANT, id, None))),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let messages = ns
        .drain_queue(&bus, &ns.topology().send_queue(), Duration::from_secs(5))
        .await;
    let mut seen = Vec::new();
    for m in &messages {
        let kind = m.properties.kind().as_ref().map(ToString::to_string);
        match kind.as_deref() {
            Some(SEND_BATCH_TYPE) => {
                let batch = SendBatch::decode(m.data.as_slice()).unwrap();
                assert!(batch.jobs.len() > 1 && batch.jobs.len() <= 64);
                seen.extend(batch.jobs.into_iter().map(|j| j.job_id));
            }
            Some(SEND_JOB_TYPE) => seen.push(SendJob::decode(m.data.as_slice()).unwrap().job_id),
            other => panic!("unexpected message type {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ids, "every job announced exactly once");
    assert!(
        messages.len() <= n / 4,
        "{n} concurrent announcements took {} messages",
        messages.len()
    );
    drop(announcer);
    ns.cleanup(Some(&bus), &[]).await;
    cancel.cancel();
}

/// A batch's jobs are each sent on their own; one that cannot be sent is dead-lettered alone,
/// and the others are not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_jobs_are_sent_alone_and_only_the_bad_one_is_dead_lettered() {
    let stack = stack("msg-batch", &[]).await;
    let mut c = client(stack.worker).await;
    let jobs = job_store(&stack);
    let now = wxhub_runtime::unix_ms();
    let new = |i: usize, api: &str| {
        let to = user(i);
        let body = serde_json::json!({"touser": to, "msgtype": "text", "text": {"content": "b"}});
        NewJob {
            id: wxhub_store::jobs::new_id(TENANT, now + i as i64),
            appid: AUTH1.into(),
            kind: "custom".into(),
            api: api.into(),
            touser: to,
            body: body.to_string(),
            idempotency_key: None,
            campaign: None,
            now_ms: now,
        }
    };
    let (good, unrouted, bad) = (
        new(0, CUSTOM),
        new(1, CUSTOM),
        new(2, "/cgi-bin/no/such/send"),
    );
    for j in [&good, &unrouted, &bad] {
        jobs.create(TENANT, j).await.unwrap();
    }
    let batch = [
        send_job(TENANT, &good.id, Some(new_route(&good))),
        // No route: the worker reads this one before its claim.
        send_job(TENANT, &unrouted.id, None),
        send_job(TENANT, &bad.id, Some(new_route(&bad))),
    ];
    wxhub_worker::announce::publish(&stack.bus, SEND_KEY, &batch)
        .await
        .unwrap();
    wait_job(&mut c, &good.id, is("sent")).await;
    wait_job(&mut c, &unrouted.id, is("sent")).await;
    let letters = dead_letters(&stack, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1, "only the bad job is dead-lettered");
    let letter = &letters[0];
    assert_eq!(
        letter
            .properties
            .kind()
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some(SEND_JOB_TYPE)
    );
    assert_eq!(
        SendJob::decode(letter.data.as_slice()).unwrap().job_id,
        bad.id
    );
    let reason = letter
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-wxhub-reason").cloned());
    assert!(
        matches!(&reason, Some(lapin::types::AMQPValue::LongString(r)) if r.to_string().contains("names no send API")),
        "{reason:?}"
    );
    for i in 0..2 {
        assert_eq!(messages(&stack, CUSTOM, &user(i)), 1, "sent once");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_replicas_share_one_rate_limit() {
    let limit = [(
        "WXHUB_WORKER__LIMITS__CUSTOM",
        "{ count = 5, period_ms = 1000, burst = 5 }",
    )];
    let stack = stack("msg-limit", &limit).await;
    let mut extra: Vec<(&str, &str)> = FAST.to_vec();
    extra.extend(limit);
    let (second, _stop) = stack.start_worker(&extra).unwrap();
    let mut c = client(stack.worker).await;
    client(second).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            send(&mut c, enqueue(AUTH1, "", text(&user(i), "hi")))
                .await
                .id,
        );
    }
    for id in &ids {
        wait_job(&mut c, id, is("sent")).await;
    }
    // 5 at once, then 5 a second: 20 take at least 3 s whichever replica sends.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_send_and_records_it() {
    let stack = stack("msg-drain", &[]).await;
    let mut c = client(stack.worker).await;
    stack
        .sim
        .add_fault(FaultSpec::latency(
            CUSTOM,
            Duration::from_millis(1200),
            Some(1),
        ))
        .unwrap();
    let j = send(&mut c, enqueue(AUTH1, "", text(&user(0), "slow"))).await;
    wait_job(&mut c, &j.id, is("sending")).await;
    stack.worker_stop.cancel();
    let store_jobs = Jobs::new(
        stack.store.clone(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let j = store_jobs.get(TENANT, &j.id).await.unwrap().unwrap();
        if j.state == JobState::Sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the in-flight send was not recorded: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(messages(&stack, CUSTOM, &user(0)), 1);
    // Nothing left behind in the queue.
    let left = stack
        .ns
        .drain_queue(
            &stack.bus,
            &stack.ns.topology().send_queue(),
            Duration::from_millis(500),
        )
        .await;
    assert!(left.is_empty(), "{left:?}");
    stack.stop().await;
}

/// Runs the `wxhub` CLI in-process (its own runtime, off this one) with `args`, the config
/// file pointing at the stack's worker; returns (exit code, stdout JSON or stderr).
async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut argv: Vec<String> = vec!["wxhub".into()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv.extend(["--config".into(), config.display().to_string()]);
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = wxhub_cli::main_with(argv, &mut std::io::empty(), &mut out, &mut err);
        let ok = code == std::process::ExitCode::SUCCESS;
        let text = if ok { out } else { err };
        (ok, String::from_utf8_lossy(&text).into_owned())
    })
    .await
    .unwrap()
}

/// A CLI configuration in `dir` for the worker at `worker` with the ops key.
fn cli_config(dir: &std::path::Path, worker: std::net::SocketAddr) -> std::path::PathBuf {
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[messaging]\nendpoint = \"http://{worker}\"\n\n[client]\napi_key = \"{OPS_KEY}\"\n"
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_waits_lists_and_replays() {
    let stack = stack("msg-cli", &[]).await;
    client(stack.worker).await;
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), stack.worker);
    let to = user(0);
    let (ok, out) = cli(
        &config,
        &[
            "send",
            "custom",
            TENANT,
            AUTH1,
            "--to",
            &to,
            "--text",
            "hi",
            "--idempotency-key",
            "k1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = sent["job_id"].as_str().unwrap().to_owned();
    // The job as stored when the publish was confirmed (the worker may already have it).
    assert!(
        matches!(sent["state"].as_str(), Some("queued" | "sending" | "sent")),
        "{sent}"
    );
    let (ok, out) = cli(&config, &["job", &id, "--wait", "20"]).await;
    assert!(ok, "{out}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "sent");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);

    let tpl = dir.path().join("t.json");
    std::fs::write(
        &tpl,
        serde_json::json!({"touser": user(1), "template_id": TEMPLATE, "data": {"keyword1": {"value": "x"}}}).to_string(),
    )
    .unwrap();
    let (ok, out) = cli(
        &config,
        &[
            "send",
            "template",
            TENANT,
            AUTH1,
            "--json",
            tpl.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let id: String = serde_json::from_str::<serde_json::Value>(&out).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .into();
    let (_, out) = cli(&config, &["job", &id, "--wait", "20"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["state"],
        "delivered"
    );

    let (ok, out) = cli(&config, &["jobs", TENANT, "--state", "sent"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (ok, out) = cli(&config, &["dead", "list", TENANT]).await;
    assert!(ok && out.contains("\"jobs\": []"), "{out}");

    // A batch: each message's job or error, in order.
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        serde_json::json!([
            {"type": "custom", "appid": AUTH1, "touser": user(2), "msgtype": "text", "text": {"content": "batched"}},
            {"type": "template", "appid": AUTH1, "touser": "bad openid", "template_id": TEMPLATE, "data": {"keyword1": {"value": "x"}}},
        ])
        .to_string(),
    )
    .unwrap();
    let (ok, out) = cli(
        &config,
        &["send", "batch", TENANT, "--json", batch.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{out}");
    let results = serde_json::from_str::<serde_json::Value>(&out).unwrap()["results"].clone();
    let batched = results[0]["job_id"].as_str().expect("the first is queued");
    assert!(
        results[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("InvalidArgument") && e.contains("messages[1]")),
        "{results}"
    );
    let (_, out) = cli(&config, &["job", batched, "--wait", "20"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["state"],
        "sent"
    );
    std::fs::write(&batch, r#"[{"type": "fax"}]"#).unwrap();
    let (ok, err) = cli(
        &config,
        &["send", "batch", TENANT, "--json", batch.to_str().unwrap()],
    )
    .await;
    assert!(
        !ok && err.lines().count() == 1 && err.contains("[0].type"),
        "{err}"
    );

    // Failures: one line on stderr, non-zero exit.
    let (ok, err) = cli(
        &config,
        &[
            "send",
            "custom",
            TENANT,
            AUTH1,
            "--to",
            "bad openid",
            "--text",
            "x",
        ],
    )
    .await;
    assert!(!ok);
    assert_eq!(err.lines().count(), 1);
    assert!(
        err.contains("InvalidArgument") && err.contains("custom.touser"),
        "{err}"
    );
    let (ok, err) = cli(&config, &["dead", "replay", &id]).await;
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    stack.stop().await;
}

fn campaign(recipients: Vec<pb::Recipient>) -> pb::CreateCampaignRequest {
    let Message::Template(t) = template("") else {
        unreachable!()
    };
    pb::CreateCampaignRequest {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        message: Some(pb::create_campaign_request::Message::Template(t)),
        recipients,
    }
}

fn recipients(range: std::ops::Range<usize>) -> Vec<pb::Recipient> {
    range
        .map(|i| pb::Recipient {
            touser: user(i),
            data: Default::default(),
        })
        .collect()
}

async fn get_campaign(c: &mut MessagingClient<Channel>, id: &str) -> pb::Campaign {
    c.get_campaign(req(
        pb::CampaignRequest {
            campaign_id: id.into(),
        },
        OPS_KEY,
    ))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_is_fed_at_the_accounts_rate_paused_resumed_and_cancelled() {
    let stack = stack(
        "msg-campaign",
        &[
            (
                "WXHUB_WORKER__LIMITS__TEMPLATE",
                "{ count = 10, period_ms = 1000, burst = 5 }",
            ),
            (
                "WXHUB_WORKER__LIMITS__TEMPLATE_PER_OPENID",
                "{ count = 100, period_ms = 1000, burst = 100 }",
            ),
            ("WXHUB_WORKER__CAMPAIGN_MAX_RECIPIENTS", "40"),
        ],
    )
    .await;
    let mut c = client(stack.worker).await;
    // Over the recipient limit, and a bad override: refused, naming the field.
    let status = c
        .create_campaign(req(campaign(recipients(0..41)), OPS_KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("recipients: at most 40"),
        "{}",
        status.message()
    );
    let mut bad = recipients(0..5);
    bad[3].data.insert("keyword1".into(), "x".repeat(201));
    let status = c
        .create_campaign(req(campaign(bad), OPS_KEY))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("recipients[3]"),
        "{}",
        status.message()
    );

    let mut list = recipients(0..30);
    list[0].data.insert("keyword1".into(), "special".into());
    let started = Instant::now();
    let created = c
        .create_campaign(req(campaign(list), OPS_KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.total, created.state.as_str()), (30, "running"));
    let id = created.id.clone();
    // Fed a slice at a time, never more than 2 × burst in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_in_flight = 0;
    loop {
        let now = get_campaign(&mut c, &id).await;
        seen_in_flight = seen_in_flight.max(now.queued);
        if now.fed >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_in_flight <= 10, "{seen_in_flight} in flight");
    let paused = c
        .pause_campaign(req(
            pb::CampaignRequest {
                campaign_id: id.clone(),
            },
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state, "paused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fed = get_campaign(&mut c, &id).await.fed;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let still = get_campaign(&mut c, &id).await;
    assert_eq!(still.fed, fed, "nothing fed while paused");
    assert!(still.remaining > 0);
    c.resume_campaign(req(
        pb::CampaignRequest {
            campaign_id: id.clone(),
        },
        OPS_KEY,
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let now = get_campaign(&mut c, &id).await;
        if now.state == "done" {
            break now;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (done.sent, done.failed, done.remaining, done.queued),
        (30, 0, 0, 0),
        "{done:?}"
    );
    // 30 at 10/s (burst 5) take well over 2 s.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let special = stack.sim.messages(&MessageFilter {
        touser: Some(user(0)),
        path: Some(TEMPLATE_SEND.into()),
        ..MessageFilter::default()
    });
    assert_eq!(special.len(), 1);
    assert_eq!(special[0].body["data"]["keyword1"]["value"], "special");

    // Cancelled: what was not fed never is.
    let other = c
        .create_campaign(req(campaign(recipients(30..60)), OPS_KEY))
        .await
        .unwrap()
        .into_inner();
    let cancelled = c
        .cancel_campaign(req(
            pb::CampaignRequest {
                campaign_id: other.id.clone(),
            },
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, "cancelled");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = get_campaign(&mut c, &other.id).await;
    assert_eq!(after.fed, cancelled.fed);
    assert_eq!(after.remaining, 30 - after.fed);
    let status = c
        .resume_campaign(req(
            pb::CampaignRequest {
                campaign_id: other.id.clone(),
            },
            OPS_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Cancelled while its fed jobs wait (WeChat answers 45011, so they are deferred): they are
    // withdrawn, never sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_campaign(&mut c, &other.id).await.queued > 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled campaign's jobs never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_before = stack
        .sim
        .messages(&MessageFilter {
            path: Some(TEMPLATE_SEND.into()),
            ..MessageFilter::default()
        })
        .len();
    let fault = stack
        .sim
        .add_fault(FaultSpec::error(TEMPLATE_SEND, 45011, None))
        .unwrap();
    let third = c
        .create_campaign(req(campaign(recipients(30..40)), OPS_KEY))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_campaign(&mut c, &third.id).await.fed < 5 {
        assert!(Instant::now() < deadline, "not fed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = c
        .cancel_campaign(req(
            pb::CampaignRequest {
                campaign_id: third.id.clone(),
            },
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    // WeChat still answers 45011 until every job is withdrawn: a job claimed just before the
    // cancel is being sent, and a send that WeChat accepts cannot be withdrawn (removing the
    // fault at once, the cluster run once saw that one job sent).
    let deadline = Instant::now() + Duration::from_secs(20);
    let withdrawn = loop {
        let now = get_campaign(&mut c, &third.id).await;
        if now.queued == 0 {
            break now;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stack.sim.remove_fault(fault);
    assert_eq!(
        (withdrawn.fed, withdrawn.cancelled, withdrawn.sent),
        (cancelled.fed, cancelled.fed, 0),
        "{withdrawn:?}"
    );
    let sent_after = stack
        .sim
        .messages(&MessageFilter {
            path: Some(TEMPLATE_SEND.into()),
            ..MessageFilter::default()
        })
        .len();
    assert_eq!(sent_after, sent_before, "a withdrawn job was sent");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_campaign() {
    let stack = stack("msg-cli-campaign", &[]).await;
    client(stack.worker).await;
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), stack.worker);
    let tpl = dir.path().join("t.json");
    std::fs::write(
        &tpl,
        serde_json::json!({"template_id": TEMPLATE, "data": {"keyword1": {"value": "x"}}})
            .to_string(),
    )
    .unwrap();
    let list = dir.path().join("r.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n{{\"touser\": \"{}\", \"data\": {{\"keyword1\": \"vip\"}}}}\n{}\n",
            user(0),
            user(1),
            user(2)
        ),
    )
    .unwrap();
    let (ok, out) = cli(
        &config,
        &[
            "campaign",
            "create",
            TENANT,
            AUTH1,
            "--json",
            tpl.to_str().unwrap(),
            "--recipients",
            list.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["total"], 3);
    let id = created["campaign_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = cli(&config, &["campaign", "get", &id]).await;
        assert!(ok, "{out}");
        let c: serde_json::Value = serde_json::from_str(&out).unwrap();
        if c["state"] == "done" {
            assert_eq!(c["sent"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, err) = cli(&config, &["campaign", "pause", &id]).await;
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    stack.stop().await;
}

/// Fairness, measured: a tenant with a backlog of rate-limited jobs far larger than its window
/// (`worker.tenant_window`) delays another tenant's first job by the handling of at most one
/// window of its jobs, not of its backlog: the rest are held in Redis and fed as the window
/// frees. With one FIFO for every tenant the first job waited for the whole backlog to be
/// deferred once (1.1 s behind 400 jobs, so about a minute behind 20,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenants_backlog_delays_a_quiet_tenants_first_job_by_one_window_only() {
    const BACKLOG: usize = 20_000;
    const WINDOW: u64 = 50;
    let stack = stack(
        "msg-fair",
        &[
            (
                "WXHUB_WORKER__LIMITS__CUSTOM",
                "{ count = 5, period_ms = 1000, burst = 5 }",
            ),
            ("WXHUB_WORKER__TENANT_WINDOW", "50"),
        ],
    )
    .await;
    let mut c = client(stack.worker).await;
    let started = Instant::now();
    futures::stream::iter(0..BACKLOG)
        .map(|i| {
            let mut c = c.clone();
            async move {
                send(
                    &mut c,
                    enqueue(AUTH1, "", text(&user(i % 60), &format!("bulk {i}"))),
                )
                .await
                .state_name
            }
        })
        .buffer_unordered(64)
        .for_each(|state| async move { assert_eq!(state, "queued") })
        .await;
    let enqueued = started.elapsed();
    let window = Jobs::new(
        stack.store.clone(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let (held, in_broker, _) = window.window_counts(TENANT).await.unwrap();
    assert!(in_broker <= WINDOW, "{in_broker} in the broker");
    // Most of the backlog is held (what the window let through is sent at 5/s meanwhile).
    assert!(held > BACKLOG as u64 / 2, "{held} held");

    let started = Instant::now();
    let quiet = pb::EnqueueRequest {
        tenant: BETA.into(),
        ..enqueue(wxhub_tests::BETA_AUTH, "", text(&user(0), "first"))
    };
    let j = send(&mut c, quiet).await;
    wait_job(&mut c, &j.id, is("sent")).await;
    let waited = started.elapsed();
    println!(
        "fairness: {BACKLOG} rate-limited jobs of another tenant enqueued in {enqueued:?} \
         ({held} held, {in_broker} in the broker); the first job was sent after {waited:?}"
    );
    // The bound: one window (50) of deferrals ahead, ~0.15 s measured.
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // The held jobs are fed as the window frees (5 sends a second).
    stack
        .wait_for(|| {
            let window = window.clone();
            async move { window.window_counts(TENANT).await.unwrap().0 + 5 <= held }
        })
        .await;
    let (_, in_broker, _) = window.window_counts(TENANT).await.unwrap();
    assert!(in_broker <= WINDOW, "{in_broker} in the broker");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_held_cap_is_refused_and_nothing_is_stored() {
    // Window 1 and one custom send a minute: the first job is sent, the second waits in the
    // window (deferred), the next two are held, and the fifth is over the cap of 2.
    let stack = stack(
        "msg-held-cap",
        &[
            (
                "WXHUB_WORKER__LIMITS__CUSTOM",
                "{ count = 1, period_ms = 60000, burst = 1 }",
            ),
            ("WXHUB_WORKER__TENANT_WINDOW", "1"),
            ("WXHUB_WORKER__TENANT_HELD_MAX", "2"),
        ],
    )
    .await;
    let mut c = client(stack.worker).await;
    let first = send(&mut c, enqueue(AUTH1, "", text(&user(1), "one"))).await;
    wait_job(&mut c, &first.id, is("sent")).await;
    for i in 2..=4 {
        let j = send(&mut c, enqueue(AUTH1, "", text(&user(i), "queued"))).await;
        assert_eq!(j.state_name, "queued");
    }
    let window = Jobs::new(
        stack.store.clone(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    assert_eq!(window.window_counts(TENANT).await.unwrap().0, 2, "held");
    let refused = c
        .enqueue(req(
            enqueue(AUTH1, "over-cap", text(&user(5), "over")),
            OPS_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("tenant_held_max"),
        "{}",
        refused.message()
    );
    // Nothing was stored (the store test checks that its idempotency key stays free too).
    assert_eq!(window.window_counts(TENANT).await.unwrap().0, 2, "held");
    let listed = jobs_of(&mut c, TENANT).await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    // Another tenant is not affected.
    let other = pb::EnqueueRequest {
        tenant: BETA.into(),
        ..enqueue(wxhub_tests::BETA_AUTH, "", text(&user(0), "beta"))
    };
    let j = send(&mut c, other).await;
    wait_job(&mut c, &j.id, is("sent")).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_but_never_announced_is_announced_by_the_retry_with_its_key() {
    let stack = stack("msg-orphan", &[]).await;
    let mut c = client(stack.worker).await;
    let jobs = job_store(&stack);
    // What a worker that died between storing the job and publishing its announcement left
    // behind: the job queued under its idempotency key, nothing in the broker, and a caller
    // that got no answer.
    let now = wxhub_runtime::unix_ms();
    let id = wxhub_store::jobs::new_id(TENANT, now);
    let to = user(21);
    let body = serde_json::json!({"touser": to, "msgtype": "text", "text": {"content": "orphan"}});
    let created = jobs
        .create(
            TENANT,
            &NewJob {
                id: id.clone(),
                appid: AUTH1.into(),
                kind: "custom".into(),
                api: CUSTOM.into(),
                touser: to.clone(),
                body: body.to_string(),
                idempotency_key: Some("order-77".into()),
                campaign: None,
                now_ms: now,
            },
        )
        .await
        .unwrap();
    assert!(matches!(created, wxhub_store::Created::New), "{created:?}");
    // The caller retries with the same key: the same job, announced now, sent once.
    let again = send(&mut c, enqueue(AUTH1, "order-77", text(&to, "orphan"))).await;
    assert_eq!(again.id, id);
    wait_job(&mut c, &id, is("sent")).await;
    // A second retry of a job already sent announces nothing and sends nothing.
    let third = send(&mut c, enqueue(AUTH1, "order-77", text(&to, "orphan"))).await;
    assert_eq!(third.id, id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages(&stack, CUSTOM, &to), 1);
    stack.stop().await;
}

/// Tenants the worker's feeder visited so far (`wxhub_worker_feeder_visits_total`).
fn feeder_visits() -> f64 {
    wxhub_runtime::ops::prometheus()
        .render()
        .lines()
        .filter(|l| l.starts_with(wxhub_worker::feeder::VISITS))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The feeder visits only the tenants with held jobs or campaigns, once its first pass over
/// every tenant is done: an idle tenant costs it nothing per tick, and a tenant whose held jobs
/// were all fed drops out. Before, it read every tenant's counts every tick on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feeder_visits_only_the_tenants_with_held_jobs_or_campaigns() {
    // Window 1 and one custom send a second: the first job is sent, the second waits in the
    // window for the limiter, the third is held.
    let stack = stack(
        "msg-feeder-busy",
        &[
            (
                "WXHUB_WORKER__LIMITS__CUSTOM",
                "{ count = 1, period_ms = 1000, burst = 1 }",
            ),
            ("WXHUB_WORKER__TENANT_WINDOW", "1"),
            ("WXHUB_WORKER__CAMPAIGN_TICK_MS", "50"),
        ],
    )
    .await;
    let busy = wxhub_store::BusyTenants::new(stack.store.clone());
    let mut c = client(stack.worker).await;
    // The first pass visits every tenant; idle, the next ten ticks visit none.
    stack.wait_for(|| async { feeder_visits() > 0.0 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle = feeder_visits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(feeder_visits(), idle, "idle tenants were visited");
    assert!(busy.list().await.unwrap().is_empty());

    let first = send(&mut c, enqueue(AUTH1, "", text(&user(1), "one"))).await;
    wait_job(&mut c, &first.id, is("sent")).await;
    let mut later = Vec::new();
    for i in 2..=3 {
        later.push(send(&mut c, enqueue(AUTH1, "", text(&user(i), "later"))).await);
    }
    assert_eq!(
        busy.list().await.unwrap(),
        vec![TENANT.to_owned()],
        "the held job marked its tenant"
    );
    for j in &later {
        wait_job(&mut c, &j.id, is("sent")).await;
    }
    // Fed, the tenant drops out, and the feeder goes back to visiting nobody.
    stack
        .wait_for(|| {
            let busy = busy.clone();
            async move { busy.list().await.unwrap().is_empty() }
        })
        .await;
    let visited = feeder_visits();
    assert!(visited > idle, "the marked tenant was visited");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        feeder_visits(),
        visited,
        "a drained tenant was visited again"
    );
    stack.stop().await;
}
