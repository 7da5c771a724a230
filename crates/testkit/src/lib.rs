//! Helpers for integration tests that run against the real Redis and RabbitMQ.
//!
//! Each test takes a [`Namespace`]: a unique prefix for its Redis keys, exchanges and queues,
//! so tests run in parallel against one broker and one Redis. Call [`Namespace::cleanup`] at the
//! end; the broker objects of a namespace are deleted and its Redis keys removed. A
//! [`CleanupGuard`] does the same when a failing test unwinds before its cleanup.
//!
//! Endpoints: `WXHUB_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! `WXHUB_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

use std::time::Duration;

use lapin::options::BasicGetOptions;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{AmqpConfig, Bus, Topology};
use wxhub_store::{RedisConfig, Store};

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("WXHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The RabbitMQ URL tests use.
pub fn amqp_url() -> String {
    std::env::var("WXHUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique namespace for one test (`t-<label>-<random>`, at most 32 characters).
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// A fresh namespace; `label` names the test (truncated to fit).
    pub fn new(label: &str) -> Self {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(20)
            .collect();
        Self {
            name: format!("t-{label}-{:08x}", rand::random::<u32>()),
        }
    }

    /// The namespace string.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology of this namespace (delivery limit 5, so poison tests are quick).
    pub fn topology(&self) -> Topology {
        Topology::new(self.name.clone(), 5)
    }

    /// A store on the test Redis.
    pub fn store(&self) -> Store {
        Store::connect(&RedisConfig::new(redis_url()), &self.name).expect("redis url")
    }

    /// A connected bus (topology declared) on the test broker.
    pub async fn bus(&self, cancel: &CancellationToken) -> Bus {
        self.bus_with(AmqpConfig::new(amqp_url()), cancel).await
    }

    /// [`Namespace::bus`] with `config` (its URL should be [`amqp_url`]).
    pub async fn bus_with(&self, config: AmqpConfig, cancel: &CancellationToken) -> Bus {
        let bus = Bus::start(config, self.topology(), "test", cancel.clone());
        assert!(
            bus.wait_connected(Duration::from_secs(30)).await,
            "RabbitMQ at {} is not reachable (run `make services`)",
            amqp_url()
        );
        bus
    }

    /// Takes every message currently in `queue` (acking them); waits up to `wait` for the first.
    pub async fn drain_queue(
        &self,
        bus: &Bus,
        queue: &str,
        wait: Duration,
    ) -> Vec<lapin::message::BasicGetMessage> {
        let ch = bus.channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            match ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                Ok(Some(m)) => out.push(m),
                Ok(None) if out.is_empty() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
        out
    }

    /// Deletes the namespace's queues and exchanges (plus `extra_queues`) and its Redis keys.
    pub async fn cleanup(&self, bus: Option<&Bus>, extra_queues: &[String]) {
        if let Some(bus) = bus {
            // Best effort, and bounded: a broker that closed the channel mid-way must not hang
            // the test (whatever is left has a unique namespace).
            let delete = async {
                if let Ok(ch) = bus.channel().await {
                    let _ = self.topology().delete(&ch, extra_queues).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            bus.close().await;
        }
        let store = self.store();
        let mut conn = store.conn();
        // SCAN, not KEYS: KEYS blocks Redis for the whole keyspace (half a second with a few
        // million keys left by a benchmark), stalling every other test meanwhile.
        let keys = store
            .scan_keys(&format!("{}:*", self.name))
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await;
        }
    }
}

impl Namespace {
    /// A guard that cleans this namespace up when dropped, unless [`CleanupGuard::disarm`]ed
    /// (after the test's own cleanup): take it first, so it drops last.
    pub fn cleanup_guard(&self) -> CleanupGuard {
        CleanupGuard {
            ns: Some(self.clone()),
        }
    }
}

/// Cleans a namespace up (Redis keys, exchanges, queues) on drop, e.g. while a failed test
/// unwinds. The work runs on a thread of its own with its own runtime, since drop cannot await.
#[derive(Debug)]
pub struct CleanupGuard {
    ns: Option<Namespace>,
}

impl CleanupGuard {
    /// The test cleaned up itself: nothing left to do.
    pub fn disarm(mut self) {
        self.ns = None;
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        let Some(ns) = self.ns.take() else {
            return;
        };
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let bus = Bus::start(
                    AmqpConfig::new(amqp_url()),
                    ns.topology(),
                    "test",
                    cancel.clone(),
                );
                let connected = bus.wait_connected(Duration::from_secs(10)).await;
                ns.cleanup(connected.then_some(&bus), &[]).await;
                cancel.cancel();
            });
        });
        let _ = cleanup.join();
    }
}
