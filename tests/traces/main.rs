//! One trace per callback and per job, end to end, read back from an in-memory span exporter:
//! the gateway's `callback` span is the parent of the consumer's `consume` span across
//! RabbitMQ (AMQP `traceparent` header), whose calls to token-control (`rpc`, gRPC metadata) and
//! to WeChat (`wechat`, HTTP header) are its descendants.
//!
//! Its own test binary: the exporter is installed as the process's global subscriber, which no
//! other test of the `it` binary may share.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wxhub_sim::ReleaseCheckConfig;
use wxhub_tests::{COMPONENT, Stack, TENANT};

fn capture_spans() -> (InMemorySpanExporter, SdkTracerProvider) {
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
        .filter(|s| s.name == "consume" && !jobs.iter().any(|j| j.span_context == s.span_context))
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
