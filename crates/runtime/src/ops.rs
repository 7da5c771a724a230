//! The operational HTTP surface: `/healthz`, `/readyz`, `/metrics`.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

/// One readiness check: `Ok(detail)` when ready, `Err(reason)` otherwise.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Named readiness checks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    /// No checks (always ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    pub fn with<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check; `(all_ok, per-check results)`.
    pub async fn run(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
                let result = tokio::time::timeout(std::time::Duration::from_secs(2), check())
                    .await
                    .unwrap_or_else(|_| Err("check timed out".into()));
                (*name, result)
            }))
            .await;
        let mut ok = true;
        let mut map = serde_json::Map::new();
        for (name, result) in results {
            let value = match result {
                Ok(detail) => serde_json::json!({"ok": true, "detail": detail}),
                Err(reason) => {
                    ok = false;
                    serde_json::json!({"ok": false, "detail": reason})
                }
            };
            map.insert(name.to_owned(), value);
        }
        (ok, map)
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// `/healthz` (process alive), `/readyz` (every check passes), `/metrics` (Prometheus text).
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
    let (ok, checks) = state.readiness.run().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::Value::Object(checks)))
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
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
