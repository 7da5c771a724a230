//! One trace per callback and per job, end to end, read back from an in-memory span exporter:
//! the gateway's `callback` span is the parent of the consumer's `consume` span across
//! RabbitMQ (AMQP `traceparent` header), whose calls to token-control (`rpc`, gRPC metadata) and
//! to WeChat (`wechat`, HTTP header) are its descendants.
//!
//! Its own test binary: the exporter is installed as the process's global subscriber, which no
//! other test of the `it` binary may share.

#![allow(clippy::print_stdout)] // the figures of a run are its output

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_sim::ReleaseCheckConfig;
use wxhub_tests::{AUTH1, COMPONENT, OPS_KEY, RELAY_KEY, Setup, Stack, TENANT, user};

/// One exporter per process (each test filters the spans of its own traces).
fn capture_spans() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static CAPTURE: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    CAPTURE.get_or_init(install)
}

fn install() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("wxhub-tests"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(layer)
        .init();
    wxhub_domain::trace::set_exporting();
    (exporter, provider)
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The spans of one trace, by id.
struct Trace<'a> {
    by_id: HashMap<SpanId, &'a SpanData>,
}

impl<'a> Trace<'a> {
    fn of(spans: &'a [SpanData], id: TraceId) -> Self {
        Self {
            by_id: spans
                .iter()
                .filter(|s| s.span_context.trace_id() == id)
                .map(|s| (s.span_context.span_id(), s))
                .collect(),
        }
    }

    /// Whether `ancestor` is on `span`'s chain of parents.
    fn descends(&self, span: &SpanData, ancestor: &SpanData) -> bool {
        let mut parent = span.parent_span_id;
        while parent != SpanId::INVALID {
            if parent == ancestor.span_context.span_id() {
                return true;
            }
            match self.by_id.get(&parent) {
                Some(p) => parent = p.parent_span_id,
                None => return false,
            }
        }
        false
    }

    fn named(&self, name: &str) -> impl Iterator<Item = &&'a SpanData> {
        self.by_id.values().filter(move |s| s.name == name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_and_its_job_are_one_trace_from_the_gateway_to_wechat() {
    let (exporter, provider) = capture_spans();
    let stack = Stack::start("traces").await.unwrap();
    let ns = stack.ns.name().to_owned();
    // The release check drives both paths: `authorized` notices (gateway → token-control's
    // consumer → WeChat's api_query_auth) and QUERY_AUTH_CODE messages (gateway → the worker's
    // job → token-control over gRPC → WeChat's custom/send).
    let config = ReleaseCheckConfig::for_gateway(COMPONENT, &stack.gateway_url, TENANT);
    let report = stack.sim.release_check(&config).await.unwrap();
    assert!(report.passed, "first failure: {:?}", report.first_failure());
    stack.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let ours = |s: &&SpanData| attr(s, "queue").is_some_and(|q| q.starts_with(&ns));

    let callbacks: Vec<&SpanData> = spans.iter().filter(|s| s.name == "callback").collect();
    assert!(
        !callbacks.is_empty(),
        "the gateway exported no callback span"
    );

    // Every job the worker consumed hangs under the callback that published it, and its
    // customer-service send and its token-control calls under the job.
    let jobs: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "consume" && attr(s, "routing_key").is_some_and(|k| k.contains("release"))
        })
        .filter(ours)
        .collect();
    assert_eq!(
        jobs.len(),
        10,
        "one job per QUERY_AUTH_CODE step: {:?}",
        names(&spans)
    );
    for job in &jobs {
        let trace = Trace::of(&spans, job.span_context.trace_id());
        let parent = trace
            .by_id
            .get(&job.parent_span_id)
            .unwrap_or_else(|| panic!("the job's parent is not in its trace: {job:?}"));
        assert_eq!(
            parent.name, "callback",
            "the job's parent is the gateway's callback span"
        );
        assert!(job.parent_span_is_remote, "linked across RabbitMQ");
        let sends: Vec<_> = trace
            .named("wechat")
            .filter(|s| attr(s, "api").as_deref() == Some("/cgi-bin/message/custom/send"))
            .filter(|s| trace.descends(s, job))
            .collect();
        assert_eq!(sends.len(), 1, "one custom/send under the job");
        let rpcs: Vec<_> = trace
            .named("rpc")
            .filter(|s| trace.descends(s, job))
            .collect();
        assert!(
            rpcs.iter()
                .any(|s| attr(s, "path").is_some_and(|p| p.ends_with("/ExchangeAuthCode"))),
            "token-control's span of the code exchange is under the job: {:?}",
            rpcs.iter().map(|s| attr(s, "path")).collect::<Vec<_>>()
        );
        assert!(
            rpcs.iter().all(|s| s.parent_span_is_remote),
            "linked across gRPC"
        );
        // token-control's own call to WeChat for that exchange continues the same trace.
        assert!(
            trace.named("wechat").any(|s| attr(s, "api")
                .is_some_and(|a| a.ends_with("api_query_auth"))
                && rpcs.iter().any(|r| trace.descends(s, r))),
            "the exchange's api_query_auth is under token-control's rpc span"
        );
    }

