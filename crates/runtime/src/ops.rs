//! The operational HTTP surface: `/healthz`, `/readyz`, `/metrics`, and the readiness checks
//! of the dependencies every service shares ([`Readiness::redis`], [`Readiness::rabbitmq`]),
//! each with the service's policy for when it is down ([`WhenDown`]).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wxhub_bus::Bus;
use wxhub_store::Store;

/// Histogram buckets (seconds) of the `*_own_seconds` and `*_wait_seconds` metrics.
const FINE: &[f64] = &[
    0.00001, 0.00002, 0.00003, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// The process-wide Prometheus recorder (installed on first use; shared by every service
/// started in the same process, as tests do).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                // A service's own share of a call (`*_own_seconds`) and its waits inside it
                // (`*_wait_seconds`) are tens of microseconds: buckets fine enough to tell 100 µs
                // from 1 ms.
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_own_seconds".into()), FINE)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_wait_seconds".into()), FINE)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by a test harness); then this
            // handle renders an empty registry rather than failing the service.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What one readiness check found. `/readyz` answers 200 unless a check is [`Status::Unready`].
///
/// Readiness means "this process can do its job": an orchestrator takes an unready process out
/// of its Service. A dependency whose loss the service works around (the gateway publishing
/// without dedupe while Redis is down, token-control serving every tenant but one that lacks a
/// ticket) is [`Status::Degraded`] instead — still 200, but visible in the body and in the
/// `wxhub_readiness_degraded{check}` gauge — because taking every replica out for it would stop
/// the part that still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Working.
    Ready(String),
    /// Working, with something missing.
    Degraded(String),
    /// Cannot do its job.
    Unready(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Status::Ready(_) => "ready",
            Status::Degraded(_) => "degraded",
            Status::Unready(_) => "unready",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Status::Ready(d) | Status::Degraded(d) | Status::Unready(d) => d,
        }
    }
}

/// What a service can still do without a dependency, as its readiness check reports it: the
/// status, and the consequence shown after the error ("{error}; {consequence}").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhenDown {
    /// The service cannot do its job: out of the Service.
    Unready(String),
    /// The service works around it: still ready, shown as degraded.
    Degraded(String),
}

impl WhenDown {
    fn status(&self, error: impl std::fmt::Display) -> Status {
        match self {
            WhenDown::Unready(consequence) => Status::Unready(format!("{error}; {consequence}")),
            WhenDown::Degraded(consequence) => Status::Degraded(format!("{error}; {consequence}")),
        }
    }
}

/// One readiness check.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Status> + Send + Sync>;

/// Named readiness checks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

/// The outcome of [`Readiness::run`].
#[derive(Debug, Clone)]
pub struct Report {
    /// No check is unready (the probe answers 200).
    pub ready: bool,
    /// Per check: `{"ok": bool, "status": "ready"|"degraded"|"unready", "detail": ...}`, where
    /// `ok` is false only when unready.
    pub checks: serde_json::Map<String, serde_json::Value>,
}

impl Readiness {
    /// No checks (always ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check that is ready (`Ok(detail)`) or unready (`Err(reason)`).
    pub fn with<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.with_status(name, move || {
            let result = check();
            async move {
                match result.await {
                    Ok(detail) => Status::Ready(detail),
                    Err(reason) => Status::Unready(reason),
                }
            }
        })
    }

    /// Adds a check that can also answer [`Status::Degraded`].
    pub fn with_status<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Status> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Adds `redis`: `PING` answered (ready, with the answer), else `when_down`.
    pub fn redis(self, store: &Store, when_down: WhenDown) -> Self {
        let store = store.clone();
        self.with_status("redis", move || {
            let (store, when_down) = (store.clone(), when_down.clone());
            async move {
                match store.ping().await {
                    Ok(pong) => Status::Ready(pong),
                    Err(e) => when_down.status(e),
                }
            }
        })
    }

    /// Adds `rabbitmq`: connected with the topology declared (ready), else `when_down`.
    pub fn rabbitmq(self, bus: &Bus, when_down: WhenDown) -> Self {
        let bus = bus.clone();
        self.with_status("rabbitmq", move || {
            let status = if bus.is_connected() {
                Status::Ready("connected".to_owned())
            } else {
                when_down.status("not connected")
            };
            async move { status }
        })
    }

    /// Runs every check (each bounded to 2 s, then unready) and sets
    /// `wxhub_readiness_degraded{check}` to 1 for the degraded ones, 0 for the others.
    pub async fn run(&self) -> Report {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
                let status = tokio::time::timeout(std::time::Duration::from_secs(2), check())
                    .await
                    .unwrap_or_else(|_| Status::Unready("check timed out".into()));
                (*name, status)
            }))
            .await;
        let mut ready = true;
        let mut checks = serde_json::Map::new();
        for (name, status) in results {
            let degraded = matches!(status, Status::Degraded(_));
            let ok = !matches!(status, Status::Unready(_));
            ready &= ok;
            metrics::gauge!("wxhub_readiness_degraded", "check" => name).set(if degraded {
                1.0
            } else {
                0.0
            });
            checks.insert(
                name.to_owned(),
                serde_json::json!({"ok": ok, "status": status.label(), "detail": status.detail()}),
            );
        }
        Report { ready, checks }
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// `/healthz` (process alive), `/readyz` (200 unless a check is unready; the body shows every
/// check), `/metrics` (Prometheus text; the readiness checks run first, so the degraded gauges
/// are current at every scrape).
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState {
            readiness,
            metrics: prometheus(),
        })
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let report = state.readiness.run().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::Value::Object(report.checks)))
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    state.readiness.run().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readyz_reports_each_check() {
        let readiness = Readiness::new()
            .with("redis", || async { Ok("PONG".to_string()) })
            .with("amqp", || async { Err("connection refused".to_string()) });
        let app = router(readiness);
        let res = app
            .clone()
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["amqp"]["ok"], false);
        assert_eq!(v["redis"]["detail"], "PONG");
        let res = app
            .oneshot(
                axum::http::Request::get("/healthz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_degraded_check_is_ready_shown_and_counted() {
        let _ = prometheus();
        let readiness = Readiness::new()
            .with("test-deps", || async { Ok("fine".to_string()) })
            .with_status("test-optional", || async {
                Status::Degraded("one tenant has no ticket".into())
            });
        let app = router(readiness);
        let get = |path: &'static str| {
            app.clone().oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        };
        let res = get("/readyz").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "degraded is still ready");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["test-optional"]["ok"], true);
        assert_eq!(v["test-optional"]["status"], "degraded");
        assert_eq!(v["test-optional"]["detail"], "one tenant has no ticket");
        assert_eq!(v["test-deps"]["status"], "ready");
        let res = get("/metrics").await.unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("wxhub_readiness_degraded{check=\"test-optional\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wxhub_readiness_degraded{check=\"test-deps\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn metrics_render() {
        let _ = prometheus();
        metrics::counter!("wxhub_test_ops_total").increment(3);
        let res = router(Readiness::new())
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("wxhub_test_ops_total 3"));
    }
}
