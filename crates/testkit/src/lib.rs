//! Helpers for integration tests that run against the real Redis and RabbitMQ.
//!
//! Each test takes a [`Namespace`]: a unique prefix for its Redis keys, exchanges and queues,
//! so tests run in parallel against one broker and one Redis. Call [`Namespace::cleanup`] at the
//! end; the broker objects of a namespace are deleted and its Redis keys removed.
//!
//! Cleanup also happens when a test fails: when the last clone of a [`Namespace`] is dropped
//! without [`Namespace::cleanup`] having run (a panic unwinding through the test), the drop
//! deletes the same objects on a thread of its own, with its own runtime and connections (the
//! test's runtime may be the one unwinding). Queues a test declares outside the topology are
//! registered with [`Namespace::track_queue`] so that this path finds them too.
//!
//! Endpoints: `WXHUB_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! `WXHUB_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Clusters:
//! `WXHUB_TEST_REDIS_CLUSTER` (Redis Cluster nodes, comma-separated; `scripts/redis-cluster.sh
//! urls`) makes every store of every test, and every service a harness starts, run in cluster
//! mode; `WXHUB_TEST_AMQP_URLS` does the same for a RabbitMQ cluster.

pub mod proxy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{AmqpConfig, Bus, Topology};
use wxhub_store::{RedisConfig, Store};

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("WXHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The nodes of a Redis Cluster to test against (`WXHUB_TEST_REDIS_CLUSTER`, comma-separated;
/// `scripts/redis-cluster.sh urls` prints them), or none.
pub fn redis_cluster_nodes() -> Vec<String> {
    list_var("WXHUB_TEST_REDIS_CLUSTER")
}

/// The `[redis]` section tests connect with: cluster mode over [`redis_cluster_nodes`] when
/// there are some, else [`redis_url`].
pub fn redis_config() -> RedisConfig {
    let nodes = redis_cluster_nodes();
    if nodes.is_empty() {
        RedisConfig::new(redis_url())
    } else {
        RedisConfig::cluster(nodes)
    }
}

/// The same as `WXHUB_*` settings for services started from a config source:
/// `WXHUB_REDIS__URL`, then (against a cluster) `WXHUB_REDIS__CLUSTER_NODES`. A harness that
/// points a service at another Redis (a dead port) skips the cluster entry.
pub fn redis_env() -> Vec<(String, String)> {
    let mut env = vec![("WXHUB_REDIS__URL".to_owned(), redis_url())];
    let nodes = redis_cluster_nodes();
    if !nodes.is_empty() {
        env.push(("WXHUB_REDIS__CLUSTER_NODES".to_owned(), toml_list(&nodes)));
    }
    env
}

fn list_var(name: &str) -> Vec<String> {
    std::env::var(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn toml_list(items: &[String]) -> String {
    let list = items
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(",");
    format!("[{list}]")
}

/// The RabbitMQ URL tests use: `WXHUB_TEST_AMQP_URL`, else the first node of
/// `WXHUB_TEST_AMQP_URLS`, else the local broker.
pub fn amqp_url() -> String {
    std::env::var("WXHUB_TEST_AMQP_URL")
        .ok()
        .or_else(|| cluster_urls().into_iter().next())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The nodes of a RabbitMQ cluster to test against (`WXHUB_TEST_AMQP_URLS`, comma-separated;
/// `scripts/rabbitmq-cluster.sh urls` prints them), or none.
pub fn cluster_urls() -> Vec<String> {
    list_var("WXHUB_TEST_AMQP_URLS")
}

/// The `[amqp]` section tests connect with: every cluster node when testing against a cluster.
pub fn amqp_config() -> AmqpConfig {
    let mut config = AmqpConfig::new(amqp_url());
    config.urls = cluster_urls()
        .into_iter()
        .map(wxhub_domain::SecretUrl::new)
        .collect();
    config
}

/// The same as `WXHUB_*` settings for services started from a config source.
pub fn amqp_env() -> Vec<(String, String)> {
    let mut env = vec![("WXHUB_AMQP__URL".to_owned(), amqp_url())];
    let urls = cluster_urls();
    if !urls.is_empty() {
        env.push(("WXHUB_AMQP__URLS".to_owned(), toml_list(&urls)));
    }
    env
}

/// A unique namespace for one test (`t-<label>-<random>`, at most 32 characters). Clones share
/// one namespace; the last one dropped cleans up if [`Namespace::cleanup`] never ran.
#[derive(Debug, Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    created: std::time::Instant,
    /// Queues declared by the test itself (deleted with the topology's).
    extra_queues: Mutex<Vec<String>>,
    cleaned: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.cleaned.load(Ordering::SeqCst) {
            return;
        }
        let name = self.name.clone();
        let created = self.created;
        let extra = std::mem::take(
            &mut *self
                .extra_queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // A runtime cannot start inside another one's context, and the test's runtime may be
        // the one unwinding: clean up on a thread of its own and wait for it (bounded).
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let cleanup = async {
                    settle(created).await;
                    delete_broker_objects(&Topology::new(name.clone(), 5), &extra).await;
                    delete_keys(&name).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), cleanup).await;
            });
        });
        let _ = worker.join();
    }
}

