//! The tenants file as a service sees it: `[tenants]` (where the file is, how often it is
//! polled) and [`TenantsHandle`], the current [`Tenants`] swapped atomically when the file
//! changes. The file's format and validation are `wxhub_domain::tenants`, re-exported here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
pub use wxhub_domain::tenants::*;

use crate::config::{ConfigError, Source, resolve_relative, within};

/// `[tenants]` config section (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// The tenants file (default `/etc/wxhub/tenants.toml`); a relative path is resolved
    /// against the config file's directory.
    pub file: PathBuf,
    /// How often the file is polled for changes (default 2000; at least 10: faster only burns
    /// CPU re-reading it).
    pub reload_interval_ms: u64,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            file: "/etc/wxhub/tenants.toml".into(),
            reload_interval_ms: 2000,
        }
    }
}

impl TenantsConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within(
            "tenants.reload_interval_ms",
            self.reload_interval_ms,
            10..=3_600_000,
            "",
        )
    }

    /// Makes a relative `file` mean "next to the config file" of `source`.
    pub fn resolve(&mut self, source: &Source) {
        self.file = resolve_relative(source.file.as_deref(), &self.file);
    }

    /// The polling interval.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms)
    }
}

/// The current tenants, swapped atomically when the file changes.
#[derive(Clone)]
pub struct TenantsHandle {
    current: Arc<ArcSwap<Tenants>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for TenantsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantsHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TenantsHandle {
    /// A fixed set of tenants (tests, embedded use).
    pub fn fixed(tenants: Tenants) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(tenants)),
            path: None,
        }
    }

    /// Loads the file; fails if it is unreadable or invalid.
    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let tenants = read(path)?;
        metrics::gauge!("wxhub_tenants_loaded").set(tenants.len() as f64);
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(tenants)),
            path: Some(path.into()),
        })
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Tenants> {
        self.current.load_full()
    }

    /// Replaces the snapshot (used by the reloader and by tests).
    pub fn replace(&self, tenants: Tenants) {
        metrics::gauge!("wxhub_tenants_loaded").set(tenants.len() as f64);
        self.current.store(Arc::new(tenants));
    }

    /// Polls the file every `interval` and swaps in a new snapshot when its content changes.
    /// An invalid new file is logged and counted, and the previous snapshot stays in force.
    /// (Polling, rather than inotify, also follows Kubernetes Secret symlink swaps.)
    pub fn spawn_reloader(&self, interval: Duration, cancel: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let handle = self.clone();
        tokio::spawn(async move {
            let mut last = fingerprint(&path);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let now = fingerprint(&path);
                if now == last {
                    continue;
                }
                last = now;
                match read(&path) {
                    Ok(tenants) => {
                        tracing::info!(tenants = tenants.len(), path = %path.display(), "tenants file reloaded");
                        metrics::counter!("wxhub_tenants_reload_total", "result" => "ok")
                            .increment(1);
                        handle.replace(tenants);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, path = %path.display(), "tenants file rejected; keeping the previous one");
                        metrics::counter!("wxhub_tenants_reload_total", "result" => "error")
                            .increment(1);
                    }
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<Tenants, TenantsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TenantsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Tenants::from_toml(&text)
}

/// Content fingerprint: modification time, length and a hash of the bytes (mtime alone misses
/// same-second rewrites).
fn fingerprint(path: &Path) -> Option<(Option<SystemTime>, u64, [u8; 32])> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some((
        meta.modified().ok(),
        meta.len(),
        Sha256::digest(&bytes).into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// A tenants file with one Official Account per id (the file's rules are tested in
    /// `wxhub_domain::tenants`).
    fn file(ids: &[&str]) -> String {
        ids.iter()
            .map(|id| {
                format!(
                    "[[tenants]]\nid = \"{id}\"\nkind = \"official_account\"\napp_id = \"wx{id}\"\n\
                     app_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"{KEY}\"\n\n"
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, file(&["acme", "corp-1"])).unwrap();
        let handle = TenantsHandle::load(&path).unwrap();
        let cancel = CancellationToken::new();
        handle.spawn_reloader(Duration::from_millis(20), cancel.clone());

        std::fs::write(&path, "this is not toml [").unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            handle.current().len(),
            2,
            "an invalid file must not replace a good one"
        );

        let only_acme = file(&["acme"]);
        std::fs::write(&path, only_acme).unwrap();
        let mut reloaded = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if handle.current().len() == 1 {
                reloaded = true;
                break;
            }
        }
        cancel.cancel();
        assert!(reloaded, "the valid new file must be picked up");
    }
}
