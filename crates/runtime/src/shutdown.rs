//! Shutdown: one token for the whole process, and drains bounded by one grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. A second signal exits the process at once.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        child.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal; exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `drain` for at most `grace`; returns whether it finished in time. Servers' own graceful
/// shutdowns (tonic's in particular) wait for connections without a deadline, so every drain is
/// wrapped in this (or in the steps of one [`Drain`]).
pub async fn drain<F: Future>(what: &str, grace: Duration, drain: F) -> bool {
    Drain::start(grace).step(what, drain).await.is_some()
}

/// An ordered drain within one grace period: each [`Drain::step`] waits at most for what is
/// left of it, so the steps together never exceed `shutdown.grace_ms` (an orchestrator kills
/// the process at its own deadline, and everything not drained by then is lost anyway).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    deadline: tokio::time::Instant,
}

impl Drain {
    /// Starts the grace period now.
    pub fn start(grace: Duration) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + grace,
        }
    }

    /// Runs `step` for at most what is left of the grace period; `None` if it did not finish.
    pub async fn step<F: Future>(&self, what: &str, step: F) -> Option<F::Output> {
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, step).await {
            Ok(output) => Some(output),
            Err(_) => {
                tracing::warn!(what, "drain exceeded its grace period");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_is_bounded() {
        assert!(drain("fast", Duration::from_secs(1), async {}).await);
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert!(!drain("slow", Duration::from_millis(10), slow).await);
    }

    /// Steps share one grace period: after a step used it up, the next gets nothing.
    #[tokio::test]
    async fn steps_share_one_grace_period() {
        let drain = Drain::start(Duration::from_millis(50));
        assert_eq!(drain.step("fast", async { 7 }).await, Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert!(drain.step("slow", slow).await.is_none());
        let started = std::time::Instant::now();
        let next = tokio::time::sleep(Duration::from_secs(60));
        assert!(drain.step("next", next).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
