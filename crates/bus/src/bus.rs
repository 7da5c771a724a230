use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use wxhub_domain::SecretUrl;
use wxhub_domain::config::{ConfigError, at_least, within};

use crate::Topology;

/// How long [`Bus::close`] waits for the broker to acknowledge the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `[amqp]` config section (every key optional; a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/vhost` (the password never prints). Default
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: SecretUrl,
    /// The nodes of a RabbitMQ cluster (non-empty: used instead of `url`). The bus connects to
    /// the first that answers and, after losing a connection, tries the next one first, so a
    /// dead node is left behind at once rather than retried. Quorum queues are replicated
    /// across the cluster's nodes, so any node serves every queue.
    pub urls: Vec<SecretUrl>,
    /// Unacked deliveries per consumer (default 100). RabbitMQ suggests 100–300 for throughput;
    /// work here is slow (WeChat calls), so the default stays at the low end. At least 1: 0
    /// means "unlimited" in AMQP, which would push a whole backlog into one consumer.
    pub prefetch: u16,
    /// Confirm-mode channels of the publisher, all opened when the connection is made
    /// (default 16). Each carries one unconfirmed publish at a time (see [`Bus::publish`]), so
    /// this is also the most publishes in flight per process; more wait for a free channel.
    /// Enough for services that publish now and then (token-control, worker, CLI); the
    /// gateway, which publishes every callback, defaults to 256. Within 1..=2000 (RabbitMQ
    /// allows 2047 channels per connection; consumers need a few more).
    pub publisher_channels: usize,
    /// Deliveries before the broker dead-letters a poison message (quorum `x-delivery-limit`,
    /// default 20). Every declarer of the topology must agree.
    pub delivery_limit: u32,
    /// AMQP heartbeat, so a dead TCP connection is noticed in seconds, not minutes (default 10;
    /// 0 disables it).
    pub heartbeat_secs: u16,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self::new("amqp://guest:guest@127.0.0.1:5672/%2f")
    }
}

impl AmqpConfig {
    /// A config for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            urls: Vec::new(),
            prefetch: 100,
            publisher_channels: 16,
            delivery_limit: 20,
            heartbeat_secs: 10,
        }
    }

    /// The nodes to connect to, in order: `urls`, else `url`.
    pub fn nodes(&self) -> Vec<&SecretUrl> {
        if self.urls.is_empty() {
            vec![&self.url]
        } else {
            self.urls.iter().collect()
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, url) in self.nodes().into_iter().enumerate() {
            let scheme = url.expose().split("://").next().unwrap_or_default();
            if !matches!(scheme, "amqp" | "amqps") || !url.expose().contains("://") {
                let key = if self.urls.is_empty() {
                    "amqp.url".to_owned()
                } else {
                    format!("amqp.urls[{i}]")
                };
                return Err(ConfigError::value(
                    key,
                    format!("= {:?} must be an amqp:// or amqps:// URL", url.redacted()),
                ));
            }
        }
        at_least(
            "amqp.prefetch",
            self.prefetch,
            1,
            "0 means unlimited in AMQP",
        )?;
        within(
            "amqp.publisher_channels",
            self.publisher_channels,
            1..=2000,
            "",
        )?;
        at_least("amqp.delivery_limit", self.delivery_limit, 1, "")
    }
}

/// Why a publish did not succeed. Every variant means "not stored": the caller must not
/// acknowledge the source of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// No connection to the broker (down, restarting, or the channel just failed).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused to store the message.
    #[error("broker nacked the message")]
    Nacked,
    /// No queue (and no alternate exchange) took the message.
    #[error("message to {exchange} with key {routing_key} was unroutable")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// [`Bus::publish_by`]: the send deadline passed before a publisher channel was ready, and
    /// the message was never sent.
    #[error("not sent: the deadline passed while waiting for a publisher channel")]
    Expired,
}