/// The youngest a namespace's queues may be when they are deleted.
///
/// RabbitMQ (3.10 to 4.2 at least: rabbitmq-server#16652, fix pending in #16672) starts a
/// dead-letter worker for each quorum queue with at-least-once dead-lettering as soon as it has
/// a leader; a queue deleted while that worker still registers with it crashes the worker, and
/// two such crashes within seconds take down the broker-wide `rabbit_fifo_dlx_sup`, after which
/// every new queue of that kind fails (`INTERNAL_ERROR`) until the broker is repaired. A test
/// that declares its topology and fails a few milliseconds later would do exactly that.
const MIN_QUEUE_AGE: Duration = Duration::from_secs(1);

async fn settle(created: std::time::Instant) {
    tokio::time::sleep(MIN_QUEUE_AGE.saturating_sub(created.elapsed())).await;
}

/// Deletes the topology's queues and exchanges (plus `extra`) over a connection of its own.
async fn delete_broker_objects(topology: &Topology, extra: &[String]) {
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = topology.delete(&ch, extra).await;
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

/// Removes every Redis key of the namespace (found with SCAN, never KEYS: KEYS blocks Redis for
/// the whole keyspace, stalling every other test meanwhile).
async fn delete_keys(namespace: &str) {
    let Ok(store) = Store::connect(&redis_config(), namespace) else {
        return;
    };
    let mut conn = store.conn();
    let keys = store
        .scan_keys(&format!("{namespace}:*"))
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await;
    }
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
            inner: Arc::new(Inner {
                name: format!("t-{label}-{:08x}", rand::random::<u32>()),
                extra_queues: Mutex::default(),
                cleaned: AtomicBool::new(false),
                created: std::time::Instant::now(),
            }),
        }
    }

    /// The namespace string.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Registers a queue the test declares itself, so that cleanup (explicit or on drop) deletes
    /// it with the topology's.
    pub fn track_queue(&self, queue: impl Into<String>) {
        self.inner
            .extra_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(queue.into());
    }

    fn tracked_queues(&self, extra: &[String]) -> Vec<String> {
        let mut queues = self
            .inner
            .extra_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        queues.extend(extra.iter().cloned());
        queues
    }

    /// The topology of this namespace (delivery limit 5, so poison tests are quick).
    pub fn topology(&self) -> Topology {
        Topology::new(self.name().to_owned(), 5)
    }

    /// A store on the test Redis (the test cluster, with `WXHUB_TEST_REDIS_CLUSTER`).
    pub fn store(&self) -> Store {
        Store::connect(&redis_config(), self.name()).expect("redis config")
    }

    /// A connected bus (topology declared) on the test broker.
    pub async fn bus(&self, cancel: &CancellationToken) -> Bus {
        self.bus_with(amqp_config(), cancel).await
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

    /// Deletes the namespace's queues and exchanges (plus `extra_queues` and the tracked ones)
    /// and its Redis keys.
    pub async fn cleanup(&self, bus: Option<&Bus>, extra_queues: &[String]) {
        self.inner.cleaned.store(true, Ordering::SeqCst);
        let queues = self.tracked_queues(extra_queues);
        settle(self.inner.created).await;
        match bus {
            Some(bus) => {
                // Best effort, and bounded: a broker that closed the channel mid-way must not
                // hang the test (whatever is left has a unique namespace).
                let delete = async {
                    if let Ok(ch) = bus.channel().await {
                        let _ = self.topology().delete(&ch, &queues).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
                bus.close().await;
            }
            None => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    delete_broker_objects(&self.topology(), &queues),
                )
                .await;
            }
        }
        delete_keys(self.name()).await;
    }
}
