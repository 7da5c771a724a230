//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: HTTP requests to
//! WeChat, AMQP message headers, gRPC metadata. Every crate that sends or receives across one of
//! those uses these two functions, so one callback or one job is one trace from the gateway (or
//! the Messaging API) to WeChat.
//!
//! Guarantee: a receiver that calls [`set_parent_from`] with the sender's [`inject_current`]
//! headers makes its span a child of the sender's span, whenever spans are exported (an
//! OpenTelemetry layer is installed). Without one, both are cheap no-ops: nothing is injected
//! and malformed or absent headers are ignored, never an error.
//!
//! The propagator is OpenTelemetry's global one (the telemetry setup installs W3C's).
//! [`exporting`] says whether spans leave the process; hot paths (the gateway's callback) create
//! their spans at `info` only then, so that an unexported trace costs nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that an OpenTelemetry layer is installed (the telemetry setup calls it).
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported from this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The current span's context as headers (`traceparent`, and `tracestate` if any). Empty when
/// there is no exported trace.
pub fn inject_current() -> HashMap<String, String> {
    inject(&tracing::Span::current())
}

/// `span`'s context as headers, like [`inject_current`].
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    if exporting() {
        let context = span.context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut MapCarrier(&mut headers))
        });
    }
    headers
}

/// Makes `span` a child of the trace `headers` describe (AMQP headers, HTTP headers or gRPC
/// metadata copied into a map). Malformed or absent headers leave it a root.
pub fn set_parent_from(span: &tracing::Span, headers: &HashMap<String, String>) {
    if !exporting() || !headers.contains_key("traceparent") {
        return;
    }
    let context = global::get_text_map_propagator(|p| p.extract(&MapExtractor(headers)));
    let _ = span.set_parent(context);
}