/// A message to publish. Bodies are persistent; `message_id` is the dedupe key consumers use.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub message_id: &'a str,
    /// AMQP `type`, e.g. `wxhub.events.v1.CallbackEvent`.
    pub message_type: &'a str,
    /// Extra headers (`traceparent`, reasons, ...).
    pub headers: &'a [(String, String)],
}

struct Live {
    connection: Connection,
    /// `publisher_channels` slots; a slot whose channel was closed opens a new one when next
    /// used.
    channels: Vec<ArcSwapOption<Channel>>,
    /// One permit per slot that no publish is using.
    permits: Arc<Semaphore>,
    /// The indexes of those slots, the most recently used last.
    free: std::sync::Mutex<Vec<usize>>,
}

/// Exclusive use of one slot of the channel pool for one publish. Dropped after the confirm, it
/// gives the slot back. Dropped before (the caller's deadline cancelled the publish, or the
/// channel failed), the channel may still receive that confirm, or a return, which the next
/// publisher would take for its own: it is closed, and the slot opens a fresh one when next used.
struct Slot {
    live: Arc<Live>,
    index: usize,
    settled: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Waits for a free slot of `live`.
    async fn take(live: Arc<Live>) -> Result<Self, BusError> {
        let permit = live
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable())?;
        // A permit guarantees a free index.
        let index = live
            .free
            .lock()
            .expect("free list")
            .pop()
            .ok_or_else(unavailable)?;
        Ok(Self {
            live,
            index,
            settled: false,
            permit: Some(permit),
        })
    }

    /// The slot's channel, opened now if it has none.
    async fn channel(&self) -> Result<Arc<Channel>, lapin::Error> {
        let pooled = &self.live.channels[self.index];
        if let Some(ch) = pooled.load_full() {
            return Ok(ch);
        }
        let ch = Arc::new(confirm_channel(&self.live.connection).await?);
        pooled.store(Some(ch.clone()));
        Ok(ch)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let abandoned = if self.settled {
            None
        } else {
            self.live.channels[self.index].swap(None)
        };
        self.live.free.lock().expect("free list").push(self.index);
        // Only now may the next publisher take the slot.
        drop(self.permit.take());
        if let (Some(old), Ok(runtime)) = (abandoned, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, old.close(200, "publish abandoned".into()))
                        .await;
            });
        }
    }
}

struct Inner {
    config: AmqpConfig,
    topology: Topology,
    name: String,
    live: ArcSwapOption<Live>,
    wake: Notify,
    connected: watch::Sender<bool>,
    cancel: CancellationToken,
    /// The node (index into `config.nodes()`) to try first on the next connect.
    next_node: std::sync::atomic::AtomicUsize,
}

