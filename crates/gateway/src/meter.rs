//! The gateway's Prometheus metrics. Label values are routes, outcomes, reasons and tenant ids —
//! never secrets, never attacker-chosen strings (an unknown tenant is a reason, not a label).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `wxhub_gateway_requests_total` | counter | `route`, `method`, `outcome` |
//! | `wxhub_gateway_rejects_total` | counter | `route`, `reason` (4xx) |
//! | `wxhub_gateway_unavailable_total` | counter | `route`, `reason` (503) |
//! | `wxhub_gateway_handle_seconds` | histogram | `route` (arrival → answer) |
//! | `wxhub_gateway_budget_seconds` | gauge | (the configured deadline) |
//! | `wxhub_gateway_over_budget_total` | counter | `route` (answers later than 5 s) |
//! | `wxhub_gateway_publish_seconds` | histogram | `what` (`event`/`job`: publish → confirm) |
//! | `wxhub_gateway_published_total` | counter | `tenant`, `what` |
//! | `wxhub_gateway_dedupe_total` | counter | `outcome` |
//! | `wxhub_gateway_release_check_total` | counter | `step` |
//! | `wxhub_gateway_inflight_requests` | gauge | |

use std::time::Duration;

/// WeChat's own budget: it drops the connection after 5 s.
pub(crate) const WECHAT_BUDGET: Duration = Duration::from_secs(5);

pub(crate) fn request(route: &'static str, method: &'static str, outcome: &'static str) {
    metrics::counter!("wxhub_gateway_requests_total", "route" => route, "method" => method, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn reject(route: &'static str, reason: &'static str) {
    metrics::counter!("wxhub_gateway_rejects_total", "route" => route, "reason" => reason)
        .increment(1);
}

pub(crate) fn unavailable(route: &'static str, reason: &'static str) {
    metrics::counter!("wxhub_gateway_unavailable_total", "route" => route, "reason" => reason)
        .increment(1);
}

pub(crate) fn handled(route: &'static str, elapsed: Duration) {
    metrics::histogram!("wxhub_gateway_handle_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    if elapsed > WECHAT_BUDGET {
        metrics::counter!("wxhub_gateway_over_budget_total", "route" => route).increment(1);
    }
}

pub(crate) fn budget(deadline: Duration) {
    metrics::gauge!("wxhub_gateway_budget_seconds").set(deadline.as_secs_f64());
}

pub(crate) fn publish_latency(what: &'static str, elapsed: Duration) {
    metrics::histogram!("wxhub_gateway_publish_seconds", "what" => what)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn published(tenant: &str, what: &'static str) {
    metrics::counter!("wxhub_gateway_published_total", "tenant" => tenant.to_owned(), "what" => what)
        .increment(1);
}

pub(crate) fn dedupe(outcome: &'static str) {
    metrics::counter!("wxhub_gateway_dedupe_total", "outcome" => outcome).increment(1);
}

pub(crate) fn release_check(step: &'static str) {
    metrics::counter!("wxhub_gateway_release_check_total", "step" => step).increment(1);
}

pub(crate) fn inflight(delta: f64) {
    metrics::gauge!("wxhub_gateway_inflight_requests").increment(delta);
}
