//! Shutdown: one token for the whole process, bounded drains.

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
/// wrapped in this.
pub async fn drain<F: Future>(what: &str, grace: Duration, drain: F) -> bool {
    match tokio::time::timeout(grace, drain).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(
                what,
                grace_ms = grace.as_millis() as u64,
                "drain exceeded its grace period"
            );
            false
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
}