/// A supervised connection to RabbitMQ with a pool of confirm-mode channels.
///
/// A background task connects (with backoff), declares the topology, opens the channels, and
/// watches the connection; when it drops — broker restart, network, heartbeat timeout — it
/// reconnects. Publishing while disconnected fails at once with [`BusError::Unavailable`].
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("nodes", &self.inner.config.nodes())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Starts the supervisor; returns at once (use [`Bus::wait_connected`] to wait).
    /// `name` shows up as the connection name in the broker's management UI.
    pub fn start(
        config: AmqpConfig,
        topology: Topology,
        name: &str,
        cancel: CancellationToken,
    ) -> Self {
        let (connected, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            topology,
            name: name.to_owned(),
            live: ArcSwapOption::empty(),
            wake: Notify::new(),
            connected,
            // A child: closing the bus must not cancel the caller's other work.
            cancel: cancel.child_token(),
            next_node: std::sync::atomic::AtomicUsize::new(0),
        });
        tokio::spawn(supervise(inner.clone()));
        Self { inner }
    }

    /// Waits until connected (topology declared), at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether a live connection exists now.
    pub fn is_connected(&self) -> bool {
        self.inner
            .live
            .load()
            .as_ref()
            .is_some_and(|l| l.connection.status().connected())
    }

    /// A receiver that flips with the connection state.
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// The topology this bus declared.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// A fresh channel (not in confirm mode) for consumers and administrative work.
    pub async fn channel(&self) -> Result<Channel, BusError> {
        let live = self.inner.live.load_full().ok_or_else(unavailable)?;
        live.connection.create_channel().await.map_err(|e| {
            self.inner.wake.notify_one();
            BusError::Unavailable(e.to_string())
        })
    }

    /// Publishes with `mandatory` and waits for the broker's confirm: `Ok` means the message is
    /// persisted in a queue (or caught by the alternate exchange). Bound the wait with your own
    /// deadline (`tokio::time::timeout`); a timed-out publish may still be stored, which is the
    /// documented duplicate window consumers dedupe with `message_id`.
    ///
    /// Each publish has a channel of the pool to itself until its confirm (waiting for one when
    /// `publisher_channels` are busy), so a return is always reported to its own publisher.
    pub async fn publish(&self, msg: &Outgoing<'_>) -> Result<(), BusError> {
        self.publish_with(msg, None, None).await
    }

    /// [`Bus::publish`] with a per-message TTL (AMQP `expiration`): in a delay queue
    /// (`Topology::declare_retry_tier`) the message leaves after `min(ttl, the queue's TTL)`,
    /// which is how a retry gets its jitter. RabbitMQ expires messages at the head of a queue
    /// only, so keep the TTLs of one queue close together.
    pub async fn publish_expiring(
        &self,
        msg: &Outgoing<'_>,
        ttl: Duration,
    ) -> Result<(), BusError> {
        self.publish_with(msg, None, Some(ttl)).await
    }

    /// [`Bus::publish`], but a message that cannot be handed to the broker by `send_by` is
    /// abandoned — never sent — with [`BusError::Expired`].
    ///
    /// Waiting for a free channel (all `publisher_channels` busy, e.g. behind a stalled broker)
    /// or for a channel to open counts against `send_by`, and the deadline is checked once more
    /// just before the message goes out. Once sent, the call waits for the confirm regardless of
    /// `send_by`: that outcome is the caller's to settle. A caller that moves a publish to the
    /// background at its own deadline (the gateway after answering 503) therefore never sends a
    /// message late, long after its source was told to retry — the retry sends it instead.
    pub async fn publish_by(
        &self,
        msg: &Outgoing<'_>,
        send_by: tokio::time::Instant,
    ) -> Result<(), BusError> {
        self.publish_with(msg, Some(send_by), None).await
    }

    async fn publish_with(
        &self,
        msg: &Outgoing<'_>,
        send_by: Option<tokio::time::Instant>,
        ttl: Option<Duration>,
    ) -> Result<(), BusError> {
        let started = Instant::now();
        let result = self.publish_inner(msg, send_by, ttl).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(BusError::Unavailable(_)) => "unavailable",
            Err(BusError::Nacked) => "nacked",
            Err(BusError::Unroutable { .. }) => "unroutable",
            Err(BusError::Expired) => "expired",
        };
        metrics::counter!("wxhub_bus_publish_total", "result" => outcome).increment(1);
        metrics::histogram!("wxhub_bus_publish_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn publish_inner(
        &self,
        msg: &Outgoing<'_>,
        send_by: Option<tokio::time::Instant>,
        ttl: Option<Duration>,
    ) -> Result<(), BusError> {
        let live = self.inner.live.load_full().ok_or_else(unavailable)?;
        // One publish per channel at a time: a `basic.return` carries no delivery tag, and
        // lapin hands it to whichever confirm of the next (possibly multiple) ack it completes
        // first. With several publishes in flight on one channel an unroutable message could be
        // reported as stored, and a stored one as unroutable.
        let mut slot = before(send_by, Slot::take(live)).await??;
        // A failed channel is replaced when its slot drops unsettled; a dead connection wakes
        // the supervisor.
        let failed = |live: &Live, e: lapin::Error| {
            if !live.connection.status().connected() {
                self.inner.wake.notify_one();
            }
            BusError::Unavailable(e.to_string())
        };
        // Cut short, an opening leaves nothing in the slot (it is stored only once open).
        let channel = before(send_by, slot.channel())
            .await?
            .map_err(|e| failed(&slot.live, e))?;
        // The last point at which the message can still be abandoned unsent (a deadline that
        // passed while the future above was ready is only seen here). Nothing is outstanding on
        // the channel, so it goes back to the pool as it is.
        if send_by.is_some_and(|at| tokio::time::Instant::now() >= at) {
            slot.settled = true;
            return Err(BusError::Expired);
        }
        let mut headers = FieldTable::default();
        for (k, v) in msg.headers {
            headers.insert(
                k.as_str().into(),
                AMQPValue::LongString(LongString::from(v.as_str())),
            );
        }
        // The publisher's trace goes with the message unless the caller set one itself.
        if !msg.headers.iter().any(|(k, _)| k == "traceparent") {
            for (k, v) in wxhub_domain::trace::inject_current() {
                headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut properties = BasicProperties::default();
        if let Some(ttl) = ttl {
            properties = properties.with_expiration(ttl.as_millis().max(1).to_string().into());
        }
        let properties = properties
            .with_delivery_mode(2)
            .with_content_type(crate::PROTOBUF.into())
            .with_message_id(msg.message_id.into())
            .with_type(msg.message_type.into())
            .with_timestamp(now)
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = match channel
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.into(),
                options,
                msg.body,
                properties,
            )
            .await
        {
            Ok(confirm) => confirm,
            Err(e) => return Err(failed(&slot.live, e)),
        };
        let confirmation = confirm.await.map_err(|e| failed(&slot.live, e))?;
        // Nothing of this publish is outstanding on the channel any more.
        slot.settled = true;
        let returned_elsewhere = |returned: &lapin::message::BasicReturnMessage| {
            returned
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                != Some(msg.message_id)
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            // Cannot happen with one publish per channel; if it ever does, this publish's fate is
            // unknown and must not be reported as stored.
            Confirmation::Ack(Some(ref r)) | Confirmation::Nack(Some(ref r))
                if returned_elsewhere(r) =>
            {
                Err(BusError::Unavailable(
                    "the broker returned another message on this channel".into(),
                ))
            }
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(BusError::Unroutable {
                exchange: msg.exchange.to_owned(),
                routing_key: msg.routing_key.to_owned(),
            }),
            Confirmation::Nack(None) => Err(BusError::Nacked),
            // Every pool channel is put in confirm mode before use; this is a bug if it happens.
            Confirmation::NotRequested => {
                Err(BusError::Unavailable("channel not in confirm mode".into()))
            }
        }
    }

    /// Closes the connection (pending confirms fail) and stops the supervisor.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        if let Some(live) = self.inner.live.swap(None) {
            // lapin can wait forever for the broker's close-ok (seen after the broker closed a
            // channel mid-operation); a shutdown must not. Past the bound the connection is
            // dropped, which closes the socket.
            let closing = live.connection.close(200, "shutdown".into());
            if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                tracing::warn!(
                    timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                    "the broker did not acknowledge the connection close; dropping the connection"
                );
            }
        }
        self.inner.connected.send_replace(false);
    }

    /// Forces the current connection closed, as a broker restart would; the supervisor
    /// reconnects. A test hook (feature `test-util`, enabled by dev-dependencies only).
    #[cfg(feature = "test-util")]
    pub async fn kill_connection(&self) {
        if let Some(live) = self.inner.live.load_full() {
            let _ = live.connection.close(320, "killed by test".into()).await;
        }
        self.inner.wake.notify_one();
    }
}

