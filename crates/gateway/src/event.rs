//! What goes on the bus: the `CallbackEvent` body, its routing key and its trace context.

use std::collections::HashMap;

use axum::http::HeaderMap;
use prost::Message as _;
use wxhub_bus::Topology;
use wxhub_message::{ComponentNotice, Message};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_proto::jobs::v1::ReleaseCheckJob;
use wxhub_runtime::Tenant;

/// AMQP `type` of callback events.
pub const CALLBACK_EVENT_TYPE: &str = "wxhub.events.v1.CallbackEvent";
/// AMQP `type` of release-check jobs.
pub const RELEASE_CHECK_JOB_TYPE: &str = "wxhub.jobs.v1.ReleaseCheckJob";

/// How a callback arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `encrypt_type=aes`, only the envelope fields next to `Encrypt`.
    Safe,
    /// `encrypt_type=aes`, plaintext fields next to `Encrypt` (only `Encrypt` is trusted).
    Compatible,
    /// No encryption.
    Plain,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Safe => "safe",
            Mode::Compatible => "compatible",
            Mode::Plain => "plain",
        }
    }
}

/// Common inputs of every event.
pub(crate) struct Meta<'a> {
    pub tenant: &'a Tenant,
    pub appid: &'a str,
    pub dedupe_key: &'a str,
    pub mode: Mode,
    pub received_at_ms: i64,
}

impl Meta<'_> {
    /// The fields every `CallbackEvent` carries; the parsed ones are filled in by the caller.
    fn event(&self, kind: String, xml: String) -> CallbackEvent {
        CallbackEvent {
            tenant: self.tenant.id.as_str().to_owned(),
            tenant_kind: self.tenant.kind.as_str().to_owned(),
            appid: self.appid.to_owned(),
            kind,
            xml,
            dedupe_key: self.dedupe_key.to_owned(),
            received_at_ms: self.received_at_ms,
            encrypt_mode: self.mode.as_str().to_owned(),
            ..CallbackEvent::default()
        }
    }
}

/// An account message or event: body and routing key `{tenant}.{appid}.{kind}`.
pub(crate) fn account_event(meta: &Meta<'_>, message: &Message, xml: String) -> (Vec<u8>, String) {
    let kind = message.routing_kind();
    let header = message.header();
    let routing_key = Topology::event_key(meta.tenant.id.as_str(), meta.appid, &kind);
    let event = CallbackEvent {
        to_user_name: header.to_user_name.clone(),
        from_user_name: header.from_user_name.clone(),
        create_time: header.create_time,
        msg_type: header.msg_type.clone(),
        event: message.event().unwrap_or_default().to_owned(),
        event_key: message.event_key().unwrap_or_default().to_owned(),
        msg_id: message.msg_id().unwrap_or_default(),
        agent_id: header.agent_id.clone().unwrap_or_default(),
        ..meta.event(kind, xml)
    };
    (event.encode_to_vec(), routing_key)
}

/// A component notice: body and routing key `{tenant}.component.{infotype}`.
pub(crate) fn notice_event(
    meta: &Meta<'_>,
    notice: &ComponentNotice,
    xml: String,
) -> (Vec<u8>, String) {
    let kind = notice.routing_kind();
    let routing_key = Topology::component_key(meta.tenant.id.as_str(), &kind);
    let event = CallbackEvent {
        create_time: notice.create_time(),
        info_type: notice.info_type().to_owned(),
        authorizer_appid: notice.authorizer_appid().unwrap_or_default().to_owned(),
        ..meta.event(kind, xml)
    };
    (event.encode_to_vec(), routing_key)
}

/// The release-check job of the `QUERY_AUTH_CODE:` step.
pub(crate) fn release_check_job(meta: &Meta<'_>, auth_code: String, open_id: &str) -> Vec<u8> {
    ReleaseCheckJob {
        tenant: meta.tenant.id.as_str().to_owned(),
        authorizer_appid: meta.appid.to_owned(),
        auth_code,
        open_id: open_id.to_owned(),
        dedupe_key: meta.dedupe_key.to_owned(),
        received_at_ms: meta.received_at_ms,
    }
    .encode_to_vec()
}

/// The `traceparent` (and `tracestate`) headers for the published message: the current span's
/// context when an OpenTelemetry layer is installed; otherwise a child of the request's incoming
/// `traceparent`, or a fresh trace, so consumers can always correlate.
pub(crate) fn trace_headers(
    span: &tracing::Span,
    incoming: &HeaderMap,
    exported: bool,
) -> Vec<(String, String)> {
    let incoming_tp = incoming
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    // Without an exporter there is no OpenTelemetry span to inject: build the header directly
    // (this runs for every callback).
    if !exported {
        return vec![("traceparent".to_owned(), child_traceparent(incoming_tp))];
    }
    if incoming_tp.is_some() {
        let mut map = HashMap::with_capacity(2);
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = incoming.get(name).and_then(|v| v.to_str().ok()) {
                map.insert(name.to_owned(), v.to_owned());
            }
        }
        wxhub_runtime::telemetry::set_parent_from(span, &map);
    }
    let injected = span.in_scope(wxhub_runtime::telemetry::inject_current);
    if injected.contains_key("traceparent") {
        return injected.into_iter().collect();
    }
    vec![("traceparent".to_owned(), child_traceparent(incoming_tp))]
}

/// A `traceparent` for a new span: a child of the incoming trace, else of a fresh one.
fn child_traceparent(incoming: Option<(String, String)>) -> String {
    let (trace_id, flags) = incoming.unwrap_or_else(|| {
        let id: u128 = rand::random::<u128>() | 1;
        (format!("{id:032x}"), "01".to_owned())
    });
    let span_id = rand::random::<u64>() | 1;
    format!("00-{trace_id}-{span_id:016x}-{flags}")
}

/// `(trace_id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00"
        || parts.next().is_some()
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
        || trace.bytes().all(|b| b == b'0')
        || span.bytes().all(|b| b == b'0')
    {
        return None;
    }
    Some((trace.to_owned(), flags.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), "01".into()))
        );
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("00-4bf92f-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn a_child_of_the_incoming_trace_or_a_fresh_one() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let span = tracing::Span::none();
        for exported in [false, true] {
            let out = trace_headers(&span, &headers, exported);
            let tp = &out.iter().find(|(k, _)| k == "traceparent").unwrap().1;
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
        }
        let fresh = trace_headers(&span, &HeaderMap::new(), false);
        assert!(parse_traceparent(&fresh[0].1).is_some(), "{fresh:?}");
    }
}