    // Every notice token-control consumed hangs under its callback too.
    let notices: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "consume"
                && attr(s, "queue").is_some_and(|q| q == format!("{ns}.token-control"))
        })
        .collect();
    assert!(
        !notices.is_empty(),
        "token-control consumed no notice: {:?}",
        names(&spans)
    );
    for notice in &notices {
        let trace = Trace::of(&spans, notice.span_context.trace_id());
        let parent = trace.by_id.get(&notice.parent_span_id);
        assert_eq!(
            parent.map(|p| p.name.as_ref()),
            Some("callback"),
            "{:?} is not under a callback span",
            attr(notice, "routing_key")
        );
    }
    println!(
        "{} spans: {} callbacks, {} jobs, {} notices consumed",
        spans.len(),
        callbacks.len(),
        jobs.len(),
        notices.len()
    );
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{}:{:?}",
                s.name,
                attr(s, "routing_key").or_else(|| attr(s, "api"))
            )
        })
        .collect()
}

/// A job through the Messaging API: the caller's trace continues in the worker's `rpc` span
/// (gRPC metadata), the `consume` span of the send (AMQP header) and its `wechat` call.
/// A relay call: the relay's span continues the caller's `traceparent`, its WeChat call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messaging_job_and_a_relay_call_are_one_trace_each() {
    let (exporter, provider) = capture_spans();
    let stack = Stack::start_with(Setup {
        tickets: true,
        ..Setup::new("traces-job")
    })
    .await
    .unwrap();
    let relay = stack.relay(&[]).await.unwrap();

    // The caller's own span, as a business system with OpenTelemetry would have.
    let caller = tracing::info_span!("caller");
    let context = wxhub_domain::trace::inject(&caller);
    let url = format!("http://{}", stack.worker);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match MessagingClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "worker not serving: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut request = wxhub_tests::req(
        pb::EnqueueRequest {
            tenant: TENANT.into(),
            appid: AUTH1.into(),
            idempotency_key: String::new(),
            message: Some(Message::Custom(pb::CustomMessage {
                touser: user(0),
                msgtype: "text".into(),
                body_json: r#"{"content":"traced"}"#.into(),
                kf_account: String::new(),
            })),
        },
        OPS_KEY,
    );
    for (k, v) in &context {
        request.metadata_mut().insert(
            k.parse::<tonic::metadata::MetadataKey<_>>().unwrap(),
            v.parse().unwrap(),
        );
    }
    let job = client.enqueue(request).await.unwrap().into_inner();
    loop {
        let j = client
            .get_job(wxhub_tests::req(
                pb::GetJobRequest {
                    job_id: job.id.clone(),
                },
                OPS_KEY,
            ))
            .await
            .unwrap()
            .into_inner();
        if j.state_name == "sent" {
            break;
        }
        assert!(Instant::now() < deadline, "the job was not sent: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A relay call carrying the caller's context.
    let http = reqwest::Client::new();
    let mut call = http
        .get(format!(
            "{}/v1/{TENANT}/{AUTH1}/cgi-bin/menu/get",
            relay.url
        ))
        .bearer_auth(RELAY_KEY);
    for (k, v) in &context {
        call = call.header(k.as_str(), v.as_str());
    }
    let answered = call.send().await.unwrap();
    assert!(answered.status().is_success(), "{}", answered.status());
    drop(relay);
    stack.stop().await;
    drop(caller);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let root = spans
        .iter()
        .find(|s| s.name == "caller")
        .expect("the caller's span");
    let trace = Trace::of(&spans, root.span_context.trace_id());

    let enqueue = trace
        .named("rpc")
        .find(|s| attr(s, "path").is_some_and(|p| p.ends_with("/Enqueue")))
        .expect("the worker's span of Enqueue is in the caller's trace");
    assert_eq!(enqueue.parent_span_id, root.span_context.span_id());
    let send = trace
        .named("consume")
        .find(|s| trace.descends(s, enqueue))
        .expect("the send's consume span descends from Enqueue (across RabbitMQ)");
    assert!(
        trace.named("wechat").any(|s| attr(s, "api").as_deref()
            == Some("/cgi-bin/message/custom/send")
            && trace.descends(s, send)),
        "custom/send is under the job's consume span: {:?}",
        names(&spans)
    );
    let relayed = trace
        .named("relay.call")
        .next()
        .expect("the relay's span is in the caller's trace");
    assert_eq!(relayed.parent_span_id, root.span_context.span_id());
    println!(
        "messaging and relay: {} spans in the caller's trace",
        trace.by_id.len()
    );
}

/// Jobs announced together (one `SendBatch` message) each continue the trace of the call
/// that announced them: every job's `consume` span and its `wechat` call are in its own
/// caller's trace, not in the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_jobs_each_continue_their_own_trace() {
    let (exporter, provider) = capture_spans();
    let stack = Stack::start_with(Setup {
        tickets: true,
        ..Setup::new("traces-batch")
    })
    .await
    .unwrap();
    let jobs = wxhub_store::Jobs::new(
        stack.store.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let now = wxhub_runtime::unix_ms();
    let callers = [
        tracing::info_span!("caller-a"),
        tracing::info_span!("caller-b"),
    ];
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for (i, caller) in callers.iter().enumerate() {
        let to = user(i);
        let job = wxhub_store::NewJob {
            id: wxhub_store::jobs::new_id(TENANT, now + i as i64),
            appid: AUTH1.into(),
            kind: "custom".into(),
            api: "/cgi-bin/message/custom/send".into(),
            touser: to.clone(),
            body: serde_json::json!({"touser": to, "msgtype": "text", "text": {"content": "b"}})
                .to_string(),
            idempotency_key: None,
            campaign: None,
            now_ms: now,
        };
        jobs.create(TENANT, &job).await.unwrap();
        // Announced inside its caller's span, as Enqueue does.
        let announced = caller.in_scope(|| {
            wxhub_worker::announce::send_job(
                TENANT,
                &job.id,
                Some(wxhub_worker::announce::new_route(&job)),
            )
        });
        assert!(announced.trace.contains_key("traceparent"));
        batch.push(announced);
        ids.push(job.id);
    }
    wxhub_worker::announce::publish(&stack.bus, wxhub_bus::topology::SEND_KEY, &batch)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        while jobs.get(TENANT, id).await.unwrap().map(|j| j.state)
            != Some(wxhub_store::JobState::Sent)
        {
            assert!(Instant::now() < deadline, "job {id} was not sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stack.stop().await;
    drop(callers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    for (name, id) in [("caller-a", &ids[0]), ("caller-b", &ids[1])] {
        let root = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}'s span"));
        let trace = Trace::of(&spans, root.span_context.trace_id());
        let consumed = trace
            .named("consume")
            .find(|s| attr(s, "message_id").as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "job {id}'s consume span is in {name}'s trace: {:?}",
                    names(&spans)
                )
            });
        assert!(trace.descends(consumed, root));
        let calls = trace
            .named("wechat")
            .filter(|s| {
                attr(s, "api").as_deref() == Some("/cgi-bin/message/custom/send")
                    && trace.descends(s, consumed)
            })
            .count();
        assert_eq!(calls, 1, "{name}'s job's send is in its trace, once");
    }
}