/// `work`, or [`BusError::Expired`] once `send_by` passes first.
async fn before<T>(
    send_by: Option<tokio::time::Instant>,
    work: impl Future<Output = T>,
) -> Result<T, BusError> {
    match send_by {
        None => Ok(work.await),
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .map_err(|_| BusError::Expired),
    }
}

fn unavailable() -> BusError {
    BusError::Unavailable("not connected to the broker".into())
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let ch = connection.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// How long one node gets to accept a connection (TCP and the AMQP handshake).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connected node gets to declare the topology and open the publisher channels.
const NODE_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn timed_out(what: &str) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}

async fn connect(inner: &Inner) -> Result<Live, lapin::Error> {
    use std::sync::atomic::Ordering;
    let nodes = inner.config.nodes();
    let first = inner.next_node.load(Ordering::Relaxed) % nodes.len();
    let mut last_error = None;
    let mut connection = None;
    // From the node after the one that failed last, round the list once.
    for i in (0..nodes.len()).map(|k| (first + k) % nodes.len()) {
        let mut url = nodes[i].expose().to_owned();
        if !url.contains("heartbeat=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("heartbeat={}", inner.config.heartbeat_secs));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(inner.name.as_str()));
        // Bounded: a node that accepts TCP but never answers (paused, overloaded, starting)
        // must not hold the supervisor; the next node is tried instead.
        let attempt =
            tokio::time::timeout(NODE_CONNECT_TIMEOUT, Connection::connect(&url, properties))
                .await
                .unwrap_or_else(|_| Err(timed_out("connecting")));
        match attempt {
            Ok(c) => {
                // Next time (this connection lost), start with the following node.
                inner.next_node.store(i + 1, Ordering::Relaxed);
                if nodes.len() > 1 {
                    tracing::info!(node = %nodes[i].redacted(), "connected to a cluster node");
                }
                connection = Some(c);
                break;
            }
            Err(e) => {
                if nodes.len() > 1 {
                    tracing::warn!(node = %nodes[i].redacted(), error = %e, "cluster node unreachable; trying the next");
                }
                last_error = Some(e);
            }
        }
    }
    let Some(connection) = connection else {
        return Err(last_error.expect("at least one node was tried"));
    };
    let n = inner.config.publisher_channels;
    // Bounded too: a node cut off from the cluster's majority accepts the connection but never
    // completes a quorum queue's declaration. The connection is dropped, the next attempt starts
    // at the following node.
    let setup = async {
        let admin = connection.create_channel().await?;
        inner.topology.declare(&admin).await?;
        let _ = admin.close(200, "declared".into()).await;
        // All now, in parallel: opened on demand, a burst after a broker stall opened hundreds
        // at once behind the backlog, and the gateway's tail at half rate grew to twice the
        // floor's.
        futures::future::try_join_all((0..n).map(|_| confirm_channel(&connection))).await
    };
    let opened = match tokio::time::timeout(NODE_SETUP_TIMEOUT, setup).await {
        Ok(opened) => opened?,
        Err(_) => {
            tracing::warn!("the node did not declare the topology in time; trying the next");
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                connection.close(200, "setup timed out".into()),
            )
            .await;
            return Err(timed_out("declaring the topology"));
        }
    };
    let channels: Vec<ArcSwapOption<Channel>> = opened
        .into_iter()
        .map(ArcSwapOption::from_pointee)
        .collect();
    Ok(Live {
        connection,
        channels,
        permits: Arc::new(Semaphore::new(n)),
        free: std::sync::Mutex::new((0..n).collect()),
    })
}

async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.cancel.is_cancelled() {
            return;
        }
        let healthy = inner
            .live
            .load()
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
        if !healthy {
            if inner.live.swap(None).is_some() {
                tracing::warn!("lost the broker connection; reconnecting");
                metrics::counter!("wxhub_bus_disconnects_total").increment(1);
            }
            inner.connected.send_replace(false);
            match connect(&inner).await {
                Ok(live) => {
                    inner.live.store(Some(Arc::new(live)));
                    inner.connected.send_replace(true);
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        namespace = inner.topology.namespace(),
                        "connected to the broker"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to the broker");
                    tokio::select! {
                        () = inner.cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
